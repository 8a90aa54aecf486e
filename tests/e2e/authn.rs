//! Every caller is someone: a master with `--credentials` and the `--authenticate-*`
//! flags, called by two principals and by callers who say no one or lie. Refusals
//! are 401 with Mesos' `WWW-Authenticate` challenge, or 403, and change nothing.

use serde_json::{Value, json};

use cairn_test_support::framework::Scheduler;
use cairn_test_support::harness::{Cluster, DEADLINE, guest, output_within, text};

use crate::CAIRN;

pub(crate) const ALICE: (&str, &str) = ("alice", "alice-secret");
pub(crate) const BOB: (&str, &str) = ("bob", "bob-secret");

/// A cluster whose master authenticates every realm against alice's and bob's
/// credentials, in Mesos' JSON form.
pub(crate) async fn authenticating_cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap().keep();
    let credentials = dir.join("credentials.json");
    let file = json!({"credentials": [
        {"principal": ALICE.0, "secret": ALICE.1},
        {"principal": BOB.0, "secret": BOB.1},
    ]});
    std::fs::write(&credentials, file.to_string()).unwrap();
    let credentials = credentials.display().to_string();
    let master_flags = [
        "--credentials",
        credentials.as_str(),
        "--authenticate-frameworks",
        "--authenticate-http-readwrite",
        "--authenticate-http-readonly",
    ];
    Cluster::start_with_flags_async(CAIRN, &master_flags, &[]).await
}

fn subscribe_call(framework_info: Value) -> Value {
    json!({"type": "SUBSCRIBE", "subscribe": {"framework_info": framework_info}})
}

fn framework(name: &str) -> Value {
    json!({"user": "nobody", "name": name})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedulers_must_say_who_they_are_and_may_act_only_on_their_own_frameworks() {
    let cluster = authenticating_cluster().await;
    let master = cluster.master_addr.as_str();
    // No credentials, a wrong secret, an unknown principal: 401 with the challenge.
    for credential in [None, Some((ALICE.0, "wrong")), Some(("mallory", "x"))] {
        let refused = Scheduler::try_subscribe(master, &subscribe_call(framework("f")), credential)
            .await
            .err()
            .unwrap_or_else(|| panic!("{credential:?} was let in"));
        assert_eq!(refused.0, 401, "{refused:?}");
        assert!(
            refused
                .1
                .contains(r#"WWW-Authenticate: Basic realm="mesos-master-scheduler""#),
            "{refused:?}"
        );
    }
    // A FrameworkInfo naming another principal than the caller: 403.
    let mut as_bob = framework("liar");
    as_bob["principal"] = json!(BOB.0);
    let refused = Scheduler::try_subscribe(master, &subscribe_call(as_bob), Some(ALICE))
        .await
        .err()
        .expect("alice subscribed as bob");
    assert_eq!(refused.0, 400, "{refused:?}");
    assert!(
        refused.1.contains("does not match principal 'bob'"),
        "{refused:?}"
    );

    // Alice subscribes naming no principal: she is its principal.
    let (alice, mut alice_events) =
        Scheduler::subscribe_as(master, framework("alice-fw"), Some(ALICE)).await;
    let state = alice.master_state(master).await;
    let registered = (state["frameworks"].as_array().unwrap().iter())
        .find(|f| f["id"] == alice.framework_id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("alice's framework is not in {state}"));
    assert_eq!(registered["principal"], ALICE.0, "{registered}");

    // Bob may not fail alice's framework over, even naming her as its principal.
    let mut takeover = framework("alice-fw");
    takeover["id"] = json!({"value": alice.framework_id});
    takeover["principal"] = json!(ALICE.0);
    let refused = Scheduler::try_subscribe(master, &subscribe_call(takeover.clone()), Some(BOB))
        .await
        .err()
        .expect("bob took over alice's framework");
    assert_eq!(refused.0, 400, "{refused:?}");
    takeover["principal"] = json!(BOB.0);
    let refused = Scheduler::try_subscribe(master, &subscribe_call(takeover), Some(BOB))
        .await
        .err()
        .expect("bob took over alice's framework");
    assert_eq!(refused.0, 403, "{refused:?}");
    assert!(
        refused.1.contains("another principal than 'bob'"),
        "{refused:?}"
    );

    // Nor act on it with her stream id: TEARDOWN by bob is refused, and changes nothing.
    let mut stolen = alice.clone();
    stolen.credential = Some((BOB.0.into(), BOB.1.into()));
    let (status, body) = stolen.call(json!({"type": "TEARDOWN"})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Authenticated principal 'bob' does not match principal 'alice'"));
    // Alice's stream is still hers: her own calls are accepted.
    assert_eq!(alice.call(json!({"type": "REVIVE"})).await.0, 202);
    let offers = alice_events.next_of("OFFERS").await;
    assert!(!offers["offers"]["offers"].as_array().unwrap().is_empty());
    let state = alice.master_state(master).await;
    let alive = (state["frameworks"].as_array().unwrap().iter())
        .any(|f| f["id"] == alice.framework_id.as_str() && f["active"] == true);
    assert!(alive, "alice's framework is gone: {state}");
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_and_state_endpoints_ask_for_credentials_and_health_does_not() {
    let cluster = authenticating_cluster().await;
    let master = cluster.master_addr.as_str();
    let http = reqwest::Client::new();
    let weights = json!({"type": "UPDATE_WEIGHTS", "update_weights": {
        "weight_infos": [{"role": "analytics", "weight": 3.0}]}});
    let get_weights = json!({"type": "GET_WEIGHTS"});
    let operator = |call: &Value, credential: Option<(&str, &str)>| {
        let mut request = http
            .post(format!("http://{master}/api/v1"))
            .header("Content-Type", "application/json")
            .body(call.to_string());
        if let Some((principal, secret)) = credential {
            request = request.basic_auth(principal, Some(secret));
        }
        request.send()
    };
    for credential in [None, Some((BOB.0, "wrong"))] {
        let refused = operator(&weights, credential).await.unwrap();
        assert_eq!(refused.status(), 401);
        assert_eq!(
            refused.headers()["WWW-Authenticate"],
            r#"Basic realm="mesos-master-readwrite""#
        );
    }
    // Nothing changed.
    let read = operator(&get_weights, Some(BOB)).await.unwrap();
    assert_eq!(read.status(), 200);
    let body: Value = read.json().await.unwrap();
    assert!(!body.to_string().contains("analytics"), "{body}");
    assert_eq!(operator(&weights, Some(BOB)).await.unwrap().status(), 200);
    let body: Value = operator(&get_weights, Some(BOB))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(body.to_string().contains("analytics"), "{body}");

    for path in ["state", "master/state"] {
        let url = format!("http://{master}/{path}");
        let refused = http.get(&url).send().await.unwrap();
        assert_eq!(refused.status(), 401, "{path}");
        assert_eq!(
            refused.headers()["WWW-Authenticate"],
            r#"Basic realm="mesos-master-readonly""#
        );
        let read = http
            .get(&url)
            .basic_auth(ALICE.0, Some(ALICE.1))
            .send()
            .await;
        assert_eq!(read.unwrap().status(), 200, "{path}");
    }
    let health = http.get(format!("http://{master}/health")).send().await;
    assert_eq!(health.unwrap().status(), 200);

    // Each write and each refused authentication is in the audit log and counted.
    let line = cluster
        .master
        .logged(r#"call="UPDATE_WEIGHTS" target="analytics" result="accepted""#)
        .await;
    assert!(line.contains(r#"principal="bob""#), "{line}");
    let metrics = http.get(format!("http://{master}/metrics"));
    let metrics = metrics.basic_auth(BOB.0, Some(BOB.1)).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    let count = |result: &str| -> u64 {
        let key = format!("cairn_master_audit_calls_total{{result=\"{result}\"}} ");
        let line = metrics.lines().find(|l| l.starts_with(&key));
        line.and_then(|l| l[key.len()..].parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {metrics}"))
    };
    // Two refused UPDATE_WEIGHTS, two refused state reads; the agent's registration
    // and bob's UPDATE_WEIGHTS (reads are not counted).
    assert_eq!(count("unauthenticated"), 4, "{metrics}");
    assert_eq!(count("accepted"), 2, "{metrics}");
    cluster.assert_no_panics();
}

/// pymesos, unmodified from PyPI, sends its principal and secret as HTTP Basic: with
/// them it runs a task; without, the master refuses it (401) and it aborts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymesos_authenticates_with_principal_and_secret() {
    let cluster = authenticating_cluster().await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pymesos/run_wasm.py");
    let run = |credential: Option<(&str, &str)>| {
        let mut cmd = std::process::Command::new("python3");
        cmd.arg(&script)
            .arg(&cluster.master_addr)
            .arg(guest("hello"));
        if let Some((principal, secret)) = credential {
            cmd.args([principal, secret]);
        }
        cmd
    };
    let (with, without) = (run(Some(ALICE)), run(None));
    let (with, without) = cairn_test_support::harness::blocking(move || {
        (
            output_within(with, DEADLINE),
            output_within(without, DEADLINE),
        )
    })
    .await;
    assert!(
        with.status.success(),
        "pymesos with credentials failed:\n{}\n{}",
        text(&with.stdout),
        text(&with.stderr)
    );
    assert!(text(&with.stdout).contains("TASK_FINISHED"));
    assert_eq!(without.status.code(), Some(2), "{}", text(&without.stderr));
    assert!(
        text(&without.stderr).contains("Failed with HTTP 401"),
        "{}",
        text(&without.stderr)
    );
    cluster.assert_no_panics();
}

/// mesoshttp's `set_credentials` puts the principal and secret in its SUBSCRIBE's body
/// (`subscribe.credentials`, a field Mesos' scheduler API does not have) and sends no
/// `Authorization`: a master that authenticates frameworks refuses it with 401, as
/// Mesos does. (mesoshttp authenticates to Mesos only with a DC/OS service account.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesoshttp_credentials_are_not_http_authentication() {
    let cluster = authenticating_cluster().await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mesoshttp/run_wasm.py");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(&script)
        .arg(&cluster.master_addr)
        .arg(guest("hello"))
        .args([ALICE.0, ALICE.1]);
    let out = cairn_test_support::harness::output_within_async(cmd, DEADLINE).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("refused"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("needs credentials"),
        "{}",
        text(&out.stderr)
    );
    cluster.assert_no_panics();
}

/// Registers a fake agent (the test's own gRPC client) under `agent_id` with the
/// HTTP Basic `credential`; returns the refusal, if any.
async fn fake_agent(
    master: &str,
    agent_id: &str,
    credential: Option<(&str, &str)>,
) -> Result<(), tonic::Status> {
    use base64::Engine as _;
    use cairn_api::internal::agent_registry_client::AgentRegistryClient;
    use cairn_api::internal::{AgentMessage, RegisterAgent, agent_message};

    let mut client = AgentRegistryClient::connect(format!("http://{master}"))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let info = cairn_test_support::framework::fake_agent_info(agent_id, "cpus:64;mem:65536");
    let register = RegisterAgent {
        info: Some(info),
        version: cairn_api::VERSION.into(),
        ..Default::default()
    };
    let message = agent_message::Message::Register(register);
    tx.send(AgentMessage {
        message: Some(message),
    })
    .await
    .unwrap();
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some((principal, secret)) = credential {
        let pair =
            base64::engine::general_purpose::STANDARD.encode(format!("{principal}:{secret}"));
        let header = format!("Basic {pair}").parse().unwrap();
        request.metadata_mut().insert("authorization", header);
    }
    let mut inbound = client.register(request).await?.into_inner();
    inbound.message().await?;
    Ok(())
}

/// With `--authenticate-agents`, an agent registers with its `--credential`, and its
/// id is its principal's: a fake agent without credentials, or with another
/// principal's, can take neither its id nor a new one, and the real agent serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_authenticate_and_no_other_principal_takes_an_agents_id() {
    let dir = tempfile::tempdir().unwrap().keep();
    let credentials = dir.join("credentials.json");
    let file = json!({"credentials": [
        {"principal": "agent-a", "secret": "agent-secret"},
        {"principal": BOB.0, "secret": BOB.1},
    ]});
    std::fs::write(&credentials, file.to_string()).unwrap();
    let credential = dir.join("credential");
    std::fs::write(&credential, "agent-a agent-secret\n").unwrap();
    let (credentials, credential) = (
        credentials.display().to_string(),
        credential.display().to_string(),
    );
    let master_flags = [
        "--credentials",
        credentials.as_str(),
        "--authenticate-agents",
    ];
    let agent_flags = ["--credential", credential.as_str()];
    let cluster = Cluster::start_with_flags_async(CAIRN, &master_flags, &agent_flags).await;
    let master = cluster.master_addr.as_str();
    let (scheduler, mut events) = Scheduler::subscribe(master).await;
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let agent_id = offer["agent_id"]["value"].as_str().unwrap().to_owned();

    let refused = fake_agent(master, &agent_id, None).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let refused = fake_agent(master, &agent_id, Some((BOB.0, "wrong"))).await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::Unauthenticated);
    let refused = fake_agent(master, &agent_id, Some(BOB)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("another principal than 'bob'"),
        "{refused:?}"
    );
    // The real agent still holds its id: a task launched on it runs.
    let task = cairn_test_support::framework::wasm_task("after-fakes", &offer["agent_id"], 0.1);
    let accept = cairn_test_support::framework::accept(&offer, vec![task]);
    assert_eq!(scheduler.call(accept).await.0, 202);
    loop {
        let status = events.next_of("UPDATE").await["update"]["status"].clone();
        scheduler.acknowledge(&status).await;
        if status["state"] == "TASK_FINISHED" {
            assert_eq!(status["agent_id"]["value"], agent_id.as_str(), "{status}");
            break;
        }
        let state = status["state"].as_str().unwrap_or_default();
        assert!(
            matches!(state, "TASK_STARTING" | "TASK_RUNNING"),
            "{status}"
        );
    }
    cluster.assert_no_panics();
}

/// The gRPC scheduler API asks for the same credentials, as `authorization` metadata:
/// none or a wrong secret is UNAUTHENTICATED and registers nothing; the right one
/// subscribes, and the framework is its principal's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_schedulers_authenticate_too() {
    use base64::Engine as _;
    use cairn_api::v1::scheduler_client::SchedulerClient;
    use cairn_api::v1::{Call, FrameworkInfo, call, event};

    let cluster = authenticating_cluster().await;
    let master = cluster.master_addr.as_str();
    let mut client = SchedulerClient::connect(format!("http://{master}"))
        .await
        .unwrap();
    let subscribe = |credential: Option<(&str, &str)>| {
        let call = Call {
            r#type: call::Type::Subscribe as i32,
            subscribe: Some(call::Subscribe {
                framework_info: Some(FrameworkInfo {
                    name: "grpc".into(),
                    user: "nobody".into(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let mut request = tonic::Request::new(call);
        if let Some((principal, secret)) = credential {
            let basic =
                base64::engine::general_purpose::STANDARD.encode(format!("{principal}:{secret}"));
            let value = format!("Basic {basic}").parse().unwrap();
            request.metadata_mut().insert("authorization", value);
        }
        request
    };
    for credential in [None, Some((ALICE.0, "wrong"))] {
        let refused = client.subscribe(subscribe(credential)).await.err();
        let status = refused.unwrap_or_else(|| panic!("{credential:?} subscribed over gRPC"));
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        assert!(!status.message().is_empty(), "{status:?}");
    }
    let state = || async {
        let request = reqwest::Client::new().get(format!("http://{master}/state"));
        let response = request
            .basic_auth(ALICE.0, Some(ALICE.1))
            .send()
            .await
            .unwrap();
        response.json::<Value>().await.unwrap()
    };
    let before = state().await;
    assert!(
        before["frameworks"].as_array().unwrap().is_empty(),
        "{before}"
    );
    let mut events = client
        .subscribe(subscribe(Some(ALICE)))
        .await
        .unwrap()
        .into_inner();
    let first = events.message().await.unwrap().unwrap();
    assert_eq!(first.r#type, event::Type::Subscribed as i32);
    let after = state().await;
    assert_eq!(after["frameworks"][0]["principal"], ALICE.0, "{after}");
    cluster.assert_no_panics();
}
