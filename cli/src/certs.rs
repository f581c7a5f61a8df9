//! `slipway cert add|list`: TLS certificates the routers serve. An uploaded
//! certificate is checked (its key belongs to it, its names cover the
//! domain, it has not expired), its PEM chain and key go into the value
//! table and `CertificateStored` onto the certificates stream; every router
//! serves it from its next handshake. The list shows what serves each
//! domain and its renewal state, never a key.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::Utc;
use clap::Subcommand;
use slipway_engine::certificates;
use slipway_engine::load;
use slipway_engine::queries::CertificateView;
use slipway_proto::event::CertificateSource;
use slipway_store::EventStore;

use crate::actor;
use crate::exit;

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
    /// Every domain's certificate: valid until, source and renewal state.
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
            println!(
                "{}: certificate stored ({}), valid until {}; the routers serve it from their next handshake",
                stored.domain,
                stored.names.join(", "),
                stored.not_after.to_rfc3339()
            );
        }
        CertCmd::List => {
            let certs = certificates::load(store).await?;
            let routes = load::routes(store).await?;
            let mut rows = Vec::new();
            let domains: std::collections::BTreeSet<&String> = certs.by_domain.keys().chain(routes.domains.keys()).collect();
            for domain in domains {
                let state = certs.by_domain.get(domain).cloned().unwrap_or_default();
                rows.push(serde_json::to_value(CertificateView::of(domain, &state))?);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if rows.is_empty() {
                eprintln!("no certificate; add one with `slipway cert add DOMAIN --cert FILE --key FILE`");
            } else {
                println!("{:<32} {:<26} {:<9} RENEWAL", "DOMAIN", "NOT AFTER", "SOURCE");
                for row in &rows {
                    let text = |k: &str| row[k].as_str().unwrap_or("-").to_string();
                    println!("{:<32} {:<26} {:<9} {}", text("domain"), text("not_after"), text("source"), text("renewal"));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
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
