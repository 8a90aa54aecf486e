//! The agent's work dir layout (after Mesos'):
//!
//! ```text
//! <work_dir>/agent.sock                                   executor API socket
//! <work_dir>/meta/checkpoint.log                          the checkpoint (see `checkpoint`)
//! <work_dir>/meta/boot_id                                 the boot the checkpoint belongs to
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

/// Writes a small file crash-safely: a temp file, fsync, rename.
pub(crate) fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
