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
    drop(seen);
    if live.metrics.workers.probing_first_round() {
        let config = &live.snapshot.load().config;
        live.metrics
            .workers
            .unprobed(unprobed(&config.regions, report));
    }
}

/// Regions with an upstream that no probe has ended for yet (up or down): what `/readyz`
/// waits for at start. A region the report does not know yet counts as not probed.
fn unprobed(regions: &[Region], report: &HealthReport) -> Vec<String> {
    regions
        .iter()
        .filter(|r| r.upstream.is_some())
        .filter(|r| report.region(&r.name).is_none_or(|h| h.probes == 0))
        .map(|r| r.name.clone())
        .collect()
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
    let Some(source) = &admin.token else {
        return Ok(None);
    };
    let token = source.read("admin token", "the admin API is read-only")?;
    if let (Some(t), TokenSource::File(path)) = (&token, source) {
        anyhow::ensure!(
            !t.is_empty(),
            "admin token file {} is empty",
            path.display()
        );
    }
    Ok(token)
}

/// The DNS front end: UDP worker threads and the TCP accept loop for every listen address.
struct Dns {
    addrs: Vec<SocketAddr>,
    udp: Vec<UdpWorkers>,
    tcp: TcpServer,
}

impl Dns {
    fn start(live: &Arc<Live>, dns: &crate::config::DnsConfig) -> anyhow::Result<Dns> {
        let threads = if dns.udp_threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            dns.udp_threads
        };
        let mut udp = Vec::new();
        let mut tcp_listeners = Vec::new();
        let mut addrs = Vec::new();
        for addr in &dns.listen {
            let (socks, tcp, bound) = bind_pair(*addr, threads)?;
            udp.push(UdpWorkers::start(socks, live.clone())?);
            tcp_listeners.push(tcp);
            addrs.push(bound);
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
        for a in &addrs {
            tracing::info!(addr = %a, "serving DNS on UDP and TCP");
        }
        let sticky = live.sticky.backing();
        if let Some(huge) = sticky.huge {
            // Answers cost several percent more on small pages: say which this host gave.
            tracing::info!(
                bytes = sticky.bytes,
                huge_page_bytes = huge,
                "sticky table allocated (berth_table_huge_page_bytes)"
            );
        }
        Ok(Dns { addrs, udp, tcp })
    }
}

/// UDP sockets and a TCP listener on one port. TCP binds the very port UDP got, so port 0
/// gives one port for both; with port 0 the TCP side of the kernel's pick may be taken: then
/// pick again, a few times.
fn bind_pair(
    addr: SocketAddr,
    threads: usize,
) -> anyhow::Result<(
    Vec<std::net::UdpSocket>,
    tokio::net::TcpListener,
    SocketAddr,
)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let socks = bind_udp(addr, threads)
            .with_context(|| format!("cannot bind DNS UDP socket {addr}"))?;
        let bound = socks[0].local_addr()?;
        match bind_tcp(bound) {
            Ok(tcp) => return Ok((socks, tcp, bound)),
            Err(e) if addr.port() == 0 && attempt < 20 => {
                tracing::debug!(error = %e, %bound, "TCP port taken, picking another");
            }
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context(format!("cannot bind DNS TCP socket {bound}"))
                )
            }
        }
    }
}

impl Running {
    /// Load the config at `path` and start every front end it names. Must be called inside a
    /// tokio runtime (TCP, admin and probes run on it).
    pub async fn start(path: &Path) -> anyhow::Result<Running> {
        let live = Live::load(path)?;
        // Not ready until the listeners are bound and every region was probed once.
        live.metrics.workers.binding(true);
        let snap = live.snapshot.load_full();
        crate::logs::apply_config(snap.config.log.access, snap.config.log.queries);
        let admin = snap.config.admin.clone();
        let token = admin_token(&admin)?;
        if let Some(addr) = admin.listen {
            anyhow::ensure!(
                addr.ip().is_loopback() || token.is_some(),
                "admin.listen {addr} is not a loopback address and no admin token is set: \
                 refusing to expose the admin API without one"
            );
        }
        let dns = Dns::start(&live, &snap.config.dns)?;

        let (shutdown, _) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        let applied = Applied::default();
        let first = start_monitor(&live, &applied, snap.config.regions.clone());
        let waiting = unprobed(&snap.config.regions, &first.report());
        live.metrics.workers.unprobed(waiting);
        let monitor = Arc::new(Mutex::new(Some(first)));
        {
            let weak = Arc::downgrade(&live);
            let monitor = monitor.clone();
            let stop = shutdown.subscribe();
            let unit = Unit::unlisted(Kind::Health, "health report");
            tasks.push(tokio::spawn(supervise_task(
                live.metrics.workers.clone(),
                unit,
                move || control_loop(weak.clone(), monitor.clone(), applied.clone(), stop.clone()),
            )));
        }

        // [cluster]: wait (bounded) for the first full read of the shared state before
        // answering, so a restarted instance never serves from its old local flags.
        if let Some((_, task)) = crate::cluster::start(&live, shutdown.subscribe()) {
            tasks.push(task);
            live.metrics.workers.cluster_synced(false);
            crate::cluster::wait_first_sync(&live).await;
            tasks.push(tokio::spawn(crate::cluster::ready_when_synced(
                Arc::downgrade(&live),
                shutdown.subscribe(),
            )));
        }
        tasks.push(spawn_window_ticker(&live, shutdown.subscribe()));

        let admin_addr = match admin.listen {
            Some(addr) => {
                let (bound, task) =
                    start_admin(&live, addr, token, &admin, shutdown.subscribe()).await?;
                tasks.push(task);
                Some(bound)
            }
            None => None,
        };

        if let Some(cfg) = &snap.config.replication {
            tasks.append(&mut start_replication(&live, cfg, shutdown.subscribe())?);
        }

        let proxy = if snap.config.proxy.enabled() {
            let secret = crate::proxy::read_secret(&snap.config.proxy)?;
            Some(crate::proxy::Proxy::start(live.clone(), &secret)?)
        } else {
            None
        };

        live.metrics.workers.binding(false);
        Ok(Running {
            dns_addrs: dns.addrs,
            admin_addr,
            proxy_addr: proxy.as_ref().and_then(|p| p.addr),
            proxy_tls_addr: proxy.as_ref().and_then(|p| p.tls_addr),
            proxy,
            live,
            udp: dns.udp,
            tcp: dns.tcp,
            monitor,
            tasks,
            shutdown,
        })
    }

    /// Reload config, zones and GeoIP (the health monitor follows the new regions on its own,
    /// see `control_loop`, as it does after a reload through the admin API).
    pub fn reload(&self) -> anyhow::Result<u64> {
        Ok(self.live.reload()?)
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

/// Bind the admin listener and serve it under supervision until `stop`.
async fn start_admin(
    live: &Arc<Live>,
    addr: SocketAddr,
    token: Option<String>,
    admin: &AdminConfig,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind admin listener {addr}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "serving the admin API");
    // Kept as a std socket so a replaced admin server (after a panic) listens on the same
    // one: each run gets its own descriptor of it.
    let listener = listener.into_std()?;
    let live = live.clone();
    let limits = crate::admin::Limits::of(admin);
    let unit = Unit::unlisted(Kind::Admin, format!("admin on {bound}"));
    let task = tokio::spawn(supervise_task(
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
    ));
    Ok((bound, task))
}

/// The one loop that keeps health in step with the config: every second (every 50 ms during
/// the first probe round) it brings probe latency and errors into the live state
/// (transitions publish at once through the monitor's callback), and when a reload (SIGHUP
/// or the admin API) publishes other regions it restarts the probes on them.
async fn control_loop(
    live: std::sync::Weak<Live>,
    monitor: Arc<Mutex<Option<MonitorHandle>>>,
    applied: Applied,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Some(mut config) = live.upgrade().map(|l| l.watch_config()) else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while !*stop.borrow_and_update() {
        // Until every region was probed once, look often: `/readyz` turns 200 soon after the
        // last first probe ends, not up to a second later.
        let first_round = live
            .upgrade()
            .is_some_and(|l| l.metrics.workers.probing_first_round());
        let follow = tokio::select! {
            _ = tick.tick() => false,
            _ = tokio::time::sleep(Duration::from_millis(50)), if first_round => false,
            changed = config.changed() => changed.is_ok(),
            _ = stop.changed() => break,
        };
        let Some(live) = live.upgrade() else { break };
        let mut guard = monitor.lock().unwrap_or_else(|p| p.into_inner());
        if follow {
            let regions = live.snapshot.load().config.regions.clone();
            if let Some(m) = guard.take() {
                *guard = Some(m.restart(regions));
            }
        }
        if let Some(report) = guard.as_ref().map(|m| m.report()) {
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

/// The live snapshot for the replicator, without keeping `Live` alive.
/// The replicator, reading the live config and (in cluster mode) the member list.
fn start_replication(
    live: &Arc<Live>,
    cfg: &crate::config::ReplicationConfig,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let weak = Arc::downgrade(live);
    let (r, started) = crate::replication::Replication::start(
        snapshots(live),
        cfg,
        stop,
        live.metrics.workers.clone(),
        Arc::new(move || weak.upgrade().and_then(|l| l.shared())),
    )?;
    let _ = live.replication.set(r);
    Ok(started)
}

fn snapshots(live: &Arc<Live>) -> crate::replication::SnapshotSource {
    let weak = Arc::downgrade(live);
    Arc::new(move || weak.upgrade().map(|l| l.snapshot.load_full()))
}

/// `berth serve`: run until SIGINT or SIGTERM; SIGHUP reloads.
pub async fn serve(path: &Path) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    crate::limits::raise_open_files_limit();
    // Before start-up: SIGHUP's default action ends the process, and a reload sent while
    // Berth starts (its listeners already answer) must not kill it; it is applied once
    // start-up is done.
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let running = Running::start(path).await?;
    sd_notify(&format!("READY=1\nSTATUS={}", running.status()));
    loop {
        tokio::select! {
            _ = hup.recv() => {
                sd_notify("RELOADING=1");
                match running.reload() {
                    Ok(g) => tracing::info!(generation = g, "config reloaded"),
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "reload rejected, the old config keeps serving"),
                }
                sd_notify("READY=1");
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("shutting down");
    sd_notify("STOPPING=1");
    running.stop().await;
    Ok(())
}

impl Running {
    /// One line for `systemctl status`: what listens where.
    fn status(&self) -> String {
        let mut parts = Vec::new();
        let dns: Vec<String> = self.dns_addrs.iter().map(|a| a.to_string()).collect();
        if !dns.is_empty() {
            parts.push(format!("DNS on {}", dns.join(" ")));
        }
        for (what, addr) in [
            ("proxy", self.proxy_addr),
            ("proxy TLS", self.proxy_tls_addr),
            ("admin", self.admin_addr),
        ] {
            if let Some(a) = addr {
                parts.push(format!("{what} on {a}"));
            }
        }
        format!("serving {}", parts.join(", "))
    }
}

/// Tell the service manager (systemd `Type=notify`) about a change of state: `READY=1` once
/// the config is loaded and the listeners are bound, `RELOADING=1` and `READY=1` around a
/// SIGHUP reload, `STOPPING=1` at shutdown. Nothing without `$NOTIFY_SOCKET`; a failure is
/// only logged, since Berth serves the same either way.
fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_notify(&path, state) {
        tracing::warn!(error = %e, socket = ?path, "cannot notify the service manager");
    }
}

/// One datagram to the socket `path` names: a file path, or `@name` in the abstract
/// namespace (the protocol of sd_notify(3), small enough not to need a crate).
fn send_notify(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::net::UnixDatagram;
    let socket = UnixDatagram::unbound()?;
    match path.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            socket.send_to(state.as_bytes(), path)?;
        }
    }
    Ok(())
}

/// Maintenance windows end by the clock, not by an event: `Live::tick` every 250 ms.
fn spawn_window_ticker(
    live: &Arc<Live>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(live);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = every.tick() => match weak.upgrade() {
                    Some(live) => live.tick(),
                    None => return,
                },
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProbeConfig;
    use crate::health::Health;

    fn region(name: &str, upstream: Option<&str>) -> Region {
        Region {
            name: name.to_string(),
            latitude: 0.0,
            longitude: 0.0,
            a: vec![],
            aaaa: vec![],
            cname: None,
            upstream: upstream.map(str::to_string),
            probe: ProbeConfig::default(),
        }
    }

    fn probed(name: &str, probes: u64) -> RegionHealth {
        RegionHealth {
            name: name.to_string(),
            health: Health::Unknown,
            healthy: true,
            last_error: None,
            latency_ms: None,
            probes,
            failures: 0,
            transitions: 0,
            since_probe: 0,
        }
    }

    #[test]
    fn unprobed_regions_are_those_with_an_upstream_and_no_probe_yet() {
        let regions = [
            region("westus", Some("http://10.0.0.1")),
            region("eastus", Some("http://10.0.0.2")),
            region("dnsonly", None),
            region("added", Some("http://10.0.0.3")),
        ];
        let report = HealthReport {
            regions: vec![
                probed("westus", 1),
                probed("eastus", 0),
                probed("dnsonly", 0),
            ],
        };
        assert_eq!(unprobed(&regions, &report), ["eastus", "added"]);
    }
}
