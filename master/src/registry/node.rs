//! One raft-rs `RawNode`, driven by one thread: tick, step, propose, and the Ready
//! loop in the order raft-rs documents.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use cairn_api::internal::{RegistryOperation, registry_operation::Operation};
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, ConfState, Entry, EntryType, Message};
use raft::{RawNode, StateRole};
use rocksdb::WriteBatch;
use tokio::sync::{oneshot, watch};

use super::storage::{CF_REGISTRY, RaftStorage};
use super::{RegistryError, RegistryState};

const TICK: Duration = Duration::from_millis(100);

struct Proposal {
    op: RegistryOperation,
    reply: oneshot::Sender<Result<(), RegistryError>>,
}

/// What the raft thread is asked to do.
// A proposal crosses the channel once: boxing it would cost an allocation per write to
// save bytes in a queue that is nearly always empty.
#[allow(clippy::large_enum_variant)]
enum Command {
    Propose(Proposal),
    /// Close the database and end the thread.
    Stop,
}

/// A handle on the replicated registry. Writes go through Raft; reads see the
/// state as last applied.
#[derive(Clone)]
pub struct Registry {
    proposals: std_mpsc::Sender<Command>,
    /// The raft thread, joined by [`Registry::stop`].
    thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
    state: watch::Receiver<Arc<RegistryState>>,
    leader: watch::Receiver<bool>,
}

impl Registry {
    /// Opens (or bootstraps) the registry in `dir` and starts its Raft thread.
    pub fn open(dir: &Path, node_id: u64) -> Result<Self, RegistryError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| RegistryError::Open(dir.display().to_string(), e.to_string()))?;
        let storage = RaftStorage::open(dir, node_id)?;
        let state = load_state(&storage)?;
        let applied = storage.applied()?;
        let config = raft::Config {
            id: node_id,
            election_tick: 10,
            heartbeat_tick: 3,
            applied,
            pre_vote: true,
            check_quorum: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| RegistryError::Open(dir.display().to_string(), e.to_string()))?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut node = RawNode::new(&config, storage.clone(), &logger)
            .map_err(|e| RegistryError::Open(dir.display().to_string(), e.to_string()))?;
        // A one-voter group elects itself at once instead of after an election timeout.
        let voters = node.raft.prs().conf().voters().ids().len();
        if voters == 1 {
            node.campaign()
                .map_err(|e| RegistryError::Open(dir.display().to_string(), e.to_string()))?;
        }
        let (proposals, rx) = std_mpsc::channel();
        let (state_tx, state_rx) = watch::channel(Arc::new(state));
        let (leader_tx, leader_rx) = watch::channel(false);
        let driver = Driver {
            node,
            storage,
            state: state_tx,
            leader: leader_tx,
            pending: HashMap::new(),
            next_context: 1,
        };
        let thread = std::thread::Builder::new()
            .name("cairn-raft".into())
            .spawn(move || driver.run(rx))
            .map_err(|e| RegistryError::Io(format!("spawning the raft thread: {e}")))?;
        Ok(Self {
            proposals,
            thread: Arc::new(std::sync::Mutex::new(Some(thread))),
            state: state_rx,
            leader: leader_rx,
        })
    }

    /// Replicates `op` and returns once it is applied here.
    pub async fn propose(&self, op: Operation) -> Result<(), RegistryError> {
        let (reply, rx) = oneshot::channel();
        let op = RegistryOperation {
            operation: Some(op),
        };
        self.proposals
            .send(Command::Propose(Proposal { op, reply }))
            .map_err(|_| RegistryError::Stopped)?;
        rx.await.map_err(|_| RegistryError::Stopped)?
    }

    /// Stops the raft thread and waits until it has closed the database. RocksDB must
    /// be closed before the process exits: its background threads otherwise race the
    /// process's exit and can abort it. Later proposals fail with `Stopped`.
    pub fn stop(&self) {
        let _ = self.proposals.send(Command::Stop);
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }

    /// Whether the registry can take writes here: its raft thread runs and this
    /// master leads its group.
    pub fn health(&self) -> Result<(), String> {
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner());
        if thread.as_ref().is_none_or(|t| t.is_finished()) {
            return Err("the registry's raft thread has stopped".into());
        }
        if !*self.leader.borrow() {
            return Err("this master does not lead its registry group".into());
        }
        Ok(())
    }

    pub fn state(&self) -> Arc<RegistryState> {
        self.state.borrow().clone()
    }

    /// Waits until this master leads its group, or `timeout` passes.
    pub async fn wait_for_leadership(&self, timeout: Duration) -> Result<(), RegistryError> {
        let mut leader = self.leader.clone();
        tokio::time::timeout(timeout, leader.wait_for(|l| *l))
            .await
            .map_err(|_| RegistryError::NotLeader)?
            .map_err(|_| RegistryError::Stopped)?;
        Ok(())
    }
}

fn load_state(storage: &RaftStorage) -> Result<RegistryState, RegistryError> {
    let mut state = RegistryState {
        applied: storage.applied()?,
        ..Default::default()
    };
    let iter = storage
        .db()
        .iterator_cf(storage.cf(CF_REGISTRY), rocksdb::IteratorMode::Start);
    for item in iter {
        let (key, value) = item.map_err(|e| RegistryError::Io(e.to_string()))?;
        let key = String::from_utf8_lossy(&key).into_owned();
        let corrupt = |e: prost::DecodeError| RegistryError::Corrupt(format!("record {key}: {e}"));
        if let Some(id) = key.strip_prefix("framework/") {
            state.frameworks.insert(
                id.to_owned(),
                cairn_api::v1::FrameworkInfo::decode(&*value).map_err(corrupt)?,
            );
        } else if let Some(id) = key.strip_prefix("agent/") {
            state.agents.insert(
                id.to_owned(),
                cairn_api::v1::AgentInfo::decode(&*value).map_err(corrupt)?,
            );
        } else if let Some(role) = key.strip_prefix("weight/") {
            let w = cairn_api::internal::RoleWeight::decode(&*value).map_err(corrupt)?;
            state.weights.insert(role.to_owned(), w.weight);
        } else if let Some(id) = key.strip_prefix("gone/") {
            state.gone_agents.insert(id.to_owned());
        } else if let Some(id) = key.strip_prefix("agent_principal/") {
            let principal = String::from_utf8_lossy(&value).into_owned();
            state.agent_principals.insert(id.to_owned(), principal);
        } else if let Some(id) = key.strip_prefix("token/") {
            let t = cairn_api::internal::TokenRecord::decode(&*value).map_err(corrupt)?;
            state.tokens.insert(id.to_owned(), t);
        } else if let Some(role) = key.strip_prefix("quota/") {
            let q = cairn_api::internal::RoleQuota::decode(&*value).map_err(corrupt)?;
            state.quotas.insert(role.to_owned(), q);
        }
    }
    Ok(state)
}

struct Driver {
    node: RawNode<RaftStorage>,
    storage: RaftStorage,
    state: watch::Sender<Arc<RegistryState>>,
    leader: watch::Sender<bool>,
    pending: HashMap<u64, oneshot::Sender<Result<(), RegistryError>>>,
    next_context: u64,
}

impl Driver {
    fn run(mut self, rx: std_mpsc::Receiver<Command>) {
        let mut next_tick = Instant::now() + TICK;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Command::Propose(p)) => {
                    self.propose(p);
                    // Batch whatever else is queued into the same Ready.
                    loop {
                        match rx.try_recv() {
                            Ok(Command::Propose(p)) => self.propose(p),
                            Ok(Command::Stop) => return,
                            Err(_) => break,
                        }
                    }
                }
                Ok(Command::Stop) => return,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
            if Instant::now() >= next_tick {
                self.node.tick();
                next_tick = Instant::now() + TICK;
            }
            if let Err(e) = self.on_ready() {
                // Storage failing under Raft is not survivable: stop serving writes
                // rather than acknowledge something that is not durable.
                tracing::error!(error = %e, "registry storage failed; the registry stops");
                for (_, reply) in self.pending.drain() {
                    let _ = reply.send(Err(RegistryError::Io(e.to_string())));
                }
                return;
            }
        }
    }

    fn propose(&mut self, p: Proposal) {
        if self.node.raft.state != StateRole::Leader {
            let _ = p.reply.send(Err(RegistryError::NotLeader));
            return;
        }
        let context = self.next_context;
        self.next_context += 1;
        match self
            .node
            .propose(context.to_be_bytes().to_vec(), p.op.encode_to_vec())
        {
            Ok(()) => {
                self.pending.insert(context, p.reply);
            }
            Err(e) => {
                let _ = p.reply.send(Err(RegistryError::Rejected(e.to_string())));
            }
        }
    }

    /// The Ready loop, in raft-rs' documented order.
    fn on_ready(&mut self) -> Result<(), RegistryError> {
        if !self.node.has_ready() {
            return Ok(());
        }
        let mut ready = self.node.ready();
        // 1. Messages a leader may send before persisting.
        self.send(ready.take_messages());
        // 2. Persist new entries and the hard state in one synced batch.
        self.storage.persist(ready.entries(), ready.hs())?;
        // 3. Messages that must wait for persistence.
        self.send(ready.take_persisted_messages());
        // 4. Apply what is committed.
        self.apply(ready.take_committed_entries())?;
        if let Some(ss) = ready.ss() {
            let _ = self.leader.send(ss.raft_state == StateRole::Leader);
        }
        // 5. Advance, then handle the light ready: in a one-voter group every
        //    commit arrives here.
        let mut light = self.node.advance(ready);
        self.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.node.advance_apply();
        Ok(())
    }

    fn send(&mut self, messages: Vec<Message>) {
        for m in messages {
            // Replication to other masters comes with multi-master support; a
            // one-voter group addresses no one.
            tracing::debug!(
                to = m.to,
                "dropping raft message: no transport to peers yet"
            );
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), RegistryError> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(());
        };
        let mut state = (**self.state.borrow()).clone();
        let mut batch = WriteBatch::default();
        let mut conf_state: Option<ConfState> = None;
        let mut replies = Vec::new();
        for entry in entries {
            match entry.get_entry_type() {
                EntryType::EntryNormal => {
                    let result = if entry.data.is_empty() {
                        Ok(()) // a new leader's empty entry
                    } else {
                        self.apply_operation(&entry.data, &mut state, &mut batch)
                    };
                    if let Some(reply) = context_of(&entry).and_then(|c| self.pending.remove(&c)) {
                        replies.push((reply, result));
                    }
                }
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&entry.data)
                        .map_err(|e| RegistryError::Corrupt(format!("conf change: {e}")))?;
                    conf_state = Some(
                        self.node
                            .apply_conf_change(&cc)
                            .map_err(|e| RegistryError::Rejected(format!("conf change: {e}")))?,
                    );
                }
                EntryType::EntryConfChangeV2 => {
                    // Leaving joint consensus is an empty V2 entry: never skip it.
                    let cc = ConfChangeV2::parse_from_bytes(&entry.data)
                        .map_err(|e| RegistryError::Corrupt(format!("conf change: {e}")))?;
                    conf_state = Some(
                        self.node
                            .apply_conf_change(&cc)
                            .map_err(|e| RegistryError::Rejected(format!("conf change: {e}")))?,
                    );
                }
            }
        }
        state.applied = last;
        self.storage
            .record_applied(&mut batch, last, conf_state.as_ref())?;
        self.storage.write(batch)?;
        self.storage.applied_written(last, conf_state);
        let _ = self.state.send(Arc::new(state));
        for (reply, result) in replies {
            let _ = reply.send(result);
        }
        Ok(())
    }

    /// Applies one registry operation. A record that does not decode is refused
    /// (and reported to its proposer), never a reason to stop the master.
    fn apply_operation(
        &self,
        data: &[u8],
        state: &mut RegistryState,
        batch: &mut WriteBatch,
    ) -> Result<(), RegistryError> {
        let op = RegistryOperation::decode(data)
            .map_err(|e| RegistryError::Corrupt(format!("registry operation: {e}")))?;
        let cf = self.storage.cf(CF_REGISTRY);
        match op.operation {
            Some(Operation::AddFramework(info)) => {
                let id = info
                    .id
                    .as_ref()
                    .map(|i| i.value.clone())
                    .unwrap_or_default();
                batch.put_cf(cf, format!("framework/{id}"), info.encode_to_vec());
                state.frameworks.insert(id, info);
            }
            Some(Operation::AdmitAgent(info)) => {
                let id = info
                    .id
                    .as_ref()
                    .map(|i| i.value.clone())
                    .unwrap_or_default();
                batch.put_cf(cf, format!("agent/{id}"), info.encode_to_vec());
                state.agents.insert(id, info);
            }
            Some(Operation::RemoveFramework(id)) => {
                batch.delete_cf(cf, format!("framework/{}", id.value));
                state.frameworks.remove(&id.value);
            }
            Some(Operation::UpdateWeights(update)) => {
                for w in update.weights {
                    let key = format!("weight/{}", w.role);
                    if w.weight == 1.0 {
                        batch.delete_cf(cf, key);
                        state.weights.remove(&w.role);
                    } else {
                        batch.put_cf(cf, key, w.encode_to_vec());
                        state.weights.insert(w.role, w.weight);
                    }
                }
            }
            Some(Operation::UpdateQuota(update)) => {
                for q in update.quotas {
                    let key = format!("quota/{}", q.role);
                    if q.guarantee.is_empty() && q.limit.is_empty() {
                        batch.delete_cf(cf, key);
                        state.quotas.remove(&q.role);
                    } else {
                        batch.put_cf(cf, key, q.encode_to_vec());
                        state.quotas.insert(q.role.clone(), q);
                    }
                }
            }
            Some(Operation::MarkAgentGone(id)) => {
                batch.delete_cf(cf, format!("agent/{}", id.value));
                batch.put_cf(cf, format!("gone/{}", id.value), []);
                batch.delete_cf(cf, format!("agent_principal/{}", id.value));
                state.agents.remove(&id.value);
                state.agent_principals.remove(&id.value);
                state.gone_agents.insert(id.value);
            }
            Some(Operation::BindAgentPrincipal(bound)) => {
                let key = format!("agent_principal/{}", bound.agent_id);
                batch.put_cf(cf, key, bound.principal.as_bytes());
                state
                    .agent_principals
                    .insert(bound.agent_id, bound.principal);
            }
            Some(op @ (Operation::AddToken(_) | Operation::RevokeToken(_))) => {
                apply_token_operation(op, state, batch, cf)?;
            }
            None => return Err(RegistryError::Rejected("empty registry operation".into())),
        }
        Ok(())
    }
}

/// Mints or revokes a bearer token (`Operation::AddToken`, `RevokeToken`). Only the
/// operation's own times are read, so every replica applies it alike.
fn apply_token_operation(
    op: Operation,
    state: &mut RegistryState,
    batch: &mut WriteBatch,
    cf: &rocksdb::ColumnFamily,
) -> Result<(), RegistryError> {
    match op {
        Operation::AddToken(token) => {
            let now = token.created_at;
            let stale: Vec<String> = (state.tokens.values())
                .filter(|t| {
                    t.expires_at + TOKEN_KEPT_AFTER_EXPIRY < now
                        || (t.revoked && t.revoked_at + TOKEN_KEPT_AFTER_EXPIRY < now)
                })
                .map(|t| t.id.clone())
                .collect();
            for id in stale {
                batch.delete_cf(cf, format!("token/{id}"));
                state.tokens.remove(&id);
            }
            let held = (state.tokens.values())
                .filter(|t| t.principal == token.principal)
                .count();
            if held >= MAX_TOKEN_RECORDS_PER_PRINCIPAL {
                return Err(RegistryError::Rejected(format!(
                    "{} already holds {held} tokens, revoked and expired ones of the last \
                     day included (at most {MAX_TOKEN_RECORDS_PER_PRINCIPAL})",
                    token.principal
                )));
            }
            batch.put_cf(cf, format!("token/{}", token.id), token.encode_to_vec());
            state.tokens.insert(token.id.clone(), token);
        }
        Operation::RevokeToken(revoke) => {
            if let Some(t) = state.tokens.get_mut(&revoke.id) {
                t.revoked = true;
                t.revoked_at = revoke.revoked_at;
                batch.put_cf(cf, format!("token/{}", revoke.id), t.encode_to_vec());
            }
        }
        _ => {}
    }
    Ok(())
}

/// How long a token's record outlives its expiry or revocation, so a caller still
/// hears "expired" or "revoked" rather than "unknown".
const TOKEN_KEPT_AFTER_EXPIRY: f64 = 86_400.0;

/// Token records one principal may hold: the registry's bound on minting.
pub const MAX_TOKEN_RECORDS_PER_PRINCIPAL: usize = 100;

fn context_of(entry: &Entry) -> Option<u64> {
    let bytes: [u8; 8] = entry.context[..].try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}
