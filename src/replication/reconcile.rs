//! The periodic reconcile: list every region's repositories and tags, ask each region which
//! digest each tag names, and queue what differs. It catches what events missed: pushes that
//! bypassed Berth with no notification configured, events lost to a restart before they were
//! queued, jobs given up. [`plan`] is the pure comparison; [`pass`] the IO around it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{future, stream, StreamExt};

use super::queue::Job;
use super::{rules, unix_ms, Replication, SnapshotSource};
use crate::config::ReplicationRule;
use crate::snapshot::Snapshot;

/// What the regions said about one (repository, tag): region -> digest (None: not there).
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub repo: String,
    pub tag: String,
    pub digests: BTreeMap<String, Option<String>>,
}

/// One copy the comparison asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub repo: String,
    pub tag: String,
    pub digest: String,
    pub source: String,
    pub dest: String,
}

/// Compare. For each tag the rules take, the wanted digest is the one Berth last saw pushed
/// (`known`) when some region holds it, else the only digest any region holds; regions that
/// answered and lack it get a copy. Regions holding different digests with none known is a
/// conflict: reported, not resolved (which push is newer is not knowable from the registries).
pub fn plan(
    observed: &[Observed],
    rules: &[ReplicationRule],
    known: impl Fn(&str, &str) -> Option<String>,
) -> (Vec<Planned>, Vec<String>) {
    let mut out = vec![];
    let mut conflicts = vec![];
    for o in observed {
        let dests = rules::destinations(rules, &o.repo, Some(&o.tag));
        if dests.is_empty() {
            continue;
        }
        let held: BTreeSet<&String> = o.digests.values().flatten().collect();
        let want = match known(&o.repo, &o.tag) {
            Some(k) if held.contains(&k) => k,
            _ if held.len() == 1 => held
                .iter()
                .next()
                .map(|d| d.to_string())
                .unwrap_or_default(),
            _ if held.is_empty() => continue,
            _ => {
                conflicts.push(format!(
                    "{}:{} names different digests in different regions",
                    o.repo, o.tag
                ));
                continue;
            }
        };
        let Some(source) = o
            .digests
            .iter()
            .find(|(_, d)| d.as_ref() == Some(&want))
            .map(|(r, _)| r.clone())
        else {
            continue;
        };
        for d in dests {
            if let Some(here) = o.digests.get(&d) {
                if here.as_ref() != Some(&want) {
                    out.push(Planned {
                        repo: o.repo.clone(),
                        tag: o.tag.clone(),
                        digest: want.clone(),
                        source: source.clone(),
                        dest: d,
                    });
                }
            }
        }
    }
    (out, conflicts)
}

pub(super) async fn run_loop(
    live: SnapshotSource,
    r: Arc<Replication>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    // The first pass comes one period after start, not at once: the persisted queue carries
    // the work across a restart, and a fleet restarted together does not list every
    // registry at the same moment.
    let mut wait = live()
        .and_then(|s| s.config.replication.as_ref().map(|c| c.reconcile_every))
        .unwrap_or(Duration::from_secs(600));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = r.sync_now.notified() => {}
            _ = stop.changed() => return,
        }
        let Some(snap) = live() else { return };
        let Some(every) = snap.config.replication.as_ref().map(|c| c.reconcile_every) else {
            return;
        };
        wait = every;
        pass(&snap, &r).await;
    }
}

/// One reconcile pass over every region with an upstream.
pub(super) async fn pass(snap: &Snapshot, r: &Replication) {
    let Some(cfg) = snap.config.replication.as_ref() else {
        return;
    };
    let started = std::time::Instant::now();
    let regs: Vec<_> = snap
        .config
        .regions
        .iter()
        .filter_map(|g| r.registry(g))
        .collect();
    // Repositories per region; a region that cannot be listed is left out of this pass.
    let mut repos: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut reachable = vec![];
    for reg in &regs {
        match reg.catalog().await {
            Ok(list) => {
                reachable.push(reg.clone());
                for repo in list {
                    repos.entry(repo).or_default().insert(reg.region.clone());
                }
            }
            Err(e) => tracing::info!(error = %e, "reconcile: region skipped"),
        }
    }
    let mut observed = vec![];
    for (repo, holders) in &repos {
        let taken = cfg.rules.iter().any(|rule| rules::repo_taken(rule, repo));
        if !taken {
            continue;
        }
        observed.extend(observe(&reachable, repo, holders, cfg.concurrency).await);
    }
    let status = r.status();
    let (mut planned, conflicts) =
        plan(&observed, &cfg.rules, |repo, tag| status.resolve(repo, tag));
    // A manifest deleted in a region (through Berth or notified) is not copied back there.
    planned.retain(|p| !status.was_deleted(&p.repo, &p.digest, &p.dest));
    drop(status);
    for c in conflicts {
        tracing::warn!(conflict = %c, "reconcile");
    }
    let jobs = to_jobs(r, planned);
    drop_theirs_done(r, &jobs);
    tracing::info!(
        regions = reachable.len(),
        repositories = repos.len(),
        tags = observed.len(),
        jobs = jobs.len(),
        ms = started.elapsed().as_millis() as u64,
        "reconcile: pass done"
    );
    r.enqueue(jobs, &cfg.queue_file);
}

/// Cluster mode: a reconcile job another member owns, that this pass no longer plans, was
/// done by its owner; it leaves this instance's queue (it was kept for a take-over).
fn drop_theirs_done(r: &Replication, planned: &[super::queue::Job]) {
    let Some(cluster) = (r.cluster)() else { return };
    let keys: BTreeSet<(&str, &str, &str)> = planned
        .iter()
        .map(|j| (j.repo.as_str(), j.digest.as_str(), j.dest.as_str()))
        .collect();
    let dropped = r.queue().drop_waiting(|j| {
        j.pushed_at_ms.is_none()
            && !super::queue::should_run(Some(&cluster), j)
            && !keys.contains(&(j.repo.as_str(), j.digest.as_str(), j.dest.as_str()))
    });
    if dropped > 0 {
        tracing::debug!(
            dropped,
            "reconcile: jobs their owners finished left the queue"
        );
    }
}

/// The digest of every tag of `repo` in every reachable region: `in_flight` tags at once,
/// each asked of every region at once (one at a time, a pass over 50,000 tags at a 30 ms
/// round trip would take an hour and more). The order of the result is the tags' order.
async fn observe(
    regs: &[Arc<super::registry::Registry>],
    repo: &str,
    holders: &BTreeSet<String>,
    in_flight: usize,
) -> Vec<Observed> {
    let mut tags: BTreeSet<String> = BTreeSet::new();
    for reg in regs.iter().filter(|g| holders.contains(&g.region)) {
        if let Ok(t) = reg.tags(repo).await {
            tags.extend(t);
        }
    }
    stream::iter(tags)
        .map(|tag| async move {
            let lookups = regs.iter().map(|reg| {
                let tag = &tag;
                async move {
                    // A region that cannot say is left out of this tag's comparison.
                    let d = if holders.contains(&reg.region) {
                        reg.manifest_digest(repo, tag).await.ok()?
                    } else {
                        None
                    };
                    Some((reg.region.clone(), d))
                }
            });
            let digests = future::join_all(lookups)
                .await
                .into_iter()
                .flatten()
                .collect();
            Observed {
                repo: repo.to_string(),
                tag,
                digests,
            }
        })
        .buffered(in_flight.max(1))
        .collect()
        .await
}

fn to_jobs(r: &Replication, planned: Vec<Planned>) -> Vec<Job> {
    let mut s = r.status();
    planned
        .into_iter()
        .map(|p| {
            let dests = [p.dest.clone()].into_iter().collect();
            s.pushed(&p.repo, &p.digest, Some(&p.tag), &p.source, None, &dests);
            Job {
                tags: [p.tag].into_iter().collect(),
                not_before_ms: unix_ms(),
                ..Job::new(&p.repo, &p.digest, &p.source, p.dest)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(repo: &str, tag: &str, d: &[(&str, Option<&str>)]) -> Observed {
        Observed {
            repo: repo.into(),
            tag: tag.into(),
            digests: d
                .iter()
                .map(|(r, x)| (r.to_string(), x.map(String::from)))
                .collect(),
        }
    }

    fn all_to(regions: &[&str]) -> Vec<ReplicationRule> {
        vec![ReplicationRule {
            name: "all".into(),
            repositories: vec!["**".into()],
            exclude: vec!["private/**".into()],
            tags: vec!["*".into()],
            exclude_tags: vec![],
            to: regions.iter().map(|s| s.to_string()).collect(),
            webhooks: vec![],
            delete: false,
            bandwidth: None,
        }]
    }

    #[test]
    fn what_differs_is_copied_and_conflicts_are_reported() {
        let rules = all_to(&["a", "b", "c"]);
        let o = vec![
            obs(
                "app",
                "1",
                &[
                    ("a", Some("sha256:x")),
                    ("b", None),
                    ("c", Some("sha256:x")),
                ],
            ),
            obs(
                "app",
                "2",
                &[("a", Some("sha256:y")), ("b", Some("sha256:z"))],
            ),
            obs("private/k", "1", &[("a", Some("sha256:x")), ("b", None)]),
        ];
        let (p, c) = plan(&o, &rules, |_, _| None);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].source.as_str(), p[0].dest.as_str()), ("a", "b"));
        assert_eq!(c.len(), 1, "{c:?}");
        let (p, c) = plan(&o, &rules, |_, t| {
            (t == "2").then(|| "sha256:z".to_string())
        });
        assert!(c.is_empty());
        assert!(p
            .iter()
            .any(|x| x.tag == "2" && x.dest == "a" && x.source == "b"));
    }
}
