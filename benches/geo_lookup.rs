//! `GeoDb::lookup`, the per-query cost of geo routing.
//!
//! Two databases: the committed demo (tiny records, like our builder writes) and a synthetic
//! GeoLite2-City-shaped one (40k IPv4 + 10k IPv6 networks, records with names in five
//! languages, geoname ids, subdivisions, postal codes...) so the cost of skipping the fields we
//! do not read is measured too. `full_city_decode` is the baseline we avoid: the maxminddb
//! crate's own `geoip2::City` decode of the same records.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use berth::geo::GeoDb;
use criterion::{criterion_group, criterion_main, Criterion};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use mmdb_writer::{Value, Writer};

const DEMO_MMDB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/geoip/demo.mmdb");

/// Deterministic xorshift, so every run looks up the same addresses.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn names(en: &str) -> Value {
    Value::map([
        ("de", Value::from(format!("{en} (de)"))),
        ("en", Value::from(en)),
        ("es", Value::from(format!("{en} (es)"))),
        ("fr", Value::from(format!("{en} (fr)"))),
        ("ja", Value::from(format!("{en} (ja)"))),
        ("pt-BR", Value::from(format!("{en} (pt)"))),
        ("ru", Value::from(format!("{en} (ru)"))),
        ("zh-CN", Value::from(format!("{en} (zh)"))),
    ])
}

/// A record with every field a GeoLite2-City record has.
fn geolite2_record(i: u32) -> Value {
    let city = format!("City {i}");
    let country = ["JP", "US", "NL", "BR", "AU", "DE", "SG", "ZA"][i as usize % 8];
    let lat = f64::from(i % 170) - 85.0 + 0.25;
    let lon = f64::from(i % 350) - 175.0 + 0.5;
    Value::map([
        (
            "city",
            Value::map([
                ("geoname_id", Value::from(1_000_000 + i)),
                ("names", names(&city)),
            ]),
        ),
        (
            "continent",
            Value::map([
                ("code", Value::from("AS")),
                ("geoname_id", Value::from(6_255_147_u32)),
                ("names", names("Asia")),
            ]),
        ),
        (
            "country",
            Value::map([
                ("geoname_id", Value::from(1_861_060_u32)),
                ("iso_code", Value::from(country)),
                ("names", names(country)),
            ]),
        ),
        (
            "location",
            Value::map([
                ("accuracy_radius", Value::U16(50)),
                ("latitude", Value::Double(lat)),
                ("longitude", Value::Double(lon)),
                ("time_zone", Value::from("Asia/Tokyo")),
            ]),
        ),
        ("postal", Value::map([("code", Value::from("151-0053"))])),
        (
            "registered_country",
            Value::map([
                ("geoname_id", Value::from(1_861_060_u32)),
                ("iso_code", Value::from(country)),
                ("names", names(country)),
            ]),
        ),
        (
            "subdivisions",
            Value::array([Value::map([
                ("geoname_id", Value::from(2_000_000 + i)),
                ("iso_code", Value::from("13")),
                ("names", names(&format!("Region {i}"))),
            ])]),
        ),
    ])
}

/// A GeoLite2-City-shaped database and addresses that hit it (IPv4 and IPv6 mixed).
fn synthetic() -> (Vec<u8>, Vec<IpAddr>) {
    let mut writer = Writer::new("GeoLite2-City");
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut hits = Vec::new();
    let records: Vec<Value> = (0..2_000).map(geolite2_record).collect();
    for i in 0..40_000u32 {
        // Spread /24s over the space, avoiding the aliased and reserved corners.
        let base = Ipv4Addr::from(((rng.next() as u32) & 0x7fff_ff00) | 0x0100_0000);
        let net = Ipv4Net::new(base, 24).expect("/24");
        writer
            .insert_value(IpNet::V4(net), records[i as usize % records.len()].clone())
            .expect("insert v4");
        if i % 8 == 0 {
            hits.push(IpAddr::V4(Ipv4Addr::from(u32::from(base) | 7)));
        }
    }
    for i in 0..10_000u32 {
        let prefix = (0x2400_u128 << 112) | (u128::from(rng.next() as u32) << 80);
        let net = Ipv6Net::new(Ipv6Addr::from(prefix), 48).expect("/48");
        writer
            .insert_value(IpNet::V6(net), records[i as usize % records.len()].clone())
            .expect("insert v6");
        if i % 4 == 0 {
            hits.push(IpAddr::V6(Ipv6Addr::from(prefix | 0x1234)));
        }
    }
    let bytes = writer.to_bytes().expect("encode");
    (bytes, hits)
}

fn bench_demo(c: &mut Criterion) {
    let db = GeoDb::open(Path::new(DEMO_MMDB)).expect("open geoip/demo.mmdb");
    let mut group = c.benchmark_group("demo");
    for (name, ip) in [
        ("v4_hit", "198.51.100.7"),
        ("v6_hit", "2001:db8:2::1"),
        ("v4_mapped_hit", "::ffff:198.51.100.7"),
        ("v4_miss", "192.0.2.1"),
        ("v6_miss", "2001:db8::10"),
    ] {
        let ip: IpAddr = ip.parse().expect("bench address");
        group.bench_function(name, |b| b.iter(|| db.lookup(black_box(ip))));
    }
    group.finish();
}

fn bench_geolite2_shaped(c: &mut Criterion) {
    let (bytes, hits) = synthetic();
    let db = GeoDb::from_bytes(bytes.clone(), "synthetic GeoLite2-City").expect("open synthetic");
    assert!(
        hits.iter().all(|ip| db.lookup(*ip).is_some()),
        "every hit hits"
    );
    let reader = maxminddb::Reader::from_source(bytes).expect("maxminddb opens it too");

    let mut group = c.benchmark_group("geolite2_shaped");
    let mut i = 0;
    group.bench_function("lookup_mixed_hits", |b| {
        b.iter(|| {
            i = (i + 1) % hits.len();
            db.lookup(black_box(hits[i]))
        })
    });
    let mut i = 0;
    group.bench_function("full_city_decode_baseline", |b| {
        b.iter(|| {
            i = (i + 1) % hits.len();
            let result = reader.lookup(black_box(hits[i])).expect("lookup");
            let city: Option<maxminddb::geoip2::City<'_>> = result.decode().expect("decode");
            let network = result.network().expect("network");
            black_box((city.map(|c| c.location.latitude), network));
        })
    });
    group.finish();
}

criterion_group!(benches, bench_demo, bench_geolite2_shaped);
criterion_main!(benches);
