//! The nftables firewall, for real, in network namespaces: the daemon runs in a "server"
//! namespace and a client namespace connects to it over a veth link.

mod common;
use common::netns::Net;
use common::*;
use std::time::{Duration, Instant};

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn ports_open_and_close_and_an_unconfirmed_deny_reverts() {
    let mut net = Net::new(1);
    for port in [2222, 8080, 9090, 7070] {
        net.listen(port);
    }
    let mut ilot = Ilot::start_in(
        Some(&net.server.clone()),
        &[],
        "[firewall]\nenabled = true\nssh_ports = [2222]\nconfirm_timeout = \"5s\"\n",
    );
    let (server, server6) = (net.server_ip.clone(), net.server_ip6.clone());
    // SSH is open, IPv4 and IPv6; everything else is dropped.
    assert!(net.connects(0, &server, 2222) && net.connects(0, &server6, 2222));
    assert!(!net.connects(0, &server, 9090) && !net.connects(0, &server6, 9090));
    let table = net.nft(&["list", "table", "inet", "ilot"]);
    assert!(
        table.contains("set ban4")
            && table.contains("chain bans")
            && table.contains("tcp dport 2222 accept"),
        "{table}"
    );
    let show = ilot.json(&["firewall", "show"]);
    assert_eq!(show["open"][0]["port"], "2222/tcp", "{show}");
    assert_eq!(show["open"][0]["for"], "ssh", "{show}");

    // An admin opens a port: at once, no confirmation needed.
    ilot.ok(&["firewall", "allow", "8080/tcp"]);
    assert!(net.connects(0, &server, 8080));

    // Closing SSH could lock the admin out: without `confirm` it is reverted.
    let out = ilot.ok(&["firewall", "deny", "2222"]);
    assert!(out.contains("confirm"), "{out}");
    assert!(!net.connects(0, &server, 2222), "closed for now");
    wait_until("the unconfirmed deny is reverted", 20, || {
        net.connects(0, &server, 2222)
    });
    assert!(ilot.ok(&["events"]).contains("firewall-reverted"));

    // A confirmed deny stays.
    ilot.ok(&["firewall", "deny", "8080"]);
    ilot.ok(&["firewall", "confirm"]);
    std::thread::sleep(Duration::from_secs(6));
    assert!(!net.connects(0, &server, 8080), "confirmed: stays closed");
    ilot.fails(&["firewall", "confirm"], 2);

    // An app's declared ports open with its install and close with its removal.
    let dir = ilot.dir.join("catalog/fwapp");
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = std::fs::read_to_string(ilot.dir.join("catalog/hello/app.toml"))
        .unwrap()
        .replace("name = \"hello\"", "name = \"fwapp\"")
        .replace("[needs]", "[needs]\nfirewall = [{ port = 7070 }]");
    std::fs::write(dir.join("app.toml"), manifest).unwrap();
    // The proxy on every address (not loopback only, as the harness has it): its ports open.
    let config = std::fs::read_to_string(&ilot.config)
        .unwrap()
        .replace("127.0.0.1:0", "0.0.0.0:0");
    std::fs::write(&ilot.config, config).unwrap();
    ilot.restart();
    let https = ilot.json(&["status"])["proxy"]["https"]
        .as_str()
        .unwrap()
        .to_string();
    let https_port: u16 = https.rsplit(':').next().unwrap().parse().unwrap();
    assert_open_for(&ilot, &format!("{https_port}/tcp"), "proxy");
    assert!(
        net.connects(0, &server, https_port),
        "the proxy's HTTPS port answers"
    );
    let app = unique("fw");
    ilot.ok(&["app", "install", "fwapp", "--name", &app]);
    assert!(net.connects(0, &server, 7070));
    assert_open_for(&ilot, "7070/tcp", &format!("instance {app}"));
    ilot.ok(&["app", "remove", &app]);
    assert!(!net.connects(0, &server, 7070));

    // A deny pending when the daemon dies is reverted when it starts again.
    ilot.ok(&["firewall", "deny", "2222"]);
    ilot.kill9();
    ilot.spawn(&[]);
    ilot.wait_ready();
    assert!(net.connects(0, &server, 2222), "reverted at start");
    // Bad input changes nothing.
    let before = table_rules(&net);
    let err = ilot.fails(&["firewall", "allow", "70000"], 2);
    assert!(err.contains("not a port"), "{err}");
    assert_eq!(table_rules(&net), before);
}

/// `ilot firewall show` lists `port` as open, for `why`.
fn assert_open_for(ilot: &Ilot, port: &str, why: &str) {
    let show = ilot.json(&["firewall", "show"]);
    assert!(
        show["open"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["port"] == port && o["for"] == why),
        "{port} for {why}: {show}"
    );
}

fn table_rules(net: &Net) -> String {
    net.nft(&["list", "chain", "inet", "ilot", "input"])
}
