//! Table tests for three-way reconciliation (SPEC section 4), in the style of Mutagen's
//! reconcile tests: every row names a situation (base, side A, side B, rules) and the
//! decision SPEC section 4 requires for it.
//!
//! * `decide_table`: one path at a time through `reconcile::decide` (and, for every row, the
//!   same input through `reconcile::reconcile`, which must agree for a lone path).
//! * `reconcile_scenarios`: several paths at once through `reconcile::reconcile`, for what only
//!   the cross-path passes decide (renames, directory consistency, unreadable inputs).
//! * `spec_bug_*` (ignored): behaviour SPEC section 4 requires that the code does not have yet.
//!
//! Side A is the replica `laptop`, side B the replica `server`.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use fedsync_core::config::{Direction, MergeKind, Policy};
use fedsync_core::entry::{Entry, Hash, Kind};
use fedsync_core::path::RelPath;
use fedsync_core::reconcile::{decide, reconcile, Action, Decision, Input, Item, PairCtx, Side};
use fedsync_core::rules::PathRules;

// ---------------------------------------------------------------------------------------
// Compact constructors

const A: Side = Side::A;
const B: Side = Side::B;
const NAME_A: &str = "laptop";
const NAME_B: &str = "server";
const STAMP: &str = "20261122-103000";

/// Nanoseconds since the epoch: the base's mtime, then one and two seconds later.
const T0: i64 = 1_763_800_000_000_000_000;
const T1: i64 = T0 + 1_000_000_000;
const T2: i64 = T0 + 2_000_000_000;

const RW: u32 = 0o644;
const RWX: u32 = 0o755;
const RX: u32 = 0o700;

const CONFLICT: bool = true;
const CLEAN: bool = false;

/// One side's (or the base's) state at a path.
type St = Option<Entry>;

/// Nothing at this path.
const NONE: St = None;

fn file(content: &str, mode: u32) -> St {
    Some(Entry {
        kind: Kind::File,
        size: content.len() as u64,
        mtime: T0,
        mode,
        hash: Some(Hash::of(content.as_bytes())),
        link: None,
        stat: None,
    })
}

fn dir() -> St {
    Some(Entry {
        kind: Kind::Dir,
        size: 0,
        mtime: T0,
        mode: RWX,
        hash: None,
        link: None,
        stat: None,
    })
}

fn link(target: &str) -> St {
    Some(Entry {
        kind: Kind::Symlink,
        size: target.len() as u64,
        mtime: T0,
        mode: 0o777,
        hash: Some(Hash::of(target.as_bytes())),
        link: Some(target.to_string()),
        stat: None,
    })
}

trait With {
    /// The same state with another mtime.
    fn at(self, mtime: i64) -> Self;
    /// The same state with other permission bits.
    fn mode(self, mode: u32) -> Self;
}

impl With for St {
    fn at(mut self, mtime: i64) -> St {
        if let Some(e) = &mut self {
            e.mtime = mtime;
        }
        self
    }
    fn mode(mut self, mode: u32) -> St {
        if let Some(e) = &mut self {
            e.mode = mode;
        }
        self
    }
}

fn p(s: &str) -> RelPath {
    RelPath::new(s).unwrap_or_else(|e| panic!("bad test path {s:?}: {e}"))
}

fn ctx() -> PairCtx {
    PairCtx {
        names: [NAME_A.to_string(), NAME_B.to_string()],
        stamp: STAMP.to_string(),
    }
}

/// `"POLICY"` or `"POLICY; FROM -> TO"`; POLICY is a profile policy (`keep-both`, `newest`,
/// `ask`, `prefer:R`) or `merge=KIND`.
fn rules(spec: &str) -> PathRules {
    let (policy, direction) = match spec.split_once(';') {
        Some((pol, dir)) => (
            pol.trim(),
            Some(Direction::from_str(dir.trim()).expect("test direction")),
        ),
        None => (spec.trim(), None),
    };
    let (conflict, merge) = match policy.strip_prefix("merge=") {
        Some(kind) => (
            Policy::Merge,
            Some(MergeKind::from_str(kind).expect("test merge kind")),
        ),
        None => (Policy::from_str(policy).expect("test policy"), None),
    };
    PathRules {
        direction,
        conflict,
        merge,
        validate: None,
        rule: Some(1),
        source: format!("rule 1 ({spec})"),
    }
}

// Expected actions.

fn none() -> Action {
    Action::None
}
fn record() -> Action {
    Action::Record
}
fn forget() -> Action {
    Action::Forget
}
fn copy(from: Side) -> Action {
    Action::Copy { from }
}
fn set_mode(from: Side) -> Action {
    Action::SetMode { from }
}
fn delete(on: Side) -> Action {
    Action::Delete { on }
}
fn keep_both(winner: Side, aside: &str) -> Action {
    Action::KeepBoth {
        winner,
        aside: p(aside),
    }
}
/// A conflict under a merge rule: the engine merges (keep-both is its fallback).
fn merge_then(kind: MergeKind, winner: Side, aside: &str) -> Action {
    Action::Merge {
        kind,
        winner,
        aside: p(aside),
    }
}
fn moved(on: Side, from: &str) -> Action {
    Action::Move { on, from: p(from) }
}
fn moved_away(on: Side, to: &str) -> Action {
    Action::MovedAway { on, to: p(to) }
}
/// A conflict queued for `resolve` (any reason).
fn queued() -> Action {
    Action::Conflict {
        reason: String::new(),
    }
}
/// Skipped this run (any reason).
fn skipped() -> Action {
    Action::Skip {
        reason: String::new(),
    }
}

/// `want` with an empty reason matches any reason.
fn action_matches(got: &Action, want: &Action) -> bool {
    match (got, want) {
        (Action::Conflict { .. }, Action::Conflict { reason }) if reason.is_empty() => true,
        (Action::Skip { .. }, Action::Skip { reason }) if reason.is_empty() => true,
        _ => got == want,
    }
}

/// Checks one decision; returns a message naming the case when it is wrong.
fn check(case: &str, path: &str, got: &Decision, want: &Action, conflict: bool) -> Option<String> {
    if action_matches(&got.action, want) && got.conflict == conflict && !got.why.is_empty() {
        return None;
    }
    Some(format!(
        "case `{case}`, path {path:?}:\n    expected {want:?} (conflict: {conflict})\n    got      {:?} (conflict: {}), why: {:?}",
        got.action, got.conflict, got.why
    ))
}

// ---------------------------------------------------------------------------------------
// One path at a time

struct Row {
    name: &'static str,
    path: &'static str,
    base: St,
    a: St,
    b: St,
    rules: &'static str,
    want: Action,
    conflict: bool,
}

fn r(
    name: &'static str,
    base: St,
    a: St,
    b: St,
    rules: &'static str,
    want: Action,
    conflict: bool,
) -> Row {
    Row {
        name,
        path: "docs/report.txt",
        base,
        a,
        b,
        rules,
        want,
        conflict,
    }
}

impl Row {
    fn path(mut self, path: &'static str) -> Row {
        self.path = path;
        self
    }
}

/// Where the loser of a keep-both on `docs/report.txt` goes.
const ASIDE_A: &str = "docs/report.conflict-laptop-20261122-103000.txt";
const ASIDE_B: &str = "docs/report.conflict-server-20261122-103000.txt";

const KB: &str = "keep-both";
const AB: &str = "keep-both; laptop -> server";
const BA: &str = "keep-both; server -> laptop";

/// The table itself; kept one row per line.
#[rustfmt::skip]
fn table() -> Vec<Row> {
    vec![
        // --- First sync: no base -------------------------------------------------------
        r("first_sync_file_only_on_a", NONE, file("x", RW), NONE, KB, copy(A), CLEAN),
        r("first_sync_file_only_on_b", NONE, NONE, file("x", RW), KB, copy(B), CLEAN),
        r("first_sync_both_same_file", NONE, file("x", RW), file("x", RW), KB, record(), CLEAN),
        r("first_sync_both_same_content_different_mtimes", NONE, file("x", RW).at(T1), file("x", RW).at(T2), KB, record(), CLEAN),
        r("first_sync_both_different_newer_b_keep_both", NONE, file("ours", RW).at(T1), file("theirs", RW).at(T2), KB, keep_both(B, ASIDE_A), CONFLICT),
        r("first_sync_both_different_newer_a_keep_both", NONE, file("ours", RW).at(T2), file("theirs", RW).at(T1), KB, keep_both(A, ASIDE_B), CONFLICT),
        r("first_sync_same_content_different_modes_newer_mode_wins", NONE, file("x", RW).at(T1), file("x", RWX).at(T2), KB, set_mode(B), CLEAN),
        r("first_sync_dir_only_on_a", NONE, dir(), NONE, KB, copy(A), CLEAN).path("docs"),
        r("first_sync_dir_only_on_b", NONE, NONE, dir(), KB, copy(B), CLEAN).path("docs"),
        r("first_sync_both_dirs", NONE, dir(), dir(), KB, record(), CLEAN).path("docs"),
        r("first_sync_file_on_a_dir_on_b", NONE, file("x", RW), dir(), KB, queued(), CONFLICT),
        r("first_sync_dir_on_a_file_on_b", NONE, dir(), file("x", RW), KB, queued(), CONFLICT),
        r("first_sync_file_vs_dir_newest_still_conflict", NONE, file("x", RW).at(T2), dir(), "newest", queued(), CONFLICT),
        r("first_sync_link_only_on_a", NONE, link("../t"), NONE, KB, copy(A), CLEAN).path("bin/tool"),
        r("first_sync_both_same_link", NONE, link("../t"), link("../t"), KB, record(), CLEAN).path("bin/tool"),
        r("first_sync_link_on_a_dir_on_b", NONE, link("../t"), dir(), KB, queued(), CONFLICT).path("bin/tool"),
        r("absent_everywhere_is_forgotten", NONE, NONE, NONE, KB, forget(), CLEAN),
        // --- Nothing changed -------------------------------------------------------------
        r("unchanged_file", file("x", RW), file("x", RW), file("x", RW), KB, none(), CLEAN),
        r("unchanged_dir", dir(), dir(), dir(), KB, none(), CLEAN).path("docs"),
        r("unchanged_link", link("t"), link("t"), link("t"), KB, none(), CLEAN).path("bin/tool"),
        r("unchanged_content_touched_mtime_on_a", file("x", RW), file("x", RW).at(T2), file("x", RW), KB, none(), CLEAN),
        // --- One side changed ------------------------------------------------------------
        r("modified_on_a", file("v0", RW), file("v1", RW).at(T1), file("v0", RW), KB, copy(A), CLEAN),
        r("modified_on_b", file("v0", RW), file("v0", RW), file("v1", RW).at(T1), KB, copy(B), CLEAN),
        r("modified_on_a_same_size", file("abc", RW), file("abd", RW), file("abc", RW), KB, copy(A), CLEAN),
        r("modified_on_a_older_mtime_still_propagates", file("v0", RW).at(T2), file("v1", RW).at(T0), file("v0", RW).at(T2), KB, copy(A), CLEAN),
        r("modified_content_and_mode_on_b", file("v0", RW), file("v0", RW), file("v1", RWX), KB, copy(B), CLEAN),
        r("created_on_a_after_base", NONE, file("new", RW), NONE, KB, copy(A), CLEAN),
        r("deleted_on_a", file("v0", RW), NONE, file("v0", RW), KB, delete(B), CLEAN),
        r("deleted_on_b", file("v0", RW), file("v0", RW), NONE, KB, delete(A), CLEAN),
        r("deleted_on_a_mtime_touched_on_b", file("v0", RW), NONE, file("v0", RW).at(T2), KB, delete(B), CLEAN),
        r("link_deleted_on_a", link("t"), NONE, link("t"), KB, delete(B), CLEAN).path("bin/tool"),
        r("link_deleted_on_b", link("t"), link("t"), NONE, KB, delete(A), CLEAN).path("bin/tool"),
        // --- Empty directories -----------------------------------------------------------
        r("empty_dir_created_on_a", NONE, dir(), NONE, KB, copy(A), CLEAN).path("empty"),
        r("empty_dir_created_on_both", NONE, dir(), dir(), KB, record(), CLEAN).path("empty"),
        r("empty_dir_deleted_on_a", dir(), NONE, dir(), KB, delete(B), CLEAN).path("empty"),
        r("empty_dir_deleted_on_b", dir(), dir(), NONE, KB, delete(A), CLEAN).path("empty"),
        r("empty_dir_deleted_on_both", dir(), NONE, NONE, KB, forget(), CLEAN).path("empty"),
        // --- Identical changes on both sides ---------------------------------------------
        r("both_modified_identically", file("v0", RW), file("v1", RW), file("v1", RW), KB, record(), CLEAN),
        r("both_modified_identically_different_mtimes", file("v0", RW), file("v1", RW).at(T1), file("v1", RW).at(T2), KB, record(), CLEAN),
        r("both_deleted", file("v0", RW), NONE, NONE, KB, forget(), CLEAN),
        r("both_replaced_file_by_dir", file("v0", RW), dir(), dir(), KB, record(), CLEAN),
        r("both_replaced_dir_by_same_link", dir(), link("t"), link("t"), KB, record(), CLEAN).path("docs"),
        r("both_changed_mode_identically", file("v0", RW), file("v0", RWX), file("v0", RWX), KB, record(), CLEAN),
        r("both_modified_identically_ask_policy", file("v0", RW), file("v1", RW), file("v1", RW), "ask", record(), CLEAN),
        // --- Modify vs delete: the modification wins -------------------------------------
        r("modified_on_a_deleted_on_b", file("v0", RW), file("v1", RW), NONE, KB, copy(A), CLEAN),
        r("deleted_on_a_modified_on_b", file("v0", RW), NONE, file("v1", RW), KB, copy(B), CLEAN),
        r("mode_changed_on_a_deleted_on_b", file("v0", RW), file("v0", RWX), NONE, KB, copy(A), CLEAN),
        r("deleted_on_a_mode_changed_on_b", file("v0", RW), NONE, file("v0", RWX), KB, copy(B), CLEAN),
        r("file_replaced_by_dir_on_a_deleted_on_b", file("v0", RW), dir(), NONE, KB, copy(A), CLEAN),
        r("deleted_on_a_file_replaced_by_link_on_b", file("v0", RW), NONE, link("t"), KB, copy(B), CLEAN),
        r("link_retargeted_on_a_deleted_on_b", link("t1"), link("t2"), NONE, KB, copy(A), CLEAN).path("bin/tool"),
        r("modified_on_a_deleted_on_b_prefer_b", file("v0", RW), file("v1", RW), NONE, "prefer:server", copy(A), CLEAN),
        r("deleted_on_a_modified_on_b_ask", file("v0", RW), NONE, file("v1", RW), "ask", copy(B), CLEAN),
        // --- File vs directory: conflict, nothing deleted --------------------------------
        r("file_to_dir_on_a_modified_on_b", file("v0", RW), dir(), file("v1", RW), KB, queued(), CONFLICT),
        r("modified_on_a_file_to_dir_on_b", file("v0", RW), file("v1", RW), dir(), KB, queued(), CONFLICT),
        r("dir_to_file_on_a_dir_to_link_on_b", dir(), file("x", RW), link("t"), KB, keep_both(A, "docs/report.conflict-server-20261122-103000.txt"), CONFLICT),
        r("link_to_dir_on_a_link_to_file_on_b", link("t"), dir(), file("x", RW), KB, queued(), CONFLICT).path("bin/tool"),
        r("file_to_link_on_a_file_to_dir_on_b", file("v0", RW), link("t"), dir(), KB, queued(), CONFLICT),
        r("file_vs_dir_newest_does_not_pick", file("v0", RW), file("v1", RW).at(T2), dir().at(T1), "newest", queued(), CONFLICT),
        r("file_vs_dir_prefer_a_does_not_pick", file("v0", RW), file("v1", RW), dir(), "prefer:laptop", queued(), CONFLICT),
        r("dir_vs_file_prefer_b_does_not_pick", file("v0", RW), dir(), file("v1", RW), "prefer:server", queued(), CONFLICT),
        r("file_vs_dir_merge_does_not_merge", file("v0", RW), file("v1", RW), dir(), "merge=append", queued(), CONFLICT),
        // --- Kind changed on one side ----------------------------------------------------
        r("file_to_dir_on_a", file("v0", RW), dir(), file("v0", RW), KB, copy(A), CLEAN),
        r("file_to_dir_on_b", file("v0", RW), file("v0", RW), dir(), KB, copy(B), CLEAN),
        r("dir_to_file_on_a", dir(), file("x", RW), dir(), KB, copy(A), CLEAN).path("docs"),
        r("dir_to_file_on_b", dir(), dir(), file("x", RW), KB, copy(B), CLEAN).path("docs"),
        r("dir_to_symlink_on_a", dir(), link("elsewhere"), dir(), KB, copy(A), CLEAN).path("docs"),
        r("dir_to_symlink_on_b", dir(), dir(), link("elsewhere"), KB, copy(B), CLEAN).path("docs"),
        r("file_to_symlink_on_a", file("v0", RW), link("t"), file("v0", RW), KB, copy(A), CLEAN),
        r("symlink_to_file_on_b", link("t"), link("t"), file("x", RW), KB, copy(B), CLEAN).path("bin/tool"),
        r("symlink_to_dir_on_a", link("t"), dir(), link("t"), KB, copy(A), CLEAN).path("bin/tool"),
        r("file_to_symlink_with_same_bytes_as_target_on_b", file("t", RW), file("t", RW), link("t"), KB, copy(B), CLEAN),
        // --- Symlinks --------------------------------------------------------------------
        r("link_retargeted_on_a", link("t1"), link("t2"), link("t1"), KB, copy(A), CLEAN).path("bin/tool"),
        r("link_retargeted_on_b", link("t1"), link("t1"), link("t2"), KB, copy(B), CLEAN).path("bin/tool"),
        r("link_retargeted_same_on_both", link("t1"), link("t2").at(T1), link("t2").at(T2), KB, record(), CLEAN).path("bin/tool"),
        r("link_retargeted_differently_keep_both", link("t1"), link("ta").at(T2), link("tb").at(T1), KB, keep_both(A, "bin/tool.conflict-server-20261122-103000"), CONFLICT).path("bin/tool"),
        r("link_retargeted_differently_prefer_b", link("t1"), link("ta").at(T2), link("tb").at(T1), "prefer:server", copy(B), CONFLICT).path("bin/tool"),
        r("link_retargeted_differently_ask", link("t1"), link("ta"), link("tb"), "ask", queued(), CONFLICT).path("bin/tool"),
        r("link_retargeted_differently_newest_b", link("t1"), link("ta").at(T1), link("tb").at(T2), "newest", copy(B), CONFLICT).path("bin/tool"),
        r("link_mode_bits_are_not_a_change", link("t"), link("t").mode(0o755), link("t"), KB, none(), CLEAN).path("bin/tool"),
        // --- Mode-only changes -----------------------------------------------------------
        r("mode_change_on_a", file("v0", RW), file("v0", RWX), file("v0", RW), KB, set_mode(A), CLEAN),
        r("mode_change_on_b", file("v0", RW), file("v0", RW), file("v0", RWX), KB, set_mode(B), CLEAN),
        r("mode_removed_on_a", file("v0", RWX), file("v0", RW), file("v0", RWX), KB, set_mode(A), CLEAN),
        r("mode_change_on_b_ask_policy", file("v0", RW), file("v0", RW), file("v0", RWX), "ask", set_mode(B), CLEAN),
        r("both_changed_content_identically_b_also_mode", file("v0", RW), file("v1", RW), file("v1", RWX), KB, set_mode(B), CLEAN),
        r("both_changed_content_identically_a_also_mode", file("v0", RW), file("v1", RWX), file("v1", RW), KB, set_mode(A), CLEAN),
        r("both_changed_mode_differently_newer_b", file("v0", RW), file("v0", RWX).at(T1), file("v0", RX).at(T2), KB, set_mode(B), CLEAN),
        r("both_changed_mode_differently_newer_a", file("v0", RW), file("v0", RWX).at(T2), file("v0", RX).at(T1), KB, set_mode(A), CLEAN),
        // --- keep-both (the default) and the conflict copy's name ------------------------
        r("keep_both_newer_a", file("v0", RW), file("ours", RW).at(T2), file("theirs", RW).at(T1), KB, keep_both(A, ASIDE_B), CONFLICT),
        r("keep_both_newer_b", file("v0", RW), file("ours", RW).at(T1), file("theirs", RW).at(T2), KB, keep_both(B, ASIDE_A), CONFLICT),
        r("keep_both_tie_goes_to_a", file("v0", RW), file("ours", RW).at(T1), file("theirs", RW).at(T1), KB, keep_both(A, ASIDE_B), CONFLICT),
        r("keep_both_no_extension", file("v0", RW), file("ours", RW).at(T2), file("theirs", RW).at(T1), KB, keep_both(A, "Makefile.conflict-server-20261122-103000"), CONFLICT).path("Makefile"),
        r("keep_both_dotfile", file("v0", RW), file("ours", RW).at(T1), file("theirs", RW).at(T2), KB, keep_both(B, ".bashrc.conflict-laptop-20261122-103000"), CONFLICT).path(".bashrc"),
        r("keep_both_dotfile_in_subdir", file("v0", RW), file("ours", RW).at(T2), file("theirs", RW).at(T1), KB, keep_both(A, "home/.profile.conflict-server-20261122-103000"), CONFLICT).path("home/.profile"),
        r("keep_both_dotfile_with_extension", file("v0", RW), file("ours", RW).at(T2), file("theirs", RW).at(T1), KB, keep_both(A, ".config.conflict-server-20261122-103000.toml"), CONFLICT).path(".config.toml"),
        r("keep_both_double_extension", file("v0", RW), file("ours", RW).at(T1), file("theirs", RW).at(T2), KB, keep_both(B, "backup/db.tar.conflict-laptop-20261122-103000.gz"), CONFLICT).path("backup/db.tar.gz"),
        r("keep_both_deep_path", file("v0", RW), file("ours", RW).at(T2), file("theirs", RW).at(T1), KB, keep_both(A, "a/b/c/notes.conflict-server-20261122-103000.md"), CONFLICT).path("a/b/c/notes.md"),
        r("keep_both_content_and_mode_differ", file("v0", RW), file("ours", RWX).at(T1), file("theirs", RW).at(T2), KB, keep_both(B, ASIDE_A), CONFLICT),
        r("keep_both_file_vs_link", file("v0", RW), file("ours", RW).at(T1), link("t").at(T2), KB, keep_both(B, ASIDE_A), CONFLICT),
        // --- newest ----------------------------------------------------------------------
        r("newest_a_newer", file("v0", RW), file("ours", RW).at(T2), file("theirs", RW).at(T1), "newest", copy(A), CONFLICT),
        r("newest_b_newer", file("v0", RW), file("ours", RW).at(T1), file("theirs", RW).at(T2), "newest", copy(B), CONFLICT),
        r("newest_tie_goes_to_a", file("v0", RW), file("ours", RW).at(T1), file("theirs", RW).at(T1), "newest", copy(A), CONFLICT),
        r("newest_first_sync_b_newer", NONE, file("ours", RW).at(T1), file("theirs", RW).at(T2), "newest", copy(B), CONFLICT),
        r("newest_both_identical_is_not_a_conflict", file("v0", RW), file("v1", RW).at(T1), file("v1", RW).at(T2), "newest", record(), CLEAN),
        // --- prefer:<replica> ------------------------------------------------------------
        r("prefer_a_even_when_b_newer", file("v0", RW), file("ours", RW).at(T1), file("theirs", RW).at(T2), "prefer:laptop", copy(A), CONFLICT),
        r("prefer_b_even_when_a_newer", file("v0", RW), file("ours", RW).at(T2), file("theirs", RW).at(T1), "prefer:server", copy(B), CONFLICT),
        r("prefer_a_first_sync", NONE, file("ours", RW), file("theirs", RW).at(T2), "prefer:laptop", copy(A), CONFLICT),
        r("prefer_other_replica_falls_back_to_keep_both_newer_a", file("v0", RW), file("ours", RW).at(T2), file("theirs", RW).at(T1), "prefer:usb", keep_both(A, ASIDE_B), CONFLICT),
        r("prefer_other_replica_falls_back_to_keep_both_newer_b", file("v0", RW), file("ours", RW).at(T1), file("theirs", RW).at(T2), "prefer:usb", keep_both(B, ASIDE_A), CONFLICT),
        r("prefer_b_one_sided_change_on_a_still_propagates", file("v0", RW), file("v1", RW), file("v0", RW), "prefer:server", copy(A), CLEAN),
        r("prefer_a_both_deleted", file("v0", RW), NONE, NONE, "prefer:laptop", forget(), CLEAN),
        // --- ask -------------------------------------------------------------------------
        r("ask_both_modified_queued", file("v0", RW), file("ours", RW).at(T2), file("theirs", RW).at(T1), "ask", queued(), CONFLICT),
        r("ask_first_sync_both_created_queued", NONE, file("ours", RW), file("theirs", RW), "ask", queued(), CONFLICT),
        r("ask_file_vs_link_queued", file("v0", RW), file("ours", RW), link("t"), "ask", queued(), CONFLICT),
        r("ask_one_sided_modification_propagates", file("v0", RW), file("v0", RW), file("v1", RW), "ask", copy(B), CLEAN),
        // --- merge (no merge engine yet: keep both) --------------------------------------
        r("merge_append_conflict_is_merged", file("v0", RW), file("v0a", RW).at(T1), file("v0b", RW).at(T2), "merge=append", merge_then(MergeKind::Append, B, ASIDE_A), CONFLICT),
        r("merge_union_conflict_is_merged", file("v0", RW), file("l1\nl2", RW).at(T2), file("l1\nl3", RW).at(T1), "merge=union", merge_then(MergeKind::Union, A, ASIDE_B), CONFLICT),
        r("merge_text_first_sync_goes_to_the_merger", NONE, file("ours", RW).at(T1), file("theirs", RW).at(T2), "merge=text", merge_then(MergeKind::Text, B, ASIDE_A), CONFLICT),
        r("merge_one_sided_change_propagates", file("v0", RW), file("v0\nmore", RW), file("v0", RW), "merge=append", copy(A), CLEAN),
        // --- One-way: laptop -> server (source A) ----------------------------------------
        r("one_way_ab_unchanged", file("v0", RW), file("v0", RW), file("v0", RW), AB, none(), CLEAN),
        r("one_way_ab_source_modified", file("v0", RW), file("v1", RW), file("v0", RW), AB, copy(A), CLEAN),
        r("one_way_ab_target_modified_is_reverted", file("v0", RW), file("v0", RW), file("v1", RW).at(T2), AB, copy(A), CLEAN),
        r("one_way_ab_both_modified_source_wins", file("v0", RW), file("v1", RW).at(T1), file("v2", RW).at(T2), AB, copy(A), CLEAN),
        r("one_way_ab_target_created_extra_file_deleted", NONE, NONE, file("extra", RW), AB, delete(B), CLEAN),
        r("one_way_ab_source_deleted", file("v0", RW), NONE, file("v0", RW), AB, delete(B), CLEAN),
        r("one_way_ab_source_deleted_target_modified", file("v0", RW), NONE, file("v1", RW), AB, delete(B), CLEAN),
        r("one_way_ab_target_deleted_is_restored", file("v0", RW), file("v0", RW), NONE, AB, copy(A), CLEAN),
        r("one_way_ab_both_deleted", file("v0", RW), NONE, NONE, AB, forget(), CLEAN),
        r("one_way_ab_source_created", NONE, file("new", RW), NONE, AB, copy(A), CLEAN),
        r("one_way_ab_equal_without_base_recorded", NONE, file("v0", RW), file("v0", RW), AB, record(), CLEAN),
        r("one_way_ab_both_modified_identically_recorded", file("v0", RW), file("v1", RW), file("v1", RW), AB, record(), CLEAN),
        r("one_way_ab_target_mode_changed_is_reverted", file("v0", RW), file("v0", RW), file("v0", RWX), AB, set_mode(A), CLEAN),
        r("one_way_ab_target_replaced_file_by_dir", file("v0", RW), file("v0", RW), dir(), AB, copy(A), CLEAN),
        r("one_way_ab_overrides_ask_policy", file("v0", RW), file("v1", RW), file("v2", RW), "ask; laptop -> server", copy(A), CLEAN),
        r("one_way_ab_target_link_retargeted_is_reverted", link("t1"), link("t1"), link("t2"), AB, copy(A), CLEAN).path("bin/tool"),
        // --- One-way: server -> laptop (source B) ----------------------------------------
        r("one_way_ba_unchanged", file("v0", RW), file("v0", RW), file("v0", RW), BA, none(), CLEAN),
        r("one_way_ba_source_modified", file("v0", RW), file("v0", RW), file("v1", RW), BA, copy(B), CLEAN),
        r("one_way_ba_target_modified_is_reverted", file("v0", RW), file("v1", RW).at(T2), file("v0", RW), BA, copy(B), CLEAN),
        r("one_way_ba_target_created_extra_file_deleted", NONE, file("extra", RW), NONE, BA, delete(A), CLEAN),
        r("one_way_ba_source_deleted", file("v0", RW), file("v0", RW), NONE, BA, delete(A), CLEAN),
        r("one_way_ba_equal_already_recorded", NONE, file("v0", RW), file("v0", RW).at(T2), BA, record(), CLEAN),
        r("one_way_ba_overrides_prefer_target", file("v0", RW), file("v1", RW).at(T2), file("v0", RW), "prefer:laptop; server -> laptop", copy(B), CLEAN),
        // --- Direction rules naming replicas outside the pair ----------------------------
        r("direction_between_other_replicas_is_two_way", file("v0", RW), file("v0", RW), file("v1", RW), "keep-both; usb -> nas", copy(B), CLEAN),
        r("direction_into_a_from_outside_makes_a_the_source", file("v0", RW), file("v0", RW), file("v1", RW), "keep-both; usb -> laptop", copy(A), CLEAN),
        r("direction_from_a_to_outside_keeps_a_the_source", NONE, NONE, file("extra", RW), "keep-both; laptop -> usb", delete(B), CLEAN),
    ]
}

fn lone_input(row: &Row) -> BTreeMap<RelPath, Input> {
    BTreeMap::from([(
        p(row.path),
        Input {
            base: row.base.clone(),
            a: row.a.clone(),
            b: row.b.clone(),
            unreadable: None,
        },
    )])
}

#[test]
fn decide_table() {
    let rows = table();
    assert!(rows.len() >= 90, "only {} rows", rows.len());
    let mut names = BTreeSet::new();
    for row in &rows {
        assert!(names.insert(row.name), "duplicate case name {}", row.name);
    }
    let ctx = ctx();
    let mut failures = Vec::new();
    for row in &rows {
        let path = p(row.path);
        let rules = rules(row.rules);
        let got = decide(
            &path,
            row.base.as_ref(),
            row.a.as_ref(),
            row.b.as_ref(),
            &rules,
            &ctx,
        );
        failures.extend(check(row.name, row.path, &got, &row.want, row.conflict));

        // A lone path through the whole-pair entry point: the same decision.
        let items = reconcile(lone_input(row), &|_, _| rules.clone(), &ctx);
        assert_eq!(items.len(), 1, "case `{}`: one item per path", row.name);
        let it = &items[0];
        // Paths unchanged everywhere take a fast path that skips the rules lookup: the
        // action must agree; the explanation and rule label may be generic.
        let fast = got.action == Action::None && it.decision.action == Action::None;
        if !fast && (it.decision != got || it.rule != rules.source) || it.path != path {
            failures.push(format!(
                "case `{}`: reconcile() on the lone path disagrees with decide(): {:?} (rule {:?}) vs {:?}",
                row.name, it.decision, it.rule, got
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// Several paths at once: renames, directory consistency, unreadable inputs

struct Scenario {
    name: &'static str,
    rules: &'static str,
    /// (path, base, a, b)
    paths: Vec<(&'static str, St, St, St)>,
    /// Paths that could not be read.
    unreadable: Vec<&'static str>,
    /// (path, action, conflict) for every path the scenario checks.
    want: Vec<(&'static str, Action, bool)>,
}

fn sc(
    name: &'static str,
    paths: Vec<(&'static str, St, St, St)>,
    want: Vec<(&'static str, Action, bool)>,
) -> Scenario {
    Scenario {
        name,
        rules: KB,
        paths,
        unreadable: Vec::new(),
        want,
    }
}

impl Scenario {
    fn rules(mut self, rules: &'static str) -> Scenario {
        self.rules = rules;
        self
    }
    fn unreadable(mut self, path: &'static str) -> Scenario {
        self.unreadable.push(path);
        self
    }

    fn inputs(&self, reversed: bool) -> BTreeMap<RelPath, Input> {
        let mut list: Vec<_> = self.paths.iter().collect();
        if reversed {
            list.reverse();
        }
        let mut inputs = BTreeMap::new();
        for (path, base, a, b) in list {
            let unreadable = self
                .unreadable
                .contains(path)
                .then(|| format!("unreadable on {NAME_B}: permission denied"));
            let old = inputs.insert(
                p(path),
                Input {
                    base: base.clone(),
                    a: a.clone(),
                    b: b.clone(),
                    unreadable,
                },
            );
            assert!(old.is_none(), "scenario `{}`: {path} twice", self.name);
        }
        inputs
    }

    fn run(&self, reversed: bool) -> Vec<Item> {
        let rules = rules(self.rules);
        reconcile(self.inputs(reversed), &|_, _| rules.clone(), &ctx())
    }

    /// Messages for everything wrong with the plan.
    fn failures(&self) -> Vec<String> {
        let items = self.run(false);
        let mut out = Vec::new();
        let by_path: BTreeMap<&str, &Item> =
            items.iter().map(|it| (it.path.as_str(), it)).collect();
        if by_path.len() != self.paths.len() || items.len() != self.paths.len() {
            out.push(format!(
                "scenario `{}`: {} paths in, {} items out",
                self.name,
                self.paths.len(),
                items.len()
            ));
        }
        for (path, want, conflict) in &self.want {
            match by_path.get(path) {
                Some(it) => out.extend(check(self.name, path, &it.decision, want, *conflict)),
                None => out.push(format!("scenario `{}`: no item for {path:?}", self.name)),
            }
        }
        // The order the inputs were gathered in does not matter, and the plan is sorted.
        let again = self.run(true);
        let key = |items: &[Item]| -> Vec<(String, Decision)> {
            items
                .iter()
                .map(|it| (it.path.as_str().to_string(), it.decision.clone()))
                .collect()
        };
        if key(&items) != key(&again) {
            out.push(format!(
                "scenario `{}`: result depends on input order",
                self.name
            ));
        }
        if !items.windows(2).all(|w| w[0].path < w[1].path) {
            out.push(format!(
                "scenario `{}`: items not sorted by path",
                self.name
            ));
        }
        out
    }
}

const C: &str = "the same content, long enough to be a real file\n";

fn scenarios() -> Vec<Scenario> {
    vec![
        // --- Renames ---------------------------------------------------------------------
        sc(
            "rename_on_a_is_a_move_on_b",
            vec![
                ("notes", dir(), dir(), dir()),
                ("notes/new.md", NONE, file(C, RW), NONE),
                ("notes/old.md", file(C, RW), NONE, file(C, RW)),
            ],
            vec![
                ("notes", none(), CLEAN),
                ("notes/new.md", moved(B, "notes/old.md"), CLEAN),
                ("notes/old.md", moved_away(B, "notes/new.md"), CLEAN),
            ],
        ),
        sc(
            "rename_on_b_is_a_move_on_a",
            vec![
                ("new.md", NONE, NONE, file(C, RW)),
                ("old.md", file(C, RW), file(C, RW), NONE),
            ],
            vec![
                ("new.md", moved(A, "old.md"), CLEAN),
                ("old.md", moved_away(A, "new.md"), CLEAN),
            ],
        ),
        sc(
            "rename_to_a_name_that_sorts_first",
            vec![
                ("a.txt", NONE, file(C, RW), NONE),
                ("z.txt", file(C, RW), NONE, file(C, RW)),
            ],
            vec![
                ("a.txt", moved(B, "z.txt"), CLEAN),
                ("z.txt", moved_away(B, "a.txt"), CLEAN),
            ],
        ),
        sc(
            "move_between_existing_directories",
            vec![
                ("d1", dir(), dir(), dir()),
                ("d1/x.bin", file(C, RWX), NONE, file(C, RWX)),
                ("d2", dir(), dir(), dir()),
                ("d2/x.bin", NONE, file(C, RWX), NONE),
            ],
            vec![
                ("d1", none(), CLEAN),
                ("d1/x.bin", moved_away(B, "d2/x.bin"), CLEAN),
                ("d2", none(), CLEAN),
                ("d2/x.bin", moved(B, "d1/x.bin"), CLEAN),
            ],
        ),
        sc(
            "rename_with_mode_change_is_not_a_move",
            vec![
                ("new.sh", NONE, file(C, RWX), NONE),
                ("old.sh", file(C, RW), NONE, file(C, RW)),
            ],
            vec![("new.sh", copy(A), CLEAN), ("old.sh", delete(B), CLEAN)],
        ),
        sc(
            "rename_of_an_empty_file_is_not_a_move",
            vec![
                ("new.lock", NONE, file("", RW), NONE),
                ("old.lock", file("", RW), NONE, file("", RW)),
            ],
            vec![("new.lock", copy(A), CLEAN), ("old.lock", delete(B), CLEAN)],
        ),
        sc(
            "rename_prefers_the_candidate_with_the_same_file_name",
            vec![
                ("a", dir(), dir(), dir()),
                ("a/other.txt", file(C, RW), NONE, file(C, RW)),
                ("new", NONE, dir(), NONE),
                ("new/report.txt", NONE, file(C, RW), NONE),
                ("z", dir(), dir(), dir()),
                ("z/report.txt", file(C, RW), NONE, file(C, RW)),
            ],
            vec![
                ("a/other.txt", delete(B), CLEAN),
                ("new", copy(A), CLEAN),
                ("new/report.txt", moved(B, "z/report.txt"), CLEAN),
                ("z/report.txt", moved_away(B, "new/report.txt"), CLEAN),
            ],
        ),
        sc(
            "two_renamed_copies_are_two_moves",
            vec![
                ("x1", file(C, RW), NONE, file(C, RW)),
                ("x2", file(C, RW), NONE, file(C, RW)),
                ("y1", NONE, file(C, RW), NONE),
                ("y2", NONE, file(C, RW), NONE),
            ],
            vec![
                ("x1", moved_away(B, "y1"), CLEAN),
                ("x2", moved_away(B, "y2"), CLEAN),
                ("y1", moved(B, "x1"), CLEAN),
                ("y2", moved(B, "x2"), CLEAN),
            ],
        ),
        sc(
            "delete_and_create_in_opposite_directions_is_not_a_move",
            vec![
                ("gone.txt", file(C, RW), file(C, RW), NONE),
                ("made.txt", NONE, file(C, RW), NONE),
            ],
            vec![("gone.txt", delete(A), CLEAN), ("made.txt", copy(A), CLEAN)],
        ),
        sc(
            "overwrite_with_deleted_content_is_not_a_move",
            vec![
                ("gone.txt", file(C, RW), NONE, file(C, RW)),
                ("kept.txt", file("old", RW), file(C, RW), file("old", RW)),
            ],
            vec![("gone.txt", delete(B), CLEAN), ("kept.txt", copy(A), CLEAN)],
        ),
        sc(
            "rename_of_a_directory_with_a_file_inside",
            vec![
                ("d", dir(), NONE, dir()),
                ("d/x.txt", file(C, RW), NONE, file(C, RW)),
                ("e", NONE, dir(), NONE),
                ("e/x.txt", NONE, file(C, RW), NONE),
            ],
            vec![
                ("d", delete(B), CLEAN),
                ("d/x.txt", moved_away(B, "e/x.txt"), CLEAN),
                ("e", copy(A), CLEAN),
                ("e/x.txt", moved(B, "d/x.txt"), CLEAN),
            ],
        ),
        sc(
            "one_way_target_rename_is_renamed_back",
            vec![
                ("renamed.txt", NONE, NONE, file(C, RW)),
                ("src.txt", file(C, RW), file(C, RW), NONE),
            ],
            vec![
                ("renamed.txt", moved_away(B, "src.txt"), CLEAN),
                ("src.txt", moved(B, "renamed.txt"), CLEAN),
            ],
        )
        .rules(AB),
        // --- Directory consistency -------------------------------------------------------
        sc(
            "dir_deleted_on_a_while_b_added_a_file_inside",
            vec![
                ("d", dir(), NONE, dir()),
                ("d/new.txt", NONE, NONE, file("new", RW)),
                ("d/old.txt", file("old", RW), NONE, file("old", RW)),
            ],
            vec![
                ("d", copy(B), CLEAN),
                ("d/new.txt", copy(B), CLEAN),
                ("d/old.txt", delete(B), CLEAN),
            ],
        ),
        sc(
            "dir_deleted_on_b_while_a_added_a_file_deep_inside",
            vec![
                ("d", dir(), dir(), NONE),
                ("d/sub", NONE, dir(), NONE),
                ("d/sub/new.txt", NONE, file("new", RW), NONE),
                ("d/x.txt", file("x", RW), file("x", RW), NONE),
            ],
            vec![
                ("d", copy(A), CLEAN),
                ("d/sub", copy(A), CLEAN),
                ("d/sub/new.txt", copy(A), CLEAN),
                ("d/x.txt", delete(A), CLEAN),
            ],
        ),
        sc(
            "dir_deleted_on_a_while_b_modified_a_file_inside",
            vec![
                ("d", dir(), NONE, dir()),
                ("d/x.txt", file("v0", RW), NONE, file("v1", RW)),
            ],
            vec![("d", copy(B), CLEAN), ("d/x.txt", copy(B), CLEAN)],
        ),
        sc(
            "nested_dirs_deleted_on_a_are_all_deleted",
            vec![
                ("d", dir(), NONE, dir()),
                ("d/e", dir(), NONE, dir()),
                ("d/e/empty", dir(), NONE, dir()),
                ("d/e/f.txt", file("f", RW), NONE, file("f", RW)),
                ("d/g.txt", file("g", RW), NONE, file("g", RW)),
                ("d/l", link("g.txt"), NONE, link("g.txt")),
            ],
            vec![
                ("d", delete(B), CLEAN),
                ("d/e", delete(B), CLEAN),
                ("d/e/empty", delete(B), CLEAN),
                ("d/e/f.txt", delete(B), CLEAN),
                ("d/g.txt", delete(B), CLEAN),
                ("d/l", delete(B), CLEAN),
            ],
        ),
        sc(
            "nested_dirs_deleted_on_b_are_all_deleted",
            vec![
                ("d", dir(), dir(), NONE),
                ("d/e", dir(), dir(), NONE),
                ("d/e/f.txt", file("f", RW), file("f", RW), NONE),
            ],
            vec![
                ("d", delete(A), CLEAN),
                ("d/e", delete(A), CLEAN),
                ("d/e/f.txt", delete(A), CLEAN),
            ],
        ),
        sc(
            "deleted_dir_with_a_sibling_that_sorts_between_it_and_its_children",
            vec![
                ("d", dir(), NONE, dir()),
                ("d-x.txt", file("x", RW), file("x", RW), file("x", RW)),
                ("d.txt", NONE, file("dot", RW), NONE),
                ("d/y.txt", NONE, NONE, file("y", RW)),
            ],
            vec![
                ("d", copy(B), CLEAN),
                ("d-x.txt", none(), CLEAN),
                ("d.txt", copy(A), CLEAN),
                ("d/y.txt", copy(B), CLEAN),
            ],
        ),
        sc(
            "first_sync_file_vs_dir_is_a_conflict",
            vec![
                ("x", NONE, file("x", RW), dir()),
                ("y", NONE, dir(), dir()),
                ("y/c.txt", NONE, NONE, file("c", RW)),
            ],
            vec![
                ("x", queued(), CONFLICT),
                ("y", record(), CLEAN),
                ("y/c.txt", copy(B), CLEAN),
            ],
        ),
        // --- Unreadable inputs -----------------------------------------------------------
        sc(
            "unreadable_path_is_skipped_and_others_proceed",
            vec![
                ("locked.txt", file("v0", RW), file("v1", RW), NONE),
                ("ok.txt", file("v0", RW), file("v1", RW), file("v0", RW)),
            ],
            vec![("locked.txt", skipped(), CLEAN), ("ok.txt", copy(A), CLEAN)],
        )
        .unreadable("locked.txt"),
        sc(
            "unreadable_path_that_looks_deleted_is_not_deleted",
            vec![("secret.txt", file("v0", RW), file("v0", RW), NONE)],
            vec![("secret.txt", skipped(), CLEAN)],
        )
        .unreadable("secret.txt"),
        sc(
            "unreadable_deletion_is_not_a_rename_source",
            vec![
                ("new.md", NONE, file(C, RW), NONE),
                ("old.md", file(C, RW), NONE, file(C, RW)),
            ],
            vec![("new.md", copy(A), CLEAN), ("old.md", skipped(), CLEAN)],
        )
        .unreadable("old.md"),
        sc(
            "unreadable_would_be_conflict_is_skipped",
            vec![(
                "both.txt",
                file("v0", RW),
                file("ours", RW),
                file("theirs", RW),
            )],
            vec![("both.txt", skipped(), CLEAN)],
        )
        .rules("ask")
        .unreadable("both.txt"),
    ]
}

#[test]
fn reconcile_scenarios() {
    let all = scenarios();
    let mut names = BTreeSet::new();
    for s in &all {
        assert!(names.insert(s.name), "duplicate scenario name {}", s.name);
    }
    let failures: Vec<String> = all.iter().flat_map(Scenario::failures).collect();
    assert!(
        failures.is_empty(),
        "{} failures in {} scenarios:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

#[test]
fn case_count() {
    let n = table().len() + scenarios().len();
    assert!(n >= 90, "only {n} cases");
}

/// Shuffled insertion orders and per-path rules: the plan is the same and sorted, and
/// `rules_for` decides per path (and sees whether the path is a directory).
#[test]
fn order_of_inputs_does_not_matter_and_rules_are_per_path() {
    let entries: Vec<(&str, St, St, St)> = vec![
        (
            "b.txt",
            file("v0", RW),
            file("ours", RW).at(T1),
            file("theirs", RW).at(T2),
        ),
        (
            "a.txt",
            file("v0", RW),
            file("ours", RW).at(T1),
            file("theirs", RW).at(T2),
        ),
        ("c", dir(), NONE, dir()),
        ("c/k.txt", NONE, NONE, file("k", RW)),
        ("new.md", NONE, file(C, RW), NONE),
        ("old.md", file(C, RW), NONE, file(C, RW)),
    ];
    let rules_for = |path: &RelPath, is_dir: bool| -> PathRules {
        match (path.as_str(), is_dir) {
            ("a.txt", false) => rules("ask"),
            ("b.txt", false) => rules("prefer:laptop"),
            (_, true) => rules("newest"),
            _ => rules(KB),
        }
    };
    let ctx = ctx();
    let plans: Vec<Vec<(String, Decision, String)>> = (0..entries.len())
        .flat_map(|rot| [(rot, false), (rot, true)])
        .map(|(rot, rev)| {
            let mut list = entries.clone();
            list.rotate_left(rot);
            if rev {
                list.reverse();
            }
            let inputs: BTreeMap<RelPath, Input> = list
                .into_iter()
                .map(|(path, base, a, b)| {
                    (
                        p(path),
                        Input {
                            base,
                            a,
                            b,
                            unreadable: None,
                        },
                    )
                })
                .collect();
            reconcile(inputs, &rules_for, &ctx)
                .into_iter()
                .map(|it| (it.path.as_str().to_string(), it.decision, it.rule))
                .collect()
        })
        .collect();
    for plan in &plans[1..] {
        assert_eq!(plan, &plans[0], "plan depends on input order");
    }
    let plan = &plans[0];
    let paths: Vec<&str> = plan.iter().map(|(p, _, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        ["a.txt", "b.txt", "c", "c/k.txt", "new.md", "old.md"]
    );
    let get = |path: &str| plan.iter().find(|(p, _, _)| p == path).expect("item");
    let (_, a_txt, a_rule) = get("a.txt");
    assert!(
        matches!(a_txt.action, Action::Conflict { .. }) && a_txt.conflict,
        "a.txt (ask): {a_txt:?}"
    );
    assert_eq!(a_rule, "rule 1 (ask)");
    let (_, b_txt, b_rule) = get("b.txt");
    assert_eq!(b_txt.action, copy(A), "b.txt (prefer:laptop)");
    assert_eq!(b_rule, "rule 1 (prefer:laptop)");
    assert_eq!(get("c").1.action, copy(B), "c: re-created for c/k.txt");
    assert_eq!(get("c").2, "rule 1 (newest)", "c is a directory");
    assert_eq!(get("c/k.txt").1.action, copy(B));
    assert_eq!(get("new.md").1.action, moved(B, "old.md"));
    assert_eq!(get("old.md").1.action, moved_away(B, "new.md"));
}

// ---------------------------------------------------------------------------------------
// Behaviour SPEC section 4 requires that reconcile.rs does not have (yet).

fn assert_scenario(s: Scenario) {
    let failures = s.failures();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// SPEC 4: "Modify-vs-delete: the modification wins" and "File-vs-directory: conflict, nothing
/// deleted". A replaced directory `d` by a file; B modified `d/x.txt` inside it. The plan
/// copies A's file over B's directory (B's modification is only kept as a version) while
/// also copying B's `d/x.txt` into A, below a path that is a file there.
#[test]
fn dir_replaced_by_file_while_other_side_modified_inside() {
    assert_scenario(sc(
        "dir_replaced_by_file_on_a_while_b_modified_a_file_inside",
        vec![
            ("d", dir(), file("now a file", RW), dir()),
            ("d/x.txt", file("v0", RW), NONE, file("v1", RW)),
        ],
        vec![("d", queued(), CONFLICT)],
    ));
}

/// Same as above with a new file: B created `d/new.txt` inside the directory A replaced by
/// a symlink.
#[test]
fn dir_replaced_by_link_while_other_side_created_inside() {
    assert_scenario(sc(
        "dir_replaced_by_link_on_a_while_b_created_a_file_inside",
        vec![
            ("d", dir(), link("elsewhere"), dir()),
            ("d/new.txt", NONE, NONE, file("new", RW)),
        ],
        vec![("d", queued(), CONFLICT)],
    ));
}

/// SPEC 4, Names: case-only collisions are detected and reported as conflicts rather than
/// clobbering each other. Nothing in reconcile looks at case.
#[test]
fn case_only_collision_is_a_conflict() {
    assert_scenario(sc(
        "case_only_collision",
        vec![
            ("README.md", NONE, NONE, file("server's readme", RW)),
            ("Readme.md", NONE, file("laptop's readme", RW), NONE),
        ],
        vec![
            ("README.md", queued(), CONFLICT),
            ("Readme.md", queued(), CONFLICT),
        ],
    ));
}

/// SPEC 4, Names: Unicode normalization differences (macOS NFD vs Linux NFC) are detected and
/// reported as conflicts.
#[test]
fn unicode_normalization_collision_is_a_conflict() {
    assert_scenario(sc(
        "nfc_vs_nfd_collision",
        vec![
            ("cafe\u{301}.txt", NONE, file("laptop (NFD)", RW), NONE),
            ("caf\u{e9}.txt", NONE, NONE, file("server (NFC)", RW)),
        ],
        vec![
            ("cafe\u{301}.txt", queued(), CONFLICT),
            ("caf\u{e9}.txt", queued(), CONFLICT),
        ],
    ));
}

/// A new name that differs only by case from a synced one is not copied next to it (a
/// case-insensitive target would overwrite the synced file); the synced one is flagged too.
#[test]
fn new_case_variant_of_a_synced_name_is_a_conflict() {
    assert_scenario(sc(
        "case_variant_of_synced_file",
        vec![
            ("notes.txt", file("v0", RW), file("v0", RW), file("v0", RW)),
            ("Notes.txt", NONE, file("laptop's new file", RW), NONE),
        ],
        vec![
            ("Notes.txt", queued(), CONFLICT),
            ("notes.txt", queued(), CONFLICT),
        ],
    ));
}

/// Directories colliding by case: both flagged, and what is inside waits.
#[test]
fn colliding_directories_hold_their_contents() {
    assert_scenario(sc(
        "case_only_directory_collision",
        vec![
            ("Docs", NONE, dir(), NONE),
            ("Docs/a.txt", NONE, file("a", RW), NONE),
            ("docs", NONE, NONE, dir()),
            ("docs/b.txt", NONE, NONE, file("b", RW)),
        ],
        vec![
            ("Docs", queued(), CONFLICT),
            ("Docs/a.txt", skipped(), CLEAN),
            ("docs", queued(), CONFLICT),
            ("docs/b.txt", skipped(), CLEAN),
        ],
    ));
}

/// Names that only look alike to a person but fold differently are synced normally.
#[test]
fn distinct_names_are_not_collisions() {
    assert_scenario(sc(
        "distinct_names",
        vec![
            ("report-1.txt", NONE, file("one", RW), NONE),
            ("report-l.txt", NONE, NONE, file("ell", RW)),
        ],
        vec![
            ("report-1.txt", copy(A), CLEAN),
            ("report-l.txt", copy(B), CLEAN),
        ],
    ));
}

/// A keep-both copy never lands on a name a synced file already has, even when that file is
/// unchanged everywhere (the engine keeps such paths apart from the items, so the aside
/// check must look there too).
#[test]
fn keep_both_aside_skips_the_name_of_an_unchanged_file() {
    assert_scenario(sc(
        "aside_name_taken_by_unchanged_file",
        vec![
            (
                "docs/report.txt",
                file("v0", RW),
                file("ours", RW).at(T2),
                file("theirs", RW).at(T1),
            ),
            (
                "docs/report.conflict-server-20261122-103000.txt",
                file("old copy", RW),
                file("old copy", RW),
                file("old copy", RW),
            ),
        ],
        vec![(
            "docs/report.txt",
            keep_both(A, "docs/report.conflict-server-20261122-103000-2.txt"),
            CONFLICT,
        )],
    ));
}
