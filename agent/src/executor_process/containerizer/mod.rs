//! Containerizers: how a task's container is started, awaited, killed and measured,
//! whatever runs in it. The executor process picks one per task by the task's
//! `container.type`, as Mesos does: WASM is a wasmtime instance in this process,
//! DOCKER a container of the local engine, and MESOS (or none) a native process in
//! its own cgroup.

pub mod docker;
pub mod native;
pub mod wasm;

use std::path::PathBuf;
use std::time::Duration;

use cairn_api::internal::CompiledProgram;
use cairn_api::v1::{Label, TaskInfo, TaskState, container_info, task_status::Reason};

/// Everything a containerizer is given to start one task.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub framework_id: String,
    pub task: TaskInfo,
    /// The task's sandbox, already holding its fetched URIs.
    pub sandbox: PathBuf,
    /// Its wasm programs, as the agent compiled them.
    pub programs: Vec<CompiledProgram>,
    /// Who the task runs as (the agent resolved it; `switch` when that is not the
    /// executor's own user).
    pub user: crate::user::TaskUser,
}

impl LaunchSpec {
    pub fn task_id(&self) -> String {
        self.task.task_id.clone().unwrap_or_default().value
    }

    /// The task's `max_completion_time`, if it set one.
    pub fn max_completion_time(&self) -> Option<Duration> {
        self.task
            .max_completion_time
            .as_ref()
            .filter(|d| d.nanoseconds > 0)
            .map(|d| Duration::from_nanos(d.nanoseconds as u64))
    }
}

/// How a container ended, in Mesos' terms: the task's terminal update.
#[derive(Debug, Clone)]
pub struct Termination {
    pub state: TaskState,
    pub message: String,
    pub reason: Option<Reason>,
    /// What the task used (`cairn.usage.*`) and how it exited (`cairn.exit_code`).
    pub labels: Vec<Label>,
}

impl Termination {
    pub fn new(state: TaskState, message: impl Into<String>, reason: Option<Reason>) -> Self {
        Self {
            state,
            message: message.into(),
            reason,
            labels: Vec::new(),
        }
    }

    /// A process's exit status as Mesos' command executor reports it.
    pub fn exit_code(code: i64) -> Self {
        let mut t = if code == 0 {
            Self::new(
                TaskState::TaskFinished,
                "Command exited with status 0",
                None,
            )
        } else {
            Self::new(
                TaskState::TaskFailed,
                format!("Command exited with status {code}"),
                Some(Reason::CommandExecutorFailed),
            )
        };
        t.labels.push(label("cairn.exit_code", code));
        t
    }

    pub fn killed() -> Self {
        Self::new(TaskState::TaskKilled, "Task killed", None)
    }

    pub fn launch_failed(message: impl Into<String>) -> Self {
        Self::new(
            TaskState::TaskFailed,
            message,
            Some(Reason::ContainerLaunchFailed),
        )
    }

    pub fn out_of_memory(limit_bytes: u64) -> Self {
        Self::new(
            TaskState::TaskFailed,
            format!("Memory limit exceeded: the container may use {limit_bytes} bytes"),
            Some(Reason::ContainerLimitationMemory),
        )
    }

    pub fn timed_out(limit: Duration) -> Self {
        Self::new(
            TaskState::TaskFailed,
            format!(
                "Task exceeded its max_completion_time of {}",
                humantime::format_duration(limit)
            ),
            Some(Reason::MaxCompletionTimeReached),
        )
    }
}

pub fn label(key: &str, value: impl ToString) -> Label {
    Label {
        key: key.to_owned(),
        value: value.to_string(),
    }
}

/// Why a container could not start: its TASK_FAILED (`REASON_CONTAINER_LAUNCH_FAILED`)
/// carries the text. The task's own description comes first; then what each runtime
/// could not do, in its words.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("unknown container type {0}")]
    UnknownContainerType(i32),
    #[error(transparent)]
    Resources(#[from] cairn_api::ResourcesError),
    #[error("the task has no command to run")]
    NoCommand,
    #[error("command.value is empty: it names what the task runs")]
    EmptyCommand,
    /// The wasm runtime could not prepare the task's module.
    #[error("{0}")]
    Wasm(String),
    /// The native process could not be set up: its cgroup, user, files or spawn.
    #[error("{0}")]
    Native(String),
    /// The Docker engine refused or failed a step.
    #[error("{0}")]
    Docker(String),
}

/// What a running container uses now, for metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub cpu_time: Duration,
    pub memory_bytes: u64,
    pub processes: u64,
}

/// One implementation per kind of container. A containerizer owns the containers it
/// started, by task id; every method is safe to call for a task it does not know.
#[async_trait::async_trait]
pub trait Containerizer: Send + Sync + 'static {
    /// Starts the task's container. Returns once what the task runs has started (its
    /// TASK_RUNNING), or why it could not start, for TASK_FAILED with
    /// `REASON_CONTAINER_LAUNCH_FAILED`.
    async fn launch(&self, spec: &LaunchSpec) -> Result<(), LaunchError>;

    /// Waits for the container to end; its terminal update. Called once per launch.
    async fn wait(&self, task_id: &str) -> Termination;

    /// Asks the container to stop (SIGTERM or its equivalent), then kills everything
    /// in it once `grace` has passed. Returns at once; `wait` reports the end.
    async fn kill(&self, task_id: &str, grace: Duration);

    /// Re-attaches containers a previous executor of this framework left running
    /// (or, for Docker, that ended since with a status still to report), returning
    /// their task ids; the rest of what it left is removed.
    async fn recover(&self, framework_id: &str) -> Vec<String>;

    /// `recover`, for an executor that goes on with what it re-attaches (the agent
    /// hosting it restarted): an error when what was left cannot be listed, so its
    /// tasks are not taken for gone (and launched again) while their containers run.
    async fn reattach(&self, framework_id: &str) -> Result<Vec<String>, LaunchError> {
        Ok(self.recover(framework_id).await)
    }

    /// Lets go of an ended container once its terminal update is acknowledged:
    /// Docker's is removed then, so an agent restart before that finds it, and its
    /// end is reported again rather than its task launched again.
    async fn release(&self, _task_id: &str) {}

    /// For a task `recover` re-attached: the time left to its `max_completion_time`
    /// and that limit, if it set one and the containerizer kept it.
    fn completion_deadline(&self, _task_id: &str) -> Option<(Duration, Duration)> {
        None
    }

    /// What the container uses now; `None` once it is gone (or for wasm, whose usage
    /// is reported at the end).
    async fn usage(&self, task_id: &str) -> Option<Usage>;

    /// Whether the containerizer itself ends a task at its `max_completion_time`
    /// (the wasm sandbox does, to the epoch tick); otherwise the executor kills it.
    fn enforces_completion_time(&self) -> bool {
        false
    }
}

/// Which containerizer runs a task: its `container.type`, absent meaning MESOS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Wasm,
    Native,
    Docker,
}

impl Kind {
    pub fn of(task: &TaskInfo) -> Result<Kind, LaunchError> {
        let kind = task
            .container
            .as_ref()
            .map(|c| c.r#type)
            .unwrap_or_default();
        match container_info::Type::try_from(kind) {
            Ok(container_info::Type::Wasm) => Ok(Kind::Wasm),
            Ok(container_info::Type::Docker) => Ok(Kind::Docker),
            Ok(container_info::Type::Mesos | container_info::Type::Unset) => Ok(Kind::Native),
            Err(_) => Err(LaunchError::UnknownContainerType(kind)),
        }
    }
}

/// The task's resources' caps, with defaults for what they do not name: nothing
/// runs unlimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub cpus: f64,
    pub mem_bytes: u64,
    pub disk_bytes: u64,
}

/// A task that names no `cpus` gets this share.
const DEFAULT_CPUS: f64 = 0.1;
/// Memory for a native or Docker task that names no `mem`.
const DEFAULT_MEM_MB: f64 = 64.0;
const DEFAULT_DISK_MB: f64 = 1024.0;

impl Limits {
    /// The caps of a task that names no resources.
    pub const DEFAULT: Limits = Limits {
        cpus: DEFAULT_CPUS,
        mem_bytes: (DEFAULT_MEM_MB as u64) << 20,
        disk_bytes: (DEFAULT_DISK_MB as u64) << 20,
    };

    pub fn of(task: &TaskInfo) -> Result<Limits, LaunchError> {
        Self::from_resources(&task.resources)
    }

    /// The caps of a task's or a custom executor's resources.
    pub fn from_resources(resources: &[cairn_api::v1::Resource]) -> Result<Limits, LaunchError> {
        let r = cairn_api::Resources::from_proto(resources)?;
        let or = |v: f64, d: f64| if v > 0.0 { v } else { d };
        Ok(Limits {
            cpus: or(r.cpus(), DEFAULT_CPUS),
            mem_bytes: (or(r.mem(), DEFAULT_MEM_MB) * 1024.0 * 1024.0) as u64,
            disk_bytes: (or(r.disk(), DEFAULT_DISK_MB) * 1024.0 * 1024.0) as u64,
        })
    }
}

/// The task's environment as Mesos' executors set it, `sandbox` as the task sees it.
pub fn environment(spec: &LaunchSpec, sandbox: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("MESOS_SANDBOX".to_owned(), sandbox.to_owned()),
        ("MESOS_TASK_ID".to_owned(), spec.task_id()),
        ("MESOS_FRAMEWORK_ID".to_owned(), spec.framework_id.clone()),
    ];
    if let Some(e) = spec
        .task
        .command
        .as_ref()
        .and_then(|c| c.environment.as_ref())
    {
        env.extend(
            e.variables
                .iter()
                .map(|v| (v.name.clone(), v.value.clone())),
        );
    }
    env
}

/// What a task executes: `program` with `argv` (argv[0] included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    pub program: String,
    pub argv: Vec<String>,
}

/// The task's command as Mesos runs it: `/bin/sh -c value` when `command.shell` is
/// true or absent (Mesos' default); otherwise `value` is the executable and
/// `arguments` its whole argv, argv[0] included (just `[value]` when empty).
pub fn exec(task: &TaskInfo) -> Result<Exec, LaunchError> {
    let command = task.command.as_ref().ok_or(LaunchError::NoCommand)?;
    let value = command.value.clone().unwrap_or_default();
    if value.is_empty() {
        return Err(LaunchError::EmptyCommand);
    }
    if command.shell.unwrap_or(true) {
        return Ok(Exec {
            program: "/bin/sh".into(),
            argv: vec!["/bin/sh".into(), "-c".into(), value],
        });
    }
    let argv = if command.arguments.is_empty() {
        vec![value.clone()]
    } else {
        command.arguments.clone()
    };
    Ok(Exec {
        program: value,
        argv,
    })
}

/// The linear memory and sandbox bytes a task's (or executor's) resources allow,
/// with defaults for what they do not name: never unlimited.
pub(crate) fn caps(resources: &[cairn_api::v1::Resource]) -> Result<(usize, u64), LaunchError> {
    let limits = Limits::from_resources(resources)?;
    Ok((limits.mem_bytes as usize, limits.disk_bytes))
}
