//! Notify: where alerts go. Channels: Telegram (teloxide, rustls; two-way, see telegram.rs),
//! ntfy, a generic JSON webhook, email (SMTP, see email.rs). Messages go through an outbox kept in the store: written
//! before the first try, removed after the channel took it, retried with backoff (honouring
//! 429's retry-after) — a channel that is down loses nothing, and nothing is sent twice while
//! the daemon runs. One channel's messages go out in order; a rate limit per channel delays,
//! never drops.

pub mod email;
pub mod telegram;

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A channel as configured (`[[alerts.channels]]`). Secrets are read from files (0600),
/// never from the config or argv.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// A name for messages and `ilot alert status` (default: the kind).
    #[serde(default)]
    pub name: Option<String>,
    pub kind: ChannelKind,
    /// Telegram: the bot token's file. ntfy, webhook: an optional bearer token's file.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Telegram: the chats alerts go to, and the only ones whose commands are answered.
    #[serde(default)]
    pub chat_ids: Vec<i64>,
    /// ntfy: the topic URL (https://ntfy.sh/TOPIC). webhook: where to POST. Telegram: the Bot
    /// API server (default https://api.telegram.org; a local Bot API server works too).
    #[serde(default)]
    pub url: Option<String>,
    /// Only these severities (default: all).
    #[serde(default)]
    pub min_severity: Option<crate::monitor::alerts::Severity>,
    /// Email: the SMTP server ("HOST:PORT"), its TLS ("starttls", the default; "tls" for port
    /// 465; "none" on a trusted network), the sender, the recipients, and the login (the
    /// password in token_file).
    #[serde(default)]
    pub smtp: Option<String>,
    #[serde(default)]
    pub tls: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Vec<String>,
    #[serde(default)]
    pub username: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Telegram,
    Ntfy,
    Webhook,
    Email,
}

impl ChannelConfig {
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            match self.kind {
                ChannelKind::Telegram => "telegram",
                ChannelKind::Ntfy => "ntfy",
                ChannelKind::Webhook => "webhook",
                ChannelKind::Email => "email",
            }
            .into()
        })
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        let label = self.label();
        match self.kind {
            ChannelKind::Telegram => {
                if self.token_file.is_none() || self.chat_ids.is_empty() {
                    return Err(format!(
                        "channel {label}: telegram needs token_file and chat_ids"
                    ));
                }
            }
            ChannelKind::Email => email::validate(self)?,
            ChannelKind::Ntfy | ChannelKind::Webhook => {
                if !self
                    .url
                    .as_deref()
                    .is_some_and(|u| u.starts_with("https://") || u.starts_with("http://"))
                {
                    return Err(format!("channel {label}: give url = \"https://...\""));
                }
            }
        }
        if let Some(u) = &self.url {
            if u.parse::<hyper::Uri>().is_err() {
                return Err(format!("channel {label}: url is not a URL"));
            }
        }
        Ok(())
    }
}

/// Reads a secret file, refusing one that others can read; the content is trimmed.
pub fn read_secret(path: &std::path::Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::bad_input(format!("cannot read {}: {e}", path.display())))?;
    if meta.mode() & 0o077 != 0 {
        return Err(
            Error::bad_input(format!("{} is readable by other users", path.display()))
                .hint(format!("chmod 600 {}", path.display())),
        );
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::bad_input(format!("cannot read {}: {e}", path.display())))?;
    Ok(text.trim().to_string())
}

/// A message waiting in the outbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Outgoing {
    pub id: u64,
    /// Index of the channel in the config.
    pub channel: usize,
    pub text: String,
    pub rule: String,
    pub severity: crate::monitor::alerts::Severity,
    pub state: String,
    pub subject: String,
    pub time: u64,
    pub attempts: u32,
    pub next_try: u64,
    #[serde(default)]
    pub last_error: Option<String>,
}

/// Why a send failed, and whether trying again can help.
#[derive(Debug)]
pub enum SendError {
    /// Try again after this many seconds.
    Retry(u64, String),
    /// The channel refused for good (bad token, bad chat): kept, tried hourly, shown.
    Refused(String),
}

/// Backoff after `attempts` failures: 2, 4, 8... seconds, up to 5 minutes.
pub fn backoff(attempts: u32) -> u64 {
    2u64.saturating_pow(attempts.min(16)).min(300)
}

/// Sends one message on an HTTP channel (ntfy, webhook).
pub async fn send_http(ch: &ChannelConfig, msg: &Outgoing) -> std::result::Result<(), SendError> {
    let url = ch.url.as_deref().unwrap_or_default();
    let mut headers: Vec<(&str, String)> = Vec::new();
    if let Some(f) = &ch.token_file {
        let token = read_secret(f).map_err(|e| SendError::Refused(e.message))?;
        headers.push(("authorization", format!("Bearer {token}")));
    }
    let body = match ch.kind {
        ChannelKind::Ntfy => {
            let critical = msg.severity == crate::monitor::alerts::Severity::Critical;
            headers.push(("title", format!("ilot: {} {}", msg.rule, msg.state)));
            headers.push((
                "priority",
                if critical && msg.state != "resolved" {
                    "5"
                } else {
                    "3"
                }
                .into(),
            ));
            headers.push((
                "tags",
                if msg.state == "resolved" {
                    "white_check_mark"
                } else {
                    "warning"
                }
                .into(),
            ));
            msg.text.clone().into_bytes()
        }
        _ => {
            headers.push(("content-type", "application/json".into()));
            serde_json::to_vec(&serde_json::json!({
                "rule": msg.rule,
                "severity": msg.severity,
                "state": msg.state,
                "subject": msg.subject,
                "message": msg.text,
                "time": msg.time,
                "id": msg.id,
                "host": hostname(),
            }))
            .unwrap_or_default()
        }
    };
    let res = crate::http_client::request("POST", url, &headers, Some(body), 64 << 10)
        .await
        .map_err(|e| SendError::Retry(backoff(msg.attempts), e))?;
    match res.status {
        200..=299 => Ok(()),
        429 | 500..=599 | 408 => Err(SendError::Retry(
            res.retry_after.unwrap_or_else(|| backoff(msg.attempts)),
            format!("HTTP {}", res.status),
        )),
        s => Err(SendError::Refused(format!("HTTP {s}"))),
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}
