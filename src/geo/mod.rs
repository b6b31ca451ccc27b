//! GeoIP: where a client is, as far as a MaxMind DB file knows, and how far apart two places are.
//!
//! This module owns:
//! - [`GeoDb`]: a City database (GeoLite2-City, GeoIP2-City, DB-IP City Lite, or one built by
//!   [`build_from_csv`]) compacted into a search tree over its distinct locations, answering
//!   [`GeoDb::locate`] on the hot path (a tree walk, nothing allocated);
//! - [`great_circle_km`]: the pure distance between two locations;
//! - [`build_from_csv`]: the offline builder behind `berth geoip build CSV OUT.mmdb`.
//!
//! It deliberately does not own what a location means for routing (the latency model, region
//! choice, ECS scope policy): that is `routing`'s job. A [`GeoDb`] does no IO after
//! [`GeoDb::open`], never reads the clock and has no mutable state, so one can sit in a snapshot
//! and be read by every query thread; reloading means opening a new one and swapping the
//! snapshot. Only the offline builder writes files.

mod build;
mod reader;
mod tree;

use std::path::PathBuf;

pub use build::{build_from_csv, BuildReport, CsvProblem, CSV_HEADER};
pub use reader::{GeoDb, LocationId, Spot};

/// Mean Earth radius used by [`great_circle_km`], in km (the IUGG mean radius).
pub const EARTH_RADIUS_KM: f64 = 6371.0;

/// Where a client is, as far as the GeoIP database knows.
#[derive(Debug, Clone, PartialEq)]
pub struct Location {
    /// Degrees north, -90..=90.
    pub latitude: f64,
    /// Degrees east, -180..=180.
    pub longitude: f64,
    /// ISO 3166-1 alpha-2 country code, e.g. "JP" (`country.iso_code`).
    pub country: Option<String>,
    /// Continent code, e.g. "AS" (`continent.code`).
    pub continent: Option<String>,
    /// English city name (`city.names.en`).
    pub city: Option<String>,
}

/// A database answer: the location and the network that matched (in the queried address family:
/// an IPv4 query gets an IPv4 network even when the db stores IPv4 under ::/96).
#[derive(Debug, Clone, PartialEq)]
pub struct GeoHit {
    /// Where the database places the address.
    pub location: Location,
    /// The most specific network of the database that holds the address: every address in it
    /// gets the same answer, so it is the natural EDNS client-subnet scope. Always in the family
    /// of the queried address; an IPv4-mapped query (`::ffff:a.b.c.d`) gets `::ffff:a.b.c.0/120`.
    pub network: ipnet::IpNet,
}

/// Everything that can go wrong opening a GeoIP database or building one from a CSV file.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    /// The database file could not be read.
    #[error("cannot read GeoIP database {}", path.display())]
    ReadDatabase {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a MaxMind DB (no metadata, corrupt header...).
    #[error("{origin} is not a valid MaxMind DB file")]
    NotMaxMindDb {
        origin: String,
        #[source]
        source: maxminddb::MaxMindDbError,
    },
    /// A MaxMind DB, but not a City one (e.g. GeoLite2-ASN or GeoLite2-Country).
    #[error(
        "{origin}: database type `{database_type}` is not a City database \
         (expected a type containing \"City\", such as GeoLite2-City or DBIP-City-Lite)"
    )]
    NotCityDatabase {
        origin: String,
        database_type: String,
    },
    /// The database says City, but its records cannot be read with the City layout.
    #[error("{origin}: the record for {network} does not have the GeoIP2-City layout")]
    NotCityLayout {
        origin: String,
        network: String,
        #[source]
        source: maxminddb::MaxMindDbError,
    },
    /// The CSV file could not be read (missing, unreadable, not UTF-8).
    #[error("cannot read CSV file {}", path.display())]
    ReadCsv {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// One line of the CSV file is wrong.
    #[error("{}:{line}: {problem}", path.display())]
    Csv {
        path: PathBuf,
        /// 1-based line number, as editors show it.
        line: usize,
        problem: CsvProblem,
    },
    /// The CSV file has a header but no network lines.
    #[error("{}: no networks after the header", path.display())]
    NoNetworks { path: PathBuf },
    /// mmdb-writer refused the data; the CSV checks are meant to make this unreachable.
    #[error("cannot encode GeoIP database {}", path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: mmdb_writer::Error,
    },
    /// The built database could not be written (or renamed into place).
    #[error("cannot write GeoIP database {}", path.display())]
    WriteDatabase {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Great-circle (haversine) distance in km, Earth radius 6371.0 km.
///
/// Inputs are degrees. The haversine form stays accurate for nearby points, where the
/// spherical law of cosines loses precision; the sphere is within 0.5% of the ellipsoid, far
/// below what the latency model built on top of this can resolve.
pub fn great_circle_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (phi1, phi2) = (lat1.to_radians(), lat2.to_radians());
    let half_dphi = (lat2 - lat1).to_radians() / 2.0;
    let half_dlambda = (lon2 - lon1).to_radians() / 2.0;
    let a = half_dphi.sin().powi(2) + phi1.cos() * phi2.cos() * half_dlambda.sin().powi(2);
    // Rounding can push `a` a hair above 1 for antipodal points, where asin is undefined.
    2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEATTLE: (f64, f64) = (47.61, -122.33);
    const AMSTERDAM: (f64, f64) = (52.37, 4.90);

    fn km(a: (f64, f64), b: (f64, f64)) -> f64 {
        great_circle_km(a.0, a.1, b.0, b.1)
    }

    #[test]
    fn known_distances_within_one_percent() {
        // Published city-to-city distances; Seattle-Amsterdam is the figure the routing docs use.
        let cases = [
            ("seattle-amsterdam", SEATTLE, AMSTERDAM, 7_840.0),
            ("tokyo-sydney", (35.68, 139.69), (-33.87, 151.21), 7_826.0),
            (
                "new york-sao paulo",
                (40.71, -74.01),
                (-23.55, -46.63),
                7_680.0,
            ),
            ("london-paris", (51.51, -0.13), (48.86, 2.35), 344.0),
        ];
        for (name, a, b, expected) in cases {
            let got = km(a, b);
            assert!(
                (got - expected).abs() / expected < 0.01,
                "{name}: got {got:.0} km, expected about {expected} km"
            );
        }
    }

    #[test]
    fn same_point_is_zero() {
        assert_eq!(km(SEATTLE, SEATTLE), 0.0);
        // Every longitude meets at the pole; cos(90 degrees) is not exactly 0 in floating point.
        assert!(km((90.0, 0.0), (90.0, 123.0)) < 1e-9);
    }

    #[test]
    fn antipodes_are_half_the_circumference() {
        let half = std::f64::consts::PI * EARTH_RADIUS_KM; // 20_015.09 km
        for (a, b) in [
            ((0.0, 0.0), (0.0, 180.0)),
            ((90.0, 0.0), (-90.0, 0.0)),
            (SEATTLE, (-SEATTLE.0, SEATTLE.1 + 180.0)),
        ] {
            let got = km(a, b);
            assert!((got - half).abs() < 0.01, "{a:?} -> {b:?}: {got} km");
            assert!(!got.is_nan());
        }
        assert!((half - 20_015.0).abs() < 1.0);
    }

    #[test]
    fn longitude_wraps_across_the_antimeridian() {
        // 1 degree of longitude on the equator, measured across +-180.
        let got = great_circle_km(0.0, 179.5, 0.0, -179.5);
        assert!((got - 111.19).abs() < 0.01, "{got}");
    }

    fn coordinate() -> impl Strategy<Value = (f64, f64)> {
        (-90.0..=90.0f64, -180.0..=180.0f64)
    }

    proptest! {
        #[test]
        fn symmetric_bounded_and_non_negative(a in coordinate(), b in coordinate()) {
            let ab = km(a, b);
            let ba = km(b, a);
            prop_assert!((ab - ba).abs() < 1e-9, "{} vs {}", ab, ba);
            prop_assert!(ab >= 0.0);
            prop_assert!(ab <= std::f64::consts::PI * EARTH_RADIUS_KM + 1e-6);
        }

        #[test]
        fn same_point_is_exactly_zero(a in coordinate()) {
            prop_assert_eq!(km(a, a), 0.0);
        }

        #[test]
        fn triangle_inequality(a in coordinate(), b in coordinate(), c in coordinate()) {
            prop_assert!(km(a, c) <= km(a, b) + km(b, c) + 1e-6);
        }
    }
}
