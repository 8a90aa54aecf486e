//! Executors start unprivileged: the agent puts each executor process in its cgroup
//! and drops it to its tasks' user before the executor's own code runs. Tried as a
//! tenant whose user is `nobody`, through the Mesos API alone.

use serde_json::{Value, json};

use cairn_test_support::framework::{Events, Scheduler};
use cairn_test_support::harness::{Cluster, blocking, get_json, guest, wait_for};

use crate::CAIRN;
use crate::tenants::launch;

/// What the agent adds to an executor's tasks for the executor itself, and to each
/// task for what the executor holds for it.
const OVERHEAD: u64 = 256 << 20;
const PER_TASK: u64 = 4 << 20;

/// A cluster whose agent refuses root tasks, with cgroups under a root of its own.
async fn strict_cluster(extra: &[&str]) -> (Cluster, String) {
    let root = format!("cairn-test-{}", uuid::Uuid::new_v4().simple());
    let mut flags = vec!["--allow-root-tasks", "false", "--cgroups-root", &root];
    flags.extend_from_slice(extra);
    let cluster = Cluster::start_with_flags_async(CAIRN, &[], &flags).await;
    (cluster, root)
}

fn native(id: &str, agent_id: &Value, mem: u32, command: &str) -> Value {
    json!({
        "name": id, "task_id": {"value": id}, "agent_id": agent_id,
        "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}},
                      {"name": "mem", "type": "SCALAR", "scalar": {"value": mem}}],
        "command": {"value": command},
        "max_completion_time": {"nanoseconds": 120_000_000_000u64}
    })
}

fn wasm(id: &str, agent_id: &Value) -> Value {
    let module = guest("hello");
    json!({
        "name": id, "task_id": {"value": id}, "agent_id": agent_id,
        "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}},
                      {"name": "mem", "type": "SCALAR", "scalar": {"value": 16}}],
        "command": {"uris": [{"value": format!("file://{}", module.display()),
                              "output_file": "hello.wasm", "cache": true}],
                    "value": "hello.wasm", "shell": false, "arguments": ["hello", "guest"]},
        "container": {"type": "WASM"}
    })
}

/// Reads updates, acknowledging each, until `id` reaches `state` or ends.
async fn until(scheduler: &Scheduler, events: &mut Events, id: &str, state: &str) -> Value {
    loop {
        let status = events.next_of("UPDATE").await["update"]["status"].clone();
        scheduler.acknowledge(&status).await;
        let now = status["state"].as_str().unwrap_or_default();
        if status["task_id"]["value"] == id
            && (now == state || !matches!(now, "TASK_STARTING" | "TASK_RUNNING" | "TASK_KILLING"))
        {
            return status;
        }
    }
}

/// `Name:\tvalue` lines of `/proc/<pid>/status`.
fn proc_status(pid: u64, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The memory cgroup of a process, relative to the hierarchy's mount (cgroup v1's
/// memory line, or v2's one line), and the file holding that cgroup's limit.
fn memory_cgroup(pid: u64) -> (String, &'static str, &'static str) {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        if controllers.is_some_and(|c| c.split(',').any(|c| c == "memory")) {
            return (
                path.unwrap().to_owned(),
                "/sys/fs/cgroup/memory",
                "memory.limit_in_bytes",
            );
        }
    }
    let path = cgroups.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    (path.to_owned(), "/sys/fs/cgroup", "memory.max")
}

async fn executors(cluster: &Cluster) -> Vec<Value> {
    let addr = cluster.agent_addr.clone();
    let state = blocking(move || get_json(&addr, "/state")).await;
    state["executors"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framework_executor_runs_as_its_user_in_a_cgroup_sized_to_its_tasks() {
    let (cluster, root) = strict_cluster(&[]).await;
    let (scheduler, mut events) = Scheduler::subscribe_with(
        &cluster.master_addr,
        json!({"user": "nobody", "name": "tenant"}),
    )
    .await;
    launch(&scheduler, &mut events, |agent| {
        vec![native("holder", agent, 100, "exec sleep 600")]
    })
    .await;
    let status = until(&scheduler, &mut events, "holder", "TASK_RUNNING").await;
    assert_eq!(status["state"], "TASK_RUNNING", "{status}");
    let executor = executors(&cluster).await.pop().unwrap();
    let pid = executor["pid"].as_u64().unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();

    // Its own code runs as nobody, and can never gain privileges back.
    let uid = nobody.uid.as_raw();
    assert_eq!(proc_status(pid, "Uid"), format!("{uid} {uid} {uid} {uid}"));
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1");
    assert_eq!(proc_status(pid, "CapEff"), "0000000000000000");

    // In the executor's cgroup, sized to its task (100 MiB) plus the executor's overhead.
    let (path, mount, limit_file) = memory_cgroup(pid);
    let executor_id = executor["executor_id"].as_str().unwrap();
    let executor_cgroup = path
        .strip_suffix("/executor")
        .unwrap_or_default()
        .to_owned();
    assert!(
        executor_cgroup.starts_with(&format!("/{root}/executors/{executor_id}.")),
        "the executor is not in its cgroup: {path}"
    );
    let limit_of = |dir: &str| -> u64 {
        std::fs::read_to_string(format!("{mount}{dir}/{limit_file}"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(
        limit_of(&executor_cgroup),
        (100 << 20) + PER_TASK + OVERHEAD
    );

    // A second task grows it before it launches; the wasm task runs in the same
    // unprivileged executor (with no compile cache key: it compiles in memory).
    launch(&scheduler, &mut events, |agent| vec![wasm("guest", agent)]).await;
    let status = until(&scheduler, &mut events, "guest", "TASK_FINISHED").await;
    assert_eq!(status["state"], "TASK_FINISHED", "{status}");
    assert_eq!(status["executor_id"]["value"], executor_id, "{status}");
    assert_eq!(executors(&cluster).await.len(), 1);
    // Finished, its share is given back: the holder's 100 MiB and the overhead.
    let back = blocking({
        let file = format!("{mount}{executor_cgroup}/{limit_file}");
        move || {
            wait_for("the executor's cgroup to shrink back", || {
                let limit: u64 = std::fs::read_to_string(&file).ok()?.trim().parse().ok()?;
                (limit == (100 << 20) + PER_TASK + OVERHEAD).then_some(limit)
            })
        }
    })
    .await;
    assert_eq!(back, (100 << 20) + PER_TASK + OVERHEAD);

    // A task cannot move itself out of the executor's cgroup, nor raise its limit.
    let (code, body) = scheduler
        .call(json!({"type": "KILL", "kill": {"task_id": {"value": "holder"}}}))
        .await;
    assert_eq!(code, 202, "{body}");
    let status = until(&scheduler, &mut events, "holder", "TASK_KILLED").await;
    assert_eq!(status["state"], "TASK_KILLED", "{status}");
    launch(&scheduler, &mut events, |agent| {
        let escape = format!(
            "(echo $$ > {mount}/cgroup.procs) 2> escape; \
             (echo $$ > {mount}{executor_cgroup}/executor/cgroup.procs) 2>> escape; \
             (echo 1000000000000 > {mount}{executor_cgroup}/{limit_file}) 2>> escape; true"
        );
        vec![native("escape", agent, 50, &escape)]
    })
    .await;
    let status = until(&scheduler, &mut events, "escape", "TASK_FINISHED").await;
    assert_eq!(status["state"], "TASK_FINISHED", "{status}");
    let sandbox = status_sandbox(&cluster, "escape");
    let refusals = std::fs::read_to_string(sandbox.join("escape")).unwrap();
    assert_eq!(
        refusals.matches("Permission denied").count(),
        3,
        "a task escaped its executor's cgroup: {refusals}"
    );
    cluster.assert_no_panics();
}

/// The sandbox of the latest run of `task`.
fn status_sandbox(cluster: &Cluster, task: &str) -> std::path::PathBuf {
    let mut runs: Vec<_> = cairn_test_support::harness::find_files(&cluster.work_dir(), "stdout")
        .into_iter()
        .filter(|p| cairn_test_support::harness::in_sandbox_of(p, task))
        .filter_map(|p| p.parent().map(|p| p.to_owned()))
        .collect();
    runs.sort();
    runs.pop().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprivileged_executor_gives_native_tasks_their_namespaces() {
    let (cluster, _root) = strict_cluster(&["--native-namespaces=ipc,mount,network,pid"]).await;
    let (scheduler, mut events) = Scheduler::subscribe_with(
        &cluster.master_addr,
        json!({"user": "nobody", "name": "tenant"}),
    )
    .await;
    launch(&scheduler, &mut events, |agent| {
        vec![native(
            "isolated",
            agent,
            32,
            "echo $$ > pid; id -u > uid; ls /proc | grep -c '^[0-9]' > procs; \
             tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' > links",
        )]
    })
    .await;
    let status = until(&scheduler, &mut events, "isolated", "TASK_FINISHED").await;
    assert_eq!(status["state"], "TASK_FINISHED", "{status}");
    let sandbox = status_sandbox(&cluster, "isolated");
    let read = |name: &str| std::fs::read_to_string(sandbox.join(name)).unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    // Its own pid namespace (it is PID 1, and its /proc shows only its own), its
    // own network (loopback alone), still as nobody.
    assert_eq!(read("pid").trim(), "1");
    assert_eq!(read("uid").trim(), nobody.uid.as_raw().to_string());
    assert!(
        read("procs").trim().parse::<u32>().unwrap() <= 3,
        "{}",
        read("procs")
    );
    assert_eq!(read("links").trim(), "lo");
    cluster.assert_no_panics();
}

/// A native task owns its cgroup (its executor made it, as the same user): a child
/// cgroup it makes to hide a process in is searched too when the task ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_hidden_in_a_child_cgroup_dies_with_its_task() {
    let (cluster, _root) = strict_cluster(&[]).await;
    let (scheduler, mut events) = Scheduler::subscribe_with(
        &cluster.master_addr,
        json!({"user": "nobody", "name": "tenant"}),
    )
    .await;
    let hide = "base=/sys/fs/cgroup/memory; [ -d $base ] || base=/sys/fs/cgroup; \
                cg=$(grep -E ':memory:|^0::' /proc/self/cgroup | head -1 | cut -d: -f3); \
                mkdir $base$cg/hide; sleep 600 & echo $! > hidden; \
                echo $! > $base$cg/hide/cgroup.procs && echo moved > moved; true";
    launch(&scheduler, &mut events, |agent| {
        vec![native("hider", agent, 32, hide)]
    })
    .await;
    let status = until(&scheduler, &mut events, "hider", "TASK_FINISHED").await;
    assert_eq!(status["state"], "TASK_FINISHED", "{status}");
    let sandbox = status_sandbox(&cluster, "hider");
    // The move itself is the tenant's right: the cgroup is its user's.
    assert!(sandbox.join("moved").exists(), "the task could not hide");
    let pid: u32 = std::fs::read_to_string(sandbox.join("hidden"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    blocking(move || {
        wait_for("the hidden process to be killed", || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
            // Gone, or a zombie waiting for its reaper.
            stat.is_none_or(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .then_some(())
        })
    })
    .await;
    cluster.assert_no_panics();
}

/// The executor socket is open to every local user (executors run as theirs): a
/// process that is not the one the agent started for an executor is refused as it,
/// gets nothing, and is cut off; the executor itself serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_on_the_executor_socket_cannot_subscribe_as_an_executor() {
    use cairn_api::internal::{ExecutorCall, ExecutorSubscribe, executor_call};
    use cairn_api::v1::{ExecutorId, FrameworkId};
    use prost::Message as _;
    use std::io::{Read as _, Write as _};

    let (cluster, _root) = strict_cluster(&[]).await;
    let (scheduler, mut events) = Scheduler::subscribe_with(
        &cluster.master_addr,
        json!({"user": "nobody", "name": "tenant"}),
    )
    .await;
    launch(&scheduler, &mut events, |agent| {
        vec![native("holder", agent, 32, "exec sleep 600")]
    })
    .await;
    let status = until(&scheduler, &mut events, "holder", "TASK_RUNNING").await;
    assert_eq!(status["state"], "TASK_RUNNING", "{status}");
    let executor = executors(&cluster).await.pop().unwrap();
    let subscribe = ExecutorCall {
        call: Some(executor_call::Call::Subscribe(ExecutorSubscribe {
            framework_id: Some(FrameworkId {
                value: executor["framework_id"].as_str().unwrap().to_owned(),
            }),
            executor_id: Some(ExecutorId {
                value: executor["executor_id"].as_str().unwrap().to_owned(),
            }),
            // Claiming the executor's pid changes nothing: the socket says whose it is.
            pid: executor["pid"].as_u64().unwrap() as u32,
            ..Default::default()
        })),
    };
    let socket = cluster.work_dir().join("agent.sock");
    let answer = blocking(move || {
        let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
        let body = subscribe.encode_to_vec();
        stream
            .write_all(&(body.len() as u32).to_be_bytes())
            .unwrap();
        stream.write_all(&body).unwrap();
        // The agent closes the connection: the read ends, well before this deadline.
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).map(|_| answer)
    })
    .await;
    let answer = answer.expect("the refused connection was left open");
    assert!(answer.is_empty(), "a stranger was answered: {answer:?}");
    cluster
        .agent
        .logged("executor subscription from the wrong process, or with a wrong token, refused")
        .await;
    // The real executor still holds its task, and kills it when asked.
    let kill = json!({"type": "KILL", "kill": {"task_id": {"value": "holder"}}});
    let (code, body) = scheduler.call(kill).await;
    assert_eq!(code, 202, "{body}");
    let status = until(&scheduler, &mut events, "holder", "TASK_KILLED").await;
    assert_eq!(status["state"], "TASK_KILLED", "{status}");
    cluster.assert_no_panics();
}
