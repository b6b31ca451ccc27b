//! `[cluster]` end to end: real etcd members started here (Debian's `etcd`, on loopback ports
//! and temp data dirs), three Berth instances on the same regions, answers read over DNS and
//! changes made through the admin API of any one instance.
//!
//! Regions are plain TCP listeners this test owns (probe kind "tcp"); a "dead" upstream is
//! a port nothing listens on. The client subnet is Tokyo's, answered with southeastasia
//! (192.0.2.40) while it is eligible and with westus (192.0.2.10) otherwise.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;
use support::{demo_config, ecs_query, free_port, wait_until, Berth, TOKEN};

const TOKYO: &str = "198.51.100.0/24";
const SEA: &str = "192.0.2.40";
const DEADLINE: Duration = Duration::from_secs(20);

// ---------- etcd ----------

/// One etcd member: its ports and process.
struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// A free loopback port below the kernel's ephemeral range. An etcd member killed and
/// restarted by a test must get its port back: a port from the ephemeral range can meanwhile
/// be taken as the source port of some outgoing connection, or even by a connection to
/// itself (Linux's TCP self-connect, when a client keeps dialling a dead local port), and
/// the restart then fails to bind.
fn stable_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // Start at a per-process offset so that test binaries running at once rarely meet.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let span = low.saturating_sub(20000).max(1000);
    let base = 20000 + (std::process::id() as u16 % span);
    loop {
        let p = 20000 + (base - 20000 + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// An etcd cluster of `n` members on loopback, data in a temp dir; killed on drop.
struct Etcd {
    dir: tempfile::TempDir,
    members: Vec<Member>,
}

impl Etcd {
    fn start(n: usize) -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("e{i}"),
                client: stable_port(),
                peer: stable_port(),
                child: None,
            })
            .collect();
        let mut e = Etcd { dir, members };
        for i in 0..n {
            e.spawn(i);
        }
        for i in 0..n {
            e.wait_healthy(i);
        }
        e
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize) {
        let cluster = self.initial_cluster();
        let m = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", m.name)))
            .expect("log");
        let child = Command::new("etcd")
            .args([
                "--name",
                &m.name,
                "--data-dir",
                &self.dir.path().join(&m.name).display().to_string(),
                "--listen-client-urls",
                &format!("http://127.0.0.1:{}", m.client),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{}", m.client),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer),
                "--initial-cluster",
                &cluster,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "berth-test",
                // Fast elections on loopback, so a killed leader is replaced quickly.
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("etcd runs (apt-get install etcd-server)");
        self.members[i].child = Some(child);
    }

    fn wait_healthy(&self, i: usize) {
        let url = format!("http://127.0.0.1:{}/health", self.members[i].client);
        wait_until(&format!("etcd member {i} healthy"), DEADLINE, || {
            get_text(&url).is_some_and(|t| t.contains("\"health\":\"true\""))
        });
    }

    fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect()
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restart a killed member on its data dir (it rejoins as it was).
    fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_up(i);
    }

    /// Wait until member `i` has bound its client port again (etcd binds before it has a
    /// quorum); on timeout, show its log, so a restart that could not bind is plain to see.
    fn wait_up(&self, i: usize) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.members[i].client));
        let end = std::time::Instant::now() + DEADLINE;
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err() {
            if std::time::Instant::now() > end {
                let log = self
                    .dir
                    .path()
                    .join(format!("{}.log", self.members[i].name));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                panic!(
                    "etcd member {i} did not come back; its log ends:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The index of the current leader, from `etcdctl endpoint status`.
    fn leader(&self) -> usize {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &self.endpoints().join(","),
                "endpoint",
                "status",
                "-w",
                "json",
            ])
            .output()
            .expect("etcdctl runs (apt-get install etcd-client)");
        let v: Value = serde_json::from_slice(&out.stdout).expect("etcdctl json");
        let list = v.as_array().expect("status list");
        let leader = list[0]["Status"]["leader"].as_u64().expect("leader id");
        let ep = list
            .iter()
            .find(|s| s["Status"]["header"]["member_id"].as_u64() == Some(leader))
            .expect("leader among endpoints")["Endpoint"]
            .as_str()
            .expect("endpoint")
            .to_string();
        self.endpoints()
            .iter()
            .position(|e| *e == ep)
            .expect("leader index")
    }

    /// `etcdctl get KEY --print-value-only`.
    /// How many keys start with `prefix`.
    fn count(&self, prefix: &str) -> usize {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoints().join(","), "get", prefix])
            .args(["--prefix", "--keys-only"])
            .output()
            .expect("etcdctl runs");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
    }

    fn get(&self, key: &str) -> String {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &self.endpoints().join(","),
                "get",
                key,
                "--print-value-only",
            ])
            .output()
            .expect("etcdctl runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

// ---------- HTTP ----------

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into()
}

fn get_text(url: &str) -> Option<String> {
    let mut r = agent().get(url).call().ok()?;
    r.body_mut().read_to_string().ok()
}

fn get_json(url: &str) -> Value {
    serde_json::from_str(&get_text(url).expect("admin API reachable")).expect("json")
}

fn put(url: &str, body: &str) -> (u16, Value) {
    let mut r = agent()
        .put(url)
        .header("Authorization", format!("Bearer {TOKEN}"))
        .content_type("application/json")
        .send(body)
        .expect("admin API reachable");
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn metric(admin: &str, name: &str) -> Option<String> {
    let text = get_text(&format!("{admin}/metrics"))?;
    text.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .map(|l| l.rsplit(' ').next().unwrap_or("").to_string())
}

// ---------- DNS ----------

/// The A records a Tokyo client gets from `server`, over one UDP query.
fn tokyo_a(server: SocketAddr) -> Vec<String> {
    a_for(server, TOKYO)
}

/// As [`tokyo_a`] for a Tokyo client never seen before: sticky memory keeps a client on the
/// region it was given while that stays usable, so "answered with southeastasia again" is
/// asked of a fresh one.
fn fresh_tokyo_a(server: SocketAddr) -> Vec<String> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    assert!(n < 256, "out of fresh Tokyo /24s");
    a_for(server, &format!("103.13.{n}.0/24"))
}

/// Wait until `b`'s API shows southeastasia eligible, then check a fresh client gets it.
fn answered_again(b: &Berth, what: &str) {
    wait_until(what, DEADLINE, || {
        get_json(&format!("{}/api/v1/regions/southeastasia", b.admin()))["eligible"] == true
    });
    assert_eq!(fresh_tokyo_a(b.dns), [SEA], "{what}");
}

fn a_for(server: SocketAddr, subnet: &str) -> Vec<String> {
    use hickory_proto::op::Message;
    use hickory_proto::rr::{RData, RecordType};
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let q = ecs_query("registry.example.test", RecordType::A, subnet);
    sock.send_to(&q, server).expect("send");
    let mut buf = [0u8; 1500];
    let Ok(n) = sock.recv(&mut buf) else {
        return vec![];
    };
    let m = Message::from_vec(&buf[..n]).expect("answer parses");
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

// ---------- regions and Berth instances ----------

/// Four regions' upstreams: TCP listeners that accept and drop, so TCP probes succeed.
struct Upstreams {
    ports: Vec<u16>,
}

impl Upstreams {
    fn start() -> Upstreams {
        let ports = (0..4)
            .map(|_| {
                let l = TcpListener::bind("127.0.0.1:0").expect("bind");
                let port = l.local_addr().expect("addr").port();
                std::thread::spawn(move || {
                    for c in l.incoming() {
                        drop(c);
                    }
                });
                port
            })
            .collect();
        Upstreams { ports }
    }
}

/// One Berth instance's directory and config.
struct Node {
    dir: tempfile::TempDir,
    config: PathBuf,
}

/// The demo config with `[cluster]`, probes of kind tcp at `ports` (a region whose index is
/// in `dead` probes a port nothing listens on), and the admin token in a file.
fn node(name: &str, etcd: &[String], ports: &[u16], dead: &[usize], prefix: &str) -> Node {
    node_with(name, etcd, ports, dead, prefix, "")
}

/// [`node`] with more `[cluster]` keys.
fn node_with(
    name: &str,
    etcd: &[String],
    ports: &[u16],
    dead: &[usize],
    prefix: &str,
    more: &str,
) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).expect("token");
    let probe =
        "probe = { kind = \"tcp\", interval = \"100ms\", timeout = \"100ms\", fall = 2, rise = 2 }";
    let ups: Vec<(String, String)> = (0..4)
        .map(|i| {
            let port = if dead.contains(&i) {
                free_port()
            } else {
                ports[i]
            };
            (
                format!("upstream = \"http://127.0.0.1:{}\"", 5001 + i),
                format!("upstream = \"http://127.0.0.1:{port}\"\n{probe}"),
            )
        })
        .collect();
    let mut all: Vec<(&str, &str)> = ups.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    all.push((
        "token_env = \"BERTH_ADMIN_TOKEN\"",
        "token_file = \"token\"",
    ));
    let endpoints: Vec<String> = etcd.iter().map(|e| format!("{e:?}")).collect();
    let extra = format!(
        "[cluster]\netcd = [{}]\nprefix = \"{prefix}\"\ninstance = \"{name}\"\nlease_ttl = \"3s\"\n{more}",
        endpoints.join(", ")
    );
    let config = demo_config(dir.path(), &all, &extra);
    Node { dir, config }
}

fn admin(b: &Berth) -> String {
    b.admin()
}

fn region<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["regions"]
        .as_array()
        .expect("regions")
        .iter()
        .find(|r| r["name"] == name)
        .expect("region listed")
}

fn start_three(etcd: &Etcd, ups: &Upstreams, prefix: &str) -> (Vec<Node>, Vec<Berth>) {
    let nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .map(|n| node(n, &etcd.endpoints(), &ups.ports, &[], prefix))
        .collect();
    let berths: Vec<Berth> = nodes.iter().map(|n| Berth::start(&n.config)).collect();
    for b in &berths {
        wait_until("three members seen", DEADLINE, || {
            get_json(&format!("{}/api/v1/cluster", admin(b)))["members"]
                .as_array()
                .is_some_and(|m| m.len() == 3)
        });
        wait_until("southeastasia answered", DEADLINE, || {
            tokyo_a(b.dns) == [SEA]
        });
    }
    (nodes, berths)
}

fn disable_body(reason: &str) -> String {
    format!("{{\"endpoint_enabled\": false, \"reason\": \"{reason}\", \"by\": \"test\"}}")
}

// ---------- tests ----------

#[test]
fn a_disable_through_one_instance_reaches_the_others_and_an_expiring_one_comes_back() {
    let etcd = Etcd::start(1);
    let ups = Upstreams::start();
    let (_nodes, berths) = start_three(&etcd, &ups, "/t1");
    let url = format!("{}/api/v1/regions/southeastasia", admin(&berths[0]));

    // The requirement: B and C stop answering the region within 1 s.
    let t0 = Instant::now();
    let (status, v) = put(&url, &disable_body("maintenance"));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["flag"]["reason"], "maintenance");
    assert_eq!(v["flag"]["by"], "test");
    let mut delays = vec![];
    for b in &berths[1..] {
        wait_until(
            "B and C stop answering southeastasia",
            Duration::from_secs(1),
            || tokyo_a(b.dns) != [SEA],
        );
        delays.push(t0.elapsed());
    }
    println!("observed propagation delay to B and C: {delays:?}");
    let status = get_json(&format!("{}/api/v1/cluster", admin(&berths[1])));
    assert_eq!(status["config_hashes_differ"], false, "{status}");
    assert_eq!(status["connected"], true, "{status}");
    // Reason, who and when are visible through every instance.
    let v = get_json(&format!(
        "{}/api/v1/regions/southeastasia",
        admin(&berths[2])
    ));
    assert_eq!(v["flag"]["reason"], "maintenance", "{v}");
    assert_eq!(v["endpoint_enabled"], false);

    // Enabled again through C; then a 2 s maintenance window through B comes back by itself.
    let url_c = format!("{}/api/v1/regions/southeastasia", admin(&berths[2]));
    assert_eq!(put(&url_c, "{\"endpoint_enabled\": true}").0, 200);
    for b in &berths {
        answered_again(b, "answered again");
    }
    let url_b = format!("{}/api/v1/regions/southeastasia", admin(&berths[1]));
    let (status, v) = put(
        &url_b,
        "{\"endpoint_enabled\": false, \"reason\": \"window\", \"for\": \"2s\"}",
    );
    assert_eq!(status, 200, "{v}");
    assert!(v["flag"]["until_ms"].as_u64().is_some(), "{v}");
    for b in &berths {
        wait_until("window starts everywhere", DEADLINE, || {
            fresh_tokyo_a(b.dns) != [SEA]
        });
    }
    for b in &berths {
        answered_again(b, "window ends by itself");
    }
    let (status, v) = put(&url_b, "{\"endpoint_enabled\": true, \"for\": \"2s\"}");
    assert_eq!(status, 400, "{v}");
}

#[test]
fn one_failing_vantage_point_does_not_take_a_region_down_under_majority_two_do() {
    let etcd = Etcd::start(1);
    let ups = Upstreams::start();
    let eps = etcd.endpoints();
    // southeastasia is region 3: C cannot reach it.
    let nodes = [
        node("a", &eps, &ups.ports, &[], "/t2"),
        node("b", &eps, &ups.ports, &[], "/t2"),
        node("c", &eps, &ups.ports, &[3], "/t2"),
    ];
    let mut berths: Vec<Berth> = nodes.iter().map(|n| Berth::start(&n.config)).collect();
    let a = admin(&berths[0]);
    let verdicts = |admin: &str| {
        region(
            &get_json(&format!("{admin}/api/v1/cluster")),
            "southeastasia",
        )
        .clone()
    };
    wait_until("A sees C's down verdict", DEADLINE, || {
        verdicts(&a)["verdicts"]["c"] == false && verdicts(&a)["verdicts"]["b"] == true
    });
    // `berth cluster status` shows each verdict beside the shared one, and that C's config
    // (another upstream) differs.
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["cluster", "status", "--admin", &a])
        .output()
        .expect("berth runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("instance a: etcd connected"), "{text}");
    assert!(
        text.contains("southeastasia: shared up [a=up b=up c=down]"),
        "{text}"
    );
    assert!(
        text.contains("WARNING: members run different configs"),
        "{text}"
    );
    for b in &berths {
        let v = verdicts(&admin(b));
        assert_eq!(v["healthy"], true, "one of three down is not down: {v}");
        assert_eq!(tokyo_a(b.dns), [SEA]);
    }
    // B restarts unable to reach it too: two of three.
    berths[1].stop();
    let b2 = node("b", &eps, &ups.ports, &[3], "/t2");
    berths[1] = Berth::start(&b2.config);
    for b in &berths {
        wait_until("two of three down: down everywhere", DEADLINE, || {
            tokyo_a(b.dns) != [SEA]
        });
    }
    let v = verdicts(&a);
    assert_eq!(v["healthy"], false, "{v}");
    assert_eq!(
        v["verdicts"]["a"], true,
        "A's own probe still succeeds: {v}"
    );
}

#[test]
fn killing_the_etcd_leader_during_a_stream_of_flag_changes_loses_none() {
    let mut etcd = Etcd::start(3);
    let ups = Upstreams::start();
    let (_nodes, berths) = start_three(&etcd, &ups, "/t3");
    let mut last = String::new();
    let mut refused = 0;
    for i in 0..60 {
        if i == 20 {
            let leader = etcd.leader();
            println!("killing etcd leader e{leader}");
            etcd.kill(leader);
        }
        let b = &berths[i % 3];
        let enabled = i % 2 == 1;
        let body = format!(
            "{{\"endpoint_enabled\": {enabled}, \"reason\": \"change-{i}\", \"by\": \"stream\"}}"
        );
        let url = format!("{}/api/v1/regions/southeastasia", admin(b));
        // A change refused with 503 was made nowhere: send it again until one is taken.
        let end = Instant::now() + DEADLINE;
        loop {
            let (status, v) = put(&url, &body);
            if status == 200 {
                break;
            }
            assert_eq!(status, 503, "{v}");
            refused += 1;
            assert!(Instant::now() < end, "change {i} never accepted: {v}");
            std::thread::sleep(Duration::from_millis(50));
        }
        last = format!("change-{i}");
    }
    println!("changes refused with 503 and retried: {refused}");
    for b in &berths {
        wait_until(
            "every instance converges on the last change",
            DEADLINE,
            || {
                let v = get_json(&format!("{}/api/v1/regions/southeastasia", admin(b)));
                v["flag"]["reason"] == last.as_str() && v["endpoint_enabled"] == true
            },
        );
        answered_again(b, "and answers by it");
    }
    assert!(etcd.get("/t3/flags/southeastasia").contains(&last));
}

#[test]
fn with_etcd_gone_instances_serve_the_last_state_refuse_changes_and_converge_after() {
    let mut etcd = Etcd::start(3);
    let ups = Upstreams::start();
    let (_nodes, berths) = start_three(&etcd, &ups, "/t4");
    let url_a = format!("{}/api/v1/regions/southeastasia", admin(&berths[0]));
    assert_eq!(put(&url_a, &disable_body("before outage")).0, 200);
    for b in &berths {
        wait_until("disabled everywhere", DEADLINE, || tokyo_a(b.dns) != [SEA]);
        assert_eq!(
            metric(&admin(b), "berth_cluster_connected").as_deref(),
            Some("1")
        );
    }
    for i in 0..3 {
        etcd.kill(i);
    }
    for b in &berths {
        wait_until("berth_cluster_connected 0", DEADLINE, || {
            metric(&admin(b), "berth_cluster_connected").as_deref() == Some("0")
        });
        // The last shared state keeps serving.
        assert_ne!(tokyo_a(b.dns), [SEA]);
        let events = get_json(&format!("{}/api/v1/events", admin(b)));
        assert!(
            events["events"]
                .as_array()
                .expect("events")
                .iter()
                .any(|e| e["kind"] == "cluster-disconnected"),
            "{events}"
        );
    }
    let url_b = format!("{}/api/v1/regions/southeastasia", admin(&berths[1]));
    let (status, v) = put(&url_b, "{\"endpoint_enabled\": true}");
    assert_eq!(status, 503, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("etcd is unreachable")),
        "{v}"
    );
    assert_ne!(
        tokyo_a(berths[1].dns),
        [SEA],
        "a refused change changes nothing"
    );
    for i in 0..3 {
        etcd.restart(i);
    }
    for b in &berths {
        wait_until("connected again", DEADLINE, || {
            metric(&admin(b), "berth_cluster_connected").as_deref() == Some("1")
        });
    }
    assert_eq!(put(&url_b, "{\"endpoint_enabled\": true}").0, 200);
    for b in &berths {
        answered_again(b, "converged");
    }
}

#[test]
fn a_restarted_instance_takes_the_shared_state_not_its_old_state_file() {
    let etcd = Etcd::start(1);
    let ups = Upstreams::start();
    let (nodes, mut berths) = start_three(&etcd, &ups, "/t5");
    berths[2].stop();
    // C's own state file says southeastasia is disabled; the cluster says it is not.
    write_state(
        &nodes[2].dir.path().join("berth.state.json"),
        "southeastasia",
        false,
    );
    // Meanwhile westus is disabled through A.
    let url = format!("{}/api/v1/regions/westus", admin(&berths[0]));
    assert_eq!(put(&url, &disable_body("while C was away")).0, 200);
    berths[2] = Berth::start(&nodes[2].config);
    // At start C has read the shared state already: no wait.
    let v = get_json(&format!("{}/api/v1/regions", admin(&berths[2])));
    assert_eq!(region(&v, "westus")["endpoint_enabled"], false, "{v}");
    assert_eq!(region(&v, "westus")["flag"]["reason"], "while C was away");
    assert_eq!(region(&v, "southeastasia")["endpoint_enabled"], true, "{v}");
    assert_eq!(tokyo_a(berths[2].dns), [SEA]);
}

fn write_state(path: &Path, region: &str, enabled: bool) {
    std::fs::write(
        path,
        format!(
            "{{\"version\":1,\"regions\":{{\"{region}\":{{\"endpoint_enabled\":{enabled}}}}}}}"
        ),
    )
    .expect("state file");
}

/// BENCHMARKS.md's propagation figure: 100 flag changes through A, each timed from the PUT
/// until B's and C's published snapshots (what their DNS and proxy read) carry it; etcd's
/// own put round trip in the same run is the reference. Prints, asserts only convergence.
#[test]
fn flag_propagation_delay_over_100_changes() {
    let etcd = Etcd::start(1);
    let ups = Upstreams::start();
    let (_nodes, berths) = start_three(&etcd, &ups, "/t6");
    let url = format!("{}/api/v1/regions/southeastasia", admin(&berths[0]));
    let region = 3;
    let mut delays = vec![];
    let mut puts = vec![];
    for i in 0..100 {
        let enabled = i % 2 == 1;
        let t0 = Instant::now();
        let (status, v) = put(&url, &format!("{{\"endpoint_enabled\": {enabled}}}"));
        assert_eq!(status, 200, "{v}");
        puts.push(t0.elapsed());
        for b in &berths[1..] {
            let live = &b.running().live;
            // A 1 ms poll (wait_until's 20 ms would blur the figure).
            let end = Instant::now() + DEADLINE;
            while live.snapshot.load().states[region].enabled != enabled {
                assert!(Instant::now() < end, "change {i} not seen");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        delays.push(t0.elapsed());
    }
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        (v[v.len() / 2], v[v.len() - 1])
    };
    let (med, max) = stats(&mut delays);
    let (pmed, pmax) = stats(&mut puts);
    println!(
        "propagation A -> B and C over 100 changes: median {med:?}, max {max:?}; \
         the PUT through A alone (etcd write included): median {pmed:?}, max {pmax:?}"
    );
}

/// Without `[cluster]` the same provenance lives in the state file (issue 13): reason, by,
/// at and a maintenance window through the API and the CLI, kept across a restart.
#[test]
fn a_single_instance_keeps_who_when_why_in_its_state_file() {
    let ups = Upstreams::start();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).expect("token");
    let up = format!("upstream = \"http://127.0.0.1:{}\"", ups.ports[0]);
    let config = demo_config(
        dir.path(),
        &[
            ("upstream = \"http://127.0.0.1:5001\"", up.as_str()),
            (
                "token_env = \"BERTH_ADMIN_TOKEN\"",
                "token_file = \"token\"",
            ),
        ],
        "",
    );
    let mut berth = Berth::start(&config);
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "region",
            "disable",
            "westus",
            "--reason",
            "kernel upgrade",
            "--by",
            "ana",
            "--for",
            "2h",
            "--admin",
            &berth.admin(),
        ])
        .env("BERTH_ADMIN_TOKEN", TOKEN)
        .output()
        .expect("berth runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = std::fs::read_to_string(dir.path().join("berth.state.json")).expect("state");
    assert!(state.contains("\"reason\": \"kernel upgrade\""), "{state}");
    assert!(state.contains("\"by\": \"ana\""), "{state}");
    assert!(state.contains("\"until_ms\""), "{state}");
    berth.stop();
    let berth = Berth::start(&config);
    let v = get_json(&format!("{}/api/v1/regions/westus", berth.admin()));
    assert_eq!(v["endpoint_enabled"], false, "{v}");
    assert_eq!(v["flag"]["reason"], "kernel upgrade", "{v}");
    let list = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["region", "list", "--admin", &berth.admin()])
        .output()
        .expect("berth runs");
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("westus: disabled by ana at unix ms "),
        "{text}"
    );
    assert!(text.contains(": kernel upgrade (until unix ms "), "{text}");
    assert_eq!(
        get_json(&format!("{}/api/v1/cluster", berth.admin()))["enabled"],
        false
    );
}

/// B's events list, oldest first.
fn events_of(b: &Berth) -> Vec<Value> {
    get_json(&format!("{}/api/v1/events", admin(b)))["events"]
        .as_array()
        .expect("events")
        .clone()
}

#[test]
fn events_are_shared_through_etcd_and_the_list_stays_bounded() {
    let etcd = Etcd::start(1);
    let ups = Upstreams::start();
    let nodes: Vec<Node> = ["a", "b"]
        .iter()
        .map(|n| {
            node_with(
                n,
                &etcd.endpoints(),
                &ups.ports,
                &[],
                "/t8",
                "events_max = 6\n",
            )
        })
        .collect();
    let berths: Vec<Berth> = nodes.iter().map(|n| Berth::start(&n.config)).collect();
    let url_a = format!("{}/api/v1/regions/southeastasia", admin(&berths[0]));
    let (status, v) = put(&url_a, &disable_body("shared-event-check"));
    assert_eq!(status, 200, "{v}");
    // The change made through A is in B's list, once, saying A saw it.
    wait_until("B lists A's flag change", DEADLINE, || {
        events_of(&berths[1]).iter().any(|e| {
            e["kind"] == "region-disabled"
                && e["instance"] == "a"
                && e["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("shared-event-check"))
        })
    });
    let seen = events_of(&berths[1]);
    let copies = seen
        .iter()
        .filter(|e| {
            e["detail"]
                .as_str()
                .is_some_and(|d| d.contains("shared-event-check"))
        })
        .count();
    assert_eq!(copies, 1, "{seen:?}");
    // Ten more changes: the list in etcd and in every instance keeps the newest 6.
    for i in 0..10 {
        let body = format!(
            "{{\"endpoint_enabled\": {}, \"reason\": \"bound-{i}\"}}",
            i % 2 == 1
        );
        assert_eq!(put(&url_a, &body).0, 200);
    }
    for b in &berths {
        wait_until("the last change listed", DEADLINE, || {
            events_of(b)
                .iter()
                .any(|e| e["detail"].as_str().is_some_and(|d| d.contains("bound-9")))
        });
    }
    wait_until("etcd keeps at most 6 events", DEADLINE, || {
        etcd.count("/t8/events/") <= 6
    });
    for b in &berths {
        let list = events_of(b);
        assert!(list.len() <= 6, "{list:?}");
        let seqs: Vec<u64> = list.iter().filter_map(|e| e["seq"].as_u64()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    }
}

fn readyz(b: &Berth) -> (u16, String) {
    match agent().get(format!("{}/readyz", admin(b))).call() {
        Ok(mut r) => (
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(e) => (0, e.to_string()),
    }
}

/// An instance that starts while etcd is unreachable is not ready until it reaches etcd;
/// meanwhile it answers with the shared flags as it last saw them (its state file keeps a
/// copy), not with every region enabled, and says so. Once etcd answers it is ready and
/// takes the shared state again.
#[test]
fn an_instance_that_has_not_reached_etcd_serves_its_copy_and_is_not_ready_until_it_does() {
    let mut etcd = Etcd::start(1);
    let ups = Upstreams::start();
    let n = node("a", &etcd.endpoints(), &ups.ports, &[], "/t9");
    let mut b = Berth::start(&n.config);
    let url = format!("{}/api/v1/regions/southeastasia", admin(&b));
    assert_eq!(put(&url, &disable_body("before the outage")).0, 200);
    b.stop();
    etcd.kill(0);

    let b = Berth::start(&n.config);
    let url = format!("{}/api/v1/regions/southeastasia", admin(&b));
    wait_until("503: etcd not reached", DEADLINE, || {
        let (status, body) = readyz(&b);
        status == 503 && body.contains("cluster: etcd not reached yet")
    });
    assert_ne!(
        fresh_tokyo_a(b.dns),
        [SEA],
        "the copy keeps southeastasia disabled"
    );
    let v = get_json(&url);
    assert_eq!(v["flag"]["reason"], "before the outage", "{v}");
    let events = events_of(&b);
    assert!(
        events.iter().any(|e| e["kind"] == "cluster-copy"),
        "{events:?}"
    );

    etcd.restart(0);
    let mut last = (0, String::new());
    // Generous: a loaded 2-core CI machine runs other etcd clusters beside this one.
    let end = Instant::now() + Duration::from_secs(60);
    while last.0 != 200 {
        assert!(
            Instant::now() < end,
            "not ready 60 s after etcd answers again; /readyz said {last:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
        last = readyz(&b);
    }
    // Connected: changes are taken again, and reach the answers.
    assert_eq!(put(&url, "{\"endpoint_enabled\": true}").0, 200);
    answered_again(&b, "enabled through the reconnected instance");
}

// ---------- etcd over TLS, with a client certificate and a password ----------

/// A CA, and certificates it signed: the server's for 127.0.0.1, and a client's.
fn write_pki(dir: &Path) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "berth etcd test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().expect("key"))
        .expect("CA");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("ca");
    for (name, sans, cn) in [
        (
            "server",
            vec!["127.0.0.1".to_string(), "localhost".to_string()],
            "etcd",
        ),
        ("client", Vec::new(), "berth"),
    ] {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(sans).expect("params");
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let cert = p.signed_by(&key, &ca).expect("cert");
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("cert");
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).expect("key");
    }
}

/// One etcd member that serves clients over TLS only, asks for a client certificate signed
/// by the test CA, and has authentication on with user `root` (password `rootpw`).
struct TlsEtcd {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl TlsEtcd {
    fn start() -> TlsEtcd {
        let dir = tempfile::tempdir().expect("tempdir");
        write_pki(dir.path());
        let (port, peer) = (stable_port(), stable_port());
        let p = |f: &str| dir.path().join(f).display().to_string();
        let url = format!("https://127.0.0.1:{port}");
        let child = support::single_etcd(dir.path(), "tls", &url, peer)
            .args([
                "--cert-file",
                &p("server.pem"),
                "--key-file",
                &p("server.key"),
            ])
            .args(["--trusted-ca-file", &p("ca.pem"), "--client-cert-auth"])
            .spawn()
            .expect("etcd runs (apt-get install etcd-server)");
        let e = TlsEtcd { dir, port, child };
        wait_until("TLS etcd answers etcdctl", DEADLINE, || {
            e.ctl(&["endpoint", "health"]).is_ok()
        });
        e.ctl(&["user", "add", "root:rootpw", "--interactive=false"])
            .expect("user add");
        e.ctl(&["auth", "enable"]).expect("auth enable");
        e
    }

    /// Run etcdctl as root over TLS; stdout, or stderr as the error.
    fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let p = |f: &str| self.dir.path().join(f).display().to_string();
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &format!("https://127.0.0.1:{}", self.port)])
            .args(["--cacert", &p("ca.pem"), "--cert", &p("client.pem")])
            .args(["--key", &p("client.key"), "--user", "root:rootpw"])
            .args(args)
            .output()
            .expect("etcdctl runs (apt-get install etcd-client)");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `[cluster]` keys for this member's CA and client certificate, plus `more`.
    fn keys(&self, more: &str) -> String {
        let p = |f: &str| self.dir.path().join(f).display().to_string();
        format!(
            "ca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n{more}",
            p("ca.pem"),
            p("client.pem"),
            p("client.key")
        )
    }
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cluster_view(b: &Berth) -> Value {
    get_json(&format!("{}/api/v1/cluster", admin(b)))
}

/// Production etcd runs with TLS, client certificates and authentication: with the right
/// CA, certificate and password Berth joins and its changes land in etcd; with a wrong
/// password, or without the CA, it stays disconnected and says why.
#[test]
fn etcd_with_tls_client_certificates_and_a_password() {
    let etcd = TlsEtcd::start();
    let ups = Upstreams::start();
    let endpoints = [format!("https://127.0.0.1:{}", etcd.port)];
    let with_password = |name: &str, password: &str, keys: String| {
        let n = node_with(name, &endpoints, &ups.ports, &[], "/t10", &keys);
        std::fs::write(n.dir.path().join("etcd-password"), password).expect("password");
        n
    };
    let good = with_password("a", "rootpw\n", etcd.keys(PASSWORD_KEYS));
    let wrong = with_password("b", "not-the-password\n", etcd.keys(PASSWORD_KEYS));
    let no_ca = with_password(
        "c",
        "rootpw\n",
        etcd.keys(PASSWORD_KEYS).replace("ca_file", "# ca_file"),
    );
    // The two that cannot connect each wait out the first-sync bound: start them together.
    let starts: Vec<_> = [wrong.config.clone(), no_ca.config.clone()]
        .into_iter()
        .map(|c| std::thread::spawn(move || Berth::start(&c)))
        .collect();
    let a = Berth::start(&good.config);
    wait_until("A connected over TLS with its password", DEADLINE, || {
        cluster_view(&a)["connected"] == true
    });
    let url = format!("{}/api/v1/regions/southeastasia", admin(&a));
    assert_eq!(put(&url, &disable_body("tls")).0, 200);
    let stored = etcd
        .ctl(&["get", "/t10/flags/southeastasia", "--print-value-only"])
        .expect("etcdctl get");
    assert!(stored.contains("\"reason\":\"tls\""), "{stored}");
    assert_ne!(tokyo_a(a.dns), [SEA]);

    let others: Vec<Berth> = starts
        .into_iter()
        .map(|t| t.join().expect("start"))
        .collect();
    for (b, why) in others.iter().zip(["authentication", "certificate"]) {
        let v = cluster_view(b);
        assert_eq!(v["connected"], false, "{v}");
        let err = v["last_error"].as_str().unwrap_or_default().to_lowercase();
        assert!(err.contains(why), "last_error should mention {why}: {v}");
        let (status, body) = put(
            &format!("{}/api/v1/regions/westus", admin(b)),
            &disable_body("refused"),
        );
        assert_eq!(status, 503, "{body}");
    }
}

const PASSWORD_KEYS: &str = "user = \"root\"\npassword_file = \"etcd-password\"\n";
