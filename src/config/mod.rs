//! The TOML config: serde `Raw*` types (exactly what the file may say, unknown keys rejected)
//! validated into [`Config`] (what the rest of Berth may rely on).
//!
//! Owns: file reading, syntax and semantic checks, path resolution (paths are relative to the
//! config file), defaults. Does not own: loading the zone files or the GeoIP database those
//! paths name (that is [`crate::snapshot`]'s job), nor any runtime state.
//!
//! One module per section, each holding its `Raw*` serde type, its validated type and the
//! `Validator` method that turns one into the other: `dns`, `admin`, `proxy`,
//! `sticky`, `zone`, `region` (with its probe), `routed_name` (with `policy`).
//! `parse` holds the typed parsers every section shares (socket address, duration, size,
//! URL, domain name) and `secret` the token/secret sources and their one reader.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod admin;
mod cluster;
mod dns;
mod parse;
mod policy;
mod proxy;
mod region;
mod replication;
mod routed_name;
mod secret;
mod sticky;
mod zone;

pub use admin::{AdminConfig, DEFAULT_ADMIN_HEADER_TIMEOUT, DEFAULT_ADMIN_MAX_CONNECTIONS};
pub use cluster::{ClusterConfig, ClusterIdentity, HealthQuorum};
pub use dns::{CookieConfig, CookieSecret, DnsConfig, RateLimitConfig};
pub use parse::{parse_duration, parse_size, UpstreamUrl};
pub use policy::{Policy, PolicyKind};
pub use proxy::{
    ProxyConfig, ProxyTls, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MANIFEST_BUFFER_LIMIT,
    DEFAULT_PASSIVE_FALL, DEFAULT_PUSH_AFFINITY, DEFAULT_READ_FALLBACK_MAX,
    DEFAULT_REQUEST_HEAD_TIMEOUT, DEFAULT_UPLOAD_TOKEN_LIFETIME, DEFAULT_UPSTREAM_IDLE_TIMEOUT,
    DEFAULT_UPSTREAM_READ_TIMEOUT, DEFAULT_UPSTREAM_WRITE_TIMEOUT,
};
pub use region::{ProbeConfig, ProbeKind, Region};
pub use replication::{
    RegistryCredential, ReplicationConfig, ReplicationRule, RetryConfig, DEFAULT_RECONCILE_EVERY,
    DEFAULT_REPLICATION_CONCURRENCY,
};
pub use routed_name::{
    LatencyEntry, RoutedName, DEFAULT_BASE_MS, DEFAULT_INFLATION, DEFAULT_TIE_BAND_MS, DEFAULT_TTL,
};
pub use secret::{SecretError, TokenSource};
pub use sticky::StickyConfig;
pub use zone::ZoneConfig;

use admin::RawAdmin;
use cluster::RawCluster;
use dns::RawDns;
use proxy::RawProxy;
use region::RawRegion;
use replication::RawReplication;
use routed_name::RawRoutedName;
use sticky::RawSticky;
use zone::RawZone;

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
    replication: Option<RawReplication>,
    cluster: Option<RawCluster>,
    log: Option<RawLog>,
}

/// `[log]`: the optional per-request logs (the log format and level are command-line flags,
/// since they apply before any config is read).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    access: Option<bool>,
    queries: Option<bool>,
}

/// `[log]`, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogConfig {
    /// One line per proxied request (client, method, repository, region, status, bytes,
    /// duration, request id), target `berth::access`.
    pub access: bool,
    /// One line per DNS query (client, transport, name, type, rcode), target `berth::query`.
    pub queries: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGeoip {
    database: String,
}

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
    pub log: LogConfig,
    /// `[cluster]`: shared state in etcd; `None` is a single instance on its state file.
    pub cluster: Option<ClusterConfig>,
    /// `[replication]`; None: regions are not copied to each other.
    pub replication: Option<ReplicationConfig>,
}

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

/// Turns `Raw*` into validated types; every error names the file and the key.
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
        let zones = self.zones(raw.zones)?;
        let mut regions = self.regions(raw.regions)?;
        let routed_names = self.routed_names(raw.routed_names, &regions, &zones)?;
        let proxy = self.proxy(raw.proxy.unwrap_or_default(), &regions, &routed_names)?;
        // Probes trust what the proxy trusts unless a region says otherwise.
        for r in &mut regions {
            if r.probe.ca_file.is_none() {
                r.probe.ca_file.clone_from(&proxy.upstream_ca_file);
            }
        }
        let cluster = self.cluster(raw.cluster)?;
        let replication = self.replication(raw.replication, &regions, &admin.state_file)?;
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
            log: raw.log.map_or_else(LogConfig::default, |l| LogConfig {
                access: l.access.unwrap_or(false),
                queries: l.queries.unwrap_or(false),
            }),
            cluster,
            replication,
        })
    }
}
