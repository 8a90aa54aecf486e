//! Custom executors: a component of the `cairn:executor` world (`wit/executor`).
//!
//! Cairn's executor process hosts one instance of the component per executor id and
//! calls it one call at a time, in order: [`Executor::launch`] for each new task,
//! [`Executor::kill`], [`Executor::message`] and finally [`Executor::shutdown`]. The
//! component reports back through [`send_status`], [`send_message`] and [`log`].
//!
//! wit-bindgen stays behind this module: an executor implements [`Executor`] on a
//! `Default` type and exports it with [`export_executor!`](crate::export_executor);
//! it never names generated bindings. See the crate documentation for an example.

use std::any::Any;
use std::cell::RefCell;

/// The bindings wit-bindgen generates for the world. Public only because the export
/// macro, expanded in the executor's crate, must reach them; not part of the API.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        // Relative to this crate's manifest: the world lives beside the host, which
        // is built from the same file, so both sides always agree on it.
        path: "../wit/executor",
        world: "cairn:executor/executor",
        // The export macro is expanded in the executor's crate, which depends on
        // cairn-sdk only: it must be public and find the bindings (and the wit-bindgen
        // runtime) through this crate's paths.
        pub_export_macro: true,
        default_bindings_module: "cairn_sdk::executor::bindings",
        runtime_path: "cairn_sdk::executor::__private::wit_bindgen::rt",
    });
}

pub use bindings::cairn::executor::types::{TaskInfo, TaskState};

/// A custom executor: the state of one executor instance and what it does on each
/// call from the host.
///
/// The host creates one value with `Default` before the first call and keeps it for
/// the instance's lifetime (as long as the executor runs), so it can keep tasks
/// between calls. Calls never overlap: wasm is single-threaded and the host makes
/// them one at a time, in order.
///
/// Every call runs under the executor's memory cap and is interrupted if it runs too
/// long: a task doing real work reports [`TaskState::TaskRunning`] from `launch` and
/// finishes in a later call (a message, a kill), not inside `launch`.
pub trait Executor: Default + 'static {
    /// A new task. `Err` fails the task with that message (the executor need not
    /// report anything else for it); `Ok` means the executor now owns the task and
    /// reports its states with [`send_status`].
    fn launch(&mut self, task: TaskInfo) -> Result<(), String>;

    /// The framework asked to kill a task: report [`TaskState::TaskKilled`] (or
    /// another terminal state). If the executor does not within the task's kill
    /// grace period, the host reports the task killed for it.
    fn kill(&mut self, task_id: String);

    /// Opaque bytes a framework sent to this executor (a framework message).
    fn message(&mut self, data: Vec<u8>);

    /// The executor is being shut down. Tasks not in a terminal state afterwards are
    /// reported killed by the host; the default does nothing more than that.
    fn shutdown(&mut self) {}
}

/// Reports a state of one of this executor's tasks. The host makes the update
/// reliable (checkpointed and retried until the framework acknowledges it); updates
/// for a task this executor was not given, or after the task's terminal state, are
/// dropped.
pub fn send_status(task_id: &str, state: TaskState, message: &str) {
    bindings::cairn::executor::host::send_status(task_id, state, message);
}

/// Sends opaque bytes to the framework's scheduler (it arrives as a MESSAGE event).
pub fn send_message(data: &[u8]) {
    bindings::cairn::executor::host::send_message(data);
}

/// Writes one line to the executor's log (in its sandbox on the agent).
pub fn log(line: &str) {
    bindings::cairn::executor::host::log(line);
}

/// What [`export_executor!`](crate::export_executor) expands to needs; not part of
/// the API.
#[doc(hidden)]
pub mod __private {
    use super::*;

    pub use wit_bindgen;

    thread_local! {
        /// The one executor value of this instance, created on the first call. Type
        /// erased because a `thread_local!` cannot be generic; a component exports one
        /// executor type, so the downcast always succeeds.
        static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    /// Runs `f` on the instance, creating it first. `None` when the instance is
    /// already borrowed: that would be a call re-entering another, which the host
    /// never makes, and is logged rather than a panic (a trap would end the executor).
    fn with<E: Executor, R>(call: &str, f: impl FnOnce(&mut E) -> R) -> Option<R> {
        INSTANCE.with(|cell| {
            let Ok(mut slot) = cell.try_borrow_mut() else {
                log(&format!("cairn-sdk: re-entrant {call} call ignored"));
                return None;
            };
            let instance = slot.get_or_insert_with(|| Box::new(E::default()));
            // Only `E` is ever stored (one executor type per component).
            instance.downcast_mut::<E>().map(f)
        })
    }

    /// The generated `Guest` trait implemented for an executor type: the export macro
    /// wants a type implementing `Guest`, which a user type cannot (its calls are
    /// `&mut self` methods on one value, `Guest`'s are free functions).
    pub struct Exported<E>(std::marker::PhantomData<E>);

    impl<E: Executor> bindings::Guest for Exported<E> {
        fn launch(task: TaskInfo) -> Result<(), String> {
            with::<E, _>("launch", |e| e.launch(task))
                .unwrap_or_else(|| Err("executor busy: re-entrant launch".into()))
        }

        fn kill(task_id: String) {
            with::<E, _>("kill", |e| e.kill(task_id));
        }

        fn message(data: Vec<u8>) {
            with::<E, _>("message", |e| e.message(data));
        }

        fn shutdown() {
            with::<E, _>("shutdown", |e| e.shutdown());
        }
    }
}

/// Exports a type implementing [`Executor`](crate::executor::Executor) as this
/// component's `cairn:executor` world. Use it once, in the executor's crate (a
/// `cdylib`):
///
/// ```ignore
/// cairn_sdk::export_executor!(MyExecutor);
/// ```
#[macro_export]
macro_rules! export_executor {
    ($executor:ty) => {
        const _: () = {
            // The generated export macro takes an identifier, not a path or a generic.
            type __CairnSdkExecutor = $crate::executor::__private::Exported<$executor>;
            $crate::executor::bindings::export!(
                __CairnSdkExecutor with_types_in $crate::executor::bindings
            );
        };
    };
}
