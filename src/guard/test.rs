//! `ilot guard test FILTER LOGFILE`: a filter tried on a whole file, like fail2ban-regex —
//! each matching line with the address it yields, then the counts. Runs in the CLI (no
//! daemon), on every core: the file is cut at line boundaries into one chunk per core.

use super::filter::{Filter, Sessions, Verdict};
use crate::error::Error;
use serde_json::json;
use std::path::Path;

#[derive(Default)]
struct Counts {
    lines: u64,
    matched: u64,
    ignored: u64,
    bad_address: u64,
    /// Helper lines (a session's address) and failures still waiting for one.
    session: u64,
    /// (line index in the chunk, verdict) of the lines to print.
    shown: Vec<(u64, Verdict)>,
}

pub fn run(
    name: &str,
    mode: Option<&str>,
    logfile: &Path,
    filters_dir: &Path,
    summary: bool,
    missed: bool,
    json: bool,
) -> i32 {
    let filter = match Filter::load_mode(name, mode, filters_dir) {
        Ok(f) => f,
        Err(e) => return crate::cli::render::error(&e, json),
    };
    let data = match std::fs::read(logfile) {
        Ok(d) => d,
        Err(e) => {
            return crate::cli::render::error(
                &Error::bad_input(format!("cannot read {}: {e}", logfile.display())),
                json,
            )
        }
    };
    let started = std::time::Instant::now();
    let keep = !summary;
    // One chunk per core, of at least 4 MiB: a session cut by a chunk's end loses its
    // earlier lines, which only the lines at a few boundaries of a big file can suffer.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(16)
        .min(data.len() / (4 << 20) + 1);
    let chunks = split_chunks(&data, threads);
    let results: Vec<Counts> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| scope.spawn(|| check_chunk(&filter, chunk, keep, missed)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let mut total = Counts::default();
    let mut shown = Vec::new();
    for (chunk, r) in chunks.iter().zip(results) {
        let lines: Vec<&[u8]> = if r.shown.is_empty() {
            Vec::new()
        } else {
            chunk.split(|&b| b == b'\n').collect()
        };
        for (i, v) in r.shown {
            let text = String::from_utf8_lossy(lines.get(i as usize).copied().unwrap_or_default());
            shown.push((total.lines + i + 1, v, text.into_owned()));
        }
        total.lines += r.lines;
        total.matched += r.matched;
        total.ignored += r.ignored;
        total.bad_address += r.bad_address;
        total.session += r.session;
    }
    let missed_count =
        total.lines - total.matched - total.ignored - total.bad_address - total.session;
    let wrong_examples = filter.failing_examples();
    if json {
        let lines: Vec<_> = shown
            .iter()
            .map(|(n, v, text)| {
                let (verdict, address, time) = describe(v);
                json!({"line": n, "verdict": verdict, "address": address, "time": time, "text": text})
            })
            .collect();
        let out = json!({
            "filter": filter.name,
            "mode": filter.mode,
            "modes": filter.modes.iter().filter(|m| !m.0.is_empty()).map(|(m, d, _)| json!({"mode": m, "description": d})).collect::<Vec<_>>(),
            "lines": total.lines,
            "matched": total.matched,
            "ignored": total.ignored,
            "bad_address": total.bad_address,
            "session": total.session,
            "missed": missed_count,
            "seconds": seconds,
            "shown": lines,
            "failing_examples": wrong_examples,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for (n, v, text) in &shown {
            let (verdict, address, time) = describe(v);
            let time = time
                .map(crate::state::format_utc)
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "{n:>8} {verdict:<8} {:<39} {time:<19} | {text}",
                address.unwrap_or_default()
            );
        }
        let _ = writeln!(
            out,
            "{}{}: {} lines: {} matched, {} ignored, {} with a bad address, {} session lines, {} missed ({:.3} s, {:.0} lines/s)",
            filter.name,
            if filter.mode.is_empty() { String::new() } else { format!(" (mode {})", filter.mode) },
            total.lines,
            total.matched,
            total.ignored,
            total.bad_address,
            total.session,
            missed_count,
            seconds,
            total.lines as f64 / seconds.max(1e-9)
        );
        if filter.modes.len() > 1 {
            let _ = writeln!(out, "modes of {} (--mode):", filter.name);
            for (m, d, _) in &filter.modes {
                let _ = writeln!(out, "  {m:<12} {d}");
            }
        }
        for w in &wrong_examples {
            let _ = writeln!(out, "warning: {w}");
        }
    }
    0
}

fn describe(v: &Verdict) -> (&'static str, Option<String>, Option<u64>) {
    match v {
        Verdict::Failure { addr, time } => ("match", Some(addr.to_string()), *time),
        Verdict::Ignored => ("ignored", None, None),
        Verdict::BadAddress(a) => ("bad-addr", Some(a.clone()), None),
        Verdict::Noted => ("session", None, None),
        Verdict::Pending => ("pending", None, None),
        Verdict::Miss => ("missed", None, None),
    }
}

/// Cuts `data` into about `n` chunks that end at line boundaries.
fn split_chunks(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut chunks = Vec::new();
    let mut rest = data;
    let size = data.len() / n.max(1) + 1;
    while !rest.is_empty() {
        let cut = if rest.len() <= size {
            rest.len()
        } else {
            memchr::memchr(b'\n', &rest[size..]).map_or(rest.len(), |i| size + i + 1)
        };
        chunks.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    chunks
}

fn check_chunk(filter: &Filter, chunk: &[u8], keep: bool, missed: bool) -> Counts {
    let mut c = Counts::default();
    let mut sessions = Sessions::default();
    let body = chunk.strip_suffix(b"\n").unwrap_or(chunk);
    if body.is_empty() && chunk.len() <= 1 {
        c.lines = chunk.len() as u64;
        return c;
    }
    let mut start = 0;
    let ends = memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len()));
    for (i, end) in ends.enumerate() {
        let line = &body[start..end];
        start = end + 1;
        c.lines += 1;
        let v = filter.check(line, &mut sessions);
        match &v {
            Verdict::Failure { .. } => c.matched += 1,
            Verdict::Ignored => c.ignored += 1,
            Verdict::BadAddress(_) => c.bad_address += 1,
            Verdict::Noted | Verdict::Pending => c.session += 1,
            Verdict::Miss if !missed => continue,
            Verdict::Miss => {}
        }
        if keep {
            c.shown.push((i as u64, v));
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_end_at_line_boundaries_and_cover_everything() {
        let data = b"aaa\nbb\nc\ndddd\ne\n";
        for n in 1..6 {
            let chunks = split_chunks(data, n);
            assert_eq!(chunks.concat(), data.to_vec());
            assert!(chunks.iter().all(|c| c.ends_with(b"\n")));
        }
    }
}
