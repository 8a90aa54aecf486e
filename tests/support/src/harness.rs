//! Starting and stopping real `cairn` processes, and waiting on what they log.
//!
//! The waits here poll with a deadline and block their thread: async tests run them
//! through [`blocking`] (or the `async` helpers built on it), off the runtime's workers.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// How long any single wait in these tests may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The `cairn` binary the daemons and `cairn run` are started from. Cargo tells only
/// the root package's integration tests and benches where it is, so they hand it in:
/// `Cairn::at(env!("CARGO_BIN_EXE_cairn"))`.
#[derive(Clone, Copy, Debug)]
pub struct Cairn(&'static str);

impl Cairn {
    pub const fn at(path: &'static str) -> Cairn {
        Cairn(path)
    }

    pub fn path(self) -> &'static Path {
        Path::new(self.0)
    }

    /// A command running this binary.
    pub fn command(self) -> Command {
        Command::new(self.0)
    }
}

/// The workspace's root directory (this crate is `tests/support` in it).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tests/support is two levels below the workspace root")
}

/// A guest module built by `scripts/build-guests`.
pub fn guest(name: &str) -> PathBuf {
    let path = workspace_root()
        .join("examples/build")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-guests first",
        path.display()
    );
    path
}

/// Polls `check` until it returns `Some`, failing the test at the deadline.
pub fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The first line of the file at `log` containing `needle`, waited for.
fn wait_for_line(log: &Path, needle: &str) -> String {
    wait_for(&format!("{needle:?} in {}", log.display()), || {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .find(|l| l.contains(needle))
            .map(str::to_owned)
    })
}

/// The value after `key=` in a log line, e.g. `address=127.0.0.1:4321`.
fn value_after(line: &str, key: &str) -> String {
    let start = line.find(&format!("{key}=")).unwrap() + key.len() + 1;
    line[start..].split_whitespace().next().unwrap().to_owned()
}

/// A daemon process logging to a file; killed with its process group on drop.
pub struct Daemon {
    child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(cairn: Cairn, args: &[&str], log: PathBuf) -> Daemon {
        // Tests speak HTTP to what they start (see `cairn_api::tls`).
        cairn_api::tls::install_default_provider();
        let file = std::fs::File::create(&log).expect("creating the log file");
        let child = cairn
            .command()
            .args(args)
            .env("CAIRN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .process_group(0)
            .spawn()
            .expect("starting cairn");
        Daemon { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_for_log(&self, needle: &str) -> String {
        wait_for_line(&self.log, needle)
    }

    /// The address a daemon logged after `key=`, e.g. `address=127.0.0.1:4321`.
    pub fn wait_for_address(&self, key: &str) -> String {
        value_after(&self.wait_for_log(&format!("{key}=")), key)
    }

    /// [`Daemon::wait_for_log`] for async tests: the wait runs off the runtime's workers.
    pub async fn logged(&self, needle: &str) -> String {
        let (log, needle) = (self.log.clone(), needle.to_owned());
        blocking(move || wait_for_line(&log, &needle)).await
    }

    /// [`Daemon::wait_for_address`] for async tests.
    pub async fn logged_address(&self, key: &str) -> String {
        value_after(&self.logged(&format!("{key}=")).await, key)
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("signalling the daemon");
    }

    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// How the daemon exited, if it has.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("polling the daemon")
    }

    /// SIGKILLs the daemon's process group and reaps the daemon (at once: nothing
    /// outlives SIGKILL, so the wait is for the kernel, not for an event).
    pub fn kill(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A stopped process must be continued before SIGKILL takes it down cleanly.
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGCONT);
        self.kill();
    }
}

/// A master and an agent on loopback, each with its own directory.
pub struct Cluster {
    pub cairn: Cairn,
    pub dir: tempfile::TempDir,
    pub master: Daemon,
    pub master_addr: String,
    pub agent: Daemon,
    pub agent_addr: String,
    /// The `--cgroups-root` the test gave its agent, if it named one: its teardown
    /// kills what is left there too.
    pub cgroups_root: Option<String>,
}

impl Cluster {
    pub fn start(cairn: Cairn) -> Cluster {
        Self::start_with(cairn, &[])
    }

    /// A cluster whose master gets extra flags.
    pub fn start_with(cairn: Cairn, master_flags: &[&str]) -> Cluster {
        Self::start_with_flags(cairn, master_flags, &[])
    }

    /// A cluster whose master and agent get extra flags.
    pub fn start_with_flags(cairn: Cairn, master_flags: &[&str], agent_flags: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        // Executors and tasks running as other users than root reach the agent's
        // socket and their sandboxes through it, as through `/var/lib/cairn`.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .unwrap();
        let (master, master_addr) =
            start_master_with(cairn, dir.path(), "127.0.0.1:0", master_flags);
        let agent = start_agent_with(cairn, dir.path(), &master_addr, agent_flags);
        let agent_addr = agent.wait_for_address("http");
        agent.wait_for_log("registered with the master");
        let at = agent_flags.iter().position(|f| *f == "--cgroups-root");
        let cgroups_root = at
            .and_then(|i| agent_flags.get(i + 1))
            .map(|r| r.to_string());
        Cluster {
            cairn,
            dir,
            master,
            master_addr,
            agent,
            agent_addr,
            cgroups_root,
        }
    }

    /// [`Cluster::start`] for async tests: the daemons' start-up is waited for off the
    /// runtime's workers.
    pub async fn start_async(cairn: Cairn) -> Cluster {
        Self::start_with_flags_async(cairn, &[], &[]).await
    }

    /// [`Cluster::start_with_flags`] for async tests.
    pub async fn start_with_flags_async(
        cairn: Cairn,
        master_flags: &[&str],
        agent_flags: &[&str],
    ) -> Cluster {
        let (master_flags, agent_flags) = (owned(master_flags), owned(agent_flags));
        blocking(move || {
            Cluster::start_with_flags(cairn, &borrowed(&master_flags), &borrowed(&agent_flags))
        })
        .await
    }

    pub fn work_dir(&self) -> PathBuf {
        self.dir.path().join("agent")
    }

    /// Runs `cairn run` against this cluster.
    pub fn run(&self, module: &Path, args: &[&str]) -> Output {
        self.run_with(module, &["--timeout", "30s"], args)
    }

    /// Runs `cairn run` with extra flags (`--mem`, `--timeout`, `--fuel`...).
    pub fn run_with(&self, module: &Path, flags: &[&str], args: &[&str]) -> Output {
        output_within(self.run_command(module, flags, args), DEADLINE)
    }

    /// [`Cluster::run`] for async tests: the command is awaited, not waited on.
    pub async fn run_async(&self, module: &Path, args: &[&str]) -> Output {
        let cmd = self.run_command(module, &["--timeout", "30s"], args);
        output_within_async(cmd, DEADLINE).await
    }

    /// The `cairn run` command line for a module against this cluster.
    pub fn run_command(&self, module: &Path, flags: &[&str], args: &[&str]) -> Command {
        let mut cmd = self.cairn.command();
        cmd.arg("run")
            .arg("--master")
            .arg(&self.master_addr)
            .args(flags)
            .arg(module)
            .arg("--")
            .args(args);
        cmd
    }

    /// Writes a module given in WAT into the cluster's directory.
    pub fn module(&self, name: &str, wat: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, wat::parse_str(wat).unwrap()).unwrap();
        path
    }

    /// Asserts that neither daemon logged a panic.
    pub fn assert_no_panics(&self) {
        for d in [&self.master, &self.agent] {
            assert!(
                !d.log_text().contains("panicked"),
                "a daemon panicked:\n{}",
                d.log_text()
            );
        }
    }
}

impl Drop for Cluster {
    /// Kills what the cluster's agent started: its executors, and every process
    /// left in its cgroups (native tasks outlive their executors by design).
    fn drop(&mut self) {
        kill_executors(&self.work_dir());
        kill_cgroup_tree(&cgroups_root_of(self.dir.path()));
        if let Some(root) = &self.cgroups_root {
            kill_cgroup_tree(root);
        }
    }
}

/// The cgroup root a test agent puts its executors and native tasks under unless
/// the test names its own: one per cluster (from its temp dir's name, so a
/// restarted agent gets the same), so its teardown can kill what is left there.
fn cgroups_root_of(dir: &Path) -> String {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("cluster");
    format!("cairn-test-{}", name.trim_start_matches('.'))
}

/// SIGKILLs every process in the cgroup `root` (in every hierarchy) and below, then
/// removes the cgroups, deepest first. Best effort: it runs as tests end.
pub fn kill_cgroup_tree(root: &str) {
    let mounts = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten();
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut stack: Vec<PathBuf> = mounts
        .map(|m| m.path().join(root))
        .chain([PathBuf::from("/sys/fs/cgroup").join(root)])
        .filter(|d| d.is_dir())
        .collect();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
        dirs.push(dir);
    }
    for dir in &dirs {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    // A killed process leaves its cgroup once it is reaped: a cleanup poll, bounded.
    for _ in 0..100 {
        dirs.retain(|dir| std::fs::remove_dir(dir).is_err() && dir.exists());
        if dirs.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Cluster {
    /// A new agent on this cluster's work dir (after the old one was killed), with
    /// extra flags; not yet registered.
    pub async fn restart_agent(&self, flags: &[&str]) -> Daemon {
        let (cairn, dir, master) = (
            self.cairn,
            self.dir.path().to_owned(),
            self.master_addr.clone(),
        );
        let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
        blocking(move || {
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            start_agent_with(cairn, &dir, &master, &flags)
        })
        .await
    }

    /// A new master on this cluster's data dir and address (after the old one was
    /// killed).
    pub async fn restart_master(&self) -> Daemon {
        let (cairn, dir, addr) = (
            self.cairn,
            self.dir.path().to_owned(),
            self.master_addr.clone(),
        );
        blocking(move || start_master(cairn, &dir, &addr).0).await
    }
}

/// Flags that can move to another thread.
fn owned(flags: &[&str]) -> Vec<String> {
    flags.iter().map(|f| f.to_string()).collect()
}

/// Flags as the start functions take them.
fn borrowed(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

/// Runs blocking harness code (waits on logs, HTTP GETs) from an async test.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

pub fn start_master(cairn: Cairn, dir: &Path, listen: &str) -> (Daemon, String) {
    start_master_with(cairn, dir, listen, &[])
}

pub fn start_master_with(
    cairn: Cairn,
    dir: &Path,
    listen: &str,
    flags: &[&str],
) -> (Daemon, String) {
    let data_dir = dir.join("master");
    let mut args = vec![
        "master",
        "--listen",
        listen,
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--allocation-interval",
        "200ms",
    ];
    override_defaults(&mut args, flags);
    let master = Daemon::start(cairn, &args, next_log(dir, "master"));
    let addr = master.wait_for_address("address");
    (master, addr)
}

/// What a test agent offers. The disk is nominal (nothing fills it): roomy enough
/// for the tasks that leave `disk` unnamed, charged 1 GB each.
pub const AGENT_RESOURCES: &str = "cpus:2;mem:1024;disk:65536;ports:[31000-31100]";

pub fn start_agent(cairn: Cairn, dir: &Path, master: &str) -> Daemon {
    start_agent_with(cairn, dir, master, &[])
}

/// An agent with extra flags after the test defaults.
pub fn start_agent_with(cairn: Cairn, dir: &Path, master: &str, flags: &[&str]) -> Daemon {
    let work_dir = dir.join("agent");
    let cgroups_root = cgroups_root_of(dir);
    let mut args = vec![
        "agent",
        "--master",
        master,
        "--listen",
        "127.0.0.1:0",
        "--hostname",
        "127.0.0.1",
        "--work-dir",
        work_dir.to_str().unwrap(),
        "--resources",
        AGENT_RESOURCES,
        "--executor-recovery-timeout",
        "5s",
        "--heartbeat-interval",
        "200ms",
        "--status-update-retry-interval",
        "500ms",
        // Most tests' frameworks name user root; the hostile-tenant tests start
        // agents with `--allow-root-tasks false`, the agent's own default.
        "--allow-root-tasks",
        "true",
        "--cgroups-root",
        &cgroups_root,
    ];
    override_defaults(&mut args, flags);
    Daemon::start(cairn, &args, next_log(dir, "agent"))
}

/// Appends the caller's flags; each one the defaults also set (a flag and its value)
/// replaces the default.
fn override_defaults<'a>(args: &mut Vec<&'a str>, flags: &[&'a str]) {
    for flag in flags.iter().filter(|f| f.starts_with("--")) {
        if let Some(at) = args.iter().position(|a| a == flag) {
            args.drain(at..at + 2);
        }
    }
    args.extend_from_slice(flags);
}

/// `<name>-1.log`, `<name>-2.log`, ...: a restarted daemon gets a log of its own.
fn next_log(dir: &Path, name: &str) -> PathBuf {
    (1..)
        .map(|n| dir.join(format!("{name}-{n}.log")))
        .find(|p| !p.exists())
        .unwrap()
}

/// Kills every executor an agent started, found through the pid files it keeps.
pub fn kill_executors(work_dir: &Path) {
    for pid_file in find_files(work_dir, "pid") {
        if let Ok(pid) = std::fs::read_to_string(&pid_file)
            .unwrap_or_default()
            .trim()
            .parse::<i32>()
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Every file called `name` under `dir`.
/// The task a run's sandbox (`.../tasks/<task>/runs/<container>`) belongs to.
pub fn sandbox_task(sandbox: &Path) -> Option<&str> {
    let runs = sandbox.parent()?;
    if runs.file_name()? != "runs" {
        return None;
    }
    let task = runs.parent()?;
    (task.parent()?.file_name()? == "tasks").then_some(task.file_name()?.to_str()?)
}

/// Whether `file` sits directly in a sandbox of a run of `task`.
pub fn in_sandbox_of(file: &Path, task: &str) -> bool {
    file.parent().and_then(sandbox_task) == Some(task)
}

/// Every file called `name` beneath `dir`. Links are not followed: a task's sandbox
/// may hold any link (`proc -> /proc/self/root` would loop forever).
pub fn find_files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(find_files(&path, name));
        } else if path.file_name().is_some_and(|n| n == name) {
            out.push(path);
        }
    }
    out
}

/// Runs a command to completion, killing it if it outlives `limit`.
pub fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting cairn");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("waiting for cairn"),
        Err(_) => {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            panic!("`cairn` did not finish within {limit:?}");
        }
    }
}

/// [`output_within`] for async tests: the command is awaited (killed if it outlives
/// `limit`), so no thread of the runtime blocks on it.
pub async fn output_within_async(cmd: Command, limit: Duration) -> Output {
    let mut cmd = tokio::process::Command::from(cmd);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting cairn");
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(out) => out.expect("waiting for cairn"),
        // Dropping the child's future killed it.
        Err(_) => panic!("`cairn` did not finish within {limit:?}"),
    }
}

/// A task's states as a framework saw them, each once, with TASK_STARTING left out:
/// the executor reports it only for a launch still under way after a few
/// milliseconds (a compile, say), so whether it shows depends on the machine. Where it
/// shows, it must come before everything else.
pub fn launch_states<S: AsRef<str>>(states: &[S]) -> Vec<String> {
    let states: Vec<&str> = states.iter().map(AsRef::as_ref).collect();
    if let Some(last_starting) = states.iter().rposition(|s| *s == "TASK_STARTING") {
        assert!(
            states[..last_starting]
                .iter()
                .all(|s| *s == "TASK_STARTING"),
            "TASK_STARTING after another state: {states:?}"
        );
    }
    let mut out: Vec<String> = Vec::new();
    for s in states.into_iter().filter(|s| *s != "TASK_STARTING") {
        if out.last().map(String::as_str) != Some(s) {
            out.push(s.to_owned());
        }
    }
    out
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// GETs a JSON document from a daemon's HTTP API.
pub fn get_json(addr: &str, path: &str) -> serde_json::Value {
    let url = format!("http://{addr}{path}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        reqwest::get(&url)
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
    })
}
