//! Real backup storage servers on loopback, for the SFTP and S3 repository tests.
//!
//! - [`SftpServer`]: OpenSSH's own `sshd` (Debian's openssh-server, /usr/sbin/sshd) on
//!   127.0.0.1:<free port>, in the foreground as the test's child, with its own ed25519 host key
//!   and one ed25519 client key (no passphrase) allowed to log in as root, key only, and
//!   `Subsystem sftp internal-sftp`.
//! - [`S3Server`]: `s3s-fs` (crates.io s3s-fs 0.14.1, `cargo install s3s-fs --version 0.14.1
//!   --features binary --locked`), an S3 server over a directory that checks SigV4 signatures,
//!   with a random access and secret key and one bucket made. Address it path-style
//!   (`{endpoint}/{bucket}/{key}`); any region is accepted; every request needs an
//!   `x-amz-content-sha256` header (the payload's sha256, or `UNSIGNED-PAYLOAD`), as AWS SDKs send.
//!
//! Each server runs in a `${TMPDIR:-/tmp}/ilot-test-*` directory of its own; dropping it kills the
//! server (and sshd's sessions) and removes the directory. tests/run.sh installs both servers, and
//! kills any sshd or s3s-fs whose arguments name a test directory, should a test die before the drop.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SSHD: &str = "/usr/sbin/sshd";
/// The s3s-fs version tests/run.sh installs (later ones need a newer rustc than 1.95).
const S3S_FS_VERSION: &str = "0.14.1";

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
const SIGKILL: i32 = 9;

/// A new, empty `${TMPDIR:-/tmp}/ilot-test-<random>` directory.
fn test_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ilot-test-{}", super::rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A TCP port free on 127.0.0.1 just now (the caller retries if a server loses the race for it).
fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Opens a log for appending (a restart keeps what the last run said); returns it and its length.
fn open_log(path: &Path) -> (std::fs::File, usize) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let len = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
    (file, len)
}

/// What the log gained past `from` (this run of the server).
fn log_since(path: &Path, from: usize) -> String {
    let log = read_log(path);
    log.get(from..).unwrap_or(&log).to_string()
}

/// The log says the server could not listen on its port (taken since `free_tcp_port`).
fn lost_port_race(log: &str) -> bool {
    log.contains("Address already in use") || log.contains("AddrInUse")
}

/// Pids of `pid`'s descendants (children first, then theirs), from /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
                parent_of.push((p, ppid));
            }
        }
    }
    let mut out = vec![];
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, pp) in &parent_of {
            if pp == parent && !out.contains(&p) {
                out.push(p);
                frontier.push(p);
            }
        }
    }
    out
}

/// Kills `child` and every process below it (sshd's per-connection processes, which leave its
/// process group), then reaps it.
fn kill_tree(child: &mut Child) {
    if child.try_wait().ok().flatten().is_none() {
        let below = descendants(child.id());
        let _ = child.kill();
        for pid in below {
            unsafe { libc_kill(pid as i32, SIGKILL) };
        }
    }
    let _ = child.wait();
}

// ------------------------------------------------------------------------------------ SFTP

/// A real OpenSSH sshd serving SFTP on 127.0.0.1:`port`, key-only login as `user` (root).
pub struct SftpServer {
    pub port: u16,
    /// An empty directory (absolute path) to hold repositories: address it by its absolute path,
    /// e.g. `sftp://root@127.0.0.1:PORT/<root>/repo` (a relative path is relative to root's home).
    pub root: PathBuf,
    /// The client's private key (ed25519, no passphrase, 0600); its .pub is beside it.
    pub client_key: PathBuf,
    /// The server's public host key, "ssh-ed25519 AAAA..." (its .pub file's line minus the comment).
    pub host_key: String,
    /// "root".
    pub user: String,
    /// A known_hosts file holding this server's key for `[127.0.0.1]:port`.
    pub known_hosts: PathBuf,
    /// The test directory (config, keys, log, `root`).
    pub dir: PathBuf,
    child: Option<Child>,
}

impl SftpServer {
    /// Starts sshd and returns once an `ssh ... true` with the client key has gone through
    /// (checking the host key). Panics with sshd's log if it does not come up in 20 s.
    pub fn start() -> SftpServer {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: run tests/run.sh (it installs openssh-server), or apt-get install openssh-server"
        );
        // Privilege separation needs it (the package's service would make it).
        std::fs::create_dir_all("/run/sshd").unwrap();
        let dir = test_dir();
        let root = dir.join("root");
        std::fs::create_dir_all(&root).unwrap();
        let host_key_path = dir.join("host_key");
        let client_key = dir.join("client_key");
        keygen(&host_key_path, "ilot-test-host");
        keygen(&client_key, "ilot-test-client");
        let host_key = pub_key_line(&host_key_path);
        std::fs::copy(
            client_key.with_extension("pub"),
            dir.join("authorized_keys"),
        )
        .unwrap();
        let mut server = SftpServer {
            port: 0,
            root,
            client_key,
            host_key,
            user: "root".into(),
            known_hosts: dir.join("known_hosts"),
            dir,
            child: None,
        };
        for _ in 0..5 {
            server.port = free_tcp_port();
            server.write_config();
            if server.spawn() {
                return server;
            }
        }
        panic!("sshd: no free port in 5 tries; log:\n{}", server.log());
    }

    fn write_config(&self) {
        let d = &self.dir;
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "# tests/common/storage.rs: an sshd of its own for one test\n\
                 ListenAddress 127.0.0.1:{port}\n\
                 HostKey {host_key}\n\
                 PidFile {pid}\n\
                 AuthorizedKeysFile {authorized}\n\
                 PermitRootLogin prohibit-password\n\
                 AuthenticationMethods publickey\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 UsePAM no\n\
                 StrictModes no\n\
                 PrintMotd no\n\
                 UseDNS no\n\
                 MaxStartups 100\n\
                 MaxSessions 100\n\
                 Subsystem sftp internal-sftp\n",
                port = self.port,
                host_key = d.join("host_key").display(),
                pid = d.join("sshd.pid").display(),
                authorized = d.join("authorized_keys").display(),
            ),
        )
        .unwrap();
        std::fs::write(
            &self.known_hosts,
            format!("[127.0.0.1]:{} {}\n", self.port, self.host_key),
        )
        .unwrap();
    }

    /// Spawns sshd on `self.port` and waits until it serves; false if it lost the port.
    fn spawn(&mut self) -> bool {
        let log_path = self.dir.join("sshd.log");
        let (log, log_start) = open_log(&log_path);
        let child = Command::new(SSHD)
            .arg("-D") // foreground
            .arg("-e") // log to stderr
            .arg("-f")
            .arg(self.dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn /usr/sbin/sshd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                let log = log_since(&log_path, log_start);
                if lost_port_race(&log) || log.contains("Cannot bind any address") {
                    return false;
                }
                panic!("sshd exited at start ({status}); log:\n{log}");
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not listen on 127.0.0.1:{} in 20 s; log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Listening: one real login proves the keys and the config.
        let out = self.ssh(&["true"]);
        assert!(
            out.status.success(),
            "ssh to the test sshd failed ({}): {}\nsshd log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        true
    }

    pub fn log(&self) -> String {
        read_log(&self.dir.join("sshd.log"))
    }

    /// OpenSSH client options for this server: no user config, the client key only, this
    /// server's known_hosts with strict checking, batch mode.
    pub fn client_options(&self) -> Vec<String> {
        let mut v: Vec<String> = vec!["-F".into(), "/dev/null".into(), "-i".into()];
        v.push(self.client_key.display().to_string());
        for o in [
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "GlobalKnownHostsFile=/dev/null".into(),
            "StrictHostKeyChecking=yes".into(),
            "IdentitiesOnly=yes".into(),
            "BatchMode=yes".into(),
            "ConnectTimeout=10".into(),
            "LogLevel=ERROR".into(),
        ] {
            v.push("-o".into());
            v.push(o);
        }
        v
    }

    /// `ssh ... -p PORT root@127.0.0.1 ARGS...`.
    pub fn ssh(&self, args: &[&str]) -> Output {
        Command::new("ssh")
            .args(self.client_options())
            .arg("-p")
            .arg(self.port.to_string())
            .arg(format!("{}@127.0.0.1", self.user))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("ssh (tests/run.sh installs openssh-client)")
    }

    /// Stops the server and every session it serves (an outage); the files stay.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_tree(&mut c);
        }
    }

    /// Starts it again after `stop`, on the same port with the same keys and files.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "sshd could not get port {} back; log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for SftpServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `ssh-keygen -t ed25519 -N "" -f PATH` (PATH and PATH.pub, the private one 0600).
fn keygen(path: &Path, comment: &str) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("ssh-keygen (tests/run.sh installs openssh-client)");
    assert!(
        out.status.success(),
        "ssh-keygen {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// "TYPE BASE64" from PATH.pub (without the comment).
fn pub_key_line(private: &Path) -> String {
    let text = std::fs::read_to_string(private.with_extension("pub")).unwrap();
    let mut fields = text.split_whitespace();
    let (Some(kind), Some(key)) = (fields.next(), fields.next()) else {
        panic!("{}.pub: not a public key: {text}", private.display());
    };
    format!("{kind} {key}")
}

// -------------------------------------------------------------------------------------- S3

/// A real S3 server (s3s-fs) on `endpoint`, with one bucket, checking SigV4 with one key pair.
pub struct S3Server {
    /// "http://127.0.0.1:PORT" (path-style: objects are at `{endpoint}/{bucket}/{key}`).
    pub endpoint: String,
    pub port: u16,
    /// A bucket that exists (empty).
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    /// The directory s3s-fs serves: bucket B is the directory `root/B`, object K of it the file
    /// `root/B/K` (s3s-fs keeps its metadata in hidden `.bucket-*` files directly under `root`).
    pub root: PathBuf,
    /// The test directory (`root` and the log).
    pub dir: PathBuf,
    child: Option<Child>,
}

/// The s3s-fs binary: $ILOT_S3S_FS (tests/run.sh sets it), else `s3s-fs` in PATH, else
/// ~/.cargo/bin/s3s-fs.
pub fn s3s_fs_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ILOT_S3S_FS").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(cargo_home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(cargo_home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "s3s-fs not found (ILOT_S3S_FS, PATH, ~/.cargo/bin): run tests/run.sh (it installs it), or \
                 cargo install s3s-fs --version {S3S_FS_VERSION} --features binary --locked"
            )
        })
}

impl S3Server {
    /// Starts s3s-fs and returns once it answers HTTP. Panics with its log if it does not in 20 s.
    pub fn start() -> S3Server {
        let bin = s3s_fs_bin();
        let dir = test_dir();
        let root = dir.join("data");
        let bucket = "ilot-backups".to_string();
        // A bucket is a directory under the root.
        std::fs::create_dir_all(root.join(&bucket)).unwrap();
        let hex = || super::rand_suffix();
        let mut server = S3Server {
            endpoint: String::new(),
            port: 0,
            bucket,
            access_key: format!("ILOT{}", hex().to_uppercase()),
            secret_key: format!("{}{}{}", hex(), hex(), hex()),
            root,
            dir,
            child: None,
        };
        for _ in 0..5 {
            server.port = free_tcp_port();
            server.endpoint = format!("http://127.0.0.1:{}", server.port);
            if server.spawn(&bin) {
                return server;
            }
        }
        panic!("s3s-fs: no free port in 5 tries; log:\n{}", server.log());
    }

    /// Spawns s3s-fs on `self.port` and waits until it answers; false if it lost the port.
    fn spawn(&mut self, bin: &Path) -> bool {
        let log_path = self.dir.join("s3s-fs.log");
        let (log, log_start) = open_log(&log_path);
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--access-key")
            .arg(&self.access_key)
            .arg("--secret-key")
            .arg(&self.secret_key)
            .arg(&self.root)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                let log = log_since(&log_path, log_start);
                if lost_port_race(&log) {
                    return false;
                }
                panic!("s3s-fs exited at start ({status}); log:\n{log}");
            }
            // Any HTTP answer will do (unsigned, it is a 403).
            if matches!(super::try_http_get(&format!("{}/", self.endpoint)), Ok((code, _)) if code != 0)
            {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not answer on {} in 20 s; log:\n{}",
                self.endpoint,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        read_log(&self.dir.join("s3s-fs.log"))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_tree(&mut c);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
