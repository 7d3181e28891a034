//! The guard in the daemon: jails built from the config, the built-in defaults and the
//! installed apps' `[needs] log_filters`; one engine task that reads every source's lines,
//! counts failures, and bans in batches (one nft transaction, one store commit per batch);
//! expiry, manual bans, and blocklists. Bans are kept in the store and put back in the
//! kernel at start, so a restart or a reboot keeps them.

use super::Daemon;
use crate::config::JailConfig;
use crate::error::{Error, Result};
use crate::firewall;
use crate::guard::filter::{Filter, Sessions, Verdict};
use crate::guard::jail::{ban_net, Policy, Tracker};
use crate::guard::sources::{self, Lines};
use crate::guard::{parse_blocklist, Allowlist, Ban};
use crate::state::now;
use ipnet::IpNet;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Where a jail reads.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    File(PathBuf),
    Journal(Vec<String>),
    Container(String),
    /// A file in one of our volumes (the engine's volume name, the path inside it).
    VolumeFile(String, PathBuf),
}

impl Source {
    fn key(&self) -> Arc<str> {
        match self {
            Source::File(p) => format!("file:{}", p.display()).into(),
            Source::Journal(units) => format!("journal:{}", units.join(",")).into(),
            Source::Container(c) => format!("container:{c}").into(),
            Source::VolumeFile(v, p) => format!("volume:{v}/{}", p.display()).into(),
        }
    }
}

struct Jail {
    name: String,
    filter: Arc<Filter>,
    policy: Policy,
    sources: Vec<Source>,
    /// The filter's session memory, per source (sshd's PIDs of one log are not another's).
    sessions: HashMap<Arc<str>, Sessions>,
    /// Failures seen and bans made since the daemon started.
    failures: u64,
    bans: u64,
}

#[derive(Default)]
struct State {
    jails: Vec<Jail>,
    by_source: HashMap<Arc<str>, Vec<usize>>,
    tracker: Tracker,
    /// Every ban, active or remembered, by prefix.
    bans: BTreeMap<IpNet, Ban>,
    /// Active timed bans by end time, to announce their expiry.
    expiries: BTreeSet<(u64, IpNet)>,
    allow: Allowlist,
    /// Jails that could not be built, and why.
    errors: Vec<String>,
}

#[derive(Default)]
pub(super) struct Guard {
    state: Mutex<State>,
    tx: OnceLock<sources::Sender>,
    /// Bans on their way to the store, written by a task of their own so that a slow disk
    /// never holds up the next ban.
    persist: OnceLock<tokio::sync::mpsc::UnboundedSender<Vec<Ban>>>,
    /// The followers of sources that come and go with the apps (containers' output, files in
    /// volumes), by source key.
    followers: Mutex<HashMap<Arc<str>, tokio::task::JoinHandle<()>>>,
    blocklists: Mutex<BlocklistStatus>,
}

#[derive(Default, Clone, serde::Serialize)]
struct BlocklistStatus {
    entries: usize,
    loaded: Option<u64>,
    lists: BTreeMap<String, Value>,
}

/// A failure count that reached its jail's maxretry.
struct Candidate {
    net: IpNet,
    jail: usize,
}

const BUILT_IN_JAILS: [&str; 3] = ["sshd", "proxy-auth", "proxy-flood"];

impl Daemon {
    fn guard_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.guard.state.lock().expect("guard lock")
    }

    /// Whether bans reach the kernel. The guard's sets live in the firewall's table, and a
    /// disabled firewall means ilot leaves nftables alone: bans are then decided, kept and
    /// listed (for the admin's own firewall, or to try a jail out), not enforced.
    fn bans_enforced(&self) -> bool {
        self.config.firewall.enabled
    }

    /// Why bans are not enforced, for `ilot guard` and `ilot ban list` (None when they are).
    fn not_enforced_why(&self) -> Option<&'static str> {
        (!self.bans_enforced()).then_some(
            "the firewall is disabled ([firewall] enabled = false): bans are listed, not \
             enforced; enable it in /etc/ilot/ilot.toml and restart the daemon to drop banned \
             addresses",
        )
    }

    /// At start: bans back into the kernel, jails built, sources followed, engine started.
    pub(super) fn start_guard(self: &Arc<Self>) {
        if !self.config.guard.enabled {
            return;
        }
        let now = now();
        let stored: Vec<Ban> = self.store.bans().unwrap_or_else(|e| {
            tracing::error!("guard: cannot read the bans: {e}");
            Vec::new()
        });
        let active: Vec<(IpNet, Option<u64>)> = stored
            .iter()
            .filter(|b| b.active(now))
            .map(|b| (b.net, b.remaining(now)))
            .collect();
        {
            let mut st = self.guard_state();
            for b in stored {
                if let (true, Some(u)) = (b.active(now), b.until) {
                    st.expiries.insert((u, b.net));
                }
                st.bans.insert(b.net, b);
            }
        }
        if let Some(why) = self.not_enforced_why() {
            tracing::warn!("guard: {why}");
        } else if let Err(e) = firewall::add_bans(&active) {
            tracing::error!("guard: cannot restore {} bans: {e}", active.len());
        } else if !active.is_empty() {
            tracing::info!("guard: {} bans restored", active.len());
        }
        self.refresh_allowlist_static();
        self.rebuild_jails();

        let (tx, rx) = tokio::sync::mpsc::channel::<Lines>(256);
        let _ = self.guard.tx.set(tx.clone());
        let (files, journals) = {
            let st = self.guard_state();
            let mut files = BTreeMap::new();
            let mut journals = BTreeMap::new();
            for j in &st.jails {
                for s in &j.sources {
                    match s {
                        Source::File(p) => {
                            files.insert(s.key(), p.clone());
                        }
                        Source::Journal(u) => {
                            journals.insert(s.key(), u.clone());
                        }
                        Source::Container(_) | Source::VolumeFile(..) => {}
                    }
                }
            }
            (files, journals)
        };
        sources::follow_files(files.into_iter().collect(), tx.clone());
        for (key, units) in journals {
            sources::follow_journal(key, units, tx.clone());
        }
        let (persist, mut to_store) = tokio::sync::mpsc::unbounded_channel::<Vec<Ban>>();
        let _ = self.guard.persist.set(persist);
        let store = self.store.clone();
        tokio::spawn(async move {
            while let Some(mut bans) = to_store.recv().await {
                while let Ok(more) = to_store.try_recv() {
                    bans.extend(more);
                }
                let store = store.clone();
                let written = tokio::task::spawn_blocking(move || {
                    store.write(|w| {
                        for b in &bans {
                            w.put_ban(&b.net.to_string(), b)?;
                        }
                        Ok(())
                    })
                })
                .await;
                if let Ok(Err(e)) = written {
                    tracing::error!("guard: cannot record bans: {e}");
                }
            }
        });
        let d = self.clone();
        tokio::spawn(async move { d.run_guard(rx).await });
        let d = self.clone();
        tokio::spawn(async move {
            loop {
                d.refresh_allowlist().await;
                tokio::time::sleep(Duration::from_secs(300)).await;
            }
        });
        if !self.config.guard.blocklists.is_empty() {
            let d = self.clone();
            tokio::spawn(async move { d.run_blocklists().await });
        }
    }

    /// The engine: lines in, bans out; a tick every second for expiries.
    async fn run_guard(self: Arc<Self>, mut rx: tokio::sync::mpsc::Receiver<Lines>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                Some(batch) = rx.recv() => {
                    let mut found = Vec::new();
                    self.guard_lines(&batch, &mut found);
                    // Whatever else is already queued goes into the same batch of bans.
                    while found.len() < 50_000 {
                        let Ok(more) = rx.try_recv() else { break };
                        self.guard_lines(&more, &mut found);
                    }
                    if !found.is_empty() {
                        self.ban_candidates(found).await;
                    }
                }
                _ = tick.tick() => {
                    ticks += 1;
                    self.expire_bans(ticks.is_multiple_of(60), ticks.is_multiple_of(3600));
                }
            }
        }
    }

    /// Runs the lines of one source through the filters of the jails that read it.
    fn guard_lines(&self, batch: &Lines, found: &mut Vec<Candidate>) {
        let now = now();
        let prefix = self.config.guard.ipv6_prefix;
        let mut guard = self.guard_state();
        let st = &mut *guard;
        let Some(jails) = st.by_source.get(&batch.source).cloned() else {
            return;
        };
        for j in jails {
            let jail = &mut st.jails[j];
            let findtime = jail.policy.findtime.as_secs();
            let sessions = jail.sessions.entry(batch.source.clone()).or_default();
            for line in &batch.lines {
                let Verdict::Failure { addr, time } = jail.filter.check(line, sessions) else {
                    continue;
                };
                // A line older than the window (a log replayed, a restored file) is history.
                if time.is_some_and(|t| t + findtime + 60 < now) {
                    continue;
                }
                jail.failures += 1;
                let net = ban_net(addr, prefix);
                if st.bans.get(&net).is_some_and(|b| b.active(now)) {
                    continue;
                }
                if st
                    .tracker
                    .failure(j, net, time.unwrap_or(now).min(now), &jail.policy)
                {
                    found.push(Candidate { net, jail: j });
                }
            }
        }
    }

    /// Bans the candidates that are not allowlisted nor banned already: one nft transaction,
    /// one store commit, one event each.
    async fn ban_candidates(&self, found: Vec<Candidate>) {
        let now = now();
        let forget = self.config.guard.forget_after.as_secs();
        let mut new = Vec::new();
        {
            let mut guard = self.guard_state();
            let st = &mut *guard;
            let peers = crate::guard::live_ssh_peers(&st.allow.ssh_ports);
            let mut seen = BTreeSet::new();
            for c in found {
                if !seen.insert(c.net) || st.bans.get(&c.net).is_some_and(|b| b.active(now)) {
                    continue;
                }
                if let Some(why) = st.allow.why_allowed(&c.net, &peers) {
                    tracing::info!("guard: {} not banned ({why})", c.net);
                    continue;
                }
                let jail = &mut st.jails[c.jail];
                let previous = st
                    .bans
                    .get(&c.net)
                    .filter(|b| b.until.is_some_and(|u| u + forget > now))
                    .map_or(0, |b| b.count);
                let length = jail.policy.ban_length(previous);
                let ban = Ban {
                    net: c.net,
                    jail: jail.name.clone(),
                    since: now,
                    until: length.map(|l| now + l.as_secs()),
                    count: previous + 1,
                    reason: format!(
                        "{} failures within {}",
                        jail.policy.maxretry,
                        humantime::format_duration(jail.policy.findtime)
                    ),
                };
                jail.bans += 1;
                new.push(ban);
            }
        }
        if new.is_empty() {
            return;
        }
        let elements: Vec<(IpNet, Option<u64>)> =
            new.iter().map(|b| (b.net, b.remaining(now))).collect();
        let enforced = self.bans_enforced();
        let applied = tokio::task::spawn_blocking(move || {
            if !enforced {
                return Ok(());
            }
            firewall::add_bans(&elements).or_else(|e| {
                // One bad element fails a transaction: the others go in one by one.
                tracing::warn!(
                    "guard: batch of {} bans refused ({e}); adding one by one",
                    elements.len()
                );
                for el in &elements {
                    if let Err(e) = firewall::add_bans(std::slice::from_ref(el)) {
                        tracing::error!("guard: cannot ban {}: {e}", el.0);
                    }
                }
                Ok::<(), Error>(())
            })
        })
        .await;
        if let Ok(Err(e)) | Err(e) = applied.map_err(|e| Error::failed(e.to_string())) {
            tracing::error!("guard: {e}");
        }
        // Listed once in the kernel, not before: `ilot ban list` never shows a ban that does
        // not drop yet. (Batches come from the one engine task, so none decides the same
        // address in between.)
        {
            let mut st = self.guard_state();
            for b in &new {
                if let Some(u) = b.until {
                    st.expiries.insert((u, b.net));
                }
                st.bans.insert(b.net, b.clone());
            }
        }
        let messages: Vec<String> = new.iter().map(describe_ban).collect();
        self.bus
            .publish_batch("ban", &messages, "addresses banned", "ilot ban list");
        if let Some(persist) = self.guard.persist.get() {
            let _ = persist.send(new);
        }
    }

    /// Announces bans the kernel has let expire; every minute, drops ended failure windows;
    /// every hour, forgets old offenders.
    fn expire_bans(&self, windows: bool, forget: bool) {
        let now = now();
        let mut expired = Vec::new();
        {
            let mut st = self.guard_state();
            while let Some(&(until, net)) = st.expiries.first() {
                if until > now {
                    break;
                }
                st.expiries.pop_first();
                expired.push(net);
            }
            if windows {
                let findtimes: Vec<u64> = st
                    .jails
                    .iter()
                    .map(|j| j.policy.findtime.as_secs())
                    .collect();
                st.tracker
                    .expire(now, |j| findtimes.get(j).copied().unwrap_or(3600));
            }
            if forget {
                let keep = self.config.guard.forget_after.as_secs();
                let old: Vec<IpNet> = st
                    .bans
                    .values()
                    .filter(|b| b.until.is_some_and(|u| u + keep < now))
                    .map(|b| b.net)
                    .collect();
                for n in &old {
                    st.bans.remove(n);
                }
                drop(st);
                let _ = self.store.write(|w| {
                    for n in &old {
                        w.delete_ban(&n.to_string())?;
                    }
                    Ok(())
                });
            }
        }
        let messages: Vec<String> = expired
            .iter()
            .map(|net| format!("{net} unbanned: the ban expired"))
            .collect();
        self.bus
            .publish_batch("unban", &messages, "bans expired", "ilot ban list");
    }

    /// Builds the jails: the built-in ones (unless disabled), the config's, and one per
    /// `[needs] log_filters` entry of each installed app; then follows the apps' containers and
    /// log files.
    pub(super) fn rebuild_jails(&self) {
        if !self.config.guard.enabled {
            return;
        }
        let g = &self.config.guard;
        // (jail, filter, mode, policy, sources)
        let mut specs: Vec<(String, String, Option<String>, Policy, Vec<Source>)> = Vec::new();
        let proxy_log = self
            .proxy
            .as_ref()
            .ok()
            .map(|_| Source::File(self.config.proxy.access_log.clone()));
        for name in BUILT_IN_JAILS {
            let cfg = g.jails.get(name).cloned().unwrap_or_default();
            if cfg.enabled == Some(false) {
                continue;
            }
            let mut defaults = g.defaults.clone();
            let sources = match name {
                "sshd" => sshd_sources(),
                "proxy-flood" => {
                    defaults.maxretry = 600;
                    defaults.findtime = Duration::from_secs(60);
                    defaults.bantime = Duration::from_secs(600);
                    proxy_log.clone().into_iter().collect()
                }
                _ => {
                    defaults.maxretry = 10;
                    proxy_log.clone().into_iter().collect()
                }
            };
            let sources = if has_sources(&cfg) {
                jail_sources(&cfg, &proxy_log)
            } else {
                sources
            };
            let filter = cfg.filter.clone().unwrap_or_else(|| name.to_string());
            specs.push((
                name.to_string(),
                filter,
                cfg.mode.clone(),
                cfg.policy(&defaults),
                sources,
            ));
        }
        let instances = self.instances_snapshot();
        // An app's jail (INSTANCE-FILTER) is set up by its manifest; a [guard.jails] entry of
        // that name without sources of its own only changes its mode and policy.
        let app_jails: Vec<String> = instances
            .iter()
            .flat_map(|i| {
                i.manifest
                    .needs
                    .log_filters
                    .iter()
                    .map(|lf| format!("{}-{}", i.name, lf.filter))
            })
            .collect();
        for (name, cfg) in &g.jails {
            if BUILT_IN_JAILS.contains(&name.as_str())
                || cfg.enabled == Some(false)
                || (app_jails.contains(name) && !has_sources(cfg))
            {
                continue;
            }
            let filter = cfg.filter.clone().unwrap_or_else(|| name.clone());
            specs.push((
                name.clone(),
                filter,
                cfg.mode.clone(),
                cfg.policy(&g.defaults),
                jail_sources(cfg, &proxy_log),
            ));
        }
        for inst in instances {
            for lf in &inst.manifest.needs.log_filters {
                let source = match (&lf.service, &lf.volume, lf.volume_path()) {
                    (Some(svc), _, _) => Some(Source::Container(crate::plan::container_name(
                        &inst.name, svc,
                    ))),
                    (None, Some(vol), Some(path)) => Some(Source::VolumeFile(
                        crate::plan::volume_name(&inst.name, vol),
                        path,
                    )),
                    _ => proxy_log.clone(),
                };
                let jail = format!("{}-{}", inst.name, lf.filter);
                let cfg = g.jails.get(&jail).cloned().unwrap_or_default();
                if cfg.enabled == Some(false) {
                    continue;
                }
                specs.push((
                    jail,
                    lf.filter.clone(),
                    cfg.mode.clone(),
                    cfg.policy(&g.defaults),
                    source.into_iter().collect(),
                ));
            }
        }
        let mut st = self.guard_state();
        let old: HashMap<String, (u64, u64)> = st
            .jails
            .iter()
            .map(|j| (j.name.clone(), (j.failures, j.bans)))
            .collect();
        let mut filters: HashMap<(String, Option<String>), Arc<Filter>> = HashMap::new();
        let mut jails = Vec::new();
        let mut errors = Vec::new();
        for (name, filter, mode, policy, sources) in specs {
            let key = (filter, mode);
            let f = match filters.get(&key) {
                Some(f) => f.clone(),
                None => match Filter::load_mode(&key.0, key.1.as_deref(), &g.filters_dir) {
                    Ok(f) => {
                        let f = Arc::new(f);
                        filters.insert(key.clone(), f.clone());
                        f
                    }
                    Err(e) => {
                        tracing::error!("guard: jail {name}: {e}");
                        errors.push(format!("jail {name}: {}", e.message));
                        continue;
                    }
                },
            };
            let (failures, bans) = old.get(&name).copied().unwrap_or_default();
            jails.push(Jail {
                name,
                filter: f,
                policy,
                sources,
                sessions: HashMap::new(),
                failures,
                bans,
            });
        }
        let mut by_source: HashMap<Arc<str>, Vec<usize>> = HashMap::new();
        for (i, j) in jails.iter().enumerate() {
            for s in &j.sources {
                by_source.entry(s.key()).or_default().push(i);
            }
        }
        // Counters follow jail indices: start over for the new set of jails.
        st.tracker = Tracker::default();
        st.jails = jails;
        st.by_source = by_source;
        st.errors = errors;
        let dynamic: BTreeMap<Arc<str>, Source> = st
            .jails
            .iter()
            .flat_map(|j| j.sources.iter())
            .filter(|s| matches!(s, Source::Container(_) | Source::VolumeFile(..)))
            .map(|s| (s.key(), s.clone()))
            .collect();
        drop(st);
        self.follow_dynamic(dynamic);
    }

    /// Starts a follower for each container or volume file a jail reads, stops those no jail
    /// reads any more.
    fn follow_dynamic(&self, wanted: BTreeMap<Arc<str>, Source>) {
        let (Some(tx), Ok(engine)) = (self.guard.tx.get(), self.engine()) else {
            return;
        };
        let mut running = self.guard.followers.lock().expect("followers lock");
        running.retain(|key, task| {
            let keep = wanted.contains_key(key);
            if !keep {
                task.abort();
            }
            keep
        });
        for (key, source) in wanted {
            if running.contains_key(&key) {
                continue;
            }
            let task = match source {
                Source::VolumeFile(volume, path) => {
                    sources::follow_volume_file(engine.clone(), volume, path, tx.clone())
                }
                Source::Container(name) => {
                    sources::follow_container(engine.docker.clone(), name, tx.clone())
                }
                // Followed once for the daemon's life (follow_files, follow_journal).
                Source::File(_) | Source::Journal(_) => continue,
            };
            running.insert(key, task);
        }
    }

    /// The allowlist's fixed part: loopback is implied; config addresses and CIDRs; SSH ports.
    fn refresh_allowlist_static(&self) {
        let mut nets = Vec::new();
        for a in &self.config.guard.allow {
            if let Ok(n) = a.parse::<IpNet>() {
                nets.push((n.trunc(), format!("allowlisted ({a})")));
            } else if let Ok(ip) = a.parse::<IpAddr>() {
                nets.push((IpNet::from(ip), format!("allowlisted ({a})")));
            }
        }
        let mut st = self.guard_state();
        st.allow.nets = nets;
        st.allow.ssh_ports = self
            .config
            .firewall
            .ssh_ports
            .clone()
            .unwrap_or_else(firewall::ssh_ports);
    }

    /// The allowlist's moving parts: host names resolved again, Docker's networks.
    pub(super) async fn refresh_allowlist(&self) {
        if !self.config.guard.enabled {
            return;
        }
        let mut nets = Vec::new();
        for a in &self.config.guard.allow {
            if a.parse::<IpNet>().is_ok() || a.parse::<IpAddr>().is_ok() {
                continue;
            }
            match tokio::net::lookup_host((a.as_str(), 0)).await {
                Ok(addrs) => {
                    for s in addrs {
                        let ip =
                            crate::guard::filter::parse_addr(&s.ip().to_string()).unwrap_or(s.ip());
                        nets.push((IpNet::from(ip), format!("allowlisted ({a})")));
                    }
                }
                Err(e) => tracing::warn!("guard: cannot resolve allowlisted {a}: {e}"),
            }
        }
        if let Ok(engine) = self.engine() {
            for (name, subnet) in engine.network_subnets().await.unwrap_or_default() {
                if let Ok(n) = subnet.parse::<IpNet>() {
                    nets.push((n, format!("Docker network {name}")));
                }
            }
        }
        self.refresh_allowlist_static();
        self.guard_state().allow.nets.extend(nets);
    }

    /// Imports the blocklists, and again every `refresh` (the shortest of them).
    async fn run_blocklists(self: Arc<Self>) {
        let lists = self.config.guard.blocklists.clone();
        let every = lists
            .iter()
            .map(|b| b.refresh)
            .min()
            .unwrap_or(Duration::from_secs(86_400));
        // Each list's last good content: a list that cannot be fetched keeps it.
        let mut last_good: HashMap<String, Vec<IpNet>> = HashMap::new();
        loop {
            let mut status = BTreeMap::new();
            for b in &lists {
                let text = match (&b.file, &b.url) {
                    (Some(f), _) => std::fs::read_to_string(f)
                        .map_err(|e| format!("cannot read {}: {e}", f.display())),
                    (None, Some(u)) => fetch(u).await,
                    _ => Err("no file nor url".into()),
                };
                match text {
                    Ok(t) => {
                        let (nets, bad) = parse_blocklist(&t);
                        status.insert(
                            b.name.clone(),
                            json!({"entries": nets.len(), "unreadable_lines": bad.len()}),
                        );
                        last_good.insert(b.name.clone(), nets);
                    }
                    Err(e) => {
                        tracing::warn!("guard: blocklist {}: {e}", b.name);
                        self.bus
                            .publish("blocklist-failed", None, format!("{}: {e}", b.name));
                        let kept = last_good.get(&b.name).map_or(0, |n| n.len());
                        status.insert(b.name.clone(), json!({"error": e, "entries": kept}));
                    }
                }
            }
            let all: Vec<IpNet> = last_good.values().flatten().copied().collect();
            if let Err(e) = self.load_blocklist(all, status).await {
                tracing::error!("guard: blocklists: {e}");
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Loads prefixes into the blocklist sets, leaving out any that covers an allowlisted
    /// address or a live SSH session (a list must never lock the admin out).
    async fn load_blocklist(
        &self,
        nets: Vec<IpNet>,
        lists: BTreeMap<String, Value>,
    ) -> Result<usize> {
        let nets = IpNet::aggregate(&nets);
        let kept: Vec<IpNet> = {
            let st = self.guard_state();
            let peers = crate::guard::live_ssh_peers(&st.allow.ssh_ports);
            nets.into_iter()
                .filter(|n| match st.allow.why_allowed(n, &peers) {
                    Some(why) => {
                        tracing::warn!("guard: blocklist entry {n} left out ({why})");
                        false
                    }
                    None => true,
                })
                .collect()
        };
        let count = kept.len();
        let started = std::time::Instant::now();
        let enforced = self.bans_enforced();
        tokio::task::spawn_blocking(move || {
            if enforced {
                firewall::load_blocklist(&kept)
            } else {
                Ok(())
            }
        })
        .await
        .map_err(|e| Error::failed(e.to_string()))??;
        *self.guard.blocklists.lock().expect("blocklist lock") = BlocklistStatus {
            entries: count,
            loaded: Some(now()),
            lists,
        };
        tracing::info!(
            "guard: {count} blocklist entries loaded in {:.3} s",
            started.elapsed().as_secs_f64()
        );
        Ok(count)
    }

    fn require_guard(&self) -> Result<()> {
        if self.config.guard.enabled {
            Ok(())
        } else {
            Err(
                Error::bad_input("the guard is disabled in the config ([guard] enabled = false)")
                    .hint("enable it in /etc/ilot/ilot.toml and restart the daemon"),
            )
        }
    }

    /// `ilot ban list`.
    pub(super) fn ban_list(&self) -> Result<Value> {
        self.require_guard()?;
        let now = now();
        let st = self.guard_state();
        let mut bans: Vec<&Ban> = st.bans.values().filter(|b| b.active(now)).collect();
        bans.sort_by(|a, b| b.since.cmp(&a.since).then(a.net.cmp(&b.net)));
        let total = bans.len();
        let shown: Vec<Value> = bans
            .into_iter()
            .take(1000)
            .map(|b| {
                json!({
                    "address": b.net.to_string(),
                    "jail": b.jail,
                    "since": b.since,
                    "until": b.until,
                    "remaining": b.until.map(|u| u.saturating_sub(now)),
                    "count": b.count,
                    "reason": b.reason,
                })
            })
            .collect();
        Ok(json!({
            "total": total,
            "enforced": self.bans_enforced(),
            "not_enforced": self.not_enforced_why(),
            "bans": shown,
            "blocklists": self.guard.blocklists.lock().expect("blocklist lock").clone(),
        }))
    }

    /// `ilot guard show`: the jails, where they read, their policy and counters.
    pub(super) fn guard_view(&self) -> Result<Value> {
        self.require_guard()?;
        let st = self.guard_state();
        let jails: Vec<Value> = st
            .jails
            .iter()
            .map(|j| {
                json!({
                    "name": j.name,
                    "filter": j.filter.name,
                    "mode": j.filter.mode,
                    // Sessions remembered (sshd's connections whose address a later line may need).
                    "sessions": j.sessions.values().map(Sessions::len).sum::<usize>(),
                    "description": j.filter.description,
                    "sources": j.sources.iter().map(|s| s.key().to_string()).collect::<Vec<_>>(),
                    "maxretry": j.policy.maxretry,
                    "findtime": humantime::format_duration(j.policy.findtime).to_string(),
                    "bantime": humantime::format_duration(j.policy.bantime).to_string(),
                    "increment": j.policy.increment,
                    "max_bantime": humantime::format_duration(j.policy.max_bantime).to_string(),
                    "permanent_after": j.policy.permanent_after,
                    "failures": j.failures,
                    "bans": j.bans,
                })
            })
            .collect();
        Ok(json!({
            "jails": jails,
            "enforced": self.bans_enforced(),
            "not_enforced": self.not_enforced_why(),
            "errors": st.errors,
            "allow": st.allow.nets.iter().map(|(n, why)| json!({"net": n.to_string(), "why": why})).collect::<Vec<_>>(),
            "ipv6_prefix": self.config.guard.ipv6_prefix,
            "active_bans": st.bans.values().filter(|b| b.active(now())).count(),
        }))
    }

    /// `ilot ban add ADDR [--for D]`: a manual ban (permanent when no duration is given).
    pub(super) async fn ban_add(&self, addr: &str, seconds: Option<u64>) -> Result<Value> {
        self.require_guard()?;
        let net = parse_target(addr, self.config.guard.ipv6_prefix)?;
        let now = now();
        let ban = {
            let mut guard = self.guard_state();
            let st = &mut *guard;
            let peers = crate::guard::live_ssh_peers(&st.allow.ssh_ports);
            if let Some(why) = st.allow.why_allowed(&net, &peers) {
                return Err(Error::conflict(format!("{net} is never banned: {why}"))
                    .hint("remove it from [guard] allow first if you really mean it"));
            }
            // Prefixes share interval sets, where overlaps are refused: say which one.
            if let Some(other) = st.bans.values().find(|b| {
                b.active(now)
                    && b.net != net
                    && (b.net.contains(&net) || net.contains(&b.net))
                    && b.net.prefix_len() != 32
            }) {
                return Err(
                    Error::conflict(format!("{net} overlaps the ban of {}", other.net))
                        .hint(format!("remove it first: ilot ban remove {}", other.net)),
                );
            }
            let count = st.bans.get(&net).map_or(0, |b| b.count) + 1;
            let ban = Ban {
                net,
                jail: "manual".into(),
                since: now,
                until: seconds.map(|s| now + s),
                count,
                reason: "banned by the admin".into(),
            };
            if let Some(old) = st.bans.get(&net).and_then(|b| b.until) {
                st.expiries.remove(&(old, net));
            }
            if let Some(u) = ban.until {
                st.expiries.insert((u, net));
            }
            st.bans.insert(net, ban.clone());
            ban
        };
        let el = [(net, ban.remaining(now))];
        let enforced = self.bans_enforced();
        tokio::task::spawn_blocking(move || {
            if enforced {
                firewall::add_bans(&el)
            } else {
                Ok(())
            }
        })
        .await
        .map_err(|e| Error::failed(e.to_string()))??;
        self.store.write(|w| w.put_ban(&net.to_string(), &ban))?;
        let message = describe_ban(&ban);
        self.bus.publish("ban", None, message.clone());
        Ok(json!({ "message": message, "ban": ban }))
    }

    /// `ilot ban remove ADDR`: lifts the ban covering ADDR and forgets its history.
    pub(super) async fn ban_remove(&self, addr: &str) -> Result<Value> {
        self.require_guard()?;
        let target = parse_target(addr, self.config.guard.ipv6_prefix)?;
        let now = now();
        let ban = {
            let mut st = self.guard_state();
            let found = st
                .bans
                .values()
                .filter(|b| b.active(now) && (b.net == target || b.net.contains(&target.addr())))
                .map(|b| b.net)
                .next();
            let Some(net) = found else {
                return Err(
                    Error::not_found(format!("{addr} is not banned")).hint("see `ilot ban list`")
                );
            };
            let ban = st.bans.remove(&net).expect("found above");
            if let Some(u) = ban.until {
                st.expiries.remove(&(u, net));
            }
            ban
        };
        let net = ban.net;
        let enforced = self.bans_enforced();
        tokio::task::spawn_blocking(move || {
            if enforced {
                firewall::remove_ban(&net)
            } else {
                Ok(())
            }
        })
        .await
        .map_err(|e| Error::failed(e.to_string()))??;
        self.store.write(|w| w.delete_ban(&net.to_string()))?;
        let message = format!("{net} unbanned by the admin");
        self.bus.publish("unban", None, message.clone());
        Ok(json!({ "message": message }))
    }
}

fn describe_ban(b: &Ban) -> String {
    let length = match b.until {
        None => "for good".to_string(),
        Some(u) => format!(
            "for {}",
            humantime::format_duration(Duration::from_secs(u.saturating_sub(b.since)))
        ),
    };
    let repeat = if b.count > 1 {
        format!(", ban #{}", b.count)
    } else {
        String::new()
    };
    format!(
        "{} banned {length} by {} ({}{repeat})",
        b.net, b.jail, b.reason
    )
}

/// An address or prefix given by the admin; an IPv6 address means its configured prefix.
fn parse_target(s: &str, ipv6_prefix: u8) -> Result<IpNet> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    match crate::guard::filter::parse_addr(s) {
        Some(a) => Ok(ban_net(a, ipv6_prefix)),
        None => Err(
            Error::bad_input(format!("{s:?} is not an address or a prefix")).hint(
                "give an address like 203.0.113.5 or 2001:db8::1, or a prefix like 203.0.113.0/24",
            ),
        ),
    }
}

fn has_sources(cfg: &JailConfig) -> bool {
    !cfg.files.is_empty() || !cfg.journal.is_empty() || cfg.proxy
}

fn jail_sources(cfg: &JailConfig, proxy_log: &Option<Source>) -> Vec<Source> {
    let mut out: Vec<Source> = cfg.files.iter().cloned().map(Source::File).collect();
    if !cfg.journal.is_empty() {
        out.push(Source::Journal(cfg.journal.clone()));
    }
    if cfg.proxy {
        out.extend(proxy_log.clone());
    }
    out
}

/// Where sshd logs on this machine: the syslog file if there is one, else the journal.
fn sshd_sources() -> Vec<Source> {
    for f in ["/var/log/auth.log", "/var/log/secure"] {
        if std::path::Path::new(f).exists() {
            return vec![Source::File(f.into())];
        }
    }
    if ["/usr/bin/journalctl", "/bin/journalctl"]
        .iter()
        .any(|p| std::path::Path::new(p).exists())
    {
        return vec![Source::Journal(vec![
            "ssh.service".into(),
            "sshd.service".into(),
        ])];
    }
    Vec::new()
}

/// GETs a blocklist over http(s), at most 64 MiB.
async fn fetch(url: &str) -> std::result::Result<String, String> {
    let res = crate::http_client::request("GET", url, &[], None, 64 << 20).await?;
    if !(200..300).contains(&res.status) {
        return Err(format!("HTTP {}", res.status));
    }
    Ok(String::from_utf8_lossy(&res.body).into_owned())
}
