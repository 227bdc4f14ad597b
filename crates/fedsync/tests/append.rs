//! Append-only files under `merge = "append"`: growth is written in place (only the tail),
//! the old content (the file's prefix) is never at risk, a kill at any point heals on the
//! next run, and a rollback cuts the file back.

mod common;
use common::*;
use std::os::unix::fs::MetadataExt;

const RULES: &str = "[[rule]]\npaths = [\"*.jsonl\"]\nmerge = \"append\"\n";

fn log_lines(from: usize, to: usize) -> String {
    (from..to)
        .map(|i| format!("{{\"i\":{i},\"msg\":\"{}\"}}\n", "x".repeat(i % 50)))
        .collect()
}

/// Contents of every version kept on a replica.
fn kept(root: &std::path::Path) -> Vec<String> {
    versions(root)
        .into_iter()
        .map(|(run, rel)| version_content(root, &run, &rel))
        .collect()
}

fn synced_log(fx: &Fx, lines: usize) -> String {
    fx.profile_ab("p", "", RULES);
    let base = log_lines(0, lines);
    fx.write(&fx.a, "app.jsonl", &base);
    fx.run(&["sync", "p"]).ok();
    assert_eq!(read(&fx.b, "app.jsonl"), base);
    base
}

#[test]
fn growth_is_appended_in_place_and_only_the_tail_is_written() {
    let fx = Fx::new();
    let base = synced_log(&fx, 20_000);
    let ino = std::fs::metadata(fx.b.join("app.jsonl")).unwrap().ino();
    let tail = log_lines(20_000, 20_010);
    fx.append(&fx.a, "app.jsonl", &tail);
    let rep = fx.run(&["sync", "p", "--json"]).ok().json();
    let c = &rep["pairs"][0]["counts"];
    assert_eq!(c["to_b"], 1, "{rep}");
    assert_eq!(
        c["bytes_to_b"],
        tail.len() as u64,
        "only the tail is written: {rep}"
    );
    assert_eq!(read(&fx.b, "app.jsonl"), format!("{base}{tail}"));
    assert_eq!(
        std::fs::metadata(fx.b.join("app.jsonl")).unwrap().ino(),
        ino,
        "appended in place, not replaced"
    );
    // Nothing was overwritten, so nothing needed keeping.
    assert!(versions(&fx.b).is_empty(), "{:?}", versions(&fx.b));
    fx.run(&["sync", "p"]).ok();
    assert!(fx
        .run(&["sync", "p"])
        .ok()
        .stdout
        .contains("in sync, nothing to do"));
}

#[test]
fn a_rewritten_log_is_copied_whole_and_the_old_one_kept() {
    let fx = Fx::new();
    let base = synced_log(&fx, 2_000);
    let rewritten = log_lines(5, 1_000);
    fx.write(&fx.a, "app.jsonl", &rewritten);
    fx.run(&["sync", "p"]).ok();
    assert_eq!(read(&fx.b, "app.jsonl"), rewritten);
    let kept = kept(&fx.b);
    assert!(kept.contains(&base), "the old log is kept as a version");
}

#[test]
fn rollback_of_an_append_cuts_the_file_back_and_keeps_the_longer_one() {
    let fx = Fx::new();
    let base = synced_log(&fx, 1_000);
    let tail = log_lines(1_000, 1_003);
    fx.append(&fx.a, "app.jsonl", &tail);
    fx.run(&["sync", "p"]).ok();
    fx.run(&["rollback", "p"]).ok();
    assert_eq!(read(&fx.b, "app.jsonl"), base);
    let kept = kept(&fx.b);
    assert!(kept.contains(&format!("{base}{tail}")));
    // Rollback of the rollback: the appended content is back.
    fx.run(&["rollback", "p"]).ok();
    assert_eq!(read(&fx.b, "app.jsonl"), format!("{base}{tail}"));
}

/// Kill the run at every crash point it passes while appending: the target always starts
/// with its old content (never torn before the tail), and the next run completes the log.
#[test]
fn a_kill_at_any_point_of_an_append_heals_on_the_next_run() {
    let fx = Fx::new();
    let base = synced_log(&fx, 5_000);
    let mut tail = String::new();
    let mut start = 5_000;
    // How many crash points one append run passes.
    tail.push_str(&log_lines(start, start + 5));
    start += 5;
    fx.append(&fx.a, "app.jsonl", log_lines(5_000, 5_005));
    let out = fx
        .command(&["sync", "p"])
        .env("FEDSYNC_CRASH_COUNT", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let points: u64 = err
        .rsplit("crash points reached: ")
        .next()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no crash count in {err}"));
    assert!(points >= 3, "{err}");
    let mut expect = format!("{base}{tail}");
    assert_eq!(read(&fx.b, "app.jsonl"), expect);
    for k in 1..=points {
        let more = log_lines(start, start + 3);
        start += 3;
        fx.append(&fx.a, "app.jsonl", &more);
        let old = read(&fx.b, "app.jsonl");
        let out = fx
            .command(&["sync", "p"])
            .env("FEDSYNC_CRASH_AT", k.to_string())
            .output()
            .unwrap();
        let now = read(&fx.b, "app.jsonl");
        assert!(
            now.starts_with(&old),
            "kill at point {k}: the old content of the log was damaged ({:?})",
            out.status
        );
        expect.push_str(&more);
        // The next runs heal: everything arrives, nothing is duplicated.
        let r = fx.run(&["sync", "p"]);
        assert!(r.code == 0 || r.code == 1, "{r:?}");
        fx.run(&["sync", "p"]).ok();
        assert_eq!(
            read(&fx.b, "app.jsonl"),
            expect,
            "after a kill at point {k}"
        );
        assert_eq!(
            read(&fx.a, "app.jsonl"),
            expect,
            "after a kill at point {k}"
        );
    }
}
