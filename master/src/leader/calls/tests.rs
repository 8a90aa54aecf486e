//! The scheduler calls, driven through a real leader: what each refuses, with which
//! status, and what each sends to the framework and the agent.

use cairn_api::internal::master_message::Message as ToAgent;
use cairn_api::v1::{Call, ExecutorId, Filters, FrameworkId, TaskState, call, task_status};

use super::super::testing::{
    Agent, Cluster, Framework, accept_call, agent_id, command_task, framework_info, task_id,
};
use crate::error::CallError;

fn of_type(kind: call::Type) -> Call {
    Call {
        r#type: kind as i32,
        ..Default::default()
    }
}

/// A cluster with one agent of `cpus:2;mem:512` and one framework holding its offer.
async fn with_offer() -> (Cluster, Agent, Framework, cairn_api::v1::Offer) {
    let cluster = Cluster::start().await;
    let agent = cluster.register_agent("cpus:2;mem:512").await;
    let mut framework = cluster.subscribe("alpha").await;
    let offer = framework.next_offers().await.remove(0);
    (cluster, agent, framework, offer)
}

/// As `with_offer`, with task `t1` launched (the agent has received its RunTask).
async fn with_task() -> (Cluster, Agent, Framework) {
    let (cluster, mut agent, framework, offer) = with_offer().await;
    cluster
        .call(
            &framework,
            accept_call(&offer, vec![command_task("t1", "cpus:1;mem:128")]),
        )
        .await
        .expect("ACCEPT");
    match agent.next_message().await {
        ToAgent::RunTask(_) => {}
        other => panic!("expected RunTask, got {other:?}"),
    }
    (cluster, agent, framework)
}

#[tokio::test]
async fn a_call_must_name_a_subscribed_framework_and_its_current_stream() {
    let cluster = Cluster::start().await;
    let framework = cluster.subscribe("alpha").await;
    let revive = of_type(call::Type::Revive);

    let anonymous = cluster
        .leader
        .ask(|reply| super::super::Input::Call {
            call: Box::new(revive.clone()),
            stream_id: Some(framework.stream_id.clone()),
            principal: None,
            reply,
        })
        .await
        .expect_err("no framework_id");
    assert!(
        matches!(anonymous, CallError::NoFrameworkId),
        "{anonymous:?}"
    );
    assert_eq!(anonymous.http_status().as_u16(), 400);

    let stranger = Framework {
        id: "not-subscribed".into(),
        stream_id: framework.stream_id.clone(),
        events: tokio::sync::mpsc::channel(1).1,
    };
    let unknown = cluster.call(&stranger, revive.clone()).await.unwrap_err();
    assert_eq!(
        unknown.to_string(),
        "framework not-subscribed is not subscribed"
    );
    assert_eq!(unknown.http_status().as_u16(), 404);

    let no_stream = cluster
        .call_on(None, &framework, revive.clone())
        .await
        .unwrap_err();
    assert_eq!(no_stream.to_string(), "call has no Mesos-Stream-Id");
    assert_eq!(no_stream.http_status().as_u16(), 400);

    let wrong = cluster
        .call_on(Some("other".into()), &framework, revive)
        .await
        .unwrap_err();
    assert_eq!(
        wrong.to_string(),
        format!(
            "stream id other is not framework {}'s current stream",
            framework.id
        )
    );
    assert_eq!(wrong.http_status().as_u16(), 403);
}

#[tokio::test]
async fn a_call_without_its_message_or_of_an_unsupported_type_is_invalid() {
    let cluster = Cluster::start().await;
    let framework = cluster.subscribe("alpha").await;
    for (kind, text) in [
        (call::Type::Accept, "ACCEPT without `accept`"),
        (call::Type::Decline, "DECLINE without `decline`"),
        (call::Type::Kill, "KILL without `kill`"),
        (call::Type::Acknowledge, "ACKNOWLEDGE without `acknowledge`"),
        (call::Type::Message, "MESSAGE without `message`"),
        (call::Type::Shutdown, "SHUTDOWN without `shutdown`"),
        (
            call::Type::UpdateFramework,
            "UPDATE_FRAMEWORK without update_framework.framework_info",
        ),
        (call::Type::Request, "call type REQUEST is not supported"),
    ] {
        let refused = cluster.call(&framework, of_type(kind)).await.unwrap_err();
        assert_eq!(refused.to_string(), text);
        assert_eq!(refused.http_status().as_u16(), 400, "{text}");
        assert_eq!(refused.grpc_code(), tonic::Code::InvalidArgument, "{text}");
    }
}

#[tokio::test]
async fn decline_filters_the_offered_agent_until_revive() {
    let (cluster, agent, mut framework, offer) = with_offer().await;
    let mut decline = of_type(call::Type::Decline);
    decline.decline = Some(call::Decline {
        offer_ids: vec![offer.id.clone().expect("offer id")],
        filters: Some(Filters {
            refuse_seconds: Some(3600.0),
        }),
    });
    cluster.call(&framework, decline).await.expect("DECLINE");
    assert_eq!(cluster.snapshot().await.outstanding_offers, 0);
    // The next allocation offers the new agent but not the declined one.
    let other = cluster.register_agent("cpus:1;mem:256").await;
    let offers = framework.next_offers().await;
    let agents: Vec<_> = offers.iter().map(|o| o.agent_id.clone()).collect();
    assert_eq!(agents, [agent_id(&other.id)]);
    // REVIVE clears the filter and allocates: the declined resources come back.
    cluster
        .call(&framework, of_type(call::Type::Revive))
        .await
        .expect("REVIVE");
    let again = framework.next_offers().await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].agent_id, agent_id(&agent.id));
    assert_eq!(again[0].resources, offer.resources);
    assert_ne!(again[0].id, offer.id, "a new offer");
}

#[tokio::test]
async fn suppress_stops_offers_until_revive() {
    let cluster = Cluster::start().await;
    let mut framework = cluster.subscribe("alpha").await;
    cluster
        .call(&framework, of_type(call::Type::Suppress))
        .await
        .expect("SUPPRESS");
    let _agent = cluster.register_agent("cpus:1;mem:256").await;
    assert_eq!(
        cluster.snapshot().await.outstanding_offers,
        0,
        "a suppressed framework is offered nothing"
    );
    cluster
        .call(&framework, of_type(call::Type::Revive))
        .await
        .expect("REVIVE");
    assert_eq!(framework.next_offers().await.len(), 1);
}

#[tokio::test]
async fn kill_of_an_unknown_task_answers_task_lost() {
    let cluster = Cluster::start().await;
    let mut framework = cluster.subscribe("alpha").await;
    let mut kill = of_type(call::Type::Kill);
    kill.kill = Some(call::Kill {
        task_id: task_id("ghost"),
        ..Default::default()
    });
    cluster.call(&framework, kill).await.expect("KILL");
    let status = framework.next_update().await;
    assert_eq!(status.task_id, task_id("ghost"));
    assert_eq!(status.state(), TaskState::TaskLost);
    assert_eq!(status.reason(), task_status::Reason::Reconciliation);
    assert_eq!(status.message, "task is unknown to the master");
}

#[tokio::test]
async fn kill_of_a_launched_task_reaches_its_agent() {
    let (cluster, mut agent, framework) = with_task().await;
    let mut kill = of_type(call::Type::Kill);
    kill.kill = Some(call::Kill {
        task_id: task_id("t1"),
        ..Default::default()
    });
    cluster.call(&framework, kill).await.expect("KILL");
    match agent.next_message().await {
        ToAgent::KillTask(k) => {
            assert_eq!(k.task_id, task_id("t1"));
            assert_eq!(k.framework_id.map(|f| f.value), Some(framework.id.clone()));
        }
        other => panic!("expected KillTask, got {other:?}"),
    }
}

#[tokio::test]
async fn acknowledge_needs_a_uuid_and_reaches_the_agent() {
    let (cluster, mut agent, framework) = with_task().await;
    let on_agent = agent_id(&agent.id);
    let ack = |uuid: Vec<u8>| {
        let mut c = of_type(call::Type::Acknowledge);
        c.acknowledge = Some(call::Acknowledge {
            agent_id: on_agent.clone(),
            task_id: task_id("t1"),
            uuid,
        });
        c
    };
    let refused = cluster.call(&framework, ack(vec![1; 4])).await.unwrap_err();
    assert!(
        matches!(refused, CallError::BadAcknowledgementUuid { len: 4, ref task_id, .. } if task_id == "t1"),
        "{refused:?}"
    );
    assert_eq!(refused.to_string(), "acknowledge.uuid must be 16 bytes");
    assert!(agent.queued_messages().is_empty());

    cluster
        .call(&framework, ack(vec![9; 16]))
        .await
        .expect("ACKNOWLEDGE");
    match agent.next_message().await {
        ToAgent::Ack(a) => {
            assert_eq!(a.task_id, task_id("t1"));
            assert_eq!(a.uuid, vec![9; 16]);
        }
        other => panic!("expected an acknowledgement, got {other:?}"),
    }
}

#[tokio::test]
async fn message_reaches_only_a_known_executor() {
    let (cluster, mut agent, framework) = with_task().await;
    let ours = cairn_api::ids::executor_id_for(&FrameworkId {
        value: framework.id.clone(),
    });
    let on_agent = agent_id(&agent.id);
    let message = |executor: ExecutorId, data: Vec<u8>| {
        let mut c = of_type(call::Type::Message);
        c.message = Some(call::Message {
            agent_id: on_agent.clone(),
            executor_id: Some(executor),
            data,
        });
        c
    };
    let other = ExecutorId {
        value: "someone-else".into(),
    };
    let refused = cluster
        .call(&framework, message(other, b"hi".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        format!(
            "framework {} has no executor someone-else on agent {}",
            framework.id, agent.id
        )
    );
    assert_eq!(refused.http_status().as_u16(), 404);

    let too_big = cluster
        .call(&framework, message(ours.clone(), vec![0; (1 << 20) + 1]))
        .await
        .unwrap_err();
    assert_eq!(
        too_big.to_string(),
        "message of 1048577 bytes exceeds the 1048576-byte limit"
    );
    assert!(agent.queued_messages().is_empty(), "nothing was sent");

    cluster
        .call(&framework, message(ours, b"hi".to_vec()))
        .await
        .expect("MESSAGE");
    match agent.next_message().await {
        ToAgent::FrameworkMessage(m) => assert_eq!(m.data, b"hi"),
        other => panic!("expected a framework message, got {other:?}"),
    }
}

#[tokio::test]
async fn shutdown_of_the_framework_executor_shuts_the_framework_down_there() {
    let (cluster, mut agent, framework) = with_task().await;
    let mut shutdown = of_type(call::Type::Shutdown);
    shutdown.shutdown = Some(call::Shutdown {
        executor_id: Some(cairn_api::ids::executor_id_for(&FrameworkId {
            value: framework.id.clone(),
        })),
        agent_id: agent_id(&agent.id),
    });
    cluster.call(&framework, shutdown).await.expect("SHUTDOWN");
    match agent.next_message().await {
        ToAgent::ShutdownFramework(s) => {
            assert_eq!(s.framework_id.map(|f| f.value), Some(framework.id.clone()));
        }
        other => panic!("expected ShutdownFramework, got {other:?}"),
    }
}

#[tokio::test]
async fn update_framework_keeps_the_id_and_records_the_new_role() {
    let cluster = Cluster::start().await;
    let framework = cluster.subscribe("alpha").await;
    let update = |id: &str, role: &str| {
        let mut info = framework_info("alpha");
        info.id = Some(FrameworkId { value: id.into() });
        info.role = role.into();
        let mut c = of_type(call::Type::UpdateFramework);
        c.update_framework = Some(call::UpdateFramework {
            framework_info: Some(info),
        });
        c
    };
    let refused = cluster
        .call(&framework, update("another", "eng"))
        .await
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        "update_framework.framework_info.id differs from framework_id"
    );
    assert_eq!(cluster.snapshot().await.frameworks[0].role, "*");

    cluster
        .call(&framework, update(&framework.id, "eng"))
        .await
        .expect("UPDATE_FRAMEWORK");
    let snapshot = cluster.snapshot().await;
    assert_eq!(snapshot.frameworks.len(), 1);
    assert_eq!(snapshot.frameworks[0].id, framework.id);
    assert_eq!(snapshot.frameworks[0].role, "eng");

    // Its user (whom agents run its tasks as) and its role and roles together: no.
    let mut as_root = update(&framework.id, "eng");
    let info = as_root
        .update_framework
        .as_mut()
        .unwrap()
        .framework_info
        .as_mut()
        .unwrap();
    info.user = "root".into();
    let refused = cluster.call(&framework, as_root).await.unwrap_err();
    assert_eq!(
        refused.to_string(),
        "Updating 'FrameworkInfo.user' is unsupported; attempted to update from '' to 'root'"
    );
    let mut both = update(&framework.id, "eng");
    let info = both
        .update_framework
        .as_mut()
        .unwrap()
        .framework_info
        .as_mut()
        .unwrap();
    info.roles = vec!["prod".into()];
    let refused = cluster.call(&framework, both).await.unwrap_err();
    assert!(matches!(refused, CallError::RoleAndRoles), "{refused}");
    let snapshot = cluster.snapshot().await;
    assert_eq!(
        (
            snapshot.frameworks[0].role.as_str(),
            snapshot.frameworks[0].user.as_str()
        ),
        ("eng", "")
    );
}

#[tokio::test]
async fn a_failover_may_not_change_the_user() {
    let cluster = Cluster::start().await;
    let framework = cluster.subscribe("alpha").await;
    let mut failover = framework_info("alpha");
    failover.id = Some(FrameworkId {
        value: framework.id.clone(),
    });
    failover.user = "root".into();
    let refused = cluster.try_subscribe(failover).await.err();
    assert!(
        matches!(
            &refused,
            Some(CallError::ImmutableChanged { field: "user", .. })
        ),
        "{:?}",
        refused.map(|e| e.to_string())
    );
}

#[tokio::test]
async fn teardown_removes_the_framework_and_kills_its_tasks() {
    let (cluster, mut agent, framework) = with_task().await;
    cluster
        .call(&framework, of_type(call::Type::Teardown))
        .await
        .expect("TEARDOWN");
    match agent.next_message().await {
        ToAgent::ShutdownFramework(s) => {
            assert_eq!(s.framework_id.map(|f| f.value), Some(framework.id.clone()));
        }
        other => panic!("expected ShutdownFramework, got {other:?}"),
    }
    let snapshot = cluster.snapshot().await;
    assert!(snapshot.frameworks.is_empty(), "{:?}", snapshot.frameworks);
    assert!(snapshot.tasks.is_empty(), "{:?}", snapshot.tasks);
    let killed: Vec<_> = snapshot
        .completed_tasks
        .iter()
        .map(|t| (t.id.as_str(), t.state.as_str()))
        .collect();
    assert_eq!(killed, [("t1", "TASK_KILLED")]);
    let refused = cluster
        .call(&framework, of_type(call::Type::Revive))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, CallError::FrameworkNotSubscribed { .. }),
        "{refused:?}"
    );
}
