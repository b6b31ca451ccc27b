//! `berth_build_info` and the standard `process_*` metrics (the names the Prometheus client
//! libraries use), read from `/proc/self` at render time: nothing is kept or sampled.

use std::fmt::Write as _;

/// The version and the commit Berth was built from (`build.rs` sets `BERTH_COMMIT`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("BERTH_COMMIT");
pub const BUILD_DATE: &str = env!("BERTH_BUILD_DATE");

/// Which Berth answers: host name, version and commit (the dashboard's header shows them).
pub fn instance() -> serde_json::Value {
    serde_json::json!({
        "host": host_name(),
        "version": VERSION,
        "commit": COMMIT,
        "build_date": BUILD_DATE,
    })
}

/// This machine's host name (the kernel's, as `hostname` prints it), or "unknown".
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

pub fn render_build_info(o: &mut String) {
    let _ = writeln!(
        o,
        "# HELP berth_build_info Always 1; the labels say which Berth this is.\n\
         # TYPE berth_build_info gauge\n\
         berth_build_info{{version=\"{VERSION}\",commit=\"{COMMIT}\"}} 1"
    );
}

/// What `/proc/self/stat` says, in base units.
#[derive(Debug, PartialEq)]
struct Stat {
    cpu_seconds: f64,
    start_time_seconds: f64,
    virtual_bytes: u64,
    resident_bytes: u64,
}

/// Parses `/proc/self/stat` (proc(5)); `ticks` is `_SC_CLK_TCK`, `page` the page size and
/// `boot` the boot time in Unix seconds (`btime` in `/proc/stat`).
fn parse_stat(stat: &str, ticks: f64, page: u64, boot: f64) -> Option<Stat> {
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field N is f[N - 3].
    let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        cpu_seconds: (num(14)? + num(15)?) as f64 / ticks,
        start_time_seconds: boot + num(22)? as f64 / ticks,
        virtual_bytes: num(23)?,
        resident_bytes: num(24)? * page,
    })
}

fn boot_time() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

/// The `process_*` families; on a system without `/proc` (not Linux) nothing is written.
pub fn render_process(o: &mut String) {
    let (ticks, page) = crate::limits::clock_ticks_and_page_size();
    let stat = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .zip(boot_time())
        .and_then(|(s, boot)| parse_stat(&s, ticks, page, boot));
    let mut one = |name: &str, kind: &str, help: &str, v: String| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    };
    if let Some(s) = stat {
        one(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            s.cpu_seconds.to_string(),
        );
        one(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            s.resident_bytes.to_string(),
        );
        one(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            s.virtual_bytes.to_string(),
        );
        one(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            s.start_time_seconds.to_string(),
        );
    }
    if let Some(n) = open_fds() {
        // The directory listing itself holds one descriptor while it is read.
        one(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            n.saturating_sub(1).to_string(),
        );
    }
    if let Some(n) = crate::limits::open_files_limit() {
        one(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            n.to_string(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_found_after_a_command_name_with_spaces() {
        let line = "42 (berth (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 3 0 \
                    1000 123456789 2048 18446744073709551615";
        let s = parse_stat(line, 100.0, 4096, 1_700_000_000.0).expect("parses");
        assert_eq!(
            s,
            Stat {
                cpu_seconds: 4.0,
                start_time_seconds: 1_700_000_010.0,
                virtual_bytes: 123456789,
                resident_bytes: 2048 * 4096,
            }
        );
    }
}
