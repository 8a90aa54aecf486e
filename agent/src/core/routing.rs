//! Which executor process runs a task on this agent, and which processes a
//! scheduler's message or shutdown for an executor id goes to.

use cairn_api::v1::{ExecutorId, FrameworkId, FrameworkInfo, TaskInfo};

use super::Core;
use crate::checkpoint::TaskKey;
use crate::launcher::{ExecutorSpec, is_docker};

impl Core {
    /// Which executor process runs a task here (as the master counts it too).
    pub(super) fn executor_of(
        &self,
        fw: &str,
        framework: &FrameworkInfo,
        task: &TaskInfo,
    ) -> Result<String, String> {
        let framework_id = FrameworkId {
            value: fw.to_owned(),
        };
        let switch_user = self.config.users.switch_user;
        cairn_api::charges::executor_process_of(&framework_id, framework, task, switch_user)
            .map(|id| id.value)
    }

    /// The executor processes a scheduler's message or shutdown for `executor_id`
    /// goes to: that process; or those hosting a custom executor of that id (those
    /// of the framework's live tasks naming it, else every process that may host
    /// one: a custom executor outlives its tasks); with no id, every process of the
    /// framework.
    pub(super) fn executors_for(&self, fw: &str, executor_id: Option<&ExecutorId>) -> Vec<String> {
        let state = &self.checkpoint.state;
        let of_framework = || {
            (state.executors.iter())
                .filter(|(_, e)| e.framework_id.as_ref().is_some_and(|f| f.value == fw))
                .map(|(id, _)| id.clone())
        };
        let mut found: Vec<String> = match executor_id.map(|e| e.value.as_str()) {
            Some(id) if state.executors.contains_key(id) => vec![id.to_owned()],
            Some(id) => {
                let hosts: Vec<String> = (state.tasks.iter())
                    .filter(|((f, _), t)| f == fw && !t.state.is_terminal())
                    .filter(|(_, t)| {
                        let custom = t
                            .info
                            .executor
                            .as_ref()
                            .and_then(|e| e.executor_id.as_ref());
                        custom.is_some_and(|e| e.value == id)
                    })
                    .map(|(_, t)| t.executor_id.clone())
                    .collect();
                if hosts.is_empty() {
                    of_framework().filter(|e| !is_docker(e)).collect()
                } else {
                    hosts
                }
            }
            None => of_framework().collect(),
        };
        found.sort();
        found.dedup();
        found
    }
    /// The executor a task runs in, and the user it (and so the executor) runs as.
    pub(super) fn executor_spec(&self, key: &TaskKey) -> Result<ExecutorSpec, String> {
        let task = (self.checkpoint.state.tasks.get(key)).ok_or("the task is gone")?;
        let user = self
            .task_user(&key.0, &task.info)
            .map_err(|why| format!("cannot run the task as its user: {why}"))?;
        Ok(ExecutorSpec {
            framework_id: key.0.clone(),
            executor_id: task.executor_id.clone(),
            user,
            docker: is_docker(&task.executor_id),
        })
    }
}
