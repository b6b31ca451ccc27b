//! `[dns]`: listeners and limits of the DNS front end, `[dns.rate_limit]` and `[dns.cookie]`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Validator};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    #[serde(default)]
    listen: Vec<String>,
    udp_threads: Option<usize>,
    tcp_idle_timeout: Option<String>,
    tcp_max_connections: Option<usize>,
    tcp_max_connections_per_client: Option<usize>,
    max_udp_payload: Option<u16>,
    rate_limit: Option<RawRateLimit>,
    cookie: Option<RawCookie>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    enabled: Option<bool>,
    responses_per_second: Option<u32>,
    window: Option<String>,
    slip: Option<u32>,
    ipv4_prefix: Option<u8>,
    ipv6_prefix: Option<u8>,
    table_size: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCookie {
    enabled: Option<bool>,
    secret: Option<String>,
    secret_file: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DnsConfig {
    /// Each address is served on both UDP and TCP.
    pub listen: Vec<SocketAddr>,
    /// UDP worker threads (one socket each, SO_REUSEPORT); 0 means one per core.
    pub udp_threads: usize,
    /// TCP connections idle longer than this are closed (RFC 7766 suggests seconds, not minutes).
    pub tcp_idle_timeout: Duration,
    /// Open TCP connections per listener: beyond it new ones are closed at once, so idle
    /// clients cannot use up the descriptors UDP, the admin API and probes need too.
    pub tcp_max_connections: usize,
    /// Open TCP connections per client (IPv4 address or IPv6 /64) per listener: one client
    /// cannot take the listener's whole allowance.
    pub tcp_max_connections_per_client: usize,
    /// Upper bound on the UDP payload we send, whatever the client advertises (RFC 9715 advice).
    pub max_udp_payload: u16,
    pub rate_limit: RateLimitConfig,
    pub cookie: CookieConfig,
}

/// UDP response rate limiting per client prefix (`[dns.rate_limit]`, see `dns::rrl`).
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    /// Off by default, as in BIND and Knot: resolvers of big providers legitimately send a
    /// lot from one prefix, and only the operator knows how much.
    pub enabled: bool,
    /// Answers per second one client prefix gets once its burst is spent.
    pub responses_per_second: u32,
    /// The burst: a prefix may get `responses_per_second` x `window` answers at once.
    pub window: Duration,
    /// Every `slip`-th limited answer goes out truncated (TC=1, empty) so real clients retry
    /// over TCP; the others are dropped. 0: drop all; 1: truncate all.
    pub slip: u32,
    /// The client prefixes that share a budget.
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// Entries of the fixed table (8 bytes each); more distinct prefixes replace the idlest.
    pub table_size: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: false,
            responses_per_second: 100,
            window: Duration::from_secs(2),
            slip: 2,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
            table_size: 65_536,
        }
    }
}

/// DNS COOKIE (`[dns.cookie]`, RFC 7873 / RFC 9018, see `dns::cookie`).
#[derive(Debug, Clone, PartialEq)]
pub struct CookieConfig {
    /// Answer COOKIE options (on by default; off: the option is ignored like any unknown one).
    pub enabled: bool,
    /// Where the server secret comes from; None: random per process (then only this instance
    /// accepts its own cookies, which costs clients behind one anycast address nothing but
    /// the rate-limit exemption).
    pub secret: Option<CookieSecret>,
}

impl Default for CookieConfig {
    fn default() -> Self {
        CookieConfig {
            enabled: true,
            secret: None,
        }
    }
}

/// The shared cookie secret: given in the config (32 hex digits, checked at load) or in a
/// file read at every load, so a reload rotates it.
#[derive(Clone, PartialEq)]
pub enum CookieSecret {
    Hex(String),
    File(PathBuf),
}

impl fmt::Debug for CookieSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Configs are printed in tests and logs; the secret is not.
            CookieSecret::Hex(_) => f.write_str("Hex(..)"),
            CookieSecret::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

impl Validator<'_> {
    pub(super) fn dns(&self, raw: Option<RawDns>) -> Result<DnsConfig, ConfigError> {
        let raw = raw.unwrap_or_default();
        let mut listen = Vec::new();
        for (i, l) in raw.listen.iter().enumerate() {
            listen.push(self.socket_addr(format!("dns.listen[{i}]"), l, "127.0.0.1:1053")?);
        }
        let tcp_idle_timeout = self.duration(
            "dns.tcp_idle_timeout",
            raw.tcp_idle_timeout,
            Duration::from_secs(10),
        )?;
        let tcp_max_connections = raw.tcp_max_connections.unwrap_or(1024);
        if tcp_max_connections == 0 {
            return Err(self.err(
                "dns.tcp_max_connections",
                "must be at least 1 (DNS over TCP is required, RFC 7766)",
            ));
        }
        let tcp_max_connections_per_client = raw.tcp_max_connections_per_client.unwrap_or(64);
        if tcp_max_connections_per_client == 0
            || tcp_max_connections_per_client > tcp_max_connections
        {
            return Err(self.err(
                "dns.tcp_max_connections_per_client",
                format!(
                    "{tcp_max_connections_per_client} must be between 1 and dns.tcp_max_connections ({tcp_max_connections})"
                ),
            ));
        }
        let max_udp_payload = raw.max_udp_payload.unwrap_or(1232);
        if max_udp_payload < 512 {
            return Err(self.err(
                "dns.max_udp_payload",
                format!("{max_udp_payload} is below the DNS minimum of 512"),
            ));
        }
        Ok(DnsConfig {
            listen,
            udp_threads: raw.udp_threads.unwrap_or(0),
            tcp_idle_timeout,
            tcp_max_connections,
            tcp_max_connections_per_client,
            max_udp_payload,
            rate_limit: self.rate_limit(raw.rate_limit)?,
            cookie: self.cookie(raw.cookie)?,
        })
    }

    fn rate_limit(&self, raw: Option<RawRateLimit>) -> Result<RateLimitConfig, ConfigError> {
        let mut r = RateLimitConfig::default();
        let Some(raw) = raw else { return Ok(r) };
        // Writing the section without `enabled` means wanting it.
        r.enabled = raw.enabled.unwrap_or(true);
        if let Some(n) = raw.responses_per_second {
            if !(1..=1_000_000).contains(&n) {
                return Err(self.err(
                    "dns.rate_limit.responses_per_second",
                    format!(
                        "{n} is not between 1 and 1000000 (to stop limiting, set enabled = false)"
                    ),
                ));
            }
            r.responses_per_second = n;
        }
        if let Some(t) = raw.window {
            r.window = self.duration("dns.rate_limit.window", Some(t.clone()), r.window)?;
            if r.window > Duration::from_secs(3600) {
                return Err(self.err(
                    "dns.rate_limit.window",
                    format!("{t:?} is longer than the 1h the limiter can hold"),
                ));
            }
        }
        if let Some(n) = raw.slip {
            if n > 10 {
                return Err(self.err(
                    "dns.rate_limit.slip",
                    format!("{n} is above 10; 0 drops every limited answer, 1 truncates every one, 2 every other"),
                ));
            }
            r.slip = n;
        }
        if let Some(p) = raw.ipv4_prefix {
            if p > 32 {
                return Err(self.err(
                    "dns.rate_limit.ipv4_prefix",
                    format!("{p} is not an IPv4 prefix length (0-32)"),
                ));
            }
            r.ipv4_prefix = p;
        }
        if let Some(p) = raw.ipv6_prefix {
            if p > 128 {
                return Err(self.err(
                    "dns.rate_limit.ipv6_prefix",
                    format!("{p} is not an IPv6 prefix length (0-128)"),
                ));
            }
            r.ipv6_prefix = p;
        }
        if let Some(n) = raw.table_size {
            if !(64..=1 << 24).contains(&n) {
                return Err(self.err(
                    "dns.rate_limit.table_size",
                    format!("{n} is not between 64 and 16777216 entries"),
                ));
            }
            r.table_size = n;
        }
        Ok(r)
    }

    fn cookie(&self, raw: Option<RawCookie>) -> Result<CookieConfig, ConfigError> {
        let mut c = CookieConfig::default();
        let Some(raw) = raw else { return Ok(c) };
        c.enabled = raw.enabled.unwrap_or(true);
        self.not_both(
            "dns.cookie",
            ("secret", raw.secret.is_some()),
            ("secret_file", raw.secret_file.is_some()),
        )?;
        c.secret = match (raw.secret, raw.secret_file) {
            (Some(hex), _) => {
                crate::dns::cookie::Secret::from_hex(&hex)
                    .map_err(|m| self.err("dns.cookie.secret", m))?;
                Some(CookieSecret::Hex(hex))
            }
            (None, Some(f)) => Some(CookieSecret::File(self.resolve(&f))),
            (None, None) => None,
        };
        Ok(c)
    }
}
