//! ACME end to end against pebble on loopback: a custom domain is added,
//! the engine's ACME task orders a certificate over HTTP-01 (pebble's
//! validation reaches the router's HTTP port, which answers from the
//! challenge recorded on the certificates stream), every router serves it
//! over HTTPS (checked by a client trusting only pebble's root), it is
//! renewed at two thirds of its (short) lifetime by a restarted engine with
//! the same ACME account (registered once, its key sealed in the value
//! table, never in the log), and once pebble is gone a
//! failed renewal is recorded, counted in the metrics, and the old
//! certificate keeps serving. Also the same over TLS-ALPN-01, with
//! nothing listening on pebble's HTTP-01 port.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::sync::Arc;
use std::time::Duration;

use slipway_engine::acme::AcmeOptions;
use slipway_engine::certificates::{self, renew_at};
use slipway_engine::domains;
use slipway_proto::event::{CertificateSource, ChallengeMethod, CERTIFICATES_STREAM};
use slipway_store::EventStore;
use slipway_tests::edge::{Edge, Pebble};
use slipway_tests::eventually;
use slipway_tests::tls::https_get;

/// The engine's ACME task on `store`, until told to stop.
fn start_acme(store: &Arc<dyn EventStore>, options: AcmeOptions) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (stop, shutdown) = slipway_node::manual();
    let task = tokio::spawn(slipway_engine::acme::run(store.clone(), options, async move {
        let _ = shutdown.await;
    }));
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_gets_a_certificate_over_acme_renews_it_and_keeps_it_when_a_renewal_fails() {
    let mut edge = Edge::start().await;
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut pebble = Pebble::start(http.local_addr().unwrap().port(), Duration::from_secs(15)).await;
    let router = edge.start_router(Some(http), None).await;
    let store = edge.store.clone();
    let mut options = AcmeOptions::new(pebble.directory.clone());
    options.email = Some("ops@example.org".into());
    options.ca_bundle = Some(pebble.api_ca.clone());
    options.check_every = Duration::from_millis(500);
    options.retry_after = Duration::from_secs(2);
    options.propagation = Duration::from_millis(300);
    let (stop, acme) = start_acme(&store, options.clone());

    // Given a custom domain, the engine gets it a certificate from pebble,
    let domain = format!("shop.{}.test", edge.project);
    domains::add(&*store, "test", &edge.project, "live", &domain).await.unwrap().unwrap();
    let first = eventually("a certificate over ACME", Duration::from_secs(20), || async {
        let certs = certificates::load(&*store).await.ok()?;
        certs.by_domain.get(&domain)?.current.clone()
    })
    .await;
    assert_eq!(first.source, CertificateSource::Acme);
    // and the router serves it to a client that trusts pebble's root only.
    let root = pebble.root().await;
    let served = |fingerprint: String| {
        let (domain, root) = (domain.clone(), root.clone());
        async move {
            let got = https_get(router.https, &domain, "/", &root, &["h2", "http/1.1"]).await.ok()?;
            let leaf = certificates::inspect(&got.leaf).ok()?;
            (got.body == "app via https" && leaf.fingerprint == fingerprint).then_some(())
        }
    };
    eventually("HTTPS with the ACME certificate", Duration::from_secs(10), || served(first.fingerprint.clone())).await;

    // The account is registered once and kept: its credentials sealed in
    // the value table, only its URL and fingerprint on the stream.
    let accounts = || async {
        let certs = certificates::load(&*store).await.unwrap();
        let recorded = store.read_stream(CERTIFICATES_STREAM, 1).await.unwrap();
        let registrations = recorded.iter().filter(|e| e.envelope.message_type == "AcmeAccountRegistered").count();
        assert!(recorded.iter().all(|e| !e.envelope.payload.get().contains("key_pkcs8")), "no account key in the log");
        (registrations, certs.accounts.get(&pebble.directory).cloned())
    };
    let (registrations, account) = accounts().await;
    let account = account.expect("the account is recorded");
    assert_eq!(registrations, 1);
    assert!(account.fingerprint.starts_with(slipway_engine::acme::ACCOUNT_PREFIX));
    let pool = sqlx::PgPool::connect(&slipway_tests::pg_url()).await.unwrap();
    let query = format!("SELECT value FROM \"{}\".setting_values WHERE fingerprint = $1", edge.schema());
    let raw: String = sqlx::query_scalar(&query).bind(&account.fingerprint).fetch_one(&pool).await.unwrap();
    assert!(raw.starts_with("sealed:") && !raw.contains("key_pkcs8"), "the account key is stored in clear");
    // An engine restarted before the renewal uses the same account.
    let _ = stop.send(());
    let _ = acme.await;
    let (stop, acme) = start_acme(&store, options);

    // Two thirds into its lifetime, it is renewed, and the new one serves.
    let second = eventually("the renewal", Duration::from_secs(20), || async {
        let certs = certificates::load(&*store).await.ok()?;
        certs.by_domain.get(&domain)?.current.clone().filter(|c| c.fingerprint != first.fingerprint)
    })
    .await;
    assert!(second.not_before >= renew_at(&first) - chrono::Duration::seconds(2), "renewed at two thirds: {second:?} after {first:?}");
    eventually("HTTPS with the renewed certificate", Duration::from_secs(10), || served(second.fingerprint.clone())).await;
    // Two issuances, two engines, one account.
    let (registrations, renewed_by) = accounts().await;
    assert_eq!((registrations, renewed_by.map(|a| a.account)), (1, Some(account.account.clone())));

    // With the CA gone, the next renewal fails: recorded, counted, and the
    // renewed certificate keeps serving.
    pebble.stop().await;
    let failure = eventually("a failed renewal recorded", Duration::from_secs(20), || async {
        let certs = certificates::load(&*store).await.ok()?;
        certs.by_domain.get(&domain)?.failure.clone()
    })
    .await;
    assert!(!failure.reason.is_empty());
    let certs = certificates::load(&*store).await.unwrap();
    assert_eq!(certs.by_domain[&domain].current.as_ref().unwrap().fingerprint, second.fingerprint);
    assert_eq!(certs.failing(), 1);
    served(second.fingerprint.clone()).await.expect("the old certificate keeps serving");
    let metrics = slipway_telemetry::metrics::global().render();
    assert!(metrics.contains("slipway_certificates_failing 1"), "{metrics}");
    assert!(metrics.lines().any(|l| l.starts_with("slipway_certificate_renewal_failures_total ") && !l.ends_with(" 0")), "{metrics}");

    let _ = stop.send(());
    let _ = acme.await;
    edge.shutdown().await;
}

/// With `--acme-challenge tls-alpn-01` the routers prove the domain on
/// their HTTPS port alone: pebble's HTTP-01 port has nothing listening, so
/// only the TLS-ALPN-01 handshake can succeed. The challenge is recorded
/// with its method and no key (each router makes its own), and withdrawn
/// once the certificate is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_gets_a_certificate_over_tls_alpn_01_with_port_80_shut() {
    let mut edge = Edge::start().await;
    let https = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shut = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let shut_port = shut.local_addr().unwrap().port();
    drop(shut);
    let pebble = Pebble::start_on(shut_port, https.local_addr().unwrap().port(), Duration::from_secs(3600)).await;
    let router = edge.start_router(None, Some(https)).await;
    let store = edge.store.clone();
    let mut options = AcmeOptions::new(pebble.directory.clone());
    options.method = ChallengeMethod::TlsAlpn01;
    options.ca_bundle = Some(pebble.api_ca.clone());
    options.check_every = Duration::from_millis(500);
    options.propagation = Duration::from_millis(300);
    let (stop, acme) = start_acme(&store, options);

    let domain = format!("tls.{}.test", edge.project);
    domains::add(&*store, "test", &edge.project, "live", &domain).await.unwrap().unwrap();
    let cert = eventually("a certificate over TLS-ALPN-01", Duration::from_secs(20), || async {
        let certs = certificates::load(&*store).await.ok()?;
        certs.by_domain.get(&domain)?.current.clone()
    })
    .await;
    assert_eq!(cert.source, CertificateSource::Acme);
    let root = pebble.root().await;
    eventually("HTTPS with the certificate", Duration::from_secs(10), || {
        let (domain, root, fingerprint) = (domain.clone(), root.clone(), cert.fingerprint.clone());
        async move {
            let got = https_get(router.https, &domain, "/", &root, &["h2", "http/1.1"]).await.ok()?;
            (got.body == "app via https" && certificates::inspect(&got.leaf).ok()?.fingerprint == fingerprint).then_some(())
        }
    })
    .await;
    let recorded = store.read_stream(CERTIFICATES_STREAM, 1).await.unwrap();
    let ready: Vec<_> = recorded.iter().filter(|e| e.envelope.message_type == "AcmeChallengeReady").collect();
    assert_eq!(ready.len(), 1);
    assert!(ready[0].envelope.payload.get().contains(r#""method":"tls-alpn-01""#), "{}", ready[0].envelope.payload.get());
    assert!(recorded.iter().all(|e| !e.envelope.payload.get().contains("PRIVATE KEY")), "no key in the log");
    eventually("the challenge withdrawn", Duration::from_secs(10), || async {
        certificates::load(&*store).await.ok()?.challenges.is_empty().then_some(())
    })
    .await;

    let _ = stop.send(());
    let _ = acme.await;
    edge.shutdown().await;
}

/// A wildcard can only be proved over DNS-01: without a DNS hook the
/// engine records why it orders nothing (shown by `cert list`, `status`
/// and counted in the metrics), instead of leaving it to run out unsaid.
/// No CA is reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_without_a_dns_hook_is_recorded_as_failing_not_left_to_expire() {
    let edge = Edge::start().await;
    let store = edge.store.clone();
    let mut options = AcmeOptions::new("https://127.0.0.1:9/never-reached".into());
    options.check_every = Duration::from_millis(200);
    let (stop, acme) = start_acme(&store, options);
    let wildcard = format!("*.{}.test", edge.project);
    domains::add(&*store, "test", &edge.project, "live", &wildcard).await.unwrap().unwrap();
    let failure = eventually("the wildcard's failure recorded", Duration::from_secs(10), || async {
        certificates::load(&*store).await.ok()?.by_domain.get(&wildcard)?.failure.clone()
    })
    .await;
    assert!(failure.reason.contains("--acme-dns-hook"), "{}", failure.reason);
    let _ = stop.send(());
    acme.await.unwrap();
}
