//! Bounded fuzzing in the test suite: structure-aware proptest generators (valid DNS queries
//! for the demo zone with every EDNS shape, OCI paths, tokens, mutated demo config and zone
//! files) plus byte- and text-level mutations of them, fed to the properties in
//! `tests/fuzz/props.rs`. The coverage-guided targets in `fuzz/` check the same properties
//! for longer (`benches/fuzz.sh`).
//!
//! The seed is fixed so a failure reproduces; `PROPTEST_RNG_SEED=<n>` and
//! `PROPTEST_CASES=<n>` explore further, and proptest records failing inputs in
//! `tests/fuzz.proptest-regressions`, replayed first on every run.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use berth::proxy::oci::Route;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};

#[path = "fuzz/props.rs"]
mod props;
use props::{check_body, check_config, check_dns, check_oci_path, check_oci_round_trip};
use props::{check_token, check_token_text, check_zone, Dns, Session};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn dns() -> &'static Dns {
    static DNS: OnceLock<Dns> = OnceLock::new();
    DNS.get_or_init(|| Dns::demo(repo()))
}

/// One time in eight, the demo with every region disabled (NODATA answers).
fn dns_for(disabled: u8) -> &'static Dns {
    static DNS: OnceLock<Dns> = OnceLock::new();
    if disabled % 8 == 0 {
        DNS.get_or_init(|| Dns::demo(repo()).all_disabled())
    } else {
        dns()
    }
}

/// `cases` per property unless `PROPTEST_CASES` says otherwise; a fixed seed unless
/// `PROPTEST_RNG_SEED` gives one.
fn config(cases: u32) -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = cases;
    }
    if c.rng_seed == RngSeed::Random {
        c.rng_seed = RngSeed::Fixed(0x6265_7274_6866_757a);
    }
    c
}

// ---------------------------------------------------------------------------------------------
// DNS queries, built by hand so that every field can be wrong.

/// Names in and around the demo zone; the routed name comes first and most often.
const NAMES: &[&str] = &[
    "registry.example.test",
    "registry.example.test",
    "registry.example.test",
    "www.example.test",
    "static.example.test",
    "big.example.test",
    "example.test",
    "ns1.example.test",
    "westus.data.registry.example.test",
    "data.registry.example.test",
    "x.registry.example.test",
    "nonexistent.example.test",
    "example.org",
    "",
];

#[derive(Debug, Clone)]
enum Qname {
    /// A known name with some letters upper-cased (bit i of the mask: letter i).
    Known(&'static str, u64),
    /// Arbitrary labels (octets, not only letters).
    Labels(Vec<Vec<u8>>),
    /// Raw octets where the name goes: compression pointers, overlong labels, no terminator.
    Raw(Vec<u8>),
}

fn qname() -> impl Strategy<Value = Qname> {
    prop_oneof![
        8 => (prop::sample::select(NAMES), any::<u64>()).prop_map(|(n, m)| Qname::Known(n, m)),
        1 => prop::collection::vec(prop::collection::vec(any::<u8>(), 0..70), 0..6)
            .prop_map(Qname::Labels),
        1 => prop_oneof![
            Just(vec![0xc0, 0x0c]),
            Just(vec![0xc0, 0x00]),
            Just(vec![0x40, 0x00]),
            Just(vec![0x80, 0x00]),
            prop::collection::vec(any::<u8>(), 0..20),
        ]
        .prop_map(Qname::Raw),
    ]
}

fn write_name(out: &mut Vec<u8>, q: &Qname) {
    match q {
        Qname::Known(n, mask) => {
            let mut i = 0;
            for label in n.split('.').filter(|l| !l.is_empty()) {
                out.push(label.len() as u8);
                for c in label.bytes() {
                    let upper = mask >> (i % 64) & 1 == 1;
                    out.push(if upper { c.to_ascii_uppercase() } else { c });
                    i += 1;
                }
            }
            out.push(0);
        }
        Qname::Labels(labels) => {
            for l in labels {
                let l = &l[..l.len().min(63)];
                out.push(l.len() as u8);
                out.extend_from_slice(l);
            }
            out.push(0);
        }
        Qname::Raw(b) => out.extend_from_slice(b),
    }
}

#[derive(Debug, Clone)]
struct Ecs {
    family: u16,
    source: u8,
    scope: u8,
    /// The address; octets past `octets` are not sent.
    addr: [u8; 16],
    /// How many address octets are sent: the right number or any other.
    octets: usize,
    /// Clear the bits past the source prefix (a clean option) or leave them.
    clean: bool,
}

fn ecs() -> impl Strategy<Value = Ecs> {
    let v4: [u8; 16] = [198, 51, 100, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let v4b: [u8; 16] = [203, 0, 113, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let v6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
    let v6b: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    (
        prop_oneof![4 => Just(1u16), 4 => Just(2u16), 1 => any::<u16>()],
        // Now and then a prefix past the family's width, at the edges most of all.
        prop_oneof![
            8 => Just(None),
            1 => prop::sample::select(vec![33u8, 129, 255, 32, 128, 0]).prop_map(Some),
            1 => any::<u8>().prop_map(Some),
        ],
        0u8..=128,
        prop_oneof![4 => Just(0u8), 1 => any::<u8>()],
        prop_oneof![Just(v4), Just(v4b), Just(v6), Just(v6b), any::<[u8; 16]>()],
        prop_oneof![4 => Just(None), 1 => (0usize..=20).prop_map(Some)],
        prop_oneof![4 => Just(true), 1 => Just(false)],
    )
        .prop_map(|(family, wild, prefix, scope, addr, octets, clean)| {
            // A source prefix within the family's width, unless `wild` picked any octet.
            let max = if family == 1 { 32 } else { 128 };
            let source = wild.unwrap_or(prefix % (max + 1));
            let needed = usize::from(source).div_ceil(8).min(16);
            Ecs {
                family,
                source,
                scope,
                addr,
                octets: octets.unwrap_or(needed),
                clean,
            }
        })
}

fn ecs_bytes(e: &Ecs) -> Vec<u8> {
    let mut addr = e.addr.to_vec();
    if e.clean {
        for (i, b) in addr.iter_mut().enumerate() {
            let keep = usize::from(e.source).saturating_sub(i * 8).min(8);
            *b &= !(0xffu8.checked_shr(keep as u32).unwrap_or(0));
        }
    }
    addr.resize(e.octets, 0);
    let mut d = e.family.to_be_bytes().to_vec();
    d.push(e.source);
    d.push(e.scope);
    d.extend_from_slice(&addr);
    d
}

#[derive(Debug, Clone)]
enum EdnsOpt {
    Ecs(Ecs),
    /// DNS COOKIE (RFC 7873): an 8-octet client cookie, with a server cookie, or any length.
    Cookie(Vec<u8>),
    Other(u16, Vec<u8>),
}

fn edns_opt() -> impl Strategy<Value = EdnsOpt> {
    prop_oneof![
        6 => ecs().prop_map(EdnsOpt::Ecs),
        2 => prop_oneof![
            prop::collection::vec(any::<u8>(), 8),
            prop::collection::vec(any::<u8>(), 16..=40),
            prop::collection::vec(any::<u8>(), 0..48),
        ]
        .prop_map(EdnsOpt::Cookie),
        1 => (
            prop_oneof![Just(3u16), Just(12), Just(15), Just(65001), any::<u16>()],
            prop::collection::vec(any::<u8>(), 0..16)
        )
            .prop_map(|(c, d)| EdnsOpt::Other(c, d)),
    ]
}

#[derive(Debug, Clone)]
struct Opt {
    payload: u16,
    ext_rcode: u8,
    version: u8,
    flags: u16,
    options: Vec<EdnsOpt>,
    /// Added to the true RDLENGTH: a lying OPT.
    rdlen_delta: i8,
}

fn opt() -> impl Strategy<Value = Opt> {
    (
        prop_oneof![
            Just(512u16),
            Just(1232),
            Just(4096),
            Just(0),
            Just(511),
            Just(65535),
            any::<u16>()
        ],
        prop_oneof![6 => Just(0u8), 1 => any::<u8>()],
        prop_oneof![6 => Just(0u8), 1 => any::<u8>()],
        prop_oneof![3 => Just(0u16), 3 => Just(0x8000), 1 => any::<u16>()],
        prop::collection::vec(edns_opt(), 0..4),
        prop_oneof![8 => Just(0i8), 1 => -6i8..6],
    )
        .prop_map(
            |(payload, ext_rcode, version, flags, options, rdlen_delta)| Opt {
                payload,
                ext_rcode,
                version,
                flags,
                options,
                rdlen_delta,
            },
        )
}

fn write_opt(out: &mut Vec<u8>, o: &Opt) {
    let mut rdata = Vec::new();
    for opt in &o.options {
        let (code, data) = match opt {
            EdnsOpt::Ecs(e) => (8u16, ecs_bytes(e)),
            EdnsOpt::Cookie(c) => (10, c.clone()),
            EdnsOpt::Other(c, d) => (*c, d.clone()),
        };
        rdata.extend_from_slice(&code.to_be_bytes());
        rdata.extend_from_slice(&(data.len() as u16).to_be_bytes());
        rdata.extend_from_slice(&data);
    }
    out.push(0);
    out.extend_from_slice(&41u16.to_be_bytes());
    out.extend_from_slice(&o.payload.to_be_bytes());
    out.push(o.ext_rcode);
    out.push(o.version);
    out.extend_from_slice(&o.flags.to_be_bytes());
    let rdlen = (rdata.len() as i32 + i32::from(o.rdlen_delta)).clamp(0, 65535) as u16;
    out.extend_from_slice(&rdlen.to_be_bytes());
    out.extend_from_slice(&rdata);
}

#[derive(Debug, Clone)]
struct Query {
    id: u16,
    /// Header octets 2 and 3: QR, opcode, AA, TC, RD / RA, Z, AD, CD, RCODE.
    flags: [u8; 2],
    qname: Qname,
    qtype: u16,
    qclass: u16,
    /// An answer or authority record (a copy of the question with TTL and empty RDATA).
    extra: Option<(bool, u32)>,
    opt: Option<Opt>,
    /// Replaces the four section counts (a header that lies).
    counts: Option<[u16; 4]>,
    trailing: Vec<u8>,
}

fn query() -> impl Strategy<Value = Query> {
    let flags = prop_oneof![
        6 => prop_oneof![Just([0x00u8, 0x00]), Just([0x01, 0x00]), Just([0x01, 0x10]), Just([0x00, 0x20])],
        // Another opcode, AA/TC set, Z or an RCODE in a query.
        2 => (0u8..16, any::<bool>(), any::<bool>(), any::<u8>())
            .prop_map(|(op, aa, tc, b3)| [op << 3 | u8::from(aa) << 2 | u8::from(tc) << 1 | 1, b3]),
        1 => any::<[u8; 2]>(),
    ];
    let qtype = prop_oneof![
        8 => prop::sample::select(vec![1u16, 28, 1, 28, 255, 16, 6, 2, 5, 15, 43, 65, 252, 251, 0]),
        1 => any::<u16>(),
    ];
    let qclass = prop_oneof![
        8 => Just(1u16),
        1 => prop::sample::select(vec![3u16, 4, 254, 255, 0]),
        1 => any::<u16>(),
    ];
    (
        any::<u16>(),
        flags,
        qname(),
        qtype,
        qclass,
        prop_oneof![8 => Just(None), 1 => (any::<bool>(), any::<u32>()).prop_map(Some)],
        prop_oneof![1 => Just(None), 2 => opt().prop_map(Some)],
        prop_oneof![12 => Just(None), 1 => any::<[u16; 4]>().prop_map(Some), 1 => (0u16..3, 0u16..3, 0u16..3, 0u16..3).prop_map(|(a, b, c, d)| Some([a, b, c, d]))],
        prop_oneof![12 => Just(vec![]), 1 => prop::collection::vec(any::<u8>(), 1..8)],
    )
        .prop_map(
            |(id, flags, qname, qtype, qclass, extra, opt, counts, trailing)| Query {
                id,
                flags,
                qname,
                qtype,
                qclass,
                extra,
                opt,
                counts,
                trailing,
            },
        )
}

/// Half the queries are plain routed A/AAAA queries, the shape the fast path answers (only
/// their ID, RD, EDNS payload, DO and options vary); the other half may be wrong anywhere.
fn dns_query() -> impl Strategy<Value = Query> {
    (query(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(mut q, plain, aaaa, rd)| {
        if plain {
            if !matches!(q.qname, Qname::Known("registry.example.test", _)) {
                q.qname = Qname::Known("registry.example.test", q.qtype.into());
            }
            q.flags = [u8::from(rd), 0];
            q.qtype = if aaaa { 28 } else { 1 };
            q.qclass = 1;
            q.extra = None;
            q.counts = None;
            q.trailing.clear();
            if let Some(o) = q.opt.as_mut() {
                o.ext_rcode = 0;
                o.version = 0;
                o.rdlen_delta = 0;
            }
        }
        q
    })
}

fn packet(q: &Query) -> Vec<u8> {
    let mut out = q.id.to_be_bytes().to_vec();
    out.extend_from_slice(&q.flags);
    let (an, ns) = match q.extra {
        Some((true, _)) => (1u16, 0u16),
        Some((false, _)) => (0, 1),
        None => (0, 0),
    };
    let counts = q.counts.unwrap_or([1, an, ns, u16::from(q.opt.is_some())]);
    for c in counts {
        out.extend_from_slice(&c.to_be_bytes());
    }
    write_name(&mut out, &q.qname);
    out.extend_from_slice(&q.qtype.to_be_bytes());
    out.extend_from_slice(&q.qclass.to_be_bytes());
    if let Some((_, ttl)) = q.extra {
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&q.qtype.to_be_bytes());
        out.extend_from_slice(&q.qclass.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
    }
    if let Some(o) = &q.opt {
        write_opt(&mut out, o);
    }
    out.extend_from_slice(&q.trailing);
    out
}

/// A byte-level change: what a coverage-guided fuzzer does to a seed.
#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>()).prop_map(Mutation::Truncate),
        (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>()).prop_map(Mutation::Delete),
    ]
}

fn mutate(p: &mut Vec<u8>, muts: &[Mutation]) {
    for m in muts {
        let n = p.len();
        match *m {
            Mutation::Truncate(i) => p.truncate(i % (n + 1)),
            Mutation::Flip(i, b) if n > 0 => p[i % n] ^= 1 << b,
            Mutation::Set(i, v) if n > 0 => p[i % n] = v,
            Mutation::Insert(i, v) => p.insert(i % (n + 1), v),
            Mutation::Delete(i) if n > 0 => {
                p.remove(i % n);
            }
            _ => {}
        }
    }
}

fn src() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        4 => prop::sample::select(props::SOURCES).prop_map(|s| s.parse().expect("literal")),
        1 => any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        1 => any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
    ]
}

proptest! {
    #![proptest_config(config(4000))]

    #[test]
    fn dns_queries(q in dns_query(), src in src(), disabled in any::<u8>()) {
        check_dns(dns_for(disabled), &packet(&q), src);
    }

    #[test]
    fn dns_mutated_queries(
        q in dns_query(),
        muts in prop::collection::vec(mutation(), 1..5),
        src in src(),
        disabled in any::<u8>(),
    ) {
        let mut p = packet(&q);
        mutate(&mut p, &muts);
        check_dns(dns_for(disabled), &p, src);
    }
}

proptest! {
    #![proptest_config(config(1500))]

    #[test]
    fn dns_random_bytes(p in prop::collection::vec(any::<u8>(), 0..300), src in src()) {
        check_dns(dns(), &p, src);
    }
}

/// The generators reach what they are for: many queries the fast path answers (so the
/// differential compares something), and each shape of ECS on the way.
#[test]
fn dns_generator_reaches_the_fast_path() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::new(config(1));
    let strategy = dns_query();
    let (mut fast, mut with_ecs, mut v6_ecs) = (0, 0, 0);
    let src: IpAddr = "127.0.0.1".parse().expect("literal");
    for _ in 0..1000 {
        let q = strategy.new_tree(&mut runner).expect("tree").current();
        if berth::dns::answer_fast(&dns().fast, &packet(&q), src, None).is_some() {
            fast += 1;
            let ecs = q.opt.iter().flat_map(|o| &o.options).find_map(|o| match o {
                EdnsOpt::Ecs(e) => Some(e.family),
                _ => None,
            });
            with_ecs += usize::from(ecs.is_some());
            v6_ecs += usize::from(ecs == Some(2));
        }
    }
    assert!(
        fast > 100 && with_ecs > 30 && v6_ecs > 10,
        "{fast} fast, {with_ecs} with ECS, {v6_ecs} IPv6 ECS"
    );
}

// ---------------------------------------------------------------------------------------------
// OCI paths, upload tokens, registry bodies.

/// A valid repository component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, or a word the parser
/// must not mistake for a verb.
fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9]{1,6}(([._]|__|-{1,3})[a-z0-9]{1,4}){0,2}",
        1 => prop::sample::select(vec!["blobs", "uploads", "manifests", "tags", "list", "referrers", "v2"])
            .prop_map(String::from),
    ]
}

fn repository() -> impl Strategy<Value = String> {
    prop::collection::vec(component(), 1..5)
        .prop_map(|c| c.join("/"))
        .prop_filter("at most 255 octets", |r| r.len() <= 255)
}

fn digest() -> impl Strategy<Value = String> {
    prop_oneof![
        "sha256:[0-9a-f]{64}",
        "sha512:[0-9a-f]{128}",
        "[a-z0-9]{1,6}([+._-][a-z0-9]{1,4})?:[a-zA-Z0-9=_-]{1,40}",
    ]
}

fn uuid() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        "[A-Za-z0-9._=-]{1,128}",
    ]
}

fn tag() -> impl Strategy<Value = String> {
    prop_oneof!["[A-Za-z0-9_][A-Za-z0-9._-]{0,127}", digest()]
}

#[derive(Debug, Clone)]
enum Parts {
    Base,
    Blob(String, String),
    UploadStart(String),
    Upload(String, String),
    Manifest(String, String),
    Tags(String),
    Referrers(String, String),
}

fn parts() -> impl Strategy<Value = Parts> {
    prop_oneof![
        Just(Parts::Base),
        (repository(), digest()).prop_map(|(r, d)| Parts::Blob(r, d)),
        repository().prop_map(Parts::UploadStart),
        (repository(), uuid()).prop_map(|(r, u)| Parts::Upload(r, u)),
        (repository(), tag()).prop_map(|(r, t)| Parts::Manifest(r, t)),
        repository().prop_map(Parts::Tags),
        (repository(), digest()).prop_map(|(r, d)| Parts::Referrers(r, d)),
    ]
}

fn route(p: &Parts) -> Route<'_> {
    match p {
        Parts::Base => Route::Base,
        Parts::Blob(repo, digest) => Route::Blob { repo, digest },
        Parts::UploadStart(repo) => Route::UploadStart { repo },
        Parts::Upload(repo, uuid) => Route::Upload { repo, uuid },
        Parts::Manifest(repo, reference) => Route::Manifest { repo, reference },
        Parts::Tags(repo) => Route::Tags { repo },
        Parts::Referrers(repo, digest) => Route::Referrers { repo, digest },
    }
}

/// Text changes: truncation, deletion, insertion of one of `dict` or any character, a
/// swap of two lines, a duplicated line.
#[derive(Debug, Clone)]
enum Edit {
    Truncate(usize),
    Delete(usize, usize),
    Insert(usize, usize),
    InsertChar(usize, char),
    SwapLines(usize, usize),
    DuplicateLine(usize),
    ReplaceValue(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        1 => any::<usize>().prop_map(Edit::Truncate),
        2 => (any::<usize>(), 1usize..12).prop_map(|(i, n)| Edit::Delete(i, n)),
        3 => (any::<usize>(), any::<usize>()).prop_map(|(i, d)| Edit::Insert(i, d)),
        1 => (any::<usize>(), any::<char>()).prop_map(|(i, c)| Edit::InsertChar(i, c)),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        1 => any::<usize>().prop_map(Edit::DuplicateLine),
        3 => (any::<usize>(), any::<usize>()).prop_map(|(l, d)| Edit::ReplaceValue(l, d)),
    ]
}

/// The char boundary at or before `i % (len + 1)`.
fn boundary(s: &str, i: usize) -> usize {
    let mut i = i % (s.len() + 1);
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(text: &str, edits: &[Edit], dict: &[&str], values: &[&str]) -> String {
    let mut s = text.to_string();
    for e in edits {
        match *e {
            Edit::Truncate(i) => s.truncate(boundary(&s, i)),
            Edit::Delete(i, n) => {
                let a = boundary(&s, i);
                let b = boundary(&s, a.saturating_add(n).min(s.len()));
                s.replace_range(a..b, "");
            }
            Edit::Insert(i, d) => {
                let at = boundary(&s, i);
                s.insert_str(at, dict[d % dict.len()]);
            }
            Edit::InsertChar(i, c) => {
                let at = boundary(&s, i);
                s.insert(at, c);
            }
            Edit::SwapLines(a, b) | Edit::DuplicateLine(a @ b) if s.lines().count() > 0 => {
                let mut lines: Vec<String> = s.lines().map(String::from).collect();
                let n = lines.len();
                if matches!(e, Edit::DuplicateLine(_)) {
                    let l = lines[a % n].clone();
                    lines.insert(a % n, l);
                } else {
                    lines.swap(a % n, b % n);
                }
                s = lines.join("\n");
            }
            Edit::ReplaceValue(l, d) => {
                // The value of one `key = value` (config) or the last word of a line (zone).
                let mut lines: Vec<String> = s.lines().map(String::from).collect();
                if lines.is_empty() {
                    continue;
                }
                let n = lines.len();
                let line = &mut lines[l % n];
                let v = values[d % values.len()];
                if let Some(eq) = line.find('=') {
                    line.replace_range(eq + 1.., &format!(" {v}"));
                } else if let Some(sp) = line.trim_end().rfind([' ', '\t']) {
                    line.replace_range(sp + 1.., v);
                }
                s = lines.join("\n");
            }
            _ => {}
        }
    }
    s
}

const CONFIG_DICT: &[&str] = &[
    "\n",
    "=",
    "#",
    "\"",
    "'",
    "[",
    "]",
    "{",
    "}",
    ",",
    ".",
    " = ",
    "[dns]\n",
    "[geoip]\n",
    "[sticky]\n",
    "[proxy]\n",
    "[admin]\n",
    "[[region]]\n",
    "[[routed_name]]\n",
    "[[zone]]\n",
    "[region]\n",
    "name = \"westus\"\n",
    "regions = []\n",
    "a = []\n",
    "udp_threads = 0\n",
    "capacity = 0\n",
    "max_udp_payload = 0\n",
    "ttl = 0\n",
    "policy = \"failover\"\n",
    "policy = \"geo\"\n",
    "policy = \"weighted\"\n",
    "cname = \"x.example.test\"\n",
    "client_prefix_v4 = 33\n",
    "client_prefix_v6 = 129\n",
    "default_order = [\"nowhere\"]\n",
    "probe = { kind = \"tcp\" }\n",
    "weights = { westus = 0 }\n",
    "latency = {}\n",
    "trusted_proxies = [\"::/0\"]\n",
    "push_affinity = \"0s\"\n",
    "tls_listen = \"127.0.0.1:0\"\n",
    "geo_map = []\n",
    "geo_fallback = \"westus\"\n",
    "upstream = \"ftp://x\"\n",
];

const CONFIG_VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "255",
    "65536",
    "18446744073709551616",
    "1e309",
    "nan",
    "-inf",
    "0.5",
    "-0.0",
    "\"\"",
    "\"x\"",
    "\"westus\"",
    "\"nowhere\"",
    "\"registry.example.test\"",
    "\"registry.example.test.\"",
    "\"..\"",
    "\"é\"",
    "\"\\u0000\"",
    "[]",
    "[\"\"]",
    "[1, 2]",
    "{}",
    "true",
    "\"0s\"",
    "\"1ms\"",
    "\"99999999999h\"",
    "\"1x\"",
    "\"0.0.0.0:0\"",
    "\"[::]:53\"",
    "\"300.1.1.1\"",
    "\"192.0.2.1\"",
    "\"::\"",
    "\"2001:db8::/129\"",
    "\"10.0.0.0/8\"",
    "\"http://\"",
    "\"http://[::1\"",
    "\"https://h:99999\"",
    "[\"westus\", \"westus\"]",
    "91.0",
    "-181.0",
    "\"1KB\"",
    "\"0B\"",
];

const ZONE_DICT: &[&str] = &[
    "\n",
    " ",
    "\t",
    "(",
    ")",
    ";",
    "\"",
    "\\",
    "\\065",
    "\\999",
    ".",
    "..",
    "@",
    "*",
    "*.",
    "$ORIGIN ",
    "$TTL ",
    "$INCLUDE other.zone\n",
    "$ORIGIN other.test.\n",
    "$ORIGIN example.test.\n",
    "$TTL 0\n",
    "$TTL -1\n",
    " IN ",
    " CH ",
    " HS ",
    " SOA ",
    " NS ",
    " A ",
    " AAAA ",
    " CNAME ",
    " DNAME ",
    " TXT ",
    " MX ",
    " SRV ",
    " PTR ",
    " CAA ",
    " TYPE65534 ",
    " \\# 0 ",
    "example.test.",
    "other.test.",
    "registry",
    "www",
    "big",
    "@ IN SOA a b 1 2 3 4 5\n",
    "@ NS ns1\n",
    "www CNAME www\n",
    "sub NS ns.other.test.\n",
    "*.wild CNAME www\n",
    "a CNAME b\nb CNAME a\n",
    "registry A 192.0.2.1\n",
];

const ZONE_VALUES: &[&str] = &[
    "0",
    "4294967295",
    "4294967296",
    "-1",
    "1w2d",
    "2147483648",
    "192.0.2.1",
    "::1",
    "300.0.0.1",
    "1.2.3",
    "\"\"",
    "\"unterminated",
    "(",
    ")",
    ".",
    "..",
    "@",
    "*",
    "registry.example.test.",
    "other.test.",
    "a..b",
    "\\000",
    "\\.",
    "x\\",
];

fn demo_text(name: &str) -> String {
    std::fs::read_to_string(repo().join(name)).expect("demo file")
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn oci_routes_round_trip(p in parts()) {
        check_oci_round_trip(route(&p));
    }

    #[test]
    fn oci_mutated_paths(p in parts(), edits in prop::collection::vec(edit(), 1..4), query in prop::option::of("[a-z_=&]{0,12}")) {
        let base = props::render(&route(&p)).expect("not Other");
        let dict = ["/", "//", "v2", "blobs", "uploads", "manifests", "tags/list", "referrers", ":", "sha256:", "..", "%2f", "-", "_", "__", ".", "A"];
        let mut path = apply(&base, &edits, &dict, &dict);
        if let Some(q) = query {
            path = format!("{path}?{q}");
        }
        check_oci_path(&path);
    }

    #[test]
    fn oci_any_text(path in ".{0,80}", body in prop::collection::vec(any::<u8>(), 0..64)) {
        check_oci_path(&path);
        check_token_text(&path);
        check_body(&body);
    }

}

proptest! {
    // Eight HMACs a case, slow in a debug build.
    #![proptest_config(config(800))]

    #[test]
    fn tokens_verify_only_their_session(
        secrets in (prop::collection::vec(any::<u8>(), 0..40), prop::collection::vec(any::<u8>(), 0..40)),
        regions in (prop_oneof![4 => "[a-z0-9-]{1,16}", 1 => ".{0,12}"], "[a-z0-9-]{1,16}"),
        repos in (repository(), repository()),
        uuids in (uuid(), uuid()),
    ) {
        let s = Session { secret: &secrets.0, region: &regions.0, repo: &repos.0, uuid: &uuids.0 };
        let o = Session { secret: &secrets.1, region: &regions.1, repo: &repos.1, uuid: &uuids.1 };
        check_token(&s, &o);
    }
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn token_and_location_text(
        origin in prop_oneof![Just(""), Just("http://127.0.0.1:5001"), Just("HTTPS://REGISTRY.example.test"), Just("http://elsewhere:1"), Just("s3://bucket")],
        path in "(/v2/[a-z/]{0,12}/blobs/uploads/[a-z0-9-]{0,8})?",
        pairs in prop::collection::vec(prop_oneof![Just("_berth=westus.abc".to_string()), Just("_berth=".to_string()), Just("_berthx=1".to_string()), Just(String::new()), "[a-z_=.]{0,10}"], 0..5),
    ) {
        let q = pairs.join("&");
        let text = if q.is_empty() { format!("{origin}{path}") } else { format!("{origin}{path}?{q}") };
        check_token_text(&text);
        check_token_text(&q);
    }

    #[test]
    fn manifests_never_panic(
        mediatype in prop::option::of(Just("\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",")),
        config in prop::option::of(prop_oneof![digest().prop_map(|d| format!("{{\"digest\":\"{d}\"}}")), Just("{}".to_string()), Just("1".to_string())]),
        layers in prop::collection::vec(prop_oneof![digest().prop_map(|d| format!("{{\"digest\":\"{d}\"}}")), Just("{\"urls\":[]}".to_string()), Just("null".to_string())], 0..4),
        cut in any::<usize>(),
    ) {
        let mut body = String::from("{");
        body.push_str(mediatype.unwrap_or(""));
        if let Some(c) = config {
            body.push_str(&format!("\"config\":{c},"));
        }
        body.push_str(&format!("\"layers\":[{}]}}", layers.join(",")));
        check_body(body.as_bytes());
        let b = body.as_bytes();
        check_body(&b[..cut % (b.len() + 1)]);
    }
}

// ---------------------------------------------------------------------------------------------
// The config and zone loaders on mutated demo files.

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn config_mutations(edits in prop::collection::vec(edit(), 1..6)) {
        let text = apply(&demo_text("config/demo.toml"), &edits, CONFIG_DICT, CONFIG_VALUES);
        check_config(&text);
    }
}

proptest! {
    // hickory's zone parser runs several times on a broken file (to find the line).
    #![proptest_config(config(600))]

    #[test]
    fn zone_mutations(edits in prop::collection::vec(edit(), 1..6)) {
        let text = apply(&demo_text("zones/example.test.zone"), &edits, ZONE_DICT, ZONE_VALUES);
        check_zone(&text);
    }
}

/// The unmutated demo files load: the mutations start from valid inputs.
#[test]
fn demo_files_are_valid_seeds() {
    let path: PathBuf = repo().join("config/demo.toml");
    berth::config::Config::parse(&demo_text("config/demo.toml"), &path).expect("demo config");
    let origin = hickory_proto::rr::Name::from_ascii("example.test.").expect("literal");
    berth::zone::Zone::parse_str(&demo_text("zones/example.test.zone"), &origin, "demo")
        .expect("demo zone");
    check_config(&demo_text("config/demo.toml"));
    check_zone(&demo_text("zones/example.test.zone"));
}

/// Inputs a coverage-guided run found (`benches/fuzz.sh` prints them), replayed through the
/// targets' own input decoding: a file in `tests/fuzz/regressions/<target>/` is a regression
/// case of the suite.
#[test]
fn saved_afl_inputs_replay() {
    let dir = repo().join("tests/fuzz/regressions");
    for target in ["dns_diff", "oci_token", "config_zone"] {
        let Ok(entries) = std::fs::read_dir(dir.join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("directory entry").path();
            let data = std::fs::read(&path).expect("saved input");
            eprintln!("replaying {}", path.display());
            match target {
                "dns_diff" => props::dns_input(dns(), dns_for(0), &data),
                "oci_token" => props::oci_input(&data),
                _ => props::text_input(&data),
            }
        }
    }
}
