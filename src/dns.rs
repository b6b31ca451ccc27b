//! The DNS front end: turns a query packet into an answer, and serves it on UDP and TCP.
//!
//! [`answer`] is the whole protocol logic: header checks, EDNS and Client Subnet (RFC 6891,
//! RFC 7871), routed names (from the routing core), static zone data (from [`crate::zone`]),
//! NXDOMAIN vs NODATA, REFUSED outside our zones, minimal ANY (RFC 8482), truncation. It is a
//! plain function of (snapshot, packet, source, transport), so tests drive it without sockets.
//!
//! The servers are in [`server`]: UDP on plain threads with one `SO_REUSEPORT` socket each
//! (no async runtime between the socket and the answer), TCP through hickory-server's
//! connection handling. Not here: how a region is chosen ([`crate::routing`]).

mod fast;
pub mod server;

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, HINFO};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};

use crate::config::Config;
use crate::live::Live;
use crate::snapshot::Snapshot;
use crate::zone::{Lookup, ZoneSet};

/// What the query arrived on: UDP answers are bounded by the payload size, TCP's are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The EDNS payload size we advertise; RFC 9715 / DNS Flag Day 2020 value.
pub const OUR_PAYLOAD: u16 = 1232;

/// Precomputed, per-snapshot DNS data for routed names.
#[derive(Debug, Clone)]
pub struct Tables {
    routed: Vec<RoutedEntry>,
}

#[derive(Debug, Clone)]
struct RoutedEntry {
    name: Name,
    /// Lowercase wire form of `name`, what the fast path compares.
    wire: Vec<u8>,
    /// Index into `Config::routed_names`.
    index: usize,
    /// For each region id: the CNAME target in CNAME mode.
    cname: Vec<Option<Name>>,
    /// Every region of this name answers with addresses: the fast path may answer it.
    fast: bool,
    /// The SOA record for NODATA, encoded without compression (TTL capped by the routed TTL).
    negative_soa: Vec<u8>,
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
        Ok(Tables { routed })
    }

    fn find_wire(&self, wire: &[u8]) -> Option<&RoutedEntry> {
        self.routed.iter().find(|r| r.wire == wire)
    }

    fn find(&self, qname: &Name) -> Option<&RoutedEntry> {
        // Name equality is case-insensitive (RFC 4343); there are few routed names.
        self.routed.iter().find(|r| r.name == *qname)
    }
}

/// Answer one query packet. `None` means: send nothing (not a query, or too short to answer).
pub fn answer(live: &Live, packet: &[u8], src: IpAddr, transport: Transport) -> Option<Vec<u8>> {
    // Fewer than 12 octets has no ID to answer with; a response must never be answered
    // (two servers would bounce it forever).
    if packet.len() < 12 || packet[2] & 0x80 != 0 {
        live.metrics
            .dropped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return None;
    }
    let tcp = transport == Transport::Tcp;
    if !tcp {
        let snap = live.snapshot.load();
        if let Some(out) = fast::answer(live, &snap, packet, src, snap.config.dns.max_udp_payload) {
            return Some(out);
        }
    }
    let request = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(_) => {
            live.metrics.query(tcp, ResponseCode::FormErr.low());
            return Some(formerr(packet));
        }
    };
    let snap = live.snapshot.load();
    let response = respond(live, &snap, &request, src);
    live.metrics
        .query(tcp, response.metadata.response_code.low());
    Some(encode(
        &response,
        &request,
        transport,
        snap.config.dns.max_udp_payload,
    ))
}

/// FORMERR for a packet we could not parse: its ID and opcode, no question.
fn formerr(packet: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 12];
    out[0] = packet[0];
    out[1] = packet[1];
    // QR=1, opcode copied, RD copied; RCODE=1.
    out[2] = 0x80 | (packet[2] & 0x79);
    out[3] = ResponseCode::FormErr.low();
    out
}

/// The general path alone (no fast path): tests compare the two.
#[doc(hidden)]
pub fn answer_general(live: &Live, packet: &[u8], src: IpAddr) -> Option<Vec<u8>> {
    let request = Message::from_vec(packet).ok()?;
    let snap = live.snapshot.load();
    let response = respond(live, &snap, &request, src);
    Some(encode(
        &response,
        &request,
        Transport::Udp,
        snap.config.dns.max_udp_payload,
    ))
}

/// The UDP fast path alone: `None` means it leaves the packet to the general path. For the
/// differential fuzz tests (`tests/fuzz.rs`, `fuzz/`), which compare it with
/// [`answer_general`]; servers call [`answer`].
#[doc(hidden)]
pub fn answer_fast(live: &Live, packet: &[u8], src: IpAddr) -> Option<Vec<u8>> {
    let snap = live.snapshot.load();
    fast::answer(live, &snap, packet, src, snap.config.dns.max_udp_payload)
}

/// The protocol logic on parsed messages; used by UDP and TCP alike.
pub fn respond(live: &Live, snap: &Snapshot, request: &Message, src: IpAddr) -> Message {
    let mut resp = Message::response(request.metadata.id, request.metadata.op_code);
    resp.metadata.recursion_desired = request.metadata.recursion_desired;
    resp.metadata.checking_disabled = request.metadata.checking_disabled;
    resp.add_queries(request.queries.iter().cloned());

    let mut edns_out = request.edns.as_ref().map(|req| {
        let mut e = Edns::new();
        e.set_max_payload(OUR_PAYLOAD);
        e.set_dnssec_ok(req.flags().dnssec_ok);
        e
    });
    let finish = |mut resp: Message, rcode: ResponseCode, edns: Option<Edns>| {
        if let Some(mut e) = edns {
            e.set_rcode_high(rcode.high());
            resp.set_edns(e);
        }
        resp.metadata.response_code = rcode;
        resp
    };

    if request.metadata.message_type != MessageType::Query {
        return finish(resp, ResponseCode::FormErr, edns_out);
    }
    if request.metadata.op_code != OpCode::Query {
        return finish(resp, ResponseCode::NotImp, edns_out);
    }
    if let Some(req_edns) = &request.edns {
        if req_edns.version() > 0 {
            // RFC 6891 6.1.3: BADVERS, with the OPT record saying which version we speak.
            return finish(resp, ResponseCode::BADVERS, edns_out);
        }
    }
    if request.queries.len() != 1 || !request.answers.is_empty() || !request.authorities.is_empty()
    {
        return finish(resp, ResponseCode::FormErr, edns_out);
    }
    let ecs = match request
        .edns
        .as_ref()
        .and_then(|e| e.option(EdnsCode::Subnet))
    {
        Some(EdnsOption::Subnet(cs)) => match valid_ecs(cs) {
            Some(cs) => Some(cs),
            // RFC 7871 7.1.1: stray address bits or a bad prefix is a FORMERR.
            None => return finish(resp, ResponseCode::FormErr, edns_out),
        },
        _ => None,
    };
    let query = &request.queries[0];
    let qname = query.name();
    let qtype = query.query_type();
    if query.query_class() != DNSClass::IN {
        return finish(resp, ResponseCode::Refused, edns_out);
    }
    if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
        // Zone transfers are not offered: other servers of the zone run Berth too.
        return finish(resp, ResponseCode::Refused, edns_out);
    }
    let Some(zone) = snap.zones.find(qname) else {
        return finish(resp, ResponseCode::Refused, edns_out);
    };
    resp.metadata.authoritative = true;

    // The client's address for routing: ECS unless absent or /0 (RFC 7871 7.1.2).
    let (client, has_ecs) = match &ecs {
        Some(cs) if cs.source_prefix() > 0 => (cs.addr(), true),
        _ => (src, false),
    };
    // The ECS scope we answer with: 0 unless the answer depended on the client's address.
    let mut scope = 0u8;
    let rcode = if let Some(entry) = snap.dns.find(qname) {
        let routed = routed_answer(live, snap, entry, qname, qtype, client);
        if has_ecs {
            scope = routed.scope;
        }
        resp.add_answers(routed.records);
        if resp.answers.is_empty() {
            let ttl = snap.config.routed_names[entry.index].ttl;
            resp.add_authority(negative_soa(zone.negative_soa(), ttl));
        }
        ResponseCode::NoError
    } else {
        let lookup_type = if qtype == RecordType::ANY {
            RecordType::HINFO
        } else {
            qtype
        };
        match zone.lookup(qname, lookup_type) {
            Lookup::Answer {
                answers,
                additionals,
            } => {
                resp.add_answers(answers);
                resp.add_additionals(additionals);
                ResponseCode::NoError
            }
            Lookup::NoData { cname_chain }
                if qtype == RecordType::ANY && cname_chain.is_empty() =>
            {
                // RFC 8482 4.2: answer ANY with one synthesized HINFO instead of everything.
                resp.add_answer(Record::from_rdata(
                    qname.clone(),
                    zone.soa().ttl.min(3600),
                    RData::HINFO(HINFO::new("RFC8482".to_string(), String::new())),
                ));
                ResponseCode::NoError
            }
            Lookup::NoData { cname_chain } => {
                // A CNAME into a routed name (`www CNAME registry`): the zone sees an empty
                // non-terminal there, the answer comes from the routing core.
                let target = match cname_chain.last().map(|r| &r.data) {
                    Some(RData::CNAME(CNAME(t))) => snap.dns.find(t).map(|e| (e, t.clone())),
                    _ => None,
                };
                resp.add_answers(cname_chain);
                match target {
                    Some((entry, t)) => {
                        let routed = routed_answer(live, snap, entry, &t, qtype, client);
                        if has_ecs {
                            scope = routed.scope;
                        }
                        let empty = routed.records.is_empty();
                        resp.add_answers(routed.records);
                        if empty {
                            resp.add_authority(zone.negative_soa());
                        }
                    }
                    None => {
                        resp.add_authority(zone.negative_soa());
                    }
                }
                ResponseCode::NoError
            }
            Lookup::NxDomain { cname_chain } => {
                // RFC 6604: after a CNAME chain the rcode speaks of the last name in it.
                resp.add_answers(cname_chain);
                resp.add_authority(zone.negative_soa());
                ResponseCode::NXDomain
            }
            Lookup::Referral { ns, glue } => {
                resp.metadata.authoritative = false;
                resp.add_authorities(ns);
                resp.add_additionals(glue);
                ResponseCode::NoError
            }
        }
    };

    if let (Some(e), Some(cs)) = (edns_out.as_mut(), &ecs) {
        let mut echo = ClientSubnet::new(cs.addr(), cs.source_prefix(), scope);
        echo.set_scope_prefix(scope);
        e.options_mut().insert(EdnsOption::Subnet(echo));
    }
    finish(resp, rcode, edns_out)
}

/// The records a routed name answers with, and the ECS scope they depended on.
struct RoutedAnswer {
    records: Vec<Record>,
    scope: u8,
}

/// Route `client` for the routed name `entry` and render the decision as records owned by
/// `owner` (the name as the client spelled it). Empty records: NODATA.
fn routed_answer(
    live: &Live,
    snap: &Snapshot,
    entry: &RoutedEntry,
    owner: &Name,
    qtype: RecordType,
    client: IpAddr,
) -> RoutedAnswer {
    let rn = &snap.config.routed_names[entry.index];
    let routed = live.route(snap, entry.index, client);
    let scope = rn.client_prefix(&client);
    let mut records = Vec::new();
    let Some(region_id) = routed.decision.region else {
        return RoutedAnswer { records, scope };
    };
    let region = &snap.config.regions[region_id];
    let ttl = rn.ttl;
    if let Some(target) = &entry.cname[region_id] {
        records.push(Record::from_rdata(
            owner.clone(),
            ttl,
            RData::CNAME(CNAME(target.clone())),
        ));
        if qtype != RecordType::CNAME {
            if let Some(tz) = snap.zones.find(target) {
                if let Lookup::Answer { answers, .. } = tz.lookup(target, qtype) {
                    records.extend(answers);
                }
            }
        }
        return RoutedAnswer { records, scope };
    }
    let want = if qtype == RecordType::ANY {
        // RFC 8482: a subset is enough; the addresses are what ANY callers want.
        if region.a.is_empty() {
            RecordType::AAAA
        } else {
            RecordType::A
        }
    } else {
        qtype
    };
    match want {
        RecordType::A => records.extend(
            region
                .a
                .iter()
                .map(|ip| Record::from_rdata(owner.clone(), ttl, RData::A(A(*ip)))),
        ),
        RecordType::AAAA => records.extend(
            region
                .aaaa
                .iter()
                .map(|ip| Record::from_rdata(owner.clone(), ttl, RData::AAAA(AAAA(*ip)))),
        ),
        _ => {}
    }
    RoutedAnswer { records, scope }
}

/// An ECS option is usable when its prefix fits the family and no address bit is set past it.
fn valid_ecs(cs: &ClientSubnet) -> Option<ClientSubnet> {
    let prefix = cs.source_prefix();
    let net = ipnet::IpNet::new(cs.addr(), prefix).ok()?;
    if net.trunc().addr() != cs.addr() {
        return None;
    }
    Some(*cs)
}

/// The SOA for a routed name's NODATA: its negative TTL is capped at the routed TTL, so a
/// client sees the name again as soon as a region is enabled.
fn negative_soa(mut soa: Record, routed_ttl: u32) -> Record {
    soa.ttl = soa.ttl.min(routed_ttl);
    soa
}

/// Encode a response, truncating for UDP: drop additional data first, then set TC and drop
/// every record section (RFC 2181 9: the client retries over TCP).
fn encode(resp: &Message, request: &Message, transport: Transport, max_udp: u16) -> Vec<u8> {
    let limit = match (transport, &request.edns) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (Transport::Udp, None) => 512,
        (Transport::Udp, Some(e)) => usize::from(e.max_payload().clamp(512, max_udp.max(512))),
    };
    if let Ok(bytes) = resp.to_vec() {
        if bytes.len() <= limit {
            return bytes;
        }
    }
    let mut slim = resp.clone();
    slim.additionals.clear();
    if let Ok(bytes) = slim.to_vec() {
        if bytes.len() <= limit {
            return bytes;
        }
    }
    slim.answers.clear();
    slim.authorities.clear();
    slim.metadata.truncation = true;
    match slim.to_vec() {
        Ok(bytes) => bytes,
        Err(_) => {
            let mut fail = Message::error_msg(
                request.metadata.id,
                request.metadata.op_code,
                ResponseCode::ServFail,
            );
            fail.add_queries(request.queries.iter().cloned());
            fail.to_vec().unwrap_or_default()
        }
    }
}
