//! The JSON API's work, one blocking function per endpoint (the server runs them on its
//! blocking pool). Reads go through the same core calls as `status`, `log`, `versions`;
//! actions are the same runs as `resolve --keep`, `rollback` and `restore`.

use super::Ctx;
use crate::output::fmt_time;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fedsync_core::audit;
use fedsync_core::config::{Policy, Profile};
use fedsync_core::engine::{self, EngineError, NoProgress, Outcome, RunReport};
use fedsync_core::entry::{Entry, Kind};
use fedsync_core::history::{self, ChangeReport};
use fedsync_core::inspect;
use fedsync_core::path::RelPath;
use fedsync_core::replica::Replica;
use fedsync_core::store::ConflictRow;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Read;
use std::sync::Arc;

/// Text files up to this size are shown with their contents and a line diff.
const TEXT_LIMIT: u64 = 1 << 20;
/// Audit records returned by `/api/history` when no `limit` is given, and at most.
const HISTORY_DEFAULT: usize = 500;
const HISTORY_MAX: usize = 20_000;

/// An API error: the HTTP status, the exit code the command line would give, and the
/// message it would print (what happened and what to do).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    exit_code: i32,
    msg: String,
}

impl ApiError {
    pub fn new(status: StatusCode, exit_code: i32, msg: impl Into<String>) -> ApiError {
        ApiError {
            status,
            exit_code,
            msg: msg.into(),
        }
    }
    fn bad(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, 2, msg)
    }
    fn not_found(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, 2, msg)
    }
    fn internal(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, 3, msg)
    }
    /// An action the engine refused or could not do (lock held, rollback refused, no such
    /// run or version): 409 with the engine's message.
    fn action(e: EngineError) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, e.exit_code(), e.to_string())
    }
}

/// Errors of the read-only views.
impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        let status = match &e {
            EngineError::Config(_) | EngineError::Usage(_) => StatusCode::BAD_REQUEST,
            EngineError::Locked { .. } | EngineError::Refused(_) => StatusCode::CONFLICT,
            EngineError::Store(_) | EngineError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.exit_code(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({
                "error": self.msg,
                "status": self.status.as_u16(),
                "exit_code": self.exit_code,
            })),
        )
            .into_response()
    }
}

type Res<T> = Result<T, ApiError>;

impl Ctx {
    /// The profile, re-read from its file when it has one.
    fn profile(&self) -> Res<Profile> {
        let path = self.home.profile_path(&self.profile.name);
        if path.exists() {
            Profile::load(&self.profile.name, &path).map_err(|e| {
                ApiError::bad(format!(
                    "{e} (the profile file changed since `fedsync ui` started; fix it and reload)"
                ))
            })
        } else {
            Ok(self.profile.clone())
        }
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Res<Value> {
    serde_json::to_value(v).map_err(|e| ApiError::internal(format!("internal error: {e}")))
}

fn rel(s: &str, what: &str) -> Res<RelPath> {
    let t = s.trim_start_matches("./").trim_end_matches('/');
    RelPath::new(t).map_err(|e| ApiError::bad(format!("{what} {s:?}: {e}")))
}

// ---------------------------------------------------------------------------------------
// Status

/// `GET /api/status`: what `fedsync status NAME --json` prints, each replica with
/// `reachable`, and the open conflicts with the names of their two replicas.
pub fn status(ctx: &Ctx) -> Res<Value> {
    let profile = ctx.profile()?;
    let r = inspect::status(&ctx.home, &profile)?;
    let mut v = to_value(&r)?;
    if let Some(reps) = v["replicas"].as_array_mut() {
        for rep in reps {
            let ok = rep["state"] == "ok";
            rep["reachable"] = Value::Bool(ok);
        }
    }
    let (open, _) = open_conflicts(ctx, &profile)?;
    v["conflicts"] = Value::Array(open.iter().map(conflict_summary).collect());
    v["replica_names"] = json!(profile
        .replicas
        .iter()
        .map(|r| r.name.clone())
        .collect::<Vec<_>>());
    v["version"] = json!(env!("CARGO_PKG_VERSION"));
    Ok(v)
}

// ---------------------------------------------------------------------------------------
// Conflicts

/// One open conflict with the names of its pair's replicas.
struct Open {
    path: RelPath,
    a: String,
    b: String,
    ia: usize,
    ib: usize,
    row: ConflictRow,
}

/// The profile's open conflicts (as `fedsync resolve` finds them), and the rows whose pair is
/// not one of the profile's any more.
fn open_conflicts(ctx: &Ctx, profile: &Profile) -> Res<(Vec<Open>, Vec<ConflictRow>)> {
    let (open, stale) = crate::resolve::open_conflicts(&ctx.home, profile)
        .map_err(|f| ApiError::internal(f.msg))?;
    let open = open
        .into_iter()
        .map(|o| {
            let (ia, ib) = o.pair;
            Open {
                path: o.path,
                a: profile.replicas[ia].name.clone(),
                b: profile.replicas[ib].name.clone(),
                ia,
                ib,
                row: o.row,
            }
        })
        .collect();
    Ok((open, stale))
}

fn entry_json(e: &Option<Entry>) -> Value {
    match e {
        None => Value::Null,
        Some(e) => json!({
            "kind": e.kind.as_str(),
            "size": e.size,
            "mtime": e.mtime,
            "mtime_text": fmt_time(e.mtime),
            "mode": format!("{:o}", e.mode),
            "hash": e.hash.map(|h| h.to_hex()),
            "link": e.link,
        }),
    }
}

fn conflict_summary(c: &Open) -> Value {
    json!({
        "path": c.path.as_str(),
        "a": c.a,
        "b": c.b,
        "reason": c.row.reason,
        "run": c.row.run,
        "recorded": {"a": entry_json(&c.row.a), "b": entry_json(&c.row.b)},
    })
}

/// `GET /api/conflicts`.
pub fn conflicts(ctx: &Ctx) -> Res<Value> {
    let profile = ctx.profile()?;
    let (open, stale) = open_conflicts(ctx, &profile)?;
    Ok(json!({
        "profile": profile.name,
        "conflicts": open.iter().map(conflict_summary).collect::<Vec<_>>(),
        "stale": stale.iter().map(|r| json!({
            "path": r.path,
            "reason": r.reason,
            "why": format!("recorded for replicas no longer in profile {} (or whose marker \
                 changed); the next `fedsync sync {}` re-checks it", profile.name, profile.name),
        })).collect::<Vec<_>>(),
    }))
}

/// What one side holds now, for the conflict page.
fn side(
    rep: &Result<Arc<dyn Replica>, String>,
    name: &str,
    path: &RelPath,
) -> (Value, Option<String>) {
    let rep = match rep {
        Ok(r) => r,
        Err(m) => {
            return (
                json!({"replica": name, "unavailable": m, "entry": null,
                       "no_text": format!("{name} is unavailable: {m}")}),
                None,
            )
        }
    };
    let entry = match rep.entry(path, true) {
        Ok(e) => e,
        Err(e) => {
            let m = e.to_string();
            return (
                json!({"replica": name, "unavailable": m, "entry": null,
                       "no_text": format!("{name} is unreadable: {m}")}),
                None,
            );
        }
    };
    let (text, no_text) = match &entry {
        None => (None, Some(format!("{name} has no copy"))),
        Some(e) if e.kind != Kind::File => (
            None,
            Some(format!(
                "{name}'s copy is a {}, not a file",
                e.kind.as_str()
            )),
        ),
        Some(e) if e.size > TEXT_LIMIT => (
            None,
            Some(format!(
                "{name}'s copy is larger than {} MB",
                TEXT_LIMIT >> 20
            )),
        ),
        Some(_) => {
            let mut buf = Vec::new();
            match rep.open(path).map_err(|e| e.to_string()).and_then(|r| {
                r.take(TEXT_LIMIT + 1)
                    .read_to_end(&mut buf)
                    .map_err(|e| e.to_string())
            }) {
                Err(m) => (None, Some(format!("{name} is unreadable: {m}"))),
                Ok(_) if buf.contains(&0) => (None, Some(format!("{name}'s copy is binary"))),
                Ok(_) => match String::from_utf8(buf) {
                    Ok(s) => (Some(s), None),
                    Err(_) => (None, Some(format!("{name}'s copy is binary"))),
                },
            }
        }
    };
    (
        json!({
            "replica": name,
            "entry": entry_json(&entry),
            "binary": no_text.as_deref().is_some_and(|m| m.ends_with("binary")),
            "text": text,
            "no_text": no_text,
        }),
        text,
    )
}

/// Whether what a side holds now differs from what the conflict recorded.
fn changed_since(now: &Value, recorded: &Option<Entry>) -> bool {
    let e = &now["entry"];
    match recorded {
        None => !e.is_null(),
        Some(r) => {
            e.is_null()
                || e["kind"] != r.kind.as_str()
                || e["size"] != r.size
                || (r.hash.is_some()
                    && !e["hash"].is_null()
                    && e["hash"] != json!(r.hash.map(|h| h.to_hex())))
        }
    }
}

/// The line diff of two texts: every line, tagged, with its line number on each side.
fn line_diff(a: &str, b: &str) -> Value {
    let diff = similar::TextDiff::configure()
        .timeout(std::time::Duration::from_secs(2))
        .diff_lines(a, b);
    let lines: Vec<Value> = diff
        .iter_all_changes()
        .map(|c| {
            let tag = match c.tag() {
                similar::ChangeTag::Equal => "equal",
                similar::ChangeTag::Delete => "delete",
                similar::ChangeTag::Insert => "insert",
            };
            let text = c.value();
            let text = text.strip_suffix('\n').unwrap_or(text);
            let text = text.strip_suffix('\r').unwrap_or(text);
            json!({
                "tag": tag,
                "a": c.old_index().map(|i| i + 1),
                "b": c.new_index().map(|i| i + 1),
                "text": text,
            })
        })
        .collect();
    let changed = lines.iter().filter(|l| l["tag"] != "equal").count();
    json!({"lines": lines, "changed_lines": changed})
}

/// `GET /api/conflicts/{path}`: both sides now (metadata; contents and a line diff for
/// text up to 1 MB), one entry per pair with an open conflict at that path.
pub fn conflict(ctx: &Ctx, path: &str) -> Res<Value> {
    let profile = ctx.profile()?;
    let path = rel(path, "path")?;
    let (open, _) = open_conflicts(ctx, &profile)?;
    let hits: Vec<&Open> = open.iter().filter(|c| c.path == path).collect();
    if hits.is_empty() {
        return Err(no_conflict_at(&profile, &path, &open));
    }
    let mut reps: HashMap<usize, Result<Arc<dyn Replica>, String>> = HashMap::new();
    let mut out = Vec::new();
    for c in hits {
        for i in [c.ia, c.ib] {
            reps.entry(i)
                .or_insert_with(|| engine::open_replica_in(&profile, &profile.replicas[i]));
        }
        let (mut sa, ta) = side(&reps[&c.ia], &c.a, &c.path);
        let (mut sb, tb) = side(&reps[&c.ib], &c.b, &c.path);
        sa["changed_since_recorded"] = json!(changed_since(&sa, &c.row.a));
        sb["changed_since_recorded"] = json!(changed_since(&sb, &c.row.b));
        let (ma, mb) = (sa["entry"]["mtime"].as_i64(), sb["entry"]["mtime"].as_i64());
        if let (Some(x), Some(y)) = (ma, mb) {
            sa["newer"] = json!(x > y);
            sb["newer"] = json!(y > x);
        }
        let (diff, identical, no_diff) = match (&ta, &tb) {
            (Some(x), Some(y)) => (line_diff(x, y), x == y, None),
            _ => {
                let why: Vec<String> = [&sa, &sb]
                    .iter()
                    .filter_map(|s| s["no_text"].as_str().map(str::to_string))
                    .collect();
                (Value::Null, false, Some(why.join("; ")))
            }
        };
        let mut summary = conflict_summary(c);
        let obj = summary.as_object_mut().expect("object");
        obj.insert("sides".into(), json!([sa, sb]));
        obj.insert("diff".into(), diff);
        obj.insert("identical".into(), json!(identical));
        obj.insert("no_diff".into(), json!(no_diff));
        obj.insert(
            "choices".into(),
            json!([
                {"keep": c.a, "label": format!("keep {}", c.a),
                 "what": format!("{}'s copy goes to {} (its copy is kept as a version)", c.a, c.b)},
                {"keep": c.b, "label": format!("keep {}", c.b),
                 "what": format!("{}'s copy goes to {} (its copy is kept as a version)", c.b, c.a)},
                {"keep": "both", "label": "keep both",
                 "what": "both copies stay: one is renamed to a .conflict-… name on both sides"},
                {"keep": "merge", "label": "merge",
                 "what": "merge by the path's merge rule; without one, keep both"},
            ]),
        );
        out.push(summary);
    }
    Ok(json!({"profile": profile.name, "path": path.as_str(), "pairs": out}))
}

fn no_conflict_at(profile: &Profile, path: &RelPath, open: &[Open]) -> ApiError {
    let listed: Vec<&str> = open.iter().take(10).map(|c| c.path.as_str()).collect();
    ApiError::not_found(if open.is_empty() {
        format!(
            "{path}: no open conflict at this path; profile {} has no open conflicts",
            profile.name
        )
    } else {
        format!(
            "{path}: no open conflict at this path; open conflicts: {}{} (`fedsync status {}` lists them)",
            listed.join(", "),
            if open.len() > listed.len() { ", ..." } else { "" },
            profile.name
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveReq {
    path: String,
    keep: String,
}

/// `keep` -> the policy of the resolution run (as `fedsync resolve --keep`).
fn parse_keep(profile: &Profile, k: &str) -> Res<Policy> {
    match k {
        "newest" => return Ok(Policy::Newest),
        "both" | "keep-both" => return Ok(Policy::KeepBoth),
        "merge" => return Ok(Policy::Merge),
        _ => {}
    }
    let name = k.strip_prefix("prefer:").unwrap_or(k);
    if profile.replicas.iter().any(|r| r.name == name) {
        return Ok(Policy::Prefer(name.to_string()));
    }
    let names: Vec<&str> = profile.replicas.iter().map(|r| r.name.as_str()).collect();
    Err(ApiError::bad(format!(
        "keep {k:?}: profile {} has no replica named {name:?}; give one of {}, or newest, both, merge",
        profile.name,
        names.join(", ")
    )))
}

/// `POST /api/conflicts/resolve {path, keep}`: the run `fedsync resolve NAME PATH --keep
/// KEEP` does (a sync of the conflicting paths at or below PATH with the conflict policy
/// overridden, labelled `resolve`).
pub fn resolve(ctx: &Ctx, req: ResolveReq) -> Res<Value> {
    let profile = ctx.profile()?;
    let policy = parse_keep(&profile, &req.keep)?;
    let filter = rel(&req.path, "path")?;
    let (open, _) = open_conflicts(ctx, &profile)?;
    let selected: Vec<&Open> = open
        .iter()
        .filter(|c| c.path.starts_with(&filter))
        .collect();
    if selected.is_empty() {
        return Err(no_conflict_at(&profile, &filter, &open));
    }
    if let Policy::Prefer(r) = &policy {
        let outside: Vec<String> = selected
            .iter()
            .filter(|c| c.a != *r && c.b != *r)
            .map(|c| format!("{} (between {} and {})", c.path, c.a, c.b))
            .collect();
        if !outside.is_empty() {
            return Err(ApiError::bad(format!(
                "keep {r}: {r} is not a side of {}; keep one of its two replicas, newest, both or merge",
                outside.join(", ")
            )));
        }
    }
    let mut paths: Vec<RelPath> = Vec::new();
    for c in &selected {
        if !paths.contains(&c.path) {
            paths.push(c.path.clone());
        }
    }
    let opts = engine::Options {
        conflict: Some(policy),
        paths,
        label: Some("resolve".into()),
        cancel: Some(ctx.cancel.clone()),
        ..Default::default()
    };
    let report = engine::sync(&ctx.home, &profile, &opts, &NoProgress).map_err(ApiError::action)?;
    Ok(run_result(&profile, &report))
}

/// A run report with its exit code and the lines the command line would print about it.
fn run_result(profile: &Profile, r: &RunReport) -> Value {
    let code = r.exit_code();
    let mut lines = Vec::new();
    for p in &r.pairs {
        if let Some(m) = &p.message {
            lines.push(format!("{} <-> {}: {m}", p.a, p.b));
        }
        for it in &p.items {
            let line = match &it.outcome {
                Outcome::Done if it.conflict => format!("resolved {}: {}", it.path, it.why),
                Outcome::Done | Outcome::Planned => continue,
                Outcome::Skipped(why) => format!("skipped {}: {why}", it.path),
                Outcome::Failed(why) => format!("FAILED {}: {why}", it.path),
                Outcome::Conflict(why) if why.starts_with("review:") => format!(
                    "{}: merged with conflict markers; edit the file to settle them",
                    it.path
                ),
                Outcome::Conflict(_) => format!(
                    "{}: still a conflict; pick another way to settle it",
                    it.path
                ),
            };
            lines.push(line);
        }
    }
    let message = match code {
        0 => format!(
            "resolved in run {}; undo it with `fedsync rollback {} {}` (or “roll back this run” in History)",
            r.run, profile.name, r.run
        ),
        1 => format!(
            "run {} finished, but something is left open (see below); the page shows what is still open",
            r.run
        ),
        _ => format!(
            "run {} failed or was refused: nothing or only part was done (see below)",
            r.run
        ),
    };
    json!({
        "run": r.run,
        "ok": code == 0,
        "exit_code": code,
        "message": message,
        "details": lines,
        "warnings": r.warnings,
        "report": r,
    })
}

// ---------------------------------------------------------------------------------------
// History

#[derive(Deserialize)]
pub struct HistoryQuery {
    path: Option<String>,
    run: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/history?path=GLOB&run=ID&limit=N`: the audit trail, newest first.
pub fn history(ctx: &Ctx, q: HistoryQuery) -> Res<Value> {
    let profile = ctx.profile()?;
    let glob = match q.path.as_deref().filter(|s| !s.is_empty()) {
        Some(g) => Some(
            globset::Glob::new(g)
                .map_err(|e| {
                    ApiError::bad(format!(
                        "path {g:?}: {e}; give a glob such as docs/** or *.txt"
                    ))
                })?
                .compile_matcher(),
        ),
        None => None,
    };
    let run = q.run.as_deref().filter(|s| !s.is_empty());
    let limit = q.limit.unwrap_or(HISTORY_DEFAULT).clamp(1, HISTORY_MAX);
    let path = ctx.home.audit_path(&profile.name);
    let (recs, breaks) = audit::read(&path)
        .map_err(|e| ApiError::internal(format!("audit trail {}: {e}", path.display())))?;
    let total = recs.len();
    let mut matched: Vec<&audit::Record> = recs
        .iter()
        .filter(|r| run.is_none_or(|x| r.run == x))
        .filter(|r| match &glob {
            // A path filter keeps the records about paths (not run-start/run-end).
            Some(g) => !r.path.is_empty() && g.is_match(&r.path),
            None => true,
        })
        .collect();
    let matched_len = matched.len();
    matched.reverse();
    matched.truncate(limit);
    let store = engine::open_store(&ctx.home, &profile.name)?;
    let rows = store
        .runs(1000)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    // The runs of the records shown, with their kind, status and summary.
    let mut runs: BTreeMap<&str, Value> = BTreeMap::new();
    for r in &matched {
        if runs.contains_key(r.run.as_str()) {
            continue;
        }
        let row = rows.iter().find(|x| x.id == r.run);
        let changes = recs
            .iter()
            .filter(|x| x.run == r.run && !x.replica.is_empty() && !x.path.is_empty())
            .filter(|x| x.error.is_none())
            .count();
        runs.insert(
            r.run.as_str(),
            json!({
                "id": r.run,
                "kind": row.map(|x| x.kind.clone()),
                "status": row.map(|x| x.status.clone()),
                "started": row.map(|x| x.started.clone()),
                "finished": row.and_then(|x| x.finished.clone()),
                "summary": row.map(|x| x.summary.clone()),
                "changes": changes,
                "can_roll_back": changes > 0,
            }),
        );
    }
    Ok(json!({
        "profile": profile.name,
        "records": matched,
        "matched": matched_len,
        "total": total,
        "limit": limit,
        "runs": runs.into_values().rev().collect::<Vec<_>>(),
        "chain_breaks": breaks,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackReq {
    run: String,
    #[serde(default)]
    force: bool,
}

fn change_result(profile: &Profile, r: &ChangeReport) -> Value {
    let what = match &r.target {
        Some(t) => format!("rolled back run {t}"),
        None => format!("{} done", r.kind),
    };
    let n = r.done.len();
    let mut message = format!("{what}: {n} {}", if n == 1 { "change" } else { "changes" });
    if r.already > 0 {
        message.push_str(&format!(", {} already as before", r.already));
    }
    if !r.failed.is_empty() {
        message.push_str(&format!(", {} not undone", r.failed.len()));
    }
    message.push_str(&format!(
        " (run {}, itself undoable with `fedsync rollback {} {}`)",
        r.run, profile.name, r.run
    ));
    if !r.done.is_empty() {
        message.push_str(
            "; the next sync carries the restored content to the other replicas \
             (what they hold now is kept as a version)",
        );
    }
    json!({
        "run": r.run,
        "ok": r.exit_code() == 0,
        "exit_code": r.exit_code(),
        "message": message,
        "details": r.failed.iter().map(|(p, w)| format!("{p}: {w}")).collect::<Vec<_>>(),
        "warnings": r.warnings,
        "report": r,
    })
}

/// `POST /api/rollback {run, force?}`: `fedsync rollback NAME RUN [--force]`.
pub fn rollback(ctx: &Ctx, req: RollbackReq) -> Res<Value> {
    let profile = ctx.profile()?;
    if req.run.trim().is_empty() {
        return Err(ApiError::bad(
            "give the run to roll back: {\"run\": \"ID\"}",
        ));
    }
    let r = history::rollback(&ctx.home, &profile, Some(req.run.trim()), req.force, false)
        .map_err(ApiError::action)?;
    Ok(change_result(&profile, &r))
}

// ---------------------------------------------------------------------------------------
// Versions

#[derive(Deserialize)]
pub struct VersionsQuery {
    path: Option<String>,
}

/// `GET /api/versions?path=P`: `fedsync versions NAME P --json`.
pub fn versions(ctx: &Ctx, q: VersionsQuery) -> Res<Value> {
    let profile = ctx.profile()?;
    let Some(p) = q.path.as_deref().filter(|s| !s.is_empty()) else {
        return Err(ApiError::bad("give the path: /api/versions?path=PATH"));
    };
    let path = rel(p, "path")?;
    let (list, unavailable) = history::versions(&ctx.home, &profile, &path)?;
    let rows: Vec<Value> = list
        .iter()
        .map(|(r, v)| {
            json!({
                "replica": r, "version": history::short_id(v), "run": v.run,
                "path": v.path, "kind": v.kind.as_str(), "size": v.size,
                "mtime": v.mtime, "mtime_text": fmt_time(v.mtime), "location": v.id,
            })
        })
        .collect();
    Ok(json!({
        "profile": profile.name,
        "path": path.as_str(),
        "versions": rows,
        "unavailable": unavailable,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreReq {
    path: String,
    version: Option<String>,
    replica: Option<String>,
}

/// `POST /api/restore {path, version?, replica?}`: `fedsync restore NAME PATH [--version
/// ID] [--replica R]`.
pub fn restore(ctx: &Ctx, req: RestoreReq) -> Res<Value> {
    let profile = ctx.profile()?;
    let path = rel(&req.path, "path")?;
    let r = history::restore(
        &ctx.home,
        &profile,
        &path,
        req.version.as_deref().filter(|s| !s.is_empty()),
        req.replica.as_deref().filter(|s| !s.is_empty()),
        false,
    )
    .map_err(ApiError::action)?;
    Ok(change_result(&profile, &r))
}

// ---------------------------------------------------------------------------------------
// Metrics

/// Escape a label value for the Prometheus text format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `GET /metrics`: Prometheus text format, from the runs' summaries in the state and the
/// audit trail.
pub fn metrics(ctx: &Ctx) -> Res<String> {
    let profile = ctx.profile()?;
    let name = label(&profile.name);
    let store = engine::open_store(&ctx.home, &profile.name)?;
    let runs = store
        .runs(usize::MAX >> 1)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let conflicts = store
        .conflicts()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut by_status: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut failures = 0u64;
    // pair -> direction -> (files, bytes)
    let mut moved: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    let mut deleted: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut failed_items: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_ok: BTreeMap<String, f64> = BTreeMap::new();
    let mut last_run: Option<f64> = None;
    let ts = |s: &Option<String>| {
        s.as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis() as f64 / 1000.0)
    };
    for r in &runs {
        *by_status
            .entry((r.kind.clone(), r.status.clone()))
            .or_default() += 1;
        if r.status == "failed" {
            failures += 1;
        }
        let finished = ts(&r.finished);
        if let Some(t) = finished {
            last_run = Some(last_run.map_or(t, |l: f64| l.max(t)));
        }
        let Some(pairs) = r.summary["pairs"].as_array() else {
            continue;
        };
        for p in pairs {
            let (a, b) = (
                p["a"].as_str().unwrap_or("?"),
                p["b"].as_str().unwrap_or("?"),
            );
            let pair = format!("{a}<->{b}");
            let c = &p["counts"];
            let n = |k: &str| c[k].as_u64().unwrap_or(0);
            for (dir, files, bytes) in [
                (format!("{a}->{b}"), n("to_b"), n("bytes_to_b")),
                (format!("{b}->{a}"), n("to_a"), n("bytes_to_a")),
            ] {
                let e = moved.entry((pair.clone(), dir)).or_default();
                e.0 += files;
                e.1 += bytes;
            }
            *deleted.entry((pair.clone(), a.to_string())).or_default() += n("deleted_a");
            *deleted.entry((pair.clone(), b.to_string())).or_default() += n("deleted_b");
            *failed_items.entry(pair.clone()).or_default() += n("failed");
            if p["status"] == "ok" && r.status != "failed" {
                if let Some(t) = finished {
                    let e = last_ok.entry(pair).or_insert(t);
                    *e = e.max(t);
                }
            }
        }
    }
    let (recs, breaks) = audit::read(&ctx.home.audit_path(&profile.name))
        .map_err(|e| ApiError::internal(format!("audit trail: {e}")))?;
    let mut actions: BTreeMap<String, u64> = BTreeMap::new();
    let mut action_errors = 0u64;
    for r in &recs {
        if r.path.is_empty() {
            continue;
        }
        *actions.entry(r.action.clone()).or_default() += 1;
        if r.error.is_some() {
            action_errors += 1;
        }
    }

    let mut o = String::new();
    let head = |o: &mut String, n: &str, t: &str, help: &str| {
        let _ = writeln!(o, "# HELP {n} {help}");
        let _ = writeln!(o, "# TYPE {n} {t}");
    };
    head(
        &mut o,
        "fedsync_runs_total",
        "counter",
        "Runs recorded in the state, by kind (sync, resolve, rollback, restore) and final status.",
    );
    for ((kind, status), n) in &by_status {
        let _ = writeln!(
            o,
            "fedsync_runs_total{{profile=\"{name}\",kind=\"{}\",status=\"{}\"}} {n}",
            label(kind),
            label(status)
        );
    }
    head(
        &mut o,
        "fedsync_run_failures_total",
        "counter",
        "Runs that ended with status failed.",
    );
    let _ = writeln!(
        o,
        "fedsync_run_failures_total{{profile=\"{name}\"}} {failures}"
    );
    head(
        &mut o,
        "fedsync_transferred_files_total",
        "counter",
        "Files and other entries copied, by pair and direction.",
    );
    for ((pair, dir), (files, _)) in &moved {
        let _ = writeln!(
            o,
            "fedsync_transferred_files_total{{profile=\"{name}\",pair=\"{}\",direction=\"{}\"}} {files}",
            label(pair),
            label(dir)
        );
    }
    head(
        &mut o,
        "fedsync_transferred_bytes_total",
        "counter",
        "Bytes copied, by pair and direction.",
    );
    for ((pair, dir), (_, bytes)) in &moved {
        let _ = writeln!(
            o,
            "fedsync_transferred_bytes_total{{profile=\"{name}\",pair=\"{}\",direction=\"{}\"}} {bytes}",
            label(pair),
            label(dir)
        );
    }
    head(&mut o, "fedsync_deleted_total", "counter", "Deletions carried out, by pair and the replica deleted on (the old content is kept as a version).");
    for ((pair, on), n) in &deleted {
        let _ = writeln!(
            o,
            "fedsync_deleted_total{{profile=\"{name}\",pair=\"{}\",replica=\"{}\"}} {n}",
            label(pair),
            label(on)
        );
    }
    head(
        &mut o,
        "fedsync_failed_items_total",
        "counter",
        "Items that failed, by pair.",
    );
    for (pair, n) in &failed_items {
        let _ = writeln!(
            o,
            "fedsync_failed_items_total{{profile=\"{name}\",pair=\"{}\"}} {n}",
            label(pair)
        );
    }
    head(
        &mut o,
        "fedsync_open_conflicts",
        "gauge",
        "Conflicts waiting for `fedsync resolve` (or the dashboard).",
    );
    let _ = writeln!(
        o,
        "fedsync_open_conflicts{{profile=\"{name}\"}} {}",
        conflicts.len()
    );
    head(
        &mut o,
        "fedsync_last_success_timestamp_seconds",
        "gauge",
        "When a run last finished with the pair in agreement (Unix time).",
    );
    for (pair, t) in &last_ok {
        let _ = writeln!(
            o,
            "fedsync_last_success_timestamp_seconds{{profile=\"{name}\",pair=\"{}\"}} {t:.3}",
            label(pair)
        );
    }
    head(
        &mut o,
        "fedsync_last_run_timestamp_seconds",
        "gauge",
        "When the last run of any kind finished (Unix time).",
    );
    if let Some(t) = last_run {
        let _ = writeln!(
            o,
            "fedsync_last_run_timestamp_seconds{{profile=\"{name}\"}} {t:.3}"
        );
    }
    head(
        &mut o,
        "fedsync_audit_actions_total",
        "counter",
        "Actions in the audit trail, by action.",
    );
    for (a, n) in &actions {
        let _ = writeln!(
            o,
            "fedsync_audit_actions_total{{profile=\"{name}\",action=\"{}\"}} {n}",
            label(a)
        );
    }
    head(
        &mut o,
        "fedsync_audit_action_errors_total",
        "counter",
        "Actions in the audit trail that failed or were skipped.",
    );
    let _ = writeln!(
        o,
        "fedsync_audit_action_errors_total{{profile=\"{name}\"}} {action_errors}"
    );
    head(
        &mut o,
        "fedsync_audit_records",
        "gauge",
        "Records in the audit trail.",
    );
    let _ = writeln!(
        o,
        "fedsync_audit_records{{profile=\"{name}\"}} {}",
        recs.len()
    );
    head(&mut o, "fedsync_audit_chain_breaks", "gauge", "Lines of the audit trail that do not follow the line before them (0 unless it was edited).");
    let _ = writeln!(
        o,
        "fedsync_audit_chain_breaks{{profile=\"{name}\"}} {}",
        breaks.len()
    );
    Ok(o)
}
