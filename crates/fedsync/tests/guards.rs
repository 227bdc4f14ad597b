//! Refusals that protect data: unavailable replicas (invariant 5), the delete guard
//! (invariant 6) and the per-profile lock (invariant 11).

mod common;

use common::*;
use std::fs::File;
use std::time::{Duration, Instant};

fn populate(fx: &Fx, n: usize) {
    for i in 0..n {
        fx.write(&fx.a, &format!("f{i:02}.txt"), format!("file {i}\n"));
    }
}

// ---------------------------------------------------------------- invariant 5

#[test]
fn inv5_root_missing_on_second_run_is_refused_and_nothing_deleted() {
    let fx = Fx::new();
    populate(&fx, 5);
    fx.sync(&[]).ok();
    let before_a = tree_snapshot(&fx.a);

    let moved = fx.dir.join("b-unmounted");
    std::fs::rename(&fx.b, &moved).unwrap();
    let out = fx.sync(&[]);
    out.code(3);
    assert!(
        out.all().contains(fx.b_str()) || out.all().contains("does not exist"),
        "message does not say which replica: {out:?}"
    );
    assert_eq!(tree_snapshot(&fx.a), before_a, "a was touched");
    assert!(versions(&fx.a).is_empty());
    // Not re-created behind the user's back either.
    assert!(!fx.b.exists(), "the missing root was created");

    // Once it is back, all is well and still nothing was deleted.
    std::fs::rename(&moved, &fx.b).unwrap();
    fx.sync(&[]).ok();
    assert_eq!(list(&fx.a, "").len(), 5);
    assert_eq!(contents(&fx.a), contents(&fx.b));
}

#[test]
fn inv5_root_swapped_for_an_empty_folder_is_refused() {
    let fx = Fx::new();
    populate(&fx, 5);
    fx.sync(&[]).ok();
    let before_a = tree_snapshot(&fx.a);

    std::fs::rename(&fx.b, fx.dir.join("b-old")).unwrap();
    std::fs::create_dir(&fx.b).unwrap();
    let out = fx.sync(&[]);
    out.code(3);
    assert!(out.all().contains("marker"), "message: {out:?}");
    assert_eq!(tree_snapshot(&fx.a), before_a, "a was touched");
    assert!(
        list(&fx.b, "").is_empty(),
        "files were copied into the impostor folder: {:?}",
        list(&fx.b, "")
    );
}

#[test]
fn inv5_marker_with_another_id_is_refused() {
    let fx = Fx::new();
    populate(&fx, 4);
    fx.write(&fx.b, "only-b.txt", "b\n");
    fx.sync(&[]).ok();
    let before_a = tree_snapshot(&fx.a);
    let before_b = tree_snapshot(&fx.b);

    std::fs::write(
        fx.b.join(".fedsync/id"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    std::fs::remove_file(fx.a.join("f00.txt")).unwrap();
    let before_a2 = tree_snapshot(&fx.a);
    let out = fx.sync(&[]);
    out.code(3);
    assert!(out.all().contains("marker"), "message: {out:?}");
    assert_eq!(tree_snapshot(&fx.b), before_b, "b was touched");
    assert_eq!(tree_snapshot(&fx.a), before_a2, "a was touched");
    assert_ne!(before_a, before_a2);
}

/// An optional ssh replica whose host cannot be reached is skipped with one warning, like an
/// unmounted drive; the other pair syncs and the run exits 0.
#[test]
fn inv5_optional_unreachable_ssh_replica_is_skipped() {
    let fx = Fx::new();
    fx.profile_ab(
        "three",
        "",
        // Port 1 on loopback: nothing listens there (or no ssh at all): unreachable.
        "[replicas.server]\nroot = \"ssh://nobody@127.0.0.1:1/srv/data\"\noptional = true\n",
    );
    fx.write(&fx.a, "hub.txt", "from hub\n");
    let out = fx.run(&["sync", "three"]);
    out.ok();
    assert_eq!(
        out.stderr.matches("warning").count(),
        1,
        "one warning about the skipped replica: {out:?}"
    );
    assert!(out.stderr.contains("server"), "{out:?}");
    assert_eq!(read(&fx.b, "hub.txt"), "from hub\n");
}

/// An optional replica that is absent is skipped with a warning; the other pair syncs.
#[test]
fn inv5_optional_replica_absent_is_skipped_and_the_other_pair_synced() {
    let fx = Fx::new();
    let usb = fx.dir.join("usb-not-mounted");
    fx.profile_ab(
        "three",
        "",
        &format!(
            "[replicas.usb]\nroot = {:?}\noptional = true\n",
            usb.to_str().unwrap()
        ),
    );
    // The [replicas.usb] table after [replicas] is valid TOML; make sure it parsed as 3.
    fx.write(&fx.a, "hub.txt", "from hub\n");
    fx.write(&fx.b, "spoke.txt", "from spoke\n");
    let out = fx.run(&["sync", "three"]);
    out.ok();
    assert!(
        out.stderr.contains("warning") && out.stderr.contains("usb"),
        "no warning about the skipped replica: {out:?}"
    );
    assert_eq!(read(&fx.b, "hub.txt"), "from hub\n");
    assert_eq!(read(&fx.a, "spoke.txt"), "from spoke\n");
    assert!(!usb.exists(), "the optional replica's root was created");

    // Same with the inline-table form from the SPEC.
    let fx2 = Fx::new();
    let usb2 = fx2.dir.join("usb");
    fx2.write_profile(
        "three",
        &format!(
            "[replicas]\nhub = {:?}\nlaptop = {:?}\nusb = {{ root = {:?}, optional = true }}\n",
            fx2.a_str(),
            fx2.b_str(),
            usb2.to_str().unwrap()
        ),
    );
    fx2.write(&fx2.b, "x.txt", "x\n");
    let out = fx2.run(&["sync", "three", "--json"]);
    out.ok();
    assert_eq!(read(&fx2.a, "x.txt"), "x\n");
    let rep = out.json();
    let pairs = rep["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 2, "{rep:#}");
    assert!(
        pairs.iter().any(|p| p["status"] == "skipped"),
        "no skipped pair: {rep:#}"
    );
}

// ---------------------------------------------------------------- invariant 6

#[test]
fn inv6_deleting_more_than_half_is_refused_then_force_passes() {
    let fx = Fx::new();
    populate(&fx, 10);
    fx.sync(&[]).ok();
    for i in 0..6 {
        std::fs::remove_file(fx.a.join(format!("f{i:02}.txt"))).unwrap();
    }
    let before_a = tree_snapshot(&fx.a);
    let before_b = tree_snapshot(&fx.b);
    let out = fx.sync(&[]);
    out.code(3);
    assert!(
        out.all().contains("--force") || out.all().contains("max_delete"),
        "message does not say what to do: {out:?}"
    );
    assert_eq!(tree_snapshot(&fx.b), before_b, "b changed although refused");
    assert_eq!(tree_snapshot(&fx.a), before_a, "a changed although refused");
    assert_eq!(list(&fx.b, "").len(), 10);

    let rep = fx.sync_json(0, &["--force"]);
    assert_eq!(counts(&rep)["deleted_b"], 6, "{rep:#}");
    assert_eq!(list(&fx.b, "").len(), 4);
    assert_eq!(contents(&fx.a), contents(&fx.b));
    // Deleted with --force still means kept as versions.
    assert_eq!(versions(&fx.b).len(), 6);
}

#[test]
fn inv6_exactly_half_is_allowed() {
    let fx = Fx::new();
    populate(&fx, 10);
    fx.sync(&[]).ok();
    for i in 0..5 {
        std::fs::remove_file(fx.a.join(format!("f{i:02}.txt"))).unwrap();
    }
    fx.sync(&[]).ok();
    assert_eq!(list(&fx.b, "").len(), 5);
}

#[test]
fn inv6_count_limit_from_profile() {
    let fx = Fx::new();
    fx.profile_ab("p", "max_delete = 2", "");
    populate(&fx, 10);
    fx.run(&["sync", "p"]).ok();
    assert_eq!(list(&fx.b, "").len(), 10);

    // 3 deletions (30%, under the default 50%) exceed the count limit of 2.
    for i in 0..3 {
        std::fs::remove_file(fx.a.join(format!("f{i:02}.txt"))).unwrap();
    }
    let out = fx.run(&["sync", "p"]);
    out.code(3);
    assert_eq!(list(&fx.b, "").len(), 10, "deleted although refused");

    // Put one back: 2 deletions pass.
    fx.write(&fx.a, "f00.txt", "file 0\n");
    fx.run(&["sync", "p"]).ok();
    assert_eq!(list(&fx.b, "").len(), 8);
    assert!(exists(&fx.b, "f00.txt") && !exists(&fx.b, "f01.txt"));
}

/// A directory rename of many files is moves, not deletions: no --force needed.
#[test]
fn inv6_directory_rename_is_not_counted_as_deletions() {
    let fx = Fx::new();
    for i in 0..20 {
        fx.write(&fx.a, &format!("old/n{i:02}.md"), format!("note {i}\n"));
    }
    fx.write(&fx.a, "top.txt", "top\n");
    fx.sync(&[]).ok();

    std::fs::rename(fx.a.join("old"), fx.a.join("new")).unwrap();
    let rep = fx.sync_json(0, &[]);
    assert!(!exists(&fx.b, "old"), "old dir still on b");
    assert_eq!(list(&fx.b, "new").len(), 20);
    assert_eq!(read(&fx.b, "new/n07.md"), "note 7\n");
    assert_eq!(contents(&fx.a), contents(&fx.b));
    let c = counts(&rep);
    assert_eq!(c["moved"], 20, "{rep:#}");
    assert_eq!(c["bytes_to_b"], 0, "moves transferred bytes: {rep:#}");
}

// ---------------------------------------------------------------- invariant 11

fn lock_profile(fx: &Fx, name: &str) -> File {
    std::fs::create_dir_all(fx.home.join("state")).unwrap();
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(fx.lock_path(name))
        .unwrap();
    f.lock().expect("lock");
    f
}

#[test]
fn inv11_second_run_fails_while_the_lock_is_held() {
    let fx = Fx::new();
    fx.run(&["init", "p", fx.a_str(), fx.b_str()]).ok();
    fx.write(&fx.a, "x.txt", "x\n");
    let lock = lock_profile(&fx, "p");
    let out = fx.run(&["sync", "p"]);
    out.code(3);
    assert!(out.all().contains("lock"), "message: {out:?}");
    assert!(out.all().contains("--wait"), "message has no hint: {out:?}");
    assert!(!exists(&fx.b, "x.txt"), "synced although locked");

    // `plan` only reads: it is not blocked.
    fx.run(&["plan", "p"]).ok();

    drop(lock);
    fx.run(&["sync", "p"]).ok();
    assert_eq!(read(&fx.b, "x.txt"), "x\n");
}

#[test]
fn inv11_wait_waits_for_the_lock() {
    let fx = Fx::new();
    fx.run(&["init", "p", fx.a_str(), fx.b_str()]).ok();
    fx.write(&fx.a, "x.txt", "x\n");
    let lock = lock_profile(&fx, "p");
    let mut child = fx
        .command(&["sync", "p", "--wait"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Still blocked a while later, and nothing done yet.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "--wait did not wait for the lock"
    );
    assert!(!exists(&fx.b, "x.txt"), "synced while the lock was held");

    drop(lock);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("--wait run did not finish after the lock was released");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    assert_eq!(read(&fx.b, "x.txt"), "x\n");
}
