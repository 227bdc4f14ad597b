use crate::output::{self, Printer};
use clap::{Args, Parser, Subcommand};
use fedsync_core::config::{Policy, Profile, ReplicaAddr};
use fedsync_core::engine::{self, EngineError, Options};
use fedsync_core::history;
use fedsync_core::path::RelPath;
use fedsync_core::Home;
use std::path::PathBuf;

/// fedsync keeps folders identical across machines and disks, in both directions, and
/// never loses a version.
#[derive(Parser, Debug)]
#[command(name = "fedsync", version, about, long_about = None)]
pub struct Cli {
    /// Where profiles and state live [default: the platform's config and data dirs]
    #[arg(long, global = true, env = "FEDSYNC_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    /// More detail (every path and why)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Machine-readable output on stdout
    #[arg(long, global = true)]
    json: bool,
    /// No colors (also NO_COLOR)
    #[arg(long, global = true)]
    no_color: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create profile NAME for two or more roots, write their markers, print where it is
    Init {
        name: String,
        #[arg(required = true, num_args = 2..)]
        roots: Vec<String>,
        /// Starting ignore list: `code` (build outputs, VCS) or `notes` (editor/OS clutter)
        #[arg(long)]
        preset: Option<String>,
    },
    /// Reconcile and apply: `fedsync sync NAME` or `fedsync sync DIR_A DIR_B`
    Sync(SyncArgs),
    /// What sync would do, per path, with the rule that decided it; changes nothing
    Plan(SyncArgs),
    /// Replicas reachable?, last run, pending changes each way, open conflicts
    Status { name: Option<String> },
    /// Settle open conflicts (queued by the `ask` policy); asks per item on a terminal
    Resolve {
        name: String,
        /// Only the open conflicts at (or below) these paths
        paths: Vec<String>,
        /// Settle without asking: keep replica R's copy, the newest, both, or merge
        #[arg(long, value_name = "R|newest|both|merge")]
        keep: Option<String>,
    },
    /// Base, both current states, the rule and the decision for one path
    Why { name: String, path: String },
    /// The audit trail
    Log {
        name: Option<String>,
        /// Only this run
        #[arg(long)]
        run: Option<String>,
        /// Only paths matching this glob
        #[arg(long)]
        path: Option<String>,
        /// Only records newer than this (e.g. `2h`, `3d`, or `2026-11-22`)
        #[arg(long)]
        since: Option<String>,
        /// Check the hash chain and report any edited, removed or inserted line
        #[arg(long)]
        verify: bool,
    },
    /// Undo a whole run (default: the last run that changed something)
    Rollback {
        name: String,
        run: Option<String>,
        /// Also undo paths that changed since the run (their current content is kept as a version)
        #[arg(long)]
        force: bool,
        /// Wait for another run of the same profile instead of failing
        #[arg(long)]
        wait: bool,
    },
    /// Kept versions of PATH with ids, times, sizes, origin run
    Versions { name: String, path: String },
    /// Put a version of PATH back (itself a run, so it can be undone)
    Restore {
        name: String,
        path: String,
        /// The version to put back (an id from `fedsync versions`) [default: the newest]
        #[arg(long, value_name = "ID")]
        version: Option<String>,
        /// The replica holding the version, when several do
        #[arg(long, value_name = "REPLICA")]
        replica: Option<String>,
        /// Wait for another run of the same profile instead of failing
        #[arg(long)]
        wait: bool,
    },
    /// Re-hash every file on every replica; compare with each other and the base
    Verify { name: String },
    /// Apply version retention (`versions = { keep, max_age }`) now
    Prune {
        name: String,
        /// Show what would be removed; remove nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Serve the dashboard (a web page and JSON API) for profile NAME on this machine
    Ui {
        name: String,
        /// Address to listen on (port 0 picks a free one; the actual address is printed)
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8384")]
        listen: String,
        /// Allow a non-loopback --listen address (anyone who reaches it with the token can
        /// change files; there is no TLS)
        #[arg(long)]
        allow_remote: bool,
    },
    /// The remote agent, spoken to over stdin/stdout (started via ssh by the client)
    Serve {
        /// The replica root on this machine
        root: PathBuf,
    },
    /// Sync continuously: file events trigger runs of the changed subtrees, plus a periodic
    /// full rescan; stops cleanly on Ctrl-C / SIGTERM
    Watch(crate::watch::WatchArgs),
    /// Run watch (or a periodic sync) in the background: systemd user unit / launchd agent
    #[command(subcommand)]
    Service(crate::service::ServiceCmd),
}

#[derive(Args, Debug)]
struct SyncArgs {
    /// A profile name, or two folders to sync without a profile
    #[arg(required = true, num_args = 1..=2, value_name = "NAME | DIR_A DIR_B")]
    target: Vec<String>,
    /// Show what would happen; change nothing
    #[arg(long)]
    dry_run: bool,
    /// Pass the delete guard (max_delete)
    #[arg(long)]
    force: bool,
    /// Re-hash every file instead of trusting size and mtime
    #[arg(long)]
    checksum: bool,
    /// Conflict policy for this run: keep-both, newest, prefer:REPLICA, ask
    #[arg(long, value_name = "POLICY")]
    conflict: Option<Policy>,
    /// Only these paths (relative to the roots)
    #[arg(long, num_args = 1..)]
    paths: Vec<String>,
    /// Use this profile file instead of $FEDSYNC_HOME/profiles/NAME.toml
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Wait for another run of the same profile instead of failing
    #[arg(long)]
    wait: bool,
    /// If any item fails, undo everything this run did (replicas end as before the run)
    #[arg(long)]
    atomic: bool,
    /// When a remote host has no fedsync, upload this binary to ~/.cache/fedsync there
    /// (same OS and architecture only) and use it
    #[arg(long)]
    deploy_agent: bool,
}

/// An error with its exit code, printed once at the edge.
pub struct Fail {
    pub code: i32,
    pub msg: String,
}

impl From<EngineError> for Fail {
    fn from(e: EngineError) -> Fail {
        Fail {
            code: e.exit_code(),
            msg: e.to_string(),
        }
    }
}

fn usage(msg: impl Into<String>) -> Fail {
    Fail {
        code: 2,
        msg: msg.into(),
    }
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let color = !cli.no_color && std::env::var_os("NO_COLOR").is_none();
    let p = Printer::new(cli.json, cli.quiet, cli.verbose, color);
    let code = match run(&cli, &p) {
        Ok(code) => code,
        Err(f) => {
            p.error(&f.msg);
            f.code
        }
    };
    if std::env::var_os("FEDSYNC_CRASH_COUNT").is_some() {
        eprintln!(
            "fedsync: crash points reached: {}",
            fedsync_core::faults::reached()
        );
    }
    code
}

fn home(cli: &Cli) -> Result<Home, Fail> {
    if let Some(h) = &cli.home {
        return Ok(Home::new(h.clone()));
    }
    let dirs = directories::ProjectDirs::from("", "", "fedsync").ok_or_else(|| {
        usage(
            "cannot find a home directory for fedsync's state; pass --home DIR or set FEDSYNC_HOME",
        )
    })?;
    Ok(Home::split(
        dirs.config_dir().to_path_buf(),
        dirs.data_dir().to_path_buf(),
    ))
}

fn load_profile(home: &Home, name: &str, config: Option<&PathBuf>) -> Result<Profile, Fail> {
    let path = match config {
        Some(c) => c.clone(),
        None => home.profile_path(name),
    };
    if !path.exists() && config.is_none() && name.starts_with("adhoc-") {
        if let Some(p) = adhoc_profile(home, name) {
            return Ok(p);
        }
    }
    if !path.exists() {
        return Err(usage(format!(
            "no profile named {name:?} (looked for {}). Create one with `fedsync init {name} DIR_A DIR_B`, \
             or sync two folders directly with `fedsync sync DIR_A DIR_B`.",
            path.display()
        )));
    }
    Profile::load(name, &path).map_err(|e| usage(e.to_string()))
}

/// The profile of an earlier `fedsync sync DIR_A DIR_B`, by the name its output printed.
fn adhoc_profile(home: &Home, name: &str) -> Option<Profile> {
    if !home.db_path(name).exists() {
        return None;
    }
    let store = engine::open_store(home, name).ok()?;
    let (_, ra) = store.replica_id("a").ok()??;
    let (_, rb) = store.replica_id("b").ok()??;
    let mut prof = Profile::adhoc(
        ReplicaAddr::Local(PathBuf::from(&ra)),
        ReplicaAddr::Local(PathBuf::from(&rb)),
        ra,
        rb,
    );
    prof.name = name.to_string();
    Some(prof)
}

/// `NAME` or `DIR_A DIR_B` -> a profile and whether it is ad hoc.
fn resolve_target(home: &Home, a: &SyncArgs) -> Result<(Profile, bool), Fail> {
    match a.target.as_slice() {
        [name] => Ok((load_profile(home, name, a.config.as_ref())?, false)),
        [ra, rb] => {
            let pa = ReplicaAddr::parse(ra).map_err(|e| usage(format!("{ra}: {e}")))?;
            let pb = ReplicaAddr::parse(rb).map_err(|e| usage(format!("{rb}: {e}")))?;
            let canon = |a: ReplicaAddr| match a {
                ReplicaAddr::Local(x) => ReplicaAddr::Local(engine::canonical_root(&x)),
                remote => remote,
            };
            let (pa, pb) = (canon(pa), canon(pb));
            if let (ReplicaAddr::Local(pa), ReplicaAddr::Local(pb)) = (&pa, &pb) {
                if pa == pb || pa.starts_with(pb) || pb.starts_with(pa) {
                    return Err(usage(format!(
                        "{} and {} overlap; the two roots must be separate folders",
                        pa.display(),
                        pb.display()
                    )));
                }
                if !pa.is_dir() && !pb.is_dir() {
                    return Err(Fail {
                        code: 3,
                        msg: format!(
                            "neither {} nor {} exists; nothing to sync. Check the paths.",
                            pa.display(),
                            pb.display()
                        ),
                    });
                }
            } else if pa == pb {
                return Err(usage(format!(
                    "{pa} is given twice; give two different roots"
                )));
            }
            let (sa, sb) = (pa.to_string(), pb.to_string());
            let mut prof = Profile::adhoc(pa, pb, sa.clone(), sb.clone());
            prof.name = engine::adhoc_name(&sa, &sb);
            Ok((prof, true))
        }
        _ => Err(usage("give a profile name, or two folders")),
    }
}

fn run(cli: &Cli, p: &Printer) -> Result<i32, Fail> {
    // The agent needs no home and prints nothing but the protocol on stdout.
    if let Cmd::Serve { root } = &cli.cmd {
        return Ok(fedsync_core::remote::agent::serve(root));
    }
    let home = home(cli)?;
    match &cli.cmd {
        Cmd::Init {
            name,
            roots,
            preset,
        } => output::init(&home, p, name, roots, preset.as_deref()),
        Cmd::Sync(a) | Cmd::Plan(a) => {
            let plan = matches!(cli.cmd, Cmd::Plan(_));
            let (profile, adhoc) = resolve_target(&home, a)?;
            let paths = a
                .paths
                .iter()
                .map(|s| RelPath::new(s.trim_end_matches('/')).map_err(|e| usage(e.to_string())))
                .collect::<Result<Vec<_>, _>>()?;
            let opts = Options {
                dry_run: a.dry_run || plan,
                force: a.force,
                checksum: a.checksum,
                conflict: a.conflict.clone(),
                paths,
                wait: a.wait,
                create_missing: adhoc,
                atomic: a.atomic,
                label: None,
                cancel: Some(stop_on_signals()),
            };
            fedsync_core::remote::set_deploy_agent(a.deploy_agent);
            let progress = p.progress();
            let report = match engine::sync(&home, &profile, &opts, &progress) {
                Ok(r) => r,
                Err(e) => {
                    // A lock held by another run is not a failure to sync: no hook.
                    if !opts.dry_run
                        && e.exit_code() == 3
                        && !matches!(e, EngineError::Locked { .. })
                    {
                        crate::watch::sync_failed(&profile, None, Some(&e.to_string()));
                    }
                    return Err(e.into());
                }
            };
            if !opts.dry_run && report.exit_code() == 3 {
                crate::watch::sync_failed(&profile, Some(&report), None);
            }
            drop(progress);
            p.run_report(&report, plan || a.dry_run);
            Ok(report.exit_code())
        }
        Cmd::Status { name } => output::status(&home, p, name.as_deref()),
        Cmd::Resolve { name, paths, keep } => {
            let profile = load_profile(&home, name, None)?;
            crate::resolve::resolve(&home, p, &profile, paths, keep.as_deref())
        }
        Cmd::Why { name, path } => {
            let profile = load_profile(&home, name, None)?;
            output::why(&home, p, &profile, path)
        }
        Cmd::Log {
            name,
            run,
            path,
            since,
            verify,
        } => output::log(
            &home,
            p,
            name.as_deref(),
            run.as_deref(),
            path.as_deref(),
            since.as_deref(),
            *verify,
        ),
        Cmd::Rollback {
            name,
            run,
            force,
            wait,
        } => {
            let profile = load_profile(&home, name, None)?;
            let r = history::rollback(&home, &profile, run.as_deref(), *force, *wait)?;
            p.change_report(&r);
            Ok(r.exit_code())
        }
        Cmd::Versions { name, path } => {
            let profile = load_profile(&home, name, None)?;
            let path = rel_arg(path)?;
            let (list, unavailable) = history::versions(&home, &profile, &path)?;
            p.versions(&profile.name, &path, &list, &unavailable);
            Ok(0)
        }
        Cmd::Restore {
            name,
            path,
            version,
            replica,
            wait,
        } => {
            let profile = load_profile(&home, name, None)?;
            let path = rel_arg(path)?;
            let r = history::restore(
                &home,
                &profile,
                &path,
                version.as_deref(),
                replica.as_deref(),
                *wait,
            )?;
            p.change_report(&r);
            Ok(r.exit_code())
        }
        Cmd::Verify { name } => {
            let profile = load_profile(&home, name, None)?;
            let r = fedsync_core::verify::verify(&home, &profile)?;
            p.verify_report(&r);
            Ok(r.exit_code())
        }
        Cmd::Prune { name, dry_run } => {
            let profile = load_profile(&home, name, None)?;
            let _lock = engine::lock(&home, &profile.name, false)?;
            let r = history::prune(&home, &profile, *dry_run)?;
            p.prune_report(&profile, &r, *dry_run);
            Ok(if r.errors.is_empty() { 0 } else { 3 })
        }
        Cmd::Ui {
            name,
            listen,
            allow_remote,
        } => {
            let addr = crate::ui::listen_addr(listen, *allow_remote)?;
            let profile = load_profile(&home, name, None)?;
            crate::ui::serve(&home, p, profile, addr)
        }
        Cmd::Watch(a) => {
            let profile = load_profile(&home, &a.name, None)?;
            crate::watch::watch(&home, p, &profile, a)
        }
        Cmd::Service(s) => crate::service::run(&home, p, s, cli.home.as_deref()),
        Cmd::Serve { .. } => unreachable!("handled before the home is needed"),
    }
}

/// SIGINT/SIGTERM set the returned flag: the engine finishes the item it is writing and
/// stops cleanly (lock released, journal closed). A second signal exits at once (exit 130);
/// even then the next run recovers.
pub fn stop_on_signals() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, flag.clone());
        let _ = signal_hook::flag::register(sig, flag.clone());
    }
    flag
}

fn rel_arg(s: &str) -> Result<RelPath, Fail> {
    RelPath::new(s.trim_start_matches("./").trim_end_matches('/')).map_err(|e| usage(e.to_string()))
}
