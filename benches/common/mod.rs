//! What the capacity and hostile-load benchmarks share: a real master and agent, the
//! wasm task they run, and a framework loop that launches and acknowledges.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_test_support::framework;
use cairn_test_support::harness::{self, Cairn};
use serde_json::{Value, json};

/// The `cairn` binary the daemons run.
pub const CAIRN: Cairn = Cairn::at(env!("CARGO_BIN_EXE_cairn"));

pub fn task(id: &str, agent_id: &Value, module: &str, args: &[&str]) -> Value {
    let path = harness::guest(module);
    let file = format!("{module}.wasm");
    let mut argv = vec![file.clone()];
    argv.extend(args.iter().map(|a| a.to_string()));
    json!({
        "name": "capacity", "task_id": {"value": id}, "agent_id": agent_id,
        "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.01}},
                      {"name": "mem", "type": "SCALAR", "scalar": {"value": 2}}],
        "command": {"uris": [{"value": format!("file://{}", path.display()), "cache": true}],
                    "value": file, "shell": false, "arguments": argv},
        "container": {"type": "WASM"}
    })
}

/// What one task of [`task`] takes of an offer, as the master charges it: its cpus
/// and mem, the agent's default disk (1 GiB), and 4 MiB of host memory per hosted
/// task; and what the framework's executor takes when its first task starts it.
const TASK_TAKES: [(&str, f64); 3] = [("cpus", 0.01), ("mem", 6.0), ("disk", 1024.0)];
const EXECUTOR_TAKES: [(&str, f64); 3] = [("cpus", 0.1), ("mem", 256.0), ("disk", 0.0)];

/// How many tasks of [`task`] an offer holds (a fragment of an agent may hold few),
/// keeping room for the executor on the `first` launch.
fn tasks_that_fit(offer: &Value, first: bool) -> usize {
    let scalar = |name: &str| {
        (offer["resources"].as_array().into_iter().flatten())
            .filter(|r| r["name"] == name)
            .filter_map(|r| r["scalar"]["value"].as_f64())
            .sum::<f64>()
    };
    TASK_TAKES
        .iter()
        .zip(EXECUTOR_TAKES)
        .map(|((name, each), (_, executor))| {
            let executor = if first { executor } else { 0.0 };
            ((scalar(name) - executor).max(0.0) / each + 1e-9).floor() as usize
        })
        .min()
        .unwrap_or(0)
}

pub fn is_terminal(state: &str) -> bool {
    !matches!(
        state,
        "TASK_STAGING" | "TASK_STARTING" | "TASK_RUNNING" | "TASK_KILLING"
    )
}

/// A master (with `master_flags` beside the defaults) and one agent big enough (in
/// declared resources) for every task; their start-up is waited for off the runtime's
/// workers.
pub async fn cluster_with(
    dir: &std::path::Path,
    master_flags: &[String],
) -> (harness::Daemon, harness::Daemon, String) {
    let dir = dir.to_owned();
    let mut flags = vec!["--allocation-interval".to_owned(), "20ms".to_owned()];
    flags.extend_from_slice(master_flags);
    harness::blocking(move || {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let (master, addr) = harness::start_master_with(CAIRN, &dir, "127.0.0.1:0", &flags);
        let agent = harness::start_agent_with(
            CAIRN,
            &dir,
            &addr,
            &[
                "--resources",
                "cpus:100000;mem:10000000;disk:100000000",
                "--status-update-retry-interval",
                "60s",
            ],
        );
        agent.wait_for_log("registered with the master");
        (master, agent, addr)
    })
    .await
}

/// Launches `total` tasks (`make(i)`) as offers allow, at most `inflight` not yet
/// `done`; calls `on_update` for every update, acknowledging each concurrently.
pub async fn drive(
    scheduler: &framework::Scheduler,
    events: &mut framework::Events,
    total: usize,
    inflight: usize,
    make: impl Fn(usize, &Value) -> Value,
    mut done: impl FnMut(&Value) -> bool,
) -> (Instant, Instant) {
    let mut launched = 0usize;
    let mut finished = HashSet::new();
    let started = Instant::now();
    let acks = Arc::new(tokio::sync::Semaphore::new(1024));
    let ack_times = Arc::new(std::sync::Mutex::new(Vec::<Duration>::new()));
    while finished.len() < total {
        let event = events.next().await;
        match event["type"].as_str().unwrap_or_default() {
            "OFFERS" => {
                for offer in event["offers"]["offers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                {
                    // One ACCEPT carries at most this many (the API's body limit); the
                    // rest of the offer comes back in the next cycle.
                    let room = (total - launched)
                        .min(inflight - (launched - finished.len()))
                        .min(500)
                        .min(tasks_that_fit(&offer, launched == 0));
                    if room == 0 {
                        let decline = json!({"type": "DECLINE", "decline": {
                            "offer_ids": [offer["id"]], "filters": {"refuse_seconds": 0.01}}});
                        scheduler.call(decline).await;
                        continue;
                    }
                    let tasks: Vec<Value> = (launched..launched + room)
                        .map(|i| make(i, &offer["agent_id"]))
                        .collect();
                    launched += room;
                    // What the tasks leave of the offer comes back at once, not after
                    // the default 5 s refusal.
                    let mut accept = framework::accept(&offer, tasks);
                    accept["accept"]["filters"] = json!({"refuse_seconds": 0.0});
                    let (code, body) = scheduler.call(accept).await;
                    assert_eq!(code, 202, "{body}");
                }
            }
            "UPDATE" => {
                let status = event["update"]["status"].clone();
                let id = status["task_id"]["value"].as_str().unwrap_or("").to_owned();
                if done(&status) {
                    finished.insert(id);
                }
                let permit = acks.clone().acquire_owned().await.unwrap();
                let scheduler = scheduler.clone();
                let ack_times = ack_times.clone();
                tokio::spawn(async move {
                    let sent = Instant::now();
                    scheduler.acknowledge(&status).await;
                    ack_times.lock().unwrap().push(sent.elapsed());
                    drop(permit);
                });
            }
            _ => {}
        }
    }
    let mut times = ack_times.lock().unwrap().clone();
    times.sort();
    if !times.is_empty() {
        eprintln!(
            "acknowledgement round trips: p50 {:?}, p99 {:?}",
            times[times.len() / 2],
            times[times.len() * 99 / 100]
        );
    }
    (started, Instant::now())
}
