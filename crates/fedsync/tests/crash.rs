//! SPEC section 5, invariant 9 (and 1-3 under faults): `kill -9` at any crash point of a
//! mixed run leaves no torn file under its real name and loses nothing, and the next run
//! finishes the job: both trees equal what an uninterrupted run produces, no temporary file
//! is left, and the run after that has nothing to do.
//!
//! The kills are deterministic: `FEDSYNC_CRASH_AT=k` makes the binary SIGKILL itself at its
//! k-th crash point (see `fedsync-core/src/faults.rs`); `FEDSYNC_CRASH_COUNT` makes an
//! uninterrupted run print how many points it passed, so the kills can be spread over all
//! of them.
//!
//! The scenario: ~1500 small files in nested folders and three large ones (2.5-5.6 MB),
//! synced once to establish the base; then on A 200 overwrites, 100 deletions, 50 moves
//! (half into a new folder), 200 new files, a new large file and a rewritten large file;
//! on B 100 overwrites of other files and 80 new files; and one file edited differently on
//! both sides (kept both ways by the default policy). All mtimes are explicit.
//!
//! Every iteration starts from that same prepared state at the same absolute paths (the
//! named profile and the state in FEDSYNC_HOME record the roots): the prepared A and B are
//! kept as a template and re-created as hard links to it (the engine never writes into an
//! existing file, which the test checks at the end), FEDSYNC_HOME is copied. The fixture
//! lives on a tmpfs when there is one with room (/dev/shm), since creating and deleting
//! thousands of files is slow on this machine's disk.
//!
//! A second test kills the run, then kills the run that recovers from it, and checks that
//! the next run still recovers.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use fedsync_core::entry::Hash;
use filetime::FileTime;

/// Profile name used throughout.
const PROFILE: &str = "p";
/// Small files of the base.
const SMALL: usize = 1500;
/// Base mtimes start here; edits made before the faulted run start at `T_EDIT`.
const T_BASE: i64 = 1_600_000_000;
const T_EDIT: i64 = 1_600_500_000;
/// The conflicting file (edited on both sides).
const CONFLICT: usize = 9;
/// Kill points spread evenly over the run (plus the first and last few).
const SPREAD: u64 = 50;
const EDGE: u64 = 6;
/// Preferred parent of the fixture (see [`Lab::new`]), used when it has this much room.
const TMPFS: &str = "/dev/shm";
const TMPFS_ROOM_KB: u64 = 1 << 20;

// ------------------------------------------------------------------------ the scenario

fn small_path(i: usize) -> String {
    format!("d{:02}/s{}/f{i:04}.txt", i % 12, (i / 12) % 5)
}

/// Unique, deterministic text of 60..760 bytes for (tag, i).
fn small_content(tag: &str, i: usize) -> Vec<u8> {
    let line = format!("{tag} #{i}: the quick brown fox jumps over the lazy dog\n");
    let len = 60 + (i * 37 + tag.len() * 11) % 700;
    let mut v = line.repeat(len / line.len() + 1).into_bytes();
    v.truncate(len.max(line.len()));
    v
}

struct Large {
    path: &'static str,
    size: usize,
    seed: u64,
}

const LARGE: [Large; 3] = [
    Large {
        path: "big/large0.bin",
        size: 2_500_000,
        seed: 101,
    },
    Large {
        path: "big/large1.bin",
        size: 4_200_000,
        seed: 102,
    },
    Large {
        path: "media/clips/large2.bin",
        size: 5_600_000,
        seed: 103,
    },
];
/// The large file A rewrites (same size, new content) and the one A creates.
const LARGE_EDITED: usize = 1;
const LARGE_NEW: &str = "media/new/large_new.bin";

/// What the edits before the faulted run touch, by small-file index (50 files per class).
fn a_overwrites(i: usize) -> bool {
    i % 30 < 4 && i != CONFLICT
}
fn a_deletes(i: usize) -> bool {
    matches!(i % 30, 4 | 5)
}
fn a_moves(i: usize) -> bool {
    i % 30 == 6
}
fn b_overwrites(i: usize) -> bool {
    matches!(i % 30, 7 | 8)
}

/// New path of a moved file: half into a new directory, half renamed into another folder.
fn moved_path(i: usize) -> String {
    let k = i / 30;
    if k % 2 == 1 {
        format!("d{:02}/s{}/renamed-{i:04}.txt", (i + 5) % 12, (i / 7) % 5)
    } else {
        format!("moved/m{}/f{i:04}.txt", k % 5)
    }
}

fn a_created(k: usize) -> String {
    if k < 140 {
        format!("fresh/g{}/n{k:03}.txt", k % 7)
    } else {
        format!("d{:02}/s{}/new-{k:03}.txt", k % 12, k % 5)
    }
}

fn b_created(k: usize) -> String {
    if k < 60 {
        format!("fromb/h{}/c{k:02}.txt", k % 3)
    } else {
        format!("d{:02}/s{}/bnew-{k:02}.txt", (k * 7) % 12, k % 5)
    }
}

/// Large contents, generated once.
struct Blobs {
    base: Vec<Vec<u8>>,
    edited: Vec<u8>,
    new: Vec<u8>,
}

impl Blobs {
    fn new() -> Blobs {
        Blobs {
            base: LARGE.iter().map(|l| noise(l.size, l.seed)).collect(),
            edited: noise(LARGE[LARGE_EDITED].size, 202),
            new: noise(3_300_000, 204),
        }
    }
}

/// The base tree, written on A only (the base sync copies it to B).
fn write_base(a: &Path, blobs: &Blobs) {
    for i in 0..SMALL {
        write_at(
            a,
            &small_path(i),
            small_content("base", i),
            T_BASE + 3 * i as i64,
        );
    }
    for (j, l) in LARGE.iter().enumerate() {
        write_at(a, l.path, &blobs.base[j], T_BASE + 10_000 + j as i64);
    }
}

/// The edits on both sides that the faulted run has to reconcile.
fn edit_both(a: &Path, b: &Path, blobs: &Blobs) {
    for i in 0..SMALL {
        let p = small_path(i);
        if a_overwrites(i) {
            write_at(a, &p, small_content("edit-a", i), T_EDIT + i as i64);
        } else if a_deletes(i) {
            std::fs::remove_file(a.join(&p)).expect("delete on a");
        } else if a_moves(i) {
            let to = a.join(moved_path(i));
            std::fs::create_dir_all(to.parent().unwrap()).expect("mkdir for move");
            std::fs::rename(a.join(&p), to).expect("move on a");
        } else if b_overwrites(i) {
            write_at(b, &p, small_content("edit-b", i), T_EDIT + i as i64);
        }
    }
    for k in 0..200 {
        write_at(
            a,
            &a_created(k),
            small_content("new-a", k),
            T_EDIT + 20_000 + k as i64,
        );
    }
    for k in 0..80 {
        write_at(
            b,
            &b_created(k),
            small_content("new-b", k),
            T_EDIT + 30_000 + k as i64,
        );
    }
    write_at(a, LARGE[LARGE_EDITED].path, &blobs.edited, T_EDIT + 40_000);
    write_at(a, LARGE_NEW, &blobs.new, T_EDIT + 40_001);
    // The conflict: both sides edit the same file; B's edit is newer and keeps the name.
    let p = small_path(CONFLICT);
    write_at(
        a,
        &p,
        small_content("conflict-a", CONFLICT),
        T_EDIT + 50_000,
    );
    write_at(
        b,
        &p,
        small_content("conflict-b", CONFLICT),
        T_EDIT + 50_010,
    );
}

// ------------------------------------------------------------------------ looking at trees

type H = [u8; 32];

fn short(h: &H) -> String {
    h[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// One entry of a tree as this suite compares it (directory mtimes are not compared).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ent {
    File {
        hash: H,
        mode: u32,
        mtime: (i64, u32),
    },
    Dir {
        mode: u32,
    },
    Link(PathBuf),
}

type Tree = BTreeMap<String, Ent>;

/// Content hashes of the template's files by (device, inode), with the size and mtime they
/// had. The live trees are hard links to the template, and nothing may write into an
/// existing file in place (new content always arrives as a new file renamed into place), so
/// a file still linked to the template, same size and mtime, needs no re-hashing; the
/// template is re-hashed at the end to prove it was not written.
type Known = HashMap<(u64, u64), (H, u64, (i64, u32))>;

/// Every entry under `root`, `.fedsync/` included, by relative `/`-separated path (the root
/// itself is not listed). A missing root is an empty tree.
fn scan(root: &Path, known: &Known) -> Tree {
    fn walk(root: &Path, dir: &Path, known: &Known, out: &mut Tree) {
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir == root => return,
            Err(e) => panic!("list {}: {e}", dir.display()),
        };
        for de in rd {
            let p = de.expect("dir entry").path();
            let rel = p
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            let md = std::fs::symlink_metadata(&p)
                .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
            let mode = md.permissions().mode() & 0o7777;
            if md.file_type().is_symlink() {
                out.insert(rel, Ent::Link(std::fs::read_link(&p).expect("readlink")));
            } else if md.is_dir() {
                out.insert(rel, Ent::Dir { mode });
                walk(root, &p, known, out);
            } else {
                let t = FileTime::from_last_modification_time(&md);
                let mtime = (t.unix_seconds(), t.nanoseconds());
                let hash = match known.get(&(md.dev(), md.ino())) {
                    Some((h, size, m)) if *size == md.len() && *m == mtime => *h,
                    _ => {
                        let data = std::fs::read(&p)
                            .unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
                        Hash::of(&data).0
                    }
                };
                out.insert(rel, Ent::File { hash, mode, mtime });
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, known, &mut out);
    out
}

fn is_meta(path: &str) -> bool {
    path == ".fedsync" || path.starts_with(".fedsync/")
}

/// The synced part of a tree (without `.fedsync/`).
fn user(t: &Tree) -> Tree {
    t.iter()
        .filter(|(p, _)| !is_meta(p))
        .map(|(p, e)| (p.clone(), e.clone()))
        .collect()
}

/// The files of a tree, with their content hashes.
fn files(t: &Tree) -> impl Iterator<Item = (&String, &H)> {
    t.iter().filter_map(|(p, e)| match e {
        Ent::File { hash, .. } => Some((p, hash)),
        _ => None,
    })
}

const VERSIONS: &str = ".fedsync/versions/";
const TMP: &str = ".fedsync/tmp/";

/// `NAME.conflict-<replica>-<YYYYMMDD-HHMMSS>` with the stamp replaced by `<stamp>`, so
/// runs at different wall-clock times compare equal.
fn normalize_name(path: &str) -> String {
    const MARK: &str = ".conflict-";
    let mut out = String::new();
    let mut rest = path;
    while let Some(i) = rest.find(MARK) {
        let (head, tail) = rest.split_at(i + MARK.len());
        out.push_str(head);
        rest = tail;
        let Some(dash) = rest.find('-') else { break };
        let stamp = rest.as_bytes().get(dash + 1..dash + 16);
        let is_stamp = stamp.is_some_and(|s| {
            s.iter().enumerate().all(|(j, c)| {
                if j == 8 {
                    *c == b'-'
                } else {
                    c.is_ascii_digit()
                }
            })
        });
        if is_stamp {
            out.push_str(&rest[..dash + 1]);
            out.push_str("<stamp>");
            rest = &rest[dash + 16..];
        }
    }
    out.push_str(rest);
    out
}

fn normalized(t: &Tree) -> Tree {
    t.iter()
        .map(|(p, e)| (normalize_name(p), e.clone()))
        .collect()
}

/// Paths whose entries differ between two trees (missing on one side included).
fn diff(x: &Tree, y: &Tree) -> Vec<String> {
    let show = |e: Option<&Ent>| match e {
        None => "missing".to_string(),
        Some(Ent::File { hash, mode, mtime }) => format!(
            "file {} mode {mode:o} mtime {}.{:09}",
            short(hash),
            mtime.0,
            mtime.1
        ),
        Some(Ent::Dir { mode }) => format!("dir mode {mode:o}"),
        Some(Ent::Link(t)) => format!("link -> {}", t.display()),
    };
    let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
    keys.into_iter()
        .filter(|k| x.get(*k) != y.get(*k))
        .map(|k| format!("{k}: {} vs {}", show(x.get(k)), show(y.get(k))))
        .collect()
}

// ------------------------------------------------------------------------ the lab

/// Re-create `src` at `dst`: directories new (with their modes and mtimes, set after their
/// contents), files as hard links, symlinks copied.
fn link_tree(src: &Path, dst: &Path) {
    let md =
        std::fs::symlink_metadata(src).unwrap_or_else(|e| panic!("stat {}: {e}", src.display()));
    let t = FileTime::from_last_modification_time(&md);
    if md.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(src).expect("readlink"), dst)
            .expect("symlink");
        filetime::set_symlink_file_times(dst, t, t).expect("link mtime");
    } else if md.is_dir() {
        std::fs::create_dir(dst).unwrap_or_else(|e| panic!("mkdir {}: {e}", dst.display()));
        for de in std::fs::read_dir(src).expect("read_dir") {
            let de = de.expect("dir entry");
            link_tree(&de.path(), &dst.join(de.file_name()));
        }
        std::fs::set_permissions(dst, md.permissions()).expect("chmod dir");
        filetime::set_file_times(dst, t, t).expect("dir mtime");
    } else {
        std::fs::hard_link(src, dst).unwrap_or_else(|e| panic!("link {}: {e}", src.display()));
    }
}

/// Copy a (small) tree with file modes and mtimes.
fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir(dst).unwrap_or_else(|e| panic!("mkdir {}: {e}", dst.display()));
    for de in std::fs::read_dir(src).expect("read_dir") {
        let de = de.expect("dir entry");
        let (from, to) = (de.path(), dst.join(de.file_name()));
        let md = std::fs::symlink_metadata(&from).expect("stat");
        if md.is_dir() {
            copy_tree(&from, &to);
        } else {
            std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
            let t = FileTime::from_last_modification_time(&md);
            filetime::set_file_times(&to, t, t).expect("mtime");
        }
    }
}

/// Free space on [`TMPFS`] in KiB (`df -Pk`), if it can be told.
fn tmpfs_room_kb() -> Option<u64> {
    let out = std::process::Command::new("df")
        .args(["-Pk", TMPFS])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().nth(1)?.split_whitespace().nth(3)?.parse().ok()
}

/// One run of the binary, with the signal that ended it (if any).
struct Ran {
    code: Option<i32>,
    signal: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?} signal {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.signal, self.stdout, self.stderr
        )
    }
}

struct Lab {
    fx: Fx,
    /// The prepared state: A, B and FEDSYNC_HOME after the base sync and the edits.
    tpl: PathBuf,
    /// Where earlier iterations' trees are renamed to on a disk, where deleting many files
    /// slows down creating files for a while (on a tmpfs they are deleted at once).
    trash: PathBuf,
    on_tmpfs: bool,
    generation: std::cell::Cell<u32>,
    known: Known,
    /// The template's A and B as first hashed (for the integrity check at the end).
    tpl_trees: [Tree; 2],
    /// Every content hash of A or B before the run -> where it was (`a:PATH`).
    before: HashMap<H, Vec<String>>,
}

impl Lab {
    /// Base tree on A, named profile, base sync, edits on both sides; then that prepared
    /// state becomes the template.
    fn new() -> Lab {
        // A tmpfs where there is one with room: a SIGKILL leaves the same page-cache state
        // on any filesystem, and file creation is far cheaper there than on a VM's disk.
        let fast = tmpfs_room_kb()
            .is_some_and(|kb| kb >= TMPFS_ROOM_KB)
            .then(|| Fx::new_in(Path::new(TMPFS)).ok())
            .flatten();
        let on_tmpfs = fast.is_some();
        let fx = fast.unwrap_or_else(Fx::new);
        let blobs = Blobs::new();
        write_base(&fx.a, &blobs);
        fx.run(&["init", PROFILE, fx.a_str(), fx.b_str()]).ok();
        fx.run(&["sync", PROFILE]).ok();
        let none = Known::new();
        assert_eq!(
            user(&scan(&fx.a, &none)),
            user(&scan(&fx.b, &none)),
            "the base sync left a and b different"
        );
        edit_both(&fx.a, &fx.b, &blobs);

        let tpl = fx.dir.join("template");
        let trash = fx.dir.join("trash");
        std::fs::create_dir(&tpl).expect("mkdir template");
        std::fs::create_dir(&trash).expect("mkdir trash");
        for (dir, name) in [(&fx.a, "a"), (&fx.b, "b"), (&fx.home, "home")] {
            std::fs::rename(dir, tpl.join(name)).expect("move into the template");
        }
        let tpl_trees = [scan(&tpl.join("a"), &none), scan(&tpl.join("b"), &none)];
        let mut known = Known::new();
        let mut before: HashMap<H, Vec<String>> = HashMap::new();
        for (side, t) in ["a", "b"].iter().zip(&tpl_trees) {
            for (p, e) in t {
                let Ent::File { hash: h, mtime, .. } = e else {
                    continue;
                };
                let md = std::fs::metadata(tpl.join(side).join(p)).expect("stat");
                known.insert((md.dev(), md.ino()), (*h, md.len(), *mtime));
                if !is_meta(p) {
                    before.entry(*h).or_default().push(format!("{side}:{p}"));
                }
            }
        }
        Lab {
            fx,
            tpl,
            trash,
            on_tmpfs,
            generation: std::cell::Cell::new(0),
            known,
            tpl_trees,
            before,
        }
    }

    /// Put the prepared state at the fixture's paths (the profile names them).
    fn prepare(&self) {
        let fx = &self.fx;
        let g = self.generation.get() + 1;
        self.generation.set(g);
        let bin = self.trash.join(g.to_string());
        if !self.on_tmpfs {
            std::fs::create_dir(&bin).expect("mkdir trash bin");
        }
        for (dir, name) in [(&fx.a, "a"), (&fx.b, "b"), (&fx.home, "home")] {
            if !dir.exists() {
                continue;
            }
            if self.on_tmpfs {
                std::fs::remove_dir_all(dir).expect("remove the last iteration's tree");
            } else {
                std::fs::rename(dir, bin.join(name)).expect("move to trash");
            }
        }
        link_tree(&self.tpl.join("a"), &fx.a);
        link_tree(&self.tpl.join("b"), &fx.b);
        copy_tree(&self.tpl.join("home"), &fx.home);
    }

    fn scan(&self, root: &Path) -> Tree {
        scan(root, &self.known)
    }

    /// `fedsync sync p --json` with extra environment.
    fn sync(&self, env: &[(&str, String)]) -> Ran {
        let mut cmd = self.fx.command(&["sync", PROFILE, "--json"]);
        cmd.env_remove("FEDSYNC_CRASH_AT")
            .env_remove("FEDSYNC_CRASH_COUNT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = assert_cmd::Command::from_std(cmd)
            .timeout(Duration::from_secs(120))
            .output()
            .expect("run fedsync");
        Ran {
            code: out.status.code(),
            signal: out.status.signal(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Nothing ever wrote into the template's files (see [`Known`]).
    fn assert_template_intact(&self) {
        let none = Known::new();
        for (side, t) in ["a", "b"].iter().zip(&self.tpl_trees) {
            let now = scan(&self.tpl.join(side), &none);
            let d = diff(t, &now);
            assert!(
                d.is_empty(),
                "files of the prepared state were written in place on {side} (hard links \
                 share them): {d:#?}"
            );
        }
    }
}

// ------------------------------------------------------------------------ the reference

/// What an uninterrupted run of the prepared state does.
struct Reference {
    /// Crash points the run passes.
    points: u64,
    code: i32,
    /// Both trees after the run (identical), conflict stamps normalized.
    expected: Tree,
}

fn reference(lab: &Lab) -> Reference {
    let fx = &lab.fx;
    lab.prepare();
    let out = lab.sync(&[("FEDSYNC_CRASH_COUNT", "1".into())]);
    let points = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("fedsync: crash points reached: "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no crash point count: {out:?}"));
    let code = out
        .code
        .unwrap_or_else(|| panic!("the uninterrupted run died: {out:?}"));
    assert_eq!(
        code, 0,
        "the uninterrupted run did not finish cleanly: {out:?}"
    );
    let (ta, tb) = (lab.scan(&fx.a), lab.scan(&fx.b));
    let (ua, ub) = (user(&ta), user(&tb));
    let d = diff(&ua, &ub);
    assert!(
        d.is_empty(),
        "the uninterrupted run left a and b different: {d:#?}"
    );
    assert!(
        out.stderr.lines().all(harmless),
        "the uninterrupted run printed: {out:?}"
    );
    let mut present = HashSet::new();
    for t in [&ta, &tb] {
        assert!(t.keys().all(|p| !p.starts_with(TMP)), "temp files left");
        present.extend(
            files(t)
                .filter(|(p, _)| !is_meta(p) || p.starts_with(VERSIONS))
                .map(|(_, h)| *h),
        );
    }
    let mut bad = Vec::new();
    lost(
        lab,
        &present,
        "the uninterrupted run",
        "afterwards",
        &mut bad,
    );
    assert!(bad.is_empty(), "{bad:#?}");
    let again = lab.sync(&[]);
    assert_eq!(again.code, Some(0), "{again:?}");
    assert!(
        items(&serde_json::from_str(&again.stdout).expect("json report")).is_empty(),
        "the run after the uninterrupted run has work: {again:?}"
    );
    // The scenario does what it says: moves, deletions, one conflict kept both ways.
    let report: serde_json::Value = serde_json::from_str(&out.stdout).expect("json report");
    let c = counts(&report);
    assert_eq!(c["moved"], 50, "moves: {c}");
    assert_eq!(c["deleted_b"], 100, "deletions: {c}");
    assert_eq!(c["conflicts"], 1, "conflicts: {c}");
    let copies: Vec<&String> = ua.keys().filter(|p| p.contains(".conflict-a-")).collect();
    assert_eq!(copies.len(), 1, "conflict copies: {copies:?}");
    Reference {
        points,
        code,
        expected: normalized(&ua),
    }
}

/// The first and last `EDGE` points and `SPREAD` points evenly over 1..=n.
fn kill_points(n: u64) -> Vec<u64> {
    let mut s = BTreeSet::new();
    s.extend(1..=EDGE.min(n));
    s.extend(n.saturating_sub(EDGE - 1).max(1)..=n);
    for j in 0..SPREAD {
        s.insert(1 + j * (n - 1) / (SPREAD - 1));
    }
    s.into_iter().collect()
}

// ------------------------------------------------------------------------ kills and checks

/// Run the sync with `FEDSYNC_CRASH_AT=k`; it must die by SIGKILL exactly at point k.
/// Returns the description of the point (`None` after recording why not).
fn kill_at(lab: &Lab, k: u64, before: &str, bad: &mut Vec<String>) -> Option<String> {
    let out = lab.sync(&[("FEDSYNC_CRASH_AT", k.to_string())]);
    let tag = format!("fedsync: crash point {k} (");
    let what = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix(&tag))
        .and_then(|l| l.strip_suffix("): killing myself"));
    let Some(what) = what else {
        bad.push(format!(
            "{before}kill point {k}: the run did not die there: {out:?}"
        ));
        return None;
    };
    if out.signal != Some(9) || out.code.is_some() {
        bad.push(format!(
            "{before}kill point {k} ({what}): not killed by SIGKILL: {out:?}"
        ));
    }
    Some(what.to_string())
}

/// Right after a kill: (a) no torn file under a real name (nor among the kept versions):
/// every file holds content that existed before the run; (b) nothing lost: every content of
/// before is still somewhere, in a tree or among the versions, on either side.
fn check_wreck(lab: &Lab, at: &str, bad: &mut Vec<String>) {
    let mut present = HashSet::new();
    for (name, root) in [("a", &lab.fx.a), ("b", &lab.fx.b)] {
        for (p, h) in files(&lab.scan(root)) {
            // Markers and temp files are not content (temp files go in recovery).
            if is_meta(p) && !p.starts_with(VERSIONS) {
                continue;
            }
            present.insert(*h);
            if !lab.before.contains_key(h) {
                bad.push(format!(
                    "{at}: {name}:{p} holds content {} that existed nowhere before the run \
                     (torn or corrupt)",
                    short(h)
                ));
            }
        }
    }
    lost(lab, &present, at, "after the kill", bad);
}

/// (b): every content of the prepared state that is not in `present`.
fn lost(lab: &Lab, present: &HashSet<H>, at: &str, when: &str, bad: &mut Vec<String>) {
    let mut gone: Vec<&String> = lab
        .before
        .iter()
        .filter(|(h, _)| !present.contains(*h))
        .flat_map(|(_, paths)| paths)
        .collect();
    gone.sort();
    for p in gone {
        bad.push(format!(
            "{at}: {when}, the content {p} held before the run is gone (in no tree, no version)"
        ));
    }
}

/// Whether a line on stderr is fine for a run that recovers `interrupted` runs.
fn harmless(line: &str) -> bool {
    line.trim().is_empty()
        || line.starts_with("fedsync: crash points reached: ")
        || (line.starts_with("warning: run ") && line.contains(" was interrupted ("))
}

/// A recovery run (`env` may ask for the crash point count): it must exit like the
/// uninterrupted run, warn about the interrupted run and nothing else, finish every item, and leave both trees equal to the uninterrupted result, nothing lost, no temp
/// files; and the run after it must have nothing to do. Returns the recovery run's output.
fn recover_and_check(
    lab: &Lab,
    r: &Reference,
    at: &str,
    env: &[(&str, String)],
    bad: &mut Vec<String>,
) -> Ran {
    let fx = &lab.fx;
    let rec = lab.sync(env);
    if rec.code != Some(r.code) {
        bad.push(format!(
            "{at}: the recovery run exited {:?} (the uninterrupted one {}): {rec:?}",
            rec.code, r.code
        ));
        return rec;
    }
    for l in rec.stderr.lines().filter(|l| !harmless(l)) {
        bad.push(format!("{at}: the recovery run printed {l:?}"));
    }
    match serde_json::from_str::<serde_json::Value>(&rec.stdout) {
        Ok(rep) => {
            let warnings = rep["warnings"].as_array().cloned().unwrap_or_default();
            let all_interrupted = warnings.iter().all(|w| {
                w.as_str()
                    .is_some_and(|w| w.starts_with("run ") && w.contains(" was interrupted ("))
            });
            if warnings.len() != 1 || !all_interrupted {
                bad.push(format!(
                    "{at}: recovery warnings (expected one interrupted run): {warnings:?}"
                ));
            }
            for it in items(&rep) {
                if it["outcome"]["state"] != "done" {
                    bad.push(format!(
                        "{at}: recovery item {} ({} -> {}): {}",
                        it["path"], it["action"], it["target"], it["outcome"]
                    ));
                }
            }
        }
        Err(e) => bad.push(format!(
            "{at}: the recovery report is not JSON ({e}): {rec:?}"
        )),
    }

    // Both trees equal the uninterrupted result; still nothing lost; no temp files.
    let fin = [lab.scan(&fx.a), lab.scan(&fx.b)];
    let (ua, ub) = (user(&fin[0]), user(&fin[1]));
    for d in diff(&ua, &ub) {
        bad.push(format!("{at}: after recovery a and b differ at {d}"));
    }
    for d in diff(&normalized(&ua), &r.expected) {
        bad.push(format!(
            "{at}: after recovery the trees differ from the uninterrupted result at {d} \
             (recovered vs uninterrupted)"
        ));
    }
    let mut present = HashSet::new();
    for (name, t) in ["a", "b"].iter().zip(&fin) {
        for (p, h) in files(t) {
            if p.starts_with(VERSIONS) || !is_meta(p) {
                present.insert(*h);
            }
        }
        for p in t.keys().filter(|p| p.starts_with(TMP)) {
            bad.push(format!(
                "{at}: temporary file left after recovery: {name}:{p}"
            ));
        }
    }
    lost(lab, &present, at, "after recovery", bad);

    // And then there is nothing to do.
    let third = lab.sync(&[]);
    match serde_json::from_str::<serde_json::Value>(&third.stdout) {
        Ok(rep) if third.code == Some(0) && third.stderr.trim().is_empty() => {
            for it in items(&rep) {
                bad.push(format!(
                    "{at}: the run after recovery still has work: {} ({} -> {})",
                    it["path"], it["action"], it["target"]
                ));
            }
        }
        _ => bad.push(format!("{at}: the run after recovery: {third:?}")),
    }
    rec
}

/// Keep at most a few problems per kill point in the final message.
fn collect(failures: &mut Vec<String>, bad: Vec<String>) {
    const MAX: usize = 12;
    let n = bad.len();
    failures.extend(bad.into_iter().take(MAX));
    if n > MAX {
        failures.push(format!("... and {} more for the kill point above", n - MAX));
    }
}

fn finish(lab: &Lab, failures: Vec<String>) {
    lab.assert_template_intact();
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ------------------------------------------------------------------------ the tests

/// One kill at each of 50 points spread evenly over the run plus the first and last few;
/// check the wreck, recover, check the result.
#[test]
fn inv9_kill_at_spread_crash_points_then_recover() {
    let t0 = Instant::now();
    let lab = Lab::new();
    let r = reference(&lab);
    let points = kill_points(r.points);
    assert!(points.len() >= 50, "only {} kill points", points.len());
    let mut failures = Vec::new();
    for &k in &points {
        let mut bad = Vec::new();
        lab.prepare();
        if let Some(what) = kill_at(&lab, k, "", &mut bad) {
            let at = format!("kill point {k} ({what})");
            check_wreck(&lab, &at, &mut bad);
            recover_and_check(&lab, &r, &at, &[], &mut bad);
        }
        collect(&mut failures, bad);
    }
    eprintln!(
        "crash points of the uninterrupted run: {}; kill points tested: {}; {:?}",
        r.points,
        points.len(),
        t0.elapsed()
    );
    finish(&lab, failures);
}

/// Kill -9 at any instant includes the recovering run: a first kill, then the run that
/// recovers is killed too (in its middle and at its last point), then the next run must
/// recover from both. (The killed recovering run has already closed the first run, so the
/// last run warns about one interrupted run.)
#[test]
fn inv9_kill_again_while_recovering_then_recover() {
    let t0 = Instant::now();
    let lab = Lab::new();
    let r = reference(&lab);
    let n = r.points;
    let mut failures = Vec::new();
    let mut tested = 0;
    for k1 in [2, n / 2, n * 3 / 4] {
        // How many points the recovery from k1 passes (that recovery is checked too).
        let mut bad = Vec::new();
        lab.prepare();
        let Some(what1) = kill_at(&lab, k1, "", &mut bad) else {
            collect(&mut failures, bad);
            continue;
        };
        let at1 = format!("kill point {k1} ({what1})");
        let rec = recover_and_check(
            &lab,
            &r,
            &at1,
            &[("FEDSYNC_CRASH_COUNT", "1".into())],
            &mut bad,
        );
        let n2 = rec
            .stderr
            .lines()
            .find_map(|l| l.strip_prefix("fedsync: crash points reached: "))
            .and_then(|v| v.trim().parse::<u64>().ok());
        collect(&mut failures, bad);
        let Some(n2) = n2.filter(|n2| *n2 > 0) else {
            failures.push(format!(
                "{at1}: the recovery run passed no crash point: {rec:?}"
            ));
            continue;
        };
        for k2 in BTreeSet::from([n2.div_ceil(2), n2]) {
            let mut bad = Vec::new();
            lab.prepare();
            if kill_at(&lab, k1, "", &mut bad).is_some() {
                let then = format!("{at1}, then in the recovering run ");
                if let Some(what2) = kill_at(&lab, k2, &then, &mut bad) {
                    let at = format!("{then}kill point {k2} ({what2})");
                    check_wreck(&lab, &at, &mut bad);
                    recover_and_check(&lab, &r, &at, &[], &mut bad);
                }
            }
            tested += 1;
            collect(&mut failures, bad);
        }
    }
    eprintln!("double kills tested: {tested}; {:?}", t0.elapsed());
    finish(&lab, failures);
}
