//! The planner: from desired state (an `Instance`) and observed state (what the engine has for
//! it) to a list of typed actions. Pure functions, so `--dry-run` and `ilot plan` show exactly
//! what apply would do, and applying a plan twice does nothing the second time.

use crate::catalog::{self, Health, Port};
use crate::state::Instance;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

pub const LABEL_OWNER: &str = "ilot.owner";
pub const LABEL_INSTANCE: &str = "ilot.instance";
pub const LABEL_APP: &str = "ilot.app";
pub const LABEL_SERVICE: &str = "ilot.service";
pub const LABEL_SPEC: &str = "ilot.spec";
pub const LABEL_ROLE: &str = "ilot.role";

pub fn network_name(instance: &str) -> String {
    format!("ilot-{instance}")
}
pub fn volume_name(instance: &str, volume: &str) -> String {
    format!("ilot-{instance}-{volume}")
}
pub fn container_name(instance: &str, service: &str) -> String {
    format!("ilot-{instance}-{service}")
}

/// The state directory, under which instances' bound files live on the host, set once at
/// daemon start. A process-wide setting rather than a planner argument: it is fixed for the
/// daemon's life, and unset (no such mounts) in unit tests.
static STATE_ROOT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

pub fn set_state_root(dir: std::path::PathBuf) {
    let _ = STATE_ROOT.set(dir);
}

/// The host directory holding an instance's certificate files (`[needs] tls`).
pub fn tls_dir(instance: &str) -> Option<std::path::PathBuf> {
    STATE_ROOT.get().map(|root| root.join("tls").join(instance))
}

/// The host directory holding what an app must trust to talk to mail server `instance`
/// (`ca-bundle.pem`: the host's public roots plus the server's own certificate while it is
/// self-signed, or the private CA's root): mounted read-only at TRUST_MOUNT in every container
/// of an app that sends mail through it or reads mail from it.
pub fn trust_dir(instance: &str) -> Option<std::path::PathBuf> {
    STATE_ROOT
        .get()
        .map(|root| root.join("trust").join(instance))
}

/// Where the trust directory appears in an app's containers, and the bundle in it.
pub const TRUST_MOUNT: &str = "/etc/ilot/trust";
pub const TRUST_BUNDLE: &str = "/etc/ilot/trust/ca-bundle.pem";

/// The host directory holding a mail instance's files (`[needs] mail_files`).
pub fn mail_dir(instance: &str) -> Option<std::path::PathBuf> {
    STATE_ROOT
        .get()
        .map(|root| root.join("mail").join(instance))
}

/// Everything a service's container is made from. Its hash, stored as a label, tells the
/// planner whether an existing container still matches the desired state.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ContainerSpec {
    pub name: String,
    pub instance: String,
    pub app: String,
    pub service: String,
    pub image_ref: String,
    pub image_id: String,
    pub user: Option<String>,
    pub command: Option<Vec<String>>,
    #[serde(skip)]
    pub env: BTreeMap<String, String>,
    /// Docker volume name -> mount path.
    pub mounts: BTreeMap<String, String>,
    /// Host directory -> mount path, read-only (certificate files).
    pub binds: BTreeMap<String, String>,
    pub ports: Vec<Port>,
    pub capabilities: Vec<String>,
    pub memory: i64,
    pub network: String,
    pub health: Option<Health>,
    pub init: bool,
    /// "name:host-gateway" entries: the mail server's name resolves to the host for an app
    /// that sends mail. (Left out of the hash when empty: older containers keep their hash.)
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<String>,
    #[serde(skip)]
    pub hash: String,
}

impl ContainerSpec {
    pub fn for_service(inst: &Instance, service: &str) -> ContainerSpec {
        let svc = &inst.manifest.services[service];
        let image = &inst.images[service];
        let mut env: BTreeMap<String, String> = svc
            .env
            .iter()
            .map(|(k, v)| (k.clone(), render(v, inst)))
            .collect();
        // An app that talks to the mail server verifies its certificate (Symfony Mailer,
        // nodemailer and Roundcube all do): it gets the bundle to verify it with, through the
        // variables OpenSSL (SSL_CERT_FILE: PHP, Python) and Node (NODE_EXTRA_CA_CERTS) read.
        let mail_server = inst
            .smtp
            .as_ref()
            .map(|s| s.server.as_str())
            .or(inst.mail_client.as_ref().map(|m| m.server.as_str()));
        let trust = mail_server.and_then(trust_dir);
        if trust.is_some() {
            for var in ["SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS"] {
                env.entry(var.to_string())
                    .or_insert_with(|| TRUST_BUNDLE.to_string());
            }
        }
        let mut spec = ContainerSpec {
            name: container_name(&inst.name, service),
            instance: inst.name.clone(),
            app: inst.app.clone(),
            service: service.to_string(),
            image_ref: image.reference.clone(),
            image_id: image.id.clone(),
            user: svc.user.clone(),
            command: svc.command.clone(),
            env,
            mounts: svc
                .mounts
                .iter()
                .map(|(v, p)| (volume_name(&inst.name, v), p.clone()))
                .collect(),
            binds: inst
                .manifest
                .needs
                .tls
                .as_ref()
                .filter(|t| t.service == service)
                .and_then(|t| Some((tls_dir(&inst.name)?.display().to_string(), t.path.clone())))
                .into_iter()
                .chain(
                    inst.manifest
                        .needs
                        .mail_files
                        .as_ref()
                        .filter(|m| m.service == service)
                        .and_then(|m| {
                            Some((mail_dir(&inst.name)?.display().to_string(), m.path.clone()))
                        }),
                )
                .chain(trust.map(|d| (d.display().to_string(), TRUST_MOUNT.to_string())))
                .collect(),
            ports: svc
                .ports
                .iter()
                .filter(|p| catalog::condition_holds(p.when.as_deref(), &inst.settings))
                .map(|p| {
                    let mut p = p.clone();
                    // Settings were checked at install: a port setting holds a u16.
                    if let Some(v) = p.host_setting.as_ref().and_then(|k| inst.settings.get(k)) {
                        p.host = v.parse().unwrap_or(p.host);
                    }
                    p
                })
                .collect(),
            capabilities: svc.capabilities.clone(),
            memory: catalog::parse_memory(&svc.memory).unwrap_or(256 << 20),
            network: network_name(&inst.name),
            health: svc.health.clone(),
            init: svc.init,
            extra_hosts: {
                let mut hosts: Vec<String> = inst
                    .smtp
                    .iter()
                    .map(|s| s.host.clone())
                    .chain(inst.mail_client.iter().map(|m| m.host.clone()))
                    .map(|h| format!("{h}:host-gateway"))
                    .collect();
                hosts.dedup();
                hosts
            },
            hash: String::new(),
        };
        // The env holds secrets, so it enters the hash but never the serialized spec.
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(&spec).expect("spec serializes"));
        h.update(serde_json::to_vec(&spec.env).expect("env serializes"));
        spec.hash = crate::state::hex(&h.finalize())[..16].to_string();
        spec
    }
}

/// Fills {{instance}}, {{app}}, {{domain}}, {{settings.K}}, {{secrets.K}}, {{smtp.K}} and
/// {{mail.K}} (checked when the manifest was loaded).
pub fn render(template: &str, inst: &Instance) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let key = after[..end].trim();
        let choice_value = key
            .strip_prefix("settings.")
            .and_then(|k| k.strip_suffix(".value"))
            .and_then(|k| {
                Some(
                    inst.manifest
                        .settings
                        .get(k)?
                        .values
                        .get(inst.settings.get(k)?)?
                        .clone(),
                )
            });
        let value = match key {
            _ if choice_value.is_some() => choice_value.unwrap_or_default(),
            "instance" => inst.name.clone(),
            "app" => inst.app.clone(),
            "domain" => inst.domain.clone().unwrap_or_default(),
            // Whether the app has a mail account (a mail server is installed): an app can keep
            // what depends on mail (Ghost's device verification by email) off without one.
            "smtp.enabled" => inst.smtp.is_some().to_string(),
            k => k
                .strip_prefix("settings.")
                .and_then(|k| inst.settings.get(k))
                .or_else(|| k.strip_prefix("secrets.").and_then(|k| inst.secrets.get(k)))
                .cloned()
                .or_else(|| {
                    let smtp = inst.smtp.as_ref()?;
                    smtp.value(k.strip_prefix("smtp.")?)
                })
                .or_else(|| {
                    let mail = inst.mail_client.as_ref()?;
                    mail.value(k.strip_prefix("mail.")?)
                })
                .unwrap_or_default(),
        };
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// One container as observed in the engine.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ObservedContainer {
    pub id: String,
    pub name: String,
    pub instance: String,
    pub service: String,
    pub role: String,
    pub state: String,
    pub health: Option<String>,
    pub image_id: String,
    pub spec: String,
    /// container port -> "host_ip:host_port"
    pub ports: BTreeMap<u16, String>,
    /// Its address on the instance's network (the proxy's upstream).
    pub ip: Option<String>,
}

impl ObservedContainer {
    pub fn running(&self) -> bool {
        self.state == "running" || self.state == "restarting"
    }
}

/// What the engine holds for one instance (only objects carrying this daemon's owner label).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ObservedInstance {
    pub containers: Vec<ObservedContainer>,
    pub networks: Vec<String>,
    pub volumes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    CreateNetwork { name: String, instance: String },
    CreateVolume { name: String, instance: String },
    CreateContainer { spec: Box<ContainerSpec> },
    StartContainer { name: String, service: String },
    StopContainer { name: String },
    RemoveContainer { name: String },
    RemoveNetwork { name: String },
    RemoveVolume { name: String },
}

impl Action {
    /// The short name used in the journal and for crash points (`install:create-volume`).
    pub fn kind(&self) -> &'static str {
        match self {
            Action::CreateNetwork { .. } => "create-network",
            Action::CreateVolume { .. } => "create-volume",
            Action::CreateContainer { .. } => "create-container",
            Action::StartContainer { .. } => "start-container",
            Action::StopContainer { .. } => "stop-container",
            Action::RemoveContainer { .. } => "remove-container",
            Action::RemoveNetwork { .. } => "remove-network",
            Action::RemoveVolume { .. } => "remove-volume",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Action::CreateNetwork { name, .. } => format!("create network {name}"),
            Action::CreateVolume { name, .. } => format!("create volume {name}"),
            Action::CreateContainer { spec } => {
                format!(
                    "create container {} from {} ({})",
                    spec.name,
                    spec.image_ref,
                    match short_id(&spec.image_id) {
                        "" => "once pulled",
                        id => id,
                    }
                )
            }
            Action::StartContainer { name, .. } => format!("start container {name}"),
            Action::StopContainer { name } => format!("stop container {name}"),
            Action::RemoveContainer { name } => format!("remove container {name}"),
            Action::RemoveNetwork { name } => format!("remove network {name}"),
            Action::RemoveVolume { name } => format!("remove volume {name} (its data is deleted)"),
        }
    }
}

pub fn short_id(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..id.len().min(12)]
}

/// What it takes to bring `observed` to `desired` (`None`: the instance must not exist; its
/// volumes are kept unless `purge`).
pub fn plan_instance(
    desired: Option<&Instance>,
    observed: &ObservedInstance,
    purge: bool,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let Some(inst) = desired else {
        for c in &observed.containers {
            actions.push(Action::RemoveContainer {
                name: c.name.clone(),
            });
        }
        for n in &observed.networks {
            actions.push(Action::RemoveNetwork { name: n.clone() });
        }
        if purge {
            for v in &observed.volumes {
                actions.push(Action::RemoveVolume { name: v.clone() });
            }
        }
        return actions;
    };

    let order = inst.manifest.service_order().unwrap_or_default();
    let specs: Vec<ContainerSpec> = order
        .iter()
        .map(|s| ContainerSpec::for_service(inst, s))
        .collect();

    // Containers that are not ours to keep: unknown services, leftovers (restore helpers),
    // and containers whose spec changed. Removed first, so names are free again.
    let mut keep: Vec<&ObservedContainer> = Vec::new();
    for c in &observed.containers {
        let wanted = specs
            .iter()
            .any(|s| s.name == c.name && s.hash == c.spec && c.role == "app");
        if wanted {
            keep.push(c);
        } else {
            if c.running() {
                actions.push(Action::StopContainer {
                    name: c.name.clone(),
                });
            }
            actions.push(Action::RemoveContainer {
                name: c.name.clone(),
            });
        }
    }

    let network = network_name(&inst.name);
    if !observed.networks.contains(&network) {
        actions.push(Action::CreateNetwork {
            name: network,
            instance: inst.name.clone(),
        });
    }
    for vol in inst.manifest.volumes.keys() {
        let name = volume_name(&inst.name, vol);
        if !observed.volumes.contains(&name) {
            actions.push(Action::CreateVolume {
                name,
                instance: inst.name.clone(),
            });
        }
    }
    for spec in &specs {
        match keep.iter().find(|c| c.name == spec.name) {
            None => {
                actions.push(Action::CreateContainer {
                    spec: Box::new(spec.clone()),
                });
                if inst.running {
                    actions.push(Action::StartContainer {
                        name: spec.name.clone(),
                        service: spec.service.clone(),
                    });
                }
            }
            Some(c) if inst.running && !c.running() => actions.push(Action::StartContainer {
                name: spec.name.clone(),
                service: spec.service.clone(),
            }),
            Some(c) if !inst.running && c.running() => actions.push(Action::StopContainer {
                name: c.name.clone(),
            }),
            Some(_) => {}
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::state::{PinnedImage, Status};

    fn hello() -> Instance {
        let manifest = Catalog::load(&[]).unwrap().apps["hello"].clone();
        Instance {
            mail: None,
            smtp: None,
            mail_client: None,
            name: "h1".into(),
            app: "hello".into(),
            images: [(
                "web".to_string(),
                PinnedImage {
                    reference: "ilot/hello:1.0".into(),
                    id: "sha256:ab".into(),
                },
            )]
            .into(),
            manifest,
            domain: None,
            aliases: vec![],
            settings: [("greeting".to_string(), "Hi".to_string())].into(),
            secrets: [("admin_token".to_string(), "s3cret".to_string())].into(),
            running: true,
            status: Status::Running,
            message: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn observed_as_applied(inst: &Instance) -> ObservedInstance {
        let spec = ContainerSpec::for_service(inst, "web");
        ObservedInstance {
            containers: vec![ObservedContainer {
                id: "c1".into(),
                name: spec.name.clone(),
                instance: inst.name.clone(),
                service: "web".into(),
                role: "app".into(),
                state: "running".into(),
                health: None,
                image_id: spec.image_id.clone(),
                spec: spec.hash.clone(),
                ports: BTreeMap::new(),
                ip: None,
            }],
            networks: vec![network_name(&inst.name)],
            volumes: vec![volume_name(&inst.name, "data")],
        }
    }

    #[test]
    fn fresh_install_creates_everything_in_order() {
        let kinds: Vec<_> = plan_instance(Some(&hello()), &ObservedInstance::default(), false)
            .iter()
            .map(|a| a.kind())
            .collect();
        assert_eq!(
            kinds,
            [
                "create-network",
                "create-volume",
                "create-container",
                "start-container"
            ]
        );
    }

    #[test]
    fn converged_instance_plans_nothing() {
        let inst = hello();
        assert!(plan_instance(Some(&inst), &observed_as_applied(&inst), false).is_empty());
    }

    #[test]
    fn changed_spec_recreates_and_stopped_is_respected() {
        let inst = hello();
        let observed = observed_as_applied(&inst);
        let mut newer = inst.clone();
        newer.images.get_mut("web").unwrap().id = "sha256:cd".into();
        let kinds: Vec<_> = plan_instance(Some(&newer), &observed, false)
            .iter()
            .map(|a| a.kind())
            .collect();
        assert_eq!(
            kinds,
            [
                "stop-container",
                "remove-container",
                "create-container",
                "start-container"
            ]
        );
        let mut stopped = inst.clone();
        stopped.running = false;
        let kinds: Vec<_> = plan_instance(Some(&stopped), &observed, false)
            .iter()
            .map(|a| a.kind())
            .collect();
        assert_eq!(kinds, ["stop-container"]);
    }

    #[test]
    fn removal_keeps_volumes_unless_purged() {
        let observed = observed_as_applied(&hello());
        let kinds: Vec<_> = plan_instance(None, &observed, false)
            .iter()
            .map(|a| a.kind())
            .collect();
        assert_eq!(kinds, ["remove-container", "remove-network"]);
        let kinds: Vec<_> = plan_instance(None, &observed, true)
            .iter()
            .map(|a| a.kind())
            .collect();
        assert_eq!(
            kinds,
            ["remove-container", "remove-network", "remove-volume"]
        );
    }

    #[test]
    fn secrets_reach_env_but_not_the_serialized_spec() {
        let spec = ContainerSpec::for_service(&hello(), "web");
        assert_eq!(spec.env["ADMIN_TOKEN"], "s3cret");
        assert_eq!(spec.env["GREETING"], "Hi");
        assert!(!serde_json::to_string(&spec).unwrap().contains("s3cret"));
    }

    /// A mail client's {{mail.*}} values reach its env, and the mail server's name resolves
    /// to the host in its containers (once, also when it sends mail too).
    #[test]
    fn mail_client_values_and_host_mapping() {
        let mut inst = hello();
        inst.mail_client = Some(crate::state::MailClient {
            server: "mail".into(),
            host: "mail.example.org".into(),
            imaps_port: 993,
            submission_port: 587,
            domain: "example.org".into(),
        });
        assert_eq!(
            render(
                "ssl://{{mail.host}}:{{mail.imaps_port}} tls://{{mail.host}}:{{mail.submission_port}} @{{mail.domain}}",
                &inst
            ),
            "ssl://mail.example.org:993 tls://mail.example.org:587 @example.org"
        );
        let spec = ContainerSpec::for_service(&inst, "web");
        assert_eq!(spec.extra_hosts, ["mail.example.org:host-gateway"]);
        inst.smtp = Some(crate::mail::SmtpAccount {
            server: "mail".into(),
            host: "mail.example.org".into(),
            port: 587,
            user: "h1@example.org".into(),
            password: "pw".into(),
        });
        let spec = ContainerSpec::for_service(&inst, "web");
        assert_eq!(spec.extra_hosts, ["mail.example.org:host-gateway"]);
    }
}
