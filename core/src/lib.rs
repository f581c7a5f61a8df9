//! Slipway's pure core: the deployment projection (`deployment`), the
//! decider that turns a deployment's state into the next commands and facts
//! (`decider`), the other projections (`environment`, `project`, `routes`,
//! `lease`, `seen`) and the pure views and rules over them (reconciliation,
//! supervision, swarm replicas, retention, limits, protection, previews, pushes,
//! notifications, domains, refusals).
//!
//! This crate depends on `slipway-proto` and a few pure libraries only: no
//! runtime, no store, no network. "The decider never does I/O and reads no
//! clock" is therefore checked by the compiler: time and ids come in as
//! arguments. The engine (`slipway-engine`) is the effectful shell around
//! it and re-exports every module under its old path.

pub mod decider;
pub mod deployment;
pub mod domains;
pub mod environment;
pub mod git_ref;
pub mod lease;
pub mod limits;
pub mod named_environments;
pub mod notify;
pub mod poll;
pub mod preview;
pub mod project;
pub mod projection;
pub mod protection;
pub mod push;
pub mod reconcile;
pub mod rejection;
pub mod remote;
pub mod replicas;
pub mod retention;
pub mod router_errors;
pub mod routes;
pub mod seen;
pub mod supervise;

pub use decider::{decide, Decision, EnvironmentView};
pub use deployment::{evolve, Deployment, IllegalTransition, Status};
pub use projection::Projection;
