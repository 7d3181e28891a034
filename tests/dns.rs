//! DNS records in `print` mode: what the served domains need, checked by BIND's own zone
//! parser (named-checkzone), so a pasted snippet loads as it is.

mod common;
use common::*;
use std::process::Command;

#[test]
fn printed_records_form_a_zone_bind_accepts() {
    let mut ilot = Ilot::start_full(
        &[],
        "[host]\nipv4 = \"203.0.113.10\"\nipv6 = \"2001:db8::10\"\nhostname = \"mail.example.test\"\n",
    );
    // An app that declares records of every kind, with values a zone file must quote.
    let dir = ilot.dir.join("catalog/dnsapp");
    std::fs::create_dir_all(&dir).unwrap();
    let long = "k".repeat(300);
    let manifest = std::fs::read_to_string(ilot.dir.join("catalog/hello/app.toml")).unwrap().replace("name = \"hello\"", "name = \"dnsapp\"").replace(
        "[needs]",
        &format!(
            "[needs]\ndns = [\n  {{ type = \"TXT\", value = 'v=spf1 mx \"quoted\" \\ -all; x' }},\n  {{ type = \"MX\", value = \"10 mail\" }},\n  \
             {{ type = \"CNAME\", name = \"www\", value = \"@\" }},\n  {{ type = \"SRV\", name = \"_imaps._tcp\", value = \"0 1 993 mail\" }},\n  \
             {{ type = \"TXT\", name = \"default._domainkey\", value = \"v=DKIM1; p={long}\" }},\n]"
        ),
    );
    std::fs::write(dir.join("app.toml"), manifest).unwrap();
    ilot.restart();
    let name = unique("dns");
    ilot.ok(&[
        "app",
        "install",
        "dnsapp",
        "--name",
        &name,
        "--domain",
        &format!("{name}.example.test"),
    ]);

    let v = ilot.json(&["dns", "show"]);
    let has =
        |n: &str, t: &str, val: &str| {
            v["records"].as_array().unwrap().iter().any(|r| {
                r["name"] == n && r["type"] == t && r["value"].as_str().unwrap().contains(val)
            })
        };
    let apex = format!("{name}.example.test.");
    assert!(
        has(&apex, "A", "203.0.113.10") && has(&apex, "AAAA", "2001:db8::10"),
        "{v}"
    );
    assert!(has(&apex, "MX", &format!("10 mail.{apex}")), "{v}");
    assert!(has(&format!("www.{apex}"), "CNAME", &apex), "{v}");
    assert!(
        has(&apex, "TXT", r#""v=spf1 mx \"quoted\" \\ -all; x""#),
        "{v}"
    );
    assert!(v["findings"].as_array().unwrap().is_empty(), "{v}");

    // The zone snippet, under a SOA and NS, is a zone BIND loads.
    let snippet = ilot.ok(&["dns", "show", "--format", "zone"]);
    let zone = format!(
        "$ORIGIN example.test.\n$TTL 3600\n@ IN SOA ns1 hostmaster 1 3600 600 86400 3600\n@ IN NS ns1\nns1 IN A 203.0.113.53\n{snippet}"
    );
    let file = ilot.dir.join("example.test.zone");
    std::fs::write(&file, &zone).unwrap();
    let out = Command::new("named-checkzone")
        .arg("example.test")
        .arg(&file)
        .output()
        .expect("named-checkzone (tests/run.sh installs bind9utils)");
    assert!(
        out.status.success(),
        "{}\n{zone}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The host's own name, and its addresses' PTR records, which load as a reverse zone.
    assert!(
        has("mail.example.test.", "A", "203.0.113.10")
            && has("mail.example.test.", "AAAA", "2001:db8::10"),
        "{v}"
    );
    assert!(
        has("10.113.0.203.in-addr.arpa.", "PTR", "mail.example.test."),
        "{v}"
    );
    assert!(
        v["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["type"] == "PTR"
                && r["name"]
                    .as_str()
                    .unwrap()
                    .ends_with(".8.b.d.0.1.0.0.2.ip6.arpa.")),
        "{v}"
    );
    let ptrs: String = snippet
        .lines()
        .filter(|l| l.contains("in-addr.arpa."))
        .map(|l| format!("{l}\n"))
        .collect();
    let reverse = format!("$TTL 3600\n@ IN SOA ns1.example.test. hostmaster.example.test. 1 3600 600 86400 3600\n@ IN NS ns1.example.test.\n{ptrs}");
    let file = ilot.dir.join("reverse.zone");
    std::fs::write(&file, &reverse).unwrap();
    let out = Command::new("named-checkzone")
        .arg("113.0.203.in-addr.arpa")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{reverse}",
        String::from_utf8_lossy(&out.stdout)
    );

    // One domain only; a bad name is refused.
    let only = ilot.json(&["dns", "show", &format!("www.{name}.example.test")]);
    assert!(
        only["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["name"].as_str().unwrap().starts_with("www.")),
        "{only}"
    );
    ilot.fails(&["dns", "show", "bad domain;"], 2);
}

#[test]
fn records_that_cannot_be_computed_are_reported_with_the_fix() {
    let ilot = Ilot::start();
    let name = unique("nodns");
    ilot.ok(&[
        "app",
        "install",
        "hello",
        "--name",
        &name,
        "--domain",
        &format!("{name}.example.test"),
    ]);
    let out = ilot.ok(&["dns", "show"]);
    assert!(
        out.contains("public address is not configured") && out.contains("[host] ipv4"),
        "{out}"
    );
}

/// Adds `mailer` to the test catalogue: the demo app declaring itself a mail server, so the
/// mail records (MX, SPF, DKIM, DMARC, MTA-STS, TLS-RPT, SRV) are planned for its domain.
fn add_mailer(ilot: &mut Ilot) {
    let dir = ilot.dir.join("catalog/mailer");
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = std::fs::read_to_string(ilot.dir.join("catalog/hello/app.toml"))
        .unwrap()
        .replace("name = \"hello\"", "name = \"mailer\"")
        .replace("[needs]", "[needs]\nmail = true");
    std::fs::write(dir.join("app.toml"), manifest).unwrap();
    ilot.restart();
}

/// Adds `mailer-tls`: a mailer that also gets certificate files (`[needs] tls`), as the
/// real mail app does, so DANE (TLSA) is planned for its MX.
fn add_tls_mailer(ilot: &mut Ilot) {
    let dir = ilot.dir.join("catalog/mailer-tls");
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = std::fs::read_to_string(ilot.dir.join("catalog/hello/app.toml"))
        .unwrap()
        .replace("name = \"hello\"", "name = \"mailer-tls\"")
        .replace(
            "[needs]",
            "[needs]\nmail = true\ntls = { service = \"web\", path = \"/etc/ilot-tls\" }",
        );
    std::fs::write(dir.join("app.toml"), manifest).unwrap();
    ilot.restart();
}

/// The config of a daemon whose host is 203.0.113.10, pushing `zone` to 127.0.0.1:`port`.
fn push_config(zone: &str, port: u16, key_name: &str, key_file: &std::path::Path) -> String {
    format!(
        "[host]\nipv4 = \"203.0.113.10\"\n\n[[dns.zones]]\nname = \"{zone}\"\nmode = \"push\"\n\
         server = \"127.0.0.1:{port}\"\ntsig_key = \"{key_name}\"\ntsig_secret_file = \"{}\"\n",
        key_file.display()
    )
}

/// Installs the demo app at `domain`; returns the instance's name.
fn install_hello(ilot: &Ilot, domain: &str) -> String {
    let name = unique("web");
    ilot.ok(&[
        "app", "install", "hello", "--name", &name, "--domain", domain,
    ]);
    name
}

fn dns_port(ilot: &Ilot) -> u16 {
    let v = ilot.json(&["status"]);
    let addr = v["dns"]["listen"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no DNS server: {v}"));
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

fn zone_info(ilot: &Ilot, zone: &str) -> serde_json::Value {
    let v = ilot.json(&["status"]);
    v["dns"]["zones"]
        .as_array()
        .unwrap()
        .iter()
        .find(|z| z["zone"] == zone)
        .unwrap_or_else(|| panic!("zone {zone} not served: {v}"))
        .clone()
}

/// `delv` validating against the zone's own key as trust anchor: "fully validated".
fn delv(ilot: &Ilot, port: u16, zone: &str, name: &str, kind: &str) -> String {
    let key = zone_info(ilot, zone)["dnskey"]
        .as_str()
        .unwrap()
        .to_string();
    // "ZONE IN DNSKEY 257 3 13 BASE64"
    let f: Vec<&str> = key.split_whitespace().collect();
    let anchors = ilot.dir.join(format!("anchor-{zone}conf"));
    std::fs::write(
        &anchors,
        format!(
            "trust-anchors {{ {} static-key {} {} {} \"{}\"; }};\n",
            f[0],
            f[3],
            f[4],
            f[5],
            f[6..].concat()
        ),
    )
    .unwrap();
    let out = Command::new("delv")
        .arg("-a")
        .arg(&anchors)
        .arg(format!("+root={}", zone.trim_end_matches('.')))
        .args(["@127.0.0.1", "-p", &port.to_string(), name, kind])
        .output()
        .expect("delv (tests/run.sh installs bind9-dnsutils)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn served_zones_answer_every_record_signed() {
    let mut ilot = Ilot::start_full(
        &[],
        "[host]\nipv4 = \"203.0.113.10\"\nipv6 = \"2001:db8:1::10\"\nhostname = \"mail.serve.test\"\n\n\
         [dns]\nlisten = [\"127.0.0.1:0\"]\ncaa = \"letsencrypt.org\"\n\n\
         [[dns.zones]]\nname = \"serve.test\"\nmode = \"serve\"\n\n\
         [[dns.zones]]\nname = \"203.0.113.0/24\"\nmode = \"serve\"\n\
         records = [{ name = \"1\", type = \"PTR\", value = \"router.serve.test.\" }]\n\n\
         [[dns.zones]]\nname = \"2001:db8:1::/48\"\nmode = \"serve\"\n",
    );
    add_mailer(&mut ilot);
    let mail = unique("mail");
    ilot.ok(&[
        "app",
        "install",
        "mailer",
        "--name",
        &mail,
        "--domain",
        "mail.serve.test",
    ]);
    let port = dns_port(&ilot);
    let dig = |name: &str, kind: &str| common::named::dig(port, name, kind);

    // Every record a mail domain and a web name need, forward and reverse.
    assert_eq!(dig("serve.test", "MX"), ["10 mail.serve.test."]);
    assert_eq!(dig("serve.test", "TXT"), ["\"v=spf1 mx -all\""]);
    let dkim = dig("ilot1._domainkey.serve.test", "TXT").concat();
    assert!(dkim.starts_with("\"v=DKIM1; k=rsa; p=MIIBIjAN"), "{dkim}");
    assert_eq!(
        dig("_dmarc.serve.test", "TXT"),
        ["\"v=DMARC1; p=quarantine; rua=mailto:postmaster@serve.test\""]
    );
    assert!(dig("_mta-sts.serve.test", "TXT")
        .concat()
        .starts_with("\"v=STSv1; id="));
    assert_eq!(dig("mta-sts.serve.test", "A"), ["203.0.113.10"]);
    assert_eq!(
        dig("_smtp._tls.serve.test", "TXT"),
        ["\"v=TLSRPTv1; rua=mailto:postmaster@serve.test\""]
    );
    assert_eq!(
        dig("_submissions._tcp.serve.test", "SRV"),
        ["0 1 465 mail.serve.test."]
    );
    assert_eq!(
        dig("_imaps._tcp.serve.test", "SRV"),
        ["0 1 993 mail.serve.test."]
    );
    assert_eq!(dig("mail.serve.test", "A"), ["203.0.113.10"]);
    assert_eq!(dig("mail.serve.test", "AAAA"), ["2001:db8:1::10"]);
    assert_eq!(
        dig("mail.serve.test", "CAA"),
        ["0 issue \"letsencrypt.org\""]
    );
    // CAA at the apex too: it covers every other name of the domain.
    assert_eq!(dig("serve.test", "CAA"), ["0 issue \"letsencrypt.org\""]);
    // The SOA contact is an address the mail server accepts: hostmaster@ its mail domain,
    // for the forward zone and for the reverse zones.
    for zone in [
        "serve.test",
        "113.0.203.in-addr.arpa",
        "1.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa",
    ] {
        let soa = dig(zone, "SOA").concat();
        assert_eq!(
            soa.split_whitespace().nth(1),
            Some("hostmaster.serve.test."),
            "{zone}: {soa}"
        );
    }
    assert_eq!(
        dig("10.113.0.203.in-addr.arpa", "PTR"),
        ["mail.serve.test."]
    );
    assert_eq!(
        dig("1.113.0.203.in-addr.arpa", "PTR"),
        ["router.serve.test."]
    );
    let v6 = "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa";
    assert_eq!(dig(v6, "PTR"), ["mail.serve.test."]);
    assert!(dig("nothing.example.com", "A").is_empty(), "not our zone");

    // The MTA-STS policy the TXT record announces, served over HTTPS by the proxy.
    let https = ilot.json(&["status"])["proxy"]["https"]
        .as_str()
        .unwrap()
        .to_string();
    let https_port = https.rsplit(':').next().unwrap();
    let out = Command::new("curl")
        .args([
            "-sk",
            "--resolve",
            &format!("mta-sts.serve.test:{https_port}:127.0.0.1"),
        ])
        .arg(format!(
            "https://mta-sts.serve.test:{https_port}/.well-known/mta-sts.txt"
        ))
        .output()
        .unwrap();
    let policy = String::from_utf8_lossy(&out.stdout);
    assert!(
        policy.starts_with("version: STSv1\r\n")
            && policy.contains("mx: mail.serve.test\r\n")
            && policy.contains("mode: testing"),
        "{policy}"
    );

    // DNSSEC: answers and denials validate against the zone's key.
    for (zone, name, kind) in [
        ("serve.test.", "serve.test", "MX"),
        ("serve.test.", "ilot1._domainkey.serve.test", "TXT"),
        ("serve.test.", "mail.serve.test", "CAA"),
        (
            "113.0.203.in-addr.arpa.",
            "10.113.0.203.in-addr.arpa",
            "PTR",
        ),
        ("1.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.", v6, "PTR"),
    ] {
        let out = delv(&ilot, port, zone, name, kind);
        assert!(out.contains("; fully validated"), "{name} {kind}:\n{out}");
    }
    let out = delv(&ilot, port, "serve.test.", "absent.serve.test", "A");
    assert!(
        out.contains("negative response, fully validated"),
        "a signed denial:\n{out}"
    );
    // The denial is NSEC3 (hashed names: the zone cannot be walked), RFC 9276 parameters.
    let out = Command::new("dig")
        .args([
            "+dnssec",
            "+norecurse",
            "@127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .args(["absent.serve.test", "A"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        out.contains("status: NXDOMAIN")
            && out.contains(" IN NSEC3 1 0 0 - ")
            && !out.contains(" IN NSEC "),
        "{out}"
    );

    // The SOA serial moves when the content does, and only then.
    let serial = |ilot: &Ilot| zone_info(ilot, "serve.test.")["serial"].as_u64().unwrap();
    let s1 = serial(&ilot);
    assert_eq!(
        dig("serve.test", "SOA")
            .concat()
            .split_whitespace()
            .nth(2)
            .unwrap(),
        s1.to_string()
    );
    install_hello(&ilot, "www.serve.test");
    assert_eq!(dig("www.serve.test", "A"), ["203.0.113.10"]);
    let s2 = serial(&ilot);
    assert_eq!(s2, s1 + 1);
    ilot.restart();
    let port = dns_port(&ilot);
    assert_eq!(serial(&ilot), s2, "a restart changes nothing");
    assert_eq!(
        common::named::dig(port, "serve.test", "SOA")
            .concat()
            .split_whitespace()
            .nth(2)
            .unwrap(),
        s2.to_string()
    );
    // The DS for the parent is shown to the user.
    let out = ilot.ok(&["dns", "show"]);
    assert!(
        out.contains("serve.test. IN DS ") && out.contains("served in serve.test."),
        "{out}"
    );
}

/// `dig` with extra arguments, against 127.0.0.1:`port`: its whole output.
fn dig_raw(port: u16, args: &[&str]) -> String {
    let out = Command::new("dig")
        .args(["+norecurse", "+time=3", "+tries=1", "@127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("dig");
    // One space between fields, whatever dig's column alignment (tabs or spaces).
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .lines()
    .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") + "\n")
    .collect()
}

/// The serial in `dig +short SOA` output.
fn soa_serial(lines: &[String]) -> Option<u64> {
    lines.concat().split_whitespace().nth(2)?.parse().ok()
}

#[test]
fn secondaries_follow_by_notify_and_only_they_transfer() {
    let dir = std::path::PathBuf::from(format!("/tmp/ilot-test-named-{}", unique("")));
    std::fs::create_dir_all(&dir).unwrap();
    // ilot's DNS port is fixed first: BIND's config names it as the primary.
    let ilot_port = common::named::free_port();
    let named = common::named::Named::start_secondary(&dir, "second.test", ilot_port);
    let key = named.key_file(&named.secret);
    let mut ilot = Ilot::start_full(
        &[],
        &format!(
            "[host]\nipv4 = \"203.0.113.10\"\nhostname = \"mail.second.test\"\n\n\
             [dns]\nlisten = [\"127.0.0.1:{ilot_port}\"]\n\n\
             [[dns.zones]]\nname = \"second.test\"\nmode = \"serve\"\n\
             secondaries = [\"127.0.0.1:{}\"]\ntsig_key = \"{}\"\ntsig_secret_file = \"{}\"\n",
            named.port,
            named.key_name,
            key.display()
        ),
    );
    add_tls_mailer(&mut ilot);
    let serial = |ilot: &Ilot| zone_info(ilot, "second.test.")["serial"].as_u64().unwrap();
    // BIND fetches the zone when ilot's NOTIFY arrives (it has no copy and no timers yet).
    let wait_for = |what: &str, check: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !check() {
            assert!(
                std::time::Instant::now() < deadline,
                "the secondary never got {what}:\n{}",
                named.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    let s1 = serial(&ilot);
    wait_for("the zone", &|| {
        soa_serial(&named.dig("second.test", "SOA")) == Some(s1)
    });
    // A change in ilot: the serial moves, ilot sends NOTIFY, BIND transfers at once (its
    // refresh timer is the SOA's hour, far beyond the wait).
    let mail = unique("mail");
    ilot.ok(&[
        "app",
        "install",
        "mailer-tls",
        "--name",
        &mail,
        "--domain",
        "mail.second.test",
    ]);
    let s2 = serial(&ilot);
    assert!(s2 > s1, "{s1} -> {s2}");
    wait_for("the new serial and records", &|| {
        soa_serial(&named.dig("second.test", "SOA")) == Some(s2)
            && named.dig("second.test", "MX") == ["10 mail.second.test."]
    });
    let log = named.log();
    assert!(
        log.contains("notify from 127.0.0.1") && log.contains("Transfer status: success"),
        "{log}"
    );
    // The secondary's copy is the signed zone: its answers carry ilot's signatures.
    let copy = dig_raw(named.port, &["+dnssec", "second.test", "MX"]);
    assert!(copy.contains(" IN RRSIG MX 13 "), "{copy}");

    // DANE for the MX: TLSA 3 1 1 is the SHA-256 of the public key of the certificate the
    // mail server was given (computed here by openssl), and it validates.
    let chain = ilot.dir.join(format!("state/tls/{mail}/fullchain.pem"));
    let spki = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -in {} -noout -pubkey | openssl pkey -pubin -outform der | sha256sum",
            chain.display()
        ))
        .output()
        .unwrap();
    let spki = String::from_utf8_lossy(&spki.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(spki.len(), 64, "openssl on {}", chain.display());
    let tlsa: Vec<String> = common::named::dig(ilot_port, "_25._tcp.mail.second.test", "TLSA")
        .iter()
        .map(|l| l.replace(' ', "").to_lowercase())
        .collect();
    assert_eq!(tlsa, [format!("311{spki}")]);
    let out = delv(
        &ilot,
        ilot_port,
        "second.test.",
        "_25._tcp.mail.second.test",
        "TLSA",
    );
    assert!(out.contains("; fully validated"), "TLSA:\n{out}");
    assert_eq!(
        named.dig("_25._tcp.mail.second.test", "TLSA").len(),
        1,
        "the secondary has it too"
    );

    // Transfers: only the listed address, only with the key.
    let tsig = format!("hmac-sha256:{}:{}", named.key_name, named.secret);
    let refused = |out: &str| out.contains("Transfer failed") && !out.contains(" IN SOA ");
    let out = dig_raw(ilot_port, &["second.test", "AXFR"]);
    assert!(refused(&out), "no key:\n{out}");
    let out = dig_raw(
        ilot_port,
        &[
            "-y",
            "hmac-sha256:ilot-test-key:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "second.test",
            "AXFR",
        ],
    );
    assert!(!out.contains(" IN SOA "), "a wrong key:\n{out}");
    let out = dig_raw(
        ilot_port,
        &["-b", "127.0.0.2", "-y", &tsig, "second.test", "AXFR"],
    );
    assert!(refused(&out), "not a secondary's address:\n{out}");
    let out = dig_raw(ilot_port, &["+notcp", "-y", &tsig, "second.test", "IXFR=1"]);
    assert!(!out.contains(" IN DNSKEY "), "a transfer over UDP:\n{out}");
    let axfr = dig_raw(ilot_port, &["-y", &tsig, "second.test", "AXFR"]);
    assert!(
        axfr.contains(" IN DNSKEY 257 3 13 ")
            && axfr.contains(" IN NSEC3PARAM 1 0 0 -")
            && axfr.contains(" IN RRSIG "),
        "the secondary's key from its address:\n{axfr}"
    );
    // IXFR is answered with the whole zone (RFC 1995 section 4).
    let ixfr = dig_raw(
        ilot_port,
        &["-y", &tsig, "second.test", &format!("IXFR={s1}")],
    );
    assert!(ixfr.contains(" IN DNSKEY "), "{ixfr}");

    // An independent validator on the transferred copy: every signature and the NSEC3
    // chain verify, signatures were already valid 50 minutes ago (a slow clock accepts
    // them) and do not expire within 12 days.
    let zone_file = dir.join("second.test.axfr");
    std::fs::write(
        &zone_file,
        axfr.lines()
            .filter(|l| !l.starts_with(';') && !l.trim().is_empty() && !l.contains(" TSIG "))
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
    )
    .unwrap();
    for args in [vec!["-t", "-3000"], vec!["-e", "P12D"], vec![]] {
        let out = Command::new("ldns-verify-zone")
            .args(&args)
            .arg(&zone_file)
            .output()
            .expect("ldns-verify-zone (tests/run.sh installs ldnsutils)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("Zone is verified and complete"),
            "ldns-verify-zone {args:?}:\n{text}"
        );
    }
    // Without the backdated inception, a clock 2 hours slow rejects them: the check has teeth.
    let out = Command::new("ldns-verify-zone")
        .args(["-t", "-7200"])
        .arg(&zone_file)
        .output()
        .unwrap();
    assert!(!out.status.success(), "signatures valid 2 hours ago?");
    drop(named);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pushed_zones_follow_the_apps_and_keep_others_records() {
    let dir = std::path::PathBuf::from(format!("/tmp/ilot-test-named-{}", unique("")));
    std::fs::create_dir_all(&dir).unwrap();
    let zone = "$TTL 300\n@ IN SOA ns.push.test. hostmaster.push.test. 1 3600 900 1209600 300\n\
                @ IN NS ns.push.test.\nns IN A 192.0.2.53\n@ IN TXT \"google-site-verification=abc\"\n\
                taken IN A 203.0.113.10\n";
    let named = common::named::Named::start(&dir, &[("push.test", zone.to_string())]);
    let key = named.key_file(&named.secret);
    let ilot = Ilot::start_full(
        &[],
        &push_config("push.test", named.port, &named.key_name, &key),
    );
    let web = install_hello(&ilot, "www.push.test");
    let v = ilot.json(&["dns", "apply"]);
    assert_eq!(
        named.dig("www.push.test", "A"),
        ["203.0.113.10"],
        "{v}\n{}",
        named.log()
    );

    // A record ilot wants that someone else made is left to them, and never removed.
    ilot.ok(&["domain", "add", "taken.push.test", &web]);
    let v = ilot.json(&["dns", "apply"]);
    assert!(
        v["pushed"][0]["foreign"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "taken.push.test."),
        "{v}"
    );
    ilot.ok(&["domain", "remove", "taken.push.test"]);
    ilot.ok(&["dns", "apply"]);
    assert_eq!(named.dig("taken.push.test", "A"), ["203.0.113.10"]);

    // A wrong key: refused, clearly, and nothing changes.
    std::fs::write(
        &key,
        std::fs::read_to_string(named.key_file("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="))
            .unwrap(),
    )
    .unwrap();
    ilot.ok(&["app", "remove", &web]);
    let err = ilot.fails(&["dns", "apply"], 1);
    assert!(
        err.contains("TSIG") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(named.dig("www.push.test", "A"), ["203.0.113.10"]);
    let events = ilot.ok(&["events"]);
    assert!(events.contains("dns-push-failed"), "{events}");

    // The right key again: ilot's record goes, everyone else's stays.
    std::fs::write(
        &key,
        std::fs::read_to_string(named.key_file(&named.secret)).unwrap(),
    )
    .unwrap();
    let out = ilot.ok(&["dns", "apply"]);
    assert!(out.contains("- www.push.test. A 203.0.113.10"), "{out}");
    assert!(named.dig("www.push.test", "A").is_empty());
    assert_eq!(
        named.dig("push.test", "TXT"),
        ["\"google-site-verification=abc\""]
    );
    assert_eq!(named.dig("ns.push.test", "A"), ["192.0.2.53"]);
    assert_eq!(named.dig("taken.push.test", "A"), ["203.0.113.10"]);
    drop(named);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unreachable_primary_is_a_clear_error() {
    let port = common::named::free_port();
    let dir = std::path::PathBuf::from(format!("/tmp/ilot-test-key-{}", unique("")));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("k");
    std::fs::write(&key, "pxGxU/aWCMnBhBdYJJ6usM76r3RjVPB+PCOa+GbBSBM=\n").unwrap();
    // A key others can read is refused before anything is sent.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let ilot = Ilot::start_full(&[], &push_config("down.test", port, "k", &key));
    install_hello(&ilot, "www.down.test");
    let err = ilot.fails(&["dns", "apply"], 2);
    assert!(
        err.contains("readable by other users") && err.contains("chmod 600"),
        "{err}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = ilot.fails(&["dns", "apply"], 1);
    assert!(
        err.contains("cannot be reached") && err.contains("nothing was changed"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn diagnosis_names_each_problem_and_passes_a_correct_zone() {
    let dir = std::path::PathBuf::from(format!("/tmp/ilot-test-named-{}", unique("")));
    std::fs::create_dir_all(&dir).unwrap();
    let soa = |z: &str| {
        format!("$TTL 300\n$ORIGIN {z}.\n@ IN SOA ns.diag.test. hostmaster.diag.test. 1 3600 900 1209600 300\n@ IN NS ns.diag.test.\n")
    };
    // Deliberately wrong: a bad SPF, no DKIM, a PTR to a name that points elsewhere, and the
    // address on a blocklist.
    let wrong = format!(
        "{}ns IN A 192.0.2.53\nmail IN A 203.0.113.10\n@ IN MX 10 mail.diag.test.\n@ IN TXT \"v=spf1 a -all\"\n\
         other IN A 203.0.113.99\n",
        soa("diag.test")
    );
    let reverse = format!(
        "{}10 IN PTR other.diag.test.\n",
        soa("113.0.203.in-addr.arpa")
    );
    let listed = format!(
        "{}10.113.0.203 IN A 127.0.0.2\n10.113.0.203 IN TXT \"listed for testing\"\n",
        soa("bl.test")
    );
    let mut named = common::named::Named::start(
        &dir,
        &[
            ("diag.test", wrong),
            ("113.0.203.in-addr.arpa", reverse),
            ("bl.test", listed),
        ],
    );
    let smtp_port = common::named::free_port();
    let mut ilot = Ilot::start_full(
        &[],
        &format!(
            "[host]\nipv4 = \"203.0.113.10\"\nhostname = \"mail.diag.test\"\n\n[dns]\n\
             resolvers = [\"127.0.0.1:{}\"]\nblocklists = [\"bl.test\"]\nsmtp_probe = \"127.0.0.1:{smtp_port}\"\n",
            named.port
        ),
    );
    add_mailer(&mut ilot);
    let mail = unique("mail");
    ilot.ok(&[
        "app",
        "install",
        "mailer",
        "--name",
        &mail,
        "--domain",
        "mail.diag.test",
    ]);

    let run = |ilot: &Ilot| {
        let out = ilot.cli(&["diagnose", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), v["checks"].as_array().unwrap().clone())
    };
    let find = |checks: &[serde_json::Value], subject: &str| {
        checks
            .iter()
            .find(|c| c["subject"] == subject)
            .unwrap_or_else(|| panic!("no check {subject}: {checks:?}"))
            .clone()
    };
    let (code, checks) = run(&ilot);
    assert_eq!(code, Some(1), "{checks:?}");
    let spf = find(&checks, "diag.test. TXT");
    assert!(
        spf["status"] == "fail"
            && spf["seen"] == "v=spf1 a -all"
            && spf["expected"] == "v=spf1 mx -all",
        "{spf}"
    );
    let dkim = find(&checks, "ilot1._domainkey.diag.test. TXT");
    assert!(
        dkim["status"] == "fail" && dkim["seen"] == "nothing",
        "{dkim}"
    );
    assert_eq!(find(&checks, "diag.test. MX")["status"], "ok");
    let ptr = find(&checks, "reverse DNS of 203.0.113.10");
    assert!(
        ptr["status"] == "fail"
            && ptr["seen"]
                .as_str()
                .unwrap()
                .contains("does not resolve back"),
        "{ptr}"
    );
    let p25 = find(&checks, "outbound port 25");
    assert!(
        p25["status"] == "fail" && p25["fix"].as_str().unwrap().contains("relay"),
        "{p25}"
    );
    let bl = find(&checks, "blocklist bl.test");
    assert!(
        bl["status"] == "fail" && bl["seen"].as_str().unwrap().contains("listed for testing"),
        "{bl}"
    );
    let human = ilot.cli(&["diagnose", "mail"]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("FAIL  reverse DNS of 203.0.113.10") && human.contains("fix:"),
        "{human}"
    );
    assert!(ilot.ok(&["events"]).contains("dns-drift"));

    // The zone as ilot prints it, a PTR that confirms, no listing, port 25 answering:
    // nothing to report.
    let snippet = ilot.ok(&["dns", "show", "--format", "zone"]);
    let forward: String = snippet
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|n| n.ends_with("diag.test."))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(
        named.dir.join("diag.test.zone"),
        format!("{}ns IN A 192.0.2.53\n{forward}", soa("diag.test")),
    )
    .unwrap();
    std::fs::write(
        named.dir.join("113.0.203.in-addr.arpa.zone"),
        format!(
            "{}10 IN PTR mail.diag.test.\n",
            soa("113.0.203.in-addr.arpa")
        ),
    )
    .unwrap();
    std::fs::write(named.dir.join("bl.test.zone"), soa("bl.test")).unwrap();
    named.reload();
    let _smtp = std::net::TcpListener::bind(("127.0.0.1", smtp_port)).unwrap();
    let (code, checks) = run(&ilot);
    let bad: Vec<&serde_json::Value> = checks.iter().filter(|c| c["status"] != "ok").collect();
    assert!(bad.is_empty() && code == Some(0), "{bad:?}");
    assert!(
        checks.len() >= 15,
        "every planned record is checked: {checks:?}"
    );
    drop(named);
    let _ = std::fs::remove_dir_all(&dir);
}
