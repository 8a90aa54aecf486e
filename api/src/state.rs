use crate::v1::framework_info::capability;
use crate::v1::{FrameworkInfo, TaskState};

impl FrameworkInfo {
    /// Whether the framework declared a capability (PARTITION_AWARE,
    /// TASK_KILLING_STATE, ...): what Mesos may tell it depends on them.
    pub fn has_capability(&self, kind: capability::Type) -> bool {
        self.capabilities.iter().any(|c| c.r#type == kind as i32)
    }
}

impl TaskState {
    /// Terminal states end a task: its resources are freed, and no later update
    /// may change it (Mesos' `protobuf::isTerminalState`).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::TaskFinished
                | TaskState::TaskFailed
                | TaskState::TaskKilled
                | TaskState::TaskError
                | TaskState::TaskLost
                | TaskState::TaskDropped
                | TaskState::TaskGone
                | TaskState::TaskGoneByOperator
        )
    }
}
