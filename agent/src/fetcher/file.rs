//! `file://` URIs, read with the task user's rights. Mesos runs its fetcher as the
//! task's user; so does this one, for the one step that needs it: the source file is
//! opened on a short-lived thread of its own whose filesystem identity (fsuid, fsgid,
//! supplementary groups) is the user's, then copied from that descriptor by the
//! agent. A tenant thus gets only what its user may read, and the copy needs no
//! process of its own.
//!
//! Why a thread and not a child process: `setfsuid`, `setfsgid` and the raw
//! `setgroups` system call change the calling thread's credentials only (glibc's
//! `setgroups` would change every thread's, hence the raw call), and a thread that
//! changed them ends once the file is open, so no other work ever runs with them. A
//! process would cost a fork and an exec per URI and hand the descriptor back over a
//! socket for the same result.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

use nix::libc;
use tokio::io::AsyncReadExt as _;

use super::output::Target;
use super::{Cap, FetchError};
use crate::user::TaskUser;

/// Copies the file at `path` into `target`, read as `user`, at most `cap` bytes;
/// returns how many.
pub(super) async fn fetch(
    path: &str,
    target: &Target<'_>,
    user: &TaskUser,
    cap: Cap,
) -> Result<u64, FetchError> {
    if !path.starts_with('/') {
        return Err(target.failed("a file:// URI needs an absolute path"));
    }
    let (source, mode) = open_as(PathBuf::from(path), user, cap)
        .await
        .map_err(|why| target.failed(why))?;
    let (output, partial) = target.create(mode)?;
    let mut from = tokio::fs::File::from_std(source).take(cap.bytes.saturating_add(1));
    let mut to = tokio::fs::File::from_std(output);
    let copied = tokio::io::copy(&mut from, &mut to)
        .await
        .map_err(|e| target.failed(format!("copying {path}: {e}")))?;
    if copied > cap.bytes {
        // It grew since it was measured.
        return Err(target.failed(too_large(path, cap)));
    }
    partial.keep();
    Ok(copied)
}

/// Opens `path` for reading on a thread of its own with `user`'s filesystem
/// identity (the agent's own when it does not switch users); returns the file and
/// its permission bits.
async fn open_as(path: PathBuf, user: &TaskUser, cap: Cap) -> Result<(File, u32), String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let as_user = user.clone();
    std::thread::Builder::new()
        .name("cairn-fetch-as".into())
        .spawn(move || {
            let opened = match as_user.switch {
                true => assume(&as_user),
                false => Ok(()),
            }
            .and_then(|()| open(&path, &as_user.name, cap));
            let _ = tx.send(opened);
            // The thread ends here, and its credentials with it.
        })
        .map_err(|e| format!("cannot start a thread to read as user {}: {e}", user.name))?;
    rx.await
        .map_err(|_| format!("the thread reading as user {} died", user.name))?
}

/// Opens a regular file, refusing anything else (a FIFO, a device) and anything
/// over `cap`.
fn open(path: &std::path::Path, user: &str, cap: Cap) -> Result<(File, u32), String> {
    let shown = path.display();
    // No magic link (`/proc/self/fd/N`, `/proc/<pid>/root`): this thread is in the
    // agent's thread group, and the kernel would let it through to the agent's open
    // files whatever its filesystem ids.
    let how = nix::fcntl::OpenHow::new()
        // Never blocks on a FIFO; regular files ignore it.
        .flags(
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_NONBLOCK
                | nix::fcntl::OFlag::O_NOCTTY
                | nix::fcntl::OFlag::O_CLOEXEC,
        )
        .resolve(nix::fcntl::ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let file = nix::fcntl::openat2(nix::fcntl::AT_FDCWD, path, how)
        .map(File::from)
        .map_err(std::io::Error::from)
        .map_err(|e| match e.kind() {
            ErrorKind::PermissionDenied => {
                format!("permission denied reading {shown} as user {user}")
            }
            ErrorKind::NotFound => format!("{shown} does not exist (looked up as user {user})"),
            _ => format!("cannot read {shown} as user {user}: {e}"),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read {shown} as user {user}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    if let Some(kind) = pseudo_filesystem(&file) {
        // `/proc/self/environ` and `/proc/self/mem` are the agent's own, and open to
        // a thread of its own whatever its ids.
        return Err(format!(
            "{shown} is on {kind}, which the fetcher does not read"
        ));
    }
    if meta.len() > cap.bytes {
        return Err(too_large(&shown.to_string(), cap));
    }
    Ok((file, meta.permissions().mode()))
}

/// The kernel's view of a process or device (procfs, sysfs and the like) the file
/// is on, if it is on one: not a file a task may fetch.
fn pseudo_filesystem(file: &File) -> Option<&'static str> {
    use nix::sys::statfs::{
        CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, DEBUGFS_MAGIC, PROC_SUPER_MAGIC, SECURITYFS_MAGIC,
        SYSFS_MAGIC, TRACEFS_MAGIC, fstatfs,
    };
    let kind = fstatfs(file).ok()?.filesystem_type();
    [
        (PROC_SUPER_MAGIC, "procfs"),
        (SYSFS_MAGIC, "sysfs"),
        (DEBUGFS_MAGIC, "debugfs"),
        (SECURITYFS_MAGIC, "securityfs"),
        (TRACEFS_MAGIC, "tracefs"),
        (CGROUP_SUPER_MAGIC, "cgroupfs"),
        (CGROUP2_SUPER_MAGIC, "cgroupfs"),
    ]
    .into_iter()
    .find(|(magic, _)| *magic == kind)
    .map(|(_, name)| name)
}

fn too_large(path: &str, cap: Cap) -> String {
    format!("{path} is larger than {cap}")
}

/// Gives the calling thread `user`'s filesystem identity: supplementary groups, then
/// group, then user (an fsuid other than 0 also drops the thread's filesystem
/// capabilities, such as `CAP_DAC_OVERRIDE`). Only for a thread that ends after it.
fn assume(user: &TaskUser) -> Result<(), String> {
    let groups: Vec<libc::gid_t> = user.groups.clone();
    // SAFETY: setgroups reads `groups.len()` ids from the live vector; as a raw system
    // call it changes this thread's credentials only (64-bit Linux: 32-bit gids).
    let set = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if set != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!("cannot take user {}'s groups: {e}", user.name));
    }
    set_fs_id(libc::SYS_setfsgid, user.gid, "group", &user.name)?;
    set_fs_id(libc::SYS_setfsuid, user.uid, "user", &user.name)
}

/// `setfsuid` or `setfsgid` on this thread, checked: neither reports failure (each
/// returns the previous id either way), so a second call shows the id in effect.
fn set_fs_id(call: libc::c_long, id: u32, what: &str, user: &str) -> Result<(), String> {
    // SAFETY: both calls take an integer and change only this thread's credentials.
    let now = unsafe {
        libc::syscall(call, id);
        libc::syscall(call, id)
    };
    if now != libc::c_long::from(id) {
        return Err(format!(
            "cannot read as user {user}: the filesystem {what} id stayed {now}, not {id}"
        ));
    }
    Ok(())
}
