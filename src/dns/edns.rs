//! The query's OPT record read from its bytes: where it is, whether its option TLVs fill its
//! RDATA exactly, and the two options Berth acts on, Client Subnet (RFC 7871) and COOKIE
//! (RFC 7873), as sent. hickory's parse forgives what the RFCs want refused (an ECS address
//! with extra octets, an RDLENGTH that cuts an option short), so both the fast and the general
//! path judge the raw bytes here, the same way. Not here: what an answer does with them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const TYPE_OPT: u16 = 41;
pub const OPT_ECS: u16 = 8;
pub const OPT_COOKIE: u16 = 10;

/// What is wrong with a query's EDNS or its framing; every case is answered FORMERR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// The OPT RR itself: options overrunning or not filling its RDATA, a second OPT, an OPT
    /// outside the additional section or not owned by the root.
    Opt,
    /// RFC 7871 6: unknown family, prefix too long, too few or too many address octets,
    /// address bits set past the prefix; or a second ECS option.
    Ecs,
    /// RFC 7873 5.2.2: a COOKIE option of a length no cookie has; or a second one.
    Cookie,
    /// Bytes after the last record the header counts: the message is not what its counts say
    /// (BIND and Knot answer FORMERR too; hickory's parser ignores them).
    Trailing,
}

/// A Client Subnet option as the query sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ecs<'a> {
    /// 1 = IPv4, 2 = IPv6 (the only families accepted).
    pub family: u16,
    pub source: u8,
    /// Must be 0 in a query; a non-zero one is answered (with our scope), not refused.
    pub scope: u8,
    /// Exactly the octets `source` needs.
    pub addr: &'a [u8],
}

impl<'a> Ecs<'a> {
    /// Parse and check an ECS option's data (RFC 7871 6).
    pub fn parse(data: &'a [u8]) -> Result<Ecs<'a>, Malformed> {
        let (Some(fam), Some(&source), Some(&scope)) = (data.get(..2), data.get(2), data.get(3))
        else {
            return Err(Malformed::Ecs);
        };
        let family = u16::from_be_bytes([fam[0], fam[1]]);
        let addr = &data[4..];
        let max = match family {
            1 => 32,
            2 => 128,
            _ => return Err(Malformed::Ecs),
        };
        if source > max || addr.len() != usize::from(source).div_ceil(8) {
            return Err(Malformed::Ecs);
        }
        if source % 8 != 0 {
            let last = addr[addr.len() - 1];
            if last & (0xffu8 >> (source % 8)) != 0 {
                return Err(Malformed::Ecs);
            }
        }
        Ok(Ecs {
            family,
            source,
            scope,
            addr,
        })
    }

    /// The client's network address, zero past the prefix.
    pub fn ip(&self) -> IpAddr {
        if self.family == 1 {
            let mut a = [0u8; 4];
            a[..self.addr.len()].copy_from_slice(self.addr);
            IpAddr::V4(Ipv4Addr::from(a))
        } else {
            let mut a = [0u8; 16];
            a[..self.addr.len()].copy_from_slice(self.addr);
            IpAddr::V6(Ipv6Addr::from(a))
        }
    }
}

/// A COOKIE option as the query sent it (RFC 7873 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cookie<'a> {
    pub client: [u8; 8],
    /// 8 to 32 octets when present.
    pub server: Option<&'a [u8]>,
}

impl<'a> Cookie<'a> {
    /// A client cookie alone (8 octets) or with a server cookie (16 to 40 in all).
    pub fn parse(data: &'a [u8]) -> Result<Cookie<'a>, Malformed> {
        let server = match data.len() {
            8 => None,
            16..=40 => Some(&data[8..]),
            _ => return Err(Malformed::Cookie),
        };
        let mut client = [0u8; 8];
        client.copy_from_slice(&data[..8]);
        Ok(Cookie { client, server })
    }
}

/// The options of one OPT RR that Berth acts on; the others are ignored (RFC 6891 6.1.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options<'a> {
    pub ecs: Option<Ecs<'a>>,
    pub cookie: Option<Cookie<'a>>,
}

/// Read the option TLVs of an OPT RR's RDATA: they must fill it exactly. With `cookies`
/// off, a COOKIE option is skipped like any unknown one.
pub fn options(rdata: &[u8], cookies: bool) -> Result<Options<'_>, Malformed> {
    let mut out = Options::default();
    let mut j = 0;
    while j < rdata.len() {
        let Some(head) = rdata.get(j..j + 4) else {
            return Err(Malformed::Opt);
        };
        let code = u16::from_be_bytes([head[0], head[1]]);
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let Some(data) = rdata.get(j + 4..j + 4 + len) else {
            return Err(Malformed::Opt);
        };
        match code {
            OPT_ECS if out.ecs.is_some() => return Err(Malformed::Ecs),
            OPT_ECS => out.ecs = Some(Ecs::parse(data)?),
            OPT_COOKIE if !cookies => {}
            OPT_COOKIE if out.cookie.is_some() => return Err(Malformed::Cookie),
            OPT_COOKIE => out.cookie = Some(Cookie::parse(data)?),
            _ => {}
        }
        j += 4 + len;
    }
    Ok(out)
}

/// Where a message's question section ends and its OPT RR (if any) lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub question_end: usize,
    /// The whole OPT RR, owner to end of RDATA.
    pub opt: Option<std::ops::Range<usize>>,
}

impl Layout {
    /// The OPT RR's RDATA in `msg`.
    pub fn opt_rdata<'a>(&self, msg: &'a [u8]) -> Option<&'a [u8]> {
        self.opt.as_ref().and_then(|r| msg.get(r.start + 11..r.end))
    }
}

fn be16(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

/// Skip a (possibly compressed) name starting at `i`; where it ends.
fn skip_name(msg: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let len = *msg.get(i)?;
        match len & 0xc0 {
            0 if len == 0 => return Some(i + 1),
            0 => i += 1 + usize::from(len),
            // A pointer ends the name; where it points does not matter for the layout.
            0xc0 => return Some(i + 2).filter(|&e| e <= msg.len()),
            _ => return None,
        }
    }
}

/// Walk a message's sections to find its question's end and its OPT RR. `Err` for a message
/// whose records overrun it or stop short of its end, or whose OPT breaks RFC 6891 6.1.1 (one,
/// in the additional section, owned by the root).
pub fn layout(msg: &[u8]) -> Result<Layout, Malformed> {
    let count = |i| be16(msg, i).map(usize::from).ok_or(Malformed::Opt);
    let (qd, an, ns, ar) = (count(4)?, count(6)?, count(8)?, count(10)?);
    let mut i = 12;
    for _ in 0..qd {
        i = skip_name(msg, i).ok_or(Malformed::Opt)? + 4;
    }
    if i > msg.len() {
        return Err(Malformed::Opt);
    }
    let question_end = i;
    let mut opt = None;
    for n in 0..an + ns + ar {
        let start = i;
        let at = skip_name(msg, i).ok_or(Malformed::Opt)?;
        let rtype = be16(msg, at).ok_or(Malformed::Opt)?;
        let rdlen = usize::from(be16(msg, at + 8).ok_or(Malformed::Opt)?);
        i = at + 10 + rdlen;
        if i > msg.len() {
            return Err(Malformed::Opt);
        }
        if rtype == TYPE_OPT {
            if opt.is_some() || n < an + ns || at != start + 1 || msg[start] != 0 {
                return Err(Malformed::Opt);
            }
            opt = Some(start..i);
        }
    }
    if i != msg.len() {
        return Err(Malformed::Trailing);
    }
    Ok(Layout { question_end, opt })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ecs(bytes: &[u8]) -> Result<Ecs<'_>, Malformed> {
        Ecs::parse(bytes)
    }

    #[test]
    fn ecs_needs_exactly_the_octets_of_its_prefix() {
        assert_eq!(
            ecs(&[0, 1, 24, 0, 198, 51, 100]).map(|e| e.ip()),
            Ok("198.51.100.0".parse().unwrap())
        );
        // RFC 7871 6: too many octets (a /24 with four), too few, stray bits, bad family.
        assert_eq!(ecs(&[0, 1, 24, 0, 198, 51, 100, 0]), Err(Malformed::Ecs));
        assert_eq!(ecs(&[0, 1, 24, 0, 198, 51]), Err(Malformed::Ecs));
        assert_eq!(ecs(&[0, 1, 20, 0, 198, 51, 100]), Err(Malformed::Ecs));
        assert_eq!(ecs(&[0, 1, 33, 0, 1, 2, 3, 4, 5]), Err(Malformed::Ecs));
        assert_eq!(ecs(&[0, 3, 0, 0]), Err(Malformed::Ecs));
        assert_eq!(ecs(&[0, 1, 0]), Err(Malformed::Ecs));
        // /0 has no address octets; /20 may have bits in its third octet's high nibble.
        assert_eq!(ecs(&[0, 1, 0, 0]).map(|e| e.source), Ok(0));
        assert!(ecs(&[0, 1, 20, 0, 198, 51, 0x60]).is_ok());
        assert_eq!(
            ecs(&[0, 2, 56, 0, 0x20, 1, 0xd, 0xb8, 0, 1, 0]).map(|e| e.ip()),
            Ok("2001:db8:1::".parse().unwrap())
        );
    }

    #[test]
    fn options_must_fill_the_rdata_exactly() {
        let ecs = [0, 8, 0, 7, 0, 1, 24, 0, 198, 51, 100];
        assert!(options(&ecs, true).unwrap().ecs.is_some());
        // RDLENGTH shorter than the option: the option overruns.
        assert_eq!(options(&ecs[..9], true), Err(Malformed::Opt));
        // Longer: a partial option header after it.
        let mut long = ecs.to_vec();
        long.extend_from_slice(&[0, 10]);
        assert_eq!(options(&long, true), Err(Malformed::Opt));
        // Unknown options are skipped; an empty RDATA is fine.
        assert_eq!(options(&[0, 99, 0, 1, 7], true), Ok(Options::default()));
        assert_eq!(options(&[], true), Ok(Options::default()));
        // Two ECS or two COOKIE options.
        let two: Vec<u8> = ecs.iter().chain(ecs.iter()).copied().collect();
        assert_eq!(options(&two, true), Err(Malformed::Ecs));
        let c = [0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
        let two: Vec<u8> = c.iter().chain(c.iter()).copied().collect();
        assert_eq!(options(&two, true), Err(Malformed::Cookie));
        // Cookies off: COOKIE is an unknown option, whatever its shape.
        assert_eq!(options(&two, false), Ok(Options::default()));
        assert_eq!(options(&[0, 10, 0, 1, 0], false), Ok(Options::default()));
    }

    #[test]
    fn cookie_lengths() {
        for len in 0..=48usize {
            let data = vec![7u8; len];
            let ok = len == 8 || (16..=40).contains(&len);
            assert_eq!(Cookie::parse(&data).is_ok(), ok, "length {len}");
        }
        let c = Cookie::parse(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 9, 9, 9, 9, 9]).unwrap();
        assert_eq!(c.client, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(c.server, Some(&[9u8; 8][..]));
    }

    #[test]
    fn layout_finds_the_opt_and_refuses_a_second_one() {
        // Header (1 question, 1 additional), question a./A/IN, OPT with no options.
        let mut m = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1, b'a', 0, 0, 1, 0, 1];
        let opt = [0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&opt);
        let l = layout(&m).unwrap();
        assert_eq!(l.question_end, 19);
        assert_eq!(l.opt, Some(19..30));
        assert_eq!(l.opt_rdata(&m), Some(&[][..]));
        let mut two = m.clone();
        two[11] = 2;
        two.extend_from_slice(&opt);
        assert_eq!(layout(&two), Err(Malformed::Opt));
        // An RDLENGTH running past the message.
        let mut over = m.clone();
        over[29] = 4;
        assert_eq!(layout(&over), Err(Malformed::Opt));
        // A compressed owner in the answer section is skipped.
        let mut an = vec![0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 1, b'a', 0, 0, 1, 0, 1];
        an.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 192, 0, 2, 1]);
        assert_eq!(layout(&an).map(|l| l.opt), Ok(None));
        // A byte after the OPT, or after a question without one.
        let mut trailing = m.clone();
        trailing.push(0);
        assert_eq!(layout(&trailing), Err(Malformed::Trailing));
        let mut bare = m[..19].to_vec();
        bare[11] = 0;
        assert!(layout(&bare).is_ok());
        bare.extend_from_slice(&[0, 0]);
        assert_eq!(layout(&bare), Err(Malformed::Trailing));
    }
}
