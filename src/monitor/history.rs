//! Metric history: its own redb file (`metrics.redb` in the state dir), apart from the main
//! store so that sampling never waits on an operation's commit, and the other way round.
//!
//! Full resolution is kept in blocks of one hour per series (6 bytes a sample: the second in
//! the hour and an f32), for `retention` (a week by default): at a 30 s interval that is 720
//! bytes per series and hour, about 2.4 MiB for 20 series over a week. Older blocks are
//! folded into hourly points (average and maximum), kept for 90 days.

use crate::error::Result;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::BTreeMap;
use std::path::Path;

const SERIES: TableDefinition<&str, u32> = TableDefinition::new("series");
/// (series, hour since the epoch) -> [(u16 second in the hour, f32 value)].
const BLOCKS: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("blocks");
/// (series, hour since the epoch) -> (average, maximum).
const HOURLY: TableDefinition<(u32, u64), (f32, f32)> = TableDefinition::new("hourly");

/// How long hourly points are kept.
const HOURLY_RETENTION_HOURS: u64 = 90 * 24;

pub struct History {
    db: Database,
    /// Series ids, known after the first write of each.
    ids: std::sync::Mutex<BTreeMap<String, u32>>,
}

/// A point of a series: Unix seconds, value (the hourly average for old points), and the
/// maximum when the point stands for an hour.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Point {
    pub t: u64,
    pub v: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f32>,
}

impl History {
    pub fn open(dir: &Path) -> Result<History> {
        let path = dir.join("metrics.redb");
        let db = crate::state::open_private_db(&path, 4 << 20).map_err(|e| match e {
            crate::state::DbOpenError::InUse => crate::error::Error::conflict(format!(
                "the metric history {} is in use by another ilot daemon",
                path.display()
            )),
            crate::state::DbOpenError::Other(e) => e,
        })?;
        let tx = db.begin_write()?;
        let ids = {
            let series = tx.open_table(SERIES)?;
            tx.open_table(BLOCKS)?;
            tx.open_table(HOURLY)?;
            let mut ids = BTreeMap::new();
            for row in series.iter()? {
                let (k, v) = row?;
                ids.insert(k.value().to_string(), v.value());
            }
            ids
        };
        tx.commit()?;
        Ok(History {
            db,
            ids: std::sync::Mutex::new(ids),
        })
    }

    /// Appends one sample per series, all at time `t`, in one transaction.
    pub fn record(&self, t: u64, samples: &[(String, f32)]) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut series = tx.open_table(SERIES)?;
            let mut blocks = tx.open_table(BLOCKS)?;
            let mut ids = self.ids.lock().expect("history ids");
            let (hour, second) = (t / 3600, (t % 3600) as u16);
            for (name, value) in samples {
                let id = match ids.get(name) {
                    Some(id) => *id,
                    None => {
                        let id = ids.len() as u32;
                        series.insert(name.as_str(), id)?;
                        ids.insert(name.clone(), id);
                        id
                    }
                };
                let mut block = blocks
                    .get((id, hour))?
                    .map(|v| v.value().to_vec())
                    .unwrap_or_default();
                block.extend_from_slice(&second.to_le_bytes());
                block.extend_from_slice(&value.to_le_bytes());
                blocks.insert((id, hour), block.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Folds full-resolution blocks older than `retention` into hourly points, and drops hourly
    /// points older than 90 days.
    pub fn compact(&self, now: u64, retention_secs: u64) -> Result<()> {
        let cutoff = now.saturating_sub(retention_secs) / 3600;
        let oldest = (now / 3600).saturating_sub(HOURLY_RETENTION_HOURS);
        let tx = self.db.begin_write()?;
        {
            let mut blocks = tx.open_table(BLOCKS)?;
            let mut hourly = tx.open_table(HOURLY)?;
            let old: Vec<((u32, u64), Vec<u8>)> = blocks
                .iter()?
                .filter_map(|r| r.ok())
                .filter(|(k, _)| k.value().1 < cutoff)
                .map(|(k, v)| (k.value(), v.value().to_vec()))
                .collect();
            for (key, block) in old {
                let values: Vec<f32> = decode(&block).into_iter().map(|(_, v)| v).collect();
                if !values.is_empty() && key.1 >= oldest {
                    let avg = values.iter().sum::<f32>() / values.len() as f32;
                    let max = values.iter().cloned().fold(f32::MIN, f32::max);
                    hourly.insert(key, (avg, max))?;
                }
                blocks.remove(key)?;
            }
            let expired: Vec<(u32, u64)> = hourly
                .iter()?
                .filter_map(|r| r.ok())
                .map(|(k, _)| k.value())
                .filter(|k| k.1 < oldest)
                .collect();
            for k in expired {
                hourly.remove(k)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The series whose names start with `prefix` (all when empty).
    pub fn names(&self, prefix: &str) -> Vec<String> {
        self.ids
            .lock()
            .expect("history ids")
            .keys()
            .filter(|n| n.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// A series' points since `since` (Unix seconds): hourly points, then full resolution.
    pub fn query(&self, name: &str, since: u64) -> Result<Vec<Point>> {
        let Some(id) = self.ids.lock().expect("history ids").get(name).copied() else {
            return Ok(Vec::new());
        };
        let tx = self.db.begin_read()?;
        let mut out = Vec::new();
        let from = since / 3600;
        for row in tx.open_table(HOURLY)?.range((id, from)..(id, u64::MAX))? {
            let (k, v) = row?;
            let (avg, max) = v.value();
            out.push(Point {
                t: k.value().1 * 3600,
                v: avg,
                max: Some(max),
            });
        }
        for row in tx.open_table(BLOCKS)?.range((id, from)..(id, u64::MAX))? {
            let (k, v) = row?;
            let hour = k.value().1;
            for (second, value) in decode(v.value()) {
                let t = hour * 3600 + u64::from(second);
                if t >= since {
                    out.push(Point {
                        t,
                        v: value,
                        max: None,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Bytes of the history file (for `ilot status`).
    pub fn size(dir: &Path) -> u64 {
        std::fs::metadata(dir.join("metrics.redb")).map_or(0, |m| m.len())
    }
}

fn decode(block: &[u8]) -> Vec<(u16, f32)> {
    block
        .chunks_exact(6)
        .map(|c| {
            (
                u16::from_le_bytes([c[0], c[1]]),
                f32::from_le_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_kept_then_folded_into_hours() {
        let dir = std::env::temp_dir().join(format!("ilot-history-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let h = History::open(&dir).unwrap();
        let t0 = 1_700_000_000 / 3600 * 3600;
        for i in 0..120u64 {
            h.record(
                t0 + i * 30,
                &[("cpu".into(), i as f32), ("load1".into(), 1.0)],
            )
            .unwrap();
        }
        let points = h.query("cpu", t0 + 1800).unwrap();
        assert_eq!(points.len(), 60);
        assert_eq!(
            points[0],
            Point {
                t: t0 + 1800,
                v: 60.0,
                max: None
            }
        );
        assert_eq!(h.names(""), vec!["cpu".to_string(), "load1".to_string()]);
        // A week later, the first hour is one point: average 59.5, maximum 119.
        h.compact(t0 + 8 * 86_400, 7 * 86_400).unwrap();
        let points = h.query("cpu", 0).unwrap();
        assert_eq!(
            points,
            vec![Point {
                t: t0,
                v: 59.5,
                max: Some(119.0)
            }]
        );
        drop(h);
        // Reopened: the series ids are still known.
        let h = History::open(&dir).unwrap();
        assert_eq!(h.query("load1", 0).unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
