//! The WebAssembly sandbox shared by Cairn's executors and (later) scheduler plugins.
//!
//! This is the only crate that names wasmtime types: everything outside it sees
//! [`Sandbox`], [`Program`], [`RunSpec`] and [`RunOutcome`]. One [`Sandbox`] per process
//! owns the engine, its epoch ticker and the WASI linker; each run gets its own store
//! with a memory cap, an optional fuel budget and a wall-clock deadline.

mod cache;
mod disk;
mod engine;
mod error;
mod limits;
mod poll;
mod run;

pub use cache::{CacheConfig, CacheStats};
pub use engine::{Program, Sandbox, SandboxConfig};
pub use error::SandboxError;
pub use run::{CancelHandle, Exit, Limit, RunOutcome, RunSpec, Usage};
