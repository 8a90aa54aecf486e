//! The sandbox's disk quota, after Mesos' disk/du isolator: stdout and stderr are
//! counted as they are written (a flood stops at the quota, not when a poll notices),
//! and the sandbox directory's usage is measured every few epoch ticks. Past the
//! task's `disk` the run ends with a disk limitation.
//!
//! The guest owns the sandbox's names: both the measurement and the output files go
//! through [`SandboxDir`], so no link it plants is followed or counted through.

use std::fs::File;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use crate::dir::{EntryKind, SandboxDir, SandboxDirError};

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
    /// stdout and stderr, relative to `dir` (absent if they are elsewhere).
    outputs: [Option<PathBuf>; 2],
}

impl DiskBudget {
    pub(crate) fn new(quota: u64, dir: &Path, stdout: &Path, stderr: &Path) -> Arc<Self> {
        let inside = |path: &Path| path.strip_prefix(dir).ok().map(Path::to_owned);
        Arc::new(Self {
            quota,
            output: AtomicU64::new(0),
            polled: AtomicU64::new(0),
            exceeded: AtomicBool::new(false),
            polling: AtomicBool::new(false),
            dir: dir.to_owned(),
            outputs: [inside(stdout), inside(stderr)],
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
/// what they hold), at least one block per name. Stops counting once past `limit`:
/// the answer is then only "too much". Every run ends with one of these walks, so
/// it asks the kernel one `fstatat` per name and no more.
///
/// The walk never follows a link (a link counts one block, whatever it points to)
/// and descends only into directories it opened beneath the sandbox, so a guest can
/// neither make it count another tenant's files nor hide its own. A file with two
/// hard links counts once per name: over-counting is the quota's safe side, and a
/// guest can link only files inside its sandbox. A tree nested deeper than the walk
/// descends ([`crate::dir::MAX_DEPTH`]) cannot be measured and counts as full.
fn usage(dir: &Path, skip: &[Option<PathBuf>; 2], limit: u64) -> u64 {
    let dir = match SandboxDir::open(dir) {
        Ok(dir) => dir,
        Err(e) => {
            tracing::debug!(error = %e, "cannot open the sandbox to measure it");
            return 0;
        }
    };
    let mut total = 0u64;
    let walked = dir.walk(|rel, entry| {
        if skip.iter().flatten().any(|s| s == rel) {
            return ControlFlow::Continue(());
        }
        let bytes = match entry.kind {
            EntryKind::Symlink => INODE_BYTES,
            _ => entry.allocated.max(INODE_BYTES),
        };
        total = total.saturating_add(bytes);
        if total > limit {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    match walked {
        Ok(()) => total,
        Err(e @ SandboxDirError::TooDeep { .. }) => {
            let sandbox = dir.path().display();
            tracing::warn!(%sandbox, error = %e, "counting the sandbox as full");
            u64::MAX
        }
        Err(e) => {
            let sandbox = dir.path().display();
            tracing::warn!(%sandbox, error = %e, "cannot measure all of the sandbox");
            total
        }
    }
}

/// stdout or stderr: a file whose every write is taken from the run's budget first.
/// It is opened on the first write, so an idle task holds no descriptor for it.
#[derive(Clone)]
pub(crate) struct QuotaOutput {
    /// The sandbox and the file's name in it.
    path: Arc<(PathBuf, PathBuf)>,
    file: Arc<Mutex<Option<File>>>,
    budget: Arc<DiskBudget>,
}

impl QuotaOutput {
    pub(crate) fn new(sandbox: PathBuf, name: PathBuf, budget: Arc<DiskBudget>) -> Self {
        Self {
            path: Arc::new((sandbox, name)),
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
            // The guest can replace the file before its first write (with a link, a
            // FIFO, a hard link to another file): open it as the host opens any
            // file a tenant could have shaped.
            let (sandbox, name) = &*self.path;
            *file = Some(SandboxDir::open(sandbox)?.append(name, 0o666)?);
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

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: usize = 256 << 10;

    /// What `usage` counts for `dir`, stdout and stderr in it left out.
    fn measured(dir: &Path) -> u64 {
        let skip = [Some(PathBuf::from("stdout")), Some(PathBuf::from("stderr"))];
        usage(dir, &skip, u64::MAX)
    }

    #[test]
    fn links_count_one_block_whatever_they_point_to() {
        let sandbox = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("big"), vec![1u8; BIG]).unwrap();
        std::os::unix::fs::symlink(outside.path(), sandbox.path().join("dir")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("big"), sandbox.path().join("file"))
            .unwrap();
        assert_eq!(measured(sandbox.path()), 2 * INODE_BYTES);
    }

    #[test]
    fn files_count_their_blocks_per_name_and_outputs_are_left_out() {
        let sandbox = tempfile::tempdir().unwrap();
        std::fs::write(sandbox.path().join("stdout"), vec![1u8; BIG]).unwrap();
        std::fs::create_dir(sandbox.path().join("d")).unwrap();
        std::fs::write(sandbox.path().join("d/data"), vec![1u8; BIG]).unwrap();
        let one = measured(sandbox.path());
        // The directory's block and the file's (at least their length).
        assert!(one >= INODE_BYTES + BIG as u64, "{one}");
        std::fs::hard_link(sandbox.path().join("d/data"), sandbox.path().join("twin")).unwrap();
        let file = one - INODE_BYTES;
        assert_eq!(measured(sandbox.path()), one + file);
    }

    #[test]
    fn a_tree_too_deep_to_measure_counts_as_full() {
        let sandbox = tempfile::tempdir().unwrap();
        let deep = vec!["d"; crate::dir::MAX_DEPTH + 1].join("/");
        std::fs::create_dir_all(sandbox.path().join(deep)).unwrap();
        assert_eq!(measured(sandbox.path()), u64::MAX);
    }
}
