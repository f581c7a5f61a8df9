//! The adversarial table: real attacks against a real `slipway server` on
//! PostgreSQL (the runtime login, its own schema) and against the database
//! itself, each tried several times, then one table — attack | tries |
//! refused | what leaked | what broke — printed the way the fault trials
//! print theirs (`scripts/attacks` runs it with the output shown).
//!
//! Each row's figures are measured, not assumed: "refused" counts the
//! answers that refused, "what leaked" searches every answer (and, where it
//! applies, the exported log) for the secrets the installation holds, and
//! "what broke" says what an honest client could no longer do afterwards.
//! The test fails if an attack is let through or anything leaks.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Output};
use std::time::Duration;

use hmac::{Hmac, Mac};
use slipway_proto::event::TokenScope;
use slipway_store::postgres::{PgOptions, PgStore};
use slipway_store::EventStore;
use slipway_tests::*;

/// A secret setting value, and the webhook secret and tokens, must never
/// show in an answer.
const SECRET_VALUE: &str = "attack-table-secret-7f3a9c";

struct Row {
    attack: &'static str,
    tries: usize,
    refused: usize,
    leaked: String,
    broke: String,
    /// What broke is a harm the attack did (not a defence's side effect).
    harmed: bool,
}

struct Install {
    schema: String,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    server: Option<Child>,
}

impl Install {
    fn slipway(&self, url: &str, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
            .args(args)
            .env("SLIPWAY_DATABASE", url)
            .env("SLIPWAY_PG_SCHEMA", &self.schema)
            .env("SLIPWAY_DATA_DIR", self.dir.path())
            .env("SLIPWAY_SECRETS_KEY_FILE", self.dir.path().join("secrets.key"))
            .env_remove("SLIPWAY_SERVER")
            .output()
            .unwrap();
        assert!(out.status.success(), "slipway {args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        out
    }

    fn app(&self, args: &[&str]) -> String {
        String::from_utf8(self.slipway(&pg_app_url(), args).stdout).unwrap().trim().to_string()
    }
}

impl Drop for Install {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

/// One HTTP/1.1 request from `from` (a loopback address) with `headers`:
/// the status and the whole response, headers included.
async fn request(to: SocketAddr, from: IpAddr, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let mut stream = socket.connect(to).await.unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    // A server may answer (413) and close before it read the whole body.
    let _ = stream.write_all(body).await;
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).to_string();
    (text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0), text)
}

fn bearer(token: &str) -> Vec<(&'static str, String)> {
    vec![("Authorization", format!("Bearer {token}"))]
}

/// Which of `secrets` appear in `answers`.
fn leaks(answers: &[String], secrets: &[&str]) -> String {
    let found: Vec<&str> = secrets.iter().copied().filter(|s| answers.iter().any(|a| a.contains(s))).collect();
    if found.is_empty() {
        "nothing".into()
    } else {
        format!("{} secret(s)", found.len())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_are_refused_and_leak_nothing() {
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut install = Install {
        schema: format!("attacks_{}", uuid::Uuid::now_v7().simple()),
        dir: tempfile::tempdir().unwrap(),
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        server: None,
    };
    // An installation as the README sets one up: migrated by the owner,
    // run as the runtime login, values sealed with a key file.
    install.slipway(&pg_url(), &["db", "migrate", "--grant-to", "slipway_app"]);
    let key = install.dir.path().join("secrets.key");
    install.app(&["secrets", "keygen", key.to_str().unwrap()]);
    install.app(&["project", "create", "app", "--repo", "/tmp"]);
    install.app(&["env", "set", "app", "test", &format!("API_KEY={SECRET_VALUE}"), "--secret"]);
    let admin = install.app(&["token", "create", "root", "--scope", "admin"]);
    let reader = install.app(&["token", "create", "viewer", "--scope", "read"]);
    let hook_secret = install.app(&["project", "webhook", "app", "rotate"]);
    let secrets = [SECRET_VALUE, admin.as_str(), reader.as_str(), hook_secret.as_str()];
    let server = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["server", "--listen", &install.addr.to_string(), "--queue", "memory"])
        .env("SLIPWAY_DATABASE", pg_app_url())
        .env("SLIPWAY_PG_SCHEMA", &install.schema)
        .env("SLIPWAY_DATA_DIR", install.dir.path())
        .env("SLIPWAY_SECRETS_KEY_FILE", &key)
        .env("SLIPWAY_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(install.dir.path().join("server.log")).unwrap())
        .spawn()
        .unwrap();
    install.server = Some(server);
    let addr = install.addr;
    eventually("the API", Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(addr).await.ok()?;
        (request(addr, loopback, "GET", "/healthz", &[], b"").await.0 == 200).then_some(())
    })
    .await;
    let mut rows = Vec::new();

    // 1. A read token tries what only deploy and admin tokens may do.
    let mut answers = Vec::new();
    let writes: [(&str, &str, &[u8]); 4] = [
        ("POST", "/api/tokens", br#"{"name":"mine","scope":"admin"}"#),
        ("POST", "/api/projects/app/environments/test/deployments", b"{}"),
        ("DELETE", "/api/tokens/root", b""),
        ("PUT", "/api/projects/app/environments/test/domains/evil.example", b""),
    ];
    let mut headers = bearer(&reader);
    headers.push(("Content-Type", "application/json".into()));
    for (method, path, body) in writes {
        answers.push(request(addr, loopback, method, path, &headers, body).await);
    }
    let refused = answers.iter().filter(|(status, _)| *status == 403).count();
    let texts: Vec<String> = answers.into_iter().map(|(_, t)| t).collect();
    let still = request(addr, loopback, "GET", "/api/tokens", &bearer(&admin), b"").await;
    let harmed = !(still.0 == 200 && still.1.contains("root") && !still.1.contains("mine"));
    let broke = if harmed { "the admin's tokens changed" } else { "nothing" };
    rows.push(Row {
        attack: "read token escalates (4 admin/deploy calls)",
        tries: 4,
        refused,
        leaked: leaks(&texts, &secrets),
        broke: broke.into(),
        harmed,
    });

    // 2. Push webhooks with a wrong, a missing and a replayed-for-another-
    // project signature; and one body over the limit.
    let body = br#"{"ref":"refs/heads/main","after":"0123456789abcdef0123456789abcdef01234567"}"#;
    let sign = |secret: &str, body: &[u8]| {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    };
    let before = PgStore::connect(&pg_url(), PgOptions { schema: Some(install.schema.clone()), ..Default::default() }).await.unwrap();
    let logged_before = before.read_all(slipway_store::Position::START, 1_000_000).await.unwrap().len();
    let hook = |signature: Option<String>| {
        let mut h = vec![("X-GitHub-Event", "push".to_string()), ("X-GitHub-Delivery", uuid::Uuid::now_v7().to_string())];
        h.extend(signature.map(|s| ("X-Hub-Signature-256", s)));
        h
    };
    let mut answers = vec![
        request(addr, loopback, "POST", "/api/hooks/github/app", &hook(Some(sign("wrong", body))), body).await,
        request(addr, loopback, "POST", "/api/hooks/github/app", &hook(None), body).await,
        request(addr, loopback, "POST", "/api/hooks/github/ghost", &hook(Some(sign(&hook_secret, body))), body).await,
    ];
    let refused_sig = answers.iter().filter(|(s, _)| *s == 401 || *s == 404).count();
    let huge = vec![b' '; 2 * 1024 * 1024];
    answers.push(request(addr, loopback, "POST", "/api/hooks/github/app", &hook(Some(sign(&hook_secret, &huge))), &huge).await);
    let refused = refused_sig + usize::from(answers[3].0 == 413);
    let logged_after = before.read_all(slipway_store::Position::START, 1_000_000).await.unwrap().len();
    let texts: Vec<String> = answers.iter().map(|(_, t)| t.clone()).collect();
    let harmed = logged_after != logged_before;
    let broke =
        if !harmed { "nothing (no event recorded)".to_string() } else { format!("{} event(s) recorded", logged_after - logged_before) };
    rows.push(Row {
        attack: "forged push webhooks (bad/missing sig, other project, 2 MB)",
        tries: 4,
        refused,
        leaked: leaks(&texts, &secrets),
        broke,
        harmed,
    });

    // 3. The settings store through every read a read token has.
    let mut answers = Vec::new();
    for path in ["/api/projects/app/environments/test", "/api/export", "/api/projects/app", "/api/projects"] {
        answers.push(request(addr, loopback, "GET", path, &bearer(&reader), b"").await);
    }
    let texts: Vec<String> = answers.iter().map(|(_, t)| t.clone()).collect();
    let answered = answers.iter().filter(|(s, _)| *s == 200).count();
    assert!(answered >= 3, "the reads answered: {:?}", answers.iter().map(|a| a.0).collect::<Vec<_>>());
    // Refused here means: answered without the value (that is the defence).
    let refused = texts.iter().filter(|t| !t.contains(SECRET_VALUE)).count();
    rows.push(Row {
        attack: "read the secret value through the API (export too)",
        tries: 4,
        refused,
        leaked: leaks(&texts, &secrets),
        broke: "nothing".into(),
        harmed: false,
    });

    // 4. A worker host's login mints itself an admin token, and rewrites history.
    let worker = PgStore::connect(
        &pg_worker_url(),
        PgOptions { schema: Some(install.schema.clone()), migrate: false, runtime: true, ..Default::default() },
    )
    .await
    .unwrap();
    let minted = slipway_engine::requests::issue_token(&worker, "agent:evil", "evil", TokenScope::Admin).await;
    let mut refused = usize::from(minted.is_err());
    let pool = sqlx::PgPool::connect(&pg_worker_url()).await.unwrap();
    let schema = install.schema.clone();
    let rewrites = [
        format!("ALTER TABLE \"{schema}\".events DISABLE TRIGGER ALL"),
        format!("UPDATE \"{schema}\".events SET body = body"),
        format!("DELETE FROM \"{schema}\".events"),
        format!("SELECT value FROM \"{schema}\".setting_values"),
    ];
    let mut texts = Vec::new();
    for statement in &rewrites {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("SET ROLE slipway_writer").execute(&mut *tx).await.unwrap();
        match sqlx::query(statement).fetch_all(&mut *tx).await {
            Err(e) => {
                refused += 1;
                texts.push(e.to_string());
            }
            // The writer may read the value table (workers need values):
            // what it reads must be sealed, never the value.
            Ok(rows) => {
                use sqlx::Row as _;
                let values: Vec<String> = rows.iter().filter_map(|r| r.try_get::<String, _>(0).ok()).collect();
                refused += usize::from(!values.is_empty() && values.iter().all(|v| v.starts_with("sealed:")));
                texts.extend(values);
            }
        }
        tx.rollback().await.ok();
    }
    let tokens = request(addr, loopback, "GET", "/api/tokens", &bearer(&admin), b"").await;
    let harmed = tokens.1.contains("evil");
    let broke = if harmed { "an admin token was minted" } else { "nothing" }.to_string();
    rows.push(Row {
        attack: "worker login: mint a token, rewrite history, read values",
        tries: 5,
        refused,
        leaked: leaks(&texts, &secrets),
        broke,
        harmed,
    });

    // 5. Guessing tokens from one address: 30 guesses (malformed and well
    // formed), then the admin's real token from the same and another address.
    let mut answers = Vec::new();
    for n in 0..30 {
        let guess = match n % 3 {
            0 => format!("slw_{:064x}", n),
            1 => "' OR 1=1 --".to_string(),
            _ => "x".repeat(5000),
        };
        answers.push(request(addr, loopback, "GET", "/api/tokens", &bearer(&guess), b"").await);
    }
    let refused = answers.iter().filter(|(s, _)| *s == 401 || *s == 429).count();
    let throttled = answers.iter().filter(|(s, _)| *s == 429).count();
    let same = request(addr, loopback, "GET", "/api/whoami", &bearer(&admin), b"").await.0;
    let elsewhere = request(addr, other, "GET", "/api/whoami", &bearer(&admin), b"").await.0;
    assert!(throttled > 0, "30 refused tokens were never throttled");
    assert_eq!(elsewhere, 200, "another address is not throttled");
    // Throttling the address is the defence; its cost to an honest client
    // behind the same address is reported, not a harm the attack did.
    let (broke, harmed) = match same {
        200 => ("nothing".to_string(), false),
        429 => ("valid tokens from that address wait out the 60 s window".to_string(), false),
        other => (format!("valid token answered {other}"), true),
    };
    let texts: Vec<String> = answers.into_iter().map(|(_, t)| t).collect();
    rows.push(Row {
        attack: "guess tokens from one address (30 tries)",
        tries: 30,
        refused,
        leaked: leaks(&texts, &secrets),
        broke,
        harmed,
    });

    // The server's own log holds none of the secrets either.
    let log = std::fs::read_to_string(install.dir.path().join("server.log")).unwrap_or_default();
    assert_eq!(leaks(&[log], &secrets), "nothing", "the server's log");

    println!("\n{:<60} {:>5} {:>8}  {:<14} what broke", "attack", "tries", "refused", "what leaked");
    for r in &rows {
        println!("{:<60} {:>5} {:>8}  {:<14} {}", r.attack, r.tries, r.refused, r.leaked, r.broke);
    }
    for r in &rows {
        assert_eq!(r.refused, r.tries, "{}: {} of {} refused", r.attack, r.refused, r.tries);
        assert_eq!(r.leaked, "nothing", "{}", r.attack);
        assert!(!r.harmed, "{}: {}", r.attack, r.broke);
    }
    drop(install);
    let owner = sqlx::PgPool::connect(&pg_url()).await.unwrap();
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE")).execute(&owner).await.unwrap();
}
