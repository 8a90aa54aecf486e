//! Processes the agent knows by pid and start time: executors it started, or found
//! still running after a restart. A pid alone may have been reused since.

/// The process's start time in clock ticks since boot (`/proc/<pid>/stat` field 22),
/// which tells a process from a later one that reuses its pid.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None; // a zombie has exited
    }
    fields.get(19)?.parse().ok()
}

/// Whether the process that was `pid` at `start` still runs.
pub fn is_alive(pid: u32, start: u64) -> bool {
    start_time(pid).is_some_and(|s| s == start)
}

/// Kills an executor's whole process group (it leads its own), if it is still the
/// process the agent knows.
pub fn kill_group(pid: u32, start: u64) {
    if !is_alive(pid, start) {
        return;
    }
    let Ok(pid) = i32::try_from(pid) else { return };
    let group = nix::unistd::Pid::from_raw(pid);
    if let Err(e) = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL) {
        tracing::warn!(pid, error = %e, "cannot kill the executor's process group");
    }
}
