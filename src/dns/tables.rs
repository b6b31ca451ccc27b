//! [`Tables`]: what the DNS front end precomputes from a config and its zones (routed names'
//! wire forms, CNAME targets, negative SOAs), plus its per-snapshot state (cookie secret, rate
//! limiter). A leaf: it imports config, zone and its sibling pure modules, never the front end
//! itself, so the snapshot can hold it without depending on `dns`.

use std::collections::HashMap;
use std::sync::OnceLock;

use hickory_proto::op::{Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};

use super::{cookie, rrl};
use crate::config::{Config, CookieSecret};
use crate::zone::{Lookup, ZoneSet};

/// Precomputed, per-snapshot DNS data: routed names, the cookie secret, the rate limiter.
pub struct Tables {
    routed: Vec<RoutedEntry>,
    /// None: cookies are off and the COOKIE option is ignored like any unknown one.
    pub(super) cookie: Option<cookie::Secret>,
    /// None: no rate limiting. Its state starts over when a reload builds new tables.
    pub(super) rrl: Option<rrl::Limiter>,
    /// Static answers by lowercase wire-format owner name, for the fast path.
    statics: HashMap<Box<[u8]>, StaticName, foldhash::fast::RandomState>,
}

/// The query types the fast path answers from [`StaticName`]s; anything else (ANY, zone
/// transfers, DS at a cut...) goes to the general path.
pub(super) const STATIC_TYPES: [RecordType; 10] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::CNAME,
    RecordType::SOA,
    RecordType::NS,
    RecordType::MX,
    RecordType::TXT,
    RecordType::SRV,
    RecordType::PTR,
    RecordType::CAA,
];

/// The general path's answers at one zone name, encoded once at load for a query with ID 0,
/// no flags, no EDNS and a lowercase name: the fast path copies the question as sent (same
/// bytes when it is lowercase), patches ID, RD and CD, and appends its OPT.
#[derive(Debug, Default)]
pub(super) struct StaticName {
    /// By query type: header (12 octets) and everything after the question; None where the
    /// answer is not static (a CNAME into a routed name, a referral).
    by_type: Vec<(u16, Option<StaticAnswer>)>,
    /// The NODATA answer shared by the static types with no records here (the question,
    /// which alone differs between them, is the query's own).
    nodata: Option<StaticAnswer>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct StaticAnswer {
    pub(super) header: [u8; 12],
    pub(super) body: Vec<u8>,
}

impl StaticName {
    pub(super) fn get(&self, qtype: u16) -> Option<&StaticAnswer> {
        match self.by_type.iter().find(|(t, _)| *t == qtype) {
            Some((_, a)) => a.as_ref(),
            None => self.nodata.as_ref(),
        }
    }
}

/// 32 random bytes for this process: the default cookie secret and the limiter's hash key.
fn process_random() -> Result<&'static [u8; 32], String> {
    static RANDOM: OnceLock<[u8; 32]> = OnceLock::new();
    if let Some(r) = RANDOM.get() {
        return Ok(r);
    }
    let mut r = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut r))
        .map_err(|e| format!("cannot read /dev/urandom for the DNS cookie secret: {e}"))?;
    Ok(RANDOM.get_or_init(|| r))
}

/// The cookie secret the config names, or this process's random one.
fn cookie_secret(source: Option<&CookieSecret>) -> Result<cookie::Secret, String> {
    match source {
        Some(CookieSecret::Hex(hex)) => cookie::Secret::from_hex(hex),
        Some(CookieSecret::File(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "dns.cookie.secret_file: cannot read {}: {e}",
                    path.display()
                )
            })?;
            cookie::Secret::from_hex(&text)
                .map_err(|m| format!("dns.cookie.secret_file {}: {m}", path.display()))
        }
        None => {
            let mut key = [0u8; 16];
            key.copy_from_slice(&process_random()?[..16]);
            Ok(cookie::Secret(key))
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct RoutedEntry {
    pub(super) name: Name,
    /// Lowercase wire form of `name`, what the fast path compares.
    pub(super) wire: Vec<u8>,
    /// Index into `Config::routed_names`.
    pub(super) index: usize,
    /// For each region id: the CNAME target in CNAME mode.
    pub(super) cname: Vec<Option<Name>>,
    /// Every region of this name answers with addresses: the fast path may answer it.
    pub(super) fast: bool,
    /// The SOA record for NODATA, encoded without compression (TTL capped by the routed TTL).
    pub(super) negative_soa: Vec<u8>,
}

impl Tables {
    /// Check routed names against the zones and precompute their wire names.
    pub fn build(config: &Config, zones: &ZoneSet) -> Result<Tables, String> {
        let mut routed = Vec::new();
        for (index, rn) in config.routed_names.iter().enumerate() {
            let name = Name::from_ascii(format!("{}.", rn.name))
                .map_err(|e| format!("routed name {}: {e}", rn.name))?;
            let zone = zones
                .find(&name)
                .ok_or_else(|| format!("routed name {} is not inside any loaded zone", rn.name))?;
            for t in [
                RecordType::A,
                RecordType::AAAA,
                RecordType::CNAME,
                RecordType::TXT,
            ] {
                if let Lookup::Answer { .. } = zone.lookup(&name, t) {
                    return Err(format!(
                        "routed name {} also has {t} records in the zone file for {}; \
                         Berth computes its answers, remove them from the zone file",
                        rn.name,
                        zone.origin()
                    ));
                }
            }
            let mut cname = Vec::new();
            for region in &config.regions {
                cname.push(match &region.cname {
                    Some(c) => Some(
                        Name::from_ascii(format!("{c}."))
                            .map_err(|e| format!("region {} cname {c}: {e}", region.name))?,
                    ),
                    None => None,
                });
            }
            let soa = negative_soa(zone.negative_soa(), rn.ttl);
            let mut negative = Vec::new();
            let mut enc = BinEncoder::new(&mut negative);
            enc.set_name_encoding(NameEncoding::Uncompressed);
            soa.emit(&mut enc).map_err(|e| {
                format!("routed name {}: cannot encode the zone's SOA: {e}", rn.name)
            })?;
            let fast = rn.regions.iter().all(|id| cname[*id].is_none());
            let wire = name
                .to_lowercase()
                .to_bytes()
                .map_err(|e| format!("routed name {}: {e}", rn.name))?;
            routed.push(RoutedEntry {
                name,
                wire,
                index,
                cname,
                fast,
                negative_soa: negative,
            });
        }
        let dns = &config.dns;
        let cookie = if dns.cookie.enabled {
            Some(cookie_secret(dns.cookie.secret.as_ref())?)
        } else {
            None
        };
        let rrl = if dns.rate_limit.enabled {
            let mut key = [0u8; 16];
            key.copy_from_slice(&process_random()?[16..]);
            Some(rrl::Limiter::new(&dns.rate_limit, key))
        } else {
            None
        };
        let statics = static_names(zones, &routed)?;
        Ok(Tables {
            routed,
            cookie,
            rrl,
            statics,
        })
    }

    /// The precomputed answers at a lowercase wire-format name, if it has any.
    pub(super) fn find_static(&self, wire: &[u8]) -> Option<&StaticName> {
        self.statics.get(wire)
    }

    /// The routed name at wire-format name `wire`, in any case (the length octets are below
    /// any letter, so a case-insensitive comparison of wire forms compares the names).
    pub(super) fn find_wire(&self, wire: &[u8]) -> Option<&RoutedEntry> {
        self.routed
            .iter()
            .find(|r| r.wire.eq_ignore_ascii_case(wire))
    }

    pub(super) fn find(&self, qname: &Name) -> Option<&RoutedEntry> {
        // Name equality is case-insensitive (RFC 4343); there are few routed names.
        self.routed.iter().find(|r| r.name == *qname)
    }
}

/// The SOA for a routed name's NODATA: its negative TTL is capped at the routed TTL, so a
/// client sees the name again as soon as a region is enabled.
pub(super) fn negative_soa(mut soa: Record, routed_ttl: u32) -> Record {
    soa.ttl = soa.ttl.min(routed_ttl);
    soa
}

/// Precompute [`StaticName`]s for every owner name of every zone, except routed names, names
/// answered by another (nested) zone, and answers that depend on routing or leave the zone's
/// authority (a CNAME into a routed name, a referral).
fn static_names(
    zones: &ZoneSet,
    routed: &[RoutedEntry],
) -> Result<HashMap<Box<[u8]>, StaticName, foldhash::fast::RandomState>, String> {
    let mut out = HashMap::default();
    for zone in zones.zones() {
        for name in zone.names() {
            let served_here = zones
                .find(name)
                .is_some_and(|z| z.origin() == zone.origin());
            if !served_here || routed.iter().any(|r| r.name == *name) {
                continue;
            }
            let mut entry = StaticName::default();
            for qtype in STATIC_TYPES {
                let Some(resp) = static_response(zone, routed, name, qtype) else {
                    entry.by_type.push((u16::from(qtype), None));
                    continue;
                };
                let bytes = resp.to_vec().map_err(|e| {
                    format!("zone {}: cannot encode {name} {qtype}: {e}", zone.origin())
                })?;
                let question_end = 12 + name.to_bytes().map_err(|e| e.to_string())?.len() + 4;
                let mut header = [0u8; 12];
                header.copy_from_slice(&bytes[..12]);
                let answer = StaticAnswer {
                    header,
                    body: bytes[question_end..].to_vec(),
                };
                let nodata =
                    resp.answers.is_empty() && resp.metadata.response_code == ResponseCode::NoError;
                match &entry.nodata {
                    Some(n) if nodata && *n == answer => {}
                    None if nodata => entry.nodata = Some(answer),
                    _ => entry.by_type.push((u16::from(qtype), Some(answer))),
                }
            }
            let wire = name.to_lowercase().to_bytes().map_err(|e| e.to_string())?;
            out.insert(wire.into_boxed_slice(), entry);
        }
    }
    Ok(out)
}

/// The general path's message for a plain query of `name`/`qtype` (see `zone_answer` in the
/// front end), or None where the answer is not static.
fn static_response(
    zone: &crate::zone::Zone,
    routed: &[RoutedEntry],
    name: &Name,
    qtype: RecordType,
) -> Option<Message> {
    let mut resp = Message::response(0, OpCode::Query);
    resp.add_query(Query::query(name.clone(), qtype));
    resp.metadata.authoritative = true;
    let rcode = match zone.lookup(name, qtype) {
        Lookup::Answer {
            answers,
            additionals,
        } => {
            resp.add_answers(answers);
            resp.add_additionals(additionals);
            ResponseCode::NoError
        }
        Lookup::NoData { cname_chain } => {
            let into_routed = match cname_chain.last().map(|r| &r.data) {
                Some(RData::CNAME(c)) => routed.iter().any(|r| r.name == c.0),
                _ => false,
            };
            if into_routed {
                return None;
            }
            resp.add_answers(cname_chain);
            resp.add_authority(zone.negative_soa());
            ResponseCode::NoError
        }
        Lookup::NxDomain { cname_chain } => {
            resp.add_answers(cname_chain);
            resp.add_authority(zone.negative_soa());
            ResponseCode::NXDomain
        }
        Lookup::Referral { .. } => return None,
    };
    resp.metadata.response_code = rcode;
    Some(resp)
}
