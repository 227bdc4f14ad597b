//! One run: lock, recover, probe, scan, reconcile, guard, journal, apply, record.
//!
//! This is the only module that sequences the pipeline; each stage lives in its own
//! module and can be tested alone.

use crate::audit::{AuditLog, Record};
use crate::config::{ConfigError, DeleteLimit, Policy, Profile, ReplicaAddr, ReplicaSpec};
use crate::entry::{Entry, Hash, Kind};
use crate::path::RelPath;
use crate::reconcile::{self, Action, InputRef, Item, PairCtx, Side};
use crate::replica::local::LocalReplica;
use crate::replica::Scan;
use crate::replica::{Probe, Replica, ReplicaError, ScanOptions, Staged, VersionPath};
use crate::rules::Rules;
use crate::scanlist::ScanList;
use crate::store::{Cached, Store, StoreError};
use crate::Home;
use rayon::prelude::*;
use serde::Serialize;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::sync::Arc;
use std::time::Instant;

/// Errors that stop a command before or outside the per-pair work.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Usage(String),
    #[error("profile {profile}: another fedsync run holds the lock ({lock}); wait for it to finish, or run with --wait")]
    Locked { profile: String, lock: String },
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(String),
    /// A safety refusal (exit 3) with the message saying what to do.
    #[error("{0}")]
    Refused(String),
}

impl EngineError {
    /// SPEC exit codes: 2 usage/configuration, 3 failed or refused.
    pub fn exit_code(&self) -> i32 {
        match self {
            EngineError::Config(_) | EngineError::Usage(_) => 2,
            _ => 3,
        }
    }
}

/// Options of `sync` and `plan`.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub dry_run: bool,
    pub force: bool,
    pub checksum: bool,
    pub conflict: Option<Policy>,
    pub paths: Vec<RelPath>,
    /// Wait for the lock instead of failing.
    pub wait: bool,
    /// Create missing roots that were never synced (the ad-hoc form).
    pub create_missing: bool,
    /// On any failed item, undo everything this run applied.
    pub atomic: bool,
    /// What kind of run this is in the history (default `sync`; `resolve` for resolutions).
    pub label: Option<String>,
    /// Set (e.g. by SIGINT/SIGTERM) to stop the run cleanly: the item being written finishes,
    /// the rest is left for the next run (reported as skipped, journal closed).
    pub cancel: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl Options {
    pub fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// Progress callbacks; the binary draws bars, tests pass `NoProgress`.
pub trait Progress: Sync {
    fn scanning(&self, _replica: &str) {}
    fn scanned(&self, _replica: &str, _entries: usize) {}
    fn applying(&self, _items: u64, _bytes: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn finished(&self) {}
}

pub struct NoProgress;
impl Progress for NoProgress {}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum Outcome {
    Planned,
    Done,
    Skipped(String),
    Failed(String),
    Conflict(String),
}

#[derive(Clone, Debug, Serialize)]
pub struct ItemReport {
    pub path: String,
    pub action: String,
    /// Replica the action changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub why: String,
    pub rule: String,
    pub conflict: bool,
    pub outcome: Outcome,
    pub bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PairStatus {
    /// Both replicas agree.
    Ok,
    /// Finished, but conflicts or skipped items remain.
    Incomplete,
    /// An optional replica is absent: skipped with a warning.
    Skipped,
    /// A replica is unavailable, or the delete guard refused the run: nothing done.
    Refused,
    /// Scanning or applying failed.
    Failed,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    pub to_a: u64,
    pub to_b: u64,
    pub bytes_to_a: u64,
    pub bytes_to_b: u64,
    pub deleted_a: u64,
    pub deleted_b: u64,
    pub moved: u64,
    /// Conflicts settled by a merge (no conflict left).
    pub merged: u64,
    pub conflicts: u64,
    pub skipped: u64,
    pub failed: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PairReport {
    pub a: String,
    pub b: String,
    pub status: PairStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub counts: Counts,
    pub scanned: [usize; 2],
    pub hashed_files: u64,
    pub items: Vec<ItemReport>,
}

impl PairReport {
    fn empty(a: &str, b: &str, status: PairStatus, message: Option<String>) -> PairReport {
        PairReport {
            a: a.into(),
            b: b.into(),
            status,
            message,
            counts: Counts::default(),
            scanned: [0, 0],
            hashed_files: 0,
            items: vec![],
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub run: String,
    pub profile: String,
    pub dry_run: bool,
    pub pairs: Vec<PairReport>,
    pub warnings: Vec<String>,
    pub elapsed_ms: u64,
    /// `--atomic` after a failure: what was undone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub atomic_undo: Option<AtomicUndo>,
}

/// What `sync --atomic` undid after a failed item.
#[derive(Clone, Debug, Serialize)]
pub struct AtomicUndo {
    /// Changes of this run that were undone.
    pub undone: usize,
    /// Changes that could not be undone (path: why).
    pub failed: Vec<(String, String)>,
}

impl RunReport {
    /// 0 all agree, 1 conflicts or skipped items remain, 3 refused or failed.
    pub fn exit_code(&self) -> i32 {
        if self.atomic_undo.is_some() {
            return 3;
        }
        let mut code = 0;
        for p in &self.pairs {
            match p.status {
                PairStatus::Refused | PairStatus::Failed => return 3,
                PairStatus::Incomplete => code = 1,
                PairStatus::Ok | PairStatus::Skipped => {}
            }
        }
        code
    }
}

/// A sortable run id: `YYYYMMDD-HHMMSS-xxxx` (UTC).
pub fn new_run_id() -> (String, String) {
    let now = chrono::Utc::now();
    let stamp = now.format("%Y%m%d-%H%M%S").to_string();
    // The suffix starts with the millisecond, so ids of runs in the same second still sort
    // in the order the runs started.
    let ms = now.timestamp_subsec_millis();
    let suffix = (ms << 6) | (rand::random::<u32>() & 0x3f);
    (format!("{stamp}-{suffix:04x}"), stamp)
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Phase timings on stderr when `FEDSYNC_TIMING` is set (for benchmarks and profiling).
pub(crate) struct Timing(Option<std::cell::Cell<Instant>>);

impl Timing {
    pub(crate) fn new() -> Timing {
        Timing(std::env::var_os("FEDSYNC_TIMING").map(|_| std::cell::Cell::new(Instant::now())))
    }
    pub(crate) fn mark(&self, what: &str) {
        if let Some(c) = &self.0 {
            // Resident memory: anonymous (heap) and file-backed (binary, mapped files).
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            let kb = |key: &str| -> u64 {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0)
            };
            eprintln!(
                "timing: {what:<12} {:>8.1} ms  rss {} MB (anon {}, file {}, peak {})",
                c.get().elapsed().as_secs_f64() * 1e3,
                kb("VmRSS:") / 1000,
                kb("RssAnon:") / 1000,
                kb("RssFile:") / 1000,
                kb("VmHWM:") / 1000,
            );
            c.set(Instant::now());
        }
    }
}

/// A held profile lock; released on drop.
pub struct Lock {
    _file: File,
}

pub fn lock(home: &Home, profile: &str, wait: bool) -> Result<Lock, EngineError> {
    let dir = home.state_dir();
    std::fs::create_dir_all(&dir)
        .map_err(|e| EngineError::Io(format!("cannot create {}: {e}", dir.display())))?;
    let path = home.lock_path(profile);
    let file = File::create(&path)
        .map_err(|e| EngineError::Io(format!("cannot open lock {}: {e}", path.display())))?;
    if wait {
        file.lock()
            .map_err(|e| EngineError::Io(format!("cannot lock {}: {e}", path.display())))?;
    } else if let Err(e) = file.try_lock() {
        return match e {
            std::fs::TryLockError::WouldBlock => Err(EngineError::Locked {
                profile: profile.into(),
                lock: path.display().to_string(),
            }),
            std::fs::TryLockError::Error(e) => Err(EngineError::Io(format!(
                "cannot lock {}: {e}",
                path.display()
            ))),
        };
    }
    Ok(Lock { _file: file })
}

pub fn open_store(home: &Home, profile: &str) -> Result<Store, EngineError> {
    let dir = home.state_dir();
    std::fs::create_dir_all(&dir)
        .map_err(|e| EngineError::Io(format!("cannot create {}: {e}", dir.display())))?;
    Ok(Store::open(&home.db_path(profile))?)
}

/// Open the replica object for a profile entry (remote ones with the ssh settings of the
/// environment only; see [`open_replica_in`]).
pub fn open_replica(spec: &ReplicaSpec) -> Result<Arc<dyn Replica>, String> {
    open_replica_with(spec, &crate::remote::Settings::new(None, None))
}

/// Open the replica object for an entry of `profile`, honouring its `ssh` and
/// `remote_cmd` keys. An `ssh://` replica starts its agent here: an unreachable host, a
/// failed login or a missing fedsync on the remote side is reported now, and the replica
/// is unavailable for this run (exit 3, nothing done).
pub fn open_replica_in(profile: &Profile, spec: &ReplicaSpec) -> Result<Arc<dyn Replica>, String> {
    open_replica_with(
        spec,
        &crate::remote::Settings::new(profile.ssh.as_deref(), profile.remote_cmd.as_deref()),
    )
}

fn open_replica_with(
    spec: &ReplicaSpec,
    settings: &crate::remote::Settings,
) -> Result<Arc<dyn Replica>, String> {
    match &spec.addr {
        ReplicaAddr::Local(p) => Ok(Arc::new(LocalReplica::new(p.clone(), spec.raw.clone()))),
        ReplicaAddr::Ssh {
            user,
            host,
            port,
            path,
        } => {
            let target = crate::remote::client::Target {
                user: user.clone(),
                host: host.clone(),
                port: *port,
                path: path.clone(),
            };
            Ok(Arc::new(crate::remote::RemoteReplica::connect(
                spec, target, settings,
            )?))
        }
    }
}

/// Whether a replica may be read and written this run.
#[derive(Clone, Debug)]
pub enum Avail {
    Ready(String),
    Skip(String),
    Unavailable(String),
}

pub fn new_replica_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Check root and marker against what the state remembers (SPEC invariant 5).
pub fn check_replica(
    store: &Store,
    spec: &ReplicaSpec,
    rep: &dyn Replica,
    create_missing: bool,
    dry_run: bool,
) -> Result<Avail, EngineError> {
    let known = store.replica_id(&spec.name)?.map(|(id, _)| id);
    let who = format!("replica {} ({})", spec.name, spec.raw);
    let probe = match rep.probe() {
        Ok(p) => p,
        // An optional replica that cannot be reached (host down, drive away) is skipped.
        Err(e) if spec.optional => {
            return Ok(Avail::Skip(format!(
                "{who} cannot be reached (optional): skipped: {e}"
            )))
        }
        Err(e) => return Ok(Avail::Unavailable(format!("{who}: {e}"))),
    };
    let adopt = |id: String| -> Result<Avail, EngineError> {
        if !dry_run {
            rep.write_marker(&id)
                .map_err(|e| EngineError::Io(format!("{who}: cannot write marker: {e}")))?;
            store.set_replica_id(&spec.name, &id, &spec.raw)?;
        }
        Ok(Avail::Ready(id))
    };
    match probe {
        Probe::Missing => {
            if spec.optional {
                Ok(Avail::Skip(format!("{who} is not present (optional): skipped")))
            } else if known.is_some() {
                Ok(Avail::Unavailable(format!(
                    "{who}: root does not exist (drive not mounted? folder moved?). Nothing was done; \
                     mount it or fix the profile, then run again."
                )))
            } else if create_missing {
                adopt(new_replica_id())
            } else {
                Ok(Avail::Unavailable(format!(
                    "{who}: root does not exist. Create the folder (or run `fedsync init`) and run again."
                )))
            }
        }
        Probe::Unmarked { .. } => match known {
            Some(id) => {
                let msg = format!(
                    "{who}: the marker .fedsync/id is missing, but this profile synced this replica before \
                     (id {}). It is not the same folder (unmounted drive? folder replaced?), so nothing was \
                     done and nothing is deleted. If the folder really is the replica, restore its marker.",
                    &id[..8.min(id.len())]
                );
                if spec.optional {
                    Ok(Avail::Skip(msg))
                } else {
                    Ok(Avail::Unavailable(msg))
                }
            }
            None => adopt(new_replica_id()),
        },
        Probe::Marked(id) => match known {
            Some(k) if k != id => Ok(Avail::Unavailable(format!(
                "{who}: the marker says replica {} but this profile synced {} here before: a different \
                 folder is mounted at this path. Nothing was done.",
                &id[..8.min(id.len())],
                &k[..8.min(k.len())]
            ))),
            Some(_) => Ok(Avail::Ready(id)),
            None => {
                if !dry_run {
                    store.set_replica_id(&spec.name, &id, &spec.raw)?;
                }
                Ok(Avail::Ready(id))
            }
        },
    }
}

pub fn pair_key(ida: &str, idb: &str) -> String {
    format!("{ida}|{idb}")
}

/// Run a sync (or, with `dry_run`, a plan) of a whole profile.
pub fn sync(
    home: &Home,
    profile: &Profile,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<RunReport, EngineError> {
    let started = Instant::now();
    let _lock = if opts.dry_run {
        None
    } else {
        Some(lock(home, &profile.name, opts.wait)?)
    };
    let rules = Rules::compile(profile)?.with_conflict_override(opts.conflict.clone());
    let mut store = open_store(home, &profile.name)?;
    let (run, stamp) = new_run_id();
    let mut warnings = Vec::new();

    let reps: Vec<Result<Arc<dyn Replica>, String>> = profile
        .replicas
        .iter()
        .map(|s| open_replica_in(profile, s))
        .collect();

    let mut audit = if opts.dry_run {
        None
    } else {
        let path = home.audit_path(&profile.name);
        Some(
            AuditLog::open(&path)
                .map_err(|e| EngineError::Io(format!("audit trail {}: {e}", path.display())))?,
        )
    };

    if !opts.dry_run {
        warnings.extend(recover(&mut store, profile, &reps, audit.as_mut())?);
    }

    // Availability, once per replica.
    let mut avail = Vec::new();
    for (spec, rep) in profile.replicas.iter().zip(&reps) {
        avail.push(match rep {
            Ok(r) => check_replica(&store, spec, r.as_ref(), opts.create_missing, opts.dry_run)?,
            // An optional replica that cannot be reached (host down) is skipped.
            Err(msg) if spec.optional => Avail::Skip(format!("{msg} (optional replica: skipped)")),
            Err(msg) => Avail::Unavailable(msg.clone()),
        });
    }
    for a in &avail {
        if let Avail::Skip(msg) = a {
            warnings.push(msg.clone());
        }
    }

    if !opts.dry_run {
        let detail = format!(
            "profile {}: {}",
            profile.name,
            profile
                .replicas
                .iter()
                .map(|r| format!("{}={}", r.name, r.raw))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let kind = opts.label.as_deref().unwrap_or("sync");
        begin_run(&mut store, audit.as_mut(), &run, kind, detail)?;
    }

    let mut eng = Engine {
        store: &mut store,
        audit: audit.as_mut(),
        rules: &rules,
        profile,
        opts,
        run: &run,
        stamp: &stamp,
        progress,
        seq_base: 0,
        applied: Vec::new(),
        base_before: Vec::new(),
    };

    let n = profile.replicas.len();
    let mut pairs: Vec<PairReport> = Vec::new();
    let mut last_hub_change = 0;
    for k in 1..n {
        if opts.cancelled() {
            warnings
                .push("stopped before every pair was synced; the next run does the rest".into());
            break;
        }
        let rep = eng.pair(0, k, &reps, &avail)?;
        if rep.counts.to_a > 0 || rep.counts.deleted_a > 0 {
            last_hub_change = k;
        }
        pairs.push(rep);
    }
    // Star topology: a change a later spoke brought to the hub reaches earlier spokes now.
    if !opts.dry_run {
        for k in 1..last_hub_change {
            let rep = eng.pair(0, k, &reps, &avail)?;
            let prev = &mut pairs[k - 1];
            let mut items = std::mem::take(&mut prev.items);
            items.extend(rep.items);
            let mut counts = rep.counts.clone();
            counts.to_a += prev.counts.to_a;
            counts.to_b += prev.counts.to_b;
            counts.bytes_to_a += prev.counts.bytes_to_a;
            counts.bytes_to_b += prev.counts.bytes_to_b;
            counts.deleted_a += prev.counts.deleted_a;
            counts.deleted_b += prev.counts.deleted_b;
            counts.moved += prev.counts.moved;
            counts.merged += prev.counts.merged;
            *prev = PairReport {
                items,
                counts,
                ..rep
            };
        }
    }

    // --atomic: a failed item undoes everything this run applied, last change first, and
    // puts the base of every changed path back, so the next run sees what this one saw.
    let failed = pairs
        .iter()
        .any(|p| p.counts.failed > 0 || p.status == PairStatus::Failed);
    let mut atomic_undo = None;
    if opts.atomic && failed && !opts.dry_run {
        let applied = std::mem::take(&mut eng.applied);
        let base_before = std::mem::take(&mut eng.base_before);
        let by_name: HashMap<String, &dyn Replica> = profile
            .replicas
            .iter()
            .zip(&reps)
            .filter_map(|(s, r)| r.as_ref().ok().map(|r| (s.name.clone(), r.as_ref())))
            .collect();
        let plan = crate::undo::plan(&applied);
        let done = crate::undo::apply(
            &plan.steps,
            &by_name,
            &run,
            // Versions the undo keeps go to a folder of their own: this run's folder may
            // already hold a version at the same path.
            &format!("{run}-undo"),
            "--atomic: an item of this run failed, so its changes are undone",
            false,
            eng.audit.as_deref_mut(),
            |_| {},
        );
        let b = eng.store.batch()?;
        for (pair, path, e) in &base_before {
            match e {
                Some(e) => b.set_base(*pair, path, e)?,
                None => b.remove_base(*pair, path)?,
            }
        }
        b.commit()?;
        let mut failed: Vec<(String, String)> = plan.impossible;
        failed.extend(done.failed);
        warnings.push(format!(
            "--atomic: an item failed, so the {} changes this run made were undone{}",
            done.done.len(),
            if failed.is_empty() {
                String::new()
            } else {
                format!("; {} could not be undone (see below)", failed.len())
            }
        ));
        atomic_undo = Some(AtomicUndo {
            undone: done.done.len(),
            failed,
        });
    }

    let mut report = RunReport {
        run: run.clone(),
        profile: profile.name.clone(),
        dry_run: opts.dry_run,
        pairs,
        warnings,
        elapsed_ms: started.elapsed().as_millis() as u64,
        atomic_undo,
    };

    if !opts.dry_run {
        let status = match report.exit_code() {
            0 => "ok",
            1 => "incomplete",
            _ if report.atomic_undo.is_some() => "undone",
            _ => "failed",
        };
        let summary = serde_json::json!({
            "pairs": report.pairs.iter().map(|p| serde_json::json!({
                "a": p.a, "b": p.b, "status": p.status, "message": p.message, "counts": p.counts,
            })).collect::<Vec<_>>(),
            "warnings": report.warnings,
            "elapsed_ms": report.elapsed_ms,
        });
        end_run(&mut store, audit.as_mut(), &run, status, summary)?;
        drop(store);
        // Version retention, after every run that may have kept versions.
        let r = &profile.versions;
        if r.keep.is_some() || r.max_age.is_some() {
            match crate::history::prune(home, profile, false) {
                Ok(p) => report.warnings.extend(
                    p.errors
                        .into_iter()
                        .map(|e| format!("version retention: {e}")),
                ),
                Err(e) => report.warnings.push(format!("version retention: {e}")),
            }
        }
    }
    progress.finished();
    Ok(report)
}

/// Record the start of a run: its row in the state (status `running`, which is what crash
/// recovery looks for) and its first audit line.
pub(crate) fn begin_run(
    store: &mut Store,
    audit: Option<&mut AuditLog>,
    run: &str,
    kind: &str,
    detail: String,
) -> Result<(), EngineError> {
    let b = store.batch()?;
    b.start_run(run, kind, &now_rfc3339())?;
    b.commit()?;
    if let Some(a) = audit {
        let _ = a.append(Record {
            time: now_rfc3339(),
            run: run.to_string(),
            action: "run-start".into(),
            detail: format!("{kind}: {detail}"),
            ..Default::default()
        });
    }
    Ok(())
}

/// Record the end of a run: the audit trail made durable, its head remembered, the run's
/// row finished with its status and summary.
pub(crate) fn end_run(
    store: &mut Store,
    audit: Option<&mut AuditLog>,
    run: &str,
    status: &str,
    summary: serde_json::Value,
) -> Result<(), EngineError> {
    if let Some(a) = audit {
        let _ = a.append(Record {
            time: now_rfc3339(),
            run: run.to_string(),
            action: "run-end".into(),
            detail: format!("status {status}"),
            ..Default::default()
        });
        a.sync()
            .map_err(|e| EngineError::Io(format!("audit trail: {e}")))?;
        store.set_meta("audit_head", a.head())?;
    }
    let b = store.batch()?;
    b.finish_run(run, &now_rfc3339(), status, &summary)?;
    b.commit()?;
    Ok(())
}

/// Finish what a killed run left behind (SPEC invariant 9). Three-way detection makes most
/// of it a lookup: applied items look "changed identically", unapplied ones are still
/// pending. What needs care is an overwrite on a filesystem without hard links, where the
/// old file was moved to the versions folder before the new one took its name.
fn recover(
    store: &mut Store,
    profile: &Profile,
    reps: &[Result<Arc<dyn Replica>, String>],
    mut audit: Option<&mut AuditLog>,
) -> Result<Vec<String>, EngineError> {
    let mut warnings = Vec::new();
    let runs = store.unfinished_runs()?;
    if runs.is_empty() {
        return Ok(warnings);
    }
    let by_name: HashMap<&str, &Arc<dyn Replica>> = profile
        .replicas
        .iter()
        .zip(reps)
        .filter_map(|(s, r)| r.as_ref().ok().map(|r| (s.name.as_str(), r)))
        .collect();
    let mut cleaned = 0;
    for r in by_name.values() {
        if matches!(r.probe(), Ok(Probe::Marked(_))) {
            cleaned += r.clean_temp().unwrap_or(0);
        }
    }
    for run in &runs {
        let pending = store.pending_journal(run)?;
        let mut restored = 0;
        for (_pair, path, action, detail) in &pending {
            if action != "copy" && action != "keep-both" {
                continue;
            }
            let target = serde_json::from_str::<serde_json::Value>(detail)
                .ok()
                .and_then(|v| v["target"].as_str().map(str::to_string));
            let (Some(target), Ok(path)) = (target, RelPath::new(path)) else {
                continue;
            };
            let Some(rep) = by_name.get(target.as_str()) else {
                continue;
            };
            if let Some(root) = rep.local_root() {
                let dst = path.to_fs(root);
                let ver = root
                    .join(crate::replica::local::META_DIR)
                    .join("versions")
                    .join(run)
                    .join(path.as_str());
                if std::fs::symlink_metadata(&dst).is_err()
                    && std::fs::symlink_metadata(&ver).is_ok()
                    && std::fs::rename(&ver, &dst).is_ok()
                {
                    restored += 1;
                }
            }
        }
        let b = store.batch()?;
        b.finish_run(
            run,
            &now_rfc3339(),
            "interrupted",
            &serde_json::json!({"unconfirmed": pending.len(), "restored": restored}),
        )?;
        b.commit()?;
        let msg = format!(
            "run {run} was interrupted ({} actions were planned{}); {cleaned} temporary files removed; \
             this run re-checks every path, so what it finished is kept and the rest is done now",
            pending.len(),
            if restored > 0 {
                format!(", {restored} half-replaced files put back")
            } else {
                String::new()
            }
        );
        if let Some(a) = audit.as_deref_mut() {
            let _ = a.append(Record {
                time: now_rfc3339(),
                run: run.clone(),
                action: "recovered".into(),
                detail: msg.clone(),
                ..Default::default()
            });
        }
        warnings.push(msg);
    }
    Ok(warnings)
}

struct Engine<'a> {
    store: &'a mut Store,
    audit: Option<&'a mut AuditLog>,
    rules: &'a Rules,
    profile: &'a Profile,
    opts: &'a Options,
    run: &'a str,
    stamp: &'a str,
    progress: &'a dyn Progress,
    /// Journal sequence numbers already used by earlier pairs of this run.
    seq_base: usize,
    /// `--atomic`: the changes applied so far, and the base each changed path had before.
    applied: Vec<Record>,
    base_before: Vec<(i64, RelPath, Option<Entry>)>,
}

/// A state change to write in the next store batch.
enum StateOp {
    SetBase(RelPath, Entry),
    RemoveBase(RelPath),
    Journal(usize, &'static str),
    Conflict(RelPath, String, Option<Entry>, Option<Entry>),
    /// (path, snapshot hash, source hash, source size): see `Store::base_aliases`.
    Alias(RelPath, Hash, Hash, u64),
}

fn base_of(e: &Entry) -> Entry {
    Entry {
        stat: None,
        ..e.clone()
    }
}

/// How many per-path state changes may pile up before the whole snapshot is rewritten.
fn compact_threshold(tree: usize) -> usize {
    (tree / 8).max(2000)
}

/// Directories that exist only to lead to included paths are synced only when something
/// included lies inside them (no empty skeleton of excluded folders).
fn drop_empty_containers(entries: &mut ScanList, rules: &Rules) {
    let n = entries.len();
    let mut drop = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if !e.is_dir() {
            continue;
        }
        let p = e.path();
        if rules.is_container_only(&p) {
            // Sorted: a child, if any, is among the entries right after it.
            let has_child = (i + 1..n)
                .map(|j| entries.path(j))
                .take_while(|q| q.as_str().starts_with(p.as_str()))
                .any(|q| q.starts_with(&p) && q != p);
            if !has_child {
                drop.push(i);
            }
        }
    }
    if !drop.is_empty() {
        entries.retain_indices(|i| drop.binary_search(&i).is_err());
    }
}

/// After a scan with [`ScanOptions::defer_hash`]: hash the files that must be compared
/// (a file at the same path on the other side) or whose content rules read (validators,
/// merges, SQLite write-ahead logs folded into their database's hash). The others keep
/// `hash: None` and are hashed by the copy that reads them.
fn hash_deferred(a: &mut Scan, b: &mut Scan, reps: [&dyn Replica; 2], rules: &Rules) {
    hash_side(a, &b.entries, reps[0], rules);
    hash_side(b, &a.entries, reps[1], rules);
}

fn hash_side(scan: &mut Scan, other: &ScanList, rep: &dyn Replica, rules: &Rules) {
    let content_rules = rules.reads_content();
    let needs = |p: &str| {
        p.ends_with("-wal")
            || other.find(p).is_some_and(|i| other.get(i).is_file())
            || content_rules && {
                let pr = rules.for_path(&RelPath::trusted(p.to_string()), false);
                pr.validate.is_some() || pr.merge.is_some()
            }
    };
    let mut todo: Vec<usize> = Vec::new();
    let mut cur = scan.entries.cursor();
    let mut i = 0;
    while let Some((p, e)) = cur.peek() {
        if e.is_file() && e.hash().is_none() && needs(p) {
            todo.push(i);
        }
        cur.advance();
        i += 1;
    }
    drop(cur);
    let entries = &scan.entries;
    let hashed: Vec<(usize, Result<Option<Entry>, String>)> = todo
        .par_iter()
        .map(|&i| {
            (
                i,
                rep.entry(&entries.path(i), true).map_err(|e| e.to_string()),
            )
        })
        .collect();
    for (i, r) in hashed {
        match r {
            Ok(Some(e)) if e.is_file() && e.hash.is_some() => {
                scan.hashed_files += 1;
                scan.hashed_bytes += e.size;
                scan.hashed_paths.push(scan.entries.path(i));
                scan.entries.set_file(i, &e);
            }
            // Gone or replaced since the walk: the entry stays (never read as deleted)
            // and is marked unreadable for this run.
            Ok(_) => scan.errors.push((
                scan.entries.path(i),
                "changed while it was scanned".to_string(),
            )),
            Err(m) => scan.errors.push((scan.entries.path(i), m)),
        }
    }
}

/// The per-path inputs: base ∪ A ∪ B (each sorted by path), merged in order as a stream of
/// borrowed entries (never materialized: reconcile consumes it), with unreadable subtrees
/// flagged and `--paths` applied.
pub struct Merge<'a, B: Iterator<Item = (RelPath, Entry)>> {
    base: std::iter::Peekable<B>,
    sides: [crate::scanlist::Cursor<'a>; 2],
    errs: [HashMap<&'a str, &'a str>; 2],
    any_errors: bool,
    /// The paths with an error, both sides', in path order: each is an input even where
    /// neither the base nor a scan has it (a name the walk could not carry), so that it
    /// is reported.
    err_paths: Vec<&'a str>,
    names: [&'a str; 2],
    only: &'a [RelPath],
    /// The current path.
    path: String,
}

pub fn build_inputs<'a, B: Iterator<Item = (RelPath, Entry)>>(
    base: B,
    a: &'a ScanList,
    b: &'a ScanList,
    errors: [&'a [(RelPath, String)]; 2],
    names: [&'a str; 2],
    only: &'a [RelPath],
) -> Merge<'a, B> {
    let errs: [HashMap<&str, &str>; 2] = errors.map(|es| {
        es.iter()
            .map(|(p, m)| (p.as_str(), m.as_str()))
            .collect::<HashMap<_, _>>()
    });
    let mut err_paths: Vec<&str> = errs.iter().flat_map(|e| e.keys().copied()).collect();
    err_paths.sort_unstable();
    err_paths.dedup();
    err_paths.reverse(); // popped from the end, smallest first
    Merge {
        base: base.peekable(),
        sides: [a.cursor(), b.cursor()],
        any_errors: errs.iter().any(|e| !e.is_empty()),
        err_paths,
        errs,
        names,
        only,
        path: String::new(),
    }
}

impl<'a, B: Iterator<Item = (RelPath, Entry)>> reconcile::Inputs<'a> for Merge<'a, B> {
    fn next_input(&mut self) -> Option<(&str, InputRef<'a>)> {
        loop {
            // The smallest path of the three streams.
            let [ca, cb] = &self.sides;
            let side_min = match (ca.peek(), cb.peek()) {
                (Some((x, _)), Some((y, _))) => Some(if y < x { y } else { x }),
                (Some((x, _)), None) | (None, Some((x, _))) => Some(x),
                (None, None) => None,
            };
            // ... or of the error paths, which may be in neither scan.
            let other_min = match (side_min, self.err_paths.last().copied()) {
                (Some(x), Some(q)) => Some(if q < x { q } else { x }),
                (x, q) => x.or(q),
            };
            let base_first = match (self.base.peek(), other_min) {
                (None, None) => return None,
                (Some((bp, _)), Some(x)) => bp.as_str() < x,
                (Some(_), None) => true,
                (None, Some(_)) => false,
            };
            self.path.clear();
            let be = if base_first {
                let (p, e) = self.base.next().expect("peeked");
                self.path.push_str(p.as_str());
                Some(e)
            } else {
                let x = other_min.expect("a side or an error has it");
                self.path.push_str(x);
                if self.base.peek().is_some_and(|(bp, _)| bp.as_str() == x) {
                    self.base.next().map(|(_, e)| e)
                } else {
                    None
                }
            };
            let mut take = |k: usize| {
                let c = &mut self.sides[k];
                let e = c.peek().filter(|(p, _)| *p == self.path).map(|(_, e)| e);
                if e.is_some() {
                    c.advance();
                }
                e
            };
            let (ea, eb) = (take(0), take(1));
            let path = self.path.as_str();
            while self.err_paths.last().is_some_and(|q| *q <= path) {
                self.err_paths.pop();
            }
            if !self.only.is_empty()
                && !self
                    .only
                    .iter()
                    .any(|o| crate::path::str_starts_with(path, o.as_str()))
            {
                continue;
            }
            let mut unreadable = None;
            if self.any_errors {
                for (side, es) in self.errs.iter().enumerate() {
                    let hit = std::iter::once(path)
                        .chain(crate::path::str_ancestors(path))
                        .find_map(|q| es.get(q).map(|m| (q, *m)));
                    if let Some((q, m)) = hit {
                        let at = if q == path {
                            String::new()
                        } else {
                            format!(" (at {q})")
                        };
                        unreadable = Some(format!("unreadable on {}{at}: {m}", self.names[side]));
                    }
                }
            }
            // (The path is borrowed anew for the caller: the one above ends here.)
            return Some((
                self.path.as_str(),
                InputRef {
                    base: be,
                    a: ea,
                    b: eb,
                    unreadable,
                },
            ));
        }
    }
}

impl Engine<'_> {
    fn pair(
        &mut self,
        ia: usize,
        ib: usize,
        reps: &[Result<Arc<dyn Replica>, String>],
        avail: &[Avail],
    ) -> Result<PairReport, EngineError> {
        let timing = Timing::new();
        let (sa, sb) = (&self.profile.replicas[ia], &self.profile.replicas[ib]);
        let names = [sa.name.clone(), sb.name.clone()];
        let (ida, idb) = match (&avail[ia], &avail[ib]) {
            (Avail::Ready(a), Avail::Ready(b)) => (a.clone(), b.clone()),
            (Avail::Unavailable(m), _) | (_, Avail::Unavailable(m)) => {
                return Ok(PairReport::empty(
                    &names[0],
                    &names[1],
                    PairStatus::Refused,
                    Some(m.clone()),
                ))
            }
            (Avail::Skip(m), _) | (_, Avail::Skip(m)) => {
                return Ok(PairReport::empty(
                    &names[0],
                    &names[1],
                    PairStatus::Skipped,
                    Some(m.clone()),
                ))
            }
        };
        let ra = reps[ia].as_ref().expect("available").clone();
        let rb = reps[ib].as_ref().expect("available").clone();
        let pair_name = pair_key(&ida, &idb);
        let pair = if self.opts.dry_run {
            // A plan never writes, not even a new pair id; an unknown pair has no base.
            self.store.find_pair_id(&pair_name)?.unwrap_or(-1)
        } else {
            self.store.pair_id(&pair_name)?
        };
        let ids = [ida, idb];

        // Scan both sides at once.
        let cache_a = self.store.load_cache(&ids[0])?;
        let cache_b = self.store.load_cache(&ids[1])?;
        timing.mark("load caches");
        // A first sync between local folders: files only one side has are hashed by the
        // copy that reads them anyway (no base, so no rename to detect from their hashes).
        let defer_hash = !self.opts.checksum
            && ra.local_root().is_some()
            && rb.local_root().is_some()
            && (pair < 0 || self.store.base_is_empty(pair)?);
        let sopts = ScanOptions {
            checksum: self.opts.checksum,
            only: self.opts.paths.clone(),
            defer_hash,
        };
        let rules = self.rules;
        self.progress
            .scanning(&format!("{} and {}", names[0], names[1]));
        let cache_deltas = [cache_a.delta_len(), cache_b.delta_len()];
        // Each side's cache is freed as soon as that side's scan is done with it.
        let scan_with = |r: &Arc<dyn Replica>, cache: crate::store::CacheBlob| {
            let scan = r.scan(rules, &cache, &sopts);
            drop(cache);
            scan
        };
        let (scan_a, scan_b) = rayon::join(|| scan_with(&ra, cache_a), || scan_with(&rb, cache_b));
        timing.mark("scan");
        let (mut scan_a, mut scan_b) = match (scan_a, scan_b) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) => {
                return Ok(PairReport::empty(
                    &names[0],
                    &names[1],
                    PairStatus::Failed,
                    Some(format!("scan of {} failed: {e}", names[0])),
                ))
            }
            (_, Err(e)) => {
                return Ok(PairReport::empty(
                    &names[0],
                    &names[1],
                    PairStatus::Failed,
                    Some(format!("scan of {} failed: {e}", names[1])),
                ))
            }
        };
        for (s, scan) in [(0usize, &scan_a), (1, &scan_b)] {
            if let Some((_, m)) = scan.errors.iter().find(|(p, _)| p.is_root()) {
                return Ok(PairReport::empty(
                    &names[0],
                    &names[1],
                    PairStatus::Failed,
                    Some(format!("cannot read the root of {}: {m}", names[s])),
                ));
            }
        }
        if defer_hash {
            hash_deferred(&mut scan_a, &mut scan_b, [ra.as_ref(), rb.as_ref()], rules);
        }
        fold_sqlite_wal(&mut scan_a.entries, rules);
        fold_sqlite_wal(&mut scan_b.entries, rules);
        if pair >= 0 {
            let aliases = self.store.base_aliases(pair)?;
            if !aliases.is_empty() {
                for entries in [&mut scan_a.entries, &mut scan_b.entries] {
                    let mut fix = Vec::new();
                    for (p, list) in &aliases {
                        let Some(i) = entries.find(p) else { continue };
                        let mut e = entries.entry(i);
                        let hex = e.hash.map(|h| h.to_hex());
                        if let Some((_, h, size)) =
                            list.iter().find(|(a, _, _)| Some(a) == hex.as_ref())
                        {
                            if e.is_file() {
                                e.hash = Some(*h);
                                e.size = *size;
                                fix.push((i, e));
                            }
                        }
                    }
                    for (i, e) in fix {
                        entries.set_file(i, &e);
                    }
                }
            }
        }
        drop_empty_containers(&mut scan_a.entries, rules);
        drop_empty_containers(&mut scan_b.entries, rules);
        let scanned = [scan_a.entries.len(), scan_b.entries.len()];
        self.progress.scanned(&names[0], scanned[0]);
        self.progress.scanned(&names[1], scanned[1]);
        let hashed_files = scan_a.hashed_files + scan_b.hashed_files;
        let hashed_paths = [
            std::mem::take(&mut scan_a.hashed_paths),
            std::mem::take(&mut scan_b.hashed_paths),
        ];
        let scan_started = scan_a.started_ns.min(scan_b.started_ns);
        // The scans and the base stay alive until the end of the pair: reconcile's
        // unchanged rows borrow from them.
        let entries_a = std::mem::take(&mut scan_a.entries);
        let entries_b = std::mem::take(&mut scan_b.entries);
        let pctx = PairCtx {
            names: names.clone(),
            stamp: self.stamp.to_string(),
        };
        // The base is streamed from the state database into the merge with both scans: it
        // is never held whole next to them (lower peak memory).
        let base_files = std::cell::Cell::new(0u64);
        let reconcile::Reconciled {
            mut items,
            unchanged,
        } = self.store.with_base(pair, |base| {
            let base =
                base.inspect(|(_, e)| base_files.set(base_files.get() + u64::from(!e.is_dir())));
            let inputs = build_inputs(
                base,
                &entries_a,
                &entries_b,
                [&scan_a.errors, &scan_b.errors],
                [&names[0], &names[1]],
                &self.opts.paths,
            );
            reconcile::reconcile_split(&mut { inputs }, &|p, d| rules.for_path(p, d), &pctx)
        })?;
        let base_files = base_files.get();
        let tree_len = items.len() + unchanged.len();
        timing.mark("reconcile");
        // Validators and merges: the decisions that read content.
        let merged = crate::content::settle(
            &mut items,
            rules,
            [ra.as_ref(), rb.as_ref()],
            &pctx,
            self.store,
            pair,
        );
        let items = items;

        // The delete guard (SPEC invariant 6): moves are not deletions.
        if !self.opts.force {
            for side in [Side::A, Side::B] {
                let deletes = items
                    .iter()
                    .filter(|it| {
                        matches!(it.decision.action, Action::Delete { on } if on == side)
                            && it.side(side).is_some_and(|e| !e.is_dir())
                    })
                    .count() as u64;
                let (limit, label) = match self.profile.max_delete {
                    DeleteLimit::Percent(p) => (
                        (base_files as f64 * p / 100.0).floor() as u64,
                        format!("{p}% of {base_files} synced files"),
                    ),
                    DeleteLimit::Count(n) => (n, format!("{n} files")),
                };
                if deletes > limit {
                    let mut rep = PairReport::empty(
                        &names[0],
                        &names[1],
                        PairStatus::Refused,
                        Some(format!(
                            "refused: this run would delete {deletes} files on {} (limit max_delete = {label}). \
                             Nothing was done. If the deletions are intended, run again with --force; \
                             if not, check that {} is the folder you expect.",
                            names[side.idx()],
                            names[side.other().idx()]
                        )),
                    );
                    rep.scanned = scanned;
                    rep.items = items
                        .iter()
                        .filter(|it| it.decision.action.changes_something())
                        .map(|it| self.item_report(it, &pctx, Outcome::Planned))
                        .collect();
                    return Ok(rep);
                }
            }
        }

        let mut report = PairReport::empty(&names[0], &names[1], PairStatus::Ok, None);
        report.scanned = scanned;
        report.hashed_files = hashed_files;

        if self.opts.dry_run {
            for it in &items {
                let outcome = match &it.decision.action {
                    Action::None | Action::Record | Action::Forget => continue,
                    Action::Conflict { reason } => Outcome::Conflict(reason.clone()),
                    Action::Skip { reason } => Outcome::Skipped(reason.clone()),
                    _ => Outcome::Planned,
                };
                let mut r = self.item_report(it, &pctx, outcome);
                r.bytes = planned_bytes(it);
                report.items.push(r);
            }
            tally(&mut report, &items);
            return Ok(report);
        }

        let mut ap = Applier {
            eng: self,
            pair,
            pair_name: &pair_name,
            reps: [ra.as_ref(), rb.as_ref()],
            ids: &ids,
            pctx: &pctx,
            items: &items,
            unchanged: &unchanged,
            outcomes: vec![None; items.len()],
            ops: Vec::new(),
            bytes: vec![0; items.len()],
            versions: vec![None; items.len()],
            aside: HashMap::new(),
            cache_over: [HashMap::new(), HashMap::new()],
            merged: &merged,
            reviews_kept: 0,
        };
        ap.run()?;
        ap.save_base_content()?;
        ap.save_caches(hashed_paths, cache_deltas, scan_started)?;
        ap.eng.seq_base += items.len();
        timing.mark("apply");
        let Applier {
            outcomes,
            bytes,
            versions,
            reviews_kept,
            ..
        } = ap;
        // Fold the per-path base changes into a new snapshot once they are a noticeable
        // share of the tree: a run with a few changes writes a few rows, not the whole base.
        if self.store.base_delta_len(pair)? > compact_threshold(tree_len) {
            self.store.compact_base(pair)?;
        }
        for (i, it) in items.iter().enumerate() {
            let outcome = match &outcomes[i] {
                Some(o) => o.clone(),
                None => continue,
            };
            let mut r = self.item_report(it, &pctx, outcome);
            r.bytes = bytes[i];
            r.version = versions[i].clone();
            report.items.push(r);
        }
        tally(&mut report, &items);
        if reviews_kept > 0 {
            report.counts.conflicts += reviews_kept;
            if report.status == PairStatus::Ok {
                report.status = PairStatus::Incomplete;
            }
            report.message.get_or_insert_with(|| {
                format!("{reviews_kept} merged file(s) still hold conflict markers: edit them (see `fedsync status`)")
            });
        }
        drop(items);
        timing.mark("report");
        Ok(report)
    }

    fn item_report(&self, it: &Item, pctx: &PairCtx, outcome: Outcome) -> ItemReport {
        let target = target_side(&it.decision.action).map(|s| pctx.name(s).to_string());
        ItemReport {
            path: it.path.to_string(),
            action: it.decision.action.name().to_string(),
            target,
            why: it.decision.why.to_string(),
            rule: it.rule.clone(),
            conflict: it.decision.conflict,
            outcome,
            bytes: 0,
            version: None,
        }
    }
}

/// What an item would transfer (files only; moves and directories send nothing).
/// A SQLite database under a `sqlite` rule whose commits are partly still in its `-wal`
/// file: its state is both files, so its hash covers both (the snapshot copies both).
fn fold_sqlite_wal(entries: &mut ScanList, rules: &Rules) {
    let mut folds = Vec::new();
    // Only a `-wal` name is spelled out as a path.
    for e in entries
        .iter()
        .filter(|e| e.name().ends_with("-wal") && e.size() > 0)
    {
        let path = e.path();
        let (Some(h), Some(db)) = (e.hash(), path.as_str().strip_suffix("-wal")) else {
            continue;
        };
        let Ok(db) = RelPath::new(db) else { continue };
        if rules.for_path(&db, false).validate != Some(crate::config::Validator::Sqlite) {
            continue;
        }
        if let Some(j) = entries.find(db.as_str()) {
            folds.push((j, h));
        }
    }
    for (j, wal) in folds {
        if let Some(main) = entries.get(j).hash() {
            let mut h = blake3::Hasher::new();
            h.update(&main.0);
            h.update(&wal.0);
            entries.set_hash(j, Some(Hash(*h.finalize().as_bytes())));
        }
    }
}

/// Stage a consistent snapshot of a SQLite database (SQLite's online backup, never a torn
/// copy of a database being written), integrity-checked, with the source's mode and mtime.
fn stage_sqlite(
    src: &dyn Replica,
    tgt: &dyn Replica,
    path: &RelPath,
    meta: &Entry,
) -> Result<Staged, ReplicaError> {
    let root = src.local_root().expect("sqlite snapshots are local");
    let from = path.to_fs(root);
    tgt.stage_local(&mut |p: &std::path::Path| {
        let snap = crate::validate::sqlite_snapshot(&from, p)
            .map_err(|e| std::io::Error::other(format!("SQLite snapshot of {path}: {e}")))?;
        crate::validate::validate(crate::config::Validator::Sqlite, p)
            .map_err(|e| std::io::Error::other(format!("SQLite snapshot of {path}: {e}")))?;
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(meta.mode))?;
        let t = filetime::FileTime::from_unix_time(
            meta.mtime.div_euclid(1_000_000_000),
            meta.mtime.rem_euclid(1_000_000_000) as u32,
        );
        filetime::set_file_mtime(p, t)?;
        Ok(snap.hash)
    })
}

/// Write `data` to a new file with `mode` and `mtime` (ns), durable.
fn write_file(p: &std::path::Path, data: &[u8], mode: u32, mtime: i64) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(p)?;
    f.write_all(data)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    let t = filetime::FileTime::from_unix_time(
        mtime.div_euclid(1_000_000_000),
        mtime.rem_euclid(1_000_000_000) as u32,
    );
    filetime::set_file_handle_times(&f, None, Some(t))?;
    Ok(())
}

fn planned_bytes(it: &Item) -> u64 {
    let file_size = |e: Option<&Entry>| e.filter(|e| e.is_file()).map_or(0, |e| e.size);
    match &it.decision.action {
        Action::Copy { from } => file_size(it.side(*from)),
        Action::KeepBoth { .. } => file_size(it.a.as_ref()) + file_size(it.b.as_ref()),
        _ => 0,
    }
}

/// The side an action writes to.
fn target_side(a: &Action) -> Option<Side> {
    match a {
        Action::Copy { from } | Action::SetMode { from } => Some(from.other()),
        Action::Delete { on } | Action::Move { on, .. } | Action::MovedAway { on, .. } => Some(*on),
        Action::KeepBoth { winner, .. } => Some(winner.other()),
        _ => None,
    }
}

fn tally(report: &mut PairReport, items: &[Item]) {
    let mut c = Counts::default();
    // Items are sorted by path (reconcile's contract): no map of the whole tree.
    let find = |p: &str| -> &Item {
        match items.binary_search_by(|it| it.path.as_str().cmp(p)) {
            Ok(i) => &items[i],
            Err(_) => items
                .iter()
                .find(|it| it.path.as_str() == p)
                .expect("every reported path has an item"),
        }
    };
    let mut worst = PairStatus::Ok;
    for r in &report.items {
        let it = find(r.path.as_str());
        match &r.outcome {
            Outcome::Skipped(_) => {
                c.skipped += 1;
                worst = PairStatus::Incomplete;
                continue;
            }
            Outcome::Failed(_) => {
                c.failed += 1;
                worst = PairStatus::Incomplete;
                continue;
            }
            Outcome::Conflict(_) => {
                c.conflicts += 1;
                worst = PairStatus::Incomplete;
                continue;
            }
            Outcome::Done | Outcome::Planned => {}
        }
        if matches!(it.decision.action, Action::Merged { conflicted: false }) {
            c.merged += 1;
        } else if it.decision.conflict {
            c.conflicts += 1;
        }
        match &it.decision.action {
            Action::Copy { from } | Action::SetMode { from } => {
                if from.other() == Side::A {
                    c.to_a += 1;
                    c.bytes_to_a += r.bytes;
                } else {
                    c.to_b += 1;
                    c.bytes_to_b += r.bytes;
                }
            }
            Action::Merged { .. } => {
                c.to_a += 1;
                c.to_b += 1;
                c.bytes_to_a += r.bytes / 2;
                c.bytes_to_b += r.bytes / 2;
            }
            Action::KeepBoth { winner, .. } => {
                // Two copies: the winner's content to the loser's side, the loser's (kept
                // under the aside name) to the winner's side.
                c.to_a += 1;
                c.to_b += 1;
                let to_loser = it
                    .side(*winner)
                    .filter(|e| e.is_file())
                    .map_or(0, |e| e.size)
                    .min(r.bytes);
                let to_winner = r.bytes - to_loser;
                if *winner == Side::A {
                    c.bytes_to_b += to_loser;
                    c.bytes_to_a += to_winner;
                } else {
                    c.bytes_to_a += to_loser;
                    c.bytes_to_b += to_winner;
                }
            }
            Action::Delete { on } => {
                if *on == Side::A {
                    c.deleted_a += 1
                } else {
                    c.deleted_b += 1
                }
            }
            Action::Move { .. } => c.moved += 1,
            _ => {}
        }
    }
    report.counts = c;
    if report.status == PairStatus::Ok {
        report.status = worst;
    }
}

/// What installing one staged item gave: the new entry and the version kept.
type Installed = Result<(Entry, VersionPath), ReplicaError>;

/// Stage a batch in parallel: temporary files on the targets' filesystems, hash-verified.
fn stage_batch(reps: [&dyn Replica; 2], batch: &[CopyJob]) -> Vec<Result<Staged, ReplicaError>> {
    batch
        .par_iter()
        .map(|j| {
            let tgt = reps[j.from.other().idx()];
            let src = reps[j.from.idx()];
            match j.meta.kind {
                Kind::Symlink => tgt.stage_symlink(j.meta.link.as_deref().unwrap_or("")),
                _ if j.sqlite => stage_sqlite(src, tgt, &j.src, &j.meta),
                _ if j.expect.is_none() => tgt.stage_new_file(src, &j.src, &j.meta),
                _ => tgt.stage_file(src, &j.src, &j.meta),
            }
        })
        .collect()
}

/// Executes one pair's decisions in phases.
struct Applier<'e, 'a> {
    eng: &'e mut Engine<'a>,
    pair: i64,
    pair_name: &'e str,
    reps: [&'e dyn Replica; 2],
    ids: &'e [String; 2],
    pctx: &'e PairCtx,
    items: &'e [Item],
    /// The paths unchanged everywhere (sorted), not in `items`.
    unchanged: &'e reconcile::UnchangedSet<'e>,
    outcomes: Vec<Option<Outcome>>,
    ops: Vec<StateOp>,
    bytes: Vec<u64>,
    versions: Vec<Option<String>>,
    /// KeepBoth: the loser's entry after it was renamed aside.
    aside: HashMap<usize, Entry>,
    /// Per side: paths whose state this run wrote (Some) or removed (None).
    cache_over: [HashMap<RelPath, Option<Cached>>; 2],
    /// Contents of `Merged` items.
    merged: &'e crate::content::Merged,
    /// Merges with conflict markers still waiting for review (they keep the run at exit 1).
    reviews_kept: u64,
}

/// Where one audited step of an item acted: the path, what was there, and (renames) the
/// path the item came from.
struct Step<'p> {
    path: &'p RelPath,
    before: Option<&'p Entry>,
    from: Option<&'p RelPath>,
    /// An append in place: the length the file had (what a rollback truncates back to).
    appended_from: Option<u64>,
}

/// A file or link to write: (item, source side, source path, destination path, metadata,
/// what the destination must currently be).
struct CopyJob {
    idx: usize,
    from: Side,
    src: RelPath,
    dst: RelPath,
    meta: Entry,
    expect: Option<Entry>,
    /// For KeepBoth: the base to record at `dst`.
    base_path: RelPath,
    /// A database under a `sqlite` rule: copied as a consistent snapshot (online backup).
    sqlite: bool,
    /// An append-only file under `merge = "append"` that grew: only the new tail is written,
    /// in place (when the target still is the source's prefix).
    append: bool,
}

const BATCH_FILES: usize = 1024;
const BATCH_BYTES: u64 = 256 << 20;
const OPS_PER_COMMIT: usize = 20_000;

impl Applier<'_, '_> {
    fn rep(&self, s: Side) -> &dyn Replica {
        self.reps[s.idx()]
    }

    fn run(&mut self) -> Result<(), EngineError> {
        let items = self.items;
        let timing = Timing::new();
        // Journal first: the intent of every change is durable before the first one.
        {
            // Open conflicts this run does not look at (outside `--paths`) stay open; merges
            // left with conflict markers stay flagged for review until the file is edited
            // (while both sides are unchanged since the merge).
            let only = &self.eng.opts.paths;
            let review: Vec<_> = self
                .eng
                .store
                .conflicts()?
                .into_iter()
                .filter(|c| c.pair == self.pair_name)
                .filter(|c| {
                    let Ok(p) = RelPath::new(&c.path) else {
                        return false;
                    };
                    if !only.is_empty() && !only.iter().any(|o| p.starts_with(o)) {
                        return true;
                    }
                    c.reason.starts_with("review:")
                        && match items.binary_search_by(|it| it.path.cmp(&p)) {
                            Ok(i) => matches!(items[i].decision.action, Action::None),
                            Err(_) => self.unchanged.find(&p).is_some(),
                        }
                })
                .collect();
            self.reviews_kept = review
                .iter()
                .filter(|c| c.reason.starts_with("review:"))
                .count() as u64;
            let b = self.eng.store.batch()?;
            b.clear_conflicts(self.pair_name)?;
            for c in &review {
                if let Ok(p) = RelPath::new(&c.path) {
                    b.set_conflict(
                        self.pair_name,
                        &p,
                        &c.reason,
                        &c.run,
                        c.a.as_ref(),
                        c.b.as_ref(),
                    )?;
                }
            }
            // The detail of each entry: its target, one of three (built once, not per item).
            let detail = |t: &str| serde_json::json!({ "target": t }).to_string();
            let details = [
                detail(self.pctx.name(Side::A)),
                detail(self.pctx.name(Side::B)),
                detail(""),
            ];
            for (i, it) in items.iter().enumerate() {
                if !it.decision.action.changes_something() {
                    continue;
                }
                let detail = match target_side(&it.decision.action) {
                    Some(s) => &details[s.idx()],
                    None => &details[2],
                };
                b.journal(
                    self.eng.run,
                    self.eng.seq_base + i,
                    self.pair_name,
                    &it.path,
                    it.decision.action.name(),
                    detail,
                )?;
            }
            b.commit()?;
            crate::faults::point("journal written");
        }
        timing.mark("  journal");
        let total_bytes: u64 = items
            .iter()
            .filter(|it| {
                matches!(
                    it.decision.action,
                    Action::Copy { .. } | Action::KeepBoth { .. }
                )
            })
            .filter_map(|it| match it.decision.action {
                Action::Copy { from } => it.side(from).map(|e| e.size),
                Action::KeepBoth { .. } => {
                    Some(it.a.as_ref().map_or(0, |e| e.size) + it.b.as_ref().map_or(0, |e| e.size))
                }
                _ => None,
            })
            .sum();
        let changing = items
            .iter()
            .filter(|it| it.decision.action.changes_something())
            .count() as u64;
        self.eng.progress.applying(changing, total_bytes);

        // Decisions that need no replica change.
        for (i, it) in items.iter().enumerate() {
            match &it.decision.action {
                Action::Record => {
                    let e =
                        it.a.as_ref()
                            .or(it.b.as_ref())
                            .expect("record has an entry");
                    self.ops.push(StateOp::SetBase(it.path.clone(), base_of(e)));
                }
                Action::Forget if it.base.is_some() => {
                    self.ops.push(StateOp::RemoveBase(it.path.clone()));
                }
                Action::Conflict { reason } => {
                    self.ops.push(StateOp::Conflict(
                        it.path.clone(),
                        reason.clone(),
                        it.a.clone(),
                        it.b.clone(),
                    ));
                    self.outcomes[i] = Some(Outcome::Conflict(reason.clone()));
                }
                Action::Skip { reason } => {
                    self.outcomes[i] = Some(Outcome::Skipped(reason.clone()))
                }
                _ => {}
            }
        }

        let opts = self.eng.opts;
        for phase in 0..8 {
            if opts.cancelled() {
                break;
            }
            match phase {
                0 => self.phase_asides(),
                1 => self.phase_mkdirs(),
                2 => self.phase_moves(),
                3 => self.phase_deletes(false),
                4 => self.phase_deletes(true),
                5 => {
                    timing.mark("  other phases");
                    self.phase_copies()?;
                    timing.mark("  copies");
                }
                6 => self.phase_merged(),
                _ => self.phase_modes(),
            }
        }
        if opts.cancelled() {
            // Stopped: what was not done is left for the next run, and said so.
            for (i, it) in items.iter().enumerate() {
                if it.decision.action.changes_something() && self.outcomes[i].is_none() {
                    self.outcomes[i] = Some(Outcome::Skipped(
                        "not done: the run was stopped; the next run does it".into(),
                    ));
                    self.ops.push(StateOp::Journal(i, "skipped"));
                }
            }
        }

        // Renames and new directory entries durable too (nothing to flush after a no-op:
        // syncfs would wait for other programs' writes).
        if changing > 0 {
            for r in self.reps {
                let _ = r.flush();
            }
        }
        timing.mark("  final flush");
        self.commit_ops()?;
        timing.mark("  commit");
        if self.eng.opts.atomic {
            self.note_base_before();
        }
        Ok(())
    }

    /// `--atomic`: the base each path this run changed had before it.
    fn note_base_before(&mut self) {
        for (i, it) in self.items.iter().enumerate() {
            if !it.decision.action.changes_something()
                || !matches!(self.outcomes[i], Some(Outcome::Done))
            {
                continue;
            }
            let mut push = |p: &RelPath, e: Option<&Entry>| {
                self.eng
                    .base_before
                    .push((self.pair, p.clone(), e.cloned()));
            };
            push(&it.path, it.base.as_ref());
            match &it.decision.action {
                Action::Move { from, .. } => {
                    if let Ok(j) = self.items.binary_search_by(|x| x.path.cmp(from)) {
                        push(from, self.items[j].base.as_ref());
                    }
                }
                Action::KeepBoth { aside, .. } => push(aside, None),
                _ => {}
            }
        }
    }

    fn commit_ops(&mut self) -> Result<(), EngineError> {
        if self.ops.is_empty() {
            return Ok(());
        }
        let ops = std::mem::take(&mut self.ops);
        let b = self.eng.store.batch()?;
        for op in &ops {
            match op {
                StateOp::SetBase(p, e) => b.set_base(self.pair, p, e)?,
                StateOp::RemoveBase(p) => b.remove_base(self.pair, p)?,
                StateOp::Journal(i, state) => {
                    b.journal_state(self.eng.run, self.eng.seq_base + *i, state)?
                }
                StateOp::Alias(p, alias, h, size) => b.set_alias(self.pair, p, alias, h, *size)?,
                StateOp::Conflict(p, reason, a, bb) => b.set_conflict(
                    self.pair_name,
                    p,
                    reason,
                    self.eng.run,
                    a.as_ref(),
                    bb.as_ref(),
                )?,
            }
        }
        b.commit()?;
        crate::faults::point("state committed");
        if let Some(a) = self.eng.audit.as_deref_mut() {
            a.flush()
                .map_err(|e| EngineError::Io(format!("audit trail: {e}")))?;
        }
        crate::faults::point("audit flushed");
        Ok(())
    }

    fn maybe_commit(&mut self) -> Result<(), EngineError> {
        if self.ops.len() >= OPS_PER_COMMIT {
            self.commit_ops()?;
        }
        Ok(())
    }

    /// Record an item's result: outcome, journal state, audit line.
    fn finish(
        &mut self,
        i: usize,
        target: Side,
        result: Result<(Option<Entry>, Option<String>), ReplicaError>,
    ) -> bool {
        let it = &self.items[i];
        let step = Step {
            path: &it.path,
            before: it.side(target),
            from: None,
            appended_from: None,
        };
        self.finish_step(i, target, step, result)
    }

    /// [`Self::finish`] for one step of an item that acts on another path than the item's
    /// own (keep-both asides) or moves something there.
    fn finish_step(
        &mut self,
        i: usize,
        target: Side,
        step: Step<'_>,
        result: Result<(Option<Entry>, Option<String>), ReplicaError>,
    ) -> bool {
        let it = &self.items[i];
        let (outcome, state) = match &result {
            Ok(_) => (Outcome::Done, "done"),
            Err(e) if e.is_race() => (Outcome::Skipped(e.to_string()), "skipped"),
            Err(e) => (
                Outcome::Failed(format!("on {}: {e}", self.pctx.name(target))),
                "failed",
            ),
        };
        if let Ok((after, version)) = &result {
            if version.is_some() {
                self.versions[i] = version.clone();
            }
            let before = step.before;
            let rec = Record {
                time: now_rfc3339(),
                run: self.eng.run.to_string(),
                pair: format!("{}<->{}", self.pctx.names[0], self.pctx.names[1]),
                path: step.path.to_string(),
                action: it.decision.action.name().into(),
                replica: self.pctx.name(target).to_string(),
                hash_before: before.and_then(|e| e.hash).map(|h| h.to_hex()),
                hash_after: after.as_ref().and_then(|e| e.hash).map(|h| h.to_hex()),
                size: after.as_ref().map(|e| e.size),
                version: version.clone(),
                from: step.from.map(|p| p.to_string()),
                appended_from: step.appended_from,
                kind_before: before.map(|e| e.kind.as_str().to_string()),
                kind_after: after.as_ref().map(|e| e.kind.as_str().to_string()),
                link_before: before.and_then(|e| e.link.clone()),
                link_after: after.as_ref().and_then(|e| e.link.clone()),
                error: None,
                mode_before: before.map(|e| e.mode),
                rule: it.rule.clone(),
                detail: it.decision.why.to_string(),
                prev: String::new(),
            };
            if self.eng.opts.atomic {
                self.eng.applied.push(rec.clone());
            }
            if let Some(a) = self.eng.audit.as_deref_mut() {
                let _ = a.append(rec);
            }
        } else if let (Err(e), Some(a)) = (&result, self.eng.audit.as_deref_mut()) {
            // Failures and skips are in the trail too (never undone: they changed nothing).
            let _ = a.append(Record {
                time: now_rfc3339(),
                run: self.eng.run.to_string(),
                pair: format!("{}<->{}", self.pctx.names[0], self.pctx.names[1]),
                path: step.path.to_string(),
                action: it.decision.action.name().into(),
                replica: self.pctx.name(target).to_string(),
                error: Some(if e.is_race() {
                    format!("skipped: {e}")
                } else {
                    format!("failed: {e}")
                }),
                rule: it.rule.clone(),
                detail: it.decision.why.to_string(),
                ..Default::default()
            });
        }
        // An item may have several steps (keep-both); the first failure sticks.
        let ok = result.is_ok();
        match &self.outcomes[i] {
            Some(Outcome::Failed(_)) | Some(Outcome::Skipped(_)) => {}
            _ => {
                self.outcomes[i] = Some(outcome);
                // Done items are confirmed by the base itself (three-way detection); the
                // journal keeps only what did not happen, so a finished file costs no write.
                if state != "done" {
                    self.ops.push(StateOp::Journal(i, state));
                }
            }
        }
        ok
    }

    fn cache_written(&mut self, side: Side, path: &RelPath, e: &Entry) {
        // The racy-mtime filter is applied when the cache is saved.
        self.cache_over[side.idx()].insert(path.clone(), Cached::of(e, i64::MAX));
    }

    fn cache_removed(&mut self, side: Side, path: &RelPath) {
        self.cache_over[side.idx()].insert(path.clone(), None);
    }

    /// Update each side's scan cache: the rows of files hashed or written this run, as
    /// deltas when they are few, else a full rewrite from the final state.
    fn save_caches(
        &mut self,
        hashed: [Vec<RelPath>; 2],
        deltas: [usize; 2],
        started: i64,
    ) -> Result<(), EngineError> {
        let timing = Timing::new();
        let limit = started - crate::replica::local::RACY_NS;
        let row_of = |e: &Entry| Cached::of(e, limit);
        for side in [Side::A, Side::B] {
            let over = &self.cache_over[side.idx()];
            let hp = &hashed[side.idx()];
            if hp.is_empty() && over.is_empty() {
                continue;
            }
            let changes = hp.len() + over.len();
            let tree_len = self.items.len() + self.unchanged.len();
            if changes + deltas[side.idx()] <= compact_threshold(tree_len) {
                let mut rows: Vec<(RelPath, Option<Cached>)> = Vec::with_capacity(changes);
                for p in hp {
                    if over.contains_key(p) {
                        continue;
                    }
                    let row = match self.items.binary_search_by(|it| it.path.cmp(p)) {
                        Ok(i) => self.items[i].side(side).and_then(row_of),
                        Err(_) => self
                            .unchanged
                            .find(p)
                            .and_then(|u| row_of(&u.side(side).to_entry())),
                    };
                    rows.push((p.clone(), row));
                }
                for (p, r) in over {
                    rows.push((p.clone(), r.clone().filter(|c| c.mtime < limit)));
                }
                self.eng
                    .store
                    .save_cache_deltas(&self.ids[side.idx()], &rows)?;
                continue;
            }
            let mut rows: Vec<(RelPath, Cached)> = Vec::with_capacity(tree_len);
            let mut matched = 0;
            let mut add = |path: Cow<'_, RelPath>, e: Option<&Entry>| {
                let row = match over.get(&*path) {
                    Some(r) => {
                        matched += 1;
                        r.clone().filter(|c| c.mtime < limit)
                    }
                    None => e.and_then(row_of),
                };
                if let Some(c) = row {
                    rows.push((path.into_owned(), c));
                }
            };
            for it in self.items {
                add(Cow::Borrowed(&it.path), it.side(side));
            }
            for u in self.unchanged.iter() {
                add(Cow::Owned(u.path()), Some(&u.side(side).to_entry()));
            }
            // Paths written under another name (keep-both asides) are not items (when there
            // are some: a search per written path is not free on a first sync).
            for (p, r) in over.iter().filter(|_| matched < over.len()) {
                if let Some(c) = r.as_ref().filter(|c| c.mtime < limit) {
                    if self.items.binary_search_by(|it| it.path.cmp(p)).is_err()
                        && self.unchanged.find(p).is_none()
                    {
                        rows.push((p.clone(), c.clone()));
                    }
                }
            }
            rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            timing.mark("  cache rows");
            self.eng.store.save_cache(&self.ids[side.idx()], &rows)?;
            timing.mark("  cache saved");
        }
        Ok(())
    }

    fn failed_before(&self, i: usize) -> bool {
        matches!(
            self.outcomes[i],
            Some(Outcome::Failed(_)) | Some(Outcome::Skipped(_))
        )
    }

    fn phase_asides(&mut self) {
        for (i, it) in self.items.iter().enumerate() {
            let Action::KeepBoth { winner, aside } = &it.decision.action else {
                continue;
            };
            let loser = winner.other();
            let le = it.side(loser).expect("conflict side present");
            let r = self.rep(loser).rename(&it.path, aside, le);
            match r {
                Ok(e) => {
                    let mut e = e;
                    e.hash = le.hash;
                    let step = Step {
                        path: aside,
                        before: None,
                        from: Some(&it.path),
                        appended_from: None,
                    };
                    self.finish_step(i, loser, step, Ok((Some(e.clone()), None)));
                    self.aside.insert(i, e);
                }
                Err(err) => {
                    self.finish(i, loser, Err(err));
                }
            }
        }
    }

    fn phase_mkdirs(&mut self) {
        for (i, it) in self.items.iter().enumerate() {
            let Action::Copy { from } = it.decision.action else {
                continue;
            };
            let Some(src) = it.side(from).filter(|e| e.is_dir()) else {
                continue;
            };
            let to = from.other();
            let rep = self.rep(to);
            let run = self.eng.run;
            // A file or link in the way is removed first (kept as a version, recorded so a
            // rollback can put it back), then the directory is made.
            let r = match it.side(to).filter(|e| !e.is_dir()) {
                Some(old) => rep.remove(&it.path, old, run).and_then(|v| {
                    rep.mkdir(&it.path, src.mode, None, run)
                        .map(|e| (Some(e), v))
                }),
                None => rep
                    .mkdir(&it.path, src.mode, it.side(to), run)
                    .map(|e| (Some(e), None)),
            };
            if self.finish(i, to, r) {
                self.ops
                    .push(StateOp::SetBase(it.path.clone(), base_of(src)));
            }
        }
    }

    fn phase_moves(&mut self) {
        let index: HashMap<&RelPath, usize> = self
            .items
            .iter()
            .enumerate()
            .map(|(i, it)| (&it.path, i))
            .collect();
        for (i, it) in self.items.iter().enumerate() {
            let Action::Move { on, from } = &it.decision.action else {
                continue;
            };
            let j = index[from];
            let old = self.items[j].side(*on).expect("move source present");
            let src = it
                .side(on.other())
                .expect("moved file present on the other side");
            let r = self.rep(*on).rename(from, &it.path, old);
            let step = Step {
                path: &it.path,
                before: None,
                from: Some(from),
                appended_from: None,
            };
            let ok = self.finish_step(
                i,
                *on,
                step,
                r.as_ref()
                    .map(|e| (Some(e.clone()), None))
                    .map_err(clone_err),
            );
            if ok {
                let e = r.expect("ok");
                self.outcomes[j] = Some(Outcome::Done);
                self.ops
                    .push(StateOp::SetBase(it.path.clone(), base_of(src)));
                self.ops.push(StateOp::RemoveBase(from.clone()));
                self.cache_removed(*on, from);
                self.cache_written(*on, &it.path, &e);
            } else {
                self.outcomes[j] = self.outcomes[i].clone();
            }
        }
    }

    fn phase_deletes(&mut self, dirs: bool) {
        let order: Vec<usize> = if dirs {
            (0..self.items.len()).rev().collect()
        } else {
            (0..self.items.len()).collect()
        };
        for i in order {
            let it = &self.items[i];
            let Action::Delete { on } = it.decision.action else {
                continue;
            };
            let e = it.side(on).expect("deleted side present");
            if e.is_dir() != dirs {
                continue;
            }
            let r = self.rep(on).remove(&it.path, e, self.eng.run);
            if self.finish(i, on, r.map(|v| (None, v))) {
                self.ops.push(StateOp::RemoveBase(it.path.clone()));
                self.cache_removed(on, &it.path);
            }
        }
    }

    fn copy_jobs(&self) -> Vec<CopyJob> {
        let mut jobs = Vec::new();
        let both_local = self.reps.iter().all(|r| r.local_root().is_some());
        let rules = self.eng.rules;
        for (i, it) in self.items.iter().enumerate() {
            match &it.decision.action {
                Action::Copy { from } => {
                    let src = it.side(*from).expect("copy source present");
                    if src.is_dir() {
                        continue;
                    }
                    let pr = rules.for_path(&it.path, false);
                    let sqlite = both_local
                        && src.is_file()
                        && pr.validate == Some(crate::config::Validator::Sqlite);
                    // (Appended in place where the target can: `append_tail` says when not.)
                    let append = src.is_file()
                        && pr.merge == Some(crate::config::MergeKind::Append)
                        && it
                            .side(from.other())
                            .is_some_and(|t| t.is_file() && t.size < src.size && t.hash.is_some());
                    jobs.push(CopyJob {
                        idx: i,
                        from: *from,
                        src: it.path.clone(),
                        dst: it.path.clone(),
                        meta: src.clone(),
                        expect: it.side(from.other()).cloned(),
                        base_path: it.path.clone(),
                        sqlite,
                        append,
                    });
                }
                Action::KeepBoth { winner, aside } => {
                    if self.failed_before(i) {
                        continue;
                    }
                    let w = it.side(*winner).expect("winner present").clone();
                    let l = self.aside.get(&i).expect("aside renamed").clone();
                    jobs.push(CopyJob {
                        idx: i,
                        from: *winner,
                        src: it.path.clone(),
                        dst: it.path.clone(),
                        meta: w,
                        expect: None,
                        base_path: it.path.clone(),
                        sqlite: false,
                        append: false,
                    });
                    jobs.push(CopyJob {
                        idx: i,
                        from: winner.other(),
                        src: aside.clone(),
                        dst: aside.clone(),
                        meta: l,
                        expect: None,
                        base_path: aside.clone(),
                        sqlite: false,
                        append: false,
                    });
                }
                _ => {}
            }
        }
        jobs
    }

    /// Append-only files that grew: write only the new tail, in place (the old content is
    /// the file's prefix, so nothing is overwritten). What cannot be appended (the source is
    /// not the target plus a tail) goes through the normal copy.
    fn phase_appends(&mut self, jobs: Vec<CopyJob>) -> Vec<CopyJob> {
        let mut rest = Vec::with_capacity(jobs.len());
        for j in jobs {
            if !j.append || self.failed_before(j.idx) || self.eng.opts.cancelled() {
                rest.push(j);
                continue;
            }
            let to = j.from.other();
            let Some(expect) = j.expect.as_ref() else {
                rest.push(j);
                continue;
            };
            let r = self
                .rep(to)
                .append_tail(self.reps[j.from.idx()], &j.dst, expect, &j.meta);
            let r = match r {
                Ok(None) => {
                    rest.push(j);
                    continue;
                }
                Ok(Some(e)) => Ok((Some(e), None)),
                Err(e) => Err(e),
            };
            let step = Step {
                path: &j.dst,
                before: Some(expect),
                from: None,
                appended_from: Some(expect.size),
            };
            let ok = self.finish_step(
                j.idx,
                to,
                step,
                r.as_ref()
                    .map(|(e, v)| (e.clone(), v.clone()))
                    .map_err(clone_err),
            );
            if ok {
                let (e, _) = r.expect("ok");
                let e = e.expect("appended entry");
                self.bytes[j.idx] += j.meta.size - expect.size;
                self.ops
                    .push(StateOp::SetBase(j.base_path.clone(), base_of(&j.meta)));
                self.cache_written(to, &j.dst, &e);
            }
            self.eng.progress.advance(j.meta.size);
        }
        rest
    }

    fn phase_copies(&mut self) -> Result<(), EngineError> {
        let jobs = self.copy_jobs();
        let jobs = if jobs.iter().any(|j| j.append) {
            self.phase_appends(jobs)
        } else {
            jobs
        };
        // Between local folders, one batch is made durable (syncfs, waiting on the disk) in
        // the background while the next one is staged (busy on the CPUs); each batch is
        // still installed only once its own flush is done (SPEC invariant 2). With a remote
        // replica, one batch at a time (its agent does the flushing).
        let pipelined = self.reps.iter().all(|r| r.as_remote().is_none());
        // A batch's new files may each hold a descriptor until installed (unnamed staging):
        // no more of them in flight than the process can spare.
        let in_flight = if pipelined { 2 } else { 1 };
        let budget = crate::replica::local::staging_fd_budget() / in_flight;
        let batch_files = BATCH_FILES.min(budget.max(64));
        let reps = self.reps;
        // Durable before any rename exposes it: flush each target of the batch.
        let flush = move |batch: &[CopyJob]| -> Option<String> {
            let mut err = None;
            for s in [Side::A, Side::B] {
                if batch.iter().any(|j| j.from.other() == s) {
                    if let Err(e) = reps[s.idx()].flush() {
                        err = Some(e.to_string());
                    }
                }
            }
            err
        };
        // Time in each step (stage, flush, install, record; the first two on their own
        // threads when pipelined) and the time spent waiting for them, with `FEDSYNC_TIMING`.
        let mut spent = [std::time::Duration::ZERO; 4];
        let mut waited = std::time::Duration::ZERO;
        let jobs = &jobs[..];
        // The next batch: up to `batch_files` files and `BATCH_BYTES` (at least one file).
        let cut = |start: usize| {
            let mut end = start;
            let mut bytes = 0;
            while end < jobs.len()
                && end - start < batch_files
                && (bytes < BATCH_BYTES || end == start)
            {
                bytes += jobs[end].meta.size;
                end += 1;
            }
            end
        };
        let stage_and_flush = move |s: usize, e: usize| {
            let t = Instant::now();
            let staged = stage_batch(reps, &jobs[s..e]);
            crate::faults::point("batch staged");
            let staging = t.elapsed();
            let err = flush(&jobs[s..e]);
            (staged, err, [staging, t.elapsed() - staging])
        };
        // Fault points are counted in one order: crash tests run the batches one by one.
        if !pipelined || crate::faults::armed() {
            let mut start = 0;
            while start < jobs.len() && !self.eng.opts.cancelled() {
                let end = cut(start);
                let (staged, err, took) = stage_and_flush(start, end);
                spent[0] += took[0];
                spent[1] += took[1];
                self.install_batch(&jobs[start..end], staged, err, &mut spent)?;
                start = end;
            }
        } else {
            // Batch k+1 is staged and flushed on a thread of its own while batch k, whose
            // flush is done, is installed and recorded here: at most two batches in flight.
            std::thread::scope(|sc| -> Result<(), EngineError> {
                let mut start = 0;
                let mut pending: Option<(usize, usize, std::thread::ScopedJoinHandle<'_, _>)> =
                    None;
                loop {
                    let next = (start < jobs.len() && !self.eng.opts.cancelled()).then(|| {
                        let (s, e) = (start, cut(start));
                        start = e;
                        (s, e, sc.spawn(move || stage_and_flush(s, e)))
                    });
                    let Some((s, e, h)) = std::mem::replace(&mut pending, next) else {
                        if pending.is_none() {
                            break;
                        }
                        continue;
                    };
                    let t = Instant::now();
                    let (staged, err, took) = h.join().unwrap_or_else(|_| {
                        let failed = (s..e)
                            .map(|k| {
                                Err(ReplicaError::Io {
                                    path: jobs[k].dst.to_string(),
                                    source: std::io::Error::other("staging panicked"),
                                })
                            })
                            .collect();
                        (failed, Some("staging panicked".into()), Default::default())
                    });
                    waited += t.elapsed();
                    spent[0] += took[0];
                    spent[1] += took[1];
                    self.install_batch(&jobs[s..e], staged, err, &mut spent)?;
                }
                Ok(())
            })?;
        }
        if Timing::new().0.is_some() {
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
            eprintln!(
                "timing:   copies: stage {:.1} ms, flush {:.1} ms, install {:.1} ms, record {:.1} ms, waited for staging {:.1} ms",
                ms(spent[0]),
                ms(spent[1]),
                ms(spent[2]),
                ms(spent[3]),
                ms(waited)
            );
        }
        Ok(())
    }

    /// Install one staged batch whose flush is done (`flush_err`: it failed, nothing is
    /// installed) and record each result, in job order.
    fn install_batch(
        &mut self,
        batch: &[CopyJob],
        staged: Vec<Result<Staged, ReplicaError>>,
        flush_err: Option<String>,
        spent: &mut [std::time::Duration; 4],
    ) -> Result<(), EngineError> {
        let t = Instant::now();
        let mut staged: Vec<Option<Result<Staged, ReplicaError>>> =
            staged.into_iter().map(Some).collect();
        let installed = self.install_parallel(batch, &mut staged, flush_err.is_none());
        spent[2] += t.elapsed();
        let t = Instant::now();
        for (k, (j, r)) in batch.iter().zip(installed).enumerate() {
            let to = j.from.other();
            let r = match (r, staged[k].take()) {
                (Some(r), _) => r,
                (None, Some(Ok(st))) if flush_err.is_none() && !self.failed_before(j.idx) => self
                    .rep(to)
                    .install(st, &j.dst, j.expect.as_ref(), self.eng.run),
                (None, Some(Ok(st))) => {
                    self.rep(to).discard(st);
                    match &flush_err {
                        Some(m) => Err(ReplicaError::Io {
                            path: j.dst.to_string(),
                            source: std::io::Error::other(m.clone()),
                        }),
                        None => continue,
                    }
                }
                (None, Some(Err(e))) => Err(e),
                (None, None) => unreachable!("a staged item is installed once"),
            };
            let step = Step {
                path: &j.dst,
                before: j.expect.as_ref(),
                from: None,
                appended_from: None,
            };
            let ok = self.finish_step(
                j.idx,
                to,
                step,
                r.as_ref()
                    .map(|(e, v)| (Some(e.clone()), v.clone()))
                    .map_err(clone_err),
            );
            if ok {
                let (e, _) = r.expect("ok");
                self.bytes[j.idx] += j.meta.size;
                // A database snapshot holds the source's data in other bytes: its hash
                // stands for the source's from now on, so neither side looks changed.
                if let (true, Some(alias), Some(h)) = (j.sqlite, e.hash, j.meta.hash) {
                    if alias != h {
                        self.ops
                            .push(StateOp::Alias(j.dst.clone(), alias, h, j.meta.size));
                    }
                }
                // A deferred hash (first sync) is the one of the bytes just copied; the
                // source's cache row gets it too (with the scanned stat, so a source
                // that changed meanwhile is hashed again next run).
                let mut meta = j.meta.clone();
                if meta.hash.is_none() && meta.is_file() {
                    meta.hash = e.hash;
                    self.cache_written(j.from, &j.src, &meta);
                }
                self.ops
                    .push(StateOp::SetBase(j.base_path.clone(), base_of(&meta)));
                self.cache_written(to, &j.dst, &e);
            }
            self.eng.progress.advance(j.meta.size);
        }
        self.maybe_commit()?;
        spent[3] += t.elapsed();
        Ok(())
    }

    /// Install a batch's staged items in parallel where that cannot change what happens: on
    /// local targets (independent names, mostly in different directories), for items with
    /// only this one job in the batch (a keep-both's second copy waits for the first's
    /// outcome) and not failed before. Returns each job's result, `None` for the jobs left to
    /// the caller (installed one by one, in order); results are recorded in item order.
    fn install_parallel(
        &self,
        batch: &[CopyJob],
        staged: &mut [Option<Result<Staged, ReplicaError>>],
        flushed: bool,
    ) -> Vec<Option<Installed>> {
        let mut out: Vec<Option<Installed>> = (0..batch.len()).map(|_| None).collect();
        // (In order when crash points are counted: see `faults::armed`.)
        if !flushed || crate::faults::armed() {
            return out;
        }
        let local = |s: Side| {
            let r = self.rep(s);
            r.as_remote().is_none() && r.local_root().is_some()
        };
        let lone = |k: usize| {
            let i = batch[k].idx;
            (k == 0 || batch[k - 1].idx != i) && !matches!(batch.get(k + 1), Some(n) if n.idx == i)
        };
        let mut work = Vec::new();
        for (k, j) in batch.iter().enumerate() {
            if lone(k)
                && local(j.from.other())
                && !self.failed_before(j.idx)
                && matches!(staged[k], Some(Ok(_)))
            {
                if let Some(Ok(st)) = staged[k].take() {
                    work.push((k, st));
                }
            }
        }
        let reps = self.reps;
        let run = self.eng.run;
        let done: Vec<(usize, Installed)> = work
            .into_par_iter()
            .map(|(k, st)| {
                let j = &batch[k];
                let r = reps[j.from.other().idx()].install(st, &j.dst, j.expect.as_ref(), run);
                (k, r)
            })
            .collect();
        for (k, r) in done {
            out[k] = Some(r);
        }
        out
    }

    /// Write merged contents to both sides (each re-checked against its scan first).
    fn phase_merged(&mut self) {
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        for (i, it) in self.items.iter().enumerate() {
            let Action::Merged { conflicted } = it.decision.action else {
                continue;
            };
            let Some(bytes) = self.merged.get(&it.path) else {
                continue;
            };
            let hash = Hash::of(bytes);
            let mut after = None;
            for side in [Side::A, Side::B] {
                let cur = it.side(side);
                if cur.and_then(|e| e.hash) == Some(hash) {
                    continue;
                }
                let mode = cur.map_or(0o644, |e| e.mode);
                let rep = self.rep(side);
                let r = rep
                    .stage_local(&mut |p: &std::path::Path| {
                        write_file(p, bytes, mode, now)?;
                        Ok(hash)
                    })
                    .and_then(|st| rep.install(st, &it.path, cur, self.eng.run));
                let ok = self.finish(
                    i,
                    side,
                    r.as_ref()
                        .map(|(e, v)| (Some(e.clone()), v.clone()))
                        .map_err(clone_err),
                );
                if ok {
                    let (e, _) = r.expect("ok");
                    self.bytes[i] += bytes.len() as u64;
                    self.cache_written(side, &it.path, &e);
                    after = Some(e);
                }
            }
            if self.failed_before(i) {
                continue;
            }
            if let Some(e) = after {
                self.ops
                    .push(StateOp::SetBase(it.path.clone(), base_of(&e)));
            }
            if conflicted {
                let reason = "review: overlapping edits merged with conflict markers; \
                              edit the file to settle them"
                    .to_string();
                self.ops.push(StateOp::Conflict(
                    it.path.clone(),
                    reason.clone(),
                    it.a.clone(),
                    it.b.clone(),
                ));
                self.outcomes[i] = Some(Outcome::Conflict(reason));
            }
        }
    }

    /// Keep the synced content of paths under a text or union merge rule: the base of
    /// their next three-way merge.
    fn save_base_content(&mut self) -> Result<(), EngineError> {
        use crate::config::MergeKind;
        let any_rule = self
            .eng
            .profile
            .rules
            .iter()
            .any(|r| matches!(r.merge, Some(MergeKind::Text | MergeKind::Union)));
        // Nothing to keep without such a rule: no per-path rule lookups on the hot path.
        if self.pair < 0 || !any_rule {
            return Ok(());
        }
        let rules = self.eng.rules;
        for (i, it) in self.items.iter().enumerate() {
            let pr = rules.for_path(&it.path, false);
            if !matches!(pr.merge, Some(MergeKind::Text | MergeKind::Union)) {
                continue;
            }
            let failed = self.failed_before(i);
            // Where the synced content is now, and its hash.
            let (side, hash) = match &it.decision.action {
                Action::Merged { .. } if !failed => {
                    if let Some(b) = self.merged.get(&it.path) {
                        if b.len() as u64 <= crate::content::MAX_BASE_CONTENT {
                            self.eng.store.set_base_content(
                                self.pair,
                                &it.path,
                                &Hash::of(b).to_hex(),
                                b,
                            )?;
                        }
                    }
                    continue;
                }
                Action::Copy { from } if !failed => (*from, it.side(*from).and_then(|e| e.hash)),
                Action::Record | Action::None => (Side::A, it.a.as_ref().and_then(|e| e.hash)),
                Action::Delete { .. } | Action::Forget if !failed => {
                    self.eng.store.remove_base_content(self.pair, &it.path)?;
                    continue;
                }
                _ => continue,
            };
            if let (Some(hash), Some(e)) = (hash, it.side(side)) {
                self.keep_base_content(&it.path, side, e, hash)?;
            }
        }
        // (Only when some rule merges: a path's rules are not free to look up.)
        if !rules.reads_content() {
            return Ok(());
        }
        for u in self.unchanged.iter() {
            let path = u.path();
            let pr = rules.for_path(&path, false);
            if matches!(pr.merge, Some(MergeKind::Text | MergeKind::Union)) {
                if let Some(hash) = u.a.hash() {
                    self.keep_base_content(&path, Side::A, &u.a.to_entry(), hash)?;
                }
            }
        }
        Ok(())
    }

    /// Store the synced content of `path` (as it is on `side`, hashing to `hash`) as its
    /// merge base, unless it is too large or already stored.
    fn keep_base_content(
        &self,
        path: &RelPath,
        side: Side,
        e: &Entry,
        hash: Hash,
    ) -> Result<(), EngineError> {
        if !e.is_file() || e.size > crate::content::MAX_BASE_CONTENT {
            return Ok(());
        }
        let hex = hash.to_hex();
        if self
            .eng
            .store
            .base_content_hash(self.pair, path)?
            .as_deref()
            == Some(&hex)
        {
            return Ok(());
        }
        let Ok(data) =
            crate::content::read_capped(self.rep(side), path, crate::content::MAX_BASE_CONTENT)
        else {
            return Ok(());
        };
        if Hash::of(&data) == hash {
            self.eng
                .store
                .set_base_content(self.pair, path, &hex, &data)?;
        }
        Ok(())
    }

    fn phase_modes(&mut self) {
        for (i, it) in self.items.iter().enumerate() {
            let Action::SetMode { from } = it.decision.action else {
                continue;
            };
            let to = from.other();
            let src = it.side(from).expect("mode source present");
            let tgt = it.side(to).expect("mode target present");
            let r = self.rep(to).set_mode(&it.path, src.mode, tgt);
            if self.finish(i, to, r.map(|e| (Some(e), None))) {
                self.ops
                    .push(StateOp::SetBase(it.path.clone(), base_of(src)));
            }
        }
    }
}

fn clone_err(e: &ReplicaError) -> ReplicaError {
    match e {
        ReplicaError::Io { path, source } => ReplicaError::Io {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        ReplicaError::Changed(p) => ReplicaError::Changed(p.clone()),
        ReplicaError::HashMismatch(p) => ReplicaError::HashMismatch(p.clone()),
        ReplicaError::SymlinkParent(p) => ReplicaError::SymlinkParent(p.clone()),
        ReplicaError::NotEmpty(p) => ReplicaError::NotEmpty(p.clone()),
    }
}

/// The set of paths of a plan that change something (for tests and `status`).
pub fn changed_paths(report: &RunReport) -> HashSet<String> {
    report
        .pairs
        .iter()
        .flat_map(|p| p.items.iter().map(|i| i.path.clone()))
        .collect()
}

/// The profile name of the ad-hoc form `fedsync sync A B`: keyed by both canonical roots.
pub fn adhoc_name(a: &str, b: &str) -> String {
    let h = blake3::hash(format!("{a}\0{b}").as_bytes());
    format!("adhoc-{}", &h.to_hex()[..12])
}

/// Absolute, symlink-resolved form of a local root that may not exist yet.
pub fn canonical_root(p: &std::path::Path) -> std::path::PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => canonical_root(parent).join(name),
        _ => abs,
    }
}
