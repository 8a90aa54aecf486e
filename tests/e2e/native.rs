//! Native tasks on this machine's real cgroups: a process in a cgroup of its own from
//! its first instruction, held to its memory, pids and CPU limits, killed with its
//! children after its grace period, and nothing left in the cgroup tree after it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use cairn_test_support::framework::{Events, Scheduler, accept};
use cairn_test_support::harness::{
    Cluster, blocking, find_files, get_json, in_sandbox_of, text, wait_for,
};

use crate::CAIRN;

/// A cluster whose agent puts native tasks' cgroups under a root of this test's own,
/// so what a test leaves (or not) is its alone.
pub(crate) struct NativeCluster {
    pub(crate) cluster: Cluster,
    root: String,
}

impl NativeCluster {
    /// A native cluster for a plain test (the flags are the agent's).
    fn start(flags: &[&str]) -> Self {
        let root = format!("cairn-test-{}", uuid::Uuid::new_v4().simple());
        let mut all = vec!["--cgroups-root", root.as_str()];
        all.extend_from_slice(flags);
        let cluster = Cluster::start_with_flags(CAIRN, &[], &all);
        Self { cluster, root }
    }

    /// [`NativeCluster::start`] for async tests: start-up is waited for off the
    /// runtime's workers.
    pub(crate) async fn start_async(flags: &[&str]) -> Self {
        let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
        blocking(move || Self::start(&flags.iter().map(String::as_str).collect::<Vec<_>>())).await
    }

    /// A task's cgroup, relative to the hierarchies' mounts: below its executor's
    /// (`cairn-executor-<framework>.<generation>`, whose user these tests' tasks share;
    /// the latest generation).
    fn task_cgroup(&self, framework_id: &str, task: &str) -> String {
        task_cgroup_of(&self.root, framework_id, task)
    }

    /// Every task's cgroup directory left under the root, in every hierarchy. Fails
    /// if no executor's cgroup was ever made under the root: an empty answer would
    /// then say nothing about cleaning up.
    fn leftovers(&self) -> Vec<PathBuf> {
        let (left, executors_seen) = self.task_cgroups_left();
        assert!(
            executors_seen > 0,
            "no executor cgroup under {}: the tasks' cgroups were made elsewhere",
            self.root
        );
        left
    }

    /// Every task's cgroup directory left under the root, and how many executor
    /// cgroups there are.
    fn task_cgroups_left(&self) -> (Vec<PathBuf>, usize) {
        let mut executors_seen = 0;
        let mut left = Vec::new();
        for controller in ["cpu", "cpuacct", "memory", "pids", ""] {
            let root = PathBuf::from("/sys/fs/cgroup")
                .join(controller)
                .join(&self.root)
                .join("executors");
            let Ok(executors) = std::fs::read_dir(&root) else {
                continue;
            };
            for executor in executors.flatten().filter(|e| e.path().is_dir()) {
                executors_seen += 1;
                let containers = executor.path().join("containers");
                let tasks = std::fs::read_dir(containers)
                    .into_iter()
                    .flatten()
                    .flatten();
                left.extend(tasks.filter(|t| t.path().is_dir()).map(|t| t.path()));
            }
        }
        (left, executors_seen)
    }
}

/// [`NativeCluster::task_cgroup`] of the cgroup root `root`.
fn task_cgroup_of(root: &str, framework_id: &str, task: &str) -> String {
    let executors = PathBuf::from("/sys/fs/cgroup/memory")
        .join(root)
        .join("executors");
    let executors = if executors.exists() {
        executors
    } else {
        PathBuf::from("/sys/fs/cgroup").join(root).join("executors")
    };
    let prefix = format!("cairn-executor-{framework_id}.");
    let mut generations: Vec<String> = std::fs::read_dir(executors)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    generations.sort();
    let executor = generations.pop().unwrap_or_default();
    format!("{root}/executors/{executor}/containers/{task}")
}

impl Drop for NativeCluster {
    fn drop(&mut self) {
        for controller in ["cpu", "cpuacct", "memory", "pids", ""] {
            let root = PathBuf::from("/sys/fs/cgroup")
                .join(controller)
                .join(&self.root);
            let executors = root.join("executors");
            for executor in std::fs::read_dir(&executors)
                .into_iter()
                .flatten()
                .flatten()
            {
                let containers = executor.path().join("containers");
                for task in std::fs::read_dir(&containers)
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let _ = std::fs::remove_dir(task.path());
                }
                let _ = std::fs::remove_dir(containers);
                let _ = std::fs::remove_dir(executor.path().join("executor"));
                let _ = std::fs::remove_dir(executor.path());
            }
            let _ = std::fs::remove_dir(executors);
            let _ = std::fs::remove_dir(root);
        }
    }
}

pub(crate) fn native_task(
    id: &str,
    agent_id: &Value,
    cpus: f64,
    mem: f64,
    command: Value,
) -> Value {
    json!({
        "name": id, "task_id": {"value": id}, "agent_id": agent_id,
        "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": cpus}},
                      {"name": "mem", "type": "SCALAR", "scalar": {"value": mem}}],
        "command": command,
        "max_completion_time": {"nanoseconds": 60_000_000_000u64}
    })
}

/// Reads events, acknowledging updates, until `id` has a terminal update; returns it.
pub(crate) async fn terminal(scheduler: &Scheduler, events: &mut Events, id: &str) -> Value {
    loop {
        let status = next_update(scheduler, events).await;
        let state = status["state"].as_str().unwrap_or_default();
        if status["task_id"]["value"] == id
            && !matches!(state, "TASK_STARTING" | "TASK_RUNNING" | "TASK_KILLING")
        {
            return status;
        }
    }
}

async fn next_update(scheduler: &Scheduler, events: &mut Events) -> Value {
    let event = events.next_of("UPDATE").await;
    let status = event["update"]["status"].clone();
    scheduler.acknowledge(&status).await;
    status
}

fn label(status: &Value, key: &str) -> Option<String> {
    status["labels"]["labels"]
        .as_array()?
        .iter()
        .find(|l| l["key"] == key)
        .and_then(|l| l["value"].as_str().map(str::to_owned))
}

pub(crate) async fn launch(
    cluster: &Cluster,
    tasks: impl Fn(&Value) -> Vec<Value>,
) -> (Scheduler, Events) {
    let (scheduler, mut events) = Scheduler::subscribe(&cluster.master_addr).await;
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let (code, body) = scheduler
        .call(accept(&offer, tasks(&offer["agent_id"])))
        .await;
    assert_eq!(code, 202, "{body}");
    (scheduler, events)
}

fn sandbox_file(cluster: &Cluster, task: &str, name: &str) -> String {
    let path = find_files(&cluster.work_dir(), name)
        .into_iter()
        .find(|p| in_sandbox_of(p, task))
        .unwrap_or_else(|| panic!("no {name} in {task}'s sandbox"));
    std::fs::read_to_string(path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_task_runs_in_its_own_cgroup_from_the_start_and_leaves_nothing() {
    let c = NativeCluster::start_async(&[]).await;
    let (scheduler, mut events) = launch(&c.cluster, |agent| {
        vec![
            native_task("shell", agent, 0.1, 32.0, json!({"value": "echo hello-native; cat /proc/self/cgroup"})),
            native_task("argv", agent, 0.1, 32.0,
                json!({"value": "/bin/echo", "shell": false, "arguments": ["echo", "argv", "mode"]})),
            native_task("exit3", agent, 0.1, 32.0, json!({"value": "exit 3"})),
        ]
    })
    .await;
    let fw = scheduler.framework_id.clone();
    let mut ended = std::collections::HashMap::new();
    while ended.len() < 3 {
        let status = next_update(&scheduler, &mut events).await;
        let state = status["state"].as_str().unwrap_or_default().to_owned();
        if !matches!(state.as_str(), "TASK_STARTING" | "TASK_RUNNING") {
            ended.insert(
                status["task_id"]["value"].as_str().unwrap().to_owned(),
                status,
            );
        }
    }
    for (id, expected) in [
        ("shell", "TASK_FINISHED"),
        ("argv", "TASK_FINISHED"),
        ("exit3", "TASK_FAILED"),
    ] {
        assert_eq!(ended[id]["state"], expected, "{id}: {}", ended[id]);
    }
    assert_eq!(ended["exit3"]["message"], "Command exited with status 3");
    let stdout = sandbox_file(&c.cluster, "shell", "stdout");
    assert!(stdout.contains("hello-native"), "{stdout}");
    // `cat` is a child of the task's shell: the cgroup was inherited from the first
    // instruction on.
    let own = format!("/{}", c.task_cgroup(&fw, "shell"));
    assert!(
        stdout
            .lines()
            .any(|l| l.contains(":memory:") || l.starts_with("0::"))
            && stdout.contains(&own),
        "not in {own}: {stdout}"
    );
    assert_eq!(sandbox_file(&c.cluster, "argv", "stdout"), "argv mode\n");
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
    c.cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_is_oom_killed_with_the_memory_reason() {
    let c = NativeCluster::start_async(&[]).await;
    // `tail` keeps a line without a newline in memory: 200 MB of zeros.
    let (scheduler, mut events) = launch(&c.cluster, |agent| {
        vec![native_task(
            "hog",
            agent,
            0.5,
            32.0,
            json!({"value": "head -c 200000000 /dev/zero | tail"}),
        )]
    })
    .await;
    let status = terminal(&scheduler, &mut events, "hog").await;
    assert_eq!(status["state"], "TASK_FAILED", "{status}");
    assert_eq!(
        status["reason"], "REASON_CONTAINER_LIMITATION_MEMORY",
        "{status}"
    );
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_is_held_by_the_pids_limit_and_ends_at_its_deadline() {
    let c = NativeCluster::start_async(&[]).await;
    let (scheduler, mut events) = launch(&c.cluster, |agent| {
        let mut task = native_task(
            "bomb",
            agent,
            1.0,
            256.0,
            json!({"value": "sleep 600 & b() { b | b & }; b; wait"}),
        );
        task["max_completion_time"] = json!({"nanoseconds": 3_000_000_000u64});
        vec![task]
    })
    .await;
    let fw = scheduler.framework_id.clone();
    // Watch the cgroup while it runs: forks are refused at the cap, never past it.
    let root = c.root.clone();
    let (limit, peak) = blocking(move || {
        let mut peak = 0u64;
        // The bomb's cgroup is below its executor's, which starts with the task.
        let file = |name: &str| {
            let base = PathBuf::from("/sys/fs/cgroup/pids");
            let base = if base.exists() {
                base
            } else {
                PathBuf::from("/sys/fs/cgroup")
            };
            base.join(task_cgroup_of(&root, &fw, "bomb")).join(name)
        };
        let read = |file: &PathBuf, field: usize| -> u64 {
            std::fs::read_to_string(file)
                .ok()
                .and_then(|s| s.split_whitespace().nth(field)?.parse().ok())
                .unwrap_or(0)
        };
        // The first refused fork, with the limit it met and the most processes seen.
        wait_for("the bomb to reach the pids limit", || {
            peak = peak.max(read(&file("pids.current"), 0));
            (read(&file("pids.events"), 1) > 0).then(|| (read(&file("pids.max"), 0), peak))
        })
    })
    .await;
    assert_eq!(limit, 1024, "the task's pids limit");
    assert!(
        peak > 0 && peak <= limit,
        "peak {peak} past the limit {limit}"
    );
    let status = terminal(&scheduler, &mut events, "bomb").await;
    assert_eq!(status["state"], "TASK_FAILED", "{status}");
    assert_eq!(
        status["reason"], "REASON_MAX_COMPLETION_TIME_REACHED",
        "{status}"
    );
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_ignoring_sigterm_is_killed_after_its_grace_with_its_children() {
    let c = NativeCluster::start_async(&[]).await;
    let (scheduler, mut events) = launch(&c.cluster, |agent| {
        let mut task = native_task(
            "stubborn",
            agent,
            0.1,
            32.0,
            json!({"value": "trap '' TERM; sleep 600 & echo started; wait; wait"}),
        );
        task["kill_policy"] = json!({"grace_period": {"nanoseconds": 1_000_000_000u64}});
        vec![task]
    })
    .await;
    let agent_id = loop {
        let status = next_update(&scheduler, &mut events).await;
        if status["state"] == "TASK_RUNNING" {
            break status["agent_id"].clone();
        }
    };
    // Its child is up (it wrote "started") before the kill.
    let work_dir = c.cluster.work_dir();
    blocking(move || {
        wait_for("the task's output", || {
            find_files(&work_dir, "stdout")
                .into_iter()
                .find(|p| std::fs::read_to_string(p).is_ok_and(|s| s.contains("started")))
        })
    })
    .await;
    let asked = Instant::now();
    let kill =
        json!({"type": "KILL", "kill": {"task_id": {"value": "stubborn"}, "agent_id": agent_id}});
    assert_eq!(scheduler.call(kill).await.0, 202);
    let status = terminal(&scheduler, &mut events, "stubborn").await;
    let took = asked.elapsed();
    assert_eq!(status["state"], "TASK_KILLED", "{status}");
    assert!(
        took >= Duration::from_millis(900),
        "killed before its grace: {took:?}"
    );
    // The cgroup is removed only once empty: the background sleep died too.
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_hog_is_held_to_its_quota() {
    let c = NativeCluster::start_async(&[]).await;
    let (scheduler, mut events) = launch(&c.cluster, |agent| {
        let mut task = native_task(
            "hog",
            agent,
            0.25,
            32.0,
            json!({"value": "while :; do :; done"}),
        );
        task["max_completion_time"] = json!({"nanoseconds": 2_000_000_000u64});
        vec![task]
    })
    .await;
    let status = terminal(&scheduler, &mut events, "hog").await;
    assert_eq!(
        status["reason"], "REASON_MAX_COMPLETION_TIME_REACHED",
        "{status}"
    );
    let cpu_ms: f64 = label(&status, "cairn.usage.cpu_time_ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no cpu time label: {status}"));
    // 0.25 of a core for 2 s is 500 ms; unlimited, a busy loop would use 2,000.
    assert!(
        (250.0..=750.0).contains(&cpu_ms),
        "used {cpu_ms} ms of CPU in 2 s at a 0.25 quota"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_task_outlives_an_agent_restart() {
    let mut c = NativeCluster::start_async(&[]).await;
    let (scheduler, mut events) = launch(&c.cluster, |agent| {
        let gate = "while [ ! -f \"$MESOS_SANDBOX/go\" ]; do sleep 0.1; done; echo went on";
        vec![native_task(
            "gated",
            agent,
            0.1,
            32.0,
            json!({"value": gate}),
        )]
    })
    .await;
    while next_update(&scheduler, &mut events).await["state"] != "TASK_RUNNING" {}
    c.cluster.agent.kill();
    let agent = c.cluster.restart_agent(&["--cgroups-root", &c.root]).await;
    agent.logged("registered with the master").await;
    c.cluster.agent = agent;
    let sandbox = find_files(&c.cluster.work_dir(), "stdout")
        .into_iter()
        .find(|p| in_sandbox_of(p, "gated"))
        .and_then(|p| p.parent().map(|d| d.to_owned()))
        .expect("the task's sandbox");
    std::fs::write(sandbox.join("go"), b"").unwrap();
    let status = terminal(&scheduler, &mut events, "gated").await;
    assert_eq!(status["state"], "TASK_FINISHED", "{status}");
    assert_eq!(sandbox_file(&c.cluster, "gated", "stdout"), "went on\n");
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
    c.cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_tasks_get_the_namespaces_the_agent_is_asked_for() {
    let c = NativeCluster::start_async(&["--native-namespaces", "ipc,mount,network"]).await;
    let (scheduler, mut events) = launch(&c.cluster, |agent| {
        let show =
            "readlink /proc/self/ns/ipc /proc/self/ns/mnt /proc/self/ns/net; cat /proc/net/dev";
        vec![native_task(
            "isolated",
            agent,
            0.1,
            32.0,
            json!({"value": show}),
        )]
    })
    .await;
    let status = terminal(&scheduler, &mut events, "isolated").await;
    assert_eq!(status["state"], "TASK_FINISHED", "{status}");
    let stdout = sandbox_file(&c.cluster, "isolated", "stdout");
    for ns in ["ipc", "mnt", "net"] {
        let host = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let host = host.to_string_lossy();
        assert!(stdout.contains(&format!("{ns}:[")), "{stdout}");
        assert!(
            !stdout.contains(host.as_ref()),
            "shares the host's {ns}: {stdout}"
        );
    }
    // No network but its own loopback.
    let devices: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_once(':').map(|(d, _)| d.trim()))
        .filter(|d| {
            !d.contains(' ')
                && !d.is_empty()
                && !d.starts_with("ipc")
                && !d.starts_with("mnt")
                && !d.starts_with("net")
        })
        .collect();
    assert_eq!(devices, ["lo"], "{stdout}");
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_native_tasks_usage_is_served_as_mesos_monitor_statistics() {
    let c = NativeCluster::start_async(&[]).await;
    let (scheduler, mut events) = launch(&c.cluster, |agent| {
        vec![native_task(
            "busy",
            agent,
            0.5,
            32.0,
            json!({"value": "while :; do :; done"}),
        )]
    })
    .await;
    let agent_id = loop {
        let status = next_update(&scheduler, &mut events).await;
        if status["state"] == "TASK_RUNNING" {
            break status["agent_id"].clone();
        }
    };
    let addr = c.cluster.agent_addr.clone();
    // Executors report usage with their heartbeats.
    let entry = blocking(move || {
        wait_for("the task's usage", || {
            let all = get_json(&addr, "/monitor/statistics");
            all.as_array()?
                .iter()
                .find(|e| {
                    e["source"] == "busy"
                        && e["statistics"]["cpus_user_time_secs"].as_f64() > Some(0.0)
                })
                .cloned()
        })
    })
    .await;
    assert_eq!(
        entry["framework_id"],
        scheduler.framework_id.as_str(),
        "{entry}"
    );
    assert!(
        entry["statistics"]["processes"].as_u64() >= Some(1),
        "{entry}"
    );
    assert!(
        entry["statistics"]["mem_rss_bytes"].as_u64() > Some(0),
        "{entry}"
    );
    let kill =
        json!({"type": "KILL", "kill": {"task_id": {"value": "busy"}, "agent_id": agent_id}});
    assert_eq!(scheduler.call(kill).await.0, 202);
    assert_eq!(
        terminal(&scheduler, &mut events, "busy").await["state"],
        "TASK_KILLED"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_user_is_honoured_and_the_sandbox_is_theirs() {
    let c = NativeCluster::start_async(&[]).await;
    let (scheduler, mut events) = launch(&c.cluster, |agent| {
        vec![native_task(
            "as-nobody",
            agent,
            0.1,
            32.0,
            json!({"value": "id -u; id -g; echo written > mine", "user": "nobody"}),
        )]
    })
    .await;
    let status = terminal(&scheduler, &mut events, "as-nobody").await;
    assert_eq!(status["state"], "TASK_FINISHED", "{status}");
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let stdout = sandbox_file(&c.cluster, "as-nobody", "stdout");
    assert_eq!(
        stdout,
        format!("{}\n{}\n", nobody.uid, nobody.gid),
        "the task ran as someone else"
    );
    assert_eq!(sandbox_file(&c.cluster, "as-nobody", "mine"), "written\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_pid_namespace_the_task_is_init_sees_only_its_own_and_still_dies_on_kill() {
    let c = NativeCluster::start_async(&["--native-namespaces", "mount,pid"]).await;
    let (scheduler, mut events) = launch(&c.cluster, |agent| {
        let count = "echo pid $$; ls /proc | grep -c '^[0-9]'";
        let mut sleeper = native_task("sleeper", agent, 0.1, 32.0, json!({"value": "sleep 600"}));
        sleeper["kill_policy"] = json!({"grace_period": {"nanoseconds": 500_000_000u64}});
        vec![
            native_task("counts", agent, 0.1, 32.0, json!({"value": count})),
            sleeper,
        ]
    })
    .await;
    let mut ended: std::collections::HashMap<String, Value> = Default::default();
    let mut kill_sent = false;
    while ended.len() < 2 {
        let status = next_update(&scheduler, &mut events).await;
        let id = status["task_id"]["value"].as_str().unwrap().to_owned();
        let state = status["state"].as_str().unwrap_or_default().to_owned();
        if id == "sleeper" && state == "TASK_RUNNING" && !kill_sent {
            let kill = json!({"type": "KILL",
                "kill": {"task_id": {"value": "sleeper"}, "agent_id": status["agent_id"]}});
            assert_eq!(scheduler.call(kill).await.0, 202);
            kill_sent = true;
        }
        if !matches!(
            state.as_str(),
            "TASK_STARTING" | "TASK_RUNNING" | "TASK_KILLING"
        ) {
            ended.insert(id, status);
        }
    }
    assert_eq!(
        ended["counts"]["state"], "TASK_FINISHED",
        "{}",
        ended["counts"]
    );
    let stdout = sandbox_file(&c.cluster, "counts", "stdout");
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("pid 1"), "{stdout}");
    // Its /proc lists its own processes only: the shell, ls and grep at most.
    let seen: u32 = lines
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(u32::MAX);
    assert!(seen <= 3, "{stdout}");
    assert_eq!(
        ended["sleeper"]["state"], "TASK_KILLED",
        "{}",
        ended["sleeper"]
    );
    assert!(c.leftovers().is_empty(), "{:?}", c.leftovers());
}

#[test]
fn cairn_run_runs_a_native_command() {
    let c = NativeCluster::start(&[]);
    let out = c.cluster.run_with(
        std::path::Path::new("echo native from cairn run:"),
        &["--native", "--timeout", "30s"],
        &["$((6 * 7))"],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("native from cairn run: 42"), "{stdout}");
    // `cairn run` has torn its framework down and hung up: its executor, and the
    // executor's cgroup, may be gone already. No task's cgroup may be left.
    let (left, _) = c.task_cgroups_left();
    assert!(left.is_empty(), "{left:?}");
}
