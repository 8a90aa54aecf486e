//! What the leader's unit tests share: a real leader on a real registry (RocksDB in a
//! temp dir), driven through its input channel as the APIs drive it, and waits on
//! its events and agent messages that fail at a deadline instead of sleeping.

use std::sync::Arc;
use std::time::Duration;

use cairn_api::Resources;
use cairn_api::internal::{MasterMessage, agent_message, master_message};
use cairn_api::v1::{
    AgentId, AgentInfo, Call, CommandInfo, Event, FrameworkId, FrameworkInfo, Offer, OfferId,
    TaskId, TaskInfo, TaskStatus, call, event, offer::operation,
};
use tokio::sync::mpsc;

use super::{Input, LeaderConfig, LeaderHandle, MasterSnapshot};
use crate::error::CallError;
use crate::registry::Registry;

/// How long a test waits for something the leader should do at once.
pub(super) const DEADLINE: Duration = Duration::from_secs(10);

/// A leader with its registry; the temp dir lives as long as the test.
pub(super) struct Cluster {
    pub(super) leader: LeaderHandle,
    registry: Registry,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    /// Closes the database before its directory goes and before the test process
    /// exits (RocksDB's threads otherwise race the exit).
    fn drop(&mut self) {
        self.registry.stop();
    }
}

/// A subscribed framework: its id, stream id and event stream.
pub(super) struct Framework {
    pub(super) id: String,
    pub(super) stream_id: String,
    pub(super) events: mpsc::Receiver<Result<Event, tonic::Status>>,
}

/// A registered agent: its id, connection number and the messages the master sends it.
pub(super) struct Agent {
    pub(super) id: String,
    pub(super) conn: u64,
    pub(super) messages: mpsc::Receiver<Result<MasterMessage, tonic::Status>>,
}

impl Cluster {
    /// Starts a leader whose timers stay out of the way (`quiet_config`).
    pub(super) async fn start() -> Self {
        Self::start_with(quiet_config()).await
    }

    pub(super) async fn start_with(config: LeaderConfig) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let registry = Registry::open(&dir.path().join("registry"), 1).expect("open registry");
        registry
            .wait_for_leadership(DEADLINE)
            .await
            .expect("a one-voter registry elects itself");
        Self {
            leader: super::Leader::spawn(config, registry.clone()),
            registry,
            _dir: dir,
        }
    }

    /// Takes the framework's next offer and launches `task` with it.
    pub(super) async fn accept_one(&self, framework: &mut Framework, task: TaskInfo) {
        let offer = framework.next_offers().await.remove(0);
        self.call(framework, accept_call(&offer, vec![task]))
            .await
            .expect("ACCEPT");
    }

    pub(super) async fn try_subscribe(&self, info: FrameworkInfo) -> Result<Framework, CallError> {
        let (tx, events) = mpsc::channel(crate::STREAM_BUFFER);
        let stream_id = self
            .leader
            .ask(|reply| Input::Subscribe {
                info: Box::new(info),
                principal: None,
                token: None,
                events: tx,
                reply,
            })
            .await?;
        let mut framework = Framework {
            id: String::new(),
            stream_id,
            events,
        };
        let subscribed = framework.next_event(event::Type::Subscribed).await;
        framework.id = subscribed
            .subscribed
            .and_then(|s| s.framework_id)
            .expect("SUBSCRIBED carries the framework id")
            .value;
        Ok(framework)
    }

    /// Subscribes a new framework named `name` under role `*`.
    pub(super) async fn subscribe(&self, name: &str) -> Framework {
        self.try_subscribe(framework_info(name))
            .await
            .expect("subscribe")
    }

    /// Registers a new agent with `resources` (the resources text format).
    pub(super) async fn register_agent(&self, resources: &str) -> Agent {
        self.try_register(agent_info(resources))
            .await
            .expect("register agent")
    }

    /// Registers an agent (with the id in `info`, if any: a re-registration).
    pub(super) async fn try_register(&self, info: AgentInfo) -> Result<Agent, CallError> {
        self.try_register_reporting(info, None, Vec::new()).await
    }

    /// Registers an agent that reports its charges and running executors.
    pub(super) async fn try_register_reporting(
        &self,
        info: AgentInfo,
        charges: Option<cairn_api::internal::AgentCharges>,
        executors: Vec<cairn_api::internal::RunningExecutor>,
    ) -> Result<Agent, CallError> {
        let (tx, mut messages) = mpsc::channel(crate::STREAM_BUFFER);
        let (id, conn) = self
            .leader
            .ask(|reply| Input::RegisterAgent {
                info: Box::new(info),
                tasks: Vec::new(),
                charges,
                executors,
                sender: tx,
                principal: None,
                reply,
            })
            .await?;
        match next_message(&mut messages).await {
            master_message::Message::Registered(_) => {}
            other => panic!("expected REGISTERED, got {other:?}"),
        }
        Ok(Agent { id, conn, messages })
    }

    /// Sends a scheduler call from `framework` on its current stream.
    pub(super) async fn call(&self, framework: &Framework, call: Call) -> Result<(), CallError> {
        self.call_on(Some(framework.stream_id.clone()), framework, call)
            .await
    }

    /// Sends a scheduler call from `framework` on the given stream id.
    pub(super) async fn call_on(
        &self,
        stream_id: Option<String>,
        framework: &Framework,
        mut call: Call,
    ) -> Result<(), CallError> {
        call.framework_id = Some(FrameworkId {
            value: framework.id.clone(),
        });
        self.leader
            .ask(|reply| Input::Call {
                call: Box::new(call),
                stream_id,
                principal: None,
                reply,
            })
            .await
    }

    /// A message from `agent` on its stream, as the agent service forwards it.
    pub(super) async fn agent_sends(&self, agent: &Agent, message: agent_message::Message) {
        self.leader
            .inputs
            .send(Input::AgentMessage {
                agent_id: agent.id.clone(),
                conn: agent.conn,
                message,
            })
            .await
            .expect("the leader is running");
    }

    /// The leader's state after every input sent before this call.
    pub(super) async fn snapshot(&self) -> Arc<MasterSnapshot> {
        self.leader.fresh_snapshot().await
    }
}

impl Framework {
    /// The next event of type `kind`, skipping others (heartbeats, offers).
    pub(super) async fn next_event(&mut self, kind: event::Type) -> Event {
        let wait = async {
            loop {
                match self.events.recv().await {
                    Some(Ok(e)) if e.r#type == kind as i32 => return e,
                    Some(Ok(_)) => {}
                    Some(Err(status)) => panic!("the stream failed: {status}"),
                    None => panic!("the stream ended waiting for {kind:?}"),
                }
            }
        };
        tokio::time::timeout(DEADLINE, wait)
            .await
            .unwrap_or_else(|_| panic!("no {kind:?} event within {DEADLINE:?}"))
    }

    /// The status of the next UPDATE event.
    pub(super) async fn next_update(&mut self) -> TaskStatus {
        self.next_event(event::Type::Update)
            .await
            .update
            .and_then(|u| u.status)
            .expect("UPDATE carries a status")
    }

    /// The offers of the next OFFERS event.
    pub(super) async fn next_offers(&mut self) -> Vec<Offer> {
        self.next_event(event::Type::Offers)
            .await
            .offers
            .expect("OFFERS carries offers")
            .offers
    }

    /// The events already queued, without waiting: the leader answers a call only
    /// after sending what the call caused, so after `Cluster::call` returns this is
    /// everything it caused.
    pub(super) fn queued_events(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        while let Ok(Ok(e)) = self.events.try_recv() {
            events.push(e);
        }
        events
    }
}

impl Agent {
    /// The next message the master sends this agent.
    pub(super) async fn next_message(&mut self) -> master_message::Message {
        next_message(&mut self.messages).await
    }

    /// The messages already queued for this agent, without waiting.
    pub(super) fn queued_messages(&mut self) -> Vec<master_message::Message> {
        let mut messages = Vec::new();
        while let Ok(Ok(m)) = self.messages.try_recv() {
            messages.extend(m.message);
        }
        messages
    }
}

async fn next_message(
    messages: &mut mpsc::Receiver<Result<MasterMessage, tonic::Status>>,
) -> master_message::Message {
    let wait = async {
        loop {
            match messages.recv().await {
                Some(Ok(MasterMessage {
                    message: Some(m), ..
                })) => return m,
                Some(Ok(_)) => {}
                Some(Err(status)) => panic!("the agent stream failed: {status}"),
                None => panic!("the agent stream ended"),
            }
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .unwrap_or_else(|_| panic!("no message for the agent within {DEADLINE:?}"))
}

/// Timers out of the way: allocation happens on the inputs that trigger it
/// (subscribe, registration, revive, ACCEPT), not on a tick, and nothing times out.
pub(super) fn quiet_config() -> LeaderConfig {
    let hour = Duration::from_secs(3600);
    LeaderConfig {
        allocation_interval: hour,
        agent_heartbeat_interval: hour,
        framework_heartbeat_interval: hour,
        agent_timeout: hour,
        ..LeaderConfig::default()
    }
}

pub(super) fn agent_info(resources: &str) -> AgentInfo {
    AgentInfo {
        hostname: "agent.test".into(),
        port: 5051,
        resources: Resources::parse(resources)
            .expect("test resources")
            .to_proto(),
        ..Default::default()
    }
}

pub(super) fn framework_info(name: &str) -> FrameworkInfo {
    FrameworkInfo {
        name: name.into(),
        failover_timeout: 3600.0,
        ..Default::default()
    }
}

/// A command task asking for `resources`.
pub(super) fn command_task(task_id: &str, resources: &str) -> TaskInfo {
    TaskInfo {
        name: task_id.into(),
        task_id: Some(TaskId {
            value: task_id.into(),
        }),
        resources: Resources::parse(resources)
            .expect("test resources")
            .to_proto(),
        command: Some(CommandInfo {
            value: Some("true".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An ACCEPT of `offer` launching each of `tasks` on its own.
pub(super) fn accept_call(offer: &Offer, tasks: Vec<TaskInfo>) -> Call {
    accept_offers(
        vec![offer.id.clone().expect("offers have ids")],
        vec![operation::Type::Launch],
        tasks,
    )
}

/// An ACCEPT of `offer_ids` with one operation of each of `kinds`, all with `tasks`.
pub(super) fn accept_offers(
    offer_ids: Vec<OfferId>,
    kinds: Vec<operation::Type>,
    tasks: Vec<TaskInfo>,
) -> Call {
    let operations = kinds
        .into_iter()
        .map(|kind| match kind {
            operation::Type::LaunchGroup => cairn_api::v1::offer::Operation {
                r#type: kind as i32,
                launch_group: Some(operation::LaunchGroup {
                    executor: None,
                    task_group: Some(cairn_api::v1::TaskGroupInfo {
                        tasks: tasks.clone(),
                    }),
                }),
                ..Default::default()
            },
            _ => cairn_api::v1::offer::Operation {
                r#type: kind as i32,
                launch: Some(operation::Launch {
                    task_infos: tasks.clone(),
                }),
                ..Default::default()
            },
        })
        .collect();
    Call {
        r#type: call::Type::Accept as i32,
        accept: Some(call::Accept {
            offer_ids,
            operations,
            filters: None,
        }),
        ..Default::default()
    }
}

/// An agent id message field.
pub(super) fn agent_id(id: &str) -> Option<AgentId> {
    Some(AgentId { value: id.into() })
}

/// A task id message field.
pub(super) fn task_id(id: &str) -> Option<TaskId> {
    Some(TaskId { value: id.into() })
}
