//! Slipway's engine: the effectful shell around the pure core
//! (`slipway-core`: the deployment projection, the decider, the other
//! projections and views, re-exported here under their old paths) — the
//! driver that feeds the decider events from the store and writes its
//! decisions back through the outbox (`driver`), the requests that record
//! what users ask for, the HTTP API (`api`) and the dashboard that runs on
//! it (`web`).

pub mod acme;
pub mod acme_dns;
pub mod api;
pub mod auto_deploy;
pub mod certificates;
pub mod clock;
pub mod desired;
pub mod domains;
pub mod driver;
pub mod history;
pub mod lifecycle;
pub mod load;
pub mod names;
pub mod notifier;
pub mod projector;
pub mod protection;
pub mod pull_requests;
pub mod queries;
pub mod read_model;
pub mod rebuild;
pub mod requests;
pub mod source;
pub mod tls_client;
pub mod tokens;
pub mod web;
pub mod webhook;

// The pure modules live in `slipway-core`; their old paths keep working.
pub use slipway_core::{
    decider, deployment, environment, lease, limits, notify, poll, preview, project, projection, push, reconcile, rejection, replicas,
    retention, router_errors, routes, seen, supervise,
};

pub use decider::{decide, Decision, EnvironmentView};
pub use deployment::{evolve, Deployment, IllegalTransition, Status};

/// An error and its causes on one line, `a: b: c`, a cause that repeats
/// its parent's words left out (hyper's and instant-acme's own texts are
/// terse). For failure reasons and the CLI's connection errors.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}
