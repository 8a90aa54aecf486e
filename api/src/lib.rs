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
