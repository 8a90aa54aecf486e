use thiserror::Error;

/// Why a scheduler or agent request was refused. One mapping turns it into a gRPC
/// status here and, with the HTTP API, into a 4xx.
#[derive(Debug, Error)]
pub enum CallError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unavailable(String),
}

impl From<CallError> for tonic::Status {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Invalid(m) => tonic::Status::invalid_argument(m),
            CallError::NotFound(m) => tonic::Status::not_found(m),
            CallError::Forbidden(m) => tonic::Status::permission_denied(m),
            CallError::Unavailable(m) => tonic::Status::unavailable(m),
        }
    }
}

impl From<crate::registry::RegistryError> for CallError {
    fn from(e: crate::registry::RegistryError) -> Self {
        CallError::Unavailable(e.to_string())
    }
}
