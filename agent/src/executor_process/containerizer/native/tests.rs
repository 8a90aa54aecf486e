//! The task's output files: opened beneath its sandbox, never through a link.
use std::os::unix::fs::MetadataExt;

use super::*;

/// A sandbox, and a host file outside it a tenant would like written or owned.
fn sandbox_and_host_file() -> (tempfile::TempDir, tempfile::TempDir, PathBuf) {
    let sandbox = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let passwd = host.path().join("passwd");
    std::fs::write(&passwd, "root:x:0:0::/root:/bin/sh\n").unwrap();
    (sandbox, host, passwd)
}

/// The ids a test may give files to: nobody's as root, its own otherwise.
fn task_ids() -> (u32, u32) {
    if nix::unistd::geteuid().is_root() {
        (65534, 65534)
    } else {
        (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    }
}

#[test]
fn a_stdout_planted_as_a_link_to_a_host_file_fails_the_launch() {
    let (sandbox, _host, passwd) = sandbox_and_host_file();
    std::os::unix::fs::symlink(&passwd, sandbox.path().join("stdout")).unwrap();
    let owner = std::fs::metadata(&passwd).unwrap().uid();
    let err = sandbox_outputs(sandbox.path(), Some(task_ids())).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot open the sandbox's stdout: stdout is, or passes through, a symbolic \
         link; links in a sandbox are never followed"
    );
    assert_eq!(
        std::fs::read_to_string(&passwd).unwrap(),
        "root:x:0:0::/root:/bin/sh\n"
    );
    assert_eq!(std::fs::metadata(&passwd).unwrap().uid(), owner);
}

#[test]
fn a_stderr_hard_linked_to_a_host_file_is_neither_written_nor_given_away() {
    let (sandbox, _host, passwd) = sandbox_and_host_file();
    std::fs::hard_link(&passwd, sandbox.path().join("stderr")).unwrap();
    let owner = std::fs::metadata(&passwd).unwrap().uid();
    let err = sandbox_outputs(sandbox.path(), Some(task_ids())).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot open the sandbox's stderr: stderr has 2 hard links; only a file with \
         one is opened"
    );
    assert_eq!(std::fs::metadata(&passwd).unwrap().uid(), owner);
    assert_eq!(
        std::fs::read_to_string(&passwd).unwrap(),
        "root:x:0:0::/root:/bin/sh\n"
    );
}

#[test]
fn the_sandbox_and_its_outputs_are_given_to_the_task_user() {
    let sandbox = tempfile::tempdir().unwrap();
    std::fs::write(sandbox.path().join("stdout"), "earlier\n").unwrap();
    let (uid, gid) = task_ids();
    let (mut stdout, _stderr) = sandbox_outputs(sandbox.path(), Some((uid, gid))).unwrap();
    std::io::Write::write_all(&mut stdout, b"appended\n").unwrap();
    for name in ["", "stdout", "stderr"] {
        let meta = std::fs::metadata(sandbox.path().join(name)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{name:?}");
    }
    assert_eq!(
        std::fs::read_to_string(sandbox.path().join("stdout")).unwrap(),
        "earlier\nappended\n"
    );
}
