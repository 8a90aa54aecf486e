//! The agent's work dir layout (after Mesos'):
//!
//! ```text
//! <work_dir>/agent.sock                                   executor API socket
//! <work_dir>/meta/agent_id                                the id this agent registered with
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

    pub fn agent_id_file(&self) -> PathBuf {
        self.root.join("meta").join("agent_id")
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
