//! Validators (SPEC section 4, issue 3): good and bad files of each kind, errors with their
//! line, and SQLite snapshots of databases being written.

use fedsync_core::config::Validator;
use fedsync_core::validate::{
    sqlite_snapshot, validate, validate_bytes, validate_jsonl_reader, ValidationError,
};
use rusqlite::Connection;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn msg(kind: Validator, data: &[u8]) -> String {
    match validate_bytes(kind, data) {
        Ok(()) => panic!(
            "{kind} {:?} should be invalid",
            String::from_utf8_lossy(data)
        ),
        Err(e) => {
            assert!(e.invalid().is_some(), "content error expected, got {e}");
            e.to_string()
        }
    }
}

fn ok(kind: Validator, data: &[u8]) {
    if let Err(e) = validate_bytes(kind, data) {
        panic!(
            "{kind} {:?} should be valid: {e}",
            String::from_utf8_lossy(data)
        );
    }
}

#[test]
fn json() {
    ok(
        Validator::Json,
        br#"{"a": [1, 2, {"b": null}], "c": "\u00e9"}"#,
    );
    ok(Validator::Json, b"\xEF\xBB\xBF{\"bom\": true}\n");
    ok(Validator::Json, b"  42  \n");
    let m = msg(Validator::Json, b"{\n  \"a\": 1,\n  \"b\" 2\n}\n");
    assert_eq!(m, "invalid JSON at line 3, column 7: expected `:`");
    let m = msg(Validator::Json, b"[1, 2,]");
    assert!(
        m == "invalid JSON at line 1, column 7: expected value",
        "{m}"
    );
    let m = msg(Validator::Json, b"{} {}");
    assert!(
        m.contains("line 1") && m.contains("trailing characters"),
        "{m}"
    );
    let m = msg(Validator::Json, b"");
    assert!(m.contains("line 1") && m.contains("EOF"), "{m}");
    let m = msg(Validator::Json, b"{\"truncated\": [1, 2");
    assert!(m.contains("line 1") && m.contains("EOF"), "{m}");
    let m = msg(Validator::Json, b"[\n\"ok\",\n\"\xff\"]");
    assert_eq!(
        m,
        "invalid JSON at line 3, column 2: invalid UTF-8 (byte offset 9)"
    );
}

#[test]
fn jsonl() {
    ok(Validator::Jsonl, b"{\"a\":1}\n{\"b\":2}\n");
    ok(Validator::Jsonl, b"{\"a\":1}\r\n\r\n  \n[1]\r\n\"s\"");
    ok(Validator::Jsonl, b"");
    let m = msg(
        Validator::Jsonl,
        b"{\"a\":1}\n{\"b\":2}\n{\"c\" 3}\n{\"d\":4}\n",
    );
    assert_eq!(m, "invalid JSON Lines at line 3, column 6: expected `:`");
    // A half-written last record (a writer mid-append) is invalid.
    let m = msg(Validator::Jsonl, b"{\"a\":1}\n{\"b\":");
    assert!(m.starts_with("invalid JSON Lines at line 2"), "{m}");
    // Two values on one line.
    let m = msg(Validator::Jsonl, b"1\n2 3\n");
    assert!(m.starts_with("invalid JSON Lines at line 2"), "{m}");
    let m = msg(Validator::Jsonl, b"1\n\"\xc3\x28\"\n");
    assert_eq!(m, "invalid JSON Lines at line 2, column 2: invalid UTF-8");
    // A tail checked on its own reports lines of the whole file.
    let e = validate_jsonl_reader(&b"{}\n{oops}\n"[..], 101).unwrap_err();
    assert_eq!(e.line(), Some(102));
}

#[test]
fn toml() {
    ok(
        Validator::Toml,
        b"[a]\nb = 1\nc = \"x\"\n[[d]]\ne = [1, 2]\n",
    );
    ok(Validator::Toml, b"");
    let m = msg(Validator::Toml, b"[a]\nb = 1\nc = = 2\n");
    assert!(m.starts_with("invalid TOML at line 3, column 5: "), "{m}");
    let m = msg(Validator::Toml, b"a = 1\na = 2\n");
    assert!(
        m.starts_with("invalid TOML at line 2") && m.contains("duplicate key"),
        "{m}"
    );
    let m = msg(Validator::Toml, b"x = \"unterminated\n");
    assert!(m.starts_with("invalid TOML at line 1"), "{m}");
}

#[test]
fn yaml() {
    ok(Validator::Yaml, b"a: 1\nb:\n  - x\n  - y: [1, 2]\n");
    ok(Validator::Yaml, b"---\na: 1\n---\nb: 2\n");
    ok(Validator::Yaml, b"");
    let m = msg(Validator::Yaml, b"a: 1\nb: [1, 2\nc: 3\n");
    assert!(m.starts_with("invalid YAML at line "), "{m}");
    let m = msg(Validator::Yaml, b"key: value\n  bad: indent\n");
    assert!(m.starts_with("invalid YAML at line 2, column 6: "), "{m}");
    let m = msg(Validator::Yaml, b"a: 'unterminated\n");
    assert!(m.starts_with("invalid YAML at line"), "{m}");
    let m = msg(Validator::Yaml, b"ok: 1\n\tbad: tab\n");
    assert!(
        m.starts_with("invalid YAML at line 1") && m.contains("tab"),
        "{m}"
    );
}

#[test]
fn files_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.json");
    std::fs::write(&p, b"{\n\"a\": }\n").unwrap();
    let e = validate(Validator::Json, &p).unwrap_err();
    assert_eq!(e.line(), Some(2));
    std::fs::write(&p, b"{\"a\": 1}").unwrap();
    validate(Validator::Json, &p).unwrap();
    let jl = dir.path().join("l.jsonl");
    std::fs::write(&jl, b"{}\n{}\n{]\n").unwrap();
    assert_eq!(validate(Validator::Jsonl, &jl).unwrap_err().line(), Some(3));
    // A missing file is an I/O problem, not invalid content.
    let e = validate(Validator::Toml, &dir.path().join("missing.toml")).unwrap_err();
    assert!(matches!(e, ValidationError::Io { .. }), "{e}");
    let e = validate(Validator::Jsonl, &dir.path().join("missing.jsonl")).unwrap_err();
    assert!(
        matches!(&e, ValidationError::Io { path, .. } if path.ends_with("missing.jsonl")),
        "{e}"
    );
}

// ------------------------------------------------------------------------------ sqlite

fn make_db(path: &Path, wal: bool, rows: i64) {
    let c = Connection::open(path).unwrap();
    if wal {
        let mode: String = c
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT NOT NULL);
         CREATE INDEX IF NOT EXISTS t_v ON t(v);
         CREATE TABLE IF NOT EXISTS meta (n INTEGER NOT NULL);
         INSERT INTO meta SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM meta);",
    )
    .unwrap();
    let tx = c.unchecked_transaction().unwrap();
    for i in 0..rows {
        tx.execute(
            "INSERT INTO t (v) VALUES (?1)",
            [format!("row {i} {}", "x".repeat(40))],
        )
        .unwrap();
    }
    tx.execute("UPDATE meta SET n = n + ?1", [rows]).unwrap();
    tx.commit().unwrap();
}

#[test]
fn sqlite_good_and_bad() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("good.db");
    make_db(&db, false, 500);
    validate(Validator::Sqlite, &db).unwrap();
    ok(Validator::Sqlite, &std::fs::read(&db).unwrap());

    let wal = dir.path().join("wal.db");
    make_db(&wal, true, 200);
    validate(Validator::Sqlite, &wal).unwrap();

    let text = dir.path().join("text.db");
    std::fs::write(&text, b"this is not a database, just some text that is long enough to pass 100 bytes ............................").unwrap();
    let m = validate(Validator::Sqlite, &text).unwrap_err().to_string();
    assert_eq!(
        m,
        "invalid SQLite database: not an SQLite database (no SQLite header)"
    );

    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let m = validate(Validator::Sqlite, &empty).unwrap_err().to_string();
    assert!(m.contains("empty file"), "{m}");
    assert!(msg(Validator::Sqlite, b"SQLite format 3\0").contains("no SQLite header"));

    // Corrupt the middle pages of a real database: integrity_check (or opening it) fails.
    let bad = dir.path().join("bad.db");
    let mut bytes = std::fs::read(&db).unwrap();
    assert!(bytes.len() > 4 * 4096, "db too small: {}", bytes.len());
    for b in &mut bytes[4096 + 8..3 * 4096] {
        *b = 0x5a;
    }
    std::fs::write(&bad, &bytes).unwrap();
    let e = validate(Validator::Sqlite, &bad).unwrap_err();
    assert!(e.invalid().is_some(), "{e}");

    // A truncated copy (torn transfer) is caught too.
    let torn = dir.path().join("torn.db");
    std::fs::write(&torn, &std::fs::read(&db).unwrap()[..2 * 4096]).unwrap();
    let e = validate(Validator::Sqlite, &torn).unwrap_err();
    assert!(e.invalid().is_some(), "{e}");
}

#[test]
fn snapshot_refuses_a_non_empty_destination_and_non_databases() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    make_db(&db, false, 10);
    let dst = dir.path().join("dst.db");
    std::fs::write(&dst, b"keep me").unwrap();
    let e = sqlite_snapshot(&db, &dst).unwrap_err();
    assert!(
        matches!(&e, ValidationError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists),
        "{e}"
    );
    assert_eq!(std::fs::read(&dst).unwrap(), b"keep me");

    let notdb = dir.path().join("n.db");
    std::fs::write(&notdb, vec![b'x'; 4096]).unwrap();
    let e = sqlite_snapshot(&notdb, &dir.path().join("out.db")).unwrap_err();
    assert!(e.invalid().is_some(), "{e}");

    // An existing empty destination (a fresh temp file) is fine.
    let empty = dir.path().join("fresh.db");
    std::fs::write(&empty, b"").unwrap();
    let snap = sqlite_snapshot(&db, &empty).unwrap();
    assert_eq!(snap.len, std::fs::metadata(&empty).unwrap().len());
    assert_eq!(
        snap.hash,
        fedsync_core::entry::Hash::of(&std::fs::read(&empty).unwrap())
    );
}

/// Rows in the snapshot, checked against the invariant every committed state keeps.
fn committed_rows(path: &Path) -> i64 {
    let c = Connection::open(path).unwrap();
    let count: i64 = c
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    let n: i64 = c.query_row("SELECT n FROM meta", [], |r| r.get(0)).unwrap();
    assert_eq!(count, n, "snapshot is not a committed state");
    count
}

/// A writer thread inserts rows in transactions of `BATCH` while snapshots are taken; every
/// snapshot passes integrity_check and holds a committed state (a multiple of `BATCH`
/// rows, equal to the counter kept in the same transactions).
fn snapshot_while_writing(wal: bool) {
    const BATCH: i64 = 23;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("live.db");
    make_db(&db, wal, BATCH);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut c = Connection::open(&db).unwrap();
            c.busy_timeout(Duration::from_secs(20)).unwrap();
            // Durability is not under test; keep the writer's pace independent of fsync.
            c.execute_batch("PRAGMA synchronous=OFF").unwrap();
            let mut commits = 0u64;
            let mut i = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let tx = c.transaction().unwrap();
                for _ in 0..BATCH {
                    i += 1;
                    tx.execute(
                        "INSERT INTO t (v) VALUES (?1)",
                        [format!("w{i} {}", "y".repeat(40))],
                    )
                    .unwrap();
                }
                tx.execute("UPDATE meta SET n = n + ?1", [BATCH]).unwrap();
                tx.commit().unwrap();
                commits += 1;
                // Paced (~500 commits/s) so the database stays small and the test fast,
                // while snapshots still overlap many commits.
                std::thread::sleep(Duration::from_millis(2));
            }
            commits
        })
    };
    let mut seen = Vec::new();
    for k in 0..12 {
        if k % 4 == 0 {
            // The live source itself checks out too.
            validate(Validator::Sqlite, &db).unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
        let dst = dir.path().join(format!("snap{k}.db"));
        let snap = sqlite_snapshot(&db, &dst).unwrap();
        // Self-contained: nothing beside the copy.
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut side = dst.clone().into_os_string();
            side.push(suffix);
            assert!(
                !Path::new(&side).exists(),
                "{suffix} left beside the snapshot"
            );
        }
        assert_eq!(snap.len, std::fs::metadata(&dst).unwrap().len());
        validate(Validator::Sqlite, &dst).unwrap();
        let rows = committed_rows(&dst);
        assert_eq!(rows % BATCH, 0, "torn transaction in snapshot {k}");
        seen.push(rows);
        // The snapshot keeps the source's journal mode.
        let c = Connection::open(&dst).unwrap();
        let mode: String = c
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, if wal { "wal" } else { "delete" });
    }
    stop.store(true, Ordering::Relaxed);
    let commits = writer.join().unwrap();
    assert!(commits > 0, "the writer never committed");
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "snapshots went back in time: {seen:?}"
    );
    assert!(
        seen.last() > seen.first(),
        "writer made no progress across snapshots: {seen:?}"
    );
    let final_rows = committed_rows(&db);
    assert!(*seen.last().unwrap() <= final_rows);
}

#[test]
fn snapshot_of_a_wal_database_being_written() {
    snapshot_while_writing(true);
}

#[test]
fn snapshot_of_a_rollback_journal_database_being_written() {
    snapshot_while_writing(false);
}

/// Checking or snapshotting a closed WAL database leaves nothing beside it (no -wal/-shm
/// for the scanner to pick up) and does not change its bytes.
#[test]
fn checks_leave_nothing_beside_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal.db");
    make_db(&wal, true, 20);
    let list = || {
        let mut v: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(list(), ["wal.db"]);
    let before = std::fs::read(&wal).unwrap();
    validate(Validator::Sqlite, &wal).unwrap();
    assert_eq!(list(), ["wal.db"]);
    sqlite_snapshot(&wal, &dir.path().join("s.db")).unwrap();
    assert_eq!(list(), ["s.db", "wal.db"]);
    assert!(
        std::fs::read(&wal).unwrap() == before,
        "source bytes changed"
    );
}
