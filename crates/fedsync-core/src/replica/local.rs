//! A replica that is a folder on this machine (a disk, a mounted drive, a cloud-drive
//! folder). The remote agent runs this same code on its side.

use super::{
    io_err, Probe, Replica, ReplicaError, Result, Scan, ScanOptions, Staged, VersionInfo,
    VersionPath,
};
use crate::entry::{Entry, Hash, Kind, StatId};
use crate::path::RelPath;
use crate::rules::Rules;
use crate::scanlist::{ScanChunk, ScanList};
use crate::store::CacheBlob;
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Files up to this size are copied through memory (one read, hash, one write).
const SMALL_FILE: u64 = 256 * 1024;

/// Name of the per-replica metadata folder, always ignored by scans.
pub const META_DIR: &str = ".fedsync";

/// Files whose mtime is this close to the scan time are re-hashed next time: a write in the
/// same timestamp tick would not change size or mtime (the "racily clean" problem).
pub const RACY_NS: i64 = 2_000_000_000;

/// A scan's entries as runs, each sorted, in path order one after the other.
type Runs = Vec<ScanChunk>;

pub struct LocalReplica {
    root: PathBuf,
    label: String,
    /// Directories known to be real (not symlinked) directories, for the parent check.
    safe_dirs: Mutex<HashSet<String>>,
    /// The temporary folder is known to exist.
    tmp_ready: std::sync::atomic::AtomicBool,
    /// New files staged as unnamed inodes in their own directory, by token (see
    /// [`LocalReplica::stage_unnamed`]).
    unnamed: Mutex<HashMap<String, Held>>,
    /// Whether this filesystem can stage unnamed files (`O_TMPFILE` + `linkat`): probed once.
    unnamed_ok: OnceLock<bool>,
}

/// Staged files holding a descriptor open, in this process (all replicas).
static HELD: AtomicUsize = AtomicUsize::new(0);

/// An open unnamed staged file, holding its slot of [`HELD`].
#[derive(Debug)]
struct Held(File, HeldSlot);

/// One descriptor slot of [`staging_fd_budget`], given back when dropped.
#[derive(Debug)]
struct HeldSlot;

impl HeldSlot {
    /// Take a slot; `None` when all are in use.
    fn reserve() -> Option<HeldSlot> {
        let budget = staging_fd_budget();
        let n = HELD.fetch_add(1, Ordering::Relaxed);
        if n >= budget {
            HELD.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(HeldSlot)
    }
}

impl Drop for HeldSlot {
    fn drop(&mut self) {
        HELD.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How many staged files may keep a descriptor open at once (unnamed staging holds one per
/// file from staging to install): half of the soft `RLIMIT_NOFILE` above a reserve of 256
/// for everything else, after raising the soft limit towards the hard one (once). Files
/// beyond the budget are staged by name instead, so a batch never fails with EMFILE.
pub fn staging_fd_budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        use rustix::process::{getrlimit, setrlimit, Resource};
        /// Enough for a batch of staged files and their reserve; never lowered.
        const WANT: u64 = 16 * 1024;
        let lim = getrlimit(Resource::Nofile);
        if let Some(cur) = lim.current.filter(|&c| c < WANT) {
            let to = lim.maximum.map_or(WANT, |m| m.min(WANT));
            if to > cur {
                let _ = setrlimit(
                    Resource::Nofile,
                    rustix::process::Rlimit {
                        current: Some(to),
                        maximum: lim.maximum,
                    },
                );
            }
        }
        let cur = getrlimit(Resource::Nofile).current.unwrap_or(WANT);
        (cur.saturating_sub(256) / 2).min(4096) as usize
    })
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Build an entry from `lstat` metadata (no hash).
pub fn entry_from_meta(md: &fs::Metadata, link: Option<String>) -> Option<Entry> {
    StatLite {
        kind: kind_of_mode(md.mode()),
        mode: md.mode(),
        size: md.size(),
        mtime: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
        ctime: md.ctime() * 1_000_000_000 + md.ctime_nsec(),
        ino: md.ino(),
        dev: md.dev(),
    }
    .entry(link)
}

/// Hash a file's content, memory-mapping large files.
pub fn hash_file(path: &Path) -> io::Result<(Hash, u64)> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut h = blake3::Hasher::new();
    if len >= 16 * 1024 * 1024 {
        h.update_mmap_rayon(path)?;
    } else if len <= 64 * 1024 {
        // Through `take`: no size probes (`read_to_end` on a `File` stats and seeks).
        let mut buf = Vec::with_capacity(len as usize + 1);
        (&mut f).take(u64::MAX).read_to_end(&mut buf)?;
        h.update(&buf);
    } else {
        h.update_reader(&mut f)?;
    }
    Ok((Hash(*h.finalize().as_bytes()), len))
}

/// Same object, unchanged since: what the pre-replace re-check trusts. With inode numbers,
/// the same inode with the same ctime and mtime (any write changes ctime, so the size is
/// implied; the engine may present a SQLite snapshot's entry with its source's size);
/// without, the same size and mtime.
fn same_stat(a: &Entry, b: &Entry) -> bool {
    a.kind == b.kind
        && a.mtime == b.mtime
        && match (a.stat, b.stat) {
            (Some(x), Some(y)) => x.ino == y.ino && x.ctime == y.ctime && x.dev == y.dev,
            _ => a.size == b.size,
        }
}

impl LocalReplica {
    pub fn new(root: PathBuf, label: String) -> LocalReplica {
        LocalReplica {
            root,
            label,
            safe_dirs: Mutex::new(HashSet::new()),
            tmp_ready: std::sync::atomic::AtomicBool::new(false),
            unnamed: Mutex::new(HashMap::new()),
            unnamed_ok: OnceLock::new(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn abs(&self, p: &RelPath) -> PathBuf {
        p.to_fs(&self.root)
    }

    fn meta_dir(&self) -> PathBuf {
        self.root.join(META_DIR)
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.meta_dir().join("tmp")
    }

    /// Open a regular file for reading, refusing symlinked parents and a final symlink
    /// (the remote agent reads and rebuilds files through this).
    pub(crate) fn open_regular(&self, p: &RelPath) -> Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        self.check_parents(p)?;
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(self.abs(p))
            .map_err(io_err(p))?;
        if !f.metadata().map_err(io_err(p))?.is_file() {
            return Err(io_err(p)(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        Ok(f)
    }

    /// Refuse to write below a symlinked directory (SPEC invariant 10).
    fn check_parents(&self, p: &RelPath) -> Result<()> {
        for anc in p.ancestors() {
            if self.safe_dirs.lock().expect("lock").contains(anc) {
                continue;
            }
            let abs = self.root.join(anc);
            match fs::symlink_metadata(&abs) {
                Ok(md) if md.file_type().is_symlink() => {
                    return Err(ReplicaError::SymlinkParent(p.to_string()))
                }
                Ok(md) if md.is_dir() => {
                    self.safe_dirs.lock().expect("lock").insert(anc.to_string());
                }
                Ok(_) => {
                    return Err(ReplicaError::Io {
                        path: p.to_string(),
                        source: io::Error::new(
                            io::ErrorKind::NotADirectory,
                            format!("{anc} is not a directory"),
                        ),
                    })
                }
                Err(e) => return Err(io_err(p)(e)),
            }
        }
        Ok(())
    }

    fn lstat(&self, p: &RelPath) -> Result<Option<Entry>> {
        let abs = self.abs(p);
        match fs::symlink_metadata(&abs) {
            Ok(md) => {
                let link = if md.file_type().is_symlink() {
                    Some(read_link_str(&abs).map_err(io_err(p))?)
                } else {
                    None
                };
                Ok(entry_from_meta(&md, link))
            }
            // A parent that is a file: the path does not exist.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.kind() == io::ErrorKind::NotADirectory =>
            {
                Ok(None)
            }
            Err(e) => Err(io_err(p)(e)),
        }
    }

    /// The pre-replace re-check (SPEC invariant 4).
    fn recheck(&self, p: &RelPath, expect: Option<&Entry>) -> Result<Option<Entry>> {
        let cur = self.lstat(p)?;
        let ok = match (&cur, expect) {
            (None, None) => true,
            (Some(c), Some(e)) => {
                if c.kind == Kind::Dir && e.kind == Kind::Dir {
                    true
                } else {
                    same_stat(c, e) && c.link == e.link
                }
            }
            _ => false,
        };
        if ok {
            Ok(cur)
        } else {
            Err(ReplicaError::Changed(p.to_string()))
        }
    }

    /// Move the current item at `p` into `.fedsync/versions/<run>/<p>` (same filesystem:
    /// a rename, or a hard link when the caller replaces the name atomically afterwards).
    fn keep_version(&self, p: &RelPath, run: &str, link_only: bool) -> Result<String> {
        let mut rel = format!("{META_DIR}/versions/{run}/{}", p.as_str());
        let mut dest = self.root.join(&rel);
        let mut n = 1;
        while fs::symlink_metadata(&dest).is_ok() {
            rel = format!("{META_DIR}/versions/{run}/{}~{n}", p.as_str());
            dest = self.root.join(&rel);
            n += 1;
        }
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io_err(&rel))?;
        }
        let src = self.abs(p);
        let mut linked = false;
        if link_only {
            // A hard link keeps the old content reachable while the name is replaced in
            // one atomic rename; filesystems without links fall back to a rename.
            linked = fs::hard_link(&src, &dest).is_ok();
        }
        if !linked {
            fs::rename(&src, &dest).map_err(io_err(p))?;
        }
        Ok(rel)
    }

    /// The file of version `id`, refusing anything outside `.fedsync/versions/`.
    fn version_abs(&self, id: &str) -> Result<PathBuf> {
        let bad = || ReplicaError::Io {
            path: id.to_string(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a version id"),
        };
        let rest = id
            .strip_prefix(META_DIR)
            .and_then(|r| r.strip_prefix("/versions/"))
            .ok_or_else(bad)?;
        let rel = RelPath::new(rest).map_err(|_| bad())?;
        if rel.depth() < 2 {
            return Err(bad());
        }
        Ok(self.root.join(META_DIR).join("versions").join(rel.as_str()))
    }

    /// Put staged `tmp` in place of `path`, which must still be the object `expect`
    /// describes (SPEC invariant 4, without a window): the two are exchanged atomically
    /// (`renameat2(RENAME_EXCHANGE)`), then what came out is checked. If a save landed after
    /// the re-check, the exchange is reversed and the item skipped; whatever cannot be put
    /// back is kept as a version, so a concurrent save is never lost.
    fn replace_exact(&self, tmp: &Path, path: &RelPath, expect: &Entry, run: &str) -> Result<()> {
        let dst = self.abs(path);
        let ours = fs::symlink_metadata(tmp).map_err(io_err(path))?.ino();
        match exchange(tmp, &dst) {
            Ok(()) => {}
            // No file at the name (a filesystem without hard links moved it to the
            // versions) or no exchange support: a plain rename after the re-check.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return match rename_noreplace(tmp, &dst) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        Err(ReplicaError::Changed(path.to_string()))
                    }
                    Err(e) => Err(io_err(path)(e)),
                };
            }
            Err(_) => return fs::rename(tmp, &dst).map_err(io_err(path)),
        }
        let out = fs::symlink_metadata(tmp).ok();
        let same = match (&out, expect.stat) {
            (Some(md), Some(st)) => md.ino() == st.ino && md.dev() == st.dev,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if same {
            // The old content is linked under the versions already.
            let _ = fs::remove_file(tmp);
            return Ok(());
        }
        // A save landed after the re-check: give it its name back.
        if exchange(tmp, &dst).is_ok() && fs::symlink_metadata(tmp).is_ok_and(|m| m.ino() == ours) {
            let _ = fs::remove_file(tmp);
            return Err(ReplicaError::Changed(path.to_string()));
        }
        // Yet another save meanwhile: keep what is at the temporary name as a version.
        let v = self.keep_version_from(tmp, path, run)?;
        Err(ReplicaError::Changed(format!(
            "{path} (a save made during the replace is kept as {v})"
        )))
    }

    /// Move `file` into the versions of `p` for `run`.
    fn keep_version_from(&self, file: &Path, p: &RelPath, run: &str) -> Result<String> {
        let mut n = 0;
        loop {
            let rel = match n {
                0 => format!("{META_DIR}/versions/{run}/{}", p.as_str()),
                _ => format!("{META_DIR}/versions/{run}/{}~{n}", p.as_str()),
            };
            let dest = self.root.join(&rel);
            if fs::symlink_metadata(&dest).is_err() {
                if let Some(parent) = dest.parent() {
                    fs::create_dir_all(parent).map_err(io_err(&rel))?;
                }
                fs::rename(file, &dest).map_err(io_err(p))?;
                return Ok(rel);
            }
            n += 1;
        }
    }

    fn tmp_path(&self) -> Result<(String, PathBuf)> {
        let dir = self.tmp_dir();
        // Created once per run (not a mkdir per file); `clean_temp` starts a run over.
        if !self.tmp_ready.load(std::sync::atomic::Ordering::Relaxed) {
            fs::create_dir_all(&dir).map_err(io_err(dir.display()))?;
            self.tmp_ready
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let token = format!("{:016x}", rand::random::<u64>());
        let p = dir.join(&token);
        Ok((token, p))
    }

    /// Whether new files can be staged unnamed here: `O_TMPFILE` works on this filesystem
    /// and such a file can be given a name ([`link_fd`]); probed once, in the temporary
    /// folder, leaving nothing behind. (A folder of the tree on another filesystem without
    /// `O_TMPFILE` has its files staged by name, one by one.)
    fn unnamed_supported(&self) -> bool {
        *self.unnamed_ok.get_or_init(|| {
            let Ok((_, probe)) = self.tmp_path() else {
                return false;
            };
            let Some(dir) = probe.parent() else {
                return false;
            };
            let Ok(fd) = rustix::fs::open(
                dir,
                rustix::fs::OFlags::TMPFILE
                    | rustix::fs::OFlags::RDWR
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::from_raw_mode(0o600),
            ) else {
                return false;
            };
            let f = File::from(fd);
            let ok = link_fd(&f, &probe).is_ok();
            let _ = fs::remove_file(&probe);
            ok
        })
    }

    /// Stage a new file as an unnamed inode (`O_TMPFILE`) in the directory it goes to, so
    /// that the staging threads do not contend on one temporary folder and `install` names
    /// it with one `linkat` in that same directory (no cross-directory rename). A run that
    /// dies before leaves nothing behind: the kernel frees the inode with its descriptor.
    /// `Ok(None)`: not possible for this file (no `O_TMPFILE` here, no descriptor to spare,
    /// no such directory); the caller stages it by name.
    fn stage_unnamed(
        &self,
        src: &dyn Replica,
        path: &RelPath,
        meta: &Entry,
    ) -> Result<Option<Staged>> {
        if meta.kind != Kind::File || !self.unnamed_supported() {
            return Ok(None);
        }
        let Some(slot) = HeldSlot::reserve() else {
            return Ok(None);
        };
        // Never stage through a symlinked directory (`install` refuses those anyway).
        if self.check_parents(path).is_err() {
            return Ok(None);
        }
        let dst = self.abs(path);
        let Some(dir) = dst.parent() else {
            return Ok(None);
        };
        let mode_at_create = create_mode_kept(meta.mode);
        let fd = match rustix::fs::open(
            dir,
            rustix::fs::OFlags::TMPFILE | rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::from_raw_mode(if mode_at_create { meta.mode } else { 0o600 }),
        ) {
            Ok(fd) => fd,
            Err(_) => return Ok(None),
        };
        let mut out = File::from(fd);
        let verified = fill_staged(&mut out, src, path, meta, mode_at_create)?;
        crate::faults::point("staged");
        let (h, len) = match verified {
            Some(v) => v,
            None => hash_file(&fd_path(&out)).map_err(io_err(path))?,
        };
        let h = check_staged(path, meta, h, len)?;
        let token = format!("{:016x}", rand::random::<u64>());
        self.unnamed
            .lock()
            .expect("lock")
            .insert(token.clone(), Held(out, slot));
        Ok(Some(Staged {
            token,
            hash: Some(h),
        }))
    }

    /// The unnamed staged file of `token`, if it is one.
    fn take_unnamed(&self, token: &str) -> Option<Held> {
        self.unnamed.lock().expect("lock").remove(token)
    }

    /// Name an unnamed staged file at `path`, where nothing was at the scan: one `linkat`
    /// that fails if anything appeared there since (SPEC invariant 4), then the entry from
    /// the still-open descriptor (the link changed its ctime; no path walk).
    fn install_unnamed(
        &self,
        held: Held,
        hash: Option<Hash>,
        path: &RelPath,
    ) -> Result<(Entry, VersionPath)> {
        self.check_parents(path)?;
        if let Some(e) = crate::faults::fail(path.as_str()) {
            return Err(io_err(path)(e));
        }
        match link_fd(&held.0, &self.abs(path)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(ReplicaError::Changed(path.to_string()))
            }
            Err(e) => return Err(io_err(path)(e)),
        }
        crate::faults::point("created");
        let md = held.0.metadata().map_err(io_err(path))?;
        let mut e =
            entry_from_meta(&md, None).ok_or_else(|| ReplicaError::Changed(path.to_string()))?;
        e.hash = hash;
        Ok((e, None))
    }

    fn stat_after(&self, p: &RelPath, hash: Option<Hash>) -> Result<Entry> {
        let mut e = self
            .lstat(p)?
            .ok_or_else(|| ReplicaError::Changed(p.to_string()))?;
        e.hash = hash;
        Ok(e)
    }

    /// One directory's part of a scan, already in path order: runs of entries, with each
    /// subdirectory's runs spliced in where its paths sort (`name/...` sorts after a
    /// sibling `name.txt`, not right after `name`), so the whole scan comes out sorted
    /// without sorting 100,000 long paths. The top levels are walked in parallel; below
    /// [`PAR_DEPTH`] each subtree is walked by one thread into one run (few, large runs:
    /// no per-directory vectors to copy and free).
    fn walk(
        &self,
        dir: &RelPath,
        depth: usize,
        rules: &Rules,
        only: &[RelPath],
        errors: &Mutex<Vec<(RelPath, String)>>,
    ) -> Runs {
        if depth >= PAR_DEPTH {
            let mut run = ScanChunk::default();
            self.walk_seq(dir, rules, only, errors, &mut run);
            return if run.is_empty() {
                Vec::new()
            } else {
                vec![run]
            };
        }
        let ls = self.list_dir(dir, rules, only, errors);
        let mut subs: Vec<Option<Runs>> = ls
            .subdirs
            .par_iter()
            .map(|d| Some(self.walk(d, depth + 1, rules, only, errors)))
            .collect();
        let mut runs = Vec::new();
        let mut run = ScanChunk::default();
        for slot in ls.order() {
            match slot {
                Slot::Own(i) => ls.push_own(dir, i, &mut run),
                Slot::Sub(j) => {
                    let sub = subs[j].take().expect("each subdirectory once");
                    if sub.is_empty() {
                        continue;
                    }
                    if !run.is_empty() {
                        runs.push(std::mem::take(&mut run));
                    }
                    runs.extend(sub);
                }
            }
        }
        if !run.is_empty() {
            runs.push(run);
        }
        runs
    }

    /// [`Self::walk`] of one subtree on this thread, appending to `out` in path order.
    fn walk_seq(
        &self,
        dir: &RelPath,
        rules: &Rules,
        only: &[RelPath],
        errors: &Mutex<Vec<(RelPath, String)>>,
        out: &mut ScanChunk,
    ) {
        let ls = self.list_dir(dir, rules, only, errors);
        for slot in ls.order() {
            match slot {
                Slot::Own(i) => ls.push_own(dir, i, out),
                Slot::Sub(j) => self.walk_seq(&ls.subdirs[j], rules, only, errors, out),
            }
        }
    }

    /// The entries of one directory that the scan keeps, and the subdirectories to descend
    /// into (unsorted).
    fn list_dir(
        &self,
        dir: &RelPath,
        rules: &Rules,
        only: &[RelPath],
        errors: &Mutex<Vec<(RelPath, String)>>,
    ) -> Listing {
        use rustix::fs::{Mode, OFlags};
        let fail = |p: RelPath, m: String| errors.lock().expect("lock").push((p, m));
        // Below the root, a directory that became a symlink since its parent was listed
        // is not followed.
        let mut flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        if !dir.is_root() {
            flags |= OFlags::NOFOLLOW;
        }
        let fd = match rustix::fs::open(self.abs(dir), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) => {
                fail(
                    dir.clone(),
                    format!("cannot list directory: {}", io::Error::from(e)),
                );
                return Listing::default();
            }
        };
        let mut ls = Listing::default();
        // Each child's path is spelled in one reused buffer, for the rules; only the
        // subdirectories to descend into get a path of their own.
        let mut full = String::with_capacity(dir.as_str().len() + 64);
        full.push_str(dir.as_str());
        if !dir.is_root() {
            full.push('/');
        }
        let at = full.len();
        // Names straight from getdents64 into a reused buffer, stat relative to the open
        // directory: no allocation per name, no path walk per file.
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 32 * 1024];
        let mut names = rustix::fs::RawDir::new(&fd, &mut buf);
        while let Some(de) = names.next() {
            let de = match de {
                Ok(de) => de,
                Err(e) => {
                    fail(
                        dir.clone(),
                        format!("cannot list directory: {}", io::Error::from(e)),
                    );
                    return Listing::default();
                }
            };
            let cname = de.file_name();
            let bytes = cname.to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            // A name fedsync cannot carry (not UTF-8, or with a backslash, which
            // `RelPath` refuses) is reported on a path of its own, spelled with U+FFFD in
            // place of what cannot be spelled, so that only it is skipped: its siblings
            // still sync, and an ssh client accepts the path.
            let (name, unsyncable) = match std::str::from_utf8(bytes) {
                Ok(n) if !n.contains('\\') => (std::borrow::Cow::Borrowed(n), None),
                Ok(n) => (
                    n.replace('\\', "\u{FFFD}").into(),
                    Some(format!("the name {n:?} has a backslash")),
                ),
                Err(_) => (
                    String::from_utf8_lossy(bytes)
                        .replace('\\', "\u{FFFD}")
                        .into(),
                    Some(format!(
                        "the name \"{}\" is not valid UTF-8",
                        bytes.escape_ascii()
                    )),
                ),
            };
            if dir.is_root() && name == META_DIR {
                continue;
            }
            full.truncate(at);
            full.push_str(&name);
            let rel = full.as_str();
            let child = || RelPath::trusted(rel.to_string());
            let st = match stat_at(&fd, cname) {
                Ok(st) => st,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    fail(child(), e.to_string());
                    continue;
                }
            };
            let Some(kind) = st.kind else {
                continue; // sockets, fifos, devices: not synced
            };
            let is_dir = kind == Kind::Dir;
            let refuse = |why: &str| {
                let more = if is_dir { " (nor anything in it)" } else { "" };
                fail(
                    child(),
                    format!("{why}, which fedsync cannot carry: not synced{more}"),
                );
            };
            if rules.is_excluded_in_walk(rel, is_dir) {
                if is_dir && rules.should_descend(rel) {
                    match &unsyncable {
                        // What a rule takes back inside it cannot be reached either.
                        Some(why) => refuse(why),
                        None => ls.subdirs.push(child()),
                    }
                }
                continue;
            }
            if !only.is_empty()
                && !only.iter().any(|o| {
                    crate::path::str_starts_with(rel, o.as_str())
                        || crate::path::str_starts_with(o.as_str(), rel)
                })
            {
                continue;
            }
            if let Some(why) = &unsyncable {
                refuse(why);
                continue;
            }
            let link = if kind == Kind::Symlink {
                let target = rustix::fs::readlinkat(&fd, cname, Vec::new())
                    .map_err(io::Error::from)
                    .and_then(|t| link_string(t.into_bytes()));
                match target {
                    Ok(l) => Some(l),
                    Err(e) => {
                        fail(child(), e.to_string());
                        continue;
                    }
                }
            } else {
                None
            };
            let Some(entry) = st.entry(link) else {
                continue;
            };
            if is_dir && rules.should_descend(rel) {
                ls.subdirs.push(child());
            }
            let start = ls.names.len() as u32;
            ls.names.push_str(&name);
            ls.own.push((start, name.len() as u32, entry));
        }
        ls
    }
}

/// What an entry needs of one `lstat`: from `statx` relative to an open directory in the
/// walk, from `std::fs::Metadata` elsewhere (the same values: see the test).
struct StatLite {
    kind: Option<Kind>,
    mode: u32,
    size: u64,
    mtime: i64,
    ctime: i64,
    ino: u64,
    dev: u64,
}

impl StatLite {
    /// The entry (no hash); `None` for sockets, fifos and devices, which are not synced.
    fn entry(&self, link: Option<String>) -> Option<Entry> {
        let kind = self.kind?;
        Some(Entry {
            kind,
            size: if kind == Kind::Dir { 0 } else { self.size },
            mtime: self.mtime,
            mode: self.mode & 0o7777,
            hash: None,
            link,
            stat: Some(StatId {
                dev: self.dev,
                ino: self.ino,
                ctime: self.ctime,
            }),
        })
    }
}

fn kind_of_mode(mode: u32) -> Option<Kind> {
    use rustix::fs::FileType;
    match FileType::from_raw_mode(mode as _) {
        FileType::RegularFile => Some(Kind::File),
        FileType::Directory => Some(Kind::Dir),
        FileType::Symlink => Some(Kind::Symlink),
        _ => None,
    }
}

/// `lstat` of `name` in the open directory `dir`: `statx` asking only for what the walk
/// uses; `fstatat` where the kernel has no `statx`.
fn stat_at(dir: &impl std::os::fd::AsFd, name: &std::ffi::CStr) -> io::Result<StatLite> {
    use rustix::fs::{AtFlags, StatxFlags};
    static NO_STATX: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !NO_STATX.load(std::sync::atomic::Ordering::Relaxed) {
        let want = StatxFlags::TYPE
            | StatxFlags::MODE
            | StatxFlags::INO
            | StatxFlags::SIZE
            | StatxFlags::MTIME
            | StatxFlags::CTIME;
        match rustix::fs::statx(dir, name, AtFlags::SYMLINK_NOFOLLOW, want) {
            Ok(x) => {
                let mode = u32::from(x.stx_mode);
                return Ok(StatLite {
                    kind: kind_of_mode(mode),
                    mode,
                    size: x.stx_size,
                    mtime: x.stx_mtime.tv_sec * 1_000_000_000 + i64::from(x.stx_mtime.tv_nsec),
                    ctime: x.stx_ctime.tv_sec * 1_000_000_000 + i64::from(x.stx_ctime.tv_nsec),
                    ino: x.stx_ino,
                    dev: rustix::fs::makedev(x.stx_dev_major, x.stx_dev_minor),
                });
            }
            Err(e) if e == rustix::io::Errno::NOSYS => {
                NO_STATX.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => return Err(e.into()),
        }
    }
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    let mode = st.st_mode as u32;
    Ok(StatLite {
        kind: kind_of_mode(mode),
        mode,
        size: st.st_size as u64,
        mtime: st.st_mtime as i64 * 1_000_000_000 + st.st_mtime_nsec as i64,
        ctime: st.st_ctime as i64 * 1_000_000_000 + st.st_ctime_nsec as i64,
        ino: st.st_ino as u64,
        dev: st.st_dev as u64,
    })
}

/// Whether a file created with `mode` gets exactly `mode`: plain permission bits that the
/// process umask (read once, from /proc; unknown = no) does not clear.
fn create_mode_kept(mode: u32) -> bool {
    static UMASK: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    let umask = UMASK.get_or_init(|| {
        let status = fs::read_to_string("/proc/self/status").ok()?;
        let v = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
        u32::from_str_radix(v.trim(), 8).ok()
    });
    umask.is_some_and(|u| mode & !0o777 == 0 && mode & u == 0)
}

/// Write `src`'s file at `path` into the staged file `out`, then give it `meta`'s mode
/// (unless it was created with it) and mtime. Small files pass through memory: the hash and
/// length of exactly the bytes written are returned; `None` for larger ones (the caller
/// hashes what landed).
fn fill_staged(
    out: &mut File,
    src: &dyn Replica,
    path: &RelPath,
    meta: &Entry,
    mode_at_create: bool,
) -> Result<Option<(Hash, u64)>> {
    let mut verified = None;
    match src.local_root() {
        Some(root) if meta.size <= SMALL_FILE => {
            // Read into a buffer sized from the scan (one byte more, to see growth) without
            // the size probes `read_to_end` makes on a `File`.
            let mut buf = Vec::with_capacity(meta.size as usize + 1);
            File::open(path.to_fs(root))
                .and_then(|f| f.take(SMALL_FILE + 1).read_to_end(&mut buf))
                .map_err(io_err(path))?;
            verified = Some((Hash::of(&buf), buf.len() as u64));
            out.write_all(&buf).map_err(io_err(path))?;
        }
        // Larger local files: let the kernel copy (copy_file_range, reflink where the
        // filesystem shares extents), then hash what landed.
        Some(root) => {
            let mut input = File::open(path.to_fs(root)).map_err(io_err(path))?;
            io::copy(&mut input, out).map_err(io_err(path))?;
        }
        None => {
            let mut input = src.open(path)?;
            io::copy(&mut input, out).map_err(io_err(path))?;
        }
    }
    if !mode_at_create {
        out.set_permissions(fs::Permissions::from_mode(meta.mode))
            .map_err(io_err(path))?;
    }
    let mtime = filetime::FileTime::from_unix_time(
        meta.mtime.div_euclid(1_000_000_000),
        meta.mtime.rem_euclid(1_000_000_000) as u32,
    );
    filetime::set_file_handle_times(out, None, Some(mtime)).map_err(io_err(path))?;
    Ok(verified)
}

/// The end-to-end check of a staged file (SPEC invariant 3): what was written hashes to the
/// scanned hash. A deferred hash (first sync): what was read is what was written, and the
/// size is the one scanned; the hash of these bytes becomes the file's.
fn check_staged(path: &RelPath, meta: &Entry, h: Hash, len: u64) -> Result<Hash> {
    if meta.hash.is_some_and(|m| m != h) || len != meta.size {
        return Err(ReplicaError::HashMismatch(path.to_string()));
    }
    Ok(h)
}

/// The path through which an open file can be opened again or linked (`/proc/self/fd/N`).
fn fd_path(f: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()))
}

/// Give the open (unnamed) file `f` the name `to`, never replacing anything there
/// (`AlreadyExists` then). `AT_EMPTY_PATH` links the descriptor itself (allowed with
/// CAP_DAC_READ_SEARCH, and since Linux 6.10 to whoever opened the file); where refused,
/// through `/proc/self/fd` (no privilege needed, but a lookup in /proc per file).
fn link_fd(f: &File, to: &Path) -> io::Result<()> {
    use std::sync::atomic::AtomicBool;
    static EMPTY_PATH_REFUSED: AtomicBool = AtomicBool::new(false);
    if !EMPTY_PATH_REFUSED.load(Ordering::Relaxed) {
        match rustix::fs::linkat(f, "", rustix::fs::CWD, to, rustix::fs::AtFlags::EMPTY_PATH) {
            Err(e) if e == rustix::io::Errno::NOENT && to.parent().is_some_and(Path::is_dir) => {
                EMPTY_PATH_REFUSED.store(true, Ordering::Relaxed)
            }
            Err(e) if e == rustix::io::Errno::PERM || e == rustix::io::Errno::INVAL => {
                EMPTY_PATH_REFUSED.store(true, Ordering::Relaxed)
            }
            r => return r.map_err(Into::into),
        }
    }
    rustix::fs::linkat(
        rustix::fs::CWD,
        fd_path(f),
        rustix::fs::CWD,
        to,
        rustix::fs::AtFlags::SYMLINK_FOLLOW,
    )
    .map_err(Into::into)
}

/// Below this depth a subtree is walked by one thread (see [`LocalReplica::walk`]).
const PAR_DEPTH: usize = 2;

/// A directory's entries and subdirectories in path order (see [`LocalReplica::walk`]).
enum Slot {
    Own(usize),
    Sub(usize),
}

/// One directory as listed by the walk: the entries kept (their names in one buffer) and
/// the subdirectories to descend into, both in the order the filesystem gave them.
#[derive(Default)]
struct Listing {
    names: String,
    own: Vec<(u32, u32, Entry)>,
    subdirs: Vec<RelPath>,
}

impl Listing {
    fn name(&self, i: usize) -> &str {
        let (at, len, _) = self.own[i];
        &self.names[at as usize..(at + len) as usize]
    }

    /// Append entry `i` (a child of `dir`) to a scan chunk.
    fn push_own(&self, dir: &RelPath, i: usize, out: &mut ScanChunk) {
        out.push_child(dir.as_str(), self.name(i), &self.own[i].2);
    }

    /// Sibling order: an entry sorts by its name, a subdirectory's contents by `name/`.
    /// Names are distinct, so only where one is a prefix of the other does the `/` count.
    fn order(&self) -> Vec<Slot> {
        let mut keyed: Vec<(&[u8], bool, Slot)> =
            Vec::with_capacity(self.own.len() + self.subdirs.len());
        keyed.extend((0..self.own.len()).map(|i| (self.name(i).as_bytes(), false, Slot::Own(i))));
        keyed.extend(
            self.subdirs
                .iter()
                .enumerate()
                .map(|(j, d)| (d.file_name().as_bytes(), true, Slot::Sub(j))),
        );
        keyed.sort_unstable_by(|(x, xd, _), (y, yd, _)| sibling_cmp(x, *xd, y, *yd));
        keyed.into_iter().map(|(_, _, s)| s).collect()
    }
}

/// `x` (followed by `/` when `xd`) against `y` (likewise), byte-wise.
fn sibling_cmp(x: &[u8], xd: bool, y: &[u8], yd: bool) -> std::cmp::Ordering {
    let n = x.len().min(y.len());
    x[..n].cmp(&y[..n]).then_with(|| {
        let tx = x[n..].iter().copied().chain(xd.then_some(b'/'));
        let ty = y[n..].iter().copied().chain(yd.then_some(b'/'));
        tx.cmp(ty)
    })
}

/// The source file at `path` under `src_root` when it is exactly the target's content (`len`
/// bytes hashing to `old_hash`) plus a tail: append-only growth. The file is returned
/// positioned right after that prefix; `None` when the source is not such a growth.
pub(crate) fn grown_source(
    src_root: &Path,
    path: &RelPath,
    len: u64,
    old_hash: Hash,
) -> Result<Option<File>> {
    let mut input = File::open(path.to_fs(src_root)).map_err(io_err(path))?;
    let prefix = crate::merge::hash_prefix(&mut input, len).map_err(io_err(path))?;
    Ok((prefix == old_hash).then_some(input))
}

/// Rename without replacing an existing `to` (RENAME_NOREPLACE; on filesystems without
/// it, a check right before a plain rename).
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    match rustix::fs::renameat_with(
        rustix::fs::CWD,
        from,
        rustix::fs::CWD,
        to,
        rustix::fs::RenameFlags::NOREPLACE,
    ) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
            if fs::symlink_metadata(to).is_ok() {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            fs::rename(from, to)
        }
        Err(e) => Err(e.into()),
    }
}

/// Swap two names atomically. `Unsupported` where the filesystem cannot.
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    match rustix::fs::renameat_with(
        rustix::fs::CWD,
        a,
        rustix::fs::CWD,
        b,
        rustix::fs::RenameFlags::EXCHANGE,
    ) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
            Err(io::Error::from(io::ErrorKind::Unsupported))
        }
        Err(e) => Err(e.into()),
    }
}

fn read_link_str(p: &Path) -> io::Result<String> {
    link_string(fs::read_link(p)?.into_os_string().into_vec())
}

/// A symlink target as text: fedsync syncs UTF-8 targets only.
fn link_string(t: Vec<u8>) -> io::Result<String> {
    String::from_utf8(t).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "symlink target is not valid UTF-8",
        )
    })
}

impl Replica for LocalReplica {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }

    fn probe(&self) -> Result<Probe> {
        match fs::metadata(&self.root) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => return Ok(Probe::Missing),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Probe::Missing),
            Err(e) => return Err(io_err(self.root.display())(e)),
        }
        match fs::read_to_string(self.meta_dir().join("id")) {
            Ok(s) => Ok(Probe::Marked(s.trim().to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let empty = fs::read_dir(&self.root)
                    .map_err(io_err(self.root.display()))?
                    .filter_map(|e| e.ok())
                    .all(|e| e.file_name() == META_DIR);
                Ok(Probe::Unmarked { empty })
            }
            Err(e) => Err(io_err(self.meta_dir().join("id").display())(e)),
        }
    }

    fn write_marker(&self, id: &str) -> Result<()> {
        let md = self.meta_dir();
        fs::create_dir_all(&md).map_err(io_err(md.display()))?;
        let tmp = md.join("id.tmp");
        fs::write(&tmp, format!("{id}\n")).map_err(io_err(tmp.display()))?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err(tmp.display()))?;
        fs::rename(&tmp, md.join("id")).map_err(io_err(md.display()))?;
        Ok(())
    }

    fn clean_temp(&self) -> Result<usize> {
        let dir = self.tmp_dir();
        self.tmp_ready
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_err(dir.display())(e)),
        };
        let mut n = 0;
        for de in rd.flatten() {
            let p = de.path();
            // Remote transfers resume from `partial-<hash>` files: keep them (for a while).
            if de
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(crate::remote::PARTIAL_PREFIX))
                && de
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age < crate::remote::PARTIAL_MAX_AGE)
            {
                continue;
            }
            let r = if de.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            r.map_err(io_err(p.display()))?;
            n += 1;
        }
        Ok(n)
    }

    fn scan(&self, rules: &Rules, cache: &CacheBlob, opts: &ScanOptions) -> Result<Scan> {
        let started = now_ns();
        let timing = crate::engine::Timing::new();
        let errors = Mutex::new(Vec::new());
        let runs = self.walk(&RelPath::root(), 0, rules, &opts.only, &errors);
        timing.mark("  walk");
        let mut errors = errors.into_inner().expect("lock");
        // The walk yields path order already (checked in debug builds); its runs are kept
        // as they are, not copied into one vector.
        let mut entries = ScanList::from_chunks(runs);
        debug_assert!({
            let v: Vec<RelPath> = entries.iter().map(|e| e.path()).collect();
            v.windows(2).all(|w| w[0] < w[1])
        });

        // Fast check: merge-join with the sorted cache; what does not match is hashed.
        let mut todo = Vec::new();
        cache.with_cursor(|rows| {
            entries.for_each_mut(|i, p, e| {
                if e.kind() != Kind::File {
                    return;
                }
                if !opts.checksum {
                    if let Some(c) = rows.find(p) {
                        if c.size == e.size() && c.mtime == e.mtime() && Some(c.stat) == e.stat() {
                            e.set_hash(Some(c.hash));
                            return;
                        }
                    }
                }
                todo.push(i);
            });
        });
        timing.mark("  fast check");
        if opts.defer_hash && !opts.checksum {
            todo.clear();
        }
        let hashed: Vec<(usize, std::result::Result<Hash, String>)> = todo
            .par_iter()
            .map(|&i| {
                let p = entries.path(i);
                (
                    i,
                    hash_file(&self.abs(&p))
                        .map(|(h, _)| h)
                        .map_err(|e| format!("cannot read: {e}")),
                )
            })
            .collect();
        let mut scan = Scan {
            started_ns: started,
            ..Default::default()
        };
        for (i, r) in hashed {
            match r {
                Ok(h) => {
                    scan.hashed_files += 1;
                    scan.hashed_bytes += entries.get(i).size();
                    scan.hashed_paths.push(entries.path(i));
                    entries.set_hash(i, Some(h));
                }
                // The entry stays (so it is never read as deleted) but is marked unreadable.
                Err(msg) => errors.push((entries.path(i), msg)),
            }
        }
        scan.entries = entries;
        scan.errors = errors;
        Ok(scan)
    }

    fn entry(&self, path: &RelPath, hash: bool) -> Result<Option<Entry>> {
        let mut e = self.lstat(path)?;
        if hash {
            if let Some(e) = e.as_mut().filter(|e| e.is_file()) {
                e.hash = Some(hash_file(&self.abs(path)).map_err(io_err(path))?.0);
            }
        }
        Ok(e)
    }

    fn open(&self, path: &RelPath) -> Result<Box<dyn Read + Send>> {
        self.check_parents(path)?;
        let f = File::open(self.abs(path)).map_err(io_err(path))?;
        Ok(Box::new(f))
    }

    fn stage_file(&self, src: &dyn Replica, path: &RelPath, meta: &Entry) -> Result<Staged> {
        // A remote source: fetched by delta against the file here, in the background and
        // pipelined with the other files of the batch; `flush` and `install` wait for it.
        if let Some(remote) = src.as_remote() {
            return remote.pull_into(self, path, meta);
        }
        let (token, tmp) = self.tmp_path()?;
        let result = (|| -> Result<Hash> {
            // Created with its final mode when the umask leaves it whole (no chmod per file).
            let mode_at_create = create_mode_kept(meta.mode);
            let mut out = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(if mode_at_create { meta.mode } else { 0o600 })
                .open(&tmp)
                .map_err(io_err(path))?;
            let verified = fill_staged(&mut out, src, path, meta, mode_at_create)?;
            drop(out);
            crate::faults::point("staged");
            let (h, len) = match verified {
                Some(v) => v,
                None => hash_file(&tmp).map_err(io_err(path))?,
            };
            check_staged(path, meta, h, len)
        })();
        match result {
            Ok(h) => Ok(Staged {
                token,
                hash: Some(h),
            }),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    fn stage_new_file(&self, src: &dyn Replica, path: &RelPath, meta: &Entry) -> Result<Staged> {
        if src.as_remote().is_none() {
            if let Some(st) = self.stage_unnamed(src, path, meta)? {
                return Ok(st);
            }
        }
        self.stage_file(src, path, meta)
    }

    fn stage_symlink(&self, target: &str) -> Result<Staged> {
        let (token, tmp) = self.tmp_path()?;
        std::os::unix::fs::symlink(target, &tmp).map_err(io_err(tmp.display()))?;
        Ok(Staged { token, hash: None })
    }

    fn discard(&self, staged: Staged) {
        drop(self.take_unnamed(&staged.token));
        let _ = crate::remote::take_pull(&self.tmp_dir().join(&staged.token));
        let _ = fs::remove_file(self.tmp_dir().join(staged.token));
    }

    fn flush(&self) -> Result<()> {
        crate::remote::wait_pulls(&self.tmp_dir());
        let f = File::open(&self.root).map_err(io_err(self.root.display()))?;
        rustix::fs::syncfs(&f).map_err(|e| io_err(self.root.display())(e.into()))?;
        Ok(())
    }

    fn install(
        &self,
        staged: Staged,
        path: &RelPath,
        expect: Option<&Entry>,
        run: &str,
    ) -> Result<(Entry, VersionPath)> {
        let tmp = self.tmp_dir().join(&staged.token);
        if let Some(held) = self.take_unnamed(&staged.token) {
            if expect.is_none() {
                return self.install_unnamed(held, staged.hash, path);
            }
            // Something to replace: a temporary name first, then the usual exchange.
            self.tmp_path()?;
            link_fd(&held.0, &tmp).map_err(io_err(path))?;
        }
        // A file pulled from a remote replica: its transfer's outcome (e.g. a hash mismatch).
        crate::remote::take_pull(&tmp)?;
        let r = (|| {
            self.check_parents(path)?;
            if let Some(e) = crate::faults::fail(path.as_str()) {
                return Err(io_err(path)(e));
            }
            if expect.is_none() {
                // A creation: one atomic rename that refuses to replace anything that
                // appeared since the scan.
                return match rename_noreplace(&tmp, &self.abs(path)) {
                    Ok(()) => {
                        crate::faults::point("created");
                        Ok((self.stat_after(path, staged.hash)?, None))
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        Err(ReplicaError::Changed(path.to_string()))
                    }
                    Err(e) => Err(io_err(path)(e)),
                };
            }
            let cur = self.recheck(path, expect)?;
            let version = match &cur {
                Some(c) if c.is_dir() => {
                    // A directory replaced by a file or link: it must be empty by now.
                    fs::remove_dir(self.abs(path))
                        .map_err(|_| ReplicaError::NotEmpty(path.to_string()))?;
                    None
                }
                Some(_) => Some(self.keep_version(path, run, true)?),
                None => None,
            };
            crate::faults::point("version kept, before replace");
            match (&cur, &version) {
                (Some(c), Some(_)) if !c.is_dir() => self.replace_exact(&tmp, path, c, run)?,
                _ => match rename_noreplace(&tmp, &self.abs(path)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        return Err(ReplicaError::Changed(path.to_string()))
                    }
                    Err(e) => return Err(io_err(path)(e)),
                },
            }
            crate::faults::point("replaced");
            Ok((self.stat_after(path, staged.hash)?, version))
        })();
        if r.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        r
    }

    fn remove(&self, path: &RelPath, expect: &Entry, run: &str) -> Result<VersionPath> {
        self.check_parents(path)?;
        if let Some(e) = crate::faults::fail(path.as_str()) {
            return Err(io_err(path)(e));
        }
        self.recheck(path, Some(expect))?;
        if expect.is_dir() {
            return match fs::remove_dir(self.abs(path)) {
                Ok(()) => Ok(None),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(_) => Err(ReplicaError::NotEmpty(path.to_string())),
            };
        }
        let v = self.keep_version(path, run, false)?;
        // A save that landed between the re-check and the rename was moved instead of the
        // file scanned: put it back (it is the user's newest content) and skip the delete.
        let moved = fs::symlink_metadata(self.root.join(&v)).ok();
        if let (Some(md), Some(st)) = (moved, expect.stat) {
            if md.ino() != st.ino || md.dev() != st.dev {
                if rename_noreplace(&self.root.join(&v), &self.abs(path)).is_ok() {
                    return Err(ReplicaError::Changed(path.to_string()));
                }
                // Something else took the name meanwhile: the save stays kept as a version.
                return Err(ReplicaError::Changed(format!(
                    "{path} (the newer save is kept as {v})"
                )));
            }
        }
        crate::faults::point("removed");
        Ok(Some(v))
    }

    fn rename(&self, from: &RelPath, to: &RelPath, expect: &Entry) -> Result<Entry> {
        self.check_parents(from)?;
        self.check_parents(to)?;
        self.recheck(from, Some(expect))?;
        if self.lstat(to)?.is_some() {
            return Err(ReplicaError::Changed(to.to_string()));
        }
        match rename_noreplace(&self.abs(from), &self.abs(to)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(ReplicaError::Changed(to.to_string()))
            }
            Err(e) => return Err(io_err(to)(e)),
        }
        crate::faults::point("renamed");
        self.stat_after(to, expect.hash)
    }

    fn mkdir(&self, path: &RelPath, mode: u32, expect: Option<&Entry>, run: &str) -> Result<Entry> {
        self.check_parents(path)?;
        let cur = self.recheck(path, expect)?;
        match cur {
            Some(c) if c.is_dir() => {}
            Some(_) => {
                self.keep_version(path, run, false)?;
                fs::create_dir(self.abs(path)).map_err(io_err(path))?;
            }
            None => fs::create_dir(self.abs(path)).map_err(io_err(path))?,
        }
        let abs = self.abs(path);
        fs::set_permissions(&abs, fs::Permissions::from_mode(mode | 0o700))
            .map_err(io_err(path))?;
        self.safe_dirs
            .lock()
            .expect("lock")
            .insert(path.as_str().to_string());
        self.stat_after(path, None)
    }

    fn set_mode(&self, path: &RelPath, mode: u32, expect: &Entry) -> Result<Entry> {
        self.check_parents(path)?;
        self.recheck(path, Some(expect))?;
        fs::set_permissions(self.abs(path), fs::Permissions::from_mode(mode))
            .map_err(io_err(path))?;
        self.stat_after(path, expect.hash)
    }

    fn list_versions(&self, path: Option<&RelPath>) -> Result<Vec<VersionInfo>> {
        let vdir = self.meta_dir().join("versions");
        let runs = match fs::read_dir(&vdir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(vdir.display())(e)),
        };
        let mut out = Vec::new();
        let mut push = |run: &str, rel: &str, md: &fs::Metadata| {
            // `<path>~N` is the N+1-th version of <path> kept by the same run.
            let orig = match rel.rsplit_once('~') {
                Some((p, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => p,
                _ => rel,
            };
            if let Some(e) = entry_from_meta(md, None) {
                out.push(VersionInfo {
                    id: format!("{META_DIR}/versions/{run}/{rel}"),
                    run: run.to_string(),
                    path: orig.to_string(),
                    kind: e.kind,
                    size: e.size,
                    mtime: e.mtime,
                });
            }
        };
        for de in runs.flatten() {
            let run = de.file_name().to_string_lossy().into_owned();
            let rdir = de.path();
            match path {
                Some(p) => {
                    let base = p.to_fs(&rdir);
                    let Some(name) = base.file_name().map(|n| n.to_string_lossy().into_owned())
                    else {
                        continue;
                    };
                    let Some(parent) = base.parent() else {
                        continue;
                    };
                    let Ok(rd) = fs::read_dir(parent) else {
                        continue;
                    };
                    for f in rd.flatten() {
                        let fname = f.file_name().to_string_lossy().into_owned();
                        let is_ver = fname == name
                            || fname.strip_prefix(&name).is_some_and(|r| {
                                r.len() > 1
                                    && r.starts_with('~')
                                    && r[1..].bytes().all(|b| b.is_ascii_digit())
                            });
                        if !is_ver {
                            continue;
                        }
                        if let Ok(md) = f.path().symlink_metadata() {
                            if !md.is_dir() {
                                let rel = match p.parent().filter(|par| !par.is_root()) {
                                    Some(par) => format!("{}/{fname}", par.as_str()),
                                    None => fname,
                                };
                                push(&run, &rel, &md);
                            }
                        }
                    }
                }
                None => {
                    for e in ignore::WalkBuilder::new(&rdir)
                        .standard_filters(false)
                        .build()
                        .flatten()
                    {
                        let Ok(md) = e.path().symlink_metadata() else {
                            continue;
                        };
                        if md.is_dir() {
                            continue;
                        }
                        if let Ok(rel) = e.path().strip_prefix(&rdir) {
                            push(&run, &rel.to_string_lossy(), &md);
                        }
                    }
                }
            }
        }
        out.sort_by(|a, b| {
            a.path
                .cmp(&b.path)
                .then(b.run.cmp(&a.run))
                .then(b.id.cmp(&a.id))
        });
        Ok(out)
    }

    fn stage_version(&self, id: &str) -> Result<Staged> {
        let src = self.version_abs(id)?;
        let md = fs::symlink_metadata(&src).map_err(io_err(id))?;
        let (token, tmp) = self.tmp_path()?;
        if md.file_type().is_symlink() {
            let target = read_link_str(&src).map_err(io_err(id))?;
            std::os::unix::fs::symlink(target, &tmp).map_err(io_err(id))?;
            return Ok(Staged { token, hash: None });
        }
        // A copy (reflink / copy_file_range where the filesystem can), never a hard link:
        // an in-place edit of the restored file must not change the kept version.
        fs::copy(&src, &tmp).map_err(io_err(id))?;
        let mtime = filetime::FileTime::from_last_modification_time(&md);
        filetime::set_file_mtime(&tmp, mtime).map_err(io_err(id))?;
        let (h, _) = hash_file(&tmp).map_err(io_err(id))?;
        Ok(Staged {
            token,
            hash: Some(h),
        })
    }

    fn append_tail(
        &self,
        src: &dyn Replica,
        path: &RelPath,
        expect: &Entry,
        meta: &Entry,
    ) -> Result<Option<Entry>> {
        let (Some(src_root), Some(old_hash), Some(new_hash)) =
            (src.local_root(), expect.hash, meta.hash)
        else {
            return Ok(None);
        };
        if !expect.is_file() || meta.size <= expect.size {
            return Ok(None);
        }
        self.check_parents(path)?;
        if let Some(e) = crate::faults::fail(path.as_str()) {
            return Err(io_err(path)(e));
        }
        let Some(mut input) = grown_source(src_root, path, expect.size, old_hash)? else {
            return Ok(None);
        };
        self.recheck(path, Some(expect))?;
        let dst = self.abs(path);
        let mut out = fs::OpenOptions::new()
            .append(true)
            .open(&dst)
            .map_err(io_err(path))?;
        // The file may not have grown since the re-check (the appends we make are ours).
        if out.metadata().map_err(io_err(path))?.len() != expect.size {
            return Err(ReplicaError::Changed(path.to_string()));
        }
        let tail = meta.size - expect.size;
        let written = io::copy(&mut (&mut input).take(tail), &mut out).map_err(io_err(path))?;
        let restore = |out: &File| {
            let _ = out.set_len(expect.size);
            let _ = out.sync_data();
        };
        if written != tail {
            restore(&out);
            return Err(ReplicaError::HashMismatch(path.to_string()));
        }
        crate::faults::point("appended");
        out.sync_data().map_err(io_err(path))?;
        let (h, len) = hash_file(&dst).map_err(io_err(path))?;
        if h != new_hash || len != meta.size {
            // The source changed while it was read: cut back to the old content.
            restore(&out);
            return Err(ReplicaError::HashMismatch(path.to_string()));
        }
        out.set_permissions(fs::Permissions::from_mode(meta.mode))
            .map_err(io_err(path))?;
        let mtime = filetime::FileTime::from_unix_time(
            meta.mtime.div_euclid(1_000_000_000),
            meta.mtime.rem_euclid(1_000_000_000) as u32,
        );
        filetime::set_file_handle_times(&out, None, Some(mtime)).map_err(io_err(path))?;
        drop(out);
        Ok(Some(self.stat_after(path, Some(h))?))
    }

    fn stage_prefix(&self, path: &RelPath, len: u64) -> Result<Staged> {
        self.check_parents(path)?;
        let src = self.abs(path);
        let md = fs::metadata(&src).map_err(io_err(path))?;
        self.stage_local(&mut |tmp: &Path| {
            let mut input = File::open(&src)?;
            let mut out = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(tmp)?;
            let n = io::copy(&mut (&mut input).take(len), &mut out)?;
            if n != len {
                return Err(io::Error::other("the file is shorter than its old length"));
            }
            out.set_permissions(md.permissions())?;
            out.sync_data()?;
            drop(out);
            Ok(hash_file(tmp)?.0)
        })
    }

    fn stage_local(&self, fill: &mut dyn FnMut(&Path) -> io::Result<Hash>) -> Result<Staged> {
        let (token, tmp) = self.tmp_path()?;
        match fill(&tmp) {
            Ok(h) => Ok(Staged {
                token,
                hash: Some(h),
            }),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(io_err(tmp.display())(e))
            }
        }
    }

    fn remove_version(&self, id: &str) -> Result<u64> {
        let p = self.version_abs(id)?;
        let md = fs::symlink_metadata(&p).map_err(io_err(id))?;
        fs::remove_file(&p).map_err(io_err(id))?;
        // Drop folders the removal emptied, up to the versions folder itself.
        let stop = self.meta_dir().join("versions");
        let mut dir = p.parent().map(Path::to_path_buf);
        while let Some(d) = dir {
            if d == stop || !d.starts_with(&stop) || fs::remove_dir(&d).is_err() {
                break;
            }
            dir = d.parent().map(Path::to_path_buf);
        }
        Ok(if md.nlink() > 1 { 0 } else { md.len() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scan of `root` under a profile with `head` (top-level keys) and two replicas.
    fn walk_with(root: &Path, head: &str) -> (Rules, Scan) {
        let rep = LocalReplica::new(root.to_path_buf(), "t".into());
        let text = format!("{head}[replicas]\na = \"/x\"\nb = \"/y\"\n");
        let profile = crate::config::Profile::parse("t", &text, "t.toml").unwrap();
        let rules = Rules::compile(&profile).unwrap();
        let scan = rep
            .scan(&rules, &CacheBlob::default(), &ScanOptions::default())
            .unwrap();
        (rules, scan)
    }

    /// The walk matches each listed name alone against `ignore` (its ancestors were
    /// descended into, so none is ignored): the same result as matching every ancestor,
    /// including a negation below an ignored directory, which cannot re-include.
    #[test]
    fn walk_ignores_as_gitignore_does() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let files = [
            "build/keep.txt",
            "build/x.o",
            "a.log",
            "important.log",
            "src/b.log",
            "src/important.log",
            "src/c.rs",
            "build2/keep.txt",
            "src/build/deep/f",
        ];
        for f in files {
            let p = root.join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, f).unwrap();
        }
        let (rules, scan) = walk_with(
            root,
            "ignore = [\"build/\", \"!build/keep.txt\", \"*.log\", \"!important.log\"]\n",
        );
        let got: Vec<String> = scan.entries.iter().map(|e| e.path().to_string()).collect();
        assert_eq!(
            got,
            [
                "build2",
                "build2/keep.txt",
                "important.log",
                "src",
                "src/c.rs",
                "src/important.log"
            ]
        );
        for (p, e) in scan.entries.iter_owned() {
            assert!(!rules.is_excluded(&p, e.is_dir()), "{p}");
        }
    }

    /// The walk's `statx` relative to the directory gives exactly what `lstat` gives (the
    /// fast check and the pre-replace re-check compare the two).
    #[test]
    fn walk_stat_matches_lstat() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("d")).unwrap();
        fs::write(root.join("d/f"), b"12345").unwrap();
        fs::set_permissions(root.join("d/f"), fs::Permissions::from_mode(0o751)).unwrap();
        std::os::unix::fs::symlink("f", root.join("d/l")).unwrap();
        fs::write(root.join("g"), b"").unwrap();
        let (_, scan) = walk_with(root, "");
        assert_eq!(scan.entries.len(), 4);
        for (p, e) in scan.entries.iter_owned() {
            let md = fs::symlink_metadata(root.join(p.as_str())).unwrap();
            let link = md
                .file_type()
                .is_symlink()
                .then(|| read_link_str(&root.join(p.as_str())).unwrap());
            let mut want = entry_from_meta(&md, link).unwrap();
            want.hash = e.hash;
            assert_eq!(e, want, "{p}");
            assert_eq!(e.stat, want.stat, "{p}");
        }
    }

    fn two(dir: &Path) -> (LocalReplica, LocalReplica) {
        for d in ["src/d", "dst/d"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        (
            LocalReplica::new(dir.join("src"), "src".into()),
            LocalReplica::new(dir.join("dst"), "dst".into()),
        )
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// A new file is staged as an unnamed inode (nothing visible anywhere until it is
    /// installed) and named in place with the stat it ends with: the entry recorded is the
    /// one the next scan sees (same inode and ctime, so it is not hashed again).
    #[test]
    fn a_new_file_is_staged_unnamed_and_named_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = two(dir.path());
        let p = RelPath::new("d/f.txt").unwrap();
        let big = RelPath::new("d/big.bin").unwrap();
        fs::write(dir.path().join("src/d/f.txt"), "new content\n").unwrap();
        let data: Vec<u8> = (0..SMALL_FILE as usize * 3)
            .map(|i| (i % 251) as u8)
            .collect();
        fs::write(dir.path().join("src/d/big.bin"), &data).unwrap();
        fs::set_permissions(
            dir.path().join("src/d/f.txt"),
            fs::Permissions::from_mode(0o751),
        )
        .unwrap();
        for q in [&p, &big] {
            let meta = src.entry(q, true).unwrap().unwrap();
            let st = dst.stage_new_file(&src, q, &meta).unwrap();
            if !dst.unnamed_supported() {
                eprintln!("no O_TMPFILE here: staged by name");
                return;
            }
            assert!(dst.unnamed.lock().unwrap().contains_key(&st.token));
            assert_eq!(st.hash, meta.hash);
            assert!(!dst.abs(q).exists(), "visible before install");
            assert!(names(&dst.tmp_dir()).is_empty());
            let (e, v) = dst.install(st, q, None, "run").unwrap();
            assert_eq!(v, None);
            let now = dst.lstat(q).unwrap().unwrap();
            assert_eq!(e.stat, now.stat, "recorded stat is not the final one");
            assert_eq!(
                (e.mtime, e.mode, e.size),
                (meta.mtime, meta.mode, meta.size)
            );
            assert_eq!(e.hash, meta.hash);
        }
        assert_eq!(fs::read(dst.abs(&big)).unwrap(), data);
        assert_eq!(fs::read_to_string(dst.abs(&p)).unwrap(), "new content\n");
        assert!(dst.unnamed.lock().unwrap().is_empty());
        assert!(names(&dst.tmp_dir()).is_empty());

        // Discarded: nothing left anywhere.
        let q = RelPath::new("d/g.txt").unwrap();
        fs::write(src.abs(&q), "g").unwrap();
        let meta = src.entry(&q, true).unwrap().unwrap();
        let st = dst.stage_new_file(&src, &q, &meta).unwrap();
        dst.discard(st);
        assert!(dst.unnamed.lock().unwrap().is_empty());
        assert_eq!(
            names(&dst.abs(&RelPath::new("d").unwrap())),
            ["big.bin", "f.txt"]
        );
        assert!(names(&dst.tmp_dir()).is_empty());
    }

    /// SPEC invariant 4: a file that appeared at the name after the scan is never replaced
    /// by the new one (the link refuses an existing name); with the entry it now has, the
    /// usual replace keeps it as a version.
    #[test]
    fn an_unnamed_file_never_replaces_one_that_appeared_since_the_scan() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = two(dir.path());
        let p = RelPath::new("d/f.txt").unwrap();
        fs::write(src.abs(&p), "ours\n").unwrap();
        let meta = src.entry(&p, true).unwrap().unwrap();
        let st = dst.stage_new_file(&src, &p, &meta).unwrap();
        fs::write(dst.abs(&p), "theirs\n").unwrap();
        let r = dst.install(st, &p, None, "run");
        assert!(matches!(r, Err(ReplicaError::Changed(_))), "{r:?}");
        assert_eq!(fs::read_to_string(dst.abs(&p)).unwrap(), "theirs\n");
        assert!(dst.unnamed.lock().unwrap().is_empty());
        assert!(names(&dst.tmp_dir()).is_empty());

        // Staged as new, installed over what is there now (re-checked): the old one is kept.
        let st = dst.stage_new_file(&src, &p, &meta).unwrap();
        let cur = dst.lstat(&p).unwrap().unwrap();
        let (e, v) = dst.install(st, &p, Some(&cur), "run").unwrap();
        assert_eq!(fs::read_to_string(dst.abs(&p)).unwrap(), "ours\n");
        let v = v.expect("a version kept");
        assert_eq!(fs::read_to_string(dst.root.join(&v)).unwrap(), "theirs\n");
        assert_eq!(e.stat, dst.lstat(&p).unwrap().unwrap().stat);
        assert!(names(&dst.tmp_dir()).is_empty());
    }

    /// The walk yields byte order of whole paths without a global sort, including the
    /// cases where a subtree does not follow its directory's own entry (`a` < `a.txt` <
    /// `a/x`) and names sorting around '/'.
    #[test]
    fn walk_yields_path_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let names = [
            "a", "a.txt", "a-b", "a0", "a/x", "a/x.y", "a/x/z", "a/x!", "b", "b/c/d/e", "b/c.d",
            "b/c/d.e", "B", "é", "é/z", "z!", "z", "z/1", "z/0/0", "z.", "zz/y",
        ];
        let dirs = ["a", "a/x", "b", "b/c", "b/c/d", "é", "z", "z/0", "zz"];
        for d in dirs {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        for n in names {
            if !dirs.contains(&n) {
                fs::write(root.join(n), n).unwrap();
            }
        }
        let (_, scan) = walk_with(root, "");
        let got: Vec<String> = scan.entries.iter().map(|e| e.path().to_string()).collect();
        let got: Vec<&str> = got.iter().map(String::as_str).collect();
        let mut want: Vec<&str> = got.clone();
        want.sort();
        assert_eq!(got, want);
        let mut all: Vec<&str> = names.iter().chain(dirs.iter()).copied().collect();
        all.sort();
        all.dedup();
        assert_eq!(got, all);
    }
}
