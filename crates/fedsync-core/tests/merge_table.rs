//! Table tests for the content merges (SPEC section 4, issue 3): append, union, text, each
//! with its edge cases (empty base, both append the same bytes, truncated log, CRLF, no
//! trailing newline, huge lines, non-UTF-8).

use fedsync_core::merge::{
    self, append, append_plan, hash_prefix, text, union, AppendPlan, Content, FileProbe,
    MergeOutcome, Piece, Side, SliceProbe, MAX_MERGE_BYTES,
};

#[derive(Debug)]
enum Want {
    Clean(Vec<u8>),
    Conflicted(Vec<u8>),
    /// target side, tail offset
    FastForward(Side, u64),
    /// substring of the reason
    Fallback(&'static str),
}

struct Case {
    name: &'static str,
    base: Vec<u8>,
    a: Vec<u8>,
    b: Vec<u8>,
    want: Want,
}

fn case(name: &'static str, base: &[u8], a: &[u8], b: &[u8], want: Want) -> Case {
    Case {
        name,
        base: base.to_vec(),
        a: a.to_vec(),
        b: b.to_vec(),
        want,
    }
}

fn clean(x: &[u8]) -> Want {
    Want::Clean(x.to_vec())
}

fn conflicted(x: &[u8]) -> Want {
    Want::Conflicted(x.to_vec())
}

fn show(x: &[u8]) -> String {
    if x.len() > 200 {
        format!("<{} bytes>", x.len())
    } else {
        format!("{:?}", String::from_utf8_lossy(x))
    }
}

fn check(c: &Case, got: &MergeOutcome) -> Result<(), String> {
    let ok = match (&c.want, got) {
        (Want::Clean(w), MergeOutcome::Clean(g)) => w == g,
        (Want::Conflicted(w), MergeOutcome::Conflicted(g)) => w == g,
        (Want::FastForward(s, t), MergeOutcome::FastForward { target, tail_from }) => {
            s == target && t == tail_from
        }
        (Want::Fallback(w), MergeOutcome::Fallback(r)) => r.contains(w),
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let got_s = match got {
        MergeOutcome::Clean(g) => format!("Clean({})", show(g)),
        MergeOutcome::Conflicted(g) => format!("Conflicted({})", show(g)),
        other => format!("{other:?}"),
    };
    let want_s = match &c.want {
        Want::Clean(w) => format!("Clean({})", show(w)),
        Want::Conflicted(w) => format!("Conflicted({})", show(w)),
        other => format!("{other:?}"),
    };
    Err(format!("case {}: want {want_s}, got {got_s}", c.name))
}

fn run(cases: &[Case], f: impl Fn(&Case) -> MergeOutcome) {
    let mut names = std::collections::HashSet::new();
    let failures: Vec<String> = cases
        .iter()
        .inspect(|c| assert!(names.insert(c.name), "duplicate case name {}", c.name))
        .filter_map(|c| check(c, &f(c)).err())
        .collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

fn big_line(fill: u8, n: usize) -> Vec<u8> {
    let mut v = vec![fill; n];
    v.push(b'\n');
    v
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

// ------------------------------------------------------------------------------ append

fn append_cases() -> Vec<Case> {
    use Side::{A, B};
    let mb_a = big_line(b'a', 1 << 20);
    let mb_b = big_line(b'b', 1 << 20);
    vec![
        case(
            "only A appended",
            b"l1\n",
            b"l1\nl2\n",
            b"l1\n",
            Want::FastForward(B, 3),
        ),
        case(
            "only B appended",
            b"l1\n",
            b"l1\n",
            b"l1\nl2\nl3\n",
            Want::FastForward(A, 3),
        ),
        case("nothing changed", b"l1\n", b"l1\n", b"l1\n", clean(b"l1\n")),
        case(
            "both append the same bytes",
            b"l1\n",
            b"l1\nx\n",
            b"l1\nx\n",
            clean(b"l1\nx\n"),
        ),
        case(
            "both append different lines: A then B",
            b"l1\n",
            b"l1\na1\na2\n",
            b"l1\nb1\n",
            clean(b"l1\na1\na2\nb1\n"),
        ),
        case(
            "empty base, both append",
            b"",
            b"a\n",
            b"b\n",
            clean(b"a\nb\n"),
        ),
        case(
            "empty base, only B",
            b"",
            b"",
            b"b",
            Want::FastForward(A, 0),
        ),
        case("empty everything", b"", b"", b"", clean(b"")),
        case(
            "A's tail is a prefix of B's: the longer wins",
            b"l1\n",
            b"l1\nx\n",
            b"l1\nx\ny\n",
            Want::FastForward(A, 5),
        ),
        case(
            "B's tail is a prefix of A's (partial line)",
            b"l1\n",
            b"l1\nxyz\n",
            b"l1\nx",
            Want::FastForward(B, 4),
        ),
        case(
            "truncated log on A",
            b"l1\nl2\n",
            b"l1\n",
            b"l1\nl2\nl3\n",
            Want::Fallback("shorter than the base"),
        ),
        case(
            "log rotated to empty on B",
            b"l1\n",
            b"l1\nl2\n",
            b"",
            Want::Fallback("B is shorter"),
        ),
        case(
            "rewritten, same length",
            b"l1\n",
            b"L1\n",
            b"l1\nx\n",
            Want::Fallback("rewritten"),
        ),
        case(
            "rewritten and longer",
            b"l1\nl2\n",
            b"l1\nl2\nx\n",
            b"l1\nL2\ny\n",
            Want::Fallback("B's first 6 bytes differ"),
        ),
        case(
            "LF converted to CRLF",
            b"a\nb\n",
            b"a\r\nb\r\n",
            b"a\nb\nc\n",
            Want::Fallback("rewritten"),
        ),
        case(
            "CRLF log, both append",
            b"l1\r\n",
            b"l1\r\na\r\n",
            b"l1\r\nb\r\n",
            clean(b"l1\r\na\r\nb\r\n"),
        ),
        case(
            "A's tail has no final newline: LF inserted",
            b"l1\n",
            b"l1\na",
            b"l1\nb\n",
            clean(b"l1\na\nb\n"),
        ),
        case(
            "A's tail has no final newline, CRLF file: CRLF inserted",
            b"l1\r\n",
            b"l1\r\na",
            b"l1\r\nb\r\n",
            clean(b"l1\r\na\r\nb\r\n"),
        ),
        case(
            "neither tail has a final newline",
            b"l1\n",
            b"l1\na",
            b"l1\nb",
            clean(b"l1\na\nb"),
        ),
        case(
            "empty base, A unterminated, CRLF style taken from A",
            b"",
            b"a\r\nb",
            b"c\r\n",
            clean(b"a\r\nb\r\nc\r\n"),
        ),
        case(
            "base ends mid-line, both continue the line",
            b"l1\npart",
            b"l1\npartA\n",
            b"l1\npartB\n",
            Want::Fallback("ends mid-line"),
        ),
        case(
            "base ends mid-line, both terminate it first",
            b"l1\npart",
            b"l1\npart\na\n",
            b"l1\npart\nb\n",
            clean(b"l1\npart\na\nb\n"),
        ),
        case(
            "base ends mid-line, CRLF terminations",
            b"l1\r\npart",
            b"l1\r\npart\r\na",
            b"l1\r\npart\r\nb\r\n",
            clean(b"l1\r\npart\r\na\r\nb\r\n"),
        ),
        case(
            "base ends mid-line, only A continues",
            b"x",
            b"xyz\n",
            b"x",
            Want::FastForward(B, 1),
        ),
        case(
            "non-UTF-8 and NUL bytes pass through",
            b"\xff\xfe\x00\n",
            b"\xff\xfe\x00\n\x80\x81\n",
            b"\xff\xfe\x00\n\x00\xc3\n",
            clean(b"\xff\xfe\x00\n\x80\x81\n\x00\xc3\n"),
        ),
        Case {
            name: "huge lines (1 MiB each side)",
            base: b"head\n".to_vec(),
            a: cat(&[b"head\n", &mb_a]),
            b: cat(&[b"head\n", &mb_b]),
            want: Want::Clean(cat(&[b"head\n", &mb_a, &mb_b])),
        },
        Case {
            name: "huge base line, B appends",
            base: mb_a.clone(),
            a: mb_a.clone(),
            b: cat(&[&mb_a, b"x\n"]),
            want: Want::FastForward(A, mb_a.len() as u64),
        },
    ]
}

#[test]
fn append_table() {
    run(&append_cases(), |c| append(&c.base, &c.a, &c.b));
}

/// Apply an append plan's recipe to one side, in memory.
fn apply_recipe(plan: &AppendPlan, side: Side, a: &[u8], b: &[u8]) -> Vec<u8> {
    let (own, other) = match side {
        Side::A => (a, b),
        Side::B => (b, a),
    };
    let Some(pieces) = plan.recipe(side) else {
        return own.to_vec();
    };
    let mut out = Vec::new();
    for p in pieces {
        match p {
            Piece::Own(r) => out.extend_from_slice(&own[r.start as usize..r.end as usize]),
            Piece::Other(r) => out.extend_from_slice(&other[r.start as usize..r.end as usize]),
            Piece::Bytes(x) => out.extend_from_slice(x),
        }
    }
    out
}

/// The streaming plan agrees with the in-memory merge on every case, and its recipes bring
/// both sides to the same merged content.
#[test]
fn append_plan_recipes_match_the_merge() {
    for c in append_cases() {
        let plan = append_plan(
            Content::of(&c.base),
            Content::of(&c.a),
            Content::of(&c.b),
            &mut SliceProbe { a: &c.a, b: &c.b },
        )
        .unwrap();
        let out = append(&c.base, &c.a, &c.b);
        let Some(want) = out.content(&c.a, &c.b) else {
            assert!(matches!(plan, AppendPlan::Fallback(_)), "case {}", c.name);
            assert_eq!(plan.recipe(Side::A), None);
            continue;
        };
        for side in [Side::A, Side::B] {
            assert!(
                apply_recipe(&plan, side, &c.a, &c.b) == want,
                "case {}: side {side:?} recipe",
                c.name
            );
        }
        // A side updated in place starts with its own whole file.
        if let AppendPlan::FastForward { target, .. } = plan {
            let own_len = if target == Side::A {
                c.a.len()
            } else {
                c.b.len()
            } as u64;
            assert_eq!(plan.recipe(target).unwrap()[0], Piece::Own(0..own_len));
            assert_eq!(plan.recipe(target.other()), None);
        }
    }
}

/// A big log with a small append is planned from hashes of files on disk, and the plan
/// transfers only the appended bytes.
#[test]
fn append_plan_on_files_transfers_only_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let base: Vec<u8> = b"0123456789abcde\n".repeat(256 << 10); // 4 MiB
    let tail = vec![b'z'; 100_000];
    let (pa, pb) = (dir.path().join("a.log"), dir.path().join("b.log"));
    std::fs::write(&pa, &base).unwrap();
    std::fs::write(&pb, cat(&[&base, &tail])).unwrap();
    let b_content = Content::of(&cat(&[&base, &tail]));
    let plan = append_plan(
        Content::of(&base),
        Content::of(&base),
        b_content,
        &mut FileProbe {
            a: pa.clone(),
            b: pb.clone(),
        },
    )
    .unwrap();
    assert_eq!(
        plan,
        AppendPlan::FastForward {
            target: Side::A,
            tail_from: base.len() as u64,
            tail_len: tail.len() as u64
        }
    );
    assert_eq!(plan.transfer_bytes(), tail.len() as u64);

    // Both appended: A's and B's tails cross, nothing else.
    std::fs::write(&pa, cat(&[&base, b"from a\n"])).unwrap();
    let plan = append_plan(
        Content::of(&base),
        Content::of(&cat(&[&base, b"from a\n"])),
        b_content,
        &mut FileProbe {
            a: pa.clone(),
            b: pb.clone(),
        },
    )
    .unwrap();
    let AppendPlan::Concat(c) = &plan else {
        panic!("{plan:?}")
    };
    assert_eq!(c.sep, b"", "A's tail ends with a newline: no separator");
    assert_eq!(plan.transfer_bytes(), 7 + tail.len() as u64);

    // A rewritten first byte is caught by the prefix hash.
    let mut rewritten = base.clone();
    rewritten[0] = b'X';
    rewritten.extend_from_slice(b"more\n");
    std::fs::write(&pa, &rewritten).unwrap();
    let plan = append_plan(
        Content::of(&base),
        Content::of(&rewritten),
        b_content,
        &mut FileProbe { a: pa, b: pb },
    )
    .unwrap();
    assert!(
        matches!(plan, AppendPlan::Fallback(ref r) if r.contains("rewritten")),
        "{plan:?}"
    );
}

#[test]
fn hash_prefix_streams_and_checks_length() {
    let data = b"hello world".to_vec();
    assert_eq!(
        hash_prefix(&data[..], 5).unwrap(),
        Content::of(b"hello").hash
    );
    assert_eq!(hash_prefix(&data[..], 0).unwrap(), Content::of(b"").hash);
    let e = hash_prefix(&data[..], 12).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
}

// ------------------------------------------------------------------------------- union

fn union_cases() -> Vec<Case> {
    let mb_a = big_line(b'a', 1 << 20);
    let mb_b = big_line(b'b', 1 << 20);
    vec![
        case(
            "both add distinct lines at the end",
            b"a\nb\n",
            b"a\nb\nx\n",
            b"a\nb\ny\n",
            clean(b"a\nb\nx\ny\n"),
        ),
        case(
            "both add the same line",
            b"a\nb\n",
            b"a\nb\nx\n",
            b"a\nx\nb\n",
            clean(b"a\nb\nx\n"),
        ),
        case(
            "insertions stay where they were made",
            b"a\nb\nc\n",
            b"a\nx\nb\nc\n",
            b"a\nb\ny\nc\n",
            clean(b"a\nx\nb\ny\nc\n"),
        ),
        case(
            "same anchor: A's run before B's run",
            b"a\nz\n",
            b"a\nx1\nx2\nz\n",
            b"a\ny1\nz\n",
            clean(b"a\nx1\nx2\ny1\nz\n"),
        ),
        case(
            "additions before every kept line",
            b"m\n",
            b"x\nm\n",
            b"m\ny\n",
            clean(b"x\nm\ny\n"),
        ),
        case(
            "a line deleted by one side stays deleted",
            b"a\nb\nc\n",
            b"a\nc\n",
            b"a\nb\nc\nd\n",
            clean(b"a\nc\nd\n"),
        ),
        case(
            "deleted by both",
            b"a\nb\n",
            b"a\n",
            b"a\nc\n",
            clean(b"a\nc\n"),
        ),
        case(
            "base order wins over a reorder",
            b"a\nb\n",
            b"b\na\n",
            b"a\nb\nc\n",
            clean(b"a\nb\nc\n"),
        ),
        case(
            "duplicates dropped (within and across sides)",
            b"a\n",
            b"a\nx\nx\n",
            b"a\ny\nx\ny\n",
            clean(b"a\nx\ny\n"),
        ),
        case(
            "duplicates already in the base",
            b"a\na\nb\n",
            b"a\na\nb\nc\n",
            b"a\nb\na\n",
            clean(b"a\nb\nc\n"),
        ),
        case("empty base", b"", b"x\ny\n", b"y\nz\n", clean(b"x\ny\nz\n")),
        case("all empty", b"", b"", b"", clean(b"")),
        case("everything deleted", b"a\nb\n", b"", b"a\n", clean(b"")),
        case(
            "CRLF kept",
            b"a\r\n",
            b"a\r\nx\r\n",
            b"a\r\ny\r\n",
            clean(b"a\r\nx\r\ny\r\n"),
        ),
        case(
            "CRLF and LF variants are the same line; first occurrence's ending kept",
            b"a\n",
            b"a\nx\r\n",
            b"a\r\nx\n",
            clean(b"a\nx\r\n"),
        ),
        case(
            "mixed endings per line preserved",
            b"a\r\nb\n",
            b"a\r\nb\nx\r\n",
            b"a\r\nb\ny\n",
            clean(b"a\r\nb\nx\r\ny\n"),
        ),
        case(
            "no trailing newline: inner line terminated, last stays open",
            b"a\nb",
            b"a\nb\nc",
            b"a\nb\nd",
            clean(b"a\nb\nc\nd"),
        ),
        case(
            "no trailing newline in a CRLF file",
            b"a\r\nb",
            b"a\r\nb\r\nc",
            b"a\r\nb",
            clean(b"a\r\nb\r\nc"),
        ),
        case(
            "non-UTF-8 lines are fine",
            b"\xe9t\xe9\n",
            b"\xe9t\xe9\n\xff\n",
            b"\xe9t\xe9\n\xfe\n",
            clean(b"\xe9t\xe9\n\xff\n\xfe\n"),
        ),
        case(
            "binary (NUL) falls back",
            b"a\n",
            b"a\n\x00\n",
            b"a\nb\n",
            Want::Fallback("binary data"),
        ),
        Case {
            name: "huge lines",
            base: b"k\n".to_vec(),
            a: cat(&[b"k\n", &mb_a]),
            b: cat(&[&mb_b, b"k\n", &mb_a]),
            want: Want::Clean(cat(&[&mb_b, b"k\n", &mb_a])),
        },
        Case {
            name: "over the size cap",
            base: Vec::new(),
            a: vec![0; MAX_MERGE_BYTES + 1], // zeroed: cheap to allocate
            b: Vec::new(),
            want: Want::Fallback("too large"),
        },
    ]
}

#[test]
fn union_table() {
    run(&union_cases(), |c| union(&c.base, &c.a, &c.b));
}

// -------------------------------------------------------------------------------- text

fn text_cases() -> Vec<Case> {
    let mb = big_line(b'q', 1 << 20);
    let mb2 = big_line(b'r', 1 << 20);
    vec![
        case(
            "non-overlapping edits merge cleanly",
            b"a\nb\nc\nd\ne\n",
            b"a\nB\nc\nd\ne\n",
            b"a\nb\nc\nD\ne\n",
            clean(b"a\nB\nc\nD\ne\n"),
        ),
        case("identical edits", b"a\nb\nc\n", b"a\nX\nc\n", b"a\nX\nc\n", clean(b"a\nX\nc\n")),
        case("only A changed", b"a\nb\n", b"a\nb\nc\n", b"a\nb\n", clean(b"a\nb\nc\n")),
        case("only B changed", b"a\nb\n", b"a\nb\n", b"b\n", clean(b"b\n")),
        case(
            "insert at start and at end",
            b"m1\nm2\n",
            b"top\nm1\nm2\n",
            b"m1\nm2\nbottom\n",
            clean(b"top\nm1\nm2\nbottom\n"),
        ),
        case(
            "deletion vs edit elsewhere",
            b"a\nb\nc\nd\n",
            b"a\nc\nd\n",
            b"a\nb\nc\nD\n",
            clean(b"a\nc\nD\n"),
        ),
        case(
            "overlapping edits conflict, markers name the replicas",
            b"a\nb\nc\n",
            b"a\nX\nc\n",
            b"a\nY\nc\n",
            conflicted(b"a\n<<<<<<< laptop\nX\n||||||| base\nb\n=======\nY\n>>>>>>> server\nc\n"),
        ),
        case(
            "edit vs delete of the same line conflicts",
            b"a\nb\nc\n",
            b"a\nX\nc\n",
            b"a\nc\n",
            conflicted(b"a\n<<<<<<< laptop\nX\n||||||| base\nb\n=======\n>>>>>>> server\nc\n"),
        ),
        case(
            "adjacent edits conflict (diff3 semantics)",
            b"a\nb\n",
            b"a\nX\n",
            b"Y\nb\n",
            conflicted(b"<<<<<<< laptop\na\nX\n||||||| base\na\nb\n=======\nY\nb\n>>>>>>> server\n"),
        ),
        case(
            "both append different lines at the end conflict",
            b"a\n",
            b"a\nx\n",
            b"a\ny\n",
            conflicted(b"a\n<<<<<<< laptop\nx\n||||||| base\n=======\ny\n>>>>>>> server\n"),
        ),
        case(
            "one conflict, one clean hunk",
            b"1\n2\n3\n4\n5\n6\n",
            b"1\nA\n3\n4\n5\nA6\n",
            b"1\nB\n3\n4\n5\n6\n",
            conflicted(b"1\n<<<<<<< laptop\nA\n||||||| base\n2\n=======\nB\n>>>>>>> server\n3\n4\n5\nA6\n"),
        ),
        case("empty base, same content", b"", b"x\n", b"x\n", clean(b"x\n")),
        case(
            "empty base, different content",
            b"",
            b"x\n",
            b"y\n",
            conflicted(b"<<<<<<< laptop\nx\n||||||| base\n=======\ny\n>>>>>>> server\n"),
        ),
        case(
            "no trailing newline, clean",
            b"a\nb\nc",
            b"A\nb\nc",
            b"a\nb\nC",
            clean(b"A\nb\nC"),
        ),
        case(
            "no trailing newline, conflict sections terminated",
            b"a\nb",
            b"a\nx",
            b"a\ny",
            conflicted(b"a\n<<<<<<< laptop\nx\n||||||| base\nb\n=======\ny\n>>>>>>> server\n"),
        ),
        case(
            "trailing newline added by A, first line edited by B",
            b"a\nb\nc",
            b"a\nb\nc\n",
            b"A\nb\nc",
            clean(b"A\nb\nc\n"),
        ),
        case(
            "CRLF clean",
            b"a\r\nb\r\nc\r\nd\r\n",
            b"A\r\nb\r\nc\r\nd\r\n",
            b"a\r\nb\r\nc\r\nD\r\n",
            clean(b"A\r\nb\r\nc\r\nD\r\n"),
        ),
        case(
            "CRLF conflict markers use CRLF",
            b"a\r\nb\r\nc\r\n",
            b"a\r\nX\r\nc\r\n",
            b"a\r\nY\r\nc\r\n",
            conflicted(b"a\r\n<<<<<<< laptop\r\nX\r\n||||||| base\r\nb\r\n=======\r\nY\r\n>>>>>>> server\r\nc\r\n"),
        ),
        case(
            "UTF-8 text is fine",
            "é\nß\n€\n".as_bytes(),
            "É\nß\n€\n".as_bytes(),
            "é\nß\n€\n😀\n".as_bytes(),
            clean("É\nß\n€\n😀\n".as_bytes()),
        ),
        case("non-UTF-8 falls back", b"a\n", b"a\n\xe9\n", b"a\nb\n", Want::Fallback("binary data")),
        case("NUL falls back", b"a\x00\n", b"a\x00\nb\n", b"c\n", Want::Fallback("binary data")),
        Case {
            name: "huge lines",
            base: cat(&[b"a\n", &mb, b"b\n", b"c\n"]),
            a: cat(&[b"a\n", &mb2, b"b\n", b"c\n"]),
            b: cat(&[b"a\n", &mb, b"b\n", b"C\n"]),
            want: Want::Clean(cat(&[b"a\n", &mb2, b"b\n", b"C\n"])),
        },
        Case {
            name: "over the size cap",
            base: Vec::new(),
            a: Vec::new(),
            b: vec![0; MAX_MERGE_BYTES + 1], // zeroed: cheap to allocate
            want: Want::Fallback("too large"),
        },
    ]
}

#[test]
fn text_table() {
    run(&text_cases(), |c| {
        text(&c.base, &c.a, &c.b, "laptop", "server")
    });
}

/// A merge of many lines with scattered edits stays fast and exact.
#[test]
fn text_many_lines() {
    let base: Vec<String> = (0..6_000).map(|i| format!("line {i}\n")).collect();
    let mut a = base.clone();
    let mut b = base.clone();
    let mut want = base.clone();
    for i in (0..6_000).step_by(100) {
        a[i] = format!("A {i}\n");
        want[i] = a[i].clone();
        b[i + 50] = format!("B {i}\n");
        want[i + 50] = b[i + 50].clone();
    }
    let out = text(
        base.concat().as_bytes(),
        a.concat().as_bytes(),
        b.concat().as_bytes(),
        "a",
        "b",
    );
    assert_eq!(out, MergeOutcome::Clean(want.concat().into_bytes()));
}

#[test]
fn outcome_helpers() {
    let ff = MergeOutcome::FastForward {
        target: Side::A,
        tail_from: 1,
    };
    assert_eq!(ff.content(b"x", b"xy"), Some(&b"xy"[..]));
    assert_eq!(
        merge::MergeOutcome::Fallback("r".into()).fallback_reason(),
        Some("r")
    );
    assert_eq!(
        MergeOutcome::Clean(b"m".to_vec()).content(b"", b""),
        Some(&b"m"[..])
    );
}
