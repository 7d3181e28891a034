//! Where log lines come from: files (followed across rotation and truncation), the systemd
//! journal (through `journalctl --follow`) and Docker containers' output (through the engine
//! API). Every source sends batches of lines, tagged with its key ("file:/var/log/auth.log",
//! "journal:ssh.service", "container:ilot-cloud-app"), to the one channel the guard reads.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;

pub struct Lines {
    pub source: Arc<str>,
    pub lines: Vec<Vec<u8>>,
}

pub type Sender = mpsc::Sender<Lines>;

/// One followed file: the open file, its identity, how far it was read, and a partial line.
struct Followed {
    key: Arc<str>,
    path: PathBuf,
    file: Option<File>,
    id: (u64, u64),
    offset: u64,
    partial: Vec<u8>,
    /// The file's first bytes, to notice it was truncated and rewritten past `offset`.
    head: Vec<u8>,
    /// For a file in an app's volume: the volume's root (canonical). The file is read only
    /// while its directory resolves inside it, and never through a symbolic link: the app
    /// writes there, and must not point the daemon at another file of the host.
    inside: Option<PathBuf>,
}

impl Followed {
    fn new(key: Arc<str>, path: PathBuf) -> Followed {
        Followed {
            key,
            path,
            file: None,
            id: (0, 0),
            offset: 0,
            partial: Vec::new(),
            head: Vec::new(),
            inside: None,
        }
    }

    /// The file's metadata, when it may be read (see `inside`).
    fn metadata(&self) -> Option<std::fs::Metadata> {
        match &self.inside {
            None => std::fs::metadata(&self.path).ok(),
            Some(root) => {
                let dir = self.path.parent()?.canonicalize().ok()?;
                let m = std::fs::symlink_metadata(&self.path).ok()?;
                (dir.starts_with(root) && m.file_type().is_file()).then_some(m)
            }
        }
    }

    /// Opens the file; from its end when `at_end` (what was there before ilot looked is not
    /// counted), from its start when it appeared while followed (a rotation).
    fn open(&mut self, at_end: bool) {
        self.file = None;
        self.partial.clear();
        self.head.clear();
        let mut options = std::fs::OpenOptions::new();
        options.read(true);
        if self.inside.is_some() {
            use std::os::unix::fs::OpenOptionsExt;
            options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
            if self.metadata().is_none() {
                return;
            }
        }
        if let Ok(f) = options.open(&self.path) {
            if let Ok(m) = f.metadata() {
                self.id = (m.dev(), m.ino());
                self.offset = if at_end { m.len() } else { 0 };
                self.file = Some(f);
            }
        }
    }

    /// Reads what was appended; handles truncation (copytruncate) and rotation (a new file
    /// at the path: the old one is read to its end first).
    fn poll(&mut self, out: &mut Vec<Vec<u8>>) {
        let current = self.metadata();
        let rotated = match (&self.file, &current) {
            (None, Some(_)) => {
                self.open(false);
                false
            }
            (Some(_), Some(m)) => (m.dev(), m.ino()) != self.id,
            (Some(_), None) => false,
            (None, None) => return,
        };
        if rotated {
            self.read_new(out);
            self.open(false);
        }
        if let (Some(f), Some(m)) = (&self.file, &current) {
            // Truncated in place (copytruncate): shorter than what was read, or no longer
            // starting with the bytes it started with (it grew back past the old offset).
            let mut head = vec![0u8; self.head.len()];
            use std::os::unix::fs::FileExt;
            let same_head = f.read_exact_at(&mut head, 0).is_ok() && head == self.head;
            if (m.dev(), m.ino()) == self.id && (m.len() < self.offset || !same_head) {
                self.offset = 0;
                self.partial.clear();
                self.head.clear();
            }
        }
        self.read_new(out);
    }

    fn read_new(&mut self, out: &mut Vec<Vec<u8>>) {
        let Some(f) = &mut self.file else { return };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        let Ok(n) = f.take(64 << 20).read_to_end(&mut buf) else {
            return;
        };
        if self.offset == 0 || self.head.len() < HEAD {
            let mut head = vec![0u8; HEAD];
            use std::os::unix::fs::FileExt;
            let n = f.read_at(&mut head, 0).unwrap_or(0);
            head.truncate(n);
            self.head = head;
        }
        self.offset += n as u64;
        split_lines(&mut self.partial, &buf, out);
    }
}

const HEAD: usize = 64;

/// Splits `buf` into lines, carrying an unfinished last line over in `partial`. A line longer
/// than 16 KiB is cut there: a hostile client cannot make the guard hold megabytes.
pub fn split_lines(partial: &mut Vec<u8>, buf: &[u8], out: &mut Vec<Vec<u8>>) {
    const MAX_LINE: usize = 16 << 10;
    let mut rest = buf;
    while let Some(i) = memchr::memchr(b'\n', rest) {
        let mut line = std::mem::take(partial);
        line.extend_from_slice(&rest[..i]);
        line.truncate(MAX_LINE);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        out.push(line);
        rest = &rest[i + 1..];
    }
    if partial.len() < MAX_LINE {
        let room = MAX_LINE - partial.len();
        partial.extend_from_slice(&rest[..rest.len().min(room)]);
    }
}

/// Follows files on a thread of its own: inotify on their directories wakes it as soon as a
/// line is written (the append-to-ban latency is mostly this), and a check every second
/// catches what inotify cannot see (a file on another mount, a missed rotation).
pub fn follow_files(files: Vec<(Arc<str>, PathBuf)>, tx: Sender) {
    if files.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("guard-files".into())
        .spawn(move || {
            let mut followed: Vec<Followed> = files
                .into_iter()
                .map(|(key, path)| {
                    let mut f = Followed::new(key, path);
                    f.open(true);
                    f
                })
                .collect();
            let mut inotify = inotify::Inotify::init().ok();
            if let Some(ino) = &mut inotify {
                let mut dirs: Vec<PathBuf> = followed
                    .iter()
                    .filter_map(|f| f.path.parent().map(PathBuf::from))
                    .collect();
                dirs.sort();
                dirs.dedup();
                use inotify::WatchMask as M;
                for d in dirs {
                    if let Err(e) = ino.watches().add(
                        &d,
                        M::MODIFY | M::CREATE | M::MOVED_TO | M::DELETE | M::MOVED_FROM,
                    ) {
                        tracing::warn!(
                            "guard: cannot watch {}: {e}; checking every second",
                            d.display()
                        );
                    }
                }
            }
            let mut events = [0u8; 4096];
            loop {
                for f in followed.iter_mut() {
                    let mut lines = Vec::new();
                    f.poll(&mut lines);
                    if !lines.is_empty()
                        && tx
                            .blocking_send(Lines {
                                source: f.key.clone(),
                                lines,
                            })
                            .is_err()
                    {
                        return; // the guard is gone
                    }
                }
                match &mut inotify {
                    Some(ino) => {
                        use std::os::fd::AsRawFd;
                        let mut pfd = libc::pollfd {
                            fd: ino.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        // SAFETY: one valid pollfd, for at most a second.
                        unsafe { libc::poll(&mut pfd, 1, 1000) };
                        // Drain: which file changed does not matter, every file is checked.
                        while ino
                            .read_events(&mut events)
                            .is_ok_and(|mut ev| ev.next().is_some())
                        {}
                    }
                    None => std::thread::sleep(std::time::Duration::from_millis(250)),
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("guard: cannot start the file follower: {e}");
    }
}

/// Follows a log file in one of our volumes (`path` inside volume `volume`), found through
/// the engine: the daemon runs on the engine's host, where the volume's data is. From the
/// file's end when it is there at the start, from its beginning when it appears; a second's
/// latency (the volume is not watched with inotify: it comes and goes with the app).
pub fn follow_volume_file(
    engine: crate::runtime::Engine,
    volume: String,
    path: PathBuf,
    tx: Sender,
) -> tokio::task::JoinHandle<()> {
    let key: Arc<str> = format!("volume:{volume}/{}", path.display()).into();
    tokio::spawn(async move {
        let mut warned = false;
        let root = loop {
            match engine.volume_mountpoint(&volume).await {
                Ok(m) => match m.canonicalize() {
                    Ok(root) => break root,
                    Err(e) => {
                        if !warned {
                            tracing::warn!(
                                "guard: volume {volume} is at {}, which this host cannot read ({e}): \
                                 its log {} is not read",
                                m.display(),
                                path.display()
                            );
                            warned = true;
                        }
                    }
                },
                Err(e) => {
                    if !warned {
                        tracing::debug!("guard: volume {volume} not there yet: {e}");
                        warned = true;
                    }
                }
            }
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        };
        let mut f = Followed::new(key, root.join(&path));
        f.inside = Some(root);
        f.open(true);
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            let (back, lines) = match tokio::task::spawn_blocking(move || {
                let mut lines = Vec::new();
                f.poll(&mut lines);
                (f, lines)
            })
            .await
            {
                Ok(r) => r,
                Err(_) => return,
            };
            f = back;
            if !lines.is_empty()
                && tx
                    .send(Lines {
                        source: f.key.clone(),
                        lines,
                    })
                    .await
                    .is_err()
            {
                return;
            }
        }
    })
}

/// Follows systemd units through `journalctl --follow` (short-iso lines: "DATE HOST PROG[PID]:
/// MESSAGE", which the filters expect), on a thread per source. Without journalctl (no
/// systemd) the source says so once and stays empty.
pub fn follow_journal(key: Arc<str>, units: Vec<String>, tx: Sender) {
    let _ = std::thread::Builder::new()
        .name("guard-journal".into())
        .spawn(move || {
            let mut cmd = std::process::Command::new("journalctl");
            cmd.args(["--follow", "--lines=0", "--output=short-iso", "--quiet"]);
            for u in &units {
                cmd.arg(format!("--unit={u}"));
            }
            let child = cmd
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn();
            let mut child = match child {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("guard: {key}: cannot run journalctl: {e}");
                    return;
                }
            };
            let mut out = child.stdout.take().expect("piped stdout");
            let mut partial = Vec::new();
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut lines = Vec::new();
                split_lines(&mut partial, &buf[..n], &mut lines);
                if !lines.is_empty()
                    && tx
                        .blocking_send(Lines {
                            source: key.clone(),
                            lines,
                        })
                        .is_err()
                {
                    break;
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        });
}

/// Follows a container's output (stdout and stderr) through the engine API, from a minute ago
/// (the guard starts following an app once it is installed, and its first lines must not be
/// lost to that race); the container may be recreated (upgrade, restart): the stream is opened
/// again on the new one, from when the last one ended, so the lines in between count too.
/// Returns the task, which the guard aborts when the instance goes.
pub fn follow_container(
    docker: bollard::Docker,
    container: String,
    tx: Sender,
) -> tokio::task::JoinHandle<()> {
    use futures_util::StreamExt;
    let key: Arc<str> = format!("container:{container}").into();
    tokio::spawn(async move {
        let mut since = crate::state::now().saturating_sub(60) as i32;
        loop {
            let options = bollard::query_parameters::LogsOptionsBuilder::default()
                .follow(true)
                .stdout(true)
                .stderr(true)
                .since(since)
                .build();
            let mut stream = docker.logs(&container, Some(options));
            let mut partial = HashMap::<bool, Vec<u8>>::new();
            while let Some(item) = stream.next().await {
                let Ok(chunk) = item else { break };
                let is_err = matches!(chunk, bollard::container::LogOutput::StdErr { .. });
                let mut lines = Vec::new();
                split_lines(
                    partial.entry(is_err).or_default(),
                    &chunk.into_bytes(),
                    &mut lines,
                );
                if !lines.is_empty()
                    && tx
                        .send(Lines {
                            source: key.clone(),
                            lines,
                        })
                        .await
                        .is_err()
                {
                    return;
                }
            }
            // The container stopped or is being replaced: look again shortly, from now.
            since = crate::state::now() as i32;
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file in a volume is read; a symbolic link there (to a file of the host, or out
    /// through a linked directory) is not.
    #[test]
    fn a_volume_file_is_read_but_never_through_a_link() {
        let base = std::env::temp_dir().join(format!("ilot-unit-volfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("volume");
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::create_dir_all(base.join("host")).unwrap();
        std::fs::write(base.join("host/secret"), "host line\n").unwrap();
        let root = root.canonicalize().unwrap();
        let follow = |rel: &str| {
            let mut f = Followed::new("k".into(), root.join(rel));
            f.inside = Some(root.clone());
            f.open(false);
            let mut out = Vec::new();
            f.poll(&mut out);
            out
        };
        std::fs::write(root.join("data/app.log"), "one\ntwo\n").unwrap();
        assert_eq!(
            follow("data/app.log"),
            vec![b"one".to_vec(), b"two".to_vec()]
        );
        std::os::unix::fs::symlink(base.join("host/secret"), root.join("data/link.log")).unwrap();
        assert!(follow("data/link.log").is_empty());
        std::os::unix::fs::symlink(base.join("host"), root.join("out")).unwrap();
        assert!(follow("out/secret").is_empty());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn lines_are_split_and_partial_lines_kept() {
        let mut partial = Vec::new();
        let mut out = Vec::new();
        split_lines(&mut partial, b"one\r\ntw", &mut out);
        split_lines(&mut partial, b"o\nthree", &mut out);
        assert_eq!(out, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(partial, b"three");
        let mut out = Vec::new();
        let huge = vec![b'a'; 100_000];
        split_lines(&mut partial, &huge, &mut out);
        split_lines(&mut partial, b"\n", &mut out);
        assert_eq!(out[0].len(), 16 << 10);
    }

    #[test]
    fn a_followed_file_survives_rotation_and_truncation() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("ilot-follow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("auth.log");
        std::fs::write(&path, "before\n").unwrap();
        let mut f = Followed::new("k".into(), path.clone());
        f.open(true);
        let append = |s: &str| {
            let mut w = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            w.write_all(s.as_bytes()).unwrap();
        };
        let mut out = Vec::new();
        append("a\n");
        f.poll(&mut out);
        assert_eq!(out, vec![b"a".to_vec()]);
        // Rotation: the old file gets a last line, then a new file appears.
        append("b\n");
        std::fs::rename(&path, dir.join("auth.log.1")).unwrap();
        std::fs::write(&path, "c\n").unwrap();
        out.clear();
        f.poll(&mut out);
        assert_eq!(out, vec![b"b".to_vec(), b"c".to_vec()]);
        // Truncation in place (copytruncate), then new lines.
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        append("d\n");
        out.clear();
        f.poll(&mut out);
        assert_eq!(out, vec![b"d".to_vec()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
