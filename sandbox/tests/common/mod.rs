//! Shared by the sandbox's tests: a blocking front for the async run.

use cairn_sandbox::{CancelHandle, Program, RunOutcome, RunSpec, Sandbox, SandboxError};

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
