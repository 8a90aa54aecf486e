//! Tasks on the agent: launching (stage, fetch, hand to the executor), killing, and
//! the status update manager's side of updates and acknowledgements.

use cairn_api::internal::checkpoint_record::Record;
use cairn_api::internal::{
    CompiledProgram, ExecutorKill, ExecutorLaunch, ExecutorLaunchGroup, ExecutorShutdown, RunAs,
    StatusUpdate, StatusUpdateAcknowledgement, executor_event,
};
use cairn_api::v1::{
    FrameworkId, TaskId, TaskInfo, TaskState, TaskStatus, container_info, task_status,
};

use super::{Core, Effect, now_secs};
use crate::checkpoint::{TaskKey, task_record};

/// The wasm programs a task needs compiled: its custom executor's component, else
/// its own module if it is a WASM task. Metered when the container has a fuel budget.
pub(super) fn programs_of(task: &TaskInfo) -> Vec<crate::compiler::ProgramRef> {
    let (command, container) = match &task.executor {
        Some(executor) => (executor.command.as_ref(), executor.container.as_ref()),
        None => (task.command.as_ref(), task.container.as_ref()),
    };
    let wasm = container.is_some_and(|c| c.r#type == container_info::Type::Wasm as i32);
    let name = command.and_then(|c| c.value.clone()).unwrap_or_default();
    if !wasm {
        return Vec::new();
    }
    let metered = container
        .and_then(|c| c.wasm.as_ref())
        .is_some_and(|w| w.fuel.is_some());
    vec![crate::compiler::ProgramRef { name, metered }]
}

impl Core {
    /// Starts a staged task on its way: its executor if there is none, then its fetch.
    /// Runs once the task is durable, so a crash never loses a launched task.
    pub(super) fn stage(&mut self, key: TaskKey) {
        let (fw, task_id) = &key;
        let Some(task) = self.checkpoint.state.tasks.get(&key) else {
            return;
        };
        let fetching = self.fetching.get(&key) == Some(&task.container_id);
        if task.launched || task.state.is_terminal() || fetching {
            return;
        }
        // A custom executor's own URIs (its component) are fetched with the task.
        let uris = [
            task.info.command.as_ref(),
            task.info.executor.as_ref().and_then(|e| e.command.as_ref()),
        ]
        .into_iter()
        .flatten()
        .flat_map(|c| c.uris.clone())
        .collect();
        // Only a wasm guest is sure not to write through a link into the cache.
        let link_cached =
            cairn_api::charges::container_type(&task.info) == container_info::Type::Wasm as i32;
        let programs = programs_of(&task.info);
        // What its URIs may bring: its disk, the agent's default where it names none.
        let named = cairn_api::Resources::from_proto(&task.info.resources).unwrap_or_default();
        let disk = self.sizes.charges().with_defaults(&named).disk();
        let container_id = task.container_id.clone();
        let spec = match self.executor_spec(&key) {
            Ok(spec) => spec,
            Err(why) => {
                let reason = task_status::Reason::ContainerLaunchFailed;
                self.end_before_launch(fw, task_id, TaskState::TaskFailed, reason, why);
                return;
            }
        };
        if !spec.docker {
            let info = task.info.clone();
            self.sizes.charge(&key, &spec.executor_id, &info);
        }
        let user = spec.user.clone();
        if let Err(why) = self.ensure_executor(&spec) {
            self.fail_task(
                fw,
                task_id,
                TaskState::TaskFailed,
                task_status::Reason::ContainerLaunchFailed,
                format!("cannot start the executor: {why}"),
            );
            return;
        }
        let sandbox = self.paths.sandbox(fw, task_id, &container_id);
        let run = crate::input::FetchedRun {
            framework_id: fw.clone(),
            task_id: task_id.clone(),
            container_id: container_id.clone(),
        };
        let fetch = crate::launcher::Fetch {
            uris,
            link_cached,
            disk: (disk.max(0.0) * (1u64 << 20) as f64) as u64,
            programs,
        };
        self.launcher.fetch(run, sandbox, fetch, user);
        self.fetching.insert(key, container_id);
    }

    /// Who a task runs as: its command's user, else its framework's, else the
    /// agent's default, as the agent's policy allows (see [`crate::user`]).
    pub(super) fn task_user(
        &self,
        fw: &str,
        task: &TaskInfo,
    ) -> Result<crate::user::TaskUser, crate::user::UserRefused> {
        let command_user = task
            .command
            .as_ref()
            .or(task.executor.as_ref().and_then(|e| e.command.as_ref()))
            .and_then(|c| c.user.as_deref());
        let framework_user = self
            .checkpoint
            .state
            .frameworks
            .get(fw)
            .map(|f| f.user.as_str());
        self.config.users.resolve(command_user, framework_user)
    }

    pub(super) fn fetched(
        &mut self,
        run: crate::input::FetchedRun,
        result: Result<Vec<CompiledProgram>, String>,
    ) {
        let (fw, task_id) = (run.framework_id.as_str(), run.task_id.as_str());
        let key = (fw.to_owned(), task_id.to_owned());
        let Some(task) = self.checkpoint.state.tasks.get(&key) else {
            self.fetching.remove(&key);
            return;
        };
        if task.container_id != run.container_id {
            // An earlier run of a reused task id: the current run has its own fetch.
            return;
        }
        self.fetching.remove(&key);
        if task.state.is_terminal() || task.launched {
            return; // killed or failed while its sandbox was being fetched
        }
        let members = if task.group.is_empty() {
            vec![task_id.to_owned()]
        } else {
            task.group.clone()
        };
        let reason = task_status::Reason::ContainerLaunchFailed;
        let programs = match result {
            Ok(programs) => programs,
            Err(why) => {
                self.end_before_launch(fw, task_id, TaskState::TaskFailed, reason, why);
                return;
            }
        };
        // The user was looked up at staging; one removed since fails the task here,
        // with the reason, rather than in the executor without it.
        let spec = match self.executor_spec(&key) {
            Ok(spec) => spec,
            Err(why) => {
                self.end_before_launch(fw, task_id, TaskState::TaskFailed, reason, why);
                return;
            }
        };
        // Its executor may have died during the fetch: the task gets a new one.
        if let Err(why) = self.ensure_executor(&spec) {
            let why = format!("cannot start the executor: {why}");
            self.end_before_launch(fw, task_id, TaskState::TaskFailed, reason, why);
            return;
        }
        if self
            .links
            .get(&spec.executor_id)
            .is_some_and(|l| l.idle_shutdown)
        {
            // Its executor is stopping for being idle: the task is staged again for
            // the next one once this one is gone (see `executor_gone`).
            return;
        }
        self.fetched.insert(key, programs);
        // A task group goes to its executor in one event, once all of it is here.
        let keys: Vec<TaskKey> = members.iter().map(|m| (fw.to_owned(), m.clone())).collect();
        if !keys.iter().all(|k| self.fetched.contains_key(k)) {
            return;
        }
        if let Some(event) = self.launch_all(fw, &keys) {
            self.send_to_executor(spec.executor_id, event);
        }
    }

    /// Records fetched tasks as launched and makes the event handing them to their
    /// executor: a launch, or a group's launch.
    fn launch_all(&mut self, fw: &str, keys: &[TaskKey]) -> Option<executor_event::Event> {
        let mut launches = Vec::new();
        for key in keys {
            let programs = self.fetched.remove(key).unwrap_or_default();
            let Some(info) = self.checkpoint.state.tasks.get(key).map(|t| t.info.clone()) else {
                continue;
            };
            let mut launched = task_record(fw, &info);
            launched.programs = programs;
            self.checkpoint.record(Record::Launched(launched));
            launches.push(self.launch_of(fw, info));
        }
        match (keys.len(), launches.pop()) {
            (1, Some(launch)) => Some(executor_event::Event::Launch(launch)),
            (_, Some(last)) => {
                launches.push(last);
                let group = ExecutorLaunchGroup { tasks: launches };
                Some(executor_event::Event::LaunchGroup(group))
            }
            (_, None) => None,
        }
    }

    /// Ends a task that never reached its executor, and with it the rest of its task
    /// group: a group launches whole or not at all.
    fn end_before_launch(
        &mut self,
        fw: &str,
        task_id: &str,
        state: TaskState,
        reason: task_status::Reason,
        message: String,
    ) {
        let (group, ex) = self
            .checkpoint
            .state
            .tasks
            .get(&(fw.to_owned(), task_id.to_owned()))
            .map(|t| (t.group.clone(), t.executor_id.clone()))
            .unwrap_or_default();
        self.fail_task(fw, task_id, state, reason, message.clone());
        for sibling in group.iter().filter(|s| *s != task_id) {
            let key = (fw.to_owned(), sibling.clone());
            self.fetched.remove(&key);
            let pending = self
                .checkpoint
                .state
                .tasks
                .get(&key)
                .is_some_and(|t| !t.launched && !t.state.is_terminal());
            if pending {
                let why = format!("task {task_id} of its group could not launch: {message}");
                self.fail_task(fw, sibling, state, reason, why);
            }
        }
        self.release_unstarted_executor(fw, &ex);
    }

    pub(super) fn launch_event(&self, fw: &str, task: TaskInfo) -> executor_event::Event {
        executor_event::Event::Launch(self.launch_of(fw, task))
    }

    fn launch_of(&self, fw: &str, task: TaskInfo) -> ExecutorLaunch {
        let task_id = task.task_id.clone().unwrap_or_default().value;
        let key = (fw.to_owned(), task_id.clone());
        let (container_id, programs) = self
            .checkpoint
            .state
            .tasks
            .get(&key)
            .map(|t| (t.container_id.clone(), t.programs.clone()))
            .unwrap_or_default();
        let sandbox = self.paths.sandbox(fw, &task_id, &container_id);
        // Resolved at staging already; a user deleted since is refused by the
        // executor's launch.
        let user = self.task_user(fw, &task).ok().map(|u| RunAs {
            name: u.name,
            uid: u.uid,
            gid: u.gid,
            groups: u.groups,
        });
        ExecutorLaunch {
            task: Some(task),
            sandbox_directory: sandbox.display().to_string(),
            container_id,
            user,
            // Checkpointed, for a launch sent again (the executor resubscribed
            // before it had it, or after the agent restarted).
            programs,
        }
    }

    pub(super) fn kill_task(
        &mut self,
        fw: &str,
        task_id: TaskId,
        policy: Option<cairn_api::v1::KillPolicy>,
    ) {
        let key = (fw.to_owned(), task_id.value.clone());
        let Some(task) = self.checkpoint.state.tasks.get(&key) else {
            return;
        };
        if task.state.is_terminal() {
            return;
        }
        if !task.launched {
            // Still staging: the executor never saw it, so the agent ends it.
            self.end_before_launch(
                fw,
                &task_id.value,
                TaskState::TaskKilled,
                task_status::Reason::TaskKilledDuringLaunch,
                "killed before it was launched".into(),
            );
            return;
        }
        let kill_policy = policy.or(task.info.kill_policy);
        let executor_id = task.executor_id.clone();
        let report_killing = self.checkpoint.state.frameworks.get(fw).is_some_and(|f| {
            f.has_capability(cairn_api::v1::framework_info::capability::Type::TaskKillingState)
        });
        self.send_to_executor(
            executor_id,
            executor_event::Event::Kill(ExecutorKill {
                task_id: Some(task_id),
                kill_policy,
                report_killing,
            }),
        );
    }

    pub(super) fn shutdown_framework(&mut self, fw: &str) {
        tracing::info!(framework_id = fw, "shutting down framework");
        if self.checkpoint.state.frameworks.contains_key(fw) {
            self.checkpoint
                .record(Record::FrameworkRemoved(FrameworkId {
                    value: fw.to_owned(),
                }));
        }
        for task_id in self.checkpoint.state.live_tasks_of(fw) {
            let launched = self.checkpoint.state.tasks[&(fw.to_owned(), task_id.clone())].launched;
            if !launched {
                self.fail_task(
                    fw,
                    &task_id,
                    TaskState::TaskKilled,
                    task_status::Reason::FrameworkRemoved,
                    "the framework was shut down".into(),
                );
            }
        }
        let deadline = std::time::Instant::now() + self.config.executor_shutdown_grace;
        for ex in self.executors_for(fw, None) {
            let Some(link) = self.links.get_mut(&ex) else {
                continue;
            };
            link.shutdown_deadline.get_or_insert(deadline);
            self.send_to_executor(
                ex,
                executor_event::Event::Shutdown(ExecutorShutdown { executor_id: None }),
            );
        }
    }

    /// An update the agent itself generates (source AGENT).
    pub(super) fn fail_task(
        &mut self,
        fw: &str,
        task_id: &str,
        state: TaskState,
        reason: task_status::Reason,
        message: String,
    ) {
        tracing::info!(
            framework_id = fw,
            task_id,
            state = state.as_str_name(),
            message,
            "task ended by the agent"
        );
        // Ended before its launch: what was still fetching or compiling for it stops.
        if let Some(container_id) = self.fetching.remove(&(fw.to_owned(), task_id.to_owned())) {
            self.launcher.preparing.cancel(&container_id);
        }
        let status = TaskStatus {
            task_id: Some(TaskId {
                value: task_id.to_owned(),
            }),
            state: state as i32,
            message,
            source: task_status::Source::Agent as i32,
            reason: Some(reason as i32),
            uuid: cairn_api::ids::new_update_uuid(),
            timestamp: now_secs(),
            ..Default::default()
        };
        self.record_update(fw, status);
    }

    /// Every update passes here; a duplicate (same uuid) or an update after a
    /// terminal state changes nothing.
    pub(super) fn record_update(&mut self, fw: &str, mut status: TaskStatus) {
        status.agent_id = self.info.id.clone();
        let task_id = status.task_id.clone().unwrap_or_default().value;
        let key = (fw.to_owned(), task_id.clone());
        let Some(task) = self.checkpoint.state.tasks.get(&key) else {
            tracing::warn!(
                framework_id = fw,
                task_id,
                "update for an unknown task dropped"
            );
            return;
        };
        if task.seen.contains(&status.uuid) {
            return;
        }
        if task.state.is_terminal() {
            tracing::warn!(
                framework_id = fw,
                task_id,
                "update after a terminal state dropped"
            );
            return;
        }
        self.apply_limitation(&key, &mut status);
        if TaskState::try_from(status.state).is_ok_and(TaskState::is_terminal) {
            self.metrics.task_ended(&status);
            self.sizes.release(&key);
        }
        let update = StatusUpdate {
            framework_id: Some(FrameworkId {
                value: fw.to_owned(),
            }),
            status: Some(status),
        };
        self.checkpoint.record(Record::Update(update.clone()));
        // Sent after the sync, and only if it is its stream's head by then.
        self.update_to_master(update);
    }

    pub(super) fn acknowledge(&mut self, ack: StatusUpdateAcknowledgement) {
        let fw = ack.framework_id.clone().unwrap_or_default().value;
        let task_id = ack.task_id.clone().unwrap_or_default().value;
        let matches = self
            .checkpoint
            .state
            .updates
            .head(&fw, &task_id)
            .and_then(|h| h.status.as_ref())
            .is_some_and(|s| s.uuid == ack.uuid);
        if !matches {
            return; // a duplicate or stale acknowledgement
        }
        let key = (fw.clone(), task_id.clone());
        let container_id = self
            .checkpoint
            .state
            .tasks
            .get(&key)
            .map(|t| t.container_id.clone());
        let view = self.task_view(&key);
        self.checkpoint.record(Record::Ack(ack));
        if let Some(view) = view.filter(|_| !self.checkpoint.state.tasks.contains_key(&key)) {
            self.remember_completed(view);
        }
        // Its terminal update acknowledged, the task is gone: its run's sandbox is
        // garbage now (kept a while for a look at its files).
        if let Some(container_id) =
            container_id.filter(|_| !self.checkpoint.state.tasks.contains_key(&key))
        {
            let sandbox = self.paths.sandbox(&fw, &task_id, &container_id);
            self.outbox.push(Effect::Collect(sandbox));
        }
        self.resend.remove(&(fw.clone(), task_id.clone()));
        if let Some(next) = self.checkpoint.state.updates.head(&fw, &task_id).cloned() {
            self.update_to_master(next);
        }
    }
}
