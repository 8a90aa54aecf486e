//! Every kind of link and race a tenant can set up in its sandbox, against
//! [`SandboxDir`]: nothing is followed, nothing outside is read, created, written or
//! given away.

use std::os::unix::fs::{MetadataExt, symlink};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

/// A sandbox and a directory outside it holding `secret` ("host secret").
struct Fixture {
    sandbox: tempfile::TempDir,
    outside: tempfile::TempDir,
    dir: SandboxDir,
}

impl Fixture {
    fn new() -> Self {
        let sandbox = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "host secret").unwrap();
        let dir = SandboxDir::open(sandbox.path()).unwrap();
        Self {
            sandbox,
            outside,
            dir,
        }
    }

    fn inside(&self, rel: &str) -> PathBuf {
        self.sandbox.path().join(rel)
    }

    fn secret(&self) -> PathBuf {
        self.outside.path().join("secret")
    }

    fn outside_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.outside.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn p(s: &str) -> &Path {
    Path::new(s)
}

#[track_caller]
fn assert_link(result: Result<impl std::fmt::Debug>) {
    match result {
        Err(SandboxDirError::Link { .. }) => {}
        other => panic!("expected a refused link, got {other:?}"),
    }
}

#[test]
fn a_mount_inside_the_sandbox_is_not_crossed() {
    let f = Fixture::new();
    std::fs::create_dir(f.inside("mnt")).unwrap();
    // A host directory bound into the sandbox (needs CAP_SYS_ADMIN, which the tests
    // have as root here; without it there is no mount to cross).
    let bound = nix::mount::mount(
        Some(f.outside.path()),
        &f.inside("mnt"),
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    );
    if bound.is_err() {
        assert!(
            !nix::unistd::geteuid().is_root(),
            "root cannot bind: {bound:?}"
        );
        return;
    }
    let read = f.dir.open_file(p("mnt/secret"));
    let _ = nix::mount::umount(&f.inside("mnt"));
    match read {
        Err(SandboxDirError::NotBeneath { .. }) => {}
        other => panic!("expected the mount refused, got {other:?}"),
    }
}

#[test]
fn a_symlink_to_an_absolute_path_outside_is_refused() {
    let f = Fixture::new();
    symlink(f.secret(), f.inside("passwd")).unwrap();
    assert_link(f.dir.open_file(p("passwd")));
    assert_link(f.dir.read(p("passwd"), 0, 100));
    assert_link(f.dir.append(p("passwd"), 0o644));
    assert_link(f.dir.touch(p("passwd"), 0o644));
    assert_eq!(std::fs::read_to_string(f.secret()).unwrap(), "host secret");
    let err = f.dir.open_file(p("passwd")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "passwd is, or passes through, a symbolic link; links in a sandbox are never followed"
    );
}

#[test]
fn a_relative_symlink_climbing_out_with_dot_dot_is_refused() {
    let f = Fixture::new();
    let up = format!(
        "../{}/secret",
        f.outside.path().file_name().unwrap().to_str().unwrap()
    );
    symlink(&up, f.inside("up")).unwrap();
    assert!(f.inside("up").exists(), "the link does reach the secret");
    assert_link(f.dir.open_file(p("up")));
    assert_link(f.dir.append(p("up"), 0o644));
    assert_eq!(std::fs::read_to_string(f.secret()).unwrap(), "host secret");
}

#[test]
fn a_symlink_on_the_way_is_refused_for_every_operation() {
    let f = Fixture::new();
    symlink(f.outside.path(), f.inside("d")).unwrap();
    assert_link(f.dir.open_file(p("d/secret")));
    assert_link(f.dir.metadata(p("d/secret")));
    assert_link(f.dir.open_dir(p("d")));
    assert_link(f.dir.create_new(p("d/new"), 0o644));
    assert_link(f.dir.append(p("d/new"), 0o644));
    assert_link(f.dir.touch(p("d/new"), 0o644));
    assert_link(f.dir.create_dir_all(p("d/sub")));
    assert_eq!(f.outside_names(), ["secret"]);
}

#[test]
fn a_symlink_to_a_file_inside_the_sandbox_is_refused_too() {
    let f = Fixture::new();
    std::fs::write(f.inside("real"), "inside").unwrap();
    symlink("real", f.inside("alias")).unwrap();
    assert_link(f.dir.open_file(p("alias")));
    assert_eq!(f.dir.read(p("real"), 0, 100).unwrap(), b"inside");
    // The link itself can be looked at, not through.
    assert!(f.dir.metadata(p("alias")).unwrap().file_type().is_symlink());
}

#[test]
fn creating_through_a_dangling_symlink_never_creates_its_target() {
    let f = Fixture::new();
    let target = f.outside.path().join("created-by-the-host");
    symlink(&target, f.inside("stdout")).unwrap();
    assert_link(f.dir.append(p("stdout"), 0o644));
    assert_link(f.dir.touch(p("stdout"), 0o644));
    match f.dir.create_new(p("stdout"), 0o644) {
        Err(SandboxDirError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::AlreadyExists => {}
        other => panic!("O_EXCL must refuse the link's name: {other:?}"),
    }
    assert!(!target.exists(), "the host created the link's target");
}

#[test]
fn a_hard_link_to_a_file_outside_is_neither_read_written_nor_given_away() {
    let f = Fixture::new();
    // Both temporary directories are on one filesystem, as a sandbox and /etc may be.
    std::fs::hard_link(f.secret(), f.inside("stdout")).unwrap();
    let owner = std::fs::metadata(f.secret()).unwrap().uid();
    for refused in [
        f.dir.append(p("stdout"), 0o644).map(drop),
        f.dir.open_file(p("stdout")).map(drop),
        f.dir.touch(p("stdout"), 0o644),
    ] {
        match refused {
            Err(SandboxDirError::HardLinked { links: 2, .. }) => {}
            other => panic!("a hard-linked file must be refused: {other:?}"),
        }
    }
    assert_eq!(std::fs::read_to_string(f.secret()).unwrap(), "host secret");
    assert_eq!(std::fs::metadata(f.secret()).unwrap().uid(), owner);
}

#[test]
fn magic_links_are_refused() {
    // procfs is full of magic links (`root`, `cwd`, `exe`, `fd/*`): a directory where
    // they exist shows that resolution refuses them, not only plain symlinks.
    // `/proc/self` is itself a link: open the process's directory by its pid.
    let proc_self =
        SandboxDir::open(&PathBuf::from(format!("/proc/{}", std::process::id()))).unwrap();
    assert_link(proc_self.open_file(p("root/etc/hostname")));
    assert_link(proc_self.open_file(p("exe")));
    assert_link(proc_self.open_dir(p("cwd")));
    // A tenant's symlink that goes through one is a symlink first.
    let f = Fixture::new();
    symlink("/proc/self/root/etc/hostname", f.inside("host")).unwrap();
    assert_link(f.dir.open_file(p("host")));
}

#[test]
fn a_directory_swapped_for_a_symlink_after_it_was_opened_is_not_followed() {
    let f = Fixture::new();
    std::fs::create_dir(f.inside("d")).unwrap();
    let d = f.dir.open_dir(p("d")).unwrap();
    std::fs::rename(f.inside("d"), f.inside("d-old")).unwrap();
    symlink(f.outside.path(), f.inside("d")).unwrap();
    // The handle is the directory it opened, wherever its name now points.
    d.append(p("stdout"), 0o644).unwrap();
    assert!(f.inside("d-old/stdout").is_file());
    assert_eq!(f.outside_names(), ["secret"]);
    assert_link(f.dir.open_dir(p("d")));
}

#[test]
fn racing_swaps_of_a_directory_and_a_link_never_reach_outside() {
    let f = Fixture::new();
    std::fs::create_dir(f.inside("d")).unwrap();
    symlink(f.outside.path(), f.inside("swap")).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (dir, done) = (f.dir.try_clone().unwrap(), done.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !done.load(Ordering::Relaxed) {
                // One atomic exchange: `d` is always a directory or a link, never absent.
                let flags = RenameFlags::RENAME_EXCHANGE;
                nix::fcntl::renameat2(&dir, "d", &dir, "swap", flags).unwrap();
                swaps += 1;
            }
            swaps
        })
    };
    let mut opened = 0;
    for i in 0..2000 {
        match f.dir.append(&PathBuf::from(format!("d/f{i}")), 0o644) {
            Ok(_) => opened += 1,
            Err(SandboxDirError::Link { .. }) => {}
            Err(e) => panic!("neither opened nor refused as a link: {e}"),
        }
    }
    done.store(true, Ordering::Relaxed);
    assert!(swapper.join().unwrap() > 0);
    assert_eq!(f.outside_names(), ["secret"], "after {opened} opens");
}

#[test]
fn a_fifo_in_place_of_stdout_is_refused_without_blocking() {
    let f = Fixture::new();
    nix::unistd::mkfifo(&f.inside("stdout"), Mode::from_bits_truncate(0o644)).unwrap();
    // No reader: opening for writing would block without O_NONBLOCK.
    for refused in [
        f.dir.append(p("stdout"), 0o644).map(drop),
        f.dir.touch(p("stdout"), 0o644),
        // No writer: opening for reading would block without O_NONBLOCK.
        f.dir.open_file(p("stdout")).map(drop),
    ] {
        assert!(
            matches!(refused, Err(SandboxDirError::NotRegular { .. })),
            "{refused:?}"
        );
    }
    // With a reader holding it open, the open succeeds and the type check refuses.
    let _reader = nix::fcntl::open(
        &f.inside("stdout"),
        OFlag::O_RDONLY | OFlag::O_NONBLOCK,
        Mode::empty(),
    )
    .unwrap();
    let refused = f.dir.append(p("stdout"), 0o644);
    assert!(
        matches!(refused, Err(SandboxDirError::NotRegular { .. })),
        "{refused:?}"
    );
}

#[test]
fn paths_that_are_not_plain_relative_names_are_refused() {
    let f = Fixture::new();
    for bad in ["", "/etc/passwd", "../x", "a/../../x", "./x", "a/.."] {
        let refused = f.dir.open_file(p(bad));
        assert!(
            matches!(refused, Err(SandboxDirError::NotBeneath { .. })),
            "{bad:?}: {refused:?}"
        );
    }
}

#[test]
fn files_and_directories_are_made_read_and_chowned_beneath() {
    let f = Fixture::new();
    let sub = f.dir.create_dir_all(p("a/b")).unwrap();
    assert_eq!(sub.path(), f.inside("a/b"));
    f.dir.create_dir_all(p("a/b")).unwrap();
    std::io::Write::write_all(
        &mut f.dir.create_new(p("a/b/f"), 0o600).unwrap(),
        b"0123456789",
    )
    .unwrap();
    assert!(f.dir.create_new(p("a/b/f"), 0o600).is_err());
    assert_eq!(f.dir.read(p("a/b/f"), 2, 3).unwrap(), b"234");
    assert_eq!(f.dir.read(p("a/b/f"), 8, 100).unwrap(), b"89");
    assert!(
        f.dir
            .read(p("a/b/missing"), 0, 1)
            .unwrap_err()
            .is_not_found()
    );
    f.dir.touch(p("a/b/t"), 0o644).unwrap();
    f.dir.touch(p("a/b/t"), 0o644).unwrap();
    assert_eq!(f.dir.metadata(p("a/b/t")).unwrap().len(), 0);
    // Root may give the directory away; anyone may "give" it to themselves.
    let (uid, gid) = if nix::unistd::geteuid().is_root() {
        (65534, 65534)
    } else {
        (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    };
    sub.chown(uid, gid).unwrap();
    let meta = std::fs::metadata(f.inside("a/b")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (uid, gid));
}

#[test]
fn a_walk_reports_links_without_following_them_and_every_hard_link() {
    let f = Fixture::new();
    f.dir.create_dir_all(p("a/b")).unwrap();
    std::fs::write(f.inside("a/b/file"), vec![1u8; 10_000]).unwrap();
    std::fs::hard_link(f.inside("a/b/file"), f.inside("a/twin")).unwrap();
    symlink("/", f.inside("root")).unwrap();
    symlink("a", f.inside("alias")).unwrap();
    let mut seen = Vec::new();
    f.dir
        .walk(|rel, entry| {
            seen.push((rel.to_owned(), entry.kind, entry.links));
            ControlFlow::Continue(())
        })
        .unwrap();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    let want = [
        ("a", EntryKind::Dir, 3),
        ("a/b", EntryKind::Dir, 2),
        ("a/b/file", EntryKind::File, 2),
        ("a/twin", EntryKind::File, 2),
        ("alias", EntryKind::Symlink, 1),
        ("root", EntryKind::Symlink, 1),
    ];
    let want: Vec<_> = want
        .iter()
        .map(|(r, k, l)| (PathBuf::from(r), *k, *l))
        .collect();
    assert_eq!(seen, want);
}

#[test]
fn a_walk_stops_when_asked() {
    let f = Fixture::new();
    for name in ["x", "y", "z"] {
        std::fs::write(f.inside(name), "").unwrap();
    }
    let mut visits = 0;
    f.dir
        .walk(|_, _| {
            visits += 1;
            ControlFlow::Break(())
        })
        .unwrap();
    assert_eq!(visits, 1);
}

#[test]
fn a_walk_refuses_a_tree_deeper_than_its_limit() {
    let f = Fixture::new();
    let deep = vec!["d"; MAX_DEPTH].join("/");
    f.dir.create_dir_all(p(&deep)).unwrap();
    let mut dirs = 0;
    f.dir
        .walk(|_, _| {
            dirs += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(dirs, MAX_DEPTH);
    f.dir.create_dir_all(&Path::new(&deep).join("d")).unwrap();
    let err = f.dir.walk(|_, _| ControlFlow::Continue(())).unwrap_err();
    assert!(matches!(err, SandboxDirError::TooDeep { .. }), "{err}");
}

#[test]
fn removing_a_sandbox_removes_its_links_never_their_targets() {
    let f = Fixture::new();
    let parent = SandboxDir::open(f.sandbox.path()).unwrap();
    let sandbox = parent.create_dir_all(p("run")).unwrap();
    sandbox.create_dir_all(p("a/b")).unwrap();
    std::fs::write(f.inside("run/a/b/file"), "tenant").unwrap();
    symlink(f.outside.path(), f.inside("run/outside-dir")).unwrap();
    symlink(f.secret(), f.inside("run/a/secret")).unwrap();
    std::fs::hard_link(f.secret(), f.inside("run/a/b/hard")).unwrap();
    nix::unistd::mkfifo(&f.inside("run/fifo"), Mode::from_bits_truncate(0o644)).unwrap();
    parent.remove_dir_all(p("run")).unwrap();
    assert!(!f.inside("run").exists());
    assert_eq!(f.outside_names(), ["secret"]);
    assert_eq!(std::fs::read_to_string(f.secret()).unwrap(), "host secret");
    // A link given as the name to remove is removed itself.
    symlink(f.outside.path(), f.inside("link")).unwrap();
    parent.remove_dir_all(p("link")).unwrap();
    assert!(std::fs::symlink_metadata(f.inside("link")).is_err());
    assert_eq!(f.outside_names(), ["secret"]);
}

#[test]
fn removing_a_tree_deeper_than_the_walk_limit_removes_it_all() {
    let f = Fixture::new();
    let deep = vec!["d"; MAX_DEPTH * 2 + 5].join("/");
    f.dir.create_dir_all(&Path::new("run").join(&deep)).unwrap();
    std::fs::write(f.inside("run").join(&deep).join("leaf"), "x").unwrap();
    f.dir.remove_dir_all(p("run")).unwrap();
    assert!(!f.inside("run").exists());
}
