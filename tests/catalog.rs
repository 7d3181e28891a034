//! The catalogue's web apps: Nextcloud, PeerTube and Ghost.
//!
//! Their upstream images cannot be pulled here (no registry), so:
//! 1. every entry is planned with `ilot app install APP --dry-run --json` against the real
//!    engine, and the preview must hold exactly the containers, network, volumes, routes,
//!    ports, firewall openings, DNS records, jails, probes and backup spec expected, while
//!    nothing is created;
//! 2. the same manifests are installed for real with stand-in images (images/standin-*: a
//!    PostgreSQL, a MySQL and a Redis from Debian's packages honouring the upstream images'
//!    variables, and one web stand-in that plays each app from its upstream variables), next to
//!    the real mail server: database provisioning, secrets, SMTP, routing through the proxy,
//!    the admin login shown once, the post-install hook and the backup dumps all run.

mod common;
use common::mail::*;
use common::*;
use serde_json::Value;

const HOST: &str = "[host]\nipv4 = \"203.0.113.10\"\n";

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| {
            x.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| x.to_string())
        })
        .collect()
}

fn field(v: &Value, list: &str, key: &str) -> Vec<String> {
    v[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in {v}"))
        .iter()
        .map(|x| {
            x[key]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| x[key].to_string())
        })
        .collect()
}

/// Checks what every preview must say: nothing was created, and no secret value is in it.
fn assert_nothing_changed(ilot: &Ilot, preview: &Value) {
    assert_eq!(preview["dry_run"], Value::Bool(true));
    assert_eq!(
        ilot.objects(),
        (vec![], vec![], vec![]),
        "a dry run created objects"
    );
    assert_eq!(ilot.json(&["app", "list"]), Value::Array(vec![]));
    // Env values (which hold the secrets) never appear: only their names.
    for c in preview["containers"].as_array().unwrap() {
        for e in c["env"].as_array().unwrap() {
            assert!(
                !e.as_str().unwrap().contains('='),
                "an env value leaked: {e}"
            );
        }
    }
}

#[test]
fn every_catalogue_entry_plans_exactly_its_objects_and_changes_nothing() {
    let ilot = Ilot::start_full(&[], HOST);

    // Nextcloud: PostgreSQL and Redis first, the web server, then its cron container.
    let nc = unique("nc");
    let v = ilot.json(&[
        "app",
        "install",
        "nextcloud",
        "--name",
        &nc,
        "--domain",
        "cloud.example.test",
        "--set",
        "admin_user=alice",
        "--dry-run",
    ]);
    assert_nothing_changed(&ilot, &v);
    let c = |s: &str| format!("ilot-{nc}-{s}");
    assert_eq!(
        field(&v, "containers", "name"),
        [c("db"), c("redis"), c("web"), c("cron")]
    );
    assert_eq!(
        field(&v, "containers", "image"),
        [
            "postgres:17.11-bookworm",
            "redis:7.4.11-bookworm",
            "nextcloud:34.0.4-apache",
            "nextcloud:34.0.4-apache"
        ]
    );
    for d in field(&v, "containers", "digest") {
        assert!(
            d.starts_with("sha256:") && d.len() == 71,
            "not pinned by digest: {d}"
        );
    }
    assert_eq!(v["network"], format!("ilot-{nc}").as_str());
    assert_eq!(
        field(&v, "volumes", "name"),
        [c("db"), c("html"), c("redis")]
    );
    assert_eq!(field(&v, "volumes", "backup"), ["false", "true", "false"]);
    assert_eq!(v["routes"].as_array().unwrap().len(), 1);
    assert_eq!(v["routes"][0]["domain"], "cloud.example.test");
    assert_eq!(v["routes"][0]["path"], "/");
    assert_eq!(v["routes"][0]["container"], c("web").as_str());
    assert_eq!(v["routes"][0]["port"], 80);
    assert_eq!(v["routes"][0]["max_body"], "16G");
    let ports = v["published_ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(
        (ports[0]["container"].as_u64(), ports[0]["public"].as_bool()),
        (Some(80), Some(false))
    );
    assert_eq!(v["firewall"], Value::Array(vec![]));
    let dns: Vec<String> = v["dns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} {} {}",
                r["name"].as_str().unwrap(),
                r["type"].as_str().unwrap(),
                r["value"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(dns, ["cloud.example.test. A 203.0.113.10"]);
    assert_eq!(
        field(&v, "log_filters", "jail"),
        [format!("{nc}-nextcloud")]
    );
    assert_eq!(
        field(&v, "log_filters", "source"),
        [format!("file data/nextcloud.log in volume ilot-{nc}-html")]
    );
    assert_eq!(field(&v, "probes", "path"), ["/status.php"]);
    assert_eq!(strings(&v["backup"]["volumes"]), [c("html")]);
    assert_eq!(field(&v["backup"], "dump", "container"), [c("db")]);
    assert_eq!(field(&v["backup"], "dump", "file"), ["nextcloud.sql"]);
    assert_eq!(
        v["smtp"]["account"],
        Value::Null,
        "no mail server yet: {}",
        v["smtp"]
    );
    assert_eq!(v["admin"]["user"], "alice");
    assert_eq!(v["settings"]["admin_user"], "alice");
    assert_eq!(
        strings(&v["secrets"]),
        ["admin_password", "db_password", "redis_password"]
    );
    let web = &v["containers"][2];
    assert_eq!(strings(&web["depends_on"]), ["db", "redis"]);
    for var in [
        "NEXTCLOUD_TRUSTED_DOMAINS",
        "OVERWRITEPROTOCOL",
        "SMTP_HOST",
        "PHP_UPLOAD_LIMIT",
        "REDIS_HOST_PASSWORD",
    ] {
        assert!(
            strings(&web["env"]).contains(&var.to_string()),
            "{var} not in {}",
            web["env"]
        );
    }
    assert_eq!(strings(&v["containers"][3]["command"]), ["/cron.sh"]);
    // The images are not here: the plan says they would be pulled, pinned.
    let plan = strings(&v["plan"]).join("\n");
    assert!(
        plan.contains("pull nextcloud:34.0.4-apache (nextcloud@sha256:"),
        "{plan}"
    );
    assert!(
        plan.contains(&format!("create container {}", c("cron"))),
        "{plan}"
    );

    // PeerTube, on this (big) machine: standard transcoding; no RTMP without live streaming.
    let pt = unique("pt");
    let p = |s: &str| format!("ilot-{pt}-{s}");
    let install_pt = |extra: &[&str]| {
        let mut args = vec![
            "app",
            "install",
            "peertube",
            "--name",
            &pt,
            "--domain",
            "video.example.test",
            "--set",
            "admin_email=admin@example.test",
            "--dry-run",
        ];
        args.extend_from_slice(extra);
        ilot.json(&args)
    };
    let v = install_pt(&[]);
    assert_nothing_changed(&ilot, &v);
    assert_eq!(
        field(&v, "containers", "name"),
        [p("db"), p("redis"), p("peertube")]
    );
    assert_eq!(
        field(&v, "volumes", "name"),
        [p("config"), p("data"), p("db"), p("redis")]
    );
    assert_eq!(v["settings"]["transcoding"], "standard");
    assert_eq!(v["settings"]["live"], "false");
    assert_eq!(
        v["settings"]["signup"], "false",
        "sign-ups closed by default"
    );
    assert_eq!(v["published_ports"].as_array().unwrap().len(), 1);
    assert_eq!(v["firewall"], Value::Array(vec![]));
    assert_eq!(
        field(&v, "routes", "path"),
        [
            "/",
            "/api/v1/videos/upload",
            "/api/v1/videos/upload-resumable",
            "/api/v1/videos/imports"
        ]
    );
    assert_eq!(
        field(&v, "routes", "max_body"),
        ["100M", "16G", "16G", "16G"]
    );
    assert_eq!(
        field(&v, "log_filters", "source"),
        ["the proxy's access log"]
    );
    assert_eq!(field(&v, "probes", "path"), ["/api/v1/config"]);
    assert_eq!(strings(&v["backup"]["volumes"]), [p("data"), p("config")]);
    assert_eq!(field(&v["backup"], "dump", "file"), ["peertube.sql"]);
    assert_eq!(v["admin"]["user"], "root");
    // Live streaming publishes RTMP to the world and opens it in the firewall.
    let v = install_pt(&["--set", "live=true"]);
    assert_nothing_changed(&ilot, &v);
    let public: Vec<&Value> = v["published_ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["public"] == Value::Bool(true))
        .collect();
    assert_eq!(public.len(), 1, "{}", v["published_ports"]);
    assert_eq!(
        (
            public[0]["container"].as_u64(),
            public[0]["host"].as_u64(),
            public[0]["host_ip"].as_str()
        ),
        (Some(1935), Some(1935), Some("0.0.0.0"))
    );
    assert_eq!(
        v["firewall"],
        serde_json::json!([{ "port": 1935, "protocol": "tcp" }])
    );

    // Ghost: MySQL, then Ghost, and the hook that creates its owner.
    let gh = unique("gh");
    let v = ilot.json(&[
        "app",
        "install",
        "ghost",
        "--name",
        &gh,
        "--domain",
        "blog.example.test",
        "--set",
        "admin_email=ann@example.test",
        "--dry-run",
    ]);
    assert_nothing_changed(&ilot, &v);
    assert_eq!(
        field(&v, "containers", "name"),
        [format!("ilot-{gh}-db"), format!("ilot-{gh}-ghost")]
    );
    assert_eq!(
        field(&v, "containers", "image"),
        ["mysql:8.4.11-oracle", "ghost:6.61.0-bookworm"]
    );
    assert_eq!(field(&v, "hooks", "service"), ["ghost"]);
    assert_eq!(
        v["settings"]["members_signup"], "invite",
        "sign-ups by invitation by default"
    );
    assert_eq!(v["admin"]["user"], "ann@example.test");
    assert_eq!(field(&v["backup"], "dump", "file"), ["ghost.sql"]);
    assert_eq!(field(&v, "log_filters", "filter"), ["ghost"]);
    assert!(strings(&v["plan"])
        .iter()
        .any(|s| s.contains("post-install hook in ghost")));

    // The human preview says the same in words.
    let out = ilot.ok(&[
        "app",
        "install",
        "peertube",
        "--name",
        &pt,
        "--domain",
        "video.example.test",
        "--set",
        "admin_email=admin@example.test",
        "--set",
        "live=true",
        "--dry-run",
    ]);
    for want in [
        "public ports:",
        "1935/tcp (peertube)",
        "firewall opens:",
        "https://video.example.test/api/v1/videos/upload -> peertube:9000 (bodies up to 16G)",
        "jails:",
        "backup:",
        "(dry run: nothing was changed)",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }

    // What an admin gets wrong is refused, and changes nothing.
    let err = ilot.fails(
        &["app", "install", "nextcloud", "--name", &nc, "--dry-run"],
        2,
    );
    assert!(
        err.contains("must be served at a domain of its own") && err.contains("--domain"),
        "{err}"
    );
    let err = ilot.fails(
        &[
            "app",
            "install",
            "peertube",
            "--name",
            &pt,
            "--domain",
            "v.example.test",
        ],
        2,
    );
    assert!(err.contains("needs the setting admin_email"), "{err}");
    let err = ilot.fails(
        &[
            "app",
            "install",
            "peertube",
            "--name",
            &pt,
            "--domain",
            "v.example.test",
            "--set",
            "admin_email=a@b.c",
            "--set",
            "transcoding=max",
        ],
        2,
    );
    assert!(err.contains("one of off, light, standard"), "{err}");
    let err = ilot.fails(
        &[
            "app",
            "install",
            "ghost",
            "--name",
            &gh,
            "--domain",
            "b.example.test",
            "--set",
            "admin_email=a@b.c",
            "--image",
            "nosuch=x:1",
        ],
        2,
    );
    assert!(err.contains("no service \"nosuch\""), "{err}");
    assert_eq!(ilot.objects(), (vec![], vec![], vec![]));
}

#[test]
fn a_machine_too_small_for_an_app_is_told_so_and_force_overrides() {
    // A 1 GiB Raspberry Pi, as the daemon sees it.
    let ilot = Ilot::start_full(&[("ILOT_TEST_HOST_MEMORY", "1G")], HOST);
    let pt = unique("pt");
    let base = [
        "app",
        "install",
        "peertube",
        "--name",
        &pt,
        "--domain",
        "video.example.test",
        "--set",
        "admin_email=admin@example.test",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    // Its default transcoding is sized to the machine: off.
    let v = ilot.json(&args(&with(&["--dry-run"])));
    assert_eq!(v["settings"]["transcoding"], "off");
    assert_eq!(v["resources"]["host"]["memory"], 1u64 << 30);
    // Asking for transcoding is refused, with the reason and the way out.
    let err = ilot.fails(
        &args(&with(&["--set", "transcoding=light", "--dry-run"])),
        2,
    );
    assert!(
        err.contains("this machine cannot run peertube")
            && err.contains("with video transcoding (240p, 480p) needs 2.0 GiB of memory; this machine has 1.0 GiB")
            && err.contains("--force"),
        "{err}"
    );
    let err = ilot.fails(&args(&with(&["--set", "transcoding=light"])), 2);
    assert!(err.contains("needs 2.0 GiB"), "{err}");
    assert_eq!(ilot.objects(), (vec![], vec![], vec![]));
    // --force goes past it, and says so.
    let v = ilot.json(&args(&with(&[
        "--set",
        "transcoding=light",
        "--force",
        "--dry-run",
    ])));
    assert_eq!(v["settings"]["transcoding"], "light");
    assert!(strings(&v["resources"]["forced_past"])[0].contains("needs 2.0 GiB"));

    // `app info` tells the same before anything is tried.
    let info = ilot.json(&["app", "info", "peertube"]);
    assert_eq!(info["license"], "AGPL-3.0-or-later");
    assert_eq!(
        info["resources"]["fits"],
        Value::Bool(true),
        "off by default here: {}",
        info["resources"]
    );
    let t = info["settings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == "transcoding")
        .unwrap();
    assert_eq!(
        (t["default"].as_str(), t["default_here"].as_str()),
        (Some("standard"), Some("off"))
    );
    let rtmp = info["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "rtmp")
        .unwrap();
    assert_eq!(
        (rtmp["when"].as_str(), rtmp["public"].as_bool()),
        (Some("live"), Some(true))
    );
    let out = ilot.ok(&["app", "info", "peertube"]);
    for want in [
        "licence:   AGPL-3.0-or-later",
        "with transcoding=light: 2G memory",
        "port 1935/tcp to the world (rtmp), only when live",
        "https://DOMAIN/api/v1/videos/upload through ilot's proxy (bodies up to 16G)",
        "DOMAIN A/AAAA",
        "transcoding (default here off, elsewhere standard",
        "admin_email (required",
        "asked at install",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }
    let err = ilot.fails(&["app", "info", "nosuch"], 2);
    assert!(err.contains("no app \"nosuch\""), "{err}");
}

const BOB_PW: &str = "bob-reads-the-family-mail";

fn require_standins() {
    for image in [
        "ilot/standin-postgres:1.0",
        "ilot/standin-mysql:1.0",
        "ilot/standin-redis:1.0",
        "ilot/standin-web:1.0",
    ] {
        assert!(
            docker(&["image", "inspect", image]).status.success(),
            "image {image} missing: run tests/run.sh, or images/build.sh standin-base standin-postgres standin-mysql standin-redis standin-web"
        );
    }
}

/// The stand-in image of each service of the catalogue's apps.
const NEXTCLOUD_STANDINS: [(&str, &str); 4] = [
    ("db", "postgres"),
    ("redis", "redis"),
    ("web", "web"),
    ("cron", "web"),
];
const GHOST_STANDINS: [(&str, &str); 2] = [("db", "mysql"), ("ghost", "web")];
const PEERTUBE_STANDINS: [(&str, &str); 3] =
    [("db", "postgres"), ("redis", "redis"), ("peertube", "web")];

/// Installs APP from the real catalogue with stand-in images for every service; returns the
/// human output (which holds the admin login, shown once).
fn install_with_standins(
    ilot: &Ilot,
    app: &str,
    name: &str,
    domain: &str,
    images: &[(&str, &str)],
    sets: &[&str],
) -> String {
    let mut args: Vec<String> = ["app", "install", app, "--name", name, "--domain", domain]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for (service, image) in images {
        args.push("--image".into());
        args.push(format!("{service}=ilot/standin-{image}:1.0"));
    }
    for s in sets {
        args.push("--set".into());
        args.push(s.to_string());
    }
    ilot.ok(&self::args(&args))
}

/// The password line of an install's output.
fn shown_password(out: &str) -> String {
    out.lines()
        .find_map(|l| l.trim().strip_prefix("password:"))
        .unwrap_or_else(|| panic!("no password shown in:\n{out}"))
        .trim()
        .to_string()
}

/// A JSON request through the proxy over HTTPS: (HTTP status, body).
fn call(p: &Ports, domain: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    call_with(p, domain, method, path, body, &[])
}

/// `call` with extra curl arguments (headers).
fn call_with(
    p: &Ports,
    domain: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    more: &[&str],
) -> (u16, Value) {
    let mut extra = vec![
        "-X",
        method,
        "-w",
        "\n%{http_code}",
        "-H",
        "content-type: application/json",
    ];
    let data = body.map(|b| b.to_string()).unwrap_or_default();
    if body.is_some() {
        extra.extend(["--data-binary", &data]);
    }
    extra.extend_from_slice(more);
    let (out, err) = curl(domain, &p.https, "https", path, &extra);
    let (text, code) = out
        .rsplit_once('\n')
        .unwrap_or_else(|| panic!("curl {path}: {out} {err}"));
    (
        code.parse().unwrap_or(0),
        serde_json::from_str(text).unwrap_or(Value::String(text.to_string())),
    )
}

/// The app's backup dump, run as its manifest says, in its database container.
fn dump(ilot: &Ilot, app: &str, instance: &str) -> String {
    let info = ilot.json(&["app", "info", app]);
    let d = &info["backup"]["dump"][0];
    let container = format!("ilot-{instance}-{}", d["service"].as_str().unwrap());
    let mut cmd = vec!["exec".to_string(), container];
    cmd.extend(strings(&d["cmd"]));
    docker_ok(&args(&cmd))
}

/// Loads a dump back with the manifest's restore command (the dump on its standard input).
fn restore_dump(ilot: &Ilot, app: &str, instance: &str, sql: &str) {
    use std::io::Write;
    let info = ilot.json(&["app", "info", app]);
    let d = &info["backup"]["dump"][0];
    let container = format!("ilot-{instance}-{}", d["service"].as_str().unwrap());
    let mut child = std::process::Command::new("docker")
        .args(["exec", "-i", &container])
        .args(strings(&d["restore"]))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "restore of {app}'s dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deletes the stand-in's users straight in the database (the data a restore must bring back).
fn forget_users(instance: &str, mysql: bool) {
    let container = format!("ilot-{instance}-db");
    let sql = "DELETE FROM standin_users";
    if mysql {
        docker_ok(&["exec", &container, "sh", "-c", &format!("MYSQL_PWD=\"$MYSQL_PASSWORD\" mysql -h 127.0.0.1 -u \"$MYSQL_USER\" \"$MYSQL_DATABASE\" -e '{sql}'")]);
    } else {
        docker_ok(&[
            "exec",
            &container,
            "sh",
            "-c",
            &format!("psql -U \"$POSTGRES_USER\" \"$POSTGRES_DB\" -c '{sql}'"),
        ]);
    }
}

/// Asks the stand-in playing APP to send a message to bob through its SMTP settings, and waits
/// for it in bob's mailbox.
fn mail_to_bob(p: &Ports, srv: &Server, app: &str, domain: &str, from: &str) {
    let (code, v) = call(
        p,
        domain,
        "POST",
        "/.ilot-standin/mail",
        Some(&serde_json::json!({ "to": "bob@example.org" })),
    );
    assert_eq!(code, 200, "{app} could not send mail: {v}");
    assert_eq!(v["from"], from, "{v}");
    let subject = format!("\"ilot stand-in test from {app}\"");
    wait_until(&format!("{app}'s mail reaches bob"), 60, || {
        Some(()).filter(|_| {
            search(
                srv.imaps,
                "bob@example.org",
                BOB_PW,
                &format!("SUBJECT {subject}"),
            )
            .len()
                == 1
        })
    });
}

#[test]
fn catalogue_apps_install_for_real_with_stand_ins_beside_the_mail_server() {
    require_standins();
    let ilot = Ilot::start_full(&[], HOST);
    let p = ports(&ilot);
    let srv = install(&ilot);
    add_user(&ilot, "bob@example.org", BOB_PW);

    // Nextcloud.
    let nc = unique("nc");
    let cloud = format!("{nc}.example.test");
    let out = install_with_standins(
        &ilot,
        "nextcloud",
        &nc,
        &cloud,
        &NEXTCLOUD_STANDINS,
        &["admin_user=alice"],
    );
    assert!(
        out.contains("admin login: alice at https://") && out.contains("/login"),
        "{out}"
    );
    let password = shown_password(&out);
    assert_eq!(password.len(), 24, "{out}");
    // Shown once: not by `app show`, not in --json, not in the daemon's log.
    let show = ilot.ok(&["app", "show", &nc, "--json"]);
    assert!(!show.contains(&password) && !ilot.ok(&["app", "show", &nc]).contains(&password));
    assert!(
        !ilot.log().contains(&password),
        "the admin password is in the daemon's log"
    );
    let (code, st) = call(&p, &cloud, "GET", "/.ilot-standin/status", None);
    assert_eq!(code, 200, "{st}");
    assert_eq!(st["role"], "nextcloud");
    assert_eq!(st["db"]["ok"], Value::Bool(true), "{st}");
    assert_eq!(
        (st["db"]["database"].as_str(), st["db"]["user"].as_str()),
        (Some("nextcloud"), Some("nextcloud"))
    );
    assert_eq!(st["redis"]["ok"], Value::Bool(true), "{st}");
    assert_eq!(st["admin"]["user"], "alice");
    assert_eq!(st["request"]["host"], cloud.as_str());
    assert_eq!(st["request"]["x_forwarded_proto"], "https");
    assert_eq!(st["settings"]["overwritehost"], cloud.as_str());
    // The generated password is the admin's; a wrong one is refused.
    let login = |user: &str, pw: &str| {
        call(
            &p,
            &cloud,
            "POST",
            "/.ilot-standin/login",
            Some(&serde_json::json!({ "user": user, "password": pw })),
        )
        .0
    };
    assert_eq!(login("alice", &password), 200);
    assert_eq!(login("alice", "not-the-password"), 403);
    // The cron container runs the background jobs against the same database.
    wait_until("Nextcloud's cron runs", 30, || {
        let (_, st) = call(&p, &cloud, "GET", "/.ilot-standin/status", None);
        Some(()).filter(|_| st["db"]["cron_runs"].as_u64().unwrap_or(0) >= 1)
    });
    mail_to_bob(&p, &srv, "nextcloud", &cloud, &format!("{nc}@example.org"));
    let sql = dump(&ilot, "nextcloud", &nc);
    assert!(
        sql.contains("CREATE TABLE") && sql.contains("alice"),
        "the dump has the tables and the admin: {}",
        &sql[..sql.len().min(400)]
    );
    // The dump loads back with the manifest's restore command: the admin, lost, is back.
    forget_users(&nc, false);
    assert_eq!(login("alice", &password), 403);
    restore_dump(&ilot, "nextcloud", &nc, &sql);
    assert_eq!(login("alice", &password), 200);

    // Ghost: the post-install hook made the owner and set sign-ups to invitations.
    let gh = unique("gh");
    let blog = format!("{gh}.example.test");
    let out = install_with_standins(
        &ilot,
        "ghost",
        &gh,
        &blog,
        &GHOST_STANDINS,
        &["admin_email=ann@example.org"],
    );
    let password = shown_password(&out);
    assert!(
        out.contains("admin login: ann@example.org at https://") && out.contains("/ghost/"),
        "{out}"
    );
    let (code, st) = call(&p, &blog, "GET", "/.ilot-standin/status", None);
    assert_eq!(code, 200, "{st}");
    assert_eq!(
        (st["role"].as_str(), st["db"]["ok"].as_bool()),
        (Some("ghost"), Some(true)),
        "{st}"
    );
    assert_eq!(st["admin"]["user"], "ann@example.org");
    assert_eq!(st["settings"]["members_signup_access"], "invite", "{st}");
    let (code, _) = call(
        &p,
        &blog,
        "POST",
        "/ghost/api/admin/session/",
        Some(&serde_json::json!({ "username": "ann@example.org", "password": password })),
    );
    assert_eq!(code, 403, "no Origin header: refused, like Ghost");
    let (code, _) = call(
        &p,
        &blog,
        "POST",
        "/.ilot-standin/login",
        Some(&serde_json::json!({ "user": "ann@example.org", "password": password })),
    );
    assert_eq!(code, 200);
    mail_to_bob(&p, &srv, "ghost", &blog, &format!("{gh}@example.org"));
    let sql = dump(&ilot, "ghost", &gh);
    assert!(
        sql.contains("CREATE TABLE") && sql.contains("ann@example.org"),
        "{}",
        &sql[..sql.len().min(400)]
    );
    let ghost_login = || {
        call(
            &p,
            &blog,
            "POST",
            "/.ilot-standin/login",
            Some(&serde_json::json!({ "user": "ann@example.org", "password": password })),
        )
        .0
    };
    forget_users(&gh, true);
    assert_eq!(ghost_login(), 403);
    restore_dump(&ilot, "ghost", &gh, &sql);
    assert_eq!(ghost_login(), 200);

    // PeerTube: a large upload streams through the proxy's upload route.
    let pt = unique("pt");
    let video = format!("{pt}.example.test");
    let out = install_with_standins(
        &ilot,
        "peertube",
        &pt,
        &video,
        &PEERTUBE_STANDINS,
        &["admin_email=admin@example.org"],
    );
    let password = shown_password(&out);
    let (code, cfg) = call(&p, &video, "GET", "/api/v1/config", None);
    assert_eq!(code, 200, "{cfg}");
    assert_eq!(cfg["signup"]["allowed"], Value::Bool(false), "{cfg}");
    assert_eq!(cfg["live"]["enabled"], Value::Bool(false), "{cfg}");
    let (_, st) = call(&p, &video, "GET", "/.ilot-standin/status", None);
    assert_eq!(
        (st["db"]["ok"].as_bool(), st["redis"]["ok"].as_bool()),
        (Some(true), Some(true)),
        "{st}"
    );
    assert_eq!(st["db"]["database"], "peertube_prod");
    assert_eq!(st["admin"]["user"], "root");
    let (code, _) = call(
        &p,
        &video,
        "POST",
        "/.ilot-standin/login",
        Some(&serde_json::json!({ "user": "root", "password": password })),
    );
    assert_eq!(code, 200);
    let file = ilot.dir.join("video.bin");
    let data: Vec<u8> = (0..(150u32 << 20) / 4)
        .flat_map(|i| i.to_le_bytes())
        .collect();
    std::fs::write(&file, &data).unwrap();
    let want = docker_ok(&[
        "run",
        "--rm",
        "-v",
        &format!("{}:/f:ro", file.display()),
        "--entrypoint",
        "sha256sum",
        "ilot/hello:1.0",
        "/f",
    ]);
    let upload = file.display().to_string();
    let (out, err) = curl(
        &video,
        &p.https,
        "https",
        "/api/v1/videos/upload",
        &[
            "-X",
            "POST",
            "-T",
            &upload,
            "-H",
            "content-type: application/octet-stream",
        ],
    );
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("upload: {out} {err}"));
    assert_eq!(v["bytes"], data.len() as u64, "{v}");
    assert_eq!(v["sha256"].as_str(), want.split_whitespace().next(), "{v}");
    // The same body on the federation route (100M) is refused by the proxy.
    let (out, err) = curl(
        &video,
        &p.https,
        "https",
        "/inbox",
        &[
            "-X",
            "POST",
            "--http1.1",
            "-T",
            &upload,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ],
    );
    assert_eq!(out, "413", "over the route's max_body: {err}");
    mail_to_bob(&p, &srv, "peertube", &video, &format!("{pt}@example.org"));
    assert!(dump(&ilot, "peertube", &pt).contains("CREATE TABLE"));

    // Removed with its data, an app leaves nothing; its mail account goes with it.
    ilot.ok(&["app", "remove", &nc, "--purge"]);
    let users = ilot.json(&["mail", "user", "list"]);
    assert!(!users.to_string().contains(&format!("{nc}@")), "{users}");
}

#[test]
fn settings_an_admin_must_choose_are_asked_at_a_terminal() {
    let ilot = Ilot::start_full(&[], HOST);
    let pt = unique("pt");
    // `script` gives the CLI a real terminal; what is piped into it is typed at the prompts.
    // An empty answer to a setting without a default is asked again; an empty answer to one
    // with a default takes it.
    let cli = format!(
        "{BIN} --socket {} app install peertube --name {pt} --domain video.example.test --dry-run",
        ilot.socket.display()
    );
    let mut child = std::process::Command::new("script")
        .args(["-qec", &cli, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        // One answer per prompt, each after the prompt is up (a pty discards early input
        // nowhere, but keep it paced like a person).
        for answer in ["\n", "me@example.test\n", "\n"] {
            std::thread::sleep(std::time::Duration::from_millis(700));
            stdin.write_all(answer.as_bytes()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for want in [
        "admin_email: The administrator's email address",
        "admin_email has no default: please type a value",
        "instance_name: The instance's name, shown on every page [PeerTube]",
        "admin_email = me@example.test",
        "instance_name = PeerTube",
        "(dry run: nothing was changed)",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    // Without a terminal nothing is asked: the missing one is an error that names it.
    let err = ilot.fails(
        &[
            "app",
            "install",
            "peertube",
            "--name",
            &pt,
            "--domain",
            "video.example.test",
            "--dry-run",
        ],
        2,
    );
    assert!(err.contains("needs the setting admin_email"), "{err}");
}

/// A directory under /tmp/ilot-test-* (tests/run.sh cleans those up too), removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The forwarding headers a client may forge: none of them may choose the address an app sees.
const FORGED: [&str; 8] = [
    "-H",
    "X-Real-IP: 203.0.113.66",
    "-H",
    "X-Forwarded-For: 203.0.113.66",
    "-H",
    "Forwarded: for=203.0.113.66",
    "-H",
    "Client-IP: 203.0.113.66",
];

/// What the review of the manifests against upstream's source found, each modelled by the
/// stand-in as upstream behaves (images/README.md, "What the stand-ins model"): Nextcloud's own
/// database role and its restore, its log file reaching the guard, client addresses nobody can
/// forge, PeerTube's live check and root password, its fixed domain, Ghost's hook run again.
#[test]
fn catalogue_apps_keep_upstreams_contracts_through_restore_forged_headers_and_reruns() {
    require_standins();
    let repo = TempDir(std::path::PathBuf::from(format!(
        "/tmp/ilot-test-{}",
        unique("ncrepo")
    )));
    let mut ilot = Ilot::start_full(
        &[],
        &format!(
            "{HOST}[backup]\nrepository = \"{}/repo\"\nat = \"off\"\n[guard]\n[guard.defaults]\nmaxretry = 3\n",
            repo.0.display()
        ),
    );
    // Nextcloud as the catalogue had it before: no NC_setup_create_db_user, no NC_db*, the dump
    // with owners (an instance installed then, whose backup must still restore).
    let current = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/apps/nextcloud/app.toml"
    ))
    .unwrap();
    let old = current
        .replace("name = \"nextcloud\"", "name = \"nextcloud-old\"")
        .lines()
        .filter(|l| !l.starts_with("NC_setup_create_db_user") && !l.starts_with("NC_db"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(" --no-owner --no-privileges", "");
    assert!(old.contains("nextcloud-old") && !old.contains("\nNC_dbuser"));
    std::fs::create_dir_all(ilot.dir.join("catalog/nextcloud-old")).unwrap();
    std::fs::write(ilot.dir.join("catalog/nextcloud-old/app.toml"), old).unwrap();
    ilot.restart();
    let p = ports(&ilot);
    let srv = install(&ilot);
    add_user(&ilot, "bob@example.org", BOB_PW);

    // 1. The instance of before: Nextcloud made its own role and gave it the tables.
    let ncold = unique("nco");
    let old_domain = format!("{ncold}.example.test");
    let out = install_with_standins(
        &ilot,
        "nextcloud-old",
        &ncold,
        &old_domain,
        &NEXTCLOUD_STANDINS,
        &["admin_user=carol"],
    );
    let old_password = shown_password(&out);
    let (_, st) = call(&p, &old_domain, "GET", "/.ilot-standin/status", None);
    assert_eq!(
        st["db"]["user"], "oc_admin",
        "the upstream installer's own role: {st}"
    );
    assert_eq!(
        st["db"]["table_owners"],
        serde_json::json!(["oc_admin"]),
        "{st}"
    );
    let old_sql = dump(&ilot, "nextcloud-old", &ncold);
    assert!(
        old_sql.contains("OWNER TO oc_admin"),
        "{}",
        &old_sql[..old_sql.len().min(600)]
    );

    // 2. Today's manifest: ilot's role keeps the tables.
    let nc = unique("nc");
    let cloud = format!("{nc}.example.test");
    let out = install_with_standins(
        &ilot,
        "nextcloud",
        &nc,
        &cloud,
        &NEXTCLOUD_STANDINS,
        &["admin_user=alice"],
    );
    let password = shown_password(&out);
    let status = |domain: &str| {
        let (code, st) = call(&p, domain, "GET", "/.ilot-standin/status", None);
        assert_eq!(code, 200, "{st}");
        st
    };
    let st = status(&cloud);
    assert_eq!(st["db"]["ok"], Value::Bool(true), "{st}");
    assert_eq!(st["db"]["user"], "nextcloud", "{st}");
    assert_eq!(
        st["db"]["table_owners"],
        serde_json::json!(["nextcloud"]),
        "{st}"
    );
    let login = |domain: &str, user: &str, pw: &str, more: &[&str]| {
        call_with(
            &p,
            domain,
            "POST",
            "/.ilot-standin/login",
            Some(&serde_json::json!({ "user": user, "password": pw })),
            more,
        )
        .0
    };
    assert_eq!(login(&cloud, "alice", &password, &[]), 200);

    // Forged client addresses never reach the app as the client's (the image's Apache would
    // take X-Real-IP from the proxy's private address; the proxy sets it, and it is off).
    let (_, st) = call_with(&p, &cloud, "GET", "/.ilot-standin/status", None, &FORGED);
    assert_eq!(st["request"]["client"], "127.0.0.1", "{st}");
    assert_eq!(st["request"]["x_forwarded_for"], "127.0.0.1", "{st}");

    // A failed login reaches the guard through the log file Nextcloud really writes (the
    // client is loopback here: counted, never banned).
    let jail = format!("{nc}-nextcloud");
    let failures = |ilot: &Ilot| {
        let show = ilot.json(&["guard", "show"]);
        show["jails"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["name"] == jail.as_str())
            .unwrap_or_else(|| panic!("no jail {jail}: {show}"))
            .clone()
    };
    let j = failures(&ilot);
    assert!(
        j.to_string()
            .contains(&format!("volume:ilot-{nc}-html/data/nextcloud.log")),
        "{j}"
    );
    for _ in 0..3 {
        assert_eq!(login(&cloud, "alice", "wrong", &FORGED), 403);
    }
    wait_until("Nextcloud's failed logins reach the guard", 20, || {
        Some(()).filter(|_| failures(&ilot)["failures"].as_u64().unwrap_or(0) >= 3)
    });
    let logged = docker_ok(&[
        "exec",
        &format!("ilot-{nc}-web"),
        "cat",
        "/var/www/html/data/nextcloud.log",
    ]);
    assert!(
        logged.contains("\"remoteAddr\":\"127.0.0.1\"") && !logged.contains("203.0.113.66"),
        "{logged}"
    );
    assert!(
        ilot.log().contains("127.0.0.1/32 not banned"),
        "{}",
        ilot.log()
    );

    // Backed up, lost, restored: the dump loads, the tables are ilot's role's, alice logs in.
    ilot.ok(&["backup", "init"]);
    let run = ilot.json(&["backup", "run", &nc]);
    let id = run["snapshots"][0]["id"].as_str().unwrap().to_string();
    ilot.ok(&["app", "remove", &nc, "--purge"]);
    ilot.ok(&["backup", "restore", &id[..8]]);
    let st = status(&cloud);
    assert_eq!(
        st["db"]["table_owners"],
        serde_json::json!(["nextcloud"]),
        "{st}"
    );
    assert_eq!(login(&cloud, "alice", &password, &[]), 200);
    // The dump of the instance of before loads into it too: its owners and grants, of a role
    // this database does not have, are left out.
    restore_dump(&ilot, "nextcloud", &nc, &old_sql);
    let st = status(&cloud);
    assert_eq!(
        (st["db"]["ok"].as_bool(), st["db"]["user"].as_str()),
        (Some(true), Some("nextcloud")),
        "{st}"
    );
    assert_eq!(login(&cloud, "carol", &old_password, &[]), 200);
    ilot.ok(&["app", "remove", &ncold, "--purge"]);
    ilot.ok(&["app", "remove", &nc, "--purge"]);

    // 3. PeerTube: live replays need transcoding, refused before anything is made.
    let pt = unique("pt");
    let video = format!("{pt}.example.test");
    let mut args: Vec<String> = [
        "app", "install", "peertube", "--name", &pt, "--domain", &video,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (service, image) in PEERTUBE_STANDINS {
        args.extend([
            "--image".into(),
            format!("{service}=ilot/standin-{image}:1.0"),
        ]);
    }
    for set in [
        "admin_email=admin@example.org",
        "live=true",
        "transcoding=off",
    ] {
        args.extend(["--set".into(), set.into()]);
    }
    let err = ilot.fails(&self::args(&args), 2);
    assert!(
        err.contains("live_replay=true")
            && err.contains("transcoding=off")
            && err.contains("--set live_replay=false"),
        "{err}"
    );
    assert!(
        docker(&["inspect", &format!("ilot-{pt}-peertube")])
            .status
            .code()
            != Some(0)
    );
    args.extend(["--set".into(), "live_replay=false".into()]);
    let out = ilot.ok(&self::args(&args));
    let password = shown_password(&out);
    let (code, cfg) = call(&p, &video, "GET", "/api/v1/config", None);
    assert_eq!(
        (code, cfg["live"]["enabled"].as_bool()),
        (200, Some(true)),
        "{cfg}"
    );
    // The root password PeerTube's installer logs is a throwaway, replaced by the hook.
    let logs = docker_ok(&["logs", &format!("ilot-{pt}-peertube")]);
    let logged = logs
        .lines()
        .find_map(|l| l.split("User password: ").nth(1))
        .and_then(|s| s.split(['"', ' ']).next())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("PeerTube logs its first root password: {logs}"));
    assert!(
        !logs.contains(&password),
        "the shown root password is in the container log"
    );
    let (_, st) = call_with(&p, &video, "GET", "/.ilot-standin/status", None, &FORGED);
    assert_eq!(st["request"]["client"], "127.0.0.1", "{st}");
    let pt_login = |pw: &str| login(&video, "root", pw, &[]);
    assert_eq!(pt_login(&password), 200);
    assert_eq!(
        pt_login(&logged),
        403,
        "the logged password no longer works"
    );
    // Its domain is its identity: a second one is refused, and says why.
    let err = ilot.fails(&["domain", "add", &format!("other-{video}"), &pt], 2);
    assert!(
        err.contains("keeps the domain it was installed with"),
        "{err}"
    );
    let err = ilot.fails(&["domain", "remove", &video], 2);
    assert!(err.contains("ilot app remove"), "{err}");
    ilot.ok(&["app", "remove", &pt, "--purge"]);

    // 4. Ghost: with a mail server, staff device verification stays on; the hook signs in
    // only once (the owner's first sign-in), so running it again (a reinstall over the kept
    // data) does not meet the new-device check.
    let gh = unique("gh");
    let blog = format!("{gh}.example.test");
    let out = install_with_standins(
        &ilot,
        "ghost",
        &gh,
        &blog,
        &GHOST_STANDINS,
        &["admin_email=ann@example.org"],
    );
    let password = shown_password(&out);
    let (_, st) = call_with(&p, &blog, "GET", "/.ilot-standin/status", None, &FORGED);
    assert_eq!(st["request"]["client"], "127.0.0.1", "{st}");
    assert_eq!(
        st["settings"]["staff_device_verification"],
        Value::Bool(true),
        "{st}"
    );
    let origin = format!("Origin: https://{blog}");
    let (code, v) = call_with(
        &p,
        &blog,
        "POST",
        "/ghost/api/admin/session/",
        Some(&serde_json::json!({ "username": "ann@example.org", "password": password })),
        &["-H", &origin],
    );
    assert_eq!(code, 403, "a second sign-in is a new device: {v}");
    assert!(v.to_string().contains("2FA_NEW_DEVICE_DETECTED"), "{v}");
    // Its mail client verifies the mail server's certificate (nodemailer does): ghost's mail
    // reaches bob because ilot gave it the bundle that trusts the server's self-signed
    // certificate; with the public roots alone the same handshake fails.
    let ghost_container = format!("ilot-{gh}-ghost");
    let env = docker_ok(&["inspect", "-f", "{{json .Config.Env}}", &ghost_container]);
    assert!(
        env.contains("NODE_EXTRA_CA_CERTS=/etc/ilot/trust/ca-bundle.pem"),
        "{env}"
    );
    let handshake = |cafile: &str| {
        docker(&[
            "exec",
            &ghost_container,
            "python3",
            "-c",
            &format!(
                "import os, smtplib, ssl\n\
                 s = smtplib.SMTP(os.environ['mail__options__host'], int(os.environ['mail__options__port']), timeout=20)\n\
                 s.starttls(context=ssl.create_default_context(cafile='{cafile}'))\n\
                 s.quit()"
            ),
        ])
    };
    let public_only = handshake("/etc/ssl/certs/ca-certificates.crt");
    assert!(
        String::from_utf8_lossy(&public_only.stderr).contains("CERTIFICATE_VERIFY_FAILED"),
        "{public_only:?}"
    );
    assert!(handshake("/etc/ilot/trust/ca-bundle.pem").status.success());
    mail_to_bob(&p, &srv, "ghost", &blog, &format!("{gh}@example.org"));
    let out = ilot.ok(&["app", "remove", &gh]);
    assert!(out.contains("kept"), "{out}");
    let out = install_with_standins(
        &ilot,
        "ghost",
        &gh,
        &blog,
        &GHOST_STANDINS,
        &["admin_email=ann@example.org"],
    );
    // Over the kept data and secrets: nothing new to show, the same owner.
    assert!(!out.contains("password:"), "{out}");
    let (_, st) = call(&p, &blog, "GET", "/.ilot-standin/status", None);
    assert_eq!(st["admin"]["user"], "ann@example.org", "{st}");
    let (_, st) = call(&p, &blog, "GET", "/.ilot-standin/status", None);
    assert_eq!(st["settings"]["members_signup_access"], "invite", "{st}");
    ilot.ok(&["app", "remove", &gh, "--purge"]);
    drop(srv);
}
