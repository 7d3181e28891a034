//! Alert rules: a condition on a series (or a count of events), held for a duration, makes an
//! incident; one message when it fires, one when it recovers, nothing in between. Pure logic
//! with the clock passed in: the daemon decides who hears about it (channels, silences, quiet
//! hours, rate limits).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Critical,
}

/// A rule as written in the config (`[[alerts.rules]]`); a rule with a built-in's name
/// changes only the fields it gives.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    pub name: String,
    pub enabled: Option<bool>,
    /// A series (`mem`), or a family of them (`disk:`, ending in a colon).
    pub metric: Option<String>,
    pub above: Option<f32>,
    pub below: Option<f32>,
    /// Or: event kinds (`ban`, `cert-renewal-failed`...), `count` of them within `for`.
    pub events: Vec<String>,
    pub count: Option<u32>,
    /// How long the condition must hold before the alert (for events: the window).
    #[serde(rename = "for", with = "humantime_serde::option")]
    pub duration: Option<Duration>,
    /// How long the condition must stay false before the recovery message (default: half of
    /// `for`, at least 30 s): a flapping service is one incident, not ten.
    #[serde(with = "humantime_serde::option")]
    pub recover: Option<Duration>,
    pub severity: Option<Severity>,
    /// What to try, in the message.
    pub hint: Option<String>,
}

/// The rules every install has (docs/monitor.md); sensible on a Raspberry Pi.
pub fn built_in() -> Vec<RuleConfig> {
    let metric = |name: &str,
                  m: &str,
                  above: Option<f32>,
                  below: Option<f32>,
                  secs: u64,
                  sev,
                  hint: &str| RuleConfig {
        name: name.into(),
        metric: Some(m.into()),
        above,
        below,
        duration: Some(Duration::from_secs(secs)),
        severity: Some(sev),
        hint: Some(hint.into()),
        ..Default::default()
    };
    let event = |name: &str, kinds: &[&str], count: u32, secs: u64, sev, hint: &str| RuleConfig {
        name: name.into(),
        events: kinds.iter().map(|k| k.to_string()).collect(),
        count: Some(count),
        duration: Some(Duration::from_secs(secs)),
        severity: Some(sev),
        hint: Some(hint.into()),
        ..Default::default()
    };
    use Severity::*;
    vec![
        metric("app-down", "up:", None, Some(0.5), 60, Critical, "ilot app logs INSTANCE; ilot app restart INSTANCE"),
        metric("app-unhealthy", "health:", None, Some(0.5), 120, Critical, "ilot app logs INSTANCE"),
        metric("probe-failed", "probe:", None, Some(0.5), 120, Critical, "ilot app show INSTANCE; ilot app logs INSTANCE"),
        metric("certificate-expiring", "cert_days:", None, Some(10.0), 3600, Critical, "ilot cert list; ilot cert renew DOMAIN; ilot diagnose dns"),
        metric("disk-full", "disk:", Some(90.0), None, 300, Critical, "free space: docker system prune, old backups, logs (du -xh / | sort -h | tail)"),
        metric("disk-filling", "disk:", Some(80.0), None, 1800, Warning, "see what grows: du -xh / | sort -h | tail"),
        metric("memory-high", "mem", Some(90.0), None, 600, Warning, "ilot status; which app uses it: ilot metrics cmem:"),
        metric("cpu-high", "cpu", Some(95.0), None, 900, Warning, "ilot metrics ccpu: shows which app"),
        metric("temperature-high", "temp:", Some(80.0), None, 300, Warning, "check the fan and the case's airflow"),
        metric("unknown-process-busy", "proc:", Some(80.0), None, 600, Warning, "a process outside every app has used a core for 10 minutes: a miner? ps -o pid,user,args -p PID"),
        metric("mail-queue-stuck", "mailq:", Some(20.0), None, 3600, Warning, "ilot mail queue says why mail waits; ilot diagnose mail (is port 25 blocked? then ilot mail relay set)"),
        event("certificate-failed", &["cert-renewal-failed", "cert-failed"], 1, 3600, Critical, "ilot cert list; ilot diagnose dns"),
        event("dns-problem", &["dns-drift", "dns-push-failed"], 1, 3600, Warning, "ilot diagnose dns; ilot dns apply"),
        event("mail-deliverability", &["mail-check-failed"], 1, 86_400, Warning, "ilot diagnose mail"),
        event("firewall-problem", &["firewall-failed", "firewall-reverted"], 1, 3600, Warning, "ilot firewall show"),
        event("blocklist-failed", &["blocklist-failed"], 1, 86_400, Warning, "check the blocklist's URL or file"),
        event("ban-storm", &["ban"], 50, 600, Warning, "ilot ban list; an attack in progress, the guard is handling it"),
        event("backup-failed", &["backup-failed", "backup-check-failed", "drill-failed"], 1, 86_400, Critical, "ilot backup run shows why; the earlier snapshots are intact (ilot backup list)"),
    ]
}

#[derive(Debug, Clone)]
enum Condition {
    Metric {
        series: String,
        above: Option<f32>,
        below: Option<f32>,
    },
    Events {
        kinds: Vec<String>,
        count: u32,
    },
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub severity: Severity,
    condition: Condition,
    duration: u64,
    recover: u64,
    hint: String,
}

/// The rules in force: the built-in ones changed or turned off by the config, plus the
/// config's own. Errors name the rule and what is wrong.
pub fn rules(config: &[RuleConfig]) -> Result<Vec<Rule>, String> {
    let mut merged: Vec<RuleConfig> = built_in();
    for c in config {
        match merged.iter_mut().find(|r| r.name == c.name) {
            Some(r) => {
                macro_rules! over { ($($f:ident),*) => { $( if c.$f.is_some() { r.$f = c.$f.clone(); } )* } }
                over!(enabled, metric, above, below, count, duration, recover, severity, hint);
                if !c.events.is_empty() {
                    r.events = c.events.clone();
                }
            }
            None => merged.push(c.clone()),
        }
    }
    let mut out = Vec::new();
    for r in merged {
        if r.enabled == Some(false) {
            continue;
        }
        if r.name.is_empty()
            || !r
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "rule {:?}: a name is letters, digits, - and _",
                r.name
            ));
        }
        let condition = match (&r.metric, r.events.is_empty()) {
            (Some(m), true) => {
                if r.above.is_none() == r.below.is_none() {
                    return Err(format!("rule {}: give one of above or below", r.name));
                }
                Condition::Metric {
                    series: m.clone(),
                    above: r.above,
                    below: r.below,
                }
            }
            (None, false) => Condition::Events {
                kinds: r.events.clone(),
                count: r.count.unwrap_or(1).max(1),
            },
            _ => {
                return Err(format!(
                    "rule {}: give a metric (with above or below) or events",
                    r.name
                ))
            }
        };
        let duration = r.duration.unwrap_or(Duration::from_secs(300)).as_secs();
        out.push(Rule {
            name: r.name.clone(),
            severity: r.severity.unwrap_or(Severity::Warning),
            condition,
            duration,
            recover: r.recover.map_or((duration / 2).max(30), |d| d.as_secs()),
            hint: r.hint.clone().unwrap_or_default(),
        });
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Bad, but not for long enough yet.
    Pending,
    Firing,
    /// Good again, waiting to be sure (flap suppression).
    Recovering,
}

#[derive(Debug, Clone, Serialize)]
pub struct Incident {
    pub rule: String,
    pub subject: String,
    pub severity: Severity,
    pub phase: Phase,
    /// When the condition started to hold.
    pub since: u64,
    /// When it stopped holding (Recovering).
    pub good_since: u64,
    pub value: f32,
    /// The firing message went out (a silenced or quiet-hours alert has not, yet).
    pub notified: bool,
    pub acked: bool,
}

/// What to tell the admin.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notice {
    pub rule: String,
    pub subject: String,
    pub severity: Severity,
    /// "firing", "resolved" or "event".
    pub state: &'static str,
    pub text: String,
}

#[derive(Default)]
pub struct Alerts {
    pub rules: Vec<Rule>,
    incidents: BTreeMap<(String, String), Incident>,
    /// Recent matching events per event rule, and when it last fired.
    events: HashMap<String, (VecDeque<(u64, u32)>, u64)>,
}

fn since_text(from: u64, now: u64) -> String {
    let mins = now.saturating_sub(from) / 60;
    let time = crate::state::format_utc(from);
    let hm = time.get(11..16).unwrap_or(&time);
    if mins == 0 {
        format!("since {hm} UTC")
    } else {
        format!("since {hm} UTC, {mins} min")
    }
}

impl Alerts {
    pub fn new(rules: Vec<Rule>) -> Alerts {
        Alerts {
            rules,
            ..Default::default()
        }
    }

    /// Evaluates the metric rules on a sample. `may_notify(rule)` says whether a message may go
    /// out now (silences, quiet hours): an alert that may not is sent later, when it may, if the
    /// incident still holds; its recovery is sent only if the alert was.
    pub fn evaluate(
        &mut self,
        values: &[(String, f32)],
        now: u64,
        may_notify: impl Fn(&Rule) -> bool,
    ) -> Vec<Notice> {
        let mut out = Vec::new();
        let mut seen = Vec::new();
        for rule in &self.rules {
            let Condition::Metric {
                series,
                above,
                below,
            } = &rule.condition
            else {
                continue;
            };
            for (name, value) in values {
                let matches = if series.ends_with(':') {
                    name.starts_with(series.as_str())
                } else {
                    name == series
                };
                if !matches {
                    continue;
                }
                let bad = above.is_some_and(|a| *value > a) || below.is_some_and(|b| *value < b);
                let key = (rule.name.clone(), name.clone());
                seen.push(key.clone());
                let subject = name
                    .split_once(':')
                    .map_or(name.as_str(), |(_, s)| s)
                    .to_string();
                match (self.incidents.get_mut(&key), bad) {
                    (None, true) => {
                        self.incidents.insert(
                            key.clone(),
                            Incident {
                                rule: rule.name.clone(),
                                subject,
                                severity: rule.severity,
                                phase: Phase::Pending,
                                since: now,
                                good_since: 0,
                                value: *value,
                                notified: false,
                                acked: false,
                            },
                        );
                    }
                    (None, false) => {}
                    (Some(i), true) => {
                        i.value = *value;
                        if i.phase == Phase::Recovering {
                            // Flapping: still the same incident, no new message.
                            i.phase = Phase::Firing;
                        }
                    }
                    (Some(i), false) => match i.phase {
                        Phase::Pending => {
                            // Bad for less than the rule's duration: never an alert.
                            self.incidents.remove(&key);
                            continue;
                        }
                        Phase::Firing => {
                            i.phase = Phase::Recovering;
                            i.good_since = now;
                            i.value = *value;
                        }
                        Phase::Recovering => i.value = *value,
                    },
                }
                let Some(i) = self.incidents.get_mut(&key) else {
                    continue;
                };
                if i.phase == Phase::Recovering && now >= i.good_since + rule.recover {
                    let i = self.incidents.remove(&key).expect("present");
                    if i.notified {
                        out.push(Notice {
                            rule: rule.name.clone(),
                            subject: i.subject.clone(),
                            severity: rule.severity,
                            state: "resolved",
                            text: format!(
                                "✅ RESOLVED {}: {} is back to normal ({}), after {} min.",
                                rule.name,
                                i.subject,
                                describe_value(name, i.value),
                                now.saturating_sub(i.since) / 60
                            ),
                        });
                    }
                    continue;
                }
                if i.phase == Phase::Pending && now >= i.since + rule.duration {
                    i.phase = Phase::Firing;
                }
                if i.phase != Phase::Pending && !i.notified && may_notify(rule) {
                    i.notified = true;
                    out.push(Notice {
                        rule: rule.name.clone(),
                        subject: i.subject.clone(),
                        severity: rule.severity,
                        state: "firing",
                        text: format!(
                            "{} {}: {} ({}), {}.{}",
                            headline(rule.severity),
                            rule.name,
                            i.subject,
                            describe_value(name, i.value),
                            since_text(i.since, now),
                            try_hint(rule)
                        ),
                    });
                }
            }
        }
        // A series that is gone (an app removed) ends its incidents without a word.
        self.incidents.retain(|k, _| {
            seen.contains(k)
                || !self
                    .rules
                    .iter()
                    .any(|r| r.name == k.0 && matches!(r.condition, Condition::Metric { .. }))
        });
        out
    }

    /// An event from the bus: rules counting this kind fire once per window.
    pub fn on_event(
        &mut self,
        kind: &str,
        message: &str,
        weight: u32,
        now: u64,
        may_notify: impl Fn(&Rule) -> bool,
    ) -> Vec<Notice> {
        let mut out = Vec::new();
        for rule in &self.rules {
            let Condition::Events { kinds, count } = &rule.condition else {
                continue;
            };
            if !kinds.iter().any(|k| k == kind) {
                continue;
            }
            let (times, last_fired) = self.events.entry(rule.name.clone()).or_default();
            times.push_back((now, weight));
            while times.front().is_some_and(|(t, _)| t + rule.duration < now) {
                times.pop_front();
            }
            let seen: u32 = times.iter().fold(0, |sum, (_, n)| sum.saturating_add(*n));
            if seen >= *count && *last_fired + rule.duration <= now && may_notify(rule) {
                *last_fired = now;
                let what = if *count > 1 {
                    format!(
                        "{} {kind} events in {} min (last: {message})",
                        seen,
                        rule.duration / 60
                    )
                } else {
                    message.to_string()
                };
                times.clear();
                out.push(Notice {
                    rule: rule.name.clone(),
                    subject: kind.to_string(),
                    severity: rule.severity,
                    state: "event",
                    text: format!(
                        "{} {}: {what}.{}",
                        headline(rule.severity),
                        rule.name,
                        try_hint(rule)
                    ),
                });
            }
        }
        out
    }

    pub fn incidents(&self) -> Vec<Incident> {
        self.incidents
            .values()
            .filter(|i| i.phase != Phase::Pending)
            .cloned()
            .collect()
    }

    /// `/ack`: the admin has seen the firing incidents.
    pub fn ack_all(&mut self) -> usize {
        let mut n = 0;
        for i in self
            .incidents
            .values_mut()
            .filter(|i| i.phase == Phase::Firing && !i.acked)
        {
            i.acked = true;
            n += 1;
        }
        n
    }
}

/// "🔴 CRITICAL" or "🟠 WARNING": the start of an alert.
fn headline(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "🔴 CRITICAL",
        Severity::Warning => "🟠 WARNING",
    }
}

/// " Try: HINT" when the rule has one.
fn try_hint(rule: &Rule) -> String {
    if rule.hint.is_empty() {
        String::new()
    } else {
        format!(" Try: {}", rule.hint)
    }
}

/// A value in words, by series family.
fn describe_value(series: &str, v: f32) -> String {
    let family = series.split(':').next().unwrap_or(series);
    match family {
        "up" => {
            if v >= 0.5 {
                "running".into()
            } else {
                "not running".into()
            }
        }
        "health" => {
            if v >= 0.5 {
                "healthy".into()
            } else {
                "unhealthy".into()
            }
        }
        "probe" => {
            if v >= 0.5 {
                "answering".into()
            } else {
                "not answering".into()
            }
        }
        "disk" | "mem" | "swap" | "cpu" => format!("{v:.0} % used"),
        "temp" => format!("{v:.0} °C"),
        "cert_days" => format!("{v:.1} days left"),
        "proc" => format!("{v:.0} % of a core"),
        _ => format!("{v:.2}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down(v: f32) -> Vec<(String, f32)> {
        vec![("up:ilot-blog-web".to_string(), v)]
    }

    #[test]
    fn an_outage_is_one_alert_and_one_recovery() {
        let mut a = Alerts::new(rules(&[]).unwrap());
        let yes = |_: &Rule| true;
        assert!(
            a.evaluate(&down(0.0), 1000, yes).is_empty(),
            "pending for 60 s"
        );
        let fired = a.evaluate(&down(0.0), 1060, yes);
        assert_eq!(fired.len(), 1);
        assert!(
            fired[0]
                .text
                .contains("CRITICAL app-down: ilot-blog-web (not running)"),
            "{}",
            fired[0].text
        );
        assert!(a.evaluate(&down(0.0), 1090, yes).is_empty(), "no repeat");
        // Back, down again (a flap), back: still one incident.
        assert!(a.evaluate(&down(1.0), 1100, yes).is_empty());
        assert!(a.evaluate(&down(0.0), 1110, yes).is_empty());
        assert!(a.evaluate(&down(1.0), 1120, yes).is_empty());
        assert!(
            a.evaluate(&down(1.0), 1149, yes).is_empty(),
            "recovering for 29 s"
        );
        let resolved = a.evaluate(&down(1.0), 1150, yes);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].state, "resolved");
        assert!(a.evaluate(&down(1.0), 1300, yes).is_empty());
    }

    #[test]
    fn a_short_failure_is_no_alert_and_a_silenced_one_waits() {
        let mut a = Alerts::new(rules(&[]).unwrap());
        assert!(a.evaluate(&down(0.0), 0, |_| true).is_empty());
        assert!(a.evaluate(&down(1.0), 30, |_| true).is_empty());
        assert!(a.evaluate(&down(0.0), 100, |_| true).is_empty());
        assert!(
            a.evaluate(&down(0.0), 159, |_| true).is_empty(),
            "59 s is not 60"
        );
        // Firing while silenced: nothing; once the silence ends, the alert goes out.
        assert!(a.evaluate(&down(0.0), 200, |_| false).is_empty());
        assert_eq!(a.evaluate(&down(0.0), 230, |_| true).len(), 1);
    }

    #[test]
    fn config_changes_built_in_rules_and_refuses_bad_ones() {
        let custom = RuleConfig {
            name: "disk-full".into(),
            above: Some(50.0),
            ..Default::default()
        };
        let off = RuleConfig {
            name: "cpu-high".into(),
            enabled: Some(false),
            ..Default::default()
        };
        let r = rules(&[custom, off]).unwrap();
        assert!(!r.iter().any(|r| r.name == "cpu-high"));
        let mut a = Alerts::new(r);
        let v = vec![("disk:/srv".to_string(), 60.0)];
        a.evaluate(&v, 0, |_| true);
        assert_eq!(a.evaluate(&v, 300, |_| true).len(), 1);
        let bad = RuleConfig {
            name: "x".into(),
            metric: Some("cpu".into()),
            ..Default::default()
        };
        assert!(rules(&[bad]).unwrap_err().contains("above or below"));
    }

    #[test]
    fn a_ban_storm_is_one_message_per_window() {
        let mut a = Alerts::new(rules(&[]).unwrap());
        let mut n = 0;
        for i in 0..120 {
            n += a.on_event("ban", "x banned", 1, 1000 + i, |_| true).len();
        }
        assert_eq!(n, 1);
        // One event for a batch of 60 bans counts as 60: a storm in one log read fires too.
        let mut b = Alerts::new(rules(&[]).unwrap());
        assert!(b.on_event("ban", "49 bans", 49, 1000, |_| true).is_empty());
        let fired = b.on_event("ban", "60 bans", 60, 1001, |_| true);
        assert_eq!(fired.len(), 1);
        assert!(
            fired[0].text.contains("109 ban events"),
            "{}",
            fired[0].text
        );
        assert_eq!(
            a.on_event(
                "cert-renewal-failed",
                "example.org: no answer",
                1,
                5000,
                |_| true
            )
            .len(),
            1
        );
    }
}
