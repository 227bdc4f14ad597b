//! `RelPath`: the only path type that crosses module boundaries.
//!
//! Every path that comes from a scan, a profile, the state database or (later) a remote
//! peer is validated here, so that no module can be handed an absolute path, a `..`
//! component or a NUL byte (SPEC invariant 10).

use std::fmt;
use std::path::{Path, PathBuf};

/// A validated, normalized path relative to a replica root, `/`-separated.
///
/// The empty path is the root itself.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct RelPath(String);

/// Why a path was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("path {0:?} is absolute; only paths relative to the replica root are allowed")]
    Absolute(String),
    #[error("path {0:?} contains a '..' component")]
    DotDot(String),
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    #[error("path {0:?} has an empty or '.' component")]
    EmptyComponent(String),
    #[error("path {0:?} is not valid UTF-8")]
    NotUtf8(String),
    #[error("path {0:?} contains a backslash, which fedsync does not sync")]
    Backslash(String),
}

/// A non-empty path of components that are not empty, `.` or `..`, with no NUL and no
/// backslash: what [`RelPath::new`] accepts (the root aside).
fn is_clean(b: &[u8]) -> bool {
    let mut start = 0;
    for i in 0..=b.len() {
        match b.get(i).copied().unwrap_or(b'/') {
            0 | b'\\' => return false,
            b'/' => {
                if matches!(&b[start..i], b"" | b"." | b"..") {
                    return false;
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    true
}

/// Every check of [`RelPath::new`] on a non-empty path, one at a time, naming the first
/// that fails: the slow path behind [`is_clean`], which must accept exactly what this does.
fn check_each(s: &str) -> Result<(), PathError> {
    if s.contains('\0') {
        return Err(PathError::Nul(s.replace('\0', "\\0")));
    }
    if s.starts_with('/') {
        return Err(PathError::Absolute(s.to_string()));
    }
    if s.contains('\\') {
        return Err(PathError::Backslash(s.to_string()));
    }
    for comp in s.split('/') {
        match comp {
            ".." => return Err(PathError::DotDot(s.to_string())),
            "" | "." => return Err(PathError::EmptyComponent(s.to_string())),
            _ => {}
        }
    }
    Ok(())
}

impl RelPath {
    /// The replica root.
    pub fn root() -> RelPath {
        RelPath(String::new())
    }

    /// Parse and validate an untrusted `/`-separated relative path.
    ///
    /// ```
    /// use fedsync_core::path::RelPath;
    /// let p = RelPath::new("docs/notes/a.md").unwrap();
    /// assert_eq!(p.parent().unwrap().as_str(), "docs/notes");
    /// // What a hostile peer might send is refused:
    /// assert!(RelPath::new("../etc/passwd").is_err());
    /// assert!(RelPath::new("/etc/passwd").is_err());
    /// ```
    pub fn new(s: &str) -> Result<RelPath, PathError> {
        // One pass for the common case; what it refuses is checked again below, for the
        // error.
        if is_clean(s.as_bytes()) {
            return Ok(RelPath(s.to_string()));
        }
        if s.is_empty() {
            return Ok(RelPath::root());
        }
        check_each(s)?;
        Ok(RelPath(s.to_string()))
    }

    /// Build from a filesystem path relative to a root (as produced by a walk).
    pub fn from_fs(p: &Path) -> Result<RelPath, PathError> {
        let s = p
            .to_str()
            .ok_or_else(|| PathError::NotUtf8(p.to_string_lossy().into_owned()))?;
        RelPath::new(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// `self/name`; `name` must be one valid component.
    pub fn join(&self, name: &str) -> Result<RelPath, PathError> {
        if name.contains('/') || name.is_empty() {
            return Err(PathError::EmptyComponent(format!("{}/{}", self.0, name)));
        }
        // `self` is valid already: only the new component is checked (the scan joins
        // every name it lists), and the path is built in one exact allocation.
        if name.contains(['\0', '\\']) || name == "." || name == ".." {
            // The full check, for its error.
            return if self.is_root() {
                RelPath::new(name)
            } else {
                RelPath::new(&format!("{}/{}", self.0, name))
            };
        }
        if self.is_root() {
            return Ok(RelPath(name.to_string()));
        }
        let mut s = String::with_capacity(self.0.len() + 1 + name.len());
        s.push_str(&self.0);
        s.push('/');
        s.push_str(name);
        Ok(RelPath(s))
    }

    /// The parent directory, `None` for the root.
    pub fn parent(&self) -> Option<RelPath> {
        if self.is_root() {
            return None;
        }
        Some(match self.0.rfind('/') {
            Some(i) => RelPath(self.0[..i].to_string()),
            None => RelPath::root(),
        })
    }

    /// The last component (empty for the root).
    pub fn file_name(&self) -> &str {
        match self.0.rfind('/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }

    /// All proper ancestors from the top down, excluding the root.
    pub fn ancestors(&self) -> impl Iterator<Item = &str> {
        str_ancestors(&self.0)
    }

    /// Whether `self` equals `other` or lies below it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        str_starts_with(&self.0, &other.0)
    }

    /// A path known to be valid already (built from valid parts inside this crate).
    pub(crate) fn trusted(s: String) -> RelPath {
        debug_assert!(RelPath::new(&s).is_ok(), "{s:?} is not a valid path");
        RelPath(s)
    }

    /// Depth: number of components (root = 0).
    pub fn depth(&self) -> usize {
        if self.is_root() {
            0
        } else {
            self.0.matches('/').count() + 1
        }
    }

    /// The filesystem path under `root`.
    pub fn to_fs(&self, root: &Path) -> PathBuf {
        if self.is_root() {
            root.to_path_buf()
        } else {
            root.join(&self.0)
        }
    }

    /// Split the file name into stem and extension (`a/b.tar.gz` -> (`b.tar`, `gz`)).
    pub fn stem_ext(&self) -> (&str, Option<&str>) {
        let name = self.file_name();
        match name.rfind('.') {
            Some(0) | None => (name, None),
            Some(i) => (&name[..i], Some(&name[i + 1..])),
        }
    }

    /// A sibling with another file name.
    pub fn with_file_name(&self, name: &str) -> Result<RelPath, PathError> {
        match self.parent() {
            Some(p) => p.join(name),
            None => RelPath::new(name),
        }
    }
}

/// [`RelPath::ancestors`] of a valid path given as a string.
pub fn str_ancestors(s: &str) -> impl Iterator<Item = &str> {
    s.match_indices('/').map(move |(i, _)| &s[..i])
}

/// [`RelPath::starts_with`] of valid paths given as strings.
pub fn str_starts_with(path: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str(".")
        } else {
            f.write_str(&self.0)
        }
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl<'de> serde::Deserialize<'de> for RelPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RelPath::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass check and the check-by-check slow path accept exactly the same paths:
    /// every string of up to 5 characters over the alphabet that matters.
    #[test]
    fn the_fast_path_check_accepts_exactly_what_the_full_checks_accept() {
        let alphabet = ['a', '.', '/', '\\', '\0', 'é'];
        let mut probes = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..5 {
            let mut next = Vec::new();
            for p in &frontier {
                for c in alphabet {
                    let mut q = p.clone();
                    q.push(c);
                    next.push(q);
                }
            }
            probes.extend(next.iter().cloned());
            frontier = next;
        }
        assert!(probes.len() > 9000);
        let mut accepted = 0;
        for p in probes.iter().filter(|p| !p.is_empty()) {
            let fast = is_clean(p.as_bytes());
            assert_eq!(fast, check_each(p).is_ok(), "{p:?}");
            assert_eq!(fast, RelPath::new(p).is_ok(), "{p:?}");
            accepted += fast as usize;
        }
        // Of 9,330 probes, 577 are clean paths ("a./é", "..a/a", ...).
        assert_eq!(accepted, 577, "the probes must include accepted paths too");
    }

    #[test]
    fn hostile_paths_are_refused() {
        for bad in [
            "/etc/passwd",
            "../x",
            "a/../../b",
            "a/./b",
            "a//b",
            "a/",
            "a\0b",
            "a\\..\\b",
            "..",
            ".",
        ] {
            assert!(RelPath::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn good_paths_round_trip() {
        let p = RelPath::new("docs/notes/a.md").unwrap();
        assert_eq!(p.parent().unwrap().as_str(), "docs/notes");
        assert_eq!(p.file_name(), "a.md");
        assert_eq!(
            p.ancestors().collect::<Vec<_>>(),
            vec!["docs", "docs/notes"]
        );
        assert!(p.starts_with(&RelPath::new("docs").unwrap()));
        assert!(!p.starts_with(&RelPath::new("doc").unwrap()));
        assert_eq!(p.depth(), 3);
        assert_eq!(p.stem_ext(), ("a", Some("md")));
        assert_eq!(
            RelPath::new(".bashrc").unwrap().stem_ext(),
            (".bashrc", None)
        );
        assert_eq!(RelPath::new("a").unwrap().parent(), Some(RelPath::root()));
    }
}
