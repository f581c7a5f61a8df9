//! The API's extractors. axum's own reject in plain text, with 422 for a body
//! that parses but does not fit; these reject with `ApiError`, so every
//! failure is JSON and bad input is a 400 that names the field.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON request body. The `Content-Type: application/json` requirement is
/// deliberate: a browser cannot send it cross-origin without a CORS
/// preflight, which this API never grants, so another site open in the
/// operator's browser cannot post to a panel listening on localhost.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !declares_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType("send the body as JSON with the header `Content-Type: application/json`".into()));
        }
        parse_json(&read_body(req, state).await?).map(JsonBody)
    }
}

async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge("the request body is over the API's 2 MiB limit".into())
        } else {
            ApiError::BadRequest(format!("could not read the request body: {}", e.body_text()))
        }
    })
}

fn declares_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence.len() > "+json".len() && essence.get(essence.len() - 5..).is_some_and(|s| s.eq_ignore_ascii_case("+json"))
}

/// Parses a body, naming where it went wrong: `set.KEY: invalid type: ...`
/// or `unknown field `bogus`, expected one of ...`. Every body is an
/// object: serde would also read a struct from an array, field by
/// position (`["name", "admin"]`), which no client means.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') | None => {}
        Some(_) => return Err(ApiError::BadRequest("invalid JSON body: expected an object, `{...}`".into())),
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // serde_path_to_error says "." for the top level and "?" where the
        // input ended before a path formed.
        if path == "." || path == "?" {
            ApiError::BadRequest(format!("invalid JSON body: {inner}"))
        } else {
            ApiError::BadRequest(format!("invalid JSON body at `{path}`: {inner}"))
        }
    })?;
    de.end().map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    Ok(value)
}

/// Path parameters, rejected as JSON.
#[derive(Debug)]
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Params(value)),
            Err(e) => Err(ApiError::BadRequest(format!("bad path: {}", e.body_text()))),
        }
    }
}

/// Query parameters, rejected as JSON naming the parameter.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(QueryParams(value)),
            Err(e) => Err(ApiError::BadRequest(format!("bad query string: {}", e.body_text()))),
        }
    }
}

/// An optional JSON body: none (empty, any content type) is `T::default()`,
/// so `POST .../migrate` works without `-d '{}'`; anything else must be JSON.
#[derive(Debug)]
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = declares_json(req.headers());
        let bytes = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        if !json {
            return Err(ApiError::UnsupportedMediaType("send the body as JSON with the header `Content-Type: application/json`".into()));
        }
        parse_json(&bytes).map(OptionalJson)
    }
}
