//! RECONCILE: the master answers with the latest state it knows of a framework's
//! tasks; for a task it does not know, it answers from what it knows of the agent
//! named with it, by Mesos' rules.

use cairn_api::v1::{AgentId, TaskId, TaskState, TaskStatus, call, task_status};

use super::{Leader, TaskEntry, now_secs, update_event};

impl Leader {
    /// RECONCILE: the latest known state of the named tasks (explicit), or of all the
    /// framework's live tasks when none are named (implicit).
    pub(super) fn reconcile(&mut self, framework_id: &str, tasks: Vec<call::reconcile::Task>) {
        let statuses = if tasks.is_empty() {
            self.reconcile_implicit(framework_id)
        } else {
            self.reconcile_explicit(framework_id, tasks)
        };
        for s in statuses {
            self.send_event(framework_id, update_event(s));
        }
    }

    fn reconcile_implicit(&self, framework_id: &str) -> Vec<TaskStatus> {
        self.tasks
            .iter()
            .filter(|((fw, _), _)| fw == framework_id)
            .map(|(_, t)| reconcile_status(t.info.task_id.clone(), Some(t)))
            .collect()
    }

    fn reconcile_explicit(
        &self,
        framework_id: &str,
        tasks: Vec<call::reconcile::Task>,
    ) -> Vec<TaskStatus> {
        let mut statuses = Vec::new();
        for t in tasks {
            let id = t.task_id.unwrap_or_default();
            // Live tasks first, then the latest of the recently completed ones.
            let known = self
                .tasks
                .get(&(framework_id.to_owned(), id.value.clone()))
                .or_else(|| self.completed.latest(framework_id, &id.value));
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
        statuses
    }

    /// The answer for a task the master does not know, from what it knows of the
    /// agent named with it (Mesos' rules): on a registered agent the task is gone; on
    /// an unreachable one, unreachable; on an agent marked gone, gone by operator; on
    /// an agent the registry admitted that has not re-registered since this master
    /// started, no answer yet: its re-registration will tell (`None`). Frameworks
    /// that are not partition-aware hear TASK_LOST instead of the newer states.
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
        let agent_id = (!agent_id.is_empty()).then(|| AgentId {
            value: agent_id.to_owned(),
        });
        Some(reconciliation_update(None, state, agent_id))
    }
}

/// A known task's latest state as a reconciliation update (source MASTER, reason
/// RECONCILIATION, nothing to acknowledge).
fn reconcile_status(task_id: Option<TaskId>, known: Option<&TaskEntry>) -> TaskStatus {
    let (state, agent_id) = match known {
        Some(t) => (
            t.state,
            Some(AgentId {
                value: t.agent_id.clone(),
            }),
        ),
        None => (TaskState::TaskUnknown, None),
    };
    reconciliation_update(task_id, state, agent_id)
}

/// An update the master itself answers a RECONCILE with (source MASTER, reason
/// RECONCILIATION, nothing to acknowledge).
fn reconciliation_update(
    task_id: Option<TaskId>,
    state: TaskState,
    agent_id: Option<AgentId>,
) -> TaskStatus {
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

#[cfg(test)]
mod tests {
    use cairn_api::internal::{StatusUpdate, agent_message};
    use cairn_api::v1::framework_info::Capability;
    use cairn_api::v1::framework_info::capability::Type as CapabilityType;
    use cairn_api::v1::{Call, FrameworkId, TaskState, TaskStatus, call, task_status};

    use super::super::testing::{
        Cluster, Framework, agent_id, command_task, framework_info, task_id,
    };

    fn reconcile(tasks: Vec<call::reconcile::Task>) -> Call {
        Call {
            r#type: call::Type::Reconcile as i32,
            reconcile: Some(call::Reconcile { tasks }),
            ..Default::default()
        }
    }

    fn named(task: &str, agent: &str) -> call::reconcile::Task {
        call::reconcile::Task {
            task_id: task_id(task),
            agent_id: if agent.is_empty() {
                None
            } else {
                agent_id(agent)
            },
        }
    }

    async fn partition_aware(cluster: &Cluster) -> Framework {
        let mut info = framework_info("aware");
        info.capabilities.push(Capability {
            r#type: CapabilityType::PartitionAware as i32,
        });
        cluster.try_subscribe(info).await.expect("subscribe")
    }

    fn assert_reconciliation(status: &TaskStatus, task: &str, state: TaskState) {
        assert_eq!(status.task_id, task_id(task));
        assert_eq!(status.state(), state, "{status:?}");
        assert_eq!(status.source(), task_status::Source::Master);
        assert_eq!(status.reason(), task_status::Reason::Reconciliation);
    }

    #[tokio::test]
    async fn an_unknown_task_on_an_unknown_agent_is_unknown_or_lost() {
        let cluster = Cluster::start().await;
        let mut aware = partition_aware(&cluster).await;
        cluster
            .call(&aware, reconcile(vec![named("t-x", "no-such-agent")]))
            .await
            .expect("RECONCILE");
        let status = aware.next_update().await;
        assert_reconciliation(&status, "t-x", TaskState::TaskUnknown);
        assert_eq!(status.agent_id, agent_id("no-such-agent"));

        let mut plain = cluster.subscribe("plain").await;
        cluster
            .call(&plain, reconcile(vec![named("t-x", "no-such-agent")]))
            .await
            .expect("RECONCILE");
        let status = plain.next_update().await;
        assert_reconciliation(&status, "t-x", TaskState::TaskLost);
    }

    #[tokio::test]
    async fn an_unknown_task_on_a_registered_agent_is_gone() {
        let cluster = Cluster::start().await;
        let agent = cluster.register_agent("cpus:1;mem:256").await;
        let mut aware = partition_aware(&cluster).await;
        cluster
            .call(&aware, reconcile(vec![named("t-x", &agent.id)]))
            .await
            .expect("RECONCILE");
        let status = aware.next_update().await;
        assert_reconciliation(&status, "t-x", TaskState::TaskGone);
        assert_eq!(status.agent_id, agent_id(&agent.id));
    }

    #[tokio::test]
    async fn explicit_and_implicit_answer_a_known_task_with_its_latest_state() {
        let cluster = Cluster::start().await;
        let agent = cluster.register_agent("cpus:2;mem:512").await;
        let mut framework = cluster.subscribe("alpha").await;
        cluster
            .accept_one(&mut framework, command_task("t1", "cpus:1;mem:128"))
            .await;
        let running = TaskStatus {
            task_id: task_id("t1"),
            state: TaskState::TaskRunning as i32,
            source: task_status::Source::Agent as i32,
            agent_id: agent_id(&agent.id),
            uuid: vec![7; 16],
            ..Default::default()
        };
        let update = StatusUpdate {
            framework_id: Some(FrameworkId {
                value: framework.id.clone(),
            }),
            status: Some(running),
        };
        cluster
            .agent_sends(&agent, agent_message::Message::StatusUpdate(update))
            .await;
        assert_eq!(
            framework.next_update().await.state(),
            TaskState::TaskRunning
        );

        cluster
            .call(&framework, reconcile(vec![named("t1", "")]))
            .await
            .expect("explicit RECONCILE");
        let status = framework.next_update().await;
        assert_reconciliation(&status, "t1", TaskState::TaskRunning);
        assert_eq!(status.agent_id, agent_id(&agent.id));
        assert!(status.uuid.is_empty(), "nothing to acknowledge");

        cluster
            .call(&framework, reconcile(Vec::new()))
            .await
            .expect("implicit RECONCILE");
        let status = framework.next_update().await;
        assert_reconciliation(&status, "t1", TaskState::TaskRunning);
        let more = framework.queued_events();
        assert!(more.is_empty(), "one task, one answer: {more:?}");
    }

    #[tokio::test]
    async fn implicit_reconciliation_with_no_tasks_answers_nothing() {
        let cluster = Cluster::start().await;
        let mut framework = cluster.subscribe("alpha").await;
        cluster
            .call(&framework, reconcile(Vec::new()))
            .await
            .expect("RECONCILE");
        let events = framework.queued_events();
        assert!(
            events.iter().all(|e| e.update.is_none()),
            "no UPDATE: {events:?}"
        );
    }
}
