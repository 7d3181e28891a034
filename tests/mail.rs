//! The mail app for real: the image images/build.sh builds from Debian's Postfix, Dovecot and
//! rspamd, installed on the test engine with its ports on free host ports. swaks sends, curl
//! reads over IMAPS, Python's dkim module (dkimpy) verifies signatures against the key ilot
//! publishes, and a stand-in smarthost (tests/common/smarthost.py: STARTTLS + AUTH) plays the
//! ISP relay. The ban test runs a client in its own network namespace, so the mail server
//! sees its real address.

mod common;
use common::mail::*;
use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BOB_PW: &str = "bob-secret-passphrase";
const ANN_PW: &str = "ann-secret-passphrase";

/// An IMAP session (logged in as bob) and an SMTP session (after EHLO), kept open by a
/// Python process until `finish`, which uses both and reports.
struct Sessions(Child);

fn open_sessions(imaps: u16, smtp: u16) -> Sessions {
    use std::io::BufRead;
    let script = format!(
        "import imaplib, smtplib, ssl, sys\n\
         ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n\
         i = imaplib.IMAP4_SSL('127.0.0.1', {imaps}, ssl_context=ctx); i.login('bob@example.org', '{BOB_PW}')\n\
         s = smtplib.SMTP('127.0.0.1', {smtp}, timeout=20); s.ehlo('client.example.net')\n\
         print('ready', flush=True); sys.stdin.readline()\n\
         typ, _ = i.select('INBOX'); print('imap', 'ok' if typ == 'OK' else typ, flush=True)\n\
         s.sendmail('alice@example.net', ['bob@example.org'], b'Subject: kept\\r\\n\\r\\nsame session\\r\\n'); print('smtp ok', flush=True)\n"
    );
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "the sessions could not be opened");
    Sessions(child)
}

impl Sessions {
    fn finish(&mut self) -> String {
        use std::io::{Read, Write};
        self.0.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let mut out = String::new();
        self.0
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let _ = self.0.wait();
        out
    }
}

impl Drop for Sessions {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The stand-in ISP relay, killed on drop.
struct Smarthost {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Smarthost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn smarthost(user: &str, password: &str) -> Smarthost {
    use std::io::BufRead;
    let dir = PathBuf::from(format!("/tmp/ilot-smarthost-{}", unique("")));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=smarthost.test",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "openssl could not make the smarthost's certificate"
    );
    // On every address: the mail container reaches it through its network's gateway.
    let mut child = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/common/smarthost.py"
        ))
        .args(["0.0.0.0", user, password])
        .arg(&cert)
        .arg(&key)
        .arg(&dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().expect("smarthost port");
    Smarthost { child, port, dir }
}

impl Smarthost {
    /// How many messages it accepted.
    fn count(&self) -> usize {
        std::fs::read_dir(&self.dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "eml"))
            })
            .count()
    }

    /// The n-th message it accepted (1-based): (raw message, envelope).
    fn message(&self, n: usize) -> Option<(Vec<u8>, Value)> {
        let raw = std::fs::read(self.dir.join(format!("{n}.eml"))).ok()?;
        let env = std::fs::read_to_string(self.dir.join(format!("{n}.json"))).ok()?;
        Some((raw, serde_json::from_str(&env).unwrap()))
    }
}

/// The gateway of the instance's network: how its containers reach the host.
fn gateway(instance: &str) -> String {
    docker_ok(&[
        "network",
        "inspect",
        &format!("ilot-{instance}"),
        "--format",
        "{{(index .IPAM.Config 0).Gateway}}",
    ])
}

/// The DKIM-Signature's selector, and whether dkimpy verifies the message with `txt` as the
/// answer to every TXT lookup of that selector. `what` names the message in a failure, which
/// shows the message's header.
fn dkim_verify(what: &str, raw: &[u8], txt: &BTreeMapTxt) -> (String, bool) {
    let text = String::from_utf8_lossy(raw);
    let header: String = {
        let Some(start) = text.find("DKIM-Signature:") else {
            let head = text.split("\r\n\r\n").next().unwrap_or_default();
            panic!("{what}: no DKIM-Signature in the relayed message, whose header is:\n{head}");
        };
        let mut h = String::new();
        for (i, l) in text[start..].lines().enumerate() {
            if i > 0 && !l.starts_with([' ', '\t']) {
                break;
            }
            h.push_str(l);
        }
        h
    };
    let tag = |t: &str| {
        header
            .split(';')
            .find_map(|p| {
                p.trim()
                    .strip_prefix(&format!("{t}="))
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    assert_eq!(tag("d"), "example.org", "{what}: {header}");
    let selector = tag("s");
    let dir = std::env::temp_dir().join(format!("ilot-dkim-{}", unique("")));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("msg.eml"), raw).unwrap();
    std::fs::write(dir.join("txt.json"), serde_json::to_string(&txt.0).unwrap()).unwrap();
    let script = "import dkim, json, sys\n\
        txt = json.load(open(sys.argv[2]))\n\
        def dns(name, timeout=5):\n    v = txt.get(name.decode().rstrip('.'))\n    return v.encode() if v else None\n\
        print(dkim.verify(open(sys.argv[1], 'rb').read(), dnsfunc=dns))\n";
    // Debian's Python, where python3-dkim is (not a python3 earlier in PATH, e.g. pyenv's).
    let out = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(dir.join("msg.eml"))
        .arg(dir.join("txt.json"))
        .output()
        .expect("python3");
    let _ = std::fs::remove_dir_all(&dir);
    let verdict = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what}: dkimpy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (selector, verdict.trim() == "True")
}

/// name -> TXT value, as published.
struct BTreeMapTxt(std::collections::BTreeMap<String, String>);

/// The DKIM records `ilot dns show` publishes.
fn published_dkim(ilot: &Ilot) -> BTreeMapTxt {
    let v = ilot.json(&["dns", "show", "example.org"]);
    let mut out = std::collections::BTreeMap::new();
    for r in v["records"].as_array().unwrap() {
        let name = r["name"].as_str().unwrap().trim_end_matches('.');
        if r["type"] == "TXT" && name.contains("._domainkey.") {
            let value: String = r["value"]
                .as_str()
                .unwrap()
                .split('"')
                .skip(1)
                .step_by(2)
                .collect();
            out.insert(name.to_string(), value);
        }
    }
    BTreeMapTxt(out)
}

#[test]
fn mail_is_delivered_read_submitted_signed_relayed_and_exported() {
    let mut ilot = Ilot::start();
    let srv = install(&ilot);

    // The mail domain comes from the server's name; mailboxes, with passwords on stdin.
    let domains = ilot.json(&mc(&srv.name, &["domain", "list"]));
    assert_eq!(domains["domains"][0]["domain"], "example.org", "{domains}");
    assert_eq!(domains["domains"][0]["dkim_selector"], "ilot1", "{domains}");
    add_user(&ilot, "bob@example.org", BOB_PW);
    ok_with_stdin(
        &ilot,
        &mc(
            &srv.name,
            &["user", "add", "Ann@Example.org", "--quota", "1G"],
        ),
        &format!("{ANN_PW}\n"),
    );

    // Bad input: a clear error, nothing changed.
    let bad = |args: &[&str], stdin: &str, says: &str| {
        let out = with_stdin(&ilot, &mc(&srv.name, args), stdin);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    };
    bad(
        &["user", "add", "bob@example.org"],
        "another-passphrase\n",
        "already exists",
    );
    bad(
        &["user", "add", "carl@example.net"],
        "another-passphrase\n",
        "not a mail domain",
    );
    bad(
        &["user", "add", "carl example.org"],
        "another-passphrase\n",
        "not a mail address",
    );
    bad(
        &["user", "add", "carl@example.org"],
        "short\n",
        "shorter than 10",
    );
    bad(
        &["user", "add", "carl@example.org"],
        "",
        "no password on stdin",
    );
    bad(
        &["user", "add", "carl@example.org", "--password", "x"],
        "",
        "--password",
    );
    bad(
        &["alias", "add", "bob@example.org", "ann@example.org"],
        "",
        "is a mailbox",
    );
    bad(
        &["domain", "remove", "example.org"],
        "",
        "still has 2 mailbox(es)",
    );
    bad(
        &["relay", "set", "smtp.isp.net", "--user", "u"],
        "pw\n",
        "HOST:PORT",
    );
    let users = ilot.json(&mc(&srv.name, &["user", "list"]));
    assert_eq!(users["users"].as_array().unwrap().len(), 2, "{users}");
    assert_eq!(
        users["users"][0]["address"], "ann@example.org",
        "lowercased: {users}"
    );
    assert_eq!(users["users"][0]["quota"], 1u64 << 30, "{users}");
    assert!(
        !users.to_string().contains("ARGON2"),
        "no hash in --json: {users}"
    );
    let stored =
        std::fs::read_to_string(ilot.dir.join(format!("state/mail/{}/users", srv.name))).unwrap();
    assert!(
        stored.contains("bob@example.org:{ARGON2ID}$argon2id$"),
        "{stored}"
    );
    assert!(!stored.contains(BOB_PW));
    assert_eq!(
        path_mode(&ilot.dir.join(format!("state/mail/{}/users", srv.name))),
        0o640
    );

    // Inbound on port 25, read back over IMAPS.
    deliver(
        srv.smtp,
        "bob@example.org",
        "first",
        "hello bob, from alice",
    );
    let uids = wait_until("delivered to bob", 30, || {
        Some(search(
            srv.imaps,
            "bob@example.org",
            BOB_PW,
            "SUBJECT first",
        ))
        .filter(|u| !u.is_empty())
    });
    let body = imap(
        srv.imaps,
        "bob@example.org",
        BOB_PW,
        &format!("{};UID={}", uids[0].0, uids[0].1),
        None,
    )
    .unwrap();
    assert!(body.contains("hello bob, from alice"), "{body}");
    assert!(
        body.contains("Authentication-Results") || body.contains("X-Spam"),
        "rspamd checked it: {body}"
    );
    // Not an open relay: mail for others is refused on port 25.
    let (ok, out) = swaks(
        None,
        &[
            "--server",
            &format!("127.0.0.1:{}", srv.smtp),
            "--from",
            "x@example.net",
            "--to",
            "victim@example.com",
        ],
    );
    assert!(!ok && out.contains("Relay access denied"), "{out}");

    // Changes apply without dropping connections: an IMAP session and an SMTP session opened
    // before the next change (which reloads Postfix and Dovecot) carry on after it.
    let mut sessions = open_sessions(srv.imaps, srv.smtp);
    // An alias and a catch-all; a mailbox is not swallowed by the catch-all.
    ilot.ok(&mc(
        &srv.name,
        &["alias", "add", "info@example.org", "bob@example.org"],
    ));
    let carried_on = sessions.finish();
    assert_eq!(
        carried_on, "imap ok\nsmtp ok\n",
        "sessions opened before the reload"
    );
    ilot.ok(&mc(
        &srv.name,
        &["alias", "add", "@example.org", "ann@example.org"],
    ));
    deliver(srv.smtp, "info@example.org", "to-info", "for the family");
    deliver(srv.smtp, "whoever@example.org", "to-anyone", "caught");
    deliver(srv.smtp, "bob@example.org", "to-bob-again", "still bob's");
    wait_until("the alias reaches bob", 30, || {
        Some(()).filter(|_| {
            search(
                srv.imaps,
                "bob@example.org",
                BOB_PW,
                "OR SUBJECT to-info SUBJECT to-bob-again",
            )
            .len()
                == 2
        })
    });
    wait_until("the catch-all reaches ann", 30, || {
        Some(()).filter(|_| {
            search(srv.imaps, "ann@example.org", ANN_PW, "SUBJECT to-anyone").len() == 1
        })
    });
    assert!(search(srv.imaps, "ann@example.org", ANN_PW, "SUBJECT to-bob-again").is_empty());

    // Submission through a relay that is down (the ISP's smarthost, say): bob's message
    // waits in the queue.
    let closed = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = format!("{}:{closed}", gateway(&srv.name));
    ok_with_stdin(
        &ilot,
        &mc(&srv.name, &["relay", "set", &down, "--user", "family"]),
        "relay-password-1\n",
    );
    let (ok, out) = submit(
        srv.submission,
        "bob@example.org",
        BOB_PW,
        "bob@example.org",
        "friend@example.net",
        "outbound",
    );
    assert!(ok, "{out}");
    let (ok, out) = submit(
        srv.submission,
        "bob@example.org",
        BOB_PW,
        "ann@example.org",
        "friend@example.net",
        "forged",
    );
    assert!(
        !ok && out.contains("not owned by user"),
        "bob may not send as ann: {out}"
    );
    let queue = wait_until("queued", 30, || {
        let q = ilot.json(&mc(&srv.name, &["queue"]));
        Some(q).filter(|q| q["count"] == 1 && !q["messages"][0]["reason"].is_null())
    });
    assert_eq!(
        queue["messages"][0]["to"][0], "friend@example.net",
        "{queue}"
    );

    // The relay comes up: the queued message leaves through it, authenticated over TLS,
    // and its signature verifies against the key in DNS.
    let relay = smarthost("family", "relay-password-1");
    let target = format!("{}:{}", gateway(&srv.name), relay.port);
    let out = ok_with_stdin(
        &ilot,
        &mc(&srv.name, &["relay", "set", &target, "--user", "family"]),
        "relay-password-1\n",
    );
    assert!(out.contains("TLS required"), "{out}");
    let shown = ilot.json(&mc(&srv.name, &["relay", "show"]));
    assert!(!shown.to_string().contains("relay-password-1"), "{shown}");
    ilot.ok(&mc(&srv.name, &["queue", "--flush"]));
    let (raw, envelope) = wait_until("relayed", 30, || relay.message(1));
    assert_eq!(envelope["user"], "family", "{envelope}");
    assert_eq!(envelope["tls"], true, "{envelope}");
    assert!(
        envelope["to"][0]
            .as_str()
            .unwrap()
            .contains("friend@example.net"),
        "{envelope}"
    );
    let (selector, valid) = dkim_verify("the submitted message", &raw, &published_dkim(&ilot));
    assert_eq!(selector, "ilot1");
    assert!(
        valid,
        "the DKIM signature verifies against the published key"
    );
    wait_until("the queue empties", 20, || {
        Some(()).filter(|_| ilot.json(&mc(&srv.name, &["queue"]))["count"] == 0)
    });

    // Export bob's mailbox, import it into ann's: she reads his messages.
    let out_dir = PathBuf::from(format!("/tmp/ilot-mail-export-{}", unique("")));
    std::fs::create_dir_all(&out_dir).unwrap();
    let tar = out_dir.join("bob.tar");
    let tar_s = tar.to_str().unwrap();
    ilot.ok(&mc(
        &srv.name,
        &["export", "bob@example.org", "--output", tar_s],
    ));
    assert_eq!(path_mode(&tar), 0o600);
    let listing = Command::new("tar").args(["-tf", tar_s]).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing
            .lines()
            .filter(|l| l.contains("/cur/") || l.contains("/new/"))
            .filter(|l| !l.ends_with('/'))
            .count()
            >= 4,
        "{listing}"
    );
    bad(
        &["export", "bob@example.org", "--output", tar_s],
        "",
        "never overwritten",
    );
    let imported = ilot.json(&mc(&srv.name, &["import", "ann@example.org", tar_s]));
    assert_eq!(imported["messages"], 4, "bob has 4 messages: {imported}");
    wait_until("bob's mail in ann's box", 20, || {
        Some(())
            .filter(|_| search(srv.imaps, "ann@example.org", ANN_PW, "SUBJECT first").len() == 1)
    });
    // A hostile archive (a path out of the Maildir) is refused before it reaches the container.
    let evil = out_dir.join("evil.tar");
    std::fs::create_dir_all(out_dir.join("x/Maildir")).unwrap();
    std::fs::write(out_dir.join("x/passwd"), "root::0:0::/:/bin/sh\n").unwrap();
    let st = Command::new("tar")
        .args([
            "-C",
            out_dir.join("x/Maildir").to_str().unwrap(),
            "-cf",
            evil.to_str().unwrap(),
            "--absolute-names",
            "../passwd",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    bad(
        &["import", "ann@example.org", evil.to_str().unwrap()],
        "",
        "outside Maildir",
    );

    // Wrong passwords are refused (last: Dovecot then slows logins from this address).
    let (ok, out) = submit(
        srv.submission,
        "bob@example.org",
        "wrong-password!",
        "bob@example.org",
        "friend@example.net",
        "x",
    );
    assert!(!ok && out.contains("535"), "{out}");
    assert!(imap(
        srv.imaps,
        "bob@example.org",
        "wrong-password!",
        "INBOX",
        Some("UID SEARCH ALL")
    )
    .is_none());

    // The container can be recreated at any time: the mail stays.
    let container = format!("ilot-{}-mail", srv.name);
    docker_ok(&["rm", "-f", &container]);
    ilot.restart();
    let show = ilot.json(&["app", "show", &srv.name]);
    let imaps: u16 = show["services"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["container"] == 993)
        .and_then(|p| p["host"].as_str()?.rsplit(':').next()?.parse().ok())
        .unwrap();
    wait_until(
        "mail still there after the container was recreated",
        60,
        || {
            Some(())
                .filter(|_| search(imaps, "bob@example.org", BOB_PW, "SUBJECT first").len() == 1)
        },
    );

    // A password change applies at the next login, and the old one stops working.
    ok_with_stdin(
        &ilot,
        &mc(&srv.name, &["user", "passwd", "bob@example.org"]),
        "a-brand-new-passphrase\n",
    );
    assert!(imap(
        imaps,
        "bob@example.org",
        BOB_PW,
        "INBOX",
        Some("UID SEARCH ALL")
    )
    .is_none());
    assert!(imap(
        imaps,
        "bob@example.org",
        "a-brand-new-passphrase",
        "INBOX",
        Some("UID SEARCH ALL")
    )
    .is_some());
    let _ = std::fs::remove_dir_all(&out_dir);
}

#[test]
fn dkim_rotation_never_signs_with_a_key_that_is_not_published() {
    // ilot serves example.org itself and asks its own server whether the new key resolves.
    // The old key retires 10 s after the switch: long enough to see it still published once
    // the switch shows, on a loaded machine too.
    let dns_port = {
        let l = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let ilot = Ilot::start_full(
        &[],
        &format!(
            "[host]\nipv4 = \"203.0.113.10\"\n\n[dns]\nlisten = [\"127.0.0.1:{dns_port}\"]\nresolvers = [\"127.0.0.1:{dns_port}\"]\n\n\
             [[dns.zones]]\nname = \"example.org\"\nmode = \"serve\"\n\n\
             [mail]\ndkim_retire_after = \"10s\"\ndkim_check_every = \"1s\"\n"
        ),
    );
    let srv = install(&ilot);
    add_user(&ilot, "bob@example.org", BOB_PW);
    let relay = smarthost("family", "relay-password-1");
    let target = format!("{}:{}", gateway(&srv.name), relay.port);
    ok_with_stdin(
        &ilot,
        &mc(&srv.name, &["relay", "set", &target, "--user", "family"]),
        "relay-password-1\n",
    );
    // What the world sees: the served zone, asked with dig.
    let dig = |selector: &str| -> String {
        let out = Command::new("dig")
            .args([
                "+short",
                "-p",
                &dns_port.to_string(),
                "@127.0.0.1",
                "TXT",
                &format!("{selector}._domainkey.example.org"),
            ])
            .output()
            .expect("dig");
        String::from_utf8_lossy(&out.stdout)
            .replace("\" \"", "")
            .replace('"', "")
            .trim()
            .to_string()
    };
    let mut sent = 0;
    // Sends one message and checks it is signed with a key the DNS serves, now.
    let mut send_and_check = |label: &str| -> String {
        let (ok, out) = submit(
            srv.submission,
            "bob@example.org",
            BOB_PW,
            "bob@example.org",
            "friend@example.net",
            label,
        );
        assert!(ok, "{out}");
        sent += 1;
        let (raw, _) = wait_until(label, 30, || relay.message(sent));
        let selector = dkim_verify(label, &raw, &BTreeMapTxt(Default::default())).0;
        let published = dig(&selector);
        assert!(
            published.starts_with("v=DKIM1"),
            "{label}: signed with {selector}, which DNS does not serve"
        );
        let txt = BTreeMapTxt([(format!("{selector}._domainkey.example.org"), published)].into());
        assert!(
            dkim_verify(label, &raw, &txt).1,
            "{label}: the signature does not verify with the served key"
        );
        selector
    };
    assert_eq!(send_and_check("before"), "ilot1");

    let out = ilot.ok(&mc(&srv.name, &["dkim", "rotate", "example.org"]));
    assert!(out.contains("ilot2"), "{out}");
    // Right after: whichever key signs is served (the old one until the new one resolves).
    send_and_check("during");
    wait_until("signing switches to ilot2", 30, || {
        Some(()).filter(|_| {
            ilot.json(&mc(&srv.name, &["dkim", "show"]))["domains"][0]["signing"] == "ilot2"
        })
    });
    assert!(
        dig("ilot1").starts_with("v=DKIM1"),
        "the old key stays published for a while"
    );
    assert_eq!(send_and_check("after"), "ilot2");
    wait_until("the old key is withdrawn", 30, || {
        Some(()).filter(|_| dig("ilot1").is_empty())
    });
    assert_eq!(send_and_check("later"), "ilot2");
    // A signer that cannot sign (here: its key is gone) defers the message, which the client
    // sends again later: it is never relayed unsigned.
    let key = ilot.dir.join(format!(
        "state/mail/{}/dkim/example.org.ilot2.key",
        srv.name
    ));
    let aside = key.with_extension("aside");
    std::fs::rename(&key, &aside).unwrap();
    let (ok, out) = submit(
        srv.submission,
        "bob@example.org",
        BOB_PW,
        "bob@example.org",
        "friend@example.net",
        "unsignable",
    );
    std::fs::rename(&aside, &key).unwrap();
    assert!(
        !ok && out.contains(" 451 4.7.1 DKIM signing for example.org is not ready"),
        "deferred, not sent: {out}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        relay.count(),
        4,
        "nothing relayed but the 4 signed messages"
    );
    assert_eq!(send_and_check("signable again"), "ilot2");
    let events = ilot.ok(&["events"]);
    assert!(
        events.contains("mail is now signed with ilot2") && events.contains("ilot1 is withdrawn"),
        "{events}"
    );

    // A key that cannot be seen in DNS never signs: example.net is not served here.
    ilot.ok(&mc(&srv.name, &["domain", "add", "example.net"]));
    ilot.ok(&mc(&srv.name, &["dkim", "rotate", "example.net"]));
    let err = ilot.fails(&mc(&srv.name, &["dkim", "rotate", "example.net"]), 2);
    assert!(err.contains("already waiting for ilot2"), "{err}");
    std::thread::sleep(Duration::from_secs(3));
    let show = ilot.json(&mc(&srv.name, &["dkim", "show"]));
    let net = show["domains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["domain"] == "example.net")
        .unwrap()
        .clone();
    assert_eq!(
        (net["signing"].as_str(), net["pending"].as_str()),
        (Some("ilot1"), Some("ilot2")),
        "{show}"
    );
}

/// A client namespace joined to the host by a veth pair (10.79.N.2 -> host 10.79.N.1), so
/// its connections reach published ports with their own address. Removed on drop.
struct ClientNs {
    ns: String,
    /// The host's end of the veth pair.
    host_if: String,
    host_ip: String,
    client_ip: String,
}

impl Drop for ClientNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

fn client_ns() -> ClientNs {
    let id = unique("");
    let ns = format!("ilot-test-m{id}");
    // A subnet per namespace: a random start for this process, then the next ones (never
    // twice in a run).
    static BASE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let base = *BASE.get_or_init(|| u32::from_str_radix(&id[..2], 16).unwrap());
    let step = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let n = (base + step) % 200 + 20;
    let (host_ip, client_ip) = (format!("10.79.{n}.1"), format!("10.79.{n}.2"));
    let (vh, vc) = (format!("vh{id}"), format!("vc{id}"));
    let run = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["netns", "add", &ns]);
    let c = ClientNs {
        ns: ns.clone(),
        host_if: vh.clone(),
        host_ip: host_ip.clone(),
        client_ip: client_ip.clone(),
    };
    run(&[
        "link", "add", &vh, "type", "veth", "peer", "name", &vc, "netns", &ns,
    ]);
    run(&["addr", "add", &format!("{host_ip}/24"), "dev", &vh]);
    run(&["link", "set", &vh, "up"]);
    run(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{client_ip}/24"),
        "dev",
        &vc,
    ]);
    run(&["-n", &ns, "link", "set", &vc, "up"]);
    run(&["-n", &ns, "link", "set", "lo", "up"]);
    run(&["-n", &ns, "route", "add", "default", "via", &host_ip]);
    c
}

/// The host's `inet ilot` table, which this test's firewall makes (its drop only on the test's
/// veth; the guard's sets need the table): deleted at the end.
struct HostTable;
impl Drop for HostTable {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", "ilot"])
            .status();
    }
}

#[test]
fn wrong_mail_passwords_from_one_address_end_in_a_ban() {
    let _table = HostTable;
    let client = client_ns();
    let ilot = Ilot::start_full(
        &[],
        &format!(
            "[firewall]\nenabled = true\ninterfaces = [\"{}\"]\n\n\
             [guard]\nenabled = true\n\n[guard.jails.sshd]\nenabled = false\n\n\
             [guard.defaults]\nmaxretry = 3\nfindtime = \"10m\"\nbantime = \"1h\"\n",
            client.host_if
        ),
    );
    let srv = install(&ilot);
    add_user(&ilot, "bob@example.org", BOB_PW);
    let server = format!("{}:{}", client.host_ip, srv.submission);
    let wrong = |n: usize| {
        let (ok, out) = swaks(
            Some(&client.ns),
            &[
                "--server",
                &server,
                "--tls",
                "--auth",
                "PLAIN",
                "--auth-user",
                "bob@example.org",
                "--auth-password",
                &format!("guess-{n}"),
                "--from",
                "bob@example.org",
                "--to",
                "x@example.net",
                // Dovecot answers each further failure from one address later (2, 4, 8 s);
                // Postfix may give up waiting first (454; the attempt still counts).
                "--timeout",
                "20",
            ],
        );
        assert!(
            !ok && (out.contains("535") || out.contains("454")),
            "refused as a wrong password: {out}"
        );
        out
    };
    let first = wrong(0);
    assert!(
        first.contains("535"),
        "the client reaches the server and is refused: {first}"
    );
    for n in 1..3 {
        wrong(n);
    }
    let net = format!("{}/32", client.client_ip);
    let ban = wait_until("the guessing address is banned", 30, || {
        let list = ilot.json(&["ban", "list"]);
        list["bans"]
            .as_array()?
            .iter()
            .find(|b| b["address"] == net.as_str())
            .cloned()
    });
    // Postfix asks Dovecot to check SASL passwords: both log the failure, either jail bans.
    let jail = ban["jail"].as_str().unwrap();
    assert!(
        jail == format!("{}-postfix", srv.name) || jail == format!("{}-dovecot", srv.name),
        "{ban}"
    );
    // Its connections are dropped now; bob, from elsewhere, still sends.
    let (ok, out) = swaks(
        Some(&client.ns),
        &[
            "--server",
            &server,
            "--quit-after",
            "CONNECT",
            "--timeout",
            "3",
        ],
    );
    assert!(!ok, "a banned address still connects: {out}");
    let (ok, out) = submit(
        srv.submission,
        "bob@example.org",
        BOB_PW,
        "bob@example.org",
        "friend@example.net",
        "still works",
    );
    assert!(ok, "{out}");
    // IMAP guesses are counted by the dovecot jail (the address is already dropped, so they
    // come from another client).
    let other = client_ns();
    for n in 0..3 {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &other.ns,
                "curl",
                "-sk",
                "--max-time",
                "40",
                "--user",
                &format!("bob@example.org:guess-{n}"),
            ])
            .arg(format!("imaps://{}:{}/INBOX", other.host_ip, srv.imaps))
            .output()
            .unwrap();
        assert!(!out.status.success());
    }
    let net = format!("{}/32", other.client_ip);
    let ban = wait_until("the IMAP guesser is banned", 30, || {
        let list = ilot.json(&["ban", "list"]);
        list["bans"]
            .as_array()?
            .iter()
            .find(|b| b["address"] == net.as_str())
            .cloned()
    });
    assert_eq!(ban["jail"], format!("{}-dovecot", srv.name), "{ban}");
}

#[test]
fn apps_that_send_mail_get_an_account_on_the_mail_server() {
    let mut ilot = Ilot::start();
    // A stand-in for an app that sends mail (Nextcloud, Ghost...): the demo image, with the
    // SMTP settings ilot gives it in its environment.
    let dir = ilot.dir.join("catalog/sender");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("app.toml"),
        "name = \"sender\"\nversion = \"1.0\"\ndescription = \"sends mail\"\n\n\
         [services.web]\nimage = \"ilot/hello:1.0\"\nbuild = \"hello\"\nuser = \"10001:10001\"\n\
         ports = [{ container = 8080 }]\n\
         env = { SMTP_HOST = \"{{smtp.host}}\", SMTP_PORT = \"{{smtp.port}}\", SMTP_USER = \"{{smtp.user}}\", SMTP_PASSWORD = \"{{smtp.password}}\", SMTP_FROM = \"{{smtp.from}}\" }\n\n\
         [needs]\nsmtp = true\n",
    )
    .unwrap();
    ilot.restart();
    let srv = install(&ilot);
    add_user(&ilot, "bob@example.org", BOB_PW);
    let app = unique("sender");
    ilot.ok(&["app", "install", "sender", "--name", &app]);
    let container = format!("ilot-{app}-web");
    let env: Vec<String> = serde_json::from_str(&docker_ok(&[
        "inspect",
        &container,
        "--format",
        "{{json .Config.Env}}",
    ]))
    .unwrap();
    let var = |k: &str| {
        env.iter()
            .find_map(|e| e.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} not in {env:?}"))
            .to_string()
    };
    let user = format!("{app}@example.org");
    assert_eq!(var("SMTP_HOST"), "mail.example.org");
    assert_eq!(var("SMTP_PORT"), srv.submission.to_string());
    assert_eq!(var("SMTP_USER"), user);
    assert_eq!(var("SMTP_FROM"), user);
    let password = var("SMTP_PASSWORD");
    assert_eq!(password.len(), 32);
    let show = ilot.ok(&["app", "show", &app, "--json"]);
    assert!(
        !show.contains(&password),
        "the password is not shown: {show}"
    );
    // From inside the app's container, the server's name reaches the submission port.
    let greeting = docker_ok(&[
        "exec",
        &container,
        "sh",
        "-c",
        &format!("echo QUIT | nc -w 5 mail.example.org {}", srv.submission),
    ]);
    assert!(greeting.starts_with("220 "), "{greeting}");
    // The account sends mail, as itself.
    let (ok, out) = submit(
        srv.submission,
        &user,
        &password,
        &user,
        "bob@example.org",
        "from-the-app",
    );
    assert!(ok, "{out}");
    wait_until("the app's mail reaches bob", 30, || {
        Some(()).filter(|_| {
            search(srv.imaps, "bob@example.org", BOB_PW, "SUBJECT from-the-app").len() == 1
        })
    });
    // Removing the app removes its account.
    ilot.ok(&["app", "remove", &app, "--purge"]);
    let users = ilot.json(&mc(&srv.name, &["user", "list"]));
    assert!(!users.to_string().contains(&user), "{users}");
}

/// What the world sees of one mail server agrees with itself: it greets with the name the
/// host's PTR gives (and `ilot diagnose` compares the two as a receiver would: the greeting
/// read on port 25, the PTR and its A through a real BIND); postmaster@, abuse@ and
/// hostmaster@ accept mail for every domain, and the reports DNS asks for go only where mail
/// is accepted; a relay brings its SPF; mail clients find their servers.
#[test]
fn one_name_role_addresses_relay_spf_and_client_autoconfig() {
    let dir = PathBuf::from(format!("/tmp/ilot-test-named-{}", unique("")));
    std::fs::create_dir_all(&dir).unwrap();
    let soa = |z: &str| {
        format!("$TTL 300\n$ORIGIN {z}.\n@ IN SOA ns.example.org. hostmaster.example.org. 1 3600 900 1209600 300\n@ IN NS ns.example.org.\n")
    };
    let forward = format!(
        "{}ns IN A 192.0.2.53\nmx IN A 203.0.113.10\nmail IN A 203.0.113.10\n",
        soa("example.org")
    );
    let reverse = |name: &str| format!("{}10 IN PTR {name}.\n", soa("113.0.203.in-addr.arpa"));
    let mut named = common::named::Named::start(
        &dir,
        &[
            ("example.org", forward),
            ("113.0.203.in-addr.arpa", reverse("mx.example.org")),
        ],
    );
    let ilot = Ilot::start_full(
        &[],
        &format!(
            "[host]\nipv4 = \"203.0.113.10\"\nhostname = \"mx.example.org\"\n\n[dns]\n\
             resolvers = [\"127.0.0.1:{}\"]\nblocklists = []\nsmtp_probe = \"127.0.0.1:9\"\n",
            named.port
        ),
    );
    let srv = install(&ilot);
    let records = |ilot: &Ilot| ilot.json(&["dns", "show", "example.org"]);
    let txt_at = |v: &Value, name: &str| -> Vec<String> {
        v["records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["name"] == name && r["type"] == "TXT")
            .map(|r| r["value"].as_str().unwrap().to_string())
            .collect()
    };

    // No mailbox yet: postmaster@ would bounce, so no report is asked for, and ilot says why.
    let v = records(&ilot);
    assert_eq!(
        txt_at(&v, "_dmarc.example.org."),
        ["\"v=DMARC1; p=quarantine\""],
        "{v}"
    );
    assert!(txt_at(&v, "_smtp._tls.example.org.").is_empty(), "{v}");
    assert!(
        v["findings"].to_string().contains("postmaster@example.org"),
        "{v}"
    );

    // The first mailbox receives every role address; each is refused removal.
    add_user(&ilot, "bob@example.org", BOB_PW);
    add_user(&ilot, "ann@example.org", ANN_PW);
    for role in ["postmaster", "abuse", "hostmaster"] {
        let to = format!("{role}@example.org");
        deliver(srv.smtp, &to, &format!("for the {role}"), "a report");
        let err = ilot.fails(&mc(&srv.name, &["alias", "remove", &to]), 2);
        assert!(err.contains("role address"), "{err}");
    }
    for role in ["postmaster", "abuse", "hostmaster"] {
        let subject = format!("for the {role}");
        wait_until(&format!("{role}@ delivered to bob"), 60, || {
            (!search(
                srv.imaps,
                "bob@example.org",
                BOB_PW,
                &format!("SUBJECT \"{subject}\""),
            )
            .is_empty())
            .then_some(())
        });
    }
    let v = records(&ilot);
    assert_eq!(
        txt_at(&v, "_dmarc.example.org."),
        ["\"v=DMARC1; p=quarantine; rua=mailto:postmaster@example.org\""]
    );
    assert_eq!(
        txt_at(&v, "_smtp._tls.example.org."),
        ["\"v=TLSRPTv1; rua=mailto:postmaster@example.org\""]
    );
    // The admin may point postmaster@ elsewhere with an alias; abuse@ still goes to bob.
    ilot.ok(&mc(
        &srv.name,
        &["alias", "add", "postmaster@example.org", "ann@example.org"],
    ));
    deliver(srv.smtp, "postmaster@example.org", "to ann now", "x");
    wait_until("postmaster@ delivered to ann", 60, || {
        (!search(
            srv.imaps,
            "ann@example.org",
            ANN_PW,
            "SUBJECT \"to ann now\"",
        )
        .is_empty())
        .then_some(())
    });

    // One name: the server greets with [host] hostname, the PTR's name.
    let (ok, talk) = swaks(
        None,
        &[
            "--server",
            &format!("127.0.0.1:{}", srv.smtp),
            "--quit-after",
            "EHLO",
        ],
    );
    assert!(
        ok && talk.contains("<-  220 mx.example.org ESMTP"),
        "{talk}"
    );
    let diagnose = |ilot: &Ilot| {
        let out = ilot.cli(&["diagnose", "mail", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        v["checks"].as_array().unwrap().clone()
    };
    let find = |checks: &[Value], subject: &str| {
        checks
            .iter()
            .find(|c| c["subject"] == subject)
            .unwrap_or_else(|| panic!("no check {subject}: {checks:?}"))
            .clone()
    };
    let checks = diagnose(&ilot);
    let greeting = find(&checks, &format!("SMTP greeting of {}", srv.name));
    assert!(
        greeting["status"] == "ok"
            && greeting["seen"]
                .as_str()
                .unwrap()
                .starts_with("mx.example.org"),
        "{greeting}"
    );
    let ptr = find(&checks, "reverse DNS of 203.0.113.10");
    assert_eq!(ptr["status"], "ok", "{ptr}");
    // The PTR names another host (which resolves back): diagnose compares it with what the
    // server says, and tells which setting makes them one.
    std::fs::write(
        named.dir.join("113.0.203.in-addr.arpa.zone"),
        reverse("mail.example.org"),
    )
    .unwrap();
    named.reload();
    let checks = diagnose(&ilot);
    let ptr = find(&checks, "reverse DNS of 203.0.113.10");
    assert!(
        ptr["status"] == "fail"
            && ptr["seen"]
                .as_str()
                .unwrap()
                .contains("says HELO mx.example.org")
            && ptr["fix"]
                .as_str()
                .unwrap()
                .contains("[host] hostname = \"mail.example.org\""),
        "{ptr}"
    );

    // A relay: SPF includes its servers (known for a well-known relay, given for others).
    ok_with_stdin(
        &ilot,
        &mc(
            &srv.name,
            &["relay", "set", "smtp.sendgrid.net:587", "--user", "apikey"],
        ),
        "relay-password-1\n",
    );
    assert_eq!(
        txt_at(&records(&ilot), "example.org."),
        ["\"v=spf1 mx include:sendgrid.net -all\""]
    );
    let said = ok_with_stdin(
        &ilot,
        &mc(
            &srv.name,
            &["relay", "set", "smtp.isp.example:587", "--user", "me"],
        ),
        "relay-password-2\n",
    );
    assert!(said.contains("--spf-include"), "{said}");
    let v = records(&ilot);
    assert_eq!(txt_at(&v, "example.org."), ["\"v=spf1 mx -all\""]);
    assert!(
        v["findings"].to_string().contains("smtp.isp.example"),
        "{v}"
    );
    let out = with_stdin(
        &ilot,
        &mc(
            &srv.name,
            &[
                "relay",
                "set",
                "smtp.isp.example:587",
                "--user",
                "me",
                "--spf-include",
                "not a domain",
            ],
        ),
        "relay-password-2\n",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--spf-include"));
    ok_with_stdin(
        &ilot,
        &mc(
            &srv.name,
            &[
                "relay",
                "set",
                "smtp.isp.example:587",
                "--user",
                "me",
                "--spf-include",
                "_spf.isp.example",
            ],
        ),
        "relay-password-2\n",
    );
    assert_eq!(
        txt_at(&records(&ilot), "example.org."),
        ["\"v=spf1 mx include:_spf.isp.example -all\""]
    );
    ilot.ok(&mc(&srv.name, &["relay", "remove"]));

    // Client autoconfiguration, fetched through the proxy and read with Python's own XML and
    // plist parsers: every document names the server and the ports it really listens on.
    let p = ports(&ilot);
    let submissions = {
        let show = ilot.json(&["app", "show", &srv.name]);
        show["services"][0]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["container"] == 465)
            .unwrap()["host"]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .to_string()
    };
    let parse = |what: &str, doc: &str, script: &str| -> String {
        let out = Command::new("/usr/bin/python3")
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(doc.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        assert!(
            out.status.success(),
            "{what}: {}\n{doc}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let (tb, err) = curl(
        "autoconfig.example.org",
        &p.https,
        "https",
        "/mail/config-v1.1.xml?emailaddress=bob%40example.org",
        &[],
    );
    let servers = parse(
        "thunderbird",
        &tb,
        "import sys, xml.etree.ElementTree as E\n\
         r = E.fromstring(sys.stdin.read())\n\
         print(' '.join(f\"{s.get('type')}:{s.findtext('hostname')}:{s.findtext('port')}:{s.findtext('socketType')}\" for s in r.iter() if s.tag in ('incomingServer', 'outgoingServer')))",
    );
    assert_eq!(
        servers,
        format!(
            "imap:mail.example.org:{}:SSL smtp:mail.example.org:{submissions}:SSL smtp:mail.example.org:{}:STARTTLS",
            srv.imaps, srv.submission
        ),
        "{err}"
    );
    let (ad, err) = curl(
        "autodiscover.example.org",
        &p.https,
        "https",
        "/autodiscover/autodiscover.xml",
        &["-X", "POST", "-H", "Content-Type: text/xml", "--data", "<Autodiscover><Request><EMailAddress>bob@example.org</EMailAddress></Request></Autodiscover>"],
    );
    let protocols = parse(
        "autodiscover",
        &ad,
        "import sys, xml.etree.ElementTree as E\n\
         ns = '{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}'\n\
         r = E.fromstring(sys.stdin.read())\n\
         print(' '.join(f\"{p.findtext(ns + 'Type')}:{p.findtext(ns + 'Server')}:{p.findtext(ns + 'Port')}\" for p in r.iter(ns + 'Protocol')))",
    );
    assert_eq!(
        protocols,
        format!(
            "IMAP:mail.example.org:{} SMTP:mail.example.org:{submissions}",
            srv.imaps
        ),
        "{err}"
    );
    let (mc_doc, err) = curl(
        "autoconfig.example.org",
        &p.https,
        "https",
        "/mail/apple.mobileconfig",
        &[],
    );
    let account = parse(
        "mobileconfig",
        &mc_doc,
        "import sys, plistlib\n\
         p = plistlib.loads(sys.stdin.buffer.read())['PayloadContent'][0]\n\
         print(p['PayloadType'], p['IncomingMailServerHostName'], p['IncomingMailServerPortNumber'], p['OutgoingMailServerPortNumber'])",
    );
    assert_eq!(
        account,
        format!(
            "com.apple.mail.managed mail.example.org {} {submissions}",
            srv.imaps
        ),
        "{err}"
    );
    // Their names are in DNS, with Outlook's SRV.
    let v = records(&ilot);
    let has = |name: &str, kind: &str| {
        v["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == name && r["type"] == kind)
    };
    assert!(
        has("autoconfig.example.org.", "A") && has("autodiscover.example.org.", "A"),
        "{v}"
    );
    assert!(
        has("_autodiscover._tcp.example.org.", "SRV") && has("_sieve._tcp.example.org.", "SRV"),
        "{v}"
    );

    drop(named);
    ilot.ok(&["app", "remove", &srv.name, "--purge"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The TLS probes every port must refuse, each as openssl s_client arguments: an anonymous
/// cipher (what a client that does not check the server gets: no authenticated server), TLS
/// 1.0, TLS 1.1, and CBC with SHA-1 (Mozilla "intermediate" has none). `@SECLEVEL=0`: without
/// it OpenSSL 3 would not even offer these, and refuse on its own side.
const REFUSED: [(&str, &[&str]); 4] = [
    ("anonymous (aNULL)", &["-tls1_2", "-cipher", "aNULL:@SECLEVEL=0"]),
    ("TLS 1.0", &["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"]),
    ("TLS 1.1", &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]),
    (
        "CBC with SHA-1",
        &[
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA:DHE-RSA-AES128-SHA:AES128-SHA:@SECLEVEL=0",
        ],
    ),
];

/// A bare `openssl s_server` that accepts everything (also anonymous ciphers), killed on drop:
/// the probes of REFUSED succeed against it, so a refusal by the mail server is the server's.
struct Permissive {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Permissive {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn permissive_server() -> Permissive {
    let dir = PathBuf::from(format!("/tmp/ilot-test-tls-{}", unique("")));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let st = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=permissive.test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl req");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .args(["-cipher", "ALL:@SECLEVEL=0", "-min_protocol", "TLSv1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Permissive { child, port, dir };
    wait_until("openssl s_server listens", 10, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    server
}

/// The image run on its own (no ilot: it makes itself a self-signed RSA certificate), with its
/// TLS ports on 127.0.0.1; removed on drop.
struct BareImage {
    name: String,
}

impl Drop for BareImage {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.name]);
    }
}

impl BareImage {
    fn port(&self, container: u16) -> u16 {
        let out = docker_ok(&["port", &self.name, &format!("{container}/tcp")]);
        out.lines()
            .next()
            .and_then(|l| l.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("port {container} of {}: {out}", self.name))
    }
}

/// (what, host port, s_client arguments that reach the TLS handshake) for every TLS port.
fn tls_ports(
    smtp: u16,
    submission: u16,
    submissions: u16,
    imaps: u16,
    sieve: u16,
) -> Vec<(String, u16, Vec<&'static str>)> {
    vec![
        ("25 (STARTTLS)".into(), smtp, vec!["-starttls", "smtp"]),
        (
            "587 (STARTTLS)".into(),
            submission,
            vec!["-starttls", "smtp"],
        ),
        ("465".into(), submissions, vec![]),
        ("993".into(), imaps, vec![]),
        ("4190 (STARTTLS)".into(), sieve, vec!["-starttls", "sieve"]),
    ]
}

/// A normal client gets TLS 1.3, and with TLS 1.2 an ECDHE cipher; every probe of REFUSED is
/// refused. Returns nothing: asserts.
fn check_tls_policy(what: &str, ports: &[(String, u16, Vec<&'static str>)]) {
    for (port_name, port, how) in ports {
        let with = |extra: &[&str]| -> (bool, String) {
            let mut args: Vec<&str> = how.clone();
            args.extend_from_slice(extra);
            s_client(*port, &args)
        };
        let (ok, out) = with(&[]);
        assert!(
            ok && out.contains("TLSv1.3"),
            "{what}, port {port_name}: a normal client gets TLS 1.3: {out}"
        );
        let (ok, out) = with(&["-tls1_2"]);
        let cipher = out
            .lines()
            .find_map(|l| l.split("Cipher is ").nth(1))
            .unwrap_or_default()
            .trim()
            .to_string();
        assert!(
            ok && cipher.starts_with("ECDHE-") && (cipher.contains("GCM") || cipher.contains("CHACHA20")),
            "{what}, port {port_name}: a TLS 1.2 client gets ECDHE with an AEAD cipher, not {cipher:?}: {out}"
        );
        for (probe, args) in REFUSED {
            let (ok, out) = with(args);
            assert!(
                !ok,
                "{what}, port {port_name}: {probe} must be refused, but the handshake succeeded: {out}"
            );
            assert!(
                !out.contains("no ciphers available") && !out.contains("no protocols available"),
                "{what}, port {port_name}: {probe}: openssl refused to offer it itself: {out}"
            );
        }
    }
}

#[test]
fn every_tls_port_refuses_anonymous_old_and_weak_handshakes() {
    // The probes are real: a server that allows everything accepts each of them.
    let permissive = permissive_server();
    for (probe, args) in REFUSED {
        let (ok, out) = s_client(permissive.port, args);
        assert!(ok, "{probe} against a permissive server: {out}");
    }
    let (_, out) = s_client(permissive.port, REFUSED[0].1);
    assert!(out.contains("ADH-"), "an anonymous cipher: {out}");

    // The app as ilot installs it (ilot's certificate: ECDSA).
    let ilot = Ilot::start();
    let srv = install(&ilot);
    let ports = tls_ports(
        srv.smtp,
        srv.submission,
        srv.submissions,
        srv.imaps,
        srv.managesieve,
    );
    check_tls_policy("the installed app", &ports);

    // The image alone makes an RSA certificate: the DHE ciphers apply, with 2048-bit DH.
    let bare = BareImage {
        name: format!("ilot-test-mailtls-{}", unique("")),
    };
    let mut run = vec![
        "run".to_string(),
        "-d".into(),
        "--name".into(),
        bare.name.clone(),
        "--label".into(),
        format!("ilot.owner={}", ilot.owner),
    ];
    for p in [25, 587, 465, 993, 4190] {
        run.extend(["-p".into(), format!("127.0.0.1:0:{p}")]);
    }
    run.push("ilot/mail:1.0".into());
    // The engine picks the host ports; one another process took meanwhile fails the run (the
    // container is created all the same): remove it and try again.
    let args: Vec<&str> = run.iter().map(String::as_str).collect();
    for attempt in 1.. {
        let out = docker(&args);
        if out.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            attempt < 5 && err.contains("address already in use"),
            "docker {args:?}: {err}"
        );
        let _ = docker(&["rm", "-f", &bare.name]);
    }
    let ports = tls_ports(
        bare.port(25),
        bare.port(587),
        bare.port(465),
        bare.port(993),
        bare.port(4190),
    );
    wait_until("the bare image answers on every TLS port", 90, || {
        ports
            .iter()
            .all(|(_, port, how)| s_client(*port, how).0)
            .then_some(())
    });
    check_tls_policy("the image with an RSA certificate", &ports);
    for (port_name, port, how) in &ports {
        let mut args = how.clone();
        args.extend(["-tls1_2", "-cipher", "DHE-RSA-AES128-GCM-SHA256"]);
        let (ok, out) = s_client(*port, &args);
        assert!(
            ok && out.contains("Server Temp Key: DH, 2048 bits"),
            "port {port_name}: DHE with 2048-bit parameters: {out}"
        );
    }
}

/// What a ManageSieve server answers to AUTHENTICATE before STARTTLS (RFC 5804), read with a
/// plain TCP connection.
fn managesieve_plain_auth(port: u16, user: &str, password: &str) -> (String, String) {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let read_until_ok = |reader: &mut BufReader<std::net::TcpStream>| {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            all.push_str(&line);
            if line.starts_with("OK") || line.starts_with("NO") || line.starts_with("BYE") {
                break;
            }
        }
        all
    };
    let greeting = read_until_ok(&mut reader);
    let token = {
        let raw = format!("\0{user}\0{password}");
        let out = Command::new("base64")
            .args(["-w", "0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin.take().unwrap().write_all(raw.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let mut w = stream;
    w.write_all(format!("AUTHENTICATE \"PLAIN\" \"{token}\"\r\n").as_bytes())
        .unwrap();
    let answer = read_until_ok(&mut reader);
    let _ = w.write_all(b"LOGOUT\r\n");
    (greeting, answer)
}

/// sieve-connect (an independent ManageSieve client) as `user`, password on its stdin.
fn sieve_connect(port: u16, user: &str, password: &str, args: &[&str]) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("sieve-connect")
        .args(["--server", "127.0.0.1", "--port", &port.to_string()])
        .args(["--user", user, "--passwordfd", "0"])
        // The test certificate is ilot's self-signed one; --noclearauth: no password in the
        // clear, whatever the server offers.
        .args(["--notlsverify", "--nosrv", "--noclearauth"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sieve-connect (apt-get install sieve-connect)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Prints the end of the mail container's log when the test fails (what Postfix, Dovecot and
/// rspamd said is the first thing to read).
struct LogsOnFailure(String);

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let out = docker(&["logs", "--tail", "80", &self.0]);
            eprintln!(
                "---- last lines of {}:\n{}{}",
                self.0,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn managesieve_uploads_a_vacation_reply_that_answers() {
    let ilot = Ilot::start();
    let srv = install(&ilot);
    let _logs = LogsOnFailure(format!("ilot-{}-mail", srv.name));
    add_user(&ilot, "bob@example.org", BOB_PW);
    add_user(&ilot, "ann@example.org", ANN_PW);

    // No login before STARTTLS: no mechanism offered, AUTHENTICATE refused.
    let (greeting, answer) = managesieve_plain_auth(srv.managesieve, "bob@example.org", BOB_PW);
    assert!(
        greeting.contains("\"STARTTLS\"") && greeting.contains("\"SASL\" \"\""),
        "before STARTTLS: STARTTLS offered, no SASL mechanism: {greeting}"
    );
    assert!(
        answer.starts_with("NO") && answer.contains("ENCRYPT-NEEDED"),
        "AUTHENTICATE before STARTTLS is refused: {answer}"
    );

    // bob, with an independent client, over STARTTLS: uploads a vacation reply, activates it.
    let dir = PathBuf::from(format!("/tmp/ilot-test-sieve-{}", unique("")));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("vacation.sieve");
    std::fs::write(
        &script,
        "require [\"vacation\"];\n\
         vacation :days 1 :subject \"away: back on Monday\" \"I am away until Monday.\";\n",
    )
    .unwrap();
    let local = script.to_str().unwrap();
    let (ok, out) = sieve_connect(
        srv.managesieve,
        "bob@example.org",
        "not-bobs-password",
        &["--list"],
    );
    assert!(!ok, "a wrong password is refused: {out}");
    let (ok, out) = sieve_connect(
        srv.managesieve,
        "bob@example.org",
        BOB_PW,
        &["--upload", "--localsieve", local, "--remotesieve", "away"],
    );
    assert!(ok, "upload: {out}");
    let (ok, out) = sieve_connect(
        srv.managesieve,
        "bob@example.org",
        BOB_PW,
        &["--activate", "--remotesieve", "away"],
    );
    assert!(ok, "activate: {out}");
    let (ok, out) = sieve_connect(srv.managesieve, "bob@example.org", BOB_PW, &["--list"]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok && out.contains("\"away\" ACTIVE"), "list: {out}");

    // ann writes to bob; bob gets it, and ann gets his vacation reply.
    let (ok, out) = submit(
        srv.submission,
        "ann@example.org",
        ANN_PW,
        "ann@example.org",
        "bob@example.org",
        "dinner on Sunday?",
    );
    assert!(ok, "{out}");
    wait_until("bob gets ann's message", 30, || {
        Some(()).filter(|_| {
            !search(
                srv.imaps,
                "bob@example.org",
                BOB_PW,
                "SUBJECT \"dinner on Sunday\"",
            )
            .is_empty()
        })
    });
    let uids = wait_until("ann gets bob's vacation reply", 30, || {
        Some(search(
            srv.imaps,
            "ann@example.org",
            ANN_PW,
            "SUBJECT \"away: back on Monday\"",
        ))
        .filter(|u| !u.is_empty())
    });
    let reply = imap(
        srv.imaps,
        "ann@example.org",
        ANN_PW,
        &format!("{};UID={}", uids[0].0, uids[0].1),
        None,
    )
    .unwrap();
    assert!(
        reply.contains("I am away until Monday.")
            && reply.contains("From: <bob@example.org>")
            && reply.contains("Auto-Submitted: auto-replied"),
        "the vacation reply: {reply}"
    );
    // Signed, as all mail of the domain that leaves the server.
    assert!(
        dkim_verify(
            "the vacation reply",
            reply.as_bytes(),
            &published_dkim(&ilot)
        )
        .1,
        "the vacation reply's DKIM signature verifies"
    );
}

#[test]
fn users_send_only_as_the_addresses_they_own() {
    let ilot = Ilot::start();
    let srv = install(&ilot);
    let _logs = LogsOnFailure(format!("ilot-{}-mail", srv.name));
    add_user(&ilot, "bob@example.org", BOB_PW);
    add_user(&ilot, "ann@example.org", ANN_PW);
    ilot.ok(&mc(
        &srv.name,
        &["alias", "add", "info@example.org", "bob@example.org"],
    ));
    // Another domain the server handles, whose address reaches ann.
    ilot.ok(&mc(&srv.name, &["domain", "add", "example.net"]));
    ilot.ok(&mc(
        &srv.name,
        &["alias", "add", "hello@example.net", "ann@example.org"],
    ));
    let bob = |implicit: bool, subject: &str, headers: &[&str]| {
        submit_headers(
            if implicit {
                srv.submissions
            } else {
                srv.submission
            },
            implicit,
            "bob@example.org",
            BOB_PW,
            "bob@example.org",
            "ann@example.org",
            subject,
            headers,
        )
    };
    let refused = |what: &str, (ok, out): (bool, String), names: &str| {
        assert!(
            !ok && out.contains(&format!(
                " 554 5.7.1 {names} is not yours: you are logged in as bob@example.org and may send as bob@example.org (and its aliases abuse@example.net, abuse@example.org, hostmaster@example.net, hostmaster@example.org, info@example.org, postmaster@example.net, postmaster@example.org) only"
            )),
            "{what}: refused with a clear 5xx: {out}"
        );
    };
    // The envelope is bob's own (Postfix checks it); the header From is another's.
    refused(
        "bob as ann",
        bob(false, "forged-ann", &["From: Ann <ann@example.org>"]),
        "From ann@example.org",
    );
    refused(
        "bob as ann, port 465",
        bob(true, "forged-ann-465", &["From: ann@example.org"]),
        "From ann@example.org",
    );
    refused(
        "bob as an address of another served domain",
        bob(false, "forged-net", &["From: hello@example.net"]),
        "From hello@example.net",
    );
    refused(
        "bob and ann",
        bob(
            false,
            "forged-both",
            &["From: bob@example.org, ann@example.org"],
        ),
        "From ann@example.org",
    );
    refused(
        "bob on behalf of ann",
        bob(false, "forged-sender", &["Sender: ann@example.org"]),
        "Sender ann@example.org",
    );

    // As himself and as the alias that reaches him: delivered, and signed.
    let (ok, out) = bob(false, "as-bob", &["From: Bob <bob@example.org>"]);
    assert!(ok, "bob as himself: {out}");
    let (ok, out) = bob(true, "as-info", &["From: Family info <info@example.org>"]);
    assert!(ok, "bob as the alias info@, which reaches him: {out}");
    let txt = published_dkim(&ilot);
    for subject in ["as-bob", "as-info"] {
        let uids = wait_until(subject, 30, || {
            Some(search(
                srv.imaps,
                "ann@example.org",
                ANN_PW,
                &format!("SUBJECT {subject}"),
            ))
            .filter(|u| !u.is_empty())
        });
        let raw = imap(
            srv.imaps,
            "ann@example.org",
            ANN_PW,
            &format!("{};UID={}", uids[0].0, uids[0].1),
            None,
        )
        .unwrap();
        assert!(
            dkim_verify(subject, raw.as_bytes(), &txt).1,
            "{subject}: the DKIM signature verifies"
        );
    }
    // The refused ones went nowhere: not in ann's mailbox, not in the queue (the refusal is the
    // answer to DATA: Postfix never took them).
    assert!(
        search(srv.imaps, "ann@example.org", ANN_PW, "SUBJECT forged").is_empty(),
        "nothing refused was delivered"
    );
    assert_eq!(ilot.json(&mc(&srv.name, &["queue"]))["count"], 0);
}
