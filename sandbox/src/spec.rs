//! What a caller hands a run: its [`RunSpec`] and the [`CancelHandle`] that stops
//! it. Plain data with no wasmtime types, so the WASI set-up and the store can take
//! them without depending on the code that runs tasks.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Everything one run of a command needs from its task.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// argv, including argv[0].
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The task's sandbox: the only directory the guest can see, preopened as `/`.
    pub sandbox_dir: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// Cap on linear memory (the task's `mem`).
    pub memory_bytes: usize,
    /// Deterministic CPU budget (`container.wasm.fuel`); `None` is unlimited.
    pub fuel: Option<u64>,
    /// Wall-clock bound (`max_completion_time`); `None` is unlimited. For a custom
    /// executor, the bound on each call into it.
    pub timeout: Option<Duration>,
    /// Bytes the sandbox may hold, stdout and stderr included (the task's `disk`).
    pub disk_bytes: u64,
}

/// Stops a run from anywhere: the run's future notices at once, even while the guest
/// sleeps in a host call.
#[derive(Debug, Clone, Default)]
pub struct CancelHandle(Arc<CancelState>);

#[derive(Debug, Default)]
struct CancelState {
    cancelled: AtomicBool,
    notify: tokio::sync::Notify,
}

impl CancelHandle {
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    /// Resolves once [`cancel`](Self::cancel) has been called.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}
