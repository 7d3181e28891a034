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
                | Request::DomainRemove { .. }
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstallParams {
    pub app: String,
    pub name: Option<String>,
    pub domain: Option<String>,
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
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
