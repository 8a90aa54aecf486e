//! Hosting a custom executor: a component of the `cairn:executor` world (`wit/`).
//!
//! One instance lives as long as its executor and is called one export at a time;
//! each call is bounded by the executor's per-call timeout and by its kill handle,
//! and runs under its memory cap and disk quota. What the guest sends through the
//! `host` interface goes out on a channel, bounded per call: a hostile executor
//! cannot flood its host.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;
use wasmtime::Store;
use wasmtime_wasi::{WasiCtxView, WasiView};

use crate::disk::DiskBudget;
use crate::engine::{Kind, Program, Sandbox};
use crate::error::SandboxError;
use crate::limits::MemoryLimiter;
use crate::run::{
    CancelHandle, Exit, RunSpec, StoreState, Usage, classify, guarded, launch_failure, new_store,
};
use crate::wasi::WasiP2;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/executor",
        world: "executor",
        exports: { default: async },
    });
}

pub(crate) use bindings::ExecutorPre;
use bindings::cairn::executor::host::Host;
use bindings::cairn::executor::types::{TaskInfo as WitTaskInfo, TaskState as WitTaskState};

/// Most outputs (status updates, messages, log lines) one call may send.
const MAX_OUTPUTS_PER_CALL: usize = 1_000;
/// And no more bytes than this in all of them together: the guest could otherwise
/// send one large buffer many times and have the host copy it each time.
const MAX_OUTPUT_BYTES_PER_CALL: usize = 4 << 20;
/// Largest framework message an executor may send.
const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Log lines are cut to this length.
const MAX_LOG_LINE: usize = 4096;

/// A task as a custom executor sees it.
#[derive(Debug, Clone, Default)]
pub struct ExecutorTask {
    pub task_id: String,
    pub name: String,
    pub arguments: Vec<String>,
    pub environment: Vec<(String, String)>,
    pub data: Vec<u8>,
}

/// A task state a custom executor may report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutorTaskState {
    Starting,
    Running,
    Finished,
    Failed,
    Killed,
    Error,
}

/// What a custom executor sends its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecutorOutput {
    Status {
        task_id: String,
        state: ExecutorTaskState,
        message: String,
    },
    Message(Vec<u8>),
    Log(String),
}

/// The store data of a custom executor: WASI p2 plus Cairn's host interface.
pub(crate) struct ExecutorHost {
    p2: WasiP2,
    out: UnboundedSender<ExecutorOutput>,
    /// Outputs sent during the current call, and their bytes.
    sent: usize,
    sent_bytes: usize,
    over_budget: bool,
}

impl WasiView for StoreState<ExecutorHost> {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi.p2.ctx,
            table: &mut self.wasi.p2.table,
        }
    }
}

impl ExecutorHost {
    /// Passes an output on within the call's budgets; past them, drops it (outputs
    /// are best effort: a status the executor fails to send leaves its task to the
    /// kill grace period or the executor's end).
    fn emit(&mut self, output: ExecutorOutput, bytes: usize) {
        self.sent += 1;
        self.sent_bytes = self.sent_bytes.saturating_add(bytes);
        if self.sent > MAX_OUTPUTS_PER_CALL || self.sent_bytes > MAX_OUTPUT_BYTES_PER_CALL {
            if !self.over_budget {
                self.over_budget = true;
                tracing::warn!(
                    "custom executor sent more than {MAX_OUTPUTS_PER_CALL} outputs or \
                     {MAX_OUTPUT_BYTES_PER_CALL} bytes in one call; dropping the rest"
                );
            }
            return;
        }
        let _ = self.out.send(output);
    }
}

impl bindings::cairn::executor::types::Host for StoreState<ExecutorHost> {}

impl Host for StoreState<ExecutorHost> {
    fn send_status(&mut self, task_id: String, state: WitTaskState, message: String) {
        let state = match state {
            WitTaskState::TaskStarting => ExecutorTaskState::Starting,
            WitTaskState::TaskRunning => ExecutorTaskState::Running,
            WitTaskState::TaskFinished => ExecutorTaskState::Finished,
            WitTaskState::TaskFailed => ExecutorTaskState::Failed,
            WitTaskState::TaskKilled => ExecutorTaskState::Killed,
            WitTaskState::TaskError => ExecutorTaskState::Error,
        };
        let message = truncate(message, MAX_LOG_LINE);
        let bytes = task_id.len() + message.len();
        self.wasi.emit(
            ExecutorOutput::Status {
                task_id,
                state,
                message,
            },
            bytes,
        );
    }

    fn send_message(&mut self, data: Vec<u8>) {
        if data.len() > MAX_MESSAGE_BYTES {
            tracing::warn!(
                bytes = data.len(),
                "custom executor message too large; dropped"
            );
            return;
        }
        let bytes = data.len();
        self.wasi.emit(ExecutorOutput::Message(data), bytes);
    }

    fn log(&mut self, line: String) {
        let line = truncate(line, MAX_LOG_LINE);
        let bytes = line.len();
        self.wasi.emit(ExecutorOutput::Log(line), bytes);
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

pub(crate) fn add_to_linker(
    linker: &mut wasmtime::component::Linker<StoreState<ExecutorHost>>,
) -> wasmtime::Result<()> {
    bindings::Executor::add_to_linker::<_, wasmtime::component::HasSelf<_>>(linker, |s| s)
}

/// A running custom executor. After a call fails ([`Exit`] other than success) the
/// instance is dead: drop it.
pub struct ExecutorInstance {
    store: Store<StoreState<ExecutorHost>>,
    bindings: bindings::Executor,
    spec: RunSpec,
    budget: Arc<DiskBudget>,
    cancel: CancelHandle,
    started: Instant,
    /// The instance's whole fuel budget, when it has one (`u64::MAX` for a metered
    /// program without a budget).
    fuel: Option<u64>,
}

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
        let host = ExecutorHost {
            p2: WasiP2 {
                ctx: { wasi }.build(),
                table: Default::default(),
            },
            out,
            sent: 0,
            sent_bytes: 0,
            over_budget: false,
        };
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
    /// Hands a task to the executor; `Ok(Err(why))` is the executor refusing it.
    pub async fn launch(&mut self, task: ExecutorTask) -> Result<Result<(), String>, Exit> {
        let task = WitTaskInfo {
            task_id: task.task_id,
            name: task.name,
            arguments: task.arguments,
            environment: task.environment,
            data: task.data,
        };
        self.call(|b, s| Box::pin(async move { b.call_launch(s, &task).await }))
            .await
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
            &'a bindings::Executor,
            &'a mut Store<StoreState<ExecutorHost>>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = wasmtime::Result<R>> + Send + 'a>,
        >,
    ) -> Result<R, Exit> {
        let host = &mut self.store.data_mut().wasi;
        host.sent = 0;
        host.sent_bytes = 0;
        host.over_budget = false;
        let deadline = self.spec.timeout.map(|t| Instant::now() + t);
        let result = guarded(f(&self.bindings, &mut self.store), &self.cancel, deadline).await;
        let refused = self.store.data().limiter.refused;
        match result {
            Ok(r) if !self.budget.poll() => Ok(r),
            Ok(_) => Err(Exit::Limit(crate::run::Limit::Disk)),
            Err(e) => Err(crate::run::classify_end(&Err(e), refused, &self.budget)),
        }
    }
}
