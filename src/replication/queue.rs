//! The job queue: what is still to be copied where, persisted so a restart loses nothing.
//!
//! A job is one manifest (by digest, with the tags it should carry) of one repository, to
//! one destination region. Jobs are keyed by (repository, digest, destination): a second
//! event for the same content merges into the waiting job instead of adding work, which is
//! what bounds duplicate work inside one instance. The selection of ready jobs and the
//! bookkeeping are pure (time is a parameter); [`Queue::load`] and [`Queue::save`] are the IO.
//!
//! Single-instance mode keeps the queue in a local JSON file beside the admin state file and
//! a journal beside it (`<stem>.journal`): each save appends the jobs changed since the last
//! one (their whole state, or their removal) as JSON lines and syncs them, so a save costs
//! what changed, not the whole queue. Once the journal outgrows the queue file, the queue is
//! written whole again (temp file, fsync, rename, fsync of the directory) under a new
//! generation and the journal starts over; a journal of another generation than the file's
//! (a crash between the two writes) is stale and ignored. Several instances in front of the same replicas each keep their own
//! queue: copies are idempotent (same digest, same bytes; HEAD first), so the cost of running
//! a job twice is a few HEAD requests. In cluster mode [`should_run`] gives each job found by
//! reconcile to one live member.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::unix_ms;

/// One manifest to copy to one region, or (with `delete`) to delete there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: u64,
    pub repo: String,
    /// The manifest's digest; for a delete, the reference deleted (a digest, or a tag when
    /// the source registry deleted a tag).
    pub digest: String,
    /// Tags the destination should carry for this digest (the manifest is PUT once per tag;
    /// with none it is PUT by digest).
    #[serde(default)]
    pub tags: BTreeSet<String>,
    /// The region to copy from first (where it was pushed or found).
    pub source: String,
    pub dest: String,
    /// When the push completed (Unix ms), for the lag; None when found by reconcile.
    pub pushed_at_ms: Option<u64>,
    #[serde(default)]
    pub attempts: u32,
    /// Not to be started before (Unix ms): the backoff.
    #[serde(default)]
    pub not_before_ms: u64,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Delete the manifest at `dest` (a propagated delete) instead of copying it.
    #[serde(default)]
    pub delete: bool,
}

impl Job {
    /// A copy of `repo`@`digest` from `source` to `dest`, not tied to a push, due now.
    pub fn new(repo: &str, digest: &str, source: &str, dest: String) -> Job {
        Job {
            id: 0,
            repo: repo.to_string(),
            digest: digest.to_string(),
            tags: BTreeSet::new(),
            source: source.to_string(),
            dest,
            pushed_at_ms: None,
            attempts: 0,
            not_before_ms: 0,
            last_error: None,
            delete: false,
        }
    }
}

/// Should this instance run `job`? In single-instance mode (`cluster` None) every job is
/// ours. In cluster mode a job found by reconcile (every instance plans the same ones, from
/// the same registries) runs only on its owner among the live members: rendezvous hashing of
/// (repository, digest, destination) over the member names ([`crate::shared::owner`]). The
/// others keep it queued: when the owner dies its lease ends, it leaves the member list, and
/// ownership moves to the next member, which runs it (HEAD first, so if the dead owner had
/// finished it the take-over costs a few HEAD requests). A job from a push or a notification
/// (it has `pushed_at_ms`) is known only to the instance that received the event, so that
/// instance runs it. Duplicate work is thus bounded: in a stable membership each reconcile job
/// runs once per cluster; each membership change can run a job once more per instance whose
/// view of the members differs, and every repeat is idempotent (same digest, same bytes).
/// A member list that does not name this instance (its lease lapsed) still counts it, so
/// nothing stalls while etcd is away.
pub fn should_run(cluster: Option<&crate::shared::SharedState>, job: &Job) -> bool {
    let Some(s) = cluster else { return true };
    if job.pushed_at_ms.is_some() {
        return true;
    }
    let key = format!("{}@{}>{}", job.repo, job.digest, job.dest);
    let mut members: BTreeSet<&str> = s.members.keys().map(String::as_str).collect();
    members.insert(&s.instance);
    crate::shared::owner(members, &key) == Some(s.instance.as_str())
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct QueueFile {
    version: u32,
    next_id: u64,
    /// Which journal continues this file (0 in files from before the journal).
    #[serde(default)]
    generation: u64,
    jobs: Vec<Job>,
}

/// One line of the journal: its first names the generation, the others say a job's state
/// after a change or its removal. Replayed in order over the queue file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Entry<J> {
    Generation(u64),
    Put(J),
    Del(u64),
}

/// A change not yet written: the job's current state is what gets written.
#[derive(Debug, Clone, Copy)]
enum Change {
    Put(u64),
    Del(u64),
}

/// The journal is not rewritten into the queue file before it reaches this size, however
/// small the queue: a few jobs changing often are a few appends, not a rewrite each.
const JOURNAL_MIN_BYTES: u64 = 64 * 1024;

/// What is on disk: the queue file at `path` of `generation`, and its journal.
#[derive(Debug)]
struct Written {
    path: PathBuf,
    generation: u64,
    file_bytes: u64,
    journal_bytes: u64,
}

/// What makes two jobs the same work: (repository, digest, destination, delete).
type Key = (String, String, String, bool);

fn key(j: &Job, delete: bool) -> Key {
    (j.repo.clone(), j.digest.clone(), j.dest.clone(), delete)
}

/// The waiting and running jobs.
#[derive(Debug, Default)]
pub struct Queue {
    jobs: BTreeMap<u64, Job>,
    /// Jobs handed out and not finished.
    running: BTreeSet<u64>,
    /// The waiting job of each key: at most one, so an event merges into it in one lookup
    /// (a scan per event made queueing a reconcile's 30,000 jobs take 23 s under the lock).
    waiting: HashMap<Key, u64>,
    next_id: u64,
    /// Changes since the last save, in order.
    unsaved: Vec<Change>,
    /// None until the queue was loaded from or written to a file whose journal can be
    /// appended to; then the next save writes the whole queue.
    written: Option<Written>,
}

/// The journal beside a queue file: `<its stem>.journal`.
pub fn journal_path(queue: &Path) -> PathBuf {
    beside(queue, "journal")
}

/// A file beside the queue file, named `<its stem>.<suffix>`.
pub(super) fn beside(queue: &Path, suffix: &str) -> PathBuf {
    let stem = queue
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    queue.with_file_name(format!("{stem}.{suffix}"))
}

/// Why the queue file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot read the replication queue {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the replication queue {} is not valid ({message}); move it aside to start with an empty queue", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("the replication queue's journal {} is not valid ({message}); move it aside to start from the queue file alone (the changes since it was written are lost)", path.display())]
    Journal { path: PathBuf, message: String },
    #[error("cannot write the replication queue {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Queue {
    /// Add a job, or merge it into the waiting one for the same (repository, digest,
    /// destination, kind): its tags are added and it becomes due now. Returns whether a new
    /// job was added. A running job is not merged into (it copies the tags it was taken
    /// with): the new one waits for it. The latest word wins between a copy and a delete of
    /// the same content: a waiting job of the other kind is dropped.
    pub fn add(&mut self, mut job: Job) -> bool {
        if let Some(id) = self.waiting.remove(&key(&job, !job.delete)) {
            self.jobs.remove(&id);
            self.unsaved.push(Change::Del(id));
        }
        if let Some(j) = self
            .waiting
            .get(&key(&job, job.delete))
            .and_then(|id| self.jobs.get_mut(id))
        {
            j.tags.append(&mut job.tags);
            if j.pushed_at_ms.is_none() {
                j.pushed_at_ms = job.pushed_at_ms;
            }
            j.not_before_ms = j.not_before_ms.min(job.not_before_ms);
            self.unsaved.push(Change::Put(j.id));
            return false;
        }
        self.next_id += 1;
        job.id = self.next_id;
        self.unsaved.push(Change::Put(job.id));
        self.waiting.insert(key(&job, job.delete), job.id);
        self.jobs.insert(job.id, job);
        true
    }

    /// Jobs due at `now` and not running, at most `per_dest` running per destination,
    /// oldest first; they are marked running.
    /// `runs_here` is [`should_run`] with the current cluster view: jobs it refuses stay queued.
    pub fn take_ready(
        &mut self,
        now_ms: u64,
        per_dest: usize,
        runs_here: impl Fn(&Job) -> bool,
    ) -> Vec<Job> {
        let mut busy: BTreeMap<String, usize> = BTreeMap::new();
        for id in &self.running {
            if let Some(j) = self.jobs.get(id) {
                *busy.entry(j.dest.clone()).or_default() += 1;
            }
        }
        // A copy and a delete of the same content to the same region never run together
        // (the later one waits for the earlier), so they cannot finish in the wrong order.
        let mut busy_keys: BTreeSet<(&str, &str, &str)> = self
            .running
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .map(|j| (j.repo.as_str(), j.digest.as_str(), j.dest.as_str()))
            .collect();
        let mut out = vec![];
        for j in self.jobs.values() {
            if self.running.contains(&j.id) || j.not_before_ms > now_ms || !runs_here(j) {
                continue;
            }
            let k = (j.repo.as_str(), j.digest.as_str(), j.dest.as_str());
            if busy_keys.contains(&k) {
                continue;
            }
            let n = busy.entry(j.dest.clone()).or_default();
            if *n >= per_dest {
                continue;
            }
            *n += 1;
            busy_keys.insert(k);
            out.push(j.clone());
        }
        for j in &out {
            self.running.insert(j.id);
            self.waiting.remove(&key(j, j.delete));
        }
        out
    }

    /// The job is done (copied, or given up): it leaves the queue.
    pub fn finish(&mut self, id: u64) {
        self.running.remove(&id);
        if let Some(j) = self.jobs.remove(&id) {
            self.unwait(&j);
            self.unsaved.push(Change::Del(id));
        }
    }

    /// Forget `j` as its key's waiting job, if it is.
    fn unwait(&mut self, j: &Job) {
        let k = key(j, j.delete);
        if self.waiting.get(&k) == Some(&j.id) {
            self.waiting.remove(&k);
        }
    }

    /// The job failed: it waits until `not_before_ms` and counts the attempt. If an event
    /// queued the same work while it ran, that job takes its tags and it leaves; if the
    /// event was of the other kind (a delete after this copy, or the reverse), the latest
    /// word wins and it leaves.
    pub fn retry_later(&mut self, id: u64, not_before_ms: u64, error: &str) {
        self.running.remove(&id);
        let Some(mut j) = self.jobs.remove(&id) else {
            return;
        };
        let newer_same = self.waiting.get(&key(&j, j.delete)).copied();
        let newer_other = self.waiting.contains_key(&key(&j, !j.delete));
        if let Some(w) = newer_same.and_then(|w| self.jobs.get_mut(&w)) {
            w.tags.append(&mut j.tags);
            self.unsaved.push(Change::Put(w.id));
            self.unsaved.push(Change::Del(id));
            return;
        }
        if newer_other {
            self.unsaved.push(Change::Del(id));
            return;
        }
        j.attempts += 1;
        j.not_before_ms = not_before_ms;
        j.last_error = Some(error.to_string());
        self.waiting.insert(key(&j, j.delete), id);
        self.jobs.insert(id, j);
        self.unsaved.push(Change::Put(id));
    }

    /// Earliest time a waiting job this instance runs becomes due.
    pub fn next_due(&self, runs_here: impl Fn(&Job) -> bool) -> Option<u64> {
        self.jobs
            .values()
            .filter(|j| !self.running.contains(&j.id) && runs_here(j))
            .map(|j| j.not_before_ms)
            .min()
    }

    /// Jobs waiting or running per destination.
    pub fn depth(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for j in self.jobs.values() {
            *out.entry(j.dest.clone()).or_default() += 1;
        }
        out
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Drop the waiting jobs `stale` says are no longer needed (a reconcile job another
    /// member owns that the latest reconcile no longer plans: its owner has copied it).
    pub fn drop_waiting(&mut self, stale: impl Fn(&Job) -> bool) -> usize {
        let before = self.jobs.len();
        let running = &self.running;
        let unsaved = &mut self.unsaved;
        let waiting = &mut self.waiting;
        self.jobs.retain(|id, j| {
            let drop = !running.contains(id) && stale(j);
            if drop {
                let k = key(j, j.delete);
                if waiting.get(&k) == Some(id) {
                    waiting.remove(&k);
                }
                unsaved.push(Change::Del(*id));
            }
            !drop
        });
        before - self.jobs.len()
    }

    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values()
    }

    /// Load the queue file and replay its journal; a missing file is an empty queue. Jobs
    /// that were running when the process stopped are simply waiting again. A last journal
    /// line cut short (a crash in the middle of a save, which had not returned) is left out,
    /// and the next save writes the queue whole.
    pub fn load(path: &Path) -> Result<Queue, QueueError> {
        let parse_error = |path: &Path, message: String| QueueError::Parse {
            path: path.to_path_buf(),
            message,
        };
        let (f, file_bytes) = match read_if_there(path)? {
            None => (QueueFile::default(), 0),
            Some(text) => {
                let f: QueueFile =
                    serde_json::from_str(&text).map_err(|e| parse_error(path, e.to_string()))?;
                if f.version != 1 {
                    return Err(parse_error(
                        path,
                        format!("version {} is not supported (expected 1)", f.version),
                    ));
                }
                (f, text.len() as u64)
            }
        };
        let mut q = Queue {
            next_id: f.next_id,
            jobs: f.jobs.into_iter().map(|j| (j.id, j)).collect(),
            ..Queue::default()
        };
        let journal = journal_path(path);
        let mut appendable = None;
        if let Some(text) = read_if_there(&journal)? {
            let fits = replay(&mut q.jobs, &text, f.generation).map_err(|(line, message)| {
                QueueError::Journal {
                    path: journal.clone(),
                    message: format!("line {line}: {message}"),
                }
            })?;
            appendable = fits.then_some(text.len() as u64);
        }
        q.next_id = q.jobs.keys().copied().max().unwrap_or(0).max(q.next_id);
        // Every job waits after a restart; of two with one key (a file from before the
        // index), the later one is indexed and both run, one after the other.
        q.waiting = q.jobs.values().map(|j| (key(j, j.delete), j.id)).collect();
        q.written = appendable.map(|journal_bytes| Written {
            path: path.to_path_buf(),
            generation: f.generation,
            file_bytes,
            journal_bytes,
        });
        Ok(q)
    }

    /// Persist the changes since the last save: appended to the journal and synced, or, the
    /// first time, for another path, or once the journal outgrew the queue file, the whole
    /// queue written atomically under a new generation with a fresh journal. When this
    /// returns `Ok` a restart finds the queue as it is now.
    pub fn save(&mut self, path: &Path) -> Result<(), QueueError> {
        let write_error = |path: &Path, source| QueueError::Write {
            path: path.to_path_buf(),
            source,
        };
        let append = match &self.written {
            Some(w) => w.path == path && w.journal_bytes <= w.file_bytes.max(JOURNAL_MIN_BYTES),
            None => false,
        };
        if !append {
            return self.save_whole(path);
        }
        if self.unsaved.is_empty() {
            return Ok(());
        }
        let mut text = vec![];
        for change in &self.unsaved {
            let entry = match *change {
                Change::Put(id) => match self.jobs.get(&id) {
                    Some(j) => Entry::Put(j),
                    // Removed later: its Del follows.
                    None => continue,
                },
                Change::Del(id) => Entry::Del(id),
            };
            serde_json::to_writer(&mut text, &entry)
                .map_err(|e| write_error(path, std::io::Error::other(e)))?;
            text.push(b'\n');
        }
        let journal = journal_path(path);
        let appended = (|| {
            let mut f = std::fs::OpenOptions::new().append(true).open(&journal)?;
            f.write_all(&text)?;
            f.sync_data()
        })();
        match appended {
            Ok(()) => {
                self.unsaved.clear();
                if let Some(w) = &mut self.written {
                    w.journal_bytes += text.len() as u64;
                }
                Ok(())
            }
            Err(e) => {
                // Part of the text may be in the journal: write the queue whole next time.
                self.written = None;
                Err(write_error(&journal, e))
            }
        }
    }

    /// Write the whole queue under a new generation, then start its journal.
    fn save_whole(&mut self, path: &Path) -> Result<(), QueueError> {
        let write_error = |path: &Path, source| QueueError::Write {
            path: path.to_path_buf(),
            source,
        };
        // Unique across runs too (the clock): a journal an earlier run left, or one from
        // before the queue file was moved aside, never matches the new file.
        let generation = (self.written.as_ref().map_or(0, |w| w.generation) + 1).max(unix_ms());
        self.written = None;
        let f = QueueFile {
            version: 1,
            next_id: self.next_id,
            generation,
            jobs: self.jobs.values().cloned().collect(),
        };
        let file_bytes = write_atomically(path, &f).map_err(|e| write_error(path, e))?;
        // The queue is safe now whatever happens to the journal: with another generation
        // in it, it is ignored.
        self.unsaved.clear();
        let mut head = serde_json::to_vec(&Entry::<Job>::Generation(generation))
            .map_err(|e| write_error(path, std::io::Error::other(e)))?;
        head.push(b'\n');
        let journal = journal_path(path);
        write_atomically_bytes(&journal, &head).map_err(|e| write_error(&journal, e))?;
        self.written = Some(Written {
            path: path.to_path_buf(),
            generation,
            file_bytes,
            journal_bytes: head.len() as u64,
        });
        Ok(())
    }
}

/// Apply the journal `text` to `jobs` if it continues the queue file of `generation`.
/// `Ok(true)` when later saves may append to it; `Ok(false)` for a journal of another
/// generation (stale: not applied) or whose last line was cut short (left out); `Err` with
/// the line number for a line that cannot be read.
fn replay(
    jobs: &mut BTreeMap<u64, Job>,
    text: &str,
    generation: u64,
) -> Result<bool, (usize, String)> {
    let mut lines = text.split_inclusive('\n').enumerate();
    let read = |n: usize, line: &str| {
        serde_json::from_str::<Entry<Job>>(line).map_err(|e| (n + 1, e.to_string()))
    };
    // The first line is written whole (a rename), so a cut-short one is not possible.
    match lines.next() {
        Some((n, line)) => match read(n, line)? {
            Entry::Generation(g) if g == generation => {}
            Entry::Generation(_) => return Ok(false),
            _ => return Err((1, "the first line does not name a generation".into())),
        },
        None => return Ok(false),
    }
    for (n, line) in lines {
        if !line.ends_with('\n') {
            return Ok(false);
        }
        match read(n, line)? {
            Entry::Put(j) => {
                jobs.insert(j.id, j);
            }
            Entry::Del(id) => {
                jobs.remove(&id);
            }
            Entry::Generation(_) => return Err((n + 1, "a second generation line".into())),
        }
    }
    Ok(true)
}

/// A file's text, or None if it does not exist.
fn read_if_there(path: &Path) -> Result<Option<String>, QueueError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(QueueError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Write `f` as JSON to `path` atomically (temp file, fsync, rename, fsync of the
/// directory); how many bytes it wrote.
pub(super) fn write_atomically(path: &Path, f: &impl Serialize) -> std::io::Result<u64> {
    let text = serde_json::to_vec(f).map_err(std::io::Error::other)?;
    write_atomically_bytes(path, &text)?;
    Ok(text.len() as u64)
}

fn write_atomically_bytes(path: &Path, text: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(text)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(repo: &str, dest: &str, tag: &str) -> Job {
        Job {
            id: 0,
            repo: repo.into(),
            digest: "sha256:a".into(),
            tags: [tag.to_string()].into(),
            source: "westus".into(),
            dest: dest.into(),
            pushed_at_ms: Some(5),
            attempts: 0,
            not_before_ms: 0,
            last_error: None,
            delete: false,
        }
    }

    /// A delete replaces the waiting copy of the same content to the same region (and the
    /// other way round), never a running one; an old queue file without `delete` still loads.
    #[test]
    fn a_delete_replaces_the_waiting_copy() {
        let mut q = Queue::default();
        q.add(job("app", "eastus", "1"));
        q.add(job("app", "westus", "1"));
        let running = q.take_ready(0, 1, |j| j.dest == "westus");
        assert_eq!(running.len(), 1);
        for dest in ["eastus", "westus"] {
            q.add(Job {
                delete: true,
                tags: Default::default(),
                ..job("app", dest, "1")
            });
        }
        let kinds: Vec<(String, bool)> = q.jobs().map(|j| (j.dest.clone(), j.delete)).collect();
        assert_eq!(
            kinds,
            [
                ("westus".to_string(), false),
                ("eastus".to_string(), true),
                ("westus".to_string(), true)
            ]
        );
        let ready: Vec<(String, bool)> = q
            .take_ready(0, 4, |_| true)
            .into_iter()
            .map(|j| (j.dest, j.delete))
            .collect();
        assert_eq!(
            ready,
            [("eastus".to_string(), true)],
            "the delete to westus waits for the running copy"
        );
        q.add(job("app", "eastus", "1"));
        assert_eq!(
            q.jobs().filter(|j| j.dest == "eastus").count(),
            2,
            "the running delete stays"
        );
        let old = r#"{"version":1,"next_id":1,"jobs":[{"id":1,"repo":"a","digest":"sha256:a","source":"w","dest":"e","pushed_at_ms":null}]}"#;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.json");
        std::fs::write(&path, old).unwrap();
        assert!(!Queue::load(&path).unwrap().jobs().next().unwrap().delete);
    }

    #[test]
    fn same_content_merges_and_the_queue_survives_a_reload() {
        let mut q = Queue::default();
        assert!(q.add(job("app", "eastus", "1")));
        assert!(!q.add(job("app", "eastus", "latest")), "merged");
        assert!(q.add(job("app", "westeurope", "1")));
        assert_eq!(q.len(), 2);
        let ready = q.take_ready(0, 1, |_| true);
        assert_eq!(ready.len(), 2);
        assert_eq!(ready[0].tags.len(), 2);
        assert!(
            q.take_ready(0, 1, |_| true).is_empty(),
            "running jobs are not handed out twice"
        );
        q.retry_later(ready[0].id, 100, "connection refused");
        assert!(q.take_ready(99, 1, |_| true).is_empty());
        assert_eq!(q.next_due(|_| true), Some(100));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.json");
        q.save(&path).unwrap();
        let mut back = Queue::load(&path).unwrap();
        assert_eq!(back.len(), 2);
        let again = back.take_ready(100, 4, |_| true);
        assert_eq!(
            again.len(),
            2,
            "running jobs are waiting again after a restart"
        );
        assert_eq!(again[0].attempts, 1);
        back.finish(again[0].id);
        assert!(back.add(job("app", "x", "1")));
        assert!(
            back.jobs().all(|j| j.id != again[0].id)
                && back.jobs().map(|j| j.id).max() > Some(again[1].id)
        );
    }

    #[test]
    fn cluster_ownership() {
        use crate::shared::{Member, SharedState};
        let member = |name: &str| Member {
            instance: name.into(),
            version: "1".into(),
            config_hash: "h".into(),
            admin: None,
            started_ms: 0,
        };
        let view = |me: &str, members: &[&str]| {
            let mut s = SharedState::new(me, crate::config::HealthQuorum::Majority);
            s.members = members.iter().map(|m| (m.to_string(), member(m))).collect();
            s
        };
        let mut found = job("app", "eastus", "1");
        found.pushed_at_ms = None;
        let jobs: Vec<Job> = (0..40)
            .map(|i| Job {
                digest: format!("sha256:{i}"),
                ..found.clone()
            })
            .collect();
        // Single instance: every job is ours.
        assert!(jobs.iter().all(|j| should_run(None, j)));
        // Three live members: each reconcile job runs on exactly one, and all three take some.
        let names = ["a", "b", "c"];
        let views: Vec<SharedState> = names.iter().map(|n| view(n, &names)).collect();
        let mut per_member = [0; 3];
        for j in &jobs {
            let runners: Vec<usize> = (0..3).filter(|i| should_run(Some(&views[*i]), j)).collect();
            assert_eq!(runners.len(), 1, "{j:?}");
            per_member[runners[0]] += 1;
        }
        assert!(per_member.iter().all(|n| *n > 0), "{per_member:?}");
        // "c" dies: its jobs move to a or b, nobody else's move.
        let after: Vec<SharedState> = ["a", "b"].iter().map(|n| view(n, &["a", "b"])).collect();
        for j in &jobs {
            let before = (0..3).find(|i| should_run(Some(&views[*i]), j)).unwrap();
            let now: Vec<usize> = (0..2).filter(|i| should_run(Some(&after[*i]), j)).collect();
            assert_eq!(now.len(), 1);
            if before < 2 {
                assert_eq!(now[0], before, "only the dead member's jobs move");
            }
        }
        // A push's job runs where the push was heard, whoever owns its key.
        let pushed = job("app", "eastus", "1");
        assert!(views.iter().all(|v| should_run(Some(v), &pushed)));
        // The queue keeps a job another member owns, and does not hand it out.
        let mut q = Queue::default();
        let theirs = jobs
            .iter()
            .find(|j| !should_run(Some(&views[0]), j))
            .unwrap();
        q.add(theirs.clone());
        assert!(q
            .take_ready(u64::MAX, 4, |j| should_run(Some(&views[0]), j))
            .is_empty());
        assert_eq!(q.next_due(|j| should_run(Some(&views[0]), j)), None);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn a_bad_file_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.json");
        std::fs::write(&path, "{").unwrap();
        let e = Queue::load(&path).unwrap_err().to_string();
        assert!(e.contains("q.json") && e.contains("move it aside"), "{e}");
    }

    fn tags_of(q: &Queue) -> Vec<(bool, Vec<String>)> {
        q.jobs()
            .map(|j| (j.delete, j.tags.iter().cloned().collect()))
            .collect()
    }

    /// An event for content whose job is running is not merged into it (the run copies the
    /// tags it was taken with, and its end would drop the new tag): it waits for it. If the
    /// run fails, the waiting job takes its tags; if a delete came meanwhile, the failed
    /// copy leaves (the latest word wins).
    #[test]
    fn an_event_for_a_running_job_waits_for_it() {
        let mut q = Queue::default();
        q.add(job("app", "eastus", "1"));
        let first = q.take_ready(0, 4, |_| true);
        assert!(
            q.add(job("app", "eastus", "latest")),
            "a new job, not a merge"
        );
        assert!(
            q.take_ready(0, 4, |_| true).is_empty(),
            "not beside the running one"
        );
        q.finish(first[0].id);
        let second = q.take_ready(0, 4, |_| true);
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].tags, ["latest".to_string()].into());
        q.finish(second[0].id);
        assert!(q.is_empty());

        q.add(job("app", "eastus", "1"));
        let first = q.take_ready(0, 4, |_| true);
        q.add(job("app", "eastus", "latest"));
        q.retry_later(first[0].id, 0, "connection refused");
        assert_eq!(
            tags_of(&q),
            [(false, vec!["1".to_string(), "latest".to_string()])]
        );
        let merged = q.take_ready(0, 4, |_| true);
        q.add(Job {
            delete: true,
            tags: Default::default(),
            ..job("app", "eastus", "1")
        });
        q.retry_later(merged[0].id, 0, "connection refused");
        assert_eq!(
            tags_of(&q),
            [(true, vec![])],
            "the delete came later: it wins"
        );
    }

    fn on_disk(path: &Path) -> Vec<Job> {
        Queue::load(path).unwrap().jobs().cloned().collect()
    }

    fn in_memory(q: &Queue) -> Vec<Job> {
        q.jobs().cloned().collect()
    }

    /// Every save appends to the journal (the queue file stays as it is) until the journal
    /// outgrows it; whatever the mix of changes, a load finds the queue as it was saved.
    #[test]
    fn every_saved_change_survives_a_restart_through_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.json");
        let mut q = Queue::default();
        q.save(&path).unwrap();
        let first = std::fs::read(&path).unwrap();
        let mut x: u64 = 7;
        let mut rnd = |n: u64| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (x >> 33) % n
        };
        let mut rewrites = 0;
        let mut file = first.clone();
        for step in 0..3000 {
            let repo = format!("app{}", rnd(40));
            let dest = ["eastus", "westus", "westeurope"][rnd(3) as usize];
            match rnd(6) {
                0 | 1 => {
                    q.add(Job {
                        delete: rnd(5) == 0,
                        ..job(&repo, dest, &rnd(3).to_string())
                    });
                }
                2 => {
                    let ready = q.take_ready(u64::MAX, 2, |_| true);
                    if let Some(j) = ready.first() {
                        q.retry_later(j.id, rnd(1000), "connection refused");
                    }
                }
                3 => {
                    let ready = q.take_ready(u64::MAX, 2, |_| true);
                    if let Some(j) = ready.last() {
                        q.finish(j.id);
                    }
                }
                4 => {
                    q.drop_waiting(|j| j.repo == repo && j.dest == dest);
                }
                _ => {}
            }
            q.save(&path).unwrap();
            let now = std::fs::read(&path).unwrap();
            if now != file {
                rewrites += 1;
                file = now;
            }
            if step % 100 == 0 {
                assert_eq!(on_disk(&path), in_memory(&q), "step {step}");
            }
        }
        assert_eq!(on_disk(&path), in_memory(&q));
        let journal = std::fs::metadata(journal_path(&path)).unwrap().len();
        assert!(
            (2..=20).contains(&rewrites),
            "{rewrites} whole rewrites in 3000 saves"
        );
        assert!(journal <= JOURNAL_MIN_BYTES.max(file.len() as u64) + 4096);
        // The restarted queue goes on appending to the same journal.
        let mut back = Queue::load(&path).unwrap();
        back.add(job("after", "eastus", "1"));
        back.save(&path).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            file,
            "appended, not rewritten"
        );
        assert_eq!(on_disk(&path), in_memory(&back));
    }

    /// A crash in the middle of an append leaves a last line cut short: the load leaves it
    /// out (that save never returned) and the next save writes the queue whole. A journal of
    /// another generation (a crash between the queue file and its new journal) is ignored;
    /// a broken line before the end names the file and line.
    #[test]
    fn a_cut_short_or_stale_journal_and_a_broken_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.json");
        let journal = journal_path(&path);
        assert_eq!(journal, dir.path().join("q.journal"));
        // First start: neither file is there; the first save writes both.
        let mut q = Queue::load(&path).unwrap();
        q.add(job("app", "eastus", "1"));
        q.save(&path).unwrap();
        q.add(job("app", "westus", "1"));
        q.save(&path).unwrap();
        let saved = in_memory(&q);
        let good = std::fs::read_to_string(&journal).unwrap();
        assert_eq!(good.lines().count(), 2, "generation, one put: {good}");

        std::fs::write(&journal, format!("{good}{{\"put\":{{\"id\":9,")).unwrap();
        let mut back = Queue::load(&path).unwrap();
        assert_eq!(in_memory(&back), saved);
        back.add(job("app", "westeurope", "1"));
        back.save(&path).unwrap();
        assert_eq!(on_disk(&path), in_memory(&back));
        assert_eq!(
            std::fs::read_to_string(&journal).unwrap().lines().count(),
            1,
            "written whole: a fresh journal"
        );

        // The journal of another generation, deleting a job: not replayed.
        let fresh = std::fs::read_to_string(&journal).unwrap();
        assert!(fresh.starts_with("{\"generation\":") && !fresh.contains("\"generation\":1}"));
        std::fs::write(&journal, "{\"generation\":1}\n{\"del\":1}\n").unwrap();
        assert_eq!(on_disk(&path).len(), 3, "the stale journal is not replayed");
        // The control: the same line in the file's own journal is.
        std::fs::write(&journal, format!("{fresh}{{\"del\":1}}\n")).unwrap();
        assert_eq!(on_disk(&path).len(), 2);

        let broken = format!("{fresh}{{\"put\":1}}\n{{\"del\":1}}\n");
        std::fs::write(&journal, broken).unwrap();
        let e = Queue::load(&path).unwrap_err().to_string();
        assert!(e.contains("q.journal") && e.contains("line 2"), "{e}");
        assert!(
            e.contains("move it aside to start from the queue file"),
            "{e}"
        );
    }
}
