use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

use nix::unistd::Uid;
use sha2::{Digest as _, Sha256};

use super::*;

/// A task's disk large enough for every test's URIs.
const DISK: u64 = 1 << 30;

pub(super) fn uri(value: &str, output: Option<&str>) -> Uri {
    Uri {
        value: value.into(),
        output_file: output.map(str::to_owned),
        ..Default::default()
    }
}

/// The user the tests run as (the agent's own: no switch).
pub(super) fn me() -> TaskUser {
    let name = nix::unistd::User::from_uid(Uid::effective())
        .unwrap()
        .unwrap()
        .name;
    crate::user::lookup(&name).unwrap()
}

/// `nobody`, switched to as a root agent switches to a task's user.
fn nobody() -> TaskUser {
    TaskUser {
        switch: true,
        ..crate::user::lookup("nobody").unwrap()
    }
}

pub(super) fn fetcher_in(dir: &Path, config: FetcherConfig) -> Fetcher {
    Fetcher::new(dir.join("cache"), config).expect("the fetcher starts")
}

/// What a sandbox holds, by name (links included, not followed).
pub(super) fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

async fn fetch(uris: &[Uri], sandbox: &Path, user: &TaskUser) -> Result<(), FetchError> {
    let fetcher = fetcher_in(sandbox.parent().unwrap(), FetcherConfig::default());
    fetch_all(uris, sandbox, &fetcher, false, user, DISK)
        .await
        .map(drop)
}

/// What a task's URIs bring counts against its disk: a URI past what the ones before
/// it left fails the task, and so does a cached copy too large to place.
#[tokio::test]
async fn a_task_s_uris_bring_no_more_than_its_disk() {
    let src = tempfile::tempdir().unwrap();
    let file = |name: &str| {
        let path = src.path().join(name);
        std::fs::write(&path, vec![b'x'; 400]).unwrap();
        uri(&format!("file://{}", path.display()), None)
    };
    let uris = [file("a"), file("b"), file("c")];
    let fetcher = fetcher_in(src.path(), FetcherConfig::default());
    let sandbox = tempfile::tempdir().unwrap();
    let err = fetch_all(&uris, sandbox.path(), &fetcher, false, &me(), 1000)
        .await
        .unwrap_err();
    let c = src.path().join("c");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot fetch file://{c}: {c} is larger than the 200 bytes left of the task's disk \
             of 1000 bytes (its URIs count against it)",
            c = c.display()
        )
    );
    assert_eq!(listing(sandbox.path()), vec!["a", "b"]);
    // The same three fit a disk of 1200.
    let roomy = tempfile::tempdir().unwrap();
    fetch_all(&uris, roomy.path(), &fetcher, false, &me(), 1200)
        .await
        .unwrap();
    // A cached copy is placed only if it fits, on either path to the sandbox.
    let cached = Uri {
        cache: Some(true),
        ..file("d")
    };
    let cached = std::slice::from_ref(&cached);
    fetch_all(cached, roomy.path(), &fetcher, false, &me(), DISK)
        .await
        .unwrap();
    let small = tempfile::tempdir().unwrap();
    let err = fetch_all(cached, small.path(), &fetcher, false, &me(), 300)
        .await
        .unwrap_err();
    let refused = format!(
        "cannot fetch {}: its 400 bytes are more than the 300 bytes left of the task's disk of \
         300 bytes (its URIs count against it)",
        cached[0].value
    );
    assert_eq!(err.to_string(), refused);
    let placement = fetcher.all_cached(cached, &me(), 300).unwrap();
    let err = placement.place(small.path(), false).unwrap_err();
    assert_eq!(err.to_string(), refused);
    assert_eq!(listing(small.path()), Vec::<String>::new());
}

#[tokio::test]
async fn file_uris_are_copied_into_the_sandbox() {
    let src = tempfile::tempdir().unwrap();
    let sandbox = tempfile::tempdir().unwrap();
    let file = src.path().join("app.wasm");
    std::fs::write(&file, b"\0asm").unwrap();
    let u = uri(&format!("file://{}", file.display()), None);
    let fetcher = fetcher_in(src.path(), FetcherConfig::default());
    fetch_all(&[u], sandbox.path(), &fetcher, false, &me(), DISK)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(sandbox.path().join("app.wasm")).unwrap(),
        b"\0asm"
    );
}

#[tokio::test]
async fn output_files_must_be_plain_relative_names() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = dir.path().join("sandbox");
    for name in ["../x", "/abs", "./x", "a/../../x", "a/./../x", ".."] {
        let err = fetch(&[uri("file:///etc/hostname", Some(name))], &sandbox, &me())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("output_file {name:?} must be a relative path inside the sandbox")
        );
    }
    assert!(!dir.path().join("x").exists() && !Path::new("/abs").exists());
    let err = fetch(&[uri("ftp://h/x", None)], &sandbox, &me())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "URI \"ftp://h/x\" has an unsupported scheme (file://, http:// and https:// are supported)"
    );
    let err = fetch(&[uri("file:///nonexistent/x.wasm", None)], &sandbox, &me())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot fetch file:///nonexistent/x.wasm: /nonexistent/x.wasm does not exist \
             (looked up as user {})",
            me().name
        )
    );
}

#[tokio::test]
async fn a_fetch_starts_from_an_empty_sandbox_and_never_writes_through_what_was_there() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("new");
    std::fs::write(&src, b"new").unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"untouched").unwrap();
    let sandbox = dir.path().join("sandbox");
    std::fs::create_dir_all(&sandbox).unwrap();
    // What an interrupted earlier attempt at this run could have left: a link at the
    // output's name, a link to a directory outside, a file.
    std::os::unix::fs::symlink(&victim, sandbox.join("out")).unwrap();
    std::os::unix::fs::symlink(dir.path(), sandbox.join("linked")).unwrap();
    std::fs::write(sandbox.join("plain"), b"old").unwrap();
    let source = format!("file://{}", src.display());
    fetch(&[uri(&source, Some("out"))], &sandbox, &me())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
    let out = sandbox.join("out").symlink_metadata().unwrap();
    assert!(out.is_file(), "the output is a file of its own");
    assert_eq!(std::fs::read(sandbox.join("out")).unwrap(), b"new");
    assert!(!sandbox.join("linked").exists() && !sandbox.join("plain").exists());
    assert!(
        dir.path().join("new").exists(),
        "the link's target survives"
    );
    // Within one fetch, an output that passes through another is refused.
    let err = fetch(
        &[uri(&source, Some("plain")), uri(&source, Some("plain/x"))],
        &sandbox,
        &me(),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "output_file \"plain/x\" passes through a file in the sandbox"
    );
    // A fresh name in a fresh subdirectory is fine.
    fetch(&[uri(&source, Some("real/sub/new"))], &sandbox, &me())
        .await
        .unwrap();
    assert_eq!(std::fs::read(sandbox.join("real/sub/new")).unwrap(), b"new");
}

#[tokio::test]
async fn two_uris_with_one_output_name_are_refused_before_any_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = dir.path().join("sandbox");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::write(&a, b"a").unwrap();
    std::fs::create_dir(&b).unwrap();
    std::fs::write(b.join("a"), b"b").unwrap();
    let (ua, ub) = (
        format!("file://{}", a.display()),
        format!("file://{}/a", b.display()),
    );
    let err = fetch(&[uri(&ua, None), uri(&ub, None)], &sandbox, &me())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("URIs {ua} and {ub} are both fetched to \"a\"; give one an output_file")
    );
    let err = fetch(&[uri(&ua, Some("x")), uri(&ub, Some("x"))], &sandbox, &me())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("both fetched to \"x\""), "{err}");
    assert_eq!(listing(&sandbox), Vec::<String>::new(), "nothing fetched");
    fetch(&[uri(&ua, None), uri(&ub, Some("b"))], &sandbox, &me())
        .await
        .unwrap();
    assert_eq!(listing(&sandbox), ["a", "b"]);
}

/// The distinct ids (real, effective, saved, filesystem) and groups of this
/// process's threads, as the kernel reports them; a reading thread that has not
/// quite ended yet is left out.
fn thread_credentials() -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(dir.join("status"));
        let Ok(status) = status else { continue }; // a thread that just ended
        if name.trim_end() == "cairn-fetch-as" {
            continue;
        }
        let ids = status
            .lines()
            .filter(|l| ["Uid:", "Gid:", "Groups:"].iter().any(|k| l.starts_with(k)))
            .collect::<Vec<_>>()
            .join(" ");
        seen.insert(ids);
    }
    seen
}

/// A root-only file in a directory everyone may enter: only its mode protects it.
fn root_only_file(dir: &Path) -> PathBuf {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, b"root only").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    secret
}

#[tokio::test]
async fn file_uris_are_read_as_the_task_user() {
    if !Uid::effective().is_root() {
        return; // Only root switches users; the tests run as root here.
    }
    let src = tempfile::tempdir().unwrap();
    let secret = root_only_file(src.path());
    assert_eq!(std::fs::metadata(&secret).unwrap().uid(), 0);
    let u = uri(&format!("file://{}", secret.display()), None);
    let sandbox = tempfile::tempdir().unwrap();
    let before = thread_credentials();
    let err = fetch(std::slice::from_ref(&u), sandbox.path(), &nobody())
        .await
        .unwrap_err();
    // Only the reading thread took nobody's identity, and it is gone.
    assert_eq!(thread_credentials(), before);
    assert_eq!(
        err.to_string(),
        format!(
            "cannot fetch {}: permission denied reading {} as user nobody",
            u.value,
            secret.display()
        )
    );
    assert_eq!(listing(sandbox.path()), Vec::<String>::new());
    // The same file, fetched for a task running as root.
    fetch(std::slice::from_ref(&u), sandbox.path(), &me())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(sandbox.path().join("secret")).unwrap(),
        b"root only"
    );
    // What nobody may read, nobody gets, as its own file.
    let public = src.path().join("public");
    std::fs::write(&public, b"for all").unwrap();
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644)).unwrap();
    let u = uri(&format!("file://{}", public.display()), None);
    let theirs = tempfile::tempdir().unwrap();
    fetch(&[u], theirs.path(), &nobody()).await.unwrap();
    let meta = std::fs::metadata(theirs.path().join("public")).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (nobody().uid, 0o644));
}

#[tokio::test]
async fn non_regular_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    for path in [fifo.as_path(), Path::new("/dev/zero"), dir.path()] {
        let u = uri(&format!("file://{}", path.display()), Some("out"));
        let err = fetch(&[u], &dir.path().join("sandbox"), &me())
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .ends_with(&format!("{} is not a regular file", path.display())),
            "{err}"
        );
    }
}

#[tokio::test]
async fn cached_uris_are_fetched_once_linked_or_copied_and_fetched_again_when_changed() {
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("app.wasm");
    std::fs::write(&file, b"\0asm-v1").unwrap();
    let fetcher = fetcher_in(src.path(), FetcherConfig::default());
    let u = Uri {
        cache: Some(true),
        ..uri(&format!("file://{}", file.display()), None)
    };
    let sandboxes: Vec<_> = (0..8).map(|_| tempfile::tempdir().unwrap()).collect();
    let user = me();
    // Eight tasks at once, one download.
    let fetched = futures::future::join_all(sandboxes.iter().map(|s| {
        fetch_all(
            std::slice::from_ref(&u),
            s.path(),
            &fetcher,
            true,
            &user,
            DISK,
        )
    }))
    .await;
    let digest: [u8; 32] = Sha256::digest(b"\0asm-v1").into();
    for (result, sandbox) in fetched.into_iter().zip(&sandboxes) {
        let cached = result.unwrap();
        let placed: Vec<(&str, [u8; 32])> =
            cached.iter().map(|f| (f.name.as_str(), f.sha256)).collect();
        assert_eq!(placed, vec![("app.wasm", digest)]);
        assert_eq!(std::fs::read(&cached[0].entry).unwrap(), b"\0asm-v1");
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
    assert!(
        fetcher
            .all_cached(std::slice::from_ref(&u), &user, DISK)
            .is_some()
    );
    fetch_all(
        std::slice::from_ref(&u),
        copy.path(),
        &fetcher,
        false,
        &user,
        DISK,
    )
    .await
    .unwrap();
    let placed = copy.path().join("app.wasm");
    assert!(placed.symlink_metadata().unwrap().is_file());
    assert_eq!(std::fs::read(&placed).unwrap(), b"\0asm-v1");
    // A cache entry changed on disk is refused when copied, and no copy is left.
    let entry = std::fs::read_dir(src.path().join("cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_file())
        .unwrap();
    std::fs::write(&entry, b"\0asm-tampered").unwrap();
    let refused = tempfile::tempdir().unwrap();
    let err = fetch_all(
        std::slice::from_ref(&u),
        refused.path(),
        &fetcher,
        false,
        &user,
        DISK,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .ends_with("the fetcher cache's copy no longer matches its digest; refusing it"),
        "{err}"
    );
    assert_eq!(listing(refused.path()), Vec::<String>::new());
    // ... and removed: the next task fetches the URI again, getting what it holds now.
    assert!(!entry.exists(), "the changed entry is removed");
    assert!(
        fetcher
            .all_cached(std::slice::from_ref(&u), &user, DISK)
            .is_none()
    );
    let again = tempfile::tempdir().unwrap();
    fetch_all(
        std::slice::from_ref(&u),
        again.path(),
        &fetcher,
        false,
        &user,
        DISK,
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read(again.path().join("app.wasm")).unwrap(),
        b"\0asm-v2"
    );
}

#[tokio::test]
async fn a_cached_file_is_not_handed_to_a_user_who_may_not_read_it() {
    if !Uid::effective().is_root() {
        return;
    }
    let src = tempfile::tempdir().unwrap();
    let secret = root_only_file(src.path());
    let fetcher = fetcher_in(src.path(), FetcherConfig::default());
    let u = Uri {
        cache: Some(true),
        ..uri(&format!("file://{}", secret.display()), None)
    };
    let (root, theirs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    fetch_all(
        std::slice::from_ref(&u),
        root.path(),
        &fetcher,
        false,
        &me(),
        DISK,
    )
    .await
    .unwrap();
    assert!(
        fetcher
            .all_cached(std::slice::from_ref(&u), &nobody(), DISK)
            .is_none()
    );
    let err = fetch_all(
        std::slice::from_ref(&u),
        theirs.path(),
        &fetcher,
        false,
        &nobody(),
        DISK,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().ends_with("as user nobody"), "{err}");
    assert_eq!(listing(theirs.path()), Vec::<String>::new());
}

#[tokio::test]
async fn a_failed_cached_fetch_is_not_remembered() {
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("late.wasm");
    let fetcher = fetcher_in(src.path(), FetcherConfig::default());
    let u = Uri {
        cache: Some(true),
        ..uri(&format!("file://{}", file.display()), None)
    };
    let sandbox = tempfile::tempdir().unwrap();
    let user = me();
    assert!(
        fetch_all(
            std::slice::from_ref(&u),
            sandbox.path(),
            &fetcher,
            true,
            &user,
            DISK
        )
        .await
        .is_err()
    );
    std::fs::write(&file, b"\0asm").unwrap();
    let cached = fetch_all(
        std::slice::from_ref(&u),
        sandbox.path(),
        &fetcher,
        true,
        &user,
        DISK,
    )
    .await
    .unwrap();
    assert_eq!(cached.len(), 1);
}

#[tokio::test]
async fn the_agent_s_own_process_files_are_never_fetched() {
    let src = tempfile::tempdir().unwrap();
    let secret = src.path().join("held-open");
    std::fs::write(&secret, b"the agent's").unwrap();
    // A file the agent holds open, reachable through /proc/self/fd by a thread of
    // the agent whatever its ids.
    let held = std::fs::File::open(&secret).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&held);
    for path in [
        format!("/proc/self/fd/{fd}"),
        format!("/proc/thread-self/fd/{fd}"),
    ] {
        let sandbox = tempfile::tempdir().unwrap();
        let err = fetch(
            &[uri(&format!("file://{path}"), Some("out"))],
            sandbox.path(),
            &nobody(),
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("cannot read {path} as user nobody")),
            "{err}"
        );
        assert_eq!(listing(sandbox.path()), Vec::<String>::new());
    }
    // procfs files that are not links: the agent's environment and memory.
    for path in [
        "/proc/self/environ",
        "/proc/self/cmdline",
        "/proc/self/status",
    ] {
        let sandbox = tempfile::tempdir().unwrap();
        let err = fetch(
            &[uri(&format!("file://{path}"), Some("out"))],
            sandbox.path(),
            &me(),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot fetch file://{path}: {path} is on procfs, which the fetcher does not read"
            )
        );
        assert_eq!(listing(sandbox.path()), Vec::<String>::new());
    }
}
