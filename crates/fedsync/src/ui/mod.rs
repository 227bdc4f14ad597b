//! `fedsync ui NAME`: the dashboard. A small HTTP server (axum on a tokio runtime that
//! lives only in this command) serving one page and the JSON API under `/api/` that the
//! page uses. No sync logic lives here: every view is a read of the state, the audit trail
//! or a dry-run plan, and every action is an ordinary run of the engine (so it is locked,
//! journaled, audited and undoable like any other).
//!
//! Safety: it listens on loopback unless `--allow-remote` is given, and every API call and
//! the page itself need the random token printed at start (the page turns `?token=` into an
//! HttpOnly, SameSite=Strict cookie). The page and its assets are compiled into the binary.

mod api;

use crate::cli::Fail;
use crate::output::Printer;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fedsync_core::config::Profile;
use fedsync_core::Home;
use serde_json::{json, Value};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The cookie the page keeps the token in.
const COOKIE: &str = "fedsync_token";
/// How often `/api/events` looks at the audit trail's length.
const POLL: Duration = Duration::from_millis(500);

/// What the handlers share.
pub(crate) struct Ctx {
    pub home: Home,
    /// The profile as loaded at start; re-read from its file on every request when it has one
    /// (so an edited profile is picked up without a restart).
    pub profile: Profile,
    pub token: String,
    /// Set by SIGINT/SIGTERM: runs in progress stop cleanly, the server shuts down.
    pub cancel: Arc<AtomicBool>,
}

type Shared = Arc<Ctx>;

/// `--listen ADDR` -> the address to bind; a non-loopback address needs `--allow-remote`.
pub fn listen_addr(listen: &str, allow_remote: bool) -> Result<SocketAddr, Fail> {
    let usage = |msg: String| Fail { code: 2, msg };
    let addrs: Vec<SocketAddr> = listen
        .to_socket_addrs()
        .map_err(|e| {
            usage(format!(
                "--listen {listen}: {e}; give an address and port such as 127.0.0.1:8384 \
                 (port 0 picks a free one)"
            ))
        })?
        .collect();
    let Some(first) = addrs.first().copied() else {
        return Err(usage(format!(
            "--listen {listen}: the name resolves to no address; give one such as 127.0.0.1:8384"
        )));
    };
    if !allow_remote {
        if let Some(bad) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            return Err(usage(format!(
                "--listen {listen}: {} is not a loopback address. The dashboard can change files \
                 on every replica, so it serves this machine only (127.0.0.1). Use \
                 --listen 127.0.0.1:PORT, or add --allow-remote to serve other machines too \
                 (anyone who can reach it and has the token can then use it; there is no TLS).",
                bad.ip()
            )));
        }
    }
    Ok(first)
}

/// 32 hex characters from the OS's random source (or `FEDSYNC_UI_TOKEN` when set, for a
/// Prometheus scrape config that must know the token in advance).
fn make_token() -> Result<String, Fail> {
    if let Ok(t) = std::env::var("FEDSYNC_UI_TOKEN") {
        if t.len() < 16
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Fail {
                code: 2,
                msg: "FEDSYNC_UI_TOKEN must be at least 16 letters, digits, '-' or '_'; \
                      unset it to get a random token"
                    .into(),
            });
        }
        return Ok(t);
    }
    let bytes: [u8; 16] = rand::random();
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Serve the dashboard until SIGINT/SIGTERM. Prints the address (with the token) first.
pub fn serve(home: &Home, p: &Printer, profile: Profile, addr: SocketAddr) -> Result<i32, Fail> {
    let token = make_token()?;
    let std_listener = std::net::TcpListener::bind(addr).map_err(|e| Fail {
        code: 3,
        msg: format!(
            "cannot listen on {addr}: {e}. Pick another port with --listen 127.0.0.1:PORT \
             (127.0.0.1:0 picks a free one)"
        ),
    })?;
    let bound = std_listener.local_addr().map_err(|e| Fail {
        code: 3,
        msg: format!("cannot read the listening address: {e}"),
    })?;
    std_listener.set_nonblocking(true).map_err(|e| Fail {
        code: 3,
        msg: format!("cannot set up the listener: {e}"),
    })?;
    let cancel = crate::cli::stop_on_signals();
    let url = format!("http://{bound}/?token={token}");
    if p.json {
        println!(
            "{}",
            json!({"profile": profile.name, "listen": bound.to_string(), "url": url, "token": token})
        );
    } else {
        println!("fedsync ui: profile {} at {url}", profile.name);
        if !p.quiet {
            println!(
                "  open that address in a browser (it carries the token); API clients send \
                 `Authorization: Bearer {token}`"
            );
            println!("  Ctrl-C stops the server");
        }
    }
    let ctx = Arc::new(Ctx {
        home: home.clone(),
        profile,
        token,
        cancel: cancel.clone(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Fail {
            code: 3,
            msg: format!("cannot start the server's runtime: {e}"),
        })?;
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let stop = cancel.clone();
        axum::serve(listener, router(ctx))
            .with_graceful_shutdown(async move {
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
            .await
    });
    // Let a run that is still finishing its item end cleanly.
    rt.shutdown_timeout(Duration::from_secs(30));
    result.map_err(|e| Fail {
        code: 3,
        msg: format!("the server stopped: {e}"),
    })?;
    if !p.quiet && !p.json {
        eprintln!("fedsync ui: stopped");
    }
    Ok(0)
}

fn router(ctx: Shared) -> Router {
    let api = Router::new()
        .route("/api/status", get(status))
        .route("/api/conflicts", get(conflicts))
        // `resolve` is the action; a GET of it is the conflict at a path named "resolve".
        .route(
            "/api/conflicts/resolve",
            get(conflict_named_resolve).post(resolve),
        )
        .route("/api/conflicts/{*path}", get(conflict))
        .route("/api/history", get(history))
        .route("/api/rollback", post(rollback))
        .route("/api/versions", get(versions))
        .route("/api/restore", post(restore))
        .route("/api/events", get(events))
        .route("/api/{*rest}", get(api_not_found).post(api_not_found))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(ctx.clone(), require_token));
    Router::new()
        .route("/", get(index))
        .route(
            "/assets/app.js",
            get(|| asset(APP_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/assets/app.css",
            get(|| asset(APP_CSS, "text/css; charset=utf-8")),
        )
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .merge(api)
        .fallback(not_found)
        .layer(middleware::from_fn(security_headers))
        .with_state(ctx)
}

// ---------------------------------------------------------------------------------------
// Authentication

/// Compare without stopping at the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, t) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| t.trim().to_string())
}

fn authorized(ctx: &Ctx, headers: &HeaderMap) -> bool {
    bearer_token(headers).is_some_and(|t| same(&t, &ctx.token))
        || cookie_token(headers).is_some_and(|t| same(&t, &ctx.token))
}

async fn require_token(State(ctx): State<Shared>, req: Request, next: Next) -> Response {
    if authorized(&ctx, req.headers()) {
        return next.run(req).await;
    }
    let given = bearer_token(req.headers()).is_some() || cookie_token(req.headers()).is_some();
    let msg = if given {
        "wrong token: this server was started with another one. Use the token `fedsync ui` \
         printed at start (open the address it printed, or send `Authorization: Bearer TOKEN`)"
    } else {
        "this server needs its token: open the address `fedsync ui` printed at start (it ends \
         in ?token=...), or send `Authorization: Bearer TOKEN`"
    };
    let mut r = api::ApiError::new(StatusCode::UNAUTHORIZED, 2, msg).into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"fedsync\""),
    );
    r
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The page. `?token=T` (the printed address) sets the cookie and redirects to `/`, so the
/// token leaves the address bar and the browser history.
async fn index(
    State(ctx): State<Shared>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(t) = q.token {
        if same(&t, &ctx.token) {
            let cookie = format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict", ctx.token);
            return (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, "/".to_string()),
                    (header::SET_COOKIE, cookie),
                ],
            )
                .into_response();
        }
        return locked_page(
            "The token in this address is not this server's (was `fedsync ui` restarted?).",
        );
    }
    if cookie_token(&headers).is_some_and(|t| same(&t, &ctx.token)) {
        return (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            INDEX_HTML,
        )
            .into_response();
    }
    locked_page("This dashboard needs its token.")
}

fn locked_page(what: &str) -> Response {
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>fedsync: token needed</title>\
         <link rel=\"stylesheet\" href=\"/assets/app.css\"></head><body><main class=\"locked\">\
         <h1>fedsync</h1><p class=\"error\">{what}</p><p>Open the address that \
         <code>fedsync ui NAME</code> printed when it started: it ends in \
         <code>?token=…</code>. If you lost it, stop the server (Ctrl-C) and start it again.</p>\
         </main></body></html>"
    );
    (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn asset(body: &'static str, ctype: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, ctype),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

async fn api_not_found() -> Response {
    api::ApiError::new(
        StatusCode::NOT_FOUND,
        2,
        "no such API endpoint; docs/openapi.yaml in the fedsync repository lists them",
    )
    .into_response()
}

// ---------------------------------------------------------------------------------------
// API handlers: each runs its (blocking) engine call on the blocking pool.

async fn blocking<F>(f: F) -> Response
where
    F: FnOnce() -> Result<Value, api::ApiError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(e) => api::ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            3,
            format!("internal error: {e}"),
        )
        .into_response(),
    }
}

async fn status(State(ctx): State<Shared>) -> Response {
    blocking(move || api::status(&ctx)).await
}

async fn conflicts(State(ctx): State<Shared>) -> Response {
    blocking(move || api::conflicts(&ctx)).await
}

async fn conflict(State(ctx): State<Shared>, UrlPath(path): UrlPath<String>) -> Response {
    blocking(move || api::conflict(&ctx, &path)).await
}

async fn conflict_named_resolve(State(ctx): State<Shared>) -> Response {
    blocking(move || api::conflict(&ctx, "resolve")).await
}

/// The body of a POST, parsed here so that a bad body gets the API's JSON error shape.
fn body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    bytes: &[u8],
) -> Result<T, api::ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/json") {
        return Err(api::ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            2,
            "send the request body as JSON with `Content-Type: application/json`",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        api::ApiError::new(
            StatusCode::BAD_REQUEST,
            2,
            format!("the request body is not what this endpoint takes: {e}"),
        )
    })
}

async fn resolve(
    State(ctx): State<Shared>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    match body::<api::ResolveReq>(&headers, &bytes) {
        Ok(req) => blocking(move || api::resolve(&ctx, req)).await,
        Err(e) => e.into_response(),
    }
}

async fn history(State(ctx): State<Shared>, Query(q): Query<api::HistoryQuery>) -> Response {
    blocking(move || api::history(&ctx, q)).await
}

async fn rollback(
    State(ctx): State<Shared>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    match body::<api::RollbackReq>(&headers, &bytes) {
        Ok(req) => blocking(move || api::rollback(&ctx, req)).await,
        Err(e) => e.into_response(),
    }
}

async fn versions(State(ctx): State<Shared>, Query(q): Query<api::VersionsQuery>) -> Response {
    blocking(move || api::versions(&ctx, q)).await
}

async fn restore(
    State(ctx): State<Shared>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    match body::<api::RestoreReq>(&headers, &bytes) {
        Ok(req) => blocking(move || api::restore(&ctx, req)).await,
        Err(e) => e.into_response(),
    }
}

async fn metrics(State(ctx): State<Shared>) -> Response {
    match tokio::task::spawn_blocking(move || api::metrics(&ctx)).await {
        Ok(Ok(text)) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(e) => api::ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            3,
            format!("internal error: {e}"),
        )
        .into_response(),
    }
}

/// Length of the audit trail (0 when there is none yet).
fn audit_len(ctx: &Ctx) -> u64 {
    std::fs::metadata(ctx.home.audit_path(&ctx.profile.name))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Server-sent events: `hello` at once, then `audit` whenever the audit trail's length
/// changes (a run of this profile, by this server, the command line or `fedsync watch`,
/// wrote to it). Ends when the server stops.
async fn events(State(ctx): State<Shared>) -> impl IntoResponse {
    let start = audit_len(&ctx);
    let first = Event::default()
        .event("hello")
        .data(json!({"profile": ctx.profile.name, "audit_len": start}).to_string());
    let stream = futures_util::stream::unfold(
        (ctx, start, Some(first)),
        |(ctx, mut last, first)| async move {
            if let Some(ev) = first {
                return Some((Ok::<Event, std::convert::Infallible>(ev), (ctx, last, None)));
            }
            loop {
                if ctx.cancel.load(Ordering::Relaxed) {
                    return None;
                }
                tokio::time::sleep(POLL).await;
                let now = audit_len(&ctx);
                if now != last {
                    let grew = now > last;
                    last = now;
                    let ev = Event::default()
                        .event("audit")
                        .data(json!({"audit_len": now, "grew": grew}).to_string());
                    return Some((Ok(ev), (ctx, last, None)));
                }
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
