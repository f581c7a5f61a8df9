//! A Slipway node: the parts a process runs — the engine (driver and outbox
//! relay), the step workers, a router — wired together in one place, so the
//! `slipway` binary, the end-to-end tests and the benchmarks run the same
//! machinery. `routing` keeps a router's table in step with the store
//! and reports its error counts of watched releases (`error_reports`);
//! `gauges` samples the metrics no event moves; `agent` keeps a Docker
//! host running what is recorded and supervises the serving release, and
//! `swarm_watch` does that part on the swarm runtime (`drain` moves the
//! replicas off a swarm node);
//! `poll` polls repositories for auto-deploy rules that ask for it;
//! `router_config` reads the router's configuration file; `certs` keeps a
//! router's TLS certificates in step with the certificates stream.

pub mod agent;
pub mod certs;
pub mod drain;
pub mod error_reports;
pub mod gauges;
pub mod poll;
pub mod router_config;
pub mod routing;
pub mod serve;
pub mod shutdown;
pub mod swarm_watch;
pub mod traffic;

pub use routing::{host_name, RouterOptions};
pub use serve::{serve, Parts, RouterPart};
pub use shutdown::{manual, on_signal, Shutdown};
