use cairn_api::internal::agent_registry_server::AgentRegistry;
use cairn_api::internal::{AgentMessage, MasterMessage, agent_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::audit::{Audit, Outcome};
use crate::authn::{Authentication, Realm};
use crate::error::CallError;
use crate::leader::{Input, LeaderHandle};

/// Agents register over one long-lived bidirectional stream: the first message is
/// the registration, then heartbeats and status updates flow up while tasks, kills
/// and acknowledgements flow down.
pub(crate) struct AgentService {
    leader: LeaderHandle,
    auth: Authentication,
    audit: Audit,
}

impl AgentService {
    pub(crate) fn new(leader: LeaderHandle, auth: Authentication, audit: Audit) -> Self {
        Self {
            leader,
            auth,
            audit,
        }
    }
}

#[tonic::async_trait]
impl AgentRegistry for AgentService {
    type RegisterStream = ReceiverStream<Result<MasterMessage, Status>>;

    async fn register(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::RegisterStream>, Status> {
        let header = request.metadata().get("authorization");
        let principal = match (self.auth).principal(Realm::Agent, header.map(|v| v.as_bytes())) {
            Ok(principal) => principal,
            Err(e) => {
                let outcome = Outcome::Unauthenticated;
                self.audit.record(None, "REGISTER_AGENT", "-", outcome);
                return Err(Status::unauthenticated(e.to_string()));
            }
        };
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or(CallError::AgentStreamEndedEarly)?;
        let Some(agent_message::Message::Register(register)) = first.message else {
            return Err(CallError::AgentFirstMessageNotRegister.into());
        };
        if register.version != cairn_api::VERSION {
            return Err(CallError::AgentVersionMismatch {
                agent_version: register.version,
                master_version: cairn_api::VERSION,
            }
            .into());
        }
        let info = register.info.ok_or(CallError::AgentWithoutInfo)?;
        let (tx, rx) = mpsc::channel(crate::STREAM_BUFFER);
        let named = info
            .id
            .as_ref()
            .map_or("new", |id| id.value.as_str())
            .to_owned();
        let registered = self
            .leader
            .ask(|reply| Input::RegisterAgent {
                info: Box::new(info),
                tasks: register.tasks,
                charges: register.charges,
                executors: register.executors,
                principal: principal.clone(),
                sender: tx,
                reply,
            })
            .await;
        let outcome = match &registered {
            Ok(_) => Outcome::Accepted,
            Err(e) => Outcome::of(e.http_status()),
        };
        let target = registered.as_ref().map_or(named, |(id, _)| id.clone());
        (self.audit).record(principal.as_deref(), "REGISTER_AGENT", &target, outcome);
        let (agent_id, conn) = registered?;
        let inputs = self.leader.inputs.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                let Some(message) = m.message else { continue };
                let input = Input::AgentMessage {
                    agent_id: agent_id.clone(),
                    conn,
                    message,
                };
                if inputs.send(input).await.is_err() {
                    return;
                }
            }
            let _ = inputs
                .send(Input::AgentDisconnected { agent_id, conn })
                .await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
