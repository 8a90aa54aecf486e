//! The Mesos v1 scheduler HTTP API, `POST /api/v1/scheduler`: the same calls and events
//! as the gRPC service, in Mesos' JSON. SUBSCRIBE answers with a RecordIO stream of
//! events and a `Mesos-Stream-Id` header; every other call must carry that header and
//! is answered `202 Accepted`, or a 4xx saying why.

use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cairn_api::json::{from_json, to_json};
use cairn_api::v1::{Call, call};
use futures::StreamExt as _;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Caller, refuse, subscribe_info, urgent};
use crate::audit::{Audit, Outcome};
use crate::error::CallError;
use crate::leader::{Input, LeaderHandle};
use crate::rate_limits::Limiter;

const STREAM_ID: &str = "Mesos-Stream-Id";

/// One RecordIO record: the length of the JSON in bytes, a newline, the JSON.
fn record(json: String) -> Bytes {
    Bytes::from(format!("{}\n{json}", json.len()))
}

pub(super) async fn scheduler(
    State((leader, audit, limiter)): State<(LeaderHandle, Audit, Arc<Limiter>)>,
    Extension(Caller(principal)): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if !content_type.starts_with("application/json") {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type {content_type} is not supported: send application/json\n"),
        )
            .into_response();
    }
    let call: Call = match from_json(&body) {
        Ok(c) => c,
        Err(e) => return refuse(CallError::UnparsableCall(e)),
    };
    let (kind, target) = super::audited(&call);
    let answer = if let Err(e) = limiter.admit(principal.as_deref(), urgent(&call)).await {
        super::slow_down(&e).await;
        refuse(e)
    } else if call.r#type == call::Type::Subscribe as i32 {
        let authorization = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
        let token = cairn_api::authn::tokens::id_in_header(authorization);
        subscribe(leader, call, principal.clone(), token).await
    } else {
        send(leader, &headers, call, principal.clone()).await
    };
    let outcome = Outcome::of(answer.status());
    audit.record(principal.as_deref(), kind, &target, outcome);
    answer
}

async fn send(
    leader: LeaderHandle,
    headers: &HeaderMap,
    call: Call,
    principal: Option<String>,
) -> Response {
    let stream_id = headers
        .get(STREAM_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match leader
        .ask(|reply| Input::Call {
            call: Box::new(call),
            stream_id,
            principal,
            reply,
        })
        .await
    {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => {
            super::slow_down(&e).await;
            refuse(e)
        }
    }
}

async fn subscribe(
    leader: LeaderHandle,
    call: Call,
    principal: Option<String>,
    token: Option<String>,
) -> Response {
    let info = match subscribe_info(call) {
        Ok(info) => info,
        Err(e) => return refuse(e),
    };
    let (tx, rx) = mpsc::channel(crate::STREAM_BUFFER);
    let stream_id = match leader
        .ask(|reply| Input::Subscribe {
            info: Box::new(info),
            principal,
            token,
            events: tx,
            reply,
        })
        .await
    {
        Ok(id) => id,
        Err(e) => return refuse(e),
    };
    // The stream ends when the leader drops the framework's sender (teardown, failover
    // to a newer subscription) or reports an error on it.
    let hangup = super::Hangup::new(leader, &stream_id);
    let events = ReceiverStream::new(rx)
        .inspect(move |_| {
            let _ = &hangup;
        })
        .take_while(|e| std::future::ready(e.is_ok()))
        .filter_map(|e| {
            std::future::ready(
                e.ok()
                    .map(|ev| Ok::<_, std::convert::Infallible>(record(to_json(&ev)))),
            )
        });
    let mut response = Response::new(Body::from_stream(events));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&stream_id) {
        headers.insert(STREAM_ID, v);
    }
    response
}
