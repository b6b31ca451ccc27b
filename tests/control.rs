//! Health, flags, stickiness, reload and the admin API, end to end: real `docker-registry`
//! replicas as regions, Berth started on loopback, answers read with `dig`, changes made with
//! the `berth` CLI and plain HTTP.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth::dns::{answer, Transport};
use berth::live::{HealthInfo, Live};
use hickory_proto::op::Message;
use hickory_proto::rr::{RData, RecordType};
use serde_json::Value;

mod support;
use support::{bed, demo_config, dig, ecs_query as query, eventually, routed_a, Berth, TOKEN};

const TOKYO: &str = "198.51.100.0/24";
const DEADLINE: Duration = Duration::from_secs(15);

fn http(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let with = |r: ureq::RequestBuilder<ureq::typestate::WithBody>| match token {
        Some(t) => r.header("Authorization", format!("Bearer {t}")),
        None => r,
    };
    let resp = match method {
        "GET" => {
            let r = agent.get(url);
            let r = match token {
                Some(t) => r.header("Authorization", format!("Bearer {t}")),
                None => r,
            };
            r.call()
        }
        "PUT" => with(agent.put(url))
            .content_type("application/json")
            .send(body.unwrap_or("")),
        "POST" => with(agent.post(url)).send(body.unwrap_or("")),
        _ => panic!("method {method}"),
    };
    let mut resp = resp.expect("admin API reachable");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().expect("body");
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

fn region<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["regions"]
        .as_array()
        .expect("regions")
        .iter()
        .find(|r| r["name"] == name)
        .expect("region listed")
}

fn cli(args: &[&str], token: Option<&str>) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
    c.args(args).env_remove("BERTH_ADMIN_TOKEN");
    if let Some(t) = token {
        c.env("BERTH_ADMIN_TOKEN", t);
    }
    c.output().expect("berth runs")
}

fn metric(admin: &str, line_prefix: &str) -> String {
    let (_, v) = http("GET", &format!("{admin}/metrics"), None, None);
    let text = v.as_str().expect("metrics are text").to_string();
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .unwrap_or_else(|| panic!("no metric {line_prefix}:\n{text}"))
        .rsplit(' ')
        .next()
        .expect("value")
        .to_string()
}

#[test]
fn a_stopped_replica_loses_its_clients_and_comes_back_after_rise() {
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let mut bed = bed(&rt);
    let berth = Berth::start(&bed.config);
    let admin = berth.admin();
    let all_up = |admin: &str| {
        let (_, v) = http("GET", &format!("{admin}/api/v1/regions"), None, None);
        v["regions"]
            .as_array()
            .expect("regions")
            .iter()
            .all(|r| r["health"] == "up")
    };
    rt.block_on(eventually("every region probed up", DEADLINE, || {
        all_up(&admin)
    }));
    assert_eq!(routed_a(berth.dns, TOKYO), ["192.0.2.40"]);

    bed.regs[3].stop();
    rt.block_on(eventually("southeastasia down", DEADLINE, || {
        let (_, v) = http("GET", &format!("{admin}/api/v1/regions"), None, None);
        region(&v, "southeastasia")["health"] == "down"
    }));
    let (_, v) = http("GET", &format!("{admin}/api/v1/regions"), None, None);
    let sea = region(&v, "southeastasia");
    assert_eq!(sea["eligible"], false);
    let err = sea["last_error"].as_str().expect("an error is kept");
    assert!(err.contains("Connection refused"), "{err}");
    // Tokyo's next-nearest region.
    assert_eq!(routed_a(berth.dns, TOKYO), ["192.0.2.10"]);
    assert_eq!(
        metric(&admin, "berth_region_healthy{region=\"southeastasia\"}"),
        "0"
    );
    assert_eq!(
        metric(
            &admin,
            "berth_region_down_events_total{region=\"southeastasia\"}"
        ),
        "1"
    );

    rt.block_on(bed.regs[3].start());
    rt.block_on(eventually("southeastasia up again", DEADLINE, || {
        let (_, v) = http("GET", &format!("{admin}/api/v1/regions"), None, None);
        region(&v, "southeastasia")["health"] == "up"
    }));
    // The Tokyo client stays where it is (sticky), a new client near Tokyo gets southeastasia.
    assert_eq!(routed_a(berth.dns, TOKYO), ["192.0.2.10"]);
    assert_eq!(
        routed_a(berth.dns, "198.51.100.128/25"),
        ["192.0.2.10"],
        "same /24 key"
    );
    let (_, v) = http("GET", &format!("{admin}/api/v1/events"), None, None);
    let kinds: Vec<&str> = v["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"region-down") && kinds.contains(&"region-up"),
        "{kinds:?}"
    );
}

#[test]
fn disabling_through_the_cli_moves_clients_and_survives_a_restart() {
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let bed = bed(&rt);
    let mut berth = Berth::start(&bed.config);
    let admin = berth.admin();
    assert_eq!(routed_a(berth.dns, TOKYO), ["192.0.2.40"]);

    // Without the token, or with a wrong one: refused, nothing changes.
    let o = cli(
        &["region", "disable", "southeastasia", "--admin", &admin],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("401 Unauthorized: this needs Authorization: Bearer <admin token>"),
        "{e}"
    );
    let o = cli(
        &["region", "disable", "southeastasia", "--admin", &admin],
        Some("nope"),
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("401 Unauthorized: wrong bearer token"));
    assert_eq!(routed_a(berth.dns, TOKYO), ["192.0.2.40"]);

    let o = cli(
        &["region", "disable", "southeastasia", "--admin", &admin],
        Some(TOKEN),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "southeastasia: endpoint_enabled false, health up"
    );
    // A disabled region releases its clients at once, sticky or not.
    assert_eq!(routed_a(berth.dns, TOKYO), ["192.0.2.10"]);
    let o = cli(&["region", "list", "--admin", &admin], None);
    let list = String::from_utf8_lossy(&o.stdout);
    assert!(
        list.lines()
            .any(|l| l.starts_with("southeastasia") && l.contains(" no ")),
        "{list}"
    );
    let o = cli(&["route", "198.51.100.7", "--admin", &admin], None);
    let why = String::from_utf8_lossy(&o.stdout);
    assert!(why.contains("  southeastasia    disabled"), "{why}");

    // Restart Berth: the flag comes back from the state file.
    berth.stop();
    let berth = Berth::start(&bed.config);
    assert_eq!(routed_a(berth.dns, TOKYO), ["192.0.2.10"]);
    let (_, v) = http(
        "GET",
        &format!("{}/api/v1/regions/southeastasia", berth.admin()),
        None,
        None,
    );
    assert_eq!(v["endpoint_enabled"], false);
    assert!(bed.dir.path().join("berth.state.json").exists());

    let o = cli(
        &[
            "region",
            "enable",
            "southeastasia",
            "--admin",
            &berth.admin(),
        ],
        Some(TOKEN),
    );
    assert!(o.status.success());
    assert_eq!(
        routed_a(berth.dns, "198.51.100.0/24"),
        ["192.0.2.10"],
        "sticky while westus is eligible"
    );
}

#[test]
fn all_down_fails_open_and_all_disabled_has_no_data() {
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let mut bed = bed(&rt);
    let berth = Berth::start(&bed.config);
    let admin = berth.admin();
    for r in bed.regs.iter_mut() {
        r.stop();
    }
    rt.block_on(eventually("every region down", DEADLINE, || {
        let (_, v) = http("GET", &format!("{admin}/api/v1/regions"), None, None);
        v["regions"]
            .as_array()
            .expect("regions")
            .iter()
            .all(|r| r["health"] == "down")
    }));
    let (_, v) = http("GET", &format!("{admin}/api/v1/regions"), None, None);
    assert_eq!(v["routed_names"][0]["fail_open"], true);
    assert_eq!(
        metric(&admin, "berth_fail_open{name=\"registry.example.test\"}"),
        "1"
    );
    assert_eq!(metric(&admin, "berth_fail_open_events_total"), "1");
    // Failing open answers as if all were healthy: Tokyo's nearest.
    assert_eq!(routed_a(berth.dns, TOKYO), ["192.0.2.40"]);
    assert_ne!(
        metric(
            &admin,
            "berth_fail_open_answers_total{name=\"registry.example.test\"}"
        ),
        "0"
    );

    for name in ["westus", "eastus", "westeurope", "southeastasia"] {
        let (status, _) = http(
            "PUT",
            &format!("{admin}/api/v1/regions/{name}"),
            Some(TOKEN),
            Some("{\"endpoint_enabled\": false}"),
        );
        assert_eq!(status, 200);
    }
    let d = dig(
        berth.dns,
        &["registry.example.test", "A", "+subnet=198.51.100.0/24"],
    );
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert!(d.answer.is_empty(), "{}", d.raw);
    assert!(
        d.authority.len() == 1 && d.authority[0].contains("SOA"),
        "{}",
        d.raw
    );
    // The negative TTL is capped by the routed name's TTL (30), so clients come back soon.
    assert_eq!(
        d.authority[0].split_whitespace().nth(1),
        Some("30"),
        "{}",
        d.raw
    );
    let (_, v) = http("GET", &format!("{admin}/api/v1/regions"), None, None);
    assert_eq!(v["routed_names"][0]["fail_open"], false);
}

#[test]
fn a_bad_reload_keeps_the_old_answers_and_says_why() {
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let bed = bed(&rt);
    let berth = Berth::start(&bed.config);
    let admin = berth.admin();
    let good = std::fs::read_to_string(&bed.config).expect("config");

    let broken = good.replace("latitude = 1.3", "latitude = 91.3");
    std::fs::write(&bed.config, &broken).expect("write");
    let (status, v) = http("POST", &format!("{admin}/api/v1/reload"), Some(TOKEN), None);
    assert_eq!(status, 422, "{v}");
    let err = v["error"].as_str().expect("error text");
    assert!(
        err.ends_with("region[3] (southeastasia).latitude: 91.3 is outside -90..90"),
        "{err}"
    );
    assert_eq!(v["generation"], 1);
    assert_eq!(
        routed_a(berth.dns, TOKYO),
        ["192.0.2.40"],
        "old config keeps serving"
    );
    assert_eq!(metric(&admin, "berth_last_reload_ok"), "0");
    assert_eq!(
        metric(&admin, "berth_reloads_total{result=\"rejected\"}"),
        "1"
    );
    let (_, v) = http("GET", &format!("{admin}/api/v1/regions"), None, None);
    assert_eq!(v["last_reload"]["ok"], false);

    // A broken zone file is rejected the same way.
    let zone = bed.dir.path().join("bad.zone");
    std::fs::write(
        &zone,
        "$ORIGIN example.test.\n@ 60 IN SOA ns1 h 1 2 3 4 5\n",
    )
    .expect("zone");
    let zone_path = format!("{}/zones/example.test.zone", support::repo().display());
    std::fs::write(
        &bed.config,
        good.replace(&zone_path, zone.to_str().expect("utf8")),
    )
    .expect("write");
    let (status, v) = http("POST", &format!("{admin}/api/v1/reload"), Some(TOKEN), None);
    assert_eq!(status, 422);
    assert!(
        v["error"].as_str().expect("text").contains("bad.zone"),
        "{v}"
    );

    // A good change goes through: Tokyo's region moves to the other side of the world.
    std::fs::write(
        &bed.config,
        good.replace(
            "latitude = 1.3\nlongitude = 103.8",
            "latitude = 40.0\nlongitude = -3.0",
        ),
    )
    .expect("write");
    let (status, v) = http("POST", &format!("{admin}/api/v1/reload"), Some(TOKEN), None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["generation"], 2);
    assert_eq!(metric(&admin, "berth_last_reload_ok"), "1");
    assert_eq!(
        routed_a(berth.dns, "198.51.100.0/24"),
        ["192.0.2.40"],
        "sticky: still eligible"
    );
    let d = dig(
        berth.dns,
        &["registry.example.test", "A", "+subnet=2001:db8:4::/56"],
    );
    assert_eq!(
        d.answer_data(),
        ["192.0.2.10"],
        "Sydney now nearest to westus: {}",
        d.raw
    );
}

#[test]
fn admin_api_errors_are_json_and_changes_need_the_token() {
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let bed = bed(&rt);
    let berth = Berth::start(&bed.config);
    let admin = berth.admin();
    let url = format!("{admin}/api/v1/regions/westus");
    let (s, v) = http("PUT", &url, None, Some("{\"endpoint_enabled\": false}"));
    assert_eq!(
        (s, v["error"].as_str()),
        (401, Some("this needs Authorization: Bearer <admin token>"))
    );
    let (s, v) = http(
        "PUT",
        &url,
        Some("wrong"),
        Some("{\"endpoint_enabled\": false}"),
    );
    assert_eq!((s, v["error"].as_str()), (401, Some("wrong bearer token")));
    let (s, v) = http("PUT", &url, Some(TOKEN), Some("{\"enabled\": false}"));
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .expect("text")
            .starts_with("expected {\"endpoint_enabled\": true|false}"),
        "{v}"
    );
    let (s, v) = http(
        "PUT",
        &format!("{admin}/api/v1/regions/mars"),
        Some(TOKEN),
        Some("{\"endpoint_enabled\": false}"),
    );
    assert_eq!(
        (s, v["error"].as_str()),
        (404, Some("no region is named \"mars\""))
    );
    let (s, _) = http("POST", &format!("{admin}/api/v1/reload"), None, None);
    assert_eq!(s, 401);
    let (s, v) = http(
        "GET",
        &format!("{admin}/api/v1/route?client=banana"),
        None,
        None,
    );
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("client \"banana\" is not an IP address"))
    );
    let (s, v) = http(
        "GET",
        &format!("{admin}/api/v1/route?client=203.0.113.9&name=registry.example.test"),
        None,
        None,
    );
    assert_eq!(s, 200);
    assert_eq!(v["region"], "eastus");
    assert_eq!(v["client_key"], "203.0.113.0/24");
    assert_eq!(v["location"]["city"], "Sao Paulo");
    assert!(v["explanation"]
        .as_str()
        .expect("text")
        .contains("chosen eastus: lowest estimated latency"));
    // Flags unchanged by all of the above.
    let (_, v) = http("GET", &url, None, None);
    assert_eq!(v["endpoint_enabled"], true);
}

/// The admin listener refuses to start on a non-loopback address without a token.
#[test]
fn admin_off_loopback_needs_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = demo_config(
        dir.path(),
        &[(
            "token_env = \"BERTH_ADMIN_TOKEN\"",
            "token_env = \"BERTH_TEST_UNSET_TOKEN\"",
        )],
        "",
    );
    let text = std::fs::read_to_string(&config).expect("read");
    // Replace the admin listen line (made 127.0.0.1:0 by demo_config) with a wildcard address.
    let text = text.replacen(
        "listen = \"127.0.0.1:0\"            # admin",
        "listen = \"0.0.0.0:0\"            # admin",
        1,
    );
    std::fs::write(&config, text).expect("write");
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let e = rt
        .block_on(berth::app::Running::start(&config))
        .err()
        .expect("refused");
    assert!(
        format!("{e:#}")
            .contains("admin.listen 0.0.0.0:0 is not a loopback address and no admin token is set"),
        "{e:#}"
    );
}

// ---------------------------------------------------------------------------------------------
// A push's worth of queries, replayed through the DNS engine with a controlled clock.

/// The region an answer points at, by its address or CNAME target.
fn region_of(resp: &[u8]) -> String {
    let m = Message::from_vec(resp).expect("decode");
    let rec = m
        .answers
        .first()
        .unwrap_or_else(|| panic!("no answer: {m:?}"));
    match &rec.data {
        RData::A(a) => ["westus", "eastus", "westeurope", "southeastasia"]
            [usize::from(a.0.octets()[3] / 10 - 1)]
        .to_string(),
        RData::AAAA(a) => ["westus", "eastus", "westeurope", "southeastasia"]
            [usize::from(a.0.octets()[15] / 0x10 - 1)]
        .to_string(),
        RData::CNAME(c) => c.0.to_ascii().split('.').next().expect("label").to_string(),
        other => panic!("unexpected {other:?}"),
    }
}

/// A config whose latency table makes westus and eastus near-equal for the Tokyo /24, with
/// `westus_ms` and `eastus_ms` as the jittering estimates, westeurope a close third.
fn jitter_config(dir: &Path, westus_ms: u32, eastus_ms: u32, cname: bool) -> PathBuf {
    let mut replace = vec![];
    let cnames: Vec<(String, String)> = ["westus", "eastus", "westeurope", "southeastasia"]
        .iter()
        .enumerate()
        .map(|(i, r)| {
            (
                format!(
                    "a = [\"192.0.2.{}0\"]\naaaa = [\"2001:db8::{}0\"]",
                    i + 1,
                    i + 1
                ),
                format!("cname = \"{r}.data.registry.example.test\""),
            )
        })
        .collect();
    if cname {
        replace.extend(cnames.iter().map(|(a, b)| (a.as_str(), b.as_str())));
    }
    let extra = format!(
        "[[routed_name.latency]]\ncidr = \"198.51.100.0/24\"\nms = {{ westus = {westus_ms}, eastus = {eastus_ms}, westeurope = 49, southeastasia = 200 }}\n"
    );
    demo_config(dir, &replace, &extra)
}

fn replay(cname: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = Live::load(&jitter_config(dir.path(), 40, 42, cname)).expect("loads");
    let src: IpAddr = "192.0.2.200".parse().expect("literal");
    let qtypes = if cname {
        vec![RecordType::A, RecordType::AAAA, RecordType::CNAME]
    } else {
        vec![RecordType::A, RecordType::AAAA]
    };
    let flap = |up: bool| HealthInfo {
        state: if up { "up" } else { "down" },
        healthy: up,
        last_error: (!up).then(|| "flapping".to_string()),
        probe_latency_ms: None,
    };
    let mut first: Option<String> = None;
    let mut unsticky = std::collections::BTreeSet::new();
    // 48 queries, one every 10 s: eight minutes of a push.
    for i in 0..48u64 {
        live.set_clock(i * 10_000);
        if i % 4 == 0 {
            // Estimates jitter: the best of the two near-equal regions swaps back and forth.
            let j = [0i32, 6, -3, 8, -2, 5][(i / 4) as usize % 6];
            jitter_config(dir.path(), (40 + j) as u32, (42 - j) as u32, cname);
            live.reload().expect("jitter reload");
        }
        live.set_health("westeurope", flap(i % 3 != 0));
        // What a memoryless server would say now: this must vary, or the test proves nothing.
        let snap = live.snapshot.load_full();
        let rn = &snap.config.routed_names[0];
        let fresh = snap.route(rn, "198.51.100.0".parse().expect("literal"));
        unsticky.insert(
            snap.config.regions[fresh.decision.region.expect("answer")]
                .name
                .clone(),
        );

        let q = query(
            "registry.example.test.",
            qtypes[i as usize % qtypes.len()],
            TOKYO,
        );
        let resp = answer(&live, &q, src, Transport::Udp).expect("an answer");
        let got = region_of(&resp);
        match &first {
            None => first = Some(got),
            Some(f) => assert_eq!(
                &got,
                f,
                "query {i} ({:?}) moved the client",
                qtypes[i as usize % qtypes.len()]
            ),
        }
    }
    assert!(
        unsticky.len() >= 2,
        "the jitter must change the memoryless answer: {unsticky:?}"
    );
    // The client moves when, and only when, its region becomes ineligible.
    let held = first.expect("answered");
    live.set_clock(480_000);
    live.set_health(&held, flap(false));
    let resp = answer(
        &live,
        &query("registry.example.test.", RecordType::A, TOKYO),
        src,
        Transport::Udp,
    )
    .expect("answer");
    let moved = region_of(&resp);
    assert_ne!(moved, held);
    live.set_health(&held, flap(true));
    live.set_clock(490_000);
    let resp = answer(
        &live,
        &query("registry.example.test.", RecordType::AAAA, TOKYO),
        src,
        Transport::Udp,
    )
    .expect("answer");
    assert_eq!(
        region_of(&resp),
        moved,
        "the new region is kept once the old one is back"
    );
}

#[test]
fn a_push_sees_one_region_while_estimates_jitter_and_a_third_region_flaps() {
    replay(false);
}

#[test]
fn stickiness_spans_cname_and_address_answers() {
    replay(true);
}
