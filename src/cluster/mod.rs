//! `[cluster]`: Berth instances sharing operator flags, health verdicts and membership
//! through etcd, so that they answer as one system.
//!
//! One task per instance ([`run`]) keeps a session with etcd: a lease (the instance's
//! membership and verdicts live under it, so they vanish when it dies), a full read of the
//! prefix, then a watch from the revision after it. Everything read goes into
//! [`Live::apply_shared`], the same control road flags and health verdicts take, which
//! publishes a fresh snapshot: the DNS and proxy hot paths read that snapshot as before and
//! never wait on etcd. The task also publishes this instance's own probe verdicts (when
//! [`Live::local_health_changed`] fires) and keeps the lease alive.
//!
//! When etcd is unreachable the last shared state keeps serving (never the local state
//! file), `berth_cluster_connected` is 0, an event says so, and operator changes are
//! refused ([`Handle::set_flag`], a 503 in the API); the session is rebuilt with a full
//! read when etcd answers again, so a change made meanwhile is applied at once.
//!
//! [`crate::shared`] holds the pure part: key layout, the health quorum, rendezvous ownership.

use std::sync::{Arc, Weak};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};

use crate::config::ClusterConfig;
use crate::flags::FlagRecord;
use crate::live::{Live, SharedUpdate};
use crate::shared::{flag_key, member_key, verdict_key, Member, Verdict};

/// How long one etcd request may take before the instance counts etcd as unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between two connection attempts.
const RETRY: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "etcd is unreachable from this instance: the change was not made (it would apply to \
         this instance only); retry when `berth cluster status` shows connected"
    )]
    Disconnected,
    #[error("etcd did not take the change ({0}): it was not made on any instance; retry")]
    Etcd(String),
}

/// This instance's writer into etcd, used by the admin API.
pub struct Handle {
    config: ClusterConfig,
    /// The live session's client; `None` while disconnected.
    client: std::sync::Mutex<Option<Client>>,
    live: Weak<Live>,
}

#[async_trait::async_trait]
impl crate::live::SharedWriter for Handle {
    async fn set_flag(&self, region: &str, record: FlagRecord) -> Result<(), String> {
        Handle::set_flag(self, region, record)
            .await
            .map_err(|e| e.to_string())
    }
}

impl Handle {
    fn client(&self) -> Option<Client> {
        self.client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_client(&self, c: Option<Client>) {
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = c;
    }

    /// Write a region's flag to etcd for every instance; applied here at once too (the watch
    /// brings the same record back). Refused while etcd is unreachable.
    pub async fn set_flag(&self, region: &str, record: FlagRecord) -> Result<(), ClusterError> {
        let connected = self
            .live
            .upgrade()
            .and_then(|l| l.shared())
            .is_some_and(|s| s.connected);
        let Some(mut client) = self.client().filter(|_| connected) else {
            return Err(ClusterError::Disconnected);
        };
        let value = serde_json::to_vec(&record).map_err(|e| ClusterError::Etcd(e.to_string()))?;
        let key = flag_key(&self.config.prefix, region);
        let put = client.put(key.clone(), value.clone(), None);
        let resp = match tokio::time::timeout(REQUEST_TIMEOUT, put).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(ClusterError::Etcd(e.to_string())),
            Err(_) => return Err(ClusterError::Disconnected),
        };
        let revision = resp.header().map_or(0, |h| h.revision());
        if let Some(live) = self.live.upgrade() {
            live.share_flag_event(region, &record);
            live.apply_shared(SharedUpdate::Changes {
                revision,
                changes: vec![(key, Some(value))],
            });
        }
        Ok(())
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }
}

async fn connect(cfg: &ClusterConfig) -> Result<Client, anyhow::Error> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(1), REQUEST_TIMEOUT);
    if let (Some(user), Some(pw)) = (&cfg.user, &cfg.password) {
        let pw = pw
            .read("etcd password", "connecting without a password")?
            .unwrap_or_default();
        opts = opts.with_user(user.clone(), pw);
    }
    if cfg.ca_file.is_some() || cfg.identity.is_some() {
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                anyhow::anyhow!("cannot read cluster.ca_file {}: {e}", ca.display())
            })?;
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(pem));
        }
        if let Some(id) = &cfg.identity {
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
            };
            tls = tls.identity(etcd_client::Identity::from_pem(
                read(&id.cert_file)?,
                read(&id.key_file)?,
            ));
        }
        opts = opts.with_tls(tls);
    }
    let (endpoints, errors) = reachable(&cfg.etcd, &opts).await;
    anyhow::ensure!(
        !endpoints.is_empty(),
        "no etcd endpoint answers: {}",
        errors.join("; ")
    );
    let c = tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(&endpoints, Some(opts)))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no answer from {} within {:?}",
                cfg.etcd.join(", "),
                REQUEST_TIMEOUT
            )
        })??;
    Ok(c)
}

/// The endpoints that answer a status request now, and why each other one did not. The
/// client balances requests over the endpoints it is given; with a dead member among them a
/// share of requests would wait for their timeout, so a session uses only the members that
/// answer (the next session, after any error, looks again).
async fn reachable(endpoints: &[String], opts: &ConnectOptions) -> (Vec<String>, Vec<String>) {
    let mut probes = tokio::task::JoinSet::new();
    for (i, e) in endpoints.iter().enumerate() {
        let (e, opts) = (e.clone(), opts.clone());
        probes.spawn(async move {
            let r = tokio::time::timeout(PROBE_TIMEOUT, async {
                let mut c = Client::connect([e.as_str()], Some(opts)).await?;
                c.status().await
            })
            .await;
            let why = match r {
                Ok(Ok(_)) => None,
                Ok(Err(err)) => Some(etcd_error(&err)),
                Err(_) => Some(format!("no answer within {PROBE_TIMEOUT:?}")),
            };
            (i, why)
        });
    }
    let mut why: Vec<Option<String>> = vec![Some("not probed".to_string()); endpoints.len()];
    while let Some(r) = probes.join_next().await {
        if let Ok((i, w)) = r {
            why[i] = w;
        }
    }
    let mut up = Vec::new();
    let mut errors = Vec::new();
    for (e, w) in endpoints.iter().zip(why) {
        match w {
            None => up.push(e.clone()),
            Some(w) => errors.push(format!("{e}: {w}")),
        }
    }
    (up, errors)
}

/// An etcd client error with its causes (a TLS failure is only named by its source).
fn etcd_error(err: &etcd_client::Error) -> String {
    let mut out = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// How long one endpoint may take to answer [`reachable`]'s status request.
const PROBE_TIMEOUT: Duration = Duration::from_millis(700);

/// Start the cluster task for `live` (whose config has `[cluster]`); it runs until
/// `stop` turns true. Returns the handle the admin API writes through.
pub fn start(
    live: &Arc<Live>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Option<(Arc<Handle>, tokio::task::JoinHandle<()>)> {
    let snap = live.snapshot.load_full();
    let cfg = snap.config.cluster.clone()?;
    let member = Member {
        instance: cfg.instance.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        config_hash: crate::shared::config_hash(&snap.config),
        admin: snap.config.admin.listen.map(|a| a.to_string()),
        started_ms: crate::live::unix_ms(),
    };
    let handle = Arc::new(Handle {
        config: cfg,
        client: std::sync::Mutex::new(None),
        live: Arc::downgrade(live),
    });
    let _ = live
        .cluster
        .set(handle.clone() as Arc<dyn crate::live::SharedWriter>);
    let task = tokio::spawn(run(handle.clone(), member, stop));
    Some((handle, task))
}

/// Keep a session with etcd until `stop`; after each loss, say so and try again.
async fn run(
    handle: Arc<Handle>,
    mut member: Member,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let why = tokio::select! {
            r = session(&handle, &member) => match r {
                Ok(()) => return,
                Err(e) => crate::report(e.as_ref()),
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        handle.set_client(None);
        match handle.live.upgrade() {
            Some(live) => live.apply_shared(SharedUpdate::Disconnected(why.clone())),
            None => return,
        }
        tracing::debug!(error = %why, "etcd session ended; retrying");
        if let Some(live) = handle.live.upgrade() {
            member.admin = live
                .snapshot
                .load()
                .config
                .admin
                .listen
                .map(|a| a.to_string());
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One session: lease, membership, full read, then watch and keep-alive until an error.
/// Returns `Ok` only when the instance is gone.
async fn session(handle: &Handle, member: &Member) -> Result<(), anyhow::Error> {
    let cfg = &handle.config;
    let mut client = connect(cfg).await?;
    let ttl = cfg.lease_ttl.as_secs().max(2) as i64;
    let lease = timed(client.lease_grant(ttl, None)).await?.id();
    let me = serde_json::to_vec(member)?;
    timed(client.put(
        member_key(&cfg.prefix, &cfg.instance),
        me,
        Some(PutOptions::new().with_lease(lease)),
    ))
    .await?;
    let Some(live) = handle.live.upgrade() else {
        return Ok(());
    };
    let mut published = publish_verdicts(&mut client, cfg, lease, &live, None).await?;
    let prefix = format!("{}/", cfg.prefix);
    let all = timed(client.get(prefix.clone(), Some(GetOptions::new().with_prefix()))).await?;
    let revision = all.header().map_or(0, |h| h.revision());
    let events_prefix = events_prefix(&cfg.prefix);
    let (event_kvs, kvs): (Vec<_>, Vec<_>) = all
        .kvs()
        .iter()
        .filter_map(|kv| {
            Some((
                kv.key_str().ok()?.to_string(),
                kv.mod_revision(),
                kv.value().to_vec(),
            ))
        })
        .partition(|(k, _, _)| k.starts_with(&events_prefix));
    let kvs = kvs.into_iter().map(|(k, _, v)| (k, v)).collect();
    let mut watch = timed(
        client.watch(
            prefix,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1)
                    .with_progress_notify(),
            ),
        ),
    )
    .await?;
    let (mut keeper, mut acks) = timed(client.lease_keep_alive(lease)).await?;
    live.apply_shared(SharedUpdate::Resync { revision, kvs });
    live.apply_shared(SharedUpdate::Events {
        replace: true,
        puts: event_kvs,
        deletes: Vec::new(),
    });
    handle.set_client(Some(client.clone()));
    drop(live);
    let mut beat = tokio::time::interval(Duration::from_secs((ttl as u64 / 3).max(1)));
    let mut last_ack = tokio::time::Instant::now();
    let mut outbox = tokio::time::interval(EVENTS_EVERY);
    loop {
        let Some(live) = handle.live.upgrade() else {
            return Ok(());
        };
        tokio::select! {
            msg = watch.message() => {
                let msg = msg?.ok_or_else(|| anyhow::anyhow!("etcd closed the watch"))?;
                if msg.canceled() {
                    anyhow::bail!("etcd cancelled the watch: {}", msg.cancel_reason());
                }
                let revision = msg.header().map_or(0, |h| h.revision());
                let (changes, puts, deletes) = split_watched(&msg, &events_prefix);
                if !changes.is_empty() {
                    live.apply_shared(SharedUpdate::Changes { revision, changes });
                }
                if !puts.is_empty() || !deletes.is_empty() {
                    live.apply_shared(SharedUpdate::Events { replace: false, puts, deletes });
                }
            }
            _ = beat.tick() => {
                if last_ack.elapsed() > cfg.lease_ttl {
                    anyhow::bail!("no lease keep-alive answer for {:?}", cfg.lease_ttl);
                }
                timed(keeper.keep_alive()).await?;
            }
            ack = acks.message() => {
                let ack = ack?.ok_or_else(|| anyhow::anyhow!("etcd closed the lease keep-alive stream"))?;
                if ack.ttl() <= 0 {
                    anyhow::bail!("the instance's lease expired");
                }
                last_ack = tokio::time::Instant::now();
            }
            _ = outbox.tick() => write_events(&mut client, cfg, &live).await?,
            _ = live.local_health_changed.notified() => {
                published = publish_verdicts(&mut client, cfg, lease, &live, Some(&published)).await?;
            }
        }
    }
}

/// A watch message's changes: (key, value or `None` for a delete) outside the events list,
/// and the events list's puts (key, mod revision, value) and deleted keys.
#[allow(clippy::type_complexity)]
fn split_watched(
    msg: &etcd_client::WatchResponse,
    events_prefix: &str,
) -> (
    Vec<(String, Option<Vec<u8>>)>,
    Vec<(String, i64, Vec<u8>)>,
    Vec<String>,
) {
    let (mut changes, mut puts, mut deletes) = (Vec::new(), Vec::new(), Vec::new());
    for ev in msg.events() {
        let Some(kv) = ev.kv() else { continue };
        let Ok(key) = kv.key_str() else { continue };
        let key = key.to_string();
        match (ev.event_type(), key.starts_with(events_prefix)) {
            (EventType::Put, true) => puts.push((key, kv.mod_revision(), kv.value().to_vec())),
            (EventType::Delete, true) => deletes.push(key),
            (EventType::Put, false) => changes.push((key, Some(kv.value().to_vec()))),
            (EventType::Delete, false) => changes.push((key, None)),
        }
    }
    (changes, puts, deletes)
}

/// How often the session writes this instance's new events to the shared list.
const EVENTS_EVERY: Duration = Duration::from_millis(200);

fn events_prefix(prefix: &str) -> String {
    format!("{prefix}/events/")
}

/// Write this instance's new events under `P/events/` (keys sort by time, then instance),
/// then delete the oldest beyond `events_max`. An event leaves the outbox only once etcd took
/// it, so events seen while etcd was unreachable are written when it answers again.
async fn write_events(
    client: &mut Client,
    cfg: &ClusterConfig,
    live: &Live,
) -> Result<(), anyhow::Error> {
    let pending = live.events_to_share();
    if pending.is_empty() {
        return Ok(());
    }
    let prefix = events_prefix(&cfg.prefix);
    let mut written = Vec::new();
    for e in &pending {
        let key = format!("{prefix}{:020}-{}-{:012}", e.at_ms, cfg.instance, e.seq);
        let put = timed(client.put(key, serde_json::to_vec(e)?, None)).await;
        if let Err(err) = put {
            live.events_shared(&written);
            return Err(err);
        }
        written.push(e.seq);
    }
    live.events_shared(&written);
    let count = timed(client.get(
        prefix.clone(),
        Some(GetOptions::new().with_prefix().with_count_only()),
    ))
    .await?
    .count();
    let excess = count - cfg.events_max as i64;
    if excess > 0 {
        let oldest = timed(
            client.get(
                prefix.clone(),
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_keys_only()
                        .with_sort(etcd_client::SortTarget::Key, etcd_client::SortOrder::Ascend)
                        .with_limit(excess),
                ),
            ),
        )
        .await?;
        if let Some(last) = oldest.kvs().last() {
            let mut end = last.key().to_vec();
            end.push(0);
            timed(client.delete(
                prefix,
                Some(etcd_client::DeleteOptions::new().with_range(end)),
            ))
            .await?;
        }
    }
    Ok(())
}

/// Put this instance's probe verdicts that differ from `before` under its lease.
async fn publish_verdicts(
    client: &mut Client,
    cfg: &ClusterConfig,
    lease: i64,
    live: &Live,
    before: Option<&std::collections::BTreeMap<String, Verdict>>,
) -> Result<std::collections::BTreeMap<String, Verdict>, anyhow::Error> {
    let now: std::collections::BTreeMap<String, Verdict> = live
        .local_health()
        .into_iter()
        .map(|(region, h)| {
            (
                region,
                Verdict {
                    healthy: h.healthy,
                    state: h.state.to_string(),
                    last_error: h.last_error,
                },
            )
        })
        .collect();
    for (region, v) in &now {
        if before.and_then(|b| b.get(region)) == Some(v) {
            continue;
        }
        timed(client.put(
            verdict_key(&cfg.prefix, &cfg.instance, region),
            serde_json::to_vec(v)?,
            Some(PutOptions::new().with_lease(lease)),
        ))
        .await?;
    }
    Ok(now)
}

/// An etcd request with [`REQUEST_TIMEOUT`].
async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, anyhow::Error> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => anyhow::bail!("etcd did not answer within {REQUEST_TIMEOUT:?}"),
    }
}

/// How long start-up waits for the first read of the shared state.
const FIRST_SYNC: Duration = Duration::from_secs(10);

/// Keep `/readyz` at 503 ("cluster: etcd not reached yet") until the shared state was read
/// once: an instance that started without etcd answers with every region enabled, so a load
/// balancer should not send it traffic before then.
pub async fn ready_when_synced(live: Weak<Live>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let Some(l) = live.upgrade() else { return };
        if l.shared().is_some_and(|s| s.connected) {
            l.metrics.workers.cluster_synced(true);
            return;
        }
        drop(l);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Wait until the cluster task has read the shared state once, or [`FIRST_SYNC`] passed:
/// then Berth starts with its copy of the shared flags ([`Live::serve_shared_copy`]), or
/// with every region enabled when it has none, and says so: `berth_cluster_connected` 0, an
/// event, and `/readyz` 503 until etcd answers ([`ready_when_synced`]).
pub async fn wait_first_sync(live: &Live) {
    let end = tokio::time::Instant::now() + FIRST_SYNC;
    while !live.shared().is_some_and(|s| s.connected) {
        if tokio::time::Instant::now() > end {
            match live.serve_shared_copy() {
                Some(revision) => tracing::warn!(
                    "etcd did not answer within {FIRST_SYNC:?}: serving the shared flags as last \
                     seen (revision {revision}, from the state file), /readyz 503, until it does"
                ),
                None => tracing::warn!(
                    "etcd did not answer within {FIRST_SYNC:?} and this instance has no copy of \
                     the shared flags: every region enabled, /readyz 503, until it does"
                ),
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
