//! The built-in reverse proxy, end to end: real clients (curl, openssl, raw sockets) through
//! the daemon's HTTPS and HTTP ports to the hello app's container and back.

mod common;
use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

/// One raw request on a plain socket; returns what the server sent before closing.
fn raw(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn served_cert_names(addr: &str, sni: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} -servername {sni} </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn apps_are_served_by_domain_over_https() {
    let ilot = Ilot::start();
    let name = unique("px");
    let domain = format!("{name}.example.test");
    ilot.ok(&[
        "app", "install", "hello", "--name", &name, "--domain", &domain,
    ]);
    let p = ports(&ilot);
    assert_eq!(
        ilot.json(&["app", "show", &name])["url"],
        format!("https://{domain}:{}/", p.https.rsplit_once(':').unwrap().1)
    );

    // Through the proxy to the container, over HTTP/2, with HSTS.
    let (out, err) = curl(&domain, &p.https, "https", "/", &["-i", "--http2"]);
    assert!(out.starts_with("HTTP/2 200"), "{out}{err}");
    assert!(
        out.contains("Hello from ilot") && out.contains("strict-transport-security: max-age="),
        "{out}"
    );
    // The app sees who asked, and how; a client that claims another address in any of the
    // forwarding headers is not believed (the proxy is the edge: it sets them all itself).
    let https_port = p.https.rsplit_once(':').unwrap().1;
    let forged = [
        "-H",
        "X-Forwarded-For: 203.0.113.9",
        "-H",
        "X-Forwarded-For: 198.51.100.7",
        "-H",
        "X-Real-IP: 203.0.113.9",
        "-H",
        "Forwarded: for=203.0.113.9;proto=http",
        "-H",
        "True-Client-IP: 203.0.113.9",
        "-H",
        "X-Forwarded-Proto: http",
        "-H",
        "X-Forwarded-Host: evil.example",
    ];
    for extra in [&[][..], &forged[..]] {
        let mut args = vec!["--http1.1"];
        args.extend_from_slice(extra);
        let (out, _) = curl(&domain, &p.https, "https", "/cgi-bin/echo", &args);
        for line in [
            "method=GET",
            &format!("host={domain}:{https_port}"),
            "x-forwarded-for=127.0.0.1",
            "x-real-ip=127.0.0.1",
            &format!("forwarded=for=127.0.0.1;host={domain};proto=https"),
            "true-client-ip=",
            "x-forwarded-proto=https",
            &format!("x-forwarded-host={domain}"),
        ] {
            assert!(
                out.lines().any(|l| l == line),
                "{line} missing (forged headers: {}) in:\n{out}",
                !extra.is_empty()
            );
        }
        assert!(
            !out.contains("203.0.113.9") && !out.contains("198.51.100.7"),
            "{out}"
        );
    }
    // A body is streamed to the app.
    let body = ilot.dir.join("body");
    std::fs::write(&body, vec![b'x'; 1_000_000]).unwrap();
    let (out, _) = curl(
        &domain,
        &p.https,
        "https",
        "/cgi-bin/echo",
        &["-T", body.to_str().unwrap(), "-X", "POST"],
    );
    assert!(out.contains("body-bytes=1000000"), "{out}");
    // Over the route's limit (hello: 100M): refused before the body is read.
    let big = ilot.dir.join("big");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(200 << 20)
        .unwrap();
    let (out, _) = curl(
        &domain,
        &p.https,
        "https",
        "/cgi-bin/echo",
        &[
            "--http1.1",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-T",
            big.to_str().unwrap(),
        ],
    );
    assert_eq!(out, "413");

    // Port 80 redirects to HTTPS, keeping the path.
    let (out, _) = curl(&domain, &p.http, "http", "/a/b?c=d", &["-i"]);
    assert!(out.starts_with("HTTP/1.1 308"), "{out}");
    assert!(
        out.to_lowercase()
            .contains(&format!("location: https://{domain}:{https_port}/a/b?c=d")),
        "{out}"
    );

    // An unknown host gets a 404 that names no served domain; bad Host headers a 400.
    let (out, _) = curl("unknown.example.test", &p.https, "https", "/", &["-i"]);
    assert!(
        out.starts_with("HTTP/2 404") && !out.contains(&domain),
        "{out}"
    );
    let reply = raw(
        &p.http,
        b"GET / HTTP/1.1\r\nHost: bad host!\r\nConnection: close\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    let reply = raw(&p.http, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    // Oversized headers are refused.
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: {domain}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let reply = raw(&p.http, huge.as_bytes());
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 431"),
        "{reply}"
    );

    // Its own (self-signed until ACME) certificate for its domain; a neutral one otherwise.
    assert!(served_cert_names(&p.https, &domain).contains(&format!("DNS:{domain}")));
    let other = served_cert_names(&p.https, "unknown.example.test");
    assert!(
        other.contains("DNS:ilot.invalid") && !other.contains(&domain),
        "{other}"
    );

    // The access log has the real client address, host, request and status.
    let log = std::fs::read_to_string(ilot.dir.join("access.log")).unwrap();
    assert!(
        log.contains(&format!("127.0.0.1 {domain} \"GET / HTTP/2.0\" 200")),
        "{log}"
    );
    assert!(
        log.contains(&format!("127.0.0.1 {domain} \"GET /a/b?c=d HTTP/1.1\" 308")),
        "{log}"
    );

    // Removed: no longer served.
    ilot.ok(&["app", "remove", &name, "--purge"]);
    let (out, _) = curl(&domain, &p.https, "https", "/", &["-i"]);
    assert!(out.starts_with("HTTP/2 404"), "{out}");
    assert!(served_cert_names(&p.https, &domain).contains("DNS:ilot.invalid"));
}

#[test]
fn a_2_gib_upload_streams_through_over_http2_with_bounded_daemon_memory() {
    let mut ilot = Ilot::start();
    // An app like hello whose route accepts big bodies (as Nextcloud or PeerTube would).
    let dir = ilot.dir.join("catalog/bigup");
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = std::fs::read_to_string(ilot.dir.join("catalog/hello/app.toml"))
        .unwrap()
        .replace("name = \"hello\"", "name = \"bigup\"")
        .replace("path = \"/\" }", "path = \"/\", max_body = \"3G\" }");
    assert!(manifest.contains("3G"));
    std::fs::write(dir.join("app.toml"), manifest).unwrap();
    ilot.restart();
    let name = unique("up");
    let domain = format!("{name}.example.test");
    ilot.ok(&[
        "app", "install", "bigup", "--name", &name, "--domain", &domain,
    ]);
    let p = ports(&ilot);
    // 2 GiB less one byte: busybox httpd (the app) refuses a Content-Length of 2^31 or more.
    let file = ilot.dir.join("2g");
    std::fs::File::create(&file)
        .unwrap()
        .set_len((2 << 30) - 1)
        .unwrap();
    let (out, err) = curl(
        &domain,
        &p.https,
        "https",
        "/cgi-bin/echo",
        &[
            "--http2",
            "--max-time",
            "600",
            "-T",
            file.to_str().unwrap(),
            "-X",
            "POST",
        ],
    );
    assert!(out.contains("body-bytes=2147483647"), "{out}{err}");
    let pid = ilot.json(&["status"])["pid"].as_u64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        peak_kib < 64 * 1024,
        "daemon peak memory {peak_kib} KiB: the body was buffered"
    );
}

#[test]
fn slow_clients_are_cut_off() {
    let ilot = Ilot::start();
    let p = ports(&ilot);
    let started = Instant::now();
    // Headers that never end (slowloris) on HTTP, and a TLS handshake that never starts.
    let slow_http = {
        let addr = p.http.clone();
        std::thread::spawn(move || {
            raw(
                &addr,
                b"GET / HTTP/1.1\r\nHost: x.example.test\r\nX-A: 1\r\n",
            )
        })
    };
    let slow_tls = {
        let addr = p.https.clone();
        std::thread::spawn(move || raw(&addr, b""))
    };
    slow_http.join().unwrap();
    slow_tls.join().unwrap();
    // Both were closed by the server (the reads would otherwise time out after 30 s each).
    assert!(
        started.elapsed() < Duration::from_secs(29),
        "slow clients were not cut off"
    );
    ilot.ok(&["status"]);
}

#[test]
fn status_reports_a_proxy_that_cannot_bind() {
    // Take a port, then start a daemon configured to use it: the daemon runs, says why.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut ilot = Ilot::start();
    let config = std::fs::read_to_string(&ilot.config).unwrap().replacen(
        "http = \"127.0.0.1:0\"",
        &format!("http = \"{addr}\""),
        1,
    );
    std::fs::write(&ilot.config, config).unwrap();
    ilot.restart();
    let status: Value = ilot.json(&["status"]);
    let err = status["proxy"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        err.contains(&addr.to_string()) && err.contains("cannot listen"),
        "{status}"
    );
    drop(taken);
}

#[test]
fn websocket_upgrades_are_spliced_through() {
    assert!(
        docker(&["image", "inspect", "ilot/ws-echo:test"]).status.success(),
        "image ilot/ws-echo:test missing: run tests/run.sh, or images/build.sh tests/images/ws-echo"
    );
    let mut ilot = Ilot::start();
    let dir = ilot.dir.join("catalog/wsecho");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("app.toml"),
        r#"name = "wsecho"
version = "test"
description = "WebSocket echo (tests)"
health_timeout = "10s"
[services.ws]
image = "ilot/ws-echo:test"
build = "ws-echo"
memory = "32M"
[services.ws.health]
cmd = ["sh", "-c", "printf 'GET / HTTP/1.0\r\n\r\n' | nc 127.0.0.1 8080 | grep -q ok"]
[needs]
routes = [{ service = "ws", port = 8080 }]
"#,
    )
    .unwrap();
    ilot.restart();
    let name = unique("ws");
    let domain = format!("{name}.example.test");
    ilot.ok(&[
        "app", "install", "wsecho", "--name", &name, "--domain", &domain,
    ]);
    let p = ports(&ilot);

    // TLS by openssl; the WebSocket handshake and frames by hand (RFC 6455's example key).
    let mut tls = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &p.https,
            "-servername",
            &domain,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut input = tls.stdin.take().unwrap();
    let mut output = tls.stdout.take().unwrap();
    write!(
        input,
        "GET /chat HTTP/1.1\r\nHost: {domain}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        output.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    for message in ["hello through ilot", "a second frame"] {
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut frame = vec![0x81, 0x80 | message.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(message.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        input.write_all(&frame).unwrap();
        input.flush().unwrap();
        let mut reply = vec![0u8; 2 + message.len()];
        output.read_exact(&mut reply).unwrap();
        assert_eq!(reply[0], 0x81);
        assert_eq!(&reply[2..], message.as_bytes());
    }
    drop(input);
    let _ = tls.kill();
    let _ = tls.wait();
}

#[test]
fn domains_can_be_added_listed_and_removed() {
    let ilot = Ilot::start();
    let (a, b) = (unique("da"), unique("db"));
    let (main, alias) = (format!("{a}.example.test"), format!("www.{a}.example.test"));
    ilot.ok(&["app", "install", "hello", "--name", &a, "--domain", &main]);
    ilot.ok(&["app", "install", "hello", "--name", &b]);
    let p = ports(&ilot);

    ilot.ok(&["domain", "add", &alias, &a]);
    let (out, _) = curl(&alias, &p.https, "https", "/", &["-i"]);
    assert!(out.starts_with("HTTP/2 200") && out.contains(&a), "{out}");
    let list = ilot.json(&["domain", "list"]);
    let rows: Vec<(String, String, bool)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["domain"].as_str().unwrap().into(),
                r["instance"].as_str().unwrap().into(),
                r["primary"] == true,
            )
        })
        .collect();
    assert!(
        rows.contains(&(main.clone(), a.clone(), true))
            && rows.contains(&(alias.clone(), a.clone(), false)),
        "{list}"
    );

    // A domain serves one instance; bad names and unknown instances are refused.
    let err = ilot.fails(&["domain", "add", &alias, &b], 2);
    assert!(err.contains(&format!("already served by {a}")), "{err}");
    let err = ilot.fails(
        &[
            "app",
            "install",
            "hello",
            "--name",
            &unique("dc"),
            "--domain",
            &main,
        ],
        2,
    );
    assert!(err.contains("already served"), "{err}");
    ilot.fails(&["domain", "add", "not a domain", &b], 2);
    ilot.fails(&["domain", "add", &format!("x.{main}"), "ghost"], 2);
    ilot.fails(&["domain", "remove", "nowhere.example.test"], 2);

    // An instance without a domain gets one: it becomes its primary domain (and its URL).
    let other = format!("{b}.example.test");
    ilot.ok(&["domain", "add", &other, &b]);
    assert!(ilot.json(&["app", "show", &b])["url"]
        .as_str()
        .unwrap()
        .starts_with(&format!("https://{other}:")));
    let (out, _) = curl(&other, &p.https, "https", "/", &[]);
    assert!(out.contains(&b), "{out}");

    // Removing the primary promotes the alias; removing the last one stops serving it.
    ilot.ok(&["domain", "remove", &main]);
    assert_eq!(ilot.json(&["app", "show", &a])["domain"], alias.as_str());
    let (out, _) = curl(&main, &p.https, "https", "/", &["-i"]);
    assert!(out.starts_with("HTTP/2 404"), "{out}");
    ilot.ok(&["domain", "remove", &alias]);
    let (out, _) = curl(&alias, &p.https, "https", "/", &["-i"]);
    assert!(out.starts_with("HTTP/2 404"), "{out}");
    assert!(ilot.json(&["app", "show", &a])["domain"].is_null());
}
