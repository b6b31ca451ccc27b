//! What must never take Berth down: reloads that change the set of regions or the GeoIP
//! database while queries flow (SIGHUP to the real binary, and the admin API), an empty config,
//! a truncated database, and a flood of distinct client subnets against a small sticky table.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use serde_json::Value;

mod support;
use support::{demo_config, ecs_query, free_port, repo, Berth};

const TOKYO: &str = "198.51.100.0/24";
const DEADLINE: Duration = Duration::from_secs(20);
const TOKEN: &str = "reliability-token-0123";

/// The demo's regions: name, latitude, longitude, A address.
const REGIONS: [(&str, f64, f64, &str); 4] = [
    ("westus", 47.6, -122.3, "192.0.2.10"),
    ("eastus", 37.4, -79.0, "192.0.2.20"),
    ("westeurope", 52.4, 4.9, "192.0.2.30"),
    ("southeastasia", 1.3, 103.8, "192.0.2.40"),
];

/// A config naming `regions` (in that order), DNS and admin on the given ports.
fn config_text(dns: u16, admin: u16, regions: &[&str]) -> String {
    let mut t = format!(
        "[dns]\nlisten = [\"127.0.0.1:{dns}\"]\nudp_threads = 2\n\n\
         [geoip]\ndatabase = \"{root}/geoip/demo.mmdb\"\n\n\
         [[zone]]\norigin = \"example.test\"\nfile = \"{root}/zones/example.test.zone\"\n\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken_file = \"token\"\n\n",
        root = repo().display()
    );
    for name in regions {
        let (_, lat, lon, a) = REGIONS.iter().find(|r| r.0 == *name).expect("demo region");
        // Nothing listens there: every region is probed down and the name fails open, which
        // routes by distance alone, the same way every time.
        t.push_str(&format!(
            "[[region]]\nname = \"{name}\"\nlatitude = {lat}\nlongitude = {lon}\na = [\"{a}\"]\n\
             upstream = \"http://127.0.0.1:9\"\n\n"
        ));
    }
    let list: Vec<String> = regions.iter().map(|r| format!("\"{r}\"")).collect();
    t.push_str(&format!(
        "[[routed_name]]\nname = \"registry.example.test\"\npolicy = \"performance\"\nttl = 30\n\
         regions = [{}]\n",
        list.join(", ")
    ));
    t
}

/// `berth serve` as a child process, killed on drop; stderr kept in a file for the panic check.
struct Serve {
    child: Child,
    log: PathBuf,
}

impl Serve {
    fn start(config: &Path) -> Serve {
        let log = config.with_file_name("berth.log");
        let child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("berth serve starts");
        Serve { child, log }
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }

    fn hup(&self) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) with a pid we own and a valid signal number has no memory effects.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0, "SIGHUP sent");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A routed A query with ECS `subnet`, with message id `id`.
fn query(id: u16, subnet: &str) -> Vec<u8> {
    let mut q = ecs_query("registry.example.test.", RecordType::A, subnet);
    q[..2].copy_from_slice(&id.to_be_bytes());
    q
}

/// The A address a routed answer carries (None: no answer or no A record).
fn address(resp: &[u8]) -> Option<String> {
    let m = Message::from_vec(resp).ok()?;
    m.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => Some(a.0.to_string()),
        _ => None,
    })
}

/// One query, one answer, or None after a second.
fn ask(server: SocketAddr, subnet: &str) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    s.send_to(&query(1, subnet), server).expect("send");
    let mut buf = [0u8; 1500];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    Some(buf[..n].to_vec())
}

fn admin_get(admin: &str, path: &str) -> Option<Value> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "2", &format!("{admin}{path}")])
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

fn admin_post(admin: &str, path: &str) -> (u16, Value) {
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {TOKEN}"),
            "-w",
            "\n%{http_code}",
            &format!("{admin}{path}"),
        ])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (
        code.trim().parse().expect("status"),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// `berth_routed_answers_total` by region label.
fn answers_by_region(admin: &str) -> BTreeMap<String, u64> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "2", &format!("{admin}/metrics")])
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("berth_routed_answers_total{"))
        .filter_map(|l| {
            let region = l.split("region=\"").nth(1)?.split('"').next()?.to_string();
            let v = l.rsplit(' ').next()?.parse().ok()?;
            Some((region, v))
        })
        .collect()
}

fn wait_for(what: &str, check: impl FnMut() -> bool) {
    support::wait_until(what, DEADLINE, check);
}

fn generation(admin: &str) -> Option<u64> {
    admin_get(admin, "/api/v1/regions")?["generation"].as_u64()
}

/// Queries from a few cities, in two threads, until stopped: every answer must carry the
/// address of one of the demo's regions (a reload may race a query, so either config's).
fn flow(
    server: SocketAddr,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
) -> Vec<std::thread::JoinHandle<u64>> {
    (0..2)
        .map(|t| {
            let stop = stop.clone();
            let answered = answered.clone();
            std::thread::spawn(move || {
                let subnets = [
                    TOKYO,
                    "203.0.113.0/24",
                    "2001:db8:1::/56",
                    "2001:db8:2::/56",
                ];
                let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .expect("timeout");
                let mut wrong = 0;
                let mut i = t;
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    s.send_to(&query(i as u16, subnets[i % 4]), server)
                        .expect("send");
                    if let Ok((n, _)) = s.recv_from(&mut buf) {
                        match address(&buf[..n]) {
                            Some(a) if REGIONS.iter().any(|r| r.3 == a) => {
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => wrong += 1,
                        }
                    }
                }
                wrong
            })
        })
        .collect()
}

/// A temporary directory holding the admin token, two free ports (DNS, admin) and where
/// the config goes in it.
fn scratch() -> (tempfile::TempDir, u16, u16, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), TOKEN).expect("token");
    let config = dir.path().join("berth.toml");
    (dir, free_port(), free_port(), config)
}

/// `berth serve` on `config`, once its DNS and admin listeners answer; with the DNS address
/// and the admin base URL.
fn serve_and_wait(config: &Path, dns_port: u16, admin_port: u16) -> (Serve, SocketAddr, String) {
    let serve = Serve::start(config);
    let server: SocketAddr = ([127, 0, 0, 1], dns_port).into();
    let admin = format!("http://127.0.0.1:{admin_port}");
    wait_for("berth answers", || ask(server, TOKYO).is_some());
    wait_for("admin answers", || generation(&admin).is_some());
    (serve, server, admin)
}

/// After `stop`: every answer the flows got was a demo region's, queries did flow, and Berth
/// still runs with no panic in its log.
fn end_flows(flows: Vec<std::thread::JoinHandle<u64>>, answered: &AtomicU64, serve: &mut Serve) {
    let wrong: u64 = flows.into_iter().map(|h| h.join().expect("flow")).sum();
    assert_eq!(wrong, 0, "answers without a demo region's address");
    assert!(answered.load(Ordering::Relaxed) > 0, "queries flowed");
    assert!(serve.alive(), "berth still runs:\n{}", serve.log());
    let log = serve.log();
    assert!(!log.contains("panicked"), "no panic in the log:\n{log}");
}

/// The issue: removing a region and sending SIGHUP panicked the main thread and stopped
/// everything; through the API the old config kept serving with a renumbered sticky table.
#[test]
fn reloads_that_add_remove_and_reorder_regions_while_queries_flow() {
    let (_dir, dns_port, admin_port, config) = scratch();
    let all = ["westus", "eastus", "westeurope", "southeastasia"];
    std::fs::write(&config, config_text(dns_port, admin_port, &all)).expect("config");
    let (mut serve, server, admin) = serve_and_wait(&config, dns_port, admin_port);

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let flows = flow(server, stop.clone(), answered.clone());

    // Each step: the regions, and how the reload is asked for.
    let steps: [(&[&str], &str); 6] = [
        (&["westus", "eastus", "westeurope"], "hup"),
        (&all, "hup"),
        (&["southeastasia", "westeurope", "eastus", "westus"], "api"),
        (&["eastus"], "hup"),
        (&["westeurope", "southeastasia"], "api"),
        (&all, "hup"),
    ];
    let mut counts = answers_by_region(&admin);
    for (regions, how) in steps {
        let before = generation(&admin).expect("generation");
        std::fs::write(&config, config_text(dns_port, admin_port, regions)).expect("config");
        if how == "hup" {
            serve.hup();
        } else {
            let (status, v) = admin_post(&admin, "/api/v1/reload");
            assert_eq!(status, 200, "reload through the API: {v}");
        }
        wait_for(
            &format!("generation after {before} serving {regions:?}"),
            || {
                assert!(
                    serve.alive(),
                    "berth died on a reload to {regions:?}:\n{}",
                    serve.log()
                );
                generation(&admin).is_some_and(|g| g > before)
            },
        );
        // Tokyo: southeastasia when it is there, never a region the config no longer has.
        let tokyo = address(&ask(server, TOKYO).expect("Tokyo answered")).expect("an A record");
        let allowed: Vec<&str> = REGIONS
            .iter()
            .filter(|r| regions.contains(&r.0))
            .map(|r| r.3)
            .collect();
        assert!(
            allowed.contains(&tokyo.as_str()),
            "{regions:?}: Tokyo got {tokyo}"
        );
        if regions.contains(&"southeastasia") {
            assert_eq!(tokyo, "192.0.2.40", "{regions:?}: Tokyo's nearest");
        }
        // Counters stay with their labels: none ever goes down across a reload.
        let now = answers_by_region(&admin);
        for (region, v) in &counts {
            if let Some(n) = now.get(region) {
                assert!(
                    n >= v,
                    "{region}'s answers went from {v} to {n} after {regions:?}"
                );
            }
        }
        counts.extend(now);
    }

    // An empty config file is rejected whole: the last good one keeps serving.
    let before = generation(&admin).expect("generation");
    std::fs::write(&config, "").expect("empty config");
    serve.hup();
    wait_for("the empty config's rejection", || {
        admin_get(&admin, "/api/v1/regions").is_some_and(|v| v["last_reload"]["ok"] == false)
    });
    assert_eq!(generation(&admin), Some(before), "nothing published");
    assert_eq!(
        address(&ask(server, TOKYO).expect("still answering")).as_deref(),
        Some("192.0.2.40")
    );
    let (status, v) = admin_post(&admin, "/api/v1/reload");
    assert_eq!(status, 422, "the API says why: {v}");

    stop.store(true, Ordering::Relaxed);
    end_flows(flows, &answered, &mut serve);
}

/// Operators replace the GeoIP database in place (a monthly GeoLite2 download, renamed over
/// the old file) and reload while queries flow: the new database places clients from then on.
/// A truncated download is rejected whole and the database already loaded keeps serving;
/// removing `[geoip]` routes without locations; putting it back places clients again.
#[test]
fn reloads_that_swap_the_geoip_database_while_queries_flow() {
    let (dir, dns_port, admin_port, config) = scratch();
    let db = dir.path().join("city.mmdb");
    let demo_db = repo().join("geoip/demo.mmdb");
    let all = ["westus", "eastus", "westeurope", "southeastasia"];
    let with_db = config_text(dns_port, admin_port, &all)
        .replace(&demo_db.display().to_string(), &db.display().to_string());
    let without_db = with_db.replace(&format!("[geoip]\ndatabase = \"{}\"\n", db.display()), "");
    assert_ne!(with_db, without_db, "the test config has a [geoip] section");
    std::fs::copy(&demo_db, &db).expect("database");
    std::fs::write(&config, &with_db).expect("config");
    let (mut serve, server, admin) = serve_and_wait(&config, dns_port, admin_port);
    // Nothing listens at the upstreams: once every region is probed down the name fails
    // open, which routes by distance alone, with no sticky memory to keep a client's region.
    wait_for("the name to fail open", || {
        admin_get(&admin, "/api/v1/regions")
            .is_some_and(|v| v["routed_names"][0]["fail_open"] == true)
    });
    let tokyo = || address(&ask(server, TOKYO).expect("Tokyo answered")).expect("an A record");
    assert_eq!(tokyo(), "192.0.2.40", "Tokyo's nearest: southeastasia");

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let flows = flow(server, stop.clone(), answered.clone());
    let reload = |serve: &mut Serve, what: &str| {
        let before = generation(&admin).expect("generation");
        serve.hup();
        wait_for(&format!("{what}: generation after {before}"), || {
            assert!(serve.alive(), "berth died on {what}:\n{}", serve.log());
            generation(&admin).is_some_and(|g| g > before)
        });
    };

    // The update: Tokyo's documentation /24 now lies in Amsterdam.
    let csv = std::fs::read_to_string(repo().join("geoip/demo.csv")).expect("demo.csv");
    let tokyo_line = "198.51.100.0/24,AS,JP,Tokyo,35.68,139.69";
    assert!(csv.contains(tokyo_line), "demo.csv places {TOKYO} in Tokyo");
    let moved = dir.path().join("moved.csv");
    std::fs::write(
        &moved,
        csv.replace(tokyo_line, "198.51.100.0/24,EU,NL,Amsterdam,52.37,4.90"),
    )
    .expect("csv");
    let download = dir.path().join("city.mmdb.part");
    let built = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["geoip", "build"])
        .args([&moved, &download])
        .output()
        .expect("berth geoip build");
    assert!(built.status.success(), "{built:?}");
    std::fs::rename(&download, &db).expect("rename over the old database");
    reload(&mut serve, "the updated database");
    assert_eq!(
        tokyo(),
        "192.0.2.30",
        "placed by the new database: westeurope"
    );

    // A download cut short, written over the file in place: rejected, nothing published.
    let bytes = std::fs::read(&db).expect("database");
    std::fs::write(&db, &bytes[..bytes.len() / 2]).expect("truncated database");
    let before = generation(&admin).expect("generation");
    serve.hup();
    wait_for("the truncated database's rejection", || {
        admin_get(&admin, "/api/v1/regions").is_some_and(|v| v["last_reload"]["ok"] == false)
    });
    let error = admin_get(&admin, "/api/v1/regions").expect("regions")["last_reload"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("city.mmdb"),
        "the error names the file: {error}"
    );
    assert_eq!(generation(&admin), Some(before), "nothing published");
    assert_eq!(tokyo(), "192.0.2.30", "the loaded database keeps serving");

    // No database: no client has a location, every answer is still a region's.
    std::fs::write(&config, &without_db).expect("config");
    reload(&mut serve, "removing [geoip]");
    let unplaced = tokyo();
    assert!(
        REGIONS.iter().any(|r| r.3 == unplaced),
        "without a database Tokyo got {unplaced}"
    );

    // The database back: placed again.
    std::fs::copy(&demo_db, &db).expect("database");
    std::fs::write(&config, &with_db).expect("config");
    reload(&mut serve, "restoring [geoip]");
    assert_eq!(tokyo(), "192.0.2.40", "Tokyo's nearest again");

    stop.store(true, Ordering::Relaxed);
    end_flows(flows, &answered, &mut serve);
}

/// Threads of this process named dns-udp-N (Berth's UDP workers).
fn udp_workers() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("dns-udp"))
        .count()
}

/// The issue: with a small sticky table and several UDP threads, a flood of distinct ECS
/// subnets made concurrent evictions index out of bounds and killed worker threads; UDP went
/// silent on their sockets while TCP and the API looked healthy.
#[test]
fn a_flood_of_distinct_subnets_leaves_every_udp_worker_answering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = demo_config(
        dir.path(),
        &[("[dns]\n", "[dns]\nudp_threads = 4\n")],
        "[sticky]\ncapacity = 1000\n",
    );
    let b = Berth::start(&config);
    let server = b.dns;
    assert_eq!(udp_workers(), 4, "udp_threads = 4");
    // dnsperf's raw input (-B): each query behind its 2-byte length, one distinct /24 each.
    let input = dir.path().join("flood.raw");
    let mut raw = Vec::new();
    for n in 0..300_000u32 {
        let subnet = format!(
            "{}.{}.{}.0/24",
            1 + (n >> 16) % 200,
            (n >> 8) & 0xff,
            n & 0xff
        );
        let q = query(n as u16, &subnet);
        raw.extend_from_slice(&(q.len() as u16).to_be_bytes());
        raw.extend_from_slice(&q);
    }
    std::fs::write(&input, raw).expect("dnsperf input");
    let out = Command::new("dnsperf")
        .args([
            "-s",
            "127.0.0.1",
            "-p",
            &server.port().to_string(),
            "-B",
            "-d",
        ])
        .arg(&input)
        .args(["-n", "1", "-c", "8", "-q", "400", "-t", "2", "-l", "60"])
        .output()
        .expect("dnsperf runs (apt-get install dnsperf)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "dnsperf: {report}");
    assert!(
        report.contains("Queries completed"),
        "dnsperf ran: {report}"
    );
    // 64 fresh source ports land on every one of the 4 sockets with near certainty; each
    // must be answered (a dead worker's socket would stay silent).
    for i in 0..64 {
        let mut answered = false;
        for _ in 0..3 {
            if let Some(r) = ask(server, "198.51.100.0/24") {
                assert_eq!(
                    Message::from_vec(&r)
                        .expect("decode")
                        .metadata
                        .response_code,
                    ResponseCode::NoError
                );
                answered = true;
                break;
            }
        }
        assert!(
            answered,
            "query {i} after the flood got no answer: a UDP worker died"
        );
    }
    // A dead worker's socket closes with it and the kernel sends its share to the others,
    // so answers alone cannot show a death: count the worker threads themselves.
    assert_eq!(
        udp_workers(),
        4,
        "every dns-udp worker thread survives the flood"
    );
    let sticky = b.running().live.sticky.len();
    assert!(
        sticky <= 1000 + 8,
        "the sticky table stays bounded: {sticky}"
    );
}
