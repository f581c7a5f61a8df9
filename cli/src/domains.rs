//! `slipway domain add|remove|list|redirect`: custom domains an environment
//! is served under, besides `<project>-<env>.<router domain>`, and whether
//! plain HTTP for one is redirected to HTTPS (recorded on the certificates
//! stream, `HttpsRedirectSet`). Recorded on the
//! routes stream, straight in the store like the other server-side verbs;
//! every router serves a domain from the route version that added it.

use std::process::ExitCode;

use clap::Subcommand;
use slipway_engine::{domains, load, requests};
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

pub async fn run(store: &dyn EventStore, cmd: DomainCmd, json: bool) -> anyhow::Result<ExitCode> {
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
            // An unknown project or environment is named, as the API does.
            requests::scope_exists(store, &project, env.as_deref()).await?.map_err(exit::rejected)?;
            let routes = load::routes(store).await?;
            let listed: Vec<(String, String)> = routes
                .domains
                .iter()
                .filter(|(_, (p, e))| *p == project && env.as_ref().is_none_or(|env| env == e))
                .map(|(domain, (_, e))| (domain.clone(), e.clone()))
                .collect();
            print_list(&project, &listed, json)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The same verbs through a server's API (`--server`). Names are checked
/// here first, so a bad one is a usage error (exit 2), not a request for
/// a path the API does not have.
pub async fn remote(client: &Client, cmd: &DomainCmd, json: bool) -> anyhow::Result<ExitCode> {
    let path = |project: &str, env: &str| format!("/api/projects/{}/environments/{}/domains", segment(project), segment(env));
    let parsed = |name: &str| domains::parse(name).map_err(exit::usage);
    match cmd {
        DomainCmd::Add { project, env, name } => {
            let domain = parsed(name)?;
            client.put(&format!("{}/{}", path(project, env), segment(&domain))).await?;
            println!("{project} {env} is served under {domain} (once its DNS points at the routers)");
        }
        DomainCmd::Remove { project, env, name } => {
            let domain = parsed(name)?;
            client.delete(&format!("{}/{}", path(project, env), segment(&domain))).await?;
            println!("{project} {env} is served under {domain} no more");
        }
        DomainCmd::List { project, env } => {
            let envs = match env {
                Some(env) => vec![env.clone()],
                None => {
                    let shown = client.get(&format!("/api/projects/{}", segment(project))).await?;
                    shown["environments"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
                }
            };
            let mut listed = Vec::new();
            for env in envs {
                let answer = client.get(&path(project, &env)).await?;
                let names = answer["domains"].as_array().into_iter().flatten().filter_map(|d| d.as_str());
                listed.extend(names.map(|d| (d.to_string(), env.clone())));
            }
            listed.sort();
            print_list(project, &listed, json)?;
        }
        DomainCmd::Redirect { project, env, name, state } => {
            let domain = parsed(name)?;
            let body = serde_json::json!({ "redirect": state == "on" });
            let set = client.put_json(&format!("{}/{}/redirect", path(project, env), segment(&domain)), body).await?;
            print_redirect(&domain, set["redirect"].as_bool().unwrap_or(state == "on"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `domain list`: a line per domain and its environment, or with `--json`
/// a list of `{"domain", "environment"}`.
fn print_list(project: &str, listed: &[(String, String)], json: bool) -> anyhow::Result<()> {
    if json {
        let rows: Vec<serde_json::Value> =
            listed.iter().map(|(domain, env)| serde_json::json!({ "domain": domain, "environment": env })).collect();
        return crate::verbs::print_json(&serde_json::Value::Array(rows));
    }
    for (domain, env) in listed {
        println!("{domain:<40} {env}");
    }
    if listed.is_empty() {
        eprintln!("no custom domain; add one with `slipway domain add {project} ENV NAME`");
    }
    Ok(())
}

fn print_redirect(domain: &str, redirect: bool) {
    if redirect {
        println!("plain HTTP for {domain} is redirected to HTTPS (once it has a certificate)");
    } else {
        println!("{domain} is served over plain HTTP too, not redirected to HTTPS");
    }
}
