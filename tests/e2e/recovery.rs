//! Agents that never lose a task: kill -9 the agent, the executor or the master, cut
//! a socket, fill the checkpoint's disk, corrupt the checkpoint, and check that every
//! update still reaches the framework, in order, or that the loss is reported.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use cairn_test_support::framework::{Events, Scheduler, accept};
use cairn_test_support::harness::{
    Cluster, blocking, find_files, get_json, guest, in_sandbox_of, kill_executors, launch_states,
    wait_for,
};

use crate::CAIRN;

/// A framework that survives its scheduler's disconnection for an hour.
pub fn framework_info(id: Option<&str>) -> Value {
    let mut info = json!({"user": "root", "name": "recovery-test", "failover_timeout": 3600.0});
    if let Some(id) = id {
        info["id"] = json!({"value": id});
    }
    info
}

/// A task running `gate.wasm`: it runs until a file named `open` appears in its sandbox.
pub fn gate_task(task_id: &str, agent_id: &Value) -> Value {
    let module = guest("gate");
    json!({
        "name": "gate", "task_id": {"value": task_id}, "agent_id": agent_id,
        "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}},
                      {"name": "mem", "type": "SCALAR", "scalar": {"value": 16}}],
        "command": {"uris": [{"value": format!("file://{}", module.display())}],
                    "value": "gate.wasm", "shell": false, "arguments": ["gate.wasm", "open"]},
        "container": {"type": "WASM"}
    })
}

/// Opens a gate task's gate, wherever the agent put its sandbox.
pub fn open_gate(work_dir: &Path, task_id: &str) {
    let sandbox: PathBuf = find_files(work_dir, "gate.wasm")
        .into_iter()
        .filter(|p| in_sandbox_of(p, task_id))
        .map(|p| p.parent().unwrap().to_owned())
        .next()
        .unwrap_or_else(|| panic!("no sandbox for {task_id} under {}", work_dir.display()));
    std::fs::write(sandbox.join("open"), b"").unwrap();
}

/// Launches a gate task on the next offer and acknowledges updates until it runs;
/// returns the states seen and the agent id.
pub async fn launch_gate(
    scheduler: &Scheduler,
    events: &mut Events,
    task_id: &str,
) -> (Vec<String>, Value) {
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let task = gate_task(task_id, &offer["agent_id"]);
    assert_eq!(scheduler.call(accept(&offer, vec![task])).await.0, 202);
    let states = updates_until(scheduler, events, "TASK_RUNNING").await;
    (states, offer["agent_id"].clone())
}

/// Acknowledges every update until one reaches `state`; returns the states in order.
pub async fn updates_until(scheduler: &Scheduler, events: &mut Events, state: &str) -> Vec<String> {
    let mut states = Vec::new();
    loop {
        let update = events.next_of("UPDATE").await;
        let status = &update["update"]["status"];
        scheduler.acknowledge(status).await;
        let s = status["state"].as_str().unwrap().to_owned();
        let done = s == state;
        states.push(s);
        if done {
            return states;
        }
    }
}

/// The next update, acknowledged.
pub async fn next_update(scheduler: &Scheduler, events: &mut Events) -> Value {
    let update = events.next_of("UPDATE").await;
    let status = update["update"]["status"].clone();
    scheduler.acknowledge(&status).await;
    status
}

fn agent_state(agent_addr: &str) -> Value {
    get_json(agent_addr, "/state")
}

/// Whether process `pid` has ended: gone, or a zombie nobody has reaped yet (the
/// executor outlived the agent that started it, so this test is not its parent).
fn has_ended(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            state == Some("Z")
        }
    }
}

/// States in order with repeats folded: a resent update may arrive twice.
fn distinct(states: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in states {
        if out.last() != Some(s) {
            out.push(s.clone());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_outlives_an_agent_killed_mid_run_and_every_update_arrives_in_order() {
    let mut cluster = Cluster::start_async(CAIRN).await;
    let (scheduler, mut events) =
        Scheduler::subscribe_with(&cluster.master_addr, framework_info(None)).await;
    let (mut states, agent_id) = launch_gate(&scheduler, &mut events, "gated").await;
    let addr = cluster.agent_addr.clone();
    let before = blocking(move || agent_state(&addr)).await;
    let executor_pid = before["executors"][0]["pid"].clone();
    assert!(executor_pid.is_u64(), "{before}");

    cluster.agent.kill();
    let agent = cluster.restart_agent(&[]).await;
    agent.logged("registered with the master").await;
    let agent_addr = agent.logged_address("http").await;
    cluster.agent = agent;

    // The same executor process, re-attached: it re-subscribed over the socket.
    let after = blocking(move || {
        wait_for("the executor to re-subscribe", || {
            let s = agent_state(&agent_addr);
            (s["executors"][0]["subscribed"] == true).then_some(s)
        })
    })
    .await;
    assert_eq!(after["executors"][0]["pid"], executor_pid, "{after}");
    assert_eq!(after["executors"][0]["recovered"], true, "{after}");
    assert_eq!(after["id"], agent_id["value"], "same agent id: {after}");

    open_gate(&cluster.work_dir(), "gated");
    states.extend(updates_until(&scheduler, &mut events, "TASK_FINISHED").await);
    assert_eq!(
        launch_states(&states),
        ["TASK_RUNNING", "TASK_FINISHED"],
        "{states:?}"
    );
    let state = scheduler
        .state_until(&cluster.master_addr, "the task to complete", |s| {
            s["completed_tasks"]
                .as_array()
                .is_some_and(|c| c.iter().any(|t| t["id"] == "gated"))
        })
        .await;
    assert_eq!(state["agents"].as_array().unwrap().len(), 1, "{state}");
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_executor_died_while_the_agent_was_down_fails_with_the_reason() {
    let mut cluster = Cluster::start_async(CAIRN).await;
    let (scheduler, mut events) =
        Scheduler::subscribe_with(&cluster.master_addr, framework_info(None)).await;
    launch_gate(&scheduler, &mut events, "orphan").await;
    cluster.agent.kill();
    kill_executors(&cluster.work_dir());
    cluster.agent = cluster.restart_agent(&[]).await;
    // RUNNING may come again first: the agent died before its acknowledgement was
    // checkpointed, so it resends it (at least once, never lost).
    let mut status = next_update(&scheduler, &mut events).await;
    while status["state"] == "TASK_RUNNING" {
        status = next_update(&scheduler, &mut events).await;
    }
    assert_eq!(status["state"], "TASK_FAILED", "{status}");
    assert_eq!(status["reason"], "REASON_EXECUTOR_TERMINATED", "{status}");
    assert_eq!(status["source"], "SOURCE_AGENT", "{status}");
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_held_while_the_master_is_down_arrive_when_it_is_back() {
    let mut cluster = Cluster::start_async(CAIRN).await;
    let (scheduler, mut events) =
        Scheduler::subscribe_with(&cluster.master_addr, framework_info(None)).await;
    launch_gate(&scheduler, &mut events, "held").await;
    drop(events);
    cluster.master.kill();
    open_gate(&cluster.work_dir(), "held");
    // The task finishes with no master: its update waits, checkpointed, on the agent.
    let agent_addr = cluster.agent_addr.clone();
    blocking(move || {
        wait_for("the update to be held", || {
            let s = agent_state(&agent_addr);
            // RUNNING may still be pending too, if the master died before its ack
            // reached the agent.
            let held = s["pending_updates"].as_u64().unwrap() >= 1;
            (held && s["tasks"][0]["state"] == "TASK_FINISHED").then_some(())
        })
    })
    .await;

    cluster.master = cluster.restart_master().await;
    let info = framework_info(Some(&scheduler.framework_id));
    let (scheduler, mut events) = Scheduler::subscribe_with(&cluster.master_addr, info).await;
    let states = updates_until(&scheduler, &mut events, "TASK_FINISHED").await;
    assert!(
        distinct(&states) == ["TASK_FINISHED"]
            || distinct(&states) == ["TASK_RUNNING", "TASK_FINISHED"],
        "{states:?}"
    );
    let agent_addr = cluster.agent_addr.clone();
    blocking(move || {
        wait_for("the acknowledgement to reach the agent", || {
            (agent_state(&agent_addr)["pending_updates"] == 0).then_some(())
        })
    })
    .await;
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_update_is_redelivered_to_a_restarted_scheduler() {
    let cluster = Cluster::start_async(CAIRN).await;
    let (scheduler, mut events) =
        Scheduler::subscribe_with(&cluster.master_addr, framework_info(None)).await;
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let task = gate_task("unacked", &offer["agent_id"]);
    assert_eq!(scheduler.call(accept(&offer, vec![task])).await.0, 202);
    let first = events.next_of("UPDATE").await["update"]["status"].clone();
    assert!(
        first["state"] == "TASK_STARTING" || first["state"] == "TASK_RUNNING",
        "{first}"
    );
    // The scheduler goes away without acknowledging, and comes back.
    drop(events);
    let info = framework_info(Some(&scheduler.framework_id));
    let (scheduler, mut events) = Scheduler::subscribe_with(&cluster.master_addr, info).await;
    let again = next_update(&scheduler, &mut events).await;
    assert_eq!(again["uuid"], first["uuid"], "the same update, redelivered");
    assert_eq!(again["state"], first["state"]);
    let mut states = vec![again["state"].as_str().unwrap().to_owned()];
    if again["state"] != "TASK_RUNNING" {
        states.extend(updates_until(&scheduler, &mut events, "TASK_RUNNING").await);
    }
    open_gate(&cluster.work_dir(), "unacked");
    states.extend(updates_until(&scheduler, &mut events, "TASK_FINISHED").await);
    assert_eq!(
        launch_states(&states),
        ["TASK_RUNNING", "TASK_FINISHED"],
        "{states:?}"
    );
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_marked_gone_loses_its_tasks_and_may_not_come_back() {
    let cluster = Cluster::start_async(CAIRN).await;
    let (scheduler, mut events) =
        Scheduler::subscribe_with(&cluster.master_addr, framework_info(None)).await;
    let (_, agent_id) = launch_gate(&scheduler, &mut events, "doomed").await;
    let master = cluster.master_addr.clone();
    let call = json!({"type": "MARK_AGENT_GONE", "mark_agent_gone": {"agent_id": agent_id}});
    let (code, body) = {
        let (master, call) = (master.clone(), call.clone());
        blocking(move || crate::operator::operator(&master, call)).await
    };
    assert_eq!(code, 200, "{body}");
    let status = next_update(&scheduler, &mut events).await;
    assert_eq!(status["state"], "TASK_GONE_BY_OPERATOR", "{status}");
    assert_eq!(
        status["reason"], "REASON_AGENT_REMOVED_BY_OPERATOR",
        "{status}"
    );
    // Idempotent; an unknown agent is a 404; the agent is refused when it retries.
    let unknown = json!({"type": "MARK_AGENT_GONE", "mark_agent_gone": {"agent_id": {"value": "no-such-agent"}}});
    let (again, unknown) = blocking(move || {
        (
            crate::operator::operator(&master, call).0,
            crate::operator::operator(&master, unknown).0,
        )
    })
    .await;
    assert_eq!((again, unknown), (200, 404));
    cluster.agent.logged("marked gone by the operator").await;
    let state = scheduler.master_state(&cluster.master_addr).await;
    assert!(state["agents"].as_array().unwrap().is_empty(), "{state}");
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teardown_while_the_agent_was_away_reaches_it_when_it_returns() {
    let mut cluster = Cluster::start_async(CAIRN).await;
    let (scheduler, mut events) =
        Scheduler::subscribe_with(&cluster.master_addr, framework_info(None)).await;
    launch_gate(&scheduler, &mut events, "orphaned").await;
    let addr = cluster.agent_addr.clone();
    let before = blocking(move || agent_state(&addr)).await;
    let executor_pid = before["executors"][0]["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no executor: {before}"));
    cluster.agent.kill();
    let master = cluster.master_addr.clone();
    let teardown = json!({"type": "TEARDOWN", "teardown": {"framework_id": {"value": scheduler.framework_id}}});
    let (code, body) = blocking(move || crate::operator::operator(&master, teardown)).await;
    assert_eq!(code, 200, "{body}");
    let agent = cluster.restart_agent(&[]).await;
    agent.logged("shutting down framework").await;
    let addr = agent.logged_address("http").await;
    cluster.agent = agent;
    // The executor is shut down, the task killed, and its update acknowledged by the
    // master on the removed framework's behalf: the agent forgets it, and the executor
    // process it re-attached ends.
    blocking(move || {
        wait_for("the agent to forget the task", || {
            let s = agent_state(&addr);
            (s["tasks"].as_array().unwrap().is_empty()
                && s["executors"].as_array().unwrap().is_empty())
            .then_some(())
        });
        wait_for("the executor to exit", || {
            has_ended(executor_pid).then_some(())
        })
    })
    .await;
    cluster.assert_no_panics();
}

/// Reconciles one task (with the agent it was on); returns nothing, the answer is an
/// UPDATE event.
async fn reconcile(scheduler: &Scheduler, task_id: &str, agent_id: &Value) {
    let call = json!({"type": "RECONCILE", "reconcile": {"tasks": [
        {"task_id": {"value": task_id}, "agent_id": agent_id}]}});
    assert_eq!(scheduler.call(call).await.0, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_answers_from_the_master_and_waits_for_agents_it_has_not_heard_from() {
    let mut cluster = Cluster::start_async(CAIRN).await;
    let mut info = framework_info(None);
    info["capabilities"] = json!([{"type": "PARTITION_AWARE"}]);
    let (scheduler, mut events) =
        Scheduler::subscribe_with(&cluster.master_addr, info.clone()).await;
    let (_, agent_id) = launch_gate(&scheduler, &mut events, "live").await;
    let nowhere = json!({"value": "no-such-agent"});
    let answer = |e: Value| {
        let s = &e["update"]["status"];
        (
            s["task_id"]["value"].as_str().unwrap().to_owned(),
            s["state"].as_str().unwrap().to_owned(),
        )
    };

    // Unknown to a master whose agent is registered: gone. On an unknown agent: unknown.
    reconcile(&scheduler, "ghost", &agent_id).await;
    assert_eq!(
        answer(events.next_of("UPDATE").await),
        ("ghost".into(), "TASK_GONE".into())
    );
    reconcile(&scheduler, "ghost", &nowhere).await;
    assert_eq!(
        answer(events.next_of("UPDATE").await),
        ("ghost".into(), "TASK_UNKNOWN".into())
    );

    // A restarted master that has not heard from the agent yet does not guess.
    cluster.agent.signal(nix::sys::signal::Signal::SIGSTOP);
    drop(events);
    cluster.master.kill();
    cluster.master = cluster.restart_master().await;
    info["id"] = json!({"value": scheduler.framework_id});
    let (scheduler, mut events) = Scheduler::subscribe_with(&cluster.master_addr, info).await;
    reconcile(&scheduler, "live", &agent_id).await;
    reconcile(&scheduler, "marker", &nowhere).await;
    assert_eq!(
        answer(events.next_of("UPDATE").await),
        ("marker".into(), "TASK_UNKNOWN".into()),
        "no answer for a task on an agent that has not re-registered"
    );
    // The agent comes back with its task: the master's view is rebuilt from it.
    cluster.agent.signal(nix::sys::signal::Signal::SIGCONT);
    scheduler
        .state_until(&cluster.master_addr, "the agent to re-register", |s| {
            s["tasks"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["id"] == "live"))
        })
        .await;
    reconcile(&scheduler, "live", &agent_id).await;
    loop {
        let update = events.next_of("UPDATE").await;
        let reason = update["update"]["status"]["reason"].clone();
        if answer(update) == ("live".into(), "TASK_RUNNING".into())
            && reason == "REASON_RECONCILIATION"
        {
            break;
        }
    }
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_an_agent_re_registers_without_are_lost() {
    use cairn_api::internal::agent_registry_client::AgentRegistryClient;
    use cairn_api::internal::{AgentMessage, RegisterAgent, agent_message, master_message};

    let mut cluster = Cluster::start_async(CAIRN).await;
    let (scheduler, mut events) =
        Scheduler::subscribe_with(&cluster.master_addr, framework_info(None)).await;
    let (_, agent_id) = launch_gate(&scheduler, &mut events, "forgotten").await;
    // A real agent checkpoints every task before acting on it, so it never comes back
    // without one. Speak the agent protocol directly to make one that does.
    cluster.agent.kill();
    let mut client = AgentRegistryClient::connect(format!("http://{}", cluster.master_addr))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let info = cairn_test_support::framework::fake_agent_info(
        agent_id["value"].as_str().unwrap(),
        cairn_test_support::harness::AGENT_RESOURCES,
    );
    let register = AgentMessage {
        message: Some(agent_message::Message::Register(RegisterAgent {
            info: Some(info),
            version: cairn_api::VERSION.into(),
            tasks: Vec::new(),
            charges: None,
            executors: Vec::new(),
        })),
    };
    tx.send(register).await.unwrap();
    let mut inbound = client
        .register(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = inbound.message().await.unwrap().unwrap();
    assert!(matches!(
        first.message,
        Some(master_message::Message::Registered(_))
    ));
    let status = next_update(&scheduler, &mut events).await;
    assert_eq!(status["task_id"]["value"], "forgotten", "{status}");
    assert_eq!(status["state"], "TASK_LOST", "{status}");
    assert_eq!(status["reason"], "REASON_AGENT_REREGISTERED", "{status}");
    drop(tx);
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_reports_task_killing_to_frameworks_that_understand_it() {
    let cluster = Cluster::start_async(CAIRN).await;
    let mut info = framework_info(None);
    info["capabilities"] = json!([{"type": "TASK_KILLING_STATE"}]);
    let (scheduler, mut events) = Scheduler::subscribe_with(&cluster.master_addr, info).await;
    let (_, agent_id) = launch_gate(&scheduler, &mut events, "doomed").await;
    let kill = json!({"type": "KILL", "kill": {"task_id": {"value": "doomed"}, "agent_id": agent_id,
        "kill_policy": {"grace_period": {"nanoseconds": 1_000_000_000u64}}}});
    assert_eq!(scheduler.call(kill).await.0, 202);
    let states = updates_until(&scheduler, &mut events, "TASK_KILLED").await;
    assert_eq!(
        distinct(&states),
        ["TASK_KILLING", "TASK_KILLED"],
        "{states:?}"
    );
    cluster.assert_no_panics();
}
