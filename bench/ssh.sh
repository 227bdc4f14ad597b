#!/usr/bin/env bash
# fedsync over ssh, side by side with rsync, through the same ssh and the same byte-counting
# wrapper, against a private sshd on 127.0.0.1 (own host key, own user key, a high port).
#
#   bash bench/ssh.sh          run (defaults: 200 MB edit file, 500 MB log, 10,000-file no-op)
#
# Scenarios (SPEC section 9, issue 4):
#   edit    one 1 KB edit inside a MB-sized random file: bytes on the wire and time
#   append  1 MB appended to a LOG_MB log (JSON lines): bytes on the wire and time
#   noop    FILES small files, nothing changed: time
#
# Knobs (environment): MB LOG_MB FILES REPEAT FEDSYNC BENCH_DIR KEEP SCENARIOS
# Needs: sshd + ssh (openssh-server openssh-client), rsync, python3.
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
MB=${MB:-200}
LOG_MB=${LOG_MB:-500}
FILES=${FILES:-10000}
REPEAT=${REPEAT:-3}
FEDSYNC=${FEDSYNC:-$REPO/target/release/fedsync}
BENCH_DIR=${BENCH_DIR:-/tmp/fedsync-bench-ssh}
KEEP=${KEEP:-0}
SCENARIOS=${SCENARIOS:-"edit append noop"}

say() { printf '%s\n' "$*"; }
die() { printf 'bench: ERROR: %s\n' "$*" >&2; exit 1; }

for c in /usr/sbin/sshd ssh ssh-keygen rsync python3; do
    command -v "$c" >/dev/null 2>&1 || die "missing $c: apt-get install -y openssh-server openssh-client rsync python3"
done
[ -x "$FEDSYNC" ] || die "no fedsync at $FEDSYNC (cargo build --release, or FEDSYNC=...)"

RUN="$BENCH_DIR/run-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RUN"
cp "$FEDSYNC" "$RUN/fedsync"
FEDSYNC="$RUN/fedsync"
cleanup() {
    [ -n "${SSHD_PID:-}" ] && kill "$SSHD_PID" 2>/dev/null || true
    if [ "$KEEP" = 1 ]; then say "bench: kept $RUN"; else rm -rf "$RUN"; fi
}
trap cleanup EXIT

# ------------------------------------------------------------------ private sshd
D="$RUN/sshd"; mkdir -p "$D"; chmod 700 "$D"
ssh-keygen -q -t ed25519 -N '' -f "$D/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$D/user_key"
cp "$D/user_key.pub" "$D/authorized_keys"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
USER_NAME=$(id -un)
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
AllowUsers $USER_NAME
EOF
mkdir -p /run/sshd 2>/dev/null || true
/usr/sbin/sshd -D -e -f "$D/sshd_config" 2>"$D/sshd.log" &
SSHD_PID=$!
for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$PORT),1)" 2>/dev/null && break
    sleep 0.1
done

# ------------------------------------------------------------------ the wire counter
# Both tools run ssh through this wrapper: it copies stdin -> ssh -> stdout and adds the
# bytes each way to $WIRE_LOG, so both are measured at the same place.
cat >"$RUN/countssh.py" <<'EOF'
import os, subprocess, sys, threading
log = os.environ.get("WIRE_LOG")
p = subprocess.Popen(["ssh"] + sys.argv[1:], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
counts = [0, 0]
def pump(src, dst, k, close):
    while True:
        b = os.read(src, 1 << 16)
        if not b:
            break
        counts[k] += len(b)
        try:
            os.write(dst, b) if isinstance(dst, int) else (dst.write(b), dst.flush())
        except OSError:
            break
    if close:
        try:
            dst.close()
        except Exception:
            pass
t1 = threading.Thread(target=pump, args=(0, p.stdin, 0, True), daemon=True)
t2 = threading.Thread(target=pump, args=(p.stdout.fileno(), 1, 1, False))
t1.start(); t2.start()
t2.join()
rc = p.wait()
if log:
    with open(log, "a") as f:
        f.write(f"{counts[0]} {counts[1]}\n")
sys.exit(rc)
EOF
SSH_OPTS="-i $D/user_key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR -p $PORT"
WRAP="python3 $RUN/countssh.py $SSH_OPTS"
export FEDSYNC_HOME="$RUN/home"
mkdir -p "$FEDSYNC_HOME/profiles"

# wire TOOL CMD...: run, print "seconds bytes_total"
timed() {
    local log="$RUN/wire.log"; : >"$log"
    local t0=$EPOCHREALTIME
    WIRE_LOG=$log "$@" >"$RUN/last.out" 2>&1 || { cat "$RUN/last.out" >&2; die "command failed: $*"; }
    local t1=$EPOCHREALTIME
    local bytes; bytes=$(awk '{s+=$1+$2} END {print s+0}' "$log")
    python3 -c "print(f'{$t1-$t0:.3f} $bytes')"
}
median() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:]]; print(f"{statistics.median(v):.3f}")' "$@"; }

rsync_to()   { timed rsync -a -e "$WRAP" "$1/" "$USER_NAME@127.0.0.1:$2/"; }
fedsync_to() {
    cat >"$FEDSYNC_HOME/profiles/$3.toml" <<EOF
ssh = "$WRAP"
remote_cmd = "$FEDSYNC"
[replicas]
a = "$1"
b = "ssh://$USER_NAME@127.0.0.1:$PORT$2"
EOF
    FEDSYNC_SSH= timed "$FEDSYNC" -q sync "$3"
}

declare -A RESULT
run_scenario() { # name prepare-fn change-fn
    local name=$1 prepare=$2 change=$3
    local S="$RUN/$name"; mkdir -p "$S/src-r" "$S/src-f" "$S/dst-r" "$S/dst-f"
    $prepare "$S/src-r"; cp -a "$S/src-r/." "$S/src-f/"
    rsync_to "$S/src-r" "$S/dst-r" >/dev/null
    fedsync_to "$S/src-f" "$S/dst-f" "$name" >/dev/null
    local rt=() rb=() ft=() fb=()
    for i in $(seq "$REPEAT"); do
        $change "$S/src-r" "$i"; $change "$S/src-f" "$i"
        read -r t b < <(rsync_to "$S/src-r" "$S/dst-r"); rt+=("$t"); rb+=("$b")
        read -r t b < <(fedsync_to "$S/src-f" "$S/dst-f" "$name"); ft+=("$t"); fb+=("$b")
    done
    cmp -s <(cd "$S/src-f" && find . -path ./.fedsync -prune -o -type f -print0 | sort -z | xargs -0 cat | md5sum) \
           <(cd "$S/dst-f" && find . -path ./.fedsync -prune -o -type f -print0 | sort -z | xargs -0 cat | md5sum) \
        || die "$name: fedsync's copy differs from its source"
    RESULT[$name]="$(median "${rt[@]}") $(median "${rb[@]}") $(median "${ft[@]}") $(median "${fb[@]}")"
    read -r a b c d <<<"${RESULT[$name]}"
    printf '%-7s rsync %8.3f s %12.0f B   fedsync %8.3f s %12.0f B   time x%.2f  bytes x%.3f\n' \
        "$name" "$a" "$b" "$c" "$d" "$(python3 -c "print($c/$a)")" "$(python3 -c "print($d/max($b,1))")"
}

prep_edit()   { head -c "$((MB << 20))" /dev/urandom >"$1/big.bin"; }
change_edit() { python3 - "$1/big.bin" "$2" <<'EOF'
import os, sys
p, i = sys.argv[1], int(sys.argv[2])
size = os.path.getsize(p)
with open(p, "r+b") as f:
    f.seek(size * i // 7)
    f.write(bytes((i * 37 + k) % 256 for k in range(1024)))
EOF
}
prep_append()   { python3 - "$1/app.jsonl" "$LOG_MB" <<'EOF'
import sys, json, random
r = random.Random(1)
with open(sys.argv[1], "w") as f:
    n = 0
    while n < int(sys.argv[2]) << 20:
        line = json.dumps({"i": n, "level": r.choice(["info", "warn"]), "msg": "%016x" % r.getrandbits(64) * 4}) + "\n"
        f.write(line); n += len(line)
EOF
}
change_append() { python3 - "$1/app.jsonl" "$2" <<'EOF'
import sys, json, random
r = random.Random(int(sys.argv[2]))
with open(sys.argv[1], "a") as f:
    n = 0
    while n < 1 << 20:
        line = json.dumps({"i": n, "run": int(sys.argv[2]), "msg": "%016x" % r.getrandbits(64) * 4}) + "\n"
        f.write(line); n += len(line)
EOF
}
prep_noop()   { python3 - "$1" "$FILES" <<'EOF'
import os, sys, random
r = random.Random(2)
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "d%02d" % (i % 97), "e%02d" % (i % 13))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%06d.txt" % i), "wb") as f:
        f.write(r.randbytes(r.randint(200, 6000)))
EOF
}
change_noop() { :; }

say "bench: sshd on 127.0.0.1:$PORT, fedsync $("$FEDSYNC" --version), rsync $(rsync --version | head -1 | awk '{print $3}'), repeat $REPEAT"
for s in $SCENARIOS; do
    case $s in
        edit) run_scenario edit prep_edit change_edit ;;
        append) run_scenario append prep_append change_append ;;
        noop) run_scenario noop prep_noop change_noop ;;
        *) die "unknown scenario $s" ;;
    esac
done
say "(medians of $REPEAT; bytes = both directions through the same ssh wrapper; x = fedsync / rsync)"
