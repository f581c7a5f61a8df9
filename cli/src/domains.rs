//! `slipway domain add|remove|list|redirect`: custom domains an environment
//! is served under, besides `<project>-<env>.<router domain>`, and whether
//! plain HTTP for one is redirected to HTTPS (recorded on the certificates
//! stream, `HttpsRedirectSet`). Recorded on the
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
    /// Redirect plain HTTP for NAME to HTTPS (`on`, the default once it
    /// has a certificate) or serve it over plain HTTP too (`off`).
    Redirect {
        project: String,
        env: String,
        name: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
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
        DomainCmd::Redirect { project, env, name, state } => {
            let set = domains::set_redirect(store, &actor::actor(), &project, &env, &name, state == "on").await?.map_err(exit::rejected)?;
            print_redirect(&set.domain, set.redirect);
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
        DomainCmd::Redirect { project, env, name, state } => {
            let body = serde_json::json!({ "redirect": state == "on" });
            let set = client.put_json(&format!("{}/{}/redirect", path(project, env), segment(name)), body).await?;
            print_redirect(name, set["redirect"].as_bool().unwrap_or(state == "on"));
        }
        DomainCmd::List { env: None, .. } => {
            return Err(exit::usage("through --server, `slipway domain list` needs the environment: slipway domain list PROJECT ENV"))
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_redirect(domain: &str, redirect: bool) {
    if redirect {
        println!("plain HTTP for {domain} is redirected to HTTPS (once it has a certificate)");
    } else {
        println!("{domain} is served over plain HTTP too, not redirected to HTTPS");
    }
}
