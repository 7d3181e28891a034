//! Certificates from a real ACME server: Debian's Pebble (with pebble-challtestsrv as the DNS
//! it resolves names with), HTTP-01 answered by ilot's proxy, certificates observed with
//! openssl while a long-lived connection stays up.

mod common;
use common::pebble::Pebble;
use common::*;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
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

/// The serial and issuer of the certificate the proxy presents for `domain`.
fn presented(https: &str, domain: &str) -> String {
    sh(&format!("openssl s_client -connect {https} -servername {domain} </dev/null 2>/dev/null | openssl x509 -noout -serial -issuer"))
}

#[test]
fn certificates_are_issued_by_http01_renewed_and_swapped_live() {
    let mut pebble = Pebble::prepare();
    let mut ilot = Ilot::start_full(
        &[],
        &format!(
            "[acme]\ndirectory = \"{}\"\nca_root = \"{}\"\nemail = \"admin@example.test\"\n\n\
             [host]\nipv4 = \"203.0.113.10\"\n\n[dns]\ncaa = \"pebble.test\"\n",
            pebble.directory(),
            pebble.dir.join("ca.pem").display()
        ),
    );
    // An app that terminates TLS itself: hello, given certificate files at /tls (key owned by
    // its user) and a reload command that records which certificate it loaded.
    let dir = ilot.dir.join("catalog/tlsapp");
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = std::fs::read_to_string(ilot.dir.join("catalog/hello/app.toml")).unwrap().replace("name = \"hello\"", "name = \"tlsapp\"").replace(
        "[needs]",
        "[needs]\ntls = { service = \"web\", path = \"/tls\", owner = \"10001:10001\", reload = [\"sh\", \"-c\", \"cp /tls/fullchain.pem /tmp/loaded.pem\"] }",
    );
    std::fs::write(dir.join("app.toml"), manifest).unwrap();
    ilot.restart();
    let status = ilot.json(&["status"]);
    let http = status["proxy"]["http"].as_str().unwrap().to_string();
    let https = status["proxy"]["https"].as_str().unwrap().to_string();
    // Installed while the CA is still down: self-signed files, readable by the app, read-only.
    let tls_name = unique("tf");
    let tls_domain = format!("{tls_name}.example.test");
    ilot.ok(&[
        "app",
        "install",
        "tlsapp",
        "--name",
        &tls_name,
        "--domain",
        &tls_domain,
    ]);
    let container = format!("ilot-{tls_name}-web");
    let issuer_in_app = |file: &str| {
        sh(&format!(
            "docker exec {container} cat {file} | openssl x509 -noout -issuer"
        ))
    };
    assert!(
        issuer_in_app("/tls/fullchain.pem").contains("rcgen"),
        "self-signed at first"
    );
    assert!(
        docker(&["exec", &container, "cat", "/tls/privkey.pem"])
            .status
            .success(),
        "the app user reads its key"
    );
    assert!(
        !docker(&["exec", &container, "touch", "/tls/x"])
            .status
            .success(),
        "read-only"
    );
    assert_eq!(
        path_mode(
            &ilot
                .dir
                .join("state/tls")
                .join(&tls_name)
                .join("privkey.pem")
        ),
        0o600
    );

    pebble.start(http.rsplit_once(':').unwrap().1.parse().unwrap());
    // Issued: the files are replaced and the app told to reload.
    ilot.ok(&["cert", "renew", &tls_domain, "--force"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !docker(&["exec", &container, "test", "-f", "/tmp/loaded.pem"])
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "reload command not run; events:\n{}",
            ilot.ok(&["events"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(issuer_in_app("/tls/fullchain.pem").contains("Pebble"));
    assert_eq!(
        docker_ok(&["exec", &container, "cat", "/tmp/loaded.pem"]),
        docker_ok(&["exec", &container, "cat", "/tls/fullchain.pem"]),
        "the reload saw the new certificate"
    );
    assert!(ilot.ok(&["events"]).contains("tls-reloaded"));

    let name = unique("tls");
    let domain = format!("{name}.example.test");
    ilot.ok(&[
        "app", "install", "hello", "--name", &name, "--domain", &domain,
    ]);
    // The scheduler may have tried before Pebble was up; issue now.
    ilot.ok(&["cert", "renew", &domain, "--force"]);
    let list = ilot.json(&["cert", "list"]);
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["domain"] == domain.as_str())
        .expect("listed")
        .clone();
    assert_eq!(entry["source"], "acme", "{entry}");
    assert!(
        entry["issuer"].as_str().unwrap().contains("Pebble"),
        "{entry}"
    );
    assert!(entry["last_error"].is_null());
    let (nb, na, next) = (
        entry["not_before"].as_u64().unwrap(),
        entry["not_after"].as_u64().unwrap(),
        entry["next_renewal"].as_u64().unwrap(),
    );
    assert!(
        next > nb + (na - nb) * 6 / 10 && next < nb + (na - nb) * 7 / 10,
        "renewal at ~2/3 of the lifetime: {entry}"
    );
    let first = presented(&https, &domain);
    assert!(first.contains("Pebble"), "{first}");
    // CAA names the CA and binds issuance to ilot's account there (RFC 8657).
    let dns = ilot.json(&["dns", "show", &domain]);
    let caa = dns["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "CAA")
        .unwrap_or_else(|| panic!("no CAA: {dns}"))["value"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        caa.starts_with("0 issue \"pebble.test; accounturi=https://")
            && caa.contains("/my-account/"),
        "{caa}"
    );
    // The key is private.
    let key = ilot
        .dir
        .join("state/certs")
        .join(&domain)
        .join("privkey.pem");
    assert_eq!(path_mode(&key), 0o600);
    assert!(!ilot.log().contains(
        &std::fs::read_to_string(&key)
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
            .to_string()
    ));

    // A long-lived connection, opened before the renewal...
    let port = https.rsplit_once(':').unwrap().1;
    let mut long = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &https,
            "-servername",
            &domain,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let key_pem = std::fs::read_to_string(&key).unwrap();
    ilot.ok(&["cert", "renew", &domain, "--force"]);
    // ...new connections get the new certificate...
    let second = presented(&https, &domain);
    assert_ne!(first, second, "renewal must serve a new certificate");
    // ...for the same key, so a DANE record of the key (TLSA 3 1 1) stays true.
    let renewed = std::fs::read_to_string(&key).unwrap();
    assert_eq!(key_pem, renewed, "the renewal kept the key");
    // ...while the old connection still works.
    let mut stdin = long.stdin.take().unwrap();
    write!(
        stdin,
        "GET /health HTTP/1.1\r\nHost: {domain}:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    long.stdout
        .take()
        .unwrap()
        .read_to_string(&mut reply)
        .unwrap();
    let _ = long.wait();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    // After a restart the stored certificate is served, and known as issued: no new order.
    let cert_entry = |ilot: &Ilot| {
        let list = ilot.json(&["cert", "list"]);
        list.as_array()
            .unwrap()
            .iter()
            .find(|c| c["domain"] == domain.as_str())
            .unwrap()
            .clone()
    };
    let before = cert_entry(&ilot);
    ilot.restart();
    let after = cert_entry(&ilot);
    assert_eq!(
        after["source"], "acme",
        "stored certificate known as issued after restart: {after}"
    );
    assert_eq!(after["not_after"], before["not_after"], "{after}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while presented(&https_after(&ilot), &domain) != second {
        assert!(
            Instant::now() < deadline,
            "stored certificate not served after restart"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A domain that does not point at this host: a clear error, the self-signed one served.
    let bad = format!("{}.example.test", unique("bad"));
    pebble.set_a(&bad, "127.0.0.2");
    let bad_name = unique("bad");
    ilot.ok(&[
        "app", "install", "hello", "--name", &bad_name, "--domain", &bad,
    ]);
    let err = ilot.fails(&["cert", "renew", &bad, "--force"], 1);
    assert!(
        err.contains(&bad) && err.contains("points at this host") && err.contains("port 80"),
        "{err}"
    );
    let list = ilot.json(&["cert", "list"]);
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["domain"] == bad.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["source"], "self-signed");
    assert!(
        entry["last_error"].as_str().unwrap().contains(&bad)
            && entry["retry_at"].as_u64().is_some(),
        "{entry}"
    );
    assert!(
        presented(&https_after(&ilot), &bad).contains("rcgen"),
        "self-signed until issued"
    );

    // An ACME server that is down: an error that says so; served certificates stay.
    drop(pebble);
    let err = ilot.fails(&["cert", "renew", &domain, "--force"], 1);
    assert!(err.contains(&domain) && err.contains("hint"), "{err}");
    assert_eq!(presented(&https_after(&ilot), &domain), second);
}

fn https_after(ilot: &Ilot) -> String {
    ilot.json(&["status"])["proxy"]["https"]
        .as_str()
        .unwrap()
        .to_string()
}
