//! The agent's work dir layout (after Mesos'):
//!
//! ```text
//! <work_dir>/agent.sock                                   executor API socket
//! <work_dir>/meta/checkpoint.log                          the checkpoint (see `checkpoint`)
//! <work_dir>/meta/boot_id                                 the boot the checkpoint belongs to
//! <work_dir>/meta/cache.key                               authenticates compiled artifacts
//! <work_dir>/cache/wasm/                                  the compile cache (see cairn-sandbox)
//! <work_dir>/cache/fetch/                                 the fetcher cache (see `fetcher`)
//! <work_dir>/frameworks/<fw>/executors/<ex>/              executor dir: executor.log, pid
//! <work_dir>/frameworks/<fw>/executors/<ex>/tasks/<task>/ task sandbox: stdout, stderr, files
//! ```
//!
//! Every id used as a path component has passed `cairn_api::ids::is_safe_id`.

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

    /// Precompiled wasm artifacts shared by the agent's executors.
    pub fn compile_cache(&self) -> PathBuf {
        self.root.join("cache").join("wasm")
    }

    /// URIs fetched with `cache: true`, named by the sha256 of their content.
    pub fn fetch_cache(&self) -> PathBuf {
        self.root.join("cache").join("fetch")
    }

    pub fn boot_id_file(&self) -> PathBuf {
        self.root.join("meta").join("boot_id")
    }

    pub fn executor_dir(&self, framework: &str, executor: &str) -> PathBuf {
        self.root
            .join("frameworks")
            .join(framework)
            .join("executors")
            .join(executor)
    }

    pub fn sandbox(&self, framework: &str, executor: &str, task: &str) -> PathBuf {
        self.executor_dir(framework, executor)
            .join("tasks")
            .join(task)
    }
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
