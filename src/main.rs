//! `cairn`: one binary for every role — master, agent, the executor processes agents
//! start, a one-machine dev cluster, and the clients.

mod authn_flags;
mod caller;
mod compile;
mod component;
mod dev;
mod run;
mod tokens;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "A datacenter resource manager in the line of Apache Mesos"
)]
struct Cli {
    /// Log filter (tracing's env-filter syntax), e.g. `info` or `cairn_master=debug`.
    #[arg(long, global = true, env = "CAIRN_LOG")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a master (the control plane: registry, offers, APIs).
    Master(MasterArgs),
    /// Run an agent (offers this machine's resources and runs tasks).
    Agent(Box<AgentArgs>),
    /// Run a master and an agent on this machine with embedded defaults.
    Dev(dev::DevArgs),
    /// Run one WebAssembly task on the cluster and show its output.
    Run(run::RunArgs),
    /// Work with WebAssembly components (make one of a wasm32-wasip1 module).
    Component(component::ComponentArgs),
    /// Mint, list and revoke bearer tokens for your principal.
    Tokens(tokens::TokensArgs),
    /// An executor process; started by agents, not by hand.
    #[command(hide = true)]
    Executor(ExecutorArgs),
    /// An agent's compile step; started by agents, not by hand.
    #[command(hide = true)]
    Compile(compile::CompileArgs),
}

#[derive(Args)]
struct MasterArgs {
    /// Address for the HTTP and gRPC APIs.
    #[arg(long, default_value = "0.0.0.0:5050")]
    listen: SocketAddr,
    /// Where the registry (Raft log and records, in RocksDB) lives.
    #[arg(long, default_value = "/var/lib/cairn/master")]
    data_dir: PathBuf,
    /// This master's Raft node id.
    #[arg(long, default_value_t = 1)]
    node_id: u64,
    /// How often the allocator runs a full offer cycle.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    allocation_interval: Duration,
    /// How often agents must send a heartbeat.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    agent_heartbeat_interval: Duration,
    /// An agent silent this long is unreachable: its tasks become TASK_UNREACHABLE
    /// (partition-aware frameworks) or TASK_LOST.
    #[arg(long, default_value = "75s", value_parser = humantime::parse_duration)]
    agent_timeout: Duration,
    /// An agent's executor process with no task this long is shut down, and the
    /// overhead charged for it given back to its framework.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    executor_idle_timeout: Duration,
    /// Rescind offers outstanding longer than this (default: never, as in Mesos).
    #[arg(long, value_parser = humantime::parse_duration)]
    offer_timeout: Option<Duration>,
    /// How often subscribed frameworks get a HEARTBEAT event (also how soon a vanished
    /// framework is noticed).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    framework_heartbeat_interval: Duration,
    /// Completed tasks kept per framework for state and reconciliation.
    #[arg(long, default_value_t = 1000)]
    max_completed_tasks_per_framework: usize,
    /// Torn-down frameworks whose completed tasks are kept.
    #[arg(long, default_value_t = 50)]
    max_completed_frameworks: usize,
    #[command(flatten)]
    auth: authn_flags::AuthFlags,
}

#[derive(Args)]
pub(crate) struct AgentArgs {
    /// The master's HOST:PORT.
    #[arg(long, env = "CAIRN_MASTER", default_value = "127.0.0.1:5050")]
    master: String,
    /// The principal and secret to register with, for a master that authenticates
    /// agents: Mesos' `{"principal": …, "secret": …}` or `principal secret`.
    #[arg(long)]
    credential: Option<PathBuf>,
    #[command(flatten)]
    http_auth: authn_flags::AgentAuthFlags,
    /// Address for the agent's HTTP API.
    #[arg(long, default_value = "0.0.0.0:5051")]
    listen: SocketAddr,
    /// Where sandboxes, executor logs and checkpoints live.
    #[arg(long, default_value = "/var/lib/cairn/agent")]
    work_dir: PathBuf,
    /// Resources to offer, e.g. 'cpus:4;mem:8192;disk:40960;ports:[31000-32000]';
    /// whatever is left out is detected.
    #[arg(long)]
    resources: Option<String>,
    /// Attributes for placement, e.g. 'rack:r1;zone:a'.
    #[arg(long)]
    attributes: Option<String>,
    /// The name other machines reach this agent's API by (default: the listen
    /// address if it is specific, else the host name).
    #[arg(long)]
    hostname: Option<String>,
    /// How long executors keep their tasks while waiting for a restarted agent.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    executor_recovery_timeout: Duration,
    /// How often the agent heartbeats to the master.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// The first resend of an unacknowledged status update; each resend doubles it,
    /// up to 10 minutes.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    status_update_retry_interval: Duration,
    /// How long an executor that outlived an agent restart has to re-subscribe
    /// before it is killed and its tasks reported lost.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    executor_reregistration_timeout: Duration,
    /// How long a shut-down executor has to end its tasks before its process group
    /// is killed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    executor_shutdown_grace_period: Duration,
    /// How long one call into a custom executor (launch, kill, message, shutdown)
    /// may run before the executor is deemed broken and its tasks fail.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    custom_executor_call_timeout: Duration,
    /// When a Docker task gets HOST networking (Mesos' default network), in which it
    /// may bind any port of the host: `with-ports`, only a task holding `ports`
    /// resources (the others are refused, and may ask for BRIDGE or NONE); `always`.
    #[arg(long, default_value = "with-ports", value_parser = ["with-ports", "always"])]
    docker_host_network: String,
    /// Kill a native task found listening, in the host's network namespace, on a port
    /// its `ports` resources do not hold (Mesos' `network/ports` isolator; on here,
    /// where Mesos leaves it off: tenants share the host's ports).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    enforce_container_ports: bool,
    /// How often tasks' listening ports are checked.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    container_ports_watch_interval: Duration,
    #[command(flatten)]
    native: NativeIsolation,
    #[command(flatten)]
    fetcher: FetcherFlags,
    #[command(flatten)]
    users: TaskUsers,
    #[command(flatten)]
    gc: SandboxGc,
    #[command(flatten)]
    compile: CompileFlags,
}

/// What compiling one wasm program may take: the agent compiles every task's program
/// in a step of its own, as the task's user, bounded by these.
#[derive(Args, Clone)]
pub(crate) struct CompileFlags {
    /// How long one compile may take; a module that takes longer fails its task.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    compile_timeout: Duration,
    /// The memory, in MB, one compile may use; a module that needs more fails its task.
    #[arg(long, default_value_t = 1024)]
    compile_memory: u64,
    /// The CPUs one compile may use.
    #[arg(long, default_value_t = 1.0)]
    compile_cpus: f64,
    /// The uid (and gid) compiles run as; no task may run as it.
    #[arg(long, default_value_t = cairn_agent::user::DEFAULT_COMPILE_UID)]
    compile_uid: u32,
    /// Compiles running at once, all users together (each may use --compile-memory);
    /// by default one per CPU, at least two.
    #[arg(long, default_value_t = cairn_agent::default_compile_max_steps())]
    compile_max_steps: usize,
    /// How long a compile may wait for its turn; past it, its task fails.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    compile_queue_timeout: Duration,
    /// What the compiled artifacts may take on disk, in MB; past it, those least
    /// recently used (none in the last 15 minutes) are removed.
    #[arg(long, default_value_t = 4096)]
    compile_cache_size: u64,
}

impl Default for CompileFlags {
    fn default() -> Self {
        let config = cairn_agent::CompileConfig::default();
        Self {
            compile_timeout: config.timeout,
            compile_memory: config.memory_bytes >> 20,
            compile_cpus: config.cpus,
            compile_uid: config.uid,
            compile_max_steps: config.max_steps,
            compile_queue_timeout: config.queue_timeout,
            compile_cache_size: config.cache_bytes >> 20,
        }
    }
}

/// When finished runs' sandboxes are removed, after Mesos' flags of these names.
#[derive(Args, Clone)]
pub(crate) struct SandboxGc {
    /// How long a finished run's sandbox is kept when the disk is empty; the fuller
    /// the disk, the shorter (Mesos' `--gc_delay`).
    #[arg(long, default_value = "1week", value_parser = humantime::parse_duration)]
    gc_delay: Duration,
    /// The fraction of the disk garbage collection keeps free (Mesos'
    /// `--gc_disk_headroom`).
    #[arg(long, default_value_t = 0.1, value_parser = fraction)]
    gc_disk_headroom: f64,
    /// How often the disk's usage is checked (Mesos' `--disk_watch_interval`).
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    disk_watch_interval: Duration,
}

/// A number from 0.0 to 1.0.
fn fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{text:?} is not a fraction from 0.0 to 1.0")),
    }
}

impl Default for SandboxGc {
    fn default() -> Self {
        let gc = cairn_agent::GcConfig::default();
        Self {
            gc_delay: gc.delay,
            gc_disk_headroom: gc.disk_headroom,
            disk_watch_interval: gc.disk_watch_interval,
        }
    }
}

/// Who tasks run as, after Mesos' `--switch_user`.
#[derive(Args, Clone)]
pub(crate) struct TaskUsers {
    /// Run each task as its `CommandInfo.user`, else its `FrameworkInfo.user`, else
    /// `--default-user`; with `false`, tasks run as the agent's own user.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    switch_user: bool,
    /// The user of tasks whose command and framework name none.
    #[arg(long, default_value = "nobody")]
    default_user: String,
    /// Let tasks run as root (uid 0). Off by default: a framework naming root, or an
    /// agent not switching users while it runs as root, has its tasks refused.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    allow_root_tasks: bool,
}

impl Default for TaskUsers {
    fn default() -> Self {
        let policy = cairn_agent::user::UserPolicy::default();
        Self {
            switch_user: policy.switch_user,
            default_user: policy.default_user,
            allow_root_tasks: policy.allow_root_tasks,
        }
    }
}

/// What a task's URIs may cost and reach: the fetcher's limits.
#[derive(Args, Clone)]
pub(crate) struct FetcherFlags {
    /// How long an HTTP server has to accept the fetcher's connection.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    fetcher_connect_timeout: Duration,
    /// How long a download may receive nothing before it is abandoned (Mesos'
    /// `--fetcher_stall_timeout`).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    fetcher_stall_timeout: Duration,
    /// How long one URI's download may take in all, redirects included.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    fetcher_timeout: Duration,
    /// The largest file, in bytes, one URI may put in a sandbox.
    #[arg(long, default_value_t = 1 << 30)]
    fetcher_max_size: u64,
    /// How many redirects one download may follow.
    #[arg(long, default_value_t = 5)]
    fetcher_max_redirects: usize,
    /// Networks (CIDRs or addresses, comma-separated) the fetcher may reach although
    /// it refuses them by default: loopback, link-local (cloud metadata), unspecified
    /// and this agent's own addresses. For local mirrors and tests.
    #[arg(long, value_delimiter = ',')]
    fetcher_allowed_networks: Vec<cairn_agent::AllowedNetwork>,
    /// A PEM file of CA certificates `https://` servers may chain to, trusted besides
    /// the system's roots (a private mirror's CA).
    #[arg(long)]
    fetcher_ca_file: Option<PathBuf>,
}

impl Default for FetcherFlags {
    fn default() -> Self {
        let config = cairn_agent::FetcherConfig::default();
        Self {
            fetcher_connect_timeout: config.connect_timeout,
            fetcher_stall_timeout: config.stall_timeout,
            fetcher_timeout: config.timeout,
            fetcher_max_size: config.max_size,
            fetcher_max_redirects: config.max_redirects,
            fetcher_allowed_networks: config.allowed_networks,
            fetcher_ca_file: config.ca_file,
        }
    }
}

impl From<FetcherFlags> for cairn_agent::FetcherConfig {
    fn from(flags: FetcherFlags) -> Self {
        Self {
            connect_timeout: flags.fetcher_connect_timeout,
            stall_timeout: flags.fetcher_stall_timeout,
            timeout: flags.fetcher_timeout,
            max_size: flags.fetcher_max_size,
            max_redirects: flags.fetcher_max_redirects,
            allowed_networks: flags.fetcher_allowed_networks,
            ca_file: flags.fetcher_ca_file,
        }
    }
}

/// How native tasks are isolated: the agent's flags, handed on to its executors.
#[derive(Args, Clone)]
pub(crate) struct NativeIsolation {
    /// The cgroup executors' and native tasks' cgroups go under
    /// (`<root>/executors/<executor>.<generation>/containers/<task>`), in every hierarchy this host
    /// mounts. An executor is handed its own `.../containers` as its root.
    #[arg(long, default_value = "cairn")]
    cgroups_root: String,
    /// Namespaces of their own for native tasks, comma-separated: `ipc`, `mount`
    /// (mounts a task makes stay its own), `network` (no network but its own
    /// loopback), `pid` (the task is its namespace's PID 1; with `mount`, its /proc
    /// shows only its processes). None by default, as in Mesos.
    #[arg(long, value_delimiter = ',', value_parser = ["ipc", "mount", "network", "pid"])]
    native_namespaces: Vec<String>,
}

impl Default for NativeIsolation {
    fn default() -> Self {
        Self {
            cgroups_root: "cairn".into(),
            native_namespaces: Vec::new(),
        }
    }
}

#[derive(Args)]
struct ExecutorArgs {
    #[arg(long)]
    agent_socket: PathBuf,
    /// What it proves itself with to the agent: from the environment the agent gives
    /// it, never its command line (which every local user may read).
    #[arg(skip = std::env::var("MESOS_EXECUTOR_AUTHENTICATION_TOKEN").unwrap_or_default())]
    authentication_token: String,
    #[arg(long)]
    framework_id: String,
    #[arg(long)]
    executor_id: String,
    #[arg(long)]
    directory: PathBuf,
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    recovery_timeout: Duration,
    /// The agent's artifacts directory: its wasm tasks' compiled programs.
    #[arg(long)]
    artifacts: Option<PathBuf>,
    /// The bound on each call into a custom executor component.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    custom_executor_call_timeout: Duration,
    /// The container types this executor runs (the agent gives Docker tasks an
    /// executor of their own).
    #[arg(long, value_delimiter = ',', default_value = "wasm,native,docker",
          value_parser = ["wasm", "native", "docker"])]
    containerizers: Vec<String>,
    /// Docker tasks get HOST networking without `ports` resources too.
    #[arg(long)]
    docker_host_network_always: bool,
    #[command(flatten)]
    native: NativeIsolation,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Before any HTTP client is made (`cairn run`, the agent's fetcher).
    cairn_api::tls::install_default_provider();
    let cli = Cli::parse();
    let default_log = match cli.command {
        // `run`, `dev` and `component` talk to a person: only warnings interleave with
        // their output.
        Command::Run(_) | Command::Dev(_) | Command::Component(_) | Command::Tokens(_) => "warn",
        _ => "info",
    };
    let mut filter = cli.log.clone().unwrap_or_else(|| default_log.to_owned());
    // wasmtime-wasi opens an info-level span on every WASI call a guest makes:
    // recording them cost a short task more than its WASI set-up. Kept only when the
    // filter asks for them by name.
    if !filter.contains("wasmtime_wasi") {
        filter.push_str(",wasmtime_wasi=warn");
    }
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        // Daemons log to files: colour codes only for a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Master(args) => {
            let master = cairn_master::Master::bind(cairn_master::MasterConfig {
                listen: args.listen,
                data_dir: args.data_dir,
                node_id: args.node_id,
                leader: cairn_master::LeaderConfig {
                    allocation_interval: args.allocation_interval,
                    agent_heartbeat_interval: args.agent_heartbeat_interval,
                    framework_heartbeat_interval: args.framework_heartbeat_interval,
                    offer_timeout: args.offer_timeout,
                    agent_timeout: args.agent_timeout,
                    executor_idle_timeout: args.executor_idle_timeout,
                    max_completed_tasks_per_framework: args.max_completed_tasks_per_framework,
                    max_completed_frameworks: args.max_completed_frameworks,
                    acls: args.auth.acls()?,
                    ..Default::default()
                },
                authentication: args.auth.authentication()?,
                rate_limits: args.auth.rate_limits()?,
            })
            .await?;
            tracing::info!(address = %master.local_addr()?, "master listening");
            until_stopped(master.serve()).await?;
            Ok(0)
        }
        Command::Agent(args) => {
            let agent = cairn_agent::Agent::bind(agent_config(*args)?).await?;
            until_stopped(agent.run()).await?;
            Ok(0)
        }
        Command::Dev(args) => dev::run(args).await,
        Command::Run(args) => run::run(args).await,
        Command::Tokens(args) => tokens::run(args).await,
        Command::Component(args) => {
            component::run(args)?;
            Ok(0)
        }
        Command::Compile(args) => compile::run(args),
        Command::Executor(args) => {
            // Started through `/proc/self/fd/<n>`, it would be named by the number.
            let _ = nix::sys::prctl::set_name(c"cairn-executor");
            // Its tasks may share its user: none may ptrace it, or read its memory
            // or descriptors through /proc (their own exec makes them dumpable).
            let _ = nix::sys::prctl::set_dumpable(false);
            let executor = cairn_agent::run_executor(cairn_agent::ExecutorArgs {
                agent_socket: args.agent_socket,
                framework_id: args.framework_id,
                executor_id: args.executor_id,
                directory: args.directory,
                recovery_timeout: args.recovery_timeout,
                custom_call_timeout: args.custom_executor_call_timeout,
                cgroups_root: args.native.cgroups_root,
                native_namespaces: args.native.native_namespaces,
                artifacts: args.artifacts,
                containerizers: args.containerizers,
                docker_host_network_always: args.docker_host_network_always,
                hosted: None,
                authentication_token: args.authentication_token,
            });
            // On a worker thread, not this one: its loop trades messages with every
            // task, and a worker wakes a task on its own thread without a futex call.
            tokio::spawn(executor)
                .await
                .map_err(|e| anyhow::anyhow!("the executor stopped: {e}"))??;
            Ok(0)
        }
    }
}

pub(crate) fn agent_config(args: AgentArgs) -> anyhow::Result<cairn_agent::AgentConfig> {
    let hostname = match args.hostname {
        Some(h) => h,
        None if !args.listen.ip().is_unspecified() => args.listen.ip().to_string(),
        None => nix::unistd::gethostname()?.to_string_lossy().into_owned(),
    };
    let credential = (args.credential.as_deref())
        .map(cairn_agent::Credential::load)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    Ok(cairn_agent::AgentConfig {
        master: args.master,
        credential,
        http_authentication: args.http_auth.authentication()?,
        acls: args.http_auth.acls()?,
        listen: args.listen,
        work_dir: args.work_dir,
        resources: args.resources,
        attributes: args.attributes,
        hostname,
        executor_binary: std::env::current_exe()?,
        executor_recovery_timeout: args.executor_recovery_timeout,
        heartbeat_interval: args.heartbeat_interval,
        update_retry: args.status_update_retry_interval,
        executor_reregistration_timeout: args.executor_reregistration_timeout,
        executor_shutdown_grace: args.executor_shutdown_grace_period,
        custom_executor_call_timeout: args.custom_executor_call_timeout,
        cgroups_root: args.native.cgroups_root,
        native_namespaces: args.native.native_namespaces,
        docker_host_network_always: args.docker_host_network == "always",
        ports_watch_interval: args
            .enforce_container_ports
            .then_some(args.container_ports_watch_interval),
        fetcher: args.fetcher.into(),
        users: cairn_agent::user::UserPolicy {
            switch_user: args.users.switch_user,
            default_user: args.users.default_user,
            allow_root_tasks: args.users.allow_root_tasks,
            compile_uid: args.compile.compile_uid,
            cache: Default::default(),
        },
        gc: cairn_agent::GcConfig {
            delay: args.gc.gc_delay,
            disk_headroom: args.gc.gc_disk_headroom,
            disk_watch_interval: args.gc.disk_watch_interval,
        },
        compile: cairn_agent::CompileConfig {
            timeout: args.compile.compile_timeout,
            memory_bytes: args.compile.compile_memory.saturating_mul(1 << 20),
            cpus: args.compile.compile_cpus,
            uid: args.compile.compile_uid,
            max_steps: args.compile.compile_max_steps,
            queue_timeout: args.compile.compile_queue_timeout,
            cache_bytes: args.compile.compile_cache_size.saturating_mul(1 << 20),
        },
    })
}

/// Runs a daemon until it fails or the process is asked to stop (SIGINT/SIGTERM).
async fn until_stopped<E>(
    daemon: impl std::future::Future<Output = Result<(), E>>,
) -> anyhow::Result<()>
where
    anyhow::Error: From<E>,
{
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = daemon => Ok(result?),
        _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted; stopping"); Ok(()) }
        _ = term.recv() => { tracing::info!("terminated; stopping"); Ok(()) }
    }
}
