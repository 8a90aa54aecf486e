//! Fault injection on a real agent: its checkpoint's disk fills up, its checkpoint is
//! corrupted, a connection on its executor socket is cut mid-message, its machine
//! "reboots". Each gives a clear error, and no task is silently forgotten.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use cairn_test_support::framework::{Scheduler, accept, wasm_task};
use cairn_test_support::harness::{
    Cluster, Daemon, blocking, find_files, get_json, guest, start_agent, start_master, text,
    wait_for,
};

use crate::CAIRN;

/// Enough tasks that their records cannot all fit in the slack of the log's last page.
const TASKS: usize = 20;

/// A small tmpfs mounted over the agent's `meta/` directory, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(dir)
            .status()
            .expect("running mount");
        assert!(status.success(), "mounting a tmpfs needs root");
        SmallDisk(dir.to_owned())
    }

    /// Fills the disk; returns the filler file.
    fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Waits, off the runtime's workers, for a daemon to exit; returns how it did.
async fn exit_of(mut daemon: Daemon) -> std::process::ExitStatus {
    blocking(move || wait_for("the agent to exit", || daemon.exit_status())).await
}

fn health(addr: &str) -> (u16, String) {
    let url = format!("http://{addr}/health");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let r = reqwest::get(&url).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_checkpoint_disk_holds_updates_until_it_has_room_again() {
    let dir = tempfile::tempdir().unwrap();
    let meta = dir.path().join("agent/meta");
    let disk = blocking(move || SmallDisk::mount(&meta)).await;
    let cluster = blocking(move || {
        let (master, master_addr) = start_master(CAIRN, dir.path(), "127.0.0.1:0");
        let agent = start_agent(CAIRN, dir.path(), &master_addr);
        let agent_addr = agent.wait_for_address("http");
        agent.wait_for_log("registered with the master");
        Cluster {
            cairn: CAIRN,
            dir,
            master,
            master_addr,
            agent,
            agent_addr,
            cgroups_root: None,
        }
    })
    .await;
    let (scheduler, mut events) =
        Scheduler::subscribe_with(&cluster.master_addr, super::recovery::framework_info(None))
            .await;
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();

    // With the disk full, a batch of tasks comes in: the agent checkpoints what fits
    // in the log's last page, then can write no more. It says why, and holds the
    // rest (launches and updates alike) rather than act on what it could forget.
    let filler = disk.fill();
    let tasks: Vec<Value> = (0..TASKS)
        .map(|i| wasm_task(&format!("t{i}"), &offer["agent_id"], 0.05))
        .collect();
    assert_eq!(scheduler.call(accept(&offer, tasks)).await.0, 202);
    let addr = cluster.agent_addr.clone();
    let (code, body) = blocking(move || {
        wait_for("the agent to report a problem", || {
            let h = health(&addr);
            (h.0 != 200).then_some(h)
        })
    })
    .await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("No space left on device"), "{body}");
    cluster.agent.logged("cannot write the checkpoint").await;
    // The master lost none of them: each is live (held), or finished if it fit.
    let state = scheduler.master_state(&cluster.master_addr).await;
    let (live, completed) = (
        state["tasks"].as_array().unwrap(),
        state["completed_tasks"].as_array().unwrap(),
    );
    assert_eq!(live.len() + completed.len(), TASKS, "{state}");
    assert!(!live.is_empty(), "held tasks are still live: {state}");
    for task in completed {
        assert_eq!(task["state"], "TASK_FINISHED", "{state}");
    }

    // Room again: everything held goes out, and every task finishes.
    std::fs::remove_file(filler).unwrap();
    let mut finished = std::collections::BTreeSet::new();
    while finished.len() < TASKS {
        let status = super::recovery::next_update(&scheduler, &mut events).await;
        let state = status["state"].as_str().unwrap();
        assert!(
            ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"].contains(&state),
            "{status}"
        );
        if state == "TASK_FINISHED" {
            finished.insert(status["task_id"]["value"].as_str().unwrap().to_owned());
        }
    }
    let addr = cluster.agent_addr.clone();
    assert_eq!(blocking(move || health(&addr)).await.0, 200);
    cluster.assert_no_panics();
    drop(cluster);
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_checkpoint_stops_the_agent_with_a_clear_error() {
    let mut cluster = Cluster::start_async(CAIRN).await;
    let (scheduler, mut events) =
        Scheduler::subscribe_with(&cluster.master_addr, super::recovery::framework_info(None))
            .await;
    super::recovery::launch_gate(&scheduler, &mut events, "kept").await;
    cluster.agent.kill();
    let log = cluster.work_dir().join("meta/checkpoint.log");
    let mut bytes = std::fs::read(&log).unwrap();
    assert!(bytes.len() > 64, "a checkpoint with records");
    bytes[20] ^= 0xff; // inside the first record
    std::fs::write(&log, &bytes).unwrap();

    let agent: Daemon = cluster.restart_agent(&[]).await;
    let line = agent.logged("is corrupt at byte").await;
    assert!(line.contains("checkpoint.log"), "{line}");
    let status = exit_of(agent).await;
    assert!(!status.success(), "the agent went on: {status}");
    // The evidence is left in place, and the master still knows the task.
    assert_eq!(std::fs::read(&log).unwrap(), bytes);
    let state = scheduler.master_state(&cluster.master_addr).await;
    assert_eq!(state["tasks"][0]["id"], "kept", "{state}");
    assert!(!cluster.master.log_text().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_mid_message_on_the_executor_socket_harms_nothing() {
    let cluster = Cluster::start_async(CAIRN).await;
    let socket = cluster.work_dir().join("agent.sock");
    for cut in [2usize, 7, 40] {
        let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        // A frame announcing 200 bytes, cut after `cut`.
        let mut frame = 200u32.to_be_bytes().to_vec();
        frame.resize(cut, 0x0a);
        stream.write_all(&frame).unwrap();
        drop(stream);
    }
    cluster
        .agent
        .logged("bad first message on the executor socket")
        .await;
    let out = cluster.run_async(&guest("hello"), &["still", "fine"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reboot_the_agent_registers_anew_and_old_executors_are_shut_down() {
    let mut cluster = Cluster::start_async(CAIRN).await;
    let (scheduler, mut events) =
        Scheduler::subscribe_with(&cluster.master_addr, super::recovery::framework_info(None))
            .await;
    let (_, old_id) = super::recovery::launch_gate(&scheduler, &mut events, "before-reboot").await;
    cluster.agent.kill();
    // A different boot id is what a reboot looks like to the agent.
    std::fs::write(cluster.work_dir().join("meta/boot_id"), "another-boot\n").unwrap();
    let agent = cluster.restart_agent(&[]).await;
    agent.logged("starting as a new agent").await;
    let addr = agent.logged_address("http").await;
    cluster.agent = agent;
    let state: Value = blocking(move || {
        wait_for("the agent to register", || {
            let s = get_json(&addr, "/state");
            s["id"].is_string().then_some(s)
        })
    })
    .await;
    assert_ne!(state["id"], old_id["value"], "a new agent id: {state}");
    // The old executor found nobody who knew it, and was told to shut down.
    let work_dir = cluster.work_dir();
    let log = find_files(&work_dir, "executor.log").pop().unwrap();
    blocking(move || {
        wait_for("the old executor to be shut down", || {
            std::fs::read_to_string(&log)
                .unwrap()
                .contains("shutdown requested")
                .then_some(())
        })
    })
    .await;
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_may_add_resources_but_not_take_any_away() {
    let mut cluster = Cluster::start_async(CAIRN).await;
    let addr = cluster.agent_addr.clone();
    let id = blocking(move || get_json(&addr, "/state")["id"].clone()).await;
    cluster.agent.kill();
    let fewer = "cpus:1;mem:1024;disk:65536;ports:[31000-31100]";
    let refused = cluster.restart_agent(&["--resources", fewer]).await;
    let line = refused.logged("resources changed from").await;
    assert!(
        line.contains("may add resources but not remove any"),
        "{line}"
    );
    let status = exit_of(refused).await;
    assert!(!status.success(), "the agent went on: {status}");

    let more = "cpus:4;mem:2048;disk:65536;ports:[31000-31100]";
    let agent = cluster.restart_agent(&["--resources", more]).await;
    agent.logged("registered with the master").await;
    let addr = agent.logged_address("http").await;
    cluster.agent = agent;
    assert_eq!(
        blocking(move || get_json(&addr, "/state")["id"].clone()).await,
        id
    );
    cluster.assert_no_panics();
}
