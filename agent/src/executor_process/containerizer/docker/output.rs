//! A Docker task's output, copied from the engine into the sandbox's `stdout` and
//! `stderr` as it is written, like any other task's, up to the task's disk.
//!
//! The engine keeps a container's output, each line stamped with the time it
//! received it, and the container outlives the agent that follows it. Each line
//! copied stamps its file's modification time with its own timestamp, so after an
//! agent restart the later of the two files' times says exactly where copying
//! stopped: what the container wrote meanwhile is copied once, and nothing twice.

use std::path::{Path, PathBuf};
use std::pin::pin;
use std::time::{SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptionsBuilder;
use cairn_sandbox::{SandboxDir, SandboxDirError};
use futures::StreamExt as _;
use tokio::fs::File;
use tokio::io::AsyncWriteExt as _;

/// Copies the container's output into the sandbox, stopping at the task's disk so a
/// chatty task cannot fill the host's. `resume`: the container was followed before
/// (by an agent since restarted), and copying goes on after the last line copied.
pub(super) async fn copy_output(
    docker: Docker,
    container: String,
    sandbox: PathBuf,
    disk_bytes: u64,
    resume: bool,
) {
    let (mut stdout, mut stderr, used) = match open_logs(&sandbox).await {
        Ok(opened) => opened,
        Err(e) => {
            tracing::warn!(%container, error = %e, "cannot open the sandbox's output files");
            return;
        }
    };
    let mut left = disk_bytes.saturating_sub(used);
    let after = if resume {
        last_copied(&stdout, &stderr)
    } else {
        None
    };
    // The engine takes whole seconds; the lines of the last one are sifted below.
    let since = after
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i32::try_from(d.as_secs()).unwrap_or(i32::MAX));
    let options = LogsOptionsBuilder::new()
        .follow(true)
        .stdout(true)
        .stderr(true)
        .timestamps(true)
        .since(since)
        .build();
    let mut logs = pin!(docker.logs(&container, Some(options)));
    while let Some(item) = logs.next().await {
        let (file, message) = match item {
            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                (&mut stdout, message)
            }
            Ok(LogOutput::StdErr { message }) => (&mut stderr, message),
            Ok(LogOutput::StdIn { .. }) => continue,
            Err(e) => {
                tracing::warn!(%container, error = %e, "lost the container's output");
                return;
            }
        };
        let (at, line) = match split_timestamp(&message) {
            Some((at, line)) => (Some(at), line),
            None => (None, &message[..]),
        };
        if at.zip(after).is_some_and(|(at, after)| at <= after) {
            continue;
        }
        let n = line.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if let Err(e) = file.append(&line[..n], at).await {
            tracing::warn!(%container, error = %e, "cannot write the container's output");
            return;
        }
        left -= n as u64;
        if n < line.len() {
            tracing::warn!(
                %container,
                disk_bytes,
                "the container's output reached the task's disk; the rest is dropped"
            );
            return;
        }
    }
}

/// One of the sandbox's output files, appended to.
struct Output {
    file: File,
    /// The same open file, to stamp its modification time.
    stamp: std::fs::File,
}

impl Output {
    fn new(file: std::fs::File) -> std::io::Result<Self> {
        Ok(Self {
            stamp: file.try_clone()?,
            file: File::from_std(file),
        })
    }

    /// Appends `bytes`, received by the engine `at`, and stamps the file with it.
    async fn append(&mut self, bytes: &[u8], at: Option<SystemTime>) -> std::io::Result<()> {
        self.file.write_all(bytes).await?;
        // tokio writes in the background: flushed, the bytes are in the file before
        // the terminal update says the task is done, and before the stamp says so.
        self.file.flush().await?;
        match at {
            Some(at) => self.stamp.set_modified(at),
            None => Ok(()),
        }
    }
}

/// The sandbox's `stdout` and `stderr`, appended to, and the bytes they already hold.
/// The container wrote the sandbox (as its user, through its bind mount) and may
/// have left a link, a FIFO or a hard link under either name, notably before the
/// agent attaches again after a restart: each is opened beneath the sandbox
/// following no link, and must be a regular file with one link.
async fn open_logs(sandbox: &Path) -> std::io::Result<(Output, Output, u64)> {
    let sandbox = sandbox.to_owned();
    let (stdout, stderr) = tokio::task::spawn_blocking(move || {
        let dir = SandboxDir::open(&sandbox)?;
        let open = |name: &str| dir.append(Path::new(name), 0o644);
        Ok::<_, SandboxDirError>((open("stdout")?, open("stderr")?))
    })
    .await??;
    let used = stdout.metadata()?.len() + stderr.metadata()?.len();
    Ok((Output::new(stdout)?, Output::new(stderr)?, used))
}

/// When the engine received the last line copied: the later stamp of the two files,
/// if either holds anything (an empty file's time is its creation's, not a line's).
fn last_copied(stdout: &Output, stderr: &Output) -> Option<SystemTime> {
    [stdout, stderr]
        .iter()
        .filter_map(|o| o.stamp.metadata().ok())
        .filter(|m| m.len() > 0)
        .filter_map(|m| m.modified().ok())
        .max()
}

/// A line as the engine gives it with `timestamps`: its RFC 3339 time (nanoseconds,
/// trailing zeros trimmed), a space, then the line.
fn split_timestamp(message: &[u8]) -> Option<(SystemTime, &[u8])> {
    let space = message.iter().position(|&b| b == b' ')?;
    let at = std::str::from_utf8(&message[..space]).ok()?;
    let at = humantime::parse_rfc3339(at).ok()?;
    Some((at, &message[space + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_files_a_container_replaced_with_links_are_refused() {
        let sandbox = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        let target = host.path().join("shadow");
        std::fs::write(&target, "host\n").unwrap();
        std::fs::write(sandbox.path().join("stdout"), "").unwrap();
        std::os::unix::fs::symlink(&target, sandbox.path().join("stderr")).unwrap();
        let err = open_logs(sandbox.path()).await.err().unwrap();
        assert_eq!(
            err.to_string(),
            "stderr is, or passes through, a symbolic link; links in a sandbox are never \
             followed"
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "host\n");
    }

    #[tokio::test]
    async fn output_files_are_appended_to_and_what_they_hold_is_counted() {
        let sandbox = tempfile::tempdir().unwrap();
        std::fs::write(sandbox.path().join("stdout"), "12345").unwrap();
        let (mut stdout, _stderr, used) = open_logs(sandbox.path()).await.unwrap();
        assert_eq!(used, 5);
        stdout.append(b"678", None).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(sandbox.path().join("stdout")).unwrap(),
            "12345678"
        );
        assert_eq!(std::fs::read(sandbox.path().join("stderr")).unwrap(), b"");
    }

    #[tokio::test]
    async fn copying_resumes_after_the_last_line_stamped() {
        let sandbox = tempfile::tempdir().unwrap();
        let (mut stdout, mut stderr, _) = open_logs(sandbox.path()).await.unwrap();
        assert_eq!(last_copied(&stdout, &stderr), None, "nothing copied yet");
        let (first, _) = split_timestamp(b"2026-12-05T12:00:00.5Z a\n").unwrap();
        let (second, line) = split_timestamp(b"2026-12-05T12:00:00.500000001Z b\n").unwrap();
        assert!(first < second);
        assert_eq!(line, b"b\n");
        stderr.append(b"b\n", Some(second)).await.unwrap();
        stdout.append(b"a\n", Some(first)).await.unwrap();
        assert_eq!(last_copied(&stdout, &stderr), Some(second));
        // Reopened, as after a restart: the stamps are what the files say.
        drop((stdout, stderr));
        let (stdout, stderr, used) = open_logs(sandbox.path()).await.unwrap();
        assert_eq!(used, 4);
        assert_eq!(last_copied(&stdout, &stderr), Some(second));
    }

    #[test]
    fn a_line_without_a_timestamp_is_not_split() {
        assert_eq!(split_timestamp(b"no-timestamp here"), None);
        assert_eq!(split_timestamp(b"line"), None);
    }
}
