//! A sandbox directory as host code must see it. A tenant writes there and may plant
//! symbolic links (to `/etc/shadow`, to another tenant's sandbox, to `/proc/self/…`),
//! hard links, FIFOs, or swap a file for a link between two host calls. So every path
//! the host opens, creates, reads or changes inside a sandbox is resolved beneath the
//! directory's descriptor by the kernel, following no link at all and crossing no
//! mount: `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV` (Linux 5.6 or later). There is no check-then-open window: the check is the open, and what the
//! host then does (write, `fchown`, read) goes through the descriptor it got.
//!
//! The rules every method keeps:
//! - A path is relative and plain (`a/b`): no `..`, no root, never empty.
//! - No symbolic link is followed, wherever it points, even to a file inside the
//!   sandbox: the method fails with [`SandboxDirError::Link`]. A link is only ever
//!   looked at itself ([`SandboxDir::metadata`], [`SandboxDir::walk`]) or removed.
//! - Files are opened with `O_NONBLOCK` and must be regular: a FIFO or a device in
//!   place of `stdout` is refused instead of blocking or driving the host.
//! - A file with more than one hard link is refused. A hard link names the same inode
//!   as some file elsewhere, possibly one the tenant may not read or write (the agent
//!   runs as root, and `fs.protected_hardlinks`, which normally stops such links, is
//!   a sysctl the agent does not rely on). Refusing it keeps host writes and `fchown`
//!   off files outside the sandbox and keeps host reads from returning a file the
//!   tenant could not read itself. What it does not stop: a tenant linking a file it
//!   may already read and write gains nothing, and a link made after the host opened
//!   a file is harmless (the host holds the sandbox's own inode).
//!
//! Walks hold one descriptor per directory level and refuse names deeper than
//! [`MAX_DEPTH`] levels; [`SandboxDir::remove_dir_all`] removes trees of any depth.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::ControlFlow;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, FcntlArg, OFlag, OpenHow, RenameFlags, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;

/// The deepest directory level a walk descends to: each level holds a descriptor
/// while its children are visited, and a walk must not exhaust the process's
/// descriptors however deep a tenant nests its directories.
pub const MAX_DEPTH: usize = 128;

/// Passes [`SandboxDir::remove_dir_all`] makes before giving up on a tree that keeps
/// growing (each pass removes [`MAX_DEPTH`] levels).
const MAX_REMOVE_PASSES: usize = 1 << 16;

/// Why a sandbox path was refused, or what the kernel said.
#[derive(Debug, thiserror::Error)]
pub enum SandboxDirError {
    #[error("{path} is not a relative path inside the sandbox")]
    NotBeneath { path: PathBuf },
    #[error("{path} is, or passes through, a symbolic link; links in a sandbox are never followed")]
    Link { path: PathBuf },
    #[error("{path} is not a regular file")]
    NotRegular { path: PathBuf },
    #[error("{path} has {links} hard links; only a file with one is opened")]
    HardLinked { path: PathBuf, links: u64 },
    #[error("{path} is nested deeper than {MAX_DEPTH} directories")]
    TooDeep { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl SandboxDirError {
    /// Whether the path (or a directory on its way) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }

    fn from_errno(path: &Path, errno: Errno) -> Self {
        let path = path.to_owned();
        match errno {
            // RESOLVE_NO_SYMLINKS, RESOLVE_NO_MAGICLINKS and O_NOFOLLOW all say ELOOP.
            Errno::ELOOP => Self::Link { path },
            // RESOLVE_BENEATH or RESOLVE_NO_XDEV: the resolution would have left the
            // directory, or its file system.
            Errno::EXDEV => Self::NotBeneath { path },
            // A FIFO with no reader, a socket, or a directory opened for writing.
            Errno::ENXIO | Errno::EISDIR => Self::NotRegular { path },
            e => Self::Io {
                path,
                source: e.into(),
            },
        }
    }
}

impl From<SandboxDirError> for std::io::Error {
    fn from(e: SandboxDirError) -> Self {
        use std::io::ErrorKind;
        let kind = match &e {
            SandboxDirError::Io { source, .. } => source.kind(),
            SandboxDirError::NotBeneath { .. } | SandboxDirError::Link { .. } => {
                ErrorKind::PermissionDenied
            }
            _ => ErrorKind::InvalidInput,
        };
        std::io::Error::new(kind, e)
    }
}

type Result<T> = std::result::Result<T, SandboxDirError>;

/// What a walk sees of one name, as `lstat` reports it: a link is its own entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkEntry {
    pub kind: EntryKind,
    /// The file's length in bytes (a link's: its target's length).
    pub len: u64,
    /// Bytes of disk the inode holds (`st_blocks` × 512; sparse files count less).
    pub allocated: u64,
    /// Hard links to the inode: a walk reports every name, so an inode with two
    /// names is seen twice.
    pub links: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    /// A FIFO, socket or device node.
    Other,
}

impl WalkEntry {
    fn of(stat: &FileStat) -> Self {
        use nix::libc::{S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};
        let kind = match stat.st_mode & S_IFMT {
            S_IFREG => EntryKind::File,
            S_IFDIR => EntryKind::Dir,
            S_IFLNK => EntryKind::Symlink,
            _ => EntryKind::Other,
        };
        // nlink_t is 64 bits on x86_64 and 32 on some other targets.
        #[allow(clippy::unnecessary_cast)]
        let links = stat.st_nlink as u64;
        Self {
            kind,
            len: stat.st_size.max(0) as u64,
            allocated: (stat.st_blocks.max(0) as u64).saturating_mul(512),
            links,
        }
    }
}

/// An open sandbox directory; paths given to its methods are relative to it.
#[derive(Debug)]
pub struct SandboxDir {
    fd: OwnedFd,
    path: PathBuf,
}

/// Beneath the directory, following no link, and not into another mount: a mount in
/// a sandbox (a bind of a host directory, a FUSE file system that never answers) is
/// nothing the host put there.
fn resolve() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH
        | ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_MAGICLINKS
        | ResolveFlag::RESOLVE_NO_XDEV
}

/// Refuses anything but plain names (`a/b`): no `..`, no root, never empty.
fn relative(path: &Path) -> Result<&Path> {
    let plain = path.components().all(|c| matches!(c, Component::Normal(_)))
        && path.components().next().is_some();
    if plain {
        Ok(path)
    } else {
        Err(SandboxDirError::NotBeneath {
            path: path.to_owned(),
        })
    }
}

/// Opens one name (never a path) in `dir` as a directory, not following a link.
fn open_child_dir(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    nix::fcntl::openat(dir, name, flags, Mode::empty())
}

/// Whether `name` in `dir` is a symbolic link (itself, not followed).
fn is_symlink(dir: BorrowedFd<'_>, name: &OsStr) -> bool {
    nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|s| s.st_mode & nix::libc::S_IFMT == nix::libc::S_IFLNK)
}

/// The names in `dir` but `.` and `..`, read through a fresh open of it: a
/// duplicated descriptor would share (and move) the directory's read position.
fn names(dir: BorrowedFd<'_>) -> nix::Result<Vec<OsString>> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    let mut stream = nix::dir::Dir::openat(dir, ".", flags, Mode::empty())?;
    let mut out = Vec::new();
    for entry in stream.iter() {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            out.push(OsString::from(std::ffi::OsStr::from_bytes(&name)));
        }
    }
    Ok(out)
}

impl SandboxDir {
    /// Opens `path`, a host path the agent made: the directories on its way are the
    /// agent's, and its last component must not be a link.
    pub fn open(path: &Path) -> Result<Self> {
        let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
        let fd = nix::fcntl::open(path, flags, Mode::empty())
            .map_err(|e| SandboxDirError::from_errno(path, e))?;
        Ok(Self {
            fd,
            path: path.to_owned(),
        })
    }

    /// The directory's host path, for messages and for handing to a runtime.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A second handle on the same directory.
    pub fn try_clone(&self) -> Result<Self> {
        let fd = self.fd.try_clone().map_err(|source| SandboxDirError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(Self {
            fd,
            path: self.path.clone(),
        })
    }

    fn openat(&self, rel: &Path, flags: OFlag, mode: u32) -> Result<OwnedFd> {
        let rel = relative(rel)?;
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .mode(Mode::from_bits_truncate(mode))
            .resolve(resolve());
        nix::fcntl::openat2(self.fd.as_fd(), rel, how)
            .map_err(|e| SandboxDirError::from_errno(rel, e))
    }

    /// Opens an existing regular file with one link for reading.
    pub fn open_file(&self, rel: &Path) -> Result<File> {
        let file = File::from(self.openat(rel, OFlag::O_RDONLY | OFlag::O_NONBLOCK, 0)?);
        single_regular(&file, rel)?;
        Ok(file)
    }

    /// Opens an existing regular file for reading even if it has other hard links:
    /// only for a caller that then checks the bytes against a digest it trusts (a
    /// file the agent placed from its cache), never to serve a file as it is.
    pub fn open_linked_file(&self, rel: &Path) -> Result<File> {
        let file = File::from(self.openat(rel, OFlag::O_RDONLY | OFlag::O_NONBLOCK, 0)?);
        match single_regular(&file, rel) {
            Ok(()) | Err(SandboxDirError::HardLinked { .. }) => Ok(file),
            Err(e) => Err(e),
        }
    }

    /// Reads at most `max` bytes of a file from `offset` on (fewer at its end), as
    /// [`open_file`](Self::open_file) opens it.
    pub fn read(&self, rel: &Path, offset: u64, max: u64) -> Result<Vec<u8>> {
        let io = |source| SandboxDirError::Io {
            path: rel.to_owned(),
            source,
        };
        let mut file = self.open_file(rel)?;
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut data = Vec::new();
        file.take(max).read_to_end(&mut data).map_err(io)?;
        Ok(data)
    }

    /// What `lstat` says of `rel`: a link at its end is described, not followed
    /// (a link on its way is refused).
    pub fn metadata(&self, rel: &Path) -> Result<std::fs::Metadata> {
        let fd = self.openat(rel, OFlag::O_PATH, 0)?;
        File::from(fd)
            .metadata()
            .map_err(|source| SandboxDirError::Io {
                path: rel.to_owned(),
                source,
            })
    }

    /// Creates a file that must not exist yet (`O_EXCL`: an existing name, a link
    /// included, fails with `AlreadyExists`, and no link's target is created).
    pub fn create_new(&self, rel: &Path, mode: u32) -> Result<File> {
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL;
        self.openat(rel, flags, mode).map(File::from)
    }

    /// Opens a file for appending, creating it if missing (stdout, stderr): an
    /// existing one must be a regular file with one link.
    pub fn append(&self, rel: &Path, mode: u32) -> Result<File> {
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_APPEND | OFlag::O_NONBLOCK;
        let file = File::from(self.openat(rel, flags, mode)?);
        single_regular(&file, rel)?;
        // A regular file now: the descriptor may be handed to a task as it is.
        nix::fcntl::fcntl(&file, FcntlArg::F_SETFL(OFlag::O_APPEND))
            .map_err(|e| SandboxDirError::from_errno(rel, e))?;
        Ok(file)
    }

    /// Makes sure a regular file `rel` exists, keeping no descriptor: a fresh name
    /// is made in one `mknodat`; an existing one is checked as
    /// [`append`](Self::append) checks it.
    pub fn touch(&self, rel: &Path, mode: u32) -> Result<()> {
        let rel = relative(rel)?;
        // One component: no directory on the way, and mknodat never follows a link
        // in its last (it fails on any existing name).
        if rel.components().count() == 1 {
            let made = nix::sys::stat::mknodat(
                self.fd.as_fd(),
                rel,
                SFlag::S_IFREG,
                Mode::from_bits_truncate(mode),
                0,
            );
            if made.is_ok() {
                return Ok(());
            }
        }
        self.append(rel, mode).map(drop)
    }

    /// Opens a subdirectory beneath this one.
    pub fn open_dir(&self, rel: &Path) -> Result<SandboxDir> {
        let fd = match self.openat(rel, OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0) {
            Ok(fd) => fd,
            // O_DIRECTORY answers ENOTDIR for a link at the end: say it is a link.
            Err(SandboxDirError::Io { source, .. })
                if source.raw_os_error() == Some(Errno::ENOTDIR as i32)
                    && self.metadata(rel).is_ok_and(|m| m.file_type().is_symlink()) =>
            {
                return Err(SandboxDirError::Link {
                    path: rel.to_owned(),
                });
            }
            Err(e) => return Err(e),
        };
        Ok(SandboxDir {
            fd,
            path: self.path.join(rel),
        })
    }

    /// Creates every missing directory of `rel` beneath this one (mode 0755 less the
    /// umask), none of them through a link, and opens the last.
    pub fn create_dir_all(&self, rel: &Path) -> Result<SandboxDir> {
        let rel = relative(rel)?;
        let mut dir = self.try_clone()?;
        for component in rel.components() {
            let name = component.as_os_str();
            let errno = |e| SandboxDirError::from_errno(rel, e);
            match nix::sys::stat::mkdirat(dir.fd.as_fd(), name, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(errno(e)),
            }
            let fd = open_child_dir(dir.fd.as_fd(), name).map_err(|e| match e {
                // O_DIRECTORY answers ENOTDIR for a link: say it is a link.
                Errno::ENOTDIR if is_symlink(dir.fd.as_fd(), name) => errno(Errno::ELOOP),
                e => errno(e),
            })?;
            dir = SandboxDir {
                fd,
                path: dir.path.join(name),
            };
        }
        Ok(dir)
    }

    /// Gives the directory itself to `uid:gid`, through its descriptor. A file is
    /// given the same way: `std::os::unix::fs::fchown` on what
    /// [`append`](Self::append) or [`create_new`](Self::create_new) returned.
    pub fn chown(&self, uid: u32, gid: u32) -> Result<()> {
        std::os::unix::fs::fchown(&self.fd, Some(uid), Some(gid)).map_err(|source| {
            SandboxDirError::Io {
                path: self.path.clone(),
                source,
            }
        })
    }

    /// Visits every name beneath this directory, parents before children, with its
    /// path relative to this directory. Links are reported, never followed; a
    /// directory swapped for a link between the listing and the descent is skipped.
    /// `visit` may stop the walk with `Break`. Fails past [`MAX_DEPTH`] levels.
    pub fn walk(&self, mut visit: impl FnMut(&Path, &WalkEntry) -> ControlFlow<()>) -> Result<()> {
        let mut rel = PathBuf::new();
        walk_dir(self.fd.as_fd(), &mut rel, 1, &mut visit).map(drop)
    }

    /// Removes `rel` and, if it is a directory, everything beneath it, following no
    /// link (a link is removed, never its target). Sandbox clean-up: open the
    /// directory that holds the sandbox and remove the sandbox's name.
    pub fn remove_dir_all(&self, rel: &Path) -> Result<()> {
        let rel = relative(rel)?;
        let errno = |e| SandboxDirError::from_errno(rel, e);
        let parent = match rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(p) => self.open_dir(p)?,
            None => self.try_clone()?,
        };
        let name = rel.file_name().unwrap_or_default();
        match nix::unistd::unlinkat(parent.fd.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
            Err(Errno::EISDIR) => {}
            done => return done.map_err(errno),
        }
        let top = open_child_dir(parent.fd.as_fd(), name).map_err(errno)?;
        let mut passes = 0;
        // Levels past MAX_DEPTH are moved up into `top` and removed by the next pass.
        while empty(top.as_fd(), top.as_fd(), 1).map_err(errno)? > 0 {
            passes += 1;
            if passes == MAX_REMOVE_PASSES {
                return Err(errno(Errno::ENOTEMPTY));
            }
        }
        nix::unistd::unlinkat(parent.fd.as_fd(), name, UnlinkatFlags::RemoveDir).map_err(errno)
    }
}

impl AsFd for SandboxDir {
    /// For `*at` calls this type does not wrap: give them one name, never a path.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Refuses anything but a regular file with one link.
fn single_regular(file: &File, rel: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().map_err(|source| SandboxDirError::Io {
        path: rel.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(SandboxDirError::NotRegular {
            path: rel.to_owned(),
        });
    }
    if meta.nlink() > 1 {
        return Err(SandboxDirError::HardLinked {
            path: rel.to_owned(),
            links: meta.nlink(),
        });
    }
    Ok(())
}

/// One directory of [`SandboxDir::walk`], at `depth` (its children's level).
fn walk_dir(
    dir: BorrowedFd<'_>,
    rel: &mut PathBuf,
    depth: usize,
    visit: &mut impl FnMut(&Path, &WalkEntry) -> ControlFlow<()>,
) -> Result<ControlFlow<()>> {
    let listed = names(dir).map_err(|e| SandboxDirError::from_errno(rel, e))?;
    for name in listed {
        rel.push(&name);
        if depth > MAX_DEPTH {
            return Err(SandboxDirError::TooDeep { path: rel.clone() });
        }
        let stat =
            match nix::sys::stat::fstatat(dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                // Removed since the listing.
                Err(Errno::ENOENT) => {
                    rel.pop();
                    continue;
                }
                Err(e) => return Err(SandboxDirError::from_errno(rel, e)),
            };
        let entry = WalkEntry::of(&stat);
        if visit(rel.as_path(), &entry).is_break() {
            return Ok(ControlFlow::Break(()));
        }
        if entry.kind == EntryKind::Dir {
            match open_child_dir(dir, &name) {
                Ok(sub) => {
                    if walk_dir(sub.as_fd(), rel, depth + 1, visit)?.is_break() {
                        return Ok(ControlFlow::Break(()));
                    }
                }
                // Gone, or swapped for a link or a file since the stat: not followed.
                Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) => {}
                Err(e) => return Err(SandboxDirError::from_errno(rel, e)),
            }
        }
        rel.pop();
    }
    Ok(ControlFlow::Continue(()))
}

/// Removes everything in `dir` (at `depth` below `top`), following no link. A
/// directory at [`MAX_DEPTH`] is moved into `top` under a fresh name instead of
/// being descended into; returns how many were, for the next pass.
fn empty(dir: BorrowedFd<'_>, top: BorrowedFd<'_>, depth: usize) -> nix::Result<usize> {
    let mut moved = 0;
    for name in names(dir)? {
        match nix::unistd::unlinkat(dir, name.as_os_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => continue,
            Err(Errno::EISDIR) => {}
            Err(e) => return Err(e),
        }
        if depth == MAX_DEPTH {
            move_up(dir, &name, top)?;
            moved += 1;
            continue;
        }
        match open_child_dir(dir, &name) {
            Ok(sub) => moved += empty(sub.as_fd(), top, depth + 1)?,
            Err(Errno::ENOENT) => continue,
            // Swapped for a link or a file since the unlink: the next pass unlinks it.
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                moved += 1;
                continue;
            }
            Err(e) => return Err(e),
        }
        match nix::unistd::unlinkat(dir, name.as_os_str(), UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(moved)
}

/// Moves `name` from `dir` into `top` under a name not yet taken there.
fn move_up(dir: BorrowedFd<'_>, name: &OsStr, top: BorrowedFd<'_>) -> nix::Result<()> {
    for n in 0u64.. {
        let fresh = CString::new(format!(".removing-{n}")).map_err(|_| Errno::EINVAL)?;
        let flags = RenameFlags::RENAME_NOREPLACE;
        match nix::fcntl::renameat2(dir, name, top, fresh.as_c_str(), flags) {
            Err(Errno::EEXIST) => continue,
            done => return done,
        }
    }
    Err(Errno::EEXIST)
}

#[cfg(test)]
mod tests;
