//! The cgroup an executor process runs in, made by the agent before the executor's
//! own code runs (the executor may be unprivileged and could not make it).
//!
//! ```text
//! <root>/executors/<executor id>.<generation>/  one per executor process, sized to
//!                                               its tasks plus the overhead
//!                               executor/   the executor process itself
//!                               containers/ its native tasks' cgroups, one each,
//!                                           made by the executor: delegated to its user
//!                                           (not `tasks`: cgroup v1 has a file so named)
//! ```
//!
//! The limits on the executor's cgroup cap everything it hosts, so wasm memory is
//! capped twice: by wasmtime's accounting per instance, and by the kernel for the
//! whole process. The executor's user owns `containers/` (and on cgroup v2 the
//! `cgroup.procs` of the executor's cgroup, which moving a process between two of
//! its children needs), never the limits above it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{Cgroup, Controller, MaxValue, hierarchies};

/// What every executor adds to its tasks. Mesos adds 32 MB and 0.1 cpu for its small
/// C++ executor; Cairn's hosts wasmtime and compiles modules in process: 108 MB
/// resident was measured for a debug build that had compiled one 2 MB module (an
/// executor past its cgroup's limit is killed with all its tasks).
pub const OVERHEAD_MEM_BYTES: u64 = 256 << 20;
pub const OVERHEAD_CPUS: f64 = 0.1;
/// What the executor holds for each task on top of the task's own `mem`: a wasm
/// task's instance, store, async stack and pipes live in the executor's process, and
/// pooled slots stay warm after it. The capacity benchmark's executor (1,000 wasm
/// tasks of 2 MB in flight) peaked at 2.37 GB in one run and was past 3.28 GB in a
/// cold one: up to about 3 MB a task beyond its `mem`.
pub const HOST_MEM_PER_TASK: u64 = 4 << 20;
/// The controllers executors and their native tasks are limited by.
pub const CONTROLLERS: [&str; 4] = ["cpu", "cpuacct", "memory", "pids"];
/// How long killing what is left in a dead executor's cgroup may take.
const KILL_DEADLINE: Duration = Duration::from_secs(10);

/// Processes the executor itself may have (its runtime's and blocking pool's threads
/// count), and each task besides (a native task's own cgroup caps it at as many).
pub const PIDS_PER_EXECUTOR: i64 = 1024;
pub const PIDS_PER_TASK: i64 = 1024;
/// The CFS period quotas are expressed in (Mesos' default).
const CFS_PERIOD_US: u64 = 100_000;
/// The executor's CPU quota is never below one CPU: loading its tasks' artifacts and
/// the host side of thousands of guests are its own work, which a quota of a tenth of
/// a CPU would make ten times slower.
const MIN_QUOTA_CPUS: f64 = 1.0;

/// What an executor's cgroup allows: its tasks' sum plus the overhead. Its tasks'
/// own cgroups are the executor user's to change, so these limits, root's, are what
/// bounds them all.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExecutorLimits {
    pub cpus: f64,
    pub mem_bytes: u64,
    pub pids: i64,
}

impl ExecutorLimits {
    /// An executor running nothing yet.
    pub fn overhead() -> Self {
        Self {
            cpus: OVERHEAD_CPUS,
            mem_bytes: OVERHEAD_MEM_BYTES,
            pids: PIDS_PER_EXECUTOR,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot create cgroup {path}: {source}")]
    Create {
        path: String,
        source: cgroups_rs::fs::error::Error,
    },
    #[error("cannot set up cgroup {path}: {what}: {source}")]
    Setup {
        path: String,
        what: &'static str,
        source: std::io::Error,
    },
}

/// One executor's cgroup (every hierarchy it is in).
#[derive(Debug, Clone)]
pub struct ExecutorCgroup {
    path: String,
}

impl ExecutorCgroup {
    /// A fresh cgroup for a new process of `executor_id` under `root` (relative to each
    /// hierarchy's mount): never one a dead process of the same executor still holds,
    /// which is removed off the agent's core while its successor starts.
    pub fn fresh(root: &str, executor_id: &str) -> Self {
        let generation = uuid::Uuid::now_v7().simple().to_string();
        Self {
            path: format!("{root}/executors/{executor_id}.{}", &generation[..16]),
        }
    }

    /// A fresh cgroup for one run of the agent's compile step under `parent` (the
    /// agent's own), of the same shape: its process joins `<path>/executor`.
    pub fn fresh_compile(parent: &str) -> Self {
        let generation = uuid::Uuid::now_v7().simple().to_string();
        Self {
            path: format!("{parent}/{generation}"),
        }
    }

    /// The cgroup at `path`, as recorded in the checkpoint.
    pub fn at(path: &str) -> Self {
        Self {
            path: path.to_owned(),
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Where the executor's native tasks' cgroups go, for the executor's
    /// `--cgroups-root`.
    pub fn containers_path(&self) -> String {
        format!("{}/containers", self.path)
    }

    fn load(&self, sub: &str) -> Cgroup {
        let path = match sub {
            "" => self.path.clone(),
            sub => format!("{}/{sub}", self.path),
        };
        Cgroup::load_with_specified_controllers(hierarchies::auto(), path, controllers())
    }

    /// Makes the cgroup, limited to `limits`, with `containers/` delegated to `owner`
    /// (uid, gid); returns the `cgroup.procs` files the executor joins between fork
    /// and exec.
    pub fn create(
        &self,
        limits: ExecutorLimits,
        owner: Option<(u32, u32)>,
    ) -> Result<Vec<std::fs::File>, CgroupError> {
        let controllers = controllers();
        let make = |path: String| {
            Cgroup::new_with_specified_controllers(
                hierarchies::auto(),
                path.clone(),
                Some(controllers.clone()),
            )
            .map_err(|source| CgroupError::Create { path, source })
        };
        let top = make(self.path.clone())?;
        self.resize(limits).map_err(|source| CgroupError::Setup {
            path: self.path.clone(),
            what: "limits",
            source,
        })?;
        let process = make(format!("{}/executor", self.path))?;
        let containers = make(self.containers_path())?;
        if let Some((uid, gid)) = owner {
            let setup = |what, source| CgroupError::Setup {
                path: self.path.clone(),
                what,
                source,
            };
            for dir in dirs_of(&containers) {
                // Enabled while it is root's: the executor's own children get the
                // controllers (v2; v1 has no such file).
                let control = dir.join("cgroup.subtree_control");
                if control.exists() {
                    let enable: String = controllers.iter().map(|c| format!("+{c} ")).collect();
                    std::fs::write(&control, enable.trim_end())
                        .map_err(|e| setup("enabling controllers", e))?;
                }
                for entry in [dir.clone(), dir.join("cgroup.procs"), dir.join("tasks")] {
                    chown_if_there(&entry, uid, gid).map_err(|e| setup("delegation", e))?;
                }
            }
            if top.v2() {
                for dir in dirs_of(&top) {
                    chown_if_there(&dir.join("cgroup.procs"), uid, gid)
                        .map_err(|e| setup("delegation", e))?;
                }
            }
        }
        procs_files(&process).map_err(|source| CgroupError::Setup {
            path: self.path.clone(),
            what: "joining",
            source,
        })
    }

    /// Sets the cgroup's limits. Shrinking memory below what is in use fails on
    /// cgroup v1 (the kernel cannot reclaim it): the limit then stays higher until
    /// the next change, never lower than the tasks were promised.
    pub fn resize(&self, limits: ExecutorLimits) -> std::io::Result<()> {
        let cgroup = self.load("");
        if let Some(mem) = cgroup.controller_of::<MemController>() {
            mem.set_limit(limits.mem_bytes as i64)
                .map_err(std::io::Error::other)?;
        }
        if let Some(cpu) = cgroup.controller_of::<CpuController>() {
            let shares = ((limits.cpus * 1024.0) as u64).max(2);
            let shares = if cgroup.v2() {
                (shares * 100 / 1024).clamp(1, 10_000)
            } else {
                shares
            };
            cpu.set_shares(shares).map_err(std::io::Error::other)?;
            let quota = (limits.cpus.max(MIN_QUOTA_CPUS) * CFS_PERIOD_US as f64) as i64;
            cpu.set_cfs_quota_and_period(Some(quota), Some(CFS_PERIOD_US))
                .map_err(std::io::Error::other)?;
        }
        if let Some(pids) = cgroup.controller_of::<PidController>() {
            pids.set_pid_max(MaxValue::Value(limits.pids))
                .map_err(std::io::Error::other)?;
        }
        Ok(())
    }

    /// The kernel's OOM kills of the executor process's own leaf so far (a task's
    /// OOM in its own cgroup is the task's, and does not count).
    pub fn oom_kills(&self) -> u64 {
        oom_kills(&self.load("executor"))
    }

    /// Kills whatever is left in the cgroup and its children, then removes them all.
    /// Blocking: run it off the core.
    pub fn destroy(&self) {
        let cgroup = self.load("");
        let started = Instant::now();
        while signal_all(&cgroup, nix::sys::signal::Signal::SIGKILL) > 0 {
            if started.elapsed() > KILL_DEADLINE {
                tracing::error!(cgroup = self.path, "processes survive SIGKILL; leaving it");
                return;
            }
            // A killed process leaves `cgroup.procs` once the kernel has reaped it.
            std::thread::sleep(Duration::from_millis(5));
        }
        for dir in subtree(&cgroup) {
            if let Err(e) = std::fs::remove_dir(&dir) {
                let dir = dir.display();
                tracing::warn!(%dir, error = %e, "cannot remove an executor's cgroup");
            }
        }
    }
}

/// A cgroup's directories in every hierarchy and all below them, deepest first (a
/// cgroup with children cannot be removed). A task's or executor's user owns some of
/// them and may make children to hide in: they are all searched. cgroupfs holds no
/// links; names are taken as the kernel gives them.
pub fn subtree(cgroup: &Cgroup) -> Vec<PathBuf> {
    dirs_below(dirs_of(cgroup))
}

/// `roots` and every cgroup directory below them, deepest first.
pub fn dirs_below(roots: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut stack = roots;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
        dirs.push(dir);
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    dirs
}

/// Sends `signal` to every process in the cgroup and every cgroup below it; returns
/// how many it found.
pub fn signal_all(cgroup: &Cgroup, signal: nix::sys::signal::Signal) -> usize {
    let mut signalled = 0;
    for dir in subtree(cgroup) {
        for pid in procs_of(&dir) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
            signalled += 1;
        }
    }
    signalled
}

/// The processes of one cgroup directory (none if it is gone).
pub fn procs_of(dir: &std::path::Path) -> Vec<i32> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    procs
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The v1 `memory.oom_control` or v2 `memory.events` OOM kill count of a cgroup
/// (its children's kills included).
pub fn oom_kills(cgroup: &Cgroup) -> u64 {
    let Some(mem) = cgroup.controller_of::<MemController>() else {
        return 0;
    };
    if cgroup.v2() {
        let path = Controller::path(mem).join("memory.events");
        return std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
    }
    mem.memory_stat().oom_control.oom_kill
}

/// The controllers this host's hierarchy has of [`CONTROLLERS`]: cgroup v2 has no
/// `cpuacct` (its `cpu` accounts).
fn controllers() -> Vec<String> {
    let v2 = hierarchies::auto().v2();
    CONTROLLERS
        .iter()
        .filter(|c| !(v2 && **c == "cpuacct"))
        .map(|c| c.to_string())
        .collect()
}

/// The directories of the cgroup at `path` (relative to each hierarchy's mount), one
/// per hierarchy this host mounts.
pub fn dirs_at(path: &str) -> Vec<PathBuf> {
    dirs_of(&Cgroup::load(hierarchies::auto(), path))
}

/// The cgroup directories process `pid` is in: its memory controller's on cgroup v1,
/// its one cgroup on v2. None for a process in a root cgroup, which cannot be told
/// from the rest of the host.
pub fn dirs_of_process(pid: i64) -> Vec<PathBuf> {
    let mount = hierarchies::auto().root();
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let path = path.trim_start_matches('/');
            if path.is_empty() {
                return None;
            }
            match controllers {
                "" if mount.join("cgroup.controllers").exists() => Some(mount.join(path)),
                c if c.split(',').any(|c| c == "memory") => Some(mount.join(c).join(path)),
                _ => None,
            }
        })
        .filter(|dir| dir.is_dir())
        .collect()
}

/// The directories of a cgroup, one per hierarchy it is in.
fn dirs_of(cgroup: &Cgroup) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = cgroup
        .subsystems()
        .iter()
        .map(|s| s.to_controller().path().to_path_buf())
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

fn chown_if_there(path: &std::path::Path, uid: u32, gid: u32) -> std::io::Result<()> {
    match std::os::unix::fs::lchown(path, Some(uid), Some(gid)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Every `cgroup.procs` a process must write "0" to, to join the cgroup.
fn procs_files(cgroup: &Cgroup) -> std::io::Result<Vec<std::fs::File>> {
    dirs_of(cgroup)
        .iter()
        .map(|d| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(d.join("cgroup.procs"))
        })
        .collect()
}
