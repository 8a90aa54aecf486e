//! The WebAssembly sandbox shared by Cairn's executors and (later) scheduler plugins.
//!
//! This is the only crate that names wasmtime types: everything outside it sees
//! [`Sandbox`], [`Program`], [`RunSpec`], [`RunOutcome`] and [`ExecutorInstance`].
//! One [`Sandbox`] per process owns the engines, their epoch ticker and the linkers;
//! each run gets its own store with a memory cap, an optional fuel budget, a disk
//! quota and a wall-clock deadline. Runs are async: thousands share a few threads.

mod cache;
mod disk;
mod engine;
mod error;
mod executor;
mod limits;
mod poll;
mod run;
mod wasi;

pub use cache::{CacheConfig, CacheStats};
pub use engine::{Program, ProgramKind, Sandbox, SandboxConfig};
pub use error::SandboxError;
pub use executor::{ExecutorInstance, ExecutorOutput, ExecutorTask, ExecutorTaskState};
pub use run::{CancelHandle, Exit, Limit, RunOutcome, RunSpec, Usage};
