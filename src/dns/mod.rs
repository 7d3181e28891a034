//! DNS: the records the host and its apps need, computed from the config and the installed
//! instances (desired state, like everything else). This first part is the record model and
//! the `print` mode: a zone-file snippet or a table to paste at a registrar. Serving the zones
//! (hickory-server) and pushing them (RFC 2136) build on the same model.

pub mod diagnose;
pub mod push;
pub mod serve;
pub mod zones;

use crate::catalog::DnsRecord;
use crate::state::Instance;
use serde::Serialize;
use std::net::{Ipv4Addr, Ipv6Addr};

pub const DEFAULT_TTL: u32 = 3600;

/// One record, in presentation form: `name` is absolute (ends with a dot) and `value` is what
/// follows the type in a zone file.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Record {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub ttl: u32,
    pub value: String,
    /// Why it exists: "instance NAME" or "host".
    pub reason: String,
}

/// Something ilot cannot compute, with what to do.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Finding {
    pub domain: String,
    pub problem: String,
    pub fix: String,
}

/// What the records are computed from (all of it desired state).
pub struct Inputs<'a> {
    pub instances: &'a [Instance],
    pub host: &'a crate::config::HostConfig,
    pub dns: &'a crate::config::DnsConfig,
    /// CAA: the ACME CA's issuer domain, when it has a well-known one.
    pub caa_issuer: Option<&'a str>,
    /// CAA: the ACME account's URL, to bind issuance to it (RFC 8657).
    pub caa_account: Option<&'a str>,
    /// Whether certificates come from a public CA (MTA-STS can then `enforce`).
    pub acme: bool,
    /// DKIM public keys by mail domain: (selector, TXT value).
    pub dkim: &'a std::collections::BTreeMap<String, Vec<(String, String)>>,
    /// `[mail] postmaster`: where the mail domains' role addresses go (else the first mailbox).
    pub postmaster: Option<&'a str>,
}

/// The mail domains an instance that declares `[needs] mail` serves: those `ilot mail domain`
/// manages, else the parent of a `mail.` domain (mail.example.org serves example.org), else
/// its domain.
pub fn mail_domains(inst: &Instance) -> Vec<String> {
    if !inst.manifest.needs.mail {
        return Vec::new();
    }
    if let Some(m) = &inst.mail {
        return m.domains.clone();
    }
    inst.domain
        .iter()
        .map(|d| d.strip_prefix("mail.").unwrap_or(d).to_string())
        .collect()
}

/// The MTA-STS policy a mail domain publishes at https://mta-sts.DOMAIN/.well-known/mta-sts.txt
/// (RFC 8461). `enforce` only when certificates come from a public CA.
pub fn mta_sts_policy(mx: &str, enforce: bool) -> String {
    let mode = if enforce { "enforce" } else { "testing" };
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 604800\r\n")
}

/// Everything the served domains need. `only` restricts to one domain (and its subdomains).
pub fn plan(inp: &Inputs, only: Option<&str>) -> (Vec<Record>, Vec<Finding>) {
    let (host, caa_issuer) = (inp.host, inp.caa_issuer);
    let (ipv4, ipv6) = (host.ipv4, host.ipv6);
    let mut records = Vec::new();
    let mut findings = Vec::new();
    let wanted = |n: &str| only.is_none_or(|o| n == o || n.ends_with(&format!(".{o}")));
    let mut push = |name: String, kind: &str, value: String, reason: &str| {
        if wanted(name.trim_end_matches('.')) {
            records.push(Record {
                name,
                kind: kind.into(),
                ttl: DEFAULT_TTL,
                value,
                reason: reason.into(),
            })
        }
    };
    // The host itself: its name resolves to its addresses and back (forward-confirmed reverse
    // DNS, which receiving mail servers check). The PTR records belong to whoever holds the
    // address space: the ISP, or the user's own reverse zone. Without [host] hostname, a mail
    // server's own name is the host's (it greets with it: crate::mail::helo_name); its A and
    // AAAA come with the server's web name below.
    let mail_server = inp
        .instances
        .iter()
        .find(|i| i.manifest.needs.mail && i.domain.is_some());
    if let Some(name) = host.hostname.as_deref() {
        let fqdn = format!("{name}.");
        if let Some(ip) = ipv4 {
            push(fqdn.clone(), "A", ip.to_string(), "host");
        }
        if let Some(ip) = ipv6 {
            push(fqdn.clone(), "AAAA", ip.to_string(), "host");
        }
    }
    if let Some(name) = host
        .hostname
        .clone()
        .or_else(|| mail_server.and_then(|i| i.domain.clone()))
    {
        let fqdn = format!("{name}.");
        if let Some(ip) = ipv4 {
            push(reverse_v4(ip), "PTR", fqdn.clone(), "host");
        }
        if let Some(ip) = ipv6 {
            push(reverse_v6(ip), "PTR", fqdn, "host");
        }
    }
    let no_address = |domain: &str| Finding {
        domain: domain.to_string(),
        problem:
            "the host's public address is not configured, so its A/AAAA records cannot be computed"
                .into(),
        fix: "set [host] ipv4 (and ipv6, if the host has one) in /etc/ilot/ilot.toml".into(),
    };
    for inst in inp.instances {
        let reason = format!("instance {}", inst.name);
        // A web name: the host's addresses, and CAA for the CA that issues its certificate.
        let web_name = |domain: &str,
                        push: &mut dyn FnMut(String, &str, String, &str),
                        findings: &mut Vec<Finding>| {
            let fqdn = format!("{domain}.");
            if ipv4.is_none() && ipv6.is_none() && wanted(domain) {
                findings.push(no_address(domain));
            }
            if let Some(ip) = ipv4 {
                push(fqdn.clone(), "A", ip.to_string(), &reason);
            }
            if let Some(ip) = ipv6 {
                push(fqdn.clone(), "AAAA", ip.to_string(), &reason);
            }
            if let Some(issuer) = caa_issuer {
                let value = match inp.caa_account {
                    Some(acct) => format!("{issuer}; accounturi={acct}"),
                    None => issuer.to_string(),
                };
                push(fqdn, "CAA", format!("0 issue {}", quote(&value)), &reason);
            }
        };
        for domain in inst.domains() {
            web_name(domain, &mut push, &mut findings);
            for r in &inst.manifest.needs.dns {
                push(
                    absolute(&r.name, domain),
                    &r.kind,
                    presentation(r, domain),
                    &reason,
                );
            }
        }
        // A mail server: everything receiving servers and mail clients look up.
        let Some(mx) = inst.domain.as_deref() else {
            continue;
        };
        let relay = inst.mail.as_ref().and_then(|st| st.relay.as_ref());
        for m in mail_domains(inst) {
            let at = |label: &str| format!("{label}.{m}.");
            let apex = format!("{m}.");
            push(apex.clone(), "MX", format!("10 {mx}."), &reason);
            push(apex.clone(), "TXT", txt(&spf(relay)), &reason);
            if let Some(r) = relay.filter(|r| r.spf_include.is_none()) {
                if wanted(&m) {
                    findings.push(Finding {
                        domain: m.clone(),
                        problem: format!(
                            "mail leaves through the relay {}, which the SPF record does not \
                             cover, so receivers see it fail SPF",
                            r.host
                        ),
                        fix: format!(
                            "`ilot mail relay set {}:{} --user {} --spf-include DOMAIN`, with the \
                             domain the relay's documentation says to include",
                            r.host, r.port, r.user
                        ),
                    });
                }
            }
            // Reports go to an address that accepts mail: [dns] dmarc_report, or postmaster@
            // once it has somewhere to go (a mailbox, or [mail] postmaster). Until then no
            // report is asked for: it would bounce. (A mail app ilot does not configure keeps
            // its own postmaster@.)
            let report = inp.dns.dmarc_report.clone().or_else(|| {
                let accepts = inst
                    .mail
                    .as_ref()
                    .is_none_or(|st| st.postmaster_accepts(&m, inp.postmaster));
                accepts.then(|| format!("postmaster@{m}"))
            });
            if report.is_none() && wanted(&m) {
                findings.push(Finding {
                    domain: m.clone(),
                    problem: format!(
                        "postmaster@{m} has no mailbox to go to yet, so DMARC and TLS-RPT \
                         reports are not asked for"
                    ),
                    fix: format!(
                        "add a mailbox (`ilot mail user add you@{m}`: postmaster@, abuse@ and \
                         hostmaster@ go to the first one), or set [mail] postmaster"
                    ),
                });
            }
            let rua = report
                .as_deref()
                .map(|r| format!("; rua=mailto:{r}"))
                .unwrap_or_default();
            push(
                at("_dmarc"),
                "TXT",
                txt(&format!("v=DMARC1; p={}{rua}", inp.dns.dmarc_policy)),
                &reason,
            );
            match inp.dkim.get(&m).filter(|k| !k.is_empty()) {
                Some(keys) => {
                    for (selector, value) in keys {
                        push(
                            at(&format!("{selector}._domainkey")),
                            "TXT",
                            txt(value),
                            &reason,
                        );
                    }
                }
                None if wanted(&m) => findings.push(Finding {
                    domain: m.clone(),
                    problem: "no DKIM key yet, so mail from this domain is not signed".into(),
                    fix: "the key is generated when the mail app starts; run `ilot dns show` again"
                        .into(),
                }),
                None => {}
            }
            // MTA-STS: the TXT record's id changes whenever the policy does.
            let policy = mta_sts_policy(mx, inp.acme);
            let id = &crate::state::hex(&<sha2::Sha256 as sha2::Digest>::digest(policy.as_bytes()))
                [..16];
            push(
                at("_mta-sts"),
                "TXT",
                txt(&format!("v=STSv1; id={id}")),
                &reason,
            );
            web_name(&format!("mta-sts.{m}"), &mut push, &mut findings);
            if let Some(report) = &report {
                push(
                    at("_smtp._tls"),
                    "TXT",
                    txt(&format!("v=TLSRPTv1; rua=mailto:{report}")),
                    &reason,
                );
            }
            // RFC 6186 (mail clients find their servers) and RFC 8314 (implicit TLS first).
            push(
                at("_submissions._tcp"),
                "SRV",
                format!("0 1 465 {mx}."),
                &reason,
            );
            push(
                at("_submission._tcp"),
                "SRV",
                format!("0 1 587 {mx}."),
                &reason,
            );
            push(at("_imaps._tcp"), "SRV", format!("0 1 993 {mx}."), &reason);
            // Mail clients' autoconfiguration, served by the proxy (src/mail/autoconfig.rs)
            // for the mail servers ilot configures.
            if inst.manifest.needs.mail_files.is_some() {
                web_name(&format!("autoconfig.{m}"), &mut push, &mut findings);
                web_name(&format!("autodiscover.{m}"), &mut push, &mut findings);
                push(
                    at("_autodiscover._tcp"),
                    "SRV",
                    format!("0 0 443 autodiscover.{m}."),
                    &reason,
                );
                // ManageSieve (RFC 5804): filter and vacation editors find the server.
                push(at("_sieve._tcp"), "SRV", format!("0 1 4190 {mx}."), &reason);
            }
            push(at("_imap._tcp"), "SRV", "0 0 0 .".into(), &reason);
            push(at("_pop3._tcp"), "SRV", "0 0 0 .".into(), &reason);
        }
    }
    apex_caa(inp, only, &mut records);
    records.sort_by(|a, b| (&a.name, &a.kind, &a.value).cmp(&(&b.name, &b.kind, &b.value)));
    records.dedup_by(|a, b| a.name == b.name && a.kind == b.kind && a.value == b.value);
    (records, findings)
}

/// A mail domain's SPF policy: its MX hosts, and the relay's servers when mail leaves through
/// one (RFC 7208 `include:`, the relay's own list).
pub fn spf(relay: Option<&crate::mail::Relay>) -> String {
    match relay.and_then(|r| r.spf_include.as_deref()) {
        Some(d) => format!("v=spf1 mx include:{d} -all"),
        None => "v=spf1 mx -all".into(),
    }
}

/// CAA at each zone apex too, not only on the names ilot serves: a CA looks for CAA at the
/// name, then at each parent, so the apex record covers every other name of the domain (a
/// forgotten subdomain, a typo) with the CA ilot uses. The apexes: every configured forward
/// zone that holds one of the planned names, and every mail domain.
fn apex_caa(inp: &Inputs, only: Option<&str>, records: &mut Vec<Record>) {
    let Some(issuer) = inp.caa_issuer else {
        return;
    };
    let value = match inp.caa_account {
        Some(acct) => format!("0 issue {}", quote(&format!("{issuer}; accounturi={acct}"))),
        None => format!("0 issue {}", quote(issuer)),
    };
    let mut apexes: Vec<String> = inp
        .instances
        .iter()
        .flat_map(mail_domains)
        .map(|m| format!("{m}."))
        .collect();
    for z in &inp.dns.zones {
        let Ok(origin) = zones::origin_of(&z.name) else {
            continue;
        };
        if origin.ends_with(".arpa.") {
            continue;
        }
        if records.iter().any(|r| {
            r.reason.starts_with("instance ")
                && (r.name == origin || r.name.ends_with(&format!(".{origin}")))
        }) {
            apexes.push(origin);
        }
    }
    apexes.sort();
    apexes.dedup();
    for apex in apexes {
        let domain = apex.trim_end_matches('.');
        let wanted = only.is_none_or(|o| domain == o || domain.ends_with(&format!(".{o}")));
        if !wanted || records.iter().any(|r| r.name == apex && r.kind == "CAA") {
            continue;
        }
        records.push(Record {
            name: apex,
            kind: "CAA".into(),
            ttl: DEFAULT_TTL,
            value: value.clone(),
            reason: "zone apex".into(),
        });
    }
}

/// Whether a mail server here accepts mail for `address`: a mailbox, an alias or a catch-all
/// of one of its domains, or a role address once it has somewhere to go (a mailbox, or
/// `[mail] postmaster`: see `MailState::roles`). A mail app ilot does not configure keeps its
/// own role addresses (and ilot knows nothing of its other addresses).
pub fn accepted_here(instances: &[Instance], postmaster: Option<&str>, address: &str) -> bool {
    let Some((_, domain)) = address.rsplit_once('@') else {
        return false;
    };
    instances.iter().any(|inst| {
        mail_domains(inst).iter().any(|m| m == domain)
            && inst
                .mail
                .as_ref()
                .map_or(crate::mail::is_role_address(address), |m| {
                    m.users.contains_key(address)
                        || m.aliases.contains_key(address)
                        || m.aliases.contains_key(&format!("@{domain}"))
                        || (crate::mail::is_role_address(address)
                            && m.role_target(postmaster).is_some())
                })
    })
}

/// The SOA contact of a served zone (RFC 1035 RNAME, as an address), and a warning when no
/// mail server here takes mail for it. `[dns] hostmaster` when set; else hostmaster@ZONE when
/// the zone is a mail domain here; else hostmaster@ the first mail domain here (a reverse zone,
/// a zone without mail); else hostmaster@ZONE, which reaches no one unless the admin makes it.
pub fn soa_contact(
    origin: &str,
    configured: Option<&str>,
    instances: &[Instance],
    postmaster: Option<&str>,
) -> (String, Option<Finding>) {
    let zone = origin.trim_end_matches('.');
    let mut domains: Vec<String> = instances.iter().flat_map(mail_domains).collect();
    domains.sort();
    let contact = match configured {
        Some(c) => c.to_string(),
        None if domains.iter().any(|d| d == zone) => format!("hostmaster@{zone}"),
        None => match domains.first() {
            Some(d) => format!("hostmaster@{d}"),
            None => format!("hostmaster@{zone}"),
        },
    };
    let warning = (!accepted_here(instances, postmaster, &contact)).then(|| Finding {
        domain: zone.to_string(),
        problem: format!(
            "the SOA contact of {origin} is {contact}, and no mail server here accepts mail \
             for it, so mail to the zone's admin may bounce"
        ),
        fix: if configured.is_some() {
            format!("make sure {contact} receives mail, or unset [dns] hostmaster to use hostmaster@ a mail domain of this server")
        } else {
            "set [dns] hostmaster to an address that receives mail, or install a mail server \
             (its domains get hostmaster@)"
                .to_string()
        },
    });
    (contact, warning)
}

/// 203.0.113.10 -> 10.113.0.203.in-addr.arpa.
pub fn reverse_v4(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
}

/// 2001:db8::10 -> 0.1.0.0.(...).8.b.d.0.1.0.0.2.ip6.arpa. (one label per nibble, reversed)
pub fn reverse_v6(ip: Ipv6Addr) -> String {
    let nibbles: Vec<String> = ip
        .octets()
        .iter()
        .flat_map(|b| [b >> 4, b & 15])
        .rev()
        .map(|n| format!("{n:x}"))
        .collect();
    format!("{}.ip6.arpa.", nibbles.join("."))
}

/// "@" -> the domain; "www" -> www.domain.; "host.other.org." stays absolute.
pub(crate) fn absolute(name: &str, domain: &str) -> String {
    match name {
        "@" | "" => format!("{domain}."),
        n if n.ends_with('.') => n.to_string(),
        n => format!("{n}.{domain}."),
    }
}

/// The value as a zone file writes it: targets made absolute, TXT quoted and split.
pub(crate) fn presentation(r: &DnsRecord, domain: &str) -> String {
    let parts: Vec<&str> = r.value.split_whitespace().collect();
    match r.kind.as_str() {
        "TXT" => txt(&r.value),
        "CNAME" | "PTR" | "NS" => absolute(r.value.trim(), domain),
        "MX" => format!("{} {}", parts[0], absolute(parts[1], domain)),
        "SRV" => format!(
            "{} {} {} {}",
            parts[0],
            parts[1],
            parts[2],
            absolute(parts[3], domain)
        ),
        "CAA" => format!(
            "{} {} {}",
            parts[0],
            parts[1],
            quote(parts[2..].join(" ").trim_matches('"'))
        ),
        _ => r.value.trim().to_string(),
    }
}

/// A TXT value: quoted strings of at most 255 bytes (RFC 1035 character-strings).
fn txt(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    while start < bytes.len() || out.is_empty() {
        let mut end = (start + 255).min(bytes.len());
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        out.push(quote(&value[start..end]));
        start = end;
        if start >= bytes.len() {
            break;
        }
    }
    out.join(" ")
}

/// A zone-file quoted string: `"` and `\` escaped (control characters are refused earlier).
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Checks a manifest's DNS record, so nothing malformed or injected reaches a zone.
pub fn check_record(r: &DnsRecord) -> Result<(), String> {
    check(r, false)
}

/// Checks an extra record of a zone in the config: as an app's, plus PTR and NS.
pub fn check_zone_record(r: &DnsRecord) -> Result<(), String> {
    check(r, true)
}

fn check(r: &DnsRecord, zone_types: bool) -> Result<(), String> {
    let name_ok = r.name == "@"
        || r.name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        });
    if !name_ok {
        return Err(format!(
            "dns record name {:?}: use @ or lowercase labels (letters, digits, - and _)",
            r.name
        ));
    }
    if r.value.chars().any(|c| c.is_control()) || r.value.trim().is_empty() {
        return Err(format!(
            "dns record value {:?} is empty or has control characters",
            r.value
        ));
    }
    let target_ok = |t: &str| {
        t == "@"
            || t.trim_end_matches('.').split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    };
    let parts: Vec<&str> = r.value.split_whitespace().collect();
    let ok = match r.kind.as_str() {
        "A" => r.value.trim().parse::<Ipv4Addr>().is_ok(),
        "AAAA" => r.value.trim().parse::<Ipv6Addr>().is_ok(),
        "CNAME" => parts.len() == 1 && target_ok(parts[0]),
        "MX" => parts.len() == 2 && parts[0].parse::<u16>().is_ok() && target_ok(parts[1]),
        "SRV" => {
            parts.len() == 4
                && parts[..3].iter().all(|p| p.parse::<u16>().is_ok())
                && target_ok(parts[3])
        }
        "CAA" => {
            parts.len() >= 3
                && parts[0].parse::<u8>().is_ok()
                && matches!(parts[1], "issue" | "issuewild" | "iodef")
        }
        "TXT" => r.value.len() <= 4000,
        "PTR" | "NS" if zone_types => parts.len() == 1 && target_ok(parts[0]),
        other => {
            return Err(format!(
                "dns record type {other:?} is not one of A, AAAA, CNAME, MX, SRV, CAA, TXT"
            ))
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "dns record {} {} {:?} is malformed",
            r.name, r.kind, r.value
        ))
    }
}

/// A zone-file snippet for the records.
pub fn zone_snippet(records: &[Record]) -> String {
    let mut out = String::from(
        "; DNS records of the host and the apps ilot serves (ilot dns show --format zone).\n",
    );
    for r in records {
        out.push_str(&format!(
            "{}\t{}\tIN\t{}\t{}\n",
            r.name, r.ttl, r.kind, r.value
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: &str, name: &str, value: &str) -> DnsRecord {
        DnsRecord {
            kind: kind.into(),
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn values_are_checked() {
        assert!(check_record(&rec("TXT", "@", "v=spf1 mx -all")).is_ok());
        assert!(check_record(&rec("MX", "@", "10 mail")).is_ok());
        assert!(check_record(&rec("SRV", "_imaps._tcp", "0 1 993 mail")).is_ok());
        assert!(
            check_record(&rec("TXT", "@", "a\nb IN A 1.2.3.4")).is_err(),
            "newline injection"
        );
        assert!(check_record(&rec("TXT", "a b", "x")).is_err());
        assert!(check_record(&rec("MX", "@", "ten mail")).is_err());
        assert!(check_record(&rec("A", "@", "1.2.3")).is_err());
        assert!(check_record(&rec("NS", "@", "x")).is_err());
        assert!(
            check_record(&rec("TXT", &"a".repeat(64), "x")).is_err(),
            "label over 63 bytes"
        );
    }

    /// An installed instance of the built-in demo app, as the planner sees it.
    fn instance(name: &str, domain: &str, aliases: &[&str], mail: bool) -> Instance {
        use crate::state::{PinnedImage, Status};
        let mut manifest = crate::catalog::Catalog::load(&[]).unwrap().apps["hello"].clone();
        manifest.needs.mail = mail;
        Instance {
            mail: None,
            smtp: None,
            mail_client: None,
            name: name.into(),
            app: manifest.name.clone(),
            manifest,
            domain: Some(domain.into()),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            settings: Default::default(),
            secrets: Default::default(),
            images: [(
                "web".to_string(),
                PinnedImage {
                    reference: "r".into(),
                    id: "i".into(),
                },
            )]
            .into(),
            running: true,
            status: Status::Running,
            message: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn caa_follows_the_ca_and_findings_say_what_is_missing() {
        let inst = instance("h", "blog.example.org", &["www.example.org"], false);
        let host = crate::config::HostConfig {
            ipv4: Some("192.0.2.1".parse().unwrap()),
            ..Default::default()
        };
        let dns = crate::config::DnsConfig::default();
        let dkim = Default::default();
        let insts = [inst];
        let mut inputs = Inputs {
            instances: &insts,
            host: &host,
            dns: &dns,
            caa_issuer: Some("letsencrypt.org"),
            caa_account: None,
            acme: true,
            dkim: &dkim,
            postmaster: None,
        };
        let (records, findings) = plan(&inputs, None);
        assert!(findings.is_empty());
        assert!(records.contains(&Record {
            name: "www.example.org.".into(),
            kind: "A".into(),
            ttl: DEFAULT_TTL,
            value: "192.0.2.1".into(),
            reason: "instance h".into()
        }));
        assert!(records.iter().any(|r| r.name == "blog.example.org."
            && r.kind == "CAA"
            && r.value == "0 issue \"letsencrypt.org\""));
        let no_host = Default::default();
        inputs.host = &no_host;
        let (records, findings) = plan(&inputs, Some("example.org"));
        assert!(
            records.iter().all(|r| r.kind == "CAA")
                && findings.len() == 2
                && findings[0].fix.contains("[host] ipv4"),
            "{records:?} {findings:?}"
        );
    }

    #[test]
    fn a_mail_server_gets_every_mail_record() {
        let inst = instance("m", "mail.example.org", &[], true);
        let host = crate::config::HostConfig {
            ipv4: Some("192.0.2.1".parse().unwrap()),
            hostname: Some("mail.example.org".into()),
            ..Default::default()
        };
        let dns = crate::config::DnsConfig::default();
        let dkim = [(
            "example.org".to_string(),
            vec![("ilot1".to_string(), "v=DKIM1; k=rsa; p=AAAA".to_string())],
        )]
        .into();
        let insts = [inst];
        let inputs = Inputs {
            instances: &insts,
            host: &host,
            dns: &dns,
            caa_issuer: None,
            caa_account: None,
            acme: false,
            dkim: &dkim,
            postmaster: Some("admin@example.net"),
        };
        let (records, findings) = plan(&inputs, None);
        assert!(findings.is_empty(), "{findings:?}");
        let has = |n: &str, t: &str, v: &str| {
            records
                .iter()
                .any(|r| r.name == n && r.kind == t && r.value.contains(v))
        };
        assert!(has("example.org.", "MX", "10 mail.example.org."));
        assert!(has("example.org.", "TXT", "v=spf1 mx -all"));
        assert!(has(
            "ilot1._domainkey.example.org.",
            "TXT",
            "v=DKIM1; k=rsa; p=AAAA"
        ));
        assert!(has(
            "_dmarc.example.org.",
            "TXT",
            "v=DMARC1; p=quarantine; rua=mailto:postmaster@example.org"
        ));
        assert!(has("_mta-sts.example.org.", "TXT", "v=STSv1; id="));
        assert!(has("mta-sts.example.org.", "A", "192.0.2.1"));
        assert!(has("_smtp._tls.example.org.", "TXT", "v=TLSRPTv1"));
        assert!(has(
            "_submissions._tcp.example.org.",
            "SRV",
            "0 1 465 mail.example.org."
        ));
        assert!(has(
            "_imaps._tcp.example.org.",
            "SRV",
            "0 1 993 mail.example.org."
        ));
        assert!(has("1.2.0.192.in-addr.arpa.", "PTR", "mail.example.org."));
        assert!(mta_sts_policy("mail.example.org", false).contains("mode: testing"));
    }

    #[test]
    fn reports_and_spf_follow_the_mail_servers_state() {
        let mut inst = instance("m", "mail.example.org", &[], true);
        let mut st = crate::mail::MailState::default();
        st.add_domain("example.org").unwrap();
        st.relay = Some(
            crate::mail::parse_relay("smtp.sendgrid.net:587", "k", "pw".into(), "encrypt", None)
                .unwrap(),
        );
        inst.mail = Some(st);
        let host = crate::config::HostConfig {
            ipv4: Some("192.0.2.1".parse().unwrap()),
            ..Default::default()
        };
        let dns = crate::config::DnsConfig::default();
        let dkim = Default::default();
        let mut insts = [inst];
        let plan_of = |insts: &[Instance]| {
            plan(
                &Inputs {
                    instances: insts,
                    host: &host,
                    dns: &dns,
                    caa_issuer: None,
                    caa_account: None,
                    acme: false,
                    dkim: &dkim,
                    postmaster: None,
                },
                None,
            )
        };
        let (records, findings) = plan_of(&insts);
        let value = |n: &str, t: &str| {
            records
                .iter()
                .find(|r| r.name == n && r.kind == t)
                .map(|r| r.value.clone())
        };
        assert_eq!(
            value("example.org.", "TXT").as_deref(),
            Some("\"v=spf1 mx include:sendgrid.net -all\"")
        );
        // No mailbox yet: postmaster@ would bounce, so no report is asked for.
        assert_eq!(
            value("_dmarc.example.org.", "TXT").as_deref(),
            Some("\"v=DMARC1; p=quarantine\"")
        );
        assert_eq!(value("_smtp._tls.example.org.", "TXT"), None);
        assert!(findings
            .iter()
            .any(|f| f.problem.contains("postmaster@example.org")));
        // Without [host] hostname, the PTR names the mail server (the name it greets with).
        assert_eq!(
            value("1.2.0.192.in-addr.arpa.", "PTR").as_deref(),
            Some("mail.example.org.")
        );
        // A mailbox, and a relay ilot does not know.
        let st = insts[0].mail.as_mut().unwrap();
        st.add_user("bob@example.org", "h".into(), None).unwrap();
        st.relay.as_mut().unwrap().spf_include = None;
        let (records, findings) = plan_of(&insts);
        assert!(records.iter().any(|r| r.name == "_smtp._tls.example.org."
            && r.value.contains("rua=mailto:postmaster@example.org")));
        assert!(
            findings.iter().any(|f| f.fix.contains("--spf-include")),
            "{findings:?}"
        );
    }

    #[test]
    fn caa_at_the_apex_and_soa_contacts_that_take_mail() {
        let insts = [
            instance("m", "mail.example.org", &[], true),
            instance("w", "blog.example.net", &[], false),
        ];
        let host = crate::config::HostConfig {
            ipv4: Some("192.0.2.1".parse().unwrap()),
            ..Default::default()
        };
        let mut dns = crate::config::DnsConfig::default();
        let zone = |name: &str| crate::config::ZoneConfig {
            name: name.into(),
            mode: crate::config::ZoneMode::Serve,
            dnssec: true,
            records: vec![],
            server: None,
            tsig_key: None,
            tsig_algorithm: "hmac-sha256".into(),
            tsig_secret_file: None,
            secondaries: vec![],
            nsec3: true,
        };
        dns.zones = vec![
            zone("example.net"),
            zone("example.com"),
            zone("192.0.2.0/24"),
        ];
        let dkim = Default::default();
        let inputs = Inputs {
            instances: &insts,
            host: &host,
            dns: &dns,
            caa_issuer: Some("letsencrypt.org"),
            caa_account: None,
            acme: true,
            dkim: &dkim,
            postmaster: None,
        };
        let (records, _) = plan(&inputs, None);
        let caa: Vec<&str> = records
            .iter()
            .filter(|r| r.kind == "CAA")
            .map(|r| r.name.as_str())
            .collect();
        // The mail domain's apex and the zone holding the web name; not a zone with nothing
        // of ilot's in it, nor a reverse zone.
        for apex in ["example.org.", "example.net."] {
            assert!(caa.contains(&apex), "{apex}: {caa:?}");
        }
        assert!(!caa.contains(&"example.com."), "{caa:?}");
        assert!(!caa.iter().any(|n| n.ends_with(".arpa.")), "{caa:?}");

        // The mail domain's zone: hostmaster@ itself; any other zone: hostmaster@ the mail
        // domain; nothing to warn about.
        let (c, w) = soa_contact("example.org.", None, &insts, None);
        assert_eq!((c.as_str(), w.is_none()), ("hostmaster@example.org", true));
        let (c, w) = soa_contact("2.0.192.in-addr.arpa.", None, &insts, None);
        assert_eq!((c.as_str(), w.is_none()), ("hostmaster@example.org", true));
        // No mail server: hostmaster@ZONE, with a warning that says what to do.
        let (c, w) = soa_contact("example.net.", None, &insts[1..], None);
        assert_eq!(c, "hostmaster@example.net");
        assert!(w.unwrap().fix.contains("[dns] hostmaster"));
        // A configured contact wins, and is checked.
        let (c, w) = soa_contact("example.net.", Some("me@elsewhere.example"), &insts, None);
        assert_eq!(c, "me@elsewhere.example");
        assert!(w.is_some());
        assert!(accepted_here(&insts, None, "abuse@example.org"));
        assert!(!accepted_here(&insts, None, "bob@example.org"));
    }

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse_v4("203.0.113.10".parse().unwrap()),
            "10.113.0.203.in-addr.arpa."
        );
        let v6 = reverse_v6("2001:db8::10".parse().unwrap());
        assert!(
            v6.starts_with("0.1.0.0.0.0.0.0.") && v6.ends_with(".8.b.d.0.1.0.0.2.ip6.arpa."),
            "{v6}"
        );
        assert_eq!(v6.matches('.').count(), 32 + 2);
    }

    #[test]
    fn presentation_is_zone_safe() {
        assert_eq!(txt(r#"say "hi" \ bye"#), r#""say \"hi\" \\ bye""#);
        let long = "x".repeat(300);
        assert_eq!(
            txt(&long),
            format!("\"{}\" \"{}\"", "x".repeat(255), "x".repeat(45))
        );
        assert_eq!(
            presentation(&rec("MX", "@", "10 mail"), "example.org"),
            "10 mail.example.org."
        );
        assert_eq!(absolute("@", "example.org"), "example.org.");
        assert_eq!(absolute("other.net.", "example.org"), "other.net.");
    }
}
