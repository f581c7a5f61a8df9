//! The one place an API failure becomes an HTTP response. Handlers return
//! `ApiError`; a refused request becomes a 4xx (or a 503 for "not now")
//! telling the caller what to do, an operational failure (`StoreError`, an
//! unreadable history) a 500 logged here. An engine `Rejection` carries its
//! kind, and `From<Rejection>` is the one place a kind becomes a status:
//! handlers never read a refusal's words. Every error body is
//! `{"error": {"code": "<snake_case>", "message": "..."}}`, the code (the
//! error's kind: clients branch on it, not on the message) one of the
//! contract's (docs: README, "HTTP API").

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
    /// Not now (what the request needs kept changing under it): 503, try again.
    #[error("{0}")]
    Unavailable(String),
    /// The event store failed: 500. (A statement cancelled by the API
    /// store's statement timeout becomes `Unavailable` instead: see `From`.)
    #[error("the event store failed: {0}; check that the database is reachable, then retry")]
    Store(StoreError),
    /// Stored data the API cannot make sense of: 500.
    #[error("{0}")]
    Internal(String),
}

/// A store failure is a 500, but for a statement that ran past the API
/// store's `statement_timeout` (PostgreSQL cancelled it and the connection
/// went back to the pool): 503 `unavailable`, saying so.
impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        if error.is_timeout() {
            return ApiError::Unavailable(format!(
                "the database took longer than the HTTP API allows one statement, so the request was stopped ({error}); \
                 try again later, or ask for less"
            ));
        }
        ApiError::Store(error)
    }
}

/// Each kind of refusal has its status, here and nowhere else.
impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        match rejection {
            Rejection::NotFound(m) => ApiError::NotFound(m),
            Rejection::Conflict(m) => ApiError::Conflict(m),
            Rejection::Invalid(m) => ApiError::BadRequest(m),
            Rejection::Forbidden(m) => ApiError::Forbidden(m),
            Rejection::Unavailable(m) => ApiError::Unavailable(m),
        }
    }
}

impl ApiError {
    /// A refusal about something the request *body* names (an environment
    /// for a rule, the original of a mirror): the resource of the path
    /// exists, so a missing thing in the body is bad input (400), not a 404.
    pub fn from_body(rejection: Rejection) -> ApiError {
        match rejection {
            Rejection::NotFound(m) => ApiError::BadRequest(m),
            other => other.into(),
        }
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
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
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
            ApiError::Unavailable(_) => "unavailable",
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
    /// conflict, payload_too_large, too_many_requests, unsupported_media_type,
    /// unavailable (try again later) or internal.
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
