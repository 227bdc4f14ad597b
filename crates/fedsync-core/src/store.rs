//! The SQLite state of one profile: bases per pair, scan caches per replica, runs, the
//! journal, open conflicts. One file per profile, WAL mode.

use crate::entry::{Entry, Hash, Kind, StatId};
use crate::path::RelPath;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

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
    /// The database file (None for an in-memory database).
    file: Option<PathBuf>,
}

/// A scan cache row: what a file looked like when it was last hashed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cached {
    pub size: u64,
    pub mtime: i64,
    pub stat: StatId,
    pub hash: Hash,
}

impl Cached {
    /// The cache row for a scanned or written file, if it is safe to trust next time: a file
    /// with a hash and inode identity, last modified before `trusted_before` (ns).
    pub fn of(e: &Entry, trusted_before: i64) -> Option<Cached> {
        match (e.hash, e.stat) {
            (Some(hash), Some(stat)) if e.is_file() && e.mtime < trusted_before => Some(Cached {
                size: e.size,
                mtime: e.mtime,
                stat,
                hash,
            }),
            _ => None,
        }
    }
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

const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS replicas (name TEXT PRIMARY KEY, id TEXT NOT NULL, root TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pairs (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS base_snap (pair INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS base_delta (
  pair INTEGER NOT NULL, path TEXT NOT NULL, entry BLOB,
  PRIMARY KEY (pair, path)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS scan_cache (replica TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS cache_delta (
  replica TEXT NOT NULL, path TEXT NOT NULL, data BLOB,
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
CREATE TABLE IF NOT EXISTS base_alias (
  pair INTEGER NOT NULL, path TEXT NOT NULL, alias TEXT NOT NULL, hash BLOB NOT NULL,
  size INTEGER NOT NULL, PRIMARY KEY (pair, path, alias)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS base_content (
  pair INTEGER NOT NULL, path TEXT NOT NULL, hash TEXT NOT NULL, data BLOB NOT NULL,
  PRIMARY KEY (pair, path));
"#;

/// Entries are stored compactly: kind, size, mtime, mode, optional hash, optional link.
fn encode_entry(out: &mut Vec<u8>, e: &Entry) {
    out.push(match e.kind {
        Kind::File => 0,
        Kind::Dir => 1,
        Kind::Symlink => 2,
    });
    out.extend_from_slice(&e.size.to_le_bytes());
    out.extend_from_slice(&e.mtime.to_le_bytes());
    out.extend_from_slice(&e.mode.to_le_bytes());
    match &e.hash {
        Some(h) => {
            out.push(1);
            out.extend_from_slice(&h.0);
        }
        None => out.push(0),
    }
    match &e.link {
        Some(l) => {
            out.extend_from_slice(&(l.len() as u32 + 1).to_le_bytes());
            out.extend_from_slice(l.as_bytes());
        }
        None => out.extend_from_slice(&0u32.to_le_bytes()),
    }
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (h, t) = b.split_at(n);
    *b = t;
    Some(h)
}

fn u64_(b: &mut &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(take(b, 8)?.try_into().ok()?))
}

fn u32_(b: &mut &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(take(b, 4)?.try_into().ok()?))
}

fn decode_entry(b: &mut &[u8]) -> Option<Entry> {
    let kind = match take(b, 1)?[0] {
        0 => Kind::File,
        1 => Kind::Dir,
        2 => Kind::Symlink,
        _ => return None,
    };
    let size = u64_(b)?;
    let mtime = u64_(b)? as i64;
    let mode = u32_(b)?;
    let hash = match take(b, 1)?[0] {
        1 => Some(Hash(take(b, 32)?.try_into().ok()?)),
        _ => None,
    };
    let link = match u32_(b)? {
        0 => None,
        n => Some(String::from_utf8(take(b, n as usize - 1)?.to_vec()).ok()?),
    };
    Some(Entry {
        kind,
        size,
        mtime,
        mode,
        hash,
        link,
        stat: None,
    })
}

/// A snapshot blob: a magic tag, then per row the path (length-prefixed) and its record.
fn encode_rows<T>(magic: &[u8; 4], rows: &[(RelPath, T)], record: fn(&mut Vec<u8>, &T)) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * 100 + 4);
    out.extend_from_slice(magic);
    for (p, r) in rows {
        let ps = p.as_str().as_bytes();
        out.extend_from_slice(&(ps.len() as u32).to_le_bytes());
        out.extend_from_slice(ps);
        record(&mut out, r);
    }
    out
}

fn encode_base(rows: &[(RelPath, Entry)]) -> Vec<u8> {
    encode_rows(b"FSB1", rows, encode_entry)
}

/// A base snapshot (see [`encode_base`]) read from a stream, through [`BaseRows`].
#[cfg(test)]
fn decode_base_from(r: impl std::io::Read) -> Option<Vec<(RelPath, Entry)>> {
    let mut rows = BaseRows::new(std::io::BufReader::new(r));
    let out: Vec<_> = rows.by_ref().collect();
    (!rows.corrupt).then_some(out)
}

/// The rows of a base snapshot, decoded one at a time from a stream. A damaged snapshot
/// ends the rows early and sets `corrupt` (the caller must check it).
struct BaseRows<R> {
    r: R,
    started: bool,
    done: bool,
    corrupt: bool,
    /// A row that straddles the reader's buffer, gathered.
    rec: Vec<u8>,
}

impl<R: std::io::BufRead> BaseRows<R> {
    fn new(r: R) -> BaseRows<R> {
        BaseRows {
            r,
            started: false,
            done: false,
            corrupt: false,
            rec: Vec::with_capacity(128),
        }
    }

    /// One row; `Ok(None)` at a clean end, `Err(())` on damage.
    fn row(&mut self) -> std::result::Result<Option<(RelPath, Entry)>, ()> {
        let r = &mut self.r;
        if !self.started {
            self.started = true;
            let mut magic = [0u8; 4];
            r.read_exact(&mut magic).map_err(|_| ())?;
            if &magic != b"FSB1" {
                return Err(());
            }
        }
        // Most rows lie whole in the reader's buffer: decoded in place, with no copy.
        let buf = r.fill_buf().map_err(|_| ())?;
        if buf.is_empty() {
            return Ok(None);
        }
        if let Some((row, used)) = base_row_in(buf)? {
            r.consume(used);
            return Ok(Some(row));
        }
        // The row runs past the buffer's end: gather it, a buffer at a time, and decode it
        // the same way.
        let rec = &mut self.rec;
        rec.clear();
        loop {
            let buf = r.fill_buf().map_err(|_| ())?;
            if buf.is_empty() {
                return Err(()); // ends mid-row
            }
            let (before, n) = (rec.len(), buf.len());
            rec.extend_from_slice(buf);
            if let Some((row, used)) = base_row_in(rec)? {
                r.consume(used - before);
                return Ok(Some(row));
            }
            r.consume(n);
        }
    }
}

/// One snapshot row at the start of `b` and the bytes it takes; `Ok(None)` when the row
/// runs past the end of `b` (the caller reads on), `Err` when it is damaged.
#[allow(clippy::type_complexity)]
fn base_row_in(b: &[u8]) -> std::result::Result<Option<((RelPath, Entry), usize)>, ()> {
    let word = |at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    let Some(plen) = word(0) else {
        return Ok(None);
    };
    let rec = 4 + plen;
    // kind, size, mtime, mode, hash flag; the hash; the link length; the link.
    let Some(&flag) = b.get(rec + 21) else {
        return Ok(None);
    };
    let at = rec + 22 + if flag == 1 { 32 } else { 0 };
    let Some(link) = word(at) else {
        return Ok(None);
    };
    let end = at + 4 + link.saturating_sub(1);
    if end > b.len() {
        return Ok(None);
    }
    let path = std::str::from_utf8(&b[4..rec]).map_err(|_| ())?;
    let path = RelPath::new(path).map_err(|_| ())?;
    let mut r = &b[rec..end];
    let e = decode_entry(&mut r).ok_or(())?;
    if !r.is_empty() {
        return Err(());
    }
    Ok(Some(((path, e), end)))
}

impl<R: std::io::BufRead> Iterator for BaseRows<R> {
    type Item = (RelPath, Entry);
    fn next(&mut self) -> Option<(RelPath, Entry)> {
        if self.done {
            return None;
        }
        match self.row() {
            Ok(Some(row)) => Some(row),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(()) => {
                self.done = true;
                self.corrupt = true;
                None
            }
        }
    }
}

/// Base rows in path order: a snapshot's rows with the per-path changes since it merged in
/// (a change replaces the row of its path; `None` removes it).
fn merge_base<'a>(
    snap: impl Iterator<Item = (RelPath, Entry)> + 'a,
    deltas: Vec<(RelPath, Option<Entry>)>,
) -> impl Iterator<Item = (RelPath, Entry)> + 'a {
    let mut snap = snap.peekable();
    let mut d = deltas.into_iter().peekable();
    std::iter::from_fn(move || loop {
        let take_delta = match (snap.peek(), d.peek()) {
            (None, None) => return None,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some((sp, _)), Some((dp, _))) => dp <= sp,
        };
        if take_delta {
            let (dp, de) = d.next().expect("peeked");
            if snap.peek().is_some_and(|(sp, _)| *sp == dp) {
                snap.next();
            }
            if let Some(de) = de {
                return Some((dp, de));
            }
        } else {
            return snap.next();
        }
    })
}

/// Caches at least this large are streamed from the database by the scan that merges them
/// instead of being read into memory first.
const STREAM_CACHE_BYTES: i64 = 1 << 20;

/// Where a scan cache's snapshot rows come from.
#[derive(Debug)]
enum CacheSrc {
    /// Held in memory (small caches, tests).
    Mem(Vec<u8>),
    /// Read from the database while the scan merges it (incremental blob I/O on a
    /// connection of the scan's own): a large tree's cache is never held whole in memory.
    Db { db: PathBuf, rowid: i64 },
}

/// A replica's scan cache as stored: decoded row by row while a scan merges it with the
/// walk, so a large tree's cache is never held as one decoded object per file (nor, when
/// it is large, as one blob).
#[derive(Debug)]
pub struct CacheBlob {
    src: CacheSrc,
    /// Rows changed since the blob was written (None = removed), sorted by path.
    deltas: Vec<(String, Option<Cached>)>,
}

impl Default for CacheBlob {
    fn default() -> CacheBlob {
        CacheBlob {
            src: CacheSrc::Mem(Vec::new()),
            deltas: Vec::new(),
        }
    }
}

impl CacheBlob {
    /// Run `f` with a cursor over the rows in path order (the changes since the last full
    /// write applied). A cache that cannot be read any more is an empty cursor: every file
    /// is hashed again, which is slow but never wrong.
    pub fn with_cursor<T>(&self, f: impl FnOnce(&mut CacheCursor<'_>) -> T) -> T {
        match &self.src {
            CacheSrc::Mem(b) => f(&mut CacheCursor::new(Box::new(b.as_slice()), &self.deltas)),
            CacheSrc::Db { db, rowid } => {
                let conn = match open_reader(db) {
                    Ok(c) => c,
                    Err(_) => return f(&mut CacheCursor::new(Box::new(&[][..]), &self.deltas)),
                };
                let blob = conn.blob_open(
                    rusqlite::DatabaseName::Main,
                    "scan_cache",
                    "data",
                    *rowid,
                    true,
                );
                let out = match blob {
                    Ok(blob) => f(&mut CacheCursor::new(
                        Box::new(std::io::BufReader::with_capacity(256 << 10, blob)),
                        &self.deltas,
                    )),
                    Err(_) => f(&mut CacheCursor::new(Box::new(&[][..]), &self.deltas)),
                };
                out
            }
        }
    }

    /// Every row, in path order (small uses: `verify`, tests).
    pub fn collect_rows(&self) -> Vec<(String, Cached)> {
        self.with_cursor(|c| std::iter::from_fn(|| c.next_row()).collect())
    }

    /// How many rows changed since the last full write.
    pub fn delta_len(&self) -> usize {
        self.deltas.len()
    }
}

/// A read-only connection of a thread's own, for streaming one blob: a small page cache
/// (the blob is read once, front to back).
fn open_reader(db: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "cache_size", -256)?;
    Ok(conn)
}

/// A forward-only reader of a scan cache: [`CacheCursor::find`] with paths in increasing
/// order is a merge join with a sorted walk, one reused buffer, no allocation per row.
pub struct CacheCursor<'a> {
    r: Box<dyn std::io::BufRead + 'a>,
    started: bool,
    /// The snapshot row read last and not yet passed (`has`): its path and its record,
    /// decoded only if asked for.
    path: Vec<u8>,
    rec: [u8; CACHED_LEN],
    has: bool,
    done: bool,
    deltas: std::iter::Peekable<std::slice::Iter<'a, (String, Option<Cached>)>>,
}

/// One cache record after its path: size, mtime, dev, ino, ctime, hash.
const CACHED_LEN: usize = 5 * 8 + 32;

impl<'a> CacheCursor<'a> {
    fn new(
        r: Box<dyn std::io::BufRead + 'a>,
        deltas: &'a [(String, Option<Cached>)],
    ) -> CacheCursor<'a> {
        CacheCursor {
            r,
            started: false,
            path: Vec::new(),
            rec: [0; CACHED_LEN],
            has: false,
            done: false,
            deltas: deltas.iter().peekable(),
        }
    }

    /// Read the next snapshot row. False at the end or on a damaged blob (the rest then
    /// counts as absent: those files are hashed again).
    fn advance(&mut self) -> bool {
        if self.done {
            return false;
        }
        self.has = self.read_row();
        self.done = !self.has;
        self.has
    }

    fn read_row(&mut self) -> bool {
        if !self.started {
            self.started = true;
            let mut magic = [0u8; 4];
            if self.r.read_exact(&mut magic).is_err() || &magic != b"FSC1" {
                return false;
            }
        }
        // Most rows lie whole in the reader's buffer: copied out of it in one go.
        match self.r.fill_buf() {
            Ok([]) | Err(_) => return false,
            Ok(buf) if buf.len() >= 4 => {
                let n = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
                if buf.len() >= 4 + n + CACHED_LEN {
                    self.path.clear();
                    self.path.extend_from_slice(&buf[4..4 + n]);
                    self.rec.copy_from_slice(&buf[4 + n..4 + n + CACHED_LEN]);
                    self.r.consume(4 + n + CACHED_LEN);
                    return true;
                }
            }
            Ok(_) => {}
        }
        // A row across the buffer's end.
        let mut n = [0u8; 4];
        if self.r.read_exact(&mut n).is_err() {
            return false;
        }
        self.path.resize(u32::from_le_bytes(n) as usize, 0);
        self.r.read_exact(&mut self.path).is_ok() && self.r.read_exact(&mut self.rec).is_ok()
    }

    /// The cached row of `path`. Paths must be asked in increasing order: rows before
    /// `path` are passed for good.
    pub fn find(&mut self, path: &str) -> Option<Cached> {
        while self.deltas.peek().is_some_and(|(p, _)| p.as_str() < path) {
            self.deltas.next();
        }
        let delta = self
            .deltas
            .peek()
            .filter(|(p, _)| p.as_str() == path)
            .map(|(_, c)| c.clone());
        if !self.started {
            self.advance();
        }
        let want = path.as_bytes();
        while self.has && self.path.as_slice() < want {
            self.advance();
        }
        if let Some(d) = delta {
            return d;
        }
        if self.has && self.path == want {
            decode_cached(&mut self.rec.as_slice())
        } else {
            None
        }
    }

    /// The next row in path order (snapshot and changes merged), for whole-cache readers.
    pub fn next_row(&mut self) -> Option<(String, Cached)> {
        if !self.started {
            self.advance();
        }
        loop {
            let take_delta = match (self.has, self.deltas.peek()) {
                (false, None) => return None,
                (true, None) => false,
                (false, Some(_)) => true,
                (true, Some((dp, _))) => dp.as_bytes() <= self.path.as_slice(),
            };
            if take_delta {
                let (p, c) = self.deltas.next().expect("peeked");
                if self.has && self.path == p.as_bytes() {
                    self.advance();
                }
                if let Some(c) = c {
                    return Some((p.clone(), c.clone()));
                }
            } else {
                let row = String::from_utf8(self.path.clone())
                    .ok()
                    .zip(decode_cached(&mut self.rec.as_slice()));
                if row.is_none() {
                    self.done = true;
                    self.has = false;
                    return None;
                }
                self.advance();
                return row;
            }
        }
    }
}

fn encode_cache(rows: &[(RelPath, Cached)]) -> Vec<u8> {
    encode_rows(b"FSC1", rows, encode_cached)
}

fn encode_cached(out: &mut Vec<u8>, c: &Cached) {
    out.extend_from_slice(&c.size.to_le_bytes());
    out.extend_from_slice(&c.mtime.to_le_bytes());
    out.extend_from_slice(&c.stat.dev.to_le_bytes());
    out.extend_from_slice(&c.stat.ino.to_le_bytes());
    out.extend_from_slice(&c.stat.ctime.to_le_bytes());
    out.extend_from_slice(&c.hash.0);
}

fn decode_cached(b: &mut &[u8]) -> Option<Cached> {
    let size = u64_(b)?;
    let mtime = u64_(b)? as i64;
    let dev = u64_(b)?;
    let ino = u64_(b)?;
    let ctime = u64_(b)? as i64;
    let hash = Hash(take(b, 32)?.try_into().ok()?);
    Some(Cached {
        size,
        mtime,
        stat: StatId { dev, ino, ctime },
        hash,
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
        // Large pages for a new database: the base snapshot and scan caches are blobs of
        // several MB that every run reads whole (no effect on an existing database).
        conn.pragma_update(None, "page_size", 65536).map_err(wrap)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(wrap)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(wrap)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(wrap)?;
        if version != 0 && version < SCHEMA_VERSION {
            return Err(StoreError::Corrupt(
                label,
                format!("written by an earlier development build of fedsync (schema {version}); remove it to start over"),
            ));
        }
        if version > SCHEMA_VERSION {
            return Err(StoreError::Corrupt(
                label,
                format!("written by a newer fedsync (schema {version}, this one knows {SCHEMA_VERSION}); upgrade fedsync"),
            ));
        }
        conn.execute_batch(SCHEMA).map_err(wrap)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(wrap)?;
        Ok(Store {
            conn,
            path: label,
            file: (path != Path::new(":memory:")).then(|| path.to_path_buf()),
        })
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

    /// The integer id of a pair key (created on first use).
    pub fn pair_id(&self, key: &str) -> Result<i64> {
        self.conn
            .execute("INSERT OR IGNORE INTO pairs(key) VALUES (?1)", [key])
            .map_err(|e| self.err(e))?;
        self.conn
            .query_row("SELECT id FROM pairs WHERE key = ?1", [key], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// The integer id of a pair key, if it was ever synced.
    pub fn find_pair_id(&self, key: &str) -> Result<Option<i64>> {
        self.conn
            .query_row("SELECT id FROM pairs WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The base of a pair, sorted by path (byte order, as `RelPath` sorts): the last
    /// snapshot with the per-path changes written since applied on top.
    pub fn load_base(&self, pair: i64) -> Result<Vec<(RelPath, Entry)>> {
        self.with_base(pair, |rows| rows.collect())
    }

    /// Run `f` over the base of a pair in path order, streamed from the database
    /// (incremental blob I/O, decoded row by row): a base of 100,000 paths is never held
    /// whole, neither as a blob nor decoded. A damaged snapshot is an error (after `f`).
    pub fn with_base<T>(
        &self,
        pair: i64,
        f: impl FnOnce(&mut dyn Iterator<Item = (RelPath, Entry)>) -> T,
    ) -> Result<T> {
        let corrupt = |what: &str| StoreError::Corrupt(self.path.clone(), what.to_string());
        let mut st = self
            .conn
            .prepare_cached("SELECT path, entry FROM base_delta WHERE pair = ?1 ORDER BY path")
            .map_err(|e| self.err(e))?;
        let mut rows = st.query([pair]).map_err(|e| self.err(e))?;
        let mut deltas: Vec<(RelPath, Option<Entry>)> = Vec::new();
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let p: String = r.get(0).map_err(|e| self.err(e))?;
            let path = RelPath::new(&p).map_err(|e| corrupt(&e.to_string()))?;
            let e = match r.get::<_, Option<Vec<u8>>>(1).map_err(|e| self.err(e))? {
                Some(b) => {
                    Some(decode_entry(&mut b.as_slice()).ok_or_else(|| corrupt("base delta"))?)
                }
                None => None,
            };
            deltas.push((path, e));
        }
        drop(rows);
        let present: Option<i64> = self
            .conn
            .query_row(
                "SELECT length(data) FROM base_snap WHERE pair = ?1",
                [pair],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let Some(len) = present else {
            return Ok(f(&mut merge_base(std::iter::empty(), deltas)));
        };
        if let (true, Some(db)) = (len >= STREAM_CACHE_BYTES, &self.file) {
            return self.with_base_decoded_aside(db, pair, deltas, f);
        }
        let blob = self
            .conn
            .blob_open(
                rusqlite::DatabaseName::Main,
                "base_snap",
                "data",
                pair,
                true,
            )
            .map_err(|e| self.err(e))?;
        let mut snap = BaseRows::new(std::io::BufReader::with_capacity(256 << 10, blob));
        let out = f(&mut merge_base(&mut snap, deltas));
        // Rows `f` did not read are read now: damage anywhere in the snapshot counts.
        snap.by_ref().for_each(drop);
        if snap.corrupt {
            return Err(corrupt("base snapshot"));
        }
        Ok(out)
    }

    /// [`Store::with_base`] for a large snapshot: decoded on a thread of its own (with a
    /// read connection of its own) in batches, while `f` merges the rows it already has.
    fn with_base_decoded_aside<T>(
        &self,
        db: &Path,
        pair: i64,
        deltas: Vec<(RelPath, Option<Entry>)>,
        f: impl FnOnce(&mut dyn Iterator<Item = (RelPath, Entry)>) -> T,
    ) -> Result<T> {
        const BATCH: usize = 1024;
        std::thread::scope(|sc| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(RelPath, Entry)>>(2);
            let decoder = sc.spawn(move || -> rusqlite::Result<bool> {
                let conn = open_reader(db)?;
                let blob = conn.blob_open(
                    rusqlite::DatabaseName::Main,
                    "base_snap",
                    "data",
                    pair,
                    true,
                )?;
                let mut rows = BaseRows::new(std::io::BufReader::with_capacity(256 << 10, blob));
                loop {
                    let batch: Vec<_> = rows.by_ref().take(BATCH).collect();
                    if batch.is_empty() {
                        break;
                    }
                    if tx.send(batch).is_err() {
                        // `f` stopped reading: the rest is still checked for damage.
                        rows.by_ref().for_each(drop);
                        break;
                    }
                }
                Ok(rows.corrupt)
            });
            // If the decoder fails, `f` sees a short base; its result is then discarded.
            let out = f(&mut merge_base(rx.into_iter().flatten(), deltas));
            match decoder.join() {
                Ok(Ok(false)) => Ok(out),
                Ok(Ok(true)) => Err(StoreError::Corrupt(
                    self.path.clone(),
                    "base snapshot".to_string(),
                )),
                Ok(Err(e)) => Err(self.err(e)),
                Err(_) => Err(StoreError::Corrupt(
                    self.path.clone(),
                    "base snapshot (decoder failed)".to_string(),
                )),
            }
        })
    }

    /// Fold the per-path changes of a pair into a new snapshot (end of a run).
    pub fn compact_base(&mut self, pair: i64) -> Result<()> {
        let has_delta = self
            .conn
            .query_row(
                "SELECT 1 FROM base_delta WHERE pair = ?1 LIMIT 1",
                [pair],
                |_| Ok(()),
            )
            .optional()
            .map_err(|e| self.err(e))?
            .is_some();
        if !has_delta {
            return Ok(());
        }
        let rows = self.load_base(pair)?;
        self.replace_snapshot(
            "INSERT OR REPLACE INTO base_snap(pair, data) VALUES (?1, ?2)",
            "DELETE FROM base_delta WHERE pair = ?1",
            &pair,
            encode_base(&rows),
        )
    }

    /// Write a snapshot blob and drop the change rows it now contains, in one transaction.
    fn replace_snapshot(
        &mut self,
        write: &str,
        clear: &str,
        key: &dyn rusqlite::ToSql,
        blob: Vec<u8>,
    ) -> Result<()> {
        let path = self.path.clone();
        let wrap = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(wrap)?;
        tx.execute(write, params![key, blob]).map_err(wrap)?;
        tx.execute(clear, [key]).map_err(wrap)?;
        tx.commit().map_err(wrap)
    }

    pub fn base_entry(&self, pair: i64, path: &RelPath) -> Result<Option<Entry>> {
        let rows = self.load_base(pair)?;
        Ok(rows
            .binary_search_by(|(p, _)| p.cmp(path))
            .ok()
            .map(|i| rows[i].1.clone()))
    }

    /// The scan cache of a replica (rows sorted by path).
    pub fn load_cache(&self, replica: &str) -> Result<CacheBlob> {
        let row: Option<(i64, i64)> = self
            .conn
            .query_row(
                "SELECT rowid, length(data) FROM scan_cache WHERE replica = ?1",
                [replica],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let src = match row {
            None => CacheSrc::Mem(Vec::new()),
            Some((rowid, len)) if len >= STREAM_CACHE_BYTES && self.file.is_some() => {
                CacheSrc::Db {
                    db: self.file.clone().expect("checked"),
                    rowid,
                }
            }
            Some((rowid, _)) => CacheSrc::Mem(
                self.conn
                    .query_row(
                        "SELECT data FROM scan_cache WHERE rowid = ?1",
                        [rowid],
                        |r| r.get(0),
                    )
                    .map_err(|e| self.err(e))?,
            ),
        };
        let mut st = self
            .conn
            .prepare_cached("SELECT path, data FROM cache_delta WHERE replica = ?1 ORDER BY path")
            .map_err(|e| self.err(e))?;
        let deltas = st
            .query_map([replica], |r| {
                let p: String = r.get(0)?;
                let d: Option<Vec<u8>> = r.get(1)?;
                Ok((p, d.and_then(|d| decode_cached(&mut d.as_slice()))))
            })
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(CacheBlob { src, deltas })
    }

    /// Record a few changed cache rows without rewriting the whole cache.
    pub fn save_cache_deltas(
        &mut self,
        replica: &str,
        rows: &[(RelPath, Option<Cached>)],
    ) -> Result<()> {
        let path = self.path.clone();
        let wrap = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(wrap)?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO cache_delta(replica, path, data) VALUES (?1, ?2, ?3)",
                )
                .map_err(wrap)?;
            for (p, c) in rows {
                let data = c.as_ref().map(|c| {
                    let mut v = Vec::with_capacity(72);
                    encode_cached(&mut v, c);
                    v
                });
                st.execute(params![replica, p.as_str(), data])
                    .map_err(wrap)?;
            }
        }
        tx.commit().map_err(wrap)
    }

    /// Per-path base changes written since the last snapshot.
    /// Whether a pair has no base at all (its first sync).
    pub fn base_is_empty(&self, pair: i64) -> Result<bool> {
        self.conn
            .query_row(
                "SELECT NOT EXISTS (SELECT 1 FROM base_snap WHERE pair = ?1) \
                 AND NOT EXISTS (SELECT 1 FROM base_delta WHERE pair = ?1 AND entry IS NOT NULL)",
                [pair],
                |r| r.get::<_, bool>(0),
            )
            .map_err(|e| self.err(e))
    }

    pub fn base_delta_len(&self, pair: i64) -> Result<usize> {
        self.conn
            .query_row(
                "SELECT count(*) FROM base_delta WHERE pair = ?1",
                [pair],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as usize)
            .map_err(|e| self.err(e))
    }

    /// Rewrite a replica's whole cache (and drop its deltas).
    pub fn save_cache(&mut self, replica: &str, rows: &[(RelPath, Cached)]) -> Result<()> {
        self.replace_snapshot(
            "INSERT OR REPLACE INTO scan_cache(replica, data) VALUES (?1, ?2)",
            "DELETE FROM cache_delta WHERE replica = ?1",
            &replica,
            encode_cache(rows),
        )
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

    /// The stored content of a path's base (paths with a text or union merge rule), when
    /// it is the content of hash `hash`.
    pub fn base_content(&self, pair: i64, path: &RelPath, hash: &str) -> Result<Option<Vec<u8>>> {
        self.conn
            .query_row(
                "SELECT data FROM base_content WHERE pair = ?1 AND path = ?2 AND hash = ?3",
                params![pair, path.as_str(), hash],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The hash of the stored base content of a path, if any.
    pub fn base_content_hash(&self, pair: i64, path: &RelPath) -> Result<Option<String>> {
        self.conn
            .query_row(
                "SELECT hash FROM base_content WHERE pair = ?1 AND path = ?2",
                params![pair, path.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Content hashes that stand for a base's hash: a SQLite snapshot holds the same data as
    /// the database it was taken from, in other bytes. Path -> (alias hex, hash, size).
    pub fn base_aliases(&self, pair: i64) -> Result<Aliases> {
        let mut st = self
            .conn
            .prepare("SELECT path, alias, hash, size FROM base_alias WHERE pair = ?1")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([pair], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Aliases::new();
        for row in rows {
            let (path, alias, hash, size) = row.map_err(|e| self.err(e))?;
            if let Ok(h) = <[u8; 32]>::try_from(hash.as_slice()) {
                out.entry(path)
                    .or_default()
                    .push((alias, Hash(h), size as u64));
            }
        }
        Ok(out)
    }

    pub fn set_base_content(
        &self,
        pair: i64,
        path: &RelPath,
        hash: &str,
        data: &[u8],
    ) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO base_content(pair, path, hash, data) VALUES (?1, ?2, ?3, ?4)",
                params![pair, path.as_str(), hash, data],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn remove_base_content(&self, pair: i64, path: &RelPath) -> Result<()> {
        self.conn
            .execute(
                "DELETE FROM base_content WHERE pair = ?1 AND path = ?2",
                params![pair, path.as_str()],
            )
            .map(|_| ())
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

/// Per path: (alias hash in hex, the hash it stands for, that content's size).
pub type Aliases = HashMap<String, Vec<(String, Hash, u64)>>;

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

    pub fn set_base(&self, pair: i64, path: &RelPath, e: &Entry) -> Result<()> {
        let mut blob = Vec::with_capacity(64);
        encode_entry(&mut blob, e);
        self.tx
            .prepare_cached(
                "INSERT OR REPLACE INTO base_delta(pair, path, entry) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut st| st.execute(params![pair, path.as_str(), blob]))
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Record that content `alias` at `path` stands for `hash` (see `Store::base_aliases`);
    /// a path keeps only its latest alias.
    pub fn set_alias(
        &self,
        pair: i64,
        path: &RelPath,
        alias: &Hash,
        hash: &Hash,
        size: u64,
    ) -> Result<()> {
        self.tx
            .execute(
                "DELETE FROM base_alias WHERE pair = ?1 AND path = ?2",
                params![pair, path.as_str()],
            )
            .and_then(|_| {
                self.tx.execute(
                    "INSERT INTO base_alias(pair, path, alias, hash, size) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![pair, path.as_str(), alias.to_hex(), &hash.0[..], size as i64],
                )
            })
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn remove_base(&self, pair: i64, path: &RelPath) -> Result<()> {
        self.tx
            .prepare_cached(
                "INSERT OR REPLACE INTO base_delta(pair, path, entry) VALUES (?1, ?2, NULL)",
            )
            .and_then(|mut st| st.execute(params![pair, path.as_str()]))
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
            .map_err(|e| self.err(e))?;
        // The journal of a finished run has served its purpose (crash recovery); the
        // audit trail keeps the history.
        self.tx
            .execute("DELETE FROM journal WHERE run = ?1", [id])
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: Kind, hash: bool, link: Option<&str>) -> Entry {
        Entry {
            kind,
            size: 1234,
            mtime: -5,
            mode: 0o755,
            hash: hash.then(|| Hash::of(b"x")),
            link: link.map(str::to_string),
            stat: None,
        }
    }

    #[test]
    fn a_base_snapshot_streams_back_exactly_and_a_damaged_one_is_refused() {
        let rows = vec![
            (RelPath::new("a").unwrap(), entry(Kind::Dir, false, None)),
            (
                RelPath::new("a/f.txt").unwrap(),
                entry(Kind::File, true, None),
            ),
            (
                RelPath::new("a/l").unwrap(),
                entry(Kind::Symlink, false, Some("../t")),
            ),
            (
                RelPath::new("é/empty-link").unwrap(),
                entry(Kind::Symlink, false, Some("")),
            ),
        ];
        let blob = encode_base(&rows);
        // Read through a reader that hands out `.1` bytes at a time.
        struct Chunked<'a>(&'a [u8], usize);
        impl std::io::Read for Chunked<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(self.1).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let back = decode_base_from(Chunked(&blob, 3)).expect("decodes");
        assert_eq!(back.len(), rows.len());
        for ((p, e), (q, f)) in rows.iter().zip(&back) {
            assert_eq!(p, q);
            assert_eq!(format!("{e:?}"), format!("{f:?}"));
        }
        // Rows decoded in place from the read buffer (the fast path), and a mix of both
        // paths where many rows straddle the buffer's end.
        let many: Vec<(RelPath, Entry)> = (0..3000)
            .map(|i| {
                let (p, e) = &rows[i % rows.len()];
                (
                    RelPath::new(&format!("{}-{i:05}", p.as_str())).unwrap(),
                    e.clone(),
                )
            })
            .collect();
        let blob = encode_base(&many);
        let whole = decode_base_from(&blob[..]).expect("decodes in place");
        // 97 bytes per read: most rows fit in the buffer, some straddle its end.
        let mixed = decode_base_from(Chunked(&blob, 97)).expect("decodes in 97-byte reads");
        assert_eq!(whole.len(), many.len());
        for (((p, e), (q, f)), (r, g)) in many.iter().zip(&whole).zip(&mixed) {
            assert_eq!(p, q);
            assert_eq!(p, r);
            assert_eq!(format!("{e:?}"), format!("{f:?}"));
            assert_eq!(format!("{e:?}"), format!("{g:?}"));
        }
        assert!(
            decode_base_from(&blob[..blob.len() - 7]).is_none(),
            "truncated mid-row"
        );
        assert!(
            decode_base_from(&blob[..blob.len() - 1]).is_none(),
            "truncated"
        );
        assert!(decode_base_from(&b"FSX1"[..]).is_none(), "wrong magic");
        assert_eq!(decode_base_from(&b"FSB1"[..]).unwrap().len(), 0);
    }

    fn cached(i: u64) -> Cached {
        Cached {
            size: i,
            mtime: i as i64 * 7,
            stat: StatId {
                dev: 3,
                ino: i + 100,
                ctime: i as i64 * 11,
            },
            hash: Hash::of(&i.to_le_bytes()),
        }
    }

    /// A cache large enough to be streamed from the database (not read whole) gives the
    /// same rows as one held in memory, with the per-path changes applied on top, both to
    /// the merge-join lookups of a scan and to whole-cache readers.
    #[test]
    fn a_large_scan_cache_is_streamed_with_its_changes_applied() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let n = 20_000u64;
        let path = |i: u64| format!("dir-{:03}/some/deeper/folder/file-{i:06}.txt", i % 97);
        let mut rows: Vec<(RelPath, Cached)> = (0..n)
            .map(|i| (RelPath::new(&path(i)).unwrap(), cached(i)))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        store.save_cache("r", &rows).unwrap();
        // Changes since: one row replaced, one removed, one added (sorting first).
        let (changed, removed) = (rows[10].0.clone(), rows[20].0.clone());
        let added = RelPath::new("0-new").unwrap();
        store
            .save_cache_deltas(
                "r",
                &[
                    (changed.clone(), Some(cached(999_999))),
                    (removed.clone(), None),
                    (added.clone(), Some(cached(424_242))),
                ],
            )
            .unwrap();
        let blob = store.load_cache("r").unwrap();
        assert!(
            matches!(blob.src, CacheSrc::Db { .. }),
            "a cache of {n} rows is streamed"
        );
        let mut want: Vec<(String, Cached)> = rows
            .iter()
            .filter(|(p, _)| *p != removed)
            .map(|(p, c)| {
                let c = if *p == changed {
                    cached(999_999)
                } else {
                    c.clone()
                };
                (p.as_str().to_string(), c)
            })
            .collect();
        want.insert(0, (added.as_str().to_string(), cached(424_242)));
        assert_eq!(blob.collect_rows(), want);
        // Lookups in increasing order, with paths the cache does not have in between.
        blob.with_cursor(|c| {
            assert_eq!(c.find(added.as_str()), Some(cached(424_242)));
            for (k, (p, want)) in rows.iter().enumerate() {
                if k % 3 == 0 {
                    assert_eq!(c.find(&format!("{}-absent", p.as_str())), None);
                    continue;
                }
                let got = c.find(p.as_str());
                if *p == removed {
                    assert_eq!(got, None, "{p}");
                } else if *p == changed {
                    assert_eq!(got, Some(cached(999_999)));
                } else {
                    assert_eq!(got.as_ref(), Some(want), "{p}");
                }
            }
            assert_eq!(c.find("zzz"), None);
        });
        // A small cache is held in memory and reads the same way.
        store.save_cache("small", &rows[..5]).unwrap();
        let small = store.load_cache("small").unwrap();
        assert!(matches!(small.src, CacheSrc::Mem(_)));
        assert_eq!(small.collect_rows().len(), 5);
    }

    /// The base streamed into a run's merge is the snapshot with its changes applied, and
    /// a damaged snapshot fails the run's read instead of looking like deleted rows.
    #[test]
    fn the_base_streams_with_its_changes_and_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let pair = store.pair_id("a|b").unwrap();
        let file = |n: u64| Entry {
            kind: Kind::File,
            size: n,
            mtime: 1,
            mode: 0o644,
            hash: Some(Hash::of(&n.to_le_bytes())),
            link: None,
            stat: None,
        };
        {
            let b = store.batch().unwrap();
            // Large enough to be decoded on a thread of its own.
            for i in 0..20_000u64 {
                b.set_base(pair, &RelPath::new(&format!("f{i:05}")).unwrap(), &file(i))
                    .unwrap();
            }
            b.commit().unwrap();
        }
        store.compact_base(pair).unwrap();
        {
            let b = store.batch().unwrap();
            b.remove_base(pair, &RelPath::new("f00001").unwrap())
                .unwrap();
            b.set_base(pair, &RelPath::new("f00002").unwrap(), &file(77))
                .unwrap();
            b.set_base(pair, &RelPath::new("g").unwrap(), &file(5))
                .unwrap();
            b.commit().unwrap();
        }
        let len: i64 = store
            .conn
            .query_row("SELECT length(data) FROM base_snap", [], |r| r.get(0))
            .unwrap();
        assert!(len >= STREAM_CACHE_BYTES, "{len}");
        let rows = store.with_base(pair, |it| it.collect::<Vec<_>>()).unwrap();
        assert_eq!(rows.len(), 20_000);
        assert_eq!(rows[0].0.as_str(), "f00000");
        assert_eq!(rows[1], (RelPath::new("f00002").unwrap(), file(77)));
        assert_eq!(rows.last().unwrap().0.as_str(), "g");
        // A reader that stops early still has the rest checked.
        assert_eq!(store.with_base(pair, |it| it.take(2).count()).unwrap(), 2);
        // Damage in the middle of the snapshot.
        store
            .conn
            .execute(
                "UPDATE base_snap SET data = substr(data, 1, length(data) / 2) WHERE pair = ?1",
                [pair],
            )
            .unwrap();
        assert!(matches!(
            store.with_base(pair, |it| it.count()),
            Err(StoreError::Corrupt(..))
        ));
    }
}
