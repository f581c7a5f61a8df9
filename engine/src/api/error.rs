//! The one place an API failure becomes an HTTP response. Handlers return
//! `ApiError`; a refused request (`Rejection`, bad input, unknown name)
//! becomes a 4xx telling the caller what to do, an operational failure
//! (`StoreError`, an unreadable history) a 500 logged here. Every error body
//! is `{"error": {"code": "<snake_case>", "message": "..."}}`, the code one
//! of the contract's (docs: README, "HTTP API").

use axum::http::header::WWW_AUTHENTICATE;
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
    /// No token, or one that is unknown, malformed or revoked: 401.
    #[error("{0}")]
    Unauthorized(String),
    /// The token's scope does not cover the route: 403.
    #[error("{0}")]
    Forbidden(String),
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
    /// The client presented too many refused tokens lately: 429.
    #[error("{0}")]
    TooManyRequests(String),
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
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Store(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `code` of the error body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::TooManyRequests(_) => "too_many_requests",
            ApiError::Store(_) | ApiError::Internal(_) => "internal",
        }
    }
}

/// The error body, for the OpenAPI document.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// bad_request, unauthorized, forbidden, not_found, method_not_allowed,
    /// conflict, payload_too_large, too_many_requests, unsupported_media_type or internal.
    pub code: String,
    /// What went wrong and what to do.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "API request failed");
        }
        let body = ErrorBody { error: ErrorDetail { code: self.code().into(), message: self.to_string() } };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        response
    }
}
