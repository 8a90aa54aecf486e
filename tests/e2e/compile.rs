//! The compile step: the agent compiles every wasm program in a step of its own,
//! bounded in memory and time, and executors load only what it compiled. Tried as a
//! hostile tenant would, through the Mesos API: compile bombs fail their own tasks
//! with the reason, and the agent serves the next task; an artifact changed on disk
//! is never loaded.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use cairn_test_support::framework::{Events, Scheduler};
use cairn_test_support::harness::{Cluster, find_files};

use crate::CAIRN;
use crate::tenants::launch;

const EXIT_0: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 0))))"#;

fn leb128(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
    out.push(id);
    leb128(body.len(), out);
    out.extend_from_slice(body);
}

/// A valid command module of `functions` functions, each `x += 1` `steps` times over
/// one local: cheap to send, dear to compile (the optimizer folds every chain).
fn compile_bomb(functions: usize, steps: usize) -> Vec<u8> {
    let mut body = vec![1, 1, 0x7f]; // one i32 local
    for _ in 0..steps {
        body.extend_from_slice(&[0x20, 0, 0x41, 1, 0x6a, 0x21, 0]);
    }
    body.push(0x0b);
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[1, 0x60, 0, 0], &mut module); // one type: () -> ()
    let mut funcs = Vec::new();
    leb128(functions, &mut funcs);
    funcs.resize(funcs.len() + functions, 0);
    section(3, &funcs, &mut module);
    section(7, b"\x01\x06_start\x00\x00", &mut module);
    let mut code = Vec::new();
    leb128(functions, &mut code);
    for _ in 0..functions {
        leb128(body.len(), &mut code);
        code.extend_from_slice(&body);
    }
    section(10, &code, &mut module);
    module
}

/// A wasm task running the module at `path`, fetched by a `file://` URI.
fn wasm_task(id: &str, agent_id: &Value, path: &Path, cache: bool) -> Value {
    json!({
        "name": id, "task_id": {"value": id}, "agent_id": agent_id,
        "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}},
                      {"name": "mem", "type": "SCALAR", "scalar": {"value": 16}}],
        "command": {"uris": [{"value": format!("file://{}", path.display()), "cache": cache,
                              "output_file": "m.wasm"}],
                    "value": "m.wasm", "shell": false},
        "container": {"type": "WASM"}
    })
}

/// Launches one task and returns its terminal update, acknowledging all.
async fn run_one(
    scheduler: &Scheduler,
    events: &mut Events,
    task: impl Fn(&Value) -> Value,
) -> Value {
    let id = task(&json!({}))["task_id"]["value"].clone();
    launch(scheduler, events, |agent| vec![task(agent)]).await;
    loop {
        let status = events.next_of("UPDATE").await["update"]["status"].clone();
        scheduler.acknowledge(&status).await;
        let state = status["state"].as_str().unwrap_or_default();
        if status["task_id"]["value"] == id && !matches!(state, "TASK_STARTING" | "TASK_RUNNING") {
            return status;
        }
    }
}

/// A cluster whose cgroups are under a root of the test's own.
async fn cluster_with(root: &str, flags: &[&str]) -> Cluster {
    let mut all = vec!["--cgroups-root", root];
    all.extend_from_slice(flags);
    Cluster::start_with_flags_async(CAIRN, &[], &all).await
}

/// The compile steps' cgroups left under `root` (`compiles/<agent>/<step>`), in every
/// hierarchy.
fn compile_cgroups_left(root: &str) -> Vec<PathBuf> {
    let subdirs = |dir: PathBuf| {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
    };
    std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|h| h.path().join(root).join("compiles"))
        .chain([PathBuf::from("/sys/fs/cgroup").join(root).join("compiles")])
        .flat_map(subdirs)
        .flat_map(subdirs)
        .collect()
}

/// Writes `bytes` as a module the tenant may read.
fn module_file(cluster: &Cluster, name: &str, bytes: &[u8]) -> PathBuf {
    let path = cluster.work_dir().parent().unwrap().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn assert_compile_failure(status: &Value, flag: &str) {
    assert_eq!(status["state"], "TASK_FAILED", "{status}");
    assert_eq!(
        status["reason"], "REASON_CONTAINER_LAUNCH_FAILED",
        "{status}"
    );
    let message = status["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("m.wasm: compiling it "), "{message}");
    assert!(message.contains(flag), "{message}");
}

/// A compile bomb, run twice by a tenant of an agent with `flags`: it fails with the
/// reason naming `flag`, the second time alike (at once when remembered);
/// then an honest module runs on the same agent, and the bomb left no compile step,
/// cgroup or artifact behind. `cache`: whether the bomb's URI goes through the
/// fetcher cache (else the agent reads it from the sandbox).
async fn bomb_fails_and_the_agent_serves_on(flags: &[&str], flag: &str, bomb: &[u8], cache: bool) {
    let root = format!("cairn-test-{}", uuid::Uuid::new_v4().simple());
    let cluster = cluster_with(&root, flags).await;
    let bomb = module_file(&cluster, "bomb.wasm", bomb);
    let honest = cluster.module("honest.wasm", EXIT_0);
    let (scheduler, mut events) = Scheduler::subscribe_with(
        &cluster.master_addr,
        json!({"user": "nobody", "name": "bomber"}),
    )
    .await;
    let status = run_one(&scheduler, &mut events, |a| {
        wasm_task("bomb", a, &bomb, cache)
    })
    .await;
    assert_compile_failure(&status, flag);
    let again = run_one(&scheduler, &mut events, |a| {
        wasm_task("again", a, &bomb, cache)
    })
    .await;
    assert_eq!(again["message"], status["message"], "{again}");
    let ok = run_one(&scheduler, &mut events, |a| {
        wasm_task("honest", a, &honest, true)
    })
    .await;
    assert_eq!(ok["state"], "TASK_FINISHED", "{ok}");
    assert_eq!(compile_cgroups_left(&root), Vec::<PathBuf>::new());
    let ours = compile_steps_in(&root);
    assert!(ours.is_empty(), "compile steps still running: {ours:?}");
    let artifacts = std::fs::read_dir(cluster.work_dir().join("artifacts")).unwrap();
    assert_eq!(artifacts.count(), 1, "only the honest module was compiled");
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_too_large_to_compile_fails_its_task_and_the_agent_serves_on() {
    // One function the compiler needs several hundred MiB for, read from the sandbox.
    let bomb = compile_bomb(1, 400_000);
    bomb_fails_and_the_agent_serves_on(
        &["--compile-memory", "128"],
        "--compile-memory",
        &bomb,
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_too_slow_to_compile_fails_its_task_and_the_agent_serves_on() {
    // Thousands of functions, each a little dear to compile: tens of CPU seconds.
    let bomb = compile_bomb(3000, 2000);
    bomb_fails_and_the_agent_serves_on(
        &["--compile-timeout", "2s"],
        "--compile-timeout",
        &bomb,
        true,
    )
    .await;
}

/// The compile steps running below `root`, by pid.
fn compile_steps_in(root: &str) -> Vec<String> {
    let steps = std::process::Command::new("pgrep")
        .args(["-x", "cairn-compile"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&steps.stdout)
        .lines()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(root))
        })
        .map(str::to_owned)
        .collect()
}

/// One step at a time on this agent: while a bomb holds it, another tenant's module
/// waits its turn no longer than the queue timeout, and its task fails saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compile_that_cannot_get_a_turn_fails_at_the_queue_timeout() {
    let root = format!("cairn-test-{}", uuid::Uuid::new_v4().simple());
    let flags = [
        "--compile-max-steps",
        "1",
        "--compile-queue-timeout",
        "1s",
        "--compile-timeout",
        "120s",
    ];
    let cluster = cluster_with(&root, &flags).await;
    let bomb = module_file(&cluster, "bomb.wasm", &compile_bomb(3000, 2000));
    let honest = cluster.module("honest.wasm", EXIT_0);
    let framework = |name: &str| json!({"user": "nobody", "name": name});
    let (bomber, mut bomber_events) =
        Scheduler::subscribe_with(&cluster.master_addr, framework("bomber")).await;
    launch(&bomber, &mut bomber_events, |a| {
        vec![wasm_task("bomb", a, &bomb, true)]
    })
    .await;
    let root_of_steps = root.clone();
    cairn_test_support::harness::blocking(move || {
        cairn_test_support::harness::wait_for("the bomb's compile step", || {
            compile_steps_in(&root_of_steps).into_iter().next()
        })
    })
    .await;
    let (other, mut events) =
        Scheduler::subscribe_with(&cluster.master_addr, framework("other")).await;
    let status = run_one(&other, &mut events, |a| {
        wasm_task("waits", a, &honest, true)
    })
    .await;
    assert_compile_failure(&status, "--compile-queue-timeout");
    assert!(
        status["message"]
            .as_str()
            .unwrap_or_default()
            .contains("waited 1s for a turn"),
        "{status}"
    );
    cluster.assert_no_panics();
}

/// A task killed while its module compiles ends at once, and its compile step and
/// the step's cgroup go with it, long before the step's deadline; the agent serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_task_mid_compile_stops_its_compile_step() {
    let root = format!("cairn-test-{}", uuid::Uuid::new_v4().simple());
    let cluster = cluster_with(&root, &["--compile-timeout", "300s"]).await;
    let bomb = module_file(&cluster, "bomb.wasm", &compile_bomb(3000, 2000));
    let honest = cluster.module("honest.wasm", EXIT_0);
    let (scheduler, mut events) = Scheduler::subscribe_with(
        &cluster.master_addr,
        json!({"user": "nobody", "name": "killer"}),
    )
    .await;
    launch(&scheduler, &mut events, |a| {
        vec![wasm_task("bomb", a, &bomb, true)]
    })
    .await;
    let steps_root = root.clone();
    cairn_test_support::harness::blocking(move || {
        cairn_test_support::harness::wait_for("the bomb's compile step", || {
            compile_steps_in(&steps_root).into_iter().next()
        })
    })
    .await;
    let kill = json!({"type": "KILL", "kill": {"task_id": {"value": "bomb"}}});
    assert_eq!(scheduler.call(kill).await.0, 202);
    let killed = loop {
        let status = events.next_of("UPDATE").await["update"]["status"].clone();
        scheduler.acknowledge(&status).await;
        if status["task_id"]["value"] == "bomb" {
            break status;
        }
    };
    assert_eq!(killed["state"], "TASK_KILLED", "{killed}");
    assert_eq!(
        killed["reason"], "REASON_TASK_KILLED_DURING_LAUNCH",
        "{killed}"
    );
    let steps_root = root.clone();
    cairn_test_support::harness::blocking(move || {
        cairn_test_support::harness::wait_for("the compile step and its cgroup to go", || {
            let gone = compile_steps_in(&steps_root).is_empty();
            (gone && compile_cgroups_left(&steps_root).is_empty()).then_some(())
        })
    })
    .await;
    let ok = run_one(&scheduler, &mut events, |a| {
        wasm_task("honest", a, &honest, true)
    })
    .await;
    assert_eq!(ok["state"], "TASK_FINISHED", "{ok}");
    // A step left to run would have ended with the bomb compiled and stored.
    let artifacts = std::fs::read_dir(cluster.work_dir().join("artifacts")).unwrap();
    assert_eq!(artifacts.count(), 1, "only the honest module was compiled");
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executors_hold_no_key_and_load_only_the_artifact_the_agent_wrote() {
    let cluster = Cluster::start_async(CAIRN).await;
    let module = cluster.module("m.wasm", EXIT_0);
    let framework = |name: &str| json!({"user": "nobody", "name": name});
    let (first, mut events) =
        Scheduler::subscribe_with(&cluster.master_addr, framework("first")).await;
    let ok = run_one(&first, &mut events, |a| wasm_task("ok", a, &module, true)).await;
    assert_eq!(ok["state"], "TASK_FINISHED", "{ok}");
    // The executor was told where artifacts are, never given the key.
    let pids = find_files(&cluster.work_dir().join("frameworks"), "pid");
    assert!(!pids.is_empty());
    for pid in pids {
        let pid = std::fs::read_to_string(&pid).unwrap();
        let Ok(cmdline) = std::fs::read(format!("/proc/{}/cmdline", pid.trim())) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(cmdline.contains("--artifacts"), "{cmdline}");
        assert!(
            !cmdline.contains("cache.key") && !cmdline.contains("--compile-cache"),
            "{cmdline}"
        );
    }
    // Someone with the disk changes the artifact: a new executor (another framework
    // of the same user) is told the sha256 the agent wrote, and refuses it.
    let dir = cluster.work_dir().join("artifacts");
    let artifact = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(std::fs::metadata(&artifact).unwrap().uid(), 0);
    let mut bytes = std::fs::read(&artifact).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::remove_file(&artifact).unwrap();
    std::fs::write(&artifact, &bytes).unwrap();
    let (second, mut events) =
        Scheduler::subscribe_with(&cluster.master_addr, framework("second")).await;
    let refused = run_one(&second, &mut events, |a| {
        wasm_task("changed", a, &module, true)
    })
    .await;
    assert_eq!(refused["state"], "TASK_FAILED", "{refused}");
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("is not the one the agent wrote"),
        "{message}"
    );
    cluster.assert_no_panics();
}
