//! What an app asks of the machine and of the other subsystems, before and right after it is
//! installed: the resource check (memory, disk, architecture) that refuses an install the
//! machine clearly cannot run, the install preview (`--dry-run --json`: every container,
//! network, volume, route, port, DNS record, jail, probe and backup spec, nothing changed),
//! `ilot app info`, the post-install hooks, and the credentials shown once.

use super::{Daemon, Progress};
use crate::catalog::{self, gib, Manifest};
use crate::error::{Error, Result};
use crate::plan::{self, Action, ContainerSpec};
use crate::state::Instance;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The machine as the resource check sees it.
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// Memory in all (MemTotal), in bytes.
    pub memory: u64,
    /// Free bytes at the engine's data root (or `/`), if it could be read.
    pub disk_free: Option<u64>,
    pub disk_path: String,
    pub arch: &'static str,
}

impl HostFacts {
    /// Test hook: `ILOT_TEST_HOST_MEMORY=1G` makes the daemon see a machine with that much
    /// memory (to prove the refusal a 1 GiB Pi gets, on a bigger test machine).
    pub fn read() -> HostFacts {
        let memory = std::env::var("ILOT_TEST_HOST_MEMORY")
            .ok()
            .and_then(|m| catalog::parse_memory(&m))
            .map(|m| m as u64)
            .unwrap_or_else(mem_total);
        let disk_path = ["/var/lib/docker", "/"]
            .into_iter()
            .find(|p| std::path::Path::new(p).is_dir())
            .unwrap_or("/");
        HostFacts {
            memory,
            disk_free: free_bytes(disk_path),
            disk_path: disk_path.to_string(),
            arch: catalog::host_arch(),
        }
    }
}

fn mem_total() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

fn free_bytes(path: &str) -> Option<u64> {
    let c = std::ffi::CString::new(path).ok()?;
    // SAFETY: statvfs fills the zeroed struct we own; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0)
        .then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// What the app needs with these settings: (memory, disk, why), each the largest of the base
/// figure and the extras whose condition holds.
pub fn resource_needs(
    m: &Manifest,
    settings: &BTreeMap<String, String>,
) -> (Option<u64>, Option<u64>, Vec<String>) {
    let bytes = |s: &Option<String>| {
        s.as_deref()
            .and_then(catalog::parse_memory)
            .map(|b| b as u64)
    };
    let (mut memory, mut disk) = (bytes(&m.resources.memory), bytes(&m.resources.disk));
    let mut why = Vec::new();
    for x in &m.resources.extra {
        if catalog::condition_holds(Some(&x.when), settings) {
            memory = memory.max(bytes(&x.memory));
            disk = disk.max(bytes(&x.disk));
            why.push(x.why.clone());
        }
    }
    (memory, disk, why)
}

/// Why this machine clearly cannot run the app with these settings (empty: it can).
pub fn resource_problems(
    m: &Manifest,
    settings: &BTreeMap<String, String>,
    host: &HostFacts,
) -> Vec<String> {
    let (memory, disk, why) = resource_needs(m, settings);
    let with = if why.is_empty() {
        String::new()
    } else {
        format!(" with {}", why.join(" and "))
    };
    let mut out = Vec::new();
    // A machine sold with 1 GiB reports a little less (the kernel's and firmware's share).
    if let Some(need) = memory.filter(|n| host.memory < *n / 8 * 7) {
        out.push(format!(
            "{}{with} needs {} of memory; this machine has {}",
            m.name,
            gib(need),
            gib(host.memory)
        ));
    }
    if let (Some(need), Some(free)) = (disk, host.disk_free) {
        if free < need {
            out.push(format!(
                "{}{with} needs {} of free disk at {}; {} is free",
                m.name,
                gib(need),
                host.disk_path,
                gib(free)
            ));
        }
    }
    if !m.resources.arch.is_empty() && !m.resources.arch.iter().any(|a| a == host.arch) {
        out.push(format!(
            "{}'s images exist for {}; this machine is {}",
            m.name,
            m.resources.arch.join(", "),
            host.arch
        ));
    }
    out
}

/// The refusal of an install the machine cannot run, with what to do instead.
pub fn refuse_resources(m: &Manifest, problems: &[String]) -> Error {
    let lighter: Vec<String> = m
        .resources
        .extra
        .iter()
        .map(|x| format!("{} (needed for {})", x.when, x.why))
        .collect();
    let hint = if lighter.is_empty() {
        "install it on a bigger machine, or anyway with --force (it may be slow or run out of memory)"
            .to_string()
    } else {
        format!(
            "choose lighter settings (the extra need comes from: {}), or install anyway with --force",
            lighter.join("; ")
        )
    };
    Error::bad_input(format!(
        "this machine cannot run {}: {}",
        m.name,
        problems.join("; ")
    ))
    .hint(hint)
}

/// The ports an instance publishes on the host, with the service they lead to.
fn published(inst: &Instance) -> Vec<Value> {
    let mut out = Vec::new();
    for service in inst.manifest.service_order().unwrap_or_default() {
        let spec = ContainerSpec::for_service(inst, &service);
        for p in &spec.ports {
            out.push(json!({
                "service": service, "container": p.container, "protocol": p.protocol,
                "host": p.host, "host_ip": p.host_ip, "name": p.name,
                "public": p.host_ip != "127.0.0.1" && p.host_ip != "::1",
            }));
        }
    }
    out
}

impl Daemon {
    /// The install preview: the steps, and every object and wiring the install would make, as
    /// data. Nothing here changes anything.
    pub(super) fn install_preview(
        &self,
        inst: &Instance,
        actions: &[Action],
        missing_images: &[String],
        host: &HostFacts,
        forced: &[String],
    ) -> Value {
        let m = &inst.manifest;
        let mut steps: Vec<String> = missing_images.to_vec();
        steps.extend(actions.iter().map(Action::describe));
        steps.push(format!(
            "wait until healthy (up to {}s)",
            m.health_timeout.as_secs()
        ));
        for h in &m.hooks.post_install {
            steps.push(format!(
                "run the post-install hook in {}{}",
                h.service,
                if h.description.is_empty() {
                    String::new()
                } else {
                    format!(": {}", h.description)
                }
            ));
        }
        let containers: Vec<Value> = m
            .service_order()
            .unwrap_or_default()
            .iter()
            .map(|service| {
                let spec = ContainerSpec::for_service(inst, service);
                let svc = &m.services[service];
                json!({
                    "name": spec.name,
                    "service": service,
                    "image": spec.image_ref,
                    "digest": svc.digest,
                    "build": svc.build,
                    "user": spec.user,
                    "command": spec.command,
                    "memory": svc.memory,
                    "mounts": spec.mounts,
                    "ports": spec.ports,
                    // Names only: values may hold secrets.
                    "env": spec.env.keys().collect::<Vec<_>>(),
                    "depends_on": svc.depends_on,
                    "capabilities": spec.capabilities,
                    "health": svc.health.as_ref().map(|h| &h.cmd),
                })
            })
            .collect();
        let volumes: Vec<Value> = m
            .volumes
            .iter()
            .map(|(v, d)| json!({ "name": plan::volume_name(&inst.name, v), "volume": v, "description": d.description, "backup": d.backup }))
            .collect();
        let routes: Vec<Value> = inst
            .domains()
            .flat_map(|d| {
                m.needs.routes.iter().map(move |r| {
                    json!({ "domain": d, "path": r.path, "service": r.service, "container": plan::container_name(&inst.name, &r.service), "port": r.port, "max_body": r.max_body })
                })
            })
            .collect();
        let firewall: Vec<Value> = m
            .needs
            .firewall
            .iter()
            .filter(|f| catalog::condition_holds(f.when.as_deref(), &inst.settings))
            .map(|f| json!({ "port": f.port, "protocol": f.protocol }))
            .collect();
        let (records, findings) = match &inst.domain {
            Some(d) => self.dns_records_for(std::slice::from_ref(inst), Some(d)),
            None => (Vec::new(), Vec::new()),
        };
        let jails: Vec<Value> = m
            .needs
            .log_filters
            .iter()
            .map(|lf| {
                json!({
                    "jail": format!("{}-{}", inst.name, lf.filter),
                    "filter": lf.filter,
                    "source": match (&lf.service, &lf.volume, &lf.path) {
                        (Some(s), _, _) => format!("container {}", plan::container_name(&inst.name, s)),
                        (None, Some(v), Some(path)) => format!(
                            "file {path} in volume {}",
                            plan::volume_name(&inst.name, v)
                        ),
                        _ => "the proxy's access log".to_string(),
                    },
                })
            })
            .collect();
        let probes: Vec<Value> = m
            .needs
            .probes
            .iter()
            .map(|p| json!({ "service": p.service, "container": plan::container_name(&inst.name, &p.service), "type": p.kind, "port": p.port, "path": p.path }))
            .collect();
        let backup = m.needs.backup.as_ref().map(|b| {
            json!({
                "volumes": b.volumes.iter().map(|v| plan::volume_name(&inst.name, v)).collect::<Vec<_>>(),
                "dump": b.dump.iter().map(|d| json!({ "service": d.service, "container": plan::container_name(&inst.name, &d.service), "cmd": d.cmd, "file": d.file })).collect::<Vec<_>>(),
            })
        });
        let smtp = m.needs.smtp.then(|| match self.mail_server_domain() {
            Some((server, domain)) => json!({ "server": server, "account": format!("{}@{domain}", inst.name) }),
            None => json!({ "server": null, "account": null, "note": "no mail server is installed: the app cannot send mail until one is" }),
        });
        let (mem, disk, why) = resource_needs(m, &inst.settings);
        json!({
            "dry_run": true,
            "instance": inst.name,
            "app": inst.app,
            "version": m.version,
            "plan": steps,
            "network": plan::network_name(&inst.name),
            "containers": containers,
            "volumes": volumes,
            "domain": inst.domain,
            "routes": routes,
            "published_ports": published(inst),
            "firewall": firewall,
            "dns": records,
            "dns_findings": findings,
            "log_filters": jails,
            "probes": probes,
            "backup": backup,
            "smtp": smtp,
            "mail_client": inst.mail_client.as_ref().map(|c| json!({ "server": c.server, "host": c.host, "imaps_port": c.imaps_port, "submission_port": c.submission_port })),
            "hooks": m.hooks.post_install.iter().map(|h| json!({ "service": h.service, "description": h.description })).collect::<Vec<_>>(),
            "settings": inst.settings,
            "secrets": inst.secrets.keys().collect::<Vec<_>>(),
            "admin": m.admin.as_ref().map(|a| json!({ "url": self.admin_url(inst, &a.path), "user": plan::render(&a.user, inst) })),
            "resources": {
                "memory": mem, "disk": disk, "arch": m.resources.arch, "for": why,
                "host": { "memory": host.memory, "disk_free": host.disk_free, "arch": host.arch },
                "forced_past": forced,
            },
        })
    }

    fn admin_url(&self, inst: &Instance, path: &str) -> Option<String> {
        let base = self.url_of(inst)?;
        let root = match base
            .find("://")
            .and_then(|i| base[i + 3..].find('/').map(|j| i + 3 + j))
        {
            Some(end) => &base[..end],
            None => base.as_str(),
        };
        Some(format!("{root}{path}"))
    }

    /// The installed mail server's name and first mail domain (where apps get accounts).
    fn mail_server_domain(&self) -> Option<(String, String)> {
        let server = self
            .instances_snapshot()
            .into_iter()
            .find(|i| i.manifest.needs.mail_files.is_some())?;
        let domain = server.mail.as_ref()?.domains.first()?.clone();
        server.domain.as_ref()?;
        Some((server.name, domain))
    }

    /// What an install prints once: the admin login, with the secrets marked `show`. Only for a
    /// client at a terminal (`reveal`); never in `--json`, never again.
    pub(super) fn credentials(&self, inst: &Instance) -> Option<Value> {
        let shown: BTreeMap<&String, &String> = inst
            .manifest
            .secrets
            .iter()
            .filter(|(_, s)| s.show)
            .filter_map(|(k, _)| Some((k, inst.secrets.get(k)?)))
            .collect();
        if shown.is_empty() {
            return None;
        }
        let admin = inst.manifest.admin.as_ref().map(|a| {
            json!({
                "url": self.admin_url(inst, &a.path),
                "user": plan::render(&a.user, inst),
                "password": inst.secrets.get(&a.password),
            })
        });
        Some(json!({ "admin": admin, "secrets": shown }))
    }

    /// Runs the manifest's post-install hooks, in order; the first failure fails the install.
    pub(super) async fn run_hooks(&self, inst: &Instance, progress: &Progress<'_>) -> Result<()> {
        let engine = self.engine()?;
        for h in &inst.manifest.hooks.post_install {
            let container = plan::container_name(&inst.name, &h.service);
            progress.step(if h.description.is_empty() {
                format!("running the post-install hook in {}", h.service)
            } else {
                format!("{} ({})", h.description, h.service)
            });
            let cmd: Vec<&str> = h.cmd.iter().map(String::as_str).collect();
            let (code, out) = engine.exec_output(&container, &cmd, 4096).await?;
            if code != 0 {
                let tail: Vec<&str> = out.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(Error::failed(format!(
                    "the post-install hook in {} exited with {code}: {}",
                    h.service,
                    tail.join(" / ")
                )));
            }
        }
        Ok(())
    }

    /// `ilot app info APP`: what the app is, what it needs, and what it will open.
    pub(super) fn app_info(&self, app: &str) -> Result<Value> {
        let m = self.catalog.get(app)?;
        let host = HostFacts::read();
        let settings: BTreeMap<String, String> = m
            .settings
            .iter()
            .filter_map(|(k, s)| Some((k.clone(), default_for(s, host.memory)?)))
            .collect();
        let ports: Vec<Value> = m
            .services
            .iter()
            .flat_map(|(name, s)| {
                s.ports.iter().map(move |p| {
                    json!({ "service": name, "container": p.container, "protocol": p.protocol, "host": p.host, "host_ip": p.host_ip, "name": p.name, "when": p.when,
                            "public": p.host_ip != "127.0.0.1" && p.host_ip != "::1", "host_setting": p.host_setting })
                })
            })
            .collect();
        let mut dns = Vec::new();
        if !m.needs.routes.is_empty() || m.needs.domain {
            dns.push(
                json!({ "type": "A/AAAA", "name": "DOMAIN", "value": "this host's addresses" }),
            );
            dns.push(json!({ "type": "CAA", "name": "DOMAIN", "value": "the ACME CA ilot uses, when it has a well-known one" }));
        }
        for r in &m.needs.dns {
            dns.push(json!({ "type": r.kind, "name": r.name, "value": r.value }));
        }
        if m.needs.mail {
            dns.push(json!({ "type": "MX, SPF, DKIM, DMARC, MTA-STS, TLS-RPT, SRV", "name": "each mail domain", "value": "computed by ilot (`ilot dns show`)" }));
        }
        let (mem, disk, why) = resource_needs(m, &settings);
        let problems = resource_problems(m, &settings, &host);
        Ok(json!({
            "name": m.name,
            "version": m.version,
            "description": m.description,
            "upstream": m.upstream,
            "license": m.license,
            "services": m.services.iter().map(|(n, s)| json!({ "name": n, "image": s.image, "digest": s.digest, "build": s.build, "memory": s.memory })).collect::<Vec<_>>(),
            "volumes": m.volumes,
            "settings": m.settings.iter().map(|(k, s)| json!({ "key": k, "type": s.kind, "default": s.default, "default_here": settings.get(k), "choices": s.choices, "ask": s.ask, "description": s.description, "spec": s })).collect::<Vec<_>>(),
            "secrets": m.secrets.iter().map(|(k, s)| json!({ "key": k, "description": s.description, "shown_once": s.show })).collect::<Vec<_>>(),
            "admin": m.admin.as_ref().map(|a| json!({ "path": a.path, "user": a.user })),
            "needs_domain": m.needs.domain,
            "routes": m.needs.routes,
            "ports": ports,
            "firewall": m.needs.firewall,
            "dns": dns,
            "smtp": m.needs.smtp,
            "mail_client": m.needs.mail_client,
            "mail_server": m.needs.mail,
            "log_filters": m.needs.log_filters,
            "probes": m.needs.probes,
            "backup": m.needs.backup,
            "hooks": m.hooks.post_install.iter().map(|h| json!({ "service": h.service, "description": h.description })).collect::<Vec<_>>(),
            "resources": {
                "memory": mem, "disk": disk, "arch": m.resources.arch, "for": why,
                "extra": m.resources.extra,
                "host": { "memory": host.memory, "disk_free": host.disk_free, "arch": host.arch },
                "fits": problems.is_empty(),
                "problems": problems,
            },
            "source": m.source,
        }))
    }
}

/// A setting's default on this machine: the first size default whose bound is above the host's
/// memory, else the manifest's default.
pub fn default_for(s: &catalog::Setting, host_memory: u64) -> Option<String> {
    s.size_defaults
        .iter()
        .find(|d| catalog::parse_memory(&d.memory_below).is_some_and(|b| host_memory < b as u64))
        .map(|d| d.value.clone())
        .or_else(|| s.default.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(memory: &str) -> HostFacts {
        HostFacts {
            memory: catalog::parse_memory(memory).unwrap() as u64,
            disk_free: Some(100 << 30),
            disk_path: "/".into(),
            arch: "arm64",
        }
    }

    #[test]
    fn peertube_transcoding_is_refused_on_a_1g_pi_and_sized_off_by_default() {
        let c = catalog::Catalog::load(&[]).unwrap();
        let m = &c.apps["peertube"];
        let pi = host("1G");
        let t = &m.settings["transcoding"];
        assert_eq!(default_for(t, pi.memory).as_deref(), Some("off"));
        assert_eq!(
            default_for(t, host("16G").memory).as_deref(),
            t.default.as_deref()
        );
        let mut settings: BTreeMap<String, String> = m
            .settings
            .iter()
            .filter_map(|(k, s)| Some((k.clone(), default_for(s, pi.memory)?)))
            .collect();
        assert!(resource_problems(m, &settings, &pi).is_empty());
        settings.insert("transcoding".into(), "light".into());
        let problems = resource_problems(m, &settings, &pi);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("transcoding") && problems[0].contains("1.0 GiB"),
            "{problems:?}"
        );
        let mut x86 = host("16G");
        x86.arch = "armv7";
        assert!(resource_problems(m, &settings, &x86)[0].contains("armv7"));
    }
}
