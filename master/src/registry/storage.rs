//! raft-rs's `Storage` over RocksDB: the log, HardState and ConfState of this master.
//!
//! Column families: `raft_log` (entries keyed by big-endian index), `raft_state`
//! (hard state, conf state, compaction point, node id, applied index) and `registry`
//! (the replicated records, written by the state machine in `node.rs`). Every write
//! of this module is one synced `WriteBatch`.

use std::path::Path;
use std::sync::{Arc, RwLock};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use rocksdb::{ColumnFamilyDescriptor, DB, Options, WriteBatch, WriteOptions};

use super::RegistryError;

pub(crate) const CF_LOG: &str = "raft_log";
pub(crate) const CF_STATE: &str = "raft_state";
pub(crate) const CF_REGISTRY: &str = "registry";

const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_CONF_STATE: &[u8] = b"conf_state";
const KEY_COMPACTED: &[u8] = b"compacted"; // index and term of the last compacted entry
const KEY_NODE_ID: &[u8] = b"node_id";
pub(crate) const KEY_APPLIED: &[u8] = b"applied";

/// What raft-rs asks of storage between reads of RocksDB, kept in memory.
#[derive(Default)]
struct Cached {
    hard_state: HardState,
    conf_state: ConfState,
    compacted_index: u64,
    compacted_term: u64,
    last_index: u64,
}

/// The Raft log of one master, in RocksDB. Cheap to clone: clones share the database.
#[derive(Clone)]
pub(crate) struct RaftStorage {
    db: Arc<DB>,
    cached: Arc<RwLock<Cached>>,
}

fn sync_write() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn decode_u64(bytes: &[u8]) -> Result<u64, RegistryError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| RegistryError::Corrupt("a stored index is not 8 bytes".into()))?;
    Ok(u64::from_be_bytes(arr))
}

fn store_err(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

impl RaftStorage {
    /// Opens the data dir, bootstrapping a one-voter group with `node_id` only when
    /// the directory holds no Raft state yet. A data dir made for another node id is
    /// refused rather than silently reused.
    pub(crate) fn open(dir: &Path, node_id: u64) -> Result<Self, RegistryError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = [CF_LOG, CF_STATE, CF_REGISTRY]
            .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs)
            .map_err(|e| RegistryError::Open(dir.display().to_string(), e.to_string()))?;
        let storage = Self {
            db: Arc::new(db),
            cached: Arc::default(),
        };
        match storage.get(CF_STATE, KEY_NODE_ID)? {
            Some(id) => {
                let stored = decode_u64(&id)?;
                if stored != node_id {
                    return Err(RegistryError::WrongNode {
                        dir: dir.display().to_string(),
                        stored,
                        asked: node_id,
                    });
                }
            }
            None => storage.bootstrap(node_id)?,
        }
        storage.load()?;
        Ok(storage)
    }

    fn bootstrap(&self, node_id: u64) -> Result<(), RegistryError> {
        let conf = ConfState {
            voters: vec![node_id],
            ..Default::default()
        };
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_STATE), KEY_NODE_ID, node_id.to_be_bytes());
        batch.put_cf(self.cf(CF_STATE), KEY_CONF_STATE, encode(&conf)?);
        batch.put_cf(
            self.cf(CF_STATE),
            KEY_HARD_STATE,
            encode(&HardState::default())?,
        );
        self.write(batch)
    }

    fn load(&self) -> Result<(), RegistryError> {
        let mut c = self.cached.write().expect("raft storage lock poisoned");
        if let Some(b) = self.get(CF_STATE, KEY_HARD_STATE)? {
            c.hard_state = decode(&b)?;
        }
        if let Some(b) = self.get(CF_STATE, KEY_CONF_STATE)? {
            c.conf_state = decode(&b)?;
        }
        if let Some(b) = self.get(CF_STATE, KEY_COMPACTED)? {
            if b.len() != 16 {
                return Err(RegistryError::Corrupt(
                    "compaction point is not 16 bytes".into(),
                ));
            }
            c.compacted_index = decode_u64(&b[..8])?;
            c.compacted_term = decode_u64(&b[8..])?;
        }
        let mut iter = self.db.raw_iterator_cf(self.cf(CF_LOG));
        iter.seek_to_last();
        c.last_index = match iter.key() {
            Some(k) => decode_u64(k)?,
            None => c.compacted_index,
        };
        Ok(())
    }

    pub(crate) fn db(&self) -> &DB {
        &self.db
    }

    pub(crate) fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    pub(crate) fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, RegistryError> {
        self.db
            .get_cf(self.cf(cf), key)
            .map_err(|e| RegistryError::Io(e.to_string()))
    }

    pub(crate) fn write(&self, batch: WriteBatch) -> Result<(), RegistryError> {
        self.db
            .write_opt(batch, &sync_write())
            .map_err(|e| RegistryError::Io(e.to_string()))
    }

    /// The index of the last entry applied to the registry.
    pub(crate) fn applied(&self) -> Result<u64, RegistryError> {
        self.get(CF_STATE, KEY_APPLIED)?
            .map_or(Ok(0), |b| decode_u64(&b))
    }

    /// Ready step 2: new entries (replacing any conflicting tail) and the hard state,
    /// in one synced batch.
    pub(crate) fn persist(
        &self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), RegistryError> {
        let mut batch = WriteBatch::default();
        let mut c = self.cached.write().expect("raft storage lock poisoned");
        let mut last = c.last_index;
        if let Some(first) = entries.first() {
            // A new leader's entries overwrite a conflicting suffix of ours.
            for stale in first.index..=c.last_index {
                batch.delete_cf(self.cf(CF_LOG), index_key(stale));
            }
            for e in entries {
                batch.put_cf(self.cf(CF_LOG), index_key(e.index), encode(e)?);
            }
            last = entries.last().map_or(last, |e| e.index);
        }
        let mut hs = c.hard_state.clone();
        if let Some(new) = hard_state {
            hs = new.clone();
            batch.put_cf(self.cf(CF_STATE), KEY_HARD_STATE, encode(&hs)?);
        }
        self.write(batch)?;
        c.last_index = last;
        c.hard_state = hs;
        Ok(())
    }

    /// Adds the apply-side writes to `batch`: the applied index, and the commit index
    /// raised to it, so a restart never finds applied > commit.
    pub(crate) fn record_applied(
        &self,
        batch: &mut WriteBatch,
        applied: u64,
        conf_state: Option<&ConfState>,
    ) -> Result<(), RegistryError> {
        let c = self.cached.read().expect("raft storage lock poisoned");
        batch.put_cf(self.cf(CF_STATE), KEY_APPLIED, applied.to_be_bytes());
        if c.hard_state.commit < applied {
            let mut hs = c.hard_state.clone();
            hs.commit = applied;
            batch.put_cf(self.cf(CF_STATE), KEY_HARD_STATE, encode(&hs)?);
        }
        if let Some(cs) = conf_state {
            batch.put_cf(self.cf(CF_STATE), KEY_CONF_STATE, encode(cs)?);
        }
        Ok(())
    }

    /// Mirrors what [`record_applied`] wrote once its batch is durable.
    pub(crate) fn applied_written(&self, applied: u64, conf_state: Option<ConfState>) {
        let mut c = self.cached.write().expect("raft storage lock poisoned");
        if c.hard_state.commit < applied {
            c.hard_state.commit = applied;
        }
        if let Some(cs) = conf_state {
            c.conf_state = cs;
        }
    }
}

pub(crate) fn encode(m: &impl protobuf::Message) -> Result<Vec<u8>, RegistryError> {
    m.write_to_bytes()
        .map_err(|e| RegistryError::Corrupt(format!("encoding raft state: {e}")))
}

fn decode<M: protobuf::Message>(bytes: &[u8]) -> Result<M, RegistryError> {
    M::parse_from_bytes(bytes).map_err(|e| RegistryError::Corrupt(format!("raft state: {e}")))
}

impl Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let c = self.cached.read().expect("raft storage lock poisoned");
        Ok(RaftState::new(c.hard_state.clone(), c.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let (first, last) = {
            let c = self.cached.read().expect("raft storage lock poisoned");
            (c.compacted_index + 1, c.last_index)
        };
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > last + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into();
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        for index in low..high {
            let bytes = self
                .db
                .get_cf(self.cf(CF_LOG), index_key(index))
                .map_err(store_err)?
                .ok_or(raft::Error::Store(StorageError::Unavailable))?;
            let entry = Entry::parse_from_bytes(&bytes).map_err(store_err)?;
            size += bytes.len() as u64;
            // Always return at least one entry, as raft-rs' own storage does.
            if !out.is_empty() && max_size.is_some_and(|m| size > m) {
                break;
            }
            out.push(entry);
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let (ci, ct, last) = {
            let c = self.cached.read().expect("raft storage lock poisoned");
            (c.compacted_index, c.compacted_term, c.last_index)
        };
        if idx == ci {
            return Ok(ct);
        }
        if idx < ci {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > last {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let bytes = self
            .db
            .get_cf(self.cf(CF_LOG), index_key(idx))
            .map_err(store_err)?
            .ok_or(raft::Error::Store(StorageError::Unavailable))?;
        Ok(Entry::parse_from_bytes(&bytes).map_err(store_err)?.term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self
            .cached
            .read()
            .expect("raft storage lock poisoned")
            .compacted_index
            + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self
            .cached
            .read()
            .expect("raft storage lock poisoned")
            .last_index)
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // A one-voter group never sends snapshots; followers come with replication.
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}
