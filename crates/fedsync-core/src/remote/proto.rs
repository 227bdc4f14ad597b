//! The wire protocol between `fedsync` and `fedsync serve`: handshake, framing, messages.
//!
//! A session starts with three text lines, so that a peer of any version can read them:
//!
//! ```text
//! agent  -> client   FEDSYNC-AGENT <protocol> <fedsync version> <feature,feature,...>
//! client -> agent    FEDSYNC-CLIENT <protocol> <fedsync version> <feature,...>
//! agent  -> client   FEDSYNC-OK <features both sides have>      (or FEDSYNC-ERROR <message>)
//! ```
//!
//! After that each direction is one zstd stream (when both sides list `zstd`) carrying
//! frames: a little-endian `u32` length, then a postcard-encoded [`Frame`]. Frames longer
//! than [`MAX_FRAME`] are refused before anything is allocated for them. Every request
//! carries an id; the agent answers with one or more frames of the same id, the last one
//! being a terminal message ([`Resp::is_terminal`]). Requests are pipelined: the client
//! writes many before it reads any answer, and the agent answers in order.

use crate::entry::{Entry, Hash, Kind, StatId};
use crate::remote::delta::Sig;
use crate::replica::{Probe, ReplicaError};
use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, Read, Write};

/// Bump when a message changes meaning or layout. New requests are added at the end of
/// [`Req`] / [`Resp`] under a new feature instead: an older peer keeps working for everything
/// it knows, and the client asks for a feature only when the agent listed it.
pub const PROTOCOL: u32 = 1;
/// What this build can do; the session uses what both sides list.
///
/// - `versions1`: `ListVersions`, `StageVersion`, `RemoveVersion`, `StagePrefix` (rollback,
///   restore, `versions` and `prune` with a remote replica).
/// - `append1`: `AppendBegin` / `AppendEnd` (append-only growth appended in place).
/// - `watch1`: `Watch`, `Entries`, `Checkpoint` (a long-lived session that reports the
///   agent's own file events).
/// - `sigs1`: `PushSigs` (the client hands over the group signatures of a file it pushes,
///   which the agent keeps for the next transfer that uses the file as its basis).
pub const FEATURES: &[&str] = &[
    "zstd",
    "cdc1",
    "resume1",
    "versions1",
    "append1",
    "watch1",
    "sigs1",
];
/// Largest frame either side accepts (decoded size).
pub const MAX_FRAME: usize = 8 << 20;
/// Literal file data per message.
pub const DATA_CHUNK: usize = 1 << 20;
/// Scan entries per message.
pub const SCAN_BATCH: usize = 4096;
/// Signatures per message.
pub const SIG_BATCH: usize = 65536;

pub const AGENT_HELLO: &str = "FEDSYNC-AGENT";
pub const CLIENT_HELLO: &str = "FEDSYNC-CLIENT";
pub const OK_LINE: &str = "FEDSYNC-OK";
pub const ERROR_LINE: &str = "FEDSYNC-ERROR";

/// The fedsync version, for messages.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// A hello line: who speaks which protocol with which features.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub protocol: u32,
    pub version: String,
    pub features: Vec<String>,
}

impl Hello {
    pub fn ours() -> Hello {
        Hello {
            protocol: PROTOCOL,
            version: version().to_string(),
            features: FEATURES.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn line(&self, tag: &str) -> String {
        format!(
            "{tag} {} {} {}\n",
            self.protocol,
            self.version,
            self.features.join(",")
        )
    }

    /// Parse `TAG <protocol> <version> <features>`; None when the line is not one.
    pub fn parse(tag: &str, line: &str) -> Option<Hello> {
        let mut it = line.trim_end().split(' ');
        if it.next()? != tag {
            return None;
        }
        let protocol = it.next()?.parse().ok()?;
        let version = it.next().unwrap_or("?").to_string();
        let features = it
            .next()
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        Some(Hello {
            protocol,
            version,
            features,
        })
    }

    pub fn has(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }
}

/// Read one `\n`-terminated line of at most `max` bytes (None at EOF).
pub fn read_line(r: &mut impl BufRead, max: usize) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = r.take(max as u64).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

// ---------------------------------------------------------------------------------------
// Messages

/// An entry as it crosses the wire: everything an [`Entry`] has, including the inode
/// identity the agent's re-check compares (so a remote re-check is as strict as a local one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WEntry {
    pub kind: u8,
    pub size: u64,
    pub mtime: i64,
    pub mode: u32,
    pub hash: Option<[u8; 32]>,
    pub link: Option<String>,
    pub stat: Option<(u64, u64, i64)>,
}

impl WEntry {
    pub fn from_entry(e: &Entry) -> WEntry {
        WEntry {
            kind: kind_code(e.kind),
            size: e.size,
            mtime: e.mtime,
            mode: e.mode,
            hash: e.hash.map(|h| h.0),
            link: e.link.clone(),
            stat: e.stat.map(|s| (s.dev, s.ino, s.ctime)),
        }
    }

    pub fn to_entry(&self) -> Result<Entry, String> {
        let kind = kind_of(self.kind)?;
        if kind == Kind::Symlink && self.link.is_none() {
            return Err("a symlink without a target".into());
        }
        if let Some(l) = &self.link {
            if l.contains('\0') {
                return Err("a symlink target with a NUL byte".into());
            }
        }
        Ok(Entry {
            kind,
            size: self.size,
            mtime: self.mtime,
            mode: self.mode & 0o7777,
            hash: self.hash.map(Hash),
            link: self.link.clone(),
            stat: self
                .stat
                .map(|(dev, ino, ctime)| StatId { dev, ino, ctime }),
        })
    }
}

/// A replica error as it crosses the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WError {
    /// 0 io, 1 changed, 2 hash mismatch, 3 symlink parent, 4 not empty, 5 protocol.
    pub class: u8,
    pub path: String,
    pub message: String,
    pub io_kind: u8,
}

const IO_KINDS: &[io::ErrorKind] = &[
    io::ErrorKind::Other,
    io::ErrorKind::NotFound,
    io::ErrorKind::PermissionDenied,
    io::ErrorKind::AlreadyExists,
    io::ErrorKind::InvalidInput,
    io::ErrorKind::InvalidData,
    io::ErrorKind::Unsupported,
    io::ErrorKind::NotADirectory,
    io::ErrorKind::IsADirectory,
    io::ErrorKind::DirectoryNotEmpty,
    io::ErrorKind::StorageFull,
    io::ErrorKind::UnexpectedEof,
    io::ErrorKind::BrokenPipe,
];

impl WError {
    pub fn from_err(e: &ReplicaError) -> WError {
        let (class, path, message, io_kind) = match e {
            ReplicaError::Io { path, source } => (
                0,
                path.clone(),
                source.to_string(),
                IO_KINDS
                    .iter()
                    .position(|k| *k == source.kind())
                    .unwrap_or(0) as u8,
            ),
            ReplicaError::Changed(p) => (1, p.clone(), String::new(), 0),
            ReplicaError::HashMismatch(p) => (2, p.clone(), String::new(), 0),
            ReplicaError::SymlinkParent(p) => (3, p.clone(), String::new(), 0),
            ReplicaError::NotEmpty(p) => (4, p.clone(), String::new(), 0),
        };
        WError {
            class,
            path,
            message,
            io_kind,
        }
    }

    pub fn protocol(msg: impl Into<String>) -> WError {
        WError {
            class: 5,
            path: String::new(),
            message: msg.into(),
            io_kind: 0,
        }
    }

    pub fn into_err(self) -> ReplicaError {
        match self.class {
            1 => ReplicaError::Changed(self.path),
            2 => ReplicaError::HashMismatch(self.path),
            3 => ReplicaError::SymlinkParent(self.path),
            4 => ReplicaError::NotEmpty(self.path),
            0 => ReplicaError::Io {
                path: self.path,
                source: io::Error::new(
                    IO_KINDS
                        .get(self.io_kind as usize)
                        .copied()
                        .unwrap_or(io::ErrorKind::Other),
                    self.message,
                ),
            },
            _ => ReplicaError::Io {
                path: if self.path.is_empty() {
                    "remote agent".into()
                } else {
                    self.path
                },
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("protocol error: {}", self.message),
                ),
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WProbe {
    Missing,
    Unmarked { empty: bool },
    Marked(String),
}

impl WProbe {
    pub fn from_probe(p: &Probe) -> WProbe {
        match p {
            Probe::Missing => WProbe::Missing,
            Probe::Unmarked { empty } => WProbe::Unmarked { empty: *empty },
            Probe::Marked(id) => WProbe::Marked(id.clone()),
        }
    }
    pub fn into_probe(self) -> Probe {
        match self {
            WProbe::Missing => Probe::Missing,
            WProbe::Unmarked { empty } => Probe::Unmarked { empty },
            WProbe::Marked(id) => Probe::Marked(id),
        }
    }
}

/// One step of rebuilding a file at the receiver: bytes from a basis file it already has,
/// or new bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WOp {
    Copy { basis: u8, offset: u64, len: u64 },
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// Group signatures of a new file, as `PushSigs` sends them: the groups it shares with a
/// basis file by reference (the agent has those: it sent them), the others in full.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WGroups {
    /// `count` groups of basis file `basis` from its group number `first`.
    Basis {
        basis: u8,
        first: u32,
        count: u32,
    },
    Sigs(Vec<Sig>),
}

/// Client -> agent. Paths are `/`-separated, relative to the agent's root, and validated
/// by the agent before any use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Req {
    Probe,
    WriteMarker(String),
    CleanTemp,
    /// Scan with these `paths`/`ignore` patterns; answered by `ScanBatch`es then `ScanEnd`.
    /// Hashes are sent only for files the agent hashed in this scan.
    Scan {
        paths: Vec<String>,
        ignore: Vec<String>,
        checksum: bool,
        only: Vec<String>,
    },
    /// Hashes (from the last scan) of files the client has no cached hash for.
    Hashes(Vec<String>),
    Entry {
        path: String,
        hash: bool,
    },
    /// Open a file for reading under a client-chosen handle (no answer unless it fails,
    /// then the next request on the handle fails).
    Open {
        handle: u32,
        path: String,
    },
    /// Bytes of an open file: `Data`..., `DataEnd`.
    Read {
        handle: u32,
        ranges: Vec<(u64, u64)>,
    },
    /// BLAKE3 of the first `len` bytes of an open file (or of a push's basis file).
    PrefixHash {
        handle: u32,
        basis: u8,
        len: u64,
    },
    /// Group signatures of an open file (`basis` 0) or of a push's basis file:
    /// `Sigs`..., `SigsEnd`.
    Groups {
        handle: u32,
        basis: u8,
    },
    /// Chunk signatures of byte ranges (group extents): one `Sigs` per range, `SigsEnd`.
    Chunks {
        handle: u32,
        basis: u8,
        ranges: Vec<(u64, u64)>,
    },
    Close {
        handle: u32,
    },
    /// Start receiving a file. Answered (unless `direct`) by `PushReady` with the basis
    /// files the agent can rebuild from: the current file at `path` and a partial transfer
    /// of the same content left by an interrupted run.
    PushBegin {
        handle: u32,
        path: String,
        meta: WEntry,
        direct: bool,
    },
    PushData {
        handle: u32,
        ops: Vec<WOp>,
    },
    /// Finish: verify, answer `Staged` (or an error).
    PushEnd {
        handle: u32,
    },
    StageSymlink(String),
    Discard(String),
    Flush,
    Install {
        token: String,
        hash: Option<[u8; 32]>,
        path: String,
        expect: Option<WEntry>,
        run: String,
    },
    Remove {
        path: String,
        expect: WEntry,
        run: String,
    },
    Rename {
        from: String,
        to: String,
        expect: WEntry,
    },
    Mkdir {
        path: String,
        mode: u32,
        expect: Option<WEntry>,
        run: String,
    },
    SetMode {
        path: String,
        mode: u32,
        expect: WEntry,
    },
    /// Save the agent's scan cache and exit.
    Bye,
    // ----- feature `versions1` -----
    /// Kept versions (of `path` only, or all of them): `Versions`..., `VersionsEnd`.
    ListVersions {
        path: Option<String>,
    },
    /// Stage a copy of a kept version (an id from `ListVersions`): `Staged`.
    StageVersion(String),
    /// Delete a kept version: `Count` (bytes freed).
    RemoveVersion(String),
    /// Stage a copy of the first `len` bytes of a file (undoing an append): `Staged`.
    StagePrefix {
        path: String,
        len: u64,
    },
    // ----- feature `append1` -----
    /// Append to `path` in place, which must still be `expect`; the result must be `meta`.
    /// Answered `Ok` (go on: `PushData` with literal data, then `AppendEnd`) or an error.
    AppendBegin {
        handle: u32,
        path: String,
        expect: WEntry,
        meta: WEntry,
    },
    /// Make the appended tail durable and check the whole file against the announced hash
    /// (on a mismatch the file is cut back to its old length): `Changed`.
    AppendEnd {
        handle: u32,
    },
    // ----- feature `watch1` -----
    /// Watch the root for changes under these patterns: `WatchMode` ("native" or
    /// "polling"), then `Events` whenever something changed, for the rest of the session.
    Watch {
        paths: Vec<String>,
        ignore: Vec<String>,
        /// Use the polling watcher even where native events exist.
        poll: bool,
        poll_ms: u64,
        /// Quiet time before a batch of events is sent.
        debounce_ms: u64,
    },
    /// The current (unhashed) state of these paths: `Entries`.
    Entries(Vec<String>),
    /// Save the scan cache now (a long-lived session outlives many runs); no answer.
    Checkpoint,
    // ----- feature `sigs1` -----
    /// Group signatures of the file a push builds (the client's, in order; more messages
    /// add to them); no answer. Kept with the file once it is installed.
    PushSigs {
        handle: u32,
        groups: Vec<WGroups>,
    },
}

impl Req {
    /// The request's kind, for timing reports.
    pub fn name(&self) -> &'static str {
        match self {
            Req::Probe => "Probe",
            Req::WriteMarker(_) => "WriteMarker",
            Req::CleanTemp => "CleanTemp",
            Req::Scan { .. } => "Scan",
            Req::Hashes(_) => "Hashes",
            Req::Entry { .. } => "Entry",
            Req::Open { .. } => "Open",
            Req::Read { .. } => "Read",
            Req::PrefixHash { .. } => "PrefixHash",
            Req::Groups { .. } => "Groups",
            Req::Chunks { .. } => "Chunks",
            Req::Close { .. } => "Close",
            Req::PushBegin { .. } => "PushBegin",
            Req::PushData { .. } => "PushData",
            Req::PushEnd { .. } => "PushEnd",
            Req::StageSymlink(_) => "StageSymlink",
            Req::Discard(_) => "Discard",
            Req::Flush => "Flush",
            Req::Install { .. } => "Install",
            Req::Remove { .. } => "Remove",
            Req::Rename { .. } => "Rename",
            Req::Mkdir { .. } => "Mkdir",
            Req::SetMode { .. } => "SetMode",
            Req::Bye => "Bye",
            Req::ListVersions { .. } => "ListVersions",
            Req::StageVersion(_) => "StageVersion",
            Req::RemoveVersion(_) => "RemoveVersion",
            Req::StagePrefix { .. } => "StagePrefix",
            Req::AppendBegin { .. } => "AppendBegin",
            Req::AppendEnd { .. } => "AppendEnd",
            Req::Watch { .. } => "Watch",
            Req::Entries(_) => "Entries",
            Req::Checkpoint => "Checkpoint",
            Req::PushSigs { .. } => "PushSigs",
        }
    }
}

/// Agent -> client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resp {
    Ok,
    Err(WError),
    Probe(WProbe),
    Count(u64),
    ScanBatch(Vec<(String, WEntry)>),
    ScanEnd {
        errors: Vec<(String, String)>,
        hashed_files: u64,
        hashed_bytes: u64,
        started_ns: i64,
    },
    Hashes(Vec<Option<[u8; 32]>>),
    Entry(Option<WEntry>),
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    DataEnd,
    Hash([u8; 32]),
    Sigs(Vec<Sig>),
    SigsEnd,
    /// Basis files for a push: (length, hash if known without reading it).
    PushReady(Vec<(u64, Option<[u8; 32]>)>),
    Staged {
        token: String,
        hash: Option<[u8; 32]>,
    },
    Changed {
        entry: WEntry,
        version: Option<String>,
    },
    Version(Option<String>),
    // ----- feature `versions1` -----
    Versions(Vec<WVersion>),
    VersionsEnd,
    // ----- feature `watch1` -----
    /// The watcher the agent runs: "native" or "polling".
    WatchMode(String),
    /// Paths that changed under the root (relative, `/`-separated); `rescan`: events were
    /// lost (overflow, the watcher failed), everything must be looked at.
    Events {
        paths: Vec<String>,
        rescan: bool,
    },
    Entries(Vec<Result<Option<WEntry>, String>>),
}

impl Resp {
    /// Whether this ends the answer to a request.
    pub fn is_terminal(&self) -> bool {
        !matches!(
            self,
            Resp::ScanBatch(_)
                | Resp::Data(_)
                | Resp::Sigs(_)
                | Resp::Versions(_)
                | Resp::WatchMode(_)
                | Resp::Events { .. }
        )
    }
}

/// A kept version as it crosses the wire (see [`VersionInfo`](crate::replica::VersionInfo)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WVersion {
    pub id: String,
    pub run: String,
    pub path: String,
    pub kind: u8,
    pub size: u64,
    pub mtime: i64,
}

impl WVersion {
    pub fn from_info(v: &crate::replica::VersionInfo) -> WVersion {
        WVersion {
            id: v.id.clone(),
            run: v.run.clone(),
            path: v.path.clone(),
            kind: kind_code(v.kind),
            size: v.size,
            mtime: v.mtime,
        }
    }

    /// Checked: the id has the shape of a version id, the kind is known.
    pub fn to_info(&self) -> Result<crate::replica::VersionInfo, String> {
        let rest = self
            .id
            .strip_prefix(".fedsync/versions/")
            .ok_or_else(|| format!("{:?} is not a version id", self.id))?;
        crate::path::RelPath::new(rest).map_err(|e| format!("version id: {e}"))?;
        crate::path::RelPath::new(&self.path).map_err(|e| format!("version path: {e}"))?;
        Ok(crate::replica::VersionInfo {
            id: self.id.clone(),
            run: self.run.clone(),
            path: self.path.clone(),
            kind: kind_of(self.kind)?,
            size: self.size,
            mtime: self.mtime,
        })
    }
}

fn kind_code(k: Kind) -> u8 {
    match k {
        Kind::File => 0,
        Kind::Dir => 1,
        Kind::Symlink => 2,
    }
}

fn kind_of(k: u8) -> Result<Kind, String> {
    match k {
        0 => Ok(Kind::File),
        1 => Ok(Kind::Dir),
        2 => Ok(Kind::Symlink),
        k => Err(format!("unknown entry kind {k}")),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame<T> {
    pub id: u32,
    pub body: T,
}

// ---------------------------------------------------------------------------------------
// Framing

/// Counts bytes through a reader or writer (what crossed the transport).
pub struct Counted<T> {
    pub inner: T,
    pub count: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<T: Read> Read for Counted<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

impl<T: Write> Write for Counted<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes frames, compressed when the session negotiated zstd.
pub struct FrameWriter {
    out: Box<dyn Write + Send>,
    buf: Vec<u8>,
    unflushed: usize,
}

impl FrameWriter {
    pub fn new(w: Box<dyn Write + Send>, zstd: bool) -> io::Result<FrameWriter> {
        let out: Box<dyn Write + Send> = if zstd {
            let level = std::env::var("FEDSYNC_ZSTD_LEVEL")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(3);
            Box::new(zstd::stream::write::Encoder::new(w, level)?)
        } else {
            w
        };
        Ok(FrameWriter {
            out,
            buf: Vec::new(),
            unflushed: 0,
        })
    }

    /// Queue one frame (written through, but not flushed to the peer yet).
    pub fn send<T: Serialize>(&mut self, id: u32, body: &T) -> io::Result<()> {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; 4]);
        let frame = Frame { id, body };
        let buf = std::mem::take(&mut self.buf);
        let mut buf = postcard::to_extend(&frame, buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let len = buf.len() - 4;
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame of {len} bytes exceeds the limit"),
            ));
        }
        buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
        let r = self.out.write_all(&buf);
        self.unflushed += buf.len();
        self.buf = buf;
        r?;
        // Keep the pipe moving during long streams.
        if self.unflushed >= 4 << 20 {
            self.flush()?;
        }
        Ok(())
    }

    /// Push everything queued to the peer (a zstd flush: decodable up to here).
    pub fn flush(&mut self) -> io::Result<()> {
        self.unflushed = 0;
        self.out.flush()
    }

    /// Finish the stream (at the end of a session).
    pub fn finish(self) -> io::Result<()> {
        let mut out = self.out;
        out.flush()
    }
}

/// Reads frames; refuses one longer than [`MAX_FRAME`] before allocating it.
pub struct FrameReader {
    input: Box<dyn Read + Send>,
}

impl FrameReader {
    pub fn new<R: BufRead + Send + 'static>(r: R, zstd: bool) -> io::Result<FrameReader> {
        let input: Box<dyn Read + Send> = if zstd {
            Box::new(zstd::stream::read::Decoder::with_buffer(r)?)
        } else {
            Box::new(r)
        };
        Ok(FrameReader { input })
    }

    /// The next frame; `None` at a clean end of stream.
    pub fn recv<T: for<'de> Deserialize<'de>>(&mut self) -> io::Result<Option<Frame<T>>> {
        let mut len = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match self.input.read(&mut len[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the peer sent a frame of {len} bytes (limit {MAX_FRAME})"),
            ));
        }
        let mut buf = vec![0u8; len];
        self.input.read_exact(&mut buf)?;
        decode(&buf).map(Some)
    }
}

/// Decode one frame body (the fuzzed entry point).
pub fn decode<T: for<'de> Deserialize<'de>>(buf: &[u8]) -> io::Result<Frame<T>> {
    postcard::from_bytes(buf).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("undecodable message from the peer: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip<
        T: Serialize
            + for<'de> Deserialize<'de>
            + PartialEq
            + std::fmt::Debug
            + Clone
            + Send
            + 'static,
    >(
        v: T,
        zstd: bool,
    ) {
        let (r, w) = std::io::pipe().unwrap();
        let v2 = v.clone();
        let t = std::thread::spawn(move || {
            let mut fw = FrameWriter::new(Box::new(w), zstd).unwrap();
            fw.send(7, &v2).unwrap();
            fw.flush().unwrap();
        });
        let mut fr = FrameReader::new(std::io::BufReader::new(r), zstd).unwrap();
        let f: Frame<T> = fr.recv().unwrap().unwrap();
        assert_eq!((f.id, f.body), (7, v));
        t.join().unwrap();
    }

    #[test]
    fn frames_round_trip() {
        for z in [false, true] {
            roundtrip(
                Req::Scan {
                    paths: vec!["docs/".into()],
                    ignore: vec![],
                    checksum: true,
                    only: vec![],
                },
                z,
            );
            roundtrip(Resp::Data(vec![1; 100_000]), z);
            roundtrip(
                Resp::ScanEnd {
                    errors: vec![("a".into(), "b".into())],
                    hashed_files: 3,
                    hashed_bytes: 4,
                    started_ns: -5,
                },
                z,
            );
        }
    }

    #[test]
    fn hello_lines() {
        let h = Hello::ours();
        assert_eq!(Hello::parse(AGENT_HELLO, &h.line(AGENT_HELLO)), Some(h));
        assert_eq!(
            Hello::parse(AGENT_HELLO, "bash: fedsync: command not found"),
            None
        );
        let old = Hello::parse(CLIENT_HELLO, "FEDSYNC-CLIENT 0 0.0.1 \n").unwrap();
        assert_eq!(old.protocol, 0);
        assert!(old.features.is_empty());
    }

    #[test]
    fn oversized_frames_are_refused_before_allocation() {
        let mut bytes = (u32::MAX).to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 16]);
        let mut fr = FrameReader::new(std::io::Cursor::new(bytes), false).unwrap();
        let e = fr.recv::<Req>().unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Arbitrary bytes never panic the decoder, and never make it allocate more than the
        /// frame (postcard caps collection preallocation; strings and vectors need their
        /// bytes to be present).
        #[test]
        fn decoder_survives_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = decode::<Req>(&bytes);
            let _ = decode::<Resp>(&bytes);
            let mut fr = FrameReader::new(std::io::Cursor::new(bytes.clone()), false).unwrap();
            while let Ok(Some(_)) = fr.recv::<Req>() {}
            // The same bytes as a (corrupt) zstd stream.
            if let Ok(mut fr) = FrameReader::new(std::io::Cursor::new(bytes), true) {
                while let Ok(Some(_)) = fr.recv::<Resp>() {}
            }
        }

        /// Valid frames with mutated bytes decode or fail cleanly.
        #[test]
        fn decoder_survives_mutations(pos in 0usize..200, val in any::<u8>(), n in 0usize..5) {
            let msg = Frame { id: 3, body: Req::Install {
                token: "abc".into(), hash: Some([7; 32]), path: "a/b".into(),
                expect: Some(WEntry { kind: 0, size: 5, mtime: 6, mode: 0o644, hash: None,
                    link: Some("x".into()), stat: Some((1, 2, 3)) }),
                run: "r".into() } };
            let mut b = postcard::to_allocvec(&msg).unwrap();
            for k in 0..=n {
                let i = (pos + k * 31) % b.len();
                b[i] = val.wrapping_add(k as u8);
            }
            let _ = decode::<Req>(&b);
        }
    }
}
