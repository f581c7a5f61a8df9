//! Step::CheckServices (seed: "The Control Panel checks that required
//! services (such as the database) are available"). It runs before the
//! checkout, so it reads the app's `[services]` from `slipway.toml` at the
//! requested ref straight from the repository, then probes every service
//! concurrently, each within its own timeout: `postgres` connects and runs
//! `SELECT 1`, `tcp` opens a connection, `http` wants any status below 500.
//!
//! Service addresses come from the environment's settings and often carry a
//! password, and a failure reason is stored in an event forever. So this
//! file also owns the redaction of URLs and of anything a driver's error
//! text might echo from them.

use std::time::{Duration, Instant};

use futures::future::join_all;
use slipway_proto::command::RunStep;
use slipway_proto::config::{AppConfig, ServiceConfig, ServiceKind, FILE_NAME};
use slipway_proto::event::{ServiceCheck, ServicesChecked, StepFailed};
use slipway_proto::{Event, Step};
use sqlx::{Connection, PgConnection};
use tokio::net::TcpStream;

use super::git_remote::Access;
use super::{git, Runtime, Settings};
use crate::http::get_status;

/// Checks every service the app declares at the deployment's ref; never
/// panics, every failure is a `StepFailed` whose reason holds no password.
/// A network repository is fetched into the worker's mirror under
/// `rt.workspaces` first, so a bad credential, an unknown host, a changed
/// host key or a missing ref fails here, before anything is built.
pub async fn run(command: &RunStep, env: &Settings, rt: &Runtime) -> Event {
    let (config, source_host_key) = match services_config(command, env, rt).await {
        Ok(read) => read,
        Err(reason) => return failed(command, reason, vec![]),
    };
    let checks = config.services.iter().map(|(name, service)| check_service(name, service, env));
    let mut services = Vec::new();
    let mut failures = Vec::new();
    for outcome in join_all(checks).await {
        match outcome {
            Ok(check) => services.push(check),
            Err(reason) => failures.push(reason),
        }
    }
    if failures.is_empty() {
        Event::ServicesChecked(ServicesChecked { services, source_host_key })
    } else {
        // Every unreachable service is named, so one deployment shows them all.
        failed(command, failures.join("; "), failures)
    }
}

fn failed(command: &RunStep, reason: String, details: Vec<String>) -> Event {
    Event::StepFailed(StepFailed { step: Step::CheckServices, reason, attempt: command.attempt, details, evidence: None })
}

/// The app's configuration at the requested ref, read without a checkout,
/// and the SSH host key the fetch trusted on first use.
async fn services_config(command: &RunStep, env: &Settings, rt: &Runtime) -> Result<(AppConfig, git::MetHostKey), String> {
    let repository = command.context.repository.clone();
    let git_ref = command.context.git_ref.clone();
    let access = Access::of(&command.context, env, &rt.workspaces);
    // git2 blocks on disk and network I/O.
    let peeked = tokio::task::spawn_blocking(move || git::peek_file(&repository, &git_ref, FILE_NAME, &access))
        .await
        .map_err(|e| format!("reading {FILE_NAME} stopped unexpectedly: {e}"))?;
    let (text, met) = peeked.map_err(|e| e.to_string())?;
    match text {
        None => Ok((AppConfig::default(), met)),
        Some(text) => AppConfig::parse(&text, FILE_NAME).map(|c| (c, met)).map_err(|e| e.to_string()),
    }
}

/// One service's check, timed; the error is the complete, redacted reason.
async fn check_service(name: &str, service: &ServiceConfig, env: &Settings) -> Result<ServiceCheck, String> {
    let kind = kind_name(service.kind);
    let address = match env.get(&service.env) {
        Some(value) if !value.trim().is_empty() => value,
        Some(_) => return Err(format!("service `{name}` needs setting {}, which is empty for this environment", service.env)),
        None => return Err(format!("service `{name}` needs setting {}, which is not set for this environment", service.env)),
    };
    let limit = service.timeout.0;
    let started = Instant::now();
    let outcome = match tokio::time::timeout(limit, probe(service.kind, address, limit)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("no answer within {} ms", limit.as_millis())),
    };
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match outcome {
        Ok(()) => Ok(ServiceCheck { name: name.into(), kind: kind.into(), elapsed_ms }),
        Err(why) => Err(format!("service `{name}` ({kind}) unreachable: {}", redact_secrets(&why, address))),
    }
}

fn kind_name(kind: ServiceKind) -> &'static str {
    match kind {
        ServiceKind::Postgres => "postgres",
        ServiceKind::Tcp => "tcp",
        ServiceKind::Http => "http",
    }
}

async fn probe(kind: ServiceKind, address: &str, limit: Duration) -> Result<(), String> {
    match kind {
        ServiceKind::Postgres => probe_postgres(address).await,
        ServiceKind::Tcp => probe_tcp(address).await,
        ServiceKind::Http => probe_http(address, limit).await,
    }
}

async fn probe_postgres(url: &str) -> Result<(), String> {
    let mut connection = PgConnection::connect(url).await.map_err(|e| format!("cannot connect to {}: {e}", redact_url(url)))?;
    sqlx::query("SELECT 1").execute(&mut connection).await.map_err(|e| format!("`SELECT 1` failed: {e}"))?;
    // The check has passed; a failed goodbye changes nothing about that.
    let _ = connection.close().await;
    Ok(())
}

async fn probe_tcp(address: &str) -> Result<(), String> {
    TcpStream::connect(address).await.map(drop).map_err(|e| format!("cannot connect to {address}: {e}"))
}

async fn probe_http(url: &str, limit: Duration) -> Result<(), String> {
    match get_status(url, limit).await? {
        status if status < 500 => Ok(()),
        status => Err(format!("{} answered HTTP {status}", redact_url(url))),
    }
}

pub use slipway_store::redact::{is_password_key, redact_url};

/// Removes every trace of the secrets in `address` from `text`: the whole
/// address becomes its redacted form, and each password (as written and
/// %-decoded, the form a driver sees) becomes `***`. This catches a driver
/// error that echoes the URL or the password, whatever its format.
pub fn redact_secrets(text: &str, address: &str) -> String {
    let mut text = text.replace(address, &redact_url(address));
    for secret in secrets_in(address) {
        text = text.replace(&secret, "***");
    }
    text
}

/// The passwords in a URL, raw and %-decoded, longest first so that a
/// longer form is not left half-replaced by a shorter one.
pub(crate) fn secrets_in(url: &str) -> Vec<String> {
    let raw: Vec<String> = passwords_in(url).into_iter().map(|(password, _)| password).collect();
    let decoded: Vec<String> = raw.iter().filter_map(|s| percent_decode(s)).collect();
    let mut secrets: Vec<String> = raw.into_iter().chain(decoded).filter(|s| !s.is_empty()).collect();
    secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    secrets.dedup();
    secrets
}

/// Each password in a URL as written (the user info's, and those of the
/// query's password keys), with the text it stands in there: `:pw@`, or
/// `key=pw` in the query.
pub(crate) fn passwords_in(url: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return found };
    let authority_end = url[scheme_end..].find(['/', '?', '#']).map_or(url.len(), |i| scheme_end + i);
    let authority = &url[scheme_end..authority_end];
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        found.extend(userinfo.split_once(':').map(|(_, password)| (password.to_string(), format!(":{password}@"))));
    }
    if let Some((_, query)) = url[authority_end..].split_once('?') {
        let query = query.split('#').next().unwrap_or_default();
        let pairs = query.split('&').filter(|pair| pair.split_once('=').is_some_and(|(key, _)| is_password_key(key)));
        found.extend(pairs.filter_map(|pair| pair.split_once('=').map(|(_, value)| (value.to_string(), pair.to_string()))));
    }
    found.retain(|(password, _)| !password.is_empty());
    found
}

/// Decodes `%XX` escapes; `None` for a malformed escape or non-UTF-8 result.
pub(crate) fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
