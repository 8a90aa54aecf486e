//! Running a command (a p1 module's `_start`, a p2 component's `wasi:cli/run`) to its
//! end on the async runtime. Every guest yields to tokio at each epoch tick, so one
//! executor process runs thousands of tasks on a few threads, CPU-bound ones sharing
//! them fairly; a kill or a deadline drops the running call wherever it is, in wasm
//! or asleep in a host call.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::{Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::p1::WasiP1Ctx;

use crate::disk::{DiskBudget, DiskLimitExceeded};
use crate::engine::{Kind, Program, Sandbox};
use crate::error::SandboxError;
use crate::limits::MemoryLimiter;
use crate::wasi::WasiP2;

/// The sandbox's usage is measured every this many epoch ticks (10 ms each).
const DISK_POLL_TICKS: u32 = 10;

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

/// A limit a run hit; each maps onto one Mesos `REASON_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Memory,
    Fuel,
    Time,
    Disk,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The command returned (0), called `exit`, or (p2) returned an error (1).
    Code(i32),
    Limit(Limit),
    /// Stopped through its [`CancelHandle`].
    Killed,
    /// Any other trap, with wasmtime's description.
    Trap(String),
}

/// What a run consumed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub fuel_consumed: u64,
    pub peak_memory_bytes: u64,
    pub wall_time: Duration,
}

#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub exit: Exit,
    pub usage: Usage,
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

impl Sandbox {
    /// Runs a command (a p1 module or a p2 component exporting `wasi:cli/run`) to
    /// its end.
    pub async fn run(
        &self,
        program: &Program,
        spec: &RunSpec,
        cancel: &CancelHandle,
    ) -> Result<RunOutcome, SandboxError> {
        let started = Instant::now();
        if spec.fuel.is_some() && !program.metered {
            return Err(SandboxError::Setup(
                "a fuel budget needs a program compiled with metering".into(),
            ));
        }
        let memory_bytes = spec.memory_bytes.min(self.config.max_memory_bytes);
        let budget = DiskBudget::new(
            spec.disk_bytes,
            &spec.sandbox_dir,
            &spec.stdout,
            &spec.stderr,
        );
        let deadline = spec.timeout.map(|t| started + t);
        let fuel = program.metered.then(|| spec.fuel.unwrap_or(u64::MAX));
        let wasi = crate::wasi::builder(spec, &budget)?;
        let (result, state) = match &program.kind {
            Kind::Core(pre) => {
                let wasi: WasiP1Ctx = { wasi }.build_p1();
                let limiter = MemoryLimiter::for_module(memory_bytes);
                let mut store = new_store(pre.module().engine(), wasi, limiter, fuel, &budget)?;
                let result = guarded(
                    async {
                        let instance = pre.instantiate_async(&mut store).await.map_err(Setup)?;
                        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                        start.call_async(&mut store, ()).await?;
                        Ok(0)
                    },
                    cancel,
                    deadline,
                )
                .await;
                (result, finish_state(&store, fuel))
            }
            Kind::Command(pre) => {
                let wasi = WasiP2 {
                    ctx: { wasi }.build(),
                    table: Default::default(),
                };
                let limiter = MemoryLimiter::for_component(memory_bytes);
                let engine = pre.instance_pre().component().engine().clone();
                let mut store = new_store(&engine, wasi, limiter, fuel, &budget)?;
                let result = guarded(
                    async {
                        let command = pre.instantiate_async(&mut store).await.map_err(Setup)?;
                        let code = match command.wasi_cli_run().call_run(&mut store).await? {
                            Ok(()) => 0,
                            Err(()) => 1,
                        };
                        Ok(code)
                    },
                    cancel,
                    deadline,
                )
                .await;
                (result, finish_state(&store, fuel))
            }
            Kind::Executor(_) => {
                return Err(SandboxError::Setup(
                    "a custom executor is not a command: start it with start_executor".into(),
                ));
            }
        };
        let (refused_memory, peak_memory_bytes, fuel_consumed) = state;
        let result = match result.map_err(|e| e.downcast::<Setup>()) {
            Ok(code) => Ok(code),
            Err(Ok(Setup(inner))) => match launch_failure(&inner, refused_memory) {
                Some(failure) => return Err(failure),
                None => Err(inner),
            },
            Err(Err(other)) => Err(other),
        };
        let usage = Usage {
            fuel_consumed,
            peak_memory_bytes,
            wall_time: started.elapsed(),
        };
        Ok(RunOutcome {
            exit: classify_end(&result, refused_memory, &budget),
            usage,
        })
    }
}

/// Marks an instantiation error, which may be the host's fault rather than the guest's.
#[derive(Debug, thiserror::Error)]
#[error("instantiation failed: {0:#}")]
struct Setup(wasmtime::Error);

/// (memory refused, peak memory, fuel consumed) of a finished store.
fn finish_state<W>(store: &Store<StoreState<W>>, fuel: Option<u64>) -> (bool, u64, u64) {
    let limiter = &store.data().limiter;
    let consumed = fuel.map_or(0, |f| f.saturating_sub(store.get_fuel().unwrap_or(f)));
    (limiter.refused, limiter.peak_bytes as u64, consumed)
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
        Ok(code) => Exit::Code(*code),
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

pub(crate) fn classify(e: &wasmtime::Error, refused_memory: bool) -> Exit {
    if let Some(I32Exit(code)) = e.downcast_ref::<I32Exit>() {
        return if *code != 0 && refused_memory {
            Exit::Limit(Limit::Memory)
        } else {
            Exit::Code(*code)
        };
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
