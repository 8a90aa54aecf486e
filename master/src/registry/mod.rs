//! The registry: the master's durable state (frameworks and admitted agents),
//! replicated through Raft even when there is one master, and applied to RocksDB
//! in the same batch as the applied index it reflects.

mod node;
mod storage;

use std::collections::BTreeMap;

use cairn_api::internal::RoleQuota;
use cairn_api::v1::{AgentInfo, FrameworkInfo};
use thiserror::Error;

pub use node::Registry;

#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("cannot open the registry at {0}: {1}")]
    Open(String, String),
    #[error("data dir {dir} belongs to master node {stored}, not node {asked}")]
    WrongNode {
        dir: String,
        stored: u64,
        asked: u64,
    },
    #[error("registry storage failed: {0}")]
    Io(String),
    #[error("registry data is corrupt: {0}")]
    Corrupt(String),
    #[error("this master is not the leader")]
    NotLeader,
    #[error("the registry is shut down")]
    Stopped,
    #[error("registry write rejected: {0}")]
    Rejected(String),
}

/// The replicated records, as applied up to `applied`.
#[derive(Debug, Clone, Default)]
pub struct RegistryState {
    pub frameworks: BTreeMap<String, FrameworkInfo>,
    pub agents: BTreeMap<String, AgentInfo>,
    /// Role weights other than the default 1.
    pub weights: BTreeMap<String, f64>,
    pub quotas: BTreeMap<String, RoleQuota>,
    /// Agents the operator marked gone: refused if they ever come back.
    pub gone_agents: std::collections::BTreeSet<String>,
    /// The principal each authenticated agent registered as, by agent id.
    pub agent_principals: BTreeMap<String, String>,
    /// Bearer tokens by id, revoked ones included until a day past their expiry.
    pub tokens: BTreeMap<String, cairn_api::internal::TokenRecord>,
    pub applied: u64,
}
