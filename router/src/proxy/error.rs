//! Why the proxy answered a request itself instead of with an upstream's
//! response, whose fault that was, and what the client is told: a status
//! and a short page that names nothing internal (the upstream's address
//! goes to the log, in the error's text).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use super::ProxyBody;

/// Whose fault a failed request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request itself: fixing it is the client's job.
    Client,
    /// The routes: no release serves the host.
    Routes,
    /// The upstream application.
    Upstream,
}

/// Why the proxy answered a request itself instead of with an upstream's
/// response. The text (`Display`) is for the log and names the upstream;
/// the client gets [`ProxyError::page`], which names nothing internal.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the request names no host: send a Host header")]
    MissingHost,
    #[error("the request's Host header is not valid (more than one, or not visible ASCII)")]
    BadHost,
    #[error("no route for host \"{0}\"")]
    UnknownHost(String),
    #[error("no upstream serves host \"{host}\" right now ({label})")]
    NoUpstream { host: String, label: String },
    #[error("upstream {upstream} for host \"{host}\" could not be reached: {reason}")]
    UpstreamConnect { upstream: SocketAddr, host: String, reason: String },
    #[error("upstream {upstream} for host \"{host}\" failed: {reason}")]
    Upstream { upstream: SocketAddr, host: String, reason: String },
    #[error("upstream {upstream} for host \"{host}\" did not answer within {} ms", after.as_millis())]
    Timeout { upstream: SocketAddr, host: String, after: Duration },
    #[error("the client sent too little of the request body for host \"{host}\": {reason}")]
    ClientBody { host: String, reason: String },
}

impl ProxyError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::MissingHost | ProxyError::BadHost => StatusCode::BAD_REQUEST,
            ProxyError::UnknownHost(_) => StatusCode::NOT_FOUND,
            ProxyError::NoUpstream { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamConnect { .. } | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ClientBody { .. } => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The body the client gets: what went wrong in the client's terms,
    /// with no address, port, container or deployment in it.
    pub fn page(&self) -> &'static str {
        match self {
            ProxyError::MissingHost | ProxyError::BadHost => "Bad request: send one valid Host header.\n",
            ProxyError::UnknownHost(_) => "Not found: no application is served at this host name.\n",
            ProxyError::NoUpstream { .. } => "Service unavailable: this application is not serving right now; try again shortly.\n",
            ProxyError::UpstreamConnect { .. } | ProxyError::Upstream { .. } => "Bad gateway: the application did not answer.\n",
            ProxyError::Timeout { .. } => "Gateway timeout: the application did not answer in time.\n",
            ProxyError::ClientBody { .. } => "Request timeout: the request body did not arrive in time.\n",
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::MissingHost | ProxyError::BadHost | ProxyError::ClientBody { .. } => Fault::Client,
            ProxyError::UnknownHost(_) | ProxyError::NoUpstream { .. } => Fault::Routes,
            ProxyError::UpstreamConnect { .. } | ProxyError::Upstream { .. } | ProxyError::Timeout { .. } => Fault::Upstream,
        }
    }

    /// For `slipway_router_upstream_errors_total`: `connect` (never reached
    /// the upstream), `response` (it failed mid-way) or `timeout` (no answer
    /// within the request timeout); `None` if not the upstream's fault.
    pub fn upstream_error_kind(&self) -> Option<&'static str> {
        match self {
            ProxyError::UpstreamConnect { .. } => Some("connect"),
            ProxyError::Upstream { .. } => Some("response"),
            ProxyError::Timeout { .. } => Some("timeout"),
            _ => None,
        }
    }

    /// Whether the request surely never reached an application, so sending
    /// it again cannot repeat a side effect.
    pub fn retry_safe(&self) -> bool {
        !matches!(self, ProxyError::Upstream { .. } | ProxyError::Timeout { .. } | ProxyError::ClientBody { .. })
    }

    pub(super) fn into_response(self) -> Response<ProxyBody> {
        let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(self.page().as_bytes()))));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        if let ProxyError::ClientBody { .. } = self {
            // The rest of the body may still come: the connection cannot
            // carry another request.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_whose_fault_and_whether_retrying_is_safe() {
        let upstream = SocketAddr::from(([127, 0, 0, 1], 9));
        let connect = ProxyError::UpstreamConnect { upstream, host: "a".into(), reason: "refused".into() };
        assert_eq!((connect.status(), connect.fault(), connect.retry_safe()), (StatusCode::BAD_GATEWAY, Fault::Upstream, true));
        let failed = ProxyError::Upstream { upstream, host: "a".into(), reason: "reset".into() };
        assert!(!failed.retry_safe());
        assert_eq!(ProxyError::UnknownHost("x".into()).to_string(), "no route for host \"x\"");
        assert_eq!(ProxyError::MissingHost.fault(), Fault::Client);
        let kinds = [connect.upstream_error_kind(), failed.upstream_error_kind(), ProxyError::MissingHost.upstream_error_kind()];
        assert_eq!(kinds, [Some("connect"), Some("response"), None]);
    }
}
