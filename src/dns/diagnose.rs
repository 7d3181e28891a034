//! `ilot diagnose`: what the world sees, compared with what ilot planned, in plain words.
//! Each finding says what was expected, what was seen, and what to do. DNS: every planned
//! record resolved (hickory-resolver, through the configured resolvers or the system's).
//! Mail: forward-confirmed reverse DNS of the host's addresses and its HELO name, whether
//! outbound port 25 is open, and whether the address is on DNS blocklists.

use super::Record;
use crate::config::{DnsConfig, HostConfig};
use hickory_proto::rr::{RData, RecordType};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::Resolver;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// "dns" or "mail".
    pub area: &'static str,
    pub status: Status,
    /// What was checked, e.g. "example.org. MX".
    pub subject: String,
    pub expected: String,
    pub seen: String,
    /// What to do (empty when all is well).
    pub fix: String,
}

fn check(area: &'static str, status: Status, subject: impl Into<String>) -> Check {
    Check {
        area,
        status,
        subject: subject.into(),
        expected: String::new(),
        seen: String::new(),
        fix: String::new(),
    }
}

/// The resolver diagnosis asks: the configured ones ("IP" or "IP:PORT"), else the system's.
pub fn resolver(dns: &DnsConfig) -> Result<Resolver<TokioRuntimeProvider>, String> {
    let builder = if dns.resolvers.is_empty() {
        Resolver::builder_tokio().map_err(|e| format!("no system resolver: {e}"))?
    } else {
        let mut servers = Vec::new();
        for r in &dns.resolvers {
            let addr: SocketAddr = r
                .parse()
                .or_else(|_| r.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| format!("[dns] resolvers: {r:?} is not IP or IP:PORT"))?;
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            servers.push(NameServerConfig::new(addr.ip(), true, vec![udp, tcp]));
        }
        Resolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let mut builder = builder;
    let opts = builder.options_mut();
    opts.timeout = Duration::from_secs(3);
    opts.attempts = 2;
    // Diagnosis wants what the servers say now, not what was cached a minute ago.
    opts.cache_size = 0;
    builder.build().map_err(|e| format!("resolver: {e}"))
}

/// What a lookup found: the values, or that there is nothing, or that it could not be asked.
enum Seen {
    Values(Vec<RData>),
    Nothing,
    Error(String),
}

async fn lookup(r: &Resolver<TokioRuntimeProvider>, name: &str, kind: RecordType) -> Seen {
    match r.lookup(name, kind).await {
        Ok(l) => {
            let v: Vec<RData> = l
                .answers()
                .iter()
                .filter(|a| a.record_type() == kind)
                .map(|a| a.data.clone())
                .collect();
            if v.is_empty() {
                Seen::Nothing
            } else {
                Seen::Values(v)
            }
        }
        Err(e) if e.is_no_records_found() || e.is_nx_domain() => Seen::Nothing,
        Err(e) => Seen::Error(e.to_string()),
    }
}

/// A value in a form that compares equal however the server split or cased it.
fn normal(d: &RData) -> String {
    match d {
        RData::TXT(t) => t
            .txt_data
            .iter()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
        other => other.to_string().to_ascii_lowercase(),
    }
}

/// The tag that tells which policy a TXT record is (other TXT records at a name are not ours
/// to judge: a site verification token may sit beside the SPF record).
fn txt_tag(v: &str) -> &str {
    let v = v.trim_start();
    v.split([';', ' ']).next().unwrap_or("")
}

/// Compares each planned record with what resolves.
pub async fn dns_checks(r: &Resolver<TokioRuntimeProvider>, records: &[Record]) -> Vec<Check> {
    let mut groups: BTreeMap<(String, String), Vec<&Record>> = BTreeMap::new();
    for rec in records {
        groups
            .entry((rec.name.clone(), rec.kind.clone()))
            .or_default()
            .push(rec);
    }
    let mut out = Vec::new();
    for ((name, kind), recs) in groups {
        let subject = format!("{name} {kind}");
        let Ok(wanted) =
            super::push::to_wire(".", &recs.iter().map(|r| (*r).clone()).collect::<Vec<_>>())
        else {
            continue;
        };
        let Some(rtype) = wanted.first().map(|w| w.record_type()) else {
            continue;
        };
        let expected: Vec<String> = wanted.iter().map(|w| normal(&w.data)).collect();
        let mut c = check("dns", Status::Ok, subject);
        c.expected = expected.join(" | ");
        match lookup(r, &name, rtype).await {
            Seen::Error(e) => {
                c.status = Status::Warn;
                c.seen = format!("no answer ({e})");
                c.fix = "check that the zone's servers answer, or set [dns] resolvers".into();
            }
            Seen::Nothing => {
                c.status = Status::Fail;
                c.seen = "nothing".into();
                c.fix = "publish the record (`ilot dns show --format zone` prints it; `ilot dns apply` for served or pushed zones)".to_string();
            }
            Seen::Values(v) => {
                let mut seen: Vec<String> = v.iter().map(normal).collect();
                if rtype == RecordType::TXT {
                    let tags: Vec<&str> = expected.iter().map(|e| txt_tag(e)).collect();
                    seen.retain(|s| tags.contains(&txt_tag(s)));
                }
                c.seen = if seen.is_empty() {
                    "nothing".into()
                } else {
                    seen.join(" | ")
                };
                let missing: Vec<&String> = expected.iter().filter(|e| !seen.contains(e)).collect();
                let spf_count = seen.iter().filter(|s| txt_tag(s) == "v=spf1").count();
                if spf_count > 1 {
                    c.status = Status::Fail;
                    c.fix = "there must be exactly one SPF (v=spf1) record: receivers treat several as an error; delete the others".into();
                } else if !missing.is_empty() {
                    c.status = Status::Fail;
                    c.fix = if seen.is_empty() {
                        "publish the record (`ilot dns show --format zone` prints it)".into()
                    } else {
                        format!(
                            "replace it with the expected value ({})",
                            missing
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(" | ")
                        )
                    };
                }
            }
        }
        out.push(c);
    }
    out
}

/// What a mail server on this host says it is called: the name in its SMTP greeting.
pub struct Greeting {
    /// The instance.
    pub server: String,
    /// The host port it was asked on.
    pub port: u16,
    /// The name, or why it could not be read.
    pub name: Result<String, String>,
}

/// Reads an SMTP server's name as a receiver sees it: the greeting (`220 NAME ...`) and the
/// EHLO reply (`250-NAME`), which Postfix both takes from `myhostname`, as it does its HELO.
pub async fn smtp_greeting(addr: SocketAddr) -> Result<String, String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let talk = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let (rd, mut wr) = stream.into_split();
        let mut lines = BufReader::new(rd).lines();
        async fn next<R: tokio::io::AsyncBufRead + Unpin>(
            lines: &mut tokio::io::Lines<R>,
        ) -> Result<String, String> {
            lines
                .next_line()
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "the server closed the connection".to_string())
        }
        let banner = next(&mut lines).await?;
        let name = |line: &str, code: &str| -> Result<String, String> {
            line.strip_prefix(code)
                .and_then(|rest| rest.split_whitespace().next())
                .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                .ok_or_else(|| format!("unexpected reply {line:?}"))
        };
        let greeted = name(&banner, "220-")
            .or_else(|_| name(&banner, "220 "))
            .map_err(|_| format!("unexpected greeting {banner:?}"))?;
        wr.write_all(b"EHLO diagnose.invalid\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut ehlo = next(&mut lines).await?;
        while ehlo.starts_with("220") {
            ehlo = next(&mut lines).await?;
        }
        let said = name(&ehlo, "250-").or_else(|_| name(&ehlo, "250 "))?;
        let _ = wr.write_all(b"QUIT\r\n").await;
        if said != greeted {
            return Err(format!(
                "it greets as {greeted} but answers EHLO as {said}: they should be one name"
            ));
        }
        Ok(greeted)
    };
    tokio::time::timeout(Duration::from_secs(10), talk)
        .await
        .map_err(|_| format!("no greeting from {addr} within 10 s"))?
}

/// Forward-confirmed reverse DNS of the host's addresses against the name its mail servers
/// greet with (asked on their port 25; `[host] hostname` when none runs), port 25 and
/// blocklists.
pub async fn mail_checks(
    r: &Resolver<TokioRuntimeProvider>,
    host: &HostConfig,
    dns: &DnsConfig,
    greetings: &[Greeting],
) -> Vec<Check> {
    let mut out = Vec::new();
    // The name the world must see: what the mail server says, else what it is configured to.
    let mut helo: Option<(String, String)> = None; // (name, who says it)
    for g in greetings {
        let mut c = check("mail", Status::Ok, format!("SMTP greeting of {}", g.server));
        c.expected = "one name, in the greeting and the EHLO reply".into();
        match &g.name {
            Ok(n) => {
                c.seen = format!("{n} (port {})", g.port);
                if helo.is_none() {
                    helo = Some((n.clone(), format!("the mail server {} says", g.server)));
                }
            }
            Err(e) => {
                c.status = Status::Warn;
                c.seen = e.clone();
                c.fix = format!(
                    "check that {} runs (`ilot app status {}`)",
                    g.server, g.server
                );
            }
        }
        out.push(c);
    }
    if helo.is_none() {
        helo = host
            .hostname
            .clone()
            .map(|h| (h, "[host] hostname says".to_string()));
    }
    let addrs: Vec<IpAddr> = host
        .ipv4
        .map(IpAddr::V4)
        .into_iter()
        .chain(host.ipv6.map(IpAddr::V6))
        .collect();
    if addrs.is_empty() {
        let mut c = check("mail", Status::Warn, "reverse DNS");
        c.seen = "[host] ipv4/ipv6 not set".into();
        c.fix = "set [host] ipv4 (and ipv6) in /etc/ilot/ilot.toml so ilot can check the host's reverse DNS".into();
        out.push(c);
    }
    for ip in &addrs {
        let ptr_name = match ip {
            IpAddr::V4(v4) => super::reverse_v4(*v4),
            IpAddr::V6(v6) => super::reverse_v6(*v6),
        };
        let mut c = check("mail", Status::Ok, format!("reverse DNS of {ip}"));
        c.expected = helo
            .as_ref()
            .map(|(h, _)| format!("{h}. (the HELO name), which resolves back to {ip}"))
            .unwrap_or_else(|| format!("a name that resolves back to {ip}"));
        let names: Vec<String> = match lookup(r, &ptr_name, RecordType::PTR).await {
            Seen::Values(v) => v
                .iter()
                .map(|d| d.to_string().to_ascii_lowercase())
                .collect(),
            Seen::Nothing => Vec::new(),
            Seen::Error(e) => {
                c.status = Status::Warn;
                c.seen = format!("no answer ({e})");
                c.fix = "retry later, or set [dns] resolvers".into();
                out.push(c);
                continue;
            }
        };
        if names.is_empty() {
            c.status = Status::Fail;
            c.seen = "no PTR record".into();
            c.fix = format!(
                "ask whoever gave you {ip} (ISP, hosting provider) to set its reverse DNS to {}, \
                 or serve the reverse zone with ilot; without it most receivers reject or spam-file your mail",
                helo.as_ref().map(|(h, _)| h.as_str()).unwrap_or("your mail host name")
            );
            out.push(c);
            continue;
        }
        // Forward-confirm each name: it must resolve to the same address.
        let kind = if ip.is_ipv4() {
            RecordType::A
        } else {
            RecordType::AAAA
        };
        let mut confirmed = Vec::new();
        for n in &names {
            if let Seen::Values(v) = lookup(r, n, kind).await {
                if v.iter().any(|d| d.ip_addr() == Some(*ip)) {
                    confirmed.push(n.clone());
                }
            }
        }
        c.seen = format!("PTR {}", names.join(", "));
        if confirmed.is_empty() {
            c.status = Status::Fail;
            c.seen
                .push_str(&format!(", which does not resolve back to {ip}"));
            c.fix = format!(
                "make {} resolve to {ip} (an {kind} record), or change the PTR to a name that does",
                names[0]
            );
        } else if let Some((h, who)) = &helo {
            if !confirmed.iter().any(|n| n.trim_end_matches('.') == h) {
                c.status = Status::Fail;
                c.seen.push_str(&format!(" ({who} HELO {h})"));
                c.fix = format!(
                    "the PTR of {ip} and the HELO name must be one name: set [host] hostname = \"{}\" \
                     (ilot's mail server then greets with it), or set the PTR to {h}",
                    confirmed[0].trim_end_matches('.')
                );
            }
        } else {
            c.status = Status::Warn;
            c.fix = format!(
                "set [host] hostname = \"{}\" so the mail server's HELO name matches",
                confirmed[0].trim_end_matches('.')
            );
        }
        out.push(c);
    }
    out.push(port25(&dns.smtp_probe).await);
    if let Some(v4) = host.ipv4 {
        for list in &dns.blocklists {
            out.push(blocklist(r, v4, list).await);
        }
    }
    out
}

/// Whether an SMTP server answers on port 25 from here (many home ISPs block it).
async fn port25(target: &str) -> Check {
    let mut c = check("mail", Status::Ok, "outbound port 25");
    c.expected = format!("a connection to {target}");
    let attempt = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(target),
    )
    .await;
    match attempt {
        Ok(Ok(_)) => c.seen = "connected".into(),
        Ok(Err(e)) => {
            c.status = Status::Fail;
            c.seen = format!("refused or unreachable: {e}");
        }
        Err(_) => {
            c.status = Status::Fail;
            c.seen = "no answer within 5 s (the usual sign of an ISP blocking port 25)".into();
        }
    }
    if c.status == Status::Fail {
        c.fix = "outbound port 25 looks blocked, so this host cannot deliver mail itself: send \
                 through a relay (smarthost) on port 587 — your ISP's, or a mail delivery \
                 service — with `ilot mail relay set HOST:587 --user USER`; or ask the ISP to \
                 unblock port 25"
            .into();
    }
    c
}

async fn blocklist(
    r: &Resolver<TokioRuntimeProvider>,
    ip: std::net::Ipv4Addr,
    list: &str,
) -> Check {
    let o = ip.octets();
    let q = format!(
        "{}.{}.{}.{}.{}.",
        o[3],
        o[2],
        o[1],
        o[0],
        list.trim_end_matches('.')
    );
    let mut c = check("mail", Status::Ok, format!("blocklist {list}"));
    c.expected = format!("{ip} not listed");
    match lookup(r, &q, RecordType::A).await {
        Seen::Nothing => c.seen = "not listed".into(),
        Seen::Error(e) => {
            c.status = Status::Warn;
            c.seen = format!("no answer ({e})");
            c.fix = "retry later".into();
        }
        Seen::Values(v) => {
            let codes: Vec<String> = v
                .iter()
                .filter_map(|d| d.ip_addr())
                .map(|a| a.to_string())
                .collect();
            c.seen = format!("answered {}", codes.join(", "));
            if codes.iter().all(|a| a.starts_with("127.255.255.")) {
                // Spamhaus and others answer 127.255.255.x to refuse queries that come through
                // public resolvers (or over their free limit): no verdict.
                c.status = Status::Warn;
                c.seen.push_str(" (the list refused the query)");
                c.fix = "this list refuses queries from public resolvers: set [dns] resolvers to a resolver of your own (e.g. unbound on the host) to check it".into();
            } else {
                c.status = Status::Fail;
                let reason = match lookup(r, &q, RecordType::TXT).await {
                    Seen::Values(t) => t.iter().map(normal).collect::<Vec<_>>().join(" "),
                    _ => String::new(),
                };
                if !reason.is_empty() {
                    c.seen.push_str(&format!(": {reason}"));
                }
                c.fix = format!("{ip} is listed on {list}: follow the list's delisting procedure (its site explains why), and find what sent the spam first");
            }
        }
    }
    c
}
