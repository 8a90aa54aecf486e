//! The agent's checkpoint: every change to its durable state (agent id, frameworks,
//! executors, tasks, status updates and their acknowledgements) is a record appended
//! to `<work_dir>/meta/checkpoint.log`. Records are applied to the in-memory state
//! at once and made durable in batches, one sync per batch; the agent lets nothing
//! that depends on a record leave the process before that record is synced.
//!
//! Public so the checkpoint benchmark can drive it; the agent is its only user.

mod log;
mod state;

use std::path::Path;

use cairn_api::internal::{CheckpointRecord, checkpoint_record::Record};

pub use log::LogError;

/// Why a restarted agent refuses its new flags: they would break what the master
/// and running tasks rely on.
#[derive(Debug, thiserror::Error)]
pub enum ReconfigureError {
    #[error("the checkpointed resources do not parse: {0}")]
    CheckpointedResources(cairn_api::ResourcesError),
    #[error("the configured resources do not parse: {0}")]
    ConfiguredResources(cairn_api::ResourcesError),
    #[error(
        "the agent's resources changed from {old} to {new}; a restarted agent may add resources but not remove any"
    )]
    ResourcesRemoved {
        old: cairn_api::Resources,
        new: cairn_api::Resources,
    },
    #[error("the agent's attributes changed; a restarted agent keeps them")]
    AttributesChanged,
    #[error("cannot write the checkpoint: {0}")]
    Write(std::io::Error),
}
pub use state::{AgentState, TaskKey, task_record};

/// The log is rewritten from the live state once it grows past this many bytes and
/// four times its size after the previous rewrite.
const COMPACT_MIN_BYTES: u64 = 4 << 20;

pub struct Checkpoint {
    log: log::Log,
    pub state: AgentState,
    compacted_bytes: u64,
}

impl Checkpoint {
    /// Opens the checkpoint and rebuilds the state it records. `fresh` discards it
    /// (the machine rebooted: nothing it describes still runs).
    pub fn open(path: &Path, fresh: bool) -> Result<Self, LogError> {
        let (mut log, records) = log::Log::open::<CheckpointRecord>(path)?;
        let mut state = AgentState::default();
        if fresh {
            log.rewrite::<CheckpointRecord>(&[])
                .map_err(|source| LogError::Io {
                    path: path.to_owned(),
                    source,
                })?;
        } else {
            for record in records {
                state.apply(record);
            }
        }
        let compacted_bytes = log.committed_bytes();
        Ok(Self {
            log,
            state,
            compacted_bytes,
        })
    }

    /// Applies a change now; it becomes durable at the next [`Checkpoint::commit`].
    pub fn record(&mut self, record: Record) {
        let record = CheckpointRecord {
            record: Some(record),
        };
        self.log.append(&record);
        self.state.apply(record);
    }

    pub fn has_pending(&self) -> bool {
        self.log.has_pending()
    }

    pub fn pending_records(&self) -> usize {
        self.log.pending_records()
    }

    /// Makes every recorded change durable with one sync.
    pub fn commit(&mut self) -> std::io::Result<usize> {
        self.log.commit()
    }

    /// Checks the agent's configured resources and attributes against what it last
    /// registered with, and records them. A restart may add resources (Mesos'
    /// additive reconfiguration policy); removing or changing any, or changing an
    /// attribute, would break what the master and running tasks rely on, so the
    /// agent refuses to start instead.
    pub fn reconfigure(&mut self, info: &cairn_api::v1::AgentInfo) -> Result<(), ReconfigureError> {
        let current = cairn_api::v1::AgentInfo {
            resources: info.resources.clone(),
            attributes: info.attributes.clone(),
            ..Default::default()
        };
        if let Some(previous) = &self.state.agent_info {
            if *previous == current {
                return Ok(());
            }
            let old = cairn_api::Resources::from_proto(&previous.resources)
                .map_err(ReconfigureError::CheckpointedResources)?;
            let new = cairn_api::Resources::from_proto(&current.resources)
                .map_err(ReconfigureError::ConfiguredResources)?;
            if !new.contains(&old) {
                return Err(ReconfigureError::ResourcesRemoved { old, new });
            }
            if previous.attributes != current.attributes {
                return Err(ReconfigureError::AttributesChanged);
            }
        }
        self.record(Record::AgentInfo(current));
        self.commit().map(|_| ()).map_err(ReconfigureError::Write)
    }

    /// Rewrites the log as the live state once it has grown enough to be worth it.
    pub fn maybe_compact(&mut self) -> std::io::Result<bool> {
        let size = self.log.committed_bytes();
        if self.log.has_pending()
            || size < COMPACT_MIN_BYTES
            || size < self.compacted_bytes.saturating_mul(4)
        {
            return Ok(false);
        }
        self.log.rewrite(&self.state.to_records())?;
        self.compacted_bytes = self.log.committed_bytes();
        tracing::info!(
            before = size,
            after = self.compacted_bytes,
            "checkpoint compacted"
        );
        Ok(true)
    }
}

#[cfg(test)]
mod tests;
