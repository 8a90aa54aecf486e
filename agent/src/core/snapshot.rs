//! What the core publishes for the HTTP API (`/state`, `/files`, the metrics),
//! rebuilt from its state when asked or once a second.

use std::sync::Arc;
use std::time::Instant;

use super::{AgentSnapshot, Core, ExecutorView, TaskStatistics, TaskView};

impl Core {
    pub(super) fn publish(&mut self) {
        self.dirty = false;
        self.published_at = Instant::now();
        let state = &self.checkpoint.state;
        let tasks = state
            .tasks
            .iter()
            .map(|((fw, id), t)| {
                let executor_id = t.executor_id.clone();
                TaskView {
                    framework_id: fw.clone(),
                    task_id: id.clone(),
                    directory: self
                        .paths
                        .sandbox(fw, id, &t.container_id)
                        .display()
                        .to_string(),
                    executor_id,
                    state: t.state.as_str_name().to_owned(),
                }
            })
            .collect();
        let executors = state
            .executors
            .iter()
            .map(|(ex, e)| ExecutorView {
                framework_id: e.framework_id.clone().unwrap_or_default().value,
                executor_id: ex.clone(),
                pid: e.pid,
                subscribed: self.links.get(ex).is_some_and(|l| l.conn.is_some()),
                recovered: self.links.get(ex).is_some_and(|l| l.recovered),
            })
            .collect();
        let _ = self.snapshot.send(Arc::new(AgentSnapshot {
            agent_id: self.info.id.as_ref().map(|i| i.value.clone()),
            master_connected: self.master.is_some(),
            tasks,
            executors,
            pending_updates: state.updates.pending(),
            checkpoint_error: self.commit_failure.as_ref().map(|f| f.error.clone()),
            metrics: self.metrics.clone(),
            statistics: self.statistics(),
        }));
    }
}

impl Core {
    /// The last usage reported for each task that still runs.
    fn statistics(&self) -> Vec<TaskStatistics> {
        let mut all = Vec::new();
        for (fw, timestamp, usage) in self.usage.values() {
            for u in usage {
                let task_id = u.task_id.clone().unwrap_or_default().value;
                let running = self
                    .checkpoint
                    .state
                    .tasks
                    .get(&(fw.clone(), task_id.clone()))
                    .is_some_and(|t| !t.state.is_terminal());
                if running {
                    all.push(TaskStatistics {
                        framework_id: fw.clone(),
                        task_id,
                        timestamp: *timestamp,
                        usage: u.clone(),
                    });
                }
            }
        }
        all
    }
}
