//! Config: every shipped file loads, unknown keys are rejected, and each error names the file,
//! the key path and what is wrong (asserted by text, the way an operator reads them).

use std::path::Path;

use berth::config::Config;
use berth::snapshot::Snapshot;

#[test]
fn every_shipped_config_loads_with_everything_it_names() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("config/ exists") {
        let path = entry.expect("readable dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Snapshot::load(config, 0)
            .unwrap_or_else(|e| panic!("{}: {}", path.display(), berth::report(&e)));
        n += 1;
    }
    assert!(n >= 1, "no config files found in {}", dir.display());
}

const BASE: &str = r#"
[dns]
listen = ["127.0.0.1:1053"]

[[zone]]
origin = "example.test"
file = "zones/example.test.zone"

[[region]]
name = "westus"
latitude = 47.6
longitude = -122.3
a = ["192.0.2.10"]

[[routed_name]]
name = "registry.example.test"
regions = ["westus"]
"#;

fn error_of(text: &str) -> String {
    match Config::parse(text, Path::new("/etc/berth/berth.toml")) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn with(replace: &str, by: &str) -> String {
    assert!(BASE.contains(replace), "BASE lacks {replace:?}");
    BASE.replacen(replace, by, 1)
}

#[test]
fn base_config_is_valid_and_paths_are_relative_to_the_file() {
    let c = Config::parse(BASE, Path::new("/etc/berth/berth.toml")).expect("valid");
    assert_eq!(
        c.zones[0].file,
        Path::new("/etc/berth/zones/example.test.zone")
    );
    assert_eq!(c.routed_names[0].ttl, 30);
    assert_eq!(c.routed_names[0].client_prefix_v4, 24);
    assert_eq!(c.routed_names[0].client_prefix_v6, 56);
}

#[test]
fn unknown_keys_are_rejected_with_line_and_key() {
    let e = error_of(&with("latitude = 47.6", "latitude = 47.6\nlatitud = 3"));
    assert!(
        e.starts_with("/etc/berth/berth.toml: TOML parse error at line 12"),
        "{e}"
    );
    assert!(e.contains("unknown field `latitud`"), "{e}");
    let e = error_of(&format!("{BASE}\n[dsn]\nlisten = []\n"));
    assert!(e.contains("unknown field `dsn`"), "{e}");
}

#[test]
fn semantic_errors_name_the_key_path() {
    let cases = [
        (
            with("latitude = 47.6", "latitude = 97.6"),
            "/etc/berth/berth.toml: region[0] (westus).latitude: 97.6 is outside -90..90",
        ),
        (
            with("a = [\"192.0.2.10\"]", "a = [\"192.0.2.300\"]"),
            "/etc/berth/berth.toml: region[0] (westus).a[0]: \"192.0.2.300\" is not an IPv4 address",
        ),
        (
            with("regions = [\"westus\"]", "regions = [\"westus\", \"mars\"]"),
            "/etc/berth/berth.toml: routed_name[0] (registry.example.test).regions[1]: no region is named \"mars\"",
        ),
        (
            with("name = \"registry.example.test\"", "name = \"registry.example.org\""),
            "/etc/berth/berth.toml: routed_name[0] (registry.example.org).name: registry.example.org is not inside any configured zone",
        ),
        (
            with("regions = [\"westus\"]", "regions = [\"westus\"]\npolicy = \"fastest\""),
            "/etc/berth/berth.toml: routed_name[0] (registry.example.test).policy: \"fastest\" is not a policy (performance, priority, weighted, geographic)",
        ),
        (
            with("regions = [\"westus\"]", "regions = [\"westus\"]\nweights = { westus = 1 }"),
            "/etc/berth/berth.toml: routed_name[0] (registry.example.test).weights: only applies to policy \"weighted\", this name uses \"performance\"",
        ),
        (
            with("listen = [\"127.0.0.1:1053\"]", "listen = [\"localhost\"]"),
            "/etc/berth/berth.toml: dns.listen[0]: \"localhost\" is not an address:port such as \"127.0.0.1:1053\"",
        ),
        (
            with("a = [\"192.0.2.10\"]", "a = []"),
            "/etc/berth/berth.toml: region[0] (westus): a region needs DNS answers: a and/or aaaa addresses, or a cname",
        ),
        (
            with("a = [\"192.0.2.10\"]", "a = [\"192.0.2.10\"]\nprobe = { interval = \"5\" }"),
            "/etc/berth/berth.toml: region[0] (westus).probe.interval: \"5\" has no unit; write e.g. \"5s\", \"500ms\", \"15m\"",
        ),
        (
            with("regions = [\"westus\"]", "regions = [\"westus\"]\n[[routed_name.latency]]\ncidr = \"10.1.2.3/16\"\nms = { westus = 20 }"),
            "/etc/berth/berth.toml: routed_name[0] (registry.example.test).latency[0].cidr: 10.1.2.3/16 has host bits set; did you mean 10.1.0.0/16?",
        ),
        (
            format!("{BASE}\n[[region]]\nname = \"westus\"\nlatitude = 1.0\nlongitude = 1.0\na = [\"192.0.2.1\"]\n"),
            "/etc/berth/berth.toml: region[1].name: region \"westus\" is defined twice",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(error_of(&text), want);
    }
}

#[test]
fn missing_file_error_names_it() {
    let e = Config::load(Path::new("/nonexistent/berth.toml")).expect_err("no such file");
    assert_eq!(
        e.to_string(),
        "cannot read config file /nonexistent/berth.toml"
    );
    assert_eq!(
        berth::report(&e),
        "cannot read config file /nonexistent/berth.toml: No such file or directory (os error 2)"
    );
}

#[test]
fn dns_tcp_limits_have_defaults_and_are_validated() {
    let c = Config::parse(BASE, Path::new("/etc/berth/berth.toml")).expect("valid");
    assert_eq!(
        (
            c.dns.tcp_max_connections,
            c.dns.tcp_max_connections_per_client
        ),
        (1024, 64)
    );
    let listen = "listen = [\"127.0.0.1:1053\"]";
    let cases = [
        (
            "tcp_max_connections = 0",
            "/etc/berth/berth.toml: dns.tcp_max_connections: must be at least 1 (DNS over TCP is required, RFC 7766)",
        ),
        (
            "tcp_max_connections = 10\ntcp_max_connections_per_client = 11",
            "/etc/berth/berth.toml: dns.tcp_max_connections_per_client: 11 must be between 1 and dns.tcp_max_connections (10)",
        ),
        (
            "tcp_max_connections_per_client = 0",
            "/etc/berth/berth.toml: dns.tcp_max_connections_per_client: 0 must be between 1 and dns.tcp_max_connections (1024)",
        ),
    ];
    for (keys, want) in cases {
        assert_eq!(error_of(&with(listen, &format!("{listen}\n{keys}"))), want);
    }
}

#[test]
fn rate_limit_and_cookie_sections() {
    let path = Path::new("/etc/berth/berth.toml");
    // Defaults: no rate limiting (as BIND and Knot ship), cookies answered with a random secret.
    let c = Config::parse(BASE, path).expect("valid");
    assert!(!c.dns.rate_limit.enabled);
    assert!(c.dns.cookie.enabled && c.dns.cookie.secret.is_none());
    // Writing the section turns it on; every key can be set.
    let text = format!(
        "{BASE}\n[dns.rate_limit]\nresponses_per_second = 20\nwindow = \"5s\"\nslip = 1\n\
         ipv4_prefix = 32\nipv6_prefix = 64\ntable_size = 1024\n\
         [dns.cookie]\nsecret_file = \"cookie.key\"\n"
    );
    let c = Config::parse(&text, path).expect("valid");
    let r = &c.dns.rate_limit;
    assert!(r.enabled);
    assert_eq!(
        (r.responses_per_second, r.window.as_secs(), r.slip),
        (20, 5, 1)
    );
    assert_eq!((r.ipv4_prefix, r.ipv6_prefix, r.table_size), (32, 64, 1024));
    assert_eq!(
        c.dns.cookie.secret,
        Some(berth::config::CookieSecret::File(
            "/etc/berth/cookie.key".into()
        ))
    );
    let off = format!("{BASE}\n[dns.rate_limit]\nenabled = false\n[dns.cookie]\nenabled = false\n");
    let c = Config::parse(&off, path).expect("valid");
    assert!(!c.dns.rate_limit.enabled && !c.dns.cookie.enabled);
    // A secret given inline never shows in a printed config.
    let inline = format!("{BASE}\n[dns.cookie]\nsecret = \"e5e973e5a6b2a43f48e7dc849e37bfcf\"\n");
    let c = Config::parse(&inline, path).expect("valid");
    assert!(!format!("{c:?}").contains("e5e973"));

    let cases = [
        (
            "[dns.rate_limit]\nresponses_per_second = 0",
            "dns.rate_limit.responses_per_second: 0 is not between 1 and 1000000 (to stop limiting, set enabled = false)",
        ),
        (
            "[dns.rate_limit]\nslip = 11",
            "dns.rate_limit.slip: 11 is above 10; 0 drops every limited answer, 1 truncates every one, 2 every other",
        ),
        (
            "[dns.rate_limit]\nwindow = \"2h\"",
            "dns.rate_limit.window: \"2h\" is longer than the 1h the limiter can hold",
        ),
        (
            "[dns.rate_limit]\nipv4_prefix = 33",
            "dns.rate_limit.ipv4_prefix: 33 is not an IPv4 prefix length (0-32)",
        ),
        (
            "[dns.rate_limit]\nipv6_prefix = 129",
            "dns.rate_limit.ipv6_prefix: 129 is not an IPv6 prefix length (0-128)",
        ),
        (
            "[dns.rate_limit]\ntable_size = 10",
            "dns.rate_limit.table_size: 10 is not between 64 and 16777216 entries",
        ),
        (
            "[dns.cookie]\nsecret = \"abcd\"",
            "dns.cookie.secret: a cookie secret is 32 hexadecimal digits (128 bits, e.g. `openssl rand -hex 16`), not 4 characters",
        ),
        (
            "[dns.cookie]\nsecret = \"e5e973e5a6b2a43f48e7dc849e37bfcf\"\nsecret_file = \"k\"",
            "dns.cookie.secret_file: give secret or secret_file, not both",
        ),
    ];
    for (section, want) in cases {
        let e = error_of(&format!("{BASE}\n{section}\n"));
        assert_eq!(e, format!("/etc/berth/berth.toml: {want}"));
    }
    let e = error_of(&format!("{BASE}\n[dns.rate_limit]\nrate = 5\n"));
    assert!(e.contains("unknown field `rate`"), "{e}");
    let e = error_of(&format!("{BASE}\n[dns.cookie]\nkey = \"x\"\n"));
    assert!(e.contains("unknown field `key`"), "{e}");
}

#[test]
fn log_section_switches_the_per_request_logs() {
    let c = Config::parse(
        &format!("{BASE}\n[log]\naccess = true\n"),
        Path::new("/etc/berth/berth.toml"),
    )
    .expect("valid");
    assert_eq!(
        c.log,
        berth::config::LogConfig {
            access: true,
            queries: false
        }
    );
    let e = error_of(&format!("{BASE}\n[log]\nqueries = true\nacess = true\n"));
    assert!(
        e.starts_with("/etc/berth/berth.toml: TOML parse error"),
        "{e}"
    );
    assert!(e.contains("unknown field `acess`"), "{e}");
}

/// `probe.ca_file` and `probe.host` are checked at load; a region without its own CA file
/// trusts `proxy.upstream_ca_file`, as the proxy does.
#[test]
fn probe_tls_keys_are_validated_and_the_ca_defaults_to_the_proxys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("berth.toml");
    std::fs::write(dir.path().join("ca.pem"), "-----BEGIN CERTIFICATE-----\n").expect("ca");
    std::fs::write(dir.path().join("empty.pem"), "").expect("empty");
    let parse = |text: &str| Config::parse(text, &config);
    let region = |probe: &str| {
        with(
            "a = [\"192.0.2.10\"]",
            &format!(
                "a = [\"192.0.2.10\"]\nupstream = \"https://10.0.0.5:5443\"\nprobe = {{ {probe} }}"
            ),
        )
    };

    let c = parse(&region(
        "ca_file = \"ca.pem\", host = \"registry.example.com:5443\"",
    ))
    .expect("valid");
    assert_eq!(c.regions[0].probe.ca_file, Some(dir.path().join("ca.pem")));
    assert_eq!(
        c.regions[0].probe.host.as_deref(),
        Some("registry.example.com:5443")
    );

    let inherited = format!(
        "{}\n[proxy]\nupstream_ca_file = \"ca.pem\"\n",
        region("path = \"/v2/\"")
    );
    let c = parse(&inherited).expect("valid");
    assert_eq!(c.regions[0].probe.ca_file, Some(dir.path().join("ca.pem")));
    assert_eq!(
        parse(&region("path = \"/v2/\"")).expect("valid").regions[0]
            .probe
            .ca_file,
        None
    );

    let err = |text: String| parse(&text).expect_err("rejected").to_string();
    let at = config.display();
    assert_eq!(
        err(region("ca_file = \"missing.pem\"")),
        format!(
            "{at}: region[0] (westus).probe.ca_file: cannot read {}: No such file or directory (os error 2)",
            dir.path().join("missing.pem").display()
        )
    );
    assert_eq!(
        err(region("ca_file = \"empty.pem\"")),
        format!(
            "{at}: region[0] (westus).probe.ca_file: {} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")",
            dir.path().join("empty.pem").display()
        )
    );
    for bad in [
        "https://registry.example.com",
        "registry example",
        "host:port",
        "",
    ] {
        assert_eq!(
            err(region(&format!("host = \"{bad}\""))),
            format!(
                "{at}: region[0] (westus).probe.host: \"{bad}\" is not a host name or address, with an optional port, such as \"registry.example.com\""
            )
        );
    }
}

#[test]
fn sticky_capacity_is_bounded() {
    let cases = [
        (
            "capacity = 0",
            "/etc/berth/berth.toml: sticky.capacity: must be at least 1",
        ),
        (
            "capacity = 100000001",
            "/etc/berth/berth.toml: sticky.capacity: 100000001 must be at most 100000000 (reserved at start, about 24 bytes per client)",
        ),
    ];
    for (keys, want) in cases {
        assert_eq!(error_of(&format!("{BASE}\n[sticky]\n{keys}\n")), want);
    }
}

/// `[replication]`: defaults, the queue beside the state file, and errors that name the key.
#[test]
fn replication_section_defaults_and_errors() {
    let path = Path::new("/etc/berth/berth.toml");
    let c = Config::parse(BASE, path).expect("valid");
    assert!(c.replication.is_none(), "off when absent");
    let on =
        format!("{BASE}\n[replication]\n[[replication.rule]]\nname = \"all\"\nto = [\"westus\"]\n");
    let with_upstream = on.replace(
        "a = [\"192.0.2.10\"]",
        "a = [\"192.0.2.10\"]\nupstream = \"http://127.0.0.1:5001\"",
    );
    let r = Config::parse(&with_upstream, path)
        .expect("valid")
        .replication
        .expect("on");
    assert_eq!(r.concurrency, 4);
    assert_eq!(r.rules[0].repositories, ["**"]);
    assert_eq!(r.rules[0].tags, ["*"]);
    assert!(
        !r.rules[0].delete,
        "deletes are not propagated unless asked"
    );
    assert_eq!(r.rules[0].bandwidth, None);
    let limited = with_upstream.replace(
        "to = [\"westus\"]",
        "to = [\"westus\"]\nbandwidth = \"50MiB/s\"",
    );
    let r = Config::parse(&limited, path)
        .expect("valid")
        .replication
        .expect("on");
    assert_eq!(r.rules[0].bandwidth, Some(50 << 20));
    assert_eq!(
        r.queue_file,
        Path::new("/etc/berth/berth.state.replication.json")
    );
    for (text, want) in [
        (
            on.clone(),
            "replication.rule[0] (all).to: region \"westus\" has no upstream registry to copy to",
        ),
        (
            with_upstream.replace("to = [\"westus\"]", "to = [\"mars\"]"),
            "replication.rule[0] (all).to: \"mars\" is not a [[region]] name",
        ),
        (
            with_upstream.replace(
                "[replication]\n",
                "[replication]\nbandwidth = \"50MiB/s\"\n",
            ),
            "unknown field `bandwidth`",
        ),
        (
            with_upstream.replace("to = [\"westus\"]", "to = [\"westus\"]\ndelete = \"yes\""),
            "expected a boolean",
        ),
        (
            with_upstream.replace(
                "to = [\"westus\"]",
                "to = [\"westus\"]\nbandwidth = \"fast\"",
            ),
            "replication.rule[0] (all).bandwidth: \"fast\" is not a rate such as \"50MiB/s\"",
        ),
        (
            with_upstream.replace(
                "to = [\"westus\"]",
                "to = [\"westus\"]\nbandwidth = \"100/s\"",
            ),
            "replication.rule[0] (all).bandwidth: \"100/s\" is below 1KiB/s",
        ),
        (
            with_upstream.replace("[replication]\n", "[replication]\nconcurrency = 0\n"),
            "replication.concurrency: must be between 1 and 64",
        ),
        (
            format!("{BASE}\n[replication]\n"),
            "replication.rule: no rule",
        ),
    ] {
        let e = error_of(&text);
        assert!(e.contains(want), "{e}\n(wanted {want:?})");
        assert!(e.contains("/etc/berth/berth.toml"), "{e}");
    }
}
