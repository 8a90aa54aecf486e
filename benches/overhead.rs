//! What fuel metering and epoch interruption cost a CPU-bound guest: the same loop run
//! with both (a task with a fuel budget), epochs only (any other task), and neither.
//!
//! ```text
//! cargo bench --workspace --profile dev --bench overhead
//! ```

use std::time::{Duration, Instant};

use cairn_sandbox::{CancelHandle, Exit, RunSpec, Sandbox, SandboxConfig};

/// A loop of integer work the optimiser cannot remove (its result is the exit code).
const BUSY: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (local $i i32) (local $acc i32)
    (loop $again
      (local.set $acc (i32.xor (i32.mul (local.get $acc) (i32.const 31)) (local.get $i)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const 400000000))))
    (call $exit (i32.and (local.get $acc) (i32.const 0)))))"#;

fn best_of(config: SandboxConfig, metered: bool, runs: usize) -> Duration {
    let sandbox = Sandbox::new(config).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let program = sandbox
        .compile(&wat::parse_str(BUSY).unwrap(), metered)
        .unwrap();
    (0..runs)
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            let spec = RunSpec {
                args: vec!["busy.wasm".into()],
                env: vec![],
                sandbox_dir: dir.path().to_path_buf(),
                stdout: dir.path().join("stdout"),
                stderr: dir.path().join("stderr"),
                memory_bytes: 1 << 20,
                fuel: metered.then_some(u64::MAX),
                timeout: None,
                disk_bytes: 1 << 20,
            };
            let started = Instant::now();
            let outcome = rt
                .block_on(sandbox.run(&program, &spec, &CancelHandle::default()))
                .unwrap();
            assert_eq!(outcome.exit, Exit::Code(0));
            started.elapsed()
        })
        .min()
        .unwrap()
}

fn main() {
    let runs = 5;
    let neither = best_of(
        SandboxConfig {
            epoch_interruption: false,
            ..Default::default()
        },
        false,
        runs,
    );
    let epochs = best_of(SandboxConfig::default(), false, runs);
    let both = best_of(SandboxConfig::default(), true, runs);
    println!("400M-iteration loop, best of {runs}");
    println!("| engine | time | vs neither |");
    println!("|---|---:|---:|");
    for (name, t) in [
        ("neither fuel nor epochs", neither),
        ("epochs only", epochs),
        ("fuel and epochs", both),
    ] {
        println!(
            "| {name} | {:.0} ms | {:.2}× |",
            t.as_secs_f64() * 1e3,
            t.as_secs_f64() / neither.as_secs_f64()
        );
    }
}
