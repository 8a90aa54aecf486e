//! The sandbox's disk quota, after Mesos' disk/du isolator: stdout and stderr are
//! counted as they are written (a flood stops at the quota, not when a poll notices),
//! and the sandbox directory's usage is measured every few epoch ticks. Past the
//! task's `disk` the run ends with a disk limitation.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// Raised when a write would cross the quota; classified as a disk limitation.
#[derive(Debug, thiserror::Error)]
#[error("the task's disk quota is exhausted")]
pub(crate) struct DiskLimitExceeded;

/// One run's disk budget, shared by its output streams and the usage poll.
#[derive(Debug)]
pub(crate) struct DiskBudget {
    quota: u64,
    /// Bytes written to stdout and stderr.
    output: AtomicU64,
    /// The sandbox's usage at the last poll, stdout and stderr left out (they are
    /// counted as written, even if the guest unlinks them).
    polled: AtomicU64,
    pub(crate) exceeded: AtomicBool,
    /// A background measurement is under way.
    polling: AtomicBool,
    dir: PathBuf,
    outputs: [PathBuf; 2],
}

impl DiskBudget {
    pub(crate) fn new(quota: u64, dir: &Path, stdout: &Path, stderr: &Path) -> Arc<Self> {
        Arc::new(Self {
            quota,
            output: AtomicU64::new(0),
            polled: AtomicU64::new(0),
            exceeded: AtomicBool::new(false),
            polling: AtomicBool::new(false),
            dir: dir.to_owned(),
            outputs: [stdout.to_owned(), stderr.to_owned()],
        })
    }

    /// Takes `bytes` of output from the budget, or refuses past the quota.
    fn take(&self, bytes: usize) -> bool {
        let after = self.output.fetch_add(bytes as u64, Ordering::Relaxed) + bytes as u64;
        let within = after.saturating_add(self.polled.load(Ordering::Relaxed)) <= self.quota;
        if !within {
            self.exceeded.store(true, Ordering::Relaxed);
        }
        within
    }

    /// Starts a measurement on tokio's blocking pool unless one is under way, and
    /// says whether the quota is already known to be exceeded. The walk can take a
    /// while (a guest may make many small files) and must not hold up the runtime
    /// threads other tasks run on.
    pub(crate) fn poll_in_background(self: &Arc<Self>) -> bool {
        if !self.polling.swap(true, Ordering::AcqRel) {
            let budget = self.clone();
            let started = tokio::runtime::Handle::try_current().map(|rt| {
                rt.spawn_blocking(move || {
                    budget.poll();
                    budget.polling.store(false, Ordering::Release);
                })
            });
            if started.is_err() {
                // No runtime (a caller outside tokio): measure here.
                self.poll();
                self.polling.store(false, Ordering::Release);
            }
        }
        self.exceeded.load(Ordering::Relaxed)
    }

    /// Measures the sandbox (files the guest wrote through WASI) and notes whether it
    /// is past the quota.
    pub(crate) fn poll(&self) -> bool {
        let output = self.output.load(Ordering::Relaxed);
        let room = self.quota.saturating_sub(output);
        let used = usage(&self.dir, &self.outputs, room);
        self.polled.store(used, Ordering::Relaxed);
        if used.saturating_add(output) > self.quota {
            self.exceeded.store(true, Ordering::Relaxed);
        }
        self.exceeded.load(Ordering::Relaxed)
    }
}

/// What one inode costs at least: empty files and directories are not free (each
/// takes an inode and a directory entry), so millions of them exhaust the quota too.
const INODE_BYTES: u64 = 4096;

/// Bytes used under `dir`, `skip` left out: allocated blocks (sparse files count as
/// what they hold), at least one block per file or directory. Stops counting once
/// past `limit`: the answer is then only "too much". Every run ends with one of
/// these walks, so it asks the kernel as little as it can: entry types come from the
/// directory listing where the filesystem fills them in, and a symlink is counted as
/// one block without a stat (its target, at most a page, costs no more).
fn usage(dir: &Path, skip: &[PathBuf], limit: u64) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let skipped = |parent: &Path, name: &std::ffi::OsStr| {
        skip.iter()
            .any(|s| s.file_name() == Some(name) && s.parent() == Some(parent))
    };
    let mut total = 0u64;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            if skipped(&d, &entry.file_name()) {
                continue;
            }
            // Neither the listing's type nor `DirEntry::metadata` follows symlinks.
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let bytes = if kind.is_symlink() {
                INODE_BYTES
            } else {
                let Ok(meta) = entry.metadata() else { continue };
                (meta.blocks() * 512).max(INODE_BYTES)
            };
            total = total.saturating_add(bytes);
            if total > limit {
                return total;
            }
            if kind.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    total
}

/// Linux's `O_NOFOLLOW`: the last path component must not be a symlink.
const O_NOFOLLOW: i32 = 0o400_000;
/// Linux's `O_NONBLOCK`: a FIFO the guest left in place of its output fails the
/// open instead of blocking a runtime thread (a guest cannot make one through WASI,
/// but the directory may hold anything).
const O_NONBLOCK: i32 = 0o4_000;

/// stdout or stderr: a file whose every write is taken from the run's budget first.
/// It is opened on the first write, so an idle task holds no descriptor for it.
#[derive(Clone)]
pub(crate) struct QuotaOutput {
    path: Arc<PathBuf>,
    file: Arc<Mutex<Option<File>>>,
    budget: Arc<DiskBudget>,
}

impl QuotaOutput {
    pub(crate) fn new(path: PathBuf, budget: Arc<DiskBudget>) -> Self {
        Self {
            path: Arc::new(path),
            file: Arc::new(Mutex::new(None)),
            budget,
        }
    }

    fn write_bytes(&self, bytes: &[u8]) -> std::io::Result<()> {
        if !self.budget.take(bytes.len()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                DiskLimitExceeded,
            ));
        }
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if file.is_none() {
            // The guest can replace the file before its first write: never follow
            // a link it may have put there.
            use std::os::unix::fs::OpenOptionsExt;
            *file = Some(
                File::options()
                    .create(true)
                    .append(true)
                    .custom_flags(O_NOFOLLOW | O_NONBLOCK)
                    .open(&*self.path)?,
            );
        }
        match file.as_mut() {
            Some(f) => f.write_all(bytes),
            None => Ok(()),
        }
    }

    fn flush_file(&self) -> std::io::Result<()> {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        match file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl IsTerminal for QuotaOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for QuotaOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for QuotaOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for QuotaOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes).map_err(|e| {
            if self.budget.exceeded.load(Ordering::Relaxed) {
                // Ends the run; the trap is classified as a disk limitation.
                StreamError::Trap(DiskLimitExceeded.into())
            } else {
                StreamError::LastOperationFailed(e.into())
            }
        })
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.flush_file()
            .map_err(|e| StreamError::LastOperationFailed(e.into()))
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

impl tokio::io::AsyncWrite for QuotaOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(self.write_bytes(buf).map(|()| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.flush_file())
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
