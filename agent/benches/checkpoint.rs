//! The status update manager's write path: status updates recorded in the checkpoint
//! and synced, one sync per update (the baseline) against group commit at the batch
//! sizes the agent's actor reaches under load. On the real disk the work dir lives on.
//!
//! ```text
//! cargo bench --workspace --profile dev --bench checkpoint [-- DIR]
//! ```

use std::time::Instant;

use cairn_agent::checkpoint::Checkpoint;
use cairn_api::internal::checkpoint_record::Record;
use cairn_api::internal::{RunTask, StatusUpdate};
use cairn_api::v1::{FrameworkId, FrameworkInfo, TaskId, TaskInfo, TaskState, TaskStatus};

fn main() {
    let base = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    println!("checkpoint group commit, in {}", base.display());
    println!("| updates per sync | updates | updates/s | µs per update |");
    println!("|---:|---:|---:|---:|");
    for (batch, updates) in [
        (1usize, 3_000usize),
        (8, 20_000),
        (64, 50_000),
        (512, 100_000),
    ] {
        let dir = tempfile::tempdir_in(&base).expect("a temporary directory");
        let mut checkpoint =
            Checkpoint::open(&dir.path().join("checkpoint.log"), false).expect("checkpoint");
        let tasks = 1000;
        for t in 0..tasks {
            checkpoint.record(Record::Task(RunTask {
                framework: Some(FrameworkInfo {
                    id: Some(FrameworkId { value: "fw".into() }),
                    ..Default::default()
                }),
                task: Some(TaskInfo {
                    task_id: Some(TaskId {
                        value: format!("task-{t}"),
                    }),
                    ..Default::default()
                }),
                group: Vec::new(),
                container_id: format!("run-{t}"),
                executor_id: String::new(),
            }));
        }
        checkpoint.commit().expect("commit");
        let started = Instant::now();
        for i in 0..updates {
            checkpoint.record(Record::Update(StatusUpdate {
                framework_id: Some(FrameworkId { value: "fw".into() }),
                status: Some(TaskStatus {
                    task_id: Some(TaskId {
                        value: format!("task-{}", i % tasks),
                    }),
                    state: TaskState::TaskRunning as i32,
                    message: "a status update of ordinary size, with a message".into(),
                    uuid: uuid::Uuid::new_v4().as_bytes().to_vec(),
                    timestamp: 1.0e9,
                    ..Default::default()
                }),
            }));
            if (i + 1) % batch == 0 {
                checkpoint.commit().expect("commit");
            }
        }
        checkpoint.commit().expect("commit");
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "| {batch} | {updates} | {:.0} | {:.1} |",
            updates as f64 / elapsed,
            elapsed * 1e6 / updates as f64
        );
    }
}
