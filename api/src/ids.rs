//! Fresh ids, minted the way Mesos mints them: unique strings, never reused.

use uuid::Uuid;

use crate::v1::{AgentId, ExecutorId, FrameworkId, OfferId, TaskId};

pub fn new_framework_id() -> FrameworkId {
    FrameworkId {
        value: Uuid::new_v4().to_string(),
    }
}

pub fn new_agent_id() -> AgentId {
    AgentId {
        value: Uuid::new_v4().to_string(),
    }
}

pub fn new_offer_id() -> OfferId {
    OfferId {
        value: Uuid::new_v4().to_string(),
    }
}

pub fn new_task_id() -> TaskId {
    TaskId {
        value: Uuid::new_v4().to_string(),
    }
}

/// A status update's uuid, the key of its acknowledgement.
pub fn new_update_uuid() -> Vec<u8> {
    Uuid::new_v4().as_bytes().to_vec()
}

/// The executor id an agent gives the executor hosting a framework's tasks there.
pub fn executor_id_for(framework: &FrameworkId) -> ExecutorId {
    ExecutorId {
        value: format!("cairn-executor-{}", framework.value),
    }
}

/// Ids become path components of sandboxes: only a safe alphabet is allowed, so an
/// id can never name `..` or an absolute path.
pub fn is_safe_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 255
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_escape_a_sandbox_are_unsafe() {
        for bad in ["", ".", "..", "a/b", "../x", "/etc", "a b", "t\0"] {
            assert!(!is_safe_id(bad), "{bad:?} accepted");
        }
        for good in ["t1", "my-task.2", "A_b-c", &new_task_id().value] {
            assert!(is_safe_id(good), "{good:?} refused");
        }
    }
}
