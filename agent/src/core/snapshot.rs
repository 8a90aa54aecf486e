//! What the core publishes for the HTTP API (`/state`, `/files`, the metrics),
//! rebuilt from its state when asked or once a second.

use std::sync::Arc;
use std::time::Instant;

use super::{AgentSnapshot, Core, ExecutorView, MAX_COMPLETED_TASKS, TaskStatistics, TaskView};
use crate::checkpoint::TaskKey;

impl Core {
    /// A task of the checkpoint as `/state` shows it.
    pub(super) fn task_view(&self, key: &TaskKey) -> Option<TaskView> {
        let state = &self.checkpoint.state;
        let t = state.tasks.get(key)?;
        let (fw, id) = key;
        let framework_user = state.frameworks.get(fw).map_or("", |f| f.user.as_str());
        Some(TaskView {
            framework_id: fw.clone(),
            task_id: id.clone(),
            directory: (self.paths.sandbox(fw, id, &t.container_id))
                .display()
                .to_string(),
            executor_id: t.executor_id.clone(),
            state: t.state.as_str_name().to_owned(),
            user: cairn_api::authz::task_user(framework_user, &t.info).to_owned(),
        })
    }

    /// Remembers a task gone from the checkpoint, forgetting the oldest past
    /// [`MAX_COMPLETED_TASKS`].
    pub(super) fn remember_completed(&mut self, task: TaskView) {
        if self.completed.len() == MAX_COMPLETED_TASKS {
            self.completed.pop_front();
        }
        self.completed.push_back(task);
    }

    pub(super) fn publish(&mut self) {
        self.dirty = false;
        self.published_at = Instant::now();
        let state = &self.checkpoint.state;
        let tasks = (state.tasks.keys())
            .filter_map(|key| self.task_view(key))
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
            completed_tasks: self.completed.iter().cloned().collect(),
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
