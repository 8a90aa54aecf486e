//! What a launch costs beyond the resources its tasks name, charged by the agent's own
//! figures (`cairn_api::charges`): the defaults for what a task leaves unnamed, its
//! executor process's per-task overhead, the overhead of an executor process the
//! task is the first to need, and a custom executor's resources while it has tasks.
//! Executor charges are the framework's, like its tasks': taken out of the offers
//! that launch them and given back when they end.

use std::collections::HashSet;

use cairn_api::Resources;
use cairn_api::charges::AgentCharges;
use cairn_api::internal::RunningExecutor;
use cairn_api::v1::{FrameworkId, TaskInfo};

use super::{AgentEntry, Leader};
use crate::error::InvalidTask;

/// An executor charged on an agent: (framework id, executor process id, custom
/// executor id). A custom executor is hosted by one process, so two users' tasks
/// naming one custom executor id run two instances of it, charged apart.
pub(super) type ExecutorKey = (String, String, Option<String>);

#[derive(Debug, Clone)]
pub(super) struct ExecutorCharge {
    pub role: String,
    pub resources: Resources,
    /// For a custom executor, the live tasks naming it (it is charged while there are
    /// any); none for an executor process, charged until the agent says it exited.
    pub tasks: Option<usize>,
}

/// What one task of an ACCEPT costs.
#[derive(Debug)]
pub(super) struct Charge {
    /// The task's own: its resources with the agent's defaults, plus its host's
    /// per-task overhead.
    pub task: Resources,
    /// The executor process that will host it.
    pub process: String,
    /// Executors this task is the first to need on the agent, and what each holds.
    pub new_executors: Vec<(ExecutorKey, Resources)>,
}

impl Charge {
    pub fn total(&self) -> Resources {
        (self.new_executors.iter()).fold(self.task.clone(), |t, (_, r)| t.add(r))
    }

    /// What the charge is made of, for a refusal.
    pub fn explain(&self, named: &Resources) -> String {
        let mut why = format!("its resources {named}");
        if self.task != *named {
            why.push_str(" with the agent's defaults and per-task overhead");
        }
        for ((_, process, custom), r) in &self.new_executors {
            match custom {
                Some(id) => why.push_str(&format!(", custom executor {id} ({r})")),
                None => why.push_str(&format!(", a new executor {process} ({r})")),
            }
        }
        why
    }
}

impl Leader {
    /// What `task` costs on the agent, given the executors already there and those
    /// the ACCEPT's earlier tasks start (`pending`).
    pub(super) fn charge_of(
        &self,
        framework_id: &str,
        agent_id: &str,
        task: &TaskInfo,
        pending: &HashSet<ExecutorKey>,
    ) -> Result<Charge, InvalidTask> {
        let task_id = task.task_id.clone().unwrap_or_default().value;
        let agent = self.agents.get(agent_id);
        let charges = agent.map(|a| a.charges.clone()).unwrap_or_default();
        let framework = self.frameworks[framework_id].info.clone();
        let fw = FrameworkId {
            value: framework_id.to_owned(),
        };
        let process =
            cairn_api::charges::executor_process_of(&fw, &framework, task, charges.switch_user)
                .map_err(|why| InvalidTask::Executor {
                    task_id: task_id.clone(),
                    why,
                })?
                .value;
        let resources_error = |error| InvalidTask::Resources {
            task_id: task_id.clone(),
            error,
        };
        let own = charges.task(task).map_err(resources_error)?;
        let mut wanted = vec![((framework_id.to_owned(), process.clone(), None), None)];
        if let Some(info) = &task.executor {
            let id = info.executor_id.clone().unwrap_or_default().value;
            let key = (framework_id.to_owned(), process.clone(), Some(id));
            wanted.push((key, Some(info)));
        }
        let mut new_executors = Vec::new();
        for (key, custom) in wanted {
            let held = agent.is_some_and(|a| a.executors.contains_key(&key));
            if held || pending.contains(&key) {
                continue;
            }
            let resources = match custom {
                Some(info) => charges.custom_executor(info).map_err(resources_error)?,
                None => charges.executor_overhead.clone(),
            };
            // An agent that reports no figures (an older one) is charged nothing.
            if !resources.is_empty() {
                new_executors.push((key, resources));
            }
        }
        Ok(Charge {
            task: own,
            process,
            new_executors,
        })
    }

    /// Holds what a launched task's charge starts: new executors, and one more task
    /// on its custom executor.
    pub(super) fn hold_executors(
        &mut self,
        framework_id: &str,
        agent_id: &str,
        role: &str,
        task: &TaskInfo,
        charge: &Charge,
    ) {
        let Some(agent) = self.agents.get_mut(agent_id) else {
            return;
        };
        for (key, resources) in &charge.new_executors {
            agent.used = agent.used.add(resources);
            let held = ExecutorCharge {
                role: role.to_owned(),
                resources: resources.clone(),
                tasks: key.2.as_ref().map(|_| 0),
            };
            agent.executors.insert(key.clone(), held);
        }
        if let Some(key) = custom_key(framework_id, task, &charge.process)
            && let Some(held) = agent.executors.get_mut(&key)
        {
            *held.tasks.get_or_insert(0) += 1;
        }
    }

    /// A task naming custom executor `custom`, hosted by `process`, ended: the
    /// custom executor is given back with its last task.
    pub(super) fn custom_executor_task_ended(
        &mut self,
        framework_id: &str,
        agent_id: &str,
        process: String,
        custom: String,
    ) {
        let key = (framework_id.to_owned(), process, Some(custom));
        let last = self
            .agents
            .get_mut(agent_id)
            .and_then(|a| a.executors.get_mut(&key))
            .and_then(|held| held.tasks.as_mut())
            .is_some_and(|n| {
                *n = n.saturating_sub(1);
                *n == 0
            });
        if last {
            self.release_executor(agent_id, &key);
        }
    }

    /// The agent says an executor process exited: its overhead is free again.
    pub(super) fn executor_process_exited(
        &mut self,
        agent_id: &str,
        framework_id: &str,
        executor_id: &str,
    ) {
        let key = (framework_id.to_owned(), executor_id.to_owned(), None);
        if self.release_executor(agent_id, &key) {
            self.allocate();
        }
    }

    /// Gives an executor's charge back to its framework's allocation and the
    /// agent; whether there was one.
    fn release_executor(&mut self, agent_id: &str, key: &ExecutorKey) -> bool {
        let Some(agent) = self.agents.get_mut(agent_id) else {
            return false;
        };
        let Some(held) = agent.executors.remove(key) else {
            return false;
        };
        agent.used = agent.used.checked_sub(&held.resources).unwrap_or_default();
        self.allocator
            .recover(&key.0, agent_id, &held.role, &held.resources, None);
        true
    }

    /// Forgets a torn-down framework's executors (the allocator already let go of
    /// everything it held).
    pub(super) fn forget_executors_of(&mut self, framework_id: &str) {
        for agent in self.agents.values_mut() {
            let AgentEntry {
                used, executors, ..
            } = agent;
            executors.retain(|key, held| {
                let keep = key.0 != framework_id;
                if !keep {
                    *used = used.checked_sub(&held.resources).unwrap_or_default();
                }
                keep
            });
        }
    }
}

/// The executors a (re-)registering agent holds: its running executor processes,
/// the processes its live tasks are staged on, and the custom executors those name.
/// `live` gives each live task's framework, role and executor process.
pub(super) fn executors_reported(
    charges: &AgentCharges,
    running: &[RunningExecutor],
    live: &[(String, String, String, &TaskInfo)],
    role_of: impl Fn(&str) -> String,
) -> std::collections::HashMap<ExecutorKey, ExecutorCharge> {
    let mut held = std::collections::HashMap::new();
    let process = |fw: &str| ExecutorCharge {
        role: role_of(fw),
        resources: charges.executor_overhead.clone(),
        tasks: None,
    };
    for r in running {
        let fw = r.framework_id.clone().unwrap_or_default().value;
        let id = r.executor_id.clone().unwrap_or_default().value;
        held.insert((fw.clone(), id.clone(), None), process(&fw));
    }
    for (fw, role, ex, task) in live {
        let key = (fw.clone(), ex.clone(), None);
        held.entry(key).or_insert_with(|| process(fw));
        let (Some(key), Some(info)) = (custom_key(fw, task, ex), task.executor.as_ref()) else {
            continue;
        };
        let entry = held.entry(key).or_insert_with(|| ExecutorCharge {
            role: role.clone(),
            resources: charges.custom_executor(info).unwrap_or_default(),
            tasks: Some(0),
        });
        *entry.tasks.get_or_insert(0) += 1;
    }
    held
}

/// The key of the custom executor a task of `framework_id` names, hosted by `process`.
fn custom_key(framework_id: &str, task: &TaskInfo, process: &str) -> Option<ExecutorKey> {
    let id = task.executor.as_ref()?.executor_id.as_ref()?.value.clone();
    Some((framework_id.to_owned(), process.to_owned(), Some(id)))
}

#[cfg(test)]
mod tests;
