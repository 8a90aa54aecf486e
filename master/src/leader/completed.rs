//! Tasks that ended, kept for `/state`, reconciliation and late acknowledgements, and
//! bounded as Mesos bounds them: at most `--max-completed-tasks-per-framework` per
//! framework (the oldest go first), and the tasks of at most
//! `--max-completed-frameworks` torn-down frameworks. However many tasks a tenant
//! ends, the master's memory for them is bounded.

use std::collections::{HashMap, VecDeque};

use super::TaskEntry;

pub(super) struct Completed {
    per_framework: usize,
    max_frameworks: usize,
    by_framework: HashMap<String, VecDeque<TaskEntry>>,
    /// Torn-down frameworks with completed tasks kept, the oldest first.
    removed: VecDeque<String>,
}

impl Completed {
    pub(super) fn new(per_framework: usize, max_frameworks: usize) -> Self {
        Self {
            per_framework,
            max_frameworks,
            by_framework: HashMap::new(),
            removed: VecDeque::new(),
        }
    }

    pub(super) fn push(&mut self, task: TaskEntry) {
        if self.per_framework == 0 {
            return;
        }
        let tasks = self
            .by_framework
            .entry(task.framework_id.clone())
            .or_default();
        if tasks.len() >= self.per_framework {
            tasks.pop_front();
        }
        tasks.push_back(task);
    }

    /// The framework was torn down: its completed tasks stay while it is among the
    /// last `max_frameworks` so removed.
    pub(super) fn framework_removed(&mut self, framework_id: &str) {
        if !self.by_framework.contains_key(framework_id) {
            return;
        }
        self.removed.retain(|f| f != framework_id);
        self.removed.push_back(framework_id.to_owned());
        while self.removed.len() > self.max_frameworks {
            if let Some(oldest) = self.removed.pop_front() {
                self.by_framework.remove(&oldest);
            }
        }
    }

    /// The latest completed run of a framework's task id.
    pub(super) fn latest(&self, framework_id: &str, task_id: &str) -> Option<&TaskEntry> {
        let tasks = self.by_framework.get(framework_id)?;
        (tasks.iter().rev()).find(|t| {
            t.info
                .task_id
                .as_ref()
                .is_some_and(|id| id.value == task_id)
        })
    }

    /// Every completed task, each framework's oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = &TaskEntry> {
        self.by_framework.values().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(framework_id: &str, task_id: &str) -> TaskEntry {
        let task_id = cairn_api::v1::TaskId {
            value: task_id.to_owned(),
        };
        TaskEntry {
            framework_id: framework_id.to_owned(),
            agent_id: "agent".into(),
            role: "*".into(),
            info: cairn_api::v1::TaskInfo {
                task_id: Some(task_id),
                ..Default::default()
            },
            resources: cairn_api::Resources::new(),
            executor: String::new(),
            state: cairn_api::v1::TaskState::TaskFinished,
            status: None,
        }
    }

    #[test]
    fn each_framework_keeps_its_latest_tasks_and_removed_frameworks_are_bounded() {
        let mut completed = Completed::new(2, 1);
        for id in ["a", "b", "c"] {
            completed.push(task("f1", id));
        }
        completed.push(task("f2", "x"));
        // f1 keeps its last two; another framework's tasks do not push them out.
        assert!(completed.latest("f1", "a").is_none());
        assert!(completed.latest("f1", "c").is_some());
        assert!(completed.latest("f2", "x").is_some());
        assert_eq!(completed.iter().count(), 3);
        completed.framework_removed("f1");
        assert!(completed.latest("f1", "c").is_some());
        // A second removed framework pushes the first one's tasks out.
        completed.framework_removed("f2");
        assert!(completed.latest("f1", "c").is_none());
        assert!(completed.latest("f2", "x").is_some());
    }
}
