//! Starting and calling a custom executor: a component of the `cairn:executor` world
//! (`wit/executor`), the in-sandbox kind of executor, not the process an agent
//! starts.
//!
//! One instance lives as long as its executor and is called one export at a time;
//! each call is bounded by the executor's per-call timeout and by its kill handle,
//! and runs under its memory cap and disk quota. The world's host side (what the
//! guest may call, and its output budgets) is `executor_world`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;
use wasmtime::Store;

use crate::disk::DiskBudget;
use crate::engine::Sandbox;
use crate::error::{SandboxError, TaskRefused};
use crate::executor_world::{
    ExecutorBindings, ExecutorHost, ExecutorOutput, ExecutorTask, WitTaskInfo,
};
use crate::limits::MemoryLimiter;
use crate::outcome::{Exit, Limit, Usage};
use crate::program::{Kind, Program};
use crate::spec::{CancelHandle, RunSpec};
use crate::store::{StoreState, classify, classify_end, guarded, launch_failure, new_store};
use crate::wasi::WasiP2;

/// A running custom executor. After a call fails ([`Exit`] other than success) the
/// instance is dead: drop it.
pub struct ExecutorInstance {
    store: Store<StoreState<ExecutorHost>>,
    bindings: ExecutorBindings,
    spec: RunSpec,
    budget: Arc<DiskBudget>,
    cancel: CancelHandle,
    started: Instant,
    /// The instance's whole fuel budget, when it has one (`u64::MAX` for a metered
    /// program without a budget).
    fuel: Option<u64>,
}

/// One call into the executor's bindings, borrowing its store for the call.
type Call<'a, R> = Pin<Box<dyn Future<Output = wasmtime::Result<R>> + Send + 'a>>;

impl Sandbox {
    /// Instantiates a custom executor. `spec.timeout` bounds each call into it;
    /// `spec.fuel`, if set, is the instance's budget for its whole life (every call
    /// draws on it); the sandbox directory is the executor's own.
    pub async fn start_executor(
        &self,
        program: &Program,
        spec: &RunSpec,
        cancel: &CancelHandle,
        out: UnboundedSender<ExecutorOutput>,
    ) -> Result<ExecutorInstance, SandboxError> {
        let Kind::Executor(pre) = &program.kind else {
            return Err(SandboxError::WrongWorld(
                "a command, not a custom executor (cairn:executor world)".into(),
            ));
        };
        if spec.fuel.is_some() && !program.metered {
            return Err(SandboxError::Setup(
                "a fuel budget needs a program compiled with metering".into(),
            ));
        }
        let fuel = program.metered.then(|| spec.fuel.unwrap_or(u64::MAX));
        let budget = DiskBudget::new(
            spec.disk_bytes,
            &spec.sandbox_dir,
            &spec.stdout,
            &spec.stderr,
        );
        let wasi = crate::wasi::builder(spec, &budget)?;
        let p2 = WasiP2 {
            ctx: { wasi }.build(),
            table: Default::default(),
        };
        let host = ExecutorHost::new(p2, out);
        let memory_bytes = spec.memory_bytes.min(self.config.max_memory_bytes);
        let engine = pre.instance_pre().component().engine().clone();
        let limiter = MemoryLimiter::for_component(memory_bytes);
        let mut store = new_store(&engine, host, limiter, fuel, &budget)?;
        let deadline = spec.timeout.map(|t| Instant::now() + t);
        let instantiated = guarded(pre.instantiate_async(&mut store), cancel, deadline).await;
        let bindings = match instantiated {
            Ok(b) => b,
            Err(e) => {
                let refused = store.data().limiter.refused;
                return Err(launch_failure(&e, refused).unwrap_or_else(|| {
                    SandboxError::Setup(format!(
                        "the executor failed while starting: {:?}",
                        classify(&e, refused)
                    ))
                }));
            }
        };
        Ok(ExecutorInstance {
            store,
            bindings,
            spec: spec.clone(),
            budget,
            cancel: cancel.clone(),
            started: Instant::now(),
            fuel,
        })
    }
}

impl ExecutorInstance {
    /// Hands a task to the executor; `Ok(Err(_))` is the executor refusing it.
    pub async fn launch(&mut self, task: ExecutorTask) -> Result<Result<(), TaskRefused>, Exit> {
        let task_id = task.task_id.clone();
        let task: WitTaskInfo = task.into();
        let launched = self
            .call(|b, s| Box::pin(async move { b.call_launch(s, &task).await }))
            .await?;
        Ok(launched.map_err(|reason| TaskRefused { task_id, reason }))
    }

    pub async fn kill(&mut self, task_id: &str) -> Result<(), Exit> {
        let task_id = task_id.to_owned();
        self.call(|b, s| Box::pin(async move { b.call_kill(s, &task_id).await }))
            .await
    }

    pub async fn message(&mut self, data: &[u8]) -> Result<(), Exit> {
        let data = data.to_vec();
        self.call(|b, s| Box::pin(async move { b.call_message(s, &data).await }))
            .await
    }

    pub async fn shutdown(&mut self) -> Result<(), Exit> {
        self.call(|b, s| Box::pin(async move { b.call_shutdown(s).await }))
            .await
    }

    /// What the executor has used since it started.
    pub fn usage(&self) -> Usage {
        Usage {
            fuel_consumed: self
                .fuel
                .map_or(0, |f| f.saturating_sub(self.store.get_fuel().unwrap_or(f))),
            peak_memory_bytes: self.store.data().limiter.peak_bytes as u64,
            wall_time: self.started.elapsed(),
        }
    }

    async fn call<R>(
        &mut self,
        f: impl for<'a> FnOnce(
            &'a ExecutorBindings,
            &'a mut Store<StoreState<ExecutorHost>>,
        ) -> Call<'a, R>,
    ) -> Result<R, Exit> {
        self.store.data_mut().wasi.begin_call();
        let deadline = self.spec.timeout.map(|t| Instant::now() + t);
        let result = guarded(f(&self.bindings, &mut self.store), &self.cancel, deadline).await;
        let refused = self.store.data().limiter.refused;
        match result {
            Ok(r) if !self.budget.poll() => Ok(r),
            Ok(_) => Err(Exit::Limit(Limit::Disk)),
            Err(e) => Err(classify_end(&Err(e), refused, &self.budget)),
        }
    }
}
