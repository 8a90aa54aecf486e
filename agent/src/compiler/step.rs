//! One run of the compile step: `cairn compile` as a process of its own, as the
//! task's user with no way back to privileges, in a cgroup of its own bounded in
//! memory, CPU and processes, with a deadline. The module goes in on stdin, the
//! artifact comes back on stdout (bounded); what goes wrong is said on stderr.

use std::process::Stdio;
use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::CompileConfig;
use crate::executor_cgroup::{ExecutorCgroup, ExecutorLimits};
use crate::process::CairnBinary;
use crate::user::TaskUser;

/// No artifact is larger than this (modules are capped at 256 MiB).
pub const MAX_ARTIFACT_BYTES: u64 = 1 << 30;
/// What of the compile step's stderr a task's message carries.
const MAX_ERROR_BYTES: u64 = 4 << 10;
/// Threads the compiler may start (it compiles functions in parallel).
const COMPILE_PIDS: i64 = 256;

/// Why a compile step gave no artifact.
#[derive(Debug, Clone)]
pub enum StepError {
    /// The module's doing (invalid, or too large to compile): the same bytes would
    /// fail the same way, so the failure is remembered.
    Module(String),
    /// The step ran out of time or was killed: maybe the module's doing, maybe a busy
    /// machine's, so the task fails but the next one tries again.
    Transient(String),
    /// The agent's (it could not start or confine the step): tried again next time.
    Agent(String),
}

/// What one step needs from the agent.
pub struct Step<'a> {
    pub binary: &'a CairnBinary,
    pub cgroups_root: &'a str,
    pub config: &'a CompileConfig,
    /// Whom it runs as; none: the agent's own user.
    pub user: Option<&'a TaskUser>,
}

impl Step<'_> {
    /// Compiles `module` (`metered`: with fuel metering); returns the artifact.
    pub async fn run(&self, module: Arc<Vec<u8>>, metered: bool) -> Result<Vec<u8>, StepError> {
        let confined = nix::unistd::geteuid().is_root();
        let mut cgroup = Confinement(None);
        let procs = if confined {
            let limits = ExecutorLimits {
                cpus: self.config.cpus,
                mem_bytes: self.config.memory_bytes,
                pids: COMPILE_PIDS,
            };
            // Made inside the guard: what is made of it goes however the step ends.
            let made = cgroup
                .0
                .insert(ExecutorCgroup::fresh_compile(self.cgroups_root));
            match made.create(limits, None) {
                Ok(procs) => procs,
                Err(e) => {
                    cgroup.destroy().await;
                    return Err(StepError::Agent(format!(
                        "cannot confine the compile step: {e}"
                    )));
                }
            }
        } else {
            Vec::new()
        };
        let result = self.spawn_and_wait(procs, module, metered).await;
        let oom_killed = cgroup.0.as_ref().is_some_and(|c| c.oom_kills() > 0);
        cgroup.destroy().await;
        let too_much = || {
            StepError::Module(format!(
                "compiling it needed more than {} MiB of memory (the agent's --compile-memory)",
                self.config.memory_bytes >> 20
            ))
        };
        match result {
            Err(Waited::TimedOut) => Err(StepError::Transient(format!(
                "compiling it took longer than {} (the agent's --compile-timeout)",
                humantime::format_duration(self.config.timeout)
            ))),
            Err(Waited::Failed(e)) => Err(StepError::Agent(e)),
            Ok(_) if oom_killed => Err(too_much()),
            Ok(Err(StepError::Transient(why))) if why == ALLOCATION_FAILED => Err(too_much()),
            Ok(output) => output,
        }
    }

    async fn spawn_and_wait(
        &self,
        procs: Vec<std::fs::File>,
        module: Arc<Vec<u8>>,
        metered: bool,
    ) -> Result<Result<Vec<u8>, StepError>, Waited> {
        let mut cmd = tokio::process::Command::new(self.binary.program());
        cmd.arg0("cairn").arg("compile");
        if metered {
            cmd.arg("--metered");
        }
        cmd.env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        crate::process::confine(&mut cmd, procs, self.user.cloned());
        bound_data(&mut cmd, self.config.memory_bytes);
        let mut child = cmd
            .spawn()
            .map_err(|e| Waited::Failed(format!("cannot start the compile step: {e}")))?;
        let (mut stdin, stdout, stderr) =
            match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
                (Some(i), Some(o), Some(e)) => (i, o, e),
                _ => return Err(Waited::Failed("the compile step has no pipes".into())),
            };
        let feed = async move {
            // A step that dies early closes its end: its exit says why.
            let _ = stdin.write_all(&module).await;
            drop(stdin);
        };
        let mut artifact = Vec::new();
        let mut error = Vec::new();
        let collect = async {
            let (_, out, err, status) = tokio::join!(
                feed,
                read_bounded(stdout, MAX_ARTIFACT_BYTES, &mut artifact),
                read_bounded(stderr, MAX_ERROR_BYTES, &mut error),
                child.wait(),
            );
            (out, err, status)
        };
        let (out, _, status) = tokio::time::timeout(self.config.timeout, collect)
            .await
            .map_err(|_| Waited::TimedOut)?;
        let status =
            status.map_err(|e| Waited::Failed(format!("waiting for the compile step: {e}")))?;
        let overflowed =
            out.map_err(|e| Waited::Failed(format!("reading the compile step's output: {e}")))?;
        if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&status) {
            // Past its data limit, an allocation fails and Rust aborts, saying so.
            if signal == nix::libc::SIGABRT && error.starts_with(b"memory allocation of ") {
                return Ok(Err(StepError::Transient(ALLOCATION_FAILED.to_owned())));
            }
            // The cgroup's OOM kill is told apart by the caller.
            return Ok(Err(StepError::Transient(format!(
                "the compile step was killed by signal {signal}"
            ))));
        }
        if !status.success() {
            let said = String::from_utf8_lossy(&error).trim().to_owned();
            return Ok(Err(StepError::Module(if said.is_empty() {
                format!("the compile step ended {status}")
            } else {
                said
            })));
        }
        if overflowed {
            return Ok(Err(StepError::Module(format!(
                "its compiled code is larger than {MAX_ARTIFACT_BYTES} bytes"
            ))));
        }
        Ok(Ok(artifact))
    }
}

/// Reads `from` to its end, keeping the first `limit` bytes in `into` and dropping the
/// rest (a step is never left blocked on a full pipe); says whether any was dropped.
async fn read_bounded(
    mut from: impl tokio::io::AsyncRead + Unpin,
    limit: u64,
    into: &mut Vec<u8>,
) -> std::io::Result<bool> {
    (&mut from).take(limit).read_to_end(into).await?;
    let dropped = tokio::io::copy(&mut from, &mut tokio::io::sink()).await?;
    Ok(dropped > 0)
}

enum Waited {
    TimedOut,
    Failed(String),
}

/// What a step that ran out of memory under its data limit said, told apart by `run`.
const ALLOCATION_FAILED: &str = "the compile step could not allocate memory";

/// Bounds the step's data (heap and every private writable mapping) to `bytes`: its
/// memory bound where the agent cannot make cgroups (it does not run as root), and
/// under a cgroup the bound that is hit first, with a clear end (an allocation that
/// fails) rather than a kill.
fn bound_data(cmd: &mut tokio::process::Command, bytes: u64) {
    let limit = nix::libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: between fork and exec the closure makes one async-signal-safe system
    // call (setrlimit) on a value prepared before the fork, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if nix::libc::setrlimit(nix::libc::RLIMIT_DATA, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A compile step's cgroup, removed with whatever still runs in it however the step
/// ends: a task killed while its module compiles drops the step mid-way.
struct Confinement(Option<ExecutorCgroup>);

impl Confinement {
    async fn destroy(&mut self) {
        if let Some(cgroup) = self.0.take() {
            let _ = tokio::task::spawn_blocking(move || cgroup.destroy()).await;
        }
    }
}

impl Drop for Confinement {
    fn drop(&mut self) {
        if let Some(cgroup) = self.0.take() {
            tokio::task::spawn_blocking(move || cgroup.destroy());
        }
    }
}
