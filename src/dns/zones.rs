//! Zones: which records go where. The config lists zones (a domain, or an address block for a
//! reverse zone) with a mode each; every planned record belongs to the longest zone that
//! contains its name, and records in no zone are printed for the user to paste.

use super::Record;
use crate::config::{DnsConfig, ZoneConfig, ZoneMode};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The zone's origin, absolute and lowercase: "example.org." for a domain,
/// "113.0.203.in-addr.arpa." for 203.0.113.0/24, nibbles under ip6.arpa. for an IPv6 block.
pub fn origin_of(name: &str) -> Result<String, String> {
    let Some((addr, len)) = name.split_once('/') else {
        crate::names::check_domain(name.trim_end_matches('.')).map_err(|e| e.message)?;
        return Ok(format!("{}.", name.trim_end_matches('.')));
    };
    let bad = || {
        format!(
            "name {name:?}: give a domain, or an address block on a label boundary \
             (IPv4 /8, /16 or /24; IPv6 a multiple of 4, e.g. 2001:db8:1::/48)"
        )
    };
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let len: u32 = len.parse().map_err(|_| bad())?;
    match addr {
        IpAddr::V4(ip) if matches!(len, 8 | 16 | 24) => {
            let o = ip.octets();
            let n = (len / 8) as usize;
            if o[n..].iter().any(|b| *b != 0) {
                return Err(format!("{} (host bits must be zero)", bad()));
            }
            let labels: Vec<String> = o[..n].iter().rev().map(|b| b.to_string()).collect();
            Ok(format!("{}.in-addr.arpa.", labels.join(".")))
        }
        IpAddr::V6(ip) if len.is_multiple_of(4) && (4..=124).contains(&len) => {
            let nibbles: Vec<u8> = ip.octets().iter().flat_map(|b| [b >> 4, b & 15]).collect();
            let n = (len / 4) as usize;
            if nibbles[n..].iter().any(|x| *x != 0) {
                return Err(format!("{} (host bits must be zero)", bad()));
            }
            let labels: Vec<String> = nibbles[..n]
                .iter()
                .rev()
                .map(|x| format!("{x:x}"))
                .collect();
            Ok(format!("{}.ip6.arpa.", labels.join(".")))
        }
        _ => Err(bad()),
    }
}

/// Refuses a zone the daemon could not use: a bad name, a `push` zone without its server or
/// key, a key file others can read, a malformed extra record.
pub fn check_zone_config(z: &ZoneConfig, dns: &DnsConfig) -> Result<(), String> {
    origin_of(&z.name)?;
    for r in &z.records {
        super::check_zone_record(r).map_err(|e| format!("{}: {e}", z.name))?;
    }
    if !z.secondaries.is_empty() && z.mode != ZoneMode::Serve {
        return Err(format!(
            "{}: secondaries are for mode = \"serve\" (ilot is then their primary)",
            z.name
        ));
    }
    match z.mode {
        ZoneMode::Print => {}
        ZoneMode::Serve => {
            if dns.listen.is_empty() {
                return Err(format!(
                    "{}: mode = \"serve\" needs [dns] listen addresses",
                    z.name
                ));
            }
            if !z.secondaries.is_empty() {
                let (Some(_), Some(_)) = (&z.tsig_key, &z.tsig_secret_file) else {
                    return Err(format!(
                        "{}: secondaries need tsig_key and tsig_secret_file: zone transfers \
                         are allowed only when signed with that key",
                        z.name
                    ));
                };
                check_tsig(z)?;
            }
        }
        ZoneMode::Push => {
            let (Some(_), Some(_), Some(_)) = (&z.server, &z.tsig_key, &z.tsig_secret_file) else {
                return Err(format!(
                    "{}: mode = \"push\" needs server (IP:PORT), tsig_key and tsig_secret_file",
                    z.name
                ));
            };
            check_tsig(z)?;
        }
    }
    Ok(())
}

/// The TSIG key's name, algorithm and secret file path (the file is read when used).
fn check_tsig(z: &ZoneConfig) -> Result<(), String> {
    let key = z.tsig_key.as_deref().unwrap_or_default();
    let key_ok = key.len() <= 253
        && key.trim_end_matches('.').split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !key_ok {
        return Err(format!(
            "{}: tsig_key {key:?} is not a key name (letters, digits, '-', '_' and dots)",
            z.name
        ));
    }
    super::push::algorithm(&z.tsig_algorithm).map_err(|e| format!("{}: {e}", z.name))?;
    if let Some(file) = z.tsig_secret_file.as_deref().filter(|f| !f.is_absolute()) {
        return Err(format!(
            "{}: tsig_secret_file {} is not an absolute path",
            z.name,
            file.display()
        ));
    }
    Ok(())
}

/// The longest configured zone that contains `name` (absolute).
pub fn zone_of<'a>(name: &str, zones: &'a [ZoneConfig]) -> Option<(String, &'a ZoneConfig)> {
    zones
        .iter()
        .filter_map(|z| origin_of(&z.name).ok().map(|o| (o, z)))
        .filter(|(o, _)| name == o || name.ends_with(&format!(".{o}")))
        .max_by_key(|(o, _)| o.len())
}

/// A zone's own extra records from the config, made absolute.
pub fn extra_records(origin: &str, z: &ZoneConfig) -> Vec<Record> {
    z.records
        .iter()
        .map(|r| {
            let domain = origin.trim_end_matches('.');
            Record {
                name: super::absolute(&r.name, domain),
                kind: r.kind.clone(),
                ttl: super::DEFAULT_TTL,
                value: super::presentation(r, domain),
                reason: "config".into(),
            }
        })
        .collect()
}

/// Every configured zone with its records (planned ones and the config's extras), and the
/// records that fall in no zone.
pub struct Split<'a> {
    pub zones: BTreeMap<String, (&'a ZoneConfig, Vec<Record>)>,
    pub unzoned: Vec<Record>,
}

pub fn split<'a>(records: &[Record], zones: &'a [ZoneConfig]) -> Split<'a> {
    let mut out = Split {
        zones: BTreeMap::new(),
        unzoned: Vec::new(),
    };
    for z in zones {
        if let Ok(o) = origin_of(&z.name) {
            let extra = extra_records(&o, z);
            out.zones.insert(o, (z, extra));
        }
    }
    for r in records {
        match zone_of(&r.name, zones) {
            Some((o, _)) => out
                .zones
                .get_mut(&o)
                .expect("zone listed")
                .1
                .push(r.clone()),
            None => out.unzoned.push(r.clone()),
        }
    }
    for (_, recs) in out.zones.values_mut() {
        recs.sort_by(|a, b| (&a.name, &a.kind, &a.value).cmp(&(&b.name, &b.kind, &b.value)));
        recs.dedup_by(|a, b| a.name == b.name && a.kind == b.kind && a.value == b.value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert!(origin_of("Example.org").unwrap_err().contains("capital"));
        assert_eq!(origin_of("example.org").unwrap(), "example.org.");
        assert_eq!(
            origin_of("203.0.113.0/24").unwrap(),
            "113.0.203.in-addr.arpa."
        );
        assert_eq!(origin_of("10.0.0.0/8").unwrap(), "10.in-addr.arpa.");
        assert!(origin_of("203.0.113.0/25").is_err());
        assert!(origin_of("203.0.113.1/24")
            .unwrap_err()
            .contains("host bits"));
        assert_eq!(
            origin_of("2001:db8:1::/48").unwrap(),
            "1.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa."
        );
        assert!(origin_of("2001:db8:1::/47").is_err());
        assert!(origin_of("a;b.org").is_err());
    }

    #[test]
    fn longest_zone_wins() {
        let z = |name: &str| ZoneConfig {
            name: name.into(),
            mode: ZoneMode::Print,
            dnssec: true,
            records: vec![],
            server: None,
            tsig_key: None,
            tsig_algorithm: "hmac-sha256".into(),
            tsig_secret_file: None,
            secondaries: vec![],
            nsec3: true,
        };
        let zones = [z("example.org"), z("lab.example.org")];
        assert_eq!(
            zone_of("a.lab.example.org.", &zones).unwrap().0,
            "lab.example.org."
        );
        assert_eq!(zone_of("example.org.", &zones).unwrap().0, "example.org.");
        assert!(zone_of("badexample.org.", &zones).is_none());
    }
}
