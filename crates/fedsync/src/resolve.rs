//! `fedsync resolve`: settle the conflicts the `ask` policy queued.
//!
//! No engine code lives here. A resolution is an ordinary sync run restricted to the
//! conflicting paths with a conflict-policy override (`prefer:R`, `newest`, `keep-both`,
//! `merge`), so it is journaled, audited and undoable with `fedsync rollback` like any run.
//! Paths settled the same way share one run.
//!
//! On a terminal (and without `--keep`) each conflict is shown (both replicas' current
//! state, the first differing lines) and the user picks; the choices are collected and
//! applied at the end, one run per way of settling. `merge in $EDITOR` writes the merged
//! text over the hub's file first (as a user edit would) and then settles the path with
//! `prefer:<hub>`, so the run carries the merge to the other side.

use crate::cli::Fail;
use crate::output::{fmt_time, human_bytes, Printer};
use fedsync_core::config::{Policy, Profile, ReplicaAddr};
use fedsync_core::engine::{self, Outcome, RunReport};
use fedsync_core::entry::{Entry, Kind};
use fedsync_core::path::RelPath;
use fedsync_core::replica::Replica;
use fedsync_core::store::ConflictRow;
use fedsync_core::Home;
use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Files larger than this are not read for the preview, the diff or a merge.
const TEXT_LIMIT: u64 = 4 << 20;
/// Lines of the "first differences" preview.
const PREVIEW_LINES: usize = 14;

const NEEDS_TERMINAL: &str = "resolve needs a terminal, or --keep R|newest|both|merge";

fn usage(msg: impl Into<String>) -> Fail {
    Fail {
        code: 2,
        msg: msg.into(),
    }
}

fn failed(msg: impl Into<String>) -> Fail {
    Fail {
        code: 3,
        msg: msg.into(),
    }
}

/// `println!` to stdout that ignores a closed stdout.
macro_rules! outln {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// One open conflict with the pair it belongs to (indexes into `profile.replicas`).
#[derive(Clone, Debug)]
pub(crate) struct Open {
    pub path: RelPath,
    /// Indexes of the pair's replicas in the profile.
    pub pair: (usize, usize),
    pub row: ConflictRow,
}

/// `fedsync resolve NAME [PATH...] [--keep R|newest|both|merge]`.
pub fn resolve(
    home: &Home,
    p: &Printer,
    profile: &Profile,
    paths: &[String],
    keep: Option<&str>,
) -> Result<i32, Fail> {
    let keep_policy = keep.map(|k| parse_keep(profile, k)).transpose()?;
    if keep_policy.is_none() && !std::io::stdin().is_terminal() {
        return Err(usage(NEEDS_TERMINAL));
    }
    let filters = paths
        .iter()
        .map(|s| {
            let t = s.trim_start_matches("./").trim_end_matches('/');
            RelPath::new(t).map_err(|e| usage(format!("{s}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let (all, stale) = open_conflicts(home, profile)?;
    for r in &stale {
        p.warn(&format!(
            "{}: conflict recorded for replicas no longer in profile {} (or whose marker changed); \
             the next `fedsync sync {}` re-checks it",
            r.path, profile.name, profile.name
        ));
    }
    let mut selected: Vec<Open> = Vec::new();
    for f in &filters {
        let hits: Vec<&Open> = all.iter().filter(|c| c.path.starts_with(f)).collect();
        if hits.is_empty() {
            let listed: Vec<&str> = all.iter().take(10).map(|c| c.path.as_str()).collect();
            return Err(usage(if all.is_empty() {
                format!(
                    "{f}: no open conflict at this path; profile {} has no open conflicts",
                    profile.name
                )
            } else {
                format!(
                    "{f}: no open conflict at this path; open conflicts: {}{} (`fedsync status {}` lists them)",
                    listed.join(", "),
                    if all.len() > listed.len() { ", ..." } else { "" },
                    profile.name
                )
            }));
        }
        for h in hits {
            if !selected
                .iter()
                .any(|s| s.path == h.path && s.pair == h.pair)
            {
                selected.push(h.clone());
            }
        }
    }
    if filters.is_empty() {
        selected = all.clone();
    }
    if selected.is_empty() {
        if p.json {
            outln!("[]");
        } else if !p.quiet {
            outln!("no open conflicts");
        }
        return Ok(0);
    }

    match keep_policy {
        Some(policy) => {
            if let Policy::Prefer(r) = &policy {
                let outside: Vec<String> = selected
                    .iter()
                    .filter(|c| {
                        profile.replicas[c.pair.0].name != *r
                            && profile.replicas[c.pair.1].name != *r
                    })
                    .map(|c| {
                        format!(
                            "{} (between {} and {})",
                            c.path,
                            profile.replicas[c.pair.0].name,
                            profile.replicas[c.pair.1].name
                        )
                    })
                    .collect();
                if !outside.is_empty() {
                    return Err(usage(format!(
                        "--keep {r}: {r} is not a side of {}; give the PATHs of {r}'s conflicts, \
                         or keep another replica for these",
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
            apply(home, p, profile, vec![(policy, paths)], 0)
        }
        None => interactive(home, p, profile, &selected),
    }
}

/// `--keep` value -> the policy of the resolution run.
fn parse_keep(profile: &Profile, k: &str) -> Result<Policy, Fail> {
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
    Err(usage(format!(
        "--keep {k}: profile {} has no replica named {name:?}; give one of {}, or newest, both, merge",
        profile.name,
        names.join(", ")
    )))
}

/// The open conflicts of the profile, each with its pair, in store order; and the rows whose
/// pair is not one of the profile's (replica removed or replaced).
pub(crate) fn open_conflicts(
    home: &Home,
    profile: &Profile,
) -> Result<(Vec<Open>, Vec<ConflictRow>), Fail> {
    let store = engine::open_store(home, &profile.name)?;
    let rows = store.conflicts().map_err(|e| failed(e.to_string()))?;
    let mut ids = Vec::new();
    for spec in &profile.replicas {
        ids.push(
            store
                .replica_id(&spec.name)
                .map_err(|e| failed(e.to_string()))?
                .map(|(id, _)| id),
        );
    }
    let mut pairs: HashMap<String, (usize, usize)> = HashMap::new();
    if let Some(Some(hub)) = ids.first() {
        for (k, id) in ids.iter().enumerate().skip(1) {
            if let Some(id) = id {
                pairs.insert(engine::pair_key(hub, id), (0, k));
            }
        }
    }
    let mut open = Vec::new();
    let mut stale = Vec::new();
    for row in rows {
        match (pairs.get(&row.pair), RelPath::new(&row.path)) {
            (Some(&pair), Ok(path)) => open.push(Open { path, pair, row }),
            _ => stale.push(row),
        }
    }
    Ok((open, stale))
}

/// Run one sync per (policy, paths) group, print the reports, return the exit code (the
/// worst of the runs', at least `floor`).
fn apply(
    home: &Home,
    p: &Printer,
    profile: &Profile,
    groups: Vec<(Policy, Vec<RelPath>)>,
    floor: i32,
) -> Result<i32, Fail> {
    let mut reports: Vec<RunReport> = Vec::new();
    let mut code = floor;
    let mut error = None;
    for (policy, paths) in groups {
        let opts = engine::Options {
            conflict: Some(policy.clone()),
            paths: paths.clone(),
            label: Some("resolve".into()),
            ..Default::default()
        };
        let progress = p.progress();
        let report = match engine::sync(home, profile, &opts, &progress) {
            Ok(r) => r,
            Err(e) => {
                error = Some(Fail::from(e));
                break;
            }
        };
        drop(progress);
        code = code.max(report.exit_code());
        if !p.json {
            if !p.quiet {
                for it in report.pairs.iter().flat_map(|pr| pr.items.iter()) {
                    if it.conflict && it.outcome == Outcome::Done {
                        outln!("  resolved   {}  — {}", it.path, it.why);
                    }
                }
            }
            p.run_report(&report, false);
        }
        reports.push(report);
    }
    if p.json {
        for r in &reports {
            for w in &r.warnings {
                p.warn(w);
            }
        }
        outln!(
            "{}",
            serde_json::to_string_pretty(&reports)
                .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        );
    } else if !p.quiet && !reports.is_empty() {
        if let [r] = reports.as_slice() {
            outln!(
                "resolved in run {}; undo it with `fedsync rollback {} {}`",
                r.run,
                profile.name,
                r.run
            );
        } else {
            let runs: Vec<&str> = reports.iter().map(|r| r.run.as_str()).collect();
            outln!(
                "resolved in runs {}; undo each with `fedsync rollback {} RUN`",
                runs.join(", "),
                profile.name
            );
        }
    }
    match error {
        Some(f) => Err(f),
        None => Ok(code),
    }
}

// ---------------------------------------------------------------------------------------
// Interactive

/// Where the interactive dialogue goes: stdout, or stderr when stdout carries `--json`.
struct Ui {
    to_stderr: bool,
}

impl Ui {
    fn say(&self, s: &str) {
        if self.to_stderr {
            let _ = writeln!(std::io::stderr(), "{s}");
        } else {
            outln!("{s}");
        }
    }
    fn prompt(&self, s: &str) {
        if self.to_stderr {
            let mut e = std::io::stderr();
            let _ = write!(e, "{s}");
            let _ = e.flush();
        } else {
            let mut o = std::io::stdout();
            let _ = write!(o, "{s}");
            let _ = o.flush();
        }
    }
}

/// One line from stdin, trimmed; `None` at end of input.
fn read_answer() -> Option<String> {
    let mut line = String::new();
    match std::io::stdin().read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim().to_string()),
    }
}

/// What a side holds now, read through its replica.
enum Content {
    Text(String),
    Binary,
    TooBig,
    NotAFile,
    Absent,
    Unavailable(String),
}

impl Content {
    fn text(&self) -> Option<&str> {
        match self {
            Content::Text(t) => Some(t),
            _ => None,
        }
    }
    fn why_not_text(&self, name: &str) -> String {
        match self {
            Content::Text(_) => String::new(),
            Content::Binary => format!("{name}'s copy is binary"),
            Content::TooBig => format!("{name}'s copy is larger than {} MB", TEXT_LIMIT >> 20),
            Content::NotAFile => format!("{name}'s copy is not a regular file"),
            Content::Absent => format!("{name} has no copy"),
            Content::Unavailable(m) => format!("{name} is unreadable: {m}"),
        }
    }
}

/// Why the two sides cannot be shown as text.
fn no_text(sa: &SideView, sb: &SideView) -> String {
    [sa, sb]
        .iter()
        .filter(|s| s.content.text().is_none())
        .map(|s| s.content.why_not_text(&s.name))
        .collect::<Vec<_>>()
        .join("; ")
}

/// One side of the conflict being shown.
struct SideView {
    name: String,
    entry: Result<Option<Entry>, String>,
    content: Content,
}

fn open_replica(
    cache: &mut HashMap<usize, Result<Arc<dyn Replica>, String>>,
    profile: &Profile,
    i: usize,
) -> Result<Arc<dyn Replica>, String> {
    cache
        .entry(i)
        .or_insert_with(|| engine::open_replica_in(profile, &profile.replicas[i]))
        .clone()
}

fn view_side(rep: Result<Arc<dyn Replica>, String>, name: &str, path: &RelPath) -> SideView {
    let rep = match rep {
        Ok(r) => r,
        Err(m) => {
            return SideView {
                name: name.to_string(),
                entry: Err(m.clone()),
                content: Content::Unavailable(m),
            }
        }
    };
    let entry = rep.entry(path, true).map_err(|e| e.to_string());
    let content = match &entry {
        Err(m) => Content::Unavailable(m.clone()),
        Ok(None) => Content::Absent,
        Ok(Some(e)) if e.kind != Kind::File => Content::NotAFile,
        Ok(Some(e)) if e.size > TEXT_LIMIT => Content::TooBig,
        Ok(Some(_)) => {
            let mut buf = Vec::new();
            match rep
                .open(path)
                .map_err(|e| e.to_string())
                .and_then(|mut r| r.read_to_end(&mut buf).map_err(|e| e.to_string()))
            {
                Err(m) => Content::Unavailable(m),
                Ok(_) if buf.contains(&0) => Content::Binary,
                Ok(_) => match String::from_utf8(buf) {
                    Ok(s) => Content::Text(s),
                    Err(_) => Content::Binary,
                },
            }
        }
    };
    SideView {
        name: name.to_string(),
        entry,
        content,
    }
}

fn describe(e: &Result<Option<Entry>, String>) -> String {
    match e {
        Err(m) => format!("unavailable: {m}"),
        Ok(None) => "absent".into(),
        Ok(Some(e)) => match e.kind {
            Kind::Dir => "directory".into(),
            Kind::Symlink => format!("symlink -> {}", e.link.as_deref().unwrap_or("")),
            Kind::File => format!(
                "{}, modified {}, blake3 {}",
                human_bytes(e.size),
                fmt_time(e.mtime),
                e.hash.map(|h| h.short()).unwrap_or_else(|| "?".into())
            ),
        },
    }
}

fn text_diff<'a>(a: &'a str, b: &'a str) -> similar::TextDiff<'a, 'a, 'a, str> {
    similar::TextDiff::configure()
        .timeout(std::time::Duration::from_secs(2))
        .diff_lines(a, b)
}

/// The first hunk of the diff, at most `PREVIEW_LINES` lines.
fn first_differences(a: &str, b: &str) -> Option<String> {
    let diff = text_diff(a, b);
    let mut ud = diff.unified_diff();
    ud.context_radius(2);
    let hunk = ud.iter_hunks().next()?.to_string();
    let lines: Vec<&str> = hunk.lines().collect();
    let mut out: Vec<String> = lines
        .iter()
        .take(PREVIEW_LINES)
        .map(|l| format!("    {l}"))
        .collect();
    if lines.len() > PREVIEW_LINES || ud.iter_hunks().nth(1).is_some() {
        out.push("    ... ([d] shows the whole diff)".into());
    }
    Some(out.join("\n"))
}

fn full_diff(a: &str, b: &str, la: &str, lb: &str) -> String {
    let diff = text_diff(a, b);
    let mut ud = diff.unified_diff();
    ud.context_radius(3).header(la, lb);
    ud.to_string()
}

/// Both versions in one text, each differing region between `<<<<<<< A`, `=======` and
/// `>>>>>>> B` lines; the lines both share are written once.
fn marker_text(a: &str, b: &str, na: &str, nb: &str) -> String {
    let diff = text_diff(a, b);
    let (old, new) = (diff.old_slices(), diff.new_slices());
    let mut out = String::new();
    let mut block: Option<(String, String)> = None;
    let flush = |out: &mut String, block: &mut Option<(String, String)>| {
        if let Some((x, y)) = block.take() {
            let nl = |s: &mut String| {
                if !s.is_empty() && !s.ends_with('\n') {
                    s.push('\n');
                }
            };
            nl(out);
            out.push_str(&format!("<<<<<<< {na}\n"));
            out.push_str(&x);
            nl(out);
            out.push_str("=======\n");
            out.push_str(&y);
            nl(out);
            out.push_str(&format!(">>>>>>> {nb}\n"));
        }
    };
    for op in diff.ops() {
        let (tag, ro, rn) = op.as_tag_tuple();
        if tag == similar::DiffTag::Equal {
            flush(&mut out, &mut block);
            for l in &old[ro] {
                out.push_str(l);
            }
        } else {
            let blk = block.get_or_insert_with(Default::default);
            for l in &old[ro] {
                blk.0.push_str(l);
            }
            for l in &new[rn] {
                blk.1.push_str(l);
            }
        }
    }
    flush(&mut out, &mut block);
    out
}

/// The first line (1-based) that is a conflict marker of a kind neither original has.
fn marker_line(text: &str, originals: [&str; 2]) -> Option<usize> {
    let kinds: [fn(&str) -> bool; 3] = [
        |l| l.starts_with("<<<<<<< ") || l == "<<<<<<<",
        |l| l == "=======",
        |l| l.starts_with(">>>>>>> ") || l == ">>>>>>>",
    ];
    let strip = |l: &str| l.strip_suffix('\r').unwrap_or(l).to_string();
    let present: Vec<bool> = kinds
        .iter()
        .map(|k| originals.iter().any(|o| o.lines().any(|l| k(&strip(l)))))
        .collect();
    text.lines().enumerate().find_map(|(i, l)| {
        let l = strip(l);
        kinds
            .iter()
            .zip(&present)
            .any(|(k, pre)| !pre && k(&l))
            .then_some(i + 1)
    })
}

/// A private temporary folder for the merge file.
fn merge_dir() -> Result<PathBuf, String> {
    let base = std::env::temp_dir();
    for k in 0..100u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let d = base.join(format!(
            "fedsync-merge-{}-{:x}",
            std::process::id(),
            nanos ^ k
        ));
        match std::fs::create_dir(&d) {
            Ok(()) => return Ok(d),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("cannot create {}: {e}", d.display())),
        }
    }
    Err(format!(
        "cannot create a temporary folder in {}",
        base.display()
    ))
}

fn editor() -> String {
    ["EDITOR", "VISUAL"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "vi".into())
}

/// Run the editor on `file` through the shell (so `EDITOR` may carry arguments).
fn run_editor(file: &Path) -> Result<(), String> {
    let ed = editor();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{ed} \"$@\""))
        .arg(&ed)
        .arg(file)
        .status()
        .map_err(|e| format!("cannot run the editor ({ed}) through sh: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("the editor ({ed}) exited with {status}"))
    }
}

/// Write `data` over `root/path` as a user's save would: a temporary sibling renamed into
/// place, keeping the file's permission bits.
fn write_over(root: &Path, path: &RelPath, data: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let dst = path.to_fs(root);
    let dir = dst
        .parent()
        .ok_or_else(|| format!("{}: no parent folder", dst.display()))?;
    let mode = std::fs::symlink_metadata(&dst)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.permissions().mode() & 0o7777);
    let tmp = dir.join(format!(
        ".{}.fedsync-merge-{}",
        path.file_name(),
        std::process::id()
    ));
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(data)?;
        if let Some(m) = mode {
            f.set_permissions(std::fs::Permissions::from_mode(m))?;
        }
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &dst)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("cannot write {}: {e}", dst.display()));
    }
    Ok(())
}

/// What the user chose for one conflict.
enum Choice {
    Settle(Policy),
    Skip,
    Quit,
}

fn interactive(
    home: &Home,
    p: &Printer,
    profile: &Profile,
    selected: &[Open],
) -> Result<i32, Fail> {
    let ui = Ui { to_stderr: p.json };
    let mut reps: HashMap<usize, Result<Arc<dyn Replica>, String>> = HashMap::new();
    // (path, policy) in the order chosen; a later choice for the same path replaces it.
    let mut chosen: Vec<(RelPath, Policy)> = Vec::new();
    let mut merge_dirs: Vec<PathBuf> = Vec::new();
    let n = selected.len();
    let mut left_open = 0;
    let mut quit = false;
    for (i, c) in selected.iter().enumerate() {
        if quit {
            left_open += 1;
            continue;
        }
        match ask_one(&ui, profile, &mut reps, c, i + 1, n, &mut merge_dirs) {
            Choice::Settle(policy) => {
                chosen.retain(|(path, _)| *path != c.path);
                chosen.push((c.path.clone(), policy));
            }
            Choice::Skip => left_open += 1,
            Choice::Quit => {
                quit = true;
                left_open += 1;
            }
        }
    }
    for d in &merge_dirs {
        let _ = std::fs::remove_dir_all(d);
    }
    drop(reps);

    // One run per way of settling, in the order first chosen.
    let mut groups: Vec<(Policy, Vec<RelPath>)> = Vec::new();
    for (path, policy) in chosen {
        match groups.iter_mut().find(|(p, _)| *p == policy) {
            Some((_, paths)) => paths.push(path),
            None => groups.push((policy, vec![path])),
        }
    }
    if left_open > 0 {
        ui.say(&format!(
            "{left_open} {} left open (`fedsync resolve {}` asks again)",
            if left_open == 1 {
                "conflict"
            } else {
                "conflicts"
            },
            profile.name
        ));
    }
    if groups.is_empty() {
        ui.say("nothing to apply");
        if p.json {
            outln!("[]");
        }
        return Ok(if left_open > 0 { 1 } else { 0 });
    }
    apply(home, p, profile, groups, if left_open > 0 { 1 } else { 0 })
}

/// Show one conflict and ask until the user decides.
fn ask_one(
    ui: &Ui,
    profile: &Profile,
    reps: &mut HashMap<usize, Result<Arc<dyn Replica>, String>>,
    c: &Open,
    k: usize,
    n: usize,
    merge_dirs: &mut Vec<PathBuf>,
) -> Choice {
    let (ia, ib) = c.pair;
    let (na, nb) = (
        profile.replicas[ia].name.clone(),
        profile.replicas[ib].name.clone(),
    );
    // An edited merge file that still has markers: `m` opens it again.
    let mut pending_merge: Option<PathBuf> = None;
    'show: loop {
        let sa = view_side(open_replica(reps, profile, ia), &na, &c.path);
        let sb = view_side(open_replica(reps, profile, ib), &nb, &c.path);
        ui.say("");
        ui.say(&format!("[{k}/{n}] {}   ({na} <-> {nb})", c.path));
        ui.say(&format!("  conflict: {}", c.row.reason));
        let newer = match (&sa.entry, &sb.entry) {
            (Ok(Some(a)), Ok(Some(b))) if a.mtime != b.mtime => Some(a.mtime > b.mtime),
            _ => None,
        };
        let width = na.len().max(nb.len());
        for (s, recorded, is_newer) in [
            (&sa, &c.row.a, newer == Some(true)),
            (&sb, &c.row.b, newer == Some(false)),
        ] {
            let changed = match (&s.entry, recorded) {
                (Ok(now), rec) => {
                    let same = match (now, rec) {
                        (None, None) => true,
                        (Some(x), Some(y)) => {
                            x.kind == y.kind
                                && x.size == y.size
                                && (x.hash.is_none() || y.hash.is_none() || x.hash == y.hash)
                        }
                        _ => false,
                    };
                    !same
                }
                _ => false,
            };
            ui.say(&format!(
                "  {:<width$}  {}{}{}",
                s.name,
                describe(&s.entry),
                if is_newer { "  (newer)" } else { "" },
                if changed {
                    "  (changed since the conflict was recorded)"
                } else {
                    ""
                }
            ));
        }
        match (sa.content.text(), sb.content.text()) {
            (Some(a), Some(b)) if a == b => {
                ui.say("  both copies are identical now: any choice just records that")
            }
            (Some(a), Some(b)) => {
                if let Some(d) = first_differences(a, b) {
                    ui.say(&format!("  first differences (- {na}, + {nb}):"));
                    ui.say(&d);
                }
            }
            _ => {
                ui.say(&format!("  no text diff: {}", no_text(&sa, &sb)));
            }
        }
        loop {
            ui.prompt(&format!(
                "[a] keep {na} / [b] keep {nb} / [2] keep both / [d] show diff / \
                 [m] merge in $EDITOR / [s] skip / [q] quit? "
            ));
            let Some(ans) = read_answer() else {
                ui.say("");
                ui.say("end of input: stopping here");
                return Choice::Quit;
            };
            match ans.to_lowercase().as_str() {
                "a" => return Choice::Settle(Policy::Prefer(na)),
                "b" => return Choice::Settle(Policy::Prefer(nb)),
                "2" => return Choice::Settle(Policy::KeepBoth),
                "s" => return Choice::Skip,
                "q" => return Choice::Quit,
                "d" => match (sa.content.text(), sb.content.text()) {
                    (Some(a), Some(b)) => {
                        if a == b {
                            ui.say("(no differences)");
                        } else {
                            ui.say(
                                full_diff(
                                    a,
                                    b,
                                    &format!("{na}/{}", c.path),
                                    &format!("{nb}/{}", c.path),
                                )
                                .trim_end(),
                            );
                        }
                    }
                    _ => ui.say(&format!("no text diff: {}", no_text(&sa, &sb))),
                },
                "m" => match merge(ui, profile, c, &sa, &sb, &mut pending_merge, merge_dirs) {
                    MergeResult::Written => {
                        return Choice::Settle(Policy::Prefer(na));
                    }
                    MergeResult::Again => {}
                    MergeResult::Reshow => continue 'show,
                },
                "" => {}
                other => ui.say(&format!(
                    "unknown choice {other:?}: type a, b, 2, d, m, s or q"
                )),
            }
        }
    }
}

enum MergeResult {
    /// The merge is on the hub: settle with prefer:<hub>.
    Written,
    /// Not merged: ask again.
    Again,
    /// The hub changed meanwhile: show the conflict again.
    Reshow,
}

fn merge(
    ui: &Ui,
    profile: &Profile,
    c: &Open,
    sa: &SideView,
    sb: &SideView,
    pending: &mut Option<PathBuf>,
    merge_dirs: &mut Vec<PathBuf>,
) -> MergeResult {
    let hub = &profile.replicas[c.pair.0];
    let ReplicaAddr::Local(root) = &hub.addr else {
        ui.say(&format!(
            "merge in $EDITOR writes the result into the hub replica {} ({}), and works only when \
             the hub is a local folder; run `fedsync resolve` on the machine that holds it, or pick \
             another choice",
            hub.name, hub.raw
        ));
        return MergeResult::Again;
    };
    let (Some(ta), Some(tb)) = (sa.content.text(), sb.content.text()) else {
        ui.say(&format!("merge needs two text files: {}", no_text(sa, sb)));
        return MergeResult::Again;
    };
    let file = match pending.clone() {
        Some(f) => f,
        None => {
            let dir = match merge_dir() {
                Ok(d) => d,
                Err(m) => {
                    ui.say(&m);
                    return MergeResult::Again;
                }
            };
            merge_dirs.push(dir.clone());
            let f = dir.join(c.path.file_name());
            if let Err(e) = std::fs::write(&f, marker_text(ta, tb, &sa.name, &sb.name)) {
                ui.say(&format!("cannot write {}: {e}", f.display()));
                return MergeResult::Again;
            }
            f
        }
    };
    if let Err(m) = run_editor(&file) {
        ui.say(&format!(
            "{m}: nothing merged ({} is kept; [m] opens it again)",
            file.display()
        ));
        *pending = Some(file);
        return MergeResult::Again;
    }
    let merged = match std::fs::read(&file) {
        Ok(d) => d,
        Err(e) => {
            ui.say(&format!("cannot read {}: {e}", file.display()));
            *pending = None;
            return MergeResult::Again;
        }
    };
    if let Some(line) = marker_line(&String::from_utf8_lossy(&merged), [ta, tb]) {
        ui.say(&format!(
            "{} still has conflict markers (line {line}): nothing merged; [m] edits it again",
            file.display()
        ));
        *pending = Some(file);
        return MergeResult::Again;
    }
    // The hub's copy must still be the one shown.
    let shown = sa
        .entry
        .as_ref()
        .ok()
        .and_then(|e| e.as_ref())
        .and_then(|e| e.hash);
    let now = fedsync_core::replica::local::LocalReplica::new(root.clone(), hub.raw.clone())
        .entry(&c.path, true)
        .ok()
        .flatten()
        .and_then(|e| e.hash);
    if shown.is_none() || shown != now {
        ui.say(&format!(
            "{} changed on {} while you were merging: nothing written; here it is again",
            c.path, hub.name
        ));
        *pending = None;
        return MergeResult::Reshow;
    }
    if let Err(m) = write_over(root, &c.path, &merged) {
        ui.say(&format!("{m}: nothing merged"));
        return MergeResult::Again;
    }
    ui.say(&format!(
        "merged into {}'s copy of {}; it will be carried to {} (its current copy is kept as a version)",
        hub.name, c.path, profile.replicas[c.pair.1].name
    ));
    MergeResult::Written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_text_keeps_shared_lines_once() {
        let t = marker_text("one\ntwo\nthree\n", "one\nTWO\nthree\n", "a", "b");
        assert_eq!(t, "one\n<<<<<<< a\ntwo\n=======\nTWO\n>>>>>>> b\nthree\n");
        assert_eq!(marker_line(&t, ["one\n", "two\n"]), Some(2));
        assert_eq!(marker_line("one\nTwo\nthree\n", ["x", "y"]), None);
        // A marker kind the originals already contain is content, not a marker.
        assert_eq!(marker_line("a\n=======\nb\n", ["a\n=======\n", "b"]), None);
    }

    #[test]
    fn marker_text_without_trailing_newline() {
        let t = marker_text("x\na", "x\nb", "l", "r");
        assert_eq!(t, "x\n<<<<<<< l\na\n=======\nb\n>>>>>>> r\n");
    }
}
