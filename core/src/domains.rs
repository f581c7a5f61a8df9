//! Custom domains, pure: the names a user's environment is served under
//! besides `<project>-<env>.<router domain>`. They are recorded on the
//! routes stream (`DomainAdded`, `DomainRemoved`), so that routers apply
//! them in route order with the routes themselves and one stream's version
//! decides who holds a name: a domain belongs to one environment at a time.
//!
//! Here: the name's form (`parse`), the fold (`apply`, `Domains`) and an
//! environment's domains (`of_environment`). Routers match a host to a
//! domain, wildcards included, in their own table; the requests that add
//! and remove a domain are the engine's (`slipway_engine::domains`).

use std::collections::BTreeMap;

use slipway_proto::Event;

/// The longest domain name DNS carries.
const MAX_LEN: usize = 253;

/// Every custom domain, to the (project, environment) it routes to.
pub type Domains = BTreeMap<String, (String, String)>;

/// A domain as the user typed it, checked and normalized: lowercase, no
/// trailing dot, at least two labels of letters, digits and inner dashes,
/// and optionally `*.` in front (a one-level wildcard). Refused with what
/// is expected.
pub fn parse(input: &str) -> Result<String, String> {
    let name = input.trim().trim_end_matches('.').to_ascii_lowercase();
    let expected = "expected a domain name such as `www.example.com` or `*.example.com` \
                    (letters, digits and '-' in dot-separated labels, at least two labels)";
    if name.is_empty() {
        return Err(format!("the domain name is empty: {expected}"));
    }
    if name.len() > MAX_LEN {
        return Err(format!("`{input}` is not a domain name: it is longer than {MAX_LEN} characters"));
    }
    if !name.is_ascii() {
        return Err(format!(
            "`{input}` is not a domain name in ASCII: give an internationalized name in its punycode form (`xn--...`, e.g. `idn2 {input}`)"
        ));
    }
    let bare = name.strip_prefix("*.").unwrap_or(&name);
    let labels: Vec<&str> = bare.split('.').collect();
    if labels.len() < 2 {
        return Err(format!("`{input}` is not a domain name: {expected}"));
    }
    for label in &labels {
        if label.contains('*') {
            return Err(format!(
                "`{input}` is not a domain name: a wildcard is `*.` in front of a domain, and only the first label may be `*`"
            ));
        }
        if label.len() > 63 {
            return Err(format!("`{input}` is not a domain name: label `{label}` is longer than 63 characters"));
        }
        let valid = !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(format!("`{input}` is not a domain name: label `{label}` is not valid; {expected}"));
        }
    }
    if labels.last().is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit())) {
        return Err(format!("`{input}` is an IP address, not a domain name: {expected}"));
    }
    Ok(name)
}

/// Whether `domain` (parsed) would name hosts where routers serve
/// environments as `<project>-<env>.<router domain>`: one label under a
/// router's domain, or the wildcard over it. Such a name could take
/// another environment's host name; the router domain it falls under is
/// returned. (Routers let their own names win regardless.)
pub fn under_router_domain<'a>(domain: &str, router_domains: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let (_, parent) = domain.split_once('.')?;
    router_domains.into_iter().find(|r| r.trim_end_matches('.').eq_ignore_ascii_case(parent))
}

/// Applies one routes-stream event to the domains (the routes projection's part).
pub fn apply(domains: &mut Domains, event: &Event) {
    match event {
        Event::DomainAdded(d) => {
            domains.insert(d.domain.clone(), (d.project.clone(), d.environment.clone()));
        }
        Event::DomainRemoved(d) if domains.get(&d.domain) == Some(&(d.project.clone(), d.environment.clone())) => {
            domains.remove(&d.domain);
        }
        // A removed environment serves nothing, under any name.
        Event::RouteRemoved(r) => domains.retain(|_, (p, e)| !(*p == r.project && *e == r.environment)),
        _ => {}
    }
}

/// The domains of one environment, sorted.
pub fn of_environment(domains: &Domains, project: &str, environment: &str) -> Vec<String> {
    domains.iter().filter(|(_, (p, e))| p == project && e == environment).map(|(d, _)| d.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_proto::event::{DomainAdded, DomainRemoved};

    #[test]
    fn names_are_normalized_and_bad_ones_say_what_is_expected() {
        assert_eq!(parse("WWW.Example.COM.").unwrap(), "www.example.com");
        assert_eq!(parse("*.example.com").unwrap(), "*.example.com");
        for bad in ["", "localhost", "a..b", "-a.com", "a-.com", "a_b.com", "10.0.0.1", "x.com:80"] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains("expected a domain name"), "{bad}: {err}");
        }
        assert!(parse(" ").unwrap_err().starts_with("the domain name is empty"));
        for wild in ["*.com.*", "a.*.com", "*.*.example.com"] {
            assert!(parse(wild).unwrap_err().contains("only the first label may be `*`"), "{wild}");
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(parse(&long).unwrap_err().contains("longer than 63 characters"));
        assert!(parse("bücher.example").unwrap_err().contains("punycode"));
        assert_eq!(parse("xn--bcher-kva.example").as_deref(), Ok("xn--bcher-kva.example"));
    }

    #[test]
    fn a_name_one_label_under_a_routers_domain_could_take_an_environments_host_name() {
        let routers = ["localhost", "apps.example.com"];
        assert_eq!(under_router_domain("shop-live.localhost", routers), Some("localhost"));
        assert_eq!(under_router_domain("*.apps.example.com", routers), Some("apps.example.com"));
        assert_eq!(under_router_domain("a.b.localhost", routers), None, "deeper names are no environment's");
        assert_eq!(under_router_domain("apps.example.com", routers), None, "nor is the domain itself");
        assert_eq!(under_router_domain("www.example.com", routers), None);
    }

    #[test]
    fn a_removed_environment_keeps_no_domain_and_a_stale_removal_changes_nothing() {
        let added =
            |p: &str, e: &str, d: &str| Event::DomainAdded(DomainAdded { project: p.into(), environment: e.into(), domain: d.into() });
        let mut domains = Domains::new();
        apply(&mut domains, &added("shop", "live", "shop.example.com"));
        apply(&mut domains, &added("shop", "live", "*.shop.example.com"));
        apply(&mut domains, &added("blog", "live", "blog.example.com"));
        let removed =
            Event::DomainRemoved(DomainRemoved { project: "blog".into(), environment: "test".into(), domain: "blog.example.com".into() });
        apply(&mut domains, &removed);
        assert_eq!(of_environment(&domains, "blog", "live"), ["blog.example.com"]);
        let route_removed = Event::RouteRemoved(slipway_proto::event::RouteRemoved { project: "shop".into(), environment: "live".into() });
        apply(&mut domains, &route_removed);
        assert!(of_environment(&domains, "shop", "live").is_empty());
        assert_eq!(domains.len(), 1);
    }
}
