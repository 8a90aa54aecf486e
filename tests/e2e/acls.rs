//! Two tenants side by side under `--acls`: each principal reads, kills, tears down
//! and opens only its own; every call against the other's framework, tasks and
//! sandboxes is refused (403, or a TASK_ERROR saying why) and changes nothing; the
//! same calls against its own objects succeed. `ops` may do what operators do.

use serde_json::{Value, json};

use cairn_test_support::framework::{Events, Scheduler, accept, wasm_task};
use cairn_test_support::harness::Cluster;

use crate::CAIRN;

type Credential = (&'static str, &'static str);
const ALICE: Credential = ("alice", "alice-secret");
const BOB: Credential = ("bob", "bob-secret");
const OPS: Credential = ("ops", "ops-secret");

/// Each tenant runs as its own user and role; ops sees and operates on everything.
fn acl_file() -> Value {
    let each = |alice: Value, bob: Value, ops: Option<Value>| {
        let mut rules = vec![
            json!({"principals": {"values": ["alice"]}, "_": alice}),
            json!({"principals": {"values": ["bob"]}, "_": bob}),
        ];
        rules.extend(ops.map(|o| json!({"principals": {"values": ["ops"]}, "_": o})));
        rules
    };
    let users = |key: &str| {
        let rules = each(
            json!({"values": ["nobody"]}),
            json!({"values": ["daemon"]}),
            Some(json!({"type": "ANY"})),
        );
        rename(rules, key)
    };
    let operator = |key: &str| {
        let rules = vec![json!({"principals": {"values": ["ops"]}, "_": {"type": "ANY"}})];
        rename(rules, key)
    };
    json!({
        "permissive": false,
        "register_frameworks": rename(each(json!({"values": ["alice"]}), json!({"values": ["bob"]}), None), "roles"),
        "run_tasks": rename(each(json!({"values": ["nobody"]}), json!({"values": ["daemon"]}), None), "users"),
        "teardown_frameworks": rename(each(json!({"values": ["alice"]}), json!({"values": ["bob"]}),
                                           Some(json!({"type": "ANY"}))), "framework_principals"),
        "view_frameworks": users("users"),
        "view_tasks": users("users"),
        "access_sandboxes": users("users"),
        "view_roles": rename(each(json!({"values": ["alice"]}), json!({"values": ["bob"]}),
                                  Some(json!({"type": "ANY"}))), "roles"),
        "get_quotas": operator("roles"),
        "view_flags": operator("flags"),
        "update_weights": operator("roles"),
        "update_quotas": operator("roles"),
        "mark_agents_gone": operator("agents"),
        "get_endpoints": operator("paths"),
    })
}

/// Names each rule's object (written `_` above) as its action calls it.
fn rename(rules: Vec<Value>, key: &str) -> Vec<Value> {
    (rules.into_iter())
        .map(|mut rule| {
            let object = rule.as_object_mut().unwrap().remove("_").unwrap();
            rule[key] = object;
            rule
        })
        .collect()
}

async fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap().keep();
    let credentials = dir.join("credentials.json");
    let entries = [ALICE, BOB, OPS].map(|(p, s)| json!({"principal": p, "secret": s}));
    let file = json!({ "credentials": entries });
    std::fs::write(&credentials, file.to_string()).unwrap();
    let acls = dir.join("acls.json");
    std::fs::write(&acls, acl_file().to_string()).unwrap();
    let (credentials, acls) = (
        credentials.display().to_string(),
        acls.display().to_string(),
    );
    let master_flags = [
        "--credentials",
        &credentials,
        "--authenticate-frameworks",
        "--authenticate-http-readwrite",
        "--authenticate-http-readonly",
        "--acls",
        &acls,
    ];
    let agent_flags = [
        "--http-credentials",
        &credentials,
        "--authenticate-http-readonly",
        "--acls",
        &acls,
    ];
    Cluster::start_with_flags_async(CAIRN, &master_flags, &agent_flags).await
}

/// A tenant's framework, with one finished wasm task `<name>-task`.
struct Tenant {
    scheduler: Scheduler,
    events: Events,
    task_id: String,
}

async fn tenant(master: &str, who: Credential, user: &str) -> Tenant {
    let info = json!({"user": user, "name": who.0, "role": who.0});
    let (scheduler, mut events) = Scheduler::subscribe_as(master, info, Some(who)).await;
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let task_id = format!("{}-task", who.0);
    let task = wasm_task(&task_id, &offer["agent_id"], 0.1);
    assert_eq!(scheduler.call(accept(&offer, vec![task])).await.0, 202);
    loop {
        let update = events.next_of("UPDATE").await;
        let status = &update["update"]["status"];
        scheduler.acknowledge(status).await;
        match status["state"].as_str() {
            Some("TASK_FINISHED") => break,
            Some("TASK_STARTING" | "TASK_RUNNING" | "TASK_STAGING") => {}
            other => panic!("{}'s task ended {other:?}: {status}", who.0),
        }
    }
    Tenant {
        scheduler,
        events,
        task_id,
    }
}

/// GET `url` as `who` (none: no credentials): status and JSON body (or text).
async fn get(url: &str, who: Option<Credential>) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(url);
    if let Some((p, s)) = who {
        request = request.basic_auth(p, Some(s));
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn operator(master: &str, who: Credential, call: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{master}/api/v1"))
        .basic_auth(who.0, Some(who.1))
        .header("Content-Type", "application/json")
        .body(call.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The framework ids and task ids a body names anywhere.
fn named(body: &Value, ids: &[&str]) -> Vec<String> {
    let text = body.to_string();
    (ids.iter())
        .filter(|id| text.contains(*id))
        .map(|id| id.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_sees_and_touches_only_its_own() {
    let cluster = cluster().await;
    let (master, agent) = (cluster.master_addr.as_str(), cluster.agent_addr.as_str());

    // Bob may not register under alice's role.
    let intruder = json!({"type": "SUBSCRIBE", "subscribe": {"framework_info":
        {"user": "daemon", "name": "bob", "role": "alice"}}});
    let refused = Scheduler::try_subscribe(master, &intruder, Some(BOB))
        .await
        .err();
    let (status, body) = refused.expect("bob registered under alice's role");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("register_frameworks alice"), "{body}");

    let mut alice = tenant(master, ALICE, "nobody").await;
    let bob = tenant(master, BOB, "daemon").await;
    let ids = [
        alice.scheduler.framework_id.as_str(),
        bob.scheduler.framework_id.as_str(),
        alice.task_id.as_str(),
        bob.task_id.as_str(),
    ];
    let (alices, bobs) = (
        vec![ids[0].to_owned(), ids[2].to_owned()],
        vec![ids[1].to_owned(), ids[3].to_owned()],
    );

    // Every read of the master's and the agent's state shows each its own; ops all.
    let operator_reads = ["GET_STATE", "GET_TASKS", "GET_FRAMEWORKS"];
    for (who, own) in [(ALICE, &alices), (BOB, &bobs)] {
        for path in ["state", "master/state"] {
            let (status, body) = get(&format!("http://{master}/{path}"), Some(who)).await;
            assert_eq!(status, 200, "{path}: {body}");
            assert_eq!(named(&body, &ids), *own, "{} reads /{path}: {body}", who.0);
        }
        for call in operator_reads {
            let (status, body) = operator(master, who, json!({"type": call})).await;
            assert_eq!(status, 200, "{call}: {body}");
            let seen = named(&body, &ids);
            assert!(
                seen.iter().all(|id| own.contains(id)),
                "{} reads {call}: {body}",
                who.0
            );
            assert!(
                !seen.is_empty(),
                "{} sees nothing of its own in {call}: {body}",
                who.0
            );
        }
        let (status, body) = get(&format!("http://{agent}/state"), Some(who)).await;
        assert_eq!(status, 200, "{body}");
        let own_tasks: Vec<String> = own
            .iter()
            .filter(|id| id.ends_with("-task"))
            .cloned()
            .collect();
        let seen: Vec<String> = named(&body, &ids)
            .into_iter()
            .filter(|id| id.ends_with("-task"))
            .collect();
        assert_eq!(
            seen, own_tasks,
            "{} reads the agent's /state: {body}",
            who.0
        );
    }
    // Roles: each its own; quotas and flags: ops only.
    let (_, roles) = operator(master, ALICE, json!({"type": "GET_ROLES"})).await;
    let names: Vec<&str> = (roles["get_roles"]["roles"].as_array().unwrap().iter())
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice"], "{roles}");
    let (status, body) = operator(master, BOB, json!({"type": "GET_FLAGS"})).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("view_flags"), "{body}");
    assert_eq!(
        operator(master, OPS, json!({"type": "GET_FLAGS"})).await.0,
        200
    );
    // The metrics, on both daemons, to ops alone (`get_endpoints`).
    for daemon in [master, agent] {
        let url = format!("http://{daemon}/metrics");
        let (status, body) = get(&url, Some(ALICE)).await;
        assert_eq!(status, 403, "{url}: {body}");
        assert!(body.to_string().contains("get_endpoints"), "{body}");
        assert_eq!(get(&url, Some(OPS)).await.0, 200, "{url}");
    }
    let (_, everything) = get(&format!("http://{master}/state"), Some(OPS)).await;
    assert_eq!(
        named(&everything, &ids).len(),
        4,
        "ops sees all: {everything}"
    );
    // Without credentials: 401 from master and agent alike.
    for url in [
        format!("http://{master}/state"),
        format!("http://{agent}/state"),
    ] {
        assert_eq!(get(&url, None).await.0, 401, "{url}");
    }

    // Sandboxes: each reads its own task's stdout and not the other's.
    let stdout = |framework: &str, task: &str| {
        format!("http://{agent}/files/read?framework_id={framework}&task_id={task}&path=stdout")
    };
    for (who, mine, theirs) in [
        (ALICE, (ids[0], ids[2]), (ids[1], ids[3])),
        (BOB, (ids[1], ids[3]), (ids[0], ids[2])),
    ] {
        let (status, body) = get(&stdout(mine.0, mine.1), Some(who)).await;
        assert_eq!(status, 200, "{} reads its own sandbox: {body}", who.0);
        assert!(
            body["data"].as_str().is_some_and(|d| !d.is_empty()),
            "{body}"
        );
        let (status, body) = get(&stdout(theirs.0, theirs.1), Some(who)).await;
        assert_eq!(status, 403, "{} reads the other's sandbox: {body}", who.0);
        assert!(body.to_string().contains("access_sandboxes"), "{body}");
    }

    // Operator writes: tenants may not tear down each other or weigh roles; ops may.
    let teardown =
        |id: &str| json!({"type": "TEARDOWN", "teardown": {"framework_id": {"value": id}}});
    let weights = json!({"type": "UPDATE_WEIGHTS", "update_weights": {"weight_infos": [{"role": "bob", "weight": 5.0}]}});
    let quota = json!({"type": "UPDATE_QUOTA", "update_quota": {"quota_configs": [{"role": "bob", "guarantees": {"cpus": {"value": 1.0}}}]}});
    let gone = json!({"type": "MARK_AGENT_GONE", "mark_agent_gone": {"agent_id": {"value": "no-such-agent"}}});
    for (who, call, action) in [
        (BOB, teardown(ids[0]), "teardown_frameworks"),
        (ALICE, teardown(ids[1]), "teardown_frameworks"),
        (BOB, weights.clone(), "update_weights"),
        (BOB, quota.clone(), "update_quotas"),
        (ALICE, gone.clone(), "mark_agents_gone"),
    ] {
        let (status, body) = operator(master, who, call.clone()).await;
        assert_eq!(status, 403, "{} {call}: {body}", who.0);
        assert!(body.to_string().contains(action), "{body}");
    }
    let (_, state) = get(&format!("http://{master}/state"), Some(OPS)).await;
    let frameworks = state["frameworks"].as_array().unwrap();
    assert_eq!(
        frameworks.len(),
        2,
        "a refused TEARDOWN changed nothing: {state}"
    );
    let (_, weights_now) = operator(master, OPS, json!({"type": "GET_WEIGHTS"})).await;
    assert!(!weights_now.to_string().contains("bob"), "{weights_now}");
    let (_, quota_now) = operator(master, OPS, json!({"type": "GET_QUOTA"})).await;
    assert!(!quota_now.to_string().contains("bob"), "{quota_now}");

    // A task run as the other tenant's user: TASK_ERROR, REASON_TASK_UNAUTHORIZED.
    assert_eq!(alice.scheduler.call(json!({"type": "REVIVE"})).await.0, 202);
    let offer = alice.events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let mut as_bob = wasm_task("as-daemon", &offer["agent_id"], 0.1);
    as_bob["command"]["user"] = json!("daemon");
    assert_eq!(
        alice.scheduler.call(accept(&offer, vec![as_bob])).await.0,
        202
    );
    let update = alice.events.next_of("UPDATE").await;
    let status = &update["update"]["status"];
    assert_eq!(status["state"], "TASK_ERROR", "{status}");
    assert_eq!(status["reason"], "REASON_TASK_UNAUTHORIZED", "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("run_tasks daemon"),
        "{status}"
    );

    // Each may tear down its own; ops may weigh.
    assert_eq!(operator(master, OPS, weights).await.0, 200);
    let (_, weights_now) = operator(master, OPS, json!({"type": "GET_WEIGHTS"})).await;
    assert!(
        weights_now.to_string().contains("bob"),
        "ops sees the weight: {weights_now}"
    );
    let (_, weights_now) = operator(master, ALICE, json!({"type": "GET_WEIGHTS"})).await;
    assert!(
        !weights_now.to_string().contains("bob"),
        "alice sees bob's role: {weights_now}"
    );
    assert_eq!(operator(master, BOB, teardown(ids[1])).await.0, 200);
    let (_, state) = get(&format!("http://{master}/state"), Some(OPS)).await;
    assert_eq!(named(&state["frameworks"], &ids[..2]), [ids[0]], "{state}");
    drop(bob);
    cluster.assert_no_panics();
}
