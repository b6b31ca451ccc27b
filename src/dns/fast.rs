//! The fast path: plain routed-name A/AAAA queries, answered without building hickory
//! messages. It parses just what such a query holds (header, one question, an optional OPT
//! with ECS), routes through the same [`Live::route`] as the general path, and writes the
//! answer bytes directly. Anything else (other types, odd flags, extra sections, BADVERS, a
//! dirty ECS option, CNAME-mode regions) returns `None` *before routing*, and the general path
//! answers it. `tests/dns.rs` checks both paths give the same messages.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{RoutedEntry, OUR_PAYLOAD};
use crate::live::Live;
use crate::snapshot::Snapshot;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;
const OPT_ECS: u16 = 8;

/// What the fast path understood of a query.
struct Parsed<'a> {
    /// Lowercased wire-format QNAME.
    name: [u8; 255],
    name_len: usize,
    qtype: u16,
    /// The question section as sent (case preserved), copied into the answer.
    question: &'a [u8],
    edns: Option<Opt<'a>>,
}

struct Opt<'a> {
    payload: u16,
    dnssec_ok: bool,
    /// (family, source prefix, address octets as sent)
    ecs: Option<(u16, u8, &'a [u8])>,
}

fn be16(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

fn parse(p: &[u8]) -> Option<Parsed<'_>> {
    if p.len() < 12 {
        return None;
    }
    // QR=0, opcode QUERY, AA/TC clear; Z clear; RCODE 0.
    if p[2] & 0xfe != 0 || p[3] & 0x70 != 0 || p[3] & 0x0f != 0 {
        return None;
    }
    let (qd, an, ns, ar) = (be16(p, 4)?, be16(p, 6)?, be16(p, 8)?, be16(p, 10)?);
    if qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return None;
    }
    let mut name = [0u8; 255];
    let mut i = 12;
    let mut n = 0;
    loop {
        let len = usize::from(*p.get(i)?);
        if len == 0 {
            name[n] = 0;
            n += 1;
            i += 1;
            break;
        }
        // No compression in a question; labels of 1-63 octets; 255 in all.
        if len > 63 || n + len + 2 > 255 {
            return None;
        }
        let label = p.get(i + 1..i + 1 + len)?;
        name[n] = len as u8;
        for (d, s) in name[n + 1..n + 1 + len].iter_mut().zip(label) {
            *d = s.to_ascii_lowercase();
        }
        n += len + 1;
        i += len + 1;
    }
    let qtype = be16(p, i)?;
    let qclass = be16(p, i + 2)?;
    if !(qtype == TYPE_A || qtype == TYPE_AAAA) || qclass != CLASS_IN {
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
        let mut j = i + 11;
        let end = j + rdlen;
        if end != p.len() {
            return None;
        }
        let mut ecs = None;
        while j < end {
            let code = be16(p, j)?;
            let len = usize::from(be16(p, j + 2)?);
            let data = p.get(j + 4..j + 4 + len)?;
            if j + 4 + len > end {
                return None;
            }
            if code == OPT_ECS {
                if ecs.is_some() || len < 4 {
                    return None;
                }
                let family = be16(data, 0)?;
                let (source, scope, addr) = (data[2], data[3], &data[4..]);
                let max = match family {
                    1 => 32,
                    2 => 128,
                    _ => return None,
                };
                // Exactly the octets the prefix needs, no bits past it, scope 0 in a query.
                if source > max || scope != 0 || addr.len() != usize::from(source).div_ceil(8) {
                    return None;
                }
                if source % 8 != 0 {
                    let last = addr[addr.len() - 1];
                    if last & (0xffu8 >> (source % 8)) != 0 {
                        return None;
                    }
                }
                ecs = Some((family, source, addr));
            }
            j += 4 + len;
        }
        edns = Some(Opt {
            payload,
            dnssec_ok: flags & 0x8000 != 0,
            ecs,
        });
    } else if i != p.len() {
        return None;
    }
    Some(Parsed {
        name,
        name_len: n,
        qtype,
        question,
        edns,
    })
}

fn ecs_addr(family: u16, octets: &[u8]) -> IpAddr {
    if family == 1 {
        let mut a = [0u8; 4];
        a[..octets.len()].copy_from_slice(octets);
        IpAddr::V4(Ipv4Addr::from(a))
    } else {
        let mut a = [0u8; 16];
        a[..octets.len()].copy_from_slice(octets);
        IpAddr::V6(Ipv6Addr::from(a))
    }
}

/// Answer `packet` if it is a plain routed A/AAAA query; `None` sends it to the general path.
pub fn answer(
    live: &Live,
    snap: &Snapshot,
    packet: &[u8],
    src: IpAddr,
    max_udp: u16,
) -> Option<Vec<u8>> {
    let q = parse(packet)?;
    let entry: &RoutedEntry = snap.dns.find_wire(&q.name[..q.name_len])?;
    if !entry.fast {
        return None;
    }
    let rn = &snap.config.routed_names[entry.index];
    let (client, has_ecs) = match q.edns.as_ref().and_then(|e| e.ecs) {
        Some((family, source, octets)) if source > 0 => (ecs_addr(family, octets), true),
        _ => (src, false),
    };
    let routed = live.route(snap, entry.index, client);
    let scope = if has_ecs {
        rn.client_prefix(&client)
    } else {
        0
    };

    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&packet[..2]);
    // QR AA, RD copied; CD copied; RCODE 0.
    out.push(0x84 | (packet[2] & 0x01));
    out.push(packet[3] & 0x10);
    out.extend_from_slice(&[0, 1]);
    let counts_at = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, 0, u8::from(q.edns.is_some())]);
    out.extend_from_slice(q.question);
    let mut answers = 0u16;
    if let Some(id) = routed.decision.region {
        let region = &snap.config.regions[id];
        let ttl = rn.ttl.to_be_bytes();
        let mut rr = |rtype: u16, data: &[u8]| {
            out.extend_from_slice(&[0xc0, 0x0c]);
            out.extend_from_slice(&rtype.to_be_bytes());
            out.extend_from_slice(&CLASS_IN.to_be_bytes());
            out.extend_from_slice(&ttl);
            out.extend_from_slice(&(data.len() as u16).to_be_bytes());
            out.extend_from_slice(data);
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
        write_opt(&mut out, e, scope);
    }
    let limit = match &q.edns {
        None => 512,
        Some(e) => usize::from(e.payload.clamp(512, max_udp.max(512))),
    };
    if out.len() > limit {
        // Truncated: keep the question and OPT, drop the records, set TC (RFC 2181 9).
        let opt = out[body_end..].to_vec();
        out.truncate(12 + q.question.len());
        out[2] |= 0x02;
        out.extend_from_slice(&opt);
        answers = 0;
        authorities = 0;
    }
    out[counts_at..counts_at + 2].copy_from_slice(&answers.to_be_bytes());
    out[counts_at + 2..counts_at + 4].copy_from_slice(&authorities.to_be_bytes());
    live.metrics.query(false, 0);
    Some(out)
}

fn write_opt(out: &mut Vec<u8>, e: &Opt<'_>, scope: u8) {
    out.push(0);
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&OUR_PAYLOAD.to_be_bytes());
    out.extend_from_slice(&[0, 0, if e.dnssec_ok { 0x80 } else { 0 }, 0]);
    match e.ecs {
        Some((family, source, addr)) => {
            let len = 4 + addr.len();
            out.extend_from_slice(&((4 + len) as u16).to_be_bytes());
            out.extend_from_slice(&OPT_ECS.to_be_bytes());
            out.extend_from_slice(&(len as u16).to_be_bytes());
            out.extend_from_slice(&family.to_be_bytes());
            out.push(source);
            out.push(scope);
            out.extend_from_slice(addr);
        }
        None => out.extend_from_slice(&[0, 0]),
    }
}
