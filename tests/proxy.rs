//! The proxy front end, end to end with real components: Debian `docker-registry` replicas
//! (each with its own random upload secret, as a default install), Berth's proxy in front, and
//! `skopeo` pushing an image built offline by `../shared/testbed/make-images.sh` (umoci) and
//! pulling it back. What lands where is checked by asking each replica directly.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

mod support;
use support::{demo_config, runtime, Berth, Registry, MANIFEST_TYPES};

const SECRET: &str = "proxy-test-secret-0123456789abcdef";
const ADMIN_TOKEN: &str = "test-token-0123456789";
const DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The test image: built once per run with the shared test bed's script (umoci, no network).

/// The OCI layout holding `app-1.0` (3 layers) and `tool-1.0` (shares the base layer).
fn layout() -> &'static Path {
    static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
    LAYOUT.get_or_init(|| support::make_images("proxy-images"))
}

/// An image of the layout: its manifest digest and the blobs the manifest names.
struct Image {
    manifest: String,
    blobs: Vec<String>,
    /// Size of each blob, same order.
    sizes: Vec<u64>,
}

fn manifest_digest_in(layout: &Path, tag: &str) -> String {
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("index json");
    index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("tag {tag} in {}", layout.display()))["digest"]
        .as_str()
        .expect("digest")
        .to_string()
}

fn image(tag: &str) -> Image {
    let manifest = manifest_digest_in(layout(), tag);
    let m: Value = serde_json::from_slice(
        &std::fs::read(
            layout()
                .join("blobs/sha256")
                .join(manifest.trim_start_matches("sha256:")),
        )
        .expect("manifest blob"),
    )
    .expect("manifest json");
    let mut blobs = vec![];
    let mut sizes = vec![];
    for d in std::iter::once(&m["config"]).chain(m["layers"].as_array().expect("layers")) {
        blobs.push(d["digest"].as_str().expect("digest").to_string());
        sizes.push(d["size"].as_u64().expect("size"));
    }
    Image {
        manifest,
        blobs,
        sizes,
    }
}

// ---------------------------------------------------------------------------------------------
// skopeo, with a private blob-info cache per test.

/// skopeo with its own blob-info cache (which blobs it saw where changes what a push does).
/// As root the cache is `/var/lib/containers/cache` whatever the environment says, so each
/// run gets a private mount namespace with the test's directory bound there (as the test
/// bed's `isolate_blob_cache` does); otherwise `XDG_DATA_HOME` is enough.
struct Skopeo {
    cache: tempfile::TempDir,
}

impl Skopeo {
    fn new() -> Skopeo {
        Skopeo {
            cache: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .expect("skopeo runs (apt-get install skopeo)")
    }

    fn command(&self, args: &[&str]) -> Command {
        support::skopeo_command(self.cache.path(), args)
    }

    /// Push `tag` of the test layout to `dest` (`host:port/repo:tag`) over plain HTTP.
    fn push(&self, tag: &str, dest: &str, extra: &[&str]) -> Output {
        let src = format!("oci:{}:{tag}", layout().display());
        let dst = format!("docker://{dest}");
        let mut args = vec!["copy", "--dest-tls-verify=false"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[&src, &dst]);
        self.run(&args)
    }

    /// Pull `src` (`host:port/repo:tag`) into a fresh layout; its manifest digest.
    fn pull(&self, src: &str, extra: &[&str]) -> Result<String, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let dst = format!("oci:{}:pulled", dir.path().join("l").display());
        let from = format!("docker://{src}");
        let mut args = vec!["copy", "--src-tls-verify=false"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[&from, &dst]);
        let out = self.run(&args);
        if !out.status.success() {
            return Err(text(&out));
        }
        Ok(manifest_digest_in(&dir.path().join("l"), "pulled"))
    }
}

use support::{assert_ok, output_text as text};

// ---------------------------------------------------------------------------------------------
// Replicas and Berth.

fn start_registries(rt: &tokio::runtime::Runtime, n: usize, yaml: &str) -> Vec<Registry> {
    let mut regs: Vec<Registry> = (0..n).map(|_| Registry::with_yaml(yaml)).collect();
    for r in regs.iter_mut() {
        rt.block_on(r.start());
    }
    regs
}

const DEMO_REGIONS: [&str; 4] = ["westus", "eastus", "westeurope", "southeastasia"];

/// The demo config with its first regions' upstreams pointed at `regs` (the routed name keeps
/// only those), the proxy on a free port with a shared secret file, `replace` applied after.
fn config(dir: &Path, regs: &[Registry], replace: &[(&str, &str)], extra: &str) -> PathBuf {
    std::fs::write(dir.join("secret"), SECRET).expect("secret");
    std::fs::write(dir.join("token"), ADMIN_TOKEN).expect("token");
    let mut pairs: Vec<(String, String)> = regs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            (
                format!("upstream = \"http://127.0.0.1:{}\"", 5001 + i),
                format!("upstream = \"{}\"", r.upstream()),
            )
        })
        .collect();
    let names: Vec<String> = DEMO_REGIONS[..regs.len()]
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect();
    pairs.push((
        "regions = [\"westus\", \"eastus\", \"westeurope\", \"southeastasia\"]".into(),
        format!("regions = [{}]", names.join(", ")),
    ));
    pairs.push((
        "secret_env = \"BERTH_PROXY_SECRET\"".into(),
        "secret_file = \"secret\"\nthreads = 2\nshutdown_grace = \"1s\"".into(),
    ));
    pairs.push((
        "token_env = \"BERTH_ADMIN_TOKEN\"".into(),
        "token_file = \"token\"".into(),
    ));
    let mut all: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    all.extend_from_slice(replace);
    demo_config(dir, &all, extra)
}

fn proxy_addr(b: &Berth) -> SocketAddr {
    b.running().proxy_addr.expect("proxy listener")
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

/// Does the replica on `port` have `path` (HEAD answers 200)?
fn has(port: u16, path: &str, auth: Option<&str>) -> bool {
    let mut r = agent()
        .head(format!("http://127.0.0.1:{port}{path}"))
        .header("Accept", MANIFEST_TYPES);
    if let Some(a) = auth {
        r = r.header("Authorization", a);
    }
    r.call().expect("replica reachable").status().as_u16() == 200
}

/// Which replicas (by index) hold the manifest `repo:tag`; each one that does must hold every
/// blob too (never a manifest without its blobs). Replicas in `down` are not asked.
fn holders(
    regs: &[Registry],
    repo: &str,
    tag: &str,
    img: &Image,
    auth: Option<&str>,
) -> Vec<usize> {
    let mut out = vec![];
    for (i, r) in regs.iter().enumerate() {
        if !has(r.port, &format!("/v2/{repo}/manifests/{tag}"), auth) {
            continue;
        }
        for b in &img.blobs {
            assert!(
                has(r.port, &format!("/v2/{repo}/blobs/{b}"), auth),
                "replica {i} has {repo}:{tag} but not its blob {b}"
            );
        }
        out.push(i);
    }
    out
}

/// Replicas holding any blob of `img` in `repo`.
fn blob_holders(regs: &[Registry], repo: &str, img: &Image) -> Vec<usize> {
    (0..regs.len())
        .filter(|&i| {
            img.blobs
                .iter()
                .any(|b| has(regs[i].port, &format!("/v2/{repo}/blobs/{b}"), None))
        })
        .collect()
}

fn admin_json(b: &Berth, path: &str) -> Value {
    let mut resp = agent()
        .get(format!("{}{path}", b.admin()))
        .call()
        .expect("admin API");
    serde_json::from_str(&resp.body_mut().read_to_string().expect("body")).expect("json")
}

fn region_stat(b: &Berth, region: &str, field: &str) -> u64 {
    let v = admin_json(b, "/api/v1/regions");
    let r = v["regions"]
        .as_array()
        .expect("regions")
        .iter()
        .find(|r| r["name"] == region)
        .expect("region listed");
    r["proxy"][field].as_u64().unwrap_or(0)
}

fn requests(b: &Berth, region: &str, method: &str) -> u64 {
    let snap = b.running().live.snapshot.load_full();
    let id = snap.config.region_id(region).expect("region");
    snap.counters
        .region(id)
        .expect("counters for every region")
        .proxy
        .stats()
        .requests
        .get(method)
        .copied()
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// A TCP forwarder: round-robin over backends per connection (skopeo opens one per request),
// optionally from another loopback source address, optionally throttled.

struct Forwarder {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

fn forwarder(
    rt: &tokio::runtime::Runtime,
    backends: Vec<SocketAddr>,
    source: Option<IpAddr>,
    bytes_per_sec: Option<u64>,
) -> Forwarder {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind forwarder");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    rt.spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let i = count.fetch_add(1, Ordering::SeqCst);
            let backend = backends[i % backends.len()];
            tokio::spawn(async move {
                let socket = tokio::net::TcpSocket::new_v4().expect("socket");
                if let Some(src) = source {
                    socket.bind(SocketAddr::new(src, 0)).expect("bind source");
                }
                let Ok(server) = socket.connect(backend).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        if let Some(rate) = bytes_per_sec {
                            tokio::time::sleep(Duration::from_micros(n as u64 * 1_000_000 / rate))
                                .await;
                        }
                    }
                    let _ = sw.shutdown().await;
                };
                let down = async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    let _ = cw.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    Forwarder { addr, connections }
}

/// Wait until the proxy answers `/v2/` with 200 (upstream host names resolve in the background).
fn wait_until_served(proxy: SocketAddr) {
    wait_for("the upstream host names to resolve", || {
        agent()
            .get(format!("http://{proxy}/v2/"))
            .call()
            .is_ok_and(|r| r.status().as_u16() == 200)
    });
}

/// Wait until `check` holds, polling; panics with `what` after the deadline.
fn wait_for(what: &str, check: impl FnMut() -> bool) {
    support::wait_until(what, DEADLINE, check);
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// A push through Berth lands whole in one replica, pulls back with the same digest; a second
/// image sharing a layer is mounted from the first repository in that same replica.
#[test]
fn push_and_pull_through_berth_land_in_one_region() {
    let rt = runtime();
    let regs = start_registries(&rt, 3, "");
    let dir = tempfile::tempdir().expect("tempdir");
    // westus by host name: resolved in the background (here from /etc/hosts).
    let by_name = (
        format!("upstream = \"{}\"", regs[0].upstream()),
        format!("upstream = \"http://localhost:{}\"", regs[0].port),
    );
    let berth = Berth::start(&config(dir.path(), &regs, &pairs(&[by_name]), ""));
    let proxy = proxy_addr(&berth);
    wait_until_served(proxy);
    let sk = Skopeo::new();

    let app = image("app-1.0");
    assert_ok(
        &sk.push("app-1.0", &format!("{proxy}/team/app:1.0"), &[]),
        "push",
    );
    let where_app = holders(&regs, "team/app", "1.0", &app, None);
    assert_eq!(where_app, vec![0], "in westus (reached by host name) only");
    assert_eq!(
        blob_holders(&regs, "team/app", &app),
        where_app,
        "no blob of the push in any other replica"
    );
    let pulled = sk
        .pull(&format!("{proxy}/team/app:1.0"), &[])
        .expect("pull through Berth");
    assert_eq!(pulled, app.manifest, "digest after a round trip");

    // Cross-repository mount: tool shares app's base layer, which is not uploaded again.
    let tool = image("tool-1.0");
    let region = DEMO_REGIONS[where_app[0]];
    let sent_before = region_stat(&berth, region, "bytes_in");
    assert_ok(
        &sk.push("tool-1.0", &format!("{proxy}/team/tool:1.0"), &[]),
        "push tool",
    );
    let sent = region_stat(&berth, region, "bytes_in") - sent_before;
    let base = app.sizes[1];
    assert_eq!(
        tool.blobs[1], app.blobs[1],
        "tool and app share the base layer"
    );
    assert!(
        sent < tool.sizes.iter().sum::<u64>() - base + 64 * 1024,
        "the shared base layer ({base} bytes) was mounted, not sent again: {sent} bytes sent"
    );
    assert_eq!(holders(&regs, "team/tool", "1.0", &tool, None), where_app);
    assert_eq!(
        sk.pull(&format!("{proxy}/team/tool:1.0"), &[])
            .expect("pull tool"),
        tool.manifest
    );

    // What operators see.
    let v = admin_json(&berth, "/api/v1/regions");
    assert!(
        v["proxy"]["affinity_entries"]
            .as_u64()
            .expect("affinity gauge")
            <= 2
    );
    assert!(region_stat(&berth, region, "bytes_out") > app.sizes.iter().sum::<u64>());
    let metrics = agent()
        .get(format!("{}/metrics", berth.admin()))
        .call()
        .expect("metrics")
        .body_mut()
        .read_to_string()
        .expect("text");
    assert!(
        metrics.contains(&format!(
            "berth_proxy_requests_total{{region=\"{region}\",method=\"PATCH\",status=\"2xx\"}}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_proxy_affinity_entries"),
        "{metrics}"
    );

    // After DNS queries (UDP and TCP) and the push, every family has samples: promtool
    // accepts the whole exposition, and every metric the Grafana dashboard and the alert
    // rules read is there.
    for tcp in [false, true] {
        let mut args = vec!["registry.example.test", "A"];
        if tcp {
            args.push("+tcp");
        }
        assert_eq!(support::dig(berth.dns, &args).status, "NOERROR");
    }
    let metrics = agent()
        .get(format!("{}/metrics", berth.admin()))
        .call()
        .expect("metrics")
        .body_mut()
        .read_to_string()
        .expect("text");
    promtool_check_metrics(&metrics);
    for family in [
        "berth_proxy_request_duration_seconds_bucket{region=",
        "berth_dns_answer_duration_seconds_bucket{transport=\"tcp\"",
        "berth_build_info{version=",
        "process_resident_memory_bytes ",
        "berth_probe_latency_seconds{region=",
    ] {
        assert!(metrics.contains(family), "no {family} in\n{metrics}");
    }
    // The big tables' sizes, and the part on huge pages (Linux reads it): never more.
    let value = |row: &str| -> Option<u64> {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(row)?.trim().parse().ok())
    };
    for table in ["sticky", "geoip"] {
        let bytes = value(&format!("berth_table_bytes{{table=\"{table}\"}} "))
            .unwrap_or_else(|| panic!("no berth_table_bytes for {table} in\n{metrics}"));
        let huge = value(&format!(
            "berth_table_huge_page_bytes{{table=\"{table}\"}} "
        ))
        .unwrap_or_else(|| panic!("no berth_table_huge_page_bytes for {table}"));
        assert!(bytes > 0 && huge <= bytes, "{table}: {huge} of {bytes}");
    }
    // `[replication]` is off here: tests/replication.rs checks its families.
    support::assert_dashboards_read_exported(
        &metrics,
        |n| !n.starts_with("berth_replication_"),
        false,
    );
}

/// `promtool check metrics` (Debian's `prometheus` package; `scripts/setup --test`) on an
/// exposition: no complaint, exit 0.
fn promtool_check_metrics(text: &str) {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (scripts/setup --test installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two Berth instances with one config and secret, and a push whose requests alternate
/// between them (a client whose DNS answer flips between two proxies): it succeeds. The same
/// push through a plain round-robin proxy straight to two replicas fails.
#[test]
fn push_alternating_between_two_berths_succeeds_where_round_robin_fails() {
    let rt = runtime();
    let regs = start_registries(&rt, 2, "");
    let dir_a = tempfile::tempdir().expect("tempdir");
    let dir_b = tempfile::tempdir().expect("tempdir");
    let a = Berth::start(&config(dir_a.path(), &regs, &[], ""));
    let b = Berth::start(&config(dir_b.path(), &regs, &[], ""));
    let both = forwarder(&rt, vec![proxy_addr(&a), proxy_addr(&b)], None, None);
    let sk = Skopeo::new();
    let app = image("app-1.0");

    assert_ok(
        &sk.push("app-1.0", &format!("{}/team/app:1.0", both.addr), &[]),
        "push alternating between two Berths",
    );
    let total = |x: &Berth| -> u64 {
        ["GET", "HEAD", "POST", "PATCH", "PUT"]
            .iter()
            .map(|m| requests(x, "westus", m) + requests(x, "eastus", m))
            .sum()
    };
    assert!(both.connections.load(Ordering::SeqCst) >= 10);
    assert!(
        total(&a) >= 5 && total(&b) >= 5,
        "both instances served the push: {} and {}",
        total(&a),
        total(&b)
    );
    assert_eq!(holders(&regs, "team/app", "1.0", &app, None).len(), 1);
    assert_eq!(
        sk.pull(&format!("{}/team/app:1.0", both.addr), &[])
            .expect("pull alternating"),
        app.manifest
    );

    // The control: the same push, alternating straight between the replicas.
    let plain = forwarder(
        &rt,
        regs.iter()
            .map(|r| SocketAddr::from(([127, 0, 0, 1], r.port)))
            .collect(),
        None,
        None,
    );
    let out = Skopeo::new().push("app-1.0", &format!("{}/team/other:1.0", plain.addr), &[]);
    assert!(
        !out.status.success(),
        "a round-robin push across replicas was expected to fail:\n{}",
        text(&out)
    );
    assert!(holders(&regs, "team/other", "1.0", &app, None).is_empty());
}

/// A client whose nearest region lacks a just-pushed image still pulls it: the 404 in its
/// region is retried in the others.
#[test]
fn pull_from_a_client_whose_region_lacks_the_image_falls_back() {
    let rt = runtime();
    let regs = start_registries(&rt, 3, "");
    let dir = tempfile::tempdir().expect("tempdir");
    // 127.0.0.2 is near eastus; 127.0.0.1 (no location) gets the default order: westus.
    let latency = "tie_band_ms = 5.0\n\n[[routed_name.latency]]\ncidr = \"127.0.0.2/32\"\n\
                   ms = { eastus = 1, westus = 80, westeurope = 90 }";
    let berth = Berth::start(&config(
        dir.path(),
        &regs,
        &[
            ("tie_band_ms = 5.0", latency),
            ("client_prefix_v4 = 24", "client_prefix_v4 = 32"),
        ],
        "",
    ));
    let sk = Skopeo::new();
    let app = image("app-1.0");
    assert_ok(
        &sk.push(
            "app-1.0",
            &format!("{}/team/app:1.0", proxy_addr(&berth)),
            &[],
        ),
        "push",
    );
    assert_eq!(holders(&regs, "team/app", "1.0", &app, None), vec![0]);

    let far = forwarder(
        &rt,
        vec![proxy_addr(&berth)],
        Some([127, 0, 0, 2].into()),
        None,
    );
    let pulled = Skopeo::new()
        .pull(&format!("{}/team/app:1.0", far.addr), &[])
        .expect("pull from the other client");
    assert_eq!(pulled, app.manifest);
    assert!(
        region_stat(&berth, "westus", "fallbacks") >= 4,
        "manifest and blobs came from westus after eastus said 404"
    );
    assert_eq!(
        holders(&regs, "team/app", "1.0", &app, None),
        vec![0],
        "a pull copies nothing"
    );
    // Every attempt counts: the 404s in eastus as well as the answers from westus.
    let metrics = agent()
        .get(format!("{}/metrics", berth.admin()))
        .call()
        .expect("metrics")
        .body_mut()
        .read_to_string()
        .expect("text");
    let eastus_404s: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("berth_proxy_requests_total{region=\"eastus\"")
                && l.contains("status=\"4xx\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        eastus_404s >= 4,
        "eastus's 404 attempts are counted:\n{metrics}"
    );
    // What is nowhere stays a 404 (after trying every region), not an error.
    let resp = agent()
        .get(format!("http://{}/v2/team/app/manifests/nope", far.addr))
        .call()
        .expect("proxy");
    assert_eq!(resp.status().as_u16(), 404);
}

/// A replica stopped in the middle of a push: the push fails with a clear error; with
/// `--retry-times` it succeeds at another region. Never a manifest without its blobs.
#[test]
fn replica_stopped_mid_push() {
    let rt = runtime();
    let mut regs = start_registries(&rt, 3, "");
    let dir = tempfile::tempdir().expect("tempdir");
    let berth = Berth::start(&config(dir.path(), &regs, &[], ""));
    // Slow enough (4 MB/s) to stop the replica between two blobs.
    let slow = forwarder(&rt, vec![proxy_addr(&berth)], None, Some(4_000_000));
    let app = image("app-1.0");

    let push_and_kill = |repo: &str, extra: &[&str], regs: &mut Vec<Registry>| -> Output {
        let sk = Skopeo::new();
        let src = format!("oci:{}:app-1.0", layout().display());
        let dst = format!("docker://{}/{repo}:1.0", slow.addr);
        let mut args = vec!["copy", "--dest-tls-verify=false"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[&src, &dst]);
        let child = sk
            .command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("skopeo");
        let puts_before = requests(&berth, "westus", "PUT");
        wait_for("the first blob of the push to be stored", || {
            requests(&berth, "westus", "PUT") > puts_before
        });
        regs[0].stop();
        child.wait_with_output().expect("skopeo output")
    };

    let out = push_and_kill("team/fail", &[], &mut regs);
    assert!(
        !out.status.success(),
        "push survived a dead region without retries"
    );
    let msg = text(&out);
    assert!(
        // Depending on where the push was: an upload session lost with its region, or the
        // manifest refused because its first blobs died with the region.
        msg.contains("blob upload unknown") || msg.contains("manifest blob unknown"),
        "a clear error: {msg}"
    );
    rt.block_on(regs[0].start());
    assert!(
        holders(&regs, "team/fail", "1.0", &app, None).is_empty(),
        "no manifest anywhere"
    );

    let out = push_and_kill("team/retry", &["--retry-times", "3"], &mut regs);
    assert_ok(&out, "push with --retry-times after its region died");
    rt.block_on(regs[0].start());
    let found = holders(&regs, "team/retry", "1.0", &app, None);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_ne!(found[0], 0, "stored at another region than the dead one");
    assert!(region_stat(&berth, "westus", "failovers") >= 1);
}

/// htpasswd basic auth: the challenge and the credentials pass through Berth.
#[test]
fn basic_auth_passes_through() {
    let rt = runtime();
    let pw = Command::new("htpasswd")
        .args(["-Bbn", "testuser", "testpassword"])
        .output()
        .expect("htpasswd (apt-get install apache2-utils)");
    assert!(pw.status.success());
    let yaml = "auth:\n  htpasswd:\n    realm: berth-test\n    path: {dir}/htpasswd\n";
    let regs: Vec<Registry> = (0..2).map(|_| Registry::with_yaml(yaml)).collect();
    for r in &regs {
        std::fs::write(r.dir().join("htpasswd"), &pw.stdout).expect("htpasswd file");
    }
    let mut regs = regs;
    for r in regs.iter_mut() {
        // With auth a replica that is up answers /v2/ with 401.
        rt.block_on(r.start_expecting(&[200, 401]));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let berth = Berth::start(&config(dir.path(), &regs, &[], ""));
    let proxy = proxy_addr(&berth);

    let resp = agent()
        .get(format!("http://{proxy}/v2/"))
        .call()
        .expect("proxy");
    assert_eq!(resp.status().as_u16(), 401);
    assert!(
        resp.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("berth-test")),
        "the registry's challenge reaches the client"
    );

    let app = image("app-1.0");
    let out = Skopeo::new().push("app-1.0", &format!("{proxy}/team/app:1.0"), &[]);
    assert!(
        !out.status.success(),
        "a push without credentials is refused"
    );
    assert!(
        text(&out).contains("unauthorized") || text(&out).contains("401"),
        "{}",
        text(&out)
    );

    let sk = Skopeo::new();
    let creds = ["--dest-creds", "testuser:testpassword"];
    assert_ok(
        &sk.push("app-1.0", &format!("{proxy}/team/app:1.0"), &creds),
        "push with creds",
    );
    let basic = "Basic dGVzdHVzZXI6dGVzdHBhc3N3b3Jk";
    assert_eq!(
        holders(&regs, "team/app", "1.0", &app, Some(basic)).len(),
        1
    );
    let pulled = sk
        .pull(
            &format!("{proxy}/team/app:1.0"),
            &["--src-creds", "testuser:testpassword"],
        )
        .expect("pull with creds");
    assert_eq!(pulled, app.manifest);
}

fn probe_fast(regs: &[Registry]) -> Vec<(String, String)> {
    regs.iter()
        .map(|r| {
            let up = format!("upstream = \"{}\"", r.upstream());
            let with = format!(
                "{up}\nprobe = {{ interval = \"200ms\", timeout = \"150ms\", fall = 2, rise = 2 }}"
            );
            (up, with)
        })
        .collect()
}

fn pairs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

fn location(resp: &ureq::http::Response<ureq::Body>) -> String {
    resp.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("a Location")
        .to_string()
}

fn body_json(resp: &mut ureq::http::Response<ureq::Body>) -> Value {
    let t = resp.body_mut().read_to_string().expect("body");
    serde_json::from_str(&t).unwrap_or(Value::String(t))
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(data);
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn set_enabled(b: &Berth, region: &str, enabled: bool) {
    let resp = agent()
        .put(format!("{}/api/v1/regions/{region}", b.admin()))
        .header("Authorization", format!("Bearer {ADMIN_TOKEN}"))
        .content_type("application/json")
        .send(format!("{{\"endpoint_enabled\": {enabled}}}"))
        .expect("admin API");
    assert_eq!(resp.status().as_u16(), 200);
}

/// Upload sessions: the token routes them, a forged one is refused in OCI JSON; disabling a
/// region drains it (its sessions and pinned pushes finish, new ones go elsewhere); a session
/// whose region is down gets BLOB_UPLOAD_UNKNOWN and is never sent elsewhere; a registry's own
/// early 404 on PATCH reaches the client as it is.
#[test]
fn upload_sessions_tokens_draining_and_down_regions() {
    let rt = runtime();
    let mut regs = start_registries(&rt, 2, "");
    let dir = tempfile::tempdir().expect("tempdir");
    let fast = probe_fast(&regs);
    let berth = Berth::start(&config(dir.path(), &regs, &pairs(&fast), ""));
    let base = format!("http://{}", proxy_addr(&berth));
    let a = agent();
    let start = |repo: &str| {
        let resp = a
            .post(format!("{base}/v2/{repo}/blobs/uploads/"))
            .send(&[][..])
            .expect("proxy");
        assert_eq!(resp.status().as_u16(), 202);
        location(&resp)
    };

    let l1 = start("team/d");
    assert!(
        l1.starts_with(&format!("{base}/v2/team/d/blobs/uploads/")),
        "{l1}"
    );
    assert!(l1.contains("&_berth=westus."), "{l1}");
    let chunk = vec![7u8; 4096];
    let resp = a.patch(&l1).send(&chunk[..]).expect("proxy");
    assert_eq!(resp.status().as_u16(), 202);
    let l2 = location(&resp);
    assert!(l2.contains("_berth=westus."), "{l2}");

    // Forged: the token moved to another region.
    let forged = l2.replace("_berth=westus.", "_berth=eastus.");
    let mut resp = a.patch(&forged).send(&chunk[..]).expect("proxy");
    assert_eq!(resp.status().as_u16(), 404);
    assert_eq!(
        body_json(&mut resp)["errors"][0]["code"],
        "BLOB_UPLOAD_INVALID"
    );

    // Drain westus: its session and the push pinned to it go on; a new push goes elsewhere.
    set_enabled(&berth, "westus", false);
    assert!(
        start("team/e").contains("_berth=eastus."),
        "new affinity elsewhere"
    );
    let l3 = start("team/d");
    assert!(l3.contains("_berth=westus."), "the pinned push stays: {l3}");
    let digest = sha256(&chunk);
    let resp = a
        .put(format!("{l2}&digest={digest}"))
        .send(&[][..])
        .expect("proxy");
    assert_eq!(
        resp.status().as_u16(),
        201,
        "the session finishes while draining"
    );
    assert!(has(
        regs[0].port,
        &format!("/v2/team/d/blobs/{digest}"),
        None
    ));
    set_enabled(&berth, "westus", true);

    // westus goes down: its sessions are refused, never forwarded to eastus.
    regs[0].stop();
    wait_for("westus to be marked down", || {
        let v = admin_json(&berth, "/api/v1/regions/westus");
        v["healthy"] == false
    });
    let eastus_patches = requests(&berth, "eastus", "PATCH");
    let mut resp = a.patch(&l3).send(&chunk[..]).expect("proxy");
    assert_eq!(resp.status().as_u16(), 404);
    let v = body_json(&mut resp);
    assert_eq!(v["errors"][0]["code"], "BLOB_UPLOAD_UNKNOWN", "{v}");
    assert!(
        v["errors"][0]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("westus"),
        "{v}"
    );
    assert_eq!(requests(&berth, "eastus", "PATCH"), eastus_patches);

    // The registry refuses a PATCH (bad _state) before reading its 4 MiB body: the client
    // gets the registry's 404 and error JSON, not a 502.
    let l5 = start("team/e");
    let bad = l5.replace("_state=", "_state=X");
    let big = dir.path().join("big");
    std::fs::write(&big, vec![1u8; 4 << 20]).expect("write");
    let out = Command::new("curl")
        .args([
            "-s",
            "-X",
            "PATCH",
            "-H",
            "Content-Type: application/octet-stream",
        ])
        .arg("--data-binary")
        .arg(format!("@{}", big.display()))
        .args(["-w", "\n%{http_code}", &bad])
        .output()
        .expect("curl");
    let t = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = t.rsplit_once('\n').expect("status line");
    assert_eq!(code, "404", "{t}");
    assert!(
        body.contains("BLOB_UPLOAD_INVALID"),
        "the registry's own answer: {body}"
    );
}

/// The manifest safety net: blobs in one region, the manifest PUT routed to another (the
/// affinity expired and the client now maps elsewhere): Berth finds the region holding every
/// blob and stores the manifest there.
#[test]
fn manifest_safety_net_finds_the_region_with_the_blobs() {
    let rt = runtime();
    let regs = start_registries(&rt, 2, "");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config(dir.path(), &regs, &[], "");
    let berth = Berth::start(&path);
    let base = format!("http://{}", proxy_addr(&berth));
    let a = agent();
    let upload = |repo: &str, data: &[u8]| -> String {
        let d = sha256(data);
        let resp = a
            .post(format!("{base}/v2/{repo}/blobs/uploads/"))
            .send(&[][..])
            .expect("proxy");
        assert_eq!(resp.status().as_u16(), 202);
        let resp = a
            .put(format!("{}&digest={d}", location(&resp)))
            .content_type("application/octet-stream")
            .send(data)
            .expect("proxy");
        assert_eq!(resp.status().as_u16(), 201, "upload in one PUT");
        d
    };
    let config_blob =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer: Vec<u8> = (0..20_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let c = upload("team/s", config_blob);
    let l = upload("team/s", &layer);
    assert!(
        has(regs[0].port, &format!("/v2/team/s/blobs/{l}"), None),
        "blobs in westus"
    );

    // Now the client is nearest eastus, and its affinity has expired.
    let near_east = "tie_band_ms = 5.0\n\n[[routed_name.latency]]\ncidr = \"127.0.0.0/8\"\n\
                     ms = { eastus = 1, westus = 50 }";
    assert_eq!(
        config(dir.path(), &regs, &[("tie_band_ms = 5.0", near_east)], ""),
        path
    );
    {
        let _in_runtime = berth.rt.enter();
        berth.running().reload().expect("reload");
    }
    let live = &berth.running().live;
    live.set_clock(live.now() + 16 * 60 * 1000);

    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{c}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{l}","size":{}}}]}}"#,
        config_blob.len(),
        layer.len()
    );
    let resp = a
        .put(format!("{base}/v2/team/s/manifests/v1"))
        .content_type("application/vnd.oci.image.manifest.v1+json")
        .send(manifest.as_bytes())
        .expect("proxy");
    assert_eq!(resp.status().as_u16(), 201);
    assert!(location(&resp).starts_with(&format!("{base}/v2/team/s/manifests/sha256:")));
    assert!(
        has(regs[0].port, "/v2/team/s/manifests/v1", None),
        "stored with its blobs"
    );
    assert!(!has(regs[1].port, "/v2/team/s/manifests/v1", None));
    assert_eq!(region_stat(&berth, "westus", "safety_net_retries"), 1);
    // The affinity followed: reads of this client now go to westus first.
    let resp = a
        .get(format!("{base}/v2/team/s/manifests/v1"))
        .header("Accept", MANIFEST_TYPES)
        .call()
        .expect("proxy");
    assert_eq!(resp.status().as_u16(), 200);

    // A manifest whose blobs are nowhere: the registry's refusal reaches the client.
    let missing = manifest.replace(&l, &sha256(b"nowhere"));
    let mut resp = a
        .put(format!("{base}/v2/team/s/manifests/v2"))
        .content_type("application/vnd.oci.image.manifest.v1+json")
        .send(missing.as_bytes())
        .expect("proxy");
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(
        body_json(&mut resp)["errors"][0]["code"],
        "MANIFEST_BLOB_UNKNOWN"
    );
}

/// A test CA and a server certificate for 127.0.0.1 and localhost, in PEM.
fn test_ca(cn: &str) -> (String, String, String) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let ca =
        rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().expect("key"))
            .expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("server cert");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// HTTPS: skopeo pushes and pulls through the TLS listener with only the test CA trusted;
/// HTTP/2 is offered; a new certificate behind the same files is picked up on reload.
#[test]
fn tls_listener_with_skopeo_and_certificate_reload() {
    let rt = runtime();
    let regs = start_registries(&rt, 2, "");
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = test_ca("berth test CA one");
    let certs = dir.path().join("certs.d");
    std::fs::create_dir(&certs).expect("mkdir");
    std::fs::write(certs.join("ca.crt"), &ca).expect("ca");
    std::fs::write(dir.path().join("berth.pem"), cert).expect("cert");
    std::fs::write(dir.path().join("berth.key"), key).expect("key");
    let tls = "threads = 2\ntls_listen = \"127.0.0.1:0\"\ntls_cert = \"berth.pem\"\ntls_key = \"berth.key\"";
    let berth = Berth::start(&config(dir.path(), &regs, &[("threads = 2", tls)], ""));
    let https = berth.running().proxy_tls_addr.expect("TLS listener");

    let sk = Skopeo::new();
    let src = format!("oci:{}:app-1.0", layout().display());
    let dst = format!("docker://{https}/team/app:1.0");
    let cert_dir = certs.display().to_string();
    assert_ok(
        &sk.run(&["copy", "--dest-cert-dir", &cert_dir, &src, &dst]),
        "push over HTTPS",
    );
    let app = image("app-1.0");
    assert_eq!(holders(&regs, "team/app", "1.0", &app, None).len(), 1);
    let pulled = sk
        .pull(
            &format!("{https}/team/app:1.0"),
            &["--src-tls-verify=true", "--src-cert-dir", &cert_dir],
        )
        .expect("pull over HTTPS");
    assert_eq!(pulled, app.manifest);

    let curl = |ca: &Path, args: &[&str]| -> String {
        let out = Command::new("curl")
            .args(["-s", "--cacert"])
            .arg(ca)
            .args(args)
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let ca_file = certs.join("ca.crt");
    let v2 = format!("https://{https}/v2/");
    assert_eq!(
        curl(
            &ca_file,
            &["--http2", "-o", "/dev/null", "-w", "%{http_version}", &v2]
        ),
        "2"
    );
    let head = curl(
        &ca_file,
        &[
            "-i",
            "-X",
            "POST",
            &format!("https://{https}/v2/team/x/blobs/uploads/"),
        ],
    );
    assert!(
        head.to_ascii_lowercase().contains(&format!(
            "location: https://{https}/v2/team/x/blobs/uploads/"
        )),
        "Location keeps the public https origin:\n{head}"
    );

    // A renewed certificate (from another CA) behind the same file names, then a reload.
    let (ca2, cert2, key2) = test_ca("berth test CA two");
    let ca2_file = dir.path().join("ca2.crt");
    std::fs::write(&ca2_file, ca2).expect("ca2");
    std::fs::write(dir.path().join("berth.pem"), cert2).expect("cert");
    std::fs::write(dir.path().join("berth.key"), key2).expect("key");
    {
        let _in_runtime = berth.rt.enter();
        berth.running().reload().expect("reload");
    }
    wait_for("the new certificate to be served", || {
        curl(&ca2_file, &["-o", "/dev/null", "-w", "%{http_code}", &v2]) == "200"
    });
}

/// The `[proxy]` section: defaults, and errors that name the key and the problem.
#[test]
fn proxy_config_defaults_and_errors() {
    use berth::config::Config;
    let base =
        std::fs::read_to_string(support::repo().join("config/demo.toml")).expect("demo config");
    let parse = |text: &str| Config::parse(text, Path::new("/etc/berth/berth.toml"));
    let c = parse(&base).expect("the demo config");
    let p = &c.proxy;
    assert_eq!(p.listen, Some("127.0.0.1:8080".parse().expect("addr")));
    assert_eq!(p.push_affinity, Duration::from_secs(900));
    assert_eq!(p.manifest_buffer_limit, 4 << 20);
    assert_eq!(p.read_fallback_max, 2);
    assert_eq!(p.routed_name, 0);
    let with = |extra: &str| base.replace("[proxy]\n", &format!("[proxy]\n{extra}\n"));
    let c = parse(&with(
        "manifest_buffer_limit = \"1MiB\"\ntrusted_proxies = [\"10.1.2.3/8\", \"192.0.2.1\"]",
    ))
    .expect("valid");
    assert_eq!(c.proxy.manifest_buffer_limit, 1 << 20);
    assert_eq!(
        c.proxy
            .trusted_proxies
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>(),
        vec!["10.0.0.0/8", "192.0.2.1/32"]
    );
    for (extra, expect) in [
        (
            "name = \"other.example.test\"",
            "proxy.name: other.example.test is not a routed name",
        ),
        (
            "tls_listen = \"127.0.0.1:8443\"",
            "proxy.tls_listen: needs tls_cert and tls_key (PEM files)",
        ),
        (
            "secret_file = \"s\"",
            "proxy.secret_file: give secret_env or secret_file, not both",
        ),
        (
            "manifest_buffer_limit = \"4 parsecs\"",
            "proxy.manifest_buffer_limit: \"4 parsecs\" has an unknown unit (B, KiB, MiB or GiB)",
        ),
        (
            "push_affinity = \"15\"",
            "proxy.push_affinity: \"15\" has no unit",
        ),
        (
            "trusted_proxies = [\"nope\"]",
            "proxy.trusted_proxies[0]: \"nope\" is not a network",
        ),
        ("lisen = \"x\"", "unknown field `lisen`"),
    ] {
        let e = parse(&with(extra)).expect_err(extra).to_string();
        assert!(e.contains(expect), "{extra}: {e}");
    }
    let e = parse(&base.replace(
        "upstream = \"http://127.0.0.1:5002\"",
        "upstream = \"http://127.0.0.1:5002/registry\"",
    ))
    .expect_err("a path")
    .to_string();
    assert!(
        e.contains("region[1] (eastus).upstream: \"http://127.0.0.1:5002/registry\" has a path"),
        "{e}"
    );
}

/// HTTPS upstreams: verified against `upstream_ca_file`; without it (system roots) the same
/// replica is refused, as a 502 in OCI error JSON.
#[test]
fn https_upstreams_are_verified_against_the_configured_ca() {
    let rt = runtime();
    let (ca, cert, key) = test_ca("berth test upstream CA");
    // The registry's own TLS: these lines continue its `http:` section.
    let tls = "  tls:\n    certificate: {dir}/tls.pem\n    key: {dir}/tls.key\n";
    let mut regs: Vec<Registry> = (0..2).map(|_| Registry::with_yaml(tls)).collect();
    for r in regs.iter_mut() {
        std::fs::write(r.dir().join("tls.pem"), &cert).expect("cert");
        std::fs::write(r.dir().join("tls.key"), &key).expect("key");
        rt.block_on(r.start_expecting(&[400]));
    }
    let https: Vec<(String, String)> = regs
        .iter()
        .map(|r| {
            (
                format!("upstream = \"{}\"", r.upstream()),
                format!("upstream = \"https://localhost:{}\"", r.port),
            )
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("upstream-ca.pem"), &ca).expect("ca");
    let mut with_ca = https.clone();
    with_ca.push((
        "threads = 2".into(),
        "threads = 2\nupstream_ca_file = \"upstream-ca.pem\"".into(),
    ));
    let berth = Berth::start(&config(dir.path(), &regs, &pairs(&with_ca), ""));
    let proxy = proxy_addr(&berth);
    wait_until_served(proxy);
    let sk = Skopeo::new();
    let app = image("app-1.0");
    assert_ok(
        &sk.push("app-1.0", &format!("{proxy}/team/app:1.0"), &[]),
        "push to HTTPS replicas",
    );
    assert_eq!(region_stat(&berth, "westus", "failovers"), 0);
    assert!(region_stat(&berth, "westus", "bytes_in") > app.sizes.iter().sum::<u64>());
    assert_eq!(
        sk.pull(&format!("{proxy}/team/app:1.0"), &[])
            .expect("pull"),
        app.manifest
    );

    let dir2 = tempfile::tempdir().expect("tempdir");
    let untrusting = Berth::start(&config(dir2.path(), &regs, &pairs(&https), ""));
    let p2 = proxy_addr(&untrusting);
    wait_for("an answer", || {
        agent()
            .get(format!("http://{p2}/v2/"))
            .call()
            .is_ok_and(|r| r.status().as_u16() != 503)
    });
    let mut resp = agent()
        .get(format!("http://{p2}/v2/"))
        .call()
        .expect("proxy");
    assert_eq!(resp.status().as_u16(), 502);
    assert_eq!(body_json(&mut resp)["errors"][0]["code"], "UNAVAILABLE");
}
