//! `fedsync service install|uninstall|status NAME`: run `fedsync watch NAME` (or a periodic
//! `fedsync sync NAME`) in the background under the platform's service manager: a systemd
//! user unit (+ timer for the interval form) on Linux, a launchd agent on macOS.

use crate::cli::Fail;
use crate::output::Printer;
use clap::{Args, Subcommand};
use fedsync_core::Home;
use serde::Serialize;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

macro_rules! outln {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(Subcommand, Debug)]
pub enum ServiceCmd {
    /// Write and enable a systemd user unit (Linux) or a launchd agent (macOS) that keeps
    /// profile NAME in sync; `--print` shows the files and installs nothing
    Install(InstallArgs),
    /// Stop, disable and remove the service of profile NAME
    Uninstall {
        name: String,
        /// Show what would be removed; remove nothing
        #[arg(long)]
        print: bool,
    },
    /// Whether the service of NAME is installed, enabled and running (exit 0 only if it is
    /// installed and enabled or running)
    Status { name: String },
}

#[derive(Args, Debug)]
pub struct InstallArgs {
    pub name: String,
    /// Run `fedsync watch NAME` continuously (the default)
    #[arg(long, conflicts_with = "interval")]
    pub watch: bool,
    /// Instead of watching, run `fedsync sync NAME` every D (e.g. `15m`, `1h`) from a
    /// systemd timer / launchd StartInterval
    #[arg(long, value_name = "D")]
    pub interval: Option<String>,
    /// Show the files that would be written (systemd units and the launchd plist); install
    /// nothing
    #[arg(long)]
    pub print: bool,
}

/// Watch continuously, or sync every interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    Watch,
    Interval(Duration),
}

/// One generated file.
#[derive(Clone, Debug, Serialize)]
pub struct UnitFile {
    pub path: PathBuf,
    pub content: String,
    /// `systemd` or `launchd`.
    pub manager: &'static str,
}

fn fail(code: i32, msg: impl Into<String>) -> Fail {
    Fail {
        code,
        msg: msg.into(),
    }
}

fn user_home() -> Result<PathBuf, Fail> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| directories::BaseDirs::new().map(|b| b.home_dir().to_path_buf()))
        .ok_or_else(|| fail(2, "cannot find your home directory (HOME is not set)"))
}

/// `~/.config/systemd/user` (or `$XDG_CONFIG_HOME/systemd/user`).
pub fn systemd_dir() -> Result<PathBuf, Fail> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        Some(x) if Path::new(&x).is_absolute() => PathBuf::from(x),
        _ => user_home()?.join(".config"),
    };
    Ok(base.join("systemd").join("user"))
}

pub fn launchd_dir() -> Result<PathBuf, Fail> {
    Ok(user_home()?.join("Library").join("LaunchAgents"))
}

/// A profile name as a unit-name part (systemd-escape style: `\xNN` for anything else).
fn unit_part(name: &str) -> String {
    let mut s = String::new();
    for (i, b) in name.bytes().enumerate() {
        let ok = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if ok {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

pub fn unit_name(name: &str) -> String {
    format!("fedsync-{}", unit_part(name))
}

pub fn launchd_label(name: &str) -> String {
    let part: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("org.fedsync.{part}")
}

/// One `ExecStart=` word: quoted when needed; `%` and `$` escaped (systemd expands both,
/// even inside quotes).
fn systemd_word(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_.:,+=@-".contains(&b));
    let esc = arg.replace('%', "%%").replace('$', "$$");
    if plain {
        return esc;
    }
    let mut s = String::from("\"");
    for c in esc.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            '\t' => s.push_str("\\t"),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The command line the service runs.
pub fn command_line(exe: &Path, home: Option<&Path>, name: &str, form: Form) -> Vec<String> {
    let mut v = vec![exe.display().to_string()];
    if let Some(h) = home {
        v.push("--home".into());
        v.push(h.display().to_string());
    }
    match form {
        Form::Watch => {
            v.push("watch".into());
            v.push(name.into());
        }
        Form::Interval(_) => {
            v.push("sync".into());
            v.push(name.into());
            v.push("--wait".into());
        }
    }
    v
}

/// Every file `install` would write for this profile: the systemd unit(s) and the launchd
/// plist (each is installed only on its own platform).
pub fn generate(
    exe: &Path,
    home: Option<&Path>,
    name: &str,
    form: Form,
) -> Result<Vec<UnitFile>, Fail> {
    let unit = unit_name(name);
    let argv = command_line(exe, home, name, form);
    let exec = argv
        .iter()
        .map(|a| systemd_word(a))
        .collect::<Vec<_>>()
        .join(" ");
    // `%` starts a specifier in every unit setting, not only in ExecStart.
    let desc_name = name.replace('%', "%%");
    let sd = systemd_dir()?;
    let mut files = Vec::new();
    let header = format!(
        "# Written by `fedsync service install {name}`; remove with `fedsync service uninstall {name}`.\n\
         # Logs: journalctl --user -u {unit}.service\n"
    );
    match form {
        Form::Watch => {
            files.push(UnitFile {
                path: sd.join(format!("{unit}.service")),
                manager: "systemd",
                content: format!(
                    "{header}[Unit]\n\
                     Description=fedsync: keep profile {desc_name} in sync (watch)\n\
                     \n\
                     [Service]\n\
                     Type=simple\n\
                     ExecStart={exec}\n\
                     Restart=on-failure\n\
                     RestartSec=30\n\
                     # SIGTERM to fedsync only: it finishes the item it is writing, releases the lock\n\
                     # and exits 0; helpers (ssh, hooks) are stopped after it.\n\
                     KillMode=mixed\n\
                     TimeoutStopSec=120\n\
                     \n\
                     [Install]\n\
                     WantedBy=default.target\n"
                ),
            });
        }
        Form::Interval(d) => {
            let secs = d.as_secs().max(1);
            files.push(UnitFile {
                path: sd.join(format!("{unit}.service")),
                manager: "systemd",
                content: format!(
                    "{header}[Unit]\n\
                     Description=fedsync: sync profile {desc_name} (started by {unit}.timer)\n\
                     \n\
                     [Service]\n\
                     Type=oneshot\n\
                     ExecStart={exec}\n\
                     KillMode=mixed\n\
                     TimeoutStopSec=120\n"
                ),
            });
            files.push(UnitFile {
                path: sd.join(format!("{unit}.timer")),
                manager: "systemd",
                content: format!(
                    "{header}[Unit]\n\
                     Description=fedsync: sync profile {desc_name} every {}\n\
                     \n\
                     [Timer]\n\
                     OnActiveSec=10s\n\
                     OnUnitActiveSec={secs}s\n\
                     Unit={unit}.service\n\
                     \n\
                     [Install]\n\
                     WantedBy=timers.target\n",
                    humantime::format_duration(Duration::from_secs(secs))
                ),
            });
        }
    }
    let label = launchd_label(name);
    let log = user_home()?
        .join("Library")
        .join("Logs")
        .join("fedsync")
        .join(format!("{}.log", unit_part(name)));
    let args_xml: String = argv
        .iter()
        .map(|a| format!("\t\t<string>{}</string>\n", xml_escape(a)))
        .collect();
    let schedule = match form {
        Form::Watch => "\t<key>KeepAlive</key>\n\t<dict>\n\t\t<key>SuccessfulExit</key>\n\t\t<false/>\n\t</dict>\n".to_string(),
        Form::Interval(d) => format!(
            "\t<key>StartInterval</key>\n\t<integer>{}</integer>\n",
            d.as_secs().max(1)
        ),
    };
    let log_xml = xml_escape(&log.display().to_string());
    files.push(UnitFile {
        path: launchd_dir()?.join(format!("{label}.plist")),
        manager: "launchd",
        content: format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
             <!-- Written by `fedsync service install {}`; remove with `fedsync service uninstall`. -->\n\
             <plist version=\"1.0\">\n\
             <dict>\n\
             \t<key>Label</key>\n\
             \t<string>{}</string>\n\
             \t<key>ProgramArguments</key>\n\
             \t<array>\n\
             {args_xml}\
             \t</array>\n\
             \t<key>RunAtLoad</key>\n\
             \t<true/>\n\
             {schedule}\
             \t<key>ProcessType</key>\n\
             \t<string>Background</string>\n\
             \t<key>StandardOutPath</key>\n\
             \t<string>{log_xml}</string>\n\
             \t<key>StandardErrorPath</key>\n\
             \t<string>{log_xml}</string>\n\
             </dict>\n\
             </plist>\n",
            xml_escape(&name.replace("--", "- -")),
            xml_escape(&label)
        ),
    });
    Ok(files)
}

fn run_cmd(prog: &str, args: &[&str]) -> Result<(i32, String, String), String> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    ))
}

fn systemctl(args: &[&str]) -> Result<(i32, String, String), String> {
    let mut all = vec!["--user"];
    all.extend_from_slice(args);
    run_cmd("systemctl", &all)
}

/// Whether a systemd user manager can be reached; `Err` says why not.
pub fn systemd_user_available() -> Result<(), String> {
    match systemctl(&["show-environment"]) {
        Err(e) => Err(format!("{e} (is systemd installed?)")),
        Ok((0, _, _)) => Ok(()),
        Ok((_, out, err)) => {
            let why = if err.is_empty() { out } else { err };
            Err(why.lines().next().unwrap_or("unknown error").to_string())
        }
    }
}

fn unavailable_msg(why: &str) -> String {
    format!(
        "systemd user sessions are not available here ({why}). This is usual in containers and \
         over plain `su`/`sudo`; log in normally (or `loginctl enable-linger $USER` as an admin), \
         or run `fedsync watch NAME` under your own supervisor. `--print` shows the unit files."
    )
}

fn exe_path() -> Result<PathBuf, Fail> {
    let exe = std::env::current_exe()
        .map_err(|e| fail(3, format!("cannot find the fedsync executable: {e}")))?;
    Ok(exe.canonicalize().unwrap_or(exe))
}

fn abs_home(home: Option<&Path>) -> Option<PathBuf> {
    home.map(|h| {
        std::path::absolute(h)
            .map(|a| a.canonicalize().unwrap_or(a))
            .unwrap_or_else(|_| h.to_path_buf())
    })
}

fn profile_known(home: &Home, name: &str) -> Result<(), Fail> {
    if home.profile_path(name).exists() || home.db_path(name).exists() {
        Ok(())
    } else {
        Err(fail(
            2,
            format!(
                "no profile named {name:?} (looked for {}). Create one with `fedsync init {name} DIR_A DIR_B` first.",
                home.profile_path(name).display()
            ),
        ))
    }
}

/// `fedsync service ...`. `home_arg` is the `--home`/`FEDSYNC_HOME` given, if any: the
/// service gets it too.
pub fn run(
    home: &Home,
    p: &Printer,
    cmd: &ServiceCmd,
    home_arg: Option<&Path>,
) -> Result<i32, Fail> {
    match cmd {
        ServiceCmd::Install(a) => install(home, p, a, home_arg),
        ServiceCmd::Uninstall { name, print } => uninstall(p, name, *print),
        ServiceCmd::Status { name } => status(p, name),
    }
}

fn install(
    home: &Home,
    p: &Printer,
    a: &InstallArgs,
    home_arg: Option<&Path>,
) -> Result<i32, Fail> {
    profile_known(home, &a.name)?;
    let form = match &a.interval {
        Some(s) => {
            let d = humantime::parse_duration(s)
                .map_err(|e| fail(2, format!("--interval {s:?}: {e} (give e.g. 15m, 1h)")))?;
            if d < Duration::from_secs(1) {
                return Err(fail(2, format!("--interval {s:?}: give at least 1s")));
            }
            Form::Interval(d)
        }
        None => Form::Watch,
    };
    let files = generate(&exe_path()?, abs_home(home_arg).as_deref(), &a.name, form)?;
    if a.print {
        if p.json {
            let v = serde_json::json!({
                "profile": a.name,
                "form": match form { Form::Watch => "watch", Form::Interval(_) => "interval" },
                "files": files,
            });
            outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        } else {
            for f in &files {
                let note = match f.manager {
                    "launchd" => "launchd agent, installed on macOS",
                    _ => "systemd user unit, installed on Linux",
                };
                outln!("# ---- {} ({note})", f.path.display());
                outln!("{}", f.content);
            }
        }
        return Ok(0);
    }
    let unit = unit_name(&a.name);
    if cfg!(target_os = "macos") {
        let plist = files
            .iter()
            .find(|f| f.manager == "launchd")
            .expect("plist generated");
        write_file(&plist.path, &plist.content)?;
        if let Some(dir) = user_home()
            .ok()
            .map(|h| h.join("Library").join("Logs").join("fedsync"))
        {
            let _ = std::fs::create_dir_all(dir);
        }
        let domain = format!("gui/{}", rustix::process::getuid().as_raw());
        let target = format!("{domain}/{}", launchd_label(&a.name));
        let _ = run_cmd("launchctl", &["bootout", &target]);
        let plist_s = plist.path.display().to_string();
        let r = run_cmd("launchctl", &["bootstrap", &domain, &plist_s]);
        let ok = matches!(r, Ok((0, _, _)))
            || matches!(
                run_cmd("launchctl", &["load", "-w", &plist_s]),
                Ok((0, _, _))
            );
        if !ok {
            let why = match r {
                Ok((_, o, e)) => format!("{o} {e}"),
                Err(e) => e,
            };
            return Err(fail(
                3,
                format!(
                    "wrote {plist_s} but launchctl could not load it: {}",
                    why.trim()
                ),
            ));
        }
        if !p.quiet {
            outln!("installed {plist_s} and loaded it ({target})");
            outln!(
                "logs: ~/Library/Logs/fedsync/; check with `fedsync service status {}`",
                a.name
            );
        }
        return Ok(0);
    }
    if let Err(why) = systemd_user_available() {
        return Err(fail(
            3,
            format!("nothing installed: {}", unavailable_msg(&why)),
        ));
    }
    // Switching forms: the other form's units go first.
    let timer = format!("{unit}.timer");
    let service = format!("{unit}.service");
    let _ = systemctl(&["disable", "--now", &timer]);
    let _ = systemctl(&["disable", "--now", &service]);
    let sd = systemd_dir()?;
    let _ = std::fs::remove_file(sd.join(&timer));
    for f in files.iter().filter(|f| f.manager == "systemd") {
        write_file(&f.path, &f.content)?;
    }
    let steps: Vec<Vec<&str>> = vec![
        vec!["daemon-reload"],
        match form {
            Form::Watch => vec!["enable", "--now", &service],
            Form::Interval(_) => vec!["enable", "--now", &timer],
        },
    ];
    for s in &steps {
        match systemctl(s) {
            Ok((0, _, _)) => {}
            Ok((_, o, e)) => {
                return Err(fail(
                    3,
                    format!(
                        "wrote the unit files in {} but `systemctl --user {}` failed: {}",
                        sd.display(),
                        s.join(" "),
                        if e.is_empty() { o } else { e }
                    ),
                ))
            }
            Err(e) => return Err(fail(3, e)),
        }
    }
    if !p.quiet {
        for f in files.iter().filter(|f| f.manager == "systemd") {
            outln!("wrote {}", f.path.display());
        }
        match form {
            Form::Watch => outln!("enabled and started {service} (fedsync watch {})", a.name),
            Form::Interval(d) => outln!(
                "enabled and started {timer}: fedsync sync {} every {}",
                a.name,
                humantime::format_duration(d)
            ),
        }
        outln!(
            "logs: journalctl --user -u {service}; check with `fedsync service status {}`",
            a.name
        );
    }
    Ok(0)
}

fn write_file(path: &Path, content: &str) -> Result<(), Fail> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)
            .map_err(|e| fail(3, format!("cannot create {}: {e}", d.display())))?;
    }
    std::fs::write(path, content)
        .map_err(|e| fail(3, format!("cannot write {}: {e}", path.display())))
}

fn installed_files(name: &str) -> Result<Vec<PathBuf>, Fail> {
    let unit = unit_name(name);
    let sd = systemd_dir()?;
    let mut v = vec![
        sd.join(format!("{unit}.service")),
        sd.join(format!("{unit}.timer")),
    ];
    if cfg!(target_os = "macos") {
        v.push(launchd_dir()?.join(format!("{}.plist", launchd_label(name))));
    }
    Ok(v.into_iter().filter(|p| p.exists()).collect())
}

fn uninstall(p: &Printer, name: &str, print: bool) -> Result<i32, Fail> {
    let files = installed_files(name)?;
    if print {
        for f in &files {
            outln!("would remove {}", f.display());
        }
        if files.is_empty() {
            outln!("no service installed for {name}");
        }
        return Ok(0);
    }
    let unit = unit_name(name);
    if cfg!(target_os = "macos") {
        let target = format!(
            "gui/{}/{}",
            rustix::process::getuid().as_raw(),
            launchd_label(name)
        );
        let _ = run_cmd("launchctl", &["bootout", &target]);
    } else if systemd_user_available().is_ok() {
        let _ = systemctl(&["disable", "--now", &format!("{unit}.timer")]);
        let _ = systemctl(&["disable", "--now", &format!("{unit}.service")]);
    }
    for f in &files {
        std::fs::remove_file(f)
            .map_err(|e| fail(3, format!("cannot remove {}: {e}", f.display())))?;
    }
    if !cfg!(target_os = "macos") && systemd_user_available().is_ok() {
        let _ = systemctl(&["daemon-reload"]);
    }
    if !p.quiet {
        if files.is_empty() {
            outln!("no service installed for {name}; nothing to do");
        } else {
            for f in &files {
                outln!("removed {}", f.display());
            }
        }
    }
    Ok(0)
}

#[derive(Serialize)]
struct ServiceStatus {
    profile: String,
    manager: &'static str,
    unit: String,
    installed: bool,
    form: Option<&'static str>,
    files: Vec<PathBuf>,
    /// Whether the service manager could be asked.
    available: bool,
    enabled: Option<String>,
    active: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    logs: String,
}

fn status(p: &Printer, name: &str) -> Result<i32, Fail> {
    let files = installed_files(name)?;
    let unit = unit_name(name);
    let form = if files
        .iter()
        .any(|f| f.extension().is_some_and(|e| e == "timer"))
    {
        Some("interval")
    } else if files.is_empty() {
        None
    } else {
        Some("watch")
    };
    let mut st = if cfg!(target_os = "macos") {
        let label = launchd_label(name);
        let target = format!("gui/{}/{label}", rustix::process::getuid().as_raw());
        let (available, enabled, active, message) = match run_cmd("launchctl", &["print", &target])
        {
            Ok((0, out, _)) => {
                let running = out.lines().any(|l| l.trim() == "state = running");
                (
                    true,
                    Some("loaded".to_string()),
                    Some(if running { "running" } else { "not running" }.to_string()),
                    None,
                )
            }
            Ok(_) => (true, Some("not loaded".to_string()), None, None),
            Err(e) => (false, None, None, Some(e)),
        };
        ServiceStatus {
            profile: name.into(),
            manager: "launchd",
            unit: label,
            installed: !files.is_empty(),
            form: files
                .iter()
                .find(|f| f.extension().is_some_and(|e| e == "plist"))
                .map(|_| "agent"),
            files,
            available,
            enabled,
            active,
            message,
            logs: "~/Library/Logs/fedsync/".into(),
        }
    } else {
        let main = match form {
            Some("interval") => format!("{unit}.timer"),
            _ => format!("{unit}.service"),
        };
        let (available, enabled, active, message) = match systemd_user_available() {
            Err(why) => (false, None, None, Some(unavailable_msg(&why))),
            Ok(()) => {
                let ask = |what: &str| {
                    systemctl(&[what, &main])
                        .ok()
                        .map(|(_, o, _)| o.lines().next().unwrap_or("unknown").to_string())
                };
                (true, ask("is-enabled"), ask("is-active"), None)
            }
        };
        ServiceStatus {
            profile: name.into(),
            manager: "systemd",
            unit: main,
            installed: !files.is_empty(),
            form,
            files,
            available,
            enabled,
            active,
            message,
            logs: format!("journalctl --user -u {unit}.service"),
        }
    };
    if !st.installed && st.message.is_none() {
        st.message = Some(format!(
            "no service installed for {name}; install one with `fedsync service install {name}`"
        ));
    }
    let good = st.installed
        && (st
            .active
            .as_deref()
            .is_some_and(|a| a == "active" || a == "running")
            || st
                .enabled
                .as_deref()
                .is_some_and(|e| e == "enabled" || e == "loaded"));
    if p.json {
        outln!("{}", serde_json::to_string_pretty(&st).unwrap_or_default());
    } else {
        outln!(
            "service {} ({} {})",
            st.unit,
            st.manager,
            match st.form {
                Some("interval") => "timer: periodic sync",
                Some(_) => "watch",
                None => "not installed",
            }
        );
        if st.files.is_empty() {
            outln!("  files      none");
        }
        for f in &st.files {
            outln!("  file       {}", f.display());
        }
        if st.available {
            outln!(
                "  enabled    {}",
                st.enabled.as_deref().unwrap_or("unknown")
            );
            outln!("  running    {}", st.active.as_deref().unwrap_or("unknown"));
            outln!("  logs       {}", st.logs);
        }
        if let Some(m) = &st.message {
            outln!("  {m}");
        }
    }
    Ok(if good { 0 } else { 3 })
}
