//! Components: a p2 command run as a task, and a custom executor (the
//! `cairn:executor` world, built with cairn-sdk) hosting several tasks of a framework,
//! messages both ways, kills with and without its cooperation, and a runaway
//! executor that is cut off while the agent goes on serving.

use std::collections::HashMap;

use serde_json::{Value, json};

use cairn_test_support::framework::{Events, Scheduler, accept, wasm_task};
use cairn_test_support::harness::{Cluster, guest, text};

use crate::CAIRN;

/// Every update and framework message a test has seen so far.
#[derive(Default)]
struct Seen {
    /// task id -> (state, message, reason) in order of arrival.
    updates: HashMap<String, Vec<(String, String, String)>>,
    /// Framework messages' data, base64 as on the wire.
    messages: Vec<String>,
}

impl Seen {
    fn last(&self, task: &str) -> Option<&(String, String, String)> {
        self.updates.get(task).and_then(|u| u.last())
    }

    fn state(&self, task: &str) -> &str {
        self.last(task).map_or("", |u| u.0.as_str())
    }
}

/// Reads events, acknowledging updates, until `done` holds.
async fn until(
    scheduler: &Scheduler,
    events: &mut Events,
    seen: &mut Seen,
    done: impl Fn(&Seen) -> bool,
) {
    while !done(seen) {
        let event = events.next().await;
        match event["type"].as_str().unwrap_or_default() {
            "UPDATE" => {
                let status = &event["update"]["status"];
                scheduler.acknowledge(status).await;
                let field = |k: &str| status[k].as_str().unwrap_or_default().to_owned();
                seen.updates
                    .entry(
                        status["task_id"]["value"]
                            .as_str()
                            .unwrap_or_default()
                            .into(),
                    )
                    .or_default()
                    .push((field("state"), field("message"), field("reason")));
            }
            "MESSAGE" => seen
                .messages
                .push(event["message"]["data"].as_str().unwrap_or_default().into()),
            _ => {}
        }
    }
}

/// A task for the custom executor `executor_id` (examples/executor). A Mesos task
/// names a command or an executor, not both, so its words travel as TaskInfo.data.
fn executor_task(id: &str, agent_id: &Value, executor_id: &str, words: &str) -> Value {
    executor_task_of(id, agent_id, executor_id, "executor", words)
}

fn executor_task_of(
    id: &str,
    agent_id: &Value,
    executor_id: &str,
    component: &str,
    words: &str,
) -> Value {
    let path = guest(component);
    json!({
        "name": id, "task_id": {"value": id}, "agent_id": agent_id,
        "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}},
                      {"name": "mem", "type": "SCALAR", "scalar": {"value": 16}}],
        "executor": {
            "executor_id": {"value": executor_id},
            "command": {"value": format!("{component}.wasm"),
                        "uris": [{"value": format!("file://{}", path.display())}],
                        "shell": false},
            "container": {"type": "WASM"}
        },
        "kill_policy": {"grace_period": {"nanoseconds": 300_000_000u64}},
        "data": base64_encode(words.as_bytes())
    })
}

/// Standard base64, enough for test payloads.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn a_p2_component_runs_as_a_task() {
    let cluster = Cluster::start(CAIRN);
    let out = cluster.run(&guest("hello-p2"), &["from", "a", "component"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("args: from a component"), "{stdout}");
    cluster.assert_no_panics();
}

fn message_to(agent_id: &Value, executor_id: &str, text: &str) -> Value {
    json!({"type": "MESSAGE", "message": {"agent_id": agent_id,
        "executor_id": {"value": executor_id}, "data": base64_encode(text.as_bytes())}})
}

fn kill(task: &str, agent_id: &Value) -> Value {
    json!({"type": "KILL", "kill": {"task_id": {"value": task}, "agent_id": agent_id}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_executor_runs_several_tasks_and_talks_to_its_framework() {
    let cluster = Cluster::start_async(CAIRN).await;
    let (scheduler, mut events) = Scheduler::subscribe(&cluster.master_addr).await;
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let agent = offer["agent_id"].clone();
    let tasks = vec![
        executor_task("sum", &agent, "kv", "sum 1 2 3"),
        executor_task("wait-a", &agent, "kv", "wait"),
        executor_task("wait-b", &agent, "kv", "wait"),
        executor_task("stubborn", &agent, "kv", "stubborn"),
    ];
    assert_eq!(scheduler.call(accept(&offer, tasks)).await.0, 202);
    let mut seen = Seen::default();
    until(&scheduler, &mut events, &mut seen, |s| {
        s.state("sum") == "TASK_FINISHED"
            && ["wait-a", "wait-b", "stubborn"]
                .iter()
                .all(|t| s.state(t) == "TASK_RUNNING")
    })
    .await;
    // Its result is the executor's own message.
    assert_eq!(seen.last("sum").unwrap().1, "6");

    // A message to the custom executor finishes one task and comes back.
    let finish = message_to(&agent, "kv", "finish wait-a");
    assert_eq!(scheduler.call(finish).await.0, 202);
    until(&scheduler, &mut events, &mut seen, |s| {
        s.state("wait-a") == "TASK_FINISHED" && !s.messages.is_empty()
    })
    .await;
    assert_eq!(seen.messages, [base64_encode(b"finished wait-a")]);

    // A kill it honours, and one it ignores: reported killed after the grace period.
    assert_eq!(scheduler.call(kill("wait-b", &agent)).await.0, 202);
    assert_eq!(scheduler.call(kill("stubborn", &agent)).await.0, 202);
    until(&scheduler, &mut events, &mut seen, |s| {
        s.state("wait-b") == "TASK_KILLED" && s.state("stubborn") == "TASK_KILLED"
    })
    .await;
    assert_eq!(seen.last("wait-b").unwrap().1, "killed by the executor");
    assert!(
        seen.last("stubborn")
            .unwrap()
            .1
            .contains("kill grace period"),
        "{:?}",
        seen.last("stubborn")
    );
    // The executor holds no live task now, and still takes messages: the stubborn
    // task it never let go of is still in its count.
    let count = message_to(&agent, "kv", "count");
    assert_eq!(scheduler.call(count).await.0, 202);
    until(&scheduler, &mut events, &mut seen, |s| {
        s.messages.len() == 2
    })
    .await;
    assert_eq!(seen.messages[1], base64_encode(b"waiting 1"));
    // A message to a custom executor the framework does not have is a 404.
    let stranger = message_to(&agent, "nobody", "count");
    assert_eq!(scheduler.call(stranger).await.0, 404);
    // SHUTDOWN naming the custom executor ends it alone, killing its tasks; it is
    // then unknown.
    let offer = loop {
        let offers = events.next_of("OFFERS").await;
        if let Some(o) = offers["offers"]["offers"].get(0) {
            break o.clone();
        }
    };
    let wait_c = executor_task("wait-c", &agent, "kv", "wait");
    assert_eq!(scheduler.call(accept(&offer, vec![wait_c])).await.0, 202);
    until(&scheduler, &mut events, &mut seen, |s| {
        s.state("wait-c") == "TASK_RUNNING"
    })
    .await;
    let shutdown = json!({"type": "SHUTDOWN", "shutdown": {
        "agent_id": agent, "executor_id": {"value": "kv"}}});
    assert_eq!(scheduler.call(shutdown).await.0, 202);
    until(&scheduler, &mut events, &mut seen, |s| {
        s.state("wait-c") == "TASK_KILLED"
    })
    .await;
    let after = message_to(&agent, "kv", "count");
    assert_eq!(scheduler.call(after).await.0, 404);
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_executor_fails_its_tasks_and_the_next_task_gets_a_fresh_one() {
    let cluster =
        Cluster::start_with_flags_async(CAIRN, &[], &["--custom-executor-call-timeout", "1s"])
            .await;
    let (scheduler, mut events) = Scheduler::subscribe(&cluster.master_addr).await;
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let agent = offer["agent_id"].clone();
    let tasks = vec![
        executor_task("held", &agent, "runaway", "wait"),
        // Commands of the same framework keep running beside it.
        wasm_task("plain", &agent, 0.1),
    ];
    assert_eq!(scheduler.call(accept(&offer, tasks)).await.0, 202);
    let mut seen = Seen::default();
    // The executor holds a task before another one runs away with it (tasks of one
    // accept reach their executor in no promised order).
    until(&scheduler, &mut events, &mut seen, |s| {
        s.state("held") == "TASK_RUNNING"
    })
    .await;
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let spin = executor_task("spin", &agent, "runaway", "spin");
    assert_eq!(scheduler.call(accept(&offer, vec![spin])).await.0, 202);
    until(&scheduler, &mut events, &mut seen, |s| {
        s.state("held") == "TASK_FAILED"
            && s.state("spin") == "TASK_FAILED"
            && s.state("plain") == "TASK_FINISHED"
    })
    .await;
    for task in ["held", "spin"] {
        let (_, message, reason) = seen.last(task).unwrap();
        assert_eq!(reason, "REASON_EXECUTOR_TERMINATED", "{task}: {message}");
        assert!(message.contains("a call ran longer than 1s"), "{message}");
    }
    // The next task for that executor id starts a fresh instance.
    let offer = loop {
        let offers = events.next_of("OFFERS").await;
        if let Some(o) = offers["offers"]["offers"].get(0) {
            break o.clone();
        }
    };
    let again = executor_task("again", &agent, "runaway", "sum 40 2");
    assert_eq!(scheduler.call(accept(&offer, vec![again])).await.0, 202);
    until(&scheduler, &mut events, &mut seen, |s| {
        s.state("again") == "TASK_FINISHED"
    })
    .await;
    assert_eq!(seen.last("again").unwrap().1, "42");
    cluster.assert_no_panics();
}

/// An executor task whose executor has a fuel budget for its whole life.
fn fueled_executor_task(
    id: &str,
    agent_id: &Value,
    executor_id: &str,
    words: &str,
    fuel: u64,
) -> Value {
    let mut task = executor_task(id, agent_id, executor_id, words);
    task["executor"]["container"] = json!({"type": "WASM", "wasm": {"fuel": fuel}});
    task
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_out_of_fuel_fails_its_tasks_and_a_budgeted_one_still_serves() {
    // The default call timeout (far longer than the fuel lasts): only fuel stops it.
    let cluster = Cluster::start_async(CAIRN).await;
    let (scheduler, mut events) = Scheduler::subscribe(&cluster.master_addr).await;
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let agent = offer["agent_id"].clone();
    let tasks = vec![
        fueled_executor_task("held", &agent, "burner", "wait", 20_000_000),
        fueled_executor_task("sum", &agent, "frugal", "sum 40 2", 1_000_000_000),
    ];
    assert_eq!(scheduler.call(accept(&offer, tasks)).await.0, 202);
    let mut seen = Seen::default();
    // The burner holds a task before another one spends its fuel (tasks of one accept
    // reach their executor in no promised order).
    until(&scheduler, &mut events, &mut seen, |s| {
        s.state("held") == "TASK_RUNNING"
    })
    .await;
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let spin = fueled_executor_task("spin", &agent, "burner", "spin", 20_000_000);
    assert_eq!(scheduler.call(accept(&offer, vec![spin])).await.0, 202);
    until(&scheduler, &mut events, &mut seen, |s| {
        s.state("held") == "TASK_FAILED"
            && s.state("spin") == "TASK_FAILED"
            && s.state("sum") == "TASK_FINISHED"
    })
    .await;
    for task in ["held", "spin"] {
        let (_, message, reason) = seen.last(task).unwrap();
        assert_eq!(reason, "REASON_EXECUTOR_TERMINATED", "{task}: {message}");
        assert!(message.contains("ran out of fuel"), "{task}: {message}");
    }
    assert_eq!(seen.last("sum").unwrap().1, "42");
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_of_the_wrong_kind_fail_their_tasks_with_a_reason() {
    let cluster = Cluster::start_async(CAIRN).await;
    let (scheduler, mut events) = Scheduler::subscribe(&cluster.master_addr).await;
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let agent = offer["agent_id"].clone();
    let executor_as_command = {
        let mut t = wasm_task("executor-as-command", &agent, 0.1);
        let path = guest("executor");
        t["command"] = json!({"value": "executor.wasm", "shell": false,
            "uris": [{"value": format!("file://{}", path.display())}]});
        t
    };
    let tasks = vec![
        executor_task_of("wrong-world", &agent, "greeter", "wrong-world", "sum 1"),
        executor_task_of("command-as-executor", &agent, "hello", "hello-p2", "sum 1"),
        executor_as_command,
    ];
    assert_eq!(scheduler.call(accept(&offer, tasks)).await.0, 202);
    let mut seen = Seen::default();
    let ids = ["wrong-world", "command-as-executor", "executor-as-command"];
    until(&scheduler, &mut events, &mut seen, |s| {
        ids.iter().all(|t| s.state(t) == "TASK_FAILED")
    })
    .await;
    for (task, needle) in [
        ("wrong-world", "a component of the wrong world"),
        ("command-as-executor", "is a command, not a custom executor"),
        ("executor-as-command", "is a custom executor, not a command"),
    ] {
        let (_, message, reason) = seen.last(task).unwrap();
        assert_eq!(
            reason, "REASON_CONTAINER_LAUNCH_FAILED",
            "{task}: {message}"
        );
        assert!(message.contains(needle), "{task}: {message}");
    }
    // Tasks of one executor id must describe the same executor: the master refuses
    // another description, as Mesos does.
    for (task, component, words) in [
        ("dup-first", "executor", "wait"),
        ("dup-second", "hello-p2", "sum 1"),
    ] {
        let offer = loop {
            let offers = events.next_of("OFFERS").await;
            if let Some(o) = offers["offers"]["offers"].get(0) {
                break o.clone();
            }
        };
        let t = executor_task_of(task, &agent, "dup", component, words);
        assert_eq!(scheduler.call(accept(&offer, vec![t])).await.0, 202);
        until(&scheduler, &mut events, &mut seen, |s| {
            matches!(s.state(task), "TASK_RUNNING" | "TASK_FAILED" | "TASK_ERROR")
        })
        .await;
    }
    assert_eq!(seen.state("dup-first"), "TASK_RUNNING");
    let (state, message, reason) = seen.last("dup-second").unwrap();
    assert_eq!(
        (state.as_str(), reason.as_str()),
        ("TASK_ERROR", "REASON_TASK_INVALID")
    );
    assert_eq!(
        message,
        "task dup-second: ExecutorInfo is not compatible with existing ExecutorInfo with \
         same ExecutorID (dup)"
    );
    cluster.assert_no_panics();
}
