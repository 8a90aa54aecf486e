//! A Docker task's output, copied from the engine into the sandbox's `stdout` and
//! `stderr` as it is written, like any other task's, up to the task's disk.

use std::path::{Path, PathBuf};
use std::pin::pin;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptionsBuilder;
use cairn_sandbox::{SandboxDir, SandboxDirError};
use futures::StreamExt as _;
use tokio::fs::File;
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
/// The container wrote the sandbox (as root, through its bind mount) and may have
/// left a link, a FIFO or a hard link under either name, notably before the agent
/// attaches again after a restart: each is opened beneath the sandbox following no
/// link, and must be a regular file with one link.
async fn open_logs(sandbox: &Path) -> std::io::Result<(File, File, u64)> {
    let sandbox = sandbox.to_owned();
    let (stdout, stderr) = tokio::task::spawn_blocking(move || {
        let dir = SandboxDir::open(&sandbox)?;
        let open = |name: &str| dir.append(Path::new(name), 0o644);
        Ok::<_, SandboxDirError>((open("stdout")?, open("stderr")?))
    })
    .await??;
    let (stdout, stderr) = (File::from_std(stdout), File::from_std(stderr));
    let used = stdout.metadata().await?.len() + stderr.metadata().await?.len();
    Ok((stdout, stderr, used))
}

async fn append(file: &mut File, bytes: &[u8]) -> std::io::Result<()> {
    file.write_all(bytes).await?;
    // tokio writes in the background: flushed, the bytes are in the file before the
    // terminal update says the task is done.
    file.flush().await
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
        append(&mut stdout, b"678").await.unwrap();
        assert_eq!(
            std::fs::read_to_string(sandbox.path().join("stdout")).unwrap(),
            "12345678"
        );
        assert_eq!(std::fs::read(sandbox.path().join("stderr")).unwrap(), b"");
    }
}
