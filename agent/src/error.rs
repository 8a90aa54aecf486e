//! Why an agent, or an executor process, could not start or had to stop. Each variant
//! names the path, address or id involved, so the one line the binary prints is
//! enough to act on.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::checkpoint::{LogError, ReconfigureError};
use crate::resources::FlagError;

/// Why an agent could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("creating work dir {path}")]
    WorkDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Flag(#[from] FlagError),
    #[error("binding {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "recovering the agent's checkpoint (move the work dir's meta/ away to start as a new agent; the master will then report its tasks lost)"
    )]
    Checkpoint(#[source] LogError),
    #[error(
        "recovering the agent (restore its flags, or start it on a fresh work dir as a new agent)"
    )]
    Reconfigure(#[source] ReconfigureError),
    /// A file the agent keeps in its work dir (boot id, compile cache key, executor
    /// socket) could not be made.
    #[error("{what} {path}")]
    WorkFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the placer thread")]
    Placer(#[source] std::io::Error),
    /// The fetcher's TLS could not be set up (`--fetcher-ca-file`).
    #[error("setting up the fetcher: {0}")]
    Fetcher(String),
    #[error("setting up the compile step: {0}")]
    Compiler(String),
    #[error("serving the agent API")]
    Serve(#[source] std::io::Error),
}

/// Why an executor process gave up.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("setting up the wasm sandbox")]
    Sandbox(#[source] cairn_sandbox::SandboxError),
    #[error("connecting to {socket}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent at {socket} did not come back within {within}")]
    AgentGone {
        socket: PathBuf,
        within: String,
        #[source]
        last: Box<ExecutorError>,
    },
    /// Hosted again after an agent restart, it could not find what its tasks run in.
    #[error("re-attaching the containers that outlived the agent: {0}")]
    Reattach(String),
    #[error("subscribing on {socket}")]
    Subscribe {
        socket: PathBuf,
        #[source]
        source: crate::framing::FrameError,
    },
}
