//! One wasm task: load its module from the sandbox, run it under its limits, and
//! report STARTING, RUNNING and a terminal state with what it used.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cairn_api::Resources;
use cairn_api::internal::CachedFile;
use cairn_api::v1::{Label, Labels, TaskInfo, TaskState, TaskStatus, task_status::Reason};
use cairn_sandbox::{CancelHandle, Exit, Limit, ProgramKind, RunOutcome, RunSpec, Sandbox};
use sha2::Digest as _;
use tokio::sync::mpsc::UnboundedSender;

/// Linear memory for a task that names no `mem`.
const DEFAULT_MEM_MB: f64 = 64.0;
/// The sandbox quota for a task that names no `disk`: never unlimited.
const DEFAULT_DISK_MB: f64 = 1024.0;
/// No task module may be larger than this.
const MAX_MODULE_BYTES: u64 = 256 << 20;

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
}

/// Runs the task on the executor's async runtime: thousands of tasks share its
/// threads, each guest yielding at every epoch tick.
pub(super) fn launch(
    sandbox: Arc<Sandbox>,
    task: TaskInfo,
    dir: PathBuf,
    cached: Vec<CachedFile>,
    tx: UnboundedSender<TaskStatus>,
    cancel: CancelHandle,
) {
    let reporter = Reporter { task, tx };
    let watcher = reporter.clone();
    let running = tokio::spawn(async move { run(sandbox, &reporter, dir, cached, &cancel).await });
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
}

async fn run(
    sandbox: Arc<Sandbox>,
    reporter: &Reporter,
    dir: PathBuf,
    cached: Vec<CachedFile>,
    cancel: &CancelHandle,
) {
    reporter.send(TaskState::TaskStarting, String::new(), None, Vec::new());
    // A module the fetcher cache placed, already compiled here: nothing to read.
    let prepared = match linked(&sandbox, &reporter.task, &dir, &cached) {
        Some(ready) => Ok(ready),
        // Reading, hashing and (on a cache miss) compiling the module block.
        None => {
            let (sandbox, task, dir) = (sandbox.clone(), reporter.task.clone(), dir.clone());
            tokio::task::spawn_blocking(move || prepare(&sandbox, &task, &dir, &cached)).await
        }
    };
    let (program, spec) = match prepared {
        Ok(Ok(p)) => p,
        Ok(Err(message)) => {
            reporter.send(
                TaskState::TaskFailed,
                message,
                Some(Reason::ContainerLaunchFailed),
                Vec::new(),
            );
            return;
        }
        Err(e) => {
            reporter.send(
                TaskState::TaskFailed,
                format!("preparing the task failed: {e}"),
                Some(Reason::ContainerLaunchFailed),
                Vec::new(),
            );
            return;
        }
    };
    if cancel.is_cancelled() {
        reporter.send(
            TaskState::TaskKilled,
            "Task killed".into(),
            None,
            Vec::new(),
        );
        return;
    }
    reporter.send(TaskState::TaskRunning, String::new(), None, Vec::new());
    match sandbox.run(&program, &spec, cancel).await {
        Ok(outcome) => report(reporter, &spec, outcome),
        Err(e) => reporter.send(
            TaskState::TaskFailed,
            e.to_string(),
            Some(Reason::ContainerLaunchFailed),
            Vec::new(),
        ),
    }
}

/// Reads the module or component `value` names in a sandbox: a relative path that
/// stays inside it, and no larger than any program may be.
pub(super) fn read_program(dir: &Path, value: &str) -> Result<Vec<u8>, String> {
    let relative = Path::new(value);
    if value.is_empty()
        || !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(format!(
            "command.value {value:?} must name a file inside the sandbox (fetch it with command.uris)"
        ));
    }
    let path = dir.join(relative);
    let size = std::fs::metadata(&path)
        .map_err(|e| format!("cannot read {value}: {e}"))?
        .len();
    if size > MAX_MODULE_BYTES {
        return Err(format!(
            "{value} is {size} bytes; the limit is {MAX_MODULE_BYTES}"
        ));
    }
    std::fs::read(&path).map_err(|e| format!("cannot read {value}: {e}"))
}

/// The linear memory and sandbox bytes a task's (or executor's) resources allow,
/// with defaults for what they do not name: never unlimited.
pub(super) fn caps(resources: &[cairn_api::v1::Resource]) -> Result<(usize, u64), String> {
    let resources = Resources::from_proto(resources).map_err(|e| e.to_string())?;
    let mem_mb = if resources.mem() > 0.0 {
        resources.mem()
    } else {
        DEFAULT_MEM_MB
    };
    let disk_mb = if resources.disk() > 0.0 {
        resources.disk()
    } else {
        DEFAULT_DISK_MB
    };
    Ok((
        (mem_mb * 1024.0 * 1024.0) as usize,
        (disk_mb * 1024.0 * 1024.0) as u64,
    ))
}

/// The sha256 the fetcher cache recorded for the file `value` names, if it placed it.
fn cached_digest(cached: &[CachedFile], value: &str) -> Option<[u8; 32]> {
    cached
        .iter()
        .find(|f| f.name == value)
        .and_then(|f| f.sha256.as_slice().try_into().ok())
}

fn fuel_of(task: &TaskInfo) -> Option<u64> {
    task.container
        .as_ref()
        .and_then(|c| c.wasm.as_ref())
        .and_then(|w| w.fuel)
}

/// The task ready to run without touching its module file: its module came from the
/// fetcher cache and this process has compiled it before.
fn linked(
    sandbox: &Sandbox,
    task: &TaskInfo,
    dir: &Path,
    cached: &[CachedFile],
) -> Option<Result<(cairn_sandbox::Program, RunSpec), String>> {
    let value = task.command.as_ref()?.value.as_deref()?;
    let digest = cached_digest(cached, value)?;
    let program = sandbox.linked(&digest, fuel_of(task).is_some())?;
    Some(spec(task, dir, program))
}

/// Reads and compiles the module and turns the task into a [`RunSpec`]; every error
/// is a message for the task's TASK_FAILED.
fn prepare(
    sandbox: &Sandbox,
    task: &TaskInfo,
    dir: &Path,
    cached: &[CachedFile],
) -> Result<(cairn_sandbox::Program, RunSpec), String> {
    let command = task
        .command
        .as_ref()
        .ok_or("a wasm task needs `command.value` naming its module")?;
    let value = command.value.clone().unwrap_or_default();
    let bytes = read_program(dir, &value)?;
    if let Some(digest) = cached_digest(cached, &value) {
        let actual: [u8; 32] = sha2::Sha256::digest(&bytes).into();
        if actual != digest {
            return Err(format!(
                "{value} no longer matches the fetcher cache's digest of it; refusing to run it"
            ));
        }
    }
    // Only a task with a fuel budget pays for metering.
    let program = sandbox
        .compile(&bytes, fuel_of(task).is_some())
        .map_err(|e| format!("{value}: {e}"))?;
    spec(task, dir, program)
}

/// The task's [`RunSpec`] for a program already compiled.
fn spec(
    task: &TaskInfo,
    dir: &Path,
    program: cairn_sandbox::Program,
) -> Result<(cairn_sandbox::Program, RunSpec), String> {
    let command = task
        .command
        .as_ref()
        .ok_or("a wasm task needs `command.value` naming its module")?;
    let value = command.value.clone().unwrap_or_default();
    let fuel = fuel_of(task);
    if program.kind() != ProgramKind::Command {
        return Err(format!(
            "{value} is a custom executor, not a command: name it in the task's `executor`"
        ));
    }
    let (memory_bytes, disk_bytes) = caps(&task.resources)?;
    let args = if command.arguments.is_empty() {
        vec![value.clone()]
    } else {
        command.arguments.clone()
    };
    // What Mesos' executors set, as seen from inside the sandbox.
    let mut env = vec![
        ("MESOS_SANDBOX".to_owned(), "/".to_owned()),
        (
            "MESOS_TASK_ID".to_owned(),
            task.task_id.clone().unwrap_or_default().value,
        ),
    ];
    if let Some(e) = command.environment.as_ref() {
        env.extend(
            e.variables
                .iter()
                .map(|v| (v.name.clone(), v.value.clone())),
        );
    }
    let timeout = task
        .max_completion_time
        .as_ref()
        .filter(|d| d.nanoseconds > 0)
        .map(|d| Duration::from_nanos(d.nanoseconds as u64));
    let spec = RunSpec {
        args,
        env,
        sandbox_dir: dir.to_path_buf(),
        stdout: dir.join("stdout"),
        stderr: dir.join("stderr"),
        memory_bytes,
        fuel,
        timeout,
        disk_bytes,
    };
    Ok((program, spec))
}

pub(super) fn label(key: &str, value: impl ToString) -> Label {
    Label {
        key: key.to_owned(),
        value: value.to_string(),
    }
}

/// Maps how the run ended onto a Mesos state, reason and message, with usage as labels.
fn report(reporter: &Reporter, spec: &RunSpec, outcome: RunOutcome) {
    let mut labels = vec![
        label("cairn.usage.fuel_consumed", outcome.usage.fuel_consumed),
        label(
            "cairn.usage.peak_memory_bytes",
            outcome.usage.peak_memory_bytes,
        ),
        label(
            "cairn.usage.wall_time_ms",
            outcome.usage.wall_time.as_millis(),
        ),
    ];
    let (state, message, reason) = match outcome.exit {
        Exit::Code(0) => {
            labels.push(label("cairn.exit_code", 0));
            (
                TaskState::TaskFinished,
                "Command exited with status 0".to_owned(),
                None,
            )
        }
        Exit::Code(code) => {
            labels.push(label("cairn.exit_code", code));
            (
                TaskState::TaskFailed,
                format!("Command exited with status {code}"),
                Some(Reason::CommandExecutorFailed),
            )
        }
        Exit::Limit(Limit::Memory) => (
            TaskState::TaskFailed,
            format!(
                "Memory limit exceeded: the task may use {} bytes of linear memory",
                spec.memory_bytes
            ),
            Some(Reason::ContainerLimitationMemory),
        ),
        Exit::Limit(Limit::Fuel) => (
            TaskState::TaskFailed,
            format!(
                "Fuel exhausted: the task's budget was {}",
                spec.fuel.unwrap_or_default()
            ),
            Some(Reason::ContainerLimitationFuel),
        ),
        Exit::Limit(Limit::Time) => (
            TaskState::TaskFailed,
            format!(
                "Task exceeded its max_completion_time of {}",
                humantime::format_duration(spec.timeout.unwrap_or_default())
            ),
            Some(Reason::MaxCompletionTimeReached),
        ),
        Exit::Limit(Limit::Disk) => (
            TaskState::TaskFailed,
            format!(
                "Disk limit exceeded: the sandbox may hold {} bytes, stdout and stderr included",
                spec.disk_bytes
            ),
            Some(Reason::ContainerLimitationDisk),
        ),
        Exit::Killed => (TaskState::TaskKilled, "Task killed".to_owned(), None),
        Exit::Trap(trap) => (
            TaskState::TaskFailed,
            format!("wasm trap: {trap}"),
            Some(Reason::CommandExecutorFailed),
        ),
    };
    reporter.send(state, message, reason, labels);
}
