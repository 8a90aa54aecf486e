//! One task's life in the executor, whatever its container: launch it with its
//! containerizer (reporting STARTING if that takes a while), report RUNNING, wait for its end (killing it when asked
//! or at its `max_completion_time`), and report that end with what it used.

use std::sync::Arc;
use std::time::Duration;

use cairn_api::v1::{Label, Labels, TaskInfo, TaskState, TaskStatus, task_status::Reason};
use tokio::sync::mpsc::{self, UnboundedSender};

use super::containerizer::{Containerizer, LaunchSpec, Termination};

/// A launch still under way after this is reported as TASK_STARTING (a compile, a
/// container's creation, a fork into a cgroup); one done sooner goes straight to
/// TASK_RUNNING. STARTING is optional in Mesos' task state machine, and for a cached
/// wasm module, started in microseconds, it would tell the framework nothing while
/// costing every short task a third of its acknowledged, checkpointed updates.
const STARTING_AFTER: Duration = Duration::from_millis(10);

/// Sends one task's status updates to the executor's connection.
#[derive(Clone)]
pub(super) struct Reporter {
    pub(super) task: TaskInfo,
    pub(super) tx: UnboundedSender<TaskStatus>,
}

impl Reporter {
    pub(super) fn send(
        &self,
        state: TaskState,
        message: String,
        reason: Option<Reason>,
        labels: Vec<Label>,
    ) {
        let task_id = self.task.task_id.clone().unwrap_or_default().value;
        let status = TaskStatus {
            labels: (!labels.is_empty()).then_some(Labels { labels }),
            ..super::status(&task_id, state, message, reason)
        };
        let _ = self.tx.send(status);
    }

    fn end(&self, t: Termination) {
        self.send(t.state, t.message, t.reason, t.labels);
    }
}

/// Kills a running task: send the grace period its kill policy gives.
pub(super) type KillSender = mpsc::UnboundedSender<Duration>;

/// Runs the task on the executor's async runtime; returns where kills go.
pub(super) fn launch(
    containerizer: Arc<dyn Containerizer>,
    spec: LaunchSpec,
    tx: UnboundedSender<TaskStatus>,
) -> KillSender {
    let reporter = Reporter {
        task: spec.task.clone(),
        tx,
    };
    spawn(reporter, |reporter, kills| async move {
        run(containerizer, spec, &reporter, kills).await;
    })
}

/// Follows a task whose container `recover` re-attached (it outlived the agent that
/// hosts this executor) to its end, as if this executor had launched it.
pub(super) fn adopt(
    containerizer: Arc<dyn Containerizer>,
    task_id: String,
    tx: UnboundedSender<TaskStatus>,
) -> KillSender {
    let task = TaskInfo {
        task_id: Some(cairn_api::v1::TaskId {
            value: task_id.clone(),
        }),
        ..Default::default()
    };
    let reporter = Reporter { task, tx };
    spawn(reporter, |reporter, kills| async move {
        let limit = containerizer.completion_deadline(&task_id);
        follow(containerizer, &task_id, limit, &reporter, kills).await;
    })
}

/// Runs one task's life on its own tokio task; returns where kills go.
fn spawn<F, Fut>(reporter: Reporter, life: F) -> KillSender
where
    F: FnOnce(Reporter, mpsc::UnboundedReceiver<Duration>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (kill, kills) = mpsc::unbounded_channel();
    let watcher = reporter.clone();
    let running = tokio::spawn(life(reporter, kills));
    // A bug that panics the run must not leave its task non-terminal forever.
    tokio::spawn(async move {
        if let Err(e) = running.await
            && e.is_panic()
        {
            tracing::error!("a task's run panicked; failing the task");
            watcher.send(
                TaskState::TaskFailed,
                "the executor failed while running the task".into(),
                Some(Reason::ExecutorTerminated),
                Vec::new(),
            );
        }
    });
    kill
}

async fn run(
    containerizer: Arc<dyn Containerizer>,
    spec: LaunchSpec,
    reporter: &Reporter,
    mut kills: mpsc::UnboundedReceiver<Duration>,
) {
    let launched = {
        let launch = containerizer.launch(&spec);
        tokio::pin!(launch);
        match tokio::time::timeout(STARTING_AFTER, &mut launch).await {
            Ok(launched) => launched,
            Err(_) => {
                // A kill that came meanwhile may have been reported (TASK_KILLING):
                // nothing may go back to STARTING after it.
                if kills.is_empty() {
                    reporter.send(TaskState::TaskStarting, String::new(), None, Vec::new());
                }
                launch.await
            }
        }
    };
    if let Err(message) = launched {
        reporter.end(Termination::launch_failed(message.to_string()));
        return;
    }
    let task_id = spec.task_id();
    // A kill that came during the launch: the container is stopped at once. So is
    // one whose executor is gone (the kill's sender with it): no one would stop it.
    let mut kill_now = None;
    loop {
        match kills.try_recv() {
            Ok(grace) => kill_now = Some(grace),
            Err(mpsc::error::TryRecvError::Empty) => break,
            Err(mpsc::error::TryRecvError::Disconnected) => {
                kill_now = Some(kill_now.unwrap_or(Duration::ZERO));
                break;
            }
        }
    }
    if let Some(grace) = kill_now {
        containerizer.kill(&task_id, grace).await;
    } else {
        reporter.send(TaskState::TaskRunning, String::new(), None, Vec::new());
    }
    let limit = spec
        .max_completion_time()
        .filter(|_| !containerizer.enforces_completion_time())
        .map(|limit| (limit, limit));
    follow(containerizer, &task_id, limit, reporter, kills).await;
}

/// Waits for a started container's end, killing it when asked or once `limit` (the
/// time left, and the `max_completion_time` it stands for) runs out, and reports it.
async fn follow(
    containerizer: Arc<dyn Containerizer>,
    task_id: &str,
    limit: Option<(Duration, Duration)>,
    reporter: &Reporter,
    mut kills: mpsc::UnboundedReceiver<Duration>,
) {
    let deadline = async {
        match limit {
            Some((left, _)) => tokio::time::sleep(left).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let wait = containerizer.wait(task_id);
    tokio::pin!(wait);
    let (mut timed_out, mut kills_open) = (false, true);
    let mut termination = loop {
        tokio::select! {
            termination = &mut wait => break termination,
            grace = kills.recv(), if kills_open => match grace {
                Some(grace) => containerizer.kill(task_id, grace).await,
                // Its executor is gone (ended or aborted): nothing else would stop it.
                None => {
                    kills_open = false;
                    containerizer.kill(task_id, Duration::ZERO).await;
                }
            },
            () = &mut deadline, if !timed_out => {
                timed_out = true;
                containerizer.kill(task_id, Duration::ZERO).await;
            }
        }
    };
    if timed_out && termination.state != TaskState::TaskFinished {
        let labels = std::mem::take(&mut termination.labels);
        termination = Termination {
            labels,
            ..Termination::timed_out(limit.map(|(_, limit)| limit).unwrap_or_default())
        };
    }
    reporter.end(termination);
}
