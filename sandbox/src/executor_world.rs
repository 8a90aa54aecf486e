//! The host side of the `cairn:executor` WIT world (`wit/executor`): the bindings,
//! the `host` interface a custom executor calls, and the types its host sees.
//!
//! Only what the engine needs to link a custom executor lives here; starting and
//! calling one is `custom_executor`'s job. What the guest sends through the `host`
//! interface goes out on a channel, bounded per call: a hostile executor cannot
//! flood its host.

use tokio::sync::mpsc::UnboundedSender;
use wasmtime_wasi::{WasiCtxView, WasiView};

use crate::store::StoreState;
use crate::wasi::WasiP2;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/executor",
        world: "executor",
        exports: { default: async },
    });
}

// The world's bindings: `ExecutorBindings` calls a custom executor's exports,
// `ExecutorPre` is one linked and ready to instantiate.
use bindings::cairn::executor::host::Host;
pub(crate) use bindings::cairn::executor::types::TaskInfo as WitTaskInfo;
use bindings::cairn::executor::types::TaskState as WitTaskState;
pub(crate) use bindings::{Executor as ExecutorBindings, ExecutorPre};

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

impl From<ExecutorTask> for WitTaskInfo {
    fn from(task: ExecutorTask) -> Self {
        Self {
            task_id: task.task_id,
            name: task.name,
            arguments: task.arguments,
            environment: task.environment,
            data: task.data,
        }
    }
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
    pub(crate) fn new(p2: WasiP2, out: UnboundedSender<ExecutorOutput>) -> Self {
        Self {
            p2,
            out,
            sent: 0,
            sent_bytes: 0,
            over_budget: false,
        }
    }

    /// Gives the next call its own output budget: the budgets are per call.
    pub(crate) fn begin_call(&mut self) {
        self.sent = 0;
        self.sent_bytes = 0;
        self.over_budget = false;
    }

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

/// Adds the world's `host` interface; the engine's executor linker also has WASI p2.
pub(crate) fn add_to_linker(
    linker: &mut wasmtime::component::Linker<StoreState<ExecutorHost>>,
) -> wasmtime::Result<()> {
    ExecutorBindings::add_to_linker::<_, wasmtime::component::HasSelf<_>>(linker, |s| s)
}
