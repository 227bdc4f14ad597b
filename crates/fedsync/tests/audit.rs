//! Invariant 12: the audit trail records every action, chained by hashes, and `log --verify`
//! detects an edited line and a truncated end.

mod common;

use common::*;
use serde_json::Value;

fn is_hex64(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 64 && s.bytes().all(|c| c.is_ascii_hexdigit()))
}

/// Three runs on profile `p`: create two files, modify one and delete the other.
fn three_runs(fx: &Fx) -> Vec<String> {
    fx.run(&["init", "p", fx.a_str(), fx.b_str()]).ok();
    fx.write(&fx.a, "one.txt", "one\n");
    fx.write(&fx.a, "two.txt", "two\n");
    fx.write(&fx.a, "three.txt", "three\n");
    let mut runs = Vec::new();
    let r = fx.run(&["sync", "p", "--json"]);
    r.ok();
    runs.push(r.json()["run"].as_str().unwrap().to_string());
    fx.write(&fx.b, "one.txt", "one, edited on b\n");
    std::fs::remove_file(fx.a.join("two.txt")).unwrap();
    let r = fx.run(&["sync", "p", "--json"]);
    r.ok();
    runs.push(r.json()["run"].as_str().unwrap().to_string());
    runs
}

#[test]
fn inv12_log_json_lists_every_action_with_prev_hashes() {
    let fx = Fx::new();
    let runs = three_runs(&fx);
    let out = fx.run(&["log", "p", "--json"]);
    out.ok();
    let recs = out.json();
    let recs = recs.as_array().expect("array of records");

    // Every record is chained.
    for (i, r) in recs.iter().enumerate() {
        assert!(is_hex64(&r["prev"]), "record {i} has no prev hash: {r}");
    }
    assert_eq!(
        recs[0]["prev"].as_str().unwrap(),
        "0".repeat(64),
        "first record does not start the chain"
    );
    let prevs: std::collections::HashSet<&str> =
        recs.iter().map(|r| r["prev"].as_str().unwrap()).collect();
    assert_eq!(prevs.len(), recs.len(), "prev hashes repeat: not a chain");

    let find = |run: &str, action: &str, path: &str, replica: &str| -> Option<&Value> {
        recs.iter().find(|r| {
            r["run"] == run && r["action"] == action && r["path"] == path && r["replica"] == replica
        })
    };
    // Run 1: three copies to b, each with the hash and size of what was written.
    for p in ["one.txt", "two.txt", "three.txt"] {
        let r =
            find(&runs[0], "copy", p, "b").unwrap_or_else(|| panic!("no copy of {p}: {recs:#?}"));
        assert!(is_hex64(&r["hash_after"]), "{r}");
        assert!(r["size"].as_u64().is_some(), "{r}");
    }
    assert_eq!(find(&runs[0], "copy", "one.txt", "b").unwrap()["size"], 4);
    // Run 2: the edit overwrote a's copy (old kept), the deletion removed b's (old kept).
    let w = find(&runs[1], "copy", "one.txt", "a").unwrap_or_else(|| panic!("{recs:#?}"));
    assert!(
        is_hex64(&w["hash_before"]) && is_hex64(&w["hash_after"]),
        "{w}"
    );
    assert_ne!(w["hash_before"], w["hash_after"]);
    assert!(
        w["version"].as_str().is_some_and(|v| v.contains(&runs[1])),
        "{w}"
    );
    let d = find(&runs[1], "delete", "two.txt", "b").unwrap_or_else(|| panic!("{recs:#?}"));
    assert!(is_hex64(&d["hash_before"]), "{d}");
    assert!(d["version"].as_str().is_some(), "{d}");
    // Runs are bracketed.
    for run in &runs {
        assert!(recs
            .iter()
            .any(|r| r["run"] == *run && r["action"] == "run-start"));
        assert!(recs
            .iter()
            .any(|r| r["run"] == *run && r["action"] == "run-end"));
    }

    // Filters: --run and --path.
    let only = fx.run(&["log", "p", "--json", "--run", &runs[1]]).json();
    let only = only.as_array().unwrap();
    assert!(!only.is_empty() && only.iter().all(|r| r["run"] == runs[1]));
    let by_path = fx.run(&["log", "p", "--json", "--path", "two.*"]).json();
    let by_path = by_path.as_array().unwrap();
    assert_eq!(by_path.len(), 2, "{by_path:#?}");
    assert!(by_path.iter().all(|r| r["path"] == "two.txt"));
}

#[test]
fn inv12_verify_intact_then_detects_an_edited_line() {
    let fx = Fx::new();
    three_runs(&fx);
    let out = fx.run(&["log", "p", "--verify"]);
    out.ok();
    assert!(out.stdout.contains("intact"), "{out:?}");

    // Tamper with one line in the middle: change the size recorded for a copy.
    let path = fx.audit_path("p");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let idx = lines
        .iter()
        .position(|l| l.contains("\"two.txt\"") && l.contains("\"copy\""))
        .expect("a copy record for two.txt");
    let edited = lines[idx].replace("\"size\":4", "\"size\":40");
    assert_ne!(edited, lines[idx], "line format changed: {}", lines[idx]);
    let mut new_lines: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    new_lines[idx] = edited;
    std::fs::write(&path, new_lines.join("\n") + "\n").unwrap();

    let out = fx.run(&["log", "p", "--verify"]);
    out.code(1);
    let lineno = idx + 1;
    let text = out.all();
    assert!(
        text.contains(&format!("line {lineno}")) || text.contains(&format!("line {}", lineno + 1)),
        "the broken line ({lineno}) is not named: {out:?}"
    );
    assert!(!out.stdout.contains("intact"), "{out:?}");
}

#[test]
fn inv12_verify_detects_truncation_of_the_last_lines() {
    let fx = Fx::new();
    three_runs(&fx);
    fx.run(&["log", "p", "--verify"]).ok();

    let path = fx.audit_path("p");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() > 4);
    let kept = lines[..lines.len() - 3].join("\n") + "\n";
    std::fs::write(&path, kept).unwrap();

    let out = fx.run(&["log", "p", "--verify"]);
    out.code(1);
    assert!(!out.stdout.contains("intact"), "{out:?}");
    assert!(
        out.all().contains("removed") || out.all().contains("truncat"),
        "truncation not reported: {out:?}"
    );

    // --json form reports the problem too.
    let out = fx.run(&["log", "p", "--verify", "--json"]);
    out.code(1);
    let v = out.json();
    assert!(!v[0]["problems"].as_array().unwrap().is_empty(), "{v:#}");
}

#[test]
fn inv12_verify_detects_a_removed_middle_line() {
    let fx = Fx::new();
    three_runs(&fx);
    let path = fx.audit_path("p");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(2);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let out = fx.run(&["log", "p", "--verify"]);
    out.code(1);
    assert!(out.all().contains("line 3"), "{out:?}");
}
