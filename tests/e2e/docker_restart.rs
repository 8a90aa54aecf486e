//! DOCKER tasks across an agent restart. The agent itself makes the Engine calls
//! (no executor process holds the Engine's root socket), so its containers outlive
//! it: the restarted agent re-attaches them, copies what they wrote meanwhile once,
//! and reports the real end of one that exited while it was down.

use std::path::{Path, PathBuf};

use cairn_test_support::docker_image::{docker, test_image};
use cairn_test_support::framework::{Scheduler, accept};
use cairn_test_support::harness::{Cluster, blocking, find_files, in_sandbox_of, text, wait_for};
use serde_json::Value;

use crate::CAIRN;
use crate::docker::{
    RemoveOnDrop, assert_removed, containers_of_async, docker_task, is_terminal, next_status,
    task_id,
};

/// The processes whose command line names `needle`.
fn processes_naming(needle: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}

fn sandbox_of(work_dir: &Path, id: &str) -> PathBuf {
    find_files(work_dir, "stdout")
        .into_iter()
        .find(|p| in_sandbox_of(p, id))
        .and_then(|p| p.parent().map(|d| d.to_owned()))
        .unwrap_or_else(|| panic!("no sandbox for {id}"))
}

/// Waits until the engine says `container` is in `state`.
async fn engine_says(container: &str, state: &'static str) {
    let container = container.to_owned();
    blocking(move || {
        wait_for(&format!("{container} to be {state}"), || {
            let out = docker(&["inspect", "-f", "{{.State.Status}}", container.as_str()]);
            (text(&out.stdout).trim() == state).then_some(())
        })
    })
    .await;
}

/// Waits until the engine's log of `container` holds `line`.
async fn engine_logged(container: &str, line: &'static str) {
    let container = container.to_owned();
    blocking(move || {
        wait_for(&format!("{line:?} in the log of {container}"), || {
            let out = docker(&["logs", container.as_str()]);
            text(&out.stdout).contains(line).then_some(())
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_tasks_outlive_an_agent_restart_with_their_output_and_exit_status() {
    let image = blocking(test_image).await;
    let (long, short) = (
        task_id("docker-restart-long"),
        task_id("docker-restart-short"),
    );
    let _cleanup = RemoveOnDrop(vec![long.clone(), short.clone()]);
    let mut cluster = Cluster::start_async(CAIRN).await;
    let (scheduler, mut events) = Scheduler::subscribe(&cluster.master_addr).await;
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    // Each waits for files the test drops into its sandbox (mounted at MESOS_SANDBOX).
    let gate = |file: &str| format!("while [ ! -f \"$MESOS_SANDBOX/{file}\" ]; do sleep 0.1; done");
    let long_cmd = format!(
        "echo before; {}; echo went on; {}; echo done",
        gate("go"),
        gate("end")
    );
    let short_cmd = format!("{}; echo ending; exit 3", gate("go"));
    let tasks = vec![
        docker_task(&long, &offer["agent_id"], &image, &long_cmd),
        docker_task(&short, &offer["agent_id"], &image, &short_cmd),
    ];
    assert_eq!(scheduler.call(accept(&offer, tasks)).await.0, 202);
    let mut running = 0;
    while running < 2 {
        let status = next_status(&scheduler, &mut events).await;
        assert!(!is_terminal(&status), "{status}");
        running += usize::from(status["state"] == "TASK_RUNNING");
    }
    // The agent hosts the Docker executor: no executor process holds the Engine.
    let framework_id = scheduler.framework_id.clone();
    let executors = processes_naming(&format!("cairn-docker-executor-{framework_id}"));
    assert!(executors.is_empty(), "{executors:?}");
    let (long_box, short_box) = (
        sandbox_of(&cluster.work_dir(), &long),
        sandbox_of(&cluster.work_dir(), &short),
    );
    let long_stdout = long_box.join("stdout");
    blocking(move || {
        wait_for("the first line copied", || {
            let out = std::fs::read_to_string(&long_stdout).unwrap_or_default();
            (out == "before\n").then_some(())
        })
    })
    .await;
    let (long_container, short_container) = (
        containers_of_async(&long).await.remove(0),
        containers_of_async(&short).await.remove(0),
    );

    // While the agent is away, one writes a line and the other exits.
    cluster.agent.kill();
    std::fs::write(long_box.join("go"), b"").unwrap();
    std::fs::write(short_box.join("go"), b"").unwrap();
    engine_logged(&long_container, "went on").await;
    engine_says(&short_container, "exited").await;
    let agent = cluster.restart_agent(&[]).await;
    agent.logged("registered with the master").await;
    cluster.agent = agent;

    let ended = next_status(&scheduler, &mut events).await;
    assert_eq!(ended["task_id"]["value"], short.as_str(), "{ended}");
    assert_eq!(ended["state"], "TASK_FAILED", "{ended}");
    assert_eq!(ended["message"], "Command exited with status 3", "{ended}");
    let short_out = std::fs::read_to_string(short_box.join("stdout")).unwrap();
    assert_eq!(short_out, "ending\n", "copied once, after the restart");
    assert_eq!(
        containers_of_async(&long).await,
        vec![long_container],
        "the same container goes on"
    );
    std::fs::write(long_box.join("end"), b"").unwrap();
    let last: Value = loop {
        let status = next_status(&scheduler, &mut events).await;
        if is_terminal(&status) {
            break status;
        }
    };
    assert_eq!(last["task_id"]["value"], long.as_str(), "{last}");
    assert_eq!(last["state"], "TASK_FINISHED", "{last}");
    let long_out = std::fs::read_to_string(long_box.join("stdout")).unwrap();
    assert_eq!(long_out, "before\nwent on\ndone\n", "each line once");
    assert_removed(&[long.as_str(), short.as_str()]).await;
    cluster.assert_no_panics();
}
