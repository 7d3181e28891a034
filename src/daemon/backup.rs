//! `ilot backup ...`: backups of instances into a restic-format repository (src/backup), and
//! restores from it.
//!
//! A backup of an instance: its database dumps (the manifest's `[needs] backup` `dump`
//! commands, run in their containers, streamed into a 0600 staging directory), its desired
//! state (manifest, settings, secrets: the repository is encrypted), then its backed-up
//! volumes, read on the host while the containers that mount them are paused, as one
//! snapshot. A failed run adds no snapshot and leaves the others as they were: a snapshot is
//! written only once all its data is in the repository.
//!
//! A restore never touches an existing instance: it makes a new one (the original name when
//! it is free, or `--as NEW`), whose volumes are filled from the snapshot before it starts,
//! installs it with the saved settings and secrets, loads the dumps back with the manifest's
//! `restore` commands, and restarts it.

use super::{Daemon, Progress};
use crate::backup::remote::{S3Credentials, SftpAccess};
use crate::backup::{Access, Keep, ProgressFn, Repo, Target};
use crate::error::{Error, Result};
use crate::plan::{self, Action};
use crate::state::{now, Instance, Kept};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a snapshot says about its instance, in `instance.json` beside the dumps.
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    instance: Instance,
    /// Volume (manifest name) -> its directory on the host when it was backed up: where it
    /// is in the snapshot.
    volumes: BTreeMap<String, PathBuf>,
    /// Dump files, in `dumps/` of the staging directory.
    dumps: Vec<String>,
    /// Volume -> (uid, gid, mode) of its top directory, which a restore does not set (the
    /// engine makes that directory, root's, and fills it from the image only when empty).
    #[serde(default)]
    owners: BTreeMap<String, (u32, u32, u32)>,
}

impl Daemon {
    fn backup_dir(&self) -> PathBuf {
        self.config.daemon.state_dir.join("backup")
    }

    fn backup_password_file(&self) -> PathBuf {
        self.config
            .backup
            .password_file
            .clone()
            .unwrap_or_else(|| self.backup_dir().join("password"))
    }

    /// The configured repository (its progress going to `progress`), and its password.
    fn backup_repo(&self, progress: &Progress<'_>) -> Result<(Arc<Repo>, String)> {
        let b = &self.config.backup;
        let location = b.repository.as_ref().ok_or_else(|| {
            Error::bad_input("no backup repository is configured").hint(
                "set [backup] repository = \"/mnt/backup/ilot\" (a directory, e.g. on another disk), \"sftp:user@host:/srv/ilot\" or \"s3:https://endpoint/bucket/ilot\" in the config, restart the daemon, then `ilot backup init`",
            )
        })?;
        // The config was checked at load: this parses.
        let target = Target::parse(location).map_err(Error::bad_input)?;
        let tx = progress.sender();
        let report: ProgressFn = Arc::new(move |message, done: Option<(u64, u64)>| {
            let _ = tx.send(crate::api::Reply::Progress {
                message,
                current: done.map(|d| d.0),
                total: done.map(|d| d.1),
            });
        });
        let access = self.backup_access(&target)?;
        let repo = Repo::new(target, access, self.backup_dir().join("cache"), report);
        let pw_file = self.backup_password_file();
        let password = match crate::notify::read_secret(&pw_file) {
            Ok(p) => p,
            Err(e) if !pw_file.exists() => {
                return Err(Error::bad_input(format!(
                    "the backup password file {} does not exist",
                    pw_file.display()
                ))
                .hint(format!(
                    "`ilot backup init` makes a repository and its password; for an existing repository, write its password there (chmod 600) ({})",
                    e.message
                )))
            }
            Err(e) => return Err(e),
        };
        Ok((Arc::new(repo), password))
    }

    /// What reaching the repository takes: ssh's key, pinned host key and control socket
    /// directory; S3's region and access key (read from its 0600 file).
    fn backup_access(&self, target: &Target) -> Result<Access> {
        let b = &self.config.backup;
        let ssh_dir = self.backup_dir().join("ssh");
        let mut known_hosts = None;
        if let Target::Sftp { host, port, .. } = target {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&ssh_dir)
                .map_err(|e| Error::failed(format!("cannot create {}: {e}", ssh_dir.display())))?;
            if let Some(key) = &b.sftp_host_key {
                // ssh's known_hosts form: "[host]:port" when the port is not 22.
                let pattern = match port {
                    Some(p) if *p != 22 => format!("[{host}]:{p}"),
                    _ => host.clone(),
                };
                let file = ssh_dir.join("known_hosts");
                write_private(&file, format!("{pattern} {}\n", key.trim()).as_bytes())?;
                known_hosts = Some(file);
            }
        }
        let mut s3_credentials = None;
        if let Target::S3 { .. } = target {
            let file = b
                .s3_credentials_file
                .clone()
                .unwrap_or_else(|| self.backup_dir().join("s3-credentials"));
            if !file.exists() {
                return Err(Error::bad_input(format!(
                    "the S3 repository's access key file {} does not exist",
                    file.display()
                ))
                .hint(format!("write AWS_ACCESS_KEY_ID=... and AWS_SECRET_ACCESS_KEY=... lines to it, readable by root only: install -m 600 /dev/stdin {}", file.display())));
            }
            let text = crate::notify::read_secret(&file)?;
            let creds = S3Credentials::parse(&text).map_err(|e| {
                Error::bad_input(format!("{}: {e}", file.display()))
                    .hint("it holds two lines, AWS_ACCESS_KEY_ID=... and AWS_SECRET_ACCESS_KEY=...")
            })?;
            s3_credentials = Some(creds);
        }
        Ok(Access {
            sftp: SftpAccess {
                key: b.sftp_key.clone(),
                known_hosts,
                control_dir: ssh_dir,
            },
            s3_region: b.s3_region.clone(),
            s3_credentials,
        })
    }

    /// `ilot backup init`: makes the repository, and its password when there is none yet
    /// (shown once, for safekeeping away from this machine).
    pub(super) async fn backup_init(&self, reveal: bool, progress: &Progress<'_>) -> Result<Value> {
        let pw_file = self.backup_password_file();
        let mut made_password = None;
        if !pw_file.exists() {
            let dir = pw_file.parent().unwrap_or(Path::new("/"));
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| Error::failed(format!("cannot create {}: {e}", dir.display())))?;
            let password = crate::state::random_token(32);
            write_private(&pw_file, password.as_bytes())?;
            made_password = Some(password);
        }
        let (repo, password) = self.backup_repo(progress)?;
        let r = repo.clone();
        let exists = blocking(move || r.exists()).await?;
        if exists {
            // Opening it proves the password.
            let (r, pw) = (repo.clone(), password.clone());
            blocking(move || r.open(&pw).map(|_| ())).await?;
            return Ok(json!({
                "repository": repo.location,
                "created": false,
                "message": format!("{} is already a backup repository, and the password opens it", repo.location),
            }));
        }
        progress.step(format!("making the backup repository {}", repo.location));
        let (r, pw) = (repo.clone(), password.clone());
        blocking(move || r.init(&pw)).await?;
        self.bus.publish(
            "backup-repository-created",
            None,
            format!("backup repository {} created", repo.location),
        );
        let mut reply = json!({
            "repository": repo.location,
            "created": true,
            "password_file": pw_file,
        });
        if let Some(p) = made_password.filter(|_| reveal) {
            reply["password"] = json!(p);
        }
        Ok(reply)
    }

    /// `ilot backup run [INSTANCE]`: a snapshot of each instance (or one), then the retention.
    pub(super) async fn backup_run(
        &self,
        instance: Option<String>,
        progress: &Progress<'_>,
    ) -> Result<Value> {
        let (repo, password) = self.backup_repo(progress)?;
        let instances = match &instance {
            Some(n) => vec![self.instance(n)?],
            None => self.instances_snapshot(),
        };
        let mut made = Vec::new();
        let mut errors = Vec::new();
        for inst in &instances {
            progress.step(format!("backing up {}", inst.name));
            match self.backup_instance(&repo, &password, inst, progress).await {
                Ok(s) => {
                    self.bus.publish(
                        "backup-done",
                        Some(&inst.name),
                        format!(
                            "snapshot {} of {} ({} bytes, {} new)",
                            s.id, inst.name, s.bytes, s.added
                        ),
                    );
                    made.push(s);
                }
                Err(e) => {
                    self.bus
                        .publish("backup-failed", Some(&inst.name), e.message.clone());
                    errors.push(format!("{}: {}", inst.name, e.message));
                }
            }
        }
        // With every instance, ilot itself: its config and the keys it made (certificates and
        // their ACME account, DKIM keys), for a recovery on a new machine.
        if instance.is_none() {
            let state = &self.config.daemon.state_dir;
            let paths: Vec<PathBuf> = self
                .config_path
                .iter()
                .cloned()
                .chain([state.join("certs"), state.join("dkim")])
                .filter(|p| p.exists())
                .collect();
            if !paths.is_empty() {
                progress.step("backing up ilot's config and keys");
                let (r, pw) = (repo.clone(), password.clone());
                match blocking(move || r.backup(&pw, &paths, "", "ilot")).await {
                    Ok(s) => made.push(s),
                    Err(e) => {
                        self.bus.publish("backup-failed", None, e.message.clone());
                        errors.push(format!("ilot's config and keys: {}", e.message));
                    }
                }
            }
        }
        let b = &self.config.backup;
        let keep = Keep {
            last: b.keep_last,
            daily: b.keep_daily,
            weekly: b.keep_weekly,
            monthly: b.keep_monthly,
        };
        // After a failure, no retention: the snapshots it would thin out may be the newest
        // good ones.
        if !errors.is_empty() {
            return Err(Error::failed(format!(
                "backup failed for {}",
                errors.join("; ")
            ))
            .hint("the earlier snapshots are intact (no retention ran); see `ilot app logs INSTANCE` and run `ilot backup run` again"));
        }
        progress.step("applying the retention");
        let (r, pw) = (repo.clone(), password.clone());
        let forgotten = blocking(move || r.forget(&pw, keep)).await?;
        Ok(json!({ "snapshots": made, "forgotten": forgotten }))
    }

    async fn backup_instance(
        &self,
        repo: &Arc<Repo>,
        password: &str,
        inst: &Instance,
        progress: &Progress<'_>,
    ) -> Result<crate::backup::Snapshot> {
        let engine = self.engine()?;
        let staging = self.backup_dir().join("staging").join(&inst.name);
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(staging.join("dumps"))
            .map_err(|e| Error::failed(format!("cannot create {}: {e}", staging.display())))?;
        let spec = inst.manifest.needs.backup.clone().unwrap_or_default();
        // Quiesced (e.g. maintenance mode) from before the dumps until the files are read, so
        // the database and the files are of one moment; resumed whatever happens.
        let mut quiesced = Vec::new();
        let mut result = async {
            for q in &spec.quiesce {
                progress.step(format!("quiescing {} ({})", inst.name, q.service));
                run_in(engine, &inst.name, &q.service, &q.cmd, "quiesce").await?;
                quiesced.push(q);
            }
            self.backup_instance_files(repo, password, inst, &spec, &staging, progress)
                .await
        }
        .await;
        for q in quiesced.into_iter().rev() {
            progress.step(format!("resuming {} ({})", inst.name, q.service));
            if let Err(e) = run_in(engine, &inst.name, &q.service, &q.resume, "resume").await {
                tracing::error!("backup: {} did not resume: {}", inst.name, e.message);
                if result.is_ok() {
                    result = Err(Error::failed(format!(
                        "{} was backed up but did not resume: {}",
                        inst.name, e.message
                    ))
                    .hint(format!(
                        "run its resume command by hand: docker exec {} {}",
                        plan::container_name(&inst.name, &q.service),
                        q.resume.join(" ")
                    )));
                }
            }
        }
        let _ = std::fs::remove_dir_all(&staging);
        result
    }

    /// The dumps, then the volumes read with their writers paused, into one snapshot.
    async fn backup_instance_files(
        &self,
        repo: &Arc<Repo>,
        password: &str,
        inst: &Instance,
        spec: &crate::catalog::Backup,
        staging: &Path,
        progress: &Progress<'_>,
    ) -> Result<crate::backup::Snapshot> {
        let engine = self.engine()?;
        let mut dumps = Vec::new();
        for d in &spec.dump {
            let container = plan::container_name(&inst.name, &d.service);
            progress.step(format!(
                "dumping the database of {} ({})",
                inst.name, d.service
            ));
            let file = staging.join("dumps").join(&d.file);
            let (code, err) = engine
                .exec_files(&container, &d.cmd, None, Some(&file))
                .await?;
            if code != 0 {
                return Err(Error::failed(format!(
                    "the dump in {} exited with {code}: {}",
                    d.service,
                    err.lines().last().unwrap_or_default()
                )));
            }
            dumps.push(d.file.clone());
        }
        // The volumes to keep: the spec's, else every volume not marked backup = false.
        let names: Vec<String> = if spec.volumes.is_empty() {
            inst.manifest
                .volumes
                .iter()
                .filter(|(_, v)| v.backup)
                .map(|(n, _)| n.clone())
                .collect()
        } else {
            spec.volumes.clone()
        };
        let mut volumes = BTreeMap::new();
        let mut owners = BTreeMap::new();
        for v in &names {
            let mount = engine
                .volume_mountpoint(&plan::volume_name(&inst.name, v))
                .await?;
            if let Ok(m) = std::fs::metadata(&mount) {
                use std::os::unix::fs::MetadataExt;
                owners.insert(v.clone(), (m.uid(), m.gid(), m.mode() & 0o7777));
            }
            volumes.insert(v.clone(), mount);
        }
        let saved = Saved {
            instance: inst.clone(),
            volumes: volumes.clone(),
            dumps,
            owners,
        };
        let text = serde_json::to_vec_pretty(&saved)
            .map_err(|e| Error::failed(format!("cannot serialize {}: {e}", inst.name)))?;
        write_private(&staging.join("instance.json"), &text)?;

        // Freeze the services that write the volumes while they are read: their files are
        // then consistent with each other. Only for that long; thawed whatever happens.
        let frozen: Vec<String> = inst
            .manifest
            .services
            .iter()
            .filter(|(_, s)| s.mounts.keys().any(|m| volumes.contains_key(m)))
            .map(|(n, _)| plan::container_name(&inst.name, n))
            .collect();
        for c in &frozen {
            engine.set_paused(c, true).await?;
        }
        let mut paths = vec![staging.to_path_buf()];
        paths.extend(volumes.values().cloned());
        let (r, pw, name, app) = (
            repo.clone(),
            password.to_string(),
            inst.name.clone(),
            inst.app.clone(),
        );
        let result = blocking(move || r.backup(&pw, &paths, &name, &app)).await;
        for c in &frozen {
            if let Err(e) = engine.set_paused(c, false).await {
                tracing::error!("backup: cannot thaw {c}: {}", e.message);
            }
        }
        result
    }

    /// The daily run at `[backup] at` (local time). The day of the last scheduled run is kept
    /// in the store, so a machine that was off (or a daemon that was down) at that time runs
    /// it when it is next up; a failed run is tried again an hour later.
    pub(super) fn spawn_backup_schedule(self: &Arc<Self>) {
        let b = &self.config.backup;
        let (Some(at), Some(_)) = (
            b.at.as_deref().and_then(crate::config::parse_hhmm),
            &b.repository,
        ) else {
            return;
        };
        let d = self.clone();
        tokio::spawn(async move {
            // After start-up's recovery (which holds the operation lock first).
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            let mut retry_at = std::time::Instant::now();
            loop {
                let (day, minute) = local_day_and_minute();
                let last = d.store.meta("backup:scheduled").ok().flatten();
                if minute >= at
                    && last.as_deref() != Some(day.as_str())
                    && std::time::Instant::now() >= retry_at
                {
                    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
                    let result = {
                        let _lock = d.op_lock.lock().await;
                        d.backup_run(None, &Progress { tx: &tx }).await
                    };
                    match result {
                        Ok(_) => {
                            if let Err(e) = d.store.write(|w| w.put_meta("backup:scheduled", &day))
                            {
                                tracing::error!("backup: cannot record the scheduled run: {e}");
                            }
                            d.drill_if_due().await;
                        }
                        Err(e) => {
                            tracing::error!("scheduled backup failed: {}", e.message);
                            d.bus.publish(
                                "backup-failed",
                                None,
                                format!("scheduled backup: {}", e.message),
                            );
                            // Not set up yet (no password, say): look again in a minute.
                            let wait = if e.kind == crate::error::ErrorKind::BadInput {
                                60
                            } else {
                                3600
                            };
                            retry_at =
                                std::time::Instant::now() + std::time::Duration::from_secs(wait);
                        }
                    }
                }
                tokio::time::sleep(std::time::Duration::from_secs(20)).await;
            }
        });
    }

    /// Unpauses every container of ours that is paused: only a backup pauses them, and one
    /// that was killed mid-way left them so.
    pub(super) async fn thaw_paused(&self) -> Result<()> {
        let engine = self.engine()?;
        for c in engine.list_containers(None).await? {
            if c.state == "paused" {
                tracing::warn!(
                    "{} was left paused (a backup interrupted): unpausing it",
                    c.name
                );
                engine.set_paused(&c.name, false).await?;
            }
        }
        Ok(())
    }

    /// `ilot backup list`.
    pub(super) async fn backup_list(&self, progress: &Progress<'_>) -> Result<Value> {
        let (repo, password) = self.backup_repo(progress)?;
        let r = repo.clone();
        let snaps = blocking(move || r.snapshots(&password)).await?;
        Ok(json!({ "repository": repo.location, "snapshots": snaps }))
    }

    /// `ilot backup check [--read-data]`.
    pub(super) async fn backup_check(
        &self,
        read_data: bool,
        progress: &Progress<'_>,
    ) -> Result<Value> {
        let (repo, password) = self.backup_repo(progress)?;
        let r = repo.clone();
        let findings = blocking(move || r.check(&password, read_data)).await?;
        let ok = findings.iter().all(|f| !f.starts_with("Error"));
        if !ok {
            self.bus
                .publish("backup-check-failed", None, findings.join("; "));
        }
        Ok(
            json!({ "repository": repo.location, "ok": ok, "read_data": read_data, "findings": findings }),
        )
    }

    /// `ilot backup restore SNAPSHOT [--instance NAME] [--replace | --as NEW [--domain D]]`:
    /// the snapshot chosen (`latest` of an instance, or an id, checked against --instance),
    /// then restored beside what exists, or with --replace in its place: the instance as it
    /// is now backed up first (nothing is lost), removed with its data, then restored.
    pub(super) async fn backup_restore_request(
        self: &Arc<Self>,
        snapshot: &str,
        instance: Option<&str>,
        replace: bool,
        as_name: Option<String>,
        domain: Option<String>,
        progress: &Progress<'_>,
    ) -> Result<Value> {
        if let Some(i) = instance {
            crate::names::check_instance_name(i)?;
        }
        let (repo, password) = self.backup_repo(progress)?;
        let (r, pw) = (repo.clone(), password.clone());
        let snaps = blocking(move || r.snapshots(&pw)).await?;
        let of_instance = |s: &&crate::backup::Snapshot| {
            instance.is_none_or(|i| s.instance == i) && !s.instance.is_empty()
        };
        let snap = if snapshot == "latest" {
            let Some(i) = instance else {
                return Err(Error::bad_input("`latest` needs --instance NAME")
                    .hint("e.g. ilot backup restore latest --instance nextcloud"));
            };
            snaps
                .iter()
                .filter(of_instance)
                .max_by(|a, b| a.time.cmp(&b.time))
                .ok_or_else(|| {
                    Error::not_found(format!("no snapshot of {i:?} in the repository"))
                        .hint("see `ilot backup list`")
                })?
                .clone()
        } else {
            let matching: Vec<_> = snaps
                .iter()
                .filter(|s| s.id.starts_with(snapshot))
                .collect();
            match matching.as_slice() {
                [one] if of_instance(one) => (*one).clone(),
                [one] if one.instance.is_empty() => {
                    return Err(Error::bad_input(format!(
                        "snapshot {} holds ilot's own config and keys, not an instance",
                        one.id
                    ))
                    .hint("`ilot backup recover` brings those back on a new machine"))
                }
                [one] => {
                    return Err(Error::bad_input(format!(
                        "snapshot {} is of {:?}, not of {:?}",
                        one.id,
                        one.instance,
                        instance.unwrap_or_default()
                    ))
                    .hint("see `ilot backup list`"))
                }
                [] => {
                    return Err(Error::not_found(format!(
                        "no snapshot {snapshot:?} in the repository"
                    ))
                    .hint("see `ilot backup list`"))
                }
                _ => {
                    return Err(
                        Error::bad_input(format!("{snapshot:?} names several snapshots"))
                            .hint("give more of its id (see `ilot backup list`)"),
                    )
                }
            }
        };
        if !replace {
            return self
                .backup_restore(&snap, as_name, domain, false, progress)
                .await;
        }
        let name = snap.instance.clone();
        let current = self.instance(&name).map_err(|e| {
            e.hint(format!(
                "--replace restores in place of an existing {name}; without it the snapshot is restored as a new instance"
            ))
        })?;
        progress.step(format!(
            "backing up {name} as it is now, before replacing it"
        ));
        let safety = self
            .backup_instance(&repo, &password, &current, progress)
            .await
            .map_err(|e| {
                Error::failed(format!(
                    "{name} was not replaced: the backup of its current state failed: {}",
                    e.message
                ))
            })?;
        progress.step(format!("removing {name} and its data"));
        Box::pin(self.remove(
            crate::api::RemoveParams {
                name: name.clone(),
                purge: true,
                dry_run: false,
            },
            progress,
        ))
        .await?;
        let restored = Box::pin(self.backup_restore(&snap, None, None, false, progress))
            .await
            .map_err(|e| {
                e.hint(format!(
                    "{name} was removed before this restore; its state just before is snapshot {}: `ilot backup restore {}` brings that back",
                    safety.id, safety.id
                ))
            })?;
        let mut reply = restored;
        reply["replaced"] = json!(true);
        reply["before"] = json!(safety.id);
        Ok(reply)
    }

    /// A snapshot (already found in the repository's list) restored as a new instance.
    pub(super) async fn backup_restore(
        self: &Arc<Self>,
        snap: &crate::backup::Snapshot,
        as_name: Option<String>,
        domain: Option<String>,
        drill: bool,
        progress: &Progress<'_>,
    ) -> Result<Value> {
        let (repo, password) = self.backup_repo(progress)?;
        // Where the staging directory was on the machine that made the snapshot (another
        // machine's state directory, after a recovery).
        let suffix = format!("/backup/staging/{}", snap.instance);
        let staging = snap
            .paths
            .iter()
            .find(|p| p.ends_with(&suffix))
            .map(PathBuf::from)
            .unwrap_or_else(|| self.backup_dir().join("staging").join(&snap.instance));
        let (r, pw, id, f) = (
            repo.clone(),
            password.clone(),
            snap.id.clone(),
            staging.join("instance.json"),
        );
        let text = blocking(move || r.read_file(&pw, &id, &f)).await?;
        let saved: Saved = serde_json::from_slice(&text).map_err(|e| {
            Error::failed(format!(
                "snapshot {} holds no readable instance state: {e}",
                snap.id
            ))
        })?;
        let name = as_name.unwrap_or_else(|| saved.instance.name.clone());
        crate::names::check_instance_name(&name)?;
        if self
            .instances
            .read()
            .expect("instances lock")
            .contains_key(&name)
        {
            return Err(Error::conflict(format!(
                "an instance named {name:?} exists: a restore never overwrites one"
            ))
            .hint(format!("restore beside it with --as NEW_NAME, or in its place with --replace (`ilot backup restore SNAPSHOT --replace`: {name} as it is now is backed up first)")));
        }
        if self.store.kept(&name)?.is_some() {
            return Err(Error::conflict(format!(
                "the data of a removed instance named {name:?} is kept: a restore would overwrite it"
            ))
            .hint(format!("restore with --as NEW_NAME, or delete that data with `ilot app remove {name} --purge`")));
        }
        let inst = &saved.instance;
        // What the install would refuse, refused before anything is made.
        if let Some(d) = &domain {
            crate::names::check_domain(d)?;
            self.check_domain_free(d)?;
        } else if inst.manifest.needs.domain && name != inst.name && !drill {
            return Err(Error::bad_input(format!(
                "{} must be served at a domain of its own, and {:?} keeps {}",
                inst.app,
                inst.name,
                inst.domain.as_deref().unwrap_or("its own")
            ))
            .hint("add --domain NEW_DOMAIN"));
        }
        let engine = self.engine()?;
        // The data first: volumes made and filled before any container uses them. A drill
        // compares every restored file with the repository's copy, before the app can touch it.
        let dumps_dir = self.backup_dir().join("restore").join(&name);
        let _ = std::fs::remove_dir_all(&dumps_dir);
        let filled: Result<usize> = async {
            let mut verified = 0usize;
            for (vol, from) in &saved.volumes {
                let volume = plan::volume_name(&name, vol);
                engine
                    .apply(&Action::CreateVolume {
                        name: volume.clone(),
                        instance: name.clone(),
                    })
                    .await?;
                let to = engine.volume_mountpoint(&volume).await?;
                progress.step(format!("restoring volume {vol} into {volume}"));
                let (r, pw, id, from, to2) = (
                    repo.clone(),
                    password.clone(),
                    snap.id.clone(),
                    from.clone(),
                    to.clone(),
                );
                blocking(move || r.restore_tree(&pw, &id, &from, &to2)).await?;
                if let Some((uid, gid, mode)) = saved.owners.get(vol) {
                    std::os::unix::fs::chown(&to, Some(*uid), Some(*gid))
                        .and_then(|_| {
                            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(*mode))
                        })
                        .map_err(|e| {
                            Error::failed(format!("cannot set the owner of {}: {e}", to.display()))
                        })?;
                }
                if drill {
                    let (r, pw, id, from, to) = (
                        repo.clone(),
                        password.clone(),
                        snap.id.clone(),
                        saved.volumes[vol].clone(),
                        to.clone(),
                    );
                    let want = blocking(move || r.file_hashes(&pw, &id, &from)).await?;
                    let got = blocking(move || crate::backup::tree_hashes(&to)).await?;
                    let wrong: Vec<String> = want
                        .iter()
                        .filter(|(path, sum)| got.get(*path) != Some(*sum))
                        .map(|(path, _)| path.display().to_string())
                        .collect();
                    if !wrong.is_empty() {
                        return Err(Error::failed(format!(
                            "volume {vol}: {} of {} restored files differ from the snapshot ({})",
                            wrong.len(),
                            want.len(),
                            wrong.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
                        )));
                    }
                    verified += want.len();
                }
            }
            if !saved.dumps.is_empty() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dumps_dir)
                    .map_err(|e| {
                        Error::failed(format!("cannot create {}: {e}", dumps_dir.display()))
                    })?;
                let (r, pw, id, from, to) = (
                    repo.clone(),
                    password.clone(),
                    snap.id.clone(),
                    staging.join("dumps"),
                    dumps_dir.clone(),
                );
                blocking(move || r.restore_tree(&pw, &id, &from, &to)).await?;
            }
            Ok(verified)
        }
        .await;
        // Nothing half-restored stays behind: the volumes made here are new (the name was free).
        let verified = match filled {
            Ok(v) => v,
            Err(e) => {
                for vol in saved.volumes.keys() {
                    let volume = plan::volume_name(&name, vol);
                    if let Err(e) = engine
                        .apply(&Action::RemoveVolume {
                            name: volume.clone(),
                        })
                        .await
                    {
                        tracing::warn!("restore: removing {volume}: {}", e.message);
                    }
                }
                let _ = std::fs::remove_dir_all(&dumps_dir);
                return Err(e);
            }
        };
        // The instance, as it was: its settings, its secrets (the data expects them), the same
        // images. Its domain only when restored under its own name and the domain is free.
        self.store.write(|w| {
            w.put_kept(
                &name,
                &Kept {
                    app: inst.app.clone(),
                    secrets: inst.secrets.clone(),
                    volumes: saved
                        .volumes
                        .keys()
                        .map(|v| plan::volume_name(&name, v))
                        .collect(),
                    removed_at: now(),
                    mail: inst.mail.clone(),
                },
            )
        })?;
        let domain = domain.or_else(|| {
            inst.domain
                .clone()
                .filter(|d| name == inst.name && self.check_domain_free(d).is_ok())
        });
        let images = inst
            .images
            .iter()
            .filter(|(service, img)| {
                inst.manifest
                    .services
                    .get(*service)
                    .is_some_and(|s| s.image != img.reference)
            })
            .map(|(service, img)| format!("{service}={}", img.reference))
            .collect();
        let installed = self
            .install(
                crate::api::InstallParams {
                    app: inst.app.clone(),
                    name: Some(name.clone()),
                    domain,
                    settings: inst.settings.clone(),
                    images,
                    force: true,
                    reveal: false,
                    drill,
                    dry_run: false,
                },
                progress,
            )
            .await?;
        // The databases, loaded back; then the app restarted, to see them.
        let spec = inst.manifest.needs.backup.clone().unwrap_or_default();
        for d in spec.dump.iter().filter(|d| saved.dumps.contains(&d.file)) {
            progress.step(format!("loading the database dump into {}", d.service));
            let container = plan::container_name(&name, &d.service);
            let file = dumps_dir.join(&d.file);
            let (code, err) = engine
                .exec_files(&container, &d.restore, Some(&file), None)
                .await?;
            if code != 0 {
                return Err(Error::failed(format!(
                    "loading the dump into {} exited with {code}: {}",
                    d.service,
                    err.lines().last().unwrap_or_default()
                ))
                .hint(format!(
                    "the instance {name} is installed with its files; its database is not restored"
                )));
            }
        }
        let _ = std::fs::remove_dir_all(&dumps_dir);
        if !saved.dumps.is_empty() {
            self.restart(&name, progress).await?;
        }
        // It was backed up quiesced (in maintenance mode, say): the copy resumes.
        for q in &spec.quiesce {
            progress.step(format!("resuming {name} ({})", q.service));
            run_in(engine, &name, &q.service, &q.resume, "resume")
                .await
                .map_err(|e| {
                    e.hint(format!(
                        "the instance {name} is restored; run its resume command by hand: docker exec {} {}",
                        plan::container_name(&name, &q.service),
                        q.resume.join(" ")
                    ))
                })?;
        }
        self.bus.publish(
            "restored",
            Some(&name),
            format!(
                "{name} restored from snapshot {} of {}",
                snap.id, snap.instance
            ),
        );
        Ok(json!({
            "instance": name,
            "snapshot": snap.id,
            "from": snap.instance,
            "volumes": saved.volumes.keys().collect::<Vec<_>>(),
            "dumps": saved.dumps,
            "verified_files": verified,
            "url": installed["url"],
        }))
    }

    /// `ilot backup drill [INSTANCE]`: the latest snapshot of each instance (or one) restored
    /// as a throwaway instance, every file compared with the repository's copy, the app
    /// started and health-checked, then removed with its data. A failure is a `drill-failed`
    /// event (an alert).
    pub(super) async fn backup_drill(
        self: &Arc<Self>,
        instance: Option<String>,
        progress: &Progress<'_>,
    ) -> Result<Value> {
        let (repo, password) = self.backup_repo(progress)?;
        let r = repo.clone();
        let snaps = blocking(move || r.snapshots(&password)).await?;
        // Oldest first: the last one per instance is its latest (ilot's own is no instance).
        let mut latest: BTreeMap<String, crate::backup::Snapshot> = BTreeMap::new();
        for s in snaps.into_iter().filter(|s| !s.instance.is_empty()) {
            latest.insert(s.instance.clone(), s);
        }
        if let Some(i) = &instance {
            latest.retain(|k, _| k == i);
            if latest.is_empty() {
                return Err(
                    Error::not_found(format!("no snapshot of {i:?} to drill")).hint(
                        "`ilot backup run INSTANCE` first; `ilot backup list` shows what there is",
                    ),
                );
            }
        }
        let mut reports = Vec::new();
        let mut failures = Vec::new();
        for (of, snap) in latest {
            let drill = format!("drill{}", crate::state::random_token(6).to_lowercase());
            progress.step(format!(
                "drill: restoring snapshot {} of {of} as {drill}",
                snap.id
            ));
            let started = std::time::Instant::now();
            let result =
                Box::pin(self.backup_restore(&snap, Some(drill.clone()), None, true, progress))
                    .await;
            // Whatever happened, the throwaway instance and its data go.
            let removal = crate::api::RemoveParams {
                name: drill.clone(),
                purge: true,
                dry_run: false,
            };
            if let Err(e) = self.remove(removal, progress).await {
                tracing::warn!("drill: removing {drill}: {}", e.message);
            }
            match result {
                Ok(v) => {
                    self.bus.publish(
                        "drill-done",
                        Some(&of),
                        format!(
                            "snapshot {} restored, {} files verified, healthy",
                            snap.id, v["verified_files"]
                        ),
                    );
                    reports.push(json!({
                        "instance": of, "snapshot": snap.id, "ok": true,
                        "verified_files": v["verified_files"], "dumps": v["dumps"],
                        "seconds": started.elapsed().as_secs_f64(),
                    }));
                }
                Err(e) => {
                    self.bus.publish(
                        "drill-failed",
                        Some(&of),
                        format!("snapshot {}: {}", snap.id, e.message),
                    );
                    failures.push(format!("{of} (snapshot {}): {}", snap.id, e.message));
                }
            }
        }
        if !failures.is_empty() {
            return Err(
                Error::failed(format!("restore drill failed: {}", failures.join("; "))).hint(
                    "the snapshot may not restore: `ilot backup check --read-data`, then back up again",
                ),
            );
        }
        Ok(json!({ "drills": reports }))
    }

    /// After a scheduled run: a restore drill of every instance every `[backup] drill_every`.
    async fn drill_if_due(self: &Arc<Self>) {
        let Some(every) = self.config.backup.drill_every else {
            return;
        };
        let last: u64 = self
            .store
            .meta("backup:drilled")
            .ok()
            .flatten()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if now().saturating_sub(last) < every.as_secs() {
            return;
        }
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let result = {
            let _lock = self.op_lock.lock().await;
            self.backup_drill(None, &Progress { tx: &tx }).await
        };
        if let Err(e) = &result {
            tracing::error!("scheduled restore drill failed: {}", e.message);
        }
        if let Err(e) = self
            .store
            .write(|w| w.put_meta("backup:drilled", &now().to_string()))
        {
            tracing::error!("backup: cannot record the drill: {e}");
        }
    }
}

/// Today in the host's local time ("2026-12-01"), and the minute of the day.
fn local_day_and_minute() -> (String, u32) {
    let t = now() as libc::time_t;
    // SAFETY: localtime_r fills a struct we own.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::localtime_r(&t, &mut tm) };
    (
        format!(
            "{:04}-{:02}-{:02}",
            tm.tm_year + 1900,
            tm.tm_mon + 1,
            tm.tm_mday
        ),
        (tm.tm_hour * 60 + tm.tm_min) as u32,
    )
}

/// Runs a blocking repository call on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::failed(format!("backup task failed: {e}")))?
}

/// Writes a file only root can read (created 0600, so never readable in between).
/// Runs one of the manifest's backup commands in a service of an instance; a non-zero exit is
/// an error with the command's last line.
async fn run_in(
    engine: &crate::runtime::Engine,
    instance: &str,
    service: &str,
    cmd: &[String],
    what: &str,
) -> Result<()> {
    let container = plan::container_name(instance, service);
    let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let (code, out) = engine.exec_output(&container, &args, 64 * 1024).await?;
    if code != 0 {
        return Err(Error::failed(format!(
            "the {what} command in {service} exited with {code}: {}",
            out.lines().last().unwrap_or_default()
        )));
    }
    Ok(())
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(data).map(|_| f))
        .map_err(|e| Error::failed(format!("cannot write {}: {e}", path.display())))?;
    let _ = f.flush();
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    Ok(())
}

impl Daemon {
    /// `ilot backup recover`: a machine brought back from its repository. ilot's keys first
    /// (certificates, DKIM keys: only where this machine has none), the old config beside the
    /// state (never over the running one), then the latest snapshot of every instance under
    /// its own name; instances that exist are left alone.
    pub(super) async fn backup_recover(self: &Arc<Self>, progress: &Progress<'_>) -> Result<Value> {
        let (repo, password) = self.backup_repo(progress)?;
        let (r, pw) = (repo.clone(), password.clone());
        let snaps = blocking(move || r.snapshots(&pw)).await?;
        let mut latest: BTreeMap<String, crate::backup::Snapshot> = BTreeMap::new();
        for s in snaps {
            latest.insert(s.instance.clone(), s);
        }
        if latest.is_empty() {
            return Err(
                Error::not_found(format!("no snapshot in {}", repo.location)).hint(
                    "check [backup] repository: it must be the repository the old machine wrote",
                ),
            );
        }
        let state = self.config.daemon.state_dir.clone();
        let mut keys = Vec::new();
        let mut config = None;
        if let Some(host) = latest.remove("") {
            for p in &host.paths {
                let from = PathBuf::from(p);
                let name = from
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                let to = match name.as_str() {
                    "certs" | "dkim" => state.join(&name),
                    _ => self.backup_dir().join("recovered").join(&name),
                };
                let empty = std::fs::read_dir(&to).map_or(true, |mut d| d.next().is_none());
                if to.is_dir() && !empty {
                    continue; // this machine has its own: never overwritten
                }
                if let Some(parent) = to.parent() {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(parent)
                        .map_err(|e| {
                            Error::failed(format!("cannot create {}: {e}", parent.display()))
                        })?;
                }
                progress.step(format!("restoring {p}"));
                let (r, pw, id, f, t) = (
                    repo.clone(),
                    password.clone(),
                    host.id.clone(),
                    from.clone(),
                    to.clone(),
                );
                blocking(move || r.restore_tree(&pw, &id, &f, &t)).await?;
                if matches!(name.as_str(), "certs" | "dkim") {
                    keys.push(to.display().to_string());
                } else {
                    let _ = std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600));
                    config = Some(to.display().to_string());
                }
            }
        }
        let mut restored = Vec::new();
        let mut skipped = Vec::new();
        let mut errors = Vec::new();
        for (name, snap) in latest {
            if self
                .instances
                .read()
                .expect("instances lock")
                .contains_key(&name)
            {
                skipped.push(name);
                continue;
            }
            progress.step(format!("restoring {name} from snapshot {}", snap.id));
            match Box::pin(self.backup_restore(&snap, None, None, false, progress)).await {
                Ok(_) => restored.push(json!({ "instance": name, "snapshot": snap.id })),
                Err(e) => errors.push(format!("{name}: {}", e.message)),
            }
        }
        if !errors.is_empty() {
            return Err(Error::failed(format!("recovery incomplete: {}", errors.join("; ")))
                .hint("the instances listed by `ilot app list` are back; fix the others' cause and run `ilot backup recover` again"));
        }
        self.bus.publish(
            "recovered",
            None,
            format!(
                "{} instance(s) recovered from {}",
                restored.len(),
                repo.location
            ),
        );
        Ok(json!({ "restored": restored, "skipped": skipped, "keys": keys, "config": config }))
    }
}
