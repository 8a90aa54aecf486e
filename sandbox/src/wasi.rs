//! The WASI context every guest gets: its arguments and environment, stdout and
//! stderr counted against its disk quota, its sandbox as the only directory, and no
//! network. One builder serves p1 modules and p2 components alike.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::dir::SandboxDir;
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

/// Creates the output files now, so a silent task still has them to read, but keeps
/// no descriptor open: an idle task costs no file descriptors for its output.
/// Returns their names in the sandbox. A custom executor's directory outlives its
/// instances, so a name may be anything a guest left there: [`SandboxDir::touch`]
/// follows no link, never blocks on a FIFO, and accepts a regular file with one link
/// only (a fresh sandbox costs one `mknodat` per file: short tasks start thousands
/// of times a second).
fn touch_outputs(spec: &RunSpec) -> Result<[PathBuf; 2], SandboxError> {
    let dir = SandboxDir::open(&spec.sandbox_dir).map_err(|e| {
        SandboxError::Setup(format!(
            "opening sandbox {}: {e}",
            spec.sandbox_dir.display()
        ))
    })?;
    let touch = |path: &Path| -> Result<PathBuf, SandboxError> {
        let setup =
            |why: String| SandboxError::Setup(format!("creating {}: {why}", path.display()));
        let name = path
            .strip_prefix(&spec.sandbox_dir)
            .map_err(|_| setup("not inside the sandbox".into()))?;
        dir.touch(name, 0o666).map_err(|e| setup(e.to_string()))?;
        Ok(name.to_owned())
    };
    Ok([touch(&spec.stdout)?, touch(&spec.stderr)?])
}

pub(crate) fn builder(
    spec: &RunSpec,
    budget: &Arc<DiskBudget>,
) -> Result<WasiCtxBuilder, SandboxError> {
    let [stdout, stderr] = touch_outputs(spec)?;
    let output = |name| QuotaOutput::new(spec.sandbox_dir.clone(), name, budget.clone());
    let mut builder = WasiCtxBuilder::new();
    builder
        .args(&spec.args)
        .envs(&spec.env)
        .stdout(output(stdout))
        .stderr(output(stderr))
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
