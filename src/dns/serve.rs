//! The `serve` mode: ilot is the authoritative server of its zones (hickory-server), forward
//! and reverse, each with a SOA whose serial moves only when the content does (or the zone is
//! re-signed), and signed with DNSSEC (one ECDSA P-256 key per zone, kept 0600 in the state
//! dir; NSEC3 denial by default; signatures dated an hour back). Zones are rebuilt whole and
//! swapped in at once, so a query never sees half a change. Secondaries get a NOTIFY when a
//! serial moves, and only they may transfer a zone (AXFR, or IXFR answered in full), with the
//! zone's TSIG key.

use super::Record;
use crate::error::{Error, Result};
use hickory_net::runtime::{RuntimeProvider, Time, TokioRuntimeProvider, TokioTime};
use hickory_net::xfer::Protocol;
use hickory_proto::dnssec::crypto::EcdsaSigningKey;
use hickory_proto::dnssec::rdata::{DNSKEY, DS};
use hickory_proto::dnssec::{Algorithm, DigestType, DnssecSigner, Nsec3HashAlgorithm, SigningKey};
use hickory_proto::op::{Edns, Header, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::tsig::TsigError;
use hickory_proto::rr::{LowerName, Name, RecordType, TSigResponseContext, TSigner};
use hickory_proto::serialize::binary::BinEncoder;
use hickory_server::dnssec::NxProofKind;
use hickory_server::server::{Request, RequestHandler, RequestInfo, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{
    AuthLookup, AxfrPolicy, Catalog, LookupControlFlow, LookupError, LookupOptions,
    MessageResponseBuilder, Nsec3QueryInfo, ZoneHandler, ZoneTransfer, ZoneType,
};
use rustls::pki_types::PrivatePkcs8KeyDer;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How long signatures stay valid after they are made. Zones are re-signed daily
/// (`daemon::dns::RESIGN_EVERY`), so a served signature always has 13 days or more left: a
/// daemon down for less than that never serves expired signatures, and a validator whose
/// clock is days fast still accepts them. The same 14 days as BIND's and Knot's defaults.
pub const SIGNATURE_VALIDITY: Duration = Duration::from_secs(14 * 86400);

/// Signatures start this far in the past (an hour, as BIND and Knot do), so a validator whose
/// clock is slow, by up to an hour, accepts them from the moment they are served.
pub const INCEPTION_BACKDATE: Duration = Duration::from_secs(3600);

/// Timing values of the SOA: refresh, retry, expire, negative-caching TTL. Expire (10 days)
/// is shorter than what is left of the signatures a secondary last fetched (13 days at
/// least: the zone is re-signed, with a new serial, daily), so a secondary that lost its
/// primary stops answering before its copy's signatures expire, rather than serving bogus data.
const SOA_TIMERS: &str = "3600 900 864000 300";

/// hickory-server takes the signatures' inception from the zone handler's runtime clock; this
/// runtime is tokio's with a clock an hour behind, for the signing only (the in-memory zone
/// uses its runtime for nothing else).
#[derive(Clone, Default)]
pub struct SigningClock(TokioRuntimeProvider);

pub struct BackdatedTime;

#[async_trait::async_trait]
impl Time for BackdatedTime {
    async fn delay_for(duration: Duration) {
        TokioTime::delay_for(duration).await
    }

    async fn timeout<F: 'static + std::future::Future + Send>(
        duration: Duration,
        future: F,
    ) -> std::result::Result<F::Output, std::io::Error> {
        TokioTime::timeout(duration, future).await
    }

    fn current_time() -> u64 {
        TokioTime::current_time().saturating_sub(INCEPTION_BACKDATE.as_secs())
    }
}

impl RuntimeProvider for SigningClock {
    type Handle = <TokioRuntimeProvider as RuntimeProvider>::Handle;
    type Timer = BackdatedTime;
    type Udp = <TokioRuntimeProvider as RuntimeProvider>::Udp;
    type Tcp = <TokioRuntimeProvider as RuntimeProvider>::Tcp;

    fn create_handle(&self) -> Self::Handle {
        self.0.create_handle()
    }

    fn connect_tcp(
        &self,
        server_addr: SocketAddr,
        bind_addr: Option<SocketAddr>,
        timeout: Option<Duration>,
    ) -> std::pin::Pin<
        Box<
            dyn Send + std::future::Future<Output = std::result::Result<Self::Tcp, std::io::Error>>,
        >,
    > {
        self.0.connect_tcp(server_addr, bind_addr, timeout)
    }

    fn bind_udp(
        &self,
        local_addr: SocketAddr,
        server_addr: SocketAddr,
    ) -> std::pin::Pin<
        Box<
            dyn Send + std::future::Future<Output = std::result::Result<Self::Udp, std::io::Error>>,
        >,
    > {
        self.0.bind_udp(local_addr, server_addr)
    }
}

/// Who may transfer a zone: its secondaries (by address; the port is where NOTIFY goes),
/// with its TSIG key.
pub struct Transfers {
    pub secondaries: Vec<SocketAddr>,
    pub signer: TSigner,
}

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
    /// How a signed zone denies a name: "nsec3" or "nsec".
    pub denial: Option<&'static str>,
    /// The SOA contact, as an address.
    pub hostmaster: String,
    /// Secondaries that get NOTIFY and may transfer the zone.
    pub secondaries: Vec<SocketAddr>,
}

/// A zone ready to serve.
pub struct BuiltZone {
    pub origin: Name,
    pub handler: Arc<dyn ZoneHandler>,
    pub info: ZoneInfo,
    pub transfers: Option<Arc<Transfers>>,
}

/// The SOA and NS of a served zone.
pub struct ZoneHead<'a> {
    pub nameservers: &'a [String],
    pub hostmaster: &'a str,
    pub serial: u32,
    /// Signed zones: NSEC3 (no salt, no extra iterations: RFC 9276) rather than NSEC.
    pub nsec3: bool,
    pub transfers: Option<Arc<Transfers>>,
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
    // Denial proofs only for signed zones. NSEC3 per RFC 9276: SHA-1, no extra iterations,
    // no salt (the hash covers the whole name, zone included, so a salt would not stop a
    // dictionary built for this zone; rotating one only costs resolvers), opt-out off.
    let denial = key.is_some().then(|| {
        if head.nsec3 {
            NxProofKind::Nsec3 {
                algorithm: Nsec3HashAlgorithm::SHA1,
                salt: Arc::new([]),
                iterations: 0,
                opt_out: false,
            }
        } else {
            NxProofKind::Nsec
        }
    });
    // The inner zone allows every transfer: `Guarded` decides who gets one.
    let mut zone = InMemoryZoneHandler::<SigningClock>::new(
        name.clone(),
        rrsets,
        ZoneType::Primary,
        AxfrPolicy::AllowAll,
        denial,
    )
    .map_err(|e| Error::failed(format!("zone {origin}: {e}")))?;
    let mut info = ZoneInfo {
        zone: origin.to_string(),
        serial: head.serial,
        records: count,
        ds: None,
        dnskey: None,
        denial: key
            .is_some()
            .then_some(if head.nsec3 { "nsec3" } else { "nsec" }),
        hostmaster: head.hostmaster.to_string(),
        secondaries: head
            .transfers
            .as_ref()
            .map(|t| t.secondaries.clone())
            .unwrap_or_default(),
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
        // Inception is an hour back (the signing clock), expiry SIGNATURE_VALIDITY from now.
        let signer = DnssecSigner::new(
            dnskey,
            Box::new(signing),
            name,
            SIGNATURE_VALIDITY + INCEPTION_BACKDATE,
        );
        zone.add_zone_signing_key_mut(signer)
            .and_then(|_| zone.secure_zone_mut())
            .map_err(|e| Error::failed(format!("zone {origin}: signing failed: {e}")))?;
    }
    Ok(BuiltZone {
        origin: Name::from_ascii(origin).expect("parsed above"),
        handler: Arc::new(Guarded {
            inner: zone,
            transfers: head.transfers.clone(),
        }),
        info,
        transfers: head.transfers.clone(),
    })
}

/// A served zone with its transfer policy: hickory's in-memory zone allows AXFR to everyone
/// or no one, so the secondaries' addresses and TSIG key are checked here. A query signed
/// with the zone's key (a secondary's SOA check) gets a signed answer.
struct Guarded {
    inner: InMemoryZoneHandler<SigningClock>,
    transfers: Option<Arc<Transfers>>,
}

impl Guarded {
    /// The request's TSIG, checked against the zone's key: None when the request is unsigned,
    /// else whether it is good and how to sign the answer (a bad one gets BADKEY/BADSIG/BADTIME).
    fn tsig(&self, request: &Request, now: u64) -> Option<(bool, TSigResponseContext)> {
        let tsig = request.signature.as_deref()?;
        let id = request.metadata.id;
        let Some(signer) = self
            .transfers
            .as_ref()
            .map(|t| &t.signer)
            .filter(|s| s.signer_name() == &tsig.name)
        else {
            return Some((
                false,
                TSigResponseContext::unknown_key(id, now, tsig.name.clone()),
            ));
        };
        match signer.verify_message_byte(request.as_slice(), None, true) {
            Err(_) => Some((
                false,
                TSigResponseContext::bad_signature(id, now, signer.clone()),
            )),
            Ok((_, _, valid)) => {
                let in_time = valid.contains(&now);
                Some((
                    in_time,
                    TSigResponseContext::new(
                        id,
                        now,
                        signer.clone(),
                        tsig.data.mac.clone(),
                        (!in_time).then_some(TsigError::BadTime),
                    ),
                ))
            }
        }
    }
}

#[async_trait::async_trait]
impl ZoneHandler for Guarded {
    fn zone_type(&self) -> ZoneType {
        self.inner.zone_type()
    }

    fn axfr_policy(&self) -> AxfrPolicy {
        AxfrPolicy::AllowSigned
    }

    fn origin(&self) -> &LowerName {
        self.inner.origin()
    }

    async fn lookup(
        &self,
        name: &LowerName,
        rtype: RecordType,
        request_info: Option<&RequestInfo<'_>>,
        lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        self.inner
            .lookup(name, rtype, request_info, lookup_options)
            .await
    }

    async fn search(
        &self,
        request: &Request,
        lookup_options: LookupOptions,
    ) -> (LookupControlFlow<AuthLookup>, Option<TSigResponseContext>) {
        match self.tsig(request, TokioTime::current_time()) {
            None => self.inner.search(request, lookup_options).await,
            Some((false, answer)) => (
                LookupControlFlow::Break(Err(LookupError::from(ResponseCode::NotAuth))),
                Some(answer),
            ),
            Some((true, answer)) => (
                self.inner.search(request, lookup_options).await.0,
                Some(answer),
            ),
        }
    }

    async fn nsec_records(
        &self,
        name: &LowerName,
        lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        self.inner.nsec_records(name, lookup_options).await
    }

    async fn nsec3_records(
        &self,
        info: Nsec3QueryInfo<'_>,
        lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        self.inner.nsec3_records(info, lookup_options).await
    }

    /// Only a listed secondary, over TCP, with the zone's key; everything else is refused.
    async fn zone_transfer(
        &self,
        request: &Request,
        lookup_options: LookupOptions,
        now: u64,
    ) -> Option<(
        std::result::Result<ZoneTransfer, LookupError>,
        Option<TSigResponseContext>,
    )> {
        let refused = || Some((Err(LookupError::from(ResponseCode::Refused)), None));
        let from = request.src().ip().to_canonical();
        let Some(transfers) = &self.transfers else {
            return refused();
        };
        if request.protocol() != Protocol::Tcp
            || !transfers.secondaries.iter().any(|s| s.ip() == from)
        {
            tracing::info!(%from, zone = %self.origin(), "zone transfer refused: not a secondary");
            return refused();
        }
        match self.tsig(request, now) {
            None => {
                tracing::info!(%from, zone = %self.origin(), "zone transfer refused: not signed");
                refused()
            }
            Some((false, answer)) => {
                tracing::info!(%from, zone = %self.origin(), "zone transfer refused: bad TSIG");
                Some((Err(LookupError::from(ResponseCode::NotAuth)), Some(answer)))
            }
            Some((true, answer)) => {
                // A secondary gets the whole signed zone, whatever its DO bit says.
                let mut options = lookup_options;
                options.dnssec_ok = true;
                let (transfer, _) = self.inner.zone_transfer(request, options, now).await?;
                Some((transfer, Some(answer)))
            }
        }
    }

    fn nx_proof_kind(&self) -> Option<&NxProofKind> {
        self.inner.nx_proof_kind()
    }
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
        let transfer = request.metadata.message_type == MessageType::Query
            && request.metadata.op_code == OpCode::Query
            && matches!(
                request.queries.queries(),
                [q] if matches!(q.query_type(), RecordType::AXFR | RecordType::IXFR)
            );
        if transfer {
            return zone_transfer(&catalog, request, T::current_time(), response_handle).await;
        }
        catalog
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

/// AXFR, and IXFR answered with the whole zone (RFC 1995 section 4 allows it: hickory keeps no
/// history of changes), in one message signed with the zone's TSIG key. The catalogue would
/// answer IXFR as a plain query, which secondaries cannot use.
async fn zone_transfer<R: ResponseHandler>(
    catalog: &Catalog,
    request: &Request,
    now: u64,
    mut response_handle: R,
) -> ResponseInfo {
    let query = &request.queries.queries()[0];
    let handler = catalog
        .find(query.name())
        .and_then(|h| h.first().cloned())
        .filter(|h| h.origin() == query.name());
    let mut edns = None;
    if let Some(e) = &request.edns {
        let mut reply = Edns::new();
        reply
            .set_max_payload(e.max_payload().max(512))
            .set_version(0);
        edns = Some(reply);
    }
    let mut meta = Metadata::response_from_request(&request.metadata);
    let (result, signer) = match handler {
        Some(h) => h
            .zone_transfer(request, LookupOptions::default(), now)
            .await
            .unwrap_or((Err(LookupError::from(ResponseCode::NotImp)), None)),
        None => (Err(LookupError::from(ResponseCode::Refused)), None),
    };
    let transfer = match result {
        Ok(t) => {
            meta.response_code = ResponseCode::NoError;
            meta.authoritative = true;
            Some(t)
        }
        Err(LookupError::ResponseCode(code)) => {
            meta.response_code = code;
            None
        }
        Err(_) => {
            meta.response_code = ResponseCode::ServFail;
            None
        }
    };
    let records = || transfer.iter().flat_map(|t| t.iter());
    let build = || {
        MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
            meta,
            records(),
            std::iter::empty(),
            std::iter::empty(),
            std::iter::empty(),
        )
    };
    let mut response = build();
    if let Some(signer) = signer {
        // The MAC covers the message as sent, without the TSIG record itself.
        let mut tbs = Vec::with_capacity(4096);
        let mut encoder = BinEncoder::new(&mut tbs);
        let signature = build()
            .destructive_emit(&mut encoder)
            .map_err(|e| e.to_string())
            .and_then(|_| signer.sign(&tbs).map_err(|e| e.to_string()));
        match signature {
            Ok(sig) => response.set_signature(sig),
            Err(e) => {
                tracing::error!("zone transfer of {}: cannot sign: {e}", query.name());
                meta.response_code = ResponseCode::ServFail;
                return send_failed(meta);
            }
        }
    }
    match response_handle.send_response(response).await {
        Ok(info) => info,
        Err(e) => {
            tracing::error!("zone transfer of {}: {e}", query.name());
            meta.response_code = ResponseCode::ServFail;
            send_failed(meta)
        }
    }
}

fn send_failed(metadata: Metadata) -> ResponseInfo {
    ResponseInfo::from(Header {
        metadata,
        counts: Default::default(),
    })
}

/// Tells each secondary that the zone changed (RFC 1996), signed with the zone's key. UDP, a
/// few tries each; a secondary that misses every one still finds the new serial at its next
/// refresh (the SOA's, an hour).
async fn notify(origin: Name, serial: u32, transfers: Arc<Transfers>) {
    use futures_util::StreamExt;
    use hickory_net::client::Client;
    use hickory_net::udp::UdpClientStream;
    use hickory_net::xfer::DnsHandle;
    use hickory_proto::op::{DnsRequest, DnsRequestOptions, Message, Query};
    for target in &transfers.secondaries {
        let mut done = false;
        for _ in 0..3 {
            let stream = UdpClientStream::builder(*target, TokioRuntimeProvider::default())
                .with_timeout(Some(Duration::from_secs(3)))
                .with_signer(Some(transfers.signer.clone()))
                .build();
            let (client, background) = Client::<TokioRuntimeProvider>::from_sender(stream);
            let task = tokio::spawn(background);
            let mut m = Message::query();
            m.metadata.op_code = OpCode::Notify;
            m.metadata.authoritative = true;
            m.metadata.recursion_desired = false;
            m.add_query(Query::query(origin.clone(), RecordType::SOA));
            let reply = tokio::time::timeout(
                Duration::from_secs(10),
                client
                    .send(DnsRequest::new(m, DnsRequestOptions::default()))
                    .next(),
            )
            .await;
            task.abort();
            match reply {
                Ok(Some(Ok(_))) => {
                    tracing::info!(zone = %origin, serial, secondary = %target, "NOTIFY acknowledged");
                    done = true;
                    break;
                }
                Ok(Some(Err(e))) => {
                    tracing::warn!(zone = %origin, secondary = %target, "NOTIFY refused: {e}");
                    break;
                }
                _ => tokio::time::sleep(Duration::from_secs(2)).await,
            }
        }
        if !done {
            tracing::warn!(zone = %origin, serial, secondary = %target, "NOTIFY not acknowledged");
        }
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

    /// Serves exactly these zones from now on, and sends NOTIFY to the secondaries of each
    /// zone whose serial moved (or that this process had not served yet).
    pub fn load(&self, zones: Vec<BuiltZone>) {
        let before: std::collections::HashMap<String, u32> = self
            .zones()
            .into_iter()
            .map(|z| (z.zone, z.serial))
            .collect();
        let mut catalog = Catalog::new();
        let mut infos = Vec::new();
        let mut notifies = Vec::new();
        for z in zones {
            if let Some(t) = z.transfers.clone() {
                if before.get(&z.info.zone) != Some(&z.info.serial) {
                    notifies.push((z.origin.clone(), z.info.serial, t));
                }
            }
            catalog.upsert(z.origin.into(), vec![z.handler]);
            infos.push(z.info);
        }
        *self.catalog.write().expect("dns catalog lock") = Arc::new(catalog);
        *self.zones.write().expect("dns zones lock") = infos;
        // After the swap, so a secondary that asks at once gets the new zone.
        for (origin, serial, t) in notifies {
            tokio::spawn(notify(origin, serial, t));
        }
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
            nsec3: true,
            transfers: None,
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

        // Signatures start an hour back and end SIGNATURE_VALIDITY from now; denial is NSEC3
        // with no salt and no extra iterations.
        let now = TokioTime::current_time();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let lookup = |name: &str, kind: RecordType| {
            let mut options = LookupOptions::default();
            options.dnssec_ok = true;
            let found = rt.block_on(z.handler.lookup(
                &LowerName::from(Name::from_ascii(name).unwrap()),
                kind,
                None,
                options,
            ));
            match found.map_result() {
                Some(Ok(l)) => l.iter().cloned().collect::<Vec<_>>(),
                other => panic!("{name} {kind}: {:?}", other.map(|r| r.is_ok())),
            }
        };
        let soa = lookup("example.org.", RecordType::SOA);
        let sigs: Vec<_> = soa
            .iter()
            .filter_map(|r| match &r.data {
                hickory_proto::rr::RData::DNSSEC(
                    hickory_proto::dnssec::rdata::DNSSECRData::RRSIG(sig),
                ) => Some(sig.input().clone()),
                _ => None,
            })
            .collect();
        assert_eq!(sigs.len(), 1, "{soa:?}");
        let inception = u64::from(sigs[0].sig_inception.get());
        let expiration = u64::from(sigs[0].sig_expiration.get());
        let hour = INCEPTION_BACKDATE.as_secs();
        assert!(
            inception + hour <= now + 5 && inception + hour + 5 >= now,
            "inception {inception} is not an hour before {now}"
        );
        assert!(
            expiration.abs_diff(now + SIGNATURE_VALIDITY.as_secs()) <= 5,
            "expiration {expiration}, now {now}"
        );
        let params = lookup("example.org.", RecordType::NSEC3PARAM);
        let text: Vec<String> = params
            .iter()
            .filter(|r| r.record_type() == RecordType::NSEC3PARAM)
            .map(|r| r.data.to_string())
            .collect();
        assert_eq!(
            text,
            ["1 0 0 -"],
            "SHA-1, no opt-out, 0 iterations, no salt"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
