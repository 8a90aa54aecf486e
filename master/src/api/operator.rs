//! A subset of Mesos' v1 operator API, `POST /api/v1`: reads answer from the leader's
//! published snapshot; UPDATE_WEIGHTS, UPDATE_QUOTA and TEARDOWN go through the
//! leader (and the registry). Responses use Mesos' JSON shapes.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use cairn_api::internal::{RoleQuota, RoleWeight};
use serde_json::{Value, json};

use crate::error::CallError;
use crate::leader::{Input, LeaderHandle};

fn refuse(e: CallError) -> Response {
    let status = match e {
        CallError::Invalid(_) => StatusCode::BAD_REQUEST,
        CallError::NotFound(_) => StatusCode::NOT_FOUND,
        CallError::Forbidden(_) => StatusCode::FORBIDDEN,
        CallError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, format!("{e}\n")).into_response()
}

fn invalid(why: impl Into<String>) -> Response {
    refuse(CallError::Invalid(why.into()))
}

/// Mesos' `{"cpus": {"value": 10}, ...}` map of scalar quantities, as resources text.
fn quantities(v: &Value, what: &str) -> Result<String, String> {
    let Some(map) = v.as_object() else {
        return if v.is_null() {
            Ok(String::new())
        } else {
            Err(format!("{what} must be an object"))
        };
    };
    let mut parts = Vec::new();
    for (name, q) in map {
        let value = q["value"]
            .as_f64()
            .ok_or_else(|| format!("{what}.{name}.value must be a number"))?;
        parts.push(format!("{name}:{value}"));
    }
    Ok(parts.join(";"))
}

fn text_to_quantities(text: &str) -> Value {
    let mut map = serde_json::Map::new();
    if let Ok(r) = cairn_api::Resources::parse(text) {
        for kind in ["cpus", "mem", "disk", "gpus"] {
            let v = r.scalar(kind);
            if v > 0.0 {
                map.insert(kind.into(), json!({ "value": v }));
            }
        }
    }
    Value::Object(map)
}

#[derive(Clone)]
pub(crate) struct OperatorState {
    pub(crate) leader: LeaderHandle,
    pub(crate) flags: std::sync::Arc<Vec<(String, String)>>,
}

pub(super) async fn operator(State(state): State<OperatorState>, body: Bytes) -> Response {
    let leader = state.leader;
    let call: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return invalid(format!("cannot parse the call: invalid JSON: {e}")),
    };
    let Some(kind) = call["type"].as_str() else {
        return invalid("the call has no \"type\"");
    };
    let snap = leader.fresh_snapshot().await;
    match kind {
        "GET_HEALTH" => Json(json!({"type": kind, "get_health": {"healthy": true}})).into_response(),
        "GET_VERSION" => Json(json!({"type": kind, "get_version": {"version_info": {"version": cairn_api::VERSION}}}))
            .into_response(),
        "GET_FRAMEWORKS" => Json(json!({"type": kind, "get_frameworks": {"frameworks": snap.frameworks.iter().map(|f| json!({
            "framework_info": {"id": {"value": f.id}, "name": f.name, "role": f.role},
            "active": f.active, "connected": f.active,
        })).collect::<Vec<_>>()}}))
        .into_response(),
        "GET_AGENTS" => Json(json!({"type": kind, "get_agents": {"agents": snap.agents.iter().map(|a| json!({
            "agent_info": {"id": {"value": a.id}, "hostname": a.hostname, "port": a.port},
            "active": a.active, "total_resources": a.resources, "allocated_resources": a.used_resources,
        })).collect::<Vec<_>>()}}))
        .into_response(),
        "GET_TASKS" => Json(json!({"type": kind, "get_tasks": {"tasks": snap.tasks, "completed_tasks": snap.completed_tasks}}))
            .into_response(),
        "GET_STATE" => Json(json!({"type": kind, "get_state": {
            "get_tasks": {"tasks": snap.tasks, "completed_tasks": snap.completed_tasks},
            "get_frameworks": {"frameworks": snap.frameworks},
            "get_agents": {"agents": snap.agents},
        }}))
        .into_response(),
        "GET_ROLES" => Json(json!({"type": kind, "get_roles": {"roles": snap.roles.iter().map(|r| json!({
            "name": r.name, "weight": r.weight, "frameworks": r.frameworks.iter().map(|f| json!({"value": f})).collect::<Vec<_>>(),
            "allocated": r.allocated,
        })).collect::<Vec<_>>()}}))
        .into_response(),
        "GET_WEIGHTS" => Json(json!({"type": kind, "get_weights": {"weight_infos": snap.roles.iter()
            .filter(|r| r.weight != 1.0)
            .map(|r| json!({"role": r.name, "weight": r.weight})).collect::<Vec<_>>()}}))
        .into_response(),
        "GET_QUOTA" => Json(json!({"type": kind, "get_quota": {"status": {"configs": snap.roles.iter()
            .filter(|r| !r.guarantee.is_empty() || !r.limit.is_empty())
            .map(|r| json!({"role": r.name, "guarantees": text_to_quantities(&r.guarantee), "limits": text_to_quantities(&r.limit)}))
            .collect::<Vec<_>>()}}}))
        .into_response(),
        "GET_FLAGS" => Json(json!({"type": kind, "get_flags": {"flags": state.flags.iter()
            .map(|(name, value)| json!({"name": name, "value": value})).collect::<Vec<_>>()}}))
        .into_response(),
        "GET_MASTER" => Json(json!({"type": kind, "get_master": {"master_info": {"version": cairn_api::VERSION}}})).into_response(),
        "UPDATE_WEIGHTS" => {
            let Some(infos) = call["update_weights"]["weight_infos"].as_array() else {
                return invalid("UPDATE_WEIGHTS needs update_weights.weight_infos");
            };
            let mut weights = Vec::new();
            for w in infos {
                let (Some(role), Some(weight)) = (w["role"].as_str(), w["weight"].as_f64()) else {
                    return invalid("each weight_info needs a string role and a numeric weight");
                };
                weights.push(RoleWeight { role: role.to_owned(), weight });
            }
            done(leader.ask(|reply| Input::UpdateWeights { weights, reply }).await)
        }
        "UPDATE_QUOTA" => {
            let Some(configs) = call["update_quota"]["quota_configs"].as_array() else {
                return invalid("UPDATE_QUOTA needs update_quota.quota_configs");
            };
            let mut quotas = Vec::new();
            for c in configs {
                let Some(role) = c["role"].as_str() else {
                    return invalid("each quota_config needs a role");
                };
                let (guarantee, limit) = match (quantities(&c["guarantees"], "guarantees"), quantities(&c["limits"], "limits")) {
                    (Ok(g), Ok(l)) => (g, l),
                    (Err(e), _) | (_, Err(e)) => return invalid(format!("quota for role {role}: {e}")),
                };
                quotas.push(RoleQuota { role: role.to_owned(), guarantee, limit });
            }
            done(leader.ask(|reply| Input::UpdateQuota { quotas, reply }).await)
        }
        "MARK_AGENT_GONE" => {
            let Some(id) = call["mark_agent_gone"]["agent_id"]["value"].as_str() else {
                return invalid("MARK_AGENT_GONE needs mark_agent_gone.agent_id.value");
            };
            let agent_id = id.to_owned();
            done(leader.ask(|reply| Input::MarkAgentGone { agent_id, reply }).await)
        }
        "TEARDOWN" => {
            let Some(id) = call["teardown"]["framework_id"]["value"].as_str() else {
                return invalid("TEARDOWN needs teardown.framework_id.value");
            };
            let framework_id = id.to_owned();
            done(leader.ask(|reply| Input::Teardown { framework_id, reply }).await)
        }
        other => invalid(format!("operator call {other:?} is not supported")),
    }
}

fn done(result: Result<(), CallError>) -> Response {
    match result {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => refuse(e),
    }
}
