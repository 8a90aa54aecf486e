//! Mesos' fetcher. Its cache: a `cache: true` URI is fetched once for every task that
//! names it, a wasm task's sandbox holds a link to the cached copy its guest can
//! neither follow nor write through, and the module is run again by digest. Its
//! boundary: a `file://` URI is read as the task's user.

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
    guests_cannot_write_through(&cluster, "root").await;
}

/// For a task of another user than the agent's, the link is a hard link to the
/// agent's read-only entry (its executor, running as that user, could not read
/// through a symlink into the agent's 0700 cache): the guest cannot write it either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_module_is_a_read_only_view_for_a_tenant_of_its_own_user() {
    let flags = ["--allow-root-tasks", "false"];
    let cluster = Cluster::start_with_flags_async(CAIRN, &[], &flags).await;
    guests_cannot_write_through(&cluster, "nobody").await;
    let entry = std::fs::read_dir(cluster.work_dir().join("cache").join("fetch"))
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .unwrap();
    let meta = entry.metadata().unwrap();
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o444));
}

/// Three wasm tasks of a framework of `user` run one cached module that tries to
/// write over itself: each fails to, the cache holds one copy, unchanged.
async fn guests_cannot_write_through(cluster: &Cluster, user: &str) {
    let module = cluster.module("m.wasm", OPENS_ITSELF);
    let original = std::fs::read(&module).unwrap();
    let framework = json!({"user": user, "name": "cached"});
    let (scheduler, mut events) = Scheduler::subscribe_with(&cluster.master_addr, framework).await;
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
        // A symlink for the agent's own user; a hard link to the entry otherwise.
        let meta = link.symlink_metadata().unwrap();
        let shared = meta.is_symlink() || std::os::unix::fs::MetadataExt::nlink(&meta) > 1;
        assert!(shared, "{} is a copy", link.display());
        assert_eq!(meta.is_symlink(), user == "root", "{}", link.display());
        assert_eq!(std::fs::read(&link).unwrap(), original);
    }
    cluster.assert_no_panics();
}

/// A wasm task run as `user`, fetching `uri` as `name`, then running it.
fn task_as(id: &str, agent_id: &Value, user: &str, uri: &str, name: &str) -> Value {
    json!({
        "name": id, "task_id": {"value": id}, "agent_id": agent_id,
        "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}},
                      {"name": "mem", "type": "SCALAR", "scalar": {"value": 16}}],
        "command": {"uris": [{"value": uri, "output_file": name}],
                    "value": name, "shell": false, "user": user},
        "container": {"type": "WASM"}
    })
}

/// Mesos' fetcher runs as the task's user: a `file://` URI brings into the sandbox
/// only what that user may read. Tasks running as `nobody` name a root-only file
/// (mode 0600 in a directory anyone may enter) and `/etc/shadow`: both fail before
/// launch with the reason, and nothing lands in their sandboxes. A module `nobody`
/// may read is fetched, owned by `nobody`, and runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_uri_is_read_as_the_task_user_and_a_root_only_file_fails_the_task() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    assert!(
        nix::unistd::geteuid().is_root(),
        "the agent must be root to run a task as nobody"
    );
    let cluster = Cluster::start_async(CAIRN).await;
    let files = tempfile::tempdir().unwrap();
    let mode = |path: &std::path::Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    mode(files.path(), 0o755);
    let (secret, public) = (files.path().join("secret"), files.path().join("m.wasm"));
    std::fs::write(&secret, b"root only").unwrap();
    mode(&secret, 0o600);
    let module = wat::parse_str(r#"(module (func (export "_start")))"#).unwrap();
    std::fs::write(&public, module).unwrap();
    mode(&public, 0o644);
    let shadow = std::path::Path::new("/etc/shadow");
    assert!(shadow.exists(), "this test reads /etc/shadow's refusal");

    let (scheduler, mut events) = Scheduler::subscribe(&cluster.master_addr).await;
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let agent = &offer["agent_id"];
    let file = |p: &std::path::Path| format!("file://{}", p.display());
    let tasks = vec![
        task_as("secret", agent, "nobody", &file(&secret), "secret.wasm"),
        task_as("shadow", agent, "nobody", &file(shadow), "shadow.wasm"),
        task_as("public", agent, "nobody", &file(&public), "public.wasm"),
    ];
    let (code, body) = scheduler.call(accept(&offer, tasks)).await;
    assert_eq!(code, 202, "{body}");
    let mut terminal: HashMap<String, Value> = HashMap::new();
    while terminal.len() < 3 {
        let event = events.next().await;
        if event["type"] != "UPDATE" {
            continue;
        }
        let status = event["update"]["status"].clone();
        scheduler.acknowledge(&status).await;
        let state = status["state"].as_str().unwrap_or_default();
        if !matches!(state, "TASK_STARTING" | "TASK_RUNNING") {
            terminal.insert(status["task_id"]["value"].as_str().unwrap().into(), status);
        }
    }
    for (id, path) in [("secret", secret.as_path()), ("shadow", shadow)] {
        let status = &terminal[id];
        assert_eq!(status["state"], "TASK_FAILED", "{status}");
        assert_eq!(
            status["reason"], "REASON_CONTAINER_LAUNCH_FAILED",
            "{status}"
        );
        assert_eq!(
            status["message"].as_str().unwrap_or_default(),
            format!(
                "cannot fetch {}: permission denied reading {} as user nobody",
                file(path),
                path.display()
            ),
            "{status}"
        );
        let landed = find_files(
            &cluster.work_dir().join("frameworks"),
            &format!("{id}.wasm"),
        );
        assert_eq!(landed, Vec::<std::path::PathBuf>::new(), "{id}");
    }
    assert_eq!(
        terminal["public"]["state"], "TASK_FINISHED",
        "{}",
        terminal["public"]
    );
    let fetched = find_files(&cluster.work_dir().join("frameworks"), "public.wasm");
    assert_eq!(fetched.len(), 1, "{fetched:?}");
    let owner = std::fs::metadata(&fetched[0]).unwrap().uid();
    assert_eq!(
        owner,
        nix::unistd::User::from_name("nobody")
            .unwrap()
            .unwrap()
            .uid
            .as_raw()
    );
    cluster.assert_no_panics();
}

/// Serves, on `127.0.0.1`, an endless body at `/endless` and a small wasm module at
/// `/m.wasm`, until the test ends.
async fn endless_server() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let module = wat::parse_str(r#"(module (func (export "_start")))"#).unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let module = module.clone();
            tokio::spawn(async move {
                let mut request = vec![0; 4096];
                let n = stream.read(&mut request).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&request[..n]).into_owned();
                if request.starts_with("GET /m.wasm") {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                        module.len()
                    );
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(&module).await;
                    return;
                }
                // No length, and no end: only the fetcher's cap stops it.
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
                let chunk = vec![b'x'; 64 << 10];
                while stream.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    addr
}

/// An HTTP server on loopback, admitted by `--fetcher-allowed-networks`: an endless
/// body stops at `--fetcher-max-size` and fails its task with the reason, leaving
/// nothing in the sandbox; the same server under a loopback address not admitted is
/// refused before any connection; and the agent serves the next task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_http_body_stops_at_the_cap_and_a_refused_address_is_never_reached() {
    let server = endless_server().await;
    let cluster = Cluster::start_with_flags_async(
        CAIRN,
        &[],
        &[
            "--fetcher-allowed-networks",
            "127.0.0.1/32",
            "--fetcher-max-size",
            "1048576",
        ],
    )
    .await;
    let (scheduler, mut events) = Scheduler::subscribe(&cluster.master_addr).await;
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let agent = &offer["agent_id"];
    let endless = format!("http://{server}/endless");
    let refused = format!("http://127.0.0.2:{}/m.wasm", server.port());
    let good = format!("http://{server}/m.wasm");
    let tasks = vec![
        task_as("endless", agent, "nobody", &endless, "endless.wasm"),
        task_as("refused", agent, "nobody", &refused, "refused.wasm"),
        task_as("served", agent, "nobody", &good, "served.wasm"),
    ];
    let (code, body) = scheduler.call(accept(&offer, tasks)).await;
    assert_eq!(code, 202, "{body}");
    let mut terminal: HashMap<String, Value> = HashMap::new();
    while terminal.len() < 3 {
        let status = events.next_of("UPDATE").await["update"]["status"].clone();
        scheduler.acknowledge(&status).await;
        let state = status["state"].as_str().unwrap_or_default();
        if !matches!(state, "TASK_STARTING" | "TASK_RUNNING") {
            terminal.insert(status["task_id"]["value"].as_str().unwrap().into(), status);
        }
    }
    let message = |id: &str| {
        terminal[id]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(
        terminal["endless"]["state"], "TASK_FAILED",
        "{}",
        terminal["endless"]
    );
    assert_eq!(
        message("endless"),
        format!(
            "cannot fetch {endless}: the body is larger than the fetcher's limit of 1048576 bytes (--fetcher-max-size)"
        )
    );
    assert_eq!(
        terminal["refused"]["state"], "TASK_FAILED",
        "{}",
        terminal["refused"]
    );
    assert!(
        message("refused").contains(
            "127.0.0.2 is a loopback address the fetcher refuses (--fetcher-allowed-networks admits it)"
        ),
        "{}",
        message("refused")
    );
    for name in ["endless.wasm", "refused.wasm"] {
        let landed = find_files(&cluster.work_dir().join("frameworks"), name);
        assert_eq!(landed, Vec::<std::path::PathBuf>::new(), "{name}");
    }
    assert_eq!(
        terminal["served"]["state"], "TASK_FINISHED",
        "{}",
        terminal["served"]
    );
    cluster.assert_no_panics();
}
