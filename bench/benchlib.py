#!/usr/bin/env python3
"""Helper for bench/local.sh: tree generation, mutation, cache warming, report.

Standard library only. Subcommands:
  gen     ROOT --files N --mb M --seed S      deterministic tree + ROOT.manifest
  mutate  ROOT... --manifest F --count N --seed S
                                              rewrite N files in place (same inode, so a
                                              hard-linked twin of the tree sees the change)
  warm    [--data DIR]... [--meta DIR]...     read every file under --data, stat every
                                              entry under --meta
  report  SAMPLES.tsv --meta META.json --out RESULT.json
                                              medians, table, SPEC section 9 ratios
"""
import argparse
import json
import os
import random
import statistics
import sys
import time

KiB = 1024
MiB = 1024 * 1024

# Plausible file extensions; they do not change how the bytes are made.
EXTS = ["txt", "md", "json", "jsonl", "rs", "py", "log", "dat", "bin", "toml", "csv", "html"]
WORDS = ["notes", "src", "docs", "logs", "data", "assets", "lib", "tests", "build", "cache",
         "img", "vendor", "config", "tmp", "out", "archive", "drafts", "pkg", "api", "web"]


# --------------------------------------------------------------------------- gen

def plan_sizes(rng, files, total_bytes):
    """Return a list of `files` sizes: mostly 1-8 KiB, some 100 KiB-1 MiB, a few large.

    Large files get ~10% of the budget, small files what they need (~4.5 KiB each on
    average), medium files fill the rest, so the sum lands near total_bytes.
    """
    n_large = max(1, files // 30000)
    large_budget = total_bytes * 0.10
    large_each = max(1 * MiB, min(64 * MiB, large_budget / n_large))
    small_avg = 4.5 * KiB
    medium_avg = 550 * KiB
    rest = total_bytes - n_large * large_each - (files - n_large) * small_avg
    n_medium = int(max(0, rest / (medium_avg - small_avg)))
    n_medium = min(n_medium, max(0, files - n_large - 1))
    n_small = files - n_large - n_medium
    sizes = []
    sizes += [rng.randint(1 * KiB, 8 * KiB) for _ in range(n_small)]
    sizes += [rng.randint(100 * KiB, 1 * MiB) for _ in range(n_medium)]
    sizes += [int(large_each * rng.uniform(0.75, 1.25)) for _ in range(n_large)]
    rng.shuffle(sizes)
    return sizes, n_small, n_medium, n_large


class Bytes:
    """Fast deterministic byte source: a seeded random pool, sliced at random offsets and
    passed through one of 256 random byte permutations, with a unique header per file so no
    two files share content."""

    def __init__(self, rng, pool_mb=32):
        self.rng = rng
        self.pool = rng.randbytes(pool_mb * MiB)
        perms = []
        for _ in range(256):
            p = list(range(256))
            rng.shuffle(p)
            perms.append(bytes(p))
        self.tables = perms

    def make(self, n, tag):
        rng = self.rng
        head = ("%s\n" % tag).encode()
        out = [head[:n]]
        need = n - len(out[0])
        pool = self.pool
        plen = len(pool)
        while need > 0:
            take = min(need, plen // 2)
            off = rng.randrange(0, plen - take + 1)
            chunk = pool[off:off + take].translate(self.tables[rng.randrange(256)])
            out.append(chunk)
            need -= take
        return b"".join(out)


def cmd_gen(a):
    root = os.path.abspath(a.root)
    rng = random.Random(a.seed)
    files = a.files
    n_dirs = max(1, files // 100)
    # Directory tree: a random recursive tree (each new dir hangs under an earlier one),
    # depth capped at 7, names from a word list plus an index to stay unique.
    dirs = [""]
    depth = [0]
    for i in range(1, n_dirs + 1):
        while True:
            p = rng.randrange(len(dirs))
            if depth[p] < 7:
                break
        name = "%s-%04d" % (rng.choice(WORDS), i)
        dirs.append(name if dirs[p] == "" else dirs[p] + "/" + name)
        depth.append(depth[p] + 1)
    dirs = dirs[1:]  # the root itself holds no generated files besides the first dir
    sizes, n_small, n_medium, n_large = plan_sizes(rng, files, a.mb * MiB)
    # Every dir gets at least one file (so no tool is judged on empty-dir handling).
    owners = list(range(len(dirs))) + [rng.randrange(len(dirs)) for _ in range(files - len(dirs))]
    owners = owners[:files]
    src = Bytes(rng)
    base_mtime = 1_600_000_000  # Sep 2020: the tree looks old, never "just written"
    os.makedirs(root, exist_ok=True)
    for d in dirs:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    manifest = []
    total = 0
    t0 = time.time()
    for i, (size, owner) in enumerate(zip(sizes, owners)):
        rel = "%s/file-%06d.%s" % (dirs[owner], i, EXTS[rng.randrange(len(EXTS))])
        path = os.path.join(root, rel)
        data = src.make(size, "fedsync-bench seed=%d file=%d" % (a.seed, i))
        with open(path, "wb") as f:
            f.write(data)
        mt = (base_mtime + rng.randrange(0, 3 * 365 * 86400)) * 1_000_000_000 + rng.randrange(10**9)
        os.utime(path, ns=(mt, mt))
        manifest.append(rel)
        total += size
        if a.progress and i and i % 20000 == 0:
            print("  gen: %d/%d files, %.0f MB, %.1fs" % (i, files, total / MiB, time.time() - t0),
                  file=sys.stderr, flush=True)
    # A few relative symlinks inside the tree (kept as links by every tool under test).
    n_links = max(1, files // 1000)
    for k in range(n_links):
        d = dirs[rng.randrange(len(dirs))]
        target_rel = manifest[rng.randrange(len(manifest))]
        link = os.path.join(root, d, "link-%04d" % k)
        rel_target = os.path.relpath(os.path.join(root, target_rel), os.path.join(root, d))
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(rel_target, link)
        mt = (base_mtime + rng.randrange(0, 3 * 365 * 86400)) * 1_000_000_000
        os.utime(link, ns=(mt, mt), follow_symlinks=False)
    # Deterministic directory mtimes, deepest first.
    for d in sorted(dirs, key=lambda s: -s.count("/")):
        mt = (base_mtime + rng.randrange(0, 3 * 365 * 86400)) * 1_000_000_000
        os.utime(os.path.join(root, d), ns=(mt, mt))
    os.utime(root, ns=(base_mtime * 1_000_000_000,) * 2)
    with open(a.root.rstrip("/") + ".manifest", "w") as f:
        f.write("\n".join(manifest) + "\n")
    info = {"files": files, "dirs": len(dirs), "symlinks": n_links, "bytes": total,
            "small": n_small, "medium": n_medium, "large": n_large,
            "seconds": round(time.time() - t0, 1)}
    print(json.dumps(info))


# ------------------------------------------------------------------------ mutate

def cmd_mutate(a):
    with open(a.manifest) as f:
        rels = [line for line in f.read().split("\n") if line]
    rng = random.Random(a.seed)
    picked = rng.sample(rels, min(a.count, len(rels)))
    src = Bytes(rng, pool_mb=4)
    now = time.time_ns()
    root = a.roots[0]
    for rel in picked:
        path = os.path.join(root, rel)
        st = os.stat(path)
        delta = rng.choice([-1, 1]) * rng.randint(1, 64)
        size = max(1, st.st_size + delta)
        if size == st.st_size:
            size += 1
        data = src.make(size, "fedsync-bench mutated seed=%d %s" % (a.seed, rel))
        # Open without O_CREAT|rename: truncate and rewrite the same inode, so hard-linked
        # twins (the fedsync source tree) get exactly the same change.
        with open(path, "r+b") as f:
            f.truncate(0)
            f.write(data)
        mt = max(now, st.st_mtime_ns + 1_000_000_000)
        os.utime(path, ns=(mt, mt))
    for other in a.roots[1:]:
        for rel in picked:
            s1 = os.stat(os.path.join(root, rel))
            s2 = os.stat(os.path.join(other, rel))
            if (s1.st_ino, s1.st_dev) != (s2.st_ino, s2.st_dev):
                sys.exit("mutate: %s/%s is not a hard link of %s/%s" % (other, rel, root, rel))
    print(len(picked))


# -------------------------------------------------------------------------- warm

def walk(top, read):
    n = 0
    nbytes = 0
    stack = [top]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except FileNotFoundError:
            continue
        with it:
            for e in it:
                e.stat(follow_symlinks=False)
                n += 1
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif read and e.is_file(follow_symlinks=False):
                    with open(e.path, "rb", buffering=0) as f:
                        while True:
                            b = f.read(1 << 20)
                            if not b:
                                break
                            nbytes += len(b)
    return n, nbytes


def cmd_warm(a):
    tot_n = tot_b = 0
    for d in a.data or []:
        n, b = walk(d, True)
        tot_n += n
        tot_b += b
    for d in a.meta or []:
        n, _ = walk(d, False)
        tot_n += n
    print("%d entries, %.0f MB read" % (tot_n, tot_b / MiB))


# ------------------------------------------------------------------------- probe

def cmd_probe(a):
    """Create --files small files (4 KiB) in a new directory DIR, print the seconds it took.

    File creation is what crawls after a mass deletion on discard-mounted disks, and the
    kernel's pressure counters do not show it, so the driver measures it directly."""
    os.makedirs(a.dir)
    data = b"p" * 4096
    t0 = time.perf_counter()
    for i in range(a.files):
        with open(os.path.join(a.dir, "p%04d" % i), "wb") as f:
            f.write(data)
    print("%.4f" % (time.perf_counter() - t0))


# ------------------------------------------------------------------------ report

TARGETS = [
    # (label, scenario, metric, numerator, denominator, limit)
    ("no-op time fedsync/rsync", "noop", "wall", "fedsync", "rsync", 0.5),
    ("100-changed time fedsync/rsync", "changed100", "wall", "fedsync", "rsync", 0.5),
    ("first-sync time fedsync/cp -a", "first", "wall", "fedsync", "cp", 1.2),
    ("no-op peak memory fedsync/unison", "noop", "rss", "fedsync", "unison", 0.5),
    # The same no-op once more: unison's first no-op after a first sync still rewrites its
    # archive and peaks far higher than its steady state; this is the steady state.
    ("no-op again time fedsync/rsync", "noop2", "wall", "fedsync", "rsync", 0.5),
    ("no-op again peak memory fedsync/unison", "noop2", "rss", "fedsync", "unison", 0.5),
]
SCEN_ORDER = ["first", "noop", "noop2", "changed100"]
SCEN_LABEL = {"first": "1 first sync", "noop": "2 no-op", "noop2": "2b no-op again",
              "changed100": "3 100 changed"}
TOOL_ORDER = ["cp", "rsync", "unison", "rclone", "fedsync"]


def cmd_report(a):
    with open(a.meta) as f:
        meta = json.load(f)
    samples = []
    with open(a.samples) as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            if not line.strip():
                continue
            row = dict(zip(header, line.rstrip("\n").split("\t")))
            samples.append({"scenario": row["scenario"], "tool": row["tool"],
                            "rep": int(row["rep"]), "wall_s": float(row["wall_s"]),
                            "time_e_s": float(row["time_e_s"]), "rss_kb": int(row["rss_kb"]),
                            "rc": int(row["rc"]),
                            "io_stall_pct": int(row.get("io_stall_pct") or 0),
                            "cpu_stall_pct": int(row.get("cpu_stall_pct") or 0)})
    groups = {}
    for s in samples:
        groups.setdefault((s["scenario"], s["tool"]), []).append(s)
    summary = {}
    for (scen, tool), ss in groups.items():
        walls = [s["wall_s"] for s in ss]
        rsss = [s["rss_kb"] for s in ss]
        summary.setdefault(scen, {})[tool] = {
            "n": len(ss), "median_s": statistics.median(walls), "min_s": min(walls),
            "max_s": max(walls), "median_rss_mb": statistics.median(rsss) / 1024,
            "max_rss_mb": max(rsss) / 1024,
            "max_io_stall_pct": max(s["io_stall_pct"] for s in ss),
            "max_cpu_stall_pct": max(s["cpu_stall_pct"] for s in ss),
        }

    def get(scen, tool, metric):
        v = summary.get(scen, {}).get(tool)
        if v is None:
            return None
        return v["median_s"] if metric == "wall" else v["median_rss_mb"]

    out = []
    p = out.append
    p("")
    p("fedsync local benchmark  (%s)" % meta.get("date", ""))
    p("tree: %s files + %s symlinks in %s dirs, %.0f MB  (seed %s)  repeats: %s, order ABBA"
      % (meta["tree"]["files"], meta["tree"]["symlinks"], meta["tree"]["dirs"],
         meta["tree"]["bytes"] / MiB, meta["seed"], meta["repeat"]))
    p("page cache: source read in full + all trees of the round stat'ed before every "
      "scenario round; `sync` before every timed command%s"
      % ("; the timed command includes a trailing `sync` (FLUSH=1)" if meta.get("flush") else ""))
    if meta.get("settle"):
        p("settle: before every scenario round, waited (<= %ss) until creating 500 files took "
          "<= %ss twice in a row" % (meta["settle"], meta.get("probe_max")))
    p("")
    p("%-15s %-8s %10s %10s %10s %12s %4s %5s %5s" % (
        "scenario", "tool", "median s", "min s", "max s", "peak RSS MB", "n", "io%", "cpu%"))
    p("-" * 87)
    for scen in SCEN_ORDER:
        for tool in TOOL_ORDER:
            v = summary.get(scen, {}).get(tool)
            if not v:
                continue
            p("%-15s %-8s %10.3f %10.3f %10.3f %12.1f %4d %5d %5d" % (
                SCEN_LABEL[scen], tool, v["median_s"], v["min_s"], v["max_s"],
                v["median_rss_mb"], v["n"], v["max_io_stall_pct"], v["max_cpu_stall_pct"]))
    p("(peak RSS: median over repeats of the largest single process, as /usr/bin/time %M reports;")
    p(" io%/cpu%: worst share of a run's wall time during which some task on the machine stalled")
    p(" on disk/CPU (/proc/pressure). The tool's own waits count too (fsync, more threads than")
    p(" cores), so compare a tool with itself across repeats; a spike in one repeat, or high")
    p(" values for cp/rsync, mean another process competed for the machine.)")
    noisy = [s for s in samples if s["tool"] in ("cp", "rsync") and
             (s["io_stall_pct"] >= 20 or s["cpu_stall_pct"] >= 20)]
    if noisy:
        p("NOTE: %d cp/rsync runs had io%% or cpu%% >= 20: something else was busy on this "
          "machine; rerun when it is idle before quoting ratios." % len(noisy))
    p("")
    p("SPEC section 9 targets (ratios of medians; quote these, not absolute times):")
    ratios = []
    for label, scen, metric, num, den, limit in TARGETS:
        n, d = get(scen, num, metric), get(scen, den, metric)
        if n is None or d is None:
            verdict, r = "n/a", None
        elif d <= 0:
            verdict, r = "n/a (denominator 0)", None
        else:
            r = n / d
            verdict = "PASS" if r <= limit else "FAIL"
        ratios.append({"label": label, "scenario": scen, "metric": metric, "numerator": num,
                       "denominator": den, "ratio": r, "limit": limit, "verdict": verdict})
        p("  %-40s %8s   target <= %-4s  %s" % (label, "%.3f" % r if r is not None else "-",
                                                 limit, verdict))
    p("")
    p("For comparison (no target):")
    info = []
    for scen in SCEN_ORDER:
        for den in ["rclone", "unison", "rsync"]:
            for metric in ["wall", "rss"]:
                if (scen, metric, den) in {("noop", "wall", "rsync"), ("changed100", "wall", "rsync"),
                                           ("noop", "rss", "unison"), ("noop2", "wall", "rsync"),
                                           ("noop2", "rss", "unison")}:
                    continue
                if metric == "rss" and den == "rsync":
                    continue  # rsync runs as 2-3 processes; its peak is per process
                n, d = get(scen, "fedsync", metric), get(scen, den, metric)
                if n is None or d is None or d <= 0:
                    continue
                lab = "%s %s fedsync/%s" % (SCEN_LABEL[scen].split(" ", 1)[1], "time" if metric == "wall"
                                            else "peak memory", den)
                info.append({"label": lab, "ratio": n / d})
                p("  %-44s %8.3f" % (lab, n / d))
    if not info:
        p("  (fedsync not measured)" if "fedsync" not in {s["tool"] for s in samples}
          else "  (nothing to compare)")
    p("")
    text = "\n".join(out)
    print(text)
    result = {"meta": meta, "summary": summary, "targets": ratios, "comparisons": info,
              "samples": samples}
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    if a.table:
        with open(a.table, "w") as f:
            f.write(text + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("root")
    g.add_argument("--files", type=int, required=True)
    g.add_argument("--mb", type=int, required=True)
    g.add_argument("--seed", type=int, required=True)
    g.add_argument("--progress", action="store_true")
    m = sub.add_parser("mutate")
    m.add_argument("roots", nargs="+")
    m.add_argument("--manifest", required=True)
    m.add_argument("--count", type=int, default=100)
    m.add_argument("--seed", type=int, required=True)
    w = sub.add_parser("warm")
    w.add_argument("--data", action="append")
    w.add_argument("--meta", action="append")
    pr = sub.add_parser("probe")
    pr.add_argument("dir")
    pr.add_argument("--files", type=int, default=500)
    r = sub.add_parser("report")
    r.add_argument("samples")
    r.add_argument("--meta", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--table")
    a = ap.parse_args()
    {"gen": cmd_gen, "mutate": cmd_mutate, "warm": cmd_warm, "probe": cmd_probe,
     "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()
