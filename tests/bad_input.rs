//! Bad input gets a clear error (exit 2) naming what is wrong, and changes nothing; objects
//! ilot does not own are never touched.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let ilot = Ilot::start();
    let cases: &[(&[&str], &str)] = &[
        (&["app", "install", "nope"], "no app \"nope\""),
        (
            &["app", "install", "hello", "--name", "../x"],
            "invalid instance name",
        ),
        (
            &["app", "install", "hello", "--name", "a;b"],
            "invalid instance name",
        ),
        (
            &["app", "install", "hello", "--name", "Hello"],
            "invalid instance name",
        ),
        (
            &["app", "install", "hello", "--name", "a b"],
            "invalid instance name",
        ),
        (
            &["app", "install", "hello", "--set", "Bad=1"],
            "setting key",
        ),
        (
            &["app", "install", "hello", "--set", "novalue"],
            "not KEY=VALUE",
        ),
        (
            &["app", "install", "hello", "--set", "colour=red"],
            "has no setting \"colour\"",
        ),
        (
            &[
                "app",
                "install",
                "hello",
                "--set",
                "greeting=a",
                "--set",
                "greeting=b",
            ],
            "given twice",
        ),
        (
            &["app", "install", "hello", "--domain", "not a domain"],
            "invalid domain",
        ),
        (&["app", "show", "ghost"], "no instance named \"ghost\""),
        (&["app", "upgrade", "ghost"], "no instance named"),
        (&["app", "remove", "ghost"], "no instance named"),
        (&["app", "remove", "../etc"], "invalid instance name"),
        (&["app", "stop", "ghost"], "no instance named"),
        (&["app", "logs", "ghost"], "no instance named"),
        (&["app", "frobnicate"], "unrecognized subcommand"),
    ];
    for (args, expected) in cases {
        let err = ilot.fails(args, 2);
        assert!(
            err.contains(expected),
            "ilot {args:?}: expected {expected:?} in: {err}"
        );
    }
    assert_eq!(
        ilot.objects(),
        (vec![], vec![], vec![]),
        "bad input changed the engine"
    );
    assert_eq!(ilot.json(&["app", "list"]), serde_json::json!([]));

    // Errors on an installed instance leave it as it was.
    let name = unique("bad");
    ilot.ok(&["app", "install", "hello", "--name", &name]);
    let objects = ilot.objects();
    let id = docker_ok(&["inspect", "-f", "{{.Id}}", &format!("ilot-{name}-web")]);
    for (args, expected) in [
        (
            vec!["app", "install", "hello", "--name", &name],
            "already installed",
        ),
        (
            vec!["app", "upgrade", &name, "--image", "bad ref;rm -rf"],
            "invalid image reference",
        ),
        (
            vec!["app", "upgrade", &name, "--image", "db=ilot/hello:2.0"],
            "no service \"db\"",
        ),
        (
            vec!["app", "logs", &name, "--service", "db"],
            "no service \"db\"",
        ),
    ] {
        let err = ilot.fails(&args, 2);
        assert!(
            err.contains(expected),
            "ilot {args:?}: expected {expected:?} in: {err}"
        );
    }
    assert_eq!(ilot.objects(), objects);
    assert_eq!(
        docker_ok(&["inspect", "-f", "{{.Id}}", &format!("ilot-{name}-web")]),
        id
    );

    // --json errors are JSON on stdout too, for scripts.
    let out = ilot.cli(&["app", "show", "ghost", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "not_found");
}

#[test]
fn malformed_api_requests_get_an_error_and_the_daemon_lives_on() {
    let ilot = Ilot::start();
    let ask = |payload: &[u8]| -> String {
        let mut s = UnixStream::connect(&ilot.socket).unwrap();
        // The daemon answers a too-long request before reading it all, then hangs up.
        let _ = s.write_all(payload);
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        line
    };
    assert!(ask(b"not json\n").contains("malformed request"));
    assert!(
        ask(b"{\"method\":\"app_install\",\"params\":{\"app\":7}}\n").contains("malformed request")
    );
    assert!(ask(b"{\"method\":\"rm_rf\"}\n").contains("malformed request"));
    let mut huge = vec![b'x'; 2 << 20];
    huge.push(b'\n');
    assert!(ask(&huge).contains("too long"));
    ilot.ok(&["status"]);
}

#[test]
fn invalid_config_and_catalogue_are_refused_with_their_location() {
    let dir = std::env::temp_dir().join(format!("ilot-test-cfg-{}", unique("")));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("s.sock");
    let long_label = format!("[[dns.zones]]\nname = \"{}.org\"\n", "a".repeat(64));
    let cases = [
        (
            "[daemon]\nsocket = \"/x\"\nsockett = \"/y\"\n",
            ":3:1",
            "sockett",
        ),
        ("[daemon]\nsocket = 3\n", ":2:10", "socket = 3"),
        ("[daemon\n", ":1:", "invalid config"),
        (
            "[daemon]\ndocker = \"tcp://10.0.0.1:2375\"\n",
            "docker",
            "unix://",
        ),
        (
            "[daemon]\nstate_dir = \"relative\"\n",
            "state_dir",
            "absolute",
        ),
        ("[host]\nipv4 = \"300.1.2.3\"\n", ":2:8", "invalid"),
        (
            "[host]\nhostname = \"mail example\"\n",
            "hostname",
            "not a host name",
        ),
        // DNS zones: a name that would inject into a zone file, an address block off a label
        // boundary, a label over 63 bytes, a push zone without its key, a bad extra record.
        (
            "[[dns.zones]]\nname = \"ex.org\\nevil IN A 1.2.3.4\"\n",
            "[[dns.zones]]",
            "ex.org",
        ),
        (
            "[[dns.zones]]\nname = \"203.0.113.0/25\"\n",
            "[[dns.zones]]",
            "label boundary",
        ),
        (
            long_label.as_str(),
            "[[dns.zones]]",
            "aaaa",
        ),
        (
            "[[dns.zones]]\nname = \"ex.org\"\nmode = \"push\"\nserver = \"127.0.0.1:53\"\n",
            "[[dns.zones]]",
            "tsig_key and tsig_secret_file",
        ),
        (
            "[[dns.zones]]\nname = \"ex.org\"\nmode = \"pull\"\n",
            ":3:8",
            "pull",
        ),
        (
            "[[dns.zones]]\nname = \"ex.org\"\nrecords = [{ type = \"TXT\", value = \"a\\nb IN A 1.2.3.4\" }]\n",
            "[[dns.zones]]",
            "control characters",
        ),
        ("[dns]\ndmarc_policy = \"strict\"\n", "dmarc_policy", "quarantine"),
    ];
    for (text, location, what) in cases {
        let path = dir.join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BIN)
            .args(["daemon", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text:?}: {err}");
        assert!(
            err.contains(&format!("{}", path.display()))
                && err.contains(location)
                && err.contains(what),
            "{text:?}: {err}"
        );
        assert!(!sock.exists());
    }
    // A broken manifest in an extra catalogue dir stops the daemon too, naming the file.
    std::fs::create_dir_all(dir.join("cat/wiki")).unwrap();
    std::fs::write(
        dir.join("cat/wiki/app.toml"),
        "name = \"wiki\"\nversion = 1\n",
    )
    .unwrap();
    let path = dir.join("cat.toml");
    std::fs::write(
        &path,
        format!(
            "[daemon]\nsocket = \"{}\"\nstate_dir = \"{}\"\ncatalog = [\"{}\"]\n",
            sock.display(),
            dir.join("st").display(),
            dir.join("cat").display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["daemon", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cat/wiki/app.toml:2:11") && err.contains("version = 1"),
        "{err}"
    );
    assert!(
        !sock.exists() && !dir.join("st").exists(),
        "nothing created"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unreachable_daemon_and_second_daemon() {
    let out = Command::new(BIN)
        .args(["--socket", "/nonexistent/ilot.sock", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the ilot daemon"));

    let ilot = Ilot::start();
    let out = Command::new(BIN)
        .args(["daemon", "--config"])
        .arg(&ilot.config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("another ilot daemon") || err.contains("in use by another ilot daemon"),
        "{err}"
    );
    ilot.ok(&["status"]);
}

/// Removes the foreign objects a test made, even when it fails.
struct Foreign(Vec<(&'static str, String)>);
impl Drop for Foreign {
    fn drop(&mut self) {
        for (kind, name) in &self.0 {
            let _ = match *kind {
                "container" => docker(&["rm", "-f", name]),
                "network" => docker(&["network", "rm", name]),
                _ => docker(&["volume", "rm", "-f", name]),
            };
        }
    }
}

#[test]
fn objects_ilot_does_not_own_are_never_touched() {
    let mut ilot = Ilot::start();
    let name = unique("own");
    let other = unique("oth");
    let foreign = Foreign(vec![
        ("container", format!("ilot-{name}-web")),
        ("container", format!("{other}-plain")),
        ("container", format!("ilot-{other}-web")),
        ("volume", format!("ilot-{other}-data")),
        ("network", format!("ilot-{other}")),
    ]);
    // A container squatting the name ilot would use, with no labels.
    docker_ok(&[
        "create",
        "--name",
        &format!("ilot-{name}-web"),
        "ilot/hello:1.0",
    ]);
    // An unrelated container, and objects of another ilot (another owner) on the same engine.
    docker_ok(&[
        "create",
        "--name",
        &format!("{other}-plain"),
        "ilot/hello:1.0",
    ]);
    let label = ["--label", "ilot.owner=someone-else", "--label"];
    let inst = format!("ilot.instance={other}");
    docker_ok(&[
        "network",
        "create",
        label[0],
        label[1],
        label[2],
        &inst,
        &format!("ilot-{other}"),
    ]);
    docker_ok(&[
        "volume",
        "create",
        label[0],
        label[1],
        label[2],
        &inst,
        &format!("ilot-{other}-data"),
    ]);
    docker_ok(&[
        "create",
        label[0],
        label[1],
        label[2],
        &inst,
        "--name",
        &format!("ilot-{other}-web"),
        "ilot/hello:1.0",
    ]);

    let err = ilot.fails(&["app", "install", "hello", "--name", &name], 2);
    assert!(
        err.contains(&format!("ilot-{name}-web")) && err.contains("not created by this ilot"),
        "{err}"
    );
    assert_eq!(
        ilot.objects(),
        (vec![], vec![], vec![]),
        "the refused install created nothing"
    );

    // Install, drift-check (restart = orphan sweep + reconcile), plan, purge: none of it sees
    // the foreign objects.
    let mine = unique("mine");
    ilot.ok(&["app", "install", "hello", "--name", &mine]);
    ilot.restart();
    assert!(ilot.ok(&["plan"]).contains("Nothing to do"));
    ilot.ok(&["app", "remove", &mine, "--purge"]);
    for (kind, obj) in &foreign.0 {
        let sub = if *kind == "container" {
            "container"
        } else {
            kind
        };
        assert!(
            docker(&[sub, "inspect", obj]).status.success(),
            "{kind} {obj} was touched"
        );
    }
}

#[test]
fn daemon_without_engine_answers_status_and_refuses_changes_clearly() {
    let dir = std::env::temp_dir().join(format!("ilot-test-noeng-{}", unique("")));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("s.sock");
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nsocket = \"{}\"\nstate_dir = \"{}\"\ndocker = \"unix://{}\"\nowner = \"test-noengine\"\n[proxy]\nenabled = false\n[firewall]\nenabled = false\n",
            sock.display(),
            dir.join("st").display(),
            dir.join("no-docker.sock").display()
        ),
    )
    .unwrap();
    let mut daemon = Command::new(BIN)
        .args(["daemon", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let cli = |args: &[&str]| {
        Command::new(BIN)
            .arg("--socket")
            .arg(&sock)
            .args(args)
            .output()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !cli(&["status"]).status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "daemon did not answer"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = String::from_utf8_lossy(&cli(&["status"]).stdout).into_owned();
    assert!(status.contains("NOT REACHABLE"), "{status}");
    let out = cli(&["app", "install", "hello"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not reachable") && err.contains("hint"),
        "{err}"
    );

    // SIGTERM: a clean exit that removes the socket.
    unsafe { libc_kill(daemon.id() as i32, 15) };
    let code = daemon.wait().unwrap();
    assert!(code.success(), "{code}");
    assert!(!sock.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
