//! Where each region's upstream is on the network. Address literals are used as written;
//! host names are resolved in the background with hickory-resolver (system `resolv.conf` and
//! `/etc/hosts`), kept for their TTL and refreshed before it runs out, so the request path
//! only reads a table. A failed lookup keeps the last good addresses and is retried soon.
//! Not here: which region a request goes to, or connecting (pingora does that).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_resolver::TokioResolver;
use tokio::time::Instant;

use crate::config::UpstreamUrl;
use crate::live::Live;

/// Refresh no sooner than this even if the TTL is shorter, and no later than the longest.
const MIN_REFRESH: Duration = Duration::from_secs(5);
const MAX_REFRESH: Duration = Duration::from_secs(300);
/// A failed lookup is tried again after this.
const RETRY: Duration = Duration::from_secs(2);
/// How often the resolver looks for names a reload added.
const TICK: Duration = Duration::from_millis(500);

/// Resolved addresses by host name.
#[derive(Default)]
pub struct Addresses {
    table: ArcSwap<HashMap<String, Vec<IpAddr>>>,
}

impl Addresses {
    /// The address to connect to for `url`: the literal, or the first resolved address.
    /// None: a host name not resolved (yet).
    pub fn socket_addr(&self, url: &UpstreamUrl) -> Option<SocketAddr> {
        let ip = match url.host.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => *self
                .table
                .load()
                .get(&url.host.to_ascii_lowercase())?
                .first()?,
        };
        Some(SocketAddr::new(ip, url.port))
    }

    fn store(&self, host: &str, addrs: Vec<IpAddr>) {
        let mut next = HashMap::clone(&self.table.load());
        next.insert(host.to_string(), addrs);
        self.table.store(Arc::new(next));
    }

    /// Resolve the host names of the current config until `stop` turns true.
    pub async fn run(
        self: Arc<Self>,
        live: Arc<Live>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let resolver = match TokioResolver::builder_tokio().and_then(|b| b.build()) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the system resolver config: upstream host names will not resolve");
                return;
            }
        };
        let mut due: HashMap<String, Instant> = HashMap::new();
        loop {
            let snap = live.snapshot.load_full();
            let hosts: Vec<String> = snap
                .config
                .regions
                .iter()
                .filter_map(|r| UpstreamUrl::parse(r.upstream.as_deref()?))
                .filter(|u| u.host.parse::<IpAddr>().is_err())
                .map(|u| u.host.to_ascii_lowercase())
                .collect();
            due.retain(|h, _| hosts.contains(h));
            let now = Instant::now();
            for host in hosts {
                if due.get(&host).is_some_and(|t| *t > now) {
                    continue;
                }
                let next = match resolver.lookup_ip(host.as_str()).await {
                    Ok(found) => {
                        let addrs: Vec<IpAddr> = found.iter().collect();
                        let ttl = found
                            .valid_until()
                            .saturating_duration_since(std::time::Instant::now())
                            .clamp(MIN_REFRESH, MAX_REFRESH);
                        tracing::debug!(%host, ?addrs, ?ttl, "upstream resolved");
                        if addrs.is_empty() {
                            RETRY
                        } else {
                            self.store(&host, addrs);
                            ttl
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%host, error = %e, "cannot resolve upstream host; keeping the last addresses");
                        RETRY
                    }
                };
                due.insert(host, Instant::now() + next);
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_need_no_lookup_and_names_wait_for_one() {
        let a = Addresses::default();
        let lit = UpstreamUrl::parse("http://127.0.0.1:5001").expect("url");
        assert_eq!(
            a.socket_addr(&lit),
            Some("127.0.0.1:5001".parse().expect("addr"))
        );
        let v6 = UpstreamUrl::parse("https://[::1]").expect("url");
        assert_eq!(a.socket_addr(&v6), Some("[::1]:443".parse().expect("addr")));
        let name = UpstreamUrl::parse("http://Registry.Example:5000").expect("url");
        assert_eq!(a.socket_addr(&name), None);
        a.store("registry.example", vec!["192.0.2.7".parse().expect("ip")]);
        assert_eq!(
            a.socket_addr(&name),
            Some("192.0.2.7:5000".parse().expect("addr"))
        );
    }
}
