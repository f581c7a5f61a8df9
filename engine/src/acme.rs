//! Certificates over ACME (RFC 8555), beside the driver like the preview
//! sweep: the engine follows the routes stream (custom domains) and the
//! certificates stream, asks the pure `certificates::due` which domains
//! need an order now (no certificate yet, or two thirds into an ACME
//! certificate's lifetime, not sooner than `retry_after` after a failure),
//! and orders each with the HTTP-01 challenge (instant-acme). The challenge
//! is answered by the routers, which follow `AcmeChallengeReady` on the
//! certificates stream (a key authorization is public by design). The
//! certificate is stored like an uploaded one (`certificates::store_certificate`,
//! source `acme`); a failed order is recorded as `CertificateRenewalFailed`
//! and counted in `/metrics`, and the certificate the domain had keeps
//! serving. The ACME account key lives only in this process's memory: a
//! restarted engine, or one whose order failed, registers a new account
//! (the CA sees a new account; no secret is ever written).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use instant_acme::{Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy};
use slipway_proto::event::{AcmeChallengeFinished, AcmeChallengeReady, CertificateRenewalFailed, CertificateSource, ROUTES_STREAM};
use slipway_proto::Event;
use slipway_store::subscription::wait_for_wakeup;
use slipway_store::EventStore;

use crate::certificates::{self, Certificates};
use crate::routes::Routes;

/// The actor of what the ACME task records.
const ACTOR: &str = "engine:acme";
/// The longest one order may take, from creating it to storing the certificate.
const ORDER_LIMIT: Duration = Duration::from_secs(300);
/// The longest failure reason recorded.
const MAX_REASON: usize = 500;

#[derive(Debug, Clone)]
pub struct AcmeOptions {
    /// The ACME directory URL (Let's Encrypt: `https://acme-v02.api.letsencrypt.org/directory`).
    pub directory: String,
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
}

impl AcmeOptions {
    pub fn new(directory: String) -> Self {
        AcmeOptions {
            directory,
            email: None,
            ca_bundle: None,
            check_every: Duration::from_secs(60),
            retry_after: Duration::from_secs(600),
            propagation: Duration::from_secs(1),
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
                    tracing::info!(%domain, ?need, "ordering a certificate over ACME");
                    let outcome = match account_for(&mut account, &options).await {
                        Ok(account) => order(&*store, account, &domain, &options).await,
                        Err(e) => Err(format!("registering the ACME account at {} failed: {}", options.directory, crate::error_chain(&e))),
                    };
                    if let Err(reason) = outcome {
                        failed(&*store, &domain, reason).await;
                        // The CA may have forgotten the account (a reset
                        // test CA): the next attempt registers again.
                        account = None;
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

async fn account_for<'a>(account: &'a mut Option<Account>, options: &AcmeOptions) -> Result<&'a Account, instant_acme::Error> {
    if account.is_none() {
        let builder = match &options.ca_bundle {
            Some(path) => Account::builder_with_root(path)?,
            None => Account::builder()?,
        };
        let contact = options.email.as_ref().map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let new = NewAccount { contact: &contacts, terms_of_service_agreed: true, only_return_existing: false };
        let (created, _credentials) = builder.create(&new, options.directory.clone(), None).await?;
        *account = Some(created);
    }
    // Set just above.
    account.as_ref().ok_or(instant_acme::Error::Str("no ACME account"))
}

/// One order for `domain`, its challenges answered by the routers and
/// withdrawn afterwards whatever happened; the certificate stored.
async fn order(store: &dyn EventStore, account: &Account, domain: &str, options: &AcmeOptions) -> Result<(), String> {
    let mut tokens = Vec::new();
    // A CA that stops answering mid-order must not stall every other domain.
    let result = match tokio::time::timeout(ORDER_LIMIT, order_inner(store, account, domain, options, &mut tokens)).await {
        Ok(result) => result,
        Err(_) => Err(format!("the CA did not complete the order within {} s", ORDER_LIMIT.as_secs())),
    };
    for token in tokens {
        let finished = Event::AcmeChallengeFinished(AcmeChallengeFinished { domain: domain.to_string(), token });
        if let Err(e) = certificates::record(store, ACTOR, &finished).await {
            tracing::warn!(%domain, error = %e, "could not withdraw an ACME challenge");
        }
    }
    result
}

async fn order_inner(
    store: &dyn EventStore,
    account: &Account,
    domain: &str,
    options: &AcmeOptions,
    tokens: &mut Vec<String>,
) -> Result<(), String> {
    let acme = |what: &str, e: instant_acme::Error| format!("{what}: {}", crate::error_chain(&e));
    let identifiers = [Identifier::Dns(domain.to_string())];
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await.map_err(|e| acme("creating the order", e))?;
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization.map_err(|e| acme("reading an authorization", e))?;
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(format!("the CA's authorization for {domain} is {other:?}")),
        }
        let mut challenge =
            authorization.challenge(ChallengeType::Http01).ok_or_else(|| format!("the CA offers no HTTP-01 challenge for {domain}"))?;
        let ready = Event::AcmeChallengeReady(AcmeChallengeReady {
            domain: domain.to_string(),
            token: challenge.token.clone(),
            key_authorization: challenge.key_authorization().as_str().to_string(),
        });
        certificates::record(store, ACTOR, &ready).await.map_err(|e| format!("recording the challenge: {e}"))?;
        tokens.push(challenge.token.clone());
        // Routers pick it up on the store's wake-up (or their next poll).
        tokio::time::sleep(options.propagation).await;
        challenge.set_ready().await.map_err(|e| acme("asking the CA to validate", e))?;
    }
    let retries = RetryPolicy::new().timeout(Duration::from_secs(60));
    let status = order.poll_ready(&retries).await.map_err(|e| acme("waiting for validation", e))?;
    if status != OrderStatus::Ready {
        return Err(format!(
            "the CA did not validate {domain} over HTTP-01 (order {status:?}); is its DNS pointing at the routers, port 80?"
        ));
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
    for (token, (domain, _)) in &certs.challenges {
        let finished = Event::AcmeChallengeFinished(AcmeChallengeFinished { domain: domain.clone(), token: token.clone() });
        if let Err(e) = certificates::record(store, ACTOR, &finished).await {
            tracing::warn!(%domain, error = %e, "could not withdraw a stale ACME challenge");
        }
    }
}

/// Records a failed order (the old certificate keeps serving).
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
