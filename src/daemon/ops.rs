//! The lifecycle operations: install, upgrade (transactional, with snapshot and automatic
//! rollback), remove, start/stop/restart, and recovery of interrupted ones from the journal.
//!
//! The rule that makes crashes safe: an operation is written to the journal (`Op`) before its
//! first side effect and its step is updated before each one. On start, `recover` finishes
//! installs and removes (both converge idempotently) and rolls back any upgrade that had not
//! committed, restoring its data from the snapshot taken before the switch.

use super::{apps, Daemon, Progress};
use crate::api::{InstallParams, RemoveParams, UpgradeParams};
use crate::catalog::{self, Manifest};
use crate::error::{Error, ErrorKind, Result};
use crate::names;
use crate::plan::{self, Action, ContainerSpec};
use crate::state::{
    now, random_token, Instance, Kept, Op, OpKind, Phase, PinnedImage, Snapshot, Status,
};
use serde_json::json;
use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Test hook: `ILOT_CRASH_AT=<point>` makes the daemon SIGKILL itself at that point, so tests
/// can prove recovery from a crash at every step. The points:
pub const CRASH_POINTS: &[&str] = &[
    "install:journalled",
    "install:after:create-network",
    "install:after:create-volume",
    "install:after:create-container",
    "install:after:start-container",
    "install:healthy",
    "upgrade:snapshotting",
    "upgrade:snapshotted",
    "upgrade:after:create-container",
    "upgrade:after:start-container",
    "upgrade:rolling-back",
    "remove:journalled",
    "remove:after:remove-container",
];

fn crash_point(point: &str) {
    debug_assert!(
        CRASH_POINTS.contains(&point) || point.contains(":after:"),
        "unknown crash point {point}"
    );
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if AT
        .get_or_init(|| std::env::var("ILOT_CRASH_AT").ok())
        .as_deref()
        == Some(point)
    {
        eprintln!("ILOT_CRASH_AT={point}: killing the daemon (test hook)");
        // SAFETY: plain syscalls on our own pid.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

impl Daemon {
    // ---- journal helpers: each is one durable store transaction, mirrored in memory ----

    pub(super) fn save(&self, inst: &Instance, op: Option<&Op>) -> Result<()> {
        self.store.write(|w| {
            w.put_instance(inst)?;
            if let Some(op) = op {
                w.put_op(op)?;
            }
            Ok(())
        })?;
        self.instances
            .write()
            .expect("instances lock")
            .insert(inst.name.clone(), inst.clone());
        Ok(())
    }

    fn save_op(&self, op: &Op) -> Result<()> {
        self.store.write(|w| w.put_op(op))
    }

    /// Ends an operation, leaving `inst` as the instance's state.
    fn finish(&self, op: &Op, inst: &Instance) -> Result<()> {
        self.store.write(|w| {
            w.put_instance(inst)?;
            w.delete_op(op.id)
        })?;
        self.instances
            .write()
            .expect("instances lock")
            .insert(inst.name.clone(), inst.clone());
        Ok(())
    }

    fn snapshot_dir(&self, instance: &str, op: u64) -> std::path::PathBuf {
        self.store
            .dir
            .join("snapshots")
            .join(instance)
            .join(op.to_string())
    }

    // ---- install ----

    pub(super) async fn install(
        self: &Arc<Self>,
        p: InstallParams,
        progress: &Progress<'_>,
    ) -> Result<serde_json::Value> {
        let manifest = self.catalog.get(&p.app)?.clone();
        let name = p.name.clone().unwrap_or_else(|| manifest.name.clone());
        names::check_instance_name(&name)?;
        if manifest.needs.domain && p.domain.is_none() && !p.drill {
            return Err(Error::bad_input(format!(
                "{} must be served at a domain of its own",
                manifest.name
            ))
            .hint(format!(
                "add --domain NAME (e.g. --domain {}.example.org), a name whose A/AAAA records point \
                 at this host; `ilot app info {}` lists what it needs",
                manifest.name, manifest.name
            )));
        }
        if let Some(d) = &p.domain {
            names::check_domain(d)?;
            self.check_domain_free(d)?;
        }
        // A mail client (webmail) is of no use without the mail server it reads: refused
        // before anything changes (a restore drill runs it without one).
        let mail_client = match manifest.needs.mail_client {
            true => match self.mail_client_of() {
                None if !p.drill => {
                    return Err(Error::conflict(format!(
                        "{} reads and sends mail through the mail server, and none is installed",
                        manifest.name
                    ))
                    .hint(
                        "install the mail server first (`ilot app install mail --domain mail.DOMAIN`), \
                         then this app",
                    ))
                }
                m => m,
            },
            false => None,
        };
        let host = apps::HostFacts::read();
        let settings = resolve_settings(&manifest, &p.settings, host.memory)?;
        let problems = apps::resource_problems(&manifest, &settings, &host);
        if !problems.is_empty() && !p.force {
            return Err(apps::refuse_resources(&manifest, &problems));
        }
        let overrides = image_overrides(&manifest, &p.images)?;
        if self
            .instances
            .read()
            .expect("instances lock")
            .contains_key(&name)
        {
            return Err(Error::conflict(format!(
                "an instance named {name:?} is already installed"
            ))
            .hint(format!(
                "choose another name with --name, or see `ilot app show {name}`"
            )));
        }
        let engine = self.engine()?;
        let kept = self.store.kept(&name)?;
        if let Some(k) = &kept {
            if k.app != manifest.name {
                return Err(Error::conflict(format!(
                    "the data of a removed {:?} instance named {name:?} is kept ({})",
                    k.app,
                    k.volumes.join(", ")
                ))
                .hint(format!("choose another --name, or delete that data with `ilot app remove {name} --purge`")));
            }
        }
        let mut claimed = vec![("network", plan::network_name(&name))];
        claimed.extend(
            manifest
                .volumes
                .keys()
                .map(|v| ("volume", plan::volume_name(&name, v))),
        );
        claimed.extend(
            manifest
                .services
                .keys()
                .map(|s| ("container", plan::container_name(&name, s))),
        );
        engine.check_names_free(&claimed).await?;

        let (images, missing_images) = if p.dry_run {
            self.preview_images(&manifest, &overrides).await?
        } else {
            let images = self.resolve_images(&manifest, &overrides, progress).await?;
            (images, Vec::new())
        };
        let secrets = match &kept {
            Some(k) => k.secrets.clone(),
            None => manifest
                .secrets
                .iter()
                .map(|(k, s)| (k.clone(), random_token(s.length)))
                .collect(),
        };
        let t = now();
        // A mail server starts with the domain its name is under (mail.example.org serves
        // example.org), or what a removed instance of the same name had.
        let mail = match (&kept, manifest.needs.mail_files.is_some()) {
            (Some(k), true) if k.mail.is_some() => k.mail.clone(),
            (_, true) => Some(self.new_mail_state(p.domain.as_deref())?),
            _ => None,
        };
        let mut inst = Instance {
            smtp: None,
            mail_client,
            mail,
            name: name.clone(),
            app: manifest.name.clone(),
            manifest,
            domain: p.domain.clone(),
            aliases: Vec::new(),
            settings,
            secrets,
            images,
            running: true,
            status: Status::Installing,
            message: None,
            created_at: t,
            updated_at: t,
        };
        if inst.manifest.needs.smtp && !p.dry_run {
            inst.smtp = self.smtp_account(&name).await?;
            if inst.smtp.is_none() {
                progress.step("no mail server is installed: this app cannot send mail until one is (`ilot app install mail`) and it is reinstalled");
            }
        }
        let observed = engine.observe(&name).await?;
        let actions = plan::plan_instance(Some(&inst), &observed, false);
        if p.dry_run {
            return Ok(self.install_preview(&inst, &actions, &missing_images, &host, &problems));
        }
        if !problems.is_empty() {
            progress.step(format!(
                "installing anyway (--force): {}",
                problems.join("; ")
            ));
        }
        if kept.is_some() {
            progress.step(format!(
                "reusing the kept data of the previous {name:?} instance"
            ));
        }
        let mut op = self.new_op(OpKind::Install, &name, None, Some(inst.clone()), false)?;
        self.save(&inst, Some(&op))?;
        crash_point("install:journalled");
        // A reinstall over kept data keeps the old secrets, and the admin may have changed
        // the password since: nothing to show.
        let reveal = p.reveal && kept.is_none();
        self.converge_install(&mut op, inst, reveal, progress).await
    }

    /// Applies an install's plan and health-gates it; used by install and by recovery.
    async fn converge_install(
        &self,
        op: &mut Op,
        mut inst: Instance,
        reveal: bool,
        progress: &Progress<'_>,
    ) -> Result<serde_json::Value> {
        let name = inst.name.clone();
        let outcome = async {
            self.converge(op, Some(&inst), false, progress).await?;
            self.gate(&inst, progress).await?;
            self.run_hooks(&inst, progress).await
        }
        .await;
        match outcome {
            Ok(()) => {
                crash_point("install:healthy");
                inst.status = Status::Running;
                inst.message = None;
                inst.updated_at = now();
                self.store.write(|w| {
                    w.put_instance(&inst)?;
                    w.delete_op(op.id)?;
                    w.delete_kept(&name)
                })?;
                self.instances
                    .write()
                    .expect("instances lock")
                    .insert(name.clone(), inst.clone());
                self.bus.publish(
                    "installed",
                    Some(&name),
                    format!("{} installed and healthy", inst.app),
                );
                let mut reply =
                    json!({ "instance": name, "status": "running", "url": self.url_of(&inst) });
                if let Some(c) = self.credentials(&inst).filter(|_| reveal) {
                    reply["credentials"] = c;
                }
                Ok(reply)
            }
            Err(e) => {
                inst.status = Status::Failed;
                inst.message = Some(e.message.clone());
                inst.updated_at = now();
                self.finish(op, &inst)?;
                self.bus
                    .publish("install-failed", Some(&name), e.message.clone());
                let kind = if e.kind == ErrorKind::Unavailable {
                    ErrorKind::Unavailable
                } else {
                    ErrorKind::Failed
                };
                Err(Error::new(kind, format!("install of {name} failed: {}", e.message)).hint(format!(
                    "the instance and its data are kept, marked failed: see `ilot app logs {name}`, then \
                     `ilot app restart {name}` once fixed, or `ilot app remove {name}`"
                )))
            }
        }
    }

    fn new_op(
        &self,
        kind: OpKind,
        instance: &str,
        prev: Option<Instance>,
        next: Option<Instance>,
        purge: bool,
    ) -> Result<Op> {
        let id = self.store.write(|w| w.next_op_id())?;
        Ok(Op {
            id,
            kind,
            instance: instance.to_string(),
            phase: Phase::Applying,
            step: "journalled".into(),
            started_at: now(),
            prev,
            next,
            purge,
            snapshots: Vec::new(),
        })
    }

    /// Plans `desired` against what the engine holds and applies it step by step, journalling
    /// each step before it acts.
    async fn converge(
        &self,
        op: &mut Op,
        desired: Option<&Instance>,
        purge: bool,
        progress: &Progress<'_>,
    ) -> Result<()> {
        let engine = self.engine()?;
        match desired {
            Some(inst) => {
                self.write_tls_files(inst)?;
                self.write_mail_files(inst)?;
            }
            None => {
                for dir in [
                    plan::tls_dir(&op.instance),
                    plan::mail_dir(&op.instance),
                    plan::trust_dir(&op.instance),
                ]
                .into_iter()
                .flatten()
                {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
        }
        let observed = engine.observe(&op.instance).await?;
        let actions = plan::plan_instance(desired, &observed, purge);
        let kind = match op.kind {
            OpKind::Install => "install",
            OpKind::Upgrade => "upgrade",
            OpKind::Remove => "remove",
        };
        let total = actions.len();
        for (i, action) in actions.iter().enumerate() {
            op.step = format!("{} ({}/{total})", action.describe(), i + 1);
            self.save_op(op)?;
            progress.step(action.describe());
            engine.apply(action).await?;
            crash_point(&format!("{kind}:after:{}", action.kind()));
        }
        if let Some((_, observer)) = self.runtime.get() {
            observer.poke();
        }
        Ok(())
    }

    /// Waits until every service with a health check passes it (probing fast, so installs are
    /// not held back by the engine's slower steady-state interval), and the others run.
    async fn gate(&self, inst: &Instance, progress: &Progress<'_>) -> Result<()> {
        if !inst.running {
            return Ok(());
        }
        let engine = self.engine()?;
        let timeout = inst.manifest.health_timeout;
        let deadline = Instant::now() + timeout;
        for service in inst.manifest.service_order().unwrap_or_default() {
            let container = plan::container_name(&inst.name, &service);
            let health = inst.manifest.services[&service].health.clone();
            progress.step(format!(
                "waiting for {service} to be healthy (up to {}s)",
                timeout.as_secs()
            ));
            loop {
                let state = engine.container_state(&container).await?;
                let running = matches!(&state, Some((s, _)) if s == "running");
                let ok = match (&health, running) {
                    (_, false) => false,
                    (None, true) => true,
                    (Some(h), true) => engine.probe(&container, &h.cmd).await?,
                };
                if ok {
                    break;
                }
                if Instant::now() >= deadline {
                    let state = match state {
                        Some((s, code)) if s != "running" => {
                            format!("container {s} (exit code {code})")
                        }
                        Some(_) => "container running but its health check fails".to_string(),
                        None => "container missing".to_string(),
                    };
                    return Err(Error::failed(format!(
                        "{service} did not become healthy within {}s: {state}",
                        timeout.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// What `resolve_images` would use, without pulling: the image IDs of those already here,
    /// and a step for each that is not (to pull, or to build with images/build.sh).
    async fn preview_images(
        &self,
        manifest: &Manifest,
        overrides: &BTreeMap<String, String>,
    ) -> Result<(BTreeMap<String, PinnedImage>, Vec<String>)> {
        let engine = self.engine()?;
        let (mut images, mut missing) = (BTreeMap::new(), Vec::new());
        for (service, svc) in &manifest.services {
            let (reference, wanted, how) = match (overrides.get(service), &svc.digest) {
                (Some(r), _) => (r.clone(), r.clone(), format!("pull {r}")),
                (None, Some(d)) => {
                    let name = svc
                        .image
                        .rsplit_once(':')
                        .map_or(svc.image.as_str(), |(n, _)| n);
                    let want = format!("{name}@{d}");
                    (
                        svc.image.clone(),
                        want.clone(),
                        format!("pull {} ({want})", svc.image),
                    )
                }
                (None, None) => (
                    svc.image.clone(),
                    svc.image.clone(),
                    format!(
                        "build {} with images/build.sh {}",
                        svc.image,
                        svc.build.as_deref().unwrap_or("?")
                    ),
                ),
            };
            let id = engine.image_id(&wanted).await?.unwrap_or_default();
            if id.is_empty() && !missing.iter().any(|m: &String| m.starts_with(&how)) {
                missing.push(format!("{how}: not on this machine yet"));
            }
            images.insert(service.clone(), PinnedImage { reference, id });
        }
        Ok((images, missing))
    }

    /// Image IDs for every service: from `overrides` (service -> ref) or the manifest.
    async fn resolve_images(
        &self,
        manifest: &Manifest,
        overrides: &BTreeMap<String, String>,
        progress: &Progress<'_>,
    ) -> Result<BTreeMap<String, PinnedImage>> {
        let engine = self.engine()?;
        let mut out = BTreeMap::new();
        for (service, svc) in &manifest.services {
            let (reference, digest, build) = match overrides.get(service) {
                Some(r) => (r.clone(), None, None),
                None => (svc.image.clone(), svc.digest.clone(), svc.build.clone()),
            };
            let id = if let Some(build) = build {
                engine.image_id(&reference).await?.ok_or_else(|| {
                    Error::failed(format!("image {reference} is not on this machine"))
                        .hint(format!("ilot builds it locally: run images/build.sh {build} (installer/install.sh does)"))
                })?
            } else {
                let report = |msg: String, done: Option<(u64, u64)>| progress.bytes(msg, done);
                engine
                    .ensure_image(&reference, digest.as_deref(), &report)
                    .await?
            };
            out.insert(service.clone(), PinnedImage { reference, id });
        }
        Ok(out)
    }

    // ---- upgrade ----

    pub(super) async fn upgrade(
        self: &Arc<Self>,
        p: UpgradeParams,
        progress: &Progress<'_>,
    ) -> Result<serde_json::Value> {
        let inst = self.instance(&p.name)?;
        if inst.status == Status::Installing
            || inst.status == Status::Removing
            || inst.status == Status::Upgrading
        {
            return Err(Error::conflict(format!(
                "{} is {:?}; wait for that to finish",
                inst.name, inst.status
            )));
        }
        let overrides = image_overrides(&inst.manifest, &p.images)?;
        // Without --image, move to the catalogue's current manifest; with it, keep the manifest.
        let manifest = if overrides.is_empty() {
            self.catalog.get(&inst.app)?.clone()
        } else {
            inst.manifest.clone()
        };
        let mut images = inst.images.clone();
        if overrides.is_empty() {
            images = self
                .resolve_images(&manifest, &BTreeMap::new(), progress)
                .await?;
        } else {
            let resolved = self.resolve_images(&manifest, &overrides, progress).await?;
            for service in overrides.keys() {
                images.insert(service.clone(), resolved[service].clone());
            }
        }
        if images == inst.images && manifest == inst.manifest {
            return Ok(
                json!({ "instance": inst.name, "status": "up-to-date", "message": format!("{} is already up to date", inst.name) }),
            );
        }
        let mut next = inst.clone();
        next.manifest = manifest;
        next.images = images;
        // Settings the new manifest dropped are dropped; new ones take their defaults.
        let kept_settings = inst
            .settings
            .iter()
            .filter(|(k, _)| next.manifest.settings.contains_key(*k));
        next.settings = resolve_settings(
            &next.manifest,
            &kept_settings.map(|(k, v)| (k.clone(), v.clone())).collect(),
            apps::HostFacts::read().memory,
        )?;
        for (k, s) in &next.manifest.secrets {
            next.secrets
                .entry(k.clone())
                .or_insert_with(|| random_token(s.length));
        }
        next.running = true;
        next.status = Status::Running;
        next.updated_at = now();
        if p.dry_run {
            let observed = self.engine()?.observe(&inst.name).await?;
            let mut steps: Vec<String> = inst
                .manifest
                .volumes
                .keys()
                .map(|v| format!("snapshot volume {}", plan::volume_name(&inst.name, v)))
                .collect();
            steps.extend(
                plan::plan_instance(Some(&next), &observed, false)
                    .iter()
                    .map(Action::describe),
            );
            steps.push(format!("wait until healthy (up to {}s); if not: restore the snapshots and the previous images", next.manifest.health_timeout.as_secs()));
            return Ok(json!({ "dry_run": true, "instance": inst.name, "plan": steps }));
        }
        let mut upgrading = inst.clone();
        upgrading.status = Status::Upgrading;
        let mut op = self.new_op(
            OpKind::Upgrade,
            &inst.name,
            Some(inst.clone()),
            Some(next.clone()),
            false,
        )?;
        op.phase = Phase::Snapshotting;
        self.save(&upgrading, Some(&op))?;
        self.bus.publish(
            "upgrade-started",
            Some(&inst.name),
            describe_images("from", &inst),
        );

        // 1. Stop, and copy every volume out (checksummed), before anything changes.
        let engine = self.engine()?;
        for service in inst
            .manifest
            .service_order()
            .unwrap_or_default()
            .iter()
            .rev()
        {
            let name = plan::container_name(&inst.name, service);
            progress.step(format!("stopping {name}"));
            engine.apply(&Action::StopContainer { name }).await?;
        }
        crash_point("upgrade:snapshotting");
        let dir = self.snapshot_dir(&inst.name, op.id);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::failed(format!("cannot create {}: {e}", dir.display())))?;
        for (volume, (service, mount)) in volume_mounts(&inst) {
            let file = dir.join(format!("{volume}.tar"));
            progress.step(format!(
                "snapshotting volume {}",
                plan::volume_name(&inst.name, &volume)
            ));
            let container = plan::container_name(&inst.name, &service);
            match engine.snapshot(&container, &mount, &file).await {
                Ok((sha256, bytes)) => op.snapshots.push(Snapshot {
                    volume: volume.clone(),
                    mount,
                    file,
                    sha256,
                    bytes,
                }),
                Err(e) => {
                    // Nothing switched yet: put the old version back as it was.
                    self.abort_upgrade(&mut op, progress).await?;
                    return Err(Error::failed(format!(
                        "upgrade of {} aborted: could not snapshot {volume}: {}",
                        inst.name, e.message
                    ))
                    .hint("nothing was changed; the previous version runs again"));
                }
            }
        }
        op.phase = Phase::Snapshotted;
        self.save_op(&op)?;
        crash_point("upgrade:snapshotted");

        // 2. Switch and health-gate.
        op.phase = Phase::Switching;
        self.save_op(&op)?;
        let switched = async {
            self.converge(&mut op, Some(&next), false, progress).await?;
            self.gate(&next, progress).await
        }
        .await;
        match switched {
            Ok(()) => {
                self.finish(&op, &next)?;
                let _ = std::fs::remove_dir_all(&dir);
                self.bus
                    .publish("upgraded", Some(&next.name), describe_images("to", &next));
                Ok(json!({ "instance": next.name, "status": "upgraded", "images": next.images }))
            }
            Err(e) => {
                progress.step(format!("{}: rolling back", e.message));
                self.rollback(&mut op, progress).await?;
                Err(Error::failed(format!(
                    "upgrade of {} failed: {}; rolled back to {} with its data restored from the snapshot",
                    inst.name,
                    e.message,
                    describe_images("", &inst).trim()
                ))
                .hint(format!("see `ilot app logs {}`; the previous version is running", inst.name)))
            }
        }
    }

    /// Upgrade interrupted before the switch: discard snapshots, restart the old containers.
    async fn abort_upgrade(&self, op: &mut Op, progress: &Progress<'_>) -> Result<()> {
        let prev = op.prev.clone().expect("upgrade journal has prev");
        let _ = std::fs::remove_dir_all(self.snapshot_dir(&prev.name, op.id));
        self.converge(op, Some(&prev), false, progress).await?;
        let mut back = prev.clone();
        if let Err(e) = self.gate(&prev, progress).await {
            back.status = Status::Failed;
            back.message = Some(e.message);
        }
        self.finish(op, &back)?;
        self.bus.publish(
            "upgrade-aborted",
            Some(&prev.name),
            "upgrade interrupted before the switch; previous version restarted",
        );
        Ok(())
    }

    /// Upgrade failed or interrupted after the switch began: remove the new containers,
    /// restore every volume from its snapshot, recreate the previous containers.
    async fn rollback(&self, op: &mut Op, progress: &Progress<'_>) -> Result<()> {
        let prev = op.prev.clone().expect("upgrade journal has prev");
        op.phase = Phase::RollingBack;
        self.save_op(op)?;
        crash_point("upgrade:rolling-back");
        let engine = self.engine()?;
        for c in engine.observe(&prev.name).await?.containers {
            progress.step(format!("removing {}", c.name));
            engine
                .apply(&Action::RemoveContainer { name: c.name })
                .await?;
        }
        let mounts = volume_mounts(&prev);
        for snap in &op.snapshots {
            let volume = plan::volume_name(&prev.name, &snap.volume);
            progress.step(format!("restoring volume {volume} from its snapshot"));
            let service = mounts
                .get(&snap.volume)
                .map(|(s, _)| s.clone())
                .unwrap_or_else(|| prev.manifest.main_service().to_string());
            let spec = ContainerSpec::for_service(&prev, &service);
            engine
                .restore(&spec, &volume, &snap.mount, &snap.file, &snap.sha256)
                .await?;
        }
        self.converge(op, Some(&prev), false, progress).await?;
        let mut back = prev.clone();
        back.status = Status::Running;
        back.message = Some(format!("upgrade rolled back at {}", now()));
        if let Err(e) = self.gate(&prev, progress).await {
            back.status = Status::Failed;
            back.message = Some(format!(
                "rolled back, but the previous version is not healthy either: {}",
                e.message
            ));
        }
        self.finish(op, &back)?;
        let _ = std::fs::remove_dir_all(self.snapshot_dir(&prev.name, op.id));
        self.bus.publish(
            "upgrade-rolled-back",
            Some(&prev.name),
            describe_images("back to", &prev),
        );
        Ok(())
    }

    // ---- remove ----

    pub(super) async fn remove(
        self: &Arc<Self>,
        p: RemoveParams,
        progress: &Progress<'_>,
    ) -> Result<serde_json::Value> {
        names::check_instance_name(&p.name)?;
        let engine = self.engine()?;
        let inst = match self.instance(&p.name) {
            Ok(i) => Some(i),
            Err(e) => {
                // Only kept data left: --purge deletes it.
                if p.purge && self.store.kept(&p.name)?.is_some() {
                    None
                } else {
                    return Err(e);
                }
            }
        };
        if p.dry_run {
            let observed = engine.observe(&p.name).await?;
            let mut steps: Vec<String> = plan::plan_instance(None, &observed, p.purge)
                .iter()
                .map(Action::describe)
                .collect();
            if !p.purge && !observed.volumes.is_empty() {
                steps.push(format!(
                    "keep volumes {} (use --purge to delete them)",
                    observed.volumes.join(", ")
                ));
            }
            return Ok(json!({ "dry_run": true, "instance": p.name, "plan": steps }));
        }
        let mut op = self.new_op(OpKind::Remove, &p.name, inst.clone(), None, p.purge)?;
        match &inst {
            Some(i) => {
                let mut removing = i.clone();
                removing.status = Status::Removing;
                self.save(&removing, Some(&op))?;
            }
            None => self.save_op(&op)?,
        }
        crash_point("remove:journalled");
        self.converge_remove(&mut op, progress).await
    }

    async fn converge_remove(
        &self,
        op: &mut Op,
        progress: &Progress<'_>,
    ) -> Result<serde_json::Value> {
        let name = op.instance.clone();
        let volumes = self.engine()?.observe(&name).await?.volumes;
        self.converge(op, None, op.purge, progress).await?;
        if let Some(account) = op.prev.as_ref().and_then(|p| p.smtp.clone()) {
            self.drop_smtp_account(&account).await;
        }
        let kept = match (&op.prev, op.purge) {
            (Some(prev), false) => Some(Kept {
                app: prev.app.clone(),
                secrets: prev.secrets.clone(),
                volumes: volumes.clone(),
                removed_at: now(),
                mail: prev.mail.clone(),
            }),
            _ => None,
        };
        self.store.write(|w| {
            w.delete_instance(&name)?;
            w.delete_op(op.id)?;
            match &kept {
                Some(k) => w.put_kept(&name, k),
                None => w.delete_kept(&name),
            }
        })?;
        self.instances
            .write()
            .expect("instances lock")
            .remove(&name);
        if op.purge {
            let _ = std::fs::remove_dir_all(self.store.dir.join("snapshots").join(&name));
        }
        let kept_note = if op.purge || volumes.is_empty() {
            String::new()
        } else {
            format!(
                "; data kept in {} (reinstall under the same name to reuse it, or remove --purge)",
                volumes.join(", ")
            )
        };
        self.bus.publish(
            "removed",
            Some(&name),
            format!("removed{}", if op.purge { " with its data" } else { "" }),
        );
        Ok(
            json!({ "instance": name, "status": "removed", "purged": op.purge, "kept_volumes": if op.purge { vec![] } else { volumes }, "message": format!("{name} removed{kept_note}") }),
        )
    }

    // ---- certificate files for apps that terminate TLS themselves ----

    /// Writes the instance's certificate files, and for a mail server the bundle its apps
    /// verify it with; for an app of a mail server, makes sure that bundle is there before its
    /// containers mount it. Returns whether the instance's own files changed.
    fn write_tls_files(&self, inst: &Instance) -> Result<bool> {
        let changed = self.write_cert_files(inst)?;
        if inst.manifest.needs.mail_files.is_some() {
            self.write_trust_bundle(&inst.name, Some(inst))?;
        }
        let server = inst
            .smtp
            .as_ref()
            .map(|s| s.server.clone())
            .or(inst.mail_client.as_ref().map(|m| m.server.clone()));
        if let Some(server) = server {
            let missing =
                plan::trust_dir(&server).is_some_and(|d| !d.join("ca-bundle.pem").exists());
            if missing {
                // The server's own files first; a server removed since leaves the host's roots
                // alone (the app's containers still mount the directory).
                let found = self
                    .instances
                    .read()
                    .expect("instances lock")
                    .get(&server)
                    .cloned();
                if let Some(found) = &found {
                    self.write_cert_files(found)?;
                }
                self.write_trust_bundle(&server, found.as_ref())?;
            }
        }
        Ok(changed)
    }

    /// The bundle an app verifies mail server `name` with (plan::trust_dir): the host's public
    /// roots, plus the server's own certificate while it is self-signed, or `[acme] ca_root`
    /// when a private CA issued it (only the roots once the server is gone). Rewritten only
    /// when it changes.
    fn write_trust_bundle(&self, name: &str, server: Option<&Instance>) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let Some(dir) = plan::trust_dir(name) else {
            return Ok(());
        };
        let mut bundle = match HOST_CA_BUNDLES
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
        {
            Some(roots) => roots,
            None => {
                tracing::warn!(
                    "no CA bundle on this host ({}): the apps of mail server {} trust only its \
                     own certificate (install the ca-certificates package)",
                    HOST_CA_BUNDLES.join(", "),
                    name
                );
                String::new()
            }
        };
        let own = server.and_then(|server| {
            let domain = server.domain.clone().unwrap_or_else(|| "localhost".into());
            match self.certs.as_ref().and_then(|c| c.issued_pem(&domain)) {
                Some(_) => self.config.acme.ca_root.clone(),
                None => plan::tls_dir(&server.name).map(|d| d.join("fullchain.pem")),
            }
        });
        if let Some(pem) = own.and_then(|p| std::fs::read_to_string(p).ok()) {
            if !bundle.is_empty() && !bundle.ends_with('\n') {
                bundle.push('\n');
            }
            bundle.push_str(&pem);
        }
        let path = dir.join("ca-bundle.pem");
        if std::fs::read_to_string(&path).ok().as_deref() == Some(bundle.as_str()) {
            return Ok(());
        }
        let io = |e: std::io::Error| Error::failed(format!("cannot write {}: {e}", path.display()));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(io)?;
        crate::state::write_private(&path, &bundle)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).map_err(io)?;
        Ok(())
    }

    /// Writes the instance's certificate files (its domain's issued certificate, else a
    /// self-signed one) into state_dir/tls/INSTANCE; returns whether they changed.
    fn write_cert_files(&self, inst: &Instance) -> Result<bool> {
        use std::os::unix::fs::PermissionsExt;
        let (Some(tls), Some(dir)) = (&inst.manifest.needs.tls, plan::tls_dir(&inst.name)) else {
            return Ok(false);
        };
        let domain = inst.domain.clone().unwrap_or_else(|| "localhost".into());
        let key_path = dir.join("privkey.pem");
        let issued = self.certs.as_ref().and_then(|c| c.issued_pem(&domain));
        // Keep an existing self-signed pair rather than making a new one at every converge.
        if issued.is_none() && key_path.exists() {
            return Ok(false);
        }
        let (chain, key) = match issued {
            Some(pair) => pair,
            None => crate::proxy::tls::self_signed_pem(&domain)?,
        };
        if std::fs::read_to_string(dir.join("fullchain.pem"))
            .ok()
            .as_deref()
            == Some(chain.as_str())
        {
            return Ok(false);
        }
        let io = |e: std::io::Error| {
            Error::failed(format!(
                "cannot write certificate files in {}: {e}",
                dir.display()
            ))
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(io)?;
        crate::state::write_private(&key_path, &key)?;
        let (uid, gid) = tls.uid_gid().unwrap_or((0, 0));
        std::os::unix::fs::chown(&key_path, Some(uid), Some(gid)).map_err(io)?;
        let chain_path = dir.join("fullchain.pem");
        crate::state::write_private(&chain_path, &chain)?;
        std::fs::set_permissions(&chain_path, std::fs::Permissions::from_mode(0o644))
            .map_err(io)?;
        Ok(true)
    }

    /// On a new certificate, refreshes the files of the instances served at that domain and
    /// runs their reload command.
    pub(super) fn spawn_tls_reloader(self: Arc<Self>) {
        let mut events = self.bus.subscribe("the certificate reloader");
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let (Some(domain), "cert-issued") = (event.domain.as_deref(), event.kind.as_str())
                else {
                    continue;
                };
                let targets: Vec<Instance> = self
                    .instances
                    .read()
                    .expect("instances lock")
                    .values()
                    .filter(|i| {
                        i.manifest.needs.tls.is_some() && i.domain.as_deref() == Some(domain)
                    })
                    .cloned()
                    .collect();
                for inst in targets {
                    if let Err(e) = self.reload_tls(&inst).await {
                        self.bus
                            .publish("tls-reload-failed", Some(&inst.name), e.message);
                    }
                }
            }
        });
    }

    async fn reload_tls(&self, inst: &Instance) -> Result<()> {
        if !self.write_tls_files(inst)? || !inst.running {
            return Ok(());
        }
        let tls = inst.manifest.needs.tls.as_ref().expect("filtered on tls");
        if let Some(cmd) = &tls.reload {
            let container = plan::container_name(&inst.name, &tls.service);
            if !self.engine()?.probe(&container, cmd).await? {
                return Err(Error::failed(format!(
                    "{container}: the reload command {cmd:?} failed"
                )));
            }
        }
        self.bus.publish(
            "tls-reloaded",
            Some(&inst.name),
            "new certificate files in place, app reloaded",
        );
        Ok(())
    }

    // ---- domains ----

    /// A domain is served by one instance only.
    pub(super) fn check_domain_free(&self, domain: &str) -> Result<()> {
        let instances = self.instances.read().expect("instances lock");
        match instances
            .values()
            .find(|i| i.domains().any(|d| d == domain))
        {
            Some(owner) => {
                Err(
                    Error::conflict(format!("{domain} is already served by {}", owner.name)).hint(
                        format!("remove it there first: `ilot domain remove {domain}`"),
                    ),
                )
            }
            None => Ok(()),
        }
    }

    /// `ilot domain add DOMAIN INSTANCE`: the instance's routes are served at one more domain
    /// (its primary one if it has none).
    pub(super) async fn domain_add(
        self: &Arc<Self>,
        domain: &str,
        name: &str,
        progress: &Progress<'_>,
    ) -> Result<serde_json::Value> {
        names::check_domain(domain)?;
        let mut inst = self.instance(name)?;
        if inst.manifest.needs.routes.is_empty() {
            return Err(Error::bad_input(format!(
                "{} ({}) has no web routes to serve at a domain",
                inst.name, inst.app
            )));
        }
        if let (true, Some(current)) = (inst.manifest.needs.fixed_domain, &inst.domain) {
            return Err(Error::bad_input(format!(
                "{} ({}) keeps the domain it was installed with, {current}: the app wrote it \
                 into its data at its first start (other servers know it by that address), so \
                 a second domain or a new one would break it",
                inst.name, inst.app
            ))
            .hint(format!(
                "to move it, back it up, install a new instance at {domain} and restore into it \
                 (the app's own tools to rename a server, if any, are in docs/catalog.md)"
            )));
        }
        self.check_domain_free(domain)?;
        if inst.domain.is_none() {
            inst.domain = Some(domain.to_string());
        } else {
            inst.aliases.push(domain.to_string());
        }
        inst.updated_at = now();
        self.save(&inst, None)?;
        // The primary domain reaches the app through {{domain}}: converge (recreates if needed).
        self.reconfigure(&inst, progress).await?;
        self.bus.publish(
            "domain-added",
            Some(name),
            format!("{domain} now serves {name}"),
        );
        Ok(json!({ "domain": domain, "instance": name }))
    }

    /// Applies a changed instance (the primary domain reaches the app through {{domain}}, so
    /// its container may be recreated) and, like start, waits until it is healthy again.
    async fn reconfigure(&self, inst: &Instance, progress: &Progress<'_>) -> Result<()> {
        self.apply_direct(inst, progress).await?;
        self.gate(inst, progress).await.map_err(|e| {
            Error::failed(format!(
                "{} was reconfigured but is not healthy: {}",
                inst.name, e.message
            ))
            .hint(format!("see `ilot app logs {}`", inst.name))
        })
    }

    pub(super) async fn domain_remove(
        self: &Arc<Self>,
        domain: &str,
        progress: &Progress<'_>,
    ) -> Result<serde_json::Value> {
        let owner = self
            .instances
            .read()
            .expect("instances lock")
            .values()
            .find(|i| i.domains().any(|d| d == domain))
            .cloned();
        let Some(mut inst) = owner else {
            return Err(
                Error::not_found(format!("no instance is served at {domain:?}"))
                    .hint("see `ilot domain list`"),
            );
        };
        if inst.manifest.needs.fixed_domain && inst.domain.as_deref() == Some(domain) {
            return Err(Error::bad_input(format!(
                "{domain} is {}'s own domain ({} keeps the domain it was installed with)",
                inst.name, inst.app
            ))
            .hint(format!(
                "remove the app to free it: `ilot app remove {}`",
                inst.name
            )));
        }
        if inst.domain.as_deref() == Some(domain) {
            // The first alias, if any, becomes the primary domain.
            inst.domain = if inst.aliases.is_empty() {
                None
            } else {
                Some(inst.aliases.remove(0))
            };
        } else {
            inst.aliases.retain(|d| d != domain);
        }
        inst.updated_at = now();
        self.save(&inst, None)?;
        self.reconfigure(&inst, progress).await?;
        self.bus.publish(
            "domain-removed",
            Some(&inst.name),
            format!("{domain} no longer serves {}", inst.name),
        );
        Ok(json!({ "domain": domain, "instance": inst.name }))
    }

    // ---- start / stop / restart ----

    pub(super) async fn start(
        self: &Arc<Self>,
        name: &str,
        progress: &Progress<'_>,
    ) -> Result<serde_json::Value> {
        let mut inst = self.instance(name)?;
        inst.running = true;
        self.save(&inst, None)?;
        self.apply_direct(&inst, progress).await?;
        self.settle_health(inst, progress, "started").await
    }

    pub(super) async fn stop(
        self: &Arc<Self>,
        name: &str,
        progress: &Progress<'_>,
    ) -> Result<serde_json::Value> {
        let mut inst = self.instance(name)?;
        inst.running = false;
        inst.status = Status::Stopped;
        inst.message = None;
        inst.updated_at = now();
        self.save(&inst, None)?;
        self.apply_direct(&inst, progress).await?;
        self.bus.publish("stopped", Some(name), "stopped");
        Ok(json!({ "instance": name, "status": "stopped" }))
    }

    pub(super) async fn restart(
        self: &Arc<Self>,
        name: &str,
        progress: &Progress<'_>,
    ) -> Result<serde_json::Value> {
        let mut inst = self.instance(name)?;
        inst.running = true;
        self.save(&inst, None)?;
        // Recreate what is missing or stale first, then restart the rest in dependency order.
        self.apply_direct(&inst, progress).await?;
        let engine = self.engine()?;
        for service in inst.manifest.service_order().unwrap_or_default() {
            let c = plan::container_name(name, &service);
            progress.step(format!("restarting {c}"));
            engine.restart(&c).await?;
        }
        self.settle_health(inst, progress, "restarted").await
    }

    /// Converges an instance outside any journalled operation (its desired state is already
    /// saved, so a crash here is healed by the next reconcile).
    async fn apply_direct(&self, inst: &Instance, progress: &Progress<'_>) -> Result<()> {
        let engine = self.engine()?;
        self.write_tls_files(inst)?;
        self.write_mail_files(inst)?;
        let observed = engine.observe(&inst.name).await?;
        for action in plan::plan_instance(Some(inst), &observed, false) {
            progress.step(action.describe());
            engine.apply(&action).await?;
        }
        if let Some((_, observer)) = self.runtime.get() {
            observer.poke();
        }
        Ok(())
    }

    async fn settle_health(
        &self,
        mut inst: Instance,
        progress: &Progress<'_>,
        verb: &str,
    ) -> Result<serde_json::Value> {
        let outcome = self.gate(&inst, progress).await;
        inst.updated_at = now();
        match outcome {
            Ok(()) => {
                inst.status = Status::Running;
                inst.message = None;
                self.save(&inst, None)?;
                self.bus.publish(verb, Some(&inst.name), verb);
                Ok(json!({ "instance": inst.name, "status": "running" }))
            }
            Err(e) => {
                inst.status = Status::Failed;
                inst.message = Some(e.message.clone());
                self.save(&inst, None)?;
                self.bus
                    .publish("unhealthy", Some(&inst.name), e.message.clone());
                Err(Error::failed(format!(
                    "{} {verb} but is not healthy: {}",
                    inst.name, e.message
                ))
                .hint(format!("see `ilot app logs {}`", inst.name)))
            }
        }
    }

    // ---- recovery and drift ----

    /// Finishes or rolls back every operation the journal holds, removes engine objects of
    /// instances that no longer exist, then converges every instance.
    pub(super) async fn recover(self: &Arc<Self>) -> Result<()> {
        let (tx, _) = tokio::sync::mpsc::unbounded_channel();
        let progress = Progress { tx: &tx };
        // A backup killed while it held containers paused: thaw them first.
        self.thaw_paused().await?;
        for mut op in self.store.ops()? {
            tracing::warn!(op = op.id, kind = ?op.kind, instance = %op.instance, phase = ?op.phase, step = %op.step, "recovering an interrupted operation");
            let result = match (op.kind, op.phase) {
                (OpKind::Install, _) => {
                    let inst = op.next.clone().expect("install journal has next");
                    self.converge_install(&mut op, inst, false, &progress)
                        .await
                        .map(|_| ())
                }
                (OpKind::Remove, _) => self.converge_remove(&mut op, &progress).await.map(|_| ()),
                (OpKind::Upgrade, Phase::Applying | Phase::Snapshotting) => {
                    self.abort_upgrade(&mut op, &progress).await
                }
                (OpKind::Upgrade, _) => self.rollback(&mut op, &progress).await,
            };
            match result {
                Ok(()) => self.bus.publish(
                    "recovered",
                    Some(&op.instance),
                    format!("interrupted {:?} recovered", op.kind).to_lowercase(),
                ),
                Err(e) => {
                    tracing::error!("recovery of {} failed: {e}", op.instance);
                    self.bus
                        .publish("recovery-failed", Some(&op.instance), e.message);
                }
            }
        }
        self.reconcile_all().await
    }

    /// What converging would do now: for orphans (engine objects of an instance ilot no longer
    /// knows: containers and network go, volumes stay) and for drifted instances.
    async fn pending_changes(&self) -> Result<Vec<(String, &'static str, Vec<Action>)>> {
        let engine = self.engine()?;
        let known: Vec<Instance> = self.instances_snapshot();
        let mut out = Vec::new();
        for name in engine.instances_present().await? {
            if !known.iter().any(|i| i.name == name) {
                let actions = plan::plan_instance(None, &engine.observe(&name).await?, false);
                out.push((name, "orphan", actions));
            }
        }
        for inst in known {
            let actions =
                plan::plan_instance(Some(&inst), &engine.observe(&inst.name).await?, false);
            if !actions.is_empty() {
                out.push((inst.name.clone(), "drift", actions));
            }
        }
        Ok(out)
    }

    /// Drift correction: orphans removed (volumes kept), every instance converged.
    pub(super) async fn reconcile_all(&self) -> Result<()> {
        let engine = self.engine()?;
        for (name, reason, actions) in self.pending_changes().await? {
            let what: Vec<String> = actions.iter().map(Action::describe).collect();
            self.bus.publish(
                reason,
                Some(&name),
                format!("correcting {reason}: {}", what.join("; ")),
            );
            for action in &actions {
                engine.apply(action).await?;
            }
        }
        Ok(())
    }

    /// `ilot plan`: what converging every instance would do now, without doing it.
    pub(super) async fn plan_all(&self) -> Result<serde_json::Value> {
        let changes: Vec<_> = self
            .pending_changes()
            .await?
            .into_iter()
            .map(|(name, reason, actions)| {
                let steps: Vec<String> = actions.iter().map(Action::describe).collect();
                json!({ "instance": name, "reason": reason, "plan": steps })
            })
            .collect();
        let pending: Vec<_> = self
            .store
            .ops()?
            .into_iter()
            .map(|o| json!({"instance": o.instance, "kind": o.kind, "step": o.step}))
            .collect();
        Ok(json!({ "changes": changes, "operations_in_progress": pending }))
    }
}

/// `--image REF` (the main service) or `--image SERVICE=REF`, checked.
fn image_overrides(manifest: &Manifest, given: &[String]) -> Result<BTreeMap<String, String>> {
    let mut overrides = BTreeMap::new();
    for item in given {
        let (service, reference) = match item.split_once('=') {
            Some((s, r)) => (s.to_string(), r.to_string()),
            None => (manifest.main_service().to_string(), item.clone()),
        };
        manifest.check_service(&service)?;
        check_image_ref(&reference)?;
        if overrides.insert(service.clone(), reference).is_some() {
            return Err(Error::bad_input(format!(
                "--image given twice for {service}"
            )));
        }
    }
    Ok(overrides)
}

/// Validates `--set` values against the manifest and fills in defaults (sized to a machine
/// with `host_memory` bytes where the manifest says so).
fn resolve_settings(
    manifest: &Manifest,
    given: &BTreeMap<String, String>,
    host_memory: u64,
) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (key, value) in given {
        let setting = manifest.settings.get(key).ok_or_else(|| {
            let known: Vec<&str> = manifest.settings.keys().map(String::as_str).collect();
            Error::bad_input(format!("{} has no setting {key:?}", manifest.name)).hint(
                if known.is_empty() {
                    "this app takes no settings".to_string()
                } else {
                    format!(
                        "its settings: {} (see `ilot app catalog`)",
                        known.join(", ")
                    )
                },
            )
        })?;
        catalog::check_setting_value(key, setting, value).map_err(Error::bad_input)?;
        out.insert(key.clone(), value.clone());
    }
    for (key, s) in &manifest.settings {
        if !out.contains_key(key) {
            match apps::default_for(s, host_memory) {
                Some(d) => {
                    out.insert(key.clone(), d);
                }
                None => {
                    return Err(Error::bad_input(format!(
                        "{} needs the setting {key}",
                        manifest.name
                    ))
                    .hint(format!("add --set {key}=VALUE ({})", s.description)))
                }
            }
        }
    }
    if let Some(r) = manifest.refused(&out) {
        let set: Vec<String> = r
            .when
            .iter()
            .map(|w| {
                let key = w.split(['=', '!']).next().unwrap_or("").trim();
                format!("{key}={}", out.get(key).map(String::as_str).unwrap_or(""))
            })
            .collect();
        return Err(Error::bad_input(format!(
            "{} cannot run with {}: {}",
            manifest.name,
            set.join(" and "),
            r.why
        ))
        .hint(r.fix.clone()));
    }
    Ok(out)
}

/// Where hosts keep their public CA roots, one PEM file (Debian and Ubuntu, Fedora, Alpine).
const HOST_CA_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// An image reference as given to `--image`: name:tag or name@sha256:digest, no spaces.
fn check_image_ref(r: &str) -> Result<()> {
    let ok = !r.is_empty()
        && r.len() <= 255
        && (r.contains(':') || r.contains('@'))
        && !r.starts_with([':', '@', '/', '-'])
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::bad_input(format!("invalid image reference {r:?}"))
            .hint("use NAME:TAG or NAME@sha256:DIGEST, e.g. ilot/hello:2.0"))
    }
}

/// Each volume with one service that mounts it and where.
fn volume_mounts(inst: &Instance) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for (service, svc) in &inst.manifest.services {
        for (vol, path) in &svc.mounts {
            out.entry(vol.clone())
                .or_insert((service.clone(), path.clone()));
        }
    }
    out
}

fn describe_images(prefix: &str, inst: &Instance) -> String {
    let images: Vec<String> = inst
        .images
        .values()
        .map(|i| format!("{} ({})", i.reference, plan::short_id(&i.id)))
        .collect();
    format!("{prefix} {}", images.join(", "))
}
