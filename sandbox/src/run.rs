use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use crate::disk::{DiskBudget, DiskLimitExceeded, QuotaOutput};
use crate::engine::{Program, Sandbox};

/// The sandbox's usage is measured every this many epoch ticks (10 ms each).
const DISK_POLL_TICKS: u32 = 10;
use crate::error::SandboxError;
use crate::limits::MemoryLimiter;

/// Everything one run of a command module needs from its task.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// argv, including argv[0].
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The task's sandbox: the only directory the guest can see, preopened as both `.` and `/`.
    pub sandbox_dir: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// Cap on linear memory (the task's `mem`).
    pub memory_bytes: usize,
    /// Deterministic CPU budget (`container.wasm.fuel`); `None` is unlimited.
    pub fuel: Option<u64>,
    /// Wall-clock bound (`max_completion_time`); `None` is unlimited.
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
    /// `_start` returned (0) or the guest called `proc_exit`.
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

/// Stops a run from another thread at the next epoch tick.
#[derive(Debug, Clone, Default)]
pub struct CancelHandle(Arc<AtomicBool>);

impl CancelHandle {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

pub(crate) struct StoreState {
    pub(crate) wasi: WasiP1Ctx,
    limiter: MemoryLimiter,
    /// Checked by host calls that block (`poll_oneoff`), where epochs cannot reach.
    pub(crate) cancel: CancelHandle,
    pub(crate) deadline: Option<Instant>,
}

/// Raised from the epoch callback to stop a guest; never seen outside this module.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Interrupted {
    #[error("wall-clock limit reached")]
    Deadline,
    #[error("killed")]
    Cancelled,
}

impl Sandbox {
    /// Runs a command module to completion on the calling thread. Blocking: call it
    /// from a thread of its own, never from an async task.
    pub fn run(
        &self,
        program: &Program,
        spec: &RunSpec,
        cancel: &CancelHandle,
    ) -> Result<RunOutcome, SandboxError> {
        let started = Instant::now();
        let memory_bytes = spec.memory_bytes.min(self.config.max_memory_bytes);
        let budget = DiskBudget::new(
            spec.disk_bytes,
            &spec.sandbox_dir,
            &spec.stdout,
            &spec.stderr,
        );
        let wasi = wasi_ctx(spec, &budget)?;
        if spec.fuel.is_some() && !program.metered {
            return Err(SandboxError::Setup(
                "a fuel budget needs a program compiled with metering".into(),
            ));
        }
        let mut store = Store::new(
            program.pre.module().engine(),
            StoreState {
                wasi,
                limiter: MemoryLimiter::new(memory_bytes),
                cancel: cancel.clone(),
                deadline: spec.timeout.map(|t| started + t),
            },
        );
        store.limiter(|s| &mut s.limiter);
        let fuel = spec.fuel.unwrap_or(u64::MAX);
        if program.metered {
            store
                .set_fuel(fuel)
                .map_err(|e| SandboxError::Setup(format!("{e:#}")))?;
        }
        let deadline = spec.timeout.map(|t| started + t);
        let cancel_flag = cancel.clone();
        let disk = budget.clone();
        let mut ticks = 0u32;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if cancel_flag.is_cancelled() {
                return Err(Interrupted::Cancelled.into());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Interrupted::Deadline.into());
            }
            ticks = ticks.wrapping_add(1);
            if ticks.is_multiple_of(DISK_POLL_TICKS) && disk.poll() {
                return Err(DiskLimitExceeded.into());
            }
            Ok(UpdateDeadline::Continue(1))
        });

        let instance = program.pre.instantiate(&mut store);
        if let Err(e) = &instance
            && e.downcast_ref::<Trap>().is_none()
            && !store.data().limiter.refused
        {
            // Not the guest's doing (e.g. every instance slot of the pool is taken):
            // the task could not be launched.
            return Err(SandboxError::Setup(format!(
                "cannot instantiate the module: {e:#}"
            )));
        }
        let result = instance
            .and_then(|instance| instance.get_typed_func::<(), ()>(&mut store, "_start"))
            .and_then(|start| start.call(&mut store, ()));

        let state = store.data();
        let refused_memory = state.limiter.refused;
        let usage = Usage {
            fuel_consumed: fuel.saturating_sub(store.get_fuel().unwrap_or(fuel)),
            peak_memory_bytes: state.limiter.peak_bytes as u64,
            wall_time: started.elapsed(),
        };
        // A run that wrote past its quota and ended (even by its own exit, as a
        // guest that ignores its write errors may) is a disk limitation, unless a
        // kill, its deadline or its fuel ended it; a last poll catches files written
        // since the previous one.
        let refused_write =
            matches!(&result, Err(e) if e.downcast_ref::<DiskLimitExceeded>().is_some());
        let exit = match &result {
            Ok(()) => Exit::Code(0),
            Err(e) => classify(e, refused_memory),
        };
        let ended_by_host = matches!(exit, Exit::Killed | Exit::Limit(Limit::Time | Limit::Fuel));
        let over_quota = || budget.exceeded.load(Ordering::Relaxed) || budget.poll();
        let exit = if refused_write || (!ended_by_host && over_quota()) {
            Exit::Limit(Limit::Disk)
        } else {
            exit
        };
        Ok(RunOutcome { exit, usage })
    }
}

fn classify(e: &wasmtime::Error, refused_memory: bool) -> Exit {
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
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Exit::Limit(Limit::Fuel),
        _ if refused_memory => Exit::Limit(Limit::Memory),
        Some(trap) => Exit::Trap(trap.to_string()),
        None => Exit::Trap(format!("{e:#}")),
    }
}

fn wasi_ctx(spec: &RunSpec, budget: &Arc<DiskBudget>) -> Result<WasiP1Ctx, SandboxError> {
    let open = |path: &PathBuf| {
        File::options()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| SandboxError::Setup(format!("opening {}: {e}", path.display())))
    };
    let mut builder = WasiCtxBuilder::new();
    builder
        .args(&spec.args)
        .envs(&spec.env)
        .stdout(QuotaOutput::new(open(&spec.stdout)?, budget.clone()))
        .stderr(QuotaOutput::new(open(&spec.stderr)?, budget.clone()))
        // Deny by default: no sockets unless a later grant says so.
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    for guest in [".", "/"] {
        builder
            .preopened_dir(&spec.sandbox_dir, guest, FsPerms::ReadWrite)
            .map_err(|e| {
                SandboxError::Setup(format!(
                    "preopening sandbox {}: {e:#}",
                    spec.sandbox_dir.display()
                ))
            })?;
    }
    Ok(builder.build_p1())
}
