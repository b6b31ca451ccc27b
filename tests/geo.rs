//! `berth::geo` through its public API: the CSV builder, the reader on our own, hand-made and
//! third-party files, the committed demo database, and cross-checks with libmaxminddb's
//! `mmdblookup` (Debian package `mmdb-bin`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::LazyLock;

use berth::geo::{build_from_csv, BuildReport, GeoDb, GeoError, CSV_HEADER};
use ipnet::IpNet;
use mmdb_writer::{IpVersion, Ipv4Aliasing, Value, Writer};
use proptest::prelude::*;

const DEMO_CSV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/geoip/demo.csv");
const DEMO_MMDB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/geoip/demo.mmdb");
/// Made by Python's mmdb-writer (`../shared/bench/peers/make-mmdb.py`): IPv4 at ::/96 only,
/// no ::ffff:0:0/96 alias. The repository is checked out with `../shared` beside it.
const PEERS_MMDB: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/bench/peers/data/geo-test.mmdb"
);

/// One line per lookup: `ADDRESS -> NETWORK CITY COUNTRY CONTINENT LAT,LON`, or `-> none`.
fn render(db: &GeoDb, ip: &str) -> String {
    let addr: IpAddr = ip.parse().expect("test address");
    match db.lookup(addr) {
        None => format!("{ip} -> none"),
        Some(hit) => {
            let l = &hit.location;
            let show = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".to_owned());
            format!(
                "{ip} -> {} {} {} {} {},{}",
                hit.network,
                show(&l.city),
                show(&l.country),
                show(&l.continent),
                l.latitude,
                l.longitude
            )
        }
    }
}

/// Look up every address of `expected` (one rendered line each) and compare the whole text.
fn check(db: &GeoDb, expected: &str) {
    let expected: Vec<&str> = expected
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let actual: Vec<String> = expected
        .iter()
        .map(|line| render(db, line.split(" -> ").next().expect("an address")))
        .collect();
    assert_eq!(actual.join("\n"), expected.join("\n"));
}

fn write_csv(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("networks.csv");
    std::fs::write(&path, format!("{CSV_HEADER}\n{body}")).expect("write temp CSV");
    path
}

fn build(body: &str) -> (tempfile::TempDir, GeoDb, BuildReport) {
    let dir = tempfile::tempdir().expect("temp dir");
    let csv = write_csv(dir.path(), body);
    let out = dir.path().join("out.mmdb");
    let report = build_from_csv(&csv, &out).expect("build");
    let db = GeoDb::open(&out).expect("open what we built");
    (dir, db, report)
}

fn build_error(body: &str) -> (PathBuf, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let csv = write_csv(dir.path(), body);
    let err = build_from_csv(&csv, &dir.path().join("out.mmdb")).expect_err("bad CSV");
    assert!(
        !dir.path().join("out.mmdb").exists(),
        "nothing is written on error"
    );
    (csv, err.to_string())
}

/// Bytes of a database built directly with mmdb-writer, for layouts our builder does not make.
fn hand_made(
    database_type: &str,
    version: IpVersion,
    aliasing: Ipv4Aliasing,
    records: &[(&str, Value)],
) -> Vec<u8> {
    let mut writer = Writer::builder(database_type)
        .ip_version(version)
        .ipv4_aliasing(aliasing)
        .build();
    for (network, record) in records {
        let network: IpNet = network.parse().expect("test network");
        writer
            .insert_value(network, record.clone())
            .expect("insert");
    }
    writer.to_bytes().expect("encode")
}

fn city_record(city: &str, country: &str, continent: &str, lat: f64, lon: f64) -> Value {
    Value::map([
        ("city", Value::map([("names", Value::map([("en", city)]))])),
        ("country", Value::map([("iso_code", country)])),
        ("continent", Value::map([("code", continent)])),
        (
            "location",
            Value::map([
                ("latitude", Value::Double(lat)),
                ("longitude", Value::Double(lon)),
            ]),
        ),
    ])
}

fn mmdblookup(file: &str, ip: &str, path: &[&str]) -> String {
    let output = Command::new("mmdblookup")
        .args(["--file", file, "--ip", ip])
        .args(path)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run mmdblookup ({e}): install it with `apt-get install mmdb-bin`")
        });
    assert!(
        output.status.success(),
        "mmdblookup --file {file} --ip {ip} {path:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("mmdblookup prints UTF-8")
}

#[test]
fn build_then_read_back_v4_v6_and_v4_mapped() {
    let (_dir, db, report) = build(
        "198.51.100.0/24,AS,JP,Tokyo,35.68,139.69\n\
         203.0.113.0/24,SA,BR,Sao Paulo,-23.55,-46.63\n\
         2001:db8:1::/48,NA,US,Seattle,47.61,-122.33\n\
         2001:db8:2::/48,EU,NL,Amsterdam,52.37,4.90\n\
         2001:db8:3::/64,AN,,,-77.85,166.67\n",
    );
    assert_eq!(
        report,
        BuildReport {
            networks_v4: 2,
            networks_v6: 3
        }
    );
    assert_eq!(report.to_string(), "2 IPv4 and 3 IPv6 networks");
    assert_eq!(db.database_type(), "Berth-City");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    assert!(
        now.abs_diff(db.build_epoch()) < 600,
        "build_epoch {}",
        db.build_epoch()
    );
    check(
        &db,
        "
        198.51.100.7 -> 198.51.100.0/24 Tokyo JP AS 35.68,139.69
        198.51.100.255 -> 198.51.100.0/24 Tokyo JP AS 35.68,139.69
        203.0.113.1 -> 203.0.113.0/24 Sao Paulo BR SA -23.55,-46.63
        ::ffff:198.51.100.7 -> ::ffff:198.51.100.0/120 Tokyo JP AS 35.68,139.69
        2001:db8:1::1 -> 2001:db8:1::/48 Seattle US NA 47.61,-122.33
        2001:db8:2:ffff::7 -> 2001:db8:2::/48 Amsterdam NL EU 52.37,4.9
        2001:db8:3::9 -> 2001:db8:3::/64 - - AN -77.85,166.67
        198.51.101.1 -> none
        192.0.2.1 -> none
        127.0.0.1 -> none
        0.0.0.0 -> none
        255.255.255.255 -> none
        2001:db8:4::1 -> none
        ::1 -> none
        :: -> none
        ::ffff:127.0.0.1 -> none
        ",
    );
    let hit = db.lookup("198.51.100.7".parse().expect("ip")).expect("hit");
    assert!(
        matches!(hit.network, IpNet::V4(_)),
        "IPv4 query, IPv4 network"
    );
}

#[test]
fn v4_in_6to4_and_teredo_space_is_answered_like_the_db_aliases_it() {
    // Only what MaxMind aliases: 2002:c633:6407:: is 6to4 for 198.51.100.7.
    let (_dir, db, _) = build("198.51.100.0/24,AS,JP,Tokyo,35.68,139.69\n");
    let hit = db
        .lookup("2002:c633:6407::1".parse().expect("ip"))
        .expect("6to4 is aliased to the IPv4 data");
    assert_eq!(hit.location.city.as_deref(), Some("Tokyo"));
    assert_eq!(hit.network.to_string(), "2002:c633:6400::/40");
}

#[test]
fn most_specific_network_wins_whatever_the_line_order() {
    for body in [
        "10.0.5.0/24,EU,NL,Amsterdam,52.37,4.90\n10.0.0.0/16,NA,US,Seattle,47.61,-122.33\n",
        "10.0.0.0/16,NA,US,Seattle,47.61,-122.33\n10.0.5.0/24,EU,NL,Amsterdam,52.37,4.90\n",
    ] {
        let (_dir, db, _) = build(body);
        check(
            &db,
            "
            10.0.5.9 -> 10.0.5.0/24 Amsterdam NL EU 52.37,4.9
            10.0.4.1 -> 10.0.4.0/24 Seattle US NA 47.61,-122.33
            10.0.200.1 -> 10.0.128.0/17 Seattle US NA 47.61,-122.33
            10.1.0.1 -> none
            ",
        );
    }
}

#[test]
fn csv_errors_name_file_line_and_reason() {
    let (csv, err) = build_error(
        "# comment\n\n198.51.100.0/24,AS,JP,Tokyo,35.68,139.69\n203.0.113.0/24,SA,BR,Sao Paulo,-91,-46.63\n",
    );
    assert_eq!(
        err,
        format!("{}:5: latitude -91 is out of range -90..=90", csv.display())
    );

    let cases = [
        ("198.51.100.0/24,AS,JP,Tokyo,35.68,139.69\n198.51.100.0/24,AS,JP,Tokyo,35.68,139.69\n",
         "3: duplicate network 198.51.100.0/24 (first on line 2)"),
        ("198.51.100.0/33,AS,JP,Tokyo,35.68,139.69\n",
         "2: `198.51.100.0/33` is not a network in CIDR notation (such as 198.51.100.0/24 or 2001:db8:1::/48)"),
        ("2001:db8:1::1/48,NA,US,Seattle,47.61,-122.33\n",
         "2: network `2001:db8:1::1/48` has host bits set (did you mean 2001:db8:1::/48?)"),
        ("198.51.100.0/24,ZZ,JP,Tokyo,35.68,139.69\n",
         "2: unknown continent code `ZZ` (expected one of AF, AN, AS, EU, NA, OC, SA)"),
        ("198.51.100.0/24,AS,JP,Tokyo,35.68,east\n", "2: longitude `east` is not a number"),
        ("198.51.100.0/24,AS,JP,Tokyo,35.68,139.69,extra\n",
         "2: expected 6 fields (network,continent,country,city,latitude,longitude), found 7"),
    ];
    for (body, expected) in cases {
        let (csv, err) = build_error(body);
        assert_eq!(err, format!("{}:{expected}", csv.display()));
    }
}

#[test]
fn csv_file_level_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out.mmdb");

    let missing = dir.path().join("missing.csv");
    let err = build_from_csv(&missing, &out).expect_err("no such file");
    assert_eq!(
        err.to_string(),
        format!("cannot read CSV file {}", missing.display())
    );
    assert!(
        matches!(err, GeoError::ReadCsv { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    );

    let header_only = write_csv(dir.path(), "# nothing yet\n");
    let err = build_from_csv(&header_only, &out).expect_err("no networks");
    assert_eq!(
        err.to_string(),
        format!("{}: no networks after the header", header_only.display())
    );

    let empty = dir.path().join("empty.csv");
    std::fs::write(&empty, "").expect("write");
    assert_eq!(
        build_from_csv(&empty, &out)
            .expect_err("empty file")
            .to_string(),
        format!("{}: no networks after the header", empty.display())
    );

    let csv = write_csv(dir.path(), "198.51.100.0/24,AS,JP,Tokyo,35.68,139.69\n");
    let nowhere = dir.path().join("no-such-dir").join("out.mmdb");
    let err = build_from_csv(&csv, &nowhere).expect_err("no directory");
    assert!(
        err.to_string().starts_with("cannot write GeoIP database ")
            && err.to_string().contains("no-such-dir"),
        "{err}"
    );
}

#[test]
fn build_replaces_the_output_atomically_and_leaves_no_temp_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out.mmdb");
    std::fs::write(&out, b"old contents").expect("write");
    let csv = write_csv(dir.path(), "198.51.100.0/24,AS,JP,Tokyo,35.68,139.69\n");
    build_from_csv(&csv, &out).expect("build");
    GeoDb::open(&out).expect("the new database replaced the old file");
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["networks.csv", "out.mmdb"]);
}

#[test]
fn open_rejects_what_is_not_a_city_database() {
    let dir = tempfile::tempdir().expect("temp dir");

    let missing = dir.path().join("missing.mmdb");
    let err = GeoDb::open(&missing).expect_err("no such file");
    assert_eq!(
        err.to_string(),
        format!("cannot read GeoIP database {}", missing.display())
    );

    let garbage = dir.path().join("garbage.mmdb");
    std::fs::write(&garbage, b"network,continent\n198.51.100.0/24,AS\n").expect("write");
    let err = GeoDb::open(&garbage).expect_err("not an mmdb");
    assert_eq!(
        err.to_string(),
        format!("{} is not a valid MaxMind DB file", garbage.display())
    );
    let source = std::error::Error::source(&err).expect("the reader's error is chained");
    assert!(source.to_string().contains("metadata"), "{source}");

    let asn = hand_made(
        "GeoLite2-ASN",
        IpVersion::V6,
        Ipv4Aliasing::Enabled,
        &[(
            "198.51.100.0/24",
            Value::map([("autonomous_system_number", Value::from(64_512_u32))]),
        )],
    );
    let err = GeoDb::from_bytes(asn, "asn.mmdb").expect_err("not City");
    assert_eq!(
        err.to_string(),
        "asn.mmdb: database type `GeoLite2-ASN` is not a City database \
         (expected a type containing \"City\", such as GeoLite2-City or DBIP-City-Lite)"
    );

    let strange = hand_made(
        "Strange-City",
        IpVersion::V6,
        Ipv4Aliasing::Enabled,
        &[(
            "198.51.100.0/24",
            Value::map([("location", Value::from("35.68,139.69"))]),
        )],
    );
    let err = GeoDb::from_bytes(strange, "strange.mmdb").expect_err("layout");
    assert_eq!(
        err.to_string(),
        "strange.mmdb: the record for 198.51.100.0/24 does not have the GeoIP2-City layout"
    );
    assert!(std::error::Error::source(&err).is_some());

    let truncated = std::fs::read(DEMO_MMDB).expect("read demo.mmdb");
    let err = GeoDb::from_bytes(truncated[..truncated.len() / 2].to_vec(), "half.mmdb")
        .expect_err("truncated");
    assert_eq!(err.to_string(), "half.mmdb is not a valid MaxMind DB file");
}

#[test]
fn dbip_and_geolite2_layouts_with_missing_and_extra_fields() {
    let names = |en: &str| {
        Value::map([
            ("de", Value::from(format!("{en} (de)"))),
            ("en", Value::from(en)),
            ("ja", Value::from("名前")),
            ("pt-BR", Value::from(en)),
            ("zh-CN", Value::from("名字")),
        ])
    };
    // A GeoLite2-City record as MaxMind ships it, with every field Berth does not read.
    let geolite2 = Value::map([
        (
            "city",
            Value::map([
                ("geoname_id", Value::from(1_850_147_u32)),
                ("names", names("Tokyo")),
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
                ("iso_code", Value::from("JP")),
                ("names", names("Japan")),
            ]),
        ),
        (
            "location",
            Value::map([
                ("accuracy_radius", Value::U16(20)),
                ("latitude", Value::Double(35.6893)),
                ("longitude", Value::Double(139.6899)),
                ("time_zone", Value::from("Asia/Tokyo")),
            ]),
        ),
        ("postal", Value::map([("code", Value::from("151-0053"))])),
        (
            "registered_country",
            Value::map([
                ("geoname_id", Value::from(1_861_060_u32)),
                ("iso_code", Value::from("JP")),
                ("names", names("Japan")),
            ]),
        ),
        (
            "subdivisions",
            Value::array([Value::map([
                ("geoname_id", Value::from(1_850_144_u32)),
                ("iso_code", Value::from("13")),
                ("names", names("Tokyo")),
            ])]),
        ),
    ]);
    // DB-IP City Lite: no geoname ids, no accuracy radius; some records lack a city.
    let dbip_no_city = Value::map([
        (
            "continent",
            Value::map([("code", Value::from("EU")), ("names", names("Europe"))]),
        ),
        (
            "country",
            Value::map([
                ("is_in_european_union", Value::Bool(true)),
                ("iso_code", Value::from("NL")),
                ("names", names("Netherlands")),
            ]),
        ),
        (
            "location",
            Value::map([
                ("latitude", Value::Double(52.37)),
                ("longitude", Value::Double(4.9)),
            ]),
        ),
    ]);
    let only_location = Value::map([(
        "location",
        Value::map([
            ("latitude", Value::Double(-33.87)),
            ("longitude", Value::Double(151.21)),
        ]),
    )]);
    let float_coordinates = Value::map([(
        "location",
        Value::map([
            ("latitude", Value::Float(47.5)),
            ("longitude", Value::Float(-122.25)),
        ]),
    )]);
    let country_only = Value::map([(
        "registered_country",
        Value::map([("iso_code", Value::from("US"))]),
    )]);
    let empty_strings = city_record("", "", "", 1.35, 103.82);
    let bytes = hand_made(
        "DBIP-City-Lite",
        IpVersion::V6,
        Ipv4Aliasing::Enabled,
        &[
            ("198.51.100.0/24", geolite2),
            ("203.0.113.0/24", dbip_no_city),
            ("2001:db8:4::/48", only_location),
            ("2001:db8:5::/48", float_coordinates),
            ("2001:db8:6::/48", country_only),
            ("2001:db8:7::/48", empty_strings),
        ],
    );
    let db = GeoDb::from_bytes(bytes, "dbip.mmdb").expect("open");
    assert_eq!(db.database_type(), "DBIP-City-Lite");
    check(
        &db,
        "
        198.51.100.1 -> 198.51.100.0/24 Tokyo JP AS 35.6893,139.6899
        203.0.113.1 -> 203.0.113.0/24 - NL EU 52.37,4.9
        2001:db8:4::1 -> 2001:db8:4::/48 - - - -33.87,151.21
        2001:db8:5::1 -> 2001:db8:5::/48 - - - 47.5,-122.25
        2001:db8:6::1 -> none
        2001:db8:7::1 -> 2001:db8:7::/48 - - - 1.35,103.82
        ",
    );
}

#[test]
fn ipv4_stored_at_v4_compatible_v4_mapped_or_in_an_ipv4_tree() {
    let tokyo = || city_record("Tokyo", "JP", "AS", 35.68, 139.69);
    let expected = "
        198.51.100.7 -> 198.51.100.0/24 Tokyo JP AS 35.68,139.69
        ::ffff:198.51.100.7 -> ::ffff:198.51.100.0/120 Tokyo JP AS 35.68,139.69
        198.51.101.7 -> none
        ::ffff:198.51.101.7 -> none
    ";
    // Python's mmdb-writer: IPv4 at ::/96 only, no alias for ::ffff:0:0/96.
    let compatible_only = hand_made(
        "Test-City",
        IpVersion::V6,
        Ipv4Aliasing::Disabled,
        &[("198.51.100.0/24", tokyo())],
    );
    // MaxMind's layout: IPv4 at ::/96, aliased from ::ffff:0:0/96 (our builder does this).
    let aliased = hand_made(
        "Test-City",
        IpVersion::V6,
        Ipv4Aliasing::Enabled,
        &[("198.51.100.0/24", tokyo())],
    );
    // A writer that keeps IPv4 only in its IPv4-mapped form.
    let mapped_only = hand_made(
        "Test-City",
        IpVersion::V6,
        Ipv4Aliasing::Disabled,
        &[("::ffff:198.51.100.0/120", tokyo())],
    );
    let ipv4_tree = hand_made(
        "Test-City",
        IpVersion::V4,
        Ipv4Aliasing::Disabled,
        &[("198.51.100.0/24", tokyo())],
    );
    for (name, bytes, second_walk_on_miss) in [
        ("compatible_only", compatible_only, false),
        ("aliased", aliased, false),
        ("mapped_only", mapped_only, true),
        ("ipv4_tree", ipv4_tree, false),
    ] {
        let db = GeoDb::from_bytes(bytes, name).expect(name);
        check(&db, expected);
        let debug = format!("{db:?}");
        assert!(
            debug.contains(&format!("v4_mapped_fallback: {second_walk_on_miss}")),
            "{name}: {debug}"
        );
    }
}

#[test]
fn ipv6_query_in_an_ipv4_tree_is_none() {
    let bytes = hand_made(
        "Test-City",
        IpVersion::V4,
        Ipv4Aliasing::Disabled,
        &[("0.0.0.0/0", city_record("Tokyo", "JP", "AS", 35.68, 139.69))],
    );
    let db = GeoDb::from_bytes(bytes, "v4.mmdb").expect("open");
    check(
        &db,
        // The root of a search tree is a node, so the widest network a file can hold is a /1.
        "
        192.0.2.1 -> 128.0.0.0/1 Tokyo JP AS 35.68,139.69
        2001:db8::1 -> none
        ",
    );
}

#[test]
fn a_record_above_the_ipv4_subtree_covers_all_of_ipv4() {
    // ::/1 contains ::/96: the IPv4 walk ends before it reaches 96 bits deep.
    let bytes = hand_made(
        "Test-City",
        IpVersion::V6,
        Ipv4Aliasing::Enabled,
        &[("::/1", city_record("Null Island", "", "AF", 0.0, 0.0))],
    );
    let db = GeoDb::from_bytes(bytes, "wide.mmdb").expect("open");
    check(
        &db,
        "
        198.51.100.7 -> 0.0.0.0/0 Null Island - AF 0,0
        ::ffff:198.51.100.7 -> ::ffff:0.0.0.0/96 Null Island - AF 0,0
        2001:db8::1 -> ::/1 Null Island - AF 0,0
        8000::1 -> none
        ",
    );
}

/// The Python-made file; a clear failure (not a skip) when `../shared` is not checked out.
fn peers_db() -> GeoDb {
    assert!(
        Path::new(PEERS_MMDB).is_file(),
        "{PEERS_MMDB} is missing: the tests expect the shared test data checked out as \
         ../shared beside the repository (see ../shared/bench/peers/make-mmdb.py)"
    );
    GeoDb::open(Path::new(PEERS_MMDB)).expect("open the Python-made file")
}

#[test]
fn third_party_file_from_python_mmdb_writer() {
    let db = peers_db();
    assert_eq!(db.database_type(), "GeoIP2-City");
    check(
        &db,
        "
        198.51.100.7 -> 198.51.100.0/24 Tokyo JP AS 35.68,139.69
        ::ffff:198.51.100.7 -> ::ffff:198.51.100.0/120 Tokyo JP AS 35.68,139.69
        203.0.113.200 -> 203.0.113.0/24 Sao Paulo BR SA -23.55,-46.63
        24.16.1.1 -> 24.16.0.0/16 Seattle US NA 47.61,-122.33
        192.0.2.10 -> 192.0.2.10/32 Seattle US NA 47.6,-122.3
        2001:db8:1::1 -> 2001:db8:1::/48 Seattle US NA 47.61,-122.33
        2001:db8:7::1 -> 2001:db8:7::/48 Tokyo JP AS 35.68,139.69
        2600:1000::1 -> 2600:1000::/32 Chicago US NA 41.88,-87.63
        127.0.0.1 -> none
        ::1 -> none
        ",
    );
}

#[test]
fn mmdblookup_reads_the_demo_database_like_we_do() {
    let tokyo = mmdblookup(DEMO_MMDB, "198.51.100.7", &["location", "latitude"]);
    assert!(tokyo.contains("35.680000 <double>"), "{tokyo}");
    let mapped = mmdblookup(DEMO_MMDB, "::ffff:198.51.100.7", &["city", "names", "en"]);
    assert!(mapped.contains("\"Tokyo\" <utf8_string>"), "{mapped}");
    let amsterdam = mmdblookup(DEMO_MMDB, "2001:db8:2::1", &["country", "iso_code"]);
    assert!(amsterdam.contains("\"NL\" <utf8_string>"), "{amsterdam}");
    let continent = mmdblookup(DEMO_MMDB, "203.0.113.9", &["continent", "names", "en"]);
    assert!(
        continent.contains("\"South America\" <utf8_string>"),
        "{continent}"
    );

    let db = GeoDb::open(Path::new(DEMO_MMDB)).expect("open demo.mmdb");
    let hit = db.lookup("198.51.100.7".parse().expect("ip")).expect("hit");
    assert_eq!(hit.location.latitude, 35.68);
}

/// The CSV's network lines: (line number, network, expected render tail).
fn demo_rows() -> Vec<(usize, IpNet, String)> {
    let text = std::fs::read_to_string(DEMO_CSV).expect("read geoip/demo.csv");
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#') && *l != CSV_HEADER)
        .map(|(i, line)| {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), 6, "demo.csv:{}: no quoted fields here", i + 1);
            let lat: f64 = f[4].parse().expect("latitude");
            let lon: f64 = f[5].parse().expect("longitude");
            let network: IpNet = f[0].parse().expect("network");
            let tail = format!("{network} {} {} {} {lat},{lon}", f[3], f[2], f[1]);
            (i + 1, network, tail)
        })
        .collect()
}

#[test]
fn demo_database_answers_every_csv_line() {
    let db = GeoDb::open(Path::new(DEMO_MMDB)).expect("open geoip/demo.mmdb");
    let rows = demo_rows();
    assert!(rows.len() >= 26, "the demo has at least 26 networks");
    for (line, network, tail) in rows {
        for ip in [network.network(), network.broadcast()] {
            let got = render(&db, &ip.to_string());
            assert_eq!(got, format!("{ip} -> {tail}"), "demo.csv:{line}");
        }
    }
}

#[test]
fn demo_database_has_the_required_cities() {
    let db = GeoDb::open(Path::new(DEMO_MMDB)).expect("open geoip/demo.mmdb");
    check(
        &db,
        "
        198.51.100.7 -> 198.51.100.0/24 Tokyo JP AS 35.68,139.69
        203.0.113.7 -> 203.0.113.0/24 Sao Paulo BR SA -23.55,-46.63
        2001:db8:1::7 -> 2001:db8:1::/48 Seattle US NA 47.61,-122.33
        2001:db8:2::7 -> 2001:db8:2::/48 Amsterdam NL EU 52.37,4.9
        2001:db8:3::7 -> 2001:db8:3::/48 New York US NA 40.71,-74.01
        2001:db8:4::7 -> 2001:db8:4::/48 Sydney AU OC -33.87,151.21
        2001:db8::10 -> none
        192.0.2.10 -> none
        127.0.0.1 -> none
        ",
    );
}

/// The bytes before the metadata marker (search tree and data): everything but the build time.
fn tree_and_data(bytes: &[u8]) -> &[u8] {
    const MARKER: &[u8] = b"\xab\xcd\xefMaxMind.com";
    let at = bytes
        .windows(MARKER.len())
        .rposition(|w| w == MARKER)
        .expect("a MaxMind DB has a metadata marker");
    &bytes[..at]
}

/// Rebuilds geoip/demo.mmdb from geoip/demo.csv; with `UPDATE_GEOIP=1` it rewrites the committed
/// file instead of failing (the expect-test convention).
#[test]
fn demo_database_is_up_to_date_with_the_csv() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fresh = dir.path().join("demo.mmdb");
    build_from_csv(Path::new(DEMO_CSV), &fresh).expect("build geoip/demo.csv");
    let fresh_bytes = std::fs::read(&fresh).expect("read fresh build");
    if std::env::var_os("UPDATE_GEOIP").is_some() {
        build_from_csv(Path::new(DEMO_CSV), Path::new(DEMO_MMDB)).expect("update demo.mmdb");
        return;
    }
    let committed = std::fs::read(DEMO_MMDB).expect("read geoip/demo.mmdb");
    assert!(
        tree_and_data(&committed) == tree_and_data(&fresh_bytes),
        "geoip/demo.mmdb is stale: rebuild it with `berth geoip build geoip/demo.csv \
         geoip/demo.mmdb` or `UPDATE_GEOIP=1 cargo test --test geo`"
    );
    let committed = GeoDb::from_bytes(committed, "geoip/demo.mmdb").expect("open");
    assert_eq!(committed.database_type(), "Berth-City");
}

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|v| IpAddr::from(std::net::Ipv4Addr::from(v))),
        any::<u128>().prop_map(|v| IpAddr::from(std::net::Ipv6Addr::from(v))),
        // Addresses near the demo's networks, so hits are common.
        (0..16u16, any::<u64>()).prop_map(|(n, low)| IpAddr::from(std::net::Ipv6Addr::from(
            (0x2001_0db8_u128 << 96) | (u128::from(n) << 80) | u128::from(low)
        ))),
        any::<u16>().prop_map(|low| IpAddr::from([198, 51, 100, (low & 0xff) as u8])),
        any::<u32>().prop_map(|v| IpAddr::from(std::net::Ipv4Addr::from(v).to_ipv6_mapped())),
    ]
}

static DEMO_AND_PEERS: LazyLock<[GeoDb; 2]> = LazyLock::new(|| {
    [
        GeoDb::open(Path::new(DEMO_MMDB)).expect("open geoip/demo.mmdb"),
        peers_db(),
    ]
});

proptest! {
    #[test]
    fn a_hit_network_holds_the_address_in_its_family(ip in any_ip()) {
        for db in DEMO_AND_PEERS.iter() {
            if let Some(hit) = db.lookup(ip) {
                prop_assert!(hit.network.contains(&ip), "{} not in {}", ip, hit.network);
                prop_assert_eq!(hit.network.addr().is_ipv4(), ip.is_ipv4());
                prop_assert!((-90.0..=90.0).contains(&hit.location.latitude));
                prop_assert!((-180.0..=180.0).contains(&hit.location.longitude));
            }
        }
    }

    #[test]
    fn corrupt_files_are_rejected_or_answered_without_panicking(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ips in proptest::collection::vec(any_ip(), 16),
    ) {
        let mut bytes = std::fs::read(DEMO_MMDB).expect("read demo.mmdb");
        let len = bytes.len();
        for (index, value) in flips {
            bytes[index.index(len)] = value;
        }
        if let Ok(db) = GeoDb::from_bytes(bytes, "corrupt.mmdb") {
            for ip in ips {
                let _ = db.lookup(ip);
            }
        }
    }
}
