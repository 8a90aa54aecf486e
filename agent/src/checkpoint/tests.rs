use cairn_api::internal::{
    CheckpointedExecutor, RunTask, StatusUpdate, StatusUpdateAcknowledgement,
};
use cairn_api::v1::{FrameworkId, FrameworkInfo, TaskId, TaskInfo, TaskState, TaskStatus};

use super::*;

fn fw(id: &str) -> FrameworkInfo {
    FrameworkInfo {
        id: Some(FrameworkId { value: id.into() }),
        name: format!("framework {id}"),
        ..Default::default()
    }
}

fn run(f: &str, task: &str) -> Record {
    Record::Task(RunTask {
        framework: Some(fw(f)),
        task: Some(TaskInfo {
            task_id: Some(TaskId { value: task.into() }),
            name: task.into(),
            ..Default::default()
        }),
        group: Vec::new(),
        container_id: format!("{task}-run"),
        executor_id: String::new(),
    })
}

fn update(f: &str, task: &str, state: TaskState, uuid: u8) -> Record {
    Record::Update(StatusUpdate {
        framework_id: Some(FrameworkId { value: f.into() }),
        status: Some(TaskStatus {
            task_id: Some(TaskId { value: task.into() }),
            state: state as i32,
            uuid: vec![uuid; 16],
            ..Default::default()
        }),
    })
}

fn ack(f: &str, task: &str, uuid: u8) -> Record {
    Record::Ack(StatusUpdateAcknowledgement {
        framework_id: Some(FrameworkId { value: f.into() }),
        task_id: Some(TaskId { value: task.into() }),
        uuid: vec![uuid; 16],
    })
}

fn limited(f: &str, task: &str, run: &str, port: u32) -> Record {
    Record::Limited(cairn_api::internal::TaskLimited {
        framework_id: Some(FrameworkId { value: f.into() }),
        task_id: Some(TaskId { value: task.into() }),
        container_id: run.into(),
        message: format!("Task listened on port {port}"),
        ports: vec![port],
    })
}

/// A compact, comparable view of the state.
fn summary(state: &AgentState) -> String {
    let mut tasks: Vec<String> = state
        .tasks
        .iter()
        .map(|((f, t), task)| {
            let limited = (task.limited.as_ref())
                .map(|l| format!("{} {:?}", l.message, l.ports))
                .unwrap_or_default();
            format!(
                "{f}/{t}:{}:{}:{limited}",
                task.state.as_str_name(),
                if task.launched { "launched" } else { "staged" }
            )
        })
        .collect();
    tasks.sort();
    let mut updates: Vec<String> = state
        .updates
        .all()
        .iter()
        .map(|u| {
            let s = u.status.as_ref().unwrap();
            format!("{}:{}", s.task_id.as_ref().unwrap().value, s.uuid[0])
        })
        .collect();
    updates.sort();
    let mut frameworks: Vec<&String> = state.frameworks.keys().collect();
    frameworks.sort();
    let mut executors: Vec<String> = state
        .executors
        .iter()
        .map(|(f, e)| format!("{f}:{}", e.pid))
        .collect();
    executors.sort();
    format!(
        "id={:?} fw={frameworks:?} ex={executors:?} tasks={tasks:?} updates={updates:?}",
        state.agent_id
    )
}

fn history() -> Vec<Record> {
    vec![
        Record::AgentId(cairn_api::v1::AgentId {
            value: "agent-1".into(),
        }),
        run("f1", "a"),
        run("f1", "b"),
        run("f2", "c"),
        Record::Executor(CheckpointedExecutor {
            framework_id: Some(FrameworkId { value: "f1".into() }),
            executor_id: None,
            pid: 4242,
            start_time: 99,
            cgroup: String::new(),
            hosted: false,
        }),
        Record::Launched(task_record(
            "f1",
            &TaskInfo {
                task_id: Some(TaskId { value: "a".into() }),
                ..Default::default()
            },
        )),
        update("f1", "a", TaskState::TaskRunning, 1),
        update("f1", "a", TaskState::TaskRunning, 1), // a duplicate: no effect
        update("f1", "a", TaskState::TaskFinished, 2),
        update("f1", "a", TaskState::TaskRunning, 3), // after terminal: no effect
        update("f1", "b", TaskState::TaskFailed, 4),
        ack("f1", "a", 1),
        ack("f1", "b", 4), // b is done: forgotten
        ack("f1", "a", 9), // stale: no effect
        Record::FrameworkRemoved(FrameworkId { value: "f2".into() }),
        // d runs, and every update it sent was acknowledged: nothing pending.
        run("f1", "d"),
        Record::Launched(task_record(
            "f1",
            &TaskInfo {
                task_id: Some(TaskId { value: "d".into() }),
                ..Default::default()
            },
        )),
        update("f1", "d", TaskState::TaskRunning, 5),
        ack("f1", "d", 5),
        // The agent killed d over ports; a limitation of another run is no one's.
        limited("f1", "d", "d-run", 8080),
        limited("f1", "d", "an-earlier-run", 9090),
    ]
}

#[test]
fn replay_rebuilds_exactly_the_live_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta/checkpoint.log");
    let mut live = Checkpoint::open(&path, false).unwrap();
    for (i, record) in history().into_iter().enumerate() {
        live.record(record);
        if i % 3 == 0 {
            live.commit().unwrap();
        }
    }
    live.commit().unwrap();
    let expected = summary(&live.state);
    assert!(
        expected.contains("f1/a:TASK_FINISHED:launched"),
        "{expected}"
    );
    assert!(!expected.contains("f1/b"), "{expected}");
    assert!(expected.contains("updates=[\"a:2\"]"), "{expected}");
    drop(live);
    let recovered = Checkpoint::open(&path, false).unwrap();
    assert_eq!(summary(&recovered.state), expected);
}

#[test]
fn compaction_keeps_the_state_and_a_reboot_starts_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint.log");
    let mut live = Checkpoint::open(&path, false).unwrap();
    for record in history() {
        live.record(record);
    }
    live.commit().unwrap();
    // Churn: many tasks that come and go leave nothing live.
    for i in 0..20_000u32 {
        let t = format!("churn-{i}");
        live.record(run("f1", &t));
        live.record(update(
            "f1",
            &t,
            TaskState::TaskFinished,
            (i % 200) as u8 + 10,
        ));
        live.record(ack("f1", &t, (i % 200) as u8 + 10));
        if i % 100 == 0 {
            live.commit().unwrap();
            live.maybe_compact().unwrap();
        }
    }
    live.commit().unwrap();
    let expected = summary(&live.state);
    assert!(
        expected.contains("f1/d:TASK_RUNNING:launched:Task listened on port 8080 [8080]"),
        "{expected}"
    );
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(
        size < COMPACT_MIN_BYTES * 2,
        "log never compacted: {size} bytes"
    );
    drop(live);
    assert_eq!(
        summary(&Checkpoint::open(&path, false).unwrap().state),
        expected
    );
    let fresh = Checkpoint::open(&path, true).unwrap();
    assert!(fresh.state.tasks.is_empty() && fresh.state.agent_id.is_none());
    assert!(
        Checkpoint::open(&path, false)
            .unwrap()
            .state
            .agent_id
            .is_none()
    );
}
