//! Compiled path matchers for a profile: what is synced (`paths`, `ignore`, `.fedsync/`)
//! and which per-path rule applies (SPEC section 3).
//!
//! Patterns are gitignore's, matched by the `ignore` crate relative to the replica root. A
//! pattern matches a path when it matches the path itself or any of its parent directories,
//! so `docs/` covers `docs/a/b.md` and `reports/**` everything below `reports`.

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use ignore::Match;

use crate::config::{ConfigError, Direction, MergeKind, Policy, Profile, Validator};
use crate::path::RelPath;

/// The directory at the root of every replica that fedsync keeps for itself.
const STATE_DIR: &str = ".fedsync";

/// The rules that apply to one path.
#[derive(Clone, Debug, PartialEq)]
pub struct PathRules {
    pub direction: Option<Direction>,
    pub conflict: Policy,
    pub merge: Option<MergeKind>,
    pub validate: Option<Validator>,
    /// 1-based index of the last [[rule]] that set any key for this path; None = profile defaults
    pub rule: Option<usize>,
    /// human description of what decided, e.g. "rule 2 (logs/*.jsonl)" or "profile default"
    pub source: String,
}

/// A profile's patterns, compiled once and queried per path.
#[derive(Clone, Debug)]
pub struct Rules {
    /// `ignore` patterns; None when there are none.
    ignore: Option<Gitignore>,
    /// `paths` patterns; None = everything is included.
    include: Option<Include>,
    rules: Vec<CompiledRule>,
    default_conflict: Policy,
    conflict_override: Option<Policy>,
    /// The profile's `paths` and `ignore` as written: a remote agent compiles its own
    /// matchers from them to scan its side.
    patterns: (Vec<String>, Vec<String>),
}

#[derive(Clone, Debug)]
struct Include {
    matcher: Gitignore,
    /// Directories that can contain a match without matching themselves (`docs` for
    /// `docs/notes/`), as anchored directory-only patterns matched against the directory
    /// alone.
    containers: Gitignore,
    /// Some pattern can match at any depth (`*.md`), so every directory may contain a match.
    any_dir: bool,
}

#[derive(Clone, Debug)]
struct CompiledRule {
    /// 1-based.
    index: usize,
    matcher: Gitignore,
    direction: Option<Direction>,
    conflict: Option<Policy>,
    merge: Option<MergeKind>,
    validate: Option<Validator>,
}

fn builder() -> GitignoreBuilder {
    let mut b = GitignoreBuilder::new("");
    // "[abc" is a mistake in a profile, not a literal bracket.
    b.allow_unclosed_class(false);
    b
}

/// Check one pattern; the error says what is wrong with it.
pub(crate) fn check_pattern(pattern: &str) -> Result<(), String> {
    builder()
        .add_line(None, pattern)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn compile_set(patterns: &[String], what: &str, profile: &str) -> Result<Gitignore, ConfigError> {
    let mut b = builder();
    for p in patterns {
        b.add_line(None, p).map_err(|e| ConfigError {
            file: format!("profile {profile}"),
            line: None,
            column: None,
            message: format!("invalid pattern {p:?} in {what}: {e}"),
        })?;
    }
    b.build().map_err(|e| ConfigError {
        file: format!("profile {profile}"),
        line: None,
        column: None,
        message: format!("invalid patterns in {what}: {e}"),
    })
}

/// Whether `s` is `.fedsync` or lies below it (at the root only).
fn is_state_path(s: &str) -> bool {
    match s.strip_prefix(STATE_DIR) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

impl Include {
    fn compile(patterns: &[String], profile: &str) -> Result<Include, ConfigError> {
        // `paths` name what to sync from the root: `docs/` is the top-level docs folder, not
        // every folder called docs (write `**/docs/` for that).
        let patterns: Vec<String> = patterns
            .iter()
            .map(|p| {
                if p.starts_with('/') || p.starts_with('!') || p.starts_with("**") {
                    p.clone()
                } else {
                    format!("/{p}")
                }
            })
            .collect();
        let patterns = &patterns[..];
        let matcher = compile_set(patterns, "paths", profile)?;
        let mut containers = builder();
        let mut any_dir = false;
        for p in patterns {
            // A negated pattern only removes; an escaped `\!`/`\#` or trailing spaces are
            // rare enough to be treated literally for this purpose.
            if p.starts_with('!') {
                continue;
            }
            let body = p.trim_end().trim_end_matches('/');
            let anchored = body.starts_with('/') || body.contains('/');
            let body = body.trim_start_matches('/');
            if !anchored || body.starts_with("**") {
                any_dir = true;
                continue;
            }
            // Every strict prefix of the pattern's components can contain a match.
            let comps: Vec<&str> = body.split('/').collect();
            let mut prefix = String::new();
            for c in &comps[..comps.len() - 1] {
                prefix.push('/');
                prefix.push_str(c);
                if *c == "**" {
                    // Anything below here may contain a match.
                    add_container(&mut containers, &prefix, profile)?;
                    break;
                }
                add_container(&mut containers, &format!("{prefix}/"), profile)?;
            }
        }
        let containers = containers.build().map_err(|e| ConfigError {
            file: format!("profile {profile}"),
            line: None,
            column: None,
            message: format!("invalid patterns in paths: {e}"),
        })?;
        Ok(Include {
            matcher,
            containers,
            any_dir,
        })
    }

    fn includes(&self, path: &str, is_dir: bool) -> bool {
        self.matcher
            .matched_path_or_any_parents(path, is_dir)
            .is_ignore()
    }

    fn is_container(&self, dir: &str) -> bool {
        self.any_dir || self.containers.matched(dir, true).is_ignore()
    }
}

fn add_container(b: &mut GitignoreBuilder, line: &str, profile: &str) -> Result<(), ConfigError> {
    b.add_line(None, line).map(|_| ()).map_err(|e| ConfigError {
        file: format!("profile {profile}"),
        line: None,
        column: None,
        message: format!("invalid pattern in paths: {e}"),
    })
}

impl Rules {
    /// Compile the profile's `paths`, `ignore` and `[[rule]]` patterns.
    pub fn compile(p: &Profile) -> Result<Rules, ConfigError> {
        let ignore = if p.ignore.is_empty() {
            None
        } else {
            Some(compile_set(&p.ignore, "ignore", &p.name)?)
        };
        let include = if p.paths.is_empty() {
            None
        } else {
            Some(Include::compile(&p.paths, &p.name)?)
        };
        let mut rules = Vec::with_capacity(p.rules.len());
        for (i, r) in p.rules.iter().enumerate() {
            let index = i + 1;
            let sets_anything = r.direction.is_some()
                || r.conflict.is_some()
                || r.merge.is_some()
                || r.validate.is_some();
            let matcher = compile_set(&r.paths, &format!("rule {index}"), &p.name)?;
            if sets_anything {
                rules.push(CompiledRule {
                    index,
                    matcher,
                    direction: r.direction.clone(),
                    conflict: r.conflict.clone(),
                    merge: r.merge,
                    validate: r.validate,
                });
            }
        }
        Ok(Rules {
            ignore,
            include,
            rules,
            default_conflict: p.conflict.clone(),
            conflict_override: None,
            patterns: (p.paths.clone(), p.ignore.clone()),
        })
    }

    /// CLI `--conflict`: replaces the profile default and every rule's conflict policy.
    /// `None` leaves the rules as they are.
    pub fn with_conflict_override(mut self, policy: Option<Policy>) -> Rules {
        if policy.is_some() {
            self.conflict_override = policy;
        }
        self
    }

    /// Excluded: matches `ignore`, or outside `paths`, or inside `.fedsync/` (always ignored,
    /// at the root). A directory that only leads to included paths (`docs` for `docs/notes/`)
    /// is not excluded, so it is created on the other side.
    /// The `paths` and `ignore` patterns these rules were compiled from.
    pub fn scan_patterns(&self) -> (&[String], &[String]) {
        (&self.patterns.0, &self.patterns.1)
    }

    pub fn is_excluded(&self, path: &RelPath, is_dir: bool) -> bool {
        self.excluded(path.as_str(), is_dir, false)
    }

    /// [`Rules::is_excluded`] for a name a walk lists: its ancestors were descended into,
    /// so none of them is ignored, and only the path itself is matched against `ignore`
    /// (not every ancestor again, once per file).
    pub fn is_excluded_in_walk(&self, path: &str, is_dir: bool) -> bool {
        self.excluded(path, is_dir, true)
    }

    fn excluded(&self, s: &str, is_dir: bool, parents_checked: bool) -> bool {
        if s.is_empty() {
            return false;
        }
        if is_state_path(s) {
            return true;
        }
        if let Some(ig) = &self.ignore {
            let m = if parents_checked {
                ig.matched(s, is_dir)
            } else {
                ig.matched_path_or_any_parents(s, is_dir)
            };
            if m.is_ignore() {
                return true;
            }
        }
        match &self.include {
            None => false,
            Some(inc) => !(inc.includes(s, is_dir) || (is_dir && inc.is_container(s))),
        }
    }

    /// Whether a walk should descend into directory `dir`: false when it is ignored or can
    /// not contain anything `paths` includes; true for every ancestor of an included path.
    pub fn should_descend(&self, s: &str) -> bool {
        if s.is_empty() {
            return true;
        }
        if is_state_path(s) {
            return false;
        }
        if let Some(ig) = &self.ignore {
            if ig.matched_path_or_any_parents(s, true).is_ignore() {
                return false;
            }
        }
        match &self.include {
            None => true,
            Some(inc) => inc.includes(s, true) || inc.is_container(s),
        }
    }

    /// A directory kept only because included paths may lie below it (`docs` for
    /// `docs/notes/`): synced only when something inside it is.
    pub fn is_container_only(&self, dir: &RelPath) -> bool {
        match &self.include {
            Some(inc) => !dir.is_root() && !inc.includes(dir.as_str(), true),
            None => false,
        }
    }

    /// The rules for one path: the profile defaults, then every matching `[[rule]]` in
    /// order, each overriding only the keys it sets; `--conflict` last.
    /// Whether some rule reads file content (a validator or a merge).
    pub fn reads_content(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.merge.is_some() || r.validate.is_some())
    }

    pub fn for_path(&self, path: &RelPath, is_dir: bool) -> PathRules {
        let mut out = PathRules {
            direction: None,
            conflict: self.default_conflict.clone(),
            merge: None,
            validate: None,
            rule: None,
            source: String::new(),
        };
        let s = path.as_str();
        if !s.is_empty() {
            for r in &self.rules {
                let Match::Ignore(glob) = r.matcher.matched_path_or_any_parents(s, is_dir) else {
                    continue;
                };
                if let Some(d) = &r.direction {
                    out.direction = Some(d.clone());
                }
                if let Some(c) = &r.conflict {
                    out.conflict = c.clone();
                }
                if r.merge.is_some() {
                    out.merge = r.merge;
                }
                if r.validate.is_some() {
                    out.validate = r.validate;
                }
                out.rule = Some(r.index);
                if !out.source.is_empty() {
                    out.source.push_str(", ");
                }
                out.source
                    .push_str(&format!("rule {} ({})", r.index, glob.original()));
            }
        }
        if out.source.is_empty() {
            out.source.push_str("profile default");
        }
        if let Some(c) = &self.conflict_override {
            out.conflict = c.clone();
            out.source
                .push_str(&format!("; conflict {c} from --conflict"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(extra: &str) -> Profile {
        let text = format!("{extra}\n[replicas]\nlaptop = \"/l\"\nserver = \"/s\"\n");
        Profile::parse("t", &text, "t.toml").unwrap()
    }

    fn rules(extra: &str) -> Rules {
        Rules::compile(&profile(extra)).unwrap()
    }

    fn rp(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    fn excluded(r: &Rules, path: &str) -> bool {
        r.is_excluded(&rp(path), false)
    }

    fn excluded_dir(r: &Rules, path: &str) -> bool {
        r.is_excluded(&rp(path), true)
    }

    fn descend(r: &Rules, path: &str) -> bool {
        r.should_descend(rp(path).as_str())
    }

    #[test]
    fn no_patterns_includes_everything() {
        let r = rules("");
        for p in [
            "a",
            "a/b/c.txt",
            ".git/config",
            "node_modules/x.js",
            "x_state.json",
        ] {
            assert!(!excluded(&r, p), "{p}");
            assert!(!excluded_dir(&r, p), "{p}");
            assert!(descend(&r, p), "{p}");
        }
        assert!(!r.is_excluded(&RelPath::root(), true));
        assert!(r.should_descend(""));
    }

    #[test]
    fn state_dir_is_always_excluded_at_the_root() {
        for r in [
            rules(""),
            rules("paths = [\"docs/\"]\nignore = [\"!.fedsync\"]"),
        ] {
            assert!(excluded_dir(&r, ".fedsync"));
            assert!(excluded(&r, ".fedsync"));
            assert!(excluded(&r, ".fedsync/id"));
            assert!(excluded(&r, ".fedsync/versions/a/b"));
            assert!(!descend(&r, ".fedsync"));
            assert!(!descend(&r, ".fedsync/versions"));
        }
        let r = rules("");
        assert!(!excluded(&r, ".fedsyncrc"));
        assert!(!excluded_dir(&r, "sub/.fedsync"));
        assert!(!excluded(&r, "sub/.fedsync/id"));
    }

    #[test]
    fn ignore_suffix_glob_at_any_depth() {
        let r = rules("ignore = [\"*_state.json\", \"*.pyc\", \".DS_Store\"]");
        assert!(excluded(&r, "agent_state.json"));
        assert!(excluded(&r, "deep/er/run_state.json"));
        assert!(!excluded(&r, "state.json"));
        assert!(!excluded(&r, "agent_state.json.bak"));
        assert!(excluded(&r, "pkg/__init__.pyc"));
        assert!(excluded(&r, "a/.DS_Store"));
        assert!(!excluded(&r, "a/b.py"));
        // A directory matching a file-ish pattern is ignored too, with its contents.
        assert!(excluded_dir(&r, "odd_state.json"));
        assert!(excluded(&r, "odd_state.json/inner"));
    }

    #[test]
    fn ignore_directory_only_patterns() {
        let r = rules("ignore = [\".git/\", \"node_modules/\", \"__pycache__/\"]");
        assert!(excluded_dir(&r, ".git"));
        assert!(excluded(&r, ".git/config"));
        assert!(excluded(&r, ".git/objects/ab/cdef"));
        // a file named like a dir-only pattern is not ignored
        assert!(!excluded(&r, ".git"));
        assert!(excluded_dir(&r, "web/app/node_modules"));
        assert!(excluded(&r, "web/app/node_modules/left-pad/index.js"));
        assert!(excluded(&r, "src/__pycache__/m.cpython-312.pyc"));
        assert!(!excluded(&r, "src/node_modules_notes.md"));
        assert!(!descend(&r, ".git"));
        assert!(!descend(&r, "web/app/node_modules"));
        assert!(!descend(&r, "web/app/node_modules/left-pad"));
        assert!(descend(&r, "web/app"));
    }

    #[test]
    fn ignore_anchored_pattern() {
        let r = rules("ignore = [\"/build\", \"/dist/\"]");
        assert!(excluded_dir(&r, "build"));
        assert!(excluded(&r, "build"));
        assert!(excluded(&r, "build/out.o"));
        assert!(!excluded_dir(&r, "src/build"));
        assert!(!excluded(&r, "src/build/out.o"));
        assert!(excluded(&r, "dist/app.js"));
        assert!(!excluded(&r, "dist"), "dir-only pattern vs file");
        assert!(!excluded(&r, "web/dist/app.js"));
    }

    #[test]
    fn ignore_double_star_patterns() {
        let r = rules("ignore = [\"**/tmp\", \"cache/**\", \"a/**/z.log\", \"docs/*.bak\"]");
        assert!(excluded_dir(&r, "tmp"));
        assert!(excluded(&r, "x/y/tmp/f"));
        assert!(excluded(&r, "cache/a/b/c"));
        assert!(!excluded_dir(&r, "sub/cache"), "cache/** is anchored");
        assert!(excluded(&r, "a/z.log"));
        assert!(excluded(&r, "a/b/c/z.log"));
        assert!(!excluded(&r, "b/a/z.log"));
        assert!(excluded(&r, "docs/x.bak"));
        assert!(!excluded(&r, "docs/sub/x.bak"), "* does not cross /");
    }

    #[test]
    fn ignore_negation_reincludes() {
        let r = rules("ignore = [\"*.log\", \"!keep.log\"]");
        assert!(excluded(&r, "a.log"));
        assert!(!excluded(&r, "keep.log"));
        assert!(!excluded(&r, "sub/keep.log"));
    }

    #[test]
    fn include_directories() {
        let r = rules("paths = [\"docs/\", \"config/\"]");
        assert!(!excluded_dir(&r, "docs"));
        assert!(!excluded(&r, "docs/a.md"));
        assert!(!excluded(&r, "docs/a/b/c.md"));
        assert!(!excluded(&r, "config/x.toml"));
        assert!(excluded(&r, "src/main.rs"));
        assert!(excluded(&r, "README.md"));
        assert!(
            excluded(&r, "docs"),
            "a file named docs is not the docs/ dir"
        );
        assert!(descend(&r, "docs"));
        assert!(descend(&r, "docs/a"));
        // `paths` are rooted: docs/ is the top-level docs folder only, the rest is pruned
        assert!(excluded(&r, "sub/docs/x.md"));
        assert!(!descend(&r, "src"));
        assert!(excluded_dir(&r, "src"));
        // a leading slash means the same
        let r = rules("paths = [\"/docs/\", \"/config/\"]");
        assert!(!excluded(&r, "docs/a/b/c.md"));
        assert!(excluded(&r, "sub/docs/x.md"));
        assert!(excluded_dir(&r, "src"));
        assert!(!descend(&r, "src"));
        assert!(descend(&r, "config"));
    }

    #[test]
    fn include_single_files() {
        let r = rules("paths = [\"/ROADMAP.md\", \"tools/run.sh\"]");
        assert!(!excluded(&r, "ROADMAP.md"));
        assert!(excluded(&r, "sub/ROADMAP.md"), "anchored");
        assert!(!excluded(&r, "tools/run.sh"));
        assert!(excluded(&r, "tools/other.sh"));
        assert!(!excluded_dir(&r, "tools"), "container of an included file");
        assert!(descend(&r, "tools"));
        assert!(!descend(&r, "tools/sub"));
        assert!(!descend(&r, "other"));
        // a bare file name is rooted too; `**/` asks for any depth
        let r = rules("paths = [\"ROADMAP.md\"]");
        assert!(!excluded(&r, "ROADMAP.md"));
        assert!(excluded(&r, "a/b/ROADMAP.md"));
        let r = rules("paths = [\"**/ROADMAP.md\"]");
        assert!(!excluded(&r, "a/b/ROADMAP.md"));
        assert!(excluded(&r, "a/b/other.md"));
        assert!(descend(&r, "a/b"));
    }

    #[test]
    fn include_nested_directory_has_containers() {
        let r = rules("paths = [\"docs/notes/\", \"missions/*/plan.md\"]");
        assert!(
            !excluded_dir(&r, "docs"),
            "container is kept so it is created"
        );
        assert!(excluded(&r, "docs/other.md"));
        assert!(excluded_dir(&r, "docs/other"));
        assert!(!excluded_dir(&r, "docs/notes"));
        assert!(!excluded(&r, "docs/notes/a/b.md"));
        assert!(descend(&r, "docs"));
        assert!(descend(&r, "docs/notes/a"));
        assert!(!descend(&r, "docs/other"));
        assert!(!descend(&r, "doc"));
        // glob in the middle: every missions/X may contain a plan
        assert!(!excluded_dir(&r, "missions"));
        assert!(!excluded_dir(&r, "missions/m1"));
        assert!(descend(&r, "missions/m1"));
        assert!(!excluded(&r, "missions/m1/plan.md"));
        assert!(excluded(&r, "missions/m1/notes.md"));
        assert!(!descend(&r, "missions/m1/deeper"));
    }

    #[test]
    fn include_globs() {
        let r = rules("paths = [\"logs/*.jsonl\", \"reports/**\", \"a/**/keep\"]");
        assert!(!excluded(&r, "logs/x.jsonl"));
        assert!(excluded(&r, "logs/x.txt"));
        assert!(excluded(&r, "logs/sub/x.jsonl"));
        assert!(!excluded_dir(&r, "logs"));
        assert!(descend(&r, "logs"));
        assert!(!descend(&r, "logs/sub"));
        assert!(!excluded(&r, "reports/2024/q1.pdf"));
        assert!(descend(&r, "reports"));
        assert!(descend(&r, "reports/2024"));
        assert!(!excluded(&r, "a/x/y/keep"));
        assert!(!excluded(&r, "a/keep/inner.txt"));
        assert!(descend(&r, "a/x/y"));
        assert!(excluded(&r, "a/x/y/other"));
        assert!(!descend(&r, "b"));
    }

    #[test]
    fn include_unanchored_glob_descends_everywhere() {
        let r = rules("paths = [\"*.md\"]");
        assert!(!excluded(&r, "a.md"));
        assert!(excluded(&r, "x/y/z.md"), "rooted: top-level *.md only");
        let r = rules("paths = [\"**/*.md\"]");
        assert!(!excluded(&r, "a.md"));
        assert!(!excluded(&r, "x/y/z.md"));
        assert!(excluded(&r, "x/y/z.txt"));
        assert!(descend(&r, "x/y"));
        assert!(!excluded_dir(&r, "x"));
    }

    #[test]
    fn ignore_wins_over_include() {
        let r = rules("paths = [\"docs/\"]\nignore = [\"*.tmp\", \"docs/private/\"]");
        assert!(!excluded(&r, "docs/a.md"));
        assert!(excluded(&r, "docs/a.tmp"));
        assert!(excluded_dir(&r, "docs/private"));
        assert!(excluded(&r, "docs/private/key"));
        assert!(!descend(&r, "docs/private"));
        assert!(descend(&r, "docs"));
    }

    #[test]
    fn ancestors_of_included_paths_are_descended() {
        let r = rules(
            "paths = [\"docs/notes/\", \"/ROADMAP.md\", \"logs/*.jsonl\", \"a/*/c/\", \"x/**/y\"]\n\
             ignore = [\"*.tmp\"]",
        );
        let files = [
            "docs/notes/a/b/c.md",
            "ROADMAP.md",
            "logs/s.jsonl",
            "a/b/c/d.txt",
            "x/1/2/3/y",
            "x/y",
        ];
        for f in files {
            let p = rp(f);
            assert!(!r.is_excluded(&p, false), "{f} should be included");
            for a in p.ancestors() {
                assert!(descend(&r, a), "{a} (ancestor of {f}) must be descended");
                assert!(!excluded_dir(&r, a), "{a} (ancestor of {f}) must be kept");
            }
        }
        assert!(!descend(&r, "a/b/d"));
        assert!(!descend(&r, "z"));
    }

    #[test]
    fn rules_apply_in_order_and_override_only_their_keys() {
        let r = rules(
            "[[rule]]\npaths = [\"logs/\"]\ndirection = \"server -> laptop\"\nconflict = \"newest\"\n\
             [[rule]]\npaths = [\"*.jsonl\"]\nmerge = \"append\"\n\
             [[rule]]\npaths = [\"logs/audit.jsonl\"]\nconflict = \"ask\"\nvalidate = \"jsonl\"\n",
        );
        let dir = Some(Direction {
            from: "server".into(),
            to: "laptop".into(),
        });
        let a = r.for_path(&rp("logs/x.txt"), false);
        assert_eq!(a.direction, dir);
        assert_eq!(a.conflict, Policy::Newest);
        assert_eq!((a.merge, a.rule), (None, Some(1)));
        assert_eq!(a.source, "rule 1 (logs/)");
        let b = r.for_path(&rp("logs/x.jsonl"), false);
        assert_eq!(b.direction, dir, "rule 2 does not touch direction");
        assert_eq!(b.conflict, Policy::Merge, "merge implies the merge policy");
        assert_eq!(b.merge, Some(MergeKind::Append));
        assert_eq!(b.rule, Some(2));
        assert_eq!(b.source, "rule 1 (logs/), rule 2 (*.jsonl)");
        let c = r.for_path(&rp("logs/audit.jsonl"), false);
        assert_eq!(c.conflict, Policy::Ask);
        assert_eq!(c.merge, Some(MergeKind::Append), "kept from rule 2");
        assert_eq!(c.validate, Some(Validator::Jsonl));
        assert_eq!(c.direction, dir);
        assert_eq!(c.rule, Some(3));
        let d = r.for_path(&rp("other/x.jsonl"), false);
        assert_eq!((d.direction, d.rule), (None, Some(2)));
    }

    #[test]
    fn unmatched_paths_get_profile_defaults() {
        let r = rules("conflict = \"prefer:server\"\n[[rule]]\npaths = [\"tasks.json\"]\nvalidate = \"json\"\n");
        let p = r.for_path(&rp("notes/a.md"), false);
        assert_eq!(
            p,
            PathRules {
                direction: None,
                conflict: Policy::Prefer("server".into()),
                merge: None,
                validate: None,
                rule: None,
                source: "profile default".into(),
            }
        );
        let t = r.for_path(&rp("tasks.json"), false);
        assert_eq!(t.validate, Some(Validator::Json));
        assert_eq!(t.conflict, Policy::Prefer("server".into()));
        assert_eq!(t.source, "rule 1 (tasks.json)");
        assert_eq!(r.for_path(&RelPath::root(), true).rule, None);
    }

    #[test]
    fn rule_matching_covers_contents_of_matched_dirs() {
        let r = rules("[[rule]]\npaths = [\"reports/**\"]\nconflict = \"prefer:laptop\"\n");
        let deep = r.for_path(&rp("reports/2024/q1/summary.pdf"), false);
        assert_eq!(deep.conflict, Policy::Prefer("laptop".into()));
        assert_eq!(deep.source, "rule 1 (reports/**)");
        assert_eq!(r.for_path(&rp("reports/2024"), true).rule, Some(1));
        assert_eq!(r.for_path(&rp("other/reports/x"), false).rule, None);
        // "**" matches inside reports, not the directory itself (gitignore semantics)
        assert_eq!(r.for_path(&rp("reports"), true).rule, None);
    }

    #[test]
    fn rule_setting_nothing_is_not_reported() {
        let r = rules("[[rule]]\npaths = [\"a\"]\n[[rule]]\npaths = [\"a\"]\nconflict = \"ask\"\n");
        let p = r.for_path(&rp("a"), false);
        assert_eq!(p.rule, Some(2));
        assert_eq!(p.source, "rule 2 (a)");
    }

    #[test]
    fn conflict_override_replaces_default_and_rules() {
        let text =
            "conflict = \"ask\"\n[[rule]]\npaths = [\"logs/\"]\nconflict = \"prefer:server\"\n\
                    [[rule]]\npaths = [\"*.jsonl\"]\nmerge = \"union\"\n";
        let r = rules(text).with_conflict_override(Some(Policy::Newest));
        assert_eq!(r.for_path(&rp("a.txt"), false).conflict, Policy::Newest);
        let l = r.for_path(&rp("logs/a.txt"), false);
        assert_eq!(l.conflict, Policy::Newest);
        assert_eq!(l.rule, Some(1));
        assert_eq!(l.source, "rule 1 (logs/); conflict newest from --conflict");
        let j = r.for_path(&rp("x.jsonl"), false);
        assert_eq!(
            (j.conflict, j.merge),
            (Policy::Newest, Some(MergeKind::Union))
        );
        // None keeps the profile's policies
        let r = rules(text).with_conflict_override(None);
        assert_eq!(r.for_path(&rp("a.txt"), false).conflict, Policy::Ask);
        assert_eq!(
            r.for_path(&rp("logs/a"), false).conflict,
            Policy::Prefer("server".into())
        );
        assert_eq!(r.for_path(&rp("a.txt"), false).source, "profile default");
    }

    #[test]
    fn bad_glob_is_a_config_error_naming_the_pattern() {
        let mut p = profile("");
        p.ignore = vec!["ok/".into(), "[abc".into()];
        let e = Rules::compile(&p).unwrap_err();
        assert!(e.message.contains("\"[abc\""), "{e}");
        assert!(e.message.contains("ignore"), "{e}");
        assert_eq!(e.line, None);
        let mut p = profile("");
        p.paths = vec!["{a,b".into()];
        let e = Rules::compile(&p).unwrap_err();
        assert!(
            e.message.contains("{a,b") && e.message.contains("paths"),
            "{e}"
        );
        let mut p = profile("[[rule]]\npaths = [\"x\"]\nconflict = \"ask\"\n");
        p.rules[0].paths.push("y/[".into());
        let e = Rules::compile(&p).unwrap_err();
        assert!(e.message.contains("rule 1"), "{e}");
        assert!(check_pattern("logs/**/*.jsonl").is_ok());
    }

    #[test]
    fn adhoc_profile_compiles_to_include_everything() {
        let a = crate::config::ReplicaAddr::Local("/a".into());
        let b = crate::config::ReplicaAddr::Local("/b".into());
        let r = Rules::compile(&Profile::adhoc(a, b, "/a".into(), "/b".into())).unwrap();
        assert!(!excluded(&r, "x/y"));
        assert!(excluded(&r, ".fedsync/id"));
        assert_eq!(r.for_path(&rp("x"), false).conflict, Policy::KeepBoth);
    }
}
