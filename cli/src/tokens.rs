//! `slipway token create|list|revoke`: API tokens, recorded on the tokens
//! stream straight in the store (like the other server-side verbs), so the
//! first admin token can be made before any API runs. The value is printed
//! once, by `create`; the log keeps only its SHA-256.

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::Subcommand;
use slipway_engine::requests;
use slipway_proto::event::TokenScope;
use slipway_store::EventStore;

use crate::actor;
use crate::exit;

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Issue a token and print its value (shown this once). Requests made
    /// with it are recorded with the actor `token:NAME`.
    Create {
        /// 1-64 lowercase letters, digits, '-', '_' or '.'; never reused, even after revoke.
        name: String,
        /// read (every GET, audit verify) < deploy (+ deployments, rollback, promote, replay, migrate)
        /// < admin (+ projects, settings, tokens).
        #[arg(long)]
        scope: TokenScope,
        /// It stops working this long from now: 90d, 12h, 30m, 3600s (default: never).
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
    },
    /// Every token: name, scope, who issued it and when, when it expires,
    /// revoked or not (never the value).
    List,
    /// Revoke a token: the API refuses it from the next request on.
    Revoke { name: String },
}

pub async fn run(store: &dyn EventStore, cmd: TokenCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCmd::Create { name, scope, expires_in } => {
            let expires_at = match expires_in {
                Some(text) => Some(expiry(&text, Utc::now())?),
                None => None,
            };
            let token = match requests::issue_expiring_token(store, &actor::actor(), &name, scope, expires_at).await? {
                Ok(token) => token,
                Err(rejection) => return Err(exit::rejected(rejection)),
            };
            let until = expires_at.map(|at| format!(", expires {}", at.format(WHEN))).unwrap_or_default();
            eprintln!("token `{name}` ({scope}{until}) issued; this is the only time its value is shown:");
            println!("{token}");
        }
        TokenCmd::List => {
            let tokens = requests::load_tokens(store).await?;
            if tokens.by_name.is_empty() {
                println!("no token issued yet; create one with `slipway token create NAME --scope admin`");
            }
            let now = Utc::now();
            for t in tokens.by_name.values() {
                let state = match t.expires_at {
                    _ if t.revoked => "  REVOKED".to_string(),
                    Some(at) if t.expired(now) => format!("  EXPIRED at {}", at.format(WHEN)),
                    Some(at) => format!("  expires {}", at.format(WHEN)),
                    None => String::new(),
                };
                println!(
                    "{:<24} {:<7} issued by {} at {}{state}",
                    t.name,
                    t.scope.to_string(),
                    t.issued_by,
                    t.issued_at.format("%Y-%m-%d %H:%M:%S"),
                );
            }
        }
        TokenCmd::Revoke { name } => {
            requests::revoke_token(store, &actor::actor(), &name).await?.map_err(exit::rejected)?;
            println!("token `{name}` revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How token times are shown.
const WHEN: &str = "%Y-%m-%d %H:%M:%S UTC";

/// When a token given `--expires-in text` at `now` expires.
fn expiry(text: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    let seconds = slipway_engine::protection::parse_duration(text).map_err(|e| exit::usage(format!("--expires-in: {e}")))?;
    i64::try_from(seconds)
        .ok()
        .and_then(chrono::TimeDelta::try_seconds)
        .and_then(|d| now.checked_add_signed(d))
        .ok_or_else(|| exit::usage(format!("--expires-in: `{text}` is too far away")))
}
