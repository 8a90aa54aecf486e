//! Each limit a task can hit, with inline modules: the run ends the way the task's
//! status will report it, and the sandbox keeps serving the next run.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cairn_sandbox::{CancelHandle, Exit, Limit, RunSpec, Sandbox, SandboxConfig, SandboxError};
use common::{RunBlocking, spec};

fn sandbox() -> Arc<Sandbox> {
    Sandbox::new(SandboxConfig {
        max_instances: 16,
        ..Default::default()
    })
    .unwrap()
}

fn run(sandbox: &Sandbox, wat: &str, spec: &RunSpec) -> cairn_sandbox::RunOutcome {
    let program = sandbox
        .compile(&wat::parse_str(wat).unwrap(), spec.fuel.is_some())
        .unwrap();
    sandbox
        .run_blocking(&program, spec, &CancelHandle::default())
        .unwrap()
}

const EXIT_WITH: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 3))))"#;

const SPIN: &str = r#"(module (func (export "_start") (loop (br 0))))"#;

const GROW_FOREVER: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop
      (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
      (br 0))))"#;

const WRITE_STDOUT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hi from wasm\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 13))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

#[test]
fn exit_status_and_stdout_reach_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox();
    assert_eq!(run(&sb, EXIT_WITH, &spec(&dir)).exit, Exit::Code(3));
    let out = run(&sb, WRITE_STDOUT, &spec(&dir));
    assert_eq!(out.exit, Exit::Code(0));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("stdout")).unwrap(),
        "hi from wasm\n"
    );
}

#[test]
fn an_infinite_loop_runs_out_of_fuel() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox();
    let mut s = spec(&dir);
    s.fuel = Some(1_000_000);
    let out = run(&sb, SPIN, &s);
    assert_eq!(out.exit, Exit::Limit(Limit::Fuel));
    assert_eq!(out.usage.fuel_consumed, 1_000_000);
    // The sandbox still runs the next module.
    assert_eq!(run(&sb, EXIT_WITH, &spec(&dir)).exit, Exit::Code(3));
}

#[test]
fn an_infinite_loop_without_fuel_meets_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox();
    let mut s = spec(&dir);
    s.timeout = Some(Duration::from_millis(200));
    let out = run(&sb, SPIN, &s);
    assert_eq!(out.exit, Exit::Limit(Limit::Time));
    assert!(out.usage.wall_time >= Duration::from_millis(200));
}

#[test]
fn unbounded_memory_growth_is_a_memory_limitation() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox();
    let out = run(&sb, GROW_FOREVER, &spec(&dir));
    assert_eq!(out.exit, Exit::Limit(Limit::Memory));
    assert_eq!(out.usage.peak_memory_bytes, 2 << 20);
}

#[test]
fn a_cancelled_run_reports_killed() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox();
    let program = sb.compile(&wat::parse_str(SPIN).unwrap(), false).unwrap();
    let cancel = CancelHandle::default();
    let killer = cancel.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let s = spec(&dir);
    let runner = {
        let sb = sb.clone();
        std::thread::spawn(move || {
            let _ = tx.send(());
            sb.run_blocking(&program, &s, &cancel).unwrap()
        })
    };
    rx.recv().unwrap();
    killer.cancel();
    assert_eq!(runner.join().unwrap().exit, Exit::Killed);
}

#[test]
fn bad_modules_are_refused_before_they_run() {
    let sb = sandbox();
    let not_wasm = sb.compile(b"(module)", false).err().unwrap();
    assert_eq!(
        not_wasm.to_string(),
        "not a WebAssembly module or component: the file does not start with the wasm magic bytes"
    );
    let truncated = sb.compile(b"\0asm\x01\0\0\0\x01", true).err().unwrap();
    assert!(matches!(truncated, SandboxError::Invalid(_)), "{truncated}");
    // A truncated component is invalid; an unknown wasm version is not wasm.
    let component = sb.compile(b"\0asm\x0d\0\x01\0\x07", false).err().unwrap();
    assert!(matches!(component, SandboxError::Invalid(_)), "{component}");
    let future = sb.compile(b"\0asm\x02\0\0\0", false).err().unwrap();
    assert!(matches!(future, SandboxError::NotWasm(_)), "{future}");
    // A component of the wrong world: neither a command nor a custom executor.
    let greeter = wat::parse_str(
        r#"(component
             (core module $m (func (export "greet")))
             (core instance $i (instantiate $m))
             (func (export "greet") (canon lift (core func $i "greet"))))"#,
    )
    .unwrap();
    let err = sb.compile(&greeter, false).err().unwrap();
    assert!(matches!(err, SandboxError::WrongWorld(_)), "{err}");
    assert!(err.to_string().contains("[greet]"), "{err}");
    // A component importing what the host does not provide cannot be linked.
    let importer = wat::parse_str(
        r#"(component
             (import "cairn:missiles/launch@1.0.0" (instance (export "fire" (func))))
             (core module $m (func (export "run")))
             (core instance $i (instantiate $m))
             (func (export "launch") (canon lift (core func $i "run")))
             (func (export "kill") (canon lift (core func $i "run")))
             (func (export "message") (canon lift (core func $i "run")))
             (func (export "shutdown") (canon lift (core func $i "run"))))"#,
    )
    .unwrap();
    let err = sb.compile(&importer, false).err().unwrap();
    assert!(matches!(err, SandboxError::Link(_)), "{err}");
    // Random bytes behind a valid header: an error, never a crash.
    let mut noise = b"\0asm\x01\0\0\0".to_vec();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..4096 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.push(x as u8);
    }
    assert!(matches!(
        sb.compile(&noise, false).err().unwrap(),
        SandboxError::Invalid(_)
    ));
    let unknown = wat::parse_str(
        r#"(module (import "env" "launch_missiles" (func)) (func (export "_start")))"#,
    )
    .unwrap();
    let err = sb.compile(&unknown, false).err().unwrap();
    assert!(matches!(err, SandboxError::Link(_)), "{err}");
    assert!(err.to_string().contains("env::launch_missiles"), "{err}");
    let reactor = wat::parse_str(r#"(module (func (export "_initialize")))"#).unwrap();
    assert!(matches!(
        sb.compile(&reactor, true).err().unwrap(),
        SandboxError::NotCommand
    ));
}

#[test]
fn the_guest_cannot_open_files_outside_its_sandbox() {
    // path_open on "../escape" relative to the preopened sandbox (fd 3) must fail.
    let wat = r#"(module
      (import "wasi_snapshot_preview1" "path_open"
        (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (data (i32.const 64) "../escape")
      (func (export "_start")
        (call $exit (call $open (i32.const 3) (i32.const 0) (i32.const 64) (i32.const 9)
                                (i32.const 1) (i64.const 0) (i64.const 0) (i32.const 0)
                                (i32.const 0)))))"#;
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox();
    let out = run(&sb, wat, &spec(&dir));
    // path_open's errno becomes the exit status; 0 would mean the file was created.
    assert!(
        matches!(out.exit, Exit::Code(errno) if errno != 0),
        "{:?}",
        out.exit
    );
    assert!(!dir.path().parent().unwrap().join("escape").exists());
}

/// Writes 64 KiB to stdout forever.
const STDOUT_FLOOD: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 65536))
    (loop $flood
      (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br $flood))))"#;

/// Creates `big` in its sandbox and writes 64 KiB to it forever, ignoring errors.
const FILE_FLOOD: &str = r#"(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 100) "big")
  (func (export "_start")
    (drop (call $open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 3)
      (i32.const 1) (i64.const 0x1ffffff) (i64.const 0x1ffffff) (i32.const 0) (i32.const 200)))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 65536))
    (loop $flood
      (drop (call $write (i32.load (i32.const 200)) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br $flood))))"#;

#[test]
fn a_stdout_flood_stops_at_the_disk_quota_exactly() {
    let sandbox = sandbox();
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(&dir);
    spec.disk_bytes = 1 << 20;
    let outcome = run(&sandbox, STDOUT_FLOOD, &spec);
    assert_eq!(outcome.exit, Exit::Limit(Limit::Disk));
    let written = std::fs::metadata(&spec.stdout).unwrap().len();
    assert!(
        written <= 1 << 20,
        "stdout holds {written} bytes, past the quota"
    );
    assert!(
        written >= (1 << 20) - 65536,
        "stdout holds only {written} bytes"
    );
    // The sandbox serves the next task.
    let outcome = run(
        &sandbox,
        EXIT_WITH,
        &crate::spec(&tempfile::tempdir().unwrap()),
    );
    assert_eq!(outcome.exit, Exit::Code(3));
}

#[test]
fn a_file_flood_in_the_sandbox_is_a_disk_limitation() {
    let sandbox = sandbox();
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(&dir);
    spec.disk_bytes = 4 << 20;
    let outcome = run(&sandbox, FILE_FLOOD, &spec);
    assert_eq!(outcome.exit, Exit::Limit(Limit::Disk));
    let big = std::fs::metadata(dir.path().join("big")).unwrap().len();
    assert!(big > 4 << 20, "the file was written: {big} bytes");
}

#[test]
fn infinite_recursion_is_a_trap_not_a_crash() {
    let sandbox = sandbox();
    let dir = tempfile::tempdir().unwrap();
    let recurse = r#"(module (memory (export "memory") 1)
      (func $down (param i32) (result i32) (call $down (i32.add (local.get 0) (i32.const 1))))
      (func (export "_start") (drop (call $down (i32.const 0)))))"#;
    let outcome = run(&sandbox, recurse, &spec(&dir));
    match &outcome.exit {
        Exit::Trap(message) => assert!(message.contains("call stack exhausted"), "{message}"),
        other => panic!("expected a stack overflow trap, got {other:?}"),
    }
    let outcome = run(&sandbox, EXIT_WITH, &spec(&tempfile::tempdir().unwrap()));
    assert_eq!(
        outcome.exit,
        Exit::Code(3),
        "the sandbox serves the next task"
    );
}

#[test]
fn a_fuel_budget_needs_a_metered_program_and_others_run_unmetered() {
    let sb = sandbox();
    let dir = tempfile::tempdir().unwrap();
    let bytes = wat::parse_str(EXIT_WITH).unwrap();
    let plain = sb.compile(&bytes, false).unwrap();
    let mut budgeted = spec(&dir);
    budgeted.fuel = Some(1_000_000);
    let err = sb
        .run_blocking(&plain, &budgeted, &CancelHandle::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("metering"), "{err}");
    let out = sb
        .run_blocking(&plain, &spec(&dir), &CancelHandle::default())
        .unwrap();
    assert_eq!(out.exit, Exit::Code(3));
    assert_eq!(
        out.usage.fuel_consumed, 0,
        "nothing metered, nothing counted"
    );
    let metered = sb.compile(&bytes, true).unwrap();
    let out = sb
        .run_blocking(&metered, &budgeted, &CancelHandle::default())
        .unwrap();
    assert_eq!(out.exit, Exit::Code(3));
    assert!(out.usage.fuel_consumed > 0);
}

/// Sleeps on one relative clock for `NS` nanoseconds, then exits 0.
fn sleeper(ns: u64) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    ;; subscription at 0: userdata 7, tag clock (0), clock id 1, timeout, relative
    (i64.store (i32.const 0) (i64.const 7))
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const {ns}))
    (if (i32.ne (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)) (i32.const 0))
      (then unreachable))
    ;; one event, for userdata 7
    (if (i32.ne (i32.load (i32.const 128)) (i32.const 1)) (then unreachable))
    (if (i64.ne (i64.load (i32.const 64)) (i64.const 7)) (then unreachable))))"#
    )
}

#[test]
fn a_guest_asleep_in_the_host_still_meets_its_deadline_and_its_kill() {
    let sandbox = sandbox();
    let dir = tempfile::tempdir().unwrap();
    // A short sleep wakes with its event.
    let out = run(&sandbox, &sleeper(20_000_000), &spec(&dir));
    assert_eq!(out.exit, Exit::Code(0));
    assert!(out.usage.wall_time >= Duration::from_millis(20));
    // "Forever" ends at the task's deadline.
    let mut bounded = spec(&dir);
    bounded.timeout = Some(Duration::from_millis(200));
    let out = run(&sandbox, &sleeper(u64::MAX), &bounded);
    assert_eq!(out.exit, Exit::Limit(Limit::Time));
    // And at a kill.
    let program = sandbox
        .compile(&wat::parse_str(sleeper(u64::MAX)).unwrap(), false)
        .unwrap();
    let cancel = CancelHandle::default();
    let killer = cancel.clone();
    let s = spec(&dir);
    let sb = sandbox.clone();
    let runner = std::thread::spawn(move || sb.run_blocking(&program, &s, &cancel).unwrap());
    killer.cancel();
    assert_eq!(runner.join().unwrap().exit, Exit::Killed);
}

#[test]
fn a_full_instance_pool_is_a_launch_failure_not_a_guest_trap() {
    let sb = Sandbox::new(SandboxConfig {
        max_instances: 1,
        ..Default::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let asleep = sb
        .compile(&wat::parse_str(sleeper(u64::MAX)).unwrap(), false)
        .unwrap();
    let cancel = CancelHandle::default();
    let (started_tx, started) = std::sync::mpsc::channel();
    let holder = {
        let (sb, s, cancel) = (sb.clone(), spec(&dir), cancel.clone());
        std::thread::spawn(move || {
            let _ = started_tx.send(());
            // The probe below may hold the one slot for a moment: take it once free.
            loop {
                match sb.run_blocking(&asleep, &s, &cancel) {
                    Err(e) if e.to_string().contains("cannot instantiate") => continue,
                    ended => return ended.unwrap(),
                }
            }
        })
    };
    started.recv().unwrap();
    let other = sb
        .compile(&wat::parse_str(EXIT_WITH).unwrap(), false)
        .unwrap();
    // The holder may not have taken its slot yet: try until the pool is full.
    let err = loop {
        match sb.run_blocking(&other, &spec(&dir), &CancelHandle::default()) {
            Err(e) => break e,
            Ok(out) => assert_eq!(out.exit, Exit::Code(3)),
        }
    };
    assert!(err.to_string().contains("cannot instantiate"), "{err}");
    cancel.cancel();
    assert_eq!(holder.join().unwrap().exit, Exit::Killed);
}

#[test]
fn a_link_left_in_place_of_stdout_is_never_followed() {
    let sb = sandbox();
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("created-by-the-host");
    std::os::unix::fs::symlink(&target, dir.path().join("stdout")).unwrap();
    let program = sb
        .compile(&wat::parse_str(WRITE_STDOUT).unwrap(), false)
        .unwrap();
    let err = sb
        .run_blocking(&program, &spec(&dir), &CancelHandle::default())
        .err()
        .unwrap();
    assert!(matches!(err, SandboxError::Setup(_)), "{err}");
    assert!(!target.exists(), "the host followed the guest's link");
}
