//! Wiring: load the config into a [`Live`], bind the listeners, start the front ends and the
//! health monitor, and stop or reload on signals. Everything else is called from here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;

use crate::config::{AdminConfig, Region, TokenSource};
use crate::dns::server::{bind_tcp, bind_udp, TcpLimits, TcpServer, UdpWorkers};
use crate::health::{HealthReport, Monitor, MonitorHandle, RegionHealth};
use crate::live::{HealthInfo, Live};
use crate::supervise::{supervise_task, Kind, Unit};

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
    tcp: TcpServer,
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
    Monitor::start_supervised(regions, live.metrics.workers.clone(), move |report| {
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
                match bind_tcp(bound) {
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
        let tcp = TcpServer::start(
            tcp_listeners,
            live.clone(),
            TcpLimits {
                idle_timeout: dns.tcp_idle_timeout,
                max_connections: dns.tcp_max_connections,
                max_connections_per_client: dns.tcp_max_connections_per_client,
            },
        );
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
            let weak = Arc::downgrade(&live);
            let monitor = monitor.clone();
            let applied = applied.clone();
            let stop = shutdown.subscribe();
            let unit = Unit::unlisted(Kind::Health, "health report");
            tasks.push(tokio::spawn(supervise_task(
                live.metrics.workers.clone(),
                unit,
                move || report_loop(weak.clone(), monitor.clone(), applied.clone(), stop.clone()),
            )));
        }

        let mut admin_addr = None;
        if let Some(addr) = admin.listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot bind admin listener {addr}"))?;
            admin_addr = Some(listener.local_addr()?);
            tracing::info!(addr = %listener.local_addr()?, "serving the admin API");
            // Kept as a std socket so a replaced admin server (after a panic) listens on the
            // same one: each run gets its own descriptor of it.
            let listener = listener.into_std()?;
            let stop = shutdown.subscribe();
            let live = live.clone();
            let limits = crate::admin::Limits::of(&admin);
            let unit = Unit::unlisted(Kind::Admin, format!("admin on {}", listener.local_addr()?));
            tasks.push(tokio::spawn(supervise_task(
                live.metrics.workers.clone(),
                unit,
                move || {
                    admin_run(
                        &listener,
                        live.clone(),
                        token.clone(),
                        limits.clone(),
                        stop.clone(),
                    )
                },
            )));
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
        self.live.metrics.workers.stopping();
        let _ = self.shutdown.send(true);
        if let Some(p) = self.proxy {
            p.stop().await;
        }
        self.tcp.stop().await;
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

/// Every second, bring probe latency and errors into the live state (transitions publish at
/// once through the monitor's callback).
async fn report_loop(
    live: std::sync::Weak<Live>,
    monitor: Arc<Mutex<Option<MonitorHandle>>>,
    applied: Applied,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while !*stop.borrow_and_update() {
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
}

/// One run of the admin API on (a descriptor of) `listener`, until `stop`.
fn admin_run(
    listener: &std::net::TcpListener,
    live: Arc<Live>,
    token: Option<String>,
    limits: crate::admin::Limits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let listener = listener
        .try_clone()
        .and_then(tokio::net::TcpListener::from_std);
    async move {
        let listener = match listener {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot use the admin listener again");
                return;
            }
        };
        if *stop.borrow_and_update() {
            return;
        }
        let done = async move {
            let _ = stop.changed().await;
        };
        if let Err(e) = crate::admin::serve(listener, live, token, limits, done).await {
            tracing::error!(error = %e, "admin listener failed");
        }
    }
}

/// `berth serve`: run until SIGINT or SIGTERM; SIGHUP reloads.
pub async fn serve(path: &Path) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    raise_open_files_limit();
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

/// Raise the soft limit on open files to the hard limit: every DNS TCP connection, admin and
/// proxy client holds a descriptor, and a soft limit of 1024 (a common default) is reached
/// long before the connection caps are. Logged either way, so the real limit is on record.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(error = %e, "cannot read the open files limit (RLIMIT_NOFILE)");
        return;
    }
    let mut target = lim.rlim_max;
    #[cfg(target_os = "linux")]
    if target == libc::RLIM_INFINITY {
        // "Unlimited" is refused for RLIMIT_NOFILE; the kernel's ceiling is nr_open.
        if let Some(n) = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            target = n;
        }
    }
    if lim.rlim_cur >= target {
        tracing::info!(limit = lim.rlim_cur, "open files limit (RLIMIT_NOFILE)");
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: target,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: setrlimit reads one rlimit we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        tracing::info!(
            from = lim.rlim_cur,
            to = target,
            "raised the open files limit (RLIMIT_NOFILE) to the hard limit"
        );
    } else {
        let e = std::io::Error::last_os_error();
        tracing::warn!(error = %e, limit = lim.rlim_cur, hard = lim.rlim_max, "cannot raise the open files limit (RLIMIT_NOFILE)");
    }
}
