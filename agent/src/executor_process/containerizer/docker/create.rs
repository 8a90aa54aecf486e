//! A Docker task's container as the engine is asked to create it: the task's
//! command, Mesos' environment, Cairn's labels, the sandbox mounted, the task's
//! limits and user, and only the network the task's resources allow.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, PortBinding, PortMap};
use cairn_api::v1::TaskInfo;
use cairn_api::v1::container_info::DockerInfo;
use cairn_api::v1::container_info::docker_info::Network;

use super::super::{LaunchError, LaunchSpec, Limits};
use super::{
    DEADLINE_LABEL, DISK_LABEL, FRAMEWORK_LABEL, LIMIT_LABEL, MANAGED_LABEL, PIDS_LIMIT, SANDBOX,
    TASK_LABEL,
};

/// The container's network, and for BRIDGE the ports it publishes.
pub(super) struct Networking {
    pub(super) mode: &'static str,
    exposed: Option<Vec<String>>,
    ports: Option<PortMap>,
}

/// The container's definition: the task's command in place of the image's
/// entrypoint, Mesos' environment, Cairn's labels, the sandbox mounted, and the
/// task's limits as the engine's.
pub(super) fn create_body(
    spec: &LaunchSpec,
    image: &str,
    exec: super::super::Exec,
    network: Networking,
    limits: &Limits,
    sandbox: &Path,
) -> ContainerCreateBody {
    // The task's command replaces the image's entrypoint, as `super::super::exec` runs it.
    let shell = spec.task.command.as_ref().and_then(|c| c.shell);
    let (entrypoint, cmd) = if shell.unwrap_or(true) {
        let mut entrypoint = exec.argv;
        let cmd = entrypoint.split_off(entrypoint.len().min(2));
        (entrypoint, cmd)
    } else {
        (vec![exec.program], exec.argv.into_iter().skip(1).collect())
    };
    let env = super::super::environment(spec, SANDBOX)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut labels = HashMap::from([
        (MANAGED_LABEL.to_owned(), "true".to_owned()),
        (FRAMEWORK_LABEL.to_owned(), spec.framework_id.clone()),
        (TASK_LABEL.to_owned(), spec.task_id()),
        (DISK_LABEL.to_owned(), limits.disk_bytes.to_string()),
    ]);
    // The task's max_completion_time, and when it runs out: a re-attached container
    // is still held to it.
    if let Some(limit) = spec.max_completion_time() {
        let deadline = SystemTime::now() + limit;
        let ms = |d: Duration| d.as_millis().to_string();
        let at = deadline.duration_since(UNIX_EPOCH).unwrap_or_default();
        labels.insert(DEADLINE_LABEL.to_owned(), ms(at));
        labels.insert(LIMIT_LABEL.to_owned(), ms(limit));
    }
    // The engine refuses more CPUs than the host has; an agent may offer more.
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let memory = i64::try_from(limits.mem_bytes).unwrap_or(i64::MAX);
    let user = &spec.user;
    ContainerCreateBody {
        image: Some(image.to_owned()),
        // The task's user by number: the image need not know its name.
        user: Some(format!("{}:{}", user.uid, user.gid)),
        entrypoint: Some(entrypoint),
        cmd: Some(cmd),
        env: Some(env),
        labels: Some(labels),
        exposed_ports: network.exposed,
        host_config: Some(HostConfig {
            binds: Some(vec![format!("{}:{SANDBOX}", sandbox.display())]),
            memory: Some(memory),
            // Swap would let the task exceed its memory.
            memory_swap: Some(memory),
            nano_cpus: Some(((limits.cpus.min(host_cpus) * 1e9) as i64).max(10_000_000)),
            cpu_shares: Some(((limits.cpus * 1024.0) as i64).max(2)),
            pids_limit: Some(PIDS_LIMIT),
            network_mode: Some(network.mode.to_owned()),
            port_bindings: network.ports,
            // The exit code and OOMKilled are read after the exit, then it is removed.
            auto_remove: Some(false),
            group_add: Some(user.groups.iter().map(u32::to_string).collect()),
            // No setuid binary in the image raises the task's privileges, and it
            // cannot forge packets on the host's networks.
            security_opt: Some(vec!["no-new-privileges".to_owned()]),
            cap_drop: Some(vec!["NET_RAW".to_owned()]),
            log_config: Some(engine_log(limits.disk_bytes)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The engine's own copy of the task's output, which the agent copies into the
/// sandbox up to the task's `disk`: held to about as much (two files of at most
/// `disk`, at least 1 MiB each), or an endless writer would fill the engine's disk,
/// which every tenant and the agent share.
fn engine_log(disk_bytes: u64) -> HostConfigLogConfig {
    let max_size = disk_bytes.clamp(1 << 20, 1 << 30).to_string();
    HostConfigLogConfig {
        typ: Some("json-file".to_owned()),
        config: Some(HashMap::from([
            ("max-size".to_owned(), max_size),
            ("max-file".to_owned(), "2".to_owned()),
        ])),
    }
}

/// Host ports are checked against the task's `ports` resources: only what the task
/// was offered is its to publish. HOST networking (Mesos' default) lets a container
/// bind any port of the host, so it is given only to a task holding `ports`
/// resources, unless the agent says always (`--docker-host-network always`).
pub(super) fn networking(
    task: &TaskInfo,
    info: &DockerInfo,
    host_network_always: bool,
) -> Result<Networking, LaunchError> {
    let network = Network::try_from(info.network)
        .map_err(|_| LaunchError::Docker(format!("unknown Docker network {}", info.network)))?;
    let resources = cairn_api::Resources::from_proto(&task.resources)?;
    let offered = resources.ranges("ports");
    let holds_ports = offered.is_some_and(|r| !r.is_empty());
    if matches!(network, Network::Unset | Network::Host) && !host_network_always && !holds_ports {
        return Err(LaunchError::Docker(
            "HOST networking (the default) lets a container bind any port of the host, so \
             it needs the task to hold `ports` resources (or the agent's \
             --docker-host-network always); ask for BRIDGE or NONE networking instead"
                .into(),
        ));
    }
    let mode = match network {
        Network::Unset | Network::Host => "host",
        Network::Bridge => "bridge",
        Network::None => "none",
    };
    if network != Network::Bridge {
        if !info.port_mappings.is_empty() {
            return Err(LaunchError::Docker(
                "port_mappings need BRIDGE networking".into(),
            ));
        }
        return Ok(Networking {
            mode,
            exposed: None,
            ports: None,
        });
    }
    let mut bindings: HashMap<String, Vec<PortBinding>> = HashMap::new();
    for m in &info.port_mappings {
        let port = u64::from(m.host_port);
        if !offered.is_some_and(|r| r.iter().any(|(b, e)| b <= port && port <= e)) {
            return Err(LaunchError::Docker(format!(
                "host port {port} is not among the task's ports resources"
            )));
        }
        let protocol = m.protocol.as_deref().unwrap_or("tcp");
        if !matches!(protocol, "tcp" | "udp") {
            return Err(LaunchError::Docker(format!(
                "port mapping protocol {protocol:?} is neither tcp nor udp"
            )));
        }
        bindings
            .entry(format!("{}/{protocol}", m.container_port))
            .or_default()
            .push(PortBinding {
                host_ip: Some("0.0.0.0".to_owned()),
                host_port: Some(port.to_string()),
            });
    }
    Ok(Networking {
        mode,
        exposed: Some(bindings.keys().cloned().collect()),
        ports: Some(bindings.into_iter().map(|(k, v)| (k, Some(v))).collect()),
    })
}

/// A re-attached container's completion deadline from its labels: the time left
/// (none once it has passed) and the task's `max_completion_time`.
pub(super) fn deadline_of(labels: &HashMap<String, String>) -> Option<(Duration, Duration)> {
    let ms = |key: &str| {
        labels
            .get(key)?
            .parse::<u64>()
            .ok()
            .map(Duration::from_millis)
    };
    let (at, limit) = (ms(DEADLINE_LABEL)?, ms(LIMIT_LABEL)?);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Some((at.saturating_sub(now), limit))
}
