//! What the master asks of the agent: tasks and task groups to run (checked and
//! checkpointed before they are staged), kills, framework and executor shutdowns,
//! messages for executors.

use cairn_api::internal::checkpoint_record::Record;
use cairn_api::internal::{ExecutorShutdown, RunTask, executor_event, master_message};
use cairn_api::v1::{FrameworkInfo, TaskInfo, TaskState, container_info, task_status};

use super::{Core, Effect};

impl Core {
    pub(super) fn on_master_message(&mut self, message: master_message::Message) {
        match message {
            master_message::Message::Registered(_) => {}
            master_message::Message::RunTask(run) => {
                if let (Some(framework), Some(task)) = (run.framework, run.task) {
                    self.run_tasks(framework, vec![task], false);
                }
            }
            master_message::Message::RunTaskGroup(run) => {
                if let Some(framework) = run.framework
                    && !run.tasks.is_empty()
                {
                    self.run_tasks(framework, run.tasks, true);
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
                for ex in self.executors_for(&fw, m.executor_id.as_ref()) {
                    let message = cairn_api::internal::ExecutorMessage {
                        data: m.data.clone(),
                        executor_id: m.executor_id.clone(),
                    };
                    self.send_to_executor(ex, executor_event::Event::Message(message));
                }
            }
            master_message::Message::ShutdownFramework(s) => {
                let fw = s.framework_id.unwrap_or_default().value;
                self.shutdown_framework(&fw);
            }
            master_message::Message::ShutdownExecutor(s) if s.idle => {
                let fw = s.framework_id.unwrap_or_default().value;
                let ex = s.executor_id.unwrap_or_default().value;
                self.shutdown_idle_executor(&fw, &ex);
            }
            master_message::Message::ShutdownExecutor(s) => {
                let fw = s.framework_id.unwrap_or_default().value;
                // Hosted by an executor process of the framework, which kills its
                // tasks and reports them.
                // An executor process named itself is shut down whole.
                let deadline = std::time::Instant::now() + self.config.executor_shutdown_grace;
                for ex in self.executors_for(&fw, s.executor_id.as_ref()) {
                    let whole = s.executor_id.as_ref().is_some_and(|e| e.value == ex);
                    let shutdown = ExecutorShutdown {
                        executor_id: s.executor_id.clone().filter(|_| !whole),
                    };
                    if whole && let Some(link) = self.links.get_mut(&ex) {
                        link.shutdown_deadline.get_or_insert(deadline);
                    }
                    self.send_to_executor(ex, executor_event::Event::Shutdown(shutdown));
                }
            }
        }
    }

    /// Accepts tasks from the master: a lone task, or a task group that launches on
    /// its executor whole or not at all. Each is checkpointed before it is staged.
    fn run_tasks(&mut self, framework: FrameworkInfo, tasks: Vec<TaskInfo>, is_group: bool) {
        let fw = framework.id.clone().unwrap_or_default().value;
        let ids: Vec<String> = tasks
            .iter()
            .map(|t| t.task_id.clone().unwrap_or_default().value)
            .collect();
        let refused = ids.iter().find(|id| {
            !cairn_api::ids::is_safe_id(&fw)
                || !cairn_api::ids::is_safe_id(id)
                || self
                    .checkpoint
                    .state
                    .tasks
                    .contains_key(&(fw.clone(), (*id).clone()))
        });
        if let Some(task_id) = refused {
            // The master validates ids, so this is a replay or a broken master; the
            // master settles whatever it believes on re-registration.
            tracing::warn!(
                fw,
                task_id,
                "refusing a launch with an unsafe or duplicate framework or task id"
            );
            return;
        }
        let group = if is_group { ids.clone() } else { Vec::new() };
        let mut unsupported = None;
        let mut executors = std::collections::BTreeSet::new();
        for task in tasks {
            let executor_id = match self.executor_of(&fw, &framework, &task) {
                Ok(id) => id,
                Err(why) => {
                    unsupported.get_or_insert(why);
                    String::new()
                }
            };
            executors.insert(executor_id.clone());
            if let Some(why) = unsupported_container(&task) {
                unsupported.get_or_insert(why);
            }
            self.checkpoint.record(Record::Task(RunTask {
                framework: Some(framework.clone()),
                task: Some(task),
                group: group.clone(),
                container_id: crate::paths::new_container_id(),
                executor_id,
            }));
        }
        if executors.len() > 1 {
            unsupported.get_or_insert(
                "a task group runs in one executor: its tasks must all be DOCKER or all not, and run as one user"
                    .to_owned(),
            );
        }
        for task_id in ids {
            match &unsupported {
                Some(why) => self.fail_task(
                    &fw,
                    &task_id,
                    TaskState::TaskFailed,
                    task_status::Reason::ContainerLaunchFailed,
                    why.clone(),
                ),
                None => self.outbox.push(Effect::Stage((fw.clone(), task_id))),
            }
        }
        if unsupported.is_some() {
            for ex in executors {
                self.release_unstarted_executor(&fw, &ex);
            }
        }
    }
}

/// Why the agent cannot run a task's container, if it cannot: a custom executor is a
/// wasm component; a task's own container may be WASM, DOCKER or MESOS (native).
fn unsupported_container(task: &TaskInfo) -> Option<String> {
    let kind = cairn_api::charges::container_type(task);
    let executor_kind = task
        .executor
        .as_ref()
        .map(|e| e.container.as_ref().map_or(0, |c| c.r#type));
    if executor_kind.is_some_and(|k| k != container_info::Type::Wasm as i32) {
        Some("a custom executor must be a WASM container (its component)".to_owned())
    } else if container_info::Type::try_from(kind).is_err() {
        Some(format!("unknown container type {kind}"))
    } else {
        None
    }
}
