//! Monitoring and alerts with real faults: a container killed and started again, a tmpfs
//! filled past its threshold, a Telegram API that answers 429 and 500, commands from an
//! allowed chat and from a stranger; a storm of bans that must not silence the other alerts.
//! Telegram cannot be reached from here: the Bot API is a stand-in on loopback
//! (tests/common/botapi.py) that speaks the same HTTP API.

mod common;
use common::pebble::Pebble;
use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "123456:TEST-token-never-logged";

struct BotApi {
    child: Child,
    port: u16,
    smtp_port: u16,
}

impl BotApi {
    fn start() -> BotApi {
        let mut child = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/common/botapi.py"
            ))
            .arg(TOKEN)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let mut ports = line
            .split_whitespace()
            .map(|p| p.parse().expect("the stand-in prints its ports"));
        BotApi {
            child,
            port: ports.next().unwrap(),
            smtp_port: ports.next().unwrap(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> Value {
        let out = Command::new("curl")
            .args(["-sf", &self.url("/_log")])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn post(&self, path: &str, body: &str) {
        let ok = Command::new("curl")
            .args([
                "-sf",
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "-d",
                body,
                &self.url(path),
            ])
            .status()
            .unwrap()
            .success();
        assert!(ok, "POST {path}");
    }

    /// Telegram messages that contain `text`, per chat.
    fn sent(&self, chat: i64, text: &str) -> usize {
        self.log()["sent"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["chat_id"] == chat && m["text"].as_str().unwrap_or("").contains(text))
            .count()
    }

    fn webhooks(&self, rule: &str, state: &str) -> usize {
        self.log()["webhook"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["body"]["rule"] == rule && w["body"]["state"] == state)
            .count()
    }
}

impl Drop for BotApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A 1 MiB tmpfs, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount() -> SmallDisk {
        let dir = PathBuf::from(format!("/tmp/ilot-test-disk-{}", unique("")));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount a tmpfs");
        SmallDisk(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits for `f`; on timeout, fails with what the stand-in received and the daemon's log.
fn wait_until(ilot: &Ilot, api: &BotApi, what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {secs} s\nstand-in: {}\ndaemon log:\n{}",
            api.log(),
            ilot.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn faults_make_one_alert_and_one_recovery_and_telegram_answers_only_its_admin() {
    let api = BotApi::start();
    let disk = SmallDisk::mount();
    let secrets = PathBuf::from(format!("/tmp/ilot-test-secret-{}", unique("")));
    std::fs::write(&secrets, TOKEN).unwrap();
    std::fs::set_permissions(
        &secrets,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let config = format!(
        "[monitor]\ninterval = \"1s\"\ndisks = [\"{disk}\"]\n\n\
         [alerts]\nrate_limit = 100\nheartbeat_url = \"{beat}\"\nheartbeat_every = \"1s\"\n\n\
         [[alerts.rules]]\nname = \"app-down\"\nfor = \"3s\"\nrecover = \"2s\"\n\n\
         [[alerts.rules]]\nname = \"small-disk\"\nmetric = \"disk:{disk}\"\nabove = 50.0\nfor = \"2s\"\nseverity = \"critical\"\n\n\
         [[alerts.channels]]\nkind = \"telegram\"\ntoken_file = \"{token}\"\nchat_ids = [111]\nurl = \"{api}\"\n\n\
         [[alerts.channels]]\nkind = \"webhook\"\nurl = \"{hook}\"\n\n\
         [[alerts.channels]]\nkind = \"ntfy\"\nurl = \"{ntfy}\"\n\n\
         [[alerts.channels]]\nkind = \"email\"\nsmtp = \"127.0.0.1:{smtp}\"\ntls = \"none\"\nfrom = \"ilot@example.org\"\nto = [\"admin@example.org\"]\nmin_severity = \"critical\"\n",
        disk = disk.0.display(),
        token = secrets.display(),
        api = api.url("/"),
        hook = api.url("/webhook"),
        smtp = api.smtp_port,
        ntfy = api.url("/ntfy/ilot-alerts"),
        beat = api.url("/heartbeat"),
    );
    let ilot = Ilot::start_full(&[], &config);
    let name = unique("mon");
    ilot.ok(&["app", "install", "hello", "--name", &name]);
    let container = format!("ilot-{name}-web");
    wait_until(&ilot, &api, "the container is sampled", 15, || {
        ilot.json(&["metrics"])["series"]
            .to_string()
            .contains(&format!("up:{container}"))
    });

    // A short outage (under the rule's 3 s): no alert.
    docker_ok(&["restart", "-t", "0", &container]);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(api.webhooks("app-down", "firing"), 0, "{}", api.log());

    // Killed and left down: exactly one alert on each channel...
    docker_ok(&["kill", &container]);
    wait_until(&ilot, &api, "the app-down alert", 20, || {
        api.sent(111, "app-down") >= 1
    });
    wait_until(&ilot, &api, "the webhook", 10, || {
        api.webhooks("app-down", "firing") == 1
    });
    assert_eq!(
        api.sent(111, &format!("app-down: {container} (not running)")),
        1,
        "{}",
        api.log()
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        api.sent(111, "CRITICAL app-down"),
        1,
        "one alert, not one per sample"
    );
    let list = ilot.json(&["alert", "list"]);
    assert!(
        list["incidents"]
            .to_string()
            .contains("\"rule\":\"app-down\""),
        "{list}"
    );
    // ...and one recovery once it is back.
    docker_ok(&["start", &container]);
    wait_until(&ilot, &api, "the recovery", 20, || {
        api.sent(111, "RESOLVED app-down") == 1
    });
    wait_until(&ilot, &api, "the recovery webhook", 10, || {
        api.webhooks("app-down", "resolved") == 1
    });
    // ntfy got both, a critical alert at the top priority.
    wait_until(&ilot, &api, "ntfy", 10, || {
        api.log()["ntfy"].as_array().unwrap().len() >= 2
    });
    let ntfy = api.log()["ntfy"].to_string();
    assert!(
        ntfy.contains("ilot: app-down firing") && ntfy.contains("\"priority\":\"5\""),
        "{ntfy}"
    );
    assert!(ntfy.contains("ilot: app-down resolved"), "{ntfy}");
    // The dead man's switch beats.
    assert!(
        api.log()["heartbeats"].as_u64().unwrap() >= 3,
        "{}",
        api.log()
    );
    // The email channel (critical only) got both, as mail through SMTP.
    wait_until(&ilot, &api, "the emails", 10, || {
        api.log()["mail"].as_array().unwrap().len() == 2
    });
    let mail = api.log()["mail"].to_string();
    assert!(
        mail.contains("admin@example.org") && mail.contains("app-down firing"),
        "{mail}"
    );
    assert!(mail.contains("app-down resolved"), "{mail}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(api.sent(111, "app-down"), 2, "{}", api.log());

    // The small disk filled past its threshold.
    let mut f = std::fs::File::create(disk.0.join("fill")).unwrap();
    f.write_all(&vec![0u8; 700 << 10]).unwrap();
    f.sync_all().unwrap();
    wait_until(&ilot, &api, "the disk alert", 20, || {
        api.sent(111, "CRITICAL small-disk") == 1
    });
    assert!(
        ilot.ok(&["metrics", &format!("disk:{}", disk.0.display())])
            .contains("points"),
        "the disk's history"
    );

    // The Bot API refuses twice (429 with retry_after, then 500): the message still arrives,
    // once.
    api.post("/_fail", "{\"codes\": [429, 500]}");
    let before = api.log()["attempts"].as_u64().unwrap();
    ilot.ok(&["alert", "test"]);
    wait_until(&ilot, &api, "the test message", 30, || {
        api.sent(111, "a test message") == 1
    });
    assert!(api.log()["attempts"].as_u64().unwrap() >= before + 3);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(api.sent(111, "a test message"), 1, "delivered exactly once");

    // Commands: the admin's chat is answered; a stranger gets nothing, and it is logged.
    api.post("/_update", "{\"chat_id\": 999, \"text\": \"/bans\"}");
    api.post("/_update", "{\"chat_id\": 111, \"text\": \"/status\"}");
    wait_until(&ilot, &api, "/status answered", 15, || {
        api.sent(111, "No alert firing") + api.sent(111, "apps") >= 1
    });
    api.post(
        "/_update",
        "{\"chat_id\": 111, \"text\": \"/silence disk-filling 2h\"}",
    );
    wait_until(&ilot, &api, "/silence answered", 15, || {
        api.sent(111, "disk-filling silenced until") == 1
    });
    assert!(ilot.json(&["alert", "list"])["silences"]
        .to_string()
        .contains("disk-filling"));
    assert_eq!(
        api.log()["sent"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["chat_id"] == 999)
            .count(),
        0,
        "a stranger gets no answer"
    );
    assert!(
        ilot.log().contains("command from chat 999 refused"),
        "{}",
        ilot.log()
    );

    // The token never shows: not in the log, not in the JSON.
    assert!(!ilot.log().contains(TOKEN));
    assert!(!ilot.ok(&["alert", "list", "--json"]).contains(TOKEN));
    // Bad input: an unknown rule is refused by name.
    let err = ilot.fails(&["alert", "silence", "nope", "1h"], 2);
    assert!(err.contains("no alert rule named nope"), "{err}");

    ilot.ok(&["app", "remove", &name, "--purge"]);
    let _ = std::fs::remove_file(&secrets);
}

/// A storm of bans must not silence anything else (issue 19). 20,000 addresses fail once
/// each in one write to a jail's file: the guard bans them all in one batch. Then a backup
/// fails (its repository is on a full 1 MiB disk) and a certificate is issued (Pebble): the
/// backup-failed alert still reaches the webhook, and the app is still told to reload its
/// certificate. Before the fix each ban was one event, and the subscribers of a bus that
/// overflowed stopped for good. The firewall is off here (a daemon on the host): bans are
/// decided and listed, not put in the kernel.
#[test]
fn a_ban_storm_does_not_silence_alerts_or_certificate_reloads() {
    const STORM: usize = 20_000;
    let api = BotApi::start();
    let disk = SmallDisk::mount();
    let mut pebble = Pebble::prepare();
    let logs = PathBuf::from(format!("/tmp/ilot-test-storm-{}", unique("")));
    std::fs::create_dir_all(&logs).unwrap();
    struct Gone(PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _logs_gone = Gone(logs.clone());
    let auth = logs.join("auth.log");
    std::fs::write(&auth, "").unwrap();
    let config = format!(
        "[acme]\ndirectory = \"{dir}\"\nca_root = \"{ca}\"\nemail = \"admin@example.test\"\n\n\
         [host]\nipv4 = \"203.0.113.10\"\n\n[dns]\ncaa = \"pebble.test\"\n\n\
         [guard]\n\n[guard.jails.sshd]\nfiles = [\"{auth}\"]\nmaxretry = 1\nbantime = \"1h\"\n\n\
         [backup]\nrepository = \"{disk}/repo\"\n\n\
         [alerts]\nrate_limit = 100\n\n\
         [[alerts.channels]]\nkind = \"webhook\"\nurl = \"{hook}\"\n",
        dir = pebble.directory(),
        ca = pebble.dir.join("ca.pem").display(),
        auth = auth.display(),
        disk = disk.0.display(),
        hook = api.url("/webhook"),
    );
    let mut ilot = Ilot::start_full(&[], &config);
    // An app that terminates TLS itself and records the certificate its reload command saw.
    let dir = ilot.dir.join("catalog/tlsapp");
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = std::fs::read_to_string(ilot.dir.join("catalog/hello/app.toml"))
        .unwrap()
        .replace("name = \"hello\"", "name = \"tlsapp\"")
        .replace(
            "[needs]",
            "[needs]\ntls = { service = \"web\", path = \"/tls\", owner = \"10001:10001\", reload = [\"sh\", \"-c\", \"cp /tls/fullchain.pem /tmp/loaded.pem\"] }",
        );
    std::fs::write(dir.join("app.toml"), manifest).unwrap();
    ilot.restart();
    let name = unique("storm");
    let domain = format!("{name}.example.test");
    ilot.ok(&[
        "app", "install", "tlsapp", "--name", &name, "--domain", &domain,
    ]);
    let container = format!("ilot-{name}-web");
    ilot.ok(&["backup", "init"]);
    // More data than the backup disk holds.
    docker_ok(&[
        "exec",
        &container,
        "sh",
        "-c",
        "head -c 3000000 /dev/urandom > /data/big.bin",
    ]);

    // The storm: one write, 20,000 distinct addresses (100.64.0.0/10), one failure each.
    let now = Command::new("date")
        .arg("+%b %e %H:%M:%S")
        .output()
        .unwrap()
        .stdout;
    let now = String::from_utf8(now).unwrap().trim_end().to_string();
    let mut lines = String::new();
    for i in 0..STORM {
        lines.push_str(&format!(
            "{now} pi sshd[{}]: Failed password for root from 100.64.{}.{} port 40000 ssh2\n",
            1000 + i,
            i / 250,
            i % 250 + 1
        ));
    }
    std::fs::OpenOptions::new()
        .append(true)
        .open(&auth)
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    wait_until(&ilot, &api, "every address banned", 120, || {
        ilot.json(&["ban", "list"])["total"] == STORM
    });
    // The storm is one alert, counted from one event that stands for every ban.
    wait_until(&ilot, &api, "the ban-storm alert", 20, || {
        api.webhooks("ban-storm", "event") == 1
    });

    // After it: a failed backup still alerts...
    let out = ilot.cli(&["backup", "run", &name]);
    assert!(
        !out.status.success(),
        "the backup cannot fit on a 1 MiB disk: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_until(&ilot, &api, "the backup-failed alert", 20, || {
        api.webhooks("backup-failed", "event") == 1
    });
    // ...and a new certificate still reaches the app.
    let http = ilot.json(&["status"])["proxy"]["http"]
        .as_str()
        .unwrap()
        .to_string();
    pebble.start(http.rsplit_once(':').unwrap().1.parse().unwrap());
    ilot.ok(&["cert", "renew", &domain, "--force"]);
    wait_until(&ilot, &api, "the app's certificate reload", 30, || {
        docker(&["exec", &container, "test", "-f", "/tmp/loaded.pem"])
            .status
            .success()
    });
    assert!(ilot.ok(&["events"]).contains("tls-reloaded"));
}
