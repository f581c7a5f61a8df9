//! Slipway's engine: the deployment projection (`deployment`), the pure
//! decider that turns a deployment's state into the next commands and facts
//! (`decider`), and the driver that feeds it events from the store and writes
//! its decisions back through the outbox (`driver`); the HTTP API (`api`)
//! and the dashboard that runs on it (`web`).

pub mod acme;
pub mod api;
pub mod auto_deploy;
pub mod certificates;
pub mod clock;
pub mod decider;
pub mod deployment;
pub mod domains;
pub mod driver;
pub mod environment;
pub mod history;
pub mod lease;
pub mod lifecycle;
pub mod limits;
pub mod load;
pub mod names;
pub mod notifier;
pub mod notify;
pub mod poll;
pub mod preview;
pub mod project;
pub mod projector;
pub mod protection;
pub mod pull_requests;
pub mod push;
pub mod queries;
pub mod read_model;
pub mod rebuild;
pub mod reconcile;
pub mod rejection;
pub mod requests;
pub mod retention;
pub mod router_errors;
pub mod routes;
pub mod seen;
pub mod source;
pub mod supervise;
pub mod tokens;
pub mod web;
pub mod webhook;

pub use decider::{decide, Decision, EnvironmentView};
pub use deployment::{evolve, Deployment, IllegalTransition, Status};
