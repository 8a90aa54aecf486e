//! Agents leaving: unreachable past the agent timeout (they may come back and
//! re-register), or marked gone by the operator (for good). Either way their tasks are
//! reported to their frameworks with the state Mesos gives them.

use cairn_api::internal::registry_operation::Operation;
use cairn_api::v1::{AgentId, TaskState};

use super::agents::master_status;
use super::{Leader, update_event};
use crate::error::CallError;

impl Leader {
    /// An agent silent past the agent timeout: no more offers of it, its stream is
    /// closed, and its live tasks are reported TASK_UNREACHABLE to partition-aware
    /// frameworks and TASK_LOST to the others, as Mesos does. If the agent comes
    /// back, it re-registers with its tasks and the master's view is rebuilt.
    pub(super) fn agent_unreachable(&mut self, agent_id: &str) {
        tracing::warn!(
            agent_id,
            "agent missed its heartbeats; marking it unreachable"
        );
        if let Some(agent) = self.agents.get_mut(agent_id) {
            agent.conn = None;
        }
        self.allocator.set_agent_active(agent_id, false);
        self.rescind_offers_of_agent(agent_id);
        let lost: Vec<(String, String)> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.agent_id == agent_id && !t.state.is_terminal())
            .map(|(k, _)| k.clone())
            .collect();
        for key in lost {
            let state = if self.is_partition_aware(&key.0) {
                TaskState::TaskUnreachable
            } else {
                TaskState::TaskLost
            };
            let task = self.tasks.get_mut(&key).expect("listed above");
            let status = master_status(
                task,
                state,
                cairn_api::v1::task_status::Reason::AgentRemoved,
                format!("agent {agent_id} is unreachable"),
            );
            self.send_event(&key.0, update_event(status));
        }
    }
}

impl Leader {
    /// MARK_AGENT_GONE: the operator says the agent is gone for good (decommissioned,
    /// its disk wiped). Its tasks are TASK_GONE_BY_OPERATOR, its resources leave the
    /// cluster, and the registry refuses the agent if it ever comes back.
    pub(super) async fn mark_agent_gone(&mut self, agent_id: &str) -> Result<(), CallError> {
        if self.registry.state().gone_agents.contains(agent_id) {
            return Ok(()); // already gone: the call is idempotent, as in Mesos
        }
        if !self.registry.state().agents.contains_key(agent_id) {
            return Err(CallError::UnknownAgent {
                agent_id: agent_id.to_owned(),
            });
        }
        self.registry
            .propose(Operation::MarkAgentGone(AgentId {
                value: agent_id.to_owned(),
            }))
            .await?;
        tracing::warn!(agent_id, "agent marked gone by the operator");
        self.rescind_offers_of_agent(agent_id);
        self.allocator.remove_agent(agent_id);
        // Dropping its stream disconnects the agent; it is refused when it retries.
        self.agents.remove(agent_id);
        let gone: Vec<(String, String)> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.agent_id == agent_id)
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            let mut task = self.tasks.remove(&key).expect("listed above");
            let status = master_status(
                &mut task,
                TaskState::TaskGoneByOperator,
                cairn_api::v1::task_status::Reason::AgentRemovedByOperator,
                format!("agent {agent_id} was marked gone by the operator"),
            );
            self.completed.push(task);
            self.send_event(&key.0, update_event(status));
        }
        self.allocate();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cairn_api::v1::framework_info::Capability;
    use cairn_api::v1::framework_info::capability::Type as CapabilityType;
    use cairn_api::v1::{AgentId, TaskState, TaskStatus, task_status};

    use super::super::testing::{
        Cluster, agent_id, agent_info, command_task, framework_info, quiet_config, task_id,
    };
    use super::super::{Input, OperatorCall};
    use crate::error::CallError;

    fn assert_removed(status: &TaskStatus, state: TaskState, reason: task_status::Reason) {
        assert_eq!(status.task_id, task_id("t1"), "{status:?}");
        assert_eq!(status.state(), state, "{status:?}");
        assert_eq!(status.reason(), reason, "{status:?}");
        assert_eq!(status.source(), task_status::Source::Master);
    }

    #[tokio::test]
    async fn a_silent_agent_is_unreachable_and_its_tasks_reported() {
        let mut config = quiet_config();
        config.agent_timeout = Duration::from_secs(1);
        let cluster = Cluster::start_with(config).await;
        let mut info = framework_info("aware");
        info.capabilities.push(Capability {
            r#type: CapabilityType::PartitionAware as i32,
        });
        let mut framework = cluster.try_subscribe(info).await.expect("subscribe");
        // The agent never heartbeats: it times out a second after registering.
        let agent = cluster.register_agent("cpus:1;mem:256").await;
        cluster
            .accept_one(&mut framework, command_task("t1", "cpus:1;mem:128"))
            .await;
        let status = framework.next_update().await;
        assert_removed(
            &status,
            TaskState::TaskUnreachable,
            task_status::Reason::AgentRemoved,
        );
        assert_eq!(status.message, format!("agent {} is unreachable", agent.id));
        assert_eq!(status.agent_id, agent_id(&agent.id));
        let snapshot = cluster.snapshot().await;
        assert!(!snapshot.agents[0].active);
        assert_eq!(snapshot.tasks[0].state, "TASK_UNREACHABLE");
    }

    #[tokio::test]
    async fn an_agent_marked_gone_loses_its_tasks_and_may_not_return() {
        let cluster = Cluster::start().await;
        let agent = cluster.register_agent("cpus:1;mem:256").await;
        let mut framework = cluster.subscribe("alpha").await;
        cluster
            .accept_one(&mut framework, command_task("t1", "cpus:1;mem:128"))
            .await;
        let gone = |agent_id: String| {
            cluster.leader.ask(move |reply| Input::Operator {
                call: OperatorCall::MarkAgentGone { agent_id },
                principal: None,
                reply,
            })
        };
        gone(agent.id.clone()).await.expect("MARK_AGENT_GONE");
        let status = framework.next_update().await;
        assert_removed(
            &status,
            TaskState::TaskGoneByOperator,
            task_status::Reason::AgentRemovedByOperator,
        );
        assert_eq!(
            status.message,
            format!("agent {} was marked gone by the operator", agent.id)
        );
        let snapshot = cluster.snapshot().await;
        assert!(snapshot.tasks.is_empty(), "{:?}", snapshot.tasks);
        assert_eq!(snapshot.completed_tasks[0].state, "TASK_GONE_BY_OPERATOR");

        gone(agent.id.clone())
            .await
            .expect("marking it again is a no-op");
        let unknown = gone("no-such-agent".into()).await.unwrap_err();
        assert_eq!(unknown.to_string(), "agent no-such-agent is unknown");
        assert_eq!(unknown.http_status().as_u16(), 404);

        let mut info = agent_info("cpus:1;mem:256");
        info.id = Some(AgentId {
            value: agent.id.clone(),
        });
        let refused = cluster.try_register(info).await.err().expect("refused");
        assert!(
            matches!(refused, CallError::AgentMarkedGone { ref agent_id } if *agent_id == agent.id),
            "{refused:?}"
        );
        assert_eq!(refused.grpc_code(), tonic::Code::PermissionDenied);
    }
}
