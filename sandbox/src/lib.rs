//! The WebAssembly sandbox shared by Cairn's executors and (later) scheduler plugins.
//!
//! This is the only crate that names wasmtime types: everything outside it sees
//! [`Sandbox`], [`Program`], [`RunSpec`], [`RunOutcome`] and [`ExecutorInstance`].
//! One [`Sandbox`] per process owns the engines, their epoch ticker and the linkers;
//! each run gets its own store with a memory cap, an optional fuel budget, a disk
//! quota and a wall-clock deadline. Runs are async: thousands share a few threads.
//!
//! # Module map
//!
//! Each module imports only modules listed before it, so the module graph has no
//! cycle:
//!
//! - Below the engine (no wasmtime engine or linker of their own):
//!   - `error`: [`SandboxError`] and [`TaskRefused`], the crate's errors.
//!   - `spec`: [`RunSpec`] and [`CancelHandle`], what a caller hands a run.
//!   - `outcome`: [`Exit`], [`Limit`], [`Usage`], [`RunOutcome`], how a run ended.
//!   - `limits`: the memory and table limiter of a store.
//!   - `dir`: [`SandboxDir`], a sandbox directory as host code must see it: every
//!     path resolved beneath it by the kernel, following no link; the agent and
//!     the executors touch a sandbox only through it.
//!   - `disk`: the disk quota (counted output streams, sandbox usage polls;
//!     imports `dir`).
//!   - `store`: a store with a run's limits, the guard that bounds each call by its
//!     kill handle and deadline, and how a call's error becomes an [`Exit`]
//!     (imports `disk`, `error`, `limits`, `outcome`, `spec`).
//!   - `wasi`: the WASI context every guest gets (imports `dir`, `disk`, `error`,
//!     `spec`, `store`).
//!   - `poll`: an interruptible `poll_oneoff` for p1 guests (imports `store`).
//!   - `executor_world`: the host side of the `cairn:executor` WIT world, what the
//!     engine links a custom executor against, and [`ExecutorTask`],
//!     [`ExecutorTaskState`], [`ExecutorOutput`] (imports `store`, `wasi`).
//!   - `program`: [`Program`] and [`ProgramKind`], a compiled and linked program
//!     (imports `executor_world`, `store`, `wasi`).
//! - `engine`: [`Sandbox`], [`SandboxConfig`] and [`ProgramStats`], the engines,
//!   linkers, compiling and loading, and the in-memory program table (imports the
//!   modules listed before it).
//! - Above the engine:
//!   - `artifact`: [`precompile`] and [`fingerprint`], compiling ahead of time in
//!     the agent's compile step, for executors to [`Sandbox::load`].
//!   - `run`: running a command to its end ([`Sandbox::run`]).
//!   - `custom_executor`: starting and calling a custom executor
//!     ([`Sandbox::start_executor`], [`ExecutorInstance`]); "custom executor" is
//!     the guest component, not the executor process an agent starts.

mod artifact;
mod custom_executor;
pub mod dir;
mod disk;
mod engine;
mod error;
mod executor_world;
mod limits;
mod outcome;
mod poll;
mod program;
mod run;
mod spec;
mod store;
mod wasi;

pub use artifact::{fingerprint, precompile};
pub use custom_executor::ExecutorInstance;
pub use dir::{SandboxDir, SandboxDirError};
pub use engine::{ProgramStats, Sandbox, SandboxConfig};
pub use error::{SandboxError, TaskRefused};
pub use executor_world::{ExecutorOutput, ExecutorTask, ExecutorTaskState};
pub use outcome::{Exit, Limit, RunOutcome, Usage};
pub use program::{Program, ProgramKind};
pub use spec::{CancelHandle, RunSpec};
