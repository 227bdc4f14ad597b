#!/usr/bin/env python3
"""Helper for bench/append.sh (standard library only).

  gen PATH --mb N --seed S           write a deterministic JSON-lines log of N MiB (atomically)
  append PATH --mb N --seed S --round R
                                     append N MiB of further log lines (deterministic per round)
  run --out F --tool T --round R --log L --kind fedsync|rsync [--wire-log W]
      [--remote-out R] -- CMD...     run CMD (output to L), wait4() it, append one JSON sample to
                                     F: wall time, bytes the process tree wrote to disk
                                     (ru_oublock * 512), exit code, the wire bytes the relay logged
                                     to W and the remote end's disk writes logged to R (both
                                     emptied first), the tool's own byte count from its output
  measure --out F -- CMD...          the same, transparent (stdin/stdout/stderr inherited); used
                                     as the remote command on the ssh side
  relay --log F -- SSH...            run SSH with its stdin/stdout piped through this process,
                                     append "bytes_sent bytes_received" to F at exit (the wire
                                     counter, at the same place for every tool)
  report SAMPLES --meta M --out J --table T
                                     medians, ratios, one-line summary
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time

MiB = 1 << 20
LEVELS = ["info"] * 14 + ["debug"] * 4 + ["warn"] * 2 + ["error"]
SERVICES = ["api", "auth", "billing", "search", "worker", "gateway", "scheduler"]
MSGS = ["request handled", "cache miss", "retrying upstream", "job finished", "token refreshed",
        "slow query", "connection reset by peer", "queued", "user signed in", "payload validated"]


def lines(seed, first_seq, t0):
    """Deterministic JSON lines (about 170 bytes each)."""
    r = random.Random(seed)
    seq = first_seq
    ms = t0
    while True:
        ms += r.randint(1, 40)
        s, milli = divmod(ms, 1000)
        tm = time.gmtime(s)
        bits = r.getrandbits(128)
        yield ('{"ts":"%04d-%02d-%02dT%02d:%02d:%02d.%03dZ","seq":%d,"level":"%s","svc":"%s",'
               '"msg":"%s","req":"%032x","user":%d,"ms":%d,"bytes":%d}\n' % (
                   tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, milli,
                   seq, r.choice(LEVELS), r.choice(SERVICES), r.choice(MSGS), bits,
                   r.randint(1, 99999), r.randint(0, 5000), r.randint(0, 1 << 20))).encode()
        seq += 1


def write_lines(f, nbytes, gen):
    """Write whole lines until at least nbytes are written; return the count."""
    buf, n, total = [], 0, 0
    for line in gen:
        buf.append(line)
        n += len(line)
        if n >= 4 * MiB or total + n >= nbytes:
            f.write(b"".join(buf))
            total += n
            buf, n = [], 0
            if total >= nbytes:
                return total


def cmd_gen(a):
    tmp = a.path + ".partial"
    with open(tmp, "wb") as f:
        write_lines(f, a.mb * MiB, lines(a.seed, 0, 1_767_225_600_000))  # 2026-01-01
        f.flush()
        os.fsync(f.fileno())
    t = 1_767_225_600 + 86400  # a fixed mtime in the past: the same for every run
    os.utime(tmp, (t, t))
    os.rename(tmp, a.path)


def cmd_append(a):
    # Lines continue "after" the base (later timestamps, sequence numbers per round).
    with open(a.path, "ab") as f:
        write_lines(f, a.mb * MiB, lines(a.seed * 1000 + a.round, 10**9 * a.round,
                                         1_800_000_000_000 + a.round * 3_600_000))


def spawn_measured(cmd, stdout=None, stderr=None):
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=stdout, stderr=stderr)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": wall, "rc": p.returncode, "written": ru.ru_oublock * 512,
            "read": ru.ru_inblock * 512, "maxrss_kb": ru.ru_maxrss,
            "user_s": ru.ru_utime, "sys_s": ru.ru_stime}


def reported_bytes(kind, text):
    """The tool's own count of bytes it transferred, from its output."""
    if kind == "fedsync":
        try:
            j = json.loads(text[text.index("{"):])
        except ValueError:
            return None
        return sum(pr.get("counts", {}).get("bytes_to_b", 0) for pr in j.get("pairs", []))
    for line in text.splitlines():
        if line.startswith("Literal data:"):
            return int(line.split(":")[1].split()[0].replace(",", ""))
    return None


def cmd_run(a):
    for f in (a.wire_log, a.remote_out):
        if f:
            open(f, "w").close()
    with open(a.log, "wb") as log:
        s = spawn_measured(a.argv, stdout=log, stderr=subprocess.STDOUT)
    s.update({"tool": a.tool, "round": a.round, "order": a.order})
    s["target_written"] = s["written"]
    if a.wire_log:
        up = down = 0
        for line in open(a.wire_log):
            x, y = line.split()
            up, down = up + int(x), down + int(y)
        s.update({"wire": up + down, "wire_up": up, "wire_down": down})
    if a.remote_out:
        rem = [json.loads(l) for l in open(a.remote_out) if l.strip()]
        s["remote"] = rem
        s["target_written"] = sum(r["written"] for r in rem) if rem else None
    s["reported"] = reported_bytes(a.kind, open(a.log, errors="replace").read())
    with open(a.out, "a") as f:
        f.write(json.dumps(s) + "\n")
    sys.exit(s["rc"])


def cmd_measure(a):
    s = spawn_measured(a.argv)
    with open(a.out, "a") as f:
        f.write(json.dumps(s) + "\n")
    sys.exit(s["rc"])


def cmd_relay(a):
    p = subprocess.Popen(a.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    counts = [0, 0]

    def pump(src, dst, k):
        while True:
            try:
                b = os.read(src, 1 << 16)
            except OSError:
                break
            if not b:
                break
            counts[k] += len(b)
            try:
                while b:
                    b = b[os.write(dst, b):]
            except OSError:
                break
        if k == 0:
            try:
                p.stdin.close()
            except OSError:
                pass

    up = threading.Thread(target=pump, args=(0, p.stdin.fileno(), 0), daemon=True)
    down = threading.Thread(target=pump, args=(p.stdout.fileno(), 1, 1))
    up.start()
    down.start()
    down.join()
    rc = p.wait()
    with open(a.log, "a") as f:
        f.write("%d %d\n" % (counts[0], counts[1]))
    sys.exit(rc)


# ------------------------------------------------------------------ report
LABEL = {
    "fedsync": ("local", "fedsync sync (merge=append)"),
    "rsync": ("local", "rsync -a"),
    "rsync-av": ("local", "rsync -a --append-verify"),
    "ssh-fedsync": ("ssh", "fedsync sync (merge=append)"),
    "ssh-rsync": ("ssh", "rsync -a -e ssh"),
    "ssh-rsync-av": ("ssh", "rsync -a --append-verify -e ssh"),
}
ORDER = list(LABEL)


def med(v):
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None


def cmd_report(a):
    meta = json.load(open(a.meta))
    samples = [json.loads(l) for l in open(a.samples) if l.strip()]
    tools = [t for t in ORDER if any(s["tool"] == t for s in samples)]
    summ = {}
    for t in tools:
        ss = [s for s in samples if s["tool"] == t]
        summ[t] = {
            "n": len(ss),
            "median_s": med([s["wall_s"] for s in ss]),
            "min_s": min(s["wall_s"] for s in ss),
            "max_s": max(s["wall_s"] for s in ss),
            "written": med([s["target_written"] for s in ss]),
            "wire": med([s.get("wire") for s in ss]),
            "reported": med([s.get("reported") for s in ss]),
            "target_read": med([s.get("target_read") for s in ss]),
        }
    appended = meta["append_bytes_median"]
    MB = MiB

    def mb(x, w=9):
        return ("%*.2f" % (w, x / MB)) if x is not None else "%*s" % (w, "-")

    out = []
    p = out.append
    p("")
    p("fedsync append benchmark  (%s)" % meta["date"])
    p("log: %.1f MiB of JSON lines (seed %d) + %.2f MiB appended before each of %d round(s); "
      "tool order ABBA" % (meta["base_bytes"] / MB, meta["seed"], appended / MB, meta["repeat"]))
    p("fedsync %s (%s), rsync %s; page cache: source and every target read before each round, "
      "`sync` before every timed command" % (meta["fedsync_version"], meta["fedsync_sha"],
                                             meta["rsync_version"]))
    p("machine: %s; 1-min load average %.1f before the rounds, %.1f after" % (
        meta["machine"], meta["load_start"], meta["load_end"]))
    if max(meta["load_start"], meta["load_end"]) > meta["cpus"]:
        p("NOTE: the load average exceeded the %d cpus: something else was busy; the spread "
          "(min/max) shows how much, rerun on an idle machine before quoting" % meta["cpus"])
    p("")
    p("%-5s %-32s %8s %8s %8s %10s %9s %9s %3s" % (
        "case", "tool", "median s", "min s", "max s", "writtenMiB", "wire MiB", "reportMiB", "n"))
    p("-" * 99)
    for t in tools:
        v = summ[t]
        case, label = LABEL[t]
        p("%-5s %-32s %8.3f %8.3f %8.3f %s %s %s %3d" % (
            case, label, v["median_s"], v["min_s"], v["max_s"], mb(v["written"], 10),
            mb(v["wire"]), mb(v["reported"]), v["n"]))
    p("(MiB = 2^20 bytes, medians. written: bytes the tool's processes wrote to disk, from "
      "wait4() ru_oublock")
    p(" (local: the whole process tree, incl. fedsync's state database; ssh: the remote end, "
      "measured by a")
    p(" wrapper around the remote command). wire: both directions through the same ssh "
      "wrapper. report:")
    p(" the tool's own count: fedsync --json counts.bytes_to_b, rsync --stats 'Literal data'.")
    if any(t.startswith("ssh-") for t in tools):
        p(" ssh: times include connecting to the private sshd and the counting relay; fedsync's")
        p(" protocol is zstd-compressed, rsync runs without -z, as the commands above say.)")
    else:
        out[-1] += ")"
    p("")

    ratios = []

    def ratio(label, num, den, key):
        n = summ.get(num, {}).get(key)
        d = summ.get(den, {}).get(key) if den != "appended" else appended
        if n is None or d is None or d <= 0:
            return
        ratios.append({"label": label, "num": num, "den": den, "metric": key, "ratio": n / d})
        p("  %-58s %10.3f" % (label, n / d))

    p("ratios of medians (lower is better for fedsync; quote these, not seconds):")
    for pre, case in (("", "local"), ("ssh-", "ssh")):
        f = pre + "fedsync"
        if f not in summ:
            continue
        for key, what in (("median_s", "time"), ("written", "disk written"), ("wire", "wire bytes")):
            if summ[f].get(key) is None:
                continue
            ratio("%s %s  fedsync / rsync -a" % (case, what), f, pre + "rsync", key)
            ratio("%s %s  fedsync / rsync --append-verify" % (case, what), f, pre + "rsync-av", key)
            if key != "median_s":
                ratio("%s %s  fedsync / appended bytes" % (case, what), f, "appended", key)
    p("")
    parts = []
    for pre, case, key in (("", "local", "written"), ("ssh-", "ssh", "wire")):
        f = summ.get(pre + "fedsync")
        if not f:
            continue
        r = summ.get(pre + "rsync")
        av = summ.get(pre + "rsync-av")
        s = "%s: fedsync %s %.2f MiB in %.2f s" % (case, "wrote" if key == "written" else "sent",
                                                 f[key] / MB, f["median_s"])
        if key == "wire" and f.get("written") is not None:
            s += " (remote disk %.1f MiB)" % (f["written"] / MB)
        if r:
            s += ", x%.3f bytes / x%.2f time of rsync -a" % (f[key] / r[key], f["median_s"] / r["median_s"])
        if av:
            s += ", x%.2f bytes / x%.2f time of rsync --append-verify" % (
                f[key] / av[key], f["median_s"] / av["median_s"])
        parts.append(s)
    summary = ("append bench (%.0f MiB log + %.2f MiB, median of %d, ABBA): " % (
        meta["base_bytes"] / MB, appended / MB, meta["repeat"])) + "; ".join(parts)
    p("summary: " + summary)
    p("")
    text = "\n".join(out)
    print(text)
    with open(a.out, "w") as f:
        json.dump({"meta": meta, "summary": summ, "ratios": ratios, "note": summary,
                   "samples": samples}, f, indent=2)
        f.write("\n")
    with open(a.table, "w") as f:
        f.write(text + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("path")
    g.add_argument("--mb", type=int, required=True)
    g.add_argument("--seed", type=int, required=True)
    ap_ = sub.add_parser("append")
    ap_.add_argument("path")
    ap_.add_argument("--mb", type=float, required=True)
    ap_.add_argument("--seed", type=int, required=True)
    ap_.add_argument("--round", type=int, required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    r.add_argument("--tool", required=True)
    r.add_argument("--round", type=int, required=True)
    r.add_argument("--order", type=int, default=0)
    r.add_argument("--log", required=True)
    r.add_argument("--kind", choices=["fedsync", "rsync"], required=True)
    r.add_argument("--wire-log")
    r.add_argument("--remote-out")
    r.add_argument("argv", nargs="+")
    m = sub.add_parser("measure")
    m.add_argument("--out", required=True)
    m.add_argument("argv", nargs="+")
    y = sub.add_parser("relay")
    y.add_argument("--log", required=True)
    y.add_argument("argv", nargs="+")
    rp = sub.add_parser("report")
    rp.add_argument("samples")
    rp.add_argument("--meta", required=True)
    rp.add_argument("--out", required=True)
    rp.add_argument("--table", required=True)
    a = ap.parse_args()
    {"gen": cmd_gen, "append": cmd_append, "run": cmd_run, "measure": cmd_measure,
     "relay": cmd_relay, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()
