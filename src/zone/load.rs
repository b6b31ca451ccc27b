//! Turning master-file text into a validated [`Zone`].
//!
//! Owns: running hickory's parser, giving its errors a file and line, the load-time checks
//! (apex SOA and NS, names inside the origin, CNAME alone at its name, class IN) and
//! building the name index. Does not own the lookup, which may assume everything checked here.
//!
//! Known gap: hickory's parser keeps only the last of several CNAMEs at one name (as RFC 2136
//! updates would), so that mistake cannot be seen here and loads without an error.

use std::collections::BTreeMap;
use std::path::Path;

use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::txt::{ParseError, Parser};

use super::lookup::fqdn;
use super::{Location, Node, Rrset, SyntaxError, Zone, ZoneError};

/// Parse `text` as the zone `origin` and validate it. `path` resolves relative `$INCLUDE`s.
pub(super) fn build(
    text: &str,
    origin: &Name,
    file: &str,
    path: Option<&Path>,
) -> Result<Zone, ZoneError> {
    let origin = fqdn(origin).into_owned();
    // The origin the parser returns is whatever the last `$ORIGIN` said; the zone's apex is
    // the configured one, and records outside it are rejected below.
    let (_, rrsets) = parse(text, &origin, path).map_err(|source| ZoneError::Parse {
        at: Location {
            file: file.to_string(),
            line: error_line(text, &origin, path, &source),
        },
        source: SyntaxError(source),
    })?;

    let mut nodes: BTreeMap<Name, Node> = BTreeMap::new();
    let mut soa = None;
    for rrset in rrsets.into_values() {
        let name = rrset.name().clone();
        let record_type = rrset.record_type();
        let mut records: Vec<Record> = rrset.records_without_rrsigs().cloned().collect();
        // RFC 2181 5.2: the records of an RRset share one TTL, and a loader finding different
        // ones uses the smallest, so no record outlives its siblings in a cache.
        if let Some(ttl) = records.iter().map(|record| record.ttl).min() {
            records.iter_mut().for_each(|record| record.ttl = ttl);
        }
        if !origin.zone_of(&name) {
            return Err(ZoneError::OutsideZone {
                file: file.to_string(),
                name: name.to_string(),
                record_type,
                origin: origin.to_string(),
            });
        }
        if let Some(record) = records.iter().find(|r| r.dns_class != DNSClass::IN) {
            return Err(ZoneError::UnsupportedClass {
                file: file.to_string(),
                name: name.to_string(),
                record_type,
                class: record.dns_class,
            });
        }
        match record_type {
            RecordType::SOA if name != origin => {
                return Err(ZoneError::SoaNotAtApex {
                    file: file.to_string(),
                    name: name.to_string(),
                    origin: origin.to_string(),
                });
            }
            // The parser rejects a second SOA at one name, so this is the only one.
            RecordType::SOA => soa = records.first().cloned(),
            _ => {}
        }
        let node = nodes.entry(name.to_lowercase()).or_insert_with(|| Node {
            rrsets: Vec::new(),
            is_cut: false,
        });
        node.is_cut |= record_type == RecordType::NS && name != origin;
        node.rrsets.push(Rrset {
            record_type,
            records,
        });
    }

    let Some(soa) = soa else {
        return Err(ZoneError::MissingSoa {
            file: file.to_string(),
            origin: origin.to_string(),
        });
    };
    let negative_ttl = match &soa.data {
        RData::SOA(data) => soa.ttl.min(data.minimum),
        // Unreachable: the parser builds SOA rdata for SOA records. Falling back to the
        // record's own TTL keeps a negative answer cacheable no longer than the SOA itself.
        _ => soa.ttl,
    };
    let has_apex_ns = nodes
        .get(&origin)
        .is_some_and(|apex| apex.rrset(RecordType::NS).is_some());
    if !has_apex_ns {
        return Err(ZoneError::MissingApexNs {
            file: file.to_string(),
            origin: origin.to_string(),
        });
    }
    for (name, node) in &nodes {
        if node.rrset(RecordType::CNAME).is_none() {
            continue;
        }
        // RFC 2181 10.1; the DNSSEC types are the exception RFC 4035 2.5 allows.
        let other = node.rrsets.iter().map(|rrset| rrset.record_type).find(|t| {
            !matches!(
                t,
                RecordType::CNAME | RecordType::RRSIG | RecordType::NSEC | RecordType::NSEC3
            )
        });
        if let Some(other) = other {
            return Err(ZoneError::CnameAndOtherData {
                file: file.to_string(),
                name: name.to_string(),
                other,
            });
        }
    }

    Ok(Zone {
        source: file.to_string(),
        origin_labels: origin.iter().len(),
        origin,
        soa,
        negative_ttl,
        has_cuts: nodes.values().any(|node| node.is_cut),
        nodes,
    })
}

type Parsed = (
    Name,
    BTreeMap<hickory_proto::rr::RrKey, hickory_proto::rr::RecordSet>,
);

fn parse(text: &str, origin: &Name, path: Option<&Path>) -> Result<Parsed, ParseError> {
    Parser::new(text, path.map(Path::to_path_buf), Some(origin.clone())).parse()
}

/// The line hickory's parser failed at, which its errors do not carry: the first line `n`
/// such that the text cut after line `n` fails with the same message. Parsing is sequential,
/// so every cut at or after the bad line fails the same way, and cuts before it succeed or fail
/// differently (a cut inside parentheses gives "unclosed list"). That makes the property
/// monotone and a binary search finds it with O(log lines) parses, on the error path only.
/// For a record spanning lines this is its last line; for an `$INCLUDE`d file, the
/// `$INCLUDE` line.
fn error_line(text: &str, origin: &Name, path: Option<&Path>, error: &ParseError) -> Option<usize> {
    let wanted = error.to_string();
    // Byte offsets just past each line's end; slicing at them keeps the newline, so the
    // parser sees the line terminated as in the full text.
    let mut cuts: Vec<usize> = text.match_indices('\n').map(|(i, _)| i + 1).collect();
    if cuts.last() != Some(&text.len()) {
        cuts.push(text.len());
    }
    let fails_same =
        |end: usize| parse(&text[..end], origin, path).is_err_and(|e| e.to_string() == wanted);
    let first = cuts.partition_point(|&end| !fails_same(end));
    (first < cuts.len()).then_some(first + 1)
}
