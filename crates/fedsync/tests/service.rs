//! `fedsync service`: the generated systemd units and launchd plist (`--print`), checked by
//! `systemd-analyze verify` where it exists and by a plist parser; `status`/`install` where
//! no systemd user session can be reached. No test installs a real service.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// `fedsync ARGS` with HOME in the fixture (so generated paths point there).
fn run_svc(fx: &Fx, home: &Path, args: &[&str]) -> Out {
    let user_home = fx.dir.join("userhome");
    std::fs::create_dir_all(&user_home).unwrap();
    let out = fx
        .command(args)
        .env("FEDSYNC_HOME", home)
        .env("HOME", &user_home)
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .expect("run fedsync");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        args: args.iter().map(|s| s.to_string()).collect(),
    }
}

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fedsync"))
        .canonicalize()
        .unwrap()
}

/// `service install NAME EXTRA --print --json`: (path, manager, content) of each file.
fn printed(fx: &Fx, home: &Path, extra: &[&str]) -> Vec<(PathBuf, String, String)> {
    let mut args = vec!["service", "install", "p1", "--print", "--json"];
    args.extend_from_slice(extra);
    let out = run_svc(fx, home, &args);
    out.ok();
    out.json()["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| {
            (
                PathBuf::from(f["path"].as_str().unwrap()),
                f["manager"].as_str().unwrap().to_string(),
                f["content"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn file<'a>(files: &'a [(PathBuf, String, String)], suffix: &str) -> &'a str {
    &files
        .iter()
        .find(|(p, _, _)| p.to_string_lossy().ends_with(suffix))
        .unwrap_or_else(|| panic!("no {suffix} among {files:?}"))
        .2
}

fn line<'a>(content: &'a str, key: &str) -> &'a str {
    content
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in\n{content}"))
}

fn setup() -> Fx {
    let fx = Fx::new();
    fx.profile_ab("p1", "", "");
    fx
}

/// The plist as a dictionary (parsed by a real plist parser).
fn plist_dict(content: &str) -> plist::Dictionary {
    let v = plist::Value::from_reader_xml(content.as_bytes())
        .unwrap_or_else(|e| panic!("plist does not parse: {e}\n{content}"));
    v.into_dictionary().expect("a dictionary at the top")
}

fn plist_args(d: &plist::Dictionary) -> Vec<String> {
    d.get("ProgramArguments")
        .and_then(|v| v.as_array())
        .expect("ProgramArguments")
        .iter()
        .map(|v| v.as_string().expect("string").to_string())
        .collect()
}

#[test]
fn print_shows_the_watch_unit_and_the_launchd_agent() {
    let fx = setup();
    let files = printed(&fx, &fx.home, &[]);
    let user_home = fx.dir.join("userhome");
    let paths: Vec<&PathBuf> = files.iter().map(|(p, _, _)| p).collect();
    assert_eq!(
        paths,
        [
            &user_home.join(".config/systemd/user/fedsync-p1.service"),
            &user_home.join("Library/LaunchAgents/org.fedsync.p1.plist"),
        ],
        "watch form: a service, no timer"
    );
    let unit = file(&files, ".service");
    let home = fx.home.display().to_string();
    assert_eq!(
        line(unit, "ExecStart"),
        format!("{} --home {home} watch p1", exe().display())
    );
    assert_eq!(line(unit, "Type"), "simple");
    assert_eq!(line(unit, "Restart"), "on-failure");
    assert_eq!(line(unit, "WantedBy"), "default.target");

    let d = plist_dict(file(&files, ".plist"));
    assert_eq!(
        d.get("Label").and_then(|v| v.as_string()),
        Some("org.fedsync.p1")
    );
    assert_eq!(
        plist_args(&d),
        [
            exe().display().to_string(),
            "--home".into(),
            home,
            "watch".into(),
            "p1".into()
        ]
    );
    assert_eq!(d.get("RunAtLoad").and_then(|v| v.as_boolean()), Some(true));
    let keep = d
        .get("KeepAlive")
        .and_then(|v| v.as_dictionary())
        .expect("KeepAlive");
    assert_eq!(
        keep.get("SuccessfulExit").and_then(|v| v.as_boolean()),
        Some(false)
    );
    assert!(d.get("StartInterval").is_none());
    let log = d
        .get("StandardOutPath")
        .and_then(|v| v.as_string())
        .unwrap();
    assert!(log.starts_with(user_home.to_str().unwrap()), "{log}");

    // The human form shows the same files with their destinations.
    let out = run_svc(
        &fx,
        &fx.home,
        &["service", "install", "p1", "--watch", "--print"],
    );
    out.ok();
    assert!(out.stdout.contains("# ---- ") && out.stdout.contains("fedsync-p1.service"));
    assert!(out.stdout.contains("[Service]") && out.stdout.contains("<plist version=\"1.0\">"));
    assert!(
        !user_home.join(".config").exists() && !user_home.join("Library").exists(),
        "--print installs nothing"
    );
}

#[test]
fn print_shows_the_timer_form() {
    let fx = setup();
    let files = printed(&fx, &fx.home, &["--interval", "15m"]);
    assert_eq!(files.len(), 3, "{files:?}");
    let unit = file(&files, ".service");
    assert_eq!(line(unit, "Type"), "oneshot");
    assert!(
        line(unit, "ExecStart").ends_with(" sync p1 --wait"),
        "{unit}"
    );
    let timer = file(&files, ".timer");
    assert_eq!(line(timer, "OnUnitActiveSec"), "900s");
    assert_eq!(line(timer, "Unit"), "fedsync-p1.service");
    assert_eq!(line(timer, "WantedBy"), "timers.target");
    let d = plist_dict(file(&files, ".plist"));
    assert_eq!(
        d.get("StartInterval").and_then(|v| v.as_unsigned_integer()),
        Some(900)
    );
    assert!(d.get("KeepAlive").is_none());
    assert_eq!(plist_args(&d)[3..], ["sync", "p1", "--wait"]);
}

#[test]
fn odd_characters_in_paths_are_quoted() {
    let fx = setup();
    // A home with a space, a percent sign, a dollar and a quote.
    let home = fx.dir.join("my home %i $HOME \"q\"");
    std::fs::create_dir_all(home.join("profiles")).unwrap();
    std::fs::copy(
        fx.home.join("profiles/p1.toml"),
        home.join("profiles/p1.toml"),
    )
    .unwrap();
    let files = printed(&fx, &home, &[]);
    let exec = line(file(&files, ".service"), "ExecStart");
    let quoted = format!(
        "\"{}\"",
        home.display()
            .to_string()
            .replace('%', "%%")
            .replace('$', "$$")
            .replace('"', "\\\"")
    );
    assert!(
        exec.contains(&format!("--home {quoted} watch p1")),
        "{exec}"
    );
    let d = plist_dict(file(&files, ".plist"));
    assert_eq!(plist_args(&d)[2], home.display().to_string());
    verify_units(&fx, &files, "quoted");
}

/// `systemd-analyze verify` on the units, written to a folder of their own.
fn verify_units(fx: &Fx, files: &[(PathBuf, String, String)], tag: &str) {
    if std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: systemd-analyze is not installed; the unit files were not verified");
        return;
    }
    let dir = fx.dir.join(format!("units-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut units = Vec::new();
    for (p, manager, content) in files {
        if manager == "systemd" {
            let f = dir.join(p.file_name().unwrap());
            std::fs::write(&f, content).unwrap();
            units.push(f);
        }
    }
    // The user manager is the right one; without a user session (containers) the system
    // manager checks the same syntax.
    let mut tries = Vec::new();
    for user in [true, false] {
        let mut c = std::process::Command::new("systemd-analyze");
        if user {
            c.arg("--user");
        }
        c.arg("verify").args(&units);
        let out = c.output().expect("run systemd-analyze");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if user && stderr.contains("Failed to initialize manager") {
            tries.push(stderr);
            continue;
        }
        assert!(
            out.status.success(),
            "systemd-analyze verify failed ({}):\n{stderr}\n{tries:?}",
            out.status
        );
        assert!(
            !stderr.contains("Unknown key") && !stderr.contains("ignoring"),
            "systemd-analyze complained:\n{stderr}"
        );
        return;
    }
}

#[test]
fn generated_units_pass_systemd_analyze_verify() {
    let fx = setup();
    verify_units(&fx, &printed(&fx, &fx.home, &[]), "watch");
    verify_units(&fx, &printed(&fx, &fx.home, &["--interval", "1h"]), "timer");
}

#[test]
fn status_and_install_say_when_systemd_user_sessions_are_missing() {
    let fx = setup();
    let have_user_systemd = std::process::Command::new("systemctl")
        .args(["--user", "show-environment"])
        .output()
        .is_ok_and(|o| o.status.success());
    let st = run_svc(&fx, &fx.home, &["service", "status", "p1"]);
    st.code(3);
    let js = run_svc(&fx, &fx.home, &["service", "status", "p1", "--json"]);
    js.code(3);
    let v: Value = js.json();
    assert_eq!(v["installed"], false);
    assert_eq!(v["files"].as_array().map(Vec::len), Some(0));
    if have_user_systemd {
        eprintln!("SKIPPED the no-systemd half: this machine has a systemd user session");
        assert!(st.stdout.contains("not installed"), "{st:?}");
        return;
    }
    assert_eq!(v["available"], false, "{v:#}");
    assert!(
        st.stdout
            .contains("systemd user sessions are not available"),
        "{st:?}"
    );
    let inst = run_svc(&fx, &fx.home, &["service", "install", "p1"]);
    inst.code(3);
    assert!(
        inst.stderr.contains("nothing installed")
            && inst
                .stderr
                .contains("systemd user sessions are not available"),
        "{inst:?}"
    );
    assert!(!fx.dir.join("userhome/.config/systemd").exists());
}

#[test]
fn usage_errors() {
    let fx = setup();
    run_svc(&fx, &fx.home, &["service", "install", "nope", "--print"]).code(2);
    run_svc(
        &fx,
        &fx.home,
        &[
            "service",
            "install",
            "p1",
            "--watch",
            "--interval",
            "5m",
            "--print",
        ],
    )
    .code(2);
    run_svc(
        &fx,
        &fx.home,
        &["service", "install", "p1", "--interval", "soon", "--print"],
    )
    .code(2);
    let un = run_svc(&fx, &fx.home, &["service", "uninstall", "p1"]);
    un.ok();
    assert!(un.stdout.contains("nothing to do"), "{un:?}");
}
