//! `slipway token create|list|revoke`: API tokens, recorded on the tokens
//! stream straight in the store (like the other server-side verbs), so the
//! first admin token can be made before any API runs. The value is printed
//! once, by `create`; the log keeps only its SHA-256.

use std::process::ExitCode;

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
    },
    /// Every token: name, scope, who issued it and when, revoked or not (never the value).
    List,
    /// Revoke a token: the API refuses it from the next request on.
    Revoke { name: String },
}

pub async fn run(store: &dyn EventStore, cmd: TokenCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCmd::Create { name, scope } => {
            let token = match requests::issue_token(store, &actor::actor(), &name, scope).await? {
                Ok(token) => token,
                Err(rejection) => return Err(exit::rejected(rejection)),
            };
            eprintln!("token `{name}` ({scope}) issued; this is the only time its value is shown:");
            println!("{token}");
        }
        TokenCmd::List => {
            let tokens = requests::load_tokens(store).await?;
            if tokens.by_name.is_empty() {
                println!("no token issued yet; create one with `slipway token create NAME --scope admin`");
            }
            for t in tokens.by_name.values() {
                println!(
                    "{:<24} {:<7} issued by {} at {}{}",
                    t.name,
                    t.scope.to_string(),
                    t.issued_by,
                    t.issued_at.format("%Y-%m-%d %H:%M:%S"),
                    if t.revoked { "  REVOKED" } else { "" }
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
