//! Where the compile step gets a program's bytes: the fetcher cache's entry when the
//! file came from there (the bytes the URI gave, whatever the sandbox holds now), or
//! the file the task names in its sandbox, opened beneath it following no link.

use std::io::Read as _;
use std::path::{Component, Path};

use sha2::Digest as _;

/// No program is larger than this.
pub const MAX_MODULE_BYTES: u64 = 256 << 20;

/// A program's bytes and their sha256.
pub struct Source {
    pub bytes: Vec<u8>,
    pub sha256: [u8; 32],
}

/// The fetcher cache's entry at `path`, checked against the digest it was stored
/// under (the cache is the agent's, but a disk can still lie).
pub fn cache_entry(name: &str, path: &Path, sha256: &[u8; 32]) -> Result<Source, String> {
    let unreadable = |e: std::io::Error| format!("cannot read {name} from the fetcher cache: {e}");
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let found = file.metadata().map_err(unreadable)?;
    let bytes = read_bounded(name, file)?;
    if sha2::Sha256::digest(&bytes).as_slice() != sha256 {
        crate::fetcher::discard_changed(path, &found);
        return Err(format!(
            "{name}: the fetcher cache's copy no longer matches its digest; refusing it"
        ));
    }
    Ok(Source {
        bytes,
        sha256: *sha256,
    })
}

/// The file `value` names in the sandbox at `dir`: a relative path that stays inside
/// it, opened beneath it by the kernel, following no link (symbolic or hard) and
/// crossing no mount, owned by `owner` (the task's user, whom the fetcher gives its
/// files): the agent reads as root, and must read only what the task put there itself.
pub fn in_sandbox(dir: &Path, value: &str, owner: u32) -> Result<Source, String> {
    let bytes = read_bounded(value, open_in_sandbox(dir, value, owner)?)?;
    let sha256 = sha2::Sha256::digest(&bytes).into();
    Ok(Source { bytes, sha256 })
}

/// The sha256 of the file `value` names in the sandbox (found as [`in_sandbox`]
/// finds it), streamed: nothing of it is held while its compile waits its turn.
pub fn digest_in_sandbox(dir: &Path, value: &str, owner: u32) -> Result<[u8; 32], String> {
    let file = open_in_sandbox(dir, value, owner)?;
    let mut hasher = sha2::Sha256::new();
    let read = std::io::copy(&mut file.take(MAX_MODULE_BYTES + 1), &mut hasher)
        .map_err(|e| format!("cannot read {value}: {e}"))?;
    if read > MAX_MODULE_BYTES {
        return Err(format!(
            "{value} is over {MAX_MODULE_BYTES} bytes; the limit is {MAX_MODULE_BYTES}"
        ));
    }
    Ok(hasher.finalize().into())
}

/// The file's bytes when its turn to compile comes, which must still be those
/// `sha256` named when it was queued.
pub fn in_sandbox_as_digested(
    dir: &Path,
    value: &str,
    owner: u32,
    sha256: &[u8; 32],
) -> Result<Vec<u8>, String> {
    let source = in_sandbox(dir, value, owner)?;
    if source.sha256 != *sha256 {
        return Err(format!(
            "{value} changed while it waited to be compiled; refusing it"
        ));
    }
    Ok(source.bytes)
}

fn open_in_sandbox(dir: &Path, value: &str, owner: u32) -> Result<std::fs::File, String> {
    let relative = Path::new(value);
    if value.is_empty()
        || !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(format!(
            "command.value {value:?} must name a file inside the sandbox (fetch it with command.uris)"
        ));
    }
    let unreadable = |e: &dyn std::fmt::Display| format!("cannot read {value}: {e}");
    let sandbox = cairn_sandbox::SandboxDir::open(dir).map_err(|e| unreadable(&e))?;
    let file = sandbox.open_file(relative).map_err(|e| unreadable(&e))?;
    let found = std::os::unix::fs::MetadataExt::uid(&file.metadata().map_err(|e| unreadable(&e))?);
    if found != owner {
        return Err(format!(
            "{value} is owned by uid {found}, not the task's user (uid {owner}); refusing to read it"
        ));
    }
    Ok(file)
}

/// Reads a whole program, bounded whatever its size claims: a file still growing
/// stops at the limit too.
fn read_bounded(name: &str, file: std::fs::File) -> Result<Vec<u8>, String> {
    let too_large = |size: u64| format!("{name} is {size} bytes; the limit is {MAX_MODULE_BYTES}");
    let size = file
        .metadata()
        .map_err(|e| format!("cannot read {name}: {e}"))?
        .len();
    if size > MAX_MODULE_BYTES {
        return Err(too_large(size));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(MAX_MODULE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {name}: {e}"))?;
    if bytes.len() as u64 > MAX_MODULE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_is_read_beneath_its_sandbox_and_no_link_is_followed() {
        let sandbox = tempfile::tempdir().unwrap();
        std::fs::write(sandbox.path().join("own.wasm"), b"\0asm own").unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let own = in_sandbox(sandbox.path(), "own.wasm", me).unwrap();
        assert_eq!(own.bytes, b"\0asm own");
        assert_eq!(
            own.sha256,
            <[u8; 32]>::from(sha2::Sha256::digest(b"\0asm own"))
        );
        let digest = digest_in_sandbox(sandbox.path(), "own.wasm", me).unwrap();
        assert_eq!(digest, own.sha256);
        let bytes = in_sandbox_as_digested(sandbox.path(), "own.wasm", me, &digest).unwrap();
        assert_eq!(bytes, b"\0asm own");
        std::fs::write(sandbox.path().join("own.wasm"), b"\0asm swapped").unwrap();
        let err = in_sandbox_as_digested(sandbox.path(), "own.wasm", me, &digest).unwrap_err();
        assert_eq!(
            err,
            "own.wasm changed while it waited to be compiled; refusing it"
        );
        std::fs::write(sandbox.path().join("own.wasm"), b"\0asm own").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", sandbox.path().join("passwd.wasm")).unwrap();
        std::fs::hard_link(
            sandbox.path().join("own.wasm"),
            sandbox.path().join("hard.wasm"),
        )
        .unwrap();
        for name in ["passwd.wasm", "hard.wasm", "../own.wasm", "/etc/passwd", ""] {
            let err = in_sandbox(sandbox.path(), name, me).err().unwrap();
            assert!(
                err.contains("cannot read") || err.contains("inside the sandbox"),
                "{name}: {err}"
            );
            let digest = digest_in_sandbox(sandbox.path(), name, me).unwrap_err();
            assert_eq!(digest, err, "{name}");
        }
    }

    #[test]
    fn a_program_of_another_owner_than_the_task_user_is_not_read() {
        let sandbox = tempfile::tempdir().unwrap();
        std::fs::write(sandbox.path().join("m.wasm"), b"\0asm").unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let err = in_sandbox(sandbox.path(), "m.wasm", me + 1).err().unwrap();
        assert!(err.contains("not the task's user"), "{err}");
    }

    #[test]
    fn a_cache_entry_must_match_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let entry = dir.path().join("entry");
        std::fs::write(&entry, b"\0asm cached").unwrap();
        let digest: [u8; 32] = sha2::Sha256::digest(b"\0asm cached").into();
        assert_eq!(
            cache_entry("app.wasm", &entry, &digest).unwrap().bytes,
            b"\0asm cached"
        );
        std::fs::write(&entry, b"\0asm changed").unwrap();
        let err = cache_entry("app.wasm", &entry, &digest).err().unwrap();
        assert!(err.contains("no longer matches"), "{err}");
        assert!(!entry.exists(), "a changed entry is removed");
    }
}
