//! `[cluster]`: the shared state as this instance last saw it in etcd, and the pure rules over it: what a
//! key means, the health quorum, and which live member owns a job. No IO, no clock: etcd
//! changes come in as (key, value) pairs, time as a parameter.
//!
//! Keys under the cluster's prefix `P`:
//! - `P/flags/REGION`: a [`FlagRecord`] (JSON); no key means enabled.
//! - `P/health/INSTANCE/REGION`: that instance's [`Verdict`], under its lease.
//! - `P/members/INSTANCE`: a [`Member`], under its lease: a dead instance drops out when
//!   its lease expires, and with it its verdicts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{Config, HealthQuorum};
use crate::flags::FlagRecord;

/// One instance's probe verdict for one region, as published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub healthy: bool,
    /// "unknown", "up" or "down", as the instance's own probes say.
    pub state: String,
    #[serde(default)]
    pub last_error: Option<String>,
}

/// A live instance, as it announces itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub instance: String,
    pub version: String,
    /// [`config_hash`] of the config it runs: instances that differ route
    /// differently, which the dashboard warns about.
    pub config_hash: String,
    /// Its admin listener, so an operator can reach it from `berth cluster status`.
    #[serde(default)]
    pub admin: Option<String>,
    /// When it joined, Unix ms.
    #[serde(default)]
    pub started_ms: u64,
}

/// What a key under the prefix is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key<'a> {
    Flag(&'a str),
    Verdict { instance: &'a str, region: &'a str },
    Member(&'a str),
}

impl<'a> Key<'a> {
    /// `key` without `prefix` picked apart; `None` for keys Berth does not own.
    pub fn parse(prefix: &str, key: &'a str) -> Option<Key<'a>> {
        let rest = key.strip_prefix(prefix)?.strip_prefix('/')?;
        let (kind, rest) = rest.split_once('/')?;
        match kind {
            "flags" if !rest.is_empty() && !rest.contains('/') => Some(Key::Flag(rest)),
            "members" if !rest.is_empty() && !rest.contains('/') => Some(Key::Member(rest)),
            "health" => {
                let (instance, region) = rest.split_once('/')?;
                (!instance.is_empty() && !region.is_empty() && !region.contains('/'))
                    .then_some(Key::Verdict { instance, region })
            }
            _ => None,
        }
    }
}

pub fn flag_key(prefix: &str, region: &str) -> String {
    format!("{prefix}/flags/{region}")
}

pub fn verdict_key(prefix: &str, instance: &str, region: &str) -> String {
    format!("{prefix}/health/{instance}/{region}")
}

pub fn member_key(prefix: &str, instance: &str) -> String {
    format!("{prefix}/members/{instance}")
}

/// Everything this instance knows of the shared state.
#[derive(Debug, Clone)]
pub struct SharedState {
    /// This instance's name (its own verdicts come from its probes, not from etcd).
    pub instance: String,
    pub quorum: HealthQuorum,
    /// Is the watch on etcd running? When not, everything here is the last known state.
    pub connected: bool,
    /// Why the last session with etcd ended (or could not start), while not connected: what
    /// an operator reads to fix a wrong CA, certificate or password.
    pub last_error: Option<String>,
    pub flags: BTreeMap<String, FlagRecord>,
    /// By instance, then region.
    pub verdicts: BTreeMap<String, BTreeMap<String, Verdict>>,
    pub members: BTreeMap<String, Member>,
    /// etcd revision of the last change applied.
    pub revision: i64,
}

/// What one applied change did, for the event list.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Flag {
        region: String,
        record: Option<FlagRecord>,
    },
    MemberJoined(String),
    MemberLeft(String),
    Verdict,
    Ignored,
}

impl SharedState {
    pub fn new(instance: &str, quorum: HealthQuorum) -> SharedState {
        SharedState {
            instance: instance.to_string(),
            quorum,
            connected: false,
            last_error: None,
            flags: BTreeMap::new(),
            verdicts: BTreeMap::new(),
            members: BTreeMap::new(),
            revision: 0,
        }
    }

    /// Apply a put (`Some(value)`) or delete (`None`) of `key`. Values that do not parse are
    /// ignored (and reported by the caller): one bad writer must not stop the watch.
    pub fn apply(&mut self, prefix: &str, key: &str, value: Option<&[u8]>) -> Change {
        let Some(k) = Key::parse(prefix, key) else {
            return Change::Ignored;
        };
        match (k, value) {
            (Key::Flag(region), Some(v)) => match serde_json::from_slice::<FlagRecord>(v) {
                Ok(rec) => {
                    if self.flags.get(region) == Some(&rec) {
                        return Change::Ignored;
                    }
                    self.flags.insert(region.to_string(), rec.clone());
                    Change::Flag {
                        region: region.to_string(),
                        record: Some(rec),
                    }
                }
                Err(_) => Change::Ignored,
            },
            (Key::Flag(region), None) => match self.flags.remove(region) {
                Some(_) => Change::Flag {
                    region: region.to_string(),
                    record: None,
                },
                None => Change::Ignored,
            },
            (Key::Verdict { instance, region }, Some(v)) => {
                match serde_json::from_slice::<Verdict>(v) {
                    Ok(verdict) => {
                        self.verdicts
                            .entry(instance.to_string())
                            .or_default()
                            .insert(region.to_string(), verdict);
                        Change::Verdict
                    }
                    Err(_) => Change::Ignored,
                }
            }
            (Key::Verdict { instance, region }, None) => {
                if let Some(v) = self.verdicts.get_mut(instance) {
                    v.remove(region);
                    if v.is_empty() {
                        self.verdicts.remove(instance);
                    }
                }
                Change::Verdict
            }
            (Key::Member(name), Some(v)) => match serde_json::from_slice::<Member>(v) {
                Ok(m) => {
                    let new = !self.members.contains_key(name);
                    self.members.insert(name.to_string(), m);
                    if new {
                        Change::MemberJoined(name.to_string())
                    } else {
                        Change::Ignored
                    }
                }
                Err(_) => Change::Ignored,
            },
            (Key::Member(name), None) => match self.members.remove(name) {
                Some(_) => Change::MemberLeft(name.to_string()),
                None => Change::Ignored,
            },
        }
    }

    /// Replace everything with a full read of the prefix (at start and after a reconnect).
    pub fn reset(&mut self) {
        self.flags.clear();
        self.verdicts.clear();
        self.members.clear();
    }

    /// The verdicts that count for `region`: each live member's (this instance's from its
    /// own probes, `mine`), by instance. A member that has not reported counts as nothing.
    pub fn region_verdicts(&self, region: &str, mine: Option<bool>) -> BTreeMap<String, bool> {
        let mut out = BTreeMap::new();
        for name in self.members.keys() {
            if *name == self.instance {
                continue;
            }
            if let Some(v) = self.verdicts.get(name).and_then(|v| v.get(region)) {
                out.insert(name.clone(), v.healthy);
            }
        }
        if let Some(m) = mine {
            out.insert(self.instance.clone(), m);
        }
        out
    }

    /// The shared health of `region`, with this instance's own verdict `mine`.
    pub fn region_healthy(&self, region: &str, mine: Option<bool>) -> bool {
        let v = self.region_verdicts(region, mine);
        shared_health(self.quorum, v.values().copied())
    }

    /// Do the live members run different configs?
    pub fn config_hashes_differ(&self) -> bool {
        let mut hashes = self.members.values().map(|m| &m.config_hash);
        let first = hashes.next();
        hashes.any(|h| Some(h) != first)
    }
}

/// A region's shared health from the live instances' verdicts (`true` = healthy). No
/// verdict at all is healthy, as a region not yet probed is on one instance.
pub fn shared_health(rule: HealthQuorum, verdicts: impl IntoIterator<Item = bool>) -> bool {
    let (mut up, mut down) = (0usize, 0usize);
    for v in verdicts {
        if v {
            up += 1;
        } else {
            down += 1;
        }
    }
    if up + down == 0 {
        return true;
    }
    match rule {
        // Down only on a strict majority of down verdicts: a tie stays up.
        HealthQuorum::Majority => down * 2 <= up + down,
        HealthQuorum::Any => up > 0,
        HealthQuorum::All => down == 0,
    }
}

/// A hash of what makes instances route alike: the config with this instance's own
/// listeners, paths and name left out, so three instances on different ports but the same
/// regions, names and policies agree.
pub fn config_hash(config: &Config) -> String {
    use sha2::Digest as _;
    let text = format!(
        "{:?}|{:?}|{:?}|{:?}|{:?}",
        config.regions,
        config.routed_names,
        config.sticky,
        config.zones.iter().map(|z| &z.origin).collect::<Vec<_>>(),
        config
            .cluster
            .as_ref()
            .map(|c| (&c.prefix, c.health_quorum)),
    );
    let digest = sha2::Sha256::digest(text.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The `berth_cluster_*` metrics, appended to `/metrics` with `[cluster]`.
pub fn render_metrics(s: &SharedState) -> String {
    format!(
        "# HELP berth_cluster_connected Whether this instance's session with etcd is up (1) or it serves the last known shared state (0).\n\
         # TYPE berth_cluster_connected gauge\n\
         berth_cluster_connected {}\n\
         # HELP berth_cluster_members Live Berth instances in the cluster, as last seen in etcd.\n\
         # TYPE berth_cluster_members gauge\n\
         berth_cluster_members {}\n\
         # HELP berth_cluster_config_mismatch Whether live instances run configs with different hashes.\n\
         # TYPE berth_cluster_config_mismatch gauge\n\
         berth_cluster_config_mismatch {}\n",
        u8::from(s.connected),
        s.members.len(),
        u8::from(s.config_hashes_differ()),
    )
}

/// Which of `members` owns job `job` (rendezvous hashing): each member scores
/// `hash(member, job)` and the highest wins. Every instance that sees the same members gets
/// the same owner; when a member leaves only its own jobs move, each to the next best.
/// The replication module asks this for each job key ("am I the owner?"); `None` when
/// there are no members.
pub fn owner<'a>(members: impl IntoIterator<Item = &'a str>, job: &str) -> Option<&'a str> {
    members.into_iter().max_by_key(|m| (score(m, job), *m))
}

fn score(member: &str, job: &str) -> u64 {
    use std::hash::Hasher as _;
    // Fixed keys: every process must compute the same score.
    let mut h = siphasher::sip::SipHasher13::new_with_keys(0x6265_7274_6800_0001, 0x6a6f_6273);
    h.write(member.as_bytes());
    h.write_u8(0xff);
    h.write(job.as_bytes());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_rules() {
        use HealthQuorum::*;
        let cases: &[(HealthQuorum, &[bool], bool)] = &[
            (Majority, &[], true),
            (Majority, &[true, true, false], true),
            (Majority, &[true, false, false], false),
            (Majority, &[true, false], true),
            (Majority, &[false], false),
            (Any, &[false, false, true], true),
            (Any, &[false, false], false),
            (All, &[true, true, false], false),
            (All, &[true, true], true),
            (All, &[], true),
        ];
        for (rule, v, want) in cases {
            assert_eq!(
                shared_health(*rule, v.iter().copied()),
                *want,
                "{rule:?} {v:?}"
            );
        }
    }

    fn member(name: &str) -> Vec<u8> {
        serde_json::to_vec(&Member {
            instance: name.into(),
            version: "0.1.0".into(),
            config_hash: "h".into(),
            admin: None,
            started_ms: 0,
        })
        .unwrap()
    }

    fn verdict(healthy: bool) -> Vec<u8> {
        serde_json::to_vec(&Verdict {
            healthy,
            state: if healthy { "up" } else { "down" }.into(),
            last_error: None,
        })
        .unwrap()
    }

    #[test]
    fn only_live_members_verdicts_count() {
        let mut s = SharedState::new("a", HealthQuorum::Majority);
        for m in ["a", "b", "c"] {
            s.apply("/b", &member_key("/b", m), Some(&member(m)));
        }
        s.apply(
            "/b",
            &verdict_key("/b", "b", "westus"),
            Some(&verdict(false)),
        );
        assert!(s.region_healthy("westus", Some(true)), "one of three down");
        s.apply(
            "/b",
            &verdict_key("/b", "c", "westus"),
            Some(&verdict(false)),
        );
        assert!(!s.region_healthy("westus", Some(true)), "two of three down");
        assert_eq!(
            s.apply("/b", &member_key("/b", "c"), None),
            Change::MemberLeft("c".into())
        );
        assert!(
            s.region_healthy("westus", Some(true)),
            "c's verdict left with it"
        );
        // This instance's verdict is its own probes', never an old one from etcd.
        s.apply(
            "/b",
            &verdict_key("/b", "a", "westus"),
            Some(&verdict(false)),
        );
        assert!(s.region_healthy("westus", Some(true)));
    }

    #[test]
    fn keys_and_flags() {
        assert_eq!(
            Key::parse("/b", "/b/flags/westus"),
            Some(Key::Flag("westus"))
        );
        assert_eq!(
            Key::parse("/b", "/b/health/i1/westus"),
            Some(Key::Verdict {
                instance: "i1",
                region: "westus"
            })
        );
        assert_eq!(Key::parse("/b", "/bx/flags/westus"), None);
        assert_eq!(Key::parse("/b", "/b/flags/"), None);
        assert_eq!(Key::parse("/b", "/b/other/x"), None);
        let mut s = SharedState::new("a", HealthQuorum::Majority);
        let rec = FlagRecord::plain(false);
        let v = serde_json::to_vec(&rec).unwrap();
        assert!(matches!(
            s.apply("/b", "/b/flags/westus", Some(&v)),
            Change::Flag { .. }
        ));
        assert_eq!(s.apply("/b", "/b/flags/westus", Some(&v)), Change::Ignored);
        assert_eq!(
            s.apply("/b", "/b/flags/eastus", Some(b"{")),
            Change::Ignored
        );
        assert_eq!(s.flags.len(), 1);
    }

    #[test]
    fn rendezvous_owner_is_stable_and_moves_only_the_dead_members_jobs() {
        let three = ["a", "b", "c"];
        let jobs: Vec<String> = (0..300).map(|i| format!("job-{i}")).collect();
        let before: Vec<&str> = jobs.iter().map(|j| owner(three, j).unwrap()).collect();
        for m in three {
            let n = before.iter().filter(|o| **o == m).count();
            assert!((60..=140).contains(&n), "{m} owns {n} of 300");
        }
        let two = ["a", "c"];
        for (j, was) in jobs.iter().zip(&before) {
            let now = owner(two, j).unwrap();
            if *was != "b" {
                assert_eq!(now, *was, "{j} moved though its owner lives");
            }
        }
        assert_eq!(owner([], "x"), None);
        // The order members are listed in does not matter.
        assert_eq!(owner(["c", "b", "a"], "job-7"), owner(three, "job-7"));
    }
}
