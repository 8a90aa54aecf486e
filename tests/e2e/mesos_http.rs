//! The Mesos v1 scheduler HTTP API driven by a plain HTTP client: JSON calls, the
//! RecordIO event stream parsed here, `Mesos-Stream-Id`, and Mesos' status codes.

use serde_json::{Value, json};

use cairn_test_support::framework::{Scheduler, accept, launch_spinning_task, wasm_task};
use cairn_test_support::harness::{
    Cluster, DEADLINE, blocking, find_files, guest, launch_states, output_within, text, wait_for,
};

use crate::CAIRN;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_http_framework_runs_a_wasm_task_through_the_mesos_api() {
    let cluster = Cluster::start_async(CAIRN).await;
    let (scheduler, mut events) = Scheduler::subscribe(&cluster.master_addr).await;

    let offers = events.next_of("OFFERS").await;
    let offer = offers["offers"]["offers"][0].clone();
    let agent_id = offer["agent_id"].clone();
    assert!(
        offer["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "cpus"),
        "{offer}"
    );

    assert_eq!(
        scheduler
            .call(accept(&offer, vec![wasm_task("t1", &agent_id, 0.5)]))
            .await
            .0,
        202
    );
    let mut states = Vec::new();
    let finished = loop {
        let update = events.next_of("UPDATE").await;
        let status = &update["update"]["status"];
        states.push(status["state"].as_str().unwrap().to_owned());
        scheduler.acknowledge(status).await;
        if states.last().unwrap() == "TASK_FINISHED" {
            break status["uuid"].clone();
        }
    };
    assert_eq!(launch_states(&states), ["TASK_RUNNING", "TASK_FINISHED"]);

    // Explicit reconciliation answers from the master's view. (The terminal update
    // may come once more, resent before its acknowledgement arrived: not the answer.)
    let reconcile =
        json!({"type": "RECONCILE", "reconcile": {"tasks": [{"task_id": {"value": "t1"}}]}});
    assert_eq!(scheduler.call(reconcile).await.0, 202);
    let update = loop {
        let update = events.next_of("UPDATE").await;
        if update["update"]["status"]["uuid"] != finished {
            break update;
        }
    };
    assert_eq!(
        update["update"]["status"]["state"], "TASK_FINISHED",
        "{update}"
    );
    assert_eq!(
        update["update"]["status"]["reason"], "REASON_RECONCILIATION",
        "{update}"
    );

    // UPDATE_FRAMEWORK moves it to another role (a registry write).
    let update = json!({"type": "UPDATE_FRAMEWORK", "update_framework": {"framework_info": {
        "user": "root", "name": "http-test", "roles": ["eng/batch"]}}});
    assert_eq!(scheduler.call(update).await.0, 202);
    let roles: Value = scheduler
        .http
        .post(format!("http://{}/api/v1", cluster.master_addr))
        .body(json!({"type": "GET_ROLES"}).to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let eng = roles["get_roles"]["roles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "eng/batch")
        .cloned();
    assert_eq!(
        eng.unwrap()["frameworks"][0]["value"],
        scheduler.framework_id.as_str(),
        "{roles}"
    );

    assert_eq!(scheduler.call(json!({"type": "TEARDOWN"})).await.0, 202);
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_calls_get_clear_4xx_and_bad_tasks_get_task_error() {
    let cluster = Cluster::start_async(CAIRN).await;
    let (scheduler, mut events) = Scheduler::subscribe(&cluster.master_addr).await;
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let agent_id = offer["agent_id"].clone();

    let (code, body) = scheduler.raw("{not json", Some(&scheduler.stream_id)).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.starts_with("cannot parse the call: "), "{body}");

    let foreign =
        json!({"type": "REVIVE", "framework_id": {"value": "no-such-framework"}}).to_string();
    let (code, body) = scheduler.raw(&foreign, Some(&scheduler.stream_id)).await;
    assert_eq!(
        (code, body.as_str()),
        (404, "framework no-such-framework is not subscribed\n")
    );

    let revive =
        json!({"type": "REVIVE", "framework_id": {"value": scheduler.framework_id}}).to_string();
    let (code, body) = scheduler.raw(&revive, Some("wrong-stream")).await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = scheduler.raw(&revive, None).await;
    assert_eq!(
        (code, body.as_str()),
        (400, "call has no Mesos-Stream-Id\n")
    );

    // Asking for more than the offer holds: TASK_ERROR, and the offer's resources return.
    assert_eq!(
        scheduler
            .call(accept(&offer, vec![wasm_task("big", &agent_id, 64.0)]))
            .await
            .0,
        202
    );
    let update = events.next_of("UPDATE").await;
    let status = &update["update"]["status"];
    assert_eq!(status["state"], "TASK_ERROR", "{update}");
    assert_eq!(status["reason"], "REASON_TASK_INVALID", "{update}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("task big needs cpus:64.1;"),
        "{update}"
    );

    // One task id twice in one ACCEPT: the first launches, the second is TASK_ERROR.
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let twins = vec![
        wasm_task("twin", &agent_id, 0.1),
        wasm_task("twin", &agent_id, 0.1),
    ];
    assert_eq!(scheduler.call(accept(&offer, twins)).await.0, 202);
    let (mut errors, mut finished) = (Vec::new(), false);
    while errors.is_empty() || !finished {
        let update = events.next_of("UPDATE").await;
        let status = &update["update"]["status"];
        finished |= status["state"] == "TASK_FINISHED";
        if status["state"] == "TASK_ERROR" {
            errors.push(status["message"].as_str().unwrap().to_owned());
        } else {
            scheduler.acknowledge(status).await;
        }
    }
    assert_eq!(errors, ["task id twin is already in use"]);

    // A LAUNCH_GROUP with one bad task: the whole group is refused, nothing launches.
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let group = json!({"type": "ACCEPT", "accept": {"offer_ids": [offer["id"]], "operations": [{
        "type": "LAUNCH_GROUP", "launch_group": {"task_group": {"tasks": [
            wasm_task("g1", &agent_id, 0.1), wasm_task("g2", &agent_id, 99.0)]}}}]}});
    assert_eq!(scheduler.call(group).await.0, 202);
    let mut refused = Vec::new();
    for _ in 0..2 {
        let update = events.next_of("UPDATE").await;
        let status = &update["update"]["status"];
        assert_eq!(status["state"], "TASK_ERROR", "{update}");
        assert_eq!(status["reason"], "REASON_TASK_GROUP_INVALID", "{update}");
        refused.push(status["task_id"]["value"].as_str().unwrap().to_owned());
    }
    refused.sort();
    assert_eq!(refused, ["g1", "g2"], "each member refused once");

    // Reusing a spent offer: TASK_DROPPED with REASON_INVALID_OFFERS.
    assert_eq!(
        scheduler
            .call(accept(&offer, vec![wasm_task("late", &agent_id, 0.1)]))
            .await
            .0,
        202
    );
    let update = events.next_of("UPDATE").await;
    assert_eq!(
        update["update"]["status"]["state"], "TASK_DROPPED",
        "{update}"
    );
    assert_eq!(
        update["update"]["status"]["reason"], "REASON_INVALID_OFFERS",
        "{update}"
    );

    // Nothing leaked: once the refusal filter lapses, the agent is offered whole again
    // but for the executor that ran `twin` (0.1 cpu, 256 MB), which lives on.
    let revive = json!({"type": "REVIVE"});
    assert_eq!(scheduler.call(revive).await.0, 202);
    let again = events.next_of("OFFERS").await;
    let cpus = again["offers"]["offers"][0]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "cpus")
        .unwrap()["scalar"]["value"]
        .as_f64()
        .unwrap();
    assert_eq!(cpus, 1.9, "{again}");
    let state = scheduler.master_state(&cluster.master_addr).await;
    assert_eq!(
        state["agents"][0]["used_resources"], "cpus:0.1;mem:256",
        "{state}"
    );
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_time_out_and_a_vanished_framework_is_removed_after_its_failover_timeout() {
    let cluster = Cluster::start_with_flags_async(
        CAIRN,
        &[
            "--offer-timeout",
            "300ms",
            "--framework-heartbeat-interval",
            "100ms",
        ],
        &[],
    )
    .await;
    let info = json!({"user": "root", "name": "vanishing", "failover_timeout": 1.0});
    let (scheduler, mut events) = Scheduler::subscribe_with(&cluster.master_addr, info).await;
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    // Nobody answers the offer: it is rescinded after the offer timeout.
    let rescind = events.next_of("RESCIND").await;
    assert_eq!(rescind["rescind"]["offer_id"], offer["id"], "{rescind}");

    drop(events);
    let framework_id = scheduler.framework_id.clone();
    scheduler
        .state_until(&cluster.master_addr, "the framework's removal", |state| {
            !state["frameworks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["id"] == framework_id.as_str())
        })
        .await;
    cluster.assert_no_panics();
}

/// A scheduler that hangs up (its event stream's connection closed) is disconnected
/// at once and its offers go to others, as Mesos notices a closed HTTP connection;
/// not only when the next heartbeat to it fails (an hour here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framework_that_hangs_up_gives_its_offers_back_at_once() {
    let cluster =
        Cluster::start_with_flags_async(CAIRN, &["--framework-heartbeat-interval", "1h"], &[])
            .await;
    let info = json!({"user": "root", "name": "hangs-up", "failover_timeout": 3600.0});
    let (gone, mut events) = Scheduler::subscribe_with(&cluster.master_addr, info).await;
    let held = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    drop(events);
    let (_, mut events) = Scheduler::subscribe(&cluster.master_addr).await;
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    assert_eq!(offer["agent_id"], held["agent_id"]);
    assert_eq!(offer["resources"], held["resources"], "all it held, back");
    let state = gone.master_state(&cluster.master_addr).await;
    let framework = (state["frameworks"].as_array().unwrap().iter())
        .find(|f| f["id"] == gone.framework_id.as_str())
        .expect("kept for its failover timeout")
        .clone();
    assert_eq!(framework["active"], false, "{framework}");
    // Counted on the metrics.
    let metrics = reqwest::get(format!("http://{}/metrics", cluster.master_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("cairn_master_framework_streams_dropped_total{reason=\"hung_up\"} 1"),
        "{metrics}"
    );
    cluster.assert_no_panics();
}

/// Runs `tests/<library>/run_wasm.py`, a framework written with an unmodified Mesos
/// scheduler library from PyPI (installed by `scripts/setup`), against a fresh cluster:
/// it launches `hello.wasm` and must see it run and finish.
fn python_framework_runs_a_wasm_task(library: &str) {
    let cluster = Cluster::start(CAIRN);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/{library}/run_wasm.py"));
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(script)
        .arg(&cluster.master_addr)
        .arg(guest("hello"));
    let out = output_within(cmd, DEADLINE);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{library} failed:\n{stdout}\n{}",
        text(&out.stderr)
    );
    // Delivery is at least once: an update resent while its acknowledgement is still
    // on its way arrives twice, in place.
    let states: Vec<&str> = stdout.lines().collect();
    assert_eq!(launch_states(&states), ["TASK_RUNNING", "TASK_FINISHED"]);
    cluster.assert_no_panics();
}

#[test]
fn pymesos_runs_a_wasm_task() {
    python_framework_runs_a_wasm_task("pymesos");
}

/// mesoshttp sends TaskInfo's old `slave_id` beside `agent_id`; the unknown field is
/// ignored, as Mesos ignores it.
#[test]
fn mesoshttp_runs_a_wasm_task() {
    python_framework_runs_a_wasm_task("mesoshttp");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_the_executor_and_its_death_is_a_failure_event() {
    let cluster = Cluster::start_async(CAIRN).await;
    let (scheduler, mut events) = Scheduler::subscribe(&cluster.master_addr).await;
    let offer = launch_spinning_task(&cluster, &scheduler, &mut events).await;
    let agent_id = offer["agent_id"].clone();
    let executor_id = format!("cairn-executor-{}", scheduler.framework_id);
    let message = json!({"type": "MESSAGE", "message": {
        "agent_id": agent_id, "executor_id": {"value": executor_id}, "data": "aGVsbG8="}});
    assert_eq!(scheduler.call(message).await.0, 202);
    let stranger = json!({"type": "MESSAGE", "message": {
        "agent_id": agent_id, "executor_id": {"value": "nobody"}, "data": ""}});
    assert_eq!(scheduler.call(stranger).await.0, 404);
    let executor_dir = cluster
        .work_dir()
        .join("frameworks")
        .join(&scheduler.framework_id)
        .join("executors")
        .join(&executor_id);
    let log = executor_dir.join("executor.log");
    blocking(move || {
        wait_for("the message in the executor's log", || {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            log.contains("framework message received bytes=5")
                .then_some(())
        })
    })
    .await;

    // kill -9 the executor: its task fails and the framework hears of the executor.
    let pid: i32 = std::fs::read_to_string(executor_dir.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let (mut failure, mut failed) = (None, None);
    while failure.is_none() || failed.is_none() {
        let e = events.next().await;
        match e["type"].as_str() {
            Some("FAILURE") => failure = Some(e),
            Some("UPDATE") => failed = Some(e["update"]["status"].clone()),
            _ => {}
        }
    }
    let failure = failure.unwrap();
    assert_eq!(
        failure["failure"]["executor_id"]["value"],
        executor_id.as_str(),
        "{failure}"
    );
    let failed = failed.unwrap();
    assert_eq!(failed["state"], "TASK_FAILED", "{failed}");
    assert_eq!(failed["reason"], "REASON_EXECUTOR_TERMINATED", "{failed}");
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_is_unreachable_and_its_tasks_come_back_when_it_does() {
    let cluster = Cluster::start_with_flags_async(CAIRN, &["--agent-timeout", "1s"], &[]).await;
    let info = json!({"user": "root", "name": "partition-aware", "capabilities": [{"type": "PARTITION_AWARE"}]});
    let (scheduler, mut events) = Scheduler::subscribe_with(&cluster.master_addr, info).await;
    launch_spinning_task(&cluster, &scheduler, &mut events).await;

    // Freeze the agent: no heartbeats. Its executor and task keep running.
    cluster.agent.signal(nix::sys::signal::Signal::SIGSTOP);
    let update = events.next_of("UPDATE").await;
    let status = &update["update"]["status"];
    assert_eq!(status["state"], "TASK_UNREACHABLE", "{update}");
    assert_eq!(status["reason"], "REASON_AGENT_REMOVED", "{update}");
    assert_eq!(status["source"], "SOURCE_MASTER", "{update}");

    // Thawed, it re-registers with its task, and the master's view is rebuilt.
    cluster.agent.signal(nix::sys::signal::Signal::SIGCONT);
    scheduler
        .state_until(
            &cluster.master_addr,
            "the agent and its task to come back",
            |state| {
                let running = state["tasks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|t| t["id"] == "spin" && t["state"] == "TASK_RUNNING");
                running && state["agents"][0]["active"] == true
            },
        )
        .await;
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_group_reaches_its_executor_whole_or_not_at_all() {
    let cluster = Cluster::start_async(CAIRN).await;
    let (scheduler, mut events) = Scheduler::subscribe(&cluster.master_addr).await;
    let launch_group = |offer: &Value, tasks: Vec<Value>| {
        json!({"type": "ACCEPT", "accept": {"offer_ids": [offer["id"]], "operations": [{
            "type": "LAUNCH_GROUP", "launch_group": {"task_group": {"tasks": tasks}}}]}})
    };
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let agent_id = offer["agent_id"].clone();
    let group = launch_group(
        &offer,
        vec![
            wasm_task("g1", &agent_id, 0.1),
            wasm_task("g2", &agent_id, 0.1),
        ],
    );
    assert_eq!(scheduler.call(group).await.0, 202);
    // Each member's first terminal state; a resent update changes nothing.
    let mut ended = std::collections::BTreeMap::new();
    while ended.len() < 2 {
        let status = events.next_of("UPDATE").await["update"]["status"].clone();
        scheduler.acknowledge(&status).await;
        let state = status["state"].as_str().unwrap().to_owned();
        if !matches!(
            state.as_str(),
            "TASK_STAGING" | "TASK_STARTING" | "TASK_RUNNING"
        ) {
            let id = status["task_id"]["value"].as_str().unwrap().to_owned();
            ended.entry(id).or_insert((state, status));
        }
    }
    for id in ["g1", "g2"] {
        let (state, status) = &ended[id];
        assert_eq!(state, "TASK_FINISHED", "{status}");
    }
    let log = find_files(&cluster.work_dir(), "executor.log")
        .pop()
        .unwrap();
    let text = std::fs::read_to_string(log).unwrap();
    assert!(text.contains("task group launched tasks=2"), "{text}");

    // One member's module cannot be fetched: the other never starts either.
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let mut broken = wasm_task("h2", &agent_id, 0.1);
    broken["command"]["uris"][0]["value"] = json!("file:///no/such/module.wasm");
    let group = launch_group(&offer, vec![wasm_task("h1", &agent_id, 0.1), broken]);
    assert_eq!(scheduler.call(group).await.0, 202);
    let mut failed = std::collections::BTreeMap::new();
    while failed.len() < 2 {
        let status = events.next_of("UPDATE").await["update"]["status"].clone();
        scheduler.acknowledge(&status).await;
        assert_eq!(status["state"], "TASK_FAILED", "never started: {status}");
        assert_eq!(
            status["reason"], "REASON_CONTAINER_LAUNCH_FAILED",
            "{status}"
        );
        let id = status["task_id"]["value"].as_str().unwrap().to_owned();
        failed.insert(id, status["message"].as_str().unwrap().to_owned());
    }
    assert!(
        failed["h1"].contains("task h2 of its group could not launch"),
        "{failed:?}"
    );
    cluster.assert_no_panics();
}
