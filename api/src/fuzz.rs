//! Fuzzing of everything a daemon decodes from outside before it acts: the gRPC
//! messages of schedulers, agents and executors (protobuf), the Mesos JSON of the
//! HTTP API (also fuzzed in `json/tests.rs`), `Authorization` headers, and the
//! `--credentials` and `--acls` files. Nothing may panic. The number of cases is
//! proptest's: `PROPTEST_CASES=100000 cargo nextest run -E 'test(fuzz::)'` is the
//! long run that docs/security.md reports.

use proptest::prelude::*;
use prost::Message as _;

use crate::authn::{Authentication, Credentials, Realm, Realms};
use crate::authz::{Acls, Action, Entity};
use crate::internal::{AgentMessage, ExecutorCall, MasterMessage, RegisterAgent};
use crate::v1::{Call, Event, TaskInfo};

/// Decodes `bytes` as every message a daemon reads off the network, and converts
/// what decodes the way the daemons do first (resources, ids).
fn decode_everything(bytes: &[u8]) {
    if let Ok(call) = Call::decode(bytes) {
        let infos = (call.accept.iter().flat_map(|a| &a.operations))
            .filter_map(|o| o.launch.as_ref())
            .flat_map(|l| &l.task_infos);
        for task in infos {
            let _ = crate::Resources::from_proto(&task.resources);
            let _ = crate::charges::container_type(task);
        }
        let _ = crate::json::to_json(&call);
    }
    if let Ok(message) = AgentMessage::decode(bytes) {
        let _ = message.encode_to_vec();
    }
    if let Ok(register) = RegisterAgent::decode(bytes) {
        let resources = register.info.map(|i| i.resources).unwrap_or_default();
        let _ = crate::Resources::from_proto(&resources);
    }
    let _ = MasterMessage::decode(bytes);
    let _ = ExecutorCall::decode(bytes);
    let _ = Event::decode(bytes);
    if let Ok(task) = TaskInfo::decode(bytes) {
        let _ = crate::Resources::from_proto(&task.resources);
    }
}

/// A valid call to mutate: the fuzzer's bytes start from real messages too.
fn seed_call() -> Vec<u8> {
    let json = br#"{"type": "ACCEPT", "framework_id": {"value": "f"}, "accept": {"offer_ids": [{"value": "o"}], "operations": [{"type": "LAUNCH", "launch": {"task_infos": [{"name": "t", "task_id": {"value": "t"}, "agent_id": {"value": "a"}, "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}}, {"name": "ports", "type": "RANGES", "ranges": {"range": [{"begin": 1, "end": 9}]}}], "command": {"value": "x"}}]}}]}}"#;
    crate::json::from_json::<Call>(json)
        .expect("the seed call")
        .encode_to_vec()
}

fn credentials(text: &str) -> Option<Authentication> {
    let credentials = Credentials::parse(text).ok()?;
    let realms = Realms {
        frameworks: true,
        ..Default::default()
    };
    Authentication::new(Some(credentials), realms).ok()
}

/// JSON shaped like an ACL file: known and unknown actions, entities well and
/// badly formed.
fn acl_json() -> impl Strategy<Value = String> {
    let entity = prop_oneof![
        Just(r#"{"type": "ANY"}"#.to_owned()),
        Just(r#"{"type": "NONE"}"#.to_owned()),
        Just(r#"{"type": "SOME"}"#.to_owned()),
        "[a-z]{0,3}".prop_map(|v| format!(r#"{{"values": ["{v}"]}}"#)),
        Just(r#"{"values": 7}"#.to_owned()),
        Just("null".to_owned()),
    ];
    let key = prop_oneof![
        Just("roles"),
        Just("users"),
        Just("framework_principals"),
        Just("agents"),
        Just("paths")
    ];
    let rule = (entity.clone(), key, entity)
        .prop_map(|(p, k, o)| format!(r#"{{"principals": {p}, "{k}": {o}}}"#));
    let action = prop_oneof![
        Just("register_frameworks"),
        Just("run_tasks"),
        Just("view_tasks"),
        Just("update_quotas"),
        Just("update_quota"),
        Just("get_endpoints"),
        Just("launch_rockets"),
    ];
    let list = (action, prop::collection::vec(rule, 0..4))
        .prop_map(|(a, rules)| format!(r#""{a}": [{}]"#, rules.join(",")));
    let permissive = prop_oneof![
        Just(""),
        Just(r#""permissive": false,"#),
        Just(r#""permissive": 1,"#)
    ];
    (permissive, prop::collection::vec(list, 0..4))
        .prop_map(|(p, lists)| format!("{{{p}{}}}", lists.join(",")))
}

proptest! {
    #[test]
    fn grpc_messages_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_everything(&bytes);
    }

    #[test]
    fn mutated_grpc_calls_never_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = seed_call();
        for (at, byte) in flips {
            let at = at.index(bytes.len());
            bytes[at] = byte;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        decode_everything(&bytes);
    }

    #[test]
    fn authorization_headers_never_panic(header in prop::collection::vec(any::<u8>(), 0..128)) {
        let auth = credentials("alice secret").expect("a credentials file");
        let _ = auth.principal(Realm::Scheduler, Some(&header));
        let mut basic = b"Basic ".to_vec();
        basic.extend(&header);
        let _ = auth.principal(Realm::Scheduler, Some(&basic));
    }

    #[test]
    fn credential_files_never_panic(text in any::<String>()) {
        let _ = credentials(&text);
    }

    #[test]
    fn json_credential_files_never_panic(
        entries in prop::collection::vec(("[a-z:]{0,4}", "\\PC{0,6}"), 0..4),
    ) {
        let list: Vec<String> = (entries.iter())
            .map(|(p, s)| serde_json::json!({"principal": p, "secret": s}).to_string())
            .collect();
        let text = format!(r#"{{"credentials": [{}]}}"#, list.join(","));
        if let Some(auth) = credentials(&text) {
            let _ = auth.principal(Realm::Scheduler, Some(b"Basic YTpi"));
        }
    }

    #[test]
    fn acl_files_never_panic_and_decide(text in acl_json(), who in "[a-z]{0,3}", what in "[a-z]{0,3}") {
        if let Ok(acls) = Acls::parse(&text) {
            for action in [Action::RegisterFrameworks, Action::RunTasks, Action::ViewTasks, Action::UpdateQuota] {
                let _ = acls.check(Some(&who), action, &Entity::one(&what));
                let _ = acls.check(None, action, &Entity::ANY);
            }
        }
    }

    #[test]
    fn arbitrary_acl_text_never_panics(text in any::<String>()) {
        let _ = Acls::parse(&text);
    }
}
