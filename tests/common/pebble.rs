//! Debian's Pebble (a real ACME server) with pebble-challtestsrv as the DNS it resolves names
//! with: for the certificate tests and for those that need one issued.

use super::named::free_port;
use super::unique;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Pebble and its DNS; killed and removed on drop.
pub struct Pebble {
    pub dir: PathBuf,
    pub port: u16,
    pub dns_port: u16,
    pub mgmt_port: u16,
    pub children: Vec<Child>,
}

impl Pebble {
    /// A CA and a leaf certificate for Pebble's own HTTPS (it ships none), and its DNS.
    pub fn prepare() -> Pebble {
        for bin in [
            "/usr/bin/pebble",
            "/usr/bin/pebble-challtestsrv",
            "/usr/bin/openssl",
        ] {
            assert!(
                Path::new(bin).exists(),
                "{bin} missing: run tests/run.sh (it installs pebble and openssl)"
            );
        }
        let dir = std::env::temp_dir().join(format!("ilot-test-pebble-{}", unique("")));
        std::fs::create_dir_all(&dir).unwrap();
        sh(&format!(
            "cd {d} && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 30 -subj /CN=ilot-test-ca && \
             openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout key.pem -out leaf.csr -subj /CN=localhost && \
             printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > ext.cnf && \
             openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 30 -extfile ext.cnf",
            d = dir.display()
        ));
        let (dns_port, mgmt_port) = (free_port(), free_port());
        let dns = Command::new("pebble-challtestsrv")
            .args([
                "-dns01",
                &format!("127.0.0.1:{dns_port}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ])
            .args([
                "-management",
                &format!("127.0.0.1:{mgmt_port}"),
                "-defaultIPv6",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Pebble {
            dir,
            port: free_port(),
            dns_port,
            mgmt_port,
            children: vec![dns],
        }
    }

    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// Starts Pebble, validating HTTP-01 on `http_port` (the proxy's).
    pub fn start(&mut self, http_port: u16) {
        let config = self.dir.join("pebble.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"pebble": {{"listenAddress": "127.0.0.1:{}", "managementListenAddress": "127.0.0.1:{}", "certificate": "{}", "privateKey": "{}", "httpPort": {http_port}, "tlsPort": {}, "ocspResponderURL": "", "externalAccountBindingRequired": false}}}}"#,
                self.port,
                free_port(),
                self.dir.join("cert.pem").display(),
                self.dir.join("key.pem").display(),
                free_port()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(self.dir.join("pebble.log")).unwrap();
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&config)
            .args(["-dnsserver", &format!("127.0.0.1:{}", self.dns_port)])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "pebble did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Makes the test DNS answer `host` with `ip`.
    pub fn set_a(&self, host: &str, ip: &str) {
        sh(&format!(
            "curl -sS -d '{{\"host\":\"{host}.\",\"addresses\":[\"{ip}\"]}}' http://127.0.0.1:{}/add-a",
            self.mgmt_port
        ));
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
