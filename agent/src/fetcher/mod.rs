//! Mesos' fetcher: a task's `command.uris` are copied into its sandbox before the
//! executor sees the task. Any framework may name any URI, so the fetcher is a
//! boundary between tenants and the agent:
//!
//! - `file://` is read with the task user's rights (Mesos runs its fetcher as that
//!   user), so a task gets only what its user may read (see `file`).
//! - `http://` is streamed to disk under a size cap, with connect, stall and overall
//!   timeouts and a redirect limit, and never reaches loopback, link-local (cloud
//!   metadata), unspecified or the agent's own addresses unless
//!   `--fetcher-allowed-networks` lists them (see `http` and `net`). `https://` is
//!   the same over TLS, trusting the system's roots and `--fetcher-ca-file` (see
//!   `tls`); a redirect from `https://` to `http://` is refused.
//! - Outputs are plain relative names, created new (`O_EXCL`) beneath the sandbox
//!   without following any link, and owned by the task's user.
//! - What a task's URIs bring counts against its `disk` (the agent's default where it
//!   names none): each is capped by `--fetcher-max-size` or by what the ones before it
//!   left of the disk, whichever is less, so no task fills the agent's disk before
//!   it even starts.
//!
//! A URI marked `cache: true` is fetched once per agent into the fetcher cache (see
//! `cache`). Cached files are the agent's, mode 0444. A wasm task's sandbox then
//! holds a view of the cached file its guest cannot write through (a hard link, or
//! for a task of the agent's own user a symlink WASI will not follow; see
//! `Target::link_to`), and the executor finds the compiled module by the digest
//! without reading or hashing the file again. Any other task gets its own copy: a
//! native process running as root could write through either.

mod cache;
mod file;
mod http;
mod net;
mod output;
mod tls;

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use cairn_api::v1::command_info::Uri;
use cairn_sandbox::SandboxDir;

use crate::user::TaskUser;
pub use net::AllowedNetwork;
pub use output::discard_changed;
use output::{Owner, Target};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot fetch {uri}: {why}")]
    Failed { uri: String, why: String },
    #[error("URI {0:?} has an unsupported scheme (file://, http:// and https:// are supported)")]
    Scheme(String),
    #[error("output_file {0:?} must be a relative path inside the sandbox")]
    OutputFile(String),
    #[error("output_file {name:?} {why}")]
    Output { name: String, why: String },
    #[error("URIs {first} and {second} are both fetched to {name:?}; give one an output_file")]
    Duplicate {
        name: String,
        first: String,
        second: String,
    },
    #[error("the fetcher cache is full")]
    CacheFull,
    #[error("{0}")]
    Sandbox(String),
}

/// The fetcher's limits (the agent's `--fetcher-*` flags).
#[derive(Debug, Clone)]
pub struct FetcherConfig {
    /// How long an HTTP server has to accept a connection.
    pub connect_timeout: Duration,
    /// How long an HTTP download may receive nothing (Mesos' `--fetcher_stall_timeout`).
    pub stall_timeout: Duration,
    /// How long one URI's download may take in all, redirects included.
    pub timeout: Duration,
    /// The largest file one URI may put in a sandbox: a URI must not fill the disk.
    pub max_size: u64,
    /// How many redirects one download may follow (curl's and Mesos' 5 by default).
    pub max_redirects: usize,
    /// Networks reachable although the fetcher refuses them by default (loopback,
    /// link-local, unspecified, the agent's own addresses): tests and local mirrors.
    pub allowed_networks: Vec<AllowedNetwork>,
    /// PEM certificates `https://` servers may chain to besides the system's roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for FetcherConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(60),
            timeout: Duration::from_secs(15 * 60),
            max_size: 1 << 30,
            max_redirects: 5,
            allowed_networks: Vec::new(),
            ca_file: None,
        }
    }
}

/// The most one URI may bring, and what sets it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cap {
    pub(super) bytes: u64,
    /// What is left of the task's disk, when that is less than `--fetcher-max-size`.
    disk: Option<u64>,
}

impl Cap {
    fn next(config: &FetcherConfig, disk_left: u64, disk: u64) -> Self {
        match disk_left < config.max_size {
            true => Cap {
                bytes: disk_left,
                disk: Some(disk),
            },
            false => Cap {
                bytes: config.max_size,
                disk: None,
            },
        }
    }
}

impl std::fmt::Display for Cap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.disk {
            Some(disk) => write!(
                f,
                "the {} bytes left of the task's disk of {disk} bytes (its URIs count against it)",
                self.bytes
            ),
            None => write!(
                f,
                "the fetcher's limit of {} bytes (--fetcher-max-size)",
                self.bytes
            ),
        }
    }
}

/// The agent's fetcher: its limits, its TLS and its cache.
pub struct Fetcher {
    config: FetcherConfig,
    tls: rustls::ClientConfig,
    cache: cache::FetchCache,
}

impl Fetcher {
    /// Fails when `--fetcher-ca-file` cannot be read.
    pub fn new(cache_dir: PathBuf, config: FetcherConfig) -> Result<Self, String> {
        Ok(Self {
            tls: tls::client_config(config.ca_file.as_deref())?,
            config,
            cache: cache::FetchCache::new(cache_dir),
        })
    }

    /// Every URI's cached copy, when all of them are `cache: true` and already in
    /// the cache: such a task's sandbox is made without any download. `disk`: the
    /// task's, in bytes.
    pub fn all_cached(&self, uris: &[Uri], user: &TaskUser, disk: u64) -> Option<Placement> {
        let names = output_names(uris).ok()?;
        let files = uris
            .iter()
            .zip(names)
            .map(|(uri, name)| {
                let entry = self.cache.cached(&cache::key(&uri.value, user))?;
                (uri.cache == Some(true)).then(|| Placed {
                    uri: uri.value.clone(),
                    name,
                    entry,
                    executable: uri.executable == Some(true),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Placement {
            files,
            owner: Owner::of(user),
            disk,
        })
    }
}

/// A file placed in a sandbox from the fetcher cache, with its content's digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedFile {
    /// Its name in the sandbox.
    pub name: String,
    pub sha256: [u8; 32],
    /// The cache's entry it was placed from (the agent's alone).
    pub entry: std::path::PathBuf,
}

/// Fetches every URI into `sandbox` as `user`, named by `output_file` or the URI's
/// last segment, all of them within the task's `disk` (bytes). `link_cached`: cached
/// URIs become symlinks into the cache (wasm tasks only; see the module docs).
/// Returns the files that came from the cache.
pub async fn fetch_all(
    uris: &[Uri],
    sandbox: &Path,
    fetcher: &Fetcher,
    link_cached: bool,
    user: &TaskUser,
    disk: u64,
) -> Result<Vec<CachedFile>, FetchError> {
    let names = output_names(uris)?;
    let mut from_cache = Vec::new();
    let mut direct = Vec::new();
    for (uri, name) in uris.iter().zip(names) {
        let entry = match uri.cache {
            Some(true) => fetcher.cache.get(&uri.value, user, fetcher).await?,
            _ => None,
        };
        match entry {
            Some(entry) => from_cache.push(Placed {
                uri: uri.value.clone(),
                name,
                entry,
                executable: uri.executable == Some(true),
            }),
            None => direct.push((uri, name)),
        }
    }
    // One trip to the blocking pool makes the sandbox and places the cached files:
    // for short tasks, each trip costs more than the work.
    let placement = Placement {
        files: from_cache,
        owner: Owner::of(user),
        disk,
    };
    let mut left = placement.left()?;
    let dir = sandbox.to_owned();
    let (root, cached) = tokio::task::spawn_blocking(move || placement.place_in(&dir, link_cached))
        .await
        .map_err(|e| FetchError::Sandbox(e.to_string()))??;
    for (uri, name) in direct {
        let (sub, file) = output::parent_of(&root, &name, Owner::of(user))?;
        let target = Target {
            uri: &uri.value,
            dir: sub.as_ref().unwrap_or(&root),
            name: file,
            shown: &name,
            owner: Owner::of(user),
            executable: uri.executable == Some(true),
        };
        let cap = Cap::next(&fetcher.config, left, disk);
        left -= fetch_one(&target, user, fetcher, cap).await?.min(left);
    }
    Ok(cached)
}

/// Fetches one URI into `target`, by its scheme, at most `cap` bytes of it; returns
/// how many it brought.
async fn fetch_one(
    target: &Target<'_>,
    user: &TaskUser,
    fetcher: &Fetcher,
    cap: Cap,
) -> Result<u64, FetchError> {
    let uri = target.uri;
    if let Some(path) = uri.strip_prefix("file://") {
        return file::fetch(path, target, user, cap).await;
    }
    if uri.starts_with("http://") || uri.starts_with("https://") {
        return http::fetch(target, &fetcher.config, &fetcher.tls, cap).await;
    }
    Err(FetchError::Scheme(uri.to_owned()))
}

/// One cached file to place in a sandbox.
struct Placed {
    uri: String,
    name: PathBuf,
    entry: cache::Entry,
    executable: bool,
}

/// Cached files ready to place in a sandbox (see [`Fetcher::all_cached`]).
pub struct Placement {
    files: Vec<Placed>,
    owner: Owner,
    /// The task's disk, in bytes.
    disk: u64,
}

impl Placement {
    /// Makes the sandbox and places the files: blocking, for the agent's placer thread.
    pub fn place(self, sandbox: &Path, link: bool) -> Result<Vec<CachedFile>, FetchError> {
        self.left()?;
        self.place_in(sandbox, link).map(|(_, cached)| cached)
    }

    /// What the cached files leave of the task's disk; refused if they do not fit.
    fn left(&self) -> Result<u64, FetchError> {
        let mut left = self.disk;
        for file in &self.files {
            let size = file.entry.size();
            if size > left {
                let cap = Cap {
                    bytes: left,
                    disk: Some(self.disk),
                };
                return Err(FetchError::Failed {
                    uri: file.uri.clone(),
                    why: format!("its {size} bytes are more than {cap}"),
                });
            }
            left -= size;
        }
        Ok(left)
    }

    /// Creates the sandbox and links (or copies) the cached files into it; returns
    /// the open sandbox for the other URIs.
    fn place_in(
        self,
        sandbox: &Path,
        link: bool,
    ) -> Result<(SandboxDir, Vec<CachedFile>), FetchError> {
        let root = output::open_sandbox(sandbox, self.owner)?;
        let mut cached = Vec::with_capacity(self.files.len());
        for file in self.files {
            let (sub, name) = output::parent_of(&root, &file.name, self.owner)?;
            let target = Target {
                uri: &file.uri,
                dir: sub.as_ref().unwrap_or(&root),
                name,
                shown: &file.name,
                owner: self.owner,
                executable: file.executable,
            };
            if link {
                target.link_to(&file.entry.path, &file.entry.sha256)?;
            } else {
                target.copy_of(&file.entry.path, &file.entry.sha256)?;
            }
            cached.push(CachedFile {
                name: file.name.display().to_string(),
                sha256: file.entry.sha256,
                entry: file.entry.path.clone(),
            });
        }
        Ok((root, cached))
    }
}

/// Every URI's name in the sandbox; two URIs may not share one.
fn output_names(uris: &[Uri]) -> Result<Vec<PathBuf>, FetchError> {
    let mut seen: HashMap<PathBuf, &str> = HashMap::new();
    let mut names = Vec::with_capacity(uris.len());
    for uri in uris {
        let name = output_name(uri)?;
        if let Some(first) = seen.insert(name.clone(), &uri.value) {
            return Err(FetchError::Duplicate {
                name: name.display().to_string(),
                first: first.to_owned(),
                second: uri.value.clone(),
            });
        }
        names.push(name);
    }
    Ok(names)
}

/// `output_file`, else the URI's last path segment: a plain relative name, no `..`,
/// no root, no `.`.
fn output_name(uri: &Uri) -> Result<PathBuf, FetchError> {
    let name = match uri.output_file.as_deref() {
        Some(f) if !f.is_empty() => f.to_owned(),
        _ => {
            // An HTTP URL's query and fragment are not part of its file's name.
            let path = match uri.value.starts_with("http") {
                true => uri.value.split(['?', '#']).next().unwrap_or_default(),
                false => &uri.value,
            };
            path.rsplit('/')
                .next()
                .filter(|s| !s.is_empty())
                .unwrap_or("download")
                .to_owned()
        }
    };
    let path = PathBuf::from(&name);
    let plain = !name.starts_with('/')
        && path.components().all(|c| matches!(c, Component::Normal(_)))
        && path.components().next().is_some();
    if !plain {
        return Err(FetchError::OutputFile(name));
    }
    Ok(path)
}

#[cfg(test)]
mod tests;
