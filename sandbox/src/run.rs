//! Running a command (a p1 module's `_start`, a p2 component's `wasi:cli/run`) to its
//! end on the async runtime. Every guest yields to tokio at each epoch tick, so one
//! executor process runs thousands of tasks on a few threads, CPU-bound ones sharing
//! them fairly; a kill or a deadline drops the running call wherever it is, in wasm
//! or asleep in a host call.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::{InstancePre, Store};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::CommandPre;

use crate::disk::DiskBudget;
use crate::engine::Sandbox;
use crate::error::SandboxError;
use crate::limits::MemoryLimiter;
use crate::outcome::{RunOutcome, Usage};
use crate::program::{Kind, Program};
use crate::spec::{CancelHandle, RunSpec};
use crate::store::{StoreState, classify_end, guarded, launch_failure, new_store};
use crate::wasi::WasiP2;

/// The bounds one run is held to, whichever kind of program it runs.
struct Bounds<'a> {
    memory_bytes: usize,
    fuel: Option<u64>,
    budget: &'a Arc<DiskBudget>,
    cancel: &'a CancelHandle,
    deadline: Option<Instant>,
}

/// How a program's call ended, and its store's (memory refused, peak memory, fuel
/// consumed).
type Ended = (wasmtime::Result<i32>, (bool, u64, u64));

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
        let budget = DiskBudget::new(
            spec.disk_bytes,
            &spec.sandbox_dir,
            &spec.stdout,
            &spec.stderr,
        );
        let bounds = Bounds {
            memory_bytes: spec.memory_bytes.min(self.config.max_memory_bytes),
            fuel: program.metered.then(|| spec.fuel.unwrap_or(u64::MAX)),
            budget: &budget,
            cancel,
            deadline: spec.timeout.map(|t| started + t),
        };
        let wasi = crate::wasi::builder(spec, &budget)?;
        let (result, state) = match &program.kind {
            Kind::Core(pre) => run_core(pre, wasi, &bounds).await?,
            Kind::Command(pre) => run_command(pre, wasi, &bounds).await?,
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

/// A p1 command module: instantiate, call `_start`.
async fn run_core(
    pre: &InstancePre<StoreState<WasiP1Ctx>>,
    wasi: WasiCtxBuilder,
    bounds: &Bounds<'_>,
) -> Result<Ended, SandboxError> {
    let wasi: WasiP1Ctx = { wasi }.build_p1();
    let limiter = MemoryLimiter::for_module(bounds.memory_bytes);
    let engine = pre.module().engine();
    let mut store = new_store(engine, wasi, limiter, bounds.fuel, bounds.budget)?;
    let result = guarded(
        async {
            let instance = pre.instantiate_async(&mut store).await.map_err(Setup)?;
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            start.call_async(&mut store, ()).await?;
            Ok(0)
        },
        bounds.cancel,
        bounds.deadline,
    )
    .await;
    Ok((result, finish_state(&store, bounds.fuel)))
}

/// A p2 command component: instantiate, call `wasi:cli/run`; its error is exit code 1.
async fn run_command(
    pre: &CommandPre<StoreState<WasiP2>>,
    wasi: WasiCtxBuilder,
    bounds: &Bounds<'_>,
) -> Result<Ended, SandboxError> {
    let wasi = WasiP2 {
        ctx: { wasi }.build(),
        table: Default::default(),
    };
    let limiter = MemoryLimiter::for_component(bounds.memory_bytes);
    let engine = pre.instance_pre().component().engine().clone();
    let mut store = new_store(&engine, wasi, limiter, bounds.fuel, bounds.budget)?;
    let result = guarded(
        async {
            let command = pre.instantiate_async(&mut store).await.map_err(Setup)?;
            let code = match command.wasi_cli_run().call_run(&mut store).await? {
                Ok(()) => 0,
                Err(()) => 1,
            };
            Ok(code)
        },
        bounds.cancel,
        bounds.deadline,
    )
    .await;
    Ok((result, finish_state(&store, bounds.fuel)))
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
