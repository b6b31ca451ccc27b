//! Writes the seed corpora of the fuzz targets into the directory given as the argument
//! (`<dir>/<target>/<n>`): valid inputs built from the demo config and zone, which the fuzzer
//! then mutates. Generated rather than committed, so they follow the demo files.

use std::path::{Path, PathBuf};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::{Name, RecordType};

fn write(dir: &Path, target: &str, seeds: &[Vec<u8>]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).expect("corpus directory");
    for (i, s) in seeds.iter().enumerate() {
        std::fs::write(d.join(format!("seed-{i:03}")), s).expect("write seed");
    }
    println!("{}: {} seeds", d.display(), seeds.len());
}

fn dns_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let names = [
        "registry.example.test.",
        "ReGiStRy.example.TEST.",
        "www.example.test.",
        "big.example.test.",
        "example.test.",
        "nonexistent.example.test.",
        "westus.data.registry.example.test.",
        "example.org.",
    ];
    let ecs = [
        None,
        Some("198.51.100.0/24"),
        Some("203.0.113.0/24"),
        Some("2001:db8:1::/56"),
        Some("2001:db8:2::/48"),
        Some("0.0.0.0/0"),
        Some("10.1.2.0/23"),
    ];
    for (n, name) in names.iter().enumerate() {
        for qtype in [
            RecordType::A,
            RecordType::AAAA,
            RecordType::ANY,
            RecordType::TXT,
            RecordType::SOA,
        ] {
            for (e, subnet) in ecs.iter().enumerate() {
                // Every routed query with each ECS; the other names with a few.
                if n > 1 && e > 1 {
                    continue;
                }
                for edns in [false, true] {
                    if subnet.is_some() && !edns {
                        continue;
                    }
                    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
                    m.metadata.recursion_desired = e % 2 == 0;
                    m.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
                    if edns {
                        let mut o = Edns::new();
                        o.set_max_payload(if e % 2 == 0 { 4096 } else { 512 });
                        o.set_dnssec_ok(e == 3);
                        if let Some(s) = subnet {
                            let cs: ClientSubnet = s.parse().expect("subnet");
                            o.options_mut().insert(EdnsOption::Subnet(cs));
                        }
                        if e == 2 {
                            // A DNS COOKIE (RFC 7873) client cookie.
                            o.options_mut().insert(EdnsOption::Unknown(
                                EdnsCode::Cookie.into(),
                                vec![1, 2, 3, 4, 5, 6, 7, 8],
                            ));
                        }
                        m.set_edns(o);
                    }
                    let mut seed = vec![(n + e) as u8 & 0x07];
                    seed.extend(m.to_vec().expect("encode"));
                    out.push(seed);
                }
            }
        }
    }
    // The same routed query against the all-disabled state (selector bit 7).
    let mut disabled = out[0].clone();
    disabled[0] |= 0x80;
    out.push(disabled);
    out
}

fn oci_seeds() -> Vec<Vec<u8>> {
    let digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let mut texts: Vec<(u8, String)> = [
        "/v2/",
        "/v2",
        "/v2/_catalog",
        "/v2/team/app/tags/list",
        "/v2/team/app/blobs/uploads/",
        "/v2/team/app/blobs/uploads/4e0b3f7a-1d52-4b8e-9a8e-2f3c6a1b9d10",
        "/v2/a/blobs/b/manifests/latest",
        "/v2/team%2fapp/manifests/v1",
    ]
    .iter()
    .map(|p| (0u8, p.to_string()))
    .collect();
    texts.push((0, format!("/v2/team/app/blobs/{digest}")));
    texts.push((0, format!("/v2/team/app/manifests/{digest}")));
    texts.push((0, format!("/v2/team/app/referrers/{digest}")));
    for t in [
        "westus.0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "_berth=westus.00&digest=sha256:00&_berth=x",
        "http://127.0.0.1:5001/v2/team/app/blobs/uploads/abc?_state=x&_berth=eastus.00",
        "https://registry.example.test/v2/x/blobs/uploads/abc",
        "https://elsewhere.example/upload?sig=1",
        "/v2/team/app/blobs/uploads/abc?_berth=westus.00",
    ] {
        texts.push((1, t.to_string()));
    }
    texts.push((
        2,
        format!(
            "{{\"schemaVersion\":2,\"config\":{{\"digest\":\"{digest}\"}},\
             \"layers\":[{{\"digest\":\"{digest}\"}},{{\"urls\":[\"x\"],\"digest\":\"{digest}\"}}],\
             \"subject\":{{\"digest\":\"{digest}\"}}}}"
        ),
    ));
    texts.push((
        2,
        format!("{{\"manifests\":[{{\"digest\":\"{digest}\"}}]}}"),
    ));
    texts.push((
        2,
        "{\"errors\":[{\"code\":\"BLOB_UNKNOWN\",\"message\":\"x\"}]}".to_string(),
    ));
    texts.push((
        3,
        "secret\nwestus\nteam/app\n4e0b3f7a\nother\neastus\nteam/other\n5f1c".to_string(),
    ));
    texts
        .into_iter()
        .map(|(sel, t)| {
            let mut s = vec![sel];
            s.extend_from_slice(t.as_bytes());
            s
        })
        .collect()
}

fn text_seeds(repo: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (sel, file) in [
        (0u8, "config/demo.toml"),
        (0, "benches/peers.toml"),
        (1, "zones/example.test.zone"),
    ] {
        let mut s = vec![sel];
        s.extend(std::fs::read(repo.join(file)).expect("demo file"));
        out.push(s);
    }
    out
}

fn main() {
    let dir: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .expect("usage: seeds <corpus directory>");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    write(&dir, "dns_diff", &dns_seeds());
    write(&dir, "oci_token", &oci_seeds());
    write(&dir, "config_zone", &text_seeds(&repo));
}
