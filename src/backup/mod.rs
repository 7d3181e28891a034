//! Backups in restic's repository format (deduplicated, encrypted), through rustic_core: a
//! repository is opened with its password for each job (its index must be fresh for the
//! deduplication to see what the last job wrote), and every call here is blocking (the daemon
//! runs them on a blocking thread). A user can open the same repository with restic.
//!
//! One snapshot per instance and run, tagged `ilot` and `instance=NAME`, labelled with the
//! instance's name: its staging directory (the instance's desired state and the database
//! dumps) and its volumes' directories on the host, stored at their absolute paths.

pub mod remote;
pub mod target;

use crate::error::{Error, Result};
use remote::{RemoteBackend, S3Credentials, S3Store, SftpAccess, SftpStore};
use rustic_backend::BackendOptions;
use rustic_core::{
    repofile::{Node, SnapshotFile},
    BackupOptions, CheckOptions, ConfigOptions, Credentials, ForgetGroups, Grouped,
    IndexedFullStatus, KeepOptions, KeyOptions, LocalDestination, LsOptions, OpenStatus, PathList,
    Progress, ProgressBars, ProgressType, PruneOptions, Repository, RepositoryBackends,
    RepositoryOptions, RestoreOptions, RusticError, RusticProgress, SnapshotGroupCriterion,
    SnapshotOptions,
};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
pub use target::Target;

/// The label of the snapshots of ilot's own config and keys (their `instance` is empty).
pub const HOST_LABEL: &str = "ilot-host";

/// Progress reports: a message, and bytes done of a total when known.
pub type ProgressFn = Arc<dyn Fn(String, Option<(u64, u64)>) + Send + Sync>;

/// A repository: where it is, how to reach it, and where its local cache lives.
pub struct Repo {
    /// As restic writes it (never a secret in it).
    pub location: String,
    target: Target,
    access: Access,
    pub cache: PathBuf,
    progress: ProgressFn,
    /// The connection, made by the job's first call and kept for its others (an SSH login
    /// per call would be most of a small incremental run).
    connected: std::sync::Mutex<Option<RepositoryBackends>>,
}

/// What reaching a remote repository takes.
pub struct Access {
    pub sftp: SftpAccess,
    pub s3_region: String,
    /// None: not configured (an S3 repository then says where to put them).
    pub s3_credentials: Option<S3Credentials>,
}

/// A snapshot as `ilot backup list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub id: String,
    pub time: String,
    pub instance: String,
    pub app: String,
    pub paths: Vec<String>,
    /// Bytes the snapshot's files hold, and bytes this run added to the repository.
    pub bytes: u64,
    pub added: u64,
}

/// How many snapshots of each instance the retention keeps.
#[derive(Debug, Clone, Copy, Default)]
pub struct Keep {
    pub last: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
}

#[allow(clippy::boxed_local)] // rustic_core returns its errors boxed
fn failed(what: &str, e: Box<RusticError>) -> Error {
    if e.is_incorrect_password() {
        return Error::bad_input("the backup repository's password is wrong").hint(
            "check [backup] password_file: it must hold the password the repository was made with",
        );
    }
    let text = e.display_log();
    let first = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("Error: ");
    Error::failed(format!("{what}: {first}"))
}

impl Repo {
    pub fn new(target: Target, access: Access, cache: PathBuf, progress: ProgressFn) -> Repo {
        Repo {
            location: target.to_string(),
            target,
            access,
            cache,
            progress,
            connected: std::sync::Mutex::new(None),
        }
    }

    /// The backend for the target; remote ones connect here (each job opens its own).
    fn backends(&self) -> Result<RepositoryBackends> {
        let mut connected = self.connected.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = &*connected {
            return Ok(b.clone());
        }
        let made = self.connect()?;
        *connected = Some(made.clone());
        Ok(made)
    }

    fn connect(&self) -> Result<RepositoryBackends> {
        let unreachable = |e: String| {
            Error::failed(format!(
                "cannot reach the backup repository {}: {e}",
                self.location
            ))
        };
        match &self.target {
            Target::Local(dir) => BackendOptions::default()
                .repository(format!("local:{}", dir.display()))
                .to_backends()
                .map_err(|e| failed(&format!("backup repository {}", self.location), e)),
            Target::S3 {
                endpoint,
                bucket,
                prefix,
            } => {
                let creds = self.access.s3_credentials.as_ref().ok_or_else(|| {
                    Error::bad_input(format!(
                        "the S3 repository {} needs an access key",
                        self.location
                    ))
                    .hint("write AWS_ACCESS_KEY_ID=... and AWS_SECRET_ACCESS_KEY=... lines to [backup] s3_credentials_file (chmod 600; docs/backup.md)")
                })?;
                let store = S3Store::new(endpoint, bucket, prefix, &self.access.s3_region, creds)
                    .map_err(unreachable)?;
                let backend = RemoteBackend::new(store, self.location.clone());
                Ok(RepositoryBackends::new(Arc::new(backend), None))
            }
            Target::Sftp { .. } => {
                let store = SftpStore::connect(&self.target, &self.access.sftp).map_err(|e| {
                    unreachable(e).hint(
                        "ilot logs in with ssh as root, in batch mode: the key ([backup] sftp_key or root's own) must be authorized on the server, and its host key known ([backup] sftp_host_key, or root's known_hosts)",
                    )
                })?;
                let backend = RemoteBackend::new(store, self.location.clone());
                Ok(RepositoryBackends::new(Arc::new(backend), None))
            }
        }
    }

    fn unopened(&self) -> Result<Repository<()>> {
        let backends = self.backends()?;
        let opts = RepositoryOptions::default().cache_dir(self.cache.clone());
        Repository::new_with_progress(&opts, &backends, Bars(self.progress.clone()))
            .map_err(|e| failed(&format!("backup repository {}", self.location), e))
    }

    /// Makes a new, empty repository.
    pub fn init(&self, password: &str) -> Result<()> {
        self.unopened()?
            .init(
                &Credentials::password(password),
                &KeyOptions::default(),
                &ConfigOptions::default(),
            )
            .map_err(|e| failed("cannot make the backup repository", e))?;
        Ok(())
    }

    /// Whether a repository is already there (its config file exists).
    pub fn exists(&self) -> Result<bool> {
        Ok(self
            .unopened()?
            .config_id()
            .map_err(|e| failed("cannot read the backup repository", e))?
            .is_some())
    }

    pub fn open(&self, password: &str) -> Result<Repository<OpenStatus>> {
        self.unopened()?
            .open(&Credentials::password(password))
            .map_err(|e| failed("cannot open the backup repository", e))
    }

    /// Backs up `paths` (which must exist) as one snapshot of `instance`.
    pub fn backup(
        &self,
        password: &str,
        paths: &[PathBuf],
        instance: &str,
        app: &str,
    ) -> Result<Snapshot> {
        let repo = self
            .open(password)?
            .to_indexed_ids()
            .map_err(|e| failed("cannot read the repository's index", e))?;
        let source: PathList = paths
            .iter()
            .cloned()
            .collect::<PathList>()
            .sanitize()
            .map_err(|e| Error::failed(format!("backup sources of {instance}: {e}")))?;
        // An empty instance: ilot's own config and keys (label "ilot-host").
        let (tags, label) = match instance {
            "" => ("ilot,host".to_string(), HOST_LABEL.to_string()),
            i => (format!("ilot,instance={i},app={app}"), i.to_string()),
        };
        let snap = SnapshotOptions::default()
            .add_tags(&tags)
            .and_then(|o| o.host("ilot".to_string()).label(label).to_snapshot())
            .map_err(|e| failed("snapshot options", e))?;
        let snap = repo
            .backup(&BackupOptions::default(), &source, snap)
            .map_err(|e| failed(&format!("backup of {instance}"), e))?;
        Ok(describe(&snap))
    }

    /// Every snapshot ilot made, oldest first.
    pub fn snapshots(&self, password: &str) -> Result<Vec<Snapshot>> {
        let repo = self.open(password)?;
        let mut all = repo
            .get_all_snapshots()
            .map_err(|e| failed("cannot list the snapshots", e))?;
        all.sort_unstable();
        Ok(all
            .iter()
            .filter(|s| s.tags.contains("ilot"))
            .map(describe)
            .collect())
    }

    /// The repository with its full index (what reading files needs), and the node at `path`
    /// in `snapshot` (an id or its prefix).
    fn indexed_node(
        &self,
        password: &str,
        snapshot: &str,
        path: &Path,
    ) -> Result<(Repository<IndexedFullStatus>, Node)> {
        let repo = self
            .open(password)?
            .to_indexed()
            .map_err(|e| failed("cannot read the repository's index", e))?;
        let spec = format!("{snapshot}:{}", path.display());
        let node = repo
            .node_from_snapshot_path(&spec, |s| s.tags.contains("ilot"))
            .map_err(|e| {
                Error::not_found(format!(
                    "no snapshot {snapshot} made by ilot with {}",
                    path.display()
                ))
                .hint(format!(
                    "see `ilot backup list` ({})",
                    e.display_log().lines().next().unwrap_or_default()
                ))
            })?;
        Ok((repo, node))
    }

    /// Restores the tree at `path` in `snapshot` (an id or its prefix) into `dest`.
    pub fn restore_tree(
        &self,
        password: &str,
        snapshot: &str,
        path: &Path,
        dest: &Path,
    ) -> Result<()> {
        let (repo, node) = self.indexed_node(password, snapshot, path)?;
        let ls = repo
            .ls(&node, &LsOptions::default())
            .map_err(|e| failed("cannot list the snapshot", e))?;
        let dest_str = dest
            .to_str()
            .ok_or_else(|| Error::failed(format!("{} is not UTF-8", dest.display())))?;
        let dest = LocalDestination::new(dest_str, true, !node.is_dir())
            .map_err(|e| failed("restore destination", e))?;
        // Owners by number: the users of a container are not the host's.
        let opts = RestoreOptions::default().numeric_id(true);
        let plan = repo
            .prepare_restore(&opts, ls.clone(), &dest, false)
            .map_err(|e| failed("cannot plan the restore", e))?;
        repo.restore(plan, &opts, ls, &dest)
            .map_err(|e| failed("restore", e))
    }

    /// One file of a snapshot, whole (the instance's saved state).
    pub fn read_file(&self, password: &str, snapshot: &str, path: &Path) -> Result<Vec<u8>> {
        let (repo, node) = self.indexed_node(password, snapshot, path)?;
        let mut out = Vec::new();
        repo.dump(&node, &mut out)
            .map_err(|e| failed("cannot read from the snapshot", e))?;
        Ok(out)
    }

    /// sha256 of every file under `path` in `snapshot`, read back from the repository (each
    /// blob is checked against its id on the way), by path relative to `path`.
    pub fn file_hashes(
        &self,
        password: &str,
        snapshot: &str,
        path: &Path,
    ) -> Result<std::collections::BTreeMap<PathBuf, String>> {
        use sha2::Digest;
        let (repo, node) = self.indexed_node(password, snapshot, path)?;
        let mut out = std::collections::BTreeMap::new();
        for item in repo
            .ls(&node, &LsOptions::default())
            .map_err(|e| failed("cannot list the snapshot", e))?
        {
            let (rel, n) = item.map_err(|e| failed("cannot list the snapshot", e))?;
            if !n.is_file() {
                continue;
            }
            let mut h = HashWriter(sha2::Sha256::new());
            repo.dump(&n, &mut h)
                .map_err(|e| failed(&format!("cannot read {}", rel.display()), e))?;
            out.insert(rel, crate::state::hex(&h.0.finalize()));
        }
        Ok(out)
    }

    /// Applies the retention to each instance's snapshots, then prunes what none uses.
    /// Returns how many snapshots were forgotten.
    pub fn forget(&self, password: &str, keep: Keep) -> Result<usize> {
        if keep.last + keep.daily + keep.weekly + keep.monthly == 0 {
            return Ok(0); // no retention: keep everything
        }
        let repo = self.open(password)?;
        // Only the counts that are set: 0 means "no such rule".
        let mut opts = KeepOptions::default();
        if keep.last > 0 {
            opts = opts.keep_last(keep.last as i32);
        }
        if keep.daily > 0 {
            opts = opts.keep_daily(keep.daily as i32);
        }
        if keep.weekly > 0 {
            opts = opts.keep_weekly(keep.weekly as i32);
        }
        if keep.monthly > 0 {
            opts = opts.keep_monthly(keep.monthly as i32);
        }
        let ours: Vec<SnapshotFile> = repo
            .get_all_snapshots()
            .map_err(|e| failed("cannot list the snapshots", e))?
            .into_iter()
            .filter(|s| s.tags.contains("ilot"))
            .collect();
        let grouped = Grouped::from_items(
            ours,
            SnapshotGroupCriterion::new().hostname(true).label(true),
        );
        let groups = ForgetGroups::from_grouped_snapshots_with_retention(
            grouped,
            &opts,
            &rustic_core::jiff::Zoned::now(),
        )
        .map_err(|e| failed("retention", e))?;
        let ids = groups.into_forget_ids();
        if ids.is_empty() {
            return Ok(0);
        }
        repo.delete_snapshots(&ids)
            .map_err(|e| failed("cannot forget snapshots", e))?;
        // Unused data is only marked, and deleted by a later prune (23 h on): a backup running
        // meanwhile may still refer to it.
        let popts = PruneOptions::default();
        let plan = repo.prune_plan(&popts).map_err(|e| failed("prune", e))?;
        repo.prune(&popts, plan).map_err(|e| failed("prune", e))?;
        Ok(ids.len())
    }

    /// Checks the repository's structure, and with `read_data` every pack's contents.
    pub fn check(&self, password: &str, read_data: bool) -> Result<Vec<String>> {
        let repo = self.open(password)?;
        let res = repo
            .check(CheckOptions::default().read_data(read_data))
            .map_err(|e| failed("check", e))?;
        Ok(res
            .0
            .iter()
            .map(|(level, e)| format!("{level:?}: {e}"))
            .collect())
    }
}

/// A `Write` that only hashes.
struct HashWriter(sha2::Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        sha2::Digest::update(&mut self.0, buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// sha256 of every file under `root` on disk, by path relative to it.
pub fn tree_hashes(root: &Path) -> Result<std::collections::BTreeMap<PathBuf, String>> {
    use sha2::Digest;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| Error::failed(format!("cannot read {}: {e}", dir.display())))?;
        for e in entries {
            let e = e.map_err(|e| Error::failed(format!("cannot read {}: {e}", dir.display())))?;
            let p = e.path();
            let kind = e
                .file_type()
                .map_err(|e| Error::failed(format!("cannot read {}: {e}", p.display())))?;
            if kind.is_dir() {
                stack.push(p);
            } else if kind.is_file() {
                let mut f = std::fs::File::open(&p)
                    .map_err(|e| Error::failed(format!("cannot read {}: {e}", p.display())))?;
                let mut h = HashWriter(sha2::Sha256::new());
                std::io::copy(&mut f, &mut h)
                    .map_err(|e| Error::failed(format!("cannot read {}: {e}", p.display())))?;
                let rel = p.strip_prefix(root).unwrap_or(&p).to_path_buf();
                out.insert(rel, crate::state::hex(&h.0.finalize()));
            }
        }
    }
    Ok(out)
}

fn describe(s: &SnapshotFile) -> Snapshot {
    let tag = |prefix: &str| {
        s.tags
            .iter()
            .find_map(|t| t.strip_prefix(prefix).map(str::to_string))
            .unwrap_or_default()
    };
    let (bytes, added) = s
        .summary
        .as_ref()
        .map_or((0, 0), |x| (x.total_bytes_processed, x.data_added));
    Snapshot {
        id: s.id.to_string(),
        time: s.time.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        instance: tag("instance="),
        app: tag("app="),
        paths: s.paths.iter().map(|p| p.to_string()).collect(),
        bytes,
        added,
    }
}

/// rustic_core's progress, forwarded to the daemon's (messages and byte counts).
#[derive(Clone)]
struct Bars(ProgressFn);

impl std::fmt::Debug for Bars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bars")
    }
}

impl ProgressBars for Bars {
    fn progress(&self, kind: ProgressType, prefix: &str) -> Progress {
        match kind {
            ProgressType::Bytes => Progress::new(Bar {
                report: self.0.clone(),
                prefix: prefix.trim_end_matches("...").to_string(),
                len: AtomicU64::new(0),
                pos: AtomicU64::new(0),
                shown: AtomicU64::new(0),
            }),
            _ => Progress::hidden(),
        }
    }
}

struct Bar {
    report: ProgressFn,
    prefix: String,
    len: AtomicU64,
    pos: AtomicU64,
    /// The position last reported: reports go out every 1 % (or 8 MiB without a total).
    shown: AtomicU64,
}

impl std::fmt::Debug for Bar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.prefix)
    }
}

impl RusticProgress for Bar {
    fn is_hidden(&self) -> bool {
        false
    }
    fn set_length(&self, len: u64) {
        self.len.store(len, Ordering::Relaxed);
    }
    fn set_title(&self, _title: &str) {}
    fn inc(&self, inc: u64) {
        let pos = self.pos.fetch_add(inc, Ordering::Relaxed) + inc;
        let len = self.len.load(Ordering::Relaxed);
        let step = if len > 0 { (len / 100).max(1) } else { 8 << 20 };
        if pos - self.shown.load(Ordering::Relaxed) >= step {
            self.shown.store(pos, Ordering::Relaxed);
            (self.report)(self.prefix.clone(), Some((pos, len.max(pos))));
        }
    }
    fn finish(&self) {}
}
