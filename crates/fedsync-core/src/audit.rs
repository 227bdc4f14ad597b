//! The audit trail: one JSON object per line, each carrying the BLAKE3 hash of the line
//! before it, so an edited, removed or truncated line is detectable (SPEC invariant 12).

use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audited action.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub time: String,
    pub run: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pair: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    pub action: String,
    /// Replica the action changed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub replica: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Moves and keep-both asides: where the item came from (on the same replica).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// What was at `path` before (`file`, `dir`, `symlink`; none = nothing) and after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind_after: Option<String>,
    /// An append in place: the length the file had before (the old content is its prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appended_from: Option<u64>,
    /// Symlinks: the target before and after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_after: Option<String>,
    /// Set when the action failed or was skipped (then it changed nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Mode bits before the action (what `rollback` puts back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode_before: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rule: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Hash of the previous line (GENESIS for the first).
    #[serde(default)]
    pub prev: String,
}

/// Appends records to one profile's trail.
pub struct AuditLog {
    file: File,
    path: PathBuf,
    last: String,
    buf: Vec<u8>,
}

fn line_hash(line: &[u8]) -> String {
    blake3::hash(line).to_hex().to_string()
}

/// The last complete line of a file (without its newline), read from the end.
fn last_line(f: &mut File) -> io::Result<Option<Vec<u8>>> {
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    let mut chunk = 4096u64;
    loop {
        let start = len.saturating_sub(chunk);
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        Read::by_ref(f).take(len - start).read_to_end(&mut buf)?;
        let body = buf.strip_suffix(b"\n").unwrap_or(&buf);
        if let Some(i) = body.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(body[i + 1..].to_vec()));
        }
        if start == 0 {
            return Ok(Some(body.to_vec()));
        }
        chunk *= 4;
    }
}

impl AuditLog {
    pub fn open(path: &Path) -> io::Result<AuditLog> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let last = match last_line(&mut file)? {
            Some(l) => line_hash(&l),
            None => GENESIS.to_string(),
        };
        Ok(AuditLog {
            file,
            path: path.to_path_buf(),
            last,
            buf: Vec::new(),
        })
    }

    pub fn append(&mut self, mut rec: Record) -> io::Result<()> {
        rec.prev = self.last.clone();
        let line = serde_json::to_vec(&rec).map_err(io::Error::other)?;
        self.last = line_hash(&line);
        self.buf.extend_from_slice(&line);
        self.buf.push(b'\n');
        if self.buf.len() > 1 << 20 {
            self.flush()?;
        }
        Ok(())
    }

    /// Write buffered records (they are whole lines, so a crash never leaves half a record
    /// followed by more).
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    pub fn sync(&mut self) -> io::Result<()> {
        self.flush()?;
        self.file.sync_data()
    }

    /// Hash of the last record written: the chain head, stored with the run so that a
    /// truncated trail is detectable too.
    pub fn head(&self) -> &str {
        &self.last
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A break in the chain found by `verify`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChainBreak {
    /// 1-based line number.
    pub line: usize,
    pub problem: String,
}

/// Read every record; with `verify`, also check the chain.
pub fn read(path: &Path) -> io::Result<(Vec<Record>, Vec<ChainBreak>)> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((vec![], vec![])),
        Err(e) => return Err(e),
    };
    let mut recs = Vec::new();
    let mut breaks = Vec::new();
    let mut prev = GENESIS.to_string();
    for (i, line) in BufReader::new(f).split(b'\n').enumerate() {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Record>(&line) {
            Ok(r) => {
                if r.prev != prev {
                    breaks.push(ChainBreak {
                        line: i + 1,
                        problem: "does not follow the line before it (a line was removed, inserted or edited)".into(),
                    });
                }
                recs.push(r);
            }
            Err(e) => breaks.push(ChainBreak {
                line: i + 1,
                problem: format!("not a valid record: {e}"),
            }),
        }
        prev = line_hash(&line);
    }
    Ok((recs, breaks))
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Number of records and the hash of the last line (the chain head).
pub fn read_head(path: &Path) -> io::Result<(usize, Option<String>)> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, None)),
        Err(e) => return Err(e),
    };
    let lines: Vec<&[u8]> = text
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    Ok((lines.len(), lines.last().map(|l| line_hash(l))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(path: &str) -> Record {
        Record {
            time: "t".into(),
            run: "r".into(),
            path: path.into(),
            action: "copy".into(),
            ..Default::default()
        }
    }

    #[test]
    fn chain_survives_reopen_and_detects_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        let mut log = AuditLog::open(&p).unwrap();
        log.append(rec("a")).unwrap();
        log.append(rec("b")).unwrap();
        log.sync().unwrap();
        drop(log);
        let mut log = AuditLog::open(&p).unwrap();
        log.append(rec("c")).unwrap();
        log.sync().unwrap();
        drop(log);
        let (recs, breaks) = read(&p).unwrap();
        assert_eq!(recs.len(), 3);
        assert!(breaks.is_empty(), "{breaks:?}");

        // Edit the middle line: the line after it no longer follows.
        let text = fs::read_to_string(&p).unwrap();
        fs::write(&p, text.replacen("\"b\"", "\"x\"", 1)).unwrap();
        let (_, breaks) = read(&p).unwrap();
        assert_eq!(breaks.len(), 1);
        assert_eq!(breaks[0].line, 3);

        // Remove the first line: the new first line does not follow the genesis.
        let lines: Vec<_> = text.lines().skip(1).collect();
        fs::write(&p, lines.join("\n") + "\n").unwrap();
        let (_, breaks) = read(&p).unwrap();
        assert_eq!(breaks[0].line, 1);
    }
}
