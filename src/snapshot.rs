//! A [`Snapshot`]: everything a query needs (config, zones, GeoIP, region states), built off
//! the hot path and published whole behind an `ArcSwap`.
//!
//! Owns: loading what a config names (zone files, GeoIP database) and checking that the parts
//! agree with each other; the one place that turns a client address into a routing
//! [`Decision`] (GeoIP lookup, then [`routing::decide`]), so that DNS, `berth route`, the
//! proxy and the admin API all route the same way. Does not own: the decision itself, nor any
//! mutable state: a change (health, flags, reload) builds a new snapshot.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Config, ConfigError, RegionId, RoutedName};
use crate::dns::tables::Tables;
use crate::geo::{GeoDb, GeoError, GeoHit, Spot};
use crate::metrics::Counters;
use crate::routing::{
    self, decide_ranked, stable_key, ClientKey, Decision, Query, Rankings, RegionState,
};
use crate::zone::{Zone, ZoneError, ZoneSet};

/// Why a config could not become a snapshot. Each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("zone {origin} (from {config})")]
    Zone {
        origin: String,
        config: PathBuf,
        #[source]
        source: Box<ZoneError>,
    },
    #[error("geoip database (from {config})")]
    Geo {
        config: PathBuf,
        #[source]
        source: Box<GeoError>,
    },
    /// The config and the zone data disagree (e.g. a routed name that also has zone records).
    #[error("{config}: {message}")]
    Inconsistent { config: PathBuf, message: String },
    /// A bug met while loading (a panic caught at the reload boundary).
    #[error("internal error: {0}")]
    Internal(String),
}

pub struct Snapshot {
    pub config: Arc<Config>,
    pub zones: Arc<ZoneSet>,
    /// None when the config names no database: every client is then "location unknown".
    pub geo: Option<Arc<GeoDb>>,
    /// Indexed by region id.
    pub states: Vec<RegionState>,
    /// Wire-level tables the DNS front end precomputes from config and zones.
    pub dns: Arc<Tables>,
    /// Bumped on every published change, so logs and the API can say which one answered.
    pub generation: u64,
    /// Counters by this snapshot's ids (see `metrics`): a request counts under the labels of
    /// the snapshot it was answered from, whatever reloads happen meanwhile.
    pub counters: Arc<Counters>,
    /// Stable keys of the routed names and regions, by id, for tables that outlive a
    /// generation (sticky memory).
    pub keys: Arc<StableKeys>,
    /// Every routed name's regions ranked from every location of `geo`, as `decide` would
    /// rank them: built with the snapshot's config and database, shared by snapshots that
    /// only differ in region states (a state change picks another entry, never re-ranks).
    pub rankings: Arc<Rankings>,
}

/// [`routing::stable_key`] of every routed name and region, by id.
pub struct StableKeys {
    pub names: Vec<u64>,
    pub regions: Vec<u64>,
}

impl StableKeys {
    fn new(config: &Config) -> StableKeys {
        StableKeys {
            names: config
                .routed_names
                .iter()
                .map(|n| stable_key(&n.name))
                .collect(),
            regions: config.regions.iter().map(|r| stable_key(&r.name)).collect(),
        }
    }

    /// The id of the region whose stable key is `key`, if this config has it.
    pub fn region_id(&self, key: u64) -> Option<RegionId> {
        self.regions.iter().position(|k| *k == key)
    }
}

/// A decision plus the GeoIP answer it was made from (for explanations).
pub struct Routed {
    pub decision: Decision,
    pub geo: Option<GeoHit>,
}

/// What the DNS answers with, from [`Snapshot::route_fast`]: the decision's region and
/// fail-open verdict, and the GeoIP network that placed the client (for the ECS scope).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastRouted {
    /// The region to answer with; None means NODATA.
    pub region: Option<RegionId>,
    pub fail_open: bool,
    /// Length of the GeoIP network that holds the address (0 without a database): every
    /// address in it has the same location.
    pub network_prefix: u8,
}

impl Snapshot {
    /// Load everything `config` names and check it fits together. IO: reads zone files and
    /// the GeoIP database. Every region starts up (enabled, not yet probed).
    pub fn load(config: Config, generation: u64) -> Result<Snapshot, LoadError> {
        let mut zones = Vec::new();
        for z in &config.zones {
            let zone_err = |source| LoadError::Zone {
                origin: z.origin.clone(),
                config: config.path.clone(),
                source: Box::new(source),
            };
            zones.push(Zone::load_at(&z.file, &z.origin).map_err(zone_err)?);
        }
        let zones = ZoneSet::new(zones).map_err(|source| LoadError::Zone {
            origin: "(all)".to_string(),
            config: config.path.clone(),
            source: Box::new(source),
        })?;
        let geo = match &config.geoip {
            Some(path) => Some(Arc::new(GeoDb::open(path).map_err(|source| {
                LoadError::Geo {
                    config: config.path.clone(),
                    source: Box::new(source),
                }
            })?)),
            None => None,
        };
        let dns = Tables::build(&config, &zones).map_err(|message| LoadError::Inconsistent {
            config: config.path.clone(),
            message,
        })?;
        let states = vec![RegionState::UP; config.regions.len()];
        let counters = Arc::new(Counters::detached(&config));
        let keys = Arc::new(StableKeys::new(&config));
        let locations = geo.as_ref().map_or(&[][..], |g| g.locations());
        let rankings = Arc::new(Rankings::build(&config, locations));
        Ok(Snapshot {
            config: Arc::new(config),
            zones: Arc::new(zones),
            geo,
            states,
            dns: Arc::new(dns),
            generation,
            counters,
            keys,
            rankings,
        })
    }

    /// The same snapshot with other region states (a health or flag change): cheap, shares
    /// everything else.
    pub fn with_states(&self, states: Vec<RegionState>) -> Snapshot {
        Snapshot {
            config: self.config.clone(),
            zones: self.zones.clone(),
            geo: self.geo.clone(),
            states,
            dns: self.dns.clone(),
            generation: self.generation,
            counters: self.counters.clone(),
            keys: self.keys.clone(),
            rankings: self.rankings.clone(),
        }
    }

    /// The same snapshot counting into `counters` (the server's registry, see `metrics`).
    pub fn with_counters(mut self, counters: Counters) -> Snapshot {
        self.counters = Arc::new(counters);
        self
    }

    /// Is `name` failing open now: enabled regions, none of them healthy?
    pub fn fail_open(&self, name: &RoutedName) -> bool {
        let st = |id: &RegionId| self.states.get(*id).copied().unwrap_or(RegionState::UP);
        name.regions.iter().any(|id| st(id).enabled)
            && !name
                .regions
                .iter()
                .any(|id| st(id).enabled && st(id).healthy)
    }

    /// Route `addr` (an ECS address or a source address) for `name`, with no memory of
    /// earlier answers (what `berth route` shows).
    pub fn route(&self, name: &RoutedName, addr: IpAddr) -> Routed {
        self.route_with(name, addr, None)
    }

    /// Route with the region this client was answered with before, if remembered. Pure.
    /// GeoIP sees the whole address (exact geography); the client key is its truncation.
    pub fn route_with(&self, name: &RoutedName, addr: IpAddr, sticky: Option<RegionId>) -> Routed {
        let key = ClientKey::new(addr, name.client_prefix(&addr));
        let geo = self.geo.as_ref().and_then(|g| g.lookup(addr));
        let query = Query {
            key,
            location: geo.as_ref().map(|g| &g.location),
            sticky,
        };
        let decision = routing::decide(&self.config, name, &self.states, &query);
        Routed { decision, geo }
    }

    /// What DNS answers for routed name number `index`: the same region and fail-open verdict
    /// as [`Snapshot::route_with`], from the precomputed rankings (no allocation) unless the
    /// client is in the name's latency table. Pure.
    pub fn route_fast(&self, index: usize, addr: IpAddr, sticky: Option<RegionId>) -> FastRouted {
        let name = &self.config.routed_names[index];
        let key = ClientKey::new(addr, name.client_prefix(&addr));
        self.route_fast_located(index, self.locate(addr), key, sticky)
    }

    /// Where the GeoIP database puts `addr` (no location and prefix 0 without a database).
    pub fn locate(&self, addr: IpAddr) -> Spot {
        self.geo.as_ref().map_or(
            Spot {
                location: None,
                prefix: 0,
            },
            |g| g.locate(addr),
        )
    }

    /// [`Snapshot::route_fast`] with the client key already made and the address located
    /// (the DNS path makes the key once for the sticky table and the decision, and reads the
    /// sticky table between the two).
    pub fn route_fast_located(
        &self,
        index: usize,
        spot: Spot,
        key: ClientKey,
        sticky: Option<RegionId>,
    ) -> FastRouted {
        let name = &self.config.routed_names[index];
        let ranked = self.rankings.name(index).and_then(|ranking| {
            decide_ranked(
                &self.config,
                name,
                &self.states,
                ranking,
                spot.location,
                &key,
                sticky,
            )
        });
        if let Some(r) = ranked {
            return FastRouted {
                region: r.region,
                fail_open: r.fail_open,
                network_prefix: spot.prefix,
            };
        }
        let location = self.geo.as_ref().and_then(|g| g.location(spot.location?));
        let query = Query {
            key,
            location,
            sticky,
        };
        let d = routing::decide(&self.config, name, &self.states, &query);
        FastRouted {
            region: d.region,
            fail_open: d.fail_open,
            network_prefix: spot.prefix,
        }
    }

    /// The explanation `berth route` prints and the admin API serves.
    pub fn explain(&self, name: &RoutedName, routed: &Routed) -> String {
        routed
            .decision
            .explain(&self.config, name, routed.geo.as_ref().map(|g| &g.location))
    }
}
