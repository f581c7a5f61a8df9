//! Certificates over ACME (RFC 8555), beside the driver like the preview
//! sweep: the engine follows the routes stream (custom domains) and the
//! certificates stream, asks the pure `certificates::due` which domains
//! need an order now (no certificate yet, or two thirds into an ACME
//! certificate's lifetime, not sooner than `retry_after` after a failure),
//! and orders each with the HTTP-01 challenge, or TLS-ALPN-01 if the
//! operator chose it (instant-acme). The challenge is answered by the
//! routers, which follow `AcmeChallengeReady` on the certificates stream
//! (a key authorization is public by design): over HTTP-01 on their HTTP
//! port, over TLS-ALPN-01 on their HTTPS port with a certificate each
//! router makes for itself, for installations where port 80 is shut. The
//! certificate is stored like an uploaded one (`certificates::store_certificate`,
//! source `acme`); a failed order is recorded as `CertificateRenewalFailed`
//! and counted in `/metrics`, and the certificate the domain had keeps
//! serving. The ACME account is registered once per directory URL and kept:
//! its credentials (with its private key) go into the value table, sealed
//! like every value, and `AcmeAccountRegistered` onto the certificates
//! stream names them by fingerprint (never the key). A restarted engine
//! and every renewal use that account; a new one is registered only when
//! the CA says it does not know the stored one (a reset test CA) or its
//! credentials cannot be read.
//!
//! Wildcard domains need DNS-01, which Slipway answers only through the
//! operator's DNS hook (`acme_dns`); without one they are left to uploaded
//! certificates.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use sha2::{Digest, Sha256};
use slipway_proto::event::{
    AcmeAccountRegistered, AcmeChallengeFinished, AcmeChallengeReady, CertificateRenewalFailed, CertificateSource, ChallengeMethod,
    ROUTES_STREAM,
};
use slipway_proto::Event;
use slipway_store::subscription::wait_for_wakeup;
use slipway_store::EventStore;

use crate::acme_dns;
use crate::certificates::{self, Certificates};
use crate::routes::Routes;

/// The actor of what the ACME task records.
const ACTOR: &str = "engine:acme";
/// The longest one order may take, from creating it to storing the certificate.
const ORDER_LIMIT: Duration = Duration::from_secs(300);
/// The longest failure reason recorded.
const MAX_REASON: usize = 500;
/// What a stored ACME account's fingerprint starts with in the value table.
pub const ACCOUNT_PREFIX: &str = "acme-account-sha256:";

#[derive(Debug, Clone)]
pub struct AcmeOptions {
    /// The ACME directory URL (Let's Encrypt: `https://acme-v02.api.letsencrypt.org/directory`).
    pub directory: String,
    /// How exact names are proved: HTTP-01 (the default) or TLS-ALPN-01.
    pub method: ChallengeMethod,
    /// The account's contact, without `mailto:`.
    pub email: Option<String>,
    /// A PEM CA certificate to trust for the directory's own TLS (a test
    /// CA such as pebble's); the system's roots otherwise.
    pub ca_bundle: Option<PathBuf>,
    /// How often due domains are looked for when nothing was recorded.
    pub check_every: Duration,
    /// How long after a failed order the domain is tried again.
    pub retry_after: Duration,
    /// How long routers get to pick up a challenge before the CA is told
    /// to validate it.
    pub propagation: Duration,
    /// How long DNS servers get to pick up a TXT record the DNS hook set.
    pub dns_propagation: Duration,
    /// The program that publishes DNS-01 TXT records (`acme_dns`):
    /// wildcard domains get certificates only with one.
    pub dns_hook: Option<PathBuf>,
}

impl AcmeOptions {
    pub fn new(directory: String) -> Self {
        AcmeOptions {
            directory,
            method: ChallengeMethod::Http01,
            email: None,
            ca_bundle: None,
            check_every: Duration::from_secs(60),
            retry_after: Duration::from_secs(600),
            propagation: Duration::from_secs(1),
            dns_propagation: Duration::from_secs(10),
            dns_hook: None,
        }
    }
}

/// Orders and renews certificates until `shutdown`.
pub async fn run(store: Arc<dyn EventStore>, options: AcmeOptions, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut wake = store.wakeups();
    let mut routes = Routes::default();
    let mut certs = Certificates::default();
    let mut account: Option<Account> = None;
    // The fingerprint of a stored account the CA no longer knows.
    let mut unknown: Option<String> = None;
    let mut started = false;
    loop {
        wake.borrow_and_update();
        match catch_up(&*store, &mut routes, &mut certs).await {
            Ok(()) => {
                if !started {
                    // Challenges left by an engine that stopped mid-order
                    // are answered no more.
                    withdraw_stale(&*store, &certs).await;
                    started = true;
                }
                let due = certificates::due(routes.domains.keys(), &certs, Utc::now(), options.retry_after);
                for (domain, need) in due {
                    if domain.starts_with("*.") && options.dns_hook.is_none() {
                        failed(&*store, &domain, WILDCARD_NEEDS_DNS.into()).await;
                        continue;
                    }
                    tracing::info!(%domain, ?need, "ordering a certificate over ACME");
                    let mut forget = false;
                    let outcome = match account_for(&*store, &certs, &mut account, unknown.as_deref(), &options).await {
                        Ok(account) => order(&*store, account, &domain, &options, &mut forget).await,
                        Err(reason) => Err(reason),
                    };
                    if let Err(reason) = outcome {
                        failed(&*store, &domain, reason).await;
                        account = None;
                        if forget {
                            // The CA forgot the account (a reset test CA):
                            // the next attempt registers a new one.
                            unknown = certs.accounts.get(&options.directory).map(|a| a.fingerprint.clone());
                        }
                    }
                    // A registration is on the stream now: the next
                    // domain's account_for sees it.
                    if let Err(e) = certificates::catch_up(&*store, &mut certs).await {
                        tracing::warn!(error = %e, "reading certificates failed; trying again");
                    }
                }
                if let Err(e) = catch_up(&*store, &mut routes, &mut certs).await {
                    tracing::warn!(error = %e, "reading certificates failed; trying again");
                }
                slipway_telemetry::metrics::global().set_certificates_failing(certs.failing() as u64);
            }
            Err(e) => tracing::warn!(error = %e, "reading domains and certificates failed; trying again"),
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = wait_for_wakeup(&mut wake, options.check_every) => {}
        }
    }
}

async fn catch_up(store: &dyn EventStore, routes: &mut Routes, certs: &mut Certificates) -> Result<(), crate::load::LoadError> {
    let recorded = store.read_stream(ROUTES_STREAM, routes.version + 1).await?;
    for event in crate::load::decode_all(&recorded)? {
        routes.apply(&event);
    }
    certificates::catch_up(store, certs).await?;
    Ok(())
}

/// The ACME account at the directory: the one in hand, else the stored one
/// (unless the CA forgot it: `unknown`), else a new one, registered and
/// stored. The error is the failure's reason, naming no key.
async fn account_for<'a>(
    store: &dyn EventStore,
    certs: &Certificates,
    account: &'a mut Option<Account>,
    unknown: Option<&str>,
    options: &AcmeOptions,
) -> Result<&'a Account, String> {
    if account.is_none() {
        let stored = certs.accounts.get(&options.directory).filter(|a| Some(a.fingerprint.as_str()) != unknown);
        let restored = match stored {
            Some(registered) => restore(store, registered, options).await?,
            None => None,
        };
        *account = Some(match restored {
            Some(restored) => restored,
            None => {
                register(store, options).await.map_err(|e| format!("registering the ACME account at {} failed: {e}", options.directory))?
            }
        });
    }
    // Set just above.
    account.as_ref().ok_or_else(|| "no ACME account".to_string())
}

fn builder(options: &AcmeOptions) -> Result<instant_acme::AccountBuilder, instant_acme::Error> {
    match &options.ca_bundle {
        Some(path) => Account::builder_with_root(path),
        None => Account::builder(),
    }
}

/// The stored account; `None` (logged) when its credentials are gone or
/// unreadable, so that a new one is registered. An error (the store or the
/// CA cannot be reached) registers nothing: the next attempt tries again.
async fn restore(store: &dyn EventStore, registered: &AcmeAccountRegistered, options: &AcmeOptions) -> Result<Option<Account>, String> {
    let mut values = store
        .operational()
        .values(std::slice::from_ref(&registered.fingerprint))
        .await
        .map_err(|e| format!("reading the stored ACME account failed: {e}"))?;
    let Some(text) = values.remove(&registered.fingerprint) else {
        tracing::warn!(account = %registered.account, "the stored ACME account's credentials are missing; registering a new one");
        return Ok(None);
    };
    // The parse error could quote the key: say only what failed.
    let Ok(credentials) = serde_json::from_str::<AccountCredentials>(&text) else {
        tracing::warn!(account = %registered.account, "the stored ACME account's credentials cannot be read; registering a new one");
        return Ok(None);
    };
    let restored = async { builder(options)?.from_credentials(credentials).await };
    restored.await.map(Some).map_err(|e| format!("reaching the ACME directory {} failed: {}", options.directory, crate::error_chain(&e)))
}

/// Registers a new account, stores its credentials in the value table and
/// records `AcmeAccountRegistered`.
async fn register(store: &dyn EventStore, options: &AcmeOptions) -> Result<Account, String> {
    let acme = |e: instant_acme::Error| crate::error_chain(&e);
    let contact = options.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let new = NewAccount { contact: &contacts, terms_of_service_agreed: true, only_return_existing: false };
    let (created, credentials) = builder(options).map_err(acme)?.create(&new, options.directory.clone(), None).await.map_err(acme)?;
    let text = serde_json::to_string(&credentials).map_err(|_| "the account's credentials cannot be written".to_string())?;
    let fingerprint = format!("{ACCOUNT_PREFIX}{}", hex::encode(Sha256::digest(text.as_bytes())));
    store.operational().put_value(&fingerprint, &text).await.map_err(|e| format!("storing the account: {e}"))?;
    let registered = Event::AcmeAccountRegistered(AcmeAccountRegistered {
        directory: options.directory.clone(),
        account: created.id().to_string(),
        fingerprint,
    });
    certificates::record(store, ACTOR, &registered).await.map_err(|e| format!("recording the account: {e}"))?;
    tracing::info!(account = %created.id(), directory = %options.directory, "ACME account registered and stored");
    Ok(created)
}

/// Whether the CA answered that it does not know the account.
fn account_unknown(e: &instant_acme::Error) -> bool {
    matches!(e, instant_acme::Error::Api(p) if p.r#type.as_deref().is_some_and(|t| t.ends_with(":accountDoesNotExist")))
}

/// One order for `domain`, its challenges answered by the routers and
/// withdrawn afterwards whatever happened; the certificate stored.
/// `forget` is set when the CA does not know the account.
async fn order(store: &dyn EventStore, account: &Account, domain: &str, options: &AcmeOptions, forget: &mut bool) -> Result<(), String> {
    let mut answers = Answers::default();
    // A CA that stops answering mid-order must not stall every other domain.
    let inner = order_inner(store, account, domain, options, &mut answers, forget);
    let result = match tokio::time::timeout(ORDER_LIMIT, inner).await {
        Ok(result) => result,
        Err(_) => Err(format!("the CA did not complete the order within {} s", ORDER_LIMIT.as_secs())),
    };
    if let Some(hook) = &options.dns_hook {
        for (name, value) in answers.records {
            if let Err(reason) = acme_dns::run(hook, acme_dns::Action::Clear, &name, &value).await {
                tracing::warn!(%domain, %reason, "could not withdraw a DNS-01 record");
            }
        }
    }
    for token in answers.tokens {
        let finished = Event::AcmeChallengeFinished(AcmeChallengeFinished { domain: domain.to_string(), token });
        if let Err(e) = certificates::record(store, ACTOR, &finished).await {
            tracing::warn!(%domain, error = %e, "could not withdraw an ACME challenge");
        }
    }
    result
}

/// The challenges an order answered, withdrawn after it: HTTP-01 and TLS-ALPN-01 tokens
/// (the routers') and DNS-01 records (the hook's), as (name, value).
#[derive(Default)]
struct Answers {
    tokens: Vec<String>,
    records: Vec<(String, String)>,
}

async fn order_inner(
    store: &dyn EventStore,
    account: &Account,
    domain: &str,
    options: &AcmeOptions,
    answers: &mut Answers,
    forget: &mut bool,
) -> Result<(), String> {
    let acme = |what: &str, e: instant_acme::Error| format!("{what}: {}", crate::error_chain(&e));
    // A wildcard is proved over DNS-01 through the hook (it is due only
    // with one); every other name over the method chosen.
    let dns_hook = options.dns_hook.as_deref().filter(|_| domain.starts_with("*."));
    let identifiers = [Identifier::Dns(domain.to_string())];
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await.map_err(|e| {
        *forget = account_unknown(&e);
        acme("creating the order", e)
    })?;
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization.map_err(|e| acme("reading an authorization", e))?;
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(format!("the CA's authorization for {domain} is {other:?}")),
        }
        if let Some(hook) = dns_hook {
            let mut challenge =
                authorization.challenge(ChallengeType::Dns01).ok_or_else(|| format!("the CA offers no DNS-01 challenge for {domain}"))?;
            let (name, value) = (acme_dns::record_name(domain), challenge.key_authorization().dns_value());
            answers.records.push((name.clone(), value.clone()));
            acme_dns::run(hook, acme_dns::Action::Set, &name, &value).await?;
            tokio::time::sleep(options.dns_propagation).await;
            challenge.set_ready().await.map_err(|e| acme("asking the CA to validate", e))?;
            continue;
        }
        let kind = match options.method {
            ChallengeMethod::Http01 => ChallengeType::Http01,
            ChallengeMethod::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let method = options.method;
        let mut challenge = authorization.challenge(kind).ok_or_else(|| format!("the CA offers no {method} challenge for {domain}"))?;
        let ready = Event::AcmeChallengeReady(AcmeChallengeReady {
            domain: domain.to_string(),
            token: challenge.token.clone(),
            key_authorization: challenge.key_authorization().as_str().to_string(),
            method,
        });
        certificates::record(store, ACTOR, &ready).await.map_err(|e| format!("recording the challenge: {e}"))?;
        answers.tokens.push(challenge.token.clone());
        // Routers pick it up on the store's wake-up (or their next poll).
        tokio::time::sleep(options.propagation).await;
        challenge.set_ready().await.map_err(|e| acme("asking the CA to validate", e))?;
    }
    let retries = RetryPolicy::new().timeout(Duration::from_secs(60));
    let status = order.poll_ready(&retries).await.map_err(|e| acme("waiting for validation", e))?;
    if status != OrderStatus::Ready {
        return Err(if dns_hook.is_some() {
            format!("the CA did not validate {domain} over DNS-01 (order {status:?}); did the DNS hook publish the TXT record?")
        } else {
            let port = match options.method {
                ChallengeMethod::Http01 => 80,
                ChallengeMethod::TlsAlpn01 => 443,
            };
            format!(
                "the CA did not validate {domain} over {} (order {status:?}); is its DNS pointing at the routers, port {port}?",
                options.method
            )
        });
    }
    let key_pem = order.finalize().await.map_err(|e| acme("finalizing the order", e))?;
    let chain = order.poll_certificate(&retries).await.map_err(|e| acme("downloading the certificate", e))?;
    match certificates::store_certificate(store, ACTOR, domain, &chain, &key_pem, CertificateSource::Acme, Utc::now()).await {
        Ok(Ok(stored)) => {
            tracing::info!(%domain, not_after = %stored.not_after, fingerprint = %stored.fingerprint, "certificate obtained over ACME");
            Ok(())
        }
        Ok(Err(rejection)) => Err(format!("the CA's certificate was refused: {rejection}")),
        Err(e) => Err(format!("storing the certificate: {e}")),
    }
}

async fn withdraw_stale(store: &dyn EventStore, certs: &Certificates) {
    for (token, ready) in &certs.challenges {
        let domain = &ready.domain;
        let finished = Event::AcmeChallengeFinished(AcmeChallengeFinished { domain: domain.clone(), token: token.clone() });
        if let Err(e) = certificates::record(store, ACTOR, &finished).await {
            tracing::warn!(%domain, error = %e, "could not withdraw a stale ACME challenge");
        }
    }
}

/// Records a failed order (the old certificate keeps serving).
/// Why a wildcard gets no certificate from a server without a DNS hook.
const WILDCARD_NEEDS_DNS: &str = "a wildcard certificate is proved over DNS-01 only: start the server with --acme-dns-hook, \
                                  or upload one (slipway cert add)";

async fn failed(store: &dyn EventStore, domain: &str, mut reason: String) {
    if reason.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push('…');
    }
    tracing::warn!(%domain, %reason, "obtaining a certificate over ACME failed; the domain keeps its certificate if it has one");
    slipway_telemetry::metrics::global().certificate_renewal_failed();
    let event = Event::CertificateRenewalFailed(CertificateRenewalFailed { domain: domain.to_string(), reason, at: Utc::now() });
    if let Err(e) = certificates::record(store, ACTOR, &event).await {
        tracing::warn!(%domain, error = %e, "could not record the failed ACME order");
    }
}
