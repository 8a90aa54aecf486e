//! Wasm tasks: a WASI command module or p2 component, run as a wasmtime instance on
//! this process's async runtime (thousands at once), under the limits of its
//! resources, fuel and time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_api::internal::CompiledProgram;
use cairn_api::v1::{CommandInfo, ContainerInfo, TaskInfo, TaskState, task_status::Reason};
use cairn_sandbox::{
    CancelHandle, Exit, Limit, Program, ProgramKind, RunOutcome, RunSpec, Sandbox,
};
use tokio::sync::oneshot;

use super::caps;
use super::{Containerizer, LaunchError, LaunchSpec, Termination, Usage, label};

struct Run {
    cancel: CancelHandle,
    ended: Option<oneshot::Receiver<Termination>>,
}

/// Runs wasm tasks in this process's sandbox, as the agent compiled them.
pub struct WasmContainerizer {
    sandbox: Arc<Sandbox>,
    /// The agent's artifacts directory.
    artifacts: PathBuf,
    runs: Mutex<HashMap<String, Run>>,
}

impl WasmContainerizer {
    pub fn new(sandbox: Arc<Sandbox>, artifacts: PathBuf) -> Self {
        Self {
            sandbox,
            artifacts,
            runs: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Run>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl Containerizer for WasmContainerizer {
    async fn launch(&self, spec: &LaunchSpec) -> Result<(), LaunchError> {
        // A program this process loaded before: nothing to read.
        let prepared = match linked(&self.sandbox, &spec.task, &spec.sandbox, &spec.programs) {
            Some(ready) => ready,
            // Reading, hashing and loading the artifact block.
            None => {
                let (sandbox, spec) = (self.sandbox.clone(), spec.clone());
                let artifacts = self.artifacts.clone();
                tokio::task::spawn_blocking(move || {
                    prepare(
                        &sandbox,
                        &artifacts,
                        &spec.task,
                        &spec.sandbox,
                        &spec.programs,
                    )
                })
                .await
                .map_err(|e| LaunchError::Wasm(format!("preparing the task failed: {e}")))?
            }
        };
        let (program, run_spec) = prepared?;
        let cancel = CancelHandle::default();
        let (done, ended) = oneshot::channel();
        let (sandbox, handle) = (self.sandbox.clone(), cancel.clone());
        tokio::spawn(async move {
            let termination = match sandbox.run(&program, &run_spec, &handle).await {
                Ok(outcome) => report(&run_spec, outcome),
                Err(e) => Termination::launch_failed(e.to_string()),
            };
            let _ = done.send(termination);
        });
        self.lock().insert(
            spec.task_id(),
            Run {
                cancel,
                ended: Some(ended),
            },
        );
        Ok(())
    }

    async fn wait(&self, task_id: &str) -> Termination {
        let ended = self.lock().get_mut(task_id).and_then(|r| r.ended.take());
        let termination = match ended {
            Some(ended) => ended.await.unwrap_or_else(|_| {
                Termination::new(
                    TaskState::TaskFailed,
                    "the executor failed while running the task",
                    Some(Reason::ExecutorTerminated),
                )
            }),
            None => Termination::launch_failed("no such container"),
        };
        self.lock().remove(task_id);
        termination
    }

    /// A WASI command has no signal to catch, so there is nothing to give a grace
    /// period to: it is interrupted at once.
    async fn kill(&self, task_id: &str, _grace: Duration) {
        if let Some(run) = self.lock().get(task_id) {
            run.cancel.cancel();
        }
    }

    async fn recover(&self, _framework_id: &str) -> Vec<String> {
        // Instances live in the executor process and end with it.
        Vec::new()
    }

    async fn usage(&self, _task_id: &str) -> Option<Usage> {
        // Reported per task at its end (fuel, peak memory, wall time).
        None
    }

    fn enforces_completion_time(&self) -> bool {
        true
    }
}

/// The program the agent compiled for the file `value`, if this process holds it
/// linked already.
pub(crate) fn linked_program(
    sandbox: &Sandbox,
    programs: &[CompiledProgram],
    value: &str,
) -> Option<Program> {
    let program = programs.iter().find(|p| p.name == value)?;
    sandbox.linked(
        program.module_sha256.as_slice().try_into().ok()?,
        program.metered,
    )
}

/// Loads the artifact the agent compiled for the file `value` from its artifacts
/// directory. Blocking: it reads and hashes the file. An executor compiles nothing:
/// a program the agent did not compile does not run.
pub(crate) fn load_program(
    sandbox: &Sandbox,
    artifacts: &Path,
    programs: &[CompiledProgram],
    value: &str,
) -> Result<Program, LaunchError> {
    let program = programs
        .iter()
        .find(|p| p.name == value)
        .ok_or_else(|| LaunchError::Wasm(format!("the agent compiled no program for {value}")))?;
    let module: [u8; 32] = program
        .module_sha256
        .as_slice()
        .try_into()
        .map_err(|_| LaunchError::Wasm(format!("{value}: not a module digest")))?;
    let artifact =
        crate::artifact_file::read_checked(artifacts, &program.artifact, &program.artifact_sha256)
            .map_err(LaunchError::Wasm)?;
    // SAFETY: the artifact's bytes have the sha256 the agent named, over its socket,
    // for the file its compile step wrote with `cairn_sandbox::precompile` (and no
    // one but the agent writes the directory), so they are bytes `precompile` made.
    unsafe { sandbox.load(&module, &artifact, program.metered) }
        .map_err(|e| LaunchError::Wasm(format!("{value}: {e}")))
}

/// A container's `wasm.fuel` budget: a task's for its run, a custom executor's for
/// its instance's life. Only a budgeted program is compiled with metering.
pub(crate) fn fuel_of(container: Option<&ContainerInfo>) -> Option<u64> {
    container.and_then(|c| c.wasm.as_ref()).and_then(|w| w.fuel)
}

/// The task's command and the module it names.
fn module_of(task: &TaskInfo) -> Result<(&CommandInfo, String), LaunchError> {
    let command = task.command.as_ref().ok_or_else(|| {
        LaunchError::Wasm("a wasm task needs `command.value` naming its module".into())
    })?;
    Ok((command, command.value.clone().unwrap_or_default()))
}

/// The task ready to run without reading anything: this process has loaded its
/// program before.
fn linked(
    sandbox: &Sandbox,
    task: &TaskInfo,
    dir: &Path,
    programs: &[CompiledProgram],
) -> Option<Result<(Program, RunSpec), LaunchError>> {
    let value = task.command.as_ref()?.value.as_deref()?;
    let program = linked_program(sandbox, programs, value)?;
    Some(spec(task, dir, program))
}

/// Loads the task's program and turns the task into a [`RunSpec`]; every error is a
/// message for the task's TASK_FAILED.
fn prepare(
    sandbox: &Sandbox,
    artifacts: &Path,
    task: &TaskInfo,
    dir: &Path,
    programs: &[CompiledProgram],
) -> Result<(Program, RunSpec), LaunchError> {
    let (_, value) = module_of(task)?;
    let program = load_program(sandbox, artifacts, programs, &value)?;
    spec(task, dir, program)
}

/// The task's [`RunSpec`] for a program already compiled.
fn spec(task: &TaskInfo, dir: &Path, program: Program) -> Result<(Program, RunSpec), LaunchError> {
    let (command, value) = module_of(task)?;
    let fuel = fuel_of(task.container.as_ref());
    if program.kind() != ProgramKind::Command {
        return Err(LaunchError::Wasm(format!(
            "{value} is a custom executor, not a command: name it in the task's `executor`"
        )));
    }
    let (memory_bytes, disk_bytes) = caps(&task.resources)?;
    let args = if command.arguments.is_empty() {
        vec![value.clone()]
    } else {
        command.arguments.clone()
    };
    // What Mesos' executors set, as seen from inside the sandbox.
    let mut env = vec![
        ("MESOS_SANDBOX".to_owned(), "/".to_owned()),
        (
            "MESOS_TASK_ID".to_owned(),
            task.task_id.clone().unwrap_or_default().value,
        ),
    ];
    if let Some(e) = command.environment.as_ref() {
        env.extend(
            e.variables
                .iter()
                .map(|v| (v.name.clone(), v.value.clone())),
        );
    }
    let timeout = task
        .max_completion_time
        .as_ref()
        .filter(|d| d.nanoseconds > 0)
        .map(|d| Duration::from_nanos(d.nanoseconds as u64));
    let spec = RunSpec {
        args,
        env,
        sandbox_dir: dir.to_path_buf(),
        stdout: dir.join("stdout"),
        stderr: dir.join("stderr"),
        memory_bytes,
        fuel,
        timeout,
        disk_bytes,
    };
    Ok((program, spec))
}

/// Maps how the run ended onto a Mesos state, reason and message, with usage as labels.
fn report(spec: &RunSpec, outcome: RunOutcome) -> Termination {
    let limited =
        |reason, message: String| Termination::new(TaskState::TaskFailed, message, Some(reason));
    let mut termination = match outcome.exit {
        Exit::Code(code) => Termination::exit_code(code.into()),
        Exit::Limit(Limit::Memory) => limited(
            Reason::ContainerLimitationMemory,
            format!(
                "Memory limit exceeded: the task may use {} bytes of linear memory",
                spec.memory_bytes
            ),
        ),
        Exit::Limit(Limit::Fuel) => limited(
            Reason::ContainerLimitationFuel,
            format!(
                "Fuel exhausted: the task's budget was {}",
                spec.fuel.unwrap_or_default()
            ),
        ),
        Exit::Limit(Limit::Time) => Termination::timed_out(spec.timeout.unwrap_or_default()),
        Exit::Limit(Limit::Disk) => limited(
            Reason::ContainerLimitationDisk,
            format!(
                "Disk limit exceeded: the sandbox may hold {} bytes, stdout and stderr included",
                spec.disk_bytes
            ),
        ),
        Exit::Killed => Termination::killed(),
        Exit::Trap(trap) => limited(Reason::CommandExecutorFailed, format!("wasm trap: {trap}")),
    };
    termination.labels.extend([
        label("cairn.usage.fuel_consumed", outcome.usage.fuel_consumed),
        label(
            "cairn.usage.peak_memory_bytes",
            outcome.usage.peak_memory_bytes,
        ),
        label(
            "cairn.usage.wall_time_ms",
            outcome.usage.wall_time.as_millis(),
        ),
    ]);
    termination
}
