//! A first sync into an empty replica: new files are staged as unnamed files in their own
//! folders, made durable a batch at a time and then named in place (see
//! `LocalReplica::stage_unnamed` and `Applier::phase_copies`). What must hold from outside:
//! every file arrives whole with its mode and mtime, no temporary file is left, the state
//! recorded is the one the next scan sees (nothing is hashed again), and a low descriptor
//! limit never makes the run fail.

mod common;

use common::*;
use std::path::Path;

/// `dirs` folders (two levels deep) of `per` small files each, plus a few special ones: a
/// large file (copied by the kernel, hashed after), an empty one, an executable, a symlink.
/// Returns how many entries the tree has.
fn fill(fx: &Fx, root: &Path, dirs: usize, per: usize) -> usize {
    let mut n = 0;
    for d in 0..dirs {
        for f in 0..per {
            let rel = format!("top{}/sub{d}/file{f}.txt", d % 4);
            write_at(
                root,
                &rel,
                format!("{d}/{f}\n").repeat(1 + f % 7),
                fx.tick(),
            );
            n += 1;
        }
    }
    write_at(root, "big/large.bin", noise(700_000, 3), fx.tick());
    write_at(root, "big/empty", "", fx.tick());
    let exe = write_at(root, "bin/tool.sh", "#!/bin/sh\necho hi\n", fx.tick());
    set_mode(&exe, 0o755);
    std::os::unix::fs::symlink("../bin/tool.sh", root.join("big/link")).unwrap();
    // Everything copied: files, links and folders (the root itself is not an item).
    let entries = shape(root).len() - 1;
    assert!(entries > n + 4);
    entries
}

/// The tree without folder and link mtimes (folders get new entries; not what is compared).
fn shape(root: &Path) -> Vec<(String, Node)> {
    tree_snapshot(root)
        .into_iter()
        .map(|(p, n)| {
            let n = match n {
                Node::Dir { mode, .. } => Node::Dir {
                    mode,
                    mtime: (0, 0),
                },
                Node::Link { target, .. } => Node::Link {
                    target,
                    mtime: (0, 0),
                },
                f => f,
            };
            (p, n)
        })
        .collect()
}

fn hashed_files(report: &serde_json::Value) -> u64 {
    report["pairs"][0]["hashed_files"]
        .as_u64()
        .expect("hashed_files")
}

#[test]
fn first_sync_over_many_folders_leaves_no_temp_files_and_hashes_nothing_next_time() {
    let fx = Fx::new();
    let n = fill(&fx, &fx.a, 30, 40);
    let rep = fx.sync_json(0, &[]);
    assert_eq!(counts(&rep)["to_b"], n as u64, "{rep}");
    assert_eq!(shape(&fx.a), shape(&fx.b));
    assert_eq!(read_bytes(&fx.b, "big/large.bin"), noise(700_000, 3));
    assert_eq!(mode_of(&fx.b.join("bin/tool.sh")) & 0o777, 0o755);
    assert_eq!(
        mtime_of(&fx.b.join("top1/sub5/file3.txt")),
        mtime_of(&fx.a.join("top1/sub5/file3.txt"))
    );
    assert!(is_symlink(&fx.b, "big/link"));
    assert!(temp_files(&fx.b).is_empty(), "{:?}", temp_files(&fx.b));

    // The state recorded for the new files is what the next scan finds (same inode, same
    // ctime): nothing to do, and nothing hashed on either side.
    let again = fx.sync_json(0, &[]);
    assert!(items(&again).is_empty(), "{again}");
    assert_eq!(hashed_files(&again), 0, "{again}");
}

/// With a descriptor limit too low to keep a batch of staged files open (here 64, soft and
/// hard, so it cannot be raised; and 300, where only some of a batch fit), the run still
/// copies everything: what does not fit is staged by name instead.
#[test]
fn a_low_descriptor_limit_never_fails_a_first_sync() {
    for limit in [64, 300] {
        let fx = Fx::new();
        let n = fill(&fx, &fx.a, 12, 60);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_fedsync"))
            .args(["sync", fx.a_str(), fx.b_str(), "--json"])
            .env("FEDSYNC_HOME", &fx.home)
            .env("NO_COLOR", "1")
            .env_remove("FEDSYNC_SSH")
            .output()
            .expect("run fedsync");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(0),
            "limit {limit}: {stdout}\n{stderr}"
        );
        let rep: serde_json::Value = serde_json::from_str(&stdout).expect("json report");
        assert_eq!(counts(&rep)["to_b"], n as u64, "limit {limit}: {rep}");
        assert_eq!(counts(&rep)["failed"], 0, "limit {limit}: {rep}");
        assert_eq!(shape(&fx.a), shape(&fx.b), "limit {limit}");
        assert!(temp_files(&fx.b).is_empty(), "limit {limit}");
        let again = fx.sync_json(0, &[]);
        assert!(items(&again).is_empty(), "limit {limit}: {again}");
        assert_eq!(hashed_files(&again), 0, "limit {limit}: {again}");
    }
}
