//! How fast a task starts: from "the launch reaches the executor" to the task's exit,
//! for a task that does nothing, so the time is all start-up and tear-down.
//!
//! - wasm: a cached module (the compile cache's in-memory hit), instantiated from its
//!   `InstancePre` in the pooling allocator, run to `_start`'s return, with its WASI
//!   context and stdout/stderr files in a sandbox directory, as the executor does;
//! - native: fork/exec of an equivalent static binary (`int main(){return 0;}`), bare,
//!   and through Cairn's native containerizer: its own cgroup (cpu, memory, pids
//!   limits), stdout/stderr in the sandbox, waited for, the cgroup removed;
//! - docker: `docker run --rm --network none` of a local image holding that binary.
//!
//! ```text
//! cargo bench --workspace --profile dev --bench start
//! ```

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_agent::containerizer::native::NativeContainerizer;
use cairn_agent::containerizer::{Containerizer, LaunchSpec};
use cairn_api::v1::{CommandInfo, TaskId, TaskInfo};
use cairn_sandbox::{CancelHandle, Exit, RunSpec, Sandbox, SandboxConfig};

const EMPTY: &str = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;
const IMAGE: &str = "cairn-bench-true:latest";

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (at(0.50), at(0.99))
}

fn row(what: &str, runs: usize, samples: Vec<Duration>) {
    let (p50, p99) = percentiles(samples);
    println!(
        "| {what} | {runs} | {:.1} µs | {:.1} µs |",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
}

/// Times `runs` runs of a command to its exit, each of which must succeed.
fn time_command(runs: usize, command: impl Fn() -> Command) -> Vec<Duration> {
    (0..runs)
        .map(|_| {
            let mut cmd = command();
            let started = Instant::now();
            let status = cmd.stdout(Stdio::null()).status().unwrap();
            let elapsed = started.elapsed();
            assert!(status.success());
            elapsed
        })
        .collect()
}

/// Launches the binary `runs` times as the executor launches a native task, each in
/// a fresh cgroup under `cairn-bench-start`, timed from the launch to the end of `wait`
/// (exit seen, cgroup removed). Fails where cgroups cannot be made (not root, say).
fn in_cgroups(
    rt: &tokio::runtime::Runtime,
    work: &std::path::Path,
    binary: &std::path::Path,
    runs: usize,
) -> Result<Vec<Duration>, String> {
    let containerizer = NativeContainerizer::new("cairn-bench-start", &[]);
    let resources = cairn_api::Resources::parse("cpus:0.5;mem:64").unwrap();
    let samples = (0..runs)
        .map(|i| {
            let sandbox = work.join(format!("native-{i}"));
            std::fs::create_dir(&sandbox).unwrap();
            let task_id = format!("native-{i}");
            let spec = LaunchSpec {
                framework_id: "bench".into(),
                task: TaskInfo {
                    task_id: Some(TaskId {
                        value: task_id.clone(),
                    }),
                    resources: resources.to_proto(),
                    command: Some(CommandInfo {
                        shell: Some(false),
                        value: Some(binary.display().to_string()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                sandbox,
                programs: Vec::new(),
                // The binary timed may sit where only this user can read it.
                user: cairn_agent::user::current().unwrap(),
            };
            rt.block_on(async {
                let started = Instant::now();
                containerizer
                    .launch(&spec)
                    .await
                    .map_err(|e| e.to_string())?;
                let end = containerizer.wait(&task_id).await;
                let elapsed = started.elapsed();
                assert_eq!(end.state, cairn_api::v1::TaskState::TaskFinished, "{end:?}");
                Ok(elapsed)
            })
        })
        .collect::<Result<Vec<Duration>, String>>();
    // Each task's cgroup went with it; the empty parents stay (as an agent's do).
    remove_empty_cgroups("cairn-bench-start/bench");
    samples
}

/// Removes `relative` and its parents, empty by now, from every hierarchy (v1) or the
/// unified one (v2).
fn remove_empty_cgroups(relative: &str) {
    let root = std::path::Path::new("/sys/fs/cgroup");
    let hierarchies = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .chain([root.to_owned()]);
    for hierarchy in hierarchies {
        let mut dir = hierarchy.join(relative);
        while dir != hierarchy && std::fs::remove_dir(&dir).is_ok() {
            dir.pop();
        }
    }
}

fn main() {
    let work = tempfile::tempdir().unwrap();
    println!("| task start to exit | runs | p50 | p99 |");
    println!("|---|---:|---:|---:|");

    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bytes = wat::parse_str(EMPTY).unwrap();
    sandbox.compile(&bytes, false).unwrap(); // warm the cache, as a second task finds it
    let runs = 2000;
    let samples: Vec<Duration> = (0..runs)
        .map(|i| {
            let dir = work.path().join(format!("wasm-{i}"));
            std::fs::create_dir(&dir).unwrap();
            let spec = RunSpec {
                args: vec!["empty.wasm".into()],
                env: vec![],
                sandbox_dir: dir.clone(),
                stdout: dir.join("stdout"),
                stderr: dir.join("stderr"),
                memory_bytes: 1 << 20,
                fuel: None,
                timeout: Some(Duration::from_secs(10)),
                disk_bytes: 64 << 20,
            };
            let started = Instant::now();
            let program = sandbox.compile(&bytes, false).unwrap();
            let outcome = rt
                .block_on(sandbox.run(&program, &spec, &CancelHandle::default()))
                .unwrap();
            let elapsed = started.elapsed();
            assert_eq!(outcome.exit, Exit::Code(0));
            elapsed
        })
        .collect();
    row("wasm, cached module", runs, samples);

    let native = work.path().join("true");
    let source = work.path().join("true.c");
    std::fs::write(&source, "int main(void) { return 0; }\n").unwrap();
    let built = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&native)
        .arg(&source)
        .status()
        .unwrap();
    assert!(built.success(), "cc -static");
    let runs = 500;
    let samples = time_command(runs, || {
        let mut cmd = Command::new(&native);
        cmd.stdin(Stdio::null()).stderr(Stdio::null());
        cmd
    });
    row("native fork/exec, static binary", runs, samples);
    match in_cgroups(&rt, work.path(), &native, runs) {
        Ok(samples) => row(
            "native in its own cgroup (Cairn's containerizer)",
            runs,
            samples,
        ),
        Err(e) => println!("| native in its own cgroup | - | cannot launch here: {e} | |"),
    }

    let dockerfile = "FROM scratch\nCOPY true /true\nENTRYPOINT [\"/true\"]\n";
    std::fs::write(work.path().join("Dockerfile"), dockerfile).unwrap();
    let image = Command::new("docker")
        .args(["build", "-q", "-t", IMAGE])
        .arg(work.path())
        .stdout(Stdio::null())
        .status();
    if !image.is_ok_and(|s| s.success()) {
        println!("| docker run | - | docker is not available here | |");
        return;
    }
    let runs = 20;
    let samples = time_command(runs, || {
        let mut cmd = Command::new("docker");
        cmd.args(["run", "--rm", "--network", "none", IMAGE]);
        cmd
    });
    row("docker run --rm, same binary", runs, samples);
}
