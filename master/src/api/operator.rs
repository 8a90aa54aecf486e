//! A subset of Mesos' v1 operator API, `POST /api/v1`: reads answer from the leader's
//! published snapshot; UPDATE_WEIGHTS, UPDATE_QUOTA and TEARDOWN go through the
//! leader (and the registry). Responses use Mesos' JSON shapes.

use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use cairn_api::internal::{RoleQuota, RoleWeight};
use serde_json::{Value, json};

use super::{Caller, refuse};
use crate::audit::{Audit, Outcome};
use crate::authz::{Action, Entity};
use crate::error::{CallError, QuantityProblem};
use crate::leader::{Input, LeaderHandle, MasterSnapshot, OperatorCall};

/// Mesos' `{"cpus": {"value": 10}, ...}` map of scalar quantities, as resources text.
fn quantities(v: &Value, field: &'static str) -> Result<String, QuantityProblem> {
    let Some(map) = v.as_object() else {
        return if v.is_null() {
            Ok(String::new())
        } else {
            Err(QuantityProblem::NotAnObject { field })
        };
    };
    let mut parts = Vec::new();
    for (name, q) in map {
        let value = q["value"]
            .as_f64()
            .ok_or_else(|| QuantityProblem::NotANumber {
                field,
                name: name.clone(),
            })?;
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
    pub(crate) registry: crate::registry::Registry,
    pub(crate) flags: std::sync::Arc<Vec<(String, String)>>,
    pub(crate) audit: Audit,
    pub(crate) acls: std::sync::Arc<crate::authz::Acls>,
}

pub(super) async fn operator(
    State(state): State<OperatorState>,
    Extension(Caller(principal)): Extension<Caller>,
    body: Bytes,
) -> Response {
    let call: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return refuse(CallError::InvalidJson(e)),
    };
    let Some(kind) = call["type"].as_str() else {
        return refuse(CallError::NoCallType);
    };
    if kind == "GET_HEALTH" {
        let healthy = super::http::healthy(&state.leader, &state.registry).await;
        if let Err(why) = &healthy {
            tracing::warn!(why, "GET_HEALTH: unhealthy");
        }
        let health = json!({"healthy": healthy.is_ok()});
        return Json(json!({"type": kind, "get_health": health})).into_response();
    }
    let snap = state.leader.fresh_snapshot().await;
    let snap = super::views::visible(snap, &state.acls, principal.as_deref());
    let snap = match kind {
        "GET_QUOTA" => super::views::quotas_visible(snap, &state.acls, principal.as_deref()),
        "GET_FLAGS" => {
            let flags = Entity::ANY;
            if let Err(refused) =
                (state.acls).check(principal.as_deref(), Action::ViewFlags, &flags)
            {
                return refuse(CallError::Unauthorized(refused));
            }
            snap
        }
        _ => snap,
    };
    if let Some(answer) = read(kind, &snap, &state.flags) {
        return answer;
    }
    let answer = match write(kind, &call, principal.clone(), &state.leader).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => refuse(e),
    };
    let outcome = Outcome::of(answer.status());
    (state.audit).record(principal.as_deref(), kind, &target_of(kind, &call), outcome);
    answer
}

/// The read calls, answered from the snapshot; `None` if `kind` is not one.
fn read(kind: &str, snap: &MasterSnapshot, flags: &[(String, String)]) -> Option<Response> {
    let answer = match kind {
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
        "GET_FLAGS" => Json(json!({"type": kind, "get_flags": {"flags": flags.iter()
            .map(|(name, value)| json!({"name": name, "value": value})).collect::<Vec<_>>()}}))
        .into_response(),
        "GET_MASTER" => Json(json!({"type": kind, "get_master": {"master_info": {"version": cairn_api::VERSION}}})).into_response(),
        _ => return None,
    };
    Some(answer)
}

/// The write calls, which go through the leader (and the registry).
async fn write(
    kind: &str,
    call: &Value,
    principal: Option<String>,
    leader: &LeaderHandle,
) -> Result<(), CallError> {
    let call = match kind {
        "UPDATE_WEIGHTS" => {
            let infos = call["update_weights"]["weight_infos"].as_array().ok_or(
                CallError::OperatorCallNeeds {
                    call: "UPDATE_WEIGHTS",
                    path: "update_weights.weight_infos",
                },
            )?;
            let mut weights = Vec::new();
            for w in infos {
                let (Some(role), Some(weight)) = (w["role"].as_str(), w["weight"].as_f64()) else {
                    return Err(CallError::MalformedWeightInfo);
                };
                weights.push(RoleWeight {
                    role: role.to_owned(),
                    weight,
                });
            }
            OperatorCall::UpdateWeights(weights)
        }
        "UPDATE_QUOTA" => {
            let configs = call["update_quota"]["quota_configs"].as_array().ok_or(
                CallError::OperatorCallNeeds {
                    call: "UPDATE_QUOTA",
                    path: "update_quota.quota_configs",
                },
            )?;
            let quotas = configs
                .iter()
                .map(quota_config)
                .collect::<Result<Vec<_>, _>>()?;
            OperatorCall::UpdateQuota(quotas)
        }
        "MARK_AGENT_GONE" => {
            let agent_id = call["mark_agent_gone"]["agent_id"]["value"]
                .as_str()
                .ok_or(CallError::OperatorCallNeeds {
                    call: "MARK_AGENT_GONE",
                    path: "mark_agent_gone.agent_id.value",
                })?
                .to_owned();
            OperatorCall::MarkAgentGone { agent_id }
        }
        "TEARDOWN" => {
            let framework_id = call["teardown"]["framework_id"]["value"]
                .as_str()
                .ok_or(CallError::OperatorCallNeeds {
                    call: "TEARDOWN",
                    path: "teardown.framework_id.value",
                })?
                .to_owned();
            OperatorCall::Teardown { framework_id }
        }
        other => {
            return Err(CallError::UnsupportedOperatorCall {
                call_type: other.to_owned(),
            });
        }
    };
    (leader)
        .ask(|reply| Input::Operator {
            call,
            principal,
            reply,
        })
        .await
}

/// What a write names, for the audit log: roles, an agent or a framework.
fn target_of(kind: &str, call: &Value) -> String {
    let roles = |list: &Value, key: &str| -> String {
        let roles = list.as_array().into_iter().flatten();
        let names: Vec<&str> = roles.filter_map(|r| r[key].as_str()).collect();
        names.join(",")
    };
    match kind {
        "UPDATE_WEIGHTS" => roles(&call["update_weights"]["weight_infos"], "role"),
        "UPDATE_QUOTA" => roles(&call["update_quota"]["quota_configs"], "role"),
        "MARK_AGENT_GONE" => call["mark_agent_gone"]["agent_id"]["value"].to_string(),
        "TEARDOWN" => call["teardown"]["framework_id"]["value"].to_string(),
        _ => String::new(),
    }
}

/// One of UPDATE_QUOTA's `quota_configs`, as a role's quota in resources text.
fn quota_config(c: &Value) -> Result<RoleQuota, CallError> {
    let role = c["role"]
        .as_str()
        .ok_or(CallError::QuotaConfigWithoutRole)?;
    let malformed = |problem| CallError::MalformedQuotaConfig {
        role: role.to_owned(),
        problem,
    };
    // Guarantees are checked first: their problem is the one reported.
    let guarantee = quantities(&c["guarantees"], "guarantees");
    let limit = quantities(&c["limits"], "limits");
    Ok(RoleQuota {
        role: role.to_owned(),
        guarantee: guarantee.map_err(malformed)?,
        limit: limit.map_err(malformed)?,
    })
}
