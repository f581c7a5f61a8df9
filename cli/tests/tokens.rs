//! `slipway token create|list|revoke` through the built binary on an SQLite
//! store, and a `slipway server` that takes those tokens: a created token
//! answers, a revoked one is refused from the next request on, and off
//! loopback the server does not start before any token exists.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use slipway_tests::eventually;

mod common;
use common::http;

struct Dir(tempfile::TempDir);

impl Dir {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_slipway"));
        command
            .arg("--database")
            .arg(format!("sqlite://{}", self.0.path().join("slipway.db").display()))
            .arg("--data-dir")
            .arg(self.0.path().join("data"))
            .args(args)
            .env_remove("SLIPWAY_DATABASE")
            // Unset: the actor is the uid's account and the host, never `cli:unknown`.
            .env_remove("USER");
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().unwrap();
        eprintln!("$ slipway {}\n{}{}", args.join(" "), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        out
    }
}

/// `cli:<account>@<host>` as `id -un` and `uname -n` name them.
fn expected_actor() -> String {
    let run = |program: &str, arg: &str| text(&Command::new(program).arg(arg).output().unwrap().stdout).trim().to_string();
    let actor = format!("cli:{}@{}", run("id", "-un"), run("uname", "-n"));
    assert!(!actor.contains("unknown"), "{actor}");
    actor
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

#[tokio::test]
async fn tokens_made_by_the_cli_open_the_api_until_revoked() {
    let dir = Dir(tempfile::tempdir().unwrap());

    // No token yet: not on a non-loopback address (it never binds).
    let mut server = dir.command(&["server", "--listen", "0.0.0.0:0", "--queue", "memory"]).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = server.kill();
            panic!("the server kept running on 0.0.0.0 with no token issued");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(server.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success() && stderr.contains("refusing to serve the HTTP API on 0.0.0.0:0 with no token issued"), "{stderr}");
    assert!(stderr.contains("with --queue memory the server's commands stay in this process"), "{stderr}");

    let out = dir.run(&["token", "create", "root", "--scope", "admin"]);
    assert!(out.status.success());
    let token = text(&out.stdout).trim().to_string();
    assert!(token.starts_with("slw_") && token.len() == 68, "{token}");
    assert!(text(&out.stderr).contains("only time its value is shown"));
    let again = dir.run(&["token", "create", "root", "--scope", "read"]);
    assert!(!again.status.success() && text(&again.stderr).contains("token `root` exists"));
    let bad = dir.run(&["token", "create", "x", "--scope", "root"]);
    assert!(!bad.status.success() && text(&bad.stderr).contains("not one of read, deploy, admin"));
    let list = text(&dir.run(&["token", "list"]).stdout);
    let actor = expected_actor();
    assert!(list.contains("root") && list.contains("admin") && list.contains(&format!("issued by {actor} ")), "{list}");
    assert!(!list.contains(&token[4..]) && !list.contains("REVOKED"), "{list}");

    let listen = format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
    let mut server = dir.command(&["server", "--listen", &listen, "--queue", "memory"]).spawn().unwrap();
    eventually("the API", Duration::from_secs(30), || async {
        slipway_workers::http::get_status(&format!("http://{listen}/healthz"), Duration::from_secs(1)).await.ok().filter(|s| *s == 200)
    })
    .await;
    let (status, body) = http(&listen, "GET", "/api/tokens", Some(&token), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""name":"root""#) && body.contains(&format!(r#""issued_by":"{actor}""#)), "{body}");
    let (status, body) = http(&listen, "POST", "/api/tokens", Some(&token), Some(r#"{"name": "ci", "scope": "deploy"}"#)).await;
    assert_eq!(status, 201, "{body}");

    // A token issued to expire works until then, and is refused after, saying so.
    for bad in ["0s", "5x", "999999999999d"] {
        let refused = dir.run(&["token", "create", "never", "--scope", "read", "--expires-in", bad]);
        assert_eq!(refused.status.code(), Some(2), "--expires-in {bad}");
        assert!(text(&refused.stderr).contains("--expires-in"), "{}", text(&refused.stderr));
    }
    let issued_at = Instant::now();
    let out = dir.run(&["token", "create", "brief", "--scope", "read", "--expires-in", "3s"]);
    assert!(out.status.success() && text(&out.stderr).contains("(read, expires "), "{}", text(&out.stderr));
    let brief = text(&out.stdout).trim().to_string();
    let (status, body) = http(&listen, "GET", "/api/projects", Some(&brief), None).await;
    assert_eq!(status, 200, "{body}");
    let listed = text(&dir.run(&["token", "list"]).stdout);
    assert!(listed.lines().any(|l| l.starts_with("brief") && l.contains("  expires ")), "{listed}");
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(issued_at.elapsed()) + Duration::from_millis(1100)).await;
    let (status, body) = http(&listen, "GET", "/api/projects", Some(&brief), None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("token `brief` expired at"), "{body}");
    let listed = text(&dir.run(&["token", "list"]).stdout);
    assert!(listed.lines().any(|l| l.starts_with("brief") && l.contains("EXPIRED at")), "{listed}");

    let out = dir.run(&["token", "revoke", "root"]);
    assert!(out.status.success());
    let (status, body) = http(&listen, "GET", "/api/tokens", Some(&token), None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("`root` was revoked"), "{body}");
    let _ = server.kill();
    let _ = server.wait();

    let list = text(&dir.run(&["token", "list"]).stdout);
    assert!(list.lines().any(|l| l.starts_with("root") && l.ends_with("REVOKED")), "{list}");
    assert!(list.lines().any(|l| l.starts_with("ci") && l.contains("issued by token:root")), "{list}");
    let twice = dir.run(&["token", "revoke", "root"]);
    assert!(!twice.status.success() && text(&twice.stderr).contains("already revoked"));
}
