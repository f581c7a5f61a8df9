//! A bounded load client for cutover tests: a few loops, each on its own
//! keep-alive connection pool (or, over HTTPS, its own kept-alive TLS
//! connection), sending GETs through the router at a steady rate and
//! recording when each request started, what came back, and every error.
//! Loopback only; it stops when told.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::time::Instant;

/// One request's start and outcome: the body, or the error.
#[derive(Debug, Clone)]
pub struct Sample {
    pub started: Instant,
    /// How long it took to answer (or fail).
    pub took: Duration,
    pub outcome: Result<String, String>,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    loops: Vec<tokio::task::JoinHandle<Vec<Sample>>>,
}

impl Load {
    /// Starts `loops` clients, each sending one GET `/` with `Host: host`
    /// to `router` every `every`.
    pub fn start(router: SocketAddr, host: &str, loops: usize, every: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let loops = (0..loops)
            .map(|_| {
                let (stop, host) = (stop.clone(), host.to_string());
                let client = Client::builder(TokioExecutor::new()).build_http();
                tokio::spawn(sample_until(stop, every, Plain { client, router, host }))
            })
            .collect();
        Load { stop, loops }
    }

    /// Like `start`, over HTTPS to `router` with SNI and `Host` `name`,
    /// trusting only `root_pem`: even loops speak HTTP/2, odd ones
    /// HTTP/1.1 (by ALPN), each on one kept-alive TLS connection, made
    /// again after a failed request.
    pub fn start_https(router: SocketAddr, name: &str, root_pem: &str, loops: usize, every: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let loops = (0..loops)
            .map(|i| {
                let (stop, name) = (stop.clone(), name.to_string());
                let alpn = if i % 2 == 0 { "h2" } else { "http/1.1" };
                let connector = crate::tls::connector(root_pem, &[alpn]).expect("a TLS client");
                tokio::spawn(sample_until(stop, every, Tls { connector, connection: None, router, name }))
            })
            .collect();
        Load { stop, loops }
    }

    /// Stops every loop and returns each loop's samples, in order.
    pub async fn stop(self) -> Vec<Vec<Sample>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for l in self.loops {
            all.push(l.await.expect("load loop"));
        }
        all
    }
}

/// One load loop's way of sending its GET: the body of a 2xx answer, or
/// what went wrong.
trait Requester: Send {
    fn request(&mut self) -> impl std::future::Future<Output = Result<String, String>> + Send;
}

/// Plain HTTP through a keep-alive pool, `Host: host`.
struct Plain {
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    router: SocketAddr,
    host: String,
}

impl Requester for Plain {
    async fn request(&mut self) -> Result<String, String> {
        get(&self.client, self.router, &self.host).await
    }
}

/// HTTPS on one kept-alive TLS connection, made again after a failure.
struct Tls {
    connector: tokio_rustls::TlsConnector,
    connection: Option<Sender>,
    router: SocketAddr,
    name: String,
}

impl Requester for Tls {
    async fn request(&mut self) -> Result<String, String> {
        let outcome = get_https(&self.connector, &mut self.connection, self.router, &self.name).await;
        if outcome.is_err() {
            self.connection = None;
        }
        outcome
    }
}

/// Sends `requester`'s GET every `every` until `stop`, recording when each
/// started, how long it took and what came back.
async fn sample_until(stop: Arc<AtomicBool>, every: Duration, mut requester: impl Requester) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(every);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let started = Instant::now();
        let outcome = requester.request().await;
        samples.push(Sample { started, took: started.elapsed(), outcome });
    }
    samples
}

async fn get(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    router: SocketAddr,
    host: &str,
) -> Result<String, String> {
    let request =
        hyper::Request::get(format!("http://{router}/")).header(hyper::header::HOST, host).body(Empty::new()).map_err(|e| e.to_string())?;
    let exchange = async { answer(client.request(request).await.map_err(|e| format!("request: {e}"))?).await };
    tokio::time::timeout(Duration::from_secs(10), exchange).await.map_err(|_| "no answer within 10 s".to_string())?
}

/// A 2xx answer's body, trimmed; anything else an error naming it.
async fn answer(response: hyper::Response<hyper::body::Incoming>) -> Result<String, String> {
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
    let body = String::from_utf8_lossy(&body).trim().to_string();
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("{status}: {body}"))
    }
}

/// A kept-alive HTTPS connection, HTTP/2 or HTTP/1.1 as ALPN chose.
enum Sender {
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
}

/// One GET `/` over `connection`, connecting first when there is none.
async fn get_https(
    connector: &tokio_rustls::TlsConnector,
    connection: &mut Option<Sender>,
    router: SocketAddr,
    name: &str,
) -> Result<String, String> {
    let exchange = async {
        let sender = match connection {
            Some(sender) => sender,
            None => {
                let tls = crate::tls::connect_with(connector, router, name).await?;
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let io = TokioIo::new(tls);
                let sender = if h2 {
                    let (sender, conn) =
                        hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.map_err(|e| format!("h2 handshake: {e}"))?;
                    tokio::spawn(conn);
                    Sender::H2(sender)
                } else {
                    let (sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("handshake: {e}"))?;
                    tokio::spawn(conn);
                    Sender::H1(sender)
                };
                connection.insert(sender)
            }
        };
        let response = match sender {
            Sender::H2(sender) => {
                let request = hyper::Request::get(format!("https://{name}/")).body(Empty::new()).map_err(|e| e.to_string())?;
                sender.send_request(request).await
            }
            Sender::H1(sender) => {
                sender.ready().await.map_err(|e| format!("request: {e}"))?;
                let request = hyper::Request::get("/").header(hyper::header::HOST, name).body(Empty::new()).map_err(|e| e.to_string())?;
                sender.send_request(request).await
            }
        };
        answer(response.map_err(|e| format!("request: {e}"))?).await
    };
    tokio::time::timeout(Duration::from_secs(10), exchange).await.map_err(|_| "no answer within 10 s".to_string())?
}
