//! The socket server: reads one request per connection and streams the replies. Each request
//! runs in its own task, so a client that disconnects mid-install does not cancel the install.

use super::{Reply, Request, MAX_REQUEST};
use crate::daemon::Daemon;
use crate::error::Error;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

/// Where a handler sends progress and log lines.
pub type Replies = mpsc::UnboundedSender<Reply>;

pub async fn serve(listener: UnixListener, daemon: Arc<Daemon>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let daemon = daemon.clone();
                tokio::spawn(async move { connection(stream, daemon).await });
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(stream: UnixStream, daemon: Arc<Daemon>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
    let request = match reader.read_line(&mut line).await {
        Ok(0) => return,
        Ok(_) if !line.ends_with('\n') => Err(Error::bad_input(format!(
            "request too long or not terminated by a newline (limit {MAX_REQUEST} bytes)"
        ))),
        Ok(_) => serde_json::from_str::<Request>(&line).map_err(|e| {
            Error::bad_input(format!("malformed request: {e}"))
                .hint("see docs/api.md for the protocol")
        }),
        Err(e) => Err(Error::bad_input(format!("unreadable request: {e}"))),
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Reply>();
    match request {
        Ok(req) => {
            tokio::spawn(async move {
                let reply = match daemon.handle(req, &tx).await {
                    Ok(v) => Reply::Ok(v),
                    Err(e) => Reply::Err(e),
                };
                let _ = tx.send(reply);
            });
        }
        Err(e) => {
            let _ = tx.send(Reply::Err(e));
            drop(tx);
        }
    }
    while let Some(reply) = rx.recv().await {
        let mut bytes = serde_json::to_vec(&reply).expect("replies serialize");
        bytes.push(b'\n');
        if write.write_all(&bytes).await.is_err() {
            // The client left; dropping `rx` tells streaming handlers (logs) to stop.
            break;
        }
        if matches!(reply, Reply::Ok(_) | Reply::Err(_)) {
            break;
        }
    }
}
