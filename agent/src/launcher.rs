//! The launcher: starts executor processes (one per framework on this agent), each in
//! its own process group so it outlives an agent restart, watches re-attached ones,
//! and fills task sandboxes (the fetcher, or the placer thread for cached files),
//! reporting every outcome to the core as an [`Input`].

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use cairn_api::v1::command_info::Uri;
use tokio::sync::mpsc;

use crate::input::{FetchedRun, Input};
use crate::paths::Paths;
use crate::process::{is_alive, start_time};
use crate::user::TaskUser;

/// Starts executors and fetches sandboxes, reporting back to the core.
pub struct Launcher {
    pub(crate) paths: Paths,
    pub(crate) binary: PathBuf,
    pub(crate) recovery_timeout: Duration,
    pub(crate) custom_call_timeout: Duration,
    pub(crate) cgroups_root: String,
    pub(crate) native_namespaces: Vec<String>,
    pub(crate) core: mpsc::Sender<Input>,
    pub(crate) fetcher: std::sync::Arc<crate::fetcher::Fetcher>,
    /// Sandboxes made only of cached files, made on the placer thread.
    pub(crate) placer: std::sync::mpsc::Sender<PlaceJob>,
}

/// A sandbox to make from the fetcher cache alone.
pub struct PlaceJob {
    run: FetchedRun,
    sandbox: PathBuf,
    placement: crate::fetcher::Placement,
    link_cached: bool,
}

/// Makes sandboxes whose every URI is already in the fetcher cache, one after the
/// other on one thread: for short tasks, a task and a blocking-pool trip per sandbox
/// cost the agent more than the directory and link themselves.
pub fn spawn_placer(
    core: mpsc::Sender<Input>,
) -> std::io::Result<std::sync::mpsc::Sender<PlaceJob>> {
    let (tx, rx) = std::sync::mpsc::channel::<PlaceJob>();
    std::thread::Builder::new()
        .name("cairn-placer".into())
        .spawn(move || {
            for job in rx {
                let result = job
                    .placement
                    .place(&job.sandbox, job.link_cached)
                    .map_err(|e| e.to_string());
                let fetched = Input::Fetched {
                    run: job.run,
                    result,
                };
                if core.blocking_send(fetched).is_err() {
                    return;
                }
            }
        })?;
    Ok(tx)
}

impl Launcher {
    /// Spawns `cairn executor` for a framework; returns its pid and start time.
    pub fn spawn(&self, framework_id: &str, executor_id: &str) -> std::io::Result<(u32, u64)> {
        let dir = self.paths.executor_dir(framework_id, executor_id);
        std::fs::create_dir_all(&dir)?;
        // Executors log to a file, never to a pipe they would inherit from the agent.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("executor.log"))?;
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.arg("executor")
            .arg("--agent-socket")
            .arg(self.paths.socket())
            .arg("--framework-id")
            .arg(framework_id)
            .arg("--executor-id")
            .arg(executor_id)
            .arg("--directory")
            .arg(&dir)
            .arg("--recovery-timeout")
            .arg(humantime::format_duration(self.recovery_timeout).to_string())
            .arg("--custom-executor-call-timeout")
            .arg(humantime::format_duration(self.custom_call_timeout).to_string())
            .arg("--cgroups-root")
            .arg(&self.cgroups_root)
            .args(
                (!self.native_namespaces.is_empty())
                    .then(|| format!("--native-namespaces={}", self.native_namespaces.join(","))),
            )
            .arg("--compile-cache")
            .arg(self.paths.compile_cache())
            .arg("--compile-cache-key")
            .arg(self.paths.compile_cache_key())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| std::io::Error::other("executor exited at once"))?;
        let start_time = start_time(pid).unwrap_or_default();
        crate::paths::write_atomic(&dir.join("pid"), pid.to_string().as_bytes())?;
        tracing::info!(framework_id, executor_id, pid, "executor started");
        let core = self.core.clone();
        let framework_id = framework_id.to_owned();
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(s) => s.to_string(),
                Err(e) => format!("wait failed: {e}"),
            };
            let _ = core
                .send(Input::ExecutorExited {
                    framework_id,
                    pid,
                    status,
                })
                .await;
        });
        Ok((pid, start_time))
    }

    /// Watches an executor this agent did not start (it was re-attached after a
    /// restart), reporting its exit. Not being its parent, the agent cannot wait for
    /// it, so it polls, as Mesos' reaper does for processes that are not its children.
    pub fn watch(&self, framework_id: &str, pid: u32, start: u64) {
        let core = self.core.clone();
        let framework_id = framework_id.to_owned();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            while is_alive(pid, start) {
                tick.tick().await;
            }
            let _ = core
                .send(Input::ExecutorExited {
                    framework_id,
                    pid,
                    status: "terminated (not a child of this agent: exit status unknown)".into(),
                })
                .await;
        });
    }

    /// Fetches a task's URIs into its sandbox off the core's thread, as the task's
    /// `user`; `link_cached` as in [`crate::fetcher::fetch_all`].
    pub fn fetch(
        &self,
        run: FetchedRun,
        sandbox: PathBuf,
        uris: Vec<Uri>,
        link_cached: bool,
        user: TaskUser,
    ) {
        if let Some(placement) = self.fetcher.all_cached(&uris, &user) {
            let job = PlaceJob {
                run,
                sandbox,
                placement,
                link_cached,
            };
            // If the placer is gone, the ordinary path below still works.
            let Err(std::sync::mpsc::SendError(job)) = self.placer.send(job) else {
                return;
            };
            tracing::error!("the placer thread is gone; fetching on the runtime");
            return self.fetch_async(job.run, job.sandbox, uris, link_cached, user);
        }
        self.fetch_async(run, sandbox, uris, link_cached, user);
    }

    fn fetch_async(
        &self,
        run: FetchedRun,
        sandbox: PathBuf,
        uris: Vec<Uri>,
        link_cached: bool,
        user: TaskUser,
    ) {
        let core = self.core.clone();
        let fetcher = self.fetcher.clone();
        tokio::spawn(async move {
            let result = crate::fetcher::fetch_all(&uris, &sandbox, &fetcher, link_cached, &user)
                .await
                .map_err(|e| e.to_string());
            let _ = core.send(Input::Fetched { run, result }).await;
        });
    }
}
