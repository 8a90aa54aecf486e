//! Cairn's wire types and the vocabulary both sides of every connection share:
//! the protobuf messages (Mesos v1 names, and [Mesos' JSON](json) for them), ids, the
//! [`Resources`] algebra and task states.

pub mod authn;
pub mod authz;
pub mod charges;
#[cfg(test)]
mod fuzz;
pub mod ids;
pub mod json;
pub mod resources;
mod state;
pub mod tls;

pub use resources::{Resources, ResourcesError};

/// Seconds since the epoch, as Mesos timestamps updates (and Cairn its tokens).
pub fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The Mesos v1 data model and the scheduler Call/Event API.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("cairn.v1");
}

/// Cairn's own protocols: agent registration, the executor API, registry records, Raft.
pub mod internal {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("cairn.internal");
}

/// The version every daemon reports and checks on registration.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
