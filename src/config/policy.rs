//! A routed name's policy and the options that belong to it. An option of one policy given
//! under another is an error, so a typo'd policy never silently ignores what the operator
//! configured: [`OPTIONS`] says which policy owns which key.

use std::collections::HashMap;

use super::routed_name::RawRoutedName;
use super::{ConfigError, Region, RegionId, Validator};

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

/// Each policy-specific key of `[[routed_name]]` and the policy it belongs to.
const OPTIONS: [(&str, &str); 6] = [
    ("order", "priority"),
    ("weights", "weighted"),
    ("geo_map", "geographic"),
    ("geo_fallback", "geographic"),
    ("latency", "performance"),
    ("default_order", "performance"),
];

impl RawRoutedName {
    /// Is the policy-specific key `field` (one of [`OPTIONS`]) set?
    fn has(&self, field: &str) -> bool {
        match field {
            "order" => self.order.is_some(),
            "weights" => self.weights.is_some(),
            "geo_map" => self.geo_map.is_some(),
            "geo_fallback" => self.geo_fallback.is_some(),
            "latency" => !self.latency.is_empty(),
            "default_order" => self.default_order.is_some(),
            _ => false,
        }
    }
}

impl Validator<'_> {
    /// `<key>.policy` and its options; `ids` are the routed name's regions in file order.
    pub(super) fn policy(
        &self,
        key: &str,
        r: &RawRoutedName,
        regions: &[Region],
        ids: &[RegionId],
    ) -> Result<Policy, ConfigError> {
        let policy_name = r.policy.as_deref().unwrap_or("performance");
        for (field, owner) in OPTIONS {
            if r.has(field) && policy_name != owner {
                return Err(self.err(
                    format!("{key}.{field}"),
                    format!("only applies to policy \"{owner}\", this name uses \"{policy_name}\""),
                ));
            }
        }
        match policy_name {
            "performance" => Ok(Policy::Performance),
            "priority" => self.priority(key, r.order.as_deref(), regions, ids),
            "weighted" => self.weighted(key, r.weights.as_ref(), regions, ids),
            "geographic" => self.geographic(key, r, regions, ids),
            other => Err(self.err(
                format!("{key}.policy"),
                format!("{other:?} is not a policy (performance, priority, weighted, geographic)"),
            )),
        }
    }

    fn priority(
        &self,
        key: &str,
        order: Option<&[String]>,
        regions: &[Region],
        ids: &[RegionId],
    ) -> Result<Policy, ConfigError> {
        let order = match order {
            Some(o) => {
                let o = self.region_list(key, "order", o, regions, ids)?;
                if o.len() != ids.len() {
                    return Err(self.err(
                        format!("{key}.order"),
                        "must list every region of this routed name exactly once",
                    ));
                }
                o
            }
            None => ids.to_vec(),
        };
        Ok(Policy::Priority { order })
    }

    fn weighted(
        &self,
        key: &str,
        w: Option<&HashMap<String, u32>>,
        regions: &[Region],
        ids: &[RegionId],
    ) -> Result<Policy, ConfigError> {
        let w = w.ok_or_else(|| {
            self.err(
                format!("{key}.weights"),
                "policy \"weighted\" needs weights",
            )
        })?;
        let mut weights = Vec::new();
        // File order of regions, so the result does not depend on HashMap order.
        for &id in ids {
            weights.push((id, w.get(&regions[id].name).copied().unwrap_or(0)));
        }
        for n in w.keys() {
            self.region_ref(&format!("{key}.weights.{n}"), n, regions, ids)?;
        }
        if weights.iter().all(|(_, w)| *w == 0) {
            return Err(self.err(
                format!("{key}.weights"),
                "at least one region needs a weight above 0",
            ));
        }
        Ok(Policy::Weighted { weights })
    }

    fn geographic(
        &self,
        key: &str,
        r: &RawRoutedName,
        regions: &[Region],
        ids: &[RegionId],
    ) -> Result<Policy, ConfigError> {
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
            let valid =
                (code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase())) || code == "*";
            if !valid {
                return Err(self.err(
                    format!("{key}.geo_map.{code}"),
                    "keys are ISO country codes (\"JP\"), continent codes (\"EU\") or \"*\"",
                ));
            }
            let id = self.region_ref(&format!("{key}.geo_map.{code}"), &m[code], regions, ids)?;
            map.push((code.clone(), id));
        }
        let fallback = match &r.geo_fallback {
            Some(f) => self.region_list(key, "geo_fallback", f, regions, ids)?,
            None => Vec::new(),
        };
        Ok(Policy::Geographic { map, fallback })
    }
}
