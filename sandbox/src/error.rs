use thiserror::Error;

/// Why a module could not be prepared to run. Each message names what was wrong
/// with the module, so the task's status can carry it to the framework unchanged.
#[derive(Debug, Error)]
pub enum SandboxError {
    #[error("not a WebAssembly module or component: {0}")]
    NotWasm(String),
    #[error("invalid WebAssembly: {0}")]
    Invalid(String),
    #[error("cannot be linked: {0}")]
    Link(String),
    #[error("a component of the wrong world: {0}")]
    WrongWorld(String),
    #[error("module has no `_start` export: only WASI command modules can run as tasks")]
    NotCommand,
    #[error("sandbox set-up failed: {0}")]
    Setup(String),
}

/// A custom executor's refusal of a task (its `launch` returned an error): the
/// executor is still alive, only this task is not taken. Shows the executor's own
/// words, so a status built from it reads as the executor wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{reason}")]
pub struct TaskRefused {
    pub task_id: String,
    pub reason: String,
}
