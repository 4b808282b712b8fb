//! Errors in AWS's shape: the code in `x-amzn-ErrorType`, `{"message": ...}` in the body, and
//! the HTTP status AWS IoT uses for that code.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use halyard_raft::StoreError;
use serde_json::json;

use crate::auth::identity::sigv4::SigV4Error;
use crate::services::error::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The existing resource's id and ARN, which `ResourceAlreadyExistsException` carries.
    pub resource: Option<Box<(String, String)>>,
}

impl AwsError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            resource: None,
        }
    }

    /// An error with the given HTTP status and AWS code.
    pub fn with_status(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            code,
            message,
        )
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidRequestException", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "ResourceNotFoundException", message)
    }

    /// The resource exists already: its id and ARN go in the body, as AWS sends them.
    pub fn already_exists(
        message: impl Into<String>,
        resource_id: impl Into<String>,
        resource_arn: impl Into<String>,
    ) -> Self {
        Self {
            resource: Some(Box::new((resource_id.into(), resource_arn.into()))),
            ..Self::new(
                StatusCode::CONFLICT,
                "ResourceAlreadyExistsException",
                message,
            )
        }
    }

    pub fn version_conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "VersionConflictException", message)
    }

    pub fn conflicting_update(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "ConflictingResourceUpdateException",
            message,
        )
    }

    pub fn certificate_state(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_ACCEPTABLE,
            "CertificateStateException",
            message,
        )
    }

    pub fn certificate_validation(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "CertificateValidationException",
            message,
        )
    }

    pub fn delete_conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "DeleteConflictException", message)
    }

    pub fn limit_exceeded(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "LimitExceededException", message)
    }

    pub fn versions_limit_exceeded(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "VersionsLimitExceededException",
            message,
        )
    }

    pub fn malformed_policy(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "MalformedPolicyException", message)
    }

    pub fn unknown_operation(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            format!("No operation matches {method} {path}"),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalFailureException",
            message,
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableException",
            message,
        )
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLargeException",
            message,
        )
    }

    /// An authorizer function answered something AWS's response format does not allow.
    pub fn invalid_response(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidResponseException", message)
    }

    /// A device's policy does not allow what it asked for.
    pub fn forbidden() -> Self {
        Self::new(StatusCode::FORBIDDEN, "ForbiddenException", "Forbidden")
    }

    /// No credentials the data plane accepts, or an authorizer that did not authenticate.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UnauthorizedException", message)
    }

    /// A validation failure in the words AWS uses for one.
    pub fn validation(field: &str, value: &str, constraint: &str) -> Self {
        Self::from(Error::validation(field, value, constraint))
    }
}

impl From<SigV4Error> for AwsError {
    fn from(e: SigV4Error) -> Self {
        let (code, status) = e.code_and_status();
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
        Self::new(status, code, e.to_string())
    }
}

impl From<StoreError> for AwsError {
    fn from(e: StoreError) -> Self {
        Self::from(Error::from(e))
    }
}

impl From<Error> for AwsError {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e {
            Error::Validation { .. } | Error::Invalid(_) => Self::invalid_request(message),
            Error::NotFound(_) => Self::not_found(message),
            Error::AlreadyExists { id, arn, .. } => Self::already_exists(message, id, arn),
            Error::VersionConflict(_) => Self::version_conflict(message),
            Error::Conflict(_) => Self::conflicting_update(message),
            Error::DeleteConflict(_) => Self::delete_conflict(message),
            Error::CertificateState(_) => Self::certificate_state(message),
            Error::CertificateInvalid(_) => Self::certificate_validation(message),
            Error::LimitExceeded(_) => Self::limit_exceeded(message),
            Error::VersionsLimitExceeded(_) => Self::versions_limit_exceeded(message),
            Error::MalformedPolicy(_) => Self::malformed_policy(message),
            Error::SqlParse(_) => Self::with_status(400, "SqlParseException", message),
            Error::InvalidQuery(_) => Self::with_status(400, "InvalidQueryException", message),
            Error::IndexNotReady(_) => Self::with_status(400, "IndexNotReadyException", message),
            Error::InvalidAggregation(_) => {
                Self::with_status(400, "InvalidAggregationException", message)
            }
            Error::ResourceRegistrationFailure(_) => {
                Self::with_status(400, "ResourceRegistrationFailureException", message)
            }
            Error::ResourceConflicts(_) => {
                Self::with_status(409, "ResourceConflictsException", message)
            }
            Error::Unauthorized(_) => Self::unauthorized(message),
            Error::Unavailable(_) => Self::unavailable(message),
            Error::Internal(_) => Self::internal(message),
        }
    }
}

impl IntoResponse for AwsError {
    fn into_response(self) -> Response {
        let mut body = json!({ "message": self.message });
        if let Some(resource) = self.resource {
            let (id, arn) = *resource;
            body["resourceId"] = json!(id);
            body["resourceArn"] = json!(arn);
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Ok(code) = HeaderValue::from_str(self.code) {
            response.headers_mut().insert("x-amzn-errortype", code);
        }
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

impl From<crate::services::jobs::error::JobsError> for AwsError {
    fn from(e: crate::services::jobs::error::JobsError) -> Self {
        use crate::services::jobs::error::JobsError;
        let message = e.to_string();
        match e {
            JobsError::InvalidRequest(_) => Self::invalid_request(message),
            JobsError::NotFound(_) => Self::not_found(message),
            JobsError::InvalidStateTransition { .. } => {
                Self::with_status(409, "InvalidStateTransitionException", message)
            }
            JobsError::VersionMismatch { .. } => Self::version_conflict(message),
            JobsError::TerminalStateReached(_) => {
                Self::with_status(410, "TerminalStateException", message)
            }
            JobsError::AlreadyExists { id, arn, .. } => Self::already_exists(message, id, arn),
            JobsError::Conflict(_) => Self::with_status(409, "ConflictException", message),
            JobsError::LimitExceeded(_) => Self::limit_exceeded(message),
            JobsError::Unavailable(_) => Self::unavailable(message),
            JobsError::Internal(_) => Self::internal(message),
        }
    }
}
