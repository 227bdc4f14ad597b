//! Human and JSON output, progress bars, and the read-only commands' printing.

use crate::cli::Fail;
use fedsync_core::audit;
use fedsync_core::config::{Profile, ReplicaAddr};
use fedsync_core::engine::{self, Outcome, PairReport, PairStatus, Progress, RunReport};
use fedsync_core::entry::Entry;
use fedsync_core::history::{self, ChangeReport, PruneReport};
use fedsync_core::inspect;
use fedsync_core::path::RelPath;
use fedsync_core::replica::local::LocalReplica;
use fedsync_core::replica::{Probe, Replica, VersionInfo};
use fedsync_core::undo::UndoOp;
use fedsync_core::verify::{Problem, VerifyReport};
use fedsync_core::Home;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

/// `println!` that ignores a closed stdout (`fedsync log | head` must not panic).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub struct Printer {
    pub json: bool,
    pub quiet: bool,
    pub verbose: u8,
    pub color: bool,
}

/// A pair's counts as phrases: "2 -> b (1.2 KB)", "1 deleted on a", "1 conflict", ...
/// `paint(code, text)` colours the problem counts; `conflict_hint` follows the conflicts.
pub(crate) fn count_parts(
    p: &PairReport,
    paint: &dyn Fn(&str, String) -> String,
    conflict_hint: &str,
) -> Vec<String> {
    let c = &p.counts;
    let mut parts = Vec::new();
    for (n, bytes, to) in [(c.to_b, c.bytes_to_b, &p.b), (c.to_a, c.bytes_to_a, &p.a)] {
        if n > 0 {
            parts.push(format!("{n} -> {to} ({})", human_bytes(bytes)));
        }
    }
    for (n, on) in [(c.deleted_b, &p.b), (c.deleted_a, &p.a)] {
        if n > 0 {
            parts.push(format!("{n} deleted on {on}"));
        }
    }
    if c.moved > 0 {
        parts.push(format!("{} moved", c.moved));
    }
    if c.merged > 0 {
        parts.push(format!("{} merged", c.merged));
    }
    if c.conflicts > 0 {
        let word = if c.conflicts == 1 {
            "conflict"
        } else {
            "conflicts"
        };
        parts.push(paint(
            "1;35",
            format!("{} {word}{conflict_hint}", c.conflicts),
        ));
    }
    if c.skipped > 0 {
        parts.push(paint("1;33", format!("{} skipped", c.skipped)));
    }
    if c.failed > 0 {
        parts.push(paint("1;31", format!("{} failed", c.failed)));
    }
    parts
}

/// How the engine marks the items a stopped run left undone.
const STOPPED: &str = "not done: the run was stopped";

pub(crate) fn human_bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < U.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

pub(crate) fn fmt_time(ns: i64) -> String {
    chrono::DateTime::from_timestamp(ns.div_euclid(1_000_000_000), 0)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|| ns.to_string())
}

fn describe_entry(e: &Option<Entry>) -> String {
    match e {
        None => "absent".into(),
        Some(e) => match e.kind {
            fedsync_core::entry::Kind::Dir => format!("directory, mode {:o}", e.mode),
            fedsync_core::entry::Kind::Symlink => {
                format!("symlink -> {}", e.link.as_deref().unwrap_or(""))
            }
            fedsync_core::entry::Kind::File => format!(
                "file, {}, mode {:o}, modified {}, blake3 {}",
                human_bytes(e.size),
                e.mode,
                fmt_time(e.mtime),
                e.hash.map(|h| h.short()).unwrap_or_else(|| "?".into())
            ),
        },
    }
}

/// Progress on stderr, only on a terminal and only for work longer than a moment.
pub struct Bars {
    bar: Mutex<Option<ProgressBar>>,
    enabled: bool,
}

impl Progress for Bars {
    fn scanning(&self, what: &str) {
        if !self.enabled {
            return;
        }
        let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        pb.set_style(
            ProgressStyle::with_template("{spinner} scanning {msg} ({elapsed})").expect("style"),
        );
        pb.set_message(what.to_string());
        pb.enable_steady_tick(Duration::from_millis(120));
        if let Some(old) = self.bar.lock().expect("lock").replace(pb) {
            old.finish_and_clear();
        }
    }
    fn applying(&self, items: u64, bytes: u64) {
        if !self.enabled {
            return;
        }
        let pb = ProgressBar::with_draw_target(Some(bytes), ProgressDrawTarget::stderr());
        pb.set_style(
            ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg} eta {eta}",
            )
            .expect("style"),
        );
        pb.set_message(format!("{items} changes"));
        if let Some(old) = self.bar.lock().expect("lock").replace(pb) {
            old.finish_and_clear();
        }
    }
    fn advance(&self, bytes: u64) {
        if let Some(pb) = self.bar.lock().expect("lock").as_ref() {
            pb.inc(bytes);
        }
    }
    fn finished(&self) {
        if let Some(pb) = self.bar.lock().expect("lock").take() {
            pb.finish_and_clear();
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.finished();
    }
}

impl Printer {
    pub fn new(json: bool, quiet: bool, verbose: u8, color: bool) -> Printer {
        Printer {
            json,
            quiet,
            verbose,
            color: color && std::io::stderr().is_terminal(),
        }
    }

    pub fn progress(&self) -> Bars {
        Bars {
            bar: Mutex::new(None),
            enabled: !self.quiet && !self.json && std::io::stderr().is_terminal(),
        }
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    pub fn error(&self, msg: &str) {
        eprintln!("{} {msg}", self.paint("1;31", "error:"));
    }

    pub fn warn(&self, msg: &str) {
        eprintln!("{} {msg}", self.paint("1;33", "warning:"));
    }

    fn json_out<T: serde::Serialize>(&self, v: &T) {
        outln!(
            "{}",
            serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        );
    }

    pub fn run_report(&self, r: &RunReport, plan: bool) {
        for w in &r.warnings {
            self.warn(w);
        }
        if self.json {
            self.json_out(r);
            return;
        }
        for p in &r.pairs {
            if let Some(m) = &p.message {
                match p.status {
                    PairStatus::Skipped if !r.warnings.contains(m) => self.warn(m),
                    PairStatus::Refused | PairStatus::Failed => {
                        self.error(&format!("{} <-> {}: {m}", p.a, p.b))
                    }
                    _ => {}
                }
            }
            let show_items = plan || self.verbose > 0 || p.status == PairStatus::Refused;
            let stopped = p
                .items
                .iter()
                .filter(|it| matches!(&it.outcome, Outcome::Skipped(r) if r.starts_with(STOPPED)))
                .count();
            if stopped > 0 {
                self.warn(&format!(
                    "stopped by a signal: {stopped} changes between {} and {} are left for the next run",
                    p.a, p.b
                ));
            }
            for it in &p.items {
                if stopped > 0
                    && self.verbose == 0
                    && matches!(&it.outcome, Outcome::Skipped(r) if r.starts_with(STOPPED))
                {
                    continue;
                }
                let problem = matches!(
                    it.outcome,
                    Outcome::Skipped(_) | Outcome::Failed(_) | Outcome::Conflict(_)
                );
                if !problem && (!show_items || self.quiet) {
                    continue;
                }
                let target = it.target.as_deref().unwrap_or("-");
                let state = match &it.outcome {
                    Outcome::Planned | Outcome::Done => String::new(),
                    Outcome::Skipped(r) if *r == it.why => "  [skipped]".into(),
                    Outcome::Skipped(r) => format!("  [skipped: {r}]"),
                    Outcome::Failed(r) => format!("  [FAILED: {r}]"),
                    Outcome::Conflict(r) if r.starts_with("review:") => {
                        "  [review: edit the file to settle the conflict markers]".into()
                    }
                    Outcome::Conflict(_) => "  [conflict: run `fedsync resolve` to settle]".into(),
                };
                let action = if it.conflict {
                    self.paint("1;35", &format!("{:<10}", it.action))
                } else {
                    format!("{:<10}", it.action)
                };
                let rule = if plan || self.verbose > 1 {
                    format!("  ({})", it.rule)
                } else {
                    String::new()
                };
                outln!(
                    "  {action} {target:<8} {}  — {}{rule}{state}",
                    it.path,
                    it.why
                );
            }
            if self.quiet {
                continue;
            }
            let parts = count_parts(p, &|code, t| self.paint(code, &t), "");
            let head = format!("{} <-> {}", p.a, p.b);
            match p.status {
                PairStatus::Skipped => outln!("{head}: skipped"),
                PairStatus::Refused => outln!("{head}: refused, nothing done"),
                PairStatus::Failed => outln!("{head}: failed"),
                _ if parts.is_empty() => outln!(
                    "{head}: in sync, nothing to do ({} + {} entries checked)",
                    p.scanned[0],
                    p.scanned[1]
                ),
                _ => outln!(
                    "{head}: {}{}",
                    if plan { "would sync " } else { "" },
                    parts.join(", ")
                ),
            }
        }
        if let Some(u) = &r.atomic_undo {
            for (path, why) in &u.failed {
                self.error(&format!("--atomic: could not undo {path}: {why}"));
            }
            if !self.quiet {
                outln!(
                    "--atomic: an item failed, so the {} changes above were undone{}",
                    u.undone,
                    if u.failed.is_empty() {
                        "; every replica is as it was before the run"
                    } else {
                        ""
                    }
                );
            }
        }
        if !self.quiet {
            let verb = if plan { "planned" } else { "done" };
            // The ad-hoc form has no profile file: its generated name is what `log`,
            // `rollback`, `versions` and the other commands take.
            let adhoc = if r.profile.starts_with("adhoc-") {
                format!(", profile {}", r.profile)
            } else {
                String::new()
            };
            outln!(
                "{verb} in {:.2} s (run {}{adhoc}{})",
                r.elapsed_ms as f64 / 1000.0,
                r.run,
                if plan { ", nothing changed" } else { "" }
            );
        }
    }
}

impl Printer {
    /// `rollback` and `restore`.
    pub fn change_report(&self, r: &ChangeReport) {
        for w in &r.warnings {
            self.warn(w);
        }
        if self.json {
            self.json_out(r);
            return;
        }
        for (path, why) in &r.failed {
            self.error(&format!("{path}: {why}"));
        }
        if !self.quiet {
            for s in &r.done {
                let what = match &s.op {
                    UndoOp::PutBack { version } => format!("put back {version}"),
                    UndoOp::Remove => "removed (kept as a version)".into(),
                    UndoOp::RenameTo { to } => format!("moved back to {to}"),
                    UndoOp::Mkdir { .. } => "directory re-created".into(),
                    UndoOp::SetMode { mode } => format!("mode set back to {mode:o}"),
                    UndoOp::Truncate { len } => {
                        format!("cut back to its {len} bytes before the append (kept as a version)")
                    }
                };
                if self.verbose > 0 || r.done.len() <= 20 {
                    outln!("  {:<8} {}  — {what}", s.replica, s.path);
                }
            }
        }
        if self.quiet {
            return;
        }
        let what = match (&r.target, r.kind.as_str()) {
            (Some(t), _) => format!("rolled back run {t}"),
            (None, k) => format!("{k} done"),
        };
        let mut line = format!("{what}: {} changes", r.done.len());
        if r.already > 0 {
            line.push_str(&format!(", {} already as before", r.already));
        }
        if !r.failed.is_empty() {
            line.push_str(&format!(", {} not undone", r.failed.len()));
        }
        outln!(
            "{line} (run {}, itself undoable with `fedsync rollback`)",
            r.run
        );
        if !r.done.is_empty() {
            outln!(
                "the next sync carries the restored content to the other replicas \
                 (what they hold now is kept as a version)"
            );
        }
    }

    pub fn versions(
        &self,
        profile: &str,
        path: &RelPath,
        list: &[(String, VersionInfo)],
        unavailable: &[String],
    ) {
        for w in unavailable {
            self.warn(w);
        }
        if self.json {
            let rows: Vec<_> = list
                .iter()
                .map(|(r, v)| {
                    serde_json::json!({
                        "replica": r, "version": history::short_id(v), "run": v.run,
                        "path": v.path, "kind": v.kind.as_str(), "size": v.size,
                        "mtime": fmt_time(v.mtime), "location": v.id,
                    })
                })
                .collect();
            self.json_out(&rows);
            return;
        }
        if list.is_empty() {
            outln!("no kept versions of {path}");
            return;
        }
        outln!(
            "{:<26} {:<10} {:>10}  {:<20}",
            "VERSION",
            "REPLICA",
            "SIZE",
            "MODIFIED"
        );
        for (r, v) in list {
            outln!(
                "{:<26} {:<10} {:>10}  {:<20}",
                history::short_id(v),
                r,
                human_bytes(v.size),
                fmt_time(v.mtime)
            );
        }
        outln!("put one back with `fedsync restore {profile} {path} --version VERSION`");
    }

    pub fn verify_report(&self, r: &VerifyReport) {
        for w in &r.warnings {
            self.warn(w);
        }
        if self.json {
            self.json_out(r);
            return;
        }
        for f in &r.findings {
            let what = match f.problem {
                Problem::SilentChange => self.paint("1;31", "SILENT CHANGE"),
                Problem::Unreadable => self.paint("1;31", "unreadable"),
                Problem::Differs => self.paint("1;33", "differs"),
            };
            outln!("  {what}  {}  on {}: {}", f.path, f.replica, f.detail);
        }
        if self.quiet {
            return;
        }
        let silent = r
            .findings
            .iter()
            .filter(|f| f.problem == Problem::SilentChange)
            .count();
        outln!(
            "verified {} files ({}) on {}: {}",
            r.files,
            human_bytes(r.bytes),
            r.replicas.join(", "),
            if r.findings.is_empty() {
                "every replica matches the others and the base".to_string()
            } else {
                format!("{} findings", r.findings.len())
            }
        );
        if silent > 0 {
            outln!(
                "a silent change is not synced by a normal run (size and mtime look unchanged): \
                 check the file, then restore the good copy from the other replica or a version"
            );
        }
    }

    pub fn prune_report(&self, profile: &Profile, r: &PruneReport, dry_run: bool) {
        for w in &r.warnings {
            self.warn(w);
        }
        for e in &r.errors {
            self.error(e);
        }
        if self.json {
            self.json_out(r);
            return;
        }
        let ret = &profile.versions;
        if ret.keep.is_none() && ret.max_age.is_none() {
            outln!(
                "profile {} keeps every version (no `versions = {{ keep, max_age }}`): nothing to prune ({} kept)",
                profile.name,
                r.kept
            );
            return;
        }
        outln!(
            "{} {} versions ({}), {} kept",
            if dry_run { "would remove" } else { "removed" },
            r.removed,
            human_bytes(r.bytes_freed),
            r.kept
        );
    }
}

const PRESET_CODE: &[&str] = &[
    ".git/",
    "node_modules/",
    "target/",
    "__pycache__/",
    "*.pyc",
    ".venv/",
    "dist/",
    "build/",
    ".DS_Store",
];
const PRESET_NOTES: &[&str] = &[
    ".DS_Store",
    "Thumbs.db",
    "*.swp",
    "*~",
    ".~lock.*#",
    ".obsidian/workspace*",
];

pub fn init(
    home: &Home,
    p: &Printer,
    name: &str,
    roots: &[String],
    preset: Option<&str>,
) -> Result<i32, Fail> {
    let bad = |m: String| Fail { code: 2, msg: m };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(bad(format!(
            "profile name {name:?}: use letters, digits, '-' and '_' only"
        )));
    }
    let path = home.profile_path(name);
    if path.exists() {
        return Err(bad(format!(
            "profile {name} already exists at {}; edit it, or pick another name",
            path.display()
        )));
    }
    let ignore: &[&str] = match preset {
        None => &[],
        Some("code") => PRESET_CODE,
        Some("notes") => PRESET_NOTES,
        Some(o) => return Err(bad(format!("unknown preset {o:?}; use `code` or `notes`"))),
    };
    let mut named: Vec<(String, String)> = Vec::new();
    for r in roots {
        let addr = ReplicaAddr::parse(r).map_err(|e| bad(format!("{r}: {e}")))?;
        let base = match &addr {
            ReplicaAddr::Local(pb) => pb
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "root".into()),
            ReplicaAddr::Ssh { host, .. } => host.clone(),
        };
        let mut nm: String = base
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        if nm.is_empty() {
            nm = "replica".into();
        }
        let stem = nm.clone();
        let mut k = 2;
        while named.iter().any(|(n, _)| *n == nm) {
            nm = format!("{stem}-{k}");
            k += 1;
        }
        let root = match &addr {
            ReplicaAddr::Local(pb) => engine::canonical_root(pb).display().to_string(),
            _ => r.clone(),
        };
        named.push((nm, root));
    }
    // Markers: each local root gets its id now (created if missing).
    for (nm, root) in &named {
        if let Ok(ReplicaAddr::Local(pb)) = ReplicaAddr::parse(root) {
            let rep = LocalReplica::new(pb.clone(), root.clone());
            match rep.probe() {
                Ok(Probe::Marked(_)) => {}
                Ok(_) => rep
                    .write_marker(&engine::new_replica_id())
                    .map_err(|e| Fail {
                        code: 3,
                        msg: format!("replica {nm}: cannot write marker in {root}: {e}"),
                    })?,
                Err(e) => {
                    return Err(Fail {
                        code: 3,
                        msg: format!("replica {nm}: {e}"),
                    })
                }
            }
        }
    }
    let mut text = Profile::render_init(&named);
    if !ignore.is_empty() {
        let list = ignore
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        text = text.replacen("\n[", &format!("ignore = [{list}]\n\n["), 1);
        if !text.contains("ignore = [") {
            text = format!("ignore = [{list}]\n{text}");
        }
    }
    Profile::parse(name, &text, "generated profile").map_err(|e| Fail {
        code: 3,
        msg: format!("internal error: generated profile does not parse: {e}"),
    })?;
    std::fs::create_dir_all(home.profiles_dir()).map_err(|e| Fail {
        code: 3,
        msg: format!("cannot create {}: {e}", home.profiles_dir().display()),
    })?;
    std::fs::write(&path, &text).map_err(|e| Fail {
        code: 3,
        msg: format!("cannot write {}: {e}", path.display()),
    })?;
    if p.json {
        p.json_out(&serde_json::json!({"profile": name, "path": path, "replicas": named}));
    } else if !p.quiet {
        outln!("created profile {name}: {}", path.display());
        for (nm, root) in &named {
            outln!("  {nm:<12} {root}");
        }
        outln!(
            "next: `fedsync plan {name}` to see what would happen, `fedsync sync {name}` to do it"
        );
    }
    Ok(0)
}

fn profiles(home: &Home) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(home.profiles_dir())
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.strip_suffix(".toml").map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn status(home: &Home, p: &Printer, name: Option<&str>) -> Result<i32, Fail> {
    let names = match name {
        Some(n) => vec![n.to_string()],
        None => profiles(home),
    };
    if names.is_empty() {
        if p.json {
            p.json_out(&serde_json::json!([]));
        } else {
            outln!(
                "no profiles in {}. Create one with `fedsync init NAME DIR_A DIR_B`.",
                home.profiles_dir().display()
            );
        }
        return Ok(0);
    }
    let mut reports = Vec::new();
    let mut code = 0;
    for n in &names {
        let prof = Profile::load(n, &home.profile_path(n)).map_err(|e| Fail {
            code: 2,
            msg: e.to_string(),
        })?;
        let r = inspect::status(home, &prof)?;
        if r.health == "degraded" || r.health == "failing" {
            code = 3;
        } else if r.health == "conflicts" && code == 0 {
            code = 1;
        }
        // A running `fedsync watch`: its health (failing pairs make status fail too).
        let w = crate::watch::running_health(home, n);
        if w.as_ref()
            .is_some_and(|w| w.pairs.iter().any(|pp| pp.consecutive_failures > 0))
        {
            code = 3;
        }
        reports.push((r, w));
    }
    if p.json {
        let vals: Vec<serde_json::Value> = reports
            .iter()
            .map(|(r, w)| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                if let (Some(obj), Some(w)) = (v.as_object_mut(), w) {
                    obj.insert("watch".into(), serde_json::to_value(w).unwrap_or_default());
                }
                v
            })
            .collect();
        if name.is_some() {
            p.json_out(&vals[0]);
        } else {
            p.json_out(&vals);
        }
        return Ok(code);
    }
    for (r, w) in &reports {
        outln!("profile {}: {}", r.profile, p.paint("1", &r.health));
        for rep in &r.replicas {
            outln!(
                "  {:<12} {:<12} {}{}",
                rep.name,
                rep.state,
                rep.root,
                rep.message
                    .as_ref()
                    .map(|m| format!("\n               {m}"))
                    .unwrap_or_default()
            );
        }
        match r.last_runs.first() {
            Some(run) => outln!(
                "  last run     {} {} ({})",
                run.id,
                run.status,
                run.finished.as_deref().unwrap_or("not finished")
            ),
            None => outln!("  last run     never"),
        }
        for pp in &r.pending {
            let c = &pp.counts;
            if let Some(m) = &pp.message {
                outln!("  {} <-> {}: {}", pp.a, pp.b, m);
            } else if pp.changes == 0 {
                outln!("  {} <-> {}: in sync", pp.a, pp.b);
            } else {
                outln!(
                    "  {} <-> {}: pending {} -> {}, {} -> {}, {} deletions, {} conflicts",
                    pp.a,
                    pp.b,
                    c.to_b,
                    pp.b,
                    c.to_a,
                    pp.a,
                    c.deleted_a + c.deleted_b,
                    c.conflicts
                );
            }
        }
        if !r.conflicts.is_empty() {
            outln!("  open conflicts ({}):", r.conflicts.len());
            for c in &r.conflicts {
                outln!("    {}  — {}", c.path, c.reason);
            }
        }
        if let Some(w) = w {
            outln!(
                "  watch        running (pid {}, {} events, since {}, full rescan every {})",
                w.pid,
                w.watcher,
                w.started,
                humantime::format_duration(Duration::from_secs(w.interval_secs))
            );
            for pp in &w.pairs {
                let last = pp.last_success.as_deref().unwrap_or("never");
                if pp.consecutive_failures > 0 {
                    outln!(
                        "  watch {} <-> {}: {} {} failed runs in a row, last success {last}; next retry {}\n               last error: {}",
                        pp.a,
                        pp.b,
                        p.paint("1;31", "FAILING:"),
                        pp.consecutive_failures,
                        pp.next_retry.as_deref().unwrap_or("at the next rescan"),
                        pp.last_error.as_deref().unwrap_or("-")
                    );
                } else {
                    outln!(
                        "  watch {} <-> {}: {}, last success {last}{}",
                        pp.a,
                        pp.b,
                        pp.state,
                        if pp.pending > 0 {
                            format!(", {} changed paths waiting", pp.pending)
                        } else {
                            String::new()
                        }
                    );
                }
            }
        }
    }
    Ok(code)
}

pub fn why(home: &Home, p: &Printer, profile: &Profile, path: &str) -> Result<i32, Fail> {
    let pairs = inspect::why(home, profile, path)?;
    if p.json {
        p.json_out(&pairs);
        return Ok(0);
    }
    for w in &pairs {
        outln!("{path} in {} <-> {}", w.a, w.b);
        if let Some(m) = &w.unavailable {
            outln!("  unavailable: {m}");
            continue;
        }
        outln!("  base        {}", describe_entry(&w.base));
        outln!(
            "  {:<11} {} ({})",
            w.a,
            describe_entry(&w.side_a),
            w.change_a
                .map(|c| format!("{c:?}").to_lowercase())
                .unwrap_or_default()
        );
        outln!(
            "  {:<11} {} ({})",
            w.b,
            describe_entry(&w.side_b),
            w.change_b
                .map(|c| format!("{c:?}").to_lowercase())
                .unwrap_or_default()
        );
        outln!("  rule        {} (conflict policy {})", w.rule, w.policy);
        if let Some(d) = &w.direction {
            outln!("  direction   {d}");
        }
        if w.excluded {
            outln!("  decision    excluded by the profile's paths/ignore: never synced");
        } else if let Some(d) = &w.decided {
            outln!("  decision    {}: {}", d.action.name(), d.why);
        }
    }
    Ok(0)
}

fn parse_since(s: &str) -> Result<String, Fail> {
    if let Ok(d) = humantime::parse_duration(s) {
        let t = chrono::Utc::now() - chrono::Duration::from_std(d).unwrap_or_default();
        return Ok(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(format!("{d}T00:00:00.000Z"));
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t
            .with_timezone(&chrono::Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    }
    Err(Fail {
        code: 2,
        msg: format!("--since {s:?}: give a duration (2h, 3d) or a date (2026-11-22)"),
    })
}

pub fn log(
    home: &Home,
    p: &Printer,
    name: Option<&str>,
    run: Option<&str>,
    path: Option<&str>,
    since: Option<&str>,
    verify: bool,
) -> Result<i32, Fail> {
    let names = match name {
        Some(n) => vec![n.to_string()],
        None => profiles(home),
    };
    let glob = match path {
        Some(g) => Some(
            globset::Glob::new(g)
                .map_err(|e| Fail {
                    code: 2,
                    msg: format!("--path {g:?}: {e}"),
                })?
                .compile_matcher(),
        ),
        None => None,
    };
    let since = since.map(parse_since).transpose()?;
    let mut all = Vec::new();
    let mut code = 0;
    for n in &names {
        let (recs, breaks) = audit::read(&home.audit_path(n)).map_err(|e| Fail {
            code: 3,
            msg: format!("audit trail of {n}: {e}"),
        })?;
        if verify {
            let head = engine::open_store(home, n)?
                .get_meta("audit_head")
                .map_err(|e| Fail {
                    code: 3,
                    msg: e.to_string(),
                })?;
            let mut problems: Vec<String> = breaks
                .iter()
                .map(|b| format!("line {}: {}", b.line, b.problem))
                .collect();
            if let Some(h) = head {
                let (_, last) = audit::read_head(&home.audit_path(n)).unwrap_or_default();
                if last.as_deref() != Some(h.as_str()) {
                    problems.push(
                        "the trail does not end where the last run left it (lines were removed from the end)"
                            .into(),
                    );
                }
            }
            if problems.is_empty() {
                if !p.json {
                    outln!("{n}: audit trail intact ({} records)", recs.len());
                }
            } else {
                code = 1;
                for pr in &problems {
                    p.error(&format!("{n}: audit trail: {pr}"));
                }
            }
            if p.json {
                all.push(
                    serde_json::json!({"profile": n, "records": recs.len(), "problems": problems}),
                );
            }
            continue;
        }
        for r in recs {
            if run.is_some_and(|x| r.run != x) {
                continue;
            }
            if let Some(g) = &glob {
                if r.path.is_empty() || !g.is_match(&r.path) {
                    continue;
                }
            }
            if since.as_ref().is_some_and(|s| r.time.as_str() < s.as_str()) {
                continue;
            }
            if p.json {
                all.push(serde_json::to_value(&r).unwrap_or_default());
            } else {
                let mut line = format!("{} {} {:<10}", r.time, r.run, r.action);
                if !r.replica.is_empty() {
                    line.push_str(&format!(" {:<8}", r.replica));
                }
                if !r.path.is_empty() {
                    line.push_str(&format!(" {}", r.path));
                }
                if let Some(v) = &r.version {
                    line.push_str(&format!("  [old kept: {v}]"));
                }
                if !r.detail.is_empty() && (r.path.is_empty() || p.verbose > 0) {
                    line.push_str(&format!("  — {}", r.detail));
                }
                outln!("{line}");
            }
        }
    }
    if p.json {
        p.json_out(&all);
    }
    Ok(code)
}
