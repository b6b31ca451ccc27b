//! The deletes reconcile must not undo, persisted beside the queue so a restart keeps them.
//!
//! With `delete = false` a manifest deleted in one region stays deleted there, and reconcile
//! must not copy it back from the others. The status table remembers which (repository,
//! digest) was deleted from which region until it is pushed again ([`super::status`]); this
//! file is that memory on disk: `<queue file stem>.deletes.json`, read once at start and
//! rewritten atomically when it changed, at most once a second and at shutdown (a crash loses
//! at most the last second of deletes, which a reconcile may then copy back).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One manifest deleted from some regions since it was last pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Removed {
    pub repository: String,
    pub digest: String,
    pub regions: BTreeSet<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeletesFile {
    version: u32,
    deletes: Vec<Removed>,
}

/// Why the deletes file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeletesError {
    #[error("cannot read the replication deletes file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the replication deletes file {} is not valid ({message}); move it aside to start without the remembered deletes (a reconcile may then copy deleted manifests back)", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("cannot write the replication deletes file {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where the deletes are kept for the queue file `queue`: `<dir>/<stem>.deletes.json`.
pub fn path_for(queue: &Path) -> PathBuf {
    super::queue::beside(queue, "deletes.json")
}

/// The remembered deletes; a missing file is none.
pub fn load(path: &Path) -> Result<Vec<Removed>, DeletesError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(source) => {
            return Err(DeletesError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let parse = |message: String| DeletesError::Parse {
        path: path.to_path_buf(),
        message,
    };
    let f: DeletesFile = serde_json::from_str(&text).map_err(|e| parse(e.to_string()))?;
    if f.version != 1 {
        return Err(parse(format!(
            "version {} is not supported (expected 1)",
            f.version
        )));
    }
    Ok(f.deletes)
}

/// Write the deletes atomically: after a crash the file holds the old list or the new one.
pub fn save(path: &Path, deletes: Vec<Removed>) -> Result<(), DeletesError> {
    let f = DeletesFile {
        version: 1,
        deletes,
    };
    super::queue::write_atomically(path, &f)
        .map(|_| ())
        .map_err(|source| DeletesError::Write {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn removed(repo: &str, regions: &[&str]) -> Removed {
        Removed {
            repository: repo.to_string(),
            digest: "sha256:aa".to_string(),
            regions: regions.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn deletes_survive_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("state.replication.json"));
        assert_eq!(path, dir.path().join("state.replication.deletes.json"));
        assert_eq!(load(&path).unwrap(), vec![], "no file: nothing remembered");
        let list = vec![
            removed("app", &["westus"]),
            removed("tool", &["eastus", "westus"]),
        ];
        save(&path, list.clone()).unwrap();
        assert_eq!(load(&path).unwrap(), list);
        save(&path, vec![]).unwrap();
        assert_eq!(load(&path).unwrap(), vec![]);
    }

    #[test]
    fn a_bad_file_names_itself_and_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.json");
        for (text, says) in [
            ("{", "EOF"),
            (r#"{"version": 2, "deletes": []}"#, "version 2"),
            (
                r#"{"version": 1, "deletes": [{"repository": "a"}]}"#,
                "missing field",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = load(&path).unwrap_err().to_string();
            assert!(
                e.contains("d.json") && e.contains(says) && e.contains("move it aside"),
                "{e}"
            );
        }
    }
}
