//! The monitor: samples the host (sysinfo: CPU, load, memory, swap, disks, temperatures,
//! network) and ilot's containers (state and health from the observer, CPU and memory from
//! their cgroups: no engine round trip per sample) at `[monitor] interval`, keeps the history
//! (`history.rs`), and feeds the alert rules (`alerts.rs`).
//!
//! Series are named `cpu`, `load1`, `mem`, `swap` (percent), `disk:MOUNT` (percent used),
//! `temp:LABEL` (°C), `net_rx:IFACE` / `net_tx:IFACE` (bytes/s), `up:CONTAINER` (1 running,
//! 0 not), `health:CONTAINER` (1 healthy, 0 unhealthy), `ccpu:CONTAINER` (percent of a core),
//! `cmem:CONTAINER` (MiB), `probe:INSTANCE/SERVICE` (1 answering, 0 not), and (from the
//! daemon) `cert_days:DOMAIN` (days until the certificate expires).

pub mod alerts;
pub mod history;

use crate::plan::ObservedContainer;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

/// One sample of everything, and the processes that look busy (for the miner rule; not kept
/// in the history, whose series must not grow with every pid).
#[derive(Debug, Default)]
pub struct Sample {
    pub values: Vec<(String, f32)>,
    /// Host processes outside any container using more than half a core: (pid, name, %).
    pub busy_processes: Vec<(u32, String, f32)>,
}

/// sysinfo's parts; one that the platform does not offer is None (and its series absent).
pub struct Sampler {
    sys: Option<sysinfo::System>,
    disks: Option<sysinfo::Disks>,
    components: Option<sysinfo::Components>,
    networks: Option<sysinfo::Networks>,
    last: Instant,
    /// Each container's CPU time (ns) at the previous sample.
    container_cpu: HashMap<String, u64>,
    /// Mounts the admin named, sampled even when sysinfo skips them (tmpfs, loop devices).
    extra_mounts: Vec<PathBuf>,
}

/// Filesystems that are not the machine's disks.
const PSEUDO_FS: [&str; 10] = [
    "overlay", "tmpfs", "devtmpfs", "squashfs", "proc", "sysfs", "cgroup", "cgroup2", "nsfs",
    "ramfs",
];

impl Sampler {
    pub fn new(extra_mounts: Vec<PathBuf>) -> Sampler {
        let mut sys = sysinfo::System::new().ok();
        if let Some(s) = &mut sys {
            s.refresh_cpu_usage();
        }
        Sampler {
            sys,
            disks: sysinfo::Disks::new_with_refreshed_list().ok(),
            components: sysinfo::Components::new_with_refreshed_list().ok(),
            networks: sysinfo::Networks::new_with_refreshed_list().ok(),
            last: Instant::now(),
            container_cpu: HashMap::new(),
            extra_mounts,
        }
    }

    pub fn sample(&mut self, containers: &[ObservedContainer]) -> Sample {
        let elapsed = self.last.elapsed().as_secs_f32().max(0.001);
        self.last = Instant::now();
        let mut v: Vec<(String, f32)> = Vec::new();
        if let Some(sys) = &mut self.sys {
            sys.refresh_cpu_usage();
            sys.refresh_memory();
            v.push(("cpu".into(), sys.global_cpu_usage()));
            v.push(("mem".into(), percent(sys.used_memory(), sys.total_memory())));
            if sys.total_swap() > 0 {
                v.push(("swap".into(), percent(sys.used_swap(), sys.total_swap())));
            }
        }
        if let Ok(load) = sysinfo::System::load_average() {
            v.push(("load1".into(), load.one as f32));
        }
        if let Some(disks) = &mut self.disks {
            disks.refresh(true);
        }
        for d in self.disks.iter().flat_map(|d| d.iter()) {
            let fs = d.file_system().to_string_lossy();
            if PSEUDO_FS.contains(&fs.as_ref()) || d.total_space() == 0 {
                continue;
            }
            let used = d.total_space().saturating_sub(d.available_space());
            v.push((
                format!("disk:{}", d.mount_point().display()),
                percent(used, d.total_space()),
            ));
        }
        for m in &self.extra_mounts {
            if let Some(pct) = statvfs_used_percent(m) {
                let name = format!("disk:{}", m.display());
                if !v.iter().any(|(n, _)| *n == name) {
                    v.push((name, pct));
                }
            }
        }
        if let Some(c) = &mut self.components {
            c.refresh(true);
        }
        for c in self.components.iter().flat_map(|c| c.iter()) {
            if let Some(t) = c.temperature().filter(|t| t.is_finite()) {
                v.push((format!("temp:{}", c.label()), t));
            }
        }
        if let Some(n) = &mut self.networks {
            n.refresh(true);
        }
        for (name, data) in self.networks.iter().flat_map(|n| n.iter()) {
            let name = name.to_string_lossy();
            if name == "lo"
                || name.starts_with("veth")
                || name.starts_with("br-")
                || name == "docker0"
            {
                continue;
            }
            v.push((format!("net_rx:{name}"), data.received() as f32 / elapsed));
            v.push((
                format!("net_tx:{name}"),
                data.transmitted() as f32 / elapsed,
            ));
        }
        let mut seen = Vec::new();
        for c in containers {
            v.push((
                format!("up:{}", c.name),
                if c.running() { 1.0 } else { 0.0 },
            ));
            match c.health.as_deref() {
                Some("healthy") => v.push((format!("health:{}", c.name), 1.0)),
                Some("unhealthy") => v.push((format!("health:{}", c.name), 0.0)),
                _ => {}
            }
            if let Some((cpu_ns, mem)) = cgroup_usage(&c.id) {
                if let Some(prev) = self.container_cpu.insert(c.name.clone(), cpu_ns) {
                    let pct = cpu_ns.saturating_sub(prev) as f32 / 1e9 / elapsed * 100.0;
                    v.push((format!("ccpu:{}", c.name), pct));
                }
                v.push((format!("cmem:{}", c.name), mem as f32 / (1 << 20) as f32));
            }
            seen.push(c.name.clone());
        }
        self.container_cpu.retain(|k, _| seen.contains(k));
        Sample {
            values: v,
            busy_processes: self.busy_processes(),
        }
    }

    /// Host processes (not in a container, not ilot) above half a core since the last sample.
    fn busy_processes(&mut self) -> Vec<(u32, String, f32)> {
        use sysinfo::{ProcessRefreshKind, ProcessesToUpdate};
        let Some(sys) = &mut self.sys else {
            return Vec::new();
        };
        sys.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing().with_cpu(),
        );
        let me = std::process::id();
        sys.processes()
            .values()
            .filter(|p| p.cpu_usage() > 50.0 && p.pid().as_u32() != me)
            .filter(|p| !in_container(p.pid().as_u32()))
            .map(|p| {
                (
                    p.pid().as_u32(),
                    p.name().to_string_lossy().into_owned(),
                    p.cpu_usage(),
                )
            })
            .collect()
    }
}

fn percent(used: u64, total: u64) -> f32 {
    if total == 0 {
        0.0
    } else {
        (used as f64 * 100.0 / total as f64) as f32
    }
}

/// Percent used of the filesystem at `path` (what df says), through statvfs.
pub fn statvfs_used_percent(path: &std::path::Path) -> Option<f32> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills a struct we own from a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 || st.f_blocks == 0 {
        return None;
    }
    let used = st.f_blocks.saturating_sub(st.f_bfree);
    // df's figure: used / (used + available to users).
    Some(percent(used as u64, (used + st.f_bavail) as u64))
}

/// Whether a process runs in a container (its cgroup path names docker or containerd).
fn in_container(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map(|c| c.contains("docker") || c.contains("containerd") || c.contains("libpod"))
        .unwrap_or(false)
}

/// A container's CPU time (ns) and memory (bytes) from its cgroup: v1 (cgroupfs driver) or
/// v2 (systemd or cgroupfs driver).
fn cgroup_usage(id: &str) -> Option<(u64, u64)> {
    let read = |p: String| std::fs::read_to_string(p).ok();
    let num = |s: Option<String>| s.and_then(|s| s.trim().parse::<u64>().ok());
    if let Some(cpu) = num(read(format!(
        "/sys/fs/cgroup/cpuacct/docker/{id}/cpuacct.usage"
    ))) {
        let mem = num(read(format!(
            "/sys/fs/cgroup/memory/docker/{id}/memory.usage_in_bytes"
        )))
        .unwrap_or(0);
        return Some((cpu, mem));
    }
    for dir in [
        format!("/sys/fs/cgroup/system.slice/docker-{id}.scope"),
        format!("/sys/fs/cgroup/docker/{id}"),
    ] {
        if let Some(stat) = read(format!("{dir}/cpu.stat")) {
            let usec = stat
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse::<u64>().ok())?;
            let mem = num(read(format!("{dir}/memory.current"))).unwrap_or(0);
            return Some((usec * 1000, mem));
        }
    }
    None
}
