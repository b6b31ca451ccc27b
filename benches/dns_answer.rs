//! The DNS engine in-process, packet in -> packet out, no sockets: what a UDP worker spends
//! in user space per query. Routed name with ECS (GeoIP + decision + sticky), and static data.

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;

use berth::dns::{answer, answer_into, Transport};
use berth::flags::Flags;
use berth::live::Live;
use berth::snapshot::Snapshot;
use criterion::{criterion_group, criterion_main, Criterion};

fn query(name: &str, qtype: u16, ecs: Option<([u8; 3], u8)>) -> Vec<u8> {
    let mut q = vec![
        0x12,
        0x34,
        0,
        0,
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        u8::from(ecs.is_some()),
    ];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, (qtype >> 8) as u8, qtype as u8, 0, 1]);
    if let Some((addr, prefix)) = ecs {
        q.extend_from_slice(&[
            0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 11, 0, 8, 0, 7, 0, 1, prefix, 0,
        ]);
        q.extend_from_slice(&addr);
    }
    q
}

fn bench(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml");
    let config = berth::config::Config::load(&path).expect("demo config");
    let dir = std::env::temp_dir().join(format!("berth-bench-{}", std::process::id()));
    let flags = Flags::load(&dir.join("state.json")).expect("flags");
    let live = Live::new(Snapshot::load(config, 0).expect("demo loads"), flags, &path);
    let src: IpAddr = "127.0.0.1".parse().expect("literal");
    // Distinct client subnets, as from many resolvers: Tokyo, Sao Paulo and unknown /24s.
    let routed: Vec<Vec<u8>> = (0..=255u8)
        .flat_map(|i| {
            [
                query("registry.example.test", 1, Some(([198, 51, 100], 24))),
                query("registry.example.test", 1, Some(([203, 0, 113], 24))),
                query("registry.example.test", 1, Some(([10, i, 0], 24))),
            ]
        })
        .collect();
    let mut i = 0;
    c.bench_function("dns/answer/routed-A-with-ECS", |b| {
        b.iter(|| {
            i = (i + 1) % routed.len();
            black_box(answer(&live, black_box(&routed[i]), src, Transport::Udp))
        })
    });
    // The same with a client cookie (RFC 7873), as BIND's resolver sends on every query: the
    // fast path mints an RFC 9018 server cookie (one SipHash-2-4) into the answer.
    let cookie: Vec<Vec<u8>> = routed
        .iter()
        .map(|q| {
            let mut q = q.clone();
            q[49] += 12; // OPT RDLENGTH: ECS (11) + COOKIE (4 + 8)
            q.extend_from_slice(&[0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
            q
        })
        .collect();
    assert!(answer(&live, &cookie[0], src, Transport::Udp).is_some());
    c.bench_function("dns/answer/routed-A-with-ECS-and-cookie", |b| {
        b.iter(|| {
            i = (i + 1) % cookie.len();
            black_box(answer(&live, black_box(&cookie[i]), src, Transport::Udp))
        })
    });
    // Static data and negative answers, into one reused buffer as the UDP loop does: the fast
    // path answers all three (static A and NODATA precomputed, NXDOMAIN from the zone's names).
    let mut out = Vec::with_capacity(512);
    for (what, q) in [
        ("static-A", query("static.example.test", 1, None)),
        ("static-nodata-MX", query("static.example.test", 15, None)),
        ("nxdomain", query("nope.example.test", 1, None)),
    ] {
        c.bench_function(&format!("dns/answer/{what}"), |b| {
            b.iter(|| {
                black_box(answer_into(
                    &live,
                    black_box(&q),
                    src,
                    Transport::Udp,
                    None,
                    &mut out,
                ))
            })
        });
    }
    c.bench_function("dns/answer/routed-A-with-ECS-reused-buffer", |b| {
        b.iter(|| {
            i = (i + 1) % routed.len();
            black_box(answer_into(
                &live,
                black_box(&routed[i]),
                src,
                Transport::Udp,
                None,
                &mut out,
            ))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
