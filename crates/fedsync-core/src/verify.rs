//! `fedsync verify NAME`: re-hash every file on every replica and compare the replicas
//! with each other and with the base. What a fast sync cannot see is reported here: content
//! that changed while size and mtime stayed (bit rot, tools that restore mtimes).

use crate::config::Profile;
use crate::engine::{self, Avail, EngineError};
use crate::entry::{Entry, Kind};
use crate::path::RelPath;
use crate::replica::ScanOptions;
use crate::rules::Rules;
use crate::store::CacheBlob;
use crate::Home;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// One finding.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Finding {
    pub path: String,
    /// The replica the finding is about (for `differs`, the pair `a<->b`).
    pub replica: String,
    pub problem: Problem,
    pub detail: String,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Problem {
    /// Content differs from what fedsync last saw although size and mtime (and for the
    /// scan cache, inode and ctime) are unchanged: bit rot or an edit that hid itself.
    SilentChange,
    /// The file could not be read.
    Unreadable,
    /// The two replicas of a pair hold different content here (a change not synced yet,
    /// or a conflict).
    Differs,
}

#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub replicas: Vec<String>,
    pub files: u64,
    pub bytes: u64,
    pub findings: Vec<Finding>,
    pub warnings: Vec<String>,
}

impl VerifyReport {
    pub fn exit_code(&self) -> i32 {
        if self.findings.is_empty() {
            0
        } else {
            1
        }
    }
}

fn short(e: &Entry) -> String {
    match (e.kind, e.hash) {
        (Kind::File, Some(h)) => format!("{} bytes, hash {}", e.size, &h.to_hex()[..12]),
        (k, _) => k.as_str().to_string(),
    }
}

fn same_content(a: &Entry, b: &Entry) -> bool {
    a.kind == b.kind
        && match a.kind {
            Kind::File => a.hash == b.hash,
            Kind::Symlink => a.link == b.link,
            Kind::Dir => true,
        }
}

/// Re-hash everything and compare.
pub fn verify(home: &Home, profile: &Profile) -> Result<VerifyReport, EngineError> {
    let store = engine::open_store(home, &profile.name)?;
    let rules = Rules::compile(profile)?;
    let mut report = VerifyReport::default();
    let mut scans: Vec<Option<(String, BTreeMap<RelPath, Entry>)>> = Vec::new();
    for spec in &profile.replicas {
        let rep = match engine::open_replica_in(profile, spec) {
            Ok(r) => r,
            Err(m) => {
                report.warnings.push(m);
                scans.push(None);
                continue;
            }
        };
        let id = match engine::check_replica(&store, spec, rep.as_ref(), false, true)? {
            Avail::Ready(id) => id,
            Avail::Skip(m) | Avail::Unavailable(m) => {
                report.warnings.push(m);
                scans.push(None);
                continue;
            }
        };
        let cache = store.load_cache(&id)?;
        let opts = ScanOptions {
            checksum: true,
            only: Vec::new(),
            defer_hash: false,
        };
        let scan = rep
            .scan(&rules, &CacheBlob::default(), &opts)
            .map_err(|e| EngineError::Io(format!("replica {}: {e}", spec.name)))?;
        report.replicas.push(spec.name.clone());
        report.files += scan.hashed_files;
        report.bytes += scan.hashed_bytes;
        for (p, why) in &scan.errors {
            report.findings.push(Finding {
                path: p.to_string(),
                replica: spec.name.clone(),
                problem: Problem::Unreadable,
                detail: why.clone(),
            });
        }
        // Against the scan cache: same inode, ctime, size and mtime, other content.
        let cached: HashMap<String, crate::store::Cached> =
            cache.collect_rows().into_iter().collect();
        for e in scan.entries.iter() {
            let p = e.path();
            let (Some(c), Some(h), Some(st)) = (cached.get(p.as_str()), e.hash(), e.stat()) else {
                continue;
            };
            if c.size == e.size() && c.mtime == e.mtime() && c.stat == st && c.hash != h {
                report.findings.push(Finding {
                    path: p.to_string(),
                    replica: spec.name.clone(),
                    problem: Problem::SilentChange,
                    detail: format!(
                        "content changed with size, mtime, inode and ctime unchanged (bit rot?): \
                         was hash {}, now {}",
                        &c.hash.to_hex()[..12],
                        &h.to_hex()[..12]
                    ),
                });
            }
        }
        scans.push(Some((id, scan.entries.iter_owned().collect())));
    }
    // Pairs: each replica against the base and against the other.
    let names: Vec<&str> = profile.replicas.iter().map(|r| r.name.as_str()).collect();
    for k in 1..profile.replicas.len() {
        let (Some((ida, a)), Some((idb, b))) = (&scans[0], &scans[k]) else {
            continue;
        };
        let pair_name = format!("{}<->{}", names[0], names[k]);
        let base: BTreeMap<RelPath, Entry> =
            match store.find_pair_id(&engine::pair_key(ida, idb))? {
                Some(id) => store.load_base(id)?.into_iter().collect(),
                None => BTreeMap::new(),
            };
        for (side, tree) in [(names[0], a), (names[k], b)] {
            for (p, e) in tree {
                let Some(be) = base.get(p) else { continue };
                if e.is_file()
                    && be.is_file()
                    && e.size == be.size
                    && e.mtime == be.mtime
                    && e.hash != be.hash
                    && !report
                        .findings
                        .iter()
                        .any(|f| f.path == p.as_str() && f.replica == side)
                {
                    report.findings.push(Finding {
                        path: p.to_string(),
                        replica: side.to_string(),
                        problem: Problem::SilentChange,
                        detail: format!(
                            "content differs from the last synced state ({}) with the same size and mtime: \
                             bit rot, or an edit that restored the mtime",
                            short(be)
                        ),
                    });
                }
            }
        }
        let mut paths: Vec<&RelPath> = a.keys().chain(b.keys()).collect();
        paths.sort();
        paths.dedup();
        for p in paths {
            let (ea, eb) = (a.get(p), b.get(p));
            let differs = match (ea, eb) {
                (Some(x), Some(y)) => !same_content(x, y),
                (None, None) => false,
                _ => true,
            };
            if !differs {
                continue;
            }
            let desc = |e: Option<&Entry>| e.map_or("absent".to_string(), short);
            report.findings.push(Finding {
                path: p.to_string(),
                replica: pair_name.clone(),
                problem: Problem::Differs,
                detail: format!("{}: {}; {}: {}", names[0], desc(ea), names[k], desc(eb)),
            });
        }
    }
    report
        .findings
        .sort_by(|x, y| x.problem.cmp(&y.problem).then(x.path.cmp(&y.path)));
    Ok(report)
}
