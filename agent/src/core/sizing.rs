//! What each executor's cgroup must allow: the sum of the tasks it runs (and their
//! custom executors' resources) plus the executor's own overhead. Kept as running
//! totals, and written to the cgroups once per batch of inputs, not per task.

use std::collections::{HashMap, HashSet};

use cairn_api::v1::TaskInfo;

use crate::checkpoint::TaskKey;
use crate::executor_cgroup::{ExecutorLimits, HOST_MEM_PER_TASK, PIDS_PER_TASK};
use crate::executor_process::containerizer::Limits;

#[derive(Debug, Default)]
pub struct Sizes {
    charged: HashMap<TaskKey, (String, ExecutorLimits)>,
    totals: HashMap<String, ExecutorLimits>,
    /// Executors whose totals changed since their cgroup was last written.
    due: HashSet<String>,
}

impl Sizes {
    /// Charges a task to its executor, once however often it is staged.
    pub fn charge(&mut self, key: &TaskKey, executor_id: &str, task: &TaskInfo) {
        if self.charged.contains_key(key) {
            return;
        }
        // A task whose resources do not parse never launches: charging it the
        // defaults errs on the side of room.
        let own = Limits::of(task).unwrap_or(Limits::DEFAULT);
        let custom = task
            .executor
            .as_ref()
            .map(|e| Limits::from_resources(&e.resources).unwrap_or(Limits::DEFAULT));
        let charge = ExecutorLimits {
            cpus: own.cpus + custom.map_or(0.0, |c| c.cpus),
            mem_bytes: own.mem_bytes + custom.map_or(0, |c| c.mem_bytes) + HOST_MEM_PER_TASK,
            pids: PIDS_PER_TASK,
        };
        let total = self
            .totals
            .entry(executor_id.to_owned())
            .or_insert_with(ExecutorLimits::overhead);
        total.cpus += charge.cpus;
        total.mem_bytes += charge.mem_bytes;
        total.pids += charge.pids;
        self.charged
            .insert(key.clone(), (executor_id.to_owned(), charge));
        self.due.insert(executor_id.to_owned());
    }

    /// Gives back what an ended task was charged.
    pub fn release(&mut self, key: &TaskKey) {
        let Some((executor_id, charge)) = self.charged.remove(key) else {
            return;
        };
        if let Some(total) = self.totals.get_mut(&executor_id) {
            total.cpus = (total.cpus - charge.cpus).max(ExecutorLimits::overhead().cpus);
            total.mem_bytes = total
                .mem_bytes
                .saturating_sub(charge.mem_bytes)
                .max(ExecutorLimits::overhead().mem_bytes);
            total.pids = (total.pids - charge.pids).max(ExecutorLimits::overhead().pids);
            self.due.insert(executor_id);
        }
    }

    /// What the executor's cgroup must allow now.
    pub fn of(&self, executor_id: &str) -> ExecutorLimits {
        self.totals
            .get(executor_id)
            .copied()
            .unwrap_or_else(ExecutorLimits::overhead)
    }

    /// Forgets an executor that is gone (its tasks were released or failed).
    pub fn forget(&mut self, executor_id: &str) {
        self.charged.retain(|_, (e, _)| e != executor_id);
        self.totals.remove(executor_id);
        self.due.remove(executor_id);
    }

    /// The executors whose cgroups need writing, with their sizes.
    pub fn take_due(&mut self) -> Vec<(String, ExecutorLimits)> {
        let due: Vec<String> = self.due.drain().collect();
        due.into_iter().map(|e| (e.clone(), self.of(&e))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor_cgroup::OVERHEAD_MEM_BYTES;
    use cairn_api::v1::{Resource, TaskId, value};

    fn task(id: &str, cpus: f64, mem: f64) -> TaskInfo {
        let scalar = |name: &str, amount: f64| Resource {
            name: name.into(),
            r#type: value::Type::Scalar as i32,
            scalar: Some(value::Scalar { value: amount }),
            ..Default::default()
        };
        TaskInfo {
            task_id: Some(TaskId { value: id.into() }),
            resources: vec![scalar("cpus", cpus), scalar("mem", mem)],
            ..Default::default()
        }
    }

    #[test]
    fn an_executor_is_its_tasks_plus_the_overhead_and_shrinks_as_they_end() {
        let mut sizes = Sizes::default();
        let (a, b) = (
            ("f".to_owned(), "a".to_owned()),
            ("f".to_owned(), "b".to_owned()),
        );
        sizes.charge(&a, "e", &task("a", 1.0, 100.0));
        sizes.charge(&a, "e", &task("a", 1.0, 100.0));
        sizes.charge(&b, "e", &task("b", 0.5, 50.0));
        let mib = 1 << 20;
        assert_eq!(
            sizes.of("e").mem_bytes,
            150 * mib + 2 * HOST_MEM_PER_TASK + OVERHEAD_MEM_BYTES
        );
        assert!((sizes.of("e").cpus - 1.6).abs() < 1e-9);
        assert_eq!(sizes.take_due(), vec![("e".to_owned(), sizes.of("e"))]);
        assert!(sizes.take_due().is_empty());
        sizes.release(&a);
        sizes.release(&a);
        assert_eq!(
            sizes.of("e").mem_bytes,
            50 * mib + HOST_MEM_PER_TASK + OVERHEAD_MEM_BYTES
        );
        assert_eq!(sizes.take_due().len(), 1);
        sizes.forget("e");
        assert_eq!(sizes.of("e"), ExecutorLimits::overhead());
    }

    #[test]
    fn a_task_naming_no_memory_is_charged_the_default() {
        let mut sizes = Sizes::default();
        let bare = TaskInfo {
            task_id: Some(TaskId { value: "t".into() }),
            ..Default::default()
        };
        sizes.charge(&("f".into(), "t".into()), "e", &bare);
        assert_eq!(
            sizes.of("e").mem_bytes,
            Limits::DEFAULT.mem_bytes + HOST_MEM_PER_TASK + OVERHEAD_MEM_BYTES
        );
    }
}
