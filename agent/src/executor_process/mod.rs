//! The executor process (`cairn executor`): hosts one framework's wasm tasks on this
//! agent as wasmtime instances on one async runtime (thousands at once), plus the
//! framework's custom executors (`custom`), and speaks the executor API to its
//! agent. It outlives its agent: when the socket drops it keeps its tasks running
//! and re-subscribes, giving up only after the recovery timeout.
//!
//! The same code runs inside the agent, hosted (see [`HostedLink`]), for a
//! framework's Docker tasks: their containers are the Docker Engine's, whose socket
//! no executor process is given.

mod agent_link;
pub mod containerizer;
mod custom_executor;
mod task;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cairn_api::internal::{ExecutorEvent, ExecutorShutdown, executor_event};
use cairn_api::v1::{TaskId, TaskStatus};
use cairn_sandbox::{Sandbox, SandboxConfig};
use tokio::sync::mpsc;

use crate::error::ExecutorError;

#[derive(Debug, Clone)]
pub struct ExecutorArgs {
    pub agent_socket: PathBuf,
    pub framework_id: String,
    pub executor_id: String,
    pub directory: PathBuf,
    pub recovery_timeout: Duration,
    /// The agent's artifacts directory: the programs it compiled for this
    /// executor's wasm tasks (none for a Docker executor).
    pub artifacts: Option<PathBuf>,
    /// The bound on each call into a custom executor.
    pub custom_call_timeout: Duration,
    /// Where native tasks' cgroups go, under each hierarchy's mount.
    pub cgroups_root: String,
    /// Namespaces native tasks get of their own (`ipc`, `mount`, `network`).
    pub native_namespaces: Vec<String>,
    /// The container types it runs (`wasm`, `native`, `docker`).
    pub containerizers: Vec<String>,
    /// Docker tasks get HOST networking without `ports` resources too.
    pub docker_host_network_always: bool,
    /// Hosted by the agent, in its own process: how it reaches the agent. `None`: an
    /// executor process of its own, reaching it through `agent_socket`.
    pub hosted: Option<HostedLink>,
    /// What it proves itself with when it subscribes (see `crate::executor_token`).
    pub authentication_token: String,
}

/// How an executor hosted by the agent connects to it: `connect` gives one end of a
/// fresh socket pair, whose other end the agent serves as it serves a connection
/// to its socket, so the two speak the executor API exactly as over the socket.
#[derive(Clone)]
pub struct HostedLink {
    pub connect: Arc<dyn Fn() -> std::io::Result<tokio::net::UnixStream> + Send + Sync>,
    /// Hosted again by an agent that restarted: the containers its tasks run in
    /// outlived the last agent and are re-attached, not stopped.
    pub recover: bool,
}

impl std::fmt::Debug for HostedLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostedLink")
            .field("recover", &self.recover)
            .finish_non_exhaustive()
    }
}

/// How long a shut-down executor waits for its killed tasks to report.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often the executor tells the agent it is alive.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// A kill's grace period when the task's kill policy names none (Mesos' default).
const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(3);
/// Status updates sent to the agent in one write at most.
const MAX_UPDATE_BATCH: usize = 256;
/// Tasks one executor process may run at once (instance slots it reserves).
const MAX_TASKS: u32 = 10_000;

/// Who runs a task: a container of this process's (a command) or one of its custom
/// executors.
enum Running {
    Command(task::KillSender, Arc<dyn containerizer::Containerizer>),
    Custom(String),
}

/// The containerizers this executor runs, one per `container.type`.
struct Containerizers {
    wasm: Option<Arc<dyn containerizer::Containerizer>>,
    native: Option<Arc<dyn containerizer::Containerizer>>,
    docker: Option<Arc<dyn containerizer::Containerizer>>,
}

impl Containerizers {
    /// Those `args` names; wasm's with `sandbox`, the wasm runtime.
    fn new(args: &ExecutorArgs, sandbox: Option<&Arc<Sandbox>>) -> Self {
        let runs = |kind: &str| args.containerizers.iter().any(|c| c == kind);
        let wasm = sandbox.filter(|_| runs("wasm")).map(|sandbox| {
            Arc::new(containerizer::wasm::WasmContainerizer::new(
                sandbox.clone(),
                args.artifacts.clone().unwrap_or_default(),
            )) as Arc<dyn containerizer::Containerizer>
        });
        let native = runs("native").then(|| {
            Arc::new(containerizer::native::NativeContainerizer::new(
                args.cgroups_root.clone(),
                &args.native_namespaces,
            )) as Arc<dyn containerizer::Containerizer>
        });
        let docker = runs("docker").then(|| {
            Arc::new(containerizer::docker::DockerContainerizer::new(
                args.docker_host_network_always,
            )) as Arc<dyn containerizer::Containerizer>
        });
        Self {
            wasm,
            native,
            docker,
        }
    }

    fn of(&self, kind: containerizer::Kind) -> Option<Arc<dyn containerizer::Containerizer>> {
        match kind {
            containerizer::Kind::Wasm => self.wasm.clone(),
            containerizer::Kind::Native => self.native.clone(),
            containerizer::Kind::Docker => self.docker.clone(),
        }
    }

    /// Removes what a previous executor of this framework left running: its tasks
    /// were already failed when it died.
    async fn clean_up(&self, framework_id: &str) {
        for c in [&self.native, &self.docker].into_iter().flatten() {
            for task_id in c.recover(framework_id).await {
                tracing::warn!(task_id, "stopping a container a dead executor left");
                c.kill(&task_id, Duration::ZERO).await;
                c.wait(&task_id).await;
                c.release(&task_id).await;
            }
        }
    }
}

/// Stops and removes every container framework `framework_id`'s Docker tasks left:
/// its hosted executor ended without stopping them.
pub(crate) async fn stop_docker_containers(framework_id: &str) {
    let docker = containerizer::docker::DockerContainerizer::new(false);
    let containerizers = Containerizers {
        wasm: None,
        native: None,
        docker: Some(Arc::new(docker)),
    };
    containerizers.clean_up(framework_id).await;
}

struct Executor {
    args: ExecutorArgs,
    /// The wasm runtime, for an executor of wasm tasks and custom executors.
    sandbox: Option<Arc<Sandbox>>,
    containerizers: Containerizers,
    running: HashMap<String, Running>,
    /// Custom executors by executor id.
    customs: HashMap<String, custom_executor::CustomExecutor>,
    messages: mpsc::UnboundedSender<(String, Vec<u8>)>,
    died: mpsc::UnboundedSender<String>,
    /// Every run (container id) this executor ever started: a run starts at most
    /// once, whatever the agent resends.
    started: std::collections::HashSet<String>,
    /// Each running task's run, and each sent terminal update's run: once the agent
    /// has that update, it never sends the run again, and the run leaves `started`.
    runs: HashMap<String, String>,
    ending: HashMap<Vec<u8>, String>,
    /// Ended containers, by their terminal update's uuid: released (see
    /// [`containerizer::Containerizer::release`]) once the agent acknowledges it.
    releasing: HashMap<Vec<u8>, (String, Arc<dyn containerizer::Containerizer>)>,
    /// Updates sent but not yet acknowledged, resent after a re-subscription.
    unacked: agent_link::Unacked,
    statuses: mpsc::UnboundedSender<TaskStatus>,
}

/// Runs the executor process until it is shut down, or its agent stays away past the
/// recovery timeout.
pub async fn run_executor(args: ExecutorArgs) -> Result<(), ExecutorError> {
    // Its instance slots and epoch thread are for wasm: a Docker executor, hosted
    // in the agent, has none.
    let sandbox = match args.containerizers.iter().any(|c| c == "wasm") {
        true => Some(Sandbox::new(sandbox_config()).map_err(ExecutorError::Sandbox)?),
        false => None,
    };
    let (statuses, status_rx) = mpsc::unbounded_channel();
    let (messages, message_rx) = mpsc::unbounded_channel();
    let (died, died_rx) = mpsc::unbounded_channel();
    let containerizers = Containerizers::new(&args, sandbox.as_ref());
    let recover = args.hosted.as_ref().is_some_and(|h| h.recover);
    if !recover {
        containerizers.clean_up(&args.framework_id).await;
    }
    let mut executor = Executor {
        args,
        sandbox,
        containerizers,
        running: HashMap::new(),
        customs: HashMap::new(),
        messages,
        died,
        started: std::collections::HashSet::new(),
        runs: HashMap::new(),
        ending: HashMap::new(),
        releasing: HashMap::new(),
        unacked: agent_link::Unacked::default(),
        statuses,
    };
    if recover {
        executor.adopt().await?;
    }
    executor
        .serve(agent_link::Inbound {
            statuses: status_rx,
            messages: message_rx,
            died: died_rx,
        })
        .await
}

/// The wasm sandbox's settings: instance slots for as many tasks as one executor
/// runs. It compiles nothing: its programs are the agent's artifacts.
fn sandbox_config() -> SandboxConfig {
    SandboxConfig {
        max_instances: MAX_TASKS,
        ..SandboxConfig::default()
    }
}

/// A status update the executor process itself reports for a task.
fn status(
    task_id: &str,
    state: cairn_api::v1::TaskState,
    message: String,
    reason: Option<cairn_api::v1::task_status::Reason>,
) -> TaskStatus {
    TaskStatus {
        task_id: Some(TaskId {
            value: task_id.to_owned(),
        }),
        state: state as i32,
        message,
        reason: reason.map(|r| r as i32),
        uuid: cairn_api::ids::new_update_uuid(),
        timestamp: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default(),
        ..Default::default()
    }
}

impl Executor {
    /// Follows again the Docker containers that outlived the agent hosting this
    /// executor (it subscribes holding their tasks).
    async fn adopt(&mut self) -> Result<(), ExecutorError> {
        let Some(docker) = self.containerizers.docker.clone() else {
            return Ok(());
        };
        let reattached = (docker.reattach(&self.args.framework_id).await)
            .map_err(|e| ExecutorError::Reattach(e.to_string()))?;
        for task_id in reattached {
            let kill = task::adopt(docker.clone(), task_id.clone(), self.statuses.clone());
            self.running
                .insert(task_id, Running::Command(kill, docker.clone()));
        }
        Ok(())
    }

    /// Handles one event from the agent; returns true when asked to shut down.
    fn on_event(&mut self, event: ExecutorEvent) -> bool {
        match event.event {
            Some(executor_event::Event::Subscribed(_)) => {
                tracing::info!("subscribed to the agent");
            }
            Some(executor_event::Event::Launch(launch)) => self.launch(launch),
            Some(executor_event::Event::LaunchGroup(group)) => {
                tracing::info!(tasks = group.tasks.len(), "task group launched");
                for launch in group.tasks {
                    self.launch(launch);
                }
            }
            Some(executor_event::Event::Kill(kill)) => self.kill(kill),
            Some(executor_event::Event::Acknowledged(ack)) => {
                self.unacked.remove(&ack.uuid);
                if let Some(run) = self.ending.remove(&ack.uuid) {
                    self.started.remove(&run);
                }
                if let Some((task_id, containerizer)) = self.releasing.remove(&ack.uuid) {
                    tokio::spawn(async move { containerizer.release(&task_id).await });
                }
            }
            Some(executor_event::Event::Message(m)) => {
                let target = m.executor_id.as_ref().map(|e| e.value.as_str());
                match target.and_then(|id| self.customs.get(id)) {
                    Some(custom) => custom.send(custom_executor::CustomCall::Message(m.data)),
                    // Plain WASI commands have no way to receive one.
                    None => tracing::info!(
                        bytes = m.data.len(),
                        executor_id = target.unwrap_or(""),
                        taken = false,
                        "framework message received"
                    ),
                }
            }
            Some(executor_event::Event::Shutdown(ExecutorShutdown {
                executor_id: Some(id),
            })) => {
                tracing::info!(executor_id = id.value, "custom executor shutdown requested");
                if let Some(custom) = self.customs.remove(&id.value) {
                    custom.send(custom_executor::CustomCall::Shutdown);
                }
            }
            Some(executor_event::Event::Shutdown(_)) => {
                tracing::info!("shutdown requested; killing all tasks");
                self.kill_all();
                return true;
            }
            None => {}
        }
        false
    }

    /// Kills a task, as its kill policy says (or with Mesos' default grace).
    fn kill(&mut self, kill: cairn_api::internal::ExecutorKill) {
        let task_id = kill.task_id.unwrap_or_default().value;
        let Some(running) = self.running.get(&task_id) else {
            return;
        };
        if kill.report_killing {
            let _ = self.statuses.send(status(
                &task_id,
                cairn_api::v1::TaskState::TaskKilling,
                "killing the task".into(),
                None,
            ));
        }
        let grace = kill
            .kill_policy
            .and_then(|p| p.grace_period)
            .filter(|d| d.nanoseconds >= 0)
            .map(|d| Duration::from_nanos(d.nanoseconds as u64))
            .unwrap_or(DEFAULT_KILL_GRACE);
        match running {
            Running::Command(kill, _) => {
                let _ = kill.send(grace);
            }
            // A custom executor is asked, and given the grace period.
            Running::Custom(executor_id) => {
                if let Some(custom) = self.customs.get(executor_id) {
                    custom.send(custom_executor::CustomCall::Kill { task_id, grace });
                }
            }
        }
    }

    /// A custom executor's actor died of a bug: its tasks fail, and the next task for
    /// it starts a new one.
    fn custom_died(&mut self, executor_id: &str) {
        self.customs.remove(executor_id);
        for (task_id, running) in &self.running {
            if matches!(running, Running::Custom(id) if id == executor_id) {
                let _ = self.statuses.send(status(
                    task_id,
                    cairn_api::v1::TaskState::TaskFailed,
                    format!("executor {executor_id} failed"),
                    Some(cairn_api::v1::task_status::Reason::ExecutorTerminated),
                ));
            }
        }
    }

    /// Kills every command task and shuts every custom executor down.
    fn kill_all(&self) {
        for running in self.running.values() {
            if let Running::Command(kill, _) = running {
                let _ = kill.send(DEFAULT_KILL_GRACE);
            }
        }
        for custom in self.customs.values() {
            custom.send(custom_executor::CustomCall::Shutdown);
        }
    }

    fn launch(&mut self, launch: cairn_api::internal::ExecutorLaunch) {
        let Some(task) = launch.task else {
            return;
        };
        let task_id = task.task_id.clone().unwrap_or_default().value;
        // One launch per run: a resent launch repeats its container id, while a
        // reused task id comes back as a new run (an old agent sends none: the task
        // id stands in).
        let run = Some(&launch.container_id)
            .filter(|c| !c.is_empty())
            .unwrap_or(&task_id);
        if !self.started.insert(run.clone()) || self.running.contains_key(&task_id) {
            tracing::warn!(task_id, "duplicate launch ignored");
            return;
        }
        self.runs.insert(task_id.clone(), run.clone());
        let Some(user) = launch.user.map(crate::user::TaskUser::from) else {
            let _ = self.statuses.send(status(
                &task_id,
                cairn_api::v1::TaskState::TaskFailed,
                "the agent named no user to run the task as".into(),
                Some(cairn_api::v1::task_status::Reason::ContainerLaunchFailed),
            ));
            return;
        };
        let sandbox = PathBuf::from(launch.sandbox_directory);
        if let Some(executor_id) = task
            .executor
            .as_ref()
            .and_then(|e| e.executor_id.as_ref())
            .map(|e| e.value.clone())
        {
            self.launch_custom(executor_id, task, launch.programs);
            return;
        }
        let containerizer = match self.containerizer_of(&task) {
            Ok(containerizer) => containerizer,
            Err(refused) => {
                let _ = self.statuses.send(status(
                    &task_id,
                    cairn_api::v1::TaskState::TaskFailed,
                    refused,
                    Some(cairn_api::v1::task_status::Reason::ContainerLaunchFailed),
                ));
                return;
            }
        };
        let spec = containerizer::LaunchSpec {
            framework_id: self.args.framework_id.clone(),
            task,
            sandbox,
            programs: launch.programs,
            user,
        };
        let kill = task::launch(containerizer.clone(), spec, self.statuses.clone());
        self.running
            .insert(task_id, Running::Command(kill, containerizer));
    }

    /// Hands a task to the framework's custom executor `executor_id`, started first
    /// if it is not running.
    fn launch_custom(
        &mut self,
        executor_id: String,
        task: cairn_api::v1::TaskInfo,
        programs: Vec<cairn_api::internal::CompiledProgram>,
    ) {
        let task_id = task.task_id.clone().unwrap_or_default().value;
        let Some(runtime) = &self.sandbox else {
            let _ = self.statuses.send(status(
                &task_id,
                cairn_api::v1::TaskState::TaskFailed,
                "this executor hosts no custom executors".into(),
                Some(cairn_api::v1::task_status::Reason::ContainerLaunchFailed),
            ));
            return;
        };
        let custom = self.customs.entry(executor_id.clone()).or_insert_with(|| {
            custom_executor::start(custom_executor::Context {
                sandbox: runtime.clone(),
                artifacts: self.args.artifacts.clone().unwrap_or_default(),
                executor_id: executor_id.clone(),
                directory: self.args.directory.clone(),
                statuses: self.statuses.clone(),
                messages: self.messages.clone(),
                died: self.died.clone(),
                call_timeout: self.args.custom_call_timeout,
            })
        });
        custom.send(custom_executor::CustomCall::Launch {
            task: Box::new(task),
            programs,
        });
        self.running.insert(task_id, Running::Custom(executor_id));
    }

    /// The containerizer a task asks for, if this executor runs that kind.
    fn containerizer_of(
        &self,
        task: &cairn_api::v1::TaskInfo,
    ) -> Result<Arc<dyn containerizer::Containerizer>, String> {
        let kind = containerizer::Kind::of(task).map_err(|e| e.to_string())?;
        self.containerizers.of(kind).ok_or_else(|| {
            let name = format!("{kind:?}").to_lowercase();
            format!("this executor does not run {name} tasks")
        })
    }

    /// What each running task's container uses now (those that can say).
    async fn usage(&self) -> Vec<cairn_api::internal::TaskUsage> {
        let mut all = Vec::new();
        for (task_id, running) in &self.running {
            let Running::Command(_, containerizer) = running else {
                continue;
            };
            if let Some(u) = containerizer.usage(task_id).await {
                all.push(cairn_api::internal::TaskUsage {
                    task_id: Some(TaskId {
                        value: task_id.clone(),
                    }),
                    cpu_time_secs: u.cpu_time.as_secs_f64(),
                    mem_bytes: u.memory_bytes,
                    processes: u.processes,
                });
            }
        }
        all
    }

    fn on_status(&mut self, status: TaskStatus) {
        let state = cairn_api::v1::TaskState::try_from(status.state)
            .unwrap_or(cairn_api::v1::TaskState::TaskUnknown);
        if state.is_terminal()
            && let Some(task_id) = &status.task_id
        {
            if let Some(Running::Command(_, containerizer)) = self.running.remove(&task_id.value) {
                let ended = (task_id.value.clone(), containerizer);
                self.releasing.insert(status.uuid.clone(), ended);
            }
            if let Some(run) = self.runs.remove(&task_id.value) {
                self.ending.insert(status.uuid.clone(), run);
            }
        }
        self.unacked.push(status);
    }
}
