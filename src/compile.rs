//! `cairn compile`: the agent's compile step (see the agent's `compiler`). Reads a
//! module or component on stdin and writes the artifact executors load on stdout.
//! The agent starts it as the task's user, in a cgroup bounding its memory, with a
//! deadline; it is not run by hand.

use std::io::{Read as _, Write as _};

use clap::Args;

/// No module is larger than this (the agent's own bound, checked again here).
const MAX_MODULE_BYTES: u64 = 256 << 20;

#[derive(Args)]
pub(crate) struct CompileArgs {
    /// Compile with fuel metering, for runs with a fuel budget.
    #[arg(long)]
    metered: bool,
}

/// Compiles; on a module that does not compile, says why on stderr and returns 1.
pub(crate) fn run(args: CompileArgs) -> anyhow::Result<u8> {
    let _ = nix::sys::prctl::set_name(c"cairn-compile");
    // Other processes of its user may not ptrace it or read its memory.
    let _ = nix::sys::prctl::set_dumpable(false);
    let mut module = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_MODULE_BYTES + 1)
        .read_to_end(&mut module)?;
    if module.len() as u64 > MAX_MODULE_BYTES {
        eprintln!("the module is larger than {MAX_MODULE_BYTES} bytes");
        return Ok(1);
    }
    let config = cairn_sandbox::SandboxConfig::default();
    match cairn_sandbox::precompile(&config, &module, args.metered) {
        Ok(artifact) => {
            let mut out = std::io::stdout().lock();
            out.write_all(&artifact)?;
            out.flush()?;
            Ok(0)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(1)
        }
    }
}
