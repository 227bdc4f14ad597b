//! Validators for paths under a `validate = "json" | "jsonl" | "toml" | "yaml" | "sqlite"`
//! rule (SPEC section 4): a file that fails is never propagated over another copy.
//!
//! - [`validate`] checks a file on disk, [`validate_bytes`] checks content in memory (for
//!   example a merge result before it is written), [`validate_jsonl_reader`] checks a stream
//!   of JSON lines (for example only the tail appended since the last validated state).
//! - [`sqlite_snapshot`] copies a database that may be in use through SQLite's online backup
//!   API, so the copy is a committed state, never a torn file, and checks the copy.
//!
//! Errors are [`ValidationError::Invalid`] (the content is bad: report it loudly with its
//! line and column, keep the good copy) or [`ValidationError::Io`] (the file could not be
//! read, or the database was busy for too long: retry later; nothing is known about the
//! content).
//!
//! Text formats accept a leading UTF-8 byte-order mark (written by some Windows editors;
//! it does not make a file corrupt). Line and column numbers are 1-based; columns count
//! characters for TOML and YAML, and bytes for JSON/JSONL (as serde_json reports them).

use crate::config::Validator;
use crate::entry::Hash;
use rusqlite::{Connection, OpenFlags};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a SQLite check or snapshot waits for a writer's lock before giving up with
/// [`ValidationError::Io`] (`WouldBlock`).
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(20);

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Why content failed its validator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub validator: Validator,
    /// 1-based line of the error, when the parser gives one.
    pub line: Option<u64>,
    /// 1-based column of the error, when the parser gives one.
    pub column: Option<u64>,
    /// The parser's message, without the position.
    pub message: String,
}

fn format_name(v: Validator) -> &'static str {
    match v {
        Validator::Json => "JSON",
        Validator::Jsonl => "JSON Lines",
        Validator::Toml => "TOML",
        Validator::Yaml => "YAML",
        Validator::Sqlite => "SQLite database",
    }
}

impl fmt::Display for Invalid {
    /// `invalid JSON at line 3, column 7: expected `,` or `}``
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}", format_name(self.validator))?;
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, " at line {l}, column {c}")?,
            (Some(l), None) => write!(f, " at line {l}")?,
            _ => {}
        }
        write!(f, ": {}", self.message)
    }
}

/// The result of a failed validation.
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    /// The content is invalid.
    #[error("{0}")]
    Invalid(Invalid),
    /// The file could not be read (or a database stayed locked); says nothing about its
    /// content.
    #[error("cannot check {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ValidationError {
    /// The content problem, if this is one.
    pub fn invalid(&self) -> Option<&Invalid> {
        match self {
            ValidationError::Invalid(i) => Some(i),
            ValidationError::Io { .. } => None,
        }
    }
    /// The 1-based line of a content error, when known.
    pub fn line(&self) -> Option<u64> {
        self.invalid().and_then(|i| i.line)
    }
}

fn invalid(
    validator: Validator,
    line: Option<u64>,
    column: Option<u64>,
    message: impl Into<String>,
) -> ValidationError {
    ValidationError::Invalid(Invalid {
        validator,
        line,
        column,
        message: message.into(),
    })
}

fn io_err(path: &Path, source: io::Error) -> ValidationError {
    ValidationError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Check the file at `path` under `kind`. JSON Lines files are read as a stream; JSON, TOML
/// and YAML files are read whole; SQLite files are opened through SQLite (no SQL writes) and
/// checked with `PRAGMA integrity_check` (see [`validate_sqlite`]).
pub fn validate(kind: Validator, path: &Path) -> Result<(), ValidationError> {
    match kind {
        Validator::Sqlite => validate_sqlite(path),
        Validator::Jsonl => {
            let f = File::open(path).map_err(|e| io_err(path, e))?;
            validate_jsonl_reader(BufReader::with_capacity(256 << 10, f), 1).map_err(|e| match e {
                ValidationError::Io { source, .. } => io_err(path, source),
                other => other,
            })
        }
        _ => {
            let data = fs::read(path).map_err(|e| io_err(path, e))?;
            validate_bytes(kind, &data)
        }
    }
}

/// Check content held in memory under `kind`. For SQLite the bytes are written to a
/// temporary file (SQLite checks files) which is removed afterwards.
pub fn validate_bytes(kind: Validator, data: &[u8]) -> Result<(), ValidationError> {
    match kind {
        Validator::Json => validate_json(data),
        Validator::Jsonl => validate_jsonl_reader(data, 1),
        Validator::Toml => validate_toml(data),
        Validator::Yaml => validate_yaml(data),
        Validator::Sqlite => validate_sqlite_bytes(data),
    }
}

fn strip_bom(data: &[u8]) -> &[u8] {
    data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data)
}

/// 1-based (line, column in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (u64, u64) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&c| c == b'\n').count() as u64 + 1;
    let line_start = before
        .iter()
        .rposition(|&c| c == b'\n')
        .map_or(0, |i| i + 1);
    let col = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count() as u64
        + 1;
    (line, col)
}

/// Content as UTF-8 text, or an `Invalid` pointing at the first bad byte.
fn utf8(kind: Validator, data: &[u8]) -> Result<&str, ValidationError> {
    std::str::from_utf8(data).map_err(|e| {
        let good = std::str::from_utf8(&data[..e.valid_up_to()]).unwrap_or_default();
        let (line, col) = line_col(good, good.len());
        invalid(
            kind,
            Some(line),
            Some(col),
            format!("invalid UTF-8 (byte offset {})", e.valid_up_to()),
        )
    })
}

/// serde_json's message without its " at line L column C" suffix.
fn json_message(e: &serde_json::Error) -> String {
    let s = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    s.strip_suffix(&suffix).map(str::to_string).unwrap_or(s)
}

fn json_value(kind: Validator, text: &str, line_offset: u64) -> Result<(), ValidationError> {
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map(|_| ())
        .map_err(|e| {
            let (line, col) = if e.line() == 0 {
                (None, None)
            } else {
                (
                    Some(e.line() as u64 + line_offset),
                    Some(e.column() as u64).filter(|&c| c > 0),
                )
            };
            invalid(kind, line, col, json_message(&e))
        })
}

fn validate_json(data: &[u8]) -> Result<(), ValidationError> {
    let text = utf8(Validator::Json, strip_bom(data))?;
    json_value(Validator::Json, text, 0)
}

/// Check JSON Lines read from `r`: every line that is not blank (only whitespace) must be
/// one JSON value. `first_line` is the line number of the first line read (1 for a whole
/// file; when checking only an appended tail that starts on a line boundary, pass the
/// number of lines before it + 1 so errors point at the right line). A last line without a
/// terminator is checked like the others (a half-written record is invalid). A read error
/// comes back as [`ValidationError::Io`] with an empty `path` (the reader has none).
pub fn validate_jsonl_reader<R: BufRead>(mut r: R, first_line: u64) -> Result<(), ValidationError> {
    let kind = Validator::Jsonl;
    let mut buf = Vec::new();
    let mut line_no = first_line;
    loop {
        buf.clear();
        let n = r
            .read_until(b'\n', &mut buf)
            .map_err(|e| ValidationError::Io {
                path: PathBuf::new(),
                source: e,
            })?;
        if n == 0 {
            return Ok(());
        }
        let mut line = &buf[..];
        if line_no == 1 {
            line = strip_bom(line);
        }
        let text = std::str::from_utf8(line).map_err(|e| {
            let good = std::str::from_utf8(&line[..e.valid_up_to()]).unwrap_or_default();
            invalid(
                kind,
                Some(line_no),
                Some(good.chars().count() as u64 + 1),
                "invalid UTF-8",
            )
        })?;
        // Without its line break: an error at the end of the record is on its own line.
        let text = text.trim_end_matches(['\n', '\r']);
        if !text.trim().is_empty() {
            json_value(kind, text, line_no - 1)?;
        }
        line_no += 1;
    }
}

fn validate_toml(data: &[u8]) -> Result<(), ValidationError> {
    let kind = Validator::Toml;
    let text = utf8(kind, strip_bom(data))?;
    toml::from_str::<toml::Table>(text)
        .map(|_| ())
        .map_err(|e| {
            let (line, col) = match e.span() {
                Some(span) => {
                    let (l, c) = line_col(text, span.start);
                    (Some(l), Some(c))
                }
                None => (None, None),
            };
            invalid(kind, line, col, e.message().trim_end())
        })
}

// YAML: yaml-rust2, the maintained fork of yaml-rust (YAML 1.2, pure Rust, no unsafe
// parser state, regular releases). serde_yaml is deprecated (archived by its author) and
// serde_yml's soundness and maintenance were questioned; we only need "does it parse, and
// where not", which yaml-rust2's loader and its ScanError marker (line, column) give.
fn validate_yaml(data: &[u8]) -> Result<(), ValidationError> {
    let kind = Validator::Yaml;
    let text = utf8(kind, strip_bom(data))?;
    yaml_rust2::YamlLoader::load_from_str(text)
        .map(|_| ())
        .map_err(|e| {
            let m = e.marker();
            invalid(
                kind,
                Some(m.line() as u64),
                Some(m.col() as u64 + 1),
                e.info().to_string(),
            )
        })
}

fn sqlite_header_check(path: &Path) -> Result<(), ValidationError> {
    let kind = Validator::Sqlite;
    let mut f = File::open(path).map_err(|e| io_err(path, e))?;
    let mut head = Vec::with_capacity(100);
    f.by_ref()
        .take(100)
        .read_to_end(&mut head)
        .map_err(|e| io_err(path, e))?;
    if head.is_empty() {
        return Err(invalid(
            kind,
            None,
            None,
            "empty file, not an SQLite database",
        ));
    }
    if head.len() < 100 || !head.starts_with(SQLITE_MAGIC) {
        return Err(invalid(
            kind,
            None,
            None,
            "not an SQLite database (no SQLite header)",
        ));
    }
    Ok(())
}

/// Map a SQLite error: lock/permission/open problems say nothing about the content (Io);
/// everything else (corrupt, not a database, ...) is a content problem.
fn sqlite_err(path: &Path, e: rusqlite::Error) -> ValidationError {
    use rusqlite::ErrorCode as C;
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        let kind = match f.code {
            C::DatabaseBusy | C::DatabaseLocked => Some(io::ErrorKind::WouldBlock),
            C::PermissionDenied | C::ReadOnly => Some(io::ErrorKind::PermissionDenied),
            C::CannotOpen | C::SystemIoFailure | C::OutOfMemory | C::DiskFull => {
                Some(io::ErrorKind::Other)
            }
            _ => None,
        };
        if let Some(k) = kind {
            return io_err(path, io::Error::new(k, e.to_string()));
        }
    }
    invalid(Validator::Sqlite, None, None, e.to_string())
}

fn integrity_check(path: &Path, conn: &Connection) -> Result<(), ValidationError> {
    let mut stmt = conn
        .prepare("PRAGMA integrity_check")
        .map_err(|e| sqlite_err(path, e))?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|it| it.collect())
        .map_err(|e| sqlite_err(path, e))?;
    if rows.len() == 1 && rows[0] == "ok" {
        return Ok(());
    }
    let mut msg = format!(
        "integrity_check: {}",
        rows.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
    );
    if rows.len() > 5 {
        msg.push_str(&format!(" (and {} more problems)", rows.len() - 5));
    }
    Err(invalid(Validator::Sqlite, None, None, msg))
}

/// Open a database only to read it, through SQLite (so locks, WAL and hot journals are
/// honoured and reads happen in a consistent transaction).
///
/// Opened read-write (never created) with `PRAGMA query_only = ON`, so no SQL can write,
/// falling back to a read-only open when the file or its directory is not writable. Why
/// not always read-only: a read-only connection to a WAL database that nobody has open
/// creates `-wal` and `-shm` files beside it and cannot remove them on close (it may not
/// checkpoint), which would leave junk next to the user's database (for a sync tool, two
/// new files to sync); and it cannot recover a hot journal left by a crashed writer. A
/// read-write connection removes what it created when it closes as the last connection;
/// the only write SQLite itself may do is that recovery, or checkpointing a WAL left
/// behind by a crashed writer into the main file (same content, different bytes).
fn open_for_reading(path: &Path) -> Result<Connection, ValidationError> {
    let rw = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .and_then(|c| {
        c.execute_batch("PRAGMA query_only = ON")?;
        Ok(c)
    });
    let conn = match rw {
        Ok(c) => c,
        Err(_) => Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sqlite_err(path, e))?,
    };
    conn.busy_timeout(SQLITE_BUSY_TIMEOUT)
        .map_err(|e| sqlite_err(path, e))?;
    Ok(conn)
}

/// Check a SQLite database: refuse a file without the SQLite header (an empty file too:
/// SQLite would take it as an empty database, but under a `sqlite` rule a zero-length file
/// is far more likely a truncated copy than a real database), then open it for reading
/// through SQLite, so a database in use is read in a consistent transaction, WAL included
/// (opened read-write with `PRAGMA query_only`, falling back to read-only: see
/// `open_for_reading` in the source for why)
/// and run `PRAGMA integrity_check`.
pub fn validate_sqlite(path: &Path) -> Result<(), ValidationError> {
    sqlite_header_check(path)?;
    let conn = open_for_reading(path)?;
    integrity_check(path, &conn)
}

fn validate_sqlite_bytes(data: &[u8]) -> Result<(), ValidationError> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!(
        "fedsync-validate-{}-{}-{}.sqlite",
        std::process::id(),
        n,
        rand::random::<u64>()
    ));
    let res = fs::write(&path, data)
        .map_err(|e| io_err(&path, e))
        .and_then(|_| validate_sqlite(&path));
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        let _ = fs::remove_file(p);
    }
    res
}

/// What [`sqlite_snapshot`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqliteSnapshot {
    /// Size of the snapshot file.
    pub len: u64,
    /// BLAKE3 hash of the snapshot file (the content to record and send).
    pub hash: Hash,
}

/// Copy a consistent snapshot of the SQLite database `src` (which another process may be
/// writing, in WAL or rollback-journal mode) to `dst`, through SQLite's online backup API,
/// then check the copy with `PRAGMA integrity_check`.
///
/// - `src` must pass the header check of [`validate_sqlite`]; it is opened as there (no
///   SQL writes; nothing left beside it).
/// - `dst` must not exist, or be an empty file (e.g. a fresh temp file); it becomes a
///   self-contained database file (no `-wal`/`-journal` beside it) holding one committed
///   state of `src`, in `src`'s journal mode.
/// - The whole database is copied in one backup step, inside one read transaction on
///   `src`: in WAL mode writers go on meanwhile; in rollback mode writers wait for the copy
///   (they need their own busy timeout). While a writer holds the lock the step is retried
///   until [`SQLITE_BUSY_TIMEOUT`], then `Io(WouldBlock)`.
/// - The copy is fsynced; its length and BLAKE3 hash are returned.
///
/// How the engine uses it: snapshot into a staging file next to the destination (or in the
/// transfer spool), send/rename that file into place as for any file, then run
/// [`validate`] (`Sqlite`) on the destination copy before committing. The snapshot's hash
/// differs from the scan hash of `src` in general (a WAL database's main file is not the
/// whole state); record the snapshot's hash as the transferred content.
/// On any error `dst` may hold a partial file: delete it.
pub fn sqlite_snapshot(src: &Path, dst: &Path) -> Result<SqliteSnapshot, ValidationError> {
    sqlite_header_check(src)?;
    match fs::metadata(dst) {
        Ok(m) if m.len() > 0 => {
            return Err(io_err(
                dst,
                io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "snapshot destination exists and is not empty",
                ),
            ))
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(dst, e)),
    }
    let source = open_for_reading(src)?;
    let mut copy = Connection::open(dst).map_err(|e| sqlite_err(dst, e))?;
    copy.busy_timeout(SQLITE_BUSY_TIMEOUT)
        .map_err(|e| sqlite_err(dst, e))?;
    {
        let backup =
            rusqlite::backup::Backup::new(&source, &mut copy).map_err(|e| sqlite_err(src, e))?;
        let deadline = Instant::now() + SQLITE_BUSY_TIMEOUT;
        loop {
            use rusqlite::backup::StepResult;
            match backup.step(-1).map_err(|e| sqlite_err(src, e))? {
                StepResult::Done => break,
                StepResult::More => continue,
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                _ => {
                    return Err(io_err(
                        src,
                        io::Error::new(
                            io::ErrorKind::WouldBlock,
                            "database stayed locked by a writer; snapshot not taken",
                        ),
                    ))
                }
            }
        }
    }
    drop(source);
    integrity_check(dst, &copy)?;
    copy.close().map_err(|(_, e)| sqlite_err(dst, e))?;
    let f = File::open(dst).map_err(|e| io_err(dst, e))?;
    f.sync_all().map_err(|e| io_err(dst, e))?;
    let len = f.metadata().map_err(|e| io_err(dst, e))?.len();
    let mut hasher = blake3::Hasher::new();
    io::copy(&mut BufReader::new(f), &mut hasher).map_err(|e| io_err(dst, e))?;
    Ok(SqliteSnapshot {
        len,
        hash: Hash(*hasher.finalize().as_bytes()),
    })
}
