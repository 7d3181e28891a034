//! Desired state and the journal, kept in an embedded store (redb: one file, ACID commits).
//!
//! Tables hold JSON values: `instances` (the desired state of each installed app), `ops` (the
//! journal: an operation is recorded before its first side effect and updated before each
//! step), `kept` (secrets of instances removed without --purge, whose volumes were kept),
//! `events` (recent history), `bans` (the guard's bans, by prefix) and `meta`. The file is created 0600 in a 0700 directory: it holds
//! the apps' secrets.

use crate::catalog::Manifest;
use crate::error::{Error, Result};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("instances");
const OPS: TableDefinition<u64, &[u8]> = TableDefinition::new("ops");
const KEPT: TableDefinition<&str, &[u8]> = TableDefinition::new("kept");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const BANS: TableDefinition<&str, &[u8]> = TableDefinition::new("bans");

/// Memory the store may use as a cache.
const STORE_CACHE: usize = 8 << 20;

/// How many events the history keeps.
const EVENT_HISTORY: u64 = 1000;

/// The image a service runs: the reference asked for and the exact image ID resolved at
/// install or upgrade, so a moved tag never changes what runs and rollback is exact.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PinnedImage {
    pub reference: String,
    pub id: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Installing,
    Running,
    Stopped,
    Failed,
    Upgrading,
    Removing,
}

/// One installed app: everything needed to (re)create its containers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Instance {
    pub name: String,
    pub app: String,
    /// The manifest as it was at install/upgrade: a newer catalogue changes nothing until
    /// `ilot app upgrade`.
    pub manifest: Manifest,
    /// The primary domain (what {{domain}} renders to, and the URL shown).
    pub domain: Option<String>,
    /// More domains the proxy serves the same routes at (`ilot domain add`).
    #[serde(default)]
    pub aliases: Vec<String>,
    pub settings: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, String>,
    pub images: BTreeMap<String, PinnedImage>,
    /// Whether the user wants it running (start/stop change this; the reconciler obeys it).
    pub running: bool,
    pub status: Status,
    pub message: Option<String>,
    pub created_at: u64,
    pub updated_at: u64,
    /// A mail server's domains, mailboxes, aliases, relay and DKIM selectors (`ilot mail`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail: Option<crate::mail::MailState>,
    /// An app that sends mail: its account on the mail server (`[needs] smtp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<crate::mail::SmtpAccount>,
    /// A mail client (webmail): the mail server it reads and sends through
    /// (`[needs] mail_client`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail_client: Option<MailClient>,
}

/// The mail server as a mail client app reaches it, resolved at install: its name (which
/// resolves to the host inside the app's containers, so TLS names match), the host ports of
/// IMAPS and submission, and its first mail domain. What `{{mail.KEY}}` renders to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MailClient {
    /// The mail instance.
    pub server: String,
    pub host: String,
    pub imaps_port: u16,
    pub submission_port: u16,
    pub domain: String,
}

impl MailClient {
    /// The value of `{{mail.KEY}}` (catalog::MAIL_CLIENT_VALUES).
    pub fn value(&self, key: &str) -> Option<String> {
        Some(match key {
            "host" => self.host.clone(),
            "imaps_port" => self.imaps_port.to_string(),
            "submission_port" => self.submission_port.to_string(),
            "domain" => self.domain.clone(),
            _ => return None,
        })
    }
}

impl Instance {
    /// Every domain the instance is served at, primary first.
    pub fn domains(&self) -> impl Iterator<Item = &String> {
        self.domain.iter().chain(self.aliases.iter())
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    Install,
    Upgrade,
    Remove,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Reconciling towards `next` (install, remove).
    Applying,
    /// Upgrade: old containers being stopped and volumes copied out.
    Snapshotting,
    /// Upgrade: every snapshot is complete and checksummed.
    Snapshotted,
    /// Upgrade: containers being replaced and the new version health-gated.
    Switching,
    /// Upgrade: the new version failed; restoring `prev` and its data.
    RollingBack,
}

/// A volume's content copied out before an upgrade (a tar file in the state dir).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub volume: String,
    pub mount: String,
    pub file: PathBuf,
    pub sha256: String,
    pub bytes: u64,
}

/// A journal entry: an operation in progress.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Op {
    pub id: u64,
    pub kind: OpKind,
    pub instance: String,
    pub phase: Phase,
    pub step: String,
    pub started_at: u64,
    pub prev: Option<Instance>,
    pub next: Option<Instance>,
    pub purge: bool,
    pub snapshots: Vec<Snapshot>,
}

/// What stays of an instance removed without --purge: its volumes (in the engine) and the
/// secrets its data was created with, reused if it is installed again under the same name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Kept {
    pub app: String,
    pub secrets: BTreeMap<String, String>,
    pub volumes: Vec<String>,
    pub removed_at: u64,
    /// A removed mail server's mailboxes and aliases, back with its kept mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail: Option<crate::mail::MailState>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub time: u64,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The domain the event is about (certificates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    pub message: String,
    /// How many occurrences the event stands for: a batch of bans is one event on the bus
    /// (a storm of them would crowd out every other event), and the alert rules count it as
    /// that many.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

pub struct Store {
    db: Database,
    pub dir: PathBuf,
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("state values serialize")
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::failed(format!("state store: corrupt {what}: {e}")))
}

impl Store {
    /// Opens (or creates) the store in `dir`. Fails if another daemon holds it.
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                Error::failed(format!("cannot create state dir {}: {e}", dir.display()))
            })?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::failed(format!("cannot chmod state dir {}: {e}", dir.display())))?;
        let path = dir.join("ilot.redb");
        let db = open_private_db(&path, STORE_CACHE).map_err(|e| match e {
            DbOpenError::InUse => Error::conflict(format!(
                "the state store {} is in use by another ilot daemon",
                path.display()
            ))
            .hint("stop the other daemon, or give this one another state_dir"),
            DbOpenError::Other(e) => e,
        })?;
        let store = Store {
            db,
            dir: dir.to_path_buf(),
        };
        let tx = store.db.begin_write()?;
        {
            tx.open_table(INSTANCES)?;
            tx.open_table(OPS)?;
            tx.open_table(KEPT)?;
            tx.open_table(EVENTS)?;
            tx.open_table(META)?;
            tx.open_table(BANS)?;
        }
        tx.commit()?;
        Ok(store)
    }

    /// The owner id stamped on every engine object, generated once per state dir.
    pub fn owner_id(&self) -> Result<String> {
        if let Some(v) = self.db.begin_read()?.open_table(META)?.get("owner")? {
            return Ok(v.value().to_string());
        }
        let id = format!("host-{}", random_token(12).to_ascii_lowercase());
        self.write(|w| {
            w.tx.open_table(META)?.insert("owner", id.as_str())?;
            Ok(())
        })?;
        Ok(id)
    }

    /// A small value kept by a subsystem (zone serials, what was pushed to DNS).
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        let tx = self.db.begin_read()?;
        let v = tx
            .open_table(META)?
            .get(key)?
            .map(|v| v.value().to_string());
        Ok(v)
    }

    /// The guard's bans (active and remembered), as the guard stored them.
    pub fn bans<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(BANS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (_, v) = row?;
            out.push(decode(v.value(), "ban")?);
        }
        Ok(out)
    }

    pub fn instances(&self) -> Result<Vec<Instance>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(INSTANCES)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            out.push(decode(v.value(), &format!("instance {}", k.value()))?);
        }
        Ok(out)
    }

    pub fn ops(&self) -> Result<Vec<Op>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(OPS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            out.push(decode(v.value(), &format!("journal entry {}", k.value()))?);
        }
        Ok(out)
    }

    pub fn kept(&self, name: &str) -> Result<Option<Kept>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(KEPT)?;
        let v = table.get(name)?;
        v.map(|v| decode(v.value(), "kept data")).transpose()
    }

    pub fn events(&self, limit: usize) -> Result<Vec<Event>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(EVENTS)?;
        let mut out = Vec::new();
        for row in table.iter()?.rev().take(limit) {
            let (_, v) = row?;
            out.push(decode(v.value(), "event")?);
        }
        out.reverse();
        Ok(out)
    }

    /// Runs `f` in one write transaction, committed durably before returning.
    pub fn write<T>(&self, f: impl FnOnce(&mut Writer) -> Result<T>) -> Result<T> {
        let mut w = Writer {
            tx: self.db.begin_write()?,
        };
        let out = f(&mut w)?;
        w.tx.commit()?;
        Ok(out)
    }
}

pub struct Writer {
    tx: redb::WriteTransaction,
}

impl Writer {
    pub fn put_instance(&mut self, i: &Instance) -> Result<()> {
        self.tx
            .open_table(INSTANCES)?
            .insert(i.name.as_str(), encode(i).as_slice())?;
        Ok(())
    }
    pub fn delete_instance(&mut self, name: &str) -> Result<()> {
        self.tx.open_table(INSTANCES)?.remove(name)?;
        Ok(())
    }
    pub fn put_op(&mut self, op: &Op) -> Result<()> {
        self.tx
            .open_table(OPS)?
            .insert(op.id, encode(op).as_slice())?;
        Ok(())
    }
    pub fn delete_op(&mut self, id: u64) -> Result<()> {
        self.tx.open_table(OPS)?.remove(id)?;
        Ok(())
    }
    pub fn next_op_id(&mut self) -> Result<u64> {
        let mut meta = self.tx.open_table(META)?;
        let next = meta
            .get("next_op")?
            .and_then(|v| v.value().parse::<u64>().ok())
            .unwrap_or(1);
        meta.insert("next_op", (next + 1).to_string().as_str())?;
        Ok(next)
    }
    pub fn put_meta(&mut self, key: &str, value: &str) -> Result<()> {
        self.tx.open_table(META)?.insert(key, value)?;
        Ok(())
    }
    pub fn put_kept(&mut self, name: &str, k: &Kept) -> Result<()> {
        self.tx
            .open_table(KEPT)?
            .insert(name, encode(k).as_slice())?;
        Ok(())
    }
    pub fn delete_kept(&mut self, name: &str) -> Result<()> {
        self.tx.open_table(KEPT)?.remove(name)?;
        Ok(())
    }
    pub fn put_ban<T: Serialize>(&mut self, key: &str, ban: &T) -> Result<()> {
        self.tx
            .open_table(BANS)?
            .insert(key, encode(ban).as_slice())?;
        Ok(())
    }
    pub fn delete_ban(&mut self, key: &str) -> Result<()> {
        self.tx.open_table(BANS)?.remove(key)?;
        Ok(())
    }
    pub fn append_event(&mut self, e: &Event) -> Result<()> {
        let mut t = self.tx.open_table(EVENTS)?;
        let next = t.last()?.map(|(k, _)| k.value() + 1).unwrap_or(0);
        t.insert(next, encode(e).as_slice())?;
        if next >= EVENT_HISTORY {
            t.remove(next - EVENT_HISTORY)?;
        }
        Ok(())
    }
}

pub enum DbOpenError {
    /// Another process holds the file.
    InUse,
    Other(Error),
}

/// Opens (or creates) a redb file that is 0600 from its first byte, with a cache of
/// `cache` bytes (redb's default, 1 GiB, is far more than a Pi can spare).
pub fn open_private_db(path: &Path, cache: usize) -> std::result::Result<Database, DbOpenError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            DbOpenError::Other(Error::failed(format!(
                "cannot create {}: {e}",
                path.display()
            )))
        })?;
    Database::builder()
        .set_cache_size(cache)
        .create(path)
        .map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => DbOpenError::InUse,
            e => DbOpenError::Other(Error::from(e)),
        })
}

/// Writes a secret file 0600 from its first byte, atomically (temp file, then rename), creating
/// its directory (0700) if needed.
pub fn write_private(path: &Path, content: impl AsRef<[u8]>) -> Result<()> {
    use std::io::Write;
    let io = |e: std::io::Error| Error::failed(format!("cannot write {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(content.as_ref()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// A random token of `len` characters from [A-Za-z0-9], from the OS's CSPRNG.
pub fn random_token(len: usize) -> String {
    use rand::RngExt;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// UTC "YYYY-MM-DD HH:MM:SS" from a Unix time (civil-from-days, no date crate needed).
pub fn format_utc(t: u64) -> String {
    let (days, secs) = ((t / 86400) as i64, t % 86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_format() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(1_795_000_000), "2026-11-18 11:06:40");
    }

    #[test]
    fn store_file_is_private_and_single_owner() {
        let dir = std::env::temp_dir().join(format!("ilot-unit-{}", random_token(8)));
        let store = Store::open(&dir).unwrap();
        let mode = std::fs::metadata(dir.join("ilot.redb"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let owner = store.owner_id().unwrap();
        assert_eq!(owner, store.owner_id().unwrap());
        let id = store.write(|w| w.next_op_id()).unwrap();
        assert_eq!(store.write(|w| w.next_op_id()).unwrap(), id + 1);
        assert!(Store::open(&dir).is_err(), "a second open must be refused");
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
