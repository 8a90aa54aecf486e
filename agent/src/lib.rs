//! The Cairn agent: offers this machine's resources to the master, runs each
//! framework's tasks in an executor process of its own, and carries status updates
//! back until they are acknowledged.

mod artifact_file;
pub mod checkpoint;
mod compiler;
mod core;
mod error;
mod executor_cgroup;
mod executor_process;
mod executor_socket;
mod executor_token;
mod fetcher;
mod framing;
mod gc;
mod http;
mod input;
mod launcher;
mod master_link;
pub use master_link::Credential;
mod metrics;
mod paths;
mod ports;
mod process;
mod resources;
mod updates;
pub mod user;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use cairn_api::v1::AgentInfo;
use tokio::sync::mpsc;

pub use checkpoint::{LogError, ReconfigureError};
pub use compiler::{CompileConfig, default_max_steps as default_compile_max_steps};
pub use error::{AgentError, ExecutorError};
/// The containerizers, public so a benchmark times a native or Docker launch exactly
/// as an executor makes it.
pub use executor_process::containerizer;
pub use executor_process::{ExecutorArgs, run_executor};
pub use fetcher::{AllowedNetwork, FetcherConfig};
pub use gc::GcConfig;
pub use resources::{FlagError, agent_resources, parse_attributes};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The master's HOST:PORT.
    pub master: String,
    /// Whom the agent authenticates to the master as (Mesos' `--credential`).
    pub credential: Option<master_link::Credential>,
    /// Who may call the HTTP API (`--http-credentials`, `--authenticate-http-readonly`).
    pub http_authentication: cairn_api::authn::Authentication,
    /// What each caller may see of tasks and sandboxes (`--acls`).
    pub acls: std::sync::Arc<cairn_api::authz::Acls>,
    pub listen: SocketAddr,
    pub work_dir: PathBuf,
    /// `--resources` text; what it leaves out is detected.
    pub resources: Option<String>,
    /// `--attributes` text.
    pub attributes: Option<String>,
    /// The name the agent registers under; its HTTP API must be reachable there.
    pub hostname: String,
    /// The `cairn` binary executors are started from.
    pub executor_binary: PathBuf,
    /// How long an executor waits for a restarted agent before giving up its tasks.
    pub executor_recovery_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// The first resend of an unacknowledged status update (then doubled, to 10 min).
    pub update_retry: Duration,
    /// How long an executor that outlived an agent restart has to re-subscribe.
    pub executor_reregistration_timeout: Duration,
    /// How long a shut-down executor has to end its tasks before it is killed.
    pub executor_shutdown_grace: Duration,
    /// The bound on each call into a custom executor component.
    pub custom_executor_call_timeout: Duration,
    /// The cgroup native tasks' cgroups go under.
    pub cgroups_root: String,
    /// Namespaces native tasks get of their own (`ipc`, `mount`, `network`).
    pub native_namespaces: Vec<String>,
    /// Docker tasks get HOST networking without `ports` resources too
    /// (`--docker-host-network always`).
    pub docker_host_network_always: bool,
    /// How often native tasks' listening ports are checked against their `ports`
    /// resources (`--container-ports-watch-interval`); none: not checked.
    pub ports_watch_interval: Option<Duration>,
    /// The fetcher's limits (`--fetcher-*`).
    pub fetcher: FetcherConfig,
    /// Who tasks run as (`--switch-user`, `--default-user`, `--allow-root-tasks`).
    pub users: user::UserPolicy,
    /// When finished runs' sandboxes are removed.
    pub gc: GcConfig,
    /// What one compile of a task's program may take (`--compile-*`).
    pub compile: CompileConfig,
}

/// A configured agent whose HTTP port is bound, not yet running.
pub struct Agent {
    config: AgentConfig,
    info: AgentInfo,
    checkpoint: checkpoint::Checkpoint,
    http: tokio::net::TcpListener,
}

impl Agent {
    /// Checks the configuration (resources, attributes, work dir) and binds the HTTP
    /// port, so every configuration error surfaces before the agent starts.
    pub async fn bind(config: AgentConfig) -> Result<Self, AgentError> {
        std::fs::create_dir_all(&config.work_dir).map_err(|source| AgentError::WorkDir {
            path: config.work_dir.clone(),
            source,
        })?;
        let resources = agent_resources(config.resources.as_deref(), &config.work_dir)?;
        let attributes = match &config.attributes {
            Some(text) => parse_attributes(text)?,
            None => Vec::new(),
        };
        let bind_error = |source| AgentError::Bind {
            addr: config.listen,
            source,
        };
        let http = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(bind_error)?;
        let port = http.local_addr().map_err(bind_error)?.port();
        let paths = paths::Paths::new(config.work_dir.clone());
        // The artifacts' directory is traversable, not listable: an executor opens
        // only the file the agent names to it.
        let dirs = paths.private_dirs().map(|d| (d, 0o700));
        for (dir, mode) in dirs.into_iter().chain([(paths.artifacts(), 0o711)]) {
            agent_dir(&dir, mode).map_err(|source| AgentError::WorkFile {
                what: "making the agent's own",
                path: dir.clone(),
                source,
            })?;
        }
        let boot = Boot::read(&paths);
        if boot.rebooted() {
            tracing::info!(
                "the machine rebooted since the last checkpoint: starting as a new agent"
            );
        }
        // A corrupt checkpoint stops the agent here: its tasks are not silently dropped.
        let mut checkpoint = checkpoint::Checkpoint::open(&paths.checkpoint(), boot.rebooted())
            .map_err(AgentError::Checkpoint)?;
        boot.record(&paths).map_err(|source| AgentError::WorkFile {
            what: "recording the boot id in",
            path: paths.boot_id_file(),
            source,
        })?;
        let key = paths.compile_cache_key();
        paths::ensure_cache_key(&key).map_err(|source| AgentError::WorkFile {
            what: "creating the compile cache key",
            path: key,
            source,
        })?;
        let info = AgentInfo {
            hostname: config.hostname.clone(),
            port: i32::from(port),
            resources: resources.to_proto(),
            attributes,
            id: None,
        };
        checkpoint
            .reconfigure(&info)
            .map_err(AgentError::Reconfigure)?;
        Ok(Self {
            config,
            info,
            checkpoint,
            http,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }

    /// Runs the agent until the process stops.
    pub async fn run(self) -> Result<(), AgentError> {
        let paths = paths::Paths::new(self.config.work_dir.clone());
        let listener = executor_listener(&paths)?;
        let (tx, rx) = mpsc::channel(4096);
        let known = std::sync::Arc::new(executor_socket::KnownExecutors::default());
        let launcher = self.launcher(&paths, tx.clone(), known.clone())?;
        let config = core::CoreConfig {
            heartbeat_interval: self.config.heartbeat_interval,
            update_retry: self.config.update_retry,
            executor_reregistration_timeout: self.config.executor_reregistration_timeout,
            executor_shutdown_grace: self.config.executor_shutdown_grace,
            users: self.config.users.clone(),
            ports_watch_interval: self.config.ports_watch_interval,
        };
        // Runs the checkpoint still holds are the core's; any other run on disk
        // finished before the restart and is collected.
        let live: std::collections::HashSet<_> = self
            .checkpoint
            .state
            .tasks
            .iter()
            .map(|((fw, task_id), task)| paths.sandbox(fw, task_id, &task.container_id))
            .collect();
        let orphaned = gc::orphaned_runs(&paths.frameworks(), &live);
        let gc = gc::spawn(
            self.config.gc.clone(),
            self.config.work_dir.clone(),
            orphaned,
        );
        let (core, snapshot) = core::Core::recover(
            paths.clone(),
            config,
            self.info,
            launcher,
            self.checkpoint,
            gc,
        );
        tokio::spawn(core.run(rx));
        let limits = executor_socket::SocketLimits::default();
        tokio::spawn(executor_socket::serve_socket(
            listener,
            tx.clone(),
            known,
            limits,
        ));
        let (master, credential) = (self.config.master.clone(), self.config.credential.clone());
        tokio::spawn(master_link::run(master, credential, tx.clone()));
        let http_addr = self.http.local_addr().map_err(AgentError::Serve)?;
        tracing::info!(
            http = %http_addr,
            work_dir = %self.config.work_dir.display(),
            "agent running"
        );
        let access = http::Access {
            authentication: self.config.http_authentication.clone(),
            acls: self.config.acls.clone(),
        };
        axum::serve(self.http, http::router(snapshot, tx, paths, access))
            .await
            .map_err(AgentError::Serve)
    }
}

impl Agent {
    /// What starts executors and fills sandboxes: the executor binary, the fetcher
    /// and the compile step, reporting to the core on `tx`.
    fn launcher(
        &self,
        paths: &paths::Paths,
        tx: mpsc::Sender<input::Input>,
        known: std::sync::Arc<executor_socket::KnownExecutors>,
    ) -> Result<launcher::Launcher, AgentError> {
        let binary = std::sync::Arc::new(
            process::CairnBinary::open(&self.config.executor_binary).map_err(|source| {
                AgentError::WorkFile {
                    what: "opening the executor binary",
                    path: self.config.executor_binary.clone(),
                    source,
                }
            })?,
        );
        let key = self.key(paths)?;
        let tokens = executor_token::ExecutorTokens::new(key.clone());
        let compiler = self.compiler(paths, binary.clone(), key)?;
        Ok(launcher::Launcher {
            paths: paths.clone(),
            binary,
            recovery_timeout: self.config.executor_recovery_timeout,
            custom_call_timeout: self.config.custom_executor_call_timeout,
            cgroups_root: self.config.cgroups_root.clone(),
            native_namespaces: self.config.native_namespaces.clone(),
            docker_host_network_always: self.config.docker_host_network_always,
            core: tx.clone(),
            fetcher: std::sync::Arc::new(
                fetcher::Fetcher::new(paths.fetch_cache(), self.config.fetcher.clone())
                    .map_err(AgentError::Fetcher)?,
            ),
            placer: launcher::spawn_placer(tx).map_err(AgentError::Placer)?,
            compiler: std::sync::Arc::new(compiler),
            known,
            hosted: Default::default(),
            preparing: Default::default(),
            tokens: std::sync::Arc::new(tokens),
        })
    }

    /// The agent's key: it tags compiled artifacts and makes executor tokens.
    fn key(&self, paths: &paths::Paths) -> Result<Vec<u8>, AgentError> {
        let key_file = paths.compile_cache_key();
        std::fs::read(&key_file).map_err(|source| AgentError::WorkFile {
            what: "reading the compile cache key",
            path: key_file,
            source,
        })
    }
}

impl Agent {
    /// The compile step's set-up: the key that tags artifacts, the engine settings.
    fn compiler(
        &self,
        paths: &paths::Paths,
        binary: std::sync::Arc<process::CairnBinary>,
        key: Vec<u8>,
    ) -> Result<compiler::Compiler, AgentError> {
        // Agents of one machine share the cgroup hierarchy: each names its compile
        // steps' parent after its work dir.
        let work_dir = self.config.work_dir.display().to_string();
        let agent =
            sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(work_dir));
        let parent = format!(
            "{}/compiles/{}",
            self.config.cgroups_root,
            &hex::encode(agent)[..16]
        );
        compiler::Compiler::new(
            paths.artifacts(),
            key,
            binary,
            parent,
            self.config.compile.clone(),
        )
        .map_err(AgentError::Compiler)
    }
}

/// The executor socket. Executors run as their tasks' users, so every user may
/// connect; only the process the agent started for an executor may subscribe as it
/// (its pid, from the socket's peer credentials, is checked).
fn executor_listener(paths: &paths::Paths) -> Result<tokio::net::UnixListener, AgentError> {
    let socket = paths.socket();
    let _ = std::fs::remove_file(&socket);
    let socket_error = |what| {
        let path = socket.clone();
        move |source| AgentError::WorkFile { what, path, source }
    };
    let listener =
        tokio::net::UnixListener::bind(&socket).map_err(socket_error("binding executor socket"))?;
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .map_err(socket_error("opening the executor socket to executors"))?;
    Ok(listener)
}

/// Creates `dir` if missing and gives it `mode`, writable by the agent's user alone;
/// refuses a link.
fn agent_dir(dir: &std::path::Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other("not a directory"));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// The machine's boot and the one the checkpoint belongs to: after a reboot nothing
/// the checkpoint describes still runs, and the agent registers as a new agent, as
/// in Mesos.
struct Boot {
    current: String,
    recorded: String,
}

impl Boot {
    fn read(paths: &paths::Paths) -> Self {
        Self {
            current: std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default(),
            recorded: std::fs::read_to_string(paths.boot_id_file()).unwrap_or_default(),
        }
    }

    fn rebooted(&self) -> bool {
        !self.recorded.is_empty() && self.recorded != self.current
    }

    fn record(&self, paths: &paths::Paths) -> std::io::Result<()> {
        if self.recorded == self.current {
            return Ok(());
        }
        paths::write_atomic(&paths.boot_id_file(), self.current.as_bytes())
    }
}
