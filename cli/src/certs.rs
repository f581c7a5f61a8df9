//! `slipway cert add|remove|list`: TLS certificates the routers serve. An
//! uploaded certificate is checked (its key belongs to it, its names cover
//! the domain, it has not expired), its PEM chain and key go into the value
//! table and `CertificateStored` onto the certificates stream; every router
//! serves it from its next handshake. `remove` records `CertificateRemoved`.
//! The list shows what serves each domain, its renewal state and redirect,
//! never a key. Against the store, or through a server's API (`remote`,
//! `--server`: `/api/certificates`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::Utc;
use clap::Subcommand;
use serde_json::json;
use slipway_engine::certificates;
use slipway_engine::queries::{self, CertificateView};
use slipway_proto::event::CertificateSource;
use slipway_store::EventStore;

use crate::actor;
use crate::client::{segment, Client};
use crate::exit::{self, coded, Exit};

/// The largest PEM file read.
const MAX_PEM: u64 = 1024 * 1024;

#[derive(Subcommand)]
pub enum CertCmd {
    /// Serve DOMAIN (an exact name or `*.example.com`) over HTTPS with this
    /// certificate chain (PEM, leaf first) and private key (PEM).
    Add {
        domain: String,
        #[arg(long = "cert", value_name = "FILE")]
        cert: PathBuf,
        #[arg(long = "key", value_name = "FILE")]
        key: PathBuf,
    },
    /// Stop serving DOMAIN's certificate (routers stop from their next
    /// handshake). A domain still added to an environment gets a new one
    /// over ACME, when the server orders certificates.
    Remove { domain: String },
    /// Every domain's certificate: valid until, source, renewal state and
    /// whether plain HTTP is redirected to HTTPS.
    List,
}

pub async fn run(store: &dyn EventStore, cmd: CertCmd, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        CertCmd::Add { domain, cert, key } => {
            let chain = read_pem(&cert, "certificate")?;
            let key_pem = read_pem(&key, "key")?;
            let stored =
                certificates::store_certificate(store, &actor::actor(), &domain, &chain, &key_pem, CertificateSource::Uploaded, Utc::now())
                    .await?
                    .map_err(exit::rejected)?;
            print_stored(&stored.domain, &stored.names, &stored.not_after.to_rfc3339());
        }
        CertCmd::Remove { domain } => {
            let removed = certificates::remove_certificate(store, &actor::actor(), &domain).await?.map_err(exit::rejected)?;
            print_removed(&removed.domain, &removed.fingerprint);
        }
        CertCmd::List => print_list(&queries::certificates(store).await?, json)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The same verbs through a server's API (`--server`).
pub async fn remote(client: &Client, cmd: &CertCmd, json: bool) -> anyhow::Result<ExitCode> {
    let path = |domain: &str| format!("/api/certificates/{}", segment(domain));
    let field = |answer: &serde_json::Value, key: &str| answer[key].as_str().unwrap_or("-").to_string();
    match cmd {
        CertCmd::Add { domain, cert, key } => {
            let body = json!({ "chain": read_pem(cert, "certificate")?, "key": read_pem(key, "key")? });
            let stored = client.put_json(&path(domain), body).await?;
            let names: Vec<String> =
                stored["names"].as_array().into_iter().flatten().filter_map(|n| n.as_str().map(String::from)).collect();
            print_stored(&field(&stored, "domain"), &names, &field(&stored, "not_after"));
        }
        CertCmd::Remove { domain } => {
            let removed = client.delete(&path(domain)).await?;
            print_removed(&field(&removed, "domain"), &field(&removed, "fingerprint"));
        }
        CertCmd::List => {
            let answer = client.get("/api/certificates").await?;
            let rows: Vec<CertificateView> = serde_json::from_value(answer)
                .map_err(|e| coded(Exit::Failed, format!("GET /api/certificates: the answer is not a list of certificates: {e}")))?;
            print_list(&rows, json)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_stored(domain: &str, names: &[String], not_after: &str) {
    println!(
        "{domain}: certificate stored ({}), valid until {not_after}; the routers serve it from their next handshake",
        names.join(", ")
    );
}

fn print_removed(domain: &str, fingerprint: &str) {
    println!("{domain}: certificate {fingerprint} removed; the routers stop serving it from their next handshake");
}

fn print_list(rows: &[CertificateView], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
    } else if rows.is_empty() {
        eprintln!("no certificate; add one with `slipway cert add DOMAIN --cert FILE --key FILE`");
    } else {
        println!("{:<32} {:<26} {:<9} {:<9} RENEWAL", "DOMAIN", "NOT AFTER", "SOURCE", "REDIRECT");
        for row in rows {
            // Plain HTTP goes to HTTPS only once a certificate serves the domain.
            let redirect = match (row.redirect, row.fingerprint.is_some()) {
                (false, _) => "off",
                (true, true) => "https",
                (true, false) => "(https)",
            };
            let (not_after, source) = (row.not_after.as_deref().unwrap_or("-"), row.source.as_deref().unwrap_or("-"));
            println!("{:<32} {not_after:<26} {source:<9} {redirect:<9} {}", row.domain, row.renewal);
        }
    }
    Ok(())
}

/// A PEM file's text; errors name the file, never its content.
fn read_pem(path: &Path, what: &str) -> anyhow::Result<String> {
    let shown = path.display();
    let size = std::fs::metadata(path).map_err(|e| exit::usage(format!("cannot read the {what} file {shown}: {e}")))?.len();
    if size > MAX_PEM {
        return Err(exit::usage(format!("the {what} file {shown} is over 1 MiB: not a PEM file")));
    }
    let bytes = std::fs::read(path).map_err(|e| exit::usage(format!("cannot read the {what} file {shown}: {e}")))?;
    String::from_utf8(bytes).map_err(|_| exit::usage(format!("the {what} file {shown} is not PEM text")))
}
