//! `berth geoip build CSV OUT.mmdb`: a GeoIP2-City-layout database from a small CSV file.
//!
//! Owns the CSV format (documented on [`build_from_csv`]), its validation with errors that name
//! the file, the line and what is wrong, and the atomic write of the result. The database is
//! meant for demos, tests and private address plans; it does not try to replace GeoLite2.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::Path;

use ipnet::{IpNet, Ipv6Net};
use mmdb_writer::{Value, Writer};

use super::GeoError;

/// The header line a CSV file for [`build_from_csv`] must start with.
pub const CSV_HEADER: &str = "network,continent,country,city,latitude,longitude";

/// The `database_type` of built databases: readers such as gdnsd (and ours) want "City" in it.
const DATABASE_TYPE: &str = "Berth-City";

/// Continent codes of the GeoIP2 layout, with the English names written to `names.en`.
const CONTINENTS: [(&str, &str); 7] = [
    ("AF", "Africa"),
    ("AN", "Antarctica"),
    ("AS", "Asia"),
    ("EU", "Europe"),
    ("NA", "North America"),
    ("OC", "Oceania"),
    ("SA", "South America"),
];

/// IPv6 ranges that an IPv6 MaxMind DB maps onto its IPv4 data: a CSV line there would either
/// collide with IPv4 lines or be hidden by the aliases, so it is refused.
const IPV4_RANGES_IN_IPV6: [(&str, &str); 4] = [
    ("::/96", "where the database stores IPv4"),
    (
        "::ffff:0:0/96",
        "IPv4-mapped addresses, answered from the IPv4 lines",
    ),
    ("2001::/32", "Teredo, answered from the IPv4 lines"),
    ("2002::/16", "6to4, answered from the IPv4 lines"),
];

/// What a database build wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildReport {
    /// IPv4 lines of the CSV file.
    pub networks_v4: usize,
    /// IPv6 lines of the CSV file.
    pub networks_v6: usize,
}

impl fmt::Display for BuildReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} IPv4 and {} IPv6 networks",
            self.networks_v4, self.networks_v6
        )
    }
}

/// What is wrong with one line of a CSV file; [`GeoError::Csv`] adds the file and line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CsvProblem {
    #[error("expected the header `{CSV_HEADER}`, found `{found}`")]
    Header { found: String },
    #[error("expected 6 fields ({CSV_HEADER}), found {found}")]
    FieldCount { found: usize },
    #[error("unterminated quoted field")]
    UnterminatedQuote,
    #[error(
        "`{value}` is not a network in CIDR notation (such as 198.51.100.0/24 or 2001:db8:1::/48)"
    )]
    BadNetwork { value: String },
    #[error("network `{value}` has host bits set (did you mean {network}?)")]
    HostBits { value: String, network: IpNet },
    #[error("network {network} overlaps {range}, {why}; write IPv4 networks as IPv4")]
    Ipv4Range {
        network: IpNet,
        range: &'static str,
        why: &'static str,
    },
    #[error("unknown continent code `{value}` (expected one of AF, AN, AS, EU, NA, OC, SA)")]
    UnknownContinent { value: String },
    #[error("country `{value}` is not an ISO 3166-1 alpha-2 code (two letters A-Z) or empty")]
    BadCountry { value: String },
    #[error("{field} `{value}` is not a number")]
    BadNumber { field: &'static str, value: String },
    #[error("{field} {value} is out of range {min}..={max}")]
    OutOfRange {
        field: &'static str,
        value: String,
        min: i32,
        max: i32,
    },
    #[error("duplicate network {network} (first on line {first_line})")]
    Duplicate { network: IpNet, first_line: usize },
}

/// One valid CSV line.
#[derive(Debug)]
struct Entry {
    network: IpNet,
    continent: &'static str,
    continent_name: &'static str,
    /// Empty when unknown.
    country: String,
    /// Empty when unknown.
    city: String,
    latitude: f64,
    longitude: f64,
}

/// `berth geoip build CSV OUT.mmdb`: build a GeoIP2-City-layout database from a CSV.
///
/// The CSV file starts with the header `network,continent,country,city,latitude,longitude`;
/// blank lines and lines starting with `#` are ignored anywhere. Fields may be double-quoted
/// (`"Washington, D.C."`). `network` is a CIDR network with no host bits set; `continent` a
/// GeoIP2 continent code; `country` an ISO 3166-1 alpha-2 code; `city` an English name; both
/// may be empty. Networks may nest: the most specific one answers, whatever the line order.
///
/// The output is one IPv6 database of type "Berth-City" holding IPv4 at `::/96`, aliased from
/// `::ffff:0:0/96`, `2002::/16` and `2001::/32` as in MaxMind's files, with records in the
/// GeoIP2-City layout: `continent {code, names.en}`, `country {iso_code}`, `city {names.en}`,
/// `location {latitude, longitude}` (doubles). It is written to a temporary file beside `out`
/// and renamed over it, so readers never see half a file.
pub fn build_from_csv(csv: &Path, out: &Path) -> Result<BuildReport, GeoError> {
    let text = std::fs::read_to_string(csv).map_err(|source| GeoError::ReadCsv {
        path: csv.to_path_buf(),
        source,
    })?;
    let mut entries = parse_csv(&text).map_err(|(line, problem)| GeoError::Csv {
        path: csv.to_path_buf(),
        line,
        problem,
    })?;
    if entries.is_empty() {
        return Err(GeoError::NoNetworks {
            path: csv.to_path_buf(),
        });
    }
    let report = BuildReport {
        networks_v4: entries
            .iter()
            .filter(|e| e.network.addr().is_ipv4())
            .count(),
        networks_v6: entries
            .iter()
            .filter(|e| e.network.addr().is_ipv6())
            .count(),
    };

    // mmdb-writer lets a later insert overwrite what it covers. Inserting the widest networks
    // first makes "most specific wins" hold whatever the line order. IPv4 sits 96 bits deep.
    entries.sort_by_key(|e| match e.network {
        IpNet::V4(net) => 96 + net.prefix_len(),
        IpNet::V6(net) => net.prefix_len(),
    });
    let encode_error = |source| GeoError::Encode {
        path: out.to_path_buf(),
        source,
    };
    let mut writer = Writer::builder(DATABASE_TYPE)
        .description(&[(
            "en",
            "GeoIP2-City-layout database built by `berth geoip build` from a CSV file",
        )])
        .build();
    for entry in &entries {
        writer
            .insert_value(entry.network, record(entry))
            .map_err(encode_error)?;
    }
    let bytes = writer.to_bytes().map_err(encode_error)?;
    write_atomically(out, &bytes)?;
    Ok(report)
}

/// The GeoIP2-City-layout record of one line.
fn record(entry: &Entry) -> Value {
    let names_en = |name: &str| Value::map([("en", Value::from(name))]);
    let mut fields = vec![
        (
            "continent",
            Value::map([
                ("code", Value::from(entry.continent)),
                ("names", names_en(entry.continent_name)),
            ]),
        ),
        (
            "location",
            Value::map([
                ("latitude", Value::Double(entry.latitude)),
                ("longitude", Value::Double(entry.longitude)),
            ]),
        ),
    ];
    if !entry.country.is_empty() {
        // No `names`: a country-name table is not worth carrying for a demo builder, and every
        // reader treats names as optional.
        fields.push((
            "country",
            Value::map([("iso_code", Value::from(entry.country.as_str()))]),
        ));
    }
    if !entry.city.is_empty() {
        fields.push(("city", Value::map([("names", names_en(&entry.city))])));
    }
    Value::map(fields)
}

/// Write `bytes` to a temporary file beside `out`, flush it to disk, then rename it over `out`.
fn write_atomically(out: &Path, bytes: &[u8]) -> Result<(), GeoError> {
    let write_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| GeoError::WriteDatabase { path, source }
    };
    let file_name = out
        .file_name()
        .ok_or_else(|| {
            write_error(out)(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the output path has no file name",
            ))
        })?
        .to_string_lossy();
    let temp = out.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = std::fs::File::create(&temp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .map_err(write_error(&temp))
        .and_then(|()| std::fs::rename(&temp, out).map_err(write_error(out)));
    if result.is_err() {
        // Best effort: the write error is what the user needs to see.
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Parse and check every line; the error carries its 1-based line number.
fn parse_csv(text: &str) -> Result<Vec<Entry>, (usize, CsvProblem)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut entries = Vec::new();
    let mut first_line_of: HashMap<IpNet, usize> = HashMap::new();
    let mut seen_header = false;
    for (index, raw) in text.lines().enumerate() {
        let line_number = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fail = |problem| (line_number, problem);
        let fields = split_fields(line).map_err(fail)?;
        if !seen_header {
            if fields.join(",") != CSV_HEADER {
                return Err(fail(CsvProblem::Header {
                    found: line.to_owned(),
                }));
            }
            seen_header = true;
            continue;
        }
        let entry = parse_entry(&fields).map_err(fail)?;
        if let Some(&first_line) = first_line_of.get(&entry.network) {
            return Err(fail(CsvProblem::Duplicate {
                network: entry.network,
                first_line,
            }));
        }
        first_line_of.insert(entry.network, line_number);
        entries.push(entry);
    }
    Ok(entries)
}

/// Split one line into trimmed fields, honouring double quotes (`""` inside quotes is a quote).
fn split_fields(line: &str) -> Result<Vec<String>, CsvProblem> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut in_quotes = false;
    while let Some(c) = chars.next() {
        match (in_quotes, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => in_quotes = false,
            (false, '"') if field.trim().is_empty() => {
                field.clear();
                in_quotes = true;
            }
            (false, ',') => fields.push(std::mem::take(&mut field).trim().to_owned()),
            (_, c) => field.push(c),
        }
    }
    if in_quotes {
        return Err(CsvProblem::UnterminatedQuote);
    }
    fields.push(field.trim().to_owned());
    Ok(fields)
}

fn parse_entry(fields: &[String]) -> Result<Entry, CsvProblem> {
    let [network, continent, country, city, latitude, longitude] = fields else {
        return Err(CsvProblem::FieldCount {
            found: fields.len(),
        });
    };
    let network = parse_network(network)?;
    let (continent, continent_name) = CONTINENTS
        .iter()
        .find(|(code, _)| code == continent)
        .copied()
        .ok_or_else(|| CsvProblem::UnknownContinent {
            value: continent.clone(),
        })?;
    if !(country.is_empty()
        || country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase()))
    {
        return Err(CsvProblem::BadCountry {
            value: country.clone(),
        });
    }
    Ok(Entry {
        network,
        continent,
        continent_name,
        country: country.clone(),
        city: city.clone(),
        latitude: parse_degrees("latitude", latitude, 90)?,
        longitude: parse_degrees("longitude", longitude, 180)?,
    })
}

fn parse_network(value: &str) -> Result<IpNet, CsvProblem> {
    let network: IpNet = value.parse().map_err(|_| CsvProblem::BadNetwork {
        value: value.to_owned(),
    })?;
    if network.trunc() != network {
        return Err(CsvProblem::HostBits {
            value: value.to_owned(),
            network: network.trunc(),
        });
    }
    if let IpNet::V6(v6) = network {
        for (range, why) in IPV4_RANGES_IN_IPV6 {
            let range_net: Ipv6Net = range.parse().expect("the IPv4 ranges are valid CIDR");
            if v6.contains(&range_net) || range_net.contains(&v6) {
                return Err(CsvProblem::Ipv4Range {
                    network,
                    range,
                    why,
                });
            }
        }
    }
    Ok(network)
}

/// Parse a coordinate within -limit..=limit degrees.
fn parse_degrees(field: &'static str, value: &str, limit: i32) -> Result<f64, CsvProblem> {
    let degrees: f64 = value.parse().map_err(|_| CsvProblem::BadNumber {
        field,
        value: value.to_owned(),
    })?;
    // `contains` is false for NaN; "inf" parses but is out of range too.
    if !(-f64::from(limit)..=f64::from(limit)).contains(&degrees) {
        return Err(CsvProblem::OutOfRange {
            field,
            value: value.to_owned(),
            min: -limit,
            max: limit,
        });
    }
    Ok(degrees)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_problem(line: &str) -> CsvProblem {
        let text = format!("{CSV_HEADER}\n{line}\n");
        match parse_csv(&text) {
            Err((2, problem)) => problem,
            Err((n, problem)) => panic!("error on line {n}, not 2: {problem}"),
            Ok(entries) => panic!("accepted {line:?}: {entries:?}"),
        }
    }

    #[test]
    fn comments_blank_lines_bom_crlf_and_quotes() {
        let text =
            "\u{feff}# demo\r\n\r\n  network , continent,country,city,latitude,longitude\r\n\
                    # a comment between lines\n\
                    198.51.100.0/24,AS,JP,Tokyo,35.68,139.69\r\n\
                    \n\
                    2001:db8:9::/48,NA,US,\"Washington, D.C.\",38.90,-77.04\n\
                    2001:db8:a::/48,AN,,,-77.85,166.67\n\
                    2001:db8:b::/48,EU,GB,\"The \"\"Smoke\"\"\",51.51,-0.13\n";
        let entries = parse_csv(text).expect("valid");
        let cities: Vec<&str> = entries.iter().map(|e| e.city.as_str()).collect();
        assert_eq!(cities, ["Tokyo", "Washington, D.C.", "", "The \"Smoke\""]);
        assert_eq!(entries[2].country, "");
        assert_eq!(entries[0].network.to_string(), "198.51.100.0/24");
        assert_eq!(entries[1].longitude, -77.04);
    }

    #[test]
    fn problems_are_named() {
        let cases = [
            ("198.51.100.0/24,AS,JP,Tokyo,35.68", "expected 6 fields (network,continent,country,city,latitude,longitude), found 5"),
            ("198.51.100.0/24,AS,JP,\"Tokyo,35.68,139.69", "unterminated quoted field"),
            ("198.51.100/24,AS,JP,Tokyo,35.68,139.69", "`198.51.100/24` is not a network in CIDR notation (such as 198.51.100.0/24 or 2001:db8:1::/48)"),
            ("198.51.100.7,AS,JP,Tokyo,35.68,139.69", "`198.51.100.7` is not a network in CIDR notation (such as 198.51.100.0/24 or 2001:db8:1::/48)"),
            ("198.51.100.7/24,AS,JP,Tokyo,35.68,139.69", "network `198.51.100.7/24` has host bits set (did you mean 198.51.100.0/24?)"),
            ("::ffff:198.51.100.0/120,AS,JP,Tokyo,35.68,139.69", "network ::ffff:198.51.100.0/120 overlaps ::ffff:0:0/96, IPv4-mapped addresses, answered from the IPv4 lines; write IPv4 networks as IPv4"),
            ("::/0,AS,JP,Tokyo,35.68,139.69", "network ::/0 overlaps ::/96, where the database stores IPv4; write IPv4 networks as IPv4"),
            ("2002:c633:6400::/40,AS,JP,Tokyo,35.68,139.69", "network 2002:c633:6400::/40 overlaps 2002::/16, 6to4, answered from the IPv4 lines; write IPv4 networks as IPv4"),
            ("198.51.100.0/24,XX,JP,Tokyo,35.68,139.69", "unknown continent code `XX` (expected one of AF, AN, AS, EU, NA, OC, SA)"),
            ("198.51.100.0/24,AS,jp,Tokyo,35.68,139.69", "country `jp` is not an ISO 3166-1 alpha-2 code (two letters A-Z) or empty"),
            ("198.51.100.0/24,AS,JPN,Tokyo,35.68,139.69", "country `JPN` is not an ISO 3166-1 alpha-2 code (two letters A-Z) or empty"),
            ("198.51.100.0/24,AS,JP,Tokyo,north,139.69", "latitude `north` is not a number"),
            ("198.51.100.0/24,AS,JP,Tokyo,91.5,139.69", "latitude 91.5 is out of range -90..=90"),
            ("198.51.100.0/24,AS,JP,Tokyo,35.68,-180.01", "longitude -180.01 is out of range -180..=180"),
            ("198.51.100.0/24,AS,JP,Tokyo,NaN,139.69", "latitude NaN is out of range -90..=90"),
        ];
        for (line, expected) in cases {
            assert_eq!(line_problem(line).to_string(), expected, "line {line:?}");
        }
    }

    #[test]
    fn header_must_come_first() {
        let err = parse_csv("# only comments\n198.51.100.0/24,AS,JP,Tokyo,35.68,139.69\n");
        assert_eq!(
            err.map(|_| ()).map_err(|(line, p)| (line, p.to_string())),
            Err((2, "expected the header `network,continent,country,city,latitude,longitude`, found `198.51.100.0/24,AS,JP,Tokyo,35.68,139.69`".to_owned()))
        );
    }

    #[test]
    fn duplicates_name_the_first_line() {
        let text = format!(
            "{CSV_HEADER}\n2001:db8:1::/48,NA,US,Seattle,47.61,-122.33\n\
             # comment\n2001:db8:1:0::/48,EU,NL,Amsterdam,52.37,4.90\n"
        );
        let (line, problem) = parse_csv(&text).expect_err("duplicate");
        assert_eq!(line, 4);
        assert_eq!(
            problem.to_string(),
            "duplicate network 2001:db8:1::/48 (first on line 2)"
        );
    }
}
