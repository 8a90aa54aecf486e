//! The compile step: the agent, not its executors, compiles every wasm program a task
//! runs, before the task reaches its executor. Each compile is `cairn compile` in a
//! process of its own (see `step`): a uid no task has (`--compile-uid`), no privileges
//! to regain, a cgroup bounding its memory, CPU and processes, and a deadline. A module built to make the
//! compiler take minutes or gigabytes fails its own task with the reason, and costs
//! no executor, no other tenant and not the agent. Steps take turns: two per user and
//! `--compile-max-steps` in all at once; a compile waits at most
//! `--compile-queue-timeout` for its turn, and its module is read only then (while
//! it waits, the agent holds its digest, not its bytes).
//!
//! Artifacts are kept per (module sha256, engine settings, user) in the agent's
//! artifacts directory (see `crate::artifact_file`): a module compiles once per user
//! and agent, however many tasks run it at once, and again only after an upgrade
//! changes the engine. Per user, so that nothing one user's task led to is ever loaded
//! by another user's executor. A module that does not compile
//! (invalid, or past the memory bound) fails at once the next time, remembered until
//! the agent restarts; one whose step ran out of time or was killed is tried again.
//! The directory is held to `--compile-cache-size`, least recently used first (see
//! `eviction`).

mod eviction;
mod source;
mod step;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use cairn_api::internal::CompiledProgram;
use tokio::sync::OnceCell;

use crate::artifact_file::{self, ArtifactOf};
use crate::fetcher::CachedFile;
use crate::process::CairnBinary;
use crate::user::TaskUser;
pub use step::StepError;

/// How much one compile may take, and as whom it runs (the agent's `--compile-*`
/// flags).
#[derive(Debug, Clone)]
pub struct CompileConfig {
    pub timeout: Duration,
    pub memory_bytes: u64,
    pub cpus: f64,
    /// The uid and gid of every compile step, which no task may have (see
    /// `crate::user::UserPolicy::compile_uid`).
    pub uid: u32,
    /// Compile steps running at once, all users together: each may take `memory_bytes`.
    pub max_steps: usize,
    /// How long a compile may wait for its turn before its task fails.
    pub queue_timeout: Duration,
    /// What the artifacts directory may hold before the least recently used go.
    pub cache_bytes: u64,
}

impl Default for CompileConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            memory_bytes: 1 << 30,
            cpus: 1.0,
            uid: crate::user::DEFAULT_COMPILE_UID,
            max_steps: default_max_steps(),
            queue_timeout: Duration::from_secs(300),
            cache_bytes: 4 << 30,
        }
    }
}

/// A program a task needs compiled: the file its command names, and whether its runs
/// have a fuel budget (metered code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramRef {
    pub name: String,
    pub metered: bool,
}

/// Known artifacts kept in memory at most; past it, they are found on disk again.
const MAX_REMEMBERED: usize = 1 << 16;

/// An artifact, or why its module did not compile.
type Outcome = Result<Artifact, Failure>;

/// Why a module did not compile; `remembered` when the same bytes would fail the same
/// way (not a deadline or a kill, which a busy machine may cause).
#[derive(Debug, Clone)]
struct Failure {
    why: String,
    remembered: bool,
}

#[derive(Debug, Clone)]
struct Artifact {
    file: String,
    sha256: [u8; 32],
    /// When a task last got it, in seconds since the epoch (see `eviction`).
    used: Arc<AtomicU64>,
}

impl Artifact {
    fn new(file: String, sha256: [u8; 32]) -> Self {
        let used = Arc::new(AtomicU64::new(now_secs()));
        Self { file, sha256, used }
    }

    fn last_used(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(self.used.load(Ordering::Relaxed))
    }
}

fn now_secs() -> u64 {
    let since = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH);
    since.map_or(0, |d| d.as_secs())
}

/// The compiles known, by what they are of: one cell per artifact.
type Known = Mutex<HashMap<ArtifactOf, Arc<OnceCell<Outcome>>>>;

/// The compile steps an agent runs at once by default: one per CPU, at least two.
pub fn default_max_steps() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

/// Where a program's bytes are, read only if it must be compiled, and only when its
/// step's turn comes: in the task's sandbox (the bytes must still have the digest
/// they had when the task was queued), or in the fetcher cache.
#[derive(Clone)]
enum Module {
    Sandbox { dir: PathBuf, owner: u32 },
    Cached(CachedFile),
}

impl Module {
    /// Its bytes, when its step's turn has come.
    async fn read(self, name: &str, sha256: &[u8; 32]) -> Result<Vec<u8>, String> {
        let (name, sha256) = (name.to_owned(), *sha256);
        match self {
            Module::Sandbox { dir, owner } => {
                blocking(move || source::in_sandbox_as_digested(&dir, &name, owner, &sha256)).await
            }
            Module::Cached(entry) => {
                let read = move || source::cache_entry(&name, &entry.entry, &entry.sha256);
                Ok(blocking(read).await?.bytes)
            }
        }
    }
}

/// The agent's compiler: its artifacts, and the compiles under way.
pub struct Compiler {
    dir: PathBuf,
    key: Vec<u8>,
    /// The engine fingerprints, plain and metered.
    fingerprints: [String; 2],
    binary: Arc<CairnBinary>,
    /// This agent's compile steps' cgroups are below this one (see [`Compiler::new`]).
    cgroups_root: String,
    config: CompileConfig,
    /// One cell per artifact: concurrent tasks of one module wait for one compile.
    /// A task gets an artifact under this lock, and eviction removes one under it.
    known: Arc<Known>,
    /// Held while the directory is searched for an artifact or evicted from.
    disk: Arc<Mutex<()>>,
    /// Compile steps running per user: a tenant launching a burst of distinct modules
    /// queues behind its own steps, not other users'.
    running: Mutex<HashMap<u32, Arc<tokio::sync::Semaphore>>>,
    /// Compile steps running in all (`CompileConfig::max_steps`).
    steps: Arc<tokio::sync::Semaphore>,
}

/// Compile steps one user may have running at once.
const STEPS_PER_USER: usize = 2;

impl Compiler {
    /// `cgroups_root` is this agent's own parent for its compile steps' cgroups
    /// (agents of one machine share the hierarchy): what is below it at start was a
    /// crashed run's, and is killed and removed.
    pub fn new(
        dir: PathBuf,
        key: Vec<u8>,
        binary: Arc<CairnBinary>,
        cgroups_root: String,
        config: CompileConfig,
    ) -> Result<Self, String> {
        if key.len() < artifact_file::MIN_KEY_BYTES {
            return Err(format!(
                "the compile cache key is shorter than {} bytes",
                artifact_file::MIN_KEY_BYTES
            ));
        }
        // What a crashed agent left: half-written artifacts, and compile steps still
        // running in their cgroups with no one to enforce their deadline.
        artifact_file::remove_leftovers(&dir);
        if nix::unistd::geteuid().is_root() {
            crate::executor_cgroup::ExecutorCgroup::at(&cgroups_root).destroy();
        }
        let sandbox = cairn_sandbox::SandboxConfig::default();
        let fingerprint =
            |metered| cairn_sandbox::fingerprint(&sandbox, metered).map_err(|e| e.to_string());
        Ok(Self {
            dir,
            key,
            fingerprints: [fingerprint(false)?, fingerprint(true)?],
            binary,
            cgroups_root,
            known: Default::default(),
            disk: Default::default(),
            running: Mutex::new(HashMap::new()),
            steps: Arc::new(tokio::sync::Semaphore::new(config.max_steps.max(1))),
            config,
        })
    }

    /// Where executors find the artifacts.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn of(&self, module_sha256: [u8; 32], metered: bool, user: &TaskUser) -> ArtifactOf {
        ArtifactOf {
            module_sha256,
            fingerprint: self.fingerprints[usize::from(metered)].clone(),
            uid: uid_of(user),
        }
    }

    fn cell(&self, of: &ArtifactOf) -> Arc<OnceCell<Outcome>> {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= MAX_REMEMBERED && !known.contains_key(of) {
            // Failures go first: a flood of modules that do not compile must not
            // take the artifacts' last uses with it (eviction goes by them).
            known.retain(|_, cell| cell.get().is_none_or(Result::is_ok));
            if known.len() >= MAX_REMEMBERED {
                known.retain(|_, cell| !cell.initialized());
            }
        }
        known.entry(of.clone()).or_default().clone()
    }

    /// The task's programs if every one came from the fetcher cache and is compiled
    /// already: found without any I/O, for sandboxes made on the placer's thread.
    pub fn ready(
        &self,
        programs: &[ProgramRef],
        cached: &[CachedFile],
        user: &TaskUser,
    ) -> Option<Result<Vec<CompiledProgram>, String>> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        programs
            .iter()
            .map(|program| {
                let file = cached.iter().find(|f| f.name == program.name)?;
                let of = self.of(file.sha256, program.metered, user);
                let outcome = known.get(&of)?.get()?;
                Some(compiled(program, &of, outcome))
            })
            .collect()
    }

    /// Compiles the task's programs (or finds them compiled): each is read from the
    /// fetcher cache when it came from there, else from the sandbox. Every error is a
    /// message for the task's TASK_FAILED.
    pub async fn compile_all(
        &self,
        programs: &[ProgramRef],
        sandbox: &Path,
        cached: &[CachedFile],
        user: &TaskUser,
    ) -> Result<Vec<CompiledProgram>, String> {
        let mut out = Vec::with_capacity(programs.len());
        for program in programs {
            out.push(self.compile(program, sandbox, cached, user).await?);
        }
        Ok(out)
    }

    async fn compile(
        &self,
        program: &ProgramRef,
        sandbox: &Path,
        cached: &[CachedFile],
        user: &TaskUser,
    ) -> Result<CompiledProgram, String> {
        let name = program.name.clone();
        let (sha256, module) = match cached.iter().find(|f| f.name == program.name) {
            Some(file) => (file.sha256, Module::Cached(file.clone())),
            None => {
                let dir = sandbox.to_owned();
                let owner = uid_of(user);
                let sha256 =
                    blocking(move || source::digest_in_sandbox(&dir, &name, owner)).await?;
                let dir = sandbox.to_owned();
                (sha256, Module::Sandbox { dir, owner })
            }
        };
        let of = self.of(sha256, program.metered, user);
        // Twice at most: an artifact evicted between its compile and its hand-over is
        // made again (one evicted again at once is an agent bound too small to run it).
        for _ in 0..2 {
            let cell = self.cell(&of);
            let outcome = cell
                .get_or_try_init(|| self.find_or_make(&of, program, module.clone()))
                .await;
            let forget = match &outcome {
                Err(_) => true,
                Ok(outcome) => outcome.as_ref().is_err_and(|f| !f.remembered),
            };
            let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            let current = known.get(&of).is_some_and(|c| Arc::ptr_eq(c, &cell));
            if forget && current {
                // Tasks waiting on this cell share its outcome; later ones try again.
                known.remove(&of);
            }
            let outcome = outcome.map_err(|e| format!("{}: {e}", program.name))?;
            if current || outcome.is_err() {
                return compiled(program, &of, outcome);
            }
        }
        Err(format!(
            "{}: its compiled artifact was evicted as soon as it was made (the agent's \
             --compile-cache-size is too small)",
            program.name
        ))
    }

    /// The artifact on disk from an earlier run of the agent, else a new compile.
    /// `Err` is the agent's failure (not remembered); `Ok(Err)` the module's.
    async fn find_or_make(
        &self,
        of: &ArtifactOf,
        program: &ProgramRef,
        module: Module,
    ) -> Result<Outcome, String> {
        let (dir, key, found_of) = (self.dir.clone(), self.key.clone(), of.clone());
        let file = of.file_name(&self.key);
        let disk = self.disk.clone();
        let find = move || {
            let _searching = disk.lock().unwrap_or_else(|p| p.into_inner());
            Ok(artifact_file::find(&dir, &key, &found_of))
        };
        if let Some(sha256) = blocking(find).await? {
            return Ok(Ok(Artifact::new(file, sha256)));
        }
        // A uid of its own, which no task has: a task of the module's user could
        // otherwise trace the step in the moment after its exec, before it makes itself
        // undumpable, and forge its output.
        let compile_user = TaskUser {
            name: "compile".into(),
            uid: self.config.uid,
            gid: self.config.uid,
            groups: Vec::new(),
            switch: true,
        };
        let step = step::Step {
            binary: &self.binary,
            cgroups_root: &self.cgroups_root,
            config: &self.config,
            user: nix::unistd::geteuid().is_root().then_some(&compile_user),
        };
        let Some(_turn) = self.turn(of.uid).await? else {
            let why = format!(
                "compiling it waited {} for a turn (--compile-queue-timeout): the agent's \
                 compile steps are all busy",
                humantime::format_duration(self.config.queue_timeout)
            );
            return Ok(Err(Failure {
                why,
                remembered: false,
            }));
        };
        let module = module.read(&program.name, &of.module_sha256).await?;
        let started = std::time::Instant::now();
        let artifact = match step.run(Arc::new(module), program.metered).await {
            Ok(artifact) => artifact,
            Err(StepError::Module(why)) => {
                tracing::info!(program = program.name, why, "a module did not compile");
                let remembered = true;
                return Ok(Err(Failure { why, remembered }));
            }
            Err(StepError::Transient(why)) => {
                tracing::info!(program = program.name, why, "a compile step did not finish");
                let remembered = false;
                return Ok(Err(Failure { why, remembered }));
            }
            Err(StepError::Agent(why)) => return Err(why),
        };
        tracing::debug!(
            program = program.name,
            took = ?started.elapsed(),
            bytes = artifact.len(),
            "compiled"
        );
        let (dir, key, stored_of) = (self.dir.clone(), self.key.clone(), of.clone());
        let sha256 = blocking(move || {
            artifact_file::store(&dir, &key, &stored_of, &artifact)
                .map_err(|e| format!("cannot store the compiled artifact: {e}"))
        })
        .await?;
        let (dir, known, disk) = (self.dir.clone(), self.known.clone(), self.disk.clone());
        let max_bytes = self.config.cache_bytes;
        tokio::task::spawn_blocking(move || evict(&dir, &known, &disk, max_bytes));
        Ok(Ok(Artifact::new(file, sha256)))
    }
}

/// Removes the least recently used artifacts past `max_bytes` (see `eviction`), with
/// their cells: a later task of one compiles it again.
fn evict(dir: &Path, known: &Known, disk: &Mutex<()>, max_bytes: u64) {
    let _evicting = disk.lock().unwrap_or_else(|p| p.into_inner());
    let got = |known: &HashMap<_, Arc<OnceCell<Outcome>>>| -> HashMap<String, SystemTime> {
        let artifacts = known.values().filter_map(|cell| cell.get()?.as_ref().ok());
        artifacts.map(|a| (a.file.clone(), a.last_used())).collect()
    };
    let used = got(&known.lock().unwrap_or_else(|p| p.into_inner()));
    let now = SystemTime::now();
    let victims: HashSet<String> = eviction::victims(eviction::scan(dir), &used, max_bytes, now)
        .into_iter()
        .collect();
    if victims.is_empty() {
        return;
    }
    let cutoff = now - eviction::EVICTABLE_AFTER;
    let gone: Vec<String> = {
        let mut known = known.lock().unwrap_or_else(|p| p.into_inner());
        // One a task got since the look above stays.
        let kept: HashSet<String> = got(&known)
            .into_iter()
            .filter(|(file, at)| victims.contains(file) && *at > cutoff)
            .map(|(file, _)| file)
            .collect();
        known.retain(|_, cell| {
            let file = cell.get().and_then(|o| o.as_ref().ok()).map(|a| &a.file);
            !file.is_some_and(|f| victims.contains(f) && !kept.contains(f))
        });
        victims.difference(&kept).cloned().collect()
    };
    for name in gone {
        match std::fs::remove_file(dir.join(&name)) {
            Ok(()) => tracing::debug!(artifact = name, "evicted a compiled artifact"),
            Err(e) => tracing::warn!(artifact = name, error = %e, "cannot evict an artifact"),
        }
    }
}

impl Compiler {
    /// Waits for a step's turn: one of the user's own slots, then one of the agent's;
    /// `None` past the queue timeout.
    async fn turn(
        &self,
        uid: u32,
    ) -> Result<Option<[tokio::sync::OwnedSemaphorePermit; 2]>, String> {
        let mine = {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            let slots = running
                .entry(uid)
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(STEPS_PER_USER)));
            slots.clone()
        };
        let all = self.steps.clone();
        let both = async move {
            let mine = mine.acquire_owned().await?;
            let all = all.acquire_owned().await?;
            Ok::<_, tokio::sync::AcquireError>([mine, all])
        };
        match tokio::time::timeout(self.config.queue_timeout, both).await {
            Ok(Ok(permits)) => Ok(Some(permits)),
            Ok(Err(_)) => Err("the compile step's queue is closed".to_owned()),
            Err(_) => Ok(None),
        }
    }
}

/// The uid a task's processes (and its fetched files) have.
fn uid_of(user: &TaskUser) -> u32 {
    if user.switch {
        user.uid
    } else {
        nix::unistd::geteuid().as_raw()
    }
}

/// What a task gets of an outcome; called under the `known` lock, so eviction sees
/// the use it records.
fn compiled(
    program: &ProgramRef,
    of: &ArtifactOf,
    outcome: &Outcome,
) -> Result<CompiledProgram, String> {
    if let Ok(artifact) = outcome {
        artifact.used.store(now_secs(), Ordering::Relaxed);
    }
    match outcome {
        Ok(artifact) => Ok(CompiledProgram {
            name: program.name.clone(),
            module_sha256: of.module_sha256.to_vec(),
            artifact: artifact.file.clone(),
            artifact_sha256: artifact.sha256.to_vec(),
            metered: program.metered,
        }),
        Err(failure) => Err(format!("{}: {}", program.name, failure.why)),
    }
}

/// Runs file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| format!("the compile step's file work failed: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A known artifact in `file`, last got `ago` before now.
    fn known_artifact(known: &Known, n: u8, file: &str, ago: Duration) {
        let artifact = Artifact::new(file.into(), [0; 32]);
        let at = SystemTime::now() - ago;
        let secs = at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        artifact.used.store(secs, Ordering::Relaxed);
        let of = ArtifactOf {
            module_sha256: [n; 32],
            fingerprint: "f".into(),
            uid: 1000,
        };
        let cell = Arc::new(OnceCell::new_with(Some(Ok(artifact))));
        known.lock().unwrap().insert(of, cell);
    }

    #[test]
    fn eviction_removes_stale_artifacts_with_their_cells_and_keeps_recent_ones() {
        let dir = tempfile::tempdir().unwrap();
        let hours_ago = SystemTime::now() - Duration::from_secs(7200);
        for name in ["stale.cwasm", "got-now.cwasm", "stored-now.cwasm"] {
            let file = std::fs::File::create(dir.path().join(name)).unwrap();
            file.set_len(100).unwrap();
            if name != "stored-now.cwasm" {
                file.set_modified(hours_ago).unwrap();
            }
        }
        let known = Known::default();
        known_artifact(&known, 1, "stale.cwasm", Duration::from_secs(7000));
        known_artifact(&known, 2, "got-now.cwasm", Duration::ZERO);
        evict(dir.path(), &known, &Mutex::new(()), 150);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        // Still past the bound: what stays was used too recently to go.
        assert_eq!(left, ["got-now.cwasm", "stored-now.cwasm"]);
        let known = known.lock().unwrap();
        let files: Vec<&str> = (known.values())
            .map(|c| c.get().unwrap().as_ref().unwrap().file.as_str())
            .collect();
        assert_eq!(files, ["got-now.cwasm"]);
    }
}
