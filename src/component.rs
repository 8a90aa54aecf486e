//! `cairn component new`: turns a core wasm module (a `wasm32-wasip1` build) into a
//! WebAssembly component, as `wasm-tools component new` does, so building a custom
//! executor or a p2 command needs no tool beyond `cairn` itself.
//!
//! Rust guests here are built for `wasm32-wasip1` (Debian's wasi-libc has no p2
//! build), so their WASI calls import `wasi_snapshot_preview1`; the encoder satisfies
//! those imports with wasmtime's preview1 adapter, which implements them on top of
//! WASI p2. The adapter is taken from the wasmtime release the host runs (48), so the
//! components this makes always match the runtime that will instantiate them.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};

/// Work with WebAssembly components.
#[derive(Args)]
pub struct ComponentArgs {
    #[command(subcommand)]
    command: ComponentCommand,
}

#[derive(Subcommand)]
enum ComponentCommand {
    /// Make a component of a core wasm module (wasm32-wasip1), adapting its
    /// `wasi_snapshot_preview1` imports to WASI p2.
    New(NewArgs),
}

#[derive(Args)]
struct NewArgs {
    /// The core module: a `wasm32-wasip1` build (a `bin` for commands, a `cdylib`
    /// with wit-bindgen's exports for reactors).
    core: PathBuf,
    /// Which preview1 adapter: `command` for a program with `_start` (the component
    /// exports `wasi:cli/run`), `reactor` for a library whose exports are called many
    /// times over one instance (custom executors).
    #[arg(long, value_enum)]
    adapter: Adapter,
    /// Where to write the component (replaced atomically: a reader never sees half a
    /// file).
    #[arg(short, long)]
    output: PathBuf,
}

/// The preview1 adapter flavours wasmtime ships.
#[derive(Clone, Copy, ValueEnum)]
enum Adapter {
    Command,
    Reactor,
}

impl Adapter {
    fn name(self) -> &'static str {
        match self {
            Adapter::Command => "command",
            Adapter::Reactor => "reactor",
        }
    }

    fn bytes(self) -> &'static [u8] {
        use wasi_preview1_component_adapter_provider::{
            WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        };
        match self {
            Adapter::Command => WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
            Adapter::Reactor => WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        }
    }
}

/// Runs `cairn component …`.
pub fn run(args: ComponentArgs) -> anyhow::Result<()> {
    match args.command {
        ComponentCommand::New(args) => new(&args.core, args.adapter, &args.output),
    }
}

fn new(core: &Path, adapter: Adapter, output: &Path) -> anyhow::Result<()> {
    let module = std::fs::read(core).with_context(|| format!("reading {}", core.display()))?;
    let component = encode(&module, adapter)
        .with_context(|| format!("making a component of {}", core.display()))?;
    write_replacing(output, &component)
}

/// Encodes `module` as a component, validating the result (so a component that
/// wasmtime would refuse is an error here, where the guest is built, rather than at
/// launch on some agent).
fn encode(module: &[u8], adapter: Adapter) -> anyhow::Result<Vec<u8>> {
    if module.starts_with(b"\0asm") && module.get(4..8) != Some(&[1, 0, 0, 0]) {
        anyhow::bail!("this is already a component, not a core module");
    }
    wit_component::ComponentEncoder::default()
        .module(module)
        .context("decoding the core module (a wasm32-wasip1 build?)")?
        .adapter("wasi_snapshot_preview1", adapter.bytes())
        .context("the preview1 adapter does not fit the module")?
        .validate(true)
        .encode()
        .with_context(|| format!("encoding the component with the {} adapter", adapter.name()))
}

/// Writes `bytes` to `path.tmp` and renames it over `path`, so `path` is never left
/// half-written (a build killed mid-way leaves the old file or none).
fn write_replacing(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_component_is_refused_as_input() {
        let component = [b"\0asm".as_slice(), &[0x0d, 0, 1, 0]].concat();
        let err = encode(&component, Adapter::Command).unwrap_err();
        assert!(
            format!("{err:#}").contains("already a component"),
            "{err:#}"
        );
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let err = encode(b"not wasm", Adapter::Reactor).unwrap_err();
        assert!(
            format!("{err:#}").contains("decoding the core module"),
            "{err:#}"
        );
    }
}
