//! The webmail app for real: the mail image and the webmail image (Roundcube from Debian,
//! images/build.sh webmail) installed by a real daemon on the test engine, a mailbox, a
//! message delivered with swaks, then what a browser does, with curl through ilot's proxy
//! (HTTPS, the domain resolved to loopback): the login page, a wrong password refused, a login
//! with the form's token and the session cookie, the inbox listed, the message read, and a
//! message composed and sent from the webmail, seen arriving over IMAPS.
//!
//! The mail server's certificate is self-signed here (no ACME in tests). The first webmail is
//! installed with `--set tls_verify=false`; a second one, with the default (true), checks it
//! against the server's name with the bundle ilot mounts, which trusts that certificate.

mod common;
use common::mail::*;
use common::*;
use std::path::PathBuf;

const BOB_PW: &str = "bob-secret-passphrase";

/// A browser's session with the webmail through the proxy: curl with a cookie jar.
struct Browser {
    domain: String,
    https: String,
    jar: PathBuf,
}

/// One answer: status, headers (lowercase names), body.
struct Page {
    status: u16,
    headers: String,
    body: String,
}

impl Page {
    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

impl Browser {
    fn new(ilot: &Ilot, domain: &str) -> Browser {
        Browser {
            domain: domain.into(),
            https: ports(ilot).https,
            jar: ilot.dir.join(format!("cookies-{}", unique(""))),
        }
    }

    fn request(&self, path: &str, extra: &[&str]) -> Page {
        let headers = self.jar.with_extension("headers");
        let mut args = vec![
            "-b",
            self.jar.to_str().unwrap(),
            "-c",
            self.jar.to_str().unwrap(),
            "-D",
            headers.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let (body, err) = curl(&self.domain, &self.https, "https", path, &args);
        let headers = std::fs::read_to_string(&headers).unwrap_or_default();
        let status = headers
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("GET {path}: no answer: {err}"));
        Page {
            status,
            headers,
            body,
        }
    }

    fn get(&self, path: &str) -> Page {
        self.request(path, &[])
    }

    /// An AJAX request, as Roundcube's scripts make them (the request token in a header).
    fn ajax(&self, path: &str, token: &str) -> Page {
        let h = format!("X-Roundcube-Request: {token}");
        self.request(path, &["-H", &h])
    }

    /// A form POST; fields are URL-encoded by curl.
    fn post(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        self.post_with(path, fields, &[])
    }

    fn post_with(&self, path: &str, fields: &[(&str, &str)], extra: &[&str]) -> Page {
        let encoded: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args = extra.to_vec();
        for f in &encoded {
            args.push("--data-urlencode");
            args.push(f.as_str());
        }
        self.request(path, &args)
    }
}

/// The text between `start` and the next `end` after it.
fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = s.find(start)? + start.len();
    let len = s[from..].find(end)?;
    Some(&s[from..from + len])
}

/// The value of a hidden form field, `<input type="hidden" name="NAME" value="...">`.
fn form_field(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\""))?;
    let tag_start = html[..at].rfind('<')?;
    let tag = &html[tag_start..tag_start + html[tag_start..].find('>')?];
    between(tag, "value=\"", "\"").map(str::to_string)
}

/// The session's request token, as the page gives it to Roundcube's scripts.
fn request_token(html: &str) -> String {
    between(html, "\"request_token\":\"", "\"")
        .unwrap_or_else(|| {
            panic!(
                "no request_token in the page: {}",
                &html[..html.len().min(2000)]
            )
        })
        .to_string()
}

fn install_webmail(ilot: &Ilot, domain: &str, extra: &[&str]) -> String {
    let name = unique("webmail");
    let mut args = vec![
        "app", "install", "webmail", "--name", &name, "--domain", domain,
    ];
    args.extend_from_slice(extra);
    ilot.ok(&args);
    name
}

/// The login form (for its token and a session cookie), then the login; the answer to it.
fn login(b: &Browser, user: &str, password: &str) -> Page {
    let page = b.get("/");
    assert_eq!(page.status, 200, "{}", page.headers);
    let token = form_field(&page.body, "_token").expect("the login form's _token");
    b.post(
        "/?_task=login",
        &[
            ("_token", &token),
            ("_task", "login"),
            ("_action", "login"),
            ("_timezone", "UTC"),
            ("_url", ""),
            ("_user", user),
            ("_pass", password),
        ],
    )
}

/// The first line of a container's output that contains `has`, waited for up to 10 s.
fn log_line(container: &str, has: &str) -> String {
    wait_until(&format!("{has:?} in the logs of {container}"), 10, || {
        let out = docker(&["logs", container]);
        let all = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        all.lines().find(|l| l.contains(has)).map(str::to_string)
    })
}

fn require_webmail_image() {
    assert!(
        docker(&["image", "inspect", "ilot/webmail:1.0"])
            .status
            .success(),
        "image ilot/webmail:1.0 missing: run tests/run.sh, or images/build.sh webmail"
    );
}

#[test]
fn webmail_logs_in_reads_and_sends_through_the_mail_server() {
    require_webmail_image();
    let ilot = Ilot::start();

    // Without a mail server it is of no use: refused, with what to do, and nothing made.
    let err = ilot.fails(
        &[
            "app",
            "install",
            "webmail",
            "--domain",
            "webmail.example.org",
        ],
        2,
    );
    assert!(
        err.contains("none is installed") && err.contains("ilot app install mail"),
        "{err}"
    );
    assert_eq!(ilot.objects(), (vec![], vec![], vec![]), "nothing made");

    let srv = install(&ilot);
    add_user(&ilot, "bob@example.org", BOB_PW);
    let plan = ilot.json(&[
        "app",
        "install",
        "webmail",
        "--domain",
        "webmail.example.org",
        "--dry-run",
    ]);
    assert_eq!(plan["mail_client"]["host"], "mail.example.org", "{plan}");
    assert_eq!(plan["mail_client"]["imaps_port"], srv.imaps, "{plan}");
    let wm = install_webmail(&ilot, "webmail.example.org", &["--set", "tls_verify=false"]);

    // Wired to the mail server by its name (resolved to the host in the container), on the
    // host ports of IMAPS and submission; no account was made for the app.
    let show = ilot.json(&["app", "show", &wm]);
    assert_eq!(show["mail_client"]["server"], srv.name.as_str(), "{show}");
    assert_eq!(show["mail_client"]["host"], "mail.example.org", "{show}");
    assert_eq!(show["mail_client"]["imaps_port"], srv.imaps, "{show}");
    assert_eq!(
        show["mail_client"]["submission_port"], srv.submission,
        "{show}"
    );
    let users = ilot.json(&mc(&srv.name, &["user", "list"]));
    assert_eq!(users["users"].as_array().unwrap().len(), 1, "{users}");
    let container = format!("ilot-{wm}-webmail");
    let hosts = docker_ok(&["exec", &container, "cat", "/etc/hosts"]);
    assert!(
        hosts.lines().any(|l| l.ends_with("\tmail.example.org")),
        "{hosts}"
    );
    let rendered = docker_ok(&[
        "exec",
        &container,
        "cat",
        "/run/ilot-webmail/config.inc.php",
    ]);
    // (The des_key stays out of a failure's message.)
    let shown: String = rendered
        .lines()
        .filter(|l| !l.contains("des_key"))
        .collect::<Vec<_>>()
        .join("\n");
    for want in [
        format!("'ssl://mail.example.org:{}'", srv.imaps),
        format!("'tls://mail.example.org:{}'", srv.submission),
        "'username_domain'] = 'example.org'".to_string(),
    ] {
        assert!(rendered.contains(&want), "{want} in {shown}");
    }
    // Only the proxy's address (the network's gateway, where the host is) is trusted with
    // X-Forwarded-For and -Proto.
    let gateway = docker_ok(&[
        "network",
        "inspect",
        &format!("ilot-{wm}"),
        "--format",
        "{{(index .IPAM.Config 0).Gateway}}",
    ]);
    assert!(
        rendered.contains(&format!(
            "'proxy_whitelist'] = array (\n  0 => '{gateway}',\n);"
        )),
        "{gateway} alone in {shown}"
    );

    deliver(
        srv.smtp,
        "bob@example.org",
        "Hello from swaks",
        "the body of the first message",
    );
    let found = wait_until("delivered to bob", 30, || {
        Some(search(
            srv.imaps,
            "bob@example.org",
            BOB_PW,
            "SUBJECT swaks",
        ))
        .filter(|u| !u.is_empty())
    });
    let (mbox, uid) = found[0].clone();

    // The login page, over the proxy, with nothing from elsewhere.
    let b = Browser::new(&ilot, "webmail.example.org");
    let page = b.get("/");
    assert_eq!(page.status, 200, "{}", page.headers);
    assert!(page.body.contains("name=\"_user\""), "{}", page.body);
    let cookie = page.header("set-cookie").unwrap_or_default();
    assert!(
        cookie.contains("roundcube_sessid=")
            && cookie.contains("secure")
            && cookie.contains("HttpOnly"),
        "the session cookie is secure: {}",
        page.headers
    );
    for remote in ["src=\"http", "href=\"http", "src=\"//", "href=\"//"] {
        assert!(!page.body.contains(remote), "{remote} in the login page");
    }
    assert!(form_field(&page.body, "_token").is_some(), "{}", page.body);

    // A wrong password is refused, and logged with the client's address as the proxy gives it.
    let refused = login(&b, "bob", "not-the-password");
    // 401: what the proxy-auth jail counts in the proxy's access log (docs/guard.md).
    assert_eq!(
        refused.status, 401,
        "a wrong password is not let in: {}",
        refused.headers
    );
    assert!(refused.header("location").is_none(), "{}", refused.headers);
    assert!(
        refused.body.contains("Login failed") || refused.body.contains("login failed"),
        "{}",
        refused.body
    );
    let failed = log_line(&container, "Login failed for bob@example.org");
    assert!(
        failed.contains("against mail.example.org")
            && failed.contains("X-Forwarded-For: 127.0.0.1"),
        "{failed}"
    );

    // The right one (a fresh form, a fresh token), then a redirect into the mail.
    let ok = login(&b, "bob", BOB_PW);
    assert_eq!(ok.status, 302, "logged in: {}\n{}", ok.headers, ok.body);
    let inbox = b.get("/?_task=mail&_mbox=INBOX");
    assert_eq!(inbox.status, 200, "{}", inbox.headers);
    assert!(inbox.body.contains("bob@example.org"), "{}", inbox.body);
    let rtoken = request_token(&inbox.body);

    // The message list (what the page's script asks for), then the message itself.
    let list = b.ajax(
        &format!("/?_task=mail&_action=list&_mbox={mbox}&_remote=1"),
        &rtoken,
    );
    assert_eq!(list.status, 200, "{}", list.headers);
    assert!(
        list.body.contains("Hello from swaks"),
        "the subject in {mbox}'s list: {}",
        list.body
    );
    let msg = b.get(&format!(
        "/?_task=mail&_action=show&_uid={uid}&_mbox={mbox}"
    ));
    assert_eq!(msg.status, 200, "{}", msg.headers);
    assert!(msg.body.contains("Hello from swaks"), "{}", msg.body);
    assert!(
        msg.body.contains("the body of the first message"),
        "{}",
        msg.body
    );

    // Compose and send, as the compose page's form does: through submission, logged in as bob.
    let compose = b.get("/?_task=mail&_action=compose");
    let compose = match compose.header("location") {
        Some(to) => b.get(&format!("/{}", to.trim_start_matches("./"))),
        None => compose,
    };
    assert_eq!(compose.status, 200, "{}", compose.headers);
    let id = form_field(&compose.body, "_id").expect("the compose form's _id");
    let ctoken = form_field(&compose.body, "_token").expect("the compose form's _token");
    let from = between(&compose.body, "name=\"_from\"", "</select>")
        .and_then(|s| between(s, "value=\"", "\""))
        .expect("an identity to send from")
        .to_string();
    // With a forged X-Forwarded-For: the proxy replaces it with the real client, which Roundcube
    // takes from its trusted proxy.
    let sent = b.post_with(
        "/?_task=mail&_lang=en&_framed=1",
        &[
            ("_token", &ctoken),
            ("_task", "mail"),
            ("_action", "send"),
            ("_id", &id),
            ("_from", &from),
            ("_to", "bob@example.org"),
            ("_subject", "Sent from the webmail"),
            ("_message", "written in Roundcube"),
            ("_is_html", "0"),
            ("_framed", "1"),
        ],
        &["-H", "X-Forwarded-For: 203.0.113.9"],
    );
    assert_eq!(sent.status, 200, "{}", sent.headers);
    assert!(
        sent.body.contains("sent_successfully"),
        "the message was sent: {}",
        sent.body
    );
    let sendlog = log_line(&container, "User bob@example.org [");
    assert!(
        sendlog.contains("User bob@example.org [127.0.0.1]"),
        "the client's address through the proxy, not the forged one nor the proxy's: {sendlog}"
    );
    let arrived = wait_until("the webmail's message arrives", 30, || {
        Some(search(
            srv.imaps,
            "bob@example.org",
            BOB_PW,
            "SUBJECT \"Sent from the webmail\"",
        ))
        .filter(|u| !u.is_empty())
    });
    let body = imap(
        srv.imaps,
        "bob@example.org",
        BOB_PW,
        &format!("{};UID={}", arrived[0].0, arrived[0].1),
        None,
    )
    .unwrap();
    assert!(body.contains("written in Roundcube"), "{body}");
    assert!(
        body.contains("From: bob@example.org") || body.contains("<bob@example.org>"),
        "{body}"
    );
    assert!(
        body.contains("DKIM-Signature"),
        "submitted through the server, which signs: {body}"
    );

    // By default the mail server's certificate is checked against its name, with the bundle
    // ilot gives the webmail: this certificate is self-signed, and the bundle trusts it, so a
    // webmail installed without tls_verify=false logs in. The public roots alone would not.
    let strict = install_webmail(&ilot, "strict.example.org", &[]);
    let b2 = Browser::new(&ilot, "strict.example.org");
    let verified = login(&b2, "bob", BOB_PW);
    assert_eq!(verified.status, 302, "{}", verified.headers);
    let handshake = |cafile: &str| {
        docker(&[
            "exec",
            &format!("ilot-{strict}-webmail"),
            "php",
            "-r",
            &format!(
                "$c = stream_context_create(['ssl' => ['cafile' => '{cafile}', 'verify_peer' => true, 'verify_peer_name' => true, 'peer_name' => 'mail.example.org']]); \
                 $s = stream_socket_client(getenv('WEBMAIL_IMAP'), $e, $m, 10, STREAM_CLIENT_CONNECT, $c); \
                 exit($s ? 0 : 1);"
            ),
        ])
    };
    assert!(!handshake("/etc/ssl/certs/ca-certificates.crt")
        .status
        .success());
    assert!(handshake("/etc/ilot/trust/ca-bundle.pem").status.success());
    ilot.ok(&["app", "remove", &strict, "--purge"]);

    // The webmail goes with its data; the mail server and its mailboxes stay.
    ilot.ok(&["app", "remove", &wm, "--purge"]);
    assert_eq!(
        search(srv.imaps, "bob@example.org", BOB_PW, "SUBJECT swaks").len(),
        1
    );
}
