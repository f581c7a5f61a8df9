//! The routing table: which upstreams serve a host name. It is pure — no I/O,
//! no async, no clock — so every routing decision (host parsing, unknown
//! hosts, round-robin) is tested here without a socket, and the forwarding
//! layer in `proxy/` only carries out what `resolve` returns.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;

use crate::stats::Stats;

/// Where one host name's traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The addresses serving the host, taken in turn. Empty when the host is
    /// known but nothing serves it (for instance between two releases).
    pub upstreams: Vec<SocketAddr>,
    /// Where a request goes when the chosen upstream refuses the
    /// connection: the previous release, while a new one is watched.
    pub standby: Vec<SocketAddr>,
    /// Increases with every change of this route; tells which table served a
    /// request when routes are replaced.
    pub route_version: u64,
    /// What the route is, for messages: `hello/live deployment 0190...`.
    pub label: String,
    /// What its upstreams answered under this route version (shared by
    /// the tables that keep the version; see `stats.rs`).
    pub stats: Stats,
}

/// What a request's `Host` resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Forward to this upstream.
    Upstream(SocketAddr),
    /// No route has this host name (the normalized host).
    UnknownHost(String),
    /// The host has a route, but no upstream serves it (the normalized host).
    NoUpstream(String),
    /// The request names no host (or an empty one).
    MissingHost,
}

/// Host names to routes. Immutable: a change of routes builds a new table,
/// which the proxy swaps in whole.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: HashMap<String, Route>,
}

impl RouteTable {
    /// A table of these routes. Host names are normalized as requests' are
    /// (port and one trailing dot stripped, lowercased), so `Hello.Example.`
    /// matches a request for `hello.example:8080`. A later entry for the
    /// same host replaces an earlier one.
    pub fn new(entries: impl IntoIterator<Item = (String, Route)>) -> Self {
        let routes = entries
            .into_iter()
            .map(|(host, route)| {
                let key = normalize_host(&host).map_or(host.clone(), Cow::into_owned);
                (key, route)
            })
            .collect();
        RouteTable { routes }
    }

    /// The route of a host name, normalized as in [`RouteTable::new`].
    pub fn get(&self, host: &str) -> Option<&Route> {
        self.lookup(normalize_host(host)?.as_ref())
    }

    /// The route of a normalized host name: its own entry, or else a
    /// one-level wildcard's (`*.example.com` serves `a.example.com`, not
    /// `a.b.example.com` nor `example.com`). Only a miss pays for the second look.
    fn lookup(&self, host: &str) -> Option<&Route> {
        by_name(&self.routes, host)
    }

    /// How many host names have a route.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Where a request with this `Host` header goes; `pick` chooses among
    /// the route's upstreams in turn (`upstreams[pick % len]`), so a caller
    /// passing a counter gets round-robin.
    pub fn resolve(&self, host_header: Option<&str>, pick: usize) -> Resolution {
        let Some(host) = host_header.and_then(normalize_host) else {
            return Resolution::MissingHost;
        };
        match self.lookup(host.as_ref()) {
            None => Resolution::UnknownHost(host.into_owned()),
            Some(route) if route.upstreams.is_empty() => Resolution::NoUpstream(host.into_owned()),
            Some(route) => Resolution::Upstream(route.upstreams[pick % route.upstreams.len()]),
        }
    }
}

/// A normalized host name's entry in `map`: its own, or else a one-level
/// wildcard's (`*.example.com` for `a.example.com`, not for
/// `a.b.example.com` nor `example.com`). Routes and certificates (SNI)
/// follow this one rule.
pub(crate) fn by_name<'a, V>(map: &'a HashMap<String, V>, host: &str) -> Option<&'a V> {
    if let Some(value) = map.get(host) {
        return Some(value);
    }
    let (_, parent) = host.split_once('.')?;
    if parent.contains('.') {
        return map.get(&format!("*.{parent}"));
    }
    None
}

/// Where a request goes once when the upstream it was sent to
/// (`upstreams[pick % len]`) failed before it could have done anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// The route's standby (the previous release, while a new one is
    /// watched): its answers are not the route's own upstreams'.
    Standby(SocketAddr),
    /// Another of the route's own upstreams.
    Upstream(SocketAddr),
}

impl Fallback {
    pub fn addr(self) -> SocketAddr {
        match self {
            Fallback::Standby(addr) | Fallback::Upstream(addr) => addr,
        }
    }
}

impl Route {
    /// The standby for a request whose upstream refused it, taken in turn
    /// like the upstreams; `None` when the route has none.
    pub fn standby(&self, pick: usize) -> Option<SocketAddr> {
        (!self.standby.is_empty()).then(|| self.standby[pick % self.standby.len()])
    }

    /// Where a request picked with `pick` goes when the upstreams `out`
    /// says are ejected should be passed over: the first of the turn that is
    /// not out (all out: the one picked, as if none were), and its fallback
    /// (the standby, else the next other upstream not out, else any other).
    /// With nothing out it is `resolve`'s and `fallback`'s choice.
    pub fn choose(&self, pick: usize, out: impl Fn(SocketAddr) -> bool) -> Option<(SocketAddr, Option<Fallback>)> {
        let len = self.upstreams.len();
        if len == 0 {
            return None;
        }
        let turn = (0..len).map(|i| self.upstreams[(pick % len + i) % len]);
        let first = turn.clone().find(|a| !out(*a)).unwrap_or(self.upstreams[pick % len]);
        let fallback = match self.standby(pick) {
            Some(standby) => Some(Fallback::Standby(standby)),
            None => {
                let others = || turn.clone().filter(|a| *a != first);
                others().find(|a| !out(*a)).or_else(|| others().next()).map(Fallback::Upstream)
            }
        };
        Some((first, fallback))
    }

    /// Where a request picked with `pick` goes if its upstream fails it
    /// before anything was done: the standby if the route has one (a
    /// watched release's failure goes to the release that served before),
    /// else the next of its own upstreams, if it has another.
    pub fn fallback(&self, pick: usize) -> Option<Fallback> {
        if let Some(standby) = self.standby(pick) {
            return Some(Fallback::Standby(standby));
        }
        let len = self.upstreams.len();
        (len > 1).then(|| Fallback::Upstream(self.upstreams[(pick % len + 1) % len]))
    }
}

/// The host name of a `Host` header (RFC 9110 §7.2: `uri-host [ ":" port ]`):
/// the port stripped, an IPv6 literal's brackets removed (`[::1]:80` is
/// `::1`), lowercased, one trailing dot stripped (`example.com.` is the same
/// host as `example.com`). `None` when nothing is left. Borrows when the
/// header is already in normal form, as nearly every request's is.
pub fn normalize_host(header: &str) -> Option<Cow<'_, str>> {
    let header = header.trim();
    let host = if let Some(rest) = header.strip_prefix('[') {
        // An IPv6 literal; whatever follows the `]` is the port.
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.starts_with(':')) {
            return None;
        }
        inside
    } else {
        match header.rsplit_once(':') {
            // A bare IPv6 address without brackets is not a valid Host, but
            // it is unambiguous: more than one colon means no port.
            Some((name, _)) if name.contains(':') => header,
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            Some(_) => return None,
            None => header,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn route(ports: &[u16]) -> Route {
        Route {
            upstreams: ports.iter().map(|&p| addr(p)).collect(),
            standby: vec![],
            route_version: 1,
            label: "hello/live".into(),
            stats: Default::default(),
        }
    }

    fn table() -> RouteTable {
        RouteTable::new([
            ("hello.example".to_string(), route(&[8001])),
            ("Two.Example.".to_string(), route(&[8002, 8003])),
            ("empty.example".to_string(), route(&[])),
            ("[::1]:80".to_string(), route(&[8006])),
        ])
    }

    #[track_caller]
    fn check(host: Option<&str>, expect: Resolution) {
        assert_eq!(table().resolve(host, 0), expect, "Host: {host:?}");
    }

    #[test]
    fn a_wildcard_serves_one_level_below_it_and_an_exact_name_beats_it() {
        let table = RouteTable::new([
            ("*.shop.example.com".to_string(), route(&[8010])),
            ("www.shop.example.com".to_string(), route(&[8011])),
            ("*.com".to_string(), route(&[8012])),
        ]);
        assert_eq!(table.resolve(Some("api.shop.example.com:443"), 0), Resolution::Upstream(addr(8010)));
        assert_eq!(table.resolve(Some("WWW.shop.example.com"), 0), Resolution::Upstream(addr(8011)));
        for miss in ["a.b.shop.example.com", "shop.example.com", "example.com"] {
            assert_eq!(table.resolve(Some(miss), 0), Resolution::UnknownHost(miss.into()), "{miss}");
        }
    }

    #[test]
    fn a_known_host_resolves_to_its_upstream() {
        check(Some("hello.example"), Resolution::Upstream(addr(8001)));
    }

    #[test]
    fn the_port_is_stripped() {
        check(Some("hello.example:8080"), Resolution::Upstream(addr(8001)));
        check(Some("hello.example:"), Resolution::Upstream(addr(8001)));
    }

    #[test]
    fn host_names_are_case_insensitive() {
        check(Some("HELLO.Example:80"), Resolution::Upstream(addr(8001)));
        check(Some("two.example"), Resolution::Upstream(addr(8002)));
    }

    #[test]
    fn one_trailing_dot_is_stripped_but_not_two() {
        check(Some("hello.example."), Resolution::Upstream(addr(8001)));
        check(Some("hello.example.:443"), Resolution::Upstream(addr(8001)));
        check(Some("hello.example.."), Resolution::UnknownHost("hello.example.".into()));
    }

    #[test]
    fn ipv6_literals_lose_brackets_and_port() {
        check(Some("[::1]:8080"), Resolution::Upstream(addr(8006)));
        check(Some("[::1]"), Resolution::Upstream(addr(8006)));
        check(Some("::1"), Resolution::Upstream(addr(8006)));
        check(Some("[::2]"), Resolution::UnknownHost("::2".into()));
    }

    #[test]
    fn malformed_hosts_are_missing_hosts() {
        check(None, Resolution::MissingHost);
        check(Some(""), Resolution::MissingHost);
        check(Some("  "), Resolution::MissingHost);
        check(Some(":80"), Resolution::MissingHost);
        check(Some("."), Resolution::MissingHost);
        check(Some("hello.example:http"), Resolution::MissingHost);
        check(Some("[::1"), Resolution::MissingHost);
        check(Some("[::1]x"), Resolution::MissingHost);
    }

    #[test]
    fn an_unknown_host_is_named_in_normal_form() {
        check(Some("Other.Example:80"), Resolution::UnknownHost("other.example".into()));
    }

    #[test]
    fn a_known_host_without_upstreams_has_no_upstream() {
        check(Some("empty.example"), Resolution::NoUpstream("empty.example".into()));
    }

    #[test]
    fn picks_go_round_robin() {
        let t = table();
        let picked: Vec<_> = (0..5).map(|pick| t.resolve(Some("two.example"), pick)).collect();
        let expect = [8002, 8003, 8002, 8003, 8002].map(|p| Resolution::Upstream(addr(p)));
        assert_eq!(picked, expect);
        assert_eq!(t.resolve(Some("hello.example"), usize::MAX), Resolution::Upstream(addr(8001)));
    }

    #[test]
    fn the_normal_form_borrows_when_it_can() {
        assert!(matches!(normalize_host("hello.example:80"), Some(Cow::Borrowed("hello.example"))));
        assert!(matches!(normalize_host("Hello.example"), Some(Cow::Owned(_))));
    }

    #[test]
    fn get_and_len_see_normalized_names() {
        let t = table();
        assert_eq!(t.len(), 4);
        assert!(!t.is_empty());
        assert_eq!(t.get("TWO.example:1").map(|r| r.upstreams.len()), Some(2));
        assert!(t.get("nowhere").is_none());
        assert!(RouteTable::default().is_empty());
    }

    #[test]
    fn the_fallback_is_the_standby_else_another_upstream() {
        let mut r = route(&[8001, 8002, 8003]);
        assert_eq!(r.fallback(0), Some(Fallback::Upstream(addr(8002))));
        assert_eq!(r.fallback(2), Some(Fallback::Upstream(addr(8001))));
        assert_eq!(r.fallback(usize::MAX).map(Fallback::addr), Some(addr(8002)), "never the upstream picked (8001)");
        r.standby = vec![addr(7001)];
        assert_eq!(r.fallback(1), Some(Fallback::Standby(addr(7001))));
        assert_eq!(route(&[8001]).fallback(0), None, "one upstream and no standby: nowhere else to go");
    }

    #[test]
    fn a_later_entry_replaces_an_earlier_one() {
        let t = RouteTable::new([("a".to_string(), route(&[1])), ("A.".to_string(), route(&[2]))]);
        assert_eq!(t.resolve(Some("a"), 0), Resolution::Upstream(addr(2)));
    }

    #[test]
    fn ejected_upstreams_are_passed_over_while_others_serve() {
        let r = route(&[1, 2, 3]);
        // Nothing out: the turn's own choice and fallback.
        for pick in 0..6 {
            let expect = (r.upstreams[pick % 3], r.fallback(pick));
            assert_eq!(r.choose(pick, |_| false), Some(expect));
        }
        let out = |a: SocketAddr| a.port() == 2;
        assert_eq!(r.choose(1, out), Some((addr(3), Some(Fallback::Upstream(addr(1))))));
        assert_eq!(r.choose(0, out), Some((addr(1), Some(Fallback::Upstream(addr(3))))));
        // Everything out: as if nothing were.
        assert_eq!(r.choose(1, |_| true), Some((addr(2), Some(Fallback::Upstream(addr(3))))));
        assert_eq!(route(&[]).choose(0, |_| false), None);
    }
}
