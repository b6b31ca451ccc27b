//! [`GeoDb`]: a City-layout MaxMind DB, compacted at open, and the hot-path lookup.
//!
//! Owns the mapping from the file's records to [`Location`] and from the tree's prefixes to the
//! matched network in the family of the query. At open every distinct record is decoded once
//! (only the five fields Berth uses) and the search tree is copied into a [`Tree`] that points
//! at those locations; the file is then dropped. A lookup is a walk of the tree: no decoding,
//! no allocation ([`GeoDb::locate`]), the same cost for a client seen before and a new one.
//! Does not own any policy about what to do without a location (that is `routing`'s).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use maxminddb::{MaxMindDbError, Reader, WithinOptions};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::tree::{Tree, EMPTY, MAX_LOCATIONS, NO_LOCATION};
use super::{GeoError, GeoHit, Location};

/// Index of a distinct location in a [`GeoDb`] ([`GeoDb::location`]); stable for the life of
/// one `GeoDb`, so tables precomputed from one database can be indexed by it.
pub type LocationId = u32;

/// Where the database puts an address, without copying anything: the location (if the record
/// has one) and the length of the database network that holds the address, in the family of
/// the address (an IPv4-mapped address counts 96 + the IPv4 length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spot {
    pub location: Option<LocationId>,
    /// Every address in this many leading bits gets the same record.
    pub prefix: u8,
}

/// A GeoIP City database, compacted: the search tree and the distinct locations.
///
/// `Send + Sync`; lookups take `&self`, do no IO, and [`GeoDb::locate`] allocates nothing.
pub struct GeoDb {
    /// The search tree, its data pointers replaced by indices into `locations`. A copy, not a
    /// memory map: replacing the file on disk while Berth runs cannot disturb lookups, and
    /// reload is open-then-swap.
    tree: Tree,
    /// Each distinct (coordinates, country, continent, city) once, however many records and
    /// networks share it.
    locations: Vec<Location>,
    /// Where the bytes came from, for `Debug` and error messages.
    origin: String,
    /// From the metadata, for `berth` output and the API.
    database_type: String,
    build_epoch: u64,
    ip_version: u16,
    node_count: u32,
    /// Whether ::ffff:0:0/96 holds records of its own rather than aliasing the IPv4 data at
    /// ::/96 (some writers store IPv4 only in its mapped form). Only then is an IPv4 miss worth
    /// a second walk of the tree.
    v4_mapped_fallback: bool,
}

impl GeoDb {
    /// Read a database file and check that it is a City database.
    pub fn open(path: &Path) -> Result<GeoDb, GeoError> {
        let bytes = std::fs::read(path).map_err(|source| GeoError::ReadDatabase {
            path: path.to_path_buf(),
            source,
        })?;
        GeoDb::from_bytes(bytes, &path.display().to_string())
    }

    /// Check and compact the bytes of a database; `origin` names them in error messages.
    ///
    /// Rejects what is not a MaxMind DB, databases whose type does not contain "City" (the test
    /// gdnsd uses too), and City databases whose first record does not decode with the City
    /// layout (for instance a coordinate stored as a string), so a wrong file fails here, loudly,
    /// rather than answering "no location" for every client.
    pub fn from_bytes(bytes: Vec<u8>, origin: &str) -> Result<GeoDb, GeoError> {
        let not_mmdb = |source| GeoError::NotMaxMindDb {
            origin: origin.to_owned(),
            source,
        };
        let reader = Reader::from_source(bytes.as_slice()).map_err(not_mmdb)?;
        let metadata = reader.metadata();
        let database_type = metadata.database_type.clone();
        if !database_type.contains("City") {
            return Err(GeoError::NotCityDatabase {
                origin: origin.to_owned(),
                database_type,
            });
        }
        check_first_record(&reader, origin)?;
        let v4_mapped_fallback = has_own_v4_mapped_records(&reader);
        let (offsets, locations) = distinct_locations(&reader);
        let tree = Tree::build(
            &bytes,
            metadata.node_count as usize,
            metadata.record_size,
            metadata.ip_version,
            &offsets,
        )
        .ok_or_else(|| {
            not_mmdb(MaxMindDbError::invalid_database(
                "the search tree does not fit the file or has an unknown record size",
            ))
        })?;
        Ok(GeoDb {
            tree,
            locations,
            origin: origin.to_owned(),
            database_type,
            build_epoch: metadata.build_epoch,
            ip_version: metadata.ip_version,
            node_count: metadata.node_count,
            v4_mapped_fallback,
        })
    }

    /// Where the database puts `ip`. The hot path: a walk of the tree, nothing allocated.
    ///
    /// An IPv4-mapped address (`::ffff:a.b.c.d`) is looked up as the IPv4 address it carries.
    #[inline]
    pub fn locate(&self, ip: IpAddr) -> Spot {
        match ip {
            IpAddr::V4(v4) => self.locate_v4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => {
                    let spot = self.locate_v4(v4);
                    Spot {
                        prefix: spot.prefix + 96,
                        ..spot
                    }
                }
                // An IPv4 database knows nothing of IPv6 addresses.
                None if self.ip_version != 6 => Spot {
                    location: None,
                    prefix: 0,
                },
                None => {
                    let r = self.tree.walk(0, u128::from(v6), 128);
                    Spot {
                        location: r.location(),
                        prefix: r.bits,
                    }
                }
            },
        }
    }

    fn locate_v4(&self, v4: Ipv4Addr) -> Spot {
        let r = self.tree.walk_v4(u32::from(v4));
        if r.terminal != EMPTY || !self.v4_mapped_fallback {
            return Spot {
                location: r.location(),
                prefix: r.bits,
            };
        }
        // Some writers keep IPv4 only at ::ffff:0:0/96 (IPv4-mapped) instead of at ::/96 with
        // aliases, the MaxMind layout that the IPv4 walk follows.
        let m = self.tree.walk(0, u128::from(v4.to_ipv6_mapped()), 128);
        Spot {
            location: m.location(),
            prefix: m.bits.saturating_sub(96),
        }
    }

    /// The location with this id. Ids come from [`GeoDb::locate`] on the same database.
    pub fn location(&self, id: LocationId) -> Option<&Location> {
        self.locations.get(id as usize)
    }

    /// The search tree's memory and how much of it the kernel put on huge pages (see
    /// [`crate::memory::Backing`]).
    pub fn backing(&self) -> crate::memory::Backing {
        self.tree.backing
    }

    /// Every distinct location, indexed by [`LocationId`]: what tables precomputed per
    /// location iterate over.
    pub fn locations(&self) -> &[Location] {
        &self.locations
    }

    /// None when the address has no record or the record has no latitude/longitude. Never panics.
    ///
    /// An IPv4-mapped address (`::ffff:a.b.c.d`) is looked up as the IPv4 address it carries.
    /// A record whose data cannot be decoded, or whose coordinates are not finite and in range,
    /// counts as having no location.
    pub fn lookup(&self, ip: IpAddr) -> Option<GeoHit> {
        let spot = self.locate(ip);
        let location = self.location(spot.location?)?.clone();
        let network = match ip {
            IpAddr::V4(v4) => IpNet::V4(Ipv4Net::new(v4, spot.prefix).ok()?.trunc()),
            IpAddr::V6(v6) => IpNet::V6(Ipv6Net::new(v6, spot.prefix).ok()?.trunc()),
        };
        Some(GeoHit { location, network })
    }

    /// The `database_type` of the file's metadata, e.g. "GeoLite2-City".
    pub fn database_type(&self) -> &str {
        &self.database_type
    }

    /// When the database was built, in seconds since the Unix epoch (from its metadata).
    pub fn build_epoch(&self) -> u64 {
        self.build_epoch
    }

    /// Heap bytes held (tree and locations, strings estimated by length): the memory figure
    /// the benchmarks report beside the process's RSS.
    pub fn heap_bytes(&self) -> usize {
        let strings: usize = self
            .locations
            .iter()
            .map(|l| {
                [&l.country, &l.continent, &l.city]
                    .iter()
                    .map(|s| s.as_ref().map_or(0, String::capacity))
                    .sum::<usize>()
            })
            .sum();
        self.tree.heap_bytes()
            + self.locations.capacity() * std::mem::size_of::<Location>()
            + strings
    }
}

impl fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeoDb")
            .field("origin", &self.origin)
            .field("database_type", &self.database_type)
            .field("build_epoch", &self.build_epoch)
            .field("ip_version", &self.ip_version)
            .field("node_count", &self.node_count)
            .field("locations", &self.locations.len())
            .field("v4_mapped_fallback", &self.v4_mapped_fallback)
            .finish()
    }
}

/// Decode every record the tree points at, once per data offset: the offset -> location index
/// map the tree is rebuilt with, and the distinct locations. The network iterator visits every
/// network with data (aliases of ::/96 point at the same records, so skipping them loses none).
/// A corrupt stretch of tree stops the iteration; its records read as having no location.
fn distinct_locations(reader: &Reader<&[u8]>) -> (HashMap<usize, u32>, Vec<Location>) {
    type Key<'a> = (u64, u64, Option<&'a str>, Option<&'a str>, Option<&'a str>);
    let mut offsets: HashMap<usize, u32> = HashMap::new();
    let mut ids: HashMap<Key<'_>, u32> = HashMap::new();
    let mut locations = Vec::new();
    let Ok(networks) = reader.networks(WithinOptions::default()) else {
        return (offsets, locations);
    };
    for result in networks {
        let Ok(result) = result else { break };
        let Some(offset) = result.offset() else {
            continue;
        };
        if offsets.contains_key(&offset) {
            continue;
        }
        let record: Option<CityRecord<'_>> = result.decode().ok().flatten();
        let id = match record.and_then(CityRecord::into_parts) {
            Some(parts) if (locations.len() as u32) < MAX_LOCATIONS => {
                let key = (
                    parts.0.to_bits(),
                    parts.1.to_bits(),
                    parts.2,
                    parts.3,
                    parts.4,
                );
                *ids.entry(key).or_insert_with(|| {
                    locations.push(Location {
                        latitude: parts.0,
                        longitude: parts.1,
                        country: owned(parts.2),
                        continent: owned(parts.3),
                        city: owned(parts.4),
                    });
                    (locations.len() - 1) as u32 | (1 << 31)
                })
            }
            _ => NO_LOCATION,
        };
        offsets.insert(offset, id);
    }
    locations.shrink_to_fit();
    (offsets, locations)
}

/// Whether an IPv6 database has records in ::ffff:0:0/96 that are not the alias of ::/96.
/// The reader's network iterator skips aliases, so any network it yields there is real.
fn has_own_v4_mapped_records(reader: &Reader<&[u8]>) -> bool {
    if reader.metadata().ip_version != 6 {
        return false;
    }
    let mapped = "::ffff:0:0/96"
        .parse()
        .expect("::ffff:0:0/96 is a valid IPv6 network");
    reader
        .within(mapped, WithinOptions::default())
        .is_ok_and(|mut networks| networks.next().is_some())
}

/// Decode the first record of the database with the City layout, to reject a wrong file at
/// open time. A database without any record passes: it answers "no location" honestly.
fn check_first_record(reader: &Reader<&[u8]>, origin: &str) -> Result<(), GeoError> {
    let not_city = |network: String, source| GeoError::NotCityLayout {
        origin: origin.to_owned(),
        network,
        source,
    };
    let mut networks = reader
        .networks(WithinOptions::default())
        .map_err(|source| not_city("::/0".to_owned(), source))?;
    let Some(first) = networks.next() else {
        return Ok(());
    };
    let first = first.map_err(|source| not_city("the first network".to_owned(), source))?;
    let network = first
        .network()
        .map_or_else(|_| "the first network".to_owned(), |n| n.to_string());
    first
        .decode::<CityRecord<'_>>()
        .map_err(|source| not_city(network, source))?;
    Ok(())
}

/// The part of a GeoIP2-City record that Berth reads. Every other key of the record (names in
/// other languages, geoname ids, subdivisions, postal, traits...) is skipped without decoding.
/// Every field is optional: DB-IP City Lite and custom files leave some out.
#[derive(Deserialize)]
struct CityRecord<'a> {
    #[serde(borrow, default)]
    city: Option<Named<'a>>,
    #[serde(borrow, default)]
    continent: Option<Continent<'a>>,
    #[serde(borrow, default)]
    country: Option<Country<'a>>,
    #[serde(default)]
    location: Option<Coordinates>,
}

#[derive(Deserialize)]
struct Named<'a> {
    #[serde(borrow, default)]
    names: Option<EnglishName<'a>>,
}

#[derive(Deserialize)]
struct EnglishName<'a> {
    #[serde(borrow, default)]
    en: Option<&'a str>,
}

#[derive(Deserialize)]
struct Continent<'a> {
    #[serde(borrow, default)]
    code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Country<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Coordinates {
    #[serde(default)]
    latitude: Option<Degrees>,
    #[serde(default)]
    longitude: Option<Degrees>,
}

/// A coordinate stored as a double (the MaxMind and DB-IP layout), a float or an integer:
/// accepting all three costs nothing and spares us from rejecting a hand-made database.
struct Degrees(f64);

impl<'de> Deserialize<'de> for Degrees {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DegreesVisitor;
        impl Visitor<'_> for DegreesVisitor {
            type Value = Degrees;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of degrees")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Degrees, E> {
                Ok(Degrees(v))
            }
            fn visit_f32<E: de::Error>(self, v: f32) -> Result<Degrees, E> {
                Ok(Degrees(f64::from(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Degrees, E> {
                // Valid degrees are tiny; anything that loses precision is rejected later.
                Ok(Degrees(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Degrees, E> {
                Ok(Degrees(v as f64))
            }
        }
        deserializer.deserialize_any(DegreesVisitor)
    }
}

/// Coordinates, then country, continent and city as borrowed from the file.
type Parts<'a> = (f64, f64, Option<&'a str>, Option<&'a str>, Option<&'a str>);

impl<'a> CityRecord<'a> {
    fn into_parts(self) -> Option<Parts<'a>> {
        let coordinates = self.location?;
        let latitude = coordinates.latitude?.0;
        let longitude = coordinates.longitude?.0;
        // NaN fails both range checks. Out-of-range coordinates would poison every distance.
        if !(-90.0..=90.0).contains(&latitude) || !(-180.0..=180.0).contains(&longitude) {
            return None;
        }
        Some((
            latitude,
            longitude,
            self.country.and_then(|c| c.iso_code),
            self.continent.and_then(|c| c.code),
            self.city.and_then(|c| c.names).and_then(|n| n.en),
        ))
    }

    #[cfg(test)]
    fn into_location(self) -> Option<Location> {
        let (latitude, longitude, country, continent, city) = self.into_parts()?;
        Some(Location {
            latitude,
            longitude,
            country: owned(country),
            continent: owned(continent),
            city: owned(city),
        })
    }
}

/// An owned copy of a non-empty string (some files store "" for unknown).
fn owned(s: Option<&str>) -> Option<String> {
    s.filter(|s| !s.is_empty()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geodb_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<GeoDb>();
    }

    #[test]
    fn empty_strings_are_unknown() {
        assert_eq!(owned(Some("")), None);
        assert_eq!(owned(Some("JP")), Some("JP".to_owned()));
    }

    #[test]
    fn out_of_range_coordinates_are_no_location() {
        let record = |latitude: f64, longitude: f64| CityRecord {
            city: None,
            continent: None,
            country: None,
            location: Some(Coordinates {
                latitude: Some(Degrees(latitude)),
                longitude: Some(Degrees(longitude)),
            }),
        };
        assert!(record(35.68, 139.69).into_location().is_some());
        assert!(record(90.0, -180.0).into_location().is_some());
        assert!(record(90.5, 0.0).into_location().is_none());
        assert!(record(0.0, 180.5).into_location().is_none());
        assert!(record(f64::NAN, 0.0).into_location().is_none());
        assert!(record(0.0, f64::INFINITY).into_location().is_none());
    }
}
