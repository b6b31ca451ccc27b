//! Replication end to end with real components: four Debian `docker-registry` replicas (the
//! demo's regions), Berth with `[replication]` in front, `skopeo` pushing images built
//! offline (umoci, `../shared/testbed/make-images.sh`). Presence is checked by asking each
//! replica directly, never through Berth.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};

mod support;
use support::{demo_config_replicated, runtime, Berth, Registry, MANIFEST_TYPES};

const SECRET: &str = "replication-test-secret-0123456789";
const ADMIN_TOKEN: &str = "test-token-0123456789";
const DEADLINE: Duration = Duration::from_secs(60);
const REGIONS: [&str; 4] = ["westus", "eastus", "westeurope", "southeastasia"];

// ---------------------------------------------------------------------------------------------
// Test images (umoci, offline) and skopeo.

/// The OCI layout holding `app-1.0` (3 layers) and `tool-1.0` (shares the base layer), plus
/// `multi`: an OCI index of the two as two platforms, written by hand.
fn layout() -> &'static Path {
    static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        let layout = support::make_images("replication-images");
        add_index(&layout);
        layout
    })
}

fn index_json(layout: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
        .expect("index json")
}

fn descriptor_in(layout: &Path, tag: &str) -> Value {
    index_json(layout)["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("tag {tag} in {}", layout.display()))
        .clone()
}

fn sha256(data: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin.take().expect("stdin").write_all(data)?;
            c.wait_with_output()
        })
        .expect("sha256sum");
    format!(
        "sha256:{}",
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .expect("hash")
    )
}

/// Tag `multi`: an OCI image index naming app-1.0 as linux/amd64 and tool-1.0 as linux/arm64.
fn add_index(layout: &Path) {
    let child = |tag: &str, arch: &str| {
        let mut d = descriptor_in(layout, tag);
        d.as_object_mut().expect("descriptor").remove("annotations");
        d["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
        d
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [child("app-1.0", "amd64"), child("tool-1.0", "arm64")],
    });
    let bytes = serde_json::to_vec(&index).expect("json");
    let digest = sha256(&bytes);
    std::fs::write(
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
        &bytes,
    )
    .expect("write index blob");
    let mut top = index_json(layout);
    top["manifests"]
        .as_array_mut()
        .expect("manifests")
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest,
            "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }));
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&top).expect("json"),
    )
    .expect("write index.json");
}

/// An image of the layout: its manifest digest and the blobs the manifest names.
struct Image {
    manifest: String,
    blobs: Vec<String>,
}

fn blob(digest: &str) -> Value {
    serde_json::from_slice(
        &std::fs::read(
            layout()
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
        .expect("blob"),
    )
    .expect("json blob")
}

fn image(tag: &str) -> Image {
    let manifest = descriptor_in(layout(), tag)["digest"]
        .as_str()
        .expect("digest")
        .to_string();
    let m = blob(&manifest);
    let blobs = std::iter::once(&m["config"])
        .chain(m["layers"].as_array().expect("layers"))
        .map(|d| d["digest"].as_str().expect("digest").to_string())
        .collect();
    Image { manifest, blobs }
}

/// skopeo with a private blob-info cache (as in tests/proxy.rs).
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
        support::skopeo_command(self.cache.path(), args)
            .output()
            .expect("skopeo runs (apt-get install skopeo)")
    }

    /// Push `tag` of the test layout to `dest` (`host:port/repo:tag`); `--all` for an index.
    fn push(&self, tag: &str, dest: &str) -> Output {
        let src = format!("oci:{}:{tag}", layout().display());
        self.run(&[
            "copy",
            "--all",
            "--dest-tls-verify=false",
            &src,
            &format!("docker://{dest}"),
        ])
    }

    /// Pull `src` into a fresh layout; the digest of what was pulled.
    fn pull(&self, src: &str) -> Result<String, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let l = dir.path().join("l");
        let dst = format!("oci:{}:pulled", l.display());
        let out = self.run(&[
            "copy",
            "--all",
            "--src-tls-verify=false",
            &format!("docker://{src}"),
            &dst,
        ]);
        if !out.status.success() {
            return Err(text(&out));
        }
        Ok(descriptor_in(&l, "pulled")["digest"]
            .as_str()
            .expect("digest")
            .to_string())
    }
}

use support::{assert_ok, output_text as text};

// ---------------------------------------------------------------------------------------------
// Replicas, Berth, and asking replicas directly.

fn start_registries(rt: &tokio::runtime::Runtime, yaml: &dyn Fn(usize) -> String) -> Vec<Registry> {
    let mut regs: Vec<Registry> = (0..4).map(|i| Registry::with_yaml(&yaml(i))).collect();
    for r in regs.iter_mut() {
        rt.block_on(r.start());
    }
    regs
}

/// The demo config (with its `[replication]`) on `regs`, fast retries, `replace` after.
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
    pairs.push((
        "secret_env = \"BERTH_PROXY_SECRET\"".into(),
        "secret_file = \"secret\"\nthreads = 2\nshutdown_grace = \"1s\"".into(),
    ));
    pairs.push((
        "token_env = \"BERTH_ADMIN_TOKEN\"".into(),
        "token_file = \"token\"".into(),
    ));
    pairs.push((
        "# retry = { max = 8, initial = \"1s\", max_delay = \"5m\" }".into(),
        "retry = { max = 100, initial = \"100ms\", max_delay = \"1s\" }".into(),
    ));
    pairs.push((
        "# reconcile_every = \"10m\"".into(),
        "reconcile_every = \"1h\"".into(),
    ));
    let mut all: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    all.extend_from_slice(replace);
    demo_config_replicated(dir, &all, extra)
}

/// The running Berth's replicator (the tests' configs turn it on).
fn replication(berth: &Berth) -> &berth::replication::Replication {
    berth
        .running()
        .live
        .replication
        .get()
        .expect("replication on")
}

/// What `GET /metrics` says.
fn metrics_text(berth: &Berth) -> String {
    agent()
        .get(format!("{}/metrics", berth.admin()))
        .call()
        .expect("metrics")
        .body_mut()
        .read_to_string()
        .expect("text")
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

/// The status of HEAD `path` on the replica on `port` (0 when it cannot be reached).
fn head_with(port: u16, path: &str, auth: Option<&str>) -> u16 {
    let mut req = agent()
        .head(format!("http://127.0.0.1:{port}{path}"))
        .header("Accept", MANIFEST_TYPES);
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    req.call().map_or(0, |r| r.status().as_u16())
}

/// Does replica `reg` hold `repo:reference` whole: the manifest (with this digest) and every
/// blob? A manifest without a blob fails the test: no replica may ever hold one.
fn complete(reg: &Registry, repo: &str, reference: &str, img: &Image) -> bool {
    complete_with(reg, repo, reference, img, None)
}

/// [`complete`] with an `Authorization` header.
fn complete_with(
    reg: &Registry,
    repo: &str,
    reference: &str,
    img: &Image,
    auth: Option<&str>,
) -> bool {
    let mut req = agent()
        .head(format!(
            "http://127.0.0.1:{}/v2/{repo}/manifests/{reference}",
            reg.port
        ))
        .header("Accept", MANIFEST_TYPES);
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let resp = req.call();
    let Ok(resp) = resp else { return false };
    if resp.status().as_u16() != 200 {
        return false;
    }
    let digest = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        digest, img.manifest,
        "{repo}:{reference} on port {}",
        reg.port
    );
    for b in &img.blobs {
        assert_eq!(
            head_with(reg.port, &format!("/v2/{repo}/blobs/{b}"), auth),
            200,
            "replica on port {} holds {repo}:{reference} but not its blob {b}",
            reg.port
        );
    }
    true
}

fn wait_for(what: &str, check: impl FnMut() -> bool) {
    support::wait_until(what, DEADLINE, check);
}

/// [`wait_for`] something replication must do: a timeout's message carries what replication
/// says (queue, regions, failures) and the image's status, so a failure in CI names its cause.
fn wait_replicated(b: &Berth, what: &str, image: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + DEADLINE;
    while !check() {
        if std::time::Instant::now() > deadline {
            let (_, overview) = admin_json(b, "/api/v1/replication");
            let (_, status) = admin_json(b, &format!("/api/v1/replication/{image}"));
            panic!("timed out waiting for {what}\nreplication: {overview}\n{image}: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn admin_json(b: &Berth, path: &str) -> (u16, Value) {
    let mut resp = agent()
        .get(format!("{}{path}", b.admin()))
        .call()
        .expect("admin API");
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().expect("body");
    (status, serde_json::from_str(&body).expect("json"))
}

fn proxy(b: &Berth) -> String {
    let p = b.running().proxy_addr.expect("proxy listener");
    wait_for("the proxy to serve", || {
        agent()
            .get(format!("http://{p}/v2/"))
            .call()
            .is_ok_and(|r| [200, 401].contains(&r.status().as_u16()))
    });
    p.to_string()
}

/// Four replicas, the demo config on them (replication to all four), and Berth serving it.
struct Started {
    rt: tokio::runtime::Runtime,
    regs: Vec<Registry>,
    /// Holds the config and Berth's state files.
    _dir: tempfile::TempDir,
    cfg: PathBuf,
    berth: Berth,
    /// The proxy's address, once it serves.
    proxy_at: String,
}

fn started() -> Started {
    let rt = runtime();
    let regs = start_registries(&rt, &|_| String::new());
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), &regs, &[], "");
    let berth = Berth::start(&cfg);
    let proxy_at = proxy(&berth);
    Started {
        rt,
        regs,
        _dir: dir,
        cfg,
        berth,
        proxy_at,
    }
}

/// The region the routing core gives loopback clients, and its index in [`REGIONS`].
fn nearest(berth: &Berth) -> (String, usize) {
    let (_, route) = admin_json(berth, "/api/v1/route?client=127.0.0.1");
    let name = route["region"]
        .as_str()
        .expect("a region for loopback")
        .to_string();
    let n = REGIONS
        .iter()
        .position(|r| *r == name)
        .expect("demo region");
    (name, n)
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// A push through Berth becomes present and complete in all four regions (asked directly),
/// each replica serves a pull of it with the same digest, and the API, CLI and metrics say so.
#[test]
fn a_push_through_berth_reaches_every_region() {
    let rt = runtime();
    let regs = start_registries(&rt, &|_| String::new());
    let dir = tempfile::tempdir().expect("tempdir");
    let berth = Berth::start(&config(dir.path(), &regs, &[], ""));
    let proxy = proxy(&berth);
    let sk = Skopeo::new();
    let app = image("app-1.0");
    // The first job panics: counted as a worker panic, and retried like a failed attempt.
    replication(&berth).inject_job_panic();
    assert_ok(
        &sk.push("app-1.0", &format!("{proxy}/team/app:1.0")),
        "push",
    );

    wait_for("team/app:1.0 complete in every region", || {
        regs.iter().all(|r| complete(r, "team/app", "1.0", &app))
    });
    for r in &regs {
        let pulled = sk
            .pull(&format!("127.0.0.1:{}/team/app:1.0", r.port))
            .expect("pull straight from the replica");
        assert_eq!(pulled, app.manifest);
    }

    wait_for("the status table to show it present everywhere", || {
        let (status, v) = admin_json(&berth, "/api/v1/replication/team/app?reference=1.0");
        status == 200
            && REGIONS
                .iter()
                .all(|r| v["regions"][*r]["state"] == "present")
    });
    let (_, v) = admin_json(&berth, "/api/v1/replication");
    assert_eq!(v["queued_jobs"], 0, "{v}");
    assert!(
        v["copied_bytes"].as_u64().expect("bytes") > 3 * 10_000_000,
        "{v}"
    );
    let lagged = REGIONS
        .iter()
        .filter(|r| v["regions"][**r]["lag_p50_seconds"].is_f64())
        .count();
    assert_eq!(lagged, 3, "a lag for every destination: {v}");

    let cli = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "replication",
            "status",
            "team/app:1.0",
            "--admin",
            &berth.admin(),
        ])
        .output()
        .expect("berth CLI");
    let out = text(&cli);
    assert!(cli.status.success(), "{out}");
    assert_eq!(out.matches("present").count(), 4, "{out}");

    let metrics = metrics_text(&berth);
    let done = REGIONS
        .iter()
        .filter(|r| {
            metrics.contains(&format!(
                "berth_replication_jobs_done_total{{region=\"{r}\"}} 1\n"
            ))
        })
        .count();
    assert_eq!(done, 3, "one job done per destination:\n{metrics}");
    assert!(
        metrics.contains("berth_replication_lag_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_worker_panics_total{worker=\"replication\"} 1\n"),
        "the injected panic counted:\n{metrics}"
    );
    // A family no region has a sample of yet (jobs given up) shows as its TYPE line.
    support::assert_dashboards_read_exported(
        &metrics,
        |n| n.starts_with("berth_replication_"),
        true,
    );
}

/// A destination that is down: the push still succeeds, the job is retried, and the region
/// catches up when it is back. Then, with a destination down again, Berth is restarted in the
/// middle: the persisted queue brings the job back (reconcile is an hour away).
#[test]
fn a_stopped_destination_catches_up_and_a_restart_loses_no_job() {
    let Started {
        rt,
        mut regs,
        _dir,
        cfg,
        mut berth,
        proxy_at,
    } = started();
    let sk = Skopeo::new();
    let app = image("app-1.0");
    let tool = image("tool-1.0");

    regs[3].stop();
    assert_ok(
        &sk.push("app-1.0", &format!("{proxy_at}/team/app:1.0")),
        "push with southeastasia down",
    );
    wait_for("the other three regions", || {
        regs[..3]
            .iter()
            .all(|r| complete(r, "team/app", "1.0", &app))
    });
    wait_for("southeastasia pending with its error", || {
        let (_, v) = admin_json(&berth, "/api/v1/replication/team/app?reference=1.0");
        let s = &v["regions"]["southeastasia"];
        s["state"] == "pending" && s["last_error"].is_string()
    });
    rt.block_on(regs[3].start());
    wait_for("southeastasia to catch up", || {
        complete(&regs[3], "team/app", "1.0", &app)
    });

    // Down again, and Berth restarted while the job waits.
    regs[3].stop();
    assert_ok(
        &sk.push("tool-1.0", &format!("{proxy_at}/team/tool:1.0")),
        "push tool",
    );
    wait_for("the other three regions", || {
        regs[..3]
            .iter()
            .all(|r| complete(r, "team/tool", "1.0", &tool))
    });
    wait_for("the tool job to have failed once", || {
        let (_, v) = admin_json(&berth, "/api/v1/replication/team/tool?reference=1.0");
        v["regions"]["southeastasia"]["last_error"].is_string()
    });
    berth.stop();
    drop(berth);
    rt.block_on(regs[3].start());
    let berth = Berth::start(&cfg);
    wait_for("southeastasia to get tool from the persisted queue", || {
        complete(&regs[3], "team/tool", "1.0", &tool)
    });
    let (_, v) = admin_json(&berth, "/api/v1/replication");
    wait_for("the queue to drain", || {
        admin_json(&berth, "/api/v1/replication").1["queued_jobs"] == 0
    });
    assert!(v["regions"]["southeastasia"].is_object(), "{v}");
}

/// A job waiting for a region that a reload then takes out of the config ends, and the status
/// says why (it used to leave the queue without a word, pending with its last copy error).
#[test]
fn a_job_for_a_region_the_config_drops_ends_with_its_reason() {
    let Started {
        rt: _rt,
        mut regs,
        _dir,
        cfg,
        berth,
        proxy_at,
    } = started();
    let sk = Skopeo::new();
    let app = image("app-1.0");
    regs[3].stop();
    assert_ok(
        &sk.push("app-1.0", &format!("{proxy_at}/team/app:1.0")),
        "push with southeastasia down",
    );
    let southeastasia = || {
        admin_json(&berth, "/api/v1/replication/team/app?reference=1.0").1["regions"]
            ["southeastasia"]
            .clone()
    };
    wait_for("southeastasia pending with its error", || {
        let s = southeastasia();
        s["state"] == "pending" && s["last_error"].is_string()
    });

    // The region leaves the config: its block, the routed name's list and the rule's.
    let text = std::fs::read_to_string(&cfg).expect("config");
    let start = text
        .find("[[region]]\nname = \"southeastasia\"")
        .expect("the region's block");
    let end = start + 1 + text[start + 1..].find("\n[[").expect("the next block");
    let without =
        format!("{}{}", &text[..start], &text[end + 1..]).replace(", \"southeastasia\"]", "]");
    assert!(!without.contains("southeastasia"), "{without}");
    std::fs::write(&cfg, without).expect("config");
    assert_eq!(post_admin(&berth, "/api/v1/reload"), 200);

    wait_for("the queue to drain", || {
        admin_json(&berth, "/api/v1/replication").1["queued_jobs"] == 0
    });
    let s = southeastasia();
    assert_eq!(s["state"], "failed", "{s}");
    assert!(
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("region southeastasia is no longer in the config")),
        "{s}"
    );
    assert!(regs[..3]
        .iter()
        .all(|r| complete(r, "team/app", "1.0", &app)));
}

fn post_admin(b: &Berth, path: &str) -> u16 {
    agent()
        .post(format!("{}{path}", b.admin()))
        .header("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .send_empty()
        .expect("admin API")
        .status()
        .as_u16()
}

/// docker-registry's `notifications` config for registry `i`: registry `notifier` (of
/// `region`) notifies Berth's admin API on `admin_port`; the others nobody.
fn notifications(i: usize, notifier: usize, region: &str, admin_port: u16) -> String {
    if i != notifier {
        return String::new();
    }
    format!(
        "notifications:\n  endpoints:\n    - name: berth\n      \
         url: http://127.0.0.1:{admin_port}/api/v1/replication/notifications?region={region}\n      \
         headers:\n        Authorization: [\"Bearer {ADMIN_TOKEN}\"]\n      \
         timeout: 2s\n      threshold: 3\n      backoff: 200ms\n"
    )
}

/// Pushes made straight to a replica, bypassing Berth: westus's registry notifies Berth
/// (docker-registry's own `notifications.endpoints`), so its push replicates at once;
/// eastus's does not, and its push arrives with a reconcile (`POST /api/v1/replication/sync`;
/// the timer is an hour away).
#[test]
fn pushes_that_bypass_berth_arrive_by_notification_and_by_reconcile() {
    let rt = runtime();
    let admin_port = support::free_port();
    let notify = move |i: usize| notifications(i, 0, "westus", admin_port);
    let regs = start_registries(&rt, &notify);
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = format!("listen = \"127.0.0.1:{admin_port}\"");
    let cfg = config(
        dir.path(),
        &regs,
        &[("listen = \"127.0.0.1:9180\"", listen.as_str())],
        "",
    );
    let berth = Berth::start(&cfg);
    let sk = Skopeo::new();
    let app = image("app-1.0");
    let tool = image("tool-1.0");

    let straight = format!("127.0.0.1:{}/team/app:1.0", regs[0].port);
    assert_ok(&sk.push("app-1.0", &straight), "push straight to westus");
    wait_for("app in every region, by notification", || {
        regs.iter().all(|r| complete(r, "team/app", "1.0", &app))
    });

    let straight = format!("127.0.0.1:{}/team/tool:1.0", regs[1].port);
    assert_ok(&sk.push("tool-1.0", &straight), "push straight to eastus");
    assert_eq!(post_admin(&berth, "/api/v1/replication/sync"), 202);
    wait_for("tool in every region, by reconcile", || {
        regs.iter().all(|r| complete(r, "team/tool", "1.0", &tool))
    });
}

/// A Harbor replica's project webhook ("Default" payload) posted to the notification
/// endpoint: the push it reports, made straight to eastus, replicates at once. An event
/// whose operator is the account Berth copies to eastus with is Berth's own copy: ignored.
/// (Harbor itself is not packaged here; its payload is built as its documentation shows.)
#[test]
fn a_harbor_webhook_replicates_the_push_it_reports() {
    let rt = runtime();
    let regs = start_registries(&rt, &|_| String::new());
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("robot-password"), "secret").expect("password");
    let cfg = config(
        dir.path(),
        &regs,
        &[],
        "[[replication.credential]]\nregion = \"eastus\"\nusername = \"robot$berth\"\npassword_file = \"robot-password\"\n",
    );
    let berth = Berth::start(&cfg);
    let sk = Skopeo::new();
    let app = image("app-1.0");
    let straight = format!("127.0.0.1:{}/team/app:1.0", regs[1].port);
    assert_ok(&sk.push("app-1.0", &straight), "push straight to eastus");

    let payload = |operator: &str| {
        json!({
            "type": "PUSH_ARTIFACT",
            "occur_at": 1_780_000_000,
            "operator": operator,
            "event_data": {
                "resources": [{"digest": app.manifest, "tag": "1.0",
                               "resource_url": format!("{straight}")}],
                "repository": {"name": "app", "namespace": "team",
                               "repo_full_name": "team/app", "repo_type": "private"}
            }
        })
    };
    let notify = |body: Value| {
        let mut r = agent()
            .post(format!(
                "{}/api/v1/replication/notifications?region=eastus",
                berth.admin()
            ))
            .header("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
            .send_json(body)
            .expect("admin API");
        let status = r.status().as_u16();
        let v: Value = r.body_mut().read_json().expect("json");
        (status, v)
    };
    assert_eq!(
        notify(payload("robot$berth")),
        (200, json!({"accepted": 0}))
    );
    assert_eq!(notify(payload("alice")), (200, json!({"accepted": 1})));
    wait_for("app in every region, by Harbor's webhook", || {
        regs.iter().all(|r| complete(r, "team/app", "1.0", &app))
    });
    let (status, v) = notify(json!({"hello": "world"}));
    assert_eq!(status, 400, "{v}");
}

/// Repository and tag filters: only what a rule takes is copied.
#[test]
fn filters_include_and_exclude() {
    let rt = runtime();
    let regs = start_registries(&rt, &|_| String::new());
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        dir.path(),
        &regs,
        &[
            (
                "repositories = [\"**\"]",
                "repositories = [\"team/**\"]\nexclude = [\"team/private/**\"]",
            ),
            (
                "tags = [\"*\"]",
                "tags = [\"*\"]\nexclude_tags = [\"*-dev\"]",
            ),
        ],
        "",
    );
    let berth = Berth::start(&cfg);
    let proxy_at = proxy(&berth);
    let sk = Skopeo::new();
    let app = image("app-1.0");
    for dest in [
        "team/private/x:1.0",
        "other/app:1.0",
        "team/app:1.0-dev",
        "team/app:1.0",
    ] {
        assert_ok(&sk.push("app-1.0", &format!("{proxy_at}/{dest}")), dest);
    }
    wait_replicated(
        &berth,
        "team/app:1.0 in every region",
        "team/app?reference=1.0",
        || regs.iter().all(|r| complete(r, "team/app", "1.0", &app)),
    );
    // Events are taken in order: the excluded pushes were decided before the last one.
    wait_for("the queue to drain", || {
        admin_json(&berth, "/api/v1/replication").1["queued_jobs"] == 0
    });
    for (repo, tag) in [
        ("team/private/x", "1.0"),
        ("other/app", "1.0"),
        ("team/app", "1.0-dev"),
    ] {
        let holders = regs.iter().filter(|r| complete(r, repo, tag, &app)).count();
        assert_eq!(holders, 1, "{repo}:{tag} only where it was pushed");
    }
}

/// A multi-architecture image (an OCI index of two platform manifests) is replicated whole:
/// the index, both children and every blob of each, in every region. Pushed straight to
/// westus and found by a reconcile, so the index's job alone must bring its children (a push
/// through Berth would also send an event for each child). The rule has a `bandwidth` limit.
#[test]
fn a_multi_arch_index_is_replicated_whole() {
    let rt = runtime();
    let regs = start_registries(&rt, &|_| String::new());
    let dir = tempfile::tempdir().expect("tempdir");
    // Under a bandwidth limit (appended to the demo's last rule): a limited copy completes.
    let limited = "bandwidth = \"4MiB/s\"\n";
    let berth = Berth::start(&config(dir.path(), &regs, &[], limited));
    let proxy_at = proxy(&berth);
    let sk = Skopeo::new();
    let index = descriptor_in(layout(), "multi")["digest"]
        .as_str()
        .expect("digest")
        .to_string();
    let children = [image("app-1.0"), image("tool-1.0")];
    let _ = proxy_at;
    assert_ok(
        &sk.push("multi", &format!("127.0.0.1:{}/team/multi:1", regs[0].port)),
        "push the index straight to westus",
    );
    assert_eq!(post_admin(&berth, "/api/v1/replication/sync"), 202);
    wait_for("the index and both platforms in every region", || {
        regs.iter().all(|r| {
            let tagged = agent()
                .head(format!(
                    "http://127.0.0.1:{}/v2/team/multi/manifests/1",
                    r.port
                ))
                .header("Accept", MANIFEST_TYPES)
                .call()
                .ok()
                .and_then(|resp| {
                    resp.headers()
                        .get("docker-content-digest")
                        .and_then(|v| v.to_str().ok())
                        .map(String::from)
                });
            tagged.as_deref() == Some(index.as_str())
                && children
                    .iter()
                    .all(|c| complete(r, "team/multi", &c.manifest, c))
        })
    });
    for r in &regs {
        let pulled = sk
            .pull(&format!("127.0.0.1:{}/team/multi:1", r.port))
            .expect("pull the index straight from the replica");
        assert_eq!(pulled, index);
    }
}

/// Turn on the access log of replicas not started yet (the harness turns it off), so a test
/// can see which requests reached which replica.
fn with_access_logs(regs: &[Registry]) {
    for r in regs {
        let path = r.dir().join("config.yml");
        let text = std::fs::read_to_string(&path).expect("config.yml");
        std::fs::write(
            &path,
            text.replace(
                "accesslog:\n    disabled: true",
                "accesslog:\n    disabled: false",
            ),
        )
        .expect("config.yml");
    }
}

fn access_log(r: &Registry) -> String {
    std::fs::read_to_string(r.dir().join("registry.log")).unwrap_or_default()
}

/// Replication-aware reads: the client's nearest region is left out of replication, the
/// image is pushed straight to another replica and found by a reconcile; a pull through
/// Berth then goes straight to regions that hold it: the nearest region's own access log
/// shows no request for the repository (without the status table it would get the manifest
/// GET first, answer 404, and the fallback would go on from there).
#[test]
fn a_pull_goes_straight_to_a_region_that_has_the_image() {
    let rt = runtime();
    let mut regs: Vec<Registry> = (0..4).map(|_| Registry::new()).collect();
    with_access_logs(&regs);
    for r in regs.iter_mut() {
        rt.block_on(r.start());
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), &regs, &[], "");
    let berth = Berth::start(&cfg);
    let proxy_at = proxy(&berth);
    let (nearest, n) = nearest(&berth);
    let others: Vec<String> = REGIONS
        .iter()
        .filter(|r| **r != nearest)
        .map(|r| format!("\"{r}\""))
        .collect();
    // Replicate to every region but the nearest: a reload takes the new rule.
    let text = std::fs::read_to_string(&cfg).expect("config");
    let all = "to = [\"westus\", \"eastus\", \"westeurope\", \"southeastasia\"]";
    assert!(text.contains(all));
    std::fs::write(
        &cfg,
        text.replace(all, &format!("to = [{}]", others.join(", "))),
    )
    .expect("config");
    assert_eq!(post_admin(&berth, "/api/v1/reload"), 200);

    let source = (n + 1) % 4;
    let sk = Skopeo::new();
    let app = image("app-1.0");
    let straight = format!("127.0.0.1:{}/team/app:1.0", regs[source].port);
    assert_ok(
        &sk.push("app-1.0", &straight),
        "push straight to a far region",
    );
    assert_eq!(post_admin(&berth, "/api/v1/replication/sync"), 202);
    wait_for("app in every region but the nearest", || {
        (0..4)
            .filter(|&i| i != n)
            .all(|i| complete(&regs[i], "team/app", "1.0", &app))
    });
    assert!(!complete(&regs[n], "team/app", "1.0", &app));
    // From here on, what the replicas log is the pull's.
    let before: Vec<usize> = regs.iter().map(|r| access_log(r).len()).collect();

    let pulled = sk
        .pull(&format!("{proxy_at}/team/app:1.0"))
        .expect("pull through Berth");
    assert_eq!(pulled, app.manifest);
    let log = access_log(&regs[n])[before[n]..].to_string();
    assert!(
        !log.contains("/v2/team/app/"),
        "the nearest region ({nearest}) was asked for the image it lacks:\n{log}"
    );
    let served: usize = (0..4)
        .filter(|&i| i != n)
        .map(|i| {
            access_log(&regs[i])[before[i]..]
                .matches("GET /v2/team/app/manifests/1.0")
                .count()
        })
        .sum();
    assert!(served >= 1, "a holder served the manifest");
}

/// A pull of an image that only a region that is down holds: every region that answers lacks
/// it (replication has not reached them), so Berth answers 503 UNAVAILABLE, which clients may
/// retry, not the last region's 404 MANIFEST_UNKNOWN, which says the image does not exist.
/// The soak met this: a replica killed just after a push through it.
#[test]
fn a_pull_whose_only_holder_is_down_is_unavailable_not_unknown() {
    let Started {
        rt,
        mut regs,
        _dir,
        cfg: _,
        berth,
        proxy_at,
    } = started();
    let port: u16 = proxy_at
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("proxy port");
    let (nearest, n) = nearest(&berth);
    // The push lands in the nearest region; the others are down, so it stays there alone.
    for (i, r) in regs.iter_mut().enumerate() {
        if i != n {
            r.stop();
        }
    }
    let sk = Skopeo::new();
    let app = image("app-1.0");
    assert_ok(
        &sk.push("app-1.0", &format!("{proxy_at}/team/app:1.0")),
        "push through Berth",
    );
    assert!(complete(&regs[n], "team/app", "1.0", &app));
    wait_for("replication to know where it is", || {
        let (_, v) = admin_json(&berth, "/api/v1/replication/team/app?reference=1.0");
        v["regions"][&nearest]["state"] == "present"
    });
    // Its region goes away before replication could copy it; the others come back.
    regs[n].stop();
    for (i, r) in regs.iter_mut().enumerate() {
        if i != n {
            rt.block_on(r.start());
        }
    }
    let manifest = "/v2/team/app/manifests/1.0";
    let mut resp = agent()
        .get(format!("http://{proxy_at}{manifest}"))
        .header("Accept", MANIFEST_TYPES)
        .call()
        .expect("an answer");
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().expect("body");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("UNAVAILABLE") && body.contains(&format!("held by {nearest}")),
        "{body}"
    );
    assert_eq!(head_with(port, manifest, None), 503);
    // What no region is known to hold is still unknown.
    assert_eq!(head_with(port, "/v2/team/app/manifests/2.0", None), 404);

    rt.block_on(regs[n].start());
    wait_for("the pull to work again", || {
        head_with(port, manifest, None) == 200
    });
    let pulled = sk
        .pull(&format!("{proxy_at}/team/app:1.0"))
        .expect("pull through Berth");
    assert_eq!(pulled, app.manifest);
    wait_for("replication to catch up", || {
        regs.iter().all(|r| complete(r, "team/app", "1.0", &app))
    });
}

/// A webhook receiver on loopback: records each request's body; answers 500 to the first
/// request (so the sender must retry) and 204 to the rest.
fn webhook_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let status = if n == 0 {
                "500 Internal Server Error"
            } else {
                "204 No Content"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            if let Ok(v) = serde_json::from_slice(&body) {
                seen.lock().expect("lock").push(v);
            }
        }
    });
    (url, got)
}

/// Registries behind htpasswd basic auth (credentials from the config, read from files) and
/// a regional webhook: the push through Berth arrives in every region, and the webhook gets
/// one event per destination region (the first after a refused delivery was retried).
#[test]
fn basic_auth_registries_and_regional_webhooks() {
    let rt = runtime();
    let pw = Command::new("htpasswd")
        .args(["-Bbn", "testuser", "testpassword"])
        .output()
        .expect("htpasswd (apt-get install apache2-utils)");
    assert!(pw.status.success());
    let yaml = "auth:\n  htpasswd:\n    realm: berth-test\n    path: {dir}/htpasswd\n";
    let mut regs: Vec<Registry> = (0..4).map(|_| Registry::with_yaml(yaml)).collect();
    for r in regs.iter_mut() {
        std::fs::write(r.dir().join("htpasswd"), &pw.stdout).expect("htpasswd file");
        rt.block_on(r.start_expecting(&[200, 401]));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("registry-password"), "testpassword\n").expect("pw");
    let creds: String = REGIONS
        .iter()
        .map(|r| {
            format!(
                "[[replication.credential]]\nregion = \"{r}\"\nusername = \"testuser\"\n\
                 password_file = \"registry-password\"\n"
            )
        })
        .collect();
    let (url, events) = webhook_receiver();
    let hooks = format!("webhooks = [\"{url}\"]");
    let cfg = config(
        dir.path(),
        &regs,
        &[(
            "# webhooks = [\"http://127.0.0.1:9999/hook\"]",
            hooks.as_str(),
        )],
        &creds,
    );
    let berth = Berth::start(&cfg);
    let proxy_at = proxy(&berth);
    let sk = Skopeo::new();
    let app = image("app-1.0");
    let src = format!("oci:{}:app-1.0", layout().display());
    let out = sk.run(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "testuser:testpassword",
        &src,
        &format!("docker://{proxy_at}/team/app:1.0"),
    ]);
    assert_ok(&out, "push with credentials");
    let auth = "Basic dGVzdHVzZXI6dGVzdHBhc3N3b3Jk"; // testuser:testpassword
    wait_for("team/app:1.0 in every region", || {
        regs.iter()
            .all(|r| complete_with(r, "team/app", "1.0", &app, Some(auth)))
    });
    wait_for("a webhook event per destination region", || {
        let got = events.lock().expect("lock");
        let regions: std::collections::BTreeSet<&str> =
            got.iter().filter_map(|e| e["region"].as_str()).collect();
        regions.len() == 3
    });
    let got = events.lock().expect("lock").clone();
    for e in &got {
        assert_eq!(e["action"], "present", "{e}");
        assert_eq!(e["repository"], "team/app", "{e}");
        assert_eq!(e["digest"], app.manifest.as_str(), "{e}");
        assert!(e["lag_seconds"].is_f64(), "{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Replicas served over HTTPS.

/// Four replicas serving TLS with certificates for 127.0.0.1 from a throwaway CA; the CA's
/// PEM is written to `ca`.
fn tls_registries(rt: &tokio::runtime::Runtime, ca: &Path) -> Vec<Registry> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "berth replication test CA");
    let issuer =
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().expect("key"))
            .expect("CA");
    std::fs::write(ca, issuer.pem()).expect("ca");
    (0..4)
        .map(|_| {
            let key = rcgen::KeyPair::generate().expect("key");
            let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
                .expect("params")
                .signed_by(&key, &issuer)
                .expect("cert");
            let mut r = Registry::with_yaml(
                "  tls:\n    certificate: {dir}/server.pem\n    key: {dir}/server.key\n",
            );
            std::fs::write(r.dir().join("server.pem"), cert.pem()).expect("cert");
            std::fs::write(r.dir().join("server.key"), key.serialize_pem()).expect("key");
            // A TLS listener answers the harness's plain-HTTP readiness check with 400.
            rt.block_on(r.start_expecting(&[400]));
            r
        })
        .collect()
}

/// The status of `curl -I https://127.0.0.1:PORT/PATH`, trusting only `ca`.
fn https_head(port: u16, path: &str, ca: &Path) -> u16 {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-I"])
        .arg("--cacert")
        .arg(ca)
        .args(["-H", &format!("Accept: {MANIFEST_TYPES}")])
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl runs (apt-get install curl)");
    text(&out).trim().parse().unwrap_or(0)
}

/// Replicas behind HTTPS (the usual production set-up): Berth copies to them over TLS,
/// trusting the CA it is given (`proxy.upstream_ca_file`, which the regions' probes and
/// the replicator share), and every replica holds the pushed image whole.
#[test]
fn replicas_behind_https_are_copied_to_with_the_configured_ca() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    let regs = tls_registries(&rt, &ca);
    let https: Vec<(String, String)> = regs
        .iter()
        .map(|r| {
            (
                format!("upstream = \"{}\"", r.upstream()),
                format!("upstream = \"https://127.0.0.1:{}\"", r.port),
            )
        })
        .collect();
    let ca_key = format!("[proxy]\nupstream_ca_file = \"{}\"", ca.display());
    let mut replace: Vec<(&str, &str)> = https
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    replace.push(("[proxy]", &ca_key));
    let berth = Berth::start(&config(dir.path(), &regs, &replace, ""));
    let proxy = proxy(&berth);
    let app = image("app-1.0");
    assert_ok(
        &Skopeo::new().push("app-1.0", &format!("{proxy}/team/app:1.0")),
        "push through Berth to an HTTPS replica",
    );
    let manifest = "/v2/team/app/manifests/1.0";
    wait_for("team/app:1.0 in every HTTPS replica", || {
        regs.iter()
            .all(|r| https_head(r.port, manifest, &ca) == 200)
    });
    for r in &regs {
        for b in &app.blobs {
            assert_eq!(
                https_head(r.port, &format!("/v2/team/app/blobs/{b}"), &ca),
                200,
                "replica on port {} lacks blob {b}",
                r.port
            );
        }
    }
    wait_for("the status table to show it present everywhere", || {
        let (status, v) = admin_json(&berth, "/api/v1/replication/team/app?reference=1.0");
        status == 200
            && REGIONS
                .iter()
                .all(|r| v["regions"][*r]["state"] == "present")
    });
}

/// The status of `method` on `url` (0 when it cannot be reached).
fn call(method: &str, url: &str) -> u16 {
    let req = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .header("Accept", MANIFEST_TYPES)
        .body(())
        .expect("request");
    agent().run(req).map_or(0, |r| r.status().as_u16())
}

/// Replicas that allow deletes (docker-registry refuses them unless `storage.delete.enabled`).
fn start_deleting_registries(
    rt: &tokio::runtime::Runtime,
    yaml: &dyn Fn(usize) -> String,
) -> Vec<Registry> {
    let mut regs: Vec<Registry> = (0..4).map(|i| Registry::with_yaml(&yaml(i))).collect();
    for r in regs.iter_mut() {
        let path = r.dir().join("config.yml");
        let text = std::fs::read_to_string(&path).expect("config");
        let text = text.replacen("storage:\n", "storage:\n  delete:\n    enabled: true\n", 1);
        std::fs::write(&path, text).expect("config");
        rt.block_on(r.start());
    }
    regs
}

/// `delete = true` on a rule: a manifest DELETE through Berth (and one made straight to a
/// replica that notifies Berth) is propagated to the rule's regions. `delete = false` (the
/// default, the `keep/**` rule): a delete stays in the region it was made in.
#[test]
fn deletes_propagate_only_where_the_rule_says() {
    let rt = runtime();
    let admin_port = support::free_port();
    let notify = move |i: usize| notifications(i, 1, "eastus", admin_port);
    let regs = start_deleting_registries(&rt, &notify);
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = format!("listen = \"127.0.0.1:{admin_port}\"");
    let keep = format!(
        "[[replication.rule]]\nname = \"keep\"\nrepositories = [\"keep/**\"]\nto = [{}]\n",
        REGIONS.map(|r| format!("\"{r}\"")).join(", ")
    );
    let cfg = config(
        dir.path(),
        &regs,
        &[
            ("listen = \"127.0.0.1:9180\"", listen.as_str()),
            (
                "repositories = [\"**\"]",
                "repositories = [\"team/**\"]\ndelete = true",
            ),
        ],
        &keep,
    );
    let berth = Berth::start(&cfg);
    let proxy_at = proxy(&berth);
    let sk = Skopeo::new();
    let app = image("app-1.0");
    let tool = image("tool-1.0");
    for dest in ["team/app:1.0", "keep/app:1.0", "team/tool:1.0"] {
        assert_ok(&sk.push("app-1.0", &format!("{proxy_at}/{dest}")), dest);
    }
    for repo in ["team/app", "keep/app", "team/tool"] {
        wait_for(&format!("{repo}:1.0 in every region"), || {
            regs.iter().all(|r| complete(r, repo, "1.0", &app))
        });
    }
    let manifest = |r: &Registry, repo: &str| {
        call(
            "HEAD",
            &format!(
                "http://127.0.0.1:{}/v2/{repo}/manifests/{}",
                r.port, app.manifest
            ),
        )
    };

    // Through Berth, delete = true: gone from every region.
    let url = format!("http://{proxy_at}/v2/team/app/manifests/{}", app.manifest);
    assert_eq!(call("DELETE", &url), 202, "DELETE through Berth");
    wait_for("team/app deleted in every region", || {
        regs.iter().all(|r| manifest(r, "team/app") == 404)
    });

    // Straight to eastus, which notifies Berth: gone from every region too.
    let url = format!(
        "http://127.0.0.1:{}/v2/team/tool/manifests/{}",
        regs[1].port, app.manifest
    );
    assert_eq!(call("DELETE", &url), 202, "DELETE straight to eastus");
    wait_for("team/tool deleted in every region, by notification", || {
        regs.iter().all(|r| manifest(r, "team/tool") == 404)
    });

    // The write of the next delete panics, once the ones before it are on disk: the loop's
    // supervisor restarts it, and the restarted loop must still write that delete (the
    // restart below checks it was).
    let deletes_file = || {
        std::fs::read_dir(dir.path())
            .expect("read the state dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.to_string_lossy().ends_with(".deletes.json"))
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    };
    wait_for("team/tool's delete written", || {
        deletes_file().contains("team/tool")
    });
    replication(&berth).inject_deletes_panic();

    // Through Berth, delete = false: gone only where it was made. Events are taken in
    // order, so once a later push is everywhere and the queue is empty, the delete was
    // decided (and any job it made has run).
    let url = format!("http://{proxy_at}/v2/keep/app/manifests/{}", app.manifest);
    assert_eq!(call("DELETE", &url), 202, "DELETE through Berth");
    wait_for("the deletes write to panic", || {
        metrics_text(&berth).contains("berth_worker_panics_total{worker=\"replication\"} 1\n")
    });
    assert_ok(
        &sk.push("tool-1.0", &format!("{proxy_at}/team/after:1.0")),
        "push after",
    );
    wait_for("team/after in every region", || {
        regs.iter().all(|r| complete(r, "team/after", "1.0", &tool))
    });
    wait_for("the queue to drain", || {
        admin_json(&berth, "/api/v1/replication").1["queued_jobs"] == 0
    });
    let keep_app_holders = || {
        regs.iter()
            .filter(|r| manifest(r, "keep/app") == 200)
            .count()
    };
    assert_eq!(
        keep_app_holders(),
        3,
        "keep/app deleted only in the region that took the DELETE"
    );

    // The delete outlives a restart: the next reconcile sees keep/app missing from one
    // region and must not copy it back there. The witness, pushed straight to westus (which
    // does not notify), reaches every region only through that reconcile.
    let mut berth = berth;
    berth.stop();
    drop(berth);
    let berth = Berth::start(&cfg);
    let straight = format!("127.0.0.1:{}/keep/witness:1.0", regs[0].port);
    assert_ok(&sk.push("tool-1.0", &straight), "push straight to westus");
    assert_eq!(post_admin(&berth, "/api/v1/replication/sync"), 202);
    wait_for("keep/witness in every region, by reconcile", || {
        regs.iter()
            .all(|r| complete(r, "keep/witness", "1.0", &tool))
    });
    wait_for("the queue to drain", || {
        admin_json(&berth, "/api/v1/replication").1["queued_jobs"] == 0
    });
    assert_eq!(
        keep_app_holders(),
        3,
        "a reconcile after a restart copied the deleted keep/app back"
    );
}
