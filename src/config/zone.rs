//! `[[zone]]`: the zones Berth is authoritative for and the files holding their records.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, Validator};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawZone {
    origin: String,
    file: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ZoneConfig {
    /// Lowercase, without the trailing dot.
    pub origin: String,
    pub file: PathBuf,
}

impl Validator<'_> {
    pub(super) fn zones(&self, raw: Vec<RawZone>) -> Result<Vec<ZoneConfig>, ConfigError> {
        let mut zones = Vec::new();
        let mut seen = HashSet::new();
        for (i, z) in raw.into_iter().enumerate() {
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
        Ok(zones)
    }
}
