//! What a native task's process does between fork and exec, as async-signal-safe
//! system calls only: join its cgroup, enter its namespaces (in a user namespace of
//! its own when the executor is unprivileged), forbid new privileges, and become its
//! user.

use crate::user::TaskUser;

/// What the child does between fork and exec: join the cgroup (writing "0" to each
/// `cgroup.procs` it holds open), unshare namespaces, then drop to the task's user.
pub(super) fn enter_container(
    cmd: &mut tokio::process::Command,
    fds: Vec<i32>,
    unshare: i32,
    ids: Option<TaskUser>,
    user_maps: Option<(String, String)>,
) {
    // SAFETY: between fork and exec the closure calls only async-signal-safe
    // system calls (write, unshare, mount, prctl, setgroups, setgid, setuid) on values
    // prepared before the fork, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // The executor is not dumpable (see `cairn executor`'s start); its child
            // must be, to write its own `/proc/self` maps. Exec makes it so anyway.
            if nix::libc::prctl(nix::libc::PR_SET_DUMPABLE, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            crate::process::join_cgroups(&fds)?;
            // Namespaces before the user switch: unsharing needs root, or a user
            // namespace of the task's own mapping only its user.
            let own_user = if user_maps.is_some() {
                nix::libc::CLONE_NEWUSER
            } else {
                0
            };
            if unshare != 0 && nix::libc::unshare(unshare | own_user) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some((uid_map, gid_map)) = &user_maps {
                write_proc_self(c"/proc/self/setgroups", b"deny")?;
                write_proc_self(c"/proc/self/uid_map", uid_map.as_bytes())?;
                write_proc_self(c"/proc/self/gid_map", gid_map.as_bytes())?;
            }
            // Mounts the task makes must not propagate back to the host.
            if unshare & nix::libc::CLONE_NEWNS != 0
                && nix::libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    nix::libc::MS_REC | nix::libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if unshare & nix::libc::CLONE_NEWPID != 0 {
                enter_pid_namespace(unshare & nix::libc::CLONE_NEWNS != 0)?;
            }
            crate::process::become_user(ids.as_ref())
        });
    }
}

/// Writes `bytes` to a file of `/proc/self`, between fork and exec.
///
/// # Safety
/// Only async-signal-safe calls (open, write, close); allocates nothing.
unsafe fn write_proc_self(path: &std::ffi::CStr, bytes: &[u8]) -> std::io::Result<()> {
    // SAFETY: plain system calls on a path and buffer that outlive them.
    unsafe {
        let fd = nix::libc::open(path.as_ptr(), nix::libc::O_WRONLY | nix::libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let written = nix::libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        nix::libc::close(fd);
        if written != bytes.len() as isize {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// In the child, after `unshare(CLONE_NEWPID)`: only the children of this process
/// enter the new namespace, so it forks once. The child, PID 1 inside, goes on to
/// exec the task (with `/proc` of its own namespace when it has a mount namespace);
/// this process stays outside, ignores SIGTERM (the kill asks the process group),
/// waits, and ends as the task did, so the executor sees the task's own status.
///
/// # Safety
/// Runs between fork and exec: only async-signal-safe calls, no allocation.
unsafe fn enter_pid_namespace(own_proc: bool) -> std::io::Result<()> {
    use nix::libc;
    // SAFETY: plain system calls on this process, as the caller requires.
    unsafe {
        let child = libc::fork();
        if child < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if child == 0 {
            if own_proc
                && libc::mount(
                    c"proc".as_ptr(),
                    c"/proc".as_ptr(),
                    c"proc".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    std::ptr::null(),
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            return Ok(());
        }
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        // The spawner waits for exec on a close-on-exec pipe this process holds and
        // never execs: close every descriptor but the standard three.
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        let mut status = 0;
        loop {
            let r = libc::waitpid(child, &mut status, 0);
            if r == child {
                break;
            }
            if r < 0 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(127);
            }
        }
        if libc::WIFSIGNALED(status) {
            let signal = libc::WTERMSIG(status);
            libc::signal(signal, libc::SIG_DFL);
            libc::kill(libc::getpid(), signal);
            libc::_exit(128 + signal);
        }
        libc::_exit(libc::WEXITSTATUS(status));
    }
}
