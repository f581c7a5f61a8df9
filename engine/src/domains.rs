//! Custom domains: the names a user's environment is served under besides
//! `<project>-<env>.<router domain>`. They are recorded on the routes
//! stream (`DomainAdded`, `DomainRemoved`), so that routers apply them in
//! route order with the routes themselves and one stream's version decides
//! who holds a name: a domain belongs to one environment at a time, and a
//! second environment asking for it is refused with the holder named.
//!
//! Pure parts first (the name's form, the fold); routers match a host
//! to a domain, wildcards included, in their table
//! (`slipway_router::table`). The requests at the end append at the routes version they
//! were decided on, and decide again on a conflict.

use std::collections::BTreeMap;

use slipway_proto::event::{DomainAdded, DomainRemoved, ROUTES_STREAM};
use slipway_proto::Event;
use slipway_store::{EventStore, ExpectedVersion};

use crate::load;
use crate::requests::{self, Outcome, Rejection};

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
    if name.is_empty() || name.len() > MAX_LEN {
        return Err(format!("`{input}` is not a domain name: {expected}"));
    }
    let bare = name.strip_prefix("*.").unwrap_or(&name);
    let labels: Vec<&str> = bare.split('.').collect();
    if labels.len() < 2 {
        return Err(format!("`{input}` is not a domain name: {expected}"));
    }
    for label in &labels {
        let valid = !label.is_empty()
            && label.len() <= 63
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

/// Routes `domain` to `project`'s `environment`. Adding a domain the
/// environment has already is accepted and records nothing. Refused as
/// invalid (a bad name), not found (no such environment), or a conflict
/// when another environment holds the name (the holder is named).
pub async fn add(store: &dyn EventStore, actor: &str, project: &str, environment: &str, domain: &str) -> Outcome<String> {
    let domain = match parse(domain) {
        Ok(d) => d,
        Err(e) => return Ok(Err(Rejection::invalid(e))),
    };
    if let Err(rejection) = requests::project_environment(store, project, environment).await? {
        return Ok(Err(rejection));
    }
    let event = Event::DomainAdded(DomainAdded { project: project.into(), environment: environment.into(), domain: domain.clone() });
    for _ in 0..5 {
        let routes = load::routes(store).await.map_err(load_error)?;
        match routes.domains.get(&domain) {
            Some((p, e)) if p == project && e == environment => return Ok(Ok(domain)),
            Some((p, e)) => {
                return Ok(Err(Rejection::conflict(format!(
                    "domain `{domain}` already routes to {p} {e}; remove it there first (slipway domain remove {p} {e} {domain})"
                ))))
            }
            None => {}
        }
        if append_at(store, actor, routes.version, &event).await? {
            return Ok(Ok(domain));
        }
    }
    Ok(Err(Rejection::unavailable("the routes kept changing while the domain was added; try again")))
}

/// Stops routing `domain` to `project`'s `environment`; refused (not
/// found) when the environment does not have it.
pub async fn remove(store: &dyn EventStore, actor: &str, project: &str, environment: &str, domain: &str) -> Outcome<String> {
    let domain = match parse(domain) {
        Ok(d) => d,
        Err(e) => return Ok(Err(Rejection::invalid(e))),
    };
    let event = Event::DomainRemoved(DomainRemoved { project: project.into(), environment: environment.into(), domain: domain.clone() });
    for _ in 0..5 {
        let routes = load::routes(store).await.map_err(load_error)?;
        if routes.domains.get(&domain) != Some(&(project.to_string(), environment.to_string())) {
            let message = format!("{project} {environment} has no domain `{domain}`; see slipway domain list {project}");
            return Ok(Err(Rejection::not_found(message)));
        }
        if append_at(store, actor, routes.version, &event).await? {
            return Ok(Ok(domain));
        }
    }
    Ok(Err(Rejection::unavailable("the routes kept changing while the domain was removed; try again")))
}

/// Appends at `version` of the routes stream; `false` when it moved on.
async fn append_at(store: &dyn EventStore, actor: &str, version: u64, event: &Event) -> Result<bool, slipway_store::StoreError> {
    let envelope = requests::envelope(ROUTES_STREAM, event, uuid::Uuid::now_v7(), actor, None);
    Ok(store.append(ROUTES_STREAM, ExpectedVersion::Exactly(version), std::slice::from_ref(&envelope), &[]).await?.is_ok())
}

fn load_error(e: load::LoadError) -> slipway_store::StoreError {
    match e {
        load::LoadError::Store(e) => e,
        other => slipway_store::StoreError::Corrupt { stream: ROUTES_STREAM.into(), version: 0, reason: other.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_and_bad_ones_say_what_is_expected() {
        assert_eq!(parse("WWW.Example.COM.").unwrap(), "www.example.com");
        assert_eq!(parse("*.example.com").unwrap(), "*.example.com");
        for bad in ["", "localhost", "a..b", "-a.com", "a-.com", "a_b.com", "*.com.*", "a.*.com", "10.0.0.1", "x.com:80"] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains("expected a domain name"), "{bad}: {err}");
        }
        assert!(parse(&format!("{}.com", "a".repeat(64))).is_err());
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
