//! The executor the agent hosts in its own process: a framework's Docker executor.
//!
//! Docker tasks' containers are the Docker Engine's, and the Engine's socket is
//! root's to give: any process holding it can start a privileged container. So no
//! executor process is given it; the agent makes the Engine calls itself, running
//! the executor's code on its own runtime. It hosts no tenant code (the containers
//! run as their tasks' users), and it speaks to the core exactly as an executor
//! process does, over a socket pair in place of the agent's socket, so the core
//! checkpoints, acknowledges and reconciles it like any other.
//!
//! Its record holds the agent's pid and start time. After an agent restart, the new
//! agent hosts it again ([`Launcher::host`] with `recover`): the containers outlived
//! the old agent, and are followed on from where their output was left.

use std::sync::Arc;

use tokio::net::UnixStream;

use super::{Launcher, Spawned};
use crate::executor_process::{ExecutorArgs, HostedLink, run_executor};
use crate::input::Input;

impl Launcher {
    /// Starts framework `fw`'s Docker executor `ex` on the agent's runtime; its end
    /// is reported to the core as an executor process's exit.
    pub fn host(&self, fw: &str, ex: &str, recover: bool) -> std::io::Result<Spawned> {
        let directory = self.paths.executor_dir(fw, ex);
        std::fs::create_dir_all(&directory)?;
        let core = self.core.clone();
        let connect = Arc::new(move || {
            let (ours, theirs) = UnixStream::pair()?;
            tokio::spawn(crate::executor_socket::serve_hosted(ours, core.clone()));
            Ok(theirs)
        });
        let args = ExecutorArgs {
            agent_socket: self.paths.socket(),
            framework_id: fw.to_owned(),
            executor_id: ex.to_owned(),
            directory,
            recovery_timeout: self.recovery_timeout,
            artifacts: None,
            custom_call_timeout: self.custom_call_timeout,
            cgroups_root: String::new(),
            native_namespaces: Vec::new(),
            containerizers: vec!["docker".to_owned()],
            docker_host_network_always: self.docker_host_network_always,
            hosted: Some(HostedLink { connect, recover }),
            authentication_token: self.tokens.token(fw, ex),
        };
        let pid = std::process::id();
        let start_time = crate::process::start_time(pid).unwrap_or_default();
        let running = tokio::spawn(run_executor(args));
        let mut hosted = self.hosted.lock().unwrap_or_else(|p| p.into_inner());
        hosted.insert(ex.to_owned(), running.abort_handle());
        drop(hosted);
        tracing::info!(
            executor_id = ex,
            recover,
            "hosting the executor in the agent"
        );
        let (core, hosted, fw, ex) = (
            self.core.clone(),
            self.hosted.clone(),
            fw.to_owned(),
            ex.to_owned(),
        );
        tokio::spawn(async move {
            let status = match running.await {
                Ok(Ok(())) => "exit status: 0".to_owned(),
                Ok(Err(e)) => format!("exit status: 1 ({e})"),
                Err(e) if e.is_cancelled() => "killed by the agent".to_owned(),
                Err(_) => "the hosted executor panicked".to_owned(),
            };
            if status != "exit status: 0" {
                // Ended by `kill_hosted`, a failure or a bug: its tasks are reported
                // failed, so what they run is stopped before a successor may start.
                crate::executor_process::stop_docker_containers(&fw).await;
            }
            hosted.lock().unwrap_or_else(|p| p.into_inner()).remove(&ex);
            tracing::info!(executor_id = ex, status, "hosted executor ended");
            let _ = core
                .send(Input::ExecutorExited {
                    executor_id: ex,
                    pid,
                    status,
                })
                .await;
        });
        Ok(Spawned {
            pid,
            start_time,
            cgroup: String::new(),
        })
    }

    /// Ends a hosted executor that outlived its shutdown grace, as an executor
    /// process's group is killed: its containers are stopped, then its end reported.
    pub fn kill_hosted(&self, ex: &str) {
        let hosted = self.hosted.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(running) = hosted.get(ex) {
            running.abort();
        }
    }
}
