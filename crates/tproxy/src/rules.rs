//! The firewall rules and policy routing of the virtual LAN.
//!
//! `opennotrd` owns an nftables table `ip opennotr` and one policy-routing
//! rule and table. Installing first removes whatever an earlier run left (a
//! crash leaves rules behind), so there is never more than one set; removing
//! is idempotent. `docs/virtual-lan.md` explains every rule.
//!
//! The set `exported` holds `VIP . protocol . port` for each port a live
//! client exports; everything else addressed to the VIP range is refused at
//! once (TCP reset, UDP send error) instead of hanging.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::Mutex;

use tracing::debug;

/// Name of our nftables table (family `ip`).
pub const TABLE: &str = "opennotr";
/// Routing table and rule priority of our policy route ("NO" in ASCII).
pub const ROUTE_TABLE: u32 = 20047;

/// Transport of an exported port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    fn nft(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// What to install.
#[derive(Debug, Clone)]
pub struct RuleSpec {
    /// The VIP range (`dhcp.cidr`).
    pub cidr: ipnet::Ipv4Net,
    /// The transparent TCP listener.
    pub tcp: SocketAddr,
    /// The transparent UDP socket, if UDP is diverted too.
    pub udp: Option<SocketAddr>,
    /// Divert traffic to VIPs arriving from other hosts too (it is dropped
    /// otherwise).
    pub allow_remote: bool,
}

/// Why rules could not be installed or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuleError {
    /// A command could not be run (not installed, not permitted).
    #[error("cannot run `{cmd}`: {source}")]
    Spawn {
        /// The command.
        cmd: String,
        /// Why.
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("`{cmd}` failed: {stderr}")]
    Failed {
        /// The command.
        cmd: String,
        /// What it printed.
        stderr: String,
    },
}

fn tproxy_target(a: SocketAddr) -> String {
    if a.ip().is_unspecified() {
        format!(":{}", a.port())
    } else {
        a.to_string()
    }
}

/// The nftables script that (re)creates our table. Loading it twice leaves
/// one table: it declares the table, deletes it, and creates it anew, in
/// one transaction.
pub fn ruleset(spec: &RuleSpec) -> String {
    let cidr = spec.cidr.trunc();
    let only_local = if spec.allow_remote { "" } else { "iifname \"lo\" " };
    let mut divert = vec![format!(
        "{only_local}ip daddr . meta l4proto . th dport @exported meta l4proto tcp tproxy to {} accept",
        tproxy_target(spec.tcp)
    )];
    if let Some(udp) = spec.udp {
        divert.push(format!(
            "{only_local}ip daddr . meta l4proto . th dport @exported meta l4proto udp tproxy to {} accept",
            tproxy_target(udp)
        ));
    }
    divert.push(format!("iifname \"lo\" ip daddr {cidr} meta l4proto tcp reject with tcp reset"));
    // Without a transparent UDP socket nothing carries UDP to a VIP: refuse
    // it at once rather than letting the final drop leave senders hanging.
    let udp_off =
        if spec.udp.is_none() { format!("\t\tip daddr {cidr} meta l4proto udp reject\n") } else { String::new() };
    divert.push(format!("ip daddr {cidr} drop"));
    format!(
        "add table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \tset exported {{\n\t\ttype ipv4_addr . inet_proto . inet_service\n\t}}\n\
         \tchain refuse {{\n\
         \t\ttype filter hook output priority filter; policy accept;\n\
         {udp_off}\
         \t\tip daddr {cidr} ip daddr . meta l4proto . th dport @exported accept\n\
         \t\tip daddr {cidr} meta l4proto udp reject\n\
         \t}}\n\
         \tchain divert {{\n\
         \t\ttype filter hook prerouting priority mangle; policy accept;\n\
         {}\
         \t}}\n\
         }}\n",
        divert.iter().map(|r| format!("\t\t{r}\n")).collect::<String>()
    )
}

/// The nftables script that replaces `vip`'s elements `old` with `new`.
pub fn elements(vip: Ipv4Addr, old: &[(Proto, u16)], new: &[(Proto, u16)]) -> String {
    let list =
        |v: &[(Proto, u16)]| v.iter().map(|(p, port)| format!("{vip} . {} . {port}", p.nft())).collect::<Vec<_>>();
    let mut s = String::new();
    if !old.is_empty() {
        s += &format!("delete element ip {TABLE} exported {{ {} }}\n", list(old).join(", "));
    }
    if !new.is_empty() {
        s += &format!("add element ip {TABLE} exported {{ {} }}\n", list(new).join(", "));
    }
    s
}

fn run(cmd: &str, args: &[&str]) -> Result<(), RuleError> {
    let shown = format!("{cmd} {}", args.join(" "));
    let out = std::process::Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| RuleError::Spawn { cmd: shown.clone(), source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(RuleError::Failed { cmd: shown, stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() })
    }
}

fn nft_script_blocking(script: &str) -> Result<(), RuleError> {
    use std::io::Write;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RuleError::Spawn { cmd: "nft -f -".into(), source })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child.wait_with_output().map_err(|source| RuleError::Spawn { cmd: "nft -f -".into(), source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(RuleError::Failed {
            cmd: "nft -f -".into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

async fn nft_script(script: String) -> Result<(), RuleError> {
    // nft answers in milliseconds; keep it off the runtime's threads anyway.
    tokio::task::spawn_blocking(move || nft_script_blocking(&script))
        .await
        .unwrap_or_else(|e| Err(RuleError::Spawn { cmd: "nft -f -".into(), source: std::io::Error::other(e) }))
}

/// Removes everything a run of opennotrd installs, whether this run or a
/// crashed earlier one. Missing pieces are not errors.
pub fn remove_all() {
    let _ = nft_script_blocking(&format!("add table ip {TABLE}\ndelete table ip {TABLE}\n"));
    let prio = ROUTE_TABLE.to_string();
    // One rule per run; a loop also clears duplicates a foreign tool made.
    for _ in 0..64 {
        if run("ip", &["rule", "del", "priority", &prio]).is_err() {
            break;
        }
    }
    let _ = run("ip", &["route", "flush", "table", &prio]);
}

/// Installed rules. Dropping them removes them.
#[derive(Debug)]
pub struct Rules {
    exported: Mutex<HashMap<Ipv4Addr, Vec<(Proto, u16)>>>,
    removed: std::sync::atomic::AtomicBool,
}

impl Rules {
    /// Replaces any earlier rules with a fresh set for `spec`.
    pub fn install(spec: &RuleSpec) -> Result<Rules, RuleError> {
        remove_all();
        let cidr = spec.cidr.trunc().to_string();
        let prio = ROUTE_TABLE.to_string();
        let result = nft_script_blocking(&ruleset(spec))
            .and_then(|_| {
                run("ip", &["route", "replace", "local", &cidr, "dev", "lo", "src", "127.0.0.1", "table", &prio])
            })
            .and_then(|_| run("ip", &["rule", "add", "to", &cidr, "lookup", &prio, "priority", &prio]));
        match result {
            Ok(()) => Ok(Rules { exported: Mutex::new(HashMap::new()), removed: false.into() }),
            Err(e) => {
                remove_all();
                Err(e)
            }
        }
    }

    /// Makes exactly `ports` of `vip` reachable (an empty list: none).
    pub async fn export(&self, vip: Ipv4Addr, ports: Vec<(Proto, u16)>) -> Result<(), RuleError> {
        let mut ports = ports;
        ports.sort();
        ports.dedup();
        let old = {
            let mut map = self.exported.lock().unwrap_or_else(|e| e.into_inner());
            if ports.is_empty() {
                map.remove(&vip).unwrap_or_default()
            } else {
                map.insert(vip, ports.clone()).unwrap_or_default()
            }
        };
        if old == ports {
            return Ok(());
        }
        debug!(%vip, ?ports, "exported ports");
        nft_script(elements(vip, &old, &ports)).await
    }
}

impl Rules {
    /// Removes the rules now (they are also removed when dropped).
    pub fn remove(&self) {
        if !self.removed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            remove_all();
        }
    }
}

impl Drop for Rules {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_is_self_replacing_and_local_only_by_default() {
        let spec = RuleSpec {
            cidr: "100.64.242.1/24".parse().unwrap(),
            tcp: "127.0.0.1:4398".parse().unwrap(),
            udp: Some("0.0.0.0:4399".parse().unwrap()),
            allow_remote: false,
        };
        let r = ruleset(&spec);
        assert!(r.starts_with("add table ip opennotr\ndelete table ip opennotr\n"));
        assert!(r.contains("iifname \"lo\" ip daddr . meta l4proto . th dport @exported meta l4proto tcp tproxy to 127.0.0.1:4398 accept"));
        assert!(r.contains("meta l4proto udp tproxy to :4399 accept"));
        assert!(r.contains("ip daddr 100.64.242.0/24 drop"));
        assert!(!r.contains("policy accept;\n\t\tip daddr 100.64.242.0/24 meta l4proto udp reject"));
        let no_udp = ruleset(&RuleSpec { udp: None, ..spec.clone() });
        assert!(no_udp.contains("policy accept;\n\t\tip daddr 100.64.242.0/24 meta l4proto udp reject\n"));
        let remote = ruleset(&RuleSpec { allow_remote: true, ..spec });
        assert!(remote.contains("\t\tip daddr . meta l4proto . th dport @exported meta l4proto tcp tproxy"));
    }

    #[test]
    fn elements_replace_old_with_new() {
        let vip: Ipv4Addr = "100.64.242.2".parse().unwrap();
        let s = elements(vip, &[(Proto::Tcp, 22)], &[(Proto::Tcp, 22), (Proto::Udp, 53)]);
        assert_eq!(
            s,
            "delete element ip opennotr exported { 100.64.242.2 . tcp . 22 }\n\
             add element ip opennotr exported { 100.64.242.2 . tcp . 22, 100.64.242.2 . udp . 53 }\n"
        );
        assert_eq!(elements(vip, &[], &[]), "");
    }
}
