//! Mesos' fetcher cache: a `cache: true` URI is fetched once for every task that names
//! it, a wasm task's sandbox holds a link to the cached copy its guest can neither
//! follow nor write through, and the module is run again by digest.

use std::collections::HashMap;

use serde_json::{Value, json};

use cairn_test_support::framework::{Scheduler, accept};
use cairn_test_support::harness::{Cluster, find_files};

use crate::CAIRN;

/// Tries to open its own module (`m.wasm`, the cached file's link) for writing,
/// following links, and exits with the WASI errno it got. Should the open succeed, it
/// writes over the module's first bytes first (and exits 0): a write through the link
/// shows in the file it leads to.
const OPENS_ITSELF: &str = r#"(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "m.wasm")
  (func (export "_start") (local $errno i32)
    ;; fd 3 (the sandbox), follow links, "m.wasm", no oflags, rights fd_write (64)
    (local.set $errno
      (call $path_open (i32.const 3) (i32.const 1) (i32.const 16) (i32.const 6)
        (i32.const 0) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 64)))
    ;; Opened: write "m.wasm" (an iovec at 32) over the wasm header.
    (if (i32.eqz (local.get $errno))
      (then
        (i32.store (i32.const 32) (i32.const 16))
        (i32.store (i32.const 36) (i32.const 6))
        (drop (call $fd_write (i32.load (i32.const 64)) (i32.const 32) (i32.const 1)
          (i32.const 40)))))
    (call $exit (local.get $errno))))"#;

fn cached_task(id: &str, agent_id: &Value, module: &std::path::Path) -> Value {
    json!({
        "name": id, "task_id": {"value": id}, "agent_id": agent_id,
        "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}},
                      {"name": "mem", "type": "SCALAR", "scalar": {"value": 16}}],
        "command": {"uris": [{"value": format!("file://{}", module.display()), "cache": true}],
                    "value": "m.wasm", "shell": false},
        "container": {"type": "WASM"}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_module_is_fetched_once_and_its_guests_cannot_write_through_the_link() {
    let cluster = Cluster::start_async(CAIRN).await;
    let module = cluster.module("m.wasm", OPENS_ITSELF);
    let original = std::fs::read(&module).unwrap();
    let (scheduler, mut events) = Scheduler::subscribe(&cluster.master_addr).await;
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let ids = ["first", "second", "third"];
    let tasks = ids
        .iter()
        .map(|id| cached_task(id, &offer["agent_id"], &module))
        .collect();
    let (code, body) = scheduler.call(accept(&offer, tasks)).await;
    assert_eq!(code, 202, "{body}");
    let mut terminal: HashMap<String, (String, String)> = HashMap::new();
    while terminal.len() < ids.len() {
        let event = events.next().await;
        if event["type"] != "UPDATE" {
            continue;
        }
        let status = &event["update"]["status"];
        scheduler.acknowledge(status).await;
        let state = status["state"].as_str().unwrap_or_default();
        if !matches!(state, "TASK_STARTING" | "TASK_RUNNING") {
            terminal.insert(
                status["task_id"]["value"].as_str().unwrap().into(),
                (
                    state.into(),
                    status["message"].as_str().unwrap_or("").into(),
                ),
            );
        }
    }
    for id in ids {
        let (state, message) = &terminal[id];
        // The guest ran (the module was found), and its open was refused: a
        // non-zero errno is its exit status.
        assert_eq!(state, "TASK_FAILED", "{id}: {message}");
        assert!(
            message.starts_with("Command exited with status ") && !message.ends_with(" 0"),
            "{id}: {message}"
        );
    }
    // One download for all three; neither the source nor the cached copy the links
    // lead to was written through.
    let cached = std::fs::read_dir(cluster.work_dir().join("cache").join("fetch"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .count();
    assert_eq!(cached, 1, "the fetcher cache holds one copy");
    assert_eq!(std::fs::read(&module).unwrap(), original);
    let links = find_files(&cluster.work_dir().join("frameworks"), "m.wasm");
    assert_eq!(links.len(), ids.len());
    for link in links {
        assert!(
            link.symlink_metadata().unwrap().is_symlink(),
            "{}",
            link.display()
        );
        assert_eq!(std::fs::read(&link).unwrap(), original);
    }
    cluster.assert_no_panics();
}
