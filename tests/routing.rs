//! The routing core, table-driven: each case renders the decision's explanation and compares
//! it with the expected text; then properties over random inputs.

use std::net::IpAddr;
use std::path::Path;

use berth::config::Config;
use berth::geo::Location;
use berth::routing::{decide, ClientKey, Eligibility, Query, RegionState, Why};
use expect_test::{expect, Expect};
use proptest::prelude::*;

const REGIONS: &str = r#"
[dns]
listen = ["127.0.0.1:0"]

[[zone]]
origin = "example.test"
file = "zone"

[[region]]
name = "westus"
latitude = 47.6
longitude = -122.3
a = ["192.0.2.10"]

[[region]]
name = "eastus"
latitude = 37.4
longitude = -79.0
a = ["192.0.2.20"]

[[region]]
name = "westeurope"
latitude = 52.4
longitude = 4.9
a = ["192.0.2.30"]

[[region]]
name = "southeastasia"
latitude = 1.3
longitude = 103.8
a = ["192.0.2.40"]
"#;

fn config(routed: &str) -> Config {
    let text = format!("{REGIONS}\n[[routed_name]]\n{routed}");
    Config::parse(&text, Path::new("test.toml")).expect("test config is valid")
}

const PERF: &str = r#"
name = "registry.example.test"
regions = ["westus", "eastus", "westeurope", "southeastasia"]
"#;

fn loc(lat: f64, lon: f64, country: &str, continent: &str, city: &str) -> Location {
    Location {
        latitude: lat,
        longitude: lon,
        country: Some(country.into()),
        continent: Some(continent.into()),
        city: Some(city.into()),
    }
}

fn tokyo() -> Location {
    loc(35.68, 139.69, "JP", "AS", "Tokyo")
}

/// Render one decision. `states` is a string with one letter per region in file order:
/// u = up, d = down (unhealthy), x = disabled.
fn check(cfg: &Config, client: &str, location: Option<Location>, states: &str, sticky: Option<&str>, expect: Expect) {
    let states: Vec<RegionState> = states
        .chars()
        .map(|c| match c {
            'u' => RegionState { enabled: true, healthy: true },
            'd' => RegionState { enabled: true, healthy: false },
            'x' => RegionState { enabled: false, healthy: true },
            _ => panic!("state letters are u, d, x"),
        })
        .collect();
    let rn = &cfg.routed_names[0];
    let addr: IpAddr = client.parse().expect("test address");
    let query = Query {
        key: ClientKey::new(addr, rn.client_prefix(&addr)),
        location: location.as_ref(),
        sticky: sticky.map(|s| cfg.region_id(s).expect("sticky region exists")),
    };
    let d = decide(cfg, rn, &states, &query);
    expect.assert_eq(&d.explain(cfg, rn, location.as_ref()));
}

#[test]
fn performance_picks_the_nearest_region() {
    let cfg = config(PERF);
    check(&cfg, "198.51.100.7", Some(tokyo()), "uuuu", None, expect![[r#"
        name registry.example.test policy performance client 198.51.100.0/24
        location Tokyo (35.68, 139.69) country JP continent AS
          westus           eligible  118.3 ms (7552 km) hash 3ff6c8b9cbf76fd0
          eastus           eligible  169.5 ms (10968 km) hash 4e4c6b3bca5dc7c2
          westeurope       eligible  140.7 ms (9045 km) hash 3b3b0e4d8c1c0f4e
        * southeastasia    eligible  84.0 ms (5269 km) hash 1b2e4b2d3c27ad0c
        chosen southeastasia: lowest estimated latency
    "#]]);
}
