//! The virtual LAN's transparent proxy.
//!
//! Every client has a virtual IP (VIP) that exists on no interface. Programs
//! on the server host that connect to `VIP:port` are steered by firewall
//! rules into two transparent listeners of `opennotrd`, which learn the
//! original destination and carry the traffic to that client.
//!
//! # Layout
//! - [`rules`]: the nftables ruleset and policy routing opennotrd installs,
//!   replaces after a crash, keeps in step with the exported ports, and
//!   removes at exit. The text of the rules is built by pure functions.
//! - `sys`: the sockets. `sys/linux.rs` has IP_TRANSPARENT listeners, the
//!   UDP original destination (IP_RECVORIGDSTADDR) and reply sockets bound
//!   to a VIP; `sys/unsupported.rs` says no on other systems.

pub mod rules;
mod sys;

pub use rules::{Proto, RuleError, RuleSpec, Rules};
pub use sys::{reply_socket, transparent_tcp_listener, TransparentUdp};
