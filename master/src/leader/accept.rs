//! ACCEPT: the offers are checked and taken out of circulation, each task (or task
//! group) is validated against what the offers hold, valid ones are launched on the
//! offers' agent and invalid ones refused with a TASK_ERROR saying why.

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::time::Instant;

use cairn_api::Resources;
use cairn_api::internal::{MasterMessage, RunTask, RunTaskGroup, master_message};
use cairn_api::v1::{
    AgentId, ExecutorInfo, OfferId, TaskInfo, TaskState, TaskStatus, call, offer::operation,
    task_status,
};

use super::executors::{Charge, ExecutorKey};
use super::{Leader, OfferEntry, TaskEntry, now_secs, update_event};
use crate::error::{InvalidOffers, InvalidTask};

/// Tasks an ACCEPT launches together: one LAUNCH task on its own, or a LAUNCH_GROUP's
/// tasks all or none.
struct LaunchGroup {
    all_or_none: bool,
    tasks: Vec<TaskInfo>,
}

/// Where an ACCEPT's tasks go: the offers' agent and role, what the offers still
/// hold, and the task ids the ACCEPT has used so far.
struct Placement {
    agent_id: String,
    role: String,
    remaining: Resources,
    seen: HashSet<String>,
}

impl Leader {
    /// ACCEPT: launch tasks on the offers' agent. The offers are used up whatever
    /// happens; resources no valid task takes go back to the agent, filtered from
    /// this framework for `refuse_seconds`.
    pub(super) fn accept(&mut self, framework_id: &str, accept: call::Accept) {
        let refuse = self.refuse_for(accept.filters.as_ref());
        let groups = launch_groups(accept.operations);
        let (entries, invalid) = self.take_offers(framework_id, &accept.offer_ids);
        if let Some(why) = invalid {
            self.drop_accept(framework_id, &entries, groups, &why);
            return;
        }
        self.allocator.answered(framework_id);
        let mut placement = self.use_offers(&entries);
        let offered = placement.remaining.clone();
        for group in groups {
            if group.all_or_none {
                self.launch_group(framework_id, &mut placement, group.tasks);
            } else {
                self.launch_each(framework_id, &mut placement, group.tasks);
            }
        }
        if !placement.remaining.is_empty() {
            self.allocator.recover(
                framework_id,
                &placement.agent_id,
                &placement.role,
                &placement.remaining,
                Some((refuse, Instant::now())),
            );
        }
        if placement.remaining == offered {
            // Nothing launched: a DECLINE by another name.
            self.allocator
                .declined(framework_id, &placement.agent_id, Instant::now());
        } else {
            self.allocator.launched(framework_id, &placement.agent_id);
        }
        self.allocate();
    }

    /// Takes the named offers out of circulation and checks them: each present and
    /// this framework's, all on one agent under one role. Returns the offers taken
    /// and, if any check failed, the last failure.
    fn take_offers(
        &mut self,
        framework_id: &str,
        offer_ids: &[OfferId],
    ) -> (Vec<OfferEntry>, Option<InvalidOffers>) {
        let mut entries: Vec<OfferEntry> = Vec::new();
        let mut invalid = None;
        for id in offer_ids {
            let entry = match self.offers.get(&id.value) {
                Some(o) if o.framework_id == framework_id => self.offers.remove(&id.value),
                _ => None,
            };
            let Some(entry) = entry else {
                invalid = Some(InvalidOffers::NoLongerValid {
                    offer_id: id.value.clone(),
                });
                continue;
            };
            if entries
                .first()
                .is_some_and(|f| f.agent_id != entry.agent_id || f.role != entry.role)
            {
                invalid = Some(InvalidOffers::SpanAgentsOrRoles {
                    offer_id: id.value.clone(),
                });
            }
            entries.push(entry);
        }
        if entries.is_empty() && invalid.is_none() {
            invalid = Some(InvalidOffers::NoOffers);
        }
        (entries, invalid)
    }

    /// Mesos drops the whole ACCEPT over an invalid offer: its offers' resources go
    /// back unfiltered and every task is TASK_DROPPED.
    fn drop_accept(
        &mut self,
        framework_id: &str,
        entries: &[OfferEntry],
        groups: Vec<LaunchGroup>,
        why: &InvalidOffers,
    ) {
        for entry in entries {
            self.release_offer(entry, &entry.resources, None);
        }
        for task in groups.into_iter().flat_map(|g| g.tasks) {
            self.reject_task(
                framework_id,
                &task,
                TaskState::TaskDropped,
                task_status::Reason::InvalidOffers,
                why,
            );
        }
        self.allocate();
    }

    /// Retires valid offers (their resources stay allocated to the framework until a
    /// task or the leftovers take them) and sums what they hold.
    fn use_offers(&mut self, entries: &[OfferEntry]) -> Placement {
        let mut offered = Resources::new();
        for entry in entries {
            offered = offered.add(&entry.resources);
            self.release_offer(entry, &Resources::new(), None);
        }
        Placement {
            agent_id: entries[0].agent_id.clone(),
            role: entries[0].role.clone(),
            remaining: offered,
            seen: HashSet::new(),
        }
    }

    /// Validates each task of `tasks` in turn against what the offers would still
    /// hold after the ones before it (and the executors they start), without taking
    /// anything yet.
    fn validate_tasks(
        &self,
        framework_id: &str,
        placement: &mut Placement,
        tasks: &[TaskInfo],
    ) -> Vec<Result<Charge, InvalidTask>> {
        let mut scratch = placement.remaining.clone();
        let mut pending: HashMap<ExecutorKey, Option<ExecutorInfo>> = HashMap::new();
        tasks
            .iter()
            .map(|task| {
                let charge = self.validate_task(
                    framework_id,
                    &placement.agent_id,
                    task,
                    (&scratch, &pending),
                    &mut placement.seen,
                )?;
                scratch = scratch.checked_sub(&charge.total()).unwrap_or_default();
                let started = charge.new_executors.iter();
                pending.extend(started.map(|e| (e.key.clone(), e.info.clone())));
                Ok(charge)
            })
            .collect()
    }

    /// A LAUNCH_GROUP: one invalid task refuses them all (REASON_TASK_GROUP_INVALID);
    /// a valid group goes to the agent as one RunTaskGroup.
    fn launch_group(
        &mut self,
        framework_id: &str,
        placement: &mut Placement,
        group: Vec<TaskInfo>,
    ) {
        let checked = self.validate_tasks(framework_id, placement, &group);
        if let Some(why) = checked.iter().find_map(|r| r.as_ref().err()) {
            let reason = match why {
                InvalidTask::Unauthorized { .. } => task_status::Reason::TaskGroupUnauthorized,
                _ => task_status::Reason::TaskGroupInvalid,
            };
            let why = format!("task group refused: {why}");
            for task in &group {
                self.reject_task(framework_id, task, TaskState::TaskError, reason, &why);
            }
            return;
        }
        let mut tasks = Vec::new();
        for (mut task, charge) in group.into_iter().zip(checked.into_iter().flatten()) {
            placement.remaining = placement
                .remaining
                .checked_sub(&charge.total())
                .unwrap_or_default();
            task.agent_id = Some(AgentId {
                value: placement.agent_id.clone(),
            });
            self.track_launch(
                framework_id,
                &placement.agent_id,
                &placement.role,
                &task,
                charge,
            );
            tasks.push(task);
        }
        let framework = self.frameworks[framework_id].info.clone();
        let run = master_message::Message::RunTaskGroup(RunTaskGroup {
            framework: Some(framework),
            tasks,
        });
        self.send_run(&placement.agent_id, run);
    }

    /// LAUNCH: each valid task goes to the agent as its own RunTask; each invalid one
    /// is refused (REASON_TASK_INVALID).
    fn launch_each(&mut self, framework_id: &str, placement: &mut Placement, tasks: Vec<TaskInfo>) {
        let checked = self.validate_tasks(framework_id, placement, &tasks);
        for (mut task, result) in tasks.into_iter().zip(checked) {
            match result {
                Ok(charge) => {
                    placement.remaining = placement
                        .remaining
                        .checked_sub(&charge.total())
                        .unwrap_or_default();
                    task.agent_id = Some(AgentId {
                        value: placement.agent_id.clone(),
                    });
                    self.launch(
                        framework_id,
                        &placement.agent_id,
                        &placement.role,
                        task,
                        charge,
                    );
                }
                Err(why) => {
                    let reason = match why {
                        InvalidTask::Unauthorized { .. } => task_status::Reason::TaskUnauthorized,
                        _ => task_status::Reason::TaskInvalid,
                    };
                    self.reject_task(framework_id, &task, TaskState::TaskError, reason, &why)
                }
            }
        }
    }

    /// A task may launch if its framework's principal may launch it (`--acls`), its
    /// id is safe and new, it names no other agent, it asks
    /// for cpus or mem, the offers still hold what it costs (`remaining`, given the
    /// executors the ACCEPT starts before it, `pending`), and it has a command or an
    /// executor. Returns its charge; `seen` gathers the ACCEPT's task ids.
    fn validate_task(
        &self,
        framework_id: &str,
        agent_id: &str,
        task: &TaskInfo,
        (remaining, pending): (&Resources, &HashMap<ExecutorKey, Option<ExecutorInfo>>),
        seen: &mut HashSet<String>,
    ) -> Result<Charge, InvalidTask> {
        let task_id = task
            .task_id
            .as_ref()
            .map(|t| t.value.as_str())
            .unwrap_or("");
        if !cairn_api::ids::is_safe_id(task_id) {
            return Err(InvalidTask::UnsafeTaskId {
                task_id: task_id.to_owned(),
            });
        }
        let framework = &self.frameworks[framework_id].info;
        (self.config.acls)
            .check_task(framework, task)
            .map_err(|refused| InvalidTask::Unauthorized {
                task_id: task_id.to_owned(),
                refused,
            })?;
        if !seen.insert(task_id.to_owned())
            || self
                .tasks
                .contains_key(&(framework_id.to_owned(), task_id.to_owned()))
        {
            return Err(InvalidTask::TaskIdInUse {
                task_id: task_id.to_owned(),
            });
        }
        if let Some(a) = task.agent_id.as_ref().filter(|a| !a.value.is_empty())
            && a.value != agent_id
        {
            return Err(InvalidTask::OtherAgent {
                task_id: task_id.to_owned(),
                named: a.value.clone(),
                agent_id: agent_id.to_owned(),
            });
        }
        let resources =
            Resources::from_proto(&task.resources).map_err(|error| InvalidTask::Resources {
                task_id: task_id.to_owned(),
                error,
            })?;
        if resources.cpus() <= 0.0 && resources.mem() <= 0.0 {
            return Err(InvalidTask::NoCpusNoMem {
                task_id: task_id.to_owned(),
            });
        }
        check_command_or_executor(task_id, task)?;
        let charge = self.charge_of(framework_id, agent_id, task, pending)?;
        let needed = charge.total();
        if !remaining.contains(&needed) {
            return Err(InvalidTask::BeyondOffers {
                task_id: task_id.to_owned(),
                why: charge.explain(&resources),
                needed,
                remaining: remaining.clone(),
            });
        }
        Ok(charge)
    }

    fn launch(
        &mut self,
        framework_id: &str,
        agent_id: &str,
        role: &str,
        task: TaskInfo,
        charge: Charge,
    ) {
        self.track_launch(framework_id, agent_id, role, &task, charge);
        let framework = self.frameworks[framework_id].info.clone();
        let run = master_message::Message::RunTask(RunTask {
            framework: Some(framework),
            task: Some(task),
            group: Vec::new(),
            // The agent names each run.
            container_id: String::new(),
            // The agent picks each task's executor.
            executor_id: String::new(),
        });
        self.send_run(agent_id, run);
    }

    /// Records a task as STAGING on its agent, what it costs in use.
    fn track_launch(
        &mut self,
        framework_id: &str,
        agent_id: &str,
        role: &str,
        task: &TaskInfo,
        charge: Charge,
    ) {
        let task_id = task.task_id.clone().unwrap_or_default().value;
        self.hold_executors(framework_id, agent_id, role, task, &charge);
        if let Some(agent) = self.agents.get_mut(agent_id) {
            agent.used = agent.used.add(&charge.task);
            if let Some(id) = task.executor.as_ref().and_then(|e| e.executor_id.as_ref()) {
                agent
                    .custom_executors
                    .insert((framework_id.to_owned(), id.value.clone()));
            }
        }
        self.tasks.insert(
            (framework_id.to_owned(), task_id.clone()),
            TaskEntry {
                framework_id: framework_id.to_owned(),
                agent_id: agent_id.to_owned(),
                role: role.to_owned(),
                info: task.clone(),
                resources: charge.task,
                executor: charge.process,
                state: TaskState::TaskStaging,
                status: None,
            },
        );
        tracing::info!(framework_id, agent_id, task_id, "launching task");
    }

    /// Sends a RunTask or RunTaskGroup; a lost agent's tasks are settled when it
    /// re-registers or times out.
    fn send_run(&mut self, agent_id: &str, run: master_message::Message) {
        let sent = self.send_to_agent(agent_id, MasterMessage { message: Some(run) });
        if !sent {
            tracing::warn!(agent_id, "agent went away before its tasks reached it");
        }
    }

    /// Tells the framework a task was refused; the master sends such updates itself
    /// (source MASTER, no uuid, nothing to acknowledge), as Mesos does.
    fn reject_task(
        &mut self,
        framework_id: &str,
        task: &TaskInfo,
        state: TaskState,
        reason: task_status::Reason,
        why: &dyn Display,
    ) {
        tracing::info!(framework_id, why = %why, "task refused");
        let status = TaskStatus {
            task_id: task.task_id.clone(),
            state: state as i32,
            message: why.to_string(),
            source: task_status::Source::Master as i32,
            reason: Some(reason as i32),
            agent_id: task.agent_id.clone(),
            timestamp: now_secs(),
            ..Default::default()
        };
        self.send_event(framework_id, update_event(status));
    }
}

/// The ACCEPT's launches in order; other operations (reservations, volumes) are not
/// supported and ignored.
fn launch_groups(operations: Vec<cairn_api::v1::offer::Operation>) -> Vec<LaunchGroup> {
    let mut groups = Vec::new();
    for op in operations {
        match operation::Type::try_from(op.r#type) {
            Ok(operation::Type::Launch) => {
                let tasks = op.launch.map(|l| l.task_infos).unwrap_or_default();
                groups.extend(tasks.into_iter().map(|t| LaunchGroup {
                    all_or_none: false,
                    tasks: vec![t],
                }));
            }
            Ok(operation::Type::LaunchGroup) => {
                let tasks = op
                    .launch_group
                    .and_then(|g| g.task_group)
                    .map(|g| g.tasks)
                    .unwrap_or_default();
                groups.push(LaunchGroup {
                    all_or_none: true,
                    tasks,
                });
            }
            _ => {}
        }
    }
    groups
}

/// A task runs either a command (in the framework's executor process) or a custom
/// executor, which must have a safe id and a command naming its component.
fn check_command_or_executor(task_id: &str, task: &TaskInfo) -> Result<(), InvalidTask> {
    let task_id = task_id.to_owned();
    match (&task.command, &task.executor) {
        (None, None) => Err(InvalidTask::NoCommandNoExecutor { task_id }),
        (Some(_), Some(_)) => Err(InvalidTask::CommandAndExecutor { task_id }),
        (None, Some(executor)) => {
            let executor_id = executor
                .executor_id
                .as_ref()
                .map(|e| e.value.clone())
                .unwrap_or_default();
            if !cairn_api::ids::is_safe_id(&executor_id) {
                return Err(InvalidTask::UnsafeExecutorId {
                    task_id,
                    executor_id,
                });
            }
            if executor.command.is_none() {
                return Err(InvalidTask::ExecutorWithoutCommand {
                    task_id,
                    executor_id,
                });
            }
            Ok(())
        }
        (Some(_), None) => Ok(()),
    }
}

#[cfg(test)]
mod tests;
