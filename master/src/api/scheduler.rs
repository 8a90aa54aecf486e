use std::sync::Arc;

use cairn_api::v1::scheduler_server::Scheduler;
use cairn_api::v1::{Call, CallAccepted, Event, call};
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::audit::{Audit, Outcome};
use crate::authn::{Authentication, Realm};
use crate::error::CallError;
use crate::leader::{Input, LeaderHandle};
use crate::rate_limits::Limiter;

/// The metadata key carrying a subscription's stream id, as Mesos' HTTP header.
pub const STREAM_ID: &str = "mesos-stream-id";

/// The Mesos v1 scheduler API over gRPC: SUBSCRIBE opens the event stream, every
/// other call is a unary `Send` carrying the stream id.
pub(crate) struct SchedulerService {
    leader: LeaderHandle,
    auth: Authentication,
    audit: Audit,
    limiter: Arc<Limiter>,
}

impl SchedulerService {
    pub(crate) fn new(
        leader: LeaderHandle,
        auth: Authentication,
        audit: Audit,
        limiter: Arc<Limiter>,
    ) -> Self {
        Self {
            leader,
            auth,
            audit,
            limiter,
        }
    }

    /// Holds the call to its principal's rate (see `crate::rate_limits`).
    async fn admit(&self, principal: Option<&str>, call: &Call) -> Result<(), Status> {
        if let Err(e) = self.limiter.admit(principal, super::urgent(call)).await {
            super::slow_down(&e).await;
            return Err(e.into());
        }
        Ok(())
    }

    /// Logs a call with its outcome (see `crate::audit`).
    fn audit<T>(
        &self,
        principal: Option<&str>,
        (kind, target): (&str, String),
        result: &Result<T, Status>,
    ) {
        let outcome = match result {
            Ok(_) => Outcome::Accepted,
            Err(status) => match status.code() {
                tonic::Code::Unauthenticated => Outcome::Unauthenticated,
                tonic::Code::PermissionDenied => Outcome::Forbidden,
                tonic::Code::Unavailable | tonic::Code::Internal => Outcome::Failed,
                _ => Outcome::Refused,
            },
        };
        self.audit.record(principal, kind, &target, outcome);
    }

    /// Who calls, from the `authorization` metadata, as the HTTP API reads it.
    fn principal<T>(&self, request: &Request<T>, rpc: &str) -> Result<Option<String>, Status> {
        let header = request.metadata().get("authorization");
        let principal = self
            .auth
            .principal(Realm::Scheduler, header.map(|v| v.as_bytes()))
            .map_err(|e| Status::unauthenticated(e.to_string()));
        if principal.is_err() {
            self.audit(None, (rpc, "-".into()), &principal);
        }
        principal
    }
}

#[tonic::async_trait]
impl Scheduler for SchedulerService {
    type SubscribeStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<Event, Status>> + Send>>;

    async fn subscribe(
        &self,
        request: Request<Call>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let principal = self.principal(&request, "Subscribe")?;
        let authorization = request.metadata().get("authorization");
        let token = cairn_api::authn::tokens::id_in_header(authorization.map(|v| v.as_bytes()));
        let call = request.into_inner();
        let audited = super::audited(&call);
        let result = match self.admit(principal.as_deref(), &call).await {
            Ok(()) => self.open_stream(call, principal.clone(), token).await,
            Err(e) => Err(e),
        };
        self.audit(principal.as_deref(), audited, &result);
        result
    }

    async fn send(&self, request: Request<Call>) -> Result<Response<CallAccepted>, Status> {
        let stream_id = request
            .metadata()
            .get(STREAM_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let principal = self.principal(&request, "Send")?;
        let call = request.into_inner();
        let audited = super::audited(&call);
        let result = match self.admit(principal.as_deref(), &call).await {
            Ok(()) => self.send_call(call, stream_id, principal.clone()).await,
            Err(e) => Err(e),
        };
        self.audit(principal.as_deref(), audited, &result);
        result
    }
}

impl SchedulerService {
    async fn open_stream(
        &self,
        call: Call,
        principal: Option<String>,
        token: Option<String>,
    ) -> Result<Response<<Self as Scheduler>::SubscribeStream>, Status> {
        if call.r#type != call::Type::Subscribe as i32 {
            return Err(CallError::NotSubscribe.into());
        }
        let info = super::subscribe_info(call)?;
        let (tx, rx) = mpsc::channel(crate::STREAM_BUFFER);
        let stream_id = self
            .leader
            .ask(|reply| Input::Subscribe {
                info: Box::new(info),
                principal,
                token,
                events: tx,
                reply,
            })
            .await?;
        let hangup = super::Hangup::new(self.leader.clone(), &stream_id);
        let events = ReceiverStream::new(rx).inspect(move |_| {
            let _ = &hangup;
        });
        let mut response = Response::new(Box::pin(events) as <Self as Scheduler>::SubscribeStream);
        let value = stream_id
            .parse()
            .map_err(|_| CallError::StreamIdNotMetadata)?;
        response.metadata_mut().insert(STREAM_ID, value);
        Ok(response)
    }

    async fn send_call(
        &self,
        call: Call,
        stream_id: Option<String>,
        principal: Option<String>,
    ) -> Result<Response<CallAccepted>, Status> {
        if call.r#type == call::Type::Subscribe as i32 {
            return Err(CallError::SubscribeOnSend.into());
        }
        let sent = self.leader.ask(|reply| Input::Call {
            call: Box::new(call),
            stream_id,
            principal,
            reply,
        });
        if let Err(e) = sent.await {
            super::slow_down(&e).await;
            return Err(e.into());
        }
        Ok(Response::new(CallAccepted {}))
    }
}
