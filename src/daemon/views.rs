//! Read-only answers: status, list, show, catalogue, logs. They read the in-memory mirrors
//! (instances, observed containers) so they answer without touching the disk or the engine.

use super::Daemon;
use crate::api::server::Replies;
use crate::api::{LogsParams, Reply};
use crate::error::Result;
use crate::plan::{self, ObservedContainer};
use crate::state::{Instance, Status};
use futures_util::StreamExt;
use serde_json::{json, Value};

impl Daemon {
    pub(super) fn observed_of(&self, instance: &str) -> Vec<ObservedContainer> {
        self.runtime
            .get()
            .map(|(_, o)| o.containers_of(instance))
            .unwrap_or_default()
    }

    /// https://DOMAIN/ when the proxy serves the instance, else the main service's first
    /// published port, e.g. http://127.0.0.1:49153/.
    pub(super) fn url_of(&self, inst: &Instance) -> Option<String> {
        if let (Some(domain), Ok(proxy)) = (&inst.domain, &self.proxy) {
            if let Some(r) = inst.manifest.needs.routes.first() {
                let port = match proxy.https_addr.port() {
                    443 => String::new(),
                    p => format!(":{p}"),
                };
                return Some(format!("https://{domain}{port}{}", r.path));
            }
        }
        // An app that serves no web page (mail) has no URL.
        if inst.manifest.needs.routes.is_empty() {
            return None;
        }
        let main = inst.manifest.main_service();
        let port = inst.manifest.services.get(main)?.ports.first()?.container;
        let name = plan::container_name(&inst.name, main);
        let observed = self.observed_of(&inst.name);
        let addr = observed
            .iter()
            .find(|c| c.name == name)?
            .ports
            .get(&port)?
            .clone();
        Some(format!("http://{addr}/"))
    }

    /// Status as a user means it: the stored status, unless the containers say otherwise.
    fn live_status(
        &self,
        inst: &Instance,
        observed: &[ObservedContainer],
    ) -> (String, Option<String>) {
        let main = plan::container_name(&inst.name, inst.manifest.main_service());
        let health = displayed_health(inst, observed.iter().find(|c| c.name == main));
        let apps: Vec<&ObservedContainer> = observed.iter().filter(|c| c.role == "app").collect();
        let status = match inst.status {
            Status::Running if self.runtime.get().is_none() => "unknown".to_string(),
            Status::Running
                if apps.len() < inst.manifest.services.len()
                    || apps.iter().any(|c| !c.running()) =>
            {
                "degraded".to_string()
            }
            s => serde_json::to_value(s)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
        };
        (status, health)
    }

    pub(super) fn status_view(&self) -> Value {
        let observed = self.runtime.get().map(|(_, o)| o.get()).unwrap_or_default();
        let instances = self.instances.read().expect("instances lock");
        let mut counts = serde_json::Map::new();
        for inst in instances.values() {
            let (status, _) = self.live_status(inst, &self.observed_of(&inst.name));
            let n = counts.get(&status).and_then(Value::as_u64).unwrap_or(0);
            counts.insert(status, json!(n + 1));
        }
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "uptime_secs": self.started.elapsed().as_secs(),
            "config": self.config_path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(embedded default)".into()),
            "socket": self.config.daemon.socket,
            "state_dir": self.config.daemon.state_dir,
            "owner": self.owner,
            "engine": {
                "address": self.config.daemon.docker,
                "reachable": observed.engine_ok,
                "version": observed.engine_version,
                "error": observed.engine_error,
            },
            "ready": self.ready.load(std::sync::atomic::Ordering::SeqCst),
            "busy": self.op_lock.try_lock().is_err(),
            "instances": { "total": instances.len(), "by_status": counts },
            "catalog_apps": self.catalog.apps.len(),
            "proxy": match &self.proxy {
                Ok(p) => json!({ "http": p.http_addr.to_string(), "https": p.https_addr.to_string(), "hosts": p.hosts() }),
                Err(e) => json!({ "error": e }),
            },
            "monitor": self.monitor_summary(),
            "dns": match (&self.dns_server, &self.dns_server_error) {
                (Some(s), _) => json!({ "listen": s.addrs, "zones": s.zones() }),
                (None, Some(e)) => json!({ "error": e }),
                (None, None) => json!(null),
            },
        })
    }

    pub(super) fn list_view(&self) -> Value {
        let instances = self.instances.read().expect("instances lock");
        let rows: Vec<Value> = instances
            .values()
            .map(|inst| {
                let (status, health) = self.live_status(inst, &self.observed_of(&inst.name));
                json!({
                    "name": inst.name,
                    "app": inst.app,
                    "version": inst.manifest.version,
                    "status": status,
                    "health": health,
                    "domain": inst.domain,
                    "url": self.url_of(inst),
                })
            })
            .collect();
        Value::Array(rows)
    }

    pub(super) fn show_view(&self, name: &str) -> Result<Value> {
        let inst = self.instance(name)?;
        let observed = self.observed_of(name);
        let (status, health) = self.live_status(&inst, &observed);
        let services: Vec<Value> = inst
            .manifest
            .service_order()
            .unwrap_or_default()
            .iter()
            .map(|s| {
                let cname = plan::container_name(name, s);
                let c = observed.iter().find(|c| c.name == cname);
                let image = &inst.images[s];
                json!({
                    "service": s,
                    "container": cname,
                    "image": image.reference,
                    "image_id": image.id,
                    "state": c.map(|c| c.state.clone()).unwrap_or_else(|| "missing".into()),
                    "health": displayed_health(&inst, c),
                    "ports": c.map(|c| c.ports.iter().map(|(p, a)| json!({"container": p, "host": a})).collect::<Vec<_>>()).unwrap_or_default(),
                })
            })
            .collect();
        // Secrets are named, never shown.
        let secrets: Vec<&String> = inst.secrets.keys().collect();
        Ok(json!({
            "name": inst.name,
            "app": inst.app,
            "version": inst.manifest.version,
            "description": inst.manifest.description,
            "status": status,
            "health": health,
            "message": inst.message,
            "desired": if inst.running { "running" } else { "stopped" },
            "domain": inst.domain,
            "url": self.url_of(&inst),
            "settings": inst.settings,
            "secrets": secrets,
            "services": services,
            "network": plan::network_name(name),
            "volumes": inst.manifest.volumes.keys().map(|v| plan::volume_name(name, v)).collect::<Vec<_>>(),
            "needs": inst.manifest.needs,
            "mail_client": inst.mail_client,
            "created_at": inst.created_at,
            "updated_at": inst.updated_at,
        }))
    }

    /// Every served domain with its instance and certificate.
    pub(super) fn domain_view(&self) -> Value {
        let certs: Vec<crate::certs::CertStatus> =
            self.certs.as_ref().map(|c| c.list()).unwrap_or_default();
        let mut rows = Vec::new();
        for inst in self.instances.read().expect("instances lock").values() {
            for (i, domain) in inst.domains().enumerate() {
                let cert = certs.iter().find(|c| &c.domain == domain);
                rows.push(json!({
                    "domain": domain,
                    "instance": inst.name,
                    "app": inst.app,
                    "primary": i == 0,
                    "certificate": cert.map(|c| c.source.clone()).unwrap_or_else(|| "none".into()),
                    "not_after": cert.and_then(|c| c.not_after),
                    "last_error": cert.and_then(|c| c.last_error.clone()),
                }));
            }
        }
        Value::Array(rows)
    }

    /// `ilot dns show`: the records the served domains need, and what cannot be computed.
    pub(super) fn catalog_view(&self) -> Value {
        let apps: Vec<Value> = self
            .catalog
            .apps
            .values()
            .map(|m| {
                json!({
                    "name": m.name,
                    "version": m.version,
                    "description": m.description,
                    "upstream": m.upstream,
                    "license": m.license,
                    "services": m.services.iter().map(|(n, s)| json!({"name": n, "image": s.image, "digest": s.digest, "build": s.build})).collect::<Vec<_>>(),
                    "settings": m.settings,
                    "secrets": m.secrets.keys().collect::<Vec<_>>(),
                    "volumes": m.volumes,
                    "needs": m.needs,
                    "source": m.source,
                })
            })
            .collect();
        Value::Array(apps)
    }

    pub(super) async fn logs(&self, p: LogsParams, tx: &Replies) -> Result<Value> {
        let inst = self.instance(&p.name)?;
        let engine = self.engine()?;
        let services: Vec<String> = match &p.service {
            Some(s) => {
                inst.manifest.check_service(s)?;
                vec![s.clone()]
            }
            None => inst.manifest.service_order().unwrap_or_default(),
        };
        let streams = services.iter().map(|s| {
            let service = s.clone();
            engine
                .logs(&plan::container_name(&inst.name, s), p.follow, p.tail)
                .map(move |line| (service.clone(), line))
        });
        let mut merged = futures_util::stream::select_all(streams.map(Box::pin));
        while let Some((service, line)) = merged.next().await {
            let text = match line {
                Ok(t) => t,
                Err(e) if e.message.contains("404") => continue,
                Err(e) => return Err(e),
            };
            for l in text.lines() {
                if tx
                    .send(Reply::Log {
                        service: service.clone(),
                        line: l.to_string(),
                    })
                    .is_err()
                {
                    return Ok(Value::Null); // the client left
                }
            }
        }
        Ok(json!({ "instance": inst.name }))
    }
}

/// The engine says "starting" until its first (slow, steady-state) check; for an instance whose
/// health gate ilot saw pass, that means healthy.
fn displayed_health(inst: &Instance, container: Option<&ObservedContainer>) -> Option<String> {
    let raw = container.and_then(|c| c.health.clone());
    if inst.status == Status::Running && raw.as_deref() == Some("starting") {
        Some("healthy".into())
    } else {
        raw
    }
}
