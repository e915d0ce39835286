//! The lineage index: one fingerprint per model in an embedded SQLite database (rusqlite's
//! bundled library, so nothing needs installing).
//!
//! Tables: `models` (path, size, modification time, file hashes, architecture, scale,
//! container, the sketch seed), `components` (exact and fp16-form component hashes), `rows`
//! (per row: label, component, parameter count, squared norm, and the count sketch as
//! little-endian f64 bytes). A fingerprint is `rows x 4096 x 8` bytes: 720 KB for SDXL's 22
//! rows, 900 KB for SD1's 28.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use crate::sketch::{BUCKETS, Fingerprint, RowSketch};
use ckpt_core::catalog::{Arch, Layout};

/// The database schema version this build reads and writes.
/// 2: the multiply-add-shift element hash (fingerprints of schema 1 hash differently).
const SCHEMA: i64 = 2;

/// Why the index cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("the index '{path}': {source}")]
    Db {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "the index '{path}' has schema {found}, this ckpt-diff reads schema {SCHEMA}: its \
         fingerprints cannot be compared with new ones"
    )]
    Schema { path: PathBuf, found: i64 },
    #[error("cannot create the index folder '{path}': {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the index knows of one model (without its sketch).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Record {
    pub path: String,
    pub name: String,
    pub bytes: u64,
    pub mtime: i64,
    /// File SHA-256 (lowercase hex); `None` for folders and sharded models.
    pub sha256: Option<String>,
    pub autov2: Option<String>,
    pub autov3: Option<String>,
    pub blake3: Option<String>,
    /// Its architecture (`None`: none this build knows; stored by id).
    #[serde(serialize_with = "arch_id")]
    pub arch: Option<Arch>,
    pub scale: u32,
    pub container: String,
    /// Component id -> (exact, fp16-form) BLAKE3.
    pub components: Vec<(String, String, String)>,
}

fn arch_id<S: serde::Serializer>(a: &Option<Arch>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(Record::arch_name(*a))
}

impl Record {
    /// An architecture as the index stores it: its id, or `unknown`.
    pub fn arch_name(arch: Option<Arch>) -> &'static str {
        arch.map_or(Layout::Generic, Layout::Known).id()
    }
}

/// An indexed model.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Entry {
    pub id: i64,
    #[serde(flatten)]
    pub record: Record,
}

/// What `add` stores for one model.
pub struct NewEntry {
    pub record: Record,
    /// The model toolkit's known components this model's metric matches ("the SD-v1 CLIP");
    /// shown by `lineage`, not stored.
    pub toolkit_matches: Vec<String>,
    pub fingerprint: Fingerprint,
}

/// An open index.
pub struct Index {
    path: PathBuf,
    db: Connection,
}

impl Index {
    /// Opens (creating it if needed) the index at `path`.
    pub fn open(path: &Path) -> Result<Index, IndexError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| IndexError::Folder {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let db_err = |source| IndexError::Db {
            path: path.to_path_buf(),
            source,
        };
        let db = Connection::open(path).map_err(db_err)?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER);
             CREATE TABLE IF NOT EXISTS models (
                 id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL, name TEXT NOT NULL,
                 bytes INTEGER NOT NULL, mtime INTEGER NOT NULL, sha256 TEXT, autov2 TEXT,
                 autov3 TEXT, blake3 TEXT, arch TEXT NOT NULL, scale INTEGER NOT NULL,
                 container TEXT NOT NULL, seed INTEGER NOT NULL, buckets INTEGER NOT NULL);
             CREATE INDEX IF NOT EXISTS models_sha ON models (sha256);
             CREATE TABLE IF NOT EXISTS components (
                 model INTEGER NOT NULL REFERENCES models (id) ON DELETE CASCADE,
                 component TEXT NOT NULL, exact TEXT NOT NULL, fp16 TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS rows (
                 model INTEGER NOT NULL REFERENCES models (id) ON DELETE CASCADE,
                 row INTEGER NOT NULL, label TEXT NOT NULL, component TEXT NOT NULL,
                 params INTEGER NOT NULL, norm2 REAL NOT NULL, sketch BLOB NOT NULL);
             CREATE INDEX IF NOT EXISTS rows_model ON rows (model);
             PRAGMA foreign_keys = ON;",
        )
        .map_err(db_err)?;
        let found: Option<i64> = db
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db_err)?;
        match found {
            None => {
                db.execute("INSERT INTO meta VALUES ('schema', ?1)", [SCHEMA])
                    .map_err(db_err)?;
            }
            Some(SCHEMA) => {}
            Some(found) => {
                return Err(IndexError::Schema {
                    path: path.to_path_buf(),
                    found,
                });
            }
        }
        Ok(Index {
            path: path.to_path_buf(),
            db,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: rusqlite::Error) -> IndexError {
        IndexError::Db {
            path: self.path.clone(),
            source,
        }
    }

    /// The entry for `path` if it is indexed with this size and modification time.
    pub fn unchanged(&self, path: &str, bytes: u64, mtime: i64) -> Result<bool, IndexError> {
        let n: i64 = self
            .db
            .query_row(
                "SELECT COUNT(*) FROM models WHERE path = ?1 AND bytes = ?2 AND mtime = ?3",
                params![path, bytes as i64, mtime],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    /// Stores an entry (replacing the one of the same path).
    pub fn add(&mut self, new: &NewEntry) -> Result<i64, IndexError> {
        let e = &new.record;
        let path = self.path.clone();
        let err = |source| IndexError::Db {
            path: path.clone(),
            source,
        };
        let tx = self.db.transaction().map_err(err)?;
        tx.execute("DELETE FROM models WHERE path = ?1", [&e.path])
            .map_err(err)?;
        tx.execute(
            "INSERT INTO models (path, name, bytes, mtime, sha256, autov2, autov3, blake3, arch,
                                 scale, container, seed, buckets)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                e.path,
                e.name,
                e.bytes as i64,
                e.mtime,
                e.sha256,
                e.autov2,
                e.autov3,
                e.blake3,
                Record::arch_name(e.arch),
                e.scale,
                e.container,
                crate::sketch::SEED as i64,
                BUCKETS as i64
            ],
        )
        .map_err(err)?;
        let id = tx.last_insert_rowid();
        for (c, exact, fp16) in &e.components {
            tx.execute(
                "INSERT INTO components VALUES (?1, ?2, ?3, ?4)",
                params![id, c, exact, fp16],
            )
            .map_err(err)?;
        }
        for (i, r) in new.fingerprint.rows.iter().enumerate() {
            let blob: Vec<u8> = r.sketch.iter().flat_map(|x| x.to_le_bytes()).collect();
            tx.execute(
                "INSERT INTO rows VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    id,
                    i as i64,
                    r.label,
                    r.component,
                    r.params as i64,
                    r.norm2,
                    blob
                ],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(id)
    }

    /// Every entry, in name order.
    pub fn entries(&self) -> Result<Vec<Entry>, IndexError> {
        let mut st = self
            .db
            .prepare(
                "SELECT id, path, name, bytes, mtime, sha256, autov2, autov3, blake3, arch, scale,
                        container FROM models ORDER BY name, path",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok(Entry {
                    id: r.get(0)?,
                    record: Record {
                        path: r.get(1)?,
                        name: r.get(2)?,
                        bytes: r.get::<_, i64>(3)? as u64,
                        mtime: r.get(4)?,
                        sha256: r.get(5)?,
                        autov2: r.get(6)?,
                        autov3: r.get(7)?,
                        blake3: r.get(8)?,
                        arch: Arch::parse(&r.get::<_, String>(9)?),
                        scale: r.get(10)?,
                        container: r.get(11)?,
                        components: Vec::new(),
                    },
                })
            })
            .map_err(|e| self.err(e))?;
        let mut out = rows
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        let mut st = self
            .db
            .prepare(
                "SELECT component, exact, fp16 FROM components WHERE model = ?1 ORDER BY component",
            )
            .map_err(|e| self.err(e))?;
        for e in &mut out {
            e.record.components = st
                .query_map([e.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(|x| self.err(x))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|x| self.err(x))?;
        }
        Ok(out)
    }

    /// The fingerprint of entry `id`.
    pub fn fingerprint(&self, id: i64) -> Result<Fingerprint, IndexError> {
        let mut st = self
            .db
            .prepare(
                "SELECT label, component, params, norm2, sketch FROM rows WHERE model = ?1
                 ORDER BY row",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([id], |r| {
                let blob: Vec<u8> = r.get(4)?;
                Ok(RowSketch {
                    label: r.get(0)?,
                    component: r.get(1)?,
                    params: r.get::<_, i64>(2)? as u64,
                    norm2: r.get(3)?,
                    sketch: blob
                        .chunks_exact(8)
                        .map(|c| f64::from_le_bytes(c.try_into().expect("8")))
                        .collect(),
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(Fingerprint { rows })
    }

    /// Removes the entries whose path or name is `what`; returns how many.
    pub fn remove(&mut self, what: &str) -> Result<usize, IndexError> {
        let n = self
            .db
            .execute("DELETE FROM models WHERE path = ?1 OR name = ?1", [what])
            .map_err(|e| self.err(e))?;
        Ok(n)
    }

    /// The database file's size in bytes.
    pub fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_round_trip_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let mut ix = Index::open(&dir.path().join("i.sqlite")).unwrap();
        let fp = Fingerprint {
            rows: vec![RowSketch {
                label: "IN00".into(),
                component: "unet".into(),
                params: 10,
                norm2: 2.5,
                sketch: (0..BUCKETS).map(|i| i as f64 * 0.5 - 3.0).collect(),
            }],
        };
        let e = NewEntry {
            record: Record {
                path: "/m/a.safetensors".into(),
                name: "a".into(),
                bytes: 100,
                mtime: 7,
                sha256: Some("ab".into()),
                autov2: None,
                autov3: None,
                blake3: None,
                arch: Arch::parse("sd1"),
                scale: 8,
                container: "safetensors".into(),
                components: vec![("unet".into(), "x".into(), "y".into())],
            },
            toolkit_matches: Vec::new(),
            fingerprint: fp.clone(),
        };
        let id = ix.add(&e).unwrap();
        assert_eq!(ix.fingerprint(id).unwrap(), fp);
        assert!(ix.unchanged("/m/a.safetensors", 100, 7).unwrap());
        assert!(!ix.unchanged("/m/a.safetensors", 100, 8).unwrap());
        ix.add(&e).unwrap();
        let all = ix.entries().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].record, e.record);
        assert_eq!(ix.remove("a").unwrap(), 1);
        assert!(ix.entries().unwrap().is_empty());
    }
}
