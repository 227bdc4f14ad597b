//! `fedsync ui` (issue 7): the dashboard's JSON API, driven over HTTP against the real binary
//! started with `--listen 127.0.0.1:0`. Auth is required everywhere under `/api/` and on
//! `/metrics`; every action (resolve, rollback, restore) is a run in the audit trail.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const P: &str = "p";

/// A running `fedsync ui p --listen 127.0.0.1:0`, killed on drop.
struct Server {
    child: Child,
    addr: String,
    token: String,
    url: String,
}

impl Server {
    fn start(fx: &Fx) -> Server {
        Server::start_with(fx, &["ui", P, "--listen", "127.0.0.1:0"])
    }

    /// Start `fedsync ARGS...` and take the dashboard's address from the first line of its
    /// output that has one (`watch --ui` prints its own line first).
    fn start_with(fx: &Fx, args: &[&str]) -> Server {
        let mut child = fx
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn fedsync");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        while !line.contains("http://") {
            line.clear();
            let n = out.read_line(&mut line).expect("read a line");
            assert!(
                n > 0,
                "fedsync ended without printing the dashboard's address"
            );
        }
        // Keep reading (and dropping) the rest so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = out.read_to_string(&mut sink);
        });
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in the first line {line:?}"))
            .to_string();
        let rest = url.strip_prefix("http://").expect("http");
        let (addr, query) = rest.split_once("/?token=").expect("/?token= in the URL");
        assert!(addr.starts_with("127.0.0.1:"), "{addr}");
        assert!(!addr.ends_with(":0"), "the actual port is printed: {addr}");
        assert_eq!(query.len(), 32, "token of 32 hex chars: {query}");
        assert!(query.bytes().all(|b| b.is_ascii_hexdigit()), "{query}");
        Server {
            child,
            addr: addr.to_string(),
            token: query.to_string(),
            url,
        }
    }

    fn auth(&self) -> String {
        format!("Authorization: Bearer {}", self.token)
    }

    fn get(&self, path: &str) -> Resp {
        http(&self.addr, "GET", path, &[&self.auth()], None)
    }

    fn post(&self, path: &str, body: Value) -> Resp {
        http(&self.addr, "POST", path, &[&self.auth()], Some(body))
    }

    /// GET with the token, 200 asserted, JSON returned.
    #[track_caller]
    fn json(&self, path: &str) -> Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {r:?}");
        r.json()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Resp {
    status: u16,
    headers: HashMap<String, Vec<String>>,
    body: String,
}

impl std::fmt::Debug for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {:?}\n{}", self.status, self.headers, self.body)
    }
}

impl Resp {
    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`).
fn http(addr: &str, method: &str, path: &str, headers: &[&str], body: Option<Value>) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if method == "POST" {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers: HashMap<String, Vec<String>> = HashMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers
                .entry(k.trim().to_ascii_lowercase())
                .or_default()
                .push(v.trim().to_string());
        }
    }
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.iter().any(|x| x.contains("chunked")))
    {
        body = dechunk(&body);
    }
    Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&b[..eol])
                .split(';')
                .next()
                .unwrap_or("0")
                .trim(),
            16,
        )
        .expect("chunk size");
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
    out
}

/// Profile `p` (replicas a, b, conflict = "ask") with an open conflict at each path: synced
/// once with `base`, then changed differently on both sides.
/// (path, base content, a's edit, b's edit)
type Conflict<'a> = (&'a str, &'a [u8], &'a [u8], &'a [u8]);

fn with_conflicts(fx: &Fx, files: &[Conflict]) {
    fx.profile_ab(P, "conflict = \"ask\"", "");
    for (path, base, _, _) in files {
        fx.write(&fx.a, path, base);
    }
    fx.run(&["sync", P]).ok();
    for (path, _, a, _) in files {
        fx.write(&fx.a, path, a);
    }
    for (path, _, _, b) in files {
        fx.write(&fx.b, path, b);
    }
    fx.run(&["sync", P]).code(1);
}

/// The audit trail's records, parsed.
fn audit(fx: &Fx) -> Vec<Value> {
    std::fs::read_to_string(fx.audit_path(P))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

/// The `run-start` record of `run`: every run is audited with its kind.
#[track_caller]
fn run_start(fx: &Fx, run: &str) -> Value {
    audit(fx)
        .into_iter()
        .find(|r| r["run"] == run && r["action"] == "run-start")
        .unwrap_or_else(|| panic!("run {run} is not in the audit trail: {:#?}", audit(fx)))
}

#[test]
fn api_and_page_need_the_token() {
    let fx = Fx::new();
    with_conflicts(&fx, &[("x.txt", b"base\n", b"A\n", b"B\n")]);
    let s = Server::start(&fx);
    let wrong = "0123456789abcdef0123456789abcdef";
    let endpoints = [
        ("GET", "/api/status"),
        ("GET", "/api/conflicts"),
        ("GET", "/api/conflicts/x.txt"),
        ("POST", "/api/conflicts/resolve"),
        ("GET", "/api/history"),
        ("POST", "/api/rollback"),
        ("GET", "/api/versions?path=x.txt"),
        ("POST", "/api/restore"),
        ("GET", "/api/events"),
        ("GET", "/metrics"),
    ];
    let body = json!({"path": "x.txt", "keep": "a", "run": "x"});
    for (method, path) in endpoints {
        let b = (method == "POST").then(|| body.clone());
        for headers in [
            vec![],
            vec![format!("Authorization: Bearer {wrong}")],
            vec![format!("Cookie: fedsync_token={wrong}")],
            vec!["Authorization: Basic dXNlcjpwYXNz".to_string()],
        ] {
            let h: Vec<&str> = headers.iter().map(String::as_str).collect();
            let r = http(&s.addr, method, path, &h, b.clone());
            assert_eq!(r.status, 401, "{method} {path} with {headers:?}: {r:?}");
            let v = r.json();
            assert!(
                v["error"].as_str().is_some_and(|e| e.contains("token")),
                "the error says what to do: {v:#}"
            );
        }
    }
    // Nothing was resolved by the refused calls.
    assert_eq!(read(&fx.a, "x.txt"), "A\n");
    assert_eq!(read(&fx.b, "x.txt"), "B\n");

    // The token works as a bearer header and as the cookie.
    assert_eq!(s.get("/api/status").status, 200);
    let cookie = format!("Cookie: other=1; fedsync_token={}", s.token);
    assert_eq!(
        http(&s.addr, "GET", "/api/status", &[&cookie], None).status,
        200
    );

    // The page: locked without the token; `?token=` sets an HttpOnly, SameSite=Strict cookie
    // and redirects to `/` (the token leaves the address bar); with the cookie it is served.
    let r = http(&s.addr, "GET", "/", &[], None);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.body.contains("token"), "{r:?}");
    let r = http(&s.addr, "GET", &format!("/?token={wrong}"), &[], None);
    assert_eq!(r.status, 401, "{r:?}");
    let path = s.url.split_once(&s.addr).expect("path").1.to_string();
    let r = http(&s.addr, "GET", &path, &[], None);
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(r.header("location"), Some("/"));
    let set = r.header("set-cookie").expect("set-cookie");
    assert!(
        set.starts_with(&format!("fedsync_token={};", s.token)),
        "{set}"
    );
    assert!(set.contains("HttpOnly"), "{set}");
    assert!(set.contains("SameSite=Strict"), "{set}");
    let r = http(&s.addr, "GET", "/", &[&cookie], None);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("/assets/app.js"), "{r:?}");
    assert!(
        !r.body.contains("http://") && !r.body.contains("https://"),
        "no external resources"
    );
    for (asset, ctype) in [("/assets/app.js", "javascript"), ("/assets/app.css", "css")] {
        let r = http(&s.addr, "GET", asset, &[], None);
        assert_eq!(r.status, 200, "{asset}: {r:?}");
        assert!(
            r.header("content-type").is_some_and(|c| c.contains(ctype)),
            "{r:?}"
        );
    }
    let csp = r.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("default-src 'self'"), "{csp}");
}

#[test]
fn non_loopback_listen_needs_allow_remote() {
    let fx = Fx::new();
    fx.profile_ab(P, "", "");
    for addr in ["0.0.0.0:0", "[::]:0", "192.0.2.1:8384"] {
        let out = fx.run(&["ui", P, "--listen", addr]);
        out.code(2);
        assert!(out.stderr.contains("not a loopback address"), "{out:?}");
        assert!(out.stderr.contains("--allow-remote"), "{out:?}");
    }
    let out = fx.run(&["ui", P, "--listen", "not an address"]);
    out.code(2);
    assert!(out.stderr.contains("--listen"), "{out:?}");
    // An unknown profile is a usage error too, with what to do.
    let out = fx.run(&["ui", "nope", "--listen", "127.0.0.1:0"]);
    out.code(2);
    assert!(out.stderr.contains("fedsync init nope"), "{out:?}");
}

#[test]
fn status_and_conflicts_show_both_sides_with_a_line_diff() {
    let fx = Fx::new();
    let bin_a = noise(3000, 3);
    let bin_b = noise(3000, 5);
    with_conflicts(
        &fx,
        &[
            (
                "notes/t.txt",
                b"one\ntwo\nthree\n",
                b"one\ntwo from a\nthree\n",
                b"one\ntwo\nthree\nfour from b\n",
            ),
            ("pic.bin", &noise(3000, 7), &bin_a, &bin_b),
        ],
    );
    fx.write(&fx.a, "pending.txt", "new on a\n");
    let s = Server::start(&fx);

    let st = s.json("/api/status");
    assert_eq!(st["profile"], P);
    assert_eq!(st["health"], "conflicts", "{st:#}");
    let reps = st["replicas"].as_array().expect("replicas");
    assert_eq!(reps.len(), 2);
    for (r, name, root) in [(&reps[0], "a", &fx.a), (&reps[1], "b", &fx.b)] {
        assert_eq!(r["name"], name);
        assert_eq!(r["root"], root.to_str().unwrap());
        assert_eq!(r["reachable"], true, "{r:#}");
        assert_eq!(r["state"], "ok");
    }
    let runs = st["last_runs"].as_array().expect("last_runs");
    assert_eq!(runs.len(), 2, "{st:#}");
    assert_eq!(runs[0]["kind"], "sync");
    assert_eq!(runs[0]["status"], "incomplete");
    assert_eq!(
        runs[0]["summary"]["pairs"][0]["counts"]["conflicts"], 2,
        "{st:#}"
    );
    // The first sync: notes/, notes/t.txt and pic.bin to b.
    assert_eq!(
        runs[1]["summary"]["pairs"][0]["counts"]["to_b"], 3,
        "{st:#}"
    );
    let pend = &st["pending"][0];
    assert_eq!(
        (pend["a"].as_str(), pend["b"].as_str()),
        (Some("a"), Some("b"))
    );
    assert_eq!(
        pend["counts"]["to_b"], 1,
        "pending.txt waits a -> b: {pend:#}"
    );
    assert_eq!(pend["counts"]["to_a"], 0);
    assert_eq!(pend["counts"]["conflicts"], 2);
    let open: Vec<&str> = st["conflicts"]
        .as_array()
        .expect("conflicts")
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert_eq!(open, vec!["notes/t.txt", "pic.bin"]);

    let list = s.json("/api/conflicts");
    let c = &list["conflicts"][0];
    assert_eq!(c["path"], "notes/t.txt");
    assert_eq!((c["a"].as_str(), c["b"].as_str()), (Some("a"), Some("b")));
    assert!(c["reason"].as_str().is_some_and(|r| !r.is_empty()), "{c:#}");
    assert_eq!(c["recorded"]["a"]["kind"], "file");

    // Text: metadata, both contents, and a line diff with line numbers on each side.
    let d = s.json("/api/conflicts/notes/t.txt");
    assert_eq!(d["path"], "notes/t.txt");
    let p = &d["pairs"][0];
    let (sa, sb) = (&p["sides"][0], &p["sides"][1]);
    assert_eq!(sa["replica"], "a");
    assert_eq!(sb["replica"], "b");
    assert_eq!(sa["text"], "one\ntwo from a\nthree\n");
    assert_eq!(sb["text"], "one\ntwo\nthree\nfour from b\n");
    assert_eq!(sa["entry"]["size"], 21);
    assert_eq!(sa["entry"]["kind"], "file");
    assert_eq!(sa["entry"]["hash"].as_str().map(str::len), Some(64));
    assert!(sa["entry"]["mtime"].as_i64().is_some());
    assert_eq!(sb["newer"], true, "b was written last");
    assert_eq!(sa["changed_since_recorded"], false);
    let lines = p["diff"]["lines"].as_array().expect("diff lines");
    let tagged: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["tag"].as_str().unwrap().to_string(),
                l["text"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("equal", "one"),
        ("delete", "two from a"),
        ("insert", "two"),
        ("equal", "three"),
        ("insert", "four from b"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(tagged, want, "{:#}", p["diff"]);
    assert_eq!(lines[1]["a"], 2);
    assert!(lines[1]["b"].is_null());
    assert_eq!(lines[4]["b"], 4);
    assert_eq!(p["diff"]["changed_lines"], 3);
    let keeps: Vec<&str> = p["choices"]
        .as_array()
        .expect("choices")
        .iter()
        .map(|c| c["keep"].as_str().unwrap())
        .collect();
    assert_eq!(keeps, vec!["a", "b", "both", "merge"]);

    // Binary: metadata only, and why there is no diff.
    let d = s.json("/api/conflicts/pic.bin");
    let p = &d["pairs"][0];
    assert!(p["diff"].is_null(), "{p:#}");
    assert!(
        p["no_diff"].as_str().is_some_and(|m| m.contains("binary")),
        "{p:#}"
    );
    for side in p["sides"].as_array().unwrap() {
        assert_eq!(side["binary"], true);
        assert!(side["text"].is_null());
        assert_eq!(side["entry"]["size"], 3000);
    }

    // A path without an open conflict: 404 with the open ones listed.
    let r = s.get("/api/conflicts/pending.txt");
    assert_eq!(r.status, 404, "{r:?}");
    let e = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        e.contains("no open conflict") && e.contains("notes/t.txt"),
        "{e}"
    );
    let r = s.get("/api/nope");
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.json()["error"].is_string());
}

#[test]
fn resolve_rollback_and_restore_are_audited_runs() {
    let fx = Fx::new();
    with_conflicts(
        &fx,
        &[
            ("x.txt", b"base\n", b"from a\n", b"from b\n"),
            ("y.txt", b"y\n", b"y from a\n", b"y from b\n"),
        ],
    );
    let s = Server::start(&fx);
    let trail_before = audit(&fx).len();

    // Bad requests change nothing and say what to do.
    let r = s.post(
        "/api/conflicts/resolve",
        json!({"path": "x.txt", "keep": "c"}),
    );
    assert_eq!(r.status, 400, "{r:?}");
    let e = r.json()["error"].as_str().unwrap().to_string();
    assert!(e.contains("no replica named") && e.contains("a, b"), "{e}");
    let r = s.post(
        "/api/conflicts/resolve",
        json!({"path": "z.txt", "keep": "a"}),
    );
    assert_eq!(r.status, 404, "{r:?}");
    let r = s.post("/api/conflicts/resolve", json!({"keep": "a"}));
    assert_eq!(r.status, 400, "{r:?}");
    let r = http(
        &s.addr,
        "POST",
        "/api/conflicts/resolve",
        &[&s.auth(), "Content-Type: text/plain"],
        None,
    );
    assert!(r.status == 415 || r.status == 400, "{r:?}");
    assert_eq!(
        audit(&fx).len(),
        trail_before,
        "no run for a refused request"
    );

    // Keep b: the run `fedsync resolve p x.txt --keep b` does.
    let r = s.post(
        "/api/conflicts/resolve",
        json!({"path": "x.txt", "keep": "b"}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["exit_code"], 0);
    let resolve_run = v["run"].as_str().expect("run").to_string();
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("fedsync rollback p {resolve_run}"))),
        "{v:#}"
    );
    let it = item(&v["report"], "x.txt");
    assert_eq!(it["conflict"], true);
    assert_eq!(it["outcome"]["state"], "done");
    assert_eq!(it["target"], "a");
    // Both replicas on disk; the other conflict is still open.
    assert_eq!(read(&fx.a, "x.txt"), "from b\n");
    assert_eq!(read(&fx.b, "x.txt"), "from b\n");
    assert_eq!(read(&fx.a, "y.txt"), "y from a\n");
    assert_eq!(read(&fx.b, "y.txt"), "y from b\n");
    let open: Vec<Value> = s.json("/api/conflicts")["conflicts"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0]["path"], "y.txt");
    // Audited: a run labelled resolve, with the change of x.txt on a.
    let start = run_start(&fx, &resolve_run);
    assert!(
        start["detail"].as_str().unwrap().starts_with("resolve"),
        "{start:#}"
    );
    assert!(
        audit(&fx).iter().any(|r| r["run"] == resolve_run.as_str()
            && r["path"] == "x.txt"
            && r["replica"] == "a"),
        "{:#?}",
        audit(&fx)
    );
    let st = s.json("/api/status");
    assert_eq!(st["last_runs"][0]["id"], resolve_run.as_str());
    assert_eq!(st["last_runs"][0]["kind"], "resolve");

    // History: filter by run and by path glob; newest first.
    let h = s.json(&format!("/api/history?run={resolve_run}"));
    let recs = h["records"].as_array().expect("records");
    assert!(!recs.is_empty());
    assert!(
        recs.iter().all(|r| r["run"] == resolve_run.as_str()),
        "{h:#}"
    );
    assert_eq!(recs[0]["action"], "run-end", "newest first: {h:#}");
    assert_eq!(h["runs"][0]["id"], resolve_run.as_str());
    assert_eq!(h["runs"][0]["kind"], "resolve");
    assert_eq!(h["runs"][0]["can_roll_back"], true);
    let h = s.json("/api/history?path=*.txt&limit=2");
    let recs = h["records"].as_array().expect("records");
    assert_eq!(recs.len(), 2, "{h:#}");
    assert!(recs
        .iter()
        .all(|r| r["path"].as_str().unwrap().ends_with(".txt")));
    assert!(h["matched"].as_u64().unwrap() >= 3, "{h:#}");
    let r = s.get("/api/history?path=%5B");
    assert_eq!(r.status, 400, "a bad glob: {r:?}");

    // Versions of x.txt: a kept its own copy when the resolution overwrote it.
    let vs = s.json("/api/versions?path=x.txt");
    assert_eq!(vs["path"], "x.txt");
    let list = vs["versions"].as_array().expect("versions");
    assert!(!list.is_empty(), "{vs:#}");
    for v in list {
        for k in [
            "replica", "version", "run", "path", "kind", "size", "mtime", "location",
        ] {
            assert!(!v[k].is_null(), "{k} in {v:#}");
        }
    }
    let kept = list
        .iter()
        .find(|v| v["replica"] == "a" && v["run"] == resolve_run.as_str())
        .unwrap_or_else(|| panic!("a's copy kept by the resolve: {vs:#}"));
    assert_eq!(kept["size"], 7);
    assert_eq!(kept["path"], "x.txt");
    let r = s.get("/api/versions");
    assert_eq!(r.status, 400, "{r:?}");

    // Rollback of the resolution: a gets its own copy back.
    let r = s.post("/api/rollback", json!({"run": "20200101-000000-0000"}));
    assert_eq!(r.status, 409, "{r:?}");
    assert!(
        r.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("no run 20200101-000000-0000")),
        "{r:?}"
    );
    let r = s.post("/api/rollback", json!({"run": resolve_run}));
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["ok"], true, "{v:#}");
    let rollback_run = v["run"].as_str().unwrap().to_string();
    assert_eq!(v["report"]["target"], resolve_run.as_str());
    assert_eq!(read(&fx.a, "x.txt"), "from a\n");
    assert_eq!(read(&fx.b, "x.txt"), "from b\n");
    let start = run_start(&fx, &rollback_run);
    assert!(
        start["detail"].as_str().unwrap().starts_with("rollback"),
        "{start:#}"
    );
    // Rolling back twice: refused, with the message, nothing changed.
    let before = (contents(&fx.a), contents(&fx.b));
    let r = s.post("/api/rollback", json!({"run": resolve_run}));
    assert!(r.status == 409 || r.status == 200, "{r:?}");
    if r.status == 200 {
        assert_eq!(r.json()["report"]["done"].as_array().unwrap().len(), 0);
    }
    assert_eq!((contents(&fx.a), contents(&fx.b)), before);

    // The rollback kept what a held (b's copy) as a version: restore it onto a.
    let vs = s.json("/api/versions?path=x.txt");
    let list = vs["versions"].as_array().expect("versions");
    let from_rollback = list
        .iter()
        .find(|v| v["replica"] == "a" && v["run"] == rollback_run.as_str())
        .unwrap_or_else(|| panic!("a's copy kept by the rollback: {vs:#}"));
    let r = s.post(
        "/api/restore",
        json!({"path": "x.txt", "version": from_rollback["version"], "replica": "a"}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["ok"], true, "{v:#}");
    let restore_run = v["run"].as_str().unwrap().to_string();
    assert_eq!(read(&fx.a, "x.txt"), "from b\n");
    let start = run_start(&fx, &restore_run);
    assert!(
        start["detail"].as_str().unwrap().starts_with("restore"),
        "{start:#}"
    );
    let r = s.post("/api/restore", json!({"path": "x.txt", "version": "nope"}));
    assert_eq!(r.status, 409, "{r:?}");
    assert!(
        r.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("fedsync versions p x.txt")),
        "{r:?}"
    );

    // Every action is in the state's runs too.
    let kinds: Vec<String> = s.json("/api/status")["last_runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds[0], "restore", "{kinds:?}");
    assert!(kinds.iter().any(|k| k == "rollback"), "{kinds:?}");
    assert!(kinds.iter().any(|k| k == "resolve"), "{kinds:?}");
}

#[test]
fn metrics_are_prometheus_text() {
    let fx = Fx::new();
    with_conflicts(&fx, &[("x.txt", b"base\n", b"A\n", b"B\n")]);
    let s = Server::start(&fx);
    let r = s.get("/metrics");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{r:?}"
    );
    let mut samples: Vec<(String, HashMap<String, String>, f64)> = Vec::new();
    for line in r.body.lines() {
        if line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        // name{k="v",...} value
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value in {line:?}"));
        let (name, labels) = series
            .split_once('{')
            .unwrap_or_else(|| panic!("labels in {line:?}"));
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "{line:?}"
        );
        let labels = labels
            .strip_suffix('}')
            .unwrap_or_else(|| panic!("{line:?}"));
        let mut map = HashMap::new();
        for kv in labels.split("\",") {
            let (k, v) = kv.split_once("=\"").unwrap_or_else(|| panic!("{line:?}"));
            map.insert(k.to_string(), v.trim_end_matches('"').to_string());
        }
        assert_eq!(map.get("profile").map(String::as_str), Some(P), "{line:?}");
        samples.push((name.to_string(), map, value));
    }
    let find = |name: &str, label: Option<(&str, &str)>| -> f64 {
        samples
            .iter()
            .filter(|(n, l, _)| {
                n == name && label.is_none_or(|(k, v)| l.get(k).map(String::as_str) == Some(v))
            })
            .map(|(_, _, v)| *v)
            .sum()
    };
    assert_eq!(
        find("fedsync_runs_total", Some(("status", "ok"))),
        1.0,
        "{}",
        r.body
    );
    assert_eq!(
        find("fedsync_runs_total", Some(("status", "incomplete"))),
        1.0
    );
    assert_eq!(find("fedsync_run_failures_total", None), 0.0);
    assert_eq!(find("fedsync_open_conflicts", None), 1.0);
    assert_eq!(
        find(
            "fedsync_transferred_files_total",
            Some(("direction", "a->b"))
        ),
        1.0
    );
    assert_eq!(
        find(
            "fedsync_transferred_bytes_total",
            Some(("direction", "a->b"))
        ),
        5.0
    );
    let last = find(
        "fedsync_last_success_timestamp_seconds",
        Some(("pair", "a<->b")),
    );
    assert!((last - now_secs() as f64).abs() < 600.0, "{last}");

    // After resolving, the conflict gauge drops and the runs count goes up.
    let r2 = s.post(
        "/api/conflicts/resolve",
        json!({"path": "x.txt", "keep": "a"}),
    );
    assert_eq!(r2.status, 200, "{r2:?}");
    let body = s.get("/metrics").body;
    assert!(
        body.contains("fedsync_open_conflicts{profile=\"p\"} 0"),
        "{body}"
    );
    assert!(
        body.contains("fedsync_runs_total{profile=\"p\",kind=\"resolve\",status=\"ok\"} 1"),
        "{body}"
    );
}

#[test]
fn events_announce_audit_trail_growth() {
    let fx = Fx::new();
    fx.profile_ab(P, "", "");
    fx.write(&fx.a, "x.txt", "x\n");
    fx.run(&["sync", P]).ok();
    let s = Server::start(&fx);
    let mut sock = TcpStream::connect(&s.addr).expect("connect");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    write!(
        sock,
        "GET /api/events HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n{}\r\n\r\n",
        s.addr,
        s.auth()
    )
    .unwrap();
    let mut seen = String::new();
    let mut read_until = |want: &str, secs: u64, seen: &mut String| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut buf = [0u8; 4096];
        while !seen.contains(want) {
            assert!(Instant::now() < deadline, "no {want:?} in {seen:?}");
            match sock.read(&mut buf) {
                Ok(0) => panic!("stream closed: {seen:?}"),
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    };
    read_until("event: hello", 20, &mut seen);
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.contains("text/event-stream"), "{seen}");
    assert!(!seen.contains("event: audit"), "{seen}");
    // A run from the command line (as `fedsync watch` would do) grows the audit trail.
    fx.write(&fx.b, "y.txt", "y\n");
    fx.run(&["sync", P]).ok();
    read_until("event: audit", 20, &mut seen);
}

#[test]
fn openapi_documents_every_endpoint() {
    let spec = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/openapi.yaml"
    ))
    .expect("docs/openapi.yaml");
    assert!(spec.starts_with("openapi: 3."), "an OpenAPI 3 document");
    for (path, method) in [
        ("/api/status", "get"),
        ("/api/conflicts", "get"),
        ("/api/conflicts/{path}", "get"),
        ("/api/conflicts/resolve", "post"),
        ("/api/history", "get"),
        ("/api/rollback", "post"),
        ("/api/versions", "get"),
        ("/api/restore", "post"),
        ("/api/events", "get"),
        ("/metrics", "get"),
    ] {
        let at = spec
            .find(&format!("\n  {path}:\n"))
            .unwrap_or_else(|| panic!("{path} is not documented"));
        let rest = &spec[at + path.len() + 4..];
        let end = rest.find("\n  /").unwrap_or(rest.len());
        assert!(
            rest[..end].contains(&format!("\n    {method}:\n")),
            "{method} {path} is not documented"
        );
    }
}

/// `fedsync watch NAME --ui ADDR` serves the same dashboard while it syncs; SIGTERM stops both.
#[test]
fn watch_serves_the_dashboard_too() {
    let fx = Fx::new();
    fx.profile_ab(P, "", "");
    fx.write(&fx.a, "notes.txt", "from a\n");
    let mut srv = Server::start_with(&fx, &["watch", P, "--ui", "127.0.0.1:0"]);
    assert_eq!(srv.get("/api/status").status, 200);
    assert_eq!(
        http(&srv.addr, "GET", "/api/status", &[], None).status,
        401,
        "the token is required here too"
    );
    // The watcher syncs meanwhile; the dashboard sees its run.
    let mut seen = false;
    for _ in 0..100 {
        let st = srv.json("/api/status");
        if st["last_runs"].as_array().is_some_and(|r| !r.is_empty()) {
            seen = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(seen, "the watcher's run shows in the dashboard");
    let pid = srv.child.id() as i32;
    // SIGTERM: the watcher and the server stop cleanly.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = srv.child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "{status:?}");
}
