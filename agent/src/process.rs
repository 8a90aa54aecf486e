//! Processes the agent starts and knows by pid and start time: executors it started,
//! or found still running after a restart (a pid alone may have been reused since),
//! and the binary and confinement its children start with.

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

/// What the agent's child (an executor, a compile step) does between fork and exec,
/// as root still: join its cgroup (writing "0" to each `cgroup.procs` held open),
/// forbid any later gain of privileges, then become `user` (groups, gid, uid) when
/// there is one to become.
pub fn confine(
    cmd: &mut tokio::process::Command,
    procs: Vec<std::fs::File>,
    user: Option<crate::user::TaskUser>,
) {
    let fds: Vec<i32> = procs.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
    // SAFETY: between fork and exec the closure makes only async-signal-safe system
    // calls (write, prctl, setgroups, setgid, setuid) on values prepared before the
    // fork, and allocates nothing. `procs` is moved in, so the descriptors stay open
    // until the command is dropped, after the spawn.
    unsafe {
        cmd.pre_exec(move || {
            let _held = &procs;
            join_cgroups(&fds)?;
            become_user(user.as_ref())
        });
    }
}

/// Between fork and exec: joins the cgroups whose `cgroup.procs` the descriptors
/// hold open, by writing "0" (this process) to each.
///
/// # Safety
/// Only async-signal-safe calls (write); allocates nothing.
pub unsafe fn join_cgroups(fds: &[i32]) -> std::io::Result<()> {
    for &fd in fds {
        // SAFETY: a write of a static buffer to a descriptor the caller holds open.
        if unsafe { nix::libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Between fork and exec: forbids any later gain of privileges (no setuid or
/// file-capability binary, `sudo` or `ping`, raises the process again), then becomes
/// `user` (groups, gid, uid) when there is one to become.
///
/// # Safety
/// Only async-signal-safe calls (prctl, setgroups, setgid, setuid); allocates nothing.
pub unsafe fn become_user(user: Option<&crate::user::TaskUser>) -> std::io::Result<()> {
    // SAFETY: plain system calls on this process, with values prepared before the fork.
    unsafe {
        if nix::libc::prctl(nix::libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if let Some(user) = user
            && (nix::libc::setgroups(user.groups.len(), user.groups.as_ptr()) != 0
                || nix::libc::setgid(user.gid) != 0
                || nix::libc::setuid(user.uid) != 0)
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The `cairn` executable the agent starts executors and compile steps from, opened
/// once. An unprivileged child may not be able to reach the file by its path (a build tree
/// under `/root`); `/proc/self/fd/<n>` reaches it whatever the directories allow, as
/// `fexecve(3)` does.
#[derive(Debug)]
pub struct CairnBinary {
    file: std::fs::File,
}

impl CairnBinary {
    pub fn open(path: &std::path::Path) -> std::io::Result<Self> {
        Ok(Self {
            file: std::fs::File::open(path)?,
        })
    }

    pub(crate) fn program(&self) -> String {
        format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&self.file)
        )
    }
}
