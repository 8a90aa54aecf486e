//! What each executor's cgroup must allow: the sum of the tasks it runs and of its
//! custom executors with tasks, plus the executor's own overhead, counted by
//! `cairn_api::charges` as the master counts it in offers. Kept as running totals,
//! and written to the cgroups once per batch of inputs, not per task.

use std::collections::{HashMap, HashSet};

use cairn_api::Resources;
use cairn_api::charges::AgentCharges;
use cairn_api::v1::TaskInfo;

use crate::checkpoint::TaskKey;
use crate::executor_cgroup::{
    ExecutorLimits, HOST_MEM_PER_TASK, OVERHEAD_CPUS, OVERHEAD_MEM_BYTES, PIDS_PER_TASK,
};
use crate::executor_process::containerizer::Limits;

const MIB: f64 = (1 << 20) as f64;

/// This agent's figures, as it tells the master when it registers.
pub fn agent_charges(switch_user: bool) -> AgentCharges {
    let d = Limits::DEFAULT;
    AgentCharges {
        task_defaults: Resources::new()
            .with_scalar("cpus", d.cpus)
            .with_scalar("mem", d.mem_bytes as f64 / MIB)
            .with_scalar("disk", d.disk_bytes as f64 / MIB),
        executor_overhead: Resources::new()
            .with_scalar("cpus", OVERHEAD_CPUS)
            .with_scalar("mem", OVERHEAD_MEM_BYTES as f64 / MIB),
        hosted_task_overhead: Resources::new().with_scalar("mem", HOST_MEM_PER_TASK as f64 / MIB),
        switch_user,
    }
}

/// What a task charged its executor, to give back when it ends.
#[derive(Debug)]
struct Charged {
    executor_id: String,
    own: ExecutorLimits,
    /// The custom executor it names, if any.
    custom: Option<String>,
}

#[derive(Debug)]
pub struct Sizes {
    charges: AgentCharges,
    charged: HashMap<TaskKey, Charged>,
    /// Custom executors, by (executor process, custom executor id): how many live
    /// tasks name each, and what it adds. One is charged from its first task until its
    /// process ends (its instance outlives its tasks there, as a Mesos executor does).
    customs: HashMap<(String, String), (usize, ExecutorLimits)>,
    totals: HashMap<String, ExecutorLimits>,
    /// Executors whose totals changed since their cgroup was last written.
    due: HashSet<String>,
}

impl Sizes {
    pub fn new(charges: AgentCharges) -> Self {
        Self {
            charges,
            charged: HashMap::new(),
            customs: HashMap::new(),
            totals: HashMap::new(),
            due: HashSet::new(),
        }
    }

    pub fn charges(&self) -> &AgentCharges {
        &self.charges
    }

    /// Charges a task to its executor, once however often it is staged.
    pub fn charge(&mut self, key: &TaskKey, executor_id: &str, task: &TaskInfo) {
        if self.charged.contains_key(key) {
            return;
        }
        // A task whose resources do not parse never launches: charging it the
        // defaults errs on the side of room.
        let bare = || {
            (self.charges)
                .with_defaults(&Resources::new())
                .add(&self.charges.hosted_task_overhead)
        };
        let own = limits(
            &self.charges.task(task).unwrap_or_else(|_| bare()),
            PIDS_PER_TASK,
        );
        let custom = task.executor.as_ref().map(|info| {
            let id = info.executor_id.clone().unwrap_or_default().value;
            let resources = (self.charges.custom_executor(info))
                .unwrap_or_else(|_| self.charges.with_defaults(&Resources::new()));
            (id, limits(&resources, 0))
        });
        let total = self
            .totals
            .entry(executor_id.to_owned())
            .or_insert_with(ExecutorLimits::overhead);
        grow(total, &own);
        if let Some((id, extra)) = &custom {
            let entry = (self.customs)
                .entry((executor_id.to_owned(), id.clone()))
                .or_insert_with(|| {
                    grow(total, extra);
                    (0, *extra)
                });
            entry.0 += 1;
        }
        let charged = Charged {
            executor_id: executor_id.to_owned(),
            own,
            custom: custom.map(|(id, _)| id),
        };
        self.charged.insert(key.clone(), charged);
        self.due.insert(executor_id.to_owned());
    }

    /// Gives back what an ended task was charged (its custom executor's share stays
    /// until the process ends: see [`Sizes::forget`]).
    pub fn release(&mut self, key: &TaskKey) {
        let Some(charged) = self.charged.remove(key) else {
            return;
        };
        let ex = charged.executor_id;
        let freed = charged.own;
        if let Some(id) = charged.custom
            && let Some(entry) = self.customs.get_mut(&(ex.clone(), id))
        {
            entry.0 = entry.0.saturating_sub(1);
        }
        if let Some(total) = self.totals.get_mut(&ex) {
            let floor = ExecutorLimits::overhead();
            total.cpus = (total.cpus - freed.cpus).max(floor.cpus);
            total.mem_bytes =
                (total.mem_bytes.saturating_sub(freed.mem_bytes)).max(floor.mem_bytes);
            total.pids = (total.pids - freed.pids).max(floor.pids);
            self.due.insert(ex);
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
        self.charged.retain(|_, c| c.executor_id != executor_id);
        self.customs.retain(|(e, _), _| e != executor_id);
        self.totals.remove(executor_id);
        self.due.remove(executor_id);
    }

    /// The executors whose cgroups need writing, with their sizes.
    pub fn take_due(&mut self) -> Vec<(String, ExecutorLimits)> {
        let due: Vec<String> = self.due.drain().collect();
        due.into_iter().map(|e| (e.clone(), self.of(&e))).collect()
    }
}

/// A cgroup's share of `resources` (cpus, and mem in MB), and `pids` processes.
fn limits(resources: &Resources, pids: i64) -> ExecutorLimits {
    ExecutorLimits {
        cpus: resources.cpus(),
        mem_bytes: (resources.mem() * MIB) as u64,
        pids,
    }
}

fn grow(total: &mut ExecutorLimits, by: &ExecutorLimits) {
    total.cpus += by.cpus;
    total.mem_bytes += by.mem_bytes;
    total.pids += by.pids;
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let mut sizes = Sizes::new(agent_charges(true));
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
        let mut sizes = Sizes::new(agent_charges(true));
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

    #[test]
    fn a_custom_executor_is_charged_once_until_its_process_ends() {
        let mut sizes = Sizes::new(agent_charges(true));
        let custom = |id: &str| TaskInfo {
            executor: Some(cairn_api::v1::ExecutorInfo {
                executor_id: Some(cairn_api::v1::ExecutorId { value: "c".into() }),
                resources: task("c", 0.5, 100.0).resources,
                ..Default::default()
            }),
            ..task(id, 1.0, 10.0)
        };
        let (a, b) = (
            ("f".to_owned(), "a".to_owned()),
            ("f".to_owned(), "b".to_owned()),
        );
        sizes.charge(&a, "e", &custom("a"));
        sizes.charge(&b, "e", &custom("b"));
        let mib = 1 << 20;
        let executor = |tasks: u64, custom: u64| {
            tasks * (10 * mib + HOST_MEM_PER_TASK) + custom * 100 * mib + OVERHEAD_MEM_BYTES
        };
        assert_eq!(sizes.of("e").mem_bytes, executor(2, 1));
        assert!((sizes.of("e").cpus - 2.6).abs() < 1e-9);
        sizes.release(&a);
        assert_eq!(sizes.of("e").mem_bytes, executor(1, 1));
        sizes.release(&b);
        assert_eq!(
            sizes.of("e").mem_bytes,
            executor(0, 1),
            "it outlives its tasks"
        );
        // A later task naming it is not charged it again.
        sizes.charge(&a, "e", &custom("a"));
        assert_eq!(sizes.of("e").mem_bytes, executor(1, 1));
        sizes.forget("e");
        assert_eq!(sizes.of("e").mem_bytes, executor(0, 0));
        assert_eq!(sizes.of("e").pids, ExecutorLimits::overhead().pids);
    }
}
