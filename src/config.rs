//! The host configuration: /etc/ilot/ilot.toml, or the embedded default when there is none.
//! A file with a syntax error, an unknown key or a bad value is refused as a whole, naming the
//! file, line and column, so the daemon never starts half-configured.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/ilot/ilot.toml";
pub const DEFAULT_SOCKET: &str = "/run/ilot/ilot.sock";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub daemon: DaemonConfig,
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub acme: AcmeConfig,
    #[serde(default)]
    pub host: HostConfig,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub firewall: FirewallConfig,
    #[serde(default)]
    pub guard: GuardConfig,
    #[serde(default)]
    pub monitor: MonitorConfig,
    #[serde(default)]
    pub alerts: AlertsConfig,
    #[serde(default)]
    pub mail: MailConfig,
    #[serde(default)]
    pub backup: BackupConfig,
}

/// Backups (docs/backup.md): a restic-format repository, and how many snapshots to keep.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// The repository, as restic writes it: a directory (a mounted disk, say),
    /// "sftp:user@host:/path" or "s3:https://endpoint/bucket/prefix". Unset: no backups.
    pub repository: Option<String>,
    /// The repository's password, in a 0600 file (default STATE_DIR/backup/password, made by
    /// `ilot backup init`).
    pub password_file: Option<PathBuf>,
    /// SFTP: the private key ssh logs in with (unset: root's own keys and agent).
    pub sftp_key: Option<PathBuf>,
    /// SFTP: the server's host key, "ssh-ed25519 AAAA..." (as `ssh-keyscan` prints it), pinned:
    /// no other key is accepted. Unset: root's known_hosts decides.
    pub sftp_host_key: Option<String>,
    /// S3: the region the endpoint signs for.
    pub s3_region: String,
    /// S3: AWS_ACCESS_KEY_ID=... and AWS_SECRET_ACCESS_KEY=... lines, in a 0600 file
    /// (default STATE_DIR/backup/s3-credentials).
    pub s3_credentials_file: Option<PathBuf>,
    /// The daily run, "HH:MM" in the host's local time; a machine that was off then runs it
    /// when it is next up. "off": no scheduled runs (`ilot backup run` still works).
    pub at: Option<String>,
    /// A restore drill of every instance this often, after the scheduled run (none: never).
    #[serde(with = "humantime_serde")]
    pub drill_every: Option<std::time::Duration>,
    /// Snapshots kept per instance after each run: the last N, and one per day, week, month.
    pub keep_last: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            repository: None,
            password_file: None,
            sftp_key: None,
            sftp_host_key: None,
            s3_region: "us-east-1".into(),
            s3_credentials_file: None,
            at: Some("03:30".into()),
            drill_every: Some(std::time::Duration::from_secs(7 * 86_400)),
            keep_last: 1,
            keep_daily: 7,
            keep_weekly: 4,
            keep_monthly: 6,
        }
    }
}

/// Mail servers (docs/mail.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailConfig {
    /// After a DKIM rotation, the old key stays published this long (mail it signed may still
    /// be in transit or re-checked), then it is withdrawn.
    #[serde(with = "humantime_serde")]
    pub dkim_retire_after: std::time::Duration,
    /// How often a new DKIM key's record is looked up, until it resolves.
    #[serde(with = "humantime_serde")]
    pub dkim_check_every: std::time::Duration,
    /// Where every mail domain's postmaster@, abuse@ and hostmaster@ go (any address); by
    /// default the server's first mailbox.
    pub postmaster: Option<String>,
}

impl Default for MailConfig {
    fn default() -> Self {
        MailConfig {
            dkim_retire_after: std::time::Duration::from_secs(7 * 86_400),
            dkim_check_every: std::time::Duration::from_secs(300),
            postmaster: None,
        }
    }
}

/// The monitor (docs/monitor.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    pub enabled: bool,
    /// How often everything is sampled.
    #[serde(with = "humantime_serde")]
    pub interval: std::time::Duration,
    /// Full-resolution history kept this long; then hourly points, for 90 days.
    #[serde(with = "humantime_serde")]
    pub retention: std::time::Duration,
    /// Mounts watched besides the machine's disks (a USB disk, a tmpfs...).
    pub disks: Vec<PathBuf>,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            enabled: true,
            interval: std::time::Duration::from_secs(30),
            retention: std::time::Duration::from_secs(7 * 86_400),
            disks: Vec::new(),
        }
    }
}

/// Alerts: rules (the built-in ones, changed or added to), channels, and when to be quiet.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    pub rules: Vec<crate::monitor::alerts::RuleConfig>,
    pub channels: Vec<crate::notify::ChannelConfig>,
    /// "22:00-07:00" (local time): warnings wait until the end; critical alerts go through.
    pub quiet_hours: Option<String>,
    /// Messages per channel and hour; more wait their turn.
    pub rate_limit: u32,
    /// A URL fetched every `heartbeat_every` (a dead man's switch such as healthchecks.io): a
    /// box that is down entirely is noticed there.
    pub heartbeat_url: Option<String>,
    #[serde(with = "humantime_serde")]
    pub heartbeat_every: std::time::Duration,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            rules: Vec::new(),
            channels: Vec::new(),
            quiet_hours: None,
            rate_limit: 30,
            heartbeat_url: None,
            heartbeat_every: std::time::Duration::from_secs(300),
        }
    }
}

/// Whether minute-of-day `m` falls in quiet hours (start, end), which may span midnight.
pub fn in_quiet_hours(m: u32, (start, end): (u32, u32)) -> bool {
    if start <= end {
        (start..end).contains(&m)
    } else {
        m >= start || m < end
    }
}

/// "22:00-07:00" as minutes of the day (start, end).
pub fn parse_quiet_hours(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once('-')?;
    Some((parse_hhmm(a)?, parse_hhmm(b)?))
}

/// An SSH public host key: a key type and its base64 blob (what ssh-keyscan prints after
/// the host).
fn valid_host_key(k: &str) -> bool {
    let mut parts = k.split_whitespace();
    let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
        return false;
    };
    (kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-"))
        && kind
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-@.".contains(c))
        && blob.len() >= 16
        && blob
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c))
}

/// "03:30" as minutes of the day.
pub fn parse_hhmm(t: &str) -> Option<u32> {
    let (h, m) = t.trim().split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// The guard: log sources, jails, allowlists and blocklists (docs/guard.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardConfig {
    pub enabled: bool,
    /// Never banned: addresses, CIDRs, or host names (resolved every 5 minutes: a family's
    /// dynamic home address). Loopback, Docker's networks and live SSH sessions are implied.
    pub allow: Vec<String>,
    /// IPv6 offenders are banned by this prefix.
    pub ipv6_prefix: u8,
    /// An expired ban is remembered this long, to recognise a repeat offender.
    #[serde(with = "humantime_serde")]
    pub forget_after: std::time::Duration,
    /// Where custom filters are (NAME.toml, adding to or replacing the built-in ones).
    pub filters_dir: PathBuf,
    /// The policy of every jail, unless the jail says otherwise.
    pub defaults: crate::guard::jail::Policy,
    /// Jails by name. `sshd`, `proxy-auth` and `proxy-flood` exist unless disabled here; a
    /// jail of that name changes them.
    pub jails: std::collections::BTreeMap<String, JailConfig>,
    pub blocklists: Vec<BlocklistConfig>,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            enabled: true,
            allow: Vec::new(),
            ipv6_prefix: 64,
            forget_after: std::time::Duration::from_secs(7 * 86_400),
            filters_dir: crate::guard::filter::CUSTOM_DIR.into(),
            defaults: Default::default(),
            jails: Default::default(),
            blocklists: Vec::new(),
        }
    }
}

/// A jail: a filter, the logs it reads, and (optionally) its own policy.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JailConfig {
    /// `enabled = false` turns a built-in jail off.
    pub enabled: Option<bool>,
    /// The filter (default: the jail's name).
    pub filter: Option<String>,
    /// The filter's mode (sshd: normal, ddos, extra, aggressive; see docs/guard.md).
    pub mode: Option<String>,
    /// Log files to follow.
    pub files: Vec<PathBuf>,
    /// systemd units whose journal to follow.
    pub journal: Vec<String>,
    /// Read ilot's proxy access log.
    pub proxy: bool,
    pub maxretry: Option<u32>,
    #[serde(with = "humantime_serde::option")]
    pub findtime: Option<std::time::Duration>,
    #[serde(with = "humantime_serde::option")]
    pub bantime: Option<std::time::Duration>,
    pub increment: Option<f64>,
    #[serde(with = "humantime_serde::option")]
    pub max_bantime: Option<std::time::Duration>,
    pub permanent_after: Option<u32>,
}

impl JailConfig {
    /// The jail's policy: its own settings over the defaults.
    pub fn policy(&self, defaults: &crate::guard::jail::Policy) -> crate::guard::jail::Policy {
        let mut p = defaults.clone();
        if let Some(v) = self.maxretry {
            p.maxretry = v;
        }
        if let Some(v) = self.findtime {
            p.findtime = v;
        }
        if let Some(v) = self.bantime {
            p.bantime = v;
        }
        if let Some(v) = self.increment {
            p.increment = v;
        }
        if let Some(v) = self.max_bantime {
            p.max_bantime = v;
        }
        if let Some(v) = self.permanent_after {
            p.permanent_after = v;
        }
        p
    }
}

/// A blocklist imported into the firewall: a file, or an http(s) URL, fetched again every
/// `refresh`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlocklistConfig {
    pub name: String,
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default = "daily", with = "humantime_serde")]
    pub refresh: std::time::Duration,
}

fn daily() -> std::time::Duration {
    std::time::Duration::from_secs(86_400)
}

/// The nftables firewall (docs/firewall.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirewallConfig {
    pub enabled: bool,
    /// Public interfaces the drop applies to; empty = all but loopback and Docker's bridges.
    pub interfaces: Vec<String>,
    /// SSH ports kept open; default: the ports sshd listens on (or its config's, or 22).
    pub ssh_ports: Option<Vec<u16>>,
    /// Ports always open, e.g. ["8443/tcp", "51820/udp"].
    pub open: Vec<String>,
    /// A change that could cut the admin off is reverted unless confirmed within this time.
    #[serde(with = "humantime_serde")]
    pub confirm_timeout: std::time::Duration,
}

impl Default for FirewallConfig {
    fn default() -> Self {
        FirewallConfig {
            enabled: true,
            interfaces: Vec::new(),
            ssh_ports: None,
            open: Vec::new(),
            confirm_timeout: std::time::Duration::from_secs(60),
        }
    }
}

/// DNS: where each zone's records go (`print`, `serve`, `push`), the authoritative server's
/// addresses, mail policy records, and what `ilot diagnose` asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Zones ilot serves or pushes to. A record belongs to the longest zone that contains its
    /// name; records in no zone are printed for the user to paste at their registrar.
    pub zones: Vec<ZoneConfig>,
    /// Addresses the authoritative server (for `serve` zones) listens on, UDP and TCP.
    pub listen: Vec<std::net::SocketAddr>,
    /// NS names of `serve` zones (default: [host] hostname).
    pub nameservers: Vec<String>,
    /// The CA allowed to issue certificates (CAA), e.g. "letsencrypt.org". Default: the
    /// configured ACME CA when it is Let's Encrypt, else no CAA record.
    pub caa: Option<String>,
    /// Admin mailbox in the SOA of `serve` zones. Default: hostmaster@ZONE when the zone is
    /// a mail domain of a mail server here, else hostmaster@ the first such mail domain, else
    /// hostmaster@ZONE (which `ilot dns show` warns about: nothing here receives it).
    pub hostmaster: Option<String>,
    /// DMARC policy for mail domains: none, quarantine or reject.
    pub dmarc_policy: String,
    /// Where DMARC aggregate reports go (default: postmaster@DOMAIN).
    pub dmarc_report: Option<String>,
    /// Resolvers `ilot diagnose` asks ("IP" or "IP:PORT"); empty = the system's.
    pub resolvers: Vec<String>,
    /// DNS blocklists the host's address is checked against.
    pub blocklists: Vec<String>,
    /// An SMTP server (HOST:PORT) `ilot diagnose mail` connects to, to tell whether outbound
    /// port 25 is blocked.
    pub smtp_probe: String,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            zones: Vec::new(),
            listen: vec![
                ([0, 0, 0, 0], 53).into(),
                (std::net::Ipv6Addr::UNSPECIFIED, 53).into(),
            ],
            nameservers: Vec::new(),
            caa: None,
            hostmaster: None,
            dmarc_policy: "quarantine".into(),
            dmarc_report: None,
            resolvers: Vec::new(),
            blocklists: vec![
                "zen.spamhaus.org".into(),
                "bl.spamcop.net".into(),
                "b.barracudacentral.org".into(),
            ],
            smtp_probe: "gmail-smtp-in.l.google.com:25".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ZoneMode {
    /// A zone-file snippet and a table to paste at a registrar.
    #[default]
    Print,
    /// ilot is the authoritative server for the zone.
    Serve,
    /// RFC 2136 dynamic updates, signed with TSIG, to an external primary.
    Push,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    /// A domain (example.org) or an address block (203.0.113.0/24, 2001:db8:1::/48) for a
    /// reverse zone.
    pub name: String,
    #[serde(default)]
    pub mode: ZoneMode,
    /// `serve`: sign the zone (DNSSEC, ECDSA P-256); the DS record to give the parent is in
    /// `ilot dns show`.
    #[serde(default = "yes")]
    pub dnssec: bool,
    /// Extra records of this zone (e.g. PTRs for the other hosts of a /24).
    #[serde(default)]
    pub records: Vec<crate::catalog::DnsRecord>,
    /// `push`: the primary server, IP:PORT.
    pub server: Option<std::net::SocketAddr>,
    /// `push`: TSIG key name, as in the server's config; `serve` with secondaries: the key
    /// they transfer the zone with.
    pub tsig_key: Option<String>,
    /// `push` (and `serve` with secondaries): hmac-sha256 (default), hmac-sha384 or
    /// hmac-sha512.
    #[serde(default = "hmac_sha256")]
    pub tsig_algorithm: String,
    /// `push` (and `serve` with secondaries): a file (mode 0600) holding the base64 secret,
    /// or a BIND key file (tsig-keygen).
    pub tsig_secret_file: Option<PathBuf>,
    /// `serve`: secondary servers ("IP" or "IP:PORT", port 53 by default). They get a NOTIFY
    /// when the serial moves, and only they may transfer the zone (AXFR/IXFR), signed with the
    /// TSIG key.
    #[serde(default, deserialize_with = "secondaries")]
    pub secondaries: Vec<std::net::SocketAddr>,
    /// `serve`, signed: prove non-existence with NSEC3 (hashed names, default) rather than
    /// NSEC, which lets anyone list every name of the zone.
    #[serde(default = "yes")]
    pub nsec3: bool,
}

/// "IP" or "IP:PORT" (port 53 by default); a bad entry is a config error at its line.
fn secondaries<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<std::net::SocketAddr>, D::Error> {
    let items: Vec<String> = Vec::deserialize(d)?;
    items
        .iter()
        .map(|s| {
            s.parse::<std::net::SocketAddr>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "secondary {s:?} is not an address: give \"IP\" or \"IP:PORT\" \
                         (e.g. \"192.0.2.2\", \"[2001:db8::2]:5353\")"
                    ))
                })
        })
        .collect()
}

fn yes() -> bool {
    true
}

fn hmac_sha256() -> String {
    "hmac-sha256".into()
}

/// Facts about the host that ilot cannot always discover (behind NAT, the public address is
/// not on any interface).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// Public IPv4 address: the A records of every served domain.
    pub ipv4: Option<std::net::Ipv4Addr>,
    /// Public IPv6 address: the AAAA records.
    pub ipv6: Option<std::net::Ipv6Addr>,
    /// The host's own name (its mail HELO name): A/AAAA for it, and the PTR of its addresses.
    pub hostname: Option<String>,
}

/// Certificates from an ACME CA for every served domain (HTTP-01 through the proxy).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeConfig {
    pub enabled: bool,
    /// Directory URL, or "letsencrypt" / "letsencrypt-staging".
    pub directory: String,
    /// Contact address given to the CA (expiry warnings), e.g. admin@example.org.
    pub email: Option<String>,
    /// A PEM file of extra trusted roots, for a private CA (or Pebble in tests).
    pub ca_root: Option<PathBuf>,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            enabled: true,
            directory: "letsencrypt".into(),
            email: None,
            ca_root: None,
        }
    }
}

impl AcmeConfig {
    /// The CA's CAA issuer domain, when known.
    pub fn caa_issuer(&self) -> Option<&'static str> {
        (self.enabled && self.directory_url().contains(".letsencrypt.org/"))
            .then_some("letsencrypt.org")
    }

    pub fn directory_url(&self) -> &str {
        match self.directory.as_str() {
            "letsencrypt" => "https://acme-v02.api.letsencrypt.org/directory",
            "letsencrypt-staging" => "https://acme-staging-v02.api.letsencrypt.org/directory",
            url => url,
        }
    }
}

/// The built-in reverse proxy (HTTPS for every app with a domain).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub enabled: bool,
    /// Plain HTTP: redirects to HTTPS and answers ACME HTTP-01 challenges. Port 0 = any free.
    pub http: std::net::SocketAddr,
    pub https: std::net::SocketAddr,
    /// One line per request (time, client IP, host, method, path, status): read by the guard.
    pub access_log: PathBuf,
    /// Sent as Strict-Transport-Security on HTTPS responses; 0 disables it.
    pub hsts_max_age: u64,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            enabled: true,
            http: ([0, 0, 0, 0], 80).into(),
            https: ([0, 0, 0, 0], 443).into(),
            access_log: "/var/log/ilot/access.log".into(),
            hsts_max_age: 31_536_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// The Unix socket the CLI talks to (mode 0660, group `socket_group`).
    pub socket: PathBuf,
    /// Group given access to the socket, when it exists on the host.
    pub socket_group: String,
    /// The store, the journal and upgrade snapshots live here (0700).
    pub state_dir: PathBuf,
    /// Extra catalogue directories, searched before the built-in catalogue.
    pub catalog: Vec<PathBuf>,
    /// Docker engine address; only `unix://` sockets are supported.
    pub docker: String,
    /// The value of the `ilot.owner` label on every object this daemon creates. Defaults to an
    /// id generated once per state directory; set it to run two daemons on one engine (tests).
    pub owner: Option<String>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            socket: DEFAULT_SOCKET.into(),
            socket_group: "ilot".into(),
            state_dir: "/var/lib/ilot".into(),
            catalog: Vec::new(),
            docker: "unix:///var/run/docker.sock".into(),
            owner: None,
        }
    }
}

impl Config {
    fn validate_alerts(&self, origin: &str) -> Result<()> {
        let bad = |why: String| {
            Err(Error::bad_input(format!("invalid config {origin}: {why}"))
                .hint("fix the file (docs/monitor.md lists every key); the daemon did not start"))
        };
        if self.monitor.interval < std::time::Duration::from_secs(1) {
            return bad("[monitor] interval: at least 1s".into());
        }
        if let Err(why) = crate::monitor::alerts::rules(&self.alerts.rules) {
            return bad(format!("[[alerts.rules]] {why}"));
        }
        for c in &self.alerts.channels {
            if let Err(why) = c.validate() {
                return bad(format!("[[alerts.channels]] {why}"));
            }
        }
        if let Some(q) = &self.alerts.quiet_hours {
            if parse_quiet_hours(q).is_none() {
                return bad(format!(
                    "[alerts] quiet_hours {q:?}: give \"HH:MM-HH:MM\", e.g. \"22:00-07:00\""
                ));
            }
        }
        if let Some(u) = &self.alerts.heartbeat_url {
            if !(u.starts_with("https://") || u.starts_with("http://"))
                || u.parse::<hyper::Uri>().is_err()
            {
                return bad("[alerts] heartbeat_url: give an https:// URL".into());
            }
        }
        if self.alerts.rate_limit == 0 {
            return bad("[alerts] rate_limit: at least 1 message an hour".into());
        }
        Ok(())
    }

    fn validate_guard(&self, origin: &str) -> Result<()> {
        let g = &self.guard;
        let bad = |why: String| {
            Err(
                Error::bad_input(format!("invalid config {origin}: [guard] {why}"))
                    .hint("fix the file (docs/guard.md lists every key); the daemon did not start"),
            )
        };
        if !(16..=128).contains(&g.ipv6_prefix) {
            return bad(format!(
                "ipv6_prefix {} must be between 16 and 128",
                g.ipv6_prefix
            ));
        }
        for a in &g.allow {
            let ok = a.parse::<ipnet::IpNet>().is_ok()
                || a.parse::<std::net::IpAddr>().is_ok()
                || crate::names::check_domain(a).is_ok();
            if !ok {
                return bad(format!(
                    "allow: {a:?} is neither an address, a CIDR nor a host name"
                ));
            }
        }
        if let Err(why) = g.defaults.validate("defaults") {
            return bad(why);
        }
        for (name, j) in &g.jails {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return bad(format!(
                    "jails: {name:?} is not a jail name (letters, digits, - and _)"
                ));
            }
            if let Err(why) = j.policy(&g.defaults).validate(name) {
                return bad(why);
            }
            for f in &j.files {
                if !f.is_absolute() {
                    return bad(format!(
                        "jails.{name}: files: {} is not an absolute path",
                        f.display()
                    ));
                }
            }
        }
        for b in &g.blocklists {
            match (&b.file, &b.url) {
                (Some(_), None) => {}
                (None, Some(u)) if u.starts_with("http://") || u.starts_with("https://") => {}
                _ => {
                    return bad(format!(
                        "blocklists: {:?} needs one of file = \"/path\" or url = \"https://...\"",
                        b.name
                    ))
                }
            }
            if b.refresh < std::time::Duration::from_secs(60) {
                return bad(format!("blocklists: {:?}: refresh under a minute", b.name));
            }
        }
        Ok(())
    }

    /// Loads `path`, or /etc/ilot/ilot.toml when it exists, or the embedded default.
    pub fn load(path: Option<&Path>) -> Result<(Config, Option<PathBuf>)> {
        let path = match path {
            Some(p) => Some(p.to_path_buf()),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => Some(DEFAULT_CONFIG_PATH.into()),
            None => None,
        };
        let Some(path) = path else {
            return Ok((Config::default(), None));
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::bad_input(format!("cannot read config {}: {e}", path.display()))
                .hint("check the path given to --config")
        })?;
        let config = Config::parse(&text, &path.display().to_string())?;
        Ok((config, Some(path)))
    }

    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| {
            Error::bad_input(format!(
                "invalid config {}",
                describe_toml_error(text, origin, &e)
            ))
            .hint("fix the file (docs/config.md lists every key); the daemon did not start")
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    fn validate(&self, origin: &str) -> Result<()> {
        let d = &self.daemon;
        let bad = |key: &str, why: &str| {
            Err(
                Error::bad_input(format!("invalid config {origin}: [daemon] {key}: {why}")).hint(
                    "fix the file (docs/config.md lists every key); the daemon did not start",
                ),
            )
        };
        if !d.docker.starts_with("unix://") || d.docker.len() <= "unix://".len() {
            return bad(
                "docker",
                "only unix:// socket addresses are supported, e.g. unix:///var/run/docker.sock",
            );
        }
        if !d.socket.is_absolute() {
            return bad("socket", "must be an absolute path");
        }
        if !d.state_dir.is_absolute() {
            return bad("state_dir", "must be an absolute path");
        }
        let b = &self.backup;
        if let Some(at) = &b.at {
            if at != "off" && parse_hhmm(at).is_none() {
                return Err(Error::bad_input(format!(
                    "invalid config {origin}: [backup] at {at:?}: give \"HH:MM\", e.g. \"03:30\", or \"off\""
                ))
                .hint("fix the file (docs/config.md lists every key); the daemon did not start"));
            }
        }
        let bad_backup = |what: String| {
            Err(
                Error::bad_input(format!("invalid config {origin}: [backup] {what}")).hint(
                    "fix the file (docs/backup.md, docs/config.md); the daemon did not start",
                ),
            )
        };
        if let Some(r) = &b.repository {
            if let Err(e) = crate::backup::Target::parse(r) {
                return bad_backup(format!("repository {r:?}: {e}"));
            }
        }
        if let Some(k) = &b.sftp_host_key {
            if !valid_host_key(k) {
                return bad_backup(format!(
                    "sftp_host_key {k:?}: give the server's key as \"TYPE BASE64\", e.g. the \"ssh-ed25519 AAAA...\" part of a line of `ssh-keyscan HOST`"
                ));
            }
        }
        if b.s3_region.is_empty()
            || !b
                .s3_region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return bad_backup(format!(
                "s3_region {:?}: give a region name such as \"us-east-1\" or \"fr-par\"",
                b.s3_region
            ));
        }
        for (key, path) in [
            ("password_file", &b.password_file),
            ("sftp_key", &b.sftp_key),
            ("s3_credentials_file", &b.s3_credentials_file),
        ] {
            if path.as_ref().is_some_and(|p| !p.is_absolute()) {
                return Err(Error::bad_input(format!(
                    "invalid config {origin}: [backup] {key}: must be an absolute path"
                ))
                .hint("fix the file (docs/config.md lists every key); the daemon did not start"));
            }
        }
        if !self.proxy.access_log.is_absolute() {
            return Err(Error::bad_input(format!(
                "invalid config {origin}: [proxy] access_log: must be an absolute path"
            ))
            .hint("fix the file (docs/config.md lists every key); the daemon did not start"));
        }
        if let Some(h) = &self.host.hostname {
            if crate::names::check_domain(h).is_err() {
                return Err(Error::bad_input(format!(
                    "invalid config {origin}: [host] hostname {h:?} is not a host name"
                ))
                .hint("give a lowercase fully qualified name such as mail.example.org"));
            }
        }
        if !self.acme.directory_url().starts_with("https://") {
            return bad_acme(
                origin,
                "directory: give an https:// URL, or letsencrypt / letsencrypt-staging",
            );
        }
        if self
            .acme
            .email
            .as_deref()
            .is_some_and(|e| !e.contains('@') || e.contains([' ', '\n', ',']))
        {
            return bad_acme(origin, "email: give one address, like admin@example.org");
        }
        for p in &self.firewall.open {
            p.parse::<crate::firewall::Port>().map_err(|e| {
                Error::bad_input(format!(
                    "invalid config {origin}: [firewall] open: {}",
                    e.message
                ))
                .hint("give ports like \"8443/tcp\"; the daemon did not start")
            })?;
        }
        if self.firewall.confirm_timeout < std::time::Duration::from_secs(5) {
            return Err(Error::bad_input(format!(
                "invalid config {origin}: [firewall] confirm_timeout is under 5 s, too short to confirm in"
            ))
            .hint("give at least \"5s\" (default \"60s\")"));
        }
        for i in &self.firewall.interfaces {
            if i.is_empty()
                || i.len() > 15
                || i.contains(|c: char| c.is_whitespace() || c == '"' || c == '/')
            {
                return Err(Error::bad_input(format!(
                    "invalid config {origin}: [firewall] interfaces: {i:?} is not an interface name"
                ))
                .hint("see `ip link` for the names; the daemon did not start"));
            }
        }
        self.validate_guard(origin)?;
        self.validate_alerts(origin)?;
        for z in &self.dns.zones {
            crate::dns::zones::check_zone_config(z, &self.dns).map_err(|why| {
                Error::bad_input(format!("invalid config {origin}: [[dns.zones]] {why}"))
                    .hint("fix the file (docs/dns.md explains zones); the daemon did not start")
            })?;
        }
        if let Some(caa) = &self.dns.caa {
            if crate::names::check_domain(caa).is_err() {
                return Err(Error::bad_input(format!(
                    "invalid config {origin}: [dns] caa {caa:?} is not a CA's domain"
                ))
                .hint("give the CA's issuer domain, e.g. caa = \"letsencrypt.org\""));
            }
        }
        if let Some(h) = &self.dns.hostmaster {
            if !h.contains('@')
                || crate::names::check_domain(h.split('@').nth(1).unwrap_or("")).is_err()
                || h.split('@')
                    .next()
                    .unwrap_or("")
                    .contains(['.', ' ', '"', ';'])
            {
                return Err(Error::bad_input(format!(
                    "invalid config {origin}: [dns] hostmaster {h:?} is not a simple address"
                ))
                .hint("give an address like hostmaster@example.org (no dot before the @)"));
            }
        }
        if let Some(a) = &self.mail.postmaster {
            if let Err(e) = crate::mail::parse_address(a) {
                return Err(Error::bad_input(format!(
                    "invalid config {origin}: [mail] postmaster: {}",
                    e.message
                ))
                .hint("give one address, like admin@example.org"));
            }
        }
        for (key, addr) in [("dmarc_report", &self.dns.dmarc_report)] {
            if let Some(a) = addr {
                if !a.contains('@') || a.contains([' ', '"', ';', ',', '\\', '\n']) {
                    return Err(Error::bad_input(format!(
                        "invalid config {origin}: [dns] {key} {a:?} is not one address"
                    ))
                    .hint("give an address like dmarc@example.org"));
                }
            }
        }
        if !matches!(
            self.dns.dmarc_policy.as_str(),
            "none" | "quarantine" | "reject"
        ) {
            return Err(Error::bad_input(format!(
                "invalid config {origin}: [dns] dmarc_policy {:?}: use none, quarantine or reject",
                self.dns.dmarc_policy
            ))
            .hint("fix the file (docs/dns.md); the daemon did not start"));
        }
        if let Some(dir) = d.catalog.iter().find(|p| !p.is_absolute()) {
            return bad(
                "catalog",
                &format!("{} is not an absolute path", dir.display()),
            );
        }
        if let Some(owner) = &d.owner {
            let ok = !owner.is_empty()
                && owner.len() <= 48
                && owner
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return bad("owner", "use 1 to 48 lowercase letters, digits and '-'");
            }
        }
        Ok(())
    }
}

fn bad_acme(origin: &str, why: &str) -> Result<()> {
    Err(
        Error::bad_input(format!("invalid config {origin}: [acme] {why}"))
            .hint("fix the file (docs/config.md lists every key); the daemon did not start"),
    )
}

/// "FILE:LINE:COL: what is wrong", then the line at fault (which names the key).
pub fn describe_toml_error(text: &str, origin: &str, e: &toml::de::Error) -> String {
    let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
    let source_line = text.lines().nth(line - 1).unwrap_or("").trim_end();
    format!(
        "{origin}:{line}:{col}: {}\n  {line} | {source_line}",
        e.message().trim_end()
    )
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests {

    #[test]
    fn quiet_hours_may_span_midnight() {
        let night = parse_quiet_hours("22:00-07:00").unwrap();
        assert_eq!(night, (22 * 60, 7 * 60));
        assert!(in_quiet_hours(23 * 60, night) && in_quiet_hours(6 * 60 + 59, night));
        assert!(!in_quiet_hours(7 * 60, night) && !in_quiet_hours(12 * 60, night));
        let lunch = parse_quiet_hours("12:00-13:30").unwrap();
        assert!(in_quiet_hours(12 * 60 + 15, lunch) && !in_quiet_hours(13 * 60 + 30, lunch));
        for bad in ["22-07", "25:00-07:00", "22:00", "x"] {
            assert!(parse_quiet_hours(bad).is_none(), "{bad}");
        }
    }

    use super::*;

    #[test]
    fn empty_file_is_the_default() {
        let c = Config::parse("", "x").unwrap();
        assert_eq!(c.daemon.socket, PathBuf::from(DEFAULT_SOCKET));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e =
            Config::parse("[daemon]\nsocket = \"/x\"\nsockett = \"/y\"\n", "f.toml").unwrap_err();
        assert!(e.message.contains("f.toml:3:1"), "{}", e.message);
        assert!(e.message.contains("sockett"), "{}", e.message);
    }

    #[test]
    fn secondaries_are_checked_at_load() {
        let zone = |extra: &str| {
            format!(
                "[dns]\nlisten = [\"127.0.0.1:53\"]\n\n[[dns.zones]]\nname = \"example.org\"\n\
                 mode = \"serve\"\n{extra}\n"
            )
        };
        // A bad address: at its line, with what to give.
        let e = Config::parse(
            &zone("secondaries = [\"192.0.2.2\", \"ns2.example.org\"]"),
            "f.toml",
        )
        .unwrap_err();
        assert!(
            e.message.contains("f.toml:7:")
                && e.message.contains("\"ns2.example.org\" is not an address"),
            "{}",
            e.message
        );
        // Secondaries without the key that signs their transfers.
        let e = Config::parse(&zone("secondaries = [\"192.0.2.2\"]"), "f.toml").unwrap_err();
        assert!(e.message.contains("tsig_key"), "{}", e.message);
        let e = Config::parse(
            &zone("secondaries = [\"192.0.2.2\"]\ntsig_key = \"k\"\ntsig_secret_file = \"k.key\""),
            "f.toml",
        )
        .unwrap_err();
        assert!(e.message.contains("absolute path"), "{}", e.message);
        let c = Config::parse(
            &zone(
                "secondaries = [\"192.0.2.2\", \"[2001:db8::2]:5353\"]\ntsig_key = \"k\"\n\
                 tsig_secret_file = \"/etc/ilot/k.key\"",
            ),
            "f.toml",
        )
        .unwrap();
        assert_eq!(
            c.dns.zones[0].secondaries,
            [
                "192.0.2.2:53".parse::<std::net::SocketAddr>().unwrap(),
                "[2001:db8::2]:5353".parse().unwrap()
            ]
        );
        assert!(c.dns.zones[0].nsec3, "NSEC3 by default");
        // Only served zones have secondaries.
        let e = Config::parse(
            "[[dns.zones]]\nname = \"example.org\"\nsecondaries = [\"192.0.2.2\"]\n",
            "f.toml",
        )
        .unwrap_err();
        assert!(e.message.contains("mode = \"serve\""), "{}", e.message);
    }

    #[test]
    fn wrong_type_and_bad_values() {
        let e = Config::parse("[daemon]\nsocket = 3\n", "f.toml").unwrap_err();
        assert!(e.message.contains("f.toml:2:10"), "{}", e.message);
        let e = Config::parse("[daemon]\ndocker = \"tcp://1.2.3.4\"\n", "f.toml").unwrap_err();
        assert!(e.message.contains("docker"), "{}", e.message);
        assert!(Config::parse("[daemon\n", "f").is_err());
    }

    #[test]
    fn backup_targets_are_checked_at_load() {
        for (text, says) in [
            ("repository = \"backups\"", "absolute path"),
            ("repository = \"sftp://nas\"", "no path"),
            ("repository = \"s3:https://h/Bad_Bucket\"", "bucket"),
            ("sftp_host_key = \"AAAA\"", "sftp_host_key"),
            ("s3_region = \"Paris 1\"", "s3_region"),
            ("s3_credentials_file = \"creds\"", "absolute path"),
        ] {
            let e = Config::parse(&format!("[backup]\n{text}\n"), "f.toml").unwrap_err();
            assert!(e.message.contains(says), "{text}: {}", e.message);
        }
        let c = Config::parse(
            "[backup]\nrepository = \"sftp:backup@nas.lan:/srv/ilot\"\nsftp_host_key = \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl nas\"\n",
            "f.toml",
        )
        .unwrap();
        assert_eq!(c.backup.s3_region, "us-east-1");
    }
}
