//! Wiring: load the config, build the first snapshot, bind the listeners, start the front ends,
//! and stop or reload on signals. Everything else is called from here; nothing calls back in.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use crate::config::Config;
use crate::dns::server::{bind_udp, start_tcp, TcpHandler, UdpWorkers};
use crate::live::Live;
use crate::snapshot::{LoadError, Snapshot};

/// A running Berth: its listeners' real addresses (port 0 resolved) and its live snapshot.
pub struct Running {
    pub dns_addrs: Vec<SocketAddr>,
    pub live: Arc<Live>,
    config_path: PathBuf,
    generation: AtomicU64,
    udp: Vec<UdpWorkers>,
    tcp: hickory_server::Server<TcpHandler>,
}

impl Running {
    /// Load the config at `path` and start every front end it names. Must be called inside a
    /// tokio runtime (TCP runs on it).
    pub async fn start(path: &Path) -> anyhow::Result<Running> {
        let config = Config::load(path)?;
        let snapshot = Snapshot::load(config, 1)?;
        let dns = snapshot.config.dns.clone();
        let live = Live::new(snapshot);

        let threads = if dns.udp_threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            dns.udp_threads
        };
        let mut udp = Vec::new();
        let mut tcp_listeners = Vec::new();
        let mut dns_addrs = Vec::new();
        for addr in &dns.listen {
            let socks = bind_udp(*addr, threads)
                .with_context(|| format!("cannot bind DNS UDP socket {addr}"))?;
            let bound = socks[0].local_addr()?;
            // TCP on the very port UDP got, so port 0 gives one port for both.
            let tcp = tokio::net::TcpListener::bind(bound)
                .await
                .with_context(|| format!("cannot bind DNS TCP socket {bound}"))?;
            udp.push(UdpWorkers::start(socks, live.clone())?);
            tcp_listeners.push(tcp);
            dns_addrs.push(bound);
        }
        let tcp = start_tcp(tcp_listeners, live.clone(), dns.tcp_idle_timeout);
        for a in &dns_addrs {
            tracing::info!(addr = %a, "serving DNS on UDP and TCP");
        }
        Ok(Running {
            dns_addrs,
            live,
            config_path: path.to_path_buf(),
            generation: AtomicU64::new(1),
            udp,
            tcp,
        })
    }

    /// Load the config again and publish it whole, or keep the old snapshot and say why.
    /// Listener addresses are not changed by a reload (that needs a restart).
    pub fn reload(&self) -> Result<u64, LoadError> {
        let config = Config::load(&self.config_path)?;
        let generation = self.generation.load(Ordering::Relaxed) + 1;
        let next = Snapshot::load(config, generation)?;
        let prev = self.live.snapshot.load();
        if next.config.dns.listen != prev.config.dns.listen {
            tracing::warn!("dns.listen changed: takes effect at the next restart");
        }
        self.live.publish(next);
        self.generation.store(generation, Ordering::Relaxed);
        Ok(generation)
    }

    pub async fn stop(mut self) {
        let _ = self.tcp.shutdown_gracefully().await;
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
    loop {
        tokio::select! {
            _ = hup.recv() => match running.reload() {
                Ok(g) => tracing::info!(generation = g, "config reloaded"),
                Err(e) => tracing::error!(error = %crate::report(&e), "reload rejected, the old config keeps serving"),
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}
