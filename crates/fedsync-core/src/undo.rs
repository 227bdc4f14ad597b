//! Undoing what a run did: `fedsync rollback`, `sync --atomic` and `fedsync restore`.
//!
//! Every change a run makes is an audit record that says what was at the path before
//! (kind, hash, mode, the version it was kept as) and what is there after. Undoing a record
//! is the inverse replica operation, applied only when the path still holds what the run
//! left there (else the path is listed and nothing is done without `--force`). The undo
//! writes records of the same vocabulary (`restore`, `delete`, `move`, `set-mode`), so a
//! rollback can itself be rolled back.

use crate::audit::{AuditLog, Record};
use crate::entry::{Entry, Kind};
use crate::path::RelPath;
use crate::replica::{Replica, ReplicaError};
use serde::Serialize;
use std::collections::HashMap;

/// One inverse operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum UndoOp {
    /// Put kept version `version` back at the path (what is there now is kept as a version).
    PutBack {
        version: String,
    },
    /// Remove what the run created (a file or link is kept as a version; a directory must be
    /// empty).
    Remove,
    /// Rename the path back to where the run moved it from.
    RenameTo {
        to: String,
    },
    /// Re-create a directory the run removed.
    Mkdir {
        mode: u32,
    },
    SetMode {
        mode: u32,
    },
    /// Cut an append-only file back to the length it had (its old content is the prefix;
    /// the longer file is kept as a version).
    Truncate {
        len: u64,
    },
}

/// What the path must hold for the undo to apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expect {
    Absent,
    Kind(String),
    File(String),
    Link(String),
}

/// One step of an undo plan.
#[derive(Clone, Debug, Serialize)]
pub struct UndoStep {
    pub replica: String,
    pub path: String,
    pub op: UndoOp,
    /// What the run left at `path` (checked before anything is changed).
    pub expect: Expect,
    /// What the path held before the run: when it already holds it, the step is done.
    #[serde(skip)]
    pub done_if: Option<Expect>,
}

fn kind_of(s: &Option<String>) -> Option<Kind> {
    s.as_deref().and_then(Kind::parse)
}

fn expect_of(kind: &Option<String>, hash: &Option<String>, link: &Option<String>) -> Expect {
    match (kind_of(kind), hash, link) {
        (None, _, _) => Expect::Absent,
        (Some(Kind::File), Some(h), _) => Expect::File(h.clone()),
        (Some(Kind::Symlink), _, Some(l)) => Expect::Link(l.clone()),
        (Some(k), _, _) => Expect::Kind(k.as_str().to_string()),
    }
}

fn after_of(r: &Record) -> Expect {
    expect_of(&r.kind_after, &r.hash_after, &r.link_after)
}

fn before_of(r: &Record) -> Expect {
    expect_of(&r.kind_before, &r.hash_before, &r.link_before)
}

/// The inverse of one audited action, as steps to apply in order. An error says why the
/// action cannot be undone (e.g. no version was kept).
pub fn undo_of(r: &Record) -> Result<Vec<UndoStep>, String> {
    let step = |path: &str, op: UndoOp, expect: Expect, done_if: Option<Expect>| UndoStep {
        replica: r.replica.clone(),
        path: path.to_string(),
        op,
        expect,
        done_if,
    };
    let after = after_of(r);
    let before = before_of(r);
    if let Some(from) = &r.from {
        return Ok(vec![step(
            &r.path,
            UndoOp::RenameTo { to: from.clone() },
            after,
            None,
        )]);
    }
    if let Some(len) = r.appended_from {
        return Ok(vec![step(
            &r.path,
            UndoOp::Truncate { len },
            after,
            Some(before),
        )]);
    }
    if r.action == "set-mode" {
        let mode = r
            .mode_before
            .ok_or("the audit record has no previous mode")?;
        return Ok(vec![step(&r.path, UndoOp::SetMode { mode }, after, None)]);
    }
    let kb = kind_of(&r.kind_before);
    let ka = kind_of(&r.kind_after);
    let mut steps = Vec::new();
    match (kb, ka) {
        (None, None) => {}
        // Something was removed: put it back.
        (Some(Kind::Dir), None) => steps.push(step(
            &r.path,
            UndoOp::Mkdir {
                mode: r.mode_before.unwrap_or(0o755),
            },
            Expect::Absent,
            Some(before),
        )),
        (Some(_), None) => {
            let v = r
                .version
                .clone()
                .ok_or("no version of the removed file was kept")?;
            steps.push(step(
                &r.path,
                UndoOp::PutBack { version: v },
                Expect::Absent,
                Some(before),
            ));
        }
        // Something was created: remove it.
        (None, Some(_)) => steps.push(step(&r.path, UndoOp::Remove, after, Some(Expect::Absent))),
        (Some(Kind::Dir), Some(Kind::Dir)) => {
            if let Some(mode) = r.mode_before {
                steps.push(step(&r.path, UndoOp::SetMode { mode }, after, None));
            }
        }
        // A directory replaced by a file or link: remove that, re-create the directory.
        (Some(Kind::Dir), Some(_)) => {
            steps.push(step(&r.path, UndoOp::Remove, after, None));
            steps.push(step(
                &r.path,
                UndoOp::Mkdir {
                    mode: r.mode_before.unwrap_or(0o755),
                },
                Expect::Absent,
                None,
            ));
        }
        // A file or link replaced by a directory: remove the directory, put the file back.
        (Some(_), Some(Kind::Dir)) => {
            let v = r
                .version
                .clone()
                .ok_or("no version of the replaced file was kept")?;
            steps.push(step(&r.path, UndoOp::Remove, after, None));
            steps.push(step(
                &r.path,
                UndoOp::PutBack { version: v },
                Expect::Absent,
                None,
            ));
        }
        // Overwritten: put the old content back.
        (Some(_), Some(_)) => {
            let v = r
                .version
                .clone()
                .ok_or("no version of the overwritten file was kept")?;
            steps.push(step(
                &r.path,
                UndoOp::PutBack { version: v },
                after,
                Some(before),
            ));
        }
    }
    Ok(steps)
}

/// The audit records of `run` that changed a replica, in the order they happened.
pub fn changes_of(records: &[Record], run: &str) -> Vec<Record> {
    records
        .iter()
        .filter(|r| {
            r.run == run && !r.replica.is_empty() && !r.path.is_empty() && r.error.is_none()
        })
        .cloned()
        .collect()
}

/// An undo plan: the steps (in the order to apply them) and the paths that cannot be
/// undone with the reason.
#[derive(Debug, Default, Serialize)]
pub struct UndoPlan {
    pub steps: Vec<UndoStep>,
    pub impossible: Vec<(String, String)>,
}

/// Invert a run's records: last change first.
pub fn plan(records: &[Record]) -> UndoPlan {
    let mut plan = UndoPlan::default();
    for r in records.iter().rev() {
        match undo_of(r) {
            Ok(s) => plan.steps.extend(s),
            Err(why) => plan
                .impossible
                .push((format!("{}: {}", r.replica, r.path), why)),
        }
    }
    plan
}

fn matches(cur: Option<&Entry>, e: &Expect) -> bool {
    match (cur, e) {
        (None, Expect::Absent) => true,
        (Some(c), Expect::Kind(k)) => c.kind.as_str() == k,
        (Some(c), Expect::File(h)) => {
            c.is_file() && c.hash.map(|x| x.to_hex()).as_deref() == Some(h)
        }
        (Some(c), Expect::Link(l)) => c.link.as_deref() == Some(l),
        _ => false,
    }
}

fn describe(cur: Option<&Entry>) -> String {
    match cur {
        None => "absent".into(),
        Some(e) if e.is_file() => format!(
            "a file of {} bytes, hash {}",
            e.size,
            e.hash
                .map(|h| h.to_hex()[..12].to_string())
                .unwrap_or_default()
        ),
        Some(e) if e.link.is_some() => {
            format!("a symlink to {}", e.link.as_deref().unwrap_or_default())
        }
        Some(e) => format!("a {}", e.kind.as_str()),
    }
}

/// The outcome of applying an undo plan.
#[derive(Debug, Default, Serialize)]
pub struct Applied {
    pub done: Vec<UndoStep>,
    pub already: usize,
    /// Steps not applied: the path changed since the run (without force), or an error.
    pub failed: Vec<(String, String)>,
}

/// Check every step against the replicas: the paths that changed since the run.
pub fn check(steps: &[UndoStep], reps: &HashMap<String, &dyn Replica>) -> Vec<(String, String)> {
    let mut changed = Vec::new();
    // Later steps on a path see the state earlier steps leave: only the first step of each
    // (replica, path) is checked against the disk.
    let mut seen = std::collections::HashSet::new();
    for s in steps {
        if !seen.insert((s.replica.clone(), s.path.clone())) {
            continue;
        }
        let Some(rep) = reps.get(&s.replica) else {
            changed.push((
                format!("{}: {}", s.replica, s.path),
                "the replica is not in the profile any more".into(),
            ));
            continue;
        };
        let cur = RelPath::new(&s.path)
            .map_err(|e| e.to_string())
            .and_then(|p| rep.entry(&p, true).map_err(|e| e.to_string()));
        match cur {
            Ok(cur) => {
                let done = s.done_if.as_ref().is_some_and(|d| matches(cur.as_ref(), d));
                if !done && !matches(cur.as_ref(), &s.expect) {
                    changed.push((
                        format!("{}: {}", s.replica, s.path),
                        format!("changed since the run (now {})", describe(cur.as_ref())),
                    ));
                }
            }
            Err(e) => changed.push((format!("{}: {}", s.replica, s.path), e)),
        }
    }
    changed
}

/// Apply undo steps as run `run`, appending an audit record per change; what they replace is
/// kept under `.fedsync/versions/<version_run>/`. With `force`, a path that changed since
/// the run is replaced anyway (its current content kept as a version).
#[allow(clippy::too_many_arguments)]
pub fn apply(
    steps: &[UndoStep],
    reps: &HashMap<String, &dyn Replica>,
    run: &str,
    version_run: &str,
    action_detail: &str,
    force: bool,
    mut audit: Option<&mut AuditLog>,
    mut on_record: impl FnMut(&Record),
) -> Applied {
    let mut out = Applied::default();
    for s in steps {
        let key = format!("{}: {}", s.replica, s.path);
        let Some(rep) = reps.get(&s.replica) else {
            out.failed
                .push((key, "the replica is not available".into()));
            continue;
        };
        let r = apply_one(s, *rep, version_run, force);
        match r {
            Ok(None) => out.already += 1,
            Ok(Some(mut rec)) => {
                rec.run = run.to_string();
                rec.time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                rec.replica = s.replica.clone();
                rec.detail = action_detail.to_string();
                on_record(&rec);
                if let Some(a) = audit.as_deref_mut() {
                    let _ = a.append(rec);
                    let _ = a.flush();
                }
                out.done.push(s.clone());
            }
            Err(e) => out.failed.push((key, e)),
        }
    }
    for rep in reps.values() {
        let _ = rep.flush();
    }
    out
}

fn kind_str(e: Option<&Entry>) -> Option<String> {
    e.map(|e| e.kind.as_str().to_string())
}

fn hash_str(e: Option<&Entry>) -> Option<String> {
    e.and_then(|e| e.hash).map(|h| h.to_hex())
}

/// Apply one step; `Ok(None)` when the path already holds what the step would put there.
fn apply_one(
    s: &UndoStep,
    rep: &dyn Replica,
    run: &str,
    force: bool,
) -> Result<Option<Record>, String> {
    let path = RelPath::new(&s.path).map_err(|e| e.to_string())?;
    let cur = rep.entry(&path, true).map_err(|e| e.to_string())?;
    if s.done_if.as_ref().is_some_and(|d| matches(cur.as_ref(), d)) {
        return Ok(None);
    }
    if !force && !matches(cur.as_ref(), &s.expect) {
        return Err(format!(
            "changed since the run (now {}); left alone (use --force to replace it, it is kept as a version)",
            describe(cur.as_ref())
        ));
    }
    let err = |e: ReplicaError| e.to_string();
    let mut rec = Record {
        path: s.path.clone(),
        kind_before: kind_str(cur.as_ref()),
        hash_before: hash_str(cur.as_ref()),
        link_before: cur.as_ref().and_then(|e| e.link.clone()),
        mode_before: cur.as_ref().map(|e| e.mode),
        ..Default::default()
    };
    match &s.op {
        UndoOp::PutBack { version } => {
            // (A directory in the way is replaced only when empty: install refuses others.)
            let staged = rep.stage_version(version).map_err(err)?;
            let (after, kept) = rep.install(staged, &path, cur.as_ref(), run).map_err(err)?;
            rec.action = "restore".into();
            rec.kind_after = kind_str(Some(&after));
            rec.hash_after = hash_str(Some(&after));
            rec.link_after = after.link.clone();
            rec.size = Some(after.size);
            rec.version = kept;
            rec.from = None;
        }
        UndoOp::Remove => {
            let Some(c) = cur.as_ref() else {
                return Ok(None);
            };
            let kept = rep.remove(&path, c, run).map_err(err)?;
            rec.action = "delete".into();
            rec.version = kept;
        }
        UndoOp::RenameTo { to } => {
            let to_p = RelPath::new(to).map_err(|e| e.to_string())?;
            let Some(c) = cur.as_ref() else {
                if rep.entry(&to_p, false).map_err(err)?.is_some() {
                    return Ok(None);
                }
                return Err("nothing to move back".into());
            };
            let after = rep.rename(&path, &to_p, c).map_err(err)?;
            rec.action = "move".into();
            rec.path = to.clone();
            rec.from = Some(s.path.clone());
            rec.kind_before = None;
            rec.hash_before = None;
            rec.link_before = None;
            rec.mode_before = None;
            rec.link_after = after.link.clone();
            rec.kind_after = kind_str(Some(&after));
            rec.hash_after = c.hash.map(|h| h.to_hex());
            rec.size = Some(after.size);
        }
        UndoOp::Mkdir { mode } => {
            if cur.as_ref().is_some_and(|c| c.is_dir()) {
                return Ok(None);
            }
            let after = rep.mkdir(&path, *mode, cur.as_ref(), run).map_err(err)?;
            rec.action = "restore".into();
            rec.kind_after = kind_str(Some(&after));
        }
        UndoOp::Truncate { len } => {
            let staged = rep.stage_prefix(&path, *len).map_err(err)?;
            let (after, kept) = rep.install(staged, &path, cur.as_ref(), run).map_err(err)?;
            rec.action = "restore".into();
            rec.kind_after = kind_str(Some(&after));
            rec.hash_after = hash_str(Some(&after));
            rec.size = Some(after.size);
            rec.version = kept;
        }
        UndoOp::SetMode { mode } => {
            let Some(c) = cur.as_ref() else {
                return Err("the path is gone".into());
            };
            if c.mode & 0o7777 == *mode & 0o7777 {
                return Ok(None);
            }
            let after = rep.set_mode(&path, *mode, c).map_err(err)?;
            rec.action = "set-mode".into();
            rec.kind_after = kind_str(Some(&after));
            rec.hash_after = hash_str(Some(c));
        }
    }
    Ok(Some(rec))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(action: &str, kb: Option<&str>, ka: Option<&str>, version: Option<&str>) -> Record {
        Record {
            run: "r1".into(),
            replica: "b".into(),
            path: "x".into(),
            action: action.into(),
            kind_before: kb.map(str::to_string),
            kind_after: ka.map(str::to_string),
            hash_before: kb.filter(|k| *k == "file").map(|_| "h0".to_string()),
            hash_after: ka.filter(|k| *k == "file").map(|_| "h1".to_string()),
            version: version.map(str::to_string),
            mode_before: kb.map(|_| 0o644),
            ..Default::default()
        }
    }

    #[test]
    fn each_action_has_its_inverse() {
        let created = undo_of(&rec("copy", None, Some("file"), None)).unwrap();
        assert_eq!(created[0].op, UndoOp::Remove);
        assert_eq!(created[0].expect, Expect::File("h1".into()));

        let over = undo_of(&rec("copy", Some("file"), Some("file"), Some("v"))).unwrap();
        assert_eq!(
            over[0].op,
            UndoOp::PutBack {
                version: "v".into()
            }
        );
        assert_eq!(over[0].done_if, Some(Expect::File("h0".into())));

        let deleted = undo_of(&rec("delete", Some("file"), None, Some("v"))).unwrap();
        assert_eq!(deleted[0].expect, Expect::Absent);

        let rmdir = undo_of(&rec("delete", Some("dir"), None, None)).unwrap();
        assert_eq!(rmdir[0].op, UndoOp::Mkdir { mode: 0o644 });

        let dir_over_file = undo_of(&rec("copy", Some("file"), Some("dir"), Some("v"))).unwrap();
        assert_eq!(dir_over_file.len(), 2);
        assert_eq!(dir_over_file[0].op, UndoOp::Remove);

        assert!(undo_of(&rec("copy", Some("file"), Some("file"), None)).is_err());

        let mut mv = rec("move", None, Some("file"), None);
        mv.from = Some("old".into());
        assert_eq!(
            undo_of(&mv).unwrap()[0].op,
            UndoOp::RenameTo { to: "old".into() }
        );
    }

    #[test]
    fn plans_last_change_first() {
        let mut a = rec("copy", None, Some("file"), None);
        a.path = "first".into();
        let mut b = rec("copy", None, Some("file"), None);
        b.path = "second".into();
        let p = plan(&[a, b]);
        assert_eq!(p.steps[0].path, "second");
        assert_eq!(p.steps[1].path, "first");
    }
}
