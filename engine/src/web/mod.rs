//! The dashboard: one HTML page, a stylesheet and a script, compiled into
//! the binary with `include_str!` so `slipway server` and `all-in-one`
//! serve it with no build step and nothing on disk. The page is a client of
//! the JSON API like any other (it sends the bearer token the user pasted,
//! and follows deployments live through `/api/deployments/{id}/stream`), so
//! this module owns no data and needs no token: the assets are public, what
//! they show is not.
//!
//! Routes: `/` and `/ui/` (the page; anything else under `/ui/` too, so a
//! deep link survives a reload), `/ui/app.js`, `/ui/style.css`, and the
//! vendored charting library uPlot (`/ui/vendor/uplot.min.js` and `.css`;
//! version and licence in `assets/vendor/README.md`). The page's own
//! routing lives in the URL fragment.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use axum::http::{HeaderName, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");
const CHARTS: &str = include_str!("assets/vendor/uplot.min.js");
const CHARTS_STYLE: &str = include_str!("assets/vendor/uplot.min.css");

/// Only this origin's script and style, no inline code, no framing: the
/// token in local storage is worth an injected script, so none may run.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard's routes, to merge into the API's router.
pub fn routes() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/app.js", get(script))
        .route("/ui/style.css", get(style))
        .route("/ui/vendor/uplot.min.js", get(charts))
        .route("/ui/vendor/uplot.min.css", get(charts_style))
        .route("/ui/{*rest}", get(index))
}

async fn index() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX)
}

async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", STYLE)
}

async fn charts() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", CHARTS)
}

async fn charts_style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", CHARTS_STYLE)
}

/// Revalidated on every load (`no-cache`), so an upgraded binary never runs
/// with a stale script.
fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    let headers = [
        (CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (HeaderName::from_static("content-security-policy"), HeaderValue::from_static(CSP)),
        (HeaderName::from_static("referrer-policy"), HeaderValue::from_static("no-referrer")),
    ];
    (headers, body)
}
