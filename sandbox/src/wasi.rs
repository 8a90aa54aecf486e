//! The WASI context every guest gets: its arguments and environment, stdout and
//! stderr counted against its disk quota, its sandbox as the only directory, and no
//! network. One builder serves p1 modules and p2 components alike.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::disk::{DiskBudget, QuotaOutput};
use crate::error::SandboxError;
use crate::spec::RunSpec;
use crate::store::StoreState;

/// A p2 component's WASI state: its context and the table of its resources.
pub(crate) struct WasiP2 {
    pub(crate) ctx: WasiCtx,
    pub(crate) table: ResourceTable,
}

impl WasiView for StoreState<WasiP2> {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi.ctx,
            table: &mut self.wasi.table,
        }
    }
}

/// Creates the output file now, so a silent task still has one to read, but keeps
/// no descriptor open: an idle task costs no file descriptors for its output. A
/// custom executor's directory outlives its instances, so the name may be anything
/// a guest left there: never follow a link, never block on a FIFO, and accept a
/// regular file only.
fn touch(path: &Path) -> Result<PathBuf, SandboxError> {
    use nix::sys::stat::{Mode, SFlag, mknod};
    use std::os::unix::fs::OpenOptionsExt;
    const O_NOFOLLOW: i32 = 0o400_000;
    const O_NONBLOCK: i32 = 0o4_000;
    let setup = |why: String| SandboxError::Setup(format!("creating {}: {why}", path.display()));
    // A fresh sandbox: one call makes a regular file without opening it, and fails
    // on any name already there, a link included (short tasks start thousands of
    // times a second; open, fstat and close cost three times as much).
    // Anything else (a name already there, or a filesystem or policy that refuses
    // mknod) takes the open path below, which says why if it fails too.
    if mknod(path, SFlag::S_IFREG, Mode::from_bits_truncate(0o666), 0).is_ok() {
        return Ok(path.to_owned());
    }
    let file = std::fs::File::options()
        .create(true)
        .append(true)
        .custom_flags(O_NOFOLLOW | O_NONBLOCK)
        .open(path)
        .map_err(|e| setup(e.to_string()))?;
    let regular = file.metadata().map(|m| m.is_file()).unwrap_or(false);
    if !regular {
        return Err(setup("not a regular file".into()));
    }
    Ok(path.to_owned())
}

pub(crate) fn builder(
    spec: &RunSpec,
    budget: &Arc<DiskBudget>,
) -> Result<WasiCtxBuilder, SandboxError> {
    let mut builder = WasiCtxBuilder::new();
    builder
        .args(&spec.args)
        .envs(&spec.env)
        .stdout(QuotaOutput::new(touch(&spec.stdout)?, budget.clone()))
        .stderr(QuotaOutput::new(touch(&spec.stderr)?, budget.clone()))
        // Deny by default: no sockets unless a later grant says so.
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    // The sandbox is `/`; relative paths resolve against it too (wasi-libc and the
    // p1 adapter start in `/`), so one preopened descriptor serves both.
    builder
        .preopened_dir(&spec.sandbox_dir, "/", FsPerms::ReadWrite)
        .map_err(|e| {
            SandboxError::Setup(format!(
                "preopening sandbox {}: {e:#}",
                spec.sandbox_dir.display()
            ))
        })?;
    Ok(builder)
}
