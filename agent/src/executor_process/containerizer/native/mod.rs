//! Native tasks: a process, and whatever it forks, in a fresh cgroup of its own
//! (`<root>/<task>`, `root` the executor's delegated `containers` cgroup, in the cpu,
//! cpuacct, memory and pids controllers on cgroup v1, or the one unified hierarchy
//! on v2, whichever the host has).
//!
//! An unprivileged executor (the usual case: it runs as its tasks' user) gives a
//! task namespaces of its own inside a user namespace of its own that maps only
//! that user: it may then unshare the others, and the task gains no privilege
//! over anything outside them.
//!
//! The process joins its cgroup before it executes anything: the child writes "0"
//! to each `cgroup.procs` between fork and exec, so there is no moment when the task
//! runs outside its limits. When the task's main process ends, everything left in
//! its cgroup is killed and the cgroup removed, as Mesos' containers do.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_sandbox::SandboxDir;
use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::cpuacct::CpuAcctController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{Cgroup, MaxValue, hierarchies};
use tokio::sync::watch;

use crate::executor_cgroup::{oom_kills, signal_all, subtree};
use crate::user::TaskUser;

use super::{Containerizer, LaunchError, LaunchSpec, Limits, Termination, Usage, label};

/// Processes one task may have at once: a fork bomb stops here.
const MAX_PIDS: i64 = 1024;
/// The CFS period quotas are expressed in (Mesos' default).
const CFS_PERIOD_US: u64 = 100_000;
/// How long killing a cgroup's processes may take before it is reported as stuck.
const KILL_DEADLINE: Duration = Duration::from_secs(10);
const CONTROLLERS: [&str; 4] = ["cpu", "cpuacct", "memory", "pids"];

struct Container {
    cgroup: Cgroup,
    pid: i32,
    mem_bytes: u64,
    killed: AtomicBool,
    ended: watch::Receiver<Option<Termination>>,
}

/// Native processes in cgroups under `root` (relative to each hierarchy's mount).
pub struct NativeContainerizer {
    root: String,
    /// `unshare(2)` flags for the namespaces each task gets of its own.
    unshare: nix::libc::c_int,
    containers: Mutex<HashMap<String, Arc<Container>>>,
}

impl NativeContainerizer {
    /// `namespaces`: any of `ipc`, `mount` and `network` (the flag's values).
    pub fn new(root: impl Into<String>, namespaces: &[String]) -> Self {
        let unshare = namespaces
            .iter()
            .map(|n| match n.as_str() {
                "ipc" => nix::libc::CLONE_NEWIPC,
                "mount" => nix::libc::CLONE_NEWNS,
                "network" => nix::libc::CLONE_NEWNET,
                "pid" => nix::libc::CLONE_NEWPID,
                _ => 0,
            })
            .fold(0, |a, b| a | b);
        Self {
            root: root.into(),
            unshare,
            containers: Mutex::new(HashMap::new()),
        }
    }

    fn container(&self, task_id: &str) -> Option<Arc<Container>> {
        self.lock().get(task_id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cgroup_path(&self, task_id: &str) -> String {
        format!("{}/{task_id}", self.root)
    }
}

/// Creates the task's cgroup with its limits applied.
fn create_cgroup(path: &str, limits: &Limits) -> Result<Cgroup, LaunchError> {
    let controllers = CONTROLLERS.iter().map(|c| c.to_string()).collect();
    let cgroup =
        Cgroup::new_with_specified_controllers(hierarchies::auto(), path, Some(controllers))
            .map_err(|e| LaunchError::Native(format!("cannot create cgroup {path}: {e}")))?;
    // Each step says which limit failed; the caller adds the cgroup.
    let applied = (|| -> Result<(), String> {
        let cpu: &CpuController = cgroup.controller_of().ok_or("no cpu controller")?;
        let shares = ((limits.cpus * 1024.0) as u64).max(2);
        let quota = ((limits.cpus * CFS_PERIOD_US as f64) as i64).max(1000);
        if cgroup.v2() {
            // cpu.weight is 1..10000 where v1's shares are 2..262144 (1024 = 100).
            cpu.set_shares((shares * 100 / 1024).clamp(1, 10_000))
        } else {
            cpu.set_shares(shares)
        }
        .map_err(|e| format!("cpu shares: {e}"))?;
        cpu.set_cfs_quota_and_period(Some(quota), Some(CFS_PERIOD_US))
            .map_err(|e| format!("cpu quota: {e}"))?;
        let mem: &MemController = cgroup.controller_of().ok_or("no memory controller")?;
        mem.set_limit(limits.mem_bytes as i64)
            .map_err(|e| format!("memory limit: {e}"))?;
        let pids: &PidController = cgroup.controller_of().ok_or("no pids controller")?;
        pids.set_pid_max(MaxValue::Value(MAX_PIDS))
            .map_err(|e| format!("pids limit: {e}"))?;
        Ok(())
    })();
    if let Err(e) = applied {
        let _ = cgroup.delete();
        return Err(LaunchError::Native(format!(
            "cannot limit cgroup {path}: {e}"
        )));
    }
    Ok(cgroup)
}

/// Every `cgroup.procs` the task must join (one per v1 hierarchy, one on v2).
fn procs_files(cgroup: &Cgroup) -> Result<Vec<std::fs::File>, LaunchError> {
    let mut paths: Vec<PathBuf> = cgroup
        .subsystems()
        .iter()
        .map(|s| s.to_controller().path().join("cgroup.procs"))
        .collect();
    paths.sort();
    paths.dedup();
    paths
        .iter()
        .map(|p| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .map_err(|e| LaunchError::Native(format!("cannot open {}: {e}", p.display())))
        })
        .collect()
}

/// The user to switch to between fork and exec, when the task runs as another user
/// than this process (the agent resolved who: see `crate::user`).
fn switch_to(spec: &LaunchSpec) -> Option<TaskUser> {
    spec.user.switch.then(|| spec.user.clone())
}

/// Kills everything in the cgroup, however fast it forks, then removes it.
async fn destroy(cgroup: &Cgroup) {
    let started = Instant::now();
    while signal_all(cgroup, nix::sys::signal::Signal::SIGKILL) > 0 {
        if started.elapsed() > KILL_DEADLINE {
            tracing::error!(
                cgroup = cgroup.path(),
                "processes survive SIGKILL; leaving the cgroup"
            );
            return;
        }
        // A killed process leaves `cgroup.procs` once the kernel has reaped it.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Children the task made first: a cgroup with children cannot be removed.
    for dir in subtree(cgroup)
        .into_iter()
        .filter(|d| !d.ends_with(cgroup.path()))
    {
        let _ = std::fs::remove_dir(dir);
    }
    let cgroup = cgroup.clone();
    // cgroups-rs retries rmdir with blocking sleeps.
    let removed = tokio::task::spawn_blocking(move || cgroup.delete()).await;
    if let Ok(Err(e)) = removed {
        tracing::warn!(error = %e, "cannot remove a task's cgroup");
    }
}

fn usage_of(cgroup: &Cgroup) -> Usage {
    let cpu_time = if cgroup.v2() {
        cgroup
            .controller_of::<CpuController>()
            .and_then(|c| {
                c.cpu()
                    .stat
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|n| n.trim().parse().ok())
            })
            .map(Duration::from_micros)
    } else {
        cgroup
            .controller_of::<CpuAcctController>()
            .map(|c| Duration::from_nanos(c.cpuacct().usage))
    };
    Usage {
        cpu_time: cpu_time.unwrap_or_default(),
        memory_bytes: cgroup
            .controller_of::<MemController>()
            .map_or(0, |m| m.memory_stat().usage_in_bytes),
        processes: cgroup
            .controller_of::<PidController>()
            .and_then(|p| p.get_pid_current().ok())
            .unwrap_or(0),
    }
}

impl NativeContainerizer {
    /// Starts the task's process straight into its cgroup, in the sandbox, with its
    /// namespaces and as its user.
    fn spawn(
        &self,
        spec: &LaunchSpec,
        exec: &super::Exec,
        ids: Option<TaskUser>,
        cgroup: &Cgroup,
    ) -> Result<tokio::process::Child, LaunchError> {
        let files = procs_files(cgroup)?;
        let fds: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
        let (stdout, stderr) =
            sandbox_outputs(&spec.sandbox, ids.as_ref().map(|i| (i.uid, i.gid)))?;
        let mut cmd = tokio::process::Command::new(&exec.program);
        cmd.arg0(&exec.argv[0])
            .args(&exec.argv[1..])
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .envs(super::environment(
                spec,
                &spec.sandbox.display().to_string(),
            ))
            .current_dir(&spec.sandbox)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Its own process group: signals to the task never reach the executor.
            .process_group(0)
            .kill_on_drop(false);
        let maps = (self.unshare != 0 && !nix::unistd::geteuid().is_root()).then(|| {
            let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
            (format!("{uid} {uid} 1\n"), format!("{gid} {gid} 1\n"))
        });
        enter::enter_container(&mut cmd, fds, self.unshare, ids, maps);
        let child = cmd
            .spawn()
            .map_err(|e| LaunchError::Native(format!("cannot run {}: {e}", exec.program)))?;
        drop(files);
        Ok(child)
    }
}

/// The task's stdout and stderr in its sandbox, owned by its user. Whatever the
/// sandbox already holds under those names may be a tenant's (a link to
/// `/etc/passwd`, a FIFO, a hard link to a host file): each is opened beneath the
/// sandbox following no link and must be a regular file with one link, and the
/// sandbox and both files are given away through their descriptors, never by path.
fn sandbox_outputs(
    sandbox: &Path,
    ids: Option<(u32, u32)>,
) -> Result<(std::fs::File, std::fs::File), LaunchError> {
    let refused = |what: &str, e: cairn_sandbox::SandboxDirError| {
        LaunchError::Native(format!("cannot open the sandbox's {what}: {e}"))
    };
    let dir = SandboxDir::open(sandbox).map_err(|e| refused("directory", e))?;
    let output = |name: &str| {
        dir.append(Path::new(name), 0o644)
            .map_err(|e| refused(name, e))
    };
    let (stdout, stderr) = (output("stdout")?, output("stderr")?);
    if let Some((uid, gid)) = ids {
        let give = |file: &std::fs::File| std::os::unix::fs::fchown(file, Some(uid), Some(gid));
        dir.chown(uid, gid)
            .map_err(std::io::Error::from)
            .and_then(|()| give(&stdout))
            .and_then(|()| give(&stderr))
            .map_err(|e| {
                LaunchError::Native(format!("cannot give the sandbox to the task's user: {e}"))
            })?;
    }
    Ok((stdout, stderr))
}

/// Waits for the task's main process, then reports its end with what it used; what
/// it left behind dies with it.
async fn reap(
    mut child: tokio::process::Child,
    container: Arc<Container>,
    ended: watch::Sender<Option<Termination>>,
) {
    let status = child.wait().await;
    let usage = usage_of(&container.cgroup);
    let ooms = oom_kills(&container.cgroup);
    destroy(&container.cgroup).await;
    let mut termination = match status {
        _ if ooms > 0 => Termination::out_of_memory(container.mem_bytes),
        _ if container.killed.load(Ordering::SeqCst) => Termination::killed(),
        Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
            (Some(code), _) => Termination::exit_code(code.into()),
            (None, Some(signal)) => {
                let mut t = Termination::new(
                    cairn_api::v1::TaskState::TaskFailed,
                    format!("Command terminated with signal {signal}"),
                    Some(cairn_api::v1::task_status::Reason::CommandExecutorFailed),
                );
                t.labels.push(label("cairn.signal", signal));
                t
            }
            (None, None) => Termination::exit_code(-1),
        },
        Err(e) => Termination::launch_failed(format!("waiting for the task: {e}")),
    };
    termination.labels.extend([
        label("cairn.usage.cpu_time_ms", usage.cpu_time.as_millis()),
        label("cairn.usage.memory_bytes", usage.memory_bytes),
    ]);
    let _ = ended.send(Some(termination));
}

#[async_trait::async_trait]
impl Containerizer for NativeContainerizer {
    async fn launch(&self, spec: &LaunchSpec) -> Result<(), LaunchError> {
        let task_id = spec.task_id();
        let limits = Limits::of(&spec.task)?;
        let exec = super::exec(&spec.task)?;
        let ids = switch_to(spec);
        let path = self.cgroup_path(&task_id);
        let cgroup = {
            let (path, limits) = (path.clone(), limits);
            tokio::task::spawn_blocking(move || create_cgroup(&path, &limits))
                .await
                .map_err(|e| LaunchError::Native(e.to_string()))??
        };
        let child = match self.spawn(spec, &exec, ids, &cgroup) {
            Ok(child) => child,
            Err(e) => {
                destroy(&cgroup).await;
                return Err(e);
            }
        };
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        let (ended_tx, ended) = watch::channel(None);
        let container = Arc::new(Container {
            cgroup,
            pid,
            mem_bytes: limits.mem_bytes,
            killed: AtomicBool::new(false),
            ended,
        });
        self.lock().insert(task_id, container.clone());
        tokio::spawn(reap(child, container, ended_tx));
        Ok(())
    }

    async fn wait(&self, task_id: &str) -> Termination {
        let Some(container) = self.container(task_id) else {
            return Termination::launch_failed("no such container");
        };
        let mut ended = container.ended.clone();
        let termination = match ended.wait_for(Option::is_some).await {
            Ok(t) => t.clone().unwrap_or_else(Termination::killed),
            Err(_) => Termination::launch_failed("the container's watcher ended"),
        };
        self.lock().remove(task_id);
        termination
    }

    async fn kill(&self, task_id: &str, grace: Duration) {
        let Some(container) = self.container(task_id) else {
            return;
        };
        container.killed.store(true, Ordering::SeqCst);
        if grace.is_zero() {
            signal_all(&container.cgroup, nix::sys::signal::Signal::SIGKILL);
            return;
        }
        // The main process is asked first, as Mesos' command executor does; anything
        // still in the cgroup after the grace period is killed. In a pid namespace the
        // task is the namespace's init behind a waiting parent: its process group is
        // asked.
        let target = if self.unshare & nix::libc::CLONE_NEWPID != 0 {
            -container.pid
        } else {
            container.pid
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(target),
            nix::sys::signal::Signal::SIGTERM,
        );
        tokio::spawn(async move {
            let mut ended = container.ended.clone();
            let waited = tokio::time::timeout(grace, ended.wait_for(Option::is_some)).await;
            if waited.is_err() {
                signal_all(&container.cgroup, nix::sys::signal::Signal::SIGKILL);
            }
        });
    }

    async fn recover(&self, _framework_id: &str) -> Vec<String> {
        // Native tasks are children of the executor process: none survives it. What
        // a dead executor left in its cgroups is killed and removed (the agent
        // removes a dead executor's whole cgroup too).
        let parent = self.root.clone();
        let hierarchy = hierarchies::auto();
        let Some(dir) = hierarchy
            .subsystems()
            .iter()
            .find(|s| s.controller_name() == "memory" || hierarchy.v2())
            .map(|s| s.to_controller().path().to_path_buf())
        else {
            return Vec::new();
        };
        let dir = if hierarchy.v2() {
            hierarchy.root().join(&parent)
        } else {
            dir.join(&parent)
        };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        for entry in entries.flatten().filter(|e| e.path().is_dir()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let controllers = CONTROLLERS.iter().map(|c| c.to_string()).collect();
            let cgroup = Cgroup::load_with_specified_controllers(
                hierarchies::auto(),
                format!("{parent}/{name}"),
                controllers,
            );
            tracing::warn!(task_id = name, "removing a cgroup a dead executor left");
            destroy(&cgroup).await;
        }
        Vec::new()
    }

    async fn usage(&self, task_id: &str) -> Option<Usage> {
        let container = self.container(task_id)?;
        Some(usage_of(&container.cgroup))
    }
}

mod enter;
#[cfg(test)]
mod tests;
