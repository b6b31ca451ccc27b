//! Health probes and the monitor against a real registry: Debian's `docker-registry`
//! (distribution 2.8), started by the test on a free loopback port and killed on drop.
//!
//! Needs the `docker-registry` package (`apt-get install -y docker-registry`); set
//! `REGISTRY_BIN` to use another binary.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth::config::{ProbeConfig, ProbeKind};
use berth::health::{probe, Health, Monitor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

mod support;
use support::{eventually, region, Registry};

/// The harness itself: a port another process took before the registry's first start moves
/// the registry to another port; on a restart the port is the registry's address, so a taken
/// one fails the test instead of letting a stranger answer in its place.
#[tokio::test]
async fn a_registry_whose_port_was_taken_moves_only_before_its_first_start() {
    let mut registry = Registry::new();
    let chosen = registry.port;
    let squatter = std::net::TcpListener::bind(("127.0.0.1", chosen)).expect("take the port");
    registry.start().await;
    assert_ne!(registry.port, chosen);
    let out = probe(&region("westus", &registry.upstream(), ProbeKind::Http)).await;
    assert_eq!(out.status, Some(200), "{:?}", out.error);
    drop(squatter);

    registry.stop();
    let _squatter =
        std::net::TcpListener::bind(("127.0.0.1", registry.port)).expect("take the new port");
    let restart = tokio::spawn(async move { registry.start().await }).await;
    let panic = restart.expect_err("a restart on a taken port must fail");
    let msg = panic.into_panic();
    let msg = msg
        .downcast_ref::<String>()
        .map(String::as_str)
        .unwrap_or_default();
    assert!(
        msg.contains("was taken after free_port() chose it"),
        "{msg}"
    );
}

#[tokio::test]
async fn probes_of_a_live_then_a_stopped_registry() {
    let mut registry = Registry::new();
    registry.start().await;
    let upstream = registry.upstream();

    let out = probe(&region("westus", &upstream, ProbeKind::Http)).await;
    assert_eq!((out.ok, out.status, &out.error), (true, Some(200), &None));
    let out = probe(&region("westus", &upstream, ProbeKind::Tcp)).await;
    assert_eq!((out.ok, out.status, &out.error), (true, None, &None));

    registry.stop();
    for kind in [ProbeKind::Http, ProbeKind::Tcp] {
        let out = probe(&region("westus", &upstream, kind.clone())).await;
        assert!(!out.ok, "{kind:?} probe of a stopped registry");
        let e = out.error.unwrap();
        assert!(
            e.starts_with(&format!("connect to 127.0.0.1:{}: ", registry.port))
                && e.to_lowercase().contains("connection refused"),
            "{kind:?}: {e}"
        );
    }
}

#[tokio::test]
async fn an_http_503_is_unhealthy() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    let out = probe(&region(
        "westus",
        &format!("http://{addr}"),
        ProbeKind::Http,
    ))
    .await;
    assert_eq!((out.ok, out.status), (false, Some(503)));
    assert_eq!(
        out.error.as_deref(),
        Some(format!("GET http://{addr}/v2/ returned 503").as_str())
    );
    // The port is open, so a TCP probe of the same server is fine.
    assert!(
        probe(&region("westus", &format!("http://{addr}"), ProbeKind::Tcp))
            .await
            .ok
    );
}

#[tokio::test]
async fn monitor_follows_a_registry_down_and_up() {
    let mut registry = Registry::new();
    registry.start().await;
    let mut r = region("westus", &registry.upstream(), ProbeKind::Http);
    r.probe = ProbeConfig {
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(100),
        fall: 2,
        rise: 2,
        ..ProbeConfig::default()
    };
    let published = Arc::new(Mutex::new(Vec::new()));
    let sink = published.clone();
    let monitor = Monitor::start(vec![r], move |report| {
        sink.lock().unwrap().push(report.regions[0].health);
    });
    let health = || monitor.report().regions[0].health;
    // Generous deadlines: the machine may be busy; the thresholds need 2 x 200 ms.
    let deadline = Duration::from_secs(10);

    eventually("westus up", deadline, || health() == Health::Up).await;
    let up = monitor.report();
    assert_eq!(up.regions[0].last_error, None);
    assert!(up.regions[0].latency_ms.is_some());

    registry.stop();
    eventually("westus down", deadline, || health() == Health::Down).await;
    let down = monitor.report();
    assert!(!down.is_healthy("westus"));
    let e = down.regions[0].last_error.clone().unwrap();
    assert!(e.to_lowercase().contains("connection refused"), "{e}");

    registry.start().await;
    eventually("westus up again", deadline, || health() == Health::Up).await;
    assert_eq!(monitor.report().regions[0].last_error, None);

    // Every change was published, the last one being "up". (Not asserted as exactly
    // [Up, Down, Up]: a probe on a loaded machine may miss its 100 ms timeout.)
    let seen = published.lock().unwrap().clone();
    assert_eq!(seen.first(), Some(&Health::Up), "{seen:?}");
    assert!(seen.contains(&Health::Down), "{seen:?}");
    assert_eq!(seen.last(), Some(&Health::Up), "{seen:?}");
    monitor.stop();
}

/// A throwaway CA (PEM) and its issuer, for the TLS registries below.
fn test_ca() -> (String, rcgen::CertifiedIssuer<'static, rcgen::KeyPair>) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "berth probe test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().expect("key"))
        .expect("CA");
    (ca.pem(), ca)
}

/// A docker-registry serving TLS with a certificate for `names` signed by `ca`; `expired`
/// makes the certificate's validity end in 2020. Started (a TLS listener answers plain
/// HTTP with 400).
async fn tls_registry(
    ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    names: &[&str],
    expired: bool,
    extra: &str,
) -> Registry {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
    if expired {
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    }
    let cert = params.signed_by(&key, ca).expect("server cert");
    let yaml = format!(
        "  tls:\n    certificate: {{dir}}/server.pem\n    key: {{dir}}/server.key\n{extra}"
    );
    let mut registry = Registry::with_yaml(&yaml);
    std::fs::write(registry.dir().join("server.pem"), cert.pem()).expect("cert");
    std::fs::write(registry.dir().join("server.key"), key.serialize_pem()).expect("key");
    registry.start_expecting(&[400]).await;
    registry
}

fn https_region(registry: &Registry, ca_file: Option<&std::path::Path>) -> berth::config::Region {
    let mut r = region(
        "westus",
        &format!("https://127.0.0.1:{}", registry.port),
        ProbeKind::Http,
    );
    r.probe.ca_file = ca_file.map(|p| p.to_path_buf());
    r
}

/// HTTPS probes verify the registry's certificate: against the region's CA file it is up
/// (by address, and by name through `probe.host`); against the system roots, expired, or
/// for another name it is down, and the error says why.
#[tokio::test]
async fn https_probes_of_a_tls_registry() {
    let (ca_pem, ca) = test_ca();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).expect("ca");

    let good = tls_registry(&ca, &["localhost", "127.0.0.1"], false, "").await;
    let out = probe(&https_region(&good, Some(&ca_file))).await;
    assert_eq!((out.ok, out.status, &out.error), (true, Some(200), &None));
    let mut by_name = https_region(&good, Some(&ca_file));
    by_name.probe.host = Some(format!("localhost:{}", good.port));
    assert!(probe(&by_name).await.ok);
    // The system roots do not know the test CA.
    let out = probe(&https_region(&good, None)).await;
    assert!(!out.ok);
    let e = out.error.unwrap();
    assert!(
        e.starts_with(&format!(
            "TLS handshake with 127.0.0.1:{} for server name 127.0.0.1: invalid peer certificate: ",
            good.port
        )) && e.contains("UnknownIssuer"),
        "{e}"
    );

    let expired = tls_registry(&ca, &["localhost", "127.0.0.1"], true, "").await;
    let out = probe(&https_region(&expired, Some(&ca_file))).await;
    assert_eq!((out.ok, out.status), (false, None));
    let e = out.error.unwrap();
    assert!(
        e.starts_with(&format!(
            "TLS handshake with 127.0.0.1:{} for server name 127.0.0.1: invalid peer certificate: certificate expired: ",
            expired.port
        )),
        "{e}"
    );

    let wrong_name = tls_registry(&ca, &["registry.other.example"], false, "").await;
    let out = probe(&https_region(&wrong_name, Some(&ca_file))).await;
    assert!(!out.ok);
    let e = out.error.unwrap();
    assert!(
        e.starts_with(&format!(
            "TLS handshake with 127.0.0.1:{} for server name 127.0.0.1: invalid peer certificate: certificate not valid for name \"127.0.0.1\"",
            wrong_name.port
        )) && e.contains("registry.other.example"),
        "{e}"
    );
    // The same certificate is fine when the probe asks for the name it carries.
    let mut named = https_region(&wrong_name, Some(&ca_file));
    named.probe.host = Some("registry.other.example".to_string());
    assert!(probe(&named).await.ok);
}

/// A registry with htpasswd auth answers `/v2/` with 401: up with the default status ranges,
/// over HTTPS too.
#[tokio::test]
async fn a_registry_with_auth_is_up() {
    let pw = std::process::Command::new("htpasswd")
        .args(["-Bbn", "testuser", "testpassword"])
        .output()
        .expect("htpasswd (apt-get install apache2-utils)");
    assert!(pw.status.success());
    let auth = "auth:\n  htpasswd:\n    realm: berth-test\n    path: {dir}/htpasswd\n";
    let mut plain = Registry::with_yaml(auth);
    std::fs::write(plain.dir().join("htpasswd"), &pw.stdout).expect("htpasswd");
    plain.start_expecting(&[401]).await;
    let out = probe(&region("westus", &plain.upstream(), ProbeKind::Http)).await;
    assert_eq!((out.ok, out.status, &out.error), (true, Some(401), &None));

    let (ca_pem, ca) = test_ca();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).expect("ca");
    // tls_registry writes its files before starting; htpasswd goes in the same directory.
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("cert");
    let mut tls = Registry::with_yaml(&format!(
        "  tls:\n    certificate: {{dir}}/server.pem\n    key: {{dir}}/server.key\n{auth}"
    ));
    std::fs::write(tls.dir().join("server.pem"), cert.pem()).expect("cert");
    std::fs::write(tls.dir().join("server.key"), key.serialize_pem()).expect("key");
    std::fs::write(tls.dir().join("htpasswd"), &pw.stdout).expect("htpasswd");
    tls.start_expecting(&[400]).await;
    let out = probe(&https_region(&tls, Some(&ca_file))).await;
    assert_eq!((out.ok, out.status, &out.error), (true, Some(401), &None));
}

/// End to end: a region whose TLS registry has an expired certificate is down in the admin
/// API, with the reason as its `last_error`; the CA file comes from `proxy.upstream_ca_file`.
#[test]
fn an_expired_certificate_shows_in_the_api() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (ca_pem, ca) = test_ca();
    let registry = rt.block_on(tls_registry(&ca, &["127.0.0.1"], true, ""));
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ca.pem"), ca_pem).expect("ca");
    let upstream = format!(
        "upstream = \"https://127.0.0.1:{}\"\nprobe = {{ interval = \"200ms\", timeout = \"150ms\", fall = 1 }}",
        registry.port
    );
    let config = support::demo_config(
        dir.path(),
        &[
            ("upstream = \"http://127.0.0.1:5001\"", upstream.as_str()),
            ("[proxy]\n", "[proxy]\nupstream_ca_file = \"ca.pem\"\n"),
        ],
        "",
    );
    let berth = support::Berth::start(&config);
    let url = format!("{}/api/v1/regions", berth.admin());
    let westus = || -> serde_json::Value {
        let mut resp = ureq::get(&url).call().expect("admin API");
        let v: serde_json::Value =
            serde_json::from_str(&resp.body_mut().read_to_string().expect("body")).expect("json");
        v["regions"]
            .as_array()
            .expect("regions")
            .iter()
            .find(|r| r["name"] == "westus")
            .expect("westus")
            .clone()
    };
    support::wait_until("westus down", Duration::from_secs(15), || {
        westus()["health"] == "down"
    });
    let e = westus()["last_error"]
        .as_str()
        .expect("last_error")
        .to_string();
    assert!(
        e.starts_with(&format!(
            "TLS handshake with 127.0.0.1:{} for server name 127.0.0.1: invalid peer certificate: ",
            registry.port
        )) && e.contains("certificate expired"),
        "{e}"
    );
}
