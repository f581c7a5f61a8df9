//! The request headers the proxy reads and rewrites itself: the host a
//! request is for, whether it asks for a protocol upgrade, and the
//! hop-by-hop headers that describe one connection and must not cross to
//! the next (RFC 9110 §7.6.1). Pure, tested without sockets.

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::Request;

use super::ProxyError;

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The host a request is for: the authority of an absolute-form target, or
/// else its one `Host` header.
pub(super) fn request_host(req: &Request<Incoming>) -> Result<HeaderValue, ProxyError> {
    if let Some(authority) = req.uri().authority() {
        return HeaderValue::from_str(authority.as_str()).map_err(|_| ProxyError::BadHost);
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(host), None) => Ok(host.clone()),
        (None, _) => Err(ProxyError::MissingHost),
        (Some(_), Some(_)) => Err(ProxyError::BadHost),
    }
}

/// Whether the request asks to switch protocols (`Connection: upgrade` and
/// an `Upgrade` header), as a WebSocket handshake does.
pub(super) fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

pub(super) fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes the headers that describe one connection rather than the message
/// (RFC 9110 §7.6.1): `Connection` and every header it names, and the
/// standard hop-by-hop ones. Framing (`Transfer-Encoding`) is hyper's to set
/// on each side.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of these: one pass over the (few) headers is
    // cheaper than a lookup for each name.
    let any = headers.keys().any(|name| {
        name == header::CONNECTION
            || name == KEEP_ALIVE
            || name == header::PROXY_AUTHENTICATE
            || name == header::PROXY_AUTHORIZATION
            || name == PROXY_CONNECTION
            || name == header::TE
            || name == header::TRAILER
            || name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
    });
    if !any {
        return;
    }
    let named: Vec<HeaderName> = connection_tokens(headers).filter_map(|t| HeaderName::try_from(t).ok()).collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        KEEP_ALIVE,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        PROXY_CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

pub(super) fn lossy(value: &HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forwarded::headers;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut map = headers(&[
            ("connection", "close, X-Trace"),
            ("x-trace", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-authorization", "x"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut map);
        assert_eq!(map.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["accept"]);
    }

    #[test]
    fn upgrade_needs_both_headers() {
        assert!(wants_upgrade(&headers(&[("connection", "keep-alive, Upgrade"), ("upgrade", "websocket")])));
        assert!(!wants_upgrade(&headers(&[("upgrade", "websocket")])));
        assert!(!wants_upgrade(&headers(&[("connection", "upgrade")])));
    }
}
