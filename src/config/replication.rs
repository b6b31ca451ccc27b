//! `[replication]`: which repositories and tags are copied to which regions, how hard to try,
//! where the queue is kept, and the registries' credentials. Absent: no replication.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Region, TokenSource, Validator};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReplication {
    concurrency: Option<usize>,
    retry: Option<RawRetry>,
    reconcile_every: Option<String>,
    queue_file: Option<String>,
    #[serde(default)]
    webhooks: Vec<String>,
    #[serde(default, rename = "rule")]
    rules: Vec<RawRule>,
    #[serde(default, rename = "credential")]
    credentials: Vec<RawCredential>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max: Option<u32>,
    initial: Option<String>,
    max_delay: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(default)]
    repositories: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    exclude_tags: Vec<String>,
    #[serde(default)]
    to: Vec<String>,
    #[serde(default)]
    webhooks: Vec<String>,
    delete: Option<bool>,
    bandwidth: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    region: String,
    username: Option<String>,
    password_env: Option<String>,
    password_file: Option<String>,
}

/// The replicator's settings (see `crate::replication`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicationConfig {
    /// Jobs in flight per destination region, and blob copies in flight per job.
    pub concurrency: usize,
    pub retry: RetryConfig,
    /// Period of the full comparison of every region (catches what events missed).
    pub reconcile_every: Duration,
    /// The persisted queue: default `<state file stem>.replication.json` beside the admin
    /// state file, so one instance's operator state lives in one place.
    pub queue_file: PathBuf,
    /// Receive a JSON event whenever an image becomes present in a region (every rule).
    pub webhooks: Vec<String>,
    pub rules: Vec<ReplicationRule>,
    pub credentials: Vec<RegistryCredential>,
}

/// Exponential backoff with jitter between attempts of one job.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Attempts before a job is given up (marked failed; the next reconcile tries again).
    pub max: u32,
    pub initial: Duration,
    pub max_delay: Duration,
}

/// One rule, in the spirit of Harbor's replication rules: repositories (globs, `*` within a
/// path segment, `**` across them) minus `exclude`, tags (globs) minus `exclude_tags`, copied
/// to the regions in `to`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicationRule {
    pub name: String,
    pub repositories: Vec<String>,
    pub exclude: Vec<String>,
    pub tags: Vec<String>,
    pub exclude_tags: Vec<String>,
    /// Region names, checked against `[[region]]`.
    pub to: Vec<String>,
    /// This rule's own webhook URLs (besides the global ones).
    pub webhooks: Vec<String>,
    /// Propagate manifest deletes (through Berth's proxy or a registry's notification) to
    /// `to`; default false: a delete stays in the region it was made in.
    pub delete: bool,
    /// Bytes per second streamed to each region in `to` (a token bucket per destination; a
    /// region several rules name gets the smallest); None: unlimited.
    pub bandwidth: Option<u64>,
}

/// Credentials Berth uses on one region's registry: basic, and for a bearer-token registry
/// the same pair is sent to the token realm. The password is read at start, never logged.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryCredential {
    pub region: String,
    pub username: String,
    pub password: TokenSource,
}

pub const DEFAULT_REPLICATION_CONCURRENCY: usize = 4;
pub const DEFAULT_RECONCILE_EVERY: Duration = Duration::from_secs(600);

impl Validator<'_> {
    pub(super) fn replication(
        &self,
        raw: Option<RawReplication>,
        regions: &[Region],
        state_file: &std::path::Path,
    ) -> Result<Option<ReplicationConfig>, ConfigError> {
        let Some(raw) = raw else { return Ok(None) };
        let concurrency = raw.concurrency.unwrap_or(DEFAULT_REPLICATION_CONCURRENCY);
        if concurrency == 0 || concurrency > 64 {
            return Err(self.err("replication.concurrency", "must be between 1 and 64"));
        }
        let retry = raw.retry.unwrap_or(RawRetry {
            max: None,
            initial: None,
            max_delay: None,
        });
        let retry = RetryConfig {
            max: retry.max.unwrap_or(8).max(1),
            initial: self.duration(
                "replication.retry.initial",
                retry.initial,
                Duration::from_secs(1),
            )?,
            max_delay: self.duration(
                "replication.retry.max_delay",
                retry.max_delay,
                Duration::from_secs(300),
            )?,
        };
        let reconcile_every = self.duration(
            "replication.reconcile_every",
            raw.reconcile_every,
            DEFAULT_RECONCILE_EVERY,
        )?;
        let queue_file = match raw.queue_file {
            Some(f) => self.resolve(&f),
            None => default_queue_file(state_file),
        };
        self.urls("replication.webhooks", &raw.webhooks)?;
        let mut rules = Vec::new();
        for (i, r) in raw.rules.into_iter().enumerate() {
            rules.push(self.rule(i, r, regions)?);
        }
        if rules.is_empty() {
            return Err(self.err(
                "replication.rule",
                "no rule: add [[replication.rule]] with repositories and to, or remove [replication]",
            ));
        }
        let mut credentials = Vec::new();
        for (i, c) in raw.credentials.into_iter().enumerate() {
            let key = format!("replication.credential[{i}]");
            if !regions.iter().any(|r| r.name == c.region) {
                return Err(self.err(
                    format!("{key}.region"),
                    format!("{:?} is not a [[region]] name", c.region),
                ));
            }
            let password = self
                .token_source(
                    &key,
                    ("password_env", c.password_env),
                    ("password_file", c.password_file),
                )?
                .ok_or_else(|| self.err(&key, "give password_env or password_file"))?;
            credentials.push(RegistryCredential {
                region: c.region,
                username: c
                    .username
                    .ok_or_else(|| self.err(format!("{key}.username"), "is required"))?,
                password,
            });
        }
        Ok(Some(ReplicationConfig {
            concurrency,
            retry,
            reconcile_every,
            queue_file,
            webhooks: raw.webhooks,
            rules,
            credentials,
        }))
    }

    fn rule(
        &self,
        i: usize,
        r: RawRule,
        regions: &[Region],
    ) -> Result<ReplicationRule, ConfigError> {
        let key = format!("replication.rule[{i}] ({})", r.name);
        if r.to.is_empty() {
            return Err(self.err(format!("{key}.to"), "names no region to copy to"));
        }
        for name in &r.to {
            if !regions.iter().any(|g| &g.name == name) {
                return Err(self.err(
                    format!("{key}.to"),
                    format!("{name:?} is not a [[region]] name"),
                ));
            }
            if !regions
                .iter()
                .any(|g| &g.name == name && g.upstream.is_some())
            {
                return Err(self.err(
                    format!("{key}.to"),
                    format!("region {name:?} has no upstream registry to copy to"),
                ));
            }
        }
        for (field, globs) in [
            ("repositories", &r.repositories),
            ("exclude", &r.exclude),
            ("tags", &r.tags),
            ("exclude_tags", &r.exclude_tags),
        ] {
            if globs.iter().any(|g| g.is_empty()) {
                return Err(self.err(format!("{key}.{field}"), "an empty glob matches nothing"));
            }
        }
        self.urls(&format!("{key}.webhooks"), &r.webhooks)?;
        let bandwidth = match &r.bandwidth {
            None => None,
            Some(b) => {
                Some(parse_bandwidth(b).map_err(|m| self.err(format!("{key}.bandwidth"), m))?)
            }
        };
        let or_all = |v: Vec<String>, all: &str| {
            if v.is_empty() {
                vec![all.to_string()]
            } else {
                v
            }
        };
        Ok(ReplicationRule {
            name: r.name,
            repositories: or_all(r.repositories, "**"),
            exclude: r.exclude,
            tags: or_all(r.tags, "*"),
            exclude_tags: r.exclude_tags,
            to: r.to,
            webhooks: r.webhooks,
            delete: r.delete.unwrap_or(false),
            bandwidth,
        })
    }

    fn urls(&self, key: &str, urls: &[String]) -> Result<(), ConfigError> {
        for u in urls {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(self.err(key, format!("{u:?} is not an http:// or https:// URL")));
            }
        }
        Ok(())
    }
}

/// `<dir>/<state stem>.replication.json` for the state file `<dir>/<state stem>.json`.
pub fn default_queue_file(state_file: &std::path::Path) -> PathBuf {
    let stem = state_file
        .file_stem()
        .map_or("berth".into(), |s| s.to_string_lossy().into_owned());
    state_file.with_file_name(format!("{stem}.replication.json"))
}

/// "50MiB/s" (also "50MiB" or "1048576/s"): bytes per second, at least 1 KiB/s (a smaller
/// limit would stall a copy for hours; leave the key out for no limit).
pub fn parse_bandwidth(s: &str) -> Result<u64, String> {
    let size = s.trim().strip_suffix("/s").unwrap_or(s.trim());
    let n = super::parse::parse_size(size).map_err(|_| {
        format!("{s:?} is not a rate such as \"50MiB/s\" (B, KiB, MiB or GiB per second)")
    })?;
    if n < 1024 {
        return Err(format!(
            "{s:?} is below 1KiB/s; leave bandwidth out for no limit"
        ));
    }
    Ok(n as u64)
}
