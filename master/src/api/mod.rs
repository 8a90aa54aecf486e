//! The master's network APIs: gRPC for agents and schedulers, HTTP for people and
//! tools, served together on one port.

mod agents;
mod http;
mod mesos_http;
mod operator;
mod scheduler;

use axum::Router;
use cairn_api::internal::agent_registry_server::AgentRegistryServer;
use cairn_api::v1::scheduler_server::SchedulerServer;

use crate::leader::LeaderHandle;
use crate::registry::Registry;

/// Large enough for a big task list on agent re-registration; bounded so one peer
/// cannot make the master buffer without limit.
const MAX_MESSAGE_BYTES: usize = 16 << 20;

pub(crate) fn router(
    leader: LeaderHandle,
    registry: Registry,
    flags: Vec<(String, String)>,
) -> Router {
    let grpc = tonic::service::Routes::new(
        AgentRegistryServer::new(agents::AgentService::new(leader.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
    )
    .add_service(
        SchedulerServer::new(scheduler::SchedulerService::new(leader.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
    )
    .into_axum_router();
    let mesos = Router::new()
        .route(
            "/api/v1/scheduler",
            axum::routing::post(mesos_http::scheduler),
        )
        .with_state(leader.clone())
        .route("/api/v1", axum::routing::post(operator::operator))
        .with_state(operator::OperatorState {
            leader: leader.clone(),
            flags: std::sync::Arc::new(flags),
        });
    http::router(leader, registry)
        .merge(mesos)
        .merge(grpc)
        .fallback(http::not_found)
}
