//! Crash safety: the daemon is SIGKILLed at every journalled step of install, upgrade and
//! remove (ILOT_CRASH_AT, a test hook), restarted, and must converge: finish or roll back,
//! with no orphaned container, network or volume and the data intact.

mod common;
use common::*;

fn converged_running(ilot: &Ilot, name: &str) {
    let show = ilot.json(&["app", "show", name]);
    assert_eq!(show["status"], "running", "{show}\nlog:\n{}", ilot.log());
    let (containers, networks, volumes) = ilot.objects();
    assert_eq!(containers, vec![format!("ilot-{name}-web")]);
    assert_eq!(networks, vec![format!("ilot-{name}")]);
    assert_eq!(volumes, vec![format!("ilot-{name}-data")]);
    assert_eq!(http_get_eventually(&ilot.url(name)).0, 200);
    let plan = ilot.ok(&["plan"]);
    assert!(plan.contains("Nothing to do"), "{plan}");
}

#[test]
fn sigkill_at_every_install_step_converges() {
    let mut ilot = Ilot::start();
    for point in [
        "install:journalled",
        "install:after:create-network",
        "install:after:create-volume",
        "install:after:create-container",
        "install:after:start-container",
        "install:healthy",
    ] {
        let name = unique("crash");
        ilot.kill9();
        ilot.spawn(&[("ILOT_CRASH_AT", point)]);
        ilot.wait_ready();
        // The CLI loses its daemon mid-install: exit 3, "unreachable".
        ilot.fails(&["app", "install", "hello", "--name", &name], 3);
        ilot.wait_exit();
        ilot.spawn(&[]);
        ilot.wait_ready();
        converged_running(&ilot, &name);
        let events = ilot.ok(&["events"]);
        assert!(events.contains("recovered"), "{point}: {events}");
        ilot.ok(&["app", "remove", &name, "--purge"]);
        assert_eq!(ilot.objects(), (vec![], vec![], vec![]), "{point}");
    }
}

#[test]
fn sigkill_during_upgrade_rolls_back_with_data() {
    let mut ilot = Ilot::start();
    let name = unique("crup");
    ilot.ok(&["app", "install", "hello", "--name", &name]);
    let url = ilot.url(&name);
    http_get(&format!("{url}cgi-bin/visit"));
    let volume = format!("ilot-{name}-data");
    let data = volume_checksums(&volume);
    let image_1 = docker_ok(&["image", "inspect", "-f", "{{.Id}}", "ilot/hello:1.0"]);
    for (point, target) in [
        ("upgrade:snapshotting", "ilot/hello:2.0"),
        ("upgrade:snapshotted", "ilot/hello:2.0"),
        ("upgrade:after:create-container", "ilot/hello:broken"),
        ("upgrade:after:start-container", "ilot/hello:broken"),
        ("upgrade:rolling-back", "ilot/hello:broken"),
    ] {
        ilot.kill9();
        ilot.spawn(&[("ILOT_CRASH_AT", point)]);
        ilot.wait_ready();
        ilot.fails(&["app", "upgrade", &name, "--image", target], 3);
        ilot.wait_exit();
        ilot.spawn(&[]);
        ilot.wait_ready();
        converged_running(&ilot, &name);
        let show = ilot.json(&["app", "show", &name]);
        assert_eq!(
            show["services"][0]["image_id"],
            image_1.as_str(),
            "{point}: previous image"
        );
        assert_eq!(volume_checksums(&volume), data, "{point}: data intact");
        let snaps = ilot.dir.join("state/snapshots").join(&name);
        assert!(
            !snaps.exists() || std::fs::read_dir(&snaps).unwrap().next().is_none(),
            "{point}: snapshots left"
        );
    }
}

#[test]
fn sigkill_during_remove_converges() {
    let mut ilot = Ilot::start();
    for (point, purge) in [
        ("remove:journalled", true),
        ("remove:after:remove-container", false),
    ] {
        let name = unique("crrm");
        ilot.ok(&["app", "install", "hello", "--name", &name]);
        ilot.kill9();
        ilot.spawn(&[("ILOT_CRASH_AT", point)]);
        ilot.wait_ready();
        let mut args = vec!["app", "remove", name.as_str()];
        if purge {
            args.push("--purge");
        }
        ilot.fails(&args, 3);
        ilot.wait_exit();
        ilot.spawn(&[]);
        ilot.wait_ready();
        ilot.fails(&["app", "show", &name], 2);
        let (containers, networks, volumes) = ilot.objects();
        assert!(
            containers.is_empty() && networks.is_empty(),
            "{point}: {containers:?} {networks:?}"
        );
        if purge {
            assert!(volumes.is_empty(), "{point}: {volumes:?}");
        } else {
            assert_eq!(
                volumes,
                vec![format!("ilot-{name}-data")],
                "{point}: data kept"
            );
            ilot.ok(&["app", "remove", &name, "--purge"]);
        }
    }
}

#[test]
fn drift_is_shown_by_plan_and_corrected_on_restart() {
    let mut ilot = Ilot::start();
    let name = unique("drift");
    ilot.ok(&["app", "install", "hello", "--name", &name]);
    docker_ok(&["rm", "-f", &format!("ilot-{name}-web")]);
    let plan = ilot.ok(&["plan"]);
    assert!(
        plan.contains(&format!("create container ilot-{name}-web")),
        "{plan}"
    );
    ilot.restart();
    converged_running(&ilot, &name);
    assert!(ilot.ok(&["events"]).contains("drift"));
}
