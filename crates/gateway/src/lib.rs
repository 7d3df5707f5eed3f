//! The embedded HTTP gateway of `opennotrd`: the `http`, `https`, `h2c`
//! and `tls` plugins.
//!
//! Many clients share one public port per scheme (80 for `http`, 443 for
//! `https` and `tls`, 980 for `h2c` in the original); the gateway routes
//! each request by its `Host` (HTTP/1.1) or `:authority` (HTTP/2) to the
//! client whose domain it names, and proxies it over a stream opened
//! straight to that client's session.
//!
//! # Layout
//! Imports point down this list, never up:
//! - `plugin`: the plugin factories and the `http`/`h2c` plugins, their
//!   ports (which outlive a reload's plugin generations) and [`register`].
//! - `tls`: the TLS ports of the `https` (termination, certificates by
//!   SNI, reload) and `tls` (SNI passthrough) plugins.
//! - `serve`: accepting visitors under the listener's caps in the server's
//!   lifecycle, and serving a connection: the direct path first, then
//!   hyper.
//! - `direct`: the direct HTTP/1.1 path (parse once, rewrite, copy by
//!   framing); `general`: the hyper path (upgrades, streamed bodies,
//!   HTTP/2, gRPC); `guard`: what holds hyper's HTTP/1 server to the rules.
//! - `ctx`: a plugin's settings and a connection's context; `config`: the
//!   plugins' JSON; `acme`: automatic certificates; `external`: the
//!   original's OpenResty mode (`adminUrl`).
//! - `pool`: connections to services kept per route (one entry per route:
//!   idle streams, HTTP/1.1 and HTTP/2 connections, the multiplexed
//!   connection); `gateway`: the shared [`Gateway`] (routes, counters).
//! - `elsewhere`: names another node of a cluster serves ([`Elsewhere`]),
//!   and carrying a visitor's connection there.
//! - `error`: [`GatewayError`], who failed; `limits`: connection caps per
//!   listener and source; `io`: socket wrappers and pause timers.
//! - `rules`: the HTTP/1.1 message rules (framing, strictness, head
//!   rewriting) every path decides with; `route`: the routing table.
//! - `fuzzing` (hidden): the decoders above, for the fuzz targets only.

mod acme;
mod config;
mod ctx;
mod direct;
mod elsewhere;
mod error;
mod external;
#[doc(hidden)]
pub mod fuzzing;
mod gateway;
mod general;
mod guard;
mod h2peek;
mod io;
mod limits;
mod plugin;
mod pool;
mod route;
mod rules;
mod serve;
mod tls;

#[cfg(test)]
mod path_tests;

pub use acme::{AcmeConfig, Challenge};
pub use config::{CertFiles, GatewayConfig, Mode, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_IP};
pub use error::{GatewayError, Origin};
pub use gateway::Gateway;
pub use plugin::{register, GatewayFactory};
pub use route::{Lookup, Scheme, Upstream};
