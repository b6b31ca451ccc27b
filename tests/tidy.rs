//! The invariants ARCHITECTURE.md states that a grep can keep (as rust-analyzer's `tidy`
//! test does): which modules may name which crates, where time and randomness may be read,
//! where `unsafe` may appear, no import cycles between modules, and no function so long that
//! its rule can only be tested end to end. Each failure names the file and line to fix.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under src/, as (path relative to src/, text).
fn files() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read src/") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut paths = Vec::new();
    walk(&src(), &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(src())
                .expect("under src")
                .to_string_lossy()
                .replace('\\', "/");
            (rel, std::fs::read_to_string(&p).expect("read source"))
        })
        .collect()
}

/// The code of a file without comments and without its `#[cfg(test)]` module (tests may
/// use anything), line numbers kept.
fn code(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_tests = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            in_tests = true;
        }
        if in_tests {
            continue;
        }
        let no_comment = match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        };
        out.push((i + 1, no_comment.to_string()));
    }
    out
}

/// Files (prefixes of paths relative to src/) allowed to name `what`.
fn only_in(what: &str, allowed: &[&str]) -> Vec<String> {
    let mut bad = Vec::new();
    for (path, text) in files() {
        if allowed.iter().any(|a| path.starts_with(a)) {
            continue;
        }
        for (n, line) in code(&text) {
            if line.contains(what) {
                bad.push(format!("src/{path}:{n}: {}", line.trim()));
            }
        }
    }
    bad
}

fn assert_none(rule: &str, bad: Vec<String>) {
    assert!(bad.is_empty(), "{rule}:\n{}", bad.join("\n"));
}

#[test]
fn hickory_only_in_dns_zone_and_the_resolver() {
    assert_none(
        "only dns, zone and proxy::upstream (its resolver) name hickory (ARCHITECTURE.md)",
        only_in("hickory_", &["dns", "zone/", "proxy/upstream.rs"]),
    );
}

#[test]
fn pingora_only_in_the_proxy() {
    assert_none(
        "only proxy names pingora (ARCHITECTURE.md)",
        only_in("pingora", &["proxy"]),
    );
}

#[test]
fn the_core_reads_no_clock_and_no_randomness() {
    // Tables whose keys clients choose seed their hasher at random (DoS resistance): that
    // changes where an entry lives, never what is answered, so the seeded hasher is allowed
    // in `expiring`; decisions use the fixed hash in routing.
    let pure = [
        "routing.rs",
        "sticky.rs",
        "expiring.rs",
        "geo/mod.rs",
        "health/state.rs",
    ];
    let forbidden = [
        "Instant",
        "SystemTime",
        "rand::",
        "thread_rng",
        "getrandom",
        "tokio",
        "std::net::UdpSocket",
        "std::fs",
    ];
    let mut bad = Vec::new();
    for (path, text) in files() {
        if !pure.contains(&path.as_str()) {
            continue;
        }
        for (n, line) in code(&text) {
            for f in forbidden {
                if line.contains(f) {
                    bad.push(format!("src/{path}:{n}: {f}: {}", line.trim()));
                }
            }
            if line.contains("RandomState") && path != "expiring.rs" {
                bad.push(format!("src/{path}:{n}: RandomState: {}", line.trim()));
            }
        }
    }
    assert_none(
        "routing, sticky, geo and health state take time and seeds as parameters",
        bad,
    );
}

#[test]
fn unsafe_only_in_the_socket_code() {
    assert_none(
        "`unsafe` only in the OS-call edges: the UDP socket code (dns/server.rs), limits.rs, and \
         memory.rs (madvise and the CPU's prefetch hint)",
        only_in("unsafe", &["dns/server.rs", "limits.rs", "memory.rs"]),
    );
}

/// A file's module path: `dns.rs` -> `dns`, `dns/tables.rs` -> `dns::tables`,
/// `proxy/mod.rs` -> `proxy`.
fn module_of(path: &str) -> String {
    path.trim_end_matches(".rs")
        .trim_end_matches("/mod")
        .replace('/', "::")
}

/// The module an import path names: the longest prefix that is a module file under src/.
fn module_named(segments: &[&str]) -> Option<String> {
    (1..=segments.len()).rev().find_map(|n| {
        let rel = segments[..n].join("/");
        (src().join(format!("{rel}.rs")).exists() || src().join(&rel).join("mod.rs").exists())
            .then(|| segments[..n].join("::"))
    })
}

fn path_segments(rest: &str) -> Vec<&str> {
    rest.split("::")
        .map(|s| {
            let end = s
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(s.len());
            &s[..end]
        })
        .take_while(|s| !s.is_empty())
        .collect()
}

/// `unwrap()` only in tests: elsewhere `expect("why this holds")` or an error the caller
/// handles (a panic in a worker is caught, but it is still a bug).
#[test]
fn no_unwrap_outside_tests() {
    assert_none(
        "no unwrap() in src/ outside #[cfg(test)] (use expect with the invariant, or ?)",
        only_in(".unwrap()", &[]),
    );
}

/// `crate::` and `super::` imports between modules (submodules count on their own, so a
/// parent's child may import a sibling): no cycles.
#[test]
fn no_import_cycle_between_modules() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in files() {
        let from = module_of(&path);
        if from == "lib" || from == "main" {
            continue;
        }
        let parent: Vec<&str> = {
            let mut p: Vec<&str> = from.split("::").collect();
            p.pop();
            p
        };
        for (_, line) in code(&text) {
            for (prefix, base) in [("crate::", Vec::new()), ("super::", parent.clone())] {
                let mut rest = line.as_str();
                while let Some(at) = rest.find(prefix) {
                    // `crate::` inside `super::...` paths is not ours to read twice.
                    rest = &rest[at + prefix.len()..];
                    let mut segs = base.clone();
                    segs.extend(path_segments(rest));
                    if let Some(to) = module_named(&segs) {
                        let ancestor = from.starts_with(&format!("{to}::"));
                        if to != from && !ancestor {
                            edges.entry(from.clone()).or_default().insert(to);
                        }
                    }
                }
            }
        }
    }
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        if let Some(cycle) = visit(n, &edges, &mut Vec::new(), &mut done) {
            panic!(
                "import cycle between modules: {} (see ARCHITECTURE.md's code map)",
                cycle.join(" -> ")
            );
        }
    }
}

/// Depth-first search for a back edge; the cycle it closes.
fn visit(
    n: &str,
    edges: &BTreeMap<String, BTreeSet<String>>,
    stack: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(at) = stack.iter().position(|s| s == n) {
        let mut cycle = stack[at..].to_vec();
        cycle.push(n.to_string());
        return Some(cycle);
    }
    if done.contains(n) {
        return None;
    }
    stack.push(n.to_string());
    for m in edges.get(n).into_iter().flatten() {
        if let Some(c) = visit(m, edges, stack, done) {
            return Some(c);
        }
    }
    stack.pop();
    done.insert(n.to_string());
    None
}

/// The longest function in src/ (outside tests) stays under 100 lines: a rule that long
/// can only be tested end to end.
#[test]
fn no_function_of_100_lines_or_more() {
    let mut bad = Vec::new();
    for (path, text) in files() {
        let lines = code(&text);
        let mut i = 0;
        while i < lines.len() {
            let (n, line) = &lines[i];
            let t = line.trim_start();
            let is_fn = [
                "fn ",
                "pub fn ",
                "pub(crate) fn ",
                "async fn ",
                "pub async fn ",
            ]
            .iter()
            .any(|p| t.starts_with(p))
                && !t.ends_with(';');
            if !is_fn {
                i += 1;
                continue;
            }
            // From the signature to the line closing its body at the same indentation.
            let indent = line.len() - t.len();
            let close = format!("{}}}", " ".repeat(indent));
            let end = lines[i..]
                .iter()
                .position(|(_, l)| l.starts_with(&close) && l.trim() == "}")
                .map_or(i, |k| i + k);
            let len = lines[end].0 - n + 1;
            if len >= 100 {
                bad.push(format!("src/{path}:{n}: {len} lines: {}", t.trim()));
            }
            i += 1;
        }
    }
    assert_none("functions under 100 lines", bad);
}
