//! Read-only commands: `init`, `plan`, `status`, `why`.

mod common;

use common::*;

#[test]
fn init_writes_profile_and_markers() {
    let fx = Fx::new();
    let out = fx.run(&["init", "notes", fx.a_str(), fx.b_str()]);
    out.ok();
    let prof = fx.home.join("profiles/notes.toml");
    assert!(out.stdout.contains(&prof.display().to_string()), "{out:?}");
    let text = std::fs::read_to_string(&prof).unwrap();
    assert!(
        text.contains(fx.a_str()) && text.contains(fx.b_str()),
        "{text}"
    );
    let ida = std::fs::read_to_string(fx.a.join(".fedsync/id")).unwrap();
    let idb = std::fs::read_to_string(fx.b.join(".fedsync/id")).unwrap();
    assert!(!ida.trim().is_empty() && !idb.trim().is_empty());
    assert_ne!(ida, idb);
    // A second init with the same name is refused and leaves the file alone.
    fx.run(&["init", "notes", fx.a_str(), fx.b_str()]).code(2);
    assert_eq!(std::fs::read_to_string(&prof).unwrap(), text);
}

#[test]
fn plan_changes_nothing_on_disk() {
    let fx = Fx::new();
    fx.write(&fx.a, "x.txt", "x\n");
    fx.write(&fx.a, "d/y.txt", "y\n");
    fx.write(&fx.b, "z.txt", "z\n");
    // Never synced: plan must not even write markers.
    let (sa, sb) = (tree_snapshot_all(&fx.a), tree_snapshot_all(&fx.b));
    let out = fx.plan(&[]);
    out.ok();
    assert!(
        out.stdout.contains("x.txt") && out.stdout.contains("z.txt"),
        "{out:?}"
    );
    assert_eq!(tree_snapshot_all(&fx.a), sa, "plan changed a");
    assert_eq!(tree_snapshot_all(&fx.b), sb, "plan changed b");

    fx.sync(&[]).ok();
    fx.write(&fx.a, "x.txt", "x2\n");
    std::fs::remove_file(fx.b.join("z.txt")).unwrap();
    fx.write(&fx.b, "new.txt", "n\n");
    let (sa, sb) = (tree_snapshot_all(&fx.a), tree_snapshot_all(&fx.b));
    let audit_before = std::fs::read_dir(fx.home.join("state"))
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let n = e.file_name().to_string_lossy().into_owned();
            n.ends_with(".audit.jsonl")
                .then(|| std::fs::read(e.path()).unwrap())
        })
        .collect::<Vec<_>>();
    let out = fx.plan(&["--json"]);
    out.ok();
    let rep = out.json();
    assert_eq!(rep["dry_run"], true);
    assert_eq!(item(&rep, "x.txt")["action"], "copy");
    assert_eq!(item(&rep, "z.txt")["action"], "delete");
    assert_eq!(item(&rep, "new.txt")["action"], "copy");
    for it in items(&rep) {
        assert_eq!(it["outcome"]["state"], "planned", "{it}");
        assert!(it["rule"].as_str().is_some_and(|r| !r.is_empty()), "{it}");
    }
    assert_eq!(tree_snapshot_all(&fx.a), sa, "plan changed a");
    assert_eq!(tree_snapshot_all(&fx.b), sb, "plan changed b");
    let audit_after = std::fs::read_dir(fx.home.join("state"))
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let n = e.file_name().to_string_lossy().into_owned();
            n.ends_with(".audit.jsonl")
                .then(|| std::fs::read(e.path()).unwrap())
        })
        .collect::<Vec<_>>();
    assert_eq!(audit_before, audit_after, "plan wrote to the audit trail");

    // `sync --dry-run` is the same.
    fx.sync(&["--dry-run"]).ok();
    assert_eq!(tree_snapshot_all(&fx.a), sa);
    assert_eq!(tree_snapshot_all(&fx.b), sb);
}

#[test]
fn why_names_base_both_sides_and_the_decision() {
    let fx = Fx::new();
    fx.run(&["init", "p", fx.a_str(), fx.b_str()]).ok();
    fx.write(&fx.a, "doc.txt", "first\n");
    fx.run(&["sync", "p"]).ok();
    fx.write(&fx.b, "doc.txt", "second version\n");

    let out = fx.run(&["why", "p", "doc.txt"]);
    out.ok();
    let s = &out.stdout;
    assert!(s.contains("base"), "{out:?}");
    assert!(s.contains("modified"), "b's change not named: {out:?}");
    assert!(s.contains("unchanged"), "a's state not named: {out:?}");
    assert!(s.contains("decision") && s.contains("copy"), "{out:?}");

    let v = fx.run(&["why", "p", "doc.txt", "--json"]).json();
    let w = &v[0];
    assert_eq!(w["a"], "a");
    assert_eq!(w["b"], "b");
    assert_eq!(w["base"]["size"], 6);
    assert_eq!(w["side_a"]["size"], 6);
    assert_eq!(w["side_b"]["size"], 15);
    assert_eq!(w["change_a"], "unchanged");
    assert_eq!(w["change_b"], "modified");
    assert_eq!(w["decision"]["action"], "copy");
    assert_eq!(w["base"]["hash"], w["side_a"]["hash"]);
    assert_ne!(w["base"]["hash"], w["side_b"]["hash"]);

    // `why` is read-only.
    assert_eq!(read(&fx.a, "doc.txt"), "first\n");

    // A path that exists nowhere.
    let v = fx.run(&["why", "p", "nothing/here.txt", "--json"]).json();
    assert!(v[0]["base"].is_null() && v[0]["side_a"].is_null() && v[0]["side_b"].is_null());
}

#[test]
fn status_reports_replicas_last_run_and_pending() {
    let fx = Fx::new();
    fx.run(&["init", "p", fx.a_str(), fx.b_str()]).ok();
    fx.write(&fx.a, "x.txt", "x\n");
    let r = fx.run(&["sync", "p", "--json"]);
    r.ok();
    let run = r.json()["run"].as_str().unwrap().to_string();

    let v = fx.run(&["status", "p", "--json"]).json();
    assert_eq!(v["health"], "ok", "{v:#}");
    assert_eq!(v["last_runs"][0]["id"], run.as_str());
    assert_eq!(v["last_runs"][0]["status"], "ok");
    assert!(v["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["state"] == "ok"));

    fx.write(&fx.a, "y.txt", "y\n");
    let st = fx.run(&["status", "p", "--json"]);
    st.ok();
    let v = st.json();
    assert_eq!(v["health"], "pending", "{v:#}");
    assert_eq!(v["pending"][0]["counts"]["to_b"], 1, "{v:#}");
    assert!(!exists(&fx.b, "y.txt"), "status synced");

    // A replica gone: degraded, exit 3.
    std::fs::rename(&fx.b, fx.dir.join("b-away")).unwrap();
    let st = fx.run(&["status", "p", "--json"]);
    st.code(3);
    let v = st.json();
    assert_eq!(v["replicas"][1]["state"], "unavailable", "{v:#}");
}

/// `why --json` names the source of a copy like everything else does: by replica name.
#[test]
fn why_json_decision_names_the_source_replica() {
    let fx = Fx::new();
    fx.profile_ab("p", "", "");
    fx.write(&fx.a, "doc.txt", "first\n");
    fx.run(&["sync", "p"]).ok();
    fx.write(&fx.b, "doc.txt", "second\n");
    let v = fx.run(&["why", "p", "doc.txt", "--json"]).json();
    assert_eq!(v[0]["decision"]["from"], "b", "{v:#}");
}

/// `fedsync log --json | head -1`: a closed stdout ends the command quietly, no panic.
#[test]
fn closed_stdout_does_not_panic() {
    let fx = Fx::new();
    fx.write(&fx.a, "x.txt", "x\n");
    fx.run(&["init", "p", fx.a_str(), fx.b_str()]).ok();
    fx.run(&["sync", "p"]).ok();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = fx
        .command(&["log", "p", "--json"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "{stderr}");
}

/// Run ids are "sortable" (SPEC 1) and `status` shows the latest run as the last one, even
/// when several runs start within the same second.
#[test]
fn run_ids_sort_in_run_order_and_status_shows_the_latest() {
    let fx = Fx::new();
    fx.run(&["init", "p", fx.a_str(), fx.b_str()]).ok();
    fx.write(&fx.a, "x.txt", "x\n");
    let mut ids = Vec::new();
    for _ in 0..12 {
        let out = fx.run(&["sync", "p", "--json"]);
        out.ok();
        ids.push(out.json()["run"].as_str().unwrap().to_string());
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(
        ids, sorted,
        "run ids do not sort in the order the runs happened"
    );
    let v = fx.run(&["status", "p", "--json"]).json();
    assert_eq!(
        v["last_runs"][0]["id"].as_str().unwrap(),
        ids.last().unwrap(),
        "{v:#}"
    );
}
