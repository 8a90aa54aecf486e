use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde_json::json;

use crate::leader::LeaderHandle;
use crate::registry::Registry;

#[derive(Clone)]
struct HttpState {
    leader: LeaderHandle,
    registry: Registry,
}

pub(super) fn router(leader: LeaderHandle, registry: Registry) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/version", get(version))
        .route("/state", get(state))
        .with_state(HttpState { leader, registry })
}

async fn health() -> &'static str {
    "ok\n"
}

async fn version() -> Json<serde_json::Value> {
    Json(json!({ "version": cairn_api::VERSION }))
}

/// The master's state as JSON: the leader's last published snapshot (never a
/// query against the actor) plus the registry's applied index.
async fn state(State(s): State<HttpState>) -> Json<serde_json::Value> {
    let snapshot = s.leader.snapshot.borrow().clone();
    Json(json!({
        "version": cairn_api::VERSION,
        "registry_applied_index": s.registry.state().applied,
        "frameworks": snapshot.frameworks,
        "agents": snapshot.agents,
        "tasks": snapshot.tasks,
        "completed_tasks": snapshot.completed_tasks,
        "outstanding_offers": snapshot.outstanding_offers,
    }))
}

pub(super) async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, "no such endpoint\n")
}
