//! The one event bus. Subsystems publish what happened (installed, upgrade rolled back, app
//! unhealthy...); subscribers (the history store now, notify later) consume it. No subsystem
//! calls another to report.
//!
//! The bus is a broadcast channel of 4,096 events: a subscriber that falls behind loses the
//! oldest ones (it is told how many, and goes on with the next). Bursts are kept small at the
//! source: a batch of bans is one event (`publish_batch`), so a storm of bans cannot push a
//! failed backup or a new certificate out of the channel.

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
            count: 1,
        });
    }

    /// Events of one kind that happened together (the bans of one log read): one event each
    /// when they are few, else one event that stands for all of them (`count`), naming the
    /// first few.
    pub fn publish_batch(&self, kind: &str, messages: &[String], what: &str, more: &str) {
        const EACH_UP_TO: usize = 8;
        if messages.len() <= EACH_UP_TO {
            for m in messages {
                self.publish(kind, None, m.clone());
            }
            return;
        }
        let shown = 3;
        self.send(Event {
            time: now(),
            kind: kind.to_string(),
            instance: None,
            domain: None,
            message: format!(
                "{} {what}: {}; and {} more ({more})",
                messages.len(),
                messages[..shown].join("; "),
                messages.len() - shown
            ),
            count: u32::try_from(messages.len()).unwrap_or(u32::MAX),
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
            count: 1,
        });
    }

    fn send(&self, event: Event) {
        tracing::info!(kind = %event.kind, instance = ?event.instance, "{}", event.message);
        // No subscriber is not an error.
        let _ = self.tx.send(event);
    }

    /// A subscriber's end of the bus; `name` says who in the warning when it falls behind.
    pub fn subscribe(&self, name: &'static str) -> Subscription {
        Subscription {
            rx: self.tx.subscribe(),
            name,
        }
    }

    /// The history store: every event is appended to the embedded store (bounded).
    pub fn spawn_history(&self, store: Arc<Store>) {
        let mut rx = self.subscribe("the event history");
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Some(e) => {
                        // A burst (a ban storm) is written in one transaction, not one each.
                        let mut batch = vec![e];
                        while let Some(more) = rx.try_recv() {
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
                    None => break,
                }
            }
        });
    }
}

/// What a subscriber reads the bus with: falling behind is a warning, never the end.
pub struct Subscription {
    rx: broadcast::Receiver<Event>,
    name: &'static str,
}

impl Subscription {
    /// The next event; None once the bus is gone (the daemon stops).
    pub async fn recv(&mut self) -> Option<Event> {
        loop {
            match self.rx.recv().await {
                Ok(e) => return Some(e),
                Err(broadcast::error::RecvError::Lagged(n)) => self.lagged(n),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        loop {
            match self.rx.try_recv() {
                Ok(e) => return Some(e),
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.lagged(n),
                Err(_) => return None,
            }
        }
    }

    fn lagged(&self, n: u64) {
        tracing::warn!(
            "{} fell behind the event bus and lost {n} events; it goes on with the next",
            self.name
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst larger than the channel costs a subscriber the oldest events, not the rest of
    /// the daemon's life (the alert and certificate subscribers used to end there).
    #[tokio::test]
    async fn a_subscriber_goes_on_after_falling_behind() {
        let bus = Bus::new();
        let mut sub = bus.subscribe("test");
        for i in 0..10_000 {
            bus.publish("ban", None, format!("{i}"));
        }
        bus.publish("backup-failed", None, "disk gone");
        let mut last = None;
        while let Some(e) = sub.try_recv() {
            last = Some(e);
        }
        assert_eq!(last.expect("events after the lag").kind, "backup-failed");
        bus.publish("cert-issued", None, "example.org");
        assert_eq!(sub.recv().await.unwrap().kind, "cert-issued");
    }

    #[tokio::test]
    async fn a_batch_of_many_is_one_event_that_counts_them_all() {
        let bus = Bus::new();
        let mut sub = bus.subscribe("test");
        let few: Vec<String> = (0..3).map(|i| format!("10.0.0.{i} banned")).collect();
        bus.publish_batch("ban", &few, "bans", "ilot ban list");
        for _ in 0..3 {
            assert_eq!(sub.try_recv().unwrap().count, 1);
        }
        let many: Vec<String> = (0..5000)
            .map(|i| format!("10.1.{}.{} banned", i / 256, i % 256))
            .collect();
        bus.publish_batch("ban", &many, "bans", "ilot ban list");
        let e = sub.try_recv().unwrap();
        assert_eq!(e.count, 5000);
        assert!(
            e.message.starts_with(
                "5000 bans: 10.1.0.0 banned; 10.1.0.1 banned; 10.1.0.2 banned; and 4997 more"
            ),
            "{}",
            e.message
        );
        assert!(sub.try_recv().is_none());
    }
}
