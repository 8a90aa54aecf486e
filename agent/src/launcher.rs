//! The launcher: starts executor processes (one per framework on this agent), each in
//! its own process group so it outlives an agent restart, watches re-attached ones,
//! hosts Docker executors in the agent itself (`hosted`), and fills task sandboxes
//! (the fetcher, or the placer thread for cached files), reporting every outcome to
//! the core as an [`Input`].

mod hosted;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use cairn_api::v1::command_info::Uri;
use tokio::sync::mpsc;

use crate::compiler::{Compiler, ProgramRef};
use crate::executor_cgroup::{ExecutorCgroup, ExecutorLimits};
use crate::fetcher::CachedFile;
use crate::input::{FetchedRun, Input};
use crate::paths::Paths;
use crate::process::{CairnBinary, is_alive, start_time};
use crate::user::TaskUser;

/// Starts executors and fetches sandboxes, reporting back to the core.
pub struct Launcher {
    pub(crate) paths: Paths,
    /// The `cairn` binary executors run, open: an executor dropping to its user
    /// execs it through the descriptor, wherever the file lies.
    pub(crate) binary: std::sync::Arc<CairnBinary>,
    pub(crate) recovery_timeout: Duration,
    pub(crate) custom_call_timeout: Duration,
    pub(crate) cgroups_root: String,
    pub(crate) native_namespaces: Vec<String>,
    pub(crate) docker_host_network_always: bool,
    pub(crate) core: mpsc::Sender<Input>,
    pub(crate) fetcher: std::sync::Arc<crate::fetcher::Fetcher>,
    /// Sandboxes made only of cached files, made on the placer thread.
    pub(crate) placer: std::sync::mpsc::Sender<PlaceJob>,
    /// Compiles tasks' wasm programs once their sandbox is made.
    pub(crate) compiler: std::sync::Arc<crate::compiler::Compiler>,
    /// The executors' pids, for the executor socket (see `crate::executor_socket`).
    pub(crate) known: std::sync::Arc<crate::executor_socket::KnownExecutors>,
    /// The executors hosted in the agent (see `hosted`), by executor id.
    pub(crate) hosted: Arc<std::sync::Mutex<HashMap<String, tokio::task::AbortHandle>>>,
    /// The fetches and compiles under way.
    pub(crate) preparing: Preparing,
    /// Makes each executor's token (see `crate::executor_token`).
    pub(crate) tokens: std::sync::Arc<crate::executor_token::ExecutorTokens>,
}

/// The fetches and compiles under way, by the container id of the run they prepare
/// (with the work's handle once it runs on the runtime): a task killed before its
/// launch stops its own, whether it waits for the placer thread, is being placed, or
/// fetches and compiles (a compile step it started is killed with it; tasks of the
/// same module waiting on that step start their own).
#[derive(Debug, Clone, Default)]
pub struct Preparing(Arc<std::sync::Mutex<Runs>>);

/// Runs being prepared, with the handle of their work on the runtime if it runs there.
type Runs = HashMap<String, Option<tokio::task::AbortHandle>>;

impl Preparing {
    fn runs(&self) -> std::sync::MutexGuard<'_, Runs> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A run's preparation begins (before it is queued anywhere).
    fn begin(&self, container_id: &str) {
        self.runs().insert(container_id.to_owned(), None);
    }

    /// Whether the run was cancelled (or has ended).
    fn cancelled(&self, container_id: &str) -> bool {
        !self.runs().contains_key(container_id)
    }

    /// The run's preparation ended without work on the runtime.
    fn end(&self, container_id: &str) {
        self.runs().remove(container_id);
    }

    /// Runs `work` for the run until it ends or is cancelled; nothing if the run was
    /// cancelled already.
    fn spawn(
        &self,
        runtime: &tokio::runtime::Handle,
        container_id: String,
        work: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let this = self.clone();
        // Held while spawning: the work cannot remove its entry before it is in.
        let mut runs = self.runs();
        let Some(entry) = runs.get_mut(&container_id) else {
            return;
        };
        let id = container_id.clone();
        let handle = runtime.spawn(async move {
            work.await;
            this.end(&id);
        });
        *entry = Some(handle.abort_handle());
    }

    /// Stops the fetch or compile of the run, wherever it is.
    pub fn cancel(&self, container_id: &str) {
        if let Some(Some(handle)) = self.runs().remove(container_id) {
            handle.abort();
        }
    }
}

/// Whether an executor id is a framework's Docker executor's.
pub fn is_docker(executor_id: &str) -> bool {
    executor_id.starts_with(cairn_api::ids::DOCKER_EXECUTOR_PREFIX)
}

/// An executor process to start: whose, which, as whom.
#[derive(Debug, Clone)]
pub struct ExecutorSpec {
    pub framework_id: String,
    pub executor_id: String,
    /// The user of every task it runs.
    pub user: crate::user::TaskUser,
    /// A Docker executor: the agent hosts it and makes its Engine calls (see `hosted`).
    pub docker: bool,
}

/// A started executor: its pid and start time, and its cgroup (empty: none).
#[derive(Debug, Clone)]
pub struct Spawned {
    pub pid: u32,
    pub start_time: u64,
    pub cgroup: String,
}

/// What to bring into a task's sandbox, and how.
pub struct Fetch {
    pub uris: Vec<Uri>,
    /// Cached URIs become symlinks into the cache (see `crate::fetcher::fetch_all`).
    pub link_cached: bool,
    /// The task's disk, in bytes: what its URIs may bring in all.
    pub disk: u64,
    /// Its wasm programs, compiled once it is fetched.
    pub programs: Vec<ProgramRef>,
}

/// A sandbox to make from the fetcher cache alone, then the programs to compile.
pub struct PlaceJob {
    run: FetchedRun,
    sandbox: PathBuf,
    placement: crate::fetcher::Placement,
    link_cached: bool,
    prepare: Prepare,
}

/// What follows a task's fetch: compiling its wasm programs (see `crate::compiler`).
pub struct Prepare {
    pub programs: Vec<ProgramRef>,
    pub user: TaskUser,
    pub compiler: Arc<Compiler>,
    pub preparing: Preparing,
}

impl Prepare {
    /// Compiles the programs of a sandbox just made, then reports the task fetched.
    async fn compile_and_report(
        self,
        core: mpsc::Sender<Input>,
        run: FetchedRun,
        sandbox: PathBuf,
        fetched: Result<Vec<CachedFile>, String>,
    ) {
        let result = match fetched {
            Ok(cached) => {
                self.compiler
                    .compile_all(&self.programs, &sandbox, &cached, &self.user)
                    .await
            }
            Err(e) => Err(e),
        };
        let _ = core.send(Input::Fetched { run, result }).await;
    }
}

/// Makes sandboxes whose every URI is already in the fetcher cache, one after the
/// other on one thread: for short tasks, a task and a blocking-pool trip per sandbox
/// cost the agent more than the directory and link themselves. A task whose programs
/// are compiled already is reported from here; one that needs a compile goes on on
/// the runtime.
pub fn spawn_placer(
    core: mpsc::Sender<Input>,
) -> std::io::Result<std::sync::mpsc::Sender<PlaceJob>> {
    let (tx, rx) = std::sync::mpsc::channel::<PlaceJob>();
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("cairn-placer".into())
        .spawn(move || {
            for job in rx {
                let preparing = job.prepare.preparing.clone();
                if preparing.cancelled(&job.run.container_id) {
                    continue;
                }
                let placed = job
                    .placement
                    .place(&job.sandbox, job.link_cached)
                    .map_err(|e| e.to_string());
                let PlaceJob {
                    run,
                    sandbox,
                    prepare,
                    ..
                } = job;
                let ready = match &placed {
                    Ok(cached) => prepare
                        .compiler
                        .ready(&prepare.programs, cached, &prepare.user),
                    Err(e) => Some(Err(e.clone())),
                };
                let Some(result) = ready else {
                    let container_id = run.container_id.clone();
                    let compile = prepare.compile_and_report(core.clone(), run, sandbox, placed);
                    preparing.spawn(&runtime, container_id, compile);
                    continue;
                };
                preparing.end(&run.container_id);
                if core.blocking_send(Input::Fetched { run, result }).is_err() {
                    return;
                }
            }
        })?;
    Ok(tx)
}

impl Launcher {
    /// Spawns `cairn executor`; returns its pid, start time and cgroup. The privileged steps
    /// are the agent's, between fork and exec: the executor joins its cgroup (sized
    /// to `limits`), then drops to its tasks' user with no way back to more
    /// privileges (`PR_SET_NO_NEW_PRIVS`), so its own code starts unprivileged. A
    /// Docker executor is no process: the agent hosts it (see `hosted`).
    pub fn spawn(&self, spec: &ExecutorSpec, limits: ExecutorLimits) -> std::io::Result<Spawned> {
        let (fw, ex) = (spec.framework_id.as_str(), spec.executor_id.as_str());
        if spec.docker {
            return self.host(fw, ex, false);
        }
        let dir = self.paths.executor_dir(fw, ex);
        std::fs::create_dir_all(&dir)?;
        let user = spec.user.switch.then_some(&spec.user);
        // Custom executors keep their files here: the executor's to write.
        let custom = dir.join("custom");
        if let Some(user) = user {
            match std::fs::create_dir(&custom) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
            std::os::unix::fs::lchown(&custom, Some(user.uid), Some(user.gid))?;
        }
        // Executors log to a file, never to a pipe they would inherit from the agent.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("executor.log"))?;
        let cgroup = ExecutorCgroup::fresh(&self.cgroups_root, ex);
        let in_cgroup = nix::unistd::geteuid().is_root();
        let procs = if in_cgroup {
            cgroup
                .create(limits, user.map(|u| (u.uid, u.gid)))
                .map_err(std::io::Error::other)?
        } else {
            Vec::new()
        };
        let mut cmd = self.command(spec, &dir, &cgroup);
        // What the agent's environment holds is the agent's: an executor gets only
        // what it reads.
        let passed = ["RUST_LOG", "PATH", "TMPDIR"];
        let token = self.tokens.token(&spec.framework_id, &spec.executor_id);
        cmd.env_clear()
            .envs(std::env::vars_os().filter(|(k, _)| passed.iter().any(|p| k == p)))
            .env("MESOS_EXECUTOR_AUTHENTICATION_TOKEN", token)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(false);
        crate::process::confine(&mut cmd, procs, user.cloned());
        let child = cmd.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| std::io::Error::other("executor exited at once"))?;
        let start_time = start_time(pid).unwrap_or_default();
        crate::paths::write_atomic(&dir.join("pid"), pid.to_string().as_bytes())?;
        let as_user = user.map(|u| u.name.as_str());
        tracing::info!(executor_id = ex, pid, user = as_user, "executor started");
        self.known.add(pid);
        self.reap(ex, pid, child);
        Ok(Spawned {
            pid,
            start_time,
            cgroup: if in_cgroup {
                cgroup.path().to_owned()
            } else {
                String::new()
            },
        })
    }

    /// `cairn executor` with its arguments. It is given where the compiled artifacts
    /// are, never the key that authenticates them: it loads only what the agent
    /// names, by the file's sha256.
    fn command(
        &self,
        spec: &ExecutorSpec,
        dir: &Path,
        cgroup: &ExecutorCgroup,
    ) -> tokio::process::Command {
        let (fw, ex) = (spec.framework_id.as_str(), spec.executor_id.as_str());
        let mut cmd = tokio::process::Command::new(self.binary.program());
        cmd.arg0("cairn")
            .arg("executor")
            .arg("--agent-socket")
            .arg(self.paths.socket())
            .arg("--framework-id")
            .arg(fw)
            .arg("--executor-id")
            .arg(ex)
            .arg("--directory")
            .arg(dir)
            .arg("--recovery-timeout")
            .arg(humantime::format_duration(self.recovery_timeout).to_string())
            .arg("--custom-executor-call-timeout")
            .arg(humantime::format_duration(self.custom_call_timeout).to_string())
            .arg("--cgroups-root")
            .arg(cgroup.containers_path())
            .arg("--containerizers")
            .arg("wasm,native")
            .args(
                (!self.native_namespaces.is_empty())
                    .then(|| format!("--native-namespaces={}", self.native_namespaces.join(","))),
            )
            .arg("--artifacts")
            .arg(self.compiler.dir());
        cmd
    }

    /// Waits for an executor this agent started, reporting its exit.
    fn reap(&self, executor_id: &str, pid: u32, mut child: tokio::process::Child) {
        let core = self.core.clone();
        let known = self.known.clone();
        let executor_id = executor_id.to_owned();
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(s) => s.to_string(),
                Err(e) => format!("wait failed: {e}"),
            };
            known.remove(pid);
            let _ = core
                .send(Input::ExecutorExited {
                    executor_id,
                    pid,
                    status,
                })
                .await;
        });
    }

    /// Writes an executor's cgroup's new size (`cgroup` as [`Spawned`] named it).
    pub fn resize(&self, cgroup: &str, limits: ExecutorLimits) {
        if cgroup.is_empty() {
            return;
        }
        if let Err(e) = ExecutorCgroup::at(cgroup).resize(limits) {
            tracing::debug!(cgroup, error = %e, "cannot resize an executor's cgroup");
        }
    }

    /// Removes a gone executor's cgroup, and whatever it left running in it, off the
    /// core: a successor has a cgroup of its own.
    pub fn destroy_cgroup(&self, cgroup: &str) {
        if cgroup.is_empty() {
            return;
        }
        let cgroup = ExecutorCgroup::at(cgroup);
        tokio::task::spawn_blocking(move || cgroup.destroy());
    }

    /// Watches an executor this agent did not start (it was re-attached after a
    /// restart), reporting its exit. Not being its parent, the agent cannot wait for
    /// it, so it polls, as Mesos' reaper does for processes that are not its children.
    pub fn watch(&self, executor_id: &str, pid: u32, start: u64) {
        let core = self.core.clone();
        let known = self.known.clone();
        known.add(pid);
        let executor_id = executor_id.to_owned();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            while is_alive(pid, start) {
                tick.tick().await;
            }
            known.remove(pid);
            let _ = core
                .send(Input::ExecutorExited {
                    executor_id,
                    pid,
                    status: "terminated (not a child of this agent: exit status unknown)".into(),
                })
                .await;
        });
    }

    /// Fetches a task's URIs into its sandbox off the core's thread, as the task's
    /// `user` (`link_cached` as in [`crate::fetcher::fetch_all`]), within its `disk`
    /// (bytes), then compiles its wasm `programs`.
    pub fn fetch(&self, run: FetchedRun, sandbox: PathBuf, fetch: Fetch, user: TaskUser) {
        let Fetch {
            uris,
            link_cached,
            disk,
            programs,
        } = fetch;
        let prepare = Prepare {
            programs,
            compiler: self.compiler.clone(),
            user,
            preparing: self.preparing.clone(),
        };
        self.preparing.begin(&run.container_id);
        if let Some(placement) = self.fetcher.all_cached(&uris, &prepare.user, disk) {
            let job = PlaceJob {
                run,
                sandbox,
                placement,
                link_cached,
                prepare,
            };
            // If the placer is gone, the ordinary path below still works.
            let Err(std::sync::mpsc::SendError(job)) = self.placer.send(job) else {
                return;
            };
            tracing::error!("the placer thread is gone; fetching on the runtime");
            let fetch = (uris, link_cached, disk);
            return self.fetch_async(job.run, job.sandbox, fetch, job.prepare);
        }
        self.fetch_async(run, sandbox, (uris, link_cached, disk), prepare);
    }

    fn fetch_async(
        &self,
        run: FetchedRun,
        sandbox: PathBuf,
        (uris, link_cached, disk): (Vec<Uri>, bool, u64),
        prepare: Prepare,
    ) {
        let core = self.core.clone();
        let fetcher = self.fetcher.clone();
        let (preparing, container_id) = (self.preparing.clone(), run.container_id.clone());
        let runtime = tokio::runtime::Handle::current();
        preparing.spawn(&runtime, container_id, async move {
            let user = &prepare.user;
            let fetched =
                crate::fetcher::fetch_all(&uris, &sandbox, &fetcher, link_cached, user, disk)
                    .await
                    .map_err(|e| e.to_string());
            prepare
                .compile_and_report(core, run, sandbox, fetched)
                .await;
        });
    }
}
