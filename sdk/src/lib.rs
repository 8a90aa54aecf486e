//! The guest side of Cairn: what a program running as a Cairn task can ask about
//! itself, and (with the `executor` feature) how to write a custom executor. Plain
//! WASI commands need nothing from here; the SDK names what Cairn provides so guests
//! do not hard-code it.
//!
//! # Custom executors
//!
//! A custom executor is a WebAssembly component of the `cairn:executor` world that
//! runs many tasks inside one instance. Enable the `executor` feature, implement
//! [`Executor`] on a `Default` type and export it with [`export_executor!`]:
//!
//! ```ignore
//! use cairn_sdk::{Executor, TaskInfo, TaskState, log, send_message, send_status};
//! use std::collections::BTreeSet;
//!
//! /// Keeps the tasks it runs until a framework message finishes them.
//! #[derive(Default)]
//! struct Waiter {
//!     waiting: BTreeSet<String>,
//! }
//!
//! impl Executor for Waiter {
//!     fn launch(&mut self, task: TaskInfo) -> Result<(), String> {
//!         log(&format!("launch {}", task.task_id));
//!         send_status(&task.task_id, TaskState::TaskRunning, "");
//!         self.waiting.insert(task.task_id);
//!         Ok(())
//!     }
//!
//!     fn kill(&mut self, task_id: String) {
//!         if self.waiting.remove(&task_id) {
//!             send_status(&task_id, TaskState::TaskKilled, "killed by the executor");
//!         }
//!     }
//!
//!     fn message(&mut self, data: Vec<u8>) {
//!         let text = String::from_utf8_lossy(&data);
//!         if let Some(id) = text.strip_prefix("finish ") {
//!             if self.waiting.remove(id) {
//!                 send_status(id, TaskState::TaskFinished, "finished by message");
//!                 send_message(format!("finished {id}").as_bytes());
//!             }
//!         }
//!     }
//!
//!     fn shutdown(&mut self) {
//!         for id in std::mem::take(&mut self.waiting) {
//!             send_status(&id, TaskState::TaskKilled, "executor shut down");
//!         }
//!     }
//! }
//!
//! cairn_sdk::export_executor!(Waiter);
//! ```
//!
//! Build it as a `cdylib` for `wasm32-wasip1` (linked with wasi-libc's
//! `crt1-reactor.o`) and make a component of it with
//! `cairn component new target.wasm --adapter reactor -o executor.wasm`;
//! `docs/sdk.md` has the whole recipe and what the host guarantees.

// The generated bindings name their runtime by this crate's name (so the export
// macro works in the executor's crate); this makes the same path resolve in here.
#[cfg(feature = "executor")]
extern crate self as cairn_sdk;

#[cfg(feature = "executor")]
pub mod executor;

#[cfg(feature = "executor")]
pub use executor::{Executor, TaskInfo, TaskState, log, send_message, send_status};

/// The task a guest is running as.
pub mod task {
    use std::path::PathBuf;

    /// The task's id, from `MESOS_TASK_ID` (set by Cairn's executor, as by Mesos').
    pub fn id() -> Option<String> {
        std::env::var("MESOS_TASK_ID").ok()
    }

    /// The task's sandbox: the one directory the guest can read and write.
    pub fn sandbox() -> PathBuf {
        std::env::var_os("MESOS_SANDBOX")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
    }
}
