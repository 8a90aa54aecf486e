use axum::Router;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

use super::Caller;
use super::views::visible;
use crate::audit::Audit;
use crate::authn::{Authentication, Realm};
use crate::authz::Acls;
use crate::leader::LeaderHandle;
use crate::rate_limits::Limiter;
use crate::registry::Registry;

#[derive(Clone)]
struct HttpState {
    leader: LeaderHandle,
    registry: Registry,
    audit: Audit,
    acls: Arc<Acls>,
    limiter: Arc<Limiter>,
}

/// State is read-only (`--authenticate-http-readonly`); `/health` and `/version`
/// ask no one, as in Mesos.
pub(super) fn router(
    leader: LeaderHandle,
    registry: Registry,
    acls: Arc<Acls>,
    limiter: Arc<Limiter>,
    read_only: (Authentication, Realm, Audit),
) -> Router {
    let audit = read_only.2.clone();
    let open = Router::new()
        .route("/health", get(health))
        .route("/version", get(version))
        .with_state(HttpState {
            leader: leader.clone(),
            registry: registry.clone(),
            audit: audit.clone(),
            acls: acls.clone(),
            limiter: limiter.clone(),
        });
    Router::new()
        .route("/state", get(state))
        .route("/master/state", get(master_state))
        .route("/master/state.json", get(master_state))
        .route("/metrics", get(metrics))
        .with_state(HttpState {
            leader,
            registry,
            audit,
            acls,
            limiter,
        })
        .layer(axum::middleware::from_fn_with_state(
            read_only,
            super::authenticate,
        ))
        .merge(open)
}

/// The master's counters, in Prometheus' text format, to whom `get_endpoints` allows
/// `/metrics`.
async fn metrics(
    State(s): State<HttpState>,
    Extension(Caller(principal)): Extension<Caller>,
) -> Response {
    let path = crate::authz::Entity::one("/metrics");
    let allowed = (s.acls).check(
        principal.as_deref(),
        crate::authz::Action::GetEndpoints,
        &path,
    );
    if let Err(refused) = allowed {
        return (StatusCode::FORBIDDEN, format!("{refused}\n")).into_response();
    }
    let content_type = "text/plain; version=0.0.4";
    (
        [(axum::http::header::CONTENT_TYPE, content_type)],
        s.audit.render() + &s.limiter.render() + &s.leader.stream_counts.render(),
    )
        .into_response()
}

/// How long the leader's actor may take to answer a health check.
const HEALTH_WAIT: Duration = Duration::from_secs(5);

/// Whether this master serves: its registry takes writes here and its leader's actor
/// answers. Else why not.
pub(super) async fn healthy(leader: &LeaderHandle, registry: &Registry) -> Result<(), String> {
    registry.health()?;
    leader.answers(HEALTH_WAIT).await
}

/// 200 when [`healthy`], else 503 saying why.
async fn health(State(s): State<HttpState>) -> Response {
    match healthy(&s.leader, &s.registry).await {
        Ok(()) => "ok\n".into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        )
            .into_response(),
    }
}

async fn version() -> Json<serde_json::Value> {
    Json(json!({ "version": cairn_api::VERSION }))
}

/// The master's state as JSON: the leader's snapshot, published for this request
/// (or its last one if the leader is too busy to answer), plus the registry's
/// applied index.
async fn state(
    State(s): State<HttpState>,
    Extension(Caller(principal)): Extension<Caller>,
) -> Json<serde_json::Value> {
    let snapshot = s.leader.fresh_snapshot().await;
    let snapshot = visible(snapshot, &s.acls, principal.as_deref());
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

/// Mesos' v0 `/master/state` shape, which many Mesos tools and dashboards read:
/// `slaves` for agents, resources as `{"cpus": 2, "mem": 1024, "ports": "[…]"}`.
async fn master_state(
    State(s): State<HttpState>,
    Extension(Caller(principal)): Extension<Caller>,
) -> Json<serde_json::Value> {
    let snap = s.leader.fresh_snapshot().await;
    let snap = visible(snap, &s.acls, principal.as_deref());
    let tasks_of = |fw: &str, tasks: &[crate::leader::TaskView]| -> Vec<serde_json::Value> {
        tasks
            .iter()
            .filter(|t| t.framework_id == fw)
            .map(|t| {
                json!({
                    "id": t.id, "name": t.name, "framework_id": t.framework_id,
                    "slave_id": t.agent_id, "state": t.state,
                    "resources": v0_resources(&t.resources),
                })
            })
            .collect()
    };
    let frameworks: Vec<serde_json::Value> = snap
        .frameworks
        .iter()
        .map(|f| {
            json!({
                "id": f.id, "name": f.name, "role": f.role, "active": f.active,
                "principal": f.principal,
                "tasks": tasks_of(&f.id, &snap.tasks),
                "completed_tasks": tasks_of(&f.id, &snap.completed_tasks),
            })
        })
        .collect();
    let slaves: Vec<serde_json::Value> = snap
        .agents
        .iter()
        .map(|a| {
            json!({
                "id": a.id, "hostname": a.hostname, "port": a.port, "active": a.active,
                "resources": v0_resources(&a.resources),
                "used_resources": v0_resources(&a.used_resources),
                "offered_resources": v0_resources(&a.offered_resources),
                "attributes": a.attributes.iter().cloned().collect::<serde_json::Map<_, _>>(),
            })
        })
        .collect();
    Json(json!({
        "version": cairn_api::VERSION,
        "activated_slaves": snap.agents.iter().filter(|a| a.active).count(),
        "frameworks": frameworks,
        "slaves": slaves,
    }))
}

fn v0_resources(text: &str) -> serde_json::Value {
    let Ok(r) = cairn_api::Resources::parse(text) else {
        return json!({});
    };
    let mut out = serde_json::Map::new();
    for kind in ["cpus", "mem", "disk", "gpus"] {
        out.insert(kind.into(), json!(r.scalar(kind)));
    }
    if let Some(ports) = r.ranges("ports") {
        let items: Vec<String> = ports.iter().map(|(b, e)| format!("{b}-{e}")).collect();
        out.insert("ports".into(), json!(format!("[{}]", items.join(", "))));
    }
    serde_json::Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn health_says_what_is_true_of_the_registry_and_the_leader() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("registry"), 1).unwrap();
        registry
            .wait_for_leadership(Duration::from_secs(10))
            .await
            .unwrap();
        let leader = crate::leader::Leader::spawn(Default::default(), registry.clone());
        assert_eq!(healthy(&leader, &registry).await, Ok(()));
        registry.stop();
        let why = healthy(&leader, &registry).await.unwrap_err();
        assert!(why.contains("raft thread has stopped"), "{why}");
    }
}
