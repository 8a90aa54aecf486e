//! A store with a run's limits, and how a call into it ended.
//!
//! Commands and custom executors share this: each store gets a memory cap, an
//! optional fuel budget and an epoch callback that yields to tokio and polls the
//! disk quota; each call into it is bounded by a kill handle and a deadline; and the
//! error a call ends with is read back into an [`Exit`] the same way for both.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use wasmtime::{Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi::I32Exit;

use crate::disk::{DiskBudget, DiskLimitExceeded};
use crate::error::SandboxError;
use crate::limits::MemoryLimiter;
use crate::outcome::{Exit, Limit};
use crate::spec::CancelHandle;

/// The sandbox's usage is measured every this many epoch ticks (10 ms each).
const DISK_POLL_TICKS: u32 = 10;

/// A store's data: the guest's WASI state (p1, p2 or a custom executor's) and its
/// memory limiter.
pub(crate) struct StoreState<W> {
    pub(crate) wasi: W,
    pub(crate) limiter: MemoryLimiter,
}

/// Raised when a kill or a deadline ends a run; never seen outside this crate.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Interrupted {
    #[error("wall-clock limit reached")]
    Deadline,
    #[error("killed")]
    Cancelled,
}

/// A store with the run's limits: memory, fuel, and an epoch callback that yields to
/// tokio every tick and polls the disk quota every few.
pub(crate) fn new_store<W: Send + 'static>(
    engine: &Engine,
    wasi: W,
    limiter: MemoryLimiter,
    fuel: Option<u64>,
    budget: &Arc<DiskBudget>,
) -> Result<Store<StoreState<W>>, SandboxError> {
    let mut store = Store::new(engine, StoreState { wasi, limiter });
    store.limiter(|s| &mut s.limiter);
    if let Some(fuel) = fuel {
        store
            .set_fuel(fuel)
            .map_err(|e| SandboxError::Setup(format!("{e:#}")))?;
    }
    let disk = budget.clone();
    let mut ticks = 0u32;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        ticks = ticks.wrapping_add(1);
        if ticks.is_multiple_of(DISK_POLL_TICKS) && disk.poll_in_background() {
            return Err(DiskLimitExceeded.into());
        }
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(tokio::task::yield_now()),
        ))
    });
    Ok(store)
}

/// Runs `call` until it ends, the handle is cancelled, or the deadline passes; the
/// latter two drop the call wherever the guest is.
pub(crate) async fn guarded<T>(
    call: impl Future<Output = wasmtime::Result<T>>,
    cancel: &CancelHandle,
    deadline: Option<Instant>,
) -> wasmtime::Result<T> {
    let expiry = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        () = cancel.cancelled() => Err(Interrupted::Cancelled.into()),
        () = expiry => Err(Interrupted::Deadline.into()),
        result = call => result,
    }
}

/// A failed instantiation that is not the guest's doing (every slot of the pool is
/// taken, say) means the task could not be launched at all.
pub(crate) fn launch_failure(e: &wasmtime::Error, refused_memory: bool) -> Option<SandboxError> {
    let guest = e.downcast_ref::<Trap>().is_some()
        || e.downcast_ref::<Interrupted>().is_some()
        || e.downcast_ref::<DiskLimitExceeded>().is_some()
        || refused_memory;
    (!guest).then(|| SandboxError::Setup(format!("cannot instantiate the program: {e:#}")))
}

/// How a run ended. A run that wrote past its quota and ended (even by its own exit,
/// as a guest that ignores its write errors may) is a disk limitation, unless a kill,
/// its deadline or its fuel ended it; a last poll catches files written since the
/// previous one.
pub(crate) fn classify_end(
    result: &wasmtime::Result<i32>,
    refused_memory: bool,
    budget: &DiskBudget,
) -> Exit {
    let refused_write = matches!(result, Err(e) if e.downcast_ref::<DiskLimitExceeded>().is_some());
    let exit = match result {
        // A p2 command's `run` returning its error after a refused growth, as a
        // `proc_exit` with a failure status would be.
        Ok(code) => exit_code(*code, refused_memory),
        Err(e) => classify(e, refused_memory),
    };
    let ended_by_host = matches!(exit, Exit::Killed | Exit::Limit(Limit::Time | Limit::Fuel));
    let over_quota = || budget.exceeded.load(Ordering::Relaxed) || budget.poll();
    if refused_write || (!ended_by_host && over_quota()) {
        Exit::Limit(Limit::Disk)
    } else {
        exit
    }
}

/// A guest that fails once a growth of its memory was refused (malloc returned NULL
/// and it gave up) failed for want of memory; one that exits 0 coped with it.
fn exit_code(code: i32, refused_memory: bool) -> Exit {
    if code != 0 && refused_memory {
        Exit::Limit(Limit::Memory)
    } else {
        Exit::Code(code)
    }
}

/// How a call's error ends the run: a guest's exit, a host interruption, a limit,
/// or a trap (after a refused growth, the trap of an allocator that aborts).
pub(crate) fn classify(e: &wasmtime::Error, refused_memory: bool) -> Exit {
    if let Some(I32Exit(code)) = e.downcast_ref::<I32Exit>() {
        return exit_code(*code, refused_memory);
    }
    if let Some(interrupted) = e.downcast_ref::<Interrupted>() {
        return match interrupted {
            Interrupted::Deadline => Exit::Limit(Limit::Time),
            Interrupted::Cancelled => Exit::Killed,
        };
    }
    if e.downcast_ref::<DiskLimitExceeded>().is_some() {
        return Exit::Limit(Limit::Disk);
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Exit::Limit(Limit::Fuel),
        _ if refused_memory => Exit::Limit(Limit::Memory),
        Some(trap) => Exit::Trap(trap.to_string()),
        None => Exit::Trap(format!("{e:#}")),
    }
}
