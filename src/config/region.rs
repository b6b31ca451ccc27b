//! `[[region]]`: where a region is, what DNS answers for it, its upstream and its probe.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::parse::parse_status_range;
use super::{ConfigError, RegionId, Validator};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegion {
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
    ca_file: Option<String>,
    host: Option<String>,
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
    /// PEM roots that HTTPS probes trust instead of the system's; defaults to
    /// `proxy.upstream_ca_file`, so the probe trusts what the proxy trusts.
    pub ca_file: Option<PathBuf>,
    /// `Host` header and TLS server name (SNI and the name the certificate must carry) when
    /// they differ from the upstream's host, e.g. an upstream given by address.
    pub host: Option<String>,
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
            ca_file: None,
            host: None,
        }
    }
}

impl Validator<'_> {
    pub(super) fn regions(&self, raw: Vec<RawRegion>) -> Result<Vec<Region>, ConfigError> {
        let mut regions: Vec<Region> = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let region = self.region(i, r)?;
            if regions.iter().any(|o| o.name == region.name) {
                return Err(self.err(
                    format!("region[{i}].name"),
                    format!("region {:?} is defined twice", region.name),
                ));
            }
            regions.push(region);
        }
        Ok(regions)
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
            Some(u) => Some(self.upstream(&format!("{key}.upstream"), u)?),
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

    /// An http:// or https:// URL, without its trailing '/'. The proxy checks more (see
    /// `proxy_upstream`); the probe parses it with [`super::UpstreamUrl`] when it runs.
    fn upstream(&self, key: &str, u: String) -> Result<String, ConfigError> {
        let ok = (u.starts_with("http://") || u.starts_with("https://"))
            && u.split("://").nth(1).is_some_and(|rest| !rest.is_empty());
        if !ok {
            return Err(self.err(key, format!("{u:?} is not an http:// or https:// URL")));
        }
        Ok(u.trim_end_matches('/').to_string())
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
        p.interval = self.duration(format!("{key}.probe.interval"), raw.interval, p.interval)?;
        p.timeout = self.duration(format!("{key}.probe.timeout"), raw.timeout, p.timeout)?;
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
        if let Some(f) = raw.ca_file {
            p.ca_file = Some(self.pem_certificates(&format!("{key}.probe.ca_file"), &f)?);
        }
        if let Some(h) = raw.host {
            p.host = Some(self.probe_host(&format!("{key}.probe.host"), h)?);
        }
        Ok(p)
    }

    /// A readable file holding at least one PEM certificate (the probe parses it again at
    /// each probe, so a renewed CA is picked up without a reload).
    fn pem_certificates(&self, key: &str, f: &str) -> Result<PathBuf, ConfigError> {
        let path = self.resolve(f);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| self.err(key, format!("cannot read {}: {e}", path.display())))?;
        if !text.contains("-----BEGIN CERTIFICATE-----") {
            return Err(self.err(
                key,
                format!(
                    "{} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")",
                    path.display()
                ),
            ));
        }
        Ok(path)
    }

    /// `name` or `name:port`: a host name or IP address, as a `Host` header carries it.
    fn probe_host(&self, key: &str, h: String) -> Result<String, ConfigError> {
        let name = match h.rsplit_once(':') {
            Some((n, port)) if !n.contains(':') || n.ends_with(']') => {
                port.parse::<u16>().is_ok().then_some(n)
            }
            _ => Some(h.as_str()),
        };
        let ok = name.is_some_and(|n| {
            let n = n.trim_start_matches('[').trim_end_matches(']');
            !n.is_empty()
                && (n.parse::<std::net::IpAddr>().is_ok()
                    || n.split('.').all(|label| {
                        !label.is_empty()
                            && label
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    }))
        });
        if !ok {
            return Err(self.err(
                key,
                format!("{h:?} is not a host name or address, with an optional port, such as \"registry.example.com\""),
            ));
        }
        Ok(h)
    }

    /// A region named in a routed name: it must exist and be in `allowed`.
    pub(super) fn region_ref(
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
}
