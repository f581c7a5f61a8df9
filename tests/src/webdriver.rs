//! A headless Chromium driven through chromedriver, for the dashboard's
//! browser test: just the W3C WebDriver calls it needs (open a page, find,
//! click, type, run a script, take a screenshot), spoken as JSON over HTTP
//! with the hyper client the tests already use, so the test needs no
//! WebDriver crate.
//!
//! Chromium and chromedriver come from Debian (`scripts/services` installs
//! them). Running as root needs `--no-sandbox`; the other flags keep the
//! browser from calling anything outside this machine.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

/// The W3C key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const CHROMIUM: &[&str] = &["/usr/bin/chromium", "/usr/lib/chromium/chromium"];
const CHROMEDRIVER: &[&str] = &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"];

/// Chromium and chromedriver, when both are installed.
pub fn find_browser() -> Option<(PathBuf, PathBuf)> {
    let first = |paths: &[&str]| paths.iter().map(PathBuf::from).find(|p| p.is_file());
    Some((first(CHROMIUM)?, first(CHROMEDRIVER)?))
}

/// One browser session; `quit` ends it (dropping it kills chromedriver).
pub struct Browser {
    driver: Child,
    client: Client<HttpConnector, Full<Bytes>>,
    session: String,
    base: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a headless
    /// Chromium session with a fresh profile, `width` x `height` pixels.
    pub async fn start(chromium: &Path, chromedriver: &Path, log: &Path, width: u32, height: u32) -> Result<Browser, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port for chromedriver: {e}"))?
            .port();
        let log_file = std::fs::File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
        // A process group of its own: ending the group ends the Chromium
        // processes chromedriver started too, even after a panic.
        let driver = Command::new(chromedriver)
            .process_group(0)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
            .stderr(log_file)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("start {}: {e}", chromedriver.display()))?;
        let profile = tempfile::tempdir().map_err(|e| format!("profile dir: {e}"))?;
        let mut browser = Browser {
            driver,
            client: Client::builder(TokioExecutor::new()).build_http(),
            session: String::new(),
            base: format!("http://127.0.0.1:{port}"),
            _profile: profile,
        };
        browser.wait_ready().await?;
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            format!("--user-data-dir={}", browser._profile.path().display()),
            format!("--window-size={width},{height}"),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let created = browser.call("POST", "/session", Some(capabilities)).await?;
        browser.session = created["sessionId"].as_str().ok_or_else(|| format!("chromedriver made no session: {created}"))?.to_string();
        Ok(browser)
    }

    async fn wait_ready(&self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(status) = self.call("GET", "/status", None).await {
                if status["ready"] == json!(true) {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("chromedriver did not answer on {} within 20 s", self.base));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One WebDriver command; its `value`, or the driver's error message.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let uri = format!("{}{path}", self.base);
        let request = hyper::Request::builder()
            .method(method)
            .uri(&uri)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| format!("{method} {uri}: {e}"))?;
            let status = response.status();
            let bytes = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            let answer: Value = serde_json::from_slice(&bytes)
                .map_err(|e| format!("{method} {path}: not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))?;
            let value = answer.get("value").cloned().unwrap_or(Value::Null);
            if status.is_success() {
                Ok(value)
            } else {
                Err(format!("{method} {path}: {} {}", value["error"], value["message"]))
            }
        };
        tokio::time::timeout(Duration::from_secs(60), exchange).await.map_err(|_| format!("{method} {path}: no answer in 60 s"))?
    }

    fn at(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    pub async fn goto(&self, url: &str) -> Result<(), String> {
        self.call("POST", &self.at("/url"), Some(json!({"url": url}))).await.map(drop)
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) and returns its result.
    pub async fn run(&self, script: &str, args: Value) -> Result<Value, String> {
        self.call("POST", &self.at("/execute/sync"), Some(json!({"script": script, "args": args}))).await
    }

    async fn element(&self, css: &str) -> Result<String, String> {
        let found = self.call("POST", &self.at("/element"), Some(json!({"using": "css selector", "value": css}))).await?;
        found[ELEMENT].as_str().map(str::to_string).ok_or_else(|| format!("no element `{css}`: {found}"))
    }

    /// Clicks the element `css` the way a user does (scrolled into view, at its centre).
    /// A page that re-renders between finding the element and clicking it
    /// (a list redrawn after signing in) makes the element stale: it is
    /// found again, a few times.
    pub async fn click(&self, css: &str) -> Result<(), String> {
        let mut tries = 0;
        loop {
            let id = self.element(css).await?;
            match self.call("POST", &self.at(&format!("/element/{id}/click")), Some(json!({}))).await {
                Err(e) if e.contains("stale element reference") && tries < 5 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                done => return done.map(drop),
            }
        }
    }

    /// Types `text` into the element `css`.
    pub async fn type_into(&self, css: &str, text: &str) -> Result<(), String> {
        let id = self.element(css).await?;
        self.call("POST", &self.at(&format!("/element/{id}/value")), Some(json!({"text": text}))).await.map(drop)
    }

    /// Polls `script` until it returns something other than null or false,
    /// and returns that; after `limit` the error names `what` and the last value.
    pub async fn wait_for(&self, what: &str, limit: Duration, script: &str) -> Result<Value, String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let value = self.run(script, json!([])).await?;
            if !(value.is_null() || value == json!(false)) {
                return Ok(value);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("timed out after {limit:?} waiting for {what}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Result<Vec<u8>, String> {
        let encoded = self.call("GET", &self.at("/screenshot"), None).await?;
        let encoded = encoded.as_str().ok_or("the screenshot is not a string")?;
        base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|e| format!("screenshot: {e}"))
    }

    /// Ends the session (closing Chromium), then chromedriver.
    pub async fn quit(self) {
        let _ = self.call("DELETE", &self.at(""), None).await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.driver.wait();
    }
}
