//! [`Tables`]: what the DNS front end precomputes from a config and its zones (routed names'
//! wire forms, CNAME targets, negative SOAs), plus its per-snapshot state (cookie secret, rate
//! limiter). A leaf: it imports config, zone and its sibling pure modules, never the front end
//! itself, so the snapshot can hold it without depending on `dns`.

use std::sync::OnceLock;

use hickory_proto::rr::{Name, Record, RecordType};
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
        Ok(Tables {
            routed,
            cookie,
            rrl,
        })
    }

    pub(super) fn find_wire(&self, wire: &[u8]) -> Option<&RoutedEntry> {
        self.routed.iter().find(|r| r.wire == wire)
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
