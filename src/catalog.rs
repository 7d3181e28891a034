//! The catalogue: one `app.toml` manifest per app (schema in docs/app-format.md). The built-in
//! catalogue (the repository's apps/ directory) is compiled into the binary so a fresh machine
//! needs no files; extra directories from the config are searched first and may override it.

use crate::error::{Error, Result};
use crate::names;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

static BUILTIN: include_dir::Dir<'_> = include_dir::include_dir!("$CARGO_MANIFEST_DIR/apps");

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub description: String,
    #[serde(default)]
    pub upstream: String,
    #[serde(default)]
    pub license: String,
    /// The service that `--image REF` replaces and whose ports `app show` lists first.
    #[serde(default)]
    pub main_service: Option<String>,
    pub services: BTreeMap<String, Service>,
    /// Named volumes, created once per instance: name -> description.
    #[serde(default)]
    pub volumes: BTreeMap<String, VolumeDecl>,
    #[serde(default)]
    pub settings: BTreeMap<String, Setting>,
    /// Secrets generated at install (random), stored 0600, never printed.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretDecl>,
    /// How long install, start and upgrade wait for every health check to pass.
    #[serde(default = "default_health_timeout", with = "humantime_serde")]
    pub health_timeout: Duration,
    /// What the app needs from the other subsystems (proxy, DNS, firewall, guard, monitor,
    /// backup, mail, databases). Recorded and shown now; each subsystem acts on its part.
    #[serde(default)]
    pub needs: Needs,
    /// What the machine needs to run the app; an install on a machine that clearly cannot is
    /// refused (overridable with `--force`).
    #[serde(default)]
    pub resources: Resources,
    /// The app's administrator login, shown once at install (its password is a secret).
    #[serde(default)]
    pub admin: Option<AdminLogin>,
    /// Commands run inside a service once the install is healthy (first-run setup that the
    /// image's environment cannot express). They must be idempotent: recovery runs them again.
    #[serde(default)]
    pub hooks: Hooks,
    /// Combinations of settings the app cannot run with (its own start-up checks refuse them):
    /// refused at install and at upgrade (the kept settings, the new manifest's rules) with the
    /// rule's reason, before anything changes.
    #[serde(default)]
    pub refuse: Vec<Refusal>,
    /// Where this manifest was read from (set at load time, whatever the file says).
    #[serde(default)]
    pub source: String,
}

fn default_health_timeout() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Image reference with a tag, e.g. `ilot/hello:1.0` or `nextcloud:29.0.4-apache`.
    pub image: String,
    /// Registry images are pinned by digest (`sha256:...`): ilot refuses an image whose digest
    /// differs.
    #[serde(default)]
    pub digest: Option<String>,
    /// Images the project builds itself (`images/build.sh NAME`) are not digest-pinned: their
    /// digest depends on the host architecture. ilot records the image ID it installed instead.
    #[serde(default)]
    pub build: Option<String>,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub user: Option<String>,
    /// Environment; values may use {{instance}}, {{app}}, {{domain}}, {{settings.KEY}} and
    /// {{secrets.KEY}}.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Volume name -> mount path in the container.
    #[serde(default)]
    pub mounts: BTreeMap<String, String>,
    #[serde(default)]
    pub ports: Vec<Port>,
    /// Linux capabilities added back after dropping all of them (e.g. NET_BIND_SERVICE).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Memory limit, e.g. "64M", "1G".
    #[serde(default = "default_memory")]
    pub memory: String,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub health: Option<Health>,
    /// Run a tiny init (the engine's docker-init) as PID 1: it forwards signals and reaps
    /// zombies, so a stop takes milliseconds instead of the 10 s kill timeout.
    #[serde(default = "yes")]
    pub init: bool,
}

fn default_memory() -> String {
    "256M".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Port {
    pub container: u16,
    #[serde(default = "default_proto")]
    pub protocol: String,
    /// Host port; 0 (the default) lets the engine choose a free one.
    #[serde(default)]
    pub host: u16,
    /// Host address; loopback by default: the proxy, not the world, reaches web apps.
    #[serde(default = "default_host_ip")]
    pub host_ip: String,
    /// A setting (of type "port") that overrides `host`, so an admin can move a public port
    /// (a NAS whose own mail server holds 25, say) with `--set`.
    #[serde(default)]
    pub host_setting: Option<String>,
    #[serde(default)]
    pub name: String,
    /// Published only when this condition on the settings holds (see `condition_holds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
}

fn default_proto() -> String {
    "tcp".into()
}
fn default_host_ip() -> String {
    "127.0.0.1".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Command run inside the container (exec form); exit 0 means healthy.
    pub cmd: Vec<String>,
    /// How often the engine checks once the app runs (install gates probe faster).
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "default_check_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_retries() -> u32 {
    3
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VolumeDecl {
    #[serde(default)]
    pub description: String,
    /// Included in backups (default true).
    #[serde(default = "yes")]
    pub backup: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Setting {
    #[serde(rename = "type", default)]
    pub kind: SettingKind,
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub description: String,
    /// For `type = "choice"`.
    #[serde(default)]
    pub choices: Vec<String>,
    /// For a choice: the text `{{settings.KEY.value}}` stands for, per choice.
    #[serde(default)]
    pub values: BTreeMap<String, String>,
    /// Asked at a terminal during install when not given with `--set` (an admin should choose).
    #[serde(default)]
    pub ask: bool,
    /// Defaults sized to the machine: the first entry whose `memory_below` is above the host's
    /// memory gives the default, else `default` does.
    #[serde(default)]
    pub size_defaults: Vec<SizeDefault>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SizeDefault {
    pub memory_below: String,
    pub value: String,
}

/// A combination of settings refused: every condition of `when` (as in `condition_holds`) at
/// once.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Refusal {
    pub when: Vec<String>,
    /// What is wrong, in the app's own terms.
    pub why: String,
    /// What to do instead.
    pub fix: String,
}

impl Manifest {
    /// The first refused combination these settings make, if any.
    pub fn refused(&self, settings: &BTreeMap<String, String>) -> Option<&Refusal> {
        self.refuse.iter().find(|r| {
            !r.when.is_empty() && r.when.iter().all(|w| condition_holds(Some(w), settings))
        })
    }
}

/// A condition on the instance's settings, for what exists only with some settings (PeerTube's
/// RTMP port only with live streaming): `KEY` (a bool setting that is true), `KEY=VALUE` or
/// `KEY!=VALUE`.
pub fn condition_holds(when: Option<&str>, settings: &BTreeMap<String, String>) -> bool {
    let Some(when) = when else { return true };
    if let Some((k, v)) = when.split_once("!=") {
        return settings.get(k.trim()).map(String::as_str) != Some(v.trim());
    }
    if let Some((k, v)) = when.split_once('=') {
        return settings.get(k.trim()).map(String::as_str) == Some(v.trim());
    }
    settings.get(when.trim()).map(String::as_str) == Some("true")
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// The machine's memory in all (RAM), e.g. "2G".
    #[serde(default)]
    pub memory: Option<String>,
    /// Free space at the engine's data root, e.g. "10G".
    #[serde(default)]
    pub disk: Option<String>,
    /// CPU architectures the images exist for (amd64, arm64, armv7); empty: any.
    #[serde(default)]
    pub arch: Vec<String>,
    /// More, only with some settings (transcoding, say).
    #[serde(default)]
    pub extra: Vec<ExtraResources>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExtraResources {
    pub when: String,
    #[serde(default)]
    pub memory: Option<String>,
    #[serde(default)]
    pub disk: Option<String>,
    /// What needs it, in a few words ("video transcoding").
    pub why: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminLogin {
    /// Where to sign in, under the instance's domain ("/ghost/").
    #[serde(default = "slash")]
    pub path: String,
    /// The login name (a template: "{{settings.admin_email}}").
    pub user: String,
    /// The secret holding the password.
    pub password: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    #[serde(default)]
    pub post_install: Vec<Hook>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    pub service: String,
    pub cmd: Vec<String>,
    /// What it does, shown as the install's progress.
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum SettingKind {
    #[default]
    String,
    Integer,
    Bool,
    Choice,
    /// A TCP/UDP port, 0 to 65535 (0: the engine picks a free one).
    Port,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecretDecl {
    #[serde(default = "default_secret_len")]
    pub length: usize,
    #[serde(default)]
    pub description: String,
    /// Shown once, at install, to the admin at the terminal (an app's admin password); never
    /// in `--json`, logs or `app show`.
    #[serde(default)]
    pub show: bool,
}

fn default_secret_len() -> usize {
    32
}

/// Declarations for the later subsystems. Kept as typed data so a manifest that is wrong about
/// them is refused now, not when the subsystem arrives.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Needs {
    /// The app only works at its own domain (`--domain` is required at install).
    #[serde(default)]
    pub domain: bool,
    /// The app's domain is part of its identity from its first start (PeerTube: the address
    /// other servers federate with, written into its database): a second domain and a change
    /// of domain are refused, with why.
    #[serde(default)]
    pub fixed_domain: bool,
    /// HTTPS routes for the proxy: the instance's domain, path prefix -> service:port.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// DNS records the app needs, relative to its domain.
    #[serde(default)]
    pub dns: Vec<DnsRecord>,
    /// Ports the firewall must open to the world.
    #[serde(default)]
    pub firewall: Vec<FirewallPort>,
    /// Log filters for the guard (ban engine).
    #[serde(default)]
    pub log_filters: Vec<LogFilter>,
    /// Probes for the monitor.
    #[serde(default)]
    pub probes: Vec<Probe>,
    /// Volumes to back up, with optional commands to run around the backup.
    #[serde(default)]
    pub backup: Option<Backup>,
    /// The app sends mail through the host's SMTP relay.
    #[serde(default)]
    pub smtp: bool,
    /// The app is a mail client of the installed mail server (webmail): no account is made
    /// (users log in with their own), the install is refused while no mail server is
    /// installed, the server's name resolves to the host in the app's containers, and `env`
    /// may use `{{mail.host}}`, `{{mail.imaps_port}}`, `{{mail.submission_port}}` and
    /// `{{mail.domain}}`.
    #[serde(default)]
    pub mail_client: bool,
    /// The app is the mail server of its mail domains: they get MX, SPF, DKIM, DMARC,
    /// MTA-STS, TLS-RPT and client SRV records pointing at the instance's domain.
    #[serde(default)]
    pub mail: bool,
    /// The database the app needs, as information ("postgres", "mysql", "mariadb", "redis"): it
    /// is one of its services.
    #[serde(default)]
    pub database: Option<String>,
    /// The app terminates TLS itself (mail): it gets the certificate of its domain as files.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// The mail server's own files (needs `mail = true`): see `MailFiles`.
    #[serde(default)]
    pub mail_files: Option<MailFiles>,
}

/// The files ilot renders for a mail server from `ilot mail ...` (domains, mailboxes,
/// aliases, relay, DKIM keys; src/mail): a directory bound read-only at `path` in `service`,
/// after whose change `reload` runs in the container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MailFiles {
    pub service: String,
    pub path: String,
    pub reload: Vec<String>,
}

/// Certificate files for an app that terminates TLS itself: `fullchain.pem` and `privkey.pem`
/// in a read-only directory at `path`, replaced when the certificate is renewed, after which
/// `reload` runs in the container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub service: String,
    pub path: String,
    /// Owner of the key file (the app's user): "uid:gid".
    #[serde(default = "root_owner")]
    pub owner: String,
    #[serde(default)]
    pub reload: Option<Vec<String>>,
}

fn root_owner() -> String {
    "0:0".into()
}

impl TlsFiles {
    pub fn uid_gid(&self) -> Option<(u32, u32)> {
        let (u, g) = self.owner.split_once(':')?;
        Some((u.parse().ok()?, g.parse().ok()?))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub service: String,
    pub port: u16,
    #[serde(default = "slash")]
    pub path: String,
    /// Largest request body accepted on this route ("100M", "4G"); uploads are streamed, never
    /// buffered, whatever the size.
    #[serde(default = "default_max_body")]
    pub max_body: String,
}

fn default_max_body() -> String {
    "100M".into()
}

fn slash() -> String {
    "/".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DnsRecord {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default = "at")]
    pub name: String,
    pub value: String,
}

fn at() -> String {
    "@".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FirewallPort {
    pub port: u16,
    #[serde(default = "default_proto")]
    pub protocol: String,
    /// Opened only when this condition on the settings holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogFilter {
    /// The guard filter (built in, or /etc/ilot/filters/NAME.toml).
    pub filter: String,
    /// The service whose output (container logs) the filter reads; absent (and no `volume`):
    /// ilot's proxy access log, where the real client address of a web app's requests is.
    #[serde(default)]
    pub service: Option<String>,
    /// A log file the app writes in one of its volumes (`volume` and `path`, relative to the
    /// volume's root): for apps whose log does not reach the container's output (Nextcloud's
    /// `data/nextcloud.log`). Read from the host, never following a symbolic link.
    #[serde(default)]
    pub volume: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
}

impl LogFilter {
    /// `path` as a relative path inside its volume: no `..`, not absolute, not empty.
    pub fn volume_path(&self) -> Option<std::path::PathBuf> {
        let p = std::path::Path::new(self.path.as_deref()?);
        let plain = p
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        (plain && p.components().next().is_some()).then(|| p.to_path_buf())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub service: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub path: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Database dumps: `cmd` runs in `service` and its output is saved as `file`; `restore`
    /// loads it back.
    #[serde(default)]
    pub dump: Vec<Dump>,
    /// Commands that bring the app to a consistent state for the whole backup (its dumps and
    /// its files taken at one moment: Nextcloud's maintenance mode), and back.
    #[serde(default)]
    pub quiesce: Vec<Quiesce>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Quiesce {
    pub service: String,
    /// Run before the dumps; a failure stops the backup (after `resume`).
    pub cmd: Vec<String>,
    /// Run once the files are read, whatever happened; and in a restored copy, which was
    /// backed up quiesced.
    pub resume: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Dump {
    pub service: String,
    /// Prints the dump on its standard output.
    pub cmd: Vec<String>,
    /// Loads a dump read on its standard input (into the same service of a fresh instance).
    pub restore: Vec<String>,
    pub file: String,
}

impl Manifest {
    pub fn parse(text: &str, origin: &str) -> Result<Manifest> {
        let mut m: Manifest = toml::from_str(text).map_err(|e| {
            Error::bad_input(format!(
                "invalid app manifest {}",
                crate::config::describe_toml_error(text, origin, &e)
            ))
            .hint("see docs/app-format.md for the manifest schema")
        })?;
        m.source = origin.to_string();
        m.validate().map_err(|why| {
            Error::bad_input(format!("invalid app manifest {origin}: {why}"))
                .hint("see docs/app-format.md for the manifest schema")
        })?;
        Ok(m)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if names::check_instance_name(&self.name).is_err() {
            return Err(format!("name {:?} is not a valid app name", self.name));
        }
        if self.services.is_empty() {
            return Err("an app needs at least one [services.NAME]".into());
        }
        if let Some(main) = &self.main_service {
            if !self.services.contains_key(main) {
                return Err(format!("main_service {main:?} is not a service"));
            }
        }
        for key in self.settings.keys().chain(self.secrets.keys()) {
            if !names::is_key(key) {
                return Err(format!(
                    "setting or secret key {key:?} must be lowercase letters, digits and '_'"
                ));
            }
        }
        for (key, s) in &self.settings {
            if let Some(d) = &s.default {
                check_setting_value(key, s, d)?;
            }
            if s.kind == SettingKind::Choice && s.choices.is_empty() {
                return Err(format!("setting {key:?} is a choice with no choices"));
            }
        }
        for (key, s) in &self.settings {
            if !s.values.is_empty() {
                if s.kind != SettingKind::Choice {
                    return Err(format!("setting {key:?}: values are for a choice"));
                }
                if let Some(c) = s.choices.iter().find(|c| !s.values.contains_key(*c)) {
                    return Err(format!("setting {key:?}: choice {c:?} has no value"));
                }
                if let Some(v) = s.values.keys().find(|v| !s.choices.contains(v)) {
                    return Err(format!(
                        "setting {key:?}: value for {v:?}, which is not a choice"
                    ));
                }
            }
            for sd in &s.size_defaults {
                parse_memory(&sd.memory_below).ok_or_else(|| {
                    format!(
                        "setting {key:?}: memory_below {:?} is not like 2G",
                        sd.memory_below
                    )
                })?;
                check_setting_value(key, s, &sd.value)?;
            }
        }
        for r in &self.refuse {
            if r.when.is_empty() || r.why.trim().is_empty() {
                return Err("a [[refuse]] needs conditions (when) and a reason (why)".into());
            }
            for w in &r.when {
                self.check_condition(Some(w))
                    .map_err(|e| format!("[[refuse]]: {e}"))?;
            }
        }
        for (key, s) in &self.secrets {
            if !(16..=128).contains(&s.length) {
                return Err(format!("secret {key:?}: length must be 16 to 128"));
            }
        }
        for (name, svc) in &self.services {
            if names::check_instance_name(name).is_err() {
                return Err(format!(
                    "service name {name:?} must be lowercase letters, digits and '-'"
                ));
            }
            if !svc.image.contains(':') || svc.image.ends_with(':') {
                return Err(format!(
                    "service {name}: image {:?} must be pinned by tag (name:tag)",
                    svc.image
                ));
            }
            match (&svc.digest, &svc.build) {
                (None, None) => {
                    return Err(format!(
                        "service {name}: a registry image must be pinned by digest (digest = \"sha256:...\"), \
                         or declare build = \"NAME\" for an image built by images/build.sh"
                    ))
                }
                (Some(d), _) if !(d.starts_with("sha256:") && d.len() == 71) => {
                    return Err(format!("service {name}: digest {d:?} is not sha256:<64 hex>"))
                }
                _ => {}
            }
            for vol in svc.mounts.keys() {
                if !self.volumes.contains_key(vol) {
                    return Err(format!("service {name} mounts undeclared volume {vol:?}"));
                }
            }
            for path in svc.mounts.values() {
                if !path.starts_with('/') || path == "/" {
                    return Err(format!(
                        "service {name}: mount path {path:?} must be absolute and not /"
                    ));
                }
            }
            for dep in &svc.depends_on {
                if !self.services.contains_key(dep) || dep == name {
                    return Err(format!("service {name} depends on unknown service {dep:?}"));
                }
            }
            parse_memory(&svc.memory).ok_or_else(|| {
                format!(
                    "service {name}: memory {:?} is not like 64M or 1G",
                    svc.memory
                )
            })?;
            for value in svc.env.values() {
                self.check_template(value)?;
            }
            for cap in &svc.capabilities {
                if !cap.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
                    return Err(format!(
                        "service {name}: capability {cap:?} is not like NET_BIND_SERVICE"
                    ));
                }
            }
        }
        for vol in self.volumes.keys() {
            if !self.services.values().any(|s| s.mounts.contains_key(vol)) {
                return Err(format!("volume {vol:?} is mounted by no service"));
            }
        }
        self.service_order()?;
        for r in &self.needs.routes {
            if !self.services.contains_key(&r.service) {
                return Err(format!("route to unknown service {:?}", r.service));
            }
            if !r.path.starts_with('/') {
                return Err(format!("route path {:?} must start with /", r.path));
            }
            parse_memory(&r.max_body)
                .ok_or_else(|| format!("route max_body {:?} is not like 100M or 4G", r.max_body))?;
        }
        for r in &self.needs.dns {
            crate::dns::check_record(r)?;
        }
        for f in &self.needs.log_filters {
            if let Some(svc) = &f.service {
                if !self.services.contains_key(svc) {
                    return Err(format!("log_filters: unknown service {svc:?}"));
                }
            }
            match (&f.volume, &f.path) {
                (None, None) => {}
                (Some(vol), Some(path)) => {
                    if f.service.is_some() {
                        return Err(format!(
                            "log_filters {:?}: a service's output or a file in a volume, not both",
                            f.filter
                        ));
                    }
                    if !self.volumes.contains_key(vol) {
                        return Err(format!("log_filters: unknown volume {vol:?}"));
                    }
                    if f.volume_path().is_none() {
                        return Err(format!(
                            "log_filters: path {path:?} must be relative to the volume, without '..'"
                        ));
                    }
                }
                _ => {
                    return Err(format!(
                        "log_filters {:?}: volume and path go together",
                        f.filter
                    ))
                }
            }
            if f.filter.is_empty()
                || !f
                    .filter
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!("log_filters: {:?} is not a filter name", f.filter));
            }
        }
        for p in &self.needs.probes {
            if !self.services.contains_key(&p.service) {
                return Err(format!("probe of unknown service {:?}", p.service));
            }
            if !matches!(p.kind.as_str(), "http" | "tcp" | "smtp") || p.port.is_none() {
                return Err(format!(
                    "probe of {}: type must be http, tcp or smtp, with a port",
                    p.service
                ));
            }
        }
        if self.needs.mail_client && self.needs.mail {
            return Err(
                "mail_client and mail: a mail server is not a client of itself; keep one".into(),
            );
        }
        if let Some(mf) = &self.needs.mail_files {
            if !self.needs.mail {
                return Err("mail_files needs mail = true".into());
            }
            if !self.services.contains_key(&mf.service) {
                return Err(format!("mail_files: unknown service {:?}", mf.service));
            }
            if !mf.path.starts_with('/') || mf.path == "/" || mf.reload.is_empty() {
                return Err("mail_files: path must be absolute and not /, reload a command".into());
            }
        }
        for f in &self.needs.firewall {
            self.check_condition(f.when.as_deref())?;
        }
        let r = &self.resources;
        for m in [&r.memory, &r.disk].into_iter().flatten() {
            parse_memory(m).ok_or_else(|| format!("resources: {m:?} is not like 512M or 2G"))?;
        }
        for a in &r.arch {
            if !ARCHES.contains(&a.as_str()) {
                return Err(format!(
                    "resources: arch {a:?} is not one of {}",
                    ARCHES.join(", ")
                ));
            }
        }
        for x in &r.extra {
            self.check_condition(Some(&x.when))?;
            for m in [&x.memory, &x.disk].into_iter().flatten() {
                parse_memory(m)
                    .ok_or_else(|| format!("resources.extra: {m:?} is not like 512M or 2G"))?;
            }
        }
        if let Some(a) = &self.admin {
            if !self.secrets.contains_key(&a.password) {
                return Err(format!("admin: password {:?} is not a secret", a.password));
            }
            if !a.path.starts_with('/') {
                return Err(format!("admin: path {:?} must start with /", a.path));
            }
            self.check_template(&a.user)?;
        }
        for h in &self.hooks.post_install {
            if !self.services.contains_key(&h.service) || h.cmd.is_empty() {
                return Err(format!(
                    "hooks: {:?} is not a service, or its cmd is empty",
                    h.service
                ));
            }
        }
        if let Some(b) = &self.needs.backup {
            for v in &b.volumes {
                if !self.volumes.contains_key(v) {
                    return Err(format!("backup: unknown volume {v:?}"));
                }
            }
            for q in &b.quiesce {
                if !self.services.contains_key(&q.service)
                    || q.cmd.is_empty()
                    || q.resume.is_empty()
                {
                    return Err(format!(
                        "backup quiesce in {:?}: needs a service, a cmd and a resume cmd",
                        q.service
                    ));
                }
            }
            for d in &b.dump {
                let plain = !d.file.is_empty()
                    && d.file
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
                    && !d.file.starts_with('.');
                if !self.services.contains_key(&d.service)
                    || d.cmd.is_empty()
                    || d.restore.is_empty()
                    || !plain
                {
                    return Err(format!(
                        "backup dump of {:?}: needs a service, a cmd, a restore cmd and a plain file name",
                        d.service
                    ));
                }
            }
        }
        for (name, svc) in &self.services {
            for p in &svc.ports {
                self.check_condition(p.when.as_deref())
                    .map_err(|e| format!("service {name}: {e}"))?;
                if let Some(key) = &p.host_setting {
                    if self.settings.get(key).map(|s| s.kind) != Some(SettingKind::Port) {
                        return Err(format!(
                            "service {name}: host_setting {key:?} is not a setting of type \"port\""
                        ));
                    }
                }
            }
        }
        if let Some(tls) = &self.needs.tls {
            if !self.services.contains_key(&tls.service) {
                return Err(format!("tls: unknown service {:?}", tls.service));
            }
            if !tls.path.starts_with('/') || tls.path == "/" {
                return Err(format!(
                    "tls: path {:?} must be absolute and not /",
                    tls.path
                ));
            }
            if tls.uid_gid().is_none() {
                return Err(format!(
                    "tls: owner {:?} is not uid:gid (numbers)",
                    tls.owner
                ));
            }
        }
        Ok(())
    }

    /// Checks a `when` condition: a known setting (a bool when bare) and a valid value.
    fn check_condition(&self, when: Option<&str>) -> std::result::Result<(), String> {
        let Some(when) = when else { return Ok(()) };
        let (key, value) = match when.split_once("!=").or_else(|| when.split_once('=')) {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (when.trim(), None),
        };
        let s = self
            .settings
            .get(key)
            .ok_or_else(|| format!("condition {when:?}: no setting {key:?}"))?;
        match value {
            Some(v) => check_setting_value(key, s, v),
            None if s.kind == SettingKind::Bool => Ok(()),
            None => Err(format!(
                "condition {when:?}: a bare KEY must be a bool setting"
            )),
        }
    }

    /// Checks that every {{placeholder}} in an env value is one ilot knows.
    fn check_template(&self, value: &str) -> std::result::Result<(), String> {
        for name in placeholders(value)? {
            let smtp = self.needs.smtp
                && matches!(
                    name,
                    "smtp.host"
                        | "smtp.port"
                        | "smtp.user"
                        | "smtp.password"
                        | "smtp.from"
                        | "smtp.domain"
                        | "smtp.enabled"
                );
            let mail_client = self.needs.mail_client
                && name
                    .strip_prefix("mail.")
                    .is_some_and(|k| MAIL_CLIENT_VALUES.contains(&k));
            let choice_value = name
                .strip_prefix("settings.")
                .and_then(|k| k.strip_suffix(".value"))
                .and_then(|k| self.settings.get(k))
                .is_some_and(|s| !s.values.is_empty());
            let known = smtp
                || mail_client
                || choice_value
                || matches!(name, "instance" | "app" | "domain")
                || name
                    .strip_prefix("settings.")
                    .is_some_and(|k| self.settings.contains_key(k))
                || name
                    .strip_prefix("secrets.")
                    .is_some_and(|k| self.secrets.contains_key(k));
            if !known {
                return Err(format!(
                    "unknown placeholder {{{{{name}}}}} in env value {value:?}"
                ));
            }
        }
        Ok(())
    }

    /// Services in start order (dependencies first); refuses cycles.
    pub fn service_order(&self) -> std::result::Result<Vec<String>, String> {
        let mut order: Vec<String> = Vec::new();
        while order.len() < self.services.len() {
            let before = order.len();
            for (name, svc) in &self.services {
                if !order.contains(name) && svc.depends_on.iter().all(|d| order.contains(d)) {
                    order.push(name.clone());
                }
            }
            if order.len() == before {
                return Err("services depend on each other in a cycle".into());
            }
        }
        Ok(order)
    }

    /// A clear error for a service name the app does not have.
    pub fn check_service(&self, service: &str) -> Result<()> {
        if self.services.contains_key(service) {
            return Ok(());
        }
        let known: Vec<&str> = self.services.keys().map(String::as_str).collect();
        Err(
            Error::bad_input(format!("{} has no service {service:?}", self.name))
                .hint(format!("its services: {}", known.join(", "))),
        )
    }

    pub fn main_service(&self) -> &str {
        self.main_service.as_deref().unwrap_or_else(|| {
            self.services
                .keys()
                .next()
                .map(String::as_str)
                .unwrap_or("")
        })
    }
}

/// CPU architectures as image manifests name them.
pub const ARCHES: &[&str] = &["amd64", "arm64", "armv7"];

/// This machine's architecture, named as in `ARCHES`.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "armv7",
        other => other,
    }
}

/// What `{{mail.KEY}}` may name in an app with `[needs] mail_client` (state::MailClient).
pub const MAIL_CLIENT_VALUES: &[&str] = &["host", "imaps_port", "submission_port", "domain"];

/// The placeholder names in a template string.
pub fn placeholders(value: &str) -> std::result::Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed {{{{ in {value:?}"))?;
        out.push(after[..end].trim());
        rest = &after[end + 2..];
    }
    Ok(out)
}

pub fn check_setting_value(key: &str, s: &Setting, value: &str) -> std::result::Result<(), String> {
    let ok = match s.kind {
        SettingKind::String => value.len() <= 4096 && !value.contains('\0'),
        SettingKind::Integer => value.parse::<i64>().is_ok(),
        SettingKind::Bool => matches!(value, "true" | "false"),
        SettingKind::Choice => s.choices.iter().any(|c| c == value),
        SettingKind::Port => value.parse::<u16>().is_ok(),
    };
    if ok {
        Ok(())
    } else {
        let expected = match s.kind {
            SettingKind::String => "a string of at most 4096 bytes".to_string(),
            SettingKind::Integer => "an integer".to_string(),
            SettingKind::Bool => "true or false".to_string(),
            SettingKind::Choice => format!("one of {}", s.choices.join(", ")),
            SettingKind::Port => "a port number, 0 to 65535 (0: any free port)".to_string(),
        };
        Err(format!(
            "setting {key}={value:?} is not valid: expected {expected}"
        ))
    }
}

/// "64M" -> bytes.
pub fn parse_memory(s: &str) -> Option<i64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1i64 << 10),
        'M' | 'm' => (&s[..s.len() - 1], 1 << 20),
        'G' | 'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: i64 = num.parse().ok()?;
    (n > 0).then(|| n.checked_mul(mult)).flatten()
}

/// Bytes as "1.5 GiB", for messages.
pub fn gib(bytes: u64) -> String {
    let g = bytes as f64 / (1u64 << 30) as f64;
    if g >= 10.0 {
        format!("{g:.0} GiB")
    } else {
        format!("{g:.1} GiB")
    }
}

/// The loaded catalogue: app name -> manifest.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub apps: BTreeMap<String, Manifest>,
}

impl Catalog {
    /// Loads the built-in catalogue, then each extra directory (later entries override).
    pub fn load(extra_dirs: &[std::path::PathBuf]) -> Result<Catalog> {
        let mut apps = BTreeMap::new();
        for dir in BUILTIN.dirs() {
            if let Some(file) = dir.get_file(dir.path().join("app.toml")) {
                let origin = format!("(built-in) apps/{}", file.path().display());
                let text = file
                    .contents_utf8()
                    .ok_or_else(|| Error::failed(format!("{origin} is not UTF-8")))?;
                let m = Manifest::parse(text, &origin)?;
                apps.insert(m.name.clone(), m);
            }
        }
        for dir in extra_dirs.iter().rev() {
            load_dir(dir, &mut apps)?;
        }
        Ok(Catalog { apps })
    }

    pub fn get(&self, app: &str) -> Result<&Manifest> {
        self.apps.get(app).ok_or_else(|| {
            let known: Vec<&str> = self.apps.keys().map(String::as_str).collect();
            Error::not_found(format!("no app {app:?} in the catalogue")).hint(format!(
                "known apps: {} (see `ilot app catalog`)",
                known.join(", ")
            ))
        })
    }
}

fn load_dir(dir: &Path, apps: &mut BTreeMap<String, Manifest>) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::bad_input(format!(
                "cannot read catalogue dir {}: {e}",
                dir.display()
            )))
        }
    };
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("app.toml"))
        .collect();
    paths.sort();
    for path in paths.into_iter().filter(|p| p.is_file()) {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::bad_input(format!("cannot read {}: {e}", path.display())))?;
        let m = Manifest::parse(&text, &path.display().to_string())?;
        let dir_name = path
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .unwrap_or("");
        if dir_name != m.name {
            return Err(Error::bad_input(format!(
                "invalid app manifest {}: name {:?} differs from its directory {dir_name:?}",
                path.display(),
                m.name
            )));
        }
        apps.insert(m.name.clone(), m);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalogue_is_valid() {
        let c = Catalog::load(&[]).unwrap();
        assert!(c.apps.contains_key("hello"));
    }

    /// PeerTube's rule: replays need transcoding; every other combination passes; a rule on
    /// a setting that does not exist is a manifest error.
    #[test]
    fn refused_combinations_follow_every_condition() {
        let pt = Catalog::load(&[]).unwrap().apps["peertube"].clone();
        let with = |live: &str, replay: &str, transcoding: &str| {
            let s: BTreeMap<String, String> = [
                ("live", live),
                ("live_replay", replay),
                ("transcoding", transcoding),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            pt.refused(&s).map(|r| r.fix.clone())
        };
        assert!(with("true", "true", "off").is_some_and(|f| f.contains("live_replay=false")));
        assert_eq!(with("true", "false", "off"), None);
        assert_eq!(with("true", "true", "light"), None);
        assert_eq!(with("false", "true", "off"), None);
        let mut bad = pt.clone();
        bad.refuse[0].when.push("no_such_setting".into());
        assert!(bad.validate().unwrap_err().contains("no_such_setting"));
    }

    #[test]
    fn a_log_file_stays_inside_its_volume() {
        let lf = |path: &str| LogFilter {
            filter: "nextcloud".into(),
            service: None,
            volume: Some("html".into()),
            path: Some(path.into()),
        };
        assert_eq!(
            lf("data/nextcloud.log").volume_path(),
            Some(std::path::PathBuf::from("data/nextcloud.log"))
        );
        for bad in ["../etc/shadow", "/etc/shadow", "data/../../x", "", "."] {
            assert_eq!(lf(bad).volume_path(), None, "{bad:?}");
        }
    }

    #[test]
    fn bad_manifests_are_refused_with_a_reason() {
        let base = Catalog::load(&[]).unwrap().apps["hello"].clone();
        let text = toml::to_string(&base).unwrap();
        let bad_cases = [
            (
                "image = \"ilot/hello:1.0\"",
                "image = \"ilot/hello\"",
                "pinned by tag",
            ),
            (
                "build = \"hello\"",
                "build = \"hello\"\nmemory_x = 1",
                "memory_x",
            ),
            ("build = \"hello\"", "", "pinned by digest"),
        ];
        for (from, to, why) in bad_cases {
            assert!(text.contains(from), "{from} not in {text}");
            let e = Manifest::parse(&text.replacen(from, to, 1), "t").unwrap_err();
            assert!(e.message.contains(why), "{}", e.message);
        }
    }

    /// `[needs] mail_client` opens the {{mail.*}} values, and only those it names; an app
    /// without it cannot use them, and a mail server cannot be its own client.
    #[test]
    fn mail_client_values_are_checked() {
        let base = Catalog::load(&[]).unwrap().apps["hello"].clone();
        let with = |needs: bool, env: &str| {
            let mut m = base.clone();
            m.needs.mail_client = needs;
            let svc = m.services.values_mut().next().unwrap();
            svc.env.insert("X".into(), env.into());
            Manifest::parse(&toml::to_string(&m).unwrap(), "t")
        };
        let ok = with(
            true,
            "ssl://{{mail.host}}:{{mail.imaps_port}} {{mail.submission_port}} {{ mail.domain }}",
        );
        assert!(ok.is_ok(), "{:?}", ok.err());
        let e = with(true, "{{mail.password}}").unwrap_err();
        assert!(
            e.message.contains("unknown placeholder {{mail.password}}"),
            "{}",
            e.message
        );
        let e = with(false, "{{mail.host}}").unwrap_err();
        assert!(
            e.message.contains("unknown placeholder {{mail.host}}"),
            "{}",
            e.message
        );
        let mut m = base.clone();
        m.needs.mail_client = true;
        m.needs.mail = true;
        let e = Manifest::parse(&toml::to_string(&m).unwrap(), "t").unwrap_err();
        assert!(e.message.contains("mail_client and mail"), "{}", e.message);
        // The built-in webmail uses them.
        let c = Catalog::load(&[]).unwrap();
        assert!(c.apps["webmail"].needs.mail_client);
    }

    #[test]
    fn templates_and_values() {
        assert_eq!(
            placeholders("a {{x}} b {{ y.z }}").unwrap(),
            vec!["x", "y.z"]
        );
        assert!(placeholders("{{x").is_err());
        assert_eq!(parse_memory("64M"), Some(64 << 20));
        assert_eq!(parse_memory("x"), None);
        let s = Setting {
            kind: SettingKind::Bool,
            default: None,
            description: String::new(),
            choices: vec![],
            values: BTreeMap::new(),
            ask: false,
            size_defaults: vec![],
        };
        assert!(check_setting_value("k", &s, "true").is_ok());
        assert!(check_setting_value("k", &s, "yes").is_err());
    }
}
