//! Mesos' fetcher: a task's `command.uris` are copied into its sandbox before the
//! executor sees the task. `file://` and `http://` for now.
//!
//! A URI marked `cache: true` is fetched once per agent into the fetcher cache
//! (`<work_dir>/cache/fetch/<sha256 of the content>`) and hashed there once. A wasm
//! task's sandbox then holds a symlink to the cached file, which its guest cannot
//! follow (WASI resolves paths inside the sandbox only) and so cannot change, and the
//! executor finds the compiled module by the digest without reading or hashing the
//! file again. Any other task gets its own copy: a native process could write
//! through a link into what every later task runs.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use cairn_api::v1::command_info::Uri;
use sha2::{Digest as _, Sha256};
use tokio::sync::OnceCell;

/// Refuses downloads past this size: a URI must not fill the agent's disk.
const MAX_FETCH_BYTES: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot fetch {uri}: {why}")]
    Failed { uri: String, why: String },
    #[error("URI {0:?} has an unsupported scheme (file:// and http:// are supported)")]
    Scheme(String),
    #[error("output_file {0:?} must be a relative path inside the sandbox")]
    OutputFile(String),
    #[error("the fetcher cache is full")]
    CacheFull,
    #[error("{0}")]
    Sandbox(String),
}

/// Bytes the fetcher cache holds at most (Mesos' `--fetcher_cache_size` default);
/// past it, cached URIs are fetched like any other.
const MAX_CACHE_BYTES: u64 = 2 << 30;

/// A file placed in a sandbox from the fetcher cache, with its content's digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedFile {
    /// Its name in the sandbox.
    pub name: String,
    pub sha256: [u8; 32],
}

#[derive(Debug, Clone)]
struct Entry {
    path: PathBuf,
    sha256: [u8; 32],
}

/// The agent's fetcher cache: one download per URI however many tasks name it at
/// once. Failed downloads are not remembered, so the next task tries again.
pub struct FetchCache {
    dir: PathBuf,
    entries: Mutex<HashMap<String, Arc<OnceCell<Entry>>>>,
    bytes: Mutex<u64>,
}

impl FetchCache {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            entries: Mutex::new(HashMap::new()),
            bytes: Mutex::new(0),
        }
    }

    /// The cached copy of `uri`, fetched now if it is not there yet; `None` when the
    /// cache is full.
    async fn get(&self, uri: &str) -> Result<Option<Entry>, FetchError> {
        let cell = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            entries.entry(uri.to_owned()).or_default().clone()
        };
        let result = cell.get_or_try_init(|| self.download(uri)).await;
        match result {
            Ok(entry) => Ok(Some(entry.clone())),
            Err(FetchError::CacheFull) => {
                self.forget(uri);
                Ok(None)
            }
            Err(e) => {
                self.forget(uri);
                Err(e)
            }
        }
    }

    /// Every URI's cached copy, when all of them are `cache: true` and already in
    /// the cache: such a task's sandbox is made without any download.
    pub fn all_cached(&self, uris: &[Uri]) -> Option<Placement> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let files = uris
            .iter()
            .map(|uri| {
                let entry = entries.get(&uri.value)?.get()?.clone();
                let name = output_name(uri).ok()?;
                (uri.cache == Some(true)).then(|| (uri.value.clone(), name, entry))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Placement { files })
    }

    fn forget(&self, uri: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.get(uri).is_some_and(|c| c.get().is_none()) {
            entries.remove(uri);
        }
    }

    /// Fetches into a temporary file, hashes it, and names it by its content.
    async fn download(&self, uri: &str) -> Result<Entry, FetchError> {
        let failed = |why: String| FetchError::Failed {
            uri: uri.to_owned(),
            why,
        };
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let temp = self
            .dir
            .join(format!(".fetch-{}", uuid::Uuid::new_v4().simple()));
        let fetched = fetch(uri, &temp).await;
        let hashed = match fetched {
            Ok(()) => {
                let temp = temp.clone();
                tokio::task::spawn_blocking(move || -> std::io::Result<([u8; 32], u64)> {
                    let bytes = std::fs::read(&temp)?;
                    Ok((Sha256::digest(&bytes).into(), bytes.len() as u64))
                })
                .await
                .map_err(|e| failed(e.to_string()))
                .and_then(|r| r.map_err(|e| failed(e.to_string())))
            }
            Err(e) => Err(e),
        };
        let (sha256, size) = match hashed {
            Ok(h) => h,
            Err(e) => {
                let _ = tokio::fs::remove_file(&temp).await;
                return Err(e);
            }
        };
        let admitted = {
            let mut bytes = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
            let fits = *bytes + size <= MAX_CACHE_BYTES;
            if fits {
                *bytes += size;
            }
            fits
        };
        if !admitted {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(FetchError::CacheFull);
        }
        let path = self.dir.join(hex::encode(sha256));
        tokio::fs::rename(&temp, &path)
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok(Entry { path, sha256 })
    }
}

/// Fetches every URI into `sandbox`, named by `output_file` or the URI's last segment.
/// `link_cached`: cached URIs become symlinks into the cache (wasm tasks only; see
/// the module docs). Returns the files that came from the cache.
pub async fn fetch_all(
    uris: &[Uri],
    sandbox: &Path,
    cache: &FetchCache,
    link_cached: bool,
) -> Result<Vec<CachedFile>, FetchError> {
    let mut from_cache = Vec::new();
    let mut direct = Vec::new();
    for uri in uris {
        let name = output_name(uri)?;
        let entry = match uri.cache {
            Some(true) => cache.get(&uri.value).await?,
            _ => None,
        };
        match entry {
            Some(entry) => from_cache.push((uri.value.clone(), name, entry)),
            None => direct.push((uri.value.clone(), name)),
        }
    }
    // One trip to the blocking pool makes the sandbox and places the cached files:
    // for short tasks, each trip costs more than the work.
    let dir = sandbox.to_owned();
    let cached = tokio::task::spawn_blocking(move || place(&dir, from_cache, link_cached))
        .await
        .map_err(|e| FetchError::Sandbox(e.to_string()))??;
    for (uri, name) in direct {
        fetch(&uri, &sandbox.join(name)).await?;
    }
    Ok(cached)
}

/// Cached files ready to place in a sandbox (see [`FetchCache::all_cached`]).
pub struct Placement {
    files: Vec<(String, PathBuf, Entry)>,
}

impl Placement {
    /// Makes the sandbox and places the files: blocking, for the agent's placer thread.
    pub fn place(self, sandbox: &Path, link: bool) -> Result<Vec<CachedFile>, FetchError> {
        place(sandbox, self.files, link)
    }
}

/// Creates the sandbox and links (or copies) the cached files into it.
fn place(
    sandbox: &Path,
    from_cache: Vec<(String, PathBuf, Entry)>,
    link: bool,
) -> Result<Vec<CachedFile>, FetchError> {
    std::fs::create_dir_all(sandbox).map_err(|e| {
        FetchError::Sandbox(format!("cannot create sandbox {}: {e}", sandbox.display()))
    })?;
    let mut cached = Vec::with_capacity(from_cache.len());
    for (uri, name, entry) in from_cache {
        let target = sandbox.join(&name);
        let placed = (|| {
            // Most files sit in the sandbox itself, made above: no second mkdir.
            if let Some(parent) = target.parent().filter(|p| *p != sandbox) {
                std::fs::create_dir_all(parent)?;
            }
            if link {
                std::os::unix::fs::symlink(&entry.path, &target)
            } else {
                std::fs::copy(&entry.path, &target).map(|_| ())
            }
        })();
        placed.map_err(|e| FetchError::Failed {
            uri,
            why: format!("placing the cached copy: {e}"),
        })?;
        cached.push(CachedFile {
            name: name.display().to_string(),
            sha256: entry.sha256,
        });
    }
    Ok(cached)
}

fn output_name(uri: &Uri) -> Result<PathBuf, FetchError> {
    let name = match uri.output_file.as_deref() {
        Some(f) if !f.is_empty() => f.to_owned(),
        _ => uri
            .value
            .rsplit('/')
            .next()
            .filter(|s| !s.is_empty())
            .unwrap_or("download")
            .to_owned(),
    };
    let path = PathBuf::from(&name);
    let inside = path.components().all(|c| matches!(c, Component::Normal(_)));
    if !inside {
        return Err(FetchError::OutputFile(name));
    }
    Ok(path)
}

async fn fetch(uri: &str, target: &Path) -> Result<(), FetchError> {
    let failed = |why: String| FetchError::Failed {
        uri: uri.to_owned(),
        why,
    };
    if let Some(parent) = target.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| failed(e.to_string()))?;
    }
    if let Some(path) = uri.strip_prefix("file://") {
        let meta = tokio::fs::metadata(path)
            .await
            .map_err(|e| failed(e.to_string()))?;
        if !meta.is_file() {
            return Err(failed("not a regular file".into()));
        }
        if meta.len() > MAX_FETCH_BYTES {
            return Err(failed(format!("larger than {MAX_FETCH_BYTES} bytes")));
        }
        tokio::fs::copy(path, target)
            .await
            .map_err(|e| failed(e.to_string()))?;
        return Ok(());
    }
    if uri.starts_with("http://") {
        let response = reqwest::get(uri).await.map_err(|e| failed(e.to_string()))?;
        if !response.status().is_success() {
            return Err(failed(format!("HTTP {}", response.status())));
        }
        if response
            .content_length()
            .is_some_and(|l| l > MAX_FETCH_BYTES)
        {
            return Err(failed(format!("larger than {MAX_FETCH_BYTES} bytes")));
        }
        let bytes = response.bytes().await.map_err(|e| failed(e.to_string()))?;
        if bytes.len() as u64 > MAX_FETCH_BYTES {
            return Err(failed(format!("larger than {MAX_FETCH_BYTES} bytes")));
        }
        tokio::fs::write(target, &bytes)
            .await
            .map_err(|e| failed(e.to_string()))?;
        return Ok(());
    }
    Err(FetchError::Scheme(uri.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(value: &str, output: Option<&str>) -> Uri {
        Uri {
            value: value.into(),
            output_file: output.map(str::to_owned),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn file_uris_are_copied_into_the_sandbox() {
        let src = tempfile::tempdir().unwrap();
        let sandbox = tempfile::tempdir().unwrap();
        let file = src.path().join("app.wasm");
        std::fs::write(&file, b"\0asm").unwrap();
        let u = uri(&format!("file://{}", file.display()), None);
        let cache = FetchCache::new(src.path().join("cache"));
        fetch_all(&[u], sandbox.path(), &cache, false)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(sandbox.path().join("app.wasm")).unwrap(),
            b"\0asm"
        );
    }

    #[tokio::test]
    async fn escaping_output_files_and_unknown_schemes_are_refused() {
        let sandbox = tempfile::tempdir().unwrap();
        let cache = FetchCache::new(sandbox.path().join("cache"));
        let err = fetch_all(
            &[uri("file:///etc/hostname", Some("../x"))],
            sandbox.path(),
            &cache,
            false,
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "output_file \"../x\" must be a relative path inside the sandbox"
        );
        let err = fetch_all(&[uri("ftp://h/x", None)], sandbox.path(), &cache, false)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("unsupported scheme"), "{err}");
        let err = fetch_all(
            &[uri("file:///nonexistent/x.wasm", None)],
            sandbox.path(),
            &cache,
            false,
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot fetch file:///nonexistent/x.wasm: "),
            "{err}"
        );
    }

    #[tokio::test]
    async fn cached_uris_are_fetched_once_and_linked_or_copied() {
        let src = tempfile::tempdir().unwrap();
        let file = src.path().join("app.wasm");
        std::fs::write(&file, b"\0asm-v1").unwrap();
        let cache = FetchCache::new(src.path().join("cache"));
        let u = Uri {
            cache: Some(true),
            ..uri(&format!("file://{}", file.display()), None)
        };
        let sandboxes: Vec<_> = (0..8).map(|_| tempfile::tempdir().unwrap()).collect();
        // Eight tasks at once, one download.
        let fetched = futures::future::join_all(
            sandboxes
                .iter()
                .map(|s| fetch_all(std::slice::from_ref(&u), s.path(), &cache, true)),
        )
        .await;
        let digest: [u8; 32] = Sha256::digest(b"\0asm-v1").into();
        for (result, sandbox) in fetched.into_iter().zip(&sandboxes) {
            let cached = result.unwrap();
            assert_eq!(
                cached,
                vec![CachedFile {
                    name: "app.wasm".into(),
                    sha256: digest
                }]
            );
            let placed = sandbox.path().join("app.wasm");
            assert!(placed.symlink_metadata().unwrap().is_symlink());
            assert_eq!(std::fs::read(&placed).unwrap(), b"\0asm-v1");
        }
        let entries = std::fs::read_dir(src.path().join("cache")).unwrap().count();
        assert_eq!(entries, 1, "one cached copy");
        // As in Mesos, the cached copy is what later tasks get; a task that may not
        // hold a link gets a copy of it.
        std::fs::write(&file, b"\0asm-v2").unwrap();
        let copy = tempfile::tempdir().unwrap();
        fetch_all(std::slice::from_ref(&u), copy.path(), &cache, false)
            .await
            .unwrap();
        let placed = copy.path().join("app.wasm");
        assert!(placed.symlink_metadata().unwrap().is_file());
        assert_eq!(std::fs::read(&placed).unwrap(), b"\0asm-v1");
    }

    #[tokio::test]
    async fn a_failed_cached_fetch_is_not_remembered() {
        let src = tempfile::tempdir().unwrap();
        let file = src.path().join("late.wasm");
        let cache = FetchCache::new(src.path().join("cache"));
        let u = Uri {
            cache: Some(true),
            ..uri(&format!("file://{}", file.display()), None)
        };
        let sandbox = tempfile::tempdir().unwrap();
        assert!(
            fetch_all(std::slice::from_ref(&u), sandbox.path(), &cache, true)
                .await
                .is_err()
        );
        std::fs::write(&file, b"\0asm").unwrap();
        let cached = fetch_all(std::slice::from_ref(&u), sandbox.path(), &cache, true)
            .await
            .unwrap();
        assert_eq!(cached.len(), 1);
    }
}
