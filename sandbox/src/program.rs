//! A compiled and linked program, and which of the three kinds it is. The engine
//! makes them; running a command and starting a custom executor take them apart.

use wasmtime::InstancePre;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::CommandPre;

use crate::executor_world::{ExecutorHost, ExecutorPre};
use crate::store::StoreState;
use crate::wasi::WasiP2;

/// A compiled and linked program, ready to be instantiated many times.
#[derive(Clone)]
pub struct Program {
    pub(crate) kind: Kind,
    /// Compiled with fuel metering: runs can have a fuel budget.
    pub(crate) metered: bool,
}

#[derive(Clone)]
pub(crate) enum Kind {
    /// A WASI p1 command module.
    Core(InstancePre<StoreState<WasiP1Ctx>>),
    /// A WASI p2 component exporting `wasi:cli/run`.
    Command(CommandPre<StoreState<WasiP2>>),
    /// A component of the `cairn:executor` world.
    Executor(ExecutorPre<StoreState<ExecutorHost>>),
}

/// What a program is, as far as its host is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramKind {
    /// Runs to its end as a task: a p1 module or a p2 `wasi:cli/run` component.
    Command,
    /// A custom executor (the `cairn:executor` world) that hosts tasks.
    Executor,
}

impl Program {
    pub fn kind(&self) -> ProgramKind {
        match self.kind {
            Kind::Core(_) | Kind::Command(_) => ProgramKind::Command,
            Kind::Executor(_) => ProgramKind::Executor,
        }
    }
}
