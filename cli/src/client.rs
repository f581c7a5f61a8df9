//! The CLI as a client of a Slipway server's HTTP API (`--server URL`,
//! `--token`): people and CI deploy without database or queue credentials,
//! and the server records the token's name as the actor. Requests are JSON
//! over HTTP/1.1, plain or over TLS (`https://`, with a proxy such as
//! Slipway's router or nginx terminating it in front of the server): the
//! certificate is checked against the system's roots and `--server-ca`,
//! and a bearer token is never sent over plain HTTP to anything but
//! loopback. An API error body
//! `{"error": {"code", "message"}}` (or the older `{"error": "..."}`)
//! becomes a CLI error with the matching exit status: by the body's `code`
//! (the error's kind), else by the HTTP status (`exit_for`), never by the
//! message. A refusal thus exits as it would against the store directly.
//!
//! Verbs that go through here with `--server`: see `remote.rs`. The others still need the store.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as Http;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use slipway_proto::Step;
use uuid::Uuid;

use crate::exit::{coded, Exit};
use crate::follow::{Observed, Seen, Source};

/// No answer within this is an unavailable server.
const TIMEOUT: Duration = Duration::from_secs(30);

pub struct Client {
    /// `http://host:port`, without a trailing slash.
    base: String,
    token: Option<String>,
    http: Http<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Client {
    /// `server` is `http://HOST:PORT` or `https://HOST[:PORT]` (a path
    /// prefix is kept); `ca` a PEM file of the private CA that signed an
    /// https:// server's certificate, trusted besides the system's roots.
    pub fn new(server: &str, token: Option<String>, ca: Option<&Path>) -> anyhow::Result<Client> {
        let base = server.trim_end_matches('/').to_string();
        let uri: Uri = base.parse().map_err(|e| coded(Exit::Usage, format!("--server `{server}` is not a URL: {e}")))?;
        let Some(host) = uri.host() else {
            return Err(coded(Exit::Usage, format!("--server `{server}`: expected https://HOST[:PORT] or http://HOST:PORT")));
        };
        let loopback = host == "localhost" || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if token.is_none() || loopback => {}
            Some("http") => {
                return Err(coded(
                    Exit::Usage,
                    format!(
                        "--server `{server}`: a token is sent only over https:// (or plain http:// to this machine's loopback); \
                         put TLS in front of the server (Slipway's router or nginx) and use https://"
                    ),
                ))
            }
            _ => return Err(coded(Exit::Usage, format!("--server `{server}`: expected https://HOST[:PORT] or http://HOST:PORT"))),
        }
        if ca.is_some() && uri.scheme_str() != Some("https") {
            return Err(coded(Exit::Usage, "--server-ca is for an https:// --server"));
        }
        if let Some(t) = &token {
            if HeaderValue::from_str(&format!("Bearer {t}")).is_err() {
                return Err(coded(Exit::Usage, "--token has characters a header cannot carry"));
            }
        }
        let pem = match ca {
            Some(path) => Some(std::fs::read(path).map_err(|e| coded(Exit::Usage, format!("--server-ca {}: {e}", path.display())))?),
            None => None,
        };
        let source = ca.map(|p| format!("--server-ca {}", p.display())).unwrap_or_default();
        let tls = slipway_engine::tls_client::config(pem.as_deref().map(|p| (p, source.as_str()))).map_err(|e| coded(Exit::Usage, e))?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
        Ok(Client { base, token, http: Http::builder(TokioExecutor::new()).build(connector) })
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str) -> anyhow::Result<Value> {
        self.send(Method::PUT, path, None).await
    }

    pub async fn put_json(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(Method::DELETE, path, None).await
    }

    /// A plain-text answer (`GET /api/deployments/{id}/logs`).
    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let bytes = self.exchange(Method::GET, path, None, "text/plain").await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let bytes = self.exchange(method.clone(), path, body, "application/json").await?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        let url = format!("{}{path}", self.base);
        serde_json::from_slice(&bytes)
            .map_err(|e| coded(Exit::Failed, format!("{method} {url}: the answer is not JSON ({e}); is --server a Slipway server?")))
    }

    /// The answer's body, once its status is a success (else the API's
    /// error, with its exit status).
    async fn exchange(&self, method: Method, path: &str, body: Option<Value>, accept: &str) -> anyhow::Result<Bytes> {
        let url = format!("{}{path}", self.base);
        let mut request = Request::builder().method(method.clone()).uri(&url).header(ACCEPT, accept);
        if let Some(t) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some(b) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(b.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let request = request.body(body).map_err(|e| coded(Exit::Usage, format!("{method} {url}: {e}")))?;
        let exchange = async {
            let response = self.http.request(request).await.map_err(|e| {
                let chain = slipway_engine::error_chain(&e);
                let hint = if chain.contains("certificate") {
                    "; if a private CA signed the server's certificate, trust it with --server-ca FILE (SLIPWAY_SERVER_CA)"
                } else {
                    ""
                };
                coded(Exit::Unavailable, format!("{method} {url}: the server did not answer: {chain}{hint}"))
            })?;
            let status = response.status().as_u16();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| coded(Exit::Unavailable, format!("{method} {url}: reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, anyhow::Error>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| coded(Exit::Unavailable, format!("{method} {url}: no answer within {}s", TIMEOUT.as_secs())))??;
        if !(200..300).contains(&status) {
            return Err(api_error(&method, &url, status, &bytes));
        }
        Ok(bytes)
    }
}

/// The exit status for an API error: by its `code` when the body has one,
/// else by the HTTP status.
pub fn exit_for(status: u16, code: Option<&str>) -> Exit {
    match code {
        Some("bad_request" | "payload_too_large" | "unsupported_media_type" | "method_not_allowed") => Exit::Usage,
        Some("not_found") => Exit::NotFound,
        Some("conflict") => Exit::Conflict,
        Some("unauthorized" | "forbidden") => Exit::Unauthorized,
        Some("too_many_requests") => Exit::Unavailable,
        Some("unavailable") => Exit::Unavailable,
        _ => match status {
            400 | 405 | 413 | 415 | 422 => Exit::Usage,
            401 | 403 => Exit::Unauthorized,
            404 => Exit::NotFound,
            409 => Exit::Conflict,
            502..=504 => Exit::Unavailable,
            _ => Exit::Failed,
        },
    }
}

/// The CLI error for an API error answer.
pub fn api_error(method: &Method, url: &str, status: u16, body: &[u8]) -> anyhow::Error {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let (code, message) = match error {
        Some(Value::Object(e)) => (e.get("code").and_then(Value::as_str), e.get("message").and_then(Value::as_str).map(str::to_string)),
        Some(Value::String(m)) => (None, Some(m.clone())),
        _ => (None, None),
    };
    let message = message.unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        if text.is_empty() {
            format!("HTTP {status}")
        } else {
            text.chars().take(300).collect()
        }
    });
    let exit = exit_for(status, code);
    // A 403 names the scope it needs; only a missing or unknown token wants this.
    let hint = if status == 401 { " (pass a token with --token or SLIPWAY_TOKEN)" } else { "" };
    coded(exit, format!("{method} {url}: {status} {message}{hint}"))
}

/// A deployment's events through `GET /api/deployments/{id}/events`, polled.
pub struct ApiSource<'a> {
    client: &'a Client,
    path: String,
}

impl<'a> ApiSource<'a> {
    pub fn new(client: &'a Client, id: Uuid) -> ApiSource<'a> {
        ApiSource { client, path: format!("/api/deployments/{id}/events") }
    }
}

impl Source for ApiSource<'_> {
    async fn read(&mut self, from: u64) -> anyhow::Result<Vec<Seen>> {
        let events = self.client.get(&self.path).await?;
        let Some(events) = events.as_array() else {
            return Err(coded(Exit::Failed, format!("GET {}: expected a list of events", self.path)));
        };
        Ok(events.iter().filter_map(Observed::remote).filter(|o| o.version >= from).map(|o| Seen::Event(Box::new(o))).collect())
    }

    async fn wait(&mut self) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    /// From `GET /api/workers` (any scope reads it); a server that cannot
    /// answer says nothing.
    async fn unserved(&mut self, step: Step) -> bool {
        let Ok(workers) = self.client.get("/api/workers").await else { return false };
        let Some(workers) = workers.as_array() else { return false };
        let step = step.to_string();
        let serves = |w: &Value| w["steps"].as_array().is_some_and(|steps| steps.iter().any(|s| s.as_str() == Some(&step)));
        !workers.iter().any(|w| w["state"] == "alive" && serves(w))
    }
}

/// A deployment's events and its build and release log lines, in the order
/// the API's live stream (`GET /api/deployments/{id}/stream`) sent them, so a
/// log line shows under the step that wrote it. A task of its own reads the
/// stream. Once the stream is gone (a server without it, one that ended it,
/// a dropped connection) the events come from polling `/events` as
/// `ApiSource` reads them, and only the log lines are lost.
pub struct LoggedSource<'a> {
    events: ApiSource<'a>,
    live: tokio::sync::mpsc::UnboundedReceiver<Live>,
    /// What `wait` received, for the next `read`.
    held: Vec<Live>,
    /// Whether the stream still sends.
    open: bool,
}

/// One frame of the live stream that the follower uses.
#[derive(Debug)]
enum Live {
    /// A `deployment-event`: the JSON of one element of `/events`.
    Event(Value),
    Log(String),
}

impl<'a> LoggedSource<'a> {
    pub fn new(client: &'a Client, id: Uuid) -> LoggedSource<'a> {
        LoggedSource { events: ApiSource::new(client, id), live: client.live(id), held: Vec::new(), open: true }
    }
}

impl Source for LoggedSource<'_> {
    async fn read(&mut self, from: u64) -> anyhow::Result<Vec<Seen>> {
        let mut frames = std::mem::take(&mut self.held);
        loop {
            match self.live.try_recv() {
                Ok(frame) => frames.push(frame),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                    self.open = false;
                    break;
                }
            }
        }
        let mut seen: Vec<Seen> = frames
            .into_iter()
            .filter_map(|frame| match frame {
                Live::Event(value) => Observed::remote(&value).filter(|o| o.version >= from).map(|o| Seen::Event(Box::new(o))),
                Live::Log(line) => Some(Seen::Log(line)),
            })
            .collect();
        if !self.open {
            let last = seen.iter().filter_map(|s| if let Seen::Event(o) = s { Some(o.version) } else { None }).max();
            seen.extend(self.events.read(last.map_or(from, |v| v + 1)).await?);
        }
        Ok(seen)
    }

    async fn wait(&mut self) {
        if !self.open {
            return self.events.wait().await;
        }
        match tokio::time::timeout(Duration::from_millis(500), self.live.recv()).await {
            Ok(Some(frame)) => self.held.push(frame),
            Ok(None) => self.open = false,
            Err(_) => {}
        }
    }

    async fn unserved(&mut self, step: Step) -> bool {
        self.events.unserved(step).await
    }
}

impl Client {
    /// Starts reading deployment `id`'s live stream; its events and log
    /// lines arrive on the returned channel, in the stream's order, until the
    /// stream ends or fails (the channel then closes).
    fn live(&self, id: Uuid) -> tokio::sync::mpsc::UnboundedReceiver<Live> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let url = format!("{}/api/deployments/{id}/stream", self.base);
        let (http, token) = (self.http.clone(), self.token.clone());
        tokio::spawn(async move {
            let mut request = Request::get(&url).header(ACCEPT, "text/event-stream");
            if let Some(t) = token {
                request = request.header(AUTHORIZATION, format!("Bearer {t}"));
            }
            let Ok(request) = request.body(Full::new(Bytes::new())) else { return };
            let response = match http.request(request).await {
                Ok(r) if r.status().is_success() => r,
                _ => return,
            };
            let mut body = response.into_body();
            let mut frames = SseFrames::default();
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(data) = frame.into_data() else { continue };
                for (event, data) in frames.push(&data) {
                    let live = match event.as_str() {
                        "log" => Live::Log(data),
                        // Unreadable: left to the `/events` poll once the stream is gone.
                        "deployment-event" => match serde_json::from_str(&data) {
                            Ok(value) => Live::Event(value),
                            Err(_) => return,
                        },
                        "end" => return,
                        _ => continue,
                    };
                    if tx.send(live).is_err() {
                        return;
                    }
                }
            }
        });
        rx
    }
}

/// Server-sent events split into `(event, data)` as bytes arrive: frames
/// end with a blank line; `data:` lines join with newlines; comments (`:`)
/// and other fields are skipped.
/// Bytes wait until their frame is complete, so a character split across
/// two chunks is decoded whole.
#[derive(Debug, Default)]
pub struct SseFrames {
    pending: Vec<u8>,
}

impl SseFrames {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<(String, String)> {
        self.pending.extend(bytes.iter().filter(|b| **b != b'\r'));
        let mut frames = Vec::new();
        while let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
            let raw: Vec<u8> = self.pending.drain(..end + 2).collect();
            let frame = String::from_utf8_lossy(&raw);
            let (mut event, mut data) = (String::from("message"), Vec::new());
            for line in frame.lines() {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => event = value.to_string(),
                    "data" => data.push(value),
                    _ => {}
                }
            }
            if !data.is_empty() {
                frames.push((event, data.join("\n")));
            }
        }
        frames
    }
}

/// A path segment with the characters a URL path cannot carry escaped
/// (project and environment names are plain already; this keeps a typo
/// from turning into another route).
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_sent_events_are_split_into_frames_across_chunks() {
        let mut frames = super::SseFrames::default();
        assert!(frames.push(b": keep-alive\n\nevent: log\ndata: Step 1/4 : FROM scr").is_empty());
        let got = frames.push(b"atch\n\nevent: deployment-event\r\ndata: {\"version\":1}\r\n\r\nevent: end\ndata: {}\n\n");
        assert_eq!(
            got,
            [("log", "Step 1/4 : FROM scratch"), ("deployment-event", "{\"version\":1}"), ("end", "{}")]
                .map(|(e, d)| (e.to_string(), d.to_string()))
        );
        assert_eq!(frames.push(b"data: a\ndata: b\n\n"), [("message".to_string(), "a\nb".to_string())]);
    }

    use super::*;
    use crate::exit::code_of;

    #[test]
    fn an_api_error_body_becomes_an_error_with_its_exit_status() {
        let body = br#"{"error":{"code":"not_found","message":"no project `shop`"}}"#;
        let e = api_error(&Method::GET, "http://h/api/x", 404, body);
        assert_eq!(code_of(&e), Exit::NotFound);
        assert!(e.to_string().contains("404 no project `shop`"), "{e}");
        // The older body shape, and no body at all.
        let e = api_error(&Method::POST, "http://h/api/x", 409, br#"{"error":"project `a` already exists"}"#);
        assert_eq!(code_of(&e), Exit::Conflict);
        assert!(e.to_string().ends_with("already exists"), "{e}");
        let e = api_error(&Method::GET, "http://h/api/x", 401, b"");
        assert_eq!(code_of(&e), Exit::Unauthorized);
        assert!(e.to_string().contains("--token"), "{e}");
    }

    #[test]
    fn the_code_wins_over_the_http_status() {
        assert_eq!(exit_for(400, Some("forbidden")), Exit::Unauthorized);
        assert_eq!(exit_for(500, Some("internal")), Exit::Failed);
        assert_eq!(exit_for(503, None), Exit::Unavailable);
        assert_eq!(exit_for(422, None), Exit::Usage);
    }

    /// The API maps a refusal's kind to a status and code once, the CLI maps
    /// a kind to an exit once: through `--server` a refusal must exit as it
    /// does against the store, by its code and by its bare status alike.
    #[test]
    fn a_refusal_exits_the_same_through_the_api_as_locally() {
        use slipway_engine::api::ApiError;
        use slipway_engine::rejection::Rejection;
        let all = [
            Rejection::not_found("x"),
            Rejection::conflict("x"),
            Rejection::invalid("x"),
            Rejection::forbidden("x"),
            Rejection::unavailable("x"),
        ];
        for rejection in all {
            let local = crate::exit::of_rejection(&rejection);
            let api = ApiError::from(rejection.clone());
            let status = api.status().as_u16();
            assert_eq!(exit_for(status, Some(api.code())), local, "{rejection:?} as {status} {}", api.code());
            assert_eq!(exit_for(status, None), local, "{rejection:?} as a bare {status}");
        }
    }

    #[test]
    fn a_token_goes_over_https_or_to_loopback_only() {
        let token = || Some("slw_x".to_string());
        for good in ["http://127.0.0.1:7878/", "http://localhost:7878", "http://[::1]:7878", "https://slipway.example"] {
            assert!(Client::new(good, token(), None).is_ok(), "{good}");
        }
        assert!(Client::new("http://slipway.example:7878", None, None).is_ok(), "no token, nothing to leak");
        for bad in ["http://slipway.example:7878", "http://10.1.2.3:7878", "127.0.0.1:7878", "not a url", "ftp://x"] {
            let e = Client::new(bad, token(), None).err().unwrap_or_else(|| anyhow::anyhow!("accepted"));
            assert_eq!(code_of(&e), Exit::Usage, "{bad}: {e}");
        }
        let e = Client::new("http://127.0.0.1:1", None, Some(Path::new("/nonexistent/ca.pem"))).err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("--server-ca is for an https:// --server"));
        let e = Client::new("https://x", None, Some(Path::new("/nonexistent/ca.pem"))).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with("--server-ca /nonexistent/ca.pem: "), "{e}");
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(segment("shop-eu"), "shop-eu");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }
}
