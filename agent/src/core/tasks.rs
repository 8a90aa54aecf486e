//! Tasks on the agent: launching (stage, fetch, hand to the executor), killing, and
//! the status update manager's side of updates and acknowledgements.

use cairn_api::internal::checkpoint_record::Record;
use cairn_api::internal::{
    ExecutorKill, ExecutorLaunch, ExecutorShutdown, RunTask, StatusUpdate,
    StatusUpdateAcknowledgement, executor_event, master_message,
};
use cairn_api::v1::{
    FrameworkId, FrameworkInfo, TaskId, TaskInfo, TaskState, TaskStatus, container_info,
    task_status,
};

use super::{Core, Effect, now_secs};
use crate::checkpoint::{TaskKey, task_record};

impl Core {
    pub(super) fn on_master_message(&mut self, message: master_message::Message) {
        match message {
            master_message::Message::Registered(_) => {}
            master_message::Message::RunTask(run) => {
                if let (Some(framework), Some(task)) = (run.framework, run.task) {
                    self.run_task(framework, task);
                }
            }
            master_message::Message::KillTask(kill) => {
                let fw = kill.framework_id.unwrap_or_default().value;
                let task_id = kill.task_id.unwrap_or_default();
                self.kill_task(&fw, task_id, kill.kill_policy);
            }
            master_message::Message::Ack(ack) => self.acknowledge(ack),
            master_message::Message::FrameworkMessage(m) => {
                let fw = m.framework_id.unwrap_or_default().value;
                self.send_to_executor(
                    fw,
                    executor_event::Event::Message(cairn_api::internal::ExecutorMessage {
                        data: m.data,
                    }),
                );
            }
            master_message::Message::ShutdownFramework(s) => {
                let fw = s.framework_id.unwrap_or_default().value;
                self.shutdown_framework(&fw);
            }
        }
    }

    fn run_task(&mut self, framework: FrameworkInfo, task: TaskInfo) {
        let fw = framework.id.clone().unwrap_or_default().value;
        let task_id = task.task_id.clone().unwrap_or_default().value;
        if !cairn_api::ids::is_safe_id(&fw) || !cairn_api::ids::is_safe_id(&task_id) {
            tracing::warn!(
                fw,
                task_id,
                "refusing a task with an unsafe framework or task id"
            );
            return;
        }
        let key = (fw.clone(), task_id.clone());
        if self.checkpoint.state.tasks.contains_key(&key) {
            tracing::warn!(fw, task_id, "duplicate task launch ignored");
            return;
        }
        let kind = task
            .container
            .as_ref()
            .map(|c| c.r#type)
            .unwrap_or(container_info::Type::Unset as i32);
        self.checkpoint.record(Record::Task(RunTask {
            framework: Some(framework),
            task: Some(task),
        }));
        if kind != container_info::Type::Wasm as i32 {
            let name = container_info::Type::try_from(kind)
                .map(|t| t.as_str_name())
                .unwrap_or("unknown");
            self.fail_task(
                &fw,
                &task_id,
                TaskState::TaskFailed,
                task_status::Reason::ContainerLaunchFailed,
                format!(
                    "container type {name} is not supported by this agent: only WASM tasks run here"
                ),
            );
            return;
        }
        self.outbox.push(Effect::Stage(key));
    }

    /// Starts a staged task on its way: its executor if there is none, then its fetch.
    /// Runs once the task is durable, so a crash never loses a launched task.
    pub(super) fn stage(&mut self, key: TaskKey) {
        let (fw, task_id) = &key;
        let Some(task) = self.checkpoint.state.tasks.get(&key) else {
            return;
        };
        if task.launched || task.state.is_terminal() || self.fetching.contains(&key) {
            return;
        }
        let uris = task
            .info
            .command
            .as_ref()
            .map(|c| c.uris.clone())
            .unwrap_or_default();
        if let Err(why) = self.ensure_executor(fw) {
            self.fail_task(
                fw,
                task_id,
                TaskState::TaskFailed,
                task_status::Reason::ContainerLaunchFailed,
                format!("cannot start the executor: {why}"),
            );
            return;
        }
        let executor_id = cairn_api::ids::executor_id_for(&FrameworkId { value: fw.clone() }).value;
        let sandbox = self.paths.sandbox(fw, &executor_id, task_id);
        self.launcher
            .fetch(fw.clone(), task_id.clone(), sandbox, uris);
        self.fetching.insert(key);
    }

    pub(super) fn fetched(&mut self, fw: &str, task_id: &str, result: Result<(), String>) {
        let key = (fw.to_owned(), task_id.to_owned());
        self.fetching.remove(&key);
        let Some(task) = self.checkpoint.state.tasks.get(&key) else {
            return;
        };
        if task.state.is_terminal() || task.launched {
            return; // killed or failed while its sandbox was being fetched
        }
        if let Err(why) = result {
            self.fail_task(
                fw,
                task_id,
                TaskState::TaskFailed,
                task_status::Reason::ContainerLaunchFailed,
                why,
            );
            return;
        }
        let info = task.info.clone();
        // Its executor may have died during the fetch: the task gets a new one.
        if let Err(why) = self.ensure_executor(fw) {
            self.fail_task(
                fw,
                task_id,
                TaskState::TaskFailed,
                task_status::Reason::ContainerLaunchFailed,
                format!("cannot start the executor: {why}"),
            );
            return;
        }
        self.checkpoint
            .record(Record::Launched(task_record(fw, &info)));
        let launch = self.launch_event(fw, info);
        self.send_to_executor(fw.to_owned(), launch);
    }

    pub(super) fn launch_event(&self, fw: &str, task: TaskInfo) -> executor_event::Event {
        let executor_id = cairn_api::ids::executor_id_for(&FrameworkId {
            value: fw.to_owned(),
        })
        .value;
        let task_id = task.task_id.clone().unwrap_or_default().value;
        let sandbox = self.paths.sandbox(fw, &executor_id, &task_id);
        executor_event::Event::Launch(ExecutorLaunch {
            task: Some(task),
            sandbox_directory: sandbox.display().to_string(),
        })
    }

    fn kill_task(&mut self, fw: &str, task_id: TaskId, policy: Option<cairn_api::v1::KillPolicy>) {
        let key = (fw.to_owned(), task_id.value.clone());
        let Some(task) = self.checkpoint.state.tasks.get(&key) else {
            return;
        };
        if task.state.is_terminal() {
            return;
        }
        if !task.launched {
            // Still staging: the executor never saw it, so the agent ends it.
            self.fail_task(
                fw,
                &task_id.value,
                TaskState::TaskKilled,
                task_status::Reason::TaskKilledDuringLaunch,
                "killed before it was launched".into(),
            );
            return;
        }
        let kill_policy = policy.or(task.info.kill_policy);
        self.send_to_executor(
            fw.to_owned(),
            executor_event::Event::Kill(ExecutorKill {
                task_id: Some(task_id),
                kill_policy,
            }),
        );
    }

    fn shutdown_framework(&mut self, fw: &str) {
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
        if let Some(link) = self.links.get_mut(fw) {
            link.shutdown_deadline
                .get_or_insert(std::time::Instant::now() + self.config.executor_shutdown_grace);
            self.send_to_executor(
                fw.to_owned(),
                executor_event::Event::Shutdown(ExecutorShutdown {}),
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

    /// Every update passes here. Returns whether it was new: a duplicate (same uuid)
    /// or an update after a terminal state changes nothing.
    pub(super) fn record_update(&mut self, fw: &str, mut status: TaskStatus) -> bool {
        status.agent_id = self.info.id.clone();
        let task_id = status.task_id.clone().unwrap_or_default().value;
        let key = (fw.to_owned(), task_id.clone());
        let Some(task) = self.checkpoint.state.tasks.get(&key) else {
            tracing::warn!(
                framework_id = fw,
                task_id,
                "update for an unknown task dropped"
            );
            return false;
        };
        if task.seen.contains(&status.uuid) {
            return false;
        }
        if task.state.is_terminal() {
            tracing::warn!(
                framework_id = fw,
                task_id,
                "update after a terminal state dropped"
            );
            return false;
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
        true
    }

    fn acknowledge(&mut self, ack: StatusUpdateAcknowledgement) {
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
        self.checkpoint.record(Record::Ack(ack));
        self.resend.remove(&(fw.clone(), task_id.clone()));
        if let Some(next) = self.checkpoint.state.updates.head(&fw, &task_id).cloned() {
            self.update_to_master(next);
        }
    }
}
