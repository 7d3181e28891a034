//! Test hosts in network namespaces: a "server" namespace (where a daemon under test runs)
//! and client namespaces joined to it by veth pairs. Everything is deleted on drop; tests/run.sh
//! deletes any `ilot-test-*` namespace a dead test left behind.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Net {
    pub server: String,
    /// (namespace, its IPv4 address, its IPv6 address), one per client.
    pub clients: Vec<(String, String, String)>,
    pub server_ip: String,
    pub server_ip6: String,
    listeners: Vec<Child>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Net {
    /// A server namespace and `clients` client namespaces, each on its own veth link
    /// (10.77.N.1 server side, 10.77.N.2 client side; fd77:N::1 / ::2).
    pub fn new(clients: usize) -> Net {
        let id = super::unique("");
        let server = format!("ilot-test-s{id}");
        ip(&["netns", "add", &server]);
        ip(&["-n", &server, "link", "set", "lo", "up"]);
        let mut net = Net {
            server: server.clone(),
            clients: Vec::new(),
            server_ip: "10.77.1.1".into(),
            server_ip6: "fd77:1::1".into(),
            listeners: Vec::new(),
        };
        for n in 1..=clients {
            let ns = format!("ilot-test-c{n}{id}");
            ip(&["netns", "add", &ns]);
            net.clients
                .push((ns.clone(), format!("10.77.{n}.2"), format!("fd77:{n}::2")));
            let (vs, vc) = (format!("vs{n}{id}"), format!("vc{n}{id}"));
            ip(&[
                "link", "add", &vs, "netns", &server, "type", "veth", "peer", "name", &vc, "netns",
                &ns,
            ]);
            for (nsn, dev, v4, v6) in [
                (
                    &server,
                    &vs,
                    format!("10.77.{n}.1/24"),
                    format!("fd77:{n}::1/64"),
                ),
                (
                    &ns,
                    &vc,
                    format!("10.77.{n}.2/24"),
                    format!("fd77:{n}::2/64"),
                ),
            ] {
                ip(&["-n", nsn, "addr", "add", &v4, "dev", dev]);
                ip(&["-n", nsn, "addr", "add", &v6, "dev", dev, "nodad"]);
                ip(&["-n", nsn, "link", "set", dev, "up"]);
                ip(&["-n", nsn, "link", "set", "lo", "up"]);
            }
        }
        net
    }

    /// A TCP server in the server namespace on `port` (all addresses) that accepts and holds.
    pub fn listen(&mut self, port: u16) {
        let ns = self.server.clone();
        self.listen_in(&ns, port);
    }

    /// The same in namespace `ns` (a client playing a container behind the server).
    pub fn listen_in(&mut self, ns: &str, port: u16) {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c"])
            .arg(format!(
                "import socket,time\ns=socket.socket(socket.AF_INET6)\ns.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,0)\n\
                 s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('::',{port}))\ns.listen(64)\n\
                 c=[]\nwhile True:\n  c.append(s.accept()[0])\n"
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        self.listeners.push(child);
        // Wait until it listens.
        for _ in 0..100 {
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    ns,
                    "ss",
                    "-Hltn",
                    &format!("sport = :{port}"),
                ])
                .output()
                .unwrap();
            if !out.stdout.is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nothing listens on {port} in {ns}");
    }

    /// Whether a TCP connection from client `n` (0-based) to `addr` port `port` is accepted
    /// within 2 s (a dropped SYN times out; a refused one fails at once).
    pub fn connects(&self, n: usize, addr: &str, port: u16) -> bool {
        let target = if addr.contains(':') {
            format!("[{addr}]")
        } else {
            addr.to_string()
        };
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.clients[n].0,
                "timeout",
                "2",
                "bash",
                "-c",
            ])
            .arg(format!(
                "exec 3<>/dev/tcp/{}/{port}",
                target.trim_matches(|c| c == '[' || c == ']')
            ))
            .status()
            .unwrap()
            .success()
    }

    /// Runs `args` in namespace `ns`; panics if it fails.
    pub fn exec(&self, ns: &str, args: &[&str]) {
        let mut all = vec!["netns", "exec", ns];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// `nft` in the server namespace.
    pub fn nft(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.server, "nft"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for l in &mut self.listeners {
            let _ = l.kill();
            let _ = l.wait();
        }
        for ns in std::iter::once(&self.server).chain(self.clients.iter().map(|c| &c.0)) {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}
