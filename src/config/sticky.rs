//! `[sticky]`: how long a DNS client keeps the region it was given.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Validator};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSticky {
    idle: Option<String>,
    max_age: Option<String>,
    capacity: Option<usize>,
}

/// Per-instance memory of client -> region (see `crate::sticky`).
#[derive(Debug, Clone, PartialEq)]
pub struct StickyConfig {
    /// Forget a client this long after its last query.
    pub idle: Duration,
    /// Forget a client this long after it was first given its region, however active.
    pub max_age: Duration,
    /// Most clients remembered; past it idle entries go first, then the least recent.
    pub capacity: usize,
}

/// 100 million clients: 2.2 GB of table, far past what one instance sees.
const MAX_CAPACITY: usize = 100_000_000;

impl Validator<'_> {
    pub(super) fn sticky(&self, raw: Option<RawSticky>) -> Result<StickyConfig, ConfigError> {
        let mut s = StickyConfig {
            idle: Duration::from_secs(15 * 60),
            max_age: Duration::from_secs(3600),
            capacity: 1_000_000,
        };
        let Some(raw) = raw else { return Ok(s) };
        s.idle = self.duration("sticky.idle", raw.idle, s.idle)?;
        s.max_age = self.duration("sticky.max_age", raw.max_age, s.max_age)?;
        if let Some(c) = raw.capacity {
            if c == 0 {
                return Err(self.err("sticky.capacity", "must be at least 1"));
            }
            // The compact table reserves its slots and sketch at start (crate::sticky).
            if c > MAX_CAPACITY {
                return Err(self.err(
                    "sticky.capacity",
                    format!("{c} must be at most {MAX_CAPACITY} (reserved at start, about 24 bytes per client)"),
                ));
            }
            s.capacity = c;
        }
        Ok(s)
    }
}
