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
        let (records, mut more) = dns::plan(&inputs, only);
        findings.append(&mut more);
        (records, findings)
    }

    pub(super) fn dns_view(&self, only: Option<&str>) -> Result<Value> {
        if let Some(d) = only {
            crate::names::check_domain(d)?;
        }
        let (records, findings) = self.dns_records(only);
        let split = dns::zones::split(&records, &self.config.dns.zones);
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

    /// Rebuilds the served zones (a new serial only when their content changed) and, in the
    /// background, pushes the pushed ones. Called after every change and daily.
    pub(super) fn refresh_dns(self: &Arc<Self>) {
        if self.config.dns.zones.is_empty() {
            return;
        }
        let (records, _) = self.dns_records(None);
        if let Some(server) = &self.dns_server {
            match self.build_served_zones(&records) {
                Ok(built) => server.load(built),
                Err(e) => {
                    tracing::error!("DNS zones: {e}");
                    self.bus.publish("dns-failed", None, e.to_string());
                }
            }
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
        } else if self
            .dns_push_failed
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            let d = self.clone();
            tokio::spawn(async move {
                let _ = d.push_zones(false).await;
            });
        }
    }

    fn build_served_zones(&self, records: &[Record]) -> Result<Vec<serve::BuiltZone>> {
        let split = dns::zones::split(records, &self.config.dns.zones);
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
            // The serial moves only when the content does (hash kept in the store).
            let content = serve::content_text(origin, &nameservers, recs);
            let hash =
                crate::state::hex(&<sha2::Sha256 as sha2::Digest>::digest(content.as_bytes()));
            let key = format!("dns.serial.{origin}");
            let stored: Option<(u32, String)> = self
                .store
                .meta(&key)?
                .and_then(|v| serde_json::from_str(&v).ok());
            let serial = match &stored {
                Some((s, h)) if *h == hash => *s,
                _ => {
                    let s = serve::next_serial(stored.as_ref().map(|s| s.0), today);
                    let v = serde_json::to_string(&(s, &hash)).unwrap_or_default();
                    self.store.write(|w| w.put_meta(&key, &v))?;
                    s
                }
            };
            let hostmaster = self
                .config
                .dns
                .hostmaster
                .clone()
                .unwrap_or_else(|| format!("hostmaster@{}", origin.trim_end_matches('.')));
            let head = serve::ZoneHead {
                nameservers: &nameservers,
                hostmaster: &hostmaster,
                serial,
            };
            // Unchanged and signed recently: serve the zone as it is (signing costs ~10 ms).
            let now = crate::state::now();
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
                });
                continue;
            }
            let key_path = serve::key_path(&self.config.daemon.state_dir, origin);
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
                    at: now,
                    handler: zone.handler.clone(),
                    info: zone.info.clone(),
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
            if let Some(server) = &self.dns_server {
                let built = self.build_served_zones(&records)?;
                server.load(built);
                served = server.zones();
            }
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
