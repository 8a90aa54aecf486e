//! Where fetched files land: new files beneath a sandbox, created through
//! [`SandboxDir`] (no link followed, never an existing name), owned by the task's user.

use std::io::ErrorKind;
use std::os::fd::AsFd as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use cairn_sandbox::{SandboxDir, SandboxDirError};

use super::FetchError;
use crate::user::TaskUser;

/// Who a fetched file belongs to: the task's user when the agent switches to it (as
/// if Mesos' fetcher, running as that user, had made it), else the agent.
#[derive(Debug, Clone, Copy)]
pub(super) struct Owner(Option<(u32, u32)>);

impl Owner {
    /// The agent itself (its cache's files).
    pub(super) const AGENT: Owner = Owner(None);

    pub(super) fn of(user: &TaskUser) -> Self {
        Self(user.switch.then_some((user.uid, user.gid)))
    }

    fn give(self, file: &std::fs::File) -> std::io::Result<()> {
        match self.0 {
            Some((uid, gid)) => std::os::unix::fs::fchown(file, Some(uid), Some(gid)),
            None => Ok(()),
        }
    }

    fn give_dir(self, dir: &SandboxDir) -> Result<(), SandboxDirError> {
        match self.0 {
            Some((uid, gid)) => dir.chown(uid, gid),
            None => Ok(()),
        }
    }
}

/// One URI's output: the new file `name` in `dir`.
pub(super) struct Target<'a> {
    pub(super) uri: &'a str,
    pub(super) dir: &'a SandboxDir,
    /// The file's name in `dir` (one component).
    pub(super) name: &'a Path,
    /// Its name in the sandbox, for messages.
    pub(super) shown: &'a Path,
    pub(super) owner: Owner,
    /// `executable: true`: the file gets mode 0755, as Mesos makes it.
    pub(super) executable: bool,
}

impl Target<'_> {
    pub(super) fn failed(&self, why: impl Into<String>) -> FetchError {
        FetchError::Failed {
            uri: self.uri.to_owned(),
            why: why.into(),
        }
    }

    /// Creates the output (mode `mode`, or 0755 if executable), never over an
    /// existing file or link. The returned guard removes it unless kept.
    pub(super) fn create(&self, mode: u32) -> Result<(std::fs::File, Partial<'_>), FetchError> {
        let mode = if self.executable { 0o755 } else { mode & 0o777 };
        let file = self
            .dir
            .create_new(self.name, mode)
            .map_err(|e| output_error(self.shown, e))?;
        let partial = Partial {
            target: self,
            kept: false,
        };
        // Exactly `mode`, whatever the agent's umask.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .and_then(|()| self.owner.give(&file))
            .map_err(|e| self.failed(format!("preparing {}: {e}", self.shown.display())))?;
        Ok((file, partial))
    }

    /// A copy of the agent's own file `source` (a fetcher cache entry), checked
    /// against the entry's digest as it is copied: a cache entry changed on disk is
    /// never handed to a task (the partial copy is removed).
    pub(super) fn copy_of(&self, source: &Path, sha256: &[u8; 32]) -> Result<(), FetchError> {
        use sha2::Digest as _;
        use std::io::{Read as _, Write as _};
        let placing = |e: std::io::Error| self.failed(format!("placing the cached copy: {e}"));
        let mut from = std::fs::File::open(source).map_err(placing)?;
        let found = from.metadata().map_err(placing)?;
        let mode = found.permissions().mode();
        let (mut to, partial) = self.create(mode)?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0; 64 << 10];
        loop {
            let n = from.read(&mut buf).map_err(placing)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            to.write_all(&buf[..n]).map_err(placing)?;
        }
        if hasher.finalize().as_slice() != sha256 {
            discard_changed(source, &found);
            return Err(
                self.failed("the fetcher cache's copy no longer matches its digest; refusing it")
            );
        }
        partial.keep();
        Ok(())
    }

    /// A wasm task's view of the agent's own file `source` (its cached module), which
    /// its guest cannot write through. For a task of another user than the agent's,
    /// a hard link: the file is the agent's and mode 0444, and that user's executor
    /// reads it without entering the cache's directory. For a task running as the
    /// agent's own user, whom no mode stops, a symlink: WASI resolves paths inside
    /// the sandbox only, so the guest cannot follow it. A cache on another file
    /// system than the sandbox gives a copy.
    pub(super) fn link_to(&self, source: &Path, sha256: &[u8; 32]) -> Result<(), FetchError> {
        let io = |e: nix::errno::Errno| {
            let source = std::io::Error::from(e);
            let path = self.shown.to_owned();
            output_error(self.shown, SandboxDirError::Io { path, source })
        };
        if self.owner.0.is_none() {
            return nix::unistd::symlinkat(source, self.dir.as_fd(), self.name).map_err(io);
        }
        // No AT_SYMLINK_FOLLOW: a cache entry that were a link is linked as one,
        // and then never followed.
        let linked = nix::unistd::linkat(
            nix::fcntl::AT_FDCWD,
            source,
            self.dir.as_fd(),
            self.name,
            nix::fcntl::AtFlags::empty(),
        );
        match linked {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::EXDEV) => self.copy_of(source, sha256),
            Err(e) => Err(io(e)),
        }
    }
}

/// A partly written output: removed when dropped unless kept, so a refused or
/// interrupted download (past the size cap, timed out) leaves nothing behind.
pub(super) struct Partial<'a> {
    target: &'a Target<'a>,
    kept: bool,
}

impl Partial<'_> {
    pub(super) fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Partial<'_> {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let t = self.target;
        if let Err(e) = t.dir.remove_dir_all(t.name) {
            tracing::warn!(file = %t.shown.display(), "cannot remove a partial download: {e}");
        }
    }
}

/// Makes the sandbox (a path the agent chose) and opens it: the task's user's
/// alone (0700), so no other tenant's task lists or reads it.
pub(super) fn open_sandbox(sandbox: &Path, owner: Owner) -> Result<SandboxDir, FetchError> {
    let cannot = |e: &dyn std::fmt::Display| {
        FetchError::Sandbox(format!("cannot create sandbox {}: {e}", sandbox.display()))
    };
    // A run is fetched from nothing: what is here is an earlier attempt at this
    // run's fetch, cut short by an agent restart before any executor saw it.
    match std::fs::remove_dir_all(sandbox) {
        Ok(()) => tracing::info!(sandbox = %sandbox.display(), "fetching a run again from nothing"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(cannot(&e)),
    }
    std::fs::create_dir_all(sandbox).map_err(|e| cannot(&e))?;
    let dir = SandboxDir::open(sandbox).map_err(|e| cannot(&e))?;
    owner.give_dir(&dir).map_err(|e| cannot(&e))?;
    nix::sys::stat::fchmod(
        std::os::fd::AsFd::as_fd(&dir),
        nix::sys::stat::Mode::from_bits_truncate(0o700),
    )
    .map_err(|e| cannot(&e))?;
    Ok(dir)
}

/// The directory `name` goes in and its last component: the sandbox itself (`None`),
/// or a subdirectory made now, each level given to `owner`.
pub(super) fn parent_of<'n>(
    root: &SandboxDir,
    name: &'n Path,
    owner: Owner,
) -> Result<(Option<SandboxDir>, &'n Path), FetchError> {
    let file = Path::new(name.file_name().unwrap_or_default());
    let Some(parent) = name.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok((None, file));
    };
    let mut made = PathBuf::new();
    let mut dir = None;
    for component in parent.components() {
        made.push(component);
        let sub = root
            .create_dir_all(&made)
            .and_then(|d| owner.give_dir(&d).map(|()| d))
            .map_err(|e| output_error(name, e))?;
        dir = Some(sub);
    }
    Ok((dir, file))
}

/// Why an output could not be made, in the task's terms.
fn output_error(name: &Path, e: SandboxDirError) -> FetchError {
    let why = match e {
        SandboxDirError::NotBeneath { .. } => {
            return FetchError::OutputFile(name.display().to_string());
        }
        SandboxDirError::Link { .. } => "passes through a link in the sandbox".to_owned(),
        SandboxDirError::Io { source, .. } if source.kind() == ErrorKind::AlreadyExists => {
            "already exists in the sandbox (a fetch never replaces a file or link)".to_owned()
        }
        SandboxDirError::Io { source, .. } if source.kind() == ErrorKind::NotADirectory => {
            "passes through a file in the sandbox".to_owned()
        }
        e => format!("cannot be created in the sandbox: {e}"),
    };
    FetchError::Output {
        name: name.display().to_string(),
        why,
    }
}

/// Removes an entry found not to match its digest (`found`: the file that was read),
/// so the next task that names its URI fetches it again rather than fail on it too.
/// Only that file goes: one fetched afresh into its place meanwhile stays.
pub fn discard_changed(path: &Path, found: &std::fs::Metadata) {
    use std::os::unix::fs::MetadataExt as _;
    tracing::warn!(
        entry = %path.display(),
        "a fetcher cache entry no longer matches its digest; removing it"
    );
    let same = |now: &std::fs::Metadata| now.dev() == found.dev() && now.ino() == found.ino();
    if !std::fs::symlink_metadata(path).is_ok_and(|now| same(&now)) {
        return;
    }
    if let Err(error) = std::fs::remove_file(path) {
        tracing::warn!(entry = %path.display(), %error, "cannot remove a changed cache entry");
    }
}

#[cfg(test)]
mod tests {
    use super::discard_changed;

    #[test]
    fn a_changed_entry_goes_but_one_fetched_afresh_into_its_place_stays() {
        let cache = tempfile::tempdir().unwrap();
        let entry = cache.path().join("entry");
        std::fs::write(&entry, b"changed").unwrap();
        let found = std::fs::metadata(&entry).unwrap();
        // Fetched afresh meanwhile: a new file renamed over the changed one.
        let fresh = cache.path().join("fresh");
        std::fs::write(&fresh, b"fresh").unwrap();
        std::fs::rename(&fresh, &entry).unwrap();
        discard_changed(&entry, &found);
        assert_eq!(std::fs::read(&entry).unwrap(), b"fresh");
        let found = std::fs::metadata(&entry).unwrap();
        discard_changed(&entry, &found);
        assert!(!entry.exists(), "the file read is removed");
    }
}
