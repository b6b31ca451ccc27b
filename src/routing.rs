//! THE routing core: which region should this client use for this routed name, and why.
//!
//! [`decide`] is pure and deterministic: no IO, no clock, no randomness, no hash seeds. The same
//! config, region states and query give the same [`Decision`] on every Berth instance, which is
//! what keeps a client on one region across instances and restarts. It cannot fail: "no region
//! can be answered" is a decision with a reason, not an error.
//!
//! Not here: where the client's location comes from (GeoIP, in [`crate::geo`]), where region
//! states come from (health and flags), or what a decision becomes on the wire (DNS, proxy).

use std::fmt::{self, Write as _};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::{Config, Policy, Region, RegionId, RoutedName};
use crate::geo::{great_circle_km, Location};

mod ranked;
pub use ranked::{decide_ranked, NameRanking, Ranked, Rankings};

/// What the core knows about a region at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionState {
    /// The operator's `endpoint_enabled` flag.
    pub enabled: bool,
    /// The probe's verdict (a region not yet probed counts as healthy).
    pub healthy: bool,
}

impl RegionState {
    pub const UP: RegionState = RegionState {
        enabled: true,
        healthy: true,
    };
}

/// Who is asking: the client's address truncated to the routed name's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey(IpNet);

impl ClientKey {
    /// Truncate `addr` to `prefix` bits (clamped to the family's width). IPv4-mapped IPv6
    /// addresses count as IPv4, so a dual-stack socket sees the same key as an IPv4 one.
    pub fn new(addr: IpAddr, prefix: u8) -> ClientKey {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
            v4 => v4,
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let net = IpNet::new(addr, prefix.min(max)).expect("prefix clamped to the family width");
        ClientKey(net.trunc())
    }

    pub fn network(&self) -> IpNet {
        self.0
    }

    /// The network address of the key; what GeoIP and latency tables are consulted with.
    pub fn addr(&self) -> IpAddr {
        self.0.addr()
    }

    /// Stable bytes for hashing: family, prefix and address octets.
    fn hash_into(&self, h: &mut Fnv) {
        match self.0 {
            IpNet::V4(n) => {
                h.write(&[4, n.prefix_len()]);
                h.write(&n.addr().octets());
            }
            IpNet::V6(n) => {
                h.write(&[6, n.prefix_len()]);
                h.write(&n.addr().octets());
            }
        }
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One request for a decision.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    pub key: ClientKey,
    /// The client's GeoIP location, if the database knows it.
    pub location: Option<&'a Location>,
    /// The region this client was answered with before, if it is remembered.
    pub sticky: Option<RegionId>,
}

/// Why a region can or cannot be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eligibility {
    Eligible,
    Unhealthy,
    Disabled,
}

/// Where a candidate's estimate came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// The operator's latency table, entry for this network.
    Table(IpNet),
    /// The distance model, from this many km.
    Distance { km: f64 },
    /// No estimate: rank in the configured order (default order, priority order).
    Rank(usize),
    /// Weighted policy: the weight and the client's weighted-rendezvous score.
    Weight { weight: u32, score: f64 },
    /// Geographic policy: matched by `code` (country, continent, "*" or "fallback"); lower
    /// ranks are more specific.
    Geo { code: String, rank: usize },
    /// Geographic policy: nothing maps the client here.
    Unmapped,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub region: RegionId,
    pub eligibility: Eligibility,
    /// Estimated round trip in ms (performance policy with a table or a location).
    pub ms: Option<f64>,
    pub source: Source,
    /// Rendezvous hash of (client key, region name): the tie-breaker.
    pub hash: u64,
}

/// Why the chosen region won.
#[derive(Debug, Clone, PartialEq)]
pub enum Why {
    /// The client was answered with this region before and it is still eligible.
    Sticky,
    LowestLatency,
    /// Several regions were within the tie band; the rendezvous hash picked one.
    TieBreak {
        tied: usize,
    },
    /// The client has no location and no latency entry.
    DefaultOrder,
    Priority,
    Weighted,
    Geographic,
    /// Every region is disabled: the name has no data.
    AllDisabled,
    /// Geographic policy: neither the map nor the fallback list names an answerable region.
    NoMappedRegion,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The region to answer with; None means NODATA.
    pub region: Option<RegionId>,
    pub why: Why,
    /// No enabled region was healthy, so health was ignored.
    pub fail_open: bool,
    pub key: ClientKey,
    pub candidates: Vec<Candidate>,
}

/// Decide which region answers `name` for `query`. `states` is indexed by [`RegionId`].
pub fn decide(
    config: &Config,
    name: &RoutedName,
    states: &[RegionState],
    query: &Query<'_>,
) -> Decision {
    let mut candidates = candidates(config, name, states, query);
    let any_eligible = candidates
        .iter()
        .any(|c| c.eligibility == Eligibility::Eligible);
    let any_enabled = candidates
        .iter()
        .any(|c| c.eligibility != Eligibility::Disabled);
    // Fail open: with every enabled region down, answering one beats answering none.
    let fail_open = !any_eligible && any_enabled;
    let in_pool = |c: &Candidate| match c.eligibility {
        Eligibility::Eligible => true,
        Eligibility::Unhealthy => fail_open,
        Eligibility::Disabled => false,
    };

    estimate(config, name, query, &mut candidates);

    let sticky = query.sticky.filter(|s| {
        candidates
            .iter()
            .any(|c| c.region == *s && c.eligibility == Eligibility::Eligible)
    });
    let (region, why) = if !any_enabled {
        (None, Why::AllDisabled)
    } else if let Some(s) = sticky {
        (Some(s), Why::Sticky)
    } else {
        let pool: Vec<&Candidate> = candidates.iter().filter(|c| in_pool(c)).collect();
        pick(name, &pool)
    };
    Decision {
        region,
        why,
        fail_open,
        key: query.key,
        candidates,
    }
}

/// Every region of `name` with its eligibility and tie-break hash; estimates come later.
fn candidates(
    config: &Config,
    name: &RoutedName,
    states: &[RegionState],
    query: &Query<'_>,
) -> Vec<Candidate> {
    let state = |id: RegionId| states.get(id).copied().unwrap_or(RegionState::UP);
    name.regions
        .iter()
        .map(|&id| {
            let s = state(id);
            Candidate {
                region: id,
                eligibility: if !s.enabled {
                    Eligibility::Disabled
                } else if !s.healthy {
                    Eligibility::Unhealthy
                } else {
                    Eligibility::Eligible
                },
                ms: None,
                source: Source::Unmapped,
                hash: rendezvous(&query.key, &config.regions[id].name),
            }
        })
        .collect()
}

/// The policy's choice among the pooled (answerable) candidates.
fn pick(name: &RoutedName, pool: &[&Candidate]) -> (Option<RegionId>, Why) {
    match &name.policy {
        Policy::Performance => {
            let best = pool
                .iter()
                .filter_map(|c| c.ms)
                .fold(f64::INFINITY, f64::min);
            if !best.is_finite() {
                return (first_ranked(pool), Why::DefaultOrder);
            }
            let tied: Vec<&&Candidate> = pool
                .iter()
                .filter(|c| c.ms.is_some_and(|ms| ms <= best + name.tie_band_ms))
                .collect();
            let pick = tied
                .iter()
                .max_by_key(|c| c.hash)
                .expect("the best estimate belongs to a pooled candidate");
            let why = if tied.len() > 1 {
                Why::TieBreak { tied: tied.len() }
            } else {
                Why::LowestLatency
            };
            (Some(pick.region), why)
        }
        Policy::Priority { .. } => (first_ranked(pool), Why::Priority),
        Policy::Weighted { .. } => {
            let pick = pool
                .iter()
                .filter(|c| matches!(c.source, Source::Weight { weight, .. } if weight > 0))
                .max_by(|a, b| score(a).total_cmp(&score(b)))
                // Only zero-weight regions left: any answer beats none, still per-client stable.
                .or_else(|| pool.iter().max_by_key(|c| c.hash));
            (pick.map(|c| c.region), Why::Weighted)
        }
        Policy::Geographic { .. } => match first_ranked(pool) {
            Some(r) => (Some(r), Why::Geographic),
            None => (None, Why::NoMappedRegion),
        },
    }
}

fn score(c: &Candidate) -> f64 {
    match c.source {
        Source::Weight { score, .. } => score,
        _ => f64::NEG_INFINITY,
    }
}

/// The pooled candidate with the lowest rank; candidates without a rank never win.
fn first_ranked(pool: &[&Candidate]) -> Option<RegionId> {
    pool.iter()
        .filter_map(|c| match c.source {
            Source::Rank(r) | Source::Geo { rank: r, .. } => Some((r, c.region)),
            _ => None,
        })
        .min()
        .map(|(_, id)| id)
}

/// Fill in each candidate's estimate and its source, per the routed name's policy.
fn estimate(config: &Config, name: &RoutedName, query: &Query<'_>, cands: &mut [Candidate]) {
    match &name.policy {
        Policy::Performance => {
            let addr = query.key.addr();
            let entry = name.latency.iter().find(|e| e.network.contains(&addr));
            for c in cands.iter_mut() {
                let region = &config.regions[c.region];
                if let Some(ms) = entry.and_then(|e| e.ms.iter().find(|(id, _)| *id == c.region)) {
                    c.ms = Some(ms.1);
                    c.source = Source::Table(entry.expect("found above").network);
                } else if let Some(loc) = query.location {
                    let (km, ms) = distance_estimate(name, region, loc);
                    c.ms = Some(ms);
                    c.source = Source::Distance { km };
                } else {
                    let rank = name.default_order.iter().position(|&id| id == c.region);
                    c.source = Source::Rank(rank.unwrap_or(usize::MAX));
                }
            }
        }
        Policy::Priority { order } => {
            for c in cands.iter_mut() {
                let rank = order.iter().position(|&id| id == c.region);
                c.source = Source::Rank(rank.unwrap_or(usize::MAX));
            }
        }
        Policy::Weighted { weights } => {
            for c in cands.iter_mut() {
                let weight = weights
                    .iter()
                    .find(|(id, _)| *id == c.region)
                    .map_or(0, |(_, w)| *w);
                // Weighted rendezvous hashing: score = w / -ln(u), u uniform in (0, 1) from the
                // hash. Each client gets one region, in proportion to the weights, and removing
                // a region moves only its own clients.
                let score = if weight == 0 {
                    f64::NEG_INFINITY
                } else {
                    weighted_score(weight, c.hash)
                };
                c.source = Source::Weight { weight, score };
            }
        }
        Policy::Geographic { map, fallback } => {
            let loc = query.location;
            let codes = [
                loc.and_then(|l| l.country.as_deref()),
                loc.and_then(|l| l.continent.as_deref()),
                Some("*"),
            ];
            // Ranked by specificity (country, continent, "*"), then the fallback list.
            let mut ranked: Vec<(RegionId, String)> = Vec::new();
            for code in codes.into_iter().flatten() {
                if let Some((_, id)) = map.iter().find(|(k, _)| k == code) {
                    ranked.push((*id, code.to_string()));
                }
            }
            for id in fallback {
                ranked.push((*id, "fallback".to_string()));
            }
            for c in cands.iter_mut() {
                if let Some(rank) = ranked.iter().position(|(id, _)| *id == c.region) {
                    let code = ranked[rank].1.clone();
                    c.source = Source::Geo { code, rank };
                }
            }
        }
    }
}

/// The distance model's estimate from `loc` to `region`: (km, ms). The one formula both
/// [`decide`] and the precomputed [`Rankings`] use, so their numbers are bit-identical.
fn distance_estimate(name: &RoutedName, region: &Region, loc: &Location) -> (f64, f64) {
    let km = great_circle_km(
        loc.latitude,
        loc.longitude,
        region.latitude,
        region.longitude,
    );
    (km, name.base_ms + km / 100.0 * name.inflation)
}

/// Weighted rendezvous score of a region of weight > 0 whose hash for the client is `hash`.
fn weighted_score(weight: u32, hash: u64) -> f64 {
    let u = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight) / -u.ln()
}

/// Rendezvous hash of (client key, region name). FNV-1a, then the splitmix64 finalizer for
/// avalanche. Fixed forever: changing it would move clients between regions on upgrade.
pub fn rendezvous(key: &ClientKey, region: &str) -> u64 {
    let mut h = Fnv::new();
    key.hash_into(&mut h);
    h.write(&[0xff]);
    h.write(region.as_bytes());
    splitmix64(h.0)
}

/// A name's key in tables that outlive a config generation (sticky memory): the same name
/// has the same key under every config, whatever its index. FNV-1a + splitmix64.
pub fn stable_key(name: &str) -> u64 {
    let mut h = Fnv::new();
    h.write(name.as_bytes());
    splitmix64(h.0)
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Decision {
    /// A human explanation: the candidates, their states and estimates, and why one won.
    /// The same text is printed by `berth route` and served by the admin API.
    pub fn explain(
        &self,
        config: &Config,
        name: &RoutedName,
        location: Option<&Location>,
    ) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "name {} policy {} client {}",
            name.name,
            name.policy.name(),
            self.key
        );
        match location {
            Some(l) => {
                let _ = writeln!(
                    out,
                    "location {} ({:.2}, {:.2}) country {} continent {}",
                    l.city.as_deref().unwrap_or("-"),
                    l.latitude,
                    l.longitude,
                    l.country.as_deref().unwrap_or("-"),
                    l.continent.as_deref().unwrap_or("-"),
                );
            }
            None => {
                let _ = writeln!(out, "location unknown");
            }
        }
        for c in &self.candidates {
            let region = &config.regions[c.region].name;
            let mark = if Some(c.region) == self.region {
                "*"
            } else {
                " "
            };
            let state = match c.eligibility {
                Eligibility::Eligible => "eligible",
                Eligibility::Unhealthy => "unhealthy",
                Eligibility::Disabled => "disabled",
            };
            let est = match (&c.source, c.ms) {
                (Source::Table(net), Some(ms)) => format!("{ms:.1} ms (latency table {net})"),
                (Source::Distance { km }, Some(ms)) => format!("{ms:.1} ms ({km:.0} km)"),
                (Source::Rank(usize::MAX), _) => "unranked".to_string(),
                (Source::Rank(r), _) => format!("rank {}", r + 1),
                (Source::Weight { weight, score }, _) => {
                    format!("weight {weight} score {score:.3}")
                }
                (Source::Geo { code, .. }, _) => format!("mapped by {code}"),
                _ => "-".to_string(),
            };
            let _ = writeln!(
                out,
                "{mark} {region:<16} {state:<9} {est} hash {:016x}",
                c.hash
            );
        }
        let chosen = self.region.map(|r| config.regions[r].name.as_str());
        let why = match (&self.why, chosen) {
            (Why::Sticky, Some(r)) => format!("{r}: remembered for this client and still eligible"),
            (Why::LowestLatency, Some(r)) => format!("{r}: lowest estimated latency"),
            (Why::TieBreak { tied }, Some(r)) => {
                format!(
                    "{r}: {tied} regions within {} ms of the best, highest rendezvous hash",
                    name.tie_band_ms
                )
            }
            (Why::DefaultOrder, Some(r)) => {
                format!("{r}: no location or latency entry for the client, first in default order")
            }
            (Why::Priority, Some(r)) => format!("{r}: first answerable region in priority order"),
            (Why::Weighted, Some(r)) => format!("{r}: highest weighted rendezvous score"),
            (Why::Geographic, Some(r)) => format!("{r}: geographic map"),
            (Why::AllDisabled, _) => "no answer: every region is disabled".to_string(),
            (Why::NoMappedRegion, _) => {
                "no answer: no region in the geographic map or fallback is answerable".to_string()
            }
            (_, None) => "no answer".to_string(),
        };
        let _ = writeln!(out, "chosen {why}");
        if self.fail_open {
            let _ = writeln!(
                out,
                "failing open: no enabled region is healthy, so health is ignored"
            );
        }
        out
    }
}
