//! The guest side of Cairn: what a program running as a Cairn task can ask about
//! itself. Plain WASI commands need nothing from here; the SDK names what Cairn
//! provides so guests do not hard-code it.

/// The task a guest is running as.
pub mod task {
    use std::path::PathBuf;

    /// The task's id, from `MESOS_TASK_ID` (set by Cairn's executor, as by Mesos').
    pub fn id() -> Option<String> {
        std::env::var("MESOS_TASK_ID").ok()
    }

    /// The task's sandbox: the one directory the guest can read and write.
    pub fn sandbox() -> PathBuf {
        std::env::var_os("MESOS_SANDBOX")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
    }
}
