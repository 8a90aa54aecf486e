//! Sandbox garbage collection, after Mesos' `--gc_delay` and `--gc_disk_headroom`:
//! a run's sandbox is removed a while after its task's terminal update was
//! acknowledged, and sooner the fuller the agent's disk:
//!
//! ```text
//! max age = gc_delay × max(0, 1 − gc_disk_headroom − disk usage)
//! ```
//!
//! The core schedules each finished run; after a restart, runs on disk that no task
//! in the checkpoint owns are scheduled by their directory's modification time
//! (never later than now, so a tenant cannot keep its sandbox by dating it in the
//! future). Removal never follows a link and holds a bounded number of descriptors
//! however deep a tenant nests its directories (`SandboxDir::remove_dir_all`).

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

/// The agent's garbage collection flags.
#[derive(Debug, Clone)]
pub struct GcConfig {
    /// How long a finished run's sandbox is kept on an empty disk (Mesos: 1 week).
    pub delay: Duration,
    /// The fraction of the disk to keep free (Mesos: 0.1).
    pub disk_headroom: f64,
    /// How often the disk's usage is checked (Mesos' `--disk_watch_interval`: 1 min).
    pub disk_watch_interval: Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            delay: Duration::from_secs(7 * 24 * 3600),
            disk_headroom: 0.1,
            disk_watch_interval: Duration::from_secs(60),
        }
    }
}

impl GcConfig {
    /// How old a finished run may get at this disk usage (0.0 to 1.0).
    pub fn max_age(&self, disk_usage: f64) -> Duration {
        let keep = (1.0 - self.disk_headroom - disk_usage).clamp(0.0, 1.0);
        self.delay.mul_f64(keep)
    }
}

/// Starts the collector; finished runs' sandboxes are sent to it.
pub fn spawn(
    config: GcConfig,
    work_dir: PathBuf,
    recovered: Vec<(SystemTime, PathBuf)>,
) -> mpsc::UnboundedSender<PathBuf> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(config, work_dir, recovered, rx));
    tx
}

async fn run(
    config: GcConfig,
    work_dir: PathBuf,
    mut recovered: Vec<(SystemTime, PathBuf)>,
    mut rx: mpsc::UnboundedReceiver<PathBuf>,
) {
    // Oldest first: runs arrive as they finish, so the due ones are always in front
    // and each check looks at those alone, however many runs wait.
    recovered.sort();
    let mut scheduled: VecDeque<(SystemTime, PathBuf)> = recovered.into();
    let period = config
        .disk_watch_interval
        .min(config.delay)
        .max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            finished = rx.recv() => match finished {
                Some(path) => scheduled.push_back((SystemTime::now(), path)),
                None => return,
            },
            _ = tick.tick() => collect(&config, &work_dir, &mut scheduled).await,
        }
    }
}

/// Removes the runs that are due at the disk's current usage.
async fn collect(
    config: &GcConfig,
    work_dir: &Path,
    scheduled: &mut VecDeque<(SystemTime, PathBuf)>,
) {
    if scheduled.is_empty() {
        return;
    }
    let max_age = config.max_age(disk_usage(work_dir));
    let now = SystemTime::now();
    let mut due = Vec::new();
    while let Some((at, _)) = scheduled.front() {
        if now.duration_since(*at).unwrap_or_default() < max_age {
            break;
        }
        due.extend(scheduled.pop_front().map(|(_, path)| path));
    }
    if due.is_empty() {
        return;
    }
    let removed = tokio::task::spawn_blocking(move || {
        for path in due {
            match remove(&path) {
                Ok(()) => tracing::debug!(path = %path.display(), "sandbox removed"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a sandbox")
                }
            }
        }
    })
    .await;
    if let Err(e) = removed {
        tracing::error!(error = %e, "sandbox removal stopped");
    }
}

/// Removes a run's sandbox through its parent's descriptor: however deep the
/// tenant's tree, with a bounded number of descriptors, following no link.
fn remove(sandbox: &Path) -> std::io::Result<()> {
    let (Some(parent), Some(name)) = (sandbox.parent(), sandbox.file_name()) else {
        return Err(std::io::Error::other("not a run's sandbox"));
    };
    cairn_sandbox::SandboxDir::open(parent)?
        .remove_dir_all(Path::new(name))
        .map_err(std::io::Error::from)
}

/// The used fraction of the file system holding `dir` (0 when it cannot be read:
/// the collector then keeps runs for the full delay).
fn disk_usage(dir: &Path) -> f64 {
    let Ok(stat) = nix::sys::statvfs::statvfs(dir) else {
        return 0.0;
    };
    let total = stat.blocks() as f64;
    if total <= 0.0 {
        return 0.0;
    }
    1.0 - stat.blocks_available() as f64 / total
}

/// Every run sandbox under the work dir that `live` does not hold, with when it was
/// last changed (not after now): what an agent that restarted still has to collect.
pub fn orphaned_runs(frameworks: &Path, live: &HashSet<PathBuf>) -> Vec<(SystemTime, PathBuf)> {
    let now = SystemTime::now();
    let mut runs = Vec::new();
    // frameworks/<fw>/executors/<ex>/tasks/<task>/runs/<container>
    for fw in subdirs(frameworks) {
        for ex in subdirs(&fw.join("executors")) {
            for task in subdirs(&ex.join("tasks")) {
                for run in subdirs(&task.join("runs")) {
                    if live.contains(&run) {
                        continue;
                    }
                    let changed = std::fs::symlink_metadata(&run)
                        .and_then(|m| m.modified())
                        .unwrap_or(now)
                        .min(now);
                    runs.push((changed, run));
                }
            }
        }
    }
    runs
}

/// The directories (not links) directly in `dir`.
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    // `dir` itself must be a directory, not a link: a sandbox of the layout before
    // runs (the task's directory itself) is its task user's, who may have put a
    // link named `runs` there.
    if !std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fuller_disk_keeps_sandboxes_for_less_time() {
        let config = GcConfig {
            delay: Duration::from_secs(1000),
            disk_headroom: 0.1,
            ..Default::default()
        };
        assert_eq!(config.max_age(0.0), Duration::from_secs(900));
        assert_eq!(config.max_age(0.5), Duration::from_secs(400));
        assert_eq!(config.max_age(0.95), Duration::ZERO);
    }

    #[test]
    fn orphaned_runs_skip_live_ones_and_links() {
        let root = tempfile::tempdir().unwrap();
        let runs = root.path().join("f/executors/e/tasks/t/runs");
        std::fs::create_dir_all(runs.join("live")).unwrap();
        std::fs::create_dir_all(runs.join("done")).unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), runs.join("link")).unwrap();
        // A sandbox of the old layout whose task planted `runs` as a link.
        let planted = root.path().join("f/executors/e/tasks/old");
        std::fs::create_dir_all(&planted).unwrap();
        std::fs::create_dir(outside.path().join("victim")).unwrap();
        std::os::unix::fs::symlink(outside.path(), planted.join("runs")).unwrap();
        let live = HashSet::from([runs.join("live")]);
        let found: Vec<PathBuf> = orphaned_runs(root.path(), &live)
            .into_iter()
            .map(|(at, p)| {
                assert!(at <= SystemTime::now());
                p
            })
            .collect();
        assert_eq!(found, vec![runs.join("done")]);
    }

    #[tokio::test]
    async fn finished_runs_are_removed_without_following_links() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"mine").unwrap();
        let run = root.path().join("run");
        std::fs::create_dir(&run).unwrap();
        std::os::unix::fs::symlink(outside.path(), run.join("escape")).unwrap();
        // Deeper than a process has descriptors for one each (the soft limit is 1024),
        // and past PATH_MAX: made one level at a time.
        let mut dir = std::fs::File::open(&run).unwrap();
        for _ in 0..1500 {
            let mode = nix::sys::stat::Mode::from_bits_truncate(0o755);
            nix::sys::stat::mkdirat(&dir, "d", mode).unwrap();
            let flags = nix::fcntl::OFlag::O_DIRECTORY;
            let next = nix::fcntl::openat(&dir, "d", flags, nix::sys::stat::Mode::empty()).unwrap();
            dir = std::fs::File::from(next);
        }
        drop(dir);
        let config = GcConfig {
            delay: Duration::ZERO,
            ..Default::default()
        };
        let gc = spawn(config, root.path().to_owned(), Vec::new());
        gc.send(run.clone()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while run.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the run was not removed"
            );
            tokio::task::yield_now().await;
        }
        assert_eq!(std::fs::read(outside.path().join("keep")).unwrap(), b"mine");
    }
}
