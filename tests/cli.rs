//! The `berth` binary as an operator runs it: check-config, route, geoip build.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn berth(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .expect("berth runs")
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).to_string()
}

#[test]
fn check_config_accepts_the_demo() {
    let o = berth(&["check-config", "config/demo.toml"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stdout).trim(),
        "config/demo.toml: ok: 1 zone(s), 4 region(s), 1 routed name(s), geoip Berth-City"
    );
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write");
    p
}

#[test]
fn check_config_names_what_is_wrong_and_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = env!("CARGO_MANIFEST_DIR");
    let demo = std::fs::read_to_string(Path::new(repo).join("config/demo.toml")).expect("demo");
    let demo = demo.replace("../", &format!("{repo}/"));

    // A zone file with a syntax error: the error names the zone file and line.
    write(dir.path(), "bad.zone", "$ORIGIN example.test.\n@ 300 IN SOA ns1 h 1 2 3 4 5\n@ 300 IN NS ns1\nns1 300 IN A 300.1.1.1\n");
    let cfg = write(
        dir.path(),
        "a.toml",
        &demo.replace(&format!("{repo}/zones/example.test.zone"), "bad.zone"),
    );
    let o = berth(&["check-config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let e = text(&o.stderr);
    assert!(
        e.starts_with(&format!(
            "error: zone example.test (from {})",
            cfg.display()
        )),
        "{e}"
    );
    assert!(e.contains("bad.zone:4"), "{e}");

    // A missing GeoIP file.
    let cfg = write(
        dir.path(),
        "b.toml",
        &demo.replace(&format!("{repo}/geoip/demo.mmdb"), "nope.mmdb"),
    );
    let o = berth(&["check-config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let e = text(&o.stderr);
    assert!(e.contains("nope.mmdb"), "{e}");

    // A routed name that the zone file also defines.
    write(dir.path(), "dup.zone", "$ORIGIN example.test.\n@ 300 IN SOA ns1 h 1 2 3 4 5\n@ 300 IN NS ns1\nns1 300 IN A 127.0.0.1\nregistry 300 IN A 192.0.2.99\n");
    let cfg = write(
        dir.path(),
        "c.toml",
        &demo.replace(&format!("{repo}/zones/example.test.zone"), "dup.zone"),
    );
    let o = berth(&["check-config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let e = text(&o.stderr);
    assert!(
        e.contains("routed name registry.example.test also has A records in the zone file"),
        "{e}"
    );
}

#[test]
fn route_explains_the_decision() {
    let o = berth(&["route", "198.51.100.7"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("client 198.51.100.0/24"), "{out}");
    assert!(
        out.contains("location Tokyo (35.68, 139.69) country JP continent AS"),
        "{out}"
    );
    assert!(
        out.contains("chosen southeastasia: lowest estimated latency"),
        "{out}"
    );
    let o = berth(&["route", "2001:db8:2::1", "--name", "REGISTRY.example.test."]);
    assert!(
        text(&o.stdout).contains("chosen westeurope"),
        "{}",
        text(&o.stdout)
    );
    let o = berth(&["route", "192.0.2.1", "--name", "nope.example.test"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o.stderr).trim(),
        "error: nope.example.test is not a routed name in config/demo.toml"
    );
}

#[test]
fn geoip_build_makes_a_database_the_server_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("x.mmdb");
    let o = berth(&["geoip", "build", "geoip/demo.csv", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let db = berth::geo::GeoDb::open(&out).expect("readable");
    let hit = db
        .lookup("198.51.100.7".parse().unwrap())
        .expect("Tokyo is in the demo CSV");
    assert_eq!(hit.location.city.as_deref(), Some("Tokyo"));
    let bad = write(
        dir.path(),
        "bad.csv",
        "network,continent,country,city,latitude,longitude\n10.0.0.0/8,XX,JP,Tokyo,35.6,139.6\n",
    );
    let o = berth(&[
        "geoip",
        "build",
        bad.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("bad.csv:2"), "{}", text(&o.stderr));
}
