//! The agent's core: one actor owns the agent's frameworks, executors, tasks and
//! status update streams. The master link, the executor socket and the HTTP API all
//! talk to it through one channel.
//!
//! Every change to durable state is a checkpoint record. The actor handles a batch of
//! inputs, syncs the records they produced once (group commit), and only then carries
//! out the effects that depend on them (updates to the master, acknowledgements and
//! launches to executors). A failed sync holds the effects back and is retried; the
//! agent never tells anyone something it could forget.

mod executor_links;
mod limitations;
mod master_messages;
mod routing;
mod sizing;
mod snapshot;
mod tasks;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::internal::checkpoint_record::Record;
use cairn_api::internal::{
    AgentHeartbeat, AgentMessage, ExecutorEvent, RegisterAgent, RunningExecutor, TaskRecord,
    agent_message, executor_event,
};
use cairn_api::now_secs;
use cairn_api::v1::{AgentId, AgentInfo, FrameworkId};
use tokio::sync::{mpsc, oneshot, watch};

use crate::checkpoint::{Checkpoint, TaskKey};
use crate::input::Input;
use crate::launcher::Launcher;
use crate::paths::Paths;

pub use executor_links::ExecutorLink;

/// What `/state` and `/files` read, published after every batch.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AgentSnapshot {
    pub agent_id: Option<String>,
    pub master_connected: bool,
    pub tasks: Vec<TaskView>,
    /// The last [`MAX_COMPLETED_TASKS`] tasks whose end was acknowledged, whose
    /// sandboxes may still be read (Mesos' agent keeps its completed tasks so).
    pub completed_tasks: Vec<TaskView>,
    pub executors: Vec<ExecutorView>,
    pub pending_updates: usize,
    /// Why the checkpoint cannot be written, while it cannot.
    pub checkpoint_error: Option<String>,
    #[serde(skip)]
    pub metrics: crate::metrics::Metrics,
    /// Running tasks' latest usage, as their executors last reported it.
    #[serde(skip)]
    pub statistics: Vec<TaskStatistics>,
}

/// Completed tasks the agent remembers (Mesos keeps 200 per executor).
pub const MAX_COMPLETED_TASKS: usize = 1000;

/// One running task's usage, for `/monitor/statistics`.
#[derive(Debug, Clone)]
pub struct TaskStatistics {
    pub framework_id: String,
    pub task_id: String,
    /// When its executor measured it (seconds since the epoch).
    pub timestamp: f64,
    pub usage: cairn_api::internal::TaskUsage,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskView {
    pub framework_id: String,
    pub task_id: String,
    pub executor_id: String,
    pub state: String,
    pub directory: String,
    /// Whom the task names to run as (its command's user, else its framework's;
    /// empty: the agent's `--default-user`), which `--acls` grants are about.
    pub user: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ExecutorView {
    pub framework_id: String,
    pub executor_id: String,
    pub pid: u32,
    pub subscribed: bool,
    /// Recovered from the checkpoint after an agent restart.
    pub recovered: bool,
}

/// Timings the core works to; the flags set them.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub heartbeat_interval: Duration,
    /// The first resend of an unacknowledged update; doubled up to `MAX_UPDATE_RETRY`.
    pub update_retry: Duration,
    /// How long a recovered executor has to re-subscribe before it is killed.
    pub executor_reregistration_timeout: Duration,
    /// How long a shut-down executor has before its process group is killed.
    pub executor_shutdown_grace: Duration,
    /// Who tasks run as.
    pub users: crate::user::UserPolicy,
    /// How often native tasks' listening ports are checked; none: never.
    pub ports_watch_interval: Option<Duration>,
}

/// Something the core does once the records it depends on are durable.
enum Effect {
    ToMaster(Box<agent_message::Message>),
    ToExecutor(String, Box<executor_event::Event>),
    /// The master link's registration, built from durable state only.
    Registration(oneshot::Sender<RegisterAgent>),
    /// Start (or restart) a staged task: its executor, then its fetch.
    Stage(TaskKey),
    /// Hand a finished run's sandbox to the garbage collector.
    Collect(std::path::PathBuf),
}

/// Mesos backs off status update resends from 10 s to 10 min.
const MAX_UPDATE_RETRY: Duration = Duration::from_secs(600);
/// Inputs handled per batch, and so per sync at most.
const MAX_BATCH: usize = 512;
const TICK: Duration = Duration::from_millis(200);
/// The longest a busy agent goes without publishing its snapshot unasked.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

struct CommitFailure {
    error: String,
    retry_at: Instant,
    backoff: Duration,
}

pub struct Core {
    paths: Paths,
    config: CoreConfig,
    info: AgentInfo,
    launcher: Launcher,
    master: Option<mpsc::Sender<AgentMessage>>,
    /// Messages for the master that did not fit its connection's buffer: sent, in
    /// order, as it drains. Dropping them would leave updates to the (much slower)
    /// resend timer under a burst.
    to_master: std::collections::VecDeque<AgentMessage>,
    /// Something changed since the last published snapshot.
    dirty: bool,
    published_at: Instant,
    /// API requests waiting for a fresh snapshot.
    publish_waiters: Vec<oneshot::Sender<()>>,
    checkpoint: Checkpoint,
    links: HashMap<String, ExecutorLink>,
    outbox: Vec<Effect>,
    /// When each in-flight stream head is next resent, and the interval after that.
    resend: HashMap<TaskKey, (Instant, Duration)>,
    /// Tasks whose sandbox is being fetched: one fetch per task at a time.
    /// (With the container id of the run being fetched.)
    fetching: HashMap<TaskKey, String>,
    /// Fetched group members waiting for the rest of their group.
    /// (With the programs compiled for each.)
    fetched: HashMap<TaskKey, Vec<cairn_api::internal::CompiledProgram>>,
    commit_failure: Option<CommitFailure>,
    metrics: crate::metrics::Metrics,
    /// Each executor's last usage report: (its framework, when, per task).
    usage: HashMap<String, (String, f64, Vec<cairn_api::internal::TaskUsage>)>,
    /// What each executor's cgroup must allow.
    sizes: sizing::Sizes,
    ports: limitations::PortsWatch,
    snapshot: watch::Sender<Arc<AgentSnapshot>>,
    /// The sandbox garbage collector (see `crate::gc`).
    gc: mpsc::UnboundedSender<std::path::PathBuf>,
    /// The last tasks gone from the checkpoint, newest last: `/state` lists them and
    /// `/files/read` knows whose their sandboxes are.
    completed: std::collections::VecDeque<TaskView>,
}

impl Core {
    /// Builds the core from a recovered checkpoint and re-attaches what it describes:
    /// live executors are awaited, dead ones have their tasks failed, staged tasks
    /// are staged again.
    pub fn recover(
        paths: Paths,
        config: CoreConfig,
        mut info: AgentInfo,
        launcher: Launcher,
        checkpoint: Checkpoint,
        gc: mpsc::UnboundedSender<std::path::PathBuf>,
    ) -> (Self, watch::Receiver<Arc<AgentSnapshot>>) {
        info.id = checkpoint
            .state
            .agent_id
            .clone()
            .map(|value| AgentId { value });
        let (snapshot, rx) = watch::channel(Arc::new(AgentSnapshot::default()));
        let switch_user = config.users.switch_user;
        let mut core = Self {
            paths,
            config,
            info,
            launcher,
            master: None,
            to_master: Default::default(),
            dirty: true,
            published_at: Instant::now(),
            completed: Default::default(),
            publish_waiters: Vec::new(),
            checkpoint,
            links: HashMap::new(),
            outbox: Vec::new(),
            resend: HashMap::new(),
            fetching: HashMap::new(),
            fetched: HashMap::new(),
            commit_failure: None,
            metrics: crate::metrics::Metrics::default(),
            usage: HashMap::new(),
            sizes: sizing::Sizes::new(sizing::agent_charges(switch_user)),
            ports: limitations::PortsWatch::new(),
            snapshot,
            gc,
        };
        core.reattach_executors();
        core.settle();
        core.publish();
        (core, rx)
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<Input>) {
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                input = rx.recv() => {
                    let Some(input) = input else { return };
                    self.handle(input);
                    for _ in 1..MAX_BATCH {
                        match rx.try_recv() {
                            Ok(input) => self.handle(input),
                            Err(_) => break,
                        }
                    }
                }
                _ = heartbeat.tick() => self.send_to_master(agent_message::Message::Heartbeat(AgentHeartbeat {})),
                _ = tick.tick() => {
                    self.dirty = true;
                    self.flush_to_master();
                    self.resend_due_updates();
                    self.check_executor_deadlines();
                    self.watch_ports();
                    for link in self.links.values_mut() {
                        link.flush();
                    }
                }
            }
            self.settle();
            self.flush_to_master();
            // The snapshot walks every task: built when the API asks (Input::Publish)
            // or once a second, never per input; always after the inputs are settled.
            let asked = !self.publish_waiters.is_empty();
            if self.dirty && (asked || self.published_at.elapsed() >= PUBLISH_EVERY) {
                self.publish();
            }
            for waiter in self.publish_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Publish(reply) => {
                // Answered once this batch is settled (see `run`).
                self.publish_waiters.push(reply);
                return;
            }
            Input::Registration(reply) => self.outbox.push(Effect::Registration(reply)),
            Input::MasterConnected {
                agent_id,
                to_master,
            } => {
                tracing::info!(agent_id, "registered with the master");
                if self.checkpoint.state.agent_id.as_deref() != Some(agent_id.as_str()) {
                    self.checkpoint.record(Record::AgentId(AgentId {
                        value: agent_id.clone(),
                    }));
                }
                self.info.id = Some(AgentId { value: agent_id });
                self.master = Some(to_master);
                self.to_master.clear();
                // A new session: every head goes again now, and backoff restarts.
                self.resend.clear();
                for update in self.checkpoint.state.updates.heads() {
                    self.update_to_master(update);
                }
            }
            Input::MasterDisconnected => {
                self.master = None;
                self.to_master.clear();
            }
            Input::FromMaster(message) => self.on_master_message(*message),
            Input::ExecutorSubscribed {
                executor_id,
                conn,
                pid,
                subscribe,
                to_executor,
            } => self.executor_subscribed(&executor_id, conn, pid, subscribe, to_executor),
            Input::FromExecutor {
                executor_id,
                conn,
                call,
            } => self.on_executor_call(&executor_id, conn, call),
            Input::ExecutorDisconnected { executor_id, conn } => {
                self.executor_disconnected(&executor_id, conn)
            }
            Input::ExecutorExited {
                executor_id,
                pid,
                status,
            } => self.executor_exited(&executor_id, pid, status),
            Input::Fetched { run, result } => self.fetched(run, result),
            Input::PortsChecked(found) => self.ports_checked(found),
        }
        self.dirty = true;
    }

    fn registration(&self) -> RegisterAgent {
        let tasks = self
            .checkpoint
            .state
            .tasks
            .iter()
            .map(|((fw, _), t)| TaskRecord {
                framework_id: Some(FrameworkId { value: fw.clone() }),
                task: Some(t.info.clone()),
                state: t.state as i32,
                programs: Vec::new(),
                executor_id: t.executor_id.clone(),
            })
            .collect();
        let executors = (self.checkpoint.state.executors.values())
            .map(|e| RunningExecutor {
                framework_id: e.framework_id.clone(),
                executor_id: e.executor_id.clone(),
            })
            .collect();
        RegisterAgent {
            info: Some(self.info.clone()),
            version: cairn_api::VERSION.into(),
            tasks,
            charges: Some(self.sizes.charges().to_proto()),
            executors,
        }
    }

    /// Commits what the last inputs recorded, then carries out the effects waiting
    /// on it. Effects may record more (an executor started, a task failed), so this
    /// repeats until the outbox is empty.
    fn settle(&mut self) {
        loop {
            if !self.commit() {
                return;
            }
            let effects = std::mem::take(&mut self.outbox);
            if effects.is_empty() {
                break;
            }
            for effect in effects {
                self.perform(effect);
            }
            // Grown before the launches of this batch reach the executors (they are
            // sent once the next inputs are settled, at the earliest).
            for (ex, limits) in self.sizes.take_due() {
                if let Some(record) = self.checkpoint.state.executors.get(&ex) {
                    self.launcher.resize(&record.cgroup, limits);
                }
            }
        }
        if let Err(e) = self.checkpoint.maybe_compact() {
            tracing::warn!(error = %e, "cannot compact the checkpoint; it keeps growing");
        }
    }

    /// Syncs pending records; false while the checkpoint cannot be written.
    fn commit(&mut self) -> bool {
        if !self.checkpoint.has_pending() {
            return true;
        }
        if let Some(failure) = &self.commit_failure
            && Instant::now() < failure.retry_at
        {
            return false;
        }
        match self.checkpoint.commit() {
            Ok(records) => {
                self.metrics.checkpoint_commits += 1;
                self.metrics.checkpoint_records += records as u64;
                if let Some(failure) = self.commit_failure.take() {
                    tracing::info!(
                        previous_error = failure.error,
                        "the checkpoint is writable again; releasing held updates"
                    );
                }
                true
            }
            Err(e) => {
                self.metrics.checkpoint_failures += 1;
                let backoff = self
                    .commit_failure
                    .as_ref()
                    .map_or(Duration::from_millis(100), |f| {
                        (f.backoff * 2).min(Duration::from_secs(5))
                    });
                if self.commit_failure.is_none() {
                    tracing::error!(
                        error = %e,
                        held_records = self.checkpoint.pending_records(),
                        "cannot write the checkpoint; holding updates and launches until it can be written"
                    );
                }
                self.commit_failure = Some(CommitFailure {
                    error: e.to_string(),
                    retry_at: Instant::now() + backoff,
                    backoff,
                });
                false
            }
        }
    }

    fn perform(&mut self, effect: Effect) {
        match effect {
            Effect::ToMaster(message) => {
                let message = *message;
                if let agent_message::Message::StatusUpdate(update) = &message {
                    let key = update_key(update);
                    // Only a stream's current head goes out; acks may have moved on.
                    let is_head = self
                        .checkpoint
                        .state
                        .updates
                        .head(&key.0, &key.1)
                        .and_then(|h| h.status.as_ref())
                        .map(|s| &s.uuid)
                        == update.status.as_ref().map(|s| &s.uuid);
                    if !is_head {
                        return;
                    }
                    let interval = self.config.update_retry;
                    self.resend
                        .insert(key, (Instant::now() + interval, interval));
                }
                self.send_to_master(message);
            }
            Effect::ToExecutor(ex, event) => {
                if let Some(link) = self.links.get_mut(&ex) {
                    link.send(ExecutorEvent {
                        event: Some(*event),
                    });
                }
            }
            Effect::Stage(key) => self.stage(key),
            Effect::Collect(sandbox) => {
                let _ = self.gc.send(sandbox);
            }
            Effect::Registration(reply) => {
                let _ = reply.send(self.registration());
            }
        }
    }

    /// Queues a status update for the master, sent once synced if it heads its stream.
    fn update_to_master(&mut self, update: cairn_api::internal::StatusUpdate) {
        self.outbox.push(Effect::ToMaster(Box::new(
            agent_message::Message::StatusUpdate(update),
        )));
    }

    /// Queues an event for an executor, sent once what precedes it is synced.
    fn send_to_executor(&mut self, executor_id: String, event: executor_event::Event) {
        self.outbox
            .push(Effect::ToExecutor(executor_id, Box::new(event)));
    }

    /// Best effort: a full channel drops the message (updates are resent, heartbeats
    /// recur); only a closed one ends the session.
    fn send_to_master(&mut self, message: agent_message::Message) {
        if self.master.is_none() {
            return;
        }
        self.to_master.push_back(AgentMessage {
            message: Some(message),
        });
        self.flush_to_master();
    }

    /// Sends queued messages until the connection's buffer is full.
    fn flush_to_master(&mut self) {
        let Some(tx) = &self.master else {
            // A new session resends every stream head; the rest is stale.
            self.to_master.clear();
            return;
        };
        while let Some(message) = self.to_master.pop_front() {
            match tx.try_send(message) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(message)) => {
                    self.to_master.push_front(message);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.master = None;
                    self.to_master.clear();
                    return;
                }
            }
        }
    }

    /// Resends stream heads whose backoff ran out.
    fn resend_due_updates(&mut self) {
        if self.master.is_none() {
            return;
        }
        let now = Instant::now();
        let due: Vec<TaskKey> = self
            .resend
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            let Some(head) = self.checkpoint.state.updates.head(&key.0, &key.1).cloned() else {
                self.resend.remove(&key);
                continue;
            };
            let (_, interval) = self.resend[&key];
            let next = (interval * 2).min(MAX_UPDATE_RETRY);
            self.resend.insert(key, (now + next, next));
            self.send_to_master(agent_message::Message::StatusUpdate(head));
        }
    }
}

fn update_key(update: &cairn_api::internal::StatusUpdate) -> TaskKey {
    (
        update.framework_id.clone().unwrap_or_default().value,
        update
            .status
            .as_ref()
            .and_then(|s| s.task_id.clone())
            .unwrap_or_default()
            .value,
    )
}
