//! The one event bus. Subsystems publish what happened (installed, upgrade rolled back, app
//! unhealthy...); subscribers (the history store now, notify later) consume it. No subsystem
//! calls another to report.

use crate::state::{now, Event, Store};
use std::sync::Arc;
use tokio::sync::broadcast;

#[derive(Clone)]
pub struct Bus {
    tx: broadcast::Sender<Event>,
}

impl Bus {
    pub fn new() -> Bus {
        Bus {
            tx: broadcast::channel(4096).0,
        }
    }

    pub fn publish(&self, kind: &str, instance: Option<&str>, message: impl Into<String>) {
        self.send(Event {
            time: now(),
            kind: kind.to_string(),
            instance: instance.map(String::from),
            domain: None,
            message: message.into(),
        });
    }

    /// An event about a domain (certificates).
    pub fn publish_domain(&self, kind: &str, domain: &str, message: impl Into<String>) {
        self.send(Event {
            time: now(),
            kind: kind.to_string(),
            instance: None,
            domain: Some(domain.to_string()),
            message: message.into(),
        });
    }

    fn send(&self, event: Event) {
        tracing::info!(kind = %event.kind, instance = ?event.instance, "{}", event.message);
        // No subscriber is not an error.
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// The history store: every event is appended to the embedded store (bounded).
    pub fn spawn_history(&self, store: Arc<Store>) {
        let mut rx = self.subscribe();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(e) => {
                        // A burst (a ban storm) is written in one transaction, not one each.
                        let mut batch = vec![e];
                        while let Ok(more) = rx.try_recv() {
                            batch.push(more);
                            if batch.len() >= 512 {
                                break;
                            }
                        }
                        let written = store.write(|w| {
                            for e in &batch {
                                w.append_event(e)?;
                            }
                            Ok(())
                        });
                        if let Err(err) = written {
                            tracing::warn!("cannot record event: {err}");
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!("history missed {n} events")
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }
}
