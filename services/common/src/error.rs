//! The one error taxonomy of NeuroShard services, mapped to gRPC codes and HTTP statuses here
//! and nowhere else. Messages are for the caller: they name the field or the condition, and
//! never contain secrets.

/// What kind of failure, independent of transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is malformed or violates a limit; retrying it unchanged will fail again.
    InvalidArgument,
    /// The caller's identity could not be established (bad or missing signature, key).
    Unauthenticated,
    /// The caller is known but not allowed to do this.
    PermissionDenied,
    NotFound,
    AlreadyExists,
    /// The system is not in a state that allows this (e.g. a replayed nonce, a stale span).
    FailedPrecondition,
    /// A quota or size limit was hit.
    ResourceExhausted,
    /// Try again later or elsewhere.
    Unavailable,
    DeadlineExceeded,
    /// A bug or an unexpected failure on our side.
    Internal,
}

impl ErrorKind {
    /// The gRPC status code for this kind.
    pub fn grpc_code(self) -> tonic::Code {
        match self {
            Self::InvalidArgument => tonic::Code::InvalidArgument,
            Self::Unauthenticated => tonic::Code::Unauthenticated,
            Self::PermissionDenied => tonic::Code::PermissionDenied,
            Self::NotFound => tonic::Code::NotFound,
            Self::AlreadyExists => tonic::Code::AlreadyExists,
            Self::FailedPrecondition => tonic::Code::FailedPrecondition,
            Self::ResourceExhausted => tonic::Code::ResourceExhausted,
            Self::Unavailable => tonic::Code::Unavailable,
            Self::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            Self::Internal => tonic::Code::Internal,
        }
    }

    /// The HTTP status for this kind.
    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidArgument => 400,
            Self::Unauthenticated => 401,
            Self::PermissionDenied => 403,
            Self::NotFound => 404,
            Self::AlreadyExists | Self::FailedPrecondition => 409,
            Self::ResourceExhausted => 429,
            Self::Unavailable => 503,
            Self::DeadlineExceeded => 504,
            Self::Internal => 500,
        }
    }
}

/// An error with its kind and a caller-facing message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthenticated, message)
    }

    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::FailedPrecondition, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        tonic::Status::new(error.kind.grpc_code(), error.message)
    }
}

/// Result alias for service code.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_to_grpc_and_http_in_one_place() {
        let status: tonic::Status = Error::invalid_argument("hidden: shape [1, 2]").into();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "hidden: shape [1, 2]");
        assert_eq!(ErrorKind::Unauthenticated.http_status(), 401);
        assert_eq!(
            ErrorKind::ResourceExhausted.grpc_code(),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(ErrorKind::Unavailable.http_status(), 503);
    }
}
