//! Remote replicas: `ssh://[user@]host[:port]/path`, served by `fedsync serve ROOT` on the
//! other machine and spoken to over ssh's stdin/stdout.
//!
//! - [`proto`]: handshake, frames, messages (versioned, zstd-compressed, pipelined).
//! - [`delta`]: content-defined chunk signatures and the matching that decides what to send.
//! - [`agent`]: the server loop, wrapping the same [`LocalReplica`](crate::replica::local::LocalReplica)
//!   code that serves local folders.
//! - [`client`]: [`RemoteReplica`], the `Replica` the engine talks to.
//! - [`sigcache`]: the agent's cache of the signatures of its large files.
//!
//! Interrupted transfers resume: the receiving side writes new content to
//! `.fedsync/tmp/partial-<content hash>` (never under the real name), keeps it when the
//! connection is cut, and uses it as a basis the next time the same content is sent.

pub mod agent;
pub mod client;
pub mod delta;
pub mod proto;
pub mod sigcache;

pub use client::{
    reuse_sessions_on_this_thread, RemoteReplica, RemoteSession, RemoteWatch, WatchEvent,
};

use crate::entry::Hash;
use crate::replica::ReplicaError;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};

/// Files at most this large are sent whole and pipelined (no delta, no round trip).
pub const SMALL_FILE: u64 = 256 * 1024;

/// Name prefix of resumable partial transfers in `.fedsync/tmp` (kept by `clean_temp`).
pub const PARTIAL_PREFIX: &str = "partial-";

/// How long an unused partial transfer is kept before `clean_temp` removes it.
pub const PARTIAL_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

static DEPLOY_AGENT: AtomicBool = AtomicBool::new(false);

/// `--deploy-agent`: upload this binary when the remote host has no fedsync.
pub fn set_deploy_agent(on: bool) {
    DEPLOY_AGENT.store(on, Ordering::Relaxed);
}

/// How to reach remote hosts.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The ssh command and its options (`FEDSYNC_SSH`, else the profile's `ssh`, else `ssh`).
    pub ssh: Vec<String>,
    /// The program that runs fedsync on the remote host.
    pub remote_cmd: String,
    pub deploy_agent: bool,
}

impl Settings {
    /// From the environment and (when given) a profile's `ssh` / `remote_cmd` keys.
    pub fn new(profile_ssh: Option<&str>, profile_remote_cmd: Option<&str>) -> Settings {
        let env = std::env::var("FEDSYNC_SSH")
            .ok()
            .filter(|s| !s.trim().is_empty());
        let ssh = env
            .as_deref()
            .or(profile_ssh)
            .unwrap_or("ssh")
            .split_whitespace()
            .map(str::to_string)
            .collect();
        Settings {
            ssh,
            remote_cmd: profile_remote_cmd.unwrap_or("fedsync").to_string(),
            deploy_agent: DEPLOY_AGENT.load(Ordering::Relaxed),
        }
    }
}

/// A random 16-hex-digit temp token (the form `LocalReplica` uses too).
pub(crate) fn new_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

pub(crate) fn valid_token(t: &str) -> bool {
    t.len() == 16 && t.bytes().all(|b| b.is_ascii_hexdigit())
}

/// An output file for received content, resumable when the content hash is known.
pub(crate) struct Receiving {
    pub out: File,
    pub out_path: PathBuf,
    /// What an earlier, interrupted transfer of the same content left (used as a basis).
    pub prev: Option<(File, PathBuf)>,
}

impl Receiving {
    /// Open `tmp/partial-<hash>` for writing; an earlier partial of the same content
    /// becomes `partial-<hash>.basis` (of two leftovers, the longer one is kept).
    pub fn begin(tmp: &Path, hash: Option<Hash>, resumable: bool) -> io::Result<Receiving> {
        fs::create_dir_all(tmp)?;
        let fresh = |tmp: &Path| -> io::Result<Receiving> {
            let out_path = tmp.join(format!("x-{}", new_token()));
            let out = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&out_path)?;
            Ok(Receiving {
                out,
                out_path,
                prev: None,
            })
        };
        let Some(hash) = hash.filter(|_| resumable) else {
            return fresh(tmp);
        };
        let out_path = tmp.join(format!("{PARTIAL_PREFIX}{}", hash.to_hex()));
        let basis_path = tmp.join(format!("{PARTIAL_PREFIX}{}.basis", hash.to_hex()));
        let len = |p: &Path| {
            fs::symlink_metadata(p)
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.len())
        };
        match (len(&out_path), len(&basis_path)) {
            (Some(a), Some(b)) if a > b => fs::rename(&out_path, &basis_path)?,
            (Some(_), Some(_)) => fs::remove_file(&out_path)?,
            (Some(_), None) => fs::rename(&out_path, &basis_path)?,
            _ => {}
        }
        let out = match fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&out_path)
        {
            Ok(f) => f,
            // Another transfer of the same content is writing it: do without resuming.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return fresh(tmp),
            Err(e) => return Err(e),
        };
        let prev = File::open(&basis_path).ok().map(|f| (f, basis_path));
        Ok(Receiving {
            out,
            out_path,
            prev,
        })
    }

    /// The content was verified: give it its token name, drop the old partial.
    pub fn complete(out_path: &Path, prev: Option<&Path>, tmp: &Path) -> io::Result<String> {
        let token = new_token();
        fs::rename(out_path, tmp.join(&token))?;
        if let Some(p) = prev {
            let _ = fs::remove_file(p);
        }
        Ok(token)
    }

    /// The content was wrong: nothing of it is worth keeping.
    pub fn discard(out_path: &Path, prev: Option<&Path>) {
        let _ = fs::remove_file(out_path);
        if let Some(p) = prev {
            let _ = fs::remove_file(p);
        }
    }
}

/// Set mode and mtime of a staged file (as `LocalReplica::stage_file` does).
pub(crate) fn set_meta(f: &File, mode: u32, mtime: i64) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    let t = filetime::FileTime::from_unix_time(
        mtime.div_euclid(1_000_000_000),
        mtime.rem_euclid(1_000_000_000) as u32,
    );
    filetime::set_file_handle_times(f, None, Some(t))
}

// ---------------------------------------------------------------------------------------
// Pulls in flight: a local replica stages files from a remote source without waiting for
// each one (SPEC: pipelined); its flush and install wait here for the ones they need.

enum PullState {
    Pending,
    Done(Result<Hash, ReplicaError>),
}

fn pulls() -> &'static (Mutex<HashMap<PathBuf, PullState>>, Condvar) {
    static P: OnceLock<(Mutex<HashMap<PathBuf, PullState>>, Condvar)> = OnceLock::new();
    P.get_or_init(|| (Mutex::new(HashMap::new()), Condvar::new()))
}

pub(crate) fn pull_started(tmp_file: PathBuf) {
    let (m, _) = pulls();
    m.lock().expect("lock").insert(tmp_file, PullState::Pending);
}

pub(crate) fn pull_done(tmp_file: &Path, r: Result<Hash, ReplicaError>) {
    let (m, cv) = pulls();
    m.lock()
        .expect("lock")
        .insert(tmp_file.to_path_buf(), PullState::Done(r));
    cv.notify_all();
}

/// Wait until every pull into `tmp_dir` has finished (before its data is made durable).
pub fn wait_pulls(tmp_dir: &Path) {
    let (m, cv) = pulls();
    let mut g = m.lock().expect("lock");
    while g
        .iter()
        .any(|(k, v)| matches!(v, PullState::Pending) && k.starts_with(tmp_dir))
    {
        g = cv.wait(g).expect("lock");
    }
}

/// The outcome of the pull that produces `tmp_file`, waiting for it; `Ok` when the file
/// was not produced by a pull at all.
pub fn take_pull(tmp_file: &Path) -> Result<(), ReplicaError> {
    let (m, cv) = pulls();
    let mut g = m.lock().expect("lock");
    loop {
        match g.get(tmp_file) {
            None => return Ok(()),
            Some(PullState::Pending) => g = cv.wait(g).expect("lock"),
            Some(PullState::Done(_)) => {
                return match g.remove(tmp_file) {
                    Some(PullState::Done(r)) => r.map(|_| ()),
                    _ => Ok(()),
                }
            }
        }
    }
}
