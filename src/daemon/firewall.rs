//! The firewall subsystem in the daemon: the policy from SSH, the apps' declared ports, the
//! config and the admin's allow/deny; applied after every change. A change that could cut the
//! admin off (a deny) is commit-confirmed: reverted after `confirm_timeout` unless
//! `ilot firewall confirm` comes first, and reverted at start-up if the daemon died meanwhile.

use super::Daemon;
use crate::error::{Error, Result};
use crate::firewall::{self, Policy, Port};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;

/// The admin's own rules (`ilot firewall allow|deny`), kept in the store.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AdminRules {
    pub allow: Vec<Port>,
    pub deny: Vec<Port>,
}

/// A change waiting for `ilot firewall confirm`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    pub change: String,
    pub deadline: u64,
    pub previous: AdminRules,
}

const ADMIN_KEY: &str = "firewall.admin";
const PENDING_KEY: &str = "firewall.pending";

impl Daemon {
    fn admin_rules(&self) -> AdminRules {
        self.store
            .meta(ADMIN_KEY)
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_str(&v).ok())
            .unwrap_or_default()
    }

    fn pending(&self) -> Option<Pending> {
        self.store
            .meta(PENDING_KEY)
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_str(&v).ok())
    }

    /// What the table should hold now.
    pub(super) fn firewall_policy(&self) -> Policy {
        let cfg = &self.config.firewall;
        let mut open: Vec<(Port, String)> = Vec::new();
        let ssh = cfg.ssh_ports.clone().unwrap_or_else(firewall::ssh_ports);
        let admin = self.admin_rules();
        for p in ssh {
            open.push((
                Port {
                    port: p,
                    proto: firewall::Proto::Tcp,
                },
                "ssh".into(),
            ));
        }
        // ilot's own servers: the proxy (HTTP for ACME and redirects, HTTPS) and the DNS server.
        let tcp = |port| Port {
            port,
            proto: firewall::Proto::Tcp,
        };
        if let Ok(proxy) = &self.proxy {
            for addr in [proxy.http_addr, proxy.https_addr] {
                if !addr.ip().is_loopback() {
                    open.push((tcp(addr.port()), "proxy".into()));
                }
            }
        }
        if let Some(dns) = &self.dns_server {
            for addr in dns.addrs.iter().filter(|a| !a.ip().is_loopback()) {
                open.push((tcp(addr.port()), "dns".into()));
                open.push((
                    Port {
                        port: addr.port(),
                        proto: firewall::Proto::Udp,
                    },
                    "dns".into(),
                ));
            }
        }
        for p in cfg.open.iter().filter_map(|p| p.parse().ok()) {
            open.push((p, "config".into()));
        }
        for inst in self.instances_snapshot() {
            for f in &inst.manifest.needs.firewall {
                if !crate::catalog::condition_holds(f.when.as_deref(), &inst.settings) {
                    continue;
                }
                if let Ok(p) = format!("{}/{}", f.port, f.protocol).parse() {
                    open.push((p, format!("instance {}", inst.name)));
                }
            }
        }
        for p in &admin.allow {
            open.push((*p, "admin".into()));
        }
        open.retain(|(p, _)| !admin.deny.contains(p));
        open.sort();
        open.dedup();
        Policy {
            open,
            interfaces: cfg.interfaces.clone(),
        }
    }

    /// Applies the policy (or removes the table when the firewall is disabled).
    pub(super) fn refresh_firewall(&self) {
        // Disabled means untouched: the guard's sets live in this table too, so its bans are
        // then listed, not enforced (it says so). The store remembers that the table is ours
        // to remove: a daemon that never made one (another ilot's state dir, a test) leaves
        // the kernel's alone.
        const MADE: &str = "firewall.table";
        let result = if self.config.firewall.enabled {
            firewall::apply(&self.firewall_policy())
                .and_then(|()| self.store.write(|w| w.put_meta(MADE, "yes")))
        } else if self.store.meta(MADE).ok().flatten().as_deref() == Some("yes") {
            firewall::remove().and_then(|()| self.store.write(|w| w.put_meta(MADE, "no")))
        } else {
            Ok(())
        };
        let error = result.err().map(|e| e.to_string());
        if let Some(e) = &error {
            tracing::error!("firewall: {e}");
            self.bus.publish("firewall-failed", None, e.clone());
        }
        *self.firewall_error.lock().expect("firewall lock") = error;
    }

    /// At start: a change left unconfirmed when the daemon stopped is reverted (its admin
    /// may be locked out, and nobody is left to confirm it), then the policy applied.
    pub(super) fn start_firewall(self: &Arc<Self>) {
        match self.pending() {
            Some(p) => self.revert(&p, "never confirmed before the daemon stopped"),
            None => self.refresh_firewall(),
        }
    }

    /// Puts the admin rules back as they were before `p`, and applies them.
    fn revert(&self, p: &Pending, why: &str) {
        let _ = self.store.write(|w| {
            w.put_meta(
                ADMIN_KEY,
                &serde_json::to_string(&p.previous).unwrap_or_default(),
            )?;
            w.put_meta(PENDING_KEY, "null")
        });
        self.refresh_firewall();
        tracing::warn!("firewall: {} reverted: {why}", p.change);
        self.bus
            .publish("firewall-reverted", None, format!("{} ({why})", p.change));
    }

    fn require_firewall(&self) -> Result<()> {
        if self.config.firewall.enabled {
            Ok(())
        } else {
            Err(Error::bad_input(
                "the firewall is disabled in the config ([firewall] enabled = false)",
            )
            .hint("enable it in /etc/ilot/ilot.toml and restart the daemon"))
        }
    }

    pub(super) fn firewall_view(&self) -> Value {
        let policy = self.firewall_policy();
        json!({
            "enabled": self.config.firewall.enabled,
            "table": format!("inet {}", firewall::TABLE),
            "open": policy.open.iter().map(|(p, why)| json!({"port": p.to_string(), "for": why})).collect::<Vec<_>>(),
            "denied": self.admin_rules().deny.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "interfaces": if policy.interfaces.is_empty() { json!("all but loopback and Docker bridges") } else { json!(policy.interfaces) },
            "pending": self.pending(),
            "error": self.firewall_error.lock().expect("firewall lock").clone(),
        })
    }

    /// `ilot firewall allow PORT`: opening never cuts anyone off, so it applies at once.
    pub(super) fn firewall_allow(&self, port: &str) -> Result<Value> {
        self.require_firewall()?;
        let port: Port = port.parse()?;
        let mut rules = self.admin_rules();
        rules.deny.retain(|p| *p != port);
        if !rules.allow.contains(&port) {
            rules.allow.push(port);
        }
        self.store.write(|w| {
            w.put_meta(
                ADMIN_KEY,
                &serde_json::to_string(&rules).unwrap_or_default(),
            )
        })?;
        self.refresh_firewall();
        self.firewall_result(format!("{port} is open"))
    }

    /// `ilot firewall deny PORT`: closing may cut the admin off, so it is reverted unless
    /// confirmed in time.
    pub(super) fn firewall_deny(self: &Arc<Self>, port: &str) -> Result<Value> {
        self.require_firewall()?;
        let port: Port = port.parse()?;
        if self.pending().is_some() {
            return Err(
                Error::conflict("another firewall change is waiting for confirmation")
                    .hint("run `ilot firewall confirm` (or wait for it to be reverted) first"),
            );
        }
        let previous = self.admin_rules();
        let mut rules = previous.clone();
        rules.allow.retain(|p| *p != port);
        if !rules.deny.contains(&port) {
            rules.deny.push(port);
        }
        let timeout = self.config.firewall.confirm_timeout;
        let pending = Pending {
            change: format!("deny {port}"),
            deadline: crate::state::now() + timeout.as_secs(),
            previous,
        };
        // The pending change is journalled before it is applied: a daemon that dies in the
        // window reverts it when it starts again.
        self.store.write(|w| {
            w.put_meta(
                PENDING_KEY,
                &serde_json::to_string(&pending).unwrap_or_default(),
            )?;
            w.put_meta(
                ADMIN_KEY,
                &serde_json::to_string(&rules).unwrap_or_default(),
            )
        })?;
        self.refresh_firewall();
        let d = self.clone();
        let deadline = pending.deadline;
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let _lock = d.firewall_lock.lock().await;
            if let Some(p) = d.pending().filter(|p| p.deadline == deadline) {
                d.revert(&p, "not confirmed in time");
            }
        });
        self.firewall_result(format!(
            "{port} is closed; run `ilot firewall confirm` within {} s or it is reopened",
            timeout.as_secs()
        ))
    }

    pub(super) fn firewall_confirm(&self) -> Result<Value> {
        let Some(p) = self.pending() else {
            return Err(Error::not_found(
                "no firewall change is waiting for confirmation",
            ));
        };
        self.store.write(|w| w.put_meta(PENDING_KEY, "null"))?;
        self.bus
            .publish("firewall-confirmed", None, p.change.clone());
        Ok(json!({ "message": format!("{} confirmed", p.change) }))
    }

    fn firewall_result(&self, message: String) -> Result<Value> {
        // (The lock is released before firewall_view() takes it again.)
        let error = self.firewall_error.lock().expect("firewall lock").clone();
        match error {
            Some(e) => Err(Error::failed(e)),
            None => Ok(json!({ "message": message, "firewall": self.firewall_view() })),
        }
    }
}
