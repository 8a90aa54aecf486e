//! How much one agent does: short tasks completed per second, and idle tasks held at
//! once with the memory each costs. Real `cairn` master and agent, a framework over
//! the Mesos v1 HTTP API; plus the executor's own rate, in process, without the
//! control plane.
//!
//! ```text
//! cargo bench --workspace --profile dev --bench capacity -- throughput [--tasks 5000] [--inflight 1000]
//! cargo bench --workspace --profile dev --bench capacity -- idle [--tasks 10000]
//! cargo bench --workspace --profile dev --bench capacity -- executor [--tasks 20000] [--inflight 1000]
//! cargo bench --workspace --profile dev --bench capacity -- agent [--tasks 20000] [--inflight 1000] [--work-dir DIR]
//! cargo bench --workspace --profile dev --bench capacity -- latency [--tasks 200]
//! ```
//!
//! `latency` launches one task at a time of each container type (wasm, native, Docker)
//! and times the framework's ACCEPT to the task's TASK_RUNNING.
//!
//! `agent` measures one agent host alone: a real `cairn agent` and its executor, driven
//! by a stand-in master in this process that acknowledges every update at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_sandbox::{CancelHandle, Exit, RunSpec, Sandbox, SandboxConfig};
use cairn_test_support::harness;
use cairn_test_support::{docker_image, fake_master, framework};
use serde_json::{Value, json};

mod common;
use common::{CAIRN, cluster_with, drive, is_terminal, task};

struct Options {
    mode: String,
    tasks: usize,
    inflight: usize,
    /// Where the agent keeps its sandboxes and checkpoint (default: a temporary dir).
    work_dir: Option<std::path::PathBuf>,
}

fn options() -> Options {
    let mut o = Options {
        mode: String::new(),
        tasks: 0,
        inflight: 1000,
        work_dir: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_default();
        match arg.as_str() {
            "--tasks" => o.tasks = value().parse().expect("--tasks N"),
            "--inflight" => o.inflight = value().parse().expect("--inflight N"),
            "--work-dir" => o.work_dir = Some(value().into()),
            "throughput" | "idle" | "executor" | "agent" | "latency" => o.mode = arg.clone(),
            _ => {} // cargo bench passes --bench
        }
    }
    o
}

/// Resident memory of a process, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The agent's executors, from the pid files it keeps.
fn executor_pids(work_dir: &std::path::Path) -> Vec<u32> {
    harness::find_files(work_dir, "pid")
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(p).ok()?.trim().parse().ok())
        .collect()
}

/// Set by the panic hook: a panic on any thread keeps the logs.
static PANICKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Keeps a run's directory (its daemons' logs) if the run panics.
struct Kept(Option<tempfile::TempDir>);

impl Kept {
    fn path(&self) -> &std::path::Path {
        self.0
            .as_ref()
            .map(|d| d.path())
            .unwrap_or(std::path::Path::new("/"))
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        let keep = std::env::var_os("CAIRN_KEEP_LOGS").is_some();
        if (keep || std::thread::panicking() || PANICKED.load(std::sync::atomic::Ordering::Relaxed))
            && let Some(dir) = self.0.take()
        {
            let _ = dir.keep();
        }
    }
}

fn scopeguard_keep(dir: tempfile::TempDir) -> Kept {
    Kept(Some(dir))
}

async fn throughput(o: &Options) {
    let total = if o.tasks == 0 { 5000 } else { o.tasks };
    let dir = tempfile::tempdir().unwrap();
    eprintln!("logs in {}", dir.path().display());
    let dir = scopeguard_keep(dir);
    let (_master, _agent, addr) = cluster_with(dir.path(), &[]).await;
    let info = json!({"user": "root", "name": "capacity"});
    let (scheduler, mut events) = framework::Scheduler::subscribe_with(&addr, info).await;
    let mut failed = 0usize;
    let (started, ended) = drive(
        &scheduler,
        &mut events,
        total,
        o.inflight,
        |i, agent| task(&format!("short-{i}"), agent, "exit", &["0"]),
        |status| {
            let state = status["state"].as_str().unwrap_or_default();
            if is_terminal(state) && state != "TASK_FINISHED" {
                failed += 1;
            }
            is_terminal(state)
        },
    )
    .await;
    let secs = (ended - started).as_secs_f64();
    println!(
        "| short tasks through master and agent | {total} | {} in flight | {:.0} tasks/s | {failed} not FINISHED |",
        o.inflight,
        total as f64 / secs
    );
    harness::kill_executors(&dir.path().join("agent"));
}

async fn idle(o: &Options) {
    let total = if o.tasks == 0 { 10_000 } else { o.tasks };
    let dir = tempfile::tempdir().unwrap();
    eprintln!("logs in {}", dir.path().display());
    let dir = scopeguard_keep(dir);
    let (_master, agent, addr) = cluster_with(dir.path(), &[]).await;
    let info = json!({"user": "root", "name": "capacity"});
    let (scheduler, mut events) = framework::Scheduler::subscribe_with(&addr, info).await;
    // One task first, so the executor exists and its baseline can be measured.
    drive(
        &scheduler,
        &mut events,
        1,
        1,
        |_, agent| task("idle-first", agent, "sleep", &["36000"]),
        |s| s["state"] == "TASK_RUNNING",
    )
    .await;
    let work_dir = dir.path().join("agent");
    let base: u64 = rss_bytes(agent.pid())
        + executor_pids(&work_dir)
            .into_iter()
            .map(rss_bytes)
            .sum::<u64>();
    let mut failed = Vec::new();
    let (started, ended) = drive(
        &scheduler,
        &mut events,
        total - 1,
        total,
        |i, agent| task(&format!("idle-{i}"), agent, "sleep", &["36000"]),
        |s| {
            let state = s["state"].as_str().unwrap_or_default();
            if is_terminal(state) && failed.len() < 3 {
                failed.push(s.to_string());
            }
            state == "TASK_RUNNING" || is_terminal(state)
        },
    )
    .await;
    assert!(
        failed.is_empty(),
        "tasks ended instead of idling: {failed:?}"
    );
    let agent_rss = rss_bytes(agent.pid());
    let executor_rss: u64 = executor_pids(&work_dir).into_iter().map(rss_bytes).sum();
    let per_task = (agent_rss + executor_rss).saturating_sub(base) / (total as u64 - 1);
    println!(
        "| idle wasm tasks running at once on one agent | {total} | launched in {:.1} s | agent {} MiB + executor {} MiB RSS | {:.0} KiB per task |",
        (ended - started).as_secs_f64(),
        agent_rss >> 20,
        executor_rss >> 20,
        per_task as f64 / 1024.0
    );
    harness::kill_executors(&work_dir);
}

/// One agent host alone: the real agent and executor, a stand-in master.
async fn agent(o: &Options) {
    use cairn_api::v1::{
        CommandInfo, ContainerInfo, Resource, TaskId, TaskInfo, command_info, container_info, value,
    };
    let total = if o.tasks == 0 { 20_000 } else { o.tasks };
    let dir = match &o.work_dir {
        Some(parent) => {
            std::fs::create_dir_all(parent).unwrap();
            tempfile::tempdir_in(parent).unwrap()
        }
        None => tempfile::tempdir().unwrap(),
    };
    eprintln!("logs in {}", dir.path().display());
    let dir = scopeguard_keep(dir);
    let module = format!("file://{}", harness::guest("exit").display());
    let scalar = |name: &str, v: f64| Resource {
        name: name.into(),
        scalar: Some(value::Scalar { value: v }),
        ..Default::default()
    };
    let make = move |i: usize, agent_id: &cairn_api::v1::AgentId| TaskInfo {
        name: "capacity".into(),
        task_id: Some(TaskId {
            value: format!("short-{i}"),
        }),
        agent_id: Some(agent_id.clone()),
        resources: vec![scalar("cpus", 0.01), scalar("mem", 2.0)],
        command: Some(CommandInfo {
            // Mesos' fetcher cache: fetched once, not copied per task.
            uris: vec![command_info::Uri {
                value: module.clone(),
                cache: Some(true),
                ..Default::default()
            }],
            shell: Some(false),
            value: Some("exit.wasm".into()),
            arguments: vec!["exit.wasm".into(), "0".into()],
            ..Default::default()
        }),
        container: Some(ContainerInfo {
            r#type: container_info::Type::Wasm as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let (addr, outcome) = fake_master::serve(fake_master::Workload {
        total,
        inflight: o.inflight,
        make: Box::new(make),
    })
    .await;
    let _agent = harness::start_agent_with(
        CAIRN,
        dir.path(),
        &addr,
        &["--resources", "cpus:100000;mem:10000000;disk:100000000"],
    );
    let out = outcome.await.unwrap();
    let secs = (out.ended - out.started).as_secs_f64();
    println!(
        "| short tasks, one agent alone (stand-in master) | {total} | {} in flight | {:.0} tasks/s | {} updates, {} not FINISHED |",
        o.inflight,
        total as f64 / secs,
        out.updates,
        out.not_finished
    );
    harness::kill_executors(&dir.path().join("agent"));
}

/// One task of `kind` that ends at once.
fn short_task(kind: &str, id: &str, agent_id: &Value, image: &str) -> Value {
    match kind {
        "wasm" => task(id, agent_id, "exit", &["0"]),
        "native" => json!({
            "name": id, "task_id": {"value": id}, "agent_id": agent_id,
            "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}},
                          {"name": "mem", "type": "SCALAR", "scalar": {"value": 16}}],
            "command": {"value": "/bin/true", "shell": false}
        }),
        _ => json!({
            "name": id, "task_id": {"value": id}, "agent_id": agent_id,
            "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}},
                          {"name": "mem", "type": "SCALAR", "scalar": {"value": 16}}],
            "command": {"value": "true"},
            "container": {"type": "DOCKER", "docker": {"image": image, "network": "NONE"}}
        }),
    }
}

/// ACCEPT to TASK_RUNNING, one task at a time, for each container type.
async fn latency(o: &Options) {
    let per_kind = if o.tasks == 0 { 200 } else { o.tasks };
    let image = harness::blocking(docker_image::test_image).await;
    let dir = tempfile::tempdir().unwrap();
    eprintln!("logs in {}", dir.path().display());
    let dir = scopeguard_keep(dir);
    let (_master, _agent, addr) = cluster_with(dir.path(), &[]).await;
    let info = json!({"user": "root", "name": "capacity"});
    let (scheduler, mut events) = framework::Scheduler::subscribe_with(&addr, info).await;
    let mut offers: Vec<Value> = Vec::new();
    let fits = |o: &Value| {
        let scalar = |name: &str| {
            o["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["name"] == name)
                .filter_map(|r| r["scalar"]["value"].as_f64())
                .sum::<f64>()
        };
        scalar("cpus") >= 0.1 && scalar("mem") >= 16.0
    };
    for kind in ["wasm", "native", "docker"] {
        let mut times = Vec::with_capacity(per_kind);
        let mut failed = 0;
        for i in 0..per_kind {
            let id = format!("{kind}-{i}");
            // An offer the task fits in; leftovers go back so the master can merge
            // them with what the previous task returned.
            let current = loop {
                if let Some(at) = offers.iter().position(fits) {
                    break offers.remove(at);
                }
                for o in offers.drain(..) {
                    let decline = json!({"type": "DECLINE", "decline": {
                        "offer_ids": [o["id"]], "filters": {"refuse_seconds": 0.0}}});
                    scheduler.call(decline).await;
                }
                let event = events.next().await;
                if event["type"] == "OFFERS" {
                    offers.extend(
                        event["offers"]["offers"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default(),
                    );
                }
            };
            let mut accept = framework::accept(
                &current,
                vec![short_task(kind, &id, &current["agent_id"], &image)],
            );
            accept["accept"]["filters"] = json!({"refuse_seconds": 0.0});
            let sent = Instant::now();
            let (code, body) = scheduler.call(accept).await;
            assert_eq!(code, 202, "{body}");
            loop {
                let event = events.next().await;
                match event["type"].as_str().unwrap_or_default() {
                    "OFFERS" => offers.extend(
                        event["offers"]["offers"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default(),
                    ),
                    "UPDATE" => {
                        let status = event["update"]["status"].clone();
                        scheduler.acknowledge(&status).await;
                        if status["task_id"]["value"] != id.as_str() {
                            continue;
                        }
                        let state = status["state"].as_str().unwrap_or_default();
                        if state == "TASK_RUNNING" {
                            times.push(sent.elapsed());
                        }
                        if is_terminal(state) {
                            if state != "TASK_FINISHED" {
                                failed += 1;
                                eprintln!("{id}: {status}");
                            }
                            break;
                        }
                    }
                    _ => {}
                }
            }
        }
        times.sort();
        let at = |q: usize| times.get((times.len() * q / 100).min(times.len().saturating_sub(1)));
        println!(
            "| launch to TASK_RUNNING, {kind} | {per_kind} | one at a time | p50 {:?}, p99 {:?} | {failed} not FINISHED |",
            at(50).copied().unwrap_or_default(),
            at(99).copied().unwrap_or_default()
        );
    }
    harness::kill_executors(&dir.path().join("agent"));
}

/// The executor alone: cached module, a fresh sandbox directory per task, runs on a
/// two-thread runtime as the executor process has.
fn executor(o: &Options) {
    let total = if o.tasks == 0 { 20_000 } else { o.tasks };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sandbox = Sandbox::new(SandboxConfig {
        max_instances: o.inflight as u32,
        ..Default::default()
    })
    .unwrap();
    let bytes = std::fs::read(harness::guest("exit")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let limit = Arc::new(tokio::sync::Semaphore::new(o.inflight));
    let elapsed = rt.block_on(async {
        let started = Instant::now();
        let mut handles = Vec::with_capacity(total);
        for i in 0..total {
            let permit = limit.clone().acquire_owned().await.unwrap();
            let (sandbox, bytes) = (sandbox.clone(), bytes.clone());
            let dir = work.path().join(format!("t{i}"));
            handles.push(tokio::spawn(async move {
                std::fs::create_dir(&dir).unwrap();
                let program = sandbox.compile(&bytes, false).unwrap();
                let spec = RunSpec {
                    args: vec!["exit.wasm".into(), "0".into()],
                    env: vec![],
                    sandbox_dir: dir.clone(),
                    stdout: dir.join("stdout"),
                    stderr: dir.join("stderr"),
                    memory_bytes: 2 << 20,
                    fuel: None,
                    timeout: Some(Duration::from_secs(60)),
                    disk_bytes: 1 << 20,
                };
                let out = sandbox
                    .run(&program, &spec, &CancelHandle::default())
                    .await
                    .unwrap();
                assert_eq!(out.exit, Exit::Code(0));
                drop(permit);
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        started.elapsed()
    });
    println!(
        "| short tasks, executor alone (2 threads) | {total} | {} in flight | {:.0} tasks/s | |",
        o.inflight,
        total as f64 / elapsed.as_secs_f64()
    );
}

fn main() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICKED.store(true, std::sync::atomic::Ordering::Relaxed);
        default_hook(info);
    }));
    let o = options();
    println!("| measure | tasks | setting | result | notes |");
    println!("|---|---:|---|---:|---|");
    match o.mode.as_str() {
        "executor" => executor(&o),
        mode => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            match mode {
                "idle" => rt.block_on(idle(&o)),
                "throughput" => rt.block_on(throughput(&o)),
                "agent" => rt.block_on(agent(&o)),
                "latency" => rt.block_on(latency(&o)),
                _ => {
                    rt.block_on(throughput(&o));
                    executor(&o);
                }
            }
        }
    }
}
