//! Backups for real: a restic-format repository in a directory, the demo app's volume on the
//! real engine, rustic_core reading and writing it, and restic (Debian's) opening it too.

mod common;
use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A repository directory removed on drop (tests/run.sh also removes /tmp/ilot-test-*).
struct RepoDir(PathBuf);

impl RepoDir {
    fn new() -> RepoDir {
        RepoDir(PathBuf::from(format!("/tmp/ilot-test-{}", unique("repo"))))
    }
    /// The config for it; no scheduled run unless `extra` sets `at`.
    fn config(&self, extra: &str) -> String {
        let at = if extra.contains("at = ") {
            ""
        } else {
            "at = \"off\"\n"
        };
        format!(
            "[backup]\nrepository = \"{}/repo\"\n{at}{extra}",
            self.0.display()
        )
    }
}

impl Drop for RepoDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn snapshots(ilot: &Ilot) -> Vec<Value> {
    ilot.json(&["backup", "list"])["snapshots"]
        .as_array()
        .unwrap()
        .clone()
}

/// Debian's restic on `location` with ilot's password file (and `extra` global options and
/// environment): its standard output, or a panic with what it said.
fn restic(
    ilot: &Ilot,
    location: &str,
    extra: &[String],
    env: &[(&str, &str)],
    args: &[&str],
) -> Vec<u8> {
    let out = std::process::Command::new("restic")
        .args(["-r", location, "--password-file"])
        .arg(ilot.dir.join("state/backup/password"))
        .args(extra)
        .args(["--no-lock", "--no-cache"])
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("restic (tests/run.sh installs it)");
    assert!(
        out.status.success(),
        "restic {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The snapshots restic lists in `location`.
fn restic_snapshots(
    ilot: &Ilot,
    location: &str,
    extra: &[String],
    env: &[(&str, &str)],
) -> Vec<Value> {
    let out = restic(ilot, location, extra, env, &["snapshots", "--json"]);
    serde_json::from_slice::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// 400 MB of new random bytes in the instance's volume, then `ilot backup run NAME` started in
/// the background (its output piped): a run long enough to be cut in the middle.
fn start_big_backup_run(ilot: &Ilot, name: &str) -> std::process::Child {
    docker_ok(&[
        "exec",
        &format!("ilot-{name}-web"),
        "sh",
        "-c",
        "head -c 400000000 /dev/urandom > /data/big.bin",
    ]);
    std::process::Command::new(BIN)
        .arg("--socket")
        .arg(&ilot.socket)
        .args(["backup", "run", name])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn container_env(container: &str, key: &str) -> String {
    let env: Vec<String> = serde_json::from_str(&docker_ok(&[
        "inspect",
        container,
        "--format",
        "{{json .Config.Env}}",
    ]))
    .unwrap();
    env.iter()
        .find_map(|e| e.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} not in {env:?}"))
        .to_string()
}

#[test]
fn a_snapshot_restores_every_file_as_a_new_instance_and_only_its_password_opens_it() {
    let repo = RepoDir::new();
    let ilot = Ilot::start_full(&[], &repo.config(""));
    let name = unique("bk");
    ilot.ok(&["app", "install", "hello", "--name", &name]);
    let volume = format!("ilot-{name}-data");
    let container = format!("ilot-{name}-web");
    // Data worth keeping: the visit counter, and a few MiB of random bytes.
    let url = ilot.direct_url(&name);
    for _ in 0..3 {
        assert_eq!(http_get_eventually(&format!("{url}cgi-bin/visit")).0, 200);
    }
    docker_ok(&["exec", &container, "sh", "-c", "head -c 3000000 /dev/urandom > /data/photos.bin && mkdir -p /data/album && echo hi > /data/album/note.txt"]);

    // Before `backup init`: a clear error, nothing made.
    let err = ilot.fails(&["backup", "run"], 2);
    assert!(
        err.contains("password file") && err.contains("ilot backup init"),
        "{err}"
    );
    let out = ilot.ok(&["backup", "init"]);
    let password = out
        .lines()
        .find_map(|l| l.strip_prefix("its password: "))
        .unwrap_or_else(|| panic!("no password shown: {out}"))
        .trim()
        .to_string();
    assert_eq!(password.len(), 32);
    let pw_file = ilot.dir.join("state/backup/password");
    assert_eq!(path_mode(&pw_file), 0o600);
    // Shown once: a second init says the repository is there, and shows nothing.
    let again = ilot.json(&["backup", "init"]);
    assert_eq!(again["created"], Value::Bool(false));
    assert!(!again.to_string().contains(&password));
    assert!(
        !ilot.log().contains(&password),
        "the password is in the log"
    );

    let run = ilot.json(&["backup", "run", &name]);
    let id = run["snapshots"][0]["id"].as_str().unwrap().to_string();
    let before = volume_checksums(&volume);
    assert!(
        before.contains("photos.bin") && before.contains("note.txt"),
        "{before}"
    );
    // The container runs again after the backup (it was paused only while its files were read).
    let state = docker_ok(&["inspect", &container, "--format", "{{.State.Status}}"]);
    assert_eq!(state, "running");

    // Then the data changes.
    http_get_eventually(&format!("{url}cgi-bin/visit"));
    docker_ok(&[
        "exec",
        &container,
        "sh",
        "-c",
        "rm /data/photos.bin; echo changed > /data/album/note.txt",
    ]);
    assert_ne!(volume_checksums(&volume), before);

    // A restore never overwrites: the original name is taken.
    let err = ilot.fails(&["backup", "restore", &id], 2);
    assert!(
        err.contains("never overwrites") && err.contains("--as"),
        "{err}"
    );
    // As a new instance: every file as it was, the same secrets, healthy.
    let copy = unique("bkc");
    let restored = ilot.json(&["backup", "restore", &id[..8], "--as", &copy]);
    assert_eq!(restored["instance"], copy.as_str());
    assert_eq!(volume_checksums(&format!("ilot-{copy}-data")), before);
    assert_eq!(
        container_env(&format!("ilot-{copy}-web"), "ADMIN_TOKEN"),
        container_env(&container, "ADMIN_TOKEN")
    );
    let list = ilot.json(&["app", "list"]);
    assert!(list.to_string().contains(&copy), "{list}");
    let (code, body) = http_get_eventually(&format!("{}cgi-bin/visit", ilot.direct_url(&copy)));
    assert_eq!(code, 200, "{body}");

    // A wrong password is refused, and says so.
    std::fs::write(&pw_file, "not-the-password\n").unwrap();
    let err = ilot.fails(&["backup", "list"], 2);
    assert!(err.contains("password is wrong"), "{err}");
    std::fs::write(&pw_file, format!("{password}\n")).unwrap();
    assert_eq!(snapshots(&ilot).len(), 1);

    // The repository is restic's format: restic opens it with the same password.
    let snaps = restic_snapshots(&ilot, &format!("{}/repo", repo.0.display()), &[], &[]);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(snaps[0]["short_id"], &id[..8]);
    let check = ilot.json(&["backup", "check", "--read-data"]);
    assert_eq!(check["ok"], Value::Bool(true), "{check}");

    // A restore drill: restored aside, every file compared with the repository's, healthy,
    // then gone without a trace.
    let drill = ilot.json(&["backup", "drill", &name]);
    assert_eq!(drill["drills"][0]["ok"], Value::Bool(true), "{drill}");
    assert!(
        drill["drills"][0]["verified_files"].as_u64().unwrap() >= 3,
        "{drill}"
    );
    let (containers, _, volumes) = ilot.objects();
    assert!(
        !containers
            .iter()
            .chain(&volumes)
            .any(|o| o.contains("drill")),
        "the drill left {containers:?} {volumes:?}"
    );
    // A damaged repository fails the drill, which says so (an alert), and leaves nothing.
    let data = repo.0.join("repo/data");
    let mut packs: Vec<PathBuf> = std::fs::read_dir(&data)
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    packs.sort_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0));
    let biggest = packs.last().expect("a data pack").clone();
    let mut bytes = std::fs::read(&biggest).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0xff;
    }
    std::fs::write(&biggest, bytes).unwrap();
    let err = ilot.fails(&["backup", "drill", &name], 1);
    assert!(err.contains("restore drill failed"), "{err}");
    let events = ilot.json(&["events"]);
    assert!(events.to_string().contains("drill-failed"), "{events}");
    let (containers, _, volumes) = ilot.objects();
    assert!(
        !containers
            .iter()
            .chain(&volumes)
            .any(|o| o.contains("drill")),
        "the failed drill left {containers:?} {volumes:?}"
    );
}

#[test]
fn a_restore_in_place_keeps_what_it_replaces() {
    let repo = RepoDir::new();
    let ilot = Ilot::start_full(&[], &repo.config(""));
    let name = unique("rp");
    ilot.ok(&["app", "install", "hello", "--name", &name]);
    let volume = format!("ilot-{name}-data");
    let container = format!("ilot-{name}-web");
    docker_ok(&[
        "exec",
        &container,
        "sh",
        "-c",
        "echo good > /data/state.txt",
    ]);
    ilot.ok(&["backup", "init"]);
    let id = ilot.json(&["backup", "run", &name])["snapshots"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let good = volume_checksums(&volume);
    // Then something goes wrong with the data.
    docker_ok(&[
        "exec",
        &container,
        "sh",
        "-c",
        "echo broken > /data/state.txt",
    ]);
    let broken = volume_checksums(&volume);
    assert_ne!(broken, good);

    // Bad requests change nothing.
    let err = ilot.fails(&["backup", "restore", "latest"], 2);
    assert!(err.contains("--instance"), "{err}");
    let err = ilot.fails(&["backup", "restore", &id, "--instance", "someone-else"], 2);
    assert!(err.contains("not of"), "{err}");
    let err = ilot.fails(&["backup", "restore", "latest", "--instance", &name], 2);
    assert!(
        err.contains("never overwrites") && err.contains("--replace"),
        "{err}"
    );
    assert_eq!(volume_checksums(&volume), broken);

    // Asked to: the latest snapshot back in place, and what it replaced kept as a snapshot.
    let out = ilot.json(&[
        "backup",
        "restore",
        "latest",
        "--instance",
        &name,
        "--replace",
    ]);
    assert_eq!(out["snapshot"], id.as_str(), "{out}");
    assert_eq!(out["replaced"], Value::Bool(true), "{out}");
    assert_eq!(volume_checksums(&volume), good);
    assert_eq!(ilot.json(&["app", "show", &name])["status"], "running");
    let before = out["before"]
        .as_str()
        .expect("the replaced state's snapshot");
    let aside = unique("rpa");
    ilot.ok(&["backup", "restore", before, "--as", &aside]);
    assert_eq!(
        volume_checksums(&format!("ilot-{aside}-data")),
        broken,
        "the replaced state is in its snapshot"
    );
}

#[test]
fn retention_keeps_the_newest_and_a_killed_backup_leaves_the_others_intact() {
    let repo = RepoDir::new();
    let mut ilot = Ilot::start_full(
        &[],
        &repo.config("keep_last = 2\nkeep_daily = 0\nkeep_weekly = 0\nkeep_monthly = 0\n"),
    );
    let name = unique("rt");
    ilot.ok(&["app", "install", "hello", "--name", &name]);
    ilot.ok(&["backup", "init"]);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let run = ilot.json(&["backup", "run", &name]);
        ids.push(run["snapshots"][0]["id"].as_str().unwrap().to_string());
    }
    let kept: Vec<String> = snapshots(&ilot)
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kept, ids[1..], "keep_last = 2 keeps the two newest");

    // A big volume, and the daemon killed while it is read.
    let container = format!("ilot-{name}-web");
    let child = start_big_backup_run(&ilot, &name);
    // Kill it once the container is paused (the volume is being read).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = docker_ok(&["inspect", &container, "--format", "{{.State.Status}}"]);
        if state == "paused" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backup never paused {container}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    ilot.kill9();
    let _ = child.wait_with_output(); // reads its pipes: it can never block on them
    ilot.spawn(&[]);
    ilot.wait_ready();
    // The daemon thawed the container it had paused; the two snapshots are as they were.
    let state = docker_ok(&["inspect", &container, "--format", "{{.State.Status}}"]);
    assert_eq!(state, "running");
    let after: Vec<String> = snapshots(&ilot)
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        after, kept,
        "the killed backup added no snapshot and removed none"
    );
    // The next one succeeds, and the repository is sound.
    let run = ilot.json(&["backup", "run", &name]);
    assert!(
        run["snapshots"][0]["bytes"].as_u64().unwrap() > 400_000_000,
        "{run}"
    );
    let check = ilot.json(&["backup", "check"]);
    assert_eq!(check["ok"], Value::Bool(true), "{check}");
    assert_eq!(snapshots(&ilot).len(), 2);
}

#[test]
fn an_app_with_a_database_comes_back_with_its_dump_loaded() {
    for image in [
        "ilot/standin-postgres:1.0",
        "ilot/standin-redis:1.0",
        "ilot/standin-web:1.0",
    ] {
        assert!(
            docker(&["image", "inspect", image]).status.success(),
            "{image} missing: run tests/run.sh"
        );
    }
    let repo = RepoDir::new();
    let ilot = Ilot::start_full(&[], &repo.config(""));
    let nc = unique("nc");
    ilot.ok(&[
        "app",
        "install",
        "nextcloud",
        "--name",
        &nc,
        "--domain",
        &format!("{nc}.example.test"),
        "--image",
        "db=ilot/standin-postgres:1.0",
        "--image",
        "redis=ilot/standin-redis:1.0",
        "--image",
        "web=ilot/standin-web:1.0",
        "--image",
        "cron=ilot/standin-web:1.0",
    ]);
    let psql = |instance: &str, sql: &str| {
        docker_ok(&[
            "exec",
            &format!("ilot-{instance}-db"),
            "sh",
            "-c",
            &format!("psql -tA -U \"$POSTGRES_USER\" \"$POSTGRES_DB\" -c \"{sql}\""),
        ])
    };
    // Something only the database holds.
    psql(
        &nc,
        "INSERT INTO standin_settings (k, v) VALUES ('marker', 'before-the-backup')",
    );
    ilot.ok(&["backup", "init"]);
    let maintenance = |instance: &str| -> Value {
        let out = docker_ok(&[
            "exec",
            &format!("ilot-{instance}-web"),
            "python3",
            "-c",
            "import json,urllib.request; print(urllib.request.urlopen('http://127.0.0.1/status.php').read().decode())",
        ]);
        serde_json::from_str::<Value>(&out).unwrap()["maintenance"].clone()
    };
    assert_eq!(maintenance(&nc), Value::Bool(false));
    let run = ilot.json(&["backup", "run", &nc]);
    let id = run["snapshots"][0]["id"].as_str().unwrap().to_string();
    // The files were read in maintenance mode (the manifest's quiesce, through occ), and
    // Nextcloud is out of it again.
    assert_eq!(
        maintenance(&nc),
        Value::Bool(false),
        "resumed after the backup"
    );
    let html = docker_ok(&[
        "volume",
        "inspect",
        &format!("ilot-{nc}-html"),
        "--format",
        "{{.Mountpoint}}",
    ]);
    let out = restic(
        &ilot,
        &format!("{}/repo", repo.0.display()),
        &[],
        &[],
        &["dump", &id, &format!("{html}/config/ilot-standin.json")],
    );
    let saved: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(saved["maintenance"], Value::Bool(true), "{saved}");
    psql(
        &nc,
        "UPDATE standin_settings SET v = 'changed' WHERE k = 'marker'",
    );

    // Its domain is the original's: the copy needs its own.
    let copy = unique("ncc");
    let err = ilot.fails(&["backup", "restore", &id, "--as", &copy], 2);
    assert!(err.contains("--domain"), "{err}");
    assert_eq!(
        ilot.json(&["app", "list"]).as_array().unwrap().len(),
        1,
        "nothing made"
    );
    let restored = ilot.json(&[
        "backup",
        "restore",
        &id,
        "--as",
        &copy,
        "--domain",
        &format!("{copy}.example.test"),
    ]);
    assert_eq!(restored["dumps"], serde_json::json!(["nextcloud.sql"]));
    assert_eq!(
        psql(&copy, "SELECT v FROM standin_settings WHERE k = 'marker'"),
        "before-the-backup"
    );
    assert_eq!(
        psql(&nc, "SELECT v FROM standin_settings WHERE k = 'marker'"),
        "changed",
        "the original is untouched"
    );
    // The html volume came back too, out of the maintenance mode it was saved in, and the
    // copy serves.
    let show = ilot.json(&["app", "show", &copy]);
    assert_eq!(show["status"], "running", "{show}");
    assert_eq!(maintenance(&copy), Value::Bool(false), "the copy resumed");
}

#[test]
fn the_daily_run_happens_once_a_day_even_after_the_time_was_missed() {
    let repo = RepoDir::new();
    // 00:00 has always passed today: as for a machine that was off at the scheduled time, the
    // run happens once the daemon is up (10 s after start), and only once that day.
    let mut ilot = Ilot::start_full(&[], &repo.config("at = \"00:00\"\n"));
    ilot.ok(&["backup", "init"]);
    let name = unique("sc");
    ilot.ok(&["app", "install", "hello", "--name", &name]);
    let deadline = Instant::now() + Duration::from_secs(90);
    while snapshots(&ilot).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no scheduled backup within 90 s; log:\n{}",
            ilot.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let events = ilot.json(&["events"]);
    assert!(events.to_string().contains("backup-done"), "{events}");
    // The run goes on with the retention after its snapshot is visible: a request that takes
    // the operation lock returns only once it is over (and the day recorded).
    ilot.fails(&["backup", "run", "no-such-instance"], 2);
    // Restarted the same day: the day's run is remembered, none again.
    ilot.restart();
    std::thread::sleep(Duration::from_secs(15));
    // One of the instance, one of ilot itself (its config and keys).
    assert_eq!(
        snapshots(&ilot).len(),
        2,
        "the day's run happened once; log:\n{}",
        ilot.log()
    );
}

#[test]
fn a_new_machine_comes_back_from_the_repository_and_its_password() {
    let repo = RepoDir::new();
    let old = Ilot::start_full(&[], &repo.config(""));
    let (n1, n2) = (unique("ra"), unique("rb"));
    let mut sums = Vec::new();
    for (n, data) in [(&n1, "first"), (&n2, "second")] {
        old.ok(&["app", "install", "hello", "--name", n]);
        docker_ok(&[
            "exec",
            &format!("ilot-{n}-web"),
            "sh",
            "-c",
            &format!("echo {data} > /data/{data}.txt"),
        ]);
        sums.push(volume_checksums(&format!("ilot-{n}-data")));
    }
    old.ok(&["backup", "init"]);
    let run = old.json(&["backup", "run"]);
    let instances: Vec<&str> = run["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["instance"].as_str().unwrap())
        .collect();
    assert_eq!(instances.len(), 3, "two instances and ilot itself: {run}");
    assert!(instances.contains(&""), "{run}");
    let password = std::fs::read_to_string(old.dir.join("state/backup/password")).unwrap();
    let old_config = std::fs::read_to_string(&old.config).unwrap();
    // The old machine is gone: its apps, their data, its state.
    old.ok(&["app", "remove", &n1, "--purge"]);
    old.ok(&["app", "remove", &n2, "--purge"]);
    drop(old);

    // A fresh one, given the repository and its password.
    let new = Ilot::start_full(&[], &repo.config(""));
    let dir = new.dir.join("state/backup");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("password"), &password).unwrap();
    std::fs::set_permissions(
        dir.join("password"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let rec = new.json(&["backup", "recover"]);
    assert_eq!(rec["restored"].as_array().unwrap().len(), 2, "{rec}");
    for (n, want) in [(&n1, &sums[0]), (&n2, &sums[1])] {
        assert_eq!(
            &volume_checksums(&format!("ilot-{n}-data")),
            want,
            "{n}'s data"
        );
        assert_eq!(new.json(&["app", "show", n])["status"], "running");
    }
    let recovered = rec["config"]
        .as_str()
        .expect("the old config is recovered aside");
    assert_eq!(std::fs::read_to_string(recovered).unwrap(), old_config);
    // Run again: what is here is left alone.
    let again = new.json(&["backup", "recover"]);
    assert_eq!(again["skipped"].as_array().unwrap().len(), 2, "{again}");
}

/// The round trip every repository must do, on a remote one: the demo app backed up, its data
/// changed, the snapshot restored as a new instance with every file as it was, the repository
/// checked byte for byte; then a second run that retention (keep_last = 1) leaves alone.
/// Returns the instance's name.
fn remote_round_trip(ilot: &Ilot) -> String {
    let name = unique("rm");
    ilot.ok(&["app", "install", "hello", "--name", &name]);
    let volume = format!("ilot-{name}-data");
    let container = format!("ilot-{name}-web");
    docker_ok(&["exec", &container, "sh", "-c", "head -c 2000000 /dev/urandom > /data/photos.bin && mkdir -p /data/album && echo hi > /data/album/note.txt"]);
    let init = ilot.json(&["backup", "init"]);
    assert_eq!(init["created"], Value::Bool(true), "{init}");
    let run = ilot.json(&["backup", "run", &name]);
    let id = run["snapshots"][0]["id"].as_str().unwrap().to_string();
    let before = volume_checksums(&volume);
    assert!(before.contains("photos.bin"), "{before}");
    docker_ok(&[
        "exec",
        &container,
        "sh",
        "-c",
        "rm /data/photos.bin; echo changed > /data/album/note.txt",
    ]);
    assert_ne!(volume_checksums(&volume), before);
    let copy = unique("rmc");
    ilot.ok(&["backup", "restore", &id, "--as", &copy]);
    assert_eq!(volume_checksums(&format!("ilot-{copy}-data")), before);
    let check = ilot.json(&["backup", "check", "--read-data"]);
    assert_eq!(check["ok"], Value::Bool(true), "{check}");
    // A second run: retention removes the first snapshot from the remote repository.
    let second = ilot.json(&["backup", "run", &name]);
    let newest = second["snapshots"][0]["id"].as_str().unwrap().to_string();
    let kept: Vec<String> = snapshots(ilot)
        .iter()
        .filter(|s| s["instance"] == name.as_str())
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kept,
        std::slice::from_ref(&newest),
        "keep_last = 1 keeps the newest only"
    );
    assert_ne!(newest, id);
    name
}

const KEEP_ONE: &str = "keep_last = 1\nkeep_daily = 0\nkeep_weekly = 0\nkeep_monthly = 0\n";

#[test]
fn an_sftp_repository_round_trips_and_a_wrong_host_key_is_refused() {
    let mut server = storage::SftpServer::start();
    let location = format!(
        "sftp://root@127.0.0.1:{}/{}/repo",
        server.port,
        server.root.display()
    );
    let config = |host_key: &str| {
        format!(
            "[backup]\nat = \"off\"\nrepository = \"{location}\"\nsftp_key = \"{}\"\nsftp_host_key = \"{host_key}\"\n{KEEP_ONE}",
            server.client_key.display()
        )
    };
    // A host key other than the server's: ssh refuses to log in, and nothing is made.
    let wrong = Ilot::start_full(
        &[],
        &config("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"),
    );
    let err = wrong.fails(&["backup", "init"], 1);
    assert!(
        err.contains("cannot reach the backup repository")
            && err.contains("Host key verification failed"),
        "{err}"
    );
    assert!(!server.root.join("repo").exists());
    drop(wrong);

    let ilot = Ilot::start_full(&[], &config(&server.host_key));
    let name = remote_round_trip(&ilot);
    // The files are on the server, in restic's layout.
    let repo = server.root.join("repo");
    assert!(repo.join("config").is_file() && repo.join("data/00").is_dir());
    // restic opens it too, through its own ssh (the same key and host key).
    let ssh = format!(
        "sftp.command=ssh {} -p {} root@127.0.0.1 -s sftp",
        server.client_options().join(" "),
        server.port
    );
    let snaps = restic_snapshots(&ilot, &location, &["-o".into(), ssh], &[]);
    assert_eq!(snaps.len(), 1, "{snaps:?}");

    // The server goes away in the middle of a run (its sessions cut): the run fails and says
    // so, the snapshot before it stays whole, and once the server is back the next run works.
    let kept = snapshots(&ilot);
    let container = format!("ilot-{name}-web");
    let run = start_big_backup_run(&ilot, &name);
    // Cut as soon as the run's first new pack lands on the server (400 MB take many more).
    let packs = |repo: &std::path::Path| -> usize {
        std::fs::read_dir(repo.join("data"))
            .map(|d| {
                d.flatten()
                    .map(|e| std::fs::read_dir(e.path()).map(|f| f.count()).unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0)
    };
    let before = packs(&repo);
    let deadline = Instant::now() + Duration::from_secs(60);
    while packs(&repo) == before {
        assert!(Instant::now() < deadline, "the backup never wrote a pack");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.stop();
    let out = run.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("backup failed for {name}")) && err.contains("intact"),
        "{err}"
    );
    assert_eq!(
        docker_ok(&["inspect", &container, "--format", "{{.State.Status}}"]),
        "running",
        "thawed after the failure"
    );
    server.restart();
    assert_eq!(
        snapshots(&ilot),
        kept,
        "the failed run added and removed nothing"
    );
    let again = ilot.json(&["backup", "run", &name]);
    assert!(
        again["snapshots"][0]["bytes"].as_u64().unwrap() > 400_000_000,
        "{again}"
    );
    let check = ilot.json(&["backup", "check"]);
    assert_eq!(check["ok"], Value::Bool(true), "{check}");
}

#[test]
fn an_s3_repository_round_trips_and_a_wrong_secret_is_refused() {
    let server = storage::S3Server::start();
    let location = format!("s3:{}/{}/host1", server.endpoint, server.bucket);
    let ilot = Ilot::start_full(
        &[],
        &format!("[backup]\nat = \"off\"\nrepository = \"{location}\"\n{KEEP_ONE}"),
    );
    // No access key yet: says where it goes.
    let err = ilot.fails(&["backup", "init"], 2);
    assert!(
        err.contains("s3-credentials") && err.contains("AWS_ACCESS_KEY_ID"),
        "{err}"
    );
    let creds = ilot.dir.join("state/backup/s3-credentials");
    let write_creds = |secret: &str| {
        std::fs::write(
            &creds,
            format!(
                "AWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={secret}\n",
                server.access_key
            ),
        )
        .unwrap();
        std::fs::set_permissions(&creds, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
    };
    // A wrong secret: the server refuses the signature, and nothing is made.
    write_creds("not-the-secret-key");
    let err = ilot.fails(&["backup", "init"], 1);
    assert!(
        err.contains("cannot read the backup repository") && err.contains("refused the access key"),
        "{err}"
    );
    assert!(
        !ilot.log().contains("not-the-secret-key"),
        "a secret is in the log"
    );
    write_creds(&server.secret_key);
    remote_round_trip(&ilot);
    assert!(
        !ilot.log().contains(&server.secret_key),
        "the secret is in the log"
    );
    // restic opens it with the same location string and keys.
    let keys = [
        ("AWS_ACCESS_KEY_ID", server.access_key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", server.secret_key.as_str()),
    ];
    let snaps = restic_snapshots(&ilot, &location, &[], &keys);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
}
