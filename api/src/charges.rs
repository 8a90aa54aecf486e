//! What running a task costs an agent beyond the resources it names. The agent sizes
//! its executors' cgroups by these rules and tells the master its figures when it
//! registers; the master takes the same amounts out of offers. Both count alike, so
//! nothing a task runs is free and no agent is promised more than it has:
//!
//! - a task leaving `cpus`, `mem` or `disk` unnamed is charged the agent's default
//!   for it, the limit it then runs with;
//! - each executor process the agent starts (one per framework and user, see
//!   [`executor_process_of`]) holds its own overhead from its first task until it
//!   exits; a framework's Docker executor is no process (the agent hosts it, and
//!   makes its Engine calls) and holds none;
//! - each task an executor process hosts (all but Docker tasks, which run in
//!   containers of their own) adds the per-task overhead of its host;
//! - a custom executor's `ExecutorInfo` resources, with the same defaults, are
//!   charged once while it has tasks on the agent.

use crate::internal;
use crate::v1::{ExecutorId, ExecutorInfo, FrameworkId, FrameworkInfo, TaskInfo, container_info};
use crate::{Resources, ResourcesError};

/// The scalars a task runs with a default for when it leaves them unnamed.
pub const DEFAULTED: [&str; 3] = ["cpus", "mem", "disk"];

/// An agent's figures for what it runs beyond what tasks name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentCharges {
    /// The `cpus`, `mem` and `disk` a task gets when it names none.
    pub task_defaults: Resources,
    /// What each executor process holds of its own.
    pub executor_overhead: Resources,
    /// What an executor process holds for each task it hosts.
    pub hosted_task_overhead: Resources,
    /// The agent's `--switch-user`.
    pub switch_user: bool,
}

impl AgentCharges {
    pub fn from_proto(proto: &internal::AgentCharges) -> Result<Self, ResourcesError> {
        Ok(Self {
            task_defaults: Resources::from_proto(&proto.task_defaults)?,
            executor_overhead: Resources::from_proto(&proto.executor_overhead)?,
            hosted_task_overhead: Resources::from_proto(&proto.hosted_task_overhead)?,
            switch_user: proto.switch_user,
        })
    }

    pub fn to_proto(&self) -> internal::AgentCharges {
        internal::AgentCharges {
            task_defaults: self.task_defaults.to_proto(),
            executor_overhead: self.executor_overhead.to_proto(),
            hosted_task_overhead: self.hosted_task_overhead.to_proto(),
            switch_user: self.switch_user,
        }
    }

    /// `named` with the default of each of [`DEFAULTED`] it leaves out.
    pub fn with_defaults(&self, named: &Resources) -> Resources {
        DEFAULTED
            .into_iter()
            .filter(|name| named.scalar(name) <= 0.0)
            .fold(named.clone(), |r, name| {
                r.with_scalar(name, self.task_defaults.scalar(name))
            })
    }

    /// What a task costs by itself: its resources with the defaults, plus its host's
    /// per-task overhead unless it is a Docker task.
    pub fn task(&self, task: &TaskInfo) -> Result<Resources, ResourcesError> {
        let own = self.with_defaults(&Resources::from_proto(&task.resources)?);
        Ok(if is_docker(task) {
            own
        } else {
            own.add(&self.hosted_task_overhead)
        })
    }

    /// What the executor process running `task` holds of its own: the overhead, but
    /// nothing for a Docker task's executor, which the agent hosts in its own process.
    pub fn executor_process(&self, task: &TaskInfo) -> Resources {
        match is_docker(task) {
            true => Resources::new(),
            false => self.executor_overhead.clone(),
        }
    }

    /// What a custom executor costs while it has tasks: its resources with the defaults.
    pub fn custom_executor(&self, info: &ExecutorInfo) -> Result<Resources, ResourcesError> {
        Ok(self.with_defaults(&Resources::from_proto(&info.resources)?))
    }
}

/// The container type a task runs in: its own `container`, else its custom
/// executor's, else unset (a native command).
pub fn container_type(task: &TaskInfo) -> i32 {
    task.container
        .as_ref()
        .or(task.executor.as_ref().and_then(|e| e.container.as_ref()))
        .map(|c| c.r#type)
        .unwrap_or(container_info::Type::Unset as i32)
}

pub fn is_docker(task: &TaskInfo) -> bool {
    container_type(task) == container_info::Type::Docker as i32
}

/// Which executor process runs a task on an agent. Docker tasks: one per framework,
/// which speaks to the Docker Engine. The others: one per framework and user (with
/// `switch_user`), running as that user, so no executor holds more than its tasks'
/// rights. Refused: a user whose name cannot be part of an id.
pub fn executor_process_of(
    framework_id: &FrameworkId,
    framework: &FrameworkInfo,
    task: &TaskInfo,
    switch_user: bool,
) -> Result<ExecutorId, String> {
    if is_docker(task) {
        return Ok(crate::ids::docker_executor_id_for(framework_id));
    }
    let named = task
        .command
        .as_ref()
        .or(task.executor.as_ref().and_then(|e| e.command.as_ref()))
        .and_then(|c| c.user.as_deref())
        .filter(|u| !u.is_empty());
    let Some(user) = named.filter(|u| switch_user && *u != framework.user) else {
        return Ok(crate::ids::executor_id_for(framework_id));
    };
    let id = crate::ids::user_executor_id_for(framework_id, user);
    if crate::ids::is_safe_id(&id.value) {
        Ok(id)
    } else {
        Err(format!(
            "user {user:?} cannot name an executor: a user name of letters, digits, '-', '_' and '.' is needed"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{CommandInfo, ContainerInfo};

    fn charges() -> AgentCharges {
        AgentCharges {
            task_defaults: Resources::parse("cpus:0.1;mem:64;disk:1024").unwrap(),
            executor_overhead: Resources::parse("cpus:0.1;mem:256").unwrap(),
            hosted_task_overhead: Resources::parse("mem:4").unwrap(),
            switch_user: true,
        }
    }

    fn task(resources: &str, user: Option<&str>, kind: container_info::Type) -> TaskInfo {
        TaskInfo {
            resources: Resources::parse(resources).unwrap().to_proto(),
            command: Some(CommandInfo {
                user: user.map(str::to_owned),
                ..Default::default()
            }),
            container: Some(ContainerInfo {
                r#type: kind as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn what_a_task_leaves_unnamed_is_charged_at_the_default() {
        let c = charges();
        let named = c
            .task(&task(
                "cpus:2;ports:[80-80]",
                None,
                container_info::Type::Wasm,
            ))
            .unwrap();
        assert_eq!(
            named,
            Resources::parse("cpus:2;mem:68;disk:1024;ports:[80-80]").unwrap()
        );
        let all = c
            .task(&task(
                "cpus:1;mem:10;disk:5",
                None,
                container_info::Type::Docker,
            ))
            .unwrap();
        assert_eq!(all, Resources::parse("cpus:1;mem:10;disk:5").unwrap());
        let round = AgentCharges::from_proto(&c.to_proto()).unwrap();
        assert_eq!(round, c);
    }

    #[test]
    fn a_docker_executor_hosted_by_the_agent_holds_no_overhead() {
        let charges = charges();
        let docker = task("cpus:1;mem:10", None, container_info::Type::Docker);
        let native = task("cpus:1;mem:10", None, container_info::Type::Mesos);
        assert_eq!(charges.executor_process(&docker), Resources::new());
        assert_eq!(charges.executor_process(&native), charges.executor_overhead);
    }

    #[test]
    fn the_executor_process_follows_kind_and_user() {
        let fw = FrameworkId { value: "f".into() };
        let info = FrameworkInfo {
            user: "alice".into(),
            ..Default::default()
        };
        let of = |t: &TaskInfo, switch| executor_process_of(&fw, &info, t, switch);
        let wasm = container_info::Type::Wasm;
        assert_eq!(
            of(&task("", None, wasm), true).unwrap().value,
            "cairn-executor-f"
        );
        assert_eq!(
            of(&task("", Some("alice"), wasm), true).unwrap().value,
            "cairn-executor-f"
        );
        assert_eq!(
            of(&task("", Some("bob"), wasm), true).unwrap().value,
            "cairn-executor-f.user.bob"
        );
        assert_eq!(
            of(&task("", Some("bob"), wasm), false).unwrap().value,
            "cairn-executor-f"
        );
        let docker = task("", Some("bob"), container_info::Type::Docker);
        assert_eq!(of(&docker, true).unwrap().value, "cairn-docker-executor-f");
        let err = of(&task("", Some("b/../ob"), wasm), true).unwrap_err();
        assert!(err.contains("cannot name an executor"), "{err}");
    }
}
