//! Runs after the fact: `rollback`, `restore`, `versions` and `prune`.
//!
//! Rollback and restore are runs of their own (locked, recorded in the state and the audit
//! trail), so they can be rolled back too. They change only the replicas they name; the
//! base is left as the last sync left it, so the next sync sees the restored content as the
//! newest change and carries it to the other replicas (their current content is kept as a
//! version there, as with any overwrite).

use crate::audit::{self, AuditLog, Record};
use crate::config::Profile;
use crate::engine::{self, begin_run, end_run, Avail, EngineError};
use crate::path::RelPath;
use crate::replica::{Replica, VersionInfo};
use crate::undo::{self, UndoStep};
use crate::Home;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

/// The result of `rollback` or `restore`.
#[derive(Debug, Serialize)]
pub struct ChangeReport {
    /// This run's id.
    pub run: String,
    pub kind: String,
    /// The run that was rolled back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub done: Vec<UndoStep>,
    /// Steps already in the state they would produce.
    pub already: usize,
    pub failed: Vec<(String, String)>,
    pub warnings: Vec<String>,
}

impl ChangeReport {
    pub fn exit_code(&self) -> i32 {
        if self.failed.is_empty() {
            0
        } else {
            3
        }
    }
}

/// The profile's replicas that are available now, by name; the others with why not.
struct Ready {
    reps: Vec<(String, Arc<dyn Replica>)>,
    unavailable: Vec<String>,
}

impl Ready {
    fn open(store: &crate::store::Store, profile: &Profile) -> Result<Ready, EngineError> {
        let mut reps = Vec::new();
        let mut unavailable = Vec::new();
        for spec in &profile.replicas {
            match engine::open_replica_in(profile, spec) {
                Ok(r) => match engine::check_replica(store, spec, r.as_ref(), false, true)? {
                    Avail::Ready(_) => reps.push((spec.name.clone(), r)),
                    Avail::Skip(m) | Avail::Unavailable(m) => unavailable.push(m),
                },
                Err(m) => unavailable.push(m),
            }
        }
        Ok(Ready { reps, unavailable })
    }

    fn by_name(&self) -> HashMap<String, &dyn Replica> {
        self.reps
            .iter()
            .map(|(n, r)| (n.clone(), r.as_ref()))
            .collect()
    }
}

fn open_audit(home: &Home, profile: &str) -> Result<AuditLog, EngineError> {
    let path = home.audit_path(profile);
    AuditLog::open(&path)
        .map_err(|e| EngineError::Io(format!("audit trail {}: {e}", path.display())))
}

fn read_records(home: &Home, profile: &str) -> Result<Vec<Record>, EngineError> {
    let path = home.audit_path(profile);
    audit::read(&path)
        .map(|(r, _)| r)
        .map_err(|e| EngineError::Io(format!("audit trail {}: {e}", path.display())))
}

/// Apply `steps` as a new run of `kind` and record it.
#[allow(clippy::too_many_arguments)]
fn run_steps(
    home: &Home,
    profile: &Profile,
    store: &mut crate::store::Store,
    ready: &Ready,
    kind: &str,
    target: Option<String>,
    steps: &[UndoStep],
    detail: String,
    force: bool,
) -> Result<ChangeReport, EngineError> {
    let (run, _) = engine::new_run_id();
    let mut audit = open_audit(home, &profile.name)?;
    begin_run(store, Some(&mut audit), &run, kind, detail.clone())?;
    let applied = undo::apply(
        steps,
        &ready.by_name(),
        &run,
        &run,
        &detail,
        force,
        Some(&mut audit),
        |_| {},
    );
    let status = if applied.failed.is_empty() {
        "ok"
    } else {
        "failed"
    };
    let summary = serde_json::json!({
        "target": target,
        "done": applied.done.len(),
        "already": applied.already,
        "failed": applied.failed,
    });
    end_run(store, Some(&mut audit), &run, status, summary)?;
    Ok(ChangeReport {
        run,
        kind: kind.to_string(),
        target,
        done: applied.done,
        already: applied.already,
        failed: applied.failed,
        warnings: ready.unavailable.clone(),
    })
}

/// `fedsync rollback NAME [RUN]`: undo a whole run (default: the last run that changed
/// something) on every replica it touched.
pub fn rollback(
    home: &Home,
    profile: &Profile,
    run: Option<&str>,
    force: bool,
    wait: bool,
) -> Result<ChangeReport, EngineError> {
    let _lock = engine::lock(home, &profile.name, wait)?;
    let mut store = engine::open_store(home, &profile.name)?;
    let records = read_records(home, &profile.name)?;
    let changed = |r: &Record| !r.replica.is_empty() && !r.path.is_empty();
    let target = match run {
        Some(id) => {
            if !records.iter().any(|r| r.run == id) {
                return Err(EngineError::Usage(format!(
                    "profile {}: no run {id} in the audit trail; `fedsync log {}` lists the runs",
                    profile.name, profile.name
                )));
            }
            id.to_string()
        }
        None => records
            .iter()
            .rev()
            .find(|r| changed(r))
            .map(|r| r.run.clone())
            .ok_or_else(|| {
                EngineError::Usage(format!(
                    "profile {}: no run has changed anything yet; nothing to roll back",
                    profile.name
                ))
            })?,
    };
    let changes = undo::changes_of(&records, &target);
    let plan = undo::plan(&changes);
    let ready = Ready::open(&store, profile)?;
    let touched: std::collections::BTreeSet<&str> =
        changes.iter().map(|r| r.replica.as_str()).collect();
    let missing: Vec<&str> = touched
        .iter()
        .copied()
        .filter(|n| !ready.reps.iter().any(|(r, _)| r == n))
        .collect();
    if !missing.is_empty() {
        return Err(EngineError::Refused(format!(
            "cannot roll back run {target}: it changed replica(s) {} which are not available now ({}). \
             Nothing was done; connect them and run again.",
            missing.join(", "),
            ready.unavailable.join("; ")
        )));
    }
    let mut refused: Vec<(String, String)> = plan.impossible.clone();
    refused.extend(undo::check(&plan.steps, &ready.by_name()));
    if !refused.is_empty() && !force {
        let list: Vec<String> = refused.iter().map(|(p, w)| format!("  {p}: {w}")).collect();
        return Err(EngineError::Refused(format!(
            "cannot roll back run {target}: {} path(s) changed since it ran:\n{}\n\
             Nothing was done. Roll back anyway with --force (what is there now is kept as a version).",
            refused.len(),
            list.join("\n")
        )));
    }
    // (With --force, paths whose undo is impossible, e.g. no version kept, stay as they are.)
    let steps = plan.steps;
    let mut report = run_steps(
        home,
        profile,
        &mut store,
        &ready,
        "rollback",
        Some(target.clone()),
        &steps,
        format!("rollback of run {target}"),
        force,
    )?;
    report.failed.extend(
        plan.impossible
            .into_iter()
            .map(|(p, w)| (p, format!("not undone: {w}"))),
    );
    Ok(report)
}

/// Versions by replica name, and the replicas that could not be asked (why).
pub type VersionList = (Vec<(String, VersionInfo)>, Vec<String>);

/// Every kept version of `path` on every available replica, newest first.
pub fn versions(
    home: &Home,
    profile: &Profile,
    path: &RelPath,
) -> Result<VersionList, EngineError> {
    let store = engine::open_store(home, &profile.name)?;
    let ready = Ready::open(&store, profile)?;
    let mut out = Vec::new();
    for (name, rep) in &ready.reps {
        let list = rep
            .list_versions(Some(path))
            .map_err(|e| EngineError::Io(format!("replica {name}: {e}")))?;
        out.extend(list.into_iter().map(|v| (name.clone(), v)));
    }
    out.sort_by(|a, b| b.1.run.cmp(&a.1.run).then(b.1.id.cmp(&a.1.id)));
    Ok((out, ready.unavailable))
}

/// The short id users type: the run, with `~N` when the run kept several versions.
pub fn short_id(v: &VersionInfo) -> String {
    match v.id.rsplit_once('~') {
        Some((_, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{}~{n}", v.run)
        }
        _ => v.run.clone(),
    }
}

/// `fedsync restore NAME PATH [--version ID]`: put a version back at PATH on the replica
/// that kept it (default: the newest version). What is there now is kept as a version.
pub fn restore(
    home: &Home,
    profile: &Profile,
    path: &RelPath,
    version: Option<&str>,
    replica: Option<&str>,
    wait: bool,
) -> Result<ChangeReport, EngineError> {
    let _lock = engine::lock(home, &profile.name, wait)?;
    let (list, unavailable) = versions(home, profile, path)?;
    let mut cands: Vec<&(String, VersionInfo)> = list
        .iter()
        .filter(|(r, v)| {
            replica.is_none_or(|want| want == r)
                && version.is_none_or(|id| id == short_id(v) || id == v.id)
        })
        .collect();
    if cands.is_empty() {
        let mut msg = match version {
            Some(id) => format!("no version {id} of {path}"),
            None => format!("no kept version of {path}"),
        };
        if !unavailable.is_empty() {
            msg.push_str(&format!(
                " on the available replicas ({} not available)",
                unavailable.len()
            ));
        }
        msg.push_str(&format!(
            "; `fedsync versions {} {path}` lists what is kept",
            profile.name
        ));
        return Err(EngineError::Usage(msg));
    }
    if version.is_some() && replica.is_none() && cands.len() > 1 {
        let names: Vec<&str> = cands.iter().map(|(r, _)| r.as_str()).collect();
        return Err(EngineError::Usage(format!(
            "version {} of {path} is kept on several replicas ({}); say which with --replica",
            version.unwrap_or_default(),
            names.join(", ")
        )));
    }
    cands.truncate(1);
    let (rname, v) = cands[0].clone();
    let mut store = engine::open_store(home, &profile.name)?;
    let ready = Ready::open(&store, profile)?;
    let rep = ready
        .by_name()
        .get(&rname)
        .copied()
        .ok_or_else(|| EngineError::Refused(format!("replica {rname} is not available")))?;
    let cur = rep
        .entry(path, true)
        .map_err(|e| EngineError::Io(format!("replica {rname}: {e}")))?;
    let expect = match &cur {
        None => undo::Expect::Absent,
        Some(e) if e.is_file() => {
            undo::Expect::File(e.hash.map(|h| h.to_hex()).unwrap_or_default())
        }
        Some(e) => undo::Expect::Kind(e.kind.as_str().to_string()),
    };
    let step = UndoStep {
        replica: rname.clone(),
        path: path.to_string(),
        op: undo::UndoOp::PutBack {
            version: v.id.clone(),
        },
        expect,
        done_if: None,
    };
    run_steps(
        home,
        profile,
        &mut store,
        &ready,
        "restore",
        None,
        &[step],
        format!("restore of {path} from version {} on {rname}", short_id(&v)),
        false,
    )
}

/// The result of `prune`.
#[derive(Debug, Default, Serialize)]
pub struct PruneReport {
    pub removed: usize,
    pub kept: usize,
    pub bytes_freed: u64,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// The versions retention removes: beyond the newest `keep` of a path (per replica), or
/// older than `max_age`. `now_ns` is the present in ns since the epoch.
pub fn to_prune(
    list: &[VersionInfo],
    keep: Option<u32>,
    max_age: Option<std::time::Duration>,
    now_ns: i64,
) -> Vec<usize> {
    let mut by_path: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, v) in list.iter().enumerate() {
        by_path.entry(v.path.as_str()).or_default().push(i);
    }
    let mut out = Vec::new();
    for idx in by_path.values_mut() {
        // Newest first: by run id (sortable), then `~N` order.
        idx.sort_by(|&a, &b| {
            list[b]
                .run
                .cmp(&list[a].run)
                .then(list[b].id.cmp(&list[a].id))
        });
        for (rank, &i) in idx.iter().enumerate() {
            let too_many = keep.is_some_and(|k| rank >= k as usize);
            let too_old = max_age.is_some_and(|age| {
                run_time_ns(&list[i].run)
                    .is_some_and(|t| now_ns.saturating_sub(t) > age.as_nanos() as i64)
            });
            if too_many || too_old {
                out.push(i);
            }
        }
    }
    out.sort_unstable();
    out
}

/// When a run started, from its id (`YYYYMMDD-HHMMSS-xxxx`, UTC).
pub fn run_time_ns(run: &str) -> Option<i64> {
    let stamp = run.get(..15)?;
    let t = chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%d-%H%M%S").ok()?;
    t.and_utc().timestamp_nanos_opt()
}

/// `fedsync prune NAME` (and after each run): apply `versions = { keep, max_age }`.
pub fn prune(home: &Home, profile: &Profile, dry_run: bool) -> Result<PruneReport, EngineError> {
    let mut report = PruneReport::default();
    let r = &profile.versions;
    let store = engine::open_store(home, &profile.name)?;
    let ready = Ready::open(&store, profile)?;
    report.warnings = ready.unavailable.clone();
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
    for (name, rep) in &ready.reps {
        let list = match rep.list_versions(None) {
            Ok(l) => l,
            Err(e) => {
                report.errors.push(format!("replica {name}: {e}"));
                continue;
            }
        };
        let gone = if r.keep.is_none() && r.max_age.is_none() {
            Vec::new()
        } else {
            to_prune(&list, r.keep, r.max_age, now)
        };
        report.kept += list.len() - gone.len();
        for i in gone {
            if dry_run {
                report.removed += 1;
                report.bytes_freed += list[i].size;
                continue;
            }
            match rep.remove_version(&list[i].id) {
                Ok(b) => {
                    report.removed += 1;
                    report.bytes_freed += b;
                }
                Err(e) => report.errors.push(format!("replica {name}: {e}")),
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Kind;

    fn v(run: &str, path: &str, n: u32) -> VersionInfo {
        let suffix = if n == 0 {
            String::new()
        } else {
            format!("~{n}")
        };
        VersionInfo {
            id: format!(".fedsync/versions/{run}/{path}{suffix}"),
            run: run.into(),
            path: path.into(),
            kind: Kind::File,
            size: 1,
            mtime: 0,
        }
    }

    #[test]
    fn retention_keeps_the_newest_per_path_and_drops_the_old() {
        let list = vec![
            v("20261101-000000-0000", "a", 0),
            v("20261110-000000-0000", "a", 0),
            v("20261120-000000-0000", "a", 0),
            v("20261120-000000-0000", "a", 1),
            v("20261001-000000-0000", "b", 0),
        ];
        let now = run_time_ns("20261121-000000-0000").unwrap();
        // keep 2: of a, the two newest (20261120 ~1 and plain) stay.
        assert_eq!(to_prune(&list, Some(2), None, now), vec![0, 1]);
        // max_age 15 days: 20261101 and 20261001 go.
        let d15 = std::time::Duration::from_secs(15 * 86400);
        assert_eq!(to_prune(&list, None, Some(d15), now), vec![0, 4]);
        assert!(to_prune(&list, None, None, now).is_empty());
    }
}
