//! Slipway's HTTP reverse proxy. Releases change which upstreams serve an
//! environment's host name; this crate is what sends each request there.
//! `table` decides where a request goes (pure, tested in place); `proxy`
//! forwards it (hyper), counts what each route's upstreams answered
//! (`stats`), and swaps whole route tables so that a release
//! moves traffic atomically; `eject` passes over upstreams that refused
//! connections until they accept again. `limits` (connection caps), `timeouts` (header,
//! idle, body and request clocks) and `forwarded` (`X-Forwarded-*` from the
//! peer, trusted proxies) keep slow, greedy or lying clients in their place. `tls` terminates
//! HTTPS: certificates by SNI, ACME HTTP-01 and TLS-ALPN-01 answers, redirects and HSTS.

pub mod eject;
pub mod forwarded;
pub mod limits;
pub mod proxy;
pub mod stats;
pub mod table;
mod timeouts;
pub mod tls;

pub use forwarded::Cidr;
pub use proxy::{serve, serve_threads, serve_with, Fault, ProxyError, RouteHandle, ServeOptions, Swapped};
pub use rustls::sign::CertifiedKey;
pub use stats::{Counts, RouteStats, Stats};
pub use table::{normalize_host, Fallback, Resolution, Route, RouteTable};
pub use tls::{certified_key, CertError, Edge, TlsHandle, TlsTable};
