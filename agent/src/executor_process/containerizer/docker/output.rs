//! A Docker task's output, copied from the engine into the sandbox's `stdout` and
//! `stderr` as it is written, like any other task's, up to the task's disk.

use std::path::{Path, PathBuf};
use std::pin::pin;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptionsBuilder;
use futures::StreamExt as _;
use tokio::fs::{File, OpenOptions};
use tokio::io::AsyncWriteExt as _;

/// Copies the container's output into the sandbox, stopping at the task's disk so a
/// chatty task cannot fill the host's.
pub(super) async fn copy_output(
    docker: Docker,
    container: String,
    sandbox: PathBuf,
    disk_bytes: u64,
    since: i32,
) {
    let (mut stdout, mut stderr, mut left) = match open_logs(&sandbox).await {
        Ok((stdout, stderr, used)) => (stdout, stderr, disk_bytes.saturating_sub(used)),
        Err(e) => {
            tracing::warn!(%container, error = %e, "cannot open the sandbox's output files");
            return;
        }
    };
    let options = LogsOptionsBuilder::new()
        .follow(true)
        .stdout(true)
        .stderr(true)
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
        let n = message
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        if let Err(e) = append(file, &message[..n]).await {
            tracing::warn!(%container, error = %e, "cannot write the container's output");
            return;
        }
        left -= n as u64;
        if n < message.len() {
            tracing::warn!(
                %container,
                disk_bytes,
                "the container's output reached the task's disk; the rest is dropped"
            );
            return;
        }
    }
}

/// The sandbox's `stdout` and `stderr`, appended to, and the bytes they already hold.
async fn open_logs(sandbox: &Path) -> std::io::Result<(File, File, u64)> {
    let open = |name: &str| {
        let path = sandbox.join(name);
        async move {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .await
        }
    };
    let (stdout, stderr) = (open("stdout").await?, open("stderr").await?);
    let used = stdout.metadata().await?.len() + stderr.metadata().await?.len();
    Ok((stdout, stderr, used))
}

async fn append(file: &mut File, bytes: &[u8]) -> std::io::Result<()> {
    file.write_all(bytes).await?;
    // tokio writes in the background: flushed, the bytes are in the file before the
    // terminal update says the task is done.
    file.flush().await
}
