//! Mail in the daemon. `ilot mail ...` requests change the mail instance's state (kept with
//! the instance in the store), which is rendered into the files its container reads
//! (src/mail), after which the container reloads without dropping a connection. DNS follows
//! from the same state (mail domains, DKIM keys) when the request ends.
//!
//! DKIM rotation runs in the background: `rotate` publishes a new key; once a lookup of its
//! record returns that key, signing switches to it; the old key stays published for
//! `[mail] dkim_retire_after`, then is withdrawn. At no point is mail signed with a key that
//! is not published.

use super::Daemon;
use crate::api::MailOp;
use crate::error::{Error, Result};
use crate::mail::{self, Dkim, MailState};
use crate::plan;
use crate::state::{now, Instance};
use serde_json::{json, Value};
use std::sync::Arc;

impl Daemon {
    /// A new mail server's state: the domain its name is under (mail.example.org serves
    /// example.org), with a DKIM key.
    pub(super) fn new_mail_state(&self, domain: Option<&str>) -> Result<MailState> {
        let mut st = MailState::default();
        if let Some(d) = domain {
            st.add_domain(d.strip_prefix("mail.").unwrap_or(d))?;
        }
        for d in st.domains.clone() {
            self.init_dkim(&mut st, &d)?;
        }
        Ok(st)
    }

    /// The domain's signing key: the newest it has, or a new one.
    fn init_dkim(&self, st: &mut MailState, domain: &str) -> Result<()> {
        if st.dkim.contains_key(domain) {
            return Ok(());
        }
        let keys = mail::keys(&self.config.daemon.state_dir, domain)?;
        let signing = keys
            .iter()
            .map(|(s, _)| s.clone())
            .max_by_key(|s| s.trim_start_matches("ilot").parse::<u32>().unwrap_or(0))
            .ok_or_else(|| Error::failed(format!("no DKIM key could be made for {domain}")))?;
        st.dkim.insert(
            domain.to_string(),
            Dkim {
                signing,
                ..Default::default()
            },
        );
        Ok(())
    }

    /// Writes the container's files for a mail instance; true when they changed.
    pub(super) fn write_mail_files(&self, inst: &Instance) -> Result<bool> {
        let (Some(_), Some(dir), Some(st)) = (
            &inst.manifest.needs.mail_files,
            plan::mail_dir(&inst.name),
            &inst.mail,
        ) else {
            return Ok(false);
        };
        let helo = mail::helo_name(&self.config.host, inst.domain.as_deref());
        mail::render(
            st,
            &self.config.daemon.state_dir,
            &dir,
            &helo,
            self.config.mail.postmaster.as_deref(),
        )
    }

    /// The mail instance a request is about: the one named, or the only one installed.
    fn mail_instance(&self, name: Option<&str>) -> Result<Instance> {
        if let Some(name) = name {
            let inst = self.instance(name)?;
            if inst.manifest.needs.mail_files.is_none() {
                return Err(Error::bad_input(format!("{name} is not a mail server"))
                    .hint("see `ilot app list`; the mail app is `mail`"));
            }
            return Ok(inst);
        }
        let servers: Vec<Instance> = self
            .instances_snapshot()
            .into_iter()
            .filter(|i| i.manifest.needs.mail_files.is_some())
            .collect();
        match servers.len() {
            0 => Err(Error::not_found("no mail server is installed")
                .hint("install one: `ilot app install mail --domain mail.example.org`")),
            1 => Ok(servers.into_iter().next().expect("one")),
            _ => Err(Error::bad_input(format!(
                "there are {} mail servers ({})",
                servers.len(),
                servers
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .hint("say which one with --instance NAME")),
        }
    }

    /// Saves the new state, renders its files and has the container reload them.
    async fn commit_mail(&self, mut inst: Instance, st: MailState) -> Result<()> {
        inst.mail = Some(st);
        inst.updated_at = now();
        self.save(&inst, None)?;
        if self.write_mail_files(&inst)? && inst.running {
            self.reload_mail(&inst).await?;
        }
        Ok(())
    }

    async fn reload_mail(&self, inst: &Instance) -> Result<()> {
        let mf = inst
            .manifest
            .needs
            .mail_files
            .as_ref()
            .expect("a mail server");
        let container = plan::container_name(&inst.name, &mf.service);
        let cmd: Vec<&str> = mf.reload.iter().map(String::as_str).collect();
        let (code, out) = self.engine()?.exec_output(&container, &cmd, 4096).await?;
        if code != 0 {
            return Err(Error::failed(format!(
                "the change is saved, but {container} did not reload it: {}",
                out.trim()
            ))
            .hint(format!(
                "see `ilot app logs {}`; the files are applied again at its next start",
                inst.name
            )));
        }
        Ok(())
    }

    fn mail_container(&self, inst: &Instance) -> String {
        let mf = inst
            .manifest
            .needs
            .mail_files
            .as_ref()
            .expect("a mail server");
        plan::container_name(&inst.name, &mf.service)
    }

    pub(super) async fn mail(
        self: &Arc<Self>,
        instance: Option<String>,
        op: MailOp,
    ) -> Result<Value> {
        let inst = self.mail_instance(instance.as_deref())?;
        let mut st = inst.mail.clone().unwrap_or_default();
        let name = inst.name.clone();
        let state_dir = self.config.daemon.state_dir.clone();
        let message = match op {
            MailOp::DomainList => {
                let domains: Vec<Value> = st
                    .domains
                    .iter()
                    .map(|d| {
                        let count = |keys: &mut dyn Iterator<Item = &String>| {
                            keys.filter(|a| a.ends_with(&format!("@{d}"))).count()
                        };
                        json!({
                            "domain": d,
                            "mailboxes": count(&mut st.users.keys()),
                            "aliases": count(&mut st.aliases.keys()),
                            "dkim_selector": st.dkim.get(d).map(|k| k.signing.clone()),
                        })
                    })
                    .collect();
                return Ok(json!({ "instance": name, "domains": domains }));
            }
            MailOp::UserList => {
                let users: Vec<Value> = st
                    .users
                    .iter()
                    .map(|(a, u)| json!({ "address": a, "quota": u.quota, "created": u.created }))
                    .collect();
                return Ok(json!({ "instance": name, "users": users }));
            }
            MailOp::AliasList => {
                let aliases: Vec<Value> = st
                    .aliases
                    .iter()
                    .map(|(a, t)| json!({ "address": a, "targets": t, "catch_all": a.starts_with('@') }))
                    .collect();
                return Ok(json!({ "instance": name, "aliases": aliases }));
            }
            MailOp::RelayShow => {
                let relay = st.relay.as_ref().map(|r| {
                    json!({ "host": r.host, "port": r.port, "user": r.user, "tls": r.tls,
                            "spf_include": r.spf_include })
                });
                return Ok(json!({ "instance": name, "relay": relay }));
            }
            MailOp::DkimShow => return Ok(self.dkim_view(&name, &st)),
            MailOp::Queue => return self.mail_queue(&inst).await,
            MailOp::QueueFlush => {
                run_ok(
                    self.engine()?,
                    &self.mail_container(&inst),
                    &["postqueue", "-f"],
                )
                .await?;
                return Ok(
                    json!({ "instance": name, "message": "every deferred message is being retried" }),
                );
            }
            MailOp::Export { address, output } => {
                return self.mail_export(&inst, &address, &output).await
            }
            MailOp::Import { address, input } => {
                return self.mail_import(&inst, &address, &input).await
            }
            MailOp::DomainAdd { domain } => {
                st.add_domain(&domain)?;
                self.init_dkim(&mut st, &domain)?;
                format!(
                    "{domain} is a mail domain of {name}; its records (MX, SPF, DKIM, DMARC, \
                     MTA-STS...) are in `ilot dns show {domain}`"
                )
            }
            MailOp::DomainRemove { domain } => {
                st.remove_domain(&domain)?;
                format!("{domain} is no longer a mail domain of {name}")
            }
            MailOp::UserAdd {
                address,
                password,
                quota,
            } => {
                let quota = quota.as_deref().map(mail::parse_quota).transpose()?;
                // Checked before the (slow) hash, so a bad address answers at once.
                st.clone().add_user(&address, String::new(), quota)?;
                let hash = hash(password.0).await?;
                let a = st.add_user(&address, hash, quota)?;
                format!("mailbox {a} created")
            }
            MailOp::UserPasswd { address, password } => {
                st.user_mut(&address)?;
                let hash = hash(password.0).await?;
                let user = st.user_mut(&address)?;
                user.hash = hash;
                "password changed".to_string()
            }
            MailOp::UserRemove { address, purge } => {
                let a = st.remove_user(&address)?;
                if purge {
                    self.commit_mail(inst.clone(), st).await?;
                    let dir = mail::maildir(&a);
                    let dir = dir.trim_end_matches("/Maildir");
                    let (code, out) = self
                        .engine()?
                        .exec_output(&self.mail_container(&inst), &["rm", "-rf", "--", dir], 4096)
                        .await?;
                    if code != 0 {
                        return Err(Error::failed(format!(
                            "mailbox {a} removed, but its messages could not be deleted: {out}"
                        )));
                    }
                    return Ok(
                        json!({ "instance": name, "message": format!("mailbox {a} and its messages removed") }),
                    );
                }
                format!(
                    "mailbox {a} removed; its messages are kept (adding {a} again brings them \
                     back; `--purge` deletes them)"
                )
            }
            MailOp::AliasAdd { address, targets } => {
                let a = st.add_alias(&address, &targets)?;
                format!("{a} -> {}", st.aliases[&a].join(", "))
            }
            MailOp::AliasRemove { address } => {
                let a = st.remove_alias(&address)?;
                format!("alias {a} removed")
            }
            MailOp::RelaySet {
                relay,
                user,
                password,
                tls,
                spf_include,
            } => {
                let r = mail::parse_relay(&relay, &user, password.0, &tls, spf_include.as_deref())?;
                let mut text = format!(
                    "outbound mail now goes through {}:{} as {} (TLS {})",
                    r.host,
                    r.port,
                    r.user,
                    if r.tls == "none" {
                        "when offered"
                    } else {
                        "required"
                    }
                );
                match &r.spf_include {
                    Some(d) => text.push_str(&format!(
                        "; the SPF record of every mail domain now includes {d} (`ilot dns show`)"
                    )),
                    None => text.push_str(&format!(
                        "; warning: ilot does not know which servers {} sends from, so relayed \
                         mail fails SPF: run this again with --spf-include DOMAIN (the domain \
                         the relay's documentation says to include in your SPF record)",
                        r.host
                    )),
                }
                st.relay = Some(r);
                text
            }
            MailOp::RelayRemove => {
                if st.relay.take().is_none() {
                    return Err(Error::not_found("no relay is set"));
                }
                "outbound mail goes straight to the recipients' servers again (port 25)".into()
            }
            MailOp::DkimRotate { domain } => {
                let k = st.dkim.get(&domain).ok_or_else(|| {
                    Error::not_found(format!("{domain} is not a mail domain of {name}"))
                        .hint("see `ilot mail domain list`")
                })?;
                if let Some(p) = &k.pending {
                    return Err(Error::conflict(format!(
                        "a rotation of {domain} is already waiting for {p} to resolve"
                    ))
                    .hint("see `ilot mail dkim show`"));
                }
                let selector = mail::next_selector(&mail::keys(&state_dir, &domain)?);
                let (d, s) = (domain.clone(), selector.clone());
                let sd = state_dir.clone();
                tokio::task::spawn_blocking(move || mail::new_key(&sd, &d, &s))
                    .await
                    .map_err(|e| Error::failed(e.to_string()))??;
                st.dkim.get_mut(&domain).expect("checked").pending = Some(selector.clone());
                self.mail_poke.notify_one();
                format!(
                    "new key {selector} published for {domain}; mail is signed with it once \
                     {selector}._domainkey.{domain} resolves (see `ilot mail dkim show`)"
                )
            }
        };
        self.commit_mail(inst, st).await?;
        self.bus
            .publish("mail-changed", Some(&name), message.clone());
        Ok(json!({ "instance": name, "message": message }))
    }

    fn dkim_view(&self, name: &str, st: &MailState) -> Value {
        let domains: Vec<Value> = st
            .dkim
            .iter()
            .map(|(d, k)| {
                let published: Vec<String> = mail::keys(&self.config.daemon.state_dir, d)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect();
                json!({
                    "domain": d,
                    "signing": k.signing,
                    "pending": k.pending,
                    "retiring": k.retiring,
                    "published": published,
                })
            })
            .collect();
        json!({ "instance": name, "domains": domains })
    }

    async fn mail_queue(&self, inst: &Instance) -> Result<Value> {
        let (code, out) = self
            .engine()?
            .exec_output(&self.mail_container(inst), &["postqueue", "-j"], 8 << 20)
            .await?;
        if code != 0 {
            return Err(Error::failed(format!("postqueue failed: {}", out.trim())));
        }
        // One JSON object per queued message.
        let messages: Vec<Value> = out
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|m| {
                json!({
                    "id": m["queue_id"],
                    "queue": m["queue_name"],
                    "arrived": m["arrival_time"],
                    "size": m["message_size"],
                    "from": m["sender"],
                    "to": m["recipients"].as_array().map(|r| r.iter().map(|x| x["address"].clone()).collect::<Vec<_>>()),
                    "reason": m["recipients"][0]["delay_reason"],
                })
            })
            .collect();
        Ok(json!({ "instance": inst.name, "count": messages.len(), "messages": messages }))
    }

    /// An account on the mail server for app instance `app` (`[needs] smtp`): the address
    /// APP@(first mail domain), a new random password, the submission port. None when no mail
    /// server is installed (or it has no domain).
    pub(super) async fn smtp_account(&self, app: &str) -> Result<Option<mail::SmtpAccount>> {
        let Some(server) = self
            .instances_snapshot()
            .into_iter()
            .find(|i| i.manifest.needs.mail_files.is_some())
        else {
            return Ok(None);
        };
        let mut st = server.mail.clone().unwrap_or_default();
        let (Some(domain), Some(host)) = (st.domains.first().cloned(), server.domain.clone())
        else {
            return Ok(None);
        };
        let user = format!("{app}@{domain}");
        let password = crate::state::random_token(32);
        let hash = hash(password.clone()).await?;
        match st.users.get_mut(&user) {
            Some(u) => u.hash = hash,
            None => {
                st.add_user(&user, hash, Some(100 << 20))?;
            }
        }
        let port = self.submission_port(&server);
        self.commit_mail(server.clone(), st).await?;
        Ok(Some(mail::SmtpAccount {
            server: server.name,
            host,
            port,
            user,
            password,
        }))
    }

    /// The host port of the mail server's submission service (587 unless moved).
    fn submission_port(&self, server: &Instance) -> u16 {
        self.published_port(server, "submission_port", 587)
    }

    /// The host port a mail server's `container` port is published on: its setting, or the
    /// one the engine chose when the setting is 0.
    pub(super) fn published_port(&self, server: &Instance, setting: &str, container: u16) -> u16 {
        let set = server
            .settings
            .get(setting)
            .and_then(|p| p.parse().ok())
            .unwrap_or(container);
        if set != 0 {
            return set;
        }
        // 0: the engine chose one.
        let name = self.mail_container(server);
        self.observed_of(&server.name)
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.ports.get(&container))
            .and_then(|a| a.rsplit(':').next()?.parse().ok())
            .unwrap_or(container)
    }

    /// What each running mail server ilot configures says in its SMTP greeting (port 25 on
    /// the host): the name receivers compare with the PTR.
    pub(super) async fn greetings(&self) -> Vec<crate::dns::diagnose::Greeting> {
        let mut out = Vec::new();
        for server in self.instances_snapshot() {
            if server.manifest.needs.mail_files.is_none() || !server.running {
                continue;
            }
            let port = self.published_port(&server, "smtp_port", 25);
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            out.push(crate::dns::diagnose::Greeting {
                server: server.name.clone(),
                port,
                name: crate::dns::diagnose::smtp_greeting(addr).await,
            });
        }
        out
    }

    /// The mail server as a mail client app (`[needs] mail_client`: webmail) reaches it: its
    /// name, the host ports of IMAPS and submission, its first mail domain. No account is
    /// made: the app's users log in with their own. None when no mail server (with a domain
    /// and a mail domain) is installed.
    pub(super) fn mail_client_of(&self) -> Option<crate::state::MailClient> {
        let server = self
            .instances_snapshot()
            .into_iter()
            .find(|i| i.manifest.needs.mail_files.is_some())?;
        let domain = server.mail.as_ref()?.domains.first()?.clone();
        Some(crate::state::MailClient {
            host: server.domain.clone()?,
            imaps_port: self.published_port(&server, "imaps_port", 993),
            submission_port: self.submission_port(&server),
            domain,
            server: server.name,
        })
    }

    /// An app is removed: its account goes with it.
    pub(super) async fn drop_smtp_account(&self, account: &mail::SmtpAccount) {
        let Ok(server) = self.instance(&account.server) else {
            return;
        };
        let mut st = server.mail.clone().unwrap_or_default();
        if st.remove_user(&account.user).is_ok() {
            if let Err(e) = self.commit_mail(server, st).await {
                tracing::warn!("mail: cannot remove the account {}: {e}", account.user);
            }
        }
    }

    /// Messages waiting in each running mail server's queue, as `mailq:INSTANCE` (the monitor
    /// samples it: a queue that stays long means mail is not leaving).
    pub(super) async fn mail_queue_sizes(&self) -> Vec<(String, f32)> {
        let mut out = Vec::new();
        for inst in self.instances_snapshot() {
            if inst.manifest.needs.mail_files.is_none() || !inst.running {
                continue;
            }
            if let Ok(q) = self.mail_queue(&inst).await {
                let n = q["count"].as_u64().unwrap_or(0);
                out.push((format!("mailq:{}", inst.name), n as f32));
            }
        }
        out
    }

    async fn mail_export(
        &self,
        inst: &Instance,
        address: &str,
        output: &std::path::Path,
    ) -> Result<Value> {
        let a = inst.mail.clone().unwrap_or_default().mailbox(address)?;
        if !output.is_absolute() || output.exists() {
            return Err(Error::bad_input(format!(
                "{}: give a new file (absolute path); an existing one is never overwritten",
                output.display()
            )));
        }
        let result = self
            .engine()?
            .snapshot(&self.mail_container(inst), &mail::maildir(&a), output)
            .await;
        let (sha256, bytes) = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_file(output);
                return Err(
                    if e.message.contains("404") || e.message.contains("No such") {
                        Error::not_found(format!(
                            "{a} has no mail yet, so there is nothing to export"
                        ))
                    } else {
                        e
                    },
                );
            }
        };
        Ok(json!({
            "instance": inst.name,
            "address": a,
            "file": output,
            "bytes": bytes,
            "sha256": sha256,
            "message": format!("{a} exported to {} (a tar of its Maildir, {bytes} bytes)", output.display()),
        }))
    }

    async fn mail_import(
        &self,
        inst: &Instance,
        address: &str,
        input: &std::path::Path,
    ) -> Result<Value> {
        let a = inst.mail.clone().unwrap_or_default().mailbox(address)?;
        if !input.is_absolute() {
            return Err(Error::bad_input(format!(
                "{}: give an absolute path",
                input.display()
            )));
        }
        // The archive is checked and rewritten without Dovecot's index files (the mailbox
        // re-indexes, and its own UIDs stay valid) before it reaches the container.
        let tmp = self
            .config
            .daemon
            .state_dir
            .join(format!("import-{}.tar", now()));
        let (src, dst) = (input.to_path_buf(), tmp.clone());
        let messages = tokio::task::spawn_blocking(move || clean_maildir_tar(&src, &dst))
            .await
            .map_err(|e| Error::failed(e.to_string()))?;
        let messages = match messages {
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let engine = self.engine()?;
        let container = self.mail_container(inst);
        let home = mail::maildir(&a).trim_end_matches("/Maildir").to_string();
        let result = async {
            run_ok(
                engine,
                &container,
                &["install", "-d", "-o", "vmail", "-g", "vmail", &home],
            )
            .await?;
            engine.upload(&container, &home, &tmp).await?;
            run_ok(engine, &container, &["chown", "-R", "vmail:vmail", &home]).await
        }
        .await;
        let _ = std::fs::remove_file(&tmp);
        result?;
        Ok(json!({
            "instance": inst.name,
            "address": a,
            "messages": messages,
            "message": format!("{messages} message(s) imported into {a}"),
        }))
    }

    /// The DKIM rotations in the background: switch a pending key once it resolves, withdraw
    /// retired keys when their time is up. Woken by `rotate`, else every `dkim_check_every`.
    pub(super) fn spawn_dkim_rotator(self: Arc<Self>) {
        tokio::spawn(async move {
            loop {
                let _ = tokio::time::timeout(
                    self.config
                        .mail
                        .dkim_check_every
                        .min(std::time::Duration::from_secs(60)),
                    self.mail_poke.notified(),
                )
                .await;
                // (Let the request that woke us end and publish its records first.)
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                if let Err(e) = self.dkim_step().await {
                    tracing::warn!("DKIM rotation: {e}");
                }
            }
        });
    }

    async fn dkim_step(self: &Arc<Self>) -> Result<()> {
        let due = |i: &Instance| {
            i.mail.as_ref().is_some_and(|m| {
                m.dkim
                    .values()
                    .any(|k| k.pending.is_some() || k.retiring.values().any(|t| *t <= now()))
            })
        };
        if !self.instances_snapshot().iter().any(due) {
            return Ok(());
        }
        let resolver = crate::dns::diagnose::resolver(&self.config.dns).map_err(Error::failed)?;
        let _lock = self.op_lock.lock().await;
        let mut changed = false;
        for inst in self.instances_snapshot().into_iter().filter(due) {
            let mut st = inst.mail.clone().unwrap_or_default();
            let state_dir = &self.config.daemon.state_dir;
            for (domain, k) in st.dkim.iter_mut() {
                if let Some(p) = k.pending.clone() {
                    let want = mail::keys(state_dir, domain)?
                        .into_iter()
                        .find(|(s, _)| *s == p)
                        .map(|(_, v)| v);
                    let name = format!("{p}._domainkey.{domain}.");
                    let seen = resolver
                        .txt_lookup(name.as_str())
                        .await
                        .map(|txt| {
                            txt.answers()
                                .iter()
                                .filter_map(|r| match &r.data {
                                    hickory_proto::rr::RData::TXT(t) => Some(t.to_string()),
                                    _ => None,
                                })
                                .collect::<Vec<_>>()
                        })
                        .unwrap_or_default();
                    let resolves = want
                        .as_deref()
                        .is_some_and(|w| seen.iter().any(|s| same_key(s, w)));
                    if resolves {
                        let old = std::mem::replace(&mut k.signing, p.clone());
                        k.pending = None;
                        k.retiring.insert(
                            old.clone(),
                            now() + self.config.mail.dkim_retire_after.as_secs(),
                        );
                        changed = true;
                        self.bus.publish(
                            "dkim-switched",
                            Some(&inst.name),
                            format!("{domain}: mail is now signed with {p} ({old} stays published until it retires)"),
                        );
                    }
                }
                let expired: Vec<String> = k
                    .retiring
                    .iter()
                    .filter(|(_, t)| **t <= now())
                    .map(|(s, _)| s.clone())
                    .collect();
                for s in expired {
                    mail::remove_key(state_dir, domain, &s)?;
                    k.retiring.remove(&s);
                    changed = true;
                    self.bus.publish(
                        "dkim-retired",
                        Some(&inst.name),
                        format!("{domain}: the old key {s} is withdrawn from DNS"),
                    );
                }
            }
            if changed {
                self.commit_mail(inst, st).await?;
            }
        }
        if changed {
            self.refresh_dns();
        }
        Ok(())
    }
}

/// Argon2 takes tens of milliseconds: off the async threads.
async fn hash(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || mail::hash_password(&password))
        .await
        .map_err(|e| Error::failed(e.to_string()))?
}

async fn run_ok(engine: &crate::runtime::Engine, container: &str, cmd: &[&str]) -> Result<()> {
    let (code, out) = engine.exec_output(container, cmd, 4096).await?;
    if code != 0 {
        return Err(Error::failed(format!(
            "{} failed in {container}: {}",
            cmd[0],
            out.trim()
        )));
    }
    Ok(())
}

/// Two DKIM TXT values carry the same key (a resolver may split or space them differently).
fn same_key(a: &str, b: &str) -> bool {
    let p = |s: &str| {
        s.split(';')
            .map(str::trim)
            .find_map(|t| t.strip_prefix("p="))
            .map(|v| v.replace([' ', '"'], ""))
    };
    p(a).is_some() && p(a) == p(b)
}

/// Copies a Maildir tar (entries under `Maildir/`, directories and regular files only)
/// without Dovecot's index files; returns the number of messages. Anything else is refused.
fn clean_maildir_tar(src: &std::path::Path, dst: &std::path::Path) -> Result<usize> {
    let bad = |why: String| {
        Error::bad_input(format!("{}: {why}", src.display()))
            .hint("give a tar made by `ilot mail export` (a Maildir/ directory)")
    };
    let file = std::fs::File::open(src).map_err(|e| bad(e.to_string()))?;
    let out = std::fs::File::create(dst)
        .map_err(|e| Error::failed(format!("cannot write {}: {e}", dst.display())))?;
    let mut archive = tar::Archive::new(file);
    let mut builder = tar::Builder::new(out);
    let mut messages = 0;
    for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(format!("not a readable tar: {e}")))?;
        let path = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        let inside = path.starts_with("Maildir")
            && path
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !inside {
            return Err(bad(format!("{} is outside Maildir/", path.display())));
        }
        let kind = entry.header().entry_type();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if kind.is_file() && name.starts_with("dovecot") {
            continue;
        }
        if !(kind.is_file() || kind.is_dir()) {
            return Err(bad(format!(
                "{} is neither a file nor a directory",
                path.display()
            )));
        }
        let parent = path
            .parent()
            .and_then(|p| p.file_name())
            .unwrap_or_default();
        if kind.is_file() && (parent == "cur" || parent == "new") {
            messages += 1;
        }
        let mut header = entry.header().clone();
        builder
            .append_data(&mut header, &path, &mut entry)
            .map_err(|e| Error::failed(format!("cannot write {}: {e}", dst.display())))?;
    }
    builder
        .finish()
        .map_err(|e| Error::failed(format!("cannot write {}: {e}", dst.display())))?;
    Ok(messages)
}
