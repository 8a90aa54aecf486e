//! `cairn dev`: a master and an agent in one process on this machine, with embedded
//! defaults, optionally running a demo task through the real scheduler API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use crate::run::{self, RunArgs};

#[derive(Args)]
pub struct DevArgs {
    /// Where the master's registry and the agent's work dir live (default: ~/.cairn).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:5050")]
    master_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:5051")]
    agent_listen: SocketAddr,
    /// Resources the agent offers (default: detected).
    #[arg(long)]
    resources: Option<String>,
    /// Run this wasm module as a demo task once the cluster is up.
    #[arg(long)]
    demo: Option<PathBuf>,
    /// Arguments for the demo module.
    #[arg(last = true)]
    demo_args: Vec<String>,
    /// Stop after the demo instead of serving until interrupted.
    #[arg(long)]
    exit_after_demo: bool,
}

pub async fn run(args: DevArgs) -> anyhow::Result<u8> {
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => PathBuf::from(std::env::var("HOME").context("HOME is not set; pass --data-dir")?)
            .join(".cairn"),
    };
    let master = cairn_master::Master::bind(master_config(args.master_listen, &data_dir)).await?;
    let master_addr = master.local_addr()?;
    let agent = cairn_agent::Agent::bind(crate::agent_config(crate::AgentArgs {
        master: master_addr.to_string(),
        credential: None,
        http_auth: Default::default(),
        listen: args.agent_listen,
        work_dir: data_dir.join("agent"),
        resources: args.resources,
        attributes: None,
        hostname: None,
        executor_recovery_timeout: Duration::from_secs(60),
        heartbeat_interval: Duration::from_secs(5),
        status_update_retry_interval: Duration::from_secs(10),
        executor_reregistration_timeout: Duration::from_secs(5),
        executor_shutdown_grace_period: Duration::from_secs(10),
        custom_executor_call_timeout: Duration::from_secs(5),
        docker_host_network: "with-ports".into(),
        enforce_container_ports: true,
        container_ports_watch_interval: Duration::from_secs(30),
        native: Default::default(),
        fetcher: Default::default(),
        users: dev_users(),
        gc: Default::default(),
        compile: Default::default(),
    })?)
    .await?;
    let agent_addr = agent.local_addr()?;
    let mut master_task = tokio::spawn(master.serve());
    let mut agent_task = tokio::spawn(agent.run());
    println!("Cairn dev cluster is up");
    println!("  master  http://{master_addr}   (state: http://{master_addr}/state)");
    println!("  agent   http://{agent_addr}");
    println!("  data    {}", data_dir.display());
    println!("Run a task:  cairn run --master {master_addr} path/to/module.wasm -- ARGS");

    if let Some(module) = args.demo {
        println!("\nDemo: running {} on the cluster", module.display());
        let code = run::run(RunArgs {
            file: module,
            native: false,
            docker_image: None,
            args: args.demo_args,
            master: master_addr.to_string(),
            cpus: 0.1,
            mem: 64.0,
            disk: 64.0,
            env: vec!["GREETING=Hello".into()],
            name: Some("demo".into()),
            timeout: Some(Duration::from_secs(30)),
            fuel: None,
            offer_timeout: Duration::from_secs(30),
            caller: Default::default(),
        })
        .await?;
        println!("Demo task exited with status {code}");
        if args.exit_after_demo {
            return Ok(code);
        }
    }
    println!("\nPress Ctrl-C to stop.");
    tokio::select! {
        r = &mut master_task => r.context("master task")?.context("master")?,
        r = &mut agent_task => r.context("agent task")?.context("agent")?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(0)
}

/// One master on embedded defaults: no authentication, no rate limits.
fn master_config(
    listen: std::net::SocketAddr,
    data_dir: &std::path::Path,
) -> cairn_master::MasterConfig {
    cairn_master::MasterConfig {
        listen,
        data_dir: data_dir.join("master"),
        node_id: 1,
        leader: Default::default(),
        authentication: Default::default(),
        rate_limits: Default::default(),
    }
}

/// The dev cluster has one tenant, whoever started it: its tasks run as that user,
/// root included (a shared agent refuses root tasks unless told otherwise).
fn dev_users() -> crate::TaskUsers {
    let me = nix::unistd::User::from_uid(nix::unistd::Uid::effective())
        .ok()
        .flatten()
        .map(|u| u.name);
    crate::TaskUsers {
        default_user: me.unwrap_or_else(|| "nobody".into()),
        allow_root_tasks: nix::unistd::Uid::effective().is_root(),
        ..Default::default()
    }
}
