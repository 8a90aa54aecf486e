//! ACCEPT through a real leader: what launches, what is refused with which state,
//! reason and message, and that a refusal changes nothing.

use cairn_api::Resources;
use cairn_api::internal::master_message::Message as ToAgent;
use cairn_api::v1::{Call, OfferId, TaskState, TaskStatus, call, offer::operation, task_status};

use super::super::testing::{
    Agent, Cluster, Framework, accept_call, accept_offers, agent_id, command_task, task_id,
};

/// A cluster with one agent of `cpus:2;mem:512` and one framework holding its offer.
async fn with_offer() -> (Cluster, Agent, Framework, cairn_api::v1::Offer) {
    let cluster = Cluster::start().await;
    let agent = cluster.register_agent("cpus:2;mem:512").await;
    let mut framework = cluster.subscribe("alpha").await;
    let offers = framework.next_offers().await;
    assert_eq!(offers.len(), 1, "{offers:?}");
    let offer = offers.into_iter().next().expect("one offer");
    (cluster, agent, framework, offer)
}

fn revive() -> Call {
    Call {
        r#type: call::Type::Revive as i32,
        ..Default::default()
    }
}

fn assert_refused(status: &TaskStatus, task: &str, state: TaskState, reason: task_status::Reason) {
    assert_eq!(status.task_id, task_id(task), "{status:?}");
    assert_eq!(status.state(), state, "{status:?}");
    assert_eq!(status.reason(), reason, "{status:?}");
    assert_eq!(status.source(), task_status::Source::Master);
    assert!(status.uuid.is_empty(), "nothing to acknowledge");
}

#[tokio::test]
async fn accept_launches_a_task_on_the_offered_agent() {
    let (cluster, mut agent, framework, offer) = with_offer().await;
    cluster
        .call(
            &framework,
            accept_call(&offer, vec![command_task("t1", "cpus:1;mem:128")]),
        )
        .await
        .expect("ACCEPT");
    match agent.next_message().await {
        ToAgent::RunTask(run) => {
            let task = run.task.expect("the task");
            assert_eq!(task.task_id, task_id("t1"));
            assert_eq!(task.agent_id, agent_id(&agent.id), "the master sets it");
            assert_eq!(run.framework.map(|f| f.name), Some("alpha".into()));
        }
        other => panic!("expected RunTask, got {other:?}"),
    }
    let snapshot = cluster.snapshot().await;
    let tasks: Vec<_> = snapshot
        .tasks
        .iter()
        .map(|t| (t.id.as_str(), t.agent_id.as_str(), t.state.as_str()))
        .collect();
    assert_eq!(tasks, [("t1", agent.id.as_str(), "TASK_STAGING")]);
    assert_eq!(snapshot.outstanding_offers, 0, "the offer is used up");
    let used = Resources::parse(&snapshot.agents[0].used_resources).expect("resources text");
    assert_eq!(used, Resources::parse("cpus:1;mem:128").expect("resources"));
}

#[tokio::test]
async fn a_task_beyond_the_offer_gets_task_error_and_changes_nothing() {
    let (cluster, mut agent, mut framework, offer) = with_offer().await;
    cluster
        .call(
            &framework,
            accept_call(&offer, vec![command_task("big", "cpus:4;mem:128")]),
        )
        .await
        .expect("the ACCEPT itself is accepted");
    let status = framework.next_update().await;
    assert_refused(
        &status,
        "big",
        TaskState::TaskError,
        task_status::Reason::TaskInvalid,
    );
    let asked = Resources::parse("cpus:4;mem:128").expect("resources");
    let offered = Resources::from_proto(&offer.resources).expect("offer resources");
    assert_eq!(
        status.message,
        format!("task big needs {asked} (its resources {asked}); the offers have {offered} left")
    );
    assert!(
        agent.queued_messages().is_empty(),
        "nothing reached the agent"
    );
    let snapshot = cluster.snapshot().await;
    assert!(snapshot.tasks.is_empty(), "{:?}", snapshot.tasks);
    assert!(snapshot.completed_tasks.is_empty());
    assert_eq!(
        snapshot.agents[0].used_resources,
        Resources::new().to_string()
    );
    // The offer's resources went back whole: REVIVE offers them again.
    cluster.call(&framework, revive()).await.expect("REVIVE");
    let again = framework.next_offers().await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].resources, offer.resources);
}

#[tokio::test]
async fn an_unknown_offer_drops_the_whole_accept() {
    let (cluster, mut agent, mut framework, offer) = with_offer().await;
    let call = accept_offers(
        vec![
            offer.id.clone().expect("offer id"),
            OfferId {
                value: "no-such-offer".into(),
            },
        ],
        vec![operation::Type::Launch],
        vec![command_task("t1", "cpus:1;mem:128")],
    );
    cluster.call(&framework, call).await.expect("ACCEPT");
    let status = framework.next_update().await;
    assert_refused(
        &status,
        "t1",
        TaskState::TaskDropped,
        task_status::Reason::InvalidOffers,
    );
    assert_eq!(status.message, "offer no-such-offer is no longer valid");
    assert!(agent.queued_messages().is_empty());
    assert!(cluster.snapshot().await.tasks.is_empty());
    // The valid offer went back unfiltered: it is offered again at once.
    let again = framework.next_offers().await;
    assert_eq!(again[0].resources, offer.resources);
}

#[tokio::test]
async fn an_accept_without_offers_drops_its_tasks() {
    let (cluster, _agent, mut framework, _offer) = with_offer().await;
    let call = accept_offers(
        Vec::new(),
        vec![operation::Type::Launch],
        vec![command_task("t1", "cpus:1;mem:128")],
    );
    cluster.call(&framework, call).await.expect("ACCEPT");
    let status = framework.next_update().await;
    assert_refused(
        &status,
        "t1",
        TaskState::TaskDropped,
        task_status::Reason::InvalidOffers,
    );
    assert_eq!(status.message, "ACCEPT names no offers");
}

#[tokio::test]
async fn one_invalid_task_refuses_its_whole_group() {
    let (cluster, mut agent, mut framework, offer) = with_offer().await;
    let mut bad = command_task("t2", "cpus:0.5;mem:64");
    bad.command = None;
    let call = accept_offers(
        vec![offer.id.clone().expect("offer id")],
        vec![operation::Type::LaunchGroup],
        vec![command_task("t1", "cpus:0.5;mem:64"), bad],
    );
    cluster.call(&framework, call).await.expect("ACCEPT");
    for task in ["t1", "t2"] {
        let status = framework.next_update().await;
        assert_refused(
            &status,
            task,
            TaskState::TaskError,
            task_status::Reason::TaskGroupInvalid,
        );
        assert_eq!(
            status.message,
            "task group refused: task t2 has neither a command nor an executor"
        );
    }
    assert!(agent.queued_messages().is_empty());
    assert!(cluster.snapshot().await.tasks.is_empty());
}

#[tokio::test]
async fn a_valid_group_goes_to_the_agent_as_one_run_task_group() {
    let (cluster, mut agent, framework, offer) = with_offer().await;
    let call = accept_offers(
        vec![offer.id.clone().expect("offer id")],
        vec![operation::Type::LaunchGroup],
        vec![
            command_task("t1", "cpus:0.5;mem:64"),
            command_task("t2", "cpus:0.5;mem:64"),
        ],
    );
    cluster.call(&framework, call).await.expect("ACCEPT");
    match agent.next_message().await {
        ToAgent::RunTaskGroup(group) => {
            let ids: Vec<_> = group.tasks.iter().map(|t| t.task_id.clone()).collect();
            assert_eq!(ids, [task_id("t1"), task_id("t2")]);
        }
        other => panic!("expected RunTaskGroup, got {other:?}"),
    }
    assert_eq!(cluster.snapshot().await.tasks.len(), 2);
}

#[tokio::test]
async fn launches_share_the_offer_and_a_reused_task_id_is_refused() {
    let (cluster, mut agent, mut framework, offer) = with_offer().await;
    // t1 fits, the second t1 reuses its id, t3 asks for more than t1 left.
    cluster
        .call(
            &framework,
            accept_call(
                &offer,
                vec![
                    command_task("t1", "cpus:1.5;mem:128"),
                    command_task("t1", "cpus:0.1;mem:16"),
                    command_task("t3", "cpus:1;mem:128"),
                ],
            ),
        )
        .await
        .expect("ACCEPT");
    match agent.next_message().await {
        ToAgent::RunTask(run) => assert_eq!(run.task.and_then(|t| t.task_id), task_id("t1")),
        other => panic!("expected RunTask, got {other:?}"),
    }
    let reused = framework.next_update().await;
    assert_refused(
        &reused,
        "t1",
        TaskState::TaskError,
        task_status::Reason::TaskInvalid,
    );
    assert_eq!(reused.message, "task id t1 is already in use");
    let beyond = framework.next_update().await;
    assert_refused(
        &beyond,
        "t3",
        TaskState::TaskError,
        task_status::Reason::TaskInvalid,
    );
    assert!(
        beyond.message.starts_with("task t3 needs cpus:1;mem:128 "),
        "{}",
        beyond.message
    );
    assert!(agent.queued_messages().is_empty(), "only t1 launched");
    assert_eq!(cluster.snapshot().await.tasks.len(), 1);
}
