//! `fedsync resolve` (issue 3): settling the conflicts the `ask` policy queued, with
//! `--keep` and on a terminal (driven through a pseudo-terminal with util-linux `script`).
//! Every resolution is a run: audited and undone by `fedsync rollback`.

mod common;

use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const P: &str = "p";

/// Profile `p` (replicas `a`, `b`, policy ask); each `(path, base)` synced, then edited on a
/// and afterwards on b (so b's copy is the newer one), then a sync that queues the conflicts.
fn conflicts(fx: &Fx, files: &[(&str, &str, &str, &str)]) {
    fx.profile_ab(P, "conflict = \"ask\"", "");
    for (path, base, _, _) in files {
        fx.write(&fx.a, path, base);
    }
    fx.run(&["sync", P]).ok();
    for (path, _, a, _) in files {
        fx.write(&fx.a, path, a);
    }
    for (path, _, _, b) in files {
        fx.write(&fx.b, path, b);
    }
    fx.run(&["sync", P]).code(1);
    let open = open_conflicts(fx);
    assert_eq!(open.len(), files.len(), "{open:?}");
}

/// Paths of the open conflicts, from `fedsync status p --json`.
fn open_conflicts(fx: &Fx) -> Vec<String> {
    let v = status(fx);
    v["conflicts"]
        .as_array()
        .unwrap_or_else(|| panic!("no conflicts list in {v:#}"))
        .iter()
        .map(|c| c["path"].as_str().expect("path").to_string())
        .collect()
}

fn status(fx: &Fx) -> Value {
    fx.run(&["status", P, "--json"]).json()
}

/// The open conflict at `path` in `fedsync status p --json`.
fn conflict_row(fx: &Fx, path: &str) -> Value {
    let v = status(fx);
    v["conflicts"]
        .as_array()
        .expect("conflicts")
        .iter()
        .find(|c| c["path"] == path)
        .unwrap_or_else(|| panic!("no open conflict at {path}: {v:#}"))
        .clone()
}

/// Resolve the conflict at x.txt with `--keep KEEP --json`, check both replicas end equal
/// with `want` at x.txt, then roll the resolution back and check `overwritten` gets
/// `its_content` back.
fn keep_case(fx: &Fx, keep: &str, want: &str, overwritten: &Path, its_content: &str) -> Value {
    let out = fx.run(&["resolve", P, "--keep", keep, "--json"]);
    out.ok();
    let reports = out.json();
    let reports = reports.as_array().expect("an array of run reports");
    assert_eq!(reports.len(), 1, "one run for one way of settling: {out:?}");
    let report = reports[0].clone();
    let it = item(&report, "x.txt");
    assert_eq!(it["conflict"], true, "{it:#}");
    assert_eq!(it["outcome"]["state"], "done", "{it:#}");

    assert_eq!(read(&fx.a, "x.txt"), want);
    assert_eq!(
        contents(&fx.a),
        contents(&fx.b),
        "replicas differ after resolve"
    );
    assert!(open_conflicts(fx).is_empty(), "{:#}", status(fx));
    fx.run(&["sync", P]).ok();

    // Resolving is a run: in the audit trail, and undone by rollback.
    let run = report["run"].as_str().expect("run id").to_string();
    let log = fx.run(&["log", P, "--run", &run, "--json"]);
    log.ok();
    assert!(
        log.json()
            .as_array()
            .expect("records")
            .iter()
            .any(|r| r["path"] == "x.txt"),
        "{log:?}"
    );
    fx.run(&["rollback", P, &run]).ok();
    assert_eq!(read(overwritten, "x.txt"), its_content);
    report
}

#[test]
fn keep_a_overwrites_b_and_rollback_gives_b_its_copy_back() {
    let fx = Fx::new();
    conflicts(&fx, &[("x.txt", "base\n", "from a\n", "from b\n")]);
    let r = keep_case(&fx, "a", "from a\n", &fx.b, "from b\n");
    assert_eq!(item(&r, "x.txt")["target"], "b");
    assert_eq!(read(&fx.a, "x.txt"), "from a\n");
}

#[test]
fn keep_b_overwrites_a_and_rollback_gives_a_its_copy_back() {
    let fx = Fx::new();
    conflicts(&fx, &[("x.txt", "base\n", "from a\n", "from b\n")]);
    let r = keep_case(&fx, "b", "from b\n", &fx.a, "from a\n");
    assert_eq!(item(&r, "x.txt")["target"], "a");
}

#[test]
fn keep_newest_takes_the_newer_mtime() {
    let fx = Fx::new();
    conflicts(&fx, &[("x.txt", "base\n", "from a\n", "from b\n")]);
    // Make a's copy the newer one now (b was edited last by the fixture).
    fx.write(&fx.a, "x.txt", "from a, newer\n");
    keep_case(&fx, "newest", "from a, newer\n", &fx.b, "from b\n");
}

#[test]
fn keep_both_keeps_the_older_copy_beside_and_rollback_restores_it() {
    let fx = Fx::new();
    conflicts(&fx, &[("x.txt", "base\n", "from a\n", "from b\n")]);
    keep_case(&fx, "both", "from b\n", &fx.a, "from a\n");
    // Before the rollback both replicas had a conflict copy of a's version; the rollback
    // removed them again (kept as versions).
    for root in [&fx.a, &fx.b] {
        assert_eq!(list(root, ""), vec!["x.txt"], "{}", root.display());
    }
}

#[test]
fn keep_both_writes_the_conflict_copy_on_both_sides() {
    let fx = Fx::new();
    conflicts(&fx, &[("x.txt", "base\n", "from a\n", "from b\n")]);
    let out = fx.run(&["resolve", P, "--keep", "both"]);
    out.ok();
    assert!(out.stdout.contains("resolved"), "{out:?}");
    assert!(out.stdout.contains("fedsync rollback p"), "{out:?}");
    for root in [&fx.a, &fx.b] {
        let names = list(root, "");
        assert_eq!(names.len(), 2, "{names:?}");
        let aside = names.iter().find(|n| *n != "x.txt").expect("conflict copy");
        assert!(is_conflict_name(aside, "x", "a", "txt"), "{aside}");
        assert_eq!(read(root, aside), "from a\n");
    }
}

#[test]
fn paths_select_conflicts_and_the_others_stay_open() {
    let fx = Fx::new();
    conflicts(
        &fx,
        &[
            ("x.txt", "x\n", "x from a\n", "x from b\n"),
            ("docs/y.txt", "y\n", "y from a\n", "y from b\n"),
            ("docs/z.txt", "z\n", "z from a\n", "z from b\n"),
        ],
    );
    // A folder selects the conflicts below it; x.txt is not touched and stays open.
    let out = fx.run(&["resolve", P, "docs/", "--keep", "a"]);
    out.ok();
    for p in ["docs/y.txt", "docs/z.txt"] {
        assert_eq!(read(&fx.b, p), read(&fx.a, p));
    }
    assert_eq!(read(&fx.b, "docs/y.txt"), "y from a\n");
    assert_eq!(read(&fx.a, "x.txt"), "x from a\n");
    assert_eq!(read(&fx.b, "x.txt"), "x from b\n");
    assert_eq!(open_conflicts(&fx), vec!["x.txt"]);

    // A path without an open conflict: usage error, nothing done.
    let before = (contents(&fx.a), contents(&fx.b));
    let out = fx.run(&["resolve", P, "docs/y.txt", "--keep", "a"]);
    out.code(2);
    assert!(out.stderr.contains("docs/y.txt"), "{out:?}");
    assert!(out.stderr.contains("no open conflict"), "{out:?}");
    let out = fx.run(&["resolve", P, "x.txt", "nope.txt", "--keep", "b"]);
    out.code(2);
    assert!(out.stderr.contains("nope.txt"), "{out:?}");
    assert_eq!((contents(&fx.a), contents(&fx.b)), before);
    assert_eq!(open_conflicts(&fx), vec!["x.txt"]);

    fx.run(&["resolve", P, "./x.txt", "--keep", "b"]).ok();
    assert_eq!(read(&fx.a, "x.txt"), "x from b\n");
    assert!(open_conflicts(&fx).is_empty());
    let out = fx.run(&["resolve", P, "--keep", "b"]);
    out.ok();
    assert!(out.stdout.contains("no open conflicts"), "{out:?}");
}

#[test]
fn keep_unknown_replica_is_a_usage_error_naming_the_valid_ones() {
    let fx = Fx::new();
    conflicts(&fx, &[("x.txt", "base\n", "from a\n", "from b\n")]);
    let before = (contents(&fx.a), contents(&fx.b));
    let out = fx.run(&["resolve", P, "--keep", "c"]);
    out.code(2);
    let msg = out.stderr.clone();
    assert!(msg.contains("\"c\"") && msg.contains("a, b"), "{out:?}");
    assert_eq!((contents(&fx.a), contents(&fx.b)), before);
    assert_eq!(open_conflicts(&fx), vec!["x.txt"]);
}

#[test]
fn without_a_terminal_or_keep_it_refuses() {
    let fx = Fx::new();
    conflicts(&fx, &[("x.txt", "base\n", "from a\n", "from b\n")]);
    let before = (contents(&fx.a), contents(&fx.b));
    // The fixture's runs have no terminal on stdin.
    let out = fx.run(&["resolve", P]);
    out.code(2);
    assert!(
        out.stderr
            .contains("resolve needs a terminal, or --keep R|newest|both|merge"),
        "{out:?}"
    );
    assert_eq!((contents(&fx.a), contents(&fx.b)), before);
    assert_eq!(open_conflicts(&fx), vec!["x.txt"]);
}

// ---------------------------------------------------------------------------------------
// Terminal sessions through a pseudo-terminal

fn have_script() -> bool {
    let ok = Command::new("script")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: script(1) not installed (util-linux); the pty test did not run");
    }
    ok
}

/// Output of a pty session so far, and whether it ended.
#[derive(Default)]
struct Screen {
    text: String,
    ended: bool,
}

struct Session {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    screen: Arc<(Mutex<Screen>, Condvar)>,
}

const PROMPT: &str = "[s] skip / [q] quit? ";
const WAIT: Duration = Duration::from_secs(10);

impl Session {
    /// `fedsync ARGS` on a pseudo-terminal (`script -qec CMD /dev/null`).
    fn start(fx: &Fx, args: &str, env: &[(&str, &str)]) -> Session {
        let cmd = format!("'{}' {args}", env!("CARGO_BIN_EXE_fedsync"));
        let mut c = Command::new("script");
        c.args(["-qec", &cmd, "/dev/null"])
            .env("FEDSYNC_HOME", &fx.home)
            .env("NO_COLOR", "1")
            .env("TERM", "dumb")
            .env_remove("FEDSYNC_SSH")
            .env_remove("VISUAL")
            .env_remove("EDITOR")
            .current_dir(&fx.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().expect("spawn script");
        let mut out = child.stdout.take().expect("stdout");
        let screen = Arc::new((Mutex::new(Screen::default()), Condvar::new()));
        let s2 = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = out.read(&mut buf).unwrap_or(0);
                let (m, cv) = &*s2;
                let mut s = m.lock().expect("lock");
                if n == 0 {
                    s.ended = true;
                    cv.notify_all();
                    return;
                }
                s.text.push_str(&String::from_utf8_lossy(&buf[..n]));
                cv.notify_all();
            }
        });
        let stdin = child.stdin.take();
        Session {
            child,
            stdin,
            screen,
        }
    }

    /// Wait until the output satisfies `cond`; panic with the output after a while.
    fn wait_for(&mut self, what: &str, cond: impl Fn(&Screen) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        let (m, cv) = &*self.screen;
        let mut s = m.lock().expect("lock");
        while !cond(&s) {
            let now = Instant::now();
            if now >= deadline || (s.ended && !cond(&s)) {
                let text = s.text.clone();
                drop(s);
                let _ = self.child.kill();
                panic!("pty session: gave up waiting for {what}; output:\n{text}");
            }
            s = cv.wait_timeout(s, deadline - now).expect("wait").0;
        }
        s.text.clone()
    }

    /// Wait for the `n`th prompt, then type `keys`.
    fn answer(&mut self, n: usize, keys: &str) {
        self.wait_for(&format!("prompt #{n}"), |s| {
            s.text.matches(PROMPT).count() >= n
        });
        let w = self.stdin.as_mut().expect("stdin open");
        w.write_all(keys.as_bytes()).expect("type");
        w.flush().expect("flush");
    }

    /// Close the keyboard (EOF) and wait for the end: exit code and whole output.
    fn finish(mut self) -> (i32, String) {
        drop(self.stdin.take());
        let text = self.wait_for("the end of the session", |s| s.ended);
        let status = self.child.wait().expect("wait script");
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status.code().unwrap_or(-1), format!("{text}{err}"))
    }
}

#[test]
fn terminal_session_shows_both_versions_and_the_diff_then_keeps_the_choice() {
    if !have_script() {
        return;
    }
    let fx = Fx::new();
    conflicts(
        &fx,
        &[
            (
                "notes.txt",
                "one\ntwo\nthree\nfour\n",
                "one\ntwo from a\nthree\nfour\n",
                "one\ntwo from b!\nthree\nfour\nfive\n",
            ),
            ("other.txt", "o\n", "o from a\n", "o from b\n"),
        ],
    );
    let row = conflict_row(&fx, "notes.txt");
    let hash_a = row["a"]["hash"].as_str().expect("hash")[..12].to_string();
    let hash_b = row["b"]["hash"].as_str().expect("hash")[..12].to_string();
    let other = (read(&fx.a, "other.txt"), read(&fx.b, "other.txt"));
    let size_a = format!("{} B, modified", read(&fx.a, "notes.txt").len());
    let size_b = format!("{} B, modified", read(&fx.b, "notes.txt").len());

    let mut s = Session::start(&fx, "resolve p", &[]);
    s.answer(1, "d\n");
    s.answer(2, "b\n");
    // other.txt: an unknown answer asks again; then the keyboard closes (EOF = quit).
    s.answer(3, "what\n");
    s.wait_for("the prompt after an unknown answer", |s| {
        s.text.matches(PROMPT).count() >= 4
    });
    let (code, out) = s.finish();

    // What was shown: path, reason, both versions' metadata, the first differing lines.
    for want in [
        "[1/2] notes.txt",
        "changed differently on a and b",
        &size_a,
        &size_b,
        &hash_a,
        &hash_b,
        "(newer)",
        "first differences",
        "-two from a",
        "+two from b!",
        "[a] keep a / [b] keep b / [2] keep both / [d] show diff / [m] merge in $EDITOR",
        // the full diff
        "--- a/notes.txt",
        "+++ b/notes.txt",
        "+five",
        "[2/2] other.txt",
        "unknown choice",
        "resolved   notes.txt",
    ] {
        assert!(out.contains(want), "{want:?} not shown; output:\n{out}");
    }
    // Exit 1: other.txt is still open.
    assert_eq!(code, 1, "{out}");
    let want = "one\ntwo from b!\nthree\nfour\nfive\n";
    assert_eq!(read(&fx.a, "notes.txt"), want);
    assert_eq!(read(&fx.b, "notes.txt"), want);
    assert_eq!(
        (read(&fx.a, "other.txt"), read(&fx.b, "other.txt")),
        other,
        "EOF must leave the rest untouched"
    );
    assert_eq!(open_conflicts(&fx), vec!["other.txt"]);
    // a's copy of notes.txt was kept as a version by the resolution run.
    assert!(
        versions(&fx.a).iter().any(|(_, p)| p == "notes.txt"),
        "{:?}",
        versions(&fx.a)
    );
}

#[test]
fn terminal_session_merges_in_the_editor_and_carries_the_merge_across() {
    if !have_script() {
        return;
    }
    let fx = Fx::new();
    conflicts(
        &fx,
        &[(
            "list.md",
            "# list\nalpha\nomega\n",
            "# list\nalpha\nbeta\nomega\n",
            "# list\nalpha\ngamma\nomega\n",
        )],
    );
    // The "editor": saves what it was given, then writes the merged text (no markers).
    let seen = fx.dir.join("seen.txt");
    let ed = fx.dir.join("ed.sh");
    std::fs::write(
        &ed,
        format!(
            "#!/bin/sh\n[ \"$1\" = --merge ] || exit 9\ncp \"$2\" '{}'\nprintf '# list\\nalpha\\nbeta\\ngamma\\nomega\\n' > \"$2\"\n",
            seen.display()
        ),
    )
    .expect("write editor");
    let editor = format!("sh '{}' --merge", ed.display());

    let mut s = Session::start(&fx, "resolve p", &[("EDITOR", &editor)]);
    s.answer(1, "m\n");
    let (code, out) = s.finish();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("merged into a's copy of list.md"), "{out}");

    let given = std::fs::read_to_string(&seen).expect("the editor ran");
    assert_eq!(
        given,
        "# list\nalpha\n<<<<<<< a\nbeta\n=======\ngamma\n>>>>>>> b\nomega\n"
    );
    let merged = "# list\nalpha\nbeta\ngamma\nomega\n";
    assert_eq!(read(&fx.a, "list.md"), merged);
    assert_eq!(read(&fx.b, "list.md"), merged);
    assert!(open_conflicts(&fx).is_empty(), "{:#}", status(&fx));
    fx.run(&["sync", P]).ok();
    // The run that carried the merge is undoable: b gets its own copy back.
    fx.run(&["rollback", P]).ok();
    assert_eq!(read(&fx.b, "list.md"), "# list\nalpha\ngamma\nomega\n");
}

#[test]
fn terminal_session_editor_leaving_markers_changes_nothing() {
    if !have_script() {
        return;
    }
    let fx = Fx::new();
    conflicts(&fx, &[("x.txt", "base\n", "from a\n", "from b\n")]);
    let before = (contents(&fx.a), contents(&fx.b));
    // `true` leaves the file as written: markers remain; then skip.
    let mut s = Session::start(&fx, "resolve p", &[("EDITOR", "true")]);
    s.answer(1, "m\n");
    s.answer(2, "s\n");
    let (code, out) = s.finish();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("still has conflict markers"), "{out}");
    assert!(out.contains("1 conflict left open"), "{out}");
    assert_eq!((contents(&fx.a), contents(&fx.b)), before);
    assert_eq!(open_conflicts(&fx), vec!["x.txt"]);
}
