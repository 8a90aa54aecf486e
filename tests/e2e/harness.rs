//! Starting and stopping real `cairn` processes, and waiting on what they log.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// How long any single wait in these tests may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub fn cairn_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cairn")
}

/// A guest module built by `scripts/build-guests`.
pub fn guest(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
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

/// A daemon process logging to a file; killed with its process group on drop.
pub struct Daemon {
    child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(args: &[&str], log: PathBuf) -> Daemon {
        let file = std::fs::File::create(&log).expect("creating the log file");
        let child = Command::new(cairn_bin())
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

    /// Used by the capacity benchmark, which shares this harness.
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_for_log(&self, needle: &str) -> String {
        wait_for(&format!("{needle:?} in {}", self.log.display()), || {
            self.log_text()
                .lines()
                .find(|l| l.contains(needle))
                .map(str::to_owned)
        })
    }

    /// The address a daemon logged after `key=`, e.g. `address=127.0.0.1:4321`.
    pub fn wait_for_address(&self, key: &str) -> String {
        let line = self.wait_for_log(&format!("{key}="));
        let start = line.find(&format!("{key}=")).unwrap() + key.len() + 1;
        line[start..].split_whitespace().next().unwrap().to_owned()
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("signalling the daemon");
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("polling the daemon").is_none()
    }

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
    pub dir: tempfile::TempDir,
    pub master: Daemon,
    pub master_addr: String,
    pub agent: Daemon,
    pub agent_addr: String,
}

impl Cluster {
    pub fn start() -> Cluster {
        Self::start_with(&[])
    }

    /// A cluster whose master gets extra flags.
    pub fn start_with(master_flags: &[&str]) -> Cluster {
        Self::start_with_flags(master_flags, &[])
    }

    /// A cluster whose master and agent get extra flags.
    pub fn start_with_flags(master_flags: &[&str], agent_flags: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let (master, master_addr) = start_master_with(dir.path(), "127.0.0.1:0", master_flags);
        let agent = start_agent_with(dir.path(), &master_addr, agent_flags);
        let agent_addr = agent.wait_for_address("http");
        agent.wait_for_log("registered with the master");
        Cluster {
            dir,
            master,
            master_addr,
            agent,
            agent_addr,
        }
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
        let mut cmd = Command::new(cairn_bin());
        cmd.arg("run")
            .arg("--master")
            .arg(&self.master_addr)
            .args(flags)
            .arg(module)
            .arg("--")
            .args(args);
        output_within(cmd, DEADLINE)
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
    fn drop(&mut self) {
        kill_executors(&self.work_dir());
    }
}

impl Cluster {
    /// A new agent on this cluster's work dir (after the old one was killed), with
    /// extra flags; not yet registered.
    pub async fn restart_agent(&self, flags: &[&str]) -> Daemon {
        let (dir, master) = (self.dir.path().to_owned(), self.master_addr.clone());
        let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
        blocking(move || {
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            start_agent_with(&dir, &master, &flags)
        })
        .await
    }

    /// A new master on this cluster's data dir and address (after the old one was
    /// killed).
    pub async fn restart_master(&self) -> Daemon {
        let (dir, addr) = (self.dir.path().to_owned(), self.master_addr.clone());
        blocking(move || start_master(&dir, &addr).0).await
    }
}

/// Runs blocking harness code (waits on logs, HTTP GETs) from an async test.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

pub fn start_master(dir: &Path, listen: &str) -> (Daemon, String) {
    start_master_with(dir, listen, &[])
}

pub fn start_master_with(dir: &Path, listen: &str, flags: &[&str]) -> (Daemon, String) {
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
    let master = Daemon::start(&args, next_log(dir, "master"));
    let addr = master.wait_for_address("address");
    (master, addr)
}

pub fn start_agent(dir: &Path, master: &str) -> Daemon {
    start_agent_with(dir, master, &[])
}

/// An agent with extra flags after the test defaults.
pub fn start_agent_with(dir: &Path, master: &str, flags: &[&str]) -> Daemon {
    let work_dir = dir.join("agent");
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
        "cpus:2;mem:1024;disk:1024;ports:[31000-31100]",
        "--executor-recovery-timeout",
        "5s",
        "--heartbeat-interval",
        "200ms",
        "--status-update-retry-interval",
        "500ms",
    ];
    override_defaults(&mut args, flags);
    Daemon::start(&args, next_log(dir, "agent"))
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
pub fn find_files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
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
