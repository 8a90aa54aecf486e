//! The agent's compiled artifacts on disk, written by the compile step (see
//! `compiler`) and read by executors:
//!
//! ```text
//! <work_dir>/artifacts/                 root's, mode 0711: no one else lists or writes it
//! <work_dir>/artifacts/<name>.cwasm     mode 0444 := tag: 32 bytes | wasmtime artifact
//! ```
//!
//! `<name>` is a MAC under the agent's key of what the artifact is of (module sha256,
//! engine fingerprint, user), so no one without the key can tell which file holds
//! whose module. The tag is a MAC over the same and the artifact: an agent that finds
//! an artifact of an earlier run of itself uses it only if it carries the tag. An
//! executor holds no key: it is told the file's sha256 by the agent, and loads the
//! artifact only if the bytes match.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};

type MacSha256 = Hmac<Sha256>;
/// The tag's length, before the artifact.
pub const TAG_BYTES: usize = 32;
/// No artifact file is larger than this (modules are capped at 256 MiB).
pub const MAX_FILE_BYTES: u64 = (1 << 30) + TAG_BYTES as u64;
/// A key this short could be guessed, and then an artifact forged.
pub const MIN_KEY_BYTES: usize = 32;

/// What an artifact is of: the identity its name and tag are computed over.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ArtifactOf {
    pub module_sha256: [u8; 32],
    /// The engine settings' fingerprint (see `cairn_sandbox::fingerprint`).
    pub fingerprint: String,
    /// The user it was compiled as, and whose executors load it.
    pub uid: u32,
}

impl ArtifactOf {
    fn mac(&self, key: &[u8], purpose: &[u8]) -> MacSha256 {
        let mut mac = MacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(purpose);
        mac.update(&self.module_sha256);
        mac.update(self.fingerprint.as_bytes());
        mac.update(&self.uid.to_be_bytes());
        mac
    }

    /// Its file name in the artifacts directory.
    pub fn file_name(&self, key: &[u8]) -> String {
        let name = self.mac(key, b"name\0").finalize().into_bytes();
        format!("{}.cwasm", hex::encode(name))
    }

    fn tag(&self, key: &[u8], artifact: &[u8]) -> MacSha256 {
        let mut mac = self.mac(key, b"tag\0");
        mac.update(artifact);
        mac
    }
}

/// Writes an artifact crash-safely under its name; returns the file's sha256.
pub fn store(
    dir: &Path,
    key: &[u8],
    of: &ArtifactOf,
    artifact: &[u8],
) -> std::io::Result<[u8; 32]> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(dir)?;
    let tag = of.tag(key, artifact).finalize().into_bytes();
    let path = dir.join(of.file_name(key));
    // A name of its own per write, created fresh: never through a file or link
    // someone else put there.
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&tmp)?;
    let written = (|| {
        file.write_all(&tag)?;
        file.write_all(artifact)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        // The launch naming it is checkpointed: the name must survive a crash too.
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let mut sha = Sha256::new();
    sha.update(tag);
    sha.update(artifact);
    Ok(sha.finalize().into())
}

/// An artifact an earlier run of the agent stored, if it is there and carries its
/// tag under `key`: returns its file's sha256.
pub fn find(dir: &Path, key: &[u8], of: &ArtifactOf) -> Option<[u8; 32]> {
    let bytes = read_regular(&dir.join(of.file_name(key))).ok()?;
    if bytes.len() < TAG_BYTES {
        return None;
    }
    let (tag, artifact) = bytes.split_at(TAG_BYTES);
    if of.tag(key, artifact).verify_slice(tag).is_err() {
        tracing::warn!(
            file = of.file_name(key),
            "a compiled artifact without this agent's tag; compiling again"
        );
        return None;
    }
    Some(Sha256::digest(&bytes).into())
}

/// The artifact in `dir` named `name`, only if its file's bytes have the sha256 the
/// agent gave: what an executor loads.
pub fn read_checked(dir: &Path, name: &str, sha256: &[u8]) -> Result<Vec<u8>, String> {
    if name.contains('/') || name.starts_with('.') {
        return Err(format!("{name:?} is not an artifact's name"));
    }
    let mut bytes = read_regular(&dir.join(name))
        .map_err(|e| format!("cannot read the compiled artifact {name}: {e}"))?;
    if bytes.len() < TAG_BYTES || Sha256::digest(&bytes).as_slice() != sha256 {
        return Err(format!(
            "the compiled artifact {name} is not the one the agent wrote; refusing to load it"
        ));
    }
    bytes.drain(..TAG_BYTES);
    Ok(bytes)
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Removes what a crash left mid-write (`.tmp-*` files); run before any store.
pub fn remove_leftovers(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(".tmp-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Reads a regular file of a sane size, not through a symlink.
fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() > MAX_FILE_BYTES {
        return Err(std::io::Error::other(
            "not a regular file of an artifact's size",
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_FILE_BYTES).read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"the agent key, 32 bytes or more..";

    fn of(uid: u32) -> ArtifactOf {
        ArtifactOf {
            module_sha256: [7; 32],
            fingerprint: "abc-plain".into(),
            uid,
        }
    }

    #[test]
    fn an_artifact_is_found_again_only_with_its_tag_and_read_only_with_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let sha = store(dir.path(), KEY, &of(1000), b"machine code").unwrap();
        assert_eq!(find(dir.path(), KEY, &of(1000)), Some(sha));
        let name = of(1000).file_name(KEY);
        assert_eq!(
            read_checked(dir.path(), &name, &sha).unwrap(),
            b"machine code"
        );
        // Another user's artifact of the same module is another file.
        assert_ne!(name, of(1001).file_name(KEY));
        assert_eq!(find(dir.path(), KEY, &of(1001)), None);
        // Under another key (another agent) it is not found.
        assert_eq!(
            find(dir.path(), b"another key, also 32 bytes long..", &of(1000)),
            None
        );
        // A flipped bit: neither the agent nor an executor takes it.
        let path = dir.path().join(&name);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(find(dir.path(), KEY, &of(1000)), None);
        let err = read_checked(dir.path(), &name, &sha).unwrap_err();
        assert!(err.contains("not the one the agent wrote"), "{err}");
        // A link in its place is not followed, and names are the directory's own.
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
        assert!(read_checked(dir.path(), &name, &sha).is_err());
        assert!(read_checked(dir.path(), "../x.cwasm", &sha).is_err());
    }
}
