//! The typed parsers every section shares: socket address, duration, size, domain name and
//! upstream URL. The free functions return the bare message; the `Validator` methods put the
//! file and key in front of it.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Validator};

/// A size: bytes as an integer, or a string with a unit ("4MiB").
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawSize {
    Bytes(u64),
    Text(String),
}

impl Validator<'_> {
    /// `address:port`; `example` is the address the message suggests.
    pub(super) fn socket_addr(
        &self,
        key: impl fmt::Display,
        s: &str,
        example: &str,
    ) -> Result<SocketAddr, ConfigError> {
        s.parse().map_err(|_| {
            self.err(
                key,
                format!("{s:?} is not an address:port such as \"{example}\""),
            )
        })
    }

    /// An optional `address:port` (see `Validator::socket_addr`).
    pub(super) fn opt_socket_addr(
        &self,
        key: &str,
        s: Option<&str>,
        example: &str,
    ) -> Result<Option<SocketAddr>, ConfigError> {
        s.map(|s| self.socket_addr(key, s, example)).transpose()
    }

    /// A duration such as "5s", or `default` when the key is absent.
    pub(super) fn duration(
        &self,
        key: impl fmt::Display,
        s: Option<String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match s {
            Some(t) => parse_duration(&t).map_err(|m| self.err(key, m)),
            None => Ok(default),
        }
    }

    /// A size in bytes or with a unit, or `default` when the key is absent.
    pub(super) fn size(
        &self,
        key: &str,
        s: Option<RawSize>,
        default: usize,
    ) -> Result<usize, ConfigError> {
        match s {
            None => Ok(default),
            Some(RawSize::Bytes(b)) => Ok(usize::try_from(b).unwrap_or(usize::MAX)),
            Some(RawSize::Text(t)) => parse_size(&t).map_err(|m| self.err(key, m)),
        }
    }

    /// A DNS name: lowercase, no trailing dot, labels of 1-63 octets, 255 in all.
    pub(super) fn domain(&self, key: &str, name: &str) -> Result<String, ConfigError> {
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

pub(super) fn parse_status_range(s: &str) -> Option<(u16, u16)> {
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
        None => {
            let v = s.trim().parse().ok()?;
            (v, v)
        }
    };
    ((100..=599).contains(&lo) && (100..=599).contains(&hi) && lo <= hi).then_some((lo, hi))
}
