//! The monitor and notify subsystems in the daemon: sampling every `[monitor] interval`
//! (host, containers, the apps' declared probes), history, alert rules on samples and on the
//! bus's events, the outbox and its channels, Telegram commands, the heartbeat, silences.

use super::Daemon;
use crate::error::{Error, Result};
use crate::monitor::alerts::{Alerts, Notice, Rule, Severity};
use crate::monitor::history::History;
use crate::monitor::Sampler;
use crate::notify::telegram::{self, Command, Telegram};
use crate::notify::{ChannelKind, Outgoing, SendError};
use crate::state::now;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

const OUTBOX_KEY: &str = "alerts.outbox";
const SILENCES_KEY: &str = "alerts.silences";
/// Messages kept per channel while it cannot deliver.
const MAX_QUEUED: usize = 500;

#[derive(Default)]
pub(super) struct Monitor {
    history: OnceLock<History>,
    alerts: Mutex<Alerts>,
    /// The last sample, for `ilot status` and `/status`.
    latest: Mutex<Vec<(String, f32)>>,
    /// One outbox change at a time.
    outbox_lock: tokio::sync::Mutex<()>,
    wake: tokio::sync::Notify,
    /// The Telegram channels, by channel index.
    telegram: OnceLock<HashMap<usize, Arc<Telegram>>>,
    /// Per channel: when its recent messages went (rate limit), its last error.
    sent: Mutex<HashMap<usize, VecDeque<u64>>>,
    errors: Mutex<BTreeMap<usize, String>>,
    /// Telegram chats that already have a message (by message id), across retries.
    delivered: Mutex<HashMap<u64, Vec<i64>>>,
}

impl Daemon {
    fn silences(&self) -> BTreeMap<String, u64> {
        self.store
            .meta(SILENCES_KEY)
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_str(&v).ok())
            .unwrap_or_default()
    }

    fn outbox(&self) -> Vec<Outgoing> {
        self.store
            .meta(OUTBOX_KEY)
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_str(&v).ok())
            .unwrap_or_default()
    }

    /// Whether a rule's message may go out now: not silenced, and not a warning in quiet hours.
    fn may_notify(&self, rule: &Rule, silences: &BTreeMap<String, u64>, now: u64) -> bool {
        if silences.get(&rule.name).is_some_and(|until| *until > now) {
            return false;
        }
        rule.severity == Severity::Critical || !self.quiet_now()
    }

    fn quiet_now(&self) -> bool {
        let Some((start, end)) = self
            .config
            .alerts
            .quiet_hours
            .as_deref()
            .and_then(crate::config::parse_quiet_hours)
        else {
            return false;
        };
        // SAFETY: localtime_r fills a struct we own.
        let t = now() as libc::time_t;
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        unsafe { libc::localtime_r(&t, &mut tm) };
        crate::config::in_quiet_hours((tm.tm_hour * 60 + tm.tm_min) as u32, (start, end))
    }

    pub(super) fn start_monitor(self: &Arc<Self>) {
        if !self.config.monitor.enabled {
            return;
        }
        match History::open(&self.config.daemon.state_dir) {
            Ok(h) => {
                let _ = self.monitor.history.set(h);
            }
            Err(e) => tracing::error!("monitor: no history: {e}"),
        }
        let rules = crate::monitor::alerts::rules(&self.config.alerts.rules).unwrap_or_default();
        *self.monitor.alerts.lock().expect("alerts lock") = Alerts::new(rules);
        let mut telegrams = HashMap::new();
        for (i, ch) in self.config.alerts.channels.iter().enumerate() {
            if ch.kind == ChannelKind::Telegram {
                match Telegram::new(ch) {
                    Ok(t) => {
                        telegrams.insert(i, Arc::new(t));
                    }
                    Err(e) => {
                        tracing::error!("alerts: channel {}: {e}", ch.label());
                        self.monitor
                            .errors
                            .lock()
                            .expect("errors")
                            .insert(i, e.to_string());
                    }
                }
            }
        }
        for (i, t) in &telegrams {
            let d = self.clone();
            let (i, t) = (*i, t.clone());
            tokio::spawn(async move { d.telegram_commands(i, t).await });
        }
        let _ = self.monitor.telegram.set(telegrams);

        let d = self.clone();
        tokio::spawn(async move { d.sample_loop().await });
        let d = self.clone();
        tokio::spawn(async move { d.outbox_loop().await });
        let d = self.clone();
        let mut events = self.bus.subscribe("the alerts");
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                let now = now();
                let silences = d.silences();
                let notices = d.monitor.alerts.lock().expect("alerts lock").on_event(
                    &e.kind,
                    &e.message,
                    e.count,
                    now,
                    |r| d.may_notify(r, &silences, now),
                );
                d.enqueue(notices).await;
            }
        });
        // What the world sees (DNS drift, reverse DNS, blocklists) is checked daily; findings
        // are events, which the rules turn into alerts.
        let d = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(15 * 60)).await;
            loop {
                if !d.instances_snapshot().is_empty() || d.config.host.hostname.is_some() {
                    if let Err(e) = d.diagnose("all").await {
                        tracing::warn!("daily diagnosis: {e}");
                    }
                }
                tokio::time::sleep(Duration::from_secs(86_400)).await;
            }
        });
        if let Some(url) = self.config.alerts.heartbeat_url.clone() {
            let every = self.config.alerts.heartbeat_every;
            tokio::spawn(async move {
                loop {
                    if let Err(e) = crate::http_client::request("GET", &url, &[], None, 4096).await
                    {
                        tracing::warn!("heartbeat: {e}");
                    }
                    tokio::time::sleep(every).await;
                }
            });
        }
    }

    async fn sample_loop(self: Arc<Self>) {
        let sampler = Arc::new(Mutex::new(Sampler::new(self.config.monitor.disks.clone())));
        let mut tick = tokio::time::interval(self.config.monitor.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_compact = 0u64;
        // Mail queues are counted every 5 minutes (an exec in the container), kept in between.
        let (mut queues, mut last_queue) = (Vec::new(), 0u64);
        loop {
            tick.tick().await;
            let containers: Vec<_> = self
                .runtime
                .get()
                .map(|(_, o)| o.get().containers)
                .unwrap_or_default();
            let s = sampler.clone();
            let Ok(sample) = tokio::task::spawn_blocking(move || {
                s.lock().expect("sampler lock").sample(&containers)
            })
            .await
            else {
                continue;
            };
            let mut values = sample.values;
            values.extend(self.run_probes().await);
            let now = now();
            if now >= last_queue + 300 {
                last_queue = now;
                queues = self.mail_queue_sizes().await;
            }
            values.extend(queues.iter().cloned());
            // Days left on each certificate (renewal starts at a third of the lifetime left;
            // a certificate this close to its end means renewals keep failing).
            for c in self.certs.iter().flat_map(|c| c.list()) {
                if let Some(end) = c.not_after {
                    values.push((
                        format!("cert_days:{}", c.domain),
                        (end as f64 - now as f64) as f32 / 86_400.0,
                    ));
                }
            }
            if let Some(h) = self.monitor.history.get() {
                if let Err(e) = h.record(now, &values) {
                    tracing::warn!("monitor: cannot record: {e}");
                }
                if now >= last_compact + 3600 {
                    last_compact = now;
                    let _ = h.compact(now, self.config.monitor.retention.as_secs());
                }
            }
            // Busy processes feed the rules, not the history (pids come and go).
            let mut for_rules = values.clone();
            for (pid, name, cpu) in &sample.busy_processes {
                for_rules.push((format!("proc:{name}[{pid}]"), *cpu));
            }
            *self.monitor.latest.lock().expect("latest lock") = values;
            let silences = self.silences();
            let notices =
                self.monitor
                    .alerts
                    .lock()
                    .expect("alerts lock")
                    .evaluate(&for_rules, now, |r| self.may_notify(r, &silences, now));
            let notices = self.with_instance(notices);
            self.enqueue(notices).await;
        }
    }

    /// The apps' declared probes: TCP connect, HTTP GET, or an SMTP greeting, to the service's
    /// address on its network. 1 = answering (HTTP: a status under 400; SMTP: a 220 greeting).
    /// A service's second probe is named with its port (probe:mail/mail:993).
    async fn run_probes(&self) -> Vec<(String, f32)> {
        let Some((_, observer)) = self.runtime.get() else {
            return Vec::new();
        };
        let mut probes = Vec::new();
        for inst in self.instances_snapshot() {
            let mut named = std::collections::BTreeSet::new();
            for p in &inst.manifest.needs.probes {
                let container = crate::plan::container_name(&inst.name, &p.service);
                let mut name = format!("probe:{}/{}", inst.name, p.service);
                if !named.insert(name.clone()) {
                    name = format!("{name}:{}", p.port.unwrap_or(0));
                }
                let target = observer.ip_of(&container).zip(p.port);
                let (kind, path) = (p.kind.clone(), p.path.clone().unwrap_or_else(|| "/".into()));
                probes.push(async move {
                    let Some((ip, port)) = target else {
                        return (name, 0.0);
                    };
                    let check = async {
                        if kind == "http" {
                            let url = format!("http://{ip}:{port}{path}");
                            crate::http_client::request("GET", &url, &[], None, 64 << 10)
                                .await
                                .is_ok_and(|r| r.status < 400)
                        } else if kind == "smtp" {
                            use tokio::io::AsyncReadExt;
                            let mut greeting = [0u8; 4];
                            match tokio::net::TcpStream::connect((ip.as_str(), port)).await {
                                Ok(mut s) => {
                                    s.read_exact(&mut greeting).await.is_ok()
                                        && &greeting[..3] == b"220"
                                }
                                Err(_) => false,
                            }
                        } else {
                            tokio::net::TcpStream::connect((ip.as_str(), port))
                                .await
                                .is_ok()
                        }
                    };
                    // All probes run at once, 3 s each at most: one dead app does not slow the
                    // sampling of the others.
                    let ok = tokio::time::timeout(Duration::from_secs(3), check)
                        .await
                        .unwrap_or(false);
                    (name, if ok { 1.0 } else { 0.0 })
                });
            }
        }
        futures_util::future::join_all(probes).await
    }

    /// Names the instance in a message's hint ("ilot app logs INSTANCE"): the subject is a
    /// container (`ilot-NAME-SERVICE`) or a probe (`NAME/SERVICE`).
    fn with_instance(&self, mut notices: Vec<Notice>) -> Vec<Notice> {
        let containers = self
            .runtime
            .get()
            .map(|(_, o)| o.get().containers)
            .unwrap_or_default();
        for n in notices.iter_mut().filter(|n| n.text.contains("INSTANCE")) {
            let instance = containers
                .iter()
                .find(|c| c.name == n.subject)
                .map(|c| c.instance.clone())
                .or_else(|| n.subject.split_once('/').map(|(i, _)| i.to_string()));
            if let Some(i) = instance {
                n.text = n.text.replace("INSTANCE", &i);
            }
        }
        notices
    }

    /// Puts notices in the outbox, one message per channel that wants its severity.
    async fn enqueue(&self, notices: Vec<Notice>) {
        if notices.is_empty() {
            return;
        }
        let _lock = self.monitor.outbox_lock.lock().await;
        let mut outbox = self.outbox();
        let now = now();
        let mut next = outbox.iter().map(|m| m.id).max().unwrap_or(0).max(
            self.store
                .meta("alerts.next_id")
                .ok()
                .flatten()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        );
        for n in &notices {
            tracing::info!(rule = %n.rule, state = n.state, "alert: {}", n.text);
            for (i, ch) in self.config.alerts.channels.iter().enumerate() {
                if ch.min_severity.is_some_and(|min| n.severity < min) && n.state != "resolved" {
                    continue;
                }
                next += 1;
                outbox.push(Outgoing {
                    id: next,
                    channel: i,
                    text: n.text.clone(),
                    rule: n.rule.clone(),
                    severity: n.severity,
                    state: n.state.to_string(),
                    subject: n.subject.clone(),
                    time: now,
                    attempts: 0,
                    next_try: now,
                    last_error: None,
                });
            }
        }
        // A channel that refuses for good (a revoked token) must not grow the store forever:
        // its oldest messages go beyond MAX_QUEUED.
        for ch in 0..self.config.alerts.channels.len() {
            let queued = outbox.iter().filter(|m| m.channel == ch).count();
            if queued > MAX_QUEUED {
                let mut extra = queued - MAX_QUEUED;
                tracing::warn!(
                    "alerts: channel {}: {extra} old messages dropped (the queue is full)",
                    self.channel_label(ch)
                );
                outbox.retain(|m| {
                    let drop = m.channel == ch && extra > 0;
                    if drop {
                        extra -= 1;
                    }
                    !drop
                });
            }
        }
        let _ = self.store.write(|w| {
            w.put_meta(
                OUTBOX_KEY,
                &serde_json::to_string(&outbox).unwrap_or_default(),
            )?;
            w.put_meta("alerts.next_id", &next.to_string())
        });
        self.monitor.wake.notify_one();
    }

    /// Delivers the outbox: per channel, its oldest message first; a failure holds that
    /// channel's queue (order kept) until the retry time.
    async fn outbox_loop(self: Arc<Self>) {
        loop {
            let wait = self.deliver_due().await;
            tokio::select! {
                _ = self.monitor.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn deliver_due(&self) -> Duration {
        let now = now();
        let outbox = self.outbox();
        let mut wait = Duration::from_secs(60);
        let mut done: Vec<u64> = Vec::new();
        let mut updated: HashMap<u64, Outgoing> = HashMap::new();
        let channels: std::collections::BTreeSet<usize> =
            outbox.iter().map(|m| m.channel).collect();
        for ch in channels {
            for msg in outbox.iter().filter(|m| m.channel == ch) {
                if msg.next_try > now {
                    wait = wait.min(Duration::from_secs(msg.next_try - now));
                    break;
                }
                // The rate limit: at most `rate_limit` an hour; the rest wait.
                {
                    let mut sent = self.monitor.sent.lock().expect("sent lock");
                    let times = sent.entry(ch).or_default();
                    while times.front().is_some_and(|t| t + 3600 <= now) {
                        times.pop_front();
                    }
                    if times.len() as u32 >= self.config.alerts.rate_limit {
                        let free = times.front().map_or(60, |t| t + 3600 - now);
                        wait = wait.min(Duration::from_secs(free.max(1)));
                        break;
                    }
                }
                match self.send(ch, msg).await {
                    Ok(()) => {
                        done.push(msg.id);
                        self.monitor
                            .sent
                            .lock()
                            .expect("sent lock")
                            .entry(ch)
                            .or_default()
                            .push_back(now);
                        self.monitor.errors.lock().expect("errors").remove(&ch);
                    }
                    Err(e) => {
                        let (delay, text) = match &e {
                            SendError::Retry(s, t) => (*s, t.clone()),
                            SendError::Refused(t) => (3600, t.clone()),
                        };
                        tracing::warn!(
                            "alerts: channel {}: {text}; retrying in {delay} s",
                            self.channel_label(ch)
                        );
                        self.monitor
                            .errors
                            .lock()
                            .expect("errors")
                            .insert(ch, text.clone());
                        let mut m = msg.clone();
                        m.attempts += 1;
                        m.next_try = now + delay;
                        m.last_error = Some(text);
                        wait = wait.min(Duration::from_secs(delay));
                        updated.insert(m.id, m);
                        break;
                    }
                }
            }
        }
        if !done.is_empty() || !updated.is_empty() {
            let _lock = self.monitor.outbox_lock.lock().await;
            // Re-read: messages may have been queued meanwhile.
            let mut outbox = self.outbox();
            outbox.retain(|m| !done.contains(&m.id));
            for m in outbox.iter_mut() {
                if let Some(u) = updated.remove(&m.id) {
                    *m = u;
                }
            }
            let _ = self.store.write(|w| {
                w.put_meta(
                    OUTBOX_KEY,
                    &serde_json::to_string(&outbox).unwrap_or_default(),
                )
            });
            let mut delivered = self.monitor.delivered.lock().expect("delivered lock");
            for id in &done {
                delivered.remove(id);
            }
            if !done.is_empty() {
                return Duration::from_millis(1);
            }
        }
        wait
    }

    fn channel_label(&self, i: usize) -> String {
        self.config
            .alerts
            .channels
            .get(i)
            .map(|c| c.label())
            .unwrap_or_default()
    }

    async fn send(&self, i: usize, msg: &Outgoing) -> std::result::Result<(), SendError> {
        let Some(ch) = self.config.alerts.channels.get(i) else {
            return Ok(()); // a channel removed from the config: drop its messages
        };
        match ch.kind {
            ChannelKind::Telegram => {
                let Some(t) = self.monitor.telegram.get().and_then(|t| t.get(&i)).cloned() else {
                    return Err(SendError::Refused(
                        "the bot could not be set up (see the log)".into(),
                    ));
                };
                let mut done = self
                    .monitor
                    .delivered
                    .lock()
                    .expect("delivered lock")
                    .get(&msg.id)
                    .cloned()
                    .unwrap_or_default();
                let result = t.send(msg, &mut done).await;
                self.monitor
                    .delivered
                    .lock()
                    .expect("delivered lock")
                    .insert(msg.id, done);
                result
            }
            ChannelKind::Email => crate::notify::email::send(ch, msg).await,
            _ => crate::notify::send_http(ch, msg).await,
        }
    }

    /// Answers Telegram commands from the allowed chats.
    async fn telegram_commands(self: Arc<Self>, channel: usize, bot: Arc<Telegram>) {
        let mut offset = 0;
        loop {
            match bot.commands(&mut offset).await {
                Ok(commands) => {
                    for (chat, cmd) in commands {
                        let answer = self.answer(cmd).await;
                        if let Err(e) = bot.reply(chat, answer).await {
                            tracing::warn!("telegram: cannot answer: {e}");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("telegram ({}): {e}", self.channel_label(channel));
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    }

    async fn answer(&self, cmd: Command) -> String {
        let text = |r: Result<Value>| match r {
            Ok(v) => v["message"].as_str().unwrap_or("done").to_string(),
            Err(e) => format!("error: {e}"),
        };
        match cmd {
            Command::Status => self.summary_text(),
            Command::Apps => {
                let list = self.list_view();
                let lines: Vec<String> = list
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        format!(
                            "{} ({}): {}",
                            a["name"].as_str().unwrap_or(""),
                            a["app"].as_str().unwrap_or(""),
                            a["status"].as_str().unwrap_or("")
                        )
                    })
                    .collect();
                if lines.is_empty() {
                    "No app installed.".into()
                } else {
                    lines.join("\n")
                }
            }
            Command::Bans => match self.ban_list() {
                Ok(v) => {
                    let bans: Vec<String> = v["bans"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .take(10)
                        .map(|b| {
                            format!(
                                "{} ({}, {})",
                                b["address"].as_str().unwrap_or(""),
                                b["jail"].as_str().unwrap_or(""),
                                b["reason"].as_str().unwrap_or("")
                            )
                        })
                        .collect();
                    format!(
                        "{} active bans{}{}",
                        v["total"],
                        if bans.is_empty() { "" } else { ", newest:\n" },
                        bans.join("\n")
                    )
                }
                Err(e) => format!("error: {e}"),
            },
            Command::Unban(addr) => text(self.ban_remove(&addr).await),
            Command::Silence(rule, d) => match humantime::parse_duration(&d) {
                Ok(d) => text(self.alert_silence(&rule, d.as_secs())),
                Err(_) => format!("{d:?} is not a duration (try 30m, 2h, 1d)"),
            },
            Command::Ack => text(self.alert_ack()),
            Command::Help => telegram::HELP.into(),
        }
    }

    /// For `ilot status`: the last sample's main figures and the firing alerts.
    pub(super) fn monitor_summary(&self) -> Value {
        if !self.config.monitor.enabled {
            return json!(null);
        }
        let latest = self.monitor.latest.lock().expect("latest lock").clone();
        let pick: serde_json::Map<String, Value> = latest
            .iter()
            .filter(|(k, _)| {
                ["cpu", "load1", "mem", "swap"].contains(&k.as_str())
                    || k.starts_with("disk:")
                    || k.starts_with("temp:")
            })
            .map(|(k, v)| (k.clone(), json!((v * 10.0).round() / 10.0)))
            .collect();
        let incidents = self.monitor.alerts.lock().expect("alerts lock").incidents();
        json!({
            "figures": pick,
            "history_bytes": History::size(&self.config.daemon.state_dir),
            "alerts": incidents.iter().map(|i| json!({"rule": i.rule, "subject": i.subject, "severity": i.severity, "since": i.since})).collect::<Vec<_>>(),
        })
    }

    /// One screen: the figures that matter, the firing alerts.
    pub(super) fn summary_text(&self) -> String {
        let latest = self.monitor.latest.lock().expect("latest lock").clone();
        let get = |n: &str| latest.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
        let mut lines = vec![format!(
            "{}: {} apps",
            crate::notify::hostname(),
            self.instances_snapshot().len()
        )];
        if let (Some(cpu), Some(mem)) = (get("cpu"), get("mem")) {
            lines.push(format!(
                "CPU {cpu:.0} %, load {:.2}, memory {mem:.0} %",
                get("load1").unwrap_or(0.0)
            ));
        }
        for (k, v) in latest.iter().filter(|(k, _)| k.starts_with("disk:")) {
            lines.push(format!("disk {} {v:.0} % used", &k[5..]));
        }
        let incidents = self.monitor.alerts.lock().expect("alerts lock").incidents();
        if incidents.is_empty() {
            lines.push("No alert firing.".into());
        }
        for i in incidents {
            lines.push(format!(
                "{:?} {}: {} since {} UTC{}",
                i.severity,
                i.rule,
                i.subject,
                crate::state::format_utc(i.since),
                if i.acked { " (acked)" } else { "" }
            ));
        }
        lines.join("\n")
    }

    pub(super) fn alert_silence(&self, rule: &str, seconds: u64) -> Result<Value> {
        let known = self
            .monitor
            .alerts
            .lock()
            .expect("alerts lock")
            .rules
            .iter()
            .any(|r| r.name == rule);
        if !known {
            let names: Vec<String> = self
                .monitor
                .alerts
                .lock()
                .expect("alerts lock")
                .rules
                .iter()
                .map(|r| r.name.clone())
                .collect();
            return Err(Error::not_found(format!("no alert rule named {rule}"))
                .hint(format!("rules: {}", names.join(", "))));
        }
        let mut s = self.silences();
        let until = now() + seconds;
        s.retain(|_, u| *u > now());
        if seconds == 0 {
            s.remove(rule);
        } else {
            s.insert(rule.to_string(), until);
        }
        self.store
            .write(|w| w.put_meta(SILENCES_KEY, &serde_json::to_string(&s).unwrap_or_default()))?;
        let message = if seconds == 0 {
            format!("{rule} is no longer silenced")
        } else {
            format!(
                "{rule} silenced until {} UTC",
                crate::state::format_utc(until)
            )
        };
        self.bus.publish("alert-silenced", None, message.clone());
        Ok(json!({ "message": message }))
    }

    pub(super) fn alert_ack(&self) -> Result<Value> {
        let n = self.monitor.alerts.lock().expect("alerts lock").ack_all();
        Ok(json!({ "message": format!("{n} firing alert(s) acknowledged") }))
    }

    pub(super) async fn alert_test(&self) -> Result<Value> {
        if self.config.alerts.channels.is_empty() {
            return Err(Error::bad_input("no alert channel is configured")
                .hint("add [[alerts.channels]] to the config (docs/monitor.md)"));
        }
        self.enqueue(vec![Notice {
            rule: "test".into(),
            subject: "test".into(),
            severity: Severity::Warning,
            state: "event",
            text: format!(
                "ilot on {}: a test message. Alerts reach you here.",
                crate::notify::hostname()
            ),
        }])
        .await;
        Ok(
            json!({ "message": format!("a test message is on its way to {} channel(s); `ilot alert list` shows if one fails", self.config.alerts.channels.len()) }),
        )
    }

    pub(super) fn alert_view(&self) -> Value {
        let now = now();
        let incidents = self.monitor.alerts.lock().expect("alerts lock").incidents();
        let outbox = self.outbox();
        let errors = self.monitor.errors.lock().expect("errors").clone();
        let channels: Vec<Value> = self
            .config
            .alerts
            .channels
            .iter()
            .enumerate()
            .map(|(i, c)| {
                json!({
                    "name": c.label(),
                    "kind": c.kind,
                    "queued": outbox.iter().filter(|m| m.channel == i).count(),
                    "error": errors.get(&i),
                })
            })
            .collect();
        json!({
            "incidents": incidents,
            "silences": self.silences().into_iter().filter(|(_, u)| *u > now).map(|(r, u)| json!({"rule": r, "until": u})).collect::<Vec<_>>(),
            "channels": channels,
            "quiet_now": self.quiet_now(),
        })
    }

    /// `ilot metrics [NAME] [--since]`: without a name, every series and its last value.
    pub(super) fn metrics_view(&self, name: Option<&str>, since_secs: u64) -> Result<Value> {
        let Some(h) = self.monitor.history.get() else {
            return Err(Error::unavailable(
                "the monitor is off ([monitor] enabled = false) or has no history",
            ));
        };
        let since = now().saturating_sub(since_secs);
        match name {
            None => {
                let latest = self.monitor.latest.lock().expect("latest lock").clone();
                Ok(
                    json!({ "series": latest.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>() }),
                )
            }
            Some(n) => {
                let names = if n.ends_with(':') {
                    h.names(n)
                } else {
                    vec![n.to_string()]
                };
                let mut series = Vec::new();
                for name in names {
                    let points = h.query(&name, since)?;
                    series.push(json!({ "name": name, "points": points }));
                }
                if series
                    .iter()
                    .all(|s| s["points"].as_array().is_none_or(|p| p.is_empty()))
                {
                    return Err(Error::not_found(format!("no points for {n} in that time"))
                        .hint("`ilot metrics` lists the series; a family ends with a colon, e.g. disk:"));
                }
                Ok(json!({ "series": series }))
            }
        }
    }
}
