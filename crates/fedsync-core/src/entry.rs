//! What a replica holds at one path, as seen by a scan or recorded in the base.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A BLAKE3 content hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    pub fn of(data: &[u8]) -> Hash {
        Hash(*blake3::hash(data).as_bytes())
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
    pub fn from_hex(s: &str) -> Option<Hash> {
        let v = hex::decode(s).ok()?;
        Some(Hash(v.try_into().ok()?))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.short())
    }
}

impl Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Hash::from_hex(&s).ok_or_else(|| serde::de::Error::custom("bad hash"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
        }
    }
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "file" => Some(Kind::File),
            "dir" => Some(Kind::Dir),
            "symlink" => Some(Kind::Symlink),
            _ => None,
        }
    }
}

/// One path's state. `hash` is the content hash for files, the link target's hash for
/// symlinks, and `None` for directories (or for a file whose hash was not needed yet).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: Kind,
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime: i64,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    pub hash: Option<Hash>,
    /// Symlink target, verbatim.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub link: Option<String>,
    /// Identity on the scanned filesystem, used only to notice changes (never synced).
    #[serde(skip)]
    pub stat: Option<StatId>,
}

/// Inode identity and change time: what the fast check and the pre-replace re-check compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StatId {
    pub dev: u64,
    pub ino: u64,
    pub ctime: i64,
}

impl Entry {
    pub fn is_file(&self) -> bool {
        self.kind == Kind::File
    }
    pub fn is_dir(&self) -> bool {
        self.kind == Kind::Dir
    }

    /// Same content (and same kind): the question three-way detection asks.
    pub fn same_content(&self, other: &Entry) -> bool {
        if self.kind != other.kind {
            return false;
        }
        match self.kind {
            Kind::Dir => true,
            Kind::Symlink => self.link == other.link,
            Kind::File => self.size == other.size && self.hash.is_some() && self.hash == other.hash,
        }
    }

    /// Same content and the same synced metadata (mode for files; mtime is metadata we
    /// carry but do not treat as a change by itself when the content is the same).
    pub fn same_state(&self, other: &Entry) -> bool {
        self.same_content(other) && (self.kind != Kind::File || self.mode == other.mode)
    }

    /// Whether the executable bits differ (the mode change fedsync propagates).
    pub fn mode_differs(&self, other: &Entry) -> bool {
        self.kind == Kind::File && other.kind == Kind::File && self.mode != other.mode
    }
}
