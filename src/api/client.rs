//! The CLI side of the API: a blocking Unix-socket client. No async runtime is started in the
//! CLI, which keeps `ilot status` to a millisecond or so.

use super::{Reply, Request};
use crate::error::{Error, Result};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Sends `req` and returns the final result; progress and log lines go to `on_line`.
pub fn call(
    socket: &Path,
    req: &Request,
    mut on_line: impl FnMut(Reply),
) -> Result<serde_json::Value> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::PermissionDenied => "run as root, or add yourself to the group ilot (then log in again)",
            _ => "start the daemon (systemctl start ilot, or `ilot daemon`), or point --socket / ILOT_SOCKET at it",
        };
        Error::unavailable(format!("cannot reach the ilot daemon at {}: {e}", socket.display())).hint(hint)
    })?;
    let mut line = serde_json::to_vec(req).expect("requests serialize");
    line.push(b'\n');
    stream
        .write_all(&line)
        .map_err(|e| Error::unavailable(format!("cannot send to the ilot daemon: {e}")))?;
    let reader = BufReader::new(stream);
    for line in reader.lines() {
        let line = line.map_err(|e| {
            Error::unavailable(format!("lost the connection to the ilot daemon: {e}"))
        })?;
        let reply: Reply = serde_json::from_str(&line).map_err(|e| {
            Error::failed(format!("unexpected reply from the daemon ({e}): {line}"))
        })?;
        match reply {
            Reply::Ok(v) => return Ok(v),
            Reply::Err(e) => return Err(e),
            other => on_line(other),
        }
    }
    Err(
        Error::unavailable("the ilot daemon closed the connection before answering")
            .hint("it may have stopped or restarted: check `ilot status`, then retry"),
    )
}
