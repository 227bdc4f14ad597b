//! Content merges for paths under a `merge = "append" | "union" | "text"` rule (SPEC section 4).
//!
//! PURE: no clock-dependent results (except the diff deadline noted on [`text`]), no file
//! writes. Everything works on bytes (`&[u8]`); nothing assumes UTF-8 except [`text`],
//! which refuses input that is not UTF-8 text.
//!
//! The three merges and what the engine does with their [`MergeOutcome`]:
//!
//! | outcome | engine action |
//! |---|---|
//! | [`MergeOutcome::Clean`] | write the bytes to both sides (a side already holding them is left alone) |
//! | [`MergeOutcome::Conflicted`] | write the bytes (with conflict markers) to both sides, flag the path for review, exit 1 |
//! | [`MergeOutcome::FastForward`] | append the other side's bytes from `tail_from` to the `target` side |
//! | [`MergeOutcome::Fallback`] | apply `keep-both` instead, and say why (the string) in `plan` and the audit trail |
//!
//! Before writing a merge result the engine checks it under the path's validator, if any
//! (an invalid result also falls back to `keep-both`). [`MergeOutcome::content`] gives the
//! merged bytes for that check.
//!
//! Append-only files can be huge (a 500 MB log), so the append merge also has a streaming
//! form, [`append_plan`], which decides from lengths and BLAKE3 hashes (plus a few bytes
//! read at known offsets) and returns a byte-range recipe per side ([`AppendPlan::recipe`]);
//! see its documentation for the exact protocol. [`append`] is the same decision on
//! in-memory slices.

use crate::entry::Hash;
pub use crate::reconcile::Side;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Largest input (each of base, A and B) that [`union`] and [`text`] load and merge; bigger
/// files fall back to `keep-both`. [`append_plan`] has no cap (it never loads the files).
pub const MAX_MERGE_BYTES: usize = 64 << 20;

/// How many leading bytes are searched for a NUL byte to call a file binary.
pub const BINARY_SNIFF_BYTES: usize = 8 << 10;

/// Time budget of each of the two line diffs of a [`text`] merge. Past it the diff stops
/// looking for the minimal edit script and treats the rest as replaced, so pathological
/// inputs produce a (correct but coarser) conflicted result instead of hanging.
pub const TEXT_DIFF_DEADLINE: Duration = Duration::from_secs(5);

/// The result of a merge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MergeOutcome {
    /// The merged content; write it to both sides.
    Clean(Vec<u8>),
    /// A [`text`] merge with overlapping edits: the content carries conflict markers. Write it
    /// to both sides and flag the path for review.
    Conflicted(Vec<u8>),
    /// Append only: the `target` side holds a strict prefix of the other side. The merged
    /// content is the other side's; bring `target` to it by appending the other side's bytes
    /// from offset `tail_from` (which is `target`'s current length) to its end.
    FastForward { target: Side, tail_from: u64 },
    /// The merge cannot apply; the reason is meant for `plan` and the audit trail. The engine
    /// applies `keep-both`.
    Fallback(String),
}

impl MergeOutcome {
    /// The merged bytes, given the two inputs of the merge (`a`, `b`): `None` for a fallback.
    /// For a fast-forward that is the non-target side's content.
    pub fn content<'s>(&'s self, a: &'s [u8], b: &'s [u8]) -> Option<&'s [u8]> {
        match self {
            MergeOutcome::Clean(v) | MergeOutcome::Conflicted(v) => Some(v),
            MergeOutcome::FastForward {
                target: Side::A, ..
            } => Some(b),
            MergeOutcome::FastForward {
                target: Side::B, ..
            } => Some(a),
            MergeOutcome::Fallback(_) => None,
        }
    }

    /// The fallback reason, if this is a fallback.
    pub fn fallback_reason(&self) -> Option<&str> {
        match self {
            MergeOutcome::Fallback(r) => Some(r),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// append
// ---------------------------------------------------------------------------------------

/// Length and BLAKE3 hash of one version of a file (the base, or a side's current content).
/// `hash` is the full-content hash, as recorded by scans ([`Hash::of`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Content {
    pub len: u64,
    pub hash: Hash,
}

impl Content {
    pub fn of(data: &[u8]) -> Content {
        Content {
            len: data.len() as u64,
            hash: Hash::of(data),
        }
    }
}

/// Read access that [`append_plan`] needs to the two sides' current files. Implement it over
/// whatever the replica is (a local file, a remote replica that can hash a prefix where the
/// file is, so the prefix never crosses the network); [`FileProbe`] and [`SliceProbe`] are
/// ready-made.
pub trait AppendProbe {
    /// BLAKE3 hash ([`Hash::of`]) of the first `len` bytes of `side`'s file. `append_plan`
    /// only asks for `len` no larger than the side's [`Content::len`].
    fn prefix_hash(&mut self, side: Side, len: u64) -> io::Result<Hash>;
    /// Up to `len` bytes of `side`'s file from `offset` (fewer at the end of the file).
    /// `append_plan` asks for at most 64 KiB per call, a handful of calls per plan.
    fn read_at(&mut self, side: Side, offset: u64, len: usize) -> io::Result<Vec<u8>>;
}

/// An [`AppendProbe`] over two in-memory contents.
pub struct SliceProbe<'x> {
    pub a: &'x [u8],
    pub b: &'x [u8],
}

impl SliceProbe<'_> {
    fn side(&self, side: Side) -> &[u8] {
        match side {
            Side::A => self.a,
            Side::B => self.b,
        }
    }
}

impl AppendProbe for SliceProbe<'_> {
    fn prefix_hash(&mut self, side: Side, len: u64) -> io::Result<Hash> {
        let data = self.side(side);
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= data.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "prefix past the end"))?;
        Ok(Hash::of(&data[..len]))
    }
    fn read_at(&mut self, side: Side, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let data = self.side(side);
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let end = start.saturating_add(len).min(data.len());
        Ok(data[start..end].to_vec())
    }
}

/// An [`AppendProbe`] over two local files.
pub struct FileProbe {
    pub a: PathBuf,
    pub b: PathBuf,
}

impl FileProbe {
    fn path(&self, side: Side) -> &PathBuf {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }
}

impl AppendProbe for FileProbe {
    fn prefix_hash(&mut self, side: Side, len: u64) -> io::Result<Hash> {
        hash_prefix(File::open(self.path(side))?, len)
    }
    fn read_at(&mut self, side: Side, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut f = File::open(self.path(side))?;
        f.seek(SeekFrom::Start(offset))?;
        let mut out = Vec::with_capacity(len);
        f.take(len as u64).read_to_end(&mut out)?;
        Ok(out)
    }
}

/// BLAKE3 hash of the first `len` bytes read from `r`, streaming (constant memory).
/// Fails with `UnexpectedEof` if `r` ends before `len` bytes.
pub fn hash_prefix<R: Read>(r: R, len: u64) -> io::Result<Hash> {
    let mut hasher = blake3::Hasher::new();
    let copied = io::copy(&mut r.take(len), &mut hasher)?;
    if copied != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("file has {copied} bytes, expected at least {len}"),
        ));
    }
    Ok(Hash(*hasher.finalize().as_bytes()))
}

/// One piece of the recipe that builds a side's merged content (see [`AppendPlan::recipe`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Bytes of the side's own current file, in this range.
    Own(Range<u64>),
    /// Bytes of the other side's current file, in this range.
    Other(Range<u64>),
    /// Literal bytes (a line break inserted between two tails).
    Bytes(&'static [u8]),
}

/// Both sides appended different bytes: the merged content is
/// `A[..a_len] ++ sep ++ B[b_tail_from..b_len]` (base, then A's tail, then B's tail).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Concat {
    pub base_len: u64,
    pub a_len: u64,
    pub b_len: u64,
    /// Line break inserted after A's tail when that tail does not end with one (empty
    /// otherwise): `b"\n"` or `b"\r\n"`.
    pub sep: &'static [u8],
    /// Where B's contribution starts: `base_len`, or past B's leading line break when the
    /// base ended mid-line and A's tail already terminated that line (see [`append`]).
    pub b_tail_from: u64,
}

impl Concat {
    /// Length of the merged content.
    pub fn result_len(&self) -> u64 {
        self.a_len + self.sep.len() as u64 + (self.b_len - self.b_tail_from)
    }
}

/// The decision of [`append_plan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendPlan {
    /// Both sides already hold the same bytes; nothing to copy.
    InSync,
    /// `target` holds a strict prefix of the other side: append the other side's bytes
    /// `tail_from..tail_from + tail_len` to `target` (`tail_from` is `target`'s length).
    FastForward {
        target: Side,
        tail_from: u64,
        tail_len: u64,
    },
    /// Both sides appended different bytes.
    Concat(Concat),
    /// Not an append-only change (or not mergeable); the engine applies `keep-both`.
    Fallback(String),
}

impl AppendPlan {
    /// How to build the merged content on `side`, as pieces concatenated in order; `None`
    /// when `side` already holds the merged content. When the first piece is
    /// `Own(0..own_len)` (own_len = the side's current length) the side can be updated in
    /// place by appending the remaining pieces; otherwise build a new file from the pieces
    /// (temp file + rename), never by truncating the live file.
    pub fn recipe(&self, side: Side) -> Option<Vec<Piece>> {
        match self {
            AppendPlan::InSync | AppendPlan::Fallback(_) => None,
            AppendPlan::FastForward {
                target,
                tail_from,
                tail_len,
            } => (*target == side).then(|| {
                vec![
                    Piece::Own(0..*tail_from),
                    Piece::Other(*tail_from..tail_from + tail_len),
                ]
            }),
            AppendPlan::Concat(c) => {
                let mut v = Vec::with_capacity(4);
                match side {
                    Side::A => {
                        v.push(Piece::Own(0..c.a_len));
                        if !c.sep.is_empty() {
                            v.push(Piece::Bytes(c.sep));
                        }
                        if c.b_tail_from < c.b_len {
                            v.push(Piece::Other(c.b_tail_from..c.b_len));
                        }
                    }
                    Side::B => {
                        v.push(Piece::Own(0..c.base_len));
                        v.push(Piece::Other(c.base_len..c.a_len));
                        if !c.sep.is_empty() {
                            v.push(Piece::Bytes(c.sep));
                        }
                        if c.b_tail_from < c.b_len {
                            v.push(Piece::Own(c.b_tail_from..c.b_len));
                        }
                    }
                }
                Some(v)
            }
        }
    }

    /// Number of bytes that have to cross from one side to the other to apply the plan
    /// (literal separators not counted). For a fast-forward this is just the tail.
    pub fn transfer_bytes(&self) -> u64 {
        match self {
            AppendPlan::InSync | AppendPlan::Fallback(_) => 0,
            AppendPlan::FastForward { tail_len, .. } => *tail_len,
            AppendPlan::Concat(c) => (c.a_len - c.base_len) + (c.b_len - c.b_tail_from),
        }
    }
}

fn side_name(s: Side) -> &'static str {
    match s {
        Side::A => "A",
        Side::B => "B",
    }
}

/// Length of the line break at the start of `x`: 1 for `\n`, 2 for `\r\n`, else 0.
fn leading_break(x: &[u8]) -> u64 {
    if x.starts_with(b"\n") {
        1
    } else if x.starts_with(b"\r\n") {
        2
    } else {
        0
    }
}

/// Decide an append-only merge from lengths and hashes, reading only prefix hashes and a few
/// bytes through `probe`; the files are never loaded whole.
///
/// Inputs: the base (the content both sides agreed on at the last sync: its length and
/// full BLAKE3 hash, as stored in the base) and each side's current length and full hash
/// (from the scan). Decision, in order:
///
/// 1. A side shorter than the base, or whose first `base.len` bytes do not hash to
///    `base.hash`, was truncated or rewritten, not appended → [`AppendPlan::Fallback`].
/// 2. Both sides identical (same length and hash) → [`AppendPlan::InSync`] (covers "both
///    appended the same bytes": one copy).
/// 3. One side equals the base, or one side is a strict prefix of the other (one tail is a
///    prefix of the other tail) → [`AppendPlan::FastForward`] of the shorter side to the
///    longer. Taking the longer in the prefix case is deliberate: the longer file is itself a
///    pure append of the shorter one, so the result contains every byte of both files in
///    their order and both sides only ever grow. It is what an interrupted earlier
///    fast-forward (tail copied, base not yet recorded) looks like, and the merge stays
///    idempotent over such runs. The cost: if two writers independently appended the same
///    record and one then wrote more, that record is kept once, not twice.
/// 4. Otherwise both appended different bytes → [`AppendPlan::Concat`]: base + A's tail +
///    B's tail (A before B, in the caller's order), kept line-well-formed:
///    - if A's tail does not end with a line break, one is inserted before B's tail (the
///      base's line break style, else the first one found in A's tail, else `\n`);
///    - if the base is non-empty and does not end with `\n` (its last line is unterminated),
///      both tails continue that same line; that is only mergeable when both tails start
///      with a line break (both merely terminated it), in which case B's leading line break
///      is dropped (A's already terminated the line); otherwise → Fallback.
///
/// How the engine uses it: build a probe for the two sides, call this, then for each side
/// with `recipe(side) == Some(pieces)`, write the pieces. Just before writing, re-check that
/// the side's file still has the length and hash the plan was made from (a live log may
/// have grown meanwhile; if so, re-plan on the next run rather than write). For a
/// fast-forward, the target opens its file for append and copies only
/// `other[tail_from..]`: that is how a 500 MB log with 1 MB appended costs about 1 MB.
/// The result must hash to what the other side holds (fast-forward) or to the same value
/// on both sides (concat); record that as the new base.
pub fn append_plan<P: AppendProbe + ?Sized>(
    base: Content,
    a: Content,
    b: Content,
    probe: &mut P,
) -> io::Result<AppendPlan> {
    for (side, c) in [(Side::A, a), (Side::B, b)] {
        if c.len < base.len {
            return Ok(AppendPlan::Fallback(format!(
                "append merge: {} is shorter than the base ({} < {} bytes): truncated or \
                 rewritten, not appended",
                side_name(side),
                c.len,
                base.len
            )));
        }
        let prefix = if c.len == base.len {
            c.hash
        } else {
            probe.prefix_hash(side, base.len)?
        };
        if prefix != base.hash {
            return Ok(AppendPlan::Fallback(format!(
                "append merge: {}'s first {} bytes differ from the base: rewritten, not \
                 appended",
                side_name(side),
                base.len
            )));
        }
    }
    if a.len == b.len && a.hash == b.hash {
        return Ok(AppendPlan::InSync);
    }
    let ff = |target: Side, from: u64, to: u64| AppendPlan::FastForward {
        target,
        tail_from: from,
        tail_len: to - from,
    };
    if a.len == base.len {
        return Ok(ff(Side::A, a.len, b.len));
    }
    if b.len == base.len {
        return Ok(ff(Side::B, b.len, a.len));
    }
    if a.len < b.len && probe.prefix_hash(Side::B, a.len)? == a.hash {
        return Ok(ff(Side::A, a.len, b.len));
    }
    if b.len < a.len && probe.prefix_hash(Side::A, b.len)? == b.hash {
        return Ok(ff(Side::B, b.len, a.len));
    }

    // Both appended different, non-prefix tails (each tail non-empty).
    let base_tail2 = if base.len == 0 {
        Vec::new()
    } else {
        let from = base.len.saturating_sub(2);
        probe.read_at(Side::A, from, (base.len - from) as usize)?
    };
    let base_open = base.len > 0 && base_tail2.last() != Some(&b'\n');
    let a_head = probe.read_at(Side::A, base.len, 2)?;
    let b_head = probe.read_at(Side::B, base.len, 2)?;
    let mut b_tail_from = base.len;
    if base_open {
        let (la, lb) = (leading_break(&a_head), leading_break(&b_head));
        if la == 0 || lb == 0 {
            return Ok(AppendPlan::Fallback(
                "append merge: the base ends mid-line and both sides continued that line"
                    .to_string(),
            ));
        }
        b_tail_from += lb;
    }
    let a_last = probe.read_at(Side::A, a.len - 1, 1)?;
    let sep: &'static [u8] = if a_last == b"\n" || b_tail_from == b.len {
        b""
    } else if base_tail2 == b"\r\n" {
        b"\r\n"
    } else if base_tail2.ends_with(b"\n") {
        b"\n"
    } else if base_open {
        if leading_break(&b_head) == 2 {
            b"\r\n"
        } else {
            b"\n"
        }
    } else {
        // Empty base: the style of the first line break in A's tail, if any.
        let head = probe.read_at(Side::A, base.len, 64 << 10)?;
        match head.iter().position(|&c| c == b'\n') {
            Some(i) if i > 0 && head[i - 1] == b'\r' => b"\r\n",
            _ => b"\n",
        }
    };
    Ok(AppendPlan::Concat(Concat {
        base_len: base.len,
        a_len: a.len,
        b_len: b.len,
        sep,
        b_tail_from,
    }))
}

/// Append-only merge of in-memory contents: the same decision as [`append_plan`] (read its
/// rules), returning
/// - `Clean(a)` when both sides are identical (also when both appended the same bytes),
/// - `FastForward { target, tail_from }` when one side is a strict prefix of the other,
/// - `Clean(base + A's tail [+ line break] + B's tail)` when both appended different bytes,
/// - `Fallback(reason)` when a side was truncated or rewritten, or both sides continued an
///   unterminated last line of the base.
///
/// No size cap and no UTF-8 assumption: the merge is byte-exact (CRLF, NUL bytes, invalid
/// UTF-8 and megabyte-long lines pass through untouched).
pub fn append(base: &[u8], a: &[u8], b: &[u8]) -> MergeOutcome {
    let mut probe = SliceProbe { a, b };
    let plan = append_plan(
        Content::of(base),
        Content::of(a),
        Content::of(b),
        &mut probe,
    )
    .expect("in-memory probe cannot fail");
    match plan {
        AppendPlan::InSync => MergeOutcome::Clean(a.to_vec()),
        AppendPlan::FastForward {
            target, tail_from, ..
        } => MergeOutcome::FastForward { target, tail_from },
        AppendPlan::Concat(c) => {
            let tail = &b[c.b_tail_from as usize..];
            let mut out = Vec::with_capacity(c.result_len() as usize);
            out.extend_from_slice(a);
            out.extend_from_slice(c.sep);
            out.extend_from_slice(tail);
            MergeOutcome::Clean(out)
        }
        AppendPlan::Fallback(r) => MergeOutcome::Fallback(r),
    }
}

// ---------------------------------------------------------------------------------------
// line helpers shared by union and text
// ---------------------------------------------------------------------------------------

/// Split into lines, each keeping its terminator (`\n` or `\r\n`); a last line without a
/// terminator is kept as is. Empty input has no lines.
fn split_lines(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, &c) in data.iter().enumerate() {
        if c == b'\n' {
            out.push(&data[start..=i]);
            start = i + 1;
        }
    }
    if start < data.len() {
        out.push(&data[start..]);
    }
    out
}

/// A line without its terminator.
fn line_key(line: &[u8]) -> &[u8] {
    let l = line.strip_suffix(b"\n").unwrap_or(line);
    l.strip_suffix(b"\r").unwrap_or(l)
}

/// The line break used for inserted breaks: `\r\n` when CRLF lines outnumber LF-only lines
/// in the inputs, else `\n`.
fn dominant_eol(inputs: &[&[u8]]) -> &'static [u8] {
    let (mut crlf, mut lf) = (0usize, 0usize);
    for data in inputs {
        for (i, &c) in data.iter().enumerate() {
            if c == b'\n' {
                if i > 0 && data[i - 1] == b'\r' {
                    crlf += 1;
                } else {
                    lf += 1;
                }
            }
        }
    }
    if crlf > lf {
        b"\r\n"
    } else {
        b"\n"
    }
}

/// Output buffer that never glues two lines together: a line pushed after an unterminated
/// one gets a line break (`eol`) inserted first.
struct LineOut {
    buf: Vec<u8>,
    eol: &'static [u8],
}

impl LineOut {
    fn new(cap: usize, eol: &'static [u8]) -> LineOut {
        LineOut {
            buf: Vec::with_capacity(cap),
            eol,
        }
    }
    fn terminate(&mut self) {
        if !self.buf.is_empty() && !self.buf.ends_with(b"\n") {
            self.buf.extend_from_slice(self.eol);
        }
    }
    fn line(&mut self, l: &[u8]) {
        self.terminate();
        self.buf.extend_from_slice(l);
    }
    fn marker(&mut self, m: &str) {
        self.terminate();
        self.buf.extend_from_slice(m.as_bytes());
        self.buf.extend_from_slice(self.eol);
    }
}

fn too_big(base: &[u8], a: &[u8], b: &[u8]) -> Option<MergeOutcome> {
    let biggest = base.len().max(a.len()).max(b.len());
    (biggest > MAX_MERGE_BYTES).then(|| {
        MergeOutcome::Fallback(format!(
            "file too large to merge ({biggest} bytes; the limit is {} MiB)",
            MAX_MERGE_BYTES >> 20
        ))
    })
}

fn has_nul(data: &[u8]) -> bool {
    data[..data.len().min(BINARY_SNIFF_BYTES)].contains(&0)
}

// ---------------------------------------------------------------------------------------
// union
// ---------------------------------------------------------------------------------------

/// Union merge for line-set files (ignore lists, word lists, `known_hosts`-like files).
///
/// Lines are compared without their terminator (`x\n`, `x\r\n` and a final unterminated
/// `x` are the same line). The result, as a set, is
/// `(base ∩ A ∩ B) ∪ (A − base) ∪ (B − base)`:
/// - a line added by either side is added (once; duplicates are dropped, including
///   duplicates that were already in the base, e.g. repeated blank lines);
/// - a base line deleted by either side stays deleted (one side removing an entry from a
///   set is a change like any other; a union that resurrected deletions would make them
///   impossible to sync);
///
/// Order: the kept base lines in base order; each added line is placed right after the
/// line that precedes it on its own side (the nearest preceding kept base line; added
/// lines that precede every kept line go first), A's additions before B's at the same
/// place, each side's additions in their own order. So a line inserted in the middle
/// stays in the middle, and lines appended at the end stay at the end.
///
/// Bytes: each line keeps its own terminator (from the base, else from the side that added
/// it); a line that had no terminator (a last line) gets one only when it is no longer
/// last, in the inputs' dominant style. Not UTF-8 is fine; binary data (a NUL byte in the
/// first 8 KiB) and inputs over [`MAX_MERGE_BYTES`] fall back.
pub fn union(base: &[u8], a: &[u8], b: &[u8]) -> MergeOutcome {
    if let Some(f) = too_big(base, a, b) {
        return f;
    }
    for (name, d) in [("base", base), ("A", a), ("B", b)] {
        if has_nul(d) {
            return MergeOutcome::Fallback(format!("binary data ({name} has a NUL byte)"));
        }
    }
    let (bl, al, bbl) = (split_lines(base), split_lines(a), split_lines(b));
    let a_keys: HashSet<&[u8]> = al.iter().map(|l| line_key(l)).collect();
    let b_keys: HashSet<&[u8]> = bbl.iter().map(|l| line_key(l)).collect();
    let base_keys: HashSet<&[u8]> = bl.iter().map(|l| line_key(l)).collect();

    // Kept base lines, in base order, first occurrence only.
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut kept_at: HashMap<&[u8], usize> = HashMap::new();
    for l in &bl {
        let k = line_key(l);
        if a_keys.contains(k) && b_keys.contains(k) && !kept_at.contains_key(k) {
            kept_at.insert(k, kept.len());
            kept.push(l);
        }
    }
    // slots[0]: before every kept line; slots[i + 1]: right after kept[i].
    let mut slots: Vec<Vec<&[u8]>> = vec![Vec::new(); kept.len() + 1];
    let mut seen: HashSet<&[u8]> = kept_at.keys().copied().collect();
    for lines in [&al, &bbl] {
        let mut slot = 0;
        for l in lines.iter() {
            let k = line_key(l);
            if let Some(&i) = kept_at.get(k) {
                slot = i + 1;
            } else if !base_keys.contains(k) && seen.insert(k) {
                slots[slot].push(l);
            }
        }
    }
    let mut out = LineOut::new(a.len().max(b.len()), dominant_eol(&[base, a, b]));
    for (i, slot) in slots.iter().enumerate() {
        if i > 0 {
            out.line(kept[i - 1]);
        }
        for l in slot {
            out.line(l);
        }
    }
    MergeOutcome::Clean(out.buf)
}

// ---------------------------------------------------------------------------------------
// text
// ---------------------------------------------------------------------------------------

/// For each line of `old`, the index of the line of `new` it is matched with, if any.
fn matching(old: &[u32], new: &[u32]) -> Vec<Option<usize>> {
    let mut m = vec![None; old.len()];
    let deadline = Instant::now() + TEXT_DIFF_DEADLINE;
    let ops =
        similar::capture_diff_slices_deadline(similar::Algorithm::Myers, old, new, Some(deadline));
    for op in ops {
        if let similar::DiffOp::Equal {
            old_index,
            new_index,
            len,
        } = op
        {
            for i in 0..len {
                m[old_index + i] = Some(new_index + i);
            }
        }
    }
    m
}

/// Line ids: equal lines get equal ids, so the diffs compare integers.
fn intern<'x>(ids: &mut HashMap<&'x [u8], u32>, lines: &[&'x [u8]]) -> Vec<u32> {
    lines
        .iter()
        .map(|l| {
            let n = ids.len() as u32;
            *ids.entry(l).or_insert(n)
        })
        .collect()
}

fn text_refusal(name: &str, d: &[u8]) -> Option<MergeOutcome> {
    if has_nul(d) {
        return Some(MergeOutcome::Fallback(format!(
            "binary data ({name} has a NUL byte)"
        )));
    }
    if let Err(e) = std::str::from_utf8(d) {
        return Some(MergeOutcome::Fallback(format!(
            "binary data ({name} is not UTF-8 text: invalid byte at offset {})",
            e.valid_up_to()
        )));
    }
    None
}

/// Three-way line merge (diff3 semantics) of `a` and `b` against their common `base`.
///
/// Lines are compared exactly, terminator included (a side that converted LF to CRLF
/// changed every line). Each side is diffed against the base (Myers, via the `similar`
/// crate; see [`TEXT_DIFF_DEADLINE`]); regions where only one side changed take that side,
/// regions both changed identically take that change, and regions both changed differently
/// are conflicts. No conflict → `Clean(merged)`; otherwise `Conflicted(merged)` with each
/// conflict written in diff3 style:
///
/// ```text
/// <<<<<<< a_name
/// A's lines
/// ||||||| base
/// the base's lines
/// =======
/// B's lines
/// >>>>>>> b_name
/// ```
///
/// The base section is always included: it is what a reviewer needs to see what each side
/// changed. Markers use the inputs' dominant line break (CRLF when CRLF lines outnumber
/// LF lines); a section whose last line has no terminator (the end of a file) gets one
/// before the next marker. In a clean merge, a line that had no terminator gets one only
/// if another line now follows it.
///
/// Falls back on binary input (a NUL byte in the first 8 KiB, or not valid UTF-8: reason
/// starts with "binary data") and on inputs over [`MAX_MERGE_BYTES`].
pub fn text(base: &[u8], a: &[u8], b: &[u8], a_name: &str, b_name: &str) -> MergeOutcome {
    if let Some(f) = too_big(base, a, b) {
        return f;
    }
    for (name, d) in [("base", base), (a_name, a), (b_name, b)] {
        if let Some(f) = text_refusal(name, d) {
            return f;
        }
    }
    if a == b || b == base {
        return MergeOutcome::Clean(a.to_vec());
    }
    if a == base {
        return MergeOutcome::Clean(b.to_vec());
    }
    let (ol, al, bl) = (split_lines(base), split_lines(a), split_lines(b));
    let mut ids: HashMap<&[u8], u32> = HashMap::new();
    let (oi, ai, bi) = (
        intern(&mut ids, &ol),
        intern(&mut ids, &al),
        intern(&mut ids, &bl),
    );
    let ma = matching(&oi, &ai);
    let mb = matching(&oi, &bi);

    let mut out = LineOut::new(a.len().max(b.len()), dominant_eol(&[base, a, b]));
    let mut conflicts = 0usize;
    let (mut o, mut ia, mut ib) = (0usize, 0usize, 0usize);
    loop {
        // A stable run: base lines matched, consecutively, in both sides.
        let mut k = 0;
        while o + k < ol.len() && ma[o + k] == Some(ia + k) && mb[o + k] == Some(ib + k) {
            k += 1;
        }
        if k > 0 {
            for l in &ol[o..o + k] {
                out.line(l);
            }
            o += k;
            ia += k;
            ib += k;
            continue;
        }
        if o == ol.len() && ia == al.len() && ib == bl.len() {
            break;
        }
        // An unstable chunk, up to the next base line matched in both sides.
        let mut s = o;
        while s < ol.len() && !(ma[s].is_some() && mb[s].is_some()) {
            s += 1;
        }
        let (ea, eb) = match (ma.get(s).copied().flatten(), mb.get(s).copied().flatten()) {
            (Some(x), Some(y)) => (x, y),
            _ => (al.len(), bl.len()),
        };
        let (oc, ac, bc) = (&oi[o..s], &ai[ia..ea], &bi[ib..eb]);
        if ac == oc || ac == bc {
            bl[ib..eb].iter().for_each(|l| out.line(l));
        } else if bc == oc {
            al[ia..ea].iter().for_each(|l| out.line(l));
        } else {
            conflicts += 1;
            out.marker(&format!("<<<<<<< {a_name}"));
            al[ia..ea].iter().for_each(|l| out.line(l));
            out.marker("||||||| base");
            ol[o..s].iter().for_each(|l| out.line(l));
            out.marker("=======");
            bl[ib..eb].iter().for_each(|l| out.line(l));
            out.marker(&format!(">>>>>>> {b_name}"));
        }
        o = s;
        ia = ea;
        ib = eb;
    }
    if conflicts == 0 {
        MergeOutcome::Clean(out.buf)
    } else {
        MergeOutcome::Conflicted(out.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_terminators() {
        assert_eq!(
            split_lines(b"a\r\nb\nc"),
            vec![&b"a\r\n"[..], &b"b\n"[..], &b"c"[..]]
        );
        assert!(split_lines(b"").is_empty());
        assert_eq!(line_key(b"x\r\n"), b"x");
    }

    #[test]
    fn recipe_of_concat_rebuilds_both_sides() {
        let (base, a, b) = (&b"l1\n"[..], &b"l1\na"[..], &b"l1\nb\n"[..]);
        let plan = append_plan(
            Content::of(base),
            Content::of(a),
            Content::of(b),
            &mut SliceProbe { a, b },
        )
        .unwrap();
        let build = |side: Side| {
            let (own, other) = if side == Side::A { (a, b) } else { (b, a) };
            let mut v = Vec::new();
            for p in plan.recipe(side).unwrap() {
                match p {
                    Piece::Own(r) => v.extend_from_slice(&own[r.start as usize..r.end as usize]),
                    Piece::Other(r) => {
                        v.extend_from_slice(&other[r.start as usize..r.end as usize])
                    }
                    Piece::Bytes(x) => v.extend_from_slice(x),
                }
            }
            v
        };
        assert_eq!(build(Side::A), b"l1\na\nb\n");
        assert_eq!(build(Side::B), b"l1\na\nb\n");
        assert_eq!(plan.transfer_bytes(), 3);
    }
}
