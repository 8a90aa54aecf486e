//! Bearer tokens over HTTP (Cairn's, beside Mesos' operator API; `cairn tokens`):
//! `POST /api/v1/tokens` mints one for the caller, `GET /api/v1/tokens` lists the
//! caller's, `DELETE /api/v1/tokens/{id}` revokes one of them. In the read-write
//! realm, so only an authenticated principal has tokens; minting takes the
//! principal's secret (HTTP Basic), not a token, so a stolen token cannot outlive its
//! revocation through tokens it minted.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{delete, get};
use cairn_api::authn::tokens;
use cairn_api::internal::TokenRecord;
use cairn_api::internal::registry_operation::Operation;
use cairn_api::now_secs;
use serde::Deserialize;
use serde_json::json;

use super::Caller;
use crate::audit::{Audit, Outcome};
use crate::registry::{Registry, RegistryError};

/// How long a token lives unless asked otherwise, and at most.
const DEFAULT_TTL: Duration = Duration::from_secs(30 * 86_400);
const MAX_TTL: Duration = Duration::from_secs(365 * 86_400);

#[derive(Clone)]
pub(super) struct TokensState {
    pub(super) registry: Registry,
    pub(super) leader: crate::leader::LeaderHandle,
    pub(super) audit: Audit,
}

/// The registry as the place bearer tokens are looked up.
pub(crate) struct RegistryTokens(pub(crate) Registry);

impl tokens::TokenBook for RegistryTokens {
    fn find(&self, id: &str) -> Option<TokenRecord> {
        self.0.state().tokens.get(id).cloned()
    }
}

pub(super) fn router(state: TokensState) -> Router {
    Router::new()
        .route("/api/v1/tokens", get(list).post(create))
        .route("/api/v1/tokens/{id}", delete(revoke))
        .with_state(state)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    ttl_seconds: Option<f64>,
    #[serde(default)]
    description: String,
}

fn refused(status: StatusCode, why: impl std::fmt::Display) -> Response {
    (status, format!("{why}\n")).into_response()
}

/// The caller's principal, or the 403 saying why it may not manage tokens.
fn owner(caller: &Caller) -> Result<&str, Box<Response>> {
    caller.0.as_deref().ok_or_else(|| {
        Box::new(refused(
            StatusCode::FORBIDDEN,
            "tokens belong to authenticated principals: start the master with \
             --authenticate-http-readwrite and --credentials",
        ))
    })
}

async fn create(
    State(s): State<TokensState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (answer, id) = mint(&s, &caller, &headers, &body).await;
    let outcome = Outcome::of(answer.status());
    let target = id.as_deref().unwrap_or("-");
    s.audit
        .record(caller.0.as_deref(), "CREATE_TOKEN", target, outcome);
    answer
}

async fn mint(
    s: &TokensState,
    caller: &Caller,
    headers: &HeaderMap,
    body: &[u8],
) -> (Response, Option<String>) {
    let principal = match owner(caller) {
        Ok(p) => p,
        Err(r) => return (*r, None),
    };
    let by_token = (headers.get(header::AUTHORIZATION))
        .and_then(|h| cairn_api::authn::bearer(h.as_bytes()))
        .is_some();
    if by_token {
        return (
            refused(
                StatusCode::FORBIDDEN,
                "a token cannot mint tokens: authenticate with the principal's secret",
            ),
            None,
        );
    }
    let ask: CreateToken = if body.is_empty() {
        CreateToken::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(a) => a,
            Err(e) => {
                let why = format!("cannot parse: {e}");
                return (refused(StatusCode::BAD_REQUEST, why), None);
            }
        }
    };
    let ttl = match ask.ttl_seconds {
        None => DEFAULT_TTL,
        Some(t) if t.is_finite() && t > 0.0 && t <= MAX_TTL.as_secs_f64() => {
            Duration::from_secs_f64(t)
        }
        Some(t) => {
            let why = format!("ttl_seconds must be above 0 and at most a year, not {t}");
            return (refused(StatusCode::BAD_REQUEST, why), None);
        }
    };
    if ask.description.len() > 256 {
        return (
            refused(StatusCode::BAD_REQUEST, "description: at most 256 bytes"),
            None,
        );
    }
    let now = now_secs();
    let minted = tokens::mint(principal, now, now + ttl.as_secs_f64(), &ask.description);
    let shown = view(&minted.record);
    // The registry refuses past its cap of records per principal, checked as the
    // write applies: concurrent mints cannot both slip under it.
    match s.registry.propose(Operation::AddToken(minted.record)).await {
        Ok(()) => {}
        Err(e @ RegistryError::Rejected(_)) => return (refused(StatusCode::CONFLICT, e), None),
        Err(e) => return (refused(StatusCode::SERVICE_UNAVAILABLE, e), None),
    }
    let mut shown = shown;
    shown["token"] = json!(minted.token);
    let id = shown["id"].as_str().map(str::to_owned);
    (Json(shown).into_response(), id)
}

/// A token as listed: never its secret, nor its hash.
fn view(t: &TokenRecord) -> serde_json::Value {
    json!({
        "id": t.id, "principal": t.principal, "description": t.description,
        "created_at": t.created_at, "expires_at": t.expires_at, "revoked": t.revoked,
    })
}

async fn list(State(s): State<TokensState>, Extension(caller): Extension<Caller>) -> Response {
    let principal = match owner(&caller) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let state = s.registry.state();
    let mine: Vec<_> = (state.tokens.values())
        .filter(|t| t.principal == principal)
        .map(view)
        .collect();
    Json(json!({ "tokens": mine })).into_response()
}

async fn revoke(
    State(s): State<TokensState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let answer = match owner(&caller) {
        Err(r) => *r,
        Ok(principal) => match s.registry.state().tokens.get(&id) {
            // Another's token is as good as unknown: ids are not for guessing.
            Some(t) if t.principal == principal => {
                let revoke = cairn_api::internal::RevokeToken {
                    id: id.clone(),
                    revoked_at: now_secs(),
                };
                match s.registry.propose(Operation::RevokeToken(revoke)).await {
                    Ok(()) => {
                        // Its subscriptions end too, not only its later calls.
                        let ended = crate::leader::Input::TokenRevoked { id: id.clone() };
                        let _ = s.leader.inputs.send(ended).await;
                        StatusCode::OK.into_response()
                    }
                    Err(e) => refused(StatusCode::SERVICE_UNAVAILABLE, e),
                }
            }
            _ => refused(StatusCode::NOT_FOUND, format!("no token {id} of yours")),
        },
    };
    s.audit.record(
        caller.0.as_deref(),
        "REVOKE_TOKEN",
        &id,
        Outcome::of(answer.status()),
    );
    answer
}
