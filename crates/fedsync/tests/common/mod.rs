//! Shared fixture for the black-box tests: two temporary replica roots, a temporary
//! FEDSYNC_HOME, and helpers that drive the real `fedsync` binary and look at the trees.
//!
//! Every helper that writes a file also gives it an explicit, strictly increasing mtime
//! (a fake clock far in the past), so "which side is newer" and "did it change" never depend
//! on the wall clock or on sleeping.

#![allow(dead_code)]

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;
use serde_json::Value;
use tempfile::TempDir;

/// First value of the fixture clock (2020-09-13); far from "now", so never racily clean.
const CLOCK_START: i64 = 1_600_000_000;

/// Result of one run of the binary.
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub args: Vec<String>,
}

impl fmt::Debug for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`fedsync {}` exited {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        )
    }
}

impl Out {
    /// Assert the exit code, showing the whole output when it is not the expected one.
    #[track_caller]
    pub fn code(&self, want: i32) -> &Out {
        assert_eq!(self.code, want, "unexpected exit code: {self:?}");
        self
    }
    /// Assert exit code 0.
    #[track_caller]
    pub fn ok(&self) -> &Out {
        self.code(0)
    }
    /// stdout parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
    /// stdout and stderr together, for message checks.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// The fixture: `a` and `b` replica roots (existing, empty folders named `a` and `b`, so the
/// ad-hoc form and `init` both call the replicas `a` and `b`), and a private FEDSYNC_HOME.
pub struct Fx {
    _tmp: TempDir,
    pub dir: PathBuf,
    pub a: PathBuf,
    pub b: PathBuf,
    pub home: PathBuf,
    clock: Cell<i64>,
}

impl Fx {
    pub fn new() -> Fx {
        let tmp = tempfile::Builder::new()
            .prefix("fedsync-test-")
            .tempdir()
            .expect("tempdir");
        Fx::with_tempdir(tmp)
    }

    /// Like [`Fx::new`], with the fixture's folder created inside `parent` (e.g. a tmpfs for
    /// suites that create and delete many files).
    pub fn new_in(parent: &Path) -> std::io::Result<Fx> {
        let tmp = tempfile::Builder::new()
            .prefix("fedsync-test-")
            .tempdir_in(parent)?;
        Ok(Fx::with_tempdir(tmp))
    }

    fn with_tempdir(tmp: TempDir) -> Fx {
        // Canonical path: the binary canonicalizes roots and prints them.
        let dir = tmp.path().canonicalize().expect("canonicalize tempdir");
        let a = dir.join("a");
        let b = dir.join("b");
        let home = dir.join("home");
        for d in [&a, &b, &home] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        Fx {
            _tmp: tmp,
            dir,
            a,
            b,
            home,
            clock: Cell::new(CLOCK_START),
        }
    }

    /// Run `fedsync ARGS...` with this fixture's home; never fails by itself.
    pub fn run(&self, args: &[&str]) -> Out {
        let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_fedsync"))
            .args(args)
            .env("FEDSYNC_HOME", &self.home)
            .env("NO_COLOR", "1")
            .env_remove("FEDSYNC_SSH")
            .current_dir(&self.dir)
            .timeout(std::time::Duration::from_secs(60))
            .output()
            .expect("run fedsync");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// A `std::process::Command` for the binary with this fixture's environment (for runs
    /// that must be spawned in the background).
    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_fedsync"));
        c.args(args)
            .env("FEDSYNC_HOME", &self.home)
            .env("NO_COLOR", "1")
            .env_remove("FEDSYNC_SSH")
            .current_dir(&self.dir);
        c
    }

    pub fn a_str(&self) -> &str {
        self.a.to_str().expect("utf-8 path")
    }
    pub fn b_str(&self) -> &str {
        self.b.to_str().expect("utf-8 path")
    }

    /// `fedsync sync A B EXTRA...` (ad-hoc form).
    pub fn sync(&self, extra: &[&str]) -> Out {
        let mut args = vec!["sync", self.a_str(), self.b_str()];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// `fedsync sync A B --json EXTRA...`, exit code asserted, report returned.
    #[track_caller]
    pub fn sync_json(&self, want: i32, extra: &[&str]) -> Value {
        let mut args = vec!["sync", self.a_str(), self.b_str(), "--json"];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        out.code(want);
        out.json()
    }

    /// `fedsync plan A B EXTRA...` (ad-hoc form).
    pub fn plan(&self, extra: &[&str]) -> Out {
        let mut args = vec!["plan", self.a_str(), self.b_str()];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// Next value of the fixture clock (seconds since the epoch); strictly increasing.
    pub fn tick(&self) -> i64 {
        let t = self.clock.get() + 10;
        self.clock.set(t);
        t
    }

    /// Write `root/rel` (creating parents) and give it the next fixture-clock mtime.
    pub fn write(&self, root: &Path, rel: &str, data: impl AsRef<[u8]>) -> PathBuf {
        let t = self.tick();
        write_at(root, rel, data, t)
    }

    /// Append to `root/rel` and give it the next fixture-clock mtime.
    pub fn append(&self, root: &Path, rel: &str, data: impl AsRef<[u8]>) {
        use std::io::Write;
        let p = root.join(rel);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap_or_else(|e| panic!("open {} for append: {e}", p.display()));
        f.write_all(data.as_ref()).expect("append");
        drop(f);
        set_mtime(&p, self.tick(), 0);
    }

    /// Write `$FEDSYNC_HOME/profiles/NAME.toml` verbatim.
    pub fn write_profile(&self, name: &str, text: &str) -> PathBuf {
        let dir = self.home.join("profiles");
        std::fs::create_dir_all(&dir).expect("mkdir profiles");
        let p = dir.join(format!("{name}.toml"));
        std::fs::write(&p, text).expect("write profile");
        p
    }

    /// A profile with replicas `a` and `b` (this fixture's roots): `top` goes before the
    /// `[replicas]` table (top-level keys), `rest` after it (`[[rule]]` tables).
    pub fn profile_ab(&self, name: &str, top: &str, rest: &str) -> PathBuf {
        let text = format!(
            "{top}\n[replicas]\na = {:?}\nb = {:?}\n\n{rest}\n",
            self.a_str(),
            self.b_str()
        );
        self.write_profile(name, &text)
    }

    pub fn audit_path(&self, name: &str) -> PathBuf {
        self.home.join("state").join(format!("{name}.audit.jsonl"))
    }

    pub fn lock_path(&self, name: &str) -> PathBuf {
        self.home.join("state").join(format!("{name}.lock"))
    }
}

/// Write `root/rel` (creating parents) with the given mtime (seconds).
pub fn write_at(root: &Path, rel: &str, data: impl AsRef<[u8]>, secs: i64) -> PathBuf {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("mkdir parent");
    }
    std::fs::write(&p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    set_mtime(&p, secs, 0);
    p
}

pub fn set_mtime(p: &Path, secs: i64, nanos: u32) {
    filetime::set_symlink_file_times(
        p,
        FileTime::from_unix_time(secs, nanos),
        FileTime::from_unix_time(secs, nanos),
    )
    .unwrap_or_else(|e| panic!("set mtime of {}: {e}", p.display()));
}

/// (seconds, nanoseconds) of the mtime, not following symlinks.
pub fn mtime_of(p: &Path) -> (i64, u32) {
    let md = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
    let t = FileTime::from_last_modification_time(&md);
    (t.unix_seconds(), t.nanoseconds())
}

/// Permission bits (`0o7777` part of the mode).
pub fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

pub fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

#[track_caller]
pub fn read(root: &Path, rel: &str) -> String {
    let p = root.join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

#[track_caller]
pub fn read_bytes(root: &Path, rel: &str) -> Vec<u8> {
    let p = root.join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Whether `root/rel` exists, without following a final symlink.
pub fn exists(root: &Path, rel: &str) -> bool {
    std::fs::symlink_metadata(root.join(rel)).is_ok()
}

pub fn is_symlink(root: &Path, rel: &str) -> bool {
    std::fs::symlink_metadata(root.join(rel)).is_ok_and(|m| m.file_type().is_symlink())
}

/// One entry of a tree snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    File {
        mode: u32,
        mtime: (i64, u32),
        data: Vec<u8>,
    },
    Dir {
        mode: u32,
        mtime: (i64, u32),
    },
    Link {
        target: PathBuf,
        mtime: (i64, u32),
    },
}

/// Every entry under `root` (relative `/`-separated path -> kind, mode, mtime, content or
/// link target), without `.fedsync/`. The root itself is recorded as `""`.
pub fn tree_snapshot(root: &Path) -> BTreeMap<String, Node> {
    snapshot(root, false)
}

/// Like [`tree_snapshot`], including `.fedsync/` (markers, versions, temp files).
pub fn tree_snapshot_all(root: &Path) -> BTreeMap<String, Node> {
    snapshot(root, true)
}

fn snapshot(root: &Path, with_meta: bool) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    walk(root, root, with_meta, &mut out);
    out
}

fn walk(root: &Path, p: &Path, with_meta: bool, out: &mut BTreeMap<String, Node>) {
    let md = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
    let rel = p
        .strip_prefix(root)
        .expect("under root")
        .to_string_lossy()
        .into_owned();
    let mtime = {
        let t = FileTime::from_last_modification_time(&md);
        (t.unix_seconds(), t.nanoseconds())
    };
    let ft = md.file_type();
    if ft.is_symlink() {
        out.insert(
            rel,
            Node::Link {
                target: std::fs::read_link(p).expect("readlink"),
                mtime,
            },
        );
    } else if ft.is_dir() {
        out.insert(
            rel.clone(),
            Node::Dir {
                mode: md.mode() & 0o7777,
                mtime,
            },
        );
        let mut names: Vec<_> = std::fs::read_dir(p)
            .expect("read_dir")
            .map(|e| e.expect("dir entry").file_name())
            .collect();
        names.sort();
        for n in names {
            if rel.is_empty() && n == ".fedsync" && !with_meta {
                continue;
            }
            walk(root, &p.join(n), with_meta, out);
        }
    } else {
        out.insert(
            rel,
            Node::File {
                mode: md.mode() & 0o7777,
                mtime,
                data: std::fs::read(p).unwrap_or_default(),
            },
        );
    }
}

/// Only the content part of a snapshot: path -> file bytes / link target / dir.
pub fn contents(root: &Path) -> BTreeMap<String, String> {
    tree_snapshot(root)
        .into_iter()
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, n)| {
            let v = match n {
                Node::File { data, .. } => format!("file:{}", String::from_utf8_lossy(&data)),
                Node::Dir { .. } => "dir".to_string(),
                Node::Link { target, .. } => format!("link:{}", target.display()),
            };
            (k, v)
        })
        .collect()
}

/// Files kept as versions on this replica: (run id, relative path inside the run folder).
pub fn versions(root: &Path) -> Vec<(String, String)> {
    let vroot = root.join(".fedsync").join("versions");
    let mut out = Vec::new();
    let Ok(runs) = std::fs::read_dir(&vroot) else {
        return out;
    };
    for run in runs {
        let run = run.expect("dir entry");
        let run_id = run.file_name().to_string_lossy().into_owned();
        for (rel, node) in tree_snapshot_all(&run.path()) {
            if !matches!(node, Node::Dir { .. }) {
                out.push((run_id.clone(), rel));
            }
        }
    }
    out.sort();
    out
}

/// Content of `.fedsync/versions/RUN/REL` on this replica.
#[track_caller]
pub fn version_content(root: &Path, run: &str, rel: &str) -> String {
    let p = root.join(".fedsync").join("versions").join(run).join(rel);
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("version {} is not there: {e}", p.display()))
}

/// Entries left in `.fedsync/tmp` (a missing folder counts as empty).
pub fn temp_files(root: &Path) -> Vec<String> {
    let p = root.join(".fedsync").join("tmp");
    match std::fs::read_dir(&p) {
        Ok(rd) => rd
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Names in the folder `root/rel` (not recursive, without `.fedsync`), sorted.
pub fn list(root: &Path, rel: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root.join(rel))
        .unwrap_or_else(|e| panic!("list {}: {e}", root.join(rel).display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n != ".fedsync")
        .collect();
    v.sort();
    v
}

/// The items of every pair of a `--json` run report.
pub fn items(report: &Value) -> Vec<Value> {
    report["pairs"]
        .as_array()
        .expect("pairs")
        .iter()
        .flat_map(|p| p["items"].as_array().expect("items").clone())
        .collect()
}

/// The item for `path` in a `--json` run report.
#[track_caller]
pub fn item<'a>(report: &'a Value, path: &str) -> &'a Value {
    report["pairs"]
        .as_array()
        .expect("pairs")
        .iter()
        .flat_map(|p| p["items"].as_array().expect("items"))
        .find(|i| i["path"] == path)
        .unwrap_or_else(|| panic!("no item for {path} in report {report:#}"))
}

/// Counts of the first pair of a `--json` run report.
pub fn counts(report: &Value) -> &Value {
    &report["pairs"][0]["counts"]
}

/// Whether `name` is `STEM.conflict-REPLICA-YYYYMMDD-HHMMSS.EXT` for the given parts
/// (`ext` without the dot; empty for none).
pub fn is_conflict_name(name: &str, stem: &str, replica: &str, ext: &str) -> bool {
    let prefix = format!("{stem}.conflict-{replica}-");
    let suffix = if ext.is_empty() {
        String::new()
    } else {
        format!(".{ext}")
    };
    let Some(rest) = name.strip_prefix(&prefix) else {
        return false;
    };
    let Some(stamp) = rest.strip_suffix(&suffix) else {
        return false;
    };
    let b = stamp.as_bytes();
    b.len() == 15
        && b[8] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 8 || c.is_ascii_digit())
}

/// Deterministic pseudo-random bytes (a small xorshift), for binary content.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
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

/// `YYYYMMDD-HHMMSS` (UTC) for a Unix time, the stamp format of run ids and conflict names.
pub fn utc_stamp(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Seconds since the epoch, now.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}
