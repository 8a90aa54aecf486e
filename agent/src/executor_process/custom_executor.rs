//! Custom executors: components of the `cairn:executor` world, one instance per
//! executor id, hosted inside the framework's executor process.
//!
//! Each runs as its own actor: calls (launch, kill, message, shutdown) are made one
//! at a time, in order. The actor holds the executor to its contract: it only
//! reports on the tasks it was given, a kill it ignores is reported for it after the
//! task's grace period, and when a call traps or overruns its timeout the executor
//! is dropped and its tasks fail with `REASON_EXECUTOR_TERMINATED` (the next task
//! for that executor id starts a fresh instance, as Mesos starts a new executor).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::internal::CompiledProgram;
use cairn_api::v1::{ExecutorInfo, TaskInfo, TaskState, TaskStatus, task_status::Reason};
use cairn_sandbox::{
    CancelHandle, ExecutorInstance, ExecutorOutput, ExecutorTask, ExecutorTaskState, Exit, Limit,
    ProgramKind, RunSpec, Sandbox,
};
use tokio::sync::mpsc;

use super::containerizer::{LaunchError, caps};
use super::task::Reporter;

/// Caps on a custom executor's own memory and sandbox (see `instantiate`).
const MAX_EXECUTOR_MEMORY: usize = 256 << 20;
const MAX_EXECUTOR_DISK: u64 = 1 << 30;

pub(super) enum CustomCall {
    Launch {
        task: Box<TaskInfo>,
        /// The task's programs as the agent compiled them (its executor's component).
        programs: Vec<CompiledProgram>,
    },
    Kill {
        task_id: String,
        grace: Duration,
    },
    Message(Vec<u8>),
    Shutdown,
}

/// The executor process's handle on one custom executor. Kills and the shutdown go
/// on a queue of their own, served first: a framework flooding its executor with
/// messages cannot hold a kill back behind them.
pub(super) struct CustomExecutor {
    calls: mpsc::UnboundedSender<CustomCall>,
    urgent: mpsc::UnboundedSender<CustomCall>,
}

impl CustomExecutor {
    pub(super) fn send(&self, call: CustomCall) {
        let queue = match call {
            CustomCall::Kill { .. } | CustomCall::Shutdown => &self.urgent,
            CustomCall::Launch { .. } | CustomCall::Message(_) => &self.calls,
        };
        let _ = queue.send(call);
    }
}

/// What a custom executor's actor needs from the executor process.
pub(super) struct Context {
    pub(super) sandbox: Arc<Sandbox>,
    /// The agent's artifacts directory.
    pub(super) artifacts: PathBuf,
    pub(super) executor_id: String,
    /// The executor process's directory; the custom executor gets a subdirectory.
    pub(super) directory: PathBuf,
    pub(super) statuses: mpsc::UnboundedSender<TaskStatus>,
    /// Framework messages it sends: (its executor id, data).
    pub(super) messages: mpsc::UnboundedSender<(String, Vec<u8>)>,
    /// Told the executor id if the actor dies of a bug, so its tasks can be failed.
    pub(super) died: mpsc::UnboundedSender<String>,
    pub(super) call_timeout: Duration,
}

pub(super) fn start(context: Context) -> CustomExecutor {
    let (calls, rx) = mpsc::unbounded_channel();
    let (urgent, urgent_rx) = mpsc::unbounded_channel();
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let actor = Actor {
        context,
        instance: None,
        cancel: CancelHandle::default(),
        out_tx,
        out_rx,
        live: HashMap::new(),
        kill_deadlines: HashMap::new(),
        last_state: HashMap::new(),
        killed_early: Default::default(),
        info: None,
    };
    let (executor_id, died) = (
        actor.context.executor_id.clone(),
        actor.context.died.clone(),
    );
    let running = tokio::spawn(actor.run(urgent_rx, rx));
    tokio::spawn(async move {
        if let Err(e) = running.await
            && e.is_panic()
        {
            tracing::error!(executor_id, "a custom executor's actor panicked");
            let _ = died.send(executor_id);
        }
    });
    CustomExecutor { calls, urgent }
}

struct Actor {
    context: Context,
    instance: Option<ExecutorInstance>,
    cancel: CancelHandle,
    out_tx: mpsc::UnboundedSender<ExecutorOutput>,
    out_rx: mpsc::UnboundedReceiver<ExecutorOutput>,
    /// Tasks given to the executor and not yet terminal.
    live: HashMap<String, Reporter>,
    /// Tasks asked to die, and when they are reported killed if the executor has not.
    kill_deadlines: HashMap<String, Instant>,
    /// The last state each live task reported.
    last_state: HashMap<String, TaskState>,
    /// Tasks killed before their launch was handled.
    killed_early: std::collections::HashSet<String>,
    /// The ExecutorInfo the running instance was started from.
    info: Option<ExecutorInfo>,
}

impl Actor {
    async fn run(
        mut self,
        mut urgent: mpsc::UnboundedReceiver<CustomCall>,
        mut calls: mpsc::UnboundedReceiver<CustomCall>,
    ) {
        loop {
            let next_expiry = self.kill_deadlines.values().min().copied();
            let expiry = async {
                match next_expiry {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let call = tokio::select! {
                biased;
                () = expiry => {
                    self.expire_kills();
                    continue;
                }
                Some(call) = urgent.recv() => Some(call),
                call = calls.recv() => call,
            };
            match call {
                Some(CustomCall::Launch { task, programs }) => self.launch(*task, &programs).await,
                Some(CustomCall::Kill { task_id, grace }) => self.kill(task_id, grace).await,
                Some(CustomCall::Message(data)) => self.message(data).await,
                Some(CustomCall::Shutdown) | None => {
                    self.shutdown().await;
                    return;
                }
            }
        }
    }

    async fn launch(&mut self, task: TaskInfo, programs: &[CompiledProgram]) {
        let reporter = Reporter {
            task,
            tx: self.context.statuses.clone(),
        };
        let task_id = reporter.task.task_id.clone().unwrap_or_default().value;
        if self.killed_early.remove(&task_id) {
            reporter.send(
                TaskState::TaskKilled,
                "killed before it reached the executor".into(),
                None,
                Vec::new(),
            );
            return;
        }
        if let Err(why) = self.ensure_instance(&reporter.task, programs).await {
            reporter.send(
                TaskState::TaskFailed,
                why.to_string(),
                Some(Reason::ContainerLaunchFailed),
                Vec::new(),
            );
            return;
        }
        let command = reporter.task.command.clone().unwrap_or_default();
        let arguments = command.arguments.clone();
        let environment = command
            .environment
            .map(|e| e.variables.into_iter().map(|v| (v.name, v.value)).collect())
            .unwrap_or_default();
        let guest_task = ExecutorTask {
            task_id: task_id.clone(),
            name: reporter.task.name.clone(),
            arguments,
            environment,
            data: reporter.task.data.clone(),
        };
        self.live.insert(task_id.clone(), reporter);
        let result = match self.instance.as_mut() {
            Some(instance) => instance.launch(guest_task).await,
            None => return,
        };
        self.drain();
        match result {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                if let Some(reporter) = self.live.remove(&task_id) {
                    reporter.send(
                        TaskState::TaskFailed,
                        format!("the executor refused the task: {why}"),
                        None,
                        Vec::new(),
                    );
                }
            }
            Err(exit) => self.terminated(exit),
        }
    }

    /// The executor's instance, started from the first task's ExecutorInfo; a later
    /// task describing another executor under the same id is refused, as in Mesos.
    async fn ensure_instance(
        &mut self,
        task: &TaskInfo,
        programs: &[CompiledProgram],
    ) -> Result<(), LaunchError> {
        let info = task.executor.clone().unwrap_or_default();
        if let Some(first) = &self.info
            && !same_executor(first, &info)
        {
            return Err(LaunchError::Wasm(format!(
                "executor {} is running with a different ExecutorInfo (component, \
                 URIs, resources or container); tasks of one executor id must \
                 describe the same executor",
                self.context.executor_id
            )));
        }
        if self.instance.is_some() {
            return Ok(());
        }
        let instance = instantiate(&self.context, &self.cancel, &self.out_tx, task, programs)
            .await
            .map_err(|why| {
                LaunchError::Wasm(format!(
                    "cannot start executor {}: {why}",
                    self.context.executor_id
                ))
            })?;
        self.instance = Some(instance);
        self.info = Some(info);
        Ok(())
    }

    async fn kill(&mut self, task_id: String, grace: Duration) {
        if !self.live.contains_key(&task_id) {
            // Kills overtake launches (see `CustomExecutor`): this one may be queued.
            self.killed_early.insert(task_id);
            return;
        }
        let result = match self.instance.as_mut() {
            Some(instance) => instance.kill(&task_id).await,
            None => return,
        };
        self.drain();
        if let Err(exit) = result {
            self.terminated(exit);
            return;
        }
        if self.live.contains_key(&task_id) {
            self.kill_deadlines
                .entry(task_id)
                .or_insert_with(|| Instant::now() + grace);
        }
    }

    async fn message(&mut self, data: Vec<u8>) {
        let result = match self.instance.as_mut() {
            Some(instance) => instance.message(&data).await,
            None => {
                tracing::warn!(executor_id = %self.context.executor_id, "message for an executor that is not running; dropped");
                return;
            }
        };
        self.drain();
        if let Err(exit) = result {
            self.terminated(exit);
        }
    }

    async fn shutdown(&mut self) {
        if let Some(mut instance) = self.instance.take() {
            let _ = instance.shutdown().await;
            self.drain();
        }
        self.cancel.cancel();
        for (_, reporter) in self.live.drain() {
            reporter.send(
                TaskState::TaskKilled,
                "the executor was shut down".into(),
                Some(Reason::ExecutorTerminated),
                Vec::new(),
            );
        }
    }

    fn expire_kills(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .kill_deadlines
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for task_id in due {
            self.kill_deadlines.remove(&task_id);
            self.last_state.remove(&task_id);
            if let Some(reporter) = self.live.remove(&task_id) {
                reporter.send(
                    TaskState::TaskKilled,
                    "the executor did not end the task within its kill grace period".into(),
                    None,
                    Vec::new(),
                );
            }
        }
    }

    /// The executor broke: every task it held fails, and the instance is dropped.
    fn terminated(&mut self, exit: Exit) {
        let why = match exit {
            Exit::Limit(Limit::Time) => format!(
                "a call ran longer than {}",
                humantime::format_duration(self.context.call_timeout)
            ),
            Exit::Limit(Limit::Memory) => "it exceeded its memory limit".into(),
            Exit::Limit(Limit::Disk) => "it exceeded its disk quota".into(),
            Exit::Limit(Limit::Fuel) => "it ran out of fuel".into(),
            Exit::Killed => "it was killed".into(),
            Exit::Code(code) => format!("it exited with status {code}"),
            Exit::Trap(trap) => format!("wasm trap: {trap}"),
        };
        tracing::warn!(executor_id = %self.context.executor_id, why, "custom executor terminated");
        self.instance = None;
        self.info = None;
        self.kill_deadlines.clear();
        self.last_state.clear();
        for (_, reporter) in self.live.drain() {
            reporter.send(
                TaskState::TaskFailed,
                format!("executor {} terminated: {why}", self.context.executor_id),
                Some(Reason::ExecutorTerminated),
                Vec::new(),
            );
        }
        // A fresh handle: the next instance must not start out killed.
        self.cancel = CancelHandle::default();
    }

    /// Forwards what the executor sent during the last call.
    fn drain(&mut self) {
        while let Ok(output) = self.out_rx.try_recv() {
            match output {
                ExecutorOutput::Status {
                    task_id,
                    state,
                    message,
                } => self.status(task_id, state, message),
                ExecutorOutput::Message(data) => {
                    let _ = self
                        .context
                        .messages
                        .send((self.context.executor_id.clone(), data));
                }
                ExecutorOutput::Log(line) => {
                    tracing::info!(executor_id = %self.context.executor_id, "{line}");
                }
            }
        }
    }

    fn status(&mut self, task_id: String, state: ExecutorTaskState, message: String) {
        let state = match state {
            ExecutorTaskState::Starting => TaskState::TaskStarting,
            ExecutorTaskState::Running => TaskState::TaskRunning,
            ExecutorTaskState::Finished => TaskState::TaskFinished,
            ExecutorTaskState::Failed => TaskState::TaskFailed,
            ExecutorTaskState::Killed => TaskState::TaskKilled,
            ExecutorTaskState::Error => TaskState::TaskError,
        };
        // A repeated non-terminal state adds nothing but another checkpointed,
        // acknowledged update: dropped.
        if !state.is_terminal() && self.last_state.get(&task_id) == Some(&state) {
            return;
        }
        let Some(reporter) = self.live.get(&task_id) else {
            tracing::warn!(executor_id = %self.context.executor_id, task_id, "status for a task this executor does not hold; dropped");
            return;
        };
        reporter.send(state, message, None, Vec::new());
        if state.is_terminal() {
            self.live.remove(&task_id);
            self.kill_deadlines.remove(&task_id);
            self.last_state.remove(&task_id);
        } else {
            self.last_state.insert(task_id, state);
        }
    }
}

/// Loads the executor's component as the agent compiled it (it came with the task's
/// URIs) and starts it in a directory of its own.
async fn instantiate(
    context: &Context,
    cancel: &CancelHandle,
    out: &mpsc::UnboundedSender<ExecutorOutput>,
    task: &TaskInfo,
    programs: &[CompiledProgram],
) -> Result<ExecutorInstance, LaunchError> {
    let info = task.executor.clone().unwrap_or_default();
    let value = info
        .command
        .as_ref()
        .and_then(|c| c.value.clone())
        .unwrap_or_default();
    let fuel = super::containerizer::wasm::fuel_of(info.container.as_ref());
    let (sandbox_handle, artifacts) = (context.sandbox.clone(), context.artifacts.clone());
    let (name, programs) = (value.clone(), programs.to_vec());
    let compiled = tokio::task::spawn_blocking(move || {
        super::containerizer::wasm::load_program(&sandbox_handle, &artifacts, &programs, &name)
    })
    .await
    .map_err(|e| LaunchError::Wasm(e.to_string()))??;
    if compiled.kind() != ProgramKind::Executor {
        return Err(LaunchError::Wasm(format!(
            "{value} is a command, not a custom executor (the cairn:executor world)"
        )));
    }
    // ExecutorInfo resources are not yet charged against the framework's offers, so
    // what an executor may take is capped here.
    let (memory_bytes, disk_bytes) = caps(&info.resources)?;
    let memory_bytes = memory_bytes.min(MAX_EXECUTOR_MEMORY);
    let disk_bytes = disk_bytes.min(MAX_EXECUTOR_DISK);
    let dir = context.directory.join("custom").join(&context.executor_id);
    std::fs::create_dir_all(&dir)
        .map_err(|e| LaunchError::Wasm(format!("creating {}: {e}", dir.display())))?;
    let spec = RunSpec {
        args: vec![value.clone()],
        env: vec![
            ("MESOS_SANDBOX".into(), "/".into()),
            ("MESOS_EXECUTOR_ID".into(), context.executor_id.clone()),
        ],
        stdout: dir.join("stdout"),
        stderr: dir.join("stderr"),
        sandbox_dir: dir,
        memory_bytes,
        fuel,
        timeout: Some(context.call_timeout),
        disk_bytes,
    };
    context
        .sandbox
        .start_executor(&compiled, &spec, cancel, out.clone())
        .await
        .map_err(|e| LaunchError::Wasm(e.to_string()))
}

/// Whether two ExecutorInfos describe the same executor (its name aside).
fn same_executor(a: &ExecutorInfo, b: &ExecutorInfo) -> bool {
    a.executor_id == b.executor_id
        && a.command == b.command
        && a.resources == b.resources
        && a.container == b.container
}
