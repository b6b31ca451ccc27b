//! The sticky table against the map it replaced (`Expiring`, a DashMap of key -> region and
//! two timestamps), in one run: memory per entry over a million entries, then time per
//! lookup, per refresh and per new client at capacity.
//!
//! Memory, printed before the timings: for the compact table its own allocation count
//! (`StickyTable::allocated_bytes`) divided by entries, and for both the resident-set growth
//! (/proc/self/statm) while filling, divided by entries.

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

use berth::expiring::Expiring;
use berth::routing::ClientKey;
use berth::sticky::{StickyKey, StickyTable};
use criterion::{criterion_group, criterion_main, Criterion};

/// 2^20: the compact table rounds capacity to buckets of 8, this is exact for both.
const CAPACITY: usize = 1 << 20;
const ENTRIES: usize = 1_000_000;
const IDLE: Duration = Duration::from_secs(900);
const MAX_AGE: Duration = Duration::from_secs(3600);

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("linux /proc");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm resident field");
    pages * 4096
}

/// Client number `i` as a distinct /24 (a new routed name every 2^24 clients).
fn key(i: u64) -> StickyKey {
    let b = (i as u32).to_be_bytes();
    (
        i >> 24,
        ClientKey::new(IpAddr::from([b[1], b[2], b[3], 0]), 24),
    )
}

fn per_entry(what: &str, bytes: u64, entries: usize) {
    println!(
        "{what}: {entries} entries, {:.1} MiB, {:.1} bytes per entry",
        bytes as f64 / f64::from(1 << 20),
        bytes as f64 / entries as f64
    );
}

/// Fill the compact table with distinct clients until it holds `ENTRIES` (it admits into
/// empty and expired slots only, so slightly more clients than entries are offered).
/// Returns how many clients were offered.
fn fill_compact(t: &StickyTable) -> u64 {
    let mut i = 0u64;
    while t.len() < ENTRIES {
        for _ in 0..4096 {
            t.record(key(i), Some(i % 4), 0);
            i += 1;
        }
    }
    i
}

fn bench(c: &mut Criterion) {
    let before = rss_bytes();
    let compact = StickyTable::new(CAPACITY, IDLE, MAX_AGE);
    per_entry(
        "compact, empty (resident growth)",
        rss_bytes() - before,
        compact.slots(),
    );
    let offered = fill_compact(&compact);
    let grown = rss_bytes() - before;
    println!(
        "compact: capacity {} slots, {offered} clients offered",
        compact.slots()
    );
    per_entry(
        "compact (allocated)",
        compact.allocated_bytes() as u64,
        compact.len(),
    );
    per_entry("compact (resident growth)", grown, compact.len());

    let before = rss_bytes();
    let old: Expiring<StickyKey, u64> = Expiring::new(CAPACITY, IDLE, MAX_AGE);
    for i in 0..ENTRIES as u64 {
        old.record(key(i), i % 4, 0);
    }
    per_entry(
        "expiring (resident growth)",
        rss_bytes() - before,
        old.len(),
    );

    // Clients both tables remember, for lookups that hit in both.
    let hits: Vec<u64> = (0..ENTRIES as u64)
        .filter(|i| compact.get(&key(*i), 1).is_some())
        .collect();
    let mut n = 0usize;
    let mut next_hit = || {
        n = (n + 7919) % hits.len();
        key(hits[n])
    };
    c.bench_function("sticky/compact/get-hit", |b| {
        b.iter(|| black_box(compact.get(&next_hit(), 1)))
    });
    c.bench_function("sticky/expiring/get-hit", |b| {
        b.iter(|| black_box(old.get(&next_hit(), 1)))
    });
    // The DNS path per query: a lookup, then a record of the same answer.
    c.bench_function("sticky/compact/get-record", |b| {
        b.iter(|| {
            let k = next_hit();
            let r = compact.get(&k, 2);
            compact.record(k, black_box(r), 2);
        })
    });
    c.bench_function("sticky/expiring/get-record", |b| {
        b.iter(|| {
            let k = next_hit();
            if let Some((r, _)) = old.get(&k, 2) {
                old.record(k, black_box(r), 2);
            }
        })
    });
    // New clients at capacity: the compact table's admission test, the old table's growth
    // and batched eviction (expired first, then least recent, down to 90%).
    let mut fresh = 1u64 << 32;
    c.bench_function("sticky/compact/record-new-at-capacity", |b| {
        b.iter(|| {
            fresh += 1;
            compact.record(key(fresh), Some(1), 3);
        })
    });
    c.bench_function("sticky/expiring/record-new-at-capacity", |b| {
        b.iter(|| {
            fresh += 1;
            old.record(key(fresh), 1, 3);
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
