//! Agents: admission through the registry, re-registration with their tasks, status
//! updates and disconnection.

use std::collections::HashMap;

use cairn_api::Resources;
use cairn_api::charges::AgentCharges;
use cairn_api::internal::{
    AgentPrincipal, AgentRegistered, MasterMessage, StatusUpdate, StatusUpdateAcknowledgement,
    TaskRecord, agent_message, master_message, registry_operation::Operation,
};
use cairn_api::v1::{AgentId, AgentInfo, Event, TaskState, event};

use super::executors::{ExecutorCharge, ExecutorKey};
use super::{AgentEntry, AgentSender, Leader, TaskEntry, update_event};
use crate::error::CallError;

/// What a registering agent reports besides its info.
pub(super) struct Reported {
    /// The tasks it runs, so a restarted master rebuilds its view.
    pub tasks: Vec<TaskRecord>,
    pub charges: Option<cairn_api::internal::AgentCharges>,
    /// Its executor processes running now.
    pub executors: Vec<cairn_api::internal::RunningExecutor>,
}

impl Leader {
    /// Admits a new agent (a registry write) or re-registers a known one, and rebuilds
    /// the master's view of its tasks and executors from what it reports.
    pub(super) async fn register_agent(
        &mut self,
        mut info: AgentInfo,
        reported: Reported,
        principal: Option<String>,
        sender: AgentSender,
    ) -> Result<(String, u64), CallError> {
        let charges = (reported.charges.as_ref())
            .map(AgentCharges::from_proto)
            .transpose()
            .map_err(CallError::AgentResources)?
            .unwrap_or_default();
        let (agent_id, total) = self.admit_agent(&mut info, principal).await?;
        let conn = self.next_conn_id();
        let tasks = reported.tasks;
        self.forget_unreported_tasks(&agent_id, &tasks);
        let removed = self.removed_frameworks(&tasks);
        let live = self.adopt_reported_tasks(&agent_id, &charges, tasks);
        let live_infos: Vec<_> = live
            .iter()
            .filter_map(|key| self.tasks.get(key))
            .map(|t| {
                (
                    t.framework_id.clone(),
                    t.role.clone(),
                    t.executor.clone(),
                    &t.info,
                )
            })
            .collect();
        let executors = super::executors::executors_reported(
            &charges,
            &reported.executors,
            &live_infos,
            |fw| self.role_of(fw),
        );
        let (used, allocations) = self.held_on_agent(&live, &executors);
        if self.agents.contains_key(&agent_id) {
            // A re-registration replaces the old stream; its offers are void.
            self.rescind_offers_of_agent(&agent_id);
        }
        self.send_registered(&agent_id, &sender, removed)?;
        tracing::info!(agent_id, hostname = %info.hostname, resources = %total, "agent registered");
        self.allocator.add_agent(&agent_id, total, allocations);
        let custom_executors = self
            .tasks
            .values()
            .filter(|t| t.agent_id == agent_id)
            .filter_map(|t| {
                let id = t.info.executor.as_ref()?.executor_id.as_ref()?;
                Some((t.framework_id.clone(), id.value.clone()))
            })
            .collect();
        self.agents.insert(
            agent_id.clone(),
            AgentEntry {
                info,
                used,
                offered: Resources::new(),
                conn: Some((conn, sender)),
                last_seen: std::time::Instant::now(),
                custom_executors,
                charges,
                executors,
            },
        );
        Ok((agent_id, conn))
    }

    /// What an agent's live tasks and executors hold: in total, and per (framework,
    /// role) for the allocator.
    fn held_on_agent(
        &self,
        live: &[(String, String)],
        executors: &HashMap<ExecutorKey, ExecutorCharge>,
    ) -> (Resources, Vec<(String, String, Resources)>) {
        let tasks = (live.iter().filter_map(|key| self.tasks.get(key)))
            .map(|t| (&t.framework_id, &t.role, &t.resources));
        let executors =
            (executors.iter()).map(|((fw, _, _), held)| (fw, &held.role, &held.resources));
        let mut used = Resources::new();
        let mut allocations = Vec::new();
        for (fw, role, resources) in tasks.chain(executors) {
            used = used.add(resources);
            allocations.push((fw.clone(), role.clone(), resources.clone()));
        }
        (used, allocations)
    }

    /// Checks a registering agent and records it in the registry (unless it is
    /// there unchanged): its id, kept or new, is set in `info`. Returns the id and
    /// the agent's total resources. An authenticated agent's id is its principal's:
    /// no other principal may register under it again.
    async fn admit_agent(
        &mut self,
        info: &mut AgentInfo,
        principal: Option<String>,
    ) -> Result<(String, Resources), CallError> {
        let total = Resources::from_proto(&info.resources).map_err(CallError::AgentResources)?;
        if info.hostname.is_empty() {
            return Err(CallError::AgentWithoutHostname);
        }
        let agent_id = match info.id.as_ref().map(|i| i.value.clone()) {
            Some(id) if !id.is_empty() => {
                if !cairn_api::ids::is_safe_id(&id) {
                    return Err(CallError::InvalidAgentId { agent_id: id });
                }
                if self.registry.state().gone_agents.contains(&id) {
                    return Err(CallError::AgentMarkedGone { agent_id: id });
                }
                let owner = self.registry.state().agent_principals.get(&id).cloned();
                if let (Some(owner), Some(principal)) = (owner, &principal)
                    && owner != *principal
                {
                    return Err(CallError::NotAgentsPrincipal {
                        agent_id: id,
                        principal: principal.clone(),
                    });
                }
                id
            }
            _ => cairn_api::ids::new_agent_id().value,
        };
        info.id = Some(AgentId {
            value: agent_id.clone(),
        });
        let known = self.registry.state().agents.get(&agent_id) == Some(&*info);
        if !known {
            self.registry
                .propose(Operation::AdmitAgent(info.clone()))
                .await?;
        }
        let bound = self
            .registry
            .state()
            .agent_principals
            .get(&agent_id)
            .cloned();
        if let Some(principal) = principal.filter(|p| bound.as_ref() != Some(p)) {
            let bind = AgentPrincipal {
                agent_id: agent_id.clone(),
                principal,
            };
            self.registry
                .propose(Operation::BindAgentPrincipal(bind))
                .await?;
        }
        Ok((agent_id, total))
    }

    /// Tasks the master placed on the agent that it no longer reports (it restarted
    /// without them) are lost: say so, as Mesos does on re-registration.
    fn forget_unreported_tasks(&mut self, agent_id: &str, reported: &[TaskRecord]) {
        let reported: std::collections::HashSet<(String, String)> = reported
            .iter()
            .filter_map(|r| {
                Some((
                    r.framework_id.as_ref()?.value.clone(),
                    r.task.as_ref()?.task_id.as_ref()?.value.clone(),
                ))
            })
            .collect();
        let forgotten: Vec<(String, String)> = self
            .tasks
            .iter()
            .filter(|(k, t)| t.agent_id == agent_id && !reported.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in forgotten {
            let Some(mut task) = self.tasks.remove(&key) else {
                continue;
            };
            let status = master_status(
                &mut task,
                TaskState::TaskLost,
                cairn_api::v1::task_status::Reason::AgentReregistered,
                format!("agent {agent_id} re-registered without the task"),
            );
            self.completed.push(task);
            self.send_event(&key.0, update_event(status));
        }
    }

    /// Frameworks the agent runs tasks of that were torn down while it was away: it
    /// must shut them down now.
    fn removed_frameworks(&self, reported: &[TaskRecord]) -> Vec<String> {
        let mut removed: Vec<String> = reported
            .iter()
            .filter_map(|r| r.framework_id.as_ref().map(|f| f.value.clone()))
            .filter(|fw| {
                !self.frameworks.contains_key(fw)
                    && !self.registry.state().frameworks.contains_key(fw)
            })
            .collect();
        removed.sort();
        removed.dedup();
        removed
    }

    /// Takes the agent's reported tasks as the master's view of it: live ones as
    /// tasks (charged by the agent's figures), terminal ones as history. Returns the
    /// keys of the live ones.
    fn adopt_reported_tasks(
        &mut self,
        agent_id: &str,
        charges: &AgentCharges,
        reported: Vec<TaskRecord>,
    ) -> Vec<(String, String)> {
        let mut live = Vec::new();
        for record in reported {
            let (Some(fw), Some(task)) = (record.framework_id, record.task) else {
                continue;
            };
            let state = TaskState::try_from(record.state).unwrap_or(TaskState::TaskUnknown);
            let task_id = task.task_id.clone().unwrap_or_default().value;
            let resources = charges.task(&task).unwrap_or_default();
            let role = self.role_of(&fw.value);
            let executor = if record.executor_id.is_empty() {
                cairn_api::ids::executor_id_for(&fw).value
            } else {
                record.executor_id
            };
            let key = (fw.value.clone(), task_id);
            let entry = TaskEntry {
                framework_id: fw.value,
                agent_id: agent_id.to_owned(),
                role,
                info: task,
                resources,
                executor,
                state,
                status: None,
            };
            if state.is_terminal() {
                // Reported only until acknowledged: history, not a live task. A live
                // entry from before must go, or its resent update would free it twice.
                self.tasks.remove(&key);
                self.completed.push(entry);
            } else {
                self.tasks.insert(key.clone(), entry);
                live.push(key);
            }
        }
        // A hostile agent may report one task twice: counted once, and gone if a
        // later record of it was terminal.
        live.sort();
        live.dedup();
        live.retain(|key| self.tasks.contains_key(key));
        live
    }

    /// REGISTERED on the agent's new stream, then a shutdown for each framework in
    /// `removed`.
    fn send_registered(
        &self,
        agent_id: &str,
        sender: &AgentSender,
        removed: Vec<String>,
    ) -> Result<(), CallError> {
        let registered = MasterMessage {
            message: Some(master_message::Message::Registered(AgentRegistered {
                agent_id: Some(AgentId {
                    value: agent_id.to_owned(),
                }),
                heartbeat_interval_seconds: self.config.agent_heartbeat_interval.as_secs_f64(),
            })),
        };
        sender
            .try_send(Ok(registered))
            .map_err(|_| CallError::AgentStreamClosed {
                agent_id: agent_id.to_owned(),
            })?;
        for fw in removed {
            tracing::info!(
                agent_id,
                framework_id = fw,
                "the agent runs tasks of a removed framework; shutting it down there"
            );
            let shutdown = MasterMessage {
                message: Some(master_message::Message::ShutdownFramework(
                    cairn_api::internal::ShutdownFramework {
                        framework_id: Some(cairn_api::v1::FrameworkId { value: fw }),
                    },
                )),
            };
            let _ = sender.try_send(Ok(shutdown));
        }
        Ok(())
    }

    pub(super) fn agent_message(
        &mut self,
        agent_id: &str,
        conn: u64,
        message: agent_message::Message,
    ) {
        let current = self
            .agents
            .get(agent_id)
            .and_then(|a| a.conn.as_ref())
            .is_some_and(|(c, _)| *c == conn);
        if !current {
            return; // from a replaced or closed stream
        }
        if let Some(agent) = self.agents.get_mut(agent_id) {
            agent.last_seen = std::time::Instant::now();
        }
        match message {
            agent_message::Message::Heartbeat(_) => {}
            agent_message::Message::StatusUpdate(update) => self.status_update(agent_id, update),
            agent_message::Message::ExecutorExited(exited) => {
                let framework_id = exited.framework_id.clone().unwrap_or_default().value;
                let executor_id = exited.executor_id.clone().unwrap_or_default().value;
                self.executor_process_exited(agent_id, &framework_id, &executor_id, exited.idle);
                self.send_event(
                    &framework_id,
                    Event {
                        r#type: event::Type::Failure as i32,
                        failure: Some(event::Failure {
                            agent_id: Some(AgentId {
                                value: agent_id.to_owned(),
                            }),
                            executor_id: exited.executor_id,
                            status: exited.status,
                        }),
                        ..Default::default()
                    },
                );
            }
            agent_message::Message::ExecutorMessage(m) => {
                let framework_id = m.framework_id.clone().unwrap_or_default().value;
                self.send_event(
                    &framework_id,
                    Event {
                        r#type: event::Type::Message as i32,
                        message: Some(event::Message {
                            agent_id: Some(AgentId {
                                value: agent_id.to_owned(),
                            }),
                            executor_id: m.executor_id,
                            data: m.data,
                        }),
                        ..Default::default()
                    },
                );
            }
            agent_message::Message::Register(_) => {
                tracing::warn!(
                    agent_id,
                    "agent sent a second registration on one stream; ignored"
                );
            }
        }
    }

    pub(super) fn agent_disconnected(&mut self, agent_id: &str, conn: u64) {
        let Some(agent) = self.agents.get_mut(agent_id) else {
            return;
        };
        if agent.conn.as_ref().is_some_and(|(c, _)| *c == conn) {
            tracing::info!(agent_id, "agent disconnected");
            agent.conn = None;
            self.allocator.set_agent_active(agent_id, false);
            self.rescind_offers_of_agent(agent_id);
        }
    }

    /// Records a task's new state, frees its resources once on a terminal state and
    /// forwards the update to its framework.
    fn status_update(&mut self, agent_id: &str, update: StatusUpdate) {
        let Some(status) = update.status else { return };
        let framework_id = update.framework_id.unwrap_or_default().value;
        let task_id = status.task_id.clone().unwrap_or_default().value;
        let state = TaskState::try_from(status.state).unwrap_or(TaskState::TaskUnknown);
        let key = (framework_id.clone(), task_id.clone());
        if let Some(owner) = self.agent_running(&key).filter(|owner| *owner != agent_id) {
            // No agent speaks for another's tasks: a broken or hostile agent's word
            // on them reaches no framework and changes nothing.
            tracing::warn!(
                agent_id,
                framework_id,
                task_id,
                runs_on = owner,
                "dropped a status update from an agent that does not run the task"
            );
            // Acknowledged to the sender alone, so it stops resending it (a reused
            // task id's old update from the agent that ran the earlier one).
            self.acknowledge_to_agent(agent_id, &framework_id, &task_id, status.uuid);
            return;
        }
        if let Some(task) = self.tasks.get_mut(&key) {
            let was_terminal = task.state.is_terminal();
            task.state = state;
            task.status = Some(status.clone());
            if state.is_terminal() && !was_terminal {
                let resources = task.resources.clone();
                let role = task.role.clone();
                let task_agent = task.agent_id.clone();
                let custom = (task.info.executor.as_ref())
                    .and_then(|e| e.executor_id.as_ref())
                    .map(|e| e.value.clone());
                let process = task.executor.clone();
                self.allocator
                    .recover(&framework_id, &task_agent, &role, &resources, None);
                self.executor_task_ended(&framework_id, &task_agent, process, custom);
                if let Some(agent) = self.agents.get_mut(agent_id) {
                    agent.used = agent.used.checked_sub(&resources).unwrap_or_else(|| {
                        tracing::error!(agent_id, task_id, "freed more than the agent had in use");
                        agent.used.clone()
                    });
                }
                let done = self.tasks.remove(&key).expect("task present");
                self.completed.push(done);
                self.allocate();
            }
        }
        tracing::debug!(
            agent_id,
            framework_id,
            task_id,
            state = state.as_str_name(),
            "status update"
        );
        let delivered = self.send_event(
            &framework_id,
            Event {
                r#type: event::Type::Update as i32,
                update: Some(event::Update {
                    status: Some(status.clone()),
                }),
                ..Default::default()
            },
        );
        if !delivered && !self.frameworks.contains_key(&framework_id) {
            // Nobody will ever acknowledge an update for a removed framework: do it
            // here so the agent can let it go.
            self.acknowledge_to_agent(agent_id, &framework_id, &task_id, status.uuid);
        }
    }

    /// The agent a task runs (or last ran) on, if the master knows the task.
    fn agent_running(&self, key: &(String, String)) -> Option<&str> {
        if let Some(task) = self.tasks.get(key) {
            return Some(&task.agent_id);
        }
        let done = self.completed.latest(&key.0, &key.1);
        done.map(|t| t.agent_id.as_str())
    }

    pub(super) fn acknowledge_to_agent(
        &mut self,
        agent_id: &str,
        framework_id: &str,
        task_id: &str,
        uuid: Vec<u8>,
    ) {
        let ack = MasterMessage {
            message: Some(master_message::Message::Ack(StatusUpdateAcknowledgement {
                framework_id: Some(cairn_api::v1::FrameworkId {
                    value: framework_id.to_owned(),
                }),
                task_id: Some(cairn_api::v1::TaskId {
                    value: task_id.to_owned(),
                }),
                uuid,
            })),
        };
        self.send_to_agent(agent_id, ack);
    }
}

impl Leader {
    /// Partition-aware frameworks hear TASK_UNREACHABLE and TASK_GONE where others
    /// hear TASK_LOST.
    pub(super) fn is_partition_aware(&self, framework_id: &str) -> bool {
        self.frameworks.get(framework_id).is_some_and(|f| {
            f.info
                .has_capability(cairn_api::v1::framework_info::capability::Type::PartitionAware)
        })
    }

    /// The role a framework's resources are accounted to: its first role, or `*`.
    pub(super) fn role_of(&self, framework_id: &str) -> String {
        let info = self
            .frameworks
            .get(framework_id)
            .map(|f| f.info.clone())
            .or_else(|| self.registry.state().frameworks.get(framework_id).cloned());
        info.and_then(|i| i.roles.first().cloned().or(Some(i.role)))
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "*".to_owned())
    }
}

/// An update the master itself reports for a task (source MASTER, no uuid: nothing to
/// acknowledge), recorded as the task's latest status.
pub(super) fn master_status(
    task: &mut TaskEntry,
    state: TaskState,
    reason: cairn_api::v1::task_status::Reason,
    message: String,
) -> cairn_api::v1::TaskStatus {
    let status = cairn_api::v1::TaskStatus {
        task_id: task.info.task_id.clone(),
        state: state as i32,
        message,
        source: cairn_api::v1::task_status::Source::Master as i32,
        reason: Some(reason as i32),
        agent_id: Some(AgentId {
            value: task.agent_id.clone(),
        }),
        timestamp: super::now_secs(),
        ..Default::default()
    };
    task.state = state;
    task.status = Some(status.clone());
    status
}

#[cfg(test)]
mod tests;
