//! A bounded load client for cutover tests: a few loops, each on its own
//! keep-alive connection pool, sending GETs through the router at a steady
//! rate and recording when each request started, what came back, and every
//! error. Loopback only; it stops when told.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
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
                tokio::spawn(async move {
                    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
                    let mut samples = Vec::new();
                    let mut tick = tokio::time::interval(every);
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        let started = Instant::now();
                        let outcome = get(&client, router, &host).await;
                        samples.push(Sample { started, took: started.elapsed(), outcome });
                    }
                    samples
                })
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

async fn get(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    router: SocketAddr,
    host: &str,
) -> Result<String, String> {
    let request =
        hyper::Request::get(format!("http://{router}/")).header(hyper::header::HOST, host).body(Empty::new()).map_err(|e| e.to_string())?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| format!("request: {e}"))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
        let body = String::from_utf8_lossy(&body).trim().to_string();
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!("{status}: {body}"))
        }
    };
    tokio::time::timeout(Duration::from_secs(10), exchange).await.map_err(|_| "no answer within 10 s".to_string())?
}
