//! Mesos' fetcher cache: one download per URI however many tasks name it at once,
//! kept in `<work_dir>/cache/fetch/<sha256 of the content>` (the agent's alone) and
//! hashed there once. As in Mesos, a `file://` entry is also keyed by the user that
//! read it: a file one user may read is never handed to another from the cache.
//! `http://` entries are shared, the agent fetching them alike for every user.
//!
//! An entry is checked against its digest wherever it is used (copied into a sandbox,
//! or read by the compile step); one found changed is refused and removed, and an
//! entry whose file is gone is fetched again by the next task that names it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cairn_sandbox::SandboxDir;
use sha2::{Digest as _, Sha256};
use tokio::sync::OnceCell;

use super::output::{Owner, Target};
use super::{FetchError, Fetcher};
use crate::user::TaskUser;

/// Bytes the fetcher cache holds at most (Mesos' `--fetcher_cache_size` default);
/// past it, cached URIs are fetched like any other.
const MAX_CACHE_BYTES: u64 = 2 << 30;

#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) path: PathBuf,
    pub(super) sha256: [u8; 32],
    size: u64,
}

impl Entry {
    pub(super) fn size(&self) -> u64 {
        self.size
    }

    /// Whether its file is still there (not removed as changed, or by an operator).
    fn present(&self) -> bool {
        std::fs::symlink_metadata(&self.path).is_ok()
    }
}

/// The cache's key for `uri` fetched for `user`.
pub(super) fn key(uri: &str, user: &TaskUser) -> String {
    if uri.starts_with("file://") {
        let reader = match user.switch {
            true => user.uid,
            false => nix::unistd::Uid::effective().as_raw(),
        };
        format!("{reader} {uri}")
    } else {
        uri.to_owned()
    }
}

/// Failed downloads are not remembered, so the next task tries again.
pub(super) struct FetchCache {
    dir: PathBuf,
    entries: Mutex<HashMap<String, Arc<OnceCell<Entry>>>>,
    bytes: Mutex<u64>,
}

impl FetchCache {
    pub(super) fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            entries: Mutex::new(HashMap::new()),
            bytes: Mutex::new(0),
        }
    }

    /// The entry under `key`, if it is already there.
    pub(super) fn cached(&self, key: &str) -> Option<Entry> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(key)?.get().filter(|e| e.present()).cloned()
    }

    /// The cached copy of `uri` for `user`, fetched now if it is not there yet; `None`
    /// when the cache is full.
    pub(super) async fn get(
        &self,
        uri: &str,
        user: &TaskUser,
        fetcher: &Fetcher,
    ) -> Result<Option<Entry>, FetchError> {
        let key = key(uri, user);
        let cell = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let cell = entries.entry(key.clone()).or_default();
            if let Some(gone) = cell.get().filter(|e| !e.present()) {
                self.release(gone.size);
                *cell = Arc::default();
            }
            cell.clone()
        };
        let result = cell
            .get_or_try_init(|| self.download(uri, user, fetcher))
            .await;
        match result {
            Ok(entry) => Ok(Some(entry.clone())),
            Err(FetchError::CacheFull) => {
                self.forget(&key);
                Ok(None)
            }
            Err(e) => {
                self.forget(&key);
                Err(e)
            }
        }
    }

    fn forget(&self, key: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.get(key).is_some_and(|c| c.get().is_none()) {
            entries.remove(key);
        }
    }

    /// Fetches into a temporary file, hashes it, and names it by its content.
    async fn download(
        &self,
        uri: &str,
        user: &TaskUser,
        fetcher: &Fetcher,
    ) -> Result<Entry, FetchError> {
        let failed = |why: String| FetchError::Failed {
            uri: uri.to_owned(),
            why,
        };
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let dir = SandboxDir::open(&self.dir).map_err(|e| failed(e.to_string()))?;
        let temp = PathBuf::from(format!(".fetch-{}", uuid::Uuid::new_v4().simple()));
        let target = Target {
            uri,
            dir: &dir,
            name: &temp,
            shown: &temp,
            // The agent's file: placing it gives each copy to its task's user.
            owner: Owner::AGENT,
            executable: false,
        };
        // Shared by every task naming the URI: held to the fetcher's limit; each task's
        // disk is checked as its copy is placed.
        let cap = super::Cap::next(&fetcher.config, u64::MAX, u64::MAX);
        super::fetch_one(&target, user, fetcher, cap).await?;
        let temp = self.dir.join(temp);
        let hashed = {
            let temp = temp.clone();
            tokio::task::spawn_blocking(move || hash(&temp))
                .await
                .map_err(|e| failed(e.to_string()))
                .and_then(|r| r.map_err(|e| failed(e.to_string())))
        };
        let (sha256, size) = match hashed {
            Ok(h) => h,
            Err(e) => {
                let _ = tokio::fs::remove_file(&temp).await;
                return Err(e);
            }
        };
        if !self.admit(size) {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(FetchError::CacheFull);
        }
        let path = self.dir.join(hex::encode(sha256));
        // Read-only to all: sandboxes hold hard links to it.
        let read_only = std::os::unix::fs::PermissionsExt::from_mode(0o444);
        tokio::fs::set_permissions(&temp, read_only)
            .await
            .map_err(|e| failed(e.to_string()))?;
        tokio::fs::rename(&temp, &path)
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok(Entry { path, sha256, size })
    }

    fn release(&self, size: u64) {
        let mut bytes = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        *bytes = bytes.saturating_sub(size);
    }

    /// Counts `size` more bytes in the cache if they fit.
    fn admit(&self, size: u64) -> bool {
        let mut bytes = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        let fits = *bytes + size <= MAX_CACHE_BYTES;
        if fits {
            *bytes += size;
        }
        fits
    }
}

/// The file's sha256 and size, read in pieces (a download may be large).
fn hash(path: &Path) -> std::io::Result<([u8; 32], u64)> {
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok((hasher.finalize().into(), size))
}
