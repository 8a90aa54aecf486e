//! DOCKER tasks against the machine's real Docker engine: output, exit status, kill,
//! a missing image, and no container left behind. The engine has no registry, so the
//! image is built here from the host's static busybox. A missing engine fails these
//! tests: they never skip.

use std::collections::HashMap;
use std::process::Command;

use serde_json::{Value, json};

use cairn_test_support::docker_image::{docker, test_image};
use cairn_test_support::framework::{Events, Scheduler, accept};
use cairn_test_support::harness::{Cluster, blocking, find_files, in_sandbox_of, text, wait_for};

use crate::CAIRN;

/// The engine's containers, running or not, that Cairn labelled with this task id.
pub(crate) fn containers_of(task_id: &str) -> Vec<String> {
    let filter = format!("label=cairn.task_id={task_id}");
    let out = docker(&["ps", "-a", "-q", "--filter", filter.as_str()]);
    assert!(out.status.success(), "docker ps: {}", text(&out.stderr));
    text(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// [`containers_of`] for async tests: `docker ps` runs off the runtime's workers.
pub(crate) async fn containers_of_async(task_id: &str) -> Vec<String> {
    let task_id = task_id.to_owned();
    blocking(move || containers_of(&task_id)).await
}

/// Waits until the engine holds no container of these tasks: Cairn removes each
/// one after its terminal update.
pub(crate) async fn assert_removed(task_ids: &[&str]) {
    assert!(!task_ids.is_empty(), "which tasks' containers?");
    let task_ids: Vec<String> = task_ids.iter().map(|&id| id.to_owned()).collect();
    blocking(move || {
        wait_for("the tasks' containers to be removed", || {
            task_ids
                .iter()
                .all(|id| containers_of(id).is_empty())
                .then_some(())
        })
    })
    .await;
}

/// Removes the tests' containers however a test ends, so a failed one leaves no
/// `sleep 600` on the shared engine.
pub(crate) struct RemoveOnDrop(pub(crate) Vec<String>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for id in &self.0 {
            let filter = format!("label=cairn.task_id={id}");
            let Ok(out) = Command::new("docker")
                .args(["ps", "-a", "-q", "--filter", filter.as_str()])
                .output()
            else {
                continue;
            };
            for container in text(&out.stdout).split_whitespace() {
                let _ = Command::new("docker")
                    .args(["rm", "-f", container])
                    .output();
            }
        }
    }
}

/// A task id unique on the shared engine: tests and test runs share it.
pub(crate) fn task_id(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

pub(crate) fn docker_task(id: &str, agent_id: &Value, image: &str, command: &str) -> Value {
    json!({
        "name": id, "task_id": {"value": id}, "agent_id": agent_id,
        "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}},
                      {"name": "mem", "type": "SCALAR", "scalar": {"value": 64}}],
        "command": {"value": command, "shell": true},
        "container": {"type": "DOCKER", "docker": {"image": image, "network": "NONE"}}
    })
}

pub(crate) fn is_terminal(status: &Value) -> bool {
    !matches!(
        status["state"].as_str().unwrap_or_default(),
        "TASK_STAGING" | "TASK_STARTING" | "TASK_RUNNING" | "TASK_KILLING"
    )
}

/// Acknowledges one update and returns its status.
pub(crate) async fn next_status(scheduler: &Scheduler, events: &mut Events) -> Value {
    let update = events.next_of("UPDATE").await;
    let status = update["update"]["status"].clone();
    scheduler.acknowledge(&status).await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_task_runs_and_its_output_and_exit_code_reach_the_framework() {
    let image = blocking(test_image).await;
    let id = task_id("docker-output-and-exit-code");
    let _cleanup = RemoveOnDrop(vec![id.clone()]);
    let cluster = Cluster::start_async(CAIRN).await;
    let (scheduler, mut events) = Scheduler::subscribe(&cluster.master_addr).await;
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let task = docker_task(
        &id,
        &offer["agent_id"],
        &image,
        "echo hello from docker; exit 3",
    );
    let (code, body) = scheduler.call(accept(&offer, vec![task])).await;
    assert_eq!(code, 202, "{body}");
    let mut states = Vec::new();
    let last = loop {
        let status = next_status(&scheduler, &mut events).await;
        assert_eq!(status["task_id"]["value"], id.as_str(), "{status}");
        states.push(status["state"].as_str().unwrap_or_default().to_owned());
        if is_terminal(&status) {
            break status;
        }
    };
    assert!(states.iter().any(|s| s == "TASK_RUNNING"), "{states:?}");
    assert_eq!(last["state"], "TASK_FAILED", "{last}");
    assert_eq!(last["message"], "Command exited with status 3", "{last}");

    let stdout = find_files(&cluster.work_dir(), "stdout")
        .into_iter()
        .find(|p| in_sandbox_of(p, &id))
        .unwrap_or_else(|| panic!("no stdout of {id} under the agent's work dir"));
    let output = std::fs::read_to_string(&stdout).unwrap();
    assert!(output.contains("hello from docker"), "{output:?}");
    assert_removed(&[id.as_str()]).await;
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_docker_task_stops_and_a_missing_image_fails_clearly() {
    let image = blocking(test_image).await;
    let sleeper = task_id("docker-killed");
    let missing = task_id("docker-missing-image");
    let _cleanup = RemoveOnDrop(vec![sleeper.clone(), missing.clone()]);
    let cluster = Cluster::start_async(CAIRN).await;
    let (scheduler, mut events) = Scheduler::subscribe(&cluster.master_addr).await;
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let agent_id = offer["agent_id"].clone();
    let tasks = vec![
        docker_task(&sleeper, &agent_id, &image, "sleep 600"),
        docker_task(&missing, &agent_id, "cairn-no-such-image:1", "true"),
    ];
    let (code, body) = scheduler.call(accept(&offer, tasks)).await;
    assert_eq!(code, 202, "{body}");

    let mut last: HashMap<String, Value> = HashMap::new();
    let mut kill_sent = false;
    while ![&sleeper, &missing]
        .iter()
        .all(|id| last.get(id.as_str()).is_some_and(is_terminal))
    {
        let status = next_status(&scheduler, &mut events).await;
        let id = status["task_id"]["value"].as_str().unwrap_or_default();
        if id == sleeper && status["state"] == "TASK_RUNNING" && !kill_sent {
            // The engine keeps no more of its output than the task's disk allows.
            let container = containers_of_async(&sleeper).await.remove(0);
            let format = "{{json .HostConfig.LogConfig}}";
            let inspect = blocking(move || docker(&["inspect", "-f", format, &container])).await;
            let log: Value = serde_json::from_slice(&inspect.stdout).unwrap();
            assert_eq!(log["Type"], "json-file", "{log}");
            assert_eq!(log["Config"]["max-file"], "2", "{log}");
            let max_size = log["Config"]["max-size"].as_str().unwrap_or_default();
            assert!(max_size.parse::<u64>().is_ok_and(|b| b >= 1 << 20), "{log}");
            kill_sent = true;
            let kill = json!({"type": "KILL",
                "kill": {"task_id": {"value": sleeper}, "agent_id": agent_id}});
            assert_eq!(scheduler.call(kill).await.0, 202);
        }
        last.insert(id.to_owned(), status);
    }
    let killed = &last[&sleeper];
    assert!(kill_sent, "the sleeping task never ran: {killed}");
    assert_eq!(killed["state"], "TASK_KILLED", "{killed}");
    let failed = &last[&missing];
    assert_eq!(failed["state"], "TASK_FAILED", "{failed}");
    assert_eq!(
        failed["reason"], "REASON_CONTAINER_LAUNCH_FAILED",
        "{failed}"
    );
    assert!(
        failed["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not present on this agent"),
        "{failed}"
    );
    assert_removed(&[sleeper.as_str(), missing.as_str()]).await;
    cluster.assert_no_panics();
}

/// A BRIDGE task holding port `owned` that maps `host_port` to its 8080.
fn bridged_task(
    id: &str,
    agent_id: &Value,
    image: &str,
    owned: u64,
    host_port: u64,
    command: &str,
) -> Value {
    let mut task = docker_task(id, agent_id, image, command);
    task["resources"].as_array_mut().unwrap().push(json!({
        "name": "ports", "type": "RANGES",
        "ranges": {"range": [{"begin": owned, "end": owned}]}}));
    task["container"]["docker"]["network"] = json!("BRIDGE");
    task["container"]["docker"]["port_mappings"] =
        json!([{"host_port": host_port, "container_port": 8080}]);
    task
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_networking_publishes_only_the_tasks_own_ports() {
    let image = blocking(test_image).await;
    let served = task_id("docker-bridge");
    let refused = task_id("docker-bridge-refused");
    let _cleanup = RemoveOnDrop(vec![served.clone(), refused.clone()]);
    let cluster = Cluster::start_async(CAIRN).await;
    let (scheduler, mut events) = Scheduler::subscribe(&cluster.master_addr).await;
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let agent_id = offer["agent_id"].clone();
    let serve = "while true; do echo through-the-bridge | nc -l -p 8080; done";
    let tasks = vec![
        bridged_task(&served, &agent_id, &image, 31057, 31057, serve),
        // Its mapping names a host port that is not among its resources.
        bridged_task(&refused, &agent_id, &image, 31059, 31058, serve),
    ];
    assert_eq!(scheduler.call(accept(&offer, tasks)).await.0, 202);
    let mut last: HashMap<String, Value> = HashMap::new();
    while !(last
        .get(&served)
        .is_some_and(|s| s["state"] == "TASK_RUNNING")
        && last.get(&refused).is_some_and(is_terminal))
    {
        let status = next_status(&scheduler, &mut events).await;
        let id = status["task_id"]["value"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(id != served || !is_terminal(&status), "{status}");
        last.insert(id, status);
    }
    let failed = &last[&refused];
    assert_eq!(failed["state"], "TASK_FAILED", "{failed}");
    assert_eq!(
        failed["reason"], "REASON_CONTAINER_LAUNCH_FAILED",
        "{failed}"
    );
    assert!(
        failed["message"]
            .as_str()
            .unwrap_or_default()
            .contains("31058"),
        "{failed}"
    );
    // The host port reaches the container's 8080 through the engine's bridge.
    let greeting = blocking(|| {
        wait_for("the container's port on the host", || {
            use std::io::Read as _;
            let mut conn = std::net::TcpStream::connect("127.0.0.1:31057").ok()?;
            conn.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .ok()?;
            let mut got = String::new();
            conn.read_to_string(&mut got).ok()?;
            got.contains("through-the-bridge").then_some(got)
        })
    })
    .await;
    assert_eq!(greeting.trim(), "through-the-bridge");
    let kill =
        json!({"type": "KILL", "kill": {"task_id": {"value": served}, "agent_id": agent_id}});
    assert_eq!(scheduler.call(kill).await.0, 202);
    loop {
        let status = next_status(&scheduler, &mut events).await;
        if status["task_id"]["value"] == served.as_str() && is_terminal(&status) {
            assert_eq!(status["state"], "TASK_KILLED", "{status}");
            break;
        }
    }
    assert_removed(&[served.as_str(), refused.as_str()]).await;
}

#[test]
fn cairn_run_runs_a_docker_command() {
    let image = test_image();
    let cluster = Cluster::start(CAIRN);
    let out = cluster.run_with(
        std::path::Path::new("echo docker from cairn run; exit 4"),
        &["--docker-image", &image, "--name", "docker-cairn-run"],
        &[],
    );
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("docker from cairn run"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_task_runs_as_its_user_and_cannot_raise_its_privileges() {
    let image = blocking(test_image).await;
    let id = task_id("docker-as-nobody");
    let _cleanup = RemoveOnDrop(vec![id.clone()]);
    let cluster =
        Cluster::start_with_flags_async(CAIRN, &[], &["--allow-root-tasks", "false"]).await;
    let (scheduler, mut events) = Scheduler::subscribe_with(
        &cluster.master_addr,
        serde_json::json!({"user": "nobody", "name": "docker-tenant"}),
    )
    .await;
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let show = "id -u; id -g; grep -E '^(NoNewPrivs|CapEff)' /proc/self/status";
    let task = docker_task(&id, &offer["agent_id"], &image, show);
    let (code, body) = scheduler.call(accept(&offer, vec![task])).await;
    assert_eq!(code, 202, "{body}");
    let last = loop {
        let status = next_status(&scheduler, &mut events).await;
        if is_terminal(&status) {
            break status;
        }
    };
    assert_eq!(last["state"], "TASK_FINISHED", "{last}");
    let stdout = find_files(&cluster.work_dir(), "stdout")
        .into_iter()
        .find(|p| in_sandbox_of(p, &id))
        .unwrap_or_else(|| panic!("no stdout of {id}"));
    let output = std::fs::read_to_string(&stdout).unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines[0], nobody.uid.to_string(), "{output}");
    assert_eq!(lines[1], nobody.gid.to_string(), "{output}");
    assert!(output.contains("NoNewPrivs:\t1"), "{output}");
    // Not root: no effective capabilities at all.
    assert!(output.contains("CapEff:\t0000000000000000"), "{output}");
    assert_removed(&[id.as_str()]).await;
    cluster.assert_no_panics();
}

/// HOST networking (Mesos' default) lets a container bind any port of the host: it
/// is given only to a task holding `ports` resources. Mesos' default network (none
/// named) counts as HOST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_networking_is_given_only_to_a_task_holding_ports() {
    let image = blocking(test_image).await;
    let (bare, unnamed, ported) = (
        task_id("docker-host-bare"),
        task_id("docker-host-unnamed"),
        task_id("docker-host-ported"),
    );
    let _cleanup = RemoveOnDrop(vec![bare.clone(), unnamed.clone(), ported.clone()]);
    let cluster = Cluster::start_async(CAIRN).await;
    let (scheduler, mut events) = Scheduler::subscribe(&cluster.master_addr).await;
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let agent_id = offer["agent_id"].clone();
    let mut host = docker_task(&bare, &agent_id, &image, "true");
    host["container"]["docker"]["network"] = json!("HOST");
    let mut default = docker_task(&unnamed, &agent_id, &image, "true");
    default["container"]["docker"]
        .as_object_mut()
        .unwrap()
        .remove("network");
    let mut with_ports = docker_task(&ported, &agent_id, &image, "true");
    with_ports["container"]["docker"]["network"] = json!("HOST");
    with_ports["resources"].as_array_mut().unwrap().push(json!({
        "name": "ports", "type": "RANGES",
        "ranges": {"range": [{"begin": 31005, "end": 31005}]}}));
    let (code, body) = scheduler
        .call(accept(&offer, vec![host, default, with_ports]))
        .await;
    assert_eq!(code, 202, "{body}");
    let mut ended = std::collections::HashMap::new();
    while ended.len() < 3 {
        let status = next_status(&scheduler, &mut events).await;
        if is_terminal(&status) {
            let id = status["task_id"]["value"].as_str().unwrap().to_owned();
            ended.insert(id, status);
        }
    }
    for id in [&bare, &unnamed] {
        let status = &ended[id.as_str()];
        assert_eq!(status["state"], "TASK_FAILED", "{status}");
        assert_eq!(
            status["reason"], "REASON_CONTAINER_LAUNCH_FAILED",
            "{status}"
        );
        let message = status["message"].as_str().unwrap();
        assert!(message.contains("HOST networking"), "{message}");
        assert!(message.contains("ports"), "{message}");
    }
    let status = &ended[ported.as_str()];
    assert_eq!(status["state"], "TASK_FINISHED", "{status}");
    cluster.assert_no_panics();
}

/// A HOST task listening on a port it does not hold is killed (Mesos' `network/ports`
/// isolator), as a native task is (`tests/e2e/ports.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_task_listening_on_a_port_it_does_not_hold_is_killed() {
    let image = blocking(test_image).await;
    let id = task_id("docker-squatter");
    let _cleanup = RemoveOnDrop(vec![id.clone()]);
    let cluster =
        Cluster::start_with_flags_async(CAIRN, &[], &["--container-ports-watch-interval", "200ms"])
            .await;
    let (scheduler, mut events) = Scheduler::subscribe(&cluster.master_addr).await;
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let mut task = docker_task(&id, &offer["agent_id"], &image, "exec nc -l -p 31007");
    task["container"]["docker"]["network"] = json!("HOST");
    task["resources"].as_array_mut().unwrap().push(json!({
        "name": "ports", "type": "RANGES",
        "ranges": {"range": [{"begin": 31005, "end": 31005}]}}));
    let (code, body) = scheduler.call(accept(&offer, vec![task])).await;
    assert_eq!(code, 202, "{body}");
    let status = loop {
        let status = next_status(&scheduler, &mut events).await;
        if is_terminal(&status) {
            break status;
        }
    };
    assert_eq!(status["state"], "TASK_FAILED", "{status}");
    assert_eq!(status["reason"], "REASON_CONTAINER_LIMITATION", "{status}");
    assert_eq!(
        status["message"],
        "Task listened on port 31007 outside its ports resources (ports:[31005-31005])",
        "{status}"
    );
    assert_removed(&[id.as_str()]).await;
    cluster.assert_no_panics();
}
