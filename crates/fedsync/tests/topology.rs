//! Profiles with an optional replica and with three replicas (star around the first one).

mod common;

use common::*;

/// A profile with replicas hub (= fixture a), b (= fixture b) and c.
fn three(fx: &Fx) -> std::path::PathBuf {
    let c = fx.dir.join("c");
    std::fs::create_dir(&c).unwrap();
    fx.write_profile(
        "star",
        &format!(
            "[replicas]\nhub = {:?}\nb = {:?}\nc = {:?}\n",
            fx.a_str(),
            fx.b_str(),
            c.to_str().unwrap()
        ),
    );
    c
}

#[test]
fn optional_replica_comes_and_goes() {
    let fx = Fx::new();
    fx.write_profile(
        "usb",
        &format!(
            "[replicas]\nlaptop = {:?}\nusb = {{ root = {:?}, optional = true }}\n",
            fx.a_str(),
            fx.b_str()
        ),
    );
    fx.write(&fx.a, "one.txt", "1\n");
    fx.run(&["sync", "usb"]).ok();
    assert_eq!(read(&fx.b, "one.txt"), "1\n");

    // Unplugged: skipped with a warning, exit 0, nothing happens on the laptop.
    let away = fx.dir.join("usb-away");
    std::fs::rename(&fx.b, &away).unwrap();
    fx.write(&fx.a, "two.txt", "2\n");
    let before = tree_snapshot(&fx.a);
    let out = fx.run(&["sync", "usb"]);
    out.ok();
    assert!(out.stderr.contains("warning"), "{out:?}");
    assert!(out.stderr.contains("usb"), "{out:?}");
    assert_eq!(tree_snapshot(&fx.a), before);
    assert!(!fx.b.exists());

    // An empty, unmarked folder at the mount point is not the drive: skipped, not filled.
    std::fs::create_dir(&fx.b).unwrap();
    let out = fx.run(&["sync", "usb"]);
    out.ok();
    assert!(out.stderr.contains("warning"), "{out:?}");
    assert!(list(&fx.b, "").is_empty(), "the impostor folder was filled");
    assert_eq!(tree_snapshot(&fx.a), before, "laptop touched");
    std::fs::remove_dir(&fx.b).unwrap();

    // Plugged in again: catches up.
    std::fs::rename(&away, &fx.b).unwrap();
    fx.run(&["sync", "usb"]).ok();
    assert_eq!(read(&fx.b, "two.txt"), "2\n");
    assert_eq!(read(&fx.a, "one.txt"), "1\n");
}

#[test]
fn star_hub_change_reaches_every_spoke_in_one_run() {
    let fx = Fx::new();
    let c = three(&fx);
    fx.write(&fx.a, "x.txt", "from hub\n");
    let out = fx.run(&["sync", "star"]);
    out.ok();
    assert_eq!(read(&fx.b, "x.txt"), "from hub\n");
    assert_eq!(read(&c, "x.txt"), "from hub\n");
    let out = fx.run(&["sync", "star"]);
    out.ok();
    assert!(out.stdout.contains("nothing to do"), "{out:?}");
}

#[test]
fn star_spoke_change_reaches_the_other_spoke_in_one_run() {
    let fx = Fx::new();
    let c = three(&fx);
    fx.write(&fx.a, "seed.txt", "seed\n");
    // Converge first (may take more than one run while the bug above exists).
    for _ in 0..3 {
        let _ = fx.run(&["sync", "star"]);
    }
    assert_eq!(read(&c, "seed.txt"), "seed\n");

    fx.write(&c, "from-c.txt", "c\n");
    let out = fx.run(&["sync", "star"]);
    out.ok();
    assert_eq!(read(&fx.a, "from-c.txt"), "c\n");
    assert_eq!(
        read(&fx.b, "from-c.txt"),
        "c\n",
        "b did not get c's file in the same run"
    );
}
