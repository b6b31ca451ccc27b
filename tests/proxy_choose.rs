//! The proxy's choice of region, table-driven: each case renders what `proxy::choose` returns
//! for a few requests (binding, region or refusal, read fallback) and compares it with the
//! expected text. The end-to-end tests (`tests/proxy.rs`, real registries and skopeo) show the
//! same rule through pingora; here every branch of it is spelled out.

use std::path::Path;

use berth::config::Config;
use berth::expiring::Millis;
use berth::proxy::choose::{choose, held_elsewhere, Choice, Facts};
use berth::proxy::{oci, token::Signer};
use berth::routing::RegionState;
use berth::snapshot::Snapshot;
use expect_test::{expect, Expect};
use http::Method;

/// Three regions in priority order for the routed name, and a fourth outside it.
/// `push_affinity` (the affinity period, and so the drain window) is 900 s.
const CONFIG: &str = r#"
[dns]
listen = ["127.0.0.1:0"]

[[zone]]
origin = "example.test"
file = "zones/example.test.zone"

[[region]]
name = "westus"
latitude = 47.6
longitude = -122.3
a = ["192.0.2.10"]
upstream = "http://127.0.0.1:5001"

[[region]]
name = "eastus"
latitude = 37.4
longitude = -79.0
a = ["192.0.2.20"]
upstream = "http://127.0.0.1:5002"

[[region]]
name = "westeurope"
latitude = 52.4
longitude = 4.9
a = ["192.0.2.30"]
upstream = "http://127.0.0.1:5003"

[[region]]
name = "southeastasia"
latitude = 1.3
longitude = 103.8
a = ["192.0.2.40"]
upstream = "http://127.0.0.1:5004"

[[routed_name]]
name = "registry.example.test"
policy = "priority"
regions = ["westus", "eastus", "westeurope"]

[proxy]
listen = "127.0.0.1:0"
push_affinity = "900s"
read_fallback_max = 2
"#;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const UUID: &str = "4e0b3f7a-1d52-4b8e-9a8e-2f3c6a1b9d10";
const BLOB: &str =
    "/v2/team/app/blobs/sha256:f612bd81e87dc4ddbeeb396801ec82c890937a92bf896522c6008cdbfdca3aa7";
const UPLOAD: &str = "/v2/team/app/blobs/uploads/4e0b3f7a-1d52-4b8e-9a8e-2f3c6a1b9d10";
/// The wall clock upload tokens are checked against (Unix seconds), and one after it.
const UNIX_NOW: u64 = 1_800_000_000;
const LATER: u64 = UNIX_NOW + 3_600;

/// One request to choose for.
struct Row {
    label: &'static str,
    method: Method,
    path: &'static str,
    /// The upload token it carries, checked the way `service` checks it.
    token: Option<String>,
    /// What the affinity table holds for (client key, repository): region, since.
    affinity: Option<(&'static str, Millis)>,
    now: Millis,
    /// Regions replication knows hold what the request names (ids in file order).
    holders: Option<Vec<usize>>,
}

fn row(label: &'static str, method: Method, path: &'static str) -> Row {
    Row {
        label,
        method,
        path,
        token: None,
        affinity: None,
        now: 1_000_000,
        holders: None,
    }
}

impl Row {
    fn pinned(self, region: &'static str, since: Millis) -> Row {
        Row {
            affinity: Some((region, since)),
            ..self
        }
    }

    fn held_by(self, ids: &[usize]) -> Row {
        Row {
            holders: Some(ids.to_vec()),
            ..self
        }
    }

    fn at(self, now: Millis) -> Row {
        Row { now, ..self }
    }

    fn token(self, t: String) -> Row {
        Row {
            token: Some(t),
            ..self
        }
    }
}

/// A token for this test's upload, signed by `secret` for `region`, valid until `expires`.
fn token_for(secret: &[u8], region: &str, expires: u64) -> String {
    Signer::new(secret).sign(region, "team/app", UUID, expires)
}

fn render(snap: &Snapshot, c: &Choice) -> String {
    let binding = format!("{:?}", c.binding).to_lowercase();
    match &c.region {
        Ok(id) => format!(
            "{binding} -> {} (read fallback {})",
            snap.config.regions[*id].name, c.read_fallback
        ),
        Err(r) => format!(
            "{binding} refused {} {} {}: {}",
            r.status,
            r.code,
            r.message,
            r.detail.as_deref().unwrap_or("-")
        ),
    }
}

/// Choose for every row. `states` has one letter per region in file order: u = up,
/// d = down (unhealthy), x = disabled (healthy, draining), o = disabled and down.
fn check(states: &str, rows: Vec<Row>, expect: Expect) {
    let snap = snapshot(states);
    let rn = &snap.config.routed_names[0];
    let signer = Signer::new(SECRET);
    let mut out = String::new();
    for r in &rows {
        let route = oci::parse(r.path);
        let session = match (route, &r.token) {
            (oci::Route::Upload { repo, uuid }, Some(t)) => {
                Some(signer.verify(t, repo, uuid, UNIX_NOW))
            }
            _ => None,
        };
        let facts = Facts {
            client: "198.51.100.7".parse().expect("test address"),
            route,
            method: &r.method,
            session,
            affinity: r.affinity,
            holders: r.holders.as_deref(),
        };
        let choice = choose(&snap, rn, &facts, r.now);
        out.push_str(&format!("{:<28} {}\n", r.label, render(&snap, &choice)));
    }
    expect.assert_eq(&out);
}

/// The test config's snapshot with `states` (see [`check`]).
fn snapshot(states: &str) -> Snapshot {
    let cfg = Config::parse(
        CONFIG,
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("test.toml"),
    )
    .expect("test config is valid");
    let states: Vec<RegionState> = states
        .chars()
        .map(|c| {
            let (enabled, healthy) = match c {
                'u' => (true, true),
                'd' => (true, false),
                'x' => (false, true),
                'o' => (false, false),
                _ => panic!("state letters are u, d, x, o"),
            };
            RegionState { enabled, healthy }
        })
        .collect();
    Snapshot::load(cfg, 0)
        .expect("test snapshot loads")
        .with_states(states)
}

/// A read that every region it tried answered with 404: when a holder gave no answer or is
/// down, the content exists and Berth says so with a 503 the client may retry.
#[test]
fn a_read_that_met_only_404s_while_its_holder_was_away_is_unavailable() {
    // westus and eastus up, westeurope down, southeastasia disabled (healthy).
    let snap = snapshot("uudx");
    type Case = (&'static str, &'static [usize], &'static [(usize, u16)]);
    let cases: [Case; 6] = [
        ("holder gave no answer", &[0], &[(0, 0)]),
        ("holder said 404 itself", &[0], &[(0, 404)]),
        ("holder down, not tried", &[2], &[]),
        ("holder only disabled", &[3], &[]),
        ("a non-holder gave none", &[1], &[(0, 0)]),
        ("two holders away", &[0, 2], &[(0, 0), (1, 404)]),
    ];
    let mut out = String::new();
    for (label, holders, earlier) in cases {
        let verdict = match held_elsewhere(&snap, holders, earlier) {
            None => "404 kept".to_string(),
            Some(r) => format!(
                "{} {}: {}",
                r.status,
                r.code,
                r.detail.as_deref().unwrap_or("-")
            ),
        };
        out.push_str(&format!("{label:<24} {verdict}\n"));
    }
    expect![[r#"
        holder gave no answer    503 UNAVAILABLE: held by westus, which did not answer or is down; the regions that answered do not have it yet: try again
        holder said 404 itself   404 kept
        holder down, not tried   503 UNAVAILABLE: held by westeurope, which did not answer or is down; the regions that answered do not have it yet: try again
        holder only disabled     404 kept
        a non-holder gave none   404 kept
        two holders away         503 UNAVAILABLE: held by westus, westeurope, which did not answer or is down; the regions that answered do not have it yet: try again
    "#]].assert_eq(&out);
}

#[test]
fn a_new_client_takes_the_routing_cores_region() {
    check(
        "uuuu",
        vec![
            row("blob GET", Method::GET, BLOB),
            row("blob HEAD (push check)", Method::HEAD, BLOB),
            row("manifest HEAD", Method::HEAD, "/v2/team/app/manifests/v1"),
            row("manifest PUT", Method::PUT, "/v2/team/app/manifests/v1"),
            row("upload start", Method::POST, "/v2/team/app/blobs/uploads/"),
            row("upload without token", Method::PATCH, UPLOAD),
            row("version check", Method::GET, "/v2/"),
            row("catalog", Method::GET, "/v2/_catalog"),
        ],
        expect![[r#"
            blob GET                     affinity -> westus (read fallback 2)
            blob HEAD (push check)       affinity -> westus (read fallback 0)
            manifest HEAD                affinity -> westus (read fallback 2)
            manifest PUT                 affinity -> westus (read fallback 0)
            upload start                 affinity -> westus (read fallback 0)
            upload without token         affinity -> westus (read fallback 0)
            version check                client -> westus (read fallback 0)
            catalog                      client -> westus (read fallback 0)
        "#]],
    );
}

#[test]
fn an_affinity_is_kept_while_its_region_is_usable() {
    check(
        "uuuu",
        vec![
            row("pinned to eastus", Method::HEAD, BLOB).pinned("eastus", 0),
            row("pinned long ago", Method::HEAD, BLOB)
                .pinned("eastus", 0)
                .at(100_000_000),
            row("path without repository", Method::GET, "/v2/").pinned("eastus", 0),
        ],
        expect![[r#"
            pinned to eastus             affinity -> eastus (read fallback 0)
            pinned long ago              affinity -> eastus (read fallback 0)
            path without repository      client -> westus (read fallback 0)
        "#]],
    );
}

#[test]
fn a_disabled_healthy_region_keeps_its_pushes_for_one_affinity_period() {
    // eastus is disabled (draining); the affinity began at t = 0 and the period is 900 s.
    check(
        "uxuu",
        vec![
            row("just disabled", Method::HEAD, BLOB)
                .pinned("eastus", 0)
                .at(1_000),
            row("last ms of the window", Method::HEAD, BLOB)
                .pinned("eastus", 0)
                .at(899_999),
            row("window over", Method::HEAD, BLOB)
                .pinned("eastus", 0)
                .at(900_000),
            row("new client", Method::HEAD, BLOB).at(1_000),
        ],
        expect![[r#"
            just disabled                affinity -> eastus (read fallback 0)
            last ms of the window        affinity -> eastus (read fallback 0)
            window over                  affinity -> westus (read fallback 0)
            new client                   affinity -> westus (read fallback 0)
        "#]],
    );
    // Disabled and down: no drain.
    check(
        "uouu",
        vec![row("disabled and down", Method::HEAD, BLOB)
            .pinned("eastus", 0)
            .at(1_000)],
        expect![[r#"
            disabled and down            affinity -> westus (read fallback 0)
        "#]],
    );
}

#[test]
fn an_affinity_to_a_down_or_removed_region_moves() {
    check(
        "uduu",
        vec![
            row("pinned to down eastus", Method::HEAD, BLOB).pinned("eastus", 0),
            row("region no longer configured", Method::HEAD, BLOB).pinned("northeurope", 0),
            row("region outside the name", Method::HEAD, BLOB).pinned("southeastasia", 0),
        ],
        expect![[r#"
            pinned to down eastus        affinity -> westus (read fallback 0)
            region no longer configured  affinity -> westus (read fallback 0)
            region outside the name      affinity -> westus (read fallback 0)
        "#]],
    );
}

#[test]
fn an_upload_session_goes_to_its_tokens_region_or_nowhere() {
    let eastus = token_for(SECRET, "eastus", LATER);
    let rows = || {
        vec![
            row("token for eastus", Method::PATCH, UPLOAD).token(eastus.clone()),
            row("token beats affinity", Method::PUT, UPLOAD)
                .token(eastus.clone())
                .pinned("westus", 0),
        ]
    };
    check(
        "uuuu",
        rows(),
        expect![[r#"
            token for eastus             session -> eastus (read fallback 0)
            token beats affinity         session -> eastus (read fallback 0)
        "#]],
    );
    check(
        "uxuu",
        rows(),
        expect![[r#"
            token for eastus             session -> eastus (read fallback 0)
            token beats affinity         session -> eastus (read fallback 0)
        "#]],
    );
    check(
        "uduu",
        rows(),
        expect![[r#"
            token for eastus             session refused 404 BLOB_UPLOAD_UNKNOWN blob upload unknown to registry: the upload's region eastus is down; start the upload again
            token beats affinity         session refused 404 BLOB_UPLOAD_UNKNOWN blob upload unknown to registry: the upload's region eastus is down; start the upload again
        "#]],
    );
}

#[test]
fn a_forged_expired_or_orphaned_token_is_refused() {
    check(
        "uuuu",
        vec![
            row("another secret", Method::PATCH, UPLOAD).token(token_for(
                b"another secret, another berth",
                "eastus",
                LATER,
            )),
            row("expired", Method::PATCH, UPLOAD).token(token_for(SECRET, "eastus", UNIX_NOW - 5)),
            row("garbage", Method::PATCH, UPLOAD).token("eastus.nonsense".to_string()),
            row("region removed", Method::PATCH, UPLOAD).token(token_for(
                SECRET,
                "northeurope",
                LATER,
            )),
        ],
        expect![[r#"
            another secret               session refused 404 BLOB_UPLOAD_INVALID blob upload invalid: the upload token's signature does not match this upload
            expired                      session refused 404 BLOB_UPLOAD_INVALID blob upload invalid: the upload token expired 5 s ago; start the upload again
            garbage                      session refused 404 BLOB_UPLOAD_INVALID blob upload invalid: the upload token is malformed
            region removed               session refused 404 BLOB_UPLOAD_UNKNOWN blob upload unknown to registry: the upload's region northeurope is no longer configured; start the upload again
        "#]],
    );
}

#[test]
fn no_eligible_region_is_a_refusal() {
    // Every region of the name disabled (the one outside it does not count), and one down:
    // nothing to fail open to.
    check(
        "xoxu",
        vec![
            row("blob GET", Method::GET, BLOB),
            row("pinned past the window", Method::GET, BLOB)
                .pinned("eastus", 0)
                .at(900_000),
            row("version check", Method::GET, "/v2/"),
        ],
        expect![[r#"
            blob GET                     affinity refused 503 UNAVAILABLE no region can serve this request: every region of registry.example.test is disabled or down
            pinned past the window       affinity refused 503 UNAVAILABLE no region can serve this request: every region of registry.example.test is disabled or down
            version check                client refused 503 UNAVAILABLE no region can serve this request: every region of registry.example.test is disabled or down
        "#]],
    );
}

#[test]
fn when_every_region_is_down_the_name_fails_open() {
    // No enabled region of the name is healthy (westeurope is disabled): the routing core
    // fails open among the enabled ones, and so do sessions and affinities to them.
    check(
        "ddxu",
        vec![
            row("new client", Method::GET, BLOB),
            row("pinned to eastus", Method::GET, BLOB).pinned("eastus", 0),
            row("version check", Method::GET, "/v2/"),
            row("session in eastus", Method::PATCH, UPLOAD)
                .token(token_for(SECRET, "eastus", LATER)),
        ],
        expect![[r#"
            new client                   affinity -> westus (read fallback 2)
            pinned to eastus             affinity -> eastus (read fallback 2)
            version check                client -> westus (read fallback 0)
            session in eastus            session -> eastus (read fallback 0)
        "#]],
    );
}

/// Replication-aware reads: a read whose content is known to be elsewhere goes to the nearest
/// usable holder; a push's requests, unknown content and unusable holders change nothing.
#[test]
fn reads_go_to_a_region_known_to_hold_the_content() {
    check(
        "uudu",
        vec![
            row(
                "manifest GET, no facts",
                Method::GET,
                "/v2/team/app/manifests/v1",
            ),
            row(
                "manifest GET, in eastus",
                Method::GET,
                "/v2/team/app/manifests/v1",
            )
            .held_by(&[1]),
            row(
                "manifest HEAD, in 1 and 3",
                Method::HEAD,
                "/v2/team/app/manifests/v1",
            )
            .held_by(&[3, 1]),
            row("blob GET, in westus", Method::GET, BLOB).held_by(&[0]),
            row("blob GET, only in a down one", Method::GET, BLOB).held_by(&[2]),
            row("blob HEAD (push check)", Method::HEAD, BLOB).held_by(&[1]),
            row("manifest PUT", Method::PUT, "/v2/team/app/manifests/v1").held_by(&[1]),
            row("pinned read, elsewhere", Method::GET, BLOB)
                .pinned("westus", 999_000)
                .held_by(&[1]),
        ],
        expect![[r#"
            manifest GET, no facts       affinity -> westus (read fallback 2)
            manifest GET, in eastus      affinity -> eastus (read fallback 2)
            manifest HEAD, in 1 and 3    affinity -> eastus (read fallback 2)
            blob GET, in westus          affinity -> westus (read fallback 2)
            blob GET, only in a down one affinity -> westus (read fallback 2)
            blob HEAD (push check)       affinity -> westus (read fallback 0)
            manifest PUT                 affinity -> westus (read fallback 0)
            pinned read, elsewhere       affinity -> eastus (read fallback 2)
        "#]],
    );
}
