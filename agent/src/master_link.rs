//! The agent's connection to the master: register, then carry messages both ways;
//! when the master cannot be reached, say so in one line and retry with backoff.

use std::time::Duration;

use cairn_api::internal::agent_registry_client::AgentRegistryClient;
use cairn_api::internal::{AgentMessage, agent_message, master_message};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::input::Input;

/// Kept short: an agent notices a restarted master within this long.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The principal and secret the agent authenticates to the master with (Mesos'
/// `--credential`): sent as HTTP Basic in the registration's metadata.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    principal: String,
    secret: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret, in a log or a panic message.
        f.debug_struct("Credential")
            .field("principal", &self.principal)
            .finish()
    }
}

impl Credential {
    /// Reads Mesos' credential file: `{"principal": …, "secret": …}`, or its text
    /// form, `principal secret` on one line.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading the credential file {}: {e}", path.display()))?;
        let bad = |why: String| format!("the credential file {}: {why}", path.display());
        if text.trim_start().starts_with('{') {
            return serde_json::from_str(&text).map_err(|e| bad(e.to_string()));
        }
        match text.split_whitespace().collect::<Vec<_>>()[..] {
            [principal, secret] => Ok(Self {
                principal: principal.to_owned(),
                secret: secret.to_owned(),
            }),
            _ => Err(bad("not `principal secret`".into())),
        }
    }

    fn header(&self) -> Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
        use base64::Engine as _;
        let pair = format!("{}:{}", self.principal, self.secret);
        let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
        format!("Basic {encoded}").parse().ok()
    }
}

pub async fn run(master: String, credential: Option<Credential>, core: mpsc::Sender<Input>) {
    let mut backoff = Duration::from_millis(500);
    let mut failures = 0u32;
    loop {
        match connect_once(&master, credential.as_ref(), &core).await {
            Ok(()) => {
                tracing::warn!(master, "lost the connection to the master; reconnecting");
                backoff = Duration::from_millis(500);
                failures = 0;
            }
            Err(e) => {
                // One line per failure streak start, then one every ten attempts.
                if failures.is_multiple_of(10) {
                    tracing::warn!(
                        "cannot reach master at {master}: {}; retrying every {}",
                        chain(&e),
                        humantime::format_duration(backoff)
                    );
                }
                failures += 1;
            }
        }
        if core.send(Input::MasterDisconnected).await.is_err() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Why one session with the master ended or never began; logged, then retried.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("{master:?} is not HOST:PORT")]
    Address {
        master: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("connect")]
    Connect(#[source] tonic::transport::Error),
    #[error("registration refused: {0}")]
    Refused(String),
    #[error("the master closed the stream during registration")]
    Closed,
    #[error("the master did not answer the registration")]
    NoAnswer,
    /// The agent's core is gone: the agent is stopping.
    #[error("agent stopping")]
    Stopping,
}

/// One registration and session; returns when the stream ends.
async fn connect_once(
    master: &str,
    credential: Option<&Credential>,
    core: &mpsc::Sender<Input>,
) -> Result<(), LinkError> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{master}"))
        .map_err(|source| LinkError::Address {
            master: master.to_owned(),
            source,
        })?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(LinkError::Connect)?;
    let mut client = AgentRegistryClient::new(channel).max_decoding_message_size(16 << 20);
    let (reply, registration) = oneshot::channel();
    core.send(Input::Registration(reply))
        .await
        .map_err(|_| LinkError::Stopping)?;
    let registration = registration.await.map_err(|_| LinkError::Stopping)?;
    // Deep enough for a burst of updates from thousands of short tasks.
    let (tx, rx) = mpsc::channel(8192);
    tx.send(AgentMessage {
        message: Some(agent_message::Message::Register(registration)),
    })
    .await
    .map_err(|_| LinkError::Stopping)?;
    let refused = |s: tonic::Status| LinkError::Refused(s.message().to_owned());
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(header) = credential.and_then(Credential::header) {
        request.metadata_mut().insert("authorization", header);
    }
    let mut inbound = client
        .register(request)
        .await
        .map_err(refused)?
        .into_inner();
    let first = inbound
        .message()
        .await
        .map_err(refused)?
        .ok_or(LinkError::Closed)?;
    let Some(master_message::Message::Registered(registered)) = first.message else {
        return Err(LinkError::NoAnswer);
    };
    let agent_id = registered.agent_id.unwrap_or_default().value;
    core.send(Input::MasterConnected {
        agent_id,
        to_master: tx,
    })
    .await
    .map_err(|_| LinkError::Stopping)?;
    while let Ok(Some(m)) = inbound.message().await {
        if let Some(message) = m.message {
            core.send(Input::FromMaster(Box::new(message)))
                .await
                .map_err(|_| LinkError::Stopping)?;
        }
    }
    Ok(())
}

/// An error and its sources on one line, as the log shows it.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
