//! A replica: one copy of the synced tree, behind one trait so the engine never knows
//! whether it is a local folder or (later) a remote agent.

pub mod local;

use crate::entry::{Entry, Hash};
use crate::path::RelPath;
use crate::rules::Rules;
use crate::store::CacheBlob;
use std::path::Path;

/// Errors of replica operations. Each names the path; the engine adds the replica.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: changed since it was scanned; left alone, the next run picks it up")]
    Changed(String),
    #[error("{0}: the content read does not match the scanned hash (changed while copying?); nothing replaced")]
    HashMismatch(String),
    #[error("{0}: refused: a parent directory is a symlink, fedsync never writes through links")]
    SymlinkParent(String),
    #[error("{0}: directory is not empty (it holds files fedsync does not sync); kept")]
    NotEmpty(String),
}

impl ReplicaError {
    /// "Changed under us": a skip to retry next run, not a failure.
    pub fn is_race(&self) -> bool {
        matches!(
            self,
            ReplicaError::Changed(_) | ReplicaError::HashMismatch(_)
        )
    }
}

pub type Result<T> = std::result::Result<T, ReplicaError>;

pub fn io_err(path: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> ReplicaError {
    move |source| ReplicaError::Io {
        path: path.to_string(),
        source,
    }
}

/// What a replica's root looks like before anything is touched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The root does not exist (or is not a directory).
    Missing,
    /// The root exists but has no marker.
    Unmarked { empty: bool },
    /// The root carries marker `id`.
    Marked(String),
}

#[derive(Clone, Debug, Default)]
pub struct ScanOptions {
    /// Re-hash every file instead of trusting the scan cache.
    pub checksum: bool,
    /// Only these subtrees (and their ancestors); empty = the whole tree.
    pub only: Vec<RelPath>,
    /// Leave files the scan cache does not vouch for unhashed (`hash: None`): the engine
    /// hashes only those it must compare, and a copy hashes the rest as it reads them (a
    /// first sync into an empty folder reads each file once, not twice).
    pub defer_hash: bool,
}

/// The result of scanning one replica.
#[derive(Debug, Default)]
pub struct Scan {
    /// Sorted by path, stored compactly.
    pub entries: crate::scanlist::ScanList,
    /// Paths that could not be read, with the reason. Nothing at or below them is trusted.
    pub errors: Vec<(RelPath, String)>,
    pub hashed_files: u64,
    pub hashed_bytes: u64,
    /// The files hashed by this scan (their cache rows change).
    pub hashed_paths: Vec<RelPath>,
    /// When the scan started (ns since the epoch): files modified after `started - 2 s` are
    /// not trusted from the cache next time.
    pub started_ns: i64,
}

/// A new file or link written to a temporary name on the target's filesystem, verified.
#[derive(Debug)]
pub struct Staged {
    pub token: String,
    pub hash: Option<Hash>,
}

/// Where an overwritten or deleted item went.
pub type VersionPath = Option<String>;

/// One kept version of a file (SPEC invariant 1), as listed by `fedsync versions`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VersionInfo {
    /// Where it is, relative to the replica root: `.fedsync/versions/<run>/<path>[~N]`.
    pub id: String,
    /// The run that kept it.
    pub run: String,
    /// The path it was kept from.
    pub path: String,
    pub kind: crate::entry::Kind,
    pub size: u64,
    /// Modification time of the content (ns since the epoch).
    pub mtime: i64,
}

fn unsupported<T>(what: &str) -> Result<T> {
    Err(ReplicaError::Io {
        path: what.to_string(),
        source: std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "not supported by this kind of replica yet",
        ),
    })
}

/// The operations the engine needs from a replica.
pub trait Replica: Send + Sync {
    /// How the user wrote it (for messages).
    fn describe(&self) -> String;
    /// The root on this machine, when local (enables reflink / copy_file_range).
    fn local_root(&self) -> Option<&Path>;
    /// The remote replica behind this one, when it is one (a local target then fetches
    /// from it by delta instead of reading it whole).
    fn as_remote(&self) -> Option<&crate::remote::RemoteReplica> {
        None
    }
    fn probe(&self) -> Result<Probe>;
    /// Create the root if needed and write the marker.
    fn write_marker(&self, id: &str) -> Result<()>;
    /// Remove stray temporary files left by an interrupted run. Returns how many.
    fn clean_temp(&self) -> Result<usize>;
    fn scan(&self, rules: &Rules, cache: &CacheBlob, opts: &ScanOptions) -> Result<Scan>;
    /// Current state of one path, hashed (for `why` and re-checks).
    fn entry(&self, path: &RelPath, hash: bool) -> Result<Option<Entry>>;
    /// Open a file for reading.
    fn open(&self, path: &RelPath) -> Result<Box<dyn std::io::Read + Send>>;
    /// Write `src`'s file at `path` to a temporary name here, with `meta`'s mode and mtime,
    /// and verify its hash equals `meta.hash`.
    fn stage_file(&self, src: &dyn Replica, path: &RelPath, meta: &Entry) -> Result<Staged>;
    /// [`Self::stage_file`] for a file that is new at `path` (nothing was there at the scan,
    /// `install` gets `expect = None`): a local replica stages it as an unnamed file in its
    /// final directory, which `install` names in place.
    fn stage_new_file(&self, src: &dyn Replica, path: &RelPath, meta: &Entry) -> Result<Staged> {
        self.stage_file(src, path, meta)
    }
    fn stage_symlink(&self, target: &str) -> Result<Staged>;
    fn discard(&self, staged: Staged);
    /// Make staged data durable (fsync/syncfs) before it is renamed into place.
    fn flush(&self) -> Result<()>;
    /// Re-check that `path` still is `expect` (None = absent), keep the current item as a
    /// version of `run`, and rename the staged item into place. Returns the new state.
    fn install(
        &self,
        staged: Staged,
        path: &RelPath,
        expect: Option<&Entry>,
        run: &str,
    ) -> Result<(Entry, VersionPath)>;
    /// Re-check and remove (files/links kept as versions; directories must be empty).
    fn remove(&self, path: &RelPath, expect: &Entry, run: &str) -> Result<VersionPath>;
    /// Re-check and rename without replacing anything at `to`.
    fn rename(&self, from: &RelPath, to: &RelPath, expect: &Entry) -> Result<Entry>;
    /// Create a directory (replacing `expect` if it is a file or link, kept as a version).
    fn mkdir(&self, path: &RelPath, mode: u32, expect: Option<&Entry>, run: &str) -> Result<Entry>;
    fn set_mode(&self, path: &RelPath, mode: u32, expect: &Entry) -> Result<Entry>;

    /// Kept versions: of `path` only, or all of them.
    fn list_versions(&self, path: Option<&RelPath>) -> Result<Vec<VersionInfo>> {
        let _ = path;
        unsupported("versions")
    }
    /// Stage a copy of a kept version (a hard link where possible), hashed, for `install`.
    /// The version itself stays where it is.
    fn stage_version(&self, id: &str) -> Result<Staged> {
        unsupported(id)
    }
    /// Delete a kept version (retention). Returns the bytes freed.
    fn remove_version(&self, id: &str) -> Result<u64> {
        unsupported(id)
    }
    /// Append-only growth: if `path` still is `expect` and `src`'s file at `path` is that
    /// content plus a tail, append the tail in place (durable, then the whole file checked
    /// against `meta.hash`; on a mismatch the file is cut back to its old length). `Ok(None)`:
    /// not an append (use a normal copy).
    fn append_tail(
        &self,
        src: &dyn Replica,
        path: &RelPath,
        expect: &Entry,
        meta: &Entry,
    ) -> Result<Option<Entry>> {
        let _ = (src, path, expect, meta);
        Ok(None)
    }
    /// Stage a copy of the first `len` bytes of `path` (undoing an append).
    fn stage_prefix(&self, path: &RelPath, len: u64) -> Result<Staged> {
        let _ = len;
        unsupported(path.as_str())
    }
    /// Stage a new file written by `fill` into a temporary path on this replica (local
    /// replicas only); `fill` returns the hash of what it wrote.
    fn stage_local(&self, fill: &mut dyn FnMut(&Path) -> std::io::Result<Hash>) -> Result<Staged> {
        let _ = fill;
        unsupported("staging local content")
    }
}
