//! The error of every admin operation, converted once at each edge: to an
//! HTTP response (`{"error", "code"}` JSON with the matching status) and to a
//! `tonic::Status`.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};

/// Why an admin request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// Malformed input (400).
    #[error("{0}")]
    BadRequest(String),
    /// No or a wrong bearer token (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The client is not allowed (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such thing (404).
    #[error("{0}")]
    NotFound(String),
    /// Method not allowed on this path (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// Clashes with what exists (409).
    #[error("{0}")]
    Conflict(String),
    /// The body is too large (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Well-formed but invalid, with every problem (422).
    #[error("{message}")]
    Invalid {
        /// Summary.
        message: String,
        /// Each problem, `file:line: key: message` for config errors.
        errors: Vec<String>,
    },
    /// Too many requests from this client (429).
    #[error("{0}")]
    TooManyRequests(String),
    /// Not ready, or the store is unavailable (503).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure (500).
    #[error("{0}")]
    Internal(String),
}

// === impl ApiError ===

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<crate::error::Error> for ApiError {
    fn from(e: crate::error::Error) -> Self {
        use crate::error::Error;
        match e {
            Error::Config(c) => {
                let errors: Vec<String> = if c.issues().is_empty() {
                    vec![c.to_string()]
                } else {
                    c.issues().iter().map(ToString::to_string).collect()
                };
                Self::Invalid {
                    message: "the configuration is invalid; nothing changed".into(),
                    errors,
                }
            }
            Error::Store(m) => Self::Unavailable(format!("store unavailable: {m}")),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = serde_json::json!({
            "error": self.to_string(),
            "code": status.as_u16(),
        });
        if let Self::Invalid { errors, .. } = &self {
            body["errors"] = serde_json::json!(errors);
        }
        (status, Json(body)).into_response()
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        let message = match &e {
            ApiError::Invalid { message, errors } => format!("{message}\n{}", errors.join("\n")),
            other => other.to_string(),
        };
        match e {
            ApiError::BadRequest(_) => Self::invalid_argument(message),
            ApiError::Unauthorized(_) => Self::unauthenticated(message),
            ApiError::Forbidden(_) => Self::permission_denied(message),
            ApiError::NotFound(_) => Self::not_found(message),
            ApiError::MethodNotAllowed(_) => Self::unimplemented(message),
            ApiError::Conflict(_) => Self::already_exists(message),
            ApiError::PayloadTooLarge(_) => Self::out_of_range(message),
            ApiError::Invalid { .. } => Self::failed_precondition(message),
            ApiError::TooManyRequests(_) => Self::resource_exhausted(message),
            ApiError::Unavailable(_) => Self::unavailable(message),
            ApiError::Internal(_) => Self::internal(message),
        }
    }
}
