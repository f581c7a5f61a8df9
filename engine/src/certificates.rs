//! TLS certificates: the `certificates` stream's fold (which certificate
//! serves each domain, failed renewals, the ACME challenges routers answer),
//! the checks an uploaded or issued certificate passes, and how its PEM
//! chain and private key are kept: in the value table under the
//! certificate's fingerprint (`cert-sha256:` + the SHA-256 of the leaf's
//! DER), never in an event. Routers follow the stream and load the PEMs by
//! fingerprint, so every router serves the same certificates.
//!
//! Why a stream of its own rather than the routes stream: certificate work
//! (renewals every few weeks, challenges during each order) would move the
//! route version every router acknowledges and that cutovers append at;
//! apart, neither waits for the other.
//!
//! Pure parts first (the fold, the checks, when a domain needs an order);
//! the effectful `store_certificate` and `load_pair` at the end.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use slipway_proto::event::{
    AcmeAccountRegistered, AcmeChallengeReady, CertificateRemoved, CertificateRenewalFailed, CertificateSource, CertificateStored,
    HttpsRedirectSet, CERTIFICATES_STREAM,
};
use slipway_proto::Event;
use slipway_store::{EventStore, ExpectedVersion, StoreError};

use crate::requests::{self, Outcome, Rejection};

/// What a fingerprint starts with in the value table.
pub const FINGERPRINT_PREFIX: &str = "cert-sha256:";

/// One domain's certificate state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainCertificate {
    /// The certificate serving now.
    pub current: Option<CertificateStored>,
    /// The latest failed ACME order since `current` was stored.
    pub failure: Option<CertificateRenewalFailed>,
    /// When the first of those failures was (the latest is `failure`).
    pub failing_since: Option<DateTime<Utc>>,
}

/// The certificates stream, folded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Certificates {
    pub version: u64,
    pub by_domain: BTreeMap<String, DomainCertificate>,
    /// The ACME challenges routers answer, by token.
    pub challenges: BTreeMap<String, AcmeChallengeReady>,
    /// Domains whose redirect from plain HTTP to HTTPS was set (`false`:
    /// off); a domain not here is redirected once it has a certificate.
    pub redirects: BTreeMap<String, bool>,
    /// The ACME account registered at each directory URL, its credentials
    /// in the value table.
    pub accounts: BTreeMap<String, AcmeAccountRegistered>,
}

impl Certificates {
    /// Applies the stream's next event.
    pub fn apply(&mut self, event: &Event) {
        self.version += 1;
        match event {
            Event::CertificateStored(c) => {
                let domain = self.by_domain.entry(c.domain.clone()).or_default();
                domain.current = Some(c.clone());
                domain.failure = None;
                domain.failing_since = None;
            }
            Event::CertificateRenewalFailed(f) => {
                let domain = self.by_domain.entry(f.domain.clone()).or_default();
                domain.failing_since.get_or_insert(f.at);
                domain.failure = Some(f.clone());
            }
            Event::AcmeChallengeReady(c) => {
                self.challenges.insert(c.token.clone(), c.clone());
            }
            Event::AcmeChallengeFinished(c) => {
                self.challenges.remove(&c.token);
            }
            Event::CertificateRemoved(r) => {
                if let Some(domain) = self.by_domain.get_mut(&r.domain) {
                    if domain.current.as_ref().is_some_and(|c| c.fingerprint == r.fingerprint) {
                        domain.current = None;
                        domain.failure = None;
                        domain.failing_since = None;
                    }
                }
            }
            Event::HttpsRedirectSet(r) => {
                self.redirects.insert(r.domain.clone(), r.redirect);
            }
            Event::AcmeAccountRegistered(a) => {
                self.accounts.insert(a.directory.clone(), a.clone());
            }
            _ => {}
        }
    }

    /// Domains whose latest ACME order failed.
    pub fn failing(&self) -> usize {
        self.by_domain.values().filter(|d| d.failure.is_some()).count()
    }
}

impl DomainCertificate {
    /// Its renewal state in words at `now`, for `cert list` and `status`;
    /// `routed`: an environment has the domain (only those are ordered).
    pub fn renewal(&self, domain: &str, now: DateTime<Utc>, routed: bool) -> String {
        let state = match (&self.current, &self.failure) {
            (_, Some(f)) => {
                let since = self.failing_since.unwrap_or(f.at);
                format!("failing since {}: {}", seconds(since), f.reason)
            }
            (Some(c), None) if c.source == CertificateSource::Acme && !routed => {
                format!("not renewed: no environment has {domain} (slipway cert remove '{domain}')")
            }
            (Some(c), None) if c.source == CertificateSource::Acme => format!("renews from {}", seconds(renew_at(c))),
            (Some(_), None) => "renewed by hand".to_string(),
            (None, None) if domain.starts_with("*.") => {
                "none yet (a wildcard needs an uploaded certificate or --acme-dns-hook)".to_string()
            }
            (None, None) => "none yet".to_string(),
        };
        match &self.current {
            Some(c) if now >= c.not_after => format!("EXPIRED at {} (clients refuse it); {state}", seconds(c.not_after)),
            _ => state,
        }
    }

    /// `acme` or `uploaded`, if it has a certificate.
    pub fn source(&self) -> Option<&'static str> {
        self.current.as_ref().map(|c| match c.source {
            CertificateSource::Acme => "acme",
            CertificateSource::Uploaded => "uploaded",
        })
    }
}

/// How far in the future a certificate's validity may start when it is
/// added (clock skew between its issuer and this host).
const NOT_YET_VALID_SKEW_MINUTES: i64 = 10;

/// A time as `cert list` shows it: RFC 3339 to the second, in UTC.
pub fn seconds(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// When a certificate is renewed: two thirds into its lifetime.
pub fn renew_at(c: &CertificateStored) -> DateTime<Utc> {
    c.not_before + (c.not_after - c.not_before) * 2 / 3
}

/// Why a domain needs an ACME order now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// It has no certificate.
    First,
    /// Its ACME certificate is two thirds through its lifetime.
    Renewal,
}

/// The domains that need an ACME order at `now`, from the custom domains
/// and the certificates: a domain without a certificate, or whose ACME
/// certificate reached two thirds of its lifetime; after a failed order,
/// not before `retry_after` has passed. Domains with an uploaded
/// certificate never are (renewing those is their uploader's). Wildcards
/// are due as any domain: without a DNS hook, which alone can prove them
/// (DNS-01), the caller records why it cannot order one, so a wildcard
/// never runs out unsaid.
pub fn due<'a>(
    domains: impl IntoIterator<Item = &'a String>,
    certificates: &Certificates,
    now: DateTime<Utc>,
    retry_after: Duration,
) -> Vec<(String, Need)> {
    let retry_after = chrono::Duration::from_std(retry_after).unwrap_or(chrono::Duration::MAX);
    domains
        .into_iter()
        .filter_map(|domain| {
            let state = certificates.by_domain.get(domain).cloned().unwrap_or_default();
            if let Some(failed) = &state.failure {
                if now < failed.at + retry_after {
                    return None;
                }
            }
            match &state.current {
                None => Some((domain.clone(), Need::First)),
                Some(c) if c.source == CertificateSource::Acme && now >= renew_at(c) => Some((domain.clone(), Need::Renewal)),
                Some(_) => None,
            }
        })
        .collect()
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    pub fingerprint: String,
    pub names: Vec<String>,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

/// Checks a PEM chain and key for `domain` at `now`: they parse, the key
/// belongs to the leaf, the leaf's names cover the domain, and it has not
/// expired. The refusal says what is wrong and never quotes the key.
pub fn check(domain: &str, chain_pem: &str, key_pem: &str, now: DateTime<Utc>) -> Result<Inspected, String> {
    let certified = slipway_router::certified_key(chain_pem.as_bytes(), key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let leaf = certified.cert.first().ok_or("the certificate file holds no PEM certificate")?;
    let inspected = inspect(leaf.as_ref())?;
    if !covers(&inspected.names, domain) {
        let names = if inspected.names.is_empty() { "no DNS name".to_string() } else { inspected.names.join(", ") };
        return Err(format!("the certificate does not cover `{domain}`: it names {names}"));
    }
    if inspected.not_after <= now {
        return Err(format!("the certificate expired at {}", seconds(inspected.not_after)));
    }
    // A few minutes of clock skew between its issuer and this host are
    // usual; beyond that it would replace a working certificate with one
    // every client refuses.
    if inspected.not_before > now + chrono::Duration::minutes(NOT_YET_VALID_SKEW_MINUTES) {
        return Err(format!("the certificate is not valid before {}: add it then", seconds(inspected.not_before)));
    }
    Ok(inspected)
}

/// The fingerprint, DNS names and validity of a DER certificate.
pub fn inspect(der: &[u8]) -> Result<Inspected, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("the certificate cannot be read: {e}"))?;
    let time = |t: x509_parser::time::ASN1Time| {
        DateTime::from_timestamp(t.timestamp(), 0).ok_or_else(|| "the certificate's validity is out of range".to_string())
    };
    let names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(name) => Some(name.trim_end_matches('.').to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(format!("the certificate's subject alternative names cannot be read: {e}")),
    };
    Ok(Inspected {
        fingerprint: format!("{FINGERPRINT_PREFIX}{}", hex::encode(Sha256::digest(der))),
        names,
        not_before: time(cert.validity().not_before)?,
        not_after: time(cert.validity().not_after)?,
    })
}

/// Whether a certificate naming `names` serves `domain`: the same name, or
/// (for an exact domain) a wildcard one level up (RFC 6125 §6.4.3).
pub fn covers(names: &[String], domain: &str) -> bool {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    names.iter().any(|name| {
        *name == domain
            || (!domain.starts_with("*.")
                && name.strip_prefix("*.").is_some_and(|parent| domain.split_once('.').is_some_and(|(_, p)| p == parent)))
    })
}

/// The chain and key as kept in the value table.
#[derive(Serialize, Deserialize)]
struct Pair {
    chain: String,
    key: String,
}

/// Stores a checked chain and key for `domain` and records
/// `CertificateStored`; refused (with why) when the check fails.
pub async fn store_certificate(
    store: &dyn EventStore,
    actor: &str,
    domain: &str,
    chain_pem: &str,
    key_pem: &str,
    source: CertificateSource,
    now: DateTime<Utc>,
) -> Outcome<CertificateStored> {
    let domain = match crate::domains::parse(domain) {
        Ok(d) => d,
        Err(e) => return Ok(Err(Rejection::invalid(e))),
    };
    let inspected = match check(&domain, chain_pem, key_pem, now) {
        Ok(i) => i,
        Err(e) => return Ok(Err(Rejection::invalid(e))),
    };
    let pair = serde_json::to_string(&Pair { chain: chain_pem.to_string(), key: key_pem.to_string() })
        .map_err(|e| StoreError::InvalidAppend { stream: CERTIFICATES_STREAM.into(), reason: e.to_string() })?;
    store.operational().put_value(&inspected.fingerprint, &pair).await?;
    let stored = CertificateStored {
        domain,
        fingerprint: inspected.fingerprint,
        not_before: inspected.not_before,
        not_after: inspected.not_after,
        source,
        names: inspected.names,
    };
    record(store, actor, &Event::CertificateStored(stored.clone())).await?;
    Ok(Ok(stored))
}

/// Stops serving `domain`'s certificate (`slipway cert remove`): records
/// `CertificateRemoved`; refused when no certificate serves the domain. A
/// domain still added to an environment gets a new certificate over ACME
/// when the engine orders certificates.
pub async fn remove_certificate(store: &dyn EventStore, actor: &str, domain: &str) -> Outcome<CertificateRemoved> {
    let domain = match crate::domains::parse(domain) {
        Ok(d) => d,
        Err(e) => return Ok(Err(Rejection::invalid(e))),
    };
    let certificates = load(store).await.map_err(load_failed)?;
    let Some(current) = certificates.by_domain.get(&domain).and_then(|d| d.current.as_ref()) else {
        return Ok(Err(Rejection::not_found(format!("no certificate serves {domain}; `slipway cert list` shows those that do"))));
    };
    let removed = CertificateRemoved { domain, fingerprint: current.fingerprint.clone() };
    record(store, actor, &Event::CertificateRemoved(removed.clone())).await?;
    Ok(Ok(removed))
}

/// Turns `domain`'s redirect from plain HTTP to HTTPS on or off: records
/// `HttpsRedirectSet` (nothing when it is already so).
pub async fn set_redirect(store: &dyn EventStore, actor: &str, domain: &str, redirect: bool) -> Outcome<HttpsRedirectSet> {
    let domain = match crate::domains::parse(domain) {
        Ok(d) => d,
        Err(e) => return Ok(Err(Rejection::invalid(e))),
    };
    let certificates = load(store).await.map_err(load_failed)?;
    let set = HttpsRedirectSet { domain, redirect };
    if certificates.redirects.get(&set.domain).copied().unwrap_or(true) != redirect {
        record(store, actor, &Event::HttpsRedirectSet(set.clone())).await?;
    }
    Ok(Ok(set))
}

fn load_failed(e: crate::load::LoadError) -> StoreError {
    requests::unreadable(CERTIFICATES_STREAM.into(), e)
}

/// Appends an event to the certificates stream.
pub async fn record(store: &dyn EventStore, actor: &str, event: &Event) -> Result<(), StoreError> {
    let envelope = requests::envelope(CERTIFICATES_STREAM, event, uuid::Uuid::now_v7(), actor, None);
    store
        .append(CERTIFICATES_STREAM, ExpectedVersion::Any, std::slice::from_ref(&envelope), &[])
        .await?
        .map_err(|c| StoreError::InvalidAppend { stream: CERTIFICATES_STREAM.into(), reason: c.to_string() })?;
    Ok(())
}

/// The PEM chain and key stored under `fingerprint`; `None` when missing
/// or unreadable.
pub async fn load_pair(store: &dyn EventStore, fingerprint: &str) -> Result<Option<(String, String)>, StoreError> {
    let mut values = store.operational().values(&[fingerprint.to_string()]).await?;
    Ok(values.remove(fingerprint).and_then(|v| serde_json::from_str::<Pair>(&v).ok()).map(|p| (p.chain, p.key)))
}

/// The certificates stream, read and folded.
pub async fn load(store: &dyn EventStore) -> Result<Certificates, crate::load::LoadError> {
    let mut certificates = Certificates::default();
    catch_up(store, &mut certificates).await?;
    Ok(certificates)
}

/// Applies what the stream recorded after `certificates.version`; `true`
/// if anything was.
pub async fn catch_up(store: &dyn EventStore, certificates: &mut Certificates) -> Result<bool, crate::load::LoadError> {
    let recorded = store.read_stream(CERTIFICATES_STREAM, certificates.version + 1).await?;
    for event in crate::load::decode_all(&recorded)? {
        certificates.apply(&event);
    }
    Ok(!recorded.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_proto::event::{AcmeChallengeFinished, ChallengeMethod};

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn stored(domain: &str, from: i64, to: i64, source: CertificateSource) -> Event {
        Event::CertificateStored(CertificateStored {
            domain: domain.into(),
            fingerprint: format!("{FINGERPRINT_PREFIX}{domain}{from}"),
            not_before: at(from),
            not_after: at(to),
            source,
            names: vec![domain.into()],
        })
    }

    fn failed(domain: &str, when: i64) -> Event {
        Event::CertificateRenewalFailed(CertificateRenewalFailed { domain: domain.into(), reason: "pebble down".into(), at: at(when) })
    }

    fn fold(events: &[Event]) -> Certificates {
        let mut c = Certificates::default();
        events.iter().for_each(|e| c.apply(e));
        c
    }

    #[test]
    fn a_domain_is_ordered_first_then_renewed_at_two_thirds_and_retried_only_after_the_pause() {
        let domains: Vec<String> = ["a.example", "b.example", "*.w.example", "up.example"].map(String::from).to_vec();
        let retry = Duration::from_secs(60);
        let history = vec![stored("b.example", 0, 900, CertificateSource::Acme), stored("up.example", 0, 900, CertificateSource::Uploaded)];
        let c = fold(&history);
        // a has none; b is a third in; uploaded ones are never ordered; a
        // wildcard is due as any domain (the caller says why it cannot order
        // one without a DNS hook).
        let w = ("*.w.example".to_string(), Need::First);
        assert_eq!(due(&domains, &c, at(300), retry), vec![("a.example".to_string(), Need::First), w.clone()]);
        assert_eq!(due(&domains, &c, at(599), retry).len(), 2);
        assert_eq!(
            due(&domains, &c, at(600), retry),
            vec![("a.example".into(), Need::First), ("b.example".into(), Need::Renewal), w.clone()]
        );
        // A failed renewal waits for the pause, the old certificate stays.
        let c = fold(&[history.clone(), vec![failed("b.example", 600), failed("a.example", 600)]].concat());
        assert_eq!(due(&domains, &c, at(630), retry), vec![w]);
        assert_eq!(due(&domains, &c, at(660), retry).len(), 3);
        assert_eq!(c.by_domain["b.example"].current.as_ref().map(|c| c.not_after), Some(at(900)));
        assert_eq!(c.failing(), 2);
        // A new certificate clears the failure.
        let c = fold(&[history, vec![failed("b.example", 600), stored("b.example", 650, 1550, CertificateSource::Acme)]].concat());
        assert_eq!((c.failing(), renew_at(c.by_domain["b.example"].current.as_ref().unwrap())), (0, at(1250)));
        assert!(due(&domains[1..2], &c, at(1249), retry).is_empty());
    }

    #[test]
    fn the_renewal_state_says_since_when_it_fails_whether_it_expired_and_whether_anything_renews_it() {
        let c = fold(&[stored("a.example", 0, 900, CertificateSource::Acme), failed("a.example", 600), failed("a.example", 700)]);
        let a = &c.by_domain["a.example"];
        assert_eq!(a.renewal("a.example", at(800), true), "failing since 2027-01-15T08:10:00Z: pebble down", "the first failure");
        assert_eq!(
            a.renewal("a.example", at(900), true),
            "EXPIRED at 2027-01-15T08:15:00Z (clients refuse it); failing since 2027-01-15T08:10:00Z: pebble down"
        );
        let c = fold(&[stored("a.example", 0, 900, CertificateSource::Acme)]);
        let a = &c.by_domain["a.example"];
        assert_eq!(a.renewal("a.example", at(0), true), "renews from 2027-01-15T08:10:00Z");
        assert!(a.renewal("a.example", at(0), false).starts_with("not renewed: no environment has a.example"));
        assert!(DomainCertificate::default().renewal("*.w.example", at(0), true).contains("--acme-dns-hook"));
    }

    #[test]
    fn challenges_are_answered_until_finished() {
        let ready = Event::AcmeChallengeReady(AcmeChallengeReady {
            domain: "a.example".into(),
            token: "t".into(),
            key_authorization: "t.k".into(),
            method: ChallengeMethod::TlsAlpn01,
        });
        let c = fold(std::slice::from_ref(&ready));
        assert_eq!((c.challenges["t"].domain.as_str(), c.challenges["t"].method), ("a.example", ChallengeMethod::TlsAlpn01));
        let c = fold(&[ready, Event::AcmeChallengeFinished(AcmeChallengeFinished { domain: "a.example".into(), token: "t".into() })]);
        assert!(c.challenges.is_empty());
    }

    #[test]
    fn a_removed_certificate_serves_no_more_and_redirects_and_accounts_are_kept_by_name() {
        let removed = |fingerprint: &str| {
            Event::CertificateRemoved(CertificateRemoved { domain: "a.example".into(), fingerprint: fingerprint.into() })
        };
        let first = stored("a.example", 0, 900, CertificateSource::Acme);
        // A removal of another (older) certificate changes nothing.
        let c = fold(&[first.clone(), removed("cert-sha256:older")]);
        assert!(c.by_domain["a.example"].current.is_some());
        let c = fold(&[first, failed("a.example", 600), removed(&format!("{FINGERPRINT_PREFIX}a.example0"))]);
        assert_eq!(c.by_domain["a.example"], DomainCertificate::default());
        // Without a certificate, an added domain is ordered again.
        assert_eq!(due(&["a.example".to_string()], &c, at(700), Duration::from_secs(60)), vec![("a.example".into(), Need::First)]);
        let redirect = |on| Event::HttpsRedirectSet(HttpsRedirectSet { domain: "a.example".into(), redirect: on });
        let account = |url: &str| {
            Event::AcmeAccountRegistered(AcmeAccountRegistered {
                directory: "https://ca/dir".into(),
                account: url.into(),
                fingerprint: format!("acme-account-sha256:{url}"),
            })
        };
        let c = fold(&[redirect(false), account("https://ca/acct/1"), redirect(true), redirect(false), account("https://ca/acct/2")]);
        assert!(!c.redirects["a.example"]);
        assert_eq!(c.accounts["https://ca/dir"].account, "https://ca/acct/2");
    }

    #[test]
    fn names_cover_the_same_name_or_one_level_under_a_wildcard() {
        let names = vec!["shop.example".to_string(), "*.api.example".to_string()];
        assert!(covers(&names, "shop.example") && covers(&names, "SHOP.example.") && covers(&names, "v1.api.example"));
        assert!(covers(&names, "*.api.example"));
        assert!(!covers(&names, "a.v1.api.example") && !covers(&names, "api.example") && !covers(&names, "www.shop.example"));
        assert!(!covers(&["*.example".to_string()], "*.a.example"));
    }

    #[test]
    fn a_certificate_is_checked_against_its_key_its_names_and_its_dates() {
        let issued = rcgen::generate_simple_self_signed(vec!["shop.example".to_string()]).unwrap();
        let (cert, key) = (issued.cert.pem(), issued.signing_key.serialize_pem());
        let other = rcgen::generate_simple_self_signed(vec!["shop.example".to_string()]).unwrap().signing_key.serialize_pem();
        let now = Utc::now();
        let ok = check("shop.example", &cert, &key, now).unwrap();
        assert_eq!(ok.names, ["shop.example"]);
        assert!(ok.fingerprint.starts_with(FINGERPRINT_PREFIX) && ok.fingerprint.len() == FINGERPRINT_PREFIX.len() + 64);
        assert!(check("shop.example", &cert, &other, now).unwrap_err().contains("does not belong"));
        assert!(check("www.example", &cert, &key, now).unwrap_err().contains("does not cover `www.example`: it names shop.example"));
        assert!(check("shop.example", &cert, &key, DateTime::from_timestamp(70_000_000_000, 0).unwrap()).unwrap_err().contains("expired"));
        // Valid only later: refused, beyond a few minutes of clock skew.
        let early = check("shop.example", &cert, &key, ok.not_before - chrono::Duration::days(1)).unwrap_err();
        assert!(early.starts_with("the certificate is not valid before "), "{early}");
        assert!(check("shop.example", &cert, &key, ok.not_before - chrono::Duration::minutes(5)).is_ok(), "skew is tolerated");
        let e = check("shop.example", "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n", &key, now).unwrap_err();
        assert!(!e.contains("PRIVATE"), "{e}");
        assert!(inspect(b"\x30\x03garbage").is_err());
    }
}
