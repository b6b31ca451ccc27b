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
        let dir = tempfile::tempdir().expect("tempdir");
        let path = demo_config(dir.path(), &[], "");
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
            // The scope says what the answer depended on: the routed name's client prefix.
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
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
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

    fn check(packet: &[u8]) -> Result<(), TestCaseError> {
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
/// reference. Same query, same state: the same message, for every shape the fast path takes.
#[test]
fn fast_path_answers_exactly_like_the_general_path() {
    use berth::dns::{answer, answer_general, Transport};
    use berth::live::Live;
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
    use hickory_proto::rr::{Name, RecordType};

    let dir = tempfile::tempdir().expect("tempdir");
    let path = demo_config(dir.path(), &[], "");
    let fast = Live::load(&path).expect("loads");
    let general = Live::load(&path).expect("loads");
    let src: IpAddr = "127.0.0.1".parse().expect("literal");
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
                for (edns, dnssec_ok, rd) in [
                    (false, false, false),
                    (true, false, true),
                    (true, true, false),
                ] {
                    if ecs.is_some() && !edns {
                        continue;
                    }
                    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
                    m.metadata.recursion_desired = rd;
                    m.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
                    if edns {
                        let mut e = Edns::new();
                        e.set_max_payload(4096);
                        e.set_dnssec_ok(dnssec_ok);
                        if let Some(s) = ecs {
                            let cs: ClientSubnet = s.parse().expect("subnet");
                            e.options_mut().insert(EdnsOption::Subnet(cs));
                        }
                        m.set_edns(e);
                    }
                    let q = m.to_vec().expect("encode");
                    let a = answer(&fast, &q, src, Transport::Udp).expect("fast answer");
                    let b = answer_general(&general, &q, src).expect("general answer");
                    let (ma, mb) = (
                        Message::from_vec(&a).expect("fast parses"),
                        Message::from_vec(&b).expect("general parses"),
                    );
                    // Debug, not ==: hickory's Record equality ignores TTLs.
                    assert_eq!(
                        format!("{ma:?}"),
                        format!("{mb:?}"),
                        "{name} {qtype} ecs {ecs:?} edns {edns} do {dnssec_ok}"
                    );
                    shapes += 1;
                }
            }
        }
    }
    assert_eq!(shapes, 2 * 2 * (7 * 2 + 1));
    // All regions disabled: NODATA with the SOA, the same from both paths.
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
    let a = Message::from_vec(&answer(&fast, &q, src, Transport::Udp).expect("answer"))
        .expect("parses");
    let b = Message::from_vec(&answer_general(&general, &q, src).expect("answer")).expect("parses");
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    assert!(a.answers.is_empty() && a.authorities.len() == 1);
}
