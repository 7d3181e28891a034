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
