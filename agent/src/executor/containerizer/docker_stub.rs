use std::time::Duration;

use super::{Containerizer, LaunchSpec, Termination, Usage};

pub struct DockerContainerizer;

impl DockerContainerizer {
    pub fn new() -> Self {
        Self
    }
}

#[async_trait::async_trait]
impl Containerizer for DockerContainerizer {
    async fn launch(&self, _spec: &LaunchSpec) -> Result<(), String> {
        Err("docker is not available".into())
    }
    async fn wait(&self, _task_id: &str) -> Termination {
        Termination::launch_failed("no such container")
    }
    async fn kill(&self, _task_id: &str, _grace: Duration) {}
    async fn recover(&self, _framework_id: &str) -> Vec<String> {
        Vec::new()
    }
    async fn usage(&self, _task_id: &str) -> Option<Usage> {
        None
    }
}
