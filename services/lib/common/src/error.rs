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
    /// The gRPC status code for this kind (the numbers of the gRPC specification, so this
    /// crate names no transport; `tonic::Code::from` takes them as they are).
    pub fn grpc_code(self) -> i32 {
        match self {
            Self::InvalidArgument => 3,
            Self::DeadlineExceeded => 4,
            Self::NotFound => 5,
            Self::AlreadyExists => 6,
            Self::PermissionDenied => 7,
            Self::ResourceExhausted => 8,
            Self::FailedPrecondition => 9,
            Self::Internal => 13,
            Self::Unavailable => 14,
            Self::Unauthenticated => 16,
        }
    }

    /// The kind of a gRPC status code another service answered with (the inverse of
    /// [`ErrorKind::grpc_code`]); codes outside the taxonomy (cancelled, unknown, aborted, …)
    /// are `Unavailable`: the call may be tried again.
    pub fn from_grpc_code(code: i32) -> Self {
        match code {
            3 | 11 => Self::InvalidArgument,
            4 => Self::DeadlineExceeded,
            5 => Self::NotFound,
            6 => Self::AlreadyExists,
            7 => Self::PermissionDenied,
            8 => Self::ResourceExhausted,
            9 => Self::FailedPrecondition,
            13 | 15 => Self::Internal,
            16 => Self::Unauthenticated,
            _ => Self::Unavailable,
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

    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::PermissionDenied, message)
    }

    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::FailedPrecondition, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

/// With the `grpc` feature (services, not the pure domain), `?` turns an [`Error`] into the
/// status its kind maps to.
#[cfg(feature = "grpc")]
impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        tonic::Status::new(tonic::Code::from(error.kind.grpc_code()), error.message)
    }
}

/// Result alias for service code.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_to_grpc_and_http_in_one_place() {
        // gRPC's own numbering: INVALID_ARGUMENT = 3, RESOURCE_EXHAUSTED = 8, UNAVAILABLE = 14.
        assert_eq!(ErrorKind::InvalidArgument.grpc_code(), 3);
        assert_eq!(ErrorKind::ResourceExhausted.grpc_code(), 8);
        assert_eq!(ErrorKind::Unavailable.grpc_code(), 14);
        assert_eq!(ErrorKind::Unauthenticated.http_status(), 401);
        assert_eq!(ErrorKind::Unavailable.http_status(), 503);
        // Every kind comes back from its own code; other codes are worth a retry.
        for kind in [
            ErrorKind::InvalidArgument,
            ErrorKind::Unauthenticated,
            ErrorKind::PermissionDenied,
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::FailedPrecondition,
            ErrorKind::ResourceExhausted,
            ErrorKind::Unavailable,
            ErrorKind::DeadlineExceeded,
            ErrorKind::Internal,
        ] {
            assert_eq!(ErrorKind::from_grpc_code(kind.grpc_code()), kind);
        }
        assert_eq!(ErrorKind::from_grpc_code(1), ErrorKind::Unavailable);
        assert_eq!(ErrorKind::from_grpc_code(2), ErrorKind::Unavailable);
    }
}
