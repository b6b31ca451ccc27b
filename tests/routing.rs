//! The routing core, table-driven: each case renders the decision's explanation and compares
//! it with the expected text; then properties over random inputs.

use std::net::IpAddr;
use std::path::Path;

use berth::config::Config;
use berth::geo::Location;
use berth::routing::{
    decide, decide_ranked, ClientKey, Eligibility, Query, Rankings, RegionState, Why,
};
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
fn check(
    cfg: &Config,
    client: &str,
    location: Option<Location>,
    states: &str,
    sticky: Option<&str>,
    expect: Expect,
) {
    let states: Vec<RegionState> = states
        .chars()
        .map(|c| match c {
            'u' => RegionState {
                enabled: true,
                healthy: true,
            },
            'd' => RegionState {
                enabled: true,
                healthy: false,
            },
            'x' => RegionState {
                enabled: false,
                healthy: true,
            },
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
    check(
        &cfg,
        "198.51.100.7",
        Some(tokyo()),
        "uuuu",
        None,
        expect![[r#"
        name registry.example.test policy performance client 198.51.100.0/24
        location Tokyo (35.68, 139.69) country JP continent AS
          westus           eligible  120.5 ms (7700 km) hash 8df4ec2f37f7fe98
          eastus           eligible  169.4 ms (10963 km) hash 84a0d90a13253b44
          westeurope       eligible  144.3 ms (9286 km) hash e9cb9224531f9365
        * southeastasia    eligible  84.8 ms (5320 km) hash 6fce63056aae0501
        chosen southeastasia: lowest estimated latency
    "#]],
    );
}

#[test]
fn unhealthy_and_disabled_regions_are_skipped() {
    let cfg = config(PERF);
    check(
        &cfg,
        "198.51.100.7",
        Some(tokyo()),
        "uuxd",
        None,
        expect![[r#"
        name registry.example.test policy performance client 198.51.100.0/24
        location Tokyo (35.68, 139.69) country JP continent AS
        * westus           eligible  120.5 ms (7700 km) hash 8df4ec2f37f7fe98
          eastus           eligible  169.4 ms (10963 km) hash 84a0d90a13253b44
          westeurope       disabled  144.3 ms (9286 km) hash e9cb9224531f9365
          southeastasia    unhealthy 84.8 ms (5320 km) hash 6fce63056aae0501
        chosen westus: lowest estimated latency
    "#]],
    );
}

#[test]
fn all_enabled_regions_down_fails_open() {
    let cfg = config(PERF);
    check(
        &cfg,
        "198.51.100.7",
        Some(tokyo()),
        "ddxd",
        None,
        expect![[r#"
        name registry.example.test policy performance client 198.51.100.0/24
        location Tokyo (35.68, 139.69) country JP continent AS
          westus           unhealthy 120.5 ms (7700 km) hash 8df4ec2f37f7fe98
          eastus           unhealthy 169.4 ms (10963 km) hash 84a0d90a13253b44
          westeurope       disabled  144.3 ms (9286 km) hash e9cb9224531f9365
        * southeastasia    unhealthy 84.8 ms (5320 km) hash 6fce63056aae0501
        chosen southeastasia: lowest estimated latency
        failing open: no enabled region is healthy, so health is ignored
    "#]],
    );
}

#[test]
fn all_disabled_means_no_data() {
    let cfg = config(PERF);
    check(
        &cfg,
        "198.51.100.7",
        Some(tokyo()),
        "xxxx",
        None,
        expect![[r#"
        name registry.example.test policy performance client 198.51.100.0/24
        location Tokyo (35.68, 139.69) country JP continent AS
          westus           disabled  120.5 ms (7700 km) hash 8df4ec2f37f7fe98
          eastus           disabled  169.4 ms (10963 km) hash 84a0d90a13253b44
          westeurope       disabled  144.3 ms (9286 km) hash e9cb9224531f9365
          southeastasia    disabled  84.8 ms (5320 km) hash 6fce63056aae0501
        chosen no answer: every region is disabled
    "#]],
    );
}

#[test]
fn no_location_uses_the_default_order() {
    let cfg = config(&format!(
        "{PERF}\ndefault_order = [\"westeurope\", \"eastus\"]"
    ));
    check(
        &cfg,
        "192.0.2.1",
        None,
        "uuuu",
        None,
        expect![[r#"
        name registry.example.test policy performance client 192.0.2.0/24
        location unknown
          westus           eligible  rank 3 hash 4bb9ea2df4363db0
          eastus           eligible  rank 2 hash cdb44e1e07849605
        * westeurope       eligible  rank 1 hash 3990be4d8246f940
          southeastasia    eligible  rank 4 hash 9ea192b664b4a3b9
        chosen westeurope: no location or latency entry for the client, first in default order
    "#]],
    );
    check(
        &cfg,
        "192.0.2.1",
        None,
        "uuxu",
        None,
        expect![[r#"
        name registry.example.test policy performance client 192.0.2.0/24
        location unknown
          westus           eligible  rank 3 hash 4bb9ea2df4363db0
        * eastus           eligible  rank 2 hash cdb44e1e07849605
          westeurope       disabled  rank 1 hash 3990be4d8246f940
          southeastasia    eligible  rank 4 hash 9ea192b664b4a3b9
        chosen eastus: no location or latency entry for the client, first in default order
    "#]],
    );
}

#[test]
fn latency_table_overrides_the_distance_model() {
    let cfg = config(&format!(
        "{PERF}\n[[routed_name.latency]]\ncidr = \"198.51.100.0/24\"\nms = {{ westus = 40, southeastasia = 90 }}"
    ));
    check(
        &cfg,
        "198.51.100.7",
        Some(tokyo()),
        "uuuu",
        None,
        expect![[r#"
        name registry.example.test policy performance client 198.51.100.0/24
        location Tokyo (35.68, 139.69) country JP continent AS
        * westus           eligible  40.0 ms (latency table 198.51.100.0/24) hash 8df4ec2f37f7fe98
          eastus           eligible  169.4 ms (10963 km) hash 84a0d90a13253b44
          westeurope       eligible  144.3 ms (9286 km) hash e9cb9224531f9365
          southeastasia    eligible  90.0 ms (latency table 198.51.100.0/24) hash 6fce63056aae0501
        chosen westus: lowest estimated latency
    "#]],
    );
}

#[test]
fn near_ties_are_broken_by_rendezvous_hash_per_client() {
    // A client half-way between the two US regions, with a wide tie band.
    let cfg = config(&format!("{PERF}\ntie_band_ms = 30.0"));
    let mid = loc(42.0, -100.0, "US", "NA", "Middle");
    check(
        &cfg,
        "24.20.1.1",
        Some(mid.clone()),
        "uuuu",
        None,
        expect![[r#"
        name registry.example.test policy performance client 24.20.1.0/24
        location Middle (42.00, -100.00) country US continent NA
          westus           eligible  32.9 ms (1859 km) hash c100f4901915fd15
        * eastus           eligible  32.9 ms (1863 km) hash dbfeb83d2211f0de
          westeurope       eligible  114.4 ms (7291 km) hash a9da78a2c4aad60c
          southeastasia    eligible  224.6 ms (14639 km) hash c146a39c196f1aa3
        chosen eastus: 2 regions within 30 ms of the best, highest rendezvous hash
    "#]],
    );
    check(
        &cfg,
        "24.20.2.1",
        Some(mid),
        "uuuu",
        None,
        expect![[r#"
        name registry.example.test policy performance client 24.20.2.0/24
        location Middle (42.00, -100.00) country US continent NA
          westus           eligible  32.9 ms (1859 km) hash a75b8ea5b82422ab
        * eastus           eligible  32.9 ms (1863 km) hash db56bb345a680c29
          westeurope       eligible  114.4 ms (7291 km) hash 8c1ffa8b8e8ee90a
          southeastasia    eligible  224.6 ms (14639 km) hash ed18c0512c743c2e
        chosen eastus: 2 regions within 30 ms of the best, highest rendezvous hash
    "#]],
    );
}

#[test]
fn sticky_region_holds_while_eligible_and_releases_when_not() {
    let cfg = config(PERF);
    check(
        &cfg,
        "198.51.100.7",
        Some(tokyo()),
        "uuuu",
        Some("westus"),
        expect![[r#"
        name registry.example.test policy performance client 198.51.100.0/24
        location Tokyo (35.68, 139.69) country JP continent AS
        * westus           eligible  120.5 ms (7700 km) hash 8df4ec2f37f7fe98
          eastus           eligible  169.4 ms (10963 km) hash 84a0d90a13253b44
          westeurope       eligible  144.3 ms (9286 km) hash e9cb9224531f9365
          southeastasia    eligible  84.8 ms (5320 km) hash 6fce63056aae0501
        chosen westus: remembered for this client and still eligible
    "#]],
    );
    check(
        &cfg,
        "198.51.100.7",
        Some(tokyo()),
        "duuu",
        Some("westus"),
        expect![[r#"
        name registry.example.test policy performance client 198.51.100.0/24
        location Tokyo (35.68, 139.69) country JP continent AS
          westus           unhealthy 120.5 ms (7700 km) hash 8df4ec2f37f7fe98
          eastus           eligible  169.4 ms (10963 km) hash 84a0d90a13253b44
          westeurope       eligible  144.3 ms (9286 km) hash e9cb9224531f9365
        * southeastasia    eligible  84.8 ms (5320 km) hash 6fce63056aae0501
        chosen southeastasia: lowest estimated latency
    "#]],
    );
}

#[test]
fn priority_takes_the_first_answerable() {
    let cfg = config(&format!("{PERF}\npolicy = \"priority\"\norder = [\"eastus\", \"westus\", \"westeurope\", \"southeastasia\"]"));
    check(
        &cfg,
        "198.51.100.7",
        Some(tokyo()),
        "uuuu",
        None,
        expect![[r#"
        name registry.example.test policy priority client 198.51.100.0/24
        location Tokyo (35.68, 139.69) country JP continent AS
          westus           eligible  rank 2 hash 8df4ec2f37f7fe98
        * eastus           eligible  rank 1 hash 84a0d90a13253b44
          westeurope       eligible  rank 3 hash e9cb9224531f9365
          southeastasia    eligible  rank 4 hash 6fce63056aae0501
        chosen eastus: first answerable region in priority order
    "#]],
    );
    check(
        &cfg,
        "198.51.100.7",
        Some(tokyo()),
        "udxu",
        None,
        expect![[r#"
        name registry.example.test policy priority client 198.51.100.0/24
        location Tokyo (35.68, 139.69) country JP continent AS
        * westus           eligible  rank 2 hash 8df4ec2f37f7fe98
          eastus           unhealthy rank 1 hash 84a0d90a13253b44
          westeurope       disabled  rank 3 hash e9cb9224531f9365
          southeastasia    eligible  rank 4 hash 6fce63056aae0501
        chosen westus: first answerable region in priority order
    "#]],
    );
}

#[test]
fn weighted_is_stable_per_client() {
    let cfg = config(&format!(
        "{PERF}\npolicy = \"weighted\"\nweights = {{ westus = 3, eastus = 1 }}"
    ));
    check(
        &cfg,
        "198.51.100.7",
        None,
        "uuuu",
        None,
        expect![[r#"
        name registry.example.test policy weighted client 198.51.100.0/24
        location unknown
        * westus           eligible  weight 3 score 5.088 hash 8df4ec2f37f7fe98
          eastus           eligible  weight 1 score 1.521 hash 84a0d90a13253b44
          westeurope       eligible  weight 0 score -inf hash e9cb9224531f9365
          southeastasia    eligible  weight 0 score -inf hash 6fce63056aae0501
        chosen westus: highest weighted rendezvous score
    "#]],
    );
}

#[test]
fn geographic_maps_country_then_continent_then_fallback() {
    let cfg = config(&format!(
        "{PERF}\npolicy = \"geographic\"\ngeo_map = {{ JP = \"westus\", AS = \"southeastasia\", EU = \"westeurope\" }}\ngeo_fallback = [\"eastus\"]"
    ));
    check(
        &cfg,
        "198.51.100.7",
        Some(tokyo()),
        "uuuu",
        None,
        expect![[r#"
        name registry.example.test policy geographic client 198.51.100.0/24
        location Tokyo (35.68, 139.69) country JP continent AS
        * westus           eligible  mapped by JP hash 8df4ec2f37f7fe98
          eastus           eligible  mapped by fallback hash 84a0d90a13253b44
          westeurope       eligible  - hash e9cb9224531f9365
          southeastasia    eligible  mapped by AS hash 6fce63056aae0501
        chosen westus: geographic map
    "#]],
    );
    check(
        &cfg,
        "198.51.100.7",
        Some(tokyo()),
        "xuuu",
        None,
        expect![[r#"
        name registry.example.test policy geographic client 198.51.100.0/24
        location Tokyo (35.68, 139.69) country JP continent AS
          westus           disabled  mapped by JP hash 8df4ec2f37f7fe98
          eastus           eligible  mapped by fallback hash 84a0d90a13253b44
          westeurope       eligible  - hash e9cb9224531f9365
        * southeastasia    eligible  mapped by AS hash 6fce63056aae0501
        chosen southeastasia: geographic map
    "#]],
    );
    check(
        &cfg,
        "203.0.113.7",
        Some(loc(-23.55, -46.63, "BR", "SA", "Sao Paulo")),
        "uuuu",
        None,
        expect![[r#"
        name registry.example.test policy geographic client 203.0.113.0/24
        location Sao Paulo (-23.55, -46.63) country BR continent SA
          westus           eligible  - hash 6582f85028786cfd
        * eastus           eligible  mapped by fallback hash da09aca0b54996b3
          westeurope       eligible  - hash ed2a59c80c4d8fdb
          southeastasia    eligible  - hash d08a9be07dd71268
        chosen eastus: geographic map
    "#]],
    );
}

fn arb_states() -> impl Strategy<Value = Vec<RegionState>> {
    proptest::collection::vec((any::<bool>(), any::<bool>()), 4).prop_map(|v| {
        v.into_iter()
            .map(|(enabled, healthy)| RegionState { enabled, healthy })
            .collect()
    })
}

fn arb_location() -> impl Strategy<Value = Option<Location>> {
    proptest::option::of(
        (-90.0f64..90.0, -180.0f64..180.0).prop_map(|(lat, lon)| Location {
            latitude: lat,
            longitude: lon,
            country: Some("JP".into()),
            continent: Some("AS".into()),
            city: None,
        }),
    )
}

proptest! {
    #[test]
    fn never_disabled_unhealthy_only_when_failing_open_and_deterministic(
        states in arb_states(),
        location in arb_location(),
        octets in any::<[u8; 4]>(),
        sticky in proptest::option::of(0usize..4),
        policy in 0usize..4,
    ) {
        let extra = [
            "",
            "policy = \"priority\"",
            "policy = \"weighted\"\nweights = { westus = 1, eastus = 2, westeurope = 3 }",
            "policy = \"geographic\"\ngeo_map = { JP = \"westus\" }\ngeo_fallback = [\"eastus\", \"westeurope\", \"southeastasia\"]",
        ][policy];
        let cfg = config(&format!("{PERF}\n{extra}"));
        let rn = &cfg.routed_names[0];
        let addr = IpAddr::from(octets);
        let q = Query { key: ClientKey::new(addr, 24), location: location.as_ref(), sticky };
        let d = decide(&cfg, rn, &states, &q);
        let again = decide(&cfg, rn, &states, &q);
        prop_assert_eq!(&d, &again);
        let any_enabled = states.iter().any(|s| s.enabled);
        let any_eligible = states.iter().any(|s| s.enabled && s.healthy);
        prop_assert_eq!(d.fail_open, any_enabled && !any_eligible);
        match d.region {
            Some(r) => {
                prop_assert!(states[r].enabled, "disabled region chosen: {:?}", d);
                prop_assert!(states[r].healthy || d.fail_open, "unhealthy region chosen without failing open");
                let c = d.candidates.iter().find(|c| c.region == r).expect("chosen is a candidate");
                prop_assert_ne!(c.eligibility, Eligibility::Disabled);
            }
            None => prop_assert!(!any_enabled || d.why == Why::NoMappedRegion, "no answer while regions are enabled: {:?}", d),
        }
        if let (Some(s), Some(r)) = (sticky, d.region) {
            if states[s].enabled && states[s].healthy {
                prop_assert_eq!(r, s, "an eligible sticky region must hold");
            }
        }
        // The key, not the full address, decides: every address in the /24 gets the same answer.
        let sibling = IpAddr::from([octets[0], octets[1], octets[2], octets[3].wrapping_add(1)]);
        let q2 = Query { key: ClientKey::new(sibling, 24), ..q };
        prop_assert_eq!(decide(&cfg, rn, &states, &q2).region, d.region);
    }
}

#[test]
fn ties_and_weights_spread_clients_in_proportion() {
    let count = |cfg: &Config, location: Option<&Location>| {
        let rn = &cfg.routed_names[0];
        let mut n = [0usize; 4];
        for i in 0..4000u32 {
            let addr = IpAddr::from([(i >> 8) as u8 + 1, i as u8, 7, 1]);
            let q = Query {
                key: ClientKey::new(addr, 24),
                location,
                sticky: None,
            };
            n[decide(cfg, rn, &[RegionState::UP; 4], &q)
                .region
                .expect("answer")] += 1;
        }
        n
    };
    let tie = config(&format!("{PERF}\ntie_band_ms = 30.0"));
    let mid = loc(42.0, -100.0, "US", "NA", "Middle");
    let n = count(&tie, Some(&mid));
    assert_eq!(n[2] + n[3], 0, "{n:?}");
    assert!(
        (1600..=2400).contains(&n[0]) && (1600..=2400).contains(&n[1]),
        "{n:?}"
    );
    let weighted = config(&format!(
        "{PERF}\npolicy = \"weighted\"\nweights = {{ westus = 3, eastus = 1 }}"
    ));
    let n = count(&weighted, None);
    assert_eq!(n[2] + n[3], 0, "{n:?}");
    assert!(
        (2800..=3200).contains(&n[0]),
        "3:1 weights give about 3000 of 4000: {n:?}"
    );
}

/// A location from a small set of countries and continents (some unknown), anywhere.
fn arb_place() -> impl Strategy<Value = Location> {
    let codes = prop_oneof![
        Just((Some("JP"), Some("AS"))),
        Just((Some("NL"), Some("EU"))),
        Just((Some("BR"), Some("SA"))),
        Just((Some("US"), Some("NA"))),
        Just((None, Some("OC"))),
        Just((None, None)),
    ];
    ((-90.0f64..=90.0, -180.0f64..=180.0), codes).prop_map(|((lat, lon), (country, continent))| {
        Location {
            latitude: lat,
            longitude: lon,
            country: country.map(str::to_string),
            continent: continent.map(str::to_string),
            city: None,
        }
    })
}

fn arb_client() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    /// The precomputed rankings give exactly what `decide` gives (region and fail-open), for
    /// every policy, tie band, region state, location and client.
    #[test]
    fn ranked_decisions_equal_decide(
        places in proptest::collection::vec(arb_place(), 1..6),
        pick in any::<proptest::sample::Index>(),
        located in any::<bool>(),
        states in arb_states(),
        client in arb_client(),
        sticky in proptest::option::of(0usize..4),
        policy in 0usize..8,
    ) {
        let extra = [
            "tie_band_ms = 0.0",
            "tie_band_ms = 5.0",
            "tie_band_ms = 3000.0",
            "tie_band_ms = 100000.0\ndefault_order = [\"westeurope\", \"eastus\"]",
            "policy = \"priority\"",
            "policy = \"weighted\"\nweights = { westus = 1, eastus = 2, westeurope = 3 }",
            "policy = \"geographic\"\ngeo_map = { JP = \"westus\", EU = \"westeurope\" }\ngeo_fallback = [\"eastus\"]",
            "[[routed_name.latency]]\ncidr = \"0.0.0.0/1\"\nms = { westus = 10, eastus = 20 }",
        ][policy];
        let cfg = config(&format!("{PERF}\n{extra}"));
        let rn = &cfg.routed_names[0];
        let rankings = Rankings::build(&cfg, &places);
        let ranking = rankings.name(0).expect("one routed name");
        let id = located.then(|| pick.index(places.len()));
        let location = id.map(|i| &places[i]);
        let key = ClientKey::new(client, rn.client_prefix(&client));
        let q = Query { key, location, sticky };
        let d = decide(&cfg, rn, &states, &q);
        let in_table = rn.latency.iter().any(|e| e.network.contains(&key.addr()));
        let r = decide_ranked(&cfg, rn, &states, ranking, id.map(|i| i as u32), &key, sticky);
        prop_assert_eq!(r.is_none(), in_table, "only latency-table clients go to decide");
        if let Some(r) = r {
            prop_assert_eq!(r.region, d.region, "{}", d.explain(&cfg, rn, location));
            prop_assert_eq!(r.fail_open, d.fail_open);
        }
    }
}
