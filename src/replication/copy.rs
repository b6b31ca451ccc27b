//! The copy engine: one manifest (and everything it names) from a source region's registry to
//! a destination's. IO, in the order that keeps every replica consistent:
//! children of an index first, then blobs (HEAD first; a cross-repository mount when the
//! destination is known to hold the blob in another repository; else a streamed GET into a
//! monolithic PUT), and the manifest last, so no replica ever holds a manifest without its
//! blobs. Blobs flow through in chunks as they arrive: memory does not grow with their size.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt as _;
use sha2::Digest as _;

use super::bandwidth::Limiter;
use super::registry::{Registry, RegistryError};
use crate::proxy::oci;

/// What a finished copy found or moved.
#[derive(Debug, Default)]
pub struct Copied {
    /// Every blob digest the manifest (and its children) names: now present at the destination.
    pub blobs: Vec<String>,
    /// Bytes streamed (mounts and blobs already there count nothing).
    pub bytes: u64,
}

/// Shared by all copies: where each region is known to hold each blob (for mounts), and the
/// byte counter behind the metrics.
#[derive(Default)]
pub struct Engine {
    /// (region, blob digest) -> a repository holding it there.
    mount_hints: Mutex<HashMap<(String, String), String>>,
    pub bytes_copied: AtomicU64,
    /// Destination region -> its `bandwidth` bucket, shared by every copy to it.
    limiters: Mutex<HashMap<String, Arc<Limiter>>>,
}

/// One copy to do.
pub struct Task<'a> {
    pub src: &'a Registry,
    pub dst: &'a Registry,
    pub repo: &'a str,
    pub digest: &'a str,
    /// Tags to PUT the manifest under; empty: by digest.
    pub tags: Vec<String>,
    /// Blob copies in flight at once.
    pub concurrency: usize,
    /// The destination's bandwidth limit, if any ([`Engine::limiter`]).
    pub limit: Option<Arc<Limiter>>,
}

fn bad(region: &str, what: &str, message: String) -> RegistryError {
    RegistryError::Other {
        region: region.to_string(),
        what: what.to_string(),
        message,
    }
}

impl Engine {
    fn hint(&self, region: &str, digest: &str) -> Option<String> {
        self.mount_hints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(region.to_string(), digest.to_string()))
            .cloned()
    }

    fn remember(&self, region: &str, digest: &str, repo: &str) {
        let mut h = self.mount_hints.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: past a million entries start over (hints only save bytes, never correctness).
        if h.len() > 1_000_000 {
            h.clear();
        }
        h.insert((region.to_string(), digest.to_string()), repo.to_string());
    }

    /// The bucket of `region` at `rate` bytes per second (None: no limit). Kept across jobs so
    /// concurrent and successive copies to one region share it; a new rate (a reload) starts
    /// a new bucket.
    pub fn limiter(&self, region: &str, rate: Option<u64>) -> Option<Arc<Limiter>> {
        let mut m = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        let Some(rate) = rate else {
            m.remove(region);
            return None;
        };
        if let Some(l) = m.get(region).filter(|l| l.rate() == rate) {
            return Some(l.clone());
        }
        let l = Arc::new(Limiter::new(rate));
        m.insert(region.to_string(), l.clone());
        Some(l)
    }

    /// Copy `task.repo@task.digest` whole; Ok when the destination holds it under every tag.
    pub async fn copy(self: &Arc<Self>, task: &Task<'_>) -> Result<Copied, RegistryError> {
        let mut copied = Copied::default();
        self.copy_manifest(task, task.digest, &task.tags, &mut copied)
            .await?;
        Ok(copied)
    }

    fn copy_manifest<'a>(
        self: &'a Arc<Self>,
        task: &'a Task<'a>,
        digest: &'a str,
        tags: &'a [String],
        copied: &'a mut Copied,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), RegistryError>> + Send + 'a>>
    {
        Box::pin(async move {
            let (body, media_type) = task.src.get_manifest(task.repo, digest).await?;
            let hex: String = sha2::Sha256::digest(&body)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let actual = format!("sha256:{hex}");
            if digest.starts_with("sha256:") && actual != digest {
                return Err(bad(
                    &task.src.region,
                    "GET manifest",
                    format!("{digest} answered with content of {actual}"),
                ));
            }
            let refs = oci::references(&body).unwrap_or_default();
            // Already complete here (the registry refuses a manifest without its blobs, so a
            // manifest present means its blobs are): only tags may be missing.
            let present = task.dst.manifest_digest(task.repo, digest).await?.is_some();
            if !present {
                for child in &refs.manifests {
                    self.copy_manifest(task, child, &[], copied).await?;
                }
                self.copy_blobs(task, &refs.blobs, copied).await?;
            } else {
                for child in &refs.manifests {
                    self.child_blobs(task, child, copied).await;
                }
            }
            copied.blobs.extend(refs.blobs.iter().cloned());
            if tags.is_empty() && !present {
                task.dst
                    .put_manifest(task.repo, digest, body.clone(), &media_type)
                    .await?;
            }
            for tag in tags {
                let here = task.dst.manifest_digest(task.repo, tag).await?;
                if here.as_deref() != Some(digest) {
                    task.dst
                        .put_manifest(task.repo, tag, body.clone(), &media_type)
                        .await?;
                }
            }
            Ok(())
        })
    }

    /// The blobs of a child that is already present (for the status table's blob holders).
    async fn child_blobs(&self, task: &Task<'_>, child: &str, copied: &mut Copied) {
        if let Ok((body, _)) = task.src.get_manifest(task.repo, child).await {
            if let Some(r) = oci::references(&body) {
                copied.blobs.extend(r.blobs);
            }
        }
    }

    /// Copy the blobs, `task.concurrency` at a time.
    async fn copy_blobs(
        self: &Arc<Self>,
        task: &Task<'_>,
        blobs: &[String],
        copied: &mut Copied,
    ) -> Result<(), RegistryError> {
        // The futures are made first: a closure inside the stream would make this recursive
        // future's Send bound higher-ranked, which the compiler cannot prove.
        let copies: Vec<_> = blobs.iter().map(|d| self.copy_blob(task, d)).collect();
        let results: Vec<Result<u64, RegistryError>> = futures_util::stream::iter(copies)
            .buffer_unordered(task.concurrency.max(1))
            .collect()
            .await;
        for r in results {
            copied.bytes += r?;
        }
        Ok(())
    }

    /// One blob: HEAD, mount, or a streamed copy. Returns the bytes streamed.
    async fn copy_blob(&self, task: &Task<'_>, digest: &str) -> Result<u64, RegistryError> {
        let (src, dst, repo) = (task.src, task.dst, task.repo);
        if dst.has_blob(repo, digest).await? {
            self.remember(&dst.region, digest, repo);
            return Ok(0);
        }
        let hint = self
            .hint(&dst.region, digest)
            .filter(|from| from.as_str() != repo);
        let Some(location) = dst.start_upload(repo, digest, hint.as_deref()).await? else {
            self.remember(&dst.region, digest, repo);
            return Ok(0);
        };
        let blob = src.get_blob(repo, digest).await?;
        let counter = Arc::new(AtomicU64::new(0));
        let seen = counter.clone();
        let total = &self.bytes_copied;
        // Count as the chunks pass; the registry checks the digest of what it received.
        let stream = blob.response.bytes_stream().map(move |chunk| {
            if let Ok(c) = &chunk {
                seen.fetch_add(c.len() as u64, Ordering::Relaxed);
            }
            chunk
        });
        type Chunks = std::pin::Pin<
            Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send>,
        >;
        let body: Chunks = match task.limit.clone() {
            None => Box::pin(stream),
            // Each chunk waits for its tokens before it is handed to the PUT.
            Some(limit) => Box::pin(stream.then(move |chunk| {
                let limit = limit.clone();
                async move {
                    if let Ok(c) = &chunk {
                        limit.wait_for(c.len() as u64).await;
                    }
                    chunk
                }
            })),
        };
        let sent = dst.put_blob(&location, digest, blob.len, body).await;
        let n = counter.load(Ordering::Relaxed);
        total.fetch_add(n, Ordering::Relaxed);
        sent?;
        self.remember(&dst.region, digest, repo);
        Ok(n)
    }
}
