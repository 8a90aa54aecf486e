use std::sync::{Arc, Weak};
use std::time::Duration;

use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig,
};

use crate::error::SandboxError;
use crate::run::StoreState;

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
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            max_instances: 1000,
            max_memory_bytes: 4 << 30,
        }
    }
}

/// One engine, its epoch ticker and the WASI p1 linker. Create one per process.
pub struct Sandbox {
    pub(crate) engine: Engine,
    linker: Linker<StoreState>,
    pub(crate) config: SandboxConfig,
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
        wasm.epoch_interruption(true)
            // Every store gets fuel; tasks without a budget get u64::MAX.
            .consume_fuel(true)
            .memory_init_cow(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = Engine::new(&wasm).map_err(|e| SandboxError::Setup(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut StoreState| &mut s.wasi)
            .map_err(|e| SandboxError::Setup(format!("{e:#}")))?;
        let sandbox = Arc::new(Self {
            engine,
            linker,
            config,
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
        let module =
            Module::new(&self.engine, bytes).map_err(|e| SandboxError::Invalid(root_cause(&e)))?;
        if module.get_export("_start").is_none() {
            return Err(SandboxError::NotCommand);
        }
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| SandboxError::Link(root_cause(&e)))?;
        Ok(Program { pre })
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
