//! Renames applied as renames, and one-way `direction` rules.

mod common;

use common::*;

#[test]
fn rename_is_applied_as_a_move_without_transfer() {
    let fx = Fx::new();
    let payload = noise(200_000, 3);
    fx.write(&fx.a, "photos/img.raw", &payload);
    for i in 0..3 {
        fx.write(&fx.a, &format!("other{i}.txt"), format!("{i}"));
    }
    fx.sync(&[]).ok();
    let ino_before = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(fx.b.join("photos/img.raw"))
            .unwrap()
            .ino()
    };

    std::fs::create_dir(fx.a.join("archive")).unwrap();
    std::fs::rename(
        fx.a.join("photos/img.raw"),
        fx.a.join("archive/img-2019.raw"),
    )
    .unwrap();

    let plan = fx.plan(&["--json"]);
    plan.ok();
    let planned = plan.json();
    let moves: Vec<_> = items(&planned)
        .into_iter()
        .filter(|i| i["action"] == "move")
        .collect();
    assert_eq!(moves.len(), 1, "plan does not show one move: {planned:#}");
    assert!(
        moves[0]["path"] == "archive/img-2019.raw" || moves[0]["path"] == "photos/img.raw",
        "{planned:#}"
    );
    let human = fx.plan(&[]);
    assert!(human.stdout.contains("move"), "{human:?}");
    assert!(exists(&fx.b, "photos/img.raw"), "plan moved the file");

    let rep = fx.sync_json(0, &[]);
    assert_eq!(read_bytes(&fx.b, "archive/img-2019.raw"), payload);
    assert!(!exists(&fx.b, "photos/img.raw"));
    let c = counts(&rep);
    assert_eq!(c["moved"], 1, "{rep:#}");
    assert_eq!(c["bytes_to_b"], 0, "a move transferred bytes: {rep:#}");
    assert_eq!(c["deleted_b"], 0, "a move counted as deletion: {rep:#}");
    for it in items(&rep) {
        assert_eq!(it["bytes"], 0, "item transferred bytes: {it}");
    }
    // A rename on the same filesystem keeps the inode.
    {
        use std::os::unix::fs::MetadataExt;
        let ino_after = std::fs::metadata(fx.b.join("archive/img-2019.raw"))
            .unwrap()
            .ino();
        assert_eq!(ino_before, ino_after, "b's file was copied, not renamed");
    }
    let out = fx.sync(&[]);
    out.ok();
    assert!(out.stdout.contains("nothing to do"), "{out:?}");
}

#[test]
fn rename_from_b_side_too() {
    let fx = Fx::new();
    fx.write(&fx.a, "x.txt", "some unique text for x\n");
    fx.sync(&[]).ok();
    std::fs::rename(fx.b.join("x.txt"), fx.b.join("y.txt")).unwrap();
    let rep = fx.sync_json(0, &[]);
    assert_eq!(read(&fx.a, "y.txt"), "some unique text for x\n");
    assert!(!exists(&fx.a, "x.txt"));
    assert_eq!(counts(&rep)["moved"], 1, "{rep:#}");
    assert_eq!(counts(&rep)["bytes_to_a"], 0, "{rep:#}");
}

#[test]
fn one_way_rule_reverts_a_change_on_the_receiving_side_keeping_its_version() {
    let fx = Fx::new();
    fx.profile_ab(
        "p",
        "",
        "[[rule]]\npaths = [\"logs/**\"]\ndirection = \"a -> b\"\n",
    );
    fx.write(&fx.a, "logs/run.log", "line 1 from a\n");
    fx.write(&fx.a, "free.txt", "free\n");
    fx.run(&["sync", "p"]).ok();
    assert_eq!(read(&fx.b, "logs/run.log"), "line 1 from a\n");

    // b edits a one-way path: not sent; a's version overwrites it, b's is kept.
    fx.write(&fx.b, "logs/run.log", "tampered on b\n");
    let out = fx.run(&["sync", "p", "--json"]);
    out.ok();
    let rep = out.json();
    let run = rep["run"].as_str().unwrap();
    assert_eq!(
        read(&fx.a, "logs/run.log"),
        "line 1 from a\n",
        "b's change was sent"
    );
    assert_eq!(
        read(&fx.b, "logs/run.log"),
        "line 1 from a\n",
        "b's change not reverted"
    );
    assert_eq!(
        version_content(&fx.b, run, "logs/run.log"),
        "tampered on b\n"
    );
    assert!(versions(&fx.a).is_empty());

    // A new file created on b under the one-way path never reaches a.
    fx.write(&fx.b, "logs/new-on-b.log", "b only\n");
    let _ = fx.run(&["sync", "p"]);
    assert!(!exists(&fx.a, "logs/new-on-b.log"), "b's new file was sent");

    // a's changes still flow, and other paths stay two-way.
    fx.write(&fx.a, "logs/run.log", "line 1 from a\nline 2 from a\n");
    fx.write(&fx.b, "free.txt", "free, edited on b\n");
    let _ = fx.run(&["sync", "p"]);
    assert_eq!(
        read(&fx.b, "logs/run.log"),
        "line 1 from a\nline 2 from a\n"
    );
    assert_eq!(read(&fx.a, "free.txt"), "free, edited on b\n");
}
