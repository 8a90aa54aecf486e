//! What the agent's core is told: by the master link, the executor socket, the
//! launcher and the HTTP API, all through one channel. A leaf: every sender and the
//! core import it, so none of them imports another.

use cairn_api::internal::{
    AgentMessage, ExecutorEvent, RegisterAgent, executor_call, master_message,
};
use tokio::sync::{mpsc, oneshot};

/// One input to the core's actor.
pub enum Input {
    /// Publish a fresh snapshot (if anything changed) before replying: the agent's
    /// HTTP API reflects every input handled before a request.
    Publish(oneshot::Sender<()>),
    /// The master link needs the registration to send (it carries our task list).
    Registration(oneshot::Sender<RegisterAgent>),
    MasterConnected {
        agent_id: String,
        to_master: mpsc::Sender<AgentMessage>,
    },
    MasterDisconnected,
    FromMaster(Box<master_message::Message>),
    ExecutorSubscribed {
        executor_id: String,
        conn: u64,
        pid: Option<i32>,
        subscribe: cairn_api::internal::ExecutorSubscribe,
        to_executor: mpsc::Sender<ExecutorEvent>,
    },
    FromExecutor {
        executor_id: String,
        conn: u64,
        call: executor_call::Call,
    },
    ExecutorDisconnected {
        executor_id: String,
        conn: u64,
    },
    ExecutorExited {
        executor_id: String,
        pid: u32,
        status: String,
    },
    /// A ports scan's findings: tasks (with their run) listening on ports they do
    /// not hold.
    PortsChecked(Vec<crate::ports::Violation<(crate::checkpoint::TaskKey, String)>>),
    Fetched {
        run: FetchedRun,
        /// The task's compiled programs, or why its sandbox or programs failed.
        result: Result<Vec<cairn_api::internal::CompiledProgram>, String>,
    },
}

/// Which run of which task a fetch was for: a task id reused while an earlier run's
/// fetch is still under way must not take that fetch's result.
#[derive(Debug, Clone)]
pub struct FetchedRun {
    pub framework_id: String,
    pub task_id: String,
    pub container_id: String,
}
