//! Why a registry, certificate, policy or authorizer operation was refused: one kind per way
//! AWS IoT refuses, with AWS's own wording, so that every door to a service (the HTTP API, an
//! MQTT topic, a provisioning template) tells the client the same thing.

use halyard_raft::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A field's value breaks a constraint of the operation's model.
    #[error(
        "1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: {constraint}"
    )]
    Validation {
        field: String,
        value: String,
        constraint: String,
    },
    /// The request is well formed but cannot be carried out as asked.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// The resource exists already, with another configuration.
    #[error("{message}")]
    AlreadyExists {
        message: String,
        id: String,
        arn: String,
    },
    /// An expected version did not match.
    #[error("{0}")]
    VersionConflict(String),
    /// Another change of the same records won a race; retrying may succeed.
    #[error("{0}")]
    Conflict(String),
    /// The resource still has something attached or depending on it.
    #[error("{0}")]
    DeleteConflict(String),
    /// A certificate's status forbids the operation.
    #[error("{0}")]
    CertificateState(String),
    /// A certificate or CSR is unreadable or not signed as required.
    #[error("{0}")]
    CertificateInvalid(String),
    #[error("{0}")]
    LimitExceeded(String),
    #[error("{0}")]
    VersionsLimitExceeded(String),
    #[error("{0}")]
    MalformedPolicy(String),
    /// A provisioning template could not create its resources for this device.
    #[error("{0}")]
    ResourceRegistrationFailure(String),
    /// A template's resource exists and differs, and its override setting says FAIL.
    #[error("{0}")]
    ResourceConflicts(String),
    /// A fleet indexing query does not parse.
    #[error("{0}")]
    InvalidQuery(String),
    /// The index asked for is being built and cannot answer yet.
    #[error("{0}")]
    IndexNotReady(String),
    /// The aggregation cannot be made of the field asked for.
    #[error("{0}")]
    InvalidAggregation(String),
    /// A topic rule's SQL statement does not parse.
    #[error("{0}")]
    SqlParse(String),
    /// AWS answers a missing topic rule as access denied.
    #[error("{0}")]
    Unauthorized(String),
    /// The store cannot answer now (no leader, no quorum, shutting down).
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn validation(field: &str, value: &str, constraint: &str) -> Self {
        Self::Validation {
            field: field.to_owned(),
            value: value.to_owned(),
            constraint: constraint.to_owned(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }

    pub fn already_exists(
        message: impl Into<String>,
        id: impl Into<String>,
        arn: impl Into<String>,
    ) -> Self {
        Self::AlreadyExists {
            message: message.into(),
            id: id.into(),
            arn: arn.into(),
        }
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::Conflict(message.into())
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into())
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Timeout(_)
            | StoreError::Unavailable(_)
            | StoreError::NotLeader { .. }
            | StoreError::Shutdown
            | StoreError::OutcomeUnknown(_) => {
                Self::Unavailable(format!("The service is unavailable: {e}"))
            }
            other => Self::Internal(format!("Internal failure: {other}")),
        }
    }
}
