//! The guard's filters against fail2ban's own, on what the real daemons log.
//!
//! A real OpenSSH sshd (Debian's, with PAM) logs through syslog(3) to a real syslogd
//! (BusyBox's) in a mount namespace of the test's own, where /dev/log is that syslogd's socket
//! and not the host's. The test drives it as attackers and users do (wrong passwords, unknown
//! and refused users, wrong keys, too many attempts, keyboard-interactive, scanners, old
//! clients, a successful login) with OpenSSH's own client, collects the log, and writes it
//! again in the other framings a host may use (rsyslog's RFC 3339 dates, RFC 5424, Solaris's
//! message-ID tags). Every framing then goes through `ilot guard test` and through fail2ban's
//! stock filter (Debian's fail2ban package, tests/common/fail2ban_lines.py, which keeps
//! fail2ban's multi-line memory across the lines), in every mode. On each line both must count
//! the same failure (or none), unless tests/fail2ban-differs.toml lists the line with the
//! reason fail2ban is wrong; and at least 99 % of the lines either counts must agree.

mod common;
use common::named::free_port;
use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A listed disagreement: lines of `filter` (in `modes`, or all) that match `line`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Differ {
    filter: String,
    #[serde(default)]
    modes: Vec<String>,
    /// A regex on the line as logged.
    line: String,
    /// Whether ilot counts these lines ("counts") or fail2ban does ("fail2ban counts").
    who: String,
    reason: String,
}

#[derive(serde::Deserialize)]
struct DiffersFile {
    differs: Vec<Differ>,
}

fn differs() -> Vec<(Differ, regex::Regex)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fail2ban-differs.toml");
    let file: DiffersFile = toml::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    file.differs
        .into_iter()
        .map(|d| {
            assert!(
                d.who == "ilot counts" || d.who == "fail2ban counts",
                "{}: who = {:?}: say \"ilot counts\" or \"fail2ban counts\"",
                path.display(),
                d.who
            );
            assert!(
                !d.reason.trim().is_empty(),
                "{}: a reason is needed",
                d.line
            );
            let re = regex::Regex::new(&d.line).unwrap();
            (d, re)
        })
        .collect()
}

/// fail2ban's verdict on each line of `log`, in order (fail2ban's own code, with its memory).
fn fail2ban_lines(filter: &str, log: &Path) -> Vec<Option<String>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/fail2ban_lines.py");
    let out = Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(filter)
        .arg(log)
        .output()
        .expect("/usr/bin/python3 (tests/run.sh installs the fail2ban package)");
    assert!(
        out.status.success(),
        "fail2ban_lines.py {filter}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| (l != "-").then(|| l.to_string()))
        .collect()
}

/// ilot's verdict on each line of `log` (`ilot guard test FILTER LOG --mode MODE --json`).
fn ilot_lines(filter: &str, mode: &str, log: &Path, n: usize) -> Vec<Option<String>> {
    let out = Command::new(BIN)
        .args(["--json", "guard", "test", filter])
        .arg(log)
        .args(["--mode", mode, "--filters-dir", "/nonexistent"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ilot guard test: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["lines"].as_u64(), Some(n as u64), "{v}");
    assert!(
        v["failing_examples"]
            .as_array()
            .is_some_and(|a| a.is_empty()),
        "{v}"
    );
    let mut verdicts = vec![None; n];
    for s in v["shown"].as_array().unwrap() {
        if s["verdict"] == "match" {
            let i = s["line"].as_u64().unwrap() as usize - 1;
            verdicts[i] = s["address"].as_str().map(str::to_string);
        }
    }
    verdicts
}

/// What comparing one log in one mode found.
struct Outcome {
    /// Lines either side counts a failure of; of them, those both count the same.
    failures: usize,
    agree: usize,
    listed: usize,
    unexplained: Vec<String>,
}

fn compare(
    filter: &str,
    mode: &str,
    theirs: &str,
    log: &Path,
    listed: &[(Differ, regex::Regex)],
) -> Outcome {
    let text = std::fs::read_to_string(log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let ours = ilot_lines(filter, mode, log, lines.len());
    let f2b = fail2ban_lines(theirs, log);
    assert_eq!(
        f2b.len(),
        lines.len(),
        "fail2ban's verdicts of {}",
        log.display()
    );
    let mut o = Outcome {
        failures: 0,
        agree: 0,
        listed: 0,
        unexplained: Vec::new(),
    };
    for ((line, a), b) in lines.iter().zip(&ours).zip(&f2b) {
        if a.is_none() && b.is_none() {
            continue;
        }
        o.failures += 1;
        if a == b {
            o.agree += 1;
            continue;
        }
        let who = if a.is_some() && b.is_none() {
            "ilot counts"
        } else {
            "fail2ban counts"
        };
        let why = listed.iter().find(|(d, re)| {
            d.filter == filter
                && (d.modes.is_empty() || d.modes.iter().any(|m| m == mode))
                && d.who == who
                && re.is_match(line)
        });
        match why {
            Some(_) => o.listed += 1,
            None => o.unexplained.push(format!(
                "{filter} mode {mode}: ilot {a:?}, fail2ban ({theirs}) {b:?}: {line}"
            )),
        }
    }
    o
}

/// The same log in the other framings hosts write: rsyslog's RFC 3339 dates (its default on
/// Debian 12 and later), RFC 5424 (rsyslog's RSYSLOG_SyslogProtocol23Format, syslog-ng's
/// `flags(syslog-protocol)`), and Solaris/illumos's `[ID N facility.level]` after the tag.
/// Each line of `log` is `Mmm dd hh:mm:ss [HOST] TAG[PID]: MSG` (BusyBox syslogd's -S output
/// has no host; Postfix's and Dovecot's own log files have one).
fn reframe(log: &Path, dir: &Path) -> Vec<(String, PathBuf, bool)> {
    let text = std::fs::read_to_string(log).unwrap();
    let year = &date("%Y");
    let mut rfc3339 = String::new();
    let mut rfc5424 = String::new();
    let mut solaris = String::new();
    for line in text.lines() {
        let (stamp, rest) = line.split_at(15);
        let Some((head, msg)) = rest.trim_start().split_once(": ") else {
            continue;
        };
        // "HOST TAG" (Postfix, Dovecot) or "TAG" (BusyBox's -S).
        let (host, tag) = head.rsplit_once(' ').unwrap_or(("pi", head));
        let (app, pid) = match tag.split_once('[') {
            Some((a, p)) => (a, p.trim_end_matches(']')),
            None => (tag, "-"),
        };
        let iso = iso_date(year, stamp);
        rfc3339 += &format!("{iso}.000123+00:00 {host} {tag}: {msg}\n");
        rfc5424 += &format!("<38>1 {iso}.000123+00:00 {host} {app} {pid} - - {msg}\n");
        solaris += &format!("{stamp} {host} {tag}: [ID 800047 auth.info] {msg}\n");
    }
    let mut out = vec![("syslog (BusyBox)".to_string(), log.to_path_buf(), false)];
    for (name, body, is_5424) in [
        ("RFC 3339", rfc3339, false),
        ("RFC 5424", rfc5424, true),
        ("Solaris", solaris, false),
    ] {
        let path = dir.join(format!("{}.log", name.replace(' ', "-")));
        std::fs::write(&path, body).unwrap();
        out.push((name.to_string(), path, is_5424));
    }
    out
}

fn date(format: &str) -> String {
    let out = Command::new("date")
        .arg("-u")
        .arg(format!("+{format}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// "Dec  2 20:08:01" of `year` as "2026-12-02T20:08:01".
fn iso_date(year: &str, stamp: &str) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| stamp.starts_with(m)).unwrap() + 1;
    let day: u32 = stamp[4..6].trim().parse().unwrap();
    format!("{year}-{month:02}-{day:02}T{}", &stamp[7..15])
}

/// Compares `log`, in every framing, in every mode; panics on an unexplained disagreement or
/// an agreement under 99 %. Returns the table rows (framing, mode, failures, agree, listed).
fn compare_all(
    filter: &str,
    modes: &[(&str, &str)],
    log: &Path,
    dir: &Path,
) -> Vec<(String, String, usize, usize, usize)> {
    let listed = differs();
    let mut rows = Vec::new();
    let mut unexplained = Vec::new();
    for (framing, path, is_5424) in reframe(log, dir) {
        for (mode, theirs) in modes {
            let theirs = if is_5424 {
                match theirs.strip_suffix(']') {
                    Some(t) => format!("{t}, logtype=rfc5424]"),
                    None => format!("{theirs}[logtype=rfc5424]"),
                }
            } else {
                theirs.to_string()
            };
            let o = compare(filter, mode, &theirs, &path, &listed);
            unexplained.extend(o.unexplained.iter().map(|u| format!("[{framing}] {u}")));
            rows.push((
                framing.clone(),
                mode.to_string(),
                o.failures,
                o.agree,
                o.listed,
            ));
        }
    }
    let table: Vec<String> = rows
        .iter()
        .map(|(f, m, n, a, l)| {
            format!(
                "{filter} {m:<10} {f:<16} {n:>4} failures, {a:>4} agree ({:.1} %), {l} listed in tests/fail2ban-differs.toml",
                100.0 * *a as f64 / (*n).max(1) as f64
            )
        })
        .collect();
    eprintln!("{}", table.join("\n"));
    assert!(
        unexplained.is_empty(),
        "disagreements with fail2ban that tests/fail2ban-differs.toml does not explain:\n{}\n\n{}",
        unexplained.join("\n"),
        table.join("\n")
    );
    for (f, m, n, a, l) in &rows {
        assert!(*n > 0, "{filter} {m} {f}: no failures at all in the corpus");
        // Where fail2ban cannot read a framing at all (see the list), the row is explained
        // line by line instead.
        assert!(
            *l > 0 || *a as f64 >= 0.99 * *n as f64,
            "{filter} {m} {f}: agreement under 99 %\n{}",
            table.join("\n")
        );
    }
    rows
}

// ------------------------------------------------------------------------------------ sshd

/// Debian's sshd logging through syslog(3) to BusyBox's syslogd, both in a mount namespace
/// whose /dev is a tmpfs of its own (the host's null, zero, random, urandom, tty and pts bound
/// in), so /dev/log is the test's socket. Killed with its whole process group on drop.
struct SyslogSshd {
    dir: PathBuf,
    port: u16,
    child: Child,
}

impl SyslogSshd {
    fn start(dir: &Path) -> SyslogSshd {
        std::fs::create_dir_all("/run/sshd").unwrap();
        for key in ["hostkey", "userkey"] {
            let st = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(key))
                .status()
                .unwrap();
            assert!(st.success());
        }
        // Wrong keys: six of them, more than MaxAuthTries.
        for i in 0..6 {
            let st = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(format!("wrongkey{i}")))
                .status()
                .unwrap();
            assert!(st.success());
        }
        std::fs::copy(dir.join("userkey.pub"), dir.join("authorized_keys")).unwrap();
        // A wrong password for every prompt (SSH_ASKPASS_REQUIRE=force).
        let askpass = dir.join("askpass");
        std::fs::write(&askpass, "#!/bin/sh\necho not-the-password\n").unwrap();
        Command::new("chmod")
            .arg("755")
            .arg(&askpass)
            .status()
            .unwrap();
        let port = free_port();
        let d = dir.display();
        std::fs::write(
            dir.join("sshd_config"),
            format!(
                "# tests/fail2ban.rs: an sshd that logs through syslog(3)\n\
                 ListenAddress 127.0.0.1\nPort {port}\nHostKey {d}/hostkey\nPidFile {d}/sshd.pid\n\
                 UsePAM yes\nPasswordAuthentication yes\nKbdInteractiveAuthentication yes\n\
                 PermitRootLogin yes\nMaxAuthTries 4\nLogLevel INFO\nSyslogFacility AUTH\n\
                 AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nDenyUsers daemon\n\
                 AllowUsers root daemon nosuchuser\n"
            ),
        )
        .unwrap();
        let script = format!(
            "set -e\n\
             mkdir -p {d}/hostdev\n\
             mount --rbind /dev {d}/hostdev\n\
             mount -t tmpfs tmpfs /dev\n\
             for n in null zero random urandom full tty; do touch /dev/$n; mount --bind {d}/hostdev/$n /dev/$n; done\n\
             mkdir /dev/pts; mount --rbind {d}/hostdev/pts /dev/pts; ln -s pts/ptmx /dev/ptmx\n\
             busybox syslogd -n -S -O {d}/auth.log &\n\
             while [ ! -S /dev/log ]; do sleep 0.05; done\n\
             exec /usr/sbin/sshd -D -f {d}/sshd_config\n"
        );
        std::fs::write(dir.join("ns.sh"), script).unwrap();
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new("unshare")
                .args(["--mount", "--propagation", "private", "sh"])
                .arg(dir.join("ns.sh"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("ns.err")).unwrap())
                .process_group(0)
                .spawn()
                .expect("unshare (util-linux)")
        };
        let s = SyslogSshd {
            dir: dir.to_path_buf(),
            port,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !s.log().contains("Server listening on 127.0.0.1") {
            assert!(
                Instant::now() < deadline,
                "sshd did not come up in 20 s: {}\n{}",
                std::fs::read_to_string(dir.join("ns.err")).unwrap_or_default(),
                s.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("auth.log")).unwrap_or_default()
    }

    /// OpenSSH's client, answering every password prompt wrongly; true if it logged in.
    fn ssh(&self, user: &str, opts: &[&str]) -> bool {
        let out = Command::new("ssh")
            .args([
                "-F",
                "/dev/null",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=no",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "LogLevel=ERROR",
                "-p",
            ])
            .arg(self.port.to_string())
            .args(opts)
            .arg(format!("{user}@127.0.0.1"))
            .arg("true")
            .env("SSH_ASKPASS", self.dir.join("askpass"))
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        out.status.success()
    }

    fn key(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// A TCP client that sends `bytes` (maybe none) and closes.
    fn raw(&self, bytes: &[u8]) {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        if !bytes.is_empty() {
            let _ = s.write_all(bytes);
            let mut buf = [0u8; 256];
            let _ = std::io::Read::read(&mut s, &mut buf);
        }
    }
}

impl Drop for SyslogSshd {
    fn drop(&mut self) {
        let pgid = self.child.id() as i32;
        // The namespace's processes: the shell became sshd; syslogd and the per-connection
        // sshd processes are in its process group.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("sshd.pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn sshd_what_the_real_sshd_logs_is_counted_as_fail2ban_counts_it_in_every_mode() {
    let scratch = Scratch(PathBuf::from(format!(
        "/tmp/ilot-test-{}",
        unique("f2bsshd")
    )));
    let dir = &scratch.0;
    std::fs::create_dir_all(dir).unwrap();
    let sshd = SyslogSshd::start(dir);
    let password = [
        "-o",
        "PreferredAuthentications=password",
        "-o",
        "PubkeyAuthentication=no",
    ];
    let kbd = [
        "-o",
        "PreferredAuthentications=keyboard-interactive",
        "-o",
        "PubkeyAuthentication=no",
    ];
    let user_key = sshd.key("userkey");
    let wrong: Vec<String> = (0..6).map(|i| sshd.key(&format!("wrongkey{i}"))).collect();
    for round in 0..3 {
        // Wrong passwords: two, then the client gives up; six, more than MaxAuthTries.
        assert!(!sshd.ssh(
            "root",
            &[&password[..], &["-o", "NumberOfPasswordPrompts=2"]].concat()
        ));
        assert!(!sshd.ssh(
            "root",
            &[&password[..], &["-o", "NumberOfPasswordPrompts=6"]].concat()
        ));
        // Unknown users, with a password and with a key.
        assert!(!sshd.ssh(
            "nosuchuser",
            &[&password[..], &["-o", "NumberOfPasswordPrompts=2"]].concat()
        ));
        assert!(!sshd.ssh(&format!("intruder{round}"), &["-i", &user_key]));
        // A user sshd refuses (DenyUsers), one not in AllowUsers.
        assert!(!sshd.ssh("daemon", &password));
        assert!(!sshd.ssh("nobody", &password));
        // Keys the server does not know: six, more than MaxAuthTries (OpenSSH logs the refused
        // keys of a valid user at VERBOSE only; INFO shows the attempts exceeded).
        let mut keys: Vec<&str> = Vec::new();
        for k in &wrong {
            keys.extend(["-i", k.as_str()]);
        }
        assert!(!sshd.ssh(
            "root",
            &[&["-o", "PreferredAuthentications=publickey"][..], &keys].concat()
        ));
        // keyboard-interactive through PAM.
        assert!(!sshd.ssh(
            "root",
            &[&kbd[..], &["-o", "NumberOfPasswordPrompts=2"]].concat()
        ));
        // A client that offers no method the server takes.
        assert!(!sshd.ssh("root", &["-o", "PreferredAuthentications=hostbased"]));
        // Scanners: a connection that says nothing, one that speaks HTTP.
        sshd.raw(b"");
        sshd.raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        // Old clients: no key exchange or cipher in common.
        assert!(!sshd.ssh(
            "root",
            &[
                "-o",
                "KexAlgorithms=diffie-hellman-group14-sha1",
                "-i",
                &user_key
            ]
        ));
        assert!(!sshd.ssh("root", &["-c", "aes128-cbc", "-i", &user_key]));
        // The admin: a key login, and one mistyped password before it.
        assert!(sshd.ssh("root", &["-i", &user_key]), "{}", sshd.log());
    }
    // syslogd writes asynchronously: wait for the last login's end.
    let deadline = Instant::now() + Duration::from_secs(10);
    while sshd.log().matches("session closed for user root").count() < 3 {
        assert!(Instant::now() < deadline, "{}", sshd.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    // Only sshd's lines (BusyBox's own start line is not an auth log's).
    let log: String = sshd
        .log()
        .lines()
        .filter(|l| l.get(16..).is_some_and(|r| r.starts_with("sshd[")))
        .map(|l| format!("{l}\n"))
        .collect();
    let corpus = dir.join("sshd.log");
    std::fs::write(&corpus, &log).unwrap();
    // Kept for docs/guard.md's table and for reading: the corpus of this run.
    if let Ok(out) = std::env::var("ILOT_CORPUS_OUT") {
        std::fs::copy(&corpus, Path::new(&out).join("sshd-corpus.log")).unwrap();
    }
    drop(sshd);
    let rows = compare_all(
        "sshd",
        &[
            ("normal", "sshd[mode=normal]"),
            ("ddos", "sshd[mode=ddos]"),
            ("extra", "sshd[mode=extra]"),
            ("aggressive", "sshd[mode=aggressive]"),
        ],
        &corpus,
        dir,
    );
    // The corpus holds what each mode is for.
    let failures = |mode: &str| rows.iter().find(|r| r.1 == mode).unwrap().2;
    assert!(failures("ddos") > failures("normal"), "{rows:?}");
    assert!(failures("extra") > failures("normal"), "{rows:?}");
    assert!(failures("aggressive") > failures("ddos"), "{rows:?}");
    for needle in [
        "Failed password for root",
        "Failed password for invalid user nosuchuser",
        "Invalid user intruder",
        "maximum authentication attempts exceeded",
        "not allowed because listed in DenyUsers",
        "not allowed because not listed in AllowUsers",
        "Disconnecting authenticating user root",
        "error: PAM: Authentication failure for root",
        "banner exchange",
        "Accepted publickey for root",
        "Unable to negotiate with",
    ] {
        assert!(log.contains(needle), "the corpus has no {needle:?}:\n{log}");
    }
}

// ------------------------------------------------------------------------ Postfix, Dovecot

/// Sends SMTP `lines` on a plain connection to `port` (reading the greeting first unless
/// `pipelined`), then reads what the server says until it closes or goes quiet.
fn smtp_raw(port: u16, lines: &[&str], pipelined: bool) {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 4096];
    if !pipelined {
        let _ = s.read(&mut buf);
    }
    for l in lines {
        let _ = s.write_all(format!("{l}\r\n").as_bytes());
        if !pipelined {
            let _ = s.read(&mut buf);
        }
    }
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}

#[test]
fn postfix_and_dovecot_what_the_real_servers_log_is_counted_as_fail2ban_counts_it() {
    use common::mail::*;
    let scratch = Scratch(PathBuf::from(format!(
        "/tmp/ilot-test-{}",
        unique("f2bmail")
    )));
    let dir = &scratch.0;
    std::fs::create_dir_all(dir).unwrap();
    let ilot = Ilot::start();
    let srv = install(&ilot);
    add_user(&ilot, "bob@example.org", "bob-has-a-long-passphrase");
    let container = format!("ilot-{}-mail", srv.name);
    let sub = format!("127.0.0.1:{}", srv.submission);
    let subs = format!("127.0.0.1:{}", srv.submissions);
    let smtp = format!("127.0.0.1:{}", srv.smtp);
    for round in 0..3 {
        // Wrong passwords and unknown users on submission (STARTTLS) and submissions (TLS).
        for (auth, user) in [
            ("LOGIN", "bob@example.org"),
            ("PLAIN", "nobody@example.org"),
        ] {
            // STARTTLS on submission, implicit TLS on submissions.
            for (server, tls) in [(&sub, "-tls"), (&subs, "-tlsc")] {
                let (ok, out) = swaks(
                    None,
                    &[
                        "--server",
                        server,
                        tls,
                        "--auth",
                        auth,
                        "--auth-user",
                        user,
                        "--auth-password",
                        "wrong-password",
                        "--from",
                        user,
                        "--to",
                        "bob@example.org",
                    ],
                );
                assert!(!ok, "{out}");
            }
        }
        // Wrong IMAP logins (IMAPS), a wrong ManageSieve login.
        assert!(imap(
            srv.imaps,
            "bob@example.org",
            "wrong-password",
            "INBOX",
            None
        )
        .is_none());
        assert!(imap(
            srv.imaps,
            &format!("ghost{round}@example.org"),
            "wrong-password",
            "INBOX",
            None
        )
        .is_none());
        let out = Command::new("timeout")
            .args([
                "20",
                "sieve-connect",
                "--notlsverify",
                "--nosslverify",
                "-s",
                "127.0.0.1",
                "-p",
            ])
            .arg(srv.managesieve.to_string())
            .args(["-u", "bob@example.org", "--list"])
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                let _ = c.stdin.take().unwrap().write_all(b"wrong-password\n");
                c.wait_with_output()
            })
            .unwrap();
        assert!(!out.status.success());
        // Port 25: relaying, unknown recipients, a client that talks before the greeting, one
        // that speaks HTTP, one that tries AUTH in clear, one that leaves after EHLO.
        let (ok, _) = swaks(
            None,
            &[
                "--server",
                &smtp,
                "--from",
                "spam@example.net",
                "--to",
                "victim@example.com",
            ],
        );
        assert!(!ok);
        let (ok, _) = swaks(
            None,
            &[
                "--server",
                &smtp,
                "--from",
                "spam@example.net",
                "--to",
                "nosuchbox@example.org",
            ],
        );
        assert!(!ok);
        smtp_raw(
            srv.smtp,
            &[
                "EHLO bot.example",
                "MAIL FROM:<a@example.net>",
                "RCPT TO:<bob@example.org>",
            ],
            true,
        );
        smtp_raw(srv.smtp, &["GET / HTTP/1.1", "Host: x", ""], false);
        smtp_raw(
            srv.smtp,
            &["EHLO bot.example", "AUTH LOGIN", "Ym9i", "cGFzcw=="],
            false,
        );
        smtp_raw(srv.smtp, &["EHLO bot.example"], false);
        smtp_raw(
            srv.smtp,
            &[
                "HELO", "HELO", "HELO", "HELO", "HELO", "HELO", "HELO", "HELO", "HELO", "HELO",
                "HELO", "HELO",
            ],
            false,
        );
        // The users: bob reads his mail and sends one.
        assert!(imap(
            srv.imaps,
            "bob@example.org",
            "bob-has-a-long-passphrase",
            "INBOX",
            None
        )
        .is_some());
        let (ok, out) = submit(
            srv.submission,
            "bob@example.org",
            "bob-has-a-long-passphrase",
            "bob@example.org",
            "bob@example.org",
            "hello",
        );
        assert!(ok, "{out}");
    }
    std::thread::sleep(Duration::from_secs(2));
    // Postfix writes to the container's stdout (maillog_file), Dovecot to its stderr.
    let logs = Command::new("docker")
        .args(["logs", &container])
        .output()
        .unwrap();
    assert!(logs.status.success(), "docker logs {container}");
    let all =
        String::from_utf8_lossy(&logs.stdout).into_owned() + &String::from_utf8_lossy(&logs.stderr);
    // Postfix's and Dovecot's lines (the image's other programs log otherwise).
    let mut postfix = String::new();
    let mut dovecot = String::new();
    for l in all.lines() {
        if l.contains(" postfix/") || l.contains(" postfix-") {
            postfix += &format!("{l}\n");
        } else if l.contains(" dovecot: ") {
            dovecot += &format!("{l}\n");
        }
    }
    for (name, body) in [("postfix", &postfix), ("dovecot", &dovecot)] {
        std::fs::write(dir.join(format!("{name}.log")), body).unwrap();
        if let Ok(out) = std::env::var("ILOT_CORPUS_OUT") {
            std::fs::write(Path::new(&out).join(format!("{name}-corpus.log")), body).unwrap();
        }
    }
    drop(ilot);
    for (body, needle) in [
        (&postfix, "SASL LOGIN authentication failed"),
        (&postfix, "SASL PLAIN authentication failed"),
        (&postfix, "Relay access denied"),
        (&postfix, "User unknown"),
        (&postfix, "improper command pipelining"),
        (&postfix, "auth=0/"),
        (
            &dovecot,
            "imap-login: Info: Disconnected: Connection closed (auth failed",
        ),
        (&dovecot, "managesieve-login"),
        (&dovecot, "Password mismatch"),
        (&dovecot, "unknown user"),
        (&dovecot, "no auth attempts"),
        (&dovecot, "imap-login: Info: Login: user=<bob@example.org>"),
    ] {
        assert!(
            body.contains(needle),
            "the corpus has no {needle:?}:\n{body}"
        );
    }
    compare_all(
        "postfix",
        &[
            ("normal", "postfix[mode=extra]"),
            ("aggressive", "postfix[mode=aggressive]"),
        ],
        &dir.join("postfix.log"),
        dir,
    );
    compare_all(
        "dovecot",
        &[
            ("normal", "dovecot[mode=normal]"),
            ("aggressive", "dovecot[mode=aggressive]"),
        ],
        &dir.join("dovecot.log"),
        dir,
    );
}
