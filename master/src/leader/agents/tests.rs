//! What agents may say about tasks, through a real leader.

use cairn_api::internal::{StatusUpdate, agent_message};
use cairn_api::v1::{FrameworkId, TaskState, TaskStatus, task_status};

use super::super::testing::{Agent, Cluster, Framework, agent_id, command_task, task_id};

fn update(
    agent: &Agent,
    framework: &Framework,
    task: &str,
    state: TaskState,
    uuid: u8,
) -> agent_message::Message {
    agent_message::Message::StatusUpdate(StatusUpdate {
        framework_id: Some(FrameworkId {
            value: framework.id.clone(),
        }),
        status: Some(TaskStatus {
            task_id: task_id(task),
            state: state as i32,
            source: task_status::Source::Executor as i32,
            agent_id: agent_id(&agent.id),
            uuid: vec![uuid; 16],
            ..Default::default()
        }),
    })
}

/// An agent reporting on a task another agent runs is not heard: the framework sees
/// only the real agent's updates, and the task's state is the real agent's word.
#[tokio::test]
async fn an_agent_cannot_report_on_another_agent_s_task() {
    let cluster = Cluster::start().await;
    let runner = cluster.register_agent("cpus:2;mem:512").await;
    let mut framework = cluster.subscribe("alpha").await;
    let offer = framework.next_offers().await.remove(0);
    assert_eq!(offer.agent_id, agent_id(&runner.id));
    cluster
        .call(
            &framework,
            super::super::testing::accept_call(&offer, vec![command_task("t", "cpus:1;mem:64")]),
        )
        .await
        .expect("ACCEPT");
    let liar = cluster.register_agent("cpus:2;mem:512").await;
    cluster
        .agent_sends(
            &liar,
            update(&liar, &framework, "t", TaskState::TaskFinished, 1),
        )
        .await;
    cluster
        .agent_sends(
            &runner,
            update(&runner, &framework, "t", TaskState::TaskRunning, 2),
        )
        .await;
    let heard = framework.next_update().await;
    assert_eq!(
        (heard.state(), heard.uuid),
        (TaskState::TaskRunning, vec![2; 16]),
        "the first update the framework hears is the runner's"
    );
    let snapshot = cluster.snapshot().await;
    let t = snapshot.tasks.iter().find(|t| t.id == "t").expect("task t");
    assert_eq!(t.state, TaskState::TaskRunning.as_str_name());
}
