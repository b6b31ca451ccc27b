//! The fuzz properties, one function per input kind. Shared by the bounded property run in
//! the test suite (`tests/fuzz.rs`, proptest generators) and the coverage-guided targets
//! (`fuzz/`, AFL++): each takes one input and panics when a property fails, so both runners
//! report the input that broke it.
//!
//! Deliberately not here: how inputs are generated (that differs between the two runners).
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth::config::Config;
use berth::dns::{answer_at, answer_fast, answer_general, Transport, OUR_PAYLOAD};

/// One instant (Unix seconds) for every path, so server cookies compare equal.
const NOW: u32 = 1_800_000_000;
use berth::live::Live;
use berth::proxy::oci::{self, Route};
use berth::proxy::token::{self, Location, Signer, TokenError};
use berth::zone::{Zone, ZoneSet};
use hickory_proto::op::Message;
use hickory_proto::rr::{Name, RecordType};

/// The demo config, with its relative `geoip`/`zones` paths made absolute and its state file
/// in `dir`, so the demo's own state file (if an operator left one) changes nothing.
pub fn demo_config(repo: &Path, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo.join("config/demo.toml")).expect("demo config");
    let text = text
        .replace("../geoip/", &format!("{}/geoip/", repo.display()))
        .replace("../zones/", &format!("{}/zones/", repo.display()));
    let path = dir.join("berth.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Two servers on the demo config. The fast path answers from one and the general path from
/// the other, so each routes from its own sticky memory: the differential compares two
/// independent computations, not one that reads what the other wrote.
pub struct Dns {
    pub fast: Arc<Live>,
    pub general: Arc<Live>,
    /// Holds the config and state file when [`Dns::demo`] made the directory.
    _dir: Option<tempfile::TempDir>,
}

impl Dns {
    /// The demo config in a fresh temporary directory.
    pub fn demo(repo: &Path) -> Dns {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut dns = Dns::demo_in(repo, dir.path());
        dns._dir = Some(dir);
        dns
    }

    /// The demo config written to `dir` (the fuzz targets reuse one directory: a fuzzer
    /// restarts its target process too often to leave a temporary directory each time).
    pub fn demo_in(repo: &Path, dir: &Path) -> Dns {
        std::fs::create_dir_all(dir).expect("work directory");
        let path = demo_config(repo, dir);
        Dns {
            fast: Live::load(&path).expect("demo loads"),
            general: Live::load(&path).expect("demo loads"),
            _dir: None,
        }
    }

    /// The demo with every region disabled by the operator: routed names answer NODATA with
    /// the zone's SOA, the fast path's other kind of answer.
    pub fn all_disabled(self) -> Dns {
        let config = self.fast.snapshot.load().config.clone();
        for live in [&self.fast, &self.general] {
            for r in &config.regions {
                live.set_enabled(&r.name, false).expect("flag");
            }
        }
        self
    }
}

/// Source addresses worth asking from: inside and outside the demo GeoIP data, both families.
pub const SOURCES: &[&str] = &[
    "127.0.0.1",
    "198.51.100.7",
    "203.0.113.9",
    "2001:db8:1::5",
    "2001:db8:2::1",
    "10.0.0.1",
    "::1",
    "0.0.0.0",
];

/// A source address from a fuzzer's selector bytes.
pub fn source(sel: &[u8]) -> IpAddr {
    match sel {
        [] => IpAddr::V4(Ipv4Addr::LOCALHOST),
        [b] if usize::from(*b) < SOURCES.len() => {
            SOURCES[usize::from(*b)].parse().expect("literal")
        }
        [a, b, c, d] => IpAddr::V4(Ipv4Addr::new(*a, *b, *c, *d)),
        s if s.len() >= 16 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&s[..16]);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        s => SOURCES[s.iter().map(|b| usize::from(*b)).sum::<usize>() % SOURCES.len()]
            .parse()
            .expect("literal"),
    }
}

/// One query packet from `src`:
/// - no entry point panics (checked by running them);
/// - whenever the fast path answers, the general path gives the same bytes (up to name
///   compression);
/// - every answer is a well-formed response to the query: its ID, QR set, parseable, within
///   512 octets without EDNS and our payload size with it on UDP;
/// - nothing too short or already a response is answered.
pub fn check_dns(dns: &Dns, packet: &[u8], src: IpAddr) {
    let fast = answer_fast(&dns.fast, packet, src, Some(NOW));
    let general = answer_general(&dns.general, packet, src, Some(NOW));
    if let Some(f) = &fast {
        let Some(g) = &general else {
            panic!(
                "the fast path answered {} but the general path did not\nfast {}",
                hex(packet),
                hex(f)
            );
        };
        // The fast path writes the SOA of a NODATA answer without name compression, hickory
        // compresses it: the same message. So the bytes must be equal, or become equal when
        // hickory re-encodes the fast path's message.
        let same = f == g
            || Message::from_vec(f)
                .ok()
                .and_then(|m| m.to_vec().ok())
                .is_some_and(|again| again == *g);
        if !same {
            panic!(
                "fast and general answers differ for {} from {src}\nfast    {}\ngeneral {}\n\
                 fast    {:?}\ngeneral {:?}",
                hex(packet),
                hex(f),
                hex(g),
                Message::from_vec(f),
                Message::from_vec(g)
            );
        }
    }
    for transport in [Transport::Udp, Transport::Tcp] {
        let out = answer_at(&dns.fast, packet, src, transport, Some(NOW));
        let silent = packet.len() < 12 || packet[2] & 0x80 != 0;
        let Some(out) = out else {
            assert!(silent, "no answer to {} over {transport:?}", hex(packet));
            continue;
        };
        assert!(!silent, "answered {} over {transport:?}", hex(packet));
        if transport == Transport::Udp {
            if let Some(f) = &fast {
                assert_eq!(&out, f, "answer() over UDP is the fast path's answer");
            }
        }
        let whole = || format!("query {}\nanswer {}", hex(packet), hex(&out));
        assert!(out.len() >= 12, "{}", whole());
        assert_eq!(out[..2], packet[..2], "the query's ID\n{}", whole());
        assert_eq!(out[2] & 0x80, 0x80, "QR set\n{}", whole());
        let m = match Message::from_vec(&out) {
            Ok(m) => m,
            Err(e) => panic!("our answer does not parse: {e}\n{}", whole()),
        };
        if transport == Transport::Udp {
            let limit = if m.edns.is_some() { OUR_PAYLOAD } else { 512 };
            assert!(
                out.len() <= usize::from(limit),
                "{} octets over UDP, limit {limit}\n{}",
                out.len(),
                whole()
            );
        }
    }
}

/// Config text read as `path`: never panics; an error names the file.
pub fn check_config(text: &str) {
    let path = Path::new("/fuzz/berth.toml");
    if let Err(e) = Config::parse(text, path) {
        let msg = berth::report(&e);
        assert!(
            e.to_string().starts_with("/fuzz/berth.toml"),
            "the error does not name the file: {msg}\ntext:\n{text}"
        );
    }
}

/// Zone text loaded as `example.test.`: never panics; an error names the file; a zone that
/// loads answers lookups (of the demo's names and of every name-like word in the text)
/// without panicking.
pub fn check_zone(text: &str) {
    let origin = Name::from_ascii("example.test.").expect("literal");
    let zone = match Zone::parse_str(text, &origin, "example.test.zone") {
        Ok(z) => z,
        Err(e) => {
            let msg = berth::report(&e);
            assert!(
                e.to_string().starts_with("example.test.zone"),
                "the error does not name the file: {msg}\ntext:\n{text}"
            );
            return;
        }
    };
    let names = [
        "example.test.",
        "registry.example.test.",
        "www.example.test.",
        "static.example.test.",
        "big.example.test.",
        "westus.data.registry.example.test.",
        "nonexistent.example.test.",
        "a.b.c.ns1.example.test.",
        "*.example.test.",
    ];
    let words = text
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ';')
        .filter(|w| !w.is_empty() && !w.starts_with('$'))
        .take(64);
    let mut queried = 0;
    for n in names
        .iter()
        .map(|n| Name::from_ascii(n).ok())
        .chain(words.map(|w| {
            Name::from_ascii(w)
                .ok()
                .and_then(|n| n.append_domain(&origin).ok())
        }))
    {
        let Some(n) = n else { continue };
        for t in [
            RecordType::A,
            RecordType::AAAA,
            RecordType::CNAME,
            RecordType::NS,
            RecordType::SOA,
            RecordType::TXT,
            RecordType::MX,
            RecordType::DS,
            RecordType::ANY,
        ] {
            let _ = zone.lookup(&n, t);
        }
        let _ = zone.name_exists(&n);
        queried += 1;
    }
    assert!(queried >= names.len());
    let set = ZoneSet::new(vec![zone]).expect("one zone has no duplicate");
    assert!(set.find(&origin).is_some());
}

/// The OCI path of a route: what `oci::parse` reads back as the same route.
pub fn render(route: &Route<'_>) -> Option<String> {
    Some(match *route {
        Route::Base => "/v2/".to_string(),
        Route::Blob { repo, digest } => format!("/v2/{repo}/blobs/{digest}"),
        Route::UploadStart { repo } => format!("/v2/{repo}/blobs/uploads/"),
        Route::Upload { repo, uuid } => format!("/v2/{repo}/blobs/uploads/{uuid}"),
        Route::Manifest { repo, reference } => format!("/v2/{repo}/manifests/{reference}"),
        Route::Tags { repo } => format!("/v2/{repo}/tags/list"),
        Route::Referrers { repo, digest } => format!("/v2/{repo}/referrers/{digest}"),
        Route::Other => return None,
    })
}

/// Any request path: parsing never panics, a route's repository is a valid name, and a
/// parsed route renders back to the path it came from (up to the optional trailing slash
/// of `/v2/` and `/blobs/uploads/`), which parses to the same route.
pub fn check_oci_path(path: &str) {
    let route = oci::parse(path);
    let _ = route.kind();
    if let Some(repo) = route.repo() {
        assert!(oci::is_repository(repo), "{path:?} -> {route:?}");
    }
    let Some(rendered) = render(&route) else {
        return;
    };
    let slashless = matches!(route, Route::Base | Route::UploadStart { .. })
        && rendered.strip_suffix('/') == Some(path);
    assert!(
        rendered == path || slashless,
        "{path:?} parsed as {route:?}, which renders as {rendered:?}"
    );
    assert_eq!(oci::parse(&rendered), route, "{rendered:?}");
}

/// A route built from valid parts: it renders to a path that parses back to it.
pub fn check_oci_round_trip(route: Route<'_>) {
    let path = render(&route).expect("not Other");
    assert_eq!(oci::parse(&path), route, "{path:?}");
    check_oci_path(&path);
}

/// A manifest or error body from a registry: never panics; references are valid digests,
/// blobs without duplicates.
pub fn check_body(body: &[u8]) {
    let _ = oci::has_error_code(body, "BLOB_UNKNOWN");
    if let Some(r) = oci::references(body) {
        for d in r.blobs.iter().chain(&r.manifests) {
            assert!(oci::is_digest(d), "{d:?}");
        }
        for (i, d) in r.blobs.iter().enumerate() {
            assert!(!r.blobs[..i].contains(d), "duplicate blob {d}");
        }
    }
}

/// The parts of one upload session as a fuzzer names them.
#[derive(Debug, Clone)]
pub struct Session<'a> {
    pub secret: &'a [u8],
    pub region: &'a str,
    pub repo: &'a str,
    pub uuid: &'a str,
}

/// Token round trip: a token verifies with the secret, repository and uuid it was signed
/// for (naming its region when that is a valid region name), and with no other secret,
/// repository, uuid or region; changing any one character of it breaks it.
pub fn check_token(s: &Session<'_>, other: &Session<'_>) {
    let signer = Signer::new(s.secret);
    let (now, expires) = (u64::from(NOW), u64::from(NOW) + 3600);
    let t = signer.sign(s.region, s.repo, s.uuid, expires);
    let valid_region = !s.region.is_empty()
        && s.region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let got = signer.verify(&t, s.repo, s.uuid, now);
    if valid_region {
        assert_eq!(got, Ok(s.region), "{t}");
        assert!(
            signer.verify(&t, s.repo, s.uuid, expires).is_err(),
            "expired at {expires}: {t}"
        );
    } else {
        assert_eq!(got, Err(TokenError::Malformed), "{t}");
        return;
    }
    if other.secret != s.secret {
        assert!(Signer::new(other.secret)
            .verify(&t, s.repo, s.uuid, now)
            .is_err());
    }
    if other.repo != s.repo {
        assert!(signer.verify(&t, other.repo, s.uuid, now).is_err(), "{t}");
    }
    if other.uuid != s.uuid {
        assert!(signer.verify(&t, s.repo, other.uuid, now).is_err(), "{t}");
    }
    if other.region != s.region {
        let (_, signed) = t.split_once('.').expect("sign writes a dot");
        let moved = format!("{}.{signed}", other.region);
        assert!(
            signer.verify(&moved, s.repo, s.uuid, now).is_err(),
            "{moved}"
        );
    }
    // One character changed anywhere (the region name or the tag).
    let i = (s.uuid.len() + s.repo.len()) % t.len();
    let mut b = t.clone().into_bytes();
    b[i] = if b[i] == b'0' { b'1' } else { b'0' };
    let changed = String::from_utf8(b).expect("ascii");
    if changed != t {
        assert!(
            signer.verify(&changed, s.repo, s.uuid, now).is_err(),
            "{changed}"
        );
    }
}

/// Any text as a token, query string or `Location` value: nothing panics; an arbitrary
/// token does not verify; the query surgery and `Location` parsing lose nothing.
pub fn check_token_text(text: &str) {
    let signer = Signer::new(b"fuzz secret");
    assert!(
        signer
            .verify(text, "team/app", "uuid", u64::from(NOW))
            .is_err(),
        "{text:?}"
    );

    let (tok, rest) = token::take_token(text);
    let prefix = format!("{}=", token::PARAM);
    let pairs: Vec<&str> = text.split('&').collect();
    let first = pairs.iter().find_map(|p| p.strip_prefix(prefix.as_str()));
    assert_eq!(tok, first, "{text:?}");
    let kept: Vec<&str> = pairs
        .iter()
        .copied()
        .filter(|p| !p.is_empty() && !p.starts_with(prefix.as_str()))
        .collect();
    assert_eq!(rest, (!kept.is_empty()).then(|| kept.join("&")), "{text:?}");

    let loc = Location::parse(text);
    let mut back = format!("{}{}", loc.origin.unwrap_or(""), loc.path);
    if let Some(q) = loc.query {
        back.push('?');
        back.push_str(q);
    }
    assert_eq!(back, text, "{loc:?}");
    if let (Some(o), Some(a)) = (loc.origin, loc.authority) {
        assert!(o.ends_with(a) && o.contains("://"), "{loc:?}");
    }

    let upstream = "127.0.0.1:5001";
    let public = "https://registry.example.test";
    match token::rewrite_location(text, upstream, public, Some("westus.00")) {
        Some(out) => {
            let l = Location::parse(&out);
            let q = l.query.expect("a token was added");
            assert_eq!(token::take_token(q).0, Some("westus.00"), "{out:?}");
            assert!(
                l.origin.is_none() || l.origin == Some(public) || l.origin == loc.origin,
                "{text:?} -> {out:?}"
            );
            assert_eq!(l.path, loc.path);
        }
        None => {
            // Left alone: a URL on another host, which must never receive a token, or one
            // that already is what the rewrite would make of it.
            let foreign = loc.authority.is_some_and(|a| {
                !a.eq_ignore_ascii_case(upstream)
                    && !a.eq_ignore_ascii_case("registry.example.test")
            });
            let done = loc
                .query
                .is_some_and(|q| token::take_token(q).0 == Some("westus.00"));
            assert!(foreign || done, "{text:?} left as it is");
        }
    }
    let _ = token::rewrite_location(text, upstream, public, None);
}

// ---------------------------------------------------------------------------------------------
// The coverage-guided targets' inputs: one selector octet, then the input. Here, so that a
// crash an AFL run saved replays in the test suite (`tests/fuzz/regressions/<target>/`).

/// `dns_diff`: selector bits 0-2 pick the source address, bit 7 the all-disabled servers.
pub fn dns_input(enabled: &Dns, disabled: &Dns, data: &[u8]) {
    let Some((&sel, packet)) = data.split_first() else {
        return;
    };
    let dns = if sel & 0x80 != 0 { disabled } else { enabled };
    check_dns(dns, packet, source(&[sel & 0x07]));
}

/// `oci_token`: selector 0 a request path, 1 a token / query / `Location` text, 2 a manifest
/// or error body, 3 two upload sessions as eight lines (secret, region, repository, uuid, then
/// the other session's).
pub fn oci_input(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match sel % 4 {
        0 => check_oci_path(&text),
        1 => check_token_text(&text),
        2 => check_body(rest),
        _ => {
            let f: Vec<&str> = text.split('\n').collect();
            if f.len() < 8 {
                return;
            }
            let s = Session {
                secret: f[0].as_bytes(),
                region: f[1],
                repo: f[2],
                uuid: f[3],
            };
            let o = Session {
                secret: f[4].as_bytes(),
                region: f[5],
                repo: f[6],
                uuid: f[7],
            };
            check_token(&s, &o);
        }
    }
}

/// `config_zone`: an even selector takes the text as a config file, an odd one as the zone
/// `example.test.`.
pub fn text_input(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if sel % 2 == 0 {
        check_config(text);
    } else {
        check_zone(text);
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
