//! Charging through a real leader: an agent reporting its figures, tasks launched
//! from its offers, and the agent's updates and executor exits giving back what was
//! charged.

use cairn_api::Resources;
use cairn_api::charges::AgentCharges;
use cairn_api::internal::master_message::Message as ToAgent;
use cairn_api::internal::{ExecutorExited, RunningExecutor, StatusUpdate, agent_message};
use cairn_api::v1::{
    Call, ExecutorId, ExecutorInfo, FrameworkId, TaskInfo, TaskState, TaskStatus, call, task_status,
};

use super::super::testing::{
    Agent, Cluster, Framework, accept_call, agent_info, command_task, quiet_config,
};

/// Figures like a real agent's: 0.1 cpu, 64 MB and 1 GB by default, executors of
/// 0.1 cpu and 256 MB, 4 MB per hosted task.
fn charges() -> AgentCharges {
    AgentCharges {
        task_defaults: res("cpus:0.1;mem:64;disk:1024"),
        executor_overhead: res("cpus:0.1;mem:256"),
        hosted_task_overhead: res("mem:4"),
        switch_user: true,
    }
}

fn res(text: &str) -> Resources {
    Resources::parse(text).expect("test resources")
}

async fn agent_with(cluster: &Cluster, resources: &str, running: Vec<RunningExecutor>) -> Agent {
    cluster
        .try_register_reporting(agent_info(resources), Some(charges().to_proto()), running)
        .await
        .expect("register agent")
}

async fn used(cluster: &Cluster) -> Resources {
    res(&cluster.snapshot().await.agents[0].used_resources)
}

async fn launch(
    cluster: &Cluster,
    framework: &mut Framework,
    agent: &mut Agent,
    tasks: Vec<TaskInfo>,
) {
    let n = tasks.len();
    let offer = framework.next_offers().await.remove(0);
    cluster
        .call(framework, accept_call(&offer, tasks))
        .await
        .expect("ACCEPT");
    for _ in 0..n {
        assert!(matches!(agent.next_message().await, ToAgent::RunTask(_)));
    }
}

async fn finish(cluster: &Cluster, agent: &Agent, framework: &mut Framework, task: &str) {
    let status = TaskStatus {
        task_id: super::super::testing::task_id(task),
        state: TaskState::TaskFinished as i32,
        source: task_status::Source::Executor as i32,
        uuid: vec![1],
        ..Default::default()
    };
    let update = StatusUpdate {
        framework_id: Some(FrameworkId {
            value: framework.id.clone(),
        }),
        status: Some(status),
    };
    cluster
        .agent_sends(agent, agent_message::Message::StatusUpdate(update))
        .await;
    assert_eq!(
        framework.next_update().await.state(),
        TaskState::TaskFinished
    );
}

fn revive() -> Call {
    Call {
        r#type: call::Type::Revive as i32,
        ..Default::default()
    }
}

#[tokio::test]
async fn unnamed_resources_and_a_new_executor_come_out_of_the_offer() {
    let cluster = Cluster::start().await;
    let mut agent = agent_with(&cluster, "cpus:2;mem:1024;disk:4096", Vec::new()).await;
    let mut framework = cluster.subscribe("alpha").await;
    launch(
        &cluster,
        &mut framework,
        &mut agent,
        vec![command_task("a", "cpus:1")],
    )
    .await;
    // 1 cpu named; 64 MB and 1 GB by default, 4 MB hosted; the executor's 0.1 and 256.
    assert_eq!(used(&cluster).await, res("cpus:1.1;mem:324;disk:1024"));
    // What is left is offered; the second task joins the running executor.
    cluster.call(&framework, revive()).await.expect("REVIVE");
    let offer = framework.next_offers().await.remove(0);
    assert_eq!(
        Resources::from_proto(&offer.resources).expect("offer"),
        res("cpus:0.9;mem:700;disk:3072")
    );
    let second = command_task("b", "cpus:0.5;mem:10;disk:10");
    cluster
        .call(&framework, accept_call(&offer, vec![second]))
        .await
        .expect("ACCEPT");
    assert!(matches!(agent.next_message().await, ToAgent::RunTask(_)));
    assert_eq!(used(&cluster).await, res("cpus:1.6;mem:338;disk:1034"));
    // Mesos' task view: the task's own resources.
    let snapshot = cluster.snapshot().await;
    let a = snapshot.tasks.iter().find(|t| t.id == "a").expect("task a");
    assert_eq!(res(&a.resources), res("cpus:1"));
}

#[tokio::test]
async fn a_task_that_fits_but_its_executor_does_not_is_refused_and_changes_nothing() {
    let cluster = Cluster::start().await;
    let mut agent = agent_with(&cluster, "cpus:1;mem:512;disk:4096", Vec::new()).await;
    let mut framework = cluster.subscribe("alpha").await;
    let offer = framework.next_offers().await.remove(0);
    cluster
        .call(
            &framework,
            accept_call(&offer, vec![command_task("t", "cpus:1;mem:100")]),
        )
        .await
        .expect("the ACCEPT itself is accepted");
    let status = framework.next_update().await;
    assert_eq!(status.state(), TaskState::TaskError);
    assert_eq!(status.reason(), task_status::Reason::TaskInvalid);
    let executor = format!("cairn-executor-{}", framework.id);
    assert_eq!(
        status.message,
        format!(
            "task t needs cpus:1.1;disk:1024;mem:360 (its resources cpus:1;mem:100 with the \
             agent's defaults and per-task overhead, a new executor {executor} \
             (cpus:0.1;mem:256)); the offers have cpus:1;disk:4096;mem:512 left"
        )
    );
    assert!(
        agent.queued_messages().is_empty(),
        "nothing reached the agent"
    );
    assert_eq!(used(&cluster).await, Resources::new());
}

#[tokio::test]
async fn an_executor_is_held_until_the_agent_says_it_exited() {
    let cluster = Cluster::start().await;
    let mut agent = agent_with(&cluster, "cpus:2;mem:1024;disk:4096", Vec::new()).await;
    let mut framework = cluster.subscribe("alpha").await;
    let task = command_task("a", "cpus:1;mem:100;disk:100");
    launch(&cluster, &mut framework, &mut agent, vec![task]).await;
    finish(&cluster, &agent, &mut framework, "a").await;
    assert_eq!(
        used(&cluster).await,
        res("cpus:0.1;mem:256"),
        "the executor lives on"
    );
    let exited = ExecutorExited {
        framework_id: Some(FrameworkId {
            value: framework.id.clone(),
        }),
        executor_id: Some(ExecutorId {
            value: format!("cairn-executor-{}", framework.id),
        }),
        status: Some(0),
        message: "exit status: 0".into(),
        idle: false,
    };
    cluster
        .agent_sends(&agent, agent_message::Message::ExecutorExited(exited))
        .await;
    assert_eq!(used(&cluster).await, Resources::new());
    cluster.call(&framework, revive()).await.expect("REVIVE");
    let offer = framework.next_offers().await.remove(0);
    assert_eq!(
        Resources::from_proto(&offer.resources).expect("offer"),
        res("cpus:2;mem:1024;disk:4096"),
        "all of it is offered again"
    );
}

#[tokio::test]
async fn a_custom_executor_is_charged_once_until_its_process_ends() {
    let cluster = Cluster::start().await;
    let mut agent = agent_with(&cluster, "cpus:4;mem:2048;disk:4096", Vec::new()).await;
    let mut framework = cluster.subscribe("alpha").await;
    let custom = |id: &str| TaskInfo {
        command: None,
        executor: Some(ExecutorInfo {
            executor_id: Some(ExecutorId { value: "c".into() }),
            resources: res("cpus:0.5;mem:100;disk:10").to_proto(),
            command: Some(Default::default()),
            ..Default::default()
        }),
        ..command_task(id, "cpus:1;mem:10;disk:10")
    };
    launch(
        &cluster,
        &mut framework,
        &mut agent,
        vec![custom("a"), custom("b")],
    )
    .await;
    // Two tasks (1, 14, 10 each), one custom executor, one executor process.
    assert_eq!(used(&cluster).await, res("cpus:2.6;mem:384;disk:30"));
    finish(&cluster, &agent, &mut framework, "a").await;
    assert_eq!(used(&cluster).await, res("cpus:1.6;mem:370;disk:20"));
    finish(&cluster, &agent, &mut framework, "b").await;
    assert_eq!(
        used(&cluster).await,
        res("cpus:0.6;mem:356;disk:10"),
        "the process and the custom executor it hosts"
    );
    cluster.agent_sends(&agent, exited(&framework, false)).await;
    assert_eq!(
        used(&cluster).await,
        Resources::new(),
        "gone with its process"
    );
}

#[tokio::test]
async fn a_reregistering_agent_brings_its_executors_back_and_teardown_frees_them() {
    let cluster = Cluster::start().await;
    let mut framework = cluster.subscribe("alpha").await;
    let running = vec![RunningExecutor {
        framework_id: Some(FrameworkId {
            value: framework.id.clone(),
        }),
        executor_id: Some(ExecutorId {
            value: format!("cairn-executor-{}", framework.id),
        }),
    }];
    let _agent = agent_with(&cluster, "cpus:2;mem:1024;disk:4096", running).await;
    assert_eq!(used(&cluster).await, res("cpus:0.1;mem:256"));
    let offer = framework.next_offers().await.remove(0);
    assert_eq!(
        Resources::from_proto(&offer.resources).expect("offer"),
        res("cpus:1.9;mem:768;disk:4096")
    );
    let teardown = Call {
        r#type: call::Type::Teardown as i32,
        ..Default::default()
    };
    cluster.call(&framework, teardown).await.expect("TEARDOWN");
    assert_eq!(used(&cluster).await, Resources::new());
}

#[tokio::test]
async fn an_idle_executor_is_shut_down_and_a_late_exit_frees_nothing_of_its_successor() {
    let config = super::super::LeaderConfig {
        executor_idle_timeout: std::time::Duration::ZERO,
        ..quiet_config()
    };
    let cluster = Cluster::start_with(config).await;
    let mut agent = agent_with(&cluster, "cpus:2;mem:1024;disk:4096", Vec::new()).await;
    let mut framework = cluster.subscribe("alpha").await;
    let task = command_task("a", "cpus:1;mem:100;disk:100");
    launch(&cluster, &mut framework, &mut agent, vec![task]).await;
    finish(&cluster, &agent, &mut framework, "a").await;
    let executor = format!("cairn-executor-{}", framework.id);
    // Idle past the timeout: the agent is told to stop it, and its charge is free.
    match agent.next_message().await {
        ToAgent::ShutdownExecutor(s) => {
            assert!(s.idle, "{s:?}");
            assert_eq!(s.executor_id.map(|e| e.value), Some(executor.clone()));
        }
        other => panic!("expected ShutdownExecutor, got {other:?}"),
    }
    assert_eq!(used(&cluster).await, Resources::new());
    // A task launched now is charged a new executor.
    cluster.call(&framework, revive()).await.expect("REVIVE");
    let task = command_task("b", "cpus:1;mem:100;disk:100");
    launch(&cluster, &mut framework, &mut agent, vec![task]).await;
    assert_eq!(used(&cluster).await, res("cpus:1.1;mem:360;disk:100"));
    // The old process's exit, after its idle shutdown, frees nothing of it.
    let exited = ExecutorExited {
        framework_id: Some(FrameworkId {
            value: framework.id.clone(),
        }),
        executor_id: Some(ExecutorId { value: executor }),
        status: Some(0),
        message: "exit status: 0".into(),
        idle: true,
    };
    cluster
        .agent_sends(&agent, agent_message::Message::ExecutorExited(exited))
        .await;
    assert_eq!(used(&cluster).await, res("cpus:1.1;mem:360;disk:100"));
}

fn exited(framework: &Framework, idle: bool) -> agent_message::Message {
    agent_message::Message::ExecutorExited(ExecutorExited {
        framework_id: Some(FrameworkId {
            value: framework.id.clone(),
        }),
        executor_id: Some(ExecutorId {
            value: format!("cairn-executor-{}", framework.id),
        }),
        status: Some(137),
        message: "killed by signal 9".into(),
        idle,
    })
}

/// A process that crashes with tasks the master still counts keeps its charge until
/// their updates arrive; a task launched in between starts a successor, which the
/// charge then stands for (it is not given back under it).
#[tokio::test]
async fn a_crashed_executor_is_charged_until_its_tasks_end_and_then_for_its_successor() {
    let cluster = Cluster::start().await;
    let mut agent = agent_with(&cluster, "cpus:3;mem:2048;disk:4096", Vec::new()).await;
    let mut framework = cluster.subscribe("alpha").await;
    let task = |id: &str| command_task(id, "cpus:1;mem:100;disk:100");
    launch(&cluster, &mut framework, &mut agent, vec![task("a")]).await;
    let one = res("cpus:1.1;mem:360;disk:100");
    assert_eq!(used(&cluster).await, one);
    cluster.agent_sends(&agent, exited(&framework, false)).await;
    assert_eq!(used(&cluster).await, one, "task a still counts on it");
    finish(&cluster, &agent, &mut framework, "a").await;
    assert_eq!(
        used(&cluster).await,
        Resources::new(),
        "gone with its last task"
    );
    match agent.next_message().await {
        ToAgent::ShutdownExecutor(shutdown) => assert!(shutdown.idle, "{shutdown:?}"),
        other => panic!("expected an idle ShutdownExecutor, got {other:?}"),
    }
    // Again, with a task launched between the crash and the old task's end.
    cluster.call(&framework, revive()).await.expect("REVIVE");
    launch(&cluster, &mut framework, &mut agent, vec![task("b")]).await;
    cluster.agent_sends(&agent, exited(&framework, false)).await;
    cluster.call(&framework, revive()).await.expect("REVIVE");
    launch(&cluster, &mut framework, &mut agent, vec![task("c")]).await;
    let two = res("cpus:2.1;mem:464;disk:200");
    assert_eq!(used(&cluster).await, two, "c's successor is charged once");
    finish(&cluster, &agent, &mut framework, "b").await;
    assert_eq!(used(&cluster).await, one, "the successor keeps the charge");
}

#[tokio::test]
async fn a_custom_executor_id_named_with_another_executor_info_is_refused() {
    let cluster = Cluster::start().await;
    let mut agent = agent_with(&cluster, "cpus:4;mem:2048;disk:4096", Vec::new()).await;
    let mut framework = cluster.subscribe("alpha").await;
    let custom = |id: &str, cpus: f64| TaskInfo {
        command: None,
        executor: Some(ExecutorInfo {
            executor_id: Some(ExecutorId { value: "c".into() }),
            resources: res(&format!("cpus:{cpus};mem:100;disk:10")).to_proto(),
            command: Some(Default::default()),
            ..Default::default()
        }),
        ..command_task(id, "cpus:0.5;mem:10;disk:10")
    };
    let refusal = |task: &str| {
        format!(
            "task {task}: ExecutorInfo is not compatible with existing ExecutorInfo with \
             same ExecutorID (c)"
        )
    };
    // In one ACCEPT: the first defines it, the second differs and is refused.
    let offer = framework.next_offers().await.remove(0);
    let tasks = vec![custom("a", 0.5), custom("b", 0.25)];
    cluster
        .call(&framework, accept_call(&offer, tasks))
        .await
        .expect("ACCEPT");
    let status = framework.next_update().await;
    assert_eq!(
        (status.state(), status.reason(), status.message.clone()),
        (
            TaskState::TaskError,
            task_status::Reason::TaskInvalid,
            refusal("b")
        )
    );
    match agent.next_message().await {
        ToAgent::RunTask(run) => assert_eq!(run.task.expect("task").name, "a"),
        other => panic!("expected RunTask, got {other:?}"),
    }
    let held = used(&cluster).await;
    // Against the running one, in a later ACCEPT: refused, nothing charged.
    cluster.call(&framework, revive()).await.expect("REVIVE");
    let offer = framework.next_offers().await.remove(0);
    cluster
        .call(&framework, accept_call(&offer, vec![custom("d", 1.0)]))
        .await
        .expect("ACCEPT");
    let status = framework.next_update().await;
    assert_eq!(status.message, refusal("d"));
    assert!(
        agent.queued_messages().is_empty(),
        "nothing reached the agent"
    );
    assert_eq!(used(&cluster).await, held);
}
