//! The one place an API failure becomes an HTTP response. Handlers return
//! `ApiError`; a refused request (`Rejection`, bad input, unknown name)
//! becomes a 4xx telling the caller what to do, an operational failure
//! (`StoreError`, an unreadable history) a 500 logged here. Every error body
//! is `{"error": "..."}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use slipway_store::StoreError;

use crate::requests::Rejection;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or asks for something invalid: 400.
    #[error("{0}")]
    BadRequest(String),
    /// A project, environment or deployment named in the path does not exist: 404.
    #[error("{0}")]
    NotFound(String),
    /// The request clashes with what exists (a project name taken): 409.
    #[error("{0}")]
    Conflict(String),
    /// The path exists, the method does not: 405 (axum adds `Allow`).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The body is not declared as JSON: 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The body exceeds the size limit: 413.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The event store failed: 500.
    #[error("the event store failed: {0}; check that the database is reachable, then retry")]
    Store(#[from] StoreError),
    /// Stored data the API cannot make sense of: 500.
    #[error("{0}")]
    Internal(String),
}

/// A refusal from `requests` is the caller's to fix. Handlers that can tell
/// a missing resource or a clash apart check for those first and return
/// `NotFound` or `Conflict` themselves; what reaches this is bad input.
impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        ApiError::BadRequest(rejection.0)
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Store(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "API request failed");
        }
        (status, Json(serde_json::json!({ "error": self.to_string() }))).into_response()
    }
}
