//! The daemon: loads config and catalogue, opens the store, listens on the socket, connects to
//! the engine, recovers interrupted operations from the journal, then serves requests and
//! keeps the engine converged on the desired state.

use crate::api::server::Replies;
use crate::api::{Reply, Request};
use crate::catalog::Catalog;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::events::Bus;
use crate::runtime::observer::Observer;
use crate::runtime::Engine;
use crate::state::{Instance, Store};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

mod apps;
mod backup;
mod dns;
mod firewall;
mod guard;
mod mail;
mod monitor;
mod ops;
mod views;

pub struct Daemon {
    pub config: Config,
    pub config_path: Option<PathBuf>,
    pub catalog: Catalog,
    pub store: Arc<Store>,
    pub owner: String,
    pub bus: Bus,
    /// Set once the engine answered and the journal was recovered.
    runtime: OnceLock<(Engine, Arc<Observer>)>,
    /// Mirror of the store's instances, for reads that never touch the disk.
    instances: RwLock<BTreeMap<String, Instance>>,
    /// One mutating operation at a time; recovery holds it first.
    op_lock: Arc<tokio::sync::Mutex<()>>,
    /// The reverse proxy, or why it could not start (the rest of the daemon runs regardless).
    proxy: std::result::Result<Arc<crate::proxy::Proxy>, String>,
    /// Certificates for the proxy's domains (when the proxy runs).
    certs: Option<Arc<crate::certs::Certs>>,
    /// The authoritative DNS server, when a zone is served (`None` when none is, or when it
    /// could not start: `dns_server_error` then says why).
    dns_server: Option<Arc<crate::dns::serve::Server>>,
    dns_server_error: Option<String>,
    /// One RFC 2136 push at a time.
    dns_push_lock: tokio::sync::Mutex<()>,
    /// The last push failed: it is retried every minute until it succeeds.
    dns_push_failed: std::sync::atomic::AtomicBool,
    /// Served zones as last built, to skip re-signing an unchanged zone.
    dns_built: std::sync::Mutex<dns::BuiltCache>,
    /// Why the last firewall change failed, if it did.
    firewall_error: std::sync::Mutex<Option<String>>,
    /// One firewall change (or revert) at a time.
    firewall_lock: tokio::sync::Mutex<()>,
    /// The ban engine's jails, counters and bans.
    guard: guard::Guard,
    /// Sampling, history, alerts and their channels.
    monitor: monitor::Monitor,
    /// Wakes the DKIM rotator (a rotation was asked for).
    mail_poke: tokio::sync::Notify,
    /// True once the journal has been recovered: the daemon then serves every request.
    ready: std::sync::atomic::AtomicBool,
    started: Instant,
}

/// How often the daemon re-checks every instance for drift.
const RECONCILE_EVERY: Duration = Duration::from_secs(60);

pub fn run(config_path: Option<&Path>) -> i32 {
    let (config, config_path) = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let catalog = match Catalog::load(&config.daemon.catalog) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    // hickory-server logs every query at INFO (and a spurious WARN per answer in 0.26): that
    // would flood the journal of an exposed server, and costs a third of its throughput.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ILOT_LOG")
                .unwrap_or_else(|_| "info,hickory_server=error,hickory_proto=error".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(serve(config, config_path, catalog)) {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

fn fail(e: Error) -> i32 {
    eprintln!("ilot daemon: error: {e}");
    e.kind.exit_code()
}

async fn serve(config: Config, config_path: Option<PathBuf>, catalog: Catalog) -> Result<()> {
    let store = Arc::new(Store::open(&config.daemon.state_dir)?);
    crate::plan::set_state_root(config.daemon.state_dir.clone());
    let owner = match &config.daemon.owner {
        Some(o) => o.clone(),
        None => store.owner_id()?,
    };
    let listener = bind_socket(&config.daemon.socket, &config.daemon.socket_group)?;
    let instances = store
        .instances()?
        .into_iter()
        .map(|i| (i.name.clone(), i))
        .collect();
    let proxy = if config.proxy.enabled {
        crate::proxy::Proxy::start(config.proxy.clone())
            .await
            .map_err(|e| {
                tracing::error!("{e}");
                e.to_string()
            })
    } else {
        Err("disabled in the config ([proxy] enabled = false)".to_string())
    };
    let bus = Bus::new();
    let certs = proxy.as_ref().ok().map(|p| {
        crate::certs::Certs::start(
            config.acme.clone(),
            &config.daemon.state_dir,
            p.clone(),
            bus.clone(),
        )
    });
    let serves_dns = config
        .dns
        .zones
        .iter()
        .any(|z| z.mode == crate::config::ZoneMode::Serve);
    let (dns_server, dns_server_error) = if serves_dns {
        match crate::dns::serve::Server::start(&config.dns.listen).await {
            Ok(s) => (Some(s), None),
            Err(e) => {
                tracing::error!("{e}");
                (None, Some(e.to_string()))
            }
        }
    } else {
        (None, None)
    };
    let daemon = Arc::new(Daemon {
        dns_server,
        dns_server_error,
        dns_push_lock: tokio::sync::Mutex::new(()),
        dns_push_failed: std::sync::atomic::AtomicBool::new(false),
        dns_built: Default::default(),
        firewall_error: std::sync::Mutex::new(None),
        firewall_lock: tokio::sync::Mutex::new(()),
        guard: Default::default(),
        monitor: Default::default(),
        config,
        config_path,
        catalog,
        store: store.clone(),
        owner,
        bus,
        certs,
        runtime: OnceLock::new(),
        instances: RwLock::new(instances),
        op_lock: Arc::new(tokio::sync::Mutex::new(())),
        proxy,
        ready: std::sync::atomic::AtomicBool::new(false),
        mail_poke: tokio::sync::Notify::new(),
        started: Instant::now(),
    });
    daemon.bus.spawn_history(store);
    daemon.refresh_routes();
    daemon.refresh_dns();
    daemon.start_firewall();
    daemon.start_guard();
    daemon.start_monitor();
    let d = daemon.clone();
    tokio::spawn(async move {
        // Served zones are re-signed before their signatures expire (a zone older than
        // RESIGN_EVERY is rebuilt), and a failed push is tried again.
        loop {
            tokio::time::sleep(dns::RETRY_EVERY).await;
            d.refresh_dns_if_due();
        }
    });
    tracing::info!(socket = %daemon.config.daemon.socket.display(), owner = %daemon.owner, "ilot daemon listening");

    // Hold the operation lock until the journal is recovered: mutating requests wait for it.
    let recovery_guard = daemon.op_lock.clone().lock_owned().await;
    let d = daemon.clone();
    tokio::spawn(async move { d.connect_and_recover(recovery_guard).await });
    let server = tokio::spawn(crate::api::server::serve(listener, daemon.clone()));

    shutdown_signal().await;
    tracing::info!("shutting down: waiting for the operation in progress, if any");
    server.abort();
    // An operation in progress may finish (within systemd's 30 s stop timeout); one cut short
    // is recovered from the journal at the next start. Before recovery there is none.
    if daemon.ready.load(std::sync::atomic::Ordering::SeqCst) {
        let _ = tokio::time::timeout(Duration::from_secs(25), daemon.op_lock.lock()).await;
    }
    let _ = std::fs::remove_file(&daemon.config.daemon.socket);
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Binds the API socket: refuses if another daemon answers there, replaces a stale socket,
/// and restricts it to root and the `ilot` group (0660).
fn bind_socket(path: &Path, group: &str) -> Result<tokio::net::UnixListener> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(Error::conflict(format!(
            "another ilot daemon is already listening on {}",
            path.display()
        ))
        .hint("stop it first, or give this one another [daemon] socket"));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::failed(format!("cannot create {}: {e}", dir.display())))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::failed(format!(
                "cannot remove stale socket {}: {e}",
                path.display()
            )))
        }
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| Error::failed(format!("cannot listen on {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| Error::failed(format!("cannot chmod {}: {e}", path.display())))?;
    if let Some(gid) = group_id(group) {
        if let Err(e) = std::os::unix::fs::chown(path, None, Some(gid)) {
            tracing::warn!("cannot give group {group} the socket: {e}");
        }
    }
    Ok(listener)
}

fn group_id(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    // SAFETY: getgrnam returns a pointer to static storage or null; read before any other call.
    let gr = unsafe { libc::getgrnam(cname.as_ptr()) };
    if gr.is_null() {
        None
    } else {
        Some(unsafe { (*gr).gr_gid })
    }
}

impl Daemon {
    fn runtime(&self) -> Result<&(Engine, Arc<Observer>)> {
        self.runtime.get().ok_or_else(|| {
            Error::unavailable(format!(
                "the Docker engine at {} is not reachable yet",
                self.config.daemon.docker
            ))
            .hint("start it (systemctl start docker, or dockerd); ilot retries every 2 s")
        })
    }

    fn certs(&self) -> Result<&Arc<crate::certs::Certs>> {
        self.certs.as_ref().ok_or_else(|| {
            let why = self.proxy.as_ref().err().cloned().unwrap_or_default();
            Error::unavailable(format!(
                "certificates need the proxy, which is not running: {why}"
            ))
        })
    }

    fn engine(&self) -> Result<&Engine> {
        Ok(&self.runtime()?.0)
    }

    async fn connect_and_recover(self: Arc<Self>, guard: tokio::sync::OwnedMutexGuard<()>) {
        let mut warned = false;
        let engine = loop {
            match Engine::connect(&self.config.daemon.docker, &self.owner).await {
                Ok(e) => break e,
                Err(e) => {
                    if !warned {
                        tracing::warn!("{e}; retrying");
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        };
        let observer = Observer::new(engine.clone());
        observer.refresh().await;
        observer.spawn();
        if let Ok(proxy) = &self.proxy {
            proxy.set_observer(observer.clone());
        }
        let _ = self.runtime.set((engine, observer));
        self.clone().spawn_tls_reloader();
        self.clone().spawn_dkim_rotator();
        self.spawn_backup_schedule();
        if let Err(e) = self.recover().await {
            tracing::error!("recovery: {e}");
        }
        self.runtime().expect("runtime set above").1.refresh().await;
        // The apps' jails can follow their containers now that the engine answers, and its
        // networks join the allowlist.
        self.rebuild_jails();
        let d = self.clone();
        tokio::spawn(async move { d.refresh_allowlist().await });
        self.ready.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(guard);
        // Drift detection: converge every instance periodically.
        loop {
            tokio::time::sleep(RECONCILE_EVERY).await;
            let _lock = self.op_lock.lock().await;
            if let Err(e) = self.reconcile_all().await {
                tracing::warn!("reconcile: {e}");
            }
        }
    }

    pub async fn handle(self: &Arc<Self>, req: Request, tx: &Replies) -> Result<serde_json::Value> {
        if req.mutates() {
            self.runtime()?;
            let _lock = self.op_lock.lock().await;
            let result = self.handle_mutation(req, tx).await;
            // Reads and requests that follow must see what this operation did.
            self.runtime()?.1.refresh().await;
            self.refresh_routes();
            self.refresh_dns();
            self.refresh_firewall();
            self.rebuild_jails();
            return result;
        }
        match req {
            Request::Status => Ok(self.status_view()),
            Request::Catalog => Ok(self.catalog_view()),
            Request::AppList => Ok(self.list_view()),
            Request::AppShow { name } => self.show_view(&name),
            Request::AppInfo { app } => self.app_info(&app),
            Request::Events { limit } => {
                Ok(serde_json::to_value(self.store.events(limit.min(1000))?).unwrap_or_default())
            }
            Request::Plan => self.plan_all().await,
            Request::DomainList => Ok(self.domain_view()),
            Request::DnsShow { domain } => self.dns_view(domain.as_deref()),
            Request::DnsApply { dry_run } => self.dns_apply(dry_run).await,
            Request::Diagnose { what } => self.diagnose(&what).await,
            Request::FirewallShow => Ok(self.firewall_view()),
            Request::FirewallAllow { port } => {
                let _one = self.firewall_lock.lock().await;
                self.firewall_allow(&port)
            }
            Request::FirewallDeny { port } => {
                let _one = self.firewall_lock.lock().await;
                self.firewall_deny(&port)
            }
            Request::FirewallConfirm => {
                let _one = self.firewall_lock.lock().await;
                self.firewall_confirm()
            }
            Request::BanList => self.ban_list(),
            Request::BanAdd { address, seconds } => self.ban_add(&address, seconds).await,
            Request::BanRemove { address } => self.ban_remove(&address).await,
            Request::GuardShow => self.guard_view(),
            Request::Metrics { name, since_secs } => self.metrics_view(name.as_deref(), since_secs),
            Request::AlertList => Ok(self.alert_view()),
            Request::AlertSilence { rule, seconds } => self.alert_silence(&rule, seconds),
            Request::AlertAck => self.alert_ack(),
            Request::AlertTest => self.alert_test().await,
            Request::CertList => Ok(serde_json::to_value(self.certs()?.list()).unwrap_or_default()),
            Request::CertRenew { domain, force } => {
                let list = self.certs()?.renew(domain.as_deref(), force).await?;
                Ok(serde_json::to_value(list).unwrap_or_default())
            }
            Request::AppLogs(p) => self.logs(p, tx).await,
            Request::Mail { instance, op } => self.mail(instance, op).await,
            Request::BackupList => self.backup_list(&Progress { tx }).await,
            Request::BackupCheck { read_data } => {
                self.backup_check(read_data, &Progress { tx }).await
            }
            _ => unreachable!("mutating requests handled above"),
        }
    }

    async fn handle_mutation(
        self: &Arc<Self>,
        req: Request,
        tx: &Replies,
    ) -> Result<serde_json::Value> {
        let progress = Progress { tx };
        match req {
            Request::AppInstall(p) => self.install(p, &progress).await,
            Request::AppUpgrade(p) => self.upgrade(p, &progress).await,
            Request::AppRemove(p) => self.remove(p, &progress).await,
            Request::AppStart { name } => self.start(&name, &progress).await,
            Request::AppStop { name } => self.stop(&name, &progress).await,
            Request::AppRestart { name } => self.restart(&name, &progress).await,
            Request::DomainAdd { domain, instance } => {
                self.domain_add(&domain, &instance, &progress).await
            }
            Request::DomainRemove { domain } => self.domain_remove(&domain, &progress).await,
            Request::Mail { instance, op } => self.mail(instance, op).await,
            Request::BackupInit { reveal } => self.backup_init(reveal, &progress).await,
            Request::BackupRun { instance } => self.backup_run(instance, &progress).await,
            Request::BackupRecover => self.backup_recover(&progress).await,
            Request::BackupDrill { instance } => self.backup_drill(instance, &progress).await,
            Request::BackupRestore {
                snapshot,
                instance,
                replace,
                as_name,
                domain,
            } => {
                self.backup_restore_request(
                    &snapshot,
                    instance.as_deref(),
                    replace,
                    as_name,
                    domain,
                    &progress,
                )
                .await
            }
            _ => unreachable!("read requests handled by handle()"),
        }
    }

    /// Rebuilds the proxy's routes from the instances that have a domain.
    fn refresh_routes(&self) {
        let Ok(proxy) = &self.proxy else { return };
        let mut routes: std::collections::HashMap<String, Vec<crate::proxy::Target>> =
            Default::default();
        for inst in self.instances.read().expect("instances lock").values() {
            for domain in inst.domains() {
                for r in &inst.manifest.needs.routes {
                    routes
                        .entry(domain.clone())
                        .or_default()
                        .push(crate::proxy::Target {
                            path: r.path.clone(),
                            instance: inst.name.clone(),
                            container: crate::plan::container_name(&inst.name, &r.service),
                            port: r.port,
                            max_body: crate::catalog::parse_memory(&r.max_body).unwrap_or(100 << 20)
                                as u64,
                        });
                }
            }
        }
        // Each mail domain's MTA-STS policy (https://mta-sts.DOMAIN/.well-known/mta-sts.txt)
        // and its mail clients' autoconfiguration (src/mail/autoconfig.rs).
        use crate::mail::autoconfig;
        use crate::proxy::Document;
        let mut documents = std::collections::HashMap::new();
        for inst in self.instances.read().expect("instances lock").values() {
            let Some(mx) = inst.domain.as_deref() else {
                continue;
            };
            let policy = crate::dns::mta_sts_policy(mx, self.config.acme.enabled);
            // (A mail app ilot does not configure knows its own ports: MTA-STS only.)
            let endpoints =
                inst.manifest
                    .needs
                    .mail_files
                    .is_some()
                    .then(|| autoconfig::Endpoints {
                        host: mx,
                        imaps: self.published_port(inst, "imaps_port", 993),
                        submissions: self.published_port(inst, "submissions_port", 465),
                        submission: self.published_port(inst, "submission_port", 587),
                    });
            for m in crate::dns::mail_domains(inst) {
                let at = |host: &str, path: &str| (format!("{host}.{m}"), path.to_string());
                documents.insert(
                    at("mta-sts", "/.well-known/mta-sts.txt"),
                    Document::new("text/plain; charset=utf-8", policy.clone()),
                );
                let Some(endpoints) = &endpoints else {
                    continue;
                };
                let xml = "application/xml; charset=utf-8";
                documents.insert(
                    at("autoconfig", autoconfig::THUNDERBIRD_PATH),
                    Document::new(xml, autoconfig::thunderbird(&m, endpoints)),
                );
                documents.insert(
                    at("autoconfig", autoconfig::APPLE_PATH),
                    Document::new(
                        "application/x-apple-aspen-config",
                        autoconfig::apple(&m, endpoints),
                    ),
                );
                for path in autoconfig::AUTODISCOVER_PATHS {
                    documents.insert(
                        at("autodiscover", path),
                        Document::new(xml, autoconfig::autodiscover(endpoints)),
                    );
                }
            }
        }
        if let Err(e) = proxy.set_routes(routes, documents) {
            tracing::error!("proxy routes: {e}");
        }
        if let Some(certs) = &self.certs {
            certs.poke();
        }
    }

    /// A copy of every instance (the lock is not held while the caller works).
    fn instances_snapshot(&self) -> Vec<Instance> {
        self.instances
            .read()
            .expect("instances lock")
            .values()
            .cloned()
            .collect()
    }

    fn instance(&self, name: &str) -> Result<Instance> {
        self.instances
            .read()
            .expect("instances lock")
            .get(name)
            .cloned()
            .ok_or_else(|| {
                Error::not_found(format!("no instance named {name:?}"))
                    .hint("see `ilot app list` for installed instances")
            })
    }
}

/// Reports progress to the client (if still connected) and to the log.
pub struct Progress<'a> {
    tx: &'a Replies,
}

impl Progress<'_> {
    pub fn step(&self, message: impl Into<String>) {
        let message = message.into();
        tracing::info!("{message}");
        let _ = self.tx.send(Reply::Progress {
            message,
            current: None,
            total: None,
        });
    }
    /// The client's channel, for progress reported from another thread.
    pub fn sender(&self) -> Replies {
        self.tx.clone()
    }

    pub fn bytes(&self, message: String, done: Option<(u64, u64)>) {
        let _ = self.tx.send(Reply::Progress {
            message,
            current: done.map(|d| d.0),
            total: done.map(|d| d.1),
        });
    }
}
