//! A minimal HTTP/1.1 GET on hyper, for the health check and `http`
//! service checks: one request, one status code, a hard deadline.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// GETs `url` (http:// only) and returns the status code, or why not.
pub async fn get_status(url: &str, timeout: Duration) -> Result<u16, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("`{url}`: only http:// URLs can be checked"));
    }
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    match tokio::time::timeout(timeout, client.get(uri)).await {
        Ok(Ok(response)) => Ok(response.status().as_u16()),
        Ok(Err(e)) => Err(connect_reason(&e)),
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

fn connect_reason(e: &hyper_util::client::legacy::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// GETs `url` and returns the status and the body as text (tests, smoke checks).
pub async fn get_text(url: &str, timeout: Duration) -> Result<(u16, String), String> {
    use http_body_util::BodyExt;
    let uri: hyper::Uri = url.parse().map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let fetch = async {
        let response = client.get(uri).await.map_err(|e| connect_reason(&e))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(timeout, fetch).await.map_err(|_| format!("no answer within {} ms", timeout.as_millis()))?
}
