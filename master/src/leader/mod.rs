//! The leader's core: one actor owns agents, frameworks, offers and the master's view
//! of tasks. Every input arrives on one channel; after each one the actor publishes
//! an immutable snapshot, so `/state` and other readers never wait on allocation.

mod accept;
#[cfg(test)]
mod acl_tests;
mod agent_removal;
mod agents;
mod allocation;
mod calls;
mod completed;
mod executors;
mod operator;
mod reconcile;
mod roles;
mod snapshot;
mod streams;
mod subscribe;
#[cfg(test)]
mod testing;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::internal::{
    AgentCharges, MasterMessage, RunningExecutor, TaskRecord, agent_message,
};
use cairn_api::v1::{
    AgentInfo, Call, Event, FrameworkInfo, Offer, TaskInfo, TaskState, TaskStatus, event,
};
use cairn_api::{Resources, now_secs};
use tokio::sync::{mpsc, oneshot, watch};

use crate::allocator::Allocator;
use crate::error::CallError;
use crate::registry::Registry;

pub use operator::OperatorCall;
#[cfg(test)]
pub use snapshot::for_tests as snapshot_for_tests;
pub use snapshot::{MasterSnapshot, TaskView};

/// Events for one framework's subscription stream.
pub type EventSender = mpsc::Sender<Result<Event, tonic::Status>>;
/// Messages for one agent's registration stream.
pub type AgentSender = mpsc::Sender<Result<MasterMessage, tonic::Status>>;

/// Everything that can happen to the leader.
pub enum Input {
    /// Publish a fresh snapshot (if anything changed) before replying: `/state`
    /// reflects every input handled before it.
    Publish {
        reply: oneshot::Sender<()>,
    },
    RegisterAgent {
        info: Box<AgentInfo>,
        tasks: Vec<TaskRecord>,
        /// What the agent charges beyond what tasks name (none from older agents).
        charges: Option<AgentCharges>,
        executors: Vec<RunningExecutor>,
        /// Who registers, when agents authenticate (see `crate::authn`).
        principal: Option<String>,
        sender: AgentSender,
        reply: oneshot::Sender<Result<(String, u64), CallError>>,
    },
    AgentMessage {
        agent_id: String,
        conn: u64,
        message: agent_message::Message,
    },
    AgentDisconnected {
        agent_id: String,
        conn: u64,
    },
    Subscribe {
        info: Box<FrameworkInfo>,
        /// Who subscribes, when the scheduler realm authenticates (see `crate::authn`).
        principal: Option<String>,
        /// The id of the bearer token it subscribed with, if it did.
        token: Option<String>,
        events: EventSender,
        reply: oneshot::Sender<Result<String, CallError>>,
    },
    Call {
        call: Box<Call>,
        stream_id: Option<String>,
        /// Who calls, when the scheduler realm authenticates.
        principal: Option<String>,
        reply: oneshot::Sender<Result<(), CallError>>,
    },
    /// A bearer token was revoked: the streams opened with it end.
    TokenRevoked {
        id: String,
    },
    /// A subscription's event stream was dropped: the scheduler hung up (or the
    /// leader ended the stream itself, and this changes nothing).
    StreamClosed {
        stream_id: String,
    },
    /// An operator's write, by `principal` (none: its realm asks no one).
    Operator {
        call: OperatorCall,
        principal: Option<String>,
        reply: oneshot::Sender<Result<(), CallError>>,
    },
}

#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub allocation_interval: Duration,
    pub agent_heartbeat_interval: Duration,
    pub framework_heartbeat_interval: Duration,
    /// Default `refuse_seconds` of a DECLINE without filters (Mesos: 5 s).
    pub default_refuse: Duration,
    /// Offers outstanding longer than this are rescinded (Mesos' `--offer_timeout`;
    /// none by default).
    pub offer_timeout: Option<Duration>,
    /// An agent silent this long is unreachable (Mesos: 5 pings of 15 s).
    pub agent_timeout: Duration,
    /// An executor process with no task this long is shut down and its charge given
    /// back (`--executor-idle-timeout`).
    pub executor_idle_timeout: Duration,
    /// Completed tasks kept per framework (Mesos' `--max_completed_tasks_per_framework`).
    pub max_completed_tasks_per_framework: usize,
    /// Torn-down frameworks whose completed tasks are kept (Mesos'
    /// `--max_completed_frameworks`).
    pub max_completed_frameworks: usize,
    /// What each principal may do (`--acls`; permissive when none is given).
    pub acls: Arc<crate::authz::Acls>,
}

impl Default for LeaderConfig {
    fn default() -> Self {
        Self {
            allocation_interval: Duration::from_secs(1),
            agent_heartbeat_interval: Duration::from_secs(5),
            framework_heartbeat_interval: Duration::from_secs(15),
            default_refuse: Duration::from_secs(5),
            offer_timeout: None,
            agent_timeout: Duration::from_secs(75),
            executor_idle_timeout: Duration::from_secs(60),
            max_completed_tasks_per_framework: 1000,
            max_completed_frameworks: 50,
            acls: Arc::default(),
        }
    }
}

struct AgentEntry {
    info: AgentInfo,
    /// Held by non-terminal tasks.
    used: Resources,
    /// Held by outstanding offers.
    offered: Resources,
    /// The live registration stream, if connected.
    conn: Option<(u64, AgentSender)>,
    /// When the agent was last heard from.
    last_seen: Instant,
    /// (framework id, executor id) of the custom executors tasks here have named: a
    /// MESSAGE may reach them even when they hold no task.
    custom_executors: std::collections::HashSet<(String, String)>,
    /// The agent's figures for what it runs beyond what tasks name.
    charges: cairn_api::charges::AgentCharges,
    /// The executors charged here (see `executors`), part of `used`.
    executors: HashMap<executors::ExecutorKey, executors::ExecutorCharge>,
}

struct FrameworkEntry {
    info: FrameworkInfo,
    stream: Option<(String, EventSender)>,
    /// The bearer token its stream was opened with, if any.
    token: Option<String>,
    /// When its stream went away; after `failover_timeout` it is torn down.
    disconnected_at: Option<Instant>,
}

struct OfferEntry {
    created: Instant,
    framework_id: String,
    agent_id: String,
    /// The role the resources are allocated under (Mesos' `allocation_info.role`).
    role: String,
    resources: Resources,
}

struct TaskEntry {
    framework_id: String,
    agent_id: String,
    role: String,
    info: TaskInfo,
    /// What the task is charged: its resources with the agent's defaults and its
    /// executor's per-task overhead (its own resources are in `info`).
    resources: Resources,
    /// The agent's executor process hosting it.
    executor: String,
    state: TaskState,
    status: Option<TaskStatus>,
}

/// The longest a flood of REVIVEs defers the allocation they ask for.
const REVIVE_BATCH: Duration = Duration::from_millis(20);

/// The longest a busy leader goes without publishing a fresh snapshot for `/state`.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// How long a reader waits for a busy leader to publish before taking the last one.
const PUBLISH_WAIT: Duration = Duration::from_secs(1);

pub struct Leader {
    config: LeaderConfig,
    registry: Registry,
    allocator: Allocator,
    agents: HashMap<String, AgentEntry>,
    frameworks: HashMap<String, FrameworkEntry>,
    offers: HashMap<String, OfferEntry>,
    /// Keyed by (framework id, task id): task ids are unique per framework.
    tasks: HashMap<(String, String), TaskEntry>,
    completed: completed::Completed,
    snapshot: watch::Sender<Arc<MasterSnapshot>>,
    next_conn: u64,
    /// Something changed since the last published snapshot.
    dirty: bool,
    published_at: Instant,
    /// A REVIVE asked for an allocation not yet run, and when one last ran for it.
    revived: (bool, Instant),
    /// Framework streams dropped, by why (on `/metrics`).
    stream_counts: Arc<streams::StreamCounts>,
}

/// A handle to send inputs to the leader and read its snapshots.
#[derive(Clone)]
pub struct LeaderHandle {
    pub inputs: mpsc::Sender<Input>,
    pub snapshot: watch::Receiver<Arc<MasterSnapshot>>,
    /// Framework streams the leader dropped, by why.
    pub stream_counts: Arc<streams::StreamCounts>,
}

impl LeaderHandle {
    /// The state as of every input the leader handled before this call, or, if the
    /// leader is too busy to answer within PUBLISH_WAIT, its last published one.
    pub async fn fresh_snapshot(&self) -> Arc<MasterSnapshot> {
        let (reply, done) = oneshot::channel();
        // A full input queue means a busy leader: take the last snapshot rather than
        // queue behind (or ahead of) the work.
        if self.inputs.try_send(Input::Publish { reply }).is_ok() {
            let _ = tokio::time::timeout(PUBLISH_WAIT, done).await;
        }
        self.snapshot.borrow().clone()
    }

    /// Whether the leader's actor is alive and answers within `within` (it handles
    /// every input in turn, so a stuck or dead actor serves no call).
    pub async fn answers(&self, within: Duration) -> Result<(), String> {
        let (reply, done) = oneshot::channel();
        self.inputs
            .send_timeout(Input::Publish { reply }, within)
            .await
            .map_err(|_| "the leader's actor does not take inputs".to_owned())?;
        match tokio::time::timeout(within, done).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("the leader's actor has stopped".to_owned()),
            Err(_) => Err(format!(
                "the leader's actor did not answer within {}",
                humantime::format_duration(within)
            )),
        }
    }

    /// Sends an input and waits for its reply.
    pub async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, CallError>>) -> Input,
    ) -> Result<T, CallError> {
        let (tx, rx) = oneshot::channel();
        self.inputs
            .send(make(tx))
            .await
            .map_err(|_| CallError::ShuttingDown)?;
        rx.await.map_err(|_| CallError::ShuttingDown)?
    }
}

impl Leader {
    /// Starts the actor; it runs until every handle is dropped.
    pub fn spawn(config: LeaderConfig, registry: Registry) -> LeaderHandle {
        let (inputs, rx) = mpsc::channel(4096);
        let (snapshot, snapshot_rx) = watch::channel(Arc::new(MasterSnapshot::default()));
        let completed = completed::Completed::new(
            config.max_completed_tasks_per_framework,
            config.max_completed_frameworks,
        );
        let mut leader = Leader {
            config,
            registry,
            allocator: Allocator::default(),
            agents: HashMap::new(),
            frameworks: HashMap::new(),
            offers: HashMap::new(),
            tasks: HashMap::new(),
            completed,
            snapshot,
            next_conn: 1,
            dirty: true,
            published_at: Instant::now(),
            revived: (false, Instant::now()),
            stream_counts: Arc::default(),
        };
        let stream_counts = leader.stream_counts.clone();
        leader.load_roles();
        leader.publish();
        tokio::spawn(leader.run(rx));
        LeaderHandle {
            inputs,
            snapshot: snapshot_rx,
            stream_counts,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Input>) {
        let mut allocation = tokio::time::interval(self.config.allocation_interval);
        let mut heartbeat = tokio::time::interval(self.config.framework_heartbeat_interval);
        let mut timers = tokio::time::interval(Duration::from_millis(250));
        loop {
            let changed = tokio::select! {
                input = rx.recv() => match input {
                    Some(input) => self.handle(input).await,
                    None => return,
                },
                _ = allocation.tick() => { self.allocate(); true }
                _ = heartbeat.tick() => { self.heartbeat_frameworks(); true }
                _ = timers.tick() => { self.expire().await; true }
            };
            self.dirty |= changed;
            // REVIVEs are batched, as Mesos' allocator batches them: one allocation
            // once the queue is drained (or every REVIVE_BATCH under a flood), so a
            // framework reviving in a loop cannot make the leader do nothing else.
            let (revived, at) = self.revived;
            if revived && (rx.is_empty() || at.elapsed() >= REVIVE_BATCH) {
                self.revived = (false, Instant::now());
                self.allocate();
            }
            // Building the snapshot walks every task: it is built when a reader asks
            // for it (Input::Publish) or every PUBLISH_EVERY, never per input.
            if self.dirty && self.published_at.elapsed() >= PUBLISH_EVERY {
                self.publish();
            }
        }
    }

    /// Handles one input; false if it changed nothing (a request for the snapshot).
    async fn handle(&mut self, input: Input) -> bool {
        match input {
            Input::Publish { reply } => {
                if self.dirty {
                    self.publish();
                }
                let _ = reply.send(());
                return false;
            }
            Input::RegisterAgent {
                info,
                tasks,
                charges,
                executors,
                principal,
                sender,
                reply,
            } => {
                let reported = agents::Reported {
                    tasks,
                    charges,
                    executors,
                };
                let result = self
                    .register_agent(*info, reported, principal, sender)
                    .await;
                let _ = reply.send(result);
                self.allocate();
            }
            Input::AgentMessage {
                agent_id,
                conn,
                message,
            } => self.agent_message(&agent_id, conn, message),
            Input::AgentDisconnected { agent_id, conn } => self.agent_disconnected(&agent_id, conn),
            Input::Subscribe {
                info,
                principal,
                token,
                events,
                reply,
            } => {
                let result = self.subscribe(*info, principal, events).await;
                if let Ok(stream_id) = &result {
                    self.note_token(stream_id, token);
                }
                let _ = reply.send(result);
                self.allocate();
            }
            Input::Call {
                call,
                stream_id,
                principal,
                reply,
            } => {
                let result = self.call(*call, stream_id, principal).await;
                let _ = reply.send(result);
            }
            Input::Operator {
                call,
                principal,
                reply,
            } => {
                let _ = reply.send(self.operator_call(call, principal).await);
            }
            Input::StreamClosed { stream_id } => self.stream_closed(&stream_id),
            Input::TokenRevoked { id } => self.token_revoked(&id),
        }
        true
    }

    fn publish(&mut self) {
        self.dirty = false;
        self.published_at = Instant::now();
        let snapshot = snapshot::build(self);
        let _ = self.snapshot.send(Arc::new(snapshot));
    }

    fn next_conn_id(&mut self) -> u64 {
        self.next_conn += 1;
        self.next_conn
    }

    fn send_to_agent(&mut self, agent_id: &str, message: MasterMessage) -> bool {
        let Some(agent) = self.agents.get_mut(agent_id) else {
            return false;
        };
        let Some((_, tx)) = &agent.conn else {
            return false;
        };
        if tx.try_send(Ok(message)).is_err() {
            tracing::warn!(agent_id, "agent stream closed or full; agent disconnected");
            agent.conn = None;
            self.allocator.set_agent_active(agent_id, false);
            self.rescind_offers_of_agent(agent_id);
            return false;
        }
        true
    }

    fn offer_proto(&self, offer_id: &str, entry: &OfferEntry) -> Offer {
        let agent = &self.agents[&entry.agent_id];
        Offer {
            id: Some(cairn_api::v1::OfferId {
                value: offer_id.to_owned(),
            }),
            framework_id: Some(cairn_api::v1::FrameworkId {
                value: entry.framework_id.clone(),
            }),
            agent_id: agent.info.id.clone(),
            hostname: agent.info.hostname.clone(),
            resources: entry.resources.to_proto(),
            attributes: agent.info.attributes.clone(),
            url: Some(cairn_api::v1::Url {
                scheme: "http".into(),
                address: Some(cairn_api::v1::Address {
                    hostname: agent.info.hostname.clone(),
                    ip: String::new(),
                    port: agent.info.port,
                }),
                path: "/".into(),
            }),
        }
    }
}

/// An UPDATE event carrying `status`.
fn update_event(status: TaskStatus) -> Event {
    Event {
        r#type: event::Type::Update as i32,
        update: Some(event::Update {
            status: Some(status),
        }),
        ..Default::default()
    }
}

impl Leader {
    /// Time-driven changes: offers past the offer timeout are rescinded, and
    /// frameworks disconnected past their `failover_timeout` are torn down (their
    /// tasks killed), as in Mesos.
    async fn expire(&mut self) {
        let now = Instant::now();
        self.find_hung_up_streams();
        if let Some(timeout) = self.config.offer_timeout {
            let old: Vec<String> = self
                .offers
                .iter()
                .filter(|(_, o)| now.duration_since(o.created) >= timeout)
                .map(|(id, _)| id.clone())
                .collect();
            if !old.is_empty() {
                let lapsed: std::collections::HashSet<String> = (old.iter())
                    .filter_map(|id| self.offers.get(id))
                    .map(|o| o.framework_id.clone())
                    .collect();
                self.rescind(old);
                // Or a framework that never answers, holding the least, would be
                // offered the same resources again at once.
                for framework_id in lapsed {
                    self.allocator.lapsed(&framework_id, now, timeout);
                }
                self.allocate();
            }
        }
        let expired: Vec<String> = self
            .frameworks
            .iter()
            .filter(|(_, f)| {
                // NaN (possible over gRPC) is no time at all, not a panic.
                let secs = f.info.failover_timeout;
                let secs = if secs.is_nan() {
                    0.0
                } else {
                    secs.clamp(0.0, 1e9)
                };
                let timeout = Duration::from_secs_f64(secs);
                f.stream.is_none()
                    && f.disconnected_at
                        .is_some_and(|at| now.duration_since(at) >= timeout)
            })
            .map(|(id, _)| id.clone())
            .collect();
        let silent: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, a)| {
                a.conn.is_some() && now.duration_since(a.last_seen) >= self.config.agent_timeout
            })
            .map(|(id, _)| id.clone())
            .collect();
        for agent_id in silent {
            self.agent_unreachable(&agent_id);
        }
        self.shutdown_idle_executors(now);
        for framework_id in expired {
            tracing::info!(
                framework_id,
                "framework failover timeout expired; tearing it down"
            );
            if let Err(e) = self.teardown(&framework_id).await {
                tracing::warn!(framework_id, error = %e, "tearing down an expired framework failed");
            }
        }
    }
}
