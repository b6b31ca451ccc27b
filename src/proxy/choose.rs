//! Where a request goes: a plain function over the snapshot and facts the phases gathered.
//!
//! [`choose`] is the proxy's selection, like the selector of pingora's load-balancer example:
//! no IO, no clock, no tables. The caller reads the request (client behind trusted proxies,
//! path, method), checks the upload token, looks up the affinity, reads the clock, and then
//! records what the choice says (the affinity, the upload session). Everything here is
//! table-tested in `tests/proxy_choose.rs`.
//!
//! The rule, in order:
//! - An upload request with a token goes to the token's region or nowhere: a forged or expired
//!   token, a region no longer configured, or a region that is down (unless the name fails
//!   open) is refused. A disabled region that is still healthy keeps its sessions (it drains).
//! - A repository request keeps its (client key, repository) affinity while that region is
//!   usable, or, if it was disabled but is still healthy, for one affinity period after the
//!   affinity began (a drain lets pushes finish where their blobs are). Otherwise the routing
//!   core decides, and the affinity moves there.
//! - Any other path goes where the routing core sends the client.
//! - A read (manifest GET/HEAD, blob GET) whose content replication knows to be in some
//!   regions (`Facts::holders`) and not in the region chosen so far goes to the nearest
//!   usable holder instead (the routing core's order with the other regions left out), so a
//!   pull right after a push elsewhere does not find a 404 first. Content replication has
//!   not seen keeps the 404 fallback.
//! - A read that every region it could try answered with 404, while a holder gave no answer
//!   or is down, gets 503 UNAVAILABLE ([`held_elsewhere`]): the content exists, and a 404
//!   would tell the client (and its retry logic) that it does not.

use std::net::IpAddr;

use http::Method;

use super::oci::Route;
use super::token::TokenError;
use crate::config::{RegionId, RoutedName};
use crate::expiring::Millis;
use crate::snapshot::Snapshot;

/// How the request's region was chosen; it decides what may happen on failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// Not chosen yet.
    None,
    /// A non-repository path: the client's region.
    Client,
    /// (client key, repository) affinity.
    Affinity,
    /// An upload session's token: that region or nothing.
    Session,
}

/// An answer Berth gives itself, in OCI error JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
}

pub fn refusal_of(
    status: u16,
    code: &'static str,
    message: impl Into<String>,
    detail: Option<String>,
) -> Refusal {
    Refusal {
        status,
        code,
        message: message.into(),
        detail,
    }
}

/// What the caller found out about the request before choosing.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// The client: the TCP peer, or the address a trusted proxy forwarded.
    pub client: IpAddr,
    /// The percent-decoded path, parsed.
    pub route: Route<'a>,
    pub method: &'a Method,
    /// For an upload request that carries a token: the token's region, or why it was refused
    /// (`token::Signer::verify`). None when there is no token to check.
    pub session: Option<Result<&'a str, TokenError>>,
    /// For a repository request: the region the (client key, repository) affinity names and
    /// since when it has, as the affinity table holds it now.
    pub affinity: Option<(&'a str, Millis)>,
    /// For a read: the regions replication knows hold the manifest or blob (None: nothing
    /// known, or replication is off).
    pub holders: Option<&'a [RegionId]>,
}

/// Where the request goes, and how that was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub binding: Binding,
    /// The region, or Berth's own answer.
    pub region: Result<RegionId, Refusal>,
    /// How many other regions a 404 read may still be retried on.
    pub read_fallback: usize,
    /// A read that may miss because replication lags (see [`held_elsewhere`]).
    pub read: bool,
}

/// The routed name the proxy serves, if the config has it.
pub fn routed(snap: &Snapshot) -> Option<&RoutedName> {
    snap.config.routed_names.get(snap.config.proxy.routed_name)
}

/// Choose the region for one request of `rn` at `now`. Pure: see the module comment.
pub fn choose(snap: &Snapshot, rn: &RoutedName, facts: &Facts, now: Millis) -> Choice {
    // Reads that may miss because replication lags. Not blob HEADs: that is how a push asks
    // what it must upload, and an answer from another region would make it skip an upload to
    // its own.
    let read = match facts.route {
        Route::Manifest { .. } => *facts.method == Method::GET || *facts.method == Method::HEAD,
        Route::Blob { .. } => *facts.method == Method::GET,
        _ => false,
    };
    let read_fallback = if read {
        snap.config.proxy.read_fallback_max
    } else {
        0
    };
    let (binding, region) = match (&facts.session, facts.route.repo()) {
        (Some(verdict), _) => (Binding::Session, session_region(snap, rn, verdict)),
        (None, Some(_)) => (
            Binding::Affinity,
            affinity_region(snap, rn, facts.affinity, now)
                .or_else(|| next_region(snap, rn, facts.client, &[]))
                .ok_or_else(|| no_region(rn)),
        ),
        (None, None) => (
            Binding::Client,
            next_region(snap, rn, facts.client, &[]).ok_or_else(|| no_region(rn)),
        ),
    };
    let region = match (read, facts.holders, region) {
        (true, Some(h), Ok(id)) if !h.is_empty() && !h.contains(&id) => {
            Ok(nearest_holder(snap, rn, facts.client, h).unwrap_or(id))
        }
        (_, _, r) => r,
    };
    Choice {
        binding,
        region,
        read_fallback,
        read,
    }
}

/// What a read answers when the last region it tried said 404, after the `earlier` attempts
/// (region, status; 0: no answer): a 503 when a region replication knows to hold the content
/// (`holders`) gave no answer in this request or is down; None keeps the 404. A holder that
/// is only disabled is not counted: the operator took it out of routing, and it did answer.
pub fn held_elsewhere(
    snap: &Snapshot,
    holders: &[RegionId],
    earlier: &[(RegionId, u16)],
) -> Option<Refusal> {
    let away: Vec<&str> = holders
        .iter()
        .filter(|&&h| {
            earlier.iter().any(|&(r, st)| r == h && st == 0)
                || snap.states.get(h).is_some_and(|s| !s.healthy)
        })
        .map(|&h| snap.config.regions[h].name.as_str())
        .collect();
    if away.is_empty() {
        return None;
    }
    Some(refusal_of(
        503,
        "UNAVAILABLE",
        "the content is in a region that cannot be reached now",
        Some(format!(
            "held by {}, which did not answer or is down; the regions that answered do not have it yet: try again",
            away.join(", ")
        )),
    ))
}

/// The routing core's pick among `holders` (the other regions left out), if one is usable.
fn nearest_holder(
    snap: &Snapshot,
    rn: &RoutedName,
    client: IpAddr,
    holders: &[RegionId],
) -> Option<RegionId> {
    let others: Vec<RegionId> = (0..snap.config.regions.len())
        .filter(|i| !holders.contains(i))
        .collect();
    next_region(snap, rn, client, &others)
}

/// An upload session lives in its token's region or nowhere.
fn session_region(
    snap: &Snapshot,
    rn: &RoutedName,
    verdict: &Result<&str, TokenError>,
) -> Result<RegionId, Refusal> {
    let name = match verdict {
        Ok(name) => *name,
        Err(e) => {
            return Err(refusal_of(
                404,
                "BLOB_UPLOAD_INVALID",
                "blob upload invalid",
                Some(e.to_string()),
            ))
        }
    };
    let unknown = |why: String| {
        refusal_of(
            404,
            "BLOB_UPLOAD_UNKNOWN",
            "blob upload unknown to registry",
            Some(format!("{why}; start the upload again")),
        )
    };
    let Some(id) = snap.config.region_id(name) else {
        return Err(unknown(format!(
            "the upload's region {name} is no longer configured"
        )));
    };
    // A disabled region drains: its sessions finish. Only a down one refuses them (unless
    // every region is down and the name fails open).
    let up = snap.states.get(id).is_some_and(|s| s.healthy) || snap.fail_open(rn);
    if !up {
        return Err(unknown(format!("the upload's region {name} is down")));
    }
    Ok(id)
}

/// The affinity's region, if the request may still go there.
fn affinity_region(
    snap: &Snapshot,
    rn: &RoutedName,
    affinity: Option<(&str, Millis)>,
    now: Millis,
) -> Option<RegionId> {
    let (name, since) = affinity?;
    let id = snap.config.region_id(name)?;
    let drain = snap.config.proxy.push_affinity.as_millis() as u64;
    let keep = rn.regions.contains(&id)
        && (usable(snap, rn, id)
            // Draining: a disabled region that is still healthy keeps the pushes already
            // pinned to it, for one affinity period, so they finish where their blobs are.
            || (snap.states.get(id).is_some_and(|s| s.healthy)
                && now.saturating_sub(since) < drain));
    keep.then_some(id)
}

fn no_region(rn: &RoutedName) -> Refusal {
    refusal_of(
        503,
        "UNAVAILABLE",
        "no region can serve this request",
        Some(format!("every region of {} is disabled or down", rn.name)),
    )
}

/// Can `id` be sent requests now: enabled and healthy, or any enabled one while the routed
/// name fails open.
pub fn usable(snap: &Snapshot, rn: &RoutedName, id: RegionId) -> bool {
    snap.states
        .get(id)
        .is_some_and(|s| s.enabled && (s.healthy || snap.fail_open(rn)))
}

/// The region the routing core picks for `client` when the regions in `exclude` are out:
/// the next one in the policy's order (latency order under `performance`).
pub fn next_region(
    snap: &Snapshot,
    rn: &RoutedName,
    client: IpAddr,
    exclude: &[RegionId],
) -> Option<RegionId> {
    let region = if exclude.is_empty() {
        snap.route_with(rn, client, None).decision.region
    } else {
        let mut states = snap.states.clone();
        for &id in exclude {
            if let Some(s) = states.get_mut(id) {
                s.enabled = false;
            }
        }
        snap.with_states(states)
            .route_with(rn, client, None)
            .decision
            .region
    }?;
    (!exclude.contains(&region) && usable(snap, rn, region)).then_some(region)
}
