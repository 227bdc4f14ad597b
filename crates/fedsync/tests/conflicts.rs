//! Conflict policies (SPEC section 4): keep-both, ask, prefer:REPLICA, modify-vs-delete,
//! identical changes, file-vs-directory.

mod common;

use common::*;

fn base(fx: &Fx, rel: &str, content: &str) {
    fx.write(&fx.a, rel, content);
    fx.sync(&[]).ok();
    assert_eq!(read(&fx.b, rel), content);
}

#[test]
fn keep_both_writes_the_loser_beside_the_winner_on_both_sides() {
    let fx = Fx::new();
    base(&fx, "notes/todo.txt", "base\n");
    fx.write(&fx.a, "notes/todo.txt", "a's version\n");
    fx.write(&fx.b, "notes/todo.txt", "b's version (newer)\n");
    let out = fx.sync(&[]);
    assert!(out.code == 0 || out.code == 1, "{out:?}");

    for root in [&fx.a, &fx.b] {
        let names = list(root, "notes");
        assert_eq!(names.len(), 2, "{}: {names:?}", root.display());
        assert_eq!(read(root, "notes/todo.txt"), "b's version (newer)\n");
        let loser = names
            .iter()
            .find(|n| *n != "todo.txt")
            .expect("a conflict copy");
        assert!(
            is_conflict_name(loser, "todo", "a", "txt"),
            "conflict copy name {loser:?} is not todo.conflict-a-YYYYMMDD-HHMMSS.txt"
        );
        assert_eq!(read(root, &format!("notes/{loser}")), "a's version\n");
    }
    assert_eq!(list(&fx.a, "notes"), list(&fx.b, "notes"));

    let out = fx.sync(&[]);
    out.ok();
    assert!(out.stdout.contains("nothing to do"), "{out:?}");
}

#[test]
fn keep_both_loser_from_b_and_a_name_without_extension() {
    let fx = Fx::new();
    base(&fx, "Makefile", "all:\n");
    fx.write(&fx.b, "Makefile", "all: b\n");
    fx.write(&fx.a, "Makefile", "all: a (newer)\n");
    let out = fx.sync(&[]);
    assert!(out.code == 0 || out.code == 1, "{out:?}");
    for root in [&fx.a, &fx.b] {
        assert_eq!(read(root, "Makefile"), "all: a (newer)\n");
        let names = list(root, "");
        let loser = names
            .iter()
            .find(|n| *n != "Makefile")
            .unwrap_or_else(|| panic!("no conflict copy in {names:?}"));
        assert!(
            is_conflict_name(loser, "Makefile", "b", ""),
            "{loser:?} is not Makefile.conflict-b-YYYYMMDD-HHMMSS"
        );
        assert_eq!(read(root, loser), "all: b\n");
    }
    fx.sync(&[]).ok();
}

#[test]
fn ask_leaves_both_untouched_exits_1_and_status_lists_the_conflict() {
    let fx = Fx::new();
    fx.run(&["init", "p", fx.a_str(), fx.b_str()]).ok();
    fx.write(&fx.a, "tasks.json", "[]\n");
    fx.write(&fx.a, "other.txt", "o\n");
    fx.run(&["sync", "p"]).ok();

    fx.write(&fx.a, "tasks.json", "[\"a\"]\n");
    fx.write(&fx.b, "tasks.json", "[\"b\"]\n");
    fx.write(&fx.a, "other.txt", "o2\n");
    let (sa_file, sb_file) = (
        tree_snapshot(&fx.a)["tasks.json"].clone(),
        tree_snapshot(&fx.b)["tasks.json"].clone(),
    );
    let out = fx.run(&["sync", "p", "--conflict", "ask"]);
    out.code(1);
    assert_eq!(tree_snapshot(&fx.a)["tasks.json"], sa_file);
    assert_eq!(tree_snapshot(&fx.b)["tasks.json"], sb_file);
    assert_eq!(list(&fx.a, ""), vec!["other.txt", "tasks.json"]);
    assert_eq!(list(&fx.b, ""), vec!["other.txt", "tasks.json"]);
    for root in [&fx.a, &fx.b] {
        assert!(
            !versions(root).iter().any(|(_, p)| p == "tasks.json"),
            "ask kept a version (so it touched the file): {:?}",
            versions(root)
        );
    }
    // The rest of the run still happened.
    assert_eq!(read(&fx.b, "other.txt"), "o2\n");

    let st = fx.run(&["status", "p", "--json"]);
    let v = st.json();
    let conflicts = v["conflicts"].as_array().expect("conflicts list");
    assert_eq!(conflicts.len(), 1, "{v:#}");
    assert_eq!(conflicts[0]["path"], "tasks.json");
    assert_eq!(v["health"], "conflicts", "{v:#}");
    assert_eq!(st.code, 1, "{st:?}");

    // The human form names it as well.
    let st = fx.run(&["status", "p"]);
    assert!(st.stdout.contains("tasks.json"), "{st:?}");
}

#[test]
fn ask_from_a_profile_rule() {
    let fx = Fx::new();
    fx.profile_ab(
        "p",
        "",
        "[[rule]]\npaths = [\"tasks.json\"]\nconflict = \"ask\"\n",
    );
    fx.write(&fx.a, "tasks.json", "[]\n");
    fx.write(&fx.a, "notes.txt", "n\n");
    fx.run(&["sync", "p"]).ok();
    fx.write(&fx.a, "tasks.json", "[1]\n");
    fx.write(&fx.b, "tasks.json", "[2]\n");
    fx.write(&fx.a, "notes.txt", "n1\n");
    fx.write(&fx.b, "notes.txt", "n2\n");
    let out = fx.run(&["sync", "p"]);
    out.code(1);
    assert_eq!(read(&fx.a, "tasks.json"), "[1]\n");
    assert_eq!(read(&fx.b, "tasks.json"), "[2]\n");
    // notes.txt is not under the rule: default keep-both settled it.
    assert_eq!(read(&fx.a, "notes.txt"), "n2\n");
    assert_eq!(read(&fx.b, "notes.txt"), "n2\n");
    assert_eq!(list(&fx.a, "").len(), 3, "{:?}", list(&fx.a, ""));
}

#[test]
fn prefer_replica_rule_in_profile() {
    let fx = Fx::new();
    fx.profile_ab(
        "p",
        "",
        "[[rule]]\npaths = [\"reports/**\"]\nconflict = \"prefer:b\"\n",
    );
    fx.write(&fx.a, "reports/q1.txt", "base\n");
    fx.run(&["sync", "p"]).ok();

    // B wins although A is newer.
    fx.write(&fx.b, "reports/q1.txt", "b's numbers\n");
    fx.write(&fx.a, "reports/q1.txt", "a's numbers (newer)\n");
    let out = fx.run(&["sync", "p", "--json"]);
    out.ok();
    let rep = out.json();
    let run = rep["run"].as_str().unwrap();
    assert_eq!(read(&fx.a, "reports/q1.txt"), "b's numbers\n");
    assert_eq!(read(&fx.b, "reports/q1.txt"), "b's numbers\n");
    assert_eq!(
        version_content(&fx.a, run, "reports/q1.txt"),
        "a's numbers (newer)\n"
    );
    assert_eq!(list(&fx.a, "reports"), vec!["q1.txt"]);
    let it = item(&rep, "reports/q1.txt");
    assert!(
        it["rule"].as_str().is_some_and(|r| r.contains("rule")),
        "the deciding rule is not named: {it}"
    );

    // --conflict on the command line overrides the rule for one run.
    fx.write(&fx.b, "reports/q1.txt", "b2 (older)\n");
    fx.write(&fx.a, "reports/q1.txt", "a2 (newer)\n");
    fx.run(&["sync", "p", "--conflict", "newest"]).ok();
    assert_eq!(read(&fx.b, "reports/q1.txt"), "a2 (newer)\n");
}

#[test]
fn modify_vs_delete_the_modification_wins() {
    let fx = Fx::new();
    fx.write(&fx.a, "m.txt", "base m\n");
    fx.write(&fx.a, "n.txt", "base n\n");
    for i in 0..4 {
        fx.write(&fx.a, &format!("pad{i}"), "p");
    }
    fx.sync(&[]).ok();

    // a deletes m, b modifies it; b deletes n, a modifies it.
    std::fs::remove_file(fx.a.join("m.txt")).unwrap();
    fx.write(&fx.b, "m.txt", "b modified m\n");
    std::fs::remove_file(fx.b.join("n.txt")).unwrap();
    fx.write(&fx.a, "n.txt", "a modified n\n");
    fx.sync(&[]).ok();
    assert_eq!(read(&fx.a, "m.txt"), "b modified m\n");
    assert_eq!(read(&fx.b, "m.txt"), "b modified m\n");
    assert_eq!(read(&fx.a, "n.txt"), "a modified n\n");
    assert_eq!(read(&fx.b, "n.txt"), "a modified n\n");
    fx.sync(&[]).ok();
}

#[test]
fn both_changed_identically_is_not_a_conflict() {
    let fx = Fx::new();
    base(&fx, "same.txt", "base\n");
    fx.write(&fx.a, "same.txt", "same edit\n");
    fx.write(&fx.b, "same.txt", "same edit\n");
    let rep = fx.sync_json(0, &[]);
    assert_eq!(counts(&rep)["conflicts"], 0, "{rep:#}");
    assert_eq!(list(&fx.a, ""), vec!["same.txt"]);
    assert_eq!(list(&fx.b, ""), vec!["same.txt"]);
    assert!(versions(&fx.a).is_empty() && versions(&fx.b).is_empty());
}

#[test]
fn file_vs_directory_is_a_conflict_and_nothing_is_deleted() {
    let fx = Fx::new();
    fx.write(&fx.a, "thing", "i am a file\n");
    fx.write(&fx.b, "thing/inside.txt", "i am in a dir\n");
    let _ = fx.sync(&[]);
    assert_eq!(read(&fx.a, "thing"), "i am a file\n");
    assert_eq!(read(&fx.b, "thing/inside.txt"), "i am in a dir\n");
}

/// keep-both must not give up when `NAME.conflict-<replica>-<stamp>.EXT` is already taken
/// (a user file, or an earlier conflict copy made in the same second): it picks another
/// free name. Decoys cover every stamp this run can have, so the test is deterministic.
#[test]
fn keep_both_when_the_conflict_name_is_taken() {
    let fx = Fx::new();
    fx.write(&fx.a, "f.txt", "base\n");
    let now = now_secs();
    let mut decoys = Vec::new();
    for s in now - 2..now + 30 {
        let name = format!("f.conflict-a-{}.txt", utc_stamp(s));
        fx.write(&fx.a, &name, format!("decoy {s}\n"));
        decoys.push(name);
    }
    fx.sync(&[]).ok();
    let decoy_snapshot: Vec<_> = decoys.iter().map(|d| read(&fx.b, d)).collect();

    fx.write(&fx.a, "f.txt", "a's edit\n");
    fx.write(&fx.b, "f.txt", "b's edit (newer)\n");
    let out = fx.sync(&[]);
    out.ok();
    for root in [&fx.a, &fx.b] {
        assert_eq!(read(root, "f.txt"), "b's edit (newer)\n");
        let got: Vec<_> = decoys.iter().map(|d| read(root, d)).collect();
        assert_eq!(got, decoy_snapshot, "a decoy was overwritten");
        let copies: Vec<String> = list(root, "")
            .into_iter()
            .filter(|n| n.starts_with("f.conflict-a-") && !decoys.contains(n))
            .collect();
        assert_eq!(copies.len(), 1, "{}: {copies:?}", root.display());
        assert_eq!(read(root, &copies[0]), "a's edit\n");
    }
}

/// Two keep-both conflicts on the same file in quick succession both keep their loser.
#[test]
fn keep_both_twice_in_a_row_loses_nothing() {
    let fx = Fx::new();
    fx.write(&fx.a, "f.txt", "base\n");
    fx.sync(&[]).ok();
    fx.write(&fx.a, "f.txt", "a1\n");
    fx.write(&fx.b, "f.txt", "b1 newer\n");
    fx.sync(&[]).ok();
    fx.write(&fx.a, "f.txt", "a2\n");
    fx.write(&fx.b, "f.txt", "b2 newer\n");
    // Whatever happens, nothing is lost and nothing is clobbered.
    let out = fx.sync(&[]);
    assert!(out.code == 0 || out.code == 1, "{out:?}");
    let mut all: Vec<String> = list(&fx.a, "").iter().map(|n| read(&fx.a, n)).collect();
    all.extend(list(&fx.b, "").iter().map(|n| read(&fx.b, n)));
    for want in ["a1\n", "a2\n", "b2 newer\n"] {
        assert!(all.contains(&want.to_string()), "{want:?} lost: {all:?}");
    }
}

/// The summary of a keep-both counts each copy on the side it went to: the winner's bytes
/// to the loser's side, the loser's (kept aside) to the winner's side.
#[test]
fn keep_both_byte_counts_go_to_the_side_each_copy_went_to() {
    let fx = Fx::new();
    base(&fx, "todo.txt", "base\n");
    write_at(&fx.a, "todo.txt", "a (8 B)\n", 1_700_000_100);
    write_at(&fx.b, "todo.txt", "b is newer (18 B)\n", 1_700_000_200);
    let rep = fx.sync_json(0, &[]);
    let c = &rep["pairs"][0]["counts"];
    assert_eq!(c["bytes_to_a"], 18, "b's content replaces a's: {rep}");
    assert_eq!(c["bytes_to_b"], 8, "a's content kept aside on b: {rep}");
}
