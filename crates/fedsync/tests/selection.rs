//! What is synced: profile `paths` and `ignore`, and `--paths` for one run.

mod common;

use common::*;

#[test]
fn profile_paths_limit_what_is_synced() {
    let fx = Fx::new();
    fx.profile_ab("p", r#"paths = ["docs/", "/README.md"]"#, "");
    fx.write(&fx.a, "docs/guide.md", "guide\n");
    fx.write(&fx.a, "README.md", "readme\n");
    fx.write(&fx.a, "src/main.rs", "fn main() {}\n");
    fx.write(&fx.a, "notes/README.md", "nested readme\n");
    fx.write(&fx.b, "scratch.txt", "b's scratch\n");
    fx.run(&["sync", "p"]).ok();
    assert_eq!(read(&fx.b, "docs/guide.md"), "guide\n");
    assert_eq!(read(&fx.b, "README.md"), "readme\n");
    assert!(!exists(&fx.b, "src/main.rs"), "src/ is not in paths");
    assert!(
        !exists(&fx.b, "notes/README.md"),
        "/README.md is anchored: notes/README.md is not in paths"
    );
    assert!(!exists(&fx.a, "scratch.txt"), "scratch.txt is not in paths");
    // Outside the selection nothing is touched on either side.
    assert_eq!(read(&fx.a, "src/main.rs"), "fn main() {}\n");
    assert_eq!(read(&fx.b, "scratch.txt"), "b's scratch\n");
    let out = fx.run(&["sync", "p"]);
    out.ok();
    assert!(out.stdout.contains("nothing to do"), "{out:?}");
}

/// Folders outside `paths` are not synced either (not even as empty skeletons).
#[test]
fn profile_paths_do_not_sync_folders_outside_the_selection() {
    let fx = Fx::new();
    fx.profile_ab("p", r#"paths = ["docs/"]"#, "");
    fx.write(&fx.a, "docs/guide.md", "guide\n");
    fx.write(&fx.a, "src/x/y/main.rs", "fn main() {}\n");
    std::fs::create_dir(fx.b.join("b-only-dir")).unwrap();
    fx.run(&["sync", "p"]).ok();
    assert_eq!(read(&fx.b, "docs/guide.md"), "guide\n");
    assert!(
        !exists(&fx.b, "src"),
        "src/ created on b: {:?}",
        list(&fx.b, "")
    );
    assert!(!exists(&fx.a, "b-only-dir"), "b-only-dir/ created on a");
}

#[test]
fn ignore_directory_patterns_and_anchors() {
    let fx = Fx::new();
    fx.profile_ab(
        "p",
        r#"ignore = ["node_modules/", "/build", "*.pyc", ".DS_Store"]"#,
        "",
    );
    fx.write(&fx.a, "node_modules/x/index.js", "js\n");
    fx.write(&fx.a, "app/node_modules/y.js", "js\n");
    fx.write(&fx.a, "build/out.bin", "top build\n");
    fx.write(
        &fx.a,
        "app/build/keep.txt",
        "nested build is not anchored\n",
    );
    fx.write(&fx.a, "app/mod.pyc", "pyc\n");
    fx.write(&fx.a, "app/mod.py", "py\n");
    fx.write(&fx.a, ".DS_Store", "junk\n");
    fx.run(&["sync", "p"]).ok();
    assert!(!exists(&fx.b, "node_modules"));
    assert!(!exists(&fx.b, "app/node_modules"));
    assert!(!exists(&fx.b, "build"));
    assert_eq!(
        read(&fx.b, "app/build/keep.txt"),
        "nested build is not anchored\n"
    );
    assert!(!exists(&fx.b, "app/mod.pyc"));
    assert_eq!(read(&fx.b, "app/mod.py"), "py\n");
    assert!(!exists(&fx.b, ".DS_Store"));
}

#[test]
fn paths_option_limits_one_run() {
    let fx = Fx::new();
    fx.write(&fx.a, "docs/d.txt", "d\n");
    fx.write(&fx.a, "src/s.txt", "s\n");
    fx.write(&fx.a, "README", "r\n");
    fx.sync(&["--paths", "docs", "README"]).ok();
    assert_eq!(read(&fx.b, "docs/d.txt"), "d\n");
    assert_eq!(read(&fx.b, "README"), "r\n");
    assert!(!exists(&fx.b, "src"), "--paths did not limit the run");
    // A deletion outside --paths is not seen as one either: src stays on a.
    fx.sync(&[]).ok();
    assert_eq!(read(&fx.b, "src/s.txt"), "s\n");
    assert_eq!(read(&fx.a, "src/s.txt"), "s\n");
}
