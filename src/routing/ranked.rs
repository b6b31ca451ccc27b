//! [`Rankings`]: what [`decide`](super::decide) would estimate for every GeoIP location,
//! precomputed, and [`decide_ranked`], which gives `decide`'s answer from them without
//! estimating, sorting or allocating.
//!
//! A ranking depends on the config and the database only: the regions of a routed name in the
//! order of `decide`'s estimate from one location (distance model, geographic map, priority
//! order, default order). Region *states* are not in it: a health or flag change only changes
//! which entry of the ranking is the first answerable one, so it never rebuilds the table. The
//! per-client parts of `decide` (the rendezvous hash inside the tie band, weighted scores, the
//! remembered region) are computed per query, the same way `decide` computes them.
//! Clients inside an operator latency table are left to `decide` itself (`None`).
//!
//! `tests/routing.rs` checks that both give the same region and the same fail-open verdict for
//! arbitrary locations, states, tie bands and clients.

use super::{
    candidates, distance_estimate, estimate, rendezvous, ClientKey, Eligibility, Query,
    RegionState, Source,
};
use crate::config::{Config, Policy, RegionId, RoutedName};
use crate::geo::Location;

/// A row entry that never wins (a geographic candidate that nothing maps the client to).
const UNRANKED: u8 = u8::MAX;

/// Rankings of every routed name of one config over the locations of one database.
pub struct Rankings {
    names: Vec<NameRanking>,
}

/// One routed name's rankings: one row per location plus the row for "no location" (last),
/// or a single row when its policy does not look at the location.
pub struct NameRanking {
    /// Regions of the name (its row width).
    width: usize,
    /// Rows per location (performance, geographic) or one row (priority, weighted).
    per_location: bool,
    /// Indices into `name.regions`, best first; [`UNRANKED`] pads what cannot win.
    order: Vec<u8>,
    /// The estimate in ms of each entry of `order` (performance with a location), NaN
    /// elsewhere: the tie band is applied to exactly the numbers `decide` compares.
    ms: Vec<f64>,
}

/// `decide_ranked`'s answer: what a [`Decision`](super::Decision) says, minus the candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranked {
    /// The region to answer with; None means NODATA.
    pub region: Option<RegionId>,
    /// No enabled region was healthy, so health was ignored.
    pub fail_open: bool,
}

impl Rankings {
    /// Rank every routed name of `config` from each of `locations` (a database's distinct
    /// locations, by id). Off the query path: at load and reload.
    pub fn build(config: &Config, locations: &[Location]) -> Rankings {
        let names = config
            .routed_names
            .iter()
            .map(|name| NameRanking::build(config, name, locations))
            .collect();
        Rankings { names }
    }

    /// The rankings of routed name number `index`.
    pub fn name(&self, index: usize) -> Option<&NameRanking> {
        self.names.get(index)
    }

    /// Heap bytes held, for the memory figures.
    pub fn heap_bytes(&self) -> usize {
        self.names
            .iter()
            .map(|n| n.order.capacity() + n.ms.capacity() * 8)
            .sum()
    }
}

impl NameRanking {
    fn build(config: &Config, name: &RoutedName, locations: &[Location]) -> NameRanking {
        let width = name.regions.len();
        let per_location = matches!(name.policy, Policy::Performance | Policy::Geographic { .. });
        let mut ranking = NameRanking {
            width,
            per_location,
            order: Vec::new(),
            ms: Vec::new(),
        };
        if width >= usize::from(UNRANKED) {
            // Row entries are u8 indices: a name with this many regions is left to `decide`.
            return ranking;
        }
        if per_location {
            ranking.order.reserve_exact((locations.len() + 1) * width);
            ranking.ms.reserve_exact((locations.len() + 1) * width);
            for loc in locations {
                ranking.push_row(config, name, Some(loc));
            }
        }
        ranking.push_row(config, name, None);
        ranking
    }

    /// Append the row for `location`, from the same estimates `decide` makes.
    fn push_row(&mut self, config: &Config, name: &RoutedName, location: Option<&Location>) {
        let mut row: Vec<(u8, f64, (usize, RegionId))> = Vec::with_capacity(self.width);
        if let (Policy::Performance, Some(loc)) = (&name.policy, location) {
            for (i, &id) in name.regions.iter().enumerate() {
                let (_, ms) = distance_estimate(name, &config.regions[id], loc);
                row.push((i as u8, ms, (0, id)));
            }
            row.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        } else {
            // Ranked policies (and performance without a location): `first_ranked` takes the
            // smallest (rank, region id); candidates without a rank never win.
            let query = Query {
                key: ClientKey::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0),
                location,
                sticky: None,
            };
            let states = vec![RegionState::UP; config.regions.len()];
            let mut cands = candidates(config, name, &states, &query);
            if matches!(name.policy, Policy::Performance) {
                // No location: the default order (the latency table is decide's business).
                for c in cands.iter_mut() {
                    let rank = name.default_order.iter().position(|&id| id == c.region);
                    c.source = Source::Rank(rank.unwrap_or(usize::MAX));
                }
            } else {
                estimate(config, name, &query, &mut cands);
            }
            for (i, c) in cands.iter().enumerate() {
                let rank = match c.source {
                    Source::Rank(r) | Source::Geo { rank: r, .. } => r,
                    _ => continue,
                };
                row.push((i as u8, f64::NAN, (rank, c.region)));
            }
            row.sort_by_key(|e| e.2);
        }
        for k in 0..self.width {
            let (i, ms) = row.get(k).map_or((UNRANKED, f64::NAN), |e| (e.0, e.1));
            self.order.push(i);
            self.ms.push(ms);
        }
    }

    fn row(&self, location: Option<u32>) -> (&[u8], &[f64]) {
        if self.width == 0 {
            return (&[], &[]);
        }
        let rows = self.order.len() / self.width;
        let r = match (self.per_location, location) {
            (true, Some(l)) if (l as usize) < rows - 1 => l as usize,
            _ => rows.saturating_sub(1),
        };
        let span = r * self.width..(r + 1) * self.width;
        (&self.order[span.clone()], &self.ms[span])
    }
}

/// [`decide`](super::decide)'s region and fail-open verdict for a client at `location` (an id
/// of the database `ranking` was built from), or None when the client is inside the routed
/// name's latency table (then call `decide`). Allocates nothing.
pub fn decide_ranked(
    config: &Config,
    name: &RoutedName,
    states: &[RegionState],
    ranking: &NameRanking,
    location: Option<u32>,
    key: &ClientKey,
    sticky: Option<RegionId>,
) -> Option<Ranked> {
    if ranking.order.is_empty() && !name.regions.is_empty() {
        return None;
    }
    if matches!(name.policy, Policy::Performance) {
        let addr = key.addr();
        if name.latency.iter().any(|e| e.network.contains(&addr)) {
            return None;
        }
    }
    let state = |id: RegionId| states.get(id).copied().unwrap_or(RegionState::UP);
    let eligibility = |id: RegionId| {
        let s = state(id);
        if !s.enabled {
            Eligibility::Disabled
        } else if !s.healthy {
            Eligibility::Unhealthy
        } else {
            Eligibility::Eligible
        }
    };
    let any_eligible = name
        .regions
        .iter()
        .any(|&id| eligibility(id) == Eligibility::Eligible);
    let any_enabled = name
        .regions
        .iter()
        .any(|&id| eligibility(id) != Eligibility::Disabled);
    let fail_open = !any_eligible && any_enabled;
    if !any_enabled {
        return Some(Ranked {
            region: None,
            fail_open,
        });
    }
    let in_pool = |id: RegionId| match eligibility(id) {
        Eligibility::Eligible => true,
        Eligibility::Unhealthy => fail_open,
        Eligibility::Disabled => false,
    };
    let fresh = match &name.policy {
        Policy::Weighted { weights } => weighted(config, name, weights, key, &in_pool),
        _ => ranked_pick(config, name, ranking, location, key, &in_pool),
    };
    let sticky =
        sticky.filter(|s| name.regions.contains(s) && eligibility(*s) == Eligibility::Eligible);
    Some(Ranked {
        region: sticky.or(fresh),
        fail_open,
    })
}

/// The first pooled entry of the ranking row; for performance with a location, the tie band
/// from it and the rendezvous hash among the tied, as `pick` does.
fn ranked_pick(
    config: &Config,
    name: &RoutedName,
    ranking: &NameRanking,
    location: Option<u32>,
    key: &ClientKey,
    in_pool: &dyn Fn(RegionId) -> bool,
) -> Option<RegionId> {
    let (order, ms) = ranking.row(location);
    let mut best: Option<(f64, u64, usize)> = None;
    let mut tied = 0usize;
    for (&i, &m) in order.iter().zip(ms) {
        if i == UNRANKED {
            break;
        }
        let idx = usize::from(i);
        let Some(&id) = name.regions.get(idx) else {
            break;
        };
        if !in_pool(id) {
            continue;
        }
        let Some((best_ms, best_hash, best_idx)) = best else {
            if m.is_nan() {
                // A ranked policy (or no location): the first pooled entry wins outright.
                return Some(id);
            }
            best = Some((m, 0, idx));
            tied = 1;
            continue;
        };
        if m > best_ms + name.tie_band_ms {
            break;
        }
        // `pick` keeps the last maximum in candidate order: compare (hash, index).
        let hash = |j: usize| rendezvous(key, &config.regions[name.regions[j]].name);
        let first_hash = if tied == 1 { hash(best_idx) } else { best_hash };
        tied += 1;
        let h = hash(idx);
        best = Some(if (h, idx) > (first_hash, best_idx) {
            (best_ms, h, idx)
        } else {
            (best_ms, first_hash, best_idx)
        });
    }
    best.map(|(_, _, idx)| name.regions[idx])
}

/// The weighted policy's pick, as `estimate` and `pick` make it.
fn weighted(
    config: &Config,
    name: &RoutedName,
    weights: &[(RegionId, u32)],
    key: &ClientKey,
    in_pool: &dyn Fn(RegionId) -> bool,
) -> Option<RegionId> {
    let mut best_score: Option<(f64, RegionId)> = None;
    let mut best_hash: Option<(u64, RegionId)> = None;
    for &id in &name.regions {
        if !in_pool(id) {
            continue;
        }
        let hash = rendezvous(key, &config.regions[id].name);
        if best_hash.is_none_or(|(h, _)| hash >= h) {
            best_hash = Some((hash, id));
        }
        let weight = weights
            .iter()
            .find(|(r, _)| *r == id)
            .map_or(0, |(_, w)| *w);
        if weight == 0 {
            continue;
        }
        let score = super::weighted_score(weight, hash);
        if best_score.is_none_or(|(s, _)| score.total_cmp(&s).is_ge()) {
            best_score = Some((score, id));
        }
    }
    best_score.map(|(_, id)| id).or(best_hash.map(|(_, id)| id))
}
