//! Delta transfer: content-defined chunks, grouped content-defined too, so that a small edit
//! inside a large file costs about the edited bytes plus a few kilobytes of signatures.
//!
//! Both sides cut their file into chunks with FastCDC (2 KiB min, 8 KiB average, 64 KiB
//! max) and hash each chunk with BLAKE3. Chunks are grouped: a group ends after a chunk
//! whose hash has its low 5 bits zero (about 32 chunks, 256 KiB; at most 128 chunks), so
//! group boundaries are content-defined as well and re-align right after an edit. A
//! transfer first exchanges only group signatures (8-byte hash + length: ~12 bytes per
//! 256 KiB, 10 KB for a 200 MB file), then the chunk signatures of the groups that did not
//! match (a few hundred bytes per edit), then the bytes of the chunks nobody has.
//!
//! Why chunks and not an rsync rolling checksum: rsync's signature is one weak+strong sum
//! per block of ~sqrt(size) (14 KB blocks, ~14,000 sums for a 200 MB file) and the sender
//! must roll a checksum over every byte offset. Measured with `bench/ssh.sh` (1 KB edit
//! inside a 200 MB random file, both tools through the same ssh byte-counting wrapper, one
//! run on a loaded 2-core VM): rsync 174,058 bytes on the wire, fedsync 19,598 (x0.11); at
//! 20 MB: 50,652 against 13,655. The two-level signature is ~20x smaller than rsync's and
//! the literal is one or two 8 KiB chunks. `delta::tests::measure_edit_cost` prints the
//! per-file cost without a network.
//!
//! A prefix check comes first: if a basis file (the old version, or a partial transfer
//! left by an interrupted run) is a prefix of the new content, only the tail is sent.
//! The receiver always checks the whole-file BLAKE3 hash of what it wrote.
//!
//! Speed (a 1 KB edit in 200 MB is CPU-bound on both sides): chunking reads 1 MiB at a time
//! and cuts in place; extents of 16 MiB and more are chunked on all cores in 8 MiB segments
//! whose chunk sequences are stitched at their first common cut, so the chunks are exactly
//! those of one sequential pass (and of earlier versions). The agent keeps the group
//! signatures of its large files ([`super::sigcache`]), so the file it received last time
//! needs no signature pass when it is the basis of the next edit. The receiver lets the
//! kernel copy matched ranges (`copy_file_range`) and hashes the result read back.
//! `delta::tests::measure_chunking` times the pieces on the machine at hand.

use crate::entry::Hash;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

pub const MIN_CHUNK: u32 = 2 * 1024;
pub const AVG_CHUNK: u32 = 8 * 1024;
pub const MAX_CHUNK: u32 = 64 * 1024;
/// A group ends after a chunk whose hash has these bits zero (1 in 32 chunks).
const GROUP_MASK: u64 = 31;
const GROUP_MAX: usize = 128;
/// Unmatched basis bytes whose chunk signatures are fetched at most (bounds memory).
const MAX_REFINE_BASIS: u64 = 8 << 30;

/// A chunk or group signature: truncated BLAKE3 and length. The whole-file hash check at
/// the receiver catches the (astronomically unlikely) false match of a truncated hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sig {
    pub hash: [u8; 8],
    pub len: u32,
}

/// Reads `[pos, end)` of a file with positioned reads (no shared cursor).
pub struct RangeReader<'a> {
    f: &'a File,
    pos: u64,
    end: u64,
}

impl<'a> RangeReader<'a> {
    pub fn new(f: &'a File, start: u64, len: u64) -> RangeReader<'a> {
        RangeReader {
            f,
            pos: start,
            end: start.saturating_add(len),
        }
    }
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.end - self.pos).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        let k = self.f.read_at(&mut buf[..n], self.pos)?;
        self.pos += k as u64;
        Ok(k)
    }
}

fn trunc(h: &blake3::Hash) -> [u8; 8] {
    h.as_bytes()[..8].try_into().expect("8 bytes")
}

/// FastCDC's cut masks for [`AVG_CHUNK`] at normalization level 1 (what
/// `fastcdc::v2020::StreamCDC::new` uses, so signatures stay those of earlier versions).
fn masks() -> (u64, u64) {
    let bits = fastcdc::v2020::logarithm2(AVG_CHUNK);
    (
        fastcdc::v2020::MASKS[(bits + 1) as usize],
        fastcdc::v2020::MASKS[(bits - 1) as usize],
    )
}

/// Length of the chunk that starts at `data[0]`, where `data` holds the bytes from the chunk
/// start to the end of the data or [`MAX_CHUNK`] bytes, whichever is shorter.
fn cut(data: &[u8], (s, l): (u64, u64)) -> usize {
    fastcdc::v2020::cut(
        data,
        MIN_CHUNK as usize,
        AVG_CHUNK as usize,
        MAX_CHUNK as usize,
        s,
        l,
        s << 1,
        l << 1,
    )
    .1
}

/// One chunk: where it ends and its full BLAKE3 hash (groups hash the full chunk hashes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Chunk {
    end: u64,
    len: u32,
    hash: [u8; 32],
}

impl Chunk {
    fn sig(&self) -> Sig {
        Sig {
            hash: self.hash[..8].try_into().expect("8 bytes"),
            len: self.len,
        }
    }
}

/// Bytes read per positioned read while chunking (plus room for one largest chunk).
const READ_WINDOW: usize = 1 << 20;

/// Reads a file forward in large pieces for the chunker: the bytes of the next chunk are
/// always in one slice, without a copy per chunk.
struct Window<'a> {
    f: &'a File,
    buf: Vec<u8>,
    /// File offset of `buf[0]`, and how many bytes of `buf` are valid.
    base: u64,
    len: usize,
    /// Where the data ends (the extent's end; earlier when the file turns out shorter).
    end: u64,
}

impl<'a> Window<'a> {
    fn new(f: &'a File, end: u64) -> Window<'a> {
        Window {
            f,
            buf: Vec::new(),
            base: 0,
            len: 0,
            end,
        }
    }

    /// The bytes from `pos` up to the end of the data or `MAX_CHUNK` bytes, whichever is
    /// shorter (`pos` never goes backwards by more than what is buffered).
    fn at(&mut self, pos: u64) -> io::Result<&[u8]> {
        let want = (self.end.saturating_sub(pos)).min(MAX_CHUNK as u64) as usize;
        let have = (self.base + self.len as u64).saturating_sub(pos);
        if pos < self.base || (have as usize) < want {
            // Keep what is buffered from `pos` on, read the rest.
            let keep = if pos >= self.base && pos < self.base + self.len as u64 {
                let from = (pos - self.base) as usize;
                self.buf.copy_within(from..self.len, 0);
                self.len - from
            } else {
                0
            };
            self.base = pos;
            self.len = keep;
            let room = (READ_WINDOW + MAX_CHUNK as usize)
                .min((self.end - pos) as usize)
                .max(want);
            if self.buf.len() < room {
                self.buf.resize(room, 0);
            }
            while self.len < room {
                let k = self
                    .f
                    .read_at(&mut self.buf[self.len..room], pos + self.len as u64);
                match k {
                    Ok(0) => {
                        // The file is shorter than it was: its data ends here.
                        self.end = pos + self.len as u64;
                        break;
                    }
                    Ok(k) => self.len += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let from = (pos - self.base) as usize;
        let want = (self.end.saturating_sub(pos)).min(MAX_CHUNK as u64) as usize;
        Ok(&self.buf[from..from + want])
    }
}

/// Chunk from `from` (a chunk start) while chunks start before `stop`, with data up to
/// `end`. Exactly the chunks a sequential pass from `from` to `end` produces.
fn chunk_run(f: &File, from: u64, stop: u64, end: u64, out: &mut Vec<Chunk>) -> io::Result<()> {
    let m = masks();
    let mut w = Window::new(f, end);
    let mut pos = from;
    while pos < stop {
        let data = w.at(pos)?;
        if data.is_empty() {
            break;
        }
        let n = cut(data, m);
        out.push(Chunk {
            end: pos + n as u64,
            len: n as u32,
            hash: *blake3::hash(&data[..n]).as_bytes(),
        });
        pos += n as u64;
    }
    Ok(())
}

/// How large extents are chunked on all cores.
#[derive(Clone, Copy, Debug)]
struct Parallel {
    /// Extents at least this large are split.
    min: u64,
    /// Bytes each core chunks at a time.
    segment: u64,
    /// How far a segment's chunker runs on into the next segment, so that its chunks meet
    /// the ones of the next segment's chunker (a cut point depends only on where its chunk
    /// starts and the bytes after that: two chunkers that share one cut share all the
    /// following ones).
    overlap: u64,
    /// Segments chunked at once (bounds memory); 0: four per core.
    window: u64,
}

const PARALLEL: Parallel = Parallel {
    min: 16 << 20,
    segment: 8 << 20,
    overlap: 256 << 10,
    window: 0,
};

/// Every chunk of `[start, start + len)` of `f`, in order, to `emit`: the chunks a single
/// sequential pass produces, computed on all cores for large extents. Memory stays bounded
/// (a window of a few segments per core at a time).
fn each_chunk(f: &File, start: u64, len: u64, emit: impl FnMut(&Chunk)) -> io::Result<()> {
    let threads = rayon::current_num_threads() as u64;
    let par = Parallel {
        min: if threads < 2 { u64::MAX } else { PARALLEL.min },
        window: threads * 4,
        ..PARALLEL
    };
    each_chunk_with(f, start, len, par, emit)
}

fn each_chunk_with(
    f: &File,
    start: u64,
    len: u64,
    par: Parallel,
    mut emit: impl FnMut(&Chunk),
) -> io::Result<()> {
    let end = start.saturating_add(len);
    if len < par.min {
        let mut v = Vec::new();
        let mut pos = start;
        while pos < end {
            v.clear();
            // In pieces, to bound memory for huge files.
            chunk_run(f, pos, pos.saturating_add(64 << 20).min(end), end, &mut v)?;
            let Some(last) = v.last() else { break };
            pos = last.end;
            v.iter().for_each(&mut emit);
        }
        return Ok(());
    }
    let mut pos = start;
    let mut out: Vec<Chunk> = Vec::new();
    while pos < end {
        let win_end = pos.saturating_add(par.window.max(2) * par.segment).min(end);
        // Segment k is [starts[k], starts[k + 1]); its chunker stops once it has run
        // `overlap` into the next one; the last one's at the end of the window.
        let mut starts = Vec::new();
        let mut s = pos;
        while s < win_end {
            starts.push(s);
            s = s.saturating_add(par.segment);
        }
        let n = starts.len();
        let stop = |k: usize| {
            if k + 1 == n {
                win_end
            } else {
                starts[k + 1] + par.overlap
            }
        };
        let runs: Vec<io::Result<Vec<Chunk>>> = (0..n)
            .into_par_iter()
            .map(|k| {
                let mut v = Vec::with_capacity(((stop(k) - starts[k]) / AVG_CHUNK as u64) as usize);
                chunk_run(f, starts[k], stop(k), end, &mut v)?;
                Ok(v)
            })
            .collect();
        let mut runs = runs.into_iter().collect::<io::Result<Vec<_>>>()?;
        out.clear();
        out.append(&mut runs[0]);
        for k in 1..n {
            let run = std::mem::take(&mut runs[k]);
            stitch(f, &mut out, starts[k], run, stop(k), end)?;
        }
        let Some(last) = out.last() else { break };
        pos = last.end;
        out.iter().for_each(&mut emit);
    }
    Ok(())
}

/// Continue the true chunk sequence `out` (which reaches past `seg_start`) with `run`, the
/// chunks of a chunker that started at `seg_start`: from the first cut both have on, they
/// agree. Without such a cut, chunk on from the end of `out` until one turns up or the
/// sequence passes `stop` (where `run` ends).
fn stitch(
    f: &File,
    out: &mut Vec<Chunk>,
    seg_start: u64,
    run: Vec<Chunk>,
    stop: u64,
    end: u64,
) -> io::Result<()> {
    // Chunk starts of `run`: `seg_start`, then each chunk's end.
    let run_index = |at: u64| -> Option<usize> {
        if at == seg_start {
            return Some(0);
        }
        run.binary_search_by(|c| c.end.cmp(&at)).ok().map(|i| i + 1)
    };
    let first = out.partition_point(|c| c.end < seg_start);
    for i in first..out.len() {
        if let Some(j) = run_index(out[i].end) {
            out.truncate(i + 1);
            out.extend_from_slice(&run[j..]);
            return Ok(());
        }
    }
    // Rare: no common cut within the overlap.
    let m = masks();
    let mut w = Window::new(f, end);
    let mut p = out.last().map_or(seg_start, |c| c.end);
    while p < stop {
        if let Some(j) = run_index(p) {
            out.extend_from_slice(&run[j..]);
            return Ok(());
        }
        let data = w.at(p)?;
        if data.is_empty() {
            break;
        }
        let n = cut(data, m);
        out.push(Chunk {
            end: p + n as u64,
            len: n as u32,
            hash: *blake3::hash(&data[..n]).as_bytes(),
        });
        p += n as u64;
    }
    Ok(())
}

/// Group signatures of `len` bytes of `f` from `start`, in order.
pub fn groups(f: &File, start: u64, len: u64, emit: impl FnMut(Sig)) -> io::Result<()> {
    let mut g = Grouper::new(emit);
    each_chunk(f, start, len, |c| g.add(c))?;
    g.finish();
    Ok(())
}

/// Folds chunks into groups: a group ends after a chunk whose hash has its `GROUP_MASK`
/// bits zero, or after `GROUP_MAX` chunks.
struct Grouper<F: FnMut(Sig)> {
    hasher: blake3::Hasher,
    len: u64,
    n: usize,
    emit: F,
}

impl<F: FnMut(Sig)> Grouper<F> {
    fn new(emit: F) -> Grouper<F> {
        Grouper {
            hasher: blake3::Hasher::new(),
            len: 0,
            n: 0,
            emit,
        }
    }

    fn add(&mut self, c: &Chunk) {
        self.hasher.update(&c.hash);
        self.len += c.len as u64;
        self.n += 1;
        let tail = u64::from_le_bytes(c.hash[8..16].try_into().expect("8 bytes"));
        if tail & GROUP_MASK == 0 || self.n >= GROUP_MAX {
            self.end();
        }
    }

    fn end(&mut self) {
        (self.emit)(Sig {
            hash: trunc(&self.hasher.finalize()),
            len: self.len as u32,
        });
        self.hasher = blake3::Hasher::new();
        self.len = 0;
        self.n = 0;
    }

    fn finish(mut self) {
        if self.n > 0 {
            self.end();
        }
    }
}

/// Chunk signatures of one extent (a group: chunking restarts at a group boundary and
/// reproduces the chunks of the whole-file pass).
pub fn chunks(f: &File, start: u64, len: u64) -> io::Result<Vec<Sig>> {
    let mut out = Vec::new();
    each_chunk(f, start, len, |c| out.push(c.sig()))?;
    Ok(out)
}

/// Chunk signatures of many extents, on all cores; one list per extent, in order.
pub fn chunks_of(f: &File, ranges: &[(u64, u64)]) -> io::Result<Vec<Vec<Sig>>> {
    ranges.par_iter().map(|&(o, l)| chunks(f, o, l)).collect()
}

/// BLAKE3 of the first `len` bytes; an error if the file is shorter.
pub fn prefix_hash(f: &File, len: u64) -> io::Result<Hash> {
    // Large reads, hashed on all cores (a log's prefix can be hundreds of megabytes).
    let mut h = blake3::Hasher::new();
    let mut r = RangeReader::new(f, 0, len);
    let mut buf = vec![0u8; (len as usize).clamp(1, 4 << 20)];
    let mut n = 0u64;
    loop {
        let mut got = 0;
        while got < buf.len() {
            match r.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if got == 0 {
            break;
        }
        h.update_rayon(&buf[..got]);
        n += got as u64;
    }
    if n != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "file shorter than expected",
        ));
    }
    Ok(Hash(*h.finalize().as_bytes()))
}

/// How to build the new file: ranges of a basis file, or ranges of the new file itself
/// (literal bytes to send).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Copy { basis: u8, offset: u64, len: u64 },
    Lit { offset: u64, len: u64 },
}

/// Append `op`, merging it with the previous one when they are contiguous.
pub fn push_op(ops: &mut Vec<Op>, op: Op) {
    match (ops.last_mut(), op) {
        (
            Some(Op::Copy {
                basis: b0,
                offset: o0,
                len: l0,
            }),
            Op::Copy { basis, offset, len },
        ) if *b0 == basis && *o0 + *l0 == offset => *l0 += len,
        (
            Some(Op::Lit {
                offset: o0,
                len: l0,
            }),
            Op::Lit { offset, len },
        ) if *o0 + *l0 == offset => *l0 += len,
        (_, op) => {
            let empty = match op {
                Op::Copy { len, .. } | Op::Lit { len, .. } => len == 0,
            };
            if !empty {
                ops.push(op)
            }
        }
    }
}

/// Literal bytes an op list sends.
pub fn literal_bytes(ops: &[Op]) -> u64 {
    ops.iter()
        .map(|o| match o {
            Op::Lit { len, .. } => *len,
            Op::Copy { .. } => 0,
        })
        .sum()
}

/// Where a basis has some bytes: (basis file, offset).
pub type At = (u8, u64);

/// The first matching step: which groups of the new file a basis already has.
#[derive(Debug)]
pub struct GroupPlan {
    /// Per new group: (offset in the new file, signature, where a basis has it).
    pub groups: Vec<(u64, Sig, Option<At>)>,
    /// Extents of the new file whose chunk signatures are needed (groups not matched).
    pub need_new: Vec<(u64, u64)>,
    /// Extents of basis files whose chunk signatures are worth fetching (not matched).
    pub need_basis: Vec<(u8, u64, u64)>,
}

pub fn plan_groups(new: &[Sig], basis: &[Vec<Sig>]) -> GroupPlan {
    let mut index: HashMap<Sig, (u8, u64)> = HashMap::new();
    let mut extents = Vec::new();
    for (b, gs) in basis.iter().enumerate() {
        let mut off = 0u64;
        for g in gs {
            index.entry(*g).or_insert((b as u8, off));
            extents.push((b as u8, off, g.len as u64));
            off += g.len as u64;
        }
    }
    let mut used = std::collections::HashSet::new();
    let mut groups = Vec::with_capacity(new.len());
    let mut need_new = Vec::new();
    let mut off = 0u64;
    for g in new {
        let hit = index.get(g).copied();
        match hit {
            Some(at) => {
                used.insert(at);
            }
            None => need_new.push((off, g.len as u64)),
        }
        groups.push((off, *g, hit));
        off += g.len as u64;
    }
    let mut need_basis = Vec::new();
    if !need_new.is_empty() {
        let mut budget = MAX_REFINE_BASIS;
        for (b, o, l) in extents {
            if used.contains(&(b, o)) || l > budget {
                continue;
            }
            budget -= l;
            need_basis.push((b, o, l));
        }
    }
    GroupPlan {
        groups,
        need_new,
        need_basis,
    }
}

/// The final op list: matched groups are copied; in the others, chunks found in the fetched
/// basis chunk signatures are copied and the rest is literal.
/// `new_chunks[i]` are the chunks of `plan.need_new[i]`; `basis_chunks[j]` of
/// `plan.need_basis[j]` (either may be empty when not fetched).
pub fn plan_ops(plan: &GroupPlan, new_chunks: &[Vec<Sig>], basis_chunks: &[Vec<Sig>]) -> Vec<Op> {
    let mut index: HashMap<Sig, (u8, u64)> = HashMap::new();
    for ((b, o, _), cs) in plan.need_basis.iter().zip(basis_chunks) {
        let mut off = *o;
        for c in cs {
            index.entry(*c).or_insert((*b, off));
            off += c.len as u64;
        }
    }
    let mut ops = Vec::new();
    let mut next_need = 0;
    for (off, g, hit) in &plan.groups {
        match hit {
            Some((b, boff)) => push_op(
                &mut ops,
                Op::Copy {
                    basis: *b,
                    offset: *boff,
                    len: g.len as u64,
                },
            ),
            None => {
                let cs = new_chunks
                    .get(next_need)
                    .filter(|cs| cs.iter().map(|c| c.len as u64).sum::<u64>() == g.len as u64);
                next_need += 1;
                match cs {
                    Some(cs) if !index.is_empty() => {
                        let mut o = *off;
                        for c in cs {
                            let op = match index.get(c) {
                                Some((b, bo)) => Op::Copy {
                                    basis: *b,
                                    offset: *bo,
                                    len: c.len as u64,
                                },
                                None => Op::Lit {
                                    offset: o,
                                    len: c.len as u64,
                                },
                            };
                            push_op(&mut ops, op);
                            o += c.len as u64;
                        }
                    }
                    _ => push_op(
                        &mut ops,
                        Op::Lit {
                            offset: *off,
                            len: g.len as u64,
                        },
                    ),
                }
            }
        }
    }
    ops
}

/// Copies at least this long are left to the kernel (`copy_file_range`).
const KERNEL_COPY_MIN: u64 = 1 << 20;

/// Writes the new file at the receiver and hashes what it wrote: the bytes as they pass,
/// or, once the kernel has copied ranges of a basis file, the whole file read back at the
/// end (from the page cache, on all cores), as a local copy does.
pub struct Builder {
    out: io::BufWriter<File>,
    hasher: blake3::Hasher,
    written: u64,
    buf: Vec<u8>,
    /// The kernel copied some ranges: the hash comes from reading the file back.
    read_back: bool,
    /// `copy_file_range` is not available between these files.
    no_kernel_copy: bool,
}

impl Builder {
    /// `out` must be open for reading too (the hash may be taken from it at the end).
    pub fn new(out: File) -> Builder {
        Builder {
            out: io::BufWriter::with_capacity(1 << 20, out),
            hasher: blake3::Hasher::new(),
            written: 0,
            buf: Vec::new(),
            read_back: false,
            no_kernel_copy: false,
        }
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn data(&mut self, d: &[u8]) -> io::Result<()> {
        self.out.write_all(d)?;
        if !self.read_back {
            self.hasher.update(d);
        }
        self.written += d.len() as u64;
        Ok(())
    }

    /// Copy `len` bytes of `basis` from `offset`; a basis shorter than that is an error.
    pub fn copy(&mut self, basis: &File, offset: u64, len: u64) -> io::Result<()> {
        if len >= KERNEL_COPY_MIN && !self.no_kernel_copy {
            self.out.flush()?;
            let mut off = offset;
            let mut left = len;
            while left > 0 {
                // (The output's own file position advances: later writes follow on.)
                let n = (left as usize).min(1 << 30);
                match rustix::fs::copy_file_range(
                    basis,
                    Some(&mut off),
                    self.out.get_ref(),
                    None,
                    n,
                ) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the basis file changed during the transfer",
                        ))
                    }
                    Ok(k) => {
                        left -= k as u64;
                        self.written += k as u64;
                        self.read_back = true;
                    }
                    Err(rustix::io::Errno::INTR) => {}
                    Err(
                        rustix::io::Errno::XDEV
                        | rustix::io::Errno::NOSYS
                        | rustix::io::Errno::INVAL
                        | rustix::io::Errno::OPNOTSUPP,
                    ) => {
                        // Not between these files: copy the rest through memory.
                        self.no_kernel_copy = true;
                        return self.copy(basis, off, left);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            return Ok(());
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(1 << 20, 0);
        let mut done = 0u64;
        let r = (|| {
            while done < len {
                let n = ((len - done) as usize).min(buf.len());
                let k = basis.read_at(&mut buf[..n], offset + done)?;
                if k == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the basis file changed during the transfer",
                    ));
                }
                self.data(&buf[..k])?;
                done += k as u64;
            }
            Ok(())
        })();
        self.buf = buf;
        r
    }

    /// Flush; the file, the hash and the length of what was written.
    pub fn finish(self) -> io::Result<(File, Hash, u64)> {
        let f = self.out.into_inner().map_err(|e| e.into_error())?;
        if self.read_back {
            let h = prefix_hash(&f, self.written)?;
            // Nothing past what was written (the file is ours; a longer one is not it).
            if f.metadata()?.len() != self.written {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the new file grew while it was written",
                ));
            }
            return Ok((f, h, self.written));
        }
        Ok((f, Hash(*self.hasher.finalize().as_bytes()), self.written))
    }

    /// Flush what was written so far (a partial transfer is kept for the next run).
    pub fn abandon(mut self) {
        let _ = self.out.flush();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (a small xorshift).
    pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn file(data: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(data).unwrap();
        f
    }

    fn sigs(f: &File, len: u64) -> Vec<Sig> {
        let mut v = Vec::new();
        groups(f, 0, len, |s| v.push(s)).unwrap();
        v
    }

    /// Full local delta: (ops, signature bytes that would cross the wire).
    fn delta(old: &[u8], new: &[u8]) -> (Vec<Op>, u64) {
        let (fo, fnew) = (file(old), file(new));
        let bg = sigs(&fo, old.len() as u64);
        let ng = sigs(&fnew, new.len() as u64);
        let plan = plan_groups(&ng, std::slice::from_ref(&bg));
        let nc: Vec<_> = plan
            .need_new
            .iter()
            .map(|(o, l)| chunks(&fnew, *o, *l).unwrap())
            .collect();
        let bc: Vec<_> = plan
            .need_basis
            .iter()
            .map(|(_, o, l)| chunks(&fo, *o, *l).unwrap())
            .collect();
        let sig_bytes = 12 * (bg.len() + bc.iter().map(Vec::len).sum::<usize>()) as u64;
        let ops = plan_ops(&plan, &nc, &bc);
        // Rebuild and compare.
        let mut b = Builder::new(tempfile::tempfile().unwrap());
        for op in &ops {
            match *op {
                Op::Copy { offset, len, .. } => b.copy(&fo, offset, len).unwrap(),
                Op::Lit { offset, len } => b
                    .data(&new[offset as usize..(offset + len) as usize])
                    .unwrap(),
            }
        }
        let (_, h, n) = b.finish().unwrap();
        assert_eq!((h, n), (Hash::of(new), new.len() as u64));
        (ops, sig_bytes)
    }

    /// The chunker of earlier versions (fastcdc's `StreamCDC`), as the reference: the
    /// signatures must stay the same, or peers of different versions would find nothing
    /// in common.
    fn reference_chunks(f: &File, start: u64, len: u64) -> Vec<(Sig, [u8; 32])> {
        fastcdc::v2020::StreamCDC::new(
            RangeReader::new(f, start, len),
            MIN_CHUNK,
            AVG_CHUNK,
            MAX_CHUNK,
        )
        .map(|c| {
            let c = c.unwrap();
            let h = blake3::hash(&c.data);
            (
                Sig {
                    hash: trunc(&h),
                    len: c.length as u32,
                },
                *h.as_bytes(),
            )
        })
        .collect()
    }

    fn reference_groups(f: &File, start: u64, len: u64) -> Vec<Sig> {
        let mut v = Vec::new();
        let mut g = Grouper::new(|s| v.push(s));
        let mut end = start;
        for (s, h) in reference_chunks(f, start, len) {
            end += s.len as u64;
            g.add(&Chunk {
                end,
                len: s.len,
                hash: h,
            });
        }
        g.finish();
        v
    }

    fn all_chunks(f: &File, start: u64, len: u64, par: Parallel) -> Vec<Chunk> {
        let mut v = Vec::new();
        each_chunk_with(f, start, len, par, |c| v.push(*c)).unwrap();
        v
    }

    /// Noise with runs of zeros (where cut points fall every `MAX_CHUNK` bytes from
    /// wherever a chunker started, so chunkers started at different places never meet).
    fn mixed(len: usize, seed: u64) -> Vec<u8> {
        let mut d = noise(len, seed);
        let mut at = len / 5;
        while at + 700_000 < len {
            d[at..at + 600_000].fill(0);
            at += len / 3;
        }
        d
    }

    #[test]
    fn the_chunker_cuts_where_streamcdc_does() {
        let sizes = [
            0usize,
            1,
            2047,
            2048,
            2049,
            8191,
            65535,
            65536,
            65537,
            (1 << 20) + 17,
            READ_WINDOW + MAX_CHUNK as usize + 3,
            3 << 20,
        ];
        for (i, &n) in sizes.iter().enumerate() {
            for data in [noise(n, i as u64 + 20), vec![0u8; n], mixed(n, i as u64)] {
                let f = file(&data);
                for start in [0u64, 1000.min(n as u64)] {
                    let len = n as u64 - start;
                    let want: Vec<Sig> = reference_chunks(&f, start, len)
                        .into_iter()
                        .map(|(s, _)| s)
                        .collect();
                    assert_eq!(
                        chunks(&f, start, len).unwrap(),
                        want,
                        "size {n} from {start}"
                    );
                    let mut gs = Vec::new();
                    groups(&f, start, len, |s| gs.push(s)).unwrap();
                    assert_eq!(gs, reference_groups(&f, start, len), "size {n}");
                }
            }
        }
        // A file shorter than announced: its chunks end where it does.
        let f = file(&noise(100_000, 3));
        assert_eq!(
            chunks(&f, 0, 300_000).unwrap(),
            chunks(&f, 0, 100_000).unwrap()
        );
    }

    #[test]
    fn parallel_chunking_is_the_sequential_pass() {
        let data = mixed(6 << 20, 5);
        let f = file(&data);
        let seq = Parallel {
            min: u64::MAX,
            ..PARALLEL
        };
        for (start, len) in [(0u64, data.len() as u64), (12_345, 5 << 20)] {
            let want = all_chunks(&f, start, len, seq);
            for par in [
                Parallel {
                    min: 0,
                    segment: 256 << 10,
                    overlap: 16 << 10,
                    window: 3,
                },
                // No overlap, segments off the zero runs' period: stitching must chunk on
                // from the true sequence until it meets the next segment's cuts.
                Parallel {
                    min: 0,
                    segment: 300_001,
                    overlap: 0,
                    window: 2,
                },
                Parallel {
                    min: 0,
                    segment: 3 * 65536,
                    overlap: 4096,
                    window: 64,
                },
            ] {
                assert_eq!(
                    all_chunks(&f, start, len, par),
                    want,
                    "{par:?} from {start}"
                );
            }
        }
    }

    #[test]
    fn stitching_chunks_on_when_two_chunkers_never_meet() {
        // In a run of zeros every chunk is as long as allowed, wherever it starts: a
        // chunker started off the true sequence's cuts never meets it there.
        let data = vec![0u8; 1 << 20];
        let f = file(&data);
        let end = data.len() as u64;
        let mut truth = Vec::new();
        chunk_run(&f, 0, end, end, &mut truth).unwrap();
        assert!(truth.iter().all(|c| c.len == MAX_CHUNK || c.end == end));
        let seg = 300_001;
        let mut out = Vec::new();
        chunk_run(&f, 0, seg, end, &mut out).unwrap();
        let mut run = Vec::new();
        chunk_run(&f, seg, 700_000, end, &mut run).unwrap();
        assert!(run.iter().all(|c| truth.iter().all(|t| t.end != c.end)));
        stitch(&f, &mut out, seg, run, 700_000, end).unwrap();
        assert!(out.last().unwrap().end >= 700_000);
        assert_eq!(out[..], truth[..out.len()]);
    }

    #[test]
    fn an_insertion_at_a_segment_boundary_sends_about_the_insertion() {
        // Files large enough to be chunked in parallel with the real settings.
        let old = noise((PARALLEL.min + 3 * PARALLEL.segment) as usize, 13);
        for at in [
            PARALLEL.segment as usize - 100,
            2 * PARALLEL.segment as usize,
            2 * PARALLEL.segment as usize + 5,
        ] {
            let mut new = old.clone();
            new.splice(at..at, noise(777, at as u64));
            let (ops, _) = delta(&old, &new);
            assert!(
                literal_bytes(&ops) <= 3 * MAX_CHUNK as u64,
                "insertion at {at}: literal {}",
                literal_bytes(&ops)
            );
        }
    }

    #[test]
    fn small_edit_sends_about_the_edit() {
        let old = noise(8 << 20, 1);
        let mut new = old.clone();
        new[3_000_000..3_001_024].copy_from_slice(&noise(1024, 2));
        let (ops, sig) = delta(&old, &new);
        let lit = literal_bytes(&ops);
        assert!(lit <= 3 * MAX_CHUNK as u64, "literal {lit}");
        assert!(sig < 8 * 1024, "signature {sig}");
        // An insertion shifts everything after it; chunks re-align.
        let mut ins = old.clone();
        ins.splice(5_000_000..5_000_000, noise(777, 3));
        let (ops, _) = delta(&old, &ins);
        assert!(literal_bytes(&ops) <= 3 * MAX_CHUNK as u64);
    }

    #[test]
    fn unrelated_and_empty_files() {
        let (ops, _) = delta(&noise(300_000, 4), &noise(200_000, 10));
        assert_eq!(literal_bytes(&ops), 200_000);
        let (ops, _) = delta(&[], &noise(1000, 6));
        assert_eq!(literal_bytes(&ops), 1000);
        let (ops, _) = delta(&noise(1000, 6), &[]);
        assert!(ops.is_empty());
    }

    #[test]
    fn rechunking_a_group_reproduces_its_chunks() {
        let data = noise(3 << 20, 9);
        let f = file(&data);
        let all = chunks(&f, 0, data.len() as u64).unwrap();
        let gs = sigs(&f, data.len() as u64);
        let mut off = 0u64;
        let mut again = Vec::new();
        for g in &gs {
            again.extend(chunks(&f, off, g.len as u64).unwrap());
            off += g.len as u64;
        }
        assert_eq!(all, again);
        assert!(gs.len() > 3);
    }

    #[test]
    fn prefix_hash_matches_and_refuses_short_files() {
        let data = noise(100_000, 7);
        let f = file(&data);
        assert_eq!(prefix_hash(&f, 5000).unwrap(), Hash::of(&data[..5000]));
        assert!(prefix_hash(&f, 200_000).is_err());
    }

    /// Chunking speed on this machine (run with `cargo test --release -p fedsync-core
    /// --lib delta::tests::measure_chunking -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn measure_chunking() {
        let data = noise(200 << 20, 17);
        let f = file(&data);
        let n = data.len() as u64;
        let time = |what: &str, run: &dyn Fn()| {
            for _ in 0..3 {
                let t = std::time::Instant::now();
                run();
                println!("{what}: {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
            }
        };
        let dir = std::env::var("MEASURE_DIR").unwrap_or_else(|_| "/tmp".into());
        // (Files are kept: deleting large files slows file creation down for a while on
        // filesystems with online discard.)
        let seq = std::sync::atomic::AtomicUsize::new(0);
        for kernel in [true, false, true, false] {
            time(
                &format!("rebuild (copy + hash), kernel copy {kernel}"),
                &|| {
                    let k = seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let out = std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .open(format!("{dir}/rebuild-{}-{k}", std::process::id()))
                        .unwrap();
                    let mut b = Builder::new(out);
                    b.no_kernel_copy = !kernel;
                    b.copy(&f, 0, n / 2).unwrap();
                    b.data(&data[(n / 2) as usize..(n / 2) as usize + 1024])
                        .unwrap();
                    b.copy(&f, n / 2 + 1024, n - n / 2 - 1024).unwrap();
                    b.finish().unwrap();
                },
            );
        }
        time("StreamCDC (before)", &|| {
            reference_chunks(&f, 0, n);
        });
        time("sequential", &|| {
            all_chunks(
                &f,
                0,
                n,
                Parallel {
                    min: u64::MAX,
                    ..PARALLEL
                },
            );
        });
        time("parallel", &|| {
            groups(&f, 0, n, |_| {}).unwrap();
        });
        time("blake3 of 8 KiB pieces", &|| {
            data.chunks(8192).for_each(|c| {
                blake3::hash(c);
            })
        });
        time("cut points only", &|| {
            let m = masks();
            let mut p = 0;
            while p < data.len() {
                p += cut(&data[p..(p + MAX_CHUNK as usize).min(data.len())], m);
            }
        });
    }

    /// The measurement behind the choice of chunks over a rolling checksum (run with
    /// `cargo test -p fedsync-core --lib delta -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn measure_edit_cost() {
        for mb in [20usize, 200] {
            let old = noise(mb << 20, 11);
            let mut new = old.clone();
            let at = old.len() / 3;
            new[at..at + 1024].copy_from_slice(&noise(1024, 12));
            let t = std::time::Instant::now();
            let (ops, sig) = delta(&old, &new);
            let rsync_blocks = (old.len() as f64).sqrt() as u64;
            let rsync_sig = (old.len() as u64 / rsync_blocks) * (4 + 6);
            println!(
                "{mb} MB, 1 KB edit: chunks send {} literal + {sig} signature bytes ({:.2} s \
                 chunking both sides); rsync would send ~{rsync_blocks} literal + ~{rsync_sig} \
                 signature bytes",
                literal_bytes(&ops),
                t.elapsed().as_secs_f64()
            );
        }
    }
}
