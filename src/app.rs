//! Wiring: load the config into a [`Live`], bind the listeners, start the front ends and the
//! health monitor, and stop or reload on signals. Everything else is called from here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;

use crate::config::{AdminConfig, Region, TokenSource};
use crate::dns::server::{bind_udp, start_tcp, TcpHandler, UdpWorkers};
use crate::health::{HealthReport, Monitor, MonitorHandle, RegionHealth};
use crate::live::{HealthInfo, Live};

/// A running Berth: its listeners' real addresses (port 0 resolved) and its live state.
pub struct Running {
    pub dns_addrs: Vec<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    /// The proxy's plain HTTP and HTTPS listeners, if `[proxy]` names them.
    pub proxy_addr: Option<SocketAddr>,
    pub proxy_tls_addr: Option<SocketAddr>,
    pub live: Arc<Live>,
    proxy: Option<crate::proxy::Proxy>,
    udp: Vec<UdpWorkers>,
    tcp: hickory_server::Server<TcpHandler>,
    monitor: Arc<Mutex<Option<MonitorHandle>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

fn health_info(h: &RegionHealth) -> HealthInfo {
    HealthInfo {
        state: h.health.as_str(),
        healthy: h.healthy,
        last_error: h.last_error.clone(),
        probe_latency_ms: h.latency_ms,
    }
}

/// The probe count of each region as last applied: a report is applied per region only when
/// a probe ran since, so a verdict the proxy's passive health gave in between (a region that
/// answers its probe but hangs on requests) holds until the next probe says otherwise.
type Applied = Arc<Mutex<HashMap<String, u64>>>;

fn apply(live: &Live, applied: &Applied, report: &HealthReport) {
    let mut seen = applied.lock().unwrap_or_else(|p| p.into_inner());
    for r in &report.regions {
        if seen.insert(r.name.clone(), r.probes) == Some(r.probes) {
            continue;
        }
        // A passive "down" is lifted by a probe that succeeded, not by one that failed while
        // the probes' own threshold still counts the region up.
        let failed_probe = r.healthy && r.last_error.is_some();
        if failed_probe && crate::proxy::passively_down(&live.health(&r.name)) {
            continue;
        }
        live.set_health(&r.name, health_info(r));
    }
}

fn start_monitor(live: &Arc<Live>, applied: &Applied, regions: Vec<Region>) -> MonitorHandle {
    let weak = Arc::downgrade(live);
    let applied = applied.clone();
    Monitor::start(regions, move |report| {
        if let Some(live) = weak.upgrade() {
            apply(&live, &applied, &report);
        }
    })
}

/// The admin token, read once at start (a reload does not re-read it).
pub fn admin_token(admin: &AdminConfig) -> anyhow::Result<Option<String>> {
    let token = match &admin.token {
        None => None,
        Some(TokenSource::Env(var)) => match std::env::var(var) {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
            _ => {
                tracing::warn!("environment variable {var} is not set: the admin API is read-only");
                None
            }
        },
        Some(TokenSource::File(path)) => {
            let t = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read admin token file {}", path.display()))?;
            let t = t.trim().to_string();
            anyhow::ensure!(
                !t.is_empty(),
                "admin token file {} is empty",
                path.display()
            );
            Some(t)
        }
    };
    Ok(token)
}

impl Running {
    /// Load the config at `path` and start every front end it names. Must be called inside a
    /// tokio runtime (TCP, admin and probes run on it).
    pub async fn start(path: &Path) -> anyhow::Result<Running> {
        let live = Live::load(path)?;
        let snap = live.snapshot.load_full();
        let dns = snap.config.dns.clone();
        let admin = snap.config.admin.clone();
        let token = admin_token(&admin)?;
        if let Some(addr) = admin.listen {
            anyhow::ensure!(
                addr.ip().is_loopback() || token.is_some(),
                "admin.listen {addr} is not a loopback address and no admin token is set: \
                 refusing to expose the admin API without one"
            );
        }

        let threads = if dns.udp_threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            dns.udp_threads
        };
        let mut udp = Vec::new();
        let mut tcp_listeners = Vec::new();
        let mut dns_addrs = Vec::new();
        for addr in &dns.listen {
            // TCP on the very port UDP got, so port 0 gives one port for both. With port 0 the
            // TCP side of the kernel's pick may be taken: then pick again, a few times.
            let mut attempt = 0;
            let (socks, tcp, bound) = loop {
                attempt += 1;
                let socks = bind_udp(*addr, threads)
                    .with_context(|| format!("cannot bind DNS UDP socket {addr}"))?;
                let bound = socks[0].local_addr()?;
                match tokio::net::TcpListener::bind(bound).await {
                    Ok(tcp) => break (socks, tcp, bound),
                    Err(e) if addr.port() == 0 && attempt < 20 => {
                        tracing::debug!(error = %e, %bound, "TCP port taken, picking another");
                    }
                    Err(e) => {
                        return Err(anyhow::Error::new(e)
                            .context(format!("cannot bind DNS TCP socket {bound}")))
                    }
                }
            };
            udp.push(UdpWorkers::start(socks, live.clone())?);
            tcp_listeners.push(tcp);
            dns_addrs.push(bound);
        }
        let tcp = start_tcp(tcp_listeners, live.clone(), dns.tcp_idle_timeout);
        for a in &dns_addrs {
            tracing::info!(addr = %a, "serving DNS on UDP and TCP");
        }

        let (shutdown, _) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        let applied = Applied::default();
        let monitor = Arc::new(Mutex::new(Some(start_monitor(
            &live,
            &applied,
            snap.config.regions.clone(),
        ))));
        // Transitions publish at once; this also brings probe latency and errors up to date.
        {
            let live = Arc::downgrade(&live);
            let monitor = monitor.clone();
            let mut stop = shutdown.subscribe();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.changed() => break,
                    }
                    let Some(live) = live.upgrade() else { break };
                    let report = monitor
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .as_ref()
                        .map(|m| m.report());
                    if let Some(report) = report {
                        apply(&live, &applied, &report);
                    }
                }
            }));
        }

        let mut admin_addr = None;
        if let Some(addr) = admin.listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot bind admin listener {addr}"))?;
            admin_addr = Some(listener.local_addr()?);
            tracing::info!(addr = %listener.local_addr()?, "serving the admin API");
            let mut stop = shutdown.subscribe();
            let live = live.clone();
            tasks.push(tokio::spawn(async move {
                let done = async move {
                    let _ = stop.changed().await;
                };
                let limits = crate::admin::Limits::of(&admin);
                if let Err(e) = crate::admin::serve(listener, live, token, limits, done).await {
                    tracing::error!(error = %e, "admin listener failed");
                }
            }));
        }

        let proxy = if snap.config.proxy.enabled() {
            let secret = crate::proxy::read_secret(&snap.config.proxy)?;
            Some(crate::proxy::Proxy::start(live.clone(), &secret)?)
        } else {
            None
        };

        Ok(Running {
            dns_addrs,
            admin_addr,
            proxy_addr: proxy.as_ref().and_then(|p| p.addr),
            proxy_tls_addr: proxy.as_ref().and_then(|p| p.tls_addr),
            proxy,
            live,
            udp,
            tcp,
            monitor,
            tasks,
            shutdown,
        })
    }

    /// Reload config, zones and GeoIP; on success the health monitor follows the new regions.
    pub fn reload(&self) -> anyhow::Result<u64> {
        let generation = self.live.reload()?;
        self.follow_regions();
        Ok(generation)
    }

    /// Restart probing if the regions changed (reloads through the admin API land here too,
    /// on the next call; see `serve`).
    fn follow_regions(&self) {
        let regions = self.live.snapshot.load().config.regions.clone();
        let mut guard = self.monitor.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = guard.take() {
            *guard = Some(m.restart(regions));
        }
    }

    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        if let Some(p) = self.proxy {
            p.stop().await;
        }
        let mut tcp = self.tcp;
        let _ = tcp.shutdown_gracefully().await;
        if let Some(m) = self
            .monitor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            m.stop();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        for u in self.udp {
            tokio::task::spawn_blocking(move || u.stop()).await.ok();
        }
    }
}

/// `berth serve`: run until SIGINT or SIGTERM; SIGHUP reloads.
pub async fn serve(path: &Path) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let running = Running::start(path).await?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut generation = running.live.snapshot.load().generation;
    let mut check = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = hup.recv() => match running.reload() {
                Ok(g) => tracing::info!(generation = g, "config reloaded"),
                Err(e) => tracing::error!(error = %format!("{e:#}"), "reload rejected, the old config keeps serving"),
            },
            _ = check.tick() => {}
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
        // A reload through the admin API: let the probes follow the new regions.
        let now = running.live.snapshot.load().generation;
        if now != generation {
            generation = now;
            running.follow_regions();
        }
    }
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}
