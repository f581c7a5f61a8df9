//! `GET /api/whoami`: who the caller is and what it may do, so the
//! dashboard can hide the buttons a token's scope does not allow instead of
//! letting the user press them into a 403.
//!
//! Without authentication anyone who reaches the API may do everything,
//! and the answer says so: an anonymous caller with the `admin` scope.

use axum::Json;
use serde_json::{json, Value};

/// `GET /api/whoami` -> `{name, scope, authenticated}`.
#[utoipa::path(get, path = "/api/whoami", tag = "tokens",
    summary = "The caller's token name and scope",
    description = "What the dashboard asks to decide which buttons it offers.",
    responses((status = 200, body = Object)))]
pub async fn whoami() -> Json<Value> {
    Json(json!({ "name": "anonymous", "scope": "admin", "authenticated": false }))
}
