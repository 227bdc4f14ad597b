//! Profile files (SPEC section 3): TOML text -> typed [`Profile`].
//!
//! Every error points at the line and column of the offending key or value, says what is
//! wrong and what would be accepted. The file is read with `toml_edit`, which keeps the
//! byte span of every key and value, so semantic errors (an unknown policy, a `prefer:`
//! naming a replica that does not exist, ...) are located as precisely as syntax errors.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use toml_edit::{ImDocument, Item, Table, Value};

/// Keys accepted at the top level besides `replicas` and `[[rule]]`. Inside `[replicas]`, a
/// key with one of these names is read as the setting unless its value is a replica table
/// (`{ root = "..." }`): SPEC section 3's own example writes them textually after `[replicas]`.
pub const SETTING_KEYS: [&str; 9] = [
    "paths",
    "ignore",
    "conflict",
    "max_delete",
    "versions",
    "ssh",
    "remote_cmd",
    "interval",
    "on_failure",
];

const TOP_KEYS_HELP: &str = "replicas, paths, ignore, conflict, max_delete, versions, ssh, \
                             remote_cmd, interval, on_failure, [[rule]]";
const RULE_KEYS_HELP: &str = "paths, direction, conflict, merge, validate";
const POLICY_HELP: &str = "keep-both, newest, prefer:<replica>, ask, merge";
const MERGE_HELP: &str = "append, union, text";
const VALIDATE_HELP: &str = "json, jsonl, toml, yaml, sqlite";
const DURATION_HELP: &str = "a duration such as \"90d\", \"5m\", \"1h30m\"";

/// A parsed profile.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    pub name: String,
    /// In file order; `replicas[0]` is the hub.
    pub replicas: Vec<ReplicaSpec>,
    /// Include patterns; empty = everything.
    pub paths: Vec<String>,
    pub ignore: Vec<String>,
    pub conflict: Policy,
    pub max_delete: DeleteLimit,
    pub versions: Retention,
    /// `[[rule]]` blocks in order.
    pub rules: Vec<RuleSpec>,
    /// Replaces the ssh command (`FEDSYNC_SSH` wins over it; the CLI decides).
    pub ssh: Option<String>,
    /// The command that runs fedsync on a remote host.
    pub remote_cmd: Option<String>,
    /// Full-rescan interval for `watch`.
    pub interval: Option<Duration>,
    /// Hook command run when a run fails.
    pub on_failure: Option<String>,
}

/// One `[replicas]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaSpec {
    pub name: String,
    pub addr: ReplicaAddr,
    /// Absent or unmarked: skipped with a warning instead of failing the run.
    pub optional: bool,
    /// The root exactly as written in the file.
    pub raw: String,
}

/// Where a replica lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ReplicaAddr {
    /// An absolute local folder (`~` expanded, relative paths made absolute).
    Local(PathBuf),
    /// `ssh://[user@]host[:port]/path`; `path` is absolute (`/srv/x`) or home-relative (`~/x`).
    Ssh {
        user: Option<String>,
        host: String,
        port: Option<u16>,
        path: String,
    },
}

/// How a conflict is settled (SPEC section 4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Policy {
    KeepBoth,
    Newest,
    Prefer(String),
    Ask,
    Merge,
}

/// The delete guard: a run that would delete more than this on any replica is refused.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DeleteLimit {
    /// Percentage (0..=100) of the files on that replica.
    Percent(f64),
    /// Number of files.
    Count(u64),
}

/// Version retention; `keep: None, max_age: None` keeps every version.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Retention {
    pub keep: Option<u32>,
    pub max_age: Option<Duration>,
}

/// `direction = "A -> B"`: only A's changes are sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Direction {
    pub from: String,
    pub to: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MergeKind {
    Append,
    Union,
    Text,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validator {
    Json,
    Jsonl,
    Toml,
    Yaml,
    Sqlite,
}

/// One `[[rule]]` block. A rule with `merge` and no explicit `conflict` gets
/// `conflict: Some(Policy::Merge)`.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleSpec {
    pub paths: Vec<String>,
    pub direction: Option<Direction>,
    pub conflict: Option<Policy>,
    pub merge: Option<MergeKind>,
    pub validate: Option<Validator>,
}

/// A profile that could not be read or is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    /// 1-based.
    pub line: Option<usize>,
    /// 1-based, in characters.
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{}:{}: {}", self.file, l, c, self.message),
            (Some(l), None) => write!(f, "{}:{}: {}", self.file, l, self.message),
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Whether `name` is a valid replica name (`[A-Za-z0-9_-]+`).
pub fn is_valid_replica_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

// ---------------------------------------------------------------------------------------
// Small value types: parsing and display

impl FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Policy, String> {
        match s {
            "keep-both" => Ok(Policy::KeepBoth),
            "newest" => Ok(Policy::Newest),
            "ask" => Ok(Policy::Ask),
            "merge" => Ok(Policy::Merge),
            _ => match s.strip_prefix("prefer:") {
                Some(name) if is_valid_replica_name(name) => Ok(Policy::Prefer(name.to_string())),
                Some(name) => Err(format!(
                    "invalid conflict policy {s:?}: {name:?} is not a replica name; \
                     write prefer:<replica>, e.g. prefer:laptop"
                )),
                None => Err(format!(
                    "unknown conflict policy {s:?}; accepted: {POLICY_HELP}"
                )),
            },
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::KeepBoth => f.write_str("keep-both"),
            Policy::Newest => f.write_str("newest"),
            Policy::Prefer(r) => write!(f, "prefer:{r}"),
            Policy::Ask => f.write_str("ask"),
            Policy::Merge => f.write_str("merge"),
        }
    }
}

impl FromStr for Direction {
    type Err = String;

    /// `"A -> B"` (spaces optional). Does not check that the replicas exist.
    fn from_str(s: &str) -> Result<Direction, String> {
        let bad = || {
            format!(
                "invalid direction {s:?}; expected \"FROM -> TO\" with two different \
                 replica names, e.g. \"server -> laptop\""
            )
        };
        let (from, to) = s.split_once("->").ok_or_else(bad)?;
        let (from, to) = (from.trim(), to.trim());
        if !is_valid_replica_name(from) || !is_valid_replica_name(to) {
            return Err(bad());
        }
        if from == to {
            return Err(format!(
                "invalid direction {s:?}: both sides are {from:?}; a direction needs two \
                 different replicas"
            ));
        }
        Ok(Direction {
            from: from.to_string(),
            to: to.to_string(),
        })
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.from, self.to)
    }
}

impl FromStr for MergeKind {
    type Err = String;

    fn from_str(s: &str) -> Result<MergeKind, String> {
        match s {
            "append" => Ok(MergeKind::Append),
            "union" => Ok(MergeKind::Union),
            "text" => Ok(MergeKind::Text),
            _ => Err(format!("unknown merge kind {s:?}; accepted: {MERGE_HELP}")),
        }
    }
}

impl fmt::Display for MergeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MergeKind::Append => "append",
            MergeKind::Union => "union",
            MergeKind::Text => "text",
        })
    }
}

impl FromStr for Validator {
    type Err = String;

    fn from_str(s: &str) -> Result<Validator, String> {
        match s {
            "json" => Ok(Validator::Json),
            "jsonl" => Ok(Validator::Jsonl),
            "toml" => Ok(Validator::Toml),
            "yaml" => Ok(Validator::Yaml),
            "sqlite" => Ok(Validator::Sqlite),
            _ => Err(format!(
                "unknown validator {s:?}; accepted: {VALIDATE_HELP}"
            )),
        }
    }
}

impl fmt::Display for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Validator::Json => "json",
            Validator::Jsonl => "jsonl",
            Validator::Toml => "toml",
            Validator::Yaml => "yaml",
            Validator::Sqlite => "sqlite",
        })
    }
}

impl fmt::Display for DeleteLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeleteLimit::Percent(p) => write!(f, "{p}%"),
            DeleteLimit::Count(n) => write!(f, "{n}"),
        }
    }
}

impl FromStr for DeleteLimit {
    type Err = String;

    /// `"50%"` (0 to 100) or a number of files (`"20"`).
    fn from_str(s: &str) -> Result<DeleteLimit, String> {
        let bad = || {
            format!(
                "invalid max_delete {s:?}; accepted: a percentage from 0% to 100% \
                 (e.g. \"50%\") or a number of files (e.g. 20)"
            )
        };
        let t = s.trim();
        if let Some(num) = t.strip_suffix('%') {
            let p: f64 = num.trim().parse().map_err(|_| bad())?;
            if !p.is_finite() || !(0.0..=100.0).contains(&p) {
                return Err(bad());
            }
            Ok(DeleteLimit::Percent(p))
        } else {
            t.parse::<u64>().map(DeleteLimit::Count).map_err(|_| bad())
        }
    }
}

// ---------------------------------------------------------------------------------------
// Replica addresses

impl ReplicaAddr {
    /// Parse a replica root: a local folder (`/abs`, `~/x`, `relative/x`) or
    /// `ssh://[user@]host[:port]/path` (`ssh://host/~/x` is home-relative).
    pub fn parse(s: &str) -> Result<ReplicaAddr, String> {
        if s.trim().is_empty() {
            return Err("empty replica address; give a folder path or \
                        ssh://[user@]host[:port]/path"
                .to_string());
        }
        if let Some(rest) = s.strip_prefix("ssh://") {
            return parse_ssh(s, rest);
        }
        if let Some((scheme, _)) = s.split_once("://") {
            if !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(format!(
                    "unsupported address scheme \"{scheme}://\" in {s:?}; supported: local \
                     folders and ssh://[user@]host[:port]/path"
                ));
            }
        }
        if let Some((host, path)) = s.split_once(':') {
            // `host:path` is how scp and rsync spell a remote; refuse it rather than
            // silently creating a local folder named "host:path".
            let drive_letter = cfg!(windows) && host.len() == 1;
            if !host.is_empty() && !host.contains('/') && !host.starts_with('~') && !drive_letter {
                let suggestion = if path.starts_with('/') {
                    format!("ssh://{host}{path}")
                } else {
                    format!("ssh://{host}/~/{path}")
                };
                return Err(format!(
                    "{s:?} looks like an scp-style remote; write {suggestion:?} \
                     (or \"./{s}\" for a local folder whose name contains ':')"
                ));
            }
        }
        let path = if s == "~" || s.starts_with("~/") {
            let home = std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .ok_or_else(|| format!("cannot expand \"~\" in {s:?}: $HOME is not set"))?;
            let mut p = PathBuf::from(home);
            if let Some(rest) = s.strip_prefix("~/") {
                p.push(rest);
            }
            p
        } else if s.starts_with('~') {
            return Err(format!(
                "{s:?}: only \"~/\" (your own home) is expanded; write the full path"
            ));
        } else {
            let p = Path::new(s);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                let cwd = std::env::current_dir().map_err(|e| {
                    format!("cannot resolve relative path {s:?}: current directory: {e}")
                })?;
                cwd.join(p)
            }
        };
        Ok(ReplicaAddr::Local(normalize_local(&path)))
    }

    pub fn is_local(&self) -> bool {
        matches!(self, ReplicaAddr::Local(_))
    }
}

/// Drop `.` components and trailing slashes (`..` is kept: resolving it lexically would be
/// wrong across symlinks).
fn normalize_local(p: &Path) -> PathBuf {
    p.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

fn parse_ssh(full: &str, rest: &str) -> Result<ReplicaAddr, String> {
    let usage = "expected ssh://[user@]host[:port]/absolute/path or ssh://host/~/path";
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => return Err(format!("{full:?} has no path; {usage}")),
    };
    let (user, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => {
            if u.is_empty() {
                return Err(format!("{full:?} has an empty user name; {usage}"));
            }
            (Some(u.to_string()), h)
        }
        None => (None, authority),
    };
    let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
        // [ipv6]:port
        let (h, after) = inner
            .split_once(']')
            .ok_or_else(|| format!("{full:?}: unclosed '[' in host; {usage}"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("{full:?}: unexpected {p:?} after host; {usage}"))?,
            ),
        };
        (h, port)
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if !hostport.starts_with('[') && hostport.matches(':').count() > 1 {
        return Err(format!(
            "{full:?}: an IPv6 host must be written in brackets, e.g. ssh://[::1]/path"
        ));
    }
    if host.is_empty() {
        return Err(format!("{full:?} has no host name; {usage}"));
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                return Err(format!(
                    "{full:?}: invalid port {p:?}; a port is a number from 1 to 65535"
                ))
            }
        },
    };
    let mut path = path.to_string();
    if path == "/~" || path.starts_with("/~/") {
        path.remove(0);
    }
    while path.len() > 1 && path.ends_with('/') {
        path.pop();
    }
    if path == "~/" {
        path.pop();
    }
    Ok(ReplicaAddr::Ssh {
        user,
        host: host.to_string(),
        port,
        path,
    })
}

impl fmt::Display for ReplicaAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicaAddr::Local(p) => write!(f, "{}", p.display()),
            ReplicaAddr::Ssh {
                user,
                host,
                port,
                path,
            } => {
                f.write_str("ssh://")?;
                if let Some(u) = user {
                    write!(f, "{u}@")?;
                }
                if host.contains(':') {
                    write!(f, "[{host}]")?;
                } else {
                    f.write_str(host)?;
                }
                if let Some(p) = port {
                    write!(f, ":{p}")?;
                }
                if path.starts_with('/') {
                    f.write_str(path)
                } else {
                    write!(f, "/{path}")
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Profile

impl Profile {
    /// Parse profile `name` from `text`; `file_label` is what errors call the file.
    pub fn parse(name: &str, text: &str, file_label: &str) -> Result<Profile, ConfigError> {
        Parser {
            text,
            file: file_label,
        }
        .profile(name)
    }

    /// Read and parse a profile file.
    pub fn load(name: &str, path: &Path) -> Result<Profile, ConfigError> {
        let label = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: label.clone(),
            line: None,
            column: None,
            message: if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "profile {name:?} not found; create it with `fedsync init {name} ROOT ROOT`"
                )
            } else {
                format!("cannot read profile {name:?}: {e}")
            },
        })?;
        Profile::parse(name, &text, &label)
    }

    pub fn replica(&self, name: &str) -> Option<&ReplicaSpec> {
        self.replicas.iter().find(|r| r.name == name)
    }

    /// A default profile for the ad-hoc form `fedsync sync A B` (replica names "a" and "b").
    pub fn adhoc(a: ReplicaAddr, b: ReplicaAddr, raw_a: String, raw_b: String) -> Profile {
        let replica = |name: &str, addr, raw| ReplicaSpec {
            name: name.to_string(),
            addr,
            optional: false,
            raw,
        };
        Profile {
            replicas: vec![replica("a", a, raw_a), replica("b", b, raw_b)],
            ..Profile::defaults("adhoc")
        }
    }

    fn defaults(name: &str) -> Profile {
        Profile {
            name: name.to_string(),
            replicas: Vec::new(),
            paths: Vec::new(),
            ignore: Vec::new(),
            conflict: Policy::KeepBoth,
            max_delete: DeleteLimit::Percent(50.0),
            versions: Retention::default(),
            rules: Vec::new(),
            ssh: None,
            remote_cmd: None,
            interval: None,
            on_failure: None,
        }
    }

    /// The text `fedsync init` writes: the replicas (name, root as typed) and every other
    /// setting as a commented-out default. Parses with [`Profile::parse`] as is, and also
    /// after uncommenting every `# key = value` line.
    pub fn render_init(replicas: &[(String, String)]) -> String {
        let mut out = String::new();
        out.push_str(
            "# fedsync profile: the replicas to keep identical and how.\n\
             # The commented lines show the defaults; remove the leading '#' to change one.\n\
             \n\
             # paths      = [\"docs/\", \"README.md\"]       # what to sync (gitignore-style); default: everything\n\
             # ignore     = [\".git/\", \"node_modules/\", \"*.pyc\", \".DS_Store\"]\n\
             # conflict   = \"keep-both\"                  # or newest, prefer:<replica>, ask\n\
             # max_delete = \"50%\"                        # or a number of files; more needs --force\n\
             # versions   = { keep = 10, max_age = \"90d\" } # default: keep every old version\n\
             # interval   = \"5m\"                         # full rescan period for `fedsync watch`\n\
             # on_failure = \"notify-send fedsync 'sync failed'\"\n\
             # ssh        = \"ssh -o BatchMode=yes\"\n\
             # remote_cmd = \"~/.cargo/bin/fedsync\"       # fedsync on remote hosts, if not on PATH\n\
             \n\
             [replicas]\n",
        );
        for (name, root) in replicas {
            out.push_str(&toml_key(name));
            out.push_str(" = ");
            out.push_str(&toml::Value::String(root.clone()).to_string());
            out.push('\n');
        }
        let from = replicas.first().map_or("a", |r| r.0.as_str());
        let to = replicas.get(1).map_or("b", |r| r.0.as_str());
        out.push_str(&format!(
            "\n\
             # Per-path rules apply in order; a later rule overrides the keys it sets.\n\
             # [[rule]]\n\
             # paths = [\"logs/*.jsonl\"]\n\
             # direction = \"{from} -> {to}\"      # one-way\n\
             # merge = \"append\"                  # or union, text\n\
             #\n\
             # [[rule]]\n\
             # paths = [\"tasks.json\"]\n\
             # validate = \"json\"                 # or jsonl, toml, yaml, sqlite\n\
             # conflict = \"ask\"\n"
        ));
        out
    }
}

fn toml_key(name: &str) -> String {
    if is_valid_replica_name(name) {
        name.to_string()
    } else {
        toml::Value::String(name.to_string()).to_string()
    }
}

// ---------------------------------------------------------------------------------------
// The parser proper

/// A borrowed view of a TOML value that may be a document item or an inline value.
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Value(&'a Value),
    Table(&'a Table),
}

/// A key and its value.
#[derive(Clone, Copy)]
struct Entry<'a> {
    name: &'a str,
    key_pos: Option<usize>,
    node: Node<'a>,
}

impl<'a> Entry<'a> {
    /// Where the value starts (implicit tables have no span: then the key).
    fn pos(&self) -> Option<usize> {
        self.node.pos().or(self.key_pos)
    }
}

impl<'a> Node<'a> {
    fn value(self) -> Option<&'a Value> {
        match self {
            Node::Item(Item::Value(v)) | Node::Value(v) => Some(v),
            _ => None,
        }
    }

    fn pos(self) -> Option<usize> {
        match self {
            Node::Item(i) => i.span(),
            Node::Value(v) => v.span(),
            Node::Table(t) => t.span(),
        }
        .map(|r| r.start)
    }

    fn as_str(self) -> Option<&'a str> {
        self.value()?.as_str()
    }

    /// The entries of a table or inline table, in file order.
    fn entries(self) -> Option<Vec<Entry<'a>>> {
        let table = match self {
            Node::Table(t) | Node::Item(Item::Table(t)) => t,
            _ => {
                let t = self.value()?.as_inline_table()?;
                return Some(
                    t.iter()
                        .map(|(k, v)| Entry {
                            name: k,
                            key_pos: t.key(k).and_then(|k| k.span()).map(|r| r.start),
                            node: Node::Value(v),
                        })
                        .collect(),
                );
            }
        };
        Some(
            table
                .iter()
                .map(|(k, it)| Entry {
                    name: k,
                    key_pos: table.key(k).and_then(|k| k.span()).map(|r| r.start),
                    node: Node::Item(it),
                })
                .collect(),
        )
    }

    /// The elements of an array or array of tables.
    fn elements(self) -> Option<Vec<Node<'a>>> {
        match self {
            Node::Item(Item::ArrayOfTables(a)) => Some(a.iter().map(Node::Table).collect()),
            _ => Some(self.value()?.as_array()?.iter().map(Node::Value).collect()),
        }
    }

    fn type_name(self) -> &'static str {
        match self {
            Node::Table(_) | Node::Item(Item::Table(_)) => "a table",
            Node::Item(Item::ArrayOfTables(_)) => "an array of tables",
            Node::Item(Item::None) => "nothing",
            _ => match self.value() {
                Some(Value::String(_)) => "a string",
                Some(Value::Integer(_)) => "an integer",
                Some(Value::Float(_)) => "a float",
                Some(Value::Boolean(_)) => "a boolean",
                Some(Value::Datetime(_)) => "a date-time",
                Some(Value::Array(_)) => "an array",
                Some(Value::InlineTable(_)) => "a table",
                None => "nothing",
            },
        }
    }
}

struct Parser<'t> {
    text: &'t str,
    file: &'t str,
}

/// A setting found at the top level or hoisted out of `[replicas]`.
struct Settings<'a> {
    found: Vec<Entry<'a>>,
}

impl<'a> Settings<'a> {
    fn get(&self, key: &str) -> Option<Entry<'a>> {
        self.found.iter().copied().find(|e| e.name == key)
    }
}

impl Parser<'_> {
    fn err(&self, pos: Option<usize>, message: impl Into<String>) -> ConfigError {
        let (line, column) = match pos {
            Some(p) => {
                let (l, c) = line_col(self.text, p);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        ConfigError {
            file: self.file.to_string(),
            line,
            column,
            message: message.into(),
        }
    }

    fn type_err(&self, e: &Entry<'_>, expected: &str) -> ConfigError {
        self.err(
            e.pos(),
            format!(
                "`{}` must be {expected}, not {}",
                e.name,
                e.node.type_name()
            ),
        )
    }

    fn profile(&self, name: &str) -> Result<Profile, ConfigError> {
        let doc = ImDocument::parse(self.text).map_err(|e| {
            let msg = e.message().trim().replace('\n', "; ");
            self.err(e.span().map(|r| r.start), format!("invalid TOML: {msg}"))
        })?;
        let root = Node::Table(doc.as_table());

        let mut settings = Settings { found: Vec::new() };
        let mut replica_entries: Vec<Entry<'_>> = Vec::new();
        let mut replicas_pos = None;
        let mut rule_entry = None;
        for e in root.entries().unwrap_or_default() {
            match e.name {
                "replicas" => {
                    replicas_pos = e.key_pos;
                    let entries = e.node.entries().ok_or_else(|| {
                        self.type_err(&e, "a table of NAME = \"root\" entries ([replicas])")
                    })?;
                    for r in entries {
                        if SETTING_KEYS.contains(&r.name) && !is_replica_table(r.node) {
                            self.add_setting(&mut settings, r)?;
                        } else {
                            replica_entries.push(r);
                        }
                    }
                }
                "rule" => rule_entry = Some(e),
                k if SETTING_KEYS.contains(&k) => self.add_setting(&mut settings, e)?,
                k => {
                    return Err(self.err(
                        e.key_pos,
                        format!("unknown key `{k}`; accepted top-level keys: {TOP_KEYS_HELP}"),
                    ))
                }
            }
        }

        let mut p = Profile::defaults(name);
        for r in &replica_entries {
            p.replicas.push(self.replica(r)?);
        }
        if p.replicas.len() < 2 {
            let found = match p.replicas.first() {
                Some(r) => format!("only {:?}", r.name),
                None => "none".to_string(),
            };
            return Err(self.err(
                replicas_pos,
                format!(
                    "a profile needs at least two replicas under [replicas] (found {found}), \
                     e.g. laptop = \"~/notes\" and server = \"ssh://server/~/notes\""
                ),
            ));
        }

        if let Some(e) = settings.get("paths") {
            p.paths = self.patterns(&e)?;
        }
        if let Some(e) = settings.get("ignore") {
            p.ignore = self.patterns(&e)?;
        }
        if let Some(e) = settings.get("conflict") {
            p.conflict = self.policy(&e, &p)?;
            if p.conflict == Policy::Merge {
                return Err(self.err(
                    e.pos(),
                    "conflict = \"merge\" needs a merge kind, which is set per path: use a \
                     [[rule]] with paths = [...] and merge = \"append\" | \"union\" | \"text\"",
                ));
            }
        }
        if let Some(e) = settings.get("max_delete") {
            p.max_delete = self.max_delete(&e)?;
        }
        if let Some(e) = settings.get("versions") {
            p.versions = self.versions(&e)?;
        }
        if let Some(e) = settings.get("interval") {
            p.interval = Some(self.duration(&e)?);
        }
        p.ssh = self.opt_command(settings.get("ssh"))?;
        p.remote_cmd = self.opt_command(settings.get("remote_cmd"))?;
        p.on_failure = self.opt_command(settings.get("on_failure"))?;

        if let Some(e) = rule_entry {
            let tables = e
                .node
                .elements()
                .ok_or_else(|| self.type_err(&e, "a list of [[rule]] tables"))?;
            for (i, t) in tables.into_iter().enumerate() {
                p.rules.push(self.rule(i + 1, t, &p)?);
            }
        }
        Ok(p)
    }

    fn add_setting<'a>(&self, s: &mut Settings<'a>, e: Entry<'a>) -> Result<(), ConfigError> {
        if let Some(prev) = s.get(e.name) {
            let (l, _) = line_col(self.text, prev.key_pos.unwrap_or(0));
            return Err(self.err(
                e.key_pos,
                format!("`{}` is set twice (first at line {l}); keep one", e.name),
            ));
        }
        s.found.push(e);
        Ok(())
    }

    fn replica(&self, e: &Entry<'_>) -> Result<ReplicaSpec, ConfigError> {
        if !is_valid_replica_name(e.name) {
            return Err(self.err(
                e.key_pos,
                format!(
                    "invalid replica name {:?}: use only letters, digits, '_' and '-'",
                    e.name
                ),
            ));
        }
        let shape =
            "a root (a folder or ssh:// address) or a table { root = \"...\", optional = true }";
        let (root_node, root_pos, optional) = if e.node.as_str().is_some() {
            (e.node, e.pos(), false)
        } else if let Some(entries) = e.node.entries() {
            let mut root = None;
            let mut optional = false;
            for f in entries {
                match f.name {
                    "root" => root = Some(f),
                    "optional" => match f.node.value().and_then(|v| v.as_bool()) {
                        Some(b) => optional = b,
                        None => return Err(self.type_err(&f, "true or false")),
                    },
                    k => {
                        return Err(self.err(
                            f.key_pos,
                            format!(
                                "unknown key `{k}` in replica {:?}; accepted: root, optional",
                                e.name
                            ),
                        ))
                    }
                }
            }
            let root = root.ok_or_else(|| {
                self.err(
                    e.pos(),
                    format!("replica {:?} has no `root`; {shape}", e.name),
                )
            })?;
            (root.node, root.pos(), optional)
        } else {
            return Err(self.err(
                e.pos(),
                format!(
                    "replica {:?} must be {shape}, not {}",
                    e.name,
                    e.node.type_name()
                ),
            ));
        };
        let raw = root_node.as_str().ok_or_else(|| {
            self.err(
                root_pos,
                format!(
                    "the root of replica {:?} must be a string, not {}",
                    e.name,
                    root_node.type_name()
                ),
            )
        })?;
        let addr = ReplicaAddr::parse(raw)
            .map_err(|m| self.err(root_pos, format!("replica {:?}: {m}", e.name)))?;
        Ok(ReplicaSpec {
            name: e.name.to_string(),
            addr,
            optional,
            raw: raw.to_string(),
        })
    }

    /// A list of gitignore-style patterns (a single string is accepted as a list of one).
    fn patterns(&self, e: &Entry<'_>) -> Result<Vec<String>, ConfigError> {
        let expected = "a list of patterns, e.g. [\"docs/\", \"*.md\"]";
        let nodes: Vec<(Node<'_>, Option<usize>)> = if e.node.as_str().is_some() {
            vec![(e.node, e.pos())]
        } else {
            e.node
                .elements()
                .ok_or_else(|| self.type_err(e, expected))?
                .into_iter()
                .map(|n| (n, n.pos()))
                .collect()
        };
        let mut out = Vec::with_capacity(nodes.len());
        for (n, pos) in nodes {
            let s = n.as_str().ok_or_else(|| {
                self.err(
                    pos,
                    format!(
                        "`{}` must be {expected}; this element is {}",
                        e.name,
                        n.type_name()
                    ),
                )
            })?;
            if s.trim().is_empty() {
                return Err(self.err(pos, format!("empty pattern in `{}`", e.name)));
            }
            crate::rules::check_pattern(s).map_err(|m| {
                self.err(pos, format!("invalid pattern {s:?} in `{}`: {m}", e.name))
            })?;
            out.push(s.to_string());
        }
        Ok(out)
    }

    fn policy(&self, e: &Entry<'_>, p: &Profile) -> Result<Policy, ConfigError> {
        let s = e
            .node
            .as_str()
            .ok_or_else(|| self.type_err(e, &format!("a string, one of: {POLICY_HELP}")))?;
        let policy: Policy = s.parse().map_err(|m: String| self.err(e.pos(), m))?;
        if let Policy::Prefer(r) = &policy {
            if p.replica(r).is_none() {
                return Err(self.err(
                    e.pos(),
                    format!(
                        "conflict policy {s:?} names replica {r:?}, which is not in [replicas] \
                         (replicas: {})",
                        replica_names(p)
                    ),
                ));
            }
        }
        Ok(policy)
    }

    fn max_delete(&self, e: &Entry<'_>) -> Result<DeleteLimit, ConfigError> {
        match e.node.value() {
            Some(Value::Integer(i)) => {
                let n = *i.value();
                u64::try_from(n).map(DeleteLimit::Count).map_err(|_| {
                    self.err(
                        e.pos(),
                        format!(
                            "invalid max_delete {n}; accepted: a percentage from 0% to 100% \
                             (e.g. \"50%\") or a number of files (e.g. 20)"
                        ),
                    )
                })
            }
            Some(Value::String(s)) => s.value().parse().map_err(|m: String| self.err(e.pos(), m)),
            _ => Err(self.type_err(e, "a percentage like \"50%\" or a number of files like 20")),
        }
    }

    fn versions(&self, e: &Entry<'_>) -> Result<Retention, ConfigError> {
        let entries = e
            .node
            .entries()
            .ok_or_else(|| self.type_err(e, "a table like { keep = 10, max_age = \"90d\" }"))?;
        let mut r = Retention::default();
        for f in entries {
            match f.name {
                "keep" => {
                    let n = f.node.value().and_then(|v| v.as_integer());
                    match n.map(u32::try_from) {
                        Some(Ok(k)) if k >= 1 => r.keep = Some(k),
                        Some(_) => {
                            return Err(self.err(
                                f.pos(),
                                "versions.keep must be at least 1 (omit it to keep every version)",
                            ))
                        }
                        None => return Err(self.type_err(&f, "a whole number of versions")),
                    }
                }
                "max_age" => r.max_age = Some(self.duration(&f)?),
                k => {
                    return Err(self.err(
                        f.key_pos,
                        format!("unknown key `{k}` in versions; accepted: keep, max_age"),
                    ))
                }
            }
        }
        Ok(r)
    }

    fn duration(&self, e: &Entry<'_>) -> Result<Duration, ConfigError> {
        let s = e
            .node
            .as_str()
            .ok_or_else(|| self.type_err(e, DURATION_HELP))?;
        match humantime::parse_duration(s.trim()) {
            Ok(d) if d.is_zero() => Err(self.err(
                e.pos(),
                format!(
                    "`{}` must be longer than zero; accepted: {DURATION_HELP}",
                    e.name
                ),
            )),
            Ok(d) => Ok(d),
            Err(m) => Err(self.err(
                e.pos(),
                format!(
                    "invalid duration {s:?} for `{}`: {m}; accepted: {DURATION_HELP}",
                    e.name
                ),
            )),
        }
    }

    fn opt_command(&self, e: Option<Entry<'_>>) -> Result<Option<String>, ConfigError> {
        let Some(e) = e else { return Ok(None) };
        match e.node.as_str() {
            Some(s) if !s.trim().is_empty() => Ok(Some(s.to_string())),
            Some(_) => Err(self.err(
                e.pos(),
                format!("`{}` is empty; give a command or remove the line", e.name),
            )),
            None => Err(self.type_err(&e, "a command string")),
        }
    }

    fn rule(&self, index: usize, node: Node<'_>, p: &Profile) -> Result<RuleSpec, ConfigError> {
        let entries = node.entries().ok_or_else(|| {
            self.err(
                node.pos(),
                format!(
                    "rule {index} must be a table ([[rule]]), not {}",
                    node.type_name()
                ),
            )
        })?;
        let mut r = RuleSpec {
            paths: Vec::new(),
            direction: None,
            conflict: None,
            merge: None,
            validate: None,
        };
        let mut have_paths = false;
        let mut conflict_entry = None;
        for f in entries {
            match f.name {
                "paths" => {
                    r.paths = self.patterns(&f)?;
                    if r.paths.is_empty() {
                        return Err(self.err(
                            f.pos(),
                            format!(
                                "rule {index} has an empty `paths`; list the patterns it \
                                 applies to, e.g. [\"logs/*.jsonl\"]"
                            ),
                        ));
                    }
                    have_paths = true;
                }
                "direction" => {
                    let s = f
                        .node
                        .as_str()
                        .ok_or_else(|| self.type_err(&f, "a string like \"server -> laptop\""))?;
                    let d: Direction = s.parse().map_err(|m: String| self.err(f.pos(), m))?;
                    for side in [&d.from, &d.to] {
                        if p.replica(side).is_none() {
                            return Err(self.err(
                                f.pos(),
                                format!(
                                    "direction {s:?} names replica {side:?}, which is not in \
                                     [replicas] (replicas: {})",
                                    replica_names(p)
                                ),
                            ));
                        }
                    }
                    r.direction = Some(d);
                }
                "conflict" => {
                    r.conflict = Some(self.policy(&f, p)?);
                    conflict_entry = Some(f);
                }
                "merge" => {
                    let s = f
                        .node
                        .as_str()
                        .ok_or_else(|| self.type_err(&f, &format!("one of: {MERGE_HELP}")))?;
                    r.merge = Some(s.parse().map_err(|m: String| self.err(f.pos(), m))?);
                }
                "validate" => {
                    let s = f
                        .node
                        .as_str()
                        .ok_or_else(|| self.type_err(&f, &format!("one of: {VALIDATE_HELP}")))?;
                    r.validate = Some(s.parse().map_err(|m: String| self.err(f.pos(), m))?);
                }
                k => {
                    return Err(self.err(
                        f.key_pos,
                        format!("unknown key `{k}` in rule {index}; accepted: {RULE_KEYS_HELP}"),
                    ))
                }
            }
        }
        if !have_paths {
            return Err(self.err(
                node.pos(),
                format!(
                    "rule {index} has no `paths`; every [[rule]] needs paths = [\"pattern\", ...]"
                ),
            ));
        }
        match (&r.conflict, r.merge) {
            (None, Some(_)) => r.conflict = Some(Policy::Merge),
            (Some(Policy::Merge), None) => {
                return Err(self.err(
                    conflict_entry.and_then(|e| e.pos()),
                    format!(
                        "rule {index} sets conflict = \"merge\" without a merge kind; add \
                         merge = \"append\" | \"union\" | \"text\""
                    ),
                ))
            }
            _ => {}
        }
        Ok(r)
    }
}

/// A value under `[replicas]` that is a replica table (has a `root`), as opposed to a
/// setting such as `versions = { keep = 10 }`.
fn is_replica_table(n: Node<'_>) -> bool {
    n.entries()
        .is_some_and(|es| es.iter().any(|e| e.name == "root"))
}

fn replica_names(p: &Profile) -> String {
    p.replicas
        .iter()
        .map(|r| r.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// 1-based line and column (in characters) of byte offset `pos`.
fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let mut pos = pos.min(text.len());
    while !text.is_char_boundary(pos) {
        pos -= 1;
    }
    let before = &text[..pos];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = "[replicas]\na = \"/srv/a\"\nb = \"/srv/b\"\n";

    fn parse(text: &str) -> Result<Profile, ConfigError> {
        Profile::parse("t", text, "t.toml")
    }

    /// Parse `text`, expect an error at `line`:`col` whose message contains `needle`.
    #[track_caller]
    fn err_at(text: &str, line: usize, col: usize, needle: &str) -> ConfigError {
        let e = parse(text).expect_err("expected an error");
        assert_eq!(
            (e.line, e.column),
            (Some(line), Some(col)),
            "wrong position for: {e}"
        );
        assert!(e.message.contains(needle), "{e:?} lacks {needle:?}");
        e
    }

    fn home() -> PathBuf {
        PathBuf::from(std::env::var_os("HOME").expect("HOME set in tests"))
    }

    const SPEC_EXAMPLE: &str = r#"[replicas]
laptop = "~/UBOS"
balaur = "ssh://balaur@10.0.0.2/srv/janus/repo"
usb    = { root = "/Volumes/usb/UBOS", optional = true }   # absent or unmarked: skipped with a warning
desktop = "/srv/desktop/UBOS"

paths  = ["docs/", "config/", "missions/", "ROADMAP.md"]     # what to sync; default: everything
ignore = ["*_state.json", ".git/", "node_modules/", "__pycache__/", "*.pyc", ".DS_Store"]
conflict   = "keep-both"     # default policy, see 4
max_delete = "50%"           # or a count; a run that would delete more on any replica is refused
versions   = { keep = 10, max_age = "90d" }

[[rule]]
paths = ["logs/*.jsonl"]
direction = "balaur -> laptop"   # one-way: changes on laptop are never sent; see 4
merge = "append"

[[rule]]
paths = ["tasks.json"]
validate = "json"
conflict = "ask"

[[rule]]
paths = ["reports/**"]
conflict = "prefer:desktop"
"#;

    #[test]
    fn spec_example_parses_as_meant() {
        let p = parse(SPEC_EXAMPLE).unwrap();
        assert_eq!(p.name, "t");
        let names: Vec<_> = p.replicas.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["laptop", "balaur", "usb", "desktop"]);
        assert_eq!(p.replicas[0].addr, ReplicaAddr::Local(home().join("UBOS")));
        assert_eq!(p.replicas[0].raw, "~/UBOS");
        assert_eq!(
            p.replicas[1].addr,
            ReplicaAddr::Ssh {
                user: Some("balaur".into()),
                host: "10.0.0.2".into(),
                port: None,
                path: "/srv/janus/repo".into()
            }
        );
        assert!(p.replicas[2].optional && !p.replicas[0].optional);
        assert_eq!(
            p.replicas[2].addr,
            ReplicaAddr::Local("/Volumes/usb/UBOS".into())
        );
        assert_eq!(p.paths, ["docs/", "config/", "missions/", "ROADMAP.md"]);
        assert_eq!(p.ignore.len(), 6);
        assert_eq!(p.ignore[0], "*_state.json");
        assert_eq!(p.conflict, Policy::KeepBoth);
        assert_eq!(p.max_delete, DeleteLimit::Percent(50.0));
        assert_eq!(
            p.versions,
            Retention {
                keep: Some(10),
                max_age: Some(Duration::from_secs(90 * 86400))
            }
        );
        assert_eq!(p.rules.len(), 3);
        assert_eq!(
            p.rules[0],
            RuleSpec {
                paths: vec!["logs/*.jsonl".into()],
                direction: Some(Direction {
                    from: "balaur".into(),
                    to: "laptop".into()
                }),
                conflict: Some(Policy::Merge),
                merge: Some(MergeKind::Append),
                validate: None,
            }
        );
        assert_eq!(p.rules[1].validate, Some(Validator::Json));
        assert_eq!(p.rules[1].conflict, Some(Policy::Ask));
        assert_eq!(p.rules[2].conflict, Some(Policy::Prefer("desktop".into())));
        assert_eq!(p.ssh, None);
        assert_eq!(p.interval, None);
        assert_eq!(p.replica("usb").unwrap().name, "usb");
        assert!(p.replica("nope").is_none());
    }

    #[test]
    fn spec_example_without_desktop_points_at_prefer() {
        let text = SPEC_EXAMPLE.replace("desktop = \"/srv/desktop/UBOS\"\n", "");
        err_at(&text, 24, 12, "\"desktop\", which is not in [replicas]");
    }

    #[test]
    fn minimal_profile_gets_defaults() {
        let p = parse(TWO).unwrap();
        assert_eq!(p.replicas.len(), 2);
        assert!(p.paths.is_empty() && p.ignore.is_empty() && p.rules.is_empty());
        assert_eq!(p.conflict, Policy::KeepBoth);
        assert_eq!(p.max_delete, DeleteLimit::Percent(50.0));
        assert_eq!(p.versions, Retention::default());
        assert_eq!((p.ssh, p.remote_cmd, p.on_failure), (None, None, None));
    }

    #[test]
    fn top_level_settings_before_replicas_and_optional_keys() {
        let p = parse(
            "ssh = \"ssh -F /dev/null\"\nremote_cmd = \"/opt/fedsync\"\ninterval = \"1h30m\"\n\
             on_failure = \"notify-send x\"\nmax_delete = 20\n[replicas]\na = \"/a\"\nb = \"/b\"\n",
        )
        .unwrap();
        assert_eq!(p.ssh.as_deref(), Some("ssh -F /dev/null"));
        assert_eq!(p.remote_cmd.as_deref(), Some("/opt/fedsync"));
        assert_eq!(p.interval, Some(Duration::from_secs(5400)));
        assert_eq!(p.on_failure.as_deref(), Some("notify-send x"));
        assert_eq!(p.max_delete, DeleteLimit::Count(20));
    }

    #[test]
    fn syntax_error_has_position() {
        let e = err_at("[replicas]\na = \"/a\"\nb = [1 2]\n", 3, 8, "invalid TOML");
        assert!(e.to_string().starts_with("t.toml:3:8: invalid TOML"), "{e}");
        // At the end of the input: the line after the last newline.
        err_at("[replicas]\na = \"/a\"\nb = [1,\n", 4, 1, "expected `]`");
        err_at(
            "[replicas]\na = \"/a\nb = 1\n",
            2,
            8,
            "invalid basic string",
        );
    }

    #[test]
    fn unknown_top_level_key() {
        let e = err_at(
            &format!("conflcit = \"newest\"\n{TWO}"),
            1,
            1,
            "unknown key `conflcit`",
        );
        assert!(e.message.contains("max_delete"), "lists accepted keys: {e}");
        err_at(
            &format!("{TWO}[extra]\nx = 1\n"),
            4,
            2,
            "unknown key `extra`",
        );
    }

    #[test]
    fn unknown_key_in_rule_and_versions_and_replica() {
        err_at(
            &format!("{TWO}[[rule]]\npaths = [\"x\"]\n  confict = \"ask\"\n"),
            6,
            3,
            "unknown key `confict` in rule 1",
        );
        err_at(
            &format!("versions = {{ keep = 3, max_ag = \"1d\" }}\n{TWO}"),
            1,
            24,
            "unknown key `max_ag` in versions",
        );
        err_at(
            "[replicas]\na = { root = \"/a\", optinal = true }\nb = \"/b\"\n",
            2,
            20,
            "unknown key `optinal` in replica \"a\"",
        );
    }

    #[test]
    fn unknown_policy() {
        let e = err_at(
            &format!("{TWO}conflict = \"newer\"\n"),
            4,
            12,
            "unknown conflict policy \"newer\"",
        );
        assert!(e
            .message
            .contains("keep-both, newest, prefer:<replica>, ask, merge"));
        err_at(
            &format!("{TWO}[[rule]]\npaths = [\"x\"]\nconflict = \"theirs\"\n"),
            6,
            12,
            "unknown conflict policy",
        );
        err_at(&format!("{TWO}conflict = 3\n"), 4, 12, "must be a string");
    }

    #[test]
    fn prefer_names_unknown_replica() {
        err_at(
            &format!("conflict = \"prefer:c\"\n{TWO}"),
            1,
            12,
            "names replica \"c\", which is not in [replicas] (replicas: a, b)",
        );
        let p = parse(&format!("conflict = \"prefer:b\"\n{TWO}")).unwrap();
        assert_eq!(p.conflict, Policy::Prefer("b".into()));
        err_at(
            &format!("conflict = \"prefer:\"\n{TWO}"),
            1,
            12,
            "prefer:<replica>",
        );
    }

    #[test]
    fn direction_errors() {
        let rule = |d: &str| format!("{TWO}[[rule]]\npaths = [\"logs/\"]\ndirection = \"{d}\"\n");
        err_at(&rule("a to b"), 6, 13, "expected \"FROM -> TO\"");
        err_at(&rule("a -> "), 6, 13, "expected \"FROM -> TO\"");
        err_at(&rule("a -> c"), 6, 13, "names replica \"c\"");
        err_at(&rule("a -> a"), 6, 13, "two different replicas");
        let p = parse(&rule("b->a")).unwrap();
        assert_eq!(
            p.rules[0].direction,
            Some(Direction {
                from: "b".into(),
                to: "a".into()
            })
        );
        assert_eq!(p.rules[0].direction.as_ref().unwrap().to_string(), "b -> a");
    }

    #[test]
    fn max_delete_forms() {
        let md = |v: &str| parse(&format!("max_delete = {v}\n{TWO}")).map(|p| p.max_delete);
        assert_eq!(md("20").unwrap(), DeleteLimit::Count(20));
        assert_eq!(md("\"20\"").unwrap(), DeleteLimit::Count(20));
        assert_eq!(md("0").unwrap(), DeleteLimit::Count(0));
        assert_eq!(md("\"12.5%\"").unwrap(), DeleteLimit::Percent(12.5));
        assert_eq!(md("\"100%\"").unwrap(), DeleteLimit::Percent(100.0));
        for bad in ["\"150%\"", "-1", "\"-1\"", "\"abc\"", "\"-5%\"", "\"nan%\""] {
            err_at(
                &format!("max_delete = {bad}\n{TWO}"),
                1,
                14,
                "invalid max_delete",
            );
        }
        err_at(&format!("max_delete = 2.5\n{TWO}"), 1, 14, "not a float");
    }

    #[test]
    fn bad_durations() {
        err_at(
            &format!("interval = \"5 parsecs\"\n{TWO}"),
            1,
            12,
            "invalid duration \"5 parsecs\" for `interval`",
        );
        err_at(
            &format!("versions = {{ max_age = \"soon\" }}\n{TWO}"),
            1,
            24,
            "invalid duration \"soon\" for `max_age`",
        );
        err_at(
            &format!("interval = \"0s\"\n{TWO}"),
            1,
            12,
            "longer than zero",
        );
        err_at(
            &format!("interval = 300\n{TWO}"),
            1,
            12,
            "must be a duration",
        );
        let p = parse(&format!("interval = \"5m\"\n{TWO}")).unwrap();
        assert_eq!(p.interval, Some(Duration::from_secs(300)));
    }

    #[test]
    fn versions_keep_must_be_positive() {
        err_at(
            &format!("versions = {{ keep = 0 }}\n{TWO}"),
            1,
            21,
            "at least 1",
        );
        err_at(&format!("versions = 10\n{TWO}"), 1, 12, "must be a table");
        let p = parse(&format!("[versions]\nkeep = 3\n{TWO}")).unwrap();
        assert_eq!(p.versions.keep, Some(3));
        assert_eq!(p.versions.max_age, None);
    }

    #[test]
    fn fewer_than_two_replicas() {
        let e = err_at(
            "\n[replicas]\nonly = \"/x\"\n",
            2,
            2,
            "at least two replicas",
        );
        assert!(e.message.contains("only \"only\""), "{e}");
        let e = parse("paths = [\"a\"]\n").unwrap_err();
        assert_eq!((e.line, e.column), (None, None));
        assert!(e.message.contains("found none"));
        assert_eq!(e.to_string(), format!("t.toml: {}", e.message));
    }

    #[test]
    fn bad_replica_names_and_values() {
        err_at(
            "[replicas]\na = \"/a\"\n\"my laptop\" = \"/b\"\n",
            3,
            1,
            "invalid replica name \"my laptop\"",
        );
        err_at("[replicas]\na = \"/a\"\nb = 5\n", 3, 5, "must be a root");
        err_at(
            "[replicas]\na = \"/a\"\nb = { optional = true }\n",
            3,
            5,
            "has no `root`",
        );
        err_at(
            "[replicas]\na = \"/a\"\nb = \"\"\n",
            3,
            5,
            "empty replica address",
        );
        err_at(
            "[replicas]\na = \"/a\"\nb = { root = \"/b\", optional = \"yes\" }\n",
            3,
            31,
            "true or false",
        );
    }

    #[test]
    fn replica_table_header_form() {
        let p = parse(
            "[replicas]\na = \"/a\"\n[replicas.usb]\nroot = \"/media/usb\"\noptional = true\n",
        )
        .unwrap();
        assert_eq!(p.replicas[1].name, "usb");
        assert!(p.replicas[1].optional);
        // Without the [replicas] header the table is implicit: still fine.
        let p = parse("[replicas.a]\nroot = \"/a\"\n[replicas.b]\nroot = \"/b\"\n").unwrap();
        assert_eq!(p.replicas.len(), 2);
        // A replica named like a setting is possible with the table form.
        let p = parse("[replicas]\na = \"/a\"\nssh = { root = \"/b\" }\n").unwrap();
        assert_eq!(p.replicas[1].name, "ssh");
        assert_eq!(p.ssh, None);
    }

    #[test]
    fn rule_paths_required_and_non_empty() {
        err_at(
            &format!("{TWO}\n[[rule]]\nconflict = \"ask\"\n"),
            5,
            1,
            "rule 1 has no `paths`",
        );
        err_at(
            &format!("{TWO}[[rule]]\npaths = [\"a\"]\n[[rule]]\npaths = []\n"),
            7,
            9,
            "rule 2 has an empty `paths`",
        );
        err_at(
            &format!("{TWO}[[rule]]\npaths = [\"ok\", 3]\n"),
            5,
            16,
            "this element is an integer",
        );
        err_at(
            &format!("{TWO}[[rule]]\npaths = [\"\"]\n"),
            5,
            10,
            "empty pattern",
        );
    }

    #[test]
    fn merge_and_validate() {
        let rule = |body: &str| format!("{TWO}[[rule]]\npaths = [\"x\"]\n{body}\n");
        err_at(
            &rule("merge = \"zip\""),
            6,
            9,
            "unknown merge kind \"zip\"; accepted: append, union, text",
        );
        err_at(
            &rule("validate = \"xml\""),
            6,
            12,
            "unknown validator \"xml\"; accepted: json, jsonl",
        );
        // merge implies conflict = merge, unless conflict is explicit.
        let p = parse(&rule("merge = \"union\"")).unwrap();
        assert_eq!(p.rules[0].conflict, Some(Policy::Merge));
        assert_eq!(p.rules[0].merge, Some(MergeKind::Union));
        let p = parse(&rule("merge = \"text\"\nconflict = \"ask\"")).unwrap();
        assert_eq!(p.rules[0].conflict, Some(Policy::Ask));
        let p = parse(&rule("validate = \"sqlite\"")).unwrap();
        assert_eq!(p.rules[0].validate, Some(Validator::Sqlite));
        assert_eq!(p.rules[0].conflict, None);
        // conflict = "merge" without a kind says what is missing.
        err_at(&rule("conflict = \"merge\""), 6, 12, "without a merge kind");
        err_at(
            &format!("conflict = \"merge\"\n{TWO}"),
            1,
            12,
            "needs a merge kind",
        );
    }

    #[test]
    fn setting_set_twice() {
        err_at(
            "conflict = \"ask\"\n[replicas]\na = \"/a\"\nb = \"/b\"\nconflict = \"newest\"\n",
            5,
            1,
            "`conflict` is set twice (first at line 1)",
        );
    }

    #[test]
    fn type_errors_and_patterns() {
        err_at(
            &format!("paths = 5\n{TWO}"),
            1,
            9,
            "`paths` must be a list of patterns",
        );
        err_at(
            &format!("{TWO}ignore = {{ a = 1 }}\n"),
            4,
            10,
            "must be a list",
        );
        err_at(&format!("{TWO}ssh = \"\"\n"), 4, 7, "`ssh` is empty");
        err_at(
            &format!("{TWO}on_failure = true\n"),
            4,
            14,
            "must be a command string",
        );
        err_at(
            &format!("ignore = [\"ok\", \"[abc\"]\n{TWO}"),
            1,
            17,
            "invalid pattern \"[abc\"",
        );
        // a single string is accepted as a list of one
        let p = parse(&format!("ignore = \"*.tmp\"\n{TWO}")).unwrap();
        assert_eq!(p.ignore, ["*.tmp"]);
        err_at(&format!("rule = 3\n{TWO}"), 1, 8, "list of [[rule]] tables");
        err_at(
            &format!("{TWO}when = 1979-05-27T07:32:00Z\n"),
            4,
            8,
            "must be a root (a folder or ssh:// address) or a table { root = \"...\", optional = true }, not a date-time",
        );
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        err_at(
            &format!("ignore = [\"é\", \"ü\"] ; bad = 1\n{TWO}"),
            1,
            21,
            "invalid TOML",
        );
        err_at(
            &format!("# ünïcödé\n{TWO}conflict = \"x\"\n"),
            5,
            12,
            "unknown conflict policy",
        );
    }

    #[test]
    fn error_display_forms() {
        let mut e = ConfigError {
            file: "p.toml".into(),
            line: Some(3),
            column: Some(7),
            message: "bad".into(),
        };
        assert_eq!(e.to_string(), "p.toml:3:7: bad");
        e.column = None;
        assert_eq!(e.to_string(), "p.toml:3: bad");
        e.line = None;
        assert_eq!(e.to_string(), "p.toml: bad");
    }

    #[test]
    fn load_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.toml");
        let e = Profile::load("w", &path).unwrap_err();
        assert_eq!((e.line, e.column), (None, None));
        assert!(e.message.contains("not found"), "{e}");
        assert_eq!(e.file, path.display().to_string());
        std::fs::write(&path, format!("{TWO}conflict = \"nope\"\n")).unwrap();
        let e = Profile::load("w", &path).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("{}:4:12: ", path.display())),
            "{e}"
        );
        std::fs::write(&path, TWO).unwrap();
        assert_eq!(Profile::load("w", &path).unwrap().name, "w");
    }

    #[test]
    fn adhoc_profile() {
        let a = ReplicaAddr::parse("/tmp/x").unwrap();
        let b = ReplicaAddr::parse("ssh://h/srv/y").unwrap();
        let p = Profile::adhoc(
            a.clone(),
            b.clone(),
            "/tmp/x".into(),
            "ssh://h/srv/y".into(),
        );
        assert_eq!(p.replicas.len(), 2);
        assert_eq!(
            (p.replicas[0].name.as_str(), &p.replicas[0].addr),
            ("a", &a)
        );
        assert_eq!(
            (p.replicas[1].name.as_str(), &p.replicas[1].addr),
            ("b", &b)
        );
        assert_eq!(p.replicas[1].raw, "ssh://h/srv/y");
        assert_eq!(p.conflict, Policy::KeepBoth);
        assert_eq!(p.max_delete, DeleteLimit::Percent(50.0));
        assert!(p.rules.is_empty() && p.paths.is_empty() && p.ignore.is_empty());
        assert!(!p.replicas[0].optional);
    }

    #[test]
    fn render_init_round_trips() {
        let reps = vec![
            ("laptop".to_string(), "~/notes".to_string()),
            (
                "server".to_string(),
                "ssh://me@server:2222/~/notes".to_string(),
            ),
            (
                "usb".to_string(),
                "/media/usb/notes with \"quotes\"".to_string(),
            ),
        ];
        let text = Profile::render_init(&reps);
        let p = Profile::parse("n", &text, "n.toml").unwrap();
        let got: Vec<_> = p
            .replicas
            .iter()
            .map(|r| (r.name.clone(), r.raw.clone()))
            .collect();
        assert_eq!(got, reps);
        assert_eq!(p.paths.len() + p.ignore.len() + p.rules.len(), 0);
        assert_eq!(p.conflict, Policy::KeepBoth);

        // Every commented setting and example rule is valid when uncommented.
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") || rest.starts_with("[[") => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert_ne!(uncommented, text);
        let p = Profile::parse("n", &uncommented, "n.toml").unwrap();
        assert_eq!(p.rules.len(), 2);
        assert_eq!(p.versions.keep, Some(10));
        assert_eq!(p.interval, Some(Duration::from_secs(300)));
        assert!(p.ssh.is_some() && p.remote_cmd.is_some() && p.on_failure.is_some());
        assert_eq!(
            p.rules[0].direction.as_ref().unwrap().to_string(),
            "laptop -> server"
        );
    }

    #[test]
    fn ssh_url_forms() {
        let ssh = |s: &str| ReplicaAddr::parse(s).unwrap();
        let mk = |user: Option<&str>, host: &str, port: Option<u16>, path: &str| ReplicaAddr::Ssh {
            user: user.map(str::to_string),
            host: host.into(),
            port,
            path: path.into(),
        };
        assert_eq!(ssh("ssh://host/srv/x"), mk(None, "host", None, "/srv/x"));
        assert_eq!(
            ssh("ssh://me@host:2222/srv/x/"),
            mk(Some("me"), "host", Some(2222), "/srv/x")
        );
        assert_eq!(ssh("ssh://host/~/notes"), mk(None, "host", None, "~/notes"));
        assert_eq!(ssh("ssh://host/~"), mk(None, "host", None, "~"));
        assert_eq!(ssh("ssh://host/~/"), mk(None, "host", None, "~"));
        assert_eq!(ssh("ssh://[::1]:22/d"), mk(None, "::1", Some(22), "/d"));
        // Display round-trips
        for s in [
            "ssh://host/srv/x",
            "ssh://me@host:2222/srv/x",
            "ssh://host/~/notes",
            "ssh://u@[::1]:22/d",
        ] {
            assert_eq!(ssh(s).to_string(), s);
            assert_eq!(ssh(&ssh(s).to_string()), ssh(s));
        }
    }

    #[test]
    fn ssh_url_errors() {
        for (bad, needle) in [
            ("ssh://host", "has no path"),
            ("ssh:///srv/x", "no host"),
            ("ssh://@host/x", "empty user"),
            ("ssh://host:0/x", "invalid port"),
            ("ssh://host:99999/x", "invalid port"),
            ("ssh://host:ab/x", "invalid port"),
            ("ssh://::1/x", "brackets"),
            ("s3://bucket/x", "unsupported address scheme"),
            ("server:/srv/x", "ssh://server/srv/x"),
            ("server:notes", "ssh://server/~/notes"),
        ] {
            let e = ReplicaAddr::parse(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn local_paths_tilde_and_relative() {
        assert_eq!(
            ReplicaAddr::parse("~/notes/").unwrap(),
            ReplicaAddr::Local(home().join("notes"))
        );
        assert_eq!(ReplicaAddr::parse("~").unwrap(), ReplicaAddr::Local(home()));
        assert!(ReplicaAddr::parse("~bob/x")
            .unwrap_err()
            .contains("only \"~/\""));
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            ReplicaAddr::parse("./sub/./dir").unwrap(),
            ReplicaAddr::Local(cwd.join("sub/dir"))
        );
        assert_eq!(
            ReplicaAddr::parse("/srv/data/").unwrap(),
            ReplicaAddr::Local("/srv/data".into())
        );
        assert_eq!(
            ReplicaAddr::parse("/srv/data").unwrap().to_string(),
            "/srv/data"
        );
        assert!(ReplicaAddr::parse("").is_err() && ReplicaAddr::parse("  ").is_err());
        assert!(ReplicaAddr::parse("./odd:name").is_ok());
        assert!(ReplicaAddr::parse("/srv/a").unwrap().is_local());
    }

    #[test]
    fn policy_from_str_and_display() {
        for s in ["keep-both", "newest", "prefer:laptop", "ask", "merge"] {
            let p: Policy = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
        }
        let e = "both".parse::<Policy>().unwrap_err();
        assert!(
            e.contains("keep-both, newest, prefer:<replica>, ask, merge"),
            "{e}"
        );
        assert!("prefer:".parse::<Policy>().is_err());
        assert_eq!(MergeKind::Append.to_string(), "append");
        assert_eq!(Validator::Jsonl.to_string(), "jsonl");
        assert_eq!(DeleteLimit::Percent(50.0).to_string(), "50%");
        assert_eq!(DeleteLimit::Count(7).to_string(), "7");
    }

    #[test]
    fn line_col_conversion() {
        let t = "ab\ncdé\nf";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 3), (2, 1));
        assert_eq!(line_col(t, 7), (2, 4)); // after the two-byte é
        assert_eq!(line_col(t, 8), (3, 1));
        assert_eq!(line_col(t, 100), (3, 2));
    }
}
