//! The TOML config: serde `Raw*` types (exactly what the file may say, unknown keys rejected)
//! validated into [`Config`] (what the rest of Berth may rely on).
//!
//! Owns: file reading, syntax and semantic checks, path resolution (paths are relative to the
//! config file), defaults. Does not own: loading the zone files or the GeoIP database those
//! paths name (that is [`crate::snapshot`]'s job), nor any runtime state.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

/// Index of a region in [`Config::regions`]; stable for the life of one config.
pub type RegionId = usize;

/// Everything wrong with a config file, worded for the operator who has to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, unknown keys and wrong types; toml's message carries line, column and key.
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    /// A value that parses but makes no sense; `key` is the dotted path inside the file.
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Raw: the file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    dns: Option<RawDns>,
    geoip: Option<RawGeoip>,
    sticky: Option<RawSticky>,
    admin: Option<RawAdmin>,
    proxy: Option<RawProxy>,
    #[serde(default, rename = "zone")]
    zones: Vec<RawZone>,
    #[serde(default, rename = "region")]
    regions: Vec<RawRegion>,
    #[serde(default, rename = "routed_name")]
    routed_names: Vec<RawRoutedName>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGeoip {
    database: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    token_env: Option<String>,
    token_file: Option<String>,
    state_file: Option<String>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    header_timeout: Option<String>,
    max_connections: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProxy {
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

/// A size: bytes as an integer, or a string with a unit ("4MiB").
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSticky {
    idle: Option<String>,
    max_age: Option<String>,
    capacity: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawZone {
    origin: String,
    file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    name: String,
    latitude: f64,
    longitude: f64,
    #[serde(default)]
    a: Vec<String>,
    #[serde(default)]
    aaaa: Vec<String>,
    cname: Option<String>,
    upstream: Option<String>,
    probe: Option<RawProbe>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    kind: Option<String>,
    path: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    fall: Option<u32>,
    rise: Option<u32>,
    healthy_status: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoutedName {
    name: String,
    policy: Option<String>,
    ttl: Option<u32>,
    regions: Vec<String>,
    client_prefix_v4: Option<u8>,
    client_prefix_v6: Option<u8>,
    tie_band_ms: Option<f64>,
    base_ms: Option<f64>,
    inflation: Option<f64>,
    default_order: Option<Vec<String>>,
    #[serde(default)]
    latency: Vec<RawLatency>,
    order: Option<Vec<String>>,
    weights: Option<HashMap<String, u32>>,
    geo_map: Option<HashMap<String, String>>,
    geo_fallback: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLatency {
    cidr: String,
    ms: HashMap<String, f64>,
}

// ---------------------------------------------------------------------------------------------
// Validated.

/// A validated config. Every name, address and reference in it has been checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this came from; reloads read it again.
    pub path: PathBuf,
    pub dns: DnsConfig,
    /// Absolute path of the GeoIP database, if the config names one.
    pub geoip: Option<PathBuf>,
    pub sticky: StickyConfig,
    pub admin: AdminConfig,
    pub proxy: ProxyConfig,
    pub zones: Vec<ZoneConfig>,
    /// Regions in file order; a [`RegionId`] indexes this.
    pub regions: Vec<Region>,
    pub routed_names: Vec<RoutedName>,
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

/// The admin API / dashboard listener and where operator state lives.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// None: no admin listener (flags still load from the state file).
    pub listen: Option<SocketAddr>,
    /// Where the bearer token for changes comes from; None: changes are refused.
    pub token: Option<TokenSource>,
    /// The operators' region flags; default: `<config stem>.state.json` beside the config.
    pub state_file: PathBuf,
    /// Host names (with or without a port) the listener answers besides its own address and
    /// `localhost`: a DNS-rebinding page's requests carry its own name and are refused.
    pub allowed_hosts: Vec<String>,
    /// A connection must deliver a whole request head within this, or it is closed
    /// (slowloris: a byte now and then would otherwise keep it open for good).
    pub header_timeout: Duration,
    /// Connections served at once; more wait in the kernel's accept queue. The admin
    /// listener shares the process's descriptors with DNS, so it must not eat them all.
    pub max_connections: usize,
}

pub const DEFAULT_ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 64;

/// The OCI-aware HTTP proxy front end (design section 5).
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    /// Plain HTTP listener; None (and no `tls`): no proxy.
    pub listen: Option<SocketAddr>,
    pub tls: Option<ProxyTls>,
    /// Index in [`Config::routed_names`] of the name whose regions the proxy serves.
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

#[derive(Debug, Clone, PartialEq)]
pub enum TokenSource {
    Env(String),
    File(PathBuf),
}

/// Per-instance memory of client -> region (design section 3).
#[derive(Debug, Clone, PartialEq)]
pub struct StickyConfig {
    /// Forget a client this long after its last query.
    pub idle: Duration,
    /// Forget a client this long after it was first given its region, however active.
    pub max_age: Duration,
    /// Most clients remembered; past it idle entries go first, then the least recent.
    pub capacity: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ZoneConfig {
    /// Lowercase, without the trailing dot.
    pub origin: String,
    pub file: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    pub name: String,
    pub latitude: f64,
    pub longitude: f64,
    pub a: Vec<Ipv4Addr>,
    pub aaaa: Vec<Ipv6Addr>,
    /// CNAME mode: routed names answer with a CNAME to this name instead of addresses.
    pub cname: Option<String>,
    /// Base URL of the registry replica, for the proxy and the probe.
    pub upstream: Option<String>,
    pub probe: ProbeConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProbeKind {
    /// GET of `path` on the upstream; healthy when the status is in `healthy_status`.
    Http,
    /// A TCP connect to the upstream's host and port.
    Tcp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProbeConfig {
    pub kind: ProbeKind,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures that take a healthy region down.
    pub fall: u32,
    /// Consecutive successes that bring a down region back.
    pub rise: u32,
    /// Inclusive status ranges that count as healthy.
    pub healthy_status: Vec<(u16, u16)>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            kind: ProbeKind::Http,
            path: "/v2/".to_string(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            fall: 3,
            rise: 2,
            healthy_status: vec![(200, 200), (401, 401)],
        }
    }
}

/// How a routed name picks among its regions (names as in Azure Traffic Manager).
#[derive(Debug, Clone, PartialEq)]
pub enum Policy {
    /// Lowest estimated latency; near-ties broken by rendezvous hash.
    Performance,
    /// First eligible region in this order.
    Priority { order: Vec<RegionId> },
    /// Eligible regions by weight, chosen by a weighted rendezvous hash of the client key.
    Weighted { weights: Vec<(RegionId, u32)> },
    /// Country or continent code -> region, then the fallback list.
    Geographic {
        map: Vec<(String, RegionId)>,
        fallback: Vec<RegionId>,
    },
}

impl Policy {
    pub fn name(&self) -> &'static str {
        match self {
            Policy::Performance => "performance",
            Policy::Priority { .. } => "priority",
            Policy::Weighted { .. } => "weighted",
            Policy::Geographic { .. } => "geographic",
        }
    }
}

/// Operator-measured latencies for clients in one network; they override the distance model.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyEntry {
    pub network: IpNet,
    pub ms: Vec<(RegionId, f64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RoutedName {
    /// Lowercase, without the trailing dot.
    pub name: String,
    pub policy: Policy,
    pub ttl: u32,
    /// The regions this name may answer with, in file order.
    pub regions: Vec<RegionId>,
    /// Client keys are truncated to these prefixes; the ECS scope we answer with.
    pub client_prefix_v4: u8,
    pub client_prefix_v6: u8,
    /// Regions whose estimate is within this of the best are a tie.
    pub tie_band_ms: f64,
    /// Distance model: RTT ms = base_ms + km / 100 * inflation.
    pub base_ms: f64,
    pub inflation: f64,
    /// Order used when the client has no GeoIP location and no latency entry.
    pub default_order: Vec<RegionId>,
    /// Most specific network first, so the first match wins.
    pub latency: Vec<LatencyEntry>,
}

impl RoutedName {
    /// The prefix a client address of this family is truncated to.
    pub fn client_prefix(&self, addr: &IpAddr) -> u8 {
        match addr {
            IpAddr::V4(_) => self.client_prefix_v4,
            IpAddr::V6(_) => self.client_prefix_v6,
        }
    }
}

pub const DEFAULT_TTL: u32 = 30;
pub const DEFAULT_TIE_BAND_MS: f64 = 5.0;
pub const DEFAULT_BASE_MS: f64 = 5.0;
pub const DEFAULT_INFLATION: f64 = 1.5;

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parse and validate config text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        // Every key has a default, so an empty file would be a valid config that serves
        // nothing; it is far more likely a truncated write, and a reload must not take every
        // zone down because of one.
        let blank = |l: &str| l.trim().is_empty() || l.trim_start().starts_with('#');
        if text.lines().all(blank) {
            return Err(ConfigError::Syntax {
                path: path.to_path_buf(),
                message: "the file is empty: nothing to serve (was it truncated?)".to_string(),
            });
        }
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        Validator { path }.config(raw)
    }

    pub fn region_id(&self, name: &str) -> Option<RegionId> {
        self.regions.iter().position(|r| r.name == name)
    }

    pub fn routed_name(&self, name: &str) -> Option<&RoutedName> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.routed_names.iter().find(|r| r.name == name)
    }
}

struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn err(&self, key: impl fmt::Display, message: impl fmt::Display) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            message: message.to_string(),
        }
    }

    /// Paths in a config are relative to the directory holding the config file.
    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let dns = self.dns(raw.dns)?;
        let geoip = raw.geoip.map(|g| self.resolve(&g.database));
        let sticky = self.sticky(raw.sticky)?;
        let admin = self.admin(raw.admin)?;
        let raw_proxy = raw.proxy;

        let mut zones = Vec::new();
        let mut seen = HashSet::new();
        for (i, z) in raw.zones.into_iter().enumerate() {
            let key = format!("zone[{i}]");
            let origin = self.domain(&format!("{key}.origin"), &z.origin)?;
            if !seen.insert(origin.clone()) {
                return Err(self.err(
                    format!("{key}.origin"),
                    format!("zone {origin} is listed twice"),
                ));
            }
            zones.push(ZoneConfig {
                origin,
                file: self.resolve(&z.file),
            });
        }

        let mut regions: Vec<Region> = Vec::new();
        for (i, r) in raw.regions.into_iter().enumerate() {
            let region = self.region(i, r)?;
            if regions.iter().any(|o| o.name == region.name) {
                return Err(self.err(
                    format!("region[{i}].name"),
                    format!("region {:?} is defined twice", region.name),
                ));
            }
            regions.push(region);
        }

        let mut routed_names: Vec<RoutedName> = Vec::new();
        for (i, r) in raw.routed_names.into_iter().enumerate() {
            let rn = self.routed_name(i, r, &regions, &zones)?;
            if routed_names.iter().any(|o| o.name == rn.name) {
                return Err(self.err(
                    format!("routed_name[{i}].name"),
                    format!("routed name {} is defined twice", rn.name),
                ));
            }
            routed_names.push(rn);
        }
        let proxy = self.proxy(raw_proxy.unwrap_or_default(), &regions, &routed_names)?;
        if !routed_names.is_empty() && dns.listen.is_empty() {
            return Err(self.err(
                "dns.listen",
                "routed names are configured but no DNS listen address is",
            ));
        }

        Ok(Config {
            path: self.path.to_path_buf(),
            dns,
            geoip,
            sticky,
            admin,
            proxy,
            zones,
            regions,
            routed_names,
        })
    }

    fn admin(&self, raw: Option<RawAdmin>) -> Result<AdminConfig, ConfigError> {
        let raw = raw.unwrap_or(RawAdmin {
            listen: None,
            token_env: None,
            token_file: None,
            state_file: None,
            allowed_hosts: Vec::new(),
            header_timeout: None,
            max_connections: None,
        });
        let listen = match raw.listen {
            Some(l) => Some(l.parse::<SocketAddr>().map_err(|_| {
                self.err(
                    "admin.listen",
                    format!("{l:?} is not an address:port such as \"127.0.0.1:9180\""),
                )
            })?),
            None => None,
        };
        let token = match (raw.token_env, raw.token_file) {
            (Some(_), Some(_)) => {
                return Err(self.err("admin.token_file", "give token_env or token_file, not both"))
            }
            (Some(v), None) if v.is_empty() => {
                return Err(self.err("admin.token_env", "names no environment variable"))
            }
            (Some(v), None) => Some(TokenSource::Env(v)),
            (None, Some(f)) => Some(TokenSource::File(self.resolve(&f))),
            (None, None) => None,
        };
        let state_file = match raw.state_file {
            Some(f) => self.resolve(&f),
            None => crate::flags::Flags::default_path(self.path),
        };
        let mut allowed_hosts = Vec::new();
        for (i, h) in raw.allowed_hosts.iter().enumerate() {
            let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
            let valid = !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b));
            if !valid {
                return Err(self.err(
                    format!("admin.allowed_hosts[{i}]"),
                    format!(
                        "{:?} is not a host name or host:port such as \"berth.example.net\"",
                        raw.allowed_hosts[i]
                    ),
                ));
            }
            allowed_hosts.push(h);
        }
        let header_timeout = match raw.header_timeout {
            Some(t) => parse_duration(&t).map_err(|m| self.err("admin.header_timeout", m))?,
            None => DEFAULT_ADMIN_HEADER_TIMEOUT,
        };
        let max_connections = raw.max_connections.unwrap_or(DEFAULT_ADMIN_MAX_CONNECTIONS);
        if max_connections == 0 {
            return Err(self.err("admin.max_connections", "must be at least 1"));
        }
        Ok(AdminConfig {
            listen,
            token,
            state_file,
            allowed_hosts,
            header_timeout,
            max_connections,
        })
    }

    fn proxy(
        &self,
        raw: RawProxy,
        regions: &[Region],
        routed_names: &[RoutedName],
    ) -> Result<ProxyConfig, ConfigError> {
        let addr = |key: &str, v: &Option<String>| -> Result<Option<SocketAddr>, ConfigError> {
            match v {
                Some(l) => Ok(Some(l.parse::<SocketAddr>().map_err(|_| {
                    self.err(
                        key,
                        format!("{l:?} is not an address:port such as \"127.0.0.1:8080\""),
                    )
                })?)),
                None => Ok(None),
            }
        };
        let listen = addr("proxy.listen", &raw.listen)?;
        let tls = match (
            addr("proxy.tls_listen", &raw.tls_listen)?,
            raw.tls_cert,
            raw.tls_key,
        ) {
            (Some(listen), Some(cert), Some(key)) => Some(ProxyTls {
                listen,
                cert: self.resolve(&cert),
                key: self.resolve(&key),
            }),
            (Some(_), _, _) => {
                return Err(self.err("proxy.tls_listen", "needs tls_cert and tls_key (PEM files)"))
            }
            (None, Some(_), _) | (None, None, Some(_)) => {
                return Err(self.err(
                    "proxy.tls_cert",
                    "tls_cert and tls_key only apply with tls_listen",
                ))
            }
            (None, None, None) => None,
        };
        let secret = match (raw.secret_env, raw.secret_file) {
            (Some(_), Some(_)) => {
                return Err(self.err(
                    "proxy.secret_file",
                    "give secret_env or secret_file, not both",
                ))
            }
            (Some(v), None) if v.is_empty() => {
                return Err(self.err("proxy.secret_env", "names no environment variable"))
            }
            (Some(v), None) => Some(TokenSource::Env(v)),
            (None, Some(f)) => Some(TokenSource::File(self.resolve(&f))),
            (None, None) => None,
        };
        let push_affinity = match raw.push_affinity {
            Some(t) => parse_duration(&t).map_err(|m| self.err("proxy.push_affinity", m))?,
            None => DEFAULT_PUSH_AFFINITY,
        };
        let affinity_capacity = raw.affinity_capacity.unwrap_or(1_000_000);
        if affinity_capacity == 0 {
            return Err(self.err("proxy.affinity_capacity", "must be at least 1"));
        }
        let manifest_buffer_limit = match raw.manifest_buffer_limit {
            None => DEFAULT_MANIFEST_BUFFER_LIMIT,
            Some(RawSize::Bytes(b)) => usize::try_from(b).unwrap_or(usize::MAX),
            Some(RawSize::Text(t)) => {
                parse_size(&t).map_err(|m| self.err("proxy.manifest_buffer_limit", m))?
            }
        };
        if manifest_buffer_limit < 4096 {
            return Err(self.err(
                "proxy.manifest_buffer_limit",
                format!(
                    "{manifest_buffer_limit} bytes is too small for a manifest (at least 4096)"
                ),
            ));
        }
        let mut trusted_proxies = Vec::new();
        for (i, c) in raw.trusted_proxies.iter().enumerate() {
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
        let timeout = |key: &str, v: Option<String>, default: Duration| match v {
            Some(t) => parse_duration(&t).map_err(|m| self.err(key, m)),
            None => Ok(default),
        };
        let connect_timeout = timeout(
            "proxy.connect_timeout",
            raw.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
        )?;
        let upstream_read_timeout = timeout(
            "proxy.upstream_read_timeout",
            raw.upstream_read_timeout,
            DEFAULT_UPSTREAM_READ_TIMEOUT,
        )?;
        let upstream_write_timeout = timeout(
            "proxy.upstream_write_timeout",
            raw.upstream_write_timeout,
            DEFAULT_UPSTREAM_WRITE_TIMEOUT,
        )?;
        let upstream_idle_timeout = timeout(
            "proxy.upstream_idle_timeout",
            raw.upstream_idle_timeout,
            DEFAULT_UPSTREAM_IDLE_TIMEOUT,
        )?;
        let request_head_timeout = timeout(
            "proxy.request_head_timeout",
            raw.request_head_timeout,
            DEFAULT_REQUEST_HEAD_TIMEOUT,
        )?;
        let upload_token_lifetime = timeout(
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
        let shutdown_grace = match raw.shutdown_grace {
            Some(t) => parse_duration(&t).map_err(|m| self.err("proxy.shutdown_grace", m))?,
            None => Duration::from_secs(10),
        };
        let enabled = listen.is_some() || tls.is_some();
        let routed_name = match raw.name {
            Some(n) => {
                let n = n.trim_end_matches('.').to_ascii_lowercase();
                routed_names
                    .iter()
                    .position(|r| r.name == n)
                    .ok_or_else(|| self.err("proxy.name", format!("{n} is not a routed name")))?
            }
            None => 0,
        };
        if enabled {
            let Some(rn) = routed_names.get(routed_name) else {
                return Err(self.err(
                    "proxy",
                    "the proxy needs a routed name whose regions it serves; none is configured",
                ));
            };
            for &id in &rn.regions {
                let key = format!("region[{id}] ({}).upstream", regions[id].name);
                let Some(u) = &regions[id].upstream else {
                    return Err(self.err(
                        key,
                        format!(
                            "the proxy serves {} and needs an upstream URL for each of its regions",
                            rn.name
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
            }
        }
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

    fn sticky(&self, raw: Option<RawSticky>) -> Result<StickyConfig, ConfigError> {
        let mut s = StickyConfig {
            idle: Duration::from_secs(15 * 60),
            max_age: Duration::from_secs(3600),
            capacity: 1_000_000,
        };
        let Some(raw) = raw else { return Ok(s) };
        if let Some(t) = raw.idle {
            s.idle = parse_duration(&t).map_err(|m| self.err("sticky.idle", m))?;
        }
        if let Some(t) = raw.max_age {
            s.max_age = parse_duration(&t).map_err(|m| self.err("sticky.max_age", m))?;
        }
        if let Some(c) = raw.capacity {
            if c == 0 {
                return Err(self.err("sticky.capacity", "must be at least 1"));
            }
            s.capacity = c;
        }
        Ok(s)
    }

    fn dns(&self, raw: Option<RawDns>) -> Result<DnsConfig, ConfigError> {
        let raw = raw.unwrap_or(RawDns {
            listen: Vec::new(),
            udp_threads: None,
            tcp_idle_timeout: None,
            tcp_max_connections: None,
            tcp_max_connections_per_client: None,
            max_udp_payload: None,
            rate_limit: None,
            cookie: None,
        });
        let mut listen = Vec::new();
        for (i, l) in raw.listen.iter().enumerate() {
            let addr: SocketAddr = l.parse().map_err(|_| {
                self.err(
                    format!("dns.listen[{i}]"),
                    format!("{l:?} is not an address:port such as \"127.0.0.1:1053\""),
                )
            })?;
            listen.push(addr);
        }
        let tcp_idle_timeout = match raw.tcp_idle_timeout {
            Some(t) => parse_duration(&t).map_err(|m| self.err("dns.tcp_idle_timeout", m))?,
            None => Duration::from_secs(10),
        };
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
            r.window = parse_duration(&t).map_err(|m| self.err("dns.rate_limit.window", m))?;
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
        c.secret = match (raw.secret, raw.secret_file) {
            (Some(_), Some(_)) => {
                return Err(self.err(
                    "dns.cookie.secret_file",
                    "give secret or secret_file, not both",
                ))
            }
            (Some(hex), None) => {
                crate::dns::cookie::Secret::from_hex(&hex)
                    .map_err(|m| self.err("dns.cookie.secret", m))?;
                Some(CookieSecret::Hex(hex))
            }
            (None, Some(f)) => Some(CookieSecret::File(self.resolve(&f))),
            (None, None) => None,
        };
        Ok(c)
    }

    /// A DNS name: lowercase, no trailing dot, labels of 1-63 octets, 255 in all.
    fn domain(&self, key: &str, name: &str) -> Result<String, ConfigError> {
        let n = name.trim_end_matches('.').to_ascii_lowercase();
        if n.is_empty() {
            return Err(self.err(key, "a domain name is required, not an empty string"));
        }
        if n.len() > 253 {
            return Err(self.err(key, format!("{name:?} is longer than 253 characters")));
        }
        for label in n.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(self.err(
                    key,
                    format!("{name:?} is not a valid domain name (empty or over-long label)"),
                ));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(self.err(
                    key,
                    format!(
                        "{name:?} is not a valid domain name (only letters, digits, '-' and '_')"
                    ),
                ));
            }
        }
        Ok(n)
    }

    fn region(&self, i: usize, r: RawRegion) -> Result<Region, ConfigError> {
        let key = format!("region[{i}]");
        if r.name.is_empty()
            || !r
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(self.err(
                format!("{key}.name"),
                format!(
                    "{:?} is not a region name (lowercase letters, digits and '-')",
                    r.name
                ),
            ));
        }
        let key = format!("region[{i}] ({})", r.name);
        if !(-90.0..=90.0).contains(&r.latitude) {
            return Err(self.err(
                format!("{key}.latitude"),
                format!("{} is outside -90..90", r.latitude),
            ));
        }
        if !(-180.0..=180.0).contains(&r.longitude) {
            return Err(self.err(
                format!("{key}.longitude"),
                format!("{} is outside -180..180", r.longitude),
            ));
        }
        let mut a = Vec::new();
        for (j, s) in r.a.iter().enumerate() {
            a.push(s.parse::<Ipv4Addr>().map_err(|_| {
                self.err(
                    format!("{key}.a[{j}]"),
                    format!("{s:?} is not an IPv4 address"),
                )
            })?);
        }
        let mut aaaa = Vec::new();
        for (j, s) in r.aaaa.iter().enumerate() {
            aaaa.push(s.parse::<Ipv6Addr>().map_err(|_| {
                self.err(
                    format!("{key}.aaaa[{j}]"),
                    format!("{s:?} is not an IPv6 address"),
                )
            })?);
        }
        let cname = match r.cname {
            Some(c) => Some(self.domain(&format!("{key}.cname"), &c)?),
            None => None,
        };
        if cname.is_none() && a.is_empty() && aaaa.is_empty() {
            return Err(self.err(
                &key,
                "a region needs DNS answers: a and/or aaaa addresses, or a cname",
            ));
        }
        if cname.is_some() && !(a.is_empty() && aaaa.is_empty()) {
            return Err(self.err(
                format!("{key}.cname"),
                "cname excludes a and aaaa: in CNAME mode the addresses come from the target name",
            ));
        }
        let upstream = match r.upstream {
            Some(u) => {
                let ok = (u.starts_with("http://") || u.starts_with("https://"))
                    && u.split("://").nth(1).is_some_and(|rest| !rest.is_empty());
                if !ok {
                    return Err(self.err(
                        format!("{key}.upstream"),
                        format!("{u:?} is not an http:// or https:// URL"),
                    ));
                }
                Some(u.trim_end_matches('/').to_string())
            }
            None => None,
        };
        let probe = self.probe(&key, r.probe)?;
        Ok(Region {
            name: r.name,
            latitude: r.latitude,
            longitude: r.longitude,
            a,
            aaaa,
            cname,
            upstream,
            probe,
        })
    }

    fn probe(&self, key: &str, raw: Option<RawProbe>) -> Result<ProbeConfig, ConfigError> {
        let mut p = ProbeConfig::default();
        let Some(raw) = raw else { return Ok(p) };
        if let Some(kind) = raw.kind {
            p.kind = match kind.as_str() {
                "http" => ProbeKind::Http,
                "tcp" => ProbeKind::Tcp,
                other => {
                    return Err(self.err(
                        format!("{key}.probe.kind"),
                        format!("{other:?} is not a probe kind (\"http\" or \"tcp\")"),
                    ))
                }
            };
        }
        if let Some(path) = raw.path {
            if !path.starts_with('/') {
                return Err(self.err(
                    format!("{key}.probe.path"),
                    format!("{path:?} must start with '/'"),
                ));
            }
            p.path = path;
        }
        if let Some(t) = raw.interval {
            p.interval =
                parse_duration(&t).map_err(|m| self.err(format!("{key}.probe.interval"), m))?;
        }
        if let Some(t) = raw.timeout {
            p.timeout =
                parse_duration(&t).map_err(|m| self.err(format!("{key}.probe.timeout"), m))?;
        }
        if p.timeout > p.interval {
            return Err(self.err(
                format!("{key}.probe.timeout"),
                format!(
                    "timeout {:?} is longer than the interval {:?}",
                    p.timeout, p.interval
                ),
            ));
        }
        for (field, v) in [("fall", raw.fall), ("rise", raw.rise)] {
            if v == Some(0) {
                return Err(self.err(format!("{key}.probe.{field}"), "must be at least 1"));
            }
        }
        p.fall = raw.fall.unwrap_or(p.fall);
        p.rise = raw.rise.unwrap_or(p.rise);
        if let Some(list) = raw.healthy_status {
            let mut ranges = Vec::new();
            for (j, s) in list.iter().enumerate() {
                ranges.push(parse_status_range(s).ok_or_else(|| {
                    self.err(
                        format!("{key}.probe.healthy_status[{j}]"),
                        format!("{s:?} is not a status or range such as \"200\" or \"200-299\""),
                    )
                })?);
            }
            if ranges.is_empty() {
                return Err(self.err(
                    format!("{key}.probe.healthy_status"),
                    "an empty list would make every region unhealthy",
                ));
            }
            p.healthy_status = ranges;
        }
        Ok(p)
    }

    fn region_ref(
        &self,
        key: &str,
        name: &str,
        regions: &[Region],
        allowed: &[RegionId],
    ) -> Result<RegionId, ConfigError> {
        let id = regions
            .iter()
            .position(|r| r.name == name)
            .ok_or_else(|| self.err(key, format!("no region is named {name:?}")))?;
        if !allowed.contains(&id) {
            return Err(self.err(
                key,
                format!("region {name:?} is not in this routed name's regions"),
            ));
        }
        Ok(id)
    }

    fn routed_name(
        &self,
        i: usize,
        r: RawRoutedName,
        regions: &[Region],
        zones: &[ZoneConfig],
    ) -> Result<RoutedName, ConfigError> {
        let name = self.domain(&format!("routed_name[{i}].name"), &r.name)?;
        let key = format!("routed_name[{i}] ({name})");
        if !zones
            .iter()
            .any(|z| name == z.origin || name.ends_with(&format!(".{}", z.origin)))
        {
            return Err(self.err(
                format!("{key}.name"),
                format!("{name} is not inside any configured zone"),
            ));
        }
        if r.regions.is_empty() {
            return Err(self.err(format!("{key}.regions"), "at least one region is required"));
        }
        let all: Vec<RegionId> = (0..regions.len()).collect();
        let mut ids = Vec::new();
        for (j, rn) in r.regions.iter().enumerate() {
            let id = self.region_ref(&format!("{key}.regions[{j}]"), rn, regions, &all)?;
            if ids.contains(&id) {
                return Err(self.err(
                    format!("{key}.regions[{j}]"),
                    format!("region {rn:?} is listed twice"),
                ));
            }
            ids.push(id);
        }
        let refs = |field: &str, list: &[String]| -> Result<Vec<RegionId>, ConfigError> {
            let mut out = Vec::new();
            for (j, n) in list.iter().enumerate() {
                let id = self.region_ref(&format!("{key}.{field}[{j}]"), n, regions, &ids)?;
                if out.contains(&id) {
                    return Err(self.err(
                        format!("{key}.{field}[{j}]"),
                        format!("region {n:?} is listed twice"),
                    ));
                }
                out.push(id);
            }
            Ok(out)
        };

        let policy_name = r.policy.as_deref().unwrap_or("performance");
        // Options that belong to one policy are rejected under another, so a typo'd policy
        // never silently ignores what the operator configured.
        let stray = |field: &str, present: bool, owner: &str| -> Result<(), ConfigError> {
            if present && policy_name != owner {
                return Err(self.err(
                    format!("{key}.{field}"),
                    format!("only applies to policy \"{owner}\", this name uses \"{policy_name}\""),
                ));
            }
            Ok(())
        };
        stray("order", r.order.is_some(), "priority")?;
        stray("weights", r.weights.is_some(), "weighted")?;
        stray("geo_map", r.geo_map.is_some(), "geographic")?;
        stray("geo_fallback", r.geo_fallback.is_some(), "geographic")?;
        stray("latency", !r.latency.is_empty(), "performance")?;
        stray("default_order", r.default_order.is_some(), "performance")?;

        let policy = match policy_name {
            "performance" => Policy::Performance,
            "priority" => Policy::Priority {
                order: match &r.order {
                    Some(o) => {
                        let o = refs("order", o)?;
                        if o.len() != ids.len() {
                            return Err(self.err(
                                format!("{key}.order"),
                                "must list every region of this routed name exactly once",
                            ));
                        }
                        o
                    }
                    None => ids.clone(),
                },
            },
            "weighted" => {
                let w = r.weights.as_ref().ok_or_else(|| {
                    self.err(
                        format!("{key}.weights"),
                        "policy \"weighted\" needs weights",
                    )
                })?;
                let mut weights = Vec::new();
                // File order of regions, so the result does not depend on HashMap order.
                for &id in &ids {
                    weights.push((id, w.get(&regions[id].name).copied().unwrap_or(0)));
                }
                for n in w.keys() {
                    self.region_ref(&format!("{key}.weights.{n}"), n, regions, &ids)?;
                }
                if weights.iter().all(|(_, w)| *w == 0) {
                    return Err(self.err(
                        format!("{key}.weights"),
                        "at least one region needs a weight above 0",
                    ));
                }
                Policy::Weighted { weights }
            }
            "geographic" => {
                let m = r.geo_map.as_ref().ok_or_else(|| {
                    self.err(
                        format!("{key}.geo_map"),
                        "policy \"geographic\" needs geo_map",
                    )
                })?;
                let mut map = Vec::new();
                let mut codes: Vec<&String> = m.keys().collect();
                codes.sort();
                for code in codes {
                    let valid = (code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase()))
                        || code == "*";
                    if !valid {
                        return Err(self.err(
                            format!("{key}.geo_map.{code}"),
                            "keys are ISO country codes (\"JP\"), continent codes (\"EU\") or \"*\"",
                        ));
                    }
                    let id =
                        self.region_ref(&format!("{key}.geo_map.{code}"), &m[code], regions, &ids)?;
                    map.push((code.clone(), id));
                }
                let fallback = match &r.geo_fallback {
                    Some(f) => refs("geo_fallback", f)?,
                    None => Vec::new(),
                };
                Policy::Geographic { map, fallback }
            }
            other => {
                return Err(self.err(
                    format!("{key}.policy"),
                    format!(
                        "{other:?} is not a policy (performance, priority, weighted, geographic)"
                    ),
                ))
            }
        };

        let ttl = r.ttl.unwrap_or(DEFAULT_TTL);
        if ttl == 0 || ttl > 86400 {
            return Err(self.err(format!("{key}.ttl"), format!("{ttl} is outside 1..86400")));
        }
        let client_prefix_v4 = r.client_prefix_v4.unwrap_or(24);
        if client_prefix_v4 > 32 {
            return Err(self.err(
                format!("{key}.client_prefix_v4"),
                format!("{client_prefix_v4} is over 32"),
            ));
        }
        let client_prefix_v6 = r.client_prefix_v6.unwrap_or(56);
        if client_prefix_v6 > 128 {
            return Err(self.err(
                format!("{key}.client_prefix_v6"),
                format!("{client_prefix_v6} is over 128"),
            ));
        }
        let nonneg = |field: &str, v: Option<f64>, default: f64| -> Result<f64, ConfigError> {
            let v = v.unwrap_or(default);
            if !v.is_finite() || v < 0.0 {
                return Err(self.err(
                    format!("{key}.{field}"),
                    format!("{v} must be a number of at least 0"),
                ));
            }
            Ok(v)
        };
        let tie_band_ms = nonneg("tie_band_ms", r.tie_band_ms, DEFAULT_TIE_BAND_MS)?;
        let base_ms = nonneg("base_ms", r.base_ms, DEFAULT_BASE_MS)?;
        let inflation = nonneg("inflation", r.inflation, DEFAULT_INFLATION)?;
        let default_order = match &r.default_order {
            Some(o) => {
                let mut o = refs("default_order", o)?;
                // Regions left out of the list come after it, in file order.
                for id in &ids {
                    if !o.contains(id) {
                        o.push(*id);
                    }
                }
                o
            }
            None => ids.clone(),
        };
        let mut latency = Vec::new();
        for (j, l) in r.latency.iter().enumerate() {
            let lkey = format!("{key}.latency[{j}]");
            let network: IpNet = l.cidr.parse().map_err(|_| {
                self.err(
                    format!("{lkey}.cidr"),
                    format!("{:?} is not a network such as \"10.1.0.0/16\"", l.cidr),
                )
            })?;
            if network.trunc() != network {
                return Err(self.err(
                    format!("{lkey}.cidr"),
                    format!(
                        "{network} has host bits set; did you mean {}?",
                        network.trunc()
                    ),
                ));
            }
            let mut ms = Vec::new();
            let mut names: Vec<&String> = l.ms.keys().collect();
            names.sort();
            for n in names {
                let id = self.region_ref(&format!("{lkey}.ms.{n}"), n, regions, &ids)?;
                let v = l.ms[n];
                if !v.is_finite() || v < 0.0 {
                    return Err(self.err(
                        format!("{lkey}.ms.{n}"),
                        format!("{v} must be a number of milliseconds, at least 0"),
                    ));
                }
                ms.push((id, v));
            }
            if ms.is_empty() {
                return Err(self.err(format!("{lkey}.ms"), "names no region"));
            }
            latency.push(LatencyEntry { network, ms });
        }
        // Most specific first: the first entry containing a client is the best one.
        latency.sort_by_key(|e| std::cmp::Reverse(e.network.prefix_len()));

        Ok(RoutedName {
            name,
            policy,
            ttl,
            regions: ids,
            client_prefix_v4,
            client_prefix_v6,
            tie_band_ms,
            base_ms,
            inflation,
            default_order,
            latency,
        })
    }
}

/// "5s", "500ms", "2m", "1h": what an operator writes for a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit; write e.g. \"5s\", \"500ms\", \"15m\""))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as \"5s\""))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{s:?} has an unknown unit (ms, s, m or h)")),
    };
    if d.is_zero() {
        return Err(format!("{s:?} must be longer than zero"));
    }
    Ok(d)
}

/// The parts of a region's upstream URL the proxy needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub tls: bool,
    /// Host as written, without brackets for an IPv6 literal: an address or a name to resolve.
    pub host: String,
    pub port: u16,
    /// `host[:port]` as written: what a registry configured with `http.host` puts in URLs.
    pub authority: String,
    /// Any path after the authority, without a trailing '/' (the proxy wants none).
    pub path: String,
}

impl UpstreamUrl {
    /// `http[s]://host[:port][/path]`; None if it is not one.
    pub fn parse(url: &str) -> Option<UpstreamUrl> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            (true, url.strip_prefix("https://")?)
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.is_empty() || authority.contains('@') {
            return None;
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']')?;
            let port = match after {
                "" => default_port,
                p => p.strip_prefix(':')?.parse().ok()?,
            };
            (host, port)
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, p.parse().ok()?),
                None => (authority, default_port),
            }
        };
        if host.is_empty() {
            return None;
        }
        Some(UpstreamUrl {
            tls,
            host: host.to_string(),
            port,
            authority: authority.to_string(),
            path: path.trim_end_matches('/').to_string(),
        })
    }
}

/// "4MiB", "512KiB", "1GiB", "4096" (bytes): what an operator writes for a size.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as \"4MiB\""))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        _ => return Err(format!("{s:?} has an unknown unit (B, KiB, MiB or GiB)")),
    };
    n.checked_mul(mult)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn parse_status_range(s: &str) -> Option<(u16, u16)> {
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
        None => {
            let v = s.trim().parse().ok()?;
            (v, v)
        }
    };
    ((100..=599).contains(&lo) && (100..=599).contains(&hi) && lo <= hi).then_some((lo, hi))
}
