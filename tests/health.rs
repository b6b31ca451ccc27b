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
