//! DOCKER tasks: a container of the local Docker engine per task, as Mesos' Docker
//! containerizer runs them. Images are never pulled (agents here have no registry),
//! the sandbox is mounted at `/mnt/mesos/sandbox`, and the container's output is
//! copied into the sandbox's `stdout` and `stderr` like any other task's.

mod create;
mod output;

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error;
use bollard::models::ContainerSummaryStateEnum;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StatsOptionsBuilder, StopContainerOptionsBuilder,
};
use futures::StreamExt as _;
use tokio::sync::{OnceCell, watch};
use tokio::task::JoinHandle;

use super::{Containerizer, LaunchError, LaunchSpec, Limits, Termination, Usage};
use create::{create_body, deadline_of, networking};
use output::copy_output;

/// Where the task finds its sandbox, as in Mesos.
const SANDBOX: &str = "/mnt/mesos/sandbox";
const MANAGED_LABEL: &str = "cairn.managed";
const FRAMEWORK_LABEL: &str = "cairn.framework_id";
const TASK_LABEL: &str = "cairn.task_id";
/// The task's disk, which caps the output a re-attached container may still write.
const DISK_LABEL: &str = "cairn.disk_bytes";
/// When the task's `max_completion_time` runs out (Unix milliseconds), and that time
/// itself (milliseconds), for a container re-attached after an agent restart.
const DEADLINE_LABEL: &str = "cairn.deadline_ms";
const LIMIT_LABEL: &str = "cairn.max_completion_time_ms";
const PIDS_LIMIT: i64 = 4096;
/// A kill's grace stays under bollard's 120 s request timeout, or the stop request
/// itself would fail while the engine is still waiting.
const MAX_STOP_SECS: f64 = 100.0;
/// Listing a framework's containers after an agent restart: tries, and the pause
/// between them.
const LIST_TRIES: u32 = 4;
const LIST_RETRY: Duration = Duration::from_millis(500);
/// How long the terminal update waits for the last of the output to land.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

#[derive(Default)]
pub struct DockerContainerizer {
    /// Connected on first use, so an agent without Docker still runs every other
    /// task; a failed connection is retried by the next launch.
    engine: OnceCell<Docker>,
    containers: Mutex<HashMap<String, Entry>>,
    /// Containers that ended, by task id, kept until their end is acknowledged.
    ended: Mutex<HashMap<String, String>>,
    /// HOST networking for tasks without `ports` resources too.
    host_network_always: bool,
}

struct Entry {
    container: String,
    /// Set by `kill`: the container's end is then TASK_KILLED, whatever its status.
    killed: Arc<AtomicBool>,
    /// The one waiter per container publishes its end here.
    end: watch::Receiver<Option<Termination>>,
    /// A re-attached container's time left to its `max_completion_time`, and that
    /// limit (see [`Containerizer::completion_deadline`]).
    deadline: Option<(Duration, Duration)>,
}

/// What the background tasks need to follow one started container.
struct Follow {
    container: String,
    sandbox: PathBuf,
    mem_bytes: u64,
    disk_bytes: u64,
    /// Re-attached after an agent restart: the output copied goes on after the last
    /// line the sandbox's files hold, so none is copied twice (see `output`).
    resume: bool,
    deadline: Option<(Duration, Duration)>,
}

impl DockerContainerizer {
    /// `host_network_always`: HOST networking without `ports` resources too.
    pub fn new(host_network_always: bool) -> Self {
        Self {
            host_network_always,
            ..Self::default()
        }
    }

    async fn docker(&self) -> Result<&Docker, LaunchError> {
        self.engine.get_or_try_init(connect).await
    }

    /// The engine and the containers it holds of the framework, running or not.
    async fn list(
        &self,
        framework_id: &str,
    ) -> Result<(&Docker, Vec<bollard::models::ContainerSummary>), LaunchError> {
        let docker = self.docker().await?;
        let filters = HashMap::from([("label", vec![format!("{FRAMEWORK_LABEL}={framework_id}")])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let containers = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| LaunchError::Docker(format!("listing the framework's containers: {e}")))?;
        Ok((docker, containers))
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers the container for `wait`, `kill` and `usage`; its output and its end
    /// are followed in the background, outliving the call that started it.
    fn attach(&self, docker: &Docker, task_id: String, follow: Follow) {
        let killed = Arc::new(AtomicBool::new(false));
        let (publish, end) = watch::channel(None);
        self.entries().insert(
            task_id,
            Entry {
                container: follow.container.clone(),
                killed: Arc::clone(&killed),
                end,
                deadline: follow.deadline,
            },
        );
        let output = tokio::spawn(copy_output(
            docker.clone(),
            follow.container.clone(),
            follow.sandbox,
            follow.disk_bytes,
            follow.resume,
        ));
        tokio::spawn(await_end(
            docker.clone(),
            follow.container,
            follow.mem_bytes,
            killed,
            output,
            publish,
        ));
    }
}

#[async_trait::async_trait]
impl Containerizer for DockerContainerizer {
    async fn launch(&self, spec: &LaunchSpec) -> Result<(), LaunchError> {
        let info = spec
            .task
            .container
            .as_ref()
            .and_then(|c| c.docker.as_ref())
            .filter(|d| !d.image.is_empty())
            .ok_or_else(|| {
                LaunchError::Docker("a DOCKER task needs container.docker.image".into())
            })?;
        let image = info.image.as_str();
        let network = networking(&spec.task, info, self.host_network_always)?;
        let limits = Limits::of(&spec.task)?;
        let exec = super::exec(&spec.task)?;
        let sandbox = std::path::absolute(&spec.sandbox).map_err(|e| {
            LaunchError::Docker(format!("the sandbox {}: {e}", spec.sandbox.display()))
        })?;
        if spec.user.switch {
            // The task writes its sandbox as its own user; `lchown` changes the
            // directory the agent made, never what a link there points at.
            std::os::unix::fs::lchown(&sandbox, Some(spec.user.uid), Some(spec.user.gid)).map_err(
                |e| LaunchError::Docker(format!("cannot give the sandbox to the task's user: {e}")),
            )?;
        }
        let docker = self.docker().await?;
        match docker.inspect_image(image).await {
            Ok(_) => {}
            Err(Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                return Err(LaunchError::Docker(format!(
                    "image {image} is not present on this agent (images are not pulled: \
                     load it with docker load or docker import)"
                )));
            }
            Err(e) => {
                return Err(LaunchError::Docker(format!(
                    "inspecting image {image}: {}",
                    engine_message(e)
                )));
            }
        }
        let task_id = spec.task_id();
        let name = container_name(&spec.framework_id, &task_id);
        // A container of this name is what an earlier attempt at this task left.
        remove(docker, &name).await.map_err(|e| {
            LaunchError::Docker(format!("removing the earlier container {name}: {e}"))
        })?;
        let body = create_body(spec, image, exec, network, &limits, &sandbox);
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let container = docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| {
                LaunchError::Docker(format!("creating the container: {}", engine_message(e)))
            })?
            .id;
        if let Err(e) = docker.start_container(&container, None).await {
            if let Err(why) = remove(docker, &container).await {
                tracing::warn!(%container, error = %why, "cannot remove the unstarted container");
            }
            return Err(LaunchError::Docker(format!(
                "starting the container: {}",
                engine_message(e)
            )));
        }
        tracing::info!(%task_id, %container, image, "started a Docker container");
        let follow = Follow {
            container,
            sandbox,
            mem_bytes: limits.mem_bytes,
            disk_bytes: limits.disk_bytes,
            resume: false,
            deadline: None,
        };
        self.attach(docker, task_id, follow);
        Ok(())
    }

    async fn wait(&self, task_id: &str) -> Termination {
        let Some(mut end) = self.entries().get(task_id).map(|e| e.end.clone()) else {
            return Termination::launch_failed("no such container");
        };
        let termination = match end.wait_for(Option::is_some).await {
            Ok(published) => (*published).clone(),
            Err(_) => None,
        };
        if let Some(entry) = self.entries().remove(task_id) {
            let mut ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
            ended.insert(task_id.to_owned(), entry.container);
        }
        termination.unwrap_or_else(|| {
            Termination::launch_failed("the container's waiter ended without its exit status")
        })
    }

    async fn kill(&self, task_id: &str, grace: Duration) {
        let Some((container, killed)) = self
            .entries()
            .get(task_id)
            .map(|e| (e.container.clone(), Arc::clone(&e.killed)))
        else {
            return;
        };
        let Some(docker) = self.engine.get().cloned() else {
            return;
        };
        killed.store(true, Ordering::SeqCst);
        // The engine sends the image's stop signal, then SIGKILL after `t` seconds.
        let t = grace.as_secs_f64().ceil().min(MAX_STOP_SECS) as i32;
        tokio::spawn(async move {
            let options = StopContainerOptionsBuilder::new().t(t).build();
            if let Err(e) = docker.stop_container(&container, Some(options)).await {
                tracing::warn!(%container, error = %e, "could not stop the container; killing it");
                if let Err(e) = docker.kill_container(&container, None).await {
                    tracing::warn!(%container, error = %e, "could not kill the container");
                }
            }
        });
    }

    async fn recover(&self, framework_id: &str) -> Vec<String> {
        self.reattach(framework_id).await.unwrap_or_else(|e| {
            // Without an engine there is nothing to recover.
            tracing::debug!(error = %e, "cannot recover Docker containers");
            Vec::new()
        })
    }

    async fn reattach(&self, framework_id: &str) -> Result<Vec<String>, LaunchError> {
        let mut tries = 1;
        let (docker, containers) = loop {
            match self.list(framework_id).await {
                Ok(listed) => break listed,
                // The engine may be restarting with the host: a few tries, well
                // within the executor's re-subscription timeout.
                Err(e) if tries < LIST_TRIES => {
                    tracing::debug!(error = %e, "cannot list Docker containers yet");
                    tries += 1;
                    tokio::time::sleep(LIST_RETRY).await;
                }
                Err(e) => return Err(e),
            }
        };
        let mut recovered = Vec::new();
        for summary in containers {
            let Some(container) = summary.id else {
                continue;
            };
            let mut labels = summary.labels.unwrap_or_default();
            // One that ended while nobody followed it still has its exit status and
            // the rest of its output to give; one never started has neither.
            let started = matches!(
                summary.state,
                Some(
                    ContainerSummaryStateEnum::RUNNING
                        | ContainerSummaryStateEnum::PAUSED
                        | ContainerSummaryStateEnum::RESTARTING
                        | ContainerSummaryStateEnum::EXITED
                )
            );
            if let (true, Some(task_id)) = (started, labels.remove(TASK_LABEL)) {
                match created_with(docker, &container).await {
                    Ok((sandbox, mem_bytes)) => {
                        // A task that named no disk gets the default one.
                        let disk_bytes = labels
                            .get(DISK_LABEL)
                            .and_then(|v| v.parse().ok())
                            .unwrap_or_else(|| {
                                Limits::from_resources(&[]).map_or(0, |l| l.disk_bytes)
                            });
                        tracing::info!(%task_id, %container, "re-attached a Docker container");
                        recovered.push(task_id.clone());
                        let follow = Follow {
                            container,
                            sandbox,
                            mem_bytes,
                            disk_bytes,
                            resume: true,
                            deadline: deadline_of(&labels),
                        };
                        self.attach(docker, task_id, follow);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(%container, error = %e, "cannot re-attach; removing it");
                    }
                }
            }
            if let Err(e) = remove(docker, &container).await {
                tracing::warn!(%container, error = %e, "could not remove a container left behind");
            }
        }
        Ok(recovered)
    }

    async fn release(&self, task_id: &str) {
        let ended = self
            .ended
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(task_id);
        let Some(container) = ended else {
            return;
        };
        let Some(docker) = self.engine.get() else {
            return;
        };
        if let Err(e) = remove(docker, &container).await {
            tracing::warn!(%container, error = %e, "could not remove the ended container");
        }
    }

    fn completion_deadline(&self, task_id: &str) -> Option<(Duration, Duration)> {
        self.entries().get(task_id)?.deadline
    }

    async fn usage(&self, task_id: &str) -> Option<Usage> {
        let container = self.entries().get(task_id).map(|e| e.container.clone())?;
        let docker = self.engine.get()?;
        let options = StatsOptionsBuilder::new()
            .stream(false)
            .one_shot(true)
            .build();
        let mut stats = pin!(docker.stats(&container, Some(options)));
        let sample = stats.next().await?.ok()?;
        let cpu_ns = sample
            .cpu_stats
            .and_then(|c| c.cpu_usage)
            .and_then(|u| u.total_usage)
            .unwrap_or(0);
        Some(Usage {
            cpu_time: Duration::from_nanos(cpu_ns),
            // The cgroup's usage, page cache included, as the native containerizer
            // reports it.
            memory_bytes: sample.memory_stats.and_then(|m| m.usage).unwrap_or(0),
            processes: sample.pids_stats.and_then(|p| p.current).unwrap_or(0),
        })
    }
}

/// The container a Docker task runs in (the agent watches its ports by this name).
pub fn container_name(framework_id: &str, task_id: &str) -> String {
    format!("cairn-{framework_id}-{task_id}")
}

/// The pid of a running container's first process, if it has one.
pub async fn container_pid(name: &str) -> Option<i64> {
    let docker = connect().await.ok()?;
    let inspect = docker.inspect_container(name, None).await.ok()?;
    inspect.state?.pid.filter(|p| *p > 0)
}

async fn connect() -> Result<Docker, LaunchError> {
    let not_reachable = |e: Error| {
        let address = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| h.starts_with("unix://"))
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned());
        LaunchError::Docker(format!(
            "the Docker engine is not reachable at {address}: {e}"
        ))
    };
    // Requests carry the API version in their path: bollard's default is newer than
    // many engines speak, so settle on the engine's.
    Docker::connect_with_local_defaults()
        .map_err(not_reachable)?
        .negotiate_version()
        .await
        .map_err(not_reachable)
}

/// The engine's own explanation when it gave one, which names what was wrong.
fn engine_message(e: Error) -> String {
    match e {
        Error::DockerResponseServerError { message, .. } => message,
        e => e.to_string(),
    }
}

/// Removes a container (running or not) and its anonymous volumes; one already gone
/// is fine.
async fn remove(docker: &Docker, container: &str) -> Result<(), LaunchError> {
    let options = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(container, Some(options)).await {
        Ok(())
        | Err(Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(e) => Err(LaunchError::Docker(engine_message(e))),
    }
}

/// A running container's sandbox and memory limit, as `launch` created it.
async fn created_with(docker: &Docker, container: &str) -> Result<(PathBuf, u64), LaunchError> {
    let host = docker
        .inspect_container(container, None)
        .await
        .map_err(|e| LaunchError::Docker(engine_message(e)))?
        .host_config
        .unwrap_or_default();
    let sandbox = host
        .binds
        .unwrap_or_default()
        .into_iter()
        .find_map(|b| {
            b.strip_suffix(SANDBOX)
                .and_then(|s| s.strip_suffix(':'))
                .map(PathBuf::from)
        })
        .ok_or_else(|| LaunchError::Docker("it has no sandbox mount".into()))?;
    let mem_bytes = host.memory.and_then(|m| u64::try_from(m).ok()).unwrap_or(0);
    Ok((sandbox, mem_bytes))
}

/// Awaits the container's end and publishes it, once its output is in the sandbox
/// (the container stays until `release`).
async fn await_end(
    docker: Docker,
    container: String,
    mem_bytes: u64,
    killed: Arc<AtomicBool>,
    output: JoinHandle<()>,
    publish: watch::Sender<Option<Termination>>,
) {
    let mut wait = pin!(docker.wait_container(&container, None));
    let status = match wait.next().await {
        Some(Ok(r)) => Ok(r.status_code),
        Some(Err(Error::DockerContainerWaitError { code, .. })) => Ok(code),
        Some(Err(e)) => Err(engine_message(e)),
        None => Err("the engine ended the wait without an exit status".to_owned()),
    };
    let oom_killed = match docker.inspect_container(&container, None).await {
        Ok(info) => info.state.and_then(|s| s.oom_killed).unwrap_or(false),
        Err(e) => {
            tracing::warn!(%container, error = %e, "cannot inspect the ended container");
            false
        }
    };
    let termination = if oom_killed {
        Termination::out_of_memory(mem_bytes)
    } else if killed.load(Ordering::SeqCst) {
        Termination::killed()
    } else {
        match status {
            Ok(code) => Termination::exit_code(code),
            Err(e) => Termination::launch_failed(format!("waiting for the container: {e}")),
        }
    };
    if tokio::time::timeout(OUTPUT_DRAIN, output).await.is_err() {
        tracing::warn!(%container, "the container's output did not end with it");
    }
    publish.send_replace(Some(termination));
}
