//! Static zone data and the authoritative lookup.
//!
//! Owns: reading RFC 1035 master files (through hickory's parser), rejecting zones a careful
//! operator would not want served (no apex SOA or NS, data outside the origin, a CNAME beside
//! other data), indexing records by lowercased name, and answering "what does this zone say
//! about this name and type?" per RFC 1034 4.3.2: exact matches, CNAME chains inside the zone,
//! wildcards (RFC 4592), empty non-terminals, delegations with glue, and additional-section
//! addresses for NS, MX and SRV targets. [`ZoneSet`] picks the zone a query belongs to.
//!
//! Does not own: routed names (answered by `routing` and `dns` before a zone is consulted),
//! building DNS messages (header flags, rcodes, EDNS, truncation, how to answer `ANY`),
//! DNSSEC, zone transfers, or reloading. Apart from reading the file in [`Zone::load`] it does no
//! IO, and a lookup cannot fail: every question has a [`Lookup`] answer.
//!
//! Records are hickory-proto types, unlike elsewhere outside `dns`: the zone's data *is* DNS
//! records, and `dns` copies them into responses without a translation layer.

mod load;
mod lookup;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use hickory_proto::rr::{DNSClass, Name, Record, RecordType};
use hickory_proto::serialize::txt::ParseError;

/// One loaded zone: its origin, apex SOA and records indexed by lowercased owner name.
#[derive(Debug, Clone)]
pub struct Zone {
    /// Where the data came from (a path or a caller-chosen label), for errors and logs.
    source: String,
    /// The apex, always fully qualified.
    origin: Name,
    /// Label count of `origin`, so lookups can walk the labels below it without recounting.
    origin_labels: usize,
    /// The apex SOA, validated to exist at load.
    soa: Record,
    /// TTL for negative answers (RFC 2308 section 5), computed once at load.
    negative_ttl: u32,
    /// Every owner name, lowercased and fully qualified. `Name`'s ordering is the
    /// case-insensitive canonical order of RFC 4034 6.1, so a name's descendants sort directly
    /// after it: that is what makes the empty-non-terminal test a single range query.
    nodes: BTreeMap<Name, Node>,
    /// Whether any non-apex name has NS records. Most zones have no delegations, and this lets
    /// their lookups skip the per-label walk looking for a zone cut.
    has_cuts: bool,
}

/// The records at one owner name.
#[derive(Debug, Clone)]
struct Node {
    /// One entry per record type, in the parser's (type number) order.
    rrsets: Vec<Rrset>,
    /// NS records at a name other than the apex: a delegation, so the data at and below this
    /// name belongs to another zone (anything here is glue or occluded).
    is_cut: bool,
}

/// The records of one type at one name, as written in the zone file.
#[derive(Debug, Clone)]
struct Rrset {
    record_type: RecordType,
    records: Vec<Record>,
}

impl Node {
    fn rrset(&self, record_type: RecordType) -> Option<&[Record]> {
        self.rrsets
            .iter()
            .find(|rrset| rrset.record_type == record_type)
            .map(|rrset| rrset.records.as_slice())
    }
}

impl Zone {
    /// Load an RFC 1035 master file. `origin` is the zone apex from config; relative names in
    /// the file are relative to it, and relative `$INCLUDE`s to the file's directory.
    /// As [`Zone::load`], with the origin as the config writes it (`example.test`).
    pub fn load_at(path: &Path, origin: &str) -> Result<Zone, ZoneError> {
        let name = Name::from_ascii(format!("{}.", origin.trim_end_matches('.'))).map_err(|e| {
            ZoneError::BadOrigin {
                origin: origin.to_string(),
                message: e.to_string(),
            }
        })?;
        Zone::load(path, &name)
    }

    pub fn load(path: &Path, origin: &Name) -> Result<Zone, ZoneError> {
        let text = std::fs::read_to_string(path).map_err(|source| ZoneError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        load::build(&text, origin, &path.display().to_string(), Some(path))
    }

    /// Load zone data from a string. `source` names it in errors (e.g. a file name);
    /// a relative `$INCLUDE` is an error because there is no directory to resolve it in.
    pub fn parse_str(text: &str, origin: &Name, source: &str) -> Result<Zone, ZoneError> {
        load::build(text, origin, source, None)
    }

    /// Where the zone was loaded from, as given to [`Zone::load`] or [`Zone::parse_str`].
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The zone apex, fully qualified.
    pub fn origin(&self) -> &Name {
        &self.origin
    }

    /// The apex SOA record.
    pub fn soa(&self) -> &Record {
        &self.soa
    }

    /// The SOA for the authority section of NXDOMAIN and NODATA answers: its TTL is
    /// min(SOA TTL, SOA MINIMUM) per RFC 2308 section 5, which is how long resolvers cache the
    /// negative answer.
    pub fn negative_soa(&self) -> Record {
        let mut soa = self.soa.clone();
        soa.ttl = self.negative_ttl;
        soa
    }

    /// Every owner name in the file, lowercased and fully qualified (what the DNS front end
    /// precomputes static answers for).
    pub fn names(&self) -> impl Iterator<Item = &Name> {
        self.nodes.keys()
    }

    /// Whether the zone delegates (NS records below the apex) or has wildcard names: then
    /// whether a name is NXDOMAIN takes the full lookup, not just the set of names.
    pub fn has_cuts_or_wildcards(&self) -> bool {
        self.has_cuts || self.nodes.keys().any(|n| n.is_wildcard())
    }

    /// Does any record exist at this exact name, or below it (an empty non-terminal)?
    /// Case-insensitive. Wildcards are not expanded: this is about the names in the file.
    pub fn name_exists(&self, name: &Name) -> bool {
        self.exists(&lookup::fqdn(name))
    }
}

/// The zone's answer to one question, before it becomes a DNS message.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// Records at the name (answer section), plus CNAME chain records followed within the zone first.
    ///
    /// A CNAME chain that leaves the zone, enters a delegation, loops or exceeds
    /// [`MAX_CNAME_CHAIN`] also ends here, with only the CNAMEs: the resolver follows the last
    /// target itself (RFC 1034 4.3.2 step 3a; RFC 6604 section 3).
    Answer {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    /// Name exists (or is an empty non-terminal) but has no records of that type: NOERROR + SOA.
    NoData { cname_chain: Vec<Record> },
    /// Name does not exist: NXDOMAIN + SOA (cname_chain: records followed before hitting the missing name).
    ///
    /// Also the answer for a name outside the zone, which callers avoid by asking
    /// [`ZoneSet::find`] first.
    NxDomain { cname_chain: Vec<Record> },
    /// The name is at or below a delegation (NS at a non-apex node): referral, AA=0, NS in authority, glue in additional.
    ///
    /// Except a DS question at the cut itself: DS lives in the parent (RFC 4035 section
    /// 3.1.4.1), so that is answered from this zone (NODATA here, as Berth holds no DS).
    Referral { ns: Vec<Record>, glue: Vec<Record> },
}

/// How many CNAMEs a lookup follows inside one zone before giving the chain to the resolver.
/// Chains longer than a few hops are configuration mistakes; the bound also stops loops that
/// the per-name loop check could miss through wildcard synthesis.
pub const MAX_CNAME_CHAIN: usize = 8;

/// All zones Berth is authoritative for, for finding the zone of a query.
#[derive(Debug, Clone, Default)]
pub struct ZoneSet {
    /// The zones in the order given, for listing.
    zones: Vec<Zone>,
    /// Indices into `zones`, most labels first, so the first zone that contains a query name
    /// is the most specific one.
    by_specificity: Vec<usize>,
}

impl ZoneSet {
    /// Fails if two zones have the same origin (compared case-insensitively).
    pub fn new(zones: Vec<Zone>) -> Result<ZoneSet, ZoneError> {
        for (i, zone) in zones.iter().enumerate() {
            if let Some(earlier) = zones[..i].iter().find(|z| z.origin == zone.origin) {
                return Err(ZoneError::DuplicateOrigin {
                    origin: zone.origin.to_string(),
                    first: earlier.source.clone(),
                    second: zone.source.clone(),
                });
            }
        }
        let mut by_specificity: Vec<usize> = (0..zones.len()).collect();
        by_specificity.sort_by_key(|&i| std::cmp::Reverse(zones[i].origin_labels));
        Ok(ZoneSet {
            zones,
            by_specificity,
        })
    }

    /// The most specific zone whose origin is qname or an ancestor of it (case-insensitive). None -> REFUSED.
    ///
    /// A linear scan: Berth serves a handful of zones, and this allocates nothing.
    pub fn find(&self, qname: &Name) -> Option<&Zone> {
        self.by_specificity
            .iter()
            .map(|&i| &self.zones[i])
            .find(|zone| zone.origin.zone_of(qname))
    }

    /// The zones, in the order given to [`ZoneSet::new`].
    pub fn zones(&self) -> &[Zone] {
        &self.zones
    }
}

/// Where in the zone data something went wrong: `file` or `file:line`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    /// 1-based; `None` when it could not be determined.
    pub line: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}", self.file),
            None => f.write_str(&self.file),
        }
    }
}

/// hickory's parse error, as the last link of a [`ZoneError::Parse`] cause chain.
///
/// hickory's messages already embed their causes ("network address parse error: {0}") and also
/// report them as `source()`, so printing the whole chain would say everything twice. This
/// wrapper shows the message and ends the chain; the original stays reachable as `.0`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SyntaxError(pub ParseError);

/// Why a zone could not be loaded, or zones could not be combined.
///
/// Names are kept as text: they are only ever shown, and `Name` is large enough to make every
/// `Result` carrying this error bigger than it needs to be.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    #[error("cannot read zone file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// hickory's parser rejected the text. hickory reports no positions, so `at.line` is the
    /// first line at which the file, cut there, fails the same way (see `load::error_line`).
    #[error("{at}: invalid zone data")]
    Parse {
        at: Location,
        #[source]
        source: SyntaxError,
    },
    #[error("zone origin {origin:?} is not a domain name: {message}")]
    BadOrigin { origin: String, message: String },
    #[error("{file}: no SOA record at the zone apex {origin}")]
    MissingSoa { file: String, origin: String },
    #[error("{file}: SOA record at {name} is not at the zone apex {origin}")]
    SoaNotAtApex {
        file: String,
        name: String,
        origin: String,
    },
    #[error("{file}: no NS record at the zone apex {origin}")]
    MissingApexNs { file: String, origin: String },
    #[error("{file}: {record_type} record at {name} is outside the zone {origin}")]
    OutsideZone {
        file: String,
        name: String,
        record_type: RecordType,
        origin: String,
    },
    #[error(
        "{file}: {name} has CNAME and {other} records; a CNAME must be the only record at its name"
    )]
    CnameAndOtherData {
        file: String,
        name: String,
        other: RecordType,
    },
    #[error("{file}: {record_type} record at {name} has class {class}; only IN is served")]
    UnsupportedClass {
        file: String,
        name: String,
        record_type: RecordType,
        class: DNSClass,
    },
    #[error("zones {first} and {second} have the same origin {origin}")]
    DuplicateOrigin {
        origin: String,
        first: String,
        second: String,
    },
}
