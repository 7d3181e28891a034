//! Repositories away from this machine: S3 (through OpenDAL) and SFTP (through the system's
//! `ssh`, so its keys, agent and host-key checks are the ones the admin already trusts). Both
//! are a [`Store`] of files under the repository's root; [`RemoteBackend`] lays restic's
//! files out on it (`config`, `keys/ID`, `data/ID[..2]/ID`...) for rustic_core.
//!
//! rustic_core calls backends from plain threads; the network calls run on a small runtime of
//! their own and are waited for there.

use super::target::Target;
use bytes::Bytes;
use futures_util::StreamExt;
use rustic_core::{
    BytesList, ErrorKind, FileType, Id, ReadBackend, RusticError, RusticResult, WriteBackend,
    ALL_FILE_TYPES,
};
use std::future::IntoFuture;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// The runtime the network calls run on (rustic_core's threads block on it).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ilot-backup-io")
            .enable_all()
            .build()
            .expect("the backup I/O runtime starts")
    })
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

/// A failed storage call: whether the file was missing, and what the server said.
#[derive(Debug)]
pub struct StoreError {
    pub not_found: bool,
    pub message: String,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
impl std::error::Error for StoreError {}

type StoreResult<T> = Result<T, StoreError>;

/// Files under a root, as the repository needs them. Paths are relative, '/'-separated.
pub trait Store: Send + Sync + 'static {
    /// The file's size, or None if there is no such file.
    fn size(&self, path: &str) -> StoreResult<Option<u64>>;
    /// The files directly under `dir` (and one level deeper with `nested`), name and size.
    fn list(&self, dir: &str, nested: bool) -> StoreResult<Vec<(String, u64)>>;
    fn read(&self, path: &str) -> StoreResult<Bytes>;
    fn read_range(&self, path: &str, offset: u64, length: u64) -> StoreResult<Bytes>;
    /// Writes the whole file at once: readers see the old file or the new one, never a part.
    fn write(&self, path: &str, content: Vec<Bytes>) -> StoreResult<()>;
    fn delete(&self, path: &str) -> StoreResult<()>;
    /// Makes a directory (with its parents); nothing on stores that have no directories.
    fn make_dir(&self, path: &str) -> StoreResult<()>;
}

/// A restic repository on a [`Store`].
pub struct RemoteBackend<S> {
    store: S,
    location: String,
}

impl<S: Store> RemoteBackend<S> {
    pub fn new(store: S, location: String) -> Self {
        RemoteBackend { store, location }
    }

    fn path(tpe: FileType, id: &Id) -> String {
        let hex = id.to_hex();
        match tpe {
            FileType::Config => "config".into(),
            FileType::Pack => format!("data/{}/{}", &hex[..2], &*hex),
            _ => format!("{}/{}", tpe.dirname(), &*hex),
        }
    }

    fn failed(&self, what: &str, path: &str, e: StoreError) -> Box<RusticError> {
        RusticError::with_source(
            ErrorKind::Backend,
            "{what} `{path}` in the repository `{location}` failed",
            e,
        )
        .attach_context("what", what.to_string())
        .attach_context("path", path.to_string())
        .attach_context("location", self.location.clone())
    }
}

impl<S: Store> ReadBackend for RemoteBackend<S> {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn list_with_size(&self, tpe: FileType) -> RusticResult<Vec<(Id, u32)>> {
        if tpe == FileType::Config {
            return match self.store.size("config") {
                Ok(Some(n)) => Ok(vec![(Id::default(), n.try_into().unwrap_or(u32::MAX))]),
                Ok(None) => Ok(Vec::new()),
                Err(e) => Err(self.failed("Reading", "config", e)),
            };
        }
        let dir = tpe.dirname();
        let files = match self.store.list(dir, tpe == FileType::Pack) {
            Ok(f) => f,
            Err(e) if e.not_found => Vec::new(),
            Err(e) => return Err(self.failed("Listing", dir, e)),
        };
        Ok(files
            .into_iter()
            .filter_map(|(name, size)| Some((Id::parse_some(&name, tpe)?, size.try_into().ok()?)))
            .collect())
    }

    fn read_full(&self, tpe: FileType, id: &Id) -> RusticResult<Bytes> {
        let path = Self::path(tpe, id);
        self.store
            .read(&path)
            .map_err(|e| self.failed("Reading", &path, e))
    }

    fn read_partial(
        &self,
        tpe: FileType,
        id: &Id,
        _cacheable: bool,
        offset: u32,
        length: u32,
    ) -> RusticResult<Bytes> {
        let path = Self::path(tpe, id);
        self.store
            .read_range(&path, offset.into(), length.into())
            .map_err(|e| self.failed("Reading", &path, e))
    }

    fn warmup_path(&self, tpe: FileType, id: &Id) -> String {
        Self::path(tpe, id)
    }
}

impl<S: Store> WriteBackend for RemoteBackend<S> {
    fn create(&self) -> RusticResult<()> {
        let mut dirs: Vec<String> = ALL_FILE_TYPES
            .iter()
            .filter(|t| **t != FileType::Config)
            .map(|t| t.dirname().to_string())
            .collect();
        dirs.extend((0..=255u8).map(|i| format!("data/{i:02x}")));
        for dir in dirs {
            self.store
                .make_dir(&dir)
                .map_err(|e| self.failed("Creating the directory", &dir, e))?;
        }
        Ok(())
    }

    fn write_bytes(
        &self,
        tpe: FileType,
        id: &Id,
        _cacheable: bool,
        content: BytesList,
    ) -> RusticResult<()> {
        let path = Self::path(tpe, id);
        self.store
            .write(&path, content.into_vec())
            .map_err(|e| self.failed("Writing", &path, e))
    }

    fn remove(&self, tpe: FileType, id: &Id, _cacheable: bool) -> RusticResult<()> {
        let path = Self::path(tpe, id);
        match self.store.delete(&path) {
            Err(e) if !e.not_found => Err(self.failed("Deleting", &path, e)),
            _ => Ok(()),
        }
    }
}

// ------------------------------------------------------------------------------------ S3

/// The access key of an S3 repository.
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl S3Credentials {
    /// Reads `AWS_ACCESS_KEY_ID=...` and `AWS_SECRET_ACCESS_KEY=...` lines (the environment
    /// file restic users already have; `export`, quotes and comments allowed).
    pub fn parse(text: &str) -> Result<S3Credentials, String> {
        let (mut id, mut secret) = (None, None);
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((key, value)) = line.split_once('=') else {
                return Err("a line is not KEY=VALUE".into());
            };
            let value = value
                .trim()
                .trim_matches(|c| c == '"' || c == '\'')
                .to_string();
            match key.trim() {
                "AWS_ACCESS_KEY_ID" => id = Some(value),
                "AWS_SECRET_ACCESS_KEY" => secret = Some(value),
                other => return Err(format!("unknown key {other:?}")),
            }
        }
        match (id, secret) {
            (Some(access_key_id), Some(secret_access_key))
                if !access_key_id.is_empty() && !secret_access_key.is_empty() =>
            {
                Ok(S3Credentials {
                    access_key_id,
                    secret_access_key,
                })
            }
            _ => Err("it needs both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into()),
        }
    }
}

pub struct S3Store {
    op: opendal::Operator,
}

fn s3_error(e: opendal::Error) -> StoreError {
    use opendal::ErrorKind as K;
    let message = match e.kind() {
        // A HEAD's 403 has no body to quote: say what it means.
        K::PermissionDenied => "the S3 server refused the access key (HTTP 403: a wrong key or secret in s3_credentials_file, a wrong s3_region, or no right to the bucket)".to_string(),
        K::NotFound => format!("not found: {e}"),
        _ => e.to_string(),
    };
    StoreError {
        not_found: e.kind() == K::NotFound,
        message,
    }
}

impl S3Store {
    pub fn new(
        endpoint: &str,
        bucket: &str,
        prefix: &str,
        region: &str,
        creds: &S3Credentials,
    ) -> Result<S3Store, String> {
        // OpenDAL's HTTP client (reqwest), installed once, on ring: the TLS provider every
        // other client here uses (OpenDAL's own default would build aws-lc).
        static HTTP: std::sync::Once = std::sync::Once::new();
        HTTP.call_once(|| {
            let _ = rustls::crypto::ring::default_provider().install_default();
            opendal::HttpTransporter::install_default(
                opendal_http_transport_reqwest::ReqwestTransport::default(),
            );
        });
        // Only what is configured: no ~/.aws files, no instance-metadata address.
        let builder = opendal::services::S3::default()
            .endpoint(endpoint)
            .bucket(bucket)
            .root(&format!("/{prefix}"))
            .region(region)
            .access_key_id(&creds.access_key_id)
            .secret_access_key(&creds.secret_access_key)
            .disable_config_load()
            .disable_ec2_metadata();
        let op = opendal::Operator::new(builder)
            .map_err(|e| e.to_string())?
            .layer(opendal::layers::TimeoutLayer::new().with_timeout(Duration::from_secs(120)))
            .layer(opendal::layers::RetryLayer::new().with_max_times(4));
        Ok(S3Store { op })
    }
}

impl Store for S3Store {
    fn size(&self, path: &str) -> StoreResult<Option<u64>> {
        match block_on(self.op.stat(path)) {
            Ok(m) => Ok(Some(m.content_length())),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(s3_error(e)),
        }
    }

    fn list(&self, dir: &str, nested: bool) -> StoreResult<Vec<(String, u64)>> {
        let entries = block_on(
            self.op
                .list_with(&format!("{dir}/"))
                .recursive(nested)
                .into_future(),
        )
        .map_err(s3_error)?;
        Ok(entries
            .into_iter()
            .filter(|e| e.metadata().is_file())
            .map(|e| (e.name().to_string(), e.metadata().content_length()))
            .collect())
    }

    fn read(&self, path: &str) -> StoreResult<Bytes> {
        Ok(block_on(self.op.read(path)).map_err(s3_error)?.to_bytes())
    }

    fn read_range(&self, path: &str, offset: u64, length: u64) -> StoreResult<Bytes> {
        Ok(block_on(
            self.op
                .read_with(path)
                .range(offset..offset + length)
                .into_future(),
        )
        .map_err(s3_error)?
        .to_bytes())
    }

    fn write(&self, path: &str, content: Vec<Bytes>) -> StoreResult<()> {
        block_on(self.op.write(path, content)).map_err(s3_error)?;
        Ok(())
    }

    fn delete(&self, path: &str) -> StoreResult<()> {
        block_on(self.op.delete(path)).map_err(s3_error)
    }

    fn make_dir(&self, _path: &str) -> StoreResult<()> {
        Ok(()) // S3 has prefixes, not directories
    }
}

// ---------------------------------------------------------------------------------- SFTP

/// How ssh reaches an SFTP repository's server.
pub struct SftpAccess {
    /// A private key file (none: ssh's own defaults and agent).
    pub key: Option<PathBuf>,
    /// A known_hosts file with the server's key, in place of root's own (none: root's).
    pub known_hosts: Option<PathBuf>,
    /// Where ssh keeps its control socket (a private directory).
    pub control_dir: PathBuf,
}

pub struct SftpStore {
    sftp: openssh_sftp_client::Sftp,
    root: String,
}

fn sftp_error(e: openssh_sftp_client::Error) -> StoreError {
    use openssh_sftp_client::error::SftpErrorKind;
    let not_found = matches!(
        e,
        openssh_sftp_client::Error::SftpError(SftpErrorKind::NoSuchFile, _)
    );
    StoreError {
        not_found,
        message: e.to_string(),
    }
}

impl SftpStore {
    /// Connects: ssh in batch mode (a key or agent, never a password prompt), the host key
    /// checked strictly (an unknown server is refused, never trusted on first sight).
    pub fn connect(target: &Target, access: &SftpAccess) -> Result<SftpStore, String> {
        let Target::Sftp {
            user,
            host,
            port,
            path,
        } = target
        else {
            return Err("not an SFTP location".into());
        };
        let mut b = openssh::SessionBuilder::default();
        if let Some(u) = user {
            b.user(u.clone());
        }
        if let Some(p) = port {
            b.port(*p);
        }
        if let Some(k) = &access.key {
            b.keyfile(k);
        }
        if let Some(k) = &access.known_hosts {
            b.user_known_hosts_file(k);
        }
        b.known_hosts_check(openssh::KnownHosts::Strict)
            .control_directory(&access.control_dir)
            .connect_timeout(Duration::from_secs(20))
            .server_alive_interval(Duration::from_secs(30));
        let root = path.clone();
        block_on(async move {
            let session = b.connect(host).await.map_err(ssh_message)?;
            let sftp = openssh_sftp_client::Sftp::from_session(session, Default::default())
                .await
                .map_err(|e| format!("the server's sftp subsystem did not start: {e}"))?;
            Ok(SftpStore { sftp, root })
        })
    }

    fn full(&self, path: &str) -> String {
        format!("{}/{path}", self.root)
    }

    /// A directory's files (name, size) and sub-directories (full paths).
    async fn list_one(&self, dir: &str) -> StoreResult<(Vec<(String, u64)>, Vec<String>)> {
        let (mut files, mut dirs) = (Vec::new(), Vec::new());
        let entries = self
            .sftp
            .fs()
            .open_dir(dir)
            .await
            .map_err(sftp_error)?
            .read_dir();
        let mut entries = std::pin::pin!(entries);
        while let Some(entry) = entries.next().await {
            let entry = entry.map_err(sftp_error)?;
            let name = entry.filename().to_string_lossy().to_string();
            match entry.file_type() {
                _ if name == "." || name == ".." => {}
                Some(t) if t.is_dir() => dirs.push(format!("{dir}/{name}")),
                Some(t) if t.is_file() => files.push((name, entry.metadata().len().unwrap_or(0))),
                _ => {}
            }
        }
        Ok((files, dirs))
    }
}

/// ssh's own words (e.g. "Host key verification failed.", "Permission denied (publickey).").
fn ssh_message(e: openssh::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

impl Store for SftpStore {
    fn size(&self, path: &str) -> StoreResult<Option<u64>> {
        match block_on(self.sftp.fs().metadata(self.full(path))) {
            Ok(m) => Ok(Some(m.len().unwrap_or(0))),
            Err(e) => {
                let e = sftp_error(e);
                if e.not_found {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    fn list(&self, dir: &str, nested: bool) -> StoreResult<Vec<(String, u64)>> {
        block_on(async {
            let (mut files, subdirs) = self.list_one(&self.full(dir)).await?;
            if nested {
                // data/00 .. data/ff: many round trips, made at once.
                let mut listings = futures_util::stream::iter(subdirs)
                    .map(|d| async move { self.list_one(&d).await })
                    .buffer_unordered(32);
                while let Some(listing) = listings.next().await {
                    files.extend(listing?.0);
                }
            }
            Ok(files)
        })
    }

    fn read(&self, path: &str) -> StoreResult<Bytes> {
        Ok(block_on(self.sftp.fs().read(self.full(path)))
            .map_err(sftp_error)?
            .freeze())
    }

    fn read_range(&self, path: &str, offset: u64, length: u64) -> StoreResult<Bytes> {
        use tokio::io::AsyncSeekExt;
        block_on(async {
            let mut file = self.sftp.open(self.full(path)).await.map_err(sftp_error)?;
            file.seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(|e| StoreError {
                    not_found: false,
                    message: e.to_string(),
                })?;
            let mut out = bytes::BytesMut::with_capacity(length as usize);
            while (out.len() as u64) < length {
                let want = u32::try_from(length - out.len() as u64).unwrap_or(u32::MAX);
                match file
                    .read(want, bytes::BytesMut::with_capacity(want as usize))
                    .await
                    .map_err(sftp_error)?
                {
                    Some(chunk) if !chunk.is_empty() => out.extend_from_slice(&chunk),
                    _ => {
                        return Err(StoreError {
                            not_found: false,
                            message: format!("{path} ends before byte {}", offset + length),
                        })
                    }
                }
            }
            Ok(out.freeze())
        })
    }

    fn write(&self, path: &str, content: Vec<Bytes>) -> StoreResult<()> {
        // Written aside, then renamed: a cut connection leaves a stray temporary file, never
        // a short file under a name the repository trusts.
        let full = self.full(path);
        let tmp = format!("{full}.tmp-{:016x}", rand::random::<u64>());
        block_on(async {
            let mut fs = self.sftp.fs();
            let mut data = bytes::BytesMut::with_capacity(content.iter().map(Bytes::len).sum());
            for c in &content {
                data.extend_from_slice(c);
            }
            fs.write(&tmp, &data).await.map_err(sftp_error)?;
            if let Err(e) = fs.rename(&tmp, &full).await {
                let _ = fs.remove_file(&tmp).await;
                // The name is the content's hash: a file already there holds the same bytes.
                if fs.metadata(&full).await.is_err() {
                    return Err(sftp_error(e));
                }
            }
            Ok(())
        })
    }

    fn delete(&self, path: &str) -> StoreResult<()> {
        block_on(self.sftp.fs().remove_file(self.full(path))).map_err(sftp_error)
    }

    fn make_dir(&self, path: &str) -> StoreResult<()> {
        let full = self.full(path);
        block_on(async {
            let mut fs = self.sftp.fs();
            // mkdir -p: the directory at once when its parent is there (the common case, one
            // round trip), else its missing ancestors first.
            let mut missing = Vec::new();
            let mut at = full.as_str();
            loop {
                let Err(e) = fs.create_dir(at).await else {
                    break;
                };
                if fs.metadata(at).await.is_ok() {
                    break;
                }
                match at.rsplit_once('/') {
                    Some((parent, _)) if !parent.is_empty() && missing.len() < 64 => {
                        missing.push(at);
                        at = parent;
                    }
                    _ => return Err(sftp_error(e)),
                }
            }
            for dir in missing.into_iter().rev() {
                if let Err(e) = fs.create_dir(dir).await {
                    if fs.metadata(dir).await.is_err() {
                        return Err(sftp_error(e));
                    }
                }
            }
            Ok(())
        })
    }
}
