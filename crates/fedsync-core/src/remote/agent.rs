//! `fedsync serve ROOT`: the agent. It answers the client's requests in order, one frame
//! at a time, with the same `LocalReplica` code that serves local folders, so every safety
//! check (re-check before replace, versions, symlinked parents) holds on the remote side.
//!
//! Everything the client sends is untrusted: paths go through `RelPath`, tokens and run
//! ids are checked for shape, a push may not grow past the size it announced, and a
//! malformed frame ends the session with an error instead of a panic.

use super::delta::{self, Builder};
use super::proto::*;
use super::{set_meta, valid_token, Receiving};
use crate::config::{Profile, ReplicaAddr};
use crate::entry::{Entry, Hash, Kind};
use crate::path::RelPath;
use crate::replica::local::{LocalReplica, META_DIR, RACY_NS};
use crate::replica::{Replica, ReplicaError, ScanOptions, Staged};
use crate::rules::Rules;
use crate::store::{Cached, Store};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const CACHE_DB: &str = "agent-cache.db";
const CACHE_KEY: &str = "agent";

enum Handle {
    Read(File),
    Push(Box<Push>),
    Failed(WError),
}

struct Push {
    path: RelPath,
    meta: Entry,
    out: Option<Builder>,
    out_path: PathBuf,
    prev: Option<PathBuf>,
    basis: Vec<File>,
    err: Option<ReplicaError>,
}

/// A finished scan, for the cache: entries, hashed paths, start time, cache deltas before.
type Scanned<'a> = (&'a [(RelPath, Entry)], &'a [RelPath], i64, usize);

struct Agent {
    rep: LocalReplica,
    root: PathBuf,
    handles: HashMap<u32, Handle>,
    /// Files of the last scan: (size, mtime, hash), to answer `Hashes` and to know a push
    /// basis's hash without reading it.
    last_scan: HashMap<String, (u64, i64, Hash)>,
    /// Scan cache rows changed by writes this session (None = removed).
    cache_rows: Vec<(RelPath, Option<Cached>)>,
}

fn perr(msg: impl Into<String>) -> WError {
    WError::protocol(msg)
}

fn rel(s: &str) -> Result<RelPath, WError> {
    RelPath::new(s).map_err(|e| perr(format!("refused path from the client: {e}")))
}

fn entry(w: &WEntry) -> Result<Entry, WError> {
    w.to_entry().map_err(perr)
}

fn valid_run(run: &str) -> bool {
    !run.is_empty()
        && run.len() <= 64
        && run
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Run the agent on stdin/stdout. Returns the process exit code.
pub fn serve(root: &Path) -> i32 {
    let root = if root.is_absolute() {
        root.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(root)
    };
    match serve_io(root, io::stdin(), io::stdout()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("fedsync serve: {e}");
            3
        }
    }
}

/// The agent over any pair of streams (tests use pipes).
pub fn serve_io(
    root: PathBuf,
    input: impl Read + Send + 'static,
    output: impl Write + Send + 'static,
) -> Result<(), String> {
    let mut out = BufWriter::new(output);
    let ours = Hello::ours();
    out.write_all(ours.line(AGENT_HELLO).as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| format!("cannot write to the client: {e}"))?;
    let mut input = BufReader::with_capacity(256 * 1024, input);
    let line = read_line(&mut input, 4096)
        .map_err(|e| e.to_string())?
        .ok_or("the client closed the connection before its hello")?;
    let client = Hello::parse(CLIENT_HELLO, &line)
        .ok_or_else(|| format!("not a fedsync client: {:?}", line.trim_end()))?;
    if client.protocol != PROTOCOL {
        let msg = format!(
            "this agent (fedsync {}) speaks protocol {PROTOCOL}, the client (fedsync {}) \
             speaks protocol {}; install the same fedsync version on both machines",
            ours.version, client.version, client.protocol
        );
        let _ = writeln!(out, "{ERROR_LINE} {msg}");
        let _ = out.flush();
        return Err(msg);
    }
    let zstd = client.has("zstd");
    let common: Vec<&str> = FEATURES.iter().copied().filter(|f| client.has(f)).collect();
    writeln!(out, "{OK_LINE} {}", common.join(","))
        .and_then(|_| out.flush())
        .map_err(|e| e.to_string())?;
    let mut r = FrameReader::new(input, zstd).map_err(|e| e.to_string())?;
    let mut w = FrameWriter::new(Box::new(out), zstd).map_err(|e| e.to_string())?;
    let mut agent = Agent {
        rep: LocalReplica::new(root.clone(), root.display().to_string()),
        root,
        handles: HashMap::new(),
        last_scan: HashMap::new(),
        cache_rows: Vec::new(),
    };
    let result = (|| -> Result<(), String> {
        loop {
            let frame: Frame<Req> = match r.recv() {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => {
                    let _ = w.send(0, &Resp::Err(perr(e.to_string())));
                    let _ = w.flush();
                    return Err(format!("bad input from the client: {e}"));
                }
            };
            let bye = matches!(frame.body, Req::Bye);
            agent
                .handle(frame.id, frame.body, &mut w)
                .map_err(|e| format!("cannot write to the client: {e}"))?;
            if bye {
                return Ok(());
            }
        }
    })();
    agent.abandon_pushes();
    agent.save_cache(None);
    let _ = w.flush();
    result
}

impl Agent {
    fn tmp(&self) -> PathBuf {
        self.rep.tmp_dir()
    }

    fn marked(&self) -> bool {
        self.root.join(META_DIR).join("id").is_file()
    }

    /// The agent's own scan cache, in the root's `.fedsync/` (only once the root is marked:
    /// probing an unmarked folder never creates anything in it).
    fn store(&self) -> Option<Store> {
        if !self.marked() {
            return None;
        }
        let p = self.root.join(META_DIR).join(CACHE_DB);
        match Store::open(&p) {
            Ok(s) => Some(s),
            Err(_) => {
                // A cache from another version: start over.
                let _ = std::fs::remove_file(&p);
                Store::open(&p).ok()
            }
        }
    }

    fn save_cache(&mut self, scanned: Option<Scanned<'_>>) {
        let rows = std::mem::take(&mut self.cache_rows);
        if rows.is_empty() && scanned.is_none_or(|(_, h, _, _)| h.is_empty()) {
            return;
        }
        let Some(mut store) = self.store() else {
            return;
        };
        let limit = now_ns() - RACY_NS;
        let mut deltas: Vec<(RelPath, Option<Cached>)> = rows
            .into_iter()
            .map(|(p, c)| (p, c.filter(|c| c.mtime < limit)))
            .collect();
        if let Some((entries, hashed, started, old_deltas)) = scanned {
            let limit = started - RACY_NS;
            let threshold = (entries.len() / 8).max(2000);
            if hashed.len() + old_deltas > threshold {
                let full: Vec<(RelPath, Cached)> = entries
                    .iter()
                    .filter_map(|(p, e)| Cached::of(e, limit).map(|c| (p.clone(), c)))
                    .collect();
                let _ = store.save_cache(CACHE_KEY, &full);
            } else {
                for p in hashed {
                    if let Ok(i) = entries.binary_search_by(|(q, _)| q.cmp(p)) {
                        deltas.push((p.clone(), Cached::of(&entries[i].1, limit)));
                    }
                }
            }
        }
        if !deltas.is_empty() {
            let _ = store.save_cache_deltas(CACHE_KEY, &deltas);
        }
    }

    fn wrote(&mut self, p: &RelPath, e: &Entry) {
        self.cache_rows.push((p.clone(), Cached::of(e, i64::MAX)));
        if let (Kind::File, Some(h)) = (e.kind, e.hash) {
            self.last_scan
                .insert(p.as_str().to_string(), (e.size, e.mtime, h));
        }
    }

    fn removed(&mut self, p: &RelPath) {
        self.cache_rows.push((p.clone(), None));
        self.last_scan.remove(p.as_str());
    }

    /// Keep what partial pushes received (the next run resumes from it).
    fn abandon_pushes(&mut self) {
        for (_, h) in self.handles.drain() {
            if let Handle::Push(p) = h {
                if let Some(b) = p.out {
                    b.abandon();
                }
            }
        }
    }

    fn handle(&mut self, id: u32, req: Req, w: &mut FrameWriter) -> io::Result<()> {
        // Requests sent without an id want no answer (errors surface later).
        let reply = |w: &mut FrameWriter, r: Resp| -> io::Result<()> {
            if id != 0 {
                w.send(id, &r)?;
                w.flush()?;
            }
            Ok(())
        };
        let rerr = |e: ReplicaError| Resp::Err(WError::from_err(&e));
        match req {
            Req::Probe => {
                let r = match self.rep.probe() {
                    Ok(p) => Resp::Probe(WProbe::from_probe(&p)),
                    Err(e) => rerr(e),
                };
                reply(w, r)
            }
            Req::WriteMarker(m) => {
                let r = if m.is_empty()
                    || m.len() > 128
                    || !m.bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    Resp::Err(perr("invalid replica id"))
                } else {
                    match self.rep.write_marker(&m) {
                        Ok(()) => Resp::Ok,
                        Err(e) => rerr(e),
                    }
                };
                reply(w, r)
            }
            Req::CleanTemp => {
                let r = match self.rep.clean_temp() {
                    Ok(n) => Resp::Count(n as u64),
                    Err(e) => rerr(e),
                };
                reply(w, r)
            }
            Req::Scan {
                paths,
                ignore,
                checksum,
                only,
            } => self.scan(id, paths, ignore, checksum, only, w),
            Req::Hashes(paths) => {
                let v = paths
                    .iter()
                    .map(|p| self.last_scan.get(p).map(|x| x.2 .0))
                    .collect();
                reply(w, Resp::Hashes(v))
            }
            Req::Entry { path, hash } => {
                let r = match rel(&path) {
                    Err(e) => Resp::Err(e),
                    Ok(p) => match self.rep.entry(&p, hash) {
                        Ok(e) => Resp::Entry(e.as_ref().map(WEntry::from_entry)),
                        Err(e) => rerr(e),
                    },
                };
                reply(w, r)
            }
            Req::Open { handle, path } => {
                let h = match rel(&path) {
                    Err(e) => Handle::Failed(e),
                    Ok(p) => match self.rep.open_regular(&p) {
                        Ok(f) => Handle::Read(f),
                        Err(e) => Handle::Failed(WError::from_err(&e)),
                    },
                };
                let r = match &h {
                    Handle::Failed(e) => Resp::Err(e.clone()),
                    _ => Resp::Ok,
                };
                self.handles.insert(handle, h);
                reply(w, r)
            }
            Req::Read { handle, ranges } => {
                let f = match self.file(handle, 0) {
                    Ok(f) => f,
                    Err(e) => return reply(w, Resp::Err(e)),
                };
                let mut buf = vec![0u8; DATA_CHUNK];
                for (off, len) in ranges {
                    let mut done = 0u64;
                    while done < len {
                        let n = ((len - done) as usize).min(DATA_CHUNK);
                        let k = match f.read_at_full(&mut buf[..n], off + done) {
                            Ok(k) => k,
                            Err(e) => {
                                return reply(w, Resp::Err(perr(format!("read failed: {e}"))))
                            }
                        };
                        if k == 0 {
                            break;
                        }
                        w.send(id, &Resp::Data(buf[..k].to_vec()))?;
                        done += k as u64;
                    }
                }
                reply(w, Resp::DataEnd)
            }
            Req::PrefixHash { handle, basis, len } => {
                let r = match self.file(handle, basis) {
                    Ok(f) => match delta::prefix_hash(f, len) {
                        Ok(h) => Resp::Hash(h.0),
                        Err(e) => Resp::Err(perr(format!("prefix hash: {e}"))),
                    },
                    Err(e) => Resp::Err(e),
                };
                reply(w, r)
            }
            Req::Groups { handle, basis } => {
                let f = match self.file(handle, basis) {
                    Ok(f) => f,
                    Err(e) => return reply(w, Resp::Err(e)),
                };
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                let mut batch = Vec::new();
                let mut send_err = None;
                let r = delta::groups(f, 0, len, |s| {
                    batch.push(s);
                    if batch.len() >= SIG_BATCH && send_err.is_none() {
                        if let Err(e) = w.send(id, &Resp::Sigs(std::mem::take(&mut batch))) {
                            send_err = Some(e);
                        }
                    }
                });
                if let Some(e) = send_err {
                    return Err(e);
                }
                match r {
                    Ok(()) => {
                        w.send(id, &Resp::Sigs(batch))?;
                        reply(w, Resp::SigsEnd)
                    }
                    Err(e) => reply(w, Resp::Err(perr(format!("signature: {e}")))),
                }
            }
            Req::Chunks {
                handle,
                basis,
                ranges,
            } => {
                let f = match self.file(handle, basis) {
                    Ok(f) => f,
                    Err(e) => return reply(w, Resp::Err(e)),
                };
                for (off, len) in ranges {
                    match delta::chunks(f, off, len.min(1 << 30)) {
                        Ok(c) => w.send(id, &Resp::Sigs(c))?,
                        Err(e) => return reply(w, Resp::Err(perr(format!("signature: {e}")))),
                    }
                }
                reply(w, Resp::SigsEnd)
            }
            Req::Close { handle } => {
                if let Some(Handle::Push(p)) = self.handles.remove(&handle) {
                    if let Some(b) = p.out {
                        b.abandon();
                    }
                }
                reply(w, Resp::Ok)
            }
            Req::PushBegin {
                handle,
                path,
                meta,
                direct,
            } => {
                let h = match self.push_begin(&path, &meta, direct) {
                    Ok(p) => Handle::Push(Box::new(p)),
                    Err(e) => Handle::Failed(e),
                };
                let r = match &h {
                    Handle::Failed(e) => Resp::Err(e.clone()),
                    Handle::Push(p) => Resp::PushReady(self.basis_info(p)),
                    Handle::Read(_) => Resp::Ok,
                };
                if let Some(Handle::Push(old)) = self.handles.insert(handle, h) {
                    if let Some(b) = old.out {
                        b.abandon();
                    }
                }
                reply(w, r)
            }
            Req::PushData { handle, ops } => {
                match self.handles.get_mut(&handle) {
                    Some(Handle::Push(p)) => push_data(p, ops),
                    Some(Handle::Failed(_)) => {}
                    _ => {
                        self.handles
                            .insert(handle, Handle::Failed(perr("data for an unknown transfer")));
                    }
                }
                reply(w, Resp::Ok)
            }
            Req::PushEnd { handle } => {
                let r = match self.handles.remove(&handle) {
                    Some(Handle::Push(p)) => match self.push_end(*p) {
                        Ok((token, h)) => Resp::Staged {
                            token,
                            hash: Some(h.0),
                        },
                        Err(e) => rerr(e),
                    },
                    Some(Handle::Failed(e)) => Resp::Err(e),
                    _ => Resp::Err(perr("end of an unknown transfer")),
                };
                reply(w, r)
            }
            Req::StageSymlink(target) => {
                let r = if target.contains('\0') || target.is_empty() {
                    Resp::Err(perr("invalid symlink target"))
                } else {
                    match self.rep.stage_symlink(&target) {
                        Ok(s) => Resp::Staged {
                            token: s.token,
                            hash: None,
                        },
                        Err(e) => rerr(e),
                    }
                };
                reply(w, r)
            }
            Req::Discard(token) => {
                if valid_token(&token) {
                    self.rep.discard(Staged { token, hash: None });
                }
                reply(w, Resp::Ok)
            }
            Req::Flush => {
                let r = match self.rep.flush() {
                    Ok(()) => Resp::Ok,
                    Err(e) => rerr(e),
                };
                reply(w, r)
            }
            Req::Install {
                token,
                hash,
                path,
                expect,
                run,
            } => {
                let r = (|| -> Result<Resp, WError> {
                    if !valid_token(&token) || !valid_run(&run) {
                        return Err(perr("invalid token or run id"));
                    }
                    let p = rel(&path)?;
                    if p.is_root() {
                        return Err(perr("cannot replace the root"));
                    }
                    let expect = expect.as_ref().map(entry).transpose()?;
                    let staged = Staged {
                        token,
                        hash: hash.map(Hash),
                    };
                    match self.rep.install(staged, &p, expect.as_ref(), &run) {
                        Ok((e, v)) => {
                            self.wrote(&p, &e);
                            Ok(Resp::Changed {
                                entry: WEntry::from_entry(&e),
                                version: v,
                            })
                        }
                        Err(e) => Ok(rerr(e)),
                    }
                })();
                reply(w, r.unwrap_or_else(Resp::Err))
            }
            Req::Remove { path, expect, run } => {
                let r = (|| -> Result<Resp, WError> {
                    if !valid_run(&run) {
                        return Err(perr("invalid run id"));
                    }
                    let p = rel(&path)?;
                    if p.is_root() {
                        return Err(perr("cannot remove the root"));
                    }
                    let e = entry(&expect)?;
                    Ok(match self.rep.remove(&p, &e, &run) {
                        Ok(v) => {
                            self.removed(&p);
                            Resp::Version(v)
                        }
                        Err(e) => rerr(e),
                    })
                })();
                reply(w, r.unwrap_or_else(Resp::Err))
            }
            Req::Rename { from, to, expect } => {
                let r = (|| -> Result<Resp, WError> {
                    let (f, t) = (rel(&from)?, rel(&to)?);
                    if f.is_root() || t.is_root() {
                        return Err(perr("cannot rename the root"));
                    }
                    let e = entry(&expect)?;
                    Ok(match self.rep.rename(&f, &t, &e) {
                        Ok(ne) => {
                            self.removed(&f);
                            self.wrote(&t, &ne);
                            Resp::Changed {
                                entry: WEntry::from_entry(&ne),
                                version: None,
                            }
                        }
                        Err(e) => rerr(e),
                    })
                })();
                reply(w, r.unwrap_or_else(Resp::Err))
            }
            Req::Mkdir {
                path,
                mode,
                expect,
                run,
            } => {
                let r = (|| -> Result<Resp, WError> {
                    if !valid_run(&run) {
                        return Err(perr("invalid run id"));
                    }
                    let p = rel(&path)?;
                    if p.is_root() {
                        return Err(perr("cannot replace the root"));
                    }
                    let expect = expect.as_ref().map(entry).transpose()?;
                    Ok(
                        match self.rep.mkdir(&p, mode & 0o7777, expect.as_ref(), &run) {
                            Ok(e) => Resp::Changed {
                                entry: WEntry::from_entry(&e),
                                version: None,
                            },
                            Err(e) => rerr(e),
                        },
                    )
                })();
                reply(w, r.unwrap_or_else(Resp::Err))
            }
            Req::SetMode { path, mode, expect } => {
                let r = (|| -> Result<Resp, WError> {
                    let p = rel(&path)?;
                    let e = entry(&expect)?;
                    Ok(match self.rep.set_mode(&p, mode & 0o7777, &e) {
                        Ok(ne) => {
                            self.wrote(&p, &ne);
                            Resp::Changed {
                                entry: WEntry::from_entry(&ne),
                                version: None,
                            }
                        }
                        Err(e) => rerr(e),
                    })
                })();
                reply(w, r.unwrap_or_else(Resp::Err))
            }
            Req::Bye => {
                self.abandon_pushes();
                self.save_cache(None);
                reply(w, Resp::Ok)
            }
        }
    }

    /// The file behind a handle: an opened file (`basis` 0) or a push's basis file.
    fn file(&self, handle: u32, basis: u8) -> Result<&File, WError> {
        match self.handles.get(&handle) {
            Some(Handle::Read(f)) if basis == 0 => Ok(f),
            Some(Handle::Push(p)) => p
                .basis
                .get(basis as usize)
                .ok_or_else(|| perr("no such basis file")),
            Some(Handle::Failed(e)) => Err(e.clone()),
            _ => Err(perr("unknown file handle")),
        }
    }

    fn scan(
        &mut self,
        id: u32,
        paths: Vec<String>,
        ignore: Vec<String>,
        checksum: bool,
        only: Vec<String>,
        w: &mut FrameWriter,
    ) -> io::Result<()> {
        let fail = |w: &mut FrameWriter, e: WError| -> io::Result<()> {
            w.send(id, &Resp::Err(e))?;
            w.flush()
        };
        let mut prof = Profile::adhoc(
            ReplicaAddr::Local(PathBuf::from("/")),
            ReplicaAddr::Local(PathBuf::from("/")),
            String::new(),
            String::new(),
        );
        prof.paths = paths;
        prof.ignore = ignore;
        let rules = match Rules::compile(&prof) {
            Ok(r) => r,
            Err(e) => return fail(w, perr(format!("patterns: {e}"))),
        };
        let only = match only.iter().map(|s| rel(s)).collect::<Result<Vec<_>, _>>() {
            Ok(o) => o,
            Err(e) => return fail(w, e),
        };
        let store = self.store();
        let cache = store
            .as_ref()
            .and_then(|s| s.load_cache(CACHE_KEY).ok())
            .unwrap_or_default();
        let old_deltas = cache.delta_len();
        let scan = match self
            .rep
            .scan(&rules, &cache, &ScanOptions { checksum, only })
        {
            Ok(s) => s,
            Err(e) => return fail(w, WError::from_err(&e)),
        };
        drop(cache);
        drop(store);
        let hashed: HashSet<&RelPath> = scan.hashed_paths.iter().collect();
        self.last_scan.clear();
        let mut batch = Vec::with_capacity(SCAN_BATCH);
        for (p, e) in &scan.entries {
            let mut we = WEntry::from_entry(e);
            if let (Kind::File, Some(h)) = (e.kind, e.hash) {
                self.last_scan
                    .insert(p.as_str().to_string(), (e.size, e.mtime, h));
                if !hashed.contains(p) {
                    // The client has it cached (or asks with `Hashes`).
                    we.hash = None;
                }
            }
            batch.push((p.as_str().to_string(), we));
            if batch.len() >= SCAN_BATCH {
                w.send(id, &Resp::ScanBatch(std::mem::take(&mut batch)))?;
            }
        }
        if !batch.is_empty() {
            w.send(id, &Resp::ScanBatch(batch))?;
        }
        w.send(
            id,
            &Resp::ScanEnd {
                errors: scan
                    .errors
                    .iter()
                    .map(|(p, m)| (p.as_str().to_string(), m.clone()))
                    .collect(),
                hashed_files: scan.hashed_files,
                hashed_bytes: scan.hashed_bytes,
                started_ns: scan.started_ns,
            },
        )?;
        w.flush()?;
        self.save_cache(Some((
            &scan.entries,
            &scan.hashed_paths,
            scan.started_ns,
            old_deltas,
        )));
        Ok(())
    }

    fn push_begin(&mut self, path: &str, meta: &WEntry, direct: bool) -> Result<Push, WError> {
        let p = rel(path)?;
        if p.is_root() {
            return Err(perr("cannot write the root"));
        }
        let meta = entry(meta)?;
        if meta.kind != Kind::File {
            return Err(perr("only files are pushed"));
        }
        let mut basis = Vec::new();
        if !direct {
            // The file there now (if it is a regular file we may read).
            if let Ok(f) = self.rep.open_regular(&p) {
                basis.push(f);
            }
        }
        let recv = Receiving::begin(&self.tmp(), meta.hash, !direct)
            .map_err(|e| WError::from_err(&crate::replica::io_err(&p)(e)))?;
        let prev = recv.prev.map(|(f, path)| {
            basis.push(f);
            path
        });
        Ok(Push {
            path: p,
            meta,
            out: Some(Builder::new(recv.out)),
            out_path: recv.out_path,
            prev,
            basis,
            err: None,
        })
    }

    /// Length and (when the last scan knows it and the file did not change since) hash of
    /// each basis file; a partial transfer is hashed (it is usually small, and resuming
    /// from it is only safe when it is a true prefix).
    fn basis_info(&self, p: &Push) -> Vec<(u64, Option<[u8; 32]>)> {
        let mut out = Vec::new();
        for (i, f) in p.basis.iter().enumerate() {
            let Ok(md) = f.metadata() else {
                out.push((0, None));
                continue;
            };
            let is_partial = p.prev.is_some() && i == p.basis.len() - 1;
            let hash = if is_partial {
                delta::prefix_hash(f, md.len()).ok().map(|h| h.0)
            } else {
                use std::os::unix::fs::MetadataExt;
                let mtime = md.mtime() * 1_000_000_000 + md.mtime_nsec();
                self.last_scan
                    .get(p.path.as_str())
                    .filter(|(s, m, _)| *s == md.len() && *m == mtime)
                    .map(|x| x.2 .0)
            };
            out.push((md.len(), hash));
        }
        out
    }

    fn push_end(&mut self, mut p: Push) -> Result<(String, Hash), ReplicaError> {
        let tmp = self.tmp();
        let path = p.path.to_string();
        let builder = p.out.take().expect("builder present");
        if let Some(e) = p.err.take() {
            builder.abandon();
            return Err(e);
        }
        if builder.written() < p.meta.size {
            // The client stopped early: keep what came for the next run.
            builder.abandon();
            return Err(ReplicaError::Io {
                path,
                source: io::Error::new(io::ErrorKind::UnexpectedEof, "incomplete transfer"),
            });
        }
        let (f, h, n) = builder.finish().map_err(crate::replica::io_err(&path))?;
        if Some(h) != p.meta.hash || n != p.meta.size {
            drop(f);
            Receiving::discard(&p.out_path, p.prev.as_deref());
            return Err(ReplicaError::HashMismatch(path));
        }
        set_meta(&f, p.meta.mode, p.meta.mtime).map_err(crate::replica::io_err(&path))?;
        drop(f);
        let token = Receiving::complete(&p.out_path, p.prev.as_deref(), &tmp)
            .map_err(crate::replica::io_err(&path))?;
        Ok((token, h))
    }
}

fn push_data(p: &mut Push, ops: Vec<WOp>) {
    if p.err.is_some() {
        return;
    }
    let Some(b) = p.out.as_mut() else {
        return;
    };
    let path = p.path.to_string();
    for op in ops {
        let r = match op {
            WOp::Data(d) => {
                if b.written() + d.len() as u64 > p.meta.size {
                    Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "more data than the announced size",
                    ))
                } else {
                    b.data(&d)
                }
            }
            WOp::Copy { basis, offset, len } => match p.basis.get(basis as usize) {
                None => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "no such basis file",
                )),
                Some(_) if b.written().saturating_add(len) > p.meta.size => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "more data than the announced size",
                )),
                Some(f) => b.copy(f, offset, len),
            },
        };
        if let Err(e) = r {
            p.err = Some(ReplicaError::Io {
                path: path.clone(),
                source: e,
            });
            return;
        }
    }
}

trait ReadAtFull {
    fn read_at_full(&self, buf: &mut [u8], off: u64) -> io::Result<usize>;
}

impl ReadAtFull for File {
    /// Fill `buf` from `off` unless the file ends first; returns the bytes read.
    fn read_at_full(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let mut got = 0;
        while got < buf.len() {
            match self.read_at(&mut buf[got..], off + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drive an agent over pipes (no compression) as a hostile client would.
    fn session(root: PathBuf, reqs: Vec<(u32, Req)>) -> Vec<Frame<Resp>> {
        let (cr, aw) = std::io::pipe().unwrap();
        let (ar, mut cw) = std::io::pipe().unwrap();
        let agent = std::thread::spawn(move || serve_io(root, ar, aw));
        let mut input = BufReader::new(cr);
        read_line(&mut input, 4096).unwrap().unwrap();
        cw.write_all(format!("{CLIENT_HELLO} {PROTOCOL} test cdc1\n").as_bytes())
            .unwrap();
        let ok = read_line(&mut input, 4096).unwrap().unwrap();
        assert!(ok.starts_with(OK_LINE), "{ok}");
        let mut w = FrameWriter::new(Box::new(cw), false).unwrap();
        let n = reqs.iter().filter(|(id, _)| *id != 0).count();
        for (id, r) in &reqs {
            w.send(*id, r).unwrap();
        }
        w.send(99, &Req::Bye).unwrap();
        w.flush().unwrap();
        let mut r = FrameReader::new(input, false).unwrap();
        let mut out = Vec::new();
        while let Ok(Some(f)) = r.recv::<Resp>() {
            out.push(f);
        }
        let _ = agent.join();
        assert!(out.len() > n, "{out:?}");
        out
    }

    fn meta(data: &[u8]) -> WEntry {
        WEntry {
            kind: 0,
            size: data.len() as u64,
            mtime: 1_600_000_000_000_000_000,
            mode: 0o644,
            hash: Some(Hash::of(data).0),
            link: None,
            stat: None,
        }
    }

    #[test]
    fn hostile_requests_get_errors_and_nothing_is_written_outside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(root.join(".fedsync")).unwrap();
        std::fs::write(root.join(".fedsync/id"), "abc\n").unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let data = b"evil".to_vec();
        let mut reqs = Vec::new();
        for (i, p) in ["../escape", "/etc/evil", "a/../../b", "link/evil", ""]
            .iter()
            .enumerate()
        {
            let h = i as u32 + 1;
            reqs.push((
                0,
                Req::PushBegin {
                    handle: h,
                    path: p.to_string(),
                    meta: meta(&data),
                    direct: true,
                },
            ));
            reqs.push((
                0,
                Req::PushData {
                    handle: h,
                    ops: vec![WOp::Data(data.clone())],
                },
            ));
            reqs.push((10 + h, Req::PushEnd { handle: h }));
        }
        // Growing past the announced size, and copying from a basis that does not exist.
        reqs.push((
            0,
            Req::PushBegin {
                handle: 50,
                path: "ok.txt".into(),
                meta: meta(&data),
                direct: true,
            },
        ));
        reqs.push((
            0,
            Req::PushData {
                handle: 50,
                ops: vec![
                    WOp::Copy {
                        basis: 3,
                        offset: 0,
                        len: 4,
                    },
                    WOp::Data(vec![0; 1000]),
                ],
            },
        ));
        reqs.push((60, Req::PushEnd { handle: 50 }));
        let bad_expect = meta(&data);
        for (id, r) in [
            (
                70,
                Req::Remove {
                    path: "../outside".into(),
                    expect: bad_expect.clone(),
                    run: "r1".into(),
                },
            ),
            (
                71,
                Req::Install {
                    token: "../../x".into(),
                    hash: None,
                    path: "x".into(),
                    expect: None,
                    run: "r1".into(),
                },
            ),
            (
                72,
                Req::Mkdir {
                    path: "d".into(),
                    mode: 0o755,
                    expect: None,
                    run: "../../../tmp".into(),
                },
            ),
            (
                73,
                Req::Open {
                    handle: 80,
                    path: "link/secret".into(),
                },
            ),
        ] {
            reqs.push((id, r));
        }
        std::fs::write(outside.join("secret"), "secret").unwrap();
        let out = session(root.clone(), reqs);
        for f in &out {
            // Staging below a symlinked folder only writes `.fedsync/tmp`; installing it
            // there is refused (LocalReplica's parent check), so it may succeed.
            if f.id == 99 || f.id == 14 {
                continue;
            }
            assert!(matches!(f.body, Resp::Err(_)), "{f:?}");
        }
        let names: Vec<_> = std::fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("secret")]);
        assert!(!tmp.path().join("escape").exists());
        assert!(!root.join("ok.txt").exists() && !root.join("d").exists());
    }
}
