//! The agent's connection to the master: register, then carry messages both ways;
//! when the master cannot be reached, say so in one line and retry with backoff.

use std::time::Duration;

use anyhow::Context as _;
use cairn_api::internal::agent_registry_client::AgentRegistryClient;
use cairn_api::internal::{AgentMessage, agent_message, master_message};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::core::Input;

/// Kept short: an agent notices a restarted master within this long.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

pub async fn run(master: String, core: mpsc::Sender<Input>) {
    let mut backoff = Duration::from_millis(500);
    let mut failures = 0u32;
    loop {
        match connect_once(&master, &core).await {
            Ok(()) => {
                tracing::warn!(master, "lost the connection to the master; reconnecting");
                backoff = Duration::from_millis(500);
                failures = 0;
            }
            Err(e) => {
                // One line per failure streak start, then one every ten attempts.
                if failures.is_multiple_of(10) {
                    tracing::warn!(
                        "cannot reach master at {master}: {e:#}; retrying every {}",
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

/// One registration and session; returns when the stream ends.
async fn connect_once(master: &str, core: &mpsc::Sender<Input>) -> anyhow::Result<()> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{master}"))
        .with_context(|| format!("{master:?} is not HOST:PORT"))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.context("connect")?;
    let mut client = AgentRegistryClient::new(channel).max_decoding_message_size(16 << 20);
    let (reply, registration) = oneshot::channel();
    core.send(Input::Registration(reply))
        .await
        .context("agent stopping")?;
    let registration = registration.await.context("agent stopping")?;
    // Deep enough for a burst of updates from thousands of short tasks.
    let (tx, rx) = mpsc::channel(8192);
    tx.send(AgentMessage {
        message: Some(agent_message::Message::Register(registration)),
    })
    .await
    .context("agent stopping")?;
    let mut inbound = client
        .register(ReceiverStream::new(rx))
        .await
        .map_err(|s| anyhow::anyhow!("registration refused: {}", s.message()))?
        .into_inner();
    let first = inbound
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("registration refused: {}", s.message()))?
        .context("the master closed the stream during registration")?;
    let Some(master_message::Message::Registered(registered)) = first.message else {
        anyhow::bail!("the master did not answer the registration");
    };
    let agent_id = registered.agent_id.unwrap_or_default().value;
    core.send(Input::MasterConnected {
        agent_id,
        to_master: tx,
    })
    .await
    .context("agent stopping")?;
    while let Ok(Some(m)) = inbound.message().await {
        if let Some(message) = m.message {
            core.send(Input::FromMaster(Box::new(message)))
                .await
                .context("agent stopping")?;
        }
    }
    Ok(())
}
