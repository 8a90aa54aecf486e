//! Mesos' fetcher cache: one download per URI however many tasks name it at once,
//! kept in `<work_dir>/cache/fetch/<sha256 of the content>` (the agent's alone) and
//! hashed there once. As in Mesos, a `file://` entry is also keyed by the user that
//! read it: a file one user may read is never handed to another from the cache.
//! `http://` entries are shared, the agent fetching them alike for every user.
//!
//! An entry is checked against its digest wherever it is used (copied into a sandbox,
//! or read by the compile step); one found changed is refused and removed, and an
//! entry whose file is gone is fetched again by the next task that names it.
//!
//! The cache holds at most `MAX_CACHE_BYTES`, counted once per file (URIs of equal
//! content share one). A new entry that would not fit evicts the least recently used
//! ones, but never one used in the last `EVICTABLE_AFTER`; if that frees too little
//! the URI is fetched uncached, like any other. As in Mesos, the cache starts empty
//! with the agent: what a previous agent left is removed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cairn_sandbox::SandboxDir;
use sha2::{Digest as _, Sha256};
use tokio::sync::OnceCell;

use super::output::{Owner, Target};
use super::{FetchError, Fetcher};
use crate::user::TaskUser;

/// Bytes the fetcher cache holds at most (Mesos' `--fetcher_cache_size` default).
const MAX_CACHE_BYTES: u64 = 2 << 30;
/// An entry used more recently is never evicted: a task placed from it may still be
/// waiting for its compile step to read it (`--compile-queue-timeout`, 5 minutes, then
/// the compile itself), and a wasm sandbox of the agent's own user links to it.
const EVICTABLE_AFTER: Duration = Duration::from_secs(15 * 60);

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
    index: Mutex<Index>,
}

/// What the cache holds: entries by key, and their files by content.
#[derive(Default)]
struct Index {
    entries: HashMap<String, Arc<OnceCell<Entry>>>,
    files: HashMap<[u8; 32], Stored>,
    /// The sum of `files`' sizes.
    bytes: u64,
}

/// One file of the cache: its size and when an entry of it was last used.
struct Stored {
    path: PathBuf,
    size: u64,
    used: Instant,
}

impl FetchCache {
    /// The cache in `dir`, emptied of what an earlier agent left there.
    pub(super) fn new(dir: PathBuf) -> Self {
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot empty the fetcher cache");
        }
        Self {
            dir,
            index: Mutex::default(),
        }
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry under `key`, if it is already there.
    pub(super) fn cached(&self, key: &str) -> Option<Entry> {
        let mut index = self.index();
        let entry = index
            .entries
            .get(key)?
            .get()
            .filter(|e| e.present())
            .cloned()?;
        index.touch(&entry.sha256, Instant::now());
        Some(entry)
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
            let mut index = self.index();
            let cell = index.entries.entry(key.clone()).or_default().clone();
            if let Some(gone) = cell.get().filter(|e| !e.present()) {
                index.drop_file(&gone.sha256);
                index.entries.insert(key.clone(), Arc::default());
            }
            index.entries[&key].clone()
        };
        let result = cell
            .get_or_try_init(|| self.download(uri, user, fetcher))
            .await;
        match result {
            Ok(entry) => {
                self.index().touch(&entry.sha256, Instant::now());
                Ok(Some(entry.clone()))
            }
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
        let mut index = self.index();
        if index.entries.get(key).is_some_and(|c| c.get().is_none()) {
            index.entries.remove(key);
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
        // Removed if this ends before the entry is named, a cancelled fetch included.
        let mut leftover = Leftover(Some(self.dir.join(&temp)));
        super::fetch_one(&target, user, fetcher, cap).await?;
        let temp = self.dir.join(temp);
        let (sha256, size) = {
            let temp = temp.clone();
            tokio::task::spawn_blocking(move || hash(&temp))
                .await
                .map_err(|e| failed(e.to_string()))
                .and_then(|r| r.map_err(|e| failed(e.to_string())))?
        };
        // Read-only to all: sandboxes hold hard links to it.
        let read_only = std::os::unix::fs::PermissionsExt::from_mode(0o444);
        tokio::fs::set_permissions(&temp, read_only)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let path = self.dir.join(hex::encode(sha256));
        let mut index = self.index();
        let new_file = !index.files.contains_key(&sha256);
        let admitted = index.admit(
            sha256,
            &path,
            size,
            Instant::now(),
            Limits {
                max_bytes: MAX_CACHE_BYTES,
                evictable_after: EVICTABLE_AFTER,
            },
        );
        if !admitted {
            return Err(FetchError::CacheFull);
        }
        // Named under the index's lock, with no await since the admission: a fetch
        // cancelled meanwhile never leaves bytes counted for a file that is not there.
        if let Err(e) = std::fs::rename(&temp, &path) {
            if new_file {
                index.drop_file(&sha256);
            }
            return Err(failed(e.to_string()));
        }
        drop(index);
        leftover.0 = None;
        Ok(Entry { path, sha256, size })
    }
}

/// A download's temporary file, removed when dropped still holding it.
struct Leftover(Option<PathBuf>);

impl Drop for Leftover {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// How much the cache holds, and how long an entry is safe from eviction.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_bytes: u64,
    evictable_after: Duration,
}

impl Index {
    fn touch(&mut self, sha256: &[u8; 32], now: Instant) {
        if let Some(file) = self.files.get_mut(sha256) {
            file.used = file.used.max(now);
        }
    }

    /// Counts a file of `size` bytes with this content, about to be renamed to
    /// `path`, evicting the least recently used files idle past the limit to make
    /// room; whether it fits. A file of content already held costs nothing more.
    fn admit(
        &mut self,
        sha256: [u8; 32],
        path: &Path,
        size: u64,
        now: Instant,
        limits: Limits,
    ) -> bool {
        if self.files.contains_key(&sha256) {
            self.touch(&sha256, now);
            return true;
        }
        if size > limits.max_bytes {
            return false;
        }
        let mut idle: Vec<([u8; 32], Instant)> = (self.files.iter())
            .filter(|(_, f)| now.saturating_duration_since(f.used) >= limits.evictable_after)
            .map(|(sha, f)| (*sha, f.used))
            .collect();
        idle.sort_by_key(|(_, used)| *used);
        let evictable: u64 = idle.iter().map(|(sha, _)| self.files[sha].size).sum();
        if self.bytes + size > limits.max_bytes + evictable {
            return false;
        }
        for (sha, _) in idle {
            if self.bytes + size <= limits.max_bytes {
                break;
            }
            self.evict(&sha);
        }
        let path = path.to_owned();
        self.files.insert(
            sha256,
            Stored {
                path,
                size,
                used: now,
            },
        );
        self.bytes += size;
        true
    }

    /// Removes a file and every entry of it.
    fn evict(&mut self, sha256: &[u8; 32]) {
        let Some(file) = self.drop_file(sha256) else {
            return;
        };
        tracing::info!(entry = %file.path.display(), bytes = file.size, "fetcher cache entry evicted");
        if let Err(e) = std::fs::remove_file(&file.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(entry = %file.path.display(), error = %e, "cannot evict a cache entry");
        }
    }

    /// Forgets a file (gone, or being evicted) and the entries of it.
    fn drop_file(&mut self, sha256: &[u8; 32]) -> Option<Stored> {
        let file = self.files.remove(sha256)?;
        self.bytes = self.bytes.saturating_sub(file.size);
        self.entries
            .retain(|_, cell| cell.get().is_none_or(|e| &e.sha256 != sha256));
        Some(file)
    }
}

/// The file's sha256 and size, read in pieces (a download may be large).
fn hash(path: &Path) -> std::io::Result<([u8; 32], u64)> {
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok((hasher.finalize().into(), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_bytes: 100,
        evictable_after: Duration::from_secs(60),
    };

    /// A file of `size` bytes in `dir`, named for `n`, admitted `at`.
    fn add(index: &mut Index, dir: &Path, n: u8, size: u64, at: Instant) -> bool {
        let path = dir.join(n.to_string());
        std::fs::write(&path, vec![0; size as usize]).unwrap();
        let entry = Entry {
            path: path.clone(),
            sha256: [n; 32],
            size,
        };
        let admitted = index.admit([n; 32], &path, size, at, LIMITS);
        if admitted {
            let cell = Arc::new(OnceCell::new_with(Some(entry)));
            index.entries.insert(format!("uri-{n}"), cell);
        } else {
            std::fs::remove_file(&path).unwrap();
        }
        admitted
    }

    #[test]
    fn the_least_recently_used_idle_entries_make_room() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = Index::default();
        let t0 = Instant::now();
        let later = |s: u64| t0 + Duration::from_secs(s);
        assert!(add(&mut index, dir.path(), 1, 40, t0));
        assert!(add(&mut index, dir.path(), 2, 40, later(1)));
        index.touch(&[1; 32], later(2));
        // Both used within the last minute: nothing may go, so a third is not cached.
        assert!(!add(&mut index, dir.path(), 3, 40, later(30)));
        assert_eq!(index.bytes, 80);
        // A minute on, 2 (used least recently) goes for it; 1 stays.
        assert!(add(&mut index, dir.path(), 3, 40, later(90)));
        assert_eq!(index.bytes, 80);
        assert!(!dir.path().join("2").exists(), "its file is removed");
        assert!(!index.entries.contains_key("uri-2"), "and its entry");
        assert!(dir.path().join("1").exists() && index.entries.contains_key("uri-1"));
        // Content already held costs nothing; a file larger than the cache never fits.
        assert!(index.admit([1; 32], &dir.path().join("1"), 40, later(91), LIMITS));
        assert_eq!(index.bytes, 80);
        assert!(!add(&mut index, dir.path(), 4, 101, later(500)));
        assert_eq!(index.bytes, 80, "nothing was evicted for it");
    }

    #[test]
    fn a_new_cache_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("fetch");
        std::fs::create_dir(&cache_dir).unwrap();
        std::fs::write(cache_dir.join("left-behind"), b"old").unwrap();
        let cache = FetchCache::new(cache_dir.clone());
        assert!(!cache_dir.join("left-behind").exists());
        assert_eq!(cache.index().bytes, 0);
    }
}
