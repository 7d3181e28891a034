//! The firewall: one nftables table, `inet ilot`, that ilot owns whole and rewrites atomically
//! (one `nft -j -f` transaction per change); nothing outside it is ever read or touched, so
//! Docker's own rules and an admin's tables live beside it. The policy: loopback, established
//! traffic, essential ICMP/ICMPv6, the containers' bridges, SSH (the ports sshd listens on),
//! and the ports the apps and the admin open are accepted; the rest is dropped.
//!
//! The guard's sets live in the same table and are never flushed by a rule change: `ban4`
//! (addresses, with kernel timeouts), `ban6` and `bannet4` (prefixes, with timeouts),
//! `block4`, `blocknet4`, `blocknet6` (the imported blocklists). The `bans` chain drops their
//! traffic at prerouting, before Docker's DNAT, so the forwarded traffic to containers is
//! covered as well as the host's own.

use crate::error::{Error, Result};
use nftables::batch::Batch;
use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, SetItem, CT,
};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Set, SetType, SetTypeValue, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeSet;

pub const TABLE: &str = "ilot";

/// A port and protocol ("443/tcp").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Port {
    pub port: u16,
    pub proto: Proto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = match self.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        write!(f, "{}/{p}", self.port)
    }
}

impl std::str::FromStr for Port {
    type Err = Error;
    fn from_str(s: &str) -> Result<Port> {
        let bad = || {
            Error::bad_input(format!("{s:?} is not a port"))
                .hint("give PORT or PORT/tcp or PORT/udp, e.g. 8443/tcp")
        };
        let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
        let port: u16 = port.parse().map_err(|_| bad())?;
        let proto = match proto {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return Err(bad()),
        };
        if port == 0 {
            return Err(bad());
        }
        Ok(Port { port, proto })
    }
}

/// What the table should hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Policy {
    /// Ports open to the world, with why ("ssh", "instance NAME", "admin").
    pub open: Vec<(Port, String)>,
    /// Interfaces the drop applies to; empty = every interface but loopback and bridges.
    pub interfaces: Vec<String>,
}

impl Policy {
    pub fn ports(&self) -> BTreeSet<Port> {
        self.open.iter().map(|(p, _)| *p).collect()
    }
}

fn field(protocol: &'static str, name: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(name),
        },
    )))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn is(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn one_of(left: Expression<'static>, items: Vec<Expression<'static>>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right: Expression::Named(NamedExpression::Set(
            items.into_iter().map(SetItem::Element).collect(),
        )),
        op: Operator::IN,
    })
}

fn words(w: &[&'static str]) -> Vec<Expression<'static>> {
    w.iter()
        .map(|s| Expression::String(Cow::Borrowed(*s)))
        .collect()
}

fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

fn rule(chain: &'static str, expr: Vec<Statement<'static>>) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        chain: Cow::Borrowed(chain),
        expr: Cow::Owned(expr),
        handle: None,
        index: None,
        comment: None,
    })
}

/// A set of the guard: `interval` for prefixes, `timeout` for bans that expire in the kernel.
/// Address-only sets are hashes, sized for a million entries: loading 100,000 addresses is a
/// few hundred milliseconds there, several times that in an interval set.
fn guard_set(
    name: &'static str,
    kind: SetType,
    interval: bool,
    timeout: bool,
) -> NfListObject<'static> {
    use nftables::schema::SetFlag;
    let mut flags = std::collections::HashSet::new();
    if interval {
        flags.insert(SetFlag::Interval);
    }
    if timeout {
        flags.insert(SetFlag::Timeout);
    }
    NfListObject::Set(Box::new(Set {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed(name),
        handle: None,
        set_type: SetTypeValue::Single(kind),
        policy: None,
        flags: Some(flags),
        elem: None,
        timeout: None,
        gc_interval: None,
        size: (!interval).then_some(1 << 20),
        comment: None,
    }))
}

/// The guard's sets: (name, IPv6?, interval?, timeout?).
pub const GUARD_SETS: [(&str, bool, bool, bool); 6] = [
    ("ban4", false, false, true),
    ("bannet4", false, true, true),
    ("ban6", true, true, true),
    ("block4", false, false, false),
    ("blocknet4", false, true, false),
    ("blocknet6", true, true, false),
];

/// The whole transaction: the table, the ban sets (added, so their elements stay), the input
/// chain emptied and refilled. nft applies it all or nothing.
pub fn ruleset(policy: &Policy) -> Nftables<'static> {
    let mut b = Batch::new();
    b.add(NfListObject::Table(Table {
        family: NfFamily::INet,
        name: Cow::Borrowed(TABLE),
        handle: None,
    }));
    for (name, v6, interval, timeout) in GUARD_SETS {
        let kind = if v6 {
            SetType::Ipv6Addr
        } else {
            SetType::Ipv4Addr
        };
        b.add(guard_set(name, kind, interval, timeout));
    }
    // Banned and blocklisted sources are dropped before anything else looks at them:
    // prerouting at raw priority comes before conntrack and Docker's DNAT.
    let bans = Chain {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed("bans"),
        newname: None,
        handle: None,
        _type: Some(NfChainType::Filter),
        hook: Some(NfHook::Prerouting),
        prio: Some(-300),
        dev: None,
        policy: Some(NfChainPolicy::Accept),
    };
    b.add(NfListObject::Chain(bans.clone()));
    b.add_cmd(nftables::schema::NfCmd::Flush(
        nftables::schema::FlushObject::Chain(bans),
    ));
    for (name, v6, _, _) in GUARD_SETS {
        let (proto, set) = if v6 { ("ip6", name) } else { ("ip", name) };
        b.add(rule(
            "bans",
            vec![
                is(
                    field(proto, "saddr"),
                    Expression::String(Cow::Owned(format!("@{set}"))),
                ),
                Statement::Drop(None),
            ],
        ));
    }
    let input = Chain {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed("input"),
        newname: None,
        handle: None,
        _type: Some(NfChainType::Filter),
        hook: Some(NfHook::Input),
        prio: Some(0),
        dev: None,
        policy: Some(NfChainPolicy::Accept),
    };
    b.add(NfListObject::Chain(input.clone()));
    b.add_cmd(nftables::schema::NfCmd::Flush(
        nftables::schema::FlushObject::Chain(input),
    ));
    let ct_state = Expression::Named(NamedExpression::CT(CT {
        key: Cow::Borrowed("state"),
        family: None,
        dir: None,
    }));
    b.add(rule(
        "input",
        vec![
            is(meta(MetaKey::Iifname), Expression::String("lo".into())),
            accept(),
        ],
    ));
    b.add(rule(
        "input",
        vec![
            one_of(ct_state.clone(), words(&["established", "related"])),
            accept(),
        ],
    ));
    b.add(rule(
        "input",
        vec![
            is(ct_state, Expression::String("invalid".into())),
            Statement::Drop(None),
        ],
    ));
    // Essential ICMP: errors that make TCP work (path MTU, unreachable), ping, and IPv6
    // neighbour discovery, without which IPv6 stops.
    b.add(rule(
        "input",
        vec![
            one_of(
                field("icmp", "type"),
                words(&[
                    "echo-request",
                    "destination-unreachable",
                    "time-exceeded",
                    "parameter-problem",
                ]),
            ),
            accept(),
        ],
    ));
    b.add(rule(
        "input",
        vec![
            one_of(
                field("icmpv6", "type"),
                words(&[
                    "echo-request",
                    "destination-unreachable",
                    "packet-too-big",
                    "time-exceeded",
                    "parameter-problem",
                    "nd-router-advert",
                    "nd-neighbor-solicit",
                    "nd-neighbor-advert",
                    "mld-listener-query",
                ]),
            ),
            accept(),
        ],
    ));
    // Containers reach the host's services (the proxy, DNS) over Docker's bridges.
    for bridge in ["docker0", "br-*"] {
        b.add(rule(
            "input",
            vec![
                is(meta(MetaKey::Iifname), Expression::String(bridge.into())),
                accept(),
            ],
        ));
    }
    for (proto, name) in [(Proto::Tcp, "tcp"), (Proto::Udp, "udp")] {
        let ports: Vec<Expression<'static>> = policy
            .ports()
            .into_iter()
            .filter(|p| p.proto == proto)
            .map(|p| Expression::Number(p.port.into()))
            .collect();
        if !ports.is_empty() {
            b.add(rule(
                "input",
                vec![one_of(field(name, "dport"), ports), accept()],
            ));
        }
    }
    let drop = if policy.interfaces.is_empty() {
        vec![Statement::Drop(None)]
    } else {
        vec![
            one_of(
                meta(MetaKey::Iifname),
                policy
                    .interfaces
                    .iter()
                    .map(|i| Expression::String(Cow::Owned(i.clone())))
                    .collect(),
            ),
            Statement::Drop(None),
        ]
    };
    b.add(rule("input", drop));
    b.to_nftables()
}

/// Applies the policy in one transaction.
pub fn apply(policy: &Policy) -> Result<()> {
    run(&ruleset(policy))
}

/// The set a banned prefix goes to.
fn ban_set_of(net: &ipnet::IpNet) -> &'static str {
    match net {
        ipnet::IpNet::V4(n) if n.prefix_len() == 32 => "ban4",
        ipnet::IpNet::V4(_) => "bannet4",
        ipnet::IpNet::V6(_) => "ban6",
    }
}

fn element(set: &'static str, elem: Vec<Expression<'static>>) -> NfListObject<'static> {
    NfListObject::Element(nftables::schema::Element {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed(set),
        elem: Cow::Owned(elem),
    })
}

/// A prefix as nft wants it: a plain address for a whole-address prefix.
fn net_expr(net: &ipnet::IpNet) -> Expression<'static> {
    if net.prefix_len() == net.max_prefix_len() {
        Expression::String(Cow::Owned(net.addr().to_string()))
    } else {
        Expression::Named(NamedExpression::Prefix(nftables::expr::Prefix {
            addr: Box::new(Expression::String(Cow::Owned(net.network().to_string()))),
            len: net.prefix_len() as u32,
        }))
    }
}

/// Adds bans, each with its remaining time (None: permanent), in one transaction.
pub fn add_bans(bans: &[(ipnet::IpNet, Option<u64>)]) -> Result<()> {
    if bans.is_empty() {
        return Ok(());
    }
    let mut by_set: std::collections::BTreeMap<&'static str, Vec<Expression<'static>>> =
        Default::default();
    for (net, secs) in bans {
        let val = net_expr(net);
        let elem = match secs {
            None => val,
            Some(s) => Expression::Named(NamedExpression::Elem(nftables::expr::Elem {
                val: Box::new(val),
                timeout: Some((*s).clamp(1, u32::MAX as u64) as u32),
                expires: None,
                comment: None,
                counter: None,
            })),
        };
        by_set.entry(ban_set_of(net)).or_default().push(elem);
    }
    let mut b = Batch::new();
    for (set, elems) in by_set {
        b.add(element(set, elems));
    }
    run(&b.to_nftables())
}

/// Removes one ban; one that is no longer there (expired in the kernel) is not an error.
pub fn remove_ban(net: &ipnet::IpNet) -> Result<()> {
    let mut b = Batch::new();
    b.delete(element(ban_set_of(net), vec![net_expr(net)]));
    match run(&b.to_nftables()) {
        Err(e) if e.message.contains("does not exist") || e.message.contains("No such file") => {
            Ok(())
        }
        other => other,
    }
}

/// Replaces the blocklist sets' content in one transaction. `nets` must not overlap
/// (`ipnet::IpNet::aggregate` gives that).
pub fn load_blocklist(nets: &[ipnet::IpNet]) -> Result<()> {
    let mut b = Batch::new();
    let mut sets: [(&'static str, Vec<Expression<'static>>); 3] = [
        ("block4", vec![]),
        ("blocknet4", vec![]),
        ("blocknet6", vec![]),
    ];
    for net in nets {
        let i = match net {
            ipnet::IpNet::V4(n) if n.prefix_len() == 32 => 0,
            ipnet::IpNet::V4(_) => 1,
            ipnet::IpNet::V6(_) => 2,
        };
        sets[i].1.push(net_expr(net));
    }
    for (set, elems) in sets {
        b.add_cmd(nftables::schema::NfCmd::Flush(
            nftables::schema::FlushObject::Set(Box::new(Set {
                family: NfFamily::INet,
                table: Cow::Borrowed(TABLE),
                name: Cow::Borrowed(set),
                handle: None,
                set_type: SetTypeValue::Single(SetType::Ipv4Addr),
                policy: None,
                flags: None,
                elem: None,
                timeout: None,
                gc_interval: None,
                size: None,
                comment: None,
            })),
        ));
        if !elems.is_empty() {
            b.add(element(set, elems));
        }
    }
    run(&b.to_nftables())
}

/// Applies a batch: `nft -j -f -`, one transaction. (Run here rather than through the
/// crate's helper, which drops what nft writes on stderr: the only place it says why.)
fn run(batch: &Nftables) -> Result<()> {
    use std::io::Write;
    let json = serde_json::to_vec(batch).map_err(|e| Error::failed(format!("nftables: {e}")))?;
    let hint = "ilot needs nft (package nftables) and CAP_NET_ADMIN; see `nft list ruleset`";
    let mut child = std::process::Command::new("nft")
        .args(["-j", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Error::failed(format!("nftables: cannot run nft: {e}")).hint(hint))?;
    let written = child.stdin.take().expect("piped stdin").write_all(&json);
    let out = child
        .wait_with_output()
        .map_err(|e| Error::failed(format!("nftables: {e}")).hint(hint))?;
    if out.status.success() && written.is_ok() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let why = stderr
        .lines()
        .find(|l| l.contains("Error"))
        .or_else(|| stderr.lines().next())
        .unwrap_or("nft failed")
        .trim()
        .to_string();
    Err(Error::failed(format!("nftables: {why}")).hint(hint))
}

/// Removes ilot's table (the firewall disabled): everything else stays as it is.
pub fn remove() -> Result<()> {
    let mut b = Batch::new();
    b.delete(NfListObject::Table(Table {
        family: NfFamily::INet,
        name: Cow::Borrowed(TABLE),
        handle: None,
    }));
    match run(&b.to_nftables()) {
        // No table: nothing to remove.
        Err(e) if e.message.contains("No such file") => Ok(()),
        other => other,
    }
}

/// The SSH ports to keep open: those sshd listens on; when none is found (sshd not running, or
/// started by systemd socket activation) but sshd is installed, the `Port` lines of its config
/// (22 when there are none). Never locking the admin out beats a port open for nothing.
pub fn ssh_ports() -> Vec<u16> {
    let found = sshd_ports();
    if !found.is_empty() {
        return found;
    }
    let Ok(config) = std::fs::read_to_string("/etc/ssh/sshd_config") else {
        return Vec::new();
    };
    let ports: Vec<u16> = config
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.next()
                .filter(|k| k.eq_ignore_ascii_case("port"))
                .and(w.next())?
                .parse()
                .ok()
        })
        .collect();
    if ports.is_empty() {
        vec![22]
    } else {
        ports
    }
}

/// The TCP ports sshd listens on: its listening sockets, found through /proc (sockets whose
/// inode an `sshd` process holds). Empty when no sshd runs.
pub fn sshd_ports() -> Vec<u16> {
    let mut inodes = BTreeSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for p in procs.flatten() {
        let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
        if comm.trim() != "sshd" {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.to_string_lossy();
                if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    inodes.insert(inode.to_string());
                }
            }
        }
    }
    let mut ports = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        ports.extend(listening_ports(&text, &inodes));
    }
    ports.into_iter().collect()
}

/// From a /proc/net/tcp table: the local ports of LISTEN sockets (state 0A) with these inodes.
fn listening_ports(table: &str, inodes: &BTreeSet<String>) -> Vec<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
            if *state != "0A" || !inodes.contains(*inode) {
                return None;
            }
            u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse() {
        assert_eq!(
            "22".parse::<Port>().unwrap(),
            Port {
                port: 22,
                proto: Proto::Tcp
            }
        );
        assert_eq!("53/udp".parse::<Port>().unwrap().to_string(), "53/udp");
        for bad in ["0", "70000", "22/icmp", "a", "", "22/"] {
            assert!(bad.parse::<Port>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sshd_listening_sockets() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0 100 0 0 10 0\n\
           1: 00000000:08AE 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 999 1 0 100 0 0 10 0\n\
           2: 0100007F:0016 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 1234 1 0 100 0 0 10 0\n";
        let inodes: BTreeSet<String> = ["1234".to_string()].into();
        assert_eq!(listening_ports(table, &inodes), vec![22]);
    }

    #[test]
    fn the_ruleset_is_one_transaction_of_our_table_only() {
        let policy = Policy {
            open: vec![
                ("22/tcp".parse().unwrap(), "ssh".into()),
                ("53/udp".parse().unwrap(), "x".into()),
            ],
            interfaces: vec![],
        };
        let json = serde_json::to_string(&ruleset(&policy)).unwrap();
        assert!(json.contains("\"table\":\"ilot\""));
        assert!(
            !json.contains("\"flush\":{\"table\""),
            "the table (and its ban sets) is never flushed"
        );
        assert!(json.contains("\"flush\":{\"chain\""));
    }
}
