//! The agent's durable state and the one function that changes it. Live changes and
//! recovery both go through [`AgentState::apply`], so what the agent rebuilds after a
//! crash is exactly what it had.

use std::collections::{HashMap, HashSet};

use cairn_api::internal::checkpoint_record::Record;
use cairn_api::internal::{
    CheckpointRecord, CheckpointedExecutor, CompiledProgram, RunTask, TaskLimited, TaskRecord,
};
use cairn_api::v1::{FrameworkId, FrameworkInfo, TaskInfo, TaskState};

use crate::updates::StatusUpdates;

pub type TaskKey = (String, String);

#[derive(Debug, Clone)]
pub struct Task {
    pub info: TaskInfo,
    pub state: TaskState,
    /// Handed to the executor; before that a kill is the agent's to do.
    pub launched: bool,
    /// Uuids of the updates recorded for this task: a resent update is a duplicate.
    pub seen: HashSet<Vec<u8>>,
    /// The task group it belongs to (every member's id), empty for a lone task.
    pub group: Vec<String>,
    /// This run's container id, naming its sandbox (see [`crate::paths::Paths::sandbox`]).
    pub container_id: String,
    /// The executor process that runs it.
    pub executor_id: String,
    /// Its wasm programs as the agent compiled them, once launched.
    pub programs: Vec<CompiledProgram>,
    /// Why the agent killed this run, if it did over a limit it watches.
    pub limited: Option<TaskLimited>,
}

#[derive(Debug, Default)]
pub struct AgentState {
    pub agent_id: Option<String>,
    pub agent_info: Option<cairn_api::v1::AgentInfo>,
    pub frameworks: HashMap<String, FrameworkInfo>,
    /// The executor processes on this agent, by executor id (unique on the agent:
    /// each names its framework).
    pub executors: HashMap<String, CheckpointedExecutor>,
    pub tasks: HashMap<TaskKey, Task>,
    pub updates: StatusUpdates,
}

impl AgentState {
    /// Takes the record by value: live changes are already encoded for the log, and
    /// recovery owns what it read, so nothing here copies a task or an update.
    pub fn apply(&mut self, record: CheckpointRecord) {
        let Some(record) = record.record else { return };
        match record {
            Record::AgentId(id) => self.agent_id = Some(id.value),
            Record::AgentInfo(info) => self.agent_info = Some(info),
            Record::Framework(info) => {
                let id = info.id.clone().unwrap_or_default().value;
                self.frameworks.insert(id, info);
            }
            Record::Executor(mut executor) => {
                let id = executor_key(&mut executor);
                self.executors.insert(id, executor);
            }
            Record::ExecutorExited(mut executor) => {
                let id = executor_key(&mut executor);
                if self
                    .executors
                    .get(&id)
                    .is_some_and(|e| e.pid == executor.pid)
                {
                    self.executors.remove(&id);
                }
            }
            Record::Task(run) => self.add_task(run),
            Record::Launched(launched) => {
                if let Some(task) = self.tasks.get_mut(&record_key(&launched)) {
                    task.launched = true;
                    task.programs = launched.programs;
                    // STAGING when live; a compacted record carries the latest state.
                    if let Ok(state) = TaskState::try_from(launched.state) {
                        task.state = state;
                    }
                }
            }
            Record::Update(update) => {
                let Some(status) = &update.status else { return };
                let fw = update.framework_id.clone().unwrap_or_default().value;
                let task_id = status.task_id.clone().unwrap_or_default().value;
                let Some(task) = self.tasks.get_mut(&(fw, task_id)) else {
                    return;
                };
                if task.state.is_terminal() || !task.seen.insert(status.uuid.clone()) {
                    return;
                }
                task.state = TaskState::try_from(status.state).unwrap_or(TaskState::TaskUnknown);
                self.updates.push(update);
            }
            Record::Ack(ack) => {
                let fw = ack.framework_id.clone().unwrap_or_default().value;
                let task_id = ack.task_id.clone().unwrap_or_default().value;
                let Some((acked, more)) = self.updates.acknowledge(&fw, &task_id, &ack.uuid) else {
                    return;
                };
                let terminal = acked
                    .status
                    .and_then(|s| TaskState::try_from(s.state).ok())
                    .is_some_and(TaskState::is_terminal);
                if terminal && !more {
                    self.tasks.remove(&(fw, task_id));
                }
            }
            Record::FrameworkRemoved(id) => {
                self.frameworks.remove(&id.value);
            }
            Record::Limited(limited) => {
                let fw = limited.framework_id.clone().unwrap_or_default().value;
                let task_id = limited.task_id.clone().unwrap_or_default().value;
                if let Some(task) = self.tasks.get_mut(&(fw, task_id))
                    && task.container_id == limited.container_id
                {
                    task.limited = Some(limited);
                }
            }
        }
    }

    /// A task the agent took on: staging, as every task starts here.
    fn add_task(&mut self, run: RunTask) {
        let (Some(framework), Some(task)) = (run.framework, run.task) else {
            return;
        };
        let fw = framework.id.clone().unwrap_or_default().value;
        let task_id = task.task_id.clone().unwrap_or_default().value;
        let executor_id = match run.executor_id {
            id if id.is_empty() => framework_executor(&fw),
            id => id,
        };
        self.frameworks.insert(fw.clone(), framework);
        self.tasks.entry((fw, task_id)).or_insert_with(|| Task {
            info: task,
            state: TaskState::TaskStaging,
            launched: false,
            seen: HashSet::new(),
            group: run.group,
            container_id: run.container_id,
            executor_id,
            programs: Vec::new(),
            limited: None,
        });
    }

    /// The live state as records, for compaction: replaying them gives this state
    /// back (less the memory of acknowledged update uuids).
    pub fn to_records(&self) -> Vec<CheckpointRecord> {
        let mut records = Vec::new();
        let mut push = |r: Record| records.push(CheckpointRecord { record: Some(r) });
        if let Some(id) = &self.agent_id {
            push(Record::AgentId(cairn_api::v1::AgentId {
                value: id.clone(),
            }));
        }
        if let Some(info) = &self.agent_info {
            push(Record::AgentInfo(info.clone()));
        }
        for info in self.frameworks.values() {
            push(Record::Framework(info.clone()));
        }
        for executor in self.executors.values() {
            push(Record::Executor(executor.clone()));
        }
        for ((fw, _), task) in &self.tasks {
            let framework = self.frameworks.get(fw).cloned().unwrap_or(FrameworkInfo {
                id: Some(FrameworkId { value: fw.clone() }),
                ..Default::default()
            });
            push(Record::Task(RunTask {
                framework: Some(framework),
                task: Some(task.info.clone()),
                group: task.group.clone(),
                container_id: task.container_id.clone(),
                executor_id: task.executor_id.clone(),
            }));
            if task.launched {
                let mut launched = task_record(fw, &task.info);
                // Pending updates replay the state; with none, the record carries it.
                if self.updates.head(fw, &task_id_of(&task.info)).is_none() {
                    launched.state = task.state as i32;
                }
                launched.programs = task.programs.clone();
                push(Record::Launched(launched));
            }
            if let Some(limited) = &task.limited {
                push(Record::Limited(limited.clone()));
            }
        }
        for update in self.updates.all() {
            push(Record::Update(update));
        }
        // Frameworks were re-added by their tasks' records; those shut down stay gone.
        for fw in self.tasks.keys().map(|(fw, _)| fw) {
            if !self.frameworks.contains_key(fw) {
                push(Record::FrameworkRemoved(FrameworkId { value: fw.clone() }));
            }
        }
        records
    }

    /// The non-terminal tasks of one framework.
    pub fn live_tasks_of(&self, fw: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .tasks
            .iter()
            .filter(|((f, _), t)| f == fw && !t.state.is_terminal())
            .map(|((_, id), _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// The non-terminal tasks one executor process runs or is about to.
    pub fn live_tasks_on(&self, executor_id: &str) -> Vec<TaskKey> {
        let mut keys: Vec<TaskKey> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.executor_id == executor_id && !t.state.is_terminal())
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        keys
    }
}

/// The executor a checkpoint older than per-user executors gave every task.
fn framework_executor(fw: &str) -> String {
    cairn_api::ids::executor_id_for(&FrameworkId {
        value: fw.to_owned(),
    })
    .value
}

/// An executor record's key, filled in for records older than executor ids.
fn executor_key(executor: &mut CheckpointedExecutor) -> String {
    let id = executor.executor_id.get_or_insert_default();
    if id.value.is_empty() {
        let fw = executor.framework_id.clone().unwrap_or_default().value;
        id.value = framework_executor(&fw);
    }
    id.value.clone()
}

pub fn task_record(fw: &str, task: &TaskInfo) -> TaskRecord {
    TaskRecord {
        framework_id: Some(FrameworkId {
            value: fw.to_owned(),
        }),
        task: Some(TaskInfo {
            task_id: task.task_id.clone(),
            ..Default::default()
        }),
        state: TaskState::TaskStaging as i32,
        ..Default::default()
    }
}

fn task_id_of(task: &TaskInfo) -> String {
    task.task_id.clone().unwrap_or_default().value
}

fn record_key(record: &TaskRecord) -> TaskKey {
    (
        record.framework_id.clone().unwrap_or_default().value,
        record
            .task
            .as_ref()
            .and_then(|t| t.task_id.clone())
            .unwrap_or_default()
            .value,
    )
}
