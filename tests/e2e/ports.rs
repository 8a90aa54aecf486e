//! The ports a native task may listen on (Mesos' `network/ports` isolator): in the
//! host's network namespace, only those its `ports` resources hold.

use serde_json::{Value, json};

use cairn_test_support::framework::{Events, Scheduler, accept};
use cairn_test_support::harness::{Cluster, blocking, find_files, in_sandbox_of, wait_for};

use crate::CAIRN;

/// A native task that listens on `port` (0: any the kernel picks), writes the port
/// it got to `port`, and waits.
fn listener(id: &str, agent_id: &Value, port: u16, ports: Option<u16>) -> Value {
    let script = format!(
        "import socket, time\n\
         s = socket.socket()\n\
         s.bind(('127.0.0.1', {port}))\n\
         s.listen()\n\
         open('port.tmp', 'w').write(str(s.getsockname()[1]))\n\
         __import__('os').rename('port.tmp', 'port')\n\
         time.sleep(120)\n"
    );
    let mut resources = vec![
        json!({"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}}),
        json!({"name": "mem", "type": "SCALAR", "scalar": {"value": 64}}),
    ];
    if let Some(p) = ports {
        resources.push(json!({"name": "ports", "type": "RANGES",
                              "ranges": {"range": [{"begin": p, "end": p}]}}));
    }
    json!({
        "name": id, "task_id": {"value": id}, "agent_id": agent_id,
        "resources": resources,
        "command": {"shell": false, "value": "python3", "arguments": ["python3", "-c", script]},
    })
}

/// The port `task` wrote to its sandbox once it listened.
async fn port_of(cluster: &Cluster, task: &'static str) -> u16 {
    let work_dir = cluster.work_dir();
    blocking(move || {
        wait_for(&format!("{task} to listen"), || {
            let file = find_files(&work_dir, "port")
                .into_iter()
                .find(|p| in_sandbox_of(p, task))?;
            std::fs::read_to_string(file).ok()?.trim().parse().ok()
        })
    })
    .await
}

async fn launch_on_next_offer(
    scheduler: &Scheduler,
    events: &mut Events,
    task: impl Fn(&Value) -> Value,
) {
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let (code, body) = scheduler
        .call(accept(&offer, vec![task(&offer["agent_id"])]))
        .await;
    assert_eq!(code, 202, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_listening_on_a_port_it_does_not_hold_is_killed_and_one_that_holds_it_runs_on() {
    let cluster =
        Cluster::start_with_flags_async(CAIRN, &[], &["--container-ports-watch-interval", "200ms"])
            .await;
    let (scheduler, mut events) = Scheduler::subscribe(&cluster.master_addr).await;
    launch_on_next_offer(&scheduler, &mut events, |agent| {
        listener("holder", agent, 31005, Some(31005))
    })
    .await;
    loop {
        let status = events.next_of("UPDATE").await["update"]["status"].clone();
        scheduler.acknowledge(&status).await;
        match status["state"].as_str() {
            Some("TASK_RUNNING") => break,
            Some("TASK_STARTING") => {}
            _ => panic!("the holder did not run: {status}"),
        }
    }
    assert_eq!(port_of(&cluster, "holder").await, 31005);
    // The holder listens: every scan from now on sees it.
    assert_eq!(scheduler.call(json!({"type": "REVIVE"})).await.0, 202);
    launch_on_next_offer(&scheduler, &mut events, |agent| {
        listener("squatter", agent, 0, None)
    })
    .await;
    let squatted = port_of(&cluster, "squatter").await;
    let status = loop {
        let status = events.next_of("UPDATE").await["update"]["status"].clone();
        scheduler.acknowledge(&status).await;
        if status["task_id"]["value"] == "holder" {
            assert_eq!(status["state"], "TASK_RUNNING", "{status}");
        } else if !matches!(
            status["state"].as_str(),
            Some("TASK_STARTING" | "TASK_RUNNING")
        ) {
            break status;
        }
    };
    assert_eq!(status["state"], "TASK_FAILED", "{status}");
    assert_eq!(status["reason"], "REASON_CONTAINER_LIMITATION", "{status}");
    assert_eq!(status["source"], "SOURCE_AGENT", "{status}");
    assert_eq!(
        status["message"],
        format!("Task listened on port {squatted} outside its ports resources (none)"),
        "{status}"
    );
    let limited = &status["limitation"]["resources"][0];
    assert_eq!(limited["name"], "ports", "{status}");
    assert_eq!(limited["ranges"]["range"][0]["begin"], squatted, "{status}");
    let state = scheduler.master_state(&cluster.master_addr).await;
    let holder = state["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "holder")
        .unwrap_or_else(|| panic!("the holder is gone: {state}"));
    assert_eq!(holder["state"], "TASK_RUNNING", "{state}");
    cluster.assert_no_panics();
}
