//! The process-wide [`Sandbox`]: two engines (metered and plain) with their epoch
//! ticker, the linkers for each kind of program, and the linked programs kept in
//! memory, compiled here or loaded from the agent's artifacts. Running a program is in `run` (commands) and
//! `custom_executor` (custom executors), which build on this.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sha2::{Digest, Sha256};

use wasmtime::component::Component;
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, Linker, Module, PoolingAllocationConfig,
    Precompiled,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::CommandPre;

use crate::error::SandboxError;
use crate::executor_world::{ExecutorHost, ExecutorPre};
use crate::program::{Kind, Program};
use crate::store::StoreState;
use crate::wasi::WasiP2;

/// Linked programs one process keeps in memory.
const MAX_PROGRAMS: usize = 256;
/// And no more than this many bytes of modules behind them: a module's data segments
/// stay in its compiled image, so a few large modules could otherwise pin gigabytes.
const MAX_PROGRAM_BYTES: usize = 512 << 20;

/// Bytes of each table and stack slot kept resident between the tasks that use it:
/// zeroed in place rather than released, since a release is a TLB shootdown on
/// every core.
const KEEP_RESIDENT: usize = 64 << 10;
/// The same for linear memories: two wasm pages, what a C program's (wasi-libc's)
/// memory starts with, so a short C task gives nothing back to the kernel.
const MEMORY_KEEP_RESIDENT: usize = 128 << 10;

/// How often the epoch ticker advances; the granularity of wall-clock limits and kills.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Process-wide sandbox settings.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Instances the pooling allocator reserves slots for: the most tasks one
    /// executor process runs at once.
    pub max_instances: u32,
    /// The largest linear memory any one task may ask for (the pooling allocator's
    /// per-memory reservation, 4 GiB, is the ceiling).
    pub max_memory_bytes: usize,
    /// Epoch interruption (deadlines and kills). Off only to measure its cost:
    /// without it a run can be neither timed out nor killed.
    pub epoch_interruption: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            max_instances: 1000,
            max_memory_bytes: 4 << 30,
            epoch_interruption: true,
        }
    }
}

/// The engines, their epoch ticker and linkers (WASI p1 for modules, WASI p2 for
/// components, plus Cairn's host interface for custom executors). Create one per
/// process.
///
/// Fuel metering is compiled into the code, and costs a CPU-bound guest about a third
/// more (docs/benchmarks.md), so there are two engines: tasks with a fuel budget run
/// metered, the others do not pay for it.
pub struct Sandbox {
    metered: Flavor,
    plain: Flavor,
    pub(crate) config: SandboxConfig,
}

/// One engine with its linkers and linked programs.
struct Flavor {
    engine: Engine,
    linker: Linker<StoreState<WasiP1Ctx>>,
    command_linker: wasmtime::component::Linker<StoreState<WasiP2>>,
    executor_linker: wasmtime::component::Linker<StoreState<ExecutorHost>>,
    stats: ProgramStats,
    /// Linked programs by module sha256: a module runs again without compiling or
    /// linking (`InstancePre` reuse).
    programs: Mutex<Programs>,
    /// Held while compiling (see `Sandbox::compile`).
    compiling: Mutex<()>,
}

#[derive(Default)]
struct Programs {
    by_digest: HashMap<[u8; 32], Program>,
    /// Module bytes behind the programs held.
    bytes: usize,
}

impl Flavor {
    fn new(config: &SandboxConfig, metered: bool) -> Result<Self, SandboxError> {
        let n = config.max_instances;
        // A component instance holds a few core instances and tables (its module,
        // the WASI adapter, shims) but one memory.
        let mut pooling = PoolingAllocationConfig::default();
        pooling
            .total_component_instances(n)
            .total_core_instances(n.saturating_mul(4))
            .total_memories(n)
            .total_tables(n.saturating_mul(4))
            .total_stacks(n)
            // A reused slot's first pages are zeroed in place rather than returned
            // to the kernel: releasing them costs a TLB shootdown on every core per
            // task, which dominated short tasks.
            .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT)
            .async_stack_keep_resident(KEEP_RESIDENT);
        let mut wasm = wasm_config(config, metered);
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = Engine::new(&wasm).map_err(|e| SandboxError::Setup(format!("{e:#}")))?;
        let setup = |e: wasmtime::Error| SandboxError::Setup(format!("{e:#}"));
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s: &mut StoreState<WasiP1Ctx>| {
            &mut s.wasi
        })
        .map_err(setup)?;
        crate::poll::add_to_linker(&mut linker).map_err(setup)?;
        let mut command_linker = wasmtime::component::Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut command_linker).map_err(setup)?;
        let mut executor_linker = wasmtime::component::Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut executor_linker).map_err(setup)?;
        crate::executor_world::add_to_linker(&mut executor_linker).map_err(setup)?;
        Ok(Self {
            engine,
            linker,
            command_linker,
            executor_linker,
            stats: ProgramStats::default(),
            programs: Mutex::new(Programs::default()),
            compiling: Mutex::new(()),
        })
    }

    fn link_module(&self, module: &Module) -> Result<Kind, SandboxError> {
        if module.get_export("_start").is_none() {
            return Err(SandboxError::NotCommand);
        }
        let pre = self
            .linker
            .instantiate_pre(module)
            .map_err(|e| SandboxError::Link(root_cause(&e)))?;
        Ok(Kind::Core(pre))
    }

    /// A component is a command if it exports `wasi:cli/run`, an executor if it
    /// exports the `cairn:executor` world's functions, and refused otherwise.
    fn link_component(&self, component: &Component) -> Result<Kind, SandboxError> {
        let ty = component.component_type();
        let exports: Vec<&str> = ty.exports(&self.engine).map(|(name, _)| name).collect();
        let link = |e: wasmtime::Error| SandboxError::Link(root_cause(&e));
        if exports
            .iter()
            .any(|name| name.starts_with("wasi:cli/run@0.2"))
        {
            let pre = self
                .command_linker
                .instantiate_pre(component)
                .map_err(link)?;
            return Ok(Kind::Command(CommandPre::new(pre).map_err(link)?));
        }
        if ["launch", "kill", "message", "shutdown"]
            .iter()
            .all(|f| exports.contains(f))
        {
            let pre = self
                .executor_linker
                .instantiate_pre(component)
                .map_err(link)?;
            return Ok(Kind::Executor(ExecutorPre::new(pre).map_err(link)?));
        }
        Err(SandboxError::WrongWorld(format!(
            "it exports [{}], neither `wasi:cli/run` (a command) nor the `cairn:executor` \
             world's launch, kill, message and shutdown (a custom executor)",
            exports.join(", ")
        )))
    }

    /// The program already linked for this digest, counted as a memory hit.
    fn linked(&self, digest: &[u8; 32]) -> Option<Program> {
        let program = self.lock_programs().by_digest.get(digest).cloned()?;
        self.stats.memory_hits.fetch_add(1, Ordering::Relaxed);
        Some(program)
    }

    /// Links a program made by `make` unless another thread got there first, and
    /// keeps it. One at a time per engine: a thousand tasks launched at once with the
    /// same new module prepare it once, the rest wait and find it here.
    fn prepare(
        &self,
        digest: &[u8; 32],
        size: usize,
        metered: bool,
        make: impl FnOnce(&Self) -> Result<Kind, SandboxError>,
    ) -> Result<Program, SandboxError> {
        if let Some(program) = self.linked(digest) {
            return Ok(program);
        }
        let _preparing = self.compiling.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(program) = self.linked(digest) {
            return Ok(program);
        }
        let program = Program {
            kind: make(self)?,
            metered,
        };
        let mut programs = self.lock_programs();
        if programs.by_digest.len() >= MAX_PROGRAMS
            || programs.bytes.saturating_add(size) > MAX_PROGRAM_BYTES
        {
            // A crude bound (running tasks keep their own references); the
            // artifacts refill it cheaply.
            *programs = Programs::default();
        }
        if programs
            .by_digest
            .insert(*digest, program.clone())
            .is_none()
        {
            programs.bytes += size;
        }
        Ok(program)
    }

    fn lock_programs(&self) -> std::sync::MutexGuard<'_, Programs> {
        // Entries are inserted whole, so a poisoned map is still consistent.
        self.programs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Result<Arc<Self>, SandboxError> {
        let sandbox = Arc::new(Self {
            metered: Flavor::new(&config, true)?,
            plain: Flavor::new(&config, false)?,
            config,
        });
        spawn_epoch_ticker(Arc::downgrade(&sandbox));
        Ok(sandbox)
    }

    /// Validates, compiles and links a program, `metered` when its runs have a fuel
    /// budget: a p1 command module, a p2 component exporting `wasi:cli/run`, or a
    /// custom executor component. For a process that runs only its own modules
    /// (benchmarks, tests): an executor loads what the agent compiled instead
    /// ([`load`](Self::load)).
    pub fn compile(&self, bytes: &[u8], metered: bool) -> Result<Program, SandboxError> {
        let component = is_component(bytes)?;
        let flavor = if metered { &self.metered } else { &self.plain };
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        flavor.prepare(&digest, bytes.len(), metered, |flavor| {
            let invalid = |e: wasmtime::Error| SandboxError::Invalid(root_cause(&e));
            flavor.stats.compiles.fetch_add(1, Ordering::Relaxed);
            if component {
                flavor.link_component(&Component::new(&flavor.engine, bytes).map_err(invalid)?)
            } else {
                flavor.link_module(&Module::new(&flavor.engine, bytes).map_err(invalid)?)
            }
        })
    }

    /// Loads and links the artifact [`precompile`](crate::precompile) made of the
    /// module whose sha256 is `module_sha256`, `metered` as it was compiled; a
    /// program this process already holds for that module is reused.
    ///
    /// # Safety
    /// `artifact` must be exactly bytes that `precompile` returned, by a build of the
    /// same wasmtime: loading it runs the machine code it holds. (Wasmtime checks the
    /// build and settings it was compiled with, not where the code came from.)
    pub unsafe fn load(
        &self,
        module_sha256: &[u8; 32],
        artifact: &[u8],
        metered: bool,
    ) -> Result<Program, SandboxError> {
        let flavor = if metered { &self.metered } else { &self.plain };
        flavor.prepare(module_sha256, artifact.len(), metered, |flavor| {
            let refused = |e: wasmtime::Error| {
                SandboxError::Invalid(format!("the compiled artifact: {}", root_cause(&e)))
            };
            flavor.stats.loads.fetch_add(1, Ordering::Relaxed);
            match Engine::detect_precompiled(artifact) {
                // SAFETY: the caller's contract: these are bytes `precompile` made.
                Some(Precompiled::Module) => flavor.link_module(
                    &unsafe { Module::deserialize(&flavor.engine, artifact) }.map_err(refused)?,
                ),
                // SAFETY: as above.
                Some(Precompiled::Component) => flavor.link_component(
                    &unsafe { Component::deserialize(&flavor.engine, artifact) }
                        .map_err(refused)?,
                ),
                None => Err(SandboxError::Invalid(
                    "the compiled artifact is not one wasmtime made".into(),
                )),
            }
        })
    }

    /// The program already compiled and linked for a module with this sha256, if
    /// this process holds it: a caller that knows the digest (the agent's fetcher
    /// cache hashed the file once) skips reading and hashing the module.
    pub fn linked(&self, sha256: &[u8; 32], metered: bool) -> Option<Program> {
        let flavor = if metered { &self.metered } else { &self.plain };
        flavor.linked(sha256)
    }

    /// Where programs came from so far (`metered` picks the engine).
    pub fn program_stats(&self, metered: bool) -> &ProgramStats {
        if metered {
            &self.metered.stats
        } else {
            &self.plain.stats
        }
    }
}

/// The engine settings every program of a flavor is compiled under, wherever it is
/// compiled (here or in the agent's compile step); instances' allocation is the
/// caller's to add.
pub(crate) fn wasm_config(config: &SandboxConfig, metered: bool) -> Config {
    let mut wasm = Config::new();
    wasm.epoch_interruption(config.epoch_interruption)
        .consume_fuel(metered)
        .memory_init_cow(true);
    wasm
}

/// Where this process's programs came from; counted for the metrics and the tests.
#[derive(Debug, Default)]
pub struct ProgramStats {
    /// Programs found already linked in memory.
    pub memory_hits: AtomicU64,
    /// Modules compiled in this process ([`Sandbox::compile`]).
    pub compiles: AtomicU64,
    /// Artifacts loaded ([`Sandbox::load`]).
    pub loads: AtomicU64,
}

/// Whether the bytes are a component (else a core module), from the wasm header.
/// Only binary wasm is accepted: a task's executable is never parsed as text.
pub(crate) fn is_component(bytes: &[u8]) -> Result<bool, SandboxError> {
    if !bytes.starts_with(b"\0asm") || bytes.len() < 8 {
        return Err(SandboxError::NotWasm(
            "the file does not start with the wasm magic bytes".into(),
        ));
    }
    match bytes[4..8] {
        [1, 0, 0, 0] => Ok(false),
        [0x0d, 0, 1, 0] => Ok(true),
        _ => Err(SandboxError::NotWasm(
            "an unsupported wasm version (neither a core module nor a component)".into(),
        )),
    }
}

pub(crate) fn root_cause(e: &wasmtime::Error) -> String {
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

/// Advances the engine's epoch until the sandbox is dropped.
fn spawn_epoch_ticker(sandbox: Weak<Sandbox>) {
    std::thread::Builder::new()
        .name("cairn-epoch".into())
        .spawn(move || {
            while let Some(sandbox) = sandbox.upgrade() {
                sandbox.metered.engine.increment_epoch();
                sandbox.plain.engine.increment_epoch();
                drop(sandbox);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch ticker thread");
}
