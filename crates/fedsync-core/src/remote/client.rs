//! The client half: [`RemoteReplica`], a `Replica` whose operations are requests to a
//! `fedsync serve` agent reached through ssh.
//!
//! One connection per replica. Any thread may send (a writer lock per frame); one reader
//! thread routes answers to the waiting request by id and never blocks on anything but
//! the pipe, so a slow consumer can never stall the agent (which only ever waits for the
//! client to read). Transfers are pipelined: small files are sent (or requested) whole
//! the moment the engine stages them, without waiting for an answer; large files go
//! through a delta transfer on a worker thread. `flush` and `install` wait for what they
//! need.

use super::delta::{self, Builder, Op, Sig};
use super::proto::*;
use super::{pull_done, pull_started, set_meta, Receiving, Settings, SMALL_FILE};
use crate::config::ReplicaSpec;
use crate::entry::{Entry, Hash, Kind};
use crate::path::RelPath;
use crate::replica::local::LocalReplica;
use crate::replica::{
    io_err, Probe, Replica, ReplicaError, Result, Scan, ScanOptions, Staged, VersionInfo,
    VersionPath,
};
use crate::rules::Rules;
use crate::store::CacheBlob;
use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Bytes of small-file pulls requested but not yet written (bounds client memory).
const PULL_WINDOW: u64 = 16 << 20;
/// Literal bytes per read request of a delta pull; two are kept in flight.
const READ_PIECE: u64 = 4 << 20;

/// Where a remote replica lives.
#[derive(Clone, Debug)]
pub struct Target {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub path: String,
}

impl Target {
    fn dest(&self) -> String {
        match &self.user {
            Some(u) => format!("{u}@{}", self.host),
            None => self.host.clone(),
        }
    }
}

fn sq(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The root as the remote shell should see it: `~` and `~/` stay unquoted (expanded there).
fn quote_path(p: &str) -> String {
    if p == "~" {
        "~".into()
    } else if let Some(rest) = p.strip_prefix("~/") {
        format!("~/{}", sq(rest))
    } else {
        sq(p)
    }
}

fn lost(label: &str, why: &str) -> ReplicaError {
    ReplicaError::Io {
        path: label.to_string(),
        source: io::Error::new(io::ErrorKind::BrokenPipe, why.to_string()),
    }
}

fn unexpected(label: &str, r: &Resp) -> ReplicaError {
    let what = format!("{r:?}");
    let what: String = what.chars().take(80).collect();
    lost(label, &format!("protocol error: unexpected answer {what}"))
}

fn hostile(label: &str, msg: String) -> ReplicaError {
    ReplicaError::Io {
        path: label.to_string(),
        source: io::Error::new(
            io::ErrorKind::InvalidData,
            format!("refused data from the agent: {msg}"),
        ),
    }
}

// ---------------------------------------------------------------------------------------
// The connection

struct Routes {
    waiters: HashMap<u32, mpsc::Sender<Resp>>,
    dead: Option<String>,
}

pub(crate) struct Conn {
    label: String,
    writer: Mutex<Option<FrameWriter>>,
    routes: Arc<Mutex<Routes>>,
    next_id: AtomicU32,
    next_handle: AtomicU32,
    child: Mutex<Option<Child>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_thread: Mutex<Option<JoinHandle<()>>>,
    reader: Mutex<Option<JoinHandle<()>>>,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    /// The features of this session (what both sides listed).
    features: Vec<String>,
    /// Who answers: the host and the agent's fedsync version (for messages).
    host: String,
    agent_version: String,
}

enum ConnectError {
    NoAgent(String),
    Other(String),
}

fn stderr_text(buf: &Mutex<Vec<u8>>) -> String {
    let b = buf.lock().expect("lock");
    String::from_utf8_lossy(&b).trim().to_string()
}

impl Conn {
    fn spawn(
        t: &Target,
        settings: &Settings,
        remote_cmd: &str,
    ) -> std::result::Result<Conn, ConnectError> {
        let label = format!(
            "ssh://{}{}",
            t.dest(),
            if t.path.starts_with('/') {
                t.path.clone()
            } else {
                format!("/{}", t.path)
            }
        );
        if t.host.starts_with('-') {
            return Err(ConnectError::Other(format!(
                "{label}: invalid host name {:?}",
                t.host
            )));
        }
        let Some((prog, args)) = settings.ssh.split_first() else {
            return Err(ConnectError::Other(
                "the ssh command is empty (FEDSYNC_SSH / ssh = ...)".into(),
            ));
        };
        let mut cmd = Command::new(prog);
        cmd.args(args);
        if let Some(p) = t.port {
            cmd.arg("-p").arg(p.to_string());
        }
        cmd.arg(t.dest())
            .arg(format!("{remote_cmd} serve {}", quote_path(&t.path)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| {
            ConnectError::Other(format!(
                "{label}: cannot run the ssh command {prog:?}: {e} (set FEDSYNC_SSH or the profile's ssh key)"
            ))
        })?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stderr_thread = {
            let mut es = child.stderr.take().expect("piped");
            let buf = stderr.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = es.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    let mut b = buf.lock().expect("lock");
                    b.extend_from_slice(&chunk[..n]);
                    let len = b.len();
                    if len > 16384 {
                        b.drain(..len - 16384);
                    }
                }
            })
        };
        let sent = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let stdin = Counted {
            inner: child.stdin.take().expect("piped"),
            count: sent.clone(),
        };
        let stdout = Counted {
            inner: child.stdout.take().expect("piped"),
            count: received.clone(),
        };
        let mut input = BufReader::with_capacity(256 * 1024, stdout);
        let mut output = BufWriter::new(stdin);
        let fail = |mut child: Child, stderr_thread: JoinHandle<()>, junk: &str| -> ConnectError {
            let status = child.wait().ok();
            let _ = stderr_thread.join();
            classify(
                &label,
                t,
                remote_cmd,
                status.and_then(|s| s.code()),
                &stderr_text(&stderr),
                junk,
            )
        };
        // The agent's hello (a login shell may print lines before it).
        let mut junk = String::new();
        let hello = loop {
            match read_line(&mut input, 16384) {
                Ok(Some(line)) => {
                    if let Some(h) = Hello::parse(AGENT_HELLO, &line) {
                        break h;
                    }
                    if junk.len() < 4096 {
                        junk.push_str(&line);
                    }
                    if junk.len() >= 4096 {
                        let _ = child.kill();
                        return Err(fail(child, stderr_thread, &junk));
                    }
                }
                _ => return Err(fail(child, stderr_thread, &junk)),
            }
        };
        let ours = Hello::ours();
        if hello.protocol != PROTOCOL {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ConnectError::Other(format!(
                "{label}: the agent on {} is fedsync {} (protocol {}), this is fedsync {} (protocol {}). \
                 Install the same fedsync version on both machines, point remote_cmd at a matching \
                 one, or run with --deploy-agent to upload this binary.",
                t.host, hello.version, hello.protocol, ours.version, PROTOCOL
            )));
        }
        let write_hello = output
            .write_all(ours.line(CLIENT_HELLO).as_bytes())
            .and_then(|_| output.flush());
        let ok = match write_hello.and_then(|_| read_line(&mut input, 4096)) {
            Ok(Some(l)) if l.starts_with(OK_LINE) => l,
            Ok(Some(l)) if l.starts_with(ERROR_LINE) => {
                let _ = child.wait();
                return Err(ConnectError::Other(format!(
                    "{label}: the agent refused the session: {}",
                    l[ERROR_LINE.len()..].trim()
                )));
            }
            _ => return Err(fail(child, stderr_thread, &junk)),
        };
        let features: Vec<String> = ok[OK_LINE.len()..]
            .trim()
            .split(',')
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .collect();
        let zstd = features.iter().any(|f| f == "zstd");
        let other = |e: io::Error| ConnectError::Other(format!("{label}: {e}"));
        let writer = FrameWriter::new(Box::new(output), zstd).map_err(other)?;
        let mut reader = FrameReader::new(input, zstd).map_err(other)?;
        let routes = Arc::new(Mutex::new(Routes {
            waiters: HashMap::new(),
            dead: None,
        }));
        let r2 = routes.clone();
        let reader_thread = std::thread::spawn(move || {
            let why = loop {
                match reader.recv::<Resp>() {
                    Ok(Some(f)) => {
                        let mut g = r2.lock().expect("lock");
                        let terminal = f.body.is_terminal();
                        if let Some(tx) = g.waiters.get(&f.id) {
                            let _ = tx.send(f.body);
                        } else if let (0, Resp::Err(e)) = (f.id, &f.body) {
                            g.dead = Some(format!("the agent reported: {}", e.message));
                        }
                        if terminal {
                            g.waiters.remove(&f.id);
                        }
                    }
                    Ok(None) => break "the agent closed the connection".to_string(),
                    Err(e) => break format!("reading from the agent: {e}"),
                }
            };
            let mut g = r2.lock().expect("lock");
            if g.dead.is_none() {
                g.dead = Some(why);
            }
            g.waiters.clear();
        });
        Ok(Conn {
            label,
            writer: Mutex::new(Some(writer)),
            routes,
            next_id: AtomicU32::new(1),
            next_handle: AtomicU32::new(1),
            child: Mutex::new(Some(child)),
            stderr,
            stderr_thread: Mutex::new(Some(stderr_thread)),
            reader: Mutex::new(Some(reader_thread)),
            sent,
            received,
            features,
            host: t.host.clone(),
            agent_version: hello.version,
        })
    }

    /// Whether the session has `feature`.
    fn has(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }

    /// `Ok` when the session has `feature`; else an error that says what to upgrade.
    fn require(&self, feature: &str, what: &str) -> Result<()> {
        if self.has(feature) {
            return Ok(());
        }
        Err(ReplicaError::Io {
            path: self.label.clone(),
            source: io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "the agent on {} is fedsync {}, which cannot {what} (it lacks the protocol \
                     feature {feature}); install fedsync {} there, or run with --deploy-agent",
                    self.host,
                    self.agent_version,
                    version()
                ),
            ),
        })
    }

    /// Whether the connection is still up.
    pub(crate) fn alive(&self) -> bool {
        self.routes.lock().expect("lock").dead.is_none()
    }

    fn lost_err(&self) -> ReplicaError {
        let why = self
            .routes
            .lock()
            .expect("lock")
            .dead
            .clone()
            .unwrap_or_else(|| "connection closed".into());
        let es = stderr_text(&self.stderr);
        let tail: String = es
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join(" / ");
        lost(
            &self.label,
            &format!(
                "connection lost ({why}){}; run again to resume",
                if tail.is_empty() {
                    String::new()
                } else {
                    format!("; remote said: {tail}")
                }
            ),
        )
    }

    fn handle(&self) -> u32 {
        self.next_handle.fetch_add(1, Ordering::Relaxed)
    }

    fn write(&self, f: impl FnOnce(&mut FrameWriter) -> io::Result<()>) -> Result<()> {
        let mut g = self.writer.lock().expect("lock");
        let Some(w) = g.as_mut() else {
            return Err(self.lost_err());
        };
        if let Err(e) = f(w) {
            let mut r = self.routes.lock().expect("lock");
            if r.dead.is_none() {
                r.dead = Some(format!("writing to the agent: {e}"));
            }
            drop(r);
            return Err(self.lost_err());
        }
        Ok(())
    }

    /// Send requests that want no answer.
    fn send(&self, reqs: &[Req], flush: bool) -> Result<()> {
        self.write(|w| {
            for r in reqs {
                w.send(0, r)?;
            }
            if flush {
                w.flush()?;
            }
            Ok(())
        })
    }

    /// Send a request; its answers arrive on the returned channel.
    fn request(&self, req: &Req) -> Result<mpsc::Receiver<Resp>> {
        let mut id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if id == 0 {
            id = self.next_id.fetch_add(1, Ordering::Relaxed);
        }
        let (tx, rx) = mpsc::channel();
        {
            let mut g = self.routes.lock().expect("lock");
            if g.dead.is_some() {
                drop(g);
                return Err(self.lost_err());
            }
            g.waiters.insert(id, tx);
        }
        self.write(|w| {
            w.send(id, req)?;
            w.flush()
        })?;
        Ok(rx)
    }

    /// The next answer on `rx`; an agent error becomes the replica error it names.
    fn next(&self, rx: &mpsc::Receiver<Resp>) -> Result<Resp> {
        match rx.recv() {
            Ok(Resp::Err(e)) => Err(e.into_err()),
            Ok(r) => Ok(r),
            Err(_) => Err(self.lost_err()),
        }
    }

    fn call(&self, req: &Req) -> Result<Resp> {
        let rx = self.request(req)?;
        self.next(&rx)
    }

    /// All signatures of a `Groups` answer.
    fn sigs(&self, rx: &mpsc::Receiver<Resp>) -> Result<Vec<Sig>> {
        let mut v = Vec::new();
        loop {
            match self.next(rx)? {
                Resp::Sigs(s) => v.extend(s),
                Resp::SigsEnd => return Ok(v),
                r => return Err(unexpected(&self.label, &r)),
            }
        }
    }

    /// One signature list per range of a `Chunks` answer.
    fn sig_lists(&self, rx: &mpsc::Receiver<Resp>) -> Result<Vec<Vec<Sig>>> {
        let mut v = Vec::new();
        loop {
            match self.next(rx)? {
                Resp::Sigs(s) => v.push(s),
                Resp::SigsEnd => return Ok(v),
                r => return Err(unexpected(&self.label, &r)),
            }
        }
    }

    /// End the session: the agent saves its cache and exits.
    fn close(&self) {
        let _ = self
            .request(&Req::Bye)
            .map(|rx| rx.recv_timeout(std::time::Duration::from_secs(10)));
        if let Some(w) = self.writer.lock().expect("lock").take() {
            let _ = w.finish();
        }
        if let Some(mut c) = self.child.lock().expect("lock").take() {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if std::time::Instant::now() > deadline => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        }
        if let Some(t) = self.reader.lock().expect("lock").take() {
            let _ = t.join();
        }
        if let Some(t) = self.stderr_thread.lock().expect("lock").take() {
            let _ = t.join();
        }
    }
}

/// Turn a failed start into the message the user needs.
fn classify(
    label: &str,
    t: &Target,
    remote_cmd: &str,
    code: Option<i32>,
    stderr: &str,
    junk: &str,
) -> ConnectError {
    let said = if stderr.is_empty() {
        String::new()
    } else {
        format!(
            ": {}",
            stderr
                .lines()
                .rev()
                .take(6)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join(" / ")
        )
    };
    let port = t.port.map(|p| format!("-p {p} ")).unwrap_or_default();
    let lower = stderr.to_lowercase();
    if code == Some(127)
        || lower.contains("command not found")
        || (lower.contains("not found") && lower.contains(remote_cmd))
    {
        return ConnectError::NoAgent(format!(
            "{label}: fedsync is not installed on {} (the remote shell could not run {remote_cmd:?}, exit {}){said}. \
             Install fedsync there, set remote_cmd in the profile to its path, or run with --deploy-agent \
             to upload this binary.",
            t.host,
            code.map_or("?".into(), |c| c.to_string())
        ));
    }
    if code == Some(255) {
        if lower.contains("permission denied")
            || lower.contains("authentication")
            || lower.contains("too many authentication failures")
        {
            return ConnectError::Other(format!(
                "{label}: authentication to {} failed (ssh exit 255){said}. Check that `ssh {port}{}` works \
                 without fedsync (keys, ssh-agent, ~/.ssh/config).",
                t.host,
                t.dest()
            ));
        }
        return ConnectError::Other(format!(
            "{label}: cannot reach {} (ssh exit 255){said}. Check the host name, the network, and that \
             `ssh {port}{}` works.",
            t.host,
            t.dest()
        ));
    }
    let junk = junk.trim();
    ConnectError::Other(format!(
        "{label}: the remote command `{remote_cmd} serve` did not start a fedsync agent (exit {}){said}{}",
        code.map_or("?".into(), |c| c.to_string()),
        if junk.is_empty() { String::new() } else { format!("; it printed: {}", junk.chars().take(300).collect::<String>()) }
    ))
}

/// Upload this binary to `~/.cache/fedsync/agent-<version>` on a host of the same OS and
/// architecture; returns the remote command to use.
fn deploy(t: &Target, settings: &Settings) -> std::result::Result<String, String> {
    let remote_path = format!("~/.cache/fedsync/agent-{}", version());
    let ssh = |script: &str,
               input: Option<&Path>|
     -> std::result::Result<(i32, String, String), String> {
        let (prog, args) = settings.ssh.split_first().ok_or("empty ssh command")?;
        let mut cmd = Command::new(prog);
        cmd.args(args);
        if let Some(p) = t.port {
            cmd.arg("-p").arg(p.to_string());
        }
        cmd.arg(t.dest()).arg(script);
        cmd.stdin(match input {
            Some(p) => Stdio::from(File::open(p).map_err(|e| format!("{}: {e}", p.display()))?),
            None => Stdio::null(),
        });
        let out = cmd.output().map_err(|e| format!("cannot run ssh: {e}"))?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    };
    let local = Command::new("uname")
        .arg("-sm")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .map_err(|e| format!("uname: {e}"))?;
    let (code, remote, err) = ssh("uname -sm", None)?;
    if code != 0 {
        return Err(format!(
            "cannot ask {} for its system (`uname -sm` exited {code}): {err}",
            t.host
        ));
    }
    if remote != local {
        return Err(format!(
            "{} runs {remote:?}, this fedsync is built for {local:?}: cannot deploy it there; install fedsync on {} instead",
            t.host, t.host
        ));
    }
    let (code, out, _) = ssh(&format!("test -x {remote_path} && echo present"), None)?;
    if code == 0 && out == "present" {
        return Ok(remote_path);
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let script = format!(
        "mkdir -p ~/.cache/fedsync && cat > {remote_path}.tmp.$$ && chmod 755 {remote_path}.tmp.$$ && mv {remote_path}.tmp.$$ {remote_path} && echo deployed"
    );
    let (code, out, err) = ssh(&script, Some(&exe))?;
    if code != 0 || out != "deployed" {
        return Err(format!(
            "uploading the agent to {} failed (exit {code}): {err}",
            t.host
        ));
    }
    Ok(remote_path)
}

// ---------------------------------------------------------------------------------------
// Waiting for pipelined transfers

type PushResult = std::result::Result<(String, Option<Hash>), ReplicaError>;

#[derive(Default)]
struct Slots {
    m: Mutex<HashMap<u64, Option<PushResult>>>,
    cv: Condvar,
}

impl Slots {
    fn start(&self, n: u64) {
        self.m.lock().expect("lock").insert(n, None);
    }
    fn done(&self, n: u64, r: PushResult) {
        self.m.lock().expect("lock").insert(n, Some(r));
        self.cv.notify_all();
    }
    fn wait_all(&self) {
        let mut g = self.m.lock().expect("lock");
        while g.values().any(Option::is_none) {
            g = self.cv.wait(g).expect("lock");
        }
    }
    fn take(&self, n: u64) -> PushResult {
        let mut g = self.m.lock().expect("lock");
        loop {
            match g.get(&n) {
                None => {
                    return Err(ReplicaError::Io {
                        path: format!("push-{n}"),
                        source: io::Error::other("unknown staged transfer"),
                    })
                }
                Some(None) => g = self.cv.wait(g).expect("lock"),
                Some(Some(_)) => return g.remove(&n).flatten().expect("done"),
            }
        }
    }
}

#[derive(Default)]
struct Window {
    m: Mutex<u64>,
    cv: Condvar,
}

impl Window {
    fn acquire(&self, n: u64) {
        let mut g = self.m.lock().expect("lock");
        while *g > 0 && *g + n > PULL_WINDOW {
            g = self.cv.wait(g).expect("lock");
        }
        *g += n;
    }
    fn release(&self, n: u64) {
        let mut g = self.m.lock().expect("lock");
        *g = g.saturating_sub(n);
        self.cv.notify_all();
    }
}

enum PushJob {
    Await {
        slot: u64,
        rx: mpsc::Receiver<Resp>,
    },
    Large {
        slot: u64,
        file: PathBuf,
        path: RelPath,
        meta: Entry,
    },
}

enum PullJob {
    Small {
        key: PathBuf,
        rx: mpsc::Receiver<Resp>,
        meta: Entry,
        path: RelPath,
    },
    Large {
        key: PathBuf,
        basis: PathBuf,
        path: RelPath,
        meta: Entry,
    },
}

/// Start the agent of `spec` over ssh (uploading it first with --deploy-agent when the
/// remote host has none).
fn open_conn(
    spec: &ReplicaSpec,
    t: &Target,
    settings: &Settings,
) -> std::result::Result<Conn, String> {
    let who = format!("replica {} ({})", spec.name, spec.raw);
    match Conn::spawn(t, settings, &settings.remote_cmd) {
        Ok(c) => Ok(c),
        Err(ConnectError::NoAgent(m)) if settings.deploy_agent => {
            let cmd =
                deploy(t, settings).map_err(|e| format!("{who}: {m}\n--deploy-agent: {e}"))?;
            Conn::spawn(t, settings, &cmd).map_err(|e| match e {
                ConnectError::NoAgent(m) | ConnectError::Other(m) => format!("{who}: {m}"),
            })
        }
        Err(ConnectError::NoAgent(m) | ConnectError::Other(m)) => Err(format!("{who}: {m}")),
    }
}

// ---------------------------------------------------------------------------------------
// Sessions that outlive a run (`fedsync watch`)

thread_local! {
    static REUSE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Live sessions by where they lead (see [`pool_key`]).
fn pool() -> &'static Mutex<HashMap<String, Arc<Conn>>> {
    static POOL: std::sync::OnceLock<Mutex<HashMap<String, Arc<Conn>>>> =
        std::sync::OnceLock::new();
    POOL.get_or_init(|| Mutex::new(HashMap::new()))
}

fn pool_key(t: &Target, settings: &Settings) -> String {
    format!(
        "{:?} {:?} {} {:?} {:?}",
        settings.ssh,
        settings.remote_cmd,
        t.dest(),
        t.port,
        t.path
    )
}

/// Let remote replicas opened on this thread use the live [`RemoteSession`]s instead of
/// starting ssh again (the runs of `fedsync watch`). Other threads (the dashboard's) keep
/// their own connections: one session serves one run at a time.
pub fn reuse_sessions_on_this_thread(on: bool) {
    REUSE.with(|r| r.set(on));
}

/// A connection to the agent of a remote replica kept across runs: the runs of this thread
/// use it (see [`reuse_sessions_on_this_thread`]), and the agent can report its own file
/// events over it ([`RemoteSession::watch`]). Dropping it ends the agent.
pub struct RemoteSession {
    conn: Arc<Conn>,
    key: String,
}

/// A remote watch: what the agent reports, on a thread of the caller's choosing.
pub struct RemoteWatch {
    conn: Arc<Conn>,
    rx: mpsc::Receiver<Resp>,
    /// The agent's watcher: "native" or "polling".
    pub mode: String,
}

/// One report of a remote watch.
#[derive(Debug)]
pub enum WatchEvent {
    /// The agent switched watchers ("native" / "polling").
    Mode(String),
    /// These paths changed; `rescan`: events were lost, look at everything.
    Changed { paths: Vec<RelPath>, rescan: bool },
    /// The watch is over (connection lost, root gone): why.
    Ended(String),
}

impl RemoteSession {
    /// Connect to the agent of `spec` (an ssh:// replica of `profile`).
    pub fn open(
        profile: &crate::config::Profile,
        spec: &ReplicaSpec,
    ) -> std::result::Result<RemoteSession, String> {
        let crate::config::ReplicaAddr::Ssh {
            user,
            host,
            port,
            path,
        } = &spec.addr
        else {
            return Err(format!("replica {} is not an ssh:// replica", spec.name));
        };
        let t = Target {
            user: user.clone(),
            host: host.clone(),
            port: *port,
            path: path.clone(),
        };
        let settings = Settings::new(profile.ssh.as_deref(), profile.remote_cmd.as_deref());
        let conn = Arc::new(open_conn(spec, &t, &settings)?);
        let key = pool_key(&t, &settings);
        pool()
            .lock()
            .expect("lock")
            .insert(key.clone(), conn.clone());
        Ok(RemoteSession { conn, key })
    }

    /// Whether the connection is still up.
    pub fn alive(&self) -> bool {
        self.conn.alive()
    }

    /// Whether the agent can watch its root (fedsync with the `watch1` feature).
    pub fn can_watch(&self) -> bool {
        self.conn.has("watch1")
    }

    /// The agent's fedsync version.
    pub fn agent_version(&self) -> &str {
        &self.conn.agent_version
    }

    /// Have the agent watch its root for changes to what `rules` sync.
    pub fn watch(
        &self,
        rules: &Rules,
        poll: bool,
        poll_every: std::time::Duration,
        debounce: std::time::Duration,
    ) -> std::result::Result<RemoteWatch, String> {
        self.conn
            .require("watch1", "watch its files")
            .map_err(|e| e.to_string())?;
        let (paths, ignore) = rules.scan_patterns();
        let rx = self
            .conn
            .request(&Req::Watch {
                paths: paths.to_vec(),
                ignore: ignore.to_vec(),
                poll,
                poll_ms: poll_every.as_millis() as u64,
                debounce_ms: debounce.as_millis() as u64,
            })
            .map_err(|e| e.to_string())?;
        match self.conn.next(&rx) {
            Ok(Resp::WatchMode(mode)) => Ok(RemoteWatch {
                conn: self.conn.clone(),
                rx,
                mode,
            }),
            Ok(r) => Err(unexpected(&self.conn.label, &r).to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The current (unhashed) state of `paths` on the remote side; per path an error
    /// message when the agent could not look.
    #[allow(clippy::type_complexity)]
    pub fn entries(
        &self,
        paths: &[RelPath],
    ) -> Result<Vec<std::result::Result<Option<Entry>, String>>> {
        self.conn.require("watch1", "report the state of paths")?;
        let mut out = Vec::with_capacity(paths.len());
        for part in paths.chunks(10_000) {
            let req = Req::Entries(part.iter().map(|p| p.as_str().to_string()).collect());
            match self.conn.call(&req)? {
                Resp::Entries(v) if v.len() == part.len() => {
                    for e in v {
                        out.push(e.and_then(|e| e.map(|w| w.to_entry()).transpose()));
                    }
                }
                r => return Err(unexpected(&self.conn.label, &r)),
            }
        }
        Ok(out)
    }
}

impl Drop for RemoteSession {
    fn drop(&mut self) {
        {
            let mut p = pool().lock().expect("lock");
            if p.get(&self.key).is_some_and(|c| Arc::ptr_eq(c, &self.conn)) {
                p.remove(&self.key);
            }
        }
        self.conn.close();
    }
}

impl RemoteWatch {
    /// The next report (blocks until there is one).
    pub fn next(&self) -> WatchEvent {
        match self.conn.next(&self.rx) {
            Ok(Resp::WatchMode(m)) => WatchEvent::Mode(m),
            Ok(Resp::Events { paths, rescan }) => {
                let mut out = Vec::with_capacity(paths.len());
                let mut rescan = rescan;
                for p in paths {
                    match RelPath::new(&p) {
                        Ok(rp) if !rp.is_root() => out.push(rp),
                        // Nonsense from the agent: look at everything rather than trust it.
                        _ => rescan = true,
                    }
                }
                WatchEvent::Changed { paths: out, rescan }
            }
            Ok(r) => WatchEvent::Ended(unexpected(&self.conn.label, &r).to_string()),
            Err(e) => WatchEvent::Ended(e.to_string()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The replica

pub struct RemoteReplica {
    label: String,
    conn: Arc<Conn>,
    /// The connection belongs to a [`RemoteSession`]: left open when this replica goes.
    pooled: bool,
    /// Transport counters when this replica started using the connection.
    wire_start: (u64, u64),
    push_tx: Mutex<Option<mpsc::Sender<PushJob>>>,
    pull_tx: Mutex<Option<mpsc::Sender<PullJob>>>,
    slots: Arc<Slots>,
    window: Arc<Window>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    next_slot: AtomicU64,
}

impl RemoteReplica {
    /// Start the agent over ssh and shake hands. The error says what to do.
    pub fn connect(
        spec: &ReplicaSpec,
        t: Target,
        settings: &Settings,
    ) -> std::result::Result<RemoteReplica, String> {
        if REUSE.with(|r| r.get()) {
            let live = pool()
                .lock()
                .expect("lock")
                .get(&pool_key(&t, settings))
                .filter(|c| c.alive())
                .cloned();
            if let Some(conn) = live {
                return Ok(RemoteReplica::with_conn(spec.raw.clone(), conn, true));
            }
        }
        let conn = Arc::new(open_conn(spec, &t, settings)?);
        Ok(RemoteReplica::with_conn(spec.raw.clone(), conn, false))
    }

    fn with_conn(label: String, conn: Arc<Conn>, pooled: bool) -> RemoteReplica {
        let wire_start = (
            conn.sent.load(Ordering::Relaxed),
            conn.received.load(Ordering::Relaxed),
        );
        let slots = Arc::new(Slots::default());
        let window = Arc::new(Window::default());
        let (push_tx, push_rx) = mpsc::channel::<PushJob>();
        let (pull_tx, pull_rx) = mpsc::channel::<PullJob>();
        let w1 = {
            let (conn, slots) = (conn.clone(), slots.clone());
            std::thread::spawn(move || {
                for job in push_rx {
                    match job {
                        PushJob::Await { slot, rx } => {
                            let r = match conn.next(&rx) {
                                Ok(Resp::Staged { token, hash }) => Ok((token, hash.map(Hash))),
                                Ok(r) => Err(unexpected(&conn.label, &r)),
                                Err(e) => Err(e),
                            };
                            slots.done(slot, r);
                        }
                        PushJob::Large {
                            slot,
                            file,
                            path,
                            meta,
                        } => {
                            slots.done(slot, push_large(&conn, &file, &path, &meta));
                        }
                    }
                }
            })
        };
        let w2 = {
            let (conn, window) = (conn.clone(), window.clone());
            std::thread::spawn(move || {
                for job in pull_rx {
                    match job {
                        PullJob::Small {
                            key,
                            rx,
                            meta,
                            path,
                        } => {
                            let r = pull_small(&conn, &key, &rx, &path, &meta);
                            window.release(meta.size);
                            pull_done(&key, r);
                        }
                        PullJob::Large {
                            key,
                            basis,
                            path,
                            meta,
                        } => {
                            let r = pull_large(&conn, &key, &basis, &path, &meta);
                            pull_done(&key, r);
                        }
                    }
                }
            })
        };
        RemoteReplica {
            label,
            conn,
            pooled,
            wire_start,
            push_tx: Mutex::new(Some(push_tx)),
            pull_tx: Mutex::new(Some(pull_tx)),
            slots,
            window,
            workers: Mutex::new(vec![w1, w2]),
            next_slot: AtomicU64::new(1),
        }
    }

    /// Bytes sent to and received from the transport since this replica was opened.
    pub fn wire_bytes(&self) -> (u64, u64) {
        (
            self.conn.sent.load(Ordering::Relaxed) - self.wire_start.0,
            self.conn.received.load(Ordering::Relaxed) - self.wire_start.1,
        )
    }

    /// A `Staged` answer, its token checked for shape (it names a file on the agent's side).
    fn staged(&self, r: Resp) -> Result<Staged> {
        match r {
            Resp::Staged { token, hash } if super::valid_token(&token) => Ok(Staged {
                token,
                hash: hash.map(Hash),
            }),
            r => Err(unexpected(&self.label, &r)),
        }
    }

    fn changed(&self, r: Resp) -> Result<Entry> {
        match r {
            Resp::Changed { entry, .. } => entry.to_entry().map_err(|m| hostile(&self.label, m)),
            r => Err(unexpected(&self.label, &r)),
        }
    }

    /// Stage `path` of this (remote) replica into `target`'s temp folder: returns at once;
    /// the transfer runs pipelined and `target`'s flush/install wait for it.
    pub(crate) fn pull_into(
        &self,
        target: &LocalReplica,
        path: &RelPath,
        meta: &Entry,
    ) -> Result<Staged> {
        if meta.kind != Kind::File {
            return Err(io_err(path)(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a file",
            )));
        }
        let tmp = target.tmp_dir();
        fs::create_dir_all(&tmp).map_err(io_err(tmp.display()))?;
        let token = super::new_token();
        let key = tmp.join(&token);
        let tx = self
            .pull_tx
            .lock()
            .expect("lock")
            .clone()
            .ok_or_else(|| self.conn.lost_err())?;
        let job = if meta.size <= SMALL_FILE {
            self.window.acquire(meta.size);
            let handle = self.conn.handle();
            let sent = self
                .conn
                .send(
                    &[Req::Open {
                        handle,
                        path: path.as_str().into(),
                    }],
                    false,
                )
                .and_then(|_| {
                    self.conn.request(&Req::Read {
                        handle,
                        ranges: vec![(0, meta.size)],
                    })
                });
            let rx = match sent {
                Ok(rx) => rx,
                Err(e) => {
                    self.window.release(meta.size);
                    return Err(e);
                }
            };
            let _ = self.conn.send(&[Req::Close { handle }], true);
            PullJob::Small {
                key: key.clone(),
                rx,
                meta: meta.clone(),
                path: path.clone(),
            }
        } else {
            PullJob::Large {
                key: key.clone(),
                basis: path.to_fs(target.root()),
                path: path.clone(),
                meta: meta.clone(),
            }
        };
        pull_started(key.clone());
        if tx.send(job).is_err() {
            pull_done(&key, Err(self.conn.lost_err()));
        }
        Ok(Staged {
            token,
            hash: meta.hash,
        })
    }

    fn scan_inner(&self, rules: &Rules, cache: &CacheBlob, opts: &ScanOptions) -> Result<Scan> {
        let (paths, ignore) = rules.scan_patterns();
        let rx = self.conn.request(&Req::Scan {
            paths: paths.to_vec(),
            ignore: ignore.to_vec(),
            checksum: opts.checksum,
            only: opts.only.iter().map(|p| p.as_str().to_string()).collect(),
        })?;
        let mut scan = Scan::default();
        let mut entries: Vec<(RelPath, Entry)> = Vec::new();
        let need = cache.with_cursor(|rows| -> Result<Vec<usize>> {
            let mut need: Vec<usize> = Vec::new();
            let mut last: Option<RelPath> = None;
            loop {
                match self.conn.next(&rx)? {
                    Resp::ScanBatch(batch) => {
                        for (p, we) in batch {
                            let p = RelPath::new(&p).map_err(|e| {
                                hostile(&self.label, format!("invalid path in the listing: {e}"))
                            })?;
                            let mut e = we
                                .to_entry()
                                .map_err(|m| hostile(&self.label, format!("{p}: {m}")))?;
                            if p.is_root() || rules.is_excluded(&p, e.is_dir()) {
                                return Err(hostile(
                                    &self.label,
                                    format!("{p}: the listing holds a path that is not synced (.fedsync/ or ignored)"),
                                ));
                            }
                            if last.as_ref().is_some_and(|l| *l >= p) {
                                return Err(hostile(
                                    &self.label,
                                    format!("{p}: the listing is not sorted"),
                                ));
                            }
                            if e.kind == Kind::File {
                                if e.hash.is_some() {
                                    scan.hashed_paths.push(p.clone());
                                } else {
                                    match rows.find(p.as_str()) {
                                        Some(c)
                                            if c.size == e.size
                                                && c.mtime == e.mtime
                                                && Some(c.stat) == e.stat =>
                                        {
                                            e.hash = Some(c.hash)
                                        }
                                        _ => need.push(entries.len()),
                                    }
                                }
                            }
                            last = Some(p.clone());
                            entries.push((p, e));
                        }
                    }
                    Resp::ScanEnd {
                        errors,
                        hashed_files,
                        hashed_bytes,
                        started_ns,
                    } => {
                        for (p, m) in errors {
                            let p = RelPath::new(&p).map_err(|e| {
                                hostile(&self.label, format!("invalid path in scan errors: {e}"))
                            })?;
                            scan.errors.push((p, m));
                        }
                        scan.hashed_files = hashed_files;
                        scan.hashed_bytes = hashed_bytes;
                        scan.started_ns = started_ns;
                        break;
                    }
                    r => return Err(unexpected(&self.label, &r)),
                }
            }
            Ok(need)
        })?;
        // Hashes the engine's cache of this replica does not have (first sync, changes).
        for part in need.chunks(20_000) {
            let paths: Vec<String> = part
                .iter()
                .map(|&i| entries[i].0.as_str().to_string())
                .collect();
            match self.conn.call(&Req::Hashes(paths))? {
                Resp::Hashes(hs) if hs.len() == part.len() => {
                    for (&i, h) in part.iter().zip(hs) {
                        match h {
                            Some(h) => {
                                entries[i].1.hash = Some(Hash(h));
                                scan.hashed_paths.push(entries[i].0.clone());
                            }
                            None => {
                                let p = entries[i].0.clone();
                                scan.errors.push((p, "the agent has no hash for it".into()));
                            }
                        }
                    }
                }
                r => return Err(unexpected(&self.label, &r)),
            }
        }
        scan.entries = entries.into();
        Ok(scan)
    }
}

impl Drop for RemoteReplica {
    fn drop(&mut self) {
        self.push_tx.lock().expect("lock").take();
        self.pull_tx.lock().expect("lock").take();
        for w in self.workers.lock().expect("lock").drain(..) {
            let _ = w.join();
        }
        if !self.pooled {
            self.conn.close();
        } else if self.conn.has("watch1") {
            // The session lives on: the agent saves its scan cache now.
            let _ = self.conn.send(&[Req::Checkpoint], true);
        }
        if std::env::var_os("FEDSYNC_WIRE_STATS").is_some()
            || std::env::var_os("FEDSYNC_TIMING").is_some()
        {
            let (s, r) = self.wire_bytes();
            eprintln!("wire: {}: sent {s} bytes, received {r} bytes", self.label);
        }
    }
}

impl RemoteReplica {
    /// BLAKE3 of the first `len` bytes of the remote file at `path` (an error if shorter).
    pub fn prefix_hash(&self, path: &RelPath, len: u64) -> Result<Hash> {
        let handle = self.conn.handle();
        self.conn.send(
            &[Req::Open {
                handle,
                path: path.as_str().into(),
            }],
            false,
        )?;
        let r = self.conn.call(&Req::PrefixHash {
            handle,
            basis: 0,
            len,
        });
        let _ = self.conn.send(&[Req::Close { handle }], true);
        match r? {
            Resp::Hash(h) => Ok(Hash(h)),
            r => Err(unexpected(&self.label, &r)),
        }
    }

    /// Send the content of `input` (described by `meta`) whole, and wait for it to be
    /// staged and checked on the agent's side.
    fn push_whole(&self, mut input: File, meta: &Entry) -> Result<Staged> {
        // A name for the agent's checks and messages (the content has no path yet).
        let label = RelPath::new("staged-content").expect("valid path");
        let (handle, sent) = self.push_direct(&label, meta, &mut input)?;
        if sent != meta.size {
            let _ = self.conn.send(&[Req::Close { handle }], true);
            return Err(ReplicaError::HashMismatch(label.to_string()));
        }
        let r = self.conn.call(&Req::PushEnd { handle })?;
        let st = self.staged(r)?;
        if st.hash != meta.hash {
            return Err(hostile(&self.label, "staged with another hash".into()));
        }
        Ok(st)
    }

    /// Begin a direct push of `path` (the whole content, no delta) and send all of `input`
    /// as its data; the caller ends it. Returns the handle and the bytes sent.
    fn push_direct(
        &self,
        path: &RelPath,
        meta: &Entry,
        input: &mut dyn Read,
    ) -> Result<(u32, u64)> {
        let handle = self.conn.handle();
        self.conn.send(
            &[Req::PushBegin {
                handle,
                path: path.as_str().into(),
                meta: WEntry::from_entry(meta),
                direct: true,
            }],
            false,
        )?;
        let mut buf = vec![0u8; DATA_CHUNK.min(meta.size as usize + 1).max(1)];
        let mut sent = 0u64;
        loop {
            let n = read_full(input, &mut buf).map_err(io_err(path))?;
            if n == 0 {
                break;
            }
            sent += n as u64;
            self.conn.send(
                &[Req::PushData {
                    handle,
                    ops: vec![WOp::Data(buf[..n].to_vec())],
                }],
                false,
            )?;
            if n < buf.len() {
                break;
            }
        }
        Ok((handle, sent))
    }
}

impl Replica for RemoteReplica {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn local_root(&self) -> Option<&Path> {
        None
    }

    fn as_remote(&self) -> Option<&RemoteReplica> {
        Some(self)
    }

    fn probe(&self) -> Result<Probe> {
        match self.conn.call(&Req::Probe)? {
            Resp::Probe(p) => Ok(p.into_probe()),
            r => Err(unexpected(&self.label, &r)),
        }
    }

    fn write_marker(&self, id: &str) -> Result<()> {
        match self.conn.call(&Req::WriteMarker(id.to_string()))? {
            Resp::Ok => Ok(()),
            r => Err(unexpected(&self.label, &r)),
        }
    }

    fn clean_temp(&self) -> Result<usize> {
        match self.conn.call(&Req::CleanTemp)? {
            Resp::Count(n) => Ok(n as usize),
            r => Err(unexpected(&self.label, &r)),
        }
    }

    fn scan(&self, rules: &Rules, cache: &CacheBlob, opts: &ScanOptions) -> Result<Scan> {
        self.scan_inner(rules, cache, opts)
    }

    fn entry(&self, path: &RelPath, hash: bool) -> Result<Option<Entry>> {
        match self.conn.call(&Req::Entry {
            path: path.as_str().into(),
            hash,
        })? {
            Resp::Entry(e) => e
                .map(|e| e.to_entry().map_err(|m| hostile(&self.label, m)))
                .transpose(),
            r => Err(unexpected(&self.label, &r)),
        }
    }

    fn open(&self, path: &RelPath) -> Result<Box<dyn Read + Send>> {
        let handle = self.conn.handle();
        match self.conn.call(&Req::Open {
            handle,
            path: path.as_str().into(),
        })? {
            Resp::Ok => Ok(Box::new(RemoteRead {
                conn: self.conn.clone(),
                handle,
                pos: 0,
                buf: VecDeque::new(),
                eof: false,
            })),
            r => Err(unexpected(&self.label, &r)),
        }
    }

    fn stage_file(&self, src: &dyn Replica, path: &RelPath, meta: &Entry) -> Result<Staged> {
        if meta.kind != Kind::File {
            return Err(io_err(path)(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a file",
            )));
        }
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
        let tx = self
            .push_tx
            .lock()
            .expect("lock")
            .clone()
            .ok_or_else(|| self.conn.lost_err())?;
        let job = match src.local_root() {
            Some(root) if meta.size > SMALL_FILE => {
                drop(src.open(path)?); // refuses symlinked parents at the source
                PushJob::Large {
                    slot,
                    file: path.to_fs(root),
                    path: path.clone(),
                    meta: meta.clone(),
                }
            }
            _ => {
                // Small (or from another remote): sent whole right now, the answer is
                // collected later; nothing waits here.
                let mut input = src.open(path)?;
                let (handle, _) = self.push_direct(path, meta, &mut input)?;
                let rx = self.conn.request(&Req::PushEnd { handle })?;
                PushJob::Await { slot, rx }
            }
        };
        self.slots.start(slot);
        if tx.send(job).is_err() {
            self.slots.done(slot, Err(self.conn.lost_err()));
        }
        Ok(Staged {
            token: format!("push-{slot}"),
            hash: meta.hash,
        })
    }

    fn stage_symlink(&self, target: &str) -> Result<Staged> {
        match self.conn.call(&Req::StageSymlink(target.to_string()))? {
            Resp::Staged { token, .. } => Ok(Staged { token, hash: None }),
            r => Err(unexpected(&self.label, &r)),
        }
    }

    fn discard(&self, staged: Staged) {
        let token = match staged
            .token
            .strip_prefix("push-")
            .and_then(|n| n.parse().ok())
        {
            Some(n) => match self.slots.take(n) {
                Ok((t, _)) => t,
                Err(_) => return,
            },
            None => staged.token,
        };
        let _ = self.conn.send(&[Req::Discard(token)], true);
    }

    fn flush(&self) -> Result<()> {
        self.slots.wait_all();
        match self.conn.call(&Req::Flush)? {
            Resp::Ok => Ok(()),
            r => Err(unexpected(&self.label, &r)),
        }
    }

    fn install(
        &self,
        staged: Staged,
        path: &RelPath,
        expect: Option<&Entry>,
        run: &str,
    ) -> Result<(Entry, VersionPath)> {
        let (token, hash) = match staged
            .token
            .strip_prefix("push-")
            .and_then(|n| n.parse().ok())
        {
            Some(n) => self.slots.take(n)?,
            None => (staged.token, staged.hash),
        };
        let r = self.conn.call(&Req::Install {
            token,
            hash: hash.map(|h| h.0),
            path: path.as_str().into(),
            expect: expect.map(WEntry::from_entry),
            run: run.to_string(),
        })?;
        match r {
            Resp::Changed { entry, version } => Ok((
                entry.to_entry().map_err(|m| hostile(&self.label, m))?,
                version,
            )),
            r => Err(unexpected(&self.label, &r)),
        }
    }

    fn remove(&self, path: &RelPath, expect: &Entry, run: &str) -> Result<VersionPath> {
        match self.conn.call(&Req::Remove {
            path: path.as_str().into(),
            expect: WEntry::from_entry(expect),
            run: run.to_string(),
        })? {
            Resp::Version(v) => Ok(v),
            r => Err(unexpected(&self.label, &r)),
        }
    }

    fn rename(&self, from: &RelPath, to: &RelPath, expect: &Entry) -> Result<Entry> {
        let r = self.conn.call(&Req::Rename {
            from: from.as_str().into(),
            to: to.as_str().into(),
            expect: WEntry::from_entry(expect),
        })?;
        self.changed(r)
    }

    fn mkdir(&self, path: &RelPath, mode: u32, expect: Option<&Entry>, run: &str) -> Result<Entry> {
        let r = self.conn.call(&Req::Mkdir {
            path: path.as_str().into(),
            mode,
            expect: expect.map(WEntry::from_entry),
            run: run.to_string(),
        })?;
        self.changed(r)
    }

    fn set_mode(&self, path: &RelPath, mode: u32, expect: &Entry) -> Result<Entry> {
        let r = self.conn.call(&Req::SetMode {
            path: path.as_str().into(),
            mode,
            expect: WEntry::from_entry(expect),
        })?;
        self.changed(r)
    }

    fn list_versions(&self, path: Option<&RelPath>) -> Result<Vec<VersionInfo>> {
        self.conn.require("versions1", "list kept versions")?;
        let rx = self.conn.request(&Req::ListVersions {
            path: path.map(|p| p.as_str().to_string()),
        })?;
        let mut out = Vec::new();
        loop {
            match self.conn.next(&rx)? {
                Resp::Versions(v) => {
                    for w in v {
                        let info = w.to_info().map_err(|m| hostile(&self.label, m))?;
                        if path.is_some_and(|p| p.as_str() != info.path) {
                            return Err(hostile(
                                &self.label,
                                format!("a version of {} listed for {:?}", info.path, path),
                            ));
                        }
                        out.push(info);
                    }
                }
                Resp::VersionsEnd => return Ok(out),
                r => return Err(unexpected(&self.label, &r)),
            }
        }
    }

    fn stage_version(&self, id: &str) -> Result<Staged> {
        self.conn.require("versions1", "restore kept versions")?;
        let r = self.conn.call(&Req::StageVersion(id.to_string()))?;
        self.staged(r)
    }

    fn remove_version(&self, id: &str) -> Result<u64> {
        self.conn.require("versions1", "remove kept versions")?;
        match self.conn.call(&Req::RemoveVersion(id.to_string()))? {
            Resp::Count(n) => Ok(n),
            r => Err(unexpected(&self.label, &r)),
        }
    }

    fn stage_prefix(&self, path: &RelPath, len: u64) -> Result<Staged> {
        self.conn.require("versions1", "undo an append")?;
        let r = self.conn.call(&Req::StagePrefix {
            path: path.as_str().into(),
            len,
        })?;
        self.staged(r)
    }

    /// New content made on this machine (a merge result, a database snapshot): `fill`
    /// writes it to a local temporary file, which is then sent whole and staged on the
    /// agent's side, where its hash is checked against the one `fill` returned.
    fn stage_local(&self, fill: &mut dyn FnMut(&Path) -> io::Result<Hash>) -> Result<Staged> {
        let local = std::env::temp_dir().join(format!(
            "fedsync-stage-{}-{}",
            std::process::id(),
            super::new_token()
        ));
        let r = (|| {
            let hash = fill(&local).map_err(io_err(local.display()))?;
            let f = File::open(&local).map_err(io_err(local.display()))?;
            let md = f.metadata().map_err(io_err(local.display()))?;
            let e = crate::replica::local::entry_from_meta(&md, None)
                .filter(|e| e.is_file())
                .ok_or_else(|| {
                    io_err(local.display())(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "not a file",
                    ))
                })?;
            self.push_whole(
                f,
                &Entry {
                    hash: Some(hash),
                    stat: None,
                    ..e
                },
            )
        })();
        let _ = fs::remove_file(&local);
        r
    }

    /// Append-only growth of a local file: the agent appends the tail in place (no new copy
    /// of the old content, no version of it: the old content stays the file's prefix).
    fn append_tail(
        &self,
        src: &dyn Replica,
        path: &RelPath,
        expect: &Entry,
        meta: &Entry,
    ) -> Result<Option<Entry>> {
        let (Some(root), Some(old_hash), Some(_)) = (src.local_root(), expect.hash, meta.hash)
        else {
            return Ok(None);
        };
        if !self.conn.has("append1")
            || !expect.is_file()
            || meta.kind != Kind::File
            || meta.size <= expect.size
        {
            return Ok(None);
        }
        drop(src.open(path)?); // refuses symlinked parents at the source
        let Some(input) = crate::replica::local::grown_source(root, path, expect.size, old_hash)?
        else {
            return Ok(None);
        };
        let handle = self.conn.handle();
        match self.conn.call(&Req::AppendBegin {
            handle,
            path: path.as_str().into(),
            expect: WEntry::from_entry(expect),
            meta: WEntry::from_entry(meta),
        })? {
            Resp::Ok => {}
            r => return Err(unexpected(&self.label, &r)),
        }
        let tail = meta.size - expect.size;
        let mut buf = vec![0u8; (DATA_CHUNK as u64).min(tail) as usize];
        let mut done = 0u64;
        let mut short = false;
        while done < tail {
            let n = ((tail - done) as usize).min(buf.len());
            let k = input
                .read_at(&mut buf[..n], expect.size + done)
                .map_err(io_err(path))?;
            if k == 0 {
                short = true; // the source shrank: the agent cuts back
                break;
            }
            self.conn.send(
                &[Req::PushData {
                    handle,
                    ops: vec![WOp::Data(buf[..k].to_vec())],
                }],
                false,
            )?;
            done += k as u64;
        }
        let r = self.conn.call(&Req::AppendEnd { handle });
        if short {
            return Err(ReplicaError::HashMismatch(path.to_string()));
        }
        let e = self.changed(r?)?;
        if e.hash != meta.hash {
            return Err(hostile(
                &self.label,
                format!("{path}: append answered with another hash"),
            ));
        }
        Ok(Some(e))
    }
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A remote file read in windows.
struct RemoteRead {
    conn: Arc<Conn>,
    handle: u32,
    pos: u64,
    buf: VecDeque<u8>,
    eof: bool,
}

impl Read for RemoteRead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.buf.is_empty() && !self.eof {
            let rx = self
                .conn
                .request(&Req::Read {
                    handle: self.handle,
                    ranges: vec![(self.pos, DATA_CHUNK as u64)],
                })
                .map_err(io::Error::other)?;
            let mut got = 0;
            loop {
                match self.conn.next(&rx).map_err(io::Error::other)? {
                    Resp::Data(d) => {
                        got += d.len();
                        self.buf.extend(d);
                    }
                    Resp::DataEnd => break,
                    r => return Err(io::Error::other(format!("unexpected answer {r:?}"))),
                }
            }
            self.pos += got as u64;
            if got == 0 {
                self.eof = true;
            }
        }
        let n = out.len().min(self.buf.len());
        for (o, b) in out.iter_mut().zip(self.buf.drain(..n)) {
            *o = b;
        }
        Ok(n)
    }
}

impl Drop for RemoteRead {
    fn drop(&mut self) {
        let _ = self.conn.send(
            &[Req::Close {
                handle: self.handle,
            }],
            true,
        );
    }
}

// ---------------------------------------------------------------------------------------
// Transfers

/// Push a large local file: prefix check, else group/chunk signatures of the agent's
/// basis files, then only the bytes the agent lacks.
/// Steps of one large transfer, on stderr with `FEDSYNC_TIMING` (for profiling).
struct Laps {
    start: Option<std::time::Instant>,
    last: std::time::Duration,
    parts: Vec<String>,
}

impl Laps {
    fn new() -> Laps {
        Laps {
            start: std::env::var_os("FEDSYNC_TIMING").map(|_| std::time::Instant::now()),
            last: std::time::Duration::ZERO,
            parts: Vec::new(),
        }
    }
    fn mark(&mut self, what: &str) {
        if let Some(s) = self.start {
            let now = s.elapsed();
            self.parts.push(format!(
                "{what} {:.0} ms",
                (now - self.last).as_secs_f64() * 1e3
            ));
            self.last = now;
        }
    }
    fn print(&self, what: &str) {
        if self.start.is_some() {
            eprintln!("timing:   {what}: {}", self.parts.join(", "));
        }
    }
}

fn push_large(conn: &Conn, file: &Path, path: &RelPath, meta: &Entry) -> PushResult {
    let mut laps = Laps::new();
    let r = push_large_inner(conn, file, path, meta, &mut laps);
    laps.print(&format!("push {path}"));
    r
}

fn push_large_inner(
    conn: &Conn,
    file: &Path,
    path: &RelPath,
    meta: &Entry,
    laps: &mut Laps,
) -> PushResult {
    let f = File::open(file).map_err(io_err(path))?;
    let size = meta.size;
    if f.metadata().map_err(io_err(path))?.len() != size {
        return Err(ReplicaError::HashMismatch(path.to_string()));
    }
    let handle = conn.handle();
    let basis = match conn.call(&Req::PushBegin {
        handle,
        path: path.as_str().into(),
        meta: WEntry::from_entry(meta),
        direct: false,
    })? {
        Resp::PushReady(b) => b,
        r => return Err(unexpected(&conn.label, &r)),
    };
    if basis.len() > 2 {
        return Err(hostile(&conn.label, "too many basis files".into()));
    }
    laps.mark("begin");
    let ops = push_ops(conn, handle, &f, size, &basis, path, meta, laps)?;
    // Send the ops: copies by reference, literal ranges as data.
    let mut batch: Vec<WOp> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut buf = vec![0u8; DATA_CHUNK];
    let flush_batch = |batch: &mut Vec<WOp>, bytes: &mut usize| -> Result<()> {
        if !batch.is_empty() {
            conn.send(
                &[Req::PushData {
                    handle,
                    ops: std::mem::take(batch),
                }],
                false,
            )?;
            *bytes = 0;
        }
        Ok(())
    };
    for op in &ops {
        match *op {
            Op::Copy { basis, offset, len } => {
                batch.push(WOp::Copy { basis, offset, len });
                batch_bytes += 32;
            }
            Op::Lit { offset, len } => {
                let mut done = 0u64;
                while done < len {
                    let n = ((len - done) as usize)
                        .min(DATA_CHUNK - batch_bytes.min(DATA_CHUNK - 4096));
                    let k = f
                        .read_at(&mut buf[..n], offset + done)
                        .map_err(io_err(path))?;
                    if k == 0 {
                        return Err(ReplicaError::HashMismatch(path.to_string()));
                    }
                    batch.push(WOp::Data(buf[..k].to_vec()));
                    batch_bytes += k;
                    done += k as u64;
                    if batch_bytes >= DATA_CHUNK - 4096 {
                        flush_batch(&mut batch, &mut batch_bytes)?;
                    }
                }
            }
        }
        if batch.len() >= 4096 {
            flush_batch(&mut batch, &mut batch_bytes)?;
        }
    }
    flush_batch(&mut batch, &mut batch_bytes)?;
    laps.mark("data sent");
    let r = match conn.call(&Req::PushEnd { handle })? {
        Resp::Staged { token, hash } => Ok((token, hash.map(Hash))),
        r => Err(unexpected(&conn.label, &r)),
    };
    laps.mark("built and checked there");
    r
}

#[allow(clippy::too_many_arguments)]
fn push_ops(
    conn: &Conn,
    handle: u32,
    f: &File,
    size: u64,
    basis: &[(u64, Option<[u8; 32]>)],
    path: &RelPath,
    meta: &Entry,
    laps: &mut Laps,
) -> Result<Vec<Op>> {
    let whole = vec![Op::Lit {
        offset: 0,
        len: size,
    }];
    if basis.iter().all(|(l, _)| *l == 0) {
        return Ok(whole);
    }
    // A basis that is a prefix of the new content (append-only growth, or a partial
    // transfer): send only the tail.
    let mut order: Vec<usize> = (0..basis.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(basis[i].0));
    for i in order {
        let (len, hash) = basis[i];
        if let Some(h) = hash {
            // (A basis as long as the file is a prefix only when it is the same content,
            // whose hash is known without reading the file again.)
            let same = |len: u64| -> Result<bool> {
                if len == size && meta.hash.is_some() {
                    return Ok(meta.hash.map(|m| m.0) == Some(h));
                }
                Ok(delta::prefix_hash(f, len).map_err(io_err(path))?.0 == h)
            };
            if len > 0 && len <= size && same(len)? {
                let mut ops = vec![Op::Copy {
                    basis: i as u8,
                    offset: 0,
                    len,
                }];
                delta::push_op(
                    &mut ops,
                    Op::Lit {
                        offset: len,
                        len: size - len,
                    },
                );
                return Ok(ops);
            }
        }
    }
    // Signatures: ask for the agent's while computing ours.
    let rxs: Vec<_> = (0..basis.len())
        .map(|b| {
            conn.request(&Req::Groups {
                handle,
                basis: b as u8,
            })
        })
        .collect::<Result<_>>()?;
    laps.mark("prefix checks");
    let mut ours = Vec::new();
    delta::groups(f, 0, size, |s| ours.push(s)).map_err(io_err(path))?;
    laps.mark("our groups");
    let theirs: Vec<Vec<Sig>> = rxs.iter().map(|rx| conn.sigs(rx)).collect::<Result<_>>()?;
    laps.mark("their groups");
    let plan = delta::plan_groups(&ours, &theirs);
    if conn.has("sigs1") {
        // The agent keeps them for the next transfer of this file (no signature pass
        // there); the groups it has already are named, not sent.
        conn.send(&push_sigs(handle, &plan, &theirs), false)?;
    }
    let mut basis_chunks = Vec::new();
    let mut new_chunks = Vec::new();
    if !plan.need_new.is_empty() && !plan.need_basis.is_empty() {
        let rxs: Vec<_> = (0..basis.len())
            .map(|b| {
                let ranges: Vec<(u64, u64)> = plan
                    .need_basis
                    .iter()
                    .filter(|(bb, _, _)| *bb as usize == b)
                    .map(|(_, o, l)| (*o, *l))
                    .collect();
                conn.request(&Req::Chunks {
                    handle,
                    basis: b as u8,
                    ranges,
                })
            })
            .collect::<Result<_>>()?;
        for (o, l) in &plan.need_new {
            new_chunks.push(delta::chunks(f, *o, *l).map_err(io_err(path))?);
        }
        let mut per_basis: Vec<VecDeque<Vec<Sig>>> = Vec::new();
        for rx in &rxs {
            per_basis.push(conn.sig_lists(rx)?.into());
        }
        for (b, _, _) in &plan.need_basis {
            basis_chunks.push(per_basis[*b as usize].pop_front().unwrap_or_default());
        }
        laps.mark("chunks");
    }
    Ok(delta::plan_ops(&plan, &new_chunks, &basis_chunks))
}

/// `PushSigs` requests describing the new file's groups: runs of groups found in a basis
/// as references to the basis's groups (as numbered in `theirs`), the others in full.
fn push_sigs(handle: u32, plan: &delta::GroupPlan, theirs: &[Vec<Sig>]) -> Vec<Req> {
    let mut number: HashMap<(u8, u64), u32> = HashMap::new();
    for (b, gs) in theirs.iter().enumerate() {
        let mut off = 0u64;
        for (i, g) in gs.iter().enumerate() {
            number.entry((b as u8, off)).or_insert(i as u32);
            off += g.len as u64;
        }
    }
    let mut all: Vec<WGroups> = Vec::new();
    for (_, sig, hit) in &plan.groups {
        let at = hit.and_then(|(b, o)| number.get(&(b, o)).map(|&i| (b, i)));
        match (all.last_mut(), at) {
            (
                Some(WGroups::Basis {
                    basis,
                    first,
                    count,
                }),
                Some((b, i)),
            ) if *basis == b && *first + *count == i => *count += 1,
            (_, Some((b, i))) => all.push(WGroups::Basis {
                basis: b,
                first: i,
                count: 1,
            }),
            (Some(WGroups::Sigs(v)), None) if v.len() < SIG_BATCH => v.push(*sig),
            (_, None) => all.push(WGroups::Sigs(vec![*sig])),
        }
    }
    // Messages of at most about SIG_BATCH signatures or references.
    let mut reqs = Vec::new();
    let mut part = Vec::new();
    let mut weight = 0;
    for g in all {
        let w = match &g {
            WGroups::Sigs(v) => v.len(),
            WGroups::Basis { .. } => 1,
        };
        if weight + w > SIG_BATCH && !part.is_empty() {
            reqs.push(Req::PushSigs {
                handle,
                groups: std::mem::take(&mut part),
            });
            weight = 0;
        }
        weight += w;
        part.push(g);
    }
    if !part.is_empty() {
        reqs.push(Req::PushSigs {
            handle,
            groups: part,
        });
    }
    reqs
}

fn pull_small(
    conn: &Conn,
    key: &Path,
    rx: &mpsc::Receiver<Resp>,
    path: &RelPath,
    meta: &Entry,
) -> std::result::Result<Hash, ReplicaError> {
    let tmp = key.parent().expect("temp file has a folder");
    let recv = Receiving::begin(tmp, None, false).map_err(io_err(path))?;
    let out_path = recv.out_path.clone();
    let r = (|| {
        let mut b = Builder::new(recv.out);
        loop {
            match conn.next(rx)? {
                Resp::Data(d) => {
                    if b.written() + d.len() as u64 > meta.size {
                        return Err(ReplicaError::HashMismatch(path.to_string()));
                    }
                    b.data(&d).map_err(io_err(path))?
                }
                Resp::DataEnd => break,
                r => return Err(unexpected(&conn.label, &r)),
            }
        }
        finish_pull(b, &out_path, None, key, path, meta)
    })();
    if r.is_err() {
        let _ = fs::remove_file(&out_path);
    }
    r
}

/// Verify what was written, give it its metadata and the token name the engine installs.
fn finish_pull(
    b: Builder,
    out_path: &Path,
    prev: Option<&Path>,
    key: &Path,
    path: &RelPath,
    meta: &Entry,
) -> std::result::Result<Hash, ReplicaError> {
    let (f, h, n) = b.finish().map_err(io_err(path))?;
    if Some(h) != meta.hash || n != meta.size {
        drop(f);
        Receiving::discard(out_path, prev);
        return Err(ReplicaError::HashMismatch(path.to_string()));
    }
    set_meta(&f, meta.mode, meta.mtime).map_err(io_err(path))?;
    drop(f);
    fs::rename(out_path, key).map_err(io_err(path))?;
    if let Some(p) = prev {
        let _ = fs::remove_file(p);
    }
    Ok(h)
}

/// Pull a large remote file into `key`, rebuilding it from the local file at `basis_path`
/// (and a partial transfer of the same content) plus the bytes only the agent has.
fn pull_large(
    conn: &Conn,
    key: &Path,
    basis_path: &Path,
    path: &RelPath,
    meta: &Entry,
) -> std::result::Result<Hash, ReplicaError> {
    let tmp = key.parent().expect("temp file has a folder");
    let recv = Receiving::begin(tmp, meta.hash, true).map_err(io_err(path))?;
    let mut basis: Vec<File> = Vec::new();
    if fs::symlink_metadata(basis_path).is_ok_and(|m| m.is_file()) {
        if let Ok(f) = File::open(basis_path) {
            basis.push(f);
        }
    }
    let prev_path = recv.prev.as_ref().map(|(_, p)| p.clone());
    if let Some((f, _)) = recv.prev {
        basis.push(f);
    }
    let out_path = recv.out_path.clone();
    let handle = conn.handle();
    let mut b = Builder::new(recv.out);
    let r = (|| {
        conn.send(
            &[Req::Open {
                handle,
                path: path.as_str().into(),
            }],
            false,
        )?;
        let ops = pull_ops(conn, handle, &basis, meta, path)?;
        // Literal bytes come in pieces, two requests in flight.
        let mut pieces: Vec<(u64, u64)> = Vec::new();
        for op in &ops {
            if let Op::Lit { offset, len } = *op {
                let mut o = 0;
                while o < len {
                    let l = (len - o).min(READ_PIECE);
                    pieces.push((offset + o, l));
                    o += l;
                }
            }
        }
        let mut inflight: VecDeque<mpsc::Receiver<Resp>> = VecDeque::new();
        let mut issued = 0usize;
        let mut used = 0usize;
        for op in &ops {
            match *op {
                Op::Copy {
                    basis: bi,
                    offset,
                    len,
                } => {
                    let f = basis
                        .get(bi as usize)
                        .ok_or_else(|| hostile(&conn.label, "bad basis".into()))?;
                    b.copy(f, offset, len)
                        .map_err(|_| ReplicaError::HashMismatch(path.to_string()))?;
                }
                Op::Lit { len, .. } => {
                    let mut got_total = 0u64;
                    while got_total < len {
                        while issued < pieces.len() && issued < used + 2 {
                            inflight.push_back(conn.request(&Req::Read {
                                handle,
                                ranges: vec![pieces[issued]],
                            })?);
                            issued += 1;
                        }
                        let rx = inflight.pop_front().expect("issued");
                        let want = pieces[used].1;
                        used += 1;
                        let mut got = 0u64;
                        loop {
                            match conn.next(&rx)? {
                                Resp::Data(d) => {
                                    got += d.len() as u64;
                                    if got > want {
                                        return Err(hostile(
                                            &conn.label,
                                            "more data than asked for".into(),
                                        ));
                                    }
                                    b.data(&d).map_err(io_err(path))?;
                                }
                                Resp::DataEnd => break,
                                r => return Err(unexpected(&conn.label, &r)),
                            }
                        }
                        if got != want {
                            // The remote file shrank since the scan.
                            return Err(ReplicaError::HashMismatch(path.to_string()));
                        }
                        got_total += got;
                    }
                }
            }
        }
        let _ = conn.send(&[Req::Close { handle }], true);
        Ok(())
    })();
    match r {
        Ok(()) => finish_pull(b, &out_path, prev_path.as_deref(), key, path, meta),
        Err(e) => {
            let _ = conn.send(&[Req::Close { handle }], true);
            if matches!(e, ReplicaError::HashMismatch(_)) {
                drop(b);
                Receiving::discard(&out_path, prev_path.as_deref());
            } else {
                // Connection trouble: keep what arrived, the next run resumes from it.
                b.abandon();
            }
            Err(e)
        }
    }
}

fn pull_ops(
    conn: &Conn,
    handle: u32,
    basis: &[File],
    meta: &Entry,
    path: &RelPath,
) -> Result<Vec<Op>> {
    let size = meta.size;
    let whole = vec![Op::Lit {
        offset: 0,
        len: size,
    }];
    let lens: Vec<u64> = basis
        .iter()
        .map(|f| f.metadata().map(|m| m.len()).unwrap_or(0))
        .collect();
    if lens.iter().all(|l| *l == 0) {
        return Ok(whole);
    }
    // Prefix: does the remote file start with one of our basis files?
    let mut order: Vec<usize> = (0..basis.len())
        .filter(|&i| lens[i] > 0 && lens[i] <= size)
        .collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
    for i in order {
        let rx = conn.request(&Req::PrefixHash {
            handle,
            basis: 0,
            len: lens[i],
        })?;
        let ours = delta::prefix_hash(&basis[i], lens[i]).map_err(io_err(path))?;
        match conn.next(&rx) {
            Ok(Resp::Hash(h)) if h == ours.0 => {
                let mut ops = vec![Op::Copy {
                    basis: i as u8,
                    offset: 0,
                    len: lens[i],
                }];
                delta::push_op(
                    &mut ops,
                    Op::Lit {
                        offset: lens[i],
                        len: size - lens[i],
                    },
                );
                return Ok(ops);
            }
            Ok(Resp::Hash(_)) => {}
            Ok(r) => return Err(unexpected(&conn.label, &r)),
            Err(e) => return Err(e),
        }
    }
    let rx = conn.request(&Req::Groups { handle, basis: 0 })?;
    let mut ours: Vec<Vec<Sig>> = Vec::new();
    for (f, l) in basis.iter().zip(&lens) {
        let mut v = Vec::new();
        delta::groups(f, 0, *l, |s| v.push(s)).map_err(io_err(path))?;
        ours.push(v);
    }
    let theirs = conn.sigs(&rx)?;
    if theirs.iter().map(|s| s.len as u64).sum::<u64>() != size {
        // The remote file is not the scanned one any more.
        return Err(ReplicaError::HashMismatch(path.to_string()));
    }
    let plan = delta::plan_groups(&theirs, &ours);
    let mut new_chunks = Vec::new();
    let mut basis_chunks = Vec::new();
    if !plan.need_new.is_empty() && !plan.need_basis.is_empty() {
        let rx = conn.request(&Req::Chunks {
            handle,
            basis: 0,
            ranges: plan.need_new.clone(),
        })?;
        for (b, o, l) in &plan.need_basis {
            basis_chunks.push(delta::chunks(&basis[*b as usize], *o, *l).map_err(io_err(path))?);
        }
        new_chunks = conn.sig_lists(&rx)?;
    }
    Ok(delta::plan_ops(&plan, &new_chunks, &basis_chunks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_paths_are_quoted_for_the_remote_shell() {
        assert_eq!(quote_path("~"), "~");
        assert_eq!(quote_path("~/my notes"), "~/'my notes'");
        assert_eq!(quote_path("/srv/it's"), "'/srv/it'\\''s'");
    }
}
