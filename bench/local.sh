#!/usr/bin/env bash
# fedsync local benchmark: fedsync side by side with cp -a, rsync, unison and rclone on the
# same generated tree, in one run; prints medians and the SPEC section 9 ratios.
#
#   bash bench/local.sh            run the benchmark (defaults: 100,000 files, 600 MB, 3 repeats)
#   bash bench/local.sh gen        only generate (or check) the tree, time nothing
#   bash bench/local.sh clean      delete leftover run directories under $BENCH_DIR/runs
#   bash bench/local.sh clean-all  also delete the generated trees (results are kept)
#
# Knobs (environment): FILES MB SEED REPEAT CHANGED TOOLS FEDSYNC BENCH_DIR KEEP FLUSH VERIFY
# SETTLE PROBE_MAX.
# See bench/README.md.
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
LIB="$HERE/benchlib.py"

BENCH_DIR=${BENCH_DIR:-/tmp/fedsync-bench}
FILES=${FILES:-100000}
MB=${MB:-600}
SEED=${SEED:-42}
REPEAT=${REPEAT:-3}
CHANGED=${CHANGED:-100}
TOOLS=${TOOLS:-"cp rsync unison rclone fedsync"}
FEDSYNC=${FEDSYNC:-$REPO/target/release/fedsync}
KEEP=${KEEP:-0}
FLUSH=${FLUSH:-0}
VERIFY=${VERIFY:-checksum}
SETTLE=${SETTLE:-120}
PROBE_MAX=${PROBE_MAX:-0.25}
GEN_VERSION=1

say() { printf '%s\n' "$*"; }
die() {
    printf '\nbench: ERROR: %s\n' "$*" >&2
    if [ -n "${RUN:-}" ] && [ -d "${RUN:-}" ]; then
        printf 'bench: the run directory is left for inspection: %s\n' "$RUN" >&2
        printf 'bench: remove it with: BENCH_DIR=%s bash %s clean\n' "$BENCH_DIR" "$0" >&2
    fi
    exit 1
}

# ------------------------------------------------------------------ arguments, knobs
MODE=${1:-run}
case "$MODE" in
    run|gen|clean|clean-all) ;;
    -h|--help|help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown mode '$MODE' (expected: run, gen, clean, clean-all)" ;;
esac

for v in FILES MB SEED REPEAT CHANGED SETTLE; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
[[ $PROBE_MAX =~ ^[0-9]*\.?[0-9]+$ ]] || die "PROBE_MAX must be a number of seconds (got '$PROBE_MAX')"
if [ "$FILES" -lt 1 ] || [ "$MB" -lt 1 ] || [ "$REPEAT" -lt 1 ]; then
    die "FILES, MB and REPEAT must be >= 1"
fi
if [ "$CHANGED" -lt 1 ] || [ "$CHANGED" -gt "$FILES" ]; then
    die "CHANGED must be between 1 and FILES"
fi
case "$VERIFY" in quick|checksum) ;; *) die "VERIFY must be 'quick' or 'checksum'" ;; esac
read -r -a TOOL_LIST <<<"$TOOLS"
for t in "${TOOL_LIST[@]}"; do
    case "$t" in cp|rsync|unison|rclone|fedsync) ;; *) die "unknown tool '$t' in TOOLS (known: cp rsync unison rclone fedsync)" ;; esac
done
[ "${#TOOL_LIST[@]}" -ge 1 ] || die "TOOLS is empty"
has_tool() { [[ " ${TOOL_LIST[*]} " == *" $1 "* ]]; }

if [ "$MODE" = clean ] || [ "$MODE" = clean-all ]; then
    say "bench: removing $BENCH_DIR/runs"
    rm -rf "$BENCH_DIR/runs"
    if [ "$MODE" = clean-all ]; then
        say "bench: removing generated trees $BENCH_DIR/tree-*"
        rm -rf "$BENCH_DIR"/tree-*
    fi
    say "bench: done (results in $BENCH_DIR/results are kept)"
    exit 0
fi

# ------------------------------------------------------------------ prerequisites
# Installs nothing: names the Debian package for whatever is missing.
missing=() pkgs=()
need() { # command package
    if ! command -v "$1" >/dev/null 2>&1; then missing+=("$1"); pkgs+=("$2"); fi
}
need python3 python3
need rsync rsync            # also used for the correctness check, so always needed
[ -x /usr/bin/time ] || { missing+=("/usr/bin/time"); pkgs+=("time"); }
if [ "$MODE" = run ]; then
    has_tool unison && need unison unison
    has_tool rclone && need rclone rclone
    has_tool cp && need cp coreutils
fi
if [ "${#missing[@]}" -gt 0 ]; then
    printf 'bench: missing: %s\n' "${missing[*]}" >&2
    printf 'bench: install with:  apt-get install -y %s\n' "${pkgs[*]}" >&2
    printf 'bench: (all peers at once: apt-get install -y rsync unison rclone time)\n' >&2
    exit 1
fi
if [ "$MODE" = run ] && has_tool fedsync; then
    [ -x "$FEDSYNC" ] || die "fedsync binary not found at $FEDSYNC
  build it:          cargo build --release
  or point at one:   FEDSYNC=/path/to/fedsync bash bench/local.sh
  or leave it out:   TOOLS='cp rsync unison rclone' bash bench/local.sh"
    "$FEDSYNC" --help >/dev/null 2>&1 || die "'$FEDSYNC --help' fails; is the build complete?"
fi

# ------------------------------------------------------------------ the tree
# One directory per parameter set, so changing FILES/MB/SEED never deletes a tree (mass
# deletions make file creation crawl on these machines for a while).
TREE="$BENCH_DIR/tree-f$FILES-m$MB-s$SEED-g$GEN_VERSION"
SRC="$TREE/src"            # what cp, rsync, unison and rclone sync from
SRC_F="$TREE/src-fedsync"  # fedsync's source: a hard-linked twin of SRC (same inodes, same
                           # bytes, same page cache), so fedsync's .fedsync/ marker never
                           # shows up in the peers' source and vice versa
MANIFEST="$SRC.manifest"
STAMP="$TREE/stamp"
WANT_STAMP="gen=$GEN_VERSION files=$FILES mb=$MB seed=$SEED"

mkdir -p "$BENCH_DIR" "$BENCH_DIR/results"

if [ -f "$STAMP" ] && [ "$(head -n1 "$STAMP")" = "$WANT_STAMP" ] && [ -d "$SRC" ] && [ -d "$SRC_F" ] && [ -f "$MANIFEST" ]; then
    say "bench: reusing tree $TREE ($(sed -n 2p "$STAMP"))"
else
    say "bench: generating tree $TREE: $FILES files, ~$MB MB, seed $SEED"
    mkdir -p "$TREE"
    t0=$EPOCHREALTIME
    info=$(python3 "$LIB" gen "$SRC" --files "$FILES" --mb "$MB" --seed "$SEED" --progress) \
        || die "tree generation failed"
    # Hard-linked twin for fedsync: cp -al when new; rsync --link-dest completes a half-made
    # one (an interrupted earlier generation) without deleting anything.
    if [ ! -e "$SRC_F" ]; then
        cp -al "$SRC" "$SRC_F" || die "making the hard-linked twin failed"
    else
        rsync -a --link-dest="$SRC/" "$SRC/" "$SRC_F/" || die "making the hard-linked twin failed"
    fi
    printf '%s\n%s\n' "$WANT_STAMP" "$info" >"$STAMP"
    t1=$EPOCHREALTIME
    us=$(( ${t1/./} - ${t0/./} ))
    say "bench: generated in $((us / 1000000)).$(printf '%01d' $(( (us / 100000) % 10 )))s: $info"
fi
TREE_INFO=$(sed -n 2p "$STAMP")
[ "$MODE" = gen ] && { say "bench: tree ready: $SRC"; exit 0; }

# ------------------------------------------------------------------ space check
ndst=0
for t in "${TOOL_LIST[@]}"; do ndst=$((ndst + 1)); done
need_kb=$(( MB * 1024 * ndst * REPEAT * 11 / 10 + 200 * 1024 ))
need_inodes=$(( (FILES + FILES / 50) * ndst * REPEAT ))
avail_kb=$(df -Pk "$BENCH_DIR" | awk 'NR==2 {print $4}')
avail_inodes=$(df -Pi "$BENCH_DIR" | awk 'NR==2 {print $4}')
[ "$avail_kb" -ge "$need_kb" ] || die "not enough space in $BENCH_DIR: need ~$((need_kb / 1024)) MB ($ndst tools x $REPEAT repeats x $MB MB), have $((avail_kb / 1024)) MB. Lower REPEAT or point BENCH_DIR elsewhere."
if [[ $avail_inodes =~ ^[0-9]+$ ]] && [ "$avail_inodes" -gt 0 ]; then
    [ "$avail_inodes" -ge "$need_inodes" ] || die "not enough inodes in $BENCH_DIR: need ~$need_inodes, have $avail_inodes"
fi

# ------------------------------------------------------------------ run directory
DATE=$(date +%Y%m%d-%H%M%S)
RUN="$BENCH_DIR/runs/$DATE-$$"
mkdir -p "$RUN/logs"
SAMPLES="$RUN/samples.tsv"
printf 'scenario\ttool\trep\twall_s\ttime_e_s\trss_kb\trc\tio_stall_pct\tcpu_stall_pct\n' >"$SAMPLES"
RESULT_JSON="$BENCH_DIR/results/local-$DATE.json"
RESULT_TXT="$BENCH_DIR/results/local-$DATE.txt"

# Snapshot the binary: a rebuild during the run must not swap versions between repetitions.
if has_tool fedsync; then
    mkdir -p "$RUN/bin"
    cp "$FEDSYNC" "$RUN/bin/fedsync"
    FEDSYNC_ORIG=$FEDSYNC
    FEDSYNC="$RUN/bin/fedsync"
    FEDSYNC_SHA=$(sha256sum "$FEDSYNC" | cut -c1-16)
    say "bench: fedsync: $FEDSYNC_ORIG ($("$FEDSYNC" --version 2>/dev/null | head -n1 || echo '?'), sha256 $FEDSYNC_SHA...), copied into the run directory"
fi
say "bench: run directory $RUN"
say "bench: tools: ${TOOL_LIST[*]}; repeats: $REPEAT (order alternates: ABBA); verify: $VERIFY"

# ------------------------------------------------------------------ helpers
dst_of() { printf '%s/r%s/%s' "$RUN" "$2" "$1"; }   # tool rep
src_of() { if [ "$1" = fedsync ]; then printf '%s' "$SRC_F"; else printf '%s' "$SRC"; fi; }

# Pressure stall information: microseconds some task waited on disk (io) or CPU (cpu).
psi_total() { # io|cpu
    if [ -r "/proc/pressure/$1" ]; then
        awk '/^some/ { sub("total=", "", $5); print $5 }' "/proc/pressure/$1"
    else
        echo 0
    fi
}

# On these machines (ext4 mounted with online discard) a mass deletion -- ours at the end of
# a previous run, a build's, anyone's -- makes file creation crawl for up to a minute, and the
# kernel's pressure counters do not show it. So before every scenario round, probe: create
# 500 small files; wait (at most SETTLE seconds) until two probes in a row take at most
# PROBE_MAX seconds. The probes live in the run directory and go with it.
settle() { # rep scenario
    [ "$SETTLE" -gt 0 ] || return 0
    local rep=$1 scen=$2 start=$SECONDS n=0 good=0 t told=0
    mkdir -p "$RUN/probe"
    while :; do
        n=$((n + 1))
        t=$(python3 "$LIB" probe "$RUN/probe/r$rep-$scen-$n" --files 500) || die "the file-creation probe failed"
        printf '%s\t%s\t%s\t%s\n' "$rep" "$scen" "$n" "$t" >>"$RUN/logs/probes.tsv"
        if awk -v t="$t" -v m="$PROBE_MAX" 'BEGIN { exit !(t <= m) }'; then
            good=$((good + 1))
        else
            good=0
            if [ "$told" = 0 ]; then
                say "  [rep $rep/$REPEAT] waiting for the disk to settle before '$scen': creating 500 files took ${t}s (want <= ${PROBE_MAX}s; SETTLE=$SETTLE s max)"
                told=1
            fi
        fi
        [ "$good" -ge 2 ] && break
        if [ $((SECONDS - start)) -ge "$SETTLE" ]; then
            say "  [rep $rep/$REPEAT] WARNING: file creation still slow after ${SETTLE}s (last probe ${t}s); timing anyway -- these numbers are suspect"
            return 0
        fi
        [ "$good" -ge 1 ] || sleep 1
    done
    [ "$told" = 0 ] || say "  [rep $rep/$REPEAT] disk settled after $((SECONDS - start))s (last probe ${t}s)"
}

# The command line of TOOL for repetition REP, into the array CMD.
tool_cmd() { # tool rep
    local tool=$1 rep=$2 dst src
    dst=$(dst_of "$tool" "$rep")
    src=$(src_of "$tool")
    case "$tool" in
        cp)      CMD=(cp -a "$src" "$dst") ;;
        rsync)   CMD=(rsync -a "$src/" "$dst/") ;;
        unison)  CMD=(env "UNISON=$RUN/unison-home" unison "$src" "$dst" -batch -auto -silent -times -perms 0) ;;
        # --config "": in-memory config, so rclone neither reads nor warns about ~/.config.
        rclone)  CMD=(rclone --config "" sync "$src" "$dst" --links) ;;
        # Own FEDSYNC_HOME per repetition: state is keyed by the two roots anyway.
        fedsync) CMD=(env "FEDSYNC_HOME=$RUN/fedsync-home/r$rep" "$FEDSYNC" sync "$src" "$dst") ;;
    esac
}

# timed SCENARIO TOOL REP: run the tool's command under /usr/bin/time, record a sample.
timed() {
    local scen=$1 tool=$2 rep=$3 rc=0 t0 t1 us wall e rss last io0 io1 cpu0 cpu1 iop cpup
    local log="$RUN/logs/$scen-$tool-r$rep.log" tf="$RUN/logs/$scen-$tool-r$rep.time"
    tool_cmd "$tool" "$rep"
    printf '%s\n' "${CMD[*]}" >"$log.cmd"
    sync  # flush the previous command's dirty pages outside any timing
    io0=$(psi_total io); cpu0=$(psi_total cpu)
    t0=$EPOCHREALTIME
    if [ "$FLUSH" = 1 ]; then
        /usr/bin/time -f '%e %M' -o "$tf" bash -c '"$@" && sync' flush "${CMD[@]}" >"$log" 2>&1 || rc=$?
    else
        /usr/bin/time -f '%e %M' -o "$tf" "${CMD[@]}" >"$log" 2>&1 || rc=$?
    fi
    t1=$EPOCHREALTIME
    io1=$(psi_total io); cpu1=$(psi_total cpu)
    us=$(( ${t1/./} - ${t0/./} ))
    [ "$us" -gt 0 ] || us=1
    wall=$(printf '%d.%06d' $((us / 1000000)) $((us % 1000000)))
    # Share of the wall time during which some task (anyone's) stalled on disk / CPU.
    iop=$(( (io1 - io0) * 100 / us )); cpup=$(( (cpu1 - cpu0) * 100 / us ))
    last=$(tail -n1 "$tf" 2>/dev/null || true)
    read -r e rss <<<"$last"
    [[ ${e:-} =~ ^[0-9.]+$ ]] || e=0
    [[ ${rss:-} =~ ^[0-9]+$ ]] || rss=0
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scen" "$tool" "$rep" "$wall" "$e" "$rss" "$rc" "$iop" "$cpup" >>"$SAMPLES"
    printf '  [rep %d/%d] %-10s %-8s %9.3f s %9.1f MB  io%%=%-3d cpu%%=%-3d rc=%d\n' "$rep" "$REPEAT" "$scen" "$tool" "$wall" "$(awk -v k="$rss" 'BEGIN{printf "%.1f", k/1024}')" "$iop" "$cpup" "$rc"
    if [ "$rc" -ne 0 ]; then
        say "---- last lines of $log:" >&2
        tail -n 30 "$log" >&2 || true
        die "$tool exited with $rc in scenario '$scen' (repetition $rep): $(cat "$log.cmd")"
    fi
}

# verify SCENARIO TOOL REP: the tool's replica must match the source (size + mtime of every
# file, symlink targets, no missing or extra entries; with VERIFY=checksum also every
# file's content, after the first sync and after the 100-changed sync -- the no-op check is
# always the quick one). .fedsync/ and unison temp files are not compared.
verify() {
    local scen=$1 tool=$2 rep=$3 dst src out flags=(-rlni --delete)
    dst=$(dst_of "$tool" "$rep")
    src=$(src_of "$tool")
    if [ "$VERIFY" = checksum ] && [ "$scen" != noop ]; then flags+=(--checksum); fi
    out=$(rsync "${flags[@]}" --exclude=/.fedsync/ --exclude='.unison*' "$src/" "$dst/" 2>&1) \
        || die "verification rsync failed for $tool ($scen, rep $rep): $out"
    if [ -n "$out" ]; then
        printf '%s\n' "$out" | head -n 20 >&2
        die "WRONG RESULT: $tool's replica $dst differs from $src after scenario '$scen' (repetition $rep): $(printf '%s\n' "$out" | wc -l) differences (first ones above). Timings of a wrong result are meaningless; fix the tool (or report the bug) before benchmarking."
    fi
}

# Same page-cache treatment before every scenario round, for every tool: read the whole
# source (data + metadata) and stat every entry of the twin and of this round's replicas.
warm() { # rep
    local rep=$1 args=(--data "$SRC" --meta "$SRC_F")
    [ -d "$RUN/r$rep" ] && args+=(--meta "$RUN/r$rep")
    local n
    n=$(find "$SRC" -type f | wc -l)
    python3 "$LIB" warm "${args[@]}" >"$RUN/logs/warm.last" || die "warming the page cache failed"
    say "  [rep $rep/$REPEAT] page cache warmed: find SRC -type f: $n files; $(cat "$RUN/logs/warm.last")"
}

# ------------------------------------------------------------------ meta
tool_version() {
    case "$1" in
        cp) cp --version | head -n1 ;;
        rsync) rsync --version | head -n1 ;;
        unison) unison -version 2>&1 | head -n1 ;;
        rclone) rclone --config "" version 2>&1 | head -n1 ;;
        fedsync) "$FEDSYNC" --version 2>/dev/null | head -n1 || echo "unknown" ;;
    esac
}
META="$RUN/meta.json"
{
    for t in "${TOOL_LIST[@]}"; do printf '%s\t%s\n' "$t" "$(tool_version "$t" || echo unknown)"; done
} >"$RUN/versions.tsv"
GIT_REV=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "none")
DATE="$DATE" FILES="$FILES" MB="$MB" SEED="$SEED" REPEAT="$REPEAT" CHANGED="$CHANGED" \
TOOLS="${TOOL_LIST[*]}" FLUSH="$FLUSH" VERIFY="$VERIFY" TREE="$TREE" TREE_INFO="$TREE_INFO" \
SETTLE="$SETTLE" PROBE_MAX="$PROBE_MAX" FEDSYNC_BIN="${FEDSYNC_ORIG:-}" FEDSYNC_SHA="${FEDSYNC_SHA:-}" GIT_REV="$GIT_REV" VERSIONS="$RUN/versions.tsv" RUN_DIR="$RUN" \
python3 - "$META" <<'PY' || die "writing meta failed"
import json, os, platform, sys
e = os.environ
versions = {}
with open(e["VERSIONS"]) as f:
    for line in f:
        k, _, v = line.rstrip("\n").partition("\t")
        versions[k] = v
mem_kb = 0
try:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
except OSError:
    pass
meta = {
    "date": e["DATE"], "files": int(e["FILES"]), "mb": int(e["MB"]), "seed": int(e["SEED"]),
    "repeat": int(e["REPEAT"]), "changed": int(e["CHANGED"]), "tools": e["TOOLS"].split(),
    "flush": e["FLUSH"] == "1", "verify": e["VERIFY"],
    "settle": int(e["SETTLE"]), "probe_max": float(e["PROBE_MAX"]), "tree_dir": e["TREE"],
    "tree": json.loads(e["TREE_INFO"]), "fedsync_binary": e["FEDSYNC_BIN"], "fedsync_sha256_prefix": e["FEDSYNC_SHA"],
    "git_rev": e["GIT_REV"], "versions": versions, "run_dir": e["RUN_DIR"],
    "machine": {"kernel": platform.release(), "cpus": os.cpu_count(), "mem_mb": mem_kb // 1024},
}
with open(sys.argv[1], "w") as f:
    json.dump(meta, f, indent=2)
PY

# ------------------------------------------------------------------ the rounds
T_START=$EPOCHREALTIME
for ((rep = 1; rep <= REPEAT; rep++)); do
    # ABBA: forward on odd repetitions, reversed on even ones.
    order=()
    if ((rep % 2 == 1)); then
        order=("${TOOL_LIST[@]}")
    else
        for ((i = ${#TOOL_LIST[@]} - 1; i >= 0; i--)); do order+=("${TOOL_LIST[i]}"); done
    fi
    say ""
    say "== repetition $rep/$REPEAT, order: ${order[*]}"
    mkdir -p "$RUN/r$rep"

    # 1. first sync into an empty replica (cp -a needs the target not to exist).
    warm "$rep"
    settle "$rep" first
    for t in "${order[@]}"; do
        [ "$t" = cp ] || mkdir -p "$(dst_of "$t" "$rep")"
        timed first "$t" "$rep"
        verify first "$t" "$rep"
    done

    # 2. no-op: the same command again on the already-synced pair (cp -a has no such mode).
    warm "$rep"
    settle "$rep" noop
    for t in "${order[@]}"; do
        [ "$t" = cp ] && continue
        timed noop "$t" "$rep"
        verify noop "$t" "$rep"
    done

    # 2b. the same no-op again: the steady state (unison's first no-op after a first sync
    #     still rewrites its archive).
    for t in "${order[@]}"; do
        [ "$t" = cp ] && continue
        timed noop2 "$t" "$rep"
        verify noop "$t" "$rep"
    done

    # 3. CHANGED files rewritten in the source (same change for every tool: each tool's
    #    replica of this repetition is at the old state), then each tool syncs again.
    python3 "$LIB" mutate "$SRC" "$SRC_F" --manifest "$MANIFEST" --count "$CHANGED" \
        --seed $((SEED * 1000 + rep)) >/dev/null || die "changing $CHANGED files failed"
    say "  [rep $rep/$REPEAT] rewrote $CHANGED files in the source (new content, size +-1..64 bytes, mtime now)"
    warm "$rep"
    settle "$rep" changed100
    for t in "${order[@]}"; do
        [ "$t" = cp ] && continue
        timed changed100 "$t" "$rep"
        verify changed100 "$t" "$rep"
    done
done
T_END=$EPOCHREALTIME
us=$(( ${T_END/./} - ${T_START/./} ))
say ""
say "bench: all rounds done in $((us / 1000000)) s; every replica was verified against its source ($VERIFY)"

# ------------------------------------------------------------------ report
python3 "$LIB" report "$SAMPLES" --meta "$META" --out "$RESULT_JSON" --table "$RESULT_TXT" \
    || die "report failed"
mkdir -p "$BENCH_DIR/results/local-$DATE-logs"
cp -a "$RUN/logs/." "$SAMPLES" "$META" "$BENCH_DIR/results/local-$DATE-logs/"
say "bench: results: $RESULT_JSON"
say "bench: table:   $RESULT_TXT   (logs: $BENCH_DIR/results/local-$DATE-logs/)"

if [ "$KEEP" = 1 ]; then
    say "bench: KEEP=1: replicas left in $RUN (remove later with: BENCH_DIR=$BENCH_DIR bash $0 clean)"
else
    # Deleting ~FILES x tools x REPEAT files takes long on discard-mounted disks; do it in
    # the background at idle I/O priority. The next run waits for the disk to settle.
    if command -v setsid >/dev/null 2>&1; then
        setsid nohup ionice -t -c3 rm -rf "$RUN" >/dev/null 2>&1 </dev/null &
        say "bench: deleting the replicas in $RUN in the background (pid $!; KEEP=1 leaves them; the source tree is kept for reuse)"
    else
        say "bench: deleting the replicas in $RUN (KEEP=1 leaves them; the source tree is kept for reuse)"
        rm -rf "$RUN"
    fi
fi
