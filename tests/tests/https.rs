//! HTTPS through real router nodes on PostgreSQL with an uploaded
//! certificate: stored once (`slipway cert add`'s path), served by every
//! router from its next handshake, chosen by SNI, over HTTP/2 and
//! HTTP/1.1, with `X-Forwarded-Proto: https`; plain HTTP for the host is
//! redirected (unless the domain's redirect is turned off), a renewed
//! upload replaces it without a restart, and a removed one serves no more.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::time::Duration;

use chrono::Utc;
use hyper::Version;
use slipway_engine::certificates;
use slipway_engine::domains;
use slipway_engine::rejection::Rejection;
use slipway_proto::event::CertificateSource;
use slipway_tests::edge::Edge;
use slipway_tests::tls::{https_get, leaf_der, TestCa};
use slipway_tests::{eventually, get_via};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_certificate_serves_https_on_every_router_and_plain_http_is_redirected() {
    let mut edge = Edge::start().await;
    let (one, two) = (edge.start_router(None, None).await, edge.start_router(None, None).await);
    let store = &*edge.store;
    let domain = format!("www.{}.example", edge.project);
    domains::add(store, "test", &edge.project, "live", &domain).await.unwrap().unwrap();
    let ca = TestCa::new();
    let (chain, key) = ca.issue(&[&domain]);
    // A key of another certificate, and a certificate for other names, are refused.
    let (other_chain, other_key) = ca.issue(&["other.example"]);
    let refused =
        certificates::store_certificate(store, "test", &domain, &chain, &other_key, CertificateSource::Uploaded, Utc::now()).await.unwrap();
    assert!(matches!(refused, Err(Rejection::Invalid(m)) if m.contains("does not belong")));
    let refused =
        certificates::store_certificate(store, "test", &domain, &other_chain, &other_key, CertificateSource::Uploaded, Utc::now())
            .await
            .unwrap();
    assert!(matches!(refused, Err(Rejection::Invalid(m)) if m.contains("does not cover")));
    let stored = certificates::store_certificate(store, "test", &domain, &chain, &key, CertificateSource::Uploaded, Utc::now())
        .await
        .unwrap()
        .unwrap();
    // No key material in the log.
    let recorded = store.read_stream(slipway_proto::event::CERTIFICATES_STREAM, 1).await.unwrap();
    assert!(recorded.iter().all(|e| !e.envelope.payload.get().contains("PRIVATE KEY")));
    assert!(stored.fingerprint.starts_with("cert-sha256:"));
    // The key is sealed at rest in the value table.
    let pool = sqlx::PgPool::connect(&slipway_tests::pg_url()).await.unwrap();
    let query = format!("SELECT value FROM \"{}\".setting_values WHERE fingerprint = $1", edge.schema());
    let raw: String = sqlx::query_scalar(&query).bind(&stored.fingerprint).fetch_one(&pool).await.unwrap();
    assert!(!raw.contains("PRIVATE KEY") && !raw.contains("BEGIN"), "stored in clear");

    let root = ca.pem();
    for router in [one, two] {
        let got = eventually("the router to serve the certificate", Duration::from_secs(10), || async {
            https_get(router.https, &domain, "/", &root, &["h2", "http/1.1"]).await.ok()
        })
        .await;
        assert_eq!((got.status.as_u16(), got.version, got.body.as_str()), (200, Version::HTTP_2, "app via https"));
        assert_eq!(got.leaf, leaf_der(&chain));
        let got = https_get(router.https, &domain, "/", &root, &["http/1.1"]).await.unwrap();
        assert_eq!((got.version, got.body.as_str()), (Version::HTTP_11, "app via https"));
        // Plain HTTP for the host: a 308 to HTTPS; the environment's own name is served as before.
        let (status, _) = get_via(router.http, &domain, "/a?b", Duration::from_secs(5)).await.unwrap();
        assert_eq!(status, 308);
        let own = format!("{}-live.localhost", edge.project);
        assert_eq!(get_via(router.http, &own, "/", Duration::from_secs(5)).await.unwrap(), (200, "app via http".to_string()));
    }

    // A renewed upload serves from the next handshake, on every router.
    let (renewed, renewed_key) = ca.issue(&[&domain]);
    certificates::store_certificate(store, "test", &domain, &renewed, &renewed_key, CertificateSource::Uploaded, Utc::now())
        .await
        .unwrap()
        .unwrap();
    for router in [one, two] {
        eventually("the renewed certificate", Duration::from_secs(10), || async {
            let got = https_get(router.https, &domain, "/", &root, &["h2"]).await.ok()?;
            (got.leaf == leaf_der(&renewed)).then_some(())
        })
        .await;
    }
    let listed = certificates::load(store).await.unwrap();
    assert_eq!(listed.by_domain[&domain].current.as_ref().unwrap().source, CertificateSource::Uploaded);

    // The domain's redirect turned off (`slipway domain redirect ... off`):
    // plain HTTP is served on every router, and HTTPS still is.
    let plain = |router: slipway_tests::edge::RouterAddrs, want: (u16, &'static str)| {
        let domain = domain.clone();
        async move {
            let (status, body) = get_via(router.http, &domain, "/", Duration::from_secs(5)).await.ok()?;
            (status == want.0 && (want.1.is_empty() || body == want.1)).then_some(())
        }
    };
    domains::set_redirect(store, "test", &edge.project, "live", &domain, false).await.unwrap().unwrap();
    for router in [one, two] {
        eventually("plain HTTP served, not redirected", Duration::from_secs(10), || plain(router, (200, "app via http"))).await;
        assert_eq!(https_get(router.https, &domain, "/", &root, &["h2"]).await.unwrap().body, "app via https");
    }
    // On again: redirected again.
    domains::set_redirect(store, "test", &edge.project, "live", &domain, true).await.unwrap().unwrap();
    for router in [one, two] {
        eventually("plain HTTP redirected again", Duration::from_secs(10), || plain(router, (308, ""))).await;
    }
    // A domain the environment does not have is refused.
    let refused = domains::set_redirect(store, "test", &edge.project, "live", "nope.example", false).await.unwrap();
    assert!(matches!(refused, Err(Rejection::NotFound(m)) if m.contains("has no domain `nope.example`")));

    // The certificate removed (`slipway cert remove`): every router stops
    // serving it (the handshake is refused) and serves plain HTTP again.
    let removed = certificates::remove_certificate(store, "test", &domain).await.unwrap().unwrap();
    assert_eq!(removed.fingerprint, certificates::inspect(&leaf_der(&renewed)).unwrap().fingerprint);
    for router in [one, two] {
        eventually("no certificate served", Duration::from_secs(10), || async {
            https_get(router.https, &domain, "/", &root, &["h2"]).await.err()
        })
        .await;
        eventually("plain HTTP served once the certificate is gone", Duration::from_secs(10), || plain(router, (200, "app via http")))
            .await;
    }
    assert!(certificates::load(store).await.unwrap().by_domain[&domain].current.is_none());
    edge.shutdown().await;
}
