//! How a run ended and what it used: the answer every caller reads, whether the run
//! was a command or a call into a custom executor.

use std::time::Duration;

/// A limit a run hit; each maps onto one Mesos `REASON_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Memory,
    Fuel,
    Time,
    Disk,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The command returned (0), called `exit`, or (p2) returned an error (1).
    Code(i32),
    Limit(Limit),
    /// Stopped through its [`CancelHandle`](crate::CancelHandle).
    Killed,
    /// Any other trap, with wasmtime's description.
    Trap(String),
}

/// What a run consumed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub fuel_consumed: u64,
    pub peak_memory_bytes: u64,
    pub wall_time: Duration,
}

#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub exit: Exit,
    pub usage: Usage,
}
