//! Why a jobs operation was refused, in the words both of its doors use: the device's MQTT
//! rejection codes (`InvalidStateTransition`, `VersionMismatch`, ...) and the HTTP APIs'
//! exceptions.

use halyard_raft::StoreError;

use super::model::ExecutionState;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobsError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    InvalidStateTransition {
        message: String,
        state: Option<ExecutionState>,
    },
    #[error("{message}")]
    VersionMismatch {
        message: String,
        state: Option<ExecutionState>,
    },
    /// The execution is terminal: there is nothing to describe to its device.
    #[error("{0}")]
    TerminalStateReached(String),
    /// The resource exists already.
    #[error("{message}")]
    AlreadyExists {
        message: String,
        id: String,
        arn: String,
    },
    /// A job template's id is taken (AWS answers ConflictException here).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    LimitExceeded(String),
    /// The store cannot answer now.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl JobsError {
    /// The MQTT rejection's `code`.
    pub fn mqtt_code(&self) -> &'static str {
        match self {
            JobsError::InvalidRequest(_) | JobsError::Conflict(_) => "InvalidRequest",
            JobsError::NotFound(_) => "ResourceNotFound",
            JobsError::InvalidStateTransition { .. } => "InvalidStateTransition",
            JobsError::VersionMismatch { .. } => "VersionMismatch",
            JobsError::TerminalStateReached(_) => "TerminalStateReached",
            JobsError::LimitExceeded(_) => "RequestThrottled",
            JobsError::AlreadyExists { .. } => "InvalidRequest",
            JobsError::Unavailable(_) | JobsError::Internal(_) => "InternalError",
        }
    }

    /// The execution's state, which AWS adds to these two rejections only.
    pub fn execution_state(&self) -> Option<&ExecutionState> {
        match self {
            JobsError::InvalidStateTransition { state, .. }
            | JobsError::VersionMismatch { state, .. } => state.as_ref(),
            _ => None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        JobsError::InvalidRequest(message.into())
    }

    pub fn transition(message: impl Into<String>, state: Option<ExecutionState>) -> Self {
        JobsError::InvalidStateTransition {
            message: message.into(),
            state,
        }
    }
}

impl From<StoreError> for JobsError {
    /// As every other service words a store failure (`services::error`): unavailable when
    /// retrying may help, internal otherwise.
    fn from(e: StoreError) -> Self {
        match crate::services::error::Error::from(e) {
            crate::services::error::Error::Unavailable(message) => JobsError::Unavailable(message),
            other => JobsError::Internal(other.to_string()),
        }
    }
}
