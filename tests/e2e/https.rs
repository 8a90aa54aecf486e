//! The fetcher over TLS, through the Mesos API: a wasm task fetches its module from an
//! https mirror on loopback whose CA the agent trusts by `--fetcher-ca-file`, and runs;
//! a mirror whose certificate no trusted root signed fails its task with the reason,
//! and nothing of it lands in the sandbox.

use std::collections::HashMap;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use cairn_test_support::framework::{Scheduler, accept};
use cairn_test_support::harness::{Cluster, find_files};
use cairn_test_support::tls::TestCa;

use crate::CAIRN;

/// Serves a wasm module that exits 0 at any path over TLS on `127.0.0.1`, with a
/// certificate `ca` signed; returns its address.
async fn mirror(ca: &TestCa) -> std::net::SocketAddr {
    let acceptor = ca.acceptor("127.0.0.1");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let module = wat::parse_str(r#"(module (func (export "_start")))"#).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, module) = (acceptor.clone(), module.clone());
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake.
                let Ok(mut stream) = acceptor.accept(stream).await else {
                    return;
                };
                let mut request = vec![0; 4096];
                if stream.read(&mut request).await.unwrap_or(0) == 0 {
                    return;
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    module.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&module).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// A wasm task fetching `uri` as `name`, then running it.
fn task(id: &str, agent_id: &Value, uri: &str, name: &str) -> Value {
    json!({
        "name": id, "task_id": {"value": id}, "agent_id": agent_id,
        "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}},
                      {"name": "mem", "type": "SCALAR", "scalar": {"value": 16}}],
        "command": {"uris": [{"value": uri, "output_file": name}],
                    "value": name, "shell": false, "user": "nobody"},
        "container": {"type": "WASM"}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_from_an_https_mirror_the_ca_file_trusts_runs_and_a_stranger_s_fails() {
    let dir = tempfile::tempdir().unwrap();
    let trusted_pem = dir.path().join("trusted.pem");
    let trusted_ca = TestCa::new("trusted");
    std::fs::write(&trusted_pem, trusted_ca.pem()).unwrap();
    let trusted = mirror(&trusted_ca).await;
    let stranger = mirror(&TestCa::new("stranger")).await;
    let cluster = Cluster::start_with_flags_async(
        CAIRN,
        &[],
        &[
            "--fetcher-allowed-networks",
            "127.0.0.1/32",
            "--fetcher-ca-file",
            trusted_pem.to_str().unwrap(),
        ],
    )
    .await;
    let (scheduler, mut events) = Scheduler::subscribe(&cluster.master_addr).await;
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let agent = &offer["agent_id"];
    let refused = format!("https://{stranger}/m.wasm");
    let tasks = vec![
        task(
            "trusted",
            agent,
            &format!("https://{trusted}/m.wasm"),
            "ok.wasm",
        ),
        task("stranger", agent, &refused, "stranger.wasm"),
    ];
    let (code, body) = scheduler.call(accept(&offer, tasks)).await;
    assert_eq!(code, 202, "{body}");
    let mut terminal: HashMap<String, Value> = HashMap::new();
    while terminal.len() < 2 {
        let status = events.next_of("UPDATE").await["update"]["status"].clone();
        scheduler.acknowledge(&status).await;
        let state = status["state"].as_str().unwrap_or_default();
        if !matches!(state, "TASK_STARTING" | "TASK_RUNNING") {
            terminal.insert(status["task_id"]["value"].as_str().unwrap().into(), status);
        }
    }
    assert_eq!(
        terminal["trusted"]["state"], "TASK_FINISHED",
        "{}",
        terminal["trusted"]
    );
    let failed = &terminal["stranger"];
    assert_eq!(failed["state"], "TASK_FAILED", "{failed}");
    let message = failed["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(&format!("cannot fetch {refused}: "))
            && message.contains("invalid peer certificate: UnknownIssuer"),
        "{message}"
    );
    let landed = find_files(&cluster.work_dir().join("frameworks"), "stranger.wasm");
    assert_eq!(landed, Vec::<std::path::PathBuf>::new());
    cluster.assert_no_panics();
}
