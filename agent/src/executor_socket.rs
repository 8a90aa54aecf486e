//! The agent's end of the executor API: accepts executor processes' connections on
//! the agent's Unix socket, and turns their frames into core inputs.
//!
//! The socket is open to every local user (executors run as their tasks' users), so
//! only an executor process this agent started or re-attached ([`KnownExecutors`])
//! gets the agent's full attention. A newly spawned executor may connect before the
//! agent has noted its pid, so an unknown peer waits a moment for it; past that, its
//! first frame is read only if it is small (a stale executor's SUBSCRIBE, which the
//! core answers with a shutdown), then handed to the core, which refuses it. A user
//! has only a few unknown connections at once, each for a bounded time, so no local
//! user can hold the agent's descriptors or memory.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_api::internal::{ExecutorCall, ExecutorEvent, ExecutorSubscribe, executor_call};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, mpsc};

use crate::framing::{MAX_FRAME_BYTES, read_frame, read_frame_of_at_most, write_batch};
use crate::input::Input;

/// The pids of the executor processes this agent started or re-attached.
#[derive(Default)]
pub struct KnownExecutors {
    pids: Mutex<HashSet<u32>>,
    added: Notify,
}

impl KnownExecutors {
    pub fn add(&self, pid: u32) {
        self.pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pid);
        self.added.notify_waiters();
    }

    pub fn remove(&self, pid: u32) {
        self.pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pid);
    }

    fn contains(&self, pid: u32) -> bool {
        self.pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&pid)
    }

    /// Whether `pid` is, or within `within` becomes, a known executor.
    async fn admit(&self, pid: u32, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // Made before the check, so an `add` between the two still wakes it.
            let added = self.added.notified();
            if self.contains(pid) {
                return true;
            }
            if tokio::time::timeout_at(deadline, added).await.is_err() {
                return self.contains(pid);
            }
        }
    }
}

/// How long connections may take to show who they are, and how much they may say.
#[derive(Debug, Clone, Copy)]
pub struct SocketLimits {
    /// How long an unknown peer waits to become a known executor.
    pub admit_within: Duration,
    /// Unknown peers of one user at once; past it, closed at once.
    pub waiting_per_user: usize,
    /// How long an executor has to send its SUBSCRIBE.
    pub subscribe_within: Duration,
    /// The largest first frame read from an unknown peer.
    pub stranger_frame_bytes: u32,
}

impl Default for SocketLimits {
    fn default() -> Self {
        Self {
            admit_within: Duration::from_secs(2),
            waiting_per_user: 8,
            subscribe_within: Duration::from_secs(10),
            stranger_frame_bytes: 64 << 10,
        }
    }
}

/// Accepts executor connections on the agent's socket for as long as the agent runs.
pub async fn serve_socket(
    listener: UnixListener,
    core: mpsc::Sender<Input>,
    known: Arc<KnownExecutors>,
    limits: SocketLimits,
) {
    let waiting: Arc<Mutex<HashMap<u32, usize>>> = Arc::default();
    let mut next_conn = 0u64;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "executor socket accept failed");
                continue;
            }
        };
        let Some((uid, pid)) = stream
            .peer_cred()
            .ok()
            .and_then(|c| Some((c.uid(), u32::try_from(c.pid()?).ok()?)))
        else {
            continue;
        };
        next_conn += 1;
        let conn = next_conn;
        if known.contains(pid) {
            let peer = Peer::Known;
            tokio::spawn(executor_connection(
                stream,
                conn,
                pid,
                core.clone(),
                limits,
                peer,
            ));
            continue;
        }
        let Some(wait) = Waiting::enter(&waiting, uid, limits.waiting_per_user) else {
            tracing::debug!(
                uid,
                pid,
                "closed a connection: not an executor, and too many waiting"
            );
            continue;
        };
        let (known, core) = (known.clone(), core.clone());
        tokio::spawn(async move {
            let peer = match known.admit(pid, limits.admit_within).await {
                true => Peer::Known,
                false => Peer::Stranger(wait),
            };
            executor_connection(stream, conn, pid, core, limits, peer).await;
        });
    }
}

/// Serves the executor the agent hosts in its own process (the launcher's `hosted`)
/// on the agent's end of its socket pair: a known executor, whose pid is the agent's.
pub async fn serve_hosted(stream: UnixStream, core: mpsc::Sender<Input>) {
    // Apart from the socket's connections, which count up from 1.
    static NEXT_CONN: AtomicU64 = AtomicU64::new(1 << 63);
    let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let (pid, limits) = (std::process::id(), SocketLimits::default());
    executor_connection(stream, conn, pid, core, limits, Peer::Known).await;
}

/// Who is on the other end: an executor of this agent, or a stranger holding its
/// place among its user's unknown connections until its first frame is read.
enum Peer {
    Known,
    Stranger(#[allow(dead_code)] Waiting),
}

/// One unknown peer's place among its user's waiting connections.
struct Waiting {
    counts: Arc<Mutex<HashMap<u32, usize>>>,
    uid: u32,
}

impl Waiting {
    fn enter(counts: &Arc<Mutex<HashMap<u32, usize>>>, uid: u32, max: usize) -> Option<Self> {
        let mut all = counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = all.entry(uid).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Self {
            counts: counts.clone(),
            uid,
        })
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut all = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = all.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                all.remove(&self.uid);
            }
        }
    }
}

async fn executor_connection(
    stream: UnixStream,
    conn: u64,
    pid: u32,
    core: mpsc::Sender<Input>,
    limits: SocketLimits,
    peer: Peer,
) {
    let (reader, mut writer) = stream.into_split();
    // Buffered: a burst of updates is read in a few syscalls, not three per frame.
    let mut reader = tokio::io::BufReader::with_capacity(64 << 10, reader);
    let Some(subscribe) = first_frame(&mut reader, pid, limits, peer).await else {
        return;
    };
    // An executor of a version before executor ids names only its framework.
    let executor_id = match subscribe.executor_id.clone().unwrap_or_default().value {
        id if id.is_empty() => {
            let fw = subscribe.framework_id.clone().unwrap_or_default();
            cairn_api::ids::executor_id_for(&fw).value
        }
        id => id,
    };
    let (tx, mut rx) = mpsc::channel::<ExecutorEvent>(1024);
    let mut writer_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Some(event) = rx.recv().await {
            if write_batch(&mut writer, event, &mut rx, &mut buf)
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let _ = core
        .send(Input::ExecutorSubscribed {
            executor_id: executor_id.clone(),
            conn,
            pid: Some(pid as i32),
            subscribe,
            to_executor: tx,
        })
        .await;
    loop {
        // The core drops its sender when it refuses the subscription (or takes a newer
        // connection of the executor's): the writer ends, and so does this connection,
        // so a refused peer's frames never reach the core.
        let read = tokio::select! {
            read = read_frame::<_, ExecutorCall>(&mut reader) => read,
            _ = &mut writer_task => break,
        };
        match read {
            Ok(Some(ExecutorCall { call: Some(call) })) => {
                let input = Input::FromExecutor {
                    executor_id: executor_id.clone(),
                    conn,
                    call,
                };
                if core.send(input).await.is_err() {
                    break;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(executor_id, error = %e, "executor connection dropped");
                break;
            }
        }
    }
    writer_task.abort();
    let _ = core
        .send(Input::ExecutorDisconnected { executor_id, conn })
        .await;
}

/// Reads a connection's SUBSCRIBE: at most a small frame from a stranger (whose place
/// among its user's unknown connections is freed once it is read), within the
/// deadline. `None`: anything else, logged.
async fn first_frame<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
    pid: u32,
    limits: SocketLimits,
    peer: Peer,
) -> Option<ExecutorSubscribe> {
    let max = match peer {
        Peer::Known => MAX_FRAME_BYTES,
        Peer::Stranger(_) => limits.stranger_frame_bytes,
    };
    let first = read_frame_of_at_most(reader, max);
    let first = match tokio::time::timeout(limits.subscribe_within, first).await {
        Ok(Ok(first)) => first,
        Ok(Err(e)) => {
            tracing::warn!(pid, error = %e, "bad first message on the executor socket");
            return None;
        }
        Err(_) => {
            tracing::warn!(
                pid,
                "an executor socket connection sent no SUBSCRIBE in time"
            );
            return None;
        }
    };
    drop(peer);
    match first {
        Some(ExecutorCall {
            call: Some(executor_call::Call::Subscribe(subscribe)),
        }) => Some(subscribe),
        _ => {
            tracing::warn!(pid, "executor connection did not start with SUBSCRIBE");
            None
        }
    }
}

#[cfg(test)]
mod tests;
