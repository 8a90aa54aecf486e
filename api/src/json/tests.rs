use proptest::prelude::*;
use serde_json::Value;

use super::*;
use crate::v1::{
    AgentId, Call, CommandInfo, ContainerInfo, DurationInfo, Environment, Event, ExecutorId,
    Filters, FrameworkId, Label, Labels, Offer, OfferId, Resource, TaskId, TaskInfo, TaskState,
    TaskStatus, Url, call, command_info, container_info, environment, event, offer, task_status,
    value,
};

/// The wasm task of docs/wasm-tasks.md, as a scheduler sends it.
const WASM_TASK: &str = r#"{"name": "hello", "task_id": {"value": "t1"}, "agent_id": {"value": "a1"}, "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}}, {"name": "mem",  "type": "SCALAR", "scalar": {"value": 32}}], "command": {"uris": [{"value": "file:///srv/apps/hello.wasm"}], "value": "hello.wasm", "shell": false, "arguments": ["hello.wasm", "world"], "environment": {"variables": [{"name": "GREETING", "value": "hi"}]}}, "container": {"type": "WASM", "wasm": {"fuel": 5000000000}}, "max_completion_time": {"nanoseconds": 30000000000}}"#;

const UUID_B64: &str = "AAECAwQFBgcICQoLDA0ODw==";

fn uuid() -> Vec<u8> {
    (0..16).collect()
}

fn accept_call(task: &str) -> String {
    format!(
        r#"{{"type": "ACCEPT", "framework_id": {{"value": "f1"}},
             "accept": {{"offer_ids": [{{"value": "o1"}}],
                         "operations": [{{"type": "LAUNCH", "launch": {{"task_infos": [{task}]}}}}],
                         "filters": {{"refuse_seconds": 5}}}}}}"#
    )
}

fn scalar(name: &str, v: f64) -> Resource {
    Resource {
        name: name.into(),
        r#type: value::Type::Scalar as i32,
        scalar: Some(value::Scalar { value: v }),
        ..Default::default()
    }
}

fn parse<T: DeserializeOwned>(json: &str) -> T {
    from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{e}: {json}"))
}

fn error<T: DeserializeOwned + std::fmt::Debug>(json: &[u8]) -> String {
    let message = from_json::<T>(json).unwrap_err().to_string();
    assert!(message.starts_with("invalid JSON: "), "{message}");
    assert!(!message.contains('\n'), "{message}");
    message
}

#[test]
fn parses_a_pymesos_subscribe() {
    let call: Call = parse(
        r#"{"type":"SUBSCRIBE","subscribe":{"framework_info":{"user":"root","name":"pymesos","capabilities":[{"type":"PARTITION_AWARE"}]}}}"#,
    );
    assert_eq!(call.r#type(), call::Type::Subscribe);
    let info = call.subscribe.unwrap().framework_info.unwrap();
    assert_eq!(
        (info.user.as_str(), info.name.as_str()),
        ("root", "pymesos")
    );
    assert_eq!(info.failover_timeout, 0.0);
    assert!(call.framework_id.is_none());
}

#[test]
fn parses_an_accept_launching_the_documented_wasm_task() {
    let call: Call = parse(&accept_call(WASM_TASK));
    assert_eq!(call.r#type(), call::Type::Accept);
    assert_eq!(call.framework_id.as_ref().unwrap().value, "f1");
    let accept = call.accept.as_ref().unwrap();
    assert_eq!(accept.offer_ids, [OfferId { value: "o1".into() }]);
    assert_eq!(
        accept.filters,
        Some(Filters {
            refuse_seconds: Some(5.0)
        })
    );
    let [operation] = &accept.operations[..] else {
        panic!("{accept:?}")
    };
    assert_eq!(operation.r#type(), offer::operation::Type::Launch);
    let [task] = &operation.launch.as_ref().unwrap().task_infos[..] else {
        panic!("{operation:?}")
    };
    let expected = TaskInfo {
        name: "hello".into(),
        task_id: Some(TaskId { value: "t1".into() }),
        agent_id: Some(AgentId { value: "a1".into() }),
        resources: vec![scalar("cpus", 0.1), scalar("mem", 32.0)],
        command: Some(CommandInfo {
            uris: vec![command_info::Uri {
                value: "file:///srv/apps/hello.wasm".into(),
                ..Default::default()
            }],
            environment: Some(Environment {
                variables: vec![environment::Variable {
                    name: "GREETING".into(),
                    value: "hi".into(),
                }],
            }),
            shell: Some(false),
            value: Some("hello.wasm".into()),
            arguments: vec!["hello.wasm".into(), "world".into()],
            user: None,
        }),
        container: Some(ContainerInfo {
            r#type: container_info::Type::Wasm as i32,
            docker: None,
            wasm: Some(container_info::WasmInfo {
                fuel: Some(5_000_000_000),
            }),
        }),
        max_completion_time: Some(DurationInfo {
            nanoseconds: 30_000_000_000,
        }),
        ..Default::default()
    };
    assert_eq!(task, &expected);

    // And back: the same call, in the documented field names.
    assert_eq!(parse::<Call>(&to_json(&call)), call);
    let task_json = to_json(task);
    assert_eq!(
        task_json,
        r#"{"name":"hello","task_id":{"value":"t1"},"agent_id":{"value":"a1"},"resources":[{"name":"cpus","type":"SCALAR","scalar":{"value":0.1}},{"name":"mem","type":"SCALAR","scalar":{"value":32.0}}],"command":{"uris":[{"value":"file:///srv/apps/hello.wasm"}],"environment":{"variables":[{"name":"GREETING","value":"hi"}]},"shell":false,"value":"hello.wasm","arguments":["hello.wasm","world"]},"container":{"type":"WASM","wasm":{"fuel":5000000000}},"max_completion_time":{"nanoseconds":30000000000}}"#
    );
}

#[test]
fn shell_stays_absent_when_absent() {
    let command: CommandInfo = parse(r#"{"value": "echo hi"}"#);
    assert_eq!(command.shell, None);
    assert_eq!(to_json(&command), r#"{"value":"echo hi"}"#);
}

fn acknowledge_call() -> String {
    format!(
        r#"{{"type": "ACKNOWLEDGE", "framework_id": {{"value": "f1"}},
             "acknowledge": {{"slave_id": {{"value": "a1"}}, "task_id": {{"value": "t1"}},
                              "uuid": "{UUID_B64}"}}}}"#
    )
}

#[test]
fn parses_an_acknowledge_with_slave_id_and_base64_uuid() {
    let call: Call = parse(&acknowledge_call());
    assert_eq!(call.r#type(), call::Type::Acknowledge);
    assert_eq!(
        call.acknowledge,
        Some(call::Acknowledge {
            agent_id: Some(AgentId { value: "a1".into() }),
            task_id: Some(TaskId { value: "t1".into() }),
            uuid: uuid(),
        })
    );
    // Written back under the v1 name.
    assert_eq!(
        to_json(call.acknowledge.as_ref().unwrap()),
        format!(
            r#"{{"agent_id":{{"value":"a1"}},"task_id":{{"value":"t1"}},"uuid":"{UUID_B64}"}}"#
        )
    );
}

#[test]
fn slave_id_is_agent_id_everywhere_and_agent_id_wins() {
    let task = WASM_TASK.replace(r#""agent_id""#, r#""slave_id""#);
    let call: Call = parse(&accept_call(&task));
    let launch = call.accept.unwrap().operations.remove(0).launch.unwrap();
    assert_eq!(launch.task_infos[0].agent_id.as_ref().unwrap().value, "a1");

    let kill: call::Kill = parse(
        r#"{"task_id": {"value": "t1"}, "agent_id": {"value": "new"}, "slave_id": {"value": "old"}}"#,
    );
    assert_eq!(kill.agent_id.unwrap().value, "new");
    let kill: call::Kill = parse(
        r#"{"slave_id": {"value": "old"}, "task_id": {"value": "t1"}, "agent_id": {"value": "new"}}"#,
    );
    assert_eq!(kill.agent_id.unwrap().value, "new");
    let reconcile: call::Reconcile =
        parse(r#"{"tasks": [{"task_id": {"value": "t1"}, "slave_id": {"value": "a1"}}]}"#);
    assert_eq!(reconcile.tasks[0].agent_id.as_ref().unwrap().value, "a1");
}

fn update_event() -> Event {
    Event {
        r#type: event::Type::Update as i32,
        update: Some(event::Update {
            status: Some(TaskStatus {
                task_id: Some(TaskId { value: "t1".into() }),
                state: TaskState::TaskFailed as i32,
                message: "Memory limit exceeded".into(),
                source: task_status::Source::Executor as i32,
                reason: Some(task_status::Reason::ContainerLimitationMemory as i32),
                agent_id: Some(AgentId { value: "a1".into() }),
                executor_id: Some(ExecutorId { value: "e1".into() }),
                timestamp: 1_700_000_000.25,
                uuid: uuid(),
                labels: Some(Labels {
                    labels: vec![Label {
                        key: "cairn.exit_code".into(),
                        value: "137".into(),
                    }],
                }),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

#[test]
fn writes_an_update_event_exactly() {
    let event = update_event();
    let json = to_json(&event);
    assert_eq!(
        json,
        format!(
            r#"{{"type":"UPDATE","update":{{"status":{{"task_id":{{"value":"t1"}},"state":"TASK_FAILED","message":"Memory limit exceeded","source":"SOURCE_EXECUTOR","reason":"REASON_CONTAINER_LIMITATION_MEMORY","agent_id":{{"value":"a1"}},"executor_id":{{"value":"e1"}},"timestamp":1700000000.25,"uuid":"{UUID_B64}","labels":{{"labels":[{{"key":"cairn.exit_code","value":"137"}}]}}}}}}}}"#
        )
    );
    assert_eq!(parse::<Event>(&json), event);
}

fn offers_event() -> Event {
    Event {
        r#type: event::Type::Offers as i32,
        offers: Some(event::Offers {
            offers: vec![Offer {
                id: Some(OfferId { value: "o1".into() }),
                framework_id: Some(FrameworkId { value: "f1".into() }),
                agent_id: Some(AgentId { value: "a1".into() }),
                hostname: "h1".into(),
                resources: vec![
                    scalar("cpus", 4.0),
                    Resource {
                        name: "ports".into(),
                        r#type: value::Type::Ranges as i32,
                        ranges: Some(value::Ranges {
                            range: vec![value::Range {
                                begin: 31000,
                                end: 32000,
                            }],
                        }),
                        ..Default::default()
                    },
                ],
                attributes: vec![],
                url: Some(Url {
                    scheme: "http".into(),
                    address: Some(crate::v1::Address {
                        hostname: "h1".into(),
                        ip: "10.0.0.1".into(),
                        port: 5051,
                    }),
                    path: "/slave(1)".into(),
                }),
            }],
        }),
        ..Default::default()
    }
}

#[test]
fn writes_an_offers_event_with_ranges_exactly() {
    let event = offers_event();
    let json = to_json(&event);
    assert_eq!(
        json,
        r#"{"type":"OFFERS","offers":{"offers":[{"id":{"value":"o1"},"framework_id":{"value":"f1"},"agent_id":{"value":"a1"},"hostname":"h1","resources":[{"name":"cpus","type":"SCALAR","scalar":{"value":4.0}},{"name":"ports","type":"RANGES","ranges":{"range":[{"begin":31000,"end":32000}]}}],"url":{"scheme":"http","address":{"hostname":"h1","ip":"10.0.0.1","port":5051},"path":"/slave(1)"}}]}}"#
    );
    assert_eq!(parse::<Event>(&json), event);
}

#[test]
fn zero_enums_are_written_but_unset_container_type_is_not() {
    // TASK_STARTING, SCALAR and SOURCE_MASTER are Mesos values, and Mesos requires them.
    let status = TaskStatus::default();
    assert_eq!(
        to_json(&status),
        r#"{"state":"TASK_STARTING","source":"SOURCE_MASTER","timestamp":0.0}"#
    );
    assert_eq!(to_json(&Resource::default()), r#"{"type":"SCALAR"}"#);
    // UNSET is Cairn's, and absent means MESOS to Mesos clients.
    assert_eq!(to_json(&ContainerInfo::default()), "{}");
    assert_eq!(
        parse::<ContainerInfo>("{}").r#type(),
        container_info::Type::Unset
    );
}

#[test]
fn an_unknown_enum_number_is_written_as_a_number() {
    let status = TaskStatus {
        state: 77,
        reason: Some(4242),
        ..Default::default()
    };
    assert_eq!(
        to_json(&status),
        r#"{"state":77,"source":"SOURCE_MASTER","reason":4242,"timestamp":0.0}"#
    );
}

#[test]
fn known_enum_numbers_parse_leniently() {
    let call: Call = parse(r#"{"type": 1}"#);
    assert_eq!(call.r#type(), call::Type::Subscribe);
    let message = error::<Call>(br#"{"type": 13}"#);
    assert!(
        message.contains("at type") && message.contains("13"),
        "{message}"
    );
}

#[test]
fn sixty_four_bit_integers_parse_from_numbers_and_strings() {
    let d: DurationInfo = parse(r#"{"nanoseconds": "-30000000000"}"#);
    assert_eq!(d.nanoseconds, -30_000_000_000);
    let w: container_info::WasmInfo = parse(r#"{"fuel": "18446744073709551615"}"#);
    assert_eq!(w.fuel, Some(u64::MAX));
    let w: container_info::WasmInfo = parse(r#"{"fuel": 5e9}"#);
    assert_eq!(w.fuel, Some(5_000_000_000));
    let w: container_info::WasmInfo = parse(r#"{"fuel": null}"#);
    assert_eq!(w.fuel, None);
    let r: value::Range = parse(r#"{"begin": 31000, "end": 32000.0}"#);
    assert_eq!((r.begin, r.end), (31000, 32000));
    assert_eq!(to_json(&r), r#"{"begin":31000,"end":32000}"#);

    for (json, what) in [
        (r#"{"fuel": -1}"#, "-1 is not a uint64"),
        (r#"{"fuel": 1.5}"#, "1.5 is not a uint64"),
        (r#"{"fuel": "12ab"}"#, r#""12ab" is not a uint64"#),
        (r#"{"fuel": true}"#, "invalid type: boolean"),
    ] {
        let message = error::<container_info::WasmInfo>(json.as_bytes());
        assert!(
            message.contains("at fuel:") && message.contains(what),
            "{message}"
        );
    }
    let message = error::<DurationInfo>(br#"{"nanoseconds": 9223372036854775808}"#);
    assert!(
        message.contains("at nanoseconds:") && message.contains("not a int64"),
        "{message}"
    );
}

#[test]
fn bytes_are_base64() {
    let message: event::Message = parse(r#"{"data": "aGk"}"#);
    assert_eq!(message.data, b"hi");
    assert_eq!(to_json(&message), r#"{"data":"aGk="}"#);
    assert_eq!(to_json(&event::Message::default()), "{}");
}

#[test]
fn unknown_fields_are_ignored() {
    let call: Call = parse(
        r#"{"type": "DECLINE", "framework_id": {"value": "f1", "extra": [1, {"a": null}]},
            "decline": {"offer_ids": [{"value": "o1"}], "filters": {}}, "executor_id": {"value": "e"}}"#,
    );
    assert_eq!(call.r#type(), call::Type::Decline);
    assert_eq!(call.decline.unwrap().filters, Some(Filters::default()));
}

#[test]
fn bad_input_says_what_and_where() {
    let cases: &[(&[u8], &[&str])] = &[
        (br#"{"type":"NOPE"}"#, &["at type:", "unknown Call.Type value \"NOPE\""]),
        (br#"{"type":3.5}"#, &["at type:", "3.5", "Call.Type"]),
        (b"[", &["EOF"]),
        (b"", &["EOF"]),
        (b"\xff", &["expected value"]),
        (b"3", &["expected struct Call"]),
        (
            br#"{"type":"ACKNOWLEDGE","acknowledge":{"uuid":"not base64!"}}"#,
            &["at acknowledge.uuid:", "invalid base64 \"not base64!\""],
        ),
        (
            br#"{"accept":{"operations":[{"type":"LAUNCH","launch":{"task_infos":[{"container":{"type":"WASMX"}}]}}]}}"#,
            &["at accept.operations[0].launch.task_infos[0].container.type:", "\"WASMX\""],
        ),
        (
            br#"{"subscribe":{"framework_info":{"user":7}}}"#,
            &["at subscribe.framework_info.user:", "invalid type"],
        ),
        (br#"{"framework_id":{"value":"f1"},"framework_id":3}"#, &["at framework_id:"]),
    ];
    for (json, wanted) in cases {
        let message = error::<Call>(json);
        for w in *wanted {
            assert!(message.contains(w), "{message:?} lacks {w:?}");
        }
    }
    let long = format!(r#"{{"type":"{}"}}"#, "X".repeat(10_000));
    assert!(error::<Call>(long.as_bytes()).len() < 200);
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = "[".repeat(100_000);
    error::<Call>(deep.as_bytes());
    let deep = r#"{"accept":"#.repeat(50_000);
    error::<Call>(deep.as_bytes());
}

/// Field names and values that reach into the messages, for the structured fuzzing below.
const KEYS: &[&str] = &[
    "type",
    "value",
    "subscribe",
    "framework_info",
    "framework_id",
    "user",
    "name",
    "accept",
    "offer_ids",
    "operations",
    "launch",
    "task_infos",
    "task_id",
    "agent_id",
    "slave_id",
    "resources",
    "scalar",
    "ranges",
    "range",
    "begin",
    "end",
    "set",
    "item",
    "command",
    "uris",
    "shell",
    "arguments",
    "environment",
    "variables",
    "container",
    "wasm",
    "fuel",
    "max_completion_time",
    "nanoseconds",
    "acknowledge",
    "uuid",
    "decline",
    "filters",
    "refuse_seconds",
    "kill",
    "reconcile",
    "tasks",
    "update",
    "status",
    "state",
    "reason",
    "source",
    "data",
    "labels",
    "offers",
    "hostname",
    "url",
    "address",
    "port",
];
const STRINGS: &[&str] = &[
    "SUBSCRIBE",
    "ACCEPT",
    "LAUNCH",
    "SCALAR",
    "RANGES",
    "WASM",
    "UNSET",
    "TASK_FAILED",
    "REASON_CONTAINER_LIMITATION_MEMORY",
    "SOURCE_EXECUTOR",
    UUID_B64,
    "aGk",
    "123",
    "-1",
    "",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        (0..20i64).prop_map(Value::from),
        prop::sample::select(STRINGS).prop_map(Value::from),
        ".{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(8, 256, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|fields| {
                Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

/// Valid documents, for the fuzzing to break in places.
fn fixtures() -> Vec<Value> {
    let task: Value = serde_json::from_str(WASM_TASK).unwrap();
    [
        accept_call(WASM_TASK),
        acknowledge_call(),
        to_json(&update_event()),
        to_json(&offers_event()),
        to_json(&task),
    ]
    .iter()
    .map(|json| serde_json::from_str(json).unwrap())
    .collect()
}

/// Every JSON pointer into `value`.
fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            for (k, v) in fields {
                pointers(v, format!("{at}/{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                pointers(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

/// A fixture with a few of its values replaced.
fn mutated_fixture() -> impl Strategy<Value = Value> {
    let mutations = prop::collection::vec((any::<prop::sample::Index>(), json_value()), 1..4);
    (prop::sample::select(fixtures()), mutations).prop_map(|(mut doc, mutations)| {
        for (at, replacement) in mutations {
            let mut all = vec![];
            pointers(&doc, String::new(), &mut all);
            let at: &String = at.get(&all);
            *doc.pointer_mut(at).unwrap() = replacement;
        }
        doc
    })
}

/// Whatever parses writes back to JSON that parses to the same message.
fn round_trips<T>(bytes: &[u8]) -> Result<(), TestCaseError>
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    if let Ok(message) = from_json::<T>(bytes) {
        let again = from_json::<T>(to_json(&message).as_bytes());
        prop_assert_eq!(again.as_ref(), Ok(&message));
    }
    Ok(())
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = from_json::<Call>(&bytes);
        let _ = from_json::<Event>(&bytes);
    }

    #[test]
    fn json_shaped_input_never_panics_and_round_trips(value in json_value()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        round_trips::<Call>(&bytes)?;
        round_trips::<Event>(&bytes)?;
        round_trips::<TaskInfo>(&bytes)?;
        round_trips::<TaskStatus>(&bytes)?;
    }

    #[test]
    fn broken_documents_never_panic_and_round_trip(value in mutated_fixture()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        round_trips::<Call>(&bytes)?;
        round_trips::<Event>(&bytes)?;
        round_trips::<TaskInfo>(&bytes)?;
    }
}
