#!/usr/bin/env bash
# Watch latency: the time from a write on one replica to the content being in place on the
# other while `fedsync watch` runs (SPEC section 9: median <= 1 s local, <= 2 s over ssh).
#
#   bash bench/latency.sh              local and ssh (private sshd on 127.0.0.1)
#   SCENARIOS=local bash bench/latency.sh
#
# local: two folders; writes alternate between them (a -> b, b -> a).
# ssh:   a local folder and ssh://$USER@127.0.0.1:PORT/...: first writes on the local side
#        (ssh a->b: local events, the run pushes over the watcher's one agent connection),
#        then writes on the remote side (ssh b->a: the agent's own events cross the same
#        connection, the run pulls). One result line per direction.
# Each sample: write a new small file (unique content), poll the other side every 2 ms
# until the file has that content, then wait a second of quiet before the next write.
# The watcher runs with its defaults (debounce, interval) unless the knobs say otherwise.
#
# Knobs (environment): N (samples per scenario, 20), FEDSYNC (target/release/fedsync),
# BENCH_DIR (/tmp/fedsync-bench-latency), SCENARIOS ("local ssh"), KEEP (0),
# SSH_MUX (0; 1: the script opens one ssh master connection (ControlMaster) that every
# run of the watcher reuses, i.e. without the per-run connection setup),
# FEDSYNC_WATCH_DEBOUNCE_MS (the watcher's own default when unset).
# Needs: python3; for ssh: sshd + ssh + ssh-keygen (openssh-server openssh-client).
set -euo pipefail
export LC_ALL=C
unset FEDSYNC_SSH

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
N=${N:-20}
FEDSYNC=${FEDSYNC:-$REPO/target/release/fedsync}
BENCH_DIR=${BENCH_DIR:-/tmp/fedsync-bench-latency}
SCENARIOS=${SCENARIOS:-"local ssh"}
KEEP=${KEEP:-0}

say() { printf '%s\n' "$*"; }
die() { printf 'latency: ERROR: %s\n' "$*" >&2; exit 1; }

command -v python3 >/dev/null 2>&1 || die "missing python3"
[ -x "$FEDSYNC" ] || die "no fedsync at $FEDSYNC (cargo build --release -p fedsync, or FEDSYNC=...)"

RUN="$BENCH_DIR/run-$(date +%Y%m%d-%H%M%S)-$$"
mkdir -p "$RUN"
cp "$FEDSYNC" "$RUN/fedsync"
FEDSYNC="$RUN/fedsync"
WATCH_PID=""
SSHD_PID=""
cleanup() {
    [ -n "$WATCH_PID" ] && kill "$WATCH_PID" 2>/dev/null && wait "$WATCH_PID" 2>/dev/null || true
    [ -n "$SSHD_PID" ] && kill "$SSHD_PID" 2>/dev/null || true
    if [ "$KEEP" = 1 ]; then say "latency: kept $RUN"; else rm -rf "$RUN"; fi
}
trap cleanup EXIT

# measure NAME DIR_A DIR_B DIRECTIONS: the samples, then one result line.
measure() {
    python3 - "$@" "$N" <<'EOF'
import os, statistics, sys, time
name, a, b, directions, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
sides = {"ab": (a, b), "ba": (b, a)}
order = directions.split(",")
samples = []
for i in range(n):
    src, dst = sides[order[i % len(order)]]
    rel = os.path.join("lat", f"{name.replace(' ', '').replace('>', '')}-s{i:04d}.txt")
    data = f"sample {i} {time.time_ns()}\n".encode()
    os.makedirs(os.path.join(src, "lat"), exist_ok=True)
    t0 = time.monotonic()
    with open(os.path.join(src, rel), "wb") as f:
        f.write(data)
    deadline = t0 + 60
    target = os.path.join(dst, rel)
    while True:
        try:
            with open(target, "rb") as f:
                if f.read() == data:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"{name}: sample {i} did not arrive within 60 s")
        time.sleep(0.002)
    samples.append(time.monotonic() - t0)
    time.sleep(1.0)
s = sorted(samples)
p95 = s[min(len(s) - 1, max(0, round(0.95 * len(s)) - 1))]
print(f"{name:<8} n={len(s):<3} median {statistics.median(s):6.3f} s   p95 {p95:6.3f} s   "
      f"min {s[0]:6.3f} s   max {s[-1]:6.3f} s")
EOF
}

# start_watch NAME: fedsync watch in the background, back when its first run is over.
start_watch() {
    "$FEDSYNC" watch "$1" >"$RUN/watch-$1.log" 2>&1 &
    WATCH_PID=$!
    local health="$FEDSYNC_HOME/state/$1.watch.json"
    for _ in $(seq 600); do
        if [ -f "$health" ] && python3 -c 'import json,sys; h=json.load(open(sys.argv[1])); sys.exit(0 if h["pairs"] and all(p["state"] != "starting" for p in h["pairs"]) else 1)' "$health" 2>/dev/null; then
            return 0
        fi
        kill -0 "$WATCH_PID" 2>/dev/null || { cat "$RUN/watch-$1.log" >&2; die "watch exited"; }
        sleep 0.1
    done
    die "watch did not finish its first run in 60 s"
}
stop_watch() {
    kill -TERM "$WATCH_PID"
    wait "$WATCH_PID" || die "watch exited with $? after SIGTERM (expected 0)"
    WATCH_PID=""
}

export FEDSYNC_HOME="$RUN/home"
mkdir -p "$FEDSYNC_HOME/profiles"
say "latency: fedsync $("$FEDSYNC" --version), $N samples per scenario, debounce ${FEDSYNC_WATCH_DEBOUNCE_MS:-default}, ssh master connection ${SSH_MUX:-0}"

for sc in $SCENARIOS; do
    case $sc in
    local)
        mkdir -p "$RUN/local/a" "$RUN/local/b"
        echo seed >"$RUN/local/a/seed.txt"
        "$FEDSYNC" -q init lat-local "$RUN/local/a" "$RUN/local/b" >/dev/null
        start_watch lat-local
        measure local "$RUN/local/a" "$RUN/local/b" "ab,ba"
        stop_watch
        ;;
    ssh)
        for c in /usr/sbin/sshd ssh ssh-keygen; do
            command -v "$c" >/dev/null 2>&1 || die "missing $c: apt-get install -y openssh-server openssh-client"
        done
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
        mkdir -p "$RUN/ssh/a" "$RUN/ssh/b"
        echo seed >"$RUN/ssh/a/seed.txt"
        SSH_BASE="-i $D/user_key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR -p $PORT"
        MUX=""
        if [ "${SSH_MUX:-0}" = 1 ]; then
            # One master connection started here; fedsync's ssh commands only use it.
            # shellcheck disable=SC2086
            ssh -M -N -f -o ControlPath="$D/mux" $SSH_BASE "$USER_NAME@127.0.0.1"
            MUX="-o ControlMaster=no -o ControlPath=$D/mux "
        fi
        cat >"$FEDSYNC_HOME/profiles/lat-ssh.toml" <<EOF
ssh = "ssh $MUX$SSH_BASE"
remote_cmd = "$FEDSYNC"
[replicas]
a = "$RUN/ssh/a"
b = "ssh://$USER_NAME@127.0.0.1:$PORT$RUN/ssh/b"
EOF
        start_watch lat-ssh
        measure "ssh a->b" "$RUN/ssh/a" "$RUN/ssh/b" "ab"
        measure "ssh b->a" "$RUN/ssh/a" "$RUN/ssh/b" "ba"
        stop_watch
        # One agent for the whole watch (no ssh per run).
        AGENTS=$(grep -c 'connected again' "$RUN/watch-lat-ssh.log" || true)
        say "ssh: agent connection made again $AGENTS time(s) during the measurement"
        [ -S "$D/mux" ] && ssh -O exit -o ControlPath="$D/mux" "$USER_NAME@127.0.0.1" 2>/dev/null || true
        kill "$SSHD_PID" 2>/dev/null || true
        SSHD_PID=""
        ;;
    *) die "unknown scenario $sc (local, ssh)" ;;
    esac
done
