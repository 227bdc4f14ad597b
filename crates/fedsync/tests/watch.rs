//! `fedsync watch` as a black box: the binary runs in the background with a short debounce;
//! the tests change one replica and poll the other (and the watcher's health file) until the
//! expected state appears or a generous timeout passes. No duration is asserted.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// How long any expected state may take to appear (CI machines are slow and shared).
const TIMEOUT: Duration = Duration::from_secs(30);

/// A running `fedsync watch`; killed on drop (a failed test leaves no process behind).
struct WatchProc {
    child: Option<Child>,
    log: PathBuf,
    home: PathBuf,
    name: String,
}

impl Drop for WatchProc {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl WatchProc {
    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The health file as JSON (`Null` while it does not exist yet).
    fn health(&self) -> Value {
        let p = self
            .home
            .join("state")
            .join(format!("{}.watch.json", self.name));
        std::fs::read_to_string(p)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null)
    }

    fn runs(&self) -> u64 {
        self.health()["runs"].as_u64().unwrap_or(0)
    }

    fn still_running(&mut self) -> bool {
        matches!(self.child.as_mut().expect("child").try_wait(), Ok(None))
    }

    /// Wait until `cond` holds; on timeout, fail with the watcher's output.
    #[track_caller]
    fn wait_for(&mut self, what: &str, cond: impl FnMut(&Self) -> bool) {
        self.wait_for_within(what, TIMEOUT, cond)
    }

    #[track_caller]
    fn wait_for_within(
        &mut self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&Self) -> bool,
    ) {
        let start = Instant::now();
        loop {
            if cond(self) {
                return;
            }
            if let Ok(Some(st)) = self.child.as_mut().expect("child").try_wait() {
                panic!(
                    "watch exited ({st}) while waiting for {what}\n{}",
                    self.log()
                );
            }
            if start.elapsed() > timeout {
                panic!(
                    "timed out waiting for {what}\n--- health ---\n{:#}\n--- watch output ---\n{}",
                    self.health(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Wait until the first (initial) run of every pair is over.
    fn wait_started(&mut self) {
        self.wait_for("the initial sync", |w| {
            let h = w.health();
            h["pairs"]
                .as_array()
                .is_some_and(|ps| !ps.is_empty() && ps.iter().all(|p| p["state"] != "starting"))
        });
    }

    /// Wait until the number of runs stays the same for `quiet` (many debounce windows),
    /// and return it.
    fn wait_quiet(&mut self, quiet: Duration) -> u64 {
        let mut last = self.runs();
        let mut since = Instant::now();
        let start = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.runs();
            let pending = self.health()["pairs"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["pending"].as_u64() != Some(0)));
            if now != last || pending {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return now;
            }
            assert!(
                start.elapsed() < TIMEOUT * 2,
                "the watcher never went quiet: {} runs so far\n{}",
                now,
                self.log()
            );
        }
    }

    /// SIGTERM, then the exit code.
    fn terminate(&mut self) -> i32 {
        let st = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -TERM failed");
        let start = Instant::now();
        let child = self.child.as_mut().expect("child");
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                self.child = None;
                return st.code().unwrap_or(-1);
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "watch did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// Start `fedsync watch NAME` with a short debounce and backoff, and these extra settings.
fn watch(fx: &Fx, name: &str, args: &[&str], env: &[(&str, &str)]) -> WatchProc {
    let log = fx.dir.join(format!("watch-{name}.log"));
    let out = std::fs::File::create(&log).expect("log file");
    let err = out.try_clone().expect("log file");
    let mut all = vec!["watch", name];
    all.extend_from_slice(args);
    let mut cmd = fx.command(&all);
    cmd.env("FEDSYNC_WATCH_DEBOUNCE_MS", "150")
        .env("FEDSYNC_WATCH_BACKOFF_MIN_MS", "200")
        .env("FEDSYNC_WATCH_BACKOFF_MAX_MS", "1000")
        .env_remove("FEDSYNC_WATCH_EVENTS")
        .env_remove("FEDSYNC_NOTIFY_AFTER")
        // No desktop notifications from the test suite.
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    for (k, v) in env {
        cmd.env(k, v);
    }
    WatchProc {
        child: Some(cmd.spawn().expect("spawn fedsync watch")),
        log,
        home: fx.home.clone(),
        name: name.to_string(),
    }
}

fn has(root: &Path, rel: &str, content: &str) -> bool {
    std::fs::read_to_string(root.join(rel)).is_ok_and(|s| s == content)
}

/// Runs the watcher recorded in the audit trail (`run-start` records of kind `watch`).
fn watch_runs_in_log(fx: &Fx, name: &str) -> usize {
    let out = fx.run(&["log", name, "--json"]);
    out.ok();
    out.json()
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| {
            r["action"] == "run-start"
                && r["detail"].as_str().is_some_and(|d| d.starts_with("watch"))
        })
        .count()
}

fn count_files(root: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                stack.push(e.path());
            } else {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn edits_creates_deletes_and_renames_arrive_on_the_other_side() {
    let fx = Fx::new();
    fx.profile_ab("w", "", "");
    fx.write(&fx.a, "doc.txt", "v1");
    fx.write(&fx.a, "old.txt", "old");
    fx.write(&fx.a, "r1.txt", "moving");
    fx.write(&fx.b, "dir1/inner/deep.txt", "deep");
    let mut w = watch(&fx, "w", &["--interval", "1h"], &[]);
    w.wait_started();
    assert!(has(&fx.b, "doc.txt", "v1") && has(&fx.a, "dir1/inner/deep.txt", "deep"));

    // A's edit arrives on B, B's edit on A.
    fx.write(&fx.a, "doc.txt", "v2 from a");
    w.wait_for("A's edit on B", |_| has(&fx.b, "doc.txt", "v2 from a"));
    fx.write(&fx.b, "doc.txt", "v3 from b");
    w.wait_for("B's edit on A", |_| has(&fx.a, "doc.txt", "v3 from b"));

    // Creates, in a new folder too.
    fx.write(&fx.b, "notes/new.md", "created on b");
    w.wait_for("B's new file on A", |_| {
        has(&fx.a, "notes/new.md", "created on b")
    });
    fx.write(&fx.a, "top.md", "created on a");
    w.wait_for("A's new file on B", |_| {
        has(&fx.b, "top.md", "created on a")
    });

    // Deletes.
    std::fs::remove_file(fx.b.join("old.txt")).unwrap();
    w.wait_for("B's delete on A", |_| !exists(&fx.a, "old.txt"));
    std::fs::remove_file(fx.a.join("top.md")).unwrap();
    w.wait_for("A's delete on B", |_| !exists(&fx.b, "top.md"));

    // Renames: a file on A, a folder on B.
    std::fs::rename(fx.a.join("r1.txt"), fx.a.join("r2.txt")).unwrap();
    w.wait_for("A's rename on B", |_| {
        has(&fx.b, "r2.txt", "moving") && !exists(&fx.b, "r1.txt")
    });
    std::fs::rename(fx.b.join("dir1"), fx.b.join("dir2")).unwrap();
    w.wait_for("B's folder rename on A", |_| {
        has(&fx.a, "dir2/inner/deep.txt", "deep") && !exists(&fx.a, "dir1")
    });
    // The renamed folder is still watched under its new name.
    fx.write(&fx.b, "dir2/inner/deep.txt", "edited after the rename");
    w.wait_for("an edit inside the renamed folder", |_| {
        has(&fx.a, "dir2/inner/deep.txt", "edited after the rename")
    });
    // An editor's save: write a temporary file, rename it over the original.
    fx.write(&fx.a, ".doc.txt.swp", "v4 via rename");
    std::fs::rename(fx.a.join(".doc.txt.swp"), fx.a.join("doc.txt")).unwrap();
    w.wait_for("the editor-style save on B", |_| {
        has(&fx.b, "doc.txt", "v4 via rename")
    });
    w.wait_quiet(Duration::from_millis(1500));
    assert_eq!(contents(&fx.a), contents(&fx.b));

    // status shows the running watcher and its health.
    let st = fx.run(&["status", "w", "--json"]);
    st.ok();
    let v = st.json();
    assert_eq!(v["profile"], "w", "existing keys are kept: {v:#}");
    assert!(v["replicas"].is_array() && v["last_runs"].is_array());
    assert_eq!(v["watch"]["pid"].as_u64(), Some(w.pid() as u64), "{v:#}");
    assert_eq!(v["watch"]["watcher"], "native");
    let pair = &v["watch"]["pairs"][0];
    assert_eq!(pair["consecutive_failures"], 0);
    assert!(pair["last_success"].is_string(), "{v:#}");
    let human = fx.run(&["status", "w"]);
    assert!(human.stdout.contains("watch        running"), "{human:?}");
    assert_eq!(w.terminate(), 0);
}

#[test]
fn no_echo_loop_after_an_edit() {
    let fx = Fx::new();
    fx.profile_ab("w", "", "");
    for i in 0..20 {
        fx.write(&fx.a, &format!("d/f{i}.txt"), format!("file {i}"));
    }
    let mut w = watch(&fx, "w", &["--interval", "1h"], &[]);
    w.wait_started();
    let before = w.wait_quiet(Duration::from_millis(1500));

    fx.write(&fx.a, "d/f3.txt", "edited once");
    fx.write(&fx.b, "e/new.txt", "created once");
    w.wait_for("both changes", |_| {
        has(&fx.b, "d/f3.txt", "edited once") && has(&fx.a, "e/new.txt", "created once")
    });
    let after = w.wait_quiet(Duration::from_millis(2000));
    eprintln!("runs for two edits: {}\n{}", after - before, w.log());
    // The run that carried the changes, and at most one more (the two edits may land in
    // separate runs); the writes fedsync made on each side trigger nothing.
    assert!(
        after - before <= 2,
        "{} runs for two edits: an echo loop?\n{}",
        after - before,
        w.log()
    );
    // The audit trail agrees with the health file.
    assert_eq!(watch_runs_in_log(&fx, "w") as u64, after, "{}", w.log());
    assert!(w.still_running());
    assert_eq!(w.terminate(), 0);
}

#[test]
fn a_burst_of_10000_writes_is_a_handful_of_runs() {
    let fx = Fx::new();
    fx.profile_ab("w", "", "");
    fx.write(&fx.a, "seed.txt", "seed");
    let mut w = watch(&fx, "w", &["--interval", "1h"], &[]);
    w.wait_started();
    let before = w.wait_quiet(Duration::from_millis(1000));
    // A build writing thousands of files as fast as it can.
    for d in 0..100 {
        let dir = fx.a.join(format!("build/d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            std::fs::write(dir.join(format!("f{f:03}.o")), format!("object {d} {f}")).unwrap();
        }
    }
    // Copying 10,000 files takes a while in a debug build on a busy machine.
    w.wait_for_within("10,000 files on B", Duration::from_secs(300), |_| {
        count_files(&fx.b.join("build")) == 10_000
    });
    let after = w.wait_quiet(Duration::from_millis(1500));
    eprintln!("runs for the burst: {}\n{}", after - before, w.log());
    assert!(
        after - before <= 10,
        "{} runs for one burst of 10,000 writes\n{}",
        after - before,
        w.log()
    );
    assert_eq!(
        std::fs::read_to_string(fx.b.join("build/d42/f042.o")).unwrap(),
        "object 42 42"
    );
    assert_eq!(w.terminate(), 0);
}

#[test]
fn the_interval_rescan_catches_changes_made_without_events() {
    let fx = Fx::new();
    fx.profile_ab("w", "", "");
    fx.write(&fx.a, "x.txt", "x");
    // File events off: only the periodic full rescan can see the change.
    let mut w = watch(
        &fx,
        "w",
        &["--interval", "1s"],
        &[("FEDSYNC_WATCH_EVENTS", "off")],
    );
    w.wait_started();
    assert_eq!(w.health()["watcher"], "off", "{:#}", w.health());
    fx.write(&fx.a, "late.txt", "made while nobody listens");
    fx.write(&fx.b, "x.txt", "edited on b");
    w.wait_for("the rescan to sync both changes", |_| {
        has(&fx.b, "late.txt", "made while nobody listens") && has(&fx.a, "x.txt", "edited on b")
    });
    assert_eq!(w.terminate(), 0);
}

#[test]
fn the_polling_watcher_sees_changes() {
    let fx = Fx::new();
    fx.profile_ab("w", "", "");
    fx.write(&fx.a, "x.txt", "x");
    let mut w = watch(
        &fx,
        "w",
        &["--interval", "1h"],
        &[
            ("FEDSYNC_WATCH_EVENTS", "poll"),
            ("FEDSYNC_WATCH_POLL_MS", "200"),
        ],
    );
    w.wait_started();
    assert_eq!(w.health()["watcher"], "polling", "{:#}", w.health());
    fx.write(&fx.a, "sub/polled.txt", "seen by polling");
    w.wait_for("the polled change on B", |_| {
        has(&fx.b, "sub/polled.txt", "seen by polling")
    });
    fx.write(&fx.b, "x.txt", "edited on b");
    w.wait_for("the polled edit on A", |_| {
        has(&fx.a, "x.txt", "edited on b")
    });
    assert_eq!(w.terminate(), 0);
}

#[test]
fn a_replica_taken_away_and_brought_back_is_synced_and_the_failure_is_loud() {
    let fx = Fx::new();
    let hook_log = fx.dir.join("hook.log");
    fx.profile_ab(
        "w",
        &format!(
            "on_failure = 'echo \"$FEDSYNC_PROFILE|$FEDSYNC_PAIR|$FEDSYNC_RUN|$FEDSYNC_ERROR\" >> {}'",
            hook_log.display()
        ),
        "",
    );
    fx.write(&fx.a, "x.txt", "x");
    let mut w = watch(&fx, "w", &["--interval", "1h"], &[]);
    w.wait_started();
    assert!(has(&fx.b, "x.txt", "x"));

    // B goes away (an unmounted drive); A keeps changing.
    let away = fx.dir.join("b-away");
    std::fs::rename(&fx.b, &away).unwrap();
    fx.write(&fx.a, "while-away.txt", "written while b was away");
    w.wait_for("the failure to be reported", |w| {
        w.health()["pairs"][0]["consecutive_failures"].as_u64() >= Some(1)
    });
    w.wait_for("the on_failure hook", |_| {
        std::fs::read_to_string(&hook_log).is_ok_and(|s| s.contains("w|a <-> b|"))
    });
    let hook = std::fs::read_to_string(&hook_log).unwrap();
    assert!(hook.contains("root does not exist"), "{hook}");
    let st = fx.run(&["status", "w", "--json"]);
    st.code(3);
    let v = st.json();
    assert!(
        v["watch"]["pairs"][0]["consecutive_failures"].as_u64() >= Some(1),
        "{v:#}"
    );
    assert!(v["watch"]["pairs"][0]["last_error"].is_string(), "{v:#}");
    assert!(w.still_running());

    // B comes back: the change made meanwhile arrives, and B is watched again.
    std::fs::rename(&away, &fx.b).unwrap();
    w.wait_for("the change made while B was away", |_| {
        has(&fx.b, "while-away.txt", "written while b was away")
    });
    w.wait_for("the pair to be healthy again", |w| {
        w.health()["pairs"][0]["consecutive_failures"] == 0
    });
    fx.write(&fx.b, "after.txt", "b is watched again");
    w.wait_for("B's change after its return", |_| {
        has(&fx.a, "after.txt", "b is watched again")
    });
    assert!(w.still_running());
    assert_eq!(w.terminate(), 0);
}

#[test]
fn an_optional_replica_that_appears_is_synced_within_an_interval() {
    let fx = Fx::new();
    std::fs::remove_dir(&fx.b).unwrap();
    fx.write_profile(
        "w",
        &format!(
            "[replicas]\na = {:?}\nb = {{ root = {:?}, optional = true }}\n",
            fx.a_str(),
            fx.b_str()
        ),
    );
    fx.write(&fx.a, "x.txt", "x");
    let mut w = watch(
        &fx,
        "w",
        &["--interval", "1s"],
        // Backoff as in production: the interval alone must bring the replica in.
        &[
            ("FEDSYNC_WATCH_BACKOFF_MIN_MS", "60000"),
            ("FEDSYNC_WATCH_BACKOFF_MAX_MS", "300000"),
        ],
    );
    w.wait_started();
    assert_eq!(
        w.health()["pairs"][0]["state"],
        "skipped",
        "{:#}",
        w.health()
    );
    std::fs::create_dir(&fx.b).unwrap();
    w.wait_for("the optional replica to be synced", |_| {
        has(&fx.b, "x.txt", "x")
    });
    assert_eq!(w.terminate(), 0);
}

#[test]
fn sigterm_stops_cleanly_and_frees_the_lock() {
    let fx = Fx::new();
    fx.profile_ab("w", "", "");
    fx.write(&fx.a, "x.txt", "x");
    let mut w = watch(&fx, "w", &["--interval", "1h"], &[]);
    w.wait_started();
    // Stop it while it has work: possibly in the middle of a run.
    for i in 0..500 {
        std::fs::write(fx.a.join(format!("f{i}.txt")), "data").unwrap();
    }
    w.wait_for("a run to start", |w| w.runs() >= 2);
    assert_eq!(w.terminate(), 0, "{}", w.log());
    assert_eq!(w.health()["watcher"], "stopped");
    // The lock is free: a sync right after works, and does what the watcher left.
    fx.run(&["sync", "w"]).ok();
    assert_eq!(contents(&fx.a), contents(&fx.b));
    // The journal is clean: no run left interrupted or running.
    let st = fx.run(&["status", "w", "--json"]);
    st.ok();
    let v = st.json();
    for r in v["last_runs"].as_array().unwrap() {
        assert!(
            r["status"] != "interrupted" && r["status"] != "running",
            "{v:#}"
        );
    }
    assert!(
        v.get("watch").is_none(),
        "a stopped watcher is not shown: {v:#}"
    );
}

#[test]
fn one_watcher_per_profile() {
    let fx = Fx::new();
    fx.profile_ab("w", "", "");
    let mut w = watch(&fx, "w", &["--interval", "1h"], &[]);
    w.wait_started();
    let second = fx.run(&["watch", "w"]);
    second.code(3);
    assert!(second.stderr.contains("already watched"), "{second:?}");
    assert!(w.still_running());
    assert_eq!(w.terminate(), 0);
}

#[test]
fn a_failed_plain_sync_runs_the_on_failure_hook() {
    let fx = Fx::new();
    let hook_log = fx.dir.join("hook.log");
    fx.profile_ab(
        "w",
        &format!(
            "on_failure = 'echo \"$FEDSYNC_PROFILE|$FEDSYNC_PAIR|$FEDSYNC_RUN\" >> {}'",
            hook_log.display()
        ),
        "",
    );
    fx.write(&fx.a, "x.txt", "x");
    fx.run(&["sync", "w"]).ok();
    assert!(!hook_log.exists(), "no hook after a good run");
    std::fs::rename(&fx.b, fx.dir.join("b-away")).unwrap();
    let out = fx.run(&["sync", "w"]);
    out.code(3);
    let hook = std::fs::read_to_string(&hook_log).expect("the hook ran");
    let line = hook.lines().next().unwrap();
    let parts: Vec<&str> = line.split('|').collect();
    assert_eq!(parts[..2], ["w", "a <-> b"], "{hook}");
    assert!(!parts[2].is_empty(), "FEDSYNC_RUN is set: {hook}");
    // A plan never runs it.
    std::fs::remove_file(&hook_log).unwrap();
    fx.run(&["plan", "w"]);
    assert!(!hook_log.exists());
}

#[test]
fn deletions_in_several_small_runs_count_together_against_max_delete() {
    let fx = Fx::new();
    fx.profile_ab("w", "max_delete = 5", "");
    for i in 0..10 {
        fx.write(&fx.a, &format!("f{i}.txt"), format!("{i}"));
    }
    let mut w = watch(&fx, "w", &["--interval", "1h"], &[]);
    w.wait_started();
    // Four deletions: within the limit, propagated.
    for i in 0..4 {
        std::fs::remove_file(fx.a.join(format!("f{i}.txt"))).unwrap();
    }
    w.wait_for("the first deletions on B", |_| {
        (0..4).all(|i| !exists(&fx.b, &format!("f{i}.txt")))
    });
    w.wait_quiet(Duration::from_millis(1000));
    // Three more a moment later: 7 in all is more than max_delete = 5, so refused.
    for i in 4..7 {
        std::fs::remove_file(fx.a.join(format!("f{i}.txt"))).unwrap();
    }
    w.wait_for("the refusal", |w| {
        w.health()["pairs"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("count together"))
    });
    for i in 4..7 {
        assert!(
            exists(&fx.b, &format!("f{i}.txt")),
            "f{i}.txt was deleted on b"
        );
    }
    // A deliberate sync --force passes the guard as usual.
    fx.run(&["sync", "w", "--force", "--wait"]).ok();
    assert!(!exists(&fx.b, "f5.txt"));
    assert_eq!(w.terminate(), 0);
}

#[test]
fn pairs_are_independent_and_changes_cross_the_hub() {
    let fx = Fx::new();
    let c = fx.dir.join("c");
    std::fs::create_dir_all(&c).unwrap();
    fx.write_profile(
        "w",
        &format!(
            "[replicas]\na = {:?}\nb = {:?}\nc = {:?}\n",
            fx.a_str(),
            fx.b_str(),
            c.to_str().unwrap()
        ),
    );
    fx.write(&fx.a, "x.txt", "x");
    let mut w = watch(&fx, "w", &["--interval", "1h"], &[]);
    w.wait_started();
    assert!(has(&fx.b, "x.txt", "x") && has(&c, "x.txt", "x"));

    // A spoke's change reaches the hub and the other spoke.
    fx.write(&fx.b, "from-b.txt", "b");
    w.wait_for("b's file on a and c", |_| {
        has(&fx.a, "from-b.txt", "b") && has(&c, "from-b.txt", "b")
    });

    // c goes away: the a <-> c pair fails and backs off, a <-> b goes on.
    let away = fx.dir.join("c-away");
    std::fs::rename(&c, &away).unwrap();
    fx.write(&fx.b, "while-c-away.txt", "b2");
    w.wait_for("a <-> c to fail", |w| {
        w.health()["pairs"][1]["consecutive_failures"].as_u64() >= Some(1)
    });
    w.wait_for("b's new file on a", |_| {
        has(&fx.a, "while-c-away.txt", "b2")
    });
    fx.write(&fx.a, "hub-edit.txt", "a");
    w.wait_for("a's new file on b", |_| has(&fx.b, "hub-edit.txt", "a"));
    assert_eq!(
        w.health()["pairs"][0]["consecutive_failures"],
        0,
        "{:#}",
        w.health()
    );

    // c is back: it gets what it missed.
    std::fs::rename(&away, &c).unwrap();
    w.wait_for("c to catch up", |_| {
        has(&c, "while-c-away.txt", "b2") && has(&c, "hub-edit.txt", "a")
    });
    assert_eq!(w.terminate(), 0);
}

// ---------------------------------------------------------------------------------------
// A remote replica: `b` reached as ssh://testhost/<b> through a stand-in for ssh that runs
// the remote command here. It records the pid of every agent it starts (the process itself:
// `exec` all the way), and refuses to connect while the file `ssh-down` exists.

const WATCH_SSH: &str = r#"#!/bin/sh
while [ $# -gt 1 ]; do shift; done
if [ -e "$SSH_DOWN" ]; then
  echo "ssh: connect to host testhost port 22: Connection refused" >&2
  exit 255
fi
echo $$ >> "$AGENT_PIDS"
exec sh -c "exec $1"
"#;

struct RemoteFx {
    fx: Fx,
    ssh: PathBuf,
    pids: PathBuf,
    down: PathBuf,
}

impl RemoteFx {
    fn new() -> RemoteFx {
        use std::os::unix::fs::PermissionsExt;
        let fx = Fx::new();
        let ssh = fx.dir.join("fake-ssh");
        std::fs::write(&ssh, WATCH_SSH).unwrap();
        std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o755)).unwrap();
        let text = format!(
            "remote_cmd = {:?}\n\n[replicas]\na = {:?}\nb = \"ssh://testhost{}\"\n",
            env!("CARGO_BIN_EXE_fedsync"),
            fx.a_str(),
            fx.b_str()
        );
        fx.write_profile("r", &text);
        let (pids, down) = (fx.dir.join("agent-pids"), fx.dir.join("ssh-down"));
        RemoteFx {
            fx,
            ssh,
            pids,
            down,
        }
    }

    fn watch(&self, args: &[&str], env: &[(&str, &str)]) -> WatchProc {
        let mut all: Vec<(&str, &str)> = vec![
            ("FEDSYNC_SSH", self.ssh.to_str().unwrap()),
            ("AGENT_PIDS", self.pids.to_str().unwrap()),
            ("SSH_DOWN", self.down.to_str().unwrap()),
        ];
        all.extend_from_slice(env);
        watch(&self.fx, "r", args, &all)
    }

    /// The agents started so far (pids, in order).
    fn agents(&self) -> Vec<u32> {
        std::fs::read_to_string(&self.pids)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

fn remote_watcher(w: &WatchProc) -> Value {
    w.health()["replicas"][1]["watcher"].clone()
}

#[test]
fn remote_edits_creates_deletes_and_renames_arrive_by_the_agents_events() {
    let r = RemoteFx::new();
    let fx = &r.fx;
    fx.write(&fx.a, "doc.txt", "v1");
    fx.write(&fx.b, "old.txt", "old");
    fx.write(&fx.b, "r1.txt", "moving");
    fx.write(&fx.b, "dir1/inner/deep.txt", "deep");
    // No interval rescan during the test: only the agent's events can bring these.
    let mut w = r.watch(&["--interval", "1h"], &[]);
    w.wait_started();
    assert!(has(&fx.b, "doc.txt", "v1") && has(&fx.a, "dir1/inner/deep.txt", "deep"));
    w.wait_for("the agent's native watcher", |w| {
        remote_watcher(w) == "native"
    });

    fx.write(&fx.b, "doc.txt", "v2 from the remote side");
    w.wait_for("the remote edit on A", |_| {
        has(&fx.a, "doc.txt", "v2 from the remote side")
    });
    fx.write(&fx.b, "notes/new.md", "created remotely");
    w.wait_for("the remote create on A", |_| {
        has(&fx.a, "notes/new.md", "created remotely")
    });
    std::fs::remove_file(fx.b.join("old.txt")).unwrap();
    w.wait_for("the remote delete on A", |_| !exists(&fx.a, "old.txt"));
    std::fs::rename(fx.b.join("r1.txt"), fx.b.join("r2.txt")).unwrap();
    w.wait_for("the remote rename on A", |_| {
        has(&fx.a, "r2.txt", "moving") && !exists(&fx.a, "r1.txt")
    });
    std::fs::rename(fx.b.join("dir1"), fx.b.join("dir2")).unwrap();
    w.wait_for("the remote folder rename on A", |_| {
        has(&fx.a, "dir2/inner/deep.txt", "deep") && !exists(&fx.a, "dir1")
    });
    fx.write(&fx.b, "dir2/inner/deep.txt", "edited in the renamed folder");
    w.wait_for("an edit inside the renamed remote folder", |_| {
        has(&fx.a, "dir2/inner/deep.txt", "edited in the renamed folder")
    });
    // And the local side still reaches the remote one.
    fx.write(&fx.a, "doc.txt", "v3 from a");
    w.wait_for("A's edit on B", |_| has(&fx.b, "doc.txt", "v3 from a"));
    w.wait_quiet(Duration::from_millis(1500));
    assert_eq!(contents(&fx.a), contents(&fx.b));
    // One agent for all these runs: no ssh per run.
    let runs = w.runs();
    assert!(runs >= 8, "{runs} runs\n{}", w.log());
    assert_eq!(r.agents().len(), 1, "{:?}\n{}", r.agents(), w.log());

    let st = fx.run(&["status", "r", "--json"]);
    let v = st.json();
    assert_eq!(v["watch"]["replicas"][1]["name"], "b", "{v:#}");
    assert_eq!(v["watch"]["replicas"][1]["watcher"], "native", "{v:#}");
    assert_eq!(w.terminate(), 0);
    // The agent ends with the watch.
    w.wait_for_agent_exit(&r.agents());
}

impl WatchProc {
    /// Every agent in `pids` has exited (a stopped watch leaves no agent behind).
    fn wait_for_agent_exit(&self, pids: &[u32]) {
        let start = Instant::now();
        while pids
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists() && !is_zombie(*p))
        {
            assert!(
                start.elapsed() < TIMEOUT,
                "an agent outlived the watch: {pids:?}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

#[test]
fn the_remote_polling_watcher_is_used_when_asked() {
    let r = RemoteFx::new();
    let fx = &r.fx;
    fx.write(&fx.a, "x.txt", "x");
    let mut w = r.watch(
        &["--interval", "1h"],
        &[
            ("FEDSYNC_WATCH_EVENTS", "poll"),
            ("FEDSYNC_WATCH_POLL_MS", "200"),
        ],
    );
    w.wait_started();
    w.wait_for("the agent's polling watcher", |w| {
        remote_watcher(w) == "polling"
    });
    fx.write(&fx.b, "sub/polled.txt", "seen by the agent's polling");
    w.wait_for("the remotely polled change on A", |_| {
        has(&fx.a, "sub/polled.txt", "seen by the agent's polling")
    });
    assert_eq!(w.terminate(), 0);
}

#[test]
fn no_echo_loop_with_a_remote_replica() {
    let r = RemoteFx::new();
    let fx = &r.fx;
    for i in 0..20 {
        fx.write(&fx.a, &format!("d/f{i}.txt"), format!("file {i}"));
    }
    let mut w = r.watch(&["--interval", "1h"], &[]);
    w.wait_started();
    w.wait_for("the agent's watcher", |w| remote_watcher(w) == "native");
    let before = w.wait_quiet(Duration::from_millis(2000));

    // A local edit is written on the remote side: the agent sees that write and reports
    // it; it must not come back as a run.
    fx.write(&fx.a, "d/f3.txt", "edited once");
    w.wait_for("the edit on B", |_| has(&fx.b, "d/f3.txt", "edited once"));
    let mid = w.wait_quiet(Duration::from_millis(2500));
    assert_eq!(
        mid - before,
        1,
        "{} runs for one local edit: an echo from the remote side?\n{}",
        mid - before,
        w.log()
    );
    // A remote create is written on the local side: no run back either.
    fx.write(&fx.b, "e/new.txt", "created once");
    w.wait_for("the create on A", |_| {
        has(&fx.a, "e/new.txt", "created once")
    });
    let after = w.wait_quiet(Duration::from_millis(2500));
    eprintln!("runs for two changes: {}\n{}", after - before, w.log());
    assert!(
        after - mid <= 2,
        "{} runs for one remote create: an echo loop?\n{}",
        after - mid,
        w.log()
    );
    assert_eq!(watch_runs_in_log(fx, "r") as u64, after, "{}", w.log());
    assert_eq!(r.agents().len(), 1);
    assert_eq!(w.terminate(), 0);
}

#[test]
fn a_dropped_agent_connection_is_made_again_and_catches_up() {
    let r = RemoteFx::new();
    let fx = &r.fx;
    fx.write(&fx.a, "x.txt", "x");
    let mut w = r.watch(&["--interval", "1h"], &[]);
    w.wait_started();
    w.wait_for("the agent's watcher", |w| remote_watcher(w) == "native");
    let first = r.agents();
    assert_eq!(first.len(), 1);

    // The connection drops and cannot be made for a while (the host is down).
    std::fs::write(&r.down, "").unwrap();
    let st = std::process::Command::new("kill")
        .args(["-KILL", &first[0].to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    w.wait_for("the replica to be reported unavailable", |w| {
        remote_watcher(w) == "unavailable"
    });
    // Changes on the remote side while nothing listens there.
    fx.write(&fx.b, "x.txt", "edited while disconnected");
    fx.write(&fx.b, "made-offline.txt", "created while disconnected");
    // A few attempts fail (backoff), then the host is back.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(w.still_running());
    std::fs::remove_file(&r.down).unwrap();
    w.wait_for("the changes made while disconnected", |_| {
        has(&fx.a, "x.txt", "edited while disconnected")
            && has(&fx.a, "made-offline.txt", "created while disconnected")
    });
    w.wait_for("the agent's watcher again", |w| {
        remote_watcher(w) == "native"
    });
    assert_eq!(r.agents().len(), 2, "{:?}\n{}", r.agents(), w.log());
    assert!(w.log().contains("connected again"), "{}", w.log());
    // And events flow over the new connection.
    fx.write(&fx.b, "after.txt", "after the reconnection");
    w.wait_for("a remote change after the reconnection", |_| {
        has(&fx.a, "after.txt", "after the reconnection")
    });
    assert_eq!(w.terminate(), 0);
}
