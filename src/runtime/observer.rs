//! The observed-state cache: what the engine holds for this daemon, kept current from the
//! engine's event stream (Kubernetes-informer style). `status` and `app list` read it from
//! memory, so the CLI answers in a millisecond instead of waiting on engine round trips.

use super::Engine;
use crate::plan::ObservedContainer;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub engine_ok: bool,
    pub engine_version: String,
    pub engine_error: Option<String>,
    pub containers: Vec<ObservedContainer>,
}

pub struct Observer {
    engine: Engine,
    cache: RwLock<Observed>,
    /// Set while a refresh is wanted; events only set it, one task does the listing.
    dirty: tokio::sync::Notify,
}

/// Engine events that change what the cache holds (`health_status` matches
/// `health_status: healthy` and the others: the engine compares it by prefix).
const STATE_EVENTS: [&str; 12] = [
    "create",
    "start",
    "restart",
    "die",
    "stop",
    "kill",
    "destroy",
    "pause",
    "unpause",
    "rename",
    "update",
    "health_status",
];

/// A full re-list this often, in case an event was missed.
const RESYNC: Duration = Duration::from_secs(30);

impl Observer {
    pub fn new(engine: Engine) -> Arc<Observer> {
        Arc::new(Observer {
            engine,
            cache: RwLock::new(Observed::default()),
            dirty: tokio::sync::Notify::new(),
        })
    }

    pub fn get(&self) -> Observed {
        self.cache.read().expect("observer lock").clone()
    }

    pub fn containers_of(&self, instance: &str) -> Vec<ObservedContainer> {
        self.cache
            .read()
            .expect("observer lock")
            .containers
            .iter()
            .filter(|c| c.instance == instance)
            .cloned()
            .collect()
    }

    /// A container's address on its instance network (the proxy's upstream).
    pub fn ip_of(&self, container: &str) -> Option<String> {
        let cache = self.cache.read().expect("observer lock");
        cache
            .containers
            .iter()
            .find(|c| c.name == container && c.running())
            .and_then(|c| c.ip.clone())
    }

    /// Asks for a refresh soon (after an apply, or on an engine event).
    pub fn poke(&self) {
        self.dirty.notify_one();
    }

    pub async fn refresh(&self) {
        let listed = self.engine.list_containers(None).await;
        let version = if listed.is_ok()
            && self
                .cache
                .read()
                .expect("observer lock")
                .engine_version
                .is_empty()
        {
            self.engine.version().await.unwrap_or_default()
        } else {
            self.cache
                .read()
                .expect("observer lock")
                .engine_version
                .clone()
        };
        let mut cache = self.cache.write().expect("observer lock");
        match listed {
            Ok(containers) => {
                *cache = Observed {
                    engine_ok: true,
                    engine_version: version,
                    engine_error: None,
                    containers,
                };
            }
            Err(e) => {
                cache.engine_ok = false;
                cache.engine_version.clear();
                cache.engine_error = Some(e.message);
            }
        }
    }

    /// Runs forever: refresh on events, on pokes, and every RESYNC.
    pub fn spawn(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                me.refresh().await;
                tokio::select! {
                    _ = me.dirty.notified() => {}
                    _ = tokio::time::sleep(RESYNC) => {}
                }
                // Coalesce bursts of events into one listing.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let filters = HashMap::from([
                    (
                        "label".to_string(),
                        vec![format!("{}={}", crate::plan::LABEL_OWNER, me.engine.owner)],
                    ),
                    ("type".to_string(), vec!["container".to_string()]),
                    // Only what changes a container's state or health: each health check
                    // alone makes three exec events, which would each cost a re-list.
                    (
                        "event".to_string(),
                        STATE_EVENTS.iter().map(|e| e.to_string()).collect(),
                    ),
                ]);
                let opts = bollard::query_parameters::EventsOptions {
                    filters: Some(filters),
                    ..Default::default()
                };
                let mut events = me.engine.docker.events(Some(opts));
                while let Some(ev) = events.next().await {
                    if ev.is_err() {
                        break;
                    }
                    me.poke();
                    // The engine publishes some events (die) before the container's state
                    // says so: look again a moment later, or the cache keeps "running" until
                    // the next resync.
                    let later = me.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        later.poke();
                    });
                }
                // The engine went away or restarted: note it and retry.
                me.poke();
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
    }
}
