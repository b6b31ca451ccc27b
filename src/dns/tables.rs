//! [`Tables`]: what the DNS front end precomputes from a config and its zones (routed names'
//! wire forms, CNAME targets, negative SOAs), plus its per-snapshot state (cookie secret, rate
//! limiter). A leaf: it imports config, zone and its sibling pure modules, never the front end
//! itself, so the snapshot can hold it without depending on `dns`.

use std::collections::{HashMap, HashSet};
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
    /// Every zone, with what the fast path needs to answer NXDOMAIN in it (the most specific
    /// zone holding a name is found by its longest suffix, as `ZoneSet::find` chooses).
    negative: Vec<NegativeZone>,
}

/// One zone as the fast path's NXDOMAIN sees it.
pub(super) struct NegativeZone {
    /// The origin's lowercase wire form.
    origin: Box<[u8]>,
    /// Every name that exists in the zone (owner names and the empty non-terminals above
    /// them), lowercase wire form; `None` for a zone with delegations or wildcards, whose
    /// NXDOMAIN the general path decides.
    exists: Option<HashSet<Box<[u8]>, foldhash::fast::RandomState>>,
    /// NXDOMAIN: header (QR AA, RCODE 3, one question, one authority record) and the zone's
    /// negative SOA, uncompressed.
    pub(super) answer: StaticAnswer,
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
        let negative = negative_zones(zones)?;
        Ok(Tables {
            routed,
            cookie,
            rrl,
            statics,
            negative,
        })
    }

    /// The zone `wire` (a lowercase wire-format name) is NXDOMAIN in, if that can be told from
    /// the zone's names alone: the most specific zone holding it has no delegations and no
    /// wildcards, and no name at or below `wire` exists there. `None` otherwise (the name
    /// exists, is outside every zone, or needs the full lookup).
    pub(super) fn find_nxdomain(&self, wire: &[u8]) -> Option<&NegativeZone> {
        nxdomain_zone(&self.negative, wire)
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

/// [`Tables::find_nxdomain`] over `zones`.
fn nxdomain_zone<'a>(zones: &'a [NegativeZone], wire: &[u8]) -> Option<&'a NegativeZone> {
    // Label starts from the left: the first suffix that is an origin is the most specific.
    let mut i = 0;
    while i < wire.len() {
        let suffix = &wire[i..];
        if let Some(z) = zones.iter().find(|z| *z.origin == *suffix) {
            let exists = z.exists.as_ref()?;
            return (!exists.contains(wire)).then_some(z);
        }
        i += usize::from(wire[i]) + 1;
    }
    None
}

/// Each zone's origin, its names and the empty non-terminals above them, and its negative
/// SOA.
fn negative_zones(zones: &ZoneSet) -> Result<Vec<NegativeZone>, String> {
    let lower = |n: &Name| -> Result<Box<[u8]>, String> {
        Ok(n.to_lowercase()
            .to_bytes()
            .map_err(|e| e.to_string())?
            .into_boxed_slice())
    };
    let mut out = Vec::new();
    for zone in zones.zones() {
        let origin_labels = usize::from(zone.origin().num_labels());
        let exists = if zone.has_cuts_or_wildcards() {
            None
        } else {
            let mut set = HashSet::default();
            for name in zone.names() {
                for n in origin_labels..=usize::from(name.num_labels()) {
                    set.insert(lower(&name.trim_to(n))?);
                }
            }
            Some(set)
        };
        let mut soa = Vec::new();
        let mut enc = BinEncoder::new(&mut soa);
        enc.set_name_encoding(NameEncoding::Uncompressed);
        zone.negative_soa()
            .emit(&mut enc)
            .map_err(|e| format!("zone {}: cannot encode its SOA: {e}", zone.origin()))?;
        out.push(NegativeZone {
            origin: lower(zone.origin())?,
            exists,
            answer: StaticAnswer {
                header: [
                    0,
                    0,
                    0x84,
                    ResponseCode::NXDomain.low(),
                    0,
                    1,
                    0,
                    0,
                    0,
                    1,
                    0,
                    0,
                ],
                body: soa,
            },
        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zone::Zone;

    fn negative(texts: &[(&str, &str)]) -> Vec<NegativeZone> {
        let zones = texts
            .iter()
            .map(|(origin, text)| {
                let origin = Name::from_ascii(origin).unwrap();
                Zone::parse_str(text, &origin, "test").unwrap()
            })
            .collect();
        negative_zones(&ZoneSet::new(zones).unwrap()).unwrap()
    }

    fn nx(zones: &[NegativeZone], name: &str) -> Option<String> {
        let wire = Name::from_ascii(name).unwrap().to_bytes().unwrap();
        nxdomain_zone(zones, &wire).map(|z| String::from_utf8_lossy(&z.origin).into_owned())
    }

    const APEX: &str = "$TTL 60\n@ SOA ns1 host 1 2 3 4 5\n@ NS ns1\nns1 A 127.0.0.1\n";

    /// NXDOMAIN from the names alone: not for a name or an empty non-terminal that exists,
    /// nor outside the zones, nor in a zone with a delegation or a wildcard; the most
    /// specific zone decides.
    #[test]
    fn nxdomain_is_told_from_the_names_only_where_that_is_enough() {
        let plain = format!("{APEX}a.b A 192.0.2.1\n");
        let child = APEX.to_string();
        let z = negative(&[("example.test.", &plain), ("sub.example.test.", &child)]);
        assert!(nx(&z, "x.example.test.").is_some());
        assert!(nx(&z, "deep.x.example.test.").is_some());
        assert_eq!(nx(&z, "a.b.example.test."), None, "a name");
        assert_eq!(nx(&z, "b.example.test."), None, "an empty non-terminal");
        assert_eq!(nx(&z, "example.test."), None, "the apex");
        assert_eq!(nx(&z, "other.test."), None, "outside the zones");
        let in_child = nx(&z, "x.sub.example.test.").expect("NXDOMAIN in the child");
        assert!(in_child.contains("sub"), "{in_child}");
        assert_eq!(
            nx(&z, "ns1.sub.example.test."),
            None,
            "the child's own name"
        );

        let wild = format!("{APEX}* A 192.0.2.9\n");
        assert_eq!(
            nx(&negative(&[("example.test.", &wild)]), "x.example.test."),
            None
        );
        let cut = format!("{APEX}deleg NS ns.elsewhere.test.\n");
        assert_eq!(
            nx(&negative(&[("example.test.", &cut)]), "x.example.test."),
            None
        );
    }
}
