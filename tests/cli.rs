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
    let out = text(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "config/demo.toml: ok: 1 zone(s), 4 region(s), 1 routed name(s), geoip Berth-City"
    );
    // The state files serve would start from (absent on a fresh clone; a machine that ran
    // the demo may have flags set).
    assert!(
        lines[1].starts_with("state: config/demo.state.json: ")
            && lines[1].contains(
                " region flag(s) set; replication queue config/demo.state.replication.json: "
            ),
        "{out}"
    );
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write");
    p
}

/// `berth check-config CFG`, which must exit 1; what it said on stderr.
fn check_config_fails(cfg: &Path) -> String {
    let o = berth(&["check-config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    text(&o.stderr)
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
    let e = check_config_fails(&cfg);
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
    let e = check_config_fails(&cfg);
    assert!(e.contains("nope.mmdb"), "{e}");

    // A routed name that the zone file also defines.
    write(dir.path(), "dup.zone", "$ORIGIN example.test.\n@ 300 IN SOA ns1 h 1 2 3 4 5\n@ 300 IN NS ns1\nns1 300 IN A 127.0.0.1\nregistry 300 IN A 192.0.2.99\n");
    let cfg = write(
        dir.path(),
        "c.toml",
        &demo.replace(&format!("{repo}/zones/example.test.zone"), "dup.zone"),
    );
    let e = check_config_fails(&cfg);
    assert!(
        e.contains("routed name registry.example.test also has A records in the zone file"),
        "{e}"
    );

    // The state files serve would start from: each one that would stop the start is named,
    // and check-config changes none of them.
    let cfg = write(dir.path(), "d.toml", &demo);
    let ok = berth(&["check-config", cfg.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(
        text(&ok.stdout).contains("0 region flag(s) set; replication queue ")
            && text(&ok.stdout).contains(": 0 job(s), 0 remembered delete(s)"),
        "{}",
        text(&ok.stdout)
    );
    let state = write(dir.path(), "d.state.json", "{\"version\":1,\"regions\":");
    let e = check_config_fails(&cfg);
    assert!(e.contains("d.state.json is not valid"), "{e}");
    std::fs::write(&state, "{\"version\":1}").expect("write");
    let journal = write(
        dir.path(),
        "d.state.replication.journal",
        "{\"generation\":0}\n{\"put\":{}}\n",
    );
    let e = check_config_fails(&cfg);
    assert!(
        e.contains("d.state.replication.journal is not valid (line 2"),
        "{e}"
    );
    write(dir.path(), "d.state.replication.deletes.json", "[]");
    std::fs::remove_file(&journal).expect("remove");
    let e = check_config_fails(&cfg);
    assert!(e.contains("d.state.replication.deletes.json"), "{e}");
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("d."))
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["d.state.json", "d.state.replication.deletes.json", "d.toml"],
        "check-config wrote nothing"
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

// ---------------------------------------------------------------------------------------------
// Logs, version, completions, man page, and the admin client's edges, with the real binary.

#[path = "support/mod.rs"]
mod support;

/// `berth serve` as a child process with its stderr in a file, killed on drop.
struct Served {
    child: std::process::Child,
    log: PathBuf,
}

impl Served {
    fn start(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Served {
        let log = config.with_extension("log");
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["serve", "--config", config.to_str().expect("utf-8 path")])
            .args(args)
            .env_remove("NO_COLOR")
            .env_remove("BERTH_LOG")
            .env_remove("BERTH_LOG_FORMAT")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .spawn()
            .expect("berth serve runs");
        Served { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The address a "serving ..." line (text or JSON) announced.
    fn addr(&self, what: &str) -> std::net::SocketAddr {
        let deadline = std::time::Instant::now() + support::START_DEADLINE;
        loop {
            let log = self.log();
            let found = log.lines().filter(|l| l.contains(what)).find_map(|l| {
                let at = l.find("127.0.0.1:")?;
                let rest = &l[at..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                    .unwrap_or(rest.len());
                rest[..end].parse().ok()
            });
            if let Some(a) = found {
                return a;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {what:?} line in the log:\n{log}"
            );
            std::thread::sleep(support::POLL);
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(url: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent.get(url).call().expect("request");
    (
        r.status().as_u16(),
        r.body_mut().read_to_string().unwrap_or_default(),
    )
}

#[test]
fn logs_to_a_file_have_no_colour_and_no_line_per_query() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = support::demo_config(dir.path(), &[], "");
    let s = Served::start(&cfg, &[], &[]);
    let dns = s.addr("serving DNS");
    for tcp in [true, false] {
        let mut args = vec!["registry.example.test", "A"];
        if tcp {
            args.push("+tcp");
        }
        assert_eq!(support::dig(dns, &args).status, "NOERROR");
    }
    let admin = s.addr("serving the admin API");
    // The queries were answered (and counted) before the log is read.
    let (_, metrics) = http_get(&format!("http://{admin}/metrics"));
    assert!(
        metrics.contains("transport=\"tcp\",rcode=\"NOERROR\"} 1"),
        "{metrics}"
    );
    let log = s.log();
    assert!(!log.contains('\u{1b}'), "ANSI escape in a log file:\n{log}");
    assert!(log.contains(" INFO berth::app: serving DNS"), "{log}");
    assert!(
        !log.contains("registry.example.test"),
        "a line per query:\n{log}"
    );
}

#[test]
fn json_logs_parse_and_the_access_log_is_off_unless_asked_for() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut reg = support::Registry::new();
    rt.block_on(reg.start());
    let dir = tempfile::tempdir().expect("tempdir");
    let westus = format!("upstream = \"{}\"", reg.upstream());
    let cfg = support::demo_config(
        dir.path(),
        &[("upstream = \"http://127.0.0.1:5001\"", &westus)],
        "",
    );
    for access in [false, true] {
        let args: &[&str] = if access { &["--query-log"] } else { &[] };
        let env: &[(&str, &str)] = if access {
            &[("BERTH_LOG_FORMAT", "json"), ("BERTH_ACCESS_LOG", "1")]
        } else {
            &[("BERTH_LOG_FORMAT", "json")]
        };
        let s = Served::start(&cfg, args, env);
        let proxy = s.addr("serving the registry proxy");
        let admin = s.addr("serving the admin API");
        let (status, _) = http_get(&format!("http://{proxy}/v2/"));
        assert_eq!(status, 200);
        // The request is logged and counted in the same phase: once counted, it was logged.
        support::wait_until("the request is counted", support::START_DEADLINE, || {
            http_get(&format!("http://{admin}/metrics"))
                .1
                .contains("berth_proxy_request_duration_seconds_count{region=\"westus\",method=\"GET\",status=\"2xx\"} 1")
        });
        let log = s.log();
        let lines: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert!(lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string()));
        let access_lines: Vec<_> = lines
            .iter()
            .filter(|l| l["target"] == "berth::access")
            .collect();
        if !access {
            assert!(access_lines.is_empty(), "{log}");
            continue;
        }
        assert_eq!(access_lines.len(), 1, "{log}");
        let a = access_lines[0];
        assert_eq!(
            (
                &a["client"],
                &a["method"],
                &a["region"],
                &a["status"],
                &a["path"]
            ),
            (
                &"127.0.0.1".into(),
                &"GET".into(),
                &"westus".into(),
                &200.into(),
                &"/v2/".into()
            ),
            "{a}"
        );
        assert!(
            a["duration_seconds"].as_f64().is_some_and(|d| d > 0.0),
            "{a}"
        );
        assert!(
            a["request_id"].as_str().is_some_and(|id| !id.is_empty()),
            "{a}"
        );
        assert!(a["bytes_out"].is_u64() && a["repository"] == "-", "{a}");
    }
}

#[test]
fn version_names_the_commit_and_completions_and_man_page_come_from_the_cli() {
    let o = berth(&["--version"]);
    let v = text(&o.stdout);
    assert!(
        v.starts_with(&format!("berth {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or("unknown".to_string(), |o| {
            text(&o.stdout).trim().to_string()
        });
    assert!(v.contains(&commit), "{v} lacks {commit}");

    let o = berth(&["completions", "bash"]);
    assert!(o.status.success());
    let script = text(&o.stdout);
    assert!(
        script.contains("check-config") && script.contains("--log-format"),
        "{script}"
    );
    // bash itself accepts it.
    let dir = tempfile::tempdir().expect("tempdir");
    let f = write(dir.path(), "berth.bash", &script);
    let st = Command::new("bash")
        .args(["-n", f.to_str().expect("path")])
        .status()
        .expect("bash");
    assert!(st.success());

    let o = berth(&["man"]);
    let man = text(&o.stdout);
    assert!(man.starts_with(".ie") || man.contains(".TH berth"), "{man}");
    assert!(man.contains("BERTH_LOG"), "{man}");
}

#[test]
fn serve_without_config_says_where_it_looked() {
    let o = berth(&["serve"]);
    assert_eq!(o.status.code(), Some(1));
    let e = text(&o.stderr);
    assert!(
        std::path::Path::new("/etc/berth/berth.toml").exists()
            || e.contains("no --config given and /etc/berth/berth.toml does not exist"),
        "{e}"
    );
}

#[test]
fn region_list_and_route_speak_json_and_admin_takes_host_port() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = support::demo_config(dir.path(), &[], "");
    let s = Served::start(&cfg, &[], &[("BERTH_ADMIN_TOKEN", support::TOKEN)]);
    let admin = s.addr("serving the admin API").to_string();
    // host:port without http://
    let o = berth(&["region", "list", "-o", "json", "--admin", &admin]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["regions"].as_array().map(Vec::len), Some(4), "{v}");

    let o = berth(&["route", "198.51.100.7", "-o", "json", "--admin", &admin]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["region"], "southeastasia", "{v}");
    let o = berth(&["route", "198.51.100.7", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["region"], "southeastasia", "{v}");

    // A change without the token: the error names the variable to set.
    let o = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["region", "disable", "westus", "--admin", &admin])
        .env_remove("BERTH_ADMIN_TOKEN")
        .output()
        .expect("berth");
    let e = text(&o.stderr);
    assert!(
        e.contains("401") && e.contains("set BERTH_ADMIN_TOKEN"),
        "{e}"
    );
}

/// The Prometheus alert rules are valid and fire as their unit tests say
/// (deploy/prometheus/berth-alerts.test.yml); the metrics they read are checked against a live
/// Berth in tests/proxy.rs.
#[test]
fn alert_rules_pass_promtool_unit_tests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    for args in [
        &["check", "rules", "berth-alerts.yml"][..],
        &["test", "rules", "berth-alerts.test.yml"][..],
    ] {
        let o = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool runs (scripts/setup --test installs it)");
        assert!(
            o.status.success(),
            "promtool {args:?}: {}{}",
            text(&o.stdout),
            text(&o.stderr)
        );
    }
}

/// `[log] queries` follows the config across reloads (SIGHUP): on, off, on again; the
/// queries answered while it was off leave no line.
#[test]
fn a_reload_switches_the_query_log_off_and_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = support::demo_config(dir.path(), &[], "[log]\nqueries = true\n");
    let s = Served::start(&cfg, &[], &[]);
    let dns = s.addr("serving DNS");
    let lines = |s: &Served| s.log().matches(" berth::query: ").count();
    let query = || {
        assert_eq!(
            support::dig(dns, &["registry.example.test", "A"]).status,
            "NOERROR"
        )
    };
    let reload_with = |queries: bool, says: &str| {
        let text = std::fs::read_to_string(&cfg).expect("config");
        let text = text.replace(
            &format!("queries = {}", !queries),
            &format!("queries = {queries}"),
        );
        std::fs::write(&cfg, text).expect("config");
        let before = s.log().matches(says).count();
        let hup = Command::new("kill")
            .args(["-HUP", &s.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(hup.success());
        let end = std::time::Instant::now() + support::START_DEADLINE;
        while s.log().matches(says).count() <= before {
            assert!(
                std::time::Instant::now() < end,
                "no {says:?} after the reload; the log:\n{}",
                s.log()
            );
            std::thread::sleep(support::POLL);
        }
    };
    query();
    support::wait_until("a query line", support::START_DEADLINE, || lines(&s) == 1);
    reload_with(false, "DNS query log off");
    for _ in 0..3 {
        query();
    }
    reload_with(true, "DNS query log on");
    query();
    support::wait_until("a second query line", support::START_DEADLINE, || {
        lines(&s) >= 2
    });
    assert_eq!(
        lines(&s),
        2,
        "queries answered while off were logged:\n{}",
        s.log()
    );
}
