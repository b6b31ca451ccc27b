//! `[cluster]`: several Berth instances sharing operator flags, health verdicts and
//! membership through etcd. Without this section Berth runs alone on its state file.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::secret::TokenSource;
use super::{ConfigError, Validator};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    etcd: Vec<String>,
    prefix: Option<String>,
    instance: Option<String>,
    health_quorum: Option<String>,
    lease_ttl: Option<String>,
    ca_file: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    user: Option<String>,
    password_env: Option<String>,
    password_file: Option<String>,
    events_max: Option<usize>,
}

/// How the live instances' probe verdicts for one region become the shared verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthQuorum {
    /// Down when more than half of the live instances that reported say down.
    Majority,
    /// Up while any live instance sees it up.
    Any,
    /// Up only while every live instance sees it up.
    All,
}

impl HealthQuorum {
    pub fn name(self) -> &'static str {
        match self {
            HealthQuorum::Majority => "majority",
            HealthQuorum::Any => "any",
            HealthQuorum::All => "all",
        }
    }
}

/// Client certificate for etcd's mutual TLS.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterIdentity {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Where the shared state lives and who this instance is (see `crate::cluster`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// etcd client endpoints, `http://` or `https://`.
    pub etcd: Vec<String>,
    /// Key prefix, so several Berth clusters can share one etcd; no trailing slash.
    pub prefix: String,
    /// This instance's name among the members (default: the host name).
    pub instance: String,
    pub health_quorum: HealthQuorum,
    /// How long a dead instance's membership and verdicts outlive it.
    pub lease_ttl: Duration,
    /// CA for `https://` endpoints (default: system roots).
    pub ca_file: Option<PathBuf>,
    pub identity: Option<ClusterIdentity>,
    pub user: Option<String>,
    pub password: Option<TokenSource>,
    /// How many events the shared list in etcd keeps (the newest).
    pub events_max: usize,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "berth".to_string())
}

impl Validator<'_> {
    pub(super) fn cluster(
        &self,
        raw: Option<RawCluster>,
    ) -> Result<Option<ClusterConfig>, ConfigError> {
        let Some(raw) = raw else { return Ok(None) };
        if raw.etcd.is_empty() {
            return Err(self.err(
                "cluster.etcd",
                "name at least one etcd endpoint, such as \"http://127.0.0.1:2379\"",
            ));
        }
        for e in &raw.etcd {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(self.err(
                    "cluster.etcd",
                    format!("{e:?} is not an http:// or https:// endpoint"),
                ));
            }
        }
        let prefix = raw.prefix.unwrap_or_else(|| "/berth".to_string());
        if !prefix.starts_with('/') || prefix.len() < 2 || prefix.ends_with('/') {
            return Err(self.err(
                "cluster.prefix",
                format!("{prefix:?} must start with / and not end with one, such as \"/berth\""),
            ));
        }
        let instance = raw.instance.unwrap_or_else(host_name);
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if instance.is_empty() || !instance.chars().all(ok) {
            return Err(self.err(
                "cluster.instance",
                format!("{instance:?} must be letters, digits, '-', '_' or '.'"),
            ));
        }
        let health_quorum = match raw.health_quorum.as_deref() {
            None | Some("majority") => HealthQuorum::Majority,
            Some("any") => HealthQuorum::Any,
            Some("all") => HealthQuorum::All,
            Some(other) => {
                return Err(self.err(
                    "cluster.health_quorum",
                    format!("{other:?} is not one of \"majority\", \"any\", \"all\""),
                ))
            }
        };
        let lease_ttl =
            self.duration("cluster.lease_ttl", raw.lease_ttl, Duration::from_secs(5))?;
        if lease_ttl < Duration::from_secs(2) {
            return Err(self.err("cluster.lease_ttl", "must be at least 2s"));
        }
        let identity = match (raw.cert_file, raw.key_file) {
            (None, None) => None,
            (Some(c), Some(k)) => Some(ClusterIdentity {
                cert_file: self.resolve(&c),
                key_file: self.resolve(&k),
            }),
            _ => {
                return Err(self.err(
                    "cluster.cert_file",
                    "cert_file and key_file go together (the client certificate and its key)",
                ))
            }
        };
        let password = match (raw.password_env, raw.password_file) {
            (None, None) => None,
            (Some(v), None) => Some(TokenSource::Env(v)),
            (None, Some(f)) => Some(TokenSource::File(self.resolve(&f))),
            _ => {
                return Err(self.err(
                    "cluster.password_env",
                    "set password_env or password_file, not both",
                ))
            }
        };
        if password.is_some() != raw.user.is_some() {
            return Err(self.err(
                "cluster.user",
                "user and a password (password_env or password_file) go together",
            ));
        }
        Ok(Some(ClusterConfig {
            etcd: raw.etcd,
            prefix,
            instance,
            health_quorum,
            lease_ttl,
            ca_file: raw.ca_file.map(|c| self.resolve(&c)),
            identity,
            user: raw.user,
            password,
            events_max: match raw.events_max {
                None => 1000,
                Some(n) if (1..=100_000).contains(&n) => n,
                Some(n) => {
                    return Err(self.err(
                        "cluster.events_max",
                        format!("{n} is not between 1 and 100000 (the default is 1000)"),
                    ))
                }
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, HealthQuorum};
    use std::path::Path;

    fn parse(cluster: &str) -> Result<Config, String> {
        let text = format!("[dns]\nlisten = [\"127.0.0.1:1053\"]\n[cluster]\n{cluster}");
        Config::parse(&text, Path::new("/etc/berth/berth.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_errors_name_the_key() {
        let c = parse("etcd = [\"http://127.0.0.1:2379\"]\ninstance = \"a\"")
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(c.prefix, "/berth");
        assert_eq!(c.health_quorum, HealthQuorum::Majority);
        assert_eq!(c.lease_ttl, std::time::Duration::from_secs(5));
        for (text, want) in [
            ("etcd = []", "/etc/berth/berth.toml: cluster.etcd: name at least one etcd endpoint, such as \"http://127.0.0.1:2379\""),
            ("etcd = [\"127.0.0.1:2379\"]", "/etc/berth/berth.toml: cluster.etcd: \"127.0.0.1:2379\" is not an http:// or https:// endpoint"),
            ("etcd = [\"http://e:2379\"]\nhealth_quorum = \"most\"", "/etc/berth/berth.toml: cluster.health_quorum: \"most\" is not one of \"majority\", \"any\", \"all\""),
            ("etcd = [\"http://e:2379\"]\nprefix = \"berth/\"", "/etc/berth/berth.toml: cluster.prefix: \"berth/\" must start with / and not end with one, such as \"/berth\""),
            ("etcd = [\"http://e:2379\"]\ninstance = \"a b\"", "/etc/berth/berth.toml: cluster.instance: \"a b\" must be letters, digits, '-', '_' or '.'"),
            ("etcd = [\"http://e:2379\"]\ncert_file = \"c.pem\"", "/etc/berth/berth.toml: cluster.cert_file: cert_file and key_file go together (the client certificate and its key)"),
            ("etcd = [\"http://e:2379\"]\nevents_max = 0", "/etc/berth/berth.toml: cluster.events_max: 0 is not between 1 and 100000 (the default is 1000)"),
            ("etcd = [\"http://e:2379\"]\nuser = \"u\"", "/etc/berth/berth.toml: cluster.user: user and a password (password_env or password_file) go together"),
        ] {
            assert_eq!(parse(text).unwrap_err(), want, "{text}");
        }
        assert!(parse("etcd = [\"http://e:2379\"]\nendpoints = []")
            .unwrap_err()
            .contains("unknown field `endpoints`"));
    }
}
