//! The DNS front end: turns a query packet into an answer, and serves it on UDP and TCP.
//!
//! [`answer`] is the whole protocol logic: header checks, EDNS and Client Subnet (RFC 6891,
//! RFC 7871), routed names (from the routing core), static zone data (from [`crate::zone`]),
//! NXDOMAIN vs NODATA, REFUSED outside our zones, minimal ANY (RFC 8482), truncation. It is a
//! plain function of (snapshot, packet, source, transport), so tests drive it without sockets.
//!
//! Around it: the raw EDNS checks ([`edns`]: FORMERR for what hickory forgives), DNS COOKIE
//! ([`cookie`], RFC 7873/9018) and UDP response rate limiting ([`rrl`]), applied to the
//! finished answer so both paths share it.
//!
//! The servers are in [`server`]: UDP on plain threads with one `SO_REUSEPORT` socket each
//! (no async runtime between the socket and the answer), TCP on Berth's own capped accept
//! loop. Not here: how a region is chosen ([`crate::routing`]).

pub mod cookie;
pub mod edns;
mod fast;
pub mod rrl;
pub mod server;
pub mod tables;

pub use tables::Tables;
use tables::{negative_soa, RoutedEntry};

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, HINFO};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::live::Live;
use crate::snapshot::Snapshot;
use crate::sticky::Millis;
use crate::zone::Lookup;

/// What the query arrived on: UDP answers are bounded by the payload size, TCP's are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The EDNS payload size we advertise; RFC 9715 / DNS Flag Day 2020 value.
pub const OUR_PAYLOAD: u16 = 1232;

/// The clocks an answer may need: Unix seconds for cookie timestamps, and the sticky table's
/// monotonic ms. Each is read at most once per clock, and only when needed (the fast path for
/// a static answer without a cookie reads neither). The UDP loop keeps one clock for a whole
/// batch of queries ([`answer_batch`]): the batch arrived at one instant, give or take
/// microseconds, and a clock read per query was about 1% of Berth's CPU per answer.
pub struct Clock {
    unix: Option<u32>,
    mono: Option<Millis>,
}

impl Clock {
    /// A clock that reads the time when first asked; `unix_secs` fixes the cookie time.
    pub fn new(unix_secs: Option<u32>) -> Clock {
        Clock {
            unix: unix_secs,
            mono: None,
        }
    }

    fn unix_secs(&mut self) -> u32 {
        *self.unix.get_or_insert_with(|| {
            // RFC 9018 timestamps are Unix time modulo 2^32.
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as u32)
        })
    }

    /// The sticky clock ([`Live::now`]).
    fn now(&mut self, live: &Live) -> Millis {
        *self.mono.get_or_insert_with(|| live.now())
    }
}

/// Answer one query packet. `None` means: send nothing (not a query, too short to answer, or
/// held back by the rate limiter).
pub fn answer(live: &Live, packet: &[u8], src: IpAddr, transport: Transport) -> Option<Vec<u8>> {
    answer_at(live, packet, src, transport, None)
}

/// [`answer`] with the cookie clock given (Unix seconds); `None` reads the system clock.
/// Tests compare the two paths at one instant this way.
#[doc(hidden)]
pub fn answer_at(
    live: &Live,
    packet: &[u8],
    src: IpAddr,
    transport: Transport,
    unix_secs: Option<u32>,
) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    answer_into(live, packet, src, transport, unix_secs, &mut out).then_some(out)
}

/// [`answer_at`] into a buffer the caller keeps across queries: the UDP loop reuses one per
/// slot of its batch, so an answer from the fast path allocates nothing. Returns whether there
/// is an answer to send (then it is all of `out`).
pub fn answer_into(
    live: &Live,
    packet: &[u8],
    src: IpAddr,
    transport: Transport,
    unix_secs: Option<u32>,
    out: &mut Vec<u8>,
) -> bool {
    let snap = live.snapshot.load();
    let mut clock = Clock::new(unix_secs);
    if transport == Transport::Tcp {
        out.clear();
        if !is_query(live, packet) {
            return false;
        }
        // TCP proves the source address: never limited.
        general(live, &snap, packet, src, transport, &mut clock, out);
        return true;
    }
    answer_batch(live, &snap, &mut clock, packet, src, out)
}

/// Whether `packet` can be answered at all: fewer than 12 octets has no ID to answer with; a
/// response must never be answered (two servers would bounce it forever). Counts the others.
fn is_query(live: &Live, packet: &[u8]) -> bool {
    if packet.len() < 12 || packet[2] & 0x80 != 0 {
        live.metrics.dropped.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    true
}

/// [`answer_into`] for one UDP query of a batch: the UDP loop loads the snapshot and makes
/// the [`Clock`] once per batch, not per query.
pub fn answer_batch(
    live: &Live,
    snap: &Snapshot,
    clock: &mut Clock,
    packet: &[u8],
    src: IpAddr,
    out: &mut Vec<u8>,
) -> bool {
    out.clear();
    if !is_query(live, packet) {
        return false;
    }
    let cookie_ok = match fast::answer(live, snap, packet, src, clock, out) {
        Some(ok) => ok,
        None => general(live, snap, packet, src, Transport::Udp, clock, out),
    };
    limit(live, snap, cookie_ok, src, clock, out)
}

/// Response rate limiting: send `out` as it is, drop it (false), or turn it into an empty
/// truncated answer (slip).
fn limit(
    live: &Live,
    snap: &Snapshot,
    cookie_ok: bool,
    src: IpAddr,
    clock: &mut Clock,
    out: &mut Vec<u8>,
) -> bool {
    let Some(limiter) = &snap.dns.rrl else {
        return true;
    };
    // A valid server cookie proves the source address, as TCP does (BIND and Knot agree).
    if cookie_ok {
        return true;
    }
    match limiter.check(src, clock.now(live).saturating_mul(1000)) {
        rrl::Verdict::Send => true,
        rrl::Verdict::Slip => {
            live.metrics.rrl_slipped.fetch_add(1, Ordering::Relaxed);
            *out = slip(out);
            true
        }
        rrl::Verdict::Drop => {
            live.metrics.rrl_dropped.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// The empty truncated form of one of our answers: header with TC set, the question, the OPT
/// (with its server cookie, so the client can come back with it and pass), no records.
fn slip(out: &[u8]) -> Vec<u8> {
    let layout = edns::layout(out).ok();
    let end = layout.as_ref().map_or(12, |l| l.question_end);
    let mut s = out[..end.min(out.len())].to_vec();
    s[2] |= 0x02;
    if end == 12 {
        s[4..6].fill(0);
    }
    s[6..10].fill(0);
    s[10..12].fill(0);
    if let Some(opt) = layout.and_then(|l| l.opt) {
        s[11] = 1;
        s.extend_from_slice(&out[opt]);
    }
    s
}

/// The general path: hickory parses, [`respond_with`] answers, the answer is encoded into
/// `out`. Returns whether the query showed a valid server cookie (then it is not limited).
fn general(
    live: &Live,
    snap: &Snapshot,
    packet: &[u8],
    src: IpAddr,
    transport: Transport,
    clock: &mut Clock,
    out: &mut Vec<u8>,
) -> bool {
    out.clear();
    let tcp = transport == Transport::Tcp;
    let request = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(_) => {
            live.metrics.query(tcp, ResponseCode::FormErr.low());
            out.extend_from_slice(&formerr(packet));
            return false;
        }
    };
    let opt = query_options(packet, snap.dns.cookie.is_some());
    let (response, cookie_ok) = respond_with(live, snap, &request, opt, src, clock);
    live.metrics
        .query(tcp, response.metadata.response_code.low());
    let max_udp = snap.config.dns.max_udp_payload;
    out.extend_from_slice(&encode(&response, &request, transport, max_udp));
    cookie_ok
}

/// The OPT options of a query, from its bytes.
fn query_options(packet: &[u8], cookies: bool) -> Result<edns::Options<'_>, edns::Malformed> {
    let layout = edns::layout(packet)?;
    match layout.opt_rdata(packet) {
        Some(rdata) => edns::options(rdata, cookies),
        None => Ok(edns::Options::default()),
    }
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

/// The fast path alone: `None` where it leaves the query to the general path. Tests compare.
#[doc(hidden)]
pub fn answer_fast(
    live: &Live,
    packet: &[u8],
    src: IpAddr,
    unix_secs: Option<u32>,
) -> Option<Vec<u8>> {
    let snap = live.snapshot.load();
    let mut out = Vec::new();
    fast::answer(
        live,
        &snap,
        packet,
        src,
        &mut Clock::new(unix_secs),
        &mut out,
    )
    .map(|_| out)
}

/// The general path alone (no fast path, no rate limiting): tests compare the two.
#[doc(hidden)]
pub fn answer_general(
    live: &Live,
    packet: &[u8],
    src: IpAddr,
    unix_secs: Option<u32>,
) -> Option<Vec<u8>> {
    if packet.len() < 12 || packet[2] & 0x80 != 0 {
        return None;
    }
    let snap = live.snapshot.load();
    let mut clock = Clock::new(unix_secs);
    let mut out = Vec::new();
    general(
        live,
        &snap,
        packet,
        src,
        Transport::Udp,
        &mut clock,
        &mut out,
    );
    Some(out)
}

/// The protocol logic on parsed messages, used by UDP and TCP alike. `opt` is what the query's
/// OPT record says, read from its bytes ([`edns`]). Also says whether the query showed a valid
/// server cookie.
fn respond_with(
    live: &Live,
    snap: &Snapshot,
    request: &Message,
    opt: Result<edns::Options<'_>, edns::Malformed>,
    src: IpAddr,
    clock: &mut Clock,
) -> (Message, bool) {
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
    // A malformed OPT (options overrunning its RDATA, a bad ECS or COOKIE option) is a
    // FORMERR (RFC 6891 6.1.1, RFC 7871 6, RFC 7873 5.2.2), not an answer without options.
    let opts = match opt {
        Ok(o) if request.edns.is_some() => o,
        Ok(_) => edns::Options::default(),
        Err(_) => {
            let mut resp = resp;
            if let Some(mut e) = edns_out {
                e.set_rcode_high(ResponseCode::FormErr.high());
                resp.set_edns(e);
            }
            resp.metadata.response_code = ResponseCode::FormErr;
            return (resp, false);
        }
    };
    // Every answer to a query with a client cookie carries our server cookie (RFC 7873 5.2).
    let cookie = match (&snap.dns.cookie, &opts.cookie) {
        (Some(secret), Some(c)) => Some(cookie::answer(secret, c, src, clock.unix_secs())),
        _ => None,
    };
    let cookie_ok = cookie.is_some_and(|c| c.valid);
    let finish = |mut resp: Message, rcode: ResponseCode, edns: Option<Edns>| {
        if let Some(mut e) = edns {
            e.set_rcode_high(rcode.high());
            if let Some(c) = &cookie {
                e.options_mut()
                    .insert(EdnsOption::Unknown(edns::OPT_COOKIE, c.option.to_vec()));
            }
            resp.set_edns(e);
        }
        resp.metadata.response_code = rcode;
        (resp, cookie_ok)
    };

    if let Some(rcode) = precheck(request, cookie.is_some()) {
        return finish(resp, rcode, edns_out);
    }
    let ecs = opts.ecs;
    let query = &request.queries[0];
    let qname = query.name();
    let Some(zone) = snap.zones.find(qname) else {
        return finish(resp, ResponseCode::Refused, edns_out);
    };
    resp.metadata.authoritative = true;

    // The client's address for routing: ECS unless absent or /0 (RFC 7871 7.1.2).
    let (client, has_ecs) = match &ecs {
        Some(cs) if cs.source > 0 => (cs.ip(), true),
        _ => (src, false),
    };
    let asked = Asked {
        name: qname,
        qtype: query.query_type(),
        client,
    };
    let (rcode, scope) = match snap.dns.find(qname) {
        Some(entry) => {
            let routed = routed_answer(live, snap, entry, qname, asked.qtype, client);
            resp.add_answers(routed.records);
            if resp.answers.is_empty() {
                let ttl = snap.config.routed_names[entry.index].ttl;
                resp.add_authority(negative_soa(zone.negative_soa(), ttl));
            }
            (ResponseCode::NoError, routed.scope)
        }
        None => zone_answer(live, snap, zone, &mut resp, &asked),
    };
    if let (Some(e), Some(cs)) = (edns_out.as_mut(), &ecs) {
        // 0 unless the answer depended on the client's address, and never more than the bits
        // the client sent (RFC 7871 7.2.1 allows more; resolvers cache for the source anyway).
        let scope = if has_ecs { scope.min(cs.source) } else { 0 };
        // Exactly the octets the query sent: Ecs::parse checked they are what the prefix needs.
        let echo = ClientSubnet::new(cs.ip(), cs.source, scope);
        e.options_mut().insert(EdnsOption::Subnet(echo));
    }
    finish(resp, rcode, edns_out)
}

/// The rcode a query is answered with before any lookup: not a query, an opcode or EDNS
/// version we do not speak, not exactly one question, another class, a zone transfer; or
/// NOERROR for a request of a server cookie alone (`cookie`: it has a COOKIE we answer).
fn precheck(request: &Message, cookie: bool) -> Option<ResponseCode> {
    if request.metadata.message_type != MessageType::Query {
        return Some(ResponseCode::FormErr);
    }
    if request.metadata.op_code != OpCode::Query {
        return Some(ResponseCode::NotImp);
    }
    if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
        // RFC 6891 6.1.3: BADVERS, with the OPT record saying which version we speak.
        return Some(ResponseCode::BADVERS);
    }
    let no_records = request.answers.is_empty() && request.authorities.is_empty();
    let [query] = request.queries.as_slice() else {
        // RFC 7873 5.4: no question, a COOKIE option: the client asks for a server cookie.
        let asks_cookie = request.queries.is_empty() && cookie && no_records;
        return Some(if asks_cookie {
            ResponseCode::NoError
        } else {
            ResponseCode::FormErr
        });
    };
    // RFC 1995: an IXFR query carries the client's SOA in its authority section.
    let ixfr = query.query_type() == RecordType::IXFR;
    if !request.answers.is_empty() || (!request.authorities.is_empty() && !ixfr) {
        return Some(ResponseCode::FormErr);
    }
    if query.query_class() != DNSClass::IN {
        return Some(ResponseCode::Refused);
    }
    if matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR) {
        // Zone transfers are not offered: other servers of the zone run Berth too.
        return Some(ResponseCode::Refused);
    }
    None
}

/// The question, and whom routed answers are for.
struct Asked<'a> {
    name: &'a Name,
    qtype: RecordType,
    client: IpAddr,
}

/// A name that is not routed: the zone's data, possibly a CNAME chain into a routed name.
/// Returns the rcode and the ECS scope the answer depended on (0 unless routed).
fn zone_answer(
    live: &Live,
    snap: &Snapshot,
    zone: &crate::zone::Zone,
    resp: &mut Message,
    asked: &Asked<'_>,
) -> (ResponseCode, u8) {
    let (qname, qtype) = (asked.name, asked.qtype);
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
            (ResponseCode::NoError, 0)
        }
        Lookup::NoData { cname_chain } if qtype == RecordType::ANY && cname_chain.is_empty() => {
            // RFC 8482 4.2: answer ANY with one synthesized HINFO instead of everything.
            resp.add_answer(Record::from_rdata(
                qname.clone(),
                zone.soa().ttl.min(3600),
                RData::HINFO(HINFO::new("RFC8482".to_string(), String::new())),
            ));
            (ResponseCode::NoError, 0)
        }
        Lookup::NoData { cname_chain } => {
            // A CNAME into a routed name (`www CNAME registry`): the zone sees an empty
            // non-terminal there, the answer comes from the routing core.
            let target = match cname_chain.last().map(|r| &r.data) {
                Some(RData::CNAME(CNAME(t))) => snap.dns.find(t).map(|e| (e, t.clone())),
                _ => None,
            };
            resp.add_answers(cname_chain);
            let mut scope = 0;
            match target {
                Some((entry, t)) => {
                    let routed = routed_answer(live, snap, entry, &t, qtype, asked.client);
                    scope = routed.scope;
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
            (ResponseCode::NoError, scope)
        }
        Lookup::NxDomain { cname_chain } => {
            // RFC 6604: after a CNAME chain the rcode speaks of the last name in it.
            resp.add_answers(cname_chain);
            resp.add_authority(zone.negative_soa());
            (ResponseCode::NXDomain, 0)
        }
        Lookup::Referral { ns, glue } => {
            resp.metadata.authoritative = false;
            resp.add_authorities(ns);
            resp.add_additionals(glue);
            (ResponseCode::NoError, 0)
        }
    }
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
    // With addresses in every region, only A, AAAA and ANY answers depend on the region:
    // anything else is NODATA for every client, so scope /0 (RFC 7871 7.2.1) and no routing.
    if entry.fast && !matches!(qtype, RecordType::A | RecordType::AAAA | RecordType::ANY) {
        return RoutedAnswer {
            records: Vec::new(),
            scope: 0,
        };
    }
    let rn = &snap.config.routed_names[entry.index];
    let routed = live.route(snap, entry.index, client);
    let scope = routed_scope(rn, &routed, client);
    let mut records = Vec::new();
    let Some(region_id) = routed.region else {
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

/// The ECS scope of a routed answer, before the cap at the query's source prefix: the
/// routed name's client prefix (`client_prefix_v4`/`_v6`), or the GeoIP network's length
/// where that network is smaller. Never the wider GeoIP network alone, although every
/// address in it gets the same *fresh* answer (gdnsd's rule): Berth remembers each client
/// key's region, so an answer holds for its client key only. Cached for a whole /16, the
/// answer one /24 got would reach, from the resolver's cache, another /24 in the middle of
/// a push on another region, and split it.
pub(crate) fn routed_scope(
    rn: &crate::config::RoutedName,
    routed: &crate::snapshot::FastRouted,
    client: IpAddr,
) -> u8 {
    rn.client_prefix(&client).max(routed.network_prefix)
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
