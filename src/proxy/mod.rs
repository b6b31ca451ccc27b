//! The proxy front end: an OCI-aware HTTP reverse proxy (pingora) in front of the regions'
//! registry replicas, so every request of one push lands in one region.
//!
//! Flow of a request (`service`, thin pingora phases around a `request::Ctx`): client key from
//! the TCP peer (or a trusted `X-Forwarded-For`) -> the path parsed ([`oci`]) -> the upload
//! token checked ([`token`]) and the (client key, repository) affinity looked up
//! ([`affinity`]) -> [`choose`] (pure) picks the region: an upload session's token names it; a
//! repository request keeps its affinity (or, for a new one, takes the routing core's
//! decision); other paths get the client's region -> forwarded with the token stripped and
//! `X-Forwarded-Host/Proto` set -> the answer's `Location` gets a fresh token. Manifest PUTs
//! are buffered and go through the safety net (`manifest`); 404 reads fall back to other
//! regions.
//!
//! Modules depend downwards only: `mod.rs` (start, stop) -> `service` -> `manifest` ->
//! `request` -> `choose` -> `oci`, `token`; no file here imports from `mod.rs`.
//!
//! Owns: the listeners, the proxy's runtime, tokens, affinity, the proxy metrics' numbers.
//! Does not own: which region a client should use (the routing core), health, flags, config.
//! Only this module names pingora types.

pub mod affinity;
pub mod choose;
mod head;
mod manifest;
pub mod oci;
mod passive;
mod request;
mod service;
pub mod tls;
pub mod token;
pub mod upstream;

use std::io::Read as _;
use std::net::SocketAddr;
use std::os::fd::IntoRawFd as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use pingora::server::configuration::ServerConf;
use pingora::server::Fds;
use pingora::services::ServiceWithDependents as _;

use crate::config::ProxyConfig;
use crate::live::Live;

use affinity::{AffinityTable, SessionTable};
pub use passive::passively_down;
use request::Shared;
use token::Signer;
use upstream::Addresses;

/// The upload-token secret: from the file or environment variable the config names, read once
/// at start. With none configured (or the variable unset), a random per-process secret: upload
/// sessions then only work through this instance, which is said in the log.
pub fn read_secret(cfg: &ProxyConfig) -> anyhow::Result<Vec<u8>> {
    let from = match &cfg.secret {
        Some(source) => source
            .read(
                "proxy secret",
                "the proxy uses a random upload-token secret, so upload sessions only work through this instance",
            )?
            .map(|s| (s.into_bytes(), source.describe())),
        None => {
            tracing::warn!("no [proxy] secret_env or secret_file: the proxy uses a random upload-token secret, so upload sessions only work through this instance");
            None
        }
    };
    match from {
        Some((secret, source)) => {
            anyhow::ensure!(
                secret.len() >= 16,
                "the proxy secret from {source} is {} bytes; use at least 16 (e.g. `openssl rand -hex 32`)",
                secret.len()
            );
            Ok(secret)
        }
        None => {
            let mut secret = vec![0u8; 32];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut secret))
                .context("cannot read /dev/urandom for a proxy secret")?;
            Ok(secret)
        }
    }
}

/// A running proxy: its listeners' real addresses and what it takes to stop it.
pub struct Proxy {
    pub addr: Option<SocketAddr>,
    pub tls_addr: Option<SocketAddr>,
    shutdown: tokio::sync::watch::Sender<bool>,
    runtime: Option<tokio::runtime::Runtime>,
    service: Option<tokio::task::JoinHandle<()>>,
    inflight: Arc<AtomicUsize>,
    grace: Duration,
}

fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The proxy's sockets, bound, with their real addresses.
struct Listeners {
    /// pingora's table of inherited listeners, keyed by the address string.
    fds: Fds,
    addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
}

/// We bind the sockets ourselves (port 0 works, errors surface now) and hand them to pingora
/// through its table of inherited listeners.
fn listeners(cfg: &ProxyConfig) -> anyhow::Result<Listeners> {
    let mut fds = Fds::new();
    let mut bound = |addr: SocketAddr, what: &str| -> anyhow::Result<SocketAddr> {
        let l = bind(addr).with_context(|| format!("cannot bind proxy {what} listener {addr}"))?;
        let real = l.local_addr()?;
        fds.add(real.to_string(), l.into_raw_fd());
        Ok(real)
    };
    let addr = cfg.listen.map(|a| bound(a, "HTTP")).transpose()?;
    let tls_addr = cfg
        .tls
        .as_ref()
        .map(|t| bound(t.listen, "HTTPS"))
        .transpose()?;
    Ok(Listeners {
        fds,
        addr,
        tls_addr,
    })
}

fn server_conf(cfg: &ProxyConfig, threads: usize) -> anyhow::Result<ServerConf> {
    let mut conf = ServerConf {
        threads,
        grace_period_seconds: Some(cfg.shutdown_grace.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: 256,
        ..ServerConf::default()
    };
    if let Some(ca) = &cfg.upstream_ca_file {
        anyhow::ensure!(
            ca.is_file(),
            "proxy upstream_ca_file {} is not a readable file",
            ca.display()
        );
        conf.ca_file = Some(ca.display().to_string());
    }
    Ok(conf)
}

type App = head::HeadDeadline<pingora::proxy::HttpProxy<service::BerthProxy>>;

/// pingora's HTTP proxy app behind a total deadline for each request head, on our listeners.
fn listening_service(
    conf: &Arc<ServerConf>,
    shared: Arc<Shared>,
    cfg: &ProxyConfig,
    listeners: &Listeners,
    certificate: Option<&Arc<tls::Certificate>>,
) -> anyhow::Result<pingora::services::listening::Service<App>> {
    let app = head::HeadDeadline::new(
        pingora::proxy::http_proxy(conf, service::BerthProxy::new(shared)),
        cfg.request_head_timeout,
    );
    let mut svc = pingora::services::listening::Service::new("berth-proxy".to_string(), app);
    if let Some(a) = listeners.addr {
        svc.add_tcp(&a.to_string());
    }
    if let (Some(a), Some(cert)) = (listeners.tls_addr, certificate) {
        // Empty paths: the certificate comes from the resolver, which reloads.
        let mut settings =
            pingora::listeners::tls::TlsSettings::intermediate("", "").context("TLS settings")?;
        settings.set_cert_resolver(cert.clone());
        settings.enable_h2();
        svc.add_tls_with_settings(&a.to_string(), None, settings);
    }
    Ok(svc)
}

impl Proxy {
    /// Bind the proxy's listeners and start serving on a runtime of its own. Binding errors
    /// (and a bad certificate) are returned here, before anything runs.
    pub fn start(live: Arc<Live>, secret: &[u8]) -> anyhow::Result<Proxy> {
        let snap = live.snapshot.load_full();
        let cfg = snap.config.proxy.clone();
        anyhow::ensure!(
            cfg.enabled(),
            "no [proxy] listen or tls_listen is configured"
        );
        let threads = if cfg.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            cfg.threads
        };
        let listeners = listeners(&cfg)?;
        let certificate = match &cfg.tls {
            Some(t) => Some(tls::Certificate::load(&t.cert, &t.key)?),
            None => None,
        };
        let conf = Arc::new(server_conf(&cfg, threads)?);

        let inflight = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new(Shared {
            live: live.clone(),
            signer: Signer::new(secret),
            affinity: AffinityTable::new(cfg.affinity_capacity, cfg.push_affinity),
            sessions: SessionTable::new(cfg.affinity_capacity, cfg.push_affinity),
            addresses: Arc::new(Addresses::default()),
            connector: pingora::connectors::http::Connector::new(Some(
                pingora::connectors::ConnectorOptions::from_server_conf(&conf),
            )),
            inflight: inflight.clone(),
            passive: passive::Passive::default(),
        });
        let mut svc = listening_service(
            &conf,
            shared.clone(),
            &cfg,
            &listeners,
            certificate.as_ref(),
        )?;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("berth-proxy")
            .enable_all()
            .build()
            .context("cannot start the proxy's runtime")?;
        let (shutdown, stop) = tokio::sync::watch::channel(false);
        let Listeners {
            fds,
            addr,
            tls_addr,
        } = listeners;
        let fds = Arc::new(parking_lot::Mutex::new(fds));
        let service = {
            let stop = stop.clone();
            runtime.spawn(async move {
                let (ready, _) = tokio::sync::watch::channel(false);
                svc.start_service(
                    Some(fds),
                    stop,
                    1,
                    pingora::services::ServiceReadyNotifier::new(ready),
                )
                .await;
            })
        };
        runtime.spawn(shared.addresses.clone().run(live.clone(), stop.clone()));
        runtime.spawn(housekeeping(shared, certificate, stop));
        live.metrics.proxy.running.store(true, Ordering::Relaxed);
        for a in addr.iter() {
            tracing::info!(addr = %a, "serving the registry proxy (HTTP)");
        }
        for a in tls_addr.iter() {
            tracing::info!(addr = %a, "serving the registry proxy (HTTPS, HTTP/1.1 and HTTP/2)");
        }
        Ok(Proxy {
            addr,
            tls_addr,
            shutdown,
            runtime: Some(runtime),
            service: Some(service),
            inflight,
            grace: cfg.shutdown_grace,
        })
    }

    /// Stop accepting, give requests in flight up to the grace period, then stop the runtime.
    /// Never exits the process (pingora's `run_forever` would).
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(s) = self.service.take() {
            let _ = s.await;
        }
        let end = tokio::time::Instant::now() + self.grace;
        while self.inflight.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Once a second: publish the gauges, forget expired affinities and sessions, reload the
/// certificate when the config changed.
async fn housekeeping(
    shared: Arc<Shared>,
    certificate: Option<Arc<tls::Certificate>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut generation = shared.live.snapshot.load().generation;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        n += 1;
        let now = shared.live.now();
        if n % 10 == 0 {
            shared.affinity.purge(now);
            shared.sessions.purge(now);
        }
        let snap = shared.live.snapshot.load_full();
        let m = &shared.live.metrics.proxy;
        m.affinity_entries
            .store(shared.affinity.len() as u64, Ordering::Relaxed);
        let counts = shared.sessions.count_by_region(now);
        for (id, region) in snap.config.regions.iter().enumerate() {
            let c = counts
                .iter()
                .find(|(r, _)| **r == *region.name)
                .map_or(0, |(_, c)| *c);
            if let Some(g) = snap.counters.region(id) {
                g.proxy.upload_sessions.store(c as u64, Ordering::Relaxed);
            }
        }
        if snap.generation != generation {
            generation = snap.generation;
            if let (Some(cert), Some(t)) = (&certificate, &snap.config.proxy.tls) {
                cert.reload(&t.cert, &t.key);
            }
        }
    }
}
