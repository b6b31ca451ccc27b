//! The routing decision on the demo config: the pure core alone, and the whole
//! `Snapshot::route` (GeoIP lookup + decision) that every routed DNS answer pays.

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;

use berth::config::Config;
use berth::geo::Location;
use berth::routing::{decide, ClientKey, Query};
use berth::snapshot::Snapshot;
use criterion::{criterion_group, criterion_main, Criterion};

fn bench(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml");
    let snap = Snapshot::load(Config::load(&path).expect("demo config"), 0).expect("demo loads");
    let rn = &snap.config.routed_names[0];
    let tokyo = Location {
        latitude: 35.68,
        longitude: 139.69,
        country: Some("JP".into()),
        continent: Some("AS".into()),
        city: Some("Tokyo".into()),
    };
    let addr: IpAddr = "198.51.100.7".parse().expect("literal");
    c.bench_function("decide/performance/4-regions", |b| {
        b.iter(|| {
            let q = Query {
                key: ClientKey::new(black_box(addr), 24),
                location: Some(&tokyo),
                sticky: None,
            };
            black_box(decide(&snap.config, rn, &snap.states, &q))
        })
    });
    let addrs: Vec<IpAddr> = [
        "198.51.100.7",
        "203.0.113.9",
        "2001:db8:1::1",
        "2001:db8:2::1",
        "192.0.2.1",
    ]
    .iter()
    .map(|a| a.parse().expect("literal"))
    .collect();
    c.bench_function("snapshot-route/geoip+decide", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % addrs.len();
            black_box(snap.route(rn, black_box(addrs[i])))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
