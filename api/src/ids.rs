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

/// The executor id an agent gives the executor hosting a framework's tasks there
/// (those that run as the framework's user; see [`user_executor_id_for`]).
pub fn executor_id_for(framework: &FrameworkId) -> ExecutorId {
    ExecutorId {
        value: format!("cairn-executor-{}", framework.value),
    }
}

/// The executor hosting a framework's tasks that run as another `user` than the
/// framework's on an agent.
pub fn user_executor_id_for(framework: &FrameworkId, user: &str) -> ExecutorId {
    ExecutorId {
        value: format!("cairn-executor-{}.user.{user}", framework.value),
    }
}

/// The executor hosting a framework's Docker tasks on an agent.
pub fn docker_executor_id_for(framework: &FrameworkId) -> ExecutorId {
    ExecutorId {
        value: format!("{DOCKER_EXECUTOR_PREFIX}{}", framework.value),
    }
}

/// No other executor id an agent gives starts so (theirs start `cairn-executor-`).
pub const DOCKER_EXECUTOR_PREFIX: &str = "cairn-docker-executor-";

/// Whether `id` names one of the executor processes an agent starts for `framework`.
pub fn is_agent_executor_of(framework: &FrameworkId, id: &str) -> bool {
    let base = executor_id_for(framework).value;
    id == base
        || id == docker_executor_id_for(framework).value
        || id
            .strip_prefix(&base)
            .and_then(|rest| rest.strip_prefix(".user."))
            .is_some_and(|user| !user.is_empty())
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

    #[test]
    fn an_agents_executors_of_a_framework_are_told_from_others() {
        let fw = FrameworkId { value: "f1".into() };
        for ours in [
            executor_id_for(&fw).value,
            user_executor_id_for(&fw, "nobody").value,
            docker_executor_id_for(&fw).value,
        ] {
            assert!(is_agent_executor_of(&fw, &ours), "{ours}");
        }
        let other = FrameworkId { value: "f2".into() };
        for theirs in [
            executor_id_for(&other).value,
            "cairn-executor-f1.user.".to_owned(),
            "cairn-executor-f1x".to_owned(),
            "my-custom".to_owned(),
        ] {
            assert!(!is_agent_executor_of(&fw, &theirs), "{theirs}");
        }
    }
}
