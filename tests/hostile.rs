//! Hostile peers and inputs at the HTTP edges, with real components: replicas that hang
//! (raw TCP servers that accept and never answer, or answer only `GET /v2/`), a real
//! `docker-registry` to fail over to, `curl` as the client, raw sockets trickling request
//! heads, and forged or encoded paths and tokens.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

mod support;
use support::{demo_config, Berth, Registry};

const SECRET: &str = "hostile-test-secret-0123456789abcdef";
const ADMIN_TOKEN: &str = "test-token-0123456789";
const DEADLINE: Duration = Duration::from_secs(30);
const UUID: &str = "4e0b3f7a-1d52-4b8e-9a8e-2f3c6a1b9d10";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Wait until `check` holds, polling; panics with `what` after the deadline.
fn wait_for(what: &str, check: impl FnMut() -> bool) {
    support::wait_until(what, DEADLINE, check);
}

/// A replica that hangs: accepts every connection and never answers, or with `v2_ok` answers
/// `GET /v2/` (so its probe passes) and hangs on everything else. `open` counts the
/// connections the proxy holds to it right now.
struct Hanging {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    /// Connections accepted so far (the proxy's and the probes').
    accepted: Arc<AtomicUsize>,
}

fn hanging(rt: &tokio::runtime::Runtime, v2_ok: bool) -> Hanging {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let open = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = open.clone();
    let total = accepted.clone();
    rt.spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            total.fetch_add(1, Ordering::SeqCst);
            let count = count.clone();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                let mut hung = false;
                // Read (and answer `GET /v2/` heads) until the peer closes.
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if !v2_ok || hung {
                        continue;
                    }
                    head.extend_from_slice(&buf[..n]);
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        if head.starts_with(b"GET /v2/ ") {
                            let body = "{}";
                            let resp = format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                                 Docker-Distribution-Api-Version: registry/2.0\r\n\
                                 Content-Length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if conn.write_all(resp.as_bytes()).await.is_err() {
                                break;
                            }
                            head.drain(..end + 4);
                        } else {
                            hung = true;
                            break;
                        }
                    }
                }
                count.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Hanging {
        addr,
        open,
        accepted,
    }
}

/// The demo config: westus's upstream at `westus` (probed by TCP connect, once an hour, so
/// only the proxy's own requests can see it hang), eastus at `eastus`, the routed name over
/// those two, `proxy` lines added to `[proxy]` and `admin` lines to `[admin]`.
fn config(dir: &Path, westus: &str, eastus: &str, proxy: &str, admin: &str) -> PathBuf {
    std::fs::write(dir.join("secret"), SECRET).expect("secret");
    std::fs::write(dir.join("token"), ADMIN_TOKEN).expect("token");
    let westus = format!(
        "upstream = \"{westus}\"\nprobe = {{ kind = \"tcp\", interval = \"1h\", timeout = \"1s\" }}"
    );
    let eastus = format!("upstream = \"{eastus}\"");
    let proxy = format!("secret_file = \"secret\"\nthreads = 2\nshutdown_grace = \"1s\"\n{proxy}");
    let admin = format!("token_file = \"token\"\n{admin}");
    demo_config(
        dir,
        &[
            ("upstream = \"http://127.0.0.1:5001\"", &westus),
            ("upstream = \"http://127.0.0.1:5002\"", &eastus),
            (
                "regions = [\"westus\", \"eastus\", \"westeurope\", \"southeastasia\"]",
                "regions = [\"westus\", \"eastus\"]",
            ),
            ("secret_env = \"BERTH_PROXY_SECRET\"", &proxy),
            ("token_env = \"BERTH_ADMIN_TOKEN\"", &admin),
        ],
        "",
    )
}

/// What curl got: status (0: no answer at all) and body.
struct Answer {
    status: u16,
    body: String,
    headers: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    fn code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// `curl` with `args` and a generous `--max-time`: a hang shows as status 0, never as a hung
/// test.
fn curl(args: &[&str]) -> Answer {
    let dir = tempfile::tempdir().expect("tempdir");
    let headers = dir.path().join("headers");
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20", "-o", "-", "-D"])
        .arg(&headers)
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    Answer {
        status: status.trim().parse().unwrap_or(0),
        body: body.to_string(),
        headers: std::fs::read_to_string(&headers).unwrap_or_default(),
    }
}

fn region_json(b: &Berth, name: &str) -> Value {
    let a = curl(&[&format!("{}/api/v1/regions/{name}", b.admin())]);
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()
}

/// The value of a metric line without labels.
fn metric(b: &Berth, name: &str) -> u64 {
    let text = b.running().live.render_metrics();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
        .trim()
        .parse()
        .expect("a number")
}

fn proxy(b: &Berth) -> SocketAddr {
    b.running().proxy_addr.expect("proxy listener")
}

// ---------------------------------------------------------------------------------------------
// Defect 4: timeouts towards a replica.

/// A replica that accepts and never answers: a request that cannot be repeated gets a 504
/// OCI error as soon as the (short, configured) read timeout fires, never a hang; no
/// connection to it is left open; two in a row mark the region down (passive health), after
/// which requests go to the next region. Its probes fail too, but too few to reach their own
/// threshold: they do not lift the passive verdict.
#[test]
fn a_replica_that_never_answers_gets_a_timely_oci_error_and_is_marked_down() {
    let rt = runtime();
    let mut reg = Registry::new();
    rt.block_on(reg.start());
    let hang = hanging(&rt, false);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config(
        dir.path(),
        &format!("http://{}", hang.addr),
        &reg.upstream(),
        "upstream_read_timeout = \"500ms\"\npassive_fall = 2",
        "",
    );
    let text = std::fs::read_to_string(&path).expect("config");
    let text = text.replace(
        "probe = { kind = \"tcp\", interval = \"1h\", timeout = \"1s\" }",
        "probe = { interval = \"100ms\", timeout = \"50ms\", fall = 1000000 }",
    );
    std::fs::write(&path, text).expect("config");
    let berth = Berth::start(&path);
    let p = proxy(&berth);

    // An upload chunk: not safe to send twice, so it is answered, not failed over.
    let patch = format!("http://{p}/v2/team/app/blobs/uploads/{UUID}");
    for round in 1..=2 {
        let a = curl(&["-X", "PATCH", "--data-binary", "layer bytes", &patch]);
        assert_eq!(a.status, 504, "round {round}: {} {}", a.headers, a.body);
        assert_eq!(a.code(), "UNAVAILABLE", "{}", a.body);
        let detail = a.json()["errors"][0]["detail"].to_string();
        assert!(
            detail.contains("westus") && detail.contains("upstream_read_timeout"),
            "{detail}"
        );
    }
    assert_eq!(metric(&berth, "berth_proxy_upstream_timeouts_total"), 2);
    assert_eq!(metric(&berth, "berth_proxy_passive_downs_total"), 1);
    let westus = region_json(&berth, "westus");
    assert_eq!(westus["health"], "down", "{westus}");
    assert!(
        westus["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("passive health: 2 proxied requests in a row failed")),
        "{westus}"
    );
    wait_for(
        "the proxy to close its connections to the hung replica",
        || hang.open.load(Ordering::SeqCst) == 0,
    );
    // Failing probes go on (each one a connection; 25 of them span at least two of the 1 s
    // rounds that apply probe reports); the region stays down.
    let seen = hang.accepted.load(Ordering::SeqCst);
    wait_for("25 more probes", || {
        hang.accepted.load(Ordering::SeqCst) >= seen + 25
    });
    let westus = region_json(&berth, "westus");
    assert_eq!(westus["health"], "down", "{westus}");

    // Down: the next request goes to eastus (the real registry) at once.
    let a = curl(&[&format!("http://{p}/v2/")]);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(region_json(&berth, "eastus")["proxy"]["requests"]["GET"], 1);
    assert_eq!(metric(&berth, "berth_proxy_upstream_timeouts_total"), 2);
}

/// A manifest PUT (buffered for the safety net, sent by Berth's own client) to a replica that
/// never answers: a clear OCI error after the read timeout, not a hang.
#[test]
fn a_manifest_put_to_a_hung_replica_is_answered() {
    let rt = runtime();
    let mut reg = Registry::new();
    rt.block_on(reg.start());
    let hang = hanging(&rt, false);
    let dir = tempfile::tempdir().expect("tempdir");
    let berth = Berth::start(&config(
        dir.path(),
        &format!("http://{}", hang.addr),
        &reg.upstream(),
        "upstream_read_timeout = \"500ms\"\npassive_fall = 0",
        "",
    ));
    let p = proxy(&berth);
    let blob = sha256(b"not stored anywhere");
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{blob}","size":19}},"layers":[]}}"#
    );
    let a = curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/vnd.oci.image.manifest.v1+json",
        "--data-binary",
        &manifest,
        &format!("http://{p}/v2/team/app/manifests/1.0"),
    ]);
    assert_eq!(a.status, 400, "{} {}", a.headers, a.body);
    assert_eq!(a.code(), "MANIFEST_BLOB_UNKNOWN", "{}", a.body);
    let detail = a.json()["errors"][0]["detail"].to_string();
    assert!(
        detail.contains("westus, which cannot be reached") && detail.contains("ReadTimedout"),
        "{detail}"
    );
    assert!(metric(&berth, "berth_proxy_upstream_timeouts_total") >= 1);
}

/// A replica that answers its probe (`GET /v2/`) but hangs on everything else: reads that are
/// safe to repeat fail over to the next region after the read timeout; the run of timeouts
/// marks the region down although its probe passes.
#[test]
fn a_replica_that_hangs_after_its_probe_fails_over_and_is_marked_down() {
    let rt = runtime();
    let mut reg = Registry::new();
    rt.block_on(reg.start());
    let hang = hanging(&rt, true);
    let dir = tempfile::tempdir().expect("tempdir");
    let berth = Berth::start(&config(
        dir.path(),
        &format!("http://{}", hang.addr),
        &reg.upstream(),
        "upstream_read_timeout = \"500ms\"\npassive_fall = 2",
        "",
    ));
    let p = proxy(&berth);
    wait_for("westus's first probe", || {
        region_json(&berth, "westus")["health"] == "up"
    });
    let a = curl(&[&format!("http://{p}/v2/")]);
    assert_eq!(a.status, 200, "the hung replica answers /v2/: {}", a.body);

    // A read: westus times out, eastus (the real registry) answers that it has no such repo.
    let a = curl(&[&format!("http://{p}/v2/team/app/tags/list")]);
    assert_eq!(a.status, 404, "{}", a.body);
    assert_eq!(a.code(), "NAME_UNKNOWN", "{}", a.body);
    // Starting an upload is safe to repeat too: it lands in eastus, whose token it carries.
    // (Another repository: team/app's affinity moved to eastus with its failover.)
    let a = curl(&[
        "-X",
        "POST",
        &format!("http://{p}/v2/team/other/blobs/uploads/"),
    ]);
    assert_eq!(a.status, 202, "{} {}", a.headers, a.body);
    assert!(a.headers.contains("_berth=eastus."), "{}", a.headers);

    assert_eq!(metric(&berth, "berth_proxy_upstream_timeouts_total"), 2);
    assert_eq!(metric(&berth, "berth_proxy_passive_downs_total"), 1);
    let westus = region_json(&berth, "westus");
    assert_eq!(westus["health"], "down", "{westus}");
    assert!(westus["proxy"]["failovers"].as_u64() >= Some(1), "{westus}");
}

// ---------------------------------------------------------------------------------------------
// Defect 7: encoded repository paths and upload-token expiry.

fn location(a: &Answer) -> String {
    a.headers
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("location")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no Location in {}", a.headers))
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(data);
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// The registry decodes `team%2fapp` to `team/app` and serves it; so does the proxy before it
/// classifies the path. An upload started on the encoded path gets a token and completes; a
/// forged token on an encoded session path is refused, as is an expired token (its expiry is
/// signed, so it cannot be pushed back).
#[test]
fn encoded_repository_paths_and_expired_tokens_are_checked() {
    let rt = runtime();
    let mut reg = Registry::new();
    rt.block_on(reg.start());
    let dir = tempfile::tempdir().expect("tempdir");
    let berth = Berth::start(&config(
        dir.path(),
        &reg.upstream(),
        &reg.upstream(),
        "",
        "",
    ));
    let p = proxy(&berth);
    wait_for("the proxy to answer", || {
        curl(&[&format!("http://{p}/v2/")]).status == 200
    });

    // A whole upload (start, then PUT with the digest) on the encoded path.
    let a = curl(&[
        "-X",
        "POST",
        &format!("http://{p}/v2/team%2fapp/blobs/uploads/"),
    ]);
    assert_eq!(a.status, 202, "{} {}", a.headers, a.body);
    let loc = location(&a);
    assert!(
        loc.contains("/v2/team/app/blobs/uploads/") && loc.contains("_berth=westus."),
        "classified as an upload start, so the session got a token: {loc}"
    );
    let data = b"a layer pushed through an encoded path";
    let digest = sha256(data);
    let a = curl(&[
        "-X",
        "PUT",
        "--data-binary",
        std::str::from_utf8(data).expect("ascii"),
        "-H",
        "Content-Type: application/octet-stream",
        &format!("{loc}&digest={digest}"),
    ]);
    assert_eq!(a.status, 201, "{} {}", a.headers, a.body);
    let a = curl(&[&format!("http://{p}/v2/team%2Fapp/blobs/{digest}")]);
    assert_eq!((a.status, a.body.as_bytes()), (200, &data[..]));

    // A forged token on an encoded session path: refused by Berth, not forwarded.
    let uuid = loc
        .split("/uploads/")
        .nth(1)
        .and_then(|r| r.split('?').next())
        .expect("uuid");
    let forged = format!("westus.4102444800.{}", "0".repeat(64));
    let a = curl(&[
        "-X",
        "PATCH",
        "--data-binary",
        "x",
        &format!("http://{p}/v2/team%2fapp/blobs/uploads/{uuid}?_berth={forged}"),
    ]);
    assert_eq!(a.status, 404, "{}", a.body);
    assert_eq!(a.code(), "BLOB_UPLOAD_INVALID", "{}", a.body);
    let detail = a.json()["errors"][0]["detail"].to_string();
    assert!(detail.contains("signature does not match"), "{detail}");

    // A token with the right signature whose expiry has passed.
    let signer = berth::proxy::token::Signer::new(SECRET.as_bytes());
    let expired = signer.sign("westus", "team/app", uuid, 1_000_000_000);
    let a = curl(&[
        "-X",
        "PATCH",
        "--data-binary",
        "x",
        &format!("http://{p}/v2/team/app/blobs/uploads/{uuid}?_berth={expired}"),
    ]);
    assert_eq!(a.status, 404, "{}", a.body);
    assert_eq!(a.code(), "BLOB_UPLOAD_INVALID", "{}", a.body);
    let detail = a.json()["errors"][0]["detail"].to_string();
    assert!(detail.contains("the upload token expired"), "{detail}");
    // Malformed escapes are the registry's 400 too, answered by Berth.
    let a = curl(&[&format!("http://{p}/v2/team%zzapp/tags/list")]);
    assert_eq!(
        (a.status, a.code()),
        (400, "NAME_INVALID".to_string()),
        "{}",
        a.body
    );
}

// ---------------------------------------------------------------------------------------------
// The admin listener: DNS rebinding, head deadline, connection cap.

/// A Berth whose admin listener has these extra `[admin]` lines (a replica is not needed:
/// the upstreams are never contacted).
fn admin_berth(dir: &Path, admin: &str) -> Berth {
    Berth::start(&config(
        dir,
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
        "",
        admin,
    ))
}

fn admin_addr(b: &Berth) -> SocketAddr {
    b.running().admin_addr.expect("admin listener")
}

/// Has the server closed `s`? Reads with a short timeout: Some(true) closed, Some(false)
/// bytes arrived, None nothing yet.
fn closed(s: &mut TcpStream) -> Option<bool> {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let mut buf = [0u8; 1024];
    match s.read(&mut buf) {
        Ok(0) => Some(true),
        Ok(_) => Some(false),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        Err(_) => Some(true),
    }
}

/// A browser on a page whose name was re-pointed at 127.0.0.1 sends that name as `Host`:
/// refused with 421. The listener's own address, `localhost` and configured names pass.
#[test]
fn admin_answers_only_the_hosts_it_is_reached_by() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = admin_berth(
        dir.path(),
        "allowed_hosts = [\"berth.example.net\", \"ops.example.net:8443\"]",
    );
    let a = admin_addr(&b);
    let url = format!("http://{a}/api/v1/regions");
    let port = a.port();
    for (host, status) in [
        (None, 200),
        (Some(format!("localhost:{port}")), 200),
        (Some("LOCALHOST".to_string()), 200),
        (Some(format!("[::1]:{port}")), 200),
        (Some("berth.example.net".to_string()), 200),
        (Some("berth.example.net.:9180".to_string()), 200),
        (Some("ops.example.net:8443".to_string()), 200),
        (Some("ops.example.net".to_string()), 421),
        (Some("evil.example".to_string()), 421),
        (Some(format!("evil.example:{port}")), 421),
        (Some("berth.example.net.evil.example".to_string()), 421),
    ] {
        let mut args = vec![url.clone()];
        if let Some(h) = &host {
            args.extend(["-H".to_string(), format!("Host: {h}")]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = curl(&args);
        assert_eq!(r.status, status, "Host {host:?}: {}", r.body);
        if status == 421 {
            let msg = r.json()["error"].as_str().unwrap_or_default().to_string();
            assert!(msg.contains("[admin] allowed_hosts"), "{msg}");
        }
    }
    // The dashboard's page too (it is what a rebinding page would read).
    let r = curl(&["-H", "Host: evil.example", &format!("http://{a}/")]);
    assert_eq!(r.status, 421);
}

/// A request head trickled a line at a time, and a connection that sends nothing, are both
/// closed once the head deadline passes, however often bytes arrive.
#[test]
fn admin_closes_trickled_and_idle_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = admin_berth(dir.path(), "header_timeout = \"1s\"");
    let a = admin_addr(&b);

    let mut idle = TcpStream::connect(a).expect("connect");
    let mut trickle = TcpStream::connect(a).expect("connect");
    trickled_and_idle_are_closed(
        &mut trickle,
        &mut idle,
        b"GET /api/v1/regions HTTP/1.1\r\nHost: 127.0.0.1\r\n",
    );
    // The listener still serves.
    assert_eq!(curl(&[&format!("http://{a}/api/v1/regions")]).status, 200);
}

/// Past `max_connections` a new connection waits (in the accept queue) until one closes.
#[test]
fn admin_serves_at_most_max_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = admin_berth(dir.path(), "header_timeout = \"1h\"\nmax_connections = 2");
    let a = admin_addr(&b);
    let held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(a).expect("connect"))
        .collect();
    let mut third = TcpStream::connect(a).expect("the kernel queues it");
    third
        .write_all(b"GET /api/v1/regions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("request");
    // Nothing while both slots are held (a slow machine can only make this pass wrongly).
    for _ in 0..3 {
        assert_eq!(closed(&mut third), None, "answered beyond the cap");
    }
    drop(held);
    third.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut answer = String::new();
    third.read_to_string(&mut answer).expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

// ---------------------------------------------------------------------------------------------
// Defect 5: a total deadline for the proxy's request heads.

/// Read from `s` until `done` holds for what arrived (or the deadline passes).
/// Send `head` on `trickle` and then a header line at a time until the server closes it (it
/// must not answer a head that never ended); `idle`, which sent nothing, must be closed too.
fn trickled_and_idle_are_closed(trickle: &mut TcpStream, idle: &mut TcpStream, head: &[u8]) {
    trickle.write_all(head).expect("request line");
    let end = std::time::Instant::now() + DEADLINE;
    let mut lines = 0;
    loop {
        assert!(
            std::time::Instant::now() < end,
            "a head trickled for {lines} lines is still open"
        );
        // A header line every 100 ms or so (the read waits that long).
        if trickle.write_all(b"X-Trickle: 1\r\n").is_err() {
            break;
        }
        lines += 1;
        match closed(trickle) {
            Some(true) => break,
            Some(false) => panic!("an answer to a head that never ended"),
            None => {}
        }
    }
    let end = std::time::Instant::now() + DEADLINE;
    while closed(idle).is_none() {
        assert!(
            std::time::Instant::now() < end,
            "an idle connection is still open"
        );
    }
}

fn read_until(s: &mut TcpStream, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !done(&got) {
        let n = s.read(&mut buf).expect("an answer");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// A head trickled a line at a time, and a connection that sends nothing, are closed once
/// `request_head_timeout` passes (pingora alone bounds each read, not the head). Keep-alive
/// requests, and a body that takes longer than the deadline, are not cut.
#[test]
fn the_proxy_closes_trickled_heads_but_not_slow_bodies() {
    let rt = runtime();
    let mut reg = Registry::new();
    rt.block_on(reg.start());
    let dir = tempfile::tempdir().expect("tempdir");
    let berth = Berth::start(&config(
        dir.path(),
        &reg.upstream(),
        &reg.upstream(),
        "request_head_timeout = \"1s\"",
        "",
    ));
    let p = proxy(&berth);
    wait_for("the proxy to answer", || {
        curl(&[&format!("http://{p}/v2/")]).status == 200
    });

    // Two requests on one connection: the deadline starts again for the second head.
    let mut ka = TcpStream::connect(p).expect("connect");
    for _ in 0..2 {
        ka.write_all(b"GET /v2/ HTTP/1.1\r\nHost: registry.example.test\r\n\r\n")
            .expect("request");
        let got = read_until(&mut ka, |g| g.ends_with(b"{}"));
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }

    let mut idle = TcpStream::connect(p).expect("connect");
    let mut trickle = TcpStream::connect(p).expect("connect");
    trickled_and_idle_are_closed(
        &mut trickle,
        &mut idle,
        b"GET /v2/ HTTP/1.1\r\nHost: registry.example.test\r\n",
    );

    // A blob body sent slowly (48 KB at 16 KB/s, about 3 s): only heads have a deadline.
    let a = curl(&[
        "-X",
        "POST",
        &format!("http://{p}/v2/team/app/blobs/uploads/"),
    ]);
    assert_eq!(a.status, 202, "{}", a.body);
    let data: Vec<u8> = (0..48 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let file = dir.path().join("blob");
    std::fs::write(&file, &data).expect("blob");
    let a = curl(&[
        "-X",
        "PUT",
        "--limit-rate",
        "16k",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("{}&digest={}", location(&a), sha256(&data)),
    ]);
    assert_eq!(a.status, 201, "{} {}", a.headers, a.body);
}

/// The limits' defaults, and errors that name the key.
#[test]
fn limit_settings_defaults_and_errors() {
    use berth::config::Config;
    let base =
        std::fs::read_to_string(support::repo().join("config/demo.toml")).expect("demo config");
    let parse = |text: &str| Config::parse(text, Path::new("/etc/berth/berth.toml"));
    let c = parse(&base).expect("the demo config");
    let s = Duration::from_secs;
    assert_eq!(
        (
            c.proxy.connect_timeout,
            c.proxy.upstream_read_timeout,
            c.proxy.upstream_write_timeout,
            c.proxy.upstream_idle_timeout,
            c.proxy.passive_fall,
            c.proxy.request_head_timeout,
            c.proxy.upload_token_lifetime,
        ),
        (s(3), s(120), s(60), s(60), 3, s(30), s(86_400))
    );
    assert_eq!(
        (
            c.admin.header_timeout,
            c.admin.max_connections,
            c.admin.allowed_hosts.len()
        ),
        (s(10), 64, 0)
    );
    let c = parse(&base.replace(
        "[admin]\n",
        "[admin]\nallowed_hosts = [\"Berth.Example.NET.\", \"[::1]:9180\"]\n",
    ))
    .expect("valid");
    assert_eq!(c.admin.allowed_hosts, ["berth.example.net", "[::1]:9180"]);
    for (section, extra, expect) in [
        (
            "[proxy]",
            "upstream_read_timeout = \"0s\"",
            "proxy.upstream_read_timeout: \"0s\" must be longer than zero",
        ),
        (
            "[proxy]",
            "request_head_timeout = \"30\"",
            "proxy.request_head_timeout: \"30\" has no unit",
        ),
        (
            "[proxy]",
            "upload_token_lifetime = \"10s\"",
            "proxy.upload_token_lifetime: must be at least 1m",
        ),
        ("[proxy]", "passive_fall = -1", "passive_fall"),
        (
            "[admin]",
            "max_connections = 0",
            "admin.max_connections: must be at least 1",
        ),
        (
            "[admin]",
            "allowed_hosts = [\"evil example\"]",
            "admin.allowed_hosts[0]: \"evil example\" is not a host name",
        ),
        (
            "[admin]",
            "header_timeout = \"1y\"",
            "admin.header_timeout: \"1y\" has an unknown unit",
        ),
    ] {
        let text = base.replace(&format!("{section}\n"), &format!("{section}\n{extra}\n"));
        let e = parse(&text).expect_err(extra).to_string();
        assert!(e.contains(expect), "{extra}: {e}");
    }
}
