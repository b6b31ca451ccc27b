//! What the proxy adds per request before any byte moves: parsing the path, checking an upload
//! token, signing the next one into a `Location`, and the affinity lookup. (The network side is
//! measured against nginx by `benches/proxy-peers.sh`.)

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

use berth::proxy::affinity::AffinityTable;
use berth::proxy::{oci, token};
use berth::routing::ClientKey;
use criterion::{criterion_group, criterion_main, Criterion};

const UUID: &str = "4e0b3f7a-1d52-4b8e-9a8e-2f3c6a1b9d10";
const BLOB: &str =
    "/v2/team/app/blobs/sha256:f612bd81e87dc4ddbeeb396801ec82c890937a92bf896522c6008cdbfdca3aa7";

fn bench(c: &mut Criterion) {
    let signer = token::Signer::new(b"0123456789abcdef0123456789abcdef");
    // Any fixed times will do: expiry checks are one comparison.
    let tok = signer.sign("westus", "team/app", UUID, 1_800_086_400);
    let location = format!(
        "http://registry.example.test:8080/v2/team/app/blobs/uploads/{UUID}?_state=aQ47vRNtIQbSUcymU3J6pIkAkepMAEqwpT0AcS0QD417Ik5hbWUiOiJ0ZWFtL3giLCJVVUlEIjoiZjE1ZTExODItMGFjNC00NDM1LTlhNGItYjQzZWQyNmM3NjAwIiwiT2Zmc2V0IjowLCJTdGFydGVkQXQiOiIyMDI2LTExLTIxVDIzOjI3OjAwLjA2NDQ1MTAyN1oifQ%3D%3D"
    );
    c.bench_function("oci::parse blob path", |b| {
        b.iter(|| oci::parse(black_box(BLOB)))
    });
    c.bench_function("token verify", |b| {
        b.iter(|| signer.verify(black_box(&tok), "team/app", UUID, 1_800_000_000))
    });
    c.bench_function("Location rewrite with a new token", |b| {
        b.iter(|| {
            let t = signer.sign("westus", "team/app", UUID, 1_800_086_400);
            token::rewrite_location(
                black_box(&location),
                "127.0.0.1:5001",
                "http://registry.example.test:8080",
                Some(&t),
            )
        })
    });
    let table = AffinityTable::new(2_000_000, Duration::from_secs(900));
    for i in 0..100_000u32 {
        let b = i.to_be_bytes();
        let key = ClientKey::new(IpAddr::from([10, b[1], b[2], b[3]]), 24);
        table.record(key, "team/app", "westus", 0);
    }
    let key = ClientKey::new(IpAddr::from([10, 0, 7, 1]), 24);
    c.bench_function("affinity get + record (100k entries)", |b| {
        b.iter(|| {
            let r = table.get(key, black_box("team/app"), 10);
            table.record(key, "team/app", "westus", 10);
            r
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
