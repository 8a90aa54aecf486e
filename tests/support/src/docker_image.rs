//! The local image Docker tests and benchmarks run: the engine here has no registry,
//! so it is imported from the host's static busybox.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::harness::text;

const TEST_IMAGE: &str = "cairn-test-busybox:2";

/// The local busybox image the tests run, imported once per test process if the
/// engine does not have it yet.
pub fn test_image() -> String {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let version = docker(&["version", "--format", "{{.Server.APIVersion}}"]);
            assert!(
                version.status.success(),
                "the Docker engine is not reachable, and these tests need it: {}",
                text(&version.stderr)
            );
            if !docker(&["image", "inspect", TEST_IMAGE]).status.success() {
                import_busybox();
            }
            TEST_IMAGE.to_owned()
        })
        .clone()
}

/// An image of one static busybox and the applets the tests use.
fn import_busybox() {
    let busybox = Path::new("/bin/busybox");
    // A dynamically linked busybox would find no libc in the image (ldd fails on a
    // static binary).
    let is_static = || {
        busybox.exists()
            && !Command::new("ldd")
                .arg(busybox)
                .output()
                .is_ok_and(|o| o.status.success())
    };
    if !is_static() {
        let out = Command::new("apt-get")
            .args(["install", "-y", "busybox-static"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .expect("running apt-get");
        assert!(
            out.status.success() && is_static(),
            "the Docker tests need a static /bin/busybox (apt-get install busybox-static): {}",
            text(&out.stderr)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(rootfs.join("tmp")).unwrap();
    std::fs::copy(busybox, bin.join("busybox")).unwrap();
    for applet in [
        "sh", "echo", "sleep", "cat", "ls", "true", "false", "env", "nc",
    ] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    let tar = dir.path().join("rootfs.tar");
    let (rootfs, tar) = (rootfs.to_str().unwrap(), tar.to_str().unwrap());
    must("tar", &["-C", rootfs, "-cf", tar, "."]);
    must(
        "docker",
        &["import", "-c", r#"CMD ["/bin/sh"]"#, tar, TEST_IMAGE],
    );
}

pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running docker {}: {e}", args.join(" ")))
}

fn must(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        text(&out.stderr)
    );
}
