//! A real BIND (`named`) on a loopback port, for the DNS tests: a primary for one or more
//! zones, with a TSIG key allowed to update them, or a secondary of ilot's served zone,
//! transferring it with the same key. It runs in the foreground in the test's
//! own directory and is killed when dropped (tests/run.sh also kills any named whose config
//! sits in a test directory, should a test die before the drop).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Named {
    pub dir: PathBuf,
    pub port: u16,
    /// The TSIG key's name and base64 secret.
    pub key_name: String,
    pub secret: String,
    child: Child,
}

/// A port free for both UDP and TCP on 127.0.0.1 (named binds both).
pub fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Named {
    /// Starts named with `zones`: (zone name, zone file text). `dir` must exist.
    pub fn start(dir: &Path, zones: &[(&str, String)]) -> Named {
        Named::launch(dir, |dir, key_name| {
            let mut conf = String::new();
            for (zone, text) in zones {
                let file = dir.join(format!("{zone}.zone"));
                std::fs::write(&file, text).unwrap();
                conf.push_str(&format!(
                    "zone \"{zone}\" {{ type primary; file \"{}\"; update-policy {{ grant {key_name} zonesub ANY; }}; }};\n",
                    file.display()
                ));
            }
            conf
        })
    }

    /// Starts named as a secondary of `zone`, whose primary is 127.0.0.1:`primary_port`
    /// (ilot): it transfers the zone with the TSIG key and takes NOTIFY from it. The copy is
    /// kept in `secondary-ZONE.db` (raw format, BIND's default for secondaries).
    pub fn start_secondary(dir: &Path, zone: &str, primary_port: u16) -> Named {
        Named::launch(dir, |dir, key_name| {
            format!(
                "zone \"{zone}\" {{ type secondary; file \"{}\"; \
                 primaries {{ 127.0.0.1 port {primary_port} key {key_name}; }}; }};\n",
                dir.join(format!("secondary-{zone}.db")).display()
            )
        })
    }

    fn launch(dir: &Path, zones: impl FnOnce(&Path, &str) -> String) -> Named {
        let dir = dir.join("named");
        std::fs::create_dir_all(&dir).unwrap();
        let key_name = "ilot-test-key".to_string();
        let secret = "pxGxU/aWCMnBhBdYJJ6usM76r3RjVPB+PCOa+GbBSBM=".to_string();
        let port = free_port();
        let mut conf = format!(
            "options {{ directory \"{d}\"; listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }};\n\
             pid-file \"{d}/named.pid\"; recursion no; dnssec-validation no; notify no; }};\n\
             key \"{key_name}\" {{ algorithm hmac-sha256; secret \"{secret}\"; }};\n\
             controls {{ }};\n",
            d = dir.display()
        );
        conf.push_str(&zones(&dir, &key_name));
        let conf_path = dir.join("named.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = std::fs::File::create(dir.join("named.log")).unwrap();
        let child = Command::new("named")
            .args(["-g", "-c"])
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("named (tests/run.sh installs bind9)");
        let named = Named {
            dir,
            port,
            key_name,
            secret,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !named.running() {
            assert!(
                Instant::now() < deadline,
                "named did not start:\n{}",
                named.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        named
    }

    /// named's last start-up line is "... running" (an earlier one says "running on Linux").
    fn running(&self) -> bool {
        self.log().lines().any(|l| l.ends_with(" running"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("named.log")).unwrap_or_default()
    }

    /// A file holding the key as tsig-keygen writes it (0600, as ilot demands).
    pub fn key_file(&self, secret: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self
            .dir
            .join(format!("key-{}", &secret[..4].replace('/', "_")));
        std::fs::write(
            &path,
            format!(
                "key \"{}\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{secret}\";\n}};\n",
                self.key_name
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// `dig +short` against this server.
    pub fn dig(&self, name: &str, kind: &str) -> Vec<String> {
        dig(self.port, name, kind)
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `dig +short +norecurse @127.0.0.1 -p PORT NAME TYPE`, one answer per line (sorted).
pub fn dig(port: u16, name: &str, kind: &str) -> Vec<String> {
    let out = Command::new("dig")
        .args([
            "+short",
            "+norecurse",
            "+time=2",
            "+tries=2",
            "@127.0.0.1",
            "-p",
        ])
        .arg(port.to_string())
        .args([name, kind])
        .output()
        .expect("dig (tests/run.sh installs bind9-dnsutils)");
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .collect();
    v.sort();
    v
}

impl Named {
    /// Loads the zone files again: a restart on the same port (SIGHUP reloads only files
    /// whose time moved past the last load, to the second, which a fast test cannot count on).
    pub fn reload(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = self.dir.join("named.log");
        let _ = std::fs::rename(&log, self.dir.join("named.log.old"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log_file = std::fs::File::create(&log).unwrap();
            self.child = Command::new("named")
                .args(["-g", "-c"])
                .arg(self.dir.join("named.conf"))
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()
                .unwrap();
            while !self.running() && self.child.try_wait().unwrap().is_none() {
                assert!(
                    Instant::now() < deadline,
                    "named did not restart:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            if self.running() {
                return;
            }
            // The port was not free yet: try again.
            assert!(
                Instant::now() < deadline,
                "named did not restart:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
