//! File events for one replica root, as the synced tree sees them. `fedsync watch` runs one
//! per local replica; the remote agent runs one on its own root and sends what it reports
//! over the ssh connection. Same code on both sides, so both apply the same rules: never
//! `.fedsync/`, never an ignored path, folder-only patterns checked against what the path is.
//!
//! The root gets a flat watch and each top-level folder that may hold synced paths a
//! recursive one (so `.fedsync/` and ignored top-level folders cost no watches at all); the
//! top-level watches follow folders that appear, vanish or are renamed. Native events
//! (inotify, FSEvents, ...) where the system has them, else (or when asked, or when the
//! system runs out of watches) a polling watcher.

use crate::path::RelPath;
use crate::rules::Rules;
use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind, RenameMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Which watcher to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefer {
    /// Native events, polling where they cannot be had.
    Auto,
    /// Polling only (network mounts, tests).
    Poll,
}

/// Which watcher runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Native,
    Polling,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::Polling => "polling",
        }
    }
}

/// What one raw event means for the synced tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Something changed at or below this synced path.
    Path(RelPath),
    /// Events were lost (queue overflow, a switch of watcher): look at everything.
    Rescan,
    /// The root itself is gone (unmounted, moved, deleted): the watch is over.
    RootGone,
    /// Worth a log line (a fallback to polling, an error of the watcher).
    Note(String),
}

/// Where raw events go: called on the watcher's own thread.
pub type Sink = Arc<dyn Fn(notify::Result<Event>) + Send + Sync>;

/// The watch of one root.
pub struct TreeWatch {
    root: PathBuf,
    rules: Rules,
    sink: Sink,
    poll: Duration,
    watcher: Option<Box<dyn Watcher + Send>>,
    mode: Mode,
    /// Top-level folders with a recursive watch, by inode.
    top: HashMap<PathBuf, u64>,
    /// Said when the watch started: why native events are not used.
    pub note: Option<String>,
}

impl TreeWatch {
    /// Watch `root` (canonical) for changes to paths `rules` sync; raw events go to `sink`
    /// and are turned into [`Change`]s by [`TreeWatch::interpret`].
    pub fn start(
        root: PathBuf,
        rules: Rules,
        prefer: Prefer,
        poll: Duration,
        sink: Sink,
    ) -> Result<TreeWatch, String> {
        let mut tw = TreeWatch {
            root,
            rules,
            sink,
            poll,
            watcher: None,
            mode: Mode::Native,
            top: HashMap::new(),
            note: None,
        };
        tw.make(prefer)?;
        Ok(tw)
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn make(&mut self, prefer: Prefer) -> Result<(), String> {
        self.watcher = None;
        self.top.clear();
        if !self.root.is_dir() {
            return Err(format!("{} is not a folder", self.root.display()));
        }
        if prefer == Prefer::Auto {
            let sink = self.sink.clone();
            let made = notify::RecommendedWatcher::new(
                move |ev| sink(ev),
                notify::Config::default().with_follow_symlinks(false),
            );
            let why = match made {
                Ok(w) => {
                    let mut w: Box<dyn Watcher + Send> = Box::new(w);
                    match self.watch_tree(&mut *w) {
                        Ok(top) => {
                            self.watcher = Some(w);
                            self.top = top;
                            self.mode = Mode::Native;
                            return Ok(());
                        }
                        Err(e) => e.to_string(),
                    }
                }
                Err(e) => e.to_string(),
            };
            self.note = Some(format!(
                "native file events unavailable ({why}); polling every {} instead",
                humantime::format_duration(self.poll)
            ));
        }
        let sink = self.sink.clone();
        let mut w: Box<dyn Watcher + Send> = Box::new(
            notify::PollWatcher::new(
                move |ev| sink(ev),
                notify::Config::default()
                    .with_poll_interval(self.poll)
                    .with_follow_symlinks(false),
            )
            .map_err(|e| format!("no polling watcher: {e}"))?,
        );
        let top = self
            .watch_tree(&mut *w)
            .map_err(|e| format!("cannot watch {}: {e}", self.root.display()))?;
        self.watcher = Some(w);
        self.top = top;
        self.mode = Mode::Polling;
        Ok(())
    }

    /// A flat watch on the root and a recursive one on each top-level folder that may hold
    /// synced paths (never `.fedsync/`).
    fn watch_tree(&self, w: &mut dyn Watcher) -> notify::Result<HashMap<PathBuf, u64>> {
        w.watch(&self.root, RecursiveMode::NonRecursive)?;
        let mut top = HashMap::new();
        let rd = std::fs::read_dir(&self.root).map_err(notify::Error::io)?;
        for de in rd.flatten() {
            let path = de.path();
            if let Some(ino) = self.top_dir_wanted(&path) {
                match w.watch(&path, RecursiveMode::Recursive) {
                    Ok(()) => {
                        top.insert(path, ino);
                    }
                    Err(e) if matches!(e.kind, notify::ErrorKind::PathNotFound) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(top)
    }

    /// The inode of `path` when it is a top-level folder that may hold synced paths.
    fn top_dir_wanted(&self, path: &Path) -> Option<u64> {
        let md = std::fs::symlink_metadata(path).ok()?;
        if !md.is_dir() {
            return None;
        }
        let name = path.strip_prefix(&self.root).ok()?.to_str()?;
        if name.eq_ignore_ascii_case(crate::replica::local::META_DIR) {
            return None;
        }
        let rel = RelPath::new(name).ok()?;
        self.rules.should_descend(rel.as_str()).then_some(md.ino())
    }

    /// A top-level entry appeared, vanished, was renamed or replaced: keep the recursive
    /// watches in step (notify does this by itself below the top level). `Err`: the system
    /// has no watches left.
    fn refresh_top(&mut self, path: &Path) -> Result<(), ()> {
        let wanted = self.top_dir_wanted(path);
        let Some(w) = self.watcher.as_mut() else {
            return Ok(());
        };
        let watched = self.top.get(path).copied();
        if watched.is_some() && watched == wanted {
            return Ok(());
        }
        if watched.is_some() {
            // Gone or replaced: notify keeps watches by path, so drop the old one.
            let _ = w.unwatch(path);
            self.top.remove(path);
        }
        if let Some(ino) = wanted {
            match w.watch(path, RecursiveMode::Recursive) {
                Ok(()) => {
                    self.top.insert(path.to_path_buf(), ino);
                }
                Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => return Err(()),
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Out of native watches: poll instead (events may have been missed meanwhile).
    fn fall_back_to_polling(&mut self, out: &mut Vec<Change>) {
        out.push(Change::Note(
            "too many folders for native events; switching to polling".into(),
        ));
        match self.make(Prefer::Poll) {
            Ok(()) => out.push(Change::Rescan),
            Err(e) => {
                out.push(Change::Note(e));
                out.push(Change::RootGone);
            }
        }
    }

    /// What a raw event from the sink means for the synced tree.
    pub fn interpret(&mut self, ev: notify::Result<Event>) -> Vec<Change> {
        let mut out = Vec::new();
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) && self.mode == Mode::Native {
                    self.fall_back_to_polling(&mut out);
                } else {
                    out.push(Change::Note(format!("file events: {e}")));
                }
                return out;
            }
        };
        if self.watcher.is_none() {
            return out;
        }
        if ev.need_rescan() {
            out.push(Change::Rescan);
            return out;
        }
        match ev.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
            EventKind::Access(_) => return out,
            // The combined rename event repeats the From and To events.
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => return out,
            _ => {}
        }
        let folder_hint = matches!(
            ev.kind,
            EventKind::Create(CreateKind::Folder) | EventKind::Remove(RemoveKind::Folder)
        );
        for path in &ev.paths {
            let Ok(rel) = path.strip_prefix(&self.root) else {
                continue;
            };
            let Some(s) = rel.to_str() else {
                continue; // not UTF-8: never synced
            };
            if s.is_empty() {
                if !self.root.is_dir() {
                    // The root itself was moved or deleted.
                    self.watcher = None;
                    self.top.clear();
                    out.push(Change::RootGone);
                    return out;
                }
                continue;
            }
            let first = s.split('/').next().unwrap_or(s);
            if first.eq_ignore_ascii_case(crate::replica::local::META_DIR) {
                continue;
            }
            let Ok(rp) = RelPath::new(s) else {
                continue;
            };
            if rp.depth() == 1 && self.refresh_top(path).is_err() {
                self.fall_back_to_polling(&mut out);
                return out;
            }
            if self.excluded(&rp, path, folder_hint) {
                continue;
            }
            out.push(Change::Path(rp));
        }
        out
    }

    fn excluded(&self, rel: &RelPath, abs: &Path, folder_hint: bool) -> bool {
        if self.rules.is_excluded(rel, folder_hint) {
            return true;
        }
        // Folder-only patterns (`build/`): look at what the path is now.
        !folder_hint
            && self.rules.is_excluded(rel, true)
            && std::fs::symlink_metadata(abs).is_ok_and(|m| m.is_dir())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    fn rules(ignore: &[&str]) -> Rules {
        let mut p = crate::config::Profile::adhoc(
            crate::config::ReplicaAddr::Local(PathBuf::from("/")),
            crate::config::ReplicaAddr::Local(PathBuf::from("/")),
            String::new(),
            String::new(),
        );
        p.ignore = ignore.iter().map(|s| s.to_string()).collect();
        Rules::compile(&p).unwrap()
    }

    /// Changes seen within `wait` after `act`.
    fn changes_after(prefer: Prefer, act: impl FnOnce(&Path)) -> Vec<Change> {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join(".fedsync/tmp")).unwrap();
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::create_dir_all(root.join("build")).unwrap();
        let (tx, rx) = mpsc::channel();
        let sink: Sink = Arc::new(move |ev| {
            let _ = tx.send(ev);
        });
        let mut tw = TreeWatch::start(
            root.clone(),
            rules(&["build/", "*.tmp"]),
            prefer,
            Duration::from_millis(100),
            sink,
        )
        .unwrap();
        assert_eq!(
            tw.mode(),
            match prefer {
                Prefer::Auto => Mode::Native,
                Prefer::Poll => Mode::Polling,
            }
        );
        act(&root);
        let mut out = Vec::new();
        let end = Instant::now() + Duration::from_millis(1500);
        while let Ok(ev) = rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            out.extend(tw.interpret(ev));
        }
        out
    }

    #[test]
    fn reports_synced_paths_and_never_its_own_folder_or_ignored_ones() {
        for prefer in [Prefer::Auto, Prefer::Poll] {
            let seen = changes_after(prefer, |root| {
                std::fs::write(root.join(".fedsync/tmp/x"), "own").unwrap();
                std::fs::write(root.join("build/out.o"), "ignored").unwrap();
                std::fs::write(root.join("docs/scratch.tmp"), "ignored").unwrap();
                std::fs::write(root.join("docs/a.md"), "synced").unwrap();
                std::fs::create_dir(root.join("new")).unwrap();
                std::fs::write(root.join("new/b.md"), "synced").unwrap();
            });
            let paths: Vec<&str> = seen
                .iter()
                .filter_map(|c| match c {
                    Change::Path(p) => Some(p.as_str()),
                    _ => None,
                })
                .collect();
            assert!(paths.contains(&"docs/a.md"), "{prefer:?}: {seen:?}");
            assert!(paths.contains(&"new"), "{prefer:?}: {seen:?}");
            for p in &paths {
                assert!(
                    !p.starts_with(".fedsync") && !p.starts_with("build") && !p.ends_with(".tmp"),
                    "{prefer:?}: reported {p}: {seen:?}"
                );
            }
        }
    }
}
