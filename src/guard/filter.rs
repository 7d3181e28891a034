//! Filters are data: a TOML file of regexes with a named capture for the offending address,
//! patterns that exempt a line, and examples the filter must get right. The built-in ones live
//! in `filters/` (embedded in the binary); `/etc/ilot/filters/NAME.toml` adds or overrides.
//!
//! Lines are matched as bytes (logs are not always UTF-8) and only lines that match get their
//! date parsed, so the common case — a line that is not a failure — costs one DFA scan.
//!
//! Two things go beyond one regex per line, as in fail2ban:
//! - **modes**: a filter may have several (sshd's `normal`, `ddos`, `aggressive`...), each
//!   adding patterns to the common ones; a jail picks one.
//! - **sessions**: a pattern with `<SID>` (sshd's PID) ties lines of one connection together.
//!   A failure line without an address takes the session's; a `helperregex` line is no
//!   failure but tells the session its address (and settles a failure that was waiting for
//!   it). Sessions are kept 10 minutes, at most 4,096 of them.

use crate::error::{Error, Result};
use regex::bytes::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use regex_automata::{meta, util::syntax, Input};
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
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
/// The `<SID>` placeholder: what ties the lines of one session (sshd's PID).
const SID: &str = r"(?P<sid>\d+)";

/// How long a session's address is remembered, and how many sessions at most.
const SESSION_TTL: u64 = 600;
const MAX_SESSIONS: usize = 4096;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterFile {
    description: String,
    /// Regexes that mark a failure; each has `<HOST>` (or a `(?P<host>...)` group), or
    /// `<SID>` to take the address of the session.
    failregex: Vec<String>,
    /// Regexes with `<HOST>` and `<SID>` that are no failure but tell the session its address.
    #[serde(default)]
    helperregex: Vec<String>,
    /// Regexes of a successful login (with `<SID>`): the session's waiting failure is dropped.
    #[serde(default)]
    successregex: Vec<String>,
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
    /// The mode a jail gets unless it names one.
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    modes: BTreeMap<String, ModeFile>,
}

/// A mode: patterns added to the filter's common ones (tried first, so a mode can make a
/// failure of what is a helper elsewhere), and those of the modes it includes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModeFile {
    #[serde(default)]
    description: String,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    failregex: Vec<String>,
    #[serde(default)]
    helperregex: Vec<String>,
    #[serde(default)]
    successregex: Vec<String>,
    /// fail2ban's counterpart of this mode (default: the filter's with `[mode=NAME]`).
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
    /// The modes the example is for (none: the filter's default mode).
    #[serde(default)]
    pub modes: Vec<String>,
    /// Why fail2ban's stock filter says otherwise of this line (a format it does not know, a
    /// line it counts that is the server's fault...): the differential test then requires
    /// that it does differ, so a reason that no longer holds is noticed.
    #[serde(default)]
    pub fail2ban_differs: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Failure,
    Helper,
    Success,
}

#[derive(Debug)]
struct Rule {
    re: Regex,
    kind: Kind,
    has_sid: bool,
}

/// A compiled filter, in one of its modes.
#[derive(Debug)]
pub struct Filter {
    pub name: String,
    pub description: String,
    /// The mode it was compiled for ("" when the filter has none).
    pub mode: String,
    /// Every mode of the filter: name, description, fail2ban's counterpart ("" for no mode).
    pub modes: Vec<(String, String, Option<String>)>,
    /// Every rule in one automaton: a search tells which rule decides the line (the leftmost
    /// match, and of those starting there the first listed) in one forward scan, where a
    /// `RegexSet` would scan for every rule that matches anywhere (2.5× the cost).
    fail_any: meta::Regex,
    rules: Vec<Rule>,
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
    /// A helper line: no failure, but its session now knows its address.
    Noted,
    /// A failure whose session has no address yet: counted when a later line gives it.
    Pending,
    Miss,
}

/// The sessions of one jail's lines (see the module's comment). Each reader of a log keeps
/// its own.
///
/// Helper lines are most of an sshd log (every disconnect), so they cost a copy, not a regex
/// capture: the last `RECENT` of them are kept as they are, and read only when a failure
/// without an address needs its session's, or while some session waits for one.
#[derive(Debug, Default)]
pub struct Sessions {
    map: HashMap<u64, Session>,
    /// Sessions whose failure waits for an address.
    pending: usize,
    /// The last helper lines: (rule, line).
    recent: std::collections::VecDeque<(usize, Vec<u8>)>,
}

const RECENT: usize = 256;

#[derive(Debug, Clone, Copy)]
struct Session {
    addr: Option<IpAddr>,
    pending: bool,
    seen: u64,
}

impl Sessions {
    fn get(&mut self, sid: u64, now: u64) -> &mut Session {
        if !self.map.contains_key(&sid) && self.map.len() >= MAX_SESSIONS {
            self.map.retain(|_, s| s.seen + SESSION_TTL > now);
            if self.map.len() >= MAX_SESSIONS {
                // Still full of live ones (a flood of connections): keep the newer half.
                let mut seen: Vec<u64> = self.map.values().map(|s| s.seen).collect();
                seen.sort_unstable();
                let cut = seen[seen.len() / 2];
                self.map.retain(|_, s| s.seen > cut);
            }
            self.pending = self.map.values().filter(|s| s.pending).count();
        }
        let s = self.map.entry(sid).or_insert(Session {
            addr: None,
            pending: false,
            seen: now,
        });
        if s.seen + SESSION_TTL <= now {
            if s.pending {
                self.pending -= 1;
            }
            *s = Session {
                addr: None,
                pending: false,
                seen: now,
            };
        }
        s.seen = now;
        s
    }

    fn set_pending(&mut self, sid: u64, pending: bool) {
        if let Some(s) = self.map.get_mut(&sid) {
            if s.pending != pending {
                s.pending = pending;
                if pending {
                    self.pending += 1;
                } else {
                    self.pending -= 1;
                }
            }
        }
    }

    fn remember(&mut self, rule: usize, line: &[u8]) {
        let mut buf = if self.recent.len() >= RECENT {
            self.recent.pop_front().map(|(_, b)| b).unwrap_or_default()
        } else {
            Vec::new()
        };
        buf.clear();
        buf.extend_from_slice(line);
        self.recent.push_back((rule, buf));
    }

    /// How many sessions are remembered.
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

fn sid_of(caps: &regex::bytes::Captures) -> Option<u64> {
    std::str::from_utf8(caps.name("sid")?.as_bytes())
        .ok()?
        .parse()
        .ok()
}

impl Filter {
    /// Compiles a filter from its TOML text, in its default mode.
    #[cfg(test)]
    pub fn parse(name: &str, text: &str) -> Result<Filter> {
        Filter::parse_mode(name, text, None)
    }

    /// Compiles a filter from its TOML text in `mode` (None: its default); errors name the
    /// filter and what to fix.
    pub fn parse_mode(name: &str, text: &str, mode: Option<&str>) -> Result<Filter> {
        let file: FilterFile = toml::from_str(text).map_err(|e| {
            Error::bad_input(format!("filter {name}: {}", e.message()))
                .hint("see docs/guard.md for the filter format")
        })?;
        if file.failregex.is_empty() && file.modes.is_empty() {
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
        let known_modes = || {
            let names: Vec<&str> = file.modes.keys().map(String::as_str).collect();
            if names.is_empty() {
                "it has no modes".to_string()
            } else {
                format!("its modes: {}", names.join(", "))
            }
        };
        let default_mode = match (&file.mode, file.modes.keys().next()) {
            (Some(m), _) => m.clone(),
            (None, Some(first)) if file.modes.len() == 1 => first.clone(),
            (None, None) => String::new(),
            (None, Some(_)) => {
                return Err(Error::bad_input(format!(
                    "filter {name}: several modes and no default"
                ))
                .hint(format!("add mode = \"NAME\" ({})", known_modes())))
            }
        };
        let chosen = mode.map(str::to_string).unwrap_or(default_mode.clone());
        if !(chosen.is_empty() && file.modes.is_empty()) && !file.modes.contains_key(&chosen) {
            return Err(
                Error::bad_input(format!("filter {name} has no mode {chosen:?}"))
                    .hint(known_modes()),
            );
        }
        for ex in &file.examples {
            if let Some(m) = ex.modes.iter().find(|m| !file.modes.contains_key(*m)) {
                return Err(Error::bad_input(format!(
                    "filter {name}: example {:?} is for mode {m:?}, which the filter lacks",
                    ex.line
                ))
                .hint(known_modes()));
            }
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
        // The rules, in the order they are preferred when several match a line at the same
        // place: the mode's (its includes first), then the filter's common ones.
        let mut sources: Vec<(String, Kind, String)> = Vec::new();
        if !chosen.is_empty() {
            let mut stack = vec![(chosen.clone(), 0usize)];
            let mut order = Vec::new();
            while let Some((m, depth)) = stack.pop() {
                if depth > 8 {
                    return Err(Error::bad_input(format!(
                        "filter {name}: mode {m:?} is included more than 8 modes deep"
                    ))
                    .hint("make the modes' include lists shallower"));
                }
                let Some(mf) = file.modes.get(&m) else {
                    return Err(Error::bad_input(format!(
                        "filter {name}: a mode includes {m:?}, which does not exist"
                    ))
                    .hint(known_modes()));
                };
                if order.contains(&m) {
                    continue;
                }
                order.push(m.clone());
                for inc in mf.include.iter().rev() {
                    stack.push((inc.clone(), depth + 1));
                }
            }
            for m in &order {
                let mf = &file.modes[m];
                for r in &mf.failregex {
                    sources.push((format!("mode {m} failregex"), Kind::Failure, r.clone()));
                }
                for r in &mf.helperregex {
                    sources.push((format!("mode {m} helperregex"), Kind::Helper, r.clone()));
                }
                for r in &mf.successregex {
                    sources.push((format!("mode {m} successregex"), Kind::Success, r.clone()));
                }
            }
        }
        for (i, r) in file.failregex.iter().enumerate() {
            sources.push((format!("failregex {}", i + 1), Kind::Failure, r.clone()));
        }
        for (i, r) in file.helperregex.iter().enumerate() {
            sources.push((format!("helperregex {}", i + 1), Kind::Helper, r.clone()));
        }
        for (i, r) in file.successregex.iter().enumerate() {
            sources.push((format!("successregex {}", i + 1), Kind::Success, r.clone()));
        }
        let expand = |r: &str| r.replace("<HOST>", HOST).replace("<SID>", SID);
        let mut rules = Vec::new();
        for (what, kind, r) in &sources {
            let re = RegexBuilder::new(&expand(r))
                .unicode(false)
                .build()
                .map_err(|e| Error::bad_input(format!("filter {name}: {what}: {e}")))?;
            let has_host = re.capture_names().any(|n| n == Some("host"));
            let has_sid = re.capture_names().any(|n| n == Some("sid"));
            if !has_host && !has_sid {
                return Err(
                    Error::bad_input(format!("filter {name}: {what} has no <HOST>")).hint(
                        "put <HOST> where the client's address is in the line (a failregex \
                         may have <SID> instead, to take its session's address)",
                    ),
                );
            }
            if *kind != Kind::Failure && !has_sid {
                return Err(
                    Error::bad_input(format!("filter {name}: {what} has no <SID>"))
                        .hint("helper and success lines speak of a session: give them <SID>"),
                );
            }
            if *kind == Kind::Helper && !has_host {
                return Err(
                    Error::bad_input(format!("filter {name}: {what} has no <HOST>"))
                        .hint("a helper line tells its session the address: give it <HOST>"),
                );
            }
            rules.push(Rule {
                re,
                kind: *kind,
                has_sid,
            });
        }
        // Logs are bytes and what the patterns look for is ASCII: without Unicode classes
        // (\w, \S, . are then byte classes) the automata are a fraction of the size, and a
        // capture's bookkeeping with them.
        let fail_any = meta::Regex::builder()
            .syntax(syntax::Config::new().unicode(false).utf8(false))
            .configure(meta::Config::new().utf8_empty(false))
            .build_many(
                &sources
                    .iter()
                    .map(|(_, _, r)| expand(r))
                    .collect::<Vec<_>>(),
            )
            .map_err(|e| Error::bad_input(format!("filter {name}: {e}")))?;
        let ignore = if file.ignoreregex.is_empty() {
            None
        } else {
            Some(
                RegexSetBuilder::new(&file.ignoreregex)
                    .unicode(false)
                    .build()
                    .map_err(|e| Error::bad_input(format!("filter {name}: ignoreregex: {e}")))?,
            )
        };
        let base = file.fail2ban.clone();
        let modes = if file.modes.is_empty() {
            vec![(String::new(), String::new(), base)]
        } else {
            file.modes
                .iter()
                .map(|(m, mf)| {
                    let theirs = mf
                        .fail2ban
                        .clone()
                        .or_else(|| base.as_ref().map(|b| format!("{b}[mode={m}]")));
                    (m.clone(), mf.description.clone(), theirs)
                })
                .collect()
        };
        let examples = file
            .examples
            .into_iter()
            .filter(|e| {
                if e.modes.is_empty() {
                    chosen == default_mode
                } else {
                    e.modes.contains(&chosen)
                }
            })
            .collect();
        Ok(Filter {
            name: name.to_string(),
            description: file.description,
            mode: chosen,
            modes,
            fail_any,
            rules,
            ignore,
            dated,
            examples,
        })
    }

    /// Loads a filter by name, in its default mode.
    #[cfg(test)]
    pub fn load(name: &str, custom_dir: &Path) -> Result<Filter> {
        Filter::load_mode(name, None, custom_dir)
    }

    /// Loads a filter by name: `/etc/ilot/filters/NAME.toml` (or `custom_dir`) first, then the
    /// built-in one; in `mode` (None: its default).
    pub fn load_mode(name: &str, mode: Option<&str>, custom_dir: &Path) -> Result<Filter> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::bad_input(format!("{name:?} is not a filter name"))
                .hint("filter names are letters, digits, - and _ (the built-in ones are in docs/guard.md)"));
        }
        let custom = custom_dir.join(format!("{name}.toml"));
        if let Ok(text) = std::fs::read_to_string(&custom) {
            return Filter::parse_mode(name, &text, mode);
        }
        match BUILT_IN.get_file(format!("{name}.toml")) {
            Some(f) => Filter::parse_mode(name, f.contents_utf8().unwrap_or_default(), mode),
            None => Err(
                Error::not_found(format!("no filter named {name}")).hint(format!(
                    "built-in filters: {}; custom ones go in {}",
                    built_in_names().join(", "),
                    custom_dir.display()
                )),
            ),
        }
    }

    /// What the filter says of a line on its own (no earlier lines: a fresh session memory).
    pub fn check_line(&self, line: &[u8]) -> Verdict {
        self.check(line, &mut Sessions::default())
    }

    /// What the filter says of the next line of a log, whose earlier lines' sessions are in
    /// `sessions`.
    pub fn check(&self, line: &[u8], sessions: &mut Sessions) -> Verdict {
        let line = unframe(line);
        let line = line.as_ref();
        // Most lines are not failures: one scan of the combined automaton settles them.
        let Some(i) = self
            .fail_any
            .search_half(&Input::new(line))
            .map(|m| m.pattern().as_usize())
        else {
            return Verdict::Miss;
        };
        let rule = &self.rules[i];
        // A helper or a login while no session waits: kept for later, not read now.
        if rule.kind != Kind::Failure && sessions.pending == 0 {
            if rule.kind == Kind::Helper {
                sessions.remember(i, line);
            }
            return Verdict::Noted;
        }
        let Some(caps) = rule.re.captures(line) else {
            return Verdict::Miss;
        };
        if rule.kind == Kind::Failure && self.ignore.as_ref().is_some_and(|s| s.is_match(line)) {
            return Verdict::Ignored;
        }
        let addr = match caps.name("host") {
            Some(host) => {
                let text = String::from_utf8_lossy(host.as_bytes());
                match parse_addr(&text) {
                    Some(a) => Some(a),
                    None => return Verdict::BadAddress(text.into_owned()),
                }
            }
            None => None,
        };
        let time = if self.dated { line_time(line) } else { None };
        let failure = |addr| Verdict::Failure { addr, time };
        let sid = if rule.has_sid { sid_of(&caps) } else { None };
        let Some(sid) = sid else {
            return match (rule.kind, addr) {
                (Kind::Failure, Some(a)) => failure(a),
                _ => Verdict::Miss,
            };
        };
        let now = crate::state::now();
        let session = sessions.get(sid, now);
        if let Some(a) = addr {
            session.addr = Some(a);
        }
        let known = session.addr;
        match rule.kind {
            Kind::Failure => {
                let found = known.or_else(|| self.address_from_recent(sessions, sid));
                match found {
                    Some(a) => {
                        sessions.get(sid, now).addr = Some(a);
                        sessions.set_pending(sid, false);
                        failure(a)
                    }
                    None => {
                        sessions.set_pending(sid, true);
                        Verdict::Pending
                    }
                }
            }
            Kind::Helper => {
                let waiting = session.pending;
                sessions.remember(i, line);
                match (waiting, known) {
                    (true, Some(a)) => {
                        sessions.set_pending(sid, false);
                        failure(a)
                    }
                    _ => Verdict::Noted,
                }
            }
            Kind::Success => {
                sessions.set_pending(sid, false);
                Verdict::Noted
            }
        }
    }

    /// The address an earlier helper line of session `sid` gave, newest first.
    fn address_from_recent(&self, sessions: &Sessions, sid: u64) -> Option<IpAddr> {
        sessions.recent.iter().rev().find_map(|(rule, line)| {
            let caps = self.rules.get(*rule)?.re.captures(line)?;
            if sid_of(&caps)? != sid {
                return None;
            }
            parse_addr(&String::from_utf8_lossy(caps.name("host")?.as_bytes()))
        })
    }

    /// The examples this filter gets wrong (in its mode), as messages.
    pub fn failing_examples(&self) -> Vec<String> {
        let mut out = Vec::new();
        for ex in &self.examples {
            let got = match self.check_line(ex.line.as_bytes()) {
                Verdict::Failure { addr, .. } => Some(addr.to_string()),
                _ => None,
            };
            if got != ex.host {
                out.push(format!(
                    "filter {}{}: {:?}: expected {}, got {}",
                    self.name,
                    if self.mode.is_empty() {
                        String::new()
                    } else {
                        format!(" (mode {})", self.mode)
                    },
                    ex.line,
                    ex.host.as_deref().unwrap_or("no match"),
                    got.as_deref().unwrap_or("no match")
                ));
            }
        }
        out
    }
}

/// The line as the filters expect it: syslog's traditional framing (`DATE HOST TAG[PID]: MSG`).
/// RFC 5424 lines (`<PRI>1 DATE HOST APP PROCID MSGID [SD] MSG`) are rewritten to it, and the
/// Solaris/illumos `[ID 800047 auth.info] ` after the tag is dropped. Other lines are kept as
/// they are, without a copy: checking for both costs a byte test and one memmem scan.
pub fn unframe(line: &[u8]) -> Cow<'_, [u8]> {
    static SOLARIS: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b": [ID "));
    if line.first() == Some(&b'<') {
        if let Some(l) = rfc5424(line) {
            return Cow::Owned(l);
        }
    }
    if let Some(at) = SOLARIS.find(line) {
        // ": [ID 800047 auth.info] " → ": "
        let rest = &line[at + 6..];
        let mut words = rest.splitn(3, |&b| b == b' ');
        let (Some(num), Some(fac)) = (words.next(), words.next()) else {
            return Cow::Borrowed(line);
        };
        if !num.is_empty()
            && num.iter().all(u8::is_ascii_digit)
            && fac.ends_with(b"]")
            && rest.len() > num.len() + fac.len() + 2
        {
            let mut out = Vec::with_capacity(line.len());
            out.extend_from_slice(&line[..at + 2]);
            out.extend_from_slice(&rest[num.len() + fac.len() + 2..]);
            return Cow::Owned(out);
        }
    }
    Cow::Borrowed(line)
}

/// `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA [MSG]` (RFC 5424 §6) as
/// `TIMESTAMP HOSTNAME APP-NAME[PROCID]: MSG`.
fn rfc5424(line: &[u8]) -> Option<Vec<u8>> {
    let close = line.iter().take(5).position(|&b| b == b'>')?;
    if close < 2 || !line[1..close].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let rest = line.get(close + 1..)?.strip_prefix(b"1 ")?;
    let mut fields = rest.splitn(6, |&b| b == b' ');
    let (ts, host, app, pid, _msgid) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    let sd_and_msg = fields.next().unwrap_or_default();
    // STRUCTURED-DATA: "-" or one or more [ID k="v" ...] elements; in a value, \] and \" are
    // escaped.
    let msg = if let Some(m) = sd_and_msg.strip_prefix(b"-") {
        m
    } else {
        let mut i = 0;
        let mut in_value = false;
        while i < sd_and_msg.len() {
            match sd_and_msg[i] {
                b'\\' if in_value => i += 1,
                b'"' => in_value = !in_value,
                b']' if !in_value && sd_and_msg.get(i + 1) != Some(&b'[') => {
                    i += 1;
                    break;
                }
                _ => {}
            }
            i += 1;
        }
        sd_and_msg.get(i..).unwrap_or_default()
    };
    let msg = msg.strip_prefix(b" ").unwrap_or(msg);
    // A BOM may start the message (RFC 5424 §6.4).
    let msg = msg.strip_prefix("\u{feff}".as_bytes()).unwrap_or(msg);
    let mut out = Vec::with_capacity(line.len());
    out.extend_from_slice(ts);
    out.push(b' ');
    out.extend_from_slice(host);
    out.push(b' ');
    out.extend_from_slice(app);
    if pid != b"-" {
        out.push(b'[');
        out.extend_from_slice(pid);
        out.push(b']');
    }
    out.extend_from_slice(b": ");
    out.extend_from_slice(msg);
    Some(out)
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
            for (mode, _, _) in &f.modes {
                let m = (!mode.is_empty()).then_some(mode.as_str());
                let f = Filter::load_mode(&name, m, Path::new("/nonexistent")).unwrap();
                let wrong = f.failing_examples();
                assert!(wrong.is_empty(), "{}", wrong.join("\n"));
            }
        }
    }

    fn sshd(mode: &str) -> Filter {
        Filter::load_mode("sshd", Some(mode), Path::new("/nonexistent")).unwrap()
    }

    fn run(f: &Filter, lines: &[&str]) -> Vec<Option<String>> {
        let mut sessions = Sessions::default();
        lines
            .iter()
            .map(|l| match f.check(l.as_bytes(), &mut sessions) {
                Verdict::Failure { addr, .. } => Some(addr.to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_line_without_an_address_takes_its_sessions_and_only_its_own() {
        let locked = "Dec  2 10:00:07 h sshd[77]: User bob not allowed because account is locked";
        let closed = "Dec  2 10:00:08 h sshd[77]: Connection closed by authenticating user bob 203.0.113.9 port 4 [preauth]";
        let other = "Dec  2 10:00:08 h sshd[78]: Connection closed by authenticating user eve 203.0.113.10 port 4 [preauth]";
        // normal: the close is no failure of its own, but settles the locked account's.
        assert_eq!(
            run(&sshd("normal"), &[locked, other, closed]),
            [None, None, Some("203.0.113.9".into())]
        );
        // ddos: the close is a failure; the waiting one is settled by it, counted once.
        assert_eq!(
            run(&sshd("ddos"), &[locked, closed]),
            [None, Some("203.0.113.9".into())]
        );
        // An address learnt first (PAM's line) serves a later line that has none.
        let pam = "Dec  2 10:00:09 h sshd[79]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=203.0.113.11  user=root";
        let too_many =
            "Dec  2 10:00:10 h sshd[79]: Disconnecting: Too many authentication failures [preauth]";
        assert_eq!(
            run(&sshd("normal"), &[pam, too_many]),
            [None, Some("203.0.113.11".into())]
        );
        // A login in between drops what was waiting.
        let ok =
            "Dec  2 10:00:11 h sshd[80]: Accepted password for bob from 203.0.113.12 port 4 ssh2";
        let locked80 = "Dec  2 10:00:11 h sshd[80]: User bob not allowed because account is locked";
        let closed80 = "Dec  2 10:00:12 h sshd[80]: Connection closed by 203.0.113.12 port 4";
        assert_eq!(
            run(&sshd("normal"), &[locked80, ok, closed80]),
            [None, None, None]
        );
    }

    #[test]
    fn sessions_are_bounded() {
        let f = sshd("normal");
        let mut sessions = Sessions::default();
        for pid in 0..20_000 {
            // A failure with an address: its session is remembered (for the lines after it).
            let l = format!("Dec  2 10:00:09 h sshd[{pid}]: Failed password for root from 203.0.113.11 port 4 ssh2");
            assert!(matches!(
                f.check(l.as_bytes(), &mut sessions),
                Verdict::Failure { .. }
            ));
            assert!(sessions.len() <= MAX_SESSIONS);
        }
        assert!(sessions.len() >= MAX_SESSIONS / 2);
    }

    #[test]
    fn framings_are_read_as_traditional_syslog() {
        assert_eq!(
            unframe(b"<38>1 2026-12-02T10:00:32Z h sshd 2032 - - Invalid user a from 192.0.2.1")
                .as_ref(),
            b"2026-12-02T10:00:32Z h sshd[2032]: Invalid user a from 192.0.2.1"
        );
        assert_eq!(
            unframe(br#"<38>1 2026-12-02T10:00:32Z h sshd - ID1 [a b="x\]y"][c d="e"] msg"#)
                .as_ref(),
            b"2026-12-02T10:00:32Z h sshd: msg"
        );
        assert_eq!(
            unframe(b"Dec  2 10:00:31 h sshd[1]: [ID 800047 auth.info] Failed x").as_ref(),
            b"Dec  2 10:00:31 h sshd[1]: Failed x"
        );
        // Not a framing: kept as it is.
        for l in [
            &b"<13>Dec  2 10:00:31 h sshd[1]: x"[..],
            b"Dec  2 10:00:31 h sshd[1]: [ID x] y",
            b"<38>1 short",
        ] {
            assert!(matches!(unframe(l), Cow::Borrowed(_)), "{l:?}");
        }
        let t = line_time(&unframe(b"<38>1 2026-12-02T10:00:32Z h sshd 1 - - x")).unwrap();
        assert_eq!(t as i64, utc_time(2026, 12, [2, 10, 0, 32]).unwrap());
    }

    #[test]
    fn modes_are_checked() {
        let e = Filter::load_mode("sshd", Some("paranoid"), Path::new("/nonexistent")).unwrap_err();
        assert!(e.message.contains("no mode \"paranoid\""), "{e}");
        assert!(
            e.hint.as_deref().unwrap_or_default().contains("ddos"),
            "{e:?}"
        );
        let e = Filter::parse_mode(
            "x",
            "description = \"d\"\nmode = \"a\"\nfailregex = [\"a <HOST>\"]\n[modes.a]\ninclude = [\"b\"]\n[modes.b]\ninclude = [\"a\"]\n",
            Some("a"),
        );
        // A cycle is harmless (each mode once), a helper needs a session.
        assert!(e.is_ok(), "{e:?}");
        let e = Filter::parse(
            "x",
            "description = \"d\"\nfailregex = [\"a <HOST>\"]\nhelperregex = [\"b <HOST>\"]",
        )
        .unwrap_err();
        assert!(e.message.contains("no <SID>"), "{e}");
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
            f.check_line(b"bad login from 999.1.2.3"),
            Verdict::BadAddress("999.1.2.3".into())
        );
        assert_eq!(
            f.check_line(b"bad login from ::ffff:192.0.2.1"),
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
