//! Test harness: each test runs its own ilot daemon (own socket, state dir and owner label)
//! against the real Docker engine, and cleans up everything it made, even when it fails.
//! The images come from `images/build.sh hello tests/images/hello-2 tests/images/hello-broken`
//! (tests/run.sh builds them once per run).

#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod mail;
pub mod named;
pub mod netns;
pub mod pebble;
pub mod storage;

pub const BIN: &str = env!("CARGO_BIN_EXE_ilot");

pub struct Ilot {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub owner: String,
    pub config: PathBuf,
    /// The network namespace the daemon runs in (firewall tests), if any.
    pub netns: Option<String>,
    child: Option<Child>,
}

fn rand_suffix() -> String {
    let mut buf = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    buf.iter().map(|b| format!("{:02x}", b)).collect()
}

/// A short unique instance name (object names are global in the engine).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", &rand_suffix()[..6])
}

pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI")
}

pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn require_images() {
    for image in ["ilot/hello:1.0", "ilot/hello:2.0", "ilot/hello:broken"] {
        assert!(
            docker(&["image", "inspect", image]).status.success(),
            "image {image} missing: run tests/run.sh, or images/build.sh hello tests/images/hello-2 tests/images/hello-broken"
        );
    }
}

impl Ilot {
    /// A daemon with the test catalogue (hello with a short health timeout, so failing
    /// upgrades roll back in seconds).
    pub fn start() -> Ilot {
        Self::start_env(&[])
    }

    pub fn start_env(env: &[(&str, &str)]) -> Ilot {
        Self::start_full(env, "")
    }

    /// `extra_config` is appended to the config; it may replace the default `[acme]` (off).
    pub fn start_full(env: &[(&str, &str)], extra_config: &str) -> Ilot {
        Self::start_in(None, env, extra_config)
    }

    /// A daemon inside network namespace `netns` (its nftables are that namespace's; the
    /// engine's socket is a file, reachable from there).
    pub fn start_in(netns: Option<&str>, env: &[(&str, &str)], extra_config: &str) -> Ilot {
        require_images();
        let id = rand_suffix();
        let dir = PathBuf::from(format!("/tmp/ilot-test-{id}"));
        std::fs::create_dir_all(dir.join("catalog/hello")).unwrap();
        let manifest =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/apps/hello/app.toml"))
                .unwrap();
        let manifest = manifest.replace("health_timeout = \"30s\"", "health_timeout = \"6s\"");
        assert!(
            manifest.contains("\"6s\""),
            "test catalogue: could not shorten hello's health_timeout"
        );
        std::fs::write(dir.join("catalog/hello/app.toml"), manifest).unwrap();
        let owner = format!("test-{id}");
        let socket = dir.join("ilot.sock");
        let config = dir.join("ilot.toml");
        std::fs::write(
            &config,
            format!(
                "[daemon]\nsocket = \"{}\"\nstate_dir = \"{}\"\nowner = \"{owner}\"\ncatalog = [\"{}\"]\n\n\
                 [proxy]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\naccess_log = \"{}\"\n\n{}\n",
                socket.display(),
                dir.join("state").display(),
                dir.join("catalog").display(),
                dir.join("access.log").display(),
{
                    // Test daemons run on the host: no firewall there unless a test (in its
                    // own network namespace) asks for it.
                    let mut c = extra_config.to_string();
                    if !c.contains("[acme]") {
                        c = format!("[acme]\nenabled = false\n{c}");
                    }
                    if !c.contains("[firewall]") {
                        c = format!("[firewall]\nenabled = false\n{c}");
                    }
                    if !c.contains("[guard]") {
                        c = format!("[guard]\nenabled = false\n{c}");
                    }
                    c
                }
            ),
        )
        .unwrap();
        let mut ilot = Ilot {
            dir,
            socket,
            owner,
            config,
            netns: netns.map(str::to_string),
            child: None,
        };
        ilot.spawn(env);
        ilot.wait_ready();
        ilot
    }

    pub fn spawn(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .unwrap();
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, BIN]);
                c
            }
            None => Command::new(BIN),
        };
        cmd.args(["daemon", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log);
        cmd.env_remove("ILOT_CRASH_AT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn ilot daemon"));
    }

    /// Waits until the daemon answers and has recovered its journal (engine reachable and
    /// no operation lock held).
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("the daemon exited ({status}); log:\n{}", self.log());
            }
            let out = self.cli(&["status", "--json"]);
            if out.status.success() {
                let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                if v["ready"] == Value::Bool(true) && v["engine"]["reachable"] == Value::Bool(true)
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready in 60 s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ilot")
    }

    /// Runs a command that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "ilot {args:?} failed ({}):\nstdout: {}\nstderr: {}\ndaemon log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all)).expect("valid JSON")
    }

    /// Runs a command that must fail with `code`; returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "ilot {args:?}: expected exit {code}; stderr: {stderr}"
        );
        stderr
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the daemon to exit by itself (a crash point fired).
    pub fn wait_exit(&mut self) {
        let mut c = self.child.take().expect("daemon running");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                assert!(!status.success(), "daemon exited cleanly, expected a crash");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not crash; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn(&[]);
        self.wait_ready();
    }

    /// Names of this daemon's objects in the engine: (containers, networks, volumes).
    pub fn objects(&self) -> (Vec<String>, Vec<String>, Vec<String>) {
        let filter = format!("label=ilot.owner={}", self.owner);
        let list = |args: &[&str]| -> Vec<String> {
            let mut v: Vec<String> = docker_ok(args)
                .lines()
                .map(String::from)
                .filter(|l| !l.is_empty())
                .collect();
            v.sort();
            v
        };
        (
            list(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"]),
            list(&[
                "network",
                "ls",
                "--filter",
                &filter,
                "--format",
                "{{.Name}}",
            ]),
            list(&["volume", "ls", "--filter", &filter, "--format", "{{.Name}}"]),
        )
    }

    /// The main service's published port on loopback (bypassing the proxy).
    pub fn direct_url(&self, instance: &str) -> String {
        let v = self.json(&["app", "show", instance]);
        let host = v["services"][0]["ports"][0]["host"]
            .as_str()
            .unwrap_or_else(|| panic!("{instance} has no port: {v}"));
        format!("http://{host}/")
    }

    pub fn url(&self, instance: &str) -> String {
        let v = self.json(&["app", "show", instance]);
        v["url"]
            .as_str()
            .unwrap_or_else(|| panic!("{instance} has no url: {v}"))
            .to_string()
    }
}

impl Drop for Ilot {
    fn drop(&mut self) {
        self.kill9();
        let filter = format!("label=ilot.owner={}", self.owner);
        for (list, rm) in [
            (vec!["ps", "-aq", "--filter", &filter], vec!["rm", "-f"]),
            (
                vec!["network", "ls", "-q", "--filter", &filter],
                vec!["network", "rm"],
            ),
            (
                vec!["volume", "ls", "-q", "--filter", &filter],
                vec!["volume", "rm", "-f"],
            ),
        ] {
            let out = docker(&list);
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(String::from)
                .collect();
            if !ids.is_empty() {
                let mut args: Vec<&str> = rm.clone();
                args.extend(ids.iter().map(String::as_str));
                let _ = docker(&args);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The proxy's listening addresses.
pub struct Ports {
    pub http: String,
    pub https: String,
}

pub fn ports(ilot: &Ilot) -> Ports {
    let status = ilot.json(&["status"]);
    let p = &status["proxy"];
    assert!(p["error"].is_null(), "proxy not running: {status}");
    Ports {
        http: p["http"].as_str().unwrap().to_string(),
        https: p["https"].as_str().unwrap().to_string(),
    }
}

/// curl with the domain resolved to the proxy's address; returns (stdout, stderr).
pub fn curl(
    domain: &str,
    addr: &str,
    scheme: &str,
    path: &str,
    extra: &[&str],
) -> (String, String) {
    let port = addr.rsplit_once(':').unwrap().1;
    let out = Command::new("curl")
        .args([
            "-sS",
            "-k",
            "--max-time",
            "60",
            "--resolve",
            &format!("{domain}:{port}:127.0.0.1"),
        ])
        .args(extra)
        .arg(format!("{scheme}://{domain}:{port}{path}"))
        .output()
        .expect("curl (tests/run.sh installs it)");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `http_get`, tried again for up to 20 s while the connection fails: a container the
/// reconciler has just recreated runs before its server listens, and Docker's port proxy
/// accepts the connection and then drops it.
pub fn http_get_eventually(url: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match try_http_get(url) {
            Ok(r) if r.0 != 0 => return r,
            r if Instant::now() >= deadline => {
                panic!("GET {url}: {r:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// A plain HTTP/1.0 GET against "http://host:port/path"; returns (status, body).
pub fn http_get(url: &str) -> (u16, String) {
    try_http_get(url).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

pub fn try_http_get(url: &str) -> std::io::Result<(u16, String)> {
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut s = TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut reader = BufReader::new(s);
    let mut status = String::new();
    reader.read_line(&mut status)?;
    let code = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut rest = String::new();
    reader.read_to_string(&mut rest)?;
    let body = rest
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// sha256 of every file in a volume, read through a throwaway container (the image has
/// sha256sum). Sorted "hash  name" lines.
pub fn volume_checksums(volume: &str) -> String {
    docker_ok(&[
        "run",
        "--rm",
        "--user",
        "0",
        "-v",
        &format!("{volume}:/v:ro"),
        "--entrypoint",
        "/bin/sh",
        "ilot/hello:1.0",
        "-c",
        "cd /v && find . -type f | sort | xargs sha256sum",
    ])
}

pub fn path_mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}
