//! The `push` mode: RFC 2136 dynamic updates, signed with TSIG, to an external primary (BIND,
//! Knot, PowerDNS). ilot remembers what it pushed to each zone, and every change is a minimal
//! diff of that: one UPDATE message (atomic on the server), that adds what is new and deletes,
//! record by record, only what ilot itself added. Records someone else created are never
//! touched, even when ilot wants the same record: it is then noted as theirs, not ilot's.

use super::Record;
use crate::config::ZoneConfig;
use crate::error::{Error, Result};
use futures_util::StreamExt;
use hickory_net::client::Client;
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::xfer::{DnsHandle, DnsMultiplexer};
use hickory_proto::op::{
    DnsRequest, DnsRequestOptions, Message, OpCode, Query, ResponseCode, UpdateMessage,
};
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::{DNSClass, Name, RecordType, TSigner};
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

/// What one push did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Pushed {
    pub zone: String,
    pub server: String,
    pub added: Vec<Record>,
    pub removed: Vec<Record>,
    /// Records ilot wants that were already there, created by someone else: left alone.
    pub foreign: Vec<Record>,
    /// What ilot owns in the zone after this push (stored for the next diff).
    #[serde(skip)]
    pub owned: Vec<Record>,
}

pub fn algorithm(name: &str) -> std::result::Result<TsigAlgorithm, String> {
    match name {
        "hmac-sha256" => Ok(TsigAlgorithm::HmacSha256),
        "hmac-sha384" => Ok(TsigAlgorithm::HmacSha384),
        "hmac-sha512" => Ok(TsigAlgorithm::HmacSha512),
        other => Err(format!(
            "tsig_algorithm {other:?}: use hmac-sha256, hmac-sha384 or hmac-sha512"
        )),
    }
}

/// The TSIG secret from its file: a bare base64 secret, or a BIND key file as tsig-keygen
/// writes it (`secret "…";`). The file must not be readable by others.
pub fn read_secret(path: &std::path::Path) -> Result<Vec<u8>> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::bad_input(format!(
            "cannot read the TSIG secret {}: {e}",
            path.display()
        ))
        .hint("check [[dns.zones]] tsig_secret_file")
    })?;
    if meta.mode() & 0o077 != 0 {
        return Err(Error::bad_input(format!(
            "the TSIG secret {} is readable by other users",
            path.display()
        ))
        .hint(format!("chmod 600 {}", path.display())));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::bad_input(format!("cannot read {}: {e}", path.display())))?;
    let b64 = match text.find("secret") {
        Some(i) => text[i..].split('"').nth(1).unwrap_or("").to_string(),
        None => text.split_whitespace().collect::<String>(),
    };
    data_encoding::BASE64
        .decode(b64.trim().as_bytes())
        .ok()
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            Error::bad_input(format!(
                "the TSIG secret in {} is not base64 (or a BIND key file)",
                path.display()
            ))
            .hint("generate one with `tsig-keygen -a hmac-sha256 NAME` and give ilot the same key as the server")
        })
}

/// The zone's TSIG key (name, algorithm, secret from its 0600 file), for pushes and for the
/// transfers and NOTIFYs of served zones with secondaries.
pub fn tsig_signer(zone: &ZoneConfig) -> Result<TSigner> {
    let (Some(key_name), Some(file)) = (zone.tsig_key.as_deref(), zone.tsig_secret_file.as_deref())
    else {
        return Err(Error::bad_input(format!(
            "zone {}: no tsig_key and tsig_secret_file",
            zone.name
        ))
        .hint("add them to the zone's [[dns.zones]] entry"));
    };
    let key = read_secret(file)?;
    TSigner::new(
        key,
        algorithm(&zone.tsig_algorithm).map_err(Error::bad_input)?,
        Name::from_ascii(key_name).map_err(|e| Error::bad_input(format!("tsig_key: {e}")))?,
        300,
    )
    .map_err(|e| Error::bad_input(format!("TSIG key {key_name}: {e}")))
}

/// Parses presentation records into wire records (hickory's zone-file parser).
pub fn to_wire(origin: &str, records: &[Record]) -> Result<Vec<hickory_proto::rr::Record>> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let name =
        Name::from_ascii(origin).map_err(|e| Error::bad_input(format!("zone {origin}: {e}")))?;
    let text: String = records
        .iter()
        .map(|r| format!("{} {} IN {} {}\n", r.name, r.ttl, r.kind, r.value))
        .collect();
    let (_, sets) = hickory_proto::serialize::txt::Parser::new(text, None, Some(name))
        .parse()
        .map_err(|e| Error::failed(format!("zone {origin}: {e}")))?;
    Ok(sets
        .values()
        .flat_map(|s| s.records_without_rrsigs().cloned())
        .collect())
}

struct Session {
    client: Client<TokioRuntimeProvider>,
    server: SocketAddr,
    origin: Name,
}

impl Session {
    async fn connect(zone: &ZoneConfig, origin: &str) -> Result<Session> {
        let server = zone.server.expect("checked with the config");
        let signer = tsig_signer(zone)?;
        let (connect, handle) =
            TcpClientStream::new(server, None, Some(TIMEOUT), TokioRuntimeProvider::default());
        let stream = tokio::time::timeout(TIMEOUT, connect)
            .await
            .map_err(|_| unreachable_server(server, "no answer"))?
            .map_err(|e| unreachable_server(server, &e.to_string()))?;
        let mux = DnsMultiplexer::new(stream, handle)
            .with_timeout(TIMEOUT)
            .with_signer(signer);
        let (client, background) = Client::<TokioRuntimeProvider>::from_sender(mux);
        tokio::spawn(background);
        Ok(Session {
            client,
            server,
            origin: Name::from_ascii(origin).map_err(|e| Error::bad_input(e.to_string()))?,
        })
    }

    /// One request, one answer. The outer error is the server not answering; the inner one is
    /// the answer hickory turned into an error (a response code, a TSIG failure).
    async fn exchange(
        &self,
        message: Message,
    ) -> Result<std::result::Result<Message, hickory_net::NetError>> {
        let request = DnsRequest::new(message, DnsRequestOptions::default());
        let reply = tokio::time::timeout(TIMEOUT, self.client.send(request).next())
            .await
            .map_err(|_| unreachable_server(self.server, "no answer"))?
            .ok_or_else(|| unreachable_server(self.server, "connection closed"))?;
        Ok(reply.map(|r| r.into_message()))
    }

    fn refused(&self, what: &str) -> Error {
        let lower = what.to_lowercase();
        // A server that rejects the key answers BADKEY/BADSIG, with a truncated or missing MAC.
        let what =
            if lower.contains("hmac") || lower.contains("tsig") || lower.contains("signature") {
                "the server rejected ilot's TSIG signature (BADSIG or BADKEY)"
            } else {
                what
            };
        let hint = if what.contains("NOTAUTH") || what.contains("NotAuth") || what.contains("TSIG")
        {
            "the server did not accept ilot's TSIG key: check tsig_key, tsig_algorithm and the \
             secret against the server's key (and that both clocks are right)"
        } else if what.contains("REFUSED") || what.contains("Refused") {
            "the server refuses updates from this key for this zone: allow it (BIND: \
             update-policy or allow-update { key NAME; };)"
        } else if what.contains("NOTZONE") || what.contains("NotZone") {
            "the server is not the primary of this zone: check [[dns.zones]] name and server"
        } else {
            "check the server's log"
        };
        Error::failed(format!(
            "DNS update of {} at {} failed: {what}; nothing was changed",
            self.origin, self.server
        ))
        .hint(hint)
    }

    /// The records the server holds at `name`/`kind` (the query is signed too).
    async fn existing(
        &self,
        name: &Name,
        kind: RecordType,
    ) -> Result<Vec<hickory_proto::rr::Record>> {
        let mut m = Message::query();
        m.add_query(Query::query(name.clone(), kind));
        match self.exchange(m).await? {
            Ok(r) => Ok(r
                .answers
                .into_iter()
                .filter(|a| a.record_type() == kind)
                .collect()),
            // NXDOMAIN or no such record: nothing there.
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(self.refused(&e.to_string())),
        }
    }
}

fn unreachable_server(server: SocketAddr, why: &str) -> Error {
    Error::failed(format!(
        "DNS server {server} cannot be reached: {why}; nothing was changed"
    ))
    .hint("check [[dns.zones]] server and that the server listens on TCP")
}

/// Brings the zone to `desired`, given what ilot pushed before (`owned`).
pub async fn push(
    zone: &ZoneConfig,
    origin: &str,
    desired: &[Record],
    owned: &[Record],
    dry_run: bool,
) -> Result<Pushed> {
    let same = |a: &Record, b: &Record| a.name == b.name && a.kind == b.kind && a.value == b.value;
    let session = Session::connect(zone, origin).await?;
    let mut out = Pushed {
        zone: origin.to_string(),
        server: session.server.to_string(),
        ..Default::default()
    };
    let removed: Vec<Record> = owned
        .iter()
        .filter(|o| !desired.iter().any(|d| same(d, o)))
        .cloned()
        .collect();
    // Already on the server, and not ours: someone else's record. Leave it, never own it.
    // The questions go 16 at a time on the one connection (200 in a row cost 200 round trips).
    let candidates: Vec<Record> = desired
        .iter()
        .filter(|d| !owned.iter().any(|o| same(d, o)))
        .cloned()
        .collect();
    let session_ref = &session;
    let answers: Vec<Result<(Record, bool)>> = futures_util::stream::iter(candidates)
        .map(move |d: Record| async move {
            let wire = to_wire(origin, std::slice::from_ref(&d))?;
            let Some(w) = wire.first() else {
                return Ok((d, false));
            };
            let there = session_ref.existing(&w.name, w.record_type()).await?;
            let foreign = there.iter().any(|t| t.data == w.data);
            Ok((d, foreign))
        })
        .buffered(16)
        .collect()
        .await;
    let mut added = Vec::new();
    for a in answers {
        let (d, foreign) = a?;
        if foreign {
            out.foreign.push(d);
        } else {
            added.push(d);
        }
    }
    out.owned = owned
        .iter()
        .filter(|o| desired.iter().any(|d| same(d, o)))
        .chain(added.iter())
        .cloned()
        .collect();
    out.added = added;
    out.removed = removed;
    if dry_run || (out.added.is_empty() && out.removed.is_empty()) {
        return Ok(out);
    }
    let mut m = Message::query();
    m.metadata.op_code = OpCode::Update;
    m.metadata.recursion_desired = false;
    let mut zq = Query::query(session.origin.clone(), RecordType::SOA);
    zq.set_query_class(DNSClass::IN);
    m.add_zone(zq);
    for mut r in to_wire(origin, &out.removed)? {
        // RFC 2136 2.5.4: delete this one RR (class NONE, TTL 0).
        r.dns_class = DNSClass::NONE;
        r.ttl = 0;
        m.add_update(r);
    }
    for r in to_wire(origin, &out.added)? {
        m.add_update(r);
    }
    let reply = session
        .exchange(m)
        .await?
        .map_err(|e| session.refused(&e.to_string()))?;
    if reply.metadata.response_code != ResponseCode::NoError {
        return Err(session.refused(&format!("{:?}", reply.metadata.response_code)));
    }
    Ok(out)
}
