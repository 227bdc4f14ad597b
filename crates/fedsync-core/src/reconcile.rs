//! Three-way reconciliation: (base, side A, side B, rules) -> a decision per path.
//!
//! PURE: no I/O, no clock. Every rule of SPEC section 4 is a row in the table tests
//! (`tests/reconcile_table.rs`). The apply stage executes exactly what is decided here.

use crate::config::{Direction, MergeKind, Policy};
use crate::entry::{Entry, Hash, Kind};
use crate::path::RelPath;
use crate::rules::PathRules;
use crate::scanlist::{EntryRef, ScanList};
use serde::Serialize;
use std::borrow::Cow;
use std::collections::HashMap;

/// One of the two replicas of a pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
    pub fn idx(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }
}

/// What to do for one path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Both sides already agree with the base.
    None,
    /// Both sides agree (changed identically, or first sync of equal content): store as base.
    Record,
    /// Gone on both sides: drop the base.
    Forget,
    /// Make the other side equal to `from` (file, symlink or directory; replaces another kind
    /// on the target after keeping it as a version).
    Copy { from: Side },
    /// Content equal; copy the permission bits of `from` to the other side.
    SetMode { from: Side },
    /// Remove on `on` (kept as a version first).
    Delete { on: Side },
    /// Rename `from` to this path on `on` (a move made on the other side; no transfer).
    Move { on: Side, from: RelPath },
    /// The source half of a move; carried out by the item at `to`.
    MovedAway { on: Side, to: RelPath },
    /// Conflict settled by keeping both: the winner's content stays under this name on both
    /// sides, the loser's is renamed to `aside` on its side and copied to the winner's side.
    KeepBoth { winner: Side, aside: RelPath },
    /// Conflict of two files under a merge rule: the engine merges the contents (it reads
    /// them); when it cannot, it keeps both as `KeepBoth { winner, aside }` would.
    Merge {
        kind: MergeKind,
        winner: Side,
        aside: RelPath,
    },
    /// Set by the engine for a merge it computed: the merged content is written to both
    /// sides; `conflicted` = it holds conflict markers and is flagged for review.
    Merged { conflicted: bool },
    /// Conflict left for `fedsync resolve`: nothing touched.
    Conflict { reason: String },
    /// Not handled this run (unreadable, changed during the scan, ...): nothing touched.
    Skip { reason: String },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::None => "none",
            Action::Record => "record",
            Action::Forget => "forget",
            Action::Copy { .. } => "copy",
            Action::SetMode { .. } => "set-mode",
            Action::Delete { .. } => "delete",
            Action::Move { .. } => "move",
            Action::MovedAway { .. } => "moved-away",
            Action::KeepBoth { .. } => "keep-both",
            Action::Merge { .. } | Action::Merged { .. } => "merge",
            Action::Conflict { .. } => "conflict",
            Action::Skip { .. } => "skip",
        }
    }

    /// Whether the action changes a replica.
    pub fn changes_something(&self) -> bool {
        matches!(
            self,
            Action::Copy { .. }
                | Action::SetMode { .. }
                | Action::Delete { .. }
                | Action::Move { .. }
                | Action::KeepBoth { .. }
                | Action::Merge { .. }
                | Action::Merged { .. }
        )
    }
}

/// How a side changed relative to the base.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Unchanged,
    Created,
    Modified,
    Deleted,
    Absent,
}

pub fn change(base: Option<&Entry>, cur: Option<&Entry>) -> Change {
    match (base, cur) {
        (None, None) => Change::Absent,
        (None, Some(_)) => Change::Created,
        (Some(_), None) => Change::Deleted,
        (Some(b), Some(c)) => {
            if b.same_state(c) {
                Change::Unchanged
            } else {
                Change::Modified
            }
        }
    }
}

/// Pair-wide facts the decision needs besides the three entries.
#[derive(Clone, Debug)]
pub struct PairCtx {
    /// Replica names of side A and side B.
    pub names: [String; 2],
    /// `YYYYMMDD-HHMMSS` of the run, for conflict copy names.
    pub stamp: String,
}

impl PairCtx {
    pub fn side_of(&self, name: &str) -> Option<Side> {
        if self.names[0] == name {
            Some(Side::A)
        } else if self.names[1] == name {
            Some(Side::B)
        } else {
            None
        }
    }
    pub fn name(&self, s: Side) -> &str {
        &self.names[s.idx()]
    }
}

/// The decision for one path, with the human explanation `plan` and `why` print.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    #[serde(flatten)]
    pub action: Action,
    pub why: Cow<'static, str>,
    /// Set when both sides changed differently (whatever settled it).
    pub conflict: bool,
}

fn d(action: Action, why: impl Into<Cow<'static, str>>) -> Decision {
    Decision {
        action,
        why: why.into(),
        conflict: false,
    }
}

fn c(action: Action, why: impl Into<Cow<'static, str>>) -> Decision {
    Decision {
        action,
        why: why.into(),
        conflict: true,
    }
}

/// The one-way flow a direction rule imposes on this pair, if any: (source side).
pub fn one_way_source(dir: &Direction, ctx: &PairCtx) -> Option<Side> {
    match (ctx.side_of(&dir.from), ctx.side_of(&dir.to)) {
        (Some(f), Some(_)) => Some(f),
        // The pair holds only the receiving replica: it passes the source's content on.
        (None, Some(t)) => Some(t),
        // The pair holds only the source: it stays authoritative.
        (Some(f), None) => Some(f),
        (None, None) => None,
    }
}

/// `NAME.conflict-<replica>-<stamp>.EXT`
pub fn conflict_name(path: &RelPath, replica: &str, stamp: &str) -> RelPath {
    let (stem, ext) = path.stem_ext();
    let name = match ext {
        Some(e) => format!("{stem}.conflict-{replica}-{stamp}.{e}"),
        None => format!("{stem}.conflict-{replica}-{stamp}"),
    };
    path.with_file_name(&name)
        .expect("conflict name built from a valid name is valid")
}

fn describe(e: Option<&Entry>) -> &'static str {
    match e.map(|e| e.kind) {
        None => "absent",
        Some(Kind::File) => "file",
        Some(Kind::Dir) => "directory",
        Some(Kind::Symlink) => "symlink",
    }
}

/// Decide one path. `a`/`b` are the current states, `base` the last agreed state.
pub fn decide(
    path: &RelPath,
    base: Option<&Entry>,
    a: Option<&Entry>,
    b: Option<&Entry>,
    rules: &PathRules,
    ctx: &PairCtx,
) -> Decision {
    let (na, nb) = (ctx.name(Side::A), ctx.name(Side::B));
    let ca = change(base, a);
    let cb = change(base, b);

    // One-way paths: the target mirrors the source, its own changes are reverted (and kept
    // as versions by apply).
    if let Some(dir) = &rules.direction {
        if let Some(src) = one_way_source(dir, ctx) {
            return one_way(src, base, a, b, ctx);
        }
    }

    match (ca, cb) {
        (Change::Absent, Change::Absent) => d(Action::Forget, "absent on both sides"),
        (Change::Unchanged, Change::Unchanged) => d(Action::None, "unchanged on both sides"),
        (Change::Unchanged, _) => propagate(Side::B, cb, a, b, ctx),
        (_, Change::Unchanged) => propagate(Side::A, ca, a, b, ctx),
        (Change::Created, Change::Absent) => propagate(Side::A, ca, a, b, ctx),
        (Change::Absent, Change::Created) => propagate(Side::B, cb, a, b, ctx),
        (Change::Deleted, Change::Deleted) => d(Action::Forget, "deleted on both sides"),
        (Change::Deleted, _) => {
            // b is Some (modified): the modification wins.
            d(
                Action::Copy { from: Side::B },
                format!("deleted on {na} but modified on {nb}: the modification wins"),
            )
        }
        (_, Change::Deleted) => d(
            Action::Copy { from: Side::A },
            format!("modified on {na} but deleted on {nb}: the modification wins"),
        ),
        _ => {
            // Both sides present and both changed (or both created).
            let (ea, eb) = (a.expect("present"), b.expect("present"));
            both_changed(path, base, ea, eb, rules, ctx)
        }
    }
}

fn propagate(
    from: Side,
    ch: Change,
    a: Option<&Entry>,
    b: Option<&Entry>,
    ctx: &PairCtx,
) -> Decision {
    let src = ctx.name(from);
    let to = ctx.name(from.other());
    let (e, other) = match from {
        Side::A => (a, b),
        Side::B => (b, a),
    };
    match ch {
        Change::Deleted => d(
            Action::Delete { on: from.other() },
            format!("deleted on {src}, unchanged on {to}"),
        ),
        Change::Created => d(
            Action::Copy { from },
            format!("new {} on {src}", describe(e)),
        ),
        Change::Modified => {
            let (e, o) = (e.expect("modified"), other.expect("unchanged side present"));
            if e.same_content(o) && e.mode_differs(o) {
                d(
                    Action::SetMode { from },
                    format!("mode changed on {src} ({:o} -> {:o})", o.mode, e.mode),
                )
            } else if e.kind != o.kind {
                d(
                    Action::Copy { from },
                    format!(
                        "{} replaced by a {} on {src}",
                        describe(Some(o)),
                        describe(Some(e))
                    ),
                )
            } else {
                d(
                    Action::Copy { from },
                    format!("modified on {src}, unchanged on {to}"),
                )
            }
        }
        Change::Unchanged | Change::Absent => d(Action::None, "unchanged"),
    }
}

fn one_way(
    src: Side,
    base: Option<&Entry>,
    a: Option<&Entry>,
    b: Option<&Entry>,
    ctx: &PairCtx,
) -> Decision {
    let (s, t) = match src {
        Side::A => (a, b),
        Side::B => (b, a),
    };
    let sn = ctx.name(src);
    let tn = ctx.name(src.other());
    let tgt_changed = !matches!(change(base, t), Change::Unchanged | Change::Absent);
    let note = if tgt_changed {
        format!(" ({tn}'s own change is not sent; it is kept as a version)")
    } else {
        String::new()
    };
    match (s, t) {
        (None, None) => d(
            Action::Forget,
            format!("one-way {sn} -> {tn}: absent on both"),
        ),
        (None, Some(_)) => d(
            Action::Delete { on: src.other() },
            format!("one-way {sn} -> {tn}: absent on {sn}{note}"),
        ),
        (Some(se), Some(te)) if se.same_state(te) => {
            if base.is_some_and(|b| b.same_state(se)) {
                d(Action::None, format!("one-way {sn} -> {tn}: unchanged"))
            } else {
                d(
                    Action::Record,
                    format!("one-way {sn} -> {tn}: already equal"),
                )
            }
        }
        (Some(se), Some(te)) if se.same_content(te) => d(
            Action::SetMode { from: src },
            format!("one-way {sn} -> {tn}: mode differs{note}"),
        ),
        (Some(_), _) => d(
            Action::Copy { from: src },
            format!("one-way {sn} -> {tn}{note}"),
        ),
    }
}

fn newer(a: &Entry, b: &Entry) -> Side {
    // Ties go to A (the hub), so the outcome is deterministic.
    if b.mtime > a.mtime {
        Side::B
    } else {
        Side::A
    }
}

fn both_changed(
    path: &RelPath,
    base: Option<&Entry>,
    a: &Entry,
    b: &Entry,
    rules: &PathRules,
    ctx: &PairCtx,
) -> Decision {
    let (na, nb) = (ctx.name(Side::A), ctx.name(Side::B));
    let verb = if base.is_none() { "created" } else { "changed" };
    if a.same_state(b) {
        return d(
            Action::Record,
            format!("{verb} identically on {na} and {nb}"),
        );
    }
    if a.same_content(b) {
        // Only the permission bits disagree: the side that changed them wins, else the newer.
        let from = match base {
            Some(base) if base.mode == a.mode => Side::B,
            Some(base) if base.mode == b.mode => Side::A,
            _ => newer(a, b),
        };
        return d(
            Action::SetMode { from },
            format!(
                "same content on both; mode {:o} from {} wins",
                if from == Side::A { a.mode } else { b.mode },
                ctx.name(from)
            ),
        );
    }
    if a.kind != b.kind && (a.is_dir() || b.is_dir()) {
        return c(
            Action::Conflict {
                reason: format!(
                    "{} on {na} but {} on {nb}",
                    describe(Some(a)),
                    describe(Some(b))
                ),
            },
            format!(
                "conflict: {} on {na}, {} on {nb}; nothing is deleted, resolve it by hand",
                describe(Some(a)),
                describe(Some(b))
            ),
        );
    }
    let both = format!("{verb} differently on {na} and {nb}");
    let policy = &rules.conflict;
    match policy {
        Policy::Newest => {
            let w = newer(a, b);
            c(
                Action::Copy { from: w },
                format!(
                    "conflict: {both}; policy newest ({}): {}'s newer copy wins, {}'s is kept as a version",
                    rules.source,
                    ctx.name(w),
                    ctx.name(w.other())
                ),
            )
        }
        Policy::Prefer(r) => match ctx.side_of(r) {
            Some(w) => c(
                Action::Copy { from: w },
                format!(
                    "conflict: {both}; policy prefer:{r} ({}): {}'s copy is kept as a version",
                    rules.source,
                    ctx.name(w.other())
                ),
            ),
            // The preferred replica is not in this pair: fall back to keeping both.
            None => keep_both(
                path,
                a,
                b,
                ctx,
                &format!("{both}; prefer:{r} is not in this pair, so"),
            ),
        },
        Policy::Ask => c(
            Action::Conflict {
                reason: both.clone(),
            },
            format!(
                "conflict: {both}; policy ask ({}): queued for `fedsync resolve`",
                rules.source
            ),
        ),
        // Two files under a merge rule: the engine reads and merges them.
        Policy::Merge if a.is_file() && b.is_file() && rules.merge.is_some() => {
            let kind = rules.merge.expect("checked");
            let w = newer(a, b);
            c(
                Action::Merge {
                    kind,
                    winner: w,
                    aside: conflict_name(path, ctx.name(w.other()), &ctx.stamp),
                },
                format!(
                    "{both}; merge = \"{}\" ({})",
                    match kind {
                        MergeKind::Append => "append",
                        MergeKind::Union => "union",
                        MergeKind::Text => "text",
                    },
                    rules.source
                ),
            )
        }
        Policy::Merge | Policy::KeepBoth => keep_both(path, a, b, ctx, &both),
    }
}

fn keep_both(path: &RelPath, a: &Entry, b: &Entry, ctx: &PairCtx, both: &str) -> Decision {
    let w = newer(a, b);
    let loser = ctx.name(w.other());
    let aside = conflict_name(path, loser, &ctx.stamp);
    c(
        Action::KeepBoth {
            winner: w,
            aside: aside.clone(),
        },
        format!(
            "conflict: {both}; keep-both: {}'s newer copy stays as {}, {loser}'s is kept as {}",
            ctx.name(w),
            path.file_name(),
            aside.file_name()
        ),
    )
}

/// One path's inputs and decision, as the plan carries it.
#[derive(Clone, Debug, Serialize)]
pub struct Item {
    pub path: RelPath,
    pub base: Option<Entry>,
    pub a: Option<Entry>,
    pub b: Option<Entry>,
    #[serde(flatten)]
    pub decision: Decision,
    /// What decided the policy: "profile default" or "rule N (pattern)".
    pub rule: String,
}

impl Item {
    pub fn side(&self, s: Side) -> Option<&Entry> {
        match s {
            Side::A => self.a.as_ref(),
            Side::B => self.b.as_ref(),
        }
    }
}

/// Everything known about one path before deciding.
pub struct Input {
    pub base: Option<Entry>,
    pub a: Option<Entry>,
    pub b: Option<Entry>,
    /// Set when either side could not be read at or above this path.
    pub unreadable: Option<String>,
}

/// One path's inputs: the sides borrowed from the scans, the base as streamed from the
/// state database (what the engine passes, so a path unchanged everywhere costs no copy).
pub struct InputRef<'s> {
    pub base: Option<Entry>,
    pub a: Option<EntryRef<'s>>,
    pub b: Option<EntryRef<'s>>,
    /// Set when either side could not be read at or above this path.
    pub unreadable: Option<String>,
}

/// The per-path inputs of a pair in path order. The path is lent until the next call (a
/// stream over compact scans spells each path into one buffer).
pub trait Inputs<'s> {
    fn next_input(&mut self) -> Option<(&str, InputRef<'s>)>;
}

/// A path unchanged everywhere (the base equals both sides): each side's entry, borrowed
/// from the scans (the engine still needs them for the scan caches), without an [`Item`].
#[derive(Clone, Copy, Debug)]
pub struct Unchanged<'s> {
    pub a: EntryRef<'s>,
    pub b: EntryRef<'s>,
}

impl<'s> Unchanged<'s> {
    pub fn side(&self, s: Side) -> EntryRef<'s> {
        match s {
            Side::A => self.a,
            Side::B => self.b,
        }
    }

    pub fn path(&self) -> RelPath {
        self.a.path()
    }

    fn to_item(self) -> Item {
        Item {
            path: self.path(),
            base: None,
            a: Some(self.a.to_entry()),
            b: Some(self.b.to_entry()),
            decision: d(Action::None, "unchanged on both sides"),
            rule: String::new(),
        }
    }
}

/// The paths unchanged everywhere, in path order, as runs of consecutive rows of both
/// scans: a tree where nothing changed is a handful of runs, not one record per path.
#[derive(Clone, Debug, Default)]
pub struct UnchangedSet<'s> {
    runs: Vec<Run<'s>>,
    len: usize,
}

#[derive(Clone, Copy, Debug)]
struct Run<'s> {
    a: EntryRef<'s>,
    b: EntryRef<'s>,
    len: u32,
}

impl<'s> UnchangedSet<'s> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append one (after every path already here).
    pub fn push(&mut self, u: Unchanged<'s>) {
        self.len += 1;
        if let Some(r) = self.runs.last_mut() {
            let k = r.len - 1;
            if u.a.follows(&r.a.offset(k)) && u.b.follows(&r.b.offset(k)) {
                r.len += 1;
                return;
            }
        }
        self.runs.push(Run {
            a: u.a,
            b: u.b,
            len: 1,
        });
    }

    pub fn iter(&self) -> impl Iterator<Item = Unchanged<'s>> + '_ {
        self.runs.iter().flat_map(|r| {
            (0..r.len).map(move |k| Unchanged {
                a: r.a.offset(k),
                b: r.b.offset(k),
            })
        })
    }

    /// The unchanged row of `path`, if it is one.
    pub fn find(&self, path: &RelPath) -> Option<Unchanged<'s>> {
        let p = path.as_str();
        // The last run starting at or before `path`, then a search inside it.
        let i = self
            .runs
            .partition_point(|r| r.a.cmp_path(p) != std::cmp::Ordering::Greater);
        let r = self.runs.get(i.checked_sub(1)?)?;
        let k = crate::scanlist::search(r.len as usize, |k| r.a.offset(k as u32).cmp_path(p))?;
        Some(Unchanged {
            a: r.a.offset(k as u32),
            b: r.b.offset(k as u32),
        })
    }

    /// Keep the ones `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&Unchanged<'s>) -> bool) {
        let mut out = UnchangedSet::default();
        for u in self.iter() {
            if keep(&u) {
                out.push(u);
            }
        }
        *self = out;
    }
}

/// A pair decided: the items that need a decision, and the (usually far more numerous)
/// paths unchanged everywhere, both sorted by path.
#[derive(Default)]
pub struct Reconciled<'s> {
    pub items: Vec<Item>,
    pub unchanged: UnchangedSet<'s>,
}

/// Owned inputs (sorted) as an [`Inputs`] stream over scan lists built from them.
struct OwnedInputs<'s> {
    inputs: &'s [(RelPath, Input)],
    lists: [&'s ScanList; 2],
    next: [usize; 3],
}

impl<'s> Inputs<'s> for OwnedInputs<'s> {
    fn next_input(&mut self) -> Option<(&str, InputRef<'s>)> {
        let (p, inp) = self.inputs.get(self.next[2])?;
        self.next[2] += 1;
        let mut side = |k: usize, e: &Option<Entry>| {
            e.as_ref().map(|_| {
                let r = self.lists[k].get(self.next[k]);
                self.next[k] += 1;
                r
            })
        };
        let (a, b) = (side(0, &inp.a), side(1, &inp.b));
        Some((
            p.as_str(),
            InputRef {
                base: inp.base.clone(),
                a,
                b,
                unreadable: inp.unreadable.clone(),
            },
        ))
    }
}

/// Decide a whole pair: per-path decisions, then the cross-path passes (renames, directory
/// consistency). `rules_for` gives the rules of a path; it is not consulted for paths that
/// are unchanged everywhere. The result is sorted by path and holds every path (unchanged
/// ones as [`Action::None`] items); the engine uses [`reconcile_split`].
pub fn reconcile(
    inputs: impl IntoIterator<Item = (RelPath, Input)>,
    rules_for: &dyn Fn(&RelPath, bool) -> PathRules,
    ctx: &PairCtx,
) -> Vec<Item> {
    let mut owned: Vec<(RelPath, Input)> = inputs.into_iter().collect();
    owned.sort_by(|x, y| x.0.cmp(&y.0));
    let list = |f: fn(&Input) -> &Option<Entry>| -> ScanList {
        owned
            .iter()
            .filter_map(|(p, i)| f(i).clone().map(|e| (p.clone(), e)))
            .collect()
    };
    let (la, lb) = (list(|i| &i.a), list(|i| &i.b));
    let mut refs = OwnedInputs {
        inputs: &owned,
        lists: [&la, &lb],
        next: [0; 3],
    };
    let Reconciled {
        mut items,
        unchanged,
    } = reconcile_split(&mut refs, rules_for, ctx);
    if !unchanged.is_empty() {
        items.extend(unchanged.iter().map(Unchanged::to_item));
        items.sort_by(|x, y| x.path.cmp(&y.path));
    }
    items
}

/// [`reconcile`] on borrowed inputs (in path order), with the paths unchanged everywhere
/// kept apart as [`Unchanged`] references.
pub fn reconcile_split<'s>(
    inputs: &mut dyn Inputs<'s>,
    rules_for: &dyn Fn(&RelPath, bool) -> PathRules,
    ctx: &PairCtx,
) -> Reconciled<'s> {
    let mut items: Vec<Item> = Vec::new();
    let mut unchanged = UnchangedSet::default();
    while let Some((path, inp)) = inputs.next_input() {
        // The common case of a large tree: nothing changed anywhere.
        if inp.unreadable.is_none() {
            if let (Some(base), Some(a), Some(b)) = (&inp.base, inp.a, inp.b) {
                if a.same_state(base) && b.same_state(base) {
                    unchanged.push(Unchanged { a, b });
                    continue;
                }
            }
        }
        let path = RelPath::trusted(path.to_string());
        let (a, b) = (inp.a.map(|e| e.to_entry()), inp.b.map(|e| e.to_entry()));
        let is_dir = [a.as_ref(), b.as_ref(), inp.base.as_ref()]
            .iter()
            .any(|e| e.is_some_and(|e| e.is_dir()));
        let rules = rules_for(&path, is_dir);
        let decision = match &inp.unreadable {
            Some(why) => d(
                Action::Skip {
                    reason: why.clone(),
                },
                why.clone(),
            ),
            None => decide(
                &path,
                inp.base.as_ref(),
                a.as_ref(),
                b.as_ref(),
                &rules,
                ctx,
            ),
        };
        items.push(Item {
            path,
            base: inp.base,
            a,
            b,
            decision,
            rule: rules.source,
        });
    }
    debug_assert!(items.windows(2).all(|w| w[0].path < w[1].path));
    debug_assert!({
        let v: Vec<RelPath> = unchanged.iter().map(|u| u.path()).collect();
        v.windows(2).all(|w| w[0] < w[1])
    });
    free_aside_names(&mut items, &unchanged);
    detect_moves(&mut items, ctx);
    fix_directories(&mut items, ctx);
    detect_name_collisions(&mut items, &mut unchanged, ctx);
    Reconciled { items, unchanged }
}

/// The name a case-insensitive, normalizing filesystem (macOS, Windows) sees: Unicode NFC,
/// lower case.
pub fn folded_name(path: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    if path.is_ascii() {
        path.to_ascii_lowercase()
    } else {
        path.nfc().collect::<String>().to_lowercase()
    }
}

/// What an action would create on each side (a path that is absent there now).
fn creates(it: &Item) -> [bool; 2] {
    let mut out = [false; 2];
    match &it.decision.action {
        Action::Copy { from } => out[from.other().idx()] = it.side(from.other()).is_none(),
        Action::Move { on, .. } => out[on.idx()] = true,
        _ => {}
    }
    out
}

/// Names that differ only by case or Unicode normalization (`README.md` / `Readme.md`,
/// `café` in NFC / NFD) must not land on a side that holds the other one: on a
/// case-insensitive or normalizing filesystem one would silently overwrite the other. Both
/// become conflicts (nothing is touched) for the user to rename one; what is inside a
/// colliding directory waits with them.
fn detect_name_collisions(items: &mut Vec<Item>, unchanged: &mut UnchangedSet<'_>, ctx: &PairCtx) {
    if !items.iter().any(|it| creates(it).iter().any(|c| *c)) {
        return;
    }
    // An unchanged path whose folded name is also a created name takes part: it becomes an
    // item (a conflict) like any other member of a colliding group.
    let created: std::collections::HashSet<String> = items
        .iter()
        .filter(|it| creates(it).iter().any(|c| *c))
        .map(|it| folded_name(it.path.as_str()))
        .collect();
    let mut promote = Vec::new();
    unchanged.retain(|u| {
        let hit = created.contains(&folded_name(u.path().as_str()));
        if hit {
            promote.push(*u);
        }
        !hit
    });
    if !promote.is_empty() {
        items.extend(promote.into_iter().map(Unchanged::to_item));
        items.sort_by(|x, y| x.path.cmp(&y.path));
    }
    // Folded name -> indexes of the items with that name.
    let mut groups: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, it) in items.iter().enumerate() {
        groups
            .entry(folded_name(it.path.as_str()))
            .or_default()
            .push(i);
    }
    let mut flagged: Vec<(usize, String)> = Vec::new();
    for idx in groups.values().filter(|g| g.len() > 1) {
        for &i in idx {
            let made = creates(&items[i]);
            for side in [Side::A, Side::B] {
                if !made[side.idx()] {
                    continue;
                }
                // Another name of the group already on this side?
                let other = idx.iter().copied().find(|&j| {
                    j != i && items[j].side(side).is_some() && !creates(&items[j])[side.idx()]
                });
                if let Some(j) = other {
                    let reason = format!(
                        "names differ only by case or Unicode normalization: {} (from {}) and {} (on {}); \
                         a case-insensitive or normalizing filesystem cannot hold both, so nothing is \
                         copied. Rename one of them",
                        items[i].path,
                        ctx.name(side.other()),
                        items[j].path,
                        ctx.name(side)
                    );
                    flagged.push((i, reason.clone()));
                    flagged.push((j, reason));
                }
            }
        }
    }
    if flagged.is_empty() {
        return;
    }
    let mut dirs: Vec<RelPath> = Vec::new();
    for (i, reason) in flagged {
        let it = &mut items[i];
        if matches!(it.decision.action, Action::Conflict { .. }) {
            continue;
        }
        if it.a.as_ref().is_some_and(|e| e.is_dir()) || it.b.as_ref().is_some_and(|e| e.is_dir()) {
            dirs.push(it.path.clone());
        }
        it.decision = Decision {
            action: Action::Conflict {
                reason: reason.clone(),
            },
            why: reason.into(),
            conflict: true,
        };
    }
    if dirs.is_empty() {
        return;
    }
    for it in items.iter_mut() {
        if it.decision.action.changes_something()
            && dirs.iter().any(|d| it.path.starts_with(d) && it.path != *d)
        {
            let reason = "inside a directory whose name collides with another (case or Unicode \
                          normalization); waits until it is renamed"
                .to_string();
            it.decision = d(
                Action::Skip {
                    reason: reason.clone(),
                },
                reason,
            );
        }
    }
}

/// A keep-both copy must not land on a name that is already used on either side (a user's
/// file, or an earlier conflict copy in the same second): pick `...-2`, `...-3`.
fn free_aside_names(items: &mut [Item], unchanged: &UnchangedSet<'_>) {
    if !items.iter().any(|it| {
        matches!(
            it.decision.action,
            Action::KeepBoth { .. } | Action::Merge { .. }
        )
    }) {
        return;
    }
    // Every path of the tree is taken: the items' and the unchanged ones (looked up).
    let mut taken: std::collections::HashSet<RelPath> =
        items.iter().map(|it| it.path.clone()).collect();
    let taken_at = |taken: &std::collections::HashSet<RelPath>, p: &RelPath| {
        taken.contains(p) || unchanged.find(p).is_some()
    };
    for it in items.iter_mut() {
        let (Action::KeepBoth { aside, .. } | Action::Merge { aside, .. }) =
            &mut it.decision.action
        else {
            continue;
        };
        if taken_at(&taken, aside) {
            let (stem, ext) = aside.stem_ext();
            let (stem, ext) = (stem.to_string(), ext.map(str::to_string));
            let mut n = 2;
            let fresh = loop {
                let name = match &ext {
                    Some(e) => format!("{stem}-{n}.{e}"),
                    None => format!("{stem}-{n}"),
                };
                let cand = aside.with_file_name(&name).expect("valid name");
                if !taken_at(&taken, &cand) {
                    break cand;
                }
                n += 1;
            };
            it.decision.why = it
                .decision
                .why
                .replace(aside.file_name(), fresh.file_name())
                .into();
            *aside = fresh;
        }
        taken.insert(aside.clone());
    }
}

/// A deletion and a creation of the same content, propagating the same way, become a rename.
fn detect_moves(items: &mut [Item], ctx: &PairCtx) {
    // (target side, hash) -> indices of deletions on that side of a file with that hash.
    let mut deletions: HashMap<(Side, Hash), Vec<usize>> = HashMap::new();
    for (i, it) in items.iter().enumerate() {
        if let Action::Delete { on } = it.decision.action {
            if let Some(e) = it.side(on) {
                if e.is_file() && e.size > 0 {
                    if let Some(h) = e.hash {
                        deletions.entry((on, h)).or_default().push(i);
                    }
                }
            }
        }
    }
    if deletions.is_empty() {
        return;
    }
    let mut moves = Vec::new();
    for (i, it) in items.iter().enumerate() {
        if let Action::Copy { from } = it.decision.action {
            let to = from.other();
            if it.side(to).is_some() {
                continue; // an overwrite, not a creation
            }
            let Some(src) = it.side(from) else { continue };
            if !src.is_file() {
                continue;
            }
            let Some(h) = src.hash else { continue };
            if let Some(cands) = deletions.get_mut(&(to, h)) {
                // Prefer a candidate with the same file name (a move between directories).
                let pos = cands
                    .iter()
                    .position(|&j| items[j].path.file_name() == it.path.file_name())
                    .unwrap_or(0);
                if let Some(j) = (!cands.is_empty()).then(|| cands.remove(pos)) {
                    let old = items[j].side(to).expect("deleted side had the file");
                    // A rename keeps the old mode and mtime; only a pure content move qualifies.
                    if old.mode == src.mode {
                        moves.push((i, j, to, from));
                    } else {
                        cands.push(j);
                    }
                }
            }
        }
    }
    for (i, j, on, from) in moves {
        let from_path = items[j].path.clone();
        let to_path = items[i].path.clone();
        items[i].decision = d(
            Action::Move {
                on,
                from: from_path.clone(),
            },
            format!(
                "moved on {} from {from_path}: renamed on {} (no transfer)",
                ctx.name(from),
                ctx.name(on)
            ),
        );
        items[j].decision = d(
            Action::MovedAway {
                on,
                to: to_path.clone(),
            },
            format!("moved on {} to {to_path}", ctx.name(from)),
        );
    }
}

/// Directory consistency. A directory cannot be deleted, nor replaced by a file or link, on
/// a side that keeps something inside it; nothing can be written below a path that stays in
/// conflict as a non-directory.
fn fix_directories(items: &mut [Item], ctx: &PairCtx) {
    // Directories that some side loses: deleted, or replaced by another kind.
    let mut doomed: HashMap<String, usize> = HashMap::new();
    for (i, it) in items.iter().enumerate() {
        let loses = match it.decision.action {
            Action::Delete { on } => it.side(on).is_some_and(|e| e.is_dir()),
            Action::Copy { from } => {
                it.side(from.other()).is_some_and(|e| e.is_dir())
                    && it.side(from).is_some_and(|e| !e.is_dir())
            }
            Action::Conflict { .. } => {
                it.a.as_ref().is_some_and(|e| e.is_dir())
                    != it.b.as_ref().is_some_and(|e| e.is_dir())
            }
            _ => false,
        };
        if loses {
            doomed.insert(it.path.as_str().to_string(), i);
        }
    }
    if doomed.is_empty() {
        return;
    }
    for i in 0..items.len() {
        if !items[i].path.ancestors().any(|a| doomed.contains_key(a)) {
            continue;
        }
        let keeps: [bool; 2] = [Side::A, Side::B].map(|s| survives(&items[i], s));
        let ancestors: Vec<String> = items[i].path.ancestors().map(str::to_string).collect();
        for anc in ancestors {
            let Some(&j) = doomed.get(&anc) else { continue };
            let (pj, dj) = (items[j].path.clone(), items[j].decision.action.clone());
            match dj {
                Action::Delete { on } if keeps[on.idx()] => {
                    // Deleted on the other side, but something inside is kept here:
                    // re-create the directory there instead.
                    let why = format!(
                        "directory deleted on {} but {} still has content inside it: re-created",
                        ctx.name(on.other()),
                        ctx.name(on)
                    );
                    items[j].decision = d(Action::Copy { from: on }, why);
                }
                Action::Copy { from }
                    if items[j].side(from).is_some_and(|e| !e.is_dir())
                        && keeps[from.other().idx()]
                        && items[i].decision.action.changes_something() =>
                {
                    let to = from.other();
                    let reason = format!(
                        "replaced by a {} on {} while {} changed content inside it",
                        describe(items[j].side(from)),
                        ctx.name(from),
                        ctx.name(to)
                    );
                    items[j].decision = c(
                        Action::Conflict {
                            reason: reason.clone(),
                        },
                        format!("conflict: {reason}; nothing is deleted, resolve it by hand"),
                    );
                }
                _ => {}
            }
            if matches!(items[j].decision.action, Action::Conflict { .. })
                && items[i].decision.action.changes_something()
            {
                items[i].decision = d(
                    Action::Skip {
                        reason: format!("inside {pj}, which is in conflict"),
                    },
                    format!("held: {pj} is in conflict (file vs directory)"),
                );
            }
        }
    }
}

/// Whether an item leaves something at its path on `side` after it is applied.
fn survives(it: &Item, side: Side) -> bool {
    match &it.decision.action {
        Action::Delete { on } if *on == side => false,
        Action::MovedAway { on, .. } if *on == side => false,
        Action::Copy { from } => it.side(*from).is_some() || it.side(side).is_some(),
        Action::Move { .. } => true,
        Action::Forget => false,
        _ => it.side(side).is_some(),
    }
}
