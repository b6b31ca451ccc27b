//! The status table: per (repository, manifest digest) and region, present / pending / failed
//! with the last error, and the lag from the push's completion to presence. Pure: times are
//! Unix milliseconds given by the caller.
//!
//! Bounded by what was replicated since start (plus what reconcile saw): one entry per
//! manifest, one set per blob digest. It is rebuilt by the first reconcile after a restart;
//! only the queue and the remembered deletes ([`super::deletes`]) are persisted.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde::Serialize;

use super::deletes::Removed;

/// Lag samples kept per region for the percentiles.
const LAG_SAMPLES: usize = 1024;

/// One region's state for one manifest.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Presence {
    Present {
        /// When it was seen present (Unix ms).
        at_ms: u64,
        /// From the push's completion to presence here; None for the region pushed to and
        /// for what reconcile found already there.
        lag_seconds: Option<f64>,
    },
    Pending {
        attempts: u32,
        last_error: Option<String>,
    },
    Failed {
        attempts: u32,
        last_error: String,
    },
}

/// One manifest of one repository.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Entry {
    pub tags: BTreeSet<String>,
    /// When the push completed (Unix ms), if Berth saw it.
    pub pushed_at_ms: Option<u64>,
    /// The region it was pushed to (or found in first).
    pub source: Option<String>,
    pub regions: BTreeMap<String, Presence>,
}

/// Counts per region for `GET /api/v1/replication`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RegionSummary {
    pub present: u64,
    pub pending: u64,
    pub failed: u64,
    pub lag_p50_seconds: Option<f64>,
    pub lag_p99_seconds: Option<f64>,
}

#[derive(Debug, Default)]
pub struct StatusTable {
    entries: HashMap<(String, String), Entry>,
    /// (repository, tag) -> digest, as last pushed or seen.
    tags: HashMap<(String, String), String>,
    /// (repository, blob digest) -> regions known to hold it there.
    blobs: HashMap<(String, String), BTreeSet<String>>,
    lags: BTreeMap<String, VecDeque<f64>>,
    /// (repository, digest) -> regions it was deleted from since its last push: reconcile
    /// does not copy it back there (a delete with `delete = false` stays where it was made).
    removed: HashMap<(String, String), BTreeSet<String>>,
    /// `removed` changed since [`StatusTable::removed_if_changed`] last took it.
    removed_changed: bool,
}

/// Deletes remembered for reconcile; past this the memory starts over (a forgotten delete
/// is at worst copied back by a reconcile, as before Berth saw it).
const REMOVED_MAX: usize = 100_000;

impl StatusTable {
    fn entry(&mut self, repo: &str, digest: &str) -> &mut Entry {
        self.entries
            .entry((repo.to_string(), digest.to_string()))
            .or_default()
    }

    /// A push (or a manifest found by reconcile) in `source`, to be copied to `dests`.
    pub fn pushed(
        &mut self,
        repo: &str,
        digest: &str,
        tag: Option<&str>,
        source: &str,
        pushed_at_ms: Option<u64>,
        dests: &BTreeSet<String>,
    ) {
        if let Some(t) = tag {
            self.tags
                .insert((repo.to_string(), t.to_string()), digest.to_string());
        }
        if pushed_at_ms.is_some() {
            // Pushed again: what was deleted is wanted again everywhere.
            let key = (repo.to_string(), digest.to_string());
            self.removed_changed |= self.removed.remove(&key).is_some();
        }
        let e = self.entry(repo, digest);
        if let Some(t) = tag {
            e.tags.insert(t.to_string());
        }
        if pushed_at_ms.is_some() {
            e.pushed_at_ms = pushed_at_ms;
        }
        e.source.get_or_insert_with(|| source.to_string());
        let at_ms = pushed_at_ms.unwrap_or(0);
        e.regions
            .entry(source.to_string())
            .or_insert(Presence::Present {
                at_ms,
                lag_seconds: None,
            });
        for d in dests {
            if d == source {
                continue;
            }
            let present = matches!(e.regions.get(d), Some(Presence::Present { .. }));
            if !present || pushed_at_ms.is_some() {
                e.regions.insert(
                    d.clone(),
                    Presence::Pending {
                        attempts: 0,
                        last_error: None,
                    },
                );
            }
        }
    }

    /// The manifest is complete in `region` (all blobs and children were copied or found).
    /// Returns the lag, if the push time is known.
    pub fn present(
        &mut self,
        repo: &str,
        digest: &str,
        region: &str,
        at_ms: u64,
        blobs: &[String],
    ) -> Option<f64> {
        for b in blobs {
            self.blobs
                .entry((repo.to_string(), b.clone()))
                .or_default()
                .insert(region.to_string());
        }
        let e = self.entry(repo, digest);
        let lag = e
            .pushed_at_ms
            .map(|p| at_ms.saturating_sub(p) as f64 / 1000.0);
        e.regions.insert(
            region.to_string(),
            Presence::Present {
                at_ms,
                lag_seconds: lag,
            },
        );
        if let Some(l) = lag {
            let q = self.lags.entry(region.to_string()).or_default();
            if q.len() == LAG_SAMPLES {
                q.pop_front();
            }
            q.push_back(l);
        }
        lag
    }

    /// An attempt failed; `gave_up` marks it failed (else it stays pending, to be retried).
    pub fn attempt_failed(
        &mut self,
        repo: &str,
        digest: &str,
        region: &str,
        attempts: u32,
        error: &str,
        gave_up: bool,
    ) {
        let p = if gave_up {
            Presence::Failed {
                attempts,
                last_error: error.to_string(),
            }
        } else {
            Presence::Pending {
                attempts,
                last_error: Some(error.to_string()),
            }
        };
        self.entry(repo, digest)
            .regions
            .insert(region.to_string(), p);
    }

    /// The digest a reference names: itself when it is a digest, else the tag's last digest.
    pub fn resolve(&self, repo: &str, reference: &str) -> Option<String> {
        if reference.contains(':') {
            return Some(reference.to_string());
        }
        self.tags
            .get(&(repo.to_string(), reference.to_string()))
            .cloned()
    }

    pub fn get(&self, repo: &str, digest: &str) -> Option<&Entry> {
        self.entries.get(&(repo.to_string(), digest.to_string()))
    }

    /// Regions known to hold the manifest `repo@reference` whole.
    pub fn manifest_holders(&self, repo: &str, reference: &str) -> Vec<String> {
        let Some(d) = self.resolve(repo, reference) else {
            return vec![];
        };
        self.get(repo, &d).map_or(vec![], |e| {
            e.regions
                .iter()
                .filter(|(_, p)| matches!(p, Presence::Present { .. }))
                .map(|(r, _)| r.clone())
                .collect()
        })
    }

    /// Regions known to hold the blob in `repo` (copied there, or named by a manifest
    /// present there).
    pub fn blob_holders(&self, repo: &str, digest: &str) -> Vec<String> {
        self.blobs
            .get(&(repo.to_string(), digest.to_string()))
            .map_or(vec![], |s| s.iter().cloned().collect())
    }

    /// The manifest was deleted in `region`: it is no longer there (reads are not sent there
    /// for it), and reconcile does not copy it back. An entry left with no region is dropped,
    /// with the tags naming it.
    pub fn deleted(&mut self, repo: &str, digest: &str, region: &str) {
        let key = (repo.to_string(), digest.to_string());
        if self.removed.len() >= REMOVED_MAX && !self.removed.contains_key(&key) {
            self.removed.clear();
        }
        self.removed_changed |= self
            .removed
            .entry(key.clone())
            .or_default()
            .insert(region.to_string());
        let Some(e) = self.entries.get_mut(&key) else {
            return;
        };
        e.regions.remove(region);
        if e.regions.is_empty() {
            self.entries.remove(&key);
            self.tags.retain(|(r, _), d| !(r == repo && d == digest));
        }
    }

    /// The remembered deletes, if they changed since the last call (to be persisted).
    pub fn removed_if_changed(&mut self) -> Option<Vec<Removed>> {
        if !std::mem::take(&mut self.removed_changed) {
            return None;
        }
        let mut list: Vec<Removed> = self
            .removed
            .iter()
            .map(|((repo, digest), regions)| Removed {
                repository: repo.clone(),
                digest: digest.clone(),
                regions: regions.clone(),
            })
            .collect();
        list.sort_by(|a, b| (&a.repository, &a.digest).cmp(&(&b.repository, &b.digest)));
        Some(list)
    }

    /// The list [`Self::removed_if_changed`] handed out could not be saved: hand it out
    /// again next time.
    pub fn removed_not_saved(&mut self) {
        self.removed_changed = true;
    }

    /// Remember the deletes persisted before a restart.
    pub fn restore_removed(&mut self, list: Vec<Removed>) {
        for r in list {
            self.removed
                .entry((r.repository, r.digest))
                .or_default()
                .extend(r.regions);
        }
    }

    /// Was `repo@digest` deleted in `region` since it was last pushed?
    pub fn was_deleted(&self, repo: &str, digest: &str, region: &str) -> bool {
        self.removed
            .get(&(repo.to_string(), digest.to_string()))
            .is_some_and(|s| s.contains(region))
    }

    /// The tags Berth knows `repo@digest` by.
    pub fn tags_of(&self, repo: &str, digest: &str) -> Vec<String> {
        self.get(repo, digest)
            .map_or(vec![], |e| e.tags.iter().cloned().collect())
    }

    /// Per region: how many manifests are present, pending, failed, and lag percentiles.
    pub fn summary(&self) -> BTreeMap<String, RegionSummary> {
        let mut out: BTreeMap<String, RegionSummary> = BTreeMap::new();
        for e in self.entries.values() {
            for (r, p) in &e.regions {
                let s = out.entry(r.clone()).or_default();
                match p {
                    Presence::Present { .. } => s.present += 1,
                    Presence::Pending { .. } => s.pending += 1,
                    Presence::Failed { .. } => s.failed += 1,
                }
            }
        }
        for (r, q) in &self.lags {
            let s = out.entry(r.clone()).or_default();
            let mut v: Vec<f64> = q.iter().copied().collect();
            v.sort_by(f64::total_cmp);
            s.lag_p50_seconds = percentile(&v, 0.50);
            s.lag_p99_seconds = percentile(&v, 0.99);
        }
        out
    }

    /// The failures, newest state of each: (repository, digest, region, error).
    pub fn failures(&self) -> Vec<(String, String, String, String)> {
        let mut out: Vec<_> = self
            .entries
            .iter()
            .flat_map(|((repo, d), e)| {
                e.regions.iter().filter_map(move |(r, p)| match p {
                    Presence::Failed { last_error, .. } => {
                        Some((repo.clone(), d.clone(), r.clone(), last_error.clone()))
                    }
                    _ => None,
                })
            })
            .collect();
        out.sort();
        out
    }
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dests(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_push_is_pending_until_present_with_its_lag() {
        let mut t = StatusTable::default();
        t.pushed(
            "app",
            "sha256:a",
            Some("1"),
            "westus",
            Some(1000),
            &dests(&["westus", "eastus"]),
        );
        assert_eq!(t.manifest_holders("app", "1"), ["westus"]);
        t.attempt_failed("app", "sha256:a", "eastus", 1, "connection refused", false);
        let s = t.summary();
        assert_eq!(s["eastus"].pending, 1);
        let lag = t.present("app", "sha256:a", "eastus", 3500, &["sha256:b".into()]);
        assert_eq!(lag, Some(2.5));
        assert_eq!(t.manifest_holders("app", "sha256:a"), ["eastus", "westus"]);
        assert_eq!(t.blob_holders("app", "sha256:b"), ["eastus"]);
        assert!(t.blob_holders("other", "sha256:b").is_empty());
        let s = t.summary();
        assert_eq!(s["eastus"].lag_p50_seconds, Some(2.5));
        t.attempt_failed("app", "sha256:a", "eastus", 8, "500", true);
        assert_eq!(t.failures().len(), 1);
    }

    #[test]
    fn a_delete_leaves_the_region_and_is_remembered_until_pushed_again() {
        let mut t = StatusTable::default();
        let all = dests(&["westus", "eastus"]);
        t.pushed("app", "sha256:a", Some("1"), "westus", Some(1), &all);
        t.present("app", "sha256:a", "eastus", 2, &[]);
        t.deleted("app", "sha256:a", "westus");
        assert_eq!(t.manifest_holders("app", "1"), ["eastus"]);
        assert!(t.was_deleted("app", "sha256:a", "westus"));
        assert!(!t.was_deleted("app", "sha256:a", "eastus"));
        assert_eq!(t.tags_of("app", "sha256:a"), ["1"]);
        t.deleted("app", "sha256:a", "eastus");
        assert!(t.get("app", "sha256:a").is_none(), "gone everywhere");
        assert_eq!(t.resolve("app", "1"), None, "the tag went with it");
        t.pushed("app", "sha256:a", Some("1"), "eastus", Some(3), &all);
        assert!(!t.was_deleted("app", "sha256:a", "westus"), "pushed again");
    }

    #[test]
    fn remembered_deletes_are_handed_out_when_they_change_and_restored() {
        let mut t = StatusTable::default();
        let all = dests(&["westus", "eastus"]);
        assert_eq!(t.removed_if_changed(), None);
        t.pushed("app", "sha256:a", Some("1"), "westus", Some(1), &all);
        assert_eq!(t.removed_if_changed(), None, "a push of nothing deleted");
        t.deleted("app", "sha256:a", "westus");
        let list = t.removed_if_changed().expect("a delete changes them");
        assert_eq!(t.removed_if_changed(), None, "taken");
        t.deleted("app", "sha256:a", "westus");
        assert_eq!(t.removed_if_changed(), None, "the same delete again");

        let mut back = StatusTable::default();
        back.restore_removed(list);
        assert!(back.was_deleted("app", "sha256:a", "westus"));
        assert!(!back.was_deleted("app", "sha256:a", "eastus"));
        back.pushed("app", "sha256:a", Some("1"), "eastus", Some(3), &all);
        assert_eq!(
            back.removed_if_changed(),
            Some(vec![]),
            "pushed again: forgotten"
        );
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
