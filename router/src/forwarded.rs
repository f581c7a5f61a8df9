//! What an upstream is told about the client: `X-Forwarded-For`,
//! `X-Forwarded-Proto` and `X-Forwarded-Host`, set from what the router
//! itself saw. A client can write any header it likes, so what it sent is
//! believed only when the TCP peer is a configured trusted proxy (a load
//! balancer in front of the router); from anyone else those headers, and
//! `Forwarded` and `X-Real-IP`, are replaced or dropped, so the leftmost
//! `X-Forwarded-For` entry an application reads is never a client's claim.

use std::net::IpAddr;
use std::str::FromStr;

use bytes::Bytes;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// An IP network, `10.0.0.0/8` or `2001:db8::/32`; a bare address is a
/// network of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the network (an IPv4-mapped IPv6 address counts
    /// as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, unmapped(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let expected = || format!("expected an address or network like \"10.0.0.0/8\" or \"2001:db8::/32\", found `{text}`");
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network = unmapped(address.parse::<IpAddr>().map_err(|_| expected())?);
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("the prefix length of `{text}` must be 0 to {max}")),
            },
        };
        Ok(Cidr { network, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// An IPv4-mapped IPv6 address as IPv4; anything else as it is.
pub(crate) fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Sets the forwarding headers of a request from `peer` (its address as an
/// `X-Forwarded-For` entry) for `host`, the host it was routed by.
/// `trusted`: the peer is a trusted proxy, whose headers are kept and
/// extended; otherwise the client's are replaced.
pub(crate) fn set_forwarded(headers: &mut HeaderMap, peer: &HeaderValue, host: &HeaderValue, trusted: bool, proto: &'static str) {
    if trusted {
        append_forwarded_for(headers, peer);
        if !headers.contains_key(X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        }
        if !headers.contains_key(X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
        return;
    }
    headers.insert(X_FORWARDED_FOR, peer.clone());
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    headers.insert(X_FORWARDED_HOST, host.clone());
    // Most requests carry neither: a lookup each is cheaper than a removal.
    if headers.contains_key(header::FORWARDED) {
        headers.remove(header::FORWARDED);
    }
    if headers.contains_key(X_REAL_IP) {
        headers.remove(X_REAL_IP);
    }
}

/// Appends the peer's address to `X-Forwarded-For`, keeping what earlier
/// (trusted) proxies recorded.
fn append_forwarded_for(headers: &mut HeaderMap, peer: &HeaderValue) {
    let mut earlier = headers.get_all(X_FORWARDED_FOR).iter().peekable();
    if earlier.peek().is_none() {
        headers.insert(X_FORWARDED_FOR, peer.clone());
        return;
    }
    let mut joined = Vec::new();
    for value in earlier {
        joined.extend_from_slice(value.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(peer.as_bytes());
    let value = HeaderValue::from_maybe_shared(Bytes::from(joined)).unwrap_or_else(|_| peer.clone());
    headers.insert(X_FORWARDED_FOR, value);
}

/// A header map of these pairs, for tests.
#[cfg(test)]
pub(crate) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(HeaderName::try_from(*name).unwrap(), HeaderValue::try_from(*value).unwrap());
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_contain() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.200.3")) && !net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")), "a mapped address is its IPv4 address");
        let one: Cidr = " 192.0.2.7 ".parse().unwrap();
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")) && !v6.contains(ip("10.0.0.1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.1")));
        for bad in ["", "10.0.0.0/33", "10.0.0.0/", "10.0.0.0/-1", "10.0.0/8", "example.com", "::/129", "10.0.0.0/ 8"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn an_untrusted_peer_replaces_what_the_client_claimed() {
        let peer = HeaderValue::from_static("198.51.100.4");
        let host = HeaderValue::from_static("app.test");
        let mut map = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "bank.test"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
        ]);
        set_forwarded(&mut map, &peer, &host, false, "http");
        assert_eq!(map.get_all(X_FORWARDED_FOR).iter().collect::<Vec<_>>(), ["198.51.100.4"]);
        assert_eq!((map[X_FORWARDED_PROTO].to_str().unwrap(), map[X_FORWARDED_HOST].to_str().unwrap()), ("http", "app.test"));
        assert!(!map.contains_key("forwarded") && !map.contains_key("x-real-ip"));
    }

    #[test]
    fn a_trusted_proxy_is_appended_to_and_its_headers_kept() {
        let peer = HeaderValue::from_static("10.0.0.9");
        let host = HeaderValue::from_static("app.test");
        let mut map = headers(&[("x-forwarded-for", "203.0.113.1"), ("x-forwarded-for", "10.0.0.2"), ("x-forwarded-proto", "https")]);
        set_forwarded(&mut map, &peer, &host, true, "http");
        assert_eq!(map.get_all(X_FORWARDED_FOR).iter().collect::<Vec<_>>(), ["203.0.113.1, 10.0.0.2, 10.0.0.9"]);
        assert_eq!((map[X_FORWARDED_PROTO].to_str().unwrap(), map[X_FORWARDED_HOST].to_str().unwrap()), ("https", "app.test"));
        let mut map = HeaderMap::new();
        set_forwarded(&mut map, &peer, &host, true, "http");
        assert_eq!((map[X_FORWARDED_FOR].to_str().unwrap(), map[X_FORWARDED_PROTO].to_str().unwrap()), ("10.0.0.9", "http"));
    }
}
