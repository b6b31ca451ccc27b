//! A routed name's policy and the options that belong to it. An option of one policy given
//! under another is an error, so a typo'd policy never silently ignores what the operator
//! configured: `OPTIONS` says which [`PolicyKind`] owns which key, and each kind has its
//! own validator that builds its [`Policy`] variant with that variant's options.

use std::collections::HashMap;

use super::routed_name::RawRoutedName;
use super::{ConfigError, Region, RegionId, Validator};

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
        self.kind().name()
    }

    /// The policy without its options.
    pub fn kind(&self) -> PolicyKind {
        match self {
            Policy::Performance => PolicyKind::Performance,
            Policy::Priority { .. } => PolicyKind::Priority,
            Policy::Weighted { .. } => PolicyKind::Weighted,
            Policy::Geographic { .. } => PolicyKind::Geographic,
        }
    }
}

/// A policy as `policy = "..."` names it, before its options are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    Performance,
    Priority,
    Weighted,
    Geographic,
}

impl PolicyKind {
    const ALL: [PolicyKind; 4] = [
        PolicyKind::Performance,
        PolicyKind::Priority,
        PolicyKind::Weighted,
        PolicyKind::Geographic,
    ];

    /// What the config file calls it.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Performance => "performance",
            PolicyKind::Priority => "priority",
            PolicyKind::Weighted => "weighted",
            PolicyKind::Geographic => "geographic",
        }
    }

    fn from_name(name: &str) -> Option<PolicyKind> {
        PolicyKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Is one policy-specific key of a `[[routed_name]]` set?
type IsSet = fn(&RawRoutedName) -> bool;

/// Each policy-specific key of `[[routed_name]]`, the policy it belongs to, and whether a
/// routed name sets it.
const OPTIONS: [(&str, PolicyKind, IsSet); 6] = [
    ("order", PolicyKind::Priority, |r| r.order.is_some()),
    ("weights", PolicyKind::Weighted, |r| r.weights.is_some()),
    ("geo_map", PolicyKind::Geographic, |r| r.geo_map.is_some()),
    ("geo_fallback", PolicyKind::Geographic, |r| {
        r.geo_fallback.is_some()
    }),
    ("latency", PolicyKind::Performance, |r| {
        !r.latency.is_empty()
    }),
    ("default_order", PolicyKind::Performance, |r| {
        r.default_order.is_some()
    }),
];

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
        let kind = PolicyKind::from_name(policy_name);
        // Stray options are reported before an unknown policy: the option names the intent.
        for (field, owner, is_set) in OPTIONS {
            if is_set(r) && kind != Some(owner) {
                return Err(self.err(
                    format!("{key}.{field}"),
                    format!(
                        "only applies to policy \"{}\", this name uses \"{policy_name}\"",
                        owner.name()
                    ),
                ));
            }
        }
        let Some(kind) = kind else {
            return Err(self.err(
                format!("{key}.policy"),
                format!(
                    "{policy_name:?} is not a policy (performance, priority, weighted, geographic)"
                ),
            ));
        };
        match kind {
            PolicyKind::Performance => Ok(Policy::Performance),
            PolicyKind::Priority => self.priority(key, r.order.as_deref(), regions, ids),
            PolicyKind::Weighted => self.weighted(key, r.weights.as_ref(), regions, ids),
            PolicyKind::Geographic => self.geographic(key, r, regions, ids),
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;
    use super::*;

    /// Two regions and one routed name whose policy lines are `policy`.
    fn parse(policy: &str) -> Result<Policy, String> {
        let text = format!(
            "[dns]\nlisten = [\"127.0.0.1:1053\"]\n\
             [[zone]]\norigin = \"example.test\"\nfile = \"z\"\n\
             [[region]]\nname = \"a\"\nlatitude = 1.0\nlongitude = 1.0\na = [\"192.0.2.1\"]\n\
             [[region]]\nname = \"b\"\nlatitude = 2.0\nlongitude = 2.0\na = [\"192.0.2.2\"]\n\
             [[routed_name]]\nname = \"r.example.test\"\nregions = [\"a\", \"b\"]\n{policy}\n"
        );
        Config::parse(&text, Path::new("/b.toml"))
            .map(|c| c.routed_names[0].policy.clone())
            .map_err(|e| {
                e.to_string()
                    .replace("/b.toml: routed_name[0] (r.example.test).", "")
            })
    }

    #[test]
    fn each_policy_builds_its_variant_from_its_own_options() {
        assert_eq!(parse(""), Ok(Policy::Performance));
        assert_eq!(
            parse("policy = \"priority\"\norder = [\"b\", \"a\"]"),
            Ok(Policy::Priority { order: vec![1, 0] })
        );
        assert_eq!(
            parse("policy = \"weighted\"\nweights = { b = 3 }"),
            Ok(Policy::Weighted {
                weights: vec![(0, 0), (1, 3)]
            })
        );
        assert_eq!(
            parse("policy = \"geographic\"\ngeo_map = { JP = \"b\", \"*\" = \"a\" }"),
            Ok(Policy::Geographic {
                map: vec![("*".into(), 0), ("JP".into(), 1)],
                fallback: vec![],
            })
        );
    }

    #[test]
    fn options_of_another_policy_and_missing_options_are_errors() {
        for (policy, expect) in [
            (
                "policy = \"fastest\"\norder = [\"a\"]",
                "order: only applies to policy \"priority\", this name uses \"fastest\"",
            ),
            (
                "policy = \"priority\"\ndefault_order = [\"a\"]",
                "default_order: only applies to policy \"performance\", this name uses \"priority\"",
            ),
            (
                "policy = \"priority\"\norder = [\"a\"]",
                "order: must list every region of this routed name exactly once",
            ),
            (
                "policy = \"weighted\"",
                "weights: policy \"weighted\" needs weights",
            ),
            (
                "policy = \"weighted\"\nweights = { a = 0 }",
                "weights: at least one region needs a weight above 0",
            ),
            (
                "policy = \"geographic\"\ngeo_map = { jp = \"a\" }",
                "geo_map.jp: keys are ISO country codes (\"JP\"), continent codes (\"EU\") or \"*\"",
            ),
            (
                "policy = \"geographic\"\ngeo_fallback = [\"a\"]",
                "geo_map: policy \"geographic\" needs geo_map",
            ),
        ] {
            assert_eq!(parse(policy), Err(expect.to_string()), "{policy}");
        }
    }
}
