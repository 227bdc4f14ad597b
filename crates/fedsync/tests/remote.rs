//! Remote replicas: `a` is local, `b` is reached as `ssh://testhost/<b>` through
//! `FEDSYNC_SSH`, a small script that ignores the host and runs the remote command locally
//! (so these tests run anywhere). A last test goes through a real sshd when one is installed.

mod common;

use common::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Stand-in for ssh: drop the options and the host, run the remote command with `sh -c`
/// (as sshd would). `CUT_IN` / `CUT_OUT` cut the transport after that many bytes in one
/// direction (a connection dropped mid-transfer).
const FAKE_SSH: &str = r#"#!/bin/sh
while [ $# -gt 1 ]; do shift; done
# AGENT_CRASH_AT: the agent (only) kills itself at that crash point.
if [ -n "$AGENT_CRASH_AT" ]; then export FEDSYNC_CRASH_AT="$AGENT_CRASH_AT"; fi
if [ -n "$CUT_IN" ]; then
  dd bs=65536 iflag=count_bytes count="$CUT_IN" status=none | sh -c "$1"
elif [ -n "$CUT_OUT" ]; then
  sh -c "$1" | dd bs=65536 iflag=count_bytes count="$CUT_OUT" status=none
else
  exec sh -c "$1"
fi
"#;

struct Remote {
    fx: Fx,
    ssh: PathBuf,
    bin: PathBuf,
}

fn write_exec(p: &Path, text: &str) {
    std::fs::write(p, text).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

impl Remote {
    fn new() -> Remote {
        let fx = Fx::new();
        let bin = fx.dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_fedsync"), bin.join("fedsync")).unwrap();
        let ssh = fx.dir.join("fake-ssh");
        write_exec(&ssh, FAKE_SSH);
        Remote { fx, ssh, bin }
    }

    fn url(&self) -> String {
        format!("ssh://testhost{}", self.fx.b_str())
    }

    /// `fedsync ARGS` with the fake ssh; `env` adds variables.
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let mut c = self.fx.command(args);
        let path = format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        c.env("FEDSYNC_SSH", &self.ssh)
            .env("PATH", path)
            .env("FEDSYNC_WIRE_STATS", "1");
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().expect("run fedsync");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn sync(&self, extra: &[&str]) -> Out {
        self.sync_env(extra, &[])
    }

    /// Profile NAME: `a` local, `b` this remote; `top` before `[replicas]`, `rest` after.
    fn profile(&self, name: &str, top: &str, rest: &str) {
        let text = format!(
            "{top}\n[replicas]\na = {:?}\nb = {:?}\n\n{rest}\n",
            self.fx.a_str(),
            self.url()
        );
        self.fx.write_profile(name, &text);
    }

    fn sync_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Out {
        let url = self.url();
        let mut args = vec!["sync", self.fx.a_str(), url.as_str()];
        args.extend_from_slice(extra);
        self.run(&args, env)
    }
}

/// (sent, received) bytes of the remote connection, from the `wire:` stats line.
fn wire(out: &Out) -> (u64, u64) {
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("wire: "))
        .unwrap_or_else(|| panic!("no wire stats: {out:?}"));
    let num = |after: &str| -> u64 {
        let i = line.find(after).expect("field") + after.len();
        line[i..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (num("sent "), num("received "))
}

fn assert_same_trees(r: &Remote) {
    assert_eq!(contents(&r.fx.a), contents(&r.fx.b));
}

#[test]
fn first_sync_modify_delete_move_and_conflict_over_the_agent() {
    let r = Remote::new();
    let fx = &r.fx;
    fx.write(&fx.a, "docs/readme.md", "hello\n");
    fx.write(&fx.a, "docs/deep/notes.txt", "deep\n");
    fx.write(&fx.a, "run.sh", "#!/bin/sh\necho hi\n");
    set_mode(&fx.a.join("run.sh"), 0o755);
    std::fs::create_dir_all(fx.a.join("empty")).unwrap();
    std::os::unix::fs::symlink("docs/readme.md", fx.a.join("link")).unwrap();
    fx.write(&fx.b, "from-b.txt", "b was here\n");
    r.sync(&[]).ok();
    assert_same_trees(&r);
    assert_eq!(mode_of(&fx.b.join("run.sh")), 0o755);
    assert!(is_symlink(&fx.b, "link"));
    assert_eq!(
        mtime_of(&fx.a.join("docs/readme.md")),
        mtime_of(&fx.b.join("docs/readme.md"))
    );

    // Nothing changed: nothing to do.
    let out = r.sync(&[]);
    out.ok();
    assert!(out.stdout.contains("nothing to do"), "{out:?}");

    // Modify on each side.
    fx.write(&fx.a, "docs/readme.md", "hello again\n");
    fx.write(&fx.b, "docs/deep/notes.txt", "deeper\n");
    r.sync(&[]).ok();
    assert_same_trees(&r);
    assert_eq!(read(&fx.b, "docs/readme.md"), "hello again\n");
    assert_eq!(read(&fx.a, "docs/deep/notes.txt"), "deeper\n");
    // The overwritten remote file was kept as a version on the remote side.
    assert!(
        versions(&fx.b).iter().any(|(_, p)| p == "docs/readme.md"),
        "{:?}",
        versions(&fx.b)
    );

    // Delete locally, move remotely.
    std::fs::remove_file(fx.a.join("from-b.txt")).unwrap();
    std::fs::rename(fx.b.join("run.sh"), fx.b.join("docs/run.sh")).unwrap();
    let rep = {
        let out = r.sync(&["--json"]);
        out.ok();
        out.json()
    };
    assert_same_trees(&r);
    assert!(!exists(&fx.b, "from-b.txt"));
    assert!(versions(&fx.b).iter().any(|(_, p)| p == "from-b.txt"));
    assert_eq!(item(&rep, "docs/run.sh")["action"], "move", "{rep:#}");

    // Both sides change the same file: keep-both on both sides.
    fx.write(&fx.a, "docs/readme.md", "a's take\n");
    fx.write(&fx.b, "docs/readme.md", "b's take (newer)\n");
    let out = r.sync(&[]);
    assert!(out.code == 0 || out.code == 1, "{out:?}");
    assert_same_trees(&r);
    assert_eq!(read(&fx.a, "docs/readme.md"), "b's take (newer)\n");
    let names = list(&fx.a, "docs");
    assert!(
        names
            .iter()
            .any(|n| is_conflict_name(n, "readme", "a", "md")),
        "{names:?}"
    );
    assert!(temp_files(&fx.b).is_empty(), "{:?}", temp_files(&fx.b));
}

#[test]
fn remote_without_marker_is_refused_and_nothing_is_deleted() {
    let r = Remote::new();
    let fx = &r.fx;
    fx.write(&fx.a, "keep/one.txt", "1\n");
    fx.write(&fx.a, "two.txt", "2\n");
    r.sync(&[]).ok();
    // The remote folder is replaced by an empty one (an unmounted disk, say).
    std::fs::remove_dir_all(&fx.b).unwrap();
    std::fs::create_dir_all(&fx.b).unwrap();
    let out = r.sync(&[]);
    out.code(3);
    assert!(out.all().contains("marker"), "{out:?}");
    assert_eq!(read(&fx.a, "keep/one.txt"), "1\n");
    assert_eq!(read(&fx.a, "two.txt"), "2\n");
    // A remote root that is gone entirely is refused too.
    std::fs::remove_dir_all(&fx.b).unwrap();
    r.sync(&[]).code(3);
    assert_eq!(read(&fx.a, "two.txt"), "2\n");
}

#[test]
fn a_small_edit_in_a_big_file_sends_about_the_edit_both_ways() {
    let r = Remote::new();
    let fx = &r.fx;
    let size = 20 << 20;
    let mut data = noise(size, 7);
    fx.write(&fx.a, "big.bin", &data);
    let out = r.sync(&[]);
    out.ok();
    assert!(wire(&out).0 > size as u64, "{out:?}");

    // Push: 1 KB changed in the middle of the local copy.
    data[10_000_000..10_001_024].copy_from_slice(&noise(1024, 8));
    fx.write(&fx.a, "big.bin", &data);
    let out = r.sync(&[]);
    out.ok();
    let (sent, received) = wire(&out);
    assert!(sent < 200_000, "sent {sent} bytes for a 1 KB edit: {out:?}");
    assert!(received < 100_000, "received {received}: {out:?}");
    assert_eq!(read_bytes(&fx.b, "big.bin"), data);

    // Pull: 1 KB changed on the remote side.
    data[3_000_000..3_001_024].copy_from_slice(&noise(1024, 9));
    fx.write(&fx.b, "big.bin", &data);
    let out = r.sync(&[]);
    out.ok();
    let (sent, received) = wire(&out);
    assert!(
        received < 200_000,
        "received {received} for a 1 KB edit: {out:?}"
    );
    assert!(sent < 100_000, "sent {sent}: {out:?}");
    assert_eq!(read_bytes(&fx.a, "big.bin"), data);
}

#[test]
fn the_agent_keeps_the_signatures_of_what_it_received_and_insertions_stay_small() {
    let r = Remote::new();
    let fx = &r.fx;
    // Large enough to be chunked on all cores (8 MiB segments).
    let mut data = noise(20 << 20, 17);
    fx.write(&fx.a, "big.bin", &data);
    r.sync(&[]).ok();
    let sigs = |r: &Remote| list(&r.fx.b, ".fedsync/sigs");
    // An edit: the client hands the new file's signatures over with it.
    data[12_000_000..12_001_024].copy_from_slice(&noise(1024, 18));
    fx.write(&fx.a, "big.bin", &data);
    let out = r.sync(&[]);
    out.ok();
    assert_eq!(read_bytes(&fx.b, "big.bin"), data);
    assert_eq!(sigs(&r).len(), 1, "{:?}", sigs(&r));
    // Insertions right at and just before a segment boundary: the chunks after them are
    // found again, so only about the inserted bytes cross.
    for (at, seed) in [(8 << 20, 19), ((16 << 20) - 300, 20)] {
        data.splice(at..at, noise(777, seed));
        fx.write(&fx.a, "big.bin", &data);
        let out = r.sync(&[]);
        out.ok();
        let (sent, received) = wire(&out);
        assert!(
            sent < 200_000,
            "sent {sent} for a 777-byte insertion: {out:?}"
        );
        assert!(received < 100_000, "received {received}: {out:?}");
        assert_eq!(read_bytes(&fx.b, "big.bin"), data);
    }
    assert_eq!(sigs(&r).len(), 1, "{:?}", sigs(&r));
    // Removed on the remote side with the file.
    std::fs::remove_file(fx.a.join("big.bin")).unwrap();
    r.sync(&["--force"]).ok();
    assert!(!exists(&fx.b, "big.bin"));
    assert!(sigs(&r).is_empty(), "{:?}", sigs(&r));
}

#[test]
fn appending_sends_only_the_tail() {
    let r = Remote::new();
    let fx = &r.fx;
    let mut log = noise(5 << 20, 3);
    fx.write(&fx.a, "app.log", &log);
    r.sync(&[]).ok();
    let tail = noise(100_000, 4);
    log.extend_from_slice(&tail);
    fx.append(&fx.a, "app.log", &tail);
    let out = r.sync(&[]);
    out.ok();
    let (sent, _) = wire(&out);
    assert!(
        sent < 100_000 + 10_000,
        "sent {sent} for a 100 KB append: {out:?}"
    );
    assert_eq!(read_bytes(&fx.b, "app.log"), log);
    // And the other way.
    let tail = noise(50_000, 5);
    log.extend_from_slice(&tail);
    fx.append(&fx.b, "app.log", &tail);
    let out = r.sync(&[]);
    out.ok();
    let (_, received) = wire(&out);
    assert!(received < 50_000 + 10_000, "received {received}: {out:?}");
    assert_eq!(read_bytes(&fx.a, "app.log"), log);
}

/// Cut the connection at several points of a large transfer, in each direction: never a
/// corrupt or partial file under its name, and each run resumes from what arrived.
#[test]
fn a_cut_transport_resumes_and_never_leaves_a_torn_file() {
    let size = 20usize << 20;
    for (dir, var) in [("push", "CUT_IN"), ("pull", "CUT_OUT")] {
        let r = Remote::new();
        let fx = &r.fx;
        fx.write(&fx.a, "seed.txt", "x\n");
        r.sync(&[]).ok();
        let data = noise(size, 11);
        let (src, dst) = if dir == "push" {
            (&fx.a, &fx.b)
        } else {
            (&fx.b, &fx.a)
        };
        fx.write(src, "big.bin", &data);
        let mut kept = 0u64;
        for cut in [6_000_000u64, 14_000_000] {
            let out = r.sync_env(&[], &[(var, &cut.to_string())]);
            assert_ne!(out.code, 0, "{dir}: a cut run cannot succeed: {out:?}");
            assert!(!exists(dst, "big.bin"), "{dir}: a partial file is visible");
            let partials: Vec<u64> = temp_files(dst)
                .into_iter()
                .filter(|n| n.starts_with("partial-"))
                .map(|n| {
                    std::fs::metadata(dst.join(".fedsync/tmp").join(n))
                        .unwrap()
                        .len()
                })
                .collect();
            let most = partials.iter().copied().max().unwrap_or(0);
            assert!(
                most > kept,
                "{dir}: the cut run at {cut} kept nothing new ({partials:?})"
            );
            kept = most;
        }
        let out = r.sync(&[]);
        out.ok();
        let (sent, received) = wire(&out);
        let moved = if dir == "push" { sent } else { received };
        assert!(
            moved < size as u64 - kept + 1_000_000,
            "{dir}: the resumed run moved {moved} of {size} bytes though {kept} had arrived: {out:?}"
        );
        assert_eq!(read_bytes(dst, "big.bin"), data, "{dir}");
        assert!(
            !temp_files(dst).iter().any(|n| n.starts_with("partial-")),
            "{dir}: partial left after completion: {:?}",
            temp_files(dst)
        );
    }
}

/// A fake agent (Python, uncompressed protocol) that lists a path escaping the root.
const HOSTILE_AGENT: &str = r#"
import sys, struct
inp, out = sys.stdin.buffer, sys.stdout.buffer
def varint(n):
    b = bytearray()
    while True:
        x = n & 0x7f
        n >>= 7
        if n:
            b.append(x | 0x80)
        else:
            b.append(x)
            return bytes(b)
def s(t):
    t = t.encode()
    return varint(len(t)) + t
def zz(n):
    return varint((n << 1) ^ (n >> 63))
def frame(i, body):
    p = varint(i) + body
    out.write(struct.pack('<I', len(p)) + p)
    out.flush()
def rvarint(b, i):
    n = sh = 0
    while True:
        x = b[i]; i += 1
        n |= (x & 0x7f) << sh; sh += 7
        if not x & 0x80:
            return n, i
out.write(b"FEDSYNC-AGENT 1 9.9.9 cdc1\n"); out.flush()
inp.readline()
out.write(b"FEDSYNC-OK cdc1\n"); out.flush()
path = sys.argv[1]
while True:
    h = inp.read(4)
    if len(h) < 4:
        break
    body = inp.read(struct.unpack('<I', h)[0])
    i, k = rvarint(body, 0)
    v, k = rvarint(body, k)
    if v == 0:    # Probe -> Marked
        frame(i, varint(2) + varint(2) + s("0123456789abcdef0123456789abcdef"))
    elif v == 3:  # Scan -> one file at a hostile path, then the end
        ent = bytes([0]) + varint(5) + zz(1600000000000000000) + varint(0o644) + b"\x01" + b"\x07" * 32 + b"\x00" + b"\x00"
        frame(i, varint(4) + varint(1) + s(path) + ent)
        frame(i, varint(5) + varint(0) + varint(1) + varint(5) + zz(1))
    elif v == 23: # Bye
        frame(i, varint(0))
        break
    else:         # anything else: an error
        frame(i, varint(1) + varint(5) + s("") + s("no") + varint(0))
"#;

#[test]
fn a_hostile_agent_cannot_make_the_client_write_outside_the_tree() {
    if std::process::Command::new("python3")
        .arg("-c")
        .arg("1")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: python3 not installed (needed for the fake agent)");
        return;
    }
    for evil in ["../escaped.txt", "/tmp/abs.txt", ".fedsync/id", "a/../../x"] {
        let r = Remote::new();
        let fx = &r.fx;
        let agent = fx.dir.join("evil-agent.py");
        std::fs::write(&agent, HOSTILE_AGENT).unwrap();
        let ssh = fx.dir.join("evil-ssh");
        write_exec(
            &ssh,
            &format!("#!/bin/sh\nexec python3 {} '{evil}'\n", agent.display()),
        );
        fx.write(&fx.a, "mine.txt", "mine\n");
        let url = r.url();
        let out = r.run(
            &["sync", fx.a_str(), &url],
            &[("FEDSYNC_SSH", ssh.to_str().unwrap())],
        );
        assert_eq!(out.code, 3, "{evil}: {out:?}");
        assert!(out.all().contains("refused"), "{evil}: {out:?}");
        assert!(!fx.dir.join("escaped.txt").exists());
        assert!(!Path::new("/tmp/abs.txt").exists());
        assert_eq!(read(&fx.a, "mine.txt"), "mine\n");
        assert_eq!(list(&fx.a, ""), vec!["mine.txt"]);
    }
}

#[test]
fn a_protocol_mismatch_names_both_versions() {
    let r = Remote::new();
    let fx = &r.fx;
    let ssh = fx.dir.join("old-ssh");
    write_exec(
        &ssh,
        "#!/bin/sh\necho 'FEDSYNC-AGENT 999 7.0.0 zstd'\nsleep 1\n",
    );
    fx.write(&fx.a, "x.txt", "x\n");
    let url = r.url();
    let out = r.run(
        &["sync", fx.a_str(), &url],
        &[("FEDSYNC_SSH", ssh.to_str().unwrap())],
    );
    out.code(3);
    let all = out.all();
    assert!(
        all.contains("protocol 999") && all.contains("7.0.0"),
        "{out:?}"
    );
    assert!(all.contains("protocol 1"), "{out:?}");
    assert!(all.contains("same fedsync version"), "{out:?}");
}

#[test]
fn missing_fedsync_and_unreachable_hosts_are_explained() {
    let r = Remote::new();
    let fx = &r.fx;
    fx.write(&fx.a, "x.txt", "x\n");
    let url = r.url();
    // The remote shell cannot find the program.
    let out = r.run(&["sync", fx.a_str(), &url], &[("PATH", "/usr/bin:/bin")]);
    out.code(3);
    assert!(out.all().contains("not installed"), "{out:?}");
    assert!(out.all().contains("--deploy-agent"), "{out:?}");
    // ssh itself fails (exit 255, as for an unreachable host).
    let ssh = fx.dir.join("down-ssh");
    write_exec(
        &ssh,
        "#!/bin/sh\necho 'ssh: connect to host testhost port 22: Connection refused' >&2\nexit 255\n",
    );
    let out = r.run(
        &["sync", fx.a_str(), &url],
        &[("FEDSYNC_SSH", ssh.to_str().unwrap())],
    );
    out.code(3);
    assert!(out.all().contains("cannot reach testhost"), "{out:?}");
    assert!(out.all().contains("Connection refused"), "{out:?}");
    // Authentication failure.
    write_exec(
        &ssh,
        "#!/bin/sh\necho 'me@testhost: Permission denied (publickey).' >&2\nexit 255\n",
    );
    let out = r.run(
        &["sync", fx.a_str(), &url],
        &[("FEDSYNC_SSH", ssh.to_str().unwrap())],
    );
    out.code(3);
    assert!(
        out.all().contains("authentication to testhost failed"),
        "{out:?}"
    );
    assert_eq!(list(&fx.a, ""), vec!["x.txt"]);
}

#[test]
fn deploy_agent_uploads_this_binary_when_the_remote_has_none() {
    let r = Remote::new();
    let fx = &r.fx;
    fx.write(&fx.a, "x.txt", "x\n");
    let home = fx.dir.join("remote-home");
    std::fs::create_dir_all(&home).unwrap();
    let url = r.url();
    let home_s = home.to_str().unwrap();
    let out = r.run(
        &["sync", fx.a_str(), &url, "--deploy-agent"],
        &[("PATH", "/usr/bin:/bin"), ("HOME", home_s)],
    );
    out.ok();
    let deployed = home
        .join(".cache/fedsync")
        .join(format!("agent-{}", env!("CARGO_PKG_VERSION")));
    assert!(deployed.is_file(), "{out:?}");
    assert_eq!(read(&fx.b, "x.txt"), "x\n");
}

/// A real sshd on 127.0.0.1 with its own host key and user key (no root needed).
#[test]
fn sync_through_a_real_sshd() {
    let sshd = Path::new("/usr/sbin/sshd");
    if !sshd.exists() || which("ssh").is_none() || which("ssh-keygen").is_none() {
        eprintln!("SKIPPED: sshd not installed (apt-get install openssh-server openssh-client)");
        return;
    }
    let r = Remote::new();
    let fx = &r.fx;
    let d = fx.dir.join("sshd");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    for (name, kind) in [("host_key", "ed25519"), ("user_key", "ed25519")] {
        let st = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", kind, "-N", "", "-f"])
            .arg(d.join(name))
            .status()
            .unwrap();
        assert!(st.success());
    }
    std::fs::copy(d.join("user_key.pub"), d.join("authorized_keys")).unwrap();
    let port = free_port();
    let user = std::env::var("USER")
        .ok()
        .or_else(|| {
            std::process::Command::new("id")
                .arg("-un")
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        })
        .unwrap();
    let config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {pid}\nAuthorizedKeysFile {ak}\n\
         StrictModes no\nUsePAM no\nPasswordAuthentication no\nPubkeyAuthentication yes\n\
         PermitRootLogin yes\nAllowUsers {user}\n",
        hk = d.join("host_key").display(),
        pid = d.join("sshd.pid").display(),
        ak = d.join("authorized_keys").display(),
    );
    std::fs::write(d.join("sshd_config"), config).unwrap();
    // sshd wants an existing privilege separation directory.
    let _ = std::fs::create_dir_all("/run/sshd");
    let mut child = std::process::Command::new(sshd)
        .arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(d.join("sshd_config"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(d.join("sshd.log")).unwrap())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _ = child.try_wait();
    let guard = Kill(child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "sshd did not start: {}",
            std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let ssh_cmd = format!(
        "ssh -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR",
        d.join("user_key").display()
    );
    let url = format!("ssh://{user}@127.0.0.1:{port}{}", fx.b_str());
    let remote_cmd = r.bin.join("fedsync");
    let profile = format!(
        "ssh = {ssh_cmd:?}\nremote_cmd = {:?}\n\n[replicas]\na = {:?}\nb = {url:?}\n",
        remote_cmd.to_str().unwrap(),
        fx.a_str()
    );
    fx.write_profile("real", &profile);
    fx.write(&fx.a, "docs/a.txt", "over real ssh\n");
    let big = noise(3 << 20, 5);
    fx.write(&fx.a, "big.bin", &big);
    let out = r.run(&["sync", "real"], &[("FEDSYNC_SSH", "")]);
    assert_eq!(
        out.code,
        0,
        "{out:?}\nsshd log:\n{}",
        std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
    );
    assert_eq!(read(&fx.b, "docs/a.txt"), "over real ssh\n");
    assert_eq!(read_bytes(&fx.b, "big.bin"), big);
    fx.write(&fx.b, "docs/a.txt", "changed remotely\n");
    let out = r.run(&["sync", "real"], &[("FEDSYNC_SSH", "")]);
    out.ok();
    assert_eq!(read(&fx.a, "docs/a.txt"), "changed remotely\n");
    // A wrong key: authentication fails with a clear message, exit 3.
    let bad = profile.replace("user_key", "host_key");
    fx.write_profile("bad", &bad);
    let out = r.run(&["sync", "bad"], &[("FEDSYNC_SSH", "")]);
    out.code(3);
    assert!(out.all().contains("authentication"), "{out:?}");
    drop(guard);
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(cmd))
            .find(|c| c.is_file())
    })
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let p = l.local_addr().unwrap().port();
    drop(l);
    p
}

// ---------------------------------------------------------------------------------------
// Versions of a remote replica: rollback, versions, restore, prune

/// (content, mtime) of every file below `root` (without `.fedsync`).
fn files_with_mtimes(root: &Path) -> Vec<(String, Vec<u8>, (i64, u32))> {
    contents(root)
        .keys()
        .filter(|k| root.join(k).is_file())
        .map(|k| {
            let p = root.join(k);
            (k.clone(), std::fs::read(&p).unwrap(), mtime_of(&p))
        })
        .collect()
}

#[test]
fn rollback_restores_overwritten_and_deleted_remote_files_byte_exactly() {
    let r = Remote::new();
    let fx = &r.fx;
    r.profile("p", "", "");
    let big = noise(600_000, 21);
    fx.write(&fx.a, "docs/big.bin", &big);
    fx.write(&fx.a, "docs/small.txt", "small, first\n");
    fx.write(&fx.a, "gone.txt", "deleted later\n");
    fx.write(&fx.a, "kept.txt", "untouched\n");
    r.run(&["sync", "p"], &[]).ok();
    let before = files_with_mtimes(&fx.b);

    // The run under test overwrites, deletes and creates on the remote side.
    let mut big2 = big.clone();
    big2[100_000..101_000].copy_from_slice(&noise(1000, 22));
    fx.write(&fx.a, "docs/big.bin", &big2);
    fx.write(&fx.a, "docs/small.txt", "small, second\n");
    std::fs::remove_file(fx.a.join("gone.txt")).unwrap();
    fx.write(&fx.a, "new/created.txt", "created\n");
    r.run(&["sync", "p"], &[]).ok();
    assert_eq!(read_bytes(&fx.b, "docs/big.bin"), big2);
    assert!(!exists(&fx.b, "gone.txt"));
    let a_after_run = files_with_mtimes(&fx.a);

    let out = r.run(&["rollback", "p", "--json"], &[]);
    out.ok();
    let v = out.json();
    assert_eq!(v["failed"].as_array().map(Vec::len), Some(0), "{v:#}");
    assert!(v["done"].as_array().unwrap().len() >= 4, "{v:#}");
    // The remote files are back, byte for byte and with their mtimes; nothing left over.
    let mut after = files_with_mtimes(&fx.b);
    after.retain(|(p, _, _)| !p.starts_with("new"));
    assert_eq!(after, before);
    assert!(!exists(&fx.b, "new/created.txt"));
    assert!(temp_files(&fx.b).is_empty(), "{:?}", temp_files(&fx.b));
    // The rollback changed only the replica the run changed.
    assert_eq!(files_with_mtimes(&fx.a), a_after_run);
    // What the rollback replaced on the remote side is kept there as versions.
    let vs = versions(&fx.b);
    assert!(
        vs.iter()
            .any(|(run, p)| run == v["run"].as_str().unwrap() && p == "docs/big.bin"),
        "{vs:?}"
    );

    // And the rollback itself can be rolled back.
    r.run(&["rollback", "p"], &[]).ok();
    assert_eq!(read_bytes(&fx.b, "docs/big.bin"), big2);
    assert_eq!(read(&fx.b, "docs/small.txt"), "small, second\n");
    assert!(!exists(&fx.b, "gone.txt"));
    assert_eq!(read(&fx.b, "new/created.txt"), "created\n");
}

#[test]
fn versions_lists_and_restore_puts_back_a_remote_version() {
    let r = Remote::new();
    let fx = &r.fx;
    r.profile("p", "", "");
    for text in ["one\n", "two\n", "three\n"] {
        fx.write(&fx.a, "notes/n.md", text);
        r.run(&["sync", "p"], &[]).ok();
    }
    assert_eq!(read(&fx.b, "notes/n.md"), "three\n");
    let out = r.run(&["versions", "p", "notes/n.md", "--json"], &[]);
    out.ok();
    let list = out.json();
    let rows = list.as_array().unwrap();
    // "one" and "two" were overwritten on both sides: two versions on each.
    let remote: Vec<&Value> = rows.iter().filter(|v| v["replica"] == "b").collect();
    assert_eq!(remote.len(), 2, "{list:#}");
    for row in &remote {
        assert_eq!(row["path"], "notes/n.md");
        assert!(row["location"]
            .as_str()
            .unwrap()
            .starts_with(".fedsync/versions/"));
    }
    // Newest first: the oldest is "one".
    let oldest = remote[1]["version"].as_str().unwrap().to_string();
    let human = r.run(&["versions", "p", "notes/n.md"], &[]);
    human.ok();
    assert!(human.stdout.contains(&oldest), "{human:?}");

    let out = r.run(
        &[
            "restore",
            "p",
            "notes/n.md",
            "--version",
            &oldest,
            "--replica",
            "b",
            "--json",
        ],
        &[],
    );
    out.ok();
    assert_eq!(read(&fx.b, "notes/n.md"), "one\n");
    assert_eq!(read(&fx.a, "notes/n.md"), "three\n");
    // The restore is itself kept: "three" is now a version on the remote side.
    let out = r.run(&["versions", "p", "notes/n.md", "--json"], &[]);
    let n = out
        .json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["replica"] == "b")
        .count();
    assert_eq!(n, 3, "{out:?}");
    // The next sync carries the restored content to the other side.
    r.run(&["sync", "p"], &[]).ok();
    assert_eq!(read(&fx.a, "notes/n.md"), "one\n");
}

#[test]
fn prune_removes_remote_versions() {
    let r = Remote::new();
    let fx = &r.fx;
    r.profile("p", "", "");
    for i in 0..4 {
        fx.write(&fx.a, "f.txt", format!("version {i}\n"));
        fx.write(&fx.a, "sub/g.txt", format!("g {i}\n"));
        r.run(&["sync", "p"], &[]).ok();
    }
    let kept = |root: &Path, p: &str| versions(root).iter().filter(|(_, q)| q == p).count();
    assert_eq!(kept(&fx.b, "f.txt"), 3);
    assert_eq!(kept(&fx.b, "sub/g.txt"), 3);
    r.profile("p", "versions = { keep = 1 }", "");
    let out = r.run(&["prune", "p", "--dry-run", "--json"], &[]);
    out.ok();
    // Two of each file on b (a, the source of every change, kept none).
    assert_eq!(out.json()["removed"], 4, "{out:?}");
    assert_eq!(kept(&fx.b, "f.txt"), 3, "a dry run removes nothing");
    let out = r.run(&["prune", "p", "--json"], &[]);
    out.ok();
    let v = out.json();
    assert_eq!(v["errors"].as_array().map(Vec::len), Some(0), "{v:#}");
    assert_eq!(kept(&fx.b, "f.txt"), 1);
    assert_eq!(kept(&fx.b, "sub/g.txt"), 1);
    // The newest one stays.
    let (run, _) = versions(&fx.b)
        .into_iter()
        .find(|(_, p)| p == "f.txt")
        .unwrap();
    assert_eq!(version_content(&fx.b, &run, "f.txt"), "version 2\n");
}

// ---------------------------------------------------------------------------------------
// Append-only logs appended in place on the remote side

const APPEND_RULE: &str = "[[rule]]\npaths = [\"logs/*.log\"]\nmerge = \"append\"\n";

fn inode(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().ino()
}

#[test]
fn a_grown_log_is_appended_in_place_on_the_remote_side_and_rollback_cuts_it_back() {
    let r = Remote::new();
    let fx = &r.fx;
    r.profile("p", "", APPEND_RULE);
    let mut log = noise(5 << 20, 31);
    fx.write(&fx.a, "logs/app.log", &log);
    r.run(&["sync", "p"], &[]).ok();
    let ino = inode(&fx.b.join("logs/app.log"));
    let old = log.clone();

    let tail = noise(1 << 20, 32);
    log.extend_from_slice(&tail);
    fx.append(&fx.a, "logs/app.log", &tail);
    let out = r.run(&["sync", "p", "--json"], &[]);
    out.ok();
    let (sent, _) = wire(&out);
    assert!(
        sent < (1 << 20) + 64_000,
        "sent {sent} for a 1 MiB append: {out:?}"
    );
    assert_eq!(read_bytes(&fx.b, "logs/app.log"), log);
    // In place: the same file, no copy of the old content kept as a version.
    assert_eq!(
        inode(&fx.b.join("logs/app.log")),
        ino,
        "the log was rewritten"
    );
    assert!(
        !versions(&fx.b).iter().any(|(_, p)| p == "logs/app.log"),
        "{:?}",
        versions(&fx.b)
    );
    assert_eq!(
        mtime_of(&fx.a.join("logs/app.log")),
        mtime_of(&fx.b.join("logs/app.log"))
    );
    assert!(temp_files(&fx.b).is_empty(), "{:?}", temp_files(&fx.b));
    let nothing = r.run(&["sync", "p"], &[]);
    nothing.ok();
    assert!(nothing.stdout.contains("nothing to do"), "{nothing:?}");

    // Rollback cuts the remote log back to its old length (the longer one is kept).
    let out = r.run(&["rollback", "p", "--json"], &[]);
    out.ok();
    assert_eq!(read_bytes(&fx.b, "logs/app.log"), old);
    assert!(versions(&fx.b).iter().any(|(_, p)| p == "logs/app.log"));
}

/// The agent's crash point after each tail piece it writes (1 MiB each).
const PIECE_CRASH: &str = "2";

#[test]
fn an_append_cut_short_is_undone_and_the_next_run_completes_it() {
    for how in ["transport cut", "agent killed"] {
        let r = Remote::new();
        let fx = &r.fx;
        r.profile("p", "", APPEND_RULE);
        let mut log = noise(3 << 20, 41);
        fx.write(&fx.a, "logs/app.log", &log);
        r.run(&["sync", "p"], &[]).ok();
        let old = log.clone();
        let old_mtime = mtime_of(&fx.b.join("logs/app.log"));
        let ino = inode(&fx.b.join("logs/app.log"));
        let tail = noise(4 << 20, 42);
        log.extend_from_slice(&tail);
        fx.append(&fx.a, "logs/app.log", &tail);

        let env: &[(&str, &str)] = if how == "transport cut" {
            &[("CUT_IN", "2000000")]
        } else {
            &[("AGENT_CRASH_AT", PIECE_CRASH)]
        };
        let out = r.run(&["sync", "p"], env);
        assert_ne!(out.code, 0, "{how}: the cut run cannot succeed: {out:?}");
        let len = std::fs::metadata(fx.b.join("logs/app.log")).unwrap().len();
        if how == "transport cut" {
            // The agent saw the end of its input and cut the log back itself.
            assert_eq!(read_bytes(&fx.b, "logs/app.log"), old, "{how}");
            assert_eq!(mtime_of(&fx.b.join("logs/app.log")), old_mtime, "{how}");
            assert!(
                temp_files(&fx.b).is_empty(),
                "{how}: {:?}",
                temp_files(&fx.b)
            );
        } else {
            // A killed agent leaves a half-written tail and its journal.
            assert!(
                len > old.len() as u64 && len < log.len() as u64,
                "{how}: {len} bytes: {out:?}"
            );
            assert!(
                temp_files(&fx.b).iter().any(|n| n.starts_with("append-")),
                "{how}: {:?}",
                temp_files(&fx.b)
            );
        }
        let out = r.run(&["sync", "p"], &[]);
        out.ok();
        assert_eq!(read_bytes(&fx.b, "logs/app.log"), log, "{how}");
        assert_eq!(inode(&fx.b.join("logs/app.log")), ino, "{how}");
        assert!(
            temp_files(&fx.b).is_empty(),
            "{how}: {:?}",
            temp_files(&fx.b)
        );
        let (sent, _) = wire(&out);
        assert!(sent < (4 << 20) + 100_000, "{how}: sent {sent}");
    }
}

// ---------------------------------------------------------------------------------------
// Merges with the remote side (merge = "union" | "text" | "append")

const MERGE_RULES: &str = "[[rule]]\npaths = [\"lists/*.txt\"]\nmerge = \"union\"\n\n\
    [[rule]]\npaths = [\"notes/**\"]\nmerge = \"text\"\n\n\
    [[rule]]\npaths = [\"logs/*.jsonl\"]\nmerge = \"append\"\n";

/// Both replicas hold exactly `want` at `rel`, and each kept its old copy as a version.
#[track_caller]
fn merged_on_both(r: &Remote, rel: &str, want: &str) {
    for root in [&r.fx.a, &r.fx.b] {
        assert_eq!(read(root, rel), want, "{rel} on {}", root.display());
        assert!(
            versions(root).iter().any(|(_, p)| p == rel),
            "{rel}: no version kept on {}: {:?}",
            root.display(),
            versions(root)
        );
    }
}

#[test]
fn merges_with_an_ssh_replica_write_the_result_to_both_sides() {
    let r = Remote::new();
    let fx = &r.fx;
    r.profile("p", "", MERGE_RULES);
    fx.write(&fx.a, "lists/words.txt", "alpha\nbeta\ngamma\n");
    fx.write(&fx.a, "notes/plan.md", "l1\nl2\nl3\nl4\nl5\nl6\n");
    fx.write(&fx.a, "logs/app.jsonl", "{\"n\":1}\n");
    r.run(&["sync", "p"], &[]).ok();
    assert_same_trees(&r);

    fx.write(&fx.a, "lists/words.txt", "alpha\ngamma\ndelta\n");
    fx.write(&fx.b, "lists/words.txt", "alpha\nzeta\nbeta\ngamma\n");
    fx.write(&fx.a, "notes/plan.md", "l1\nl2 on a\nl3\nl4\nl5\nl6\n");
    fx.write(
        &fx.b,
        "notes/plan.md",
        "l1\nl2\nl3\nl4\nl5 on b\nl6\nl7 on b\n",
    );
    fx.append(&fx.a, "logs/app.jsonl", "{\"a\":1}\n");
    fx.append(&fx.b, "logs/app.jsonl", "{\"b\":1}\n");
    let out = r.run(&["sync", "p", "--json"], &[]);
    out.ok();
    let rep = out.json();
    for p in ["lists/words.txt", "notes/plan.md", "logs/app.jsonl"] {
        let it = item(&rep, p);
        assert_eq!(it["action"], "merge", "{p}: {rep:#}");
        assert_eq!(it["outcome"]["state"], "done", "{p}: {rep:#}");
    }
    assert_eq!(counts(&rep)["merged"], 3, "{rep:#}");
    assert_eq!(counts(&rep)["conflicts"], 0, "{rep:#}");
    merged_on_both(&r, "lists/words.txt", "alpha\nzeta\ngamma\ndelta\n");
    merged_on_both(
        &r,
        "notes/plan.md",
        "l1\nl2 on a\nl3\nl4\nl5 on b\nl6\nl7 on b\n",
    );
    merged_on_both(&r, "logs/app.jsonl", "{\"n\":1}\n{\"a\":1}\n{\"b\":1}\n");
    // No conflict copies, no temporary files left on either side.
    assert_eq!(list(&fx.a, "notes"), vec!["plan.md"]);
    assert_eq!(list(&fx.b, "notes"), vec!["plan.md"]);
    assert_same_trees(&r);
    assert!(temp_files(&fx.a).is_empty(), "{:?}", temp_files(&fx.a));
    assert!(temp_files(&fx.b).is_empty(), "{:?}", temp_files(&fx.b));
    let again = r.run(&["sync", "p"], &[]);
    again.ok();
    assert!(again.stdout.contains("nothing to do"), "{again:?}");

    // The merged text is the base of the next three-way merge, read back from the agent.
    fx.write(
        &fx.a,
        "notes/plan.md",
        "l0 on a\nl1\nl2 on a\nl3\nl4\nl5 on b\nl6\nl7 on b\n",
    );
    fx.write(
        &fx.b,
        "notes/plan.md",
        "l1\nl2 on a\nl3\nl4 on b\nl5 on b\nl6\nl7 on b\n",
    );
    let out = r.run(&["sync", "p", "--json"], &[]);
    out.ok();
    assert_eq!(item(&out.json(), "notes/plan.md")["action"], "merge");
    for root in [&fx.a, &fx.b] {
        assert_eq!(
            read(root, "notes/plan.md"),
            "l0 on a\nl1\nl2 on a\nl3\nl4 on b\nl5 on b\nl6\nl7 on b\n"
        );
    }
}

#[test]
fn overlapping_text_edits_with_an_ssh_replica_get_markers_on_both_sides() {
    let r = Remote::new();
    let fx = &r.fx;
    r.profile("p", "", MERGE_RULES);
    fx.write(&fx.a, "notes/plan.md", "l1\nl2\nl3\n");
    r.run(&["sync", "p"], &[]).ok();
    fx.write(&fx.a, "notes/plan.md", "l1\nA2\nl3\n");
    fx.write(&fx.b, "notes/plan.md", "l1\nB2\nl3\n");
    let out = r.run(&["sync", "p", "--json"], &[]);
    out.code(1);
    let rep = out.json();
    let it = item(&rep, "notes/plan.md");
    assert_eq!(it["action"], "merge", "{rep:#}");
    assert_eq!(it["outcome"]["state"], "conflict", "{rep:#}");
    merged_on_both(
        &r,
        "notes/plan.md",
        "l1\n<<<<<<< a\nA2\n||||||| base\nl2\n=======\nB2\n>>>>>>> b\nl3\n",
    );
    assert_eq!(list(&fx.b, "notes"), vec!["plan.md"], "markers, not a copy");
}

#[test]
fn a_large_log_on_the_ssh_side_that_only_grew_further_is_fast_forwarded() {
    // Larger than the merge limit (64 MiB): decided from the agent's prefix hash.
    let r = Remote::new();
    let fx = &r.fx;
    r.profile("p", "", MERGE_RULES);
    let mut log = noise(65 << 20, 51);
    log.push(b'\n');
    fx.write(&fx.a, "logs/big.jsonl", &log);
    r.run(&["sync", "p"], &[]).ok();
    // Both appended the same first record; the remote side one more.
    fx.append(&fx.a, "logs/big.jsonl", "{\"x\":1}\n");
    fx.append(&fx.b, "logs/big.jsonl", "{\"x\":1}\n{\"x\":2}\n");
    let out = r.run(&["sync", "p", "--json"], &[]);
    out.ok();
    let rep = out.json();
    let it = item(&rep, "logs/big.jsonl");
    assert_eq!(it["action"], "copy", "{rep:#}");
    assert!(
        it["why"].as_str().unwrap().contains("fast-forward"),
        "{rep:#}"
    );
    log.extend_from_slice(b"{\"x\":1}\n{\"x\":2}\n");
    assert_eq!(read_bytes(&fx.a, "logs/big.jsonl"), log);
    assert_eq!(read_bytes(&fx.b, "logs/big.jsonl"), log);
    let (_, received) = wire(&out);
    assert!(received < 1 << 20, "received {received}: {out:?}");
}

#[test]
fn a_name_the_remote_side_cannot_carry_is_reported_and_the_rest_syncs() {
    use std::os::unix::ffi::OsStrExt;
    let r = Remote::new();
    let fx = &r.fx;
    fx.write(&fx.a, "mine.txt", "mine\n");
    fx.write(&fx.b, "docs/theirs.txt", "theirs\n");
    let bad =
        fx.b.join("docs")
            .join(std::ffi::OsStr::from_bytes(b"bad\xff.txt"));
    std::fs::write(&bad, "not utf-8\n").unwrap();
    fx.write(&fx.b, "back\\slash.txt", "backslash\n");
    let out = r.sync(&[]);
    // Not a hostile path: the agent's report of a bad name is an ordinary skipped item.
    assert_eq!(out.code, 1, "{out:?}");
    assert!(!out.all().contains("refused"), "{out:?}");
    assert!(out.all().contains(r"bad\xff.txt"), "{out:?}");
    assert!(out.all().contains(r"back\\slash.txt"), "{out:?}");
    assert_eq!(read(&fx.a, "docs/theirs.txt"), "theirs\n");
    assert_eq!(read(&fx.b, "mine.txt"), "mine\n");
    assert_eq!(list(&fx.a, "docs"), vec!["theirs.txt"]);
    assert_eq!(std::fs::read_to_string(&bad).unwrap(), "not utf-8\n");
}
