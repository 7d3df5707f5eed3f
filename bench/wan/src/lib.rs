//! A user-space WAN emulator for opennotr's network benchmarks (the kernel
//! here has no netem): it carries IPv4 between two network namespaces
//! through a TUN device in each, with one-way delay, jitter, random loss and
//! a rate limit with a tail-drop queue, set per direction. See README.md.
//!
//! Errors carry their cause as `source`, not in their message: print them
//! with `{:#}` (anyhow) to get the whole chain on one line.

pub mod link;
pub mod netns;
pub mod shaper;
pub mod spec;

/// Everything that can go wrong while setting up or running the link.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {what} {value:?}: expected {expected}")]
    BadValue { what: &'static str, value: String, expected: &'static str },
    #[error("network namespace {name:?} not found (/run/netns/{name}): create it with `ip netns add {name}` or pass --create")]
    NoNamespace {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "network namespace {0:?} already exists; drop --create to attach to it, or remove it with `ip netns del {0}`"
    )]
    NamespaceExists(String),
    #[error("cannot enter network namespace {name:?} (notr-wan needs root)")]
    Setns {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot create TUN device {dev:?} in namespace {netns:?} (root, /dev/net/tun and a free name needed)")]
    Tun {
        dev: String,
        netns: String,
        #[source]
        source: tun::Error,
    },
    #[error("cannot write {path}")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {program} (iproute2 needed)")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start a thread")]
    Thread(#[source] std::io::Error),
    #[error("a namespace thread panicked")]
    Panicked,
}
