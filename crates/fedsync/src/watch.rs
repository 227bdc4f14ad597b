//! `fedsync watch`: continuous sync. File-system events on every local replica (debounced,
//! coalesced) trigger runs limited to the changed subtrees; a full rescan every `interval`
//! is the safety net; each pair has its own schedule, failures back off with jitter and are
//! loud (desktop notification, the profile's `on_failure` hook); the state of the watcher
//! is written to a small health file that `fedsync status` shows.
//!
//! A remote (ssh://) replica gets one agent connection for the whole watch: every run uses
//! it (no ssh per run), and the agent watches its own root with the same watcher code
//! ([`fedsync_core::watcher`]) and sends what changed over it. A dropped connection is made
//! again with backoff and jitter, and the next run after that is a full one.
//!
//! No sync logic lives here: every run is `engine::sync` with `Options.paths`.
//!
//! Tuning (environment, mostly for tests and benchmarks):
//! - `FEDSYNC_WATCH_DEBOUNCE_MS` (500): quiet time after the last event before a run starts;
//!   a burst that never goes quiet runs at the latest every 10 × that
//!   (`FEDSYNC_WATCH_MAX_DELAY_MS`).
//! - `FEDSYNC_WATCH_EVENTS` (`auto`): `poll` forces the polling watcher, `off` disables
//!   file events (only the interval rescan remains).
//! - `FEDSYNC_WATCH_POLL_MS` (10000): period of the polling watcher.
//! - `FEDSYNC_WATCH_BACKOFF_MIN_MS` / `_MAX_MS` (1000 / 300000): retry backoff bounds.
//! - `FEDSYNC_NOTIFY_AFTER` (1): consecutive failures of a pair before the alerts fire.

use crate::cli::Fail;
use crate::output::Printer;
use clap::Args;
use fedsync_core::config::{DeleteLimit, Profile, ReplicaAddr};
use fedsync_core::engine::{
    self, EngineError, NoProgress, Options, Outcome, PairReport, PairStatus, RunReport,
};
use fedsync_core::entry::{Entry, Kind};
use fedsync_core::path::RelPath;
use fedsync_core::remote::{RemoteSession, WatchEvent};
use fedsync_core::rules::Rules;
use fedsync_core::watcher::{Change, Mode, Prefer, TreeWatch};
use fedsync_core::Home;
use notify::Event;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// `println!` that ignores a closed stdout.
macro_rules! outln {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// The profile to keep in sync
    pub name: String,
    /// Full rescan period, the safety net for missed events (e.g. `30s`, `5m`, `1h`)
    /// [default: the profile's `interval`, else 5m]
    #[arg(long, value_name = "D")]
    pub interval: Option<String>,
    /// Also serve the dashboard at this address (e.g. 127.0.0.1:8384), with live updates
    #[arg(long, value_name = "ADDR")]
    pub ui: Option<String>,
    /// Let --ui listen on a non-loopback address
    #[arg(long, requires = "ui")]
    pub allow_remote: bool,
}

/// Default full-rescan period.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);
/// More changed subtrees than this in one run are collapsed to their parents.
const MAX_RUN_PATHS: usize = 64;
/// Above this many pending paths the "did it really change?" check is skipped.
const MAX_CHECKED_PATHS: usize = 50_000;
/// Deletions made by the watcher's runs in this window count together against `max_delete`
/// (a mass deletion must not pass the guard by arriving in several small runs).
const DELETE_WINDOW: Duration = Duration::from_secs(600);
/// How long the main loop sleeps at most before looking at the stop flag again.
const TICK: Duration = Duration::from_millis(200);

fn usage(msg: impl Into<String>) -> Fail {
    Fail {
        code: 2,
        msg: msg.into(),
    }
}

fn env_ms(name: &str, default: u64) -> Duration {
    Duration::from_millis(
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(default),
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EventsMode {
    Auto,
    Poll,
    Off,
}

struct Tuning {
    debounce: Duration,
    max_hold: Duration,
    events: EventsMode,
    poll: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    notify_after: u32,
}

impl Tuning {
    fn from_env() -> Tuning {
        let debounce = env_ms("FEDSYNC_WATCH_DEBOUNCE_MS", 500);
        let max_hold = env_ms(
            "FEDSYNC_WATCH_MAX_DELAY_MS",
            (debounce.as_millis() as u64 * 10).max(1000),
        );
        let events = match std::env::var("FEDSYNC_WATCH_EVENTS").as_deref() {
            Ok("off") | Ok("none") => EventsMode::Off,
            Ok("poll") | Ok("polling") => EventsMode::Poll,
            _ => EventsMode::Auto,
        };
        let backoff_min =
            env_ms("FEDSYNC_WATCH_BACKOFF_MIN_MS", 1000).max(Duration::from_millis(10));
        let backoff_max = env_ms("FEDSYNC_WATCH_BACKOFF_MAX_MS", 300_000).max(backoff_min);
        Tuning {
            debounce,
            max_hold,
            events,
            poll: env_ms("FEDSYNC_WATCH_POLL_MS", 10_000).max(Duration::from_millis(50)),
            backoff_min,
            backoff_max,
            notify_after: std::env::var("FEDSYNC_NOTIFY_AFTER")
                .ok()
                .and_then(|v| v.trim().parse::<u32>().ok())
                .unwrap_or(1)
                .max(1),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Health file
// ---------------------------------------------------------------------------------------

/// What `fedsync status` shows about a running watcher (`state/NAME.watch.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Health {
    pub pid: u32,
    pub started: String,
    pub updated: String,
    /// `native`, `polling`, `off` (no file events: interval rescans only) or `stopped`.
    pub watcher: String,
    pub interval_secs: u64,
    /// Runs started by this watcher.
    pub runs: u64,
    pub replicas: Vec<ReplicaHealth>,
    pub pairs: Vec<PairHealth>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplicaHealth {
    pub name: String,
    /// `native`, `polling` (for a remote replica: what its agent runs), `off`, `remote` (an
    /// agent that cannot watch: rescans only), `connecting` (a remote replica's first
    /// connection) or `unavailable` (gone, or its agent connection is down and being made
    /// again).
    pub watcher: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PairHealth {
    pub a: String,
    pub b: String,
    /// `starting`, `ok`, `incomplete` (conflicts or skipped items), `skipped` (optional
    /// replica absent), `failing`.
    pub state: String,
    pub last_run: Option<String>,
    pub last_run_id: Option<String>,
    pub last_success: Option<String>,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub next_retry: Option<String>,
    /// Changed paths waiting for the next run.
    pub pending: usize,
}

pub fn health_path(home: &Home, name: &str) -> PathBuf {
    home.state_dir().join(format!("{name}.watch.json"))
}

fn watch_lock_path(home: &Home, name: &str) -> PathBuf {
    home.state_dir().join(format!("{name}.watch.lock"))
}

fn pid_alive(pid: u32) -> bool {
    let Some(p) = rustix::process::Pid::from_raw(pid as i32) else {
        return false;
    };
    let alive = match rustix::process::test_kill_process(p) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    };
    // A reused pid (after a reboot) is some other program.
    alive
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .map_or(true, |c| String::from_utf8_lossy(&c).contains("fedsync"))
}

/// The health of a watcher of `name` that is running now (file present, process alive,
/// not stopped); `None` otherwise.
pub fn running_health(home: &Home, name: &str) -> Option<Health> {
    let text = std::fs::read_to_string(health_path(home, name)).ok()?;
    let h: Health = serde_json::from_str(&text).ok()?;
    (h.watcher != "stopped" && pid_alive(h.pid)).then_some(h)
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn rfc3339_in(d: Duration) -> String {
    let t = chrono::Utc::now() + chrono::Duration::from_std(d).unwrap_or_default();
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn local_time() -> String {
    chrono::Local::now().format("%Y-%m-%d %H:%M:%S").to_string()
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

// ---------------------------------------------------------------------------------------
// Loud failures
// ---------------------------------------------------------------------------------------

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            let f = d.join(cmd);
            std::fs::metadata(&f).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
        })
    })
}

/// A desktop notification where a notification service can be reached; `Err` says why not.
fn desktop_notify(title: &str, body: &str) -> Result<(), String> {
    if cfg!(target_os = "macos") && on_path("osascript") {
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let script = format!(
            "display notification \"{}\" with title \"{}\"",
            esc(body),
            esc(title)
        );
        return std::process::Command::new("osascript")
            .args(["-e", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map(|_| ())
            .map_err(|e| format!("osascript: {e}"));
    }
    if !on_path("notify-send") {
        return Err("notify-send is not installed".into());
    }
    let session = ["DISPLAY", "WAYLAND_DISPLAY", "DBUS_SESSION_BUS_ADDRESS"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
    if !session {
        return Err(
            "no desktop session (DISPLAY, WAYLAND_DISPLAY, DBUS_SESSION_BUS_ADDRESS unset)".into(),
        );
    }
    let mut child = std::process::Command::new("notify-send")
        .args(["--app-name=fedsync", "--urgency=critical", title, body])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("notify-send: {e}"))?;
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(())
}

/// Run the profile's `on_failure` hook through `sh -c` with `FEDSYNC_PROFILE`, `FEDSYNC_PAIR`,
/// `FEDSYNC_ERROR` and `FEDSYNC_RUN` set. Its output goes to stderr (stdout may be JSON).
/// With `wait`, waits for it (at most a minute); otherwise it is reaped in the background.
pub fn run_hook(profile: &Profile, pair: &str, error: &str, run: &str, failures: u32, wait: bool) {
    let Some(cmd) = profile.on_failure.as_deref() else {
        return;
    };
    let mut c = std::process::Command::new("sh");
    c.arg("-c")
        .arg(cmd)
        .env("FEDSYNC_PROFILE", &profile.name)
        .env("FEDSYNC_PAIR", pair)
        .env("FEDSYNC_ERROR", error)
        .env("FEDSYNC_RUN", run)
        .env("FEDSYNC_FAILURES", failures.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(std::io::stderr()));
    let mut child = match c.spawn() {
        Ok(ch) => ch,
        Err(e) => {
            eprintln!("fedsync: on_failure hook {cmd:?} could not be started: {e}");
            return;
        }
    };
    let mut reap = move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match child.try_wait() {
                Ok(Some(st)) => {
                    if !st.success() {
                        eprintln!("fedsync: on_failure hook exited with {st}");
                    }
                    return;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    eprintln!(
                        "fedsync: on_failure hook still running after 60 s; not waiting for it"
                    );
                    return;
                }
                Err(_) => return,
            }
        }
    };
    if wait {
        reap();
    } else {
        std::thread::spawn(reap);
    }
}

/// After a failed plain `fedsync sync NAME` (exit 3): the `on_failure` hook, once per failed
/// pair (or once for the whole run when it failed before any pair).
pub fn sync_failed(profile: &Profile, report: Option<&RunReport>, error: Option<&str>) {
    if profile.on_failure.is_none() {
        return;
    }
    match report {
        Some(r) => {
            let mut any = false;
            for p in &r.pairs {
                if matches!(p.status, PairStatus::Refused | PairStatus::Failed) {
                    any = true;
                    let msg = p.message.clone().unwrap_or_else(|| pair_failure_text(p));
                    run_hook(
                        profile,
                        &format!("{} <-> {}", p.a, p.b),
                        &msg,
                        &r.run,
                        1,
                        true,
                    );
                }
            }
            if !any {
                let msg = error.map(str::to_string).unwrap_or_else(|| {
                    if r.atomic_undo.is_some() {
                        "--atomic: an item failed and the run was undone".into()
                    } else {
                        "the run failed".into()
                    }
                });
                run_hook(profile, "", &msg, &r.run, 1, true);
            }
        }
        None => run_hook(profile, "", error.unwrap_or("the run failed"), "", 1, true),
    }
}

fn pair_failure_text(p: &PairReport) -> String {
    if let Some(m) = &p.message {
        return m.clone();
    }
    let failed: Vec<String> = p
        .items
        .iter()
        .filter_map(|it| match &it.outcome {
            Outcome::Failed(r) => Some(format!("{}: {r}", it.path)),
            _ => None,
        })
        .take(3)
        .collect();
    if failed.is_empty() {
        format!("{} items failed", p.counts.failed)
    } else {
        format!("{} items failed ({})", p.counts.failed, failed.join("; "))
    }
}

// ---------------------------------------------------------------------------------------
// The watcher
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RepWatch {
    Native,
    Polling,
    Off,
    Remote,
    Connecting,
    Unavailable,
}

impl RepWatch {
    fn name(self) -> &'static str {
        match self {
            RepWatch::Native => "native",
            RepWatch::Polling => "polling",
            RepWatch::Off => "off",
            RepWatch::Remote => "remote",
            RepWatch::Connecting => "connecting",
            RepWatch::Unavailable => "unavailable",
        }
    }
}

struct Rep {
    name: String,
    /// Canonical local root (`None` for a remote replica).
    root: Option<PathBuf>,
    tree: Option<TreeWatch>,
    mode: RepWatch,
    /// The agent connection of a remote replica.
    remote: Option<Link>,
}

/// The persistent connection to a remote replica's agent.
#[derive(Default)]
struct Link {
    session: Option<RemoteSession>,
    /// Bumped per connection attempt: reports of an older connection are ignored.
    generation: u64,
    connecting: bool,
    /// The first attempt is over (the first run waits for it, to use the connection).
    tried: bool,
    /// Failed attempts in a row (the backoff), and when to try again.
    attempts: u32,
    retry_at: Option<Instant>,
    /// It was up before: the next connection catches up with a full run.
    was_up: bool,
    said_no_watch: bool,
}

/// What arrives on the main loop's channel.
enum Msg {
    /// A raw event of a local replica's watcher.
    Fs(usize, notify::Result<Event>),
    /// From the thread that connects to a remote replica and then relays its agent's
    /// reports: (replica, generation, what).
    Remote(usize, u64, RemoteMsg),
}

enum RemoteMsg {
    /// The connection is up, with the agent's watcher mode (None: no remote events).
    Connected(Box<RemoteSession>, Option<String>),
    Failed(String),
    Mode(String),
    Changed {
        paths: Vec<RelPath>,
        rescan: bool,
    },
    Lost(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    Initial,
    Events,
    Rescan,
    Retry,
}

impl Trigger {
    fn name(self) -> &'static str {
        match self {
            Trigger::Initial => "initial",
            Trigger::Events => "events",
            Trigger::Rescan => "rescan",
            Trigger::Retry => "retry",
        }
    }
}

struct Pair {
    /// Index of the spoke in the profile (the hub is 0).
    k: usize,
    a: String,
    b: String,
    /// Changed paths (bit 1: seen on the hub side, bit 2: on the spoke side).
    pending: BTreeMap<RelPath, u8>,
    /// The next run must be a full one (events were lost, a root vanished...).
    full: bool,
    first_at: Option<Instant>,
    last_at: Option<Instant>,
    next_full: Instant,
    first_done: bool,
    /// Backoff: when to try again, and whether that try is a full run.
    retry_at: Option<Instant>,
    /// Failed or skipped attempts in a row (drives the backoff).
    attempts: u32,
    /// Lock held by another run: retry soon, not a failure.
    busy: bool,
    consecutive_failures: u32,
    alerted: bool,
    state: &'static str,
    last_run: Option<String>,
    last_run_id: Option<String>,
    last_success: Option<String>,
    last_error: Option<String>,
    next_retry: Option<String>,
    /// Deletions by this watcher's runs (time, on a, on b) and the synced-file count before
    /// the first of them.
    deletions: VecDeque<(Instant, u64, u64)>,
    ref_files: u64,
}

impl Pair {
    fn add(&mut self, path: RelPath, side: u8, now: Instant) {
        *self.pending.entry(path).or_insert(0) |= side;
        self.first_at.get_or_insert(now);
        self.last_at = Some(now);
    }
    fn request_full(&mut self, now: Instant) {
        self.full = true;
        self.first_at.get_or_insert(now);
        self.last_at = Some(now);
    }
    fn has_pending(&self) -> bool {
        self.full || !self.pending.is_empty()
    }

    /// Whether a run is due now, and of which kind.
    fn due(&self, now: Instant, t: &Tuning) -> Option<Trigger> {
        if let Some(r) = self.retry_at {
            if now >= r {
                return Some(if !self.first_done {
                    Trigger::Initial
                } else if self.busy {
                    Trigger::Events
                } else {
                    Trigger::Retry
                });
            }
            return (self.first_done && now >= self.next_full).then_some(Trigger::Rescan);
        }
        if !self.first_done {
            return Some(Trigger::Initial);
        }
        if now >= self.next_full {
            return Some(Trigger::Rescan);
        }
        if self.has_pending() {
            let quiet = self.last_at.is_some_and(|l| now >= l + t.debounce);
            let held = self.first_at.is_some_and(|f| now >= f + t.max_hold);
            if quiet || held {
                return Some(Trigger::Events);
            }
        }
        None
    }

    fn next_deadline(&self, t: &Tuning) -> Instant {
        let mut d = self.next_full;
        if let Some(r) = self.retry_at {
            return if self.first_done { d.min(r) } else { r };
        }
        if self.has_pending() {
            if let Some(l) = self.last_at {
                d = d.min(l + t.debounce);
            }
            if let Some(f) = self.first_at {
                d = d.min(f + t.max_hold);
            }
        }
        d
    }

    fn health(&self) -> PairHealth {
        PairHealth {
            a: self.a.clone(),
            b: self.b.clone(),
            state: self.state.into(),
            last_run: self.last_run.clone(),
            last_run_id: self.last_run_id.clone(),
            last_success: self.last_success.clone(),
            consecutive_failures: self.consecutive_failures,
            last_error: self.last_error.clone(),
            next_retry: self.next_retry.clone(),
            pending: self.pending.len(),
        }
    }
}

struct Watch<'a> {
    home: &'a Home,
    profile: &'a Profile,
    p: &'a Printer,
    rules: Rules,
    tun: Tuning,
    interval: Duration,
    stop: Arc<AtomicBool>,
    tx: mpsc::Sender<Msg>,
    reps: Vec<Rep>,
    pairs: Vec<Pair>,
    started: String,
    runs: u64,
    stopped: bool,
    /// When the health file was last written, with how many pending paths.
    health_written: Instant,
    health_pending: usize,
    /// Said once: why desktop notifications are not shown.
    said_no_desktop: bool,
}

/// `fedsync watch NAME`.
pub fn watch(home: &Home, p: &Printer, profile: &Profile, args: &WatchArgs) -> Result<i32, Fail> {
    let interval = match &args.interval {
        Some(s) => humantime::parse_duration(s)
            .map_err(|e| usage(format!("--interval {s:?}: {e} (give e.g. 30s, 5m, 1h)")))?,
        None => profile.interval.unwrap_or(DEFAULT_INTERVAL),
    };
    if interval < Duration::from_millis(100) {
        return Err(usage(format!(
            "--interval {}: too short; give at least 1s",
            humantime::format_duration(interval)
        )));
    }
    if profile.replicas.len() < 2 {
        return Err(usage(format!(
            "profile {} has fewer than two replicas; nothing to watch",
            profile.name
        )));
    }
    let rules = Rules::compile(profile).map_err(|e| usage(e.to_string()))?;
    let dir = home.state_dir();
    std::fs::create_dir_all(&dir).map_err(|e| Fail {
        code: 3,
        msg: format!("cannot create {}: {e}", dir.display()),
    })?;
    // One watcher per profile.
    let lock_path = watch_lock_path(home, &profile.name);
    let lock = std::fs::File::create(&lock_path).map_err(|e| Fail {
        code: 3,
        msg: format!("cannot open {}: {e}", lock_path.display()),
    })?;
    if let Err(e) = lock.try_lock() {
        let who = std::fs::read_to_string(health_path(home, &profile.name))
            .ok()
            .and_then(|t| serde_json::from_str::<Health>(&t).ok())
            .map(|h| format!(" (pid {})", h.pid))
            .unwrap_or_default();
        return Err(Fail {
            code: 3,
            msg: match e {
                std::fs::TryLockError::WouldBlock => format!(
                    "profile {} is already watched by another `fedsync watch`{who}; stop that one first",
                    profile.name
                ),
                std::fs::TryLockError::Error(e) => {
                    format!("cannot lock {}: {e}", lock_path.display())
                }
            },
        });
    }

    // The dashboard beside the watcher: its own thread, stopped with the process.
    if let Some(listen) = &args.ui {
        let addr = crate::ui::listen_addr(listen, args.allow_remote)?;
        let (home, profile) = (home.clone(), profile.clone());
        let up = Printer::new(p.json, p.quiet, 0, false);
        std::thread::spawn(move || {
            if let Err(f) = crate::ui::serve(&home, &up, profile, addr) {
                up.error(&f.msg);
            }
        });
    }

    let stop = crate::cli::stop_on_signals();
    let (tx, rx) = mpsc::channel::<Msg>();
    let now = Instant::now();
    let reps = profile
        .replicas
        .iter()
        .map(|s| {
            let root = match &s.addr {
                ReplicaAddr::Local(p) => Some(engine::canonical_root(p)),
                _ => None,
            };
            Rep {
                name: s.name.clone(),
                remote: root.is_none().then(Link::default),
                mode: if root.is_some() {
                    RepWatch::Unavailable
                } else {
                    RepWatch::Connecting
                },
                root,
                tree: None,
            }
        })
        .collect();
    // The runs of this thread use the remote sessions the watcher keeps open.
    fedsync_core::remote::reuse_sessions_on_this_thread(true);
    let pairs = (1..profile.replicas.len())
        .map(|k| Pair {
            k,
            a: profile.replicas[0].name.clone(),
            b: profile.replicas[k].name.clone(),
            pending: BTreeMap::new(),
            full: false,
            first_at: None,
            last_at: None,
            next_full: now,
            first_done: false,
            retry_at: None,
            attempts: 0,
            busy: false,
            consecutive_failures: 0,
            alerted: false,
            state: "starting",
            last_run: None,
            last_run_id: None,
            last_success: None,
            last_error: None,
            next_retry: None,
            deletions: VecDeque::new(),
            ref_files: 0,
        })
        .collect();
    let mut w = Watch {
        home,
        profile,
        p,
        rules,
        tun: Tuning::from_env(),
        interval,
        stop,
        tx,
        reps,
        pairs,
        started: now_rfc3339(),
        runs: 0,
        stopped: false,
        health_written: now,
        health_pending: 0,
        said_no_desktop: false,
    };
    for i in 0..w.reps.len() {
        w.start_watching(i);
    }
    w.write_health();
    if !p.quiet && !p.json {
        let reps: Vec<String> = w
            .reps
            .iter()
            .map(|r| format!("{} ({})", r.name, r.mode.name()))
            .collect();
        outln!(
            "{} watching {}: {}; full rescan every {}; stop with Ctrl-C",
            local_time(),
            profile.name,
            reps.join(", "),
            humantime::format_duration(interval)
        );
    }
    w.run(&rx);
    w.stopped = true;
    for r in &mut w.reps {
        r.tree = None;
        if let Some(l) = r.remote.as_mut() {
            // Ends the agent (it saves its scan cache first).
            l.session = None;
        }
    }
    w.write_health();
    if !p.quiet && !p.json {
        outln!("{} stopped watching {}", local_time(), profile.name);
    }
    drop(lock);
    Ok(0)
}

impl Watch<'_> {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn log(&self, msg: &str) {
        if !self.p.quiet {
            eprintln!("fedsync watch: {msg}");
        }
    }

    // ----- watchers -----

    /// (Re)create the file-event watcher of replica `i`: native, else polling. A remote
    /// replica's agent does this on its side (see `connect_remote`).
    fn start_watching(&mut self, i: usize) {
        if self.reps[i].remote.is_some() {
            self.connect_remote(i);
            return;
        }
        let Some(root) = self.reps[i].root.clone() else {
            return;
        };
        self.reps[i].tree = None;
        let prefer = match self.tun.events {
            EventsMode::Off => {
                self.reps[i].mode = RepWatch::Off;
                return;
            }
            EventsMode::Poll => Prefer::Poll,
            EventsMode::Auto => Prefer::Auto,
        };
        if !root.is_dir() {
            self.reps[i].mode = RepWatch::Unavailable;
            return;
        }
        let tx = self.tx.clone();
        let sink: fedsync_core::watcher::Sink = Arc::new(move |ev| {
            let _ = tx.send(Msg::Fs(i, ev));
        });
        match TreeWatch::start(
            root.clone(),
            self.rules.clone(),
            prefer,
            self.tun.poll,
            sink,
        ) {
            Ok(tw) => {
                if let Some(note) = &tw.note {
                    self.log(&format!("replica {}: {note}", self.reps[i].name));
                }
                self.reps[i].mode = mode_of(tw.mode());
                self.reps[i].tree = Some(tw);
            }
            Err(e) => {
                self.log(&format!(
                    "replica {}: {e}; only the interval rescan syncs it",
                    self.reps[i].name
                ));
                self.reps[i].mode = RepWatch::Off;
            }
        }
    }

    /// Indices (into `pairs`) of the pairs replica `i` belongs to.
    fn pairs_of(&self, i: usize) -> Vec<usize> {
        if i == 0 {
            (0..self.pairs.len()).collect()
        } else {
            vec![i - 1]
        }
    }

    // ----- remote replicas -----

    /// Connect to the agent of remote replica `i` on a thread of its own (ssh may take a
    /// while; the other pairs go on meanwhile), have it watch its root, and relay what it
    /// reports to the main loop.
    fn connect_remote(&mut self, i: usize) {
        let Some(link) = self.reps[i].remote.as_mut() else {
            return;
        };
        if link.connecting {
            return;
        }
        link.session = None;
        link.connecting = true;
        link.retry_at = None;
        link.generation += 1;
        let generation = link.generation;
        let tx = self.tx.clone();
        let profile = self.profile.clone();
        let spec = profile.replicas[i].clone();
        let rules = self.rules.clone();
        let (events, poll) = (self.tun.events, self.tun.poll);
        // The agent only coalesces; the debounce that decides when to run is ours.
        let debounce = self.tun.debounce.min(Duration::from_millis(100));
        std::thread::spawn(move || {
            let send = |m: RemoteMsg| tx.send(Msg::Remote(i, generation, m)).is_ok();
            let session = match RemoteSession::open(&profile, &spec) {
                Ok(s) => s,
                Err(e) => {
                    send(RemoteMsg::Failed(e));
                    return;
                }
            };
            if events == EventsMode::Off || !session.can_watch() {
                send(RemoteMsg::Connected(Box::new(session), None));
                return;
            }
            let watch = match session.watch(&rules, events == EventsMode::Poll, poll, debounce) {
                Ok(w) => w,
                Err(e) => {
                    send(RemoteMsg::Failed(format!("its agent cannot watch: {e}")));
                    return;
                }
            };
            let mode = watch.mode.clone();
            if !send(RemoteMsg::Connected(Box::new(session), Some(mode))) {
                return;
            }
            loop {
                let m = match watch.next() {
                    WatchEvent::Mode(m) => RemoteMsg::Mode(m),
                    WatchEvent::Changed { paths, rescan } => RemoteMsg::Changed { paths, rescan },
                    WatchEvent::Ended(e) => {
                        send(RemoteMsg::Lost(e));
                        return;
                    }
                };
                if !send(m) {
                    return;
                }
            }
        });
    }

    fn on_remote(&mut self, i: usize, generation: u64, msg: RemoteMsg) {
        let now = Instant::now();
        let name = self.reps[i].name.clone();
        let Some(link) = self.reps[i].remote.as_ref() else {
            return;
        };
        if link.generation != generation {
            return; // from a connection that was replaced
        }
        match msg {
            RemoteMsg::Connected(session, mode) => {
                let agent = session.agent_version().to_string();
                let can_watch = session.can_watch();
                let link = self.reps[i].remote.as_mut().expect("remote");
                let again = link.was_up;
                link.connecting = false;
                link.tried = true;
                link.attempts = 0;
                link.was_up = true;
                link.session = Some(*session);
                let say_no_watch = mode.is_none()
                    && !can_watch
                    && self.tun.events != EventsMode::Off
                    && !std::mem::replace(&mut link.said_no_watch, true);
                self.reps[i].mode = match mode.as_deref() {
                    Some("polling") => RepWatch::Polling,
                    Some(_) => RepWatch::Native,
                    None if self.tun.events == EventsMode::Off => RepWatch::Off,
                    None => RepWatch::Remote,
                };
                if say_no_watch {
                    self.log(&format!(
                        "replica {name}: its agent (fedsync {agent}) cannot watch its files; \
                         changes there are synced by the interval rescan (install this version there)"
                    ));
                }
                if again {
                    // What changed while the connection was down: a full run finds it.
                    for k in self.pairs_of(i) {
                        self.pairs[k].request_full(now);
                    }
                    if !self.p.quiet && !self.p.json {
                        outln!(
                            "{} replica {name}: connected again ({})",
                            local_time(),
                            self.reps[i].mode.name()
                        );
                    }
                }
                self.write_health();
            }
            RemoteMsg::Failed(e) => {
                let d = self.remote_backoff(i);
                let link = self.reps[i].remote.as_mut().expect("remote");
                link.connecting = false;
                link.tried = true;
                let first = link.attempts == 1;
                self.reps[i].mode = RepWatch::Unavailable;
                if first || self.p.verbose > 0 {
                    self.log(&format!(
                        "replica {name}: no agent connection ({e}); trying again in {}",
                        short_duration(d)
                    ));
                }
                self.write_health();
            }
            RemoteMsg::Lost(e) => {
                if link.session.is_some() {
                    self.remote_lost(i, &e);
                }
            }
            RemoteMsg::Mode(m) => {
                self.reps[i].mode = if m == "polling" {
                    RepWatch::Polling
                } else {
                    RepWatch::Native
                };
                self.write_health();
            }
            RemoteMsg::Changed { paths, rescan } => {
                if rescan {
                    for k in self.pairs_of(i) {
                        self.pairs[k].request_full(now);
                    }
                }
                for p in paths {
                    self.add_path(i, p, now);
                }
            }
        }
    }

    /// The agent connection of replica `i` dropped: make it again after a backoff.
    fn remote_lost(&mut self, i: usize, why: &str) {
        let d = self.remote_backoff(i);
        if let Some(link) = self.reps[i].remote.as_mut() {
            link.session = None;
            link.connecting = false;
            // What the old connection's relay still says is stale.
            link.generation += 1;
        }
        self.reps[i].mode = RepWatch::Unavailable;
        self.log(&format!(
            "replica {}: the agent connection dropped ({why}); connecting again in {}",
            self.reps[i].name,
            short_duration(d)
        ));
        self.write_health();
    }

    /// The next connection attempt of replica `i`, with exponential backoff and jitter.
    fn remote_backoff(&mut self, i: usize) -> Duration {
        let Some(link) = self.reps[i].remote.as_mut() else {
            return Duration::ZERO;
        };
        link.attempts = link.attempts.saturating_add(1);
        let d = backoff_delay(&self.tun, link.attempts);
        link.retry_at = Some(Instant::now() + d);
        d
    }

    /// Connections to make again now; sessions without a remote watch are checked here
    /// (no relay thread notices when they drop).
    fn tend_links(&mut self) {
        let now = Instant::now();
        for i in 0..self.reps.len() {
            let Some(link) = self.reps[i].remote.as_ref() else {
                continue;
            };
            if link.connecting {
                continue;
            }
            match &link.session {
                Some(s) if !s.alive() => self.remote_lost(i, "the agent closed the connection"),
                Some(_) => {}
                None if link.retry_at.is_some_and(|t| now >= t) => self.connect_remote(i),
                None => {}
            }
        }
    }

    // ----- events -----

    fn on_event(&mut self, i: usize, ev: notify::Result<Event>) {
        let now = Instant::now();
        let Some(tw) = self.reps[i].tree.as_mut() else {
            return;
        };
        let before = tw.mode();
        let changes = tw.interpret(ev);
        let after = self.reps[i].tree.as_ref().map(TreeWatch::mode);
        for c in changes {
            match c {
                Change::Path(rp) => self.add_path(i, rp, now),
                Change::Rescan => {
                    for k in self.pairs_of(i) {
                        self.pairs[k].request_full(now);
                    }
                }
                Change::RootGone => {
                    // A run finds out and backs off; the watch is made again when the
                    // replica is back.
                    self.reps[i].tree = None;
                    self.reps[i].mode = RepWatch::Unavailable;
                    for k in self.pairs_of(i) {
                        self.pairs[k].request_full(now);
                    }
                }
                Change::Note(n) => {
                    if self.p.verbose > 0 || after != Some(before) {
                        self.log(&format!("replica {}: {n}", self.reps[i].name));
                    }
                }
            }
        }
        if let (Some(m), Some(_)) = (after, self.reps[i].tree.as_ref()) {
            self.reps[i].mode = mode_of(m);
        }
    }

    /// A changed path on replica `i`: pending for every pair it belongs to.
    fn add_path(&mut self, i: usize, rp: RelPath, now: Instant) {
        // A SQLite journal is part of its database's state: sync them together.
        let extra = ["-wal", "-shm", "-journal"]
            .iter()
            .find_map(|suf| rp.as_str().strip_suffix(suf))
            .and_then(|db| RelPath::new(db).ok());
        let side = if i == 0 { 1 } else { 2 };
        for k in self.pairs_of(i) {
            if let Some(db) = &extra {
                self.pairs[k].add(db.clone(), side, now);
            }
            self.pairs[k].add(rp.clone(), side, now);
        }
    }

    // ----- the loop -----

    fn run(&mut self, rx: &mpsc::Receiver<Msg>) {
        loop {
            if self.stopping() {
                return;
            }
            self.tend_links();
            let now = Instant::now();
            let due: Vec<(usize, Trigger)> = self
                .pairs
                .iter()
                .enumerate()
                .filter(|(_, pr)| !self.first_connect_pending(pr.k))
                .filter_map(|(n, pr)| pr.due(now, &self.tun).map(|t| (n, t)))
                .collect();
            if due.is_empty() {
                let next = self
                    .pairs
                    .iter()
                    .map(|pr| pr.next_deadline(&self.tun))
                    .min()
                    .unwrap_or(now + TICK);
                let wait = next.saturating_duration_since(now).min(TICK);
                // The pending counts in the health file follow the events, at most twice a
                // second.
                let pending: usize = self.pairs.iter().map(|p| p.pending.len()).sum();
                if pending != self.health_pending
                    && self.health_written.elapsed() >= Duration::from_millis(500)
                {
                    self.write_health();
                }
                match rx.recv_timeout(wait) {
                    Ok(m) => {
                        self.on_msg(m);
                        self.drain(rx);
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        std::thread::sleep(wait);
                    }
                }
                continue;
            }
            for (n, trig) in due {
                if self.stopping() {
                    return;
                }
                // Events that arrived meanwhile belong to this run too.
                self.drain(rx);
                self.run_pair(n, trig);
            }
            self.drain(rx);
        }
    }

    fn on_msg(&mut self, m: Msg) {
        match m {
            Msg::Fs(i, ev) => self.on_event(i, ev),
            Msg::Remote(i, generation, m) => self.on_remote(i, generation, m),
        }
    }

    /// Whether pair `k`'s spoke or the hub is a remote replica whose first connection
    /// attempt is still under way (its first run waits, to run over that connection).
    fn first_connect_pending(&self, k: usize) -> bool {
        [0, k].iter().any(|&i| {
            self.reps[i]
                .remote
                .as_ref()
                .is_some_and(|l| l.connecting && !l.tried)
        })
    }

    fn drain(&mut self, rx: &mpsc::Receiver<Msg>) {
        // Bounded, so that a flood of events cannot keep the loop from running.
        for n in 0..1_000_000 {
            if n % 1024 == 1023 && self.stopping() {
                return;
            }
            match rx.try_recv() {
                Ok(m) => self.on_msg(m),
                Err(_) => return,
            }
        }
    }

    /// The profile this pair's runs use: the profile itself for two replicas, else the hub
    /// and this spoke (same name, so the same state, lock, base and audit trail).
    fn pair_profile(&self, k: usize) -> Profile {
        let mut prof = self.profile.clone();
        if prof.replicas.len() > 2 {
            prof.replicas = vec![prof.replicas[0].clone(), prof.replicas[k].clone()];
        }
        prof
    }

    /// Pending paths whose current state on the side(s) that reported them equals the base
    /// (our own writes, a temporary file created and removed, a change already synced by
    /// an earlier run) need no run. The same check for both kinds of replica: a local one
    /// is looked at on the disk, a remote one asked through its agent connection.
    fn still_changed(&self, n: usize, pending: &BTreeMap<RelPath, u8>) -> BTreeSet<RelPath> {
        let all = || pending.keys().cloned().collect::<BTreeSet<_>>();
        if pending.len() > MAX_CHECKED_PATHS {
            return all();
        }
        let k = self.pairs[n].k;
        let Ok(store) = engine::open_store(self.home, &self.profile.name) else {
            return all();
        };
        let id = |name: &str| store.replica_id(name).ok().flatten().map(|(id, _)| id);
        let (Some(ida), Some(idb)) = (
            id(&self.profile.replicas[0].name),
            id(&self.profile.replicas[k].name),
        ) else {
            return all();
        };
        let Ok(Some(pair)) = store.find_pair_id(&engine::pair_key(&ida, &idb)) else {
            return all();
        };
        let Ok(base) = store.load_base(pair) else {
            return all();
        };
        drop(store);
        // The current state on each side, of the paths that side reported.
        let mut states: [HashMap<&RelPath, State>; 2] = [HashMap::new(), HashMap::new()];
        for (s, &i) in [0, k].iter().enumerate() {
            let bit = 1u8 << s;
            let mine: Vec<&RelPath> = pending
                .iter()
                .filter(|(_, sides)| **sides & bit != 0)
                .map(|(p, _)| p)
                .collect();
            if mine.is_empty() {
                continue;
            }
            if let Some(root) = &self.reps[i].root {
                states[s] = mine
                    .into_iter()
                    .map(|p| (p, local_state(&p.to_fs(root))))
                    .collect();
            } else if let Some(session) = self.reps[i]
                .remote
                .as_ref()
                .and_then(|l| l.session.as_ref())
            {
                let owned: Vec<RelPath> = mine.iter().map(|p| (*p).clone()).collect();
                if let Ok(v) = session.entries(&owned) {
                    states[s] = mine
                        .into_iter()
                        .zip(v)
                        .map(|(p, r)| (p, r.map_err(|_| ())))
                        .collect();
                }
            }
        }
        pending
            .iter()
            .filter(|(path, sides)| {
                let base = base
                    .binary_search_by(|(p, _)| p.cmp(path))
                    .ok()
                    .map(|i| &base[i].1);
                let unchanged = [1u8, 2].iter().enumerate().all(|(s, bit)| {
                    *sides & bit == 0
                        || states[s]
                            .get(path)
                            .is_some_and(|cur| same_as_base(cur, base))
                });
                !unchanged
            })
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// The `max_delete` for this pair's next run: the profile's limit, less what this
    /// watcher's runs deleted in the last minutes.
    fn delete_limit(&mut self, n: usize) -> Option<DeleteLimit> {
        let now = Instant::now();
        let pr = &mut self.pairs[n];
        while pr
            .deletions
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) > DELETE_WINDOW)
        {
            pr.deletions.pop_front();
        }
        if pr.deletions.is_empty() {
            return None;
        }
        let total = match self.profile.max_delete {
            DeleteLimit::Percent(p) => (pr.ref_files as f64 * p / 100.0).floor() as u64,
            DeleteLimit::Count(c) => c,
        };
        let used_a: u64 = pr.deletions.iter().map(|d| d.1).sum();
        let used_b: u64 = pr.deletions.iter().map(|d| d.2).sum();
        Some(DeleteLimit::Count(total.saturating_sub(used_a.max(used_b))))
    }

    fn synced_files(&self, k: usize) -> u64 {
        let Ok(store) = engine::open_store(self.home, &self.profile.name) else {
            return 0;
        };
        let id = |name: &str| store.replica_id(name).ok().flatten().map(|(id, _)| id);
        let (Some(ida), Some(idb)) = (
            id(&self.profile.replicas[0].name),
            id(&self.profile.replicas[k].name),
        ) else {
            return 0;
        };
        let Ok(Some(pair)) = store.find_pair_id(&engine::pair_key(&ida, &idb)) else {
            return 0;
        };
        store
            .load_base(pair)
            .map(|b| b.iter().filter(|(_, e)| !e.is_dir()).count() as u64)
            .unwrap_or(0)
    }

    fn run_pair(&mut self, n: usize, trig: Trigger) {
        let now = Instant::now();
        let k = self.pairs[n].k;
        let full = self.pairs[n].full || trig != Trigger::Events;
        let pending = std::mem::take(&mut self.pairs[n].pending);
        let (first_at, last_at) = (self.pairs[n].first_at, self.pairs[n].last_at);
        {
            let pr = &mut self.pairs[n];
            pr.full = false;
            pr.first_at = None;
            pr.last_at = None;
            if pr.busy {
                pr.busy = false;
                pr.retry_at = None;
            }
        }
        let paths: Vec<RelPath> = if full {
            Vec::new()
        } else {
            let changed = self.still_changed(n, &pending);
            if changed.is_empty() {
                if self.p.verbose > 1 {
                    self.log(&format!(
                        "{} <-> {}: {} events, nothing changed (own writes or already synced)",
                        self.pairs[n].a,
                        self.pairs[n].b,
                        pending.len()
                    ));
                }
                return;
            }
            // None: too many subtrees, sync everything.
            collapse(&changed, MAX_RUN_PATHS).unwrap_or_default()
        };
        let full = full || paths.is_empty();
        let mut prof = self.pair_profile(k);
        let windowed = self.delete_limit(n);
        if let Some(limit) = windowed {
            prof.max_delete = limit;
        }
        let opts = Options {
            paths: paths.clone(),
            wait: false,
            label: Some("watch".into()),
            cancel: Some(self.stop.clone()),
            ..Default::default()
        };
        let started = Instant::now();
        let res = engine::sync(self.home, &prof, &opts, &NoProgress);
        if full {
            self.pairs[n].next_full = Instant::now() + self.interval;
        }
        self.pairs[n].first_done = true;
        let elapsed = started.elapsed();
        match res {
            Err(EngineError::Locked { .. }) => {
                // Another fedsync run (a manual sync, `resolve`...) holds the lock: try
                // again shortly with the same work. Not a failure.
                let pr = &mut self.pairs[n];
                for (p, s) in pending {
                    *pr.pending.entry(p).or_insert(0) |= s;
                }
                pr.full |= full;
                pr.first_at = first_at.or(Some(now));
                pr.last_at = last_at.or(Some(now));
                if trig == Trigger::Initial {
                    pr.first_done = false;
                }
                pr.busy = true;
                pr.retry_at = Some(Instant::now() + jitter(Duration::from_secs(1)));
                let msg = format!(
                    "{} <-> {}: another fedsync run holds the lock; trying again shortly",
                    pr.a, pr.b
                );
                if self.p.verbose > 0 {
                    self.log(&msg);
                }
                self.write_health();
            }
            Err(e) => {
                self.runs += 1;
                let msg = e.to_string();
                self.failed(n, trig, &paths, None, &msg, "", elapsed);
            }
            Ok(report) => {
                self.runs += 1;
                for w in &report.warnings {
                    if !self.p.quiet {
                        self.p.warn(w);
                    }
                }
                let Some(pair) = report.pairs.first() else {
                    // Stopped before the pair started.
                    self.write_health();
                    return;
                };
                match pair.status {
                    PairStatus::Refused | PairStatus::Failed => {
                        let mut msg = pair_failure_text(pair);
                        if windowed.is_some() && msg.starts_with("refused: this run would delete") {
                            msg.push_str(&format!(
                                " (under watch, the deletions of the last {} minutes count together \
                                 against max_delete, so that a mass deletion cannot pass in small runs)",
                                DELETE_WINDOW.as_secs() / 60
                            ));
                        }
                        self.failed(n, trig, &paths, Some(pair), &msg, &report.run, elapsed);
                    }
                    PairStatus::Skipped => {
                        let msg = pair
                            .message
                            .clone()
                            .or_else(|| report.warnings.first().cloned())
                            .unwrap_or_else(|| "optional replica not present".into());
                        self.skipped(n, trig, &msg, &report.run, elapsed);
                    }
                    PairStatus::Ok | PairStatus::Incomplete => {
                        self.succeeded(n, trig, &paths, pair, &report.run, elapsed);
                    }
                }
            }
        }
    }

    fn backoff(&mut self, n: usize) -> Duration {
        let pr = &mut self.pairs[n];
        pr.attempts = pr.attempts.saturating_add(1);
        let d = backoff_delay(&self.tun, pr.attempts);
        pr.retry_at = Some(Instant::now() + d);
        pr.next_retry = Some(rfc3339_in(d));
        d
    }

    /// After a failed or skipped run: a local root that is gone is not watched any more
    /// (a stale watch on an unmounted drive); it is watched again when a run succeeds.
    fn forget_vanished_roots(&mut self, n: usize) {
        let k = self.pairs[n].k;
        for i in [0, k] {
            let gone = self.reps[i].root.as_ref().is_some_and(|r| !r.is_dir());
            if gone && self.reps[i].mode != RepWatch::Off {
                self.reps[i].tree = None;
                self.reps[i].mode = RepWatch::Unavailable;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn failed(
        &mut self,
        n: usize,
        trig: Trigger,
        paths: &[RelPath],
        pair: Option<&PairReport>,
        msg: &str,
        run: &str,
        elapsed: Duration,
    ) {
        self.forget_vanished_roots(n);
        let d = self.backoff(n);
        let now_s = now_rfc3339();
        let (pair_name, failures, alert) = {
            let pr = &mut self.pairs[n];
            pr.full = true;
            pr.pending.clear();
            pr.consecutive_failures += 1;
            pr.state = "failing";
            pr.last_run = Some(now_s);
            pr.last_run_id = (!run.is_empty()).then(|| run.to_string());
            pr.last_error = Some(msg.to_string());
            let alert = !pr.alerted && pr.consecutive_failures >= self.tun.notify_after;
            if alert {
                pr.alerted = true;
            }
            (
                format!("{} <-> {}", pr.a, pr.b),
                pr.consecutive_failures,
                alert,
            )
        };
        self.print_run(n, trig, paths, pair, run, Some(msg), Some(d), elapsed);
        if alert {
            self.alert(&pair_name, msg, run, failures);
        }
        self.write_health();
    }

    fn skipped(&mut self, n: usize, trig: Trigger, msg: &str, run: &str, elapsed: Duration) {
        self.forget_vanished_roots(n);
        let d = self.backoff(n);
        let now_s = now_rfc3339();
        let was_skipped = self.pairs[n].state == "skipped";
        {
            let pr = &mut self.pairs[n];
            pr.full = true;
            pr.pending.clear();
            pr.state = "skipped";
            pr.last_run = Some(now_s);
            pr.last_run_id = Some(run.to_string());
            pr.last_error = Some(msg.to_string());
        }
        if self.p.verbose > 0 || !was_skipped {
            self.print_run(
                n,
                trig,
                &[],
                None,
                run,
                Some(&format!("skipped: {msg}")),
                Some(d),
                elapsed,
            );
        }
        self.write_health();
    }

    fn succeeded(
        &mut self,
        n: usize,
        trig: Trigger,
        paths: &[RelPath],
        pair: &PairReport,
        run: &str,
        elapsed: Duration,
    ) {
        let k = self.pairs[n].k;
        let now_s = now_rfc3339();
        let recovered = self.pairs[n].consecutive_failures > 0;
        {
            let pr = &mut self.pairs[n];
            pr.attempts = 0;
            pr.retry_at = None;
            pr.next_retry = None;
            pr.consecutive_failures = 0;
            pr.alerted = false;
            pr.state = if pair.status == PairStatus::Ok {
                "ok"
            } else {
                "incomplete"
            };
            pr.last_run = Some(now_s.clone());
            pr.last_run_id = Some(run.to_string());
            pr.last_success = Some(now_s);
            pr.last_error = None;
        }
        // Deletions count against max_delete over a window (see delete_limit).
        let (da, db) = (pair.counts.deleted_a, pair.counts.deleted_b);
        if da + db > 0 {
            if self.pairs[n].deletions.is_empty() {
                let files = self.synced_files(k);
                self.pairs[n].ref_files = files + da + db;
            }
            self.pairs[n].deletions.push_back((Instant::now(), da, db));
        }
        // Star topology: what this spoke brought to the hub goes to the other spokes.
        if self.pairs.len() > 1 {
            let hub = &self.profile.replicas[0].name;
            let now = Instant::now();
            let to_hub: Vec<RelPath> = pair
                .items
                .iter()
                .filter(|it| it.target.as_deref() == Some(hub.as_str()))
                .filter(|it| it.outcome == Outcome::Done)
                .filter_map(|it| RelPath::new(&it.path).ok())
                .collect();
            if !to_hub.is_empty() {
                for (m, other) in self.pairs.iter_mut().enumerate() {
                    if m != n {
                        for p in &to_hub {
                            other.add(p.clone(), 1, now);
                        }
                    }
                }
            }
        }
        // A replica that was away is back: watch it again.
        for i in [0, k] {
            if self.reps[i].root.is_some()
                && matches!(self.reps[i].mode, RepWatch::Unavailable)
                && self.tun.events != EventsMode::Off
            {
                self.start_watching(i);
                if !self.p.quiet && !self.p.json {
                    outln!(
                        "{} replica {} is back; watching it again ({})",
                        local_time(),
                        self.reps[i].name,
                        self.reps[i].mode.name()
                    );
                }
            }
        }
        let quiet_rescan = trig == Trigger::Rescan
            && changes(pair) == 0
            && pair.counts.conflicts == 0
            && !recovered;
        if !quiet_rescan || self.p.verbose > 0 {
            self.print_run(n, trig, paths, Some(pair), run, None, None, elapsed);
        }
        self.write_health();
    }

    #[allow(clippy::too_many_arguments)]
    fn print_run(
        &self,
        n: usize,
        trig: Trigger,
        paths: &[RelPath],
        pair: Option<&PairReport>,
        run: &str,
        error: Option<&str>,
        retry: Option<Duration>,
        elapsed: Duration,
    ) {
        let pr = &self.pairs[n];
        if self.p.json {
            let v = serde_json::json!({
                "time": now_rfc3339(),
                "profile": self.profile.name,
                "pair": format!("{} <-> {}", pr.a, pr.b),
                "trigger": trig.name(),
                "paths": if paths.is_empty() { serde_json::json!("all") } else { serde_json::json!(paths) },
                "run": if run.is_empty() { None } else { Some(run) },
                "status": match (pair, error) {
                    (Some(p), _) => serde_json::json!(p.status),
                    (None, Some(e)) if e.starts_with("skipped:") => serde_json::json!("skipped"),
                    (None, Some(_)) => serde_json::json!("failed"),
                    (None, None) => Value::Null,
                },
                "counts": pair.map(|p| &p.counts),
                "error": error,
                "consecutive_failures": pr.consecutive_failures,
                "next_retry_secs": retry.map(|d| d.as_secs_f64()),
                "elapsed_ms": elapsed.as_millis() as u64,
            });
            outln!("{v}");
            return;
        }
        if let Some(e) = error {
            // Errors are shown even with -q.
            let retry = retry
                .map(|d| format!("; retry in {}", short_duration(d)))
                .unwrap_or_default();
            let count = if pr.consecutive_failures > 1 {
                format!(" ({} in a row)", pr.consecutive_failures)
            } else {
                String::new()
            };
            let line = format!(
                "{} {} <-> {} [{}] {}{count}{retry}",
                local_time(),
                pr.a,
                pr.b,
                trig.name(),
                e
            );
            if e.starts_with("skipped:") {
                if !self.p.quiet {
                    outln!("{line}");
                }
            } else {
                self.p.error(&line);
            }
            return;
        }
        if self.p.quiet {
            return;
        }
        let Some(pair) = pair else { return };
        let what = summary(pair);
        let scope = if paths.is_empty() {
            "all".to_string()
        } else if paths.len() <= 3 {
            paths
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            format!(
                "{}, {} and {} more",
                paths[0].as_str(),
                paths[1].as_str(),
                paths.len() - 2
            )
        };
        outln!(
            "{} {} <-> {} [{} {}] {} ({:.2} s, run {})",
            local_time(),
            pr.a,
            pr.b,
            trig.name(),
            scope,
            what,
            elapsed.as_secs_f64(),
            run
        );
    }

    fn alert(&mut self, pair: &str, error: &str, run: &str, failures: u32) {
        let title = format!("fedsync: {} is not syncing", self.profile.name);
        let body = format!("{pair}: {error}");
        if let Err(why) = desktop_notify(&title, &body) {
            if !self.said_no_desktop {
                self.said_no_desktop = true;
                eprintln!(
                    "fedsync watch: no desktop notification ({why}); failures are reported here"
                );
            }
        }
        run_hook(self.profile, pair, error, run, failures, false);
    }

    fn watcher_state(&self) -> &'static str {
        if self.stopped {
            return "stopped";
        }
        let modes: Vec<RepWatch> = self.reps.iter().map(|r| r.mode).collect();
        if modes.contains(&RepWatch::Polling) {
            "polling"
        } else if modes.contains(&RepWatch::Native) {
            "native"
        } else {
            "off"
        }
    }

    fn write_health(&mut self) {
        self.health_written = Instant::now();
        self.health_pending = self.pairs.iter().map(|p| p.pending.len()).sum();
        let h = Health {
            pid: std::process::id(),
            started: self.started.clone(),
            updated: now_rfc3339(),
            watcher: self.watcher_state().into(),
            interval_secs: self.interval.as_secs(),
            runs: self.runs,
            replicas: self
                .reps
                .iter()
                .map(|r| ReplicaHealth {
                    name: r.name.clone(),
                    watcher: if self.stopped {
                        "stopped".into()
                    } else {
                        r.mode.name().into()
                    },
                })
                .collect(),
            pairs: self.pairs.iter().map(Pair::health).collect(),
        };
        let path = health_path(self.home, &self.profile.name);
        if let Ok(text) = serde_json::to_vec_pretty(&h) {
            if let Err(e) = write_atomic(&path, &text) {
                self.log(&format!("cannot write {}: {e}", path.display()));
            }
        }
    }
}

/// The wait before the `attempts`-th retry: doubling from the minimum up to the maximum,
/// with jitter (never below the minimum).
fn backoff_delay(t: &Tuning, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(20);
    let base = t.backoff_min.saturating_mul(1u32 << exp).min(t.backoff_max);
    jitter(base).max(t.backoff_min.min(base))
}

fn mode_of(m: Mode) -> RepWatch {
    match m {
        Mode::Native => RepWatch::Native,
        Mode::Polling => RepWatch::Polling,
    }
}

/// `d` scaled by a random factor in [0.5, 1] ("equal jitter").
fn jitter(d: Duration) -> Duration {
    let f: f64 = 0.5 + rand::random::<f64>() * 0.5;
    d.mul_f64(f)
}

fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if d.as_millis() >= 10_000 {
        format!("{s}s")
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

fn changes(p: &PairReport) -> u64 {
    let c = &p.counts;
    c.to_a + c.to_b + c.deleted_a + c.deleted_b + c.moved + c.merged
}

/// "2 -> b (1.2 KB), 1 deleted on a, 1 conflict" or "nothing to do".
fn summary(p: &PairReport) -> String {
    let parts = crate::output::count_parts(p, &|_, t| t, " (fedsync resolve)");
    if parts.is_empty() {
        "in sync, nothing to do".into()
    } else {
        let mut s = parts.join(", ");
        let shown: Vec<&str> = p
            .items
            .iter()
            .filter(|it| it.outcome == Outcome::Done)
            .map(|it| it.path.as_str())
            .take(3)
            .collect();
        if !shown.is_empty() {
            s.push_str(&format!(": {}", shown.join(", ")));
            let done = p
                .items
                .iter()
                .filter(|it| it.outcome == Outcome::Done)
                .count();
            if done > shown.len() {
                s.push_str(&format!(" +{}", done - shown.len()));
            }
        }
        s
    }
}

/// The state of a path on one replica, unhashed (`Err`: it could not be looked at).
type State = Result<Option<Entry>, ()>;

/// The state of `abs` on a local replica, as the agent reports it for its own side.
fn local_state(abs: &Path) -> State {
    match std::fs::symlink_metadata(abs) {
        Ok(md) => {
            let link = if md.file_type().is_symlink() {
                Some(
                    std::fs::read_link(abs)
                        .ok()
                        .and_then(|l| l.to_str().map(str::to_string))
                        .ok_or(())?,
                )
            } else {
                None
            };
            // (Sockets, fifos: never synced, so never the base's.)
            fedsync_core::replica::local::entry_from_meta(&md, link)
                .map(Some)
                .ok_or(())
        }
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.kind() == std::io::ErrorKind::NotADirectory =>
        {
            Ok(None)
        }
        Err(_) => Err(()),
    }
}

/// Whether a path's current state is what the base recorded: no change on this side.
fn same_as_base(cur: &State, base: Option<&Entry>) -> bool {
    match (cur, base) {
        (Err(()), _) => false,
        (Ok(None), None) => true,
        (Ok(None), Some(_)) | (Ok(Some(_)), None) => false,
        (Ok(Some(c)), Some(b)) => match c.kind {
            Kind::Dir => b.kind == Kind::Dir,
            Kind::File => {
                b.kind == Kind::File
                    && b.size == c.size
                    && b.mtime == c.mtime
                    && (b.mode & 0o111) == (c.mode & 0o111)
            }
            Kind::Symlink => b.kind == Kind::Symlink && c.link == b.link,
        },
    }
}

/// The changed paths as at most `cap` subtrees: nested paths dropped, then the deepest
/// ones replaced by their parents until few enough remain. `None`: the whole tree.
pub fn collapse(paths: &BTreeSet<RelPath>, cap: usize) -> Option<Vec<RelPath>> {
    fn minimal(set: BTreeSet<RelPath>) -> Vec<RelPath> {
        let all: HashSet<&str> = set.iter().map(|p| p.as_str()).collect();
        set.iter()
            .filter(|p| !p.ancestors().any(|a| all.contains(a)))
            .cloned()
            .collect()
    }
    if paths.iter().any(|p| p.is_root()) {
        return None;
    }
    let mut cur = minimal(paths.clone());
    while cur.len() > cap {
        let deepest = cur.iter().map(|p| p.depth()).max().unwrap_or(0);
        if deepest <= 1 {
            return None;
        }
        let mut next = BTreeSet::new();
        for p in cur {
            if p.depth() == deepest {
                match p.parent() {
                    Some(q) if !q.is_root() => {
                        next.insert(q);
                    }
                    _ => return None,
                }
            } else {
                next.insert(p);
            }
        }
        cur = minimal(next);
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<RelPath> {
        v.iter().map(|s| RelPath::new(s).unwrap()).collect()
    }
    fn strs(v: Option<Vec<RelPath>>) -> Option<Vec<String>> {
        v.map(|v| v.into_iter().map(|p| p.as_str().to_string()).collect())
    }

    #[test]
    fn collapse_drops_nested_and_caps() {
        assert_eq!(
            strs(collapse(&set(&["a", "a/b", "a-b", "c/d/e"]), 10)),
            Some(vec!["a".into(), "a-b".into(), "c/d/e".into()])
        );
        let many: Vec<String> = (0..100).map(|i| format!("x/y/f{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(strs(collapse(&set(&refs), 10)), Some(vec!["x/y".into()]));
        let tops: Vec<String> = (0..100).map(|i| format!("t{i}")).collect();
        let refs: Vec<&str> = tops.iter().map(String::as_str).collect();
        assert_eq!(strs(collapse(&set(&refs), 10)), None);
        assert_eq!(strs(collapse(&set(&[""]), 10)), None);
    }

    #[test]
    fn backoff_jitter_stays_in_bounds() {
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(8));
            assert!(d >= Duration::from_secs(4) && d <= Duration::from_secs(8));
        }
    }
}
