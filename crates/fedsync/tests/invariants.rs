//! SPEC section 5, invariants 1-4 and 8, checked from outside through the real binary.

mod common;

use common::*;

/// Invariant 1: an overwritten file and a deleted file are kept under
/// `.fedsync/versions/<run>/<path>` on the replica that lost them, with their old content,
/// and not on the other replica.
#[test]
fn inv1_overwritten_and_deleted_files_are_kept_as_versions_on_the_losing_replica() {
    let fx = Fx::new();
    fx.write(&fx.a, "notes/edit.txt", "old content of edit\n");
    fx.write(&fx.a, "notes/gone.txt", "old content of gone\n");
    for i in 0..4 {
        fx.write(&fx.a, &format!("keep{i}.txt"), format!("keep {i}\n"));
    }
    fx.sync(&[]).ok();
    assert_eq!(read(&fx.b, "notes/edit.txt"), "old content of edit\n");
    assert!(versions(&fx.a).is_empty() && versions(&fx.b).is_empty());

    // A edits one file and deletes another: B loses both old contents.
    fx.write(&fx.a, "notes/edit.txt", "new content of edit\n");
    std::fs::remove_file(fx.a.join("notes/gone.txt")).unwrap();
    let rep = fx.sync_json(0, &[]);
    let run = rep["run"].as_str().expect("run id").to_string();

    assert_eq!(read(&fx.b, "notes/edit.txt"), "new content of edit\n");
    assert!(!exists(&fx.b, "notes/gone.txt"), "deletion not propagated");

    let vb = versions(&fx.b);
    assert_eq!(
        vb,
        vec![
            (run.clone(), "notes/edit.txt".to_string()),
            (run.clone(), "notes/gone.txt".to_string())
        ],
        "versions kept on B"
    );
    assert_eq!(
        version_content(&fx.b, &run, "notes/edit.txt"),
        "old content of edit\n"
    );
    assert_eq!(
        version_content(&fx.b, &run, "notes/gone.txt"),
        "old content of gone\n"
    );
    // The replica that made the change lost nothing: no versions there.
    assert!(
        versions(&fx.a).is_empty(),
        "versions on the wrong replica: {:?}",
        versions(&fx.a)
    );
    // The report names the version it kept.
    assert_eq!(
        item(&rep, "notes/edit.txt")["version"],
        format!(".fedsync/versions/{run}/notes/edit.txt")
    );

    // The other direction: B overwrites, A keeps the version.
    fx.write(&fx.b, "keep0.txt", "changed on b\n");
    let rep2 = fx.sync_json(0, &[]);
    let run2 = rep2["run"].as_str().unwrap().to_string();
    assert_eq!(read(&fx.a, "keep0.txt"), "changed on b\n");
    assert_eq!(version_content(&fx.a, &run2, "keep0.txt"), "keep 0\n");
    assert!(!versions(&fx.b).iter().any(|(r, _)| *r == run2));
}

/// Invariants 2 and 3 from outside: after a sync the content is byte-equal on both sides
/// (binary, large and empty files included) and no temporary file is left behind.
#[test]
fn inv2_inv3_content_is_byte_equal_and_no_temp_files_remain() {
    let fx = Fx::new();
    let big = noise(3 * 1024 * 1024 + 17, 7);
    let small = noise(4093, 11);
    fx.write(&fx.a, "bin/big.dat", &big);
    fx.write(&fx.a, "bin/small.dat", &small);
    fx.write(&fx.a, "empty.txt", "");
    fx.write(&fx.b, "from_b/zeros.bin", vec![0u8; 65536]);
    fx.write(&fx.b, "from_b/utf8 name é.txt", "unicode ✓\n");
    fx.sync(&[]).ok();

    assert_eq!(read_bytes(&fx.b, "bin/big.dat"), big);
    assert_eq!(read_bytes(&fx.b, "bin/small.dat"), small);
    assert_eq!(read_bytes(&fx.b, "empty.txt"), b"");
    assert_eq!(read_bytes(&fx.a, "from_b/zeros.bin"), vec![0u8; 65536]);
    assert_eq!(read(&fx.a, "from_b/utf8 name é.txt"), "unicode ✓\n");
    assert_eq!(contents(&fx.a), contents(&fx.b));
    assert!(temp_files(&fx.a).is_empty(), "{:?}", temp_files(&fx.a));
    assert!(temp_files(&fx.b).is_empty(), "{:?}", temp_files(&fx.b));

    // An overwrite of a large file, too.
    let big2 = noise(3 * 1024 * 1024 + 17, 8);
    fx.write(&fx.b, "bin/big.dat", &big2);
    fx.sync(&[]).ok();
    assert_eq!(read_bytes(&fx.a, "bin/big.dat"), big2);
    assert_eq!(contents(&fx.a), contents(&fx.b));
    assert!(temp_files(&fx.a).is_empty() && temp_files(&fx.b).is_empty());
}

/// Invariant 4 (the part visible from outside): a target changed after `plan` showed a copy
/// to it is not clobbered by the `sync` that follows; both contents survive.
#[test]
fn inv4_target_changed_between_plan_and_sync_is_not_clobbered() {
    let fx = Fx::new();
    fx.write(&fx.a, "doc.txt", "base\n");
    fx.sync(&[]).ok();

    fx.write(&fx.a, "doc.txt", "edited on a\n");
    let plan = fx.plan(&["--json"]);
    plan.ok();
    let planned = plan.json();
    assert_eq!(item(&planned, "doc.txt")["action"], "copy");
    assert_eq!(item(&planned, "doc.txt")["target"], "b");
    assert_eq!(read(&fx.b, "doc.txt"), "base\n", "plan wrote to b");

    // Meanwhile somebody edits the target.
    fx.write(&fx.b, "doc.txt", "edited on b\n");
    let out = fx.sync(&[]);
    assert!(out.code == 0 || out.code == 1, "{out:?}");

    // B's edit is not lost: it is still under the name or beside it, on B.
    let all_b: Vec<String> = list(&fx.b, "")
        .into_iter()
        .map(|n| read(&fx.b, &n))
        .collect();
    assert!(
        all_b.contains(&"edited on b\n".to_string()),
        "b's concurrent edit was clobbered: {all_b:?}"
    );
    assert!(
        all_b.contains(&"edited on a\n".to_string()) || read(&fx.a, "doc.txt") == "edited on a\n",
        "a's edit was lost"
    );
}

/// Invariant 4, second half: a change made after a sync is picked up by the next run.
#[test]
fn inv4_change_after_a_sync_is_picked_up_next_run() {
    let fx = Fx::new();
    fx.write(&fx.a, "f.txt", "one\n");
    fx.sync(&[]).ok();
    assert_eq!(read(&fx.b, "f.txt"), "one\n");

    // Same size as before: only the mtime (and content) tell.
    fx.write(&fx.a, "f.txt", "two\n");
    fx.sync(&[]).ok();
    assert_eq!(read(&fx.b, "f.txt"), "two\n");

    fx.write(&fx.b, "f.txt", "six\n");
    fx.sync(&[]).ok();
    assert_eq!(read(&fx.a, "f.txt"), "six\n");
}

/// Invariant 4 edge: a same-size edit that keeps the old mtime (e.g. restored by a tool) is
/// still found with `--checksum`.
#[test]
fn checksum_finds_a_same_size_same_mtime_edit() {
    let fx = Fx::new();
    let p = write_at(&fx.a, "f.txt", "aaaa\n", 1_600_000_000);
    fx.sync(&[]).ok();
    std::fs::write(&p, "bbbb\n").unwrap();
    set_mtime(&p, 1_600_000_000, 0);
    fx.sync(&["--checksum"]).ok();
    assert_eq!(read(&fx.b, "f.txt"), "bbbb\n");
}

/// Invariant 8: a second run with nothing changed does nothing and says so: the trees are
/// identical to the last mtime, the `--json` report has no items, exit 0.
#[test]
fn inv8_second_run_with_nothing_changed_does_nothing() {
    let fx = Fx::new();
    fx.write(&fx.a, "a1.txt", "1\n");
    fx.write(&fx.a, "dir/a2.txt", "2\n");
    fx.write(&fx.b, "dir/b1.txt", "3\n");
    fx.write(&fx.b, "deep/er/b2.sh", "#!/bin/sh\n");
    set_mode(&fx.b.join("deep/er/b2.sh"), 0o755);
    std::fs::create_dir_all(fx.a.join("empty")).unwrap();
    std::os::unix::fs::symlink("a1.txt", fx.a.join("link")).unwrap();
    fx.sync(&[]).ok();

    let before_a = tree_snapshot(&fx.a);
    let before_b = tree_snapshot(&fx.b);
    let out = fx.sync(&[]);
    out.ok();
    assert!(out.stdout.contains("nothing to do"), "{out:?}");
    assert_eq!(tree_snapshot(&fx.a), before_a, "second run changed a");
    assert_eq!(tree_snapshot(&fx.b), before_b, "second run changed b");

    let rep = fx.sync_json(0, &[]);
    assert!(items(&rep).is_empty(), "items in a no-op run: {rep:#}");
    let c = counts(&rep);
    for k in [
        "to_a",
        "to_b",
        "deleted_a",
        "deleted_b",
        "moved",
        "conflicts",
    ] {
        assert_eq!(c[k], 0, "{k} in a no-op run: {rep:#}");
    }
    assert_eq!(rep["pairs"][0]["status"], "ok");
    assert_eq!(tree_snapshot(&fx.a), before_a);
    assert_eq!(tree_snapshot(&fx.b), before_b);
}

/// Invariant 1 for whole trees and type changes: every file of a deleted folder, and a file
/// replaced by a folder, are kept as versions on the replica that lost them.
#[test]
fn inv1_deleted_tree_and_type_change_keep_versions() {
    let fx = Fx::new();
    fx.write(&fx.a, "tree/s/1.txt", "one\n");
    fx.write(&fx.a, "tree/s/2.txt", "two\n");
    fx.write(&fx.a, "tree/3.txt", "three\n");
    fx.write(&fx.a, "x", "x was a file\n");
    for i in 0..8 {
        fx.write(&fx.a, &format!("pad{i}.txt"), format!("{i}\n"));
    }
    fx.sync(&[]).ok();

    std::fs::remove_dir_all(fx.a.join("tree")).unwrap();
    std::fs::remove_file(fx.a.join("x")).unwrap();
    fx.write(&fx.a, "x/inner.txt", "x is a folder now\n");
    let rep = fx.sync_json(0, &[]);
    let run = rep["run"].as_str().unwrap();
    assert!(!exists(&fx.b, "tree"));
    assert_eq!(read(&fx.b, "x/inner.txt"), "x is a folder now\n");
    assert_eq!(version_content(&fx.b, run, "tree/s/1.txt"), "one\n");
    assert_eq!(version_content(&fx.b, run, "tree/s/2.txt"), "two\n");
    assert_eq!(version_content(&fx.b, run, "tree/3.txt"), "three\n");
    assert_eq!(version_content(&fx.b, run, "x"), "x was a file\n");
    assert!(versions(&fx.a).is_empty());
    assert_eq!(contents(&fx.a), contents(&fx.b));
}
