//! Decisions that need to read file content, taken between reconcile (pure, metadata only)
//! and apply: validators hold back a file that fails its check instead of letting it replace
//! a good copy, and merges read both sides and become concrete actions (write the merged
//! content to both sides, a fast-forward copy, or keep-both when no merge applies).

use crate::config::{MergeKind, Validator};
use crate::entry::{Entry, Hash};
use crate::merge::{self, MergeOutcome};
use crate::path::RelPath;
use crate::reconcile::{Action, Item, PairCtx, Side};
use crate::replica::Replica;
use crate::rules::Rules;
use crate::store::Store;
use crate::validate::{self, ValidationError};
use std::collections::HashMap;
use std::io::Read;

/// Base content is stored for text and union merges up to this size.
pub const MAX_BASE_CONTENT: u64 = 16 << 20;

/// Merged contents computed for `Action::Merged` items, by path.
pub type Merged = HashMap<RelPath, Vec<u8>>;

/// Read a whole file of a replica, refusing more than `cap` bytes.
pub fn read_capped(rep: &dyn Replica, path: &RelPath, cap: u64) -> Result<Vec<u8>, String> {
    let r = rep.open(path).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    r.take(cap + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{path}: {e}"))?;
    if buf.len() as u64 > cap {
        return Err(format!("{path} is larger than {cap} bytes"));
    }
    Ok(buf)
}

/// Check a replica's file under a validator: Ok, or the message to show.
pub fn check(rep: &dyn Replica, path: &RelPath, kind: Validator) -> Result<(), String> {
    let r = match rep.local_root() {
        Some(root) => validate::validate(kind, &path.to_fs(root)),
        None => match read_capped(rep, path, merge::MAX_MERGE_BYTES as u64) {
            Ok(b) => validate::validate_bytes(kind, &b),
            Err(e) => return Err(format!("cannot read it to validate: {e}")),
        },
    };
    match r {
        Ok(()) => Ok(()),
        Err(ValidationError::Invalid(i)) => Err(i.to_string()),
        Err(e) => Err(format!("cannot validate it: {e}")),
    }
}

/// SQLite's side files of a database under a `sqlite` rule: never synced on their own (the
/// database is copied as a consistent snapshot).
pub fn is_sqlite_side_file(path: &RelPath, rules: &Rules) -> bool {
    let s = path.as_str();
    for suffix in ["-wal", "-shm", "-journal"] {
        if let Some(db) = s.strip_suffix(suffix) {
            if let Ok(db) = RelPath::new(db) {
                if rules.for_path(&db, false).validate == Some(Validator::Sqlite) {
                    return true;
                }
            }
        }
    }
    false
}

fn set(it: &mut Item, action: Action, why: String) {
    it.decision.action = action;
    it.decision.why = why.into();
}

fn kind_name(k: MergeKind) -> &'static str {
    match k {
        MergeKind::Append => "append",
        MergeKind::Union => "union",
        MergeKind::Text => "text",
    }
}

/// Settle content-dependent decisions in place; returns the merged contents to write.
pub fn settle(
    items: &mut [Item],
    rules: &Rules,
    reps: [&dyn Replica; 2],
    pctx: &PairCtx,
    store: &Store,
    pair: i64,
) -> Merged {
    let mut merged = Merged::new();
    for it in items.iter_mut() {
        let interesting = matches!(
            it.decision.action,
            Action::Copy { .. } | Action::Merge { .. }
        );
        if !interesting {
            continue;
        }
        let pr = rules.for_path(&it.path, false);
        if is_sqlite_side_file(&it.path, rules) {
            set(
                it,
                Action::None,
                "SQLite journal file of a database under a sqlite rule: the database itself is \
                 copied as a consistent snapshot"
                    .into(),
            );
            continue;
        }
        if let Action::Merge {
            kind,
            winner,
            aside,
        } = it.decision.action.clone()
        {
            match merge_item(it, kind, reps, pctx, store, pair) {
                Ok((action, why, bytes)) => {
                    if let (Some(b), Some(v)) = (bytes.as_ref(), pr.validate) {
                        if let Err(e) = validate::validate_bytes(v, b) {
                            let why = format!(
                                "{}; the merged result is not valid ({e}), so both are kept: {} stays, the other copy is {}",
                                it.decision.why,
                                pctx.name(winner),
                                aside.file_name()
                            );
                            set(it, Action::KeepBoth { winner, aside }, why);
                            continue;
                        }
                    }
                    if let Some(b) = bytes {
                        merged.insert(it.path.clone(), b);
                    }
                    set(it, action, why);
                }
                Err(reason) => {
                    let why = format!(
                        "{}: cannot merge ({reason}), so both are kept: {}'s copy stays as {}, {}'s is kept as {}",
                        it.decision.why,
                        pctx.name(winner),
                        it.path.file_name(),
                        pctx.name(winner.other()),
                        aside.file_name()
                    );
                    set(it, Action::KeepBoth { winner, aside }, why);
                }
            }
            continue;
        }
        // A copy under a validator: the source must pass it, or it is held back.
        if let (Action::Copy { from }, Some(v)) = (&it.decision.action, pr.validate) {
            let from = *from;
            if !it.side(from).is_some_and(|e| e.is_file()) {
                continue;
            }
            if let Err(msg) = check(reps[from.idx()], &it.path, v) {
                let keep = match it.side(from.other()) {
                    Some(_) => format!("{}'s copy is kept", pctx.name(from.other())),
                    None => format!("nothing is written to {}", pctx.name(from.other())),
                };
                let reason = format!(
                    "held back: {} on {} fails validation ({msg}); {keep}. Fix the file; the next sync carries it once it is valid",
                    it.path,
                    pctx.name(from)
                );
                set(
                    it,
                    Action::Skip {
                        reason: reason.clone(),
                    },
                    reason,
                );
            }
        }
    }
    merged
}

type MergeResult = Result<(Action, String, Option<Vec<u8>>), String>;

fn merge_item(
    it: &Item,
    kind: MergeKind,
    reps: [&dyn Replica; 2],
    pctx: &PairCtx,
    store: &Store,
    pair: i64,
) -> MergeResult {
    let (Some(a), Some(b)) = (it.a.as_ref(), it.b.as_ref()) else {
        return Err("one side is missing".into());
    };
    let cap = merge::MAX_MERGE_BYTES as u64;
    if a.size > cap || b.size > cap {
        // Large append-only logs: decide from hashes without loading them.
        if kind == MergeKind::Append {
            if let Some(r) = append_large(it, a, b, reps, pctx) {
                return r;
            }
        }
        return Err(format!("larger than the {} MiB merge limit", cap >> 20));
    }
    let da = read_capped(reps[0], &it.path, cap)?;
    let db = read_capped(reps[1], &it.path, cap)?;
    if Some(Hash::of(&da)) != a.hash || Some(Hash::of(&db)) != b.hash {
        return Err("a side changed while it was read; the next run merges it".into());
    }
    let name = kind_name(kind);
    let outcome = match kind {
        MergeKind::Append => {
            let base = match it.base.as_ref().filter(|e| e.is_file()) {
                None => Vec::new(),
                Some(be) => {
                    let n = be.size as usize;
                    let prefix = |d: &[u8]| d.len() >= n && Some(Hash::of(&d[..n])) == be.hash;
                    if prefix(&da) {
                        da[..n].to_vec()
                    } else if prefix(&db) {
                        db[..n].to_vec()
                    } else {
                        return Err(
                            "both sides rewrote the file (neither starts with the last synced content)"
                                .into(),
                        );
                    }
                }
            };
            merge::append(&base, &da, &db)
        }
        MergeKind::Union | MergeKind::Text => {
            let base = match it.base.as_ref() {
                None => Vec::new(),
                Some(be) => {
                    let h = be.hash.map(|h| h.to_hex()).unwrap_or_default();
                    match store.base_content(pair, &it.path, &h) {
                        Ok(Some(c)) => c,
                        _ => {
                            return Err(
                                "the last synced content is not stored (the merge rule is newer than the last sync of this file)"
                                    .into(),
                            )
                        }
                    }
                }
            };
            if kind == MergeKind::Union {
                merge::union(&base, &da, &db)
            } else {
                if it.base.is_none() {
                    return Err(
                        "created on both sides: there is no common base to merge from".into(),
                    );
                }
                merge::text(&base, &da, &db, pctx.name(Side::A), pctx.name(Side::B))
            }
        }
    };
    let both = &it.decision.why;
    Ok(match outcome {
        MergeOutcome::Clean(bytes) => (
            Action::Merged { conflicted: false },
            format!("{both}: merged cleanly, written to both sides"),
            Some(bytes),
        ),
        MergeOutcome::Conflicted(bytes) => (
            Action::Merged { conflicted: true },
            format!(
                "{both}: overlapping edits; merged with conflict markers on both sides, flagged for review"
            ),
            Some(bytes),
        ),
        MergeOutcome::FastForward { target, .. } => (
            Action::Copy {
                from: target.other(),
            },
            format!(
                "{both}: {} only appended to {}'s content: fast-forward",
                pctx.name(target.other()),
                pctx.name(target)
            ),
            None,
        ),
        MergeOutcome::Fallback(r) => return Err(format!("{name}: {r}")),
    })
}

/// An append merge of files too large to load: only a fast-forward (one side is the other
/// plus a tail) is decided; anything else falls back.
fn append_large(
    it: &Item,
    a: &Entry,
    b: &Entry,
    reps: [&dyn Replica; 2],
    pctx: &PairCtx,
) -> Option<MergeResult> {
    let (ha, hb) = (a.hash?, b.hash?);
    let (short, long, hs) = if a.size <= b.size {
        (Side::A, Side::B, ha)
    } else {
        (Side::B, Side::A, hb)
    };
    let len = it.side(short)?.size;
    let prefix = match reps[long.idx()].as_remote() {
        // An ssh:// replica hashes its own file's prefix.
        Some(remote) => remote.prefix_hash(&it.path, len).ok()?,
        None => {
            let (ra, rb) = (reps[0].local_root()?, reps[1].local_root()?);
            let mut probe = merge::FileProbe {
                a: it.path.to_fs(ra),
                b: it.path.to_fs(rb),
            };
            merge::AppendProbe::prefix_hash(&mut probe, long, len).ok()?
        }
    };
    if prefix != hs {
        return None;
    }
    Some(Ok((
        Action::Copy { from: long },
        format!(
            "{}: {} only appended to {}'s content: fast-forward",
            it.decision.why,
            pctx.name(long),
            pctx.name(short)
        ),
        None,
    )))
}
