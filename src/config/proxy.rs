//! `[proxy]`: the OCI-aware HTTP proxy front end: listeners, the upload-token secret,
//! affinity, fallbacks and timeouts. Checks that each region it serves has a usable upstream.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::parse::RawSize;
use super::{ConfigError, Region, RoutedName, TokenSource, UpstreamUrl, Validator};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    listen: Option<String>,
    tls_listen: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    name: Option<String>,
    secret_env: Option<String>,
    secret_file: Option<String>,
    push_affinity: Option<String>,
    affinity_capacity: Option<usize>,
    manifest_buffer_limit: Option<RawSize>,
    read_fallback_max: Option<usize>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    upstream_ca_file: Option<String>,
    threads: Option<usize>,
    connect_timeout: Option<String>,
    upstream_read_timeout: Option<String>,
    upstream_write_timeout: Option<String>,
    upstream_idle_timeout: Option<String>,
    passive_fall: Option<u32>,
    request_head_timeout: Option<String>,
    upload_token_lifetime: Option<String>,
    shutdown_grace: Option<String>,
}

/// The OCI-aware HTTP proxy front end (README, "The registry proxy").
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    /// Plain HTTP listener; None (and no `tls`): no proxy.
    pub listen: Option<SocketAddr>,
    pub tls: Option<ProxyTls>,
    /// Index in [`Config::routed_names`](super::Config::routed_names) of the name whose regions the proxy serves.
    pub routed_name: usize,
    /// The HMAC key for upload-session tokens, shared by every instance; None: a random
    /// per-process key (sessions then only work through this instance).
    pub secret: Option<TokenSource>,
    /// How long (client key, repository) stays pinned to a region after its last request.
    pub push_affinity: Duration,
    /// Most affinities remembered; past it expired entries go first, then the least recent.
    pub affinity_capacity: usize,
    /// Largest manifest PUT body buffered for the safety net; larger ones are refused.
    pub manifest_buffer_limit: usize,
    /// Other regions a 404 read (GET/HEAD manifest, GET blob) is retried on; 0 turns it off.
    pub read_fallback_max: usize,
    /// Peers whose `X-Forwarded-For` / `X-Forwarded-Host` / `X-Forwarded-Proto` are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// CA bundle for HTTPS upstreams; None: the system roots.
    pub upstream_ca_file: Option<PathBuf>,
    /// Worker threads of the proxy's own runtime; 0 means one per core.
    pub threads: usize,
    /// Giving up on connecting to a region (TCP and TLS) after this (then the next region,
    /// or an error).
    pub connect_timeout: Duration,
    /// Longest wait for one read from a region (response head or the next piece of a body):
    /// per read, so a multi-GB blob streams for as long as data keeps coming.
    pub upstream_read_timeout: Duration,
    /// Longest wait for one write to a region to be accepted (per write, as reads).
    pub upstream_write_timeout: Duration,
    /// A kept-alive connection to a region unused this long is closed.
    pub upstream_idle_timeout: Duration,
    /// Consecutive timeouts or failed connections to a region that mark it down (passive
    /// health) until its next probe or a request that succeeds; 0 turns it off.
    pub passive_fall: u32,
    /// A client must deliver a whole request head (request line and headers) within this.
    pub request_head_timeout: Duration,
    /// An upload session's token is refused this long after it was issued; every answer in
    /// the session issues a fresh one, so only a session idle this long is cut.
    pub upload_token_lifetime: Duration,
    /// On stop, requests in flight get this long to finish.
    pub shutdown_grace: Duration,
}

/// The proxy's HTTPS listener: certificate chain and key in PEM files, read again on reload.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyTls {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ProxyConfig {
    /// Is any proxy listener configured?
    pub fn enabled(&self) -> bool {
        self.listen.is_some() || self.tls.is_some()
    }
}

pub const DEFAULT_PUSH_AFFINITY: Duration = Duration::from_secs(15 * 60);
pub const DEFAULT_MANIFEST_BUFFER_LIMIT: usize = 4 << 20;
pub const DEFAULT_READ_FALLBACK_MAX: usize = 2;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_UPSTREAM_READ_TIMEOUT: Duration = Duration::from_secs(120);
pub const DEFAULT_UPSTREAM_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_PASSIVE_FALL: u32 = 3;
pub const DEFAULT_REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_UPLOAD_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

impl Validator<'_> {
    pub(super) fn proxy(
        &self,
        raw: RawProxy,
        regions: &[Region],
        routed_names: &[RoutedName],
    ) -> Result<ProxyConfig, ConfigError> {
        let example = "127.0.0.1:8080";
        let listen = self.opt_socket_addr("proxy.listen", raw.listen.as_deref(), example)?;
        let tls_listen =
            self.opt_socket_addr("proxy.tls_listen", raw.tls_listen.as_deref(), example)?;
        let tls = self.proxy_tls(tls_listen, raw.tls_cert, raw.tls_key)?;
        let secret = self.token_source(
            "proxy",
            ("secret_env", raw.secret_env),
            ("secret_file", raw.secret_file),
        )?;
        let push_affinity = self.duration(
            "proxy.push_affinity",
            raw.push_affinity,
            DEFAULT_PUSH_AFFINITY,
        )?;
        let affinity_capacity = raw.affinity_capacity.unwrap_or(1_000_000);
        if affinity_capacity == 0 {
            return Err(self.err("proxy.affinity_capacity", "must be at least 1"));
        }
        let manifest_buffer_limit = self.manifest_buffer_limit(raw.manifest_buffer_limit)?;
        let trusted_proxies = self.trusted_proxies(&raw.trusted_proxies)?;
        let t = |key: &str, v: Option<String>, default| self.duration(key, v, default);
        let connect_timeout = t(
            "proxy.connect_timeout",
            raw.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
        )?;
        let upstream_read_timeout = t(
            "proxy.upstream_read_timeout",
            raw.upstream_read_timeout,
            DEFAULT_UPSTREAM_READ_TIMEOUT,
        )?;
        let upstream_write_timeout = t(
            "proxy.upstream_write_timeout",
            raw.upstream_write_timeout,
            DEFAULT_UPSTREAM_WRITE_TIMEOUT,
        )?;
        let upstream_idle_timeout = t(
            "proxy.upstream_idle_timeout",
            raw.upstream_idle_timeout,
            DEFAULT_UPSTREAM_IDLE_TIMEOUT,
        )?;
        let request_head_timeout = t(
            "proxy.request_head_timeout",
            raw.request_head_timeout,
            DEFAULT_REQUEST_HEAD_TIMEOUT,
        )?;
        let upload_token_lifetime = t(
            "proxy.upload_token_lifetime",
            raw.upload_token_lifetime,
            DEFAULT_UPLOAD_TOKEN_LIFETIME,
        )?;
        if upload_token_lifetime < Duration::from_secs(60) {
            return Err(self.err(
                "proxy.upload_token_lifetime",
                "must be at least 1m: a session's requests come minutes apart on slow links",
            ));
        }
        let shutdown_grace = t(
            "proxy.shutdown_grace",
            raw.shutdown_grace,
            Duration::from_secs(10),
        )?;
        let enabled = listen.is_some() || tls.is_some();
        let routed_name = self.proxy_routed_name(raw.name, enabled, regions, routed_names)?;
        Ok(ProxyConfig {
            listen,
            tls,
            routed_name,
            secret,
            push_affinity,
            affinity_capacity,
            manifest_buffer_limit,
            read_fallback_max: raw.read_fallback_max.unwrap_or(DEFAULT_READ_FALLBACK_MAX),
            trusted_proxies,
            upstream_ca_file: raw.upstream_ca_file.map(|f| self.resolve(&f)),
            threads: raw.threads.unwrap_or(0),
            connect_timeout,
            upstream_read_timeout,
            upstream_write_timeout,
            upstream_idle_timeout,
            passive_fall: raw.passive_fall.unwrap_or(DEFAULT_PASSIVE_FALL),
            request_head_timeout,
            upload_token_lifetime,
            shutdown_grace,
        })
    }

    /// The HTTPS listener: an address, a certificate and a key, all three or none.
    fn proxy_tls(
        &self,
        listen: Option<SocketAddr>,
        cert: Option<String>,
        key: Option<String>,
    ) -> Result<Option<ProxyTls>, ConfigError> {
        match (listen, cert, key) {
            (Some(listen), Some(cert), Some(key)) => Ok(Some(ProxyTls {
                listen,
                cert: self.resolve(&cert),
                key: self.resolve(&key),
            })),
            (Some(_), _, _) => {
                Err(self.err("proxy.tls_listen", "needs tls_cert and tls_key (PEM files)"))
            }
            (None, Some(_), _) | (None, None, Some(_)) => Err(self.err(
                "proxy.tls_cert",
                "tls_cert and tls_key only apply with tls_listen",
            )),
            (None, None, None) => Ok(None),
        }
    }

    fn manifest_buffer_limit(&self, raw: Option<RawSize>) -> Result<usize, ConfigError> {
        let limit = self.size(
            "proxy.manifest_buffer_limit",
            raw,
            DEFAULT_MANIFEST_BUFFER_LIMIT,
        )?;
        if limit < 4096 {
            return Err(self.err(
                "proxy.manifest_buffer_limit",
                format!("{limit} bytes is too small for a manifest (at least 4096)"),
            ));
        }
        Ok(limit)
    }

    fn trusted_proxies(&self, raw: &[String]) -> Result<Vec<IpNet>, ConfigError> {
        let mut trusted_proxies = Vec::new();
        for (i, c) in raw.iter().enumerate() {
            let net: IpNet = c
                .parse()
                .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    self.err(
                        format!("proxy.trusted_proxies[{i}]"),
                        format!("{c:?} is not a network such as \"10.0.0.0/8\" or an address"),
                    )
                })?;
            trusted_proxies.push(net.trunc());
        }
        Ok(trusted_proxies)
    }

    /// The routed name the proxy serves (the first one unless `proxy.name` says); when the
    /// proxy is on, each of its regions needs an upstream URL without a path.
    fn proxy_routed_name(
        &self,
        name: Option<String>,
        enabled: bool,
        regions: &[Region],
        routed_names: &[RoutedName],
    ) -> Result<usize, ConfigError> {
        let routed_name = match name {
            Some(n) => {
                let n = n.trim_end_matches('.').to_ascii_lowercase();
                routed_names
                    .iter()
                    .position(|r| r.name == n)
                    .ok_or_else(|| self.err("proxy.name", format!("{n} is not a routed name")))?
            }
            None => 0,
        };
        if !enabled {
            return Ok(routed_name);
        }
        let Some(rn) = routed_names.get(routed_name) else {
            return Err(self.err(
                "proxy",
                "the proxy needs a routed name whose regions it serves; none is configured",
            ));
        };
        for &id in &rn.regions {
            self.proxy_upstream(&regions[id], id, &rn.name)?;
        }
        Ok(routed_name)
    }

    /// Region `id`'s upstream, as the proxy needs it: present, a URL, no path.
    fn proxy_upstream(&self, region: &Region, id: usize, served: &str) -> Result<(), ConfigError> {
        let key = format!("region[{id}] ({}).upstream", region.name);
        let Some(u) = &region.upstream else {
            return Err(self.err(
                key,
                format!(
                    "the proxy serves {served} and needs an upstream URL for each of its regions"
                ),
            ));
        };
        let url = UpstreamUrl::parse(u).ok_or_else(|| {
            self.err(
                &key,
                format!("{u:?} is not a URL such as \"http://127.0.0.1:5001\""),
            )
        })?;
        if !url.path.is_empty() {
            return Err(self.err(
                key,
                format!("{u:?} has a path; the proxy forwards /v2/ to the upstream's root"),
            ));
        }
        Ok(())
    }
}
