//! The agent's core: one actor owns the agent's frameworks, executors, tasks and
//! status update streams. The master link, the executor socket and the HTTP API all
//! talk to it through one channel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_api::internal::{
    AgentHeartbeat, AgentMessage, ExecutorAcknowledged, ExecutorEvent, ExecutorKill,
    ExecutorLaunch, ExecutorShutdown, ExecutorSubscribed, RegisterAgent, StatusUpdate, TaskRecord,
    agent_message, executor_call, executor_event, master_message,
};
use cairn_api::v1::{
    AgentId, AgentInfo, ExecutorId, FrameworkId, FrameworkInfo, TaskInfo, TaskState, TaskStatus,
    container_info, task_status,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::executors::Launcher;
use crate::paths::Paths;
use crate::updates::StatusUpdates;

pub enum Input {
    /// The master link needs the registration to send (it carries our task list).
    Registration(oneshot::Sender<RegisterAgent>),
    MasterConnected {
        agent_id: String,
        to_master: mpsc::Sender<AgentMessage>,
    },
    MasterDisconnected,
    FromMaster(Box<master_message::Message>),
    ExecutorSubscribed {
        framework_id: String,
        conn: u64,
        pid: Option<i32>,
        to_executor: mpsc::Sender<ExecutorEvent>,
    },
    FromExecutor {
        framework_id: String,
        conn: u64,
        call: executor_call::Call,
    },
    ExecutorDisconnected {
        framework_id: String,
        conn: u64,
    },
    ExecutorExited {
        framework_id: String,
        pid: u32,
        status: String,
    },
    Fetched {
        framework_id: String,
        task_id: String,
        result: Result<(), String>,
    },
}

/// What `/state` and `/files` read, published after every input.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AgentSnapshot {
    pub agent_id: Option<String>,
    pub master_connected: bool,
    pub tasks: Vec<TaskView>,
    pub pending_updates: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskView {
    pub framework_id: String,
    pub task_id: String,
    pub executor_id: String,
    pub state: String,
    pub directory: String,
}

struct Executor {
    id: String,
    pid: Option<u32>,
    conn: Option<(u64, mpsc::Sender<ExecutorEvent>)>,
    /// Launches waiting for the executor to subscribe.
    queued: Vec<ExecutorEvent>,
}

impl Executor {
    /// Sends in order: queued events first, and nothing overtakes the queue.
    fn send(&mut self, event: ExecutorEvent) {
        self.queued.push(event);
        self.flush();
    }

    /// Sends what is queued until the connection is gone or full; the rest waits for
    /// the next event or subscription.
    fn flush(&mut self) {
        let Some((_, tx)) = &self.conn else { return };
        let mut sent = 0;
        for event in &self.queued {
            if tx.try_send(event.clone()).is_err() {
                break;
            }
            sent += 1;
        }
        self.queued.drain(..sent);
    }
}

struct Task {
    info: TaskInfo,
    state: TaskState,
    /// Handed (or queued) to the executor; before that a kill is the agent's to do.
    launched: bool,
}

pub struct Core {
    paths: Paths,
    info: AgentInfo,
    launcher: Launcher,
    master: Option<mpsc::Sender<AgentMessage>>,
    frameworks: HashMap<String, FrameworkInfo>,
    executors: HashMap<String, Executor>,
    tasks: HashMap<(String, String), Task>,
    updates: StatusUpdates,
    snapshot: watch::Sender<Arc<AgentSnapshot>>,
}

/// How often unacknowledged updates are resent (Mesos starts at 10 s and backs off).
const UPDATE_RETRY: Duration = Duration::from_secs(10);

impl Core {
    pub fn new(
        paths: Paths,
        info: AgentInfo,
        launcher: Launcher,
    ) -> (Self, watch::Receiver<Arc<AgentSnapshot>>) {
        let (snapshot, rx) = watch::channel(Arc::new(AgentSnapshot::default()));
        let core = Self {
            paths,
            info,
            launcher,
            master: None,
            frameworks: HashMap::new(),
            executors: HashMap::new(),
            tasks: HashMap::new(),
            updates: StatusUpdates::default(),
            snapshot,
        };
        (core, rx)
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<Input>, heartbeat: Duration) {
        let mut heartbeat = tokio::time::interval(heartbeat);
        let mut retry = tokio::time::interval(UPDATE_RETRY);
        loop {
            tokio::select! {
                input = rx.recv() => match input {
                    Some(input) => self.handle(input),
                    None => return,
                },
                _ = heartbeat.tick() => self.send_to_master(agent_message::Message::Heartbeat(AgentHeartbeat {})),
                _ = retry.tick() => self.resend_updates(),
            }
            self.publish();
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Registration(reply) => {
                let _ = reply.send(self.registration());
            }
            Input::MasterConnected {
                agent_id,
                to_master,
            } => {
                tracing::info!(agent_id, "registered with the master");
                if let Err(e) = write_atomic(&self.paths.agent_id_file(), agent_id.as_bytes()) {
                    tracing::warn!(error = %e, "cannot record the agent id");
                }
                self.info.id = Some(AgentId { value: agent_id });
                self.master = Some(to_master);
                self.resend_updates();
            }
            Input::MasterDisconnected => self.master = None,
            Input::FromMaster(message) => self.on_master_message(*message),
            Input::ExecutorSubscribed {
                framework_id,
                conn,
                pid,
                to_executor,
            } => self.executor_subscribed(&framework_id, conn, pid, to_executor),
            Input::FromExecutor {
                framework_id,
                conn,
                call,
            } => self.on_executor_call(&framework_id, conn, call),
            Input::ExecutorDisconnected { framework_id, conn } => {
                if let Some(ex) = self.executors.get_mut(&framework_id)
                    && ex.conn.as_ref().is_some_and(|(c, _)| *c == conn)
                {
                    ex.conn = None;
                }
            }
            Input::ExecutorExited {
                framework_id,
                pid,
                status,
            } => self.executor_exited(&framework_id, pid, &status),
            Input::Fetched {
                framework_id,
                task_id,
                result,
            } => self.fetched(&framework_id, &task_id, result),
        }
    }

    fn registration(&self) -> RegisterAgent {
        let tasks = self
            .tasks
            .iter()
            .map(|((fw, _), t)| TaskRecord {
                framework_id: Some(FrameworkId { value: fw.clone() }),
                task: Some(t.info.clone()),
                state: t.state as i32,
            })
            .collect();
        RegisterAgent {
            info: Some(self.info.clone()),
            version: cairn_api::VERSION.into(),
            tasks,
        }
    }

    fn send_to_master(&mut self, message: agent_message::Message) {
        if let Some(tx) = &self.master
            && tx
                .try_send(AgentMessage {
                    message: Some(message),
                })
                .is_err()
        {
            self.master = None;
        }
    }

    fn on_master_message(&mut self, message: master_message::Message) {
        match message {
            master_message::Message::Registered(_) => {}
            master_message::Message::RunTask(run) => {
                if let (Some(framework), Some(task)) = (run.framework, run.task) {
                    self.run_task(framework, task);
                }
            }
            master_message::Message::KillTask(kill) => {
                let fw = kill.framework_id.unwrap_or_default().value;
                let task_id = kill.task_id.unwrap_or_default();
                let key = (fw.clone(), task_id.value.clone());
                let unlaunched = self
                    .tasks
                    .get(&key)
                    .is_some_and(|t| !t.launched && !t.state.is_terminal());
                if unlaunched {
                    // Still fetching: the executor never saw it, so the agent ends it.
                    self.fail_task(
                        &fw,
                        &task_id.value,
                        TaskState::TaskKilled,
                        task_status::Reason::TaskKilledDuringLaunch,
                        "killed before it was launched".into(),
                    );
                } else if self.tasks.contains_key(&key) {
                    self.send_to_executor(
                        &fw,
                        executor_event::Event::Kill(ExecutorKill {
                            task_id: Some(task_id),
                        }),
                    );
                }
            }
            master_message::Message::Ack(ack) => {
                let fw = ack.framework_id.unwrap_or_default().value;
                let task_id = ack.task_id.unwrap_or_default().value;
                self.acknowledge(&fw, &task_id, &ack.uuid);
            }
            master_message::Message::FrameworkMessage(m) => {
                let fw = m.framework_id.unwrap_or_default().value;
                self.send_to_executor(
                    &fw,
                    executor_event::Event::Message(cairn_api::internal::ExecutorMessage {
                        data: m.data,
                    }),
                );
            }
            master_message::Message::ShutdownFramework(s) => {
                let fw = s.framework_id.unwrap_or_default().value;
                tracing::info!(framework_id = fw, "shutting down framework");
                self.send_to_executor(&fw, executor_event::Event::Shutdown(ExecutorShutdown {}));
                self.frameworks.remove(&fw);
            }
        }
    }

    fn run_task(&mut self, framework: FrameworkInfo, task: TaskInfo) {
        let fw = framework.id.clone().unwrap_or_default().value;
        let task_id = task.task_id.clone().unwrap_or_default().value;
        if !cairn_api::ids::is_safe_id(&fw) || !cairn_api::ids::is_safe_id(&task_id) {
            tracing::warn!(
                fw,
                task_id,
                "refusing a task with an unsafe framework or task id"
            );
            return;
        }
        let key = (fw.clone(), task_id.clone());
        if self.tasks.contains_key(&key) {
            tracing::warn!(fw, task_id, "duplicate task launch ignored");
            return;
        }
        self.tasks.insert(
            key,
            Task {
                info: task.clone(),
                state: TaskState::TaskStaging,
                launched: false,
            },
        );
        self.frameworks.insert(fw.clone(), framework);
        let kind = task
            .container
            .as_ref()
            .map(|c| c.r#type)
            .unwrap_or(container_info::Type::Unset as i32);
        if kind != container_info::Type::Wasm as i32 {
            let name = container_info::Type::try_from(kind)
                .map(|t| t.as_str_name())
                .unwrap_or("unknown");
            self.fail_task(
                &fw,
                &task_id,
                TaskState::TaskFailed,
                task_status::Reason::ContainerLaunchFailed,
                format!(
                    "container type {name} is not supported by this agent: only WASM tasks run here"
                ),
            );
            return;
        }
        let executor_id = cairn_api::ids::executor_id_for(&FrameworkId { value: fw.clone() }).value;
        if !self.executors.contains_key(&fw) {
            match self.launcher.spawn(&fw, &executor_id) {
                Ok(pid) => {
                    self.executors.insert(
                        fw.clone(),
                        Executor {
                            id: executor_id.clone(),
                            pid: Some(pid),
                            conn: None,
                            queued: Vec::new(),
                        },
                    );
                }
                Err(e) => {
                    self.fail_task(
                        &fw,
                        &task_id,
                        TaskState::TaskFailed,
                        task_status::Reason::ContainerLaunchFailed,
                        format!("cannot start the executor: {e}"),
                    );
                    return;
                }
            }
        }
        let sandbox = self.paths.sandbox(&fw, &executor_id, &task_id);
        let uris = task
            .command
            .as_ref()
            .map(|c| c.uris.clone())
            .unwrap_or_default();
        self.launcher.fetch(fw, task_id, sandbox, uris);
    }

    fn fetched(&mut self, fw: &str, task_id: &str, result: Result<(), String>) {
        let Some(task) = self.tasks.get(&(fw.to_owned(), task_id.to_owned())) else {
            return;
        };
        if task.state.is_terminal() {
            return; // killed or failed while its sandbox was being fetched
        }
        if let Err(why) = result {
            self.fail_task(
                fw,
                task_id,
                TaskState::TaskFailed,
                task_status::Reason::ContainerLaunchFailed,
                why,
            );
            return;
        }
        let Some(executor) = self.executors.get_mut(fw) else {
            self.fail_task(
                fw,
                task_id,
                TaskState::TaskFailed,
                task_status::Reason::ExecutorTerminated,
                "the executor exited before the task could be launched".into(),
            );
            return;
        };
        let sandbox = self.paths.sandbox(fw, &executor.id, task_id);
        let launch = ExecutorEvent {
            event: Some(executor_event::Event::Launch(ExecutorLaunch {
                task: Some(task.info.clone()),
                sandbox_directory: sandbox.display().to_string(),
            })),
        };
        executor.send(launch);
        if let Some(t) = self.tasks.get_mut(&(fw.to_owned(), task_id.to_owned())) {
            t.launched = true;
        }
    }

    fn executor_subscribed(
        &mut self,
        fw: &str,
        conn: u64,
        pid: Option<i32>,
        tx: mpsc::Sender<ExecutorEvent>,
    ) {
        let Some(executor) = self.executors.get_mut(fw) else {
            tracing::warn!(
                framework_id = fw,
                "an executor subscribed for a framework with no executor here"
            );
            let _ = tx.try_send(ExecutorEvent {
                event: Some(executor_event::Event::Shutdown(ExecutorShutdown {})),
            });
            return;
        };
        // Only the process this agent started may speak for the framework.
        let expected = executor.pid.map(|p| p as i32);
        if expected.is_some() && pid != expected {
            tracing::warn!(
                framework_id = fw,
                ?pid,
                ?expected,
                "executor subscription from the wrong process refused"
            );
            return;
        }
        let subscribed = ExecutorEvent {
            event: Some(executor_event::Event::Subscribed(ExecutorSubscribed {
                agent_id: self.info.id.clone(),
            })),
        };
        let _ = tx.try_send(subscribed);
        executor.conn = Some((conn, tx));
        executor.flush();
    }

    fn on_executor_call(&mut self, fw: &str, conn: u64, call: executor_call::Call) {
        let current = self
            .executors
            .get(fw)
            .and_then(|e| e.conn.as_ref())
            .is_some_and(|(c, _)| *c == conn);
        if !current {
            return;
        }
        match call {
            executor_call::Call::Update(update) => {
                if let Some(mut status) = update.status {
                    if status.uuid.len() != 16 {
                        tracing::warn!(
                            framework_id = fw,
                            "executor update without a 16-byte uuid dropped"
                        );
                        return;
                    }
                    status.source = task_status::Source::Executor as i32;
                    status.executor_id = Some(ExecutorId {
                        value: self.executors[fw].id.clone(),
                    });
                    self.record_update(fw, status);
                }
            }
            executor_call::Call::Message(m) => {
                let executor_id = self.executors[fw].id.clone();
                self.send_to_master(agent_message::Message::ExecutorMessage(
                    cairn_api::internal::FrameworkMessage {
                        framework_id: Some(FrameworkId {
                            value: fw.to_owned(),
                        }),
                        executor_id: Some(ExecutorId { value: executor_id }),
                        data: m.data,
                    },
                ));
            }
            executor_call::Call::Heartbeat(_) | executor_call::Call::Subscribe(_) => {}
        }
    }

    fn executor_exited(&mut self, fw: &str, pid: u32, status: &str) {
        if self.executors.get(fw).is_none_or(|e| e.pid != Some(pid)) {
            return;
        }
        let executor = self.executors.remove(fw).expect("checked above");
        tracing::info!(framework_id = fw, pid, status, "executor exited");
        let code = status
            .strip_prefix("exit status: ")
            .and_then(|c| c.trim().parse::<i32>().ok());
        self.send_to_master(agent_message::Message::ExecutorExited(
            cairn_api::internal::ExecutorExited {
                framework_id: Some(FrameworkId {
                    value: fw.to_owned(),
                }),
                executor_id: Some(ExecutorId { value: executor.id }),
                status: code,
                message: status.to_owned(),
            },
        ));
        let orphans: Vec<String> = self
            .tasks
            .iter()
            .filter(|((f, _), t)| f == fw && !t.state.is_terminal())
            .map(|((_, t), _)| t.clone())
            .collect();
        for task_id in orphans {
            self.fail_task(
                fw,
                &task_id,
                TaskState::TaskFailed,
                task_status::Reason::ExecutorTerminated,
                format!("executor exited ({status}) while the task was running"),
            );
        }
    }

    /// An update the agent itself generates (source AGENT).
    fn fail_task(
        &mut self,
        fw: &str,
        task_id: &str,
        state: TaskState,
        reason: task_status::Reason,
        message: String,
    ) {
        tracing::info!(
            framework_id = fw,
            task_id,
            message,
            "task failed on the agent"
        );
        let status = TaskStatus {
            task_id: Some(cairn_api::v1::TaskId {
                value: task_id.to_owned(),
            }),
            state: state as i32,
            message,
            source: task_status::Source::Agent as i32,
            reason: Some(reason as i32),
            uuid: cairn_api::ids::new_update_uuid(),
            timestamp: now_secs(),
            ..Default::default()
        };
        self.record_update(fw, status);
    }

    /// Every update passes here: the task's state moves, then the update joins its
    /// task's stream and is sent if it is the stream's head.
    fn record_update(&mut self, fw: &str, mut status: TaskStatus) {
        status.agent_id = self.info.id.clone();
        let task_id = status.task_id.clone().unwrap_or_default().value;
        let Some(task) = self.tasks.get_mut(&(fw.to_owned(), task_id.clone())) else {
            tracing::warn!(
                framework_id = fw,
                task_id,
                "update for an unknown task dropped"
            );
            return;
        };
        let state = TaskState::try_from(status.state).unwrap_or(TaskState::TaskUnknown);
        if task.state.is_terminal() {
            tracing::warn!(
                framework_id = fw,
                task_id,
                "update after a terminal state dropped"
            );
            return;
        }
        task.state = state;
        let update = StatusUpdate {
            framework_id: Some(FrameworkId {
                value: fw.to_owned(),
            }),
            status: Some(status),
        };
        if let Some(head) = self.updates.push(fw, update) {
            self.send_to_master(agent_message::Message::StatusUpdate(head));
        }
    }

    fn acknowledge(&mut self, fw: &str, task_id: &str, uuid: &[u8]) {
        let Some((acked, next)) = self.updates.acknowledge(fw, task_id, uuid) else {
            return; // a duplicate or stale acknowledgement
        };
        self.send_to_executor(
            fw,
            executor_event::Event::Acknowledged(ExecutorAcknowledged {
                task_id: Some(cairn_api::v1::TaskId {
                    value: task_id.to_owned(),
                }),
                uuid: uuid.to_vec(),
            }),
        );
        if let Some(next) = next {
            self.send_to_master(agent_message::Message::StatusUpdate(next));
        }
        let terminal = acked
            .status
            .and_then(|s| TaskState::try_from(s.state).ok())
            .is_some_and(TaskState::is_terminal);
        if terminal {
            self.tasks.remove(&(fw.to_owned(), task_id.to_owned()));
        }
    }

    fn resend_updates(&mut self) {
        for head in self.updates.heads() {
            self.send_to_master(agent_message::Message::StatusUpdate(head));
        }
    }

    fn send_to_executor(&mut self, fw: &str, event: executor_event::Event) {
        if let Some(ex) = self.executors.get_mut(fw) {
            ex.send(ExecutorEvent { event: Some(event) });
        }
    }

    fn publish(&self) {
        let tasks = self
            .tasks
            .iter()
            .map(|((fw, id), t)| {
                let executor_id =
                    cairn_api::ids::executor_id_for(&FrameworkId { value: fw.clone() }).value;
                TaskView {
                    framework_id: fw.clone(),
                    task_id: id.clone(),
                    directory: self
                        .paths
                        .sandbox(fw, &executor_id, id)
                        .display()
                        .to_string(),
                    executor_id,
                    state: t.state.as_str_name().to_owned(),
                }
            })
            .collect();
        let _ = self.snapshot.send(Arc::new(AgentSnapshot {
            agent_id: self.info.id.as_ref().map(|i| i.value.clone()),
            master_connected: self.master.is_some(),
            tasks,
            pending_updates: self.updates.pending(),
        }));
    }
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Writes a small file crash-safely: a temp file, fsync, rename.
pub(crate) fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
