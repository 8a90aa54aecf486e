//! A tenant plants links in its sandbox and the agent never follows one. A native
//! task running as `nobody` makes every kind it can with system tools (absolute,
//! relative with `..`, on the way to a file, to a file inside, through
//! `/proc/self/root`, a FIFO, its own `stdout` swapped for a link) and `/files/read`
//! is asked to read through each: it refuses, and what is behind is never read.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::native::{NativeCluster, launch, native_task, terminal};

/// A file under `/root` (which `nobody` cannot enter) that only the agent, running
/// as root, could read; removed when the test ends.
struct Secret {
    path: PathBuf,
    content: String,
}

impl Secret {
    fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let path = PathBuf::from(format!("/root/cairn-links-{id}"));
        let content = format!("SECRET-{id}");
        std::fs::write(&path, &content).unwrap();
        Self { path, content }
    }

    fn name(&self) -> String {
        self.path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `/files/read` of `path` in task `task`'s sandbox: the status and the body.
async fn read(agent: &str, framework_id: &str, task: &str, path: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("http://{agent}/files/read"))
        .query(&[
            ("framework_id", framework_id),
            ("task_id", task),
            ("path", path),
        ])
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn link_refused(path: &str) -> String {
    format!("{path} is, or passes through, a symbolic link; links in a sandbox are never followed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_read_refuses_every_link_a_native_task_plants_and_reads_nothing_behind_it() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the agent must be root to run a task as nobody"
    );
    let secret = Secret::new();
    let c = NativeCluster::start_async(&[]).await;
    let s = secret.path.display();
    let plant = format!(
        "set -e; echo inside > real; ln -s real alias; ln -s {s} absolute; \
         ln -s ../../../../../../../../../../../..{s} climb; ln -s /root up; \
         ln -s /proc/self/root proc; mkdir d; ln -s /root d/out; mkfifo fifo; \
         ln -sf {s} stdout; echo planted >&2"
    );
    let (scheduler, mut events) = launch(&c.cluster, |agent| {
        vec![native_task(
            "planter",
            agent,
            0.1,
            32.0,
            json!({"value": plant, "user": "nobody"}),
        )]
    })
    .await;
    let status = terminal(&scheduler, &mut events, "planter").await;
    assert_eq!(status["state"], "TASK_FINISHED", "{status}");
    let (agent, fw) = (&c.cluster.agent_addr, scheduler.framework_id.as_str());

    let (code, body) = read(agent, fw, "planter", "real").await;
    assert_eq!(
        (code, body["data"].as_str()),
        (200, Some("inside\n")),
        "{body}"
    );
    let (code, body) = read(agent, fw, "planter", "stderr").await;
    assert_eq!(
        (code, body["data"].as_str()),
        (200, Some("planted\n")),
        "{body}"
    );

    let through_secret = format!("up/{}", secret.name());
    let through_subdir = format!("d/out/{}", secret.name());
    for path in [
        "alias",
        "absolute",
        "climb",
        "stdout",
        "proc/etc/hostname",
        &through_secret,
        &through_subdir,
    ] {
        let (code, body) = read(agent, fw, "planter", path).await;
        assert_eq!(
            (code, body["error"].as_str()),
            (400, Some(link_refused(path).as_str())),
            "{body}"
        );
        assert!(
            !body.to_string().contains(&secret.content),
            "{path}: {body}"
        );
    }
    let refusals = [
        ("fifo", 400, "fifo is not a regular file".to_owned()),
        ("d", 400, "d is not a regular file".to_owned()),
        (
            "../real",
            400,
            "path \"../real\" must stay inside the sandbox".to_owned(),
        ),
        (
            "missing",
            404,
            "no file missing in task planter's sandbox".to_owned(),
        ),
        (
            "real/x",
            404,
            "no file real/x in task planter's sandbox".to_owned(),
        ),
    ];
    for (path, want_code, want) in refusals {
        let (code, body) = read(agent, fw, "planter", path).await;
        assert_eq!(
            (code, body["error"].as_str()),
            (want_code, Some(want.as_str())),
            "{path}: {body}"
        );
    }
    c.cluster.assert_no_panics();
}
