//! The fast path: plain routed-name A/AAAA queries, answered without building hickory
//! messages. It parses just what such a query holds (header, one question, an optional OPT
//! with ECS and/or COOKIE), routes through the same [`Live::route`] as the general path, and
//! writes the answer bytes directly. Anything else (other types, odd flags, extra sections,
//! BADVERS, a malformed OPT or option, an ECS scope in the query, CNAME-mode regions) returns
//! `None` *before routing*, and the general path answers it (FORMERR where it is one).
//! `tests/dns.rs` checks both paths give the same messages.
//!
//! Cookies are answered here rather than sent to the general path: resolvers (BIND's among
//! them) send them on every query, and the SipHash is small next to a fallback.

use std::net::IpAddr;

use super::edns::{self, Cookie, Ecs, OPT_COOKIE, OPT_ECS, TYPE_OPT};
use super::tables::STATIC_TYPES;
use super::{cookie, Clock, RoutedEntry, OUR_PAYLOAD};
use crate::live::Live;
use crate::snapshot::Snapshot;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

/// What the fast path understood of a query.
struct Parsed<'a> {
    /// Length of the wire-format QNAME, which starts the question.
    name_len: usize,
    /// Whether the QNAME has an uppercase letter (names match regardless of case).
    upper: bool,
    qtype: u16,
    /// The question section as sent (case preserved), copied into the answer.
    question: &'a [u8],
    edns: Option<Opt<'a>>,
}

struct Opt<'a> {
    payload: u16,
    dnssec_ok: bool,
    ecs: Option<Ecs<'a>>,
    cookie: Option<Cookie<'a>>,
}

fn be16(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

fn parse(p: &[u8], cookies: bool) -> Option<Parsed<'_>> {
    if p.len() < 12 {
        return None;
    }
    // QR=0, opcode QUERY, AA/TC clear; Z clear; RCODE 0. AD and CD may be set (dig and kdig
    // set AD by default): AD is not echoed, CD is, as in the general path.
    if p[2] & 0xfe != 0 || p[3] & 0x40 != 0 || p[3] & 0x0f != 0 {
        return None;
    }
    let (qd, an, ns, ar) = (be16(p, 4)?, be16(p, 6)?, be16(p, 8)?, be16(p, 10)?);
    if qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return None;
    }
    // The name is compared where it lies, regardless of case: no lowercase copy.
    let mut upper = false;
    let mut i = 12;
    let mut n = 0;
    loop {
        let len = usize::from(*p.get(i)?);
        if len == 0 {
            n += 1;
            i += 1;
            break;
        }
        // No compression in a question; labels of 1-63 octets; 255 in all.
        if len > 63 || n + len + 2 > 255 {
            return None;
        }
        let label = p.get(i + 1..i + 1 + len)?;
        upper |= label.iter().any(u8::is_ascii_uppercase);
        n += len + 1;
        i += len + 1;
    }
    let qtype = be16(p, i)?;
    let qclass = be16(p, i + 2)?;
    let known = qtype == TYPE_A || qtype == TYPE_AAAA;
    if !(known || STATIC_TYPES.iter().any(|t| u16::from(*t) == qtype)) || qclass != CLASS_IN {
        return None;
    }
    i += 4;
    let question = &p[12..i];
    let mut edns = None;
    if ar == 1 {
        // OPT: root owner, type 41, class = payload, TTL = ext-rcode/version/flags.
        if *p.get(i)? != 0 || be16(p, i + 1)? != TYPE_OPT {
            return None;
        }
        let payload = be16(p, i + 3)?;
        let (ext, version, flags) = (*p.get(i + 5)?, *p.get(i + 6)?, be16(p, i + 7)?);
        if ext != 0 || version != 0 {
            return None;
        }
        let rdlen = usize::from(be16(p, i + 9)?);
        let rdata = p.get(i + 11..i + 11 + rdlen)?;
        if i + 11 + rdlen != p.len() {
            return None;
        }
        let opts = edns::options(rdata, cookies).ok()?;
        // A scope in a query is wrong but answered; the general path does that.
        if opts.ecs.is_some_and(|e| e.scope != 0) {
            return None;
        }
        edns = Some(Opt {
            payload,
            dnssec_ok: flags & 0x8000 != 0,
            ecs: opts.ecs,
            cookie: opts.cookie,
        });
    } else if i != p.len() {
        return None;
    }
    Some(Parsed {
        name_len: n,
        upper,
        qtype,
        question,
        edns,
    })
}

/// Answer `packet` into `out` if it is a plain routed A/AAAA query over UDP, and say whether
/// it showed a valid server cookie; `None` (with `out` untouched) sends it to the general
/// path. Allocates nothing once `out` has grown to an answer's size.
pub(super) fn answer(
    live: &Live,
    snap: &Snapshot,
    packet: &[u8],
    src: IpAddr,
    clock: &mut Clock,
    out: &mut Vec<u8>,
) -> Option<bool> {
    let q = parse(packet, snap.dns.cookie.is_some())?;
    let Some(entry) = snap.dns.find_wire(&q.question[..q.name_len]) else {
        return answer_static(live, snap, &q, packet, src, clock, out);
    };
    if !entry.fast || !(q.qtype == TYPE_A || q.qtype == TYPE_AAAA) {
        return None;
    }
    answer_routed(live, snap, entry, &q, packet, src, clock, out)
}

/// The server cookie for the query's client cookie, if cookies are on and it sent one.
fn server_cookie(
    snap: &Snapshot,
    q: &Parsed<'_>,
    src: IpAddr,
    clock: &mut Clock,
) -> Option<cookie::Answer> {
    match (&snap.dns.cookie, q.edns.as_ref().and_then(|e| e.cookie)) {
        (Some(secret), Some(c)) => Some(cookie::answer(secret, &c, src, clock.unix_secs())),
        _ => None,
    }
}

/// The UDP size limit of the answer: 512 without EDNS, else the client's payload size
/// within [512, max_udp_payload].
fn udp_limit(snap: &Snapshot, q: &Parsed<'_>) -> usize {
    let max_udp = snap.config.dns.max_udp_payload;
    match &q.edns {
        None => 512,
        Some(e) => usize::from(e.payload.clamp(512, max_udp.max(512))),
    }
}

/// A name of a zone (not routed), from the answers precomputed with the general path's own
/// code ([`super::tables`]), or NXDOMAIN with the zone's SOA (uncompressed, as for a routed
/// name's NODATA: the same message as the general path's, a few octets longer). A question not spelled in lowercase, or an answer over the UDP
/// limit, goes to the general path (which compresses names as spelled, and truncates).
fn answer_static(
    live: &Live,
    snap: &Snapshot,
    q: &Parsed<'_>,
    packet: &[u8],
    src: IpAddr,
    clock: &mut Clock,
    out: &mut Vec<u8>,
) -> Option<bool> {
    if q.upper {
        return None;
    }
    let wire = &q.question[..q.name_len];
    let a = match snap.dns.find_static(wire) {
        Some(name) => name.get(q.qtype)?,
        // Not a name of the zones: NXDOMAIN where the zone's names alone tell.
        None => &snap.dns.find_nxdomain(wire)?.answer,
    };
    let cookie = server_cookie(snap, q, src, clock);
    out.clear();
    out.extend_from_slice(&packet[..2]);
    out.extend_from_slice(&a.header[2..]);
    // RD and CD copied, as the general path does.
    out[2] |= packet[2] & 0x01;
    out[3] |= packet[3] & 0x10;
    out.extend_from_slice(q.question);
    out.extend_from_slice(&a.body);
    if let Some(e) = &q.edns {
        let additionals = u16::from_be_bytes([out[10], out[11]]) + 1;
        out[10..12].copy_from_slice(&additionals.to_be_bytes());
        // Static data never depends on the client's address: scope /0.
        write_opt(out, e, 0, cookie.as_ref().map(|c| &c.option));
    }
    if out.len() > udp_limit(snap, q) {
        out.clear();
        return None;
    }
    live.metrics.query(false, a.header[3] & 0x0f);
    Some(cookie.is_some_and(|c| c.valid))
}

/// A routed name's A or AAAA, from the routing core.
#[allow(clippy::too_many_arguments)]
fn answer_routed(
    live: &Live,
    snap: &Snapshot,
    entry: &RoutedEntry,
    q: &Parsed<'_>,
    packet: &[u8],
    src: IpAddr,
    clock: &mut Clock,
    out: &mut Vec<u8>,
) -> Option<bool> {
    let rn = &snap.config.routed_names[entry.index];
    let (client, has_ecs) = match q.edns.as_ref().and_then(|e| e.ecs) {
        Some(e) if e.source > 0 => (e.ip(), true),
        _ => (src, false),
    };
    let cookie = server_cookie(snap, q, src, clock);
    let routed = live.route_at(snap, entry.index, client, clock.now(live));
    let scope = match q.edns.as_ref().and_then(|e| e.ecs) {
        Some(e) if has_ecs => super::routed_scope(rn, &routed, client).min(e.source),
        _ => 0,
    };

    out.clear();
    out.extend_from_slice(&packet[..2]);
    // QR AA, RD copied; CD copied; RCODE 0.
    out.push(0x84 | (packet[2] & 0x01));
    out.push(packet[3] & 0x10);
    out.extend_from_slice(&[0, 1]);
    let counts_at = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, 0, u8::from(q.edns.is_some())]);
    out.extend_from_slice(q.question);
    let mut answers = 0u16;
    if let Some(id) = routed.region {
        let region = &snap.config.regions[id];
        let ttl = rn.ttl.to_be_bytes();
        // One record: name pointer to the question, type, class, TTL, RDLENGTH, address
        // (at most 16 octets); assembled on the stack and appended at once.
        let mut rr = |rtype: u16, data: &[u8]| {
            let mut b = [0u8; 12 + 16];
            b[..2].copy_from_slice(&[0xc0, 0x0c]);
            b[2..4].copy_from_slice(&rtype.to_be_bytes());
            b[4..6].copy_from_slice(&CLASS_IN.to_be_bytes());
            b[6..10].copy_from_slice(&ttl);
            b[10..12].copy_from_slice(&(data.len() as u16).to_be_bytes());
            b[12..12 + data.len()].copy_from_slice(data);
            out.extend_from_slice(&b[..12 + data.len()]);
            answers += 1;
        };
        if q.qtype == TYPE_A {
            region.a.iter().for_each(|a| rr(TYPE_A, &a.octets()));
        } else {
            region.aaaa.iter().for_each(|a| rr(TYPE_AAAA, &a.octets()));
        }
    }
    let mut authorities = 0u16;
    if answers == 0 {
        out.extend_from_slice(&entry.negative_soa);
        authorities = 1;
    }
    let body_end = out.len();
    if let Some(e) = &q.edns {
        write_opt(out, e, scope, cookie.as_ref().map(|c| &c.option));
    }
    if out.len() > udp_limit(snap, q) {
        // Truncated: keep the question and OPT, drop the records, set TC (RFC 2181 9).
        let question_end = 12 + q.question.len();
        out.copy_within(body_end.., question_end);
        out.truncate(question_end + (out.len() - body_end));
        out[2] |= 0x02;
        answers = 0;
        authorities = 0;
    }
    out[counts_at..counts_at + 2].copy_from_slice(&answers.to_be_bytes());
    out[counts_at + 2..counts_at + 4].copy_from_slice(&authorities.to_be_bytes());
    live.metrics.query(false, 0);
    Some(cookie.is_some_and(|c| c.valid))
}

/// Our OPT: payload, DO echoed, then ECS and COOKIE in the order the general path adds them.
/// Assembled on the stack and appended at once: one capacity check instead of one per field.
fn write_opt(out: &mut Vec<u8>, e: &Opt<'_>, scope: u8, cookie: Option<&[u8; 24]>) {
    // Root owner, type, payload, TTL (ext-rcode, version, DO), RDLENGTH; ECS with up to 16
    // address octets (the parser allows no more); COOKIE.
    let mut b = [0u8; 11 + 8 + 16 + 4 + 24];
    b[1..3].copy_from_slice(&TYPE_OPT.to_be_bytes());
    b[3..5].copy_from_slice(&OUR_PAYLOAD.to_be_bytes());
    b[7] = if e.dnssec_ok { 0x80 } else { 0 };
    let mut n = 11;
    if let Some(ecs) = e.ecs {
        let len = 4 + ecs.addr.len();
        b[n..n + 2].copy_from_slice(&OPT_ECS.to_be_bytes());
        b[n + 2..n + 4].copy_from_slice(&(len as u16).to_be_bytes());
        b[n + 4..n + 6].copy_from_slice(&ecs.family.to_be_bytes());
        b[n + 6] = ecs.source;
        b[n + 7] = scope;
        b[n + 8..n + 4 + len].copy_from_slice(ecs.addr);
        n += 4 + len;
    }
    if let Some(c) = cookie {
        b[n..n + 2].copy_from_slice(&OPT_COOKIE.to_be_bytes());
        b[n + 2..n + 4].copy_from_slice(&(c.len() as u16).to_be_bytes());
        b[n + 4..n + 4 + c.len()].copy_from_slice(c);
        n += 4 + c.len();
    }
    b[9..11].copy_from_slice(&((n - 11) as u16).to_be_bytes());
    out.extend_from_slice(&b[..n]);
}
