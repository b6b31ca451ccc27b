//! [`GeoDb`]: a City-layout MaxMind DB held in memory, and the hot-path lookup.
//!
//! Owns the mapping from the file's records to [`Location`] and from the tree's prefixes to the
//! matched network in the family of the query. Decodes only the five fields Berth uses, borrowing
//! strings from the file: the only allocations per lookup are the returned `String`s.
//! Does not own any policy about what to do without a location (that is `routing`'s).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use maxminddb::{LookupResult, Reader, WithinOptions};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::{GeoError, GeoHit, Location};

/// A GeoIP City database held in memory.
///
/// `Send + Sync`; lookups take `&self`, do no IO and allocate only the returned strings.
pub struct GeoDb {
    /// The parsed file. Owns the whole file as a `Vec<u8>` (not a memory map), so replacing the
    /// file on disk while Berth runs cannot corrupt lookups, and reload is open-then-swap.
    reader: Reader<Vec<u8>>,
    /// Where the bytes came from, for `Debug` and error messages.
    origin: String,
    /// Whether ::ffff:0:0/96 holds records of its own rather than aliasing the IPv4 data at
    /// ::/96 (some writers store IPv4 only in its mapped form). Only then is an IPv4 miss worth
    /// a second walk of the tree.
    v4_mapped_fallback: bool,
}

impl GeoDb {
    /// Read a database file into memory and check that it is a City database.
    pub fn open(path: &Path) -> Result<GeoDb, GeoError> {
        let bytes = std::fs::read(path).map_err(|source| GeoError::ReadDatabase {
            path: path.to_path_buf(),
            source,
        })?;
        GeoDb::from_bytes(bytes, &path.display().to_string())
    }

    /// Check and take over the bytes of a database; `origin` names them in error messages.
    ///
    /// Rejects what is not a MaxMind DB, databases whose type does not contain "City" (the test
    /// gdnsd uses too), and City databases whose first record does not decode with the City
    /// layout (for instance a coordinate stored as a string), so a wrong file fails here, loudly,
    /// rather than answering "no location" for every client.
    pub fn from_bytes(bytes: Vec<u8>, origin: &str) -> Result<GeoDb, GeoError> {
        let reader = Reader::from_source(bytes).map_err(|source| GeoError::NotMaxMindDb {
            origin: origin.to_owned(),
            source,
        })?;
        let database_type = &reader.metadata().database_type;
        if !database_type.contains("City") {
            return Err(GeoError::NotCityDatabase {
                origin: origin.to_owned(),
                database_type: database_type.clone(),
            });
        }
        check_first_record(&reader, origin)?;
        let v4_mapped_fallback = has_own_v4_mapped_records(&reader);
        Ok(GeoDb {
            reader,
            origin: origin.to_owned(),
            v4_mapped_fallback,
        })
    }

    /// None when the address has no record or the record has no latitude/longitude. Never panics.
    ///
    /// An IPv4-mapped address (`::ffff:a.b.c.d`) is looked up as the IPv4 address it carries.
    /// A record whose data cannot be decoded, or whose coordinates are not finite and in range,
    /// counts as having no location.
    pub fn lookup(&self, ip: IpAddr) -> Option<GeoHit> {
        match ip {
            IpAddr::V4(v4) => self.lookup_v4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => {
                    let hit = self.lookup_v4(v4)?;
                    let network = match hit.network {
                        IpNet::V4(net) => IpNet::V6(v4_mapped_network(net)),
                        IpNet::V6(net) => IpNet::V6(net),
                    };
                    Some(GeoHit { network, ..hit })
                }
                None => {
                    let result = self.reader.lookup(IpAddr::V6(v6)).ok()?;
                    let location = decode_location(&result)?;
                    let net = result.network().ok()?;
                    let network = match net.network() {
                        IpAddr::V6(addr) => IpNet::V6(Ipv6Net::new(addr, net.prefix()).ok()?),
                        // Not produced for an IPv6 query; refuse rather than lie about it.
                        IpAddr::V4(_) => return None,
                    };
                    Some(GeoHit { location, network })
                }
            },
        }
    }

    fn lookup_v4(&self, v4: Ipv4Addr) -> Option<GeoHit> {
        let result = self.reader.lookup(IpAddr::V4(v4)).ok()?;
        if result.has_data() {
            let location = decode_location(&result)?;
            let net = result.network().ok()?;
            let network = match net.network() {
                IpAddr::V4(addr) => Ipv4Net::new(addr, net.prefix()).ok()?,
                // The record sits above the IPv4 subtree (::/96) of an IPv6 tree, so it covers
                // every IPv4 address.
                IpAddr::V6(_) => Ipv4Net::default(),
            };
            return Some(GeoHit {
                location,
                network: IpNet::V4(network),
            });
        }
        if !self.v4_mapped_fallback {
            return None;
        }
        // Some writers keep IPv4 only at ::ffff:0:0/96 (IPv4-mapped) instead of at ::/96 with
        // aliases, the MaxMind layout that the reader's IPv4 walk follows.
        let mapped = self.reader.lookup(IpAddr::V6(v4.to_ipv6_mapped())).ok()?;
        let location = decode_location(&mapped)?;
        let net = mapped.network().ok()?;
        let network = match net.prefix().checked_sub(96) {
            Some(prefix) => Ipv4Net::new(v4, prefix).ok()?.trunc(),
            // The record covers all of ::ffff:0:0/96.
            None => Ipv4Net::default(),
        };
        Some(GeoHit {
            location,
            network: IpNet::V4(network),
        })
    }

    /// The `database_type` of the file's metadata, e.g. "GeoLite2-City".
    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// When the database was built, in seconds since the Unix epoch (from its metadata).
    pub fn build_epoch(&self) -> u64 {
        self.reader.metadata().build_epoch
    }
}

impl fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let metadata = self.reader.metadata();
        f.debug_struct("GeoDb")
            .field("origin", &self.origin)
            .field("database_type", &metadata.database_type)
            .field("build_epoch", &metadata.build_epoch)
            .field("ip_version", &metadata.ip_version)
            .field("node_count", &metadata.node_count)
            .field("v4_mapped_fallback", &self.v4_mapped_fallback)
            .finish()
    }
}

/// `::ffff:a.b.c.d/(96 + n)` for `a.b.c.d/n`: the same network, written in IPv6.
fn v4_mapped_network(net: Ipv4Net) -> Ipv6Net {
    Ipv6Net::new(net.network().to_ipv6_mapped(), 96 + net.prefix_len())
        .expect("96 + an IPv4 prefix length (at most 32) is a valid IPv6 prefix length")
}

/// Decode the record of a lookup and turn it into a location, if it has usable coordinates.
#[inline]
fn decode_location(result: &LookupResult<'_, Vec<u8>>) -> Option<Location> {
    let record: CityRecord<'_> = result.decode().ok()??;
    record.into_location()
}

/// Whether an IPv6 database has records in ::ffff:0:0/96 that are not the alias of ::/96.
/// The reader's network iterator skips aliases, so any network it yields there is real.
fn has_own_v4_mapped_records(reader: &Reader<Vec<u8>>) -> bool {
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
fn check_first_record(reader: &Reader<Vec<u8>>, origin: &str) -> Result<(), GeoError> {
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

impl CityRecord<'_> {
    fn into_location(self) -> Option<Location> {
        let coordinates = self.location?;
        let latitude = coordinates.latitude?.0;
        let longitude = coordinates.longitude?.0;
        // NaN fails both range checks. Out-of-range coordinates would poison every distance.
        if !(-90.0..=90.0).contains(&latitude) || !(-180.0..=180.0).contains(&longitude) {
            return None;
        }
        Some(Location {
            latitude,
            longitude,
            country: owned(self.country.and_then(|c| c.iso_code)),
            continent: owned(self.continent.and_then(|c| c.code)),
            city: owned(self.city.and_then(|c| c.names).and_then(|n| n.en)),
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
    fn v4_mapped_network_keeps_the_prefix() {
        let net: Ipv4Net = "198.51.100.0/24".parse().unwrap();
        assert_eq!(
            v4_mapped_network(net).to_string(),
            "::ffff:198.51.100.0/120"
        );
        assert_eq!(
            v4_mapped_network(Ipv4Net::default()).to_string(),
            "::ffff:0.0.0.0/96"
        );
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
