//! Limits the agent enforces by watching its tasks rather than through the kernel:
//! the ports a native task listens on in the host's network namespace (Mesos'
//! `network/ports` isolator, see `crate::ports`). A task found over its limit is
//! killed at once, and its terminal update says why: TASK_FAILED,
//! REASON_CONTAINER_LIMITATION, the ports in `limitation.resources`. Why is
//! checkpointed before the kill is sent, so an update arriving after an agent
//! restart says it too.

use std::time::Instant;

use cairn_api::Resources;
use cairn_api::internal::TaskLimited;
use cairn_api::internal::checkpoint_record::Record;
use cairn_api::resources::Ranges;
use cairn_api::v1::{
    DurationInfo, FrameworkId, KillPolicy, TaskId, TaskResourceLimitation, TaskState, TaskStatus,
    container_info, task_status,
};

use super::Core;
use crate::checkpoint::TaskKey;
use crate::executor_cgroup as cgroup;
use crate::executor_process::containerizer::docker;
use crate::input::Input;
use crate::ports::{Violation, Watched};

/// A task and the run of it a scan saw.
type Run = (TaskKey, String);
/// A task to scan: its run, where its processes are found (a cgroup, or a Docker
/// container's name), and the ports it holds.
type ToWatch = (Run, String, Ranges);

/// The ports watch's state on the core.
pub(super) struct PortsWatch {
    next: Instant,
    scanning: bool,
}

impl PortsWatch {
    pub(super) fn new() -> Self {
        Self {
            next: Instant::now(),
            scanning: false,
        }
    }
}

impl Core {
    /// Starts a scan of native and Docker tasks' listening ports, off the core, when
    /// one is due and none is under way.
    pub(super) fn watch_ports(&mut self) {
        let Some(every) = self.config.ports_watch_interval else {
            return;
        };
        let now = Instant::now();
        if self.ports.scanning || now < self.ports.next {
            return;
        }
        self.ports.next = now + every;
        let (native, docker) = self.watched_tasks();
        if native.is_empty() && docker.is_empty() {
            return;
        }
        self.ports.scanning = true;
        let core = self.launcher.core.clone();
        tokio::spawn(async move {
            // A Docker task's processes are found by its container's first one.
            let mut pids = Vec::new();
            for (key, name, allowed) in docker {
                if let Some(pid) = docker::container_pid(&name).await {
                    pids.push((key, pid, allowed));
                }
            }
            let scan = tokio::task::spawn_blocking(move || {
                // Every process of the task's cgroups and those below them.
                let watch = |key, roots, allowed| Watched {
                    key,
                    pids: (cgroup::dirs_below(roots).iter())
                        .flat_map(|d| cgroup::procs_of(d))
                        .collect(),
                    allowed,
                };
                let native = (native.into_iter())
                    .map(|(key, path, allowed)| watch(key, cgroup::dirs_at(&path), allowed));
                let docker = (pids.into_iter())
                    .map(|(key, pid, allowed)| watch(key, cgroup::dirs_of_process(pid), allowed));
                crate::ports::scan(native.chain(docker).collect())
            });
            let found = scan.await.unwrap_or_default();
            let _ = core.send(Input::PortsChecked(found)).await;
        });
    }

    /// The live native tasks (by their cgroup) and Docker tasks (by their
    /// container's name) to scan, each with its run and the ports it holds.
    fn watched_tasks(&self) -> (Vec<ToWatch>, Vec<ToWatch>) {
        let state = &self.checkpoint.state;
        let (mut native, mut docker) = (Vec::new(), Vec::new());
        let live = (state.tasks.iter())
            .filter(|(_, t)| t.launched && !t.state.is_terminal() && t.info.executor.is_none());
        for (key, t) in live {
            let held = Resources::from_proto(&t.info.resources).unwrap_or_default();
            let allowed = held.ranges("ports").cloned().unwrap_or_default();
            let run = (key.clone(), t.container_id.clone());
            let kind = cairn_api::charges::container_type(&t.info);
            if kind == container_info::Type::Docker as i32 {
                docker.push((run, docker::container_name(&key.0, &key.1), allowed));
            } else if kind != container_info::Type::Wasm as i32
                && let Some(executor) = state.executors.get(&t.executor_id)
            {
                let executor_cgroup = cgroup::ExecutorCgroup::at(&executor.cgroup);
                let path = format!("{}/{}", executor_cgroup.containers_path(), key.1);
                native.push((run, path, allowed));
            }
        }
        (native, docker)
    }

    /// Kills each task of a scan's findings that is still the run the scan saw.
    pub(super) fn ports_checked(&mut self, found: Vec<Violation<Run>>) {
        self.ports.scanning = false;
        for Violation {
            key: (key, run),
            ports,
        } in found
        {
            let live = self.checkpoint.state.tasks.get(&key).is_some_and(|t| {
                t.container_id == run && t.launched && !t.state.is_terminal() && t.limited.is_none()
            });
            if !live {
                continue;
            }
            let held = (self.checkpoint.state.tasks[&key].info.resources.iter())
                .find(|r| r.name == "ports")
                .and_then(|r| Resources::from_proto(std::slice::from_ref(r)).ok())
                .map_or_else(|| "none".to_owned(), |r| r.to_string());
            let list: Vec<String> = ports.iter().map(u16::to_string).collect();
            let message = format!(
                "Task listened on port {} outside its ports resources ({held})",
                list.join(", ")
            );
            tracing::warn!(
                framework_id = key.0,
                task_id = key.1,
                message,
                "killing task"
            );
            self.checkpoint.record(Record::Limited(TaskLimited {
                framework_id: Some(FrameworkId {
                    value: key.0.clone(),
                }),
                task_id: Some(TaskId {
                    value: key.1.clone(),
                }),
                container_id: run,
                message,
                ports: ports.iter().map(|p| u32::from(*p)).collect(),
            }));
            let now = KillPolicy {
                grace_period: Some(DurationInfo { nanoseconds: 0 }),
            };
            let task_id = TaskId {
                value: key.1.clone(),
            };
            self.kill_task(&key.0, task_id, Some(now));
        }
    }

    /// A terminal update of a task killed over its ports says so.
    pub(super) fn apply_limitation(&mut self, key: &TaskKey, status: &mut TaskStatus) {
        if !TaskState::try_from(status.state).is_ok_and(TaskState::is_terminal) {
            return;
        }
        let Some(limited) = (self.checkpoint.state.tasks.get(key)).and_then(|t| t.limited.clone())
        else {
            return;
        };
        let ranges = limited.ports.iter().map(|p| (u64::from(*p), u64::from(*p)));
        status.state = TaskState::TaskFailed as i32;
        status.reason = Some(task_status::Reason::ContainerLimitation as i32);
        status.source = task_status::Source::Agent as i32;
        status.message = limited.message;
        status.limitation = Some(TaskResourceLimitation {
            resources: Resources::new().with_ranges("ports", ranges).to_proto(),
        });
    }
}
