//! The guard (ban engine), for real: the daemon runs in a server network namespace with its
//! nftables; client namespaces are the attacker, a bystander, an allowlisted family member,
//! a "container" the server forwards a port to (Docker-style DNAT), and a blocklisted host.
//! Failures are written to the log files the jails follow, as sshd or the proxy would.

mod common;
use common::netns::Net;
use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A scratch directory removed on drop, even when the test fails.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch() -> Scratch {
    let dir = PathBuf::from(format!("/tmp/ilot-guard-{}", unique("")));
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

fn append(path: &Path, lines: &[String]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

/// `date` now, in a format: lines older than a jail's findtime are not counted, so the
/// samples carry the current time, as a live log would.
fn date(format: &str) -> String {
    let out = Command::new("date").arg(format).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end()
        .to_string()
}

fn sshd_failures(addr: &str, n: usize) -> Vec<String> {
    let now = date("+%b %e %H:%M:%S");
    (0..n)
        .map(|i| {
            format!("{now} pi sshd[4{i}]: Failed password for invalid user admin from {addr} port 5{i}000 ssh2")
        })
        .collect()
}

fn banned(ilot: &Ilot, net: &str) -> Option<serde_json::Value> {
    ilot.json(&["ban", "list"])["bans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == net)
        .cloned()
}

#[test]
fn offenders_are_banned_in_the_kernel_and_everyone_else_still_connects() {
    let mut net = Net::new(5);
    let logs = scratch();
    let (auth, web, drop_list) = (
        logs.0.join("auth.log"),
        logs.0.join("web.log"),
        logs.0.join("drop.txt"),
    );
    std::fs::write(&auth, "").unwrap();
    std::fs::write(&web, "").unwrap();
    // 10.77.5.0/24 (client 4) is on the list; 10.77.3.0/24 too, but it holds an allowlisted
    // address, so it is left out.
    std::fs::write(
        &drop_list,
        "; test DROP list\n10.77.5.0/24 ; SBL1\n10.77.3.0/24 ; SBL2\n",
    )
    .unwrap();
    net.listen(2222);
    // Client 3 plays a container: the server forwards port 8088 to it, as Docker does.
    let container = net.clients[3].0.clone();
    net.listen_in(&container, 8088);
    net.exec(
        &container,
        &["ip", "route", "add", "default", "via", "10.77.4.1"],
    );
    net.exec(&net.server, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    net.exec(
        &net.server,
        &["nft", "add table ip dockerlike; add chain ip dockerlike pre { type nat hook prerouting priority -100; }; add rule ip dockerlike pre tcp dport 8088 dnat to 10.77.4.2"],
    );
    let config = format!(
        "[firewall]\nenabled = true\nssh_ports = [2222]\n\n\
         [guard]\nallow = [\"10.77.3.2\"]\n\n\
         [guard.jails.sshd]\nfiles = [\"{}\"]\nmaxretry = 3\nfindtime = \"1m\"\nbantime = \"5s\"\nincrement = 2.0\n\n\
         [guard.jails.web]\nfilter = \"proxy-auth\"\nfiles = [\"{}\"]\nmaxretry = 2\nbantime = \"1h\"\n\n\
         [[guard.blocklists]]\nname = \"drop\"\nfile = \"{}\"\n",
        auth.display(),
        web.display(),
        drop_list.display()
    );
    let mut ilot = Ilot::start_in(Some(&net.server.clone()), &[], &config);
    let srv = |n: usize| format!("10.77.{}.1", n + 1);
    let srv6 = |n: usize| format!("fd77:{}::1", n + 1);

    // Before anything: the attacker reaches SSH and the forwarded port.
    assert!(net.connects(0, &srv(0), 2222));
    assert!(net.connects(0, &srv(0), 8088), "the DNAT'd port works");
    // The blocklist: client 4 is dropped, the allowlisted network is not.
    wait_until("the blocklist is loaded", 15, || {
        !net.connects(4, &srv(4), 2222)
    });
    assert!(net.connects(2, &srv(2), 2222));
    let sets = net.nft(&["list", "set", "inet", "ilot", "blocknet4"]);
    assert!(
        sets.contains("10.77.5.0/24") && !sets.contains("10.77.3.0/24"),
        "{sets}"
    );
    let list = ilot.json(&["ban", "list"]);
    assert_eq!(list["blocklists"]["entries"], 1, "{list}");

    // The allowlisted address fails again and again: never banned.
    append(&auth, &sshd_failures("10.77.3.2", 6));
    // The attacker fails 3 times: banned, from the host and from the forwarded port.
    append(&auth, &sshd_failures("10.77.1.2", 3));
    wait_until("the attacker is banned", 10, || {
        banned(&ilot, "10.77.1.2/32").is_some()
    });
    assert!(!net.connects(0, &srv(0), 2222), "banned from the host");
    assert!(
        !net.connects(0, &srv(0), 8088),
        "banned from the forwarded container port"
    );
    assert!(net.connects(1, &srv(1), 2222), "a bystander still connects");
    assert!(
        net.connects(2, &srv(2), 2222),
        "the allowlisted address still connects"
    );
    assert!(banned(&ilot, "10.77.3.2/32").is_none());
    let set = net.nft(&["list", "set", "inet", "ilot", "ban4"]);
    assert!(
        set.contains("10.77.1.2 timeout"),
        "in the kernel with a timeout: {set}"
    );
    assert!(
        ilot.log().contains("10.77.3.2/32 not banned (allowlisted"),
        "{}",
        ilot.log()
    );

    // IPv6: one address of the bystander's /64 fails (in the web log); the /64 is banned,
    // so the bystander's other address is dropped over IPv6, not over IPv4.
    let iso = date("+%Y-%m-%dT%H:%M:%S%:z");
    let web_failures: Vec<String> = (0..2)
        .map(|_| format!("{iso} fd77:2::99 cloud.example.org \"POST /login HTTP/1.1\" 401 2ms"))
        .collect();
    append(&web, &web_failures);
    wait_until("the /64 is banned", 10, || {
        banned(&ilot, "fd77:2::/64").is_some()
    });
    assert!(!net.connects(1, &srv6(1), 2222), "the whole /64 is dropped");
    assert!(net.connects(1, &srv(1), 2222), "IPv4 is another address");

    // Expiry: the kernel lets the 5 s ban go, and the daemon says so.
    wait_until("the ban expires", 20, || net.connects(0, &srv(0), 2222));
    wait_until("the unban is an event", 5, || {
        ilot.ok(&["events"])
            .contains("10.77.1.2/32 unbanned: the ban expired")
    });
    assert!(ilot
        .ok(&["events"])
        .contains("10.77.1.2/32 banned for 5s by sshd"));
    // A repeat offender gets twice as long.
    append(&auth, &sshd_failures("10.77.1.2", 3));
    wait_until("banned again", 10, || {
        banned(&ilot, "10.77.1.2/32").is_some()
    });
    let again = banned(&ilot, "10.77.1.2/32").unwrap();
    assert_eq!(again["count"], 2, "{again}");
    assert_eq!(
        again["until"].as_u64().unwrap() - again["since"].as_u64().unwrap(),
        10,
        "{again}"
    );

    // The jails: where they read, what they did since the daemon started.
    let show = ilot.json(&["guard", "show"]);
    let sshd = show["jails"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "sshd")
        .unwrap();
    assert_eq!(sshd["bans"], 2, "{show}");
    assert_eq!(
        sshd["failures"], 12,
        "every failure counts, the allowlisted ones too: {show}"
    );
    assert!(
        show["allow"].to_string().contains("Docker network bridge"),
        "Docker's networks are never banned: {show}"
    );
    assert_eq!(
        sshd["sources"][0],
        format!("file:{}", auth.display()),
        "{show}"
    );

    // A reboot: the daemon stops, the kernel forgets (table gone); at start the bans are back.
    ilot.kill9();
    net.exec(&net.server, &["nft", "delete", "table", "inet", "ilot"]);
    // (IPv6 neighbour discovery, dropped with the rest while banned, takes a moment to recover.)
    wait_until("nothing in the kernel while down", 15, || {
        net.connects(1, &srv6(1), 2222)
    });
    ilot.spawn(&[]);
    ilot.wait_ready();
    wait_until("bans restored after the restart", 10, || {
        !net.connects(1, &srv6(1), 2222)
    });
    assert_eq!(banned(&ilot, "fd77:2::/64").unwrap()["jail"], "web");

    // The admin's hand: remove, add for a while, bad input changes nothing.
    ilot.ok(&["ban", "remove", "fd77:2::5"]);
    wait_until("unbanned by the admin", 15, || {
        net.connects(1, &srv6(1), 2222)
    });
    let out = ilot.ok(&["ban", "add", "10.77.2.2", "--for", "1h"]);
    assert!(
        out.contains("10.77.2.2/32 banned for 1h by manual"),
        "{out}"
    );
    assert!(!net.connects(1, &srv(1), 2222));
    let err = ilot.fails(&["ban", "add", "10.77.3.2"], 2);
    assert!(
        err.contains("never banned") && err.contains("allowlisted"),
        "{err}"
    );
    let err = ilot.fails(&["ban", "add", "999.1.2.3"], 2);
    assert!(err.contains("not an address"), "{err}");
    let err = ilot.fails(&["ban", "remove", "192.0.2.1"], 2);
    assert!(err.contains("not banned"), "{err}");
    ilot.ok(&["ban", "remove", "10.77.2.2"]);
    assert!(net.connects(1, &srv(1), 2222));
}

/// `[firewall] enabled = false` with the guard on: nftables is left as it was, even a `table
/// inet ilot` the admin made; bans are still decided and listed, and said not to be enforced.
#[test]
fn a_disabled_firewall_leaves_nftables_alone_and_bans_say_they_are_not_enforced() {
    let mut net = Net::new(1);
    net.listen(2222);
    let logs = scratch();
    let auth = logs.0.join("auth.log");
    std::fs::write(&auth, "").unwrap();
    net.exec(
        &net.server,
        &["nft", "add table inet ilot; add chain inet ilot mine { type filter hook input priority 10; }; add rule inet ilot mine tcp dport 9 counter accept comment \"the admin's\""],
    );
    let before = net.nft(&["list", "ruleset"]);
    let config = format!(
        "[firewall]\nenabled = false\n\n[guard]\n\n\
         [guard.jails.sshd]\nfiles = [\"{}\"]\nmaxretry = 2\nbantime = \"1h\"\n",
        auth.display()
    );
    let ilot = Ilot::start_in(Some(&net.server.clone()), &[], &config);
    append(&auth, &sshd_failures("10.77.1.2", 2));
    wait_until("the offender is banned (listed)", 15, || {
        banned(&ilot, "10.77.1.2/32").is_some()
    });
    let list = ilot.json(&["ban", "list"]);
    assert_eq!(list["enforced"], false, "{list}");
    assert!(
        list["not_enforced"]
            .as_str()
            .unwrap()
            .contains("[firewall] enabled = false"),
        "{list}"
    );
    assert!(ilot.ok(&["guard", "show"]).contains("not enforced"));
    assert!(ilot.ok(&["ban", "list"]).contains("not enforced"));
    // A manual ban and its removal do not touch the kernel either.
    ilot.ok(&["ban", "add", "10.77.1.9"]);
    ilot.ok(&["ban", "remove", "10.77.1.9"]);
    assert_eq!(net.nft(&["list", "ruleset"]), before, "nftables changed");
    assert!(
        net.connects(0, "10.77.1.1", 2222),
        "the listed ban is not enforced: the client still connects"
    );
    assert!(
        ilot.log().contains("bans are listed, not enforced"),
        "the start says so:\n{}",
        ilot.log()
    );
}

#[test]
fn guard_test_shows_each_verdict_like_fail2ban_regex() {
    let logs = scratch();
    let file = logs.0.join("auth.log");
    let mut lines = sshd_failures("203.0.113.5", 3);
    lines.push(
        "Nov 22 01:02:03 pi sshd[9]: Accepted publickey for admin from 203.0.113.9 port 1 ssh2"
            .into(),
    );
    lines.push("Nov 22 01:02:03 pi sshd[9]: Invalid user x from 999.2.3.4 port 22".into());
    append(&file, &lines);
    let out = Command::new(BIN)
        .args(["guard", "test", "sshd", file.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["lines"], 5, "{v}");
    assert_eq!(v["matched"], 3, "{v}");
    assert_eq!(v["bad_address"], 1, "{v}");
    // The login is a session line (it would drop a failure of sshd[9] waiting for an address).
    assert_eq!(v["session"], 1, "{v}");
    assert_eq!(v["missed"], 0, "{v}");
    assert_eq!(v["shown"][0]["address"], "203.0.113.5", "{v}");
    assert!(
        v["shown"][0]["time"].as_u64().is_some(),
        "the syslog date is read: {v}"
    );

    // A custom filter from the filters directory, and a broken one: a clear error.
    std::fs::write(
        logs.0.join("mine.toml"),
        "description = \"mine\"\nfailregex = ['denied for <HOST>$']\n",
    )
    .unwrap();
    std::fs::write(
        logs.0.join("broken.toml"),
        "description = \"b\"\nfailregex = ['(']\n",
    )
    .unwrap();
    std::fs::write(&file, "x denied for 198.51.100.3\n").unwrap();
    let run = |filter: &str| {
        Command::new(BIN)
            .args([
                "guard",
                "test",
                filter,
                file.to_str().unwrap(),
                "--filters-dir",
            ])
            .arg(&logs.0)
            .output()
            .unwrap()
    };
    let out = run("mine");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("match") && text.contains("198.51.100.3"),
        "{text}"
    );
    assert!(text.contains("1 lines: 1 matched"), "{text}");
    let out = run("broken");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("filter broken: failregex 1"));
    let out = run("nosuch");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("built-in filters: dovecot"));
}

#[test]
fn an_apps_container_output_is_read_with_the_filter_its_manifest_names() {
    let net = Net::new(1);
    let mut ilot = Ilot::start_in(
        Some(&net.server.clone()),
        &[],
        "[firewall]\nenabled = true\n\n[guard]\n[guard.defaults]\nmaxretry = 2\n",
    );
    // An app whose manifest says: read service web's output with the sshd filter.
    let dir = ilot.dir.join("catalog/logapp");
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = std::fs::read_to_string(ilot.dir.join("catalog/hello/app.toml"))
        .unwrap()
        .replace("name = \"hello\"", "name = \"logapp\"")
        .replace(
            "[needs]",
            "[needs]\nlog_filters = [{ filter = \"sshd\", service = \"web\" }]",
        );
    std::fs::write(dir.join("app.toml"), manifest).unwrap();
    ilot.restart();
    let name = unique("logs");
    ilot.ok(&["app", "install", "logapp", "--name", &name]);
    let container = format!("ilot-{name}-web");
    let jail = format!("{name}-sshd");
    let show = ilot.json(&["guard", "show"]);
    assert!(
        show["jails"]
            .to_string()
            .contains(&format!("container:{container}")),
        "{show}"
    );
    // The container writes failures to its own output (as an app logs to stdout): the
    // gateway address of Docker's bridge is never banned, the real client is.
    let emit = |addr: &str| {
        let line = sshd_failures(addr, 1).remove(0);
        docker_ok(&[
            "exec",
            &container,
            "sh",
            "-c",
            &format!("echo '{line}' > /proc/1/fd/1"),
        ]);
    };
    // The default bridge's gateway: its IPAM config says it on some engines, docker0's address
    // on all of them.
    let gateway = docker_ok(&[
        "network",
        "inspect",
        "bridge",
        "--format",
        "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
    ]);
    let gateway = match gateway.trim() {
        "" => {
            let out = std::process::Command::new("ip")
                .args(["-o", "-4", "addr", "show", "docker0"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let inet = text.split_whitespace().skip_while(|w| *w != "inet").nth(1);
            inet.and_then(|a| a.split('/').next())
                .unwrap_or_else(|| panic!("no address on docker0: {text}"))
                .to_string()
        }
        g => g.to_string(),
    };
    let gateway = gateway.as_str();
    for _ in 0..3 {
        emit(gateway);
        emit("198.51.100.23");
    }
    wait_until("the client in the container's log is banned", 15, || {
        banned(&ilot, "198.51.100.23/32").is_some()
    });
    assert_eq!(
        banned(&ilot, "198.51.100.23/32").unwrap()["jail"],
        jail.as_str()
    );
    assert!(banned(&ilot, &format!("{gateway}/32")).is_none());
    assert!(
        ilot.log().contains("Docker network bridge"),
        "{}",
        ilot.log()
    );
    let set = net.nft(&["list", "set", "inet", "ilot", "ban4"]);
    assert!(set.contains("198.51.100.23"), "{set}");
    ilot.ok(&["app", "remove", &name, "--purge"]);
}

/// What fail2ban's stock filter `filter` (fail2ban-regex's syntax, `sshd[mode=ddos]`) takes from
/// one line alone: the address it counts a failure for, or None. One line per run, so that its
/// multi-line state (a session's earlier lines) never joins two examples.
fn fail2ban_verdict(dir: &Path, filter: &str, line: &str) -> Option<String> {
    let log = dir.join("line.log");
    std::fs::write(&log, format!("{line}\n")).unwrap();
    let out = Command::new("fail2ban-regex")
        .args(["-o", "ip"])
        .arg(&log)
        .arg(filter)
        .output()
        .expect("fail2ban-regex (tests/run.sh installs the fail2ban package)");
    assert!(
        out.status.success(),
        "fail2ban-regex {filter}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// Every example of every built-in filter that names its fail2ban counterpart is run through
/// fail2ban-regex with fail2ban's own stock filter: both must say the same of the line (no
/// match, or the same address), or the example says why fail2ban differs, and then it must.
#[test]
fn filter_examples_agree_with_fail2bans_stock_filters_or_say_why() {
    #[derive(serde::Deserialize)]
    struct Example {
        line: String,
        host: Option<String>,
        #[serde(default)]
        modes: Vec<String>,
        fail2ban_differs: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Mode {
        fail2ban: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct FilterFile {
        fail2ban: Option<String>,
        mode: Option<String>,
        #[serde(default)]
        modes: std::collections::BTreeMap<String, Mode>,
        #[serde(default)]
        examples: Vec<Example>,
    }
    let dir = PathBuf::from(format!("/tmp/ilot-test-{}", unique("f2b")));
    std::fs::create_dir_all(&dir).unwrap();
    let filters = Path::new(env!("CARGO_MANIFEST_DIR")).join("filters");
    let mut compared = Vec::new();
    let mut wrong = Vec::new();
    for entry in std::fs::read_dir(&filters).unwrap() {
        let path = entry.unwrap().path();
        let file: FilterFile = toml::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let Some(base) = file.fail2ban.clone() else {
            continue;
        };
        // fail2ban's counterpart of each mode: the mode's own, or the filter's with [mode=M].
        let counterpart = |mode: &str| -> String {
            file.modes
                .get(mode)
                .and_then(|m| m.fail2ban.clone())
                .unwrap_or_else(|| format!("{base}[mode={mode}]"))
        };
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let (mut same, mut differ) = (0, 0);
        let theirs = &base;
        for ex in &file.examples {
            let modes = match (&ex.modes[..], &file.mode) {
                ([], Some(default)) => vec![default.clone()],
                ([], None) => vec![String::new()],
                (m, _) => m.to_vec(),
            };
            for mode in modes {
                let theirs = if mode.is_empty() {
                    base.clone()
                } else {
                    counterpart(&mode)
                };
                let f2b = fail2ban_verdict(&dir, &theirs, &ex.line);
                match (&ex.fail2ban_differs, f2b == ex.host) {
                (None, true) => same += 1,
                (Some(_), false) => differ += 1,
                (None, false) => wrong.push(format!(
                    "{name}: ilot {:?}, fail2ban ({theirs}) {f2b:?}, and the example says nothing of it: {}",
                    ex.host, ex.line
                )),
                (Some(why), true) => wrong.push(format!(
                    "{name}: fail2ban ({theirs}) agrees now ({f2b:?}): remove fail2ban_differs ({why}): {}",
                    ex.line
                )),
            }
            }
        }
        assert!(same + differ > 0, "{name}: no examples to compare");
        compared.push(format!(
            "{name} vs {theirs}: {same} agree, {differ} differ with a reason"
        ));
    }
    std::fs::remove_dir_all(&dir).unwrap();
    for f in ["sshd", "postfix", "dovecot"] {
        assert!(
            compared.iter().any(|c| c.starts_with(&format!("{f} vs "))),
            "filters/{f}.toml names no fail2ban counterpart: {compared:?}"
        );
    }
    assert!(
        wrong.is_empty(),
        "{}\n\ncompared: {compared:#?}",
        wrong.join("\n")
    );
    eprintln!("{compared:#?}");
}
