//! Bad input gets a clear one-line error and no daemon panics.

use cairn_test_support::harness::{
    Cluster, DEADLINE, Daemon, guest, output_within, text, wait_for,
};

use crate::CAIRN;

#[test]
fn a_file_that_is_not_wasm_fails_its_task_with_a_clear_message() {
    let cluster = Cluster::start(CAIRN);
    let file = cluster.dir.path().join("notes.wasm");
    std::fs::write(&file, "just some text\n").unwrap();
    let out = cluster.run(&file, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let failed = stderr
        .lines()
        .find(|l| l.contains("TASK_FAILED"))
        .expect(&stderr);
    assert!(
        failed.ends_with(
            "(REASON_CONTAINER_LAUNCH_FAILED): notes.wasm: not a WebAssembly module or component: \
             the file does not start with the wasm magic bytes"
        ),
        "{failed}"
    );
    cluster.assert_no_panics();
}

#[test]
fn a_module_importing_an_unknown_function_fails_at_link_time() {
    let cluster = Cluster::start(CAIRN);
    let module = wat::parse_str(
        r#"(module
             (import "env" "launch_missiles" (func))
             (func (export "_start") call 0))"#,
    )
    .unwrap();
    let file = cluster.dir.path().join("missiles.wasm");
    std::fs::write(&file, module).unwrap();
    let out = cluster.run(&file, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let failed = stderr
        .lines()
        .find(|l| l.contains("TASK_FAILED"))
        .expect(&stderr);
    assert!(
        failed.contains("missiles.wasm: cannot be linked: "),
        "{failed}"
    );
    assert!(failed.contains("env::launch_missiles"), "{failed}");
    // The executor that refused it still serves the next task.
    let again = cluster.run(&guest("hello"), &["still", "here"]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    cluster.assert_no_panics();
}

#[test]
fn resources_that_do_not_parse_stop_the_agent_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = CAIRN.command();
    cmd.args([
        "agent",
        "--master",
        "127.0.0.1:9",
        "--listen",
        "127.0.0.1:0",
    ])
    .arg("--work-dir")
    .arg(dir.path())
    .args(["--resources", "cpus:lots;mem:1024"]);
    let out = output_within(cmd, DEADLINE);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: cannot parse resources \"cpus:lots;mem:1024\": cpus value \"lots\" is not a number\n"
    );
}

#[test]
fn an_agent_with_no_master_says_so_in_one_line_and_keeps_retrying() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: bind one, then let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let master = format!("127.0.0.1:{port}");
    let mut agent = Daemon::start(
        CAIRN,
        &[
            "agent",
            "--master",
            &master,
            "--listen",
            "127.0.0.1:0",
            "--work-dir",
            dir.path().join("work").to_str().unwrap(),
        ],
        dir.path().join("agent.log"),
    );
    let line = agent.wait_for_log("cannot reach master");
    assert!(
        line.contains(&format!("cannot reach master at {master}: connect")),
        "{line}"
    );
    // It keeps retrying: a listener that now takes the master's port gets the agent's
    // next attempt, and the agent, still running, said so only once.
    let listener = std::net::TcpListener::bind(&master).unwrap();
    listener.set_nonblocking(true).unwrap();
    wait_for("the agent to try the master again", || {
        listener.accept().ok()
    });
    assert!(
        agent.is_running(),
        "the agent gave up:\n{}",
        agent.log_text()
    );
    let log = agent.log_text();
    assert_eq!(
        log.matches("cannot reach master").count(),
        1,
        "one line for the failure, not one per attempt:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}
