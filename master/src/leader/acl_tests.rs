//! The leader enforces `--acls`: a refused SUBSCRIBE, UPDATE_FRAMEWORK, launch or
//! operator write is answered with why, and changes nothing.

use std::sync::Arc;

use cairn_api::internal::RoleWeight;
use cairn_api::v1::{CommandInfo, ContainerInfo, TaskState, container_info, task_status};

use super::testing::{Cluster, accept_call, command_task, framework_info, quiet_config};
use super::{Input, OperatorCall};
use crate::authz::Acls;
use crate::error::CallError;

const ACLS: &str = r#"{
  "register_frameworks": [
    {"principals": {"values": ["alice"]}, "roles": {"values": ["prod"]}},
    {"principals": {"type": "NONE"}, "roles": {"values": ["prod"]}}
  ],
  "run_tasks": [
    {"principals": {"values": ["alice"]}, "users": {"values": ["nobody"]}},
    {"principals": {"type": "NONE"}, "users": {"type": "ANY"}}
  ],
  "launch_docker": [{"principals": {"type": "NONE"}, "users": {"type": "ANY"}}],
  "teardown_frameworks": [
    {"principals": {"values": ["ops"]}, "framework_principals": {"type": "ANY"}},
    {"principals": {"type": "NONE"}, "framework_principals": {"type": "ANY"}}
  ],
  "update_weights": [
    {"principals": {"values": ["ops"]}, "roles": {"type": "ANY"}},
    {"principals": {"type": "NONE"}, "roles": {"type": "ANY"}}
  ]
}"#;

async fn cluster() -> Cluster {
    let acls = Acls::parse(ACLS).expect("the test's ACLs");
    let mut config = quiet_config();
    config.acls = Arc::new(acls);
    Cluster::start_with(config).await
}

fn info(name: &str, principal: &str, role: &str) -> cairn_api::v1::FrameworkInfo {
    let mut info = framework_info(name);
    info.principal = principal.into();
    info.role = role.into();
    info.user = "nobody".into();
    info
}

#[tokio::test]
async fn a_role_the_principal_may_not_register_under_is_refused_and_nothing_recorded() {
    let cluster = cluster().await;
    let refused = cluster.try_subscribe(info("b", "bob", "prod")).await.err();
    let Some(CallError::Unauthorized(refused)) = refused else {
        panic!("bob subscribed under prod: {refused:?}");
    };
    assert_eq!(refused.action, "register_frameworks");
    assert!(cluster.snapshot().await.frameworks.is_empty());
    cluster
        .try_subscribe(info("a", "alice", "prod"))
        .await
        .expect("alice may register under prod");
    cluster
        .try_subscribe(info("b", "bob", "dev"))
        .await
        .expect("no rule is about dev");
}

#[tokio::test]
async fn a_task_run_as_a_user_not_granted_is_refused_with_task_unauthorized() {
    let cluster = cluster().await;
    cluster.register_agent("cpus:4;mem:1024").await;
    let mut alice = cluster
        .try_subscribe(info("a", "alice", "dev"))
        .await
        .unwrap();
    let offer = alice.next_offers().await.remove(0);
    let mut as_root = command_task("root", "cpus:0.5;mem:64");
    as_root.command = Some(CommandInfo {
        value: Some("true".into()),
        user: Some("root".into()),
        ..Default::default()
    });
    let mut docker = command_task("docker", "cpus:0.5;mem:64");
    docker.container = Some(ContainerInfo {
        r#type: container_info::Type::Docker as i32,
        ..Default::default()
    });
    let tasks = vec![command_task("ok", "cpus:0.5;mem:64"), as_root, docker];
    cluster
        .call(&alice, accept_call(&offer, tasks))
        .await
        .expect("ACCEPT");
    let mut refused = Vec::new();
    for _ in 0..2 {
        let status = alice.next_update().await;
        assert_eq!(status.state(), TaskState::TaskError, "{status:?}");
        assert_eq!(status.reason(), task_status::Reason::TaskUnauthorized);
        refused.push((status.task_id.unwrap().value, status.message));
    }
    refused.sort();
    assert_eq!(refused[0].0, "docker");
    assert!(refused[0].1.contains("launch_docker"), "{refused:?}");
    assert_eq!(refused[1].0, "root");
    assert!(refused[1].1.contains("run_tasks root"), "{refused:?}");
    let snapshot = cluster.snapshot().await;
    let launched: Vec<&str> = snapshot.tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(launched, ["ok"]);
}

#[tokio::test]
async fn operator_writes_need_their_grant_and_a_refusal_changes_nothing() {
    let cluster = cluster().await;
    let alice = cluster
        .try_subscribe(info("a", "alice", "dev"))
        .await
        .unwrap();
    let operator = |call, principal: &str| {
        let principal = Some(principal.to_owned());
        cluster.leader.ask(move |reply| Input::Operator {
            call,
            principal,
            reply,
        })
    };
    let teardown = || OperatorCall::Teardown {
        framework_id: alice.id.clone(),
    };
    let weights = || {
        OperatorCall::UpdateWeights(vec![RoleWeight {
            role: "dev".into(),
            weight: 3.0,
        }])
    };
    for (call, name) in [
        (teardown(), "teardown_frameworks"),
        (weights(), "update_weights"),
    ] {
        match operator(call, "bob").await {
            Err(CallError::Unauthorized(refused)) => assert_eq!(refused.action, name),
            other => panic!("bob's {name}: {other:?}"),
        }
    }
    let snapshot = cluster.snapshot().await;
    assert_eq!(snapshot.frameworks.len(), 1, "the framework is still there");
    assert!(
        snapshot.roles.iter().all(|r| r.weight == 1.0),
        "{:?}",
        snapshot.roles
    );
    operator(weights(), "ops").await.expect("ops may weigh");
    operator(teardown(), "ops")
        .await
        .expect("ops may tear down");
    assert!(cluster.snapshot().await.frameworks.is_empty());
}
