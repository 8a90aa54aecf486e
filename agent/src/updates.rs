//! The status update manager: one ordered stream of updates per task. Only the head
//! of a stream is in flight; it is resent until the framework's acknowledgement comes
//! back through the master, then the next one goes. Duplicates are harmless: an
//! acknowledgement that does not match the head is ignored.
//!
//! The streams are part of the checkpointed agent state: they change only through
//! checkpoint records, so they survive an agent restart.

use std::collections::{HashMap, VecDeque};

use cairn_api::internal::StatusUpdate;

type TaskKey = (String, String);

#[derive(Debug, Default)]
pub struct StatusUpdates {
    streams: HashMap<TaskKey, VecDeque<StatusUpdate>>,
}

impl StatusUpdates {
    /// Queues an update at the end of its task's stream; says whether it became the
    /// head (the one in flight).
    pub fn push(&mut self, update: StatusUpdate) -> bool {
        let framework_id = update
            .framework_id
            .as_ref()
            .map(|f| f.value.clone())
            .unwrap_or_default();
        let stream = self
            .streams
            .entry((framework_id, task_of(&update)))
            .or_default();
        stream.push_back(update);
        stream.len() == 1
    }

    /// Applies an acknowledgement. On a match, returns the acknowledged update and
    /// whether another one follows it (now the head, to be sent).
    pub fn acknowledge(
        &mut self,
        framework_id: &str,
        task_id: &str,
        uuid: &[u8],
    ) -> Option<(StatusUpdate, bool)> {
        let key = (framework_id.to_owned(), task_id.to_owned());
        let stream = self.streams.get_mut(&key)?;
        let head_uuid = stream.front()?.status.as_ref()?.uuid.as_slice();
        if head_uuid != uuid {
            return None;
        }
        let acked = stream.pop_front()?;
        let more = !stream.is_empty();
        if !more {
            self.streams.remove(&key);
        }
        Some((acked, more))
    }

    /// The in-flight head of every stream, for resending.
    pub fn heads(&self) -> Vec<StatusUpdate> {
        self.streams
            .values()
            .filter_map(|s| s.front().cloned())
            .collect()
    }

    /// The in-flight head of one task's stream.
    pub fn head(&self, framework_id: &str, task_id: &str) -> Option<&StatusUpdate> {
        self.streams
            .get(&(framework_id.to_owned(), task_id.to_owned()))?
            .front()
    }

    /// Every queued update, each stream in order.
    pub fn all(&self) -> Vec<StatusUpdate> {
        self.streams.values().flatten().cloned().collect()
    }

    pub fn pending(&self) -> usize {
        self.streams.values().map(VecDeque::len).sum()
    }
}

fn task_of(update: &StatusUpdate) -> String {
    update
        .status
        .as_ref()
        .and_then(|s| s.task_id.as_ref())
        .map(|t| t.value.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use cairn_api::v1::{TaskId, TaskState, TaskStatus};

    use super::*;

    fn update(task: &str, state: TaskState, uuid: u8) -> StatusUpdate {
        StatusUpdate {
            framework_id: Some(cairn_api::v1::FrameworkId { value: "f".into() }),
            status: Some(TaskStatus {
                task_id: Some(TaskId { value: task.into() }),
                state: state as i32,
                uuid: vec![uuid; 16],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn only_the_head_is_in_flight_and_acks_advance_in_order() {
        let mut m = StatusUpdates::default();
        assert!(m.push(update("t", TaskState::TaskStarting, 1)));
        assert!(!m.push(update("t", TaskState::TaskRunning, 2)));
        assert!(!m.push(update("t", TaskState::TaskFinished, 3)));
        assert_eq!(m.heads().len(), 1);
        // A stale or duplicate acknowledgement changes nothing.
        assert!(m.acknowledge("f", "t", &[2; 16]).is_none());
        let (acked, more) = m.acknowledge("f", "t", &[1; 16]).unwrap();
        assert_eq!(acked.status.unwrap().state, TaskState::TaskStarting as i32);
        assert!(more);
        assert_eq!(
            m.head("f", "t").unwrap().status.as_ref().unwrap().state,
            TaskState::TaskRunning as i32
        );
        assert!(m.acknowledge("f", "t", &[1; 16]).is_none());
        m.acknowledge("f", "t", &[2; 16]).unwrap();
        let (_, more) = m.acknowledge("f", "t", &[3; 16]).unwrap();
        assert!(!more);
        assert_eq!(m.pending(), 0);
    }
}
