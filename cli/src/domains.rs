//! `slipway domain add|remove|list`: custom domains an environment is
//! served under, besides `<project>-<env>.<router domain>`. Recorded on the
//! routes stream, straight in the store like the other server-side verbs;
//! every router serves a domain from the route version that added it.

use std::process::ExitCode;

use clap::Subcommand;
use slipway_engine::domains;
use slipway_engine::load;
use slipway_store::EventStore;

use crate::actor;
use crate::client::{segment, Client};
use crate::exit;

#[derive(Subcommand)]
pub enum DomainCmd {
    /// Serve PROJECT's ENV under NAME too: an exact name (`www.example.com`)
    /// or a one-level wildcard (`*.example.com`). A name belongs to one
    /// environment at a time. Point the name's DNS at the routers.
    Add { project: String, env: String, name: String },
    /// Stop serving ENV under NAME.
    Remove { project: String, env: String, name: String },
    /// The custom domains of PROJECT (of ENV only, when given).
    List { project: String, env: Option<String> },
}

pub async fn run(store: &dyn EventStore, cmd: DomainCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        DomainCmd::Add { project, env, name } => {
            let domain = domains::add(store, &actor::actor(), &project, &env, &name).await?.map_err(exit::rejected)?;
            println!("{project} {env} is served under {domain} (once its DNS points at the routers)");
        }
        DomainCmd::Remove { project, env, name } => {
            let domain = domains::remove(store, &actor::actor(), &project, &env, &name).await?.map_err(exit::rejected)?;
            println!("{project} {env} is served under {domain} no more");
        }
        DomainCmd::List { project, env } => {
            let routes = load::routes(store).await?;
            let mut any = false;
            for (domain, (p, e)) in &routes.domains {
                if *p == project && env.as_ref().is_none_or(|env| env == e) {
                    println!("{domain:<40} {e}");
                    any = true;
                }
            }
            if !any {
                eprintln!("no custom domain; add one with `slipway domain add {project} ENV NAME`");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The same verbs through a server's API (`--server`).
pub async fn remote(client: &Client, cmd: &DomainCmd) -> anyhow::Result<ExitCode> {
    let path = |project: &str, env: &str| format!("/api/projects/{}/environments/{}/domains", segment(project), segment(env));
    match cmd {
        DomainCmd::Add { project, env, name } => {
            client.put(&format!("{}/{}", path(project, env), segment(name))).await?;
            println!("{project} {env} is served under {name} (once its DNS points at the routers)");
        }
        DomainCmd::Remove { project, env, name } => {
            client.delete(&format!("{}/{}", path(project, env), segment(name))).await?;
            println!("{project} {env} is served under {name} no more");
        }
        DomainCmd::List { project, env: Some(env) } => {
            let listed = client.get(&path(project, env)).await?;
            for domain in listed["domains"].as_array().into_iter().flatten().filter_map(|d| d.as_str()) {
                println!("{domain:<40} {env}");
            }
        }
        DomainCmd::List { env: None, .. } => {
            return Err(exit::usage("through --server, `slipway domain list` needs the environment: slipway domain list PROJECT ENV"))
        }
    }
    Ok(ExitCode::SUCCESS)
}
