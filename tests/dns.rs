//! DNS acceptance: a real Berth on a loopback port, asked by real clients (dig, kdig,
//! hickory-resolver) and by hand-made packets for the malformed cases.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

mod support;
use support::{demo_config, Berth, Dig};

struct Server {
    berth: Berth,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        Server::with(&[], "")
    }

    /// The demo config with `replace` applied and `extra` TOML appended.
    fn with(replace: &[(&str, &str)], extra: &str) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = demo_config(dir.path(), replace, extra);
        let berth = Berth::start(&path);
        let addr = berth.dns;
        Server {
            berth,
            addr,
            _dir: dir,
        }
    }
}

fn dig(s: &Server, args: &[&str]) -> Dig {
    support::dig(s.addr, args)
}

#[test]
fn routed_answers_follow_the_client_subnet_over_udp_and_tcp() {
    let s = Server::start();
    let cases = [
        ("198.51.100.0/24", "A", "192.0.2.40"),
        ("203.0.113.0/24", "A", "192.0.2.20"),
        ("2001:db8:1::/56", "A", "192.0.2.10"),
        ("2001:db8:2::/56", "A", "192.0.2.30"),
        ("198.51.100.0/24", "AAAA", "2001:db8::40"),
        ("203.0.113.0/24", "AAAA", "2001:db8::20"),
        ("2001:db8:1::/56", "AAAA", "2001:db8::10"),
        ("2001:db8:2::/56", "AAAA", "2001:db8::30"),
    ];
    for transport in ["+notcp", "+tcp"] {
        for (subnet, qtype, want) in cases {
            let d = dig(
                &s,
                &[
                    transport,
                    "registry.example.test",
                    qtype,
                    &format!("+subnet={subnet}"),
                ],
            );
            assert_eq!(
                d.status, "NOERROR",
                "{subnet} {qtype} {transport}\n{}",
                d.raw
            );
            assert_eq!(
                d.answer_data(),
                vec![want.to_string()],
                "{subnet} {qtype} {transport}\n{}",
                d.raw
            );
            assert!(
                d.flags.contains(&"aa".to_string()),
                "AA flag missing\n{}",
                d.raw
            );
            // The scope is the client key's prefix (/24, /56): each client key keeps its own
            // region, so the answer holds for it alone, however wide the GeoIP network that
            // placed it (demo.csv: the IPv4 cities are /24s, the IPv6 ones /48s).
            let scope = if subnet.contains(':') { 56 } else { 24 };
            assert_eq!(
                d.ecs.as_deref(),
                Some(format!("{subnet}/{scope}").as_str()),
                "{}",
                d.raw
            );
            assert!(
                d.answer[0].contains("\t30\t")
                    || d.answer[0].split_whitespace().nth(1) == Some("30"),
                "ttl 30\n{}",
                d.raw
            );
        }
    }
}

#[test]
fn static_data_has_scope_zero_and_negative_answers_carry_the_soa() {
    let s = Server::start();
    let d = dig(&s, &["example.test", "SOA", "+subnet=198.51.100.0/24"]);
    assert_eq!(d.status, "NOERROR");
    assert_eq!(d.ecs.as_deref(), Some("198.51.100.0/24/0"), "{}", d.raw);
    assert!(d.answer[0].contains("SOA"), "{}", d.raw);

    for transport in ["+notcp", "+tcp"] {
        let d = dig(&s, &[transport, "nonexistent.example.test", "A"]);
        assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);
        assert!(d.answer.is_empty());
        assert!(
            d.authority.len() == 1 && d.authority[0].contains("SOA"),
            "{}",
            d.raw
        );
        assert!(d.flags.contains(&"aa".to_string()));

        let d = dig(&s, &[transport, "example.org", "A"]);
        assert_eq!(d.status, "REFUSED", "{}", d.raw);
        assert!(!d.flags.contains(&"aa".to_string()));
    }
    // NODATA: the name exists, the type does not.
    let d = dig(&s, &["static.example.test", "MX"]);
    assert_eq!(d.status, "NOERROR");
    assert!(d.answer.is_empty());
    assert!(d.authority[0].contains("SOA"), "{}", d.raw);
    // Names match case-insensitively.
    let d = dig(
        &s,
        &["ReGiStRy.ExAmPlE.TeSt", "A", "+subnet=198.51.100.0/24"],
    );
    assert_eq!(d.answer_data(), vec!["192.0.2.40"], "{}", d.raw);
}

#[test]
fn any_is_answered_minimally() {
    let s = Server::start();
    let d = dig(&s, &["static.example.test", "ANY"]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert_eq!(d.answer.len(), 1, "{}", d.raw);
    assert!(
        d.answer[0].contains("HINFO") && d.answer[0].contains("RFC8482"),
        "{}",
        d.raw
    );
    let d = dig(
        &s,
        &["registry.example.test", "ANY", "+subnet=198.51.100.0/24"],
    );
    assert_eq!(d.answer_data(), vec!["192.0.2.40"], "{}", d.raw);
}

#[test]
fn kdig_agrees() {
    let s = Server::start();
    let out = Command::new("kdig")
        .arg(format!("@{}", s.addr.ip()))
        .args([
            "-p",
            &s.addr.port().to_string(),
            "+short",
            "+subnet=203.0.113.0/24",
            "registry.example.test",
            "A",
        ])
        .output()
        .expect("kdig runs (apt-get install knot-dnsutils)");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "192.0.2.20");
}

/// Zone transfers are not offered (every server of the zone runs Berth): AXFR, and IXFR
/// with the client's SOA in its authority section as RFC 1995 sends it, over TCP and UDP, are
/// REFUSED, which secondaries understand; not FORMERR, which blames a well-formed query.
#[test]
fn zone_transfers_are_refused() {
    let s = Server::start();
    for args in [
        &["+tcp", "example.test", "AXFR"][..],
        &["+tcp", "example.test", "IXFR=1"][..],
        &["+notcp", "example.test", "IXFR=1"][..],
    ] {
        let out = Command::new("kdig")
            .arg(format!("@{}", s.addr.ip()))
            .args(["-p", &s.addr.port().to_string()])
            .args(args)
            .output()
            .expect("kdig runs (apt-get install knot-dnsutils)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("REFUSED"),
            "kdig {args:?} should be REFUSED:\n{text}"
        );
    }
}

#[test]
fn hickory_resolver_gets_the_source_address_answer() {
    use hickory_resolver::config::{NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    use hickory_resolver::Resolver;
    let s = Server::start();
    let addr = s.addr;
    s.berth.rt.block_on(async move {
        let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
        for c in ns.connections.iter_mut() {
            c.port = addr.port();
        }
        let cfg = ResolverConfig::from_parts(None, vec![], vec![ns]);
        let resolver = Resolver::builder_with_config(cfg, TokioRuntimeProvider::default())
            .build()
            .expect("resolver");
        let ips = resolver
            .lookup_ip("registry.example.test.")
            .await
            .expect("lookup");
        // 127.0.0.1 is not in the demo GeoIP database: the default order's first region.
        let got: Vec<IpAddr> = ips.iter().collect();
        assert!(got.contains(&"192.0.2.10".parse().unwrap()), "{got:?}");
    });
}

fn udp_exchange(s: &Server, packet: &[u8]) -> Option<Vec<u8>> {
    udp_exchange_from(s, "127.0.0.1", packet)
}

/// One query from a socket bound to `from` (any 127/8 address works on Linux loopback).
fn udp_exchange_from(s: &Server, from: &str, packet: &[u8]) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind((from, 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    sock.send_to(packet, s.addr).unwrap();
    let mut buf = [0u8; 4096];
    sock.recv_from(&mut buf)
        .ok()
        .map(|(n, _)| buf[..n].to_vec())
}

#[test]
fn malformed_packets_get_formerr_or_silence_and_the_server_lives_on() {
    let s = Server::start();
    // Too short to have an ID: dropped.
    assert_eq!(udp_exchange(&s, &[0x12, 0x34, 0x01]), None);
    // A response (QR set) is never answered.
    let mut resp = vec![0x12, 0x34, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(udp_exchange(&s, &resp), None);
    // A header promising a question that is not there: FORMERR with the same ID.
    resp[2] = 0x00;
    resp[5] = 1;
    let got = udp_exchange(&s, &resp).expect("an answer");
    assert_eq!(&got[..2], &[0x12, 0x34]);
    assert_eq!(got[2] & 0x80, 0x80, "QR set");
    assert_eq!(got[3] & 0x0f, 1, "FORMERR");
    // An ECS option with address bits set beyond its source prefix (/20 of 198.51.100):
    // FORMERR (RFC 7871 6).
    let mut q = vec![0xab, 0xcd, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1];
    for label in ["registry", "example", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q.extend_from_slice(&[
        0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 11, 0, 8, 0, 7, 0, 1, 20, 0, 198, 51, 100,
    ]);
    let got = udp_exchange(&s, &q).expect("an answer");
    assert_eq!(got[3] & 0x0f, 1, "FORMERR for a dirty ECS address");
    // Random garbage of every length up to 64 never kills the server.
    let mut x: u32 = 12345;
    for len in 12..64 {
        let pkt: Vec<u8> = (0..len)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8 & 0x7f
            })
            .collect();
        let _ = udp_exchange(&s, &pkt);
    }
    let d = dig(
        &s,
        &["registry.example.test", "A", "+subnet=198.51.100.0/24"],
    );
    assert_eq!(d.answer_data(), vec!["192.0.2.40"]);
}

#[test]
fn edns_version_above_zero_gets_badvers() {
    let s = Server::start();
    let d = dig(&s, &["+edns=1", "+noednsneg", "registry.example.test", "A"]);
    assert_eq!(d.status, "BADVERS", "{}", d.raw);
}

#[test]
fn big_answers_truncate_on_udp_and_come_whole_over_tcp() {
    let s = Server::start();
    // The zone's big TXT set does not fit 512 octets without EDNS.
    let d = dig(&s, &["+noedns", "+ignore", "big.example.test", "TXT"]);
    assert!(d.flags.contains(&"tc".to_string()), "{}", d.raw);
    assert!(d.answer.is_empty());
    let d = dig(&s, &["+tcp", "big.example.test", "TXT"]);
    assert!(!d.flags.contains(&"tc".to_string()));
    assert!(d.answer.len() >= 10, "{}", d.raw);
}

mod fuzz {
    use std::net::IpAddr;
    use std::sync::{Arc, OnceLock};

    use berth::dns::{answer, Transport};
    use berth::live::Live;
    use hickory_proto::op::Message;
    use proptest::prelude::*;

    fn live() -> Arc<Live> {
        static LIVE: OnceLock<(Arc<Live>, tempfile::TempDir)> = OnceLock::new();
        LIVE.get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = super::demo_config(dir.path(), &[], "");
            (Live::load(&path).expect("demo loads"), dir)
        })
        .0
        .clone()
    }

    /// A valid query with ECS, the seed the mutations start from.
    const SEED: &[u8] = &[
        0xab, 0xcd, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 8, b'r', b'e', b'g', b'i', b's', b't', b'r',
        b'y', 7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 4, b't', b'e', b's', b't', 0, 0, 1, 0,
        1, 0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 11, 0, 8, 0, 7, 0, 1, 24, 0, 198, 51, 100,
    ];

    /// A routed AAAA query with ECS and a client cookie, the second seed.
    const SEED_COOKIE: &[u8] = &[
        0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 8, b'r', b'e', b'g', b'i', b's', b't', b'r',
        b'y', 7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 4, b't', b'e', b's', b't', 0, 0, 28, 0,
        1, 0, 0, 41, 0x10, 0, 0, 0, 0x80, 0, 0, 23, 0, 8, 0, 7, 0, 1, 24, 0, 203, 0, 113, 0, 10, 0,
        8, 1, 2, 3, 4, 5, 6, 7, 8,
    ];

    const NOW: u32 = 1_800_000_000;

    /// Differential: whenever the fast path answers, the general path gives the same bytes
    /// (the same message for NODATA, whose SOA only hickory compresses).
    fn same_as_general(packet: &[u8]) -> Result<(), TestCaseError> {
        let live = live();
        let src: IpAddr = "127.0.0.1".parse().expect("literal");
        if let Some(a) = berth::dns::answer_fast(&live, packet, src, Some(NOW)) {
            let b = berth::dns::answer_general(&live, packet, src, Some(NOW));
            prop_assert!(
                b.is_some(),
                "the general path answers what the fast path did"
            );
            let b = b.expect("checked");
            if a[7] == 0 {
                let (ma, mb) = (Message::from_vec(&a), Message::from_vec(&b));
                prop_assert_eq!(format!("{ma:?}"), format!("{mb:?}"));
            } else {
                prop_assert_eq!(a, b);
            }
        }
        Ok(())
    }

    fn check(packet: &[u8]) -> Result<(), TestCaseError> {
        same_as_general(packet)?;
        let live = live();
        let src: IpAddr = "127.0.0.1".parse().expect("literal");
        for transport in [Transport::Udp, Transport::Tcp] {
            if let Some(out) = answer(&live, packet, src, transport) {
                prop_assert!(out.len() >= 12);
                prop_assert_eq!(&out[..2], &packet[..2], "answer keeps the query ID");
                prop_assert_eq!(out[2] & 0x80, 0x80, "QR set");
                if transport == Transport::Udp {
                    prop_assert!(out.len() <= 1232, "UDP answer within our payload");
                }
                prop_assert!(Message::from_vec(&out).is_ok(), "our answer parses");
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        #[test]
        fn random_packets_never_panic(packet in proptest::collection::vec(any::<u8>(), 0..300)) {
            check(&packet)?;
        }

        #[test]
        fn mutated_queries_never_panic(flips in proptest::collection::vec((0..SEED.len(), any::<u8>()), 1..6), cut in 12..=SEED.len()) {
            let mut p = SEED.to_vec();
            for (i, b) in flips {
                p[i] = b;
            }
            p.truncate(cut);
            check(&p)?;
        }

        #[test]
        fn mutated_cookie_queries_never_panic_and_both_paths_agree(
            flips in proptest::collection::vec((0..SEED_COOKIE.len(), any::<u8>()), 0..4),
            cut in 12..=SEED_COOKIE.len(),
            extra in proptest::collection::vec(any::<u8>(), 0..24),
        ) {
            let mut p = SEED_COOKIE.to_vec();
            for (i, b) in flips {
                p[i] = b;
            }
            p.truncate(cut);
            p.extend_from_slice(&extra);
            check(&p)?;
        }
    }

    #[test]
    fn the_seeds_take_the_fast_path() {
        let live = live();
        let src: IpAddr = "127.0.0.1".parse().expect("literal");
        for seed in [SEED, SEED_COOKIE] {
            assert!(berth::dns::answer_fast(&live, seed, src, Some(NOW)).is_some());
            same_as_general(seed).expect("same");
        }
    }

    #[test]
    fn the_seed_is_a_valid_routed_query() {
        let live = live();
        let out = answer(
            &live,
            SEED,
            "127.0.0.1".parse().expect("literal"),
            Transport::Udp,
        )
        .expect("answer");
        let m = Message::from_vec(&out).expect("parses");
        assert_eq!(m.answers.len(), 1, "{m:?}");
    }
}

/// The UDP fast path answers plain routed queries by hand; the general path (hickory) is the
/// reference. Same query, same state, same instant: the same bytes, for every shape the fast
/// path takes (ECS, DO, RD, case, cookies: none, client only, valid, forged).
#[test]
fn fast_path_answers_exactly_like_the_general_path() {
    use berth::dns::cookie::{server_cookie, Secret};
    use berth::dns::{answer_at, answer_general, Transport};
    use berth::live::Live;
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
    use hickory_proto::rr::{Name, RecordType};

    const NOW: u32 = 1_800_000_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = format!("[dns.cookie]\nsecret = \"{COOKIE_SECRET}\"\n");
    let path = demo_config(dir.path(), &[], &extra);
    let fast = Live::load(&path).expect("loads");
    let general = Live::load(&path).expect("loads");
    let src: IpAddr = "127.0.0.1".parse().expect("literal");
    let secret = Secret::from_hex(COOKIE_SECRET).unwrap();
    let client = [1, 2, 3, 4, 5, 6, 7, 8];
    let mut valid = client.to_vec();
    valid.extend_from_slice(&server_cookie(&secret, &client, src, NOW - 100));
    let mut forged = valid.clone();
    forged[20] ^= 0x40;
    let mut shapes = 0;
    for name in ["registry.example.test.", "REGISTRY.Example.TEST."] {
        for qtype in [RecordType::A, RecordType::AAAA] {
            for ecs in [
                None,
                Some("198.51.100.0/24"),
                Some("203.0.113.0/24"),
                Some("2001:db8:2::/56"),
                Some("10.1.2.0/23"),
                Some("0.0.0.0/0"),
                Some("2001:db8:1::/48"),
            ] {
                for (edns, dnssec_ok, rd, ad_cd) in [
                    (false, false, false, false),
                    (false, false, true, true),
                    (true, false, true, false),
                    (true, true, false, true),
                ] {
                    for cookie in [None, Some(&client[..]), Some(&valid[..]), Some(&forged[..])] {
                        if (ecs.is_some() || cookie.is_some()) && !edns {
                            continue;
                        }
                        let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
                        m.metadata.recursion_desired = rd;
                        m.metadata.authentic_data = ad_cd;
                        m.metadata.checking_disabled = ad_cd;
                        m.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
                        if edns {
                            let mut e = Edns::new();
                            e.set_max_payload(4096);
                            e.set_dnssec_ok(dnssec_ok);
                            if let Some(s) = ecs {
                                let cs: ClientSubnet = s.parse().expect("subnet");
                                e.options_mut().insert(EdnsOption::Subnet(cs));
                            }
                            if let Some(c) = cookie {
                                e.options_mut().insert(EdnsOption::Unknown(10, c.to_vec()));
                            }
                            m.set_edns(e);
                        }
                        let q = m.to_vec().expect("encode");
                        let a = berth::dns::answer_fast(&fast, &q, src, Some(NOW))
                            .expect("the fast path answers");
                        let b =
                            answer_general(&general, &q, src, Some(NOW)).expect("general answer");
                        let what = format!("{name} {qtype} ecs {ecs:?} edns {edns} do {dnssec_ok} ad/cd {ad_cd} cookie {cookie:?}");
                        assert_eq!(a, b, "{what}");
                        // And through the front door, the same.
                        let c =
                            answer_at(&fast, &q, src, Transport::Udp, Some(NOW)).expect("answer");
                        assert_eq!(c, a, "{what}");
                        shapes += 1;
                    }
                }
            }
        }
    }
    assert_eq!(shapes, 2 * 2 * (7 * 2 * 4 + 2));
    // All regions disabled: NODATA with the SOA, the same message from both paths (the fast
    // path does not compress the SOA's names, hickory does: compare messages).
    for live in [&fast, &general] {
        for r in ["westus", "eastus", "westeurope", "southeastasia"] {
            live.set_enabled(r, false).expect("flag");
        }
    }
    let mut m = Message::new(7, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(
        Name::from_ascii("registry.example.test.").expect("name"),
        RecordType::A,
    ));
    let q = m.to_vec().expect("encode");
    let a = Message::from_vec(&berth::dns::answer_fast(&fast, &q, src, None).expect("answer"))
        .expect("parses");
    let b = Message::from_vec(&answer_general(&general, &q, src, None).expect("answer"))
        .expect("parses");
    // Debug, not ==: hickory's Record equality ignores TTLs.
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    assert!(a.answers.is_empty() && a.authorities.len() == 1);
}

/// Static zone data on the fast path: answers, NODATA, CNAMEs, SOA and NS at the apex, with
/// and without EDNS, ECS and cookies, byte for byte what the general path says; and what the
/// fast path must leave to the general path (a CNAME into a routed name, a name spelled in
/// mixed case, an empty non-terminal, a name outside the zones, an answer over the UDP
/// limit) it does leave. NXDOMAIN is the same message (the SOA is not compressed).
#[test]
fn static_answers_on_the_fast_path_equal_the_general_path() {
    use berth::dns::{answer_at, answer_general, Transport};
    use berth::live::Live;
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
    use hickory_proto::rr::{Name, RecordType};

    const NOW: u32 = 1_800_000_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = format!("[dns.cookie]\nsecret = \"{COOKIE_SECRET}\"\n");
    let path = demo_config(dir.path(), &[], &extra);
    let fast = Live::load(&path).expect("loads");
    let general = Live::load(&path).expect("loads");
    let src: IpAddr = "127.0.0.1".parse().expect("literal");
    use RecordType::*;
    // (name, type, answered by the fast path with a 4096 payload)
    let cases = [
        ("example.test.", SOA, true),
        ("example.test.", NS, true),
        ("example.test.", TXT, true),
        ("example.test.", A, true),
        ("example.test.", MX, true),
        ("static.example.test.", A, true),
        ("static.example.test.", AAAA, true),
        ("static.example.test.", TXT, true),
        ("ns1.example.test.", A, true),
        ("ns1.example.test.", AAAA, true),
        ("www.example.test.", CNAME, true),
        ("westus.data.registry.example.test.", A, true),
        ("big.example.test.", TXT, true),
        // A CNAME into a routed name: routing decides, the general path answers.
        ("www.example.test.", A, false),
        ("Static.Example.Test.", A, false),
        ("static.example.test.", ANY, false),
        // NXDOMAIN: a name the zone does not have, at any depth, under any type; below a
        // routed name too (the zone holds names under registry.example.test).
        ("nonexistent.example.test.", A, true),
        ("nonexistent.example.test.", AAAA, true),
        ("nonexistent.example.test.", MX, true),
        ("a.b.nonexistent.example.test.", TXT, true),
        ("x.registry.example.test.", A, true),
        // An empty non-terminal is NODATA, not NXDOMAIN: the general path answers it.
        ("data.registry.example.test.", A, false),
        ("Nonexistent.Example.Test.", A, false),
        // Outside every zone: REFUSED, by the general path.
        ("nonexistent.invalid.", A, false),
    ];
    let mut fast_answers = 0;
    for (name, qtype, fast_expected) in cases {
        for (edns, ecs, cookie, payload) in [
            (false, None, None, 0),
            (true, None, None, 4096),
            (true, Some("198.51.100.0/24"), None, 4096),
            (
                true,
                Some("2001:db8:1::/56"),
                Some([1u8, 2, 3, 4, 5, 6, 7, 8]),
                4096,
            ),
            (true, None, None, 512),
        ] {
            for (rd, cd, dnssec_ok) in [(false, false, false), (true, true, true)] {
                let mut m = Message::new(0x5151, MessageType::Query, OpCode::Query);
                m.metadata.recursion_desired = rd;
                m.metadata.checking_disabled = cd;
                m.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
                if edns {
                    let mut e = Edns::new();
                    e.set_max_payload(payload);
                    e.set_dnssec_ok(dnssec_ok);
                    if let Some(s) = ecs {
                        let cs: ClientSubnet = s.parse().expect("subnet");
                        e.options_mut().insert(EdnsOption::Subnet(cs));
                    }
                    if let Some(c) = cookie {
                        e.options_mut().insert(EdnsOption::Unknown(10, c.to_vec()));
                    }
                    m.set_edns(e);
                }
                let q = m.to_vec().expect("encode");
                let what =
                    format!("{name} {qtype} edns {edns} ecs {ecs:?} payload {payload} rd {rd}");
                let b = answer_general(&general, &q, src, Some(NOW)).expect("general answer");
                // Truncated by the general path: over the UDP limit.
                let big = b[2] & 0x02 != 0;
                match berth::dns::answer_fast(&fast, &q, src, Some(NOW)) {
                    Some(a) => {
                        assert!(fast_expected && !big, "the fast path answered {what}");
                        if b[3] & 0x0f == 3 {
                            // NXDOMAIN: the same message; only hickory compresses the SOA.
                            assert_eq!(a[3] & 0x0f, 3, "{what}");
                            let (ma, mb) = (Message::from_vec(&a), Message::from_vec(&b));
                            assert_eq!(format!("{ma:?}"), format!("{mb:?}"), "{what}");
                        } else {
                            assert_eq!(a, b, "{what}");
                        }
                        fast_answers += 1;
                    }
                    None => assert!(!fast_expected || big, "the fast path left {what}"),
                }
                let c = answer_at(&fast, &q, src, Transport::Udp, Some(NOW)).expect("answer");
                if b[3] & 0x0f == 3 {
                    assert_eq!(
                        format!("{:?}", Message::from_vec(&c)),
                        format!("{:?}", Message::from_vec(&b)),
                        "front door: {what}"
                    );
                } else {
                    assert_eq!(c, b, "front door: {what}");
                }
            }
        }
    }
    assert!(fast_answers >= 17 * 10, "{fast_answers}");
}

/// Exact geography and the ECS scope: the whole ECS address is looked up (a /26 inside a
/// /24 of another city gets its own city), and the scope is the client prefix (/24), or the
/// GeoIP network where that is smaller, capped at the source prefix. Never a wider GeoIP
/// network: with the /16 that decided as the scope, a resolver would hand the answer one
/// /24 got (fresh) to another /24 whose remembered region differs, in the middle of its push.
#[test]
fn ecs_scope_is_the_client_prefix_or_a_smaller_geoip_network() {
    use berth::dns::{answer_at, Transport};
    use berth::live::Live;
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
    use hickory_proto::rr::{Name, RData, RecordType};

    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("geo.csv");
    std::fs::write(
        &csv,
        format!(
            "{}\n198.18.0.0/24,SA,BR,Sao Paulo,-23.55,-46.63\n\
             198.18.0.64/26,AS,JP,Tokyo,35.68,139.69\n\
             198.19.0.0/16,EU,NL,Amsterdam,52.37,4.90\n",
            berth::geo::CSV_HEADER
        ),
    )
    .expect("write csv");
    let mmdb = dir.path().join("geo.mmdb");
    berth::geo::build_from_csv(&csv, &mmdb).expect("build mmdb");
    let geoip = format!("{}", mmdb.display());
    let load = |tie: &str| {
        let path = demo_config(
            dir.path(),
            &[("../geoip/demo.mmdb", &geoip), ("tie_band_ms = 5.0", tie)],
            "",
        );
        Live::load(&path).expect("loads")
    };
    let ask = |live: &Live, subnet: &str| -> (String, u8) {
        let mut m = Message::new(9, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii("registry.example.test.").expect("name"),
            RecordType::A,
        ));
        let mut e = Edns::new();
        let cs: ClientSubnet = subnet.parse().expect("subnet");
        e.options_mut().insert(EdnsOption::Subnet(cs));
        m.set_edns(e);
        let q = m.to_vec().expect("encode");
        let src: IpAddr = "127.0.0.1".parse().expect("literal");
        let a = answer_at(live, &q, src, Transport::Udp, None).expect("answer");
        let a = Message::from_vec(&a).expect("parses");
        let addr = match a.answers.first().map(|r| &r.data) {
            Some(RData::A(ip)) => ip.to_string(),
            other => panic!("{subnet}: {other:?}\n{a:?}"),
        };
        let scope = match a.edns.as_ref().and_then(|e| e.option(EdnsCode::Subnet)) {
            Some(EdnsOption::Subnet(cs)) => cs.scope_prefix(),
            other => panic!("{other:?}"),
        };
        (addr, scope)
    };
    let live = load("tie_band_ms = 5.0");
    let southeastasia = "192.0.2.40".to_string();
    let eastus = "192.0.2.20".to_string();
    let westeurope = "192.0.2.30".to_string();
    // Tokyo's /26 inside Sao Paulo's /24: located by its own bits, scope /26.
    assert_eq!(ask(&live, "198.18.0.64/26"), (southeastasia.clone(), 26));
    assert_eq!(ask(&live, "198.18.0.77/32"), (southeastasia.clone(), 26));
    // The /24 as sent (a fresh server: the /26 above shares its client key, so here it
    // would be remembered on southeastasia): its first address is in Sao Paulo's part,
    // whose /26 is capped at the source /24.
    assert_eq!(
        ask(&load("tie_band_ms = 5.0"), "198.18.0.0/24"),
        (eastus.clone(), 24)
    );
    // Amsterdam's /16 places all of it, but each /24 is its own client key: scope /24 (and
    // a /20 query gets its source /20: the scope never exceeds it).
    assert_eq!(ask(&live, "198.19.5.0/24"), (westeurope.clone(), 24));
    assert_eq!(ask(&live, "198.19.16.0/20"), (westeurope.clone(), 20));

    // A client given eastus while westeurope was disabled keeps eastus when it comes back,
    // while a new client of the same /16 gets westeurope: each answer is scoped to its own
    // /24, so a resolver caching both never gives the first client the second's answer.
    live.set_enabled("westeurope", false).expect("flag");
    assert_eq!(ask(&live, "198.19.7.0/24"), (eastus.clone(), 24));
    live.set_enabled("westeurope", true).expect("flag");
    assert_eq!(ask(&live, "198.19.8.0/24"), (westeurope.clone(), 24));
    assert_eq!(ask(&live, "198.19.7.0/24"), (eastus.clone(), 24));

    // Every region tied: the rendezvous hash of the client key decides, scope /24; and a
    // /26 network longer than the client prefix still keeps its own length.
    let tied = load("tie_band_ms = 100000.0");
    assert_eq!(ask(&tied, "198.19.9.0/24").1, 24);
    assert_eq!(ask(&tied, "198.18.0.64/26").1, 26);
}

/// A query for `name`/`qtype` with one OPT record whose RDATA is `rdata` as given (its RDLENGTH
/// is `rdlength`, so it can lie), then `trailer` octets.
fn query_with_opt(name: &str, qtype: u16, rdlength: u16, rdata: &[u8], trailer: &[u8]) -> Vec<u8> {
    let mut q = vec![0xab, 0xcd, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1, 0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
    q.extend_from_slice(&rdlength.to_be_bytes());
    q.extend_from_slice(rdata);
    q.extend_from_slice(trailer);
    q
}

fn ecs_option(family: u16, source: u8, addr: &[u8]) -> Vec<u8> {
    let mut o = vec![0, 8];
    o.extend_from_slice(&(4 + addr.len() as u16).to_be_bytes());
    o.extend_from_slice(&family.to_be_bytes());
    o.extend_from_slice(&[source, 0]);
    o.extend_from_slice(addr);
    o
}

fn rcode(answer: &[u8]) -> u8 {
    answer[3] & 0x0f
}

/// Defect 6a: RFC 7871 6 wants FORMERR for an ECS address with more (or fewer) octets than its
/// source prefix needs; hickory reads only the octets it needs and answered NOERROR. Routed A
/// (the fast path's shape), routed TXT and static data (the general path) alike, UDP and TCP.
#[test]
fn ecs_with_the_wrong_number_of_address_octets_is_formerr() {
    let s = Server::start();
    let live = s.berth.running().live.clone();
    let src: IpAddr = "127.0.0.1".parse().unwrap();
    for (name, qtype) in [
        ("registry.example.test", 1),
        ("registry.example.test", 16),
        ("static.example.test", 1),
    ] {
        for (source, addr, ok) in [
            (24, &[198, 51, 100][..], true),
            (24, &[198, 51, 100, 0][..], false),
            (24, &[198, 51][..], false),
            (0, &[0][..], false),
            (16, &[198, 51, 0, 0][..], false),
        ] {
            let opt = ecs_option(1, source, addr);
            let q = query_with_opt(name, qtype, opt.len() as u16, &opt, &[]);
            let got = udp_exchange(&s, &q).expect("an answer");
            let want = if ok { 0 } else { 1 };
            assert_eq!(rcode(&got), want, "{name} type {qtype} /{source} {addr:?}");
            let tcp = berth::dns::answer(&live, &q, src, berth::dns::Transport::Tcp)
                .expect("a TCP answer");
            assert_eq!(
                rcode(&tcp),
                want,
                "TCP {name} type {qtype} /{source} {addr:?}"
            );
        }
    }
}

/// Defect 6b: an OPT whose RDLENGTH is shorter or longer than its options was answered as if
/// it had none; it is a FORMERR (the options cannot be read).
#[test]
fn an_opt_whose_rdlength_disagrees_with_its_options_is_formerr() {
    let s = Server::start();
    let opt = ecs_option(1, 24, &[198, 51, 100]);
    for name in ["registry.example.test", "static.example.test"] {
        // The control: the same option with the right RDLENGTH is answered.
        let q = query_with_opt(name, 1, opt.len() as u16, &opt, &[]);
        assert_eq!(rcode(&udp_exchange(&s, &q).expect("answer")), 0, "{name}");
        // Shorter: the option runs three octets past the RDATA.
        let q = query_with_opt(name, 1, 8, &opt[..8], &opt[8..]);
        assert_eq!(
            rcode(&udp_exchange(&s, &q).expect("answer")),
            1,
            "{name} short"
        );
        // Longer: two octets of a next option header inside the RDATA.
        let mut long = opt.clone();
        long.extend_from_slice(&[0, 99]);
        let q = query_with_opt(name, 1, long.len() as u16, &long, &[]);
        assert_eq!(
            rcode(&udp_exchange(&s, &q).expect("answer")),
            1,
            "{name} long"
        );
    }
}

/// Bytes after the last record the header counts: the message is not what it says it is.
/// FORMERR (as BIND and Knot answer), with the OPT when the query had one; hickory's parser
/// alone ignored them and answered.
#[test]
fn bytes_after_the_last_record_are_formerr() {
    let s = Server::start();
    let live = s.berth.running().live.clone();
    let src: IpAddr = "127.0.0.1".parse().unwrap();
    let opt = ecs_option(1, 24, &[198, 51, 100]);
    for name in [
        "registry.example.test",
        "static.example.test",
        "nope.example.test",
    ] {
        let with_opt = query_with_opt(name, 1, opt.len() as u16, &opt, &[]);
        // The same question without the OPT: ARCOUNT 0, the record cut off.
        let mut bare = with_opt[..with_opt.len() - 11 - opt.len()].to_vec();
        bare[11] = 0;
        for (what, q) in [("with OPT", with_opt), ("without OPT", bare)] {
            let edns = what == "with OPT";
            // The control: the message as its header counts it is answered.
            let got = udp_exchange(&s, &q).expect("an answer");
            let want = if name.starts_with("nope") { 3 } else { 0 };
            assert_eq!(rcode(&got), want, "{name} {what}");
            for trailer in [&[0u8][..], &[0, 0, 1, 0, 1], &[0xc0, 0x0c]] {
                let mut t = q.clone();
                t.extend_from_slice(trailer);
                let udp = udp_exchange(&s, &t).expect("an answer");
                let tcp = berth::dns::answer(&live, &t, src, berth::dns::Transport::Tcp)
                    .expect("a TCP answer");
                for (transport, got) in [("UDP", &udp), ("TCP", &tcp)] {
                    let m =
                        hickory_proto::op::Message::from_vec(got).expect("an answer that parses");
                    assert_eq!(rcode(got), 1, "{transport} {name} {what} + {trailer:?}");
                    assert_eq!(m.metadata.id, 0xabcd);
                    assert!(m.answers.is_empty(), "{transport} {name}: {m:?}");
                    assert_eq!(m.edns.is_some(), edns, "{transport} {name} {what}");
                }
            }
        }
    }
}

/// Defect 6c: NODATA at a routed name (TXT) does not depend on the client: scope /0 (RFC 7871
/// 7.2.1), while the routed A answer keeps the routed name's /24.
#[test]
fn nodata_at_a_routed_name_has_scope_zero() {
    let s = Server::start();
    for transport in ["+notcp", "+tcp"] {
        let d = dig(
            &s,
            &[
                transport,
                "registry.example.test",
                "TXT",
                "+subnet=198.51.100.0/24",
            ],
        );
        assert_eq!(d.status, "NOERROR", "{}", d.raw);
        assert!(d.answer.is_empty(), "{}", d.raw);
        assert!(d.authority[0].contains("SOA"), "{}", d.raw);
        assert_eq!(d.ecs.as_deref(), Some("198.51.100.0/24/0"), "{}", d.raw);
        let d = dig(
            &s,
            &[
                transport,
                "registry.example.test",
                "A",
                "+subnet=198.51.100.0/24",
            ],
        );
        assert_eq!(d.ecs.as_deref(), Some("198.51.100.0/24/24"), "{}", d.raw);
    }
}

/// The server cookie dig printed (`; COOKIE: <client><server> (good)`), as hex.
fn dig_cookie(d: &support::Dig) -> String {
    d.raw
        .lines()
        .find_map(|l| l.strip_prefix("; COOKIE: "))
        .unwrap_or_else(|| panic!("no COOKIE in\n{}", d.raw))
        .split_whitespace()
        .next()
        .expect("hex")
        .to_string()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

fn unix_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as u32
}

const COOKIE_SECRET: &str = "e5e973e5a6b2a43f48e7dc849e37bfcf";

/// DNS COOKIE with real clients: dig and kdig get an RFC 9018 server cookie (the one an
/// independent computation with the configured secret gives), a valid one sent back is
/// accepted (echoed while young), a forged or expired one is replaced by a fresh one, and a
/// COOKIE option of a bad length is a FORMERR.
#[test]
fn cookies_are_answered_checked_and_renewed() {
    use berth::dns::cookie::{server_cookie, Secret};
    let s = Server::with(
        &[],
        &format!("[dns.cookie]\nsecret = \"{COOKIE_SECRET}\"\n"),
    );
    let secret = Secret::from_hex(COOKIE_SECRET).unwrap();
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    for transport in ["+notcp", "+tcp"] {
        let d = dig(&s, &[transport, "+cookie", "registry.example.test", "A"]);
        assert_eq!(d.status, "NOERROR", "{}", d.raw);
        let c = unhex(&dig_cookie(&d));
        assert_eq!(c.len(), 24, "{}", d.raw);
        assert!(d.raw.contains("(good)"), "client cookie echoed\n{}", d.raw);
        let client: [u8; 8] = c[..8].try_into().unwrap();
        let stamp = u32::from_be_bytes(c[12..16].try_into().unwrap());
        assert_eq!(
            c[8..],
            server_cookie(&secret, &client, ip, stamp),
            "RFC 9018"
        );
    }
    // kdig shows it too, for static data and for NXDOMAIN.
    for name in ["static.example.test", "nope.example.test"] {
        let out = Command::new("kdig")
            .arg(format!("@{}", s.addr.ip()))
            .args(["-p", &s.addr.port().to_string(), "+cookie", name, "A"])
            .output()
            .expect("kdig runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.starts_with(";; COOKIE: "))
            .unwrap_or_else(|| panic!("kdig shows no cookie\n{text}"));
        assert_eq!(line.len(), ";; COOKIE: ".len() + 48, "{text}");
    }

    // A valid cookie minted ten minutes ago is accepted: sent back unchanged (a fresh one
    // would carry the current time).
    let client = [0x24, 0x64, 0xc4, 0xab, 0xcf, 0x10, 0xc9, 0x57];
    let ten_min_ago = server_cookie(&secret, &client, ip, unix_now() - 600);
    let sent = format!("{}{}", hex(&client), hex(&ten_min_ago));
    let cookie_arg = format!("+cookie={sent}");
    for transport in ["+notcp", "+tcp"] {
        let d = dig(&s, &[transport, &cookie_arg, "registry.example.test", "A"]);
        assert_eq!(
            dig_cookie(&d),
            sent,
            "{transport}: accepted and echoed\n{}",
            d.raw
        );
    }
    let out = Command::new("kdig")
        .arg(format!("@{}", s.addr.ip()))
        .args(["-p", &s.addr.port().to_string(), &cookie_arg])
        .args(["registry.example.test", "A"])
        .output()
        .expect("kdig runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(";; COOKIE: {}", sent.to_uppercase())),
        "kdig: accepted and echoed\n{text}"
    );
    // Forged (one hash bit flipped) or expired (two hours old): a fresh cookie, not an error.
    let mut forged = ten_min_ago;
    forged[15] ^= 1;
    let expired = server_cookie(&secret, &client, ip, unix_now() - 7200);
    for bad in [forged, expired] {
        let arg = format!("+cookie={}{}", hex(&client), hex(&bad));
        let d = dig(&s, &[&arg, "registry.example.test", "A"]);
        assert_eq!(d.status, "NOERROR", "{}", d.raw);
        let c = unhex(&dig_cookie(&d));
        assert_ne!(c[8..], bad, "a fresh cookie\n{}", d.raw);
        let stamp = u32::from_be_bytes(c[12..16].try_into().unwrap());
        assert!(stamp.abs_diff(unix_now()) < 60, "stamped now\n{}", d.raw);
        assert_eq!(c[8..], server_cookie(&secret, &client, ip, stamp));
    }
    // RFC 7873 5.4: a query without a question, only a COOKIE option, asks for a server
    // cookie: NOERROR with one. Without the option it is still a FORMERR.
    for transport in ["+notcp", "+tcp"] {
        let d = dig(&s, &[transport, "+cookie", "+header-only"]);
        assert_eq!(d.status, "NOERROR", "{}", d.raw);
        let c = unhex(&dig_cookie(&d));
        let stamp = u32::from_be_bytes(c[12..16].try_into().unwrap());
        let client: [u8; 8] = c[..8].try_into().unwrap();
        assert_eq!(
            c[8..],
            server_cookie(&secret, &client, ip, stamp),
            "{}",
            d.raw
        );
        let d = dig(&s, &[transport, "+nocookie", "+header-only"]);
        assert_eq!(d.status, "FORMERR", "{}", d.raw);
    }
    // A COOKIE option no cookie fits (5 octets; 12: a server cookie under 8): FORMERR.
    for len in [5usize, 12, 41] {
        let mut opt = vec![0, 10];
        opt.extend_from_slice(&(len as u16).to_be_bytes());
        opt.extend(std::iter::repeat_n(7u8, len));
        for name in ["registry.example.test", "static.example.test"] {
            let q = query_with_opt(name, 1, opt.len() as u16, &opt, &[]);
            let got = udp_exchange(&s, &q).expect("an answer");
            assert_eq!(rcode(&got), 1, "{name}: COOKIE of {len} octets");
        }
    }
}

/// Response rate limiting with a real burst: from one source, past the burst, answers are
/// dropped except every `slip`-th, which is an empty TC=1 answer; another source
/// (127.0.0.2) is answered; TCP is never limited; and a client showing a valid server cookie
/// (learnt over TCP, as a resolver would after a truncated answer) is not limited either. The
/// limiter's clock is frozen, so the counts are exact.
#[test]
fn rate_limiting_drops_and_slips_past_the_rate_but_spares_others_tcp_and_cookies() {
    let s = Server::with(
        &[],
        // /32: loopback clients all sit in 127.0.0.0/24, and 127.0.0.2 stands for another.
        "[dns.rate_limit]\nresponses_per_second = 5\nwindow = \"1s\"\nslip = 2\nipv4_prefix = 32\n",
    );
    let live = s.berth.running().live.clone();
    live.set_clock(1_000_000);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let n = 100u16;
    for id in 0..n {
        let mut q = query_with_opt("registry.example.test", 1, 0, &[], &[]);
        q[..2].copy_from_slice(&id.to_be_bytes());
        sock.send_to(&q, s.addr).unwrap();
    }
    // The burst: 5/s x 1 s, plus the one in hand = 6 answers; the other 94 are limited, and
    // every second of them (47) slips out truncated.
    let (mut full, mut truncated) = (0, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 1500];
    while full + truncated < 6 + 47 && std::time::Instant::now() < deadline {
        let Ok((len, _)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let m = hickory_proto::op::Message::from_vec(&buf[..len]).expect("parses");
        if m.metadata.truncation {
            assert!(m.answers.is_empty() && m.queries.len() == 1, "{m:?}");
            truncated += 1;
        } else {
            assert_eq!(m.answers.len(), 1, "{m:?}");
            full += 1;
        }
    }
    assert_eq!((full, truncated), (6, 47));
    let metrics = &live.metrics;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while load(&metrics.rrl_dropped) < 47 && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert_eq!(
        (load(&metrics.rrl_dropped), load(&metrics.rrl_slipped)),
        (47, 47)
    );
    let text = live.render_metrics();
    assert!(
        text.contains("berth_dns_rate_limited_total{action=\"drop\"} 47"),
        "{text}"
    );

    // Another source (prefix) has its own budget.
    let q = query_with_opt("registry.example.test", 1, 0, &[], &[]);
    let got = udp_exchange_from(&s, "127.0.0.2", &q).expect("127.0.0.2 is answered");
    let m = hickory_proto::op::Message::from_vec(&got).expect("parses");
    assert!(!m.metadata.truncation && m.answers.len() == 1, "{m:?}");

    // TCP is never limited; it also hands out the server cookie...
    let d = dig(&s, &["+tcp", "+cookie", "registry.example.test", "A"]);
    assert_eq!(d.answer_data(), vec!["192.0.2.10"], "{}", d.raw);
    let cookie = dig_cookie(&d);
    // ...with which UDP from the limited source is answered, every time.
    for _ in 0..10 {
        let d = dig(
            &s,
            &[
                "+notcp",
                "+ignore",
                &format!("+cookie={cookie}"),
                "registry.example.test",
                "A",
            ],
        );
        assert!(!d.flags.contains(&"tc".to_string()), "{}", d.raw);
        assert_eq!(d.answer_data(), vec!["192.0.2.10"], "{}", d.raw);
    }
    // Without it, still limited (dropped or truncated, never answered in full).
    let before = load(&metrics.rrl_dropped) + load(&metrics.rrl_slipped);
    let q = query_with_opt("registry.example.test", 1, 0, &[], &[]);
    if let Some(got) = udp_exchange(&s, &q) {
        assert_eq!(got[2] & 0x02, 0x02, "only a truncated answer");
    }
    assert_eq!(
        load(&metrics.rrl_dropped) + load(&metrics.rrl_slipped),
        before + 1
    );
}

/// The same cookie secret in a file, two instances: a cookie from one is valid at the other,
/// which shows as the rate-limit exemption (the other limits everything else from here).
#[test]
fn instances_sharing_a_secret_file_accept_each_others_cookies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cookie.secret");
    std::fs::write(&file, format!("{COOKIE_SECRET}\n")).unwrap();
    let extra = format!(
        "[dns.cookie]\nsecret_file = \"{}\"\n[dns.rate_limit]\nresponses_per_second = 1\nwindow = \"1s\"\nslip = 0\n",
        file.display()
    );
    let a = Server::with(&[], &extra);
    let b = Server::with(&[], &extra);
    b.berth.running().live.set_clock(5_000);
    let d = dig(&a, &["+cookie", "registry.example.test", "A"]);
    let cookie = dig_cookie(&d);
    for i in 0..5 {
        let d = dig(
            &b,
            &[&format!("+cookie={cookie}"), "registry.example.test", "A"],
        );
        assert_eq!(d.answer_data(), vec!["192.0.2.10"], "query {i}\n{}", d.raw);
    }
    // The control: without the cookie, b drops everything past its burst of 2.
    let q = query_with_opt("registry.example.test", 1, 0, &[], &[]);
    let answered = (0..4).filter(|_| udp_exchange(&b, &q).is_some()).count();
    assert_eq!(answered, 2);
}
