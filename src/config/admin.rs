//! `[admin]`: the admin API / dashboard listener, its token and the operators' state file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, TokenSource, Validator};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    listen: Option<String>,
    token_env: Option<String>,
    token_file: Option<String>,
    state_file: Option<String>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    header_timeout: Option<String>,
    max_connections: Option<usize>,
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

impl Validator<'_> {
    pub(super) fn admin(&self, raw: Option<RawAdmin>) -> Result<AdminConfig, ConfigError> {
        let raw = raw.unwrap_or_default();
        let listen =
            self.opt_socket_addr("admin.listen", raw.listen.as_deref(), "127.0.0.1:9180")?;
        let token = self.token_source(
            "admin",
            ("token_env", raw.token_env),
            ("token_file", raw.token_file),
        )?;
        let state_file = match raw.state_file {
            Some(f) => self.resolve(&f),
            None => crate::flags::Flags::default_path(self.path),
        };
        let allowed_hosts = self.allowed_hosts(&raw.allowed_hosts)?;
        let header_timeout = self.duration(
            "admin.header_timeout",
            raw.header_timeout,
            DEFAULT_ADMIN_HEADER_TIMEOUT,
        )?;
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

    /// Host names, lowercase and without a trailing dot, as the Host header is compared.
    fn allowed_hosts(&self, raw: &[String]) -> Result<Vec<String>, ConfigError> {
        let mut allowed_hosts = Vec::new();
        for (i, h) in raw.iter().enumerate() {
            let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
            let valid = !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b));
            if !valid {
                return Err(self.err(
                    format!("admin.allowed_hosts[{i}]"),
                    format!(
                        "{:?} is not a host name or host:port such as \"berth.example.net\"",
                        raw[i]
                    ),
                ));
            }
            allowed_hosts.push(h);
        }
        Ok(allowed_hosts)
    }
}
