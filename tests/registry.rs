//! Images from a registry: pulled with progress and pinned by digest. No public registry is
//! reachable here, so the registry is Debian's `docker-registry` (the CNCF distribution
//! registry) on a loopback port, a real registry rather than a mock.

mod common;
use common::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Registry {
    child: Child,
    dir: std::path::PathBuf,
    port: u16,
    images: Vec<String>,
}

impl Registry {
    fn start() -> Registry {
        let bin = "/usr/bin/docker-registry";
        assert!(
            std::path::Path::new(bin).exists(),
            "{bin} missing: run tests/run.sh (it installs docker-registry)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("ilot-test-registry-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_try(&format!("127.0.0.1:{port}")).is_none() {
            assert!(Instant::now() < deadline, "registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            child,
            dir,
            port,
            images: Vec::new(),
        }
    }

    /// Builds a unique image on top of hello, pushes it, deletes it locally; returns
    /// (reference, digest).
    fn publish(&mut self) -> (String, String) {
        let reference = format!("127.0.0.1:{}/ilot-test/hello:{}", self.port, unique("t"));
        let ctx = self.dir.join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(
            ctx.join("Dockerfile"),
            format!("FROM ilot/hello:1.0\nLABEL ilot.test={reference}\n"),
        )
        .unwrap();
        docker_ok(&["build", "-q", "-t", &reference, ctx.to_str().unwrap()]);
        let push = docker_ok(&["push", &reference]);
        let digest = push
            .split_whitespace()
            .skip_while(|w| *w != "digest:")
            .nth(1)
            .expect("digest in push output")
            .to_string();
        self.images.push(reference.clone());
        docker_ok(&["rmi", &reference]);
        (reference, digest)
    }
}

fn http_try(addr: &str) -> Option<()> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n").ok()?;
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).ok()?;
    buf.ends_with(b"200").then_some(())
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for image in &self.images {
            let name = image.rsplit_once(':').unwrap().0;
            let out = docker(&["images", "-q", name]);
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = docker(&["rmi", "-f", id]);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn registry_images_are_pulled_with_progress_and_pinned_by_digest() {
    let mut registry = Registry::start();
    let (reference, digest) = registry.publish();
    let mut ilot = Ilot::start();
    let hello = std::fs::read_to_string(ilot.dir.join("catalog/hello/app.toml")).unwrap();
    for (app, pin) in [
        ("pulled", digest.clone()),
        ("wrongpin", format!("sha256:{}", "0".repeat(64))),
    ] {
        let dir = ilot.dir.join("catalog").join(app);
        std::fs::create_dir_all(&dir).unwrap();
        let manifest = hello
            .replace("name = \"hello\"", &format!("name = \"{app}\""))
            .replace(
                "image = \"ilot/hello:1.0\"",
                &format!("image = \"{reference}\""),
            )
            .replace("build = \"hello\"", &format!("digest = \"{pin}\""));
        std::fs::write(dir.join("app.toml"), manifest).unwrap();
    }
    ilot.restart();

    // A wrong pin: the registry has no such manifest; refused, nothing created.
    let out = ilot.cli(&["app", "install", "wrongpin"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot pull image") && err.contains("sha256:0000"),
        "{err}"
    );
    assert_eq!(ilot.objects(), (vec![], vec![], vec![]));

    // The right pin: pulled (progress on stderr), installed, healthy, pinned to that image.
    let out = ilot.cli(&["app", "install", "pulled"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}\n{}", ilot.log());
    assert!(
        err.contains(&format!(
            "pulling {}",
            reference.rsplit_once(':').unwrap().0
        )),
        "{err}"
    );
    let pulled_id = docker_ok(&[
        "image",
        "inspect",
        "-f",
        "{{.Id}}",
        &format!("{}@{digest}", reference.rsplit_once(':').unwrap().0),
    ]);
    let show = ilot.json(&["app", "show", "pulled"]);
    assert_eq!(show["services"][0]["image_id"], pulled_id.as_str());
    assert_eq!(http_get(&ilot.url("pulled")).0, 200);
    ilot.ok(&["app", "remove", "pulled", "--purge"]);
}
