//! [`ScanList`]: a scan's entries, sorted by path, stored compactly.
//!
//! A scan of a large tree is the biggest thing a run holds (two of them, one per side, for
//! the whole reconcile), so it is not a `Vec<(RelPath, Entry)>` (136 bytes per entry plus a
//! heap string per path): each entry is one fixed 88-byte row, its name (and link target)
//! in a text buffer shared by the rows of its chunk, its directory an index into the
//! chunk's directory list. A 65-byte path then costs its last component (~15 bytes), not
//! ~80 bytes of heap. The walk fills one [`ScanChunk`] per subtree it hands to a thread;
//! the chunks are kept as they are (nothing is concatenated, so nothing is held twice).
//! Entries are read back as [`EntryRef`]s (borrowed, no allocation) or materialized as
//! [`Entry`] / [`RelPath`] where an owned one is needed (the few paths that change).

use crate::entry::{Entry, Hash, Kind, StatId};
use crate::path::RelPath;
use std::cmp::Ordering;

const HAS_HASH: u8 = 1;
const HAS_STAT: u8 = 2;
const HAS_LINK: u8 = 4;
/// Name or link longer than a `u16`: the lengths are in [`ScanChunk::long`].
const LONG: u8 = 8;

#[derive(Clone, Copy, Debug)]
struct Row {
    size: u64,
    mtime: i64,
    dev: u64,
    ino: u64,
    ctime: i64,
    hash: [u8; 32],
    /// Offset of the name in the chunk's text; the link target follows it.
    text: u32,
    /// Index of the parent directory in the chunk's `dirs`.
    dir: u32,
    name_len: u16,
    link_len: u16,
    mode: u16,
    kind: u8,
    flags: u8,
}

impl Row {
    fn kind(&self) -> Kind {
        code_kind(self.kind)
    }
    fn hash(&self) -> Option<Hash> {
        (self.flags & HAS_HASH != 0).then_some(Hash(self.hash))
    }
    fn stat(&self) -> Option<StatId> {
        (self.flags & HAS_STAT != 0).then_some(StatId {
            dev: self.dev,
            ino: self.ino,
            ctime: self.ctime,
        })
    }
    fn set_hash(&mut self, h: Option<Hash>) {
        match h {
            Some(h) => {
                self.hash = h.0;
                self.flags |= HAS_HASH;
            }
            None => self.flags &= !HAS_HASH,
        }
    }
}

/// Name and link lengths of row `r` (`long`: its chunk's table of long rows).
fn row_lens(long: &[(u32, u32, u32)], r: usize, row: &Row) -> (usize, usize) {
    if row.flags & LONG == 0 {
        return (row.name_len.into(), row.link_len.into());
    }
    let i = long
        .binary_search_by_key(&(r as u32), |l| l.0)
        .expect("long row recorded");
    (long[i].1 as usize, long[i].2 as usize)
}

/// Append the path of a row whose name is `name` to `buf`.
fn spell(dir: &RelPath, name: &str, buf: &mut String) {
    if !dir.is_root() {
        buf.push_str(dir.as_str());
        buf.push('/');
    }
    buf.push_str(name);
}

/// Binary search over `0..n` by `cmp(i)` (how entry `i` compares with the one sought).
pub(crate) fn search(n: usize, cmp: impl Fn(usize) -> Ordering) -> Option<usize> {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        match cmp(mid) {
            Ordering::Less => lo = mid + 1,
            Ordering::Greater => hi = mid,
            Ordering::Equal => return Some(mid),
        }
    }
    None
}

fn kind_code(k: Kind) -> u8 {
    match k {
        Kind::File => 0,
        Kind::Dir => 1,
        Kind::Symlink => 2,
    }
}

fn code_kind(c: u8) -> Kind {
    match c {
        0 => Kind::File,
        1 => Kind::Dir,
        _ => Kind::Symlink,
    }
}

/// A run of consecutive entries (in path order), filled by one walker.
#[derive(Clone, Debug, Default)]
pub struct ScanChunk {
    rows: Vec<Row>,
    text: String,
    /// Parent directories; consecutive rows of one directory share one.
    dirs: Vec<RelPath>,
    /// (row, name length, link length) of the rare rows flagged [`LONG`], by row.
    long: Vec<(u32, u32, u32)>,
}

impl ScanChunk {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Append `path` (which sorts after every path already here).
    pub fn push(&mut self, path: &RelPath, e: &Entry) {
        let s = path.as_str();
        let (dir, name) = match s.rfind('/') {
            Some(i) => (&s[..i], &s[i + 1..]),
            None => ("", s),
        };
        self.push_child(dir, name, e);
    }

    /// [`Self::push`] of `dir/name` (`dir` a valid path, `name` one valid component).
    pub(crate) fn push_child(&mut self, dir: &str, name: &str, e: &Entry) {
        if self.dirs.last().is_none_or(|d| d.as_str() != dir) {
            self.dirs.push(RelPath::trusted(dir.to_string()));
        }
        let link = e.link.as_deref().unwrap_or("");
        let text = u32::try_from(self.text.len()).expect("scan chunk text under 4 GiB");
        self.text.push_str(name);
        self.text.push_str(link);
        let mut flags = 0;
        let (mut name_len, mut link_len) = (name.len() as u16, link.len() as u16);
        if name.len() > usize::from(u16::MAX) || link.len() > usize::from(u16::MAX) {
            flags |= LONG;
            (name_len, link_len) = (0, 0);
            self.long
                .push((self.rows.len() as u32, name.len() as u32, link.len() as u32));
        }
        if e.hash.is_some() {
            flags |= HAS_HASH;
        }
        if e.stat.is_some() {
            flags |= HAS_STAT;
        }
        if e.link.is_some() {
            flags |= HAS_LINK;
        }
        let st = e.stat.unwrap_or_default();
        self.rows.push(Row {
            size: e.size,
            mtime: e.mtime,
            dev: st.dev,
            ino: st.ino,
            ctime: st.ctime,
            hash: e.hash.map(|h| h.0).unwrap_or([0; 32]),
            text,
            dir: (self.dirs.len() - 1) as u32,
            name_len,
            link_len,
            mode: (e.mode & 0o7777) as u16,
            kind: kind_code(e.kind),
            flags,
        });
    }

    /// Give back the room reserved for growth (a finished chunk does not grow).
    fn shrink(&mut self) {
        self.rows.shrink_to_fit();
        self.text.shrink_to_fit();
        self.dirs.shrink_to_fit();
    }

    fn lens(&self, r: usize) -> (usize, usize) {
        row_lens(&self.long, r, &self.rows[r])
    }

    fn get(&self, r: usize) -> EntryRef<'_> {
        EntryRef {
            chunk: self,
            row: r as u32,
        }
    }
}

/// One entry of a [`ScanList`], borrowed.
#[derive(Clone, Copy)]
pub struct EntryRef<'a> {
    chunk: &'a ScanChunk,
    row: u32,
}

impl std::fmt::Debug for EntryRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {:?}", self.path(), self.to_entry())
    }
}

impl<'a> EntryRef<'a> {
    /// Whether this is the row right after `prev` in the same chunk.
    pub fn follows(&self, prev: &EntryRef<'_>) -> bool {
        std::ptr::eq(self.chunk, prev.chunk) && self.row == prev.row + 1
    }

    /// The row `k` places further in the same chunk (which has it).
    pub fn offset(&self, k: u32) -> EntryRef<'a> {
        let row = self.row + k;
        assert!((row as usize) < self.chunk.rows.len(), "row in its chunk");
        EntryRef {
            chunk: self.chunk,
            row,
        }
    }

    fn r(&self) -> &'a Row {
        &self.chunk.rows[self.row as usize]
    }

    pub fn kind(&self) -> Kind {
        self.r().kind()
    }
    pub fn is_file(&self) -> bool {
        self.kind() == Kind::File
    }
    pub fn is_dir(&self) -> bool {
        self.kind() == Kind::Dir
    }
    pub fn size(&self) -> u64 {
        self.r().size
    }
    pub fn mtime(&self) -> i64 {
        self.r().mtime
    }
    pub fn mode(&self) -> u32 {
        self.r().mode.into()
    }
    pub fn hash(&self) -> Option<Hash> {
        self.r().hash()
    }
    pub fn stat(&self) -> Option<StatId> {
        self.r().stat()
    }

    /// The last path component.
    pub fn name(&self) -> &'a str {
        let (n, _) = self.chunk.lens(self.row as usize);
        let at = self.r().text as usize;
        &self.chunk.text[at..at + n]
    }

    pub fn link(&self) -> Option<&'a str> {
        let r = self.r();
        if r.flags & HAS_LINK == 0 {
            return None;
        }
        let (n, l) = self.chunk.lens(self.row as usize);
        let at = r.text as usize + n;
        Some(&self.chunk.text[at..at + l])
    }

    /// The parent directory.
    pub fn dir(&self) -> &'a RelPath {
        &self.chunk.dirs[self.r().dir as usize]
    }

    /// The path, appended to `buf`.
    pub fn write_path(&self, buf: &mut String) {
        spell(self.dir(), self.name(), buf);
    }

    pub fn path(&self) -> RelPath {
        let dir = self.dir();
        let name = self.name();
        let mut s = String::with_capacity(dir.as_str().len() + 1 + name.len());
        self.write_path(&mut s);
        RelPath::trusted(s)
    }

    /// This entry's path compared with `other` (byte order, as [`RelPath`]s compare).
    pub fn cmp_path(&self, other: &str) -> Ordering {
        let dir = self.dir().as_str();
        let name = self.name();
        let parts: [&str; 3] = if dir.is_empty() {
            [name, "", ""]
        } else {
            [dir, "/", name]
        };
        let mut o = other.as_bytes();
        for p in parts.iter().map(|p| p.as_bytes()) {
            let n = p.len().min(o.len());
            match p[..n].cmp(&o[..n]) {
                Ordering::Equal => {}
                c => return c,
            }
            if n < p.len() {
                return Ordering::Greater;
            }
            o = &o[n..];
        }
        if o.is_empty() {
            Ordering::Equal
        } else {
            Ordering::Less
        }
    }

    pub fn to_entry(&self) -> Entry {
        let r = self.r();
        Entry {
            kind: self.kind(),
            size: r.size,
            mtime: r.mtime,
            mode: r.mode.into(),
            hash: self.hash(),
            link: self.link().map(str::to_string),
            stat: self.stat(),
        }
    }

    /// [`Entry::same_state`] against an owned entry, without materializing this one.
    pub fn same_state(&self, other: &Entry) -> bool {
        if self.kind() != other.kind {
            return false;
        }
        match other.kind {
            Kind::Dir => true,
            Kind::Symlink => self.link() == other.link.as_deref(),
            Kind::File => {
                self.size() == other.size
                    && other.hash.is_some()
                    && self.hash() == other.hash
                    && self.mode() == other.mode
            }
        }
    }
}

/// A scan's entries in path order (see the module documentation).
#[derive(Clone, Debug, Default)]
pub struct ScanList {
    chunks: Vec<ScanChunk>,
    /// Index of each chunk's first entry.
    starts: Vec<usize>,
    len: usize,
}

impl ScanList {
    /// The chunks in order (each sorted, each after the one before).
    pub fn from_chunks(chunks: impl IntoIterator<Item = ScanChunk>) -> ScanList {
        let mut list = ScanList::default();
        for mut c in chunks.into_iter().filter(|c| !c.is_empty()) {
            c.shrink();
            list.starts.push(list.len);
            list.len += c.len();
            list.chunks.push(c);
        }
        list
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn locate(&self, i: usize) -> (usize, usize) {
        assert!(i < self.len, "scan entry {i} of {}", self.len);
        let c = self.starts.partition_point(|&s| s <= i) - 1;
        (c, i - self.starts[c])
    }

    pub fn get(&self, i: usize) -> EntryRef<'_> {
        let (c, r) = self.locate(i);
        self.chunks[c].get(r)
    }

    pub fn path(&self, i: usize) -> RelPath {
        self.get(i).path()
    }

    pub fn entry(&self, i: usize) -> Entry {
        self.get(i).to_entry()
    }

    /// All entries in order, borrowed.
    pub fn iter(&self) -> impl Iterator<Item = EntryRef<'_>> + '_ {
        self.chunks
            .iter()
            .flat_map(|c| (0..c.len()).map(move |r| c.get(r)))
    }

    /// All entries in order, materialized (for small scans and for readers that need
    /// owned values anyway).
    pub fn iter_owned(&self) -> impl Iterator<Item = (RelPath, Entry)> + '_ {
        self.iter().map(|e| (e.path(), e.to_entry()))
    }

    pub fn to_vec(&self) -> Vec<(RelPath, Entry)> {
        self.iter_owned().collect()
    }

    /// The index of `path`, if the scan has it.
    pub fn find(&self, path: &str) -> Option<usize> {
        search(self.len, |i| self.get(i).cmp_path(path))
    }

    /// A reader in path order that keeps the current path spelled out (one buffer for all).
    pub fn cursor(&self) -> Cursor<'_> {
        let mut c = Cursor {
            list: self,
            chunk: 0,
            row: 0,
            path: String::new(),
        };
        c.spell();
        c
    }

    /// Visit every entry in order, with its path spelled out, to update it in place.
    pub fn for_each_mut(&mut self, mut f: impl FnMut(usize, &str, &mut EntryMut<'_>)) {
        let mut path = String::new();
        let mut i = 0;
        for c in &mut self.chunks {
            let ScanChunk {
                rows,
                text,
                dirs,
                long,
            } = c;
            for (r, row) in rows.iter_mut().enumerate() {
                let (n, _) = row_lens(long, r, row);
                let at = row.text as usize;
                path.clear();
                spell(&dirs[row.dir as usize], &text[at..at + n], &mut path);
                f(i, &path, &mut EntryMut { row });
                i += 1;
            }
        }
    }

    pub fn set_hash(&mut self, i: usize, h: Option<Hash>) {
        let (c, r) = self.locate(i);
        self.chunks[c].rows[r].set_hash(h);
    }

    /// Replace a file's state (same path, still a file: a re-stat with its hash).
    pub fn set_file(&mut self, i: usize, e: &Entry) {
        assert!(e.is_file(), "set_file takes a file");
        let (c, r) = self.locate(i);
        let row = &mut self.chunks[c].rows[r];
        assert_eq!(row.kind, kind_code(Kind::File), "set_file replaces a file");
        let st = e.stat.unwrap_or_default();
        row.size = e.size;
        row.mtime = e.mtime;
        row.mode = (e.mode & 0o7777) as u16;
        (row.dev, row.ino, row.ctime) = (st.dev, st.ino, st.ctime);
        row.flags = (row.flags & !HAS_STAT) | if e.stat.is_some() { HAS_STAT } else { 0 };
        row.set_hash(e.hash);
    }

    /// Keep the entries for which `keep(index)` is true.
    pub fn retain_indices(&mut self, mut keep: impl FnMut(usize) -> bool) {
        let mut i = 0;
        for c in &mut self.chunks {
            // Long rows keep their lengths under their new row numbers.
            let old_long = std::mem::take(&mut c.long);
            let (mut r, mut kept) = (0, 0u32);
            c.rows.retain(|row| {
                let k = keep(i);
                if k {
                    if row.flags & LONG != 0 {
                        let (n, l) = row_lens(&old_long, r, row);
                        c.long.push((kept, n as u32, l as u32));
                    }
                    kept += 1;
                }
                i += 1;
                r += 1;
                k
            });
        }
        let chunks = std::mem::take(&mut self.chunks);
        *self = ScanList::from_chunks(chunks);
    }
}

impl FromIterator<(RelPath, Entry)> for ScanList {
    /// From entries already in path order.
    fn from_iter<I: IntoIterator<Item = (RelPath, Entry)>>(it: I) -> ScanList {
        let mut c = ScanChunk::default();
        for (p, e) in it {
            c.push(&p, &e);
        }
        ScanList::from_chunks([c])
    }
}

impl From<Vec<(RelPath, Entry)>> for ScanList {
    fn from(v: Vec<(RelPath, Entry)>) -> ScanList {
        v.into_iter().collect()
    }
}

/// An entry being updated by [`ScanList::for_each_mut`].
pub struct EntryMut<'a> {
    row: &'a mut Row,
}

impl EntryMut<'_> {
    pub fn kind(&self) -> Kind {
        self.row.kind()
    }
    pub fn size(&self) -> u64 {
        self.row.size
    }
    pub fn mtime(&self) -> i64 {
        self.row.mtime
    }
    pub fn stat(&self) -> Option<StatId> {
        self.row.stat()
    }
    pub fn hash(&self) -> Option<Hash> {
        self.row.hash()
    }
    pub fn set_hash(&mut self, h: Option<Hash>) {
        self.row.set_hash(h);
    }
}

/// See [`ScanList::cursor`].
pub struct Cursor<'a> {
    list: &'a ScanList,
    chunk: usize,
    row: usize,
    path: String,
}

impl<'a> Cursor<'a> {
    fn spell(&mut self) {
        self.path.clear();
        if let Some(e) = self.current() {
            e.write_path(&mut self.path);
        }
    }

    fn current(&self) -> Option<EntryRef<'a>> {
        let c = self.list.chunks.get(self.chunk)?;
        Some(c.get(self.row))
    }

    /// The current entry and its path (`None` at the end).
    pub fn peek(&self) -> Option<(&str, EntryRef<'a>)> {
        self.current().map(|e| (self.path.as_str(), e))
    }

    pub fn advance(&mut self) {
        if self.chunk >= self.list.chunks.len() {
            return;
        }
        self.row += 1;
        if self.row >= self.list.chunks[self.chunk].len() {
            self.chunk += 1;
            self.row = 0;
        }
        self.spell();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64, h: u8) -> Entry {
        Entry {
            kind: Kind::File,
            size,
            mtime: 1_700_000_000_123_456_789,
            mode: 0o644,
            hash: Some(Hash([h; 32])),
            link: None,
            stat: Some(StatId {
                dev: 7,
                ino: 1000 + size,
                ctime: 42,
            }),
        }
    }

    fn sample() -> Vec<(RelPath, Entry)> {
        let dir = Entry {
            kind: Kind::Dir,
            size: 0,
            mtime: 5,
            mode: 0o755,
            hash: None,
            link: None,
            stat: None,
        };
        let link = Entry {
            kind: Kind::Symlink,
            size: 3,
            mtime: 6,
            mode: 0o777,
            hash: Some(Hash([9; 32])),
            link: Some("../x".into()),
            stat: None,
        };
        let long = "n".repeat(70_000);
        let mut v = vec![
            ("a".to_string(), dir.clone()),
            ("a/b.txt".into(), file(1, 1)),
            ("a/b".into(), dir.clone()),
            ("a/b/c".into(), file(2, 2)),
            ("a/b.zip".into(), link.clone()),
            (format!("a/{long}"), file(3, 3)),
            ("a/zz".into(), file(4, 4)),
            ("z".into(), link),
            ("é".into(), file(5, 5)),
        ];
        v.sort_by(|x, y| x.0.cmp(&y.0));
        v.into_iter()
            .map(|(p, e)| (RelPath::new(&p).unwrap(), e))
            .collect()
    }

    /// Split into chunks at every boundary in `cuts`, as walkers would.
    fn chunked(v: &[(RelPath, Entry)], cuts: &[usize]) -> ScanList {
        let mut chunks = vec![ScanChunk::default()];
        for (i, (p, e)) in v.iter().enumerate() {
            if cuts.contains(&i) {
                chunks.push(ScanChunk::default());
            }
            chunks.last_mut().unwrap().push(p, e);
        }
        ScanList::from_chunks(chunks)
    }

    #[test]
    fn entries_round_trip_exactly_whatever_the_chunking() {
        let v = sample();
        for cuts in [vec![], vec![1], vec![2, 3, 5], (1..v.len()).collect()] {
            let list = chunked(&v, &cuts);
            assert_eq!(list.len(), v.len());
            assert_eq!(list.to_vec(), v, "cuts {cuts:?}");
            for (i, (p, e)) in v.iter().enumerate() {
                assert_eq!(list.find(p.as_str()), Some(i));
                assert_eq!(list.path(i), *p);
                assert_eq!(&list.entry(i), e);
                assert!(list.get(i).same_state(e));
            }
            // A cursor spells every path in order.
            let mut cur = list.cursor();
            let mut seen = Vec::new();
            while let Some((p, e)) = cur.peek() {
                assert_eq!(p, e.path().as_str());
                seen.push(p.to_string());
                cur.advance();
            }
            assert_eq!(seen.len(), v.len());
        }
    }

    #[test]
    fn paths_compare_as_strings_do() {
        let v = sample();
        let list = chunked(&v, &[3]);
        let probes = [
            "", "a", "a/", "a/b", "a/b.", "a/b/c", "a/b/c/d", "a/b0", "a/a", "b", "z", "zz", "é",
            "éa", "a/zz", "a/z",
        ];
        for i in 0..list.len() {
            let p = list.path(i);
            for q in probes {
                assert_eq!(list.get(i).cmp_path(q), p.as_str().cmp(q), "{p} vs {q:?}");
            }
        }
        assert_eq!(list.find("a/b/"), None);
        assert_eq!(list.find("nothing"), None);
    }

    #[test]
    fn updates_and_removals_keep_the_rest_intact() {
        let v = sample();
        let mut list = chunked(&v, &[2, 4]);
        let i = list.find("a/b/c").unwrap();
        list.set_hash(i, None);
        assert_eq!(list.get(i).hash(), None);
        let mut e = file(99, 8);
        e.stat = None;
        list.set_file(i, &e);
        assert_eq!(list.entry(i), e);
        let mut visited = 0;
        list.for_each_mut(|k, p, m| {
            assert_eq!(p, v[k].0.as_str());
            if m.kind() == Kind::File {
                m.set_hash(Some(Hash([0xee; 32])));
            }
            visited += 1;
        });
        assert_eq!(visited, v.len());
        // Drop every other entry, the long-named one among those kept.
        let long_at = v.iter().position(|(p, _)| p.as_str().len() > 1000).unwrap();
        list.retain_indices(|k| k % 2 == long_at % 2);
        let kept: Vec<_> = v
            .iter()
            .enumerate()
            .filter(|(k, _)| k % 2 == long_at % 2)
            .map(|(_, (p, _))| p.clone())
            .collect();
        let got: Vec<_> = list.iter_owned().map(|(p, _)| p).collect();
        assert_eq!(got, kept);
        let j = list.find(v[long_at].0.as_str()).unwrap();
        assert_eq!(list.get(j).name().len(), 70_000);
        assert_eq!(list.get(j).hash(), Some(Hash([0xee; 32])));
    }

    #[test]
    fn a_row_is_small() {
        assert!(std::mem::size_of::<Row>() <= 88);
    }
}
