//! The traffic edge without Docker: a store on PostgreSQL (a schema of the
//! test's own), a project whose `live` environment is routed to a small
//! hyper app on loopback (a `RouteChanged` recorded as a cutover would),
//! and real router nodes (`slipway_node::serve`) with an HTTP and an HTTPS
//! listener. Also pebble, Debian's ACME test server, with
//! pebble-challtestsrv as its DNS (every name is 127.0.0.1), so its HTTP-01
//! validation reaches the router's HTTP port, and its TXT records (set
//! through its management API) answer DNS-01. A missing program or service
//! fails the test, never skips it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use slipway_node::{Parts, RouterOptions, RouterPart};
use slipway_proto::envelope::Metadata;
use slipway_proto::event::{RouteChanged, RouteReason, ROUTES_STREAM};
use slipway_proto::{Envelope, Event};
use slipway_router::ServeOptions;
use slipway_store::postgres::{redact_url, PgOptions};
use slipway_store::queue::memory::MemoryQueue;
use slipway_store::queue::Queue;
use slipway_store::sealing::{Keyring, Sealing, SealingKey};
use slipway_store::{EventStore, ExpectedVersion, PgStore};
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::tls::TestCa;
use crate::{create_project, pg_url};

/// A store with one routed environment, and the routers serving it.
pub struct Edge {
    pub store: Arc<dyn EventStore>,
    pub project: String,
    schema: String,
    routers: Vec<crate::RouterTask>,
}

/// A router's two listeners.
#[derive(Debug, Clone, Copy)]
pub struct RouterAddrs {
    pub http: SocketAddr,
    pub https: SocketAddr,
}

impl Edge {
    /// A project with environment `live` routed to an app that answers
    /// `app via <X-Forwarded-Proto>`.
    pub async fn start() -> Edge {
        let tag = Uuid::now_v7().simple().to_string();
        let schema = format!("edge_{tag}");
        let url = pg_url();
        let store = PgStore::connect(&url, PgOptions { schema: Some(schema.clone()), ..Default::default() })
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {} ({e}); run `scripts/services`", redact_url(&url)));
        // Values (certificates' keys among them) sealed, as a server with --secrets-key.
        let key = SealingKey::from_hex(&SealingKey::generate_hex()).expect("a sealing key");
        let store = store.sealed(Sealing { keyring: Some(Arc::new(Keyring::new(key, Vec::new()))), required: true });
        let store: Arc<dyn EventStore> = Arc::new(store);
        let project = format!("edge-{}", &tag[tag.len() - 10..]);
        create_project(&*store, &project, "/nonexistent", &["live"]).await;
        let app = app().await;
        let route = Event::RouteChanged(RouteChanged {
            project: project.clone(),
            environment: "live".into(),
            deployment_id: Some(Uuid::now_v7()),
            upstreams: vec![app.to_string()],
            reason: RouteReason::Cutover,
            standby: vec![],
        });
        let id = Uuid::now_v7();
        let meta = Metadata { correlation_id: id, causation_id: None, actor: "test".into(), trace: None };
        let envelope = Envelope::new(id, Utc::now(), ROUTES_STREAM, &route, meta).expect("envelope");
        store.append(ROUTES_STREAM, ExpectedVersion::Any, &[envelope], &[]).await.expect("store").expect("appended");
        Edge { store, project, schema, routers: Vec::new() }
    }

    /// Starts a router (HTTP and HTTPS on free loopback ports) on the
    /// store; `http` and `https` pick the listeners' addresses (for
    /// pebble's `httpPort` and `tlsPort`, bound before pebble starts).
    pub async fn start_router(&mut self, http: Option<TcpListener>, https: Option<TcpListener>) -> RouterAddrs {
        let bind = |given: Option<TcpListener>| async move {
            match given {
                Some(listener) => listener,
                None => TcpListener::bind("127.0.0.1:0").await.expect("bind"),
            }
        };
        let (listener, https) = (bind(http).await, bind(https).await);
        let addrs = RouterAddrs { http: listener.local_addr().expect("address"), https: https.local_addr().expect("address") };
        let options = RouterOptions {
            router_id: format!("edge-router-{}", self.routers.len()),
            domain: "localhost".into(),
            listen: addrs.http,
            lease: slipway_engine::lease::DEFAULT_LEASE,
        };
        let part = RouterPart { listener, https: Some(https), options, proxy: ServeOptions::default() };
        let (stop, shutdown) = slipway_node::manual();
        let queue: Arc<dyn Queue> = Arc::new(MemoryQueue::default());
        let parts = Parts { router: Some(part), ..Default::default() };
        self.routers.push((stop, tokio::spawn(slipway_node::serve(self.store.clone(), queue, parts, shutdown))));
        addrs
    }

    /// The PostgreSQL schema the store is in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    pub async fn shutdown(mut self) {
        for (stop, task) in self.routers.drain(..) {
            let _ = stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        if let Ok(pool) = sqlx::PgPool::connect(&pg_url()).await {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema)).execute(&pool).await;
        }
    }
}

/// An app on loopback answering every request with the protocol it was
/// forwarded from.
async fn app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let proto = req.headers().get("x-forwarded-proto").and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("app via {proto}")))))
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    addr
}

/// Pebble and its DNS, started for one test and killed when dropped.
pub struct Pebble {
    pub directory: String,
    /// The CA pebble's own API is served under (for `--acme-ca-bundle`).
    pub api_ca: PathBuf,
    management: SocketAddr,
    /// pebble-challtestsrv's management API (`/set-txt`, `/clear-txt`):
    /// what a DNS hook talks to in the tests.
    pub dns_management: SocketAddr,
    api_ca_pem: String,
    pebble: Option<tokio::process::Child>,
    _dns: tokio::process::Child,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

impl Pebble {
    /// Pebble validating HTTP-01 on `http_port` (the router's), issuing
    /// certificates valid for `validity`.
    pub async fn start(http_port: u16, validity: Duration) -> Pebble {
        Pebble::start_on(http_port, free_port(), validity).await
    }

    /// Pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on
    /// `tls_port`, issuing certificates valid for `validity`.
    pub async fn start_on(http_port: u16, tls_port: u16, validity: Duration) -> Pebble {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = TestCa::new();
        let (cert, key) = ca.issue(&["127.0.0.1", "localhost"]);
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            path
        };
        let (cert, key, api_ca) = (write("cert.pem", &cert), write("key.pem", &key), write("api-ca.pem", &ca.pem()));
        let (listen, management) = (free_port(), free_port());
        let dns_port = std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("a free UDP port").port();
        let config = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": cert,
            "privateKey": key,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity.as_secs(),
        }});
        let config_path = write("pebble.json", &config.to_string());
        let spawn = |cmd: &mut tokio::process::Command, what: &str| {
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| panic!("{what} could not start ({e}); install it with `scripts/services` (Debian package pebble)"))
        };
        let dns_management = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dns = spawn(
            tokio::process::Command::new("pebble-challtestsrv")
                .args(["-dns01", &format!("127.0.0.1:{dns_port}"), "-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-management", &dns_management.to_string(), "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""]),
            "pebble-challtestsrv",
        );
        let pebble = spawn(
            tokio::process::Command::new("pebble")
                .args(["-config", &config_path.display().to_string(), "-dnsserver", &format!("127.0.0.1:{dns_port}")])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0"),
            "pebble",
        );
        let mut started = Pebble {
            directory: format!("https://127.0.0.1:{listen}/dir"),
            api_ca,
            management: SocketAddr::from(([127, 0, 0, 1], management)),
            dns_management,
            api_ca_pem: ca.pem(),
            pebble: Some(pebble),
            _dns: dns,
            _dir: dir,
        };
        let api = SocketAddr::from(([127, 0, 0, 1], listen));
        let pem = started.api_ca_pem.clone();
        crate::eventually("pebble to answer", Duration::from_secs(10), || {
            let pem = pem.clone();
            async move { crate::tls::https_get(api, "127.0.0.1", "/dir", &pem, &["http/1.1"]).await.ok().filter(|a| a.status == 200) }
        })
        .await;
        if let Some(child) = &mut started.pebble {
            assert!(child.try_wait().expect("pebble").is_none(), "pebble exited at start");
        }
        started
    }

    /// The root of the certificates pebble issues (`/roots/0` of its
    /// management API; pebble makes a new root each run).
    pub async fn root(&self) -> String {
        let answer =
            crate::tls::https_get(self.management, "127.0.0.1", "/roots/0", &self.api_ca_pem, &["http/1.1"]).await.expect("pebble's root");
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.body
    }

    /// Stops pebble (its DNS stays): orders fail from now on.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.pebble.take() {
            let _ = child.kill().await;
        }
    }
}
