//! Deterministic crash points for the crash-safety tests.
//!
//! With `FEDSYNC_CRASH_AT=N` the process sends itself SIGKILL at the N-th crash point it
//! reaches: no destructors, no buffered writes flushed — exactly `kill -9` at a known place.
//! With `FEDSYNC_CRASH_COUNT` set, the binary prints how many points a run passed, so a test
//! can spread its kills over the whole run. Without either variable a point costs one
//! relaxed atomic load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static COUNT: AtomicU64 = AtomicU64::new(0);
static LIMIT: OnceLock<u64> = OnceLock::new();

fn limit() -> u64 {
    *LIMIT.get_or_init(|| {
        std::env::var("FEDSYNC_CRASH_AT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    })
}

/// A place where a crash must leave everything recoverable.
pub fn point(what: &str) {
    let n = COUNT.fetch_add(1, Ordering::Relaxed) + 1;
    if n == limit() {
        eprintln!("fedsync: crash point {n} ({what}): killing myself");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::Kill);
    }
}

/// Whether crash points are counted for a test (`FEDSYNC_CRASH_AT` or
/// `FEDSYNC_CRASH_COUNT`): the engine then does in order what it otherwise does in parallel
/// where crash points are passed, so that the N-th point falls on the same step every run.
pub fn armed() -> bool {
    static ARMED: OnceLock<bool> = OnceLock::new();
    *ARMED.get_or_init(|| limit() != 0 || std::env::var_os("FEDSYNC_CRASH_COUNT").is_some())
}

/// How many crash points this process passed.
pub fn reached() -> u64 {
    COUNT.load(Ordering::Relaxed)
}

/// Injected failures for tests of `--atomic` and error reporting: with
/// `FEDSYNC_FAIL_PATHS=p1,p2`, replacing, creating or removing one of these paths on a local
/// replica fails with a permission error, as a read-only directory would.
pub fn fail(path: &str) -> Option<std::io::Error> {
    static PATHS: OnceLock<Vec<String>> = OnceLock::new();
    let paths = PATHS.get_or_init(|| {
        std::env::var("FEDSYNC_FAIL_PATHS")
            .map(|v| v.split(',').map(str::to_string).collect())
            .unwrap_or_default()
    });
    paths.iter().any(|p| p == path).then(|| {
        std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "injected failure (FEDSYNC_FAIL_PATHS)",
        )
    })
}
