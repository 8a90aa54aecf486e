//! Containerizers: how a task's container is started, awaited, killed and measured,
//! whatever runs in it. The executor process picks one per task by the task's
//! `container.type`, as Mesos does: WASM is a wasmtime instance in this process,
//! DOCKER a container of the local engine, and MESOS (or none) a native process in
//! its own cgroup.

pub mod docker;
pub mod native;
pub mod wasm;

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use cairn_api::internal::CachedFile;
use cairn_api::v1::{Label, TaskInfo, TaskState, container_info, task_status::Reason};

/// Everything a containerizer is given to start one task.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub framework_id: String,
    pub task: TaskInfo,
    /// The task's sandbox, already holding its fetched URIs.
    pub sandbox: PathBuf,
    /// Files the fetcher placed from its cache, with their digests.
    pub cached: Vec<CachedFile>,
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
    #[error(
        "command.value {value:?} must name a file inside the sandbox (fetch it with command.uris)"
    )]
    ProgramOutsideSandbox { value: String },
    #[error("cannot read {value}: {error}")]
    ProgramUnreadable {
        value: String,
        error: std::io::Error,
    },
    #[error("{value} is {size} bytes; the limit is {limit}")]
    ProgramTooLarge {
        value: String,
        size: u64,
        limit: u64,
    },
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

    /// Re-attaches containers a previous executor process of this framework left
    /// running, returning their task ids; the rest of what it left is removed.
    async fn recover(&self, framework_id: &str) -> Vec<String>;

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

/// No task module may be larger than this.
const MAX_MODULE_BYTES: u64 = 256 << 20;

/// Reads the module or component `value` names in a sandbox: a relative path that
/// stays inside it, no larger than any program may be, opened beneath the sandbox
/// following no link. Two of the fetcher's own placements are let through, each only
/// when the bytes match the digest the fetcher gave (`cached`), so they can only ever
/// yield bytes the task was given: a hard link to a cached file (a read-only view),
/// and, from sandboxes placed before those, a symlink to a file named by its sha256.
/// A file placed from the cache must match its digest whatever it is.
pub(crate) fn read_program(
    dir: &Path,
    value: &str,
    cached: Option<[u8; 32]>,
) -> Result<Vec<u8>, LaunchError> {
    use sha2::Digest as _;
    use std::io::Read as _;
    let relative = Path::new(value);
    if value.is_empty()
        || !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(LaunchError::ProgramOutsideSandbox {
            value: value.to_owned(),
        });
    }
    let unreadable = |error| LaunchError::ProgramUnreadable {
        value: value.to_owned(),
        error,
    };
    let sandbox = cairn_sandbox::SandboxDir::open(dir).map_err(|e| unreadable(e.into()))?;
    let file = match (sandbox.open_file(relative), cached) {
        (Ok(file), _) => file,
        (Err(cairn_sandbox::SandboxDirError::Link { .. }), _) => {
            return read_cached(&dir.join(relative)).map_err(unreadable);
        }
        // Checked against the digest below; an executor that is not root reads
        // only what its tasks' user may read anyway.
        (Err(cairn_sandbox::SandboxDirError::HardLinked { .. }), digest)
            if digest.is_some() || !nix::unistd::geteuid().is_root() =>
        {
            sandbox
                .open_linked_file(relative)
                .map_err(|e| unreadable(e.into()))?
        }
        (Err(e), _) => return Err(unreadable(e.into())),
    };
    let size = file.metadata().map_err(unreadable)?.len();
    if size > MAX_MODULE_BYTES {
        return Err(LaunchError::ProgramTooLarge {
            value: value.to_owned(),
            size,
            limit: MAX_MODULE_BYTES,
        });
    }
    // Bounded whatever the file claimed: one still growing stops here too.
    let mut bytes = Vec::new();
    file.take(MAX_MODULE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_MODULE_BYTES {
        return Err(LaunchError::ProgramTooLarge {
            value: value.to_owned(),
            size: bytes.len() as u64,
            limit: MAX_MODULE_BYTES,
        });
    }
    if let Some(digest) = cached
        && sha2::Sha256::digest(&bytes).as_slice() != digest
    {
        return Err(LaunchError::Wasm(format!(
            "{value} no longer matches the fetcher cache's digest of it; refusing to run it"
        )));
    }
    Ok(bytes)
}

/// Reads what a link into the fetcher cache points at: a regular file named by the
/// hex sha256 of its content (not itself a link), no larger than a program may be,
/// whose bytes match that name.
fn read_cached(link: &Path) -> std::io::Result<Vec<u8>> {
    use sha2::Digest as _;
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let refused =
        |why: &str| std::io::Error::other(format!("{why}; links in a sandbox are never followed"));
    let target = std::fs::read_link(link)?;
    let digest = target
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| n.len() == 64)
        .and_then(|n| hex::decode(n).ok())
        .ok_or_else(|| refused("a link, not to a file of the fetcher cache"))?;
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOFOLLOW)
        .open(&target)?;
    if !file.metadata()?.is_file() {
        return Err(refused("a link to something other than a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_MODULE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_MODULE_BYTES || sha2::Sha256::digest(&bytes).as_slice() != digest {
        return Err(refused("a link to a file that does not match its digest"));
    }
    Ok(bytes)
}

/// The linear memory and sandbox bytes a task's (or executor's) resources allow,
/// with defaults for what they do not name: never unlimited.
pub(crate) fn caps(resources: &[cairn_api::v1::Resource]) -> Result<(usize, u64), LaunchError> {
    let limits = Limits::from_resources(resources)?;
    Ok((limits.mem_bytes as usize, limits.disk_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    #[test]
    fn a_program_is_read_beneath_its_sandbox_and_only_a_cache_link_is_followed() {
        let sandbox = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        std::fs::write(sandbox.path().join("own.wasm"), b"\0asm own").unwrap();
        assert_eq!(
            read_program(sandbox.path(), "own.wasm", None).unwrap(),
            b"\0asm own"
        );
        // The fetcher's link: to a file named by its content's digest.
        let bytes = b"\0asm cached".to_vec();
        let entry = cache.path().join(hex::encode(sha2::Sha256::digest(&bytes)));
        std::fs::write(&entry, &bytes).unwrap();
        std::os::unix::fs::symlink(&entry, sandbox.path().join("cached.wasm")).unwrap();
        assert_eq!(
            read_program(sandbox.path(), "cached.wasm", None).unwrap(),
            bytes
        );
        // A link to anything else, or to a digest-named file that does not match it.
        std::os::unix::fs::symlink("/etc/passwd", sandbox.path().join("passwd.wasm")).unwrap();
        let forged = cache.path().join("ab".repeat(32));
        std::fs::write(&forged, b"not what the name says").unwrap();
        std::os::unix::fs::symlink(&forged, sandbox.path().join("forged.wasm")).unwrap();
        std::os::unix::fs::symlink(&entry, sandbox.path().join("dir")).unwrap();
        for name in ["passwd.wasm", "forged.wasm", "../own.wasm", "/etc/passwd"] {
            let err = read_program(sandbox.path(), name, None)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("links in a sandbox are never followed")
                    || err.contains("must stay inside")
                    || err.contains("inside the sandbox"),
                "{name}: {err}"
            );
        }
    }
}
