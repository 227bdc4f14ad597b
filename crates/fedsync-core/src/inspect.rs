//! Read-only views: `status` and `why`. Nothing here writes to a replica or the state.

use crate::config::Profile;
use crate::engine::{self, Avail, EngineError, NoProgress, Options};
use crate::entry::Entry;
use crate::path::RelPath;
use crate::reconcile::{self, Change, Decision, PairCtx};
use crate::store::{ConflictRow, RunRow};
use crate::Home;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct ReplicaStatus {
    pub name: String,
    pub root: String,
    pub optional: bool,
    /// "ok", "skipped" or "unavailable"
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct PendingPair {
    pub a: String,
    pub b: String,
    pub status: engine::PairStatus,
    pub counts: engine::Counts,
    pub changes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub profile: String,
    pub replicas: Vec<ReplicaStatus>,
    pub last_runs: Vec<RunRow>,
    pub pending: Vec<PendingPair>,
    pub conflicts: Vec<ConflictRow>,
    /// "ok", "pending", "conflicts", "degraded" (a replica unavailable) or "failing"
    pub health: String,
}

pub fn status(home: &Home, profile: &Profile) -> Result<StatusReport, EngineError> {
    let store = engine::open_store(home, &profile.name)?;
    let mut replicas = Vec::new();
    for spec in &profile.replicas {
        let (state, message) = match engine::open_replica_in(profile, spec) {
            Err(m) => ("unavailable", Some(m)),
            Ok(r) => match engine::check_replica(&store, spec, r.as_ref(), false, true)? {
                Avail::Ready(_) => ("ok", None),
                Avail::Skip(m) => ("skipped", Some(m)),
                Avail::Unavailable(m) => ("unavailable", Some(m)),
            },
        };
        replicas.push(ReplicaStatus {
            name: spec.name.clone(),
            root: spec.raw.clone(),
            optional: spec.optional,
            state: state.into(),
            message,
        });
    }
    let last_runs = store.runs(5)?;
    let conflicts = store.conflicts()?;
    let plan = engine::sync(
        home,
        profile,
        &Options {
            dry_run: true,
            ..Default::default()
        },
        &NoProgress,
    )?;
    let pending: Vec<PendingPair> = plan
        .pairs
        .iter()
        .map(|p| PendingPair {
            a: p.a.clone(),
            b: p.b.clone(),
            status: p.status,
            counts: p.counts.clone(),
            changes: p.items.len(),
            message: p.message.clone(),
        })
        .collect();
    let failing = last_runs.first().is_some_and(|r| r.status == "failed");
    let health = if replicas.iter().any(|r| r.state == "unavailable") {
        "degraded"
    } else if failing {
        "failing"
    } else if !conflicts.is_empty() {
        "conflicts"
    } else if pending.iter().any(|p| p.changes > 0) {
        "pending"
    } else {
        "ok"
    };
    Ok(StatusReport {
        profile: profile.name.clone(),
        replicas,
        last_runs,
        pending,
        conflicts,
        health: health.into(),
    })
}

#[derive(Debug, Serialize)]
pub struct WhyPair {
    pub a: String,
    pub b: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    pub base: Option<Entry>,
    pub side_a: Option<Entry>,
    pub side_b: Option<Entry>,
    pub change_a: Option<Change>,
    pub change_b: Option<Change>,
    pub excluded: bool,
    pub rule: String,
    pub policy: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// The decision, with sides named by replica (for `--json`).
    pub decision: Option<serde_json::Value>,
    #[serde(skip)]
    pub decided: Option<Decision>,
}

pub fn why(home: &Home, profile: &Profile, path: &str) -> Result<Vec<WhyPair>, EngineError> {
    let rel =
        RelPath::new(path.trim_end_matches('/')).map_err(|e| EngineError::Usage(e.to_string()))?;
    let rules = crate::rules::Rules::compile(profile)?;
    let store = engine::open_store(home, &profile.name)?;
    let mut out = Vec::new();
    let reps: Vec<_> = profile
        .replicas
        .iter()
        .map(|s| engine::open_replica_in(profile, s))
        .collect();
    let mut avail = Vec::new();
    for (spec, r) in profile.replicas.iter().zip(&reps) {
        avail.push(match r {
            Ok(r) => engine::check_replica(&store, spec, r.as_ref(), false, true)?,
            Err(m) => Avail::Unavailable(m.clone()),
        });
    }
    for k in 1..profile.replicas.len() {
        let names = [
            profile.replicas[0].name.clone(),
            profile.replicas[k].name.clone(),
        ];
        let mut w = WhyPair {
            a: names[0].clone(),
            b: names[1].clone(),
            unavailable: None,
            base: None,
            side_a: None,
            side_b: None,
            change_a: None,
            change_b: None,
            excluded: false,
            rule: String::new(),
            policy: String::new(),
            direction: None,
            decision: None,
            decided: None,
        };
        let (ida, idb) = match (&avail[0], &avail[k]) {
            (Avail::Ready(a), Avail::Ready(b)) => (a.clone(), b.clone()),
            (Avail::Unavailable(m) | Avail::Skip(m), _)
            | (_, Avail::Unavailable(m) | Avail::Skip(m)) => {
                w.unavailable = Some(m.clone());
                out.push(w);
                continue;
            }
        };
        let pair = store
            .find_pair_id(&engine::pair_key(&ida, &idb))?
            .unwrap_or(-1);
        let ra = reps[0].as_ref().expect("ready");
        let rb = reps[k].as_ref().expect("ready");
        let err = |e: crate::replica::ReplicaError| EngineError::Io(e.to_string());
        let ea = ra.entry(&rel, true).map_err(err)?;
        let eb = rb.entry(&rel, true).map_err(err)?;
        let base = store.base_entry(pair, &rel)?;
        let is_dir = [&ea, &eb, &base]
            .iter()
            .any(|e| e.as_ref().is_some_and(|e| e.is_dir()));
        let pr = rules.for_path(&rel, is_dir);
        w.excluded = rules.is_excluded(&rel, is_dir);
        w.rule = pr.source.clone();
        w.policy = pr.conflict.to_string();
        w.direction = pr.direction.as_ref().map(|d| d.to_string());
        w.change_a = Some(reconcile::change(base.as_ref(), ea.as_ref()));
        w.change_b = Some(reconcile::change(base.as_ref(), eb.as_ref()));
        if !w.excluded {
            let ctx = PairCtx {
                names: names.clone(),
                stamp: engine::new_run_id().1,
            };
            let dec = reconcile::decide(&rel, base.as_ref(), ea.as_ref(), eb.as_ref(), &pr, &ctx);
            let mut v = serde_json::to_value(&dec).unwrap_or_default();
            if let Some(obj) = v.as_object_mut() {
                for key in ["from", "on", "winner"] {
                    if let Some(side) = obj.get(key).and_then(|x| x.as_str()).map(str::to_string) {
                        let name = if side == "A" { &names[0] } else { &names[1] };
                        obj.insert(key.into(), serde_json::Value::String(name.clone()));
                    }
                }
            }
            w.decision = Some(v);
            w.decided = Some(dec);
        }
        w.base = base;
        w.side_a = ea;
        w.side_b = eb;
        out.push(w);
    }
    Ok(out)
}
