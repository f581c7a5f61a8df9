//! `slipway secrets keygen|rotate-key`: the key setting values are sealed
//! with at rest (`slipway_store::sealing`). A rotation seals every stored
//! value again with the new key, in one transaction, and records the key
//! ids (never a key) on the installation stream; on PostgreSQL it needs
//! the owner's login, like `db migrate`, since the runtime role may not
//! change a stored value.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use slipway_proto::envelope::Metadata;
use slipway_proto::event::{SecretsKeyRotated, INSTALLATION_STREAM};
use slipway_proto::{Envelope, Event};
use slipway_store::sealing::{self, Keyring, Sealing, SealingKey};
use slipway_store::ExpectedVersion;

use crate::{actor, connect, exit};

#[derive(Subcommand)]
pub enum SecretsCmd {
    /// Write a new key to FILE (created readable by its owner only; never overwritten).
    Keygen { file: PathBuf },
    /// Seal every stored value again with the key in --to, opening them
    /// with --secrets-key (and --old-secrets-key). On PostgreSQL, run it
    /// with the owner's login. Then give --to to every process as
    /// --secrets-key.
    RotateKey {
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
    },
}

/// `slipway secrets keygen FILE`.
pub fn keygen(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let key = sealing::write_new_key(file).map_err(exit::usage)?;
    println!("key {} written to {}; give it to the server and the workers that run containers (--secrets-key)", key.id(), file.display());
    Ok(ExitCode::SUCCESS)
}

pub async fn run(cmd: SecretsCmd, database: &str, schema: Option<&str>, current: Sealing) -> anyhow::Result<ExitCode> {
    match cmd {
        SecretsCmd::Keygen { file } => return keygen(&file),
        SecretsCmd::RotateKey { to } => {
            let new = SealingKey::from_file(&to).map_err(exit::usage)?;
            let from: Vec<String> = current.keyring.iter().map(|k| k.current().id().to_string()).collect();
            let store = connect::owner_store(database, schema, current).await?;
            let target = Keyring::new(new.clone(), vec![]);
            let values = store.operational().reseal_values(&target).await.context("re-sealing the setting values")?;
            let event = Event::SecretsKeyRotated(SecretsKeyRotated { from, to: new.id().to_string(), values: values as u64 });
            let id = uuid::Uuid::now_v7();
            let meta = Metadata { correlation_id: id, causation_id: None, actor: actor::actor(), trace: None };
            let envelope = Envelope::new(id, chrono::Utc::now(), INSTALLATION_STREAM, &event, meta)?;
            let _ = store.append(INSTALLATION_STREAM, ExpectedVersion::Any, &[envelope], &[]).await?;
            println!("{values} setting value(s) sealed with key {}; restart every process with --secrets-key {}", new.id(), to.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
