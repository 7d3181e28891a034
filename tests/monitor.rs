//! Monitoring and alerts with real faults: a container killed and started again, a tmpfs
//! filled past its threshold, a Telegram API that answers 429 and 500, commands from an
//! allowed chat and from a stranger. Telegram cannot be reached from here: the Bot API is a
//! stand-in on loopback (tests/common/botapi.py) that speaks the same HTTP API.

mod common;
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
