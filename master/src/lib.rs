//! The Cairn master: the registry (raft-rs over RocksDB), the leader's actor that owns
//! agents, frameworks, offers and tasks, and the APIs in front of them.

pub mod allocator;
mod api;
mod audit;
/// Who calls, and what they may do: shared with the agent, so they live in `cairn_api`.
pub use cairn_api::{authn, authz};
mod error;
mod leader;
pub mod rate_limits;
mod registry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use error::{CallError, MasterError};

/// Messages queued for one agent or framework stream. A stream that falls this far
/// behind is disconnected, to bound the master's memory; it is large because one
/// ACCEPT may launch thousands of tasks on one agent, and their updates come back
/// as fast.
pub(crate) const STREAM_BUFFER: usize = 1 << 16;
pub use leader::{LeaderConfig, MasterSnapshot};
pub use registry::{Registry, RegistryError, RegistryState};

#[derive(Debug, Clone)]
pub struct MasterConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// This master's Raft node id.
    pub node_id: u64,
    pub leader: LeaderConfig,
    /// Which realms ask who calls (see [`authn`]).
    pub authentication: authn::Authentication,
    /// Mesos' `--rate_limits` on scheduler calls, per principal.
    pub rate_limits: rate_limits::RateLimits,
}

/// A master bound to its port, not yet serving.
pub struct Master {
    listener: tokio::net::TcpListener,
    router: axum::Router,
}

impl Master {
    /// Opens the registry, elects this master in its group and binds the API port.
    pub async fn bind(config: MasterConfig) -> Result<Self, MasterError> {
        let registry = Registry::open(&config.data_dir.join("registry"), config.node_id).map_err(
            |source| MasterError::OpenRegistry {
                dir: config.data_dir.clone(),
                source,
            },
        )?;
        registry
            .wait_for_leadership(Duration::from_secs(10))
            .await
            .map_err(MasterError::Election)?;
        let leader = leader::Leader::spawn(config.leader.clone(), registry.clone());
        let tokens = api::RegistryTokens(registry.clone());
        let authentication = (config.authentication.clone()).with_tokens(Arc::new(tokens));
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| MasterError::Bind {
                addr: config.listen,
                source,
            })?;
        Ok(Self {
            listener,
            router: api::router(
                leader,
                registry,
                flags(&config),
                authentication,
                config.leader.acls.clone(),
                std::sync::Arc::new(rate_limits::Limiter::new(&config.rate_limits)),
            ),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves HTTP and gRPC on the bound port. Agent and scheduler streams live as
    /// long as their peers, so this runs until the process is stopped.
    pub async fn serve(self) -> Result<(), MasterError> {
        axum::serve(self.listener, self.router)
            .await
            .map_err(MasterError::Serve)
    }
}

/// The master's effective configuration as Mesos' GET_FLAGS reports it: name, value.
fn flags(config: &MasterConfig) -> Vec<(String, String)> {
    let d = |d: std::time::Duration| humantime::format_duration(d).to_string();
    let (l, auth) = (&config.leader, &config.authentication);
    use authn::Realm;
    let mut flags = vec![
        ("listen".into(), config.listen.to_string()),
        ("data_dir".into(), config.data_dir.display().to_string()),
        ("node_id".into(), config.node_id.to_string()),
        ("allocation_interval".into(), d(l.allocation_interval)),
        (
            "agent_heartbeat_interval".into(),
            d(l.agent_heartbeat_interval),
        ),
        (
            "framework_heartbeat_interval".into(),
            d(l.framework_heartbeat_interval),
        ),
        ("default_refuse_seconds".into(), d(l.default_refuse)),
        (
            "offer_timeout".into(),
            l.offer_timeout.map(d).unwrap_or_else(|| "none".into()),
        ),
        (
            "max_completed_tasks_per_framework".into(),
            l.max_completed_tasks_per_framework.to_string(),
        ),
        (
            "max_completed_frameworks".into(),
            l.max_completed_frameworks.to_string(),
        ),
        (
            "authenticate_frameworks".into(),
            auth.required(Realm::Scheduler).to_string(),
        ),
        (
            "authenticate_agents".into(),
            auth.required(Realm::Agent).to_string(),
        ),
        (
            "authenticate_http_readwrite".into(),
            auth.required(Realm::ReadWrite).to_string(),
        ),
        (
            "authenticate_http_readonly".into(),
            auth.required(Realm::ReadOnly).to_string(),
        ),
    ];
    if config.rate_limits != Default::default() {
        let json = serde_json::to_string(&config.rate_limits).unwrap_or_default();
        flags.push(("rate_limits".into(), json));
    }
    flags
}
