//! The sticky table: time per lookup and per record, and memory per entry (resident set
//! growth over a million entries, read from /proc/self/statm), printed before the timings.

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

use berth::routing::ClientKey;
use berth::sticky::StickyTable;
use criterion::{criterion_group, criterion_main, Criterion};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("linux /proc");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm resident field");
    pages * 4096
}

fn key(i: u32) -> (u64, ClientKey) {
    let b = i.to_be_bytes();
    (0, ClientKey::new(IpAddr::from([b[1], b[2], b[3], 0]), 24))
}

fn bench(c: &mut Criterion) {
    const N: u32 = 1_000_000;
    let table = StickyTable::new(
        2_000_000,
        Duration::from_secs(900),
        Duration::from_secs(3600),
    );
    let before = rss_bytes();
    for i in 0..N {
        table.record(key(i), Some(u64::from(i % 4)), u64::from(i));
    }
    let after = rss_bytes();
    println!(
        "sticky table: {} entries, resident set grew {:.1} MiB, {:.0} bytes per entry",
        table.len(),
        (after - before) as f64 / (1 << 20) as f64,
        (after - before) as f64 / f64::from(N)
    );

    let mut i = 0u32;
    c.bench_function("sticky/get-hit-1M", |b| {
        b.iter(|| {
            i = (i + 7919) % N;
            black_box(table.get(&key(i), u64::from(N)))
        })
    });
    c.bench_function("sticky/record-refresh-1M", |b| {
        b.iter(|| {
            i = (i + 7919) % N;
            table.record(key(i), Some(u64::from(i % 4)), u64::from(N));
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
