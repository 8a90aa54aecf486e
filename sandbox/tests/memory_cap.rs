//! A task's `mem` caps its linear memory whatever its allocator does: each growth
//! past the cap is refused (`memory.grow` returns -1, malloc NULL), and a guest that
//! then fails, by a failing exit, an error from `wasi:cli/run` or a trap, ends as a
//! memory limitation (Mesos' REASON_CONTAINER_LIMITATION_MEMORY).

mod common;

use std::sync::Arc;

use cairn_sandbox::{CancelHandle, Exit, Limit, RunOutcome, Sandbox, SandboxConfig};
use common::{RunBlocking, spec};

const MIB: usize = 1 << 20;
const PAGE: usize = 64 << 10;
/// The cap every run here has.
const CAP: usize = 8 * MIB;

fn run(wat: &str) -> RunOutcome {
    let sandbox: Arc<Sandbox> = Sandbox::new(SandboxConfig {
        max_instances: 4,
        ..Default::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(&dir);
    spec.memory_bytes = CAP;
    let program = sandbox
        .compile(&wat::parse_str(wat).unwrap(), false)
        .unwrap();
    sandbox
        .run_blocking(&program, &spec, &CancelHandle::default())
        .unwrap()
}

/// What wasi-libc's malloc does for large blocks: `sbrk` 1 MiB (16 pages) with
/// `memory.grow`, then the program fills the block; `on_failure` runs when the
/// growth is refused. Its memory starts at 2 pages, declared `limits`.
fn allocator(limits: &str, on_failure: &str) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") {limits})
  (func (export "_start")
    (local $old i32)
    (loop $more
      (local.set $old (memory.grow (i32.const 16)))
      (if (i32.eq (local.get $old) (i32.const -1)) (then {on_failure}))
      (memory.fill (i32.shl (local.get $old) (i32.const 16)) (i32.const 0xa5) (i32.const {MIB}))
      (br $more))))"#
    )
}

/// Initial pages plus the most whole MiB that fit in the cap: where an allocator
/// growing 1 MiB at a time stops.
const PEAK_UNDER_CAP: usize = 2 * PAGE + (CAP - 2 * PAGE) / MIB * MIB;

#[test]
fn a_guest_exiting_non_zero_after_malloc_failed_is_a_memory_limitation() {
    let out = run(&allocator("2", "(call $exit (i32.const 1))"));
    assert_eq!(out.exit, Exit::Limit(Limit::Memory));
    assert_eq!(out.usage.peak_memory_bytes as usize, PEAK_UNDER_CAP);
    assert!(out.usage.peak_memory_bytes as usize <= CAP);
}

#[test]
fn a_guest_trapping_after_malloc_failed_is_a_memory_limitation() {
    let out = run(&allocator("2", "unreachable"));
    assert_eq!(out.exit, Exit::Limit(Limit::Memory));
    assert_eq!(out.usage.peak_memory_bytes as usize, PEAK_UNDER_CAP);
}

#[test]
fn a_guest_that_copes_with_a_refused_growth_finishes() {
    let out = run(&allocator("2", "return"));
    assert_eq!(out.exit, Exit::Code(0));
    assert_eq!(out.usage.peak_memory_bytes as usize, PEAK_UNDER_CAP);
}

#[test]
fn one_growth_past_what_wasm32_addresses_is_refused_as_past_the_cap() {
    // 65536 more pages is 4 GiB: more than a 32-bit memory can hold, and than `mem`.
    let wat = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 2)
  (func (export "_start")
    (if (i32.eq (memory.grow (i32.const 65536)) (i32.const -1))
      (then (call $exit (i32.const 1))))))"#;
    let out = run(wat);
    assert_eq!(out.exit, Exit::Limit(Limit::Memory));
    assert_eq!(out.usage.peak_memory_bytes as usize, 2 * PAGE);
}

#[test]
fn the_maximum_a_module_declares_below_the_cap_is_its_own_failure() {
    // 32 pages (2 MiB): the second MiB does not fit; the cap was never reached.
    let out = run(&allocator("2 32", "(call $exit (i32.const 1))"));
    assert_eq!(out.exit, Exit::Code(1));
    assert_eq!(out.usage.peak_memory_bytes as usize, 2 * PAGE + MIB);
}

#[test]
fn a_p2_command_returning_its_error_after_a_refused_growth_is_a_memory_limitation() {
    // `wasi:cli/run` returning `err` is exit status 1.
    let wat = r#"(component
  (core module $m
    (memory 2)
    (func (export "run") (result i32)
      (loop $more
        (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1))
          (then (return (i32.const 1))))
        (br $more))
      (i32.const 0)))
  (core instance $i (instantiate $m))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $cli (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $cli)))"#;
    let out = run(wat);
    assert_eq!(out.exit, Exit::Limit(Limit::Memory));
    assert!(out.usage.peak_memory_bytes as usize <= CAP);
    assert!(out.usage.peak_memory_bytes as usize > CAP - MIB);
}
