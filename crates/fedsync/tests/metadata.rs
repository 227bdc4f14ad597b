//! Invariant 7 (modes, mtimes, symlinks, empty directories) and invariant 10 (no writes
//! through symlinked directories).

mod common;

use common::*;
use std::os::unix::fs::symlink;

#[test]
fn inv7_executable_bit_is_kept_both_ways() {
    let fx = Fx::new();
    let p = fx.write(&fx.a, "bin/run.sh", "#!/bin/sh\necho a\n");
    set_mode(&p, 0o755);
    let q = fx.write(&fx.b, "tools/go.sh", "#!/bin/sh\necho b\n");
    set_mode(&q, 0o750);
    fx.write(&fx.a, "plain.txt", "plain\n");
    set_mode(&fx.a.join("plain.txt"), 0o644);
    fx.sync(&[]).ok();
    assert_eq!(mode_of(&fx.b.join("bin/run.sh")), 0o755);
    assert_eq!(mode_of(&fx.a.join("tools/go.sh")), 0o750);
    assert_eq!(mode_of(&fx.b.join("plain.txt")), 0o644);
}

#[test]
fn inv7_mode_only_change_propagates() {
    let fx = Fx::new();
    fx.write(&fx.a, "script.py", "print(1)\n");
    set_mode(&fx.a.join("script.py"), 0o644);
    fx.sync(&[]).ok();
    assert_eq!(mode_of(&fx.b.join("script.py")), 0o644);

    // chmod +x on B only; content and mtime unchanged.
    let mt = mtime_of(&fx.b.join("script.py"));
    set_mode(&fx.b.join("script.py"), 0o755);
    let rep = fx.sync_json(0, &[]);
    assert_eq!(mode_of(&fx.a.join("script.py")), 0o755, "{rep:#}");
    assert_eq!(read(&fx.a, "script.py"), "print(1)\n");
    assert_eq!(mtime_of(&fx.b.join("script.py")), mt);

    // And back, from A this time.
    set_mode(&fx.a.join("script.py"), 0o700);
    fx.sync(&[]).ok();
    assert_eq!(mode_of(&fx.b.join("script.py")), 0o700);
    // Then nothing to do.
    let out = fx.sync(&[]);
    out.ok();
    assert!(out.stdout.contains("nothing to do"), "{out:?}");
}

#[test]
fn inv7_mtime_is_kept() {
    let fx = Fx::new();
    let p = write_at(&fx.a, "old.txt", "from 2017\n", 0);
    set_mtime(&p, 1_500_000_000, 123_456_789);
    let q = write_at(&fx.b, "sub/other.txt", "from 2019\n", 0);
    set_mtime(&q, 1_560_000_000, 987_654_321);
    fx.sync(&[]).ok();
    let got = mtime_of(&fx.b.join("old.txt"));
    assert_eq!(got.0, 1_500_000_000, "seconds of the mtime not kept");
    assert_eq!(got, (1_500_000_000, 123_456_789), "nanoseconds not kept");
    assert_eq!(
        mtime_of(&fx.a.join("sub/other.txt")),
        (1_560_000_000, 987_654_321)
    );

    // An update keeps the new mtime too.
    let p = write_at(&fx.a, "old.txt", "from 2018\n", 0);
    set_mtime(&p, 1_530_000_000, 5);
    fx.sync(&[]).ok();
    assert_eq!(read(&fx.b, "old.txt"), "from 2018\n");
    assert_eq!(mtime_of(&fx.b.join("old.txt")), (1_530_000_000, 5));
}

#[test]
fn inv7_symlinks_are_synced_as_links_never_followed() {
    let fx = Fx::new();
    let outside = fx.dir.join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "outside the root\n").unwrap();

    fx.write(&fx.a, "target.txt", "t\n");
    symlink("target.txt", fx.a.join("rel-link")).unwrap();
    symlink(&outside, fx.a.join("out-dir-link")).unwrap();
    symlink(outside.join("secret.txt"), fx.a.join("out-file-link")).unwrap();
    symlink("does/not/exist", fx.a.join("dangling")).unwrap();
    symlink("../../etc/passwd", fx.b.join("climb")).unwrap();
    let before_outside = tree_snapshot_all(&outside);
    fx.sync(&[]).ok();

    for (name, target) in [
        ("rel-link", "target.txt".into()),
        ("out-dir-link", outside.clone()),
        ("out-file-link", outside.join("secret.txt")),
        ("dangling", "does/not/exist".into()),
    ] {
        assert!(is_symlink(&fx.b, name), "{name} is not a symlink on b");
        assert_eq!(
            std::fs::read_link(fx.b.join(name)).unwrap(),
            target,
            "{name} target"
        );
    }
    assert!(is_symlink(&fx.a, "climb"), "climb is not a symlink on a");
    assert_eq!(
        std::fs::read_link(fx.a.join("climb")).unwrap(),
        std::path::PathBuf::from("../../etc/passwd")
    );
    // Never followed: nothing of the outside folder was copied, nothing changed there.
    assert!(!exists(&fx.b, "out-dir-link/secret.txt") || is_symlink(&fx.b, "out-dir-link"));
    assert_eq!(tree_snapshot_all(&outside), before_outside);
    assert_eq!(contents(&fx.a), contents(&fx.b));

    // A retargeted link propagates as a link.
    std::fs::remove_file(fx.b.join("rel-link")).unwrap();
    symlink("elsewhere.txt", fx.b.join("rel-link")).unwrap();
    fx.sync(&[]).ok();
    assert_eq!(
        std::fs::read_link(fx.a.join("rel-link")).unwrap(),
        std::path::PathBuf::from("elsewhere.txt")
    );
    assert_eq!(tree_snapshot_all(&outside), before_outside);
}

#[test]
fn inv7_empty_directories_are_synced() {
    let fx = Fx::new();
    std::fs::create_dir_all(fx.a.join("empty/nested/deeper")).unwrap();
    std::fs::create_dir_all(fx.b.join("b-empty")).unwrap();
    fx.sync(&[]).ok();
    assert!(fx.b.join("empty/nested/deeper").is_dir());
    assert!(fx.a.join("b-empty").is_dir());
    assert!(list(&fx.b, "empty/nested/deeper").is_empty());

    // Removing an empty directory propagates too.
    std::fs::remove_dir(fx.a.join("b-empty")).unwrap();
    fx.sync(&[]).ok();
    assert!(!exists(&fx.b, "b-empty"));
}

/// Invariant 10: B has `sub` as a symlink to a folder outside its root while A has a real
/// `sub/` with files. Nothing may be written through the link.
#[test]
fn inv10_no_write_through_symlinked_directory_on_first_sync() {
    let fx = Fx::new();
    let outside = fx.dir.join("outside");
    std::fs::create_dir(&outside).unwrap();
    fx.write(&fx.a, "sub/one.txt", "one\n");
    fx.write(&fx.a, "sub/deep/two.txt", "two\n");
    symlink(&outside, fx.b.join("sub")).unwrap();

    let out = fx.sync(&[]);
    assert!(out.code == 0 || out.code == 1, "{out:?}");
    assert!(
        list(&outside, "").is_empty(),
        "written through b/sub into the outside folder: {:?}",
        tree_snapshot_all(&outside).keys().collect::<Vec<_>>()
    );
    // A's real files were not deleted either.
    assert_eq!(read(&fx.a, "sub/one.txt"), "one\n");
    assert_eq!(read(&fx.a, "sub/deep/two.txt"), "two\n");
}

/// Invariant 10, later: after a first sync B's `sub/` folder is replaced by a symlink to an
/// outside folder; new files in A's `sub/` must not land in that outside folder.
#[test]
fn inv10_no_write_through_directory_replaced_by_symlink() {
    let fx = Fx::new();
    let outside = fx.dir.join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("precious.txt"), "do not touch\n").unwrap();
    fx.write(&fx.a, "sub/one.txt", "one\n");
    fx.sync(&[]).ok();

    std::fs::remove_dir_all(fx.b.join("sub")).unwrap();
    symlink(&outside, fx.b.join("sub")).unwrap();
    fx.write(&fx.a, "sub/new.txt", "new\n");
    fx.write(&fx.a, "sub/one.txt", "one, edited\n");
    let before = tree_snapshot_all(&outside);

    let _ = fx.sync(&[]);
    assert_eq!(
        tree_snapshot_all(&outside),
        before,
        "the outside folder was written through b/sub"
    );
    assert_eq!(read(&fx.a, "sub/new.txt"), "new\n");
    assert_eq!(read(&fx.a, "sub/one.txt"), "one, edited\n");
}

/// B replaces `sub/` by a symlink while A edits and adds files under `sub/`: a conflict
/// (like modify-vs-delete and file-vs-directory), not a plan that both replaces A's folder
/// by the link and copies A's files into B's link, failing every run.
#[test]
fn directory_replaced_by_symlink_vs_edits_inside_is_a_conflict() {
    let fx = Fx::new();
    let outside = fx.dir.join("outside");
    std::fs::create_dir(&outside).unwrap();
    fx.write(&fx.a, "sub/one.txt", "one\n");
    fx.write(&fx.a, "keep.txt", "k\n");
    fx.sync(&[]).ok();
    std::fs::remove_dir_all(fx.b.join("sub")).unwrap();
    symlink(&outside, fx.b.join("sub")).unwrap();
    fx.write(&fx.a, "sub/one.txt", "one, edited\n");
    fx.write(&fx.a, "sub/new.txt", "new\n");

    let rep = fx.sync_json(1, &[]);
    let c = counts(&rep);
    assert_eq!(c["failed"], 0, "reported as failures: {rep:#}");
    assert!(c["conflicts"].as_u64().unwrap() >= 1, "{rep:#}");
    assert_eq!(item(&rep, "sub")["conflict"], true, "{rep:#}");
    assert_eq!(read(&fx.a, "sub/one.txt"), "one, edited\n");
    assert_eq!(read(&fx.a, "sub/new.txt"), "new\n");
    assert!(list(&outside, "").is_empty());
}

/// Every permission pattern arrives exactly, whether or not the umask would clear some of
/// its bits at creation (group/other write, no bits at all).
#[test]
fn modes_the_umask_would_clear_arrive_exactly() {
    let fx = Fx::new();
    let modes = [0o600, 0o664, 0o666, 0o777, 0o700, 0o444, 0o000, 0o620];
    for (i, m) in modes.iter().enumerate() {
        let p = fx.write(&fx.a, &format!("m{i}"), "x");
        set_mode(&p, *m);
    }
    fx.sync(&[]).ok();
    for (i, m) in modes.iter().enumerate() {
        assert_eq!(mode_of(&fx.b.join(format!("m{i}"))), *m, "mode {m:o}");
    }
}
