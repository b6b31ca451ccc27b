//! Berth: geo-aware authoritative DNS and traffic routing for replicated container registries.
//!
//! Modules, in reading order:
//! - [`config`]: the TOML config, parsed into serde `Raw*` types and validated into [`config::Config`].
//! - [`geo`]: MaxMind DB lookups (client address -> location) and the pure distance model;
//!   also the offline mmdb builder behind `berth geoip build`.
//! - [`routing`]: THE core. `decide` picks a region for a client key; pure, deterministic.
//! - [`zone`]: static zone data from RFC 1035 master files and the authoritative lookup.
//! - [`health`]: probes of each region's upstream, rise/fall thresholds, the monitor loop.
//! - [`snapshot`]: everything a query needs, built off the hot path and swapped in whole.
//! - [`expiring`]: the bounded map with idle and age expiry behind the proxy's affinity.
//! - [`sticky`]: per-instance memory of which region each client was answered with.
//! - [`flags`]: the operators' per-region `endpoint_enabled` flags, persisted atomically.
//! - [`metrics`]: hot-path counters and histograms, `process_*`, and their Prometheus rendering.
//! - [`logs`]: log format (text or JSON, colour only on a terminal), filter, and the optional
//!   DNS query and proxy access logs.
//! - [`live`]: what the front ends share at run time: current snapshot, sticky table, clock.
//! - [`dns`]: the DNS front end (UDP fast path and batched sockets, TCP with connection caps).
//! - [`proxy`]: the OCI-aware HTTP reverse proxy front end (pingora): affinity, upload tokens,
//!   fallbacks.
//! - [`admin`]: the admin API, `/metrics` and the dashboard page on their own listener.
//! - [`client`]: the CLI's client for a running server's admin API.
//! - [`supervise`]: the panic hook and the supervisors that replace a panicked worker.
//! - [`limits`]: process limits raised at start (open files).
//! - [`memory`]: huge pages and prefetch for the DNS path's big tables (sticky, GeoIP tree).
//! - [`shared`]: the shared state of a `[cluster]` as last read from etcd, and its pure rules
//!   (key layout, health quorum, rendezvous ownership of jobs).
//! - [`cluster`]: `[cluster]`: flags, health verdicts and membership shared through etcd.
//! - [`replication`]: copies every push to the other regions (events, reconcile, queue,
//!   status table); its own module beside the proxy, fed by one event hook in it.
//! - [`app`]: wiring: loads config, builds the snapshot, starts the front ends.

pub mod admin;
pub mod app;
pub mod client;
pub mod cluster;
pub mod config;
pub mod dns;
pub mod expiring;
pub mod flags;
pub mod geo;
pub mod health;
pub mod limits;
pub mod live;
pub mod logs;
pub mod memory;
pub mod metrics;
pub mod proxy;
pub mod replication;
pub mod routing;
pub mod shared;
pub mod snapshot;
pub mod sticky;
pub mod supervise;
pub mod zone;

/// An error with its whole `source()` chain, one cause per ": ", for logs and CLI output.
pub fn report(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The text a panic was raised with (`panic!("...")` or a formatted message), for logs.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}
