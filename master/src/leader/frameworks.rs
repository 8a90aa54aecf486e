//! Frameworks: SUBSCRIBE and the scheduler calls of the Mesos v1 API.

use std::time::{Duration, Instant};

use cairn_api::Resources;
use cairn_api::internal::registry_operation::Operation;
use cairn_api::internal::{
    KillTask, MasterMessage, RunTask, RunTaskGroup, ShutdownFramework, master_message,
};
use cairn_api::v1::{
    Call, Event, FrameworkId, FrameworkInfo, TaskInfo, TaskState, TaskStatus, call, event,
    offer::operation, task_status,
};

use super::{EventSender, FrameworkEntry, Leader, OfferEntry, TaskEntry, now_secs};
use crate::error::CallError;

/// Framework messages are for small coordination data, as in Mesos.
const MAX_FRAMEWORK_MESSAGE: usize = 1 << 20;

impl Leader {
    /// SUBSCRIBE: a new framework is recorded in the registry; one that names its id
    /// fails over onto this new stream.
    pub(super) async fn subscribe(
        &mut self,
        mut info: FrameworkInfo,
        events: EventSender,
    ) -> Result<String, CallError> {
        check_framework_info(&mut info)?;
        let framework_id = match info.id.as_ref().map(|i| i.value.clone()) {
            Some(id) if !id.is_empty() => {
                let known = self.frameworks.contains_key(&id)
                    || self.registry.state().frameworks.contains_key(&id);
                if !known {
                    return Err(CallError::NotFound(format!(
                        "framework {id} is unknown to this master: subscribe without an id"
                    )));
                }
                id
            }
            _ => cairn_api::ids::new_framework_id().value,
        };
        info.id = Some(FrameworkId {
            value: framework_id.clone(),
        });
        if self.registry.state().frameworks.get(&framework_id) != Some(&info) {
            self.registry
                .propose(Operation::AddFramework(info.clone()))
                .await?;
        }
        let stream_id = uuid::Uuid::new_v4().to_string();
        let subscribed = Event {
            r#type: event::Type::Subscribed as i32,
            subscribed: Some(event::Subscribed {
                framework_id: info.id.clone(),
                heartbeat_interval_seconds: self.config.framework_heartbeat_interval.as_secs_f64(),
            }),
            ..Default::default()
        };
        events
            .try_send(Ok(subscribed))
            .map_err(|_| CallError::Unavailable("subscription stream closed".into()))?;
        if let Some(old) = self.frameworks.get_mut(&framework_id) {
            if let Some((_, old_tx)) = old.stream.take() {
                let _ = old_tx.try_send(Ok(error_event("framework failed over")));
            }
            old.info = info.clone();
            old.stream = Some((stream_id.clone(), events));
            old.disconnected_at = None;
        } else {
            self.frameworks.insert(
                framework_id.clone(),
                FrameworkEntry {
                    info: info.clone(),
                    stream: Some((stream_id.clone(), events)),
                    disconnected_at: None,
                },
            );
        }
        self.rescind_offers_of_framework(&framework_id);
        let roles = roles_of(&info);
        self.allocator.add_framework(&framework_id, &roles);
        tracing::info!(framework_id, "framework subscribed");
        Ok(stream_id)
    }

    /// Every call other than SUBSCRIBE, from a subscribed framework on its current stream.
    pub(super) async fn call(
        &mut self,
        call: Call,
        stream_id: Option<String>,
    ) -> Result<(), CallError> {
        let framework_id = call
            .framework_id
            .as_ref()
            .map(|f| f.value.clone())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| CallError::Invalid("call has no framework_id".into()))?;
        let framework = self.frameworks.get(&framework_id).ok_or_else(|| {
            CallError::NotFound(format!("framework {framework_id} is not subscribed"))
        })?;
        match (&framework.stream, stream_id) {
            (Some((current, _)), Some(given)) if *current == given => {}
            (Some(_), Some(given)) => {
                return Err(CallError::Forbidden(format!(
                    "stream id {given} is not framework {framework_id}'s current stream"
                )));
            }
            (_, None) => {
                return Err(CallError::Invalid("call has no Mesos-Stream-Id".into()));
            }
            (None, Some(_)) => {
                return Err(CallError::Forbidden(format!(
                    "framework {framework_id} is not connected"
                )));
            }
        }
        let kind = call::Type::try_from(call.r#type).unwrap_or(call::Type::Unknown);
        match kind {
            call::Type::Teardown => self.teardown(&framework_id).await,
            call::Type::Accept => {
                let accept = call
                    .accept
                    .ok_or_else(|| CallError::Invalid("ACCEPT without `accept`".into()))?;
                self.accept(&framework_id, accept);
                Ok(())
            }
            call::Type::Decline => {
                let decline = call
                    .decline
                    .ok_or_else(|| CallError::Invalid("DECLINE without `decline`".into()))?;
                let refuse = self.refuse_for(decline.filters.as_ref());
                for id in decline.offer_ids {
                    self.decline_offer(&framework_id, &id.value, refuse);
                }
                Ok(())
            }
            call::Type::Revive => {
                let roles = call.revive.map(|r| r.roles).unwrap_or_default();
                self.allocator.revive(&framework_id, &roles);
                self.allocate();
                Ok(())
            }
            call::Type::Suppress => {
                let roles = call.suppress.map(|r| r.roles).unwrap_or_default();
                self.allocator.suppress(&framework_id, &roles);
                Ok(())
            }
            call::Type::Kill => {
                let kill = call
                    .kill
                    .ok_or_else(|| CallError::Invalid("KILL without `kill`".into()))?;
                self.kill(
                    &framework_id,
                    &kill.task_id.unwrap_or_default().value,
                    kill.kill_policy,
                );
                Ok(())
            }
            call::Type::Acknowledge => {
                let ack = call.acknowledge.ok_or_else(|| {
                    CallError::Invalid("ACKNOWLEDGE without `acknowledge`".into())
                })?;
                let agent_id = ack.agent_id.unwrap_or_default().value;
                let task_id = ack.task_id.unwrap_or_default().value;
                if ack.uuid.len() != 16 {
                    return Err(CallError::Invalid(
                        "acknowledge.uuid must be 16 bytes".into(),
                    ));
                }
                self.acknowledge_to_agent(&agent_id, &framework_id, &task_id, ack.uuid);
                Ok(())
            }
            call::Type::Reconcile => {
                let tasks = call.reconcile.map(|r| r.tasks).unwrap_or_default();
                self.reconcile(&framework_id, tasks);
                Ok(())
            }
            call::Type::UpdateFramework => {
                let info = call
                    .update_framework
                    .and_then(|u| u.framework_info)
                    .ok_or_else(|| {
                        CallError::Invalid(
                            "UPDATE_FRAMEWORK without update_framework.framework_info".into(),
                        )
                    })?;
                self.update_framework(&framework_id, info).await
            }
            call::Type::Message => {
                let m = call
                    .message
                    .ok_or_else(|| CallError::Invalid("MESSAGE without `message`".into()))?;
                let agent_id = m.agent_id.unwrap_or_default().value;
                self.check_executor(&framework_id, m.executor_id.as_ref(), &agent_id, true)?;
                if m.data.len() > MAX_FRAMEWORK_MESSAGE {
                    return Err(CallError::Invalid(format!(
                        "message of {} bytes exceeds the {MAX_FRAMEWORK_MESSAGE}-byte limit",
                        m.data.len()
                    )));
                }
                self.send_to_agent(
                    &agent_id,
                    MasterMessage {
                        message: Some(master_message::Message::FrameworkMessage(
                            cairn_api::internal::FrameworkMessage {
                                framework_id: Some(FrameworkId {
                                    value: framework_id.clone(),
                                }),
                                executor_id: m.executor_id,
                                data: m.data,
                            },
                        )),
                    },
                );
                Ok(())
            }
            call::Type::Shutdown => {
                let shutdown = call
                    .shutdown
                    .ok_or_else(|| CallError::Invalid("SHUTDOWN without `shutdown`".into()))?;
                let agent_id = shutdown.agent_id.unwrap_or_default().value;
                self.check_executor(
                    &framework_id,
                    shutdown.executor_id.as_ref(),
                    &agent_id,
                    true,
                )?;
                let ours = cairn_api::ids::executor_id_for(&FrameworkId {
                    value: framework_id.clone(),
                });
                let executor_id = shutdown.executor_id.unwrap_or_default();
                // The framework's executor process: shutting it down kills all the
                // framework's tasks there. A custom executor: only its own tasks.
                let message = if executor_id == ours {
                    master_message::Message::ShutdownFramework(ShutdownFramework {
                        framework_id: Some(FrameworkId {
                            value: framework_id.clone(),
                        }),
                    })
                } else {
                    if let Some(agent) = self.agents.get_mut(&agent_id) {
                        agent
                            .custom_executors
                            .remove(&(framework_id.clone(), executor_id.value.clone()));
                    }
                    master_message::Message::ShutdownExecutor(
                        cairn_api::internal::ShutdownExecutor {
                            framework_id: Some(FrameworkId {
                                value: framework_id.clone(),
                            }),
                            executor_id: Some(executor_id),
                        },
                    )
                };
                self.send_to_agent(
                    &agent_id,
                    MasterMessage {
                        message: Some(message),
                    },
                );
                Ok(())
            }
            other => Err(CallError::Invalid(format!(
                "call type {} is not supported",
                other.as_str_name()
            ))),
        }
    }

    /// UPDATE_FRAMEWORK: a new FrameworkInfo for a subscribed framework (same id),
    /// recorded in the registry; role changes take effect at the next allocation.
    async fn update_framework(
        &mut self,
        framework_id: &str,
        mut info: FrameworkInfo,
    ) -> Result<(), CallError> {
        if info.id.as_ref().is_some_and(|i| i.value != framework_id) {
            return Err(CallError::Invalid(
                "update_framework.framework_info.id differs from framework_id".into(),
            ));
        }
        check_framework_info(&mut info)?;
        info.id = Some(FrameworkId {
            value: framework_id.to_owned(),
        });
        self.registry
            .propose(Operation::AddFramework(info.clone()))
            .await?;
        let roles = roles_of(&info);
        self.allocator.set_framework_roles(framework_id, &roles);
        if let Some(fw) = self.frameworks.get_mut(framework_id) {
            fw.info = info;
        }
        self.rescind_offers_of_framework(framework_id);
        self.allocate();
        Ok(())
    }

    /// A framework has one executor process per agent, `cairn-executor-<framework
    /// id>`; with `custom`, also the custom executors its tasks there have named
    /// (hosted by that process). A call naming another, or an unknown agent, is a 404.
    fn check_executor(
        &self,
        framework_id: &str,
        executor_id: Option<&cairn_api::v1::ExecutorId>,
        agent_id: &str,
        custom: bool,
    ) -> Result<(), CallError> {
        let executor_id = executor_id.map(|e| e.value.as_str()).unwrap_or("");
        let ours = cairn_api::ids::executor_id_for(&FrameworkId {
            value: framework_id.to_owned(),
        });
        let custom_here = || {
            self.agents.get(agent_id).is_some_and(|a| {
                a.custom_executors
                    .contains(&(framework_id.to_owned(), executor_id.to_owned()))
            })
        };
        let known = executor_id == ours.value || (custom && custom_here());
        if !known || !self.agents.contains_key(agent_id) {
            return Err(CallError::NotFound(format!(
                "framework {framework_id} has no executor {executor_id} on agent {agent_id}"
            )));
        }
        Ok(())
    }

    fn refuse_for(&self, filters: Option<&cairn_api::v1::Filters>) -> Duration {
        filters
            .and_then(|f| f.refuse_seconds)
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(31_536_000.0)))
            .unwrap_or(self.config.default_refuse)
    }

    fn decline_offer(&mut self, framework_id: &str, offer_id: &str, refuse: Duration) {
        if self
            .offers
            .get(offer_id)
            .is_none_or(|o| o.framework_id != framework_id)
        {
            return; // unknown or rescinded: nothing to give back
        }
        self.remove_offer(offer_id, Some(refuse));
    }

    /// ACCEPT: launch tasks on the offers' agent. The offers are used up whatever
    /// happens; resources no valid task takes go back to the agent.
    fn accept(&mut self, framework_id: &str, accept: call::Accept) {
        let refuse = self.refuse_for(accept.filters.as_ref());
        // Each LAUNCH task stands alone; a LAUNCH_GROUP is one all-or-nothing group.
        let mut groups: Vec<(bool, Vec<TaskInfo>)> = Vec::new();
        for op in accept.operations {
            match operation::Type::try_from(op.r#type) {
                Ok(operation::Type::Launch) => {
                    let tasks = op.launch.map(|l| l.task_infos).unwrap_or_default();
                    groups.extend(tasks.into_iter().map(|t| (false, vec![t])));
                }
                Ok(operation::Type::LaunchGroup) => {
                    let tasks = op
                        .launch_group
                        .and_then(|g| g.task_group)
                        .map(|g| g.tasks)
                        .unwrap_or_default();
                    groups.push((true, tasks));
                }
                _ => {}
            }
        }
        let tasks: Vec<TaskInfo> = groups.iter().flat_map(|(_, g)| g.iter().cloned()).collect();
        // Take the offers out of circulation; validate them: present, this
        // framework's, all on one agent under one role.
        let mut entries = Vec::new();
        let mut offer_error = None;
        for id in &accept.offer_ids {
            match self.offers.get(&id.value) {
                Some(o) if o.framework_id == framework_id => {
                    let entry = self.offers.remove(&id.value).expect("just found");
                    if entries.first().is_some_and(|f: &OfferEntry| {
                        f.agent_id != entry.agent_id || f.role != entry.role
                    }) {
                        offer_error = Some("offers span more than one agent or role".to_string());
                    }
                    entries.push(entry);
                }
                _ => offer_error = Some(format!("offer {} is no longer valid", id.value)),
            }
        }
        if entries.is_empty() && offer_error.is_none() {
            offer_error = Some("ACCEPT names no offers".into());
        }
        if let Some(why) = offer_error {
            // Mesos drops the whole ACCEPT and recovers its offers.
            for entry in &entries {
                self.release_offer(entry, &entry.resources, None);
            }
            for task in tasks {
                self.reject_task(
                    framework_id,
                    &task,
                    TaskState::TaskDropped,
                    task_status::Reason::InvalidOffers,
                    &why,
                );
            }
            self.allocate();
            return;
        }
        let mut offered = Resources::new();
        for entry in &entries {
            offered = offered.add(&entry.resources);
            self.release_offer(entry, &Resources::new(), None);
        }
        let agent_id = entries[0].agent_id.clone();
        let role = entries[0].role.clone();
        let mut remaining = offered;
        let mut seen = std::collections::HashSet::new();
        for (is_group, group) in groups {
            // Validate the whole group against a scratch copy before launching any.
            let mut scratch = remaining.clone();
            let mut checked = Vec::new();
            let mut first_error = None;
            for task in &group {
                match self.validate_task(framework_id, &agent_id, task, &scratch, &mut seen) {
                    Ok(resources) => {
                        scratch = scratch.checked_sub(&resources).expect("validated");
                        checked.push(Ok(resources));
                    }
                    Err(why) => {
                        first_error.get_or_insert(why.clone());
                        checked.push(Err(why));
                    }
                }
            }
            if is_group && let Some(why) = first_error {
                for task in &group {
                    self.reject_task(
                        framework_id,
                        task,
                        TaskState::TaskError,
                        task_status::Reason::TaskGroupInvalid,
                        &format!("task group refused: {why}"),
                    );
                }
                continue;
            }
            if is_group {
                let mut tasks = Vec::new();
                for (mut task, result) in group.into_iter().zip(checked) {
                    let resources = result.expect("a group with an error was refused above");
                    remaining = remaining.checked_sub(&resources).expect("validated");
                    task.agent_id = Some(cairn_api::v1::AgentId {
                        value: agent_id.clone(),
                    });
                    self.track_launch(framework_id, &agent_id, &role, &task, resources);
                    tasks.push(task);
                }
                let framework = self.frameworks[framework_id].info.clone();
                let run = master_message::Message::RunTaskGroup(RunTaskGroup {
                    framework: Some(framework),
                    tasks,
                });
                self.send_run(&agent_id, run);
                continue;
            }
            for (mut task, result) in group.into_iter().zip(checked) {
                match result {
                    Ok(resources) => {
                        remaining = remaining.checked_sub(&resources).expect("validated");
                        task.agent_id = Some(cairn_api::v1::AgentId {
                            value: agent_id.clone(),
                        });
                        self.launch(framework_id, &agent_id, &role, task, resources);
                    }
                    Err(why) => self.reject_task(
                        framework_id,
                        &task,
                        TaskState::TaskError,
                        task_status::Reason::TaskInvalid,
                        &why,
                    ),
                }
            }
        }
        if !remaining.is_empty() {
            // What no task took goes back, filtered from this framework for a while.
            self.allocator.recover(
                framework_id,
                &agent_id,
                &role,
                &remaining,
                Some((refuse, Instant::now())),
            );
        }
        self.allocate();
    }

    fn validate_task(
        &self,
        framework_id: &str,
        agent_id: &str,
        task: &TaskInfo,
        remaining: &Resources,
        seen: &mut std::collections::HashSet<String>,
    ) -> Result<Resources, String> {
        let task_id = task
            .task_id
            .as_ref()
            .map(|t| t.value.as_str())
            .unwrap_or("");
        if !cairn_api::ids::is_safe_id(task_id) {
            return Err(format!(
                "task id {task_id:?} must be 1-255 characters of [A-Za-z0-9._-]"
            ));
        }
        if !seen.insert(task_id.to_owned())
            || self
                .tasks
                .contains_key(&(framework_id.to_owned(), task_id.to_owned()))
        {
            return Err(format!("task id {task_id} is already in use"));
        }
        if let Some(a) = task.agent_id.as_ref().filter(|a| !a.value.is_empty())
            && a.value != agent_id
        {
            return Err(format!(
                "task {task_id} names agent {} but the offer is for {agent_id}",
                a.value
            ));
        }
        let resources =
            Resources::from_proto(&task.resources).map_err(|e| format!("task {task_id}: {e}"))?;
        if resources.cpus() <= 0.0 && resources.mem() <= 0.0 {
            return Err(format!("task {task_id} asks for no cpus and no mem"));
        }
        if !remaining.contains(&resources) {
            return Err(format!(
                "task {task_id} asks for {resources}; the offers have {remaining} left"
            ));
        }
        match (&task.command, &task.executor) {
            (None, None) => {
                return Err(format!(
                    "task {task_id} has neither a command nor an executor"
                ));
            }
            (Some(_), Some(_)) => {
                return Err(format!(
                    "task {task_id} has both a command and an executor; give exactly one"
                ));
            }
            (None, Some(executor)) => {
                let id = executor
                    .executor_id
                    .as_ref()
                    .map(|e| e.value.as_str())
                    .unwrap_or("");
                if !cairn_api::ids::is_safe_id(id) {
                    return Err(format!(
                        "task {task_id}: executor id {id:?} is empty or not a safe id"
                    ));
                }
                if executor.command.is_none() {
                    return Err(format!(
                        "task {task_id}: executor {id} has no command naming its component"
                    ));
                }
            }
            (Some(_), None) => {}
        }
        Ok(resources)
    }

    fn launch(
        &mut self,
        framework_id: &str,
        agent_id: &str,
        role: &str,
        task: TaskInfo,
        resources: Resources,
    ) {
        self.track_launch(framework_id, agent_id, role, &task, resources);
        let framework = self.frameworks[framework_id].info.clone();
        let run = master_message::Message::RunTask(RunTask {
            framework: Some(framework),
            task: Some(task),
            group: Vec::new(),
        });
        self.send_run(agent_id, run);
    }

    /// Records a task as STAGING on its agent, its resources in use.
    fn track_launch(
        &mut self,
        framework_id: &str,
        agent_id: &str,
        role: &str,
        task: &TaskInfo,
        resources: Resources,
    ) {
        let task_id = task.task_id.clone().unwrap_or_default().value;
        if let Some(agent) = self.agents.get_mut(agent_id) {
            agent.used = agent.used.add(&resources);
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
                resources,
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
        why: &str,
    ) {
        tracing::info!(framework_id, why, "task refused");
        let status = TaskStatus {
            task_id: task.task_id.clone(),
            state: state as i32,
            message: why.to_owned(),
            source: task_status::Source::Master as i32,
            reason: Some(reason as i32),
            agent_id: task.agent_id.clone(),
            timestamp: now_secs(),
            ..Default::default()
        };
        self.send_event(framework_id, update_event(status));
    }

    fn kill(
        &mut self,
        framework_id: &str,
        task_id: &str,
        kill_policy: Option<cairn_api::v1::KillPolicy>,
    ) {
        let key = (framework_id.to_owned(), task_id.to_owned());
        let Some(task) = self.tasks.get(&key) else {
            // Mesos answers a KILL for an unknown task with TASK_LOST.
            let status = TaskStatus {
                task_id: Some(cairn_api::v1::TaskId {
                    value: task_id.to_owned(),
                }),
                state: TaskState::TaskLost as i32,
                message: "task is unknown to the master".into(),
                source: task_status::Source::Master as i32,
                reason: Some(task_status::Reason::Reconciliation as i32),
                timestamp: now_secs(),
                ..Default::default()
            };
            self.send_event(framework_id, update_event(status));
            return;
        };
        let agent_id = task.agent_id.clone();
        self.send_to_agent(
            &agent_id,
            MasterMessage {
                message: Some(master_message::Message::KillTask(KillTask {
                    framework_id: Some(FrameworkId {
                        value: framework_id.to_owned(),
                    }),
                    task_id: Some(cairn_api::v1::TaskId {
                        value: task_id.to_owned(),
                    }),
                    kill_policy,
                })),
            },
        );
    }

    /// RECONCILE: the latest known state of the named tasks, or of all the
    /// framework's tasks when none are named (implicit reconciliation).
    fn reconcile(&mut self, framework_id: &str, tasks: Vec<call::reconcile::Task>) {
        let mut statuses = Vec::new();
        if tasks.is_empty() {
            for ((fw, _), t) in &self.tasks {
                if fw == framework_id {
                    statuses.push(reconcile_status(t.info.task_id.clone(), Some(t)));
                }
            }
        } else {
            for t in tasks {
                let id = t.task_id.unwrap_or_default();
                // Live tasks first, then the latest of the recently completed ones.
                let known = self
                    .tasks
                    .get(&(framework_id.to_owned(), id.value.clone()))
                    .or_else(|| {
                        self.completed.iter().rev().find(|c| {
                            c.framework_id == framework_id
                                && c.info.task_id.as_ref().is_some_and(|t| t.value == id.value)
                        })
                    });
                if known.is_some() {
                    statuses.push(reconcile_status(Some(id), known));
                    continue;
                }
                let agent_id = t.agent_id.map(|a| a.value).unwrap_or_default();
                if let Some(mut status) = self.reconcile_unknown(framework_id, &agent_id) {
                    status.task_id = Some(id);
                    statuses.push(status);
                }
            }
        }
        for s in statuses {
            self.send_event(framework_id, update_event(s));
        }
    }

    /// TEARDOWN: kill the framework's tasks, drop its offers and remove it from the registry.
    /// The answer for a task the master does not know, from what it knows of the
    /// agent named with it (Mesos' rules): on a registered agent the task is gone; on
    /// an unreachable one, unreachable; on an agent marked gone, gone by operator; on
    /// an agent the registry admitted that has not re-registered since this master
    /// started, no answer yet: its re-registration will tell (`None`).
    fn reconcile_unknown(&self, framework_id: &str, agent_id: &str) -> Option<TaskStatus> {
        let partition_aware = self.is_partition_aware(framework_id);
        let registry = self.registry.state();
        let state = if registry.gone_agents.contains(agent_id) {
            TaskState::TaskGoneByOperator
        } else if let Some(agent) = self.agents.get(agent_id) {
            match (agent.conn.is_some(), partition_aware) {
                (true, true) => TaskState::TaskGone,
                (false, true) => TaskState::TaskUnreachable,
                (_, false) => TaskState::TaskLost,
            }
        } else if registry.agents.contains_key(agent_id) {
            return None;
        } else if partition_aware {
            TaskState::TaskUnknown
        } else {
            TaskState::TaskLost
        };
        let agent_id = (!agent_id.is_empty()).then(|| cairn_api::v1::AgentId {
            value: agent_id.to_owned(),
        });
        Some(TaskStatus {
            state: state as i32,
            source: task_status::Source::Master as i32,
            reason: Some(task_status::Reason::Reconciliation as i32),
            agent_id,
            timestamp: now_secs(),
            ..Default::default()
        })
    }

    pub(super) async fn teardown(&mut self, framework_id: &str) -> Result<(), CallError> {
        self.registry
            .propose(Operation::RemoveFramework(FrameworkId {
                value: framework_id.to_owned(),
            }))
            .await?;
        self.rescind_offers_of_framework(framework_id);
        let agents: std::collections::BTreeSet<String> = self.agents.keys().cloned().collect();
        for agent_id in agents {
            self.send_to_agent(
                &agent_id,
                MasterMessage {
                    message: Some(master_message::Message::ShutdownFramework(
                        ShutdownFramework {
                            framework_id: Some(FrameworkId {
                                value: framework_id.to_owned(),
                            }),
                        },
                    )),
                },
            );
        }
        self.frameworks.remove(framework_id);
        // Its allocations (offers and tasks) go back at once; the tasks' own terminal
        // updates will find nothing left to free.
        self.allocator.remove_framework(framework_id);
        let keys: Vec<(String, String)> = self
            .tasks
            .keys()
            .filter(|(fw, _)| fw == framework_id)
            .cloned()
            .collect();
        for key in keys {
            let mut task = self.tasks.remove(&key).expect("listed above");
            if let Some(agent) = self.agents.get_mut(&task.agent_id) {
                agent.used = agent.used.checked_sub(&task.resources).unwrap_or_default();
            }
            task.state = TaskState::TaskKilled;
            self.completed.push_back(task);
        }
        tracing::info!(framework_id, "framework torn down");
        Ok(())
    }
}

/// What SUBSCRIBE and UPDATE_FRAMEWORK both require of a FrameworkInfo; a missing
/// role becomes `*`, as in Mesos.
fn check_framework_info(info: &mut FrameworkInfo) -> Result<(), CallError> {
    if info.name.is_empty() {
        return Err(CallError::Invalid(
            "framework_info.name must not be empty".into(),
        ));
    }
    if info.role.is_empty() && info.roles.is_empty() {
        info.role = "*".into();
    }
    for role in info.roles.iter().chain(std::iter::once(&info.role)) {
        if !role.is_empty() {
            super::roles::validate_role(role)?;
        }
    }
    Ok(())
}

/// The roles a framework is offered under: `roles` (multi-role) or else `role`.
fn roles_of(info: &FrameworkInfo) -> Vec<String> {
    if info.roles.is_empty() {
        vec![info.role.clone()]
    } else {
        info.roles.clone()
    }
}

fn reconcile_status(
    task_id: Option<cairn_api::v1::TaskId>,
    known: Option<&TaskEntry>,
) -> TaskStatus {
    let (state, agent_id) = match known {
        Some(t) => (
            t.state,
            Some(cairn_api::v1::AgentId {
                value: t.agent_id.clone(),
            }),
        ),
        None => (TaskState::TaskUnknown, None),
    };
    TaskStatus {
        task_id,
        state: state as i32,
        source: task_status::Source::Master as i32,
        reason: Some(task_status::Reason::Reconciliation as i32),
        agent_id,
        timestamp: now_secs(),
        ..Default::default()
    }
}

fn update_event(status: TaskStatus) -> Event {
    Event {
        r#type: event::Type::Update as i32,
        update: Some(event::Update {
            status: Some(status),
        }),
        ..Default::default()
    }
}

fn error_event(message: &str) -> Event {
    Event {
        r#type: event::Type::Error as i32,
        error: Some(event::Error {
            message: message.to_owned(),
        }),
        ..Default::default()
    }
}
