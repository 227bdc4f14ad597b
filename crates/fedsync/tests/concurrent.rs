//! SPEC section 5, invariant 4 under a real concurrent writer: "a change made during a run is
//! never clobbered: the target is re-checked right before it is replaced; if it changed since
//! the scan, that item is skipped and picked up next run".
//!
//! Writer threads keep modifying files on both replicas, the way people and programs do
//! (in-place rewrites, appends, write-to-temp-and-rename, new files), while `fedsync sync`
//! runs again and again. Every write is logged as (replica, path, content). The interleaving
//! differs on every run of the test, so the assertions are only the ones that must hold for
//! every interleaving:
//! - no write is lost: the last write to each path on each side is still at that path, in a
//!   keep-both conflict copy, or kept as a version on that side;
//! - nothing is torn: every file holds exactly a content somebody wrote in full;
//! - once the writers stop, at most two more syncs make both trees identical.
//!
//! Two narrower tests aim the writer at the moments a replacement is weakest: a save landing
//! between the re-check and the rename, and a file still held open by a program when it is
//! replaced (its old inode becomes a kept version).

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// Small files in the synced tree, spread over a few folders.
const SMALL: usize = 300;
const DIRS: usize = 10;
/// Large files (a few MB each).
const BIG: usize = 4;
/// Syncs run while the writers write.
const CONCURRENT_RUNS: usize = 8;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
enum Side {
    A,
    B,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::A => "a",
            Side::B => "b",
        }
    }
}

/// Identity of a content: its length and two independent 64-bit hashes of it. Contents are
/// compared by digest so that megabytes of logged writes need not be kept in memory.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Digest(u64, u64, u64);

fn digest(data: &[u8]) -> Digest {
    // Two multiply-rotate lanes over 8-byte words (fast enough unoptimized for a few MB).
    let (mut h1, mut h2) = (0x243f_6a88_85a3_08d3_u64, 0x1319_8a2e_0370_7344_u64);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h1 = (h1 ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
        h2 = (h2 ^ w.rotate_left(17))
            .wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
            .rotate_left(31);
    }
    for (i, &b) in chunks.remainder().iter().enumerate() {
        let w = u64::from(b) << (8 * i);
        h1 = (h1 ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
        h2 = (h2 ^ w).wrapping_mul(0xc2b2_ae3d_27d4_eb4f).rotate_left(31);
    }
    Digest(data.len() as u64, h1, h2)
}

/// A small deterministic generator (xorshift64*); only the writers' choices depend on it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One logged write: after it, the file written as `path` on `side` held exactly the content
/// with this digest (`head` is its first line, for messages).
#[derive(Clone, Debug)]
struct Wrote {
    side: Side,
    path: String,
    op: &'static str,
    digest: Digest,
    head: String,
}

fn head_of(data: &[u8]) -> String {
    let end = data
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(data.len())
        .min(100);
    String::from_utf8_lossy(&data[..end]).into_owned()
}

fn small_path(i: usize) -> String {
    format!("s/d{}/f{i:03}.txt", i % DIRS)
}

fn big_path(i: usize) -> String {
    format!("big/b{i}.dat")
}

/// Content of a small file: a unique first line, then a few lines of filler so that sizes
/// vary (and sometimes stay the same: same-size edits).
fn small_content(tag: &str, extra_lines: u64) -> Vec<u8> {
    let mut s = format!("{tag}\n");
    for i in 0..extra_lines {
        s.push_str(&format!("filler line {i} of a small text file\n"));
    }
    s.into_bytes()
}

/// Content of a large file: a unique first line, then `len` bytes of pseudo-random blocks
/// (one 64 KiB block of noise repeated, each copy after a numbered line; cheap to build).
fn big_content(tag: &str, len: usize) -> Vec<u8> {
    static BLOCK: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let block = BLOCK.get_or_init(|| noise(64 * 1024, 0x5eed));
    let mut v = Vec::with_capacity(len + block.len() + 200);
    v.extend_from_slice(format!("{tag}\n").as_bytes());
    let mut i = 0;
    while v.len() < len {
        v.extend_from_slice(format!("\nblock {i}\n").as_bytes());
        v.extend_from_slice(block);
        i += 1;
    }
    v.truncate(len.max(tag.len() + 1));
    v
}

/// A thread that keeps writing files on one replica until told to stop, logging every
/// write. Each replica has its own writer; their path sets overlap, so the same path is
/// also changed on both sides (conflicts).
struct Writer {
    side: Side,
    root: PathBuf,
    rng: Rng,
    seq: u64,
    /// Existing files this writer edits (its share of the initial ones, then its own new ones).
    small: Vec<String>,
    big: Vec<String>,
    /// Every write, in order.
    log: Vec<Wrote>,
    /// Every complete content this writer produced (temporary files included).
    contents: Vec<Digest>,
}

impl Writer {
    fn new(side: Side, root: &Path, seed: u64, small: Vec<String>, big: Vec<String>) -> Writer {
        Writer {
            side,
            root: root.to_path_buf(),
            rng: Rng(seed),
            seq: 0,
            small,
            big,
            log: Vec::new(),
            contents: Vec::new(),
        }
    }

    fn run(mut self, stop: &AtomicBool) -> Writer {
        while !stop.load(Ordering::Relaxed) {
            self.step();
            // Up to 1.5 ms between writes: sometimes bursts, sometimes quiet.
            let pause = self.rng.below(1500);
            thread::sleep(Duration::from_micros(pause));
        }
        self
    }

    fn tag(&self, path: &str, op: &str) -> String {
        format!(
            "{path} | {op} on {} | write #{}",
            self.side.name(),
            self.seq
        )
    }

    fn log(&mut self, path: &str, op: &'static str, data: &[u8]) {
        let d = digest(data);
        self.contents.push(d);
        self.log.push(Wrote {
            side: self.side,
            path: path.to_string(),
            op,
            digest: d,
            head: head_of(data),
        });
    }

    fn abs(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn pick_small(&mut self) -> String {
        let i = self.rng.below(self.small.len() as u64) as usize;
        self.small[i].clone()
    }

    fn step(&mut self) {
        self.seq += 1;
        // Large files: one write in 50, an append or a full in-place rewrite.
        if self.rng.below(50) == 0 {
            let i = self.rng.below(self.big.len() as u64) as usize;
            let p = self.big[i].clone();
            if self.rng.below(2) == 0 {
                let tail = big_content(&self.tag(&p, "append"), 16 * 1024);
                self.append(&p, &tail);
            } else {
                let len = 2_000_000 + self.rng.below(1_000_000) as usize;
                let data = big_content(&self.tag(&p, "rewrite"), len);
                self.rewrite(&p, &data);
            }
            return;
        }
        let r = self.rng.below(100);
        let lines = self.rng.below(5);
        match r {
            0..=34 => {
                let p = self.pick_small();
                let data = small_content(&self.tag(&p, "rewrite"), lines);
                self.rewrite(&p, &data);
            }
            35..=54 => {
                let p = self.pick_small();
                let tail = small_content(&self.tag(&p, "append"), 0);
                self.append(&p, &tail);
            }
            55..=79 => {
                let p = self.pick_small();
                let data = small_content(&self.tag(&p, "rename"), lines);
                self.rename_write(&p, &data);
            }
            80..=89 => {
                let p = format!("new/{}-{:05}.txt", self.side.name(), self.seq);
                let data = small_content(&self.tag(&p, "create"), lines);
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(self.abs(&p))
                    .unwrap_or_else(|e| panic!("create {p}: {e}"));
                f.write_all(&data)
                    .unwrap_or_else(|e| panic!("write {p}: {e}"));
                drop(f);
                self.log(&p, "create", &data);
                self.small.push(p);
            }
            _ => {
                let d = self.rng.below(DIRS as u64);
                let p = format!("s/d{d}/n-{}-{:05}.txt", self.side.name(), self.seq);
                let data = small_content(&self.tag(&p, "create via rename"), lines);
                self.rename_write(&p, &data);
                self.small.push(p);
            }
        }
    }

    /// Truncate and write in place (same inode).
    fn rewrite(&mut self, p: &str, data: &[u8]) {
        let mut f = File::create(self.abs(p)).unwrap_or_else(|e| panic!("open {p}: {e}"));
        f.write_all(data)
            .unwrap_or_else(|e| panic!("write {p}: {e}"));
        drop(f);
        self.log(p, "rewrite", data);
    }

    /// Append to whatever file is there now. The content is read through the same open file
    /// before appending, so the logged content is exactly that file's content afterwards
    /// (nobody else writes into an existing file in place: fedsync only renames).
    fn append(&mut self, p: &str, tail: &[u8]) {
        let mut f = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(self.abs(p))
            .unwrap_or_else(|e| panic!("open {p} for append: {e}"));
        let mut data = Vec::new();
        f.read_to_end(&mut data)
            .unwrap_or_else(|e| panic!("read {p}: {e}"));
        f.write_all(tail)
            .unwrap_or_else(|e| panic!("append to {p}: {e}"));
        drop(f);
        data.extend_from_slice(tail);
        self.log(p, "append", &data);
    }

    /// Write a temporary file beside the target, then rename it over the target (what most
    /// editors do on save).
    fn rename_write(&mut self, p: &str, data: &[u8]) {
        let (dir, name) = p.rsplit_once('/').expect("path with a folder");
        let tmp = format!("{dir}/.{name}.wtmp-{}-{}", self.side.name(), self.seq);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.abs(&tmp))
            .unwrap_or_else(|e| panic!("create {tmp}: {e}"));
        f.write_all(data)
            .unwrap_or_else(|e| panic!("write {tmp}: {e}"));
        drop(f);
        fs::rename(self.abs(&tmp), self.abs(p))
            .unwrap_or_else(|e| panic!("rename {tmp} -> {p}: {e}"));
        self.log(p, "rename", data);
    }
}

/// What a tree holds (without `.fedsync`), content by digest: path -> `Some((digest, first
/// line))` for a file, `None` for a folder, the link target's digest for a symlink.
type Shape = BTreeMap<String, Option<(Digest, String)>>;

fn shape(root: &Path) -> Shape {
    tree_snapshot(root)
        .into_iter()
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, n)| {
            let v = match n {
                Node::File { data, .. } => Some((digest(&data), head_of(&data))),
                Node::Dir { .. } => None,
                Node::Link { target, .. } => {
                    let t = format!("link -> {}", target.display());
                    Some((digest(t.as_bytes()), t))
                }
            };
            (k, v)
        })
        .collect()
}

/// The files of a shape: path -> (digest, first line).
fn files(s: &Shape) -> BTreeMap<&str, &(Digest, String)> {
    s.iter()
        .filter_map(|(k, v)| v.as_ref().map(|f| (k.as_str(), f)))
        .collect()
}

/// If `path` is a keep-both copy `DIR/STEM.conflict-R-YYYYMMDD-HHMMSS[-N][.EXT]`, the path
/// it is a copy of and the replica it came from.
fn conflict_origin(path: &str) -> Option<(String, String)> {
    let (dir, name) = match path.rsplit_once('/') {
        Some((d, n)) => (format!("{d}/"), n),
        None => (String::new(), path),
    };
    let at = name.find(".conflict-")?;
    let stem = &name[..at];
    let rest = &name[at + ".conflict-".len()..];
    let (replica, rest) = rest.split_once('-')?;
    if rest.len() < 15 {
        return None;
    }
    let (stamp, rest) = rest.split_at(15);
    // An optional `-N` (a free name when the first one was taken), then an optional `.EXT`.
    let rest = match rest.strip_prefix('-') {
        Some(r) => r.trim_start_matches(|c: char| c.is_ascii_digit()),
        None => rest,
    };
    let ext = match rest {
        "" => "",
        r => r.strip_prefix('.')?,
    };
    let plain = if ext.is_empty() {
        format!("{stem}.conflict-{replica}-{stamp}")
    } else {
        format!("{stem}.conflict-{replica}-{stamp}.{ext}")
    };
    if !is_conflict_name(&plain, stem, replica, ext) {
        return None;
    }
    let orig = if ext.is_empty() {
        format!("{dir}{stem}")
    } else {
        format!("{dir}{stem}.{ext}")
    };
    Some((orig, replica.to_string()))
}

/// Versions kept on one replica: original path -> digests of the kept contents.
fn kept_versions(root: &Path) -> HashMap<String, HashSet<Digest>> {
    let mut out: HashMap<String, HashSet<Digest>> = HashMap::new();
    for (run, rel) in versions(root) {
        let orig = match rel.rsplit_once('~') {
            Some((p, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => p,
            _ => rel.as_str(),
        };
        let p = root.join(".fedsync").join("versions").join(&run).join(&rel);
        if let Ok(data) = fs::read(&p) {
            out.entry(orig.to_string())
                .or_default()
                .insert(digest(&data));
        }
    }
    out
}

/// The fixture on a tmpfs when there is one (files are created and deleted by the thousand,
/// and every run flushes its replicas), else in the default temporary folder.
fn fast_fx() -> Fx {
    Fx::new_in(Path::new("/dev/shm")).unwrap_or_else(|_| Fx::new())
}

/// Exit code and report of one `sync --json` run (the report when stdout is one).
fn sync_report(fx: &Fx) -> (Out, Option<serde_json::Value>) {
    let out = fx.sync(&["--json"]);
    let rep = serde_json::from_str(&out.stdout).ok();
    (out, rep)
}

/// Items of a report that were not done, as "path (action -> target): state: reason".
fn not_done(rep: &serde_json::Value) -> Vec<String> {
    items(rep)
        .iter()
        .filter(|i| i["outcome"]["state"] != "done")
        .map(|i| {
            format!(
                "{} ({} -> {}): {}: {}",
                i["path"].as_str().unwrap_or("?"),
                i["action"].as_str().unwrap_or("?"),
                i["target"].as_str().unwrap_or("-"),
                i["outcome"]["state"].as_str().unwrap_or("?"),
                i["outcome"]["reason"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// Skipped items and conflicts of a run report.
fn skipped_and_conflicts(rep: &serde_json::Value) -> (u64, u64) {
    rep["pairs"]
        .as_array()
        .into_iter()
        .flatten()
        .fold((0, 0), |(s, c), p| {
            (
                s + p["counts"]["skipped"].as_u64().unwrap_or(0),
                c + p["counts"]["conflicts"].as_u64().unwrap_or(0),
            )
        })
}

/// Everything known about what was written: each path's content before the writers
/// started, every logged write in order, and every content known to be complete.
#[derive(Default)]
struct Ledger {
    initial: BTreeMap<String, Digest>,
    log: Vec<Wrote>,
    known: HashSet<Digest>,
}

impl Ledger {
    /// A file written on A before the writers start (fixture clock mtime).
    fn initial(&mut self, fx: &Fx, p: &str, data: &[u8]) {
        fx.write(&fx.a, p, data);
        self.known.insert(digest(data));
        self.initial.insert(p.to_string(), digest(data));
    }

    /// A change made on `side` before a sync, by the fixture (old fake mtime).
    fn change(&mut self, fx: &Fx, side: Side, p: &str, data: &[u8]) {
        let root = if side == Side::A { &fx.a } else { &fx.b };
        fx.write(root, p, data);
        self.known.insert(digest(data));
        self.log.push(Wrote {
            side,
            path: p.to_string(),
            op: "change before the run",
            digest: digest(data),
            head: head_of(data),
        });
    }

    fn add_writer(&mut self, w: &Writer) {
        self.log.extend(w.log.iter().cloned());
        self.known.extend(w.contents.iter().copied());
    }
}

/// Runs `sync` at most twice more (the writers have stopped) until both trees are identical
/// and the exit code is 0, then checks everything that must hold for any interleaving of
/// the writers with the runs. Returns the problems found (empty: all good) and a summary.
fn settle_and_check(fx: &Fx, ledger: &Ledger) -> (Vec<String>, String) {
    let mut problems = Vec::new();
    let mut finals = Vec::new();
    let (mut sa, mut sb);
    loop {
        let (out, rep) = sync_report(fx);
        sa = shape(&fx.a);
        sb = shape(&fx.b);
        let done = out.code == 0 && sa == sb;
        finals.push((out, rep));
        if done || finals.len() == 2 {
            break;
        }
    }
    let (last, last_rep) = finals.last().expect("a final sync");

    // (3) Converged: identical trees, and exit 0, or 1 with the conflicts listed in status.
    if sa != sb {
        let diff: Vec<&String> = sa
            .keys()
            .chain(sb.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|k| sa.get(*k) != sb.get(*k))
            .take(20)
            .collect();
        problems.push(format!(
            "not converged after {} syncs without writers; differing paths: {diff:?}\n{:?}",
            finals.len(),
            finals
                .iter()
                .map(|(o, r)| (o.code, r.as_ref().map(not_done)))
                .collect::<Vec<_>>()
        ));
    }
    match last.code {
        0 => {}
        1 => {
            let profile = last_rep
                .as_ref()
                .and_then(|r| r["profile"].as_str())
                .unwrap_or("?")
                .to_string();
            let st = fx.run(&["status", &profile, "--json"]);
            let listed = serde_json::from_str::<serde_json::Value>(&st.stdout)
                .ok()
                .and_then(|v| v["conflicts"].as_array().map(|c| !c.is_empty()))
                .unwrap_or(false);
            if !listed {
                problems.push(format!(
                    "last sync exited 1 but status lists no conflict: {:?}\n{last:?}\n{st:?}",
                    last_rep.as_ref().map(not_done)
                ));
            }
        }
        _ => problems.push(format!("last sync failed: {last:?}")),
    }

    // The last write to each path on each side, and every content ever written at a path.
    let mut last_write: BTreeMap<(Side, &str), &Wrote> = BTreeMap::new();
    let mut written_at: HashMap<&str, HashSet<Digest>> = HashMap::new();
    for w in &ledger.log {
        last_write.insert((w.side, &w.path), w);
        written_at.entry(&w.path).or_default().insert(w.digest);
    }
    for (p, d) in &ledger.initial {
        written_at.entry(p).or_default().insert(*d);
    }
    let (fa, fb) = (files(&sa), files(&sb));
    let vers = [kept_versions(&fx.a), kept_versions(&fx.b)];
    // Keep-both copies in the final trees: original path -> digests.
    let mut copies: HashMap<String, HashSet<Digest>> = HashMap::new();
    for (p, (d, _)) in fa.iter().chain(fb.iter()) {
        if let Some((orig, _)) = conflict_origin(p) {
            copies.entry(orig).or_default().insert(*d);
        }
    }

    // (2) Nothing torn: every file holds exactly a content somebody wrote in full. More
    // precisely, a file under a synced name holds the newest content of that path on one of
    // the sides (the initial one if nobody wrote it), a keep-both copy holds something that
    // was written at its original path, and there is nothing else (no stray temp files).
    for (tree, side) in [(&fa, "a"), (&fb, "b")] {
        for (p, (d, head)) in tree {
            if !ledger.known.contains(d) {
                problems.push(format!(
                    "TORN or unknown content at {p} on {side}: {} bytes, starts {head:?}",
                    d.0
                ));
                continue;
            }
            if let Some((orig, _)) = conflict_origin(p) {
                if !written_at.get(orig.as_str()).is_some_and(|s| s.contains(d)) {
                    problems.push(format!(
                        "keep-both copy {p} on {side} holds {head:?}, never written at {orig}"
                    ));
                }
                continue;
            }
            let newest: Vec<&Wrote> = [Side::A, Side::B]
                .iter()
                .filter_map(|s| last_write.get(&(*s, *p)).copied())
                .collect();
            let ok = if newest.is_empty() {
                ledger.initial.get(*p) == Some(d)
            } else {
                newest.iter().any(|w| w.digest == *d)
            };
            if !ok {
                let expected: Vec<&str> = newest.iter().map(|w| w.head.as_str()).collect();
                problems.push(format!(
                    "{p} on {side} holds {head:?}; expected the last write of a side: \
                     {expected:?} (the initial content if none)"
                ));
            }
        }
    }

    // (1) No write lost: the last write to each path on each side is at that path on some
    // replica, in a keep-both copy of it, or kept as a version of it on that side.
    for ((side, p), w) in &last_write {
        let at_path = [&fa, &fb]
            .iter()
            .any(|t| t.get(p).is_some_and(|(d, _)| *d == w.digest));
        let in_copy = copies.get(*p).is_some_and(|s| s.contains(&w.digest));
        let kept = vers[if *side == Side::A { 0 } else { 1 }].get(*p);
        let in_versions = kept.is_some_and(|s| s.contains(&w.digest));
        if !(at_path || in_copy || in_versions) {
            problems.push(format!(
                "LOST: the last write to {p} on {} ({}: {:?}) is nowhere: {p} holds {:?} on a, \
                 {:?} on b; {} keep-both copies of it, {} versions of it on {}",
                side.name(),
                w.op,
                w.head,
                fa.get(p).map(|(_, h)| h),
                fb.get(p).map(|(_, h)| h),
                copies.get(*p).map_or(0, |s| s.len()),
                kept.map_or(0, |s| s.len()),
                side.name(),
            ));
        }
    }

    let summary = format!(
        "{} writes logged ({} last writes); {} final sync(s), last exit {}; {} files, {} \
         keep-both copies, {} + {} versions",
        ledger.log.len(),
        last_write.len(),
        finals.len(),
        last.code,
        fa.len(),
        fa.keys().filter(|p| conflict_origin(p).is_some()).count(),
        vers[0].values().map(HashSet::len).sum::<usize>(),
        vers[1].values().map(HashSet::len).sum::<usize>(),
    );
    (problems, summary)
}

#[track_caller]
fn assert_no_problems(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Invariant 4 (and 1, 2) under two concurrent writers, one per replica, that keep editing
/// overlapping sets of files (in place, appending, saving through a temporary file, creating
/// new ones) while `fedsync sync` runs eight times in a row; then the writers stop and at
/// most two more syncs must make the replicas identical, with no write lost or torn.
#[test]
fn concurrent_writers_on_both_sides_lose_nothing_and_tear_nothing() {
    let fx = fast_fx();
    let mut ledger = Ledger::default();

    // Both replicas start synced: a few hundred small files and a few large ones.
    for i in 0..SMALL {
        let p = small_path(i);
        ledger.initial(
            &fx,
            &p,
            &small_content(&format!("{p} | initial"), (i % 4) as u64),
        );
    }
    for i in 0..BIG {
        let p = big_path(i);
        let data = big_content(&format!("{p} | initial"), 2_000_000 + i * 300_000);
        ledger.initial(&fx, &p, &data);
    }
    ledger.initial(
        &fx,
        "new/README",
        b"files created while syncing land here\n",
    );
    fx.sync(&[]).ok();
    assert_eq!(shape(&fx.a), shape(&fx.b), "initial sync");

    // Then A gets many changes (old fake mtimes), so that the first concurrent sync has
    // work: half of the small files, one large file, twenty new files.
    for i in (0..SMALL).step_by(2) {
        let p = small_path(i);
        let data = small_content(&format!("{p} | changed on a before the runs"), 1);
        ledger.change(&fx, Side::A, &p, &data);
    }
    let p = big_path(3);
    let data = big_content(&format!("{p} | rewritten on a before the runs"), 2_500_000);
    ledger.change(&fx, Side::A, &p, &data);
    for i in 0..20 {
        let p = format!("pre/p{i:02}.txt");
        let data = small_content(&format!("{p} | created on a before the runs"), 2);
        ledger.change(&fx, Side::A, &p, &data);
    }

    // The writers: A edits small files 0..200 and large files 0 and 1, B edits 100..300 and
    // 1 and 2 (so 100 small files and one large file are edited on both sides); both create
    // new files.
    let stop = Arc::new(AtomicBool::new(false));
    let wa = Writer::new(
        Side::A,
        &fx.a,
        0x9e37_79b9_7f4a_7c15,
        (0..200).map(small_path).collect(),
        vec![big_path(0), big_path(1)],
    );
    let wb = Writer::new(
        Side::B,
        &fx.b,
        0xd1b5_4a32_d192_ed03,
        (100..SMALL).map(small_path).collect(),
        vec![big_path(1), big_path(2)],
    );
    let handles: Vec<_> = [wa, wb]
        .into_iter()
        .map(|w| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || w.run(&stop))
        })
        .collect();

    // Syncs while the writers write: items changed under a run are skipped (exit 1); no run
    // fails.
    let (mut skipped, mut conflicts) = (0, 0);
    let mut problems = Vec::new();
    for n in 0..CONCURRENT_RUNS {
        let (out, rep) = sync_report(&fx);
        match &rep {
            Some(rep) => {
                let (s, c) = skipped_and_conflicts(rep);
                skipped += s;
                conflicts += c;
                if !matches!(out.code, 0 | 1) {
                    problems.push(format!(
                        "concurrent run {n} exited {}: {:#?}\n{}",
                        out.code,
                        not_done(rep),
                        out.stderr
                    ));
                }
            }
            None => problems.push(format!("concurrent run {n}: no JSON report: {out:?}")),
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        ledger.add_writer(&h.join().expect("writer thread panicked"));
    }

    let (more, summary) = settle_and_check(&fx, &ledger);
    problems.extend(more);
    eprintln!(
        "concurrent writers: {CONCURRENT_RUNS} syncs during the writes ({skipped} items \
         skipped, {conflicts} conflicts); {summary}"
    );
    assert_no_problems(&problems);
}

/// Files of the second test, all changed on A before each round.
const HOT: usize = 150;
/// Rounds of the second test.
const ROUNDS: usize = 8;

fn hot_path(i: usize) -> String {
    format!("hot/f{i:03}.txt")
}

/// A user on B who saves files (write a temporary file, rename it over the target) exactly
/// while fedsync replaces them: for each target in the order fedsync processes them, the
/// save happens the moment the old content shows up in this run's versions folder, i.e.
/// between the pre-replace re-check and the rename of the new content into place. Every
/// save is logged; returns how many were made that way.
fn save_while_replacing(
    fx: &Fx,
    child: &mut std::process::Child,
    versions_before: &HashSet<std::ffi::OsString>,
    round: usize,
    ledger: &mut Ledger,
) -> usize {
    let b = &fx.b;
    let vroot = b.join(".fedsync").join("versions");
    let exited = |c: &mut std::process::Child| c.try_wait().expect("try_wait").is_some();
    // This run's versions folder appears with the first version it keeps.
    let run_dir = loop {
        if let Ok(rd) = fs::read_dir(&vroot) {
            if let Some(d) = rd
                .flatten()
                .find(|d| !versions_before.contains(&d.file_name()))
            {
                break Some(d.path());
            }
        }
        if exited(child) {
            break None;
        }
        thread::yield_now();
    };
    let Some(run_dir) = run_dir else {
        return 0;
    };
    let mut timed = 0;
    let mut spins = 0u32;
    let mut i = 0;
    while i < HOT {
        // The save is prepared in advance; only the rename waits for the moment.
        let p = hot_path(i);
        let (dir, name) = p.rsplit_once('/').expect("folder");
        let tmp = b.join(format!("{dir}/.{name}.wtmp-b-{round}"));
        let data = small_content(
            &format!("{p} | saved on b while fedsync replaced it, round {round}"),
            (i % 3) as u64,
        );
        fs::write(&tmp, &data).expect("write temp");
        loop {
            let kept = fs::symlink_metadata(run_dir.join(&p)).is_ok();
            // Not kept (yet): the item may have been skipped, or the run may be over (looked
            // at every 32 spins only, to keep the loop tight).
            spins = (spins + 1) % 32;
            let move_on = !kept
                && spins == 0
                && (exited(child)
                    || (i + 1 < HOT
                        && fs::symlink_metadata(run_dir.join(hot_path(i + 1))).is_ok()));
            if kept || move_on {
                fs::rename(&tmp, b.join(&p)).expect("rename the save into place");
                timed += usize::from(kept);
                break;
            }
        }
        ledger.known.insert(digest(&data));
        ledger.log.push(Wrote {
            side: Side::B,
            path: p.clone(),
            op: "save while replaced",
            digest: digest(&data),
            head: head_of(&data),
        });
        i += 1;
    }
    timed
}

/// Invariant 4 at its narrowest point: a save on the target side (temporary file renamed
/// over the target, as editors do) that lands right after fedsync re-checked the target and
/// kept its old content as a version, just before fedsync renames the new content into
/// place. Such a save is a change made during the run; it must not be clobbered (it may end
/// up under the name, as a keep-both copy or as a version, but it must be somewhere).
#[test]
fn a_save_while_the_target_is_being_replaced_is_not_clobbered() {
    let fx = fast_fx();
    let mut ledger = Ledger::default();
    for i in 0..HOT {
        let p = hot_path(i);
        ledger.initial(&fx, &p, &small_content(&format!("{p} | initial"), 1));
    }
    fx.sync(&[]).ok();

    let mut problems = Vec::new();
    let (mut timed, mut skipped) = (0, 0);
    for round in 0..ROUNDS {
        // A changes every file, so the run replaces every file on B.
        for i in 0..HOT {
            let p = hot_path(i);
            let data = small_content(&format!("{p} | changed on a, round {round}"), 2);
            ledger.change(&fx, Side::A, &p, &data);
        }
        let vroot = fx.b.join(".fedsync").join("versions");
        let before: HashSet<std::ffi::OsString> = fs::read_dir(&vroot)
            .map(|rd| rd.flatten().map(|d| d.file_name()).collect())
            .unwrap_or_default();
        let out_path = fx.dir.join(format!("round-{round}.json"));
        let mut child = fx
            .command(&["sync", fx.a_str(), fx.b_str(), "--json"])
            .stdout(File::create(&out_path).expect("report file"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn fedsync sync");
        let first = ledger.log.len();
        timed += save_while_replacing(&fx, &mut child, &before, round, &mut ledger);
        let status = child.wait().expect("wait for fedsync");
        let report: Option<serde_json::Value> = fs::read_to_string(&out_path)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok());
        // Each save of this round must be on B now: under its name, or kept as a version
        // (nothing else writes there until the next round).
        let kept = kept_versions(&fx.b);
        for w in &ledger.log[first..] {
            let now = fs::read(fx.b.join(&w.path)).map(|d| digest(&d)).ok();
            let in_versions = kept.get(&w.path).is_some_and(|s| s.contains(&w.digest));
            if now != Some(w.digest) && !in_versions {
                let outcome = report.as_ref().and_then(|r| {
                    items(r)
                        .into_iter()
                        .find(|i| i["path"] == w.path.as_str())
                        .map(|i| i["outcome"].clone())
                });
                problems.push(format!(
                    "LOST in round {round}: the save {:?} of {} on b is neither there nor kept \
                     as a version (the run reported {})",
                    w.head,
                    w.path,
                    outcome.map_or("nothing".into(), |o| o.to_string())
                ));
            }
        }
        if let Some(rep) = &report {
            skipped += skipped_and_conflicts(rep).0;
        }
        if !matches!(status.code(), Some(0 | 1)) {
            problems.push(format!(
                "round {round}: sync exited {status:?}: {:?}",
                report.as_ref().map(not_done)
            ));
        }
        // A quiet run brings B's saves to A before the next round.
        let (out, rep) = sync_report(&fx);
        if !matches!(out.code, 0 | 1) {
            problems.push(format!(
                "round {round}: the quiet sync exited {}: {:?}",
                out.code,
                rep.as_ref().map(not_done)
            ));
        }
    }

    let (more, summary) = settle_and_check(&fx, &ledger);
    problems.extend(more);
    eprintln!(
        "saves while replacing: {ROUNDS} rounds, {timed} saves timed on a kept version, \
         {skipped} items skipped; {summary}"
    );
    assert_no_problems(&problems);
}

/// A program on B keeps a file open (a logger, a database) across a sync that replaces it:
/// its later writes go to the old file, which is now the version fedsync kept. That is
/// fine for that file, but they must not reach any other kept version: here another file
/// had the same content, and its version must still hold that content.
#[test]
fn a_file_held_open_across_a_sync_changes_no_other_kept_version() {
    let fx = fast_fx();
    let mut ledger = Ledger::default();
    for i in 0..20 {
        let p = format!("logs/m{i:02}.log");
        ledger.initial(&fx, &p, &small_content(&format!("{p} | initial"), 1));
    }
    ledger.initial(&fx, "logs/a.log", b"a initial\n");
    ledger.initial(&fx, "logs/z.log", b"z initial\n");
    fx.sync(&[]).ok();

    // On B, the two logs get the same content in the same clock tick (a rotation writes the
    // same header to both; the mtime is coarser than the time between the two writes), which
    // reaches A.
    let header = small_content("log header written on b to logs/a.log and logs/z.log", 2);
    ledger.change(&fx, Side::B, "logs/a.log", &header);
    ledger.change(&fx, Side::B, "logs/z.log", &header);
    let tick = mtime_of(&fx.b.join("logs/z.log"));
    set_mtime(&fx.b.join("logs/a.log"), tick.0, tick.1);
    fx.sync(&[]).ok();
    assert_eq!(read_bytes(&fx.a, "logs/z.log"), header);

    // A logger on B opens logs/a.log for appending and keeps it open; A changes both logs;
    // the sync replaces both on B, keeping B's content as versions.
    let mut logger = OpenOptions::new()
        .read(true)
        .append(true)
        .open(fx.b.join("logs/a.log"))
        .expect("open logs/a.log on b");
    ledger.change(&fx, Side::A, "logs/a.log", b"a rewritten on a\n");
    ledger.change(&fx, Side::A, "logs/z.log", b"z rewritten on a\n");
    fx.sync(&[]).ok();
    assert_eq!(read_bytes(&fx.b, "logs/z.log"), b"z rewritten on a\n");

    // The logger writes a line through the file it holds (now the kept version of a.log).
    let tail = b"a line the logger on b wrote after the sync\n";
    logger
        .write_all(tail)
        .expect("append through the open file");
    let mut held = Vec::new();
    logger
        .seek(std::io::SeekFrom::Start(0))
        .and_then(|_| logger.read_to_end(&mut held))
        .expect("read back through the open file");
    drop(logger);
    assert_eq!(held, [header.as_slice(), tail].concat());
    ledger.known.insert(digest(&held));
    ledger.log.push(Wrote {
        side: Side::B,
        path: "logs/a.log".into(),
        op: "append through a file held open",
        digest: digest(&held),
        head: head_of(&held),
    });

    // B's last content of logs/z.log (the header) must still be kept as its version.
    let (problems, summary) = settle_and_check(&fx, &ledger);
    eprintln!("file held open: {summary}");
    assert_no_problems(&problems);
}
