//! The compile cache: each module is compiled once per (sha256 of its bytes, engine
//! fingerprint) and kept on disk as a precompiled artifact that every executor of the
//! agent shares; each process also keeps the linked program in memory (see
//! `Sandbox::compile`).
//!
//! Deserializing a precompiled artifact runs whatever machine code it holds, so an
//! artifact is loaded only if it carries a MAC under the agent's cache key, which
//! only Cairn holds: an artifact someone else wrote, a corrupt one, or one from
//! another engine version is compiled again, never trusted.
//!
//! ```text
//! <dir>/<sha256 of the wasm>-<engine fingerprint>.<cwasm|ccomp> := mac: 32 bytes | artifact
//! ```

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use wasmtime::component::Component;
use wasmtime::{Engine, Module};

type MacSha256 = Hmac<Sha256>;
const MAC_BYTES: usize = 32;
/// A key this short could be guessed, and then an artifact forged.
const MIN_KEY_BYTES: usize = 32;
/// No artifact Cairn writes is this large (modules are capped at 256 MiB).
const MAX_ARTIFACT_BYTES: u64 = 1 << 30;

/// Where a compiled module came from; counted for the metrics and the tests.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub memory_hits: AtomicU64,
    pub disk_hits: AtomicU64,
    pub compiles: AtomicU64,
    /// Artifacts found on disk but refused (bad MAC, corrupt, incompatible).
    pub rejected: AtomicU64,
}

/// Settings for the on-disk half of the cache.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub dir: PathBuf,
    /// The secret that authenticates artifacts; at least 32 bytes.
    pub key: Vec<u8>,
}

pub(crate) struct CompileCache {
    disk: Option<CacheConfig>,
    fingerprint: String,
    pub(crate) stats: CacheStats,
}

impl CompileCache {
    /// `flavor` names the engine's settings (metered or not) in the fingerprint too.
    pub(crate) fn new(engine: &Engine, flavor: &str, disk: Option<CacheConfig>) -> Self {
        let disk = disk.filter(|d| {
            let strong = d.key.len() >= MIN_KEY_BYTES;
            if !strong {
                tracing::warn!(
                    "the compile cache key is shorter than {MIN_KEY_BYTES} bytes; not using the disk cache"
                );
            }
            strong
        });
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Self {
            disk,
            fingerprint: format!("{:016x}-{flavor}", hasher.finish()),
            stats: CacheStats::default(),
        }
    }

    /// The module for these bytes (whose sha256 is `digest`): from disk, or compiled
    /// and stored.
    pub(crate) fn module(
        &self,
        engine: &Engine,
        digest: &[u8; 32],
        bytes: &[u8],
    ) -> wasmtime::Result<Module> {
        self.artifact(engine, digest, bytes)
    }

    /// The component for these bytes, as [`module`](Self::module) does for modules.
    pub(crate) fn component(
        &self,
        engine: &Engine,
        digest: &[u8; 32],
        bytes: &[u8],
    ) -> wasmtime::Result<Component> {
        self.artifact(engine, digest, bytes)
    }

    fn artifact<A: Artifact>(
        &self,
        engine: &Engine,
        digest: &[u8; 32],
        bytes: &[u8],
    ) -> wasmtime::Result<A> {
        if let Some(artifact) = self.load::<A>(engine, digest) {
            self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(artifact);
        }
        let artifact = A::compile(engine, bytes)?;
        self.stats.compiles.fetch_add(1, Ordering::Relaxed);
        self.store(digest, &artifact);
        Ok(artifact)
    }

    fn path<A: Artifact>(&self, dir: &Path, digest: &[u8; 32]) -> PathBuf {
        dir.join(format!(
            "{}-{}.{}",
            hex::encode(digest),
            self.fingerprint,
            A::EXTENSION
        ))
    }

    fn mac(&self, key: &[u8], digest: &[u8; 32], artifact: &[u8]) -> MacSha256 {
        let mut mac = MacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(digest);
        mac.update(self.fingerprint.as_bytes());
        mac.update(artifact);
        mac
    }

    fn load<A: Artifact>(&self, engine: &Engine, digest: &[u8; 32]) -> Option<A> {
        let disk = self.disk.as_ref()?;
        let path = self.path::<A>(&disk.dir, digest);
        let bytes = read_regular(&path)?;
        let reject = |why: &str| {
            tracing::warn!(path = %path.display(), why, "compiled artifact refused; compiling again");
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            None
        };
        if bytes.len() < MAC_BYTES {
            return reject("too short");
        }
        let (tag, artifact) = bytes.split_at(MAC_BYTES);
        if self
            .mac(&disk.key, digest, artifact)
            .verify_slice(tag)
            .is_err()
        {
            return reject("not written by this agent (MAC mismatch)");
        }
        // SAFETY: the artifact carries a MAC under the agent's secret key over exactly
        // these bytes, so it is an artifact this process's code serialized from a module
        // it compiled with a compatible engine; wasmtime checks compatibility again.
        match unsafe { A::deserialize(engine, artifact) } {
            Ok(artifact) => Some(artifact),
            Err(_) => reject("incompatible with this engine"),
        }
    }

    /// Writes an artifact crash-safely; a failure only costs a later compile.
    fn store<A: Artifact>(&self, digest: &[u8; 32], compiled: &A) {
        let Some(disk) = &self.disk else { return };
        let result = (|| -> std::io::Result<()> {
            let artifact = compiled.serialize().map_err(std::io::Error::other)?;
            let tag = self
                .mac(&disk.key, digest, &artifact)
                .finalize()
                .into_bytes();
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&disk.dir)?;
            let path = self.path::<A>(&disk.dir, digest);
            // A name of its own per write (two tasks may compile one module at once),
            // created fresh: never through a file or link someone else put there.
            let tmp = path.with_extension(format!(
                "tmp-{}-{}",
                std::process::id(),
                TMP_SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(O_NOFOLLOW)
                .open(&tmp)?;
            file.write_all(&tag)?;
            file.write_all(&artifact)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
        })();
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot store a compiled artifact");
        }
    }
}

/// What the cache holds: compiled modules and compiled components.
trait Artifact: Sized {
    const EXTENSION: &'static str;
    fn compile(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Self>;
    /// # Safety
    /// `bytes` must be an artifact `serialize` produced with a compatible engine.
    unsafe fn deserialize(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Self>;
    fn serialize(&self) -> wasmtime::Result<Vec<u8>>;
}

impl Artifact for Module {
    const EXTENSION: &'static str = "cwasm";
    fn compile(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Self> {
        Module::new(engine, bytes)
    }
    unsafe fn deserialize(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Self> {
        // SAFETY: the caller's contract is Module::deserialize's.
        unsafe { Module::deserialize(engine, bytes) }
    }
    fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        Module::serialize(self)
    }
}

impl Artifact for Component {
    const EXTENSION: &'static str = "ccomp";
    fn compile(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Self> {
        Component::new(engine, bytes)
    }
    unsafe fn deserialize(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Self> {
        // SAFETY: the caller's contract is Component::deserialize's.
        unsafe { Component::deserialize(engine, bytes) }
    }
    fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        Component::serialize(self)
    }
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Linux's `O_NOFOLLOW`: the last path component must not be a symlink.
const O_NOFOLLOW: i32 = 0o400_000;

/// Reads an artifact if it is a regular file of a sane size, not through a symlink.
fn read_regular(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NOFOLLOW)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() > MAX_ARTIFACT_BYTES {
        return None;
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_ARTIFACT_BYTES).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}
