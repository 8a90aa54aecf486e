//! The Cairn agent: offers this machine's resources to the master, runs each
//! framework's tasks in an executor process of its own, and carries status updates
//! back until they are acknowledged.

pub mod checkpoint;
mod core;
mod executor;
mod executors;
mod fetcher;
mod framing;
mod http;
mod master_link;
mod metrics;
mod paths;
mod resources;
mod updates;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use cairn_api::v1::AgentInfo;
use tokio::sync::mpsc;

/// The containerizers, public so a benchmark times a native or Docker launch exactly
/// as an executor makes it.
pub use executor::containerizer;
pub use executor::{ExecutorArgs, run_executor};
pub use resources::{agent_resources, parse_attributes};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The master's HOST:PORT.
    pub master: String,
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
    pub async fn bind(config: AgentConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.work_dir)
            .with_context(|| format!("creating work dir {}", config.work_dir.display()))?;
        let resources = agent_resources(config.resources.as_deref(), &config.work_dir)
            .map_err(anyhow::Error::msg)?;
        let attributes = match &config.attributes {
            Some(text) => parse_attributes(text).map_err(anyhow::Error::msg)?,
            None => Vec::new(),
        };
        let http = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let port = http.local_addr()?.port();
        let paths = paths::Paths::new(config.work_dir.clone());
        let boot = Boot::read(&paths);
        if boot.rebooted() {
            tracing::info!(
                "the machine rebooted since the last checkpoint: starting as a new agent"
            );
        }
        // A corrupt checkpoint stops the agent here: its tasks are not silently dropped.
        let mut checkpoint = checkpoint::Checkpoint::open(&paths.checkpoint(), boot.rebooted())
            .context("recovering the agent's checkpoint (move the work dir's meta/ away to start as a new agent; the master will then report its tasks lost)")?;
        boot.record(&paths).context("recording the boot id")?;
        paths::ensure_cache_key(&paths.compile_cache_key())
            .context("creating the compile cache key")?;
        let info = AgentInfo {
            hostname: config.hostname.clone(),
            port: i32::from(port),
            resources: resources.to_proto(),
            attributes,
            id: None,
        };
        checkpoint
            .reconfigure(&info)
            .map_err(anyhow::Error::msg)
            .context("recovering the agent (restore its flags, or start it on a fresh work dir as a new agent)")?;
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
    pub async fn run(self) -> anyhow::Result<()> {
        let paths = paths::Paths::new(self.config.work_dir.clone());
        let socket = paths.socket();
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket)
            .with_context(|| format!("binding executor socket {}", socket.display()))?;
        std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .context("restricting the executor socket")?;
        let (tx, rx) = mpsc::channel(4096);
        let launcher = executors::Launcher {
            paths: paths.clone(),
            binary: self.config.executor_binary.clone(),
            recovery_timeout: self.config.executor_recovery_timeout,
            custom_call_timeout: self.config.custom_executor_call_timeout,
            cgroups_root: self.config.cgroups_root.clone(),
            native_namespaces: self.config.native_namespaces.clone(),
            core: tx.clone(),
            fetch_cache: std::sync::Arc::new(fetcher::FetchCache::new(paths.fetch_cache())),
            placer: executors::spawn_placer(tx.clone()).context("starting the placer thread")?,
        };
        let config = core::CoreConfig {
            heartbeat_interval: self.config.heartbeat_interval,
            update_retry: self.config.update_retry,
            executor_reregistration_timeout: self.config.executor_reregistration_timeout,
            executor_shutdown_grace: self.config.executor_shutdown_grace,
        };
        let (core, snapshot) =
            core::Core::recover(paths.clone(), config, self.info, launcher, self.checkpoint);
        tokio::spawn(core.run(rx));
        tokio::spawn(executors::serve_socket(listener, tx.clone()));
        tokio::spawn(master_link::run(self.config.master.clone(), tx.clone()));
        tracing::info!(
            http = %self.http.local_addr()?,
            work_dir = %self.config.work_dir.display(),
            "agent running"
        );
        axum::serve(self.http, http::router(snapshot, tx, paths))
            .await
            .context("serving the agent API")
    }
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
