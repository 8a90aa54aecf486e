//! Compiled artifacts: a module or component compiled ahead of time by the agent's
//! compile step (`cairn compile`, which calls [`precompile`] in a process of its own,
//! bounded in time and memory) and loaded by an executor without compiling
//! ([`Sandbox::load`](crate::Sandbox::load)). Executors never compile a tenant's
//! module: a module built to make the compiler take minutes or gigabytes costs its
//! compile step, not an executor that runs other tasks.
//!
//! Loading an artifact runs the machine code it holds, so it is trusted only as far
//! as its bytes are known: the agent names the sha256 of the artifact it wrote, and
//! the executor checks the bytes against it before loading.

use std::hash::{Hash, Hasher};

use wasmtime::Engine;

use crate::engine::{SandboxConfig, is_component, root_cause, wasm_config};
use crate::error::SandboxError;

/// The engine a compile step uses: the executors' settings, without their instance
/// pool (nothing is instantiated here), which leaves the compiled code the same.
fn compile_engine(config: &SandboxConfig, metered: bool) -> Result<Engine, SandboxError> {
    Engine::new(&wasm_config(config, metered)).map_err(|e| SandboxError::Setup(format!("{e:#}")))
}

/// Compiles a module or component for executors of the same build and `config`,
/// `metered` for runs with a fuel budget; returns the artifact to [`load`].
///
/// [`load`]: crate::Sandbox::load
pub fn precompile(
    config: &SandboxConfig,
    bytes: &[u8],
    metered: bool,
) -> Result<Vec<u8>, SandboxError> {
    let component = is_component(bytes)?;
    let engine = compile_engine(config, metered)?;
    let compiled = if component {
        engine.precompile_component(bytes)
    } else {
        engine.precompile_module(bytes)
    };
    compiled.map_err(|e| SandboxError::Invalid(root_cause(&e)))
}

/// Names the settings artifacts are compiled under (wasmtime's own compatibility hash
/// and the metering): an artifact is reused only by engines of the same fingerprint,
/// so an upgraded agent compiles again rather than loading what its executors refuse.
pub fn fingerprint(config: &SandboxConfig, metered: bool) -> Result<String, SandboxError> {
    let engine = compile_engine(config, metered)?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let flavor = if metered { "metered" } else { "plain" };
    Ok(format!("{:016x}-{flavor}", hasher.finish()))
}
