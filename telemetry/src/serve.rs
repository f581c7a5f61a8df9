//! `--metrics-listen ADDR`: a tiny HTTP server answering `GET /metrics`
//! for the processes that run no HTTP API (workers, routers). Unauthenticated
//! like any Prometheus target: bind it to loopback or a private interface.

use std::future::Future;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

/// The metrics app: `GET /metrics` renders the process's registry.
pub fn app() -> Router {
    Router::new().route("/metrics", get(metrics))
}

/// The handler the HTTP API can mount at `/metrics` too.
pub async fn metrics() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], crate::metrics::render())
}

/// Serves `app()` on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    axum::serve(listener, app()).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    #[tokio::test]
    async fn get_metrics_renders_the_registry() {
        crate::metrics::global().router_upstream_error("serve-test");
        let request = Request::get("/metrics").body(Body::empty()).expect("request");
        let response = app().oneshot(request).await.expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(content_type.as_deref(), Some(crate::metrics::CONTENT_TYPE));
        let body = response.into_body().collect().await.expect("body").to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("slipway_router_upstream_errors_total{kind=\"serve-test\"} 1"), "{text}");
    }

    #[tokio::test]
    async fn other_paths_are_not_found() {
        let request = Request::get("/").body(Body::empty()).expect("request");
        let response = app().oneshot(request).await.expect("response");
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
}
