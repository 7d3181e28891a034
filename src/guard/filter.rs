//! Filters are data: a TOML file of regexes with a named capture for the offending address,
//! patterns that exempt a line, and examples the filter must get right. The built-in ones live
//! in `filters/` (embedded in the binary); `/etc/ilot/filters/NAME.toml` adds or overrides.
//!
//! Lines are matched as bytes (logs are not always UTF-8) and only lines that match get their
//! date parsed, so the common case — a line that is not a failure — costs one DFA scan.

use crate::error::{Error, Result};
use regex::bytes::{Regex, RegexSet};
use serde::Deserialize;
use std::net::IpAddr;
use std::path::Path;

static BUILT_IN: include_dir::Dir<'static> =
    include_dir::include_dir!("$CARGO_MANIFEST_DIR/filters");

/// Where custom filters live.
pub const CUSTOM_DIR: &str = "/etc/ilot/filters";

/// The `<HOST>` placeholder of fail2ban-style regexes: an IPv4 or IPv6 address (the address
/// itself is checked afterwards, so a hostile `999.1.1.1` is a miss, not a ban).
const HOST: &str =
    r"(?P<host>(?:[0-9]{1,3}\.){3}[0-9]{1,3}|[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:.]*[0-9A-Fa-f])";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterFile {
    description: String,
    /// Regexes that mark a failure; each has `<HOST>` (or a `(?P<host>...)` group).
    failregex: Vec<String>,
    /// A line that matches one of these is never a failure (e.g. a successful retry).
    #[serde(default)]
    ignoreregex: Vec<String>,
    /// Whether lines carry a date the engine should read: "auto" (syslog, ISO 8601, or the
    /// common log format's `[22/Nov/2026:01:00:00 +0000]`) or "none".
    #[serde(default = "auto")]
    date: String,
    /// Lines the filter must match (with the address it must capture) or not.
    #[serde(default)]
    examples: Vec<Example>,
    /// The stock fail2ban filter this one must agree with, as `fail2ban-regex` names it
    /// (`sshd`, `postfix[mode=aggressive]`): tests/guard.rs runs every example through both.
    #[serde(default)]
    fail2ban: Option<String>,
}

fn auto() -> String {
    "auto".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Example {
    pub line: String,
    /// The address the line must yield; absent = the line must not match.
    #[serde(default)]
    pub host: Option<String>,
    /// Why fail2ban's stock filter says otherwise of this line (a format it does not know, a
    /// line it counts that is the server's fault...): the differential test then requires
    /// that it does differ, so a reason that no longer holds is noticed.
    #[serde(default)]
    pub fail2ban_differs: Option<String>,
}

/// A compiled filter.
#[derive(Debug)]
pub struct Filter {
    pub name: String,
    pub description: String,
    fail_any: RegexSet,
    fail: Vec<Regex>,
    ignore: Option<RegexSet>,
    dated: bool,
    pub examples: Vec<Example>,
}

/// What a filter says of one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A failure by this address, at this time (Unix seconds) when the line carries a date.
    Failure {
        addr: IpAddr,
        time: Option<u64>,
    },
    /// A failure pattern matched, but an ignore pattern too.
    Ignored,
    /// Matched, but what was captured is not an address (a hostile or garbled line).
    BadAddress(String),
    Miss,
}

impl Filter {
    /// Compiles a filter from its TOML text; errors name the filter and what to fix.
    pub fn parse(name: &str, text: &str) -> Result<Filter> {
        let file: FilterFile = toml::from_str(text).map_err(|e| {
            Error::bad_input(format!("filter {name}: {}", e.message()))
                .hint("see docs/guard.md for the filter format")
        })?;
        if file.failregex.is_empty() {
            return Err(
                Error::bad_input(format!("filter {name}: failregex is empty"))
                    .hint("give at least one regex with <HOST> where the address is"),
            );
        }
        if let Some(ex) = file.examples.iter().find(|e| {
            e.fail2ban_differs
                .as_deref()
                .is_some_and(|why| why.trim().is_empty() || file.fail2ban.is_none())
        }) {
            return Err(Error::bad_input(format!(
                "filter {name}: example {:?}: fail2ban_differs needs a reason, and the filter's \
                 fail2ban = \"STOCK_FILTER\" to differ from",
                ex.line
            ))
            .hint("see docs/guard.md for the filter format"));
        }
        let dated = match file.date.as_str() {
            "auto" => true,
            "none" => false,
            other => {
                return Err(Error::bad_input(format!(
                    "filter {name}: date = {other:?} is not known"
                ))
                .hint("use \"auto\" or \"none\""))
            }
        };
        let expand = |r: &str| r.replace("<HOST>", HOST);
        let mut fail = Vec::new();
        for (i, r) in file.failregex.iter().enumerate() {
            let re = Regex::new(&expand(r)).map_err(|e| {
                Error::bad_input(format!("filter {name}: failregex {}: {e}", i + 1))
            })?;
            if !re.capture_names().any(|n| n == Some("host")) {
                return Err(Error::bad_input(format!(
                    "filter {name}: failregex {} has no <HOST>",
                    i + 1
                ))
                .hint("put <HOST> where the client's address is in the line"));
            }
            fail.push(re);
        }
        let fail_any = RegexSet::new(file.failregex.iter().map(|r| expand(r)))
            .map_err(|e| Error::bad_input(format!("filter {name}: {e}")))?;
        let ignore = if file.ignoreregex.is_empty() {
            None
        } else {
            Some(
                RegexSet::new(&file.ignoreregex)
                    .map_err(|e| Error::bad_input(format!("filter {name}: ignoreregex: {e}")))?,
            )
        };
        Ok(Filter {
            name: name.to_string(),
            description: file.description,
            fail_any,
            fail,
            ignore,
            dated,
            examples: file.examples,
        })
    }

    /// Loads a filter by name: `/etc/ilot/filters/NAME.toml` (or `custom_dir`) first, then the
    /// built-in one.
    pub fn load(name: &str, custom_dir: &Path) -> Result<Filter> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::bad_input(format!("{name:?} is not a filter name"))
                .hint("filter names are letters, digits, - and _; see `ilot guard filters`"));
        }
        let custom = custom_dir.join(format!("{name}.toml"));
        if let Ok(text) = std::fs::read_to_string(&custom) {
            return Filter::parse(name, &text);
        }
        match BUILT_IN.get_file(format!("{name}.toml")) {
            Some(f) => Filter::parse(name, f.contents_utf8().unwrap_or_default()),
            None => Err(
                Error::not_found(format!("no filter named {name}")).hint(format!(
                    "built-in filters: {}; custom ones go in {}",
                    built_in_names().join(", "),
                    custom_dir.display()
                )),
            ),
        }
    }

    pub fn check(&self, line: &[u8]) -> Verdict {
        // Most lines are not failures: one scan of the combined automaton settles them.
        let Some(i) = self.fail_any.matches(line).iter().next() else {
            return Verdict::Miss;
        };
        let Some(host) = self.fail[i].captures(line).and_then(|c| c.name("host")) else {
            return Verdict::Miss;
        };
        if self.ignore.as_ref().is_some_and(|s| s.is_match(line)) {
            return Verdict::Ignored;
        }
        let text = String::from_utf8_lossy(host.as_bytes());
        let Some(addr) = parse_addr(&text) else {
            return Verdict::BadAddress(text.into_owned());
        };
        let time = if self.dated { line_time(line) } else { None };
        Verdict::Failure { addr, time }
    }

    /// The examples this filter gets wrong, as messages.
    pub fn failing_examples(&self) -> Vec<String> {
        let mut out = Vec::new();
        for ex in &self.examples {
            let got = match self.check(ex.line.as_bytes()) {
                Verdict::Failure { addr, .. } => Some(addr.to_string()),
                _ => None,
            };
            if got != ex.host {
                out.push(format!(
                    "filter {}: {:?}: expected {}, got {}",
                    self.name,
                    ex.line,
                    ex.host.as_deref().unwrap_or("no match"),
                    got.as_deref().unwrap_or("no match")
                ));
            }
        }
        out
    }
}

pub fn built_in_names() -> Vec<String> {
    let mut names: Vec<String> = BUILT_IN
        .files()
        .filter_map(|f| f.path().to_str()?.strip_suffix(".toml").map(String::from))
        .collect();
    names.sort();
    names
}

/// An address as logged: IPv4, IPv6, or IPv4-mapped IPv6 (which is banned as the IPv4).
pub fn parse_addr(s: &str) -> Option<IpAddr> {
    let addr: IpAddr = s.parse().ok()?;
    Some(match addr {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    })
}

/// The date a log line carries, as Unix seconds: syslog at the start of the line
/// (`Nov 22 01:02:03`, local time, this year unless that would be in the future), ISO 8601
/// anywhere (`2026-11-22T01:02:03`, with an optional fraction and offset; none = local time),
/// or the common log format (`[22/Nov/2026:01:02:03 +0100]`). Parsed by hand: this runs for
/// every matching line, and a regex with captures per line would cost more than the match.
pub fn line_time(line: &[u8]) -> Option<u64> {
    let t = syslog_date(line)
        .or_else(|| iso_date(line))
        .or_else(|| clf_date(line))?;
    u64::try_from(t).ok()
}

/// `n` ASCII digits at `at`.
fn digits(b: &[u8], at: usize, n: usize) -> Option<i64> {
    let s = b.get(at..at + n)?;
    s.iter().try_fold(0i64, |acc, c| {
        c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
    })
}

/// `hh:mm:ss` at `at`.
fn clock(b: &[u8], at: usize) -> Option<[i64; 3]> {
    if b.get(at + 2) != Some(&b':') || b.get(at + 5) != Some(&b':') {
        return None;
    }
    Some([
        digits(b, at, 2)?,
        digits(b, at + 3, 2)?,
        digits(b, at + 6, 2)?,
    ])
}

fn syslog_date(line: &[u8]) -> Option<i64> {
    // An optional syslog priority, "<13>".
    let mut b = line;
    if b.first() == Some(&b'<') {
        let end = b.iter().take(6).position(|&c| c == b'>')?;
        b = &b[end + 1..];
    }
    let month = month(b.get(0..3)?)?;
    if b.get(3) != Some(&b' ') {
        return None;
    }
    // The day is space-padded ("Nov  2") or not ("Nov 22").
    let (day, at) = match (b.get(4), b.get(5)) {
        (Some(b' '), _) => (digits(b, 5, 1)?, 7),
        (_, Some(b' ')) => (digits(b, 4, 1)?, 6),
        _ => (digits(b, 4, 2)?, 7),
    };
    if b.get(at - 1) != Some(&b' ') {
        return None;
    }
    let [h, mi, sec] = clock(b, at)?;
    let now = crate::state::now() as i64;
    let year = civil_year(now);
    let t = local_time(year, month, [day, h, mi, sec])?;
    // A syslog date has no year: December's lines read in January are last year's.
    if t > now + 86_400 {
        return local_time(year - 1, month, [day, h, mi, sec]);
    }
    Some(t)
}

fn iso_date(line: &[u8]) -> Option<i64> {
    // The first "dddd-dd-dd" followed by T or a space and a clock.
    let mut from = 0;
    while let Some(i) = line.get(from..)?.iter().position(|&c| c == b'-') {
        let dash = from + i;
        from = dash + 1;
        let Some(start) = dash.checked_sub(4) else {
            continue;
        };
        let (Some(y), Some(mo), Some(d)) = (
            digits(line, start, 4),
            digits(line, dash + 1, 2),
            digits(line, dash + 4, 2),
        ) else {
            continue;
        };
        if line.get(dash + 3) != Some(&b'-') || !matches!(line.get(dash + 6), Some(b'T' | b' ')) {
            continue;
        }
        let Some([h, mi, s]) = clock(line, dash + 7) else {
            continue;
        };
        // An optional fraction, then Z, an offset, or nothing (local time).
        let mut at = dash + 15;
        if matches!(line.get(at), Some(b'.' | b',')) {
            at += 1;
            while line.get(at).is_some_and(u8::is_ascii_digit) {
                at += 1;
            }
        }
        let fields = [d, h, mi, s];
        return match line.get(at) {
            Some(b'Z') => utc_time(y, mo, fields),
            Some(sign @ (b'+' | b'-')) => {
                let oh = digits(line, at + 1, 2)?;
                let om = match line.get(at + 3) {
                    Some(b':') => digits(line, at + 4, 2)?,
                    _ => digits(line, at + 3, 2).unwrap_or(0),
                };
                let offset = (oh * 3600 + om * 60) * if *sign == b'-' { -1 } else { 1 };
                Some(utc_time(y, mo, fields)? - offset)
            }
            _ => local_time(y, mo, fields),
        };
    }
    None
}

fn clf_date(line: &[u8]) -> Option<i64> {
    // "[22/Nov/2026:01:02:03 +0100]"
    let open = line.iter().position(|&c| c == b'[')?;
    let b = &line[open + 1..];
    if b.get(2) != Some(&b'/') || b.get(6) != Some(&b'/') || b.get(11) != Some(&b':') {
        return None;
    }
    let fields = [digits(b, 0, 2)?, 0, 0, 0];
    let [h, mi, s] = clock(b, 12)?;
    let t = utc_time(
        digits(b, 7, 4)?,
        month(b.get(3..6)?)?,
        [fields[0], h, mi, s],
    )?;
    let sign = match b.get(21)? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (oh, om) = (digits(b, 22, 2)?, digits(b, 24, 2)?);
    Some(t - sign * (oh * 3600 + om * 60))
}

fn month(name: &[u8]) -> Option<i64> {
    const MONTHS: [&[u8]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    MONTHS.iter().position(|m| *m == name).map(|i| i as i64 + 1)
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_year(t: i64) -> i64 {
    // Good to a day, which is all the syslog year guess needs.
    1970 + (t.div_euclid(86_400) * 400 / 146_097)
}

fn utc_time(y: i64, mo: i64, [d, h, mi, s]: [i64; 4]) -> Option<i64> {
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s)
}

/// A date in the machine's time zone (what syslog writes). The zone's offset comes from the
/// C library once per hour of dates: glibc's mktime looks at /etc/localtime again on every
/// call when TZ is unset, which would halve the filters' speed.
fn local_time(y: i64, mo: i64, fields: [i64; 4]) -> Option<i64> {
    thread_local! {
        static OFFSET: std::cell::Cell<(i64, i64)> = const { std::cell::Cell::new((i64::MIN, 0)) };
    }
    let utc = utc_time(y, mo, fields)?;
    let hour = utc.div_euclid(3600);
    let (cached_hour, offset) = OFFSET.get();
    if cached_hour == hour {
        return Some(utc - offset);
    }
    let [d, h, mi, s] = fields;
    // SAFETY: mktime reads and normalises a plain struct we own.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = (y - 1900) as i32;
    tm.tm_mon = (mo - 1) as i32;
    tm.tm_mday = d as i32;
    tm.tm_hour = h as i32;
    tm.tm_min = mi as i32;
    tm.tm_sec = s as i32;
    tm.tm_isdst = -1;
    let t = unsafe { libc::mktime(&mut tm) };
    if t == -1 {
        return None;
    }
    OFFSET.set((hour, utc - t));
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_filter_gets_its_examples_right() {
        let names = built_in_names();
        assert!(names.len() >= 8, "{names:?}");
        for name in names {
            let f = Filter::load(&name, Path::new("/nonexistent")).unwrap();
            assert!(
                f.examples.iter().any(|e| e.host.is_some()),
                "{name} has no matching example"
            );
            assert!(
                f.examples.iter().any(|e| e.host.is_none()),
                "{name} has no non-matching example"
            );
            let wrong = f.failing_examples();
            assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        }
    }

    #[test]
    fn bad_filters_are_refused_with_the_reason() {
        let e = Filter::parse("x", "description = \"d\"\nfailregex = [\"from (\"]").unwrap_err();
        assert!(e.message.contains("failregex 1"), "{e}");
        let e = Filter::parse("x", "description = \"d\"\nfailregex = [\"failed\"]").unwrap_err();
        assert!(e.message.contains("no <HOST>"), "{e}");
        let e = Filter::parse("x", "description = \"d\"\nfailregex = []").unwrap_err();
        assert!(e.message.contains("empty"), "{e}");
        let e = Filter::load("../etc/passwd", Path::new("/tmp")).unwrap_err();
        assert!(e.message.contains("not a filter name"), "{e}");
    }

    #[test]
    fn captured_text_that_is_not_an_address_is_no_ban() {
        let f = Filter::parse(
            "x",
            "description = \"d\"\nfailregex = [\"bad login from <HOST>$\"]",
        )
        .unwrap();
        assert_eq!(
            f.check(b"bad login from 999.1.2.3"),
            Verdict::BadAddress("999.1.2.3".into())
        );
        assert_eq!(
            f.check(b"bad login from ::ffff:192.0.2.1"),
            Verdict::Failure {
                addr: "192.0.2.1".parse().unwrap(),
                time: None
            }
        );
    }

    #[test]
    fn dates() {
        assert_eq!(
            line_time(b"2026-11-22T01:02:03Z x"),
            Some(utc_time(2026, 11, [22, 1, 2, 3]).unwrap() as u64)
        );
        assert_eq!(
            line_time(b"2026-11-22T01:02:03.123+01:00 x"),
            Some(utc_time(2026, 11, [22, 0, 2, 3]).unwrap() as u64)
        );
        assert_eq!(
            line_time(b"1.2.3.4 - - [22/Nov/2026:01:02:03 -0130] \"GET /\""),
            Some(utc_time(2026, 11, [22, 2, 32, 3]).unwrap() as u64)
        );
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        // A syslog date is never far in the future.
        let t = line_time(b"Dec 31 23:59:59 host sshd[1]: x").unwrap();
        assert!(t <= crate::state::now() + 86_400);
        assert_eq!(line_time(b"no date here"), None);
        assert_eq!(line_time(b"a-b 12-34-56 x"), None);
        // A date in the middle of a line (Nextcloud's JSON), with an offset.
        assert_eq!(
            line_time(br#"{"reqId":"a","time":"2026-11-22T01:02:03+00:00","x":1}"#),
            Some(utc_time(2026, 11, [22, 1, 2, 3]).unwrap() as u64)
        );
        // Local-time dates (syslog, ISO without a zone) agree with the C library, twice (the
        // second from the cached offset), with a space-padded day and a syslog priority.
        let a = line_time(b"2026-01-02 03:04:05,123 x").unwrap();
        let b = line_time(b"2026-01-02 03:04:06 x").unwrap();
        assert_eq!(b, a + 1);
        assert_eq!(a as i64, {
            let mut tm: libc::tm = unsafe { std::mem::zeroed() };
            (
                tm.tm_year,
                tm.tm_mon,
                tm.tm_mday,
                tm.tm_hour,
                tm.tm_min,
                tm.tm_sec,
                tm.tm_isdst,
            ) = (126, 0, 2, 3, 4, 5, -1);
            unsafe { libc::mktime(&mut tm) }
        });
        let padded = line_time(b"Nov  2 01:02:03 pi sshd[1]: x").unwrap();
        let prio = line_time(b"<13>Nov 2 01:02:03 pi sshd[1]: x").unwrap();
        assert_eq!(padded, prio);
    }
}
