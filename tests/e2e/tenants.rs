//! The agent as a tenant boundary, tried as a hostile tenant would through the Mesos
//! API alone: who a task runs as (never root unless the agent allows it), and a
//! fresh sandbox for every run, collected once the run is over.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use cairn_test_support::framework::{Events, Scheduler, accept, launch_spinning_task};
use cairn_test_support::harness::{
    Cluster, blocking, find_files, get_json, in_sandbox_of, wait_for,
};

use crate::CAIRN;

/// An agent with its own defaults for users: root tasks refused, `nobody` for
/// frameworks that name no one; native cgroups under a root of the test's own.
async fn strict_cluster(extra: &[&str]) -> Cluster {
    let root = format!("cairn-test-{}", uuid::Uuid::new_v4().simple());
    let mut flags = vec!["--allow-root-tasks", "false", "--cgroups-root"];
    flags.push(&root);
    flags.extend_from_slice(extra);
    Cluster::start_with_flags_async(CAIRN, &[], &flags).await
}

fn task(id: &str, agent_id: &Value, command: Value) -> Value {
    json!({
        "name": id, "task_id": {"value": id}, "agent_id": agent_id,
        "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}},
                      {"name": "mem", "type": "SCALAR", "scalar": {"value": 32}}],
        "command": command,
        "max_completion_time": {"nanoseconds": 60_000_000_000u64}
    })
}

/// Launches `tasks` on the next offer.
pub(crate) async fn launch(
    scheduler: &Scheduler,
    events: &mut Events,
    tasks: impl Fn(&Value) -> Vec<Value>,
) {
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let (code, body) = scheduler
        .call(accept(&offer, tasks(&offer["agent_id"])))
        .await;
    assert_eq!(code, 202, "{body}");
}

/// Reads updates, acknowledging each, until `id` has a terminal one.
async fn terminal(scheduler: &Scheduler, events: &mut Events, id: &str) -> Value {
    loop {
        let status = events.next_of("UPDATE").await["update"]["status"].clone();
        scheduler.acknowledge(&status).await;
        let state = status["state"].as_str().unwrap_or_default();
        if status["task_id"]["value"] == id
            && !matches!(state, "TASK_STARTING" | "TASK_RUNNING" | "TASK_KILLING")
        {
            return status;
        }
    }
}

/// Every run sandbox of `task` on the agent, oldest first.
fn runs_of(work_dir: &Path, task: &str) -> Vec<PathBuf> {
    let mut runs: Vec<PathBuf> = find_files(work_dir, "stdout")
        .into_iter()
        .filter(|p| in_sandbox_of(p, task))
        .filter_map(|p| p.parent().map(Path::to_owned))
        .collect();
    runs.sort();
    runs
}

fn uid_of(name: &str) -> u32 {
    nix::unistd::User::from_name(name)
        .unwrap()
        .unwrap()
        .uid
        .as_raw()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_and_unknown_users_are_refused_and_the_default_user_is_nobody() {
    let cluster = strict_cluster(&[]).await;
    let (scheduler, mut events) = Scheduler::subscribe_with(
        &cluster.master_addr,
        json!({"user": "root", "name": "tenant"}),
    )
    .await;
    launch(&scheduler, &mut events, |agent| {
        vec![
            // The framework's user is root: refused.
            task("as-framework-root", agent, json!({"value": "id -u"})),
            // A command naming root: refused too.
            task("as-root", agent, json!({"value": "id -u", "user": "root"})),
            task(
                "as-ghost",
                agent,
                json!({"value": "id -u", "user": "cairn-no-such-user"}),
            ),
            // A user that exists and is not root runs.
            task(
                "as-nobody",
                agent,
                json!({"value": "id -u > uid; grep NoNewPrivs /proc/self/status > nnp",
                       "user": "nobody"}),
            ),
        ]
    })
    .await;
    let mut ended = std::collections::HashMap::new();
    while ended.len() < 4 {
        let status = events.next_of("UPDATE").await["update"]["status"].clone();
        scheduler.acknowledge(&status).await;
        let state = status["state"].as_str().unwrap_or_default();
        if !matches!(state, "TASK_STARTING" | "TASK_RUNNING") {
            ended.insert(
                status["task_id"]["value"].as_str().unwrap().to_owned(),
                status,
            );
        }
    }
    for id in ["as-framework-root", "as-root"] {
        let status = &ended[id];
        assert_eq!(status["state"], "TASK_FAILED", "{status}");
        assert_eq!(
            status["reason"], "REASON_CONTAINER_LAUNCH_FAILED",
            "{status}"
        );
        let message = status["message"].as_str().unwrap();
        assert!(message.contains("may not run as root"), "{message}");
        assert!(message.contains("--allow-root-tasks"), "{message}");
        assert!(
            runs_of(&cluster.work_dir(), id).is_empty(),
            "{id} got a sandbox"
        );
    }
    let ghost = &ended["as-ghost"];
    assert_eq!(ghost["state"], "TASK_FAILED", "{ghost}");
    assert!(
        ghost["message"]
            .as_str()
            .unwrap()
            .contains("user \"cairn-no-such-user\" does not exist on this agent"),
        "{ghost}"
    );
    assert_eq!(
        ended["as-nobody"]["state"], "TASK_FINISHED",
        "{}",
        ended["as-nobody"]
    );
    let run = runs_of(&cluster.work_dir(), "as-nobody").pop().unwrap();
    let uid = std::fs::read_to_string(run.join("uid")).unwrap();
    assert_eq!(uid.trim(), uid_of("nobody").to_string());
    // No setuid binary (sudo) can raise it again, and its sandbox is its own.
    let nnp = std::fs::read_to_string(run.join("nnp")).unwrap();
    assert_eq!(
        nnp.split_whitespace().collect::<Vec<_>>(),
        ["NoNewPrivs:", "1"]
    );
    let sandbox = std::fs::metadata(&run).unwrap();
    assert_eq!(
        (sandbox.uid(), sandbox.mode() & 0o777),
        (uid_of("nobody"), 0o700)
    );

    // The executors of the refused tasks never started: the master charges only the
    // one that ran as nobody (and lives on).
    let addr = cluster.master_addr.clone();
    blocking(move || {
        wait_for("the unstarted executors' charges to go", || {
            let state = get_json(&addr, "/state");
            (state["agents"][0]["used_resources"] == "cpus:0.1;mem:256").then_some(())
        })
    })
    .await;

    // A framework naming no user gets the agent's default user, nobody.
    let (anonymous, mut events) = Scheduler::subscribe_with(
        &cluster.master_addr,
        json!({"user": "", "name": "anonymous"}),
    )
    .await;
    launch(&anonymous, &mut events, |agent| {
        vec![task("by-default", agent, json!({"value": "id -u > uid"}))]
    })
    .await;
    let status = terminal(&anonymous, &mut events, "by-default").await;
    assert_eq!(status["state"], "TASK_FINISHED", "{status}");
    let run = runs_of(&cluster.work_dir(), "by-default").pop().unwrap();
    let uid = std::fs::read_to_string(run.join("uid")).unwrap();
    assert_eq!(uid.trim(), uid_of("nobody").to_string());
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_task_id_runs_again_in_a_fresh_sandbox_with_its_own_terminal_update() {
    let cluster = strict_cluster(&[]).await;
    let (scheduler, mut events) = Scheduler::subscribe_with(
        &cluster.master_addr,
        json!({"user": "nobody", "name": "reuser"}),
    )
    .await;
    // The first run leaves a file and a link to a host file in its sandbox.
    let plant = "echo first > mark; ln -s /etc/hostname planted; ln -s /etc/passwd stdout2";
    launch(&scheduler, &mut events, |agent| {
        vec![task("again", agent, json!({"value": plant}))]
    })
    .await;
    let first = terminal(&scheduler, &mut events, "again").await;
    assert_eq!(first["state"], "TASK_FINISHED", "{first}");
    let runs = runs_of(&cluster.work_dir(), "again");
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(
        runs[0]
            .join("planted")
            .symlink_metadata()
            .unwrap()
            .is_symlink()
    );

    // Acknowledged and gone from the agent: the same id runs again, and ends again.
    let second = "test ! -e mark && test ! -e planted && echo second > mark";
    launch(&scheduler, &mut events, |agent| {
        vec![task("again", agent, json!({"value": second}))]
    })
    .await;
    let status = terminal(&scheduler, &mut events, "again").await;
    assert_eq!(
        status["state"], "TASK_FINISHED",
        "the second run saw the first's files: {status}"
    );
    let runs = runs_of(&cluster.work_dir(), "again");
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(
        std::fs::read_to_string(runs[0].join("mark")).unwrap(),
        "first\n"
    );
    assert_eq!(
        std::fs::read_to_string(runs[1].join("mark")).unwrap(),
        "second\n"
    );
    // The files API reads the newest run.
    let url = format!(
        "http://{}/files/read?framework_id={}&task_id=again&path=mark",
        cluster.agent_addr, scheduler.framework_id
    );
    let body: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(body["data"], "second\n", "{body}");
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_runs_sandbox_is_collected_without_following_its_links() {
    let cluster = strict_cluster(&["--gc-delay", "0s"]).await;
    let outside = tempfile::tempdir().unwrap();
    let keep = outside.path().join("keep");
    std::fs::write(&keep, b"the host's").unwrap();
    let (scheduler, mut events) = Scheduler::subscribe_with(
        &cluster.master_addr,
        json!({"user": "nobody", "name": "gc"}),
    )
    .await;
    let plant = format!("ln -s {} escape; echo done", outside.path().display());
    launch(&scheduler, &mut events, |agent| {
        vec![task("collected", agent, json!({"value": plant}))]
    })
    .await;
    let status = terminal(&scheduler, &mut events, "collected").await;
    assert_eq!(status["state"], "TASK_FINISHED", "{status}");
    let work_dir = cluster.work_dir();
    let gone = blocking(move || {
        wait_for("the run's sandbox to be collected", || {
            let left = find_files(&work_dir, "stdout")
                .into_iter()
                .any(|p| in_sandbox_of(&p, "collected"));
            (!left).then_some(())
        })
    });
    gone.await;
    assert_eq!(std::fs::read(&keep).unwrap(), b"the host's");
    cluster.assert_no_panics();
}

/// A scalar of a Mesos `Resource` list.
fn scalar(resources: &Value, name: &str) -> f64 {
    let found = resources
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name);
    found.map_or(0.0, |r| r["scalar"]["value"].as_f64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_gets_no_more_than_its_offers_held() {
    let cluster = Cluster::start_async(CAIRN).await;
    let (scheduler, mut events) = Scheduler::subscribe(&cluster.master_addr).await;
    // It names 0.1 cpu and nothing else.
    launch_spinning_task(&cluster, &scheduler, &mut events).await;
    let state = scheduler.master_state(&cluster.master_addr).await;
    // Its 0.1 cpu, 64 MB and 1 GB by default, 4 MB its executor holds for it, and the
    // executor's own 0.1 cpu and 256 MB.
    assert_eq!(
        state["agents"][0]["used_resources"], "cpus:0.2;disk:1024;mem:324",
        "{state}"
    );
    let revive = json!({"type": "REVIVE"});
    assert_eq!(scheduler.call(revive).await.0, 202);
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let offered = &offer["resources"];
    assert_eq!(
        (
            scalar(offered, "cpus"),
            scalar(offered, "mem"),
            scalar(offered, "disk")
        ),
        (1.8, 700.0, 64512.0),
        "{offer}"
    );
    // All the memory offered, for a task whose executor holds 4 MB more: refused.
    let greedy = json!({
        "name": "greedy", "task_id": {"value": "greedy"}, "agent_id": offer["agent_id"],
        "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}},
                      {"name": "mem", "type": "SCALAR", "scalar": {"value": 700}}],
        "command": {"value": "true"}
    });
    assert_eq!(scheduler.call(accept(&offer, vec![greedy])).await.0, 202);
    let status = events.next_of("UPDATE").await["update"]["status"].clone();
    assert_eq!(status["state"], "TASK_ERROR", "{status}");
    assert_eq!(status["reason"], "REASON_TASK_INVALID", "{status}");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "task greedy needs cpus:0.1;disk:1024;mem:704 (its resources cpus:0.1;mem:700 \
             with the agent's defaults and per-task overhead); the offers have "
        ),
        "{message}"
    );
    let state = scheduler.master_state(&cluster.master_addr).await;
    assert_eq!(
        state["agents"][0]["used_resources"], "cpus:0.2;disk:1024;mem:324",
        "the refusal changed nothing: {state}"
    );
    // Torn down, the framework gives back its task and its executor alike.
    assert_eq!(scheduler.call(json!({"type": "TEARDOWN"})).await.0, 202);
    let state = scheduler.master_state(&cluster.master_addr).await;
    assert_eq!(state["agents"][0]["used_resources"], "", "{state}");
    cluster.assert_no_panics();
}

/// Runs a wasm task on the next offer and waits for its terminal update.
async fn run_hello(scheduler: &Scheduler, events: &mut Events, id: &str) -> Value {
    launch(scheduler, events, |agent| {
        vec![cairn_test_support::framework::wasm_task(id, agent, 0.1)]
    })
    .await;
    terminal(scheduler, events, id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_executor_is_stopped_and_its_charge_given_back() {
    let cluster =
        Cluster::start_with_flags_async(CAIRN, &["--executor-idle-timeout", "300ms"], &[]).await;
    let (scheduler, mut events) = Scheduler::subscribe(&cluster.master_addr).await;
    let status = run_hello(&scheduler, &mut events, "first").await;
    assert_eq!(status["state"], "TASK_FINISHED", "{status}");
    let (master, agent) = (cluster.master_addr.clone(), cluster.agent_addr.clone());
    blocking(move || {
        wait_for("the idle executor to stop and its charge to go", || {
            let used = get_json(&master, "/state")["agents"][0]["used_resources"].clone();
            let executors = get_json(&agent, "/state")["executors"].clone();
            (used == "" && executors.as_array().is_some_and(Vec::is_empty)).then_some(())
        })
    })
    .await;
    // The framework heard its executor ended, as Mesos reports every executor's end.
    let failure = events.next_of("FAILURE").await;
    assert!(
        failure["failure"]["executor_id"]["value"]
            .as_str()
            .is_some_and(|e| e.starts_with("cairn-executor-")),
        "{failure}"
    );
    // The next task gets a new executor.
    assert_eq!(scheduler.call(json!({"type": "REVIVE"})).await.0, 202);
    let status = run_hello(&scheduler, &mut events, "second").await;
    assert_eq!(status["state"], "TASK_FINISHED", "{status}");
    cluster.assert_no_panics();
}
