//! The container runtime: the Docker engine, through its API (bollard). This module turns the
//! planner's actions into API calls and reads back what the engine holds. It only ever lists,
//! changes or removes objects labelled with this daemon's `ilot.owner`: anything else on the
//! engine is invisible to it, and a name clash with such an object is refused, not resolved.

use crate::error::{Error, Result};
use crate::plan::{self, Action, ContainerSpec, ObservedContainer, ObservedInstance};
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HealthConfig, HostConfig, Mount, MountType,
    MountVolumeOptions, NetworkCreateRequest, NetworkingConfig, PortBinding, RestartPolicy,
    RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters as q;
use bollard::Docker;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

pub mod observer;

#[derive(Clone)]
pub struct Engine {
    pub docker: Docker,
    pub owner: String,
}

/// Progress of a long step (image pull, snapshot), reported to the CLI.
pub type ProgressFn<'a> = &'a (dyn Fn(String, Option<(u64, u64)>) + Send + Sync);

fn engine_err(what: &str, e: bollard::errors::Error) -> Error {
    use bollard::errors::Error as B;
    match e {
        B::DockerResponseServerError {
            status_code,
            message,
        } => Error::failed(format!(
            "Docker engine refused to {what}: {message} (HTTP {status_code})"
        )),
        B::HyperResponseError { .. } | B::IOError { .. } | B::RequestTimeoutError => {
            Error::unavailable(format!(
                "Docker engine not reachable while trying to {what}: {e}"
            ))
            .hint("start it (systemctl start docker, or dockerd) and retry")
        }
        e => Error::failed(format!("Docker engine: cannot {what}: {e}")),
    }
}

fn is_status(e: &bollard::errors::Error, code: u16) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code, .. } if *status_code == code)
}

impl Engine {
    /// Connects and negotiates the API version (Debian's engine speaks an older one).
    pub async fn connect(address: &str, owner: &str) -> Result<Engine> {
        let socket = address.trim_start_matches("unix://");
        let docker = Docker::connect_with_socket(socket, 120, bollard::API_DEFAULT_VERSION)
            .map_err(|e| engine_err("connect", e))?
            .negotiate_version()
            .await
            .map_err(|e| {
                Error::unavailable(format!("Docker engine not reachable at {address}: {e}"))
                    .hint("start it (systemctl start docker, or dockerd), or set [daemon] docker in the config")
            })?;
        Ok(Engine {
            docker,
            owner: owner.to_string(),
        })
    }

    /// Every Docker network's subnets (all of them, not only ilot's): the guard never bans
    /// an address inside one.
    pub async fn network_subnets(&self) -> Result<Vec<(String, String)>> {
        let nets = self
            .docker
            .list_networks(None::<q::ListNetworksOptions>)
            .await
            .map_err(|e| engine_err("list networks", e))?;
        Ok(nets
            .into_iter()
            .flat_map(|n| {
                let name = n.name.unwrap_or_default();
                n.ipam
                    .and_then(|i| i.config)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(move |c| Some((name.clone(), c.subnet?)))
            })
            .collect())
    }

    pub async fn version(&self) -> Result<String> {
        let v = self
            .docker
            .version()
            .await
            .map_err(|e| engine_err("report its version", e))?;
        Ok(v.version.unwrap_or_default())
    }

    fn labels(&self, instance: &str, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut l = HashMap::from([
            (plan::LABEL_OWNER.to_string(), self.owner.clone()),
            (plan::LABEL_INSTANCE.to_string(), instance.to_string()),
        ]);
        for (k, v) in extra {
            l.insert(k.to_string(), v.to_string());
        }
        l
    }

    fn owner_filter(&self, instance: Option<&str>) -> HashMap<String, Vec<String>> {
        let mut labels = vec![format!("{}={}", plan::LABEL_OWNER, self.owner)];
        if let Some(i) = instance {
            labels.push(format!("{}={}", plan::LABEL_INSTANCE, i));
        }
        HashMap::from([("label".to_string(), labels)])
    }

    /// Every container this daemon owns.
    pub async fn list_containers(&self, instance: Option<&str>) -> Result<Vec<ObservedContainer>> {
        let opts = q::ListContainersOptions {
            all: true,
            filters: Some(self.owner_filter(instance)),
            ..Default::default()
        };
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| engine_err("list containers", e))?;
        Ok(list
            .into_iter()
            .map(|c| {
                let labels = c.labels.unwrap_or_default();
                let status = c.status.unwrap_or_default();
                let health = if status.contains("(healthy)") {
                    Some("healthy")
                } else if status.contains("(unhealthy)") {
                    Some("unhealthy")
                } else if status.contains("health: starting") {
                    Some("starting")
                } else {
                    None
                };
                let ports = c
                    .ports
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|p| {
                        let public = p.public_port?;
                        let ip = p.ip.unwrap_or_default();
                        // The engine lists v4 and v6 bindings; keep the first (v4).
                        Some((
                            p.private_port,
                            if ip.contains(':') {
                                format!("[{ip}]:{public}")
                            } else {
                                format!("{ip}:{public}")
                            },
                        ))
                    })
                    .rev()
                    .collect();
                let instance = labels
                    .get(plan::LABEL_INSTANCE)
                    .cloned()
                    .unwrap_or_default();
                let ip = c
                    .network_settings
                    .and_then(|n| n.networks)
                    .and_then(|mut n| n.remove(&plan::network_name(&instance)))
                    .and_then(|e| e.ip_address)
                    .filter(|ip| !ip.is_empty());
                ObservedContainer {
                    ip,
                    id: c.id.unwrap_or_default(),
                    name: c
                        .names
                        .and_then(|n| n.first().cloned())
                        .unwrap_or_default()
                        .trim_start_matches('/')
                        .to_string(),
                    instance: labels
                        .get(plan::LABEL_INSTANCE)
                        .cloned()
                        .unwrap_or_default(),
                    service: labels.get(plan::LABEL_SERVICE).cloned().unwrap_or_default(),
                    role: labels
                        .get(plan::LABEL_ROLE)
                        .cloned()
                        .unwrap_or_else(|| "app".into()),
                    state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                    health: health.map(String::from),
                    image_id: c.image_id.unwrap_or_default(),
                    spec: labels.get(plan::LABEL_SPEC).cloned().unwrap_or_default(),
                    ports,
                }
            })
            .collect())
    }

    pub async fn observe(&self, instance: &str) -> Result<ObservedInstance> {
        let containers = self.list_containers(Some(instance)).await?;
        let nets = self
            .docker
            .list_networks(Some(q::ListNetworksOptions {
                filters: Some(self.owner_filter(Some(instance))),
            }))
            .await
            .map_err(|e| engine_err("list networks", e))?;
        let vols = self
            .docker
            .list_volumes(Some(q::ListVolumesOptions {
                filters: Some(self.owner_filter(Some(instance))),
            }))
            .await
            .map_err(|e| engine_err("list volumes", e))?;
        let mut networks: Vec<String> = nets.into_iter().filter_map(|n| n.name).collect();
        let mut volumes: Vec<String> = vols
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect();
        networks.sort();
        volumes.sort();
        Ok(ObservedInstance {
            containers,
            networks,
            volumes,
        })
    }

    /// Names of every instance that has objects in the engine (for orphan detection).
    pub async fn instances_present(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .list_containers(None)
            .await?
            .into_iter()
            .map(|c| c.instance)
            .collect();
        let nets = self
            .docker
            .list_networks(Some(q::ListNetworksOptions {
                filters: Some(self.owner_filter(None)),
            }))
            .await
            .map_err(|e| engine_err("list networks", e))?;
        names.extend(
            nets.into_iter()
                .filter_map(|n| n.labels?.get(plan::LABEL_INSTANCE).cloned()),
        );
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Refuses names that are taken by objects ilot does not own (never touch them).
    pub async fn check_names_free(&self, names: &[(&str, String)]) -> Result<()> {
        for (kind, name) in names {
            let labels = match *kind {
                "container" => match self
                    .docker
                    .inspect_container(name, None::<q::InspectContainerOptions>)
                    .await
                {
                    Ok(c) => Some(c.config.and_then(|c| c.labels).unwrap_or_default()),
                    Err(e) if is_status(&e, 404) => None,
                    Err(e) => return Err(engine_err("inspect a container", e)),
                },
                "network" => match self
                    .docker
                    .inspect_network(name, None::<q::InspectNetworkOptions>)
                    .await
                {
                    Ok(n) => Some(n.labels.unwrap_or_default()),
                    Err(e) if is_status(&e, 404) => None,
                    Err(e) => return Err(engine_err("inspect a network", e)),
                },
                _ => match self.docker.inspect_volume(name).await {
                    Ok(v) => Some(v.labels),
                    Err(e) if is_status(&e, 404) => None,
                    Err(e) => return Err(engine_err("inspect a volume", e)),
                },
            };
            if let Some(labels) = labels {
                if labels.get(plan::LABEL_OWNER) != Some(&self.owner) {
                    return Err(Error::conflict(format!(
                        "a {kind} named {name} already exists and was not created by this ilot"
                    ))
                    .hint("ilot never touches objects it does not own: choose another --name, or remove or rename that object yourself"));
                }
            }
        }
        Ok(())
    }

    /// Makes sure the image is present (pulling it if needed, with progress) and returns its ID.
    /// A pinned digest must match the image's repo digest.
    pub async fn ensure_image(
        &self,
        reference: &str,
        digest: Option<&str>,
        progress: ProgressFn<'_>,
    ) -> Result<String> {
        let want = match digest {
            Some(d) => format!(
                "{}@{}",
                reference
                    .rsplit_once(':')
                    .map(|(n, _)| n)
                    .unwrap_or(reference),
                d
            ),
            None => reference.to_string(),
        };
        if let Ok(img) = self.docker.inspect_image(&want).await {
            return Ok(img.id.unwrap_or_default());
        }
        progress(format!("pulling {want}"), None);
        let opts = q::CreateImageOptions {
            from_image: Some(want.clone()),
            ..Default::default()
        };
        let mut stream = self.docker.create_image(Some(opts), None, None);
        let mut layers: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| {
                Error::failed(format!("cannot pull image {want}: {e}"))
                    .hint("check the registry is reachable; for images ilot builds itself run images/build.sh NAME")
            })?;
            if let (Some(id), Some(d)) = (info.id, info.progress_detail) {
                if let (Some(c), Some(t)) = (d.current, d.total) {
                    layers.insert(id, (c.max(0) as u64, t.max(0) as u64));
                    let (c, t) = layers.values().fold((0, 0), |a, v| (a.0 + v.0, a.1 + v.1));
                    progress(format!("pulling {want}"), Some((c, t)));
                }
            }
        }
        let img = self
            .docker
            .inspect_image(&want)
            .await
            .map_err(|e| engine_err("inspect the pulled image", e))?;
        Ok(img.id.unwrap_or_default())
    }

    /// The ID of a local image, or a clear error saying how to get it.
    pub async fn image_id(&self, reference: &str) -> Result<Option<String>> {
        match self.docker.inspect_image(reference).await {
            Ok(img) => Ok(img.id),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(engine_err("inspect an image", e)),
        }
    }

    pub async fn apply(&self, action: &Action) -> Result<()> {
        match action {
            Action::CreateNetwork { name, instance } => {
                let req = NetworkCreateRequest {
                    name: name.clone(),
                    driver: Some("bridge".into()),
                    labels: Some(self.labels(instance, &[])),
                    ..Default::default()
                };
                match self.docker.create_network(req).await {
                    Ok(_) => Ok(()),
                    Err(e) if is_status(&e, 409) => Ok(()),
                    Err(e) => Err(engine_err(&format!("create network {name}"), e)),
                }
            }
            Action::CreateVolume { name, instance } => {
                let req = VolumeCreateRequest {
                    name: Some(name.clone()),
                    labels: Some(self.labels(instance, &[])),
                    ..Default::default()
                };
                // Creating an existing volume is a no-op in the engine: idempotent.
                self.docker
                    .create_volume(req)
                    .await
                    .map_err(|e| engine_err(&format!("create volume {name}"), e))?;
                Ok(())
            }
            Action::CreateContainer { spec } => self.create_container(spec, "app", false).await,
            Action::StartContainer { name, .. } => match self
                .docker
                .start_container(name, None::<q::StartContainerOptions>)
                .await
            {
                Ok(()) => Ok(()),
                Err(e) if is_status(&e, 304) => Ok(()),
                Err(e) => Err(engine_err(&format!("start container {name}"), e)),
            },
            Action::StopContainer { name } => self.stop(name).await,
            Action::RemoveContainer { name } => {
                self.stop(name).await?;
                let opts = q::RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                };
                match self.docker.remove_container(name, Some(opts)).await {
                    Ok(()) => Ok(()),
                    Err(e) if is_status(&e, 404) => Ok(()),
                    Err(e) => Err(engine_err(&format!("remove container {name}"), e)),
                }
            }
            Action::RemoveNetwork { name } => match self.docker.remove_network(name).await {
                Ok(()) => Ok(()),
                Err(e) if is_status(&e, 404) => Ok(()),
                Err(e) => Err(engine_err(&format!("remove network {name}"), e)),
            },
            Action::RemoveVolume { name } => {
                match self
                    .docker
                    .remove_volume(name, None::<q::RemoveVolumeOptions>)
                    .await
                {
                    Ok(()) => Ok(()),
                    Err(e) if is_status(&e, 404) => Ok(()),
                    Err(e) => Err(engine_err(&format!("remove volume {name}"), e)),
                }
            }
        }
    }

    async fn stop(&self, name: &str) -> Result<()> {
        let opts = q::StopContainerOptions {
            t: Some(10),
            ..Default::default()
        };
        match self.docker.stop_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 304) || is_status(&e, 404) => Ok(()),
            Err(e) => Err(engine_err(&format!("stop container {name}"), e)),
        }
    }

    pub async fn restart(&self, name: &str) -> Result<()> {
        let opts = q::RestartContainerOptions {
            t: Some(10),
            ..Default::default()
        };
        self.docker
            .restart_container(name, Some(opts))
            .await
            .map_err(|e| engine_err(&format!("restart {name}"), e))
    }

    /// Creates a container with ilot's defaults: every capability dropped but those declared,
    /// no-new-privileges, a memory limit, a restart policy, labels. A `restore` helper mounts
    /// its volumes with nocopy, so the engine does not seed them from the image.
    async fn create_container(&self, spec: &ContainerSpec, role: &str, nocopy: bool) -> Result<()> {
        let name = if role == "app" {
            spec.name.clone()
        } else {
            format!("{}-{role}", spec.name)
        };
        let labels = self.labels(
            &spec.instance,
            &[
                (plan::LABEL_APP, &spec.app),
                (plan::LABEL_SERVICE, &spec.service),
                (plan::LABEL_SPEC, &spec.hash),
                (plan::LABEL_ROLE, role),
            ],
        );
        let mut mounts: Vec<Mount> = spec
            .mounts
            .iter()
            .map(|(vol, path)| Mount {
                target: Some(path.clone()),
                source: Some(vol.clone()),
                typ: Some(MountType::VOLUME),
                volume_options: nocopy.then(|| MountVolumeOptions {
                    no_copy: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        mounts.extend(spec.binds.iter().map(|(host, path)| Mount {
            target: Some(path.clone()),
            source: Some(host.clone()),
            typ: Some(MountType::BIND),
            read_only: Some(true),
            ..Default::default()
        }));
        let port_bindings: HashMap<String, Option<Vec<PortBinding>>> = spec
            .ports
            .iter()
            .map(|p| {
                let binding = PortBinding {
                    host_ip: Some(p.host_ip.clone()),
                    host_port: Some(if p.host == 0 {
                        String::new()
                    } else {
                        p.host.to_string()
                    }),
                };
                (
                    format!("{}/{}", p.container, p.protocol),
                    Some(vec![binding]),
                )
            })
            .collect();
        let exposed: Vec<String> = port_bindings.keys().cloned().collect();
        let ns = |d: Duration| d.as_nanos().min(i64::MAX as u128) as i64;
        let healthcheck = spec.health.as_ref().map(|h| HealthConfig {
            test: Some(
                std::iter::once("CMD".to_string())
                    .chain(h.cmd.iter().cloned())
                    .collect(),
            ),
            interval: Some(ns(h.interval)),
            timeout: Some(ns(h.timeout)),
            retries: Some(h.retries as i64),
            ..Default::default()
        });
        let host_config = HostConfig {
            mounts: Some(mounts),
            port_bindings: (role == "app").then_some(port_bindings),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(spec.capabilities.clone()),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            memory: Some(spec.memory),
            pids_limit: Some(512),
            restart_policy: Some(RestartPolicy {
                name: Some(if role == "app" {
                    RestartPolicyNameEnum::UNLESS_STOPPED
                } else {
                    RestartPolicyNameEnum::NO
                }),
                maximum_retry_count: None,
            }),
            network_mode: Some(spec.network.clone()),
            init: Some(spec.init),
            extra_hosts: (!spec.extra_hosts.is_empty()).then(|| spec.extra_hosts.clone()),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image_id.clone()),
            user: spec.user.clone(),
            cmd: spec.command.clone(),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            exposed_ports: Some(exposed),
            healthcheck,
            hostname: Some(spec.service.clone()),
            host_config: Some(host_config),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    spec.network.clone(),
                    EndpointSettings {
                        aliases: Some(vec![spec.service.clone()]),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        let opts = q::CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        match self.docker.create_container(Some(opts), body).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 409) => Err(Error::conflict(format!(
                "container {name} already exists"
            ))
            .hint("if it is not ilot's, rename or remove it; otherwise retry (ilot converges)")),
            Err(e) => Err(engine_err(&format!("create container {name}"), e)),
        }
    }

    /// Runs the health command once inside the container; true when it exits 0.
    pub async fn probe(&self, container: &str, cmd: &[String]) -> Result<bool> {
        let exec = self
            .docker
            .create_exec(
                container,
                bollard::models::ExecConfig {
                    cmd: Some(cmd.to_vec()),
                    attach_stdout: Some(false),
                    attach_stderr: Some(false),
                    ..Default::default()
                },
            )
            .await;
        let exec = match exec {
            Ok(e) => e,
            // Not running (yet, or any more): not healthy.
            Err(e) if is_status(&e, 409) => return Ok(false),
            Err(e) => {
                return Err(engine_err(
                    &format!("run the health check in {container}"),
                    e,
                ))
            }
        };
        let start = self
            .docker
            .start_exec(
                &exec.id,
                Some(bollard::exec::StartExecOptions {
                    detach: true,
                    ..Default::default()
                }),
            )
            .await;
        if let Err(e) = start {
            return if is_status(&e, 409) {
                Ok(false)
            } else {
                Err(engine_err("start the health check", e))
            };
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let info = self
                .docker
                .inspect_exec(&exec.id)
                .await
                .map_err(|e| engine_err("read the health check", e))?;
            if info.running != Some(true) {
                return Ok(info.exit_code == Some(0));
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Creates and starts an exec of `cmd` in a running container, its output (and with
    /// `stdin`, its input) attached. Returns what it is (for errors), its id and its streams.
    async fn start_exec(
        &self,
        container: &str,
        cmd: &[String],
        stdin: bool,
    ) -> Result<(String, String, bollard::exec::StartExecResults)> {
        let what = format!(
            "run {:?} in {container}",
            cmd.first().map_or("", String::as_str)
        );
        let exec = self
            .docker
            .create_exec(
                container,
                bollard::models::ExecConfig {
                    cmd: Some(cmd.to_vec()),
                    attach_stdin: Some(stdin),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| match is_status(&e, 409) {
                true => Error::failed(format!("{container} is not running"))
                    .hint("start it: `ilot app start INSTANCE`"),
                false => engine_err(&what, e),
            })?;
        let started = self
            .docker
            .start_exec(&exec.id, None::<bollard::exec::StartExecOptions>)
            .await
            .map_err(|e| engine_err(&what, e))?;
        Ok((what, exec.id, started))
    }

    /// Runs a command in a running container and returns its exit code and output (stdout
    /// then stderr), at most `limit` bytes of it.
    pub async fn exec_output(
        &self,
        container: &str,
        cmd: &[&str],
        limit: usize,
    ) -> Result<(i64, String)> {
        let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        let (what, exec_id, started) = self.start_exec(container, &cmd, false).await?;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        if let bollard::exec::StartExecResults::Attached { mut output, .. } = started {
            while let Some(item) = output.next().await {
                match item.map_err(|e| engine_err(&what, e))? {
                    bollard::container::LogOutput::StdOut { message } if out.len() < limit => {
                        out.extend_from_slice(&message)
                    }
                    bollard::container::LogOutput::StdErr { message } if err.len() < limit => {
                        err.extend_from_slice(&message)
                    }
                    _ => {}
                }
            }
        }
        let code = self
            .docker
            .inspect_exec(&exec_id)
            .await
            .map_err(|e| engine_err(&what, e))?
            .exit_code
            .unwrap_or(-1);
        out.extend_from_slice(&err);
        out.truncate(limit);
        Ok((code, String::from_utf8_lossy(&out).into_owned()))
    }

    /// Where one of our volumes' data lives on the host (the daemon runs there, as root).
    pub async fn volume_mountpoint(&self, name: &str) -> Result<std::path::PathBuf> {
        let v = self
            .docker
            .inspect_volume(name)
            .await
            .map_err(|e| engine_err(&format!("inspect volume {name}"), e))?;
        if v.labels.get(plan::LABEL_OWNER) != Some(&self.owner) {
            return Err(Error::conflict(format!("volume {name} is not ours")));
        }
        Ok(v.mountpoint.into())
    }

    /// Freezes a container's processes (a consistent copy of its files), or thaws them.
    pub async fn set_paused(&self, container: &str, paused: bool) -> Result<()> {
        let r = if paused {
            self.docker.pause_container(container).await
        } else {
            self.docker.unpause_container(container).await
        };
        match r {
            Ok(()) => Ok(()),
            // Not running (nothing to freeze), or not paused (nothing to thaw).
            Err(e) if is_status(&e, 409) => Ok(()),
            Err(e) => Err(engine_err(
                &format!("{} {container}", if paused { "pause" } else { "unpause" }),
                e,
            )),
        }
    }

    /// Runs a command in a running container with `stdin` (a host file, streamed) on its
    /// standard input and its standard output streamed into `stdout` (a host file, made 0600).
    /// Returns the exit code and the end of its standard error.
    pub async fn exec_files(
        &self,
        container: &str,
        cmd: &[String],
        stdin: Option<&Path>,
        stdout: Option<&Path>,
    ) -> Result<(i64, String)> {
        use tokio::io::AsyncWriteExt;
        let (what, exec_id, started) = self.start_exec(container, cmd, stdin.is_some()).await?;
        let mut out = match stdout {
            Some(p) => {
                use std::os::unix::fs::OpenOptionsExt;
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(p)
                    .map_err(|e| Error::failed(format!("cannot write {}: {e}", p.display())))?;
                Some(tokio::fs::File::from_std(f))
            }
            None => None,
        };
        let mut err = Vec::new();
        if let bollard::exec::StartExecResults::Attached {
            mut output,
            mut input,
        } = started
        {
            let feeder = match stdin {
                Some(p) => {
                    let mut file = tokio::fs::File::open(p)
                        .await
                        .map_err(|e| Error::failed(format!("cannot read {}: {e}", p.display())))?;
                    Some(tokio::spawn(async move {
                        let r = tokio::io::copy(&mut file, &mut input).await;
                        let _ = input.shutdown().await;
                        r
                    }))
                }
                None => None,
            };
            while let Some(item) = output.next().await {
                match item.map_err(|e| engine_err(&what, e))? {
                    bollard::container::LogOutput::StdOut { message } => {
                        if let Some(f) = out.as_mut() {
                            f.write_all(&message).await.map_err(|e| {
                                Error::failed(format!("cannot write the output of {what}: {e}"))
                            })?;
                        }
                    }
                    bollard::container::LogOutput::StdErr { message } => {
                        err.extend_from_slice(&message);
                        if err.len() > 8192 {
                            err.drain(..err.len() - 4096);
                        }
                    }
                    _ => {}
                }
            }
            if let Some(f) = feeder {
                let _ = f.await;
            }
        }
        if let Some(mut f) = out {
            f.flush()
                .await
                .map_err(|e| Error::failed(format!("cannot write the output of {what}: {e}")))?;
        }
        let code = self
            .docker
            .inspect_exec(&exec_id)
            .await
            .map_err(|e| engine_err(&what, e))?
            .exit_code
            .unwrap_or(-1);
        Ok((code, String::from_utf8_lossy(&err).trim().to_string()))
    }

    /// Copies a tar archive (a file on the host) into a running container, extracted under
    /// `path`. The archive is streamed, never held in memory whole.
    pub async fn upload(&self, container: &str, path: &str, archive: &Path) -> Result<()> {
        let file = tokio::fs::File::open(archive)
            .await
            .map_err(|e| Error::bad_input(format!("cannot read {}: {e}", archive.display())))?;
        let chunks = futures_util::stream::unfold(file, |mut f| async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 256 << 10];
            match f.read(&mut buf).await {
                Ok(0) | Err(_) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((bytes::Bytes::from(buf), f))
                }
            }
        });
        let opts = q::UploadToContainerOptions {
            path: path.to_string(),
            ..Default::default()
        };
        self.docker
            .upload_to_container(container, Some(opts), bollard::body_stream(chunks))
            .await
            .map_err(|e| engine_err(&format!("copy the archive into {container}"), e))
    }

    /// State and last exit code of one container, for health-gate diagnostics.
    pub async fn container_state(&self, name: &str) -> Result<Option<(String, i64)>> {
        match self
            .docker
            .inspect_container(name, None::<q::InspectContainerOptions>)
            .await
        {
            Ok(c) => {
                let s = c.state.unwrap_or_default();
                Ok(Some((
                    s.status.map(|s| s.to_string()).unwrap_or_default(),
                    s.exit_code.unwrap_or(0),
                )))
            }
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(engine_err("inspect a container", e)),
        }
    }

    pub fn logs(
        &self,
        container: &str,
        follow: bool,
        tail: Option<u64>,
    ) -> impl Stream<Item = Result<String>> + use<> {
        let opts = q::LogsOptions {
            follow,
            stdout: true,
            stderr: true,
            tail: tail.map(|t| t.to_string()).unwrap_or_else(|| "all".into()),
            ..Default::default()
        };
        self.docker.logs(container, Some(opts)).map(|item| {
            item.map(|o| o.to_string())
                .map_err(|e| engine_err("read logs", e))
        })
    }

    /// Copies the content at `path` of a (stopped) container into a tar file; returns its
    /// sha256 and size. The file is written then fsynced, so a recorded snapshot is complete.
    pub async fn snapshot(
        &self,
        container: &str,
        path: &str,
        file: &Path,
    ) -> Result<(String, u64)> {
        let opts = q::DownloadFromContainerOptions {
            path: path.to_string(),
        };
        let mut stream = self.docker.download_from_container(container, Some(opts));
        let io = |e: std::io::Error| {
            Error::failed(format!("cannot write snapshot {}: {e}", file.display()))
        };
        // Snapshots and exports hold an app's data (a family's mail): owner only.
        let mut out = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(file)
            .await
            .map_err(io)?;
        let mut hash = Sha256::new();
        let mut bytes = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| engine_err(&format!("copy {path} out of {container}"), e))?;
            hash.update(&chunk);
            bytes += chunk.len() as u64;
            out.write_all(&chunk).await.map_err(io)?;
        }
        out.sync_all().await.map_err(io)?;
        Ok((crate::state::hex(&hash.finalize()), bytes))
    }

    /// Restores a snapshot into a fresh, empty volume: recreate the volume, mount it (nocopy)
    /// in a helper container that is never started, and extract the tar through the API.
    pub async fn restore(
        &self,
        spec: &ContainerSpec,
        volume: &str,
        mount: &str,
        file: &Path,
        sha256: &str,
    ) -> Result<()> {
        let data = tokio::fs::read(file)
            .await
            .map_err(|e| Error::failed(format!("cannot read snapshot {}: {e}", file.display())))?;
        if crate::state::hex(&Sha256::digest(&data)) != sha256 {
            return Err(Error::failed(format!(
                "snapshot {} is damaged (checksum mismatch); volume {volume} left as is",
                file.display()
            )));
        }
        let helper = format!("{}-restore", spec.name);
        self.apply(&Action::RemoveContainer {
            name: helper.clone(),
        })
        .await?;
        self.apply(&Action::RemoveContainer {
            name: spec.name.clone(),
        })
        .await?;
        // Other containers of the instance may mount the volume too; they are stopped and
        // removed by the caller before a restore.
        self.apply(&Action::RemoveVolume {
            name: volume.to_string(),
        })
        .await?;
        self.apply(&Action::CreateVolume {
            name: volume.to_string(),
            instance: spec.instance.clone(),
        })
        .await?;
        let mut helper_spec = spec.clone();
        helper_spec.mounts = BTreeMap::from([(volume.to_string(), mount.to_string())]);
        helper_spec.binds.clear();
        self.create_container(&helper_spec, "restore", true).await?;
        let parent = Path::new(mount)
            .parent()
            .and_then(|p| p.to_str())
            .unwrap_or("/")
            .to_string();
        let opts = q::UploadToContainerOptions {
            path: parent,
            ..Default::default()
        };
        let upload = self
            .docker
            .upload_to_container(&helper, Some(opts), bollard::body_full(data.into()))
            .await;
        self.apply(&Action::RemoveContainer { name: helper })
            .await?;
        upload.map_err(|e| engine_err(&format!("restore volume {volume}"), e))
    }
}
