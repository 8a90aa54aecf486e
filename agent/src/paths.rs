//! The agent's work dir layout (after Mesos'):
//!
//! ```text
//! <work_dir>/agent.sock                                   executor API socket
//! <work_dir>/meta/checkpoint.log                          the checkpoint (see `checkpoint`)
//! <work_dir>/meta/boot_id                                 the boot the checkpoint belongs to
//! <work_dir>/meta/cache.key                               authenticates compiled artifacts
//! <work_dir>/artifacts/                                   compiled programs (see `artifact_file`)
//! <work_dir>/cache/fetch/                                 the fetcher cache (see `fetcher`)
//! <work_dir>/frameworks/<fw>/executors/<ex>/              executor dir: executor.log, pid
//! <work_dir>/frameworks/<fw>/executors/<ex>/tasks/<task>/runs/<container>/
//!                                                         one run's sandbox: stdout, stderr, files
//! ```
//!
//! Every id used as a path component has passed `cairn_api::ids::is_safe_id`. Each
//! run of a task (a launch, or a relaunch of a reused task id) gets a sandbox of its
//! own, as Mesos' `runs/<container-id>`: nothing an earlier run left, links
//! included, is ever in a later run's way. Container ids are time-ordered UUIDs, so
//! the newest run is the greatest name. `meta/` and `cache/` are the agent's alone
//! (mode 0700): no task's user can reach them.

use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct Paths {
    root: PathBuf,
}

impl Paths {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    pub fn socket(&self) -> PathBuf {
        self.root.join("agent.sock")
    }

    pub fn checkpoint(&self) -> PathBuf {
        self.root.join("meta").join("checkpoint.log")
    }

    /// The secret that authenticates compiled artifacts (created on first start).
    pub fn compile_cache_key(&self) -> PathBuf {
        self.root.join("meta").join("cache.key")
    }

    /// Programs the compile step compiled, for executors to load (mode 0711: an
    /// executor opens only the file the agent names).
    pub fn artifacts(&self) -> PathBuf {
        self.root.join("artifacts")
    }

    /// URIs fetched with `cache: true`, named by the sha256 of their content.
    pub fn fetch_cache(&self) -> PathBuf {
        self.root.join("cache").join("fetch")
    }

    pub fn boot_id_file(&self) -> PathBuf {
        self.root.join("meta").join("boot_id")
    }

    /// Every framework's directory is below this one.
    pub fn frameworks(&self) -> PathBuf {
        self.root.join("frameworks")
    }

    pub fn executor_dir(&self, framework: &str, executor: &str) -> PathBuf {
        self.root
            .join("frameworks")
            .join(framework)
            .join("executors")
            .join(executor)
    }

    /// Where a task's runs are, one sandbox per container id below: under its
    /// framework's executor (one per framework on an agent).
    pub fn task_dir(&self, framework: &str, task: &str) -> PathBuf {
        let executor = cairn_api::ids::executor_id_for(&cairn_api::v1::FrameworkId {
            value: framework.to_owned(),
        });
        self.executor_dir(framework, &executor.value)
            .join("tasks")
            .join(task)
    }

    /// One run's sandbox. An empty container id (a checkpoint older than runs)
    /// names the task's directory itself, where such a run's sandbox was.
    pub fn sandbox(&self, framework: &str, task: &str, container: &str) -> PathBuf {
        let dir = self.task_dir(framework, task);
        if container.is_empty() {
            return dir;
        }
        dir.join("runs").join(container)
    }

    /// The newest run's sandbox of a task, if it has one on disk. The `runs/`
    /// directory is the agent's (tasks cannot add names to it).
    pub fn latest_run(&self, framework: &str, task: &str) -> Option<PathBuf> {
        let runs = self.task_dir(framework, task).join("runs");
        // A link named `runs` (left in a sandbox of the layout before runs) is not
        // the agent's directory.
        if !std::fs::symlink_metadata(&runs).is_ok_and(|m| m.is_dir()) {
            return None;
        }
        std::fs::read_dir(&runs)
            .ok()?
            .flatten()
            .map(|e| e.file_name())
            .filter_map(|n| n.into_string().ok())
            .filter(|n| cairn_api::ids::is_safe_id(n))
            .max()
            .map(|n| runs.join(n))
    }

    /// The agent's private directories, made 0700 at start: the checkpoint, keys and
    /// caches never sit where a task's user can read or plant anything.
    pub fn private_dirs(&self) -> [PathBuf; 2] {
        [self.root.join("meta"), self.root.join("cache")]
    }
}

/// A fresh container id: a time-ordered UUID (v7), so runs sort by age.
pub fn new_container_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Creates the compile cache's key on first use: 32 random bytes only the agent's
/// user may read.
pub(crate) fn ensure_cache_key(path: &std::path::Path) -> std::io::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let mut key = uuid::Uuid::new_v4().as_bytes().to_vec();
    key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    write_atomic(path, &key)
}

/// Writes a small file crash-safely (a temp file, fsync, rename), readable by the
/// agent's user only. The temp file is created fresh, never through a file or link
/// someone else left there.
pub(crate) fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp); // a leftover of a crash mid-write
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
