//! Issue 5, "runs you can trust": `rollback` of every kind of action (and of the rollback
//! itself), `sync --atomic` with an injected failure, `versions` / `restore` / `prune`, and
//! `verify` finding a silent change.
//!
//! Every scenario uses a named profile `p` over the fixture's roots `a` and `b`. Trees are
//! compared with [`snap`]: the fixture's snapshot (kind, content, mode, link target, file
//! mtime) without directory mtimes, which any change of a folder's entries moves and which no
//! tool can put back, and without symlink mtimes, which fedsync does not sync (a link it
//! creates, by a sync or a restore, gets the current time; only its target is kept).
//!
//! Failures are injected with `FEDSYNC_FAIL_PATHS` (see `fedsync-core/src/faults.rs`):
//! installing, creating or removing one of those paths on a local replica fails with a
//! permission error.

mod common;

use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::symlink;
use std::path::Path;

/// The profile every test uses.
const P: &str = "p";

type Snap = BTreeMap<String, Node>;

/// Unrelated files every fixture starts with on a, so that the deletions of a scenario stay
/// under the delete guard (`max_delete = 50%` of the synced files).
const BALLAST: usize = 6;

/// A fixture with profile `p` = { a, b } (no retention unless a test rewrites it) and
/// [`BALLAST`] files on a, synced by the test's first sync.
fn setup() -> Fx {
    let fx = Fx::new();
    fx.profile_ab(P, "", "");
    for i in 0..BALLAST {
        fx.write(
            &fx.a,
            &format!("ballast/b{i}.txt"),
            format!("ballast {i}\n"),
        );
    }
    fx
}

/// [`tree_snapshot`] without directory mtimes and symlink mtimes (see the module comment).
fn snap(root: &Path) -> Snap {
    tree_snapshot(root)
        .into_iter()
        .map(|(k, n)| match n {
            Node::Dir { mode, .. } => (
                k,
                Node::Dir {
                    mode,
                    mtime: (0, 0),
                },
            ),
            Node::Link { target, .. } => (
                k,
                Node::Link {
                    target,
                    mtime: (0, 0),
                },
            ),
            other => (k, other),
        })
        .collect()
}

/// The entries on which two snapshots disagree, one per line (for assertion messages).
fn diff(want: &Snap, got: &Snap) -> String {
    let keys: BTreeSet<&String> = want.keys().chain(got.keys()).collect();
    let show = |n: Option<&Node>| match n {
        None => "absent".to_string(),
        Some(Node::File { mode, mtime, data }) => format!(
            "file {mode:o} mtime {mtime:?} {:?}",
            String::from_utf8_lossy(data)
        ),
        Some(Node::Dir { mode, .. }) => format!("dir {mode:o}"),
        Some(Node::Link { target, mtime }) => {
            format!("link -> {} mtime {mtime:?}", target.display())
        }
    };
    keys.into_iter()
        .filter(|k| want.get(*k) != got.get(*k))
        .map(|k| {
            format!(
                "  {k:?}: want {}, got {}",
                show(want.get(k)),
                show(got.get(k))
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[track_caller]
fn assert_tree(root: &Path, want: &Snap, when: &str) {
    let got = snap(root);
    assert!(
        &got == want,
        "{} {when} differs from what was expected:\n{}",
        root.display(),
        diff(want, &got)
    );
}

/// Every file content and link target on the two replicas: trees and kept versions.
fn everything_kept(fx: &Fx) -> BTreeSet<Vec<u8>> {
    let mut out = BTreeSet::new();
    for root in [&fx.a, &fx.b] {
        let mut add = |s: BTreeMap<String, Node>| {
            for n in s.into_values() {
                match n {
                    Node::File { data, .. } => {
                        out.insert(data);
                    }
                    Node::Link { target, .. } => {
                        out.insert(link_key(&target.to_string_lossy()));
                    }
                    Node::Dir { .. } => {}
                }
            }
        };
        add(tree_snapshot(root));
        let vroot = root.join(".fedsync").join("versions");
        if vroot.exists() {
            add(tree_snapshot_all(&vroot));
        }
    }
    out
}

fn link_key(target: &str) -> Vec<u8> {
    format!("symlink -> {target}").into_bytes()
}

/// Invariant 1 (nothing lost): every content any of `seen` held is still in a tree or in
/// `.fedsync/versions` of one of the replicas.
#[track_caller]
fn assert_nothing_lost(fx: &Fx, seen: &[&Snap]) {
    let kept = everything_kept(fx);
    for s in seen {
        for (path, n) in s.iter() {
            let key = match n {
                Node::File { data, .. } => data.clone(),
                Node::Link { target, .. } => link_key(&target.to_string_lossy()),
                Node::Dir { .. } => continue,
            };
            assert!(
                kept.contains(&key),
                "content of {path:?} ({:?}) is neither in a tree nor in the versions",
                String::from_utf8_lossy(&key)
            );
        }
    }
}

/// `fedsync sync p --json`, exit code asserted.
#[track_caller]
fn sync_p(fx: &Fx, want: i32) -> Value {
    let out = fx.run(&["sync", P, "--json"]);
    out.code(want);
    out.json()
}

/// `fedsync sync p` (human output), exit 0 asserted.
#[track_caller]
fn sync_ok(fx: &Fx) -> Out {
    let out = fx.run(&["sync", P]);
    out.ok();
    out
}

/// The run id of a `--json` report.
fn run_of(v: &Value) -> String {
    v["run"]
        .as_str()
        .unwrap_or_else(|| panic!("no run id in {v:#}"))
        .to_string()
}

/// `fedsync rollback p [ARGS] --json`, exit 0 asserted, report returned.
#[track_caller]
fn rollback(fx: &Fx, args: &[&str]) -> Value {
    let mut all = vec!["rollback", P];
    all.extend_from_slice(args);
    all.push("--json");
    let out = fx.run(&all);
    out.ok();
    let v = out.json();
    assert_eq!(v["kind"], "rollback", "{out:?}");
    v
}

/// Run the binary with extra environment variables.
fn run_env(fx: &Fx, env: &[(&str, &str)], args: &[&str]) -> Out {
    let mut c = fx.command(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run fedsync");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        args: args.iter().map(|s| s.to_string()).collect(),
    }
}

/// A symlink `root/rel -> target` with the next fixture-clock mtime (replacing what is there).
fn link(fx: &Fx, root: &Path, rel: &str, target: &str) {
    let p = root.join(rel);
    if std::fs::symlink_metadata(&p).is_ok() {
        std::fs::remove_file(&p).expect("remove old link");
    }
    symlink(target, &p).expect("symlink");
    set_mtime(&p, fx.tick(), 0);
}

/// Both replicas before and after the run under test, its id and the first rollback's.
struct Trip {
    run: String,
    rollback: String,
    pre: [Snap; 2],
    post: [Snap; 2],
}

/// The core check of every rollback test: sync (the run under test, whose items must include
/// `expect` = (path, action) pairs, all done), roll it back (both replicas exactly as before
/// the run), roll the rollback back (both exactly as after the run), and nothing lost.
#[track_caller]
fn assert_run_undoable(fx: &Fx, expect: &[(&str, &str)]) -> Trip {
    let pre = [snap(&fx.a), snap(&fx.b)];
    let rep = sync_p(fx, 0);
    let run = run_of(&rep);
    for (path, action) in expect {
        let it = item(&rep, path);
        assert_eq!(it["action"], *action, "item {path}: {rep:#}");
        assert_eq!(it["outcome"]["state"], "done", "item {path}: {rep:#}");
    }
    let post = [snap(&fx.a), snap(&fx.b)];
    assert!(pre != post, "the run under test changed nothing: {rep:#}");

    let rb = rollback(fx, &[]);
    assert_eq!(
        rb["target"],
        run.as_str(),
        "rolled back the wrong run: {rb:#}"
    );
    assert_eq!(rb["failed"], serde_json::json!([]), "{rb:#}");
    assert_tree(&fx.a, &pre[0], "after the rollback");
    assert_tree(&fx.b, &pre[1], "after the rollback");
    assert_nothing_lost(fx, &[&pre[0], &pre[1], &post[0], &post[1]]);

    // The rollback is a run of its own: rolling it back redoes the run.
    let rb2 = rollback(fx, &[]);
    assert_eq!(
        rb2["target"], rb["run"],
        "the second rollback did not target the first: {rb2:#}"
    );
    assert_eq!(rb2["failed"], serde_json::json!([]), "{rb2:#}");
    assert_tree(&fx.a, &post[0], "after the rollback of the rollback");
    assert_tree(&fx.b, &post[1], "after the rollback of the rollback");
    assert_nothing_lost(fx, &[&pre[0], &pre[1], &post[0], &post[1]]);
    Trip {
        run,
        rollback: run_of(&rb),
        pre,
        post,
    }
}

// ------------------------------------------------------------ 1. each kind of action

#[test]
fn rollback_created_file_removes_it_and_keeps_it_as_a_version() {
    let fx = setup();
    fx.write(&fx.a, "keep.txt", "unrelated\n");
    sync_ok(&fx);
    fx.write(&fx.a, "new.txt", "brand new\n");
    fx.write(&fx.a, "deep/er/new2.txt", "nested new\n");
    let t = assert_run_undoable(&fx, &[("new.txt", "copy"), ("deep/er/new2.txt", "copy")]);
    assert!(!t.pre[1].contains_key("new.txt") && t.post[1].contains_key("new.txt"));
    // The rollback removed them by keeping them as its versions.
    assert_eq!(
        version_content(&fx.b, &t.rollback, "new.txt"),
        "brand new\n"
    );
    assert_eq!(
        version_content(&fx.b, &t.rollback, "deep/er/new2.txt"),
        "nested new\n"
    );
}

#[test]
fn rollback_overwritten_file_puts_the_old_content_back() {
    let fx = setup();
    fx.write(&fx.a, "doc.txt", "old content\n");
    fx.write(&fx.a, "sub/doc2.txt", "old 2\n");
    sync_ok(&fx);
    fx.write(&fx.a, "doc.txt", "new content, longer\n");
    fx.write(&fx.b, "sub/doc2.txt", "new 2 from b\n");
    let t = assert_run_undoable(&fx, &[("doc.txt", "copy"), ("sub/doc2.txt", "copy")]);
    // One change each way, each undone on the replica it changed; the run kept the old
    // contents as its versions there.
    assert_eq!(version_content(&fx.b, &t.run, "doc.txt"), "old content\n");
    assert_eq!(version_content(&fx.a, &t.run, "sub/doc2.txt"), "old 2\n");
    assert!(matches!(&t.pre[1]["doc.txt"], Node::File { data, .. } if data == b"old content\n"));
    assert!(matches!(&t.pre[0]["sub/doc2.txt"], Node::File { data, .. } if data == b"old 2\n"));
}

#[test]
fn rollback_deleted_file_puts_it_back() {
    let fx = setup();
    let p = fx.write(&fx.a, "gone.sh", "#!/bin/sh\necho bye\n");
    set_mode(&p, 0o750);
    fx.write(&fx.a, "d/gone2.txt", "second\n");
    fx.write(&fx.a, "d/stays.txt", "stays\n");
    sync_ok(&fx);
    std::fs::remove_file(fx.a.join("gone.sh")).unwrap();
    std::fs::remove_file(fx.a.join("d/gone2.txt")).unwrap();
    let t = assert_run_undoable(&fx, &[("gone.sh", "delete"), ("d/gone2.txt", "delete")]);
    assert!(t.pre[1].contains_key("gone.sh") && !t.post[1].contains_key("gone.sh"));
}

#[test]
fn rollback_moved_file_renames_it_back() {
    let fx = setup();
    fx.write(&fx.a, "old-name.txt", "moving content, unique enough\n");
    fx.write(&fx.a, "dir1/report.pdf", "pdf bytes that move\n");
    fx.write(&fx.a, "dir2/other.txt", "other\n");
    sync_ok(&fx);
    std::fs::rename(fx.a.join("old-name.txt"), fx.a.join("new-name.txt")).unwrap();
    std::fs::rename(fx.a.join("dir1/report.pdf"), fx.a.join("dir2/report.pdf")).unwrap();
    assert_run_undoable(
        &fx,
        &[("new-name.txt", "move"), ("dir2/report.pdf", "move")],
    );
}

#[test]
fn rollback_mode_only_change_restores_the_executable_bit() {
    let fx = setup();
    fx.write(&fx.a, "run.sh", "#!/bin/sh\nexit 0\n");
    fx.write(&fx.a, "tool.sh", "#!/bin/sh\nexit 1\n");
    set_mode(&fx.a.join("tool.sh"), 0o755);
    sync_ok(&fx);
    assert_eq!(mode_of(&fx.b.join("run.sh")), 0o644);
    // chmod changes no mtime and no content: a mode-only change each way.
    set_mode(&fx.a.join("run.sh"), 0o755);
    set_mode(&fx.b.join("tool.sh"), 0o644);
    let t = assert_run_undoable(&fx, &[("run.sh", "set-mode"), ("tool.sh", "set-mode")]);
    assert!(matches!(
        t.post[1]["run.sh"],
        Node::File { mode: 0o755, .. }
    ));
    assert!(matches!(t.pre[1]["run.sh"], Node::File { mode: 0o644, .. }));
}

#[test]
fn rollback_created_empty_directory_removes_it() {
    let fx = setup();
    fx.write(&fx.a, "x.txt", "x\n");
    sync_ok(&fx);
    std::fs::create_dir(fx.a.join("empty")).unwrap();
    std::fs::create_dir_all(fx.a.join("nested/empty/too")).unwrap();
    let t = assert_run_undoable(&fx, &[("empty", "copy")]);
    assert!(matches!(t.post[1]["nested/empty/too"], Node::Dir { .. }));
    assert!(!t.pre[1].contains_key("nested"));
}

#[test]
fn rollback_created_directory_with_files_removes_all_of_it() {
    let fx = setup();
    fx.write(&fx.a, "x.txt", "x\n");
    sync_ok(&fx);
    fx.write(&fx.a, "project/README", "readme\n");
    fx.write(&fx.a, "project/src/main.rs", "fn main() {}\n");
    let t = assert_run_undoable(
        &fx,
        &[("project/README", "copy"), ("project/src/main.rs", "copy")],
    );
    assert!(!t.pre[1].contains_key("project") && t.post[1].contains_key("project/src"));
}

#[test]
fn rollback_deleted_empty_directory_re_creates_it_with_its_mode() {
    let fx = setup();
    std::fs::create_dir_all(fx.a.join("spool/in")).unwrap();
    set_mode(&fx.a.join("spool/in"), 0o750);
    fx.write(&fx.a, "x.txt", "x\n");
    sync_ok(&fx);
    assert!(fx.b.join("spool/in").is_dir());
    std::fs::remove_dir_all(fx.a.join("spool")).unwrap();
    let t = assert_run_undoable(&fx, &[("spool/in", "delete"), ("spool", "delete")]);
    assert!(t.pre[1].contains_key("spool/in") && !t.post[1].contains_key("spool"));
}

#[test]
fn rollback_file_replaced_by_a_directory_puts_the_file_back() {
    let fx = setup();
    fx.write(&fx.a, "thing", "I was a file\n");
    sync_ok(&fx);
    std::fs::remove_file(fx.a.join("thing")).unwrap();
    fx.write(&fx.a, "thing/inside.txt", "now a folder\n");
    let t = assert_run_undoable(&fx, &[("thing", "copy"), ("thing/inside.txt", "copy")]);
    assert!(matches!(t.pre[1]["thing"], Node::File { .. }));
    assert!(matches!(t.post[1]["thing"], Node::Dir { .. }));
}

#[test]
fn rollback_directory_replaced_by_a_file_puts_the_directory_back() {
    let fx = setup();
    fx.write(&fx.a, "thing/inside.txt", "I am in a folder\n");
    fx.write(&fx.a, "thing/deeper/more.txt", "more\n");
    sync_ok(&fx);
    std::fs::remove_dir_all(fx.a.join("thing")).unwrap();
    fx.write(&fx.a, "thing", "now a file\n");
    let t = assert_run_undoable(
        &fx,
        &[
            ("thing", "copy"),
            ("thing/inside.txt", "delete"),
            ("thing/deeper/more.txt", "delete"),
        ],
    );
    assert!(matches!(t.pre[1]["thing"], Node::Dir { .. }));
    assert!(matches!(t.post[1]["thing"], Node::File { .. }));
}

#[test]
fn rollback_created_symlink_removes_it() {
    let fx = setup();
    fx.write(&fx.a, "target.txt", "pointed at\n");
    sync_ok(&fx);
    link(&fx, &fx.a, "to-target", "target.txt");
    link(&fx, &fx.a, "dangling", "does/not/exist");
    let t = assert_run_undoable(&fx, &[("to-target", "copy"), ("dangling", "copy")]);
    assert!(
        matches!(&t.post[1]["dangling"], Node::Link { target, .. } if target == Path::new("does/not/exist"))
    );
}

#[test]
fn rollback_changed_symlink_puts_the_old_target_back() {
    let fx = setup();
    fx.write(&fx.a, "v1.txt", "one\n");
    fx.write(&fx.a, "v2.txt", "two\n");
    link(&fx, &fx.a, "current", "v1.txt");
    sync_ok(&fx);
    assert_eq!(
        std::fs::read_link(fx.b.join("current")).unwrap(),
        Path::new("v1.txt")
    );
    link(&fx, &fx.a, "current", "v2.txt");
    let t = assert_run_undoable(&fx, &[("current", "copy")]);
    assert!(
        matches!(&t.pre[1]["current"], Node::Link { target, .. } if target == Path::new("v1.txt"))
    );
    assert!(
        matches!(&t.post[1]["current"], Node::Link { target, .. } if target == Path::new("v2.txt"))
    );
}

#[test]
fn rollback_keep_both_conflict_removes_the_copy_and_puts_the_names_back() {
    let fx = setup();
    fx.write(&fx.a, "notes/todo.txt", "base\n");
    sync_ok(&fx);
    fx.write(&fx.a, "notes/todo.txt", "a's edit\n");
    fx.write(&fx.b, "notes/todo.txt", "b's edit (newer)\n");
    let t = assert_run_undoable(&fx, &[("notes/todo.txt", "keep-both")]);
    // The run did write a conflict copy on both sides; the rollback took it away again.
    for post in &t.post {
        let copies: Vec<&String> = post
            .keys()
            .filter(|k| k.starts_with("notes/todo.conflict-"))
            .collect();
        assert_eq!(copies.len(), 1, "no conflict copy after the run: {post:#?}");
    }
    for pre in &t.pre {
        assert_eq!(
            pre.keys().filter(|k| k.starts_with("notes/")).count(),
            1,
            "{pre:#?}"
        );
    }
}

/// Every kind in one run, both directions (the rollback plan orders them last change first).
#[test]
fn rollback_mixed_run_of_every_kind_at_once() {
    let fx = &setup();
    fx.write(&fx.a, "over.txt", "over v1\n");
    fx.write(&fx.a, "del.txt", "to be deleted\n");
    fx.write(&fx.a, "mv-from.txt", "moved content\n");
    fx.write(&fx.a, "mode.sh", "#!/bin/sh\n");
    std::fs::create_dir(fx.a.join("rmdir")).unwrap();
    fx.write(&fx.a, "both.txt", "both base\n");
    fx.write(&fx.a, "over-b.txt", "over-b v1\n");
    fx.write(&fx.a, "d2f/in.txt", "in a dir that becomes a file\n");
    fx.write(&fx.a, "f2d", "a file that becomes a dir\n");
    link(fx, &fx.a, "ln", "over.txt");
    sync_ok(fx);

    fx.write(&fx.a, "over.txt", "over v2\n");
    std::fs::remove_file(fx.a.join("del.txt")).unwrap();
    std::fs::rename(fx.a.join("mv-from.txt"), fx.a.join("mv-to.txt")).unwrap();
    set_mode(&fx.a.join("mode.sh"), 0o755);
    std::fs::remove_dir(fx.a.join("rmdir")).unwrap();
    fx.write(&fx.a, "new/dir/file.txt", "new\n");
    std::fs::create_dir_all(fx.a.join("new/empty")).unwrap();
    link(fx, &fx.a, "new-link", "over.txt");
    fx.write(&fx.b, "from-b.txt", "created on b\n");
    fx.write(&fx.b, "over-b.txt", "over-b from b\n");
    fx.write(&fx.a, "both.txt", "both: a\n");
    fx.write(&fx.b, "both.txt", "both: b\n");
    std::fs::remove_dir_all(fx.a.join("d2f")).unwrap();
    fx.write(&fx.a, "d2f", "now a file\n");
    std::fs::remove_file(fx.a.join("f2d")).unwrap();
    fx.write(&fx.a, "f2d/in.txt", "now in a dir\n");
    link(fx, &fx.a, "ln", "mode.sh");
    assert_run_undoable(
        fx,
        &[
            ("over.txt", "copy"),
            ("del.txt", "delete"),
            ("mv-to.txt", "move"),
            ("mode.sh", "set-mode"),
            ("rmdir", "delete"),
            ("new/dir/file.txt", "copy"),
            ("new/empty", "copy"),
            ("new-link", "copy"),
            ("from-b.txt", "copy"),
            ("over-b.txt", "copy"),
            ("both.txt", "keep-both"),
            ("d2f", "copy"),
            ("f2d", "copy"),
            ("ln", "copy"),
        ],
    );
}

// ------------------------------------------------ 2. the next sync carries the rollback

#[test]
fn after_a_rollback_the_next_sync_carries_the_restored_state_to_the_other_replica() {
    let fx = setup();
    fx.write(&fx.a, "over.txt", "over v1\n");
    fx.write(&fx.a, "del.txt", "deleted later\n");
    fx.write(&fx.a, "mv-from.txt", "moved content\n");
    fx.write(&fx.a, "mode.sh", "#!/bin/sh\n");
    sync_ok(&fx);

    fx.write(&fx.a, "over.txt", "over v2\n");
    std::fs::remove_file(fx.a.join("del.txt")).unwrap();
    std::fs::rename(fx.a.join("mv-from.txt"), fx.a.join("mv-to.txt")).unwrap();
    set_mode(&fx.a.join("mode.sh"), 0o755);
    fx.write(&fx.a, "created.txt", "created\n");
    let pre_b = snap(&fx.b);
    let post_a = snap(&fx.a);
    sync_ok(&fx);
    rollback(&fx, &[]);
    assert_tree(&fx.b, &pre_b, "after the rollback");

    // Revert semantics: the rollback on b is the newest change; it goes to a.
    let rep = sync_p(&fx, 0);
    assert_eq!(item(&rep, "over.txt")["target"], "a", "{rep:#}");
    let (sa, sb) = (snap(&fx.a), snap(&fx.b));
    assert!(sa == sb, "a and b differ:\n{}", diff(&sb, &sa));
    assert_tree(&fx.a, &pre_b, "after the sync following the rollback");
    assert_eq!(read(&fx.a, "over.txt"), "over v1\n");
    assert_eq!(mode_of(&fx.a.join("mode.sh")), 0o644);
    assert!(exists(&fx.a, "mv-from.txt") && !exists(&fx.a, "mv-to.txt"));
    // What a held is kept there as versions.
    assert_nothing_lost(&fx, &[&pre_b, &post_a]);
    let out = sync_ok(&fx);
    assert!(out.stdout.contains("nothing to do"), "{out:?}");
}

// ---------------------------------------------------------------- 3. refusal, --force

#[test]
fn rollback_refuses_when_a_path_changed_since_the_run_then_force_proceeds() {
    let fx = setup();
    fx.write(&fx.a, "x.txt", "x v1\n");
    fx.write(&fx.a, "y.txt", "y v1\n");
    sync_ok(&fx);
    fx.write(&fx.a, "x.txt", "x v2\n");
    fx.write(&fx.a, "y.txt", "y v2\n");
    fx.write(&fx.a, "z.txt", "z created\n");
    let run = run_of(&sync_p(&fx, 0));

    // The user edits two of the files the run wrote, on b.
    fx.write(&fx.b, "x.txt", "x edited after the run\n");
    fx.write(&fx.b, "z.txt", "z edited after the run\n");
    let (all_a, all_b) = (tree_snapshot_all(&fx.a), tree_snapshot_all(&fx.b));
    let audit_before = std::fs::read(fx.audit_path(P)).unwrap();

    let out = fx.run(&["rollback", P]);
    out.code(3);
    let msg = out.all();
    assert!(msg.contains("x.txt") && msg.contains("z.txt"), "{out:?}");
    assert!(
        !msg.contains("y.txt"),
        "y.txt did not change since: {out:?}"
    );
    assert!(
        msg.contains(&run),
        "the message does not name the run: {out:?}"
    );
    assert!(msg.contains("--force"), "no hint about --force: {out:?}");
    assert!(tree_snapshot_all(&fx.a) == all_a, "a was touched");
    assert!(tree_snapshot_all(&fx.b) == all_b, "b was touched");
    assert_eq!(
        std::fs::read(fx.audit_path(P)).unwrap(),
        audit_before,
        "a refused rollback wrote to the audit trail"
    );

    let rb = rollback(&fx, &["--force"]);
    assert_eq!(rb["target"], run.as_str());
    assert_eq!(read(&fx.b, "x.txt"), "x v1\n");
    assert_eq!(read(&fx.b, "y.txt"), "y v1\n");
    assert!(!exists(&fx.b, "z.txt"));
    // The edits made after the run are kept as versions of the rollback.
    let rbrun = run_of(&rb);
    assert_eq!(
        version_content(&fx.b, &rbrun, "x.txt"),
        "x edited after the run\n"
    );
    assert_eq!(
        version_content(&fx.b, &rbrun, "z.txt"),
        "z edited after the run\n"
    );
}

// ---------------------------------------------------------------- 4. a given older run

#[test]
fn rollback_of_a_given_older_run_leaves_later_runs_alone() {
    let fx = setup();
    fx.write(&fx.a, "base.txt", "base\n");
    sync_ok(&fx);
    fx.write(&fx.a, "first.txt", "from run 1\n");
    fx.write(&fx.a, "base.txt", "base changed by run 1\n");
    let run1 = run_of(&sync_p(&fx, 0));
    fx.write(&fx.b, "second.txt", "from run 2\n");
    let run2 = run_of(&sync_p(&fx, 0));
    assert_ne!(run1, run2);
    let (a2, b2) = (snap(&fx.a), snap(&fx.b));

    let rb = rollback(&fx, &[run1.as_str()]);
    assert_eq!(rb["target"], run1.as_str());
    assert!(!exists(&fx.b, "first.txt"));
    assert_eq!(read(&fx.b, "base.txt"), "base\n");
    // Run 2's change (on a) is still there; a was not touched at all by run 1.
    assert_tree(&fx.a, &a2, "after rolling back run 1");
    assert_eq!(read(&fx.b, "second.txt"), "from run 2\n");

    // Rolling back the rollback (the default target now) redoes run 1 only.
    let rb2 = rollback(&fx, &[]);
    assert_eq!(rb2["target"], rb["run"]);
    assert_tree(&fx.a, &a2, "after rolling back the rollback");
    assert_tree(&fx.b, &b2, "after rolling back the rollback");

    // An id that is not a run: usage error naming it, nothing changed.
    let out = fx.run(&["rollback", P, "20200101-000000-0000"]);
    out.code(2);
    assert!(out.all().contains("20200101-000000-0000"), "{out:?}");
    assert!(out.all().contains("fedsync log"), "no hint: {out:?}");
    assert_tree(&fx.a, &a2, "after a rollback of an unknown run");
    assert_tree(&fx.b, &b2, "after a rollback of an unknown run");
}

// ------------------------------------------------------------ 5. a replica is missing

#[test]
fn rollback_refuses_when_a_replica_it_touched_is_missing_and_changes_nothing() {
    let fx = setup();
    fx.write(&fx.a, "shared.txt", "v1\n");
    sync_ok(&fx);
    // One run that changes both replicas.
    fx.write(&fx.a, "shared.txt", "v2 from a\n");
    fx.write(&fx.b, "only-b.txt", "made on b\n");
    let run = run_of(&sync_p(&fx, 0));
    assert!(exists(&fx.a, "only-b.txt"));

    let all_a = tree_snapshot_all(&fx.a);
    let away = fx.dir.join("b-unplugged");
    std::fs::rename(&fx.b, &away).unwrap();
    let all_away = tree_snapshot_all(&away);
    let out = fx.run(&["rollback", P]);
    out.code(3);
    assert!(out.all().contains(&run), "{out:?}");
    assert!(
        out.all().contains("replica(s) b") || out.all().contains(fx.b_str()),
        "the message does not say which replica: {out:?}"
    );
    assert!(tree_snapshot_all(&fx.a) == all_a, "a was changed");
    assert!(
        tree_snapshot_all(&away) == all_away,
        "b (moved away) was changed"
    );
    assert!(!fx.b.exists(), "the missing root was re-created");

    // Back again: the rollback goes through on both.
    std::fs::rename(&away, &fx.b).unwrap();
    let rb = rollback(&fx, &[]);
    assert_eq!(rb["target"], run.as_str());
    assert!(!exists(&fx.a, "only-b.txt"));
    assert_eq!(read(&fx.b, "shared.txt"), "v1\n");
    assert_eq!(read(&fx.b, "only-b.txt"), "made on b\n");
}

// ------------------------------------------------------------------------ 6. --atomic

/// The mixed run of the `--atomic` tests: on a, two creates, two overwrites, a delete, a
/// move and a mode change; on b, a create and an overwrite. Item paths sort as
/// a-* < c-* < m-* < o-* < x-* < z-*, so `m-fail.txt` (an overwrite on b) is in the middle.
fn mixed_edits(fx: &Fx) {
    for (p, c) in [
        ("a-del.txt", "deleted on a\n"),
        ("c-mode.sh", "#!/bin/sh\n"),
        ("m-fail.txt", "fail v1\n"),
        ("o-mv-from.txt", "moved content\n"),
        ("o-over.txt", "over v1\n"),
        ("x-over-b.txt", "x v1\n"),
        ("z-over.txt", "z v1\n"),
    ] {
        fx.write(&fx.a, p, c);
    }
    sync_ok(fx);
    std::fs::remove_file(fx.a.join("a-del.txt")).unwrap();
    set_mode(&fx.a.join("c-mode.sh"), 0o755);
    fx.write(&fx.a, "b-new.txt", "created early\n");
    fx.write(&fx.a, "m-fail.txt", "fail v2\n");
    std::fs::rename(fx.a.join("o-mv-from.txt"), fx.a.join("o-mv-to.txt")).unwrap();
    fx.write(&fx.a, "o-over.txt", "over v2\n");
    fx.write(&fx.a, "y-sub/new.txt", "created late, in a new folder\n");
    fx.write(&fx.a, "z-over.txt", "z v2\n");
    fx.write(&fx.b, "d-from-b.txt", "created on b\n");
    fx.write(&fx.b, "x-over-b.txt", "x v2 from b\n");
}

/// (path, action, target) of every item that changes something, from a `--json` report.
fn plan_items(rep: &Value) -> Vec<(String, String, String)> {
    items(rep)
        .iter()
        .map(|i| {
            (
                i["path"].as_str().unwrap_or_default().to_string(),
                i["action"].as_str().unwrap_or_default().to_string(),
                i["target"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn atomic_with_a_failure_midway_leaves_both_replicas_as_before_then_a_sync_converges() {
    let fx = setup();
    mixed_edits(&fx);
    let pre = [snap(&fx.a), snap(&fx.b)];
    let planned = plan_items(&fx.run(&["plan", P, "--json"]).ok().json());

    let out = run_env(
        &fx,
        &[("FEDSYNC_FAIL_PATHS", "m-fail.txt")],
        &["sync", P, "--atomic"],
    );
    out.code(3);
    assert!(
        out.stdout.lines().any(|l| l.starts_with("--atomic:")),
        "no --atomic: line on stdout: {out:?}"
    );
    assert!(out.all().contains("m-fail.txt"), "{out:?}");
    assert_tree(&fx.a, &pre[0], "after the undone --atomic run");
    assert_tree(&fx.b, &pre[1], "after the undone --atomic run");
    assert_nothing_lost(&fx, &[&pre[0], &pre[1]]);
    // The base was put back too: the next run sees exactly what this one saw.
    let again = plan_items(&fx.run(&["plan", P, "--json"]).ok().json());
    assert_eq!(again, planned, "the plan changed after the undone run");

    // Without the injected failure: converges, both identical, nothing left to do.
    let rep = sync_p(&fx, 0);
    assert_eq!(item(&rep, "o-mv-to.txt")["action"], "move", "{rep:#}");
    let (sa, sb) = (snap(&fx.a), snap(&fx.b));
    assert!(
        sa == sb,
        "a and b differ after the sync:\n{}",
        diff(&sa, &sb)
    );
    assert_eq!(read(&fx.b, "m-fail.txt"), "fail v2\n");
    assert_eq!(read(&fx.a, "x-over-b.txt"), "x v2 from b\n");
    assert_eq!(mode_of(&fx.b.join("c-mode.sh")), 0o755);
    assert!(!exists(&fx.b, "a-del.txt") && !exists(&fx.b, "o-mv-from.txt"));
    assert!(sync_ok(&fx).stdout.contains("nothing to do"));
}

#[test]
fn atomic_json_report_says_what_was_undone() {
    let fx = setup();
    mixed_edits(&fx);
    let out = run_env(
        &fx,
        &[("FEDSYNC_FAIL_PATHS", "m-fail.txt")],
        &["sync", P, "--atomic", "--json"],
    );
    out.code(3);
    let rep = out.json();
    let it = item(&rep, "m-fail.txt");
    assert_eq!(it["outcome"]["state"], "failed", "{rep:#}");
    let undo = &rep["atomic_undo"];
    assert_eq!(undo["failed"], serde_json::json!([]), "{rep:#}");
    let done = items(&rep)
        .iter()
        .filter(|i| i["outcome"]["state"] == "done")
        .count() as u64;
    assert!(done >= 8, "the failure was not midway: {rep:#}");
    // One change per done item (a move is one change, reported as `move` + `moved-away`).
    let changes = items(&rep)
        .iter()
        .filter(|i| i["outcome"]["state"] == "done" && i["action"] != "moved-away")
        .count() as u64;
    assert_eq!(undo["undone"], changes, "{rep:#}");
}

#[test]
fn atomic_failure_and_undo_are_in_the_audit_trail() {
    let fx = setup();
    mixed_edits(&fx);
    let out = run_env(
        &fx,
        &[("FEDSYNC_FAIL_PATHS", "m-fail.txt")],
        &["sync", P, "--atomic", "--json"],
    );
    out.code(3);
    let run = run_of(&out.json());
    let log = fx.run(&["log", P, "--run", &run, "--json"]).ok().json();
    let recs = log.as_array().expect("array of records");
    let undo: Vec<&Value> = recs
        .iter()
        .filter(|r| r["detail"].as_str().unwrap_or("").starts_with("--atomic"))
        .collect();
    // The undo: one record per applied change put back, on the replica it was applied to.
    for (path, replica) in [
        ("a-del.txt", "b"),
        ("b-new.txt", "b"),
        ("o-mv-from.txt", "b"),
        ("o-over.txt", "b"),
        ("d-from-b.txt", "a"),
        ("x-over-b.txt", "a"),
    ] {
        assert!(
            undo.iter()
                .any(|r| r["path"] == path && r["replica"] == replica),
            "no undo record for {path} on {replica}: {log:#}"
        );
    }
    let end = recs.last().expect("records");
    assert_eq!(end["action"], "run-end", "{log:#}");
    assert_eq!(end["detail"], "status undone", "{log:#}");
    // The trail's hash chain is intact after the undo.
    fx.run(&["log", P, "--verify"]).ok();
}

/// Issue 5: "the failure and the undo are in the audit trail"; SPEC invariant 12: "the audit
/// trail records every action". The undo is checked above; this is the failed item itself.
#[test]
fn atomic_failed_item_is_recorded_in_the_audit_trail() {
    let fx = setup();
    mixed_edits(&fx);
    let out = run_env(
        &fx,
        &[("FEDSYNC_FAIL_PATHS", "m-fail.txt")],
        &["sync", P, "--atomic", "--json"],
    );
    out.code(3);
    let run = run_of(&out.json());
    let log = fx.run(&["log", P, "--run", &run, "--json"]).ok().json();
    let recs = log.as_array().expect("array of records");
    // The failure itself: which item failed, on which replica, and why.
    assert!(
        recs.iter().any(|r| r["path"] == "m-fail.txt"
            && r["replica"] == "b"
            && serde_json::to_string(r)
                .unwrap()
                .contains("injected failure")),
        "the failed item m-fail.txt is not in the audit trail: {log:#}"
    );
}

#[test]
fn atomic_undoes_a_file_replaced_by_a_directory() {
    let fx = setup();
    fx.write(&fx.a, "thing", "I was a file\n");
    fx.write(&fx.a, "z-over.txt", "z v1\n");
    sync_ok(&fx);
    std::fs::remove_file(fx.a.join("thing")).unwrap();
    fx.write(&fx.a, "thing/inside.txt", "now a folder\n");
    fx.write(&fx.a, "z-over.txt", "z v2\n");
    let pre = [snap(&fx.a), snap(&fx.b)];
    let out = run_env(
        &fx,
        &[("FEDSYNC_FAIL_PATHS", "z-over.txt")],
        &["sync", P, "--atomic"],
    );
    out.code(3);
    assert_tree(&fx.a, &pre[0], "after the undone --atomic run");
    assert_tree(&fx.b, &pre[1], "after the undone --atomic run");
    assert!(
        !out.stderr.contains("could not undo"),
        "some changes were not undone: {out:?}"
    );
}

#[test]
fn atomic_without_a_failure_is_a_normal_sync() {
    let fx = setup();
    mixed_edits(&fx);
    let out = fx.run(&["sync", P, "--atomic", "--json"]);
    out.ok();
    let rep = out.json();
    assert!(rep.get("atomic_undo").is_none(), "{rep:#}");
    assert!(
        items(&rep).iter().all(|i| i["outcome"]["state"] == "done"),
        "{rep:#}"
    );
    let (sa, sb) = (snap(&fx.a), snap(&fx.b));
    assert!(sa == sb, "a and b differ:\n{}", diff(&sa, &sb));
    let out = fx.run(&["sync", P, "--atomic"]);
    out.ok();
    assert!(out.stdout.contains("nothing to do"), "{out:?}");
    assert!(!out.stdout.contains("--atomic:"), "{out:?}");
}

/// Without `--atomic`, the same failure leaves the other items applied (the contrast that
/// shows the atomic test is not trivially passing).
#[test]
fn without_atomic_the_same_failure_keeps_the_other_items() {
    let fx = setup();
    mixed_edits(&fx);
    let out = run_env(&fx, &[("FEDSYNC_FAIL_PATHS", "m-fail.txt")], &["sync", P]);
    // A failed item: reported, the others applied, exit 1 (README, exit codes).
    out.code(1);
    assert!(!out.stdout.contains("--atomic:"), "{out:?}");
    assert_eq!(read(&fx.b, "o-over.txt"), "over v2\n");
    assert_eq!(read(&fx.b, "m-fail.txt"), "fail v1\n");
    // The failed item is retried by the next run.
    sync_ok(&fx);
    assert_eq!(read(&fx.b, "m-fail.txt"), "fail v2\n");
    assert_eq!(contents(&fx.a), contents(&fx.b));
}

// ---------------------------------------------------------------- 8. versions, restore

/// The file the versions tests overwrite (in a folder; a file at the root has its own test).
const F: &str = "docs/f.txt";

/// `rel` created, then overwritten three times on a with a sync after each: b keeps three
/// versions. Returns the contents in order and the runs that kept each of the first three.
fn three_overwrites(fx: &Fx, rel: &str) -> (Vec<&'static str>, Vec<String>) {
    let contents = vec![
        "v1 is 7",
        "version 2: 14+",
        "the third one is 20!",
        "v4 now",
    ];
    fx.write(&fx.a, rel, contents[0]);
    sync_ok(fx);
    let mut runs = Vec::new();
    for c in &contents[1..] {
        fx.write(&fx.a, rel, c);
        runs.push(run_of(&sync_p(fx, 0)));
    }
    (contents, runs)
}

#[test]
fn versions_lists_the_kept_versions_with_sizes_newest_first() {
    let fx = setup();
    let (contents, runs) = three_overwrites(&fx, F);
    let list = fx.run(&["versions", P, F, "--json"]).ok().json();
    let rows = list.as_array().expect("array");
    assert_eq!(rows.len(), 3, "{list:#}");
    // Newest first: the version kept by the last run holds the third content.
    for (k, row) in rows.iter().enumerate() {
        let i = 2 - k;
        assert_eq!(row["replica"], "b", "{list:#}");
        assert_eq!(row["path"], F, "{list:#}");
        assert_eq!(row["kind"], "file", "{list:#}");
        assert_eq!(row["run"], runs[i].as_str(), "{list:#}");
        assert_eq!(row["version"], runs[i].as_str(), "{list:#}");
        assert_eq!(row["size"], contents[i].len() as u64, "{list:#}");
        let loc = row["location"].as_str().unwrap();
        assert_eq!(
            std::fs::read_to_string(fx.b.join(loc)).unwrap(),
            contents[i],
            "{list:#}"
        );
    }
    // The table names the same ids and sizes, and how to restore.
    let out = fx.run(&["versions", P, F]);
    out.ok();
    for (i, run) in runs.iter().enumerate() {
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with(run.as_str()))
            .unwrap_or_else(|| panic!("no row for {run}: {out:?}"));
        assert!(line.contains(" b "), "{line}");
        assert!(line.contains(&format!("{} B", contents[i].len())), "{line}");
    }
    assert!(
        out.stdout
            .contains(&format!("fedsync restore p {F} --version")),
        "{out:?}"
    );
    // A path without versions.
    let out = fx.run(&["versions", P, "nothing-here.txt"]);
    out.ok();
    assert!(out.stdout.contains("no kept versions"), "{out:?}");
}

#[test]
fn restore_puts_an_old_version_back_keeps_the_replaced_one_and_can_be_rolled_back() {
    let fx = setup();
    let (contents, runs) = three_overwrites(&fx, F);
    let before = [snap(&fx.a), snap(&fx.b)];

    let out = fx.run(&["restore", P, F, "--version", &runs[0], "--json"]);
    out.ok();
    let rs = out.json();
    assert_eq!(rs["kind"], "restore", "{rs:#}");
    let rrun = run_of(&rs);
    assert_eq!(read(&fx.b, F), contents[0]);
    assert_tree(&fx.a, &before[0], "after a restore on b");
    // The content it replaced is itself kept, and listed.
    assert_eq!(version_content(&fx.b, &rrun, F), contents[3]);
    let list = fx.run(&["versions", P, F, "--json"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 4, "{list:#}");
    assert_eq!(list[0]["run"], rrun.as_str(), "{list:#}");
    // The versions restored from are still there.
    assert_eq!(version_content(&fx.b, &runs[0], F), contents[0]);

    // A restore is a run: rollback undoes it exactly.
    let rb = rollback(&fx, &[]);
    assert_eq!(rb["target"], rrun.as_str());
    assert_tree(&fx.a, &before[0], "after rolling back the restore");
    assert_tree(&fx.b, &before[1], "after rolling back the restore");
    let out = sync_ok(&fx);
    assert!(out.stdout.contains("nothing to do"), "{out:?}");
}

#[test]
fn restore_defaults_to_the_newest_version_and_the_next_sync_carries_it() {
    let fx = setup();
    let (contents, _) = three_overwrites(&fx, F);
    fx.run(&["restore", P, F]).ok();
    assert_eq!(read(&fx.b, F), contents[2]);
    sync_ok(&fx);
    assert_eq!(read(&fx.a, F), contents[2]);
    // a's content it replaced is kept on a.
    assert!(everything_kept(&fx).contains(contents[3].as_bytes()));
}

#[test]
fn restore_of_a_deleted_file_brings_it_back() {
    let fx = setup();
    let p = fx.write(&fx.a, "sub/precious.sh", "#!/bin/sh\necho precious\n");
    set_mode(&p, 0o700);
    sync_ok(&fx);
    let kept = snap(&fx.b)["sub/precious.sh"].clone();
    std::fs::remove_file(fx.a.join("sub/precious.sh")).unwrap();
    sync_ok(&fx);
    assert!(!exists(&fx.b, "sub/precious.sh"));

    let rs = fx
        .run(&["restore", P, "sub/precious.sh", "--json"])
        .ok()
        .json();
    assert_eq!(rs["kind"], "restore");
    assert_eq!(
        snap(&fx.b)["sub/precious.sh"],
        kept,
        "not restored with its content, mode and mtime"
    );
    // The next sync brings it back to a as well.
    sync_ok(&fx);
    assert_eq!(read(&fx.a, "sub/precious.sh"), "#!/bin/sh\necho precious\n");
    assert_eq!(mode_of(&fx.a.join("sub/precious.sh")), 0o700);
}

#[test]
fn restore_of_an_unknown_version_is_a_usage_error_that_says_what_to_do() {
    let fx = setup();
    three_overwrites(&fx, F);
    let (sa, sb) = (tree_snapshot_all(&fx.a), tree_snapshot_all(&fx.b));
    let out = fx.run(&["restore", P, F, "--version", "20200101-000000-beef"]);
    out.code(2);
    let msg = out.all();
    assert!(msg.contains("20200101-000000-beef"), "{out:?}");
    assert!(msg.contains(&format!("fedsync versions p {F}")), "{out:?}");
    // A path that never had a version.
    let out = fx.run(&["restore", P, "never.txt"]);
    out.code(2);
    assert!(out.all().contains("never.txt"), "{out:?}");
    assert!(out.all().contains("fedsync versions"), "{out:?}");
    // A replica that is not in the profile.
    let out = fx.run(&["restore", P, F, "--replica", "nope"]);
    out.code(2);
    assert!(tree_snapshot_all(&fx.a) == sa, "a was touched");
    assert!(tree_snapshot_all(&fx.b) == sb, "b was touched");
}

/// The same for a file at the root of the replica (no folder in its path).
#[test]
fn versions_and_restore_of_a_file_at_the_root() {
    let fx = setup();
    let (contents, runs) = three_overwrites(&fx, "f.txt");
    let list = fx.run(&["versions", P, "f.txt", "--json"]).ok().json();
    let rows = list.as_array().expect("array");
    assert_eq!(rows.len(), 3, "{list:#}");
    for (k, row) in rows.iter().enumerate() {
        assert_eq!(row["path"], "f.txt", "{list:#}");
        assert_eq!(
            row["location"],
            format!(".fedsync/versions/{}/f.txt", runs[2 - k]),
            "{list:#}"
        );
    }
    fx.run(&["restore", P, "f.txt", "--version", &runs[0]]).ok();
    assert_eq!(read(&fx.b, "f.txt"), contents[0]);
    fx.run(&["restore", P, "f.txt"]).ok();
    assert_eq!(read(&fx.b, "f.txt"), contents[3]);
}

// ------------------------------------------------------------------------ 9. prune

/// Kept versions of `rel` on `root`, as their contents (any order).
fn kept_of(root: &Path, rel: &str) -> Vec<String> {
    let mut v: Vec<String> = versions(root)
        .into_iter()
        .filter(|(_, p)| p == rel || p.strip_prefix(rel).is_some_and(|s| s.starts_with('~')))
        .map(|(run, p)| version_content(root, &run, &p))
        .collect();
    v.sort();
    v
}

#[test]
fn prune_keep_one_is_applied_after_every_sync() {
    let fx = Fx::new();
    fx.profile_ab(P, "versions = { keep = 1 }", "");
    fx.write(&fx.a, "g.txt", "g v1\n");
    fx.write(&fx.a, "f.txt", "f v1\n");
    sync_ok(&fx);
    fx.write(&fx.a, "g.txt", "g v2\n");
    sync_ok(&fx);
    for k in 2..=4 {
        fx.write(&fx.a, "f.txt", format!("f v{k}\n"));
        sync_ok(&fx);
        assert_eq!(
            kept_of(&fx.b, "f.txt"),
            vec![format!("f v{}\n", k - 1)],
            "after overwrite {k}"
        );
        // Per path: g's one version stays.
        assert_eq!(kept_of(&fx.b, "g.txt"), vec!["g v1\n".to_string()]);
    }
    // `fedsync prune` finds nothing more to remove.
    let before = tree_snapshot_all(&fx.b);
    let out = fx.run(&["prune", P]);
    out.ok();
    assert!(out.stdout.contains("removed 0 versions"), "{out:?}");
    assert!(tree_snapshot_all(&fx.b) == before);
}

#[test]
fn prune_command_applies_keep_and_dry_run_removes_nothing() {
    let fx = setup();
    let (contents, _) = three_overwrites(&fx, "f.txt");
    fx.write(&fx.a, "other.txt", "other v1\n");
    sync_ok(&fx);
    fx.write(&fx.a, "other.txt", "other v2\n");
    sync_ok(&fx);
    assert_eq!(kept_of(&fx.b, "f.txt").len(), 3);

    // Without a retention setting, prune keeps everything and says so.
    let before = tree_snapshot_all(&fx.b);
    let out = fx.run(&["prune", P]);
    out.ok();
    assert!(out.stdout.contains("keeps every version"), "{out:?}");
    assert!(
        tree_snapshot_all(&fx.b) == before,
        "prune without retention removed something"
    );

    fx.profile_ab(P, "versions = { keep = 1, max_age = \"30d\" }", "");
    let out = fx.run(&["prune", P, "--dry-run"]);
    out.ok();
    assert!(out.stdout.contains("would remove 2 versions"), "{out:?}");
    assert!(
        tree_snapshot_all(&fx.b) == before,
        "--dry-run removed something"
    );
    let dry = fx.run(&["prune", P, "--dry-run", "--json"]).ok().json();
    assert_eq!(dry["removed"], 2, "{dry:#}");
    assert_eq!(dry["kept"], 2, "{dry:#}");

    let out = fx.run(&["prune", P]);
    out.ok();
    assert!(out.stdout.contains("removed 2 versions"), "{out:?}");
    assert_eq!(kept_of(&fx.b, "f.txt"), vec![contents[2].to_string()]);
    assert_eq!(kept_of(&fx.b, "other.txt"), vec!["other v1\n".to_string()]);
    // The trees are untouched by pruning.
    assert_eq!(read(&fx.b, "f.txt"), contents[3]);
}

#[test]
fn prune_max_age_removes_only_versions_older_than_the_limit() {
    let fx = setup();
    three_overwrites(&fx, "f.txt");
    // A version kept by a run in 2020 (run ids are UTC timestamps).
    let old_run = "20200101-000000-0000";
    write_at(
        &fx.b.join(".fedsync/versions").join(old_run),
        "f.txt",
        "ancient\n",
        1_577_836_800,
    );
    assert_eq!(kept_of(&fx.b, "f.txt").len(), 4);
    fx.profile_ab(P, "versions = { max_age = \"30d\" }", "");
    let out = fx.run(&["prune", P]);
    out.ok();
    assert!(out.stdout.contains("removed 1 versions"), "{out:?}");
    assert!(!kept_of(&fx.b, "f.txt").contains(&"ancient\n".to_string()));
    assert_eq!(kept_of(&fx.b, "f.txt").len(), 3);
}

// ------------------------------------------------------------------------ 10. verify

#[test]
fn verify_clean_pair_exits_0() {
    let fx = setup();
    fx.write(&fx.a, "a.txt", "alpha\n");
    fx.write(&fx.b, "dir/b.bin", noise(5000, 7));
    link(&fx, &fx.a, "ln", "a.txt");
    sync_ok(&fx);
    let out = fx.run(&["verify", P]);
    out.ok();
    assert!(out.stdout.contains("every replica matches"), "{out:?}");
    let v = fx.run(&["verify", P, "--json"]).ok().json();
    assert_eq!(v["findings"], serde_json::json!([]), "{v:#}");
    assert_eq!(v["replicas"], serde_json::json!(["a", "b"]), "{v:#}");
    let files = 2 * (2 + BALLAST) as u64;
    assert_eq!(v["files"], files, "every file on each replica: {v:#}");
}

#[test]
fn verify_finds_a_byte_flipped_in_place_with_size_and_mtime_restored() {
    let fx = setup();
    fx.write(&fx.a, "photo.raw", noise(10_000, 3));
    fx.write(&fx.a, "ok.txt", "fine\n");
    sync_ok(&fx);
    fx.run(&["verify", P]).ok();

    // Bit rot on b: one byte changed in place, size and mtime as before.
    let p = fx.b.join("photo.raw");
    let (secs, nanos) = mtime_of(&p);
    let mut data = std::fs::read(&p).unwrap();
    data[4321] ^= 0x10;
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.seek(SeekFrom::Start(4321)).unwrap();
        f.write_all(&data[4321..4322]).unwrap();
    }
    set_mtime(&p, secs, nanos);
    assert_eq!(std::fs::read(&p).unwrap(), data);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 10_000);

    let out = fx.run(&["verify", P]);
    out.code(1);
    assert!(out.stdout.contains("SILENT CHANGE"), "{out:?}");
    assert!(out.stdout.contains("photo.raw"), "{out:?}");
    let out = fx.run(&["verify", P, "--json"]);
    out.code(1);
    let v = out.json();
    let f = v["findings"].as_array().expect("findings");
    assert!(
        f.iter().any(|x| x["problem"] == "silent-change"
            && x["path"] == "photo.raw"
            && x["replica"] == "b"),
        "{v:#}"
    );
    assert!(
        !f.iter()
            .any(|x| x["problem"] == "silent-change" && x["replica"] == "a"),
        "a is fine: {v:#}"
    );
    assert!(f.iter().all(|x| x["path"] == "photo.raw"), "{v:#}");
    // Verify changes nothing.
    assert_eq!(std::fs::read(&p).unwrap(), data);
}

#[test]
fn verify_reports_an_unsynced_edit_as_differs() {
    let fx = setup();
    fx.write(&fx.a, "notes.md", "synced\n");
    fx.write(&fx.a, "same.md", "same\n");
    sync_ok(&fx);
    fx.write(&fx.a, "notes.md", "edited, not synced yet\n");
    fx.write(&fx.b, "new-on-b.md", "b only\n");
    let out = fx.run(&["verify", P, "--json"]);
    out.code(1);
    let v = out.json();
    let f = v["findings"].as_array().expect("findings");
    let differs: BTreeSet<&str> = f
        .iter()
        .filter(|x| x["problem"] == "differs")
        .map(|x| x["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        differs,
        BTreeSet::from(["new-on-b.md", "notes.md"]),
        "{v:#}"
    );
    assert!(
        f.iter().all(|x| x["problem"] != "silent-change"),
        "a visible edit is not silent: {v:#}"
    );
    assert!(f.iter().any(|x| x["replica"] == "a<->b"), "{v:#}");
    // Once synced, all is well again.
    sync_ok(&fx);
    fx.run(&["verify", P]).ok();
}
