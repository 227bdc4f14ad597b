//! The agent's cache of group signatures, so that a large file's signature is computed
//! once, not at every transfer that uses it as a basis.
//!
//! One small file per path in `.fedsync/sigs/` (12 bytes per 256 KiB of content: about
//! 10 KB for a 200 MB file), named by a hash of the path, holding the path, the identity of
//! the file it describes (size, mtime, device, inode, ctime) and its group signatures. An
//! entry is used only while the file still has that identity: any write changes the ctime.
//!
//! Entries come from two places: group signatures the agent computed itself, and the ones a
//! client sent for the file it pushed (feature `sigs1`: the client computed them anyway to
//! find what to send). The agent cannot check the latter without reading the file, and
//! does not need to: a wrong signature only makes a later transfer copy wrong bytes, which
//! the whole-file hash check refuses, and the entry is then dropped.

use super::delta::Sig;
use crate::path::RelPath;
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Entries not written for this long are removed by `prune`.
pub const MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Largest entry read (a 16 TB file's signatures are ~800 MB; such files go without).
const MAX_ENTRY: u64 = 64 << 20;
const VERSION: u32 = 1;

/// What identifies one state of a file: any write changes the ctime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub size: u64,
    pub mtime: i64,
    pub dev: u64,
    pub ino: u64,
    pub ctime: i64,
}

impl Identity {
    pub fn of(f: &File) -> io::Result<Identity> {
        let md = f.metadata()?;
        Ok(Identity {
            size: md.len(),
            mtime: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
            dev: md.dev(),
            ino: md.ino(),
            ctime: md.ctime() * 1_000_000_000 + md.ctime_nsec(),
        })
    }

    /// From an entry the agent just wrote (None without inode identity).
    pub fn of_entry(e: &crate::entry::Entry) -> Option<Identity> {
        let st = e.stat?;
        Some(Identity {
            size: e.size,
            mtime: e.mtime,
            dev: st.dev,
            ino: st.ino,
            ctime: st.ctime,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    path: String,
    id: Identity,
    groups: Vec<Sig>,
}

/// The cache in one folder.
pub struct SigCache {
    dir: PathBuf,
}

impl SigCache {
    pub fn new(dir: PathBuf) -> SigCache {
        SigCache { dir }
    }

    fn file(&self, p: &RelPath) -> PathBuf {
        let h = blake3::hash(p.as_str().as_bytes());
        self.dir.join(&h.to_hex()[..32])
    }

    /// The group signatures of `f` (the file at `p`), if an entry has its identity.
    pub fn get(&self, p: &RelPath, f: &File) -> Option<Vec<Sig>> {
        let path = self.file(p);
        let md = fs::symlink_metadata(&path).ok()?;
        if !md.is_file() || md.len() > MAX_ENTRY {
            return None;
        }
        let bytes = fs::read(&path).ok()?;
        let s: Stored = postcard::from_bytes(&bytes).ok()?;
        let id = Identity::of(f).ok()?;
        let total: u64 = s.groups.iter().map(|g| g.len as u64).sum();
        (s.version == VERSION && s.path == p.as_str() && s.id == id && total == id.size)
            .then_some(s.groups)
    }

    /// Record `groups` for the file at `p` with identity `id` (best effort: it is a cache).
    pub fn put(&self, p: &RelPath, id: Identity, groups: Vec<Sig>) {
        let total: u64 = groups.iter().map(|g| g.len as u64).sum();
        if total != id.size {
            return;
        }
        let s = Stored {
            version: VERSION,
            path: p.as_str().to_string(),
            id,
            groups,
        };
        let Ok(bytes) = postcard::to_allocvec(&s) else {
            return;
        };
        let _ = (|| -> io::Result<()> {
            fs::create_dir_all(&self.dir)?;
            let to = self.file(p);
            let tmp = self.dir.join(format!(".tmp-{}", super::new_token()));
            fs::write(&tmp, &bytes)?;
            fs::rename(&tmp, &to).inspect_err(|_| {
                let _ = fs::remove_file(&tmp);
            })
        })();
    }

    /// Drop the entry of `p` (removed, renamed, or its signatures proved wrong).
    pub fn forget(&self, p: &RelPath) {
        let _ = fs::remove_file(self.file(p));
    }

    /// Remove entries older than `MAX_AGE` and leftovers of interrupted writes.
    pub fn prune(&self) {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return;
        };
        let now = SystemTime::now();
        for e in rd.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > MAX_AGE);
            let tmp = e.file_name().to_string_lossy().starts_with(".tmp-");
            let recent_tmp = tmp
                && e.metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| now.duration_since(t).ok())
                    .is_some_and(|age| age < Duration::from_secs(3600));
            if old || (tmp && !recent_tmp) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn an_entry_holds_only_while_the_file_is_unchanged() {
        let d = tempfile::tempdir().unwrap();
        let c = SigCache::new(d.path().join("sigs"));
        let fp = d.path().join("f");
        fs::write(&fp, vec![1u8; 1000]).unwrap();
        let f = File::open(&fp).unwrap();
        let p = RelPath::new("a/f").unwrap();
        let gs = vec![
            Sig {
                hash: [1; 8],
                len: 600,
            },
            Sig {
                hash: [2; 8],
                len: 400,
            },
        ];
        assert_eq!(c.get(&p, &f), None);
        // Signatures that do not cover the file are not kept.
        c.put(&p, Identity::of(&f).unwrap(), gs[..1].to_vec());
        assert_eq!(c.get(&p, &f), None);
        c.put(&p, Identity::of(&f).unwrap(), gs.clone());
        assert_eq!(c.get(&p, &f), Some(gs.clone()));
        // Another path with the same file: not its entry.
        assert_eq!(c.get(&RelPath::new("b").unwrap(), &f), None);
        // Any write changes the identity.
        std::thread::sleep(Duration::from_millis(20));
        let mut w = fs::OpenOptions::new().write(true).open(&fp).unwrap();
        w.write_all(&[2u8; 10]).unwrap();
        drop(w);
        assert_eq!(c.get(&p, &f), None);
        c.put(&p, Identity::of(&f).unwrap(), gs.clone());
        assert_eq!(c.get(&p, &f), Some(gs));
        c.forget(&p);
        assert_eq!(c.get(&p, &f), None);
        // Garbage is ignored.
        fs::write(c.file(&p), b"garbage").unwrap();
        assert_eq!(c.get(&p, &f), None);
        c.prune();
        assert!(c.file(&p).exists(), "a recent entry is kept");
    }
}
