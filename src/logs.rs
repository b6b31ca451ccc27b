//! Log output: text (coloured only on a terminal, never with `NO_COLOR`) or JSON lines, the
//! level filter, and the two optional per-request logs (DNS queries, proxy access), which are
//! off by default and share the same format.
//!
//! The per-request logs are switched by a flag read with one relaxed atomic load on the hot
//! path: when off, nothing is formatted.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

/// The `tracing` target of proxy access log lines (one per proxied request).
pub const ACCESS_TARGET: &str = "berth::access";
/// The `tracing` target of DNS query log lines (one per query).
pub const QUERY_TARGET: &str = "berth::query";
/// The environment variable holding the log filter (`info`, `warn,berth::proxy=debug`).
pub const FILTER_ENV: &str = "BERTH_LOG";

static ACCESS: AtomicBool = AtomicBool::new(false);
static QUERIES: AtomicBool = AtomicBool::new(false);
/// Switched on by the command line (or its environment variable): on for the whole run.
static ACCESS_FORCED: AtomicBool = AtomicBool::new(false);
static QUERIES_FORCED: AtomicBool = AtomicBool::new(false);

/// Whether the proxy writes an access log line per request.
pub fn access_log_on() -> bool {
    ACCESS.load(Ordering::Relaxed)
}

/// Whether DNS writes a log line per query.
pub fn query_log_on() -> bool {
    QUERIES.load(Ordering::Relaxed)
}

/// Switch the per-request logs on for the whole run (`serve --access-log`, `--query-log`):
/// the config cannot switch these off.
pub fn enable(access: bool, queries: bool) {
    if access {
        ACCESS_FORCED.store(true, Ordering::Relaxed);
        ACCESS.store(true, Ordering::Relaxed);
    }
    if queries {
        QUERIES_FORCED.store(true, Ordering::Relaxed);
        QUERIES.store(true, Ordering::Relaxed);
    }
}

/// Apply the config's `[log] access` and `queries` (at start and at each reload), on top of
/// the command line's; says in the log when a per-request log is switched on or off.
pub fn apply_config(access: bool, queries: bool) {
    for (name, on, forced, flag) in [
        ("proxy access log", access, &ACCESS_FORCED, &ACCESS),
        ("DNS query log", queries, &QUERIES_FORCED, &QUERIES),
    ] {
        let next = on || forced.load(Ordering::Relaxed);
        if flag.swap(next, Ordering::Relaxed) != next {
            tracing::info!("{name} {}", if next { "on" } else { "off" });
        }
    }
}

/// The shape of log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One human-readable line per event (`time LEVEL target: message key=value`).
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`).
    Json,
}

/// Whether text logs get ANSI colours: only on a terminal, and never when `NO_COLOR` is set
/// to anything non-empty (<https://no-color.org>).
pub fn want_colour(is_terminal: bool, no_color: Option<&str>) -> bool {
    is_terminal && no_color.is_none_or(str::is_empty)
}

/// Install the global subscriber writing to stderr. `filter` is a level or a full filter
/// (`--log-level`, else `BERTH_LOG`, else `info`); a bad one is an error naming it.
pub fn init(format: Format, filter: Option<&str>) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let spec = filter.map(str::to_string).unwrap_or_else(|| "info".into());
    let filter = EnvFilter::try_new(&spec).map_err(|e| {
        format!("invalid log filter {spec:?} (--log-level or {FILTER_ENV}): {e}; use a level such as info, or info,berth::proxy=debug")
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let done = match format {
        Format::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        Format::Text => {
            let no_color = std::env::var("NO_COLOR").ok();
            let colour = want_colour(std::io::stderr().is_terminal(), no_color.as_deref());
            builder.with_ansi(colour).try_init()
        }
    };
    done.map_err(|e| format!("cannot install the logger: {e}"))
}

/// One DNS query log line, when the query log is on: client, transport, the question, the
/// answer's response code and record count (no answer: dropped or rate limited).
pub fn log_query(client: std::net::IpAddr, transport: &str, query: &[u8], answer: Option<&[u8]>) {
    if !query_log_on() {
        return;
    }
    let (name, qtype) = question(query).unwrap_or_else(|| ("-".into(), 0));
    let (rcode, answers) = match answer {
        Some(a) if a.len() >= 12 => (
            i64::from(a[3] & 0x0f),
            i64::from(u16::from_be_bytes([a[6], a[7]])),
        ),
        _ => (-1, 0),
    };
    tracing::info!(
        target: QUERY_TARGET,
        %client,
        transport,
        name = %name,
        qtype,
        rcode,
        answers,
        bytes = answer.map_or(0, <[u8]>::len),
        "query"
    );
}

/// The first question's name (dotted, lowercase as sent) and type, read from a query's wire
/// form; None when it is malformed. Queries carry no compression pointers in the question.
fn question(msg: &[u8]) -> Option<(String, u16)> {
    let mut i = 12;
    let mut name = String::new();
    loop {
        let len = usize::from(*msg.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        let label = msg.get(i..i + len)?;
        name.extend(
            label
                .iter()
                .map(|b| char::from(*b))
                .filter(|c| !c.is_control()),
        );
        name.push('.');
        i += len;
    }
    if name.is_empty() {
        name.push('.');
    }
    let qtype = u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]);
    Some((name, qtype))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(want_colour(true, None));
        assert!(want_colour(true, Some("")));
        assert!(!want_colour(true, Some("1")));
        assert!(!want_colour(false, None));
    }

    #[test]
    fn the_question_is_read_from_a_query() {
        let mut q = vec![0u8; 12];
        q.extend_from_slice(b"\x08registry\x07example\x04test\x00\x00\x01\x00\x01");
        assert_eq!(question(&q), Some(("registry.example.test.".into(), 1)));
        assert_eq!(question(&q[..20]), None);
    }
}
