//! Human output: tables and summaries for a terminal; progress on stderr (a spinner on a
//! terminal, plain lines otherwise, nothing with --json).

use crate::api::Request;
use crate::error::Error;
use serde_json::Value;
use std::io::IsTerminal;

pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
}

impl Progress {
    pub fn new(json: bool) -> Progress {
        let tty = std::io::stderr().is_terminal();
        Progress {
            bar: None,
            plain: !json && !tty,
        }
        .with_bar(!json && tty)
    }

    fn with_bar(mut self, on: bool) -> Self {
        if on {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(std::time::Duration::from_millis(100));
            self.bar = Some(bar);
        }
        self
    }

    pub fn update(&mut self, message: &str, bytes: Option<(u64, u64)>) {
        if let Some(bar) = &self.bar {
            match bytes {
                Some((done, total)) => {
                    bar.set_message(format!("{message} ({}/{} MiB)", done >> 20, total >> 20))
                }
                None => {
                    bar.println(format!("  {message}"));
                    bar.set_message(message.to_string());
                }
            }
        } else if self.plain && bytes.is_none() {
            eprintln!("  {message}");
        }
    }

    pub fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    pub fn finish(&mut self) {
        self.clear();
    }
}

pub fn error(e: &Error, json: bool) -> i32 {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "error": e })).unwrap_or_default()
        );
    }
    eprintln!("error: {}", e.message);
    if let Some(h) = &e.hint {
        eprintln!("  hint: {h}");
    }
    e.kind.exit_code()
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let out: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:w$}", c, w = widths[i]))
            .collect();
        println!("{}", out.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn print_firewall(v: &Value) {
    if v["enabled"] != Value::Bool(true) {
        println!("The firewall is disabled ([firewall] enabled = false): ilot's table is absent.");
        return;
    }
    println!(
        "Table {}; the rest is dropped on {}.",
        s(&v["table"]),
        s(&v["interfaces"])
    );
    let rows: Vec<Vec<String>> = v["open"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| vec![s(&o["port"]), s(&o["for"])])
        .collect();
    table(&["OPEN", "FOR"], rows);
    for d in v["denied"].as_array().into_iter().flatten() {
        println!("closed by the admin: {}", s(d));
    }
    if let Some(p) = v["pending"].as_object() {
        println!(
            "\nWaiting for confirmation: {} (reverted at {} UTC unless `ilot firewall confirm`)",
            s(&p["change"]),
            crate::state::format_utc(p["deadline"].as_u64().unwrap_or(0))
        );
    }
    if let Some(e) = v["error"].as_str() {
        println!("\nerror: {e}");
    }
}

fn print_bans(v: &Value) {
    let now = crate::state::now();
    let rows: Vec<Vec<String>> = v["bans"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            let left = match b["until"].as_u64() {
                None => "for good".to_string(),
                Some(u) => humantime::format_duration(std::time::Duration::from_secs(
                    u.saturating_sub(now),
                ))
                .to_string(),
            };
            vec![
                s(&b["address"]),
                s(&b["jail"]),
                crate::state::format_utc(b["since"].as_u64().unwrap_or(0)),
                left,
                s(&b["count"]),
                s(&b["reason"]),
            ]
        })
        .collect();
    let total = v["total"].as_u64().unwrap_or(0);
    if total == 0 {
        println!("No address is banned.");
    } else {
        table(
            &["ADDRESS", "JAIL", "SINCE (UTC)", "LEFT", "BANS", "WHY"],
            rows,
        );
        if total as usize > v["bans"].as_array().map_or(0, |a| a.len()) {
            println!("({total} bans in all; `--json` lists the newest 1000)");
        }
    }
    if let Some(why) = v["not_enforced"].as_str() {
        println!("warning: {why}");
    }
    let bl = &v["blocklists"];
    if let Some(lists) = bl["lists"].as_object().filter(|l| !l.is_empty()) {
        println!(
            "
Blocklists: {} prefixes loaded{}",
            s(&bl["entries"]),
            bl["loaded"]
                .as_u64()
                .map(|t| format!(" at {} UTC", crate::state::format_utc(t)))
                .unwrap_or_default()
        );
        for (name, l) in lists {
            match l["error"].as_str() {
                Some(e) => println!("  {name}: error: {e}"),
                None => println!("  {name}: {} prefixes", s(&l["entries"])),
            }
        }
    }
}

/// Eight levels of a sparkline.
fn sparkline(values: &[f64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let (lo, hi) = values
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(*v), h.max(*v)));
    values
        .iter()
        .map(|v| {
            let i = if hi > lo {
                ((v - lo) / (hi - lo) * 7.0).round() as usize
            } else {
                0
            };
            BARS[i.min(7)]
        })
        .collect()
}

fn print_metrics(v: &Value) {
    for s in v["series"].as_array().into_iter().flatten() {
        match s["points"].as_array() {
            None => println!(
                "{:<40} {:>10.1}",
                self::s(&s["name"]),
                s["value"].as_f64().unwrap_or(0.0)
            ),
            Some(points) => {
                let values: Vec<f64> = points.iter().filter_map(|p| p["v"].as_f64()).collect();
                // At most 60 columns: average buckets of points.
                let per = values.len().div_ceil(60).max(1);
                let shown: Vec<f64> = values
                    .chunks(per)
                    .map(|c| c.iter().sum::<f64>() / c.len() as f64)
                    .collect();
                let (min, max) = values
                    .iter()
                    .fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(*v), h.max(*v)));
                println!(
                    "{:<32} {} last {:.1} (min {:.1}, max {:.1}, {} points)",
                    self::s(&s["name"]),
                    sparkline(&shown),
                    values.last().copied().unwrap_or(0.0),
                    min,
                    max,
                    values.len()
                );
            }
        }
    }
}

fn print_alerts(v: &Value) {
    let incidents = v["incidents"].as_array().cloned().unwrap_or_default();
    if incidents.is_empty() {
        println!("No alert firing.");
    } else {
        let rows = incidents
            .iter()
            .map(|i| {
                vec![
                    s(&i["rule"]),
                    s(&i["subject"]),
                    s(&i["severity"]),
                    s(&i["phase"]),
                    crate::state::format_utc(i["since"].as_u64().unwrap_or(0)),
                    if i["acked"] == Value::Bool(true) {
                        "yes".into()
                    } else {
                        "".into()
                    },
                ]
            })
            .collect();
        table(
            &[
                "RULE",
                "SUBJECT",
                "SEVERITY",
                "STATE",
                "SINCE (UTC)",
                "ACKED",
            ],
            rows,
        );
    }
    for si in v["silences"].as_array().into_iter().flatten() {
        println!(
            "silenced: {} until {} UTC",
            s(&si["rule"]),
            crate::state::format_utc(si["until"].as_u64().unwrap_or(0))
        );
    }
    for c in v["channels"].as_array().into_iter().flatten() {
        let err = c["error"]
            .as_str()
            .map(|e| format!(", last error: {e}"))
            .unwrap_or_default();
        println!(
            "channel {} ({}): {} queued{err}",
            s(&c["name"]),
            s(&c["kind"]),
            s(&c["queued"])
        );
    }
    if v["channels"].as_array().is_none_or(|c| c.is_empty()) {
        println!("No channel configured: alerts are only logged (see docs/monitor.md).");
    }
}

fn print_guard(v: &Value) {
    let rows: Vec<Vec<String>> = v["jails"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|j| {
            let sources: Vec<String> = j["sources"]
                .as_array()
                .into_iter()
                .flatten()
                .map(s)
                .collect();
            let filter = match j["mode"].as_str() {
                Some(mode) if !mode.is_empty() => format!("{} ({mode})", s(&j["filter"])),
                _ => s(&j["filter"]),
            };
            vec![
                s(&j["name"]),
                filter,
                if sources.is_empty() {
                    "(no log found)".into()
                } else {
                    sources.join(" ")
                },
                format!(
                    "{} in {}, {}",
                    s(&j["maxretry"]),
                    s(&j["findtime"]),
                    s(&j["bantime"])
                ),
                s(&j["failures"]),
                s(&j["bans"]),
            ]
        })
        .collect();
    table(
        &["JAIL", "FILTER", "READS", "BAN AFTER", "FAILURES", "BANS"],
        rows,
    );
    println!(
        "
{} active bans; IPv6 banned by /{}.",
        s(&v["active_bans"]),
        s(&v["ipv6_prefix"])
    );
    for a in v["allow"].as_array().into_iter().flatten() {
        println!("never banned: {} ({})", s(&a["net"]), s(&a["why"]));
    }
    if let Some(why) = v["not_enforced"].as_str() {
        println!("warning: {why}");
    }
    for e in v["errors"].as_array().into_iter().flatten() {
        println!("error: {}", s(e));
    }
}

/// Long values (DKIM keys) cut for a table; `--format zone` and `--json` give them whole.
fn ellipsis(v: &str, max: usize) -> String {
    if v.chars().count() <= max {
        v.to_string()
    } else {
        format!("{}…", v.chars().take(max - 1).collect::<String>())
    }
}

fn print_plan(v: &Value) {
    println!("Plan for {}:", s(&v["instance"]));
    for (i, step) in v["plan"].as_array().into_iter().flatten().enumerate() {
        println!("  {}. {}", i + 1, s(step));
    }
    print_wiring(v);
    println!("(dry run: nothing was changed)");
}

/// The wiring of an install preview (`app install --dry-run`): what the other subsystems get.
fn print_wiring(v: &Value) {
    let list = |key: &str| v[key].as_array().cloned().unwrap_or_default();
    let routes: Vec<String> = list("routes")
        .iter()
        .map(|r| {
            format!(
                "https://{}{} -> {}:{} (bodies up to {})",
                s(&r["domain"]),
                s(&r["path"]),
                s(&r["service"]),
                s(&r["port"]),
                s(&r["max_body"])
            )
        })
        .collect();
    let public: Vec<String> = list("published_ports")
        .iter()
        .filter(|p| p["public"] == Value::Bool(true))
        .map(|p| {
            format!(
                "{}/{} ({})",
                s(&p["host"]),
                s(&p["protocol"]),
                s(&p["service"])
            )
        })
        .collect();
    let firewall: Vec<String> = list("firewall")
        .iter()
        .map(|f| format!("{}/{}", s(&f["port"]), s(&f["protocol"])))
        .collect();
    let dns: Vec<String> = list("dns")
        .iter()
        .map(|r| {
            format!(
                "{} {} {}",
                s(&r["name"]),
                s(&r["type"]),
                ellipsis(&s(&r["value"]), 50)
            )
        })
        .collect();
    let jails: Vec<String> = list("log_filters")
        .iter()
        .map(|j| {
            format!(
                "{} (filter {}, reads {})",
                s(&j["jail"]),
                s(&j["filter"]),
                s(&j["source"])
            )
        })
        .collect();
    let probes: Vec<String> = list("probes")
        .iter()
        .map(|p| {
            format!(
                "{} {}:{}{}",
                s(&p["type"]),
                s(&p["service"]),
                s(&p["port"]),
                p["path"].as_str().unwrap_or("")
            )
        })
        .collect();
    let mut lines: Vec<(&str, Vec<String>)> = vec![
        ("routes", routes),
        ("public ports", public),
        ("firewall opens", firewall),
        ("DNS records", dns),
        ("jails", jails),
        ("probes", probes),
    ];
    if let Some(b) = v["backup"].as_object() {
        let mut parts: Vec<String> = b["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect();
        parts.extend(
            b["dump"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| format!("{} (dump from {})", s(&d["file"]), s(&d["service"]))),
        );
        lines.push(("backup", parts));
    }
    if v["smtp"].is_object() {
        let smtp = &v["smtp"];
        lines.push((
            "sends mail as",
            vec![smtp["account"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| s(&smtp["note"]))],
        ));
    }
    let settings: Vec<String> = v["settings"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, val)| format!("{k} = {}", s(val)))
        .collect();
    lines.push(("settings", settings));
    if let Some(a) = v["admin"].as_object() {
        lines.push((
            "admin login",
            vec![format!(
                "{} at {} (password generated, shown once)",
                s(&a["user"]),
                s(&a["url"])
            )],
        ));
    }
    for (label, items) in lines.into_iter().filter(|(_, i)| !i.is_empty()) {
        println!("{label}:");
        for i in items {
            println!("  - {i}");
        }
    }
    for f in v["forced_past"]
        .as_array()
        .into_iter()
        .chain(v["resources"]["forced_past"].as_array())
        .flatten()
    {
        println!("installing anyway (--force): {}", s(f));
    }
}

pub fn human(req: &Request, v: &Value) {
    if v["dry_run"] == Value::Bool(true) && !matches!(req, Request::DnsApply { .. }) {
        return print_plan(v);
    }
    match req {
        Request::Status => {
            let e = &v["engine"];
            println!(
                "ilot {} — daemon up {}s (pid {})",
                s(&v["version"]),
                s(&v["uptime_secs"]),
                s(&v["pid"])
            );
            if e["reachable"] == Value::Bool(true) {
                println!(
                    "engine:     Docker {} at {}",
                    s(&e["version"]),
                    s(&e["address"])
                );
            } else {
                println!(
                    "engine:     NOT REACHABLE at {}: {}",
                    s(&e["address"]),
                    s(&e["error"])
                );
            }
            let counts: Vec<String> = v["instances"]["by_status"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, n)| format!("{n} {k}"))
                .collect();
            let total = s(&v["instances"]["total"]);
            if counts.is_empty() {
                println!("instances:  {total}");
            } else {
                println!("instances:  {total} ({})", counts.join(", "));
            }
            if v["ready"] != Value::Bool(true) {
                println!("ready:      no (waiting for the engine, then replaying the journal)");
            }
            let m = &v["monitor"];
            if let Some(f) = m["figures"].as_object().filter(|f| !f.is_empty()) {
                let fig = |k: &str| f.get(k).and_then(Value::as_f64).unwrap_or(0.0);
                let disks: Vec<String> = f
                    .iter()
                    .filter_map(|(k, v)| {
                        Some(format!("{} {:.0} %", k.strip_prefix("disk:")?, v.as_f64()?))
                    })
                    .collect();
                println!(
                    "host:       CPU {:.0} %, load {:.2}, memory {:.0} %; disks {}",
                    fig("cpu"),
                    fig("load1"),
                    fig("mem"),
                    disks.join(", ")
                );
            }
            for a in m["alerts"].as_array().into_iter().flatten() {
                println!(
                    "ALERT:      {} {}: {} (`ilot alert list`)",
                    s(&a["severity"]),
                    s(&a["rule"]),
                    s(&a["subject"])
                );
            }
            println!("catalogue:  {} apps", s(&v["catalog_apps"]));
            println!("config:     {}", s(&v["config"]));
            println!("state:      {}", s(&v["state_dir"]));
        }
        Request::Plan => {
            let changes = v["changes"].as_array().cloned().unwrap_or_default();
            let pending = v["operations_in_progress"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if changes.is_empty() && pending.is_empty() {
                println!("Nothing to do: every instance matches its desired state.");
            }
            for c in changes {
                println!("{} ({}):", s(&c["instance"]), s(&c["reason"]));
                for step in c["plan"].as_array().into_iter().flatten() {
                    println!("  - {}", s(step));
                }
            }
            for p in pending {
                println!(
                    "operation in progress: {} {} ({})",
                    s(&p["kind"]),
                    s(&p["instance"]),
                    s(&p["step"])
                );
            }
        }
        Request::Events { .. } => {
            for e in v.as_array().into_iter().flatten() {
                println!(
                    "{}  {:<20} {:<12} {}",
                    crate::state::format_utc(e["time"].as_u64().unwrap_or(0)),
                    s(&e["kind"]),
                    e["instance"].as_str().unwrap_or("-"),
                    s(&e["message"])
                );
            }
        }
        Request::Catalog => {
            let rows = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| vec![s(&a["name"]), s(&a["version"]), s(&a["description"])])
                .collect();
            table(&["APP", "VERSION", "DESCRIPTION"], rows);
        }
        Request::AppList => {
            let apps = v.as_array().cloned().unwrap_or_default();
            if apps.is_empty() {
                println!("No app installed. See `ilot app catalog`, then `ilot app install APP`.");
                return;
            }
            let rows = apps
                .iter()
                .map(|a| {
                    vec![
                        s(&a["name"]),
                        s(&a["app"]),
                        s(&a["version"]),
                        s(&a["status"]),
                        s(&a["health"]),
                        s(&a["url"]),
                    ]
                })
                .collect();
            table(&["NAME", "APP", "VERSION", "STATUS", "HEALTH", "URL"], rows);
        }
        Request::AppShow { .. } => {
            println!(
                "{} ({} {}): {}",
                s(&v["name"]),
                s(&v["app"]),
                s(&v["version"]),
                s(&v["description"])
            );
            println!(
                "status:    {} (wanted: {})",
                s(&v["status"]),
                s(&v["desired"])
            );
            if !v["message"].is_null() {
                println!("message:   {}", s(&v["message"]));
            }
            println!("health:    {}", s(&v["health"]));
            println!("url:       {}", s(&v["url"]));
            println!("domain:    {}", s(&v["domain"]));
            println!("services:");
            for svc in v["services"].as_array().into_iter().flatten() {
                let ports: Vec<String> = svc["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| format!("{}->{}", s(&p["host"]), s(&p["container"])))
                    .collect();
                println!(
                    "  {}: {} ({}), {}{}{}",
                    s(&svc["service"]),
                    s(&svc["image"]),
                    crate::plan::short_id(svc["image_id"].as_str().unwrap_or("")),
                    s(&svc["state"]),
                    svc["health"]
                        .as_str()
                        .map(|h| format!(", {h}"))
                        .unwrap_or_default(),
                    if ports.is_empty() {
                        String::new()
                    } else {
                        format!(", ports {}", ports.join(" "))
                    }
                );
            }
            let vols: Vec<String> = v["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(s)
                .collect();
            println!(
                "volumes:   {}",
                if vols.is_empty() {
                    "-".into()
                } else {
                    vols.join(", ")
                }
            );
            for (k, val) in v["settings"].as_object().into_iter().flatten() {
                println!("setting:   {k} = {}", s(val));
            }
            for k in v["secrets"].as_array().into_iter().flatten() {
                println!("secret:    {} (generated, hidden)", s(k));
            }
        }
        Request::AppLogs(_) => {}
        Request::DnsShow { .. } => {
            let rows: Vec<Vec<String>> = v["records"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    vec![
                        s(&r["name"]),
                        s(&r["type"]),
                        ellipsis(&s(&r["value"]), 60),
                        s(&r["reason"]),
                        match r["mode"].as_str() {
                            Some("serve") => format!("served in {}", s(&r["zone"])),
                            Some("push") => format!("pushed to {}", s(&r["zone"])),
                            _ => "to paste".to_string(),
                        },
                    ]
                })
                .collect();
            if rows.is_empty() {
                println!("No record to publish: no app is served at a domain.");
            } else {
                table(&["NAME", "TYPE", "VALUE", "FOR", "WHERE"], rows);
                println!(
                    "(long values are cut here: `ilot dns show --format zone` prints them whole)"
                );
            }
            for z in v["zones"].as_array().into_iter().flatten() {
                if let Some(ds) = z["ds"].as_str() {
                    println!(
                        "\nZone {} is served and signed (serial {}). Give its parent (your registrar) this DS record:\n  {ds}",
                        s(&z["zone"]),
                        s(&z["serial"])
                    );
                }
            }
            for f in v["findings"].as_array().into_iter().flatten() {
                println!(
                    "\n{}: {}\n  fix: {}",
                    s(&f["domain"]),
                    s(&f["problem"]),
                    s(&f["fix"])
                );
            }
        }
        Request::FirewallShow => print_firewall(v),
        Request::BanList => print_bans(v),
        Request::Mail { op, .. } => print_mail(op, v),
        Request::Metrics { .. } => print_metrics(v),
        Request::AlertList => print_alerts(v),
        Request::AlertSilence { .. } | Request::AlertAck | Request::AlertTest => {
            println!("{}", s(&v["message"]))
        }
        Request::GuardShow => print_guard(v),
        Request::BanAdd { .. } | Request::BanRemove { .. } => println!("{}", s(&v["message"])),
        Request::FirewallAllow { .. } | Request::FirewallDeny { .. } | Request::FirewallConfirm => {
            println!("{}", s(&v["message"]));
        }
        Request::DnsApply { .. } => {
            for z in v["served"].as_array().into_iter().flatten() {
                println!(
                    "served  {}  serial {}  {} records",
                    s(&z["zone"]),
                    s(&z["serial"]),
                    s(&z["records"])
                );
            }
            let dry = v["dry_run"] == Value::Bool(true);
            for z in v["pushed"].as_array().into_iter().flatten() {
                let verb = if dry { "would push" } else { "pushed" };
                let count = |k: &str| z[k].as_array().map_or(0, |a| a.len());
                println!(
                    "{verb}  {} to {}: {} added, {} removed, {} left alone (created by others)",
                    s(&z["zone"]),
                    s(&z["server"]),
                    count("added"),
                    count("removed"),
                    count("foreign")
                );
                for (k, sign) in [("added", "+"), ("removed", "-")] {
                    for r in z[k].as_array().into_iter().flatten() {
                        println!(
                            "  {sign} {} {} {}",
                            s(&r["name"]),
                            s(&r["type"]),
                            s(&r["value"])
                        );
                    }
                }
            }
            if let Some(m) = v["message"].as_str() {
                println!("{m}");
            } else if v["printed"].as_u64().unwrap_or(0) > 0 {
                println!(
                    "{} record(s) are in no configured zone: paste them at your DNS provider (`ilot dns show`)",
                    s(&v["printed"])
                );
            }
        }
        Request::Diagnose { .. } => {
            let checks = v["checks"].as_array().cloned().unwrap_or_default();
            for c in &checks {
                let mark = match c["status"].as_str() {
                    Some("ok") => "ok  ",
                    Some("warn") => "WARN",
                    _ => "FAIL",
                };
                println!("{mark}  {}", s(&c["subject"]));
                if c["status"] != "ok" {
                    println!("      expected: {}", s(&c["expected"]));
                    println!("      seen:     {}", s(&c["seen"]));
                    println!("      fix:      {}", s(&c["fix"]));
                }
            }
            let fails = checks.iter().filter(|c| c["status"] == "fail").count();
            let warns = checks.iter().filter(|c| c["status"] == "warn").count();
            println!(
                "\n{} checks: {} failed, {} warnings",
                checks.len(),
                fails,
                warns
            );
        }
        Request::DomainList => {
            let rows: Vec<Vec<String>> = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| {
                    let primary = if d["primary"] == Value::Bool(true) {
                        "primary"
                    } else {
                        "alias"
                    };
                    vec![
                        s(&d["domain"]),
                        s(&d["instance"]),
                        s(&d["app"]),
                        primary.to_string(),
                        s(&d["certificate"]),
                        s(&d["last_error"]),
                    ]
                })
                .collect();
            if rows.is_empty() {
                println!("No domain is served. Use `ilot app install APP --domain D` or `ilot domain add D INSTANCE`.");
            } else {
                table(
                    &["DOMAIN", "INSTANCE", "APP", "", "CERT", "LAST ERROR"],
                    rows,
                );
            }
        }
        Request::DomainAdd { domain, instance } => println!("{domain} now serves {instance}"),
        Request::DomainRemove { domain } => println!("{domain} is no longer served"),
        Request::CertList | Request::CertRenew { .. } => {
            let rows: Vec<Vec<String>> = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    let t = |k: &str| {
                        c[k].as_u64()
                            .map(crate::state::format_utc)
                            .unwrap_or_else(|| "-".into())
                    };
                    let issuer = c["issuer"]
                        .as_str()
                        .map(|i| i.rsplit("CN=").next().unwrap_or(i).to_string());
                    vec![
                        s(&c["domain"]),
                        s(&c["source"]),
                        issuer.unwrap_or_else(|| "-".into()),
                        t("not_after"),
                        t("next_renewal"),
                        s(&c["last_error"]),
                    ]
                })
                .collect();
            if rows.is_empty() {
                println!("No domain is served. Install an app with --domain to get one.");
            } else {
                table(
                    &[
                        "DOMAIN",
                        "CERT",
                        "ISSUER",
                        "EXPIRES",
                        "RENEWS",
                        "LAST ERROR",
                    ],
                    rows,
                );
            }
        }
        Request::AppInstall(_) => {
            println!(
                "{} installed and healthy{}",
                s(&v["instance"]),
                v["url"]
                    .as_str()
                    .map(|u| format!(": {u}"))
                    .unwrap_or_default()
            );
            let c = &v["credentials"];
            if let Some(a) = c["admin"].as_object() {
                println!(
                    "admin login: {} at {}\n  password:  {}",
                    s(&a["user"]),
                    a.get("url")
                        .and_then(Value::as_str)
                        .unwrap_or("(the app's own login page)"),
                    s(&a["password"])
                );
            }
            for (k, val) in c["secrets"].as_object().into_iter().flatten() {
                if c["admin"]["password"] != *val {
                    println!("{k}: {}", s(val));
                }
            }
            if c.is_object() {
                println!("(shown once: keep it in your password manager now; ilot will not show it again)");
            }
        }
        Request::AppInfo { .. } => print_app_info(v),
        Request::BackupInit { .. } => {
            if v["created"] == Value::Bool(true) {
                println!("backup repository {} made", s(&v["repository"]));
            } else {
                println!("{}", s(&v["message"]));
            }
            if let Some(p) = v["password"].as_str() {
                println!(
                    "its password: {p}\n(shown once: keep it away from this machine, e.g. in your password manager; \
                     without it the backups cannot be read. It is also in {}, 0600)",
                    s(&v["password_file"])
                );
            }
        }
        Request::BackupRun { .. } => {
            for snap in v["snapshots"].as_array().into_iter().flatten() {
                println!(
                    "{}: snapshot {} ({} read, {} new)",
                    s(&snap["instance"]),
                    s(&snap["id"]),
                    size(&snap["bytes"]),
                    size(&snap["added"])
                );
            }
            if let Some(m) = v["message"].as_str() {
                println!("{m}");
            }
            println!(
                "retention: {} old snapshot(s) forgotten",
                s(&v["forgotten"])
            );
        }
        Request::BackupList => {
            let rows: Vec<Vec<String>> = v["snapshots"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| {
                    vec![
                        s(&x["id"]),
                        s(&x["time"]),
                        match x["instance"].as_str() {
                            Some("") => "(ilot: config, keys)".to_string(),
                            _ => s(&x["instance"]),
                        },
                        s(&x["app"]),
                        size(&x["bytes"]),
                    ]
                })
                .collect();
            if rows.is_empty() {
                println!(
                    "No snapshot in {} yet: `ilot backup run`.",
                    s(&v["repository"])
                );
            } else {
                table(&["SNAPSHOT", "TIME", "INSTANCE", "APP", "SIZE"], rows);
            }
        }
        Request::BackupRecover => {
            for i in v["restored"].as_array().into_iter().flatten() {
                println!(
                    "{}: restored from snapshot {}",
                    s(&i["instance"]),
                    s(&i["snapshot"])
                );
            }
            for i in v["skipped"].as_array().into_iter().flatten() {
                println!("{}: already here, left alone", s(i));
            }
            for k in v["keys"].as_array().into_iter().flatten() {
                println!("restored: {}", s(k));
            }
            if let Some(c) = v["config"].as_str() {
                println!("the old config is at {c}: review it, install it as the config, then restart the daemon");
            }
        }
        Request::BackupDrill { .. } => {
            for d in v["drills"].as_array().into_iter().flatten() {
                println!(
                    "{}: snapshot {} restores: {} files identical to the repository's, healthy ({:.1} s)",
                    s(&d["instance"]),
                    s(&d["snapshot"]),
                    s(&d["verified_files"]),
                    d["seconds"].as_f64().unwrap_or(0.0)
                );
            }
        }
        Request::BackupRestore { .. } => {
            println!(
                "{} restored from snapshot {} of {}{}",
                s(&v["instance"]),
                s(&v["snapshot"]),
                s(&v["from"]),
                v["url"]
                    .as_str()
                    .map(|u| format!(": {u}"))
                    .unwrap_or_default()
            );
            if let Some(before) = v["before"].as_str() {
                println!("what it replaced is kept as snapshot {before}");
            }
        }
        Request::BackupCheck { .. } => {
            for f in v["findings"].as_array().into_iter().flatten() {
                println!("{}", s(f));
            }
            println!(
                "{}: {}{}",
                s(&v["repository"]),
                if v["ok"] == Value::Bool(true) {
                    "no error found"
                } else {
                    "ERRORS found"
                },
                if v["read_data"] == Value::Bool(true) {
                    " (every pack read)"
                } else {
                    " (structure; --read-data reads every pack)"
                }
            );
        }
        Request::AppUpgrade(_) => match v["status"].as_str() {
            Some("up-to-date") => println!("{}", s(&v["message"])),
            _ => println!("{} upgraded and healthy", s(&v["instance"])),
        },
        Request::AppRemove(_) => println!("{}", s(&v["message"])),
        Request::AppStart { name } => println!("{name} started and healthy"),
        Request::AppStop { name } => println!("{name} stopped"),
        Request::AppRestart { name } => println!("{name} restarted and healthy"),
    }
}

fn print_mail(op: &crate::api::MailOp, v: &Value) {
    use crate::api::MailOp as M;
    let rows = |key: &str| v[key].as_array().cloned().unwrap_or_default();
    let size = |q: &Value| match q.as_u64() {
        Some(b) if b % (1 << 30) == 0 => format!("{}G", b >> 30),
        Some(b) => format!("{}M", b >> 20),
        None => "-".into(),
    };
    match op {
        M::DomainList => table(
            &["DOMAIN", "MAILBOXES", "ALIASES", "DKIM"],
            rows("domains")
                .iter()
                .map(|d| {
                    vec![
                        s(&d["domain"]),
                        s(&d["mailboxes"]),
                        s(&d["aliases"]),
                        s(&d["dkim_selector"]),
                    ]
                })
                .collect(),
        ),
        M::UserList => table(
            &["ADDRESS", "QUOTA", "CREATED"],
            rows("users")
                .iter()
                .map(|u| {
                    let created = crate::state::format_utc(u["created"].as_u64().unwrap_or(0));
                    vec![s(&u["address"]), size(&u["quota"]), created]
                })
                .collect(),
        ),
        M::AliasList => table(
            &["ALIAS", "DELIVERED TO"],
            rows("aliases")
                .iter()
                .map(|a| {
                    let mut name = s(&a["address"]);
                    if a["catch_all"] == Value::Bool(true) {
                        name.push_str(" (catch-all)");
                    }
                    let targets: Vec<String> = a["targets"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(s)
                        .collect();
                    vec![name, targets.join(", ")]
                })
                .collect(),
        ),
        M::RelayShow => match v["relay"].as_object() {
            Some(r) => println!(
                "outbound mail goes through {}:{} as {} (TLS {}); SPF: {}",
                s(&r["host"]),
                s(&r["port"]),
                s(&r["user"]),
                if r["tls"] == "none" {
                    "when offered"
                } else {
                    "required"
                },
                match r["spf_include"].as_str() {
                    Some(d) => format!("include:{d}"),
                    None =>
                        "the relay's servers are not covered (set again with --spf-include DOMAIN)"
                            .to_string(),
                }
            ),
            None => println!(
                "no relay: outbound mail goes straight to the recipients' servers (port 25)"
            ),
        },
        M::DkimShow => {
            for d in rows("domains") {
                let retiring: Vec<String> = d["retiring"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(sel, t)| {
                        format!(
                            "{sel} (withdrawn {})",
                            crate::state::format_utc(t.as_u64().unwrap_or(0))
                        )
                    })
                    .collect();
                let published: Vec<String> = d["published"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(s)
                    .collect();
                println!("{}", s(&d["domain"]));
                println!("  signing with:  {}", s(&d["signing"]));
                if let Some(p) = d["pending"].as_str() {
                    println!("  next:          {p} (published; signing switches once it resolves)");
                }
                if !retiring.is_empty() {
                    println!("  retiring:      {}", retiring.join(", "));
                }
                println!("  published:     {}", published.join(", "));
            }
        }
        M::Queue => {
            if v["count"] == 0 {
                return println!("the queue is empty");
            }
            table(
                &["ID", "QUEUE", "FROM", "TO", "WHY IT WAITS"],
                rows("messages")
                    .iter()
                    .map(|m| {
                        let to: Vec<String> =
                            m["to"].as_array().into_iter().flatten().map(s).collect();
                        vec![
                            s(&m["id"]),
                            s(&m["queue"]),
                            s(&m["from"]),
                            to.join(", "),
                            s(&m["reason"]),
                        ]
                    })
                    .collect(),
            );
        }
        _ => println!("{}", s(&v["message"])),
    }
}

/// `ilot app info APP`.
fn print_app_info(v: &Value) {
    println!(
        "{} {}: {}",
        s(&v["name"]),
        s(&v["version"]),
        s(&v["description"])
    );
    println!("upstream:  {}", s(&v["upstream"]));
    println!("licence:   {}", s(&v["license"]));
    let r = &v["resources"];
    let size = |x: &Value| {
        x.as_u64()
            .map(crate::catalog::gib)
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "needs:     {} memory, {} free disk, {}{}",
        size(&r["memory"]),
        size(&r["disk"]),
        match r["arch"].as_array() {
            Some(a) if !a.is_empty() => a.iter().map(s).collect::<Vec<_>>().join("/"),
            _ => "any architecture".into(),
        },
        if v["needs_domain"] == Value::Bool(true) {
            "; a domain of its own (--domain)"
        } else {
            ""
        }
    );
    for x in r["extra"].as_array().into_iter().flatten() {
        println!(
            "           with {}: {} memory ({})",
            s(&x["when"]),
            s(&x["memory"]),
            s(&x["why"])
        );
    }
    println!(
        "this host: {} memory, {} free, {}: {}",
        size(&r["host"]["memory"]),
        size(&r["host"]["disk_free"]),
        s(&r["host"]["arch"]),
        if r["fits"] == Value::Bool(true) {
            "fits with the default settings".to_string()
        } else {
            format!(
                "too small: {}",
                r["problems"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(s)
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        }
    );
    println!("services:");
    for svc in v["services"].as_array().into_iter().flatten() {
        println!(
            "  {}: {}{} (memory limit {})",
            s(&svc["name"]),
            s(&svc["image"]),
            svc["digest"]
                .as_str()
                .map(|d| format!("@{}", &d[..d.len().min(19)]))
                .unwrap_or_default(),
            s(&svc["memory"])
        );
    }
    println!("opens:");
    let mut opened = false;
    for p in v["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["public"] == Value::Bool(true))
    {
        opened = true;
        println!(
            "  port {}/{} to the world ({}){}",
            s(&p["host"]),
            s(&p["protocol"]),
            s(&p["name"]),
            p["when"]
                .as_str()
                .map(|w| format!(", only when {w}"))
                .unwrap_or_default()
        );
    }
    for r in v["routes"].as_array().into_iter().flatten() {
        opened = true;
        println!(
            "  https://DOMAIN{} through ilot's proxy (bodies up to {})",
            s(&r["path"]),
            s(&r["max_body"])
        );
    }
    if !opened {
        println!("  nothing to the world");
    }
    println!("DNS records:");
    for d in v["dns"].as_array().into_iter().flatten() {
        println!("  {} {}: {}", s(&d["name"]), s(&d["type"]), s(&d["value"]));
    }
    let names = |key: &str, field: &str| -> String {
        let items: Vec<String> = v[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| s(&x[field]))
            .collect();
        if items.is_empty() {
            "-".into()
        } else {
            items.join(", ")
        }
    };
    println!(
        "sends mail: {}",
        if v["smtp"] == Value::Bool(true) {
            "yes (an account on the mail server, made at install)"
        } else {
            "no"
        }
    );
    println!("bans with:  {}", names("log_filters", "filter"));
    println!("probes:     {}", names("probes", "type"));
    if let Some(b) = v["backup"].as_object() {
        let vols: Vec<String> = b["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect();
        let dumps: Vec<String> = b["dump"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| format!("{} from {}", s(&d["file"]), s(&d["service"])))
            .collect();
        println!(
            "backs up:   volumes {}; dumps {}",
            vols.join(", "),
            if dumps.is_empty() {
                "-".into()
            } else {
                dumps.join(", ")
            }
        );
    }
    println!("settings (--set KEY=VALUE):");
    for st in v["settings"].as_array().into_iter().flatten() {
        let default = match (&st["default_here"], &st["default"]) {
            (Value::Null, _) => "required".to_string(),
            (here, d) if here != d && !d.is_null() => {
                format!("default here {}, elsewhere {}", s(here), s(d))
            }
            (here, _) => format!("default {}", s(here)),
        };
        let choices = st["choices"]
            .as_array()
            .filter(|c| !c.is_empty())
            .map(|c| format!(", one of {}", c.iter().map(s).collect::<Vec<_>>().join("|")))
            .unwrap_or_default();
        println!(
            "  {} ({default}{choices}){}: {}",
            s(&st["key"]),
            if st["ask"] == Value::Bool(true) {
                ", asked at install"
            } else {
                ""
            },
            s(&st["description"])
        );
    }
    if let Some(a) = v["admin"].as_object() {
        println!(
            "admin:      {} at https://DOMAIN{}, password generated and shown once at install",
            s(&a["user"]),
            s(&a["path"])
        );
    }
}

/// Bytes, short: "12.3 MiB".
fn size(v: &Value) -> String {
    let b = v.as_u64().unwrap_or(0) as f64;
    match b {
        b if b >= (1u64 << 30) as f64 => format!("{:.1} GiB", b / (1u64 << 30) as f64),
        b if b >= (1u64 << 20) as f64 => format!("{:.1} MiB", b / (1u64 << 20) as f64),
        b if b >= 1024.0 => format!("{:.1} KiB", b / 1024.0),
        b => format!("{b} B"),
    }
}
