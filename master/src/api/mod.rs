//! The master's network APIs: gRPC for agents and schedulers, HTTP for people and
//! tools, served together on one port.

mod agents;
mod http;
mod mesos_http;
mod operator;
mod scheduler;
mod tokens;
mod views;

pub(crate) use tokens::RegistryTokens;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use cairn_api::internal::agent_registry_server::AgentRegistryServer;
use cairn_api::v1::scheduler_server::SchedulerServer;
use cairn_api::v1::{Call, FrameworkInfo};

use crate::audit::{Audit, Outcome};
use crate::authn::{Authentication, Realm, Unauthenticated};
use crate::error::CallError;
use crate::leader::LeaderHandle;
use crate::rate_limits::Limiter;
use crate::registry::Registry;

/// Large enough for a big task list on agent re-registration; bounded so one peer
/// cannot make the master buffer without limit.
const MAX_MESSAGE_BYTES: usize = 16 << 20;

pub(crate) fn router(
    leader: LeaderHandle,
    registry: Registry,
    flags: Vec<(String, String)>,
    auth: Authentication,
    acls: std::sync::Arc<crate::authz::Acls>,
    limiter: std::sync::Arc<Limiter>,
) -> Router {
    let audit = Audit::default();
    let scheduler = scheduler::SchedulerService::new(
        leader.clone(),
        auth.clone(),
        audit.clone(),
        limiter.clone(),
    );
    let agents = agents::AgentService::new(leader.clone(), auth.clone(), audit.clone());
    let grpc = tonic::service::Routes::new(
        AgentRegistryServer::new(agents).max_decoding_message_size(MAX_MESSAGE_BYTES),
    )
    .add_service(SchedulerServer::new(scheduler).max_decoding_message_size(MAX_MESSAGE_BYTES))
    .into_axum_router();
    let realm = |realm| (auth.clone(), realm, audit.clone());
    let scheduler_http = Router::new()
        .route(
            "/api/v1/scheduler",
            axum::routing::post(mesos_http::scheduler),
        )
        .with_state((leader.clone(), audit.clone(), limiter.clone()))
        .layer(from_fn_with_state(realm(Realm::Scheduler), authenticate));
    let operator_http = Router::new()
        .route("/api/v1", axum::routing::post(operator::operator))
        .with_state(operator::OperatorState {
            leader: leader.clone(),
            registry: registry.clone(),
            flags: std::sync::Arc::new(flags),
            audit: audit.clone(),
            acls: acls.clone(),
        })
        .layer(from_fn_with_state(realm(Realm::ReadWrite), authenticate));
    let tokens_http = tokens::router(tokens::TokensState {
        registry: registry.clone(),
        leader: leader.clone(),
        audit: audit.clone(),
    })
    .layer(from_fn_with_state(realm(Realm::ReadWrite), authenticate));
    http::router(leader, registry, acls, limiter, realm(Realm::ReadOnly))
        .merge(scheduler_http)
        .merge(operator_http)
        .merge(tokens_http)
        .merge(grpc)
        .fallback(http::not_found)
}

/// Who called, as the request's realm authenticated it (`None`: the realm asks no
/// one); handlers read it as an extension.
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub Option<String>);

/// Refuses callers of the realm who do not authenticate (401) and tells the handler
/// who the others are; a layer, with its realm as state.
pub(super) async fn authenticate(
    State((auth, realm, audit)): State<(Authentication, Realm, Audit)>,
    mut request: Request,
    next: Next,
) -> Response {
    let header = request.headers().get(header::AUTHORIZATION);
    match auth.principal(realm, header.map(HeaderValue::as_bytes)) {
        Ok(principal) => {
            request.extensions_mut().insert(Caller(principal));
            next.run(request).await
        }
        Err(e) => {
            let call = format!("{} {}", request.method(), request.uri().path());
            audit.record(None, &call, "-", Outcome::Unauthenticated);
            unauthenticated(e)
        }
    }
}

/// A scheduler call's type and the framework it names, for the audit log (`new`: a
/// SUBSCRIBE naming none).
fn audited(call: &Call) -> (&'static str, String) {
    let kind = cairn_api::v1::call::Type::try_from(call.r#type)
        .unwrap_or(cairn_api::v1::call::Type::Unknown)
        .as_str_name();
    let named = call.framework_id.as_ref().or_else(|| {
        let info = call.subscribe.as_ref()?.framework_info.as_ref()?;
        info.id.as_ref()
    });
    let target = named.map_or_else(|| "new".to_owned(), |id| id.value.clone());
    (kind, target)
}

/// 401 as Mesos' basic authenticator answers it, with the reason in the body.
fn unauthenticated(e: Unauthenticated) -> Response {
    let challenge = HeaderValue::from_str(&e.challenge());
    let headers = challenge.map(|v| [(header::WWW_AUTHENTICATE, v)]).ok();
    (StatusCode::UNAUTHORIZED, headers, format!("{e}\n")).into_response()
}

/// How long a call from no live subscription, or over its principal's rate limit,
/// waits for its refusal. A scheduler that loops on such refusals (crashed, or
/// hostile) is slowed to a few calls a second per connection instead of taking the
/// leader's time from the others; the wait costs the master a timer, and an honest
/// scheduler meets it only once, when it learns its subscription is gone or that it
/// calls too fast.
const LATE_REFUSAL_DELAY: std::time::Duration = std::time::Duration::from_millis(200);

/// Waits [`LATE_REFUSAL_DELAY`] before `e` is answered, where it is answered late.
async fn slow_down(e: &CallError) {
    if e.is_answered_late() {
        tokio::time::sleep(LATE_REFUSAL_DELAY).await;
    }
}

/// Tells the leader when a subscription's event stream is dropped (the scheduler hung
/// up), as Mesos notices an HTTP framework's closed connection: without it, offers
/// to a framework that has gone would be held until the next event to it failed.
/// Carried by the stream, so it goes when the stream goes.
pub(super) struct Hangup {
    leader: LeaderHandle,
    stream_id: String,
}

impl Hangup {
    pub(super) fn new(leader: LeaderHandle, stream_id: &str) -> Self {
        Hangup {
            leader,
            stream_id: stream_id.to_owned(),
        }
    }
}

impl Drop for Hangup {
    fn drop(&mut self) {
        let input = crate::leader::Input::StreamClosed {
            stream_id: std::mem::take(&mut self.stream_id),
        };
        // A full queue (a busy leader) waits on a task; the leader's own check of
        // closed streams, each tick, catches what cannot be sent at all.
        if let Err(tokio::sync::mpsc::error::TrySendError::Full(input)) =
            self.leader.inputs.try_send(input)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let inputs = self.leader.inputs.clone();
            runtime.spawn(async move { inputs.send(input).await });
        }
    }
}

/// Whether a call goes before its principal's queued calls (see `crate::rate_limits`):
/// ACCEPT and DECLINE put offered resources to use or give them back.
fn urgent(call: &Call) -> bool {
    use cairn_api::v1::call::Type;
    [Type::Accept as i32, Type::Decline as i32].contains(&call.r#type)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_a_stale_callers_refusal_waits() {
        let start = tokio::time::Instant::now();
        slow_down(&CallError::UnsupportedCall { call_type: "X" }).await;
        assert!(start.elapsed() < LATE_REFUSAL_DELAY);
        let start = tokio::time::Instant::now();
        let stale = CallError::FrameworkNotConnected {
            framework_id: "f".into(),
        };
        slow_down(&stale).await;
        assert!(start.elapsed() >= LATE_REFUSAL_DELAY);
    }
}
