//! Operator state: each region's `endpoint_enabled` flag, persisted in a state file beside the
//! config so it survives restarts, crashes and reloads.
//!
//! Writes are atomic (temp file, fsync, rename, fsync of the directory): after a crash the file
//! holds either the old or the new state, never half of one. A failed write removes its temp
//! file; temp files a killed process left behind are removed by the next load or write. Flags for regions that are not in
//! the current config are kept, so a config edit that drops a region and brings it back does
//! not forget that the operator had disabled it. Each flag carries who set it, when, why, and
//! an optional expiry (a maintenance window: a disable with `until_ms` lapses by itself); the
//! same [`FlagRecord`] is what `crate::cluster` stores in etcd. Not here: what a flag does to
//! routing.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum FlagsError {
    #[error("cannot read state file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} is not valid: {message}; fix or remove it (it holds the operators' region flags)")]
    Parse { path: PathBuf, message: String },
    #[error("cannot write state file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    #[serde(default)]
    regions: BTreeMap<String, RegionFlags>,
    /// With `[cluster]` the file is this instance's copy of the shared flags, written as they
    /// change, and this is the etcd revision they were read at. An instance that starts while
    /// etcd is unreachable serves this copy (the last shared state it saw), never flags that
    /// were set locally only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shared_revision: Option<i64>,
}

/// One region's operator flag and its provenance. Version 1 state files written before the
/// provenance fields existed hold only `endpoint_enabled`: every other field is optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagRecord {
    pub endpoint_enabled: bool,
    /// Why, in the operator's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who: the name the operator gave, or the API client's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// When it was set, Unix time in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<u64>,
    /// A disable lapses at this Unix time (ms): the region counts as enabled from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
}

impl FlagRecord {
    /// A bare flag with no provenance (what older state files and tests hold).
    pub fn plain(enabled: bool) -> FlagRecord {
        FlagRecord {
            endpoint_enabled: enabled,
            reason: None,
            by: None,
            at_ms: None,
            until_ms: None,
        }
    }

    /// Is the region enabled at `now_ms`? A disable past its `until_ms` is over.
    pub fn enabled_at(&self, now_ms: u64) -> bool {
        self.endpoint_enabled || self.until_ms.is_some_and(|u| now_ms >= u)
    }
}

/// The effective flag of a region with record `rec` at `now_ms` (no record: enabled).
pub fn enabled_at(rec: Option<&FlagRecord>, now_ms: u64) -> bool {
    rec.is_none_or(|r| r.enabled_at(now_ms))
}

type RegionFlags = FlagRecord;

/// The flags and the file they live in.
#[derive(Debug, Clone)]
pub struct Flags {
    path: PathBuf,
    state: StateFile,
}

impl Flags {
    /// The default state file for a config: `demo.toml` -> `demo.state.json` beside it.
    pub fn default_path(config: &Path) -> PathBuf {
        let stem = config
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "berth".to_string());
        config.with_file_name(format!("{stem}.state.json"))
    }

    /// Load the flags; a missing file means every region is enabled.
    pub fn load(path: &Path) -> Result<Flags, FlagsError> {
        remove_stale_temps(path);
        Flags::read(path)
    }

    /// As [`Flags::load`] without touching the directory (`berth check-config`).
    pub fn read(path: &Path) -> Result<Flags, FlagsError> {
        let state = match std::fs::read_to_string(path) {
            Ok(text) => {
                let s: StateFile = serde_json::from_str(&text).map_err(|e| FlagsError::Parse {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
                if s.version != 1 {
                    return Err(FlagsError::Parse {
                        path: path.to_path_buf(),
                        message: format!("version {} is not supported (expected 1)", s.version),
                    });
                }
                s
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile {
                version: 1,
                ..StateFile::default()
            },
            Err(source) => {
                return Err(FlagsError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Ok(Flags {
            path: path.to_path_buf(),
            state,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_enabled(&self, region: &str) -> bool {
        self.state
            .regions
            .get(region)
            .is_none_or(|f| f.endpoint_enabled)
    }

    /// How many regions have a flag record (an operator set it at least once).
    pub fn recorded(&self) -> usize {
        self.state.regions.len()
    }

    /// The region's flag record, if an operator ever set one.
    pub fn record(&self, region: &str) -> Option<&FlagRecord> {
        self.state.regions.get(region)
    }

    /// Set a flag and persist it before returning; on a write error nothing changes.
    pub fn set(&mut self, region: &str, enabled: bool) -> Result<(), FlagsError> {
        self.set_record(region, FlagRecord::plain(enabled))
    }

    /// With `[cluster]`: keep the file as a copy of the shared flags read at `revision`
    /// (written only when they changed, fsynced like any flag change).
    pub fn mirror_shared(
        &mut self,
        flags: &BTreeMap<String, FlagRecord>,
        revision: i64,
    ) -> Result<(), FlagsError> {
        if self.state.shared_revision.is_some() && &self.state.regions == flags {
            return Ok(());
        }
        self.write(StateFile {
            version: 1,
            regions: flags.clone(),
            shared_revision: Some(revision),
        })
    }

    /// The copy of the shared flags and its revision, if the file is one
    /// ([`Flags::mirror_shared`]); `None` for flags set on this instance alone.
    pub fn shared_copy(&self) -> Option<(i64, &BTreeMap<String, FlagRecord>)> {
        Some((self.state.shared_revision?, &self.state.regions))
    }

    /// Set a flag with its provenance; persisted before returning, as [`Flags::set`].
    pub fn set_record(&mut self, region: &str, record: FlagRecord) -> Result<(), FlagsError> {
        let mut next = self.state.clone();
        next.regions.insert(region.to_string(), record);
        // A change made here alone: the file is no longer a copy of the shared state.
        next.shared_revision = None;
        self.write(next)
    }

    /// Persist `next`, then take it; on a write error nothing changes.
    fn write(&mut self, next: StateFile) -> Result<(), FlagsError> {
        write_atomically(&self.path, &next).map_err(|source| FlagsError::Write {
            path: self.path.clone(),
            source,
        })?;
        self.state = next;
        Ok(())
    }
}

fn dir_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// `.<state file name>.tmp-`: the prefix of every temp file a write of `path` creates.
fn temp_prefix(path: &Path) -> String {
    format!(
        ".{}.tmp-",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    )
}

/// Remove the temp files of processes that no longer run (killed in the middle of a write).
/// Best effort: a leftover is harmless to correctness, only clutter.
fn remove_stale_temps(path: &Path) {
    let prefix = temp_prefix(path);
    let Ok(entries) = std::fs::read_dir(dir_of(path)) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Removes the temp file when dropped, unless it was renamed into place.
struct TempFile<'a>(Option<&'a Path>);

impl Drop for TempFile<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn write_atomically(path: &Path, state: &StateFile) -> std::io::Result<()> {
    let dir = dir_of(path);
    let mut text = serde_json::to_string_pretty(state).map_err(std::io::Error::other)?;
    text.push('\n');
    remove_stale_temps(path);
    let tmp = dir.join(format!("{}{}", temp_prefix(path), std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    // From here on every failure (write, fsync, rename) removes the temp file.
    let mut guard = TempFile(Some(&tmp));
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    guard.0 = None;
    // The rename is durable only once the directory entry is.
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With `[cluster]` the file is a copy of the shared flags, reloaded as such; a flag set
    /// on this instance alone makes it local flags again (never served as shared state).
    #[test]
    fn a_copy_of_the_shared_flags_is_marked_and_a_local_set_unmarks_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.state.json");
        let mut f = Flags::load(&path).unwrap();
        assert!(f.shared_copy().is_none(), "an empty file is no copy");
        let shared = BTreeMap::from([("westus".to_string(), FlagRecord::plain(false))]);
        f.mirror_shared(&shared, 42).unwrap();
        let again = Flags::load(&path).unwrap();
        assert_eq!(again.shared_copy(), Some((42, &shared)));
        assert!(!again.is_enabled("westus"));
        let mut again = again;
        again.set("eastus", false).unwrap();
        assert!(Flags::load(&path).unwrap().shared_copy().is_none());
    }

    #[test]
    fn missing_file_means_all_enabled_and_set_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.state.json");
        let mut f = Flags::load(&path).unwrap();
        assert!(f.is_enabled("westus"));
        f.set("westus", false).unwrap();
        assert!(!f.is_enabled("westus"));
        let again = Flags::load(&path).unwrap();
        assert!(!again.is_enabled("westus"));
        assert!(again.is_enabled("eastus"));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temp files left behind: {names:?}");
    }

    #[test]
    fn provenance_and_expiry_persist_and_old_files_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        std::fs::write(
            &path,
            "{\"version\":1,\"regions\":{\"westus\":{\"endpoint_enabled\":false}}}",
        )
        .unwrap();
        let mut f = Flags::load(&path).unwrap();
        assert_eq!(f.record("westus"), Some(&FlagRecord::plain(false)));
        let rec = FlagRecord {
            endpoint_enabled: false,
            reason: Some("maintenance".into()),
            by: Some("ana".into()),
            at_ms: Some(1_000),
            until_ms: Some(5_000),
        };
        f.set_record("eastus", rec.clone()).unwrap();
        let again = Flags::load(&path).unwrap();
        assert_eq!(again.record("eastus"), Some(&rec));
        assert!(!enabled_at(again.record("eastus"), 4_999));
        assert!(enabled_at(again.record("eastus"), 5_000));
        assert!(!enabled_at(again.record("westus"), u64::MAX));
        assert!(enabled_at(again.record("nowhere"), 0));
    }

    #[test]
    fn default_path_is_beside_the_config() {
        assert_eq!(
            Flags::default_path(Path::new("config/demo.toml")),
            PathBuf::from("config/demo.state.json")
        );
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_a_silent_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        std::fs::write(
            &path,
            "{\"version\":1,\"regions\":{\"westus\":{\"endpoint_enabled\":",
        )
        .unwrap();
        let e = Flags::load(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("state file {} is not valid: EOF", path.display())),
            "{e}"
        );
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_failed_rename_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // The state file's path is taken by a directory: the rename fails.
        let path = dir.path().join("s.json");
        std::fs::create_dir(&path).unwrap();
        let mut f = Flags::load(&dir.path().join("other.json")).unwrap();
        f.path = path.clone();
        let e = f.set("westus", false).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("cannot write state file {}", path.display())
        );
        assert!(f.is_enabled("westus"));
        assert_eq!(names_in(dir.path()), ["s.json"]);
    }

    #[test]
    fn temp_files_of_killed_writers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        // As `kill -9` in the middle of a write leaves them: no process has these ids (above
        // the kernel's pid_max); another file's temp and unrelated names stay.
        for name in [
            ".s.json.tmp-4194305",
            ".s.json.tmp-4194306",
            ".t.json.tmp-4194305",
            ".s.json.tmp-x",
        ] {
            std::fs::write(dir.path().join(name), "{").unwrap();
        }
        let mut f = Flags::load(&path).unwrap();
        assert_eq!(
            names_in(dir.path()),
            [".s.json.tmp-x", ".t.json.tmp-4194305"]
        );
        std::fs::write(dir.path().join(".s.json.tmp-4194307"), "{").unwrap();
        f.set("westus", false).unwrap();
        assert_eq!(
            names_in(dir.path()),
            [".s.json.tmp-x", ".t.json.tmp-4194305", "s.json"]
        );
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let mut f = Flags::load(Path::new("/nonexistent-dir/x.json")).unwrap();
        let e = f.set("westus", false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot write state file /nonexistent-dir/x.json"
        );
        assert!(f.is_enabled("westus"));
    }
}
