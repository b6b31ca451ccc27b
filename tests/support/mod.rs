//! Shared test harness: real `docker-registry` replicas, a Berth started on loopback port 0,
//! and `dig` picked apart. Each test binary uses the parts it needs.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use berth::app::Running;
use berth::config::{ProbeConfig, ProbeKind, Region};
use berth::health::probe;
use tokio::time::{sleep, Instant};

/// How long a registry may take to answer `/v2/` after it was started.
pub const START_DEADLINE: Duration = Duration::from_secs(20);
/// Pause between two readiness or state checks; the deadline bounds the total.
pub const POLL: Duration = Duration::from_millis(20);

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A free loopback port (TCP and UDP) for a process a test starts later. Outside the kernel's
/// ephemeral range (`ip_local_port_range`): a port `bind(0)` gave was, in CI, taken by an
/// outgoing connection of a parallel test before the registry meant for it started. Never
/// handed out twice by this process.
pub fn free_port() -> u16 {
    use std::hash::BuildHasher;
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|n| n.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    // Below the ephemeral range if there is room there, else above it.
    let (from, to) = if range.0 >= 12_000 {
        (10_000, range.0)
    } else {
        (range.1 + 1, 65_536)
    };
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let seed = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    for i in 0..10_000u64 {
        let port = (u64::from(from) + (seed.wrapping_add(i * 7919)) % u64::from(to - from)) as u16;
        if given.contains(&port) {
            continue;
        }
        let free = std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok();
        if free {
            given.insert(port);
            return port;
        }
    }
    panic!("no free loopback port in {from}..{to}");
}

/// One `docker-registry serve` process (Debian's, distribution 2.8) with its own config,
/// storage and log in a tempdir, on a free loopback port; killed on drop.
pub struct Registry {
    dir: tempfile::TempDir,
    pub port: u16,
    /// The top-level YAML the test added, `{dir}` already replaced.
    extra: String,
    child: Option<Child>,
    /// Until the first start succeeds the port may still change (see [`Registry::start`]).
    started: bool,
}

impl Registry {
    /// Write the config; nothing runs until [`Registry::start`].
    pub fn new() -> Registry {
        Registry::with_yaml("")
    }

    /// As [`Registry::new`], with `extra` top-level YAML appended (`{dir}` is replaced by the
    /// registry's own directory), e.g. an `auth:` section.
    pub fn with_yaml(extra: &str) -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let extra = extra.replace("{dir}", &dir.path().display().to_string());
        let reg = Registry {
            dir,
            port: free_port(),
            extra,
            child: None,
            started: false,
        };
        reg.write_config();
        reg
    }

    fn write_config(&self) {
        let config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{}\n{}",
            self.dir.path().join("storage").display(),
            self.port,
            self.extra
        );
        std::fs::write(self.dir.path().join("config.yml"), config).expect("write config");
    }

    /// The registry's own directory (config, storage, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn upstream(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// Start the process and wait until `/v2/` answers 200.
    pub async fn start(&mut self) {
        self.start_expecting(&[200]).await;
    }

    /// Start the process and wait until `/v2/` (over plain HTTP) answers one of `statuses`:
    /// 401 with auth, 400 from a TLS listener.
    ///
    /// Another process may take the port between [`free_port`] and this start (CI saw it
    /// twice). Before the first start succeeds no test has used the port yet, so the
    /// registry moves to another one; after that (a restart) the port is the registry's
    /// identity and a taken port fails the test, naming what holds it.
    pub async fn start_expecting(&mut self, statuses: &[u16]) {
        for _ in 0..5 {
            match self.try_start(statuses).await {
                Ok(()) => {
                    self.started = true;
                    return;
                }
                Err(why) if !self.started => {
                    eprintln!("registry: {why}; moving to another port");
                    self.port = free_port();
                    self.write_config();
                }
                Err(why) => panic!("{why}"),
            }
        }
        panic!("registry: five free ports in a row were taken before it could bind one");
    }

    /// One attempt: `Err` when the port is not this registry's to use.
    async fn try_start(&mut self, statuses: &[u16]) -> Result<(), String> {
        let bin = std::env::var("REGISTRY_BIN").unwrap_or_else(|_| "docker-registry".into());
        // If another process holds the port, the probe below would reach that process and
        // this registry would not be the one answering (a test that stops it would see its
        // "upstream" stay up).
        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", self.port)) {
            return Err(format!(
                "port {} was taken after free_port() chose it: {e}; holders: {}",
                self.port,
                port_holders(self.port)
            ));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("log file");
        let child = Command::new(&bin)
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {bin} (apt-get install -y docker-registry): {e}")
            });
        self.child = Some(child);

        let region = region("ready", &self.upstream(), ProbeKind::Http);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let out = probe(&region).await;
            // A registry that exited (a port it could not bind) is not the one that answered.
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("try_wait"));
            // Any expected answer: 400 is how a TLS listener answers plain HTTP.
            if out.status.is_some_and(|s| statuses.contains(&s)) && exited.is_none() {
                return Ok(());
            }
            let log = std::fs::read_to_string(self.log()).unwrap_or_default();
            if exited.is_some() && log.contains("address already in use") {
                self.child = None;
                // The next attempt appends to the same log: keep only its own lines.
                let _ = std::fs::remove_file(self.log());
                return Err(format!(
                    "port {} was taken before the registry bound it; holders: {}",
                    self.port,
                    port_holders(self.port)
                ));
            }
            if exited.is_some() || Instant::now() > deadline {
                panic!(
                    "registry on port {} did not come up ({:?}; last probe: {:?}); log:\n{log}",
                    self.port, exited, out.error,
                );
            }
            sleep(POLL).await;
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What `ss` says holds a TCP port (sockets and processes), for a failure message.
fn port_holders(port: u16) -> String {
    match Command::new("ss")
        .args(["-Htanp", &format!("sport = :{port}")])
        .output()
    {
        Ok(o) if !o.stdout.is_empty() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(_) => "none listed by ss".to_string(),
        Err(e) => format!("(ss: {e})"),
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn region(name: &str, upstream: &str, kind: ProbeKind) -> Region {
    Region {
        name: name.to_string(),
        latitude: 0.0,
        longitude: 0.0,
        a: vec!["192.0.2.10".parse().expect("literal")],
        aaaa: vec![],
        cname: None,
        upstream: Some(upstream.to_string()),
        probe: ProbeConfig {
            kind,
            timeout: Duration::from_secs(2),
            ..ProbeConfig::default()
        },
    }
}

/// Wait until `check` holds, failing with `what` after `deadline`.
pub async fn eventually(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !check() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        sleep(POLL).await;
    }
}

/// Wait until `check` holds, polling from a plain thread; panics naming `what` after
/// `deadline` (the blocking twin of [`eventually`]).
pub fn wait_until(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + deadline;
    while !check() {
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// The demo config with absolute paths, listeners on free ports, and `extra` TOML appended
/// (or substituted: each `(from, to)` pair is replaced first).
/// The demo's `[replication]` section (its last) is cut off: tests that are not about
/// replication must not see their replicas copied into each other; see
/// [`demo_config_replicated`].
pub fn demo_config(dir: &Path, replace: &[(&str, &str)], extra: &str) -> PathBuf {
    demo_config_with(dir, replace, extra, false)
}

/// [`demo_config`] keeping the demo's `[replication]` section.
pub fn demo_config_replicated(dir: &Path, replace: &[(&str, &str)], extra: &str) -> PathBuf {
    demo_config_with(dir, replace, extra, true)
}

fn demo_config_with(
    dir: &Path,
    replace: &[(&str, &str)],
    extra: &str,
    replication: bool,
) -> PathBuf {
    let mut text = std::fs::read_to_string(repo().join("config/demo.toml")).expect("demo config");
    if !replication {
        if let Some(i) = text.find("\n[replication]") {
            text.truncate(i + 1);
        }
    }
    for (from, to) in replace {
        assert!(text.contains(from), "demo.toml lacks {from:?}");
        text = text.replace(from, to);
    }
    let text = text
        .replace("127.0.0.1:1053", "127.0.0.1:0")
        .replace("127.0.0.1:9180", "127.0.0.1:0")
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("../geoip/", &format!("{}/geoip/", repo().display()))
        .replace("../zones/", &format!("{}/zones/", repo().display()));
    let path = dir.join("berth.toml");
    std::fs::write(&path, format!("{text}\n{extra}")).expect("write config");
    path
}

/// The admin token of a [`bed`]'s Berth (read from a token file).
pub const TOKEN: &str = "test-token-0123456789";

/// Four real replicas, in the demo's region order (westus, eastus, westeurope, southeastasia),
/// and a Berth config that probes them fast and reads its admin token from a file.
pub struct Bed {
    pub regs: Vec<Registry>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

/// A [`Bed`] on the demo config as it is (listeners on port 0).
pub fn bed(rt: &tokio::runtime::Runtime) -> Bed {
    bed_with(rt, &[])
}

/// A [`Bed`] whose demo config gets `replace` too (see [`demo_config`]).
pub fn bed_with(rt: &tokio::runtime::Runtime, replace: &[(&str, &str)]) -> Bed {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut regs: Vec<Registry> = (0..4).map(|_| Registry::new()).collect();
    for r in regs.iter_mut() {
        rt.block_on(r.start());
    }
    let probe = "probe = { interval = \"200ms\", timeout = \"150ms\", fall = 2, rise = 2 }";
    let ups: Vec<(String, String)> = (0..4)
        .map(|i| {
            (
                format!("upstream = \"http://127.0.0.1:{}\"", 5001 + i),
                format!("upstream = \"{}\"\n{probe}", regs[i].upstream()),
            )
        })
        .collect();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).expect("token");
    let mut all: Vec<(&str, &str)> = ups.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    all.push((
        "token_env = \"BERTH_ADMIN_TOKEN\"",
        "token_file = \"token\"",
    ));
    all.extend_from_slice(replace);
    let config = demo_config(dir.path(), &all, "");
    Bed { regs, dir, config }
}

/// A Berth on its own runtime, stopped on drop.
pub struct Berth {
    pub running: Option<Running>,
    pub dns: SocketAddr,
    pub rt: tokio::runtime::Runtime,
}

impl Berth {
    pub fn start(config: &Path) -> Berth {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let running = rt.block_on(Running::start(config)).expect("berth starts");
        let dns = running.dns_addrs[0];
        Berth {
            running: Some(running),
            dns,
            rt,
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    pub fn admin(&self) -> String {
        format!(
            "http://{}",
            self.running().admin_addr.expect("admin listener")
        )
    }

    pub fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            self.rt.block_on(r.stop());
        }
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What dig printed, picked apart.
#[derive(Debug)]
pub struct Dig {
    pub status: String,
    pub flags: Vec<String>,
    pub answer: Vec<String>,
    pub authority: Vec<String>,
    pub ecs: Option<String>,
    pub raw: String,
}

impl Dig {
    /// The last field of each answer line: the address, target or text.
    pub fn answer_data(&self) -> Vec<String> {
        self.answer
            .iter()
            .map(|l| l.split_whitespace().last().unwrap_or("").to_string())
            .collect()
    }
}

pub fn dig(server: SocketAddr, args: &[&str]) -> Dig {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args([
            "-p",
            &server.port().to_string(),
            "+norecurse",
            "+time=2",
            "+tries=1",
        ])
        .args(args)
        .output()
        .expect("dig runs (apt-get install dnsutils)");
    let raw = String::from_utf8_lossy(&out.stdout).to_string();
    let mut d = Dig {
        status: String::new(),
        flags: vec![],
        answer: vec![],
        authority: vec![],
        ecs: None,
        raw: raw.clone(),
    };
    let mut section = "";
    for line in raw.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            d.status = rest.split(',').next().unwrap_or("").to_string();
        } else if let Some(rest) = line.strip_prefix(";; flags: ") {
            d.flags = rest
                .split(';')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .map(String::from)
                .collect();
        } else if let Some(rest) = line.strip_prefix("; CLIENT-SUBNET: ") {
            d.ecs = Some(rest.trim().to_string());
        } else if line.starts_with(";; ANSWER SECTION") {
            section = "answer";
        } else if line.starts_with(";; AUTHORITY SECTION") {
            section = "authority";
        } else if line.starts_with(";;") || line.trim().is_empty() {
            section = "";
        } else if !line.starts_with(';') {
            match section {
                "answer" => d.answer.push(line.to_string()),
                "authority" => d.authority.push(line.to_string()),
                _ => {}
            }
        }
    }
    assert!(!d.status.is_empty(), "dig got no answer:\n{raw}");
    d
}

/// The A answer `dig` gets for `registry.example.test` from a client in `subnet`.
pub fn routed_a(server: SocketAddr, subnet: &str) -> Vec<String> {
    dig(
        server,
        &["registry.example.test", "A", &format!("+subnet={subnet}")],
    )
    .answer_data()
}

/// A query for `name`/`qtype` with an EDNS Client Subnet option for `subnet` (id 7).
pub fn ecs_query(name: &str, qtype: hickory_proto::rr::RecordType, subnet: &str) -> Vec<u8> {
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
    use hickory_proto::rr::Name;
    let mut m = Message::new(7, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    let mut e = Edns::new();
    e.set_max_payload(1232);
    let cs: ClientSubnet = subnet.parse().expect("subnet");
    e.options_mut().insert(EdnsOption::Subnet(cs));
    m.set_edns(e);
    m.to_vec().expect("encode")
}

/// The `Accept` header a registry client sends for manifests (OCI and Docker, single and index).
pub const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// A two-thread runtime for tests that drive async clients from a plain test function.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Builds the test bed's OCI layout (`app-1.0`, 3 layers; `tool-1.0`, sharing the base layer)
/// offline with `../shared/testbed/make-images.sh` (umoci) under `CARGO_TARGET_TMPDIR/<name>`,
/// and returns the layout's path.
pub fn make_images(name: &str) -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let layout = dir.join("layout");
    let script = repo().join("../shared/testbed/make-images.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .env("IMG_LAYOUT", &layout)
        .env("OCI_TESTBED_DIR", &dir)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} (needs umoci): {e}", script.display()));
    assert!(
        out.status.success(),
        "make-images.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    layout
}

/// `etcd` as a one-member cluster named `name`, data in `dir/name`, serving clients at
/// `client_url` (http or https: the caller adds the TLS flags) and peers on loopback `peer`;
/// its output goes to `dir/name.log`. Spawned by the caller.
#[allow(dead_code)]
pub fn single_etcd(dir: &Path, name: &str, client_url: &str, peer: u16) -> std::process::Command {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("etcd log");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut c = std::process::Command::new("etcd");
    c.args(["--name", name, "--data-dir"])
        .arg(dir.join(name))
        .args(["--listen-client-urls", client_url])
        .args(["--advertise-client-urls", client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("{name}={peer_url}")])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log);
    c
}

/// `skopeo` with `args`, its blob-info cache in `cache` (private to the test): as root, in a
/// private mount namespace with `cache` bound over /var/lib/containers; else through
/// `XDG_DATA_HOME`.
#[allow(dead_code)]
pub fn skopeo_command(cache: &Path, args: &[&str]) -> std::process::Command {
    use std::os::unix::fs::MetadataExt as _;
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    let mut c = if root {
        let mut c = std::process::Command::new("unshare");
        c.args(["-m", "--propagation", "private", "sh", "-c"])
            // A fresh machine has no /var/lib/containers until something creates it.
            .arg("mkdir -p /var/lib/containers && mount --bind \"$0\" /var/lib/containers && exec skopeo \"$@\"")
            .arg(cache);
        c
    } else {
        let mut c = std::process::Command::new("skopeo");
        c.env("XDG_DATA_HOME", cache);
        c
    };
    c.args(["--insecure-policy", "--command-timeout", "120s"])
        .args(args)
        .stdin(std::process::Stdio::null());
    c
}

/// A command's stdout and stderr, for failure messages.
#[allow(dead_code)]
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Fail with the command's output unless it succeeded.
#[allow(dead_code)]
#[track_caller]
pub fn assert_ok(out: &std::process::Output, what: &str) {
    assert!(out.status.success(), "{what} failed:\n{}", output_text(out));
}

/// The metric names (berth_*, process_*) a dashboard or rule file mentions, with the
/// histogram suffixes a query adds kept (they are what `/metrics` shows).
pub fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for prefix in ["berth_", "process_"] {
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().last();
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            // Only whole names (not "xberth_..." or part of a file name).
            if !before
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '/' || c == '.')
            {
                out.insert(tail[..end].to_string());
            }
            rest = &tail[end..];
        }
    }
    out
}

/// Every metric name that the Grafana dashboard and the alert rules read (those `only` keeps)
/// is in `metrics`, a `/metrics` text: as a sample, or (with `empty_family_ok`) as the TYPE
/// line of a family that has no sample yet.
pub fn assert_dashboards_read_exported(
    metrics: &str,
    only: impl Fn(&str) -> bool,
    empty_family_ok: bool,
) {
    for file in [
        "deploy/grafana/berth.json",
        "deploy/prometheus/berth-alerts.yml",
    ] {
        let text = std::fs::read_to_string(repo().join(file)).expect(file);
        for name in metric_names(&text).into_iter().filter(|n| only(n)) {
            let family = name.strip_suffix("_bucket").unwrap_or(&name);
            assert!(
                metrics.lines().any(|l| l.starts_with(&name))
                    || (empty_family_ok && metrics.contains(&format!("# TYPE {family} "))),
                "{file} reads {name}, which Berth does not export:\n{metrics}"
            );
        }
    }
}
