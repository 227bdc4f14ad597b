#!/usr/bin/env bash
# fedsync append benchmark (issue 3): a SIZE_MB log with APPEND_MB appended, synced by fedsync
# (merge = "append") side by side with `rsync -a` and `rsync -a --append-verify` on the same
# files, locally and (when sshd is installed) over ssh to a private sshd on 127.0.0.1.
#
#   bash bench/append.sh            run (defaults: 500 MB log, 1 MB appended, 3 rounds)
#   bash bench/append.sh clean      delete leftover run directories (results and the log are kept)
#
# Knobs (environment): SIZE_MB APPEND_MB REPEAT SEED SSH BUILD KEEP FEDSYNC BENCH_DIR.
# Measures per tool: wall time, bytes written to disk (wait4 ru_oublock of the tool's process
# tree; over ssh, of the remote end), bytes on the wire (ssh), the tool's own byte count.
# Needs: python3, rsync, cmp; for the ssh part sshd + ssh. Installs nothing.
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SIZE_MB=${SIZE_MB:-500}
APPEND_MB=${APPEND_MB:-1}
REPEAT=${REPEAT:-3}
SEED=${SEED:-1}
SSH=${SSH:-auto}           # auto: the ssh part if sshd/ssh are installed; 1: required; 0: skip
BUILD=${BUILD:-1}          # 0: use the existing target/release/fedsync without building
KEEP=${KEEP:-0}            # 1: keep the run directory (replicas, logs, profiles)
FEDSYNC=${FEDSYNC:-$REPO/target/release/fedsync}
BENCH_DIR=${BENCH_DIR:-/tmp/fedsync-bench-append}
GEN_VERSION=1

say() { printf '%s\n' "$*"; }
note() { printf 'bench: %s\n' "$*" >&2; }
die() {
    printf 'bench: ERROR: %s\n' "$*" >&2
    if [ -n "${RUN:-}" ] && [ -d "${RUN:-}" ]; then
        KEEP=1
        printf 'bench: the run directory is left for inspection: %s (bash %s clean removes it)\n' \
            "$RUN" "$0" >&2
    fi
    exit 1
}

case "${1:-run}" in
    run) ;;
    clean) rm -rf "$BENCH_DIR/runs"; note "removed $BENCH_DIR/runs"; exit 0 ;;
    -h|--help|help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown mode '$1' (expected: run, clean)" ;;
esac
for v in SIZE_MB REPEAT SEED; do
    [[ ${!v} =~ ^[0-9]+$ ]] && [ "${!v}" -ge 1 ] || die "$v must be a positive integer (got '${!v}')"
done
[[ $APPEND_MB =~ ^[0-9]*\.?[0-9]+$ ]] || die "APPEND_MB must be a number (got '$APPEND_MB')"
case "$SSH" in auto|0|1) ;; *) die "SSH must be auto, 0 or 1" ;; esac

# ------------------------------------------------------------------ prerequisites
missing=()
for c in python3 rsync cmp; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
if [ "${#missing[@]}" -gt 0 ]; then
    die "missing: ${missing[*]}: apt-get install -y python3 rsync diffutils"
fi
if [ "$SSH" != 0 ]; then
    if [ -x /usr/sbin/sshd ] && command -v ssh >/dev/null && command -v ssh-keygen >/dev/null; then
        SSH=1
    elif [ "$SSH" = 1 ]; then
        die "the ssh part needs sshd and ssh: apt-get install -y openssh-server openssh-client"
    else
        note "ssh part skipped: no sshd/ssh (apt-get install -y openssh-server openssh-client)"
        SSH=0
    fi
fi
PY=$(python3 -c 'import sys; print(sys.executable)')   # no pyenv shim in the timed wrappers

mkdir -p "$BENCH_DIR/results" "$BENCH_DIR/runs"
if [ "$BUILD" = 1 ]; then
    (cd "$REPO" && cargo build --release -q) >"$BENCH_DIR/build.log" 2>&1 ||
        { tail -20 "$BENCH_DIR/build.log" >&2 || true; die "cargo build --release failed (BUILD=0 uses the existing binary)"; }
fi
[ -x "$FEDSYNC" ] || die "no fedsync at $FEDSYNC (cargo build --release, or FEDSYNC=...)"
if [ "$SSH" = 1 ] && ! "$FEDSYNC" serve --help >/dev/null 2>&1; then
    note "ssh part skipped: this fedsync has no 'serve' (remote agent)"
    SSH=0
fi

TOOLS=(fedsync rsync rsync-av)
[ "$SSH" = 1 ] && TOOLS+=(ssh-fedsync ssh-rsync ssh-rsync-av)

# Space: the source, one copy per tool, plus the growth (fedsync over ssh keeps each replaced
# file as a version) and some slack.
need_mb=$(( SIZE_MB * (2 + ${#TOOLS[@]}) + (SSH == 1 ? SIZE_MB * REPEAT : 0) + 1024 ))
have_mb=$(( $(df -Pk "$BENCH_DIR" | awk 'NR==2 {print $4}') / 1024 ))
[ "$have_mb" -ge "$need_mb" ] || die "$BENCH_DIR has $have_mb MB free, the run needs about $need_mb MB"

# ------------------------------------------------------------------ the log (generated once)
BASE="$BENCH_DIR/log-${SIZE_MB}m-s${SEED}-g${GEN_VERSION}.jsonl"
if [ ! -f "$BASE" ]; then
    note "generating the $SIZE_MB MB log once: $BASE"
    "$PY" "$HERE/appendlib.py" gen "$BASE" --mb "$SIZE_MB" --seed "$SEED"
fi

# ------------------------------------------------------------------ the run directory
RUN="$BENCH_DIR/runs/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RUN/bin" "$RUN/logs" "$RUN/home" "$RUN/src" "$RUN/dst"
cp "$FEDSYNC" "$RUN/bin/fedsync"               # a rebuild during the run changes nothing
cp "$HERE/appendlib.py" "$RUN/bin/appendlib.py"
BIN="$RUN/bin/fedsync"
LIB="$RUN/bin/appendlib.py"
SAMPLES="$RUN/samples.jsonl"
SSHD_PID=
cleanup() {
    if [ -n "$SSHD_PID" ]; then kill "$SSHD_PID" 2>/dev/null || true; fi
    if [ "$KEEP" = 1 ]; then
        note "kept $RUN"
    else
        # After the timed runs only, in the background at idle priority: the disk crawls
        # for a while after a large deletion.
        (ionice -c3 nice -n 19 rm -rf "$RUN" >/dev/null 2>&1 &) || true
    fi
}
trap cleanup EXIT

# One source; fedsync syncs from hard-linked twins (same inode, so every append reaches them
# too) because it writes its .fedsync/ marker into its roots, which rsync would then copy.
SRC="$RUN/src/app.jsonl"
cp --reflink=never --preserve=mode,timestamps "$BASE" "$SRC"
for t in "${TOOLS[@]}"; do
    mkdir -p "$RUN/dst/$t"
    cp --reflink=never --preserve=mode,timestamps "$BASE" "$RUN/dst/$t/app.jsonl"
    case $t in *fedsync) mkdir -p "$RUN/src-$t"; ln "$SRC" "$RUN/src-$t/app.jsonl" ;; esac
done
sync

RULE=$'\n[[rule]]\npaths = ["*.jsonl"]\nmerge = "append"\n'
"$BIN" --home "$RUN/home" -q init local "$RUN/src-fedsync" "$RUN/dst/fedsync" >/dev/null
printf '%s' "$RULE" >>"$RUN/home/profiles/local.toml"

# ------------------------------------------------------------------ private sshd (ssh part)
# The same setup as bench/ssh.sh: own host and user keys, 127.0.0.1, a free high port. Both
# tools run ssh through the same relay (appendlib.py relay), which counts the bytes each way
# on ssh's stdin/stdout, and run their remote end under `appendlib.py measure`, which records
# that end's disk writes.
if [ "$SSH" = 1 ]; then
    D="$RUN/sshd"; mkdir -p "$D"; chmod 700 "$D"
    ssh-keygen -q -t ed25519 -N '' -f "$D/host_key"
    ssh-keygen -q -t ed25519 -N '' -f "$D/user_key"
    cp "$D/user_key.pub" "$D/authorized_keys"
    PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    ME=$(id -un)
    cat >"$D/sshd_config" <<EOF
Port $PORT
ListenAddress 127.0.0.1
HostKey $D/host_key
PidFile $D/sshd.pid
AuthorizedKeysFile $D/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
PubkeyAuthentication yes
PermitRootLogin yes
AllowUsers $ME
EOF
    mkdir -p /run/sshd 2>/dev/null || true
    /usr/sbin/sshd -D -e -f "$D/sshd_config" 2>"$D/sshd.log" &
    SSHD_PID=$!
    SSH_CMD="ssh -i $D/user_key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR -p $PORT"
    up=0
    for _ in $(seq 100); do
        if $SSH_CMD "$ME@127.0.0.1" true 2>/dev/null; then up=1; break; fi
        sleep 0.1
    done
    [ "$up" = 1 ] || { cat "$D/sshd.log" >&2; die "the private sshd on 127.0.0.1:$PORT does not answer"; }
    WIRE="$RUN/wire.log"
    REMOTE="$RUN/remote.jsonl"
    RELAY="$PY $LIB relay --log $WIRE -- $SSH_CMD"
    MEASURE="$PY $LIB measure --out $REMOTE --"
    RSYNC_REMOTE="$MEASURE $(command -v rsync)"
    cat >"$RUN/home/profiles/ssh.toml" <<EOF
ssh = "$RELAY"
remote_cmd = "$MEASURE $BIN"

[replicas]
a = "$RUN/src-ssh-fedsync"
b = "ssh://$ME@127.0.0.1$RUN/dst/ssh-fedsync"
$RULE
EOF
fi

# ------------------------------------------------------------------ one timed sync
# measured TOOL ROUND ORDER: run TOOL once under appendlib.py run (samples to $SAMPLES), check rc.
run_tool() { # tool round order out
    local t=$1 round=$2 order=$3 out=$4
    local log="$RUN/logs/$t-r$round.log"
    local -a cmd extra=()
    case $t in
        fedsync)      cmd=(env -u FEDSYNC_SSH "$BIN" --home "$RUN/home" --json sync local); kind=fedsync ;;
        rsync)        cmd=(rsync -a --stats "$RUN/src/" "$RUN/dst/rsync/"); kind=rsync ;;
        rsync-av)     cmd=(rsync -a --append-verify --stats "$RUN/src/" "$RUN/dst/rsync-av/"); kind=rsync ;;
        ssh-fedsync)  cmd=(env -u FEDSYNC_SSH "$BIN" --home "$RUN/home" --json sync ssh); kind=fedsync ;;
        ssh-rsync)    cmd=(rsync -a --stats -e "$RELAY" --rsync-path "$RSYNC_REMOTE"
                           "$RUN/src/" "$ME@127.0.0.1:$RUN/dst/ssh-rsync/"); kind=rsync ;;
        ssh-rsync-av) cmd=(rsync -a --append-verify --stats -e "$RELAY" --rsync-path "$RSYNC_REMOTE"
                           "$RUN/src/" "$ME@127.0.0.1:$RUN/dst/ssh-rsync-av/"); kind=rsync ;;
    esac
    case $t in ssh-*) extra=(--wire-log "$WIRE" --remote-out "$REMOTE") ;; esac
    "$PY" "$LIB" run --out "$out" --tool "$t" --round "$round" --order "$order" --log "$log" \
        --kind "$kind" "${extra[@]}" -- "${cmd[@]}" ||
        { tail -30 "$log" >&2 || true; die "$t (round $round) exited non-zero; log: $log"; }
}

# The target must equal the source: the same bytes, and nothing else beside it (no conflict
# copy), apart from fedsync's own .fedsync/ folder.
verify() { # tool round
    local t=$1 dst="$RUN/dst/$1"
    cmp -s "$SRC" "$dst/app.jsonl" || die "$t (round $2): the target differs from the source"
    local extra
    extra=$(cd "$dst" && find . -mindepth 1 -maxdepth 1 ! -name app.jsonl ! -name .fedsync)
    [ -z "$extra" ] || die "$t (round $2): unexpected entries in the target: $extra"
}

# Same page-cache state for everyone: read the source and every target in full.
warm() {
    local t
    cat "$SRC" >/dev/null
    for t in "${TOOLS[@]}"; do cat "$RUN/dst/$t/app.jsonl" >/dev/null; done
}

# ------------------------------------------------------------------ in sync first (untimed)
for t in "${TOOLS[@]}"; do
    run_tool "$t" 0 0 "$RUN/prepare.jsonl"
    verify "$t" 0
done

# ------------------------------------------------------------------ rounds
LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
appended=()
for round in $(seq "$REPEAT"); do
    before=$(stat -c %s "$SRC")
    "$PY" "$LIB" append "$SRC" --mb "$APPEND_MB" --seed "$SEED" --round "$round"
    appended+=($(( $(stat -c %s "$SRC") - before )))
    warm
    if (( round % 2 )); then order=("${TOOLS[@]}"); else
        order=(); for ((i = ${#TOOLS[@]} - 1; i >= 0; i--)); do order+=("${TOOLS[i]}"); done
    fi
    k=0
    for t in "${order[@]}"; do
        k=$((k + 1))
        sync                                  # one tool's dirty pages are not the next one's cost
        run_tool "$t" "$round" "$k" "$SAMPLES"
        verify "$t" "$round"
    done
done

# ------------------------------------------------------------------ report
LOAD_END=$(cut -d' ' -f1 /proc/loadavg)
STAMP=$(date +%Y%m%d-%H%M%S)
"$PY" - "$RUN/meta.json" <<EOF
import json, os, statistics, subprocess, sys, hashlib, platform
b = open("$BIN", "rb").read()
meta = {
    "date": "$(date '+%Y-%m-%d %H:%M:%S %Z')",
    "size_mb": $SIZE_MB, "append_mb": $APPEND_MB, "seed": $SEED, "repeat": $REPEAT,
    "base_bytes": os.path.getsize("$BASE"),
    "append_bytes": [${appended[*]/%/,}],
    "append_bytes_median": statistics.median([${appended[*]/%/,}]),
    "tools": "${TOOLS[*]}".split(),
    "fedsync_version": subprocess.run(["$BIN", "--version"], capture_output=True, text=True).stdout.split()[-1],
    "fedsync_sha": hashlib.sha256(b).hexdigest()[:12],
    "rsync_version": subprocess.run(["rsync", "--version"], capture_output=True, text=True).stdout.split()[2],
    "machine": "%s, %d cpus, %s" % (platform.platform(), os.cpu_count(),
        open("/proc/meminfo").readline().split(":")[1].strip()),
    "cpus": os.cpu_count(), "load_start": $LOAD_START, "load_end": $LOAD_END,
}
json.dump(meta, open(sys.argv[1], "w"), indent=2)
EOF
cp "$RUN/logs" -r "$BENCH_DIR/results/append-$STAMP-logs"
"$PY" "$LIB" report "$SAMPLES" --meta "$RUN/meta.json" \
    --out "$BENCH_DIR/results/append-$STAMP.json" --table "$BENCH_DIR/results/append-$STAMP.txt"
say "(results: $BENCH_DIR/results/append-$STAMP.{txt,json}, logs in append-$STAMP-logs/)"
