//! The daemon's JSON API on a Unix socket. One request per connection: the client writes one
//! JSON line (a `Request`), the daemon answers with JSON lines (`Reply`): any number of
//! progress or log lines, then exactly one `ok` or `err`. docs/api.md describes it; `socat`
//! or `nc -U` can speak it.

use crate::error::Error;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub mod client;
pub mod server;

/// The longest request line the daemon reads.
pub const MAX_REQUEST: usize = 1 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "method", content = "params", rename_all = "snake_case")]
pub enum Request {
    Status,
    Plan,
    Events {
        limit: usize,
    },
    Catalog,
    AppList,
    AppShow {
        name: String,
    },
    /// A catalogue app: what it is, needs and opens.
    AppInfo {
        app: String,
    },
    /// Makes the backup repository (and its password, returned once when `reveal`).
    BackupInit {
        #[serde(default)]
        reveal: bool,
    },
    /// A snapshot of one instance, or of all.
    BackupRun {
        instance: Option<String>,
    },
    BackupList,
    /// Restore drills: the latest snapshot of each instance (or one), restored, verified,
    /// health-checked and removed.
    BackupDrill {
        instance: Option<String>,
    },
    /// A new instance from a snapshot: its original name, or `as_name`.
    /// Full-machine recovery: ilot's keys (its config aside, for review), then every
    /// instance's latest snapshot under its own name (those that exist are left alone).
    BackupRecover,
    BackupRestore {
        /// An id (or its start), or "latest" (with `instance`).
        snapshot: String,
        /// Only the snapshots of this instance.
        #[serde(default)]
        instance: Option<String>,
        /// In place of the existing instance (backed up first).
        #[serde(default)]
        replace: bool,
        as_name: Option<String>,
        /// The new instance's domain (the original keeps its own).
        #[serde(default)]
        domain: Option<String>,
    },
    BackupCheck {
        #[serde(default)]
        read_data: bool,
    },
    AppInstall(InstallParams),
    AppUpgrade(UpgradeParams),
    AppRemove(RemoveParams),
    AppStart {
        name: String,
    },
    AppStop {
        name: String,
    },
    AppRestart {
        name: String,
    },
    AppLogs(LogsParams),
    CertList,
    DomainList,
    DnsShow {
        domain: Option<String>,
    },
    DnsApply {
        dry_run: bool,
    },
    Diagnose {
        what: String,
    },
    FirewallShow,
    FirewallAllow {
        port: String,
    },
    FirewallDeny {
        port: String,
    },
    FirewallConfirm,
    BanList,
    /// A manual ban; `seconds` absent = permanent.
    BanAdd {
        address: String,
        seconds: Option<u64>,
    },
    BanRemove {
        address: String,
    },
    GuardShow,
    /// A series' points since `since_secs` ago; without a name, every series' last value.
    Metrics {
        name: Option<String>,
        since_secs: u64,
    },
    AlertList,
    /// Silences a rule for `seconds` (0 lifts the silence).
    AlertSilence {
        rule: String,
        seconds: u64,
    },
    AlertAck,
    AlertTest,
    DomainAdd {
        domain: String,
        instance: String,
    },
    DomainRemove {
        domain: String,
    },
    CertRenew {
        domain: Option<String>,
        force: bool,
    },
    /// `ilot mail ...` on the mail instance (`instance` may be left out when there is one).
    Mail {
        instance: Option<String>,
        op: MailOp,
    },
}

/// A password or token in a request: serialized as is, never shown by `{:?}`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(secret)")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MailOp {
    DomainList,
    DomainAdd {
        domain: String,
    },
    DomainRemove {
        domain: String,
    },
    UserList,
    UserAdd {
        address: String,
        password: Secret,
        quota: Option<String>,
    },
    UserRemove {
        address: String,
        /// Also delete the mailbox's messages.
        #[serde(default)]
        purge: bool,
    },
    UserPasswd {
        address: String,
        password: Secret,
    },
    AliasList,
    /// `address` is name@domain, or @domain for a catch-all.
    AliasAdd {
        address: String,
        targets: Vec<String>,
    },
    AliasRemove {
        address: String,
    },
    RelayShow,
    RelaySet {
        /// HOST:PORT
        relay: String,
        user: String,
        password: Secret,
        /// "encrypt" (default) or "none".
        tls: String,
        /// The relay's SPF domain (`include:`); none: the known one for its host, if any.
        #[serde(default)]
        spf_include: Option<String>,
    },
    RelayRemove,
    DkimShow,
    DkimRotate {
        domain: String,
    },
    Queue,
    /// Retries every deferred message now (after a relay change, say).
    QueueFlush,
    /// Writes the mailbox as a tar of its Maildir to `output` (an absolute path, 0600).
    Export {
        address: String,
        output: std::path::PathBuf,
    },
    /// Adds the messages of such a tar (an absolute path) to a mailbox.
    Import {
        address: String,
        input: std::path::PathBuf,
    },
}

impl MailOp {
    pub fn mutates(&self) -> bool {
        !matches!(
            self,
            MailOp::DomainList
                | MailOp::UserList
                | MailOp::AliasList
                | MailOp::RelayShow
                | MailOp::DkimShow
                | MailOp::Queue
                | MailOp::QueueFlush
                | MailOp::Export { .. }
        )
    }
}

impl Request {
    /// Requests that change state (and take the daemon's operation lock).
    pub fn mutates(&self) -> bool {
        matches!(
            self,
            Request::AppInstall(_)
                | Request::AppUpgrade(_)
                | Request::AppRemove(_)
                | Request::AppStart { .. }
                | Request::AppStop { .. }
                | Request::AppRestart { .. }
                | Request::DomainAdd { .. }
                | Request::BackupInit { .. }
                | Request::BackupRun { .. }
                | Request::BackupRecover
                | Request::BackupDrill { .. }
                | Request::BackupRestore { .. }
                | Request::DomainRemove { .. }
        ) || matches!(self, Request::Mail { op, .. } if op.mutates())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstallParams {
    pub app: String,
    pub name: Option<String>,
    pub domain: Option<String>,
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// `REF` for the main service, or `SERVICE=REF` (a local stand-in, a newer tag).
    #[serde(default)]
    pub images: Vec<String>,
    /// Install even though the machine looks too small for the app.
    #[serde(default)]
    pub force: bool,
    /// The client shows the admin credentials once, at a terminal (never with `--json`).
    #[serde(default)]
    pub reveal: bool,
    /// A restore drill's throwaway instance: no domain needed (it is never served). Set by the
    /// daemon only, never by a client.
    #[serde(skip)]
    pub drill: bool,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpgradeParams {
    pub name: String,
    /// `REF` for the main service, or `SERVICE=REF`.
    #[serde(default)]
    pub images: Vec<String>,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveParams {
    pub name: String,
    #[serde(default)]
    pub purge: bool,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogsParams {
    pub name: String,
    #[serde(default)]
    pub follow: bool,
    pub tail: Option<u64>,
    pub service: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Progress {
        message: String,
        current: Option<u64>,
        total: Option<u64>,
    },
    Log {
        service: String,
        line: String,
    },
    Ok(serde_json::Value),
    Err(Error),
}
