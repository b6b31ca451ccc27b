//! `[[routed_name]]`: a name answered by routing, its regions, policy (`policy`),
//! TTL, client prefixes, distance model and measured latencies.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use super::{ConfigError, Policy, Region, RegionId, Validator, ZoneConfig};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoutedName {
    pub(super) name: String,
    pub(super) policy: Option<String>,
    pub(super) ttl: Option<u32>,
    pub(super) regions: Vec<String>,
    pub(super) client_prefix_v4: Option<u8>,
    pub(super) client_prefix_v6: Option<u8>,
    pub(super) tie_band_ms: Option<f64>,
    pub(super) base_ms: Option<f64>,
    pub(super) inflation: Option<f64>,
    pub(super) default_order: Option<Vec<String>>,
    #[serde(default)]
    pub(super) latency: Vec<RawLatency>,
    pub(super) order: Option<Vec<String>>,
    pub(super) weights: Option<HashMap<String, u32>>,
    pub(super) geo_map: Option<HashMap<String, String>>,
    pub(super) geo_fallback: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLatency {
    pub(super) cidr: String,
    pub(super) ms: HashMap<String, f64>,
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

impl Validator<'_> {
    pub(super) fn routed_names(
        &self,
        raw: Vec<RawRoutedName>,
        regions: &[Region],
        zones: &[ZoneConfig],
    ) -> Result<Vec<RoutedName>, ConfigError> {
        let mut routed_names: Vec<RoutedName> = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let rn = self.routed_name(i, r, regions, zones)?;
            if routed_names.iter().any(|o| o.name == rn.name) {
                return Err(self.err(
                    format!("routed_name[{i}].name"),
                    format!("routed name {} is defined twice", rn.name),
                ));
            }
            routed_names.push(rn);
        }
        Ok(routed_names)
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
        let ids = self.region_list(&key, "regions", &r.regions, regions, &all)?;
        let policy = self.policy(&key, &r, regions, &ids)?;
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
                let mut o = self.region_list(&key, "default_order", o, regions, &ids)?;
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
        let latency = self.latency(&key, &r.latency, regions, &ids)?;
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

    /// `<key>.<field>`: region names, each in `allowed` and listed once.
    pub(super) fn region_list(
        &self,
        key: &str,
        field: &str,
        list: &[String],
        regions: &[Region],
        allowed: &[RegionId],
    ) -> Result<Vec<RegionId>, ConfigError> {
        let mut out = Vec::new();
        for (j, n) in list.iter().enumerate() {
            let id = self.region_ref(&format!("{key}.{field}[{j}]"), n, regions, allowed)?;
            if out.contains(&id) {
                return Err(self.err(
                    format!("{key}.{field}[{j}]"),
                    format!("region {n:?} is listed twice"),
                ));
            }
            out.push(id);
        }
        Ok(out)
    }

    /// `<key>.latency`, most specific network first so the first match wins.
    fn latency(
        &self,
        key: &str,
        raw: &[RawLatency],
        regions: &[Region],
        ids: &[RegionId],
    ) -> Result<Vec<LatencyEntry>, ConfigError> {
        let mut latency = Vec::new();
        for (j, l) in raw.iter().enumerate() {
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
                let id = self.region_ref(&format!("{lkey}.ms.{n}"), n, regions, ids)?;
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
        Ok(latency)
    }
}
