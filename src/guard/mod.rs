//! The guard: log sources → filters → jails → bans in the firewall's nftables sets.
//!
//! - `filter`: filters as data (TOML regexes with `<HOST>`), and the dates in log lines.
//! - `sources`: files (rotation, truncation), the journal, containers' output.
//! - `jail`: the policy (maxretry/findtime/bantime, repeat offenders, permanent bans).
//! - here: what a ban is, who is never banned, and blocklists.
//!
//! The daemon side (src/daemon/guard.rs) runs the engine: it owns the counters and the bans,
//! writes them to the kernel in batches and to the store, and publishes an event per change.

pub mod filter;
pub mod jail;
pub mod sources;
pub mod test;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// A ban, as kept in the store (active while `until` is ahead, or forever when None) and as
/// shown by `ilot ban list`. Expired bans are kept a while to recognise repeat offenders.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ban {
    pub net: IpNet,
    pub jail: String,
    pub since: u64,
    pub until: Option<u64>,
    /// How many times this prefix was banned (this ban included).
    pub count: u32,
    pub reason: String,
}

impl Ban {
    pub fn active(&self, now: u64) -> bool {
        self.until.is_none_or(|u| u > now)
    }
    /// Seconds left for the kernel's timeout (None: permanent).
    pub fn remaining(&self, now: u64) -> Option<u64> {
        self.until.map(|u| u.saturating_sub(now).max(1))
    }
}

/// Addresses the guard never bans: loopback, the configured CIDRs and hostnames (resolved
/// again every few minutes), Docker's networks (an app's log showing its gateway means the
/// real client is unknown, not that the gateway attacks) and the peers of live SSH sessions.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    pub nets: Vec<(IpNet, String)>,
    /// SSH ports whose established peers are allowed.
    pub ssh_ports: Vec<u16>,
}

impl Allowlist {
    /// Why `net` must not be banned, if it must not. `ssh_peers` comes from
    /// `live_ssh_peers(&self.ssh_ports)`, read once per batch of decisions.
    pub fn why_allowed(&self, net: &IpNet, ssh_peers: &[IpAddr]) -> Option<String> {
        if net.addr().is_loopback() || net.addr().is_unspecified() {
            return Some("loopback".into());
        }
        for (allowed, why) in &self.nets {
            if allowed.contains(net) || net.contains(allowed) {
                return Some(why.clone());
            }
        }
        ssh_peers
            .iter()
            .find(|peer| net.contains(*peer))
            .map(|peer| format!("live SSH session from {peer}"))
    }
}

/// Peers of established TCP connections to these local ports (from /proc/net/tcp and tcp6):
/// the admin's SSH sessions.
pub fn live_ssh_peers(ports: &[u16]) -> Vec<IpAddr> {
    let mut peers = Vec::new();
    for (table, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for l in text.lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (Some(local), Some(remote), Some(state)) = (f.get(1), f.get(2), f.get(3)) else {
                continue;
            };
            let port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if *state != "01" || !port.is_some_and(|p| ports.contains(&p)) {
                continue;
            }
            if let Some(addr) = remote.split(':').next().and_then(|h| proc_addr(h, v6)) {
                peers.push(addr);
            }
        }
    }
    peers
}

/// An address as /proc/net/tcp writes it: hex, in 32-bit words of host byte order.
fn proc_addr(hex: &str, v6: bool) -> Option<IpAddr> {
    let words: Vec<u32> = (0..hex.len() / 8)
        .map(|i| u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).map(u32::from_be))
        .collect::<Result<_, _>>()
        .ok()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    let addr = if v6 {
        IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)
    } else {
        IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)
    };
    Some(filter::parse_addr(&addr.to_string()).unwrap_or(addr))
}

/// Parses a blocklist: one address or CIDR per line, the first word of the line; `#` and `;`
/// start comments (Spamhaus DROP: `1.2.3.0/24 ; SBL123`). Returns the prefixes, merged so
/// none overlaps (what an nftables interval set requires), and the lines it could not read.
pub fn parse_blocklist(text: &str) -> (Vec<IpNet>, Vec<String>) {
    let mut nets = Vec::new();
    let mut bad = Vec::new();
    for line in text.lines() {
        let word = line
            .split(['#', ';'])
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next();
        let Some(word) = word else { continue };
        match word
            .parse::<IpNet>()
            .map(|n| n.trunc())
            .or_else(|_| word.parse::<IpAddr>().map(IpNet::from))
        {
            Ok(n) => nets.push(n),
            Err(_) => bad.push(word.chars().take(60).collect()),
        }
    }
    (IpNet::aggregate(&nets), bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocklists_are_merged_and_bad_lines_reported() {
        let (nets, bad) = parse_blocklist(
            "; Spamhaus DROP\n1.2.3.0/24 ; SBL1\n1.2.3.7\n1.2.4.0/24\n# c\n2001:db8::/32\nnot-an-ip\n\n10.0.0.1/8\n",
        );
        let nets: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            nets,
            ["1.2.3.0/24", "1.2.4.0/24", "10.0.0.0/8", "2001:db8::/32"]
        );
        assert_eq!(bad, ["not-an-ip"]);
    }

    #[test]
    fn proc_addresses() {
        assert_eq!(
            proc_addr("0100007F", false),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            proc_addr("0000000000000000FFFF00000100007F", true),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            proc_addr("B80D0120000000000000000001000000", true),
            Some("2001:db8::1".parse().unwrap())
        );
    }

    #[test]
    fn allowlist_covers_prefixes_both_ways() {
        let a = Allowlist {
            nets: vec![("192.0.2.0/24".parse().unwrap(), "config".into())],
            ssh_ports: vec![],
        };
        let peers: Vec<IpAddr> = vec!["2001:db8:1:2::9".parse().unwrap()];
        assert!(a
            .why_allowed(&"192.0.2.9/32".parse().unwrap(), &peers)
            .is_some());
        // A ban of a wider prefix would cover the allowed one: refused too.
        assert!(a
            .why_allowed(&"192.0.0.0/16".parse().unwrap(), &peers)
            .is_some());
        assert!(a
            .why_allowed(&"198.51.100.1/32".parse().unwrap(), &peers)
            .is_none());
        assert!(a
            .why_allowed(&"127.0.0.1/32".parse().unwrap(), &peers)
            .is_some());
        let why = a
            .why_allowed(&"2001:db8:1:2::/64".parse().unwrap(), &peers)
            .unwrap();
        assert!(why.contains("live SSH session"), "{why}");
    }
}
