//! The replication endpoints of the admin API (see `crate::replication`):
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/api/v1/replication` | backlog per destination, failures, lag percentiles |
//! | GET | `/api/v1/replication/{repository}?reference=TAG\|DIGEST` | per-region presence |
//! | POST | `/api/v1/replication/sync` | start a reconcile pass now |
//! | POST | `/api/v1/replication/notifications?region=NAME` | docker-registry notification events, or a Harbor webhook (token) |
//!
//! The notification endpoint is what a registry's `notifications.endpoints` in config.yml
//! points at, with `headers: {Authorization: [Bearer <admin token>]}`, or a Harbor project's
//! webhook (HTTP, "Default" or "CloudEvents" payload, auth header `Bearer <admin token>`): a
//! push that bypassed Berth replicates at once instead of at the next reconcile.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{error, Ctx};
use crate::replication::{unix_ms, Pushed, Replication};

pub(super) fn routes() -> Router<Ctx> {
    Router::new()
        .route("/api/v1/replication", get(overview))
        .route("/api/v1/replication/sync", post(sync))
        .route("/api/v1/replication/notifications", post(notifications))
        .route("/api/v1/replication/{*repository}", get(image))
}

fn replicator(ctx: &Ctx) -> Option<&Replication> {
    ctx.live.replication.get().map(|r| r.as_ref())
}

fn off() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "replication is off: add a [replication] section to the config",
    )
}

async fn overview(State(ctx): State<Ctx>) -> Response {
    match replicator(&ctx) {
        Some(r) => Json(r.overview()).into_response(),
        None => off(),
    }
}

#[derive(Deserialize)]
struct ImageQuery {
    reference: Option<String>,
}

async fn image(
    State(ctx): State<Ctx>,
    Path(repository): Path<String>,
    Query(q): Query<ImageQuery>,
) -> Response {
    let r = match replicator(&ctx) {
        Some(r) => r,
        None => return off(),
    };
    let reference = q.reference.unwrap_or_else(|| "latest".to_string());
    match r.image(&repository, &reference) {
        Some(v) => Json(v).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("{repository}:{reference} has not been seen by replication (pushed elsewhere? POST /api/v1/replication/sync)"),
        ),
    }
}

async fn sync(State(ctx): State<Ctx>) -> Response {
    match replicator(&ctx) {
        Some(r) => {
            r.sync();
            (StatusCode::ACCEPTED, Json(json!({"reconcile": "started"}))).into_response()
        }
        None => off(),
    }
}

#[derive(Deserialize)]
struct NotifyQuery {
    region: Option<String>,
}

async fn notifications(
    State(ctx): State<Ctx>,
    Query(q): Query<NotifyQuery>,
    Json(body): Json<serde_json::Value>,
) -> Response {
    let r = match replicator(&ctx) {
        Some(r) => r,
        None => return off(),
    };
    let Some(region) = q
        .region
        .filter(|n| ctx.live.snapshot.load().config.region_id(n).is_some())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "name the region that sends these events: ?region=NAME (a [[region]] name)",
        );
    };
    let (pushed, deleted) = if body.get("events").is_some() {
        (pushes(&body), deletes(&body))
    } else if let Some(ev) = harbor(&body, r.username_for(&region)) {
        ev
    } else {
        return error(
            StatusCode::BAD_REQUEST,
            "neither a distribution notification envelope ({\"events\": [...]}) nor a Harbor webhook payload (type PUSH_ARTIFACT / harbor.artifact.pushed ...)",
        );
    };
    let mut accepted = 0;
    for ev in pushed {
        r.pushed(Pushed {
            region: region.clone(),
            ..ev
        });
        accepted += 1;
    }
    for ev in deleted {
        r.deleted(Pushed {
            region: region.clone(),
            ..ev
        });
        accepted += 1;
    }
    Json(json!({ "accepted": accepted })).into_response()
}

/// The events of `action` in a notification envelope, not made by Berth itself.
fn events_of<'a>(
    body: &'a serde_json::Value,
    action: &'a str,
) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
    let events = body.get("events").and_then(|e| e.as_array());
    events
        .into_iter()
        .flatten()
        .filter(move |e| e.get("action").and_then(|a| a.as_str()) == Some(action))
        .filter(|e| {
            let agent = e["request"]["useragent"].as_str().unwrap_or_default();
            // Registries notify about Berth's own copies and deletes too: not new events.
            !agent.starts_with(crate::replication::registry::USER_AGENT)
        })
}

/// The manifest deletes in a notification envelope: action `delete` with a repository and a
/// digest (distribution sends neither a media type nor a URL with it). A blob deleted through
/// the API looks the same: its propagated DELETE finds no manifest and counts as done. The
/// tag events a manifest delete brings along (a tag, no digest) are left out: the digest's
/// delete removes its tags everywhere.
fn deletes(body: &serde_json::Value) -> Vec<Pushed> {
    events_of(body, "delete")
        .filter_map(|e| {
            let t = e.get("target")?;
            let media = t
                .get("mediaType")
                .and_then(|m| m.as_str())
                .unwrap_or("manifest");
            if !media.contains("manifest") && !media.contains("index") {
                return None;
            }
            let repo = t.get("repository")?.as_str()?.to_string();
            let digest = t.get("digest")?.as_str()?.to_string();
            Some(Pushed {
                repo,
                reference: digest.clone(),
                digest: Some(digest),
                region: String::new(),
                at_ms: unix_ms(),
            })
        })
        .collect()
}

/// The pushes and deletes in a Harbor webhook payload, "Default" (`type` PUSH_ARTIFACT,
/// `event_data`) or CloudEvents (`type` harbor.artifact.pushed, `data`): one per resource
/// (artifact digest, and its tag when it has one) of the repository `repo_full_name`. Other
/// event types (pulls, scans, quotas) carry nothing to copy. Events whose `operator` is the
/// account Berth copies to this region with (`own`) are Berth's own. `None`: not Harbor's.
fn harbor(body: &serde_json::Value, own: Option<&str>) -> Option<(Vec<Pushed>, Vec<Pushed>)> {
    let kind = body.get("type")?.as_str()?;
    let data = body.get("event_data").or_else(|| body.get("data"))?;
    let (push, delete) = match kind {
        "PUSH_ARTIFACT" | "harbor.artifact.pushed" => (true, false),
        "DELETE_ARTIFACT" | "harbor.artifact.deleted" => (false, true),
        _ => (false, false),
    };
    let operator = body.get("operator").and_then(|o| o.as_str());
    if !(push || delete) || (own.is_some() && operator == own) {
        return Some((vec![], vec![]));
    }
    let repo = data["repository"]["repo_full_name"].as_str()?.to_string();
    let events: Vec<Pushed> = data["resources"]
        .as_array()?
        .iter()
        .filter_map(|res| {
            let digest = res.get("digest")?.as_str()?.to_string();
            let reference = res
                .get("tag")
                .and_then(|t| t.as_str())
                .filter(|t| !t.is_empty() && !t.contains(':'))
                .map_or(digest.clone(), String::from);
            Some(Pushed {
                repo: repo.clone(),
                // A delete is of the artifact (its digest), whatever tag it had.
                reference: if delete { digest.clone() } else { reference },
                digest: Some(digest),
                region: String::new(),
                at_ms: unix_ms(),
            })
        })
        .collect();
    Some(if push {
        (events, vec![])
    } else {
        (vec![], events)
    })
}

/// The manifest pushes in a distribution notification envelope (`{"events": [...]}`):
/// action `push` with a manifest media type and a repository, not made by Berth itself.
fn pushes(body: &serde_json::Value) -> Vec<Pushed> {
    events_of(body, "push")
        .filter_map(|e| {
            let t = e.get("target")?;
            let media = t.get("mediaType")?.as_str()?;
            if !media.contains("manifest") && !media.contains("index") {
                return None;
            }
            let repo = t.get("repository")?.as_str()?.to_string();
            let digest = t.get("digest")?.as_str()?.to_string();
            let reference = t
                .get("tag")
                .and_then(|x| x.as_str())
                .map_or(digest.clone(), String::from);
            Some(Pushed {
                repo,
                reference,
                digest: Some(digest),
                region: String::new(),
                at_ms: unix_ms(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(events: &[Pushed]) -> Vec<(String, String, Option<String>)> {
        events
            .iter()
            .map(|e| (e.repo.clone(), e.reference.clone(), e.digest.clone()))
            .collect()
    }

    /// Harbor's two payload formats, as its documentation shows them: a push with a tag and
    /// one by digest, a delete, an event with nothing to copy, Berth's own copy, and a body
    /// that is not Harbor's.
    #[test]
    fn harbor_webhooks() {
        let d = "sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4";
        let default = json!({
            "type": "PUSH_ARTIFACT",
            "occur_at": 1680501893,
            "operator": "admin",
            "event_data": {
                "resources": [
                    {"digest": d, "tag": "1.0", "resource_url": "harbor.example/library/app:1.0"},
                    {"digest": d, "tag": d, "resource_url": "harbor.example/library/app@x"}
                ],
                "repository": {"name": "app", "namespace": "library",
                               "repo_full_name": "library/app", "repo_type": "private"}
            }
        });
        let (pushed, deleted) = harbor(&default, Some("berth")).unwrap();
        let app = || "library/app".to_string();
        assert_eq!(
            refs(&pushed),
            [
                (app(), "1.0".to_string(), Some(d.to_string())),
                (app(), d.to_string(), Some(d.to_string()))
            ]
        );
        assert!(deleted.is_empty());

        let cloud = json!({
            "specversion": "1.0",
            "type": "harbor.artifact.deleted",
            "operator": "admin",
            "data": {
                "resources": [{"digest": d, "tag": "1.0"}],
                "repository": {"repo_full_name": "library/app"}
            }
        });
        let (pushed, deleted) = harbor(&cloud, None).unwrap();
        assert!(pushed.is_empty());
        assert_eq!(
            refs(&deleted),
            [(app(), d.to_string(), Some(d.to_string()))]
        );

        let pulled = json!({"type": "PULL_ARTIFACT", "event_data": {}});
        assert_eq!(
            harbor(&pulled, None).map(|(p, d)| p.len() + d.len()),
            Some(0)
        );
        let mut own = default.clone();
        own["operator"] = json!("berth");
        assert_eq!(harbor(&own, Some("berth")).map(|(p, _)| p.len()), Some(0));
        assert!(harbor(&json!({"hello": 1}), None).is_none());
    }
}
