//! DNS-01 for a wildcard domain against pebble on loopback: the engine's
//! ACME task runs the operator's DNS hook (here a shell script that sets
//! and clears TXT records in pebble-challtestsrv, pebble's DNS), pebble
//! validates the record, and the router serves the wildcard certificate
//! for a name under it. A hook that fails first is recorded as a failed
//! order naming the hook and what it said; the next attempt, with the hook
//! fixed, succeeds, and every record set is cleared again. (Its own test
//! binary: the certificate gauges in `/metrics` are process-wide.)

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::path::Path;
use std::time::Duration;

use slipway_engine::acme::AcmeOptions;
use slipway_engine::{certificates, domains};
use slipway_proto::event::CertificateSource;
use slipway_tests::edge::{Edge, Pebble};
use slipway_tests::eventually;
use slipway_tests::tls::https_get;

/// A DNS hook for pebble-challtestsrv at `dns`, logging each call to `calls`;
/// `broken` makes `set` fail as a hook with wrong credentials would.
fn write_hook(path: &Path, dns: std::net::SocketAddr, calls: &Path, broken: bool) {
    let set = if broken {
        "echo 'provider said: 403 token rejected' >&2; exit 2".to_string()
    } else {
        format!("curl -sf -d \"{{\\\"host\\\":\\\"$2.\\\",\\\"value\\\":\\\"$3\\\"}}\" http://{dns}/set-txt")
    };
    let clear = format!("curl -sf -d \"{{\\\"host\\\":\\\"$2.\\\"}}\" http://{dns}/clear-txt");
    let script = format!(
        "#!/bin/sh\necho \"$1 $2\" >> '{}'\ncase \"$1\" in\n  set) {set} ;;\n  clear) {clear} ;;\n  *) exit 64 ;;\nesac\n",
        calls.display()
    );
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, script).unwrap();
    std::fs::set_permissions(&temporary, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_domain_gets_a_certificate_over_dns_01_through_the_hook() {
    let mut edge = Edge::start().await;
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pebble = Pebble::start(http.local_addr().unwrap().port(), Duration::from_secs(3600)).await;
    let router = edge.start_router(Some(http), None).await;
    let store = edge.store.clone();
    let dir = tempfile::tempdir().unwrap();
    let (hook, calls) = (dir.path().join("dns-hook"), dir.path().join("calls"));
    write_hook(&hook, pebble.dns_management, &calls, true);

    let mut options = AcmeOptions::new(pebble.directory.clone());
    options.ca_bundle = Some(pebble.api_ca.clone());
    options.check_every = Duration::from_millis(300);
    options.retry_after = Duration::from_secs(1);
    options.dns_propagation = Duration::from_millis(200);
    options.dns_hook = Some(hook.clone());
    let (stop, shutdown) = slipway_node::manual();
    let acme = tokio::spawn(slipway_engine::acme::run(store.clone(), options, async move {
        let _ = shutdown.await;
    }));

    let base = format!("{}.test", edge.project);
    let wildcard = format!("*.{base}");
    domains::add(&*store, "test", &edge.project, "live", &wildcard).await.unwrap().unwrap();

    // The broken hook fails the order: recorded, naming the hook and what it said.
    let failure = eventually("the failed order recorded", Duration::from_secs(20), || async {
        certificates::load(&*store).await.ok()?.by_domain.get(&wildcard)?.failure.clone()
    })
    .await;
    assert!(failure.reason.contains(&format!("set _acme-challenge.{base}`")), "{}", failure.reason);
    assert!(failure.reason.contains("exited with status 2: provider said: 403 token rejected"), "{}", failure.reason);

    // Fixed, the next attempt publishes the record and pebble validates it.
    write_hook(&hook, pebble.dns_management, &calls, false);
    let issued = eventually("a wildcard certificate over DNS-01", Duration::from_secs(30), || async {
        certificates::load(&*store).await.ok()?.by_domain.get(&wildcard)?.current.clone()
    })
    .await;
    assert_eq!(issued.source, CertificateSource::Acme);
    assert!(issued.names.contains(&wildcard), "{:?}", issued.names);

    // The router serves it for a name under the wildcard.
    let root = pebble.root().await;
    let name = format!("shop.{base}");
    eventually("HTTPS with the wildcard certificate", Duration::from_secs(10), || {
        let (name, root, fingerprint) = (name.clone(), root.clone(), issued.fingerprint.clone());
        async move {
            let got = https_get(router.https, &name, "/", &root, &["h2", "http/1.1"]).await.ok()?;
            let leaf = certificates::inspect(&got.leaf).ok()?;
            (got.body == "app via https" && leaf.fingerprint == fingerprint).then_some(())
        }
    })
    .await;

    // Every record set was cleared, the failed attempt's included; HTTP-01
    // was never used for the wildcard.
    let record = format!("_acme-challenge.{base}");
    let logged = std::fs::read_to_string(&calls).unwrap();
    let sets = logged.lines().filter(|l| *l == format!("set {record}")).count();
    let clears = logged.lines().filter(|l| *l == format!("clear {record}")).count();
    assert!(sets >= 2 && clears == sets, "{logged}");
    let recorded = store.read_stream(slipway_proto::event::CERTIFICATES_STREAM, 1).await.unwrap();
    assert!(recorded.iter().all(|e| e.envelope.message_type != "AcmeChallengeReady"), "no HTTP-01 challenge for a wildcard");

    let _ = stop.send(());
    let _ = acme.await;
    edge.shutdown().await;
}
