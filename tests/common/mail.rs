//! Mail helpers shared by the tests that run the real mail server (tests/mail.rs) or an app
//! that sends through it (tests/catalog.rs): installing it on free host ports, mailboxes,
//! swaks for SMTP, curl for IMAPS, openssl s_client for the TLS handshakes.

use super::*;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn require_mail_image() {
    assert!(
        docker(&["image", "inspect", "ilot/mail:1.0"])
            .status
            .success(),
        "image ilot/mail:1.0 missing: run tests/run.sh, or images/build.sh mail"
    );
}

pub fn wait_until<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Runs the CLI with `stdin` on its standard input (how scripts give passwords).
pub fn with_stdin(ilot: &Ilot, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .arg("--socket")
        .arg(&ilot.socket)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

pub fn ok_with_stdin(ilot: &Ilot, args: &[&str], stdin: &str) -> String {
    let out = with_stdin(ilot, args, stdin);
    assert!(
        out.status.success(),
        "ilot {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ilot mail --instance INSTANCE REST...`
pub fn mc<'a>(instance: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["mail", "--instance", instance];
    v.extend_from_slice(rest);
    v
}

/// A mail server installed under a unique name, with its host ports.
pub struct Server {
    pub name: String,
    pub smtp: u16,
    pub submission: u16,
    pub submissions: u16,
    pub imaps: u16,
    pub managesieve: u16,
}

pub fn install(ilot: &Ilot) -> Server {
    require_mail_image();
    let name = unique("mail");
    ilot.ok(&[
        "app",
        "install",
        "mail",
        "--name",
        &name,
        "--domain",
        "mail.example.org",
        "--set",
        "smtp_port=0",
        "--set",
        "submission_port=0",
        "--set",
        "submissions_port=0",
        "--set",
        "imaps_port=0",
        "--set",
        "managesieve_port=0",
    ]);
    let show = ilot.json(&["app", "show", &name]);
    let port = |container: u16| -> u16 {
        let ports = show["services"][0]["ports"].as_array().unwrap();
        let p = ports
            .iter()
            .find(|p| p["container"].as_u64() == Some(container as u64))
            .unwrap_or_else(|| panic!("port {container} not published: {show}"));
        p["host"]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    Server {
        smtp: port(25),
        submission: port(587),
        submissions: port(465),
        imaps: port(993),
        managesieve: port(4190),
        name,
    }
}

pub fn add_user(ilot: &Ilot, address: &str, password: &str) {
    ok_with_stdin(
        ilot,
        &["mail", "user", "add", address],
        &format!("{password}\n"),
    );
}

/// swaks: (success, transcript).
pub fn swaks(netns: Option<&str>, args: &[&str]) -> (bool, String) {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "swaks"]);
            c
        }
        None => Command::new("swaks"),
    };
    let out = cmd
        .args(["--timeout", "10"])
        .args(args)
        .output()
        .expect("swaks (apt-get install swaks)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

pub fn deliver(port: u16, to: &str, subject: &str, body: &str) {
    let server = format!("127.0.0.1:{port}");
    let (ok, out) = swaks(
        None,
        &[
            "--server",
            &server,
            "--from",
            "alice@example.net",
            "--to",
            to,
            "--header",
            &format!("Subject: {subject}"),
            "--body",
            body,
        ],
    );
    assert!(ok, "delivery to {to} refused: {out}");
}

/// swaks on submission (587, STARTTLS) as `user`.
pub fn submit(
    port: u16,
    user: &str,
    password: &str,
    from: &str,
    to: &str,
    subject: &str,
) -> (bool, String) {
    submit_headers(port, false, user, password, from, to, subject, &[])
}

/// swaks on submission as `user` with extra header lines (`"From: ..."` replaces swaks' own):
/// STARTTLS on 587, or implicit TLS (`implicit`, port 465).
#[allow(clippy::too_many_arguments)]
pub fn submit_headers(
    port: u16,
    implicit: bool,
    user: &str,
    password: &str,
    from: &str,
    to: &str,
    subject: &str,
    headers: &[&str],
) -> (bool, String) {
    let server = format!("127.0.0.1:{port}");
    let subject = format!("Subject: {subject}");
    let mut args = vec![
        "--server",
        &server,
        if implicit { "--tlsc" } else { "--tls" },
        "--auth",
        "PLAIN",
        "--auth-user",
        user,
        "--auth-password",
        password,
        "--from",
        from,
        "--to",
        to,
        "--header",
        &subject,
        "--body",
        "sent by a family member",
    ];
    for h in headers {
        args.extend(["--header", h]);
    }
    swaks(None, &args)
}

/// `openssl s_client` to 127.0.0.1:`port` with `args` (`-starttls smtp`, `-tls1_2`, ...), no
/// input: (handshake done, transcript). Done means openssl succeeded and named a cipher.
pub fn s_client(port: u16, args: &[&str]) -> (bool, String) {
    let out = Command::new("timeout")
        .args(["20", "openssl", "s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let done = out.status.success() && !text.contains("Cipher is (NONE)");
    (done, text)
}

/// An IMAP command over IMAPS with curl (`-X` for a custom command), as `user`.
pub fn imap(
    port: u16,
    user: &str,
    password: &str,
    path: &str,
    command: Option<&str>,
) -> Option<String> {
    let url = format!("imaps://127.0.0.1:{port}/{path}");
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sk",
        "--max-time",
        "10",
        "--user",
        &format!("{user}:{password}"),
        &url,
    ]);
    if let Some(c) = command {
        cmd.args(["-X", c]);
    }
    let out = cmd.output().expect("curl");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The UIDs a search finds in a mailbox.
pub fn search_in(port: u16, user: &str, password: &str, mailbox: &str, criteria: &str) -> Vec<u32> {
    imap(
        port,
        user,
        password,
        mailbox,
        Some(&format!("UID SEARCH {criteria}")),
    )
    .unwrap_or_default()
    .lines()
    .filter_map(|l| l.trim().strip_prefix("* SEARCH"))
    .flat_map(|l| {
        l.split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect::<Vec<u32>>()
    })
    .collect()
}

/// Messages found in the inbox or the Junk folder: here, without DNS, rspamd cannot check
/// any sender, and a message from an unknown host may be scored as spam; it is delivered
/// all the same, which is what these tests are about.
pub fn search(port: u16, user: &str, password: &str, criteria: &str) -> Vec<(String, u32)> {
    ["INBOX", "Junk"]
        .iter()
        .flat_map(|m| {
            search_in(port, user, password, m, criteria)
                .into_iter()
                .map(move |u| (m.to_string(), u))
        })
        .collect()
}
