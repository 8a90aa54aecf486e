//! The scheduler calls of the Mesos v1 API other than SUBSCRIBE: `call` checks the
//! caller's stream and hands each type to its own method. ACCEPT lives in
//! `accept.rs` and RECONCILE in `reconcile.rs`.

use std::time::{Duration, Instant};

use cairn_api::internal::registry_operation::Operation;
use cairn_api::internal::{KillTask, MasterMessage, ShutdownFramework, master_message};
use cairn_api::v1::{
    Call, ExecutorId, FrameworkId, FrameworkInfo, KillPolicy, TaskId, TaskState, TaskStatus, call,
    task_status,
};

use super::subscribe::{check_framework_info, check_unchanged, roles_of};
use super::{Leader, now_secs, update_event};
use crate::error::CallError;

/// Framework messages are for small coordination data, as in Mesos.
const MAX_FRAMEWORK_MESSAGE: usize = 1 << 20;

/// The message a call's type needs, or a refusal naming it ("ACCEPT without `accept`").
fn required<T>(
    message: Option<T>,
    call: &'static str,
    field: &'static str,
) -> Result<T, CallError> {
    message.ok_or(CallError::WithoutMessage { call, field })
}

impl Leader {
    /// Every call other than SUBSCRIBE, from a subscribed framework on its current stream.
    pub(super) async fn call(
        &mut self,
        call: Call,
        stream_id: Option<String>,
        principal: Option<String>,
    ) -> Result<(), CallError> {
        let framework_id = self.caller(&call, stream_id, principal)?;
        let framework_id = framework_id.as_str();
        match call::Type::try_from(call.r#type).unwrap_or(call::Type::Unknown) {
            call::Type::Teardown => self.teardown(framework_id).await,
            call::Type::Accept => {
                self.accept(framework_id, required(call.accept, "ACCEPT", "accept")?);
                Ok(())
            }
            call::Type::Decline => {
                self.decline(framework_id, required(call.decline, "DECLINE", "decline")?);
                Ok(())
            }
            call::Type::Revive => {
                let roles = call.revive.map(|r| r.roles).unwrap_or_default();
                self.allocator.revive(framework_id, &roles);
                self.revived.0 = true;
                Ok(())
            }
            call::Type::Suppress => {
                let roles = call.suppress.map(|r| r.roles).unwrap_or_default();
                self.allocator.suppress(framework_id, &roles);
                Ok(())
            }
            call::Type::Kill => {
                let kill = required(call.kill, "KILL", "kill")?;
                let task_id = kill.task_id.unwrap_or_default().value;
                self.kill(framework_id, &task_id, kill.kill_policy);
                Ok(())
            }
            call::Type::Acknowledge => self.acknowledge(
                framework_id,
                required(call.acknowledge, "ACKNOWLEDGE", "acknowledge")?,
            ),
            call::Type::Reconcile => {
                let tasks = call.reconcile.map(|r| r.tasks).unwrap_or_default();
                self.reconcile(framework_id, tasks);
                Ok(())
            }
            call::Type::UpdateFramework => {
                let info = call.update_framework.and_then(|u| u.framework_info).ok_or(
                    CallError::WithoutField {
                        call: "UPDATE_FRAMEWORK",
                        path: "update_framework.framework_info",
                    },
                )?;
                self.update_framework(framework_id, info).await
            }
            call::Type::Message => {
                self.framework_message(framework_id, required(call.message, "MESSAGE", "message")?)
            }
            call::Type::Shutdown => self.shutdown_executor(
                framework_id,
                required(call.shutdown, "SHUTDOWN", "shutdown")?,
            ),
            other => Err(CallError::UnsupportedCall {
                call_type: other.as_str_name(),
            }),
        }
    }

    /// The id of the framework making `call`, if it is subscribed, `stream_id` is its
    /// current stream (a call on a stream it failed over from is refused), and the
    /// authenticated `principal`, if any, is the framework's.
    fn caller(
        &self,
        call: &Call,
        stream_id: Option<String>,
        principal: Option<String>,
    ) -> Result<String, CallError> {
        let framework_id = call
            .framework_id
            .as_ref()
            .map(|f| f.value.clone())
            .filter(|v| !v.is_empty())
            .ok_or(CallError::NoFrameworkId)?;
        let Some(framework) = self.frameworks.get(&framework_id) else {
            return Err(CallError::FrameworkNotSubscribed { framework_id });
        };
        if let Some(principal) = principal
            && framework.info.principal != principal
        {
            return Err(CallError::CallPrincipalMismatch {
                principal,
                framework_principal: framework.info.principal.clone(),
            });
        }
        match (&framework.stream, stream_id) {
            (Some((current, _)), Some(given)) if *current == given => Ok(framework_id),
            (Some(_), Some(stream_id)) => Err(CallError::NotCurrentStream {
                framework_id,
                stream_id,
            }),
            (_, None) => Err(CallError::NoStreamId),
            (None, Some(_)) => Err(CallError::FrameworkNotConnected { framework_id }),
        }
    }

    /// DECLINE: the offers go back, filtered from this framework for `refuse_seconds`,
    /// and the framework goes behind the others for their agents for a while.
    fn decline(&mut self, framework_id: &str, decline: call::Decline) {
        let refuse = self.refuse_for(decline.filters.as_ref());
        for id in decline.offer_ids {
            if self
                .offers
                .get(&id.value)
                .is_none_or(|o| o.framework_id != framework_id)
            {
                continue; // unknown or rescinded: nothing to give back
            }
            if let Some(entry) = self.remove_offer(&id.value, Some(refuse)) {
                self.allocator.answered(framework_id);
                let holds_more = (self.offers.values())
                    .any(|o| o.framework_id == framework_id && o.agent_id == entry.agent_id);
                if !holds_more {
                    self.allocator
                        .declined(framework_id, &entry.agent_id, Instant::now());
                }
            }
        }
    }

    /// How long declined or unused resources stay filtered from a framework: its
    /// `refuse_seconds` (at most a year), or the master's default.
    pub(super) fn refuse_for(&self, filters: Option<&cairn_api::v1::Filters>) -> Duration {
        filters
            .and_then(|f| f.refuse_seconds)
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(31_536_000.0)))
            .unwrap_or(self.config.default_refuse)
    }

    /// KILL: asks the task's agent to kill it. Mesos answers a KILL for a task it
    /// does not know with TASK_LOST.
    fn kill(&mut self, framework_id: &str, task_id: &str, kill_policy: Option<KillPolicy>) {
        let key = (framework_id.to_owned(), task_id.to_owned());
        let Some(task) = self.tasks.get(&key) else {
            let status = TaskStatus {
                task_id: Some(TaskId {
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
                    task_id: Some(TaskId {
                        value: task_id.to_owned(),
                    }),
                    kill_policy,
                })),
            },
        );
    }

    /// ACKNOWLEDGE: passed to the agent, whose status update stream waits for it.
    fn acknowledge(&mut self, framework_id: &str, ack: call::Acknowledge) -> Result<(), CallError> {
        let agent_id = ack.agent_id.unwrap_or_default().value;
        let task_id = ack.task_id.unwrap_or_default().value;
        if ack.uuid.len() != 16 {
            return Err(CallError::BadAcknowledgementUuid {
                framework_id: framework_id.to_owned(),
                task_id,
                len: ack.uuid.len(),
            });
        }
        self.acknowledge_to_agent(&agent_id, framework_id, &task_id, ack.uuid);
        Ok(())
    }

    /// MESSAGE: opaque data for one of the framework's executors on an agent.
    fn framework_message(
        &mut self,
        framework_id: &str,
        message: call::Message,
    ) -> Result<(), CallError> {
        let agent_id = message.agent_id.unwrap_or_default().value;
        self.check_executor(framework_id, message.executor_id.as_ref(), &agent_id, true)?;
        if message.data.len() > MAX_FRAMEWORK_MESSAGE {
            return Err(CallError::MessageTooLarge {
                framework_id: framework_id.to_owned(),
                agent_id,
                size: message.data.len(),
                limit: MAX_FRAMEWORK_MESSAGE,
            });
        }
        self.send_to_agent(
            &agent_id,
            MasterMessage {
                message: Some(master_message::Message::FrameworkMessage(
                    cairn_api::internal::FrameworkMessage {
                        framework_id: Some(FrameworkId {
                            value: framework_id.to_owned(),
                        }),
                        executor_id: message.executor_id,
                        data: message.data,
                    },
                )),
            },
        );
        Ok(())
    }

    /// SHUTDOWN: stops one of the framework's executors on an agent.
    fn shutdown_executor(
        &mut self,
        framework_id: &str,
        shutdown: call::Shutdown,
    ) -> Result<(), CallError> {
        let agent_id = shutdown.agent_id.unwrap_or_default().value;
        self.check_executor(framework_id, shutdown.executor_id.as_ref(), &agent_id, true)?;
        let framework = Some(FrameworkId {
            value: framework_id.to_owned(),
        });
        let ours = cairn_api::ids::executor_id_for(&FrameworkId {
            value: framework_id.to_owned(),
        });
        let executor_id = shutdown.executor_id.unwrap_or_default();
        // The framework's executor process: shutting it down kills all the
        // framework's tasks there. A custom executor: only its own tasks.
        let message = if executor_id == ours {
            master_message::Message::ShutdownFramework(ShutdownFramework {
                framework_id: framework,
            })
        } else {
            if let Some(agent) = self.agents.get_mut(&agent_id) {
                agent
                    .custom_executors
                    .remove(&(framework_id.to_owned(), executor_id.value.clone()));
            }
            master_message::Message::ShutdownExecutor(cairn_api::internal::ShutdownExecutor {
                framework_id: framework,
                executor_id: Some(executor_id),
                idle: false,
            })
        };
        self.send_to_agent(
            &agent_id,
            MasterMessage {
                message: Some(message),
            },
        );
        Ok(())
    }

    /// A framework has executor processes on an agent, `cairn-executor-<framework id>`
    /// and others of that framework's (see `cairn_api::ids::is_agent_executor_of`);
    /// with `custom`, also the custom executors its tasks there have named (hosted by
    /// them). A call naming another, or an unknown agent, is a 404.
    fn check_executor(
        &self,
        framework_id: &str,
        executor_id: Option<&ExecutorId>,
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
        let framework = FrameworkId {
            value: framework_id.to_owned(),
        };
        let known = executor_id == ours.value
            || cairn_api::ids::is_agent_executor_of(&framework, executor_id)
            || (custom && custom_here());
        if !known || !self.agents.contains_key(agent_id) {
            return Err(CallError::UnknownExecutor {
                framework_id: framework_id.to_owned(),
                executor_id: executor_id.to_owned(),
                agent_id: agent_id.to_owned(),
            });
        }
        Ok(())
    }

    /// UPDATE_FRAMEWORK: a new FrameworkInfo for a subscribed framework (same id and
    /// principal, roles it may register under), recorded in the registry; role
    /// changes take effect at the next allocation.
    async fn update_framework(
        &mut self,
        framework_id: &str,
        mut info: FrameworkInfo,
    ) -> Result<(), CallError> {
        if let Some(given) = info.id.as_ref().filter(|i| i.value != framework_id) {
            return Err(CallError::UpdateFrameworkIdDiffers {
                framework_id: framework_id.to_owned(),
                info_id: given.value.clone(),
            });
        }
        check_framework_info(&mut info)?;
        if let Some(framework) = self.frameworks.get(framework_id) {
            check_unchanged(&framework.info, &info)?;
        }
        let roles = roles_of(&info);
        (self.config.acls).check_roles(&info, &roles)?;
        info.id = Some(FrameworkId {
            value: framework_id.to_owned(),
        });
        self.registry
            .propose(Operation::AddFramework(info.clone()))
            .await?;
        self.allocator.set_framework_roles(framework_id, &roles);
        if let Some(fw) = self.frameworks.get_mut(framework_id) {
            fw.info = info;
        }
        self.rescind_offers_of_framework(framework_id);
        self.allocate();
        Ok(())
    }

    /// TEARDOWN (the framework's or an operator's): removes the framework from the
    /// registry, drops its offers, tells every agent to shut it down and counts its
    /// tasks as killed.
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
            let Some(mut task) = self.tasks.remove(&key) else {
                continue;
            };
            if let Some(agent) = self.agents.get_mut(&task.agent_id) {
                agent.used = agent.used.checked_sub(&task.resources).unwrap_or_default();
            }
            task.state = TaskState::TaskKilled;
            self.completed.push(task);
        }
        self.completed.framework_removed(framework_id);
        self.forget_executors_of(framework_id);
        tracing::info!(framework_id, "framework torn down");
        Ok(())
    }
}

#[cfg(test)]
mod tests;
