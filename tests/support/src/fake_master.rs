//! A stand-in master for measuring one agent alone: it speaks the agent protocol
//! (`AgentRegistry.Register`), keeps a number of tasks in flight on the agent, and
//! acknowledges every status update at once, as a framework that keeps up would.
//! What it measures is then the agent host's own work: the agent, its executor, the
//! sandboxes and the checkpoint.

use std::pin::Pin;
use std::sync::Mutex;
use std::time::Instant;

use cairn_api::internal::agent_registry_server::{AgentRegistry, AgentRegistryServer};
use cairn_api::internal::{
    AgentMessage, AgentRegistered, MasterMessage, RunTask, StatusUpdateAcknowledgement,
    agent_message, master_message,
};
use cairn_api::v1::{AgentId, FrameworkId, FrameworkInfo, TaskInfo, TaskState};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Makes task `i`, given the agent id the fake master assigned.
pub type MakeTask = Box<dyn Fn(usize, &AgentId) -> TaskInfo + Send + Sync>;

/// What one run asks of the agent.
pub struct Workload {
    pub total: usize,
    pub inflight: usize,
    pub make: MakeTask,
}

/// How a run went: when the first launch went out and the last terminal update came.
pub struct Outcome {
    pub started: Instant,
    pub ended: Instant,
    pub not_finished: usize,
    pub updates: usize,
}

struct FakeMaster {
    workload: Mutex<Option<(Workload, oneshot::Sender<Outcome>)>>,
}

/// Serves on `127.0.0.1:0`; returns the address and the run's outcome, which arrives
/// once every task's terminal update has.
pub async fn serve(workload: Workload) -> (String, oneshot::Receiver<Outcome>) {
    let (done, outcome) = oneshot::channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let master = FakeMaster {
        workload: Mutex::new(Some((workload, done))),
    };
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(AgentRegistryServer::new(master).max_decoding_message_size(16 << 20))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (addr, outcome)
}

type Outbound = Pin<Box<dyn tokio_stream::Stream<Item = Result<MasterMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentRegistry for FakeMaster {
    type RegisterStream = Outbound;

    async fn register(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        let Some((workload, done)) = self.workload.lock().unwrap().take() else {
            return Err(Status::failed_precondition("one session per run"));
        };
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(65536);
        tokio::spawn(drive(workload, inbound, tx, done));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn send(tx: &mpsc::Sender<Result<MasterMessage, Status>>, m: master_message::Message) {
    // The channel is deeper than anything a run keeps in flight.
    tx.try_send(Ok(MasterMessage { message: Some(m) }))
        .expect("fake master's stream is full");
}

async fn drive(
    w: Workload,
    mut inbound: Streaming<AgentMessage>,
    tx: mpsc::Sender<Result<MasterMessage, Status>>,
    done: oneshot::Sender<Outcome>,
) {
    let agent_id = AgentId {
        value: "bench-agent".into(),
    };
    let framework_id = FrameworkId {
        value: "bench-framework".into(),
    };
    let framework = FrameworkInfo {
        user: "root".into(),
        name: "capacity".into(),
        id: Some(framework_id.clone()),
        ..Default::default()
    };
    // The registration comes first.
    let _ = inbound.message().await;
    send(
        &tx,
        master_message::Message::Registered(AgentRegistered {
            agent_id: Some(agent_id.clone()),
            heartbeat_interval_seconds: 15.0,
        }),
    );
    let started = Instant::now();
    let mut launched = 0;
    let mut terminal = 0;
    let mut not_finished = 0;
    let mut updates = 0;
    let launch = |launched: &mut usize, n: usize| {
        for _ in 0..n {
            send(
                &tx,
                master_message::Message::RunTask(RunTask {
                    framework: Some(framework.clone()),
                    task: Some((w.make)(*launched, &agent_id)),
                    group: Vec::new(),
                    container_id: String::new(),
                    executor_id: String::new(),
                }),
            );
            *launched += 1;
        }
    };
    launch(&mut launched, w.inflight.min(w.total));
    while terminal < w.total {
        let Ok(Some(message)) = inbound.message().await else {
            panic!("the agent closed its session after {terminal} terminal updates");
        };
        let Some(agent_message::Message::StatusUpdate(update)) = message.message else {
            continue;
        };
        updates += 1;
        let status = update.status.unwrap_or_default();
        send(
            &tx,
            master_message::Message::Ack(StatusUpdateAcknowledgement {
                framework_id: update.framework_id,
                task_id: status.task_id.clone(),
                uuid: status.uuid.clone(),
            }),
        );
        let state = TaskState::try_from(status.state).unwrap_or(TaskState::TaskError);
        if !matches!(
            state,
            TaskState::TaskStaging
                | TaskState::TaskStarting
                | TaskState::TaskRunning
                | TaskState::TaskKilling
        ) {
            terminal += 1;
            if state != TaskState::TaskFinished {
                not_finished += 1;
                if not_finished <= 3 {
                    eprintln!("not finished: {state:?} {}", status.message);
                }
            }
            let room = w.total - launched;
            launch(&mut launched, room.min(1));
        }
    }
    let _ = done.send(Outcome {
        started,
        ended: Instant::now(),
        not_finished,
        updates,
    });
    // Keep the session open until the bench is done with the agent.
    while let Ok(Some(_)) = inbound.message().await {}
}
