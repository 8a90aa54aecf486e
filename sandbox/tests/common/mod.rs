//! Shared by the sandbox's tests: a blocking front for the async run.

use std::time::Duration;

use cairn_sandbox::{CancelHandle, Program, RunOutcome, RunSpec, Sandbox, SandboxError};

/// A run in `dir` with small limits: 2 MiB of memory, 64 MiB of disk, 20 s.
pub fn spec(dir: &tempfile::TempDir) -> RunSpec {
    RunSpec {
        args: vec!["t.wasm".into()],
        env: vec![],
        sandbox_dir: dir.path().to_path_buf(),
        stdout: dir.path().join("stdout"),
        stderr: dir.path().join("stderr"),
        memory_bytes: 2 << 20,
        fuel: None,
        timeout: Some(Duration::from_secs(20)),
        disk_bytes: 64 << 20,
    }
}

/// Runs a future to its end on a runtime of its own (tests call it from threads).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(future)
}

pub trait RunBlocking {
    fn run_blocking(
        &self,
        program: &Program,
        spec: &RunSpec,
        cancel: &CancelHandle,
    ) -> Result<RunOutcome, SandboxError>;
}

impl RunBlocking for Sandbox {
    fn run_blocking(
        &self,
        program: &Program,
        spec: &RunSpec,
        cancel: &CancelHandle,
    ) -> Result<RunOutcome, SandboxError> {
        block_on(self.run(program, spec, cancel))
    }
}
