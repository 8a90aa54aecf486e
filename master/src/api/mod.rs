//! The master's network APIs: gRPC for agents and schedulers, HTTP for people and
//! tools, served together on one port.

mod agents;
mod http;
mod mesos_http;
mod operator;
mod scheduler;

use axum::Router;
use axum::response::{IntoResponse, Response};
use cairn_api::internal::agent_registry_server::AgentRegistryServer;
use cairn_api::v1::scheduler_server::SchedulerServer;
use cairn_api::v1::{Call, FrameworkInfo};

use crate::error::CallError;
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

/// Mesos answers a refused HTTP call with its status code and a plain-text reason.
fn refuse(e: CallError) -> Response {
    (e.http_status(), format!("{e}\n")).into_response()
}

/// The FrameworkInfo of a SUBSCRIBE (HTTP or gRPC), with the call's `framework_id`
/// as its id when only the call names one.
fn subscribe_info(call: Call) -> Result<FrameworkInfo, CallError> {
    let mut info =
        call.subscribe
            .and_then(|s| s.framework_info)
            .ok_or(CallError::WithoutField {
                call: "SUBSCRIBE",
                path: "subscribe.framework_info",
            })?;
    match (call.framework_id, &info.id) {
        (Some(a), Some(b)) if a != *b => {
            return Err(CallError::SubscribeIdsDiffer {
                framework_id: a.value,
                info_id: b.value.clone(),
            });
        }
        (Some(a), None) => info.id = Some(a),
        _ => {}
    }
    Ok(info)
}
