use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sha2::{Digest, Sha256};

use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, PoolingAllocationConfig,
};

use crate::cache::{CacheConfig, CacheStats, CompileCache};
use crate::error::SandboxError;
use crate::run::StoreState;

/// Linked programs one process keeps in memory.
const MAX_PROGRAMS: usize = 256;

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
    /// The on-disk compile cache shared with the agent's other executors, if any.
    pub cache: Option<CacheConfig>,
    /// Fuel metering (a task's `container.wasm.fuel`). Off only to measure its cost:
    /// without it fuel budgets are not enforced.
    pub consume_fuel: bool,
    /// Epoch interruption (deadlines and kills). Off only to measure its cost:
    /// without it a run can be neither timed out nor killed.
    pub epoch_interruption: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            max_instances: 1000,
            max_memory_bytes: 4 << 30,
            cache: None,
            consume_fuel: true,
            epoch_interruption: true,
        }
    }
}

/// One engine, its epoch ticker and the WASI p1 linker. Create one per process.
pub struct Sandbox {
    pub(crate) engine: Engine,
    linker: Linker<StoreState>,
    pub(crate) config: SandboxConfig,
    cache: CompileCache,
    /// Linked programs by module sha256: a module runs again without compiling or
    /// linking (`InstancePre` reuse).
    programs: Mutex<HashMap<[u8; 32], Program>>,
}

/// A compiled and linked module, ready to be instantiated many times.
#[derive(Clone)]
pub struct Program {
    pub(crate) pre: InstancePre<StoreState>,
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Result<Arc<Self>, SandboxError> {
        let mut pooling = PoolingAllocationConfig::default();
        pooling
            .total_core_instances(config.max_instances)
            .total_memories(config.max_instances)
            .total_tables(config.max_instances);
        let mut wasm = Config::new();
        wasm.epoch_interruption(config.epoch_interruption)
            // Every store gets fuel; tasks without a budget get u64::MAX.
            .consume_fuel(config.consume_fuel)
            .memory_init_cow(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = Engine::new(&wasm).map_err(|e| SandboxError::Setup(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut StoreState| &mut s.wasi)
            .map_err(|e| SandboxError::Setup(format!("{e:#}")))?;
        let cache = CompileCache::new(&engine, config.cache.clone());
        let sandbox = Arc::new(Self {
            engine,
            linker,
            config,
            cache,
            programs: Mutex::new(HashMap::new()),
        });
        spawn_epoch_ticker(Arc::downgrade(&sandbox));
        Ok(sandbox)
    }

    /// Validates, compiles and links a module. Only binary modules are accepted: a
    /// task's executable must never be parsed as text.
    pub fn compile(&self, bytes: &[u8]) -> Result<Program, SandboxError> {
        if !bytes.starts_with(b"\0asm") {
            return Err(SandboxError::NotWasm(
                "the file does not start with the wasm magic bytes".into(),
            ));
        }
        if bytes.len() >= 8 && bytes[4..8] != [1, 0, 0, 0] {
            return Err(SandboxError::NotWasm(
                "a component or an unsupported wasm version; only core modules run as tasks".into(),
            ));
        }
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(program) = self.lock_programs().get(&digest) {
            self.cache.stats.memory_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(program.clone());
        }
        let module = self
            .cache
            .module(&self.engine, &digest, bytes)
            .map_err(|e| SandboxError::Invalid(root_cause(&e)))?;
        if module.get_export("_start").is_none() {
            return Err(SandboxError::NotCommand);
        }
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| SandboxError::Link(root_cause(&e)))?;
        let program = Program { pre };
        let mut programs = self.lock_programs();
        if programs.len() >= MAX_PROGRAMS {
            programs.clear(); // a crude bound; the disk cache refills it cheaply
        }
        programs.insert(digest, program.clone());
        Ok(program)
    }

    /// Where compiled modules came from so far.
    pub fn cache_stats(&self) -> &CacheStats {
        &self.cache.stats
    }

    fn lock_programs(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Program>> {
        // Entries are inserted whole, so a poisoned map is still consistent.
        self.programs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn root_cause(e: &wasmtime::Error) -> String {
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
                sandbox.engine.increment_epoch();
                drop(sandbox);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch ticker thread");
}
