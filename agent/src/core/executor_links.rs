//! Executors as the core sees them: started or re-attached, subscribed over the
//! socket (with the tasks and unacknowledged updates they hold), and ended, by
//! exiting, by missing their re-subscription, or by a shutdown past its grace.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use cairn_api::internal::checkpoint_record::Record;
use cairn_api::internal::{
    CheckpointedExecutor, ExecutorAcknowledged, ExecutorEvent, ExecutorKill, ExecutorSubscribe,
    ExecutorSubscribed, agent_message, executor_call, executor_event,
};
use cairn_api::v1::{ExecutorId, FrameworkId, TaskId, TaskState, task_status};
use tokio::sync::mpsc;

use super::{Core, Effect};
use crate::checkpoint::TaskKey;
use crate::launcher::{ExecutorSpec, is_docker};

/// A freshly started executor has this long to subscribe (Mesos'
/// `--executor_registration_timeout` defaults to one minute).
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(60);

/// The core's live view of one executor process; what survives a restart is its
/// checkpointed record.
pub struct ExecutorLink {
    pub(super) conn: Option<(u64, mpsc::Sender<ExecutorEvent>)>,
    /// Events waiting for a subscription (or for room on the connection).
    queued: VecDeque<ExecutorEvent>,
    /// Adopted from the checkpoint after an agent restart, not started by us.
    pub(super) recovered: bool,
    /// Until it first subscribes after being started or re-attached.
    subscribe_deadline: Option<Instant>,
    pub(super) shutdown_deadline: Option<Instant>,
    /// Shut down for being idle: a task arriving now waits for its successor.
    pub(super) idle_shutdown: bool,
    /// Killed by the agent; its exit is expected.
    killed: bool,
    /// An exit noticed while its connection was still open: handled once the
    /// connection closes, so the last updates it wrote are read first.
    exited: Option<(u32, String)>,
}

impl ExecutorLink {
    fn new(recovered: bool, subscribe_within: Duration) -> Self {
        Self {
            conn: None,
            queued: VecDeque::new(),
            recovered,
            subscribe_deadline: Some(Instant::now() + subscribe_within),
            shutdown_deadline: None,
            idle_shutdown: false,
            killed: false,
            exited: None,
        }
    }

    /// Sends in order: queued events first, and nothing overtakes the queue.
    pub(super) fn send(&mut self, event: ExecutorEvent) {
        self.queued.push_back(event);
        self.flush();
    }

    /// Sends what is queued until the connection is gone or full; the rest waits for
    /// the next event or subscription.
    pub(super) fn flush(&mut self) {
        let Some((_, tx)) = &self.conn else { return };
        while let Some(event) = self.queued.pop_front() {
            if let Err(e) = tx.try_send(event) {
                self.queued.push_front(e.into_inner());
                break;
            }
        }
    }
}

impl Core {
    /// Starts the executor unless it is live: as the user of the tasks it will run,
    /// in its cgroup, sized to them (see [`crate::launcher::Launcher::spawn`]).
    pub(super) fn ensure_executor(&mut self, spec: &ExecutorSpec) -> std::io::Result<()> {
        let ex = spec.executor_id.as_str();
        if self.checkpoint.state.executors.contains_key(ex) && self.links.contains_key(ex) {
            return Ok(());
        }
        let spawned = self.launcher.spawn(spec, self.sizes.of(ex))?;
        self.checkpoint
            .record(Record::Executor(CheckpointedExecutor {
                framework_id: Some(FrameworkId {
                    value: spec.framework_id.clone(),
                }),
                executor_id: Some(ExecutorId {
                    value: ex.to_owned(),
                }),
                pid: spawned.pid,
                start_time: spawned.start_time,
                cgroup: spawned.cgroup,
                hosted: spec.docker,
            }));
        self.links.insert(
            ex.to_owned(),
            ExecutorLink::new(false, REGISTRATION_TIMEOUT),
        );
        Ok(())
    }

    /// The framework an executor belongs to.
    fn framework_of(&self, ex: &str) -> Option<String> {
        let record = self.checkpoint.state.executors.get(ex)?;
        Some(record.framework_id.clone().unwrap_or_default().value)
    }

    /// After a restart: executors still running get a grace period to re-subscribe;
    /// for those that died while the agent was away, their tasks have failed.
    /// Tasks still staging are staged again.
    pub(super) fn reattach_executors(&mut self) {
        let recorded: Vec<CheckpointedExecutor> =
            self.checkpoint.state.executors.values().cloned().collect();
        // Sized as before the restart, from the tasks still live on each.
        let live: Vec<(TaskKey, String, cairn_api::v1::TaskInfo)> = (self.checkpoint.state.tasks)
            .iter()
            .filter(|(_, t)| !t.state.is_terminal())
            .map(|(k, t)| (k.clone(), t.executor_id.clone(), t.info.clone()))
            .collect();
        for (key, ex, info) in live {
            if !is_docker(&ex) {
                self.sizes.charge(&key, &ex, &info);
            }
        }
        for executor in recorded {
            let ex = executor.executor_id.clone().unwrap_or_default().value;
            if executor.hosted {
                self.host_again(executor);
            } else if crate::process::is_alive(executor.pid, executor.start_time) {
                tracing::info!(
                    executor_id = ex,
                    pid = executor.pid,
                    "executor survived the restart; waiting for it to re-subscribe"
                );
                self.launcher.watch(&ex, executor.pid, executor.start_time);
                self.links.insert(
                    ex,
                    ExecutorLink::new(true, self.config.executor_reregistration_timeout),
                );
            } else {
                self.executor_gone(
                    &ex,
                    TaskState::TaskFailed,
                    task_status::Reason::ExecutorTerminated,
                    "the executor terminated while the agent was down",
                );
            }
        }
        let mut staged: Vec<_> = self
            .checkpoint
            .state
            .tasks
            .iter()
            .filter(|(_, t)| !t.launched && !t.state.is_terminal())
            .map(|(k, _)| k.clone())
            .collect();
        staged.sort();
        for key in staged {
            self.outbox.push(Effect::Stage(key));
        }
    }

    /// A Docker executor the previous agent hosted: this one hosts it again, and it
    /// re-subscribes with the tasks whose containers outlived the restart.
    fn host_again(&mut self, mut executor: CheckpointedExecutor) {
        let ex = executor.executor_id.clone().unwrap_or_default().value;
        let fw = executor.framework_id.clone().unwrap_or_default().value;
        match self.launcher.host(&fw, &ex, true) {
            Ok(spawned) => {
                executor.pid = spawned.pid;
                executor.start_time = spawned.start_time;
                self.checkpoint.record(Record::Executor(executor));
                let within = self.config.executor_reregistration_timeout;
                self.links.insert(ex, ExecutorLink::new(true, within));
            }
            Err(e) => self.executor_gone(
                &ex,
                TaskState::TaskLost,
                task_status::Reason::ExecutorTerminated,
                &format!("the agent could not host the Docker executor again: {e}"),
            ),
        }
    }

    pub(super) fn executor_subscribed(
        &mut self,
        ex: &str,
        conn: u64,
        pid: Option<i32>,
        subscribe: ExecutorSubscribe,
        tx: mpsc::Sender<ExecutorEvent>,
    ) {
        let (Some(record), Some(link)) = (
            self.checkpoint.state.executors.get(ex),
            self.links.get_mut(ex),
        ) else {
            tracing::warn!(
                executor_id = ex,
                "an executor subscribed that this agent does not run; shutting it down"
            );
            let _ = tx.try_send(ExecutorEvent {
                event: Some(executor_event::Event::Shutdown(
                    cairn_api::internal::ExecutorShutdown { executor_id: None },
                )),
            });
            return;
        };
        // Only the process this agent started may speak for the executor (the socket
        // is open to every user: the executors run as their tasks' users).
        let fw = record.framework_id.clone().unwrap_or_default().value;
        // And that process, not a later one given its pid: the start time tells.
        let started = crate::process::start_time(record.pid);
        // And with the token this agent gave it (Mesos' executor authentication).
        let token = &subscribe.authentication_token;
        if pid != Some(record.pid as i32)
            || started != Some(record.start_time)
            || subscribe.framework_id.as_ref().map(|f| &f.value) != Some(&fw)
            || !self.launcher.tokens.verify(&fw, ex, token)
        {
            tracing::warn!(
                executor_id = ex,
                ?pid,
                expected = record.pid,
                "executor subscription from the wrong process, or with a wrong token, refused"
            );
            return;
        }
        let subscribed = ExecutorEvent {
            event: Some(executor_event::Event::Subscribed(ExecutorSubscribed {
                agent_id: self.info.id.clone(),
            })),
        };
        let _ = tx.try_send(subscribed);
        link.conn = Some((conn, tx));
        link.subscribe_deadline = None;
        // Launches are recomputed below from what the executor says it holds: none
        // queued or waiting on a sync may go as well, or a task could run twice.
        link.queued
            .retain(|e| !matches!(e.event, Some(executor_event::Event::Launch(_))));
        self.outbox.retain(|e| {
            !matches!(e, Effect::ToExecutor(to, event)
                if to == ex && matches!(**event, executor_event::Event::Launch(_)))
        });
        if link.recovered {
            tracing::info!(executor_id = ex, "recovered executor re-subscribed");
        }
        for status in subscribe.unacknowledged_updates {
            self.executor_update(ex, &fw, status);
        }
        let held: HashSet<String> = subscribe.tasks.into_iter().map(|t| t.value).collect();
        self.reconcile_executor_tasks(ex, &fw, held);
        if let Some(link) = self.links.get_mut(ex) {
            link.flush();
        }
    }

    /// Brings a re-subscribed executor in line with the checkpoint: tasks handed to it
    /// that it does not hold are launched again; tasks it holds that this agent does
    /// not know (or knows ended) are killed.
    fn reconcile_executor_tasks(&mut self, ex: &str, fw: &str, held: HashSet<String>) {
        for key in self.checkpoint.state.live_tasks_on(ex) {
            let task = &self.checkpoint.state.tasks[&key];
            if task.launched && !held.contains(&key.1) {
                // Handed over, but the event died with the old agent or connection.
                let launch = self.launch_event(fw, task.info.clone());
                self.send_to_executor(ex.to_owned(), launch);
            }
        }
        for task_id in held {
            let known = self
                .checkpoint
                .state
                .tasks
                .get(&(fw.to_owned(), task_id.clone()))
                .is_some_and(|t| !t.state.is_terminal() && t.executor_id == ex);
            if !known {
                tracing::warn!(
                    executor_id = ex,
                    task_id,
                    "executor runs a task this agent does not know; killing it"
                );
                self.send_to_executor(
                    ex.to_owned(),
                    executor_event::Event::Kill(ExecutorKill {
                        task_id: Some(TaskId { value: task_id }),
                        kill_policy: None,
                        report_killing: false,
                    }),
                );
            }
        }
    }

    pub(super) fn on_executor_call(&mut self, ex: &str, conn: u64, call: executor_call::Call) {
        let current = self
            .links
            .get(ex)
            .and_then(|l| l.conn.as_ref())
            .is_some_and(|(c, _)| *c == conn);
        let Some(fw) = self.framework_of(ex).filter(|_| current) else {
            return;
        };
        let fw = fw.as_str();
        match call {
            executor_call::Call::Update(update) => {
                if let Some(status) = update.status {
                    self.executor_update(ex, fw, status);
                }
            }
            executor_call::Call::Message(m) => {
                let executor_id = m.executor_id.unwrap_or_else(|| ExecutorId {
                    value: ex.to_owned(),
                });
                self.send_to_master(agent_message::Message::ExecutorMessage(
                    cairn_api::internal::FrameworkMessage {
                        framework_id: Some(FrameworkId {
                            value: fw.to_owned(),
                        }),
                        executor_id: Some(executor_id),
                        data: m.data,
                    },
                ));
            }
            executor_call::Call::Heartbeat(h) => {
                let report = (fw.to_owned(), super::now_secs(), h.usage);
                self.usage.insert(ex.to_owned(), report);
            }
            executor_call::Call::Subscribe(_) => {}
        }
    }

    /// An update from an executor: recorded, and acknowledged to the executor once it
    /// is durable (a duplicate is acknowledged again: it is durable already).
    fn executor_update(&mut self, ex: &str, fw: &str, mut status: cairn_api::v1::TaskStatus) {
        if status.uuid.len() != 16 {
            tracing::warn!(
                executor_id = ex,
                "executor update without a 16-byte uuid dropped"
            );
            return;
        }
        // An executor speaks only for the tasks it was given.
        let task_id = status.task_id.clone().unwrap_or_default().value;
        let ours = (self.checkpoint.state.tasks)
            .get(&(fw.to_owned(), task_id.clone()))
            .is_some_and(|t| t.executor_id == ex);
        if !ours {
            tracing::warn!(
                executor_id = ex,
                task_id,
                "update for a task of another executor dropped"
            );
            // Acknowledged all the same, so the executor lets go of it (a Docker
            // executor removes the container then) rather than resend it forever.
            let ack = ExecutorAcknowledged {
                task_id: status.task_id,
                uuid: status.uuid,
            };
            self.send_to_executor(ex.to_owned(), executor_event::Event::Acknowledged(ack));
            return;
        }
        status.source = task_status::Source::Executor as i32;
        status.executor_id = Some(ExecutorId {
            value: ex.to_owned(),
        });
        let ack = ExecutorAcknowledged {
            task_id: status.task_id.clone(),
            uuid: status.uuid.clone(),
        };
        self.record_update(fw, status);
        self.send_to_executor(ex.to_owned(), executor_event::Event::Acknowledged(ack));
    }

    pub(super) fn executor_disconnected(&mut self, ex: &str, conn: u64) {
        let Some(link) = self.links.get_mut(ex) else {
            return;
        };
        if link.conn.as_ref().is_some_and(|(c, _)| *c == conn) {
            link.conn = None;
            if let Some((pid, status)) = link.exited.take() {
                self.executor_exited(ex, pid, status);
            }
        }
    }

    /// The master charged an executor process for a task that ended before it
    /// started: if none runs and no live task awaits it, the master hears it exited
    /// (as Mesos reports an executor whose launch failed), which frees the charge.
    pub(super) fn release_unstarted_executor(&mut self, fw: &str, ex: &str) {
        let state = &self.checkpoint.state;
        let awaited = (state.tasks.iter())
            .any(|((f, _), t)| f == fw && t.executor_id == ex && !t.state.is_terminal());
        if ex.is_empty() || state.executors.contains_key(ex) || awaited {
            return;
        }
        self.send_to_master(agent_message::Message::ExecutorExited(
            cairn_api::internal::ExecutorExited {
                framework_id: Some(FrameworkId {
                    value: fw.to_owned(),
                }),
                executor_id: Some(cairn_api::v1::ExecutorId {
                    value: ex.to_owned(),
                }),
                status: None,
                message: "the executor never started: its tasks could not launch".to_owned(),
                idle: false,
            },
        ));
    }

    /// The master's idle shutdown of executor process `ex` of framework `fw`: it
    /// stops if it still has no task (one that arrives meanwhile waits for its
    /// successor; see `fetched`).
    pub(super) fn shutdown_idle_executor(&mut self, fw: &str, ex: &str) {
        let ours = self.framework_of(ex).is_some_and(|f| f == fw);
        if !ours || !self.checkpoint.state.live_tasks_on(ex).is_empty() {
            return;
        }
        let Some(link) = self.links.get_mut(ex) else {
            return;
        };
        tracing::info!(executor_id = ex, "shutting down an idle executor");
        link.idle_shutdown = true;
        let deadline = Instant::now() + self.config.executor_shutdown_grace;
        link.shutdown_deadline.get_or_insert(deadline);
        let shutdown = cairn_api::internal::ExecutorShutdown { executor_id: None };
        self.send_to_executor(ex.to_owned(), executor_event::Event::Shutdown(shutdown));
    }

    pub(super) fn executor_exited(&mut self, ex: &str, pid: u32, status: String) {
        let Some(record) = self.checkpoint.state.executors.get(ex) else {
            return;
        };
        if record.pid != pid {
            return;
        }
        let fw = record.framework_id.clone().unwrap_or_default().value;
        let cgroup = record.cgroup.clone();
        if let Some(link) = self.links.get_mut(ex)
            && link.conn.is_some()
        {
            // Its socket may still hold its last updates; they are read first.
            link.exited = Some((pid, status));
            return;
        }
        let status = status.as_str();
        tracing::info!(executor_id = ex, pid, status, "executor exited");
        let executor_id = record.executor_id.clone();
        // Its exit code, or (as in a wait status) the number of the signal that
        // ended it: Mesos clients read `status` whenever an executor is gone.
        let code = status
            .strip_prefix("exit status: ")
            .or_else(|| status.strip_prefix("signal: "))
            .and_then(|c| c.split_whitespace().next())
            .and_then(|c| c.parse::<i32>().ok());
        let idle = self.links.get(ex).is_some_and(|l| l.idle_shutdown);
        self.send_to_master(agent_message::Message::ExecutorExited(
            cairn_api::internal::ExecutorExited {
                framework_id: Some(FrameworkId { value: fw.clone() }),
                executor_id,
                status: code,
                message: status.to_owned(),
                idle,
            },
        ));
        let shutting_down = self
            .links
            .get(ex)
            .is_some_and(|l| l.shutdown_deadline.is_some());
        // The kernel killed in the executor's cgroup: its tasks together outgrew it.
        let oom = !cgroup.is_empty()
            && crate::executor_cgroup::ExecutorCgroup::at(&cgroup).oom_kills() > 0;
        let (state, reason, message) = if shutting_down {
            let why = format!("executor exited ({status}) while the task was running");
            (
                TaskState::TaskKilled,
                task_status::Reason::FrameworkRemoved,
                why,
            )
        } else if oom {
            let limit = self.sizes.of(ex).mem_bytes;
            let why = format!(
                "Memory limit exceeded: the executor's cgroup (its tasks plus {} MiB) may use {limit} bytes",
                crate::executor_cgroup::OVERHEAD_MEM_BYTES >> 20
            );
            (
                TaskState::TaskFailed,
                task_status::Reason::ContainerLimitationMemory,
                why,
            )
        } else {
            let why = format!("executor exited ({status}) while the task was running");
            (
                TaskState::TaskFailed,
                task_status::Reason::ExecutorTerminated,
                why,
            )
        };
        self.executor_gone(ex, state, reason, &message);
    }

    /// Forgets an executor and ends the tasks it was running.
    fn executor_gone(
        &mut self,
        ex: &str,
        state: TaskState,
        reason: task_status::Reason,
        message: &str,
    ) {
        let Some(record) = self.checkpoint.state.executors.get(ex).cloned() else {
            return;
        };
        let cgroup = record.cgroup.clone();
        self.checkpoint.record(Record::ExecutorExited(record));
        self.links.remove(ex);
        self.usage.remove(ex);
        // Whatever it left in its cgroup goes with it.
        self.launcher.destroy_cgroup(&cgroup);
        for key in self.checkpoint.state.live_tasks_on(ex) {
            let launched = self.checkpoint.state.tasks[&key].launched;
            if launched {
                self.fail_task(&key.0, &key.1, state, reason, message.to_owned());
            } else {
                // Its fetch is still running; it needs a new executor.
                self.outbox.push(Effect::Stage(key));
            }
        }
        // Those restaged are charged again as they stage.
        self.sizes.forget(ex);
    }

    /// Kills executors that missed their (re-)subscription or outlived their shutdown
    /// grace. Their exit arrives later and is expected.
    pub(super) fn check_executor_deadlines(&mut self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        for (ex, link) in &mut self.links {
            if link.killed {
                continue;
            }
            let missed = link.subscribe_deadline.is_some_and(|d| d <= now);
            let overdue = link.shutdown_deadline.is_some_and(|d| d <= now);
            if missed || overdue {
                link.killed = true;
                expired.push((ex.clone(), missed, link.recovered));
            }
        }
        for (ex, missed, recovered) in expired {
            let Some(record) = self.checkpoint.state.executors.get(&ex).cloned() else {
                continue;
            };
            tracing::warn!(
                executor_id = ex,
                pid = record.pid,
                missed_subscription = missed,
                "killing the executor"
            );
            // A hosted executor's pid is the agent's own.
            match record.hosted {
                true => self.launcher.kill_hosted(&ex),
                false => crate::process::kill_group(record.pid, record.start_time),
            }
            if missed {
                let (state, reason, message) = if recovered {
                    (
                        TaskState::TaskLost,
                        task_status::Reason::ExecutorReregistrationTimeout,
                        "the executor did not re-subscribe after the agent restarted",
                    )
                } else {
                    (
                        TaskState::TaskFailed,
                        task_status::Reason::ExecutorRegistrationTimeout,
                        "the executor did not subscribe in time",
                    )
                };
                self.executor_gone(&ex, state, reason, message);
            }
        }
    }
}
