//! Certificates: one per served domain, from an ACME CA (instant-acme, HTTP-01 answered by the
//! proxy on port 80), stored 0600 in state_dir/certs/DOMAIN/, swapped into the running proxy
//! without a restart. Renewal at two thirds of the lifetime (with jitter); failures retried
//! with exponential backoff and reported (`ilot cert list`) with what to do. Until a domain
//! has a certificate the proxy serves a self-signed one.

use crate::config::AcmeConfig;
use crate::error::{Error, Result};
use crate::events::Bus;
use crate::proxy::Proxy;
use crate::state::now;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// What `ilot cert list` shows for a domain.
#[derive(Debug, Clone, Serialize, Default)]
pub struct CertStatus {
    pub domain: String,
    /// "acme" once issued, "self-signed" until then.
    pub source: String,
    pub issuer: Option<String>,
    pub not_before: Option<u64>,
    pub not_after: Option<u64>,
    pub next_renewal: Option<u64>,
    pub last_error: Option<String>,
    pub failures: u32,
    /// When the next attempt is due after a failure.
    pub retry_at: Option<u64>,
    /// How next_renewal was chosen: "ari" (the CA's suggested window, RFC 9773) or
    /// "two-thirds" (of the lifetime, when the CA offers no renewal information).
    pub renewal_basis: Option<String>,
    /// When to ask the CA for renewal information again (its Retry-After).
    #[serde(skip)]
    pub ari_recheck_at: Option<u64>,
}

pub struct Certs {
    config: AcmeConfig,
    dir: PathBuf,
    proxy: Arc<Proxy>,
    bus: Bus,
    status: RwLock<BTreeMap<String, CertStatus>>,
    account: tokio::sync::Mutex<Option<Account>>,
    /// One issuance at a time (the scheduler and `cert renew` share it).
    issuing: tokio::sync::Mutex<()>,
    wake: tokio::sync::Notify,
}

/// How often the scheduler looks for certificates that are due.
const CHECK_EVERY: Duration = Duration::from_secs(300);

impl Certs {
    pub fn start(config: AcmeConfig, state_dir: &Path, proxy: Arc<Proxy>, bus: Bus) -> Arc<Certs> {
        let certs = Arc::new(Certs {
            config,
            dir: state_dir.join("certs"),
            proxy,
            bus,
            status: RwLock::new(BTreeMap::new()),
            account: tokio::sync::Mutex::new(None),
            issuing: tokio::sync::Mutex::new(()),
            wake: tokio::sync::Notify::new(),
        });
        let me = certs.clone();
        tokio::spawn(async move {
            loop {
                me.sync_hosts();
                if me.config.enabled {
                    me.refresh_ari().await;
                    for domain in me.due(false) {
                        let _ = me.issue(&domain, false).await;
                    }
                }
                tokio::select! {
                    _ = me.wake.notified() => {}
                    _ = tokio::time::sleep(CHECK_EVERY) => {}
                }
            }
        });
        certs
    }

    /// Called when the served domains change.
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    /// Tracks the proxy's hosts: loads stored certificates for new ones, forgets old ones.
    fn sync_hosts(&self) {
        let hosts = self.proxy.hosts();
        let new: Vec<String> = {
            let status = self.status.read().expect("cert status lock");
            hosts
                .iter()
                .filter(|h| !status.contains_key(*h))
                .cloned()
                .collect()
        };
        for host in new {
            let mut st = CertStatus {
                domain: host.clone(),
                source: "self-signed".into(),
                ..Default::default()
            };
            if let Err(e) = self.load_stored(&host, &mut st) {
                st.last_error = Some(e.message);
            }
            self.status
                .write()
                .expect("cert status lock")
                .insert(host, st);
        }
        self.status
            .write()
            .expect("cert status lock")
            .retain(|h, _| hosts.contains(h));
    }

    fn load_stored(&self, host: &str, st: &mut CertStatus) -> Result<()> {
        let (chain, key) = (
            self.dir.join(host).join("fullchain.pem"),
            self.dir.join(host).join("privkey.pem"),
        );
        if !chain.exists() {
            return Ok(());
        }
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .map_err(|e| Error::failed(format!("cannot read {}: {e}", p.display())))
        };
        let (chain, key) = (read(&chain)?, read(&key)?);
        self.proxy.certs.install_pem(host, &chain, &key)?;
        fill_from_cert(st, &chain);
        st.source = "acme".into();
        Ok(())
    }

    /// The issued chain and key for a domain, if any (PEM).
    pub fn issued_pem(&self, domain: &str) -> Option<(String, String)> {
        let dir = self.dir.join(domain);
        let chain = std::fs::read_to_string(dir.join("fullchain.pem")).ok()?;
        let key = std::fs::read_to_string(dir.join("privkey.pem")).ok()?;
        Some((chain, key))
    }

    pub fn list(&self) -> Vec<CertStatus> {
        self.sync_hosts();
        self.status
            .read()
            .expect("cert status lock")
            .values()
            .cloned()
            .collect()
    }

    /// Domains whose certificate should be (re)issued now.
    fn due(&self, force: bool) -> Vec<String> {
        let t = now();
        self.status
            .read()
            .expect("cert status lock")
            .values()
            .filter(|s| {
                force
                    || s.retry_at.is_none_or(|r| r <= t)
                        && (s.source != "acme" || s.next_renewal.is_some_and(|n| n <= t))
            })
            .map(|s| s.domain.clone())
            .collect()
    }

    /// `ilot cert renew [DOMAIN] [--force]`: issues now what is due (or everything, forced).
    pub async fn renew(&self, domain: Option<&str>, force: bool) -> Result<Vec<CertStatus>> {
        if !self.config.enabled {
            return Err(Error::bad_input(
                "ACME is disabled in the config ([acme] enabled = false)",
            )
            .hint("enable it, with a directory your domains can be validated by"));
        }
        self.sync_hosts();
        let targets: Vec<String> = match domain {
            Some(d) => {
                if !self
                    .status
                    .read()
                    .expect("cert status lock")
                    .contains_key(d)
                {
                    return Err(Error::not_found(format!("no app is served at {d}"))
                        .hint("install an app with --domain, then see `ilot cert list`"));
                }
                if force || self.due(false).iter().any(|x| x == d) {
                    vec![d.to_string()]
                } else {
                    vec![]
                }
            }
            None => self.due(force),
        };
        let mut errors = Vec::new();
        for d in &targets {
            if let Err(e) = self.issue(d, force).await {
                errors.push(e);
            }
        }
        self.refresh_ari().await;
        match errors.len() {
            0 => Ok(self.list()),
            1 => Err(errors.remove(0)),
            n => Err(Error::failed(format!(
                "{n} certificates could not be issued: {}",
                errors
                    .iter()
                    .map(|e| e.message.clone())
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
            .hint("see `ilot cert list` for each domain's error")),
        }
    }

    /// Issues a certificate for `domain`; unless `force`, only if it is still due once this
    /// caller's turn comes (the scheduler and `cert renew` may have queued for the same one).
    async fn issue(&self, domain: &str, force: bool) -> Result<()> {
        let _one = self.issuing.lock().await;
        if !force && !self.due(false).iter().any(|d| d == domain) {
            return Ok(());
        }
        let result = self.order(domain).await;
        let mut status = self.status.write().expect("cert status lock");
        let st = status
            .entry(domain.to_string())
            .or_insert_with(|| CertStatus {
                domain: domain.into(),
                source: "self-signed".into(),
                ..Default::default()
            });
        match &result {
            Ok(chain) => {
                fill_from_cert(st, chain);
                st.source = "acme".into();
                st.ari_recheck_at = None;
                st.last_error = None;
                st.failures = 0;
                st.retry_at = None;
                self.bus.publish_domain(
                    "cert-issued",
                    domain,
                    format!(
                        "certificate for {domain} issued by {}",
                        st.issuer.clone().unwrap_or_default()
                    ),
                );
            }
            Err(e) => {
                st.failures += 1;
                st.last_error = Some(e.message.clone());
                // 5 min, 10, 20... capped at a day, with up to 10% jitter.
                let backoff = (300u64 << (st.failures - 1).min(9)).min(86_400);
                st.retry_at = Some(now() + backoff + jitter(backoff / 10));
                self.bus.publish_domain(
                    "cert-failed",
                    domain,
                    format!("certificate for {domain}: {}", e.message),
                );
            }
        }
        result.map(|_| ())
    }

    /// Asks the CA for renewal windows (ARI) of the certificates whose recheck is due; a CA
    /// that offers none leaves the two-thirds rule in place.
    async fn refresh_ari(&self) {
        let t = now();
        let due: Vec<String> = self
            .status
            .read()
            .expect("cert status lock")
            .values()
            .filter(|s| s.source == "acme" && s.ari_recheck_at.is_none_or(|r| r <= t))
            .map(|s| s.domain.clone())
            .collect();
        for domain in due {
            let chain = std::fs::read_to_string(self.dir.join(&domain).join("fullchain.pem"))
                .unwrap_or_default();
            let outcome = self.ask_ari(&chain).await;
            let mut status = self.status.write().expect("cert status lock");
            let Some(st) = status.get_mut(&domain) else {
                continue;
            };
            match outcome {
                Ok(Some((start, end, recheck))) => {
                    st.next_renewal = Some(start + jitter(end.saturating_sub(start).max(1)));
                    st.renewal_basis = Some("ari".into());
                    st.ari_recheck_at = Some(t + recheck.clamp(3600, 86_400));
                }
                // The CA has no renewal information: keep two thirds, ask again in a day.
                Ok(None) => st.ari_recheck_at = Some(t + 86_400),
                Err(e) => {
                    tracing::debug!("renewal information for {domain}: {e}");
                    st.ari_recheck_at = Some(t + 3600);
                }
            }
        }
    }

    /// (window start, window end, seconds until asking again), or None without ARI.
    async fn ask_ari(&self, chain_pem: &str) -> Result<Option<(u64, u64, u64)>> {
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .next()
            .and_then(|c| c.ok())
            .ok_or_else(|| Error::failed("unreadable stored certificate"))?;
        let id = instant_acme::CertificateIdentifier::try_from(&der).map_err(Error::failed)?;
        let account = self.account().await?;
        match account.renewal_info(&id).await {
            Ok((info, retry)) => {
                let w = info.suggested_window;
                Ok(Some((
                    w.start.unix_timestamp().max(0) as u64,
                    w.end.unix_timestamp().max(0) as u64,
                    retry.as_secs(),
                )))
            }
            Err(instant_acme::Error::Unsupported(_)) => Ok(None),
            Err(e) => Err(Error::failed(error_chain(&e))),
        }
    }

    /// One ACME order for `domain` by HTTP-01; returns the chain after storing and installing it.
    async fn order(&self, domain: &str) -> Result<String> {
        let account = self.account().await?;
        let ids = [Identifier::Dns(domain.to_string())];
        let mut order = account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(|e| acme_err(domain, e))?;
        let mut tokens = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| acme_err(domain, e))?;
            if authz.status == AuthorizationStatus::Valid {
                continue;
            }
            let mut challenge = authz.challenge(ChallengeType::Http01).ok_or_else(|| {
                Error::failed(format!("the CA offers no HTTP-01 challenge for {domain}"))
            })?;
            let token = challenge.token.clone();
            self.proxy
                .challenges
                .write()
                .expect("challenges lock")
                .insert(
                    token.clone(),
                    challenge.key_authorization().as_str().to_string(),
                );
            tokens.push(token);
            challenge
                .set_ready()
                .await
                .map_err(|e| acme_err(domain, e))?;
        }
        let retry = RetryPolicy::new().timeout(Duration::from_secs(90));
        let ready = order.poll_ready(&retry).await;
        let outcome = match ready {
            Ok(OrderStatus::Ready) => {
                async {
                    // The domain's key is kept across renewals, so a TLSA record of it (DANE
                    // 3 1 1, published for the mail server) stays true when the certificate
                    // changes. A new key only when there is none (or it is unreadable).
                    let key = self.reusable_key(domain)?;
                    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()])
                        .map_err(|e| Error::failed(format!("{domain}: CSR: {e}")))?;
                    params.distinguished_name = rcgen::DistinguishedName::new();
                    let csr = params
                        .serialize_request(&key)
                        .map_err(|e| Error::failed(format!("{domain}: CSR: {e}")))?;
                    order
                        .finalize_csr(csr.der())
                        .await
                        .map_err(|e| acme_err(domain, e))?;
                    let key = key.serialize_pem();
                    let chain = order
                        .poll_certificate(&retry)
                        .await
                        .map_err(|e| acme_err(domain, e))?;
                    Ok((chain, key))
                }
                .await
            }
            Ok(status) => Err(self.explain_invalid(&mut order, domain, status).await),
            Err(e) => Err(acme_err(domain, e)),
        };
        {
            let mut challenges = self.proxy.challenges.write().expect("challenges lock");
            for t in &tokens {
                challenges.remove(t);
            }
        }
        let (chain, key) = outcome?;
        self.store(domain, &chain, &key)?;
        self.proxy.certs.install_pem(domain, &chain, &key)?;
        Ok(chain)
    }

    /// A failed order: find the challenge's error and say what to do.
    async fn explain_invalid(
        &self,
        order: &mut instant_acme::Order,
        domain: &str,
        status: OrderStatus,
    ) -> Error {
        let mut detail = format!("order {status:?}");
        let mut authorizations = order.authorizations();
        while let Some(Ok(mut authz)) = authorizations.next().await {
            if let Some(problem) = authz
                .challenge(ChallengeType::Http01)
                .and_then(|c| c.error.clone())
            {
                detail = problem
                    .detail
                    .clone()
                    .unwrap_or_else(|| format!("{problem:?}"));
            }
        }
        Error::failed(format!("the CA could not validate {domain}: {detail}")).hint(format!(
            "check that {domain} points at this host (its A/AAAA record) and that port 80 is open to the internet; ilot retries by itself"
        ))
    }

    /// The key the domain's certificates are issued for: the stored one, else a new one.
    fn reusable_key(&self, domain: &str) -> Result<rcgen::KeyPair> {
        let stored = std::fs::read_to_string(self.dir.join(domain).join("privkey.pem")).ok();
        if let Some(key) = stored.and_then(|pem| rcgen::KeyPair::from_pem(&pem).ok()) {
            return Ok(key);
        }
        rcgen::KeyPair::generate()
            .map_err(|e| Error::failed(format!("{domain}: cannot generate a key: {e}")))
    }

    fn store(&self, domain: &str, chain: &str, key: &str) -> Result<()> {
        let dir = self.dir.join(domain);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::failed(format!("cannot create {}: {e}", dir.display())))?;
        crate::state::write_private(&dir.join("privkey.pem"), key)?;
        crate::state::write_private(&dir.join("fullchain.pem"), chain)
    }

    /// Where the account of the configured directory is kept.
    fn account_file(&self) -> PathBuf {
        let url = self.config.directory_url();
        self.dir.join("accounts").join(format!(
            "{}.json",
            &crate::state::hex(&sha2_digest(url.as_bytes()))[..16]
        ))
    }

    /// The account's URL at the CA, once it exists: CAA records bind issuance to it
    /// (RFC 8657 accounturi), so another account at the same CA cannot get certificates.
    pub fn account_url(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.account_file()).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["id"].as_str().map(str::to_string)
    }

    /// The ACME account for the configured directory: loaded from the state dir, or created.
    async fn account(&self) -> Result<Account> {
        let mut slot = self.account.lock().await;
        if let Some(a) = slot.as_ref() {
            return Ok(a.clone());
        }
        let url = self.config.directory_url().to_string();
        let file = self.account_file();
        let builder = || match &self.config.ca_root {
            Some(root) => Account::builder_with_root(root),
            None => Account::builder(),
        };
        let reach = |e: instant_acme::Error| {
            Error::failed(format!(
                "cannot use the ACME directory {url}: {}",
                error_chain(&e)
            ))
            .hint("check [acme] directory in the config and that this host reaches it")
        };
        let account = if let Ok(text) = std::fs::read_to_string(&file) {
            let creds: AccountCredentials = serde_json::from_str(&text).map_err(|e| {
                Error::failed(format!("corrupt ACME account {}: {e}", file.display()))
            })?;
            builder()
                .map_err(reach)?
                .from_credentials(creds)
                .await
                .map_err(reach)?
        } else {
            let contact = self.config.email.as_ref().map(|e| format!("mailto:{e}"));
            let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
            let new = NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            };
            let (account, creds) = builder()
                .map_err(reach)?
                .create(&new, url.clone(), None)
                .await
                .map_err(reach)?;
            if let Some(dir) = file.parent() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| Error::failed(format!("cannot create {}: {e}", dir.display())))?;
            }
            crate::state::write_private(
                &file,
                &serde_json::to_string(&creds).map_err(|e| Error::failed(e.to_string()))?,
            )?;
            self.bus.publish(
                "acme-account",
                None,
                format!("ACME account created at {url}"),
            );
            account
        };
        *slot = Some(account.clone());
        Ok(account)
    }
}

/// An error with its causes ("client error (Connect): tls: invalid peer certificate...").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// SHA-256 of the first certificate's SubjectPublicKeyInfo, in hex: a TLSA 3 1 1 record's
/// data (DANE-EE, the key, SHA-256: RFC 7671), which holds across renewals with the same key.
pub fn spki_sha256(chain_pem: &str) -> Option<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(crate::state::hex(&sha2_digest(
        cert.tbs_certificate.subject_pki.raw,
    )))
}

fn sha2_digest(data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(data).to_vec()
}

/// Issuer, validity and the renewal time (two thirds of the lifetime, with a little jitter).
fn fill_from_cert(st: &mut CertStatus, chain_pem: &str) {
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes()) else {
        return;
    };
    let Ok(cert) = pem.parse_x509() else { return };
    let nb = cert.validity().not_before.timestamp().max(0) as u64;
    let na = cert.validity().not_after.timestamp().max(0) as u64;
    st.issuer = Some(cert.issuer().to_string());
    st.not_before = Some(nb);
    st.not_after = Some(na);
    let lifetime = na.saturating_sub(nb);
    st.next_renewal = Some(nb + lifetime * 2 / 3 + jitter(lifetime / 100));
    st.renewal_basis = Some("two-thirds".into());
}

fn jitter(max: u64) -> u64 {
    use rand::RngExt;
    if max == 0 {
        0
    } else {
        rand::rng().random_range(0..max)
    }
}

/// ACME errors in words a user can act on.
fn acme_err(domain: &str, e: instant_acme::Error) -> Error {
    match &e {
        instant_acme::Error::Api(p) => {
            let kind = p
                .r#type
                .as_deref()
                .unwrap_or("")
                .rsplit(':')
                .next()
                .unwrap_or("")
                .to_string();
            let detail = p.detail.clone().unwrap_or_default();
            let hint = match kind.as_str() {
                "rateLimited" => "the CA's rate limit was hit: ilot retries later by itself (use letsencrypt-staging while testing)".to_string(),
                "rejectedIdentifier" | "malformed" => format!("the CA will not issue for {domain}: use a public domain name you own"),
                "unauthorized" | "connection" | "dns" | "incorrectResponse" => format!(
                    "check that {domain} points at this host and that port 80 is open to the internet"
                ),
                _ => "see `ilot cert list`; ilot retries with backoff".to_string(),
            };
            Error::failed(format!(
                "certificate for {domain}: the CA said {kind}: {detail}"
            ))
            .hint(hint)
        }
        _ => Error::failed(format!("certificate for {domain}: {}", error_chain(&e)))
            .hint("check that the ACME directory is reachable; ilot retries with backoff"),
    }
}
