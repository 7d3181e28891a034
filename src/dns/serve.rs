//! The `serve` mode: ilot is the authoritative server of its zones (hickory-server), forward
//! and reverse, each with a SOA whose serial moves only when the content does, and signed with
//! DNSSEC (one ECDSA P-256 key per zone, kept 0600 in the state dir). Zones are rebuilt whole
//! and swapped in at once, so a query never sees half a change.

use super::Record;
use crate::error::{Error, Result};
use hickory_proto::dnssec::crypto::EcdsaSigningKey;
use hickory_proto::dnssec::rdata::{DNSKEY, DS};
use hickory_proto::dnssec::{Algorithm, DigestType, DnssecSigner, SigningKey};
use hickory_proto::rr::Name;
use hickory_server::dnssec::NxProofKind;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use rustls::pki_types::PrivatePkcs8KeyDer;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How long signatures stay valid. Zones are re-signed daily, so a daemon that is down for
/// less than this never serves expired signatures.
pub const SIGNATURE_VALIDITY: Duration = Duration::from_secs(8 * 86400);

/// Timing values of the SOA: refresh, retry, expire, negative-caching TTL.
const SOA_TIMERS: &str = "3600 900 1209600 300";

/// What one zone looks like once built, for `ilot dns show` and `ilot status`.
#[derive(Debug, Clone, Serialize)]
pub struct ZoneInfo {
    pub zone: String,
    pub serial: u32,
    pub records: usize,
    /// The DS record to give the parent zone (at the registrar) so resolvers validate.
    pub ds: Option<String>,
    /// The zone's key, for a resolver's trust anchor.
    pub dnskey: Option<String>,
}

/// A zone ready to serve.
pub struct BuiltZone {
    pub origin: Name,
    pub handler: Arc<dyn ZoneHandler>,
    pub info: ZoneInfo,
}

/// The SOA and NS of a served zone.
pub struct ZoneHead<'a> {
    pub nameservers: &'a [String],
    pub hostmaster: &'a str,
    pub serial: u32,
}

/// The zone text that is hashed for the serial: everything but the SOA.
pub fn content_text(origin: &str, nameservers: &[String], records: &[Record]) -> String {
    let mut text = String::new();
    for ns in nameservers {
        text.push_str(&format!(
            "{origin} 3600 IN NS {}.\n",
            ns.trim_end_matches('.')
        ));
    }
    for r in records {
        text.push_str(&format!("{} {} IN {} {}\n", r.name, r.ttl, r.kind, r.value));
    }
    text
}

/// The next serial (YYYYMMDDnn) when the content changed: today's first, or one more than the
/// last, whichever is greater (RFC 1982 arithmetic is never needed: it only grows).
pub fn next_serial(previous: Option<u32>, today: u32) -> u32 {
    let first = today.saturating_mul(100);
    previous.map_or(first, |p| first.max(p.wrapping_add(1)))
}

/// Builds one zone: parses its text with hickory's zone parser (the same presentation format
/// `ilot dns show --format zone` prints), then signs it when a key is given.
pub fn build_zone(
    origin: &str,
    head: &ZoneHead,
    records: &[Record],
    key: Option<&Path>,
) -> Result<BuiltZone> {
    let name =
        Name::from_ascii(origin).map_err(|e| Error::bad_input(format!("zone {origin}: {e}")))?;
    let hostmaster = head.hostmaster.replacen('@', ".", 1);
    // hickory's signing bumps the serial once; start one lower so the served serial is ours.
    let soa_serial = if key.is_some() {
        head.serial.wrapping_sub(1)
    } else {
        head.serial
    };
    let primary = head
        .nameservers
        .first()
        .map(|n| format!("{}.", n.trim_end_matches('.')))
        .unwrap_or_else(|| format!("ns.{origin}"));
    let text = format!(
        "$ORIGIN {origin}\n{origin} 3600 IN SOA {primary} {}. {soa_serial} {SOA_TIMERS}\n{}",
        hostmaster.trim_end_matches('.'),
        content_text(origin, head.nameservers, records)
    );
    let (_, rrsets) = hickory_proto::serialize::txt::Parser::new(text, None, Some(name.clone()))
        .parse()
        .map_err(|e| Error::failed(format!("zone {origin}: cannot be built: {e}")))?;
    let count = rrsets
        .values()
        .map(|s| s.records_without_rrsigs().count())
        .sum();
    let mut zone = InMemoryZoneHandler::<hickory_server::net::runtime::TokioRuntimeProvider>::new(
        name.clone(),
        rrsets,
        ZoneType::Primary,
        AxfrPolicy::Deny,
        // Denial proofs only for signed zones.
        key.is_some().then_some(NxProofKind::Nsec),
    )
    .map_err(|e| Error::failed(format!("zone {origin}: {e}")))?;
    let mut info = ZoneInfo {
        zone: origin.to_string(),
        serial: head.serial,
        records: count,
        ds: None,
        dnskey: None,
    };
    if let Some(path) = key {
        let signing = load_or_create_key(path)?;
        let public = signing
            .to_public_key()
            .map_err(|e| Error::failed(format!("zone {origin}: DNSSEC key: {e}")))?;
        let dnskey = DNSKEY::from_key(&public);
        let ds = DS::from_key(&public, &name, DigestType::SHA256)
            .map_err(|e| Error::failed(format!("zone {origin}: DS: {e}")))?;
        info.ds = Some(format!("{origin} IN DS {ds}"));
        info.dnskey = Some(format!("{origin} IN DNSKEY {dnskey}"));
        let signer = DnssecSigner::new(dnskey, Box::new(signing), name, SIGNATURE_VALIDITY);
        zone.add_zone_signing_key_mut(signer)
            .and_then(|_| zone.secure_zone_mut())
            .map_err(|e| Error::failed(format!("zone {origin}: signing failed: {e}")))?;
    }
    Ok(BuiltZone {
        origin: Name::from_ascii(origin).expect("parsed above"),
        handler: Arc::new(zone),
        info,
    })
}

/// The zone's signing key: PKCS#8, created once (0600, written then renamed into place).
fn load_or_create_key(path: &Path) -> Result<EcdsaSigningKey> {
    let algorithm = Algorithm::ECDSAP256SHA256;
    let der = match std::fs::read(path) {
        Ok(der) => der,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = EcdsaSigningKey::generate_pkcs8(algorithm)
                .map_err(|e| Error::failed(format!("cannot generate a DNSSEC key: {e}")))?;
            crate::state::write_private(path, key.secret_pkcs8_der())?;
            key.secret_pkcs8_der().to_vec()
        }
        Err(e) => {
            return Err(Error::failed(format!(
                "cannot read the DNSSEC key {}: {e}",
                path.display()
            )))
        }
    };
    EcdsaSigningKey::from_pkcs8(&PrivatePkcs8KeyDer::from(der), algorithm).map_err(|e| {
        Error::failed(format!(
            "the DNSSEC key {} is unusable: {e}",
            path.display()
        ))
        .hint("move it away to have a new key generated, then give the new DS to the parent zone")
    })
}

/// Where a zone's DNSSEC key lives.
pub fn key_path(state_dir: &Path, origin: &str) -> PathBuf {
    state_dir
        .join("dns")
        .join(format!("{}.dnssec.pk8", origin.trim_end_matches('.')))
}

/// The running server: its catalogue of zones is replaced whole on every change.
pub struct Server {
    catalog: Arc<RwLock<Arc<Catalog>>>,
    /// The addresses actually bound (a port 0 in the config becomes a real port).
    pub addrs: Vec<SocketAddr>,
    zones: RwLock<Vec<ZoneInfo>>,
}

struct Handler(Arc<RwLock<Arc<Catalog>>>);

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let catalog = self.0.read().expect("dns catalog lock").clone();
        catalog
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

impl Server {
    /// Binds UDP and TCP on every address (the same port for both) and starts answering.
    pub async fn start(listen: &[SocketAddr]) -> Result<Arc<Server>> {
        let catalog = Arc::new(RwLock::new(Arc::new(Catalog::new())));
        let mut server = hickory_server::Server::new(Handler(catalog.clone()));
        let mut addrs = Vec::new();
        for addr in listen {
            let udp = tokio::net::UdpSocket::bind(addr).await.map_err(|e| {
                Error::failed(format!("DNS server: cannot listen on {addr}/udp: {e}")).hint(
                    "another DNS server may hold the port (systemd-resolved, dnsmasq): stop it, \
                     or change [dns] listen",
                )
            })?;
            let bound = udp
                .local_addr()
                .map_err(|e| Error::failed(format!("DNS server: {addr}: {e}")))?;
            let tcp = tokio::net::TcpListener::bind(bound).await.map_err(|e| {
                Error::failed(format!("DNS server: cannot listen on {bound}/tcp: {e}"))
                    .hint("change [dns] listen")
            })?;
            server.register_socket(udp);
            server.register_listener(tcp, Duration::from_secs(10), 64 * 1024);
            addrs.push(bound);
        }
        // The server runs until the process exits; its task owns it.
        tokio::spawn(async move {
            if let Err(e) = server.block_until_done().await {
                tracing::error!("DNS server stopped: {e}");
            }
        });
        tracing::info!(?addrs, "DNS server listening");
        Ok(Arc::new(Server {
            catalog,
            addrs,
            zones: RwLock::new(Vec::new()),
        }))
    }

    /// Serves exactly these zones from now on.
    pub fn load(&self, zones: Vec<BuiltZone>) {
        let mut catalog = Catalog::new();
        let mut infos = Vec::new();
        for z in zones {
            catalog.upsert(z.origin.into(), vec![z.handler]);
            infos.push(z.info);
        }
        *self.catalog.write().expect("dns catalog lock") = Arc::new(catalog);
        *self.zones.write().expect("dns zones lock") = infos;
    }

    pub fn zones(&self) -> Vec<ZoneInfo> {
        self.zones.read().expect("dns zones lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_only_grow() {
        assert_eq!(next_serial(None, 20261121), 2026112100);
        assert_eq!(next_serial(Some(2026112100), 20261121), 2026112101);
        assert_eq!(next_serial(Some(2026112107), 20261122), 2026112200);
        // A clock set back never lowers the serial.
        assert_eq!(next_serial(Some(2026112205), 20261121), 2026112206);
    }

    #[test]
    fn a_zone_is_built_and_signed() {
        let dir = std::env::temp_dir().join(format!("ilot-zone-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rec = |name: &str, kind: &str, value: &str| Record {
            name: name.into(),
            kind: kind.into(),
            ttl: 3600,
            value: value.into(),
            reason: "t".into(),
        };
        let head = ZoneHead {
            nameservers: &["ns1.example.org".to_string()],
            hostmaster: "hostmaster@example.org",
            serial: 2026112103,
        };
        let records = [
            rec("example.org.", "A", "192.0.2.1"),
            rec("example.org.", "TXT", "\"v=spf1 mx -all\""),
            rec("ns1.example.org.", "A", "192.0.2.1"),
        ];
        let key = dir.join("k.pk8");
        let z = build_zone("example.org.", &head, &records, Some(&key)).unwrap();
        assert_eq!(z.info.serial, 2026112103);
        assert!(z.info.ds.as_deref().unwrap().contains(" DS "));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // The same key is used again.
        let again = build_zone("example.org.", &head, &records, Some(&key)).unwrap();
        assert_eq!(again.info.ds, z.info.ds);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
