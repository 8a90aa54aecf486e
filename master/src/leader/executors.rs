//! What a launch costs beyond the resources its tasks name, charged by the agent's own
//! figures (`cairn_api::charges`): the defaults for what a task leaves unnamed, its
//! executor process's per-task overhead, the overhead of an executor process the
//! task is the first to need, and a custom executor's resources from its first task
//! until the process hosting it ends (its instance outlives its tasks there).
//! Executor charges are the framework's, like its tasks': taken out of the offers
//! that launch them and given back when they end.

use std::collections::HashMap;
use std::time::Instant;

use cairn_api::Resources;
use cairn_api::charges::AgentCharges;
use cairn_api::internal::{MasterMessage, RunningExecutor, master_message};
use cairn_api::v1::{ExecutorId, ExecutorInfo, FrameworkId, TaskInfo};

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
    /// The live tasks on it. An executor process, and the custom executors it hosts,
    /// are charged until it exits or, idle past the master's `--executor-idle-timeout`,
    /// is shut down.
    pub tasks: usize,
    /// Since when an executor process has had no live task.
    pub idle_since: Option<Instant>,
    /// The agent said the process exited while the master still counted tasks on
    /// it (their terminal updates are on their way): the charge goes with the last
    /// of them, unless a task launched since is hosted by a successor.
    pub exited: bool,
    /// A custom executor's `ExecutorInfo`: every task naming its id must carry the
    /// same (Mesos' rule).
    pub info: Option<ExecutorInfo>,
}

impl ExecutorCharge {
    fn new(role: String, resources: Resources, info: Option<ExecutorInfo>) -> Self {
        Self {
            role,
            resources,
            tasks: 0,
            idle_since: None,
            exited: false,
            info,
        }
    }
}

/// An executor a task is the first to need on its agent.
#[derive(Debug)]
pub(super) struct NewExecutor {
    pub key: ExecutorKey,
    pub resources: Resources,
    /// A custom executor's definition.
    pub info: Option<ExecutorInfo>,
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
    pub new_executors: Vec<NewExecutor>,
}

impl Charge {
    pub fn total(&self) -> Resources {
        (self.new_executors.iter()).fold(self.task.clone(), |t, e| t.add(&e.resources))
    }

    /// What the charge is made of, for a refusal.
    pub fn explain(&self, named: &Resources) -> String {
        let mut why = format!("its resources {named}");
        if self.task != *named {
            why.push_str(" with the agent's defaults and per-task overhead");
        }
        for NewExecutor { key, resources, .. } in &self.new_executors {
            let (_, process, custom) = key;
            let r = resources;
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
    /// the ACCEPT's earlier tasks start (`pending`, with their custom definitions).
    /// A task naming a custom executor the agent holds, or an earlier task started,
    /// with another `ExecutorInfo` is refused, as Mesos refuses it.
    pub(super) fn charge_of(
        &self,
        framework_id: &str,
        agent_id: &str,
        task: &TaskInfo,
        pending: &HashMap<ExecutorKey, Option<ExecutorInfo>>,
    ) -> Result<Charge, InvalidTask> {
        let task_id = task.task_id.clone().unwrap_or_default().value;
        let agent = self.agents.get(agent_id);
        let none = AgentCharges::default();
        let charges = agent.map_or(&none, |a| &a.charges);
        let framework = &self.frameworks[framework_id].info;
        let fw = FrameworkId {
            value: framework_id.to_owned(),
        };
        let process =
            cairn_api::charges::executor_process_of(&fw, framework, task, charges.switch_user)
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
        if let Some(info) = &task.executor {
            let id = info.executor_id.clone().unwrap_or_default().value;
            // Mesos' key is the executor id on the agent, whichever process hosts it.
            let same_id = |k: &ExecutorKey| k.0 == framework_id && k.2.as_deref() == Some(&id);
            let held = agent.into_iter().flat_map(|a| a.executors.iter());
            let mut known = (held.filter(|(k, _)| same_id(k)).map(|(_, h)| &h.info))
                .chain(pending.iter().filter(|(k, _)| same_id(k)).map(|(_, i)| i))
                .flatten();
            if known.any(|existing| !same_executor(existing, info)) {
                return Err(InvalidTask::Executor {
                    task_id: task_id.clone(),
                    why: format!(
                        "ExecutorInfo is not compatible with existing ExecutorInfo with same \
                         ExecutorID ({id})"
                    ),
                });
            }
        }
        let mut wanted = vec![((framework_id.to_owned(), process.clone(), None), None)];
        if let Some(info) = &task.executor {
            let id = info.executor_id.clone().unwrap_or_default().value;
            let key = (framework_id.to_owned(), process.clone(), Some(id));
            wanted.push((key, Some(info)));
        }
        let mut new_executors = Vec::new();
        for (key, custom) in wanted {
            let held = agent.is_some_and(|a| a.executors.contains_key(&key));
            if held || pending.contains_key(&key) {
                continue;
            }
            let resources = match custom {
                Some(info) => charges.custom_executor(info).map_err(resources_error)?,
                None => charges.executor_process(task),
            };
            // An agent that reports no figures (an older one) is charged nothing.
            if !resources.is_empty() {
                let info = custom.cloned();
                new_executors.push(NewExecutor {
                    key,
                    resources,
                    info,
                });
            }
        }
        Ok(Charge {
            task: own,
            process,
            new_executors,
        })
    }

    /// Holds what a launched task's charge starts (new executors), and counts the
    /// task on its executor process and custom executor.
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
        for new in &charge.new_executors {
            agent.used = agent.used.add(&new.resources);
            let held =
                ExecutorCharge::new(role.to_owned(), new.resources.clone(), new.info.clone());
            agent.executors.insert(new.key.clone(), held);
        }
        let process = (framework_id.to_owned(), charge.process.clone(), None);
        let custom = custom_key(framework_id, task, &charge.process);
        let mut successor = false;
        for key in [Some(process.clone()), custom.clone()]
            .into_iter()
            .flatten()
        {
            if let Some(held) = agent.executors.get_mut(&key) {
                held.tasks += 1;
                held.idle_since = None;
                // A task sent after the process exited starts its successor, which
                // this charge now stands for.
                successor |= std::mem::take(&mut held.exited);
            }
        }
        if successor {
            // The dead process's custom executors died with it: those no task names
            // now are not the successor's.
            let dead = |k: &ExecutorKey, h: &ExecutorCharge| {
                k.0 == process.0 && k.1 == process.1 && k.2.is_some() && h.tasks == 0
            };
            let gone: Vec<ExecutorKey> = (agent.executors.iter())
                .filter(|(k, h)| dead(k, h) && Some(*k) != custom.as_ref())
                .map(|(k, _)| k.clone())
                .collect();
            for key in gone {
                self.release_one(agent_id, &key);
            }
        }
    }

    /// A task of `process` (naming custom executor `custom`, if any) ended: an idle
    /// process starts its idle time (a process the agent said exited goes now, with
    /// its custom executors).
    pub(super) fn executor_task_ended(
        &mut self,
        framework_id: &str,
        agent_id: &str,
        process: String,
        custom: Option<String>,
    ) {
        let Some(agent) = self.agents.get_mut(agent_id) else {
            return;
        };
        let key = (framework_id.to_owned(), process, None);
        let mut gone = false;
        if let Some(held) = agent.executors.get_mut(&key) {
            held.tasks = held.tasks.saturating_sub(1);
            if held.tasks == 0 {
                held.idle_since = Some(Instant::now());
                gone = held.exited;
            }
        }
        let custom = custom.map(|custom| (key.0.clone(), key.1.clone(), Some(custom)));
        if let Some(held) = custom.and_then(|custom| agent.executors.get_mut(&custom)) {
            held.tasks = held.tasks.saturating_sub(1);
        }
        if gone {
            // The process the agent said exited: its charge goes now. Had a successor
            // started for a task sent before that word arrived, nothing would charge
            // it, so it is told to stop if it is idle.
            self.release_executor(agent_id, &key);
            self.send_idle_shutdown(agent_id, &key);
        }
    }

    /// The agent says an executor process exited: its overhead is free again,
    /// unless the master shut it down for being idle (and so gave it back then; a
    /// successor may hold it now). A process that exited with tasks the master
    /// still counts (a crash, whose tasks' updates follow) keeps its charge until
    /// the last of them ends: a task launched meanwhile starts a successor, and
    /// the charge stays with that one.
    pub(super) fn executor_process_exited(
        &mut self,
        agent_id: &str,
        framework_id: &str,
        executor_id: &str,
        idle: bool,
    ) {
        if idle {
            return;
        }
        let key = (framework_id.to_owned(), executor_id.to_owned(), None);
        let busy = self
            .agents
            .get_mut(agent_id)
            .and_then(|a| a.executors.get_mut(&key));
        if let Some(held) = busy.filter(|held| held.tasks > 0) {
            held.exited = true;
            return;
        }
        if self.release_executor(agent_id, &key) {
            self.allocate();
        }
    }

    /// Shuts down the executor processes idle past the idle timeout on connected
    /// agents, giving their charge back at once (Mesos' command executors end with
    /// their task; Cairn's are shared, and kept warm this long).
    pub(super) fn shutdown_idle_executors(&mut self, now: Instant) {
        let timeout = self.config.executor_idle_timeout;
        let mut idle = Vec::new();
        for (agent_id, agent) in self.agents.iter().filter(|(_, a)| a.conn.is_some()) {
            for (key, held) in &agent.executors {
                let expired = held
                    .idle_since
                    .is_some_and(|at| now.duration_since(at) >= timeout);
                if key.2.is_none() && held.tasks == 0 && expired {
                    idle.push((agent_id.clone(), key.clone()));
                }
            }
        }
        for (agent_id, key) in &idle {
            self.release_executor(agent_id, key);
            self.send_idle_shutdown(agent_id, key);
        }
        if !idle.is_empty() {
            self.allocate();
        }
    }

    /// Tells the agent to stop an executor process if it has no task: its charge
    /// was given back.
    fn send_idle_shutdown(&mut self, agent_id: &str, key: &ExecutorKey) {
        let shutdown = cairn_api::internal::ShutdownExecutor {
            framework_id: Some(FrameworkId {
                value: key.0.clone(),
            }),
            executor_id: Some(ExecutorId {
                value: key.1.clone(),
            }),
            idle: true,
        };
        let message = master_message::Message::ShutdownExecutor(shutdown);
        self.send_to_agent(
            agent_id,
            MasterMessage {
                message: Some(message),
            },
        );
    }

    /// Gives an executor process's charge, and that of the custom executors it
    /// hosts, back to its framework's allocation and the agent; whether there was one.
    fn release_executor(&mut self, agent_id: &str, key: &ExecutorKey) -> bool {
        let Some(agent) = self.agents.get(agent_id) else {
            return false;
        };
        let hosted = |k: &ExecutorKey| k.0 == key.0 && k.1 == key.1 && k.2.is_some();
        let customs: Vec<ExecutorKey> = agent
            .executors
            .keys()
            .filter(|k| hosted(k))
            .cloned()
            .collect();
        let mut released = false;
        for key in customs.iter().chain([key]) {
            released |= self.release_one(agent_id, key);
        }
        released
    }

    /// Gives one executor's charge back; whether there was one.
    fn release_one(&mut self, agent_id: &str, key: &ExecutorKey) -> bool {
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
) -> HashMap<ExecutorKey, ExecutorCharge> {
    let mut held = HashMap::new();
    let now = Instant::now();
    let charge = |role: String, resources: Resources, info: Option<ExecutorInfo>| ExecutorCharge {
        idle_since: Some(now),
        ..ExecutorCharge::new(role, resources, info)
    };
    for r in running {
        let fw = r.framework_id.clone().unwrap_or_default().value;
        let id = r.executor_id.clone().unwrap_or_default().value;
        let process = charge(role_of(&fw), charges.executor_overhead.clone(), None);
        held.insert((fw, id, None), process);
    }
    for (fw, role, ex, task) in live {
        let process = (fw.clone(), ex.clone(), None);
        let custom = custom_key(fw, task, ex).zip(task.executor.as_ref());
        let custom = custom.map(|(key, info)| {
            let resources = charges.custom_executor(info).unwrap_or_default();
            (key, resources, Some(info.clone()))
        });
        let process = Some((process, charges.executor_overhead.clone(), None));
        for (key, resources, info) in [process, custom].into_iter().flatten() {
            let entry = held
                .entry(key)
                .or_insert_with(|| charge(role.clone(), resources, info));
            entry.tasks += 1;
            entry.idle_since = None;
        }
    }
    // An agent that reports no figures (an older one) is charged nothing, and so
    // never told to shut an idle executor down.
    held.retain(|_, h: &mut ExecutorCharge| !h.resources.is_empty());
    held
}

/// Whether two `ExecutorInfo`s describe one executor, as Mesos compares them: field
/// by field, but resources as resources (in any order).
fn same_executor(a: &ExecutorInfo, b: &ExecutorInfo) -> bool {
    let bare = |e: &ExecutorInfo| ExecutorInfo {
        resources: Vec::new(),
        ..e.clone()
    };
    let resources = |e: &ExecutorInfo| Resources::from_proto(&e.resources).ok();
    bare(a) == bare(b) && resources(a) == resources(b)
}

/// The key of the custom executor a task of `framework_id` names, hosted by `process`.
fn custom_key(framework_id: &str, task: &TaskInfo, process: &str) -> Option<ExecutorKey> {
    let id = task.executor.as_ref()?.executor_id.as_ref()?.value.clone();
    Some((framework_id.to_owned(), process.to_owned(), Some(id)))
}

#[cfg(test)]
mod tests;
