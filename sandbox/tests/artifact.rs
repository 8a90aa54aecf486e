//! Artifacts: a module compiled ahead of time (as the agent's compile step does) is
//! loaded by an executor's sandbox without compiling, once per process, and only
//! into an engine of the settings it was compiled under.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use cairn_sandbox::{CancelHandle, Exit, Sandbox, SandboxConfig, SandboxError};
use common::RunBlocking;
use sha2::Digest as _;

const EXIT_WITH_7: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 7))))"#;

fn sandbox() -> Arc<Sandbox> {
    Sandbox::new(SandboxConfig {
        max_instances: 8,
        ..Default::default()
    })
    .unwrap()
}

/// [memory hits, compiles, loads] of one engine.
fn counts(sandbox: &Sandbox, metered: bool) -> [u64; 3] {
    let s = sandbox.program_stats(metered);
    [
        s.memory_hits.load(Ordering::Relaxed),
        s.compiles.load(Ordering::Relaxed),
        s.loads.load(Ordering::Relaxed),
    ]
}

#[test]
fn an_artifact_compiled_ahead_of_time_runs_in_the_pooled_engine_and_is_loaded_once() {
    let bytes = wat::parse_str(EXIT_WITH_7).unwrap();
    let digest: [u8; 32] = sha2::Sha256::digest(&bytes).into();
    // The compile step's engine has no instance pool; the executor's has one.
    let artifact = cairn_sandbox::precompile(&SandboxConfig::default(), &bytes, false).unwrap();
    let sandbox = sandbox();
    for _ in 0..2 {
        // SAFETY: `artifact` is exactly what `precompile` returned above.
        let program = unsafe { sandbox.load(&digest, &artifact, false) }.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let outcome = sandbox
            .run_blocking(&program, &common::spec(&dir), &CancelHandle::default())
            .unwrap();
        assert_eq!(outcome.exit, Exit::Code(7));
    }
    assert_eq!(counts(&sandbox, false), [1, 0, 1]);
    assert!(sandbox.linked(&digest, false).is_some());
    assert!(sandbox.linked(&digest, true).is_none());
}

#[test]
fn an_artifact_loads_only_into_an_engine_of_its_own_settings() {
    let bytes = wat::parse_str(EXIT_WITH_7).unwrap();
    let digest: [u8; 32] = sha2::Sha256::digest(&bytes).into();
    let config = SandboxConfig::default();
    let plain = cairn_sandbox::precompile(&config, &bytes, false).unwrap();
    let sandbox = sandbox();
    // SAFETY: `plain` is what `precompile` returned; wasmtime refuses the settings.
    let err = unsafe { sandbox.load(&digest, &plain, true) }
        .err()
        .expect("a plain artifact in the metered engine")
        .to_string();
    assert!(err.contains("compiled artifact"), "{err}");
    // The fingerprints that name artifacts tell the two settings apart, and are stable.
    let (p, m) = (
        cairn_sandbox::fingerprint(&config, false).unwrap(),
        cairn_sandbox::fingerprint(&config, true).unwrap(),
    );
    assert_ne!(p, m);
    assert_eq!(p, cairn_sandbox::fingerprint(&config, false).unwrap());
    // Bytes that are no artifact at all.
    // SAFETY: wasmtime's header check refuses them before any code is mapped.
    let err = unsafe { sandbox.load(&digest, b"\x7fELF not an artifact", false) }
        .err()
        .unwrap();
    assert!(matches!(err, SandboxError::Invalid(_)), "{err}");
}

#[test]
fn the_compile_step_takes_only_binary_wasm_and_says_what_is_wrong() {
    let config = SandboxConfig::default();
    let text = cairn_sandbox::precompile(&config, EXIT_WITH_7.as_bytes(), false).unwrap_err();
    assert!(matches!(text, SandboxError::NotWasm(_)), "{text}");
    let truncated = cairn_sandbox::precompile(&config, b"\0asm\x01\0\0\0\x01", false).unwrap_err();
    assert!(matches!(truncated, SandboxError::Invalid(_)), "{truncated}");
}
