//! The SQLite state of one profile: bases per pair, scan caches per replica, runs, the
//! journal, open conflicts. One file per profile, WAL mode.

use crate::entry::{Entry, Hash, Kind, StatId};
use crate::path::RelPath;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state database {0} holds a corrupt row: {1}")]
    Corrupt(String, String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

pub struct Store {
    conn: Connection,
    path: String,
}

/// A scan cache row: what a file looked like when it was last hashed.
#[derive(Clone, Debug)]
pub struct Cached {
    pub size: u64,
    pub mtime: i64,
    pub stat: StatId,
    pub hash: Hash,
}

/// A run as listed by `status` and `log`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunRow {
    pub id: String,
    pub kind: String,
    pub started: String,
    pub finished: Option<String>,
    pub status: String,
    pub summary: serde_json::Value,
}

/// An open conflict waiting for `resolve`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ConflictRow {
    pub pair: String,
    pub path: String,
    pub reason: String,
    pub run: String,
    pub a: Option<Entry>,
    pub b: Option<Entry>,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS replicas (name TEXT PRIMARY KEY, id TEXT NOT NULL, root TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS base (
  pair TEXT NOT NULL, path TEXT NOT NULL, kind TEXT NOT NULL, size INTEGER NOT NULL,
  mtime INTEGER NOT NULL, mode INTEGER NOT NULL, hash BLOB, link TEXT,
  PRIMARY KEY (pair, path)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS scan_cache (
  replica TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL, mtime INTEGER NOT NULL,
  dev INTEGER NOT NULL, ino INTEGER NOT NULL, ctime INTEGER NOT NULL, hash BLOB NOT NULL,
  PRIMARY KEY (replica, path)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
  id TEXT PRIMARY KEY, kind TEXT NOT NULL, started TEXT NOT NULL, finished TEXT,
  status TEXT NOT NULL, summary TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS journal (
  run TEXT NOT NULL, seq INTEGER NOT NULL, pair TEXT NOT NULL, path TEXT NOT NULL,
  action TEXT NOT NULL, detail TEXT NOT NULL, state TEXT NOT NULL,
  PRIMARY KEY (run, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conflicts (
  pair TEXT NOT NULL, path TEXT NOT NULL, reason TEXT NOT NULL, run TEXT NOT NULL,
  a TEXT, b TEXT, PRIMARY KEY (pair, path)) WITHOUT ROWID;
"#;

fn entry_from_row(
    kind: &str,
    size: i64,
    mtime: i64,
    mode: i64,
    hash: Option<Vec<u8>>,
    link: Option<String>,
) -> Option<Entry> {
    Some(Entry {
        kind: Kind::from_str(kind)?,
        size: size as u64,
        mtime,
        mode: mode as u32,
        hash: match hash {
            Some(h) => Some(Hash(h.try_into().ok()?)),
            None => None,
        },
        link,
        stat: None,
    })
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let label = path.display().to_string();
        let wrap = |source| StoreError::Sqlite {
            path: label.clone(),
            source,
        };
        let conn = Connection::open(path).map_err(wrap)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(wrap)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(wrap)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(wrap)?;
        conn.execute_batch(SCHEMA).map_err(wrap)?;
        Ok(Store { conn, path: label })
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// The replica id recorded for a replica name, if any.
    pub fn replica_id(&self, name: &str) -> Result<Option<(String, String)>> {
        self.conn
            .query_row(
                "SELECT id, root FROM replicas WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn set_replica_id(&self, name: &str, id: &str, root: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO replicas(name, id, root) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET id = excluded.id, root = excluded.root",
                params![name, id, root],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Whether any base row exists for the pair (i.e. the pair has been synced before).
    pub fn has_base(&self, pair: &str) -> Result<bool> {
        self.conn
            .query_row("SELECT 1 FROM base WHERE pair = ?1 LIMIT 1", [pair], |_| {
                Ok(())
            })
            .optional()
            .map(|o| o.is_some())
            .map_err(|e| self.err(e))
    }

    pub fn load_base(&self, pair: &str) -> Result<Vec<(RelPath, Entry)>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT path, kind, size, mtime, mode, hash, link FROM base WHERE pair = ?1",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([pair], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, Option<Vec<u8>>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (p, kind, size, mtime, mode, hash, link) = row.map_err(|e| self.err(e))?;
            let path = RelPath::new(&p)
                .map_err(|e| StoreError::Corrupt(self.path.clone(), e.to_string()))?;
            let e = entry_from_row(&kind, size, mtime, mode, hash, link)
                .ok_or_else(|| StoreError::Corrupt(self.path.clone(), format!("base row {p}")))?;
            out.push((path, e));
        }
        Ok(out)
    }

    pub fn base_entry(&self, pair: &str, path: &RelPath) -> Result<Option<Entry>> {
        self.conn
            .query_row(
                "SELECT kind, size, mtime, mode, hash, link FROM base WHERE pair = ?1 AND path = ?2",
                params![pair, path.as_str()],
                |r| {
                    Ok(entry_from_row(
                        &r.get::<_, String>(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )
            .optional()
            .map(Option::flatten)
            .map_err(|e| self.err(e))
    }

    pub fn load_cache(&self, replica: &str) -> Result<HashMap<String, Cached>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT path, size, mtime, dev, ino, ctime, hash FROM scan_cache WHERE replica = ?1",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([replica], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, Vec<u8>>(6)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = HashMap::new();
        for row in rows {
            let (p, size, mtime, dev, ino, ctime, hash) = row.map_err(|e| self.err(e))?;
            let Ok(hash) = hash.try_into() else { continue };
            out.insert(
                p,
                Cached {
                    size: size as u64,
                    mtime,
                    stat: StatId {
                        dev: dev as u64,
                        ino: ino as u64,
                        ctime,
                    },
                    hash: Hash(hash),
                },
            );
        }
        Ok(out)
    }

    /// Start a write batch; everything until `Batch::commit` is one transaction.
    pub fn batch(&mut self) -> Result<Batch<'_>> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction()
            .map_err(|source| StoreError::Sqlite { path, source })?;
        Ok(Batch {
            tx,
            path: self.path.clone(),
        })
    }

    pub fn runs(&self, limit: usize) -> Result<Vec<RunRow>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT id, kind, started, finished, status, summary FROM runs ORDER BY id DESC LIMIT ?1",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([limit as i64], |r| {
                Ok(RunRow {
                    id: r.get(0)?,
                    kind: r.get(1)?,
                    started: r.get(2)?,
                    finished: r.get(3)?,
                    status: r.get(4)?,
                    summary: serde_json::from_str(&r.get::<_, String>(5)?)
                        .unwrap_or(serde_json::Value::Null),
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// Runs that started but never finished (the process died).
    pub fn unfinished_runs(&self) -> Result<Vec<String>> {
        let mut st = self
            .conn
            .prepare("SELECT id FROM runs WHERE status = 'running' ORDER BY id")
            .map_err(|e| self.err(e))?;
        let rows = st.query_map([], |r| r.get(0)).map_err(|e| self.err(e))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// Journal items of a run that were planned but not confirmed done.
    pub fn pending_journal(&self, run: &str) -> Result<Vec<(String, String, String, String)>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT pair, path, action, detail FROM journal WHERE run = ?1 AND state = 'planned' ORDER BY seq",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([run], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    pub fn conflicts(&self) -> Result<Vec<ConflictRow>> {
        let mut st = self
            .conn
            .prepare("SELECT pair, path, reason, run, a, b FROM conflicts ORDER BY pair, path")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                let a: Option<String> = r.get(4)?;
                let b: Option<String> = r.get(5)?;
                Ok(ConflictRow {
                    pair: r.get(0)?,
                    path: r.get(1)?,
                    reason: r.get(2)?,
                    run: r.get(3)?,
                    a: a.and_then(|s| serde_json::from_str(&s).ok()),
                    b: b.and_then(|s| serde_json::from_str(&s).ok()),
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    pub fn get_meta(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }
}

/// One transaction of state changes.
pub struct Batch<'a> {
    tx: rusqlite::Transaction<'a>,
    path: String,
}

impl Batch<'_> {
    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    pub fn set_base(&self, pair: &str, path: &RelPath, e: &Entry) -> Result<()> {
        self.tx
            .prepare_cached(
                "INSERT OR REPLACE INTO base(pair, path, kind, size, mtime, mode, hash, link)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    pair,
                    path.as_str(),
                    e.kind.as_str(),
                    e.size as i64,
                    e.mtime,
                    e.mode as i64,
                    e.hash.map(|h| h.0.to_vec()),
                    e.link
                ])
            })
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn remove_base(&self, pair: &str, path: &RelPath) -> Result<()> {
        self.tx
            .prepare_cached("DELETE FROM base WHERE pair = ?1 AND path = ?2")
            .and_then(|mut st| st.execute(params![pair, path.as_str()]))
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn set_cache(&self, replica: &str, path: &RelPath, c: &Cached) -> Result<()> {
        self.tx
            .prepare_cached(
                "INSERT OR REPLACE INTO scan_cache(replica, path, size, mtime, dev, ino, ctime, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    replica,
                    path.as_str(),
                    c.size as i64,
                    c.mtime,
                    c.stat.dev as i64,
                    c.stat.ino as i64,
                    c.stat.ctime,
                    c.hash.0.to_vec()
                ])
            })
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn remove_cache(&self, replica: &str, path: &RelPath) -> Result<()> {
        self.tx
            .prepare_cached("DELETE FROM scan_cache WHERE replica = ?1 AND path = ?2")
            .and_then(|mut st| st.execute(params![replica, path.as_str()]))
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn start_run(&self, id: &str, kind: &str, started: &str) -> Result<()> {
        self.tx
            .execute(
                "INSERT INTO runs(id, kind, started, status) VALUES (?1, ?2, ?3, 'running')",
                params![id, kind, started],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn finish_run(
        &self,
        id: &str,
        finished: &str,
        status: &str,
        summary: &serde_json::Value,
    ) -> Result<()> {
        self.tx
            .execute(
                "UPDATE runs SET finished = ?2, status = ?3, summary = ?4 WHERE id = ?1",
                params![id, finished, status, summary.to_string()],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn journal(
        &self,
        run: &str,
        seq: usize,
        pair: &str,
        path: &RelPath,
        action: &str,
        detail: &str,
    ) -> Result<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO journal(run, seq, pair, path, action, detail, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'planned')",
            )
            .and_then(|mut st| {
                st.execute(params![
                    run,
                    seq as i64,
                    pair,
                    path.as_str(),
                    action,
                    detail
                ])
            })
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn journal_state(&self, run: &str, seq: usize, state: &str) -> Result<()> {
        self.tx
            .prepare_cached("UPDATE journal SET state = ?3 WHERE run = ?1 AND seq = ?2")
            .and_then(|mut st| st.execute(params![run, seq as i64, state]))
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn set_conflict(
        &self,
        pair: &str,
        path: &RelPath,
        reason: &str,
        run: &str,
        a: Option<&Entry>,
        b: Option<&Entry>,
    ) -> Result<()> {
        let js = |e: Option<&Entry>| e.map(|e| serde_json::to_string(e).unwrap_or_default());
        self.tx
            .execute(
                "INSERT OR REPLACE INTO conflicts(pair, path, reason, run, a, b) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![pair, path.as_str(), reason, run, js(a), js(b)],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Drop every recorded conflict of a pair (the run re-detects the ones still open).
    pub fn clear_conflicts(&self, pair: &str) -> Result<()> {
        self.tx
            .execute("DELETE FROM conflicts WHERE pair = ?1", [pair])
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn commit(self) -> Result<()> {
        let path = self.path.clone();
        self.tx
            .commit()
            .map_err(|source| StoreError::Sqlite { path, source })
    }
}
