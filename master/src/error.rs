//! The master's errors. [`CallError`] is every refusal a scheduler, agent or operator
//! can get back; [`CallError::http_status`] and [`CallError::grpc_code`] read the one
//! table that maps it to Mesos' HTTP status codes and to gRPC codes. [`InvalidTask`]
//! and [`InvalidOffers`] are not refusals of a call: they become the message of the
//! TASK_ERROR or TASK_DROPPED update the master sends for an ACCEPT.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::http::StatusCode;
use cairn_api::{Resources, ResourcesError};
use thiserror::Error;

use crate::registry::RegistryError;

/// Why a scheduler, agent or operator request was refused. Each variant carries the
/// ids it concerns; the texts are what Mesos clients and our end-to-end tests read, so
/// they change only with both.
#[derive(Debug, Error)]
pub enum CallError {
    // The call itself is malformed: 400, INVALID_ARGUMENT.
    #[error("cannot parse the call: {0}")]
    UnparsableCall(cairn_api::json::JsonError),
    #[error("cannot parse the call: invalid JSON: {0}")]
    InvalidJson(serde_json::Error),
    #[error("the call has no \"type\"")]
    NoCallType,
    #[error("call type {call_type} is not supported")]
    UnsupportedCall { call_type: &'static str },
    #[error("operator call {call_type:?} is not supported")]
    UnsupportedOperatorCall { call_type: String },
    #[error("call has no framework_id")]
    NoFrameworkId,
    #[error("call has no Mesos-Stream-Id")]
    NoStreamId,
    /// A scheduler call without the message its type needs, e.g. ACCEPT without `accept`.
    #[error("{call} without `{field}`")]
    WithoutMessage {
        call: &'static str,
        field: &'static str,
    },
    /// A call without a nested field it needs, e.g. SUBSCRIBE without
    /// subscribe.framework_info.
    #[error("{call} without {path}")]
    WithoutField {
        call: &'static str,
        path: &'static str,
    },
    /// An operator call without a field it needs.
    #[error("{call} needs {path}")]
    OperatorCallNeeds {
        call: &'static str,
        path: &'static str,
    },
    #[error("each weight_info needs a string role and a numeric weight")]
    MalformedWeightInfo,
    #[error("each quota_config needs a role")]
    QuotaConfigWithoutRole,
    #[error("quota for role {role}: {problem}")]
    MalformedQuotaConfig {
        role: String,
        problem: QuantityProblem,
    },
    #[error("Subscribe takes a SUBSCRIBE call")]
    NotSubscribe,
    #[error("SUBSCRIBE goes to Subscribe, not Send")]
    SubscribeOnSend,
    #[error("framework_id and subscribe.framework_info.id differ")]
    SubscribeIdsDiffer {
        framework_id: String,
        info_id: String,
    },
    #[error("update_framework.framework_info.id differs from framework_id")]
    UpdateFrameworkIdDiffers {
        framework_id: String,
        info_id: String,
    },
    #[error("framework_info.name must not be empty")]
    FrameworkWithoutName,
    /// A field Mesos does not let UPDATE_FRAMEWORK or a failover change (principal,
    /// user): grants were checked against it, and agents run tasks as it.
    #[error(
        "Updating 'FrameworkInfo.{field}' is unsupported; attempted to update from '{from}' to '{to}'"
    )]
    ImmutableChanged {
        field: &'static str,
        from: String,
        to: String,
    },
    #[error("'FrameworkInfo.role' and 'FrameworkInfo.roles' may not both be set")]
    RoleAndRoles,
    #[error("role {role:?} is invalid: {why}")]
    InvalidRole { role: String, why: &'static str },
    #[error("weight {weight} for role {role} must be a positive number")]
    InvalidWeight { role: String, weight: f64 },
    /// A quota's guarantee or limit (`part`) is not valid resources text.
    #[error("quota for role {role}: {part}: {error}")]
    UnparsableQuota {
        role: String,
        part: &'static str,
        error: ResourcesError,
    },
    #[error("quota for role {role}: guarantee {kind}:{guarantee} exceeds limit {kind}:{limit}")]
    QuotaAboveLimit {
        role: String,
        kind: &'static str,
        guarantee: f64,
        limit: f64,
    },
    #[error("the role '*' cannot have a quota")]
    QuotaForDefaultRole,
    #[error("acknowledge.uuid must be 16 bytes")]
    BadAcknowledgementUuid {
        framework_id: String,
        task_id: String,
        len: usize,
    },
    // Too many calls held back: 429, RESOURCE_EXHAUSTED.
    #[error(
        "principal {principal} already has {capacity} calls waiting (its --rate-limits \
         capacity); slow down"
    )]
    Throttled { principal: String, capacity: u64 },
    #[error("message of {size} bytes exceeds the {limit}-byte limit")]
    MessageTooLarge {
        framework_id: String,
        agent_id: String,
        size: usize,
        limit: usize,
    },
    #[error("agent resources: {0}")]
    AgentResources(ResourcesError),
    #[error("agent registered without a hostname")]
    AgentWithoutHostname,
    #[error("agent id {agent_id:?} is not a valid id")]
    InvalidAgentId { agent_id: String },
    #[error("stream ended before the agent registered")]
    AgentStreamEndedEarly,
    #[error("the first message on an agent stream must be a registration")]
    AgentFirstMessageNotRegister,
    #[error("registration without agent info")]
    AgentWithoutInfo,
    // The peer must upgrade first: 400, FAILED_PRECONDITION.
    #[error("agent version {agent_version} does not match master version {master_version}")]
    AgentVersionMismatch {
        agent_version: String,
        master_version: &'static str,
    },

    // What the call names does not exist: 404, NOT_FOUND.
    #[error("framework {framework_id} is unknown to this master: subscribe without an id")]
    FrameworkUnknownToMaster { framework_id: String },
    #[error("framework {framework_id} is not subscribed")]
    FrameworkNotSubscribed { framework_id: String },
    #[error("framework {framework_id} is unknown")]
    UnknownFramework { framework_id: String },
    #[error("framework {framework_id} has no executor {executor_id} on agent {agent_id}")]
    UnknownExecutor {
        framework_id: String,
        executor_id: String,
        agent_id: String,
    },
    #[error("agent {agent_id} is unknown")]
    UnknownAgent { agent_id: String },

    // The caller may not do this: 403, PERMISSION_DENIED.
    #[error("stream id {stream_id} is not framework {framework_id}'s current stream")]
    NotCurrentStream {
        framework_id: String,
        stream_id: String,
    },
    #[error("framework {framework_id} is not connected")]
    FrameworkNotConnected { framework_id: String },
    /// Mesos' text and status (400) for a SUBSCRIBE.
    #[error(
        "Failed to validate scheduler::Call: Authenticated principal '{principal}' does not \
         match principal '{info_principal}' set in `FrameworkInfo`"
    )]
    PrincipalMismatch {
        principal: String,
        info_principal: String,
    },
    /// Mesos' text and status (400) for any other scheduler call.
    #[error(
        "Authenticated principal '{principal}' does not match principal \
         '{framework_principal}' set in `FrameworkInfo`"
    )]
    CallPrincipalMismatch {
        principal: String,
        framework_principal: String,
    },
    #[error("agent {agent_id} was registered by another principal than '{principal}'")]
    NotAgentsPrincipal { agent_id: String, principal: String },
    #[error("framework {framework_id} was registered by another principal than '{principal}'")]
    NotFrameworksPrincipal {
        framework_id: String,
        principal: String,
    },
    #[error(
        "agent {agent_id} was marked gone by the operator and may not register again; \
         start it on a fresh work dir to join as a new agent"
    )]
    AgentMarkedGone { agent_id: String },
    /// The master's `--acls` do not allow it.
    #[error(transparent)]
    Unauthorized(#[from] crate::authz::Refused),

    // The master cannot serve it now; a retry may succeed: 503, UNAVAILABLE.
    #[error("subscription stream closed")]
    SubscriptionClosed { framework_id: String },
    #[error("agent stream closed during registration")]
    AgentStreamClosed { agent_id: String },
    #[error("the master is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Registry(#[from] RegistryError),

    // Our own fault: 500, INTERNAL.
    #[error("stream id is not valid metadata")]
    StreamIdNotMetadata,
}

/// What is wrong with one of Mesos' `{"cpus": {"value": 10}}` quantity maps.
#[derive(Debug, Error)]
pub enum QuantityProblem {
    #[error("{field} must be an object")]
    NotAnObject { field: &'static str },
    #[error("{field}.{name}.value must be a number")]
    NotANumber { field: &'static str, name: String },
}

impl CallError {
    /// Whether the call came from no live subscription of its framework (not
    /// subscribed, not connected, an old or missing stream id), or over its
    /// principal's rate: what a crashed or hostile scheduler repeats in a loop.
    pub(crate) fn is_answered_late(&self) -> bool {
        matches!(
            self,
            CallError::Throttled { .. }
                | CallError::FrameworkNotSubscribed { .. }
                | CallError::FrameworkNotConnected { .. }
                | CallError::NotCurrentStream { .. }
                | CallError::NoStreamId
        )
    }

    /// The one table from a refusal to its HTTP status (Mesos' codes) and gRPC code.
    fn codes(&self) -> (StatusCode, tonic::Code) {
        use CallError::*;
        const INVALID: (StatusCode, tonic::Code) =
            (StatusCode::BAD_REQUEST, tonic::Code::InvalidArgument);
        const NOT_FOUND: (StatusCode, tonic::Code) = (StatusCode::NOT_FOUND, tonic::Code::NotFound);
        const FORBIDDEN: (StatusCode, tonic::Code) =
            (StatusCode::FORBIDDEN, tonic::Code::PermissionDenied);
        const UNAVAILABLE: (StatusCode, tonic::Code) =
            (StatusCode::SERVICE_UNAVAILABLE, tonic::Code::Unavailable);
        match self {
            UnparsableCall(_)
            | InvalidJson(_)
            | NoCallType
            | UnsupportedCall { .. }
            | UnsupportedOperatorCall { .. }
            | NoFrameworkId
            | NoStreamId
            | WithoutMessage { .. }
            | WithoutField { .. }
            | OperatorCallNeeds { .. }
            | MalformedWeightInfo
            | QuotaConfigWithoutRole
            | MalformedQuotaConfig { .. }
            | NotSubscribe
            | SubscribeOnSend
            | SubscribeIdsDiffer { .. }
            | UpdateFrameworkIdDiffers { .. }
            | FrameworkWithoutName
            | ImmutableChanged { .. }
            | RoleAndRoles
            | PrincipalMismatch { .. }
            | CallPrincipalMismatch { .. }
            | InvalidRole { .. }
            | InvalidWeight { .. }
            | UnparsableQuota { .. }
            | QuotaAboveLimit { .. }
            | QuotaForDefaultRole
            | BadAcknowledgementUuid { .. }
            | MessageTooLarge { .. }
            | AgentResources(_)
            | AgentWithoutHostname
            | InvalidAgentId { .. }
            | AgentStreamEndedEarly
            | AgentFirstMessageNotRegister
            | AgentWithoutInfo => INVALID,
            AgentVersionMismatch { .. } => {
                (StatusCode::BAD_REQUEST, tonic::Code::FailedPrecondition)
            }
            FrameworkUnknownToMaster { .. }
            | FrameworkNotSubscribed { .. }
            | UnknownFramework { .. }
            | UnknownExecutor { .. }
            | UnknownAgent { .. } => NOT_FOUND,
            NotCurrentStream { .. }
            | FrameworkNotConnected { .. }
            | NotFrameworksPrincipal { .. }
            | NotAgentsPrincipal { .. }
            | AgentMarkedGone { .. }
            | Unauthorized(_) => FORBIDDEN,
            SubscriptionClosed { .. } | AgentStreamClosed { .. } | ShuttingDown | Registry(_) => {
                UNAVAILABLE
            }
            Throttled { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                tonic::Code::ResourceExhausted,
            ),
            StreamIdNotMetadata => (StatusCode::INTERNAL_SERVER_ERROR, tonic::Code::Internal),
        }
    }

    /// The HTTP status of the Mesos APIs for this refusal.
    pub fn http_status(&self) -> StatusCode {
        self.codes().0
    }

    /// The gRPC code for this refusal.
    pub fn grpc_code(&self) -> tonic::Code {
        self.codes().1
    }
}

impl From<CallError> for tonic::Status {
    fn from(e: CallError) -> Self {
        tonic::Status::new(e.grpc_code(), e.to_string())
    }
}

/// Why a task of an ACCEPT is refused: the message of its TASK_ERROR update
/// (REASON_TASK_INVALID, or REASON_TASK_GROUP_INVALID for its whole group).
#[derive(Debug, Clone, Error)]
pub(crate) enum InvalidTask {
    #[error("task id {task_id:?} must be 1-255 characters of [A-Za-z0-9._-]")]
    UnsafeTaskId { task_id: String },
    #[error("task id {task_id} is already in use")]
    TaskIdInUse { task_id: String },
    #[error("task {task_id} names agent {named} but the offer is for {agent_id}")]
    OtherAgent {
        task_id: String,
        named: String,
        agent_id: String,
    },
    #[error("task {task_id}: {error}")]
    Resources {
        task_id: String,
        error: ResourcesError,
    },
    #[error("task {task_id} asks for no cpus and no mem")]
    NoCpusNoMem { task_id: String },
    #[error("task {task_id} needs {needed} ({why}); the offers have {remaining} left")]
    BeyondOffers {
        task_id: String,
        needed: Resources,
        /// What the charge is made of.
        why: String,
        remaining: Resources,
    },
    #[error("task {task_id}: {why}")]
    Executor { task_id: String, why: String },
    /// Its launch is not allowed by the master's `--acls` (REASON_TASK_UNAUTHORIZED).
    #[error("task {task_id} is not authorized to launch: {refused}")]
    Unauthorized {
        task_id: String,
        refused: crate::authz::Refused,
    },
    #[error("task {task_id} has neither a command nor an executor")]
    NoCommandNoExecutor { task_id: String },
    #[error("task {task_id} has both a command and an executor; give exactly one")]
    CommandAndExecutor { task_id: String },
    #[error("task {task_id}: executor id {executor_id:?} is empty or not a safe id")]
    UnsafeExecutorId {
        task_id: String,
        executor_id: String,
    },
    #[error("task {task_id}: executor {executor_id} has no command naming its component")]
    ExecutorWithoutCommand {
        task_id: String,
        executor_id: String,
    },
}

/// Why the offers of an ACCEPT cannot be used: the message of the TASK_DROPPED update
/// (REASON_INVALID_OFFERS) each of its tasks gets.
#[derive(Debug, Clone, Error)]
pub(crate) enum InvalidOffers {
    /// Unknown, rescinded, already used or another framework's.
    #[error("offer {offer_id} is no longer valid")]
    NoLongerValid { offer_id: String },
    #[error("offers span more than one agent or role")]
    SpanAgentsOrRoles { offer_id: String },
    #[error("ACCEPT names no offers")]
    NoOffers,
}

/// Why the master could not start or stopped serving.
#[derive(Debug, Error)]
pub enum MasterError {
    #[error("opening the registry in {}", .dir.display())]
    OpenRegistry {
        dir: PathBuf,
        #[source]
        source: RegistryError,
    },
    #[error("electing this master")]
    Election(#[source] RegistryError),
    #[error("binding {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving the master API")]
    Serve(#[source] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_mesos_status_codes() {
        let cases = [
            (CallError::NoStreamId, 400, tonic::Code::InvalidArgument),
            (
                CallError::FrameworkNotSubscribed {
                    framework_id: "f".into(),
                },
                404,
                tonic::Code::NotFound,
            ),
            (
                CallError::NotCurrentStream {
                    framework_id: "f".into(),
                    stream_id: "s".into(),
                },
                403,
                tonic::Code::PermissionDenied,
            ),
            (CallError::ShuttingDown, 503, tonic::Code::Unavailable),
            (
                CallError::Registry(RegistryError::NotLeader),
                503,
                tonic::Code::Unavailable,
            ),
        ];
        for (error, http, grpc) in cases {
            assert_eq!(error.http_status().as_u16(), http, "{error}");
            assert_eq!(error.grpc_code(), grpc, "{error}");
            let status = tonic::Status::from(error);
            assert_eq!(status.code(), grpc);
        }
    }

    #[test]
    fn messages_name_the_ids() {
        let e = CallError::UnknownExecutor {
            framework_id: "fw-1".into(),
            executor_id: "ex-2".into(),
            agent_id: "ag-3".into(),
        };
        assert_eq!(
            e.to_string(),
            "framework fw-1 has no executor ex-2 on agent ag-3"
        );
        let e = CallError::InvalidRole {
            role: "a b".into(),
            why: "it contains whitespace, a control character or '*'",
        };
        assert_eq!(
            e.to_string(),
            "role \"a b\" is invalid: it contains whitespace, a control character or '*'"
        );
    }
}
