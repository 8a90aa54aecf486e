//! Wasm tasks from `cairn run` to a terminal state, through a real master, agent and
//! executor process.

use cairn_test_support::harness::{Cluster, find_files, get_json, guest, sandbox_task, text};

use crate::CAIRN;

#[test]
fn hello_finishes_with_its_args_in_stdout_and_its_file_in_the_sandbox() {
    let cluster = Cluster::start(CAIRN);
    let out = cluster.run(&guest("hello"), &["a", "b"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "cairn run failed:\n{stderr}");
    assert!(stdout.contains("args: a b"), "stdout: {stdout}");
    // The states arrive in Mesos' order (STARTING only if the launch took a while:
    // this module is compiled on its first use).
    if let Some(starting) = stderr.find("TASK_STARTING") {
        assert!(
            starting < stderr.find("TASK_RUNNING").unwrap_or(0),
            "{stderr}"
        );
    }
    let order = ["TASK_RUNNING", "TASK_FINISHED"];
    let positions: Vec<usize> = order
        .iter()
        .map(|s| {
            stderr
                .find(s)
                .unwrap_or_else(|| panic!("no {s} in:\n{stderr}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "out of order:\n{stderr}"
    );
    let written = find_files(&cluster.work_dir(), "hello.txt");
    assert_eq!(
        written.len(),
        1,
        "expected one hello.txt in the sandbox: {written:?}"
    );
    let content = std::fs::read_to_string(&written[0]).unwrap();
    assert_eq!(content, "written by hello with args: a b\n");
    assert!(written[0].parent().unwrap().join("stdout").exists());
    // The agent and the master agree on who the agent is.
    let agent = get_json(&cluster.agent_addr, "/state");
    let master = get_json(&cluster.master_addr, "/state");
    assert_eq!(
        agent["id"], master["agents"][0]["id"],
        "{agent} vs {master}"
    );
    cluster.assert_no_panics();
}

#[test]
fn a_module_exiting_3_fails_with_the_status_in_the_message() {
    let cluster = Cluster::start(CAIRN);
    let out = cluster.run(&guest("exit"), &["3"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr:\n{stderr}");
    let failed = stderr
        .lines()
        .find(|l| l.contains("TASK_FAILED"))
        .unwrap_or_else(|| panic!("no TASK_FAILED in:\n{stderr}"));
    assert!(
        failed.ends_with(": Command exited with status 3"),
        "{failed}"
    );
    assert!(text(&out.stdout).contains("exiting with status 3"));
    cluster.assert_no_panics();
}

#[test]
fn the_master_frees_resources_when_tasks_end() {
    let cluster = Cluster::start(CAIRN);
    for _ in 0..2 {
        let out = cluster.run(&guest("hello"), &["again"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let state = get_json(&cluster.master_addr, "/state");
    let agent = &state["agents"][0];
    assert_eq!(agent["used_resources"], "", "resources still held: {state}");
    assert_eq!(
        state["completed_tasks"].as_array().unwrap().len(),
        2,
        "{state}"
    );
    assert_eq!(state["tasks"].as_array().unwrap().len(), 0, "{state}");
    // The same, in Mesos' v0 shape.
    let v0 = get_json(&cluster.master_addr, "/master/state");
    assert_eq!(v0["slaves"][0]["resources"]["cpus"], 2.0, "{v0}");
    assert_eq!(v0["slaves"][0]["used_resources"]["cpus"], 0.0, "{v0}");
    assert_eq!(v0["activated_slaves"], 1, "{v0}");
}

/// The line of `cairn run`'s output that reports the terminal state.
fn terminal_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.contains("TASK_FAILED") || l.contains("TASK_FINISHED"))
        .unwrap_or_else(|| panic!("no terminal state in:\n{stderr}"))
}

#[test]
fn limits_end_tasks_with_mesos_reasons() {
    let cluster = Cluster::start(CAIRN);
    let spin = cluster.module(
        "spin.wasm",
        r#"(module (func (export "_start") (loop (br 0))))"#,
    );
    let grow = cluster.module(
        "grow.wasm",
        r#"(module (memory (export "memory") 1)
             (func (export "_start")
               (loop (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
                     (br 0))))"#,
    );
    let flood = cluster.module(
        "flood.wasm",
        r#"(module
             (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
             (memory (export "memory") 2)
             (func (export "_start")
               (i32.store (i32.const 0) (i32.const 16))
               (i32.store (i32.const 4) (i32.const 65536))
               (loop (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))) (br 0))))"#,
    );
    let cases: [(&std::path::Path, &[&str], &str); 4] = [
        (
            &flood,
            &["--disk", "2"],
            "(REASON_CONTAINER_LIMITATION_DISK): Disk limit exceeded: the sandbox may hold 2097152 bytes, stdout and stderr included",
        ),
        (
            &spin,
            &["--timeout", "300ms"],
            "(REASON_MAX_COMPLETION_TIME_REACHED): Task exceeded its max_completion_time of 300ms",
        ),
        (
            &spin,
            &["--fuel", "5000000"],
            "(REASON_CONTAINER_LIMITATION_FUEL): Fuel exhausted: the task's budget was 5000000",
        ),
        (
            &grow,
            &["--mem", "4"],
            "(REASON_CONTAINER_LIMITATION_MEMORY): Memory limit exceeded: the task may use 4194304 bytes of linear memory",
        ),
    ];
    for (module, flags, expected) in cases {
        let out = cluster.run_with(module, flags, &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let line = terminal_line(&stderr);
        assert!(
            line.contains("TASK_FAILED") && line.ends_with(expected),
            "{line}"
        );
    }
    cluster.assert_no_panics();
}

#[test]
fn a_c_program_mallocing_past_its_mem_fails_as_a_memory_limitation() {
    let cluster = Cluster::start(CAIRN);
    let deadline = std::time::Duration::from_secs(30);
    let started = std::time::Instant::now();
    // `cairn run` returns once the task's terminal status has arrived.
    let out = cluster.run_with(&guest("malloc"), &["--mem", "64", "--timeout", "30s"], &[]);
    let elapsed = started.elapsed();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = terminal_line(&stderr);
    assert!(
        line.contains(
            "TASK_FAILED (REASON_CONTAINER_LIMITATION_MEMORY): Memory limit exceeded: \
             the task may use 67108864 bytes of linear memory"
        ),
        "{line}"
    );
    // malloc returned NULL below the cap, and the guest said how far it got.
    let got: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("malloc.c: malloc failed after "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of MiB in:\n{stderr}"));
    assert!((48..64).contains(&got), "got {got} MiB under a 64 MiB cap");
    assert!(
        elapsed < deadline / 2,
        "the task ended after {elapsed:?}, not well before its {deadline:?} deadline"
    );
    cluster.assert_no_panics();
}

#[test]
fn executors_of_an_agent_share_one_compiled_artifact_per_module_and_user() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let cluster = Cluster::start(CAIRN);
    let hello = guest("hello");
    // Each `cairn run` is a framework of its own, so each gets an executor of its own.
    for _ in 0..2 {
        let out = cluster.run(&hello, &["cached"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    // Compiled once, by the agent's compile step: one artifact, the agent's, read-only,
    // in a directory no one else may list.
    let dir = cluster.work_dir().join("artifacts");
    let artifacts: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    let artifact = std::fs::metadata(&artifacts[0]).unwrap();
    assert_eq!((artifact.uid(), artifact.mode() & 0o777), (0, 0o444));
    let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o777, 0o711);
    let key = cluster.work_dir().join("meta/cache.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the cache key is the agent's alone");
    cluster.assert_no_panics();
}

#[test]
fn the_agent_accounts_for_what_its_tasks_used_in_its_metrics() {
    let cluster = Cluster::start(CAIRN);
    // A fuel budget makes the run metered, so its fuel is counted.
    let flags = ["--timeout", "30s", "--fuel", "10000000000"];
    let out = cluster.run_with(&guest("hello"), &flags, &["counted"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let url = format!("http://{}/metrics", cluster.agent_addr);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = runtime.block_on(async { reqwest::get(&url).await.unwrap().text().await.unwrap() });
    let value = |name: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{body}"))
    };
    assert_eq!(
        value("cairn_agent_tasks_terminal_total{state=\"TASK_FINISHED\",reason=\"\"}"),
        1.0
    );
    assert!(
        value("cairn_agent_task_fuel_consumed_total") > 0.0,
        "{body}"
    );
    assert!(
        value("cairn_agent_task_peak_memory_bytes_max") >= 65536.0,
        "{body}"
    );
    assert!(
        value("cairn_agent_checkpoint_commits_total") >= 1.0,
        "{body}"
    );
    assert_eq!(value("cairn_agent_checkpoint_failures_total"), 0.0);
}

#[test]
fn sandbox_reads_never_follow_a_symlink_out_of_the_sandbox() {
    let cluster = Cluster::start(CAIRN);
    let out = cluster.run(&guest("hello"), &["linked"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The task is acknowledged and forgotten by now; its sandbox stays on disk.
    let hello_txt = find_files(&cluster.work_dir(), "hello.txt").pop().unwrap();
    let sandbox = hello_txt.parent().unwrap();
    // What a guest can do with WASI's path_symlink: a link to the agent's secrets.
    // (<work_dir>/frameworks/<fw>/executors/<ex>/tasks/<task>/runs/<container>)
    std::os::unix::fs::symlink(
        "../../../../../../../../meta/cache.key",
        sandbox.join("leak"),
    )
    .unwrap();
    let task_id = sandbox_task(sandbox).unwrap();
    let framework_id = sandbox
        .ancestors()
        .nth(6)
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    let url = format!(
        "http://{}/files/read?framework_id={framework_id}&task_id={task_id}&path=leak",
        cluster.agent_addr
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (code, body) = runtime.block_on(async {
        let r = reqwest::get(&url).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    assert!(cluster.work_dir().join("meta/cache.key").exists());
    assert!(
        sandbox.join("leak").exists(),
        "the link resolves to the key"
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("leak is, or passes through, a symbolic link"),
        "{body}"
    );
    // The real file next to it still reads.
    let ok = url.replace("path=leak", "path=hello.txt");
    let code = runtime.block_on(async { reqwest::get(&ok).await.unwrap().status().as_u16() });
    assert_eq!(code, 200);
}
