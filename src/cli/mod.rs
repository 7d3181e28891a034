//! The command line: every flag is defined here, in one place. Every command except `daemon`
//! is a thin client of the daemon's API (api::client), with no async runtime and no config
//! parsing, so it answers in about a millisecond.

use crate::api::{client, InstallParams, LogsParams, RemoveParams, Reply, Request, UpgradeParams};
use crate::error::Error;
use clap::{Args, Parser, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;

pub(crate) mod render;

#[derive(Parser)]
#[command(
    name = "ilot",
    version,
    about = "Self-hosting appliance manager: installs and runs containerised apps",
    after_help = "Exit codes: 0 ok, 1 failed, 2 bad usage or input (nothing changed), 3 daemon or Docker engine unreachable.\nDocs: docs/ in the source tree; start with README.md."
)]
pub struct Cli {
    /// The daemon's socket.
    #[arg(long, global = true, env = "ILOT_SOCKET", default_value = crate::config::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print machine-readable JSON on stdout (no progress, no colour).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (normally started by systemd).
    Daemon {
        /// Config file (default: /etc/ilot/ilot.toml if it exists, else the embedded default).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Show the daemon, the engine and a count of instances.
    Status,
    /// Show what converging every instance would change now (drift), without changing it.
    Plan,
    /// Show recent events (installs, upgrades, rollbacks, drift...).
    Events {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Install and manage apps.
    #[command(subcommand)]
    App(AppCommand),
    /// HTTPS certificates of the served domains.
    #[command(subcommand)]
    Cert(CertCommand),
    /// The domains apps are served at.
    #[command(subcommand)]
    Domain(DomainCommand),
    /// DNS records the served domains need.
    #[command(subcommand)]
    Dns(DnsCommand),
    /// The nftables firewall: what is open and why; open or close a port.
    #[command(subcommand)]
    Firewall(FirewallCommand),
    /// Bans: who is banned, by which jail, until when; ban or unban by hand.
    #[command(subcommand)]
    Ban(BanCommand),
    /// The ban engine: its jails, and a filter tried on a log file.
    #[command(subcommand)]
    Guard(GuardCommand),
    /// Host and app figures over time (sparklines): without NAME, every series' last value; a
    /// NAME ending in ':' (disk:, up:, ccpu:) shows the whole family.
    Metrics {
        name: Option<String>,
        /// How far back, e.g. 1h, 6h, 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        since: std::time::Duration,
    },
    /// Alerts: what is firing, silences, channels; silence a rule, acknowledge, test.
    #[command(subcommand)]
    Alert(AlertCommand),
    /// Mail: domains, mailboxes, aliases, DKIM keys, the outbound relay, the queue.
    Mail(MailArgs),
    /// Backups: snapshots of each instance (volumes, database dumps, settings) in an
    /// encrypted, deduplicated repository (restic's format), and restores from them.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// What is still wrong, in plain words: DNS records as the world sees them, reverse DNS,
    /// outbound port 25, blocklists. Exit code 1 when something fails.
    Diagnose {
        #[arg(value_enum, default_value_t = DiagnoseArea::All)]
        area: DiagnoseArea,
    },
}

#[derive(Args)]
struct MailArgs {
    /// The mail instance (needed only when several are installed).
    #[arg(long, global = true)]
    instance: Option<String>,
    #[command(subcommand)]
    command: MailCommand,
}

#[derive(Subcommand)]
enum MailCommand {
    /// The domains this server receives mail for (each gets MX, SPF, DKIM, DMARC... records).
    #[command(subcommand)]
    Domain(MailDomainCommand),
    /// Mailboxes. Passwords are asked at the terminal, or read from stdin (one line), never
    /// taken from the command line.
    #[command(subcommand)]
    User(MailUserCommand),
    /// Aliases and catch-alls (an address of @example.org catches all unknown ones).
    #[command(subcommand)]
    Alias(MailAliasCommand),
    /// DKIM keys: which one signs, and rotation.
    #[command(subcommand)]
    Dkim(MailDkimCommand),
    /// A smarthost for outbound mail, for ISPs that block port 25.
    #[command(subcommand)]
    Relay(MailRelayCommand),
    /// Messages waiting to leave, and why.
    Queue {
        /// Retry them all now (e.g. after `ilot mail relay set`).
        #[arg(long)]
        flush: bool,
    },
    /// Write a mailbox to a file: a tar of its Maildir (readable by any mail tool).
    Export {
        address: String,
        /// The file to write (must not exist).
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Add the messages of an exported tar to a mailbox.
    Import { address: String, file: PathBuf },
}

#[derive(Subcommand)]
enum MailDomainCommand {
    List,
    Add {
        domain: String,
    },
    /// Refused while the domain still has mailboxes or aliases.
    Remove {
        domain: String,
    },
}

#[derive(Subcommand)]
enum MailUserCommand {
    List,
    Add {
        address: String,
        /// Storage limit, e.g. 2G.
        #[arg(long)]
        quota: Option<String>,
    },
    /// Remove a mailbox; its messages are kept unless --purge.
    Remove {
        address: String,
        #[arg(long)]
        purge: bool,
    },
    /// Change a password (takes effect at the next login; open sessions stay).
    Passwd {
        address: String,
    },
}

#[derive(Subcommand)]
enum MailAliasCommand {
    List,
    /// ADDRESS (or @DOMAIN for a catch-all) delivered to TARGET..., local or not.
    Add {
        address: String,
        #[arg(required = true)]
        targets: Vec<String>,
    },
    Remove {
        address: String,
    },
}

#[derive(Subcommand)]
enum MailDkimCommand {
    /// Each domain's signing key, the next one if a rotation is under way, and those retiring.
    Show,
    /// Publish a new key; signing switches to it once it resolves in DNS, and the old key is
    /// withdrawn later ([mail] dkim_retire_after).
    Rotate { domain: String },
}

#[derive(Subcommand)]
enum MailRelayCommand {
    Show,
    /// Send outbound mail through HOST:PORT (e.g. your ISP's smtp.isp.net:587), logging in as
    /// --user; the password is asked, or read from stdin.
    Set {
        relay: String,
        #[arg(long)]
        user: String,
        /// encrypt: TLS required (the default); none: only for a relay on your own network.
        #[arg(long, default_value = "encrypt")]
        tls: String,
        /// The domain whose SPF record lists the relay's servers (`include:` in your SPF),
        /// as the relay's documentation names it; known for well-known relays.
        #[arg(long, value_name = "DOMAIN")]
        spf_include: Option<String>,
    },
    Remove,
}

/// A password: asked twice at a terminal (no echo), else one line of stdin.
fn read_password(what: &str) -> Result<crate::api::Secret, Error> {
    use std::io::IsTerminal;
    let io = |e: std::io::Error| Error::bad_input(format!("cannot read the password: {e}"));
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("Password for {what}: ")).map_err(io)?;
        let again = rpassword::prompt_password("Again: ").map_err(io)?;
        if first != again {
            return Err(Error::bad_input(
                "the two passwords differ; nothing was changed",
            ));
        }
        return Ok(crate::api::Secret(first));
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(io)?;
    let line = line.trim_end_matches(['\n', '\r']).to_string();
    if line.is_empty() {
        return Err(Error::bad_input("no password on stdin").hint(format!(
            "e.g. `printf '%s\\n' \"$PASSWORD\" | ilot mail ... {what}`, or run it at a terminal"
        )));
    }
    Ok(crate::api::Secret(line))
}

fn mail_request(args: MailArgs) -> Result<Request, Error> {
    use crate::api::MailOp as M;
    let absolute = |p: PathBuf| {
        std::path::absolute(&p).map_err(|e| Error::bad_input(format!("{}: {e}", p.display())))
    };
    let op = match args.command {
        MailCommand::Domain(MailDomainCommand::List) => M::DomainList,
        MailCommand::Domain(MailDomainCommand::Add { domain }) => M::DomainAdd { domain },
        MailCommand::Domain(MailDomainCommand::Remove { domain }) => M::DomainRemove { domain },
        MailCommand::User(MailUserCommand::List) => M::UserList,
        MailCommand::User(MailUserCommand::Add { address, quota }) => M::UserAdd {
            password: read_password(&address)?,
            address,
            quota,
        },
        MailCommand::User(MailUserCommand::Remove { address, purge }) => {
            M::UserRemove { address, purge }
        }
        MailCommand::User(MailUserCommand::Passwd { address }) => M::UserPasswd {
            password: read_password(&address)?,
            address,
        },
        MailCommand::Alias(MailAliasCommand::List) => M::AliasList,
        MailCommand::Alias(MailAliasCommand::Add { address, targets }) => {
            M::AliasAdd { address, targets }
        }
        MailCommand::Alias(MailAliasCommand::Remove { address }) => M::AliasRemove { address },
        MailCommand::Dkim(MailDkimCommand::Show) => M::DkimShow,
        MailCommand::Dkim(MailDkimCommand::Rotate { domain }) => M::DkimRotate { domain },
        MailCommand::Relay(MailRelayCommand::Show) => M::RelayShow,
        MailCommand::Relay(MailRelayCommand::Set {
            relay,
            user,
            tls,
            spf_include,
        }) => M::RelaySet {
            password: read_password(&format!("{user} at {relay}"))?,
            relay,
            user,
            tls,
            spf_include,
        },
        MailCommand::Relay(MailRelayCommand::Remove) => M::RelayRemove,
        MailCommand::Queue { flush: false } => M::Queue,
        MailCommand::Queue { flush: true } => M::QueueFlush,
        MailCommand::Export { address, output } => M::Export {
            address,
            output: absolute(output)?,
        },
        MailCommand::Import { address, file } => M::Import {
            address,
            input: absolute(file)?,
        },
    };
    Ok(Request::Mail {
        instance: args.instance,
        op,
    })
}

#[derive(Subcommand)]
enum DnsCommand {
    /// Print the records (to paste at a registrar): a table, a zone-file snippet, or JSON.
    Show {
        /// Only this domain and its subdomains.
        domain: Option<String>,
        #[arg(long, value_enum, default_value_t = DnsFormat::Table)]
        format: DnsFormat,
    },
    /// Put the records where they belong: rebuild the served zones, push the pushed ones
    /// (RFC 2136), and count those left to paste.
    Apply {
        /// Show what would be pushed, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum FirewallCommand {
    /// The open ports and why each is open, the pending change if any.
    Show,
    /// Open a port to the world (PORT, PORT/tcp or PORT/udp).
    Allow { port: String },
    /// Close a port; reverted unless `ilot firewall confirm` follows in time.
    Deny { port: String },
    /// Keep the change that is waiting for confirmation.
    Confirm,
}

#[derive(Subcommand)]
enum AlertCommand {
    /// Firing alerts, silences, and each channel's queue and last error.
    List,
    /// Mute a rule's messages for a while (e.g. `ilot alert silence disk-filling 2h`).
    Silence {
        rule: String,
        #[arg(value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
    },
    /// Lift a silence.
    Unsilence { rule: String },
    /// Acknowledge the firing alerts.
    Ack,
    /// Send a test message to every channel.
    Test,
}

#[derive(Subcommand)]
enum BanCommand {
    /// The active bans (newest first) and the blocklists loaded.
    List,
    /// Ban an address (an IPv6 address bans its /64) or a prefix, for good unless --for.
    Add {
        address: String,
        /// How long, e.g. 1h, 2d.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
    },
    /// Lift the ban that covers an address, and forget its past bans.
    Remove { address: String },
}

#[derive(Subcommand)]
enum GuardCommand {
    /// The jails: filter, where they read, policy, failures seen and bans made.
    Show,
    /// Try a filter on a log file, like fail2ban-regex: each matching line with the address
    /// it yields, then counts. Runs here, without the daemon.
    Test {
        /// A built-in filter (sshd, postfix, dovecot, proxy-auth, ...) or a custom one.
        filter: String,
        logfile: std::path::PathBuf,
        /// The filter's mode (default: its own default; sshd: normal, ddos, extra, aggressive).
        #[arg(long)]
        mode: Option<String>,
        /// Only the counts.
        #[arg(long)]
        summary: bool,
        /// Also list the lines that did not match.
        #[arg(long)]
        missed: bool,
        /// Where custom filters are.
        #[arg(long, default_value = crate::guard::filter::CUSTOM_DIR)]
        filters_dir: std::path::PathBuf,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiagnoseArea {
    Dns,
    Mail,
    All,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DnsFormat {
    Table,
    Zone,
    Json,
}

#[derive(Subcommand)]
enum DomainCommand {
    /// Each served domain, its instance and its certificate.
    List,
    /// Serve an instance at one more domain (its primary domain if it has none).
    Add { domain: String, instance: String },
    /// Stop serving a domain (an instance's next domain, if any, becomes primary).
    Remove { domain: String },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Each served domain: issuer, expiry, next renewal, last error.
    List,
    /// Issue or renew now what is due (a domain, or all); --force renews even if not due.
    Renew {
        domain: Option<String>,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Make the repository set in [backup] repository, and its password (shown once: keep it
    /// away from this machine, it is the only way to read the backups).
    Init,
    /// Back up every instance (or one) now, then apply the retention.
    Run { instance: Option<String> },
    /// The snapshots in the repository: when, which instance, how big.
    List,
    /// A restore drill: the latest snapshot of every instance (or one) restored as a throwaway
    /// instance, every file compared with the repository, health-checked, then removed.
    Drill { instance: Option<String> },
    /// Restore a snapshot (an id, or `latest` with --instance) as a new instance: its original
    /// name if free, or --as NAME. An existing instance is overwritten only with --replace.
    Restore {
        /// A snapshot id (or the start of one), or `latest`.
        snapshot: String,
        /// Only this instance's snapshots (needed with `latest`).
        #[arg(long)]
        instance: Option<String>,
        /// Put the snapshot back in place of the instance it was taken of: the instance as it
        /// is now is backed up first, then removed with its data, then restored.
        #[arg(long, conflicts_with_all = ["as_name", "domain"])]
        replace: bool,
        /// The new instance's name.
        #[arg(long = "as", value_name = "NAME")]
        as_name: Option<String>,
        /// The new instance's domain (the original keeps its own).
        #[arg(long)]
        domain: Option<String>,
    },
    /// Recover a machine: on a fresh one (config with [backup] repository, and its password
    /// file), bring back ilot's keys, the old config (aside, for review) and every instance.
    Recover,
    /// Check the repository's structure (and with --read-data, every byte of it).
    Check {
        #[arg(long)]
        read_data: bool,
    },
}

#[derive(Subcommand)]
enum AppCommand {
    /// List the apps that can be installed.
    Catalog,
    /// What a catalogue app is (upstream, licence, version), what it needs (memory, disk,
    /// architecture, a domain) and what it will open (ports, routes, DNS records).
    Info { app: String },
    /// Install an app from the catalogue and wait until it is healthy.
    Install(InstallArgs),
    /// List installed instances.
    List,
    /// Show one instance: status, services, ports, volumes, settings (secrets are never shown).
    Show { instance: String },
    /// Start a stopped instance.
    Start { instance: String },
    /// Stop an instance (it stays stopped across reboots until started).
    Stop { instance: String },
    /// Restart an instance's containers.
    Restart { instance: String },
    /// Print an instance's logs.
    Logs {
        instance: String,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines of each service.
        #[arg(long)]
        tail: Option<u64>,
        /// Only this service.
        #[arg(long)]
        service: Option<String>,
    },
    /// Upgrade an instance; rolls back (image and data) if the new version is not healthy.
    Upgrade {
        instance: String,
        /// New image for the main service (REF) or a given one (SERVICE=REF); repeatable.
        /// Without it, upgrade to the catalogue's current version.
        #[arg(long = "image", value_name = "REF")]
        images: Vec<String>,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove an instance; its data volumes are kept unless --purge.
    Remove {
        instance: String,
        /// Also delete its data volumes and snapshots (irreversible).
        #[arg(long)]
        purge: bool,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Args)]
struct InstallArgs {
    /// The app, as listed by `ilot app catalog`.
    app: String,
    /// Instance name (default: the app's name).
    #[arg(long)]
    name: Option<String>,
    /// The domain the app is served on.
    #[arg(long)]
    domain: Option<String>,
    /// A setting, KEY=VALUE; repeatable. Settings the app asks for and that are not given
    /// here are asked at the terminal (a script without a terminal gets their defaults).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_setting)]
    settings: Vec<(String, String)>,
    /// Another image for the main service (REF) or a given one (SERVICE=REF); repeatable.
    #[arg(long = "image", value_name = "REF")]
    images: Vec<String>,
    /// Install even if the machine looks too small for the app (memory, disk, architecture).
    #[arg(long)]
    force: bool,
    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Asks, at a terminal, for the settings the app wants an admin to choose (`ask = true`) that
/// `--set` did not give. Without a terminal (a script), or with --json, nothing is asked.
fn ask_settings(
    socket: &std::path::Path,
    app: &str,
    settings: &mut BTreeMap<String, String>,
) -> Result<(), Error> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Ok(());
    }
    let info = client::call(
        socket,
        &Request::AppInfo {
            app: app.to_string(),
        },
        |_| {},
    )?;
    for st in info["settings"].as_array().into_iter().flatten() {
        let key = st["key"].as_str().unwrap_or_default();
        if st["ask"] != serde_json::Value::Bool(true) || settings.contains_key(key) {
            continue;
        }
        let Ok(spec) = serde_json::from_value::<crate::catalog::Setting>(st["spec"].clone()) else {
            continue;
        };
        let default = st["default_here"].as_str().map(str::to_string);
        loop {
            let choices = if spec.choices.is_empty() {
                String::new()
            } else {
                format!(" ({})", spec.choices.join("/"))
            };
            let shown = default
                .as_deref()
                .map(|d| format!(" [{d}]"))
                .unwrap_or_default();
            eprint!("{key}: {}{choices}{shown}: ", spec.description);
            std::io::stderr().flush().ok();
            let mut line = String::new();
            if std::io::stdin().lock().read_line(&mut line).unwrap_or(0) == 0 {
                return Err(Error::bad_input("install cancelled (end of input)"));
            }
            let answer = match line.trim() {
                "" => match &default {
                    Some(d) => d.clone(),
                    None => {
                        eprintln!("  {key} has no default: please type a value");
                        continue;
                    }
                },
                a => a.to_string(),
            };
            match crate::catalog::check_setting_value(key, &spec, &answer) {
                Ok(()) => {
                    settings.insert(key.to_string(), answer);
                    break;
                }
                Err(e) => eprintln!("  {e}"),
            }
        }
    }
    Ok(())
}

fn parse_setting(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    if !crate::names::is_key(k) {
        return Err(format!(
            "setting key {k:?} must be lowercase letters, digits and '_', starting with a letter"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    let mut dns_format = DnsFormat::Table;
    let request = match cli.command {
        Command::Daemon { config } => return crate::daemon::run(config.as_deref()),
        Command::Status => Request::Status,
        Command::Plan => Request::Plan,
        Command::Events { limit } => Request::Events { limit },
        Command::Dns(DnsCommand::Show { domain, format }) => {
            dns_format = format;
            Request::DnsShow { domain }
        }
        Command::Dns(DnsCommand::Apply { dry_run }) => Request::DnsApply { dry_run },
        Command::Firewall(FirewallCommand::Show) => Request::FirewallShow,
        Command::Firewall(FirewallCommand::Allow { port }) => Request::FirewallAllow { port },
        Command::Firewall(FirewallCommand::Deny { port }) => Request::FirewallDeny { port },
        Command::Firewall(FirewallCommand::Confirm) => Request::FirewallConfirm,
        Command::Metrics { name, since } => Request::Metrics {
            name,
            since_secs: since.as_secs(),
        },
        Command::Alert(AlertCommand::List) => Request::AlertList,
        Command::Alert(AlertCommand::Silence { rule, duration }) => Request::AlertSilence {
            rule,
            seconds: duration.as_secs().max(1),
        },
        Command::Alert(AlertCommand::Unsilence { rule }) => {
            Request::AlertSilence { rule, seconds: 0 }
        }
        Command::Alert(AlertCommand::Ack) => Request::AlertAck,
        Command::Alert(AlertCommand::Test) => Request::AlertTest,
        Command::Ban(BanCommand::List) => Request::BanList,
        Command::Ban(BanCommand::Add { address, duration }) => Request::BanAdd {
            address,
            seconds: duration.map(|d| d.as_secs().max(1)),
        },
        Command::Ban(BanCommand::Remove { address }) => Request::BanRemove { address },
        Command::Guard(GuardCommand::Show) => Request::GuardShow,
        Command::Guard(GuardCommand::Test {
            filter,
            mode,
            logfile,
            summary,
            missed,
            filters_dir,
        }) => {
            return crate::guard::test::run(
                &filter,
                mode.as_deref(),
                &logfile,
                &filters_dir,
                summary,
                missed,
                cli.json,
            )
        }
        Command::Diagnose { area } => Request::Diagnose {
            what: match area {
                DiagnoseArea::Dns => "dns",
                DiagnoseArea::Mail => "mail",
                DiagnoseArea::All => "all",
            }
            .into(),
        },
        Command::Mail(args) => match mail_request(args) {
            Ok(r) => r,
            Err(e) => return render::error(&e, cli.json),
        },
        Command::Backup(b) => match b {
            BackupCommand::Init => Request::BackupInit { reveal: !cli.json },
            BackupCommand::Run { instance } => Request::BackupRun { instance },
            BackupCommand::List => Request::BackupList,
            BackupCommand::Recover => Request::BackupRecover,
            BackupCommand::Drill { instance } => Request::BackupDrill { instance },
            BackupCommand::Restore {
                snapshot,
                instance,
                replace,
                as_name,
                domain,
            } => Request::BackupRestore {
                snapshot,
                instance,
                replace,
                as_name,
                domain,
            },
            BackupCommand::Check { read_data } => Request::BackupCheck { read_data },
        },
        Command::Cert(CertCommand::List) => Request::CertList,
        Command::Domain(DomainCommand::List) => Request::DomainList,
        Command::Domain(DomainCommand::Add { domain, instance }) => {
            Request::DomainAdd { domain, instance }
        }
        Command::Domain(DomainCommand::Remove { domain }) => Request::DomainRemove { domain },
        Command::Cert(CertCommand::Renew { domain, force }) => Request::CertRenew { domain, force },
        Command::App(cmd) => match cmd {
            AppCommand::Catalog => Request::Catalog,
            AppCommand::Info { app } => Request::AppInfo { app },
            AppCommand::Install(a) => {
                let mut settings = BTreeMap::new();
                for (k, v) in a.settings {
                    if settings.insert(k.clone(), v).is_some() {
                        return render::error(
                            &Error::bad_input(format!("--set {k} given twice")),
                            cli.json,
                        );
                    }
                }
                if !cli.json {
                    if let Err(e) = ask_settings(&cli.socket, &a.app, &mut settings) {
                        return render::error(&e, cli.json);
                    }
                }
                Request::AppInstall(InstallParams {
                    app: a.app,
                    name: a.name,
                    domain: a.domain,
                    settings,
                    images: a.images,
                    force: a.force,
                    // Shown once, to a person: never in --json.
                    reveal: !cli.json,
                    drill: false,
                    dry_run: a.dry_run,
                })
            }
            AppCommand::List => Request::AppList,
            AppCommand::Show { instance } => Request::AppShow { name: instance },
            AppCommand::Start { instance } => Request::AppStart { name: instance },
            AppCommand::Stop { instance } => Request::AppStop { name: instance },
            AppCommand::Restart { instance } => Request::AppRestart { name: instance },
            AppCommand::Logs {
                instance,
                follow,
                tail,
                service,
            } => Request::AppLogs(LogsParams {
                name: instance,
                follow,
                tail,
                service,
            }),
            AppCommand::Upgrade {
                instance,
                images,
                dry_run,
            } => Request::AppUpgrade(UpgradeParams {
                name: instance,
                images,
                dry_run,
            }),
            AppCommand::Remove {
                instance,
                purge,
                dry_run,
            } => Request::AppRemove(RemoveParams {
                name: instance,
                purge,
                dry_run,
            }),
        },
    };
    let mut progress = render::Progress::new(cli.json);
    let multi_service_logs = matches!(&request, Request::AppLogs(p) if p.service.is_none());
    let result = client::call(&cli.socket, &request, |reply| match reply {
        Reply::Progress {
            message,
            current,
            total,
        } => progress.update(&message, current.zip(total)),
        Reply::Log { service, line } => {
            progress.clear();
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({ "service": service, "line": line })
                );
            } else if multi_service_logs {
                println!("{service} | {line}");
            } else {
                println!("{line}");
            }
        }
        _ => {}
    });
    progress.finish();
    match result {
        Ok(value) => {
            if cli.json || dns_format == DnsFormat::Json {
                if !matches!(request, Request::AppLogs(_)) {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&value).unwrap_or_default()
                    );
                }
            } else if dns_format == DnsFormat::Zone {
                print!("{}", value["zone"].as_str().unwrap_or_default());
            } else {
                render::human(&request, &value);
            }
            // Diagnosis that found a failure exits 1, so scripts and monitors can act on it.
            let failed = value["checks"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["status"] == "fail"));
            i32::from(matches!(request, Request::Diagnose { .. }) && failed)
        }
        Err(e) => render::error(&e, cli.json),
    }
}
