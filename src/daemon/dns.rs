//! The DNS subsystem in the daemon: computes the records from the desired state, keeps the
//! served zones current (serials, signatures), pushes the pushed ones, and diagnoses.

use super::Daemon;
use crate::config::{ZoneConfig, ZoneMode};
use crate::dns::{self, serve, Finding, Record};
use crate::error::{Error, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Served zones are re-signed this often (signatures last `serve::SIGNATURE_VALIDITY`).
pub const RESIGN_EVERY: std::time::Duration = std::time::Duration::from_secs(86400);
/// How often the daemon checks for zones to re-sign and failed pushes to retry.
pub const RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// A served zone as last built: its content hash and serial, when it was signed, and the zone.
pub struct Built {
    hash: String,
    serial: u32,
    at: u64,
    handler: Arc<dyn hickory_server::zone_handler::ZoneHandler>,
    info: serve::ZoneInfo,
    transfers: Option<Arc<serve::Transfers>>,
}
pub type BuiltCache = std::collections::HashMap<String, Built>;

impl Daemon {
    /// Every record the host and its apps need, and what could not be computed.
    pub(super) fn dns_records(&self, only: Option<&str>) -> (Vec<Record>, Vec<Finding>) {
        self.dns_records_for(&self.instances_snapshot(), only)
    }

    /// The records these instances (installed or not) and the host need.
    pub(super) fn dns_records_for(
        &self,
        instances: &[crate::state::Instance],
        only: Option<&str>,
    ) -> (Vec<Record>, Vec<Finding>) {
        let mut dkim = BTreeMap::new();
        let mut findings = Vec::new();
        for m in instances.iter().flat_map(dns::mail_domains) {
            match crate::mail::keys(&self.config.daemon.state_dir, &m) {
                Ok(k) => {
                    dkim.insert(m, k);
                }
                Err(e) => findings.push(Finding {
                    domain: m,
                    problem: format!("no DKIM key: {e}"),
                    fix: "check the state directory's permissions and disk space".into(),
                }),
            }
        }
        // Bind CAA to the ACME account when the CAA issuer is the configured ACME CA.
        let caa_account = self
            .certs
            .as_ref()
            .filter(|_| self.config.acme.enabled)
            .and_then(|c| c.account_url());
        let inputs = dns::Inputs {
            caa_account: caa_account.as_deref(),
            instances,
            host: &self.config.host,
            dns: &self.config.dns,
            caa_issuer: self
                .config
                .dns
                .caa
                .as_deref()
                .or(self.config.acme.caa_issuer()),
            acme: self.config.acme.enabled,
            dkim: &dkim,
            postmaster: self.config.mail.postmaster.as_deref(),
        };
        let (mut records, mut more) = dns::plan(&inputs, only);
        findings.append(&mut more);
        records.extend(self.tlsa_records(instances, only));
        (records, findings)
    }

    /// DANE for each mail server (RFC 7672): `_25._tcp.MX TLSA 3 1 1`, the SHA-256 of the
    /// public key of the certificate the mail server has now. Only in a zone ilot serves and
    /// signs: senders ignore TLSA without DNSSEC, and ilot must be the one that changes the
    /// record when the certificate does (the minute tick rebuilds served zones). Certificates
    /// from the CA keep their key across renewals (src/certs), so the record stays true.
    fn tlsa_records(
        &self,
        instances: &[crate::state::Instance],
        only: Option<&str>,
    ) -> Vec<Record> {
        let mut out = Vec::new();
        for inst in instances
            .iter()
            .filter(|i| i.manifest.needs.mail && i.manifest.needs.tls.is_some())
        {
            let Some(mx) = inst.domain.as_deref() else {
                continue;
            };
            let name = format!("_25._tcp.{mx}.");
            let signed = dns::zones::zone_of(&name, &self.config.dns.zones)
                .is_some_and(|(_, z)| z.mode == ZoneMode::Serve && z.dnssec);
            let wanted = only.is_none_or(|o| mx == o || mx.ends_with(&format!(".{o}")));
            if !signed || !wanted {
                continue;
            }
            let Some(chain) = crate::plan::tls_dir(&inst.name)
                .and_then(|d| std::fs::read_to_string(d.join("fullchain.pem")).ok())
            else {
                continue;
            };
            if let Some(hash) = crate::certs::spki_sha256(&chain) {
                out.push(Record {
                    name,
                    kind: "TLSA".into(),
                    ttl: dns::DEFAULT_TTL,
                    value: format!("3 1 1 {hash}"),
                    reason: format!("instance {}", inst.name),
                });
            }
        }
        out
    }

    pub(super) fn dns_view(&self, only: Option<&str>) -> Result<Value> {
        if let Some(d) = only {
            crate::names::check_domain(d)?;
        }
        let (records, mut findings) = self.dns_records(only);
        let split = dns::zones::split(&records, &self.config.dns.zones);
        findings.extend(self.contact_warnings(only));
        let served: BTreeMap<String, serve::ZoneInfo> = self
            .dns_server
            .as_ref()
            .map(|s| s.zones().into_iter().map(|z| (z.zone.clone(), z)).collect())
            .unwrap_or_default();
        let mut rows = Vec::new();
        let mut zones = Vec::new();
        let mut all = Vec::new();
        for (origin, (zone, recs)) in &split.zones {
            let wanted = |r: &Record| {
                only.is_none_or(|o| {
                    let n = r.name.trim_end_matches('.');
                    n == o || n.ends_with(&format!(".{o}"))
                })
            };
            for r in recs.iter().filter(|r| wanted(r)) {
                rows.push(record_row(r, origin, &zone.mode));
                all.push(r.clone());
            }
            let info = served.get(origin);
            zones.push(json!({
                "zone": origin,
                "mode": zone.mode,
                "serial": info.map(|i| i.serial),
                "ds": info.and_then(|i| i.ds.clone()),
                "dnskey": info.and_then(|i| i.dnskey.clone()),
                "denial": info.and_then(|i| i.denial),
                "hostmaster": info.map(|i| i.hostmaster.clone()),
                "secondaries": zone.secondaries,
                "server": zone.server,
            }));
        }
        for r in &split.unzoned {
            rows.push(record_row(r, "", &ZoneMode::Print));
            all.push(r.clone());
        }
        Ok(json!({
            "zone": dns::zone_snippet(&all),
            "records": rows,
            "zones": zones,
            "findings": findings,
            "server": self.dns_server.as_ref().map(|s| s.addrs.clone()),
        }))
    }

    /// Served zones whose SOA contact no mail server here accepts.
    fn contact_warnings(&self, only: Option<&str>) -> Vec<Finding> {
        let instances = self.instances_snapshot();
        self.config
            .dns
            .zones
            .iter()
            .filter(|z| z.mode == ZoneMode::Serve)
            .filter_map(|z| dns::zones::origin_of(&z.name).ok())
            .filter(|o| {
                only.is_none_or(|d| {
                    let o = o.trim_end_matches('.');
                    o == d || o.ends_with(&format!(".{d}"))
                })
            })
            .filter_map(|o| {
                dns::soa_contact(
                    &o,
                    self.config.dns.hostmaster.as_deref(),
                    &instances,
                    self.config.mail.postmaster.as_deref(),
                )
                .1
            })
            .collect()
    }

    /// Rebuilds the served zones (a new serial only when their content changed) and, in the
    /// background, pushes the pushed ones. Called after every change and daily.
    pub(super) fn refresh_dns(self: &Arc<Self>) {
        if self.config.dns.zones.is_empty() {
            return;
        }
        if let Err(e) = self.reload_served() {
            tracing::error!("DNS zones: {e}");
            self.bus.publish("dns-failed", None, e.to_string());
        }
        if self
            .config
            .dns
            .zones
            .iter()
            .any(|z| z.mode == ZoneMode::Push)
        {
            let d = self.clone();
            tokio::spawn(async move {
                if let Err(e) = d.push_zones(false).await {
                    tracing::error!("DNS push: {e}");
                }
            });
        }
    }

    /// The minute tick: rebuild when a served zone is due for new signatures, push again when
    /// the last push failed.
    pub(super) fn refresh_dns_if_due(self: &Arc<Self>) {
        let now = crate::state::now();
        let resign = self
            .dns_built
            .lock()
            .expect("dns cache lock")
            .values()
            .any(|b| now.saturating_sub(b.at) >= RESIGN_EVERY.as_secs());
        if resign {
            self.refresh_dns();
            return;
        }
        // Served zones follow what changes outside the desired state too (a renewed
        // certificate's TLSA): rebuilt from the cache, signed again only when they changed.
        if let Err(e) = self.reload_served() {
            tracing::error!("DNS zones: {e}");
        }
        if self
            .dns_push_failed
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            let d = self.clone();
            tokio::spawn(async move {
                let _ = d.push_zones(false).await;
            });
        }
    }

    /// Rebuilds and loads the served zones from the records as they are now. One at a time,
    /// records computed under the same lock: an older snapshot never replaces a newer one.
    fn reload_served(&self) -> Result<Vec<serve::ZoneInfo>> {
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let Some(server) = &self.dns_server else {
            return Ok(Vec::new());
        };
        if !self
            .config
            .dns
            .zones
            .iter()
            .any(|z| z.mode == ZoneMode::Serve)
        {
            return Ok(Vec::new());
        }
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let (records, _) = self.dns_records(None);
        server.load(self.build_served_zones(&records)?);
        Ok(server.zones())
    }

    fn build_served_zones(&self, records: &[Record]) -> Result<Vec<serve::BuiltZone>> {
        let split = dns::zones::split(records, &self.config.dns.zones);
        let instances = self.instances_snapshot();
        let nameservers: Vec<String> = if self.config.dns.nameservers.is_empty() {
            self.config.host.hostname.iter().cloned().collect()
        } else {
            self.config.dns.nameservers.clone()
        };
        let today: u32 = crate::state::format_utc(crate::state::now())[..10]
            .replace('-', "")
            .parse()
            .unwrap_or(19700101);
        let mut built = Vec::new();
        for (origin, (zone, recs)) in split.zones.iter() {
            if zone.mode != ZoneMode::Serve {
                continue;
            }
            let (hostmaster, _) = dns::soa_contact(
                origin,
                self.config.dns.hostmaster.as_deref(),
                &instances,
                self.config.mail.postmaster.as_deref(),
            );
            // The serial moves only when the content (or the contact) does, and when a signed
            // zone is re-signed, so secondaries fetch the new signatures. Kept in the store
            // with the content's hash and when that serial was signed.
            let content = format!(
                "{}; contact {hostmaster}\n",
                serve::content_text(origin, &nameservers, recs)
            );
            let hash =
                crate::state::hex(&<sha2::Sha256 as sha2::Digest>::digest(content.as_bytes()));
            let key = format!("dns.serial.{origin}");
            let now = crate::state::now();
            let stored: Option<(u32, String, u64)> = self.store.meta(&key)?.and_then(|v| {
                serde_json::from_str(&v)
                    .ok()
                    // Written before re-signing moved serials: (serial, hash).
                    .or_else(|| {
                        serde_json::from_str::<(u32, String)>(&v)
                            .ok()
                            .map(|(s, h)| (s, h, now))
                    })
            });
            let (serial, signed_at) = match &stored {
                Some((s, h, at))
                    if *h == hash
                        && (!zone.dnssec || now.saturating_sub(*at) < RESIGN_EVERY.as_secs()) =>
                {
                    (*s, *at)
                }
                _ => {
                    let s = serve::next_serial(stored.as_ref().map(|s| s.0), today);
                    let v = serde_json::to_string(&(s, &hash, now)).unwrap_or_default();
                    self.store.write(|w| w.put_meta(&key, &v))?;
                    (s, now)
                }
            };
            let transfers = if zone.secondaries.is_empty() {
                None
            } else {
                match dns::push::tsig_signer(zone) {
                    Ok(signer) => Some(Arc::new(serve::Transfers {
                        secondaries: zone.secondaries.clone(),
                        signer,
                    })),
                    Err(e) => {
                        // Served all the same; no transfers and no NOTIFY until the key is fixed.
                        tracing::error!("zone {origin}: secondaries: {e}");
                        self.bus.publish(
                            "dns-failed",
                            None,
                            format!("{origin}: no zone transfers: {}", e.message),
                        );
                        None
                    }
                }
            };
            let head = serve::ZoneHead {
                nameservers: &nameservers,
                hostmaster: &hostmaster,
                serial,
                nsec3: zone.nsec3,
                transfers,
            };
            // Unchanged and signed recently: serve the zone as it is (signing costs ~10 ms).
            let mut cache = self.dns_built.lock().expect("dns cache lock");
            if let Some(b) = cache.get(origin).filter(|b| {
                b.hash == hash
                    && b.serial == serial
                    && now.saturating_sub(b.at) < RESIGN_EVERY.as_secs()
            }) {
                built.push(serve::BuiltZone {
                    origin: b
                        .info
                        .zone
                        .parse()
                        .map_err(|e| Error::failed(format!("zone {origin}: {e}")))?,
                    handler: b.handler.clone(),
                    info: b.info.clone(),
                    transfers: b.transfers.clone(),
                });
                continue;
            }
            let key_path = serve::key_path(&self.config.daemon.state_dir, origin);
            // Unsigned zones never need re-signing: their cache entry stays fresh.
            let at = if zone.dnssec { signed_at } else { now };
            let zone = serve::build_zone(
                origin,
                &head,
                recs,
                zone.dnssec.then_some(key_path.as_path()),
            )?;
            cache.insert(
                origin.clone(),
                Built {
                    hash,
                    serial,
                    // Due for re-signing a day after this serial was first signed, even
                    // across restarts (which sign again but keep the serial).
                    at,
                    handler: zone.handler.clone(),
                    info: zone.info.clone(),
                    transfers: zone.transfers.clone(),
                },
            );
            built.push(zone);
        }
        Ok(built)
    }

    /// Pushes every `push` zone; the report of each. One push at a time.
    pub(super) async fn push_zones(&self, dry_run: bool) -> Result<Vec<Value>> {
        let _one_at_a_time = self.dns_push_lock.lock().await;
        let (records, _) = self.dns_records(None);
        let split = dns::zones::split(&records, &self.config.dns.zones);
        let mut out = Vec::new();
        let mut first_error = None;
        for (origin, (zone, recs)) in &split.zones {
            if zone.mode != ZoneMode::Push {
                continue;
            }
            match self.push_zone(zone, origin, recs, dry_run).await {
                Ok(v) => out.push(v),
                Err(e) => {
                    self.bus
                        .publish("dns-push-failed", None, format!("{origin}: {}", e.message));
                    out.push(json!({"zone": origin, "error": e.message, "hint": e.hint}));
                    first_error.get_or_insert(e);
                }
            }
        }
        if !dry_run {
            self.dns_push_failed
                .store(first_error.is_some(), std::sync::atomic::Ordering::SeqCst);
        }
        match first_error {
            // Several zones: report each; fail the command when any failed.
            Some(e) if out.len() == 1 => Err(e),
            Some(e) => Err(Error::failed(format!(
                "{}\n{}",
                e.message,
                serde_json::to_string_pretty(&out).unwrap_or_default()
            ))),
            None => Ok(out),
        }
    }

    async fn push_zone(
        &self,
        zone: &ZoneConfig,
        origin: &str,
        recs: &[Record],
        dry_run: bool,
    ) -> Result<Value> {
        let key = format!("dns.pushed.{origin}");
        let owned: Vec<Record> = self
            .store
            .meta(&key)?
            .and_then(|v| serde_json::from_str(&v).ok())
            .unwrap_or_default();
        let pushed = dns::push::push(zone, origin, recs, &owned, dry_run).await?;
        if !dry_run {
            // After the server said yes: a crash before this line only repeats the same
            // (idempotent) adds and deletes next time.
            let v = serde_json::to_string(&pushed.owned).unwrap_or_default();
            self.store.write(|w| w.put_meta(&key, &v))?;
            if !pushed.added.is_empty() || !pushed.removed.is_empty() {
                self.bus.publish(
                    "dns-pushed",
                    None,
                    format!(
                        "{origin}: {} added, {} removed",
                        pushed.added.len(),
                        pushed.removed.len()
                    ),
                );
            }
        }
        Ok(serde_json::to_value(&pushed).unwrap_or_default())
    }

    /// `ilot dns apply`: served zones rebuilt, pushed zones pushed, printed ones listed.
    pub(super) async fn dns_apply(self: &Arc<Self>, dry_run: bool) -> Result<Value> {
        if self.config.dns.zones.is_empty() {
            let (records, _) = self.dns_records(None);
            return Ok(json!({
                "served": [], "pushed": [],
                "printed": records.len(),
                "message": "no zone is configured: every record is to be pasted at your DNS provider (`ilot dns show --format zone`); [[dns.zones]] in the config makes ilot serve or push them",
            }));
        }
        let (records, _) = self.dns_records(None);
        let mut served = Vec::new();
        if !dry_run {
            served = self.reload_served()?;
        }
        let pushed = self.push_zones(dry_run).await?;
        let printed = dns::zones::split(&records, &self.config.dns.zones)
            .unzoned
            .len();
        Ok(json!({ "served": served, "pushed": pushed, "printed": printed, "dry_run": dry_run }))
    }

    /// `ilot diagnose [dns|mail|all]`.
    pub(super) async fn diagnose(&self, what: &str) -> Result<Value> {
        if !matches!(what, "dns" | "mail" | "all") {
            return Err(Error::bad_input(format!("cannot diagnose {what:?}"))
                .hint("use `ilot diagnose dns`, `ilot diagnose mail` or `ilot diagnose all`"));
        }
        let resolver = dns::diagnose::resolver(&self.config.dns)
            .map_err(|e| Error::bad_input(e).hint("fix [dns] resolvers in the config"))?;
        let mut checks = Vec::new();
        if what != "mail" {
            // Every record ilot publishes: the planned ones and the zones' extras.
            let (records, _) = self.dns_records(None);
            let split = dns::zones::split(&records, &self.config.dns.zones);
            let all: Vec<Record> = split
                .zones
                .into_values()
                .flat_map(|(_, r)| r)
                .chain(split.unzoned)
                .collect();
            checks.extend(dns::diagnose::dns_checks(&resolver, &all).await);
            // The SOA contact of each served zone must reach someone.
            let instances = self.instances_snapshot();
            for z in self
                .config
                .dns
                .zones
                .iter()
                .filter(|z| z.mode == ZoneMode::Serve)
            {
                let Ok(origin) = dns::zones::origin_of(&z.name) else {
                    continue;
                };
                let (contact, warning) = dns::soa_contact(
                    &origin,
                    self.config.dns.hostmaster.as_deref(),
                    &instances,
                    self.config.mail.postmaster.as_deref(),
                );
                checks.push(dns::diagnose::Check {
                    area: "dns",
                    status: if warning.is_some() {
                        dns::diagnose::Status::Warn
                    } else {
                        dns::diagnose::Status::Ok
                    },
                    subject: format!("{origin} SOA contact"),
                    expected: "an address a mail server here accepts".into(),
                    seen: contact,
                    fix: warning.map(|w| w.fix).unwrap_or_default(),
                });
            }
        }
        if what != "dns" {
            let greetings = self.greetings().await;
            checks.extend(
                dns::diagnose::mail_checks(
                    &resolver,
                    &self.config.host,
                    &self.config.dns,
                    &greetings,
                )
                .await,
            );
        }
        let drift: Vec<&dns::diagnose::Check> = checks
            .iter()
            .filter(|c| c.area == "dns" && c.status == dns::diagnose::Status::Fail)
            .collect();
        // Mail deliverability (reverse DNS, port 25, blocklists) failing is an alert too.
        let mail_failures: Vec<String> = checks
            .iter()
            .filter(|c| c.area == "mail" && c.status == dns::diagnose::Status::Fail)
            .map(|c| format!("{}: {}", c.subject, c.seen))
            .collect();
        if !mail_failures.is_empty() {
            self.bus
                .publish("mail-check-failed", None, mail_failures.join("; "));
        }
        if !drift.is_empty() {
            self.bus.publish(
                "dns-drift",
                None,
                format!(
                    "{} record(s) differ from what the world resolves: {}",
                    drift.len(),
                    drift
                        .iter()
                        .map(|c| c.subject.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        Ok(json!({ "checks": checks }))
    }
}

fn record_row(r: &Record, zone: &str, mode: &ZoneMode) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    v["zone"] = json!(zone);
    v["mode"] = json!(mode);
    v
}
