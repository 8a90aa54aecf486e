//! Soak: thousands of tasks through a real cluster (one master, several agents)
//! while agents are killed with SIGKILL and restarted at random. It counts the tasks
//! the framework launched and the tasks whose terminal update it acknowledged; the
//! two must be equal, and every one must have ended TASK_FINISHED: any other terminal
//! state (the first one a task reports) is a failure, counted by state and reason. Not
//! part of the test suite: it runs for minutes.
//!
//! ```text
//! cargo bench --workspace --profile dev --bench soak -- [--tasks 2000] [--agents 3] [--kill-every 3s]
//! ```

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_test_support::framework;
use cairn_test_support::harness::{self, Cairn};
use serde_json::{Value, json};

/// The `cairn` binary the daemons run.
const CAIRN: Cairn = Cairn::at(env!("CARGO_BIN_EXE_cairn"));

/// How many failures the report quotes in full.
const EXAMPLES: usize = 5;

struct Options {
    tasks: usize,
    agents: usize,
    kill_every: Duration,
}

fn options() -> Options {
    let mut o = Options {
        tasks: 2000,
        agents: 3,
        kill_every: Duration::from_secs(3),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_default();
        match flag.as_str() {
            "--tasks" => o.tasks = value().parse().expect("--tasks N"),
            "--agents" => o.agents = value().parse().expect("--agents N"),
            "--kill-every" => {
                o.kill_every = humantime::parse_duration(&value()).expect("--kill-every 3s")
            }
            _ => {} // cargo bench passes --bench
        }
    }
    o
}

/// xorshift: enough randomness to pick a victim, no dependency for it.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// How many soak tasks (0.1 cpus, 16 MB each) an offer holds.
fn fits(offer: &Value) -> usize {
    let scalar = |name: &str| {
        offer["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["name"] == name)
            .filter_map(|r| r["scalar"]["value"].as_f64())
            .sum::<f64>()
    };
    ((scalar("cpus") / 0.1 + 1e-9).floor() as usize).min((scalar("mem") / 16.0) as usize)
}

fn task(id: &str, agent_id: &Value) -> Value {
    let module = harness::guest("hello");
    json!({
        "name": "soak", "task_id": {"value": id}, "agent_id": agent_id,
        "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}},
                      {"name": "mem", "type": "SCALAR", "scalar": {"value": 16}}],
        "command": {"uris": [{"value": format!("file://{}", module.display())}],
                    "value": "hello.wasm", "shell": false, "arguments": ["hello.wasm", "soak"]},
        "container": {"type": "WASM"}
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let o = options();
    let dir = tempfile::tempdir().unwrap();
    let agent_dirs: Vec<_> = (0..o.agents)
        .map(|i| dir.path().join(format!("node-{i}")))
        .collect();
    // Start-up is waited for off the runtime's workers.
    let (master, master_addr, agents) = {
        let (root, agent_dirs) = (dir.path().to_owned(), agent_dirs.clone());
        harness::blocking(move || {
            let (master, master_addr) = harness::start_master_with(
                CAIRN,
                &root,
                "127.0.0.1:0",
                &["--agent-timeout", "30s"],
            );
            let agents: Vec<harness::Daemon> = agent_dirs
                .iter()
                .map(|d| {
                    std::fs::create_dir_all(d).unwrap();
                    let a = harness::start_agent(CAIRN, d, &master_addr);
                    a.wait_for_log("registered with the master");
                    a
                })
                .collect();
            (master, master_addr, agents)
        })
        .await
    };
    let agents = Arc::new(Mutex::new(agents));
    let done = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicUsize::new(0));

    // Chaos: every `kill_every`, one agent is killed with SIGKILL and restarted.
    let chaos = {
        let (agents, done, kills) = (agents.clone(), done.clone(), kills.clone());
        let (dirs, master_addr) = (agent_dirs.clone(), master_addr.clone());
        std::thread::spawn(move || {
            let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ std::process::id() as u64;
            while !done.load(Ordering::Relaxed) {
                std::thread::park_timeout(o.kill_every);
                if done.load(Ordering::Relaxed) {
                    break;
                }
                let victim = (next_random(&mut seed) % dirs.len() as u64) as usize;
                let mut agents = agents.lock().unwrap();
                agents[victim].kill();
                agents[victim] = harness::start_agent(CAIRN, &dirs[victim], &master_addr);
                kills.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let info = json!({"user": "root", "name": "soak", "failover_timeout": 3600.0});
    let (scheduler, mut events) = framework::Scheduler::subscribe_with(&master_addr, info).await;
    let started = Instant::now();
    let mut launched = 0usize;
    // Each task's first terminal state: only TASK_FINISHED is a success.
    let mut terminal: BTreeMap<String, String> = BTreeMap::new();
    let mut finished = 0usize;
    let mut failures: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut examples: Vec<String> = Vec::new();
    let mut updates = 0usize;
    let mut seen_uuids = HashSet::new();
    let mut duplicates = 0usize;
    let mut last_progress = Instant::now();
    while terminal.len() < o.tasks || launched < o.tasks {
        assert!(
            last_progress.elapsed() < Duration::from_secs(300),
            "no progress for 5 minutes: launched {launched}, terminal {}",
            terminal.len()
        );
        let event = events.next().await;
        match event["type"].as_str().unwrap_or_default() {
            "OFFERS" => {
                for offer in event["offers"]["offers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                {
                    let room = (o.tasks - launched).min(8).min(fits(&offer));
                    if room == 0 {
                        let decline = json!({"type": "DECLINE", "decline": {
                            "offer_ids": [offer["id"]], "filters": {"refuse_seconds": 0.2}}});
                        let (code, body) = scheduler.call(decline).await;
                        assert_eq!(code, 202, "{body}");
                        continue;
                    }
                    let tasks: Vec<Value> = (launched..launched + room)
                        .map(|i| task(&format!("soak-{i}"), &offer["agent_id"]))
                        .collect();
                    launched += tasks.len();
                    let call = framework::accept(&offer, tasks);
                    let (code, body) = scheduler.call(call).await;
                    assert_eq!(code, 202, "{body}");
                }
            }
            "UPDATE" => {
                let status = event["update"]["status"].clone();
                updates += 1;
                if let Some(uuid) = status["uuid"].as_str()
                    && !seen_uuids.insert(uuid.to_owned())
                {
                    duplicates += 1;
                }
                scheduler.acknowledge(&status).await;
                let state = status["state"].as_str().unwrap_or_default().to_owned();
                let id = status["task_id"]["value"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let is_terminal = !matches!(
                    state.as_str(),
                    "TASK_STAGING"
                        | "TASK_STARTING"
                        | "TASK_RUNNING"
                        | "TASK_KILLING"
                        | "TASK_UNREACHABLE"
                );
                if is_terminal && !terminal.contains_key(&id) {
                    if state == "TASK_FINISHED" {
                        finished += 1;
                    } else {
                        let reason = status["reason"].as_str().unwrap_or("no reason").to_owned();
                        if examples.len() < EXAMPLES {
                            let message = status["message"].as_str().unwrap_or_default();
                            examples.push(format!("{id}: {state} ({reason}): {message}"));
                        }
                        *failures.entry((state.clone(), reason)).or_default() += 1;
                    }
                    terminal.insert(id, state);
                    last_progress = Instant::now();
                }
            }
            _ => {}
        }
    }
    done.store(true, Ordering::Relaxed);
    chaos.thread().unpark();
    chaos.join().unwrap();
    let elapsed = started.elapsed();
    println!(
        "soak: {} agents, one killed every {}",
        o.agents,
        humantime::format_duration(o.kill_every)
    );
    println!("  tasks launched:                 {launched}");
    println!("  tasks with a terminal update:   {}", terminal.len());
    println!("  TASK_FINISHED (success):        {finished}");
    let failed: usize = failures.values().sum();
    println!("  any other terminal state:       {failed}");
    for ((state, reason), count) in &failures {
        println!("    {state} ({reason}): {count}");
    }
    for example in &examples {
        println!("    e.g. {example}");
    }
    println!("  updates received:               {updates} ({duplicates} redelivered duplicates)");
    println!(
        "  agent kills (SIGKILL):          {}",
        kills.load(Ordering::Relaxed)
    );
    println!(
        "  elapsed:                        {:.1} s ({:.0} tasks/s)",
        elapsed.as_secs_f64(),
        launched as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(
        launched,
        terminal.len(),
        "every launched task must end, and be told"
    );
    assert_eq!(
        finished, launched,
        "only TASK_FINISHED is a success: {failed} tasks ended otherwise, by state and reason \
         {failures:?}"
    );
    drop(master);
    for d in &agent_dirs {
        harness::kill_executors(&d.join("agent"));
    }
}
