//! Jails: a filter, where its lines come from, and the policy that turns failures into bans
//! (maxretry failures within findtime → a ban for bantime, longer for repeat offenders,
//! permanent after K bans). Pure logic with the clock passed in, so it is tested directly.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Failures that earn a ban...
    pub maxretry: u32,
    /// ...within this window.
    #[serde(with = "humantime_serde")]
    pub findtime: Duration,
    /// The first ban's length.
    #[serde(with = "humantime_serde")]
    pub bantime: Duration,
    /// Each further ban of the same address lasts this many times the previous one...
    pub increment: f64,
    /// ...up to this.
    #[serde(with = "humantime_serde")]
    pub max_bantime: Duration,
    /// The K-th ban is permanent (0: never).
    pub permanent_after: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            maxretry: 5,
            findtime: Duration::from_secs(600),
            bantime: Duration::from_secs(3600),
            increment: 2.0,
            max_bantime: Duration::from_secs(7 * 86_400),
            permanent_after: 0,
        }
    }
}

impl Policy {
    /// How long the ban after `previous` earlier ones lasts; None = permanent.
    pub fn ban_length(&self, previous: u32) -> Option<Duration> {
        if self.permanent_after > 0 && previous + 1 >= self.permanent_after {
            return None;
        }
        let factor = self.increment.max(1.0).powi(previous.min(64) as i32);
        let secs = (self.bantime.as_secs_f64() * factor).min(self.max_bantime.as_secs_f64());
        Some(Duration::from_secs(secs.max(1.0) as u64))
    }

    pub fn validate(&self, jail: &str) -> Result<(), String> {
        if self.maxretry == 0 {
            return Err(format!("jail {jail}: maxretry must be at least 1"));
        }
        if self.findtime.is_zero() || self.bantime.is_zero() {
            return Err(format!(
                "jail {jail}: findtime and bantime must be more than 0"
            ));
        }
        if !(self.increment.is_finite() && self.increment >= 1.0) {
            return Err(format!("jail {jail}: increment must be a number >= 1"));
        }
        Ok(())
    }
}

/// What gets banned for an address: itself (IPv4) or its IPv6 prefix (/64 by default: one
/// host usually owns a whole /64, and rotates addresses inside it at will).
pub fn ban_net(addr: IpAddr, ipv6_prefix: u8) -> IpNet {
    match addr {
        IpAddr::V4(_) => IpNet::new(addr, 32).expect("/32"),
        IpAddr::V6(_) => IpNet::new(addr, ipv6_prefix.min(128))
            .expect("prefix checked")
            .trunc(),
    }
}

/// Failure counts per (jail, net) within each jail's findtime. Failures are counted in
/// buckets of an eighth of findtime, so an address costs at most nine small entries whatever
/// its rate: a flood jail with maxretry = 600 must not keep 600 timestamps per attacker. (The
/// window's edge is thus an eighth of findtime coarse, on the lenient side.)
#[derive(Default)]
pub struct Tracker {
    recent: HashMap<(usize, IpNet), VecDeque<(u64, u32)>>,
}

impl Tracker {
    /// Records a failure at `time`; true when it makes `maxretry` within `findtime` (the count
    /// then starts again, so a banned address is not re-banned by the lines of the same burst).
    pub fn failure(&mut self, jail: usize, net: IpNet, time: u64, policy: &Policy) -> bool {
        let window = policy.findtime.as_secs();
        let bucket = (window / 8).max(1);
        let buckets = self.recent.entry((jail, net)).or_default();
        match buckets.back_mut() {
            Some((start, count)) if time >= *start && time - *start < bucket => *count += 1,
            _ => buckets.push_back((time, 1)),
        }
        while buckets
            .front()
            .is_some_and(|(start, _)| start.saturating_add(window) < time)
        {
            buckets.pop_front();
        }
        let total: u64 = buckets.iter().map(|(_, c)| u64::from(*c)).sum();
        if total >= u64::from(policy.maxretry) {
            self.recent.remove(&(jail, net));
            true
        } else {
            false
        }
    }

    /// Forgets windows that ended (called every minute, so memory follows the attackers of
    /// the last findtime, not of all time).
    pub fn expire(&mut self, now: u64, findtime_of: impl Fn(usize) -> u64) {
        self.recent.retain(|(jail, _), buckets| {
            buckets
                .back()
                .is_some_and(|(t, _)| t.saturating_add(findtime_of(*jail)) >= now)
        });
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.recent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maxretry_within_findtime_bans() {
        let p = Policy {
            maxretry: 3,
            findtime: Duration::from_secs(60),
            ..Policy::default()
        };
        let mut t = Tracker::default();
        let a: IpNet = "203.0.113.5/32".parse().unwrap();
        assert!(!t.failure(0, a, 100, &p));
        assert!(!t.failure(0, a, 110, &p));
        // Too late: the first failure left the window.
        assert!(!t.failure(0, a, 161, &p));
        assert!(t.failure(0, a, 170, &p));
        // Counting starts again after a ban; another jail counts apart.
        assert!(!t.failure(0, a, 171, &p));
        assert!(!t.failure(1, a, 171, &p));
        t.expire(1000, |_| 60);
        assert_eq!(t.len(), 0);
        // A flood jail: 600 in a minute, from one address, in a handful of entries.
        let flood = Policy {
            maxretry: 600,
            findtime: Duration::from_secs(60),
            ..Policy::default()
        };
        let hits = (0..599)
            .filter(|i| t.failure(2, a, 2000 + i / 10, &flood))
            .count();
        assert_eq!(hits, 0);
        assert!(t.recent[&(2, a)].len() <= 9);
        assert!(t.failure(2, a, 2059, &flood));
    }

    #[test]
    fn repeat_offenders_get_longer_bans_then_a_permanent_one() {
        let p = Policy {
            bantime: Duration::from_secs(600),
            increment: 3.0,
            max_bantime: Duration::from_secs(3 * 3600),
            permanent_after: 5,
            ..Policy::default()
        };
        assert_eq!(p.ban_length(0), Some(Duration::from_secs(600)));
        assert_eq!(p.ban_length(1), Some(Duration::from_secs(1800)));
        assert_eq!(p.ban_length(2), Some(Duration::from_secs(5400)));
        assert_eq!(p.ban_length(3), Some(Duration::from_secs(3 * 3600)));
        assert_eq!(p.ban_length(4), None);
    }

    #[test]
    fn ipv6_is_banned_by_prefix() {
        assert_eq!(
            ban_net("2001:db8:1:2:aaaa::1".parse().unwrap(), 64).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            ban_net("198.51.100.7".parse().unwrap(), 64).to_string(),
            "198.51.100.7/32"
        );
    }
}
