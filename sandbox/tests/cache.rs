//! The compile cache: a module is compiled once per agent, reused from memory and from
//! disk, and an artifact that was not written under the agent's key (or is corrupt) is
//! compiled again, never loaded.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use cairn_sandbox::{CacheConfig, CancelHandle, Exit, Sandbox, SandboxConfig};
use common::RunBlocking;

const EXIT_WITH_7: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 7))))"#;

fn sandbox(dir: &std::path::Path, key: &[u8]) -> Arc<Sandbox> {
    Sandbox::new(SandboxConfig {
        max_instances: 8,
        cache: Some(CacheConfig {
            dir: dir.to_owned(),
            key: key.to_vec(),
        }),
        ..Default::default()
    })
    .unwrap()
}

/// Compiles (through the cache) and runs the module; returns its exit status.
fn run(sandbox: &Sandbox, bytes: &[u8]) -> Exit {
    let dir = tempfile::tempdir().unwrap();
    let spec = common::spec(&dir);
    let program = sandbox.compile(bytes, false).unwrap();
    sandbox
        .run_blocking(&program, &spec, &CancelHandle::default())
        .unwrap()
        .exit
}

fn counts(sandbox: &Sandbox) -> [u64; 4] {
    let s = sandbox.cache_stats(false);
    [
        s.memory_hits.load(Ordering::Relaxed),
        s.disk_hits.load(Ordering::Relaxed),
        s.compiles.load(Ordering::Relaxed),
        s.rejected.load(Ordering::Relaxed),
    ]
}

fn artifacts(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect()
}

#[test]
fn a_module_is_compiled_once_then_reused_from_memory_and_from_disk() {
    let cache = tempfile::tempdir().unwrap();
    let bytes = wat::parse_str(EXIT_WITH_7).unwrap();
    let first = sandbox(cache.path(), b"the agent key, 32 bytes or more..");
    assert_eq!(run(&first, &bytes), Exit::Code(7));
    assert_eq!(run(&first, &bytes), Exit::Code(7));
    // [memory hits, disk hits, compiles, rejected]
    assert_eq!(counts(&first), [1, 0, 1, 0]);
    assert_eq!(artifacts(cache.path()).len(), 1);
    // Another executor of the same agent: straight from disk.
    let second = sandbox(cache.path(), b"the agent key, 32 bytes or more..");
    assert_eq!(run(&second, &bytes), Exit::Code(7));
    assert_eq!(counts(&second), [0, 1, 0, 0]);
}

#[test]
fn artifacts_not_written_under_the_key_or_damaged_are_compiled_again() {
    let cache = tempfile::tempdir().unwrap();
    let bytes = wat::parse_str(EXIT_WITH_7).unwrap();
    run(
        &sandbox(cache.path(), b"the agent key, 32 bytes or more.."),
        &bytes,
    );
    let path = artifacts(cache.path()).pop().unwrap();

    // Someone without the key (another agent, a tenant who found the directory).
    let stranger = sandbox(cache.path(), b"another key, also 32 bytes long..");
    assert_eq!(run(&stranger, &bytes), Exit::Code(7));
    assert_eq!(counts(&stranger), [0, 0, 1, 1]);

    // The stranger's compile replaced the file with one under its key; ours refuses
    // that and writes its own again. Then a flipped bit in the machine code.
    let ours = sandbox(cache.path(), b"the agent key, 32 bytes or more..");
    assert_eq!(run(&ours, &bytes), Exit::Code(7));
    assert_eq!(counts(&ours), [0, 0, 1, 1]);
    let mut artifact = std::fs::read(&path).unwrap();
    let at = artifact.len() / 2;
    artifact[at] ^= 0x01;
    std::fs::write(&path, &artifact).unwrap();
    let after = sandbox(cache.path(), b"the agent key, 32 bytes or more..");
    assert_eq!(run(&after, &bytes), Exit::Code(7));
    assert_eq!(counts(&after), [0, 0, 1, 1]);
    // A truncated file is refused the same way.
    std::fs::write(&path, b"short").unwrap();
    let truncated = sandbox(cache.path(), b"the agent key, 32 bytes or more..");
    assert_eq!(run(&truncated, &bytes), Exit::Code(7));
    assert_eq!(counts(&truncated), [0, 0, 1, 1]);
}

#[test]
fn a_short_key_turns_the_disk_cache_off() {
    let cache = tempfile::tempdir().unwrap();
    let bytes = wat::parse_str(EXIT_WITH_7).unwrap();
    let weak = sandbox(cache.path(), b"guessable");
    assert_eq!(run(&weak, &bytes), Exit::Code(7));
    assert!(
        std::fs::read_dir(cache.path()).unwrap().next().is_none(),
        "nothing is written under a key that could be guessed"
    );
}
