//! The executor process's link to its agent: subscribe (with the tasks it runs and
//! the updates not yet acknowledged), then trade events and updates until the
//! connection drops; reconnect while tasks run, until the recovery timeout.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cairn_api::internal::{
    ExecutorCall, ExecutorEvent, ExecutorHeartbeat, ExecutorMessage, ExecutorSubscribe,
    ExecutorUpdate, executor_call,
};
use cairn_api::v1::{ExecutorId, FrameworkId, TaskId, TaskStatus};
use tokio::io::AsyncWriteExt as _;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;

use super::{Executor, HEARTBEAT, MAX_UPDATE_BATCH, SHUTDOWN_GRACE};
use crate::error::ExecutorError;
use crate::framing::{encode_frame, read_frame, write_frame};

/// What the executor's tasks and custom executors send towards the agent.
pub(super) struct Inbound {
    pub(super) statuses: mpsc::UnboundedReceiver<TaskStatus>,
    /// Framework messages from custom executors: (executor id, data).
    pub(super) messages: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    /// Custom executors that died, by executor id.
    pub(super) died: mpsc::UnboundedReceiver<String>,
}

/// How one connection to the agent ended.
enum SessionEnd {
    /// Shut down, and every task has ended (or its grace passed).
    Done,
    /// The connection dropped.
    Lost,
}

impl Executor {
    /// Serves the agent, reconnecting after every drop while tasks run.
    pub(super) async fn serve(mut self, mut inbound: Inbound) -> Result<(), ExecutorError> {
        let mut shutting_down: Option<Instant> = None;
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        loop {
            // The subscription carries our tasks and unacknowledged updates: the agent
            // records what it lost and relaunches what we never received.
            let (writer, events) = self.connect().await?;
            let end = self
                .session(
                    writer,
                    events,
                    &mut inbound,
                    &mut heartbeat,
                    &mut shutting_down,
                )
                .await;
            if let SessionEnd::Done = end {
                return Ok(());
            }
            if self.running.is_empty() {
                tracing::info!("agent connection closed and no tasks are running; exiting");
                return Ok(());
            }
            tracing::warn!("lost the agent; tasks keep running while it recovers");
        }
    }

    /// One connection's life: events in, updates (batched), messages and heartbeats out.
    async fn session(
        &mut self,
        mut writer: OwnedWriteHalf,
        mut events: mpsc::Receiver<ExecutorEvent>,
        inbound: &mut Inbound,
        heartbeat: &mut tokio::time::Interval,
        shutting_down: &mut Option<Instant>,
    ) -> SessionEnd {
        loop {
            if let Some(since) = *shutting_down
                && (self.running.is_empty() || since.elapsed() > SHUTDOWN_GRACE)
            {
                return SessionEnd::Done;
            }
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => {
                        if self.on_event(event) {
                            shutting_down.get_or_insert_with(Instant::now);
                        }
                    }
                    None => return SessionEnd::Lost,
                },
                Some(status) = inbound.statuses.recv() => {
                    // Updates queued behind this one go in the same write.
                    let mut batch = vec![status];
                    while batch.len() < MAX_UPDATE_BATCH {
                        match inbound.statuses.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    let frames = encode_updates(batch, |status| self.on_status(status));
                    if writer.write_all(&frames).await.is_err() {
                        return SessionEnd::Lost;
                    }
                }
                Some(executor_id) = inbound.died.recv() => self.custom_died(&executor_id),
                Some((executor_id, data)) = inbound.messages.recv() => {
                    let call = ExecutorCall {
                        call: Some(executor_call::Call::Message(ExecutorMessage {
                            data,
                            executor_id: Some(ExecutorId { value: executor_id }),
                        })),
                    };
                    if write_frame(&mut writer, &call).await.is_err() {
                        return SessionEnd::Lost;
                    }
                }
                _ = heartbeat.tick() => {
                    let usage = self.usage().await;
                    let call = ExecutorCall {
                        call: Some(executor_call::Call::Heartbeat(ExecutorHeartbeat { usage })),
                    };
                    if write_frame(&mut writer, &call).await.is_err() {
                        return SessionEnd::Lost;
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(200)), if shutting_down.is_some() => {}
            }
        }
    }

    /// Connects and subscribes, retrying until the recovery timeout.
    async fn connect(
        &self,
    ) -> Result<(OwnedWriteHalf, mpsc::Receiver<ExecutorEvent>), ExecutorError> {
        let deadline = Instant::now() + self.args.recovery_timeout;
        loop {
            match self.try_connect().await {
                Ok(c) => return Ok(c),
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "agent not reachable yet");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    self.kill_all();
                    return Err(ExecutorError::AgentGone {
                        socket: self.args.agent_socket.clone(),
                        within: humantime::format_duration(self.args.recovery_timeout).to_string(),
                        last: Box::new(e),
                    });
                }
            }
        }
    }

    async fn try_connect(
        &self,
    ) -> Result<(OwnedWriteHalf, mpsc::Receiver<ExecutorEvent>), ExecutorError> {
        let socket = &self.args.agent_socket;
        let stream = match &self.args.hosted {
            Some(hosted) => (hosted.connect)(),
            None => UnixStream::connect(socket).await,
        }
        .map_err(|source| ExecutorError::Connect {
            socket: socket.clone(),
            source,
        })?;
        let (reader, mut writer) = stream.into_split();
        let mut reader = tokio::io::BufReader::with_capacity(64 << 10, reader);
        let subscribe = ExecutorCall {
            call: Some(executor_call::Call::Subscribe(ExecutorSubscribe {
                framework_id: Some(FrameworkId {
                    value: self.args.framework_id.clone(),
                }),
                executor_id: Some(ExecutorId {
                    value: self.args.executor_id.clone(),
                }),
                pid: std::process::id(),
                authentication_token: self.args.authentication_token.clone(),
                tasks: self
                    .running
                    .keys()
                    .map(|id| TaskId { value: id.clone() })
                    .collect(),
                unacknowledged_updates: self.unacked.in_order(),
            })),
        };
        write_frame(&mut writer, &subscribe)
            .await
            .map_err(|source| ExecutorError::Subscribe {
                socket: socket.clone(),
                source,
            })?;
        let (tx, rx) = mpsc::channel(1024);
        // Reading has its own task: a frame half-read must never be abandoned by a select.
        tokio::spawn(async move {
            loop {
                match read_frame::<_, ExecutorEvent>(&mut reader).await {
                    Ok(Some(event)) => {
                        if tx.send(event).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "agent connection broken");
                        return;
                    }
                }
            }
        });
        Ok((writer, rx))
    }
}

/// No status update is larger: a custom executor chooses its messages, and one that
/// could not be framed would be lost, with every update resent behind it.
const MAX_STATUS_BYTES: usize = 1 << 20;
/// What is kept of an oversized update's message.
const TRUNCATED_MESSAGE_BYTES: usize = 64 << 10;

/// Frames a batch of updates for one write, handing each update on (to be kept until
/// acknowledged) once it is encoded: no update is copied. An oversized update is
/// cut down to fit (its message truncated, its data dropped) rather than lost.
fn encode_updates(batch: Vec<TaskStatus>, mut sent: impl FnMut(TaskStatus)) -> Vec<u8> {
    let mut buf = Vec::new();
    for mut status in batch {
        if prost::Message::encoded_len(&status) > MAX_STATUS_BYTES {
            tracing::warn!(
                bytes = prost::Message::encoded_len(&status),
                "status update too large; its message is truncated and its data dropped"
            );
            let mut end = status.message.len().min(TRUNCATED_MESSAGE_BYTES);
            while !status.message.is_char_boundary(end) {
                end -= 1;
            }
            status.message.truncate(end);
            status.data.clear();
            status.labels = None;
        }
        let call = ExecutorCall {
            call: Some(executor_call::Call::Update(ExecutorUpdate {
                status: Some(status),
            })),
        };
        if let Err(e) = encode_frame(&call, &mut buf) {
            // Cannot happen below the frame limit; kept (and resent) all the same.
            tracing::error!(error = %e, "cannot frame a status update");
        }
        if let Some(executor_call::Call::Update(ExecutorUpdate {
            status: Some(status),
        })) = call.call
        {
            sent(status);
        }
    }
    buf
}

/// Sent updates awaiting the agent's acknowledgement, in the order they were sent:
/// thousands of short tasks keep thousands here, so an acknowledgement must not
/// scan them all.
#[derive(Default)]
pub(super) struct Unacked {
    next: u64,
    by_seq: std::collections::BTreeMap<u64, TaskStatus>,
    seq_of: HashMap<Vec<u8>, u64>,
}

impl Unacked {
    pub(super) fn push(&mut self, status: TaskStatus) {
        self.next += 1;
        self.seq_of.insert(status.uuid.clone(), self.next);
        self.by_seq.insert(self.next, status);
    }

    pub(super) fn remove(&mut self, uuid: &[u8]) {
        if let Some(seq) = self.seq_of.remove(uuid) {
            self.by_seq.remove(&seq);
        }
    }

    fn in_order(&self) -> Vec<TaskStatus> {
        self.by_seq.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::status;
    use super::*;

    #[tokio::test]
    async fn an_oversized_update_is_cut_down_and_the_batch_still_goes() {
        let huge = TaskStatus {
            message: "é".repeat(MAX_STATUS_BYTES),
            data: vec![7; 1024],
            ..status(
                "big",
                cairn_api::v1::TaskState::TaskFailed,
                String::new(),
                None,
            )
        };
        let small = status(
            "small",
            cairn_api::v1::TaskState::TaskFinished,
            "done".into(),
            None,
        );
        let mut kept = Vec::new();
        let frames = encode_updates(vec![huge, small], |s| kept.push(s));
        assert_eq!(kept.len(), 2, "both are kept until acknowledged");
        assert!(kept[0].message.len() <= TRUNCATED_MESSAGE_BYTES);
        assert!(kept[0].message.starts_with('é'));
        assert!(kept[0].data.is_empty());
        let mut reader = frames.as_slice();
        for want in ["big", "small"] {
            let call: ExecutorCall = crate::framing::read_frame(&mut reader)
                .await
                .unwrap()
                .unwrap();
            let Some(executor_call::Call::Update(update)) = call.call else {
                panic!("not an update: {call:?}");
            };
            assert_eq!(update.status.unwrap().task_id.unwrap().value, want);
        }
    }
}
