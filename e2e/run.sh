#!/usr/bin/env bash
# End-to-end browser test of `fedsync ui` (issue 7): Debian's chromium driven by
# playwright-core (no browser download). Screenshots go to target/ui-screenshots/.
#
#   bash e2e/run.sh            # needs node >= 20, npm, chromium (apt-get install nodejs npm chromium)
#   CHROMIUM=/path/to/chrome FEDSYNC_BIN=/path/to/fedsync bash e2e/run.sh
#
# Without node, npm or chromium it prints a loud SKIPPED line and exits 0.
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd .. && pwd)

skip() {
  echo "=================================================================="
  echo "SKIPPED: e2e browser test of fedsync ui: $*"
  echo "=================================================================="
  exit 0
}

command -v node >/dev/null 2>&1 || skip "node is not installed (apt-get install nodejs npm)"
command -v npm >/dev/null 2>&1 || skip "npm is not installed (apt-get install npm)"
major=$(node -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 20 ] || skip "node $(node --version) is too old (playwright-core needs 20 or newer)"
export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
[ -x "$CHROMIUM" ] || skip "no chromium at $CHROMIUM (apt-get install chromium, or set CHROMIUM)"

export FEDSYNC_BIN=${FEDSYNC_BIN:-$root/target/debug/fedsync}
if [ ! -x "$FEDSYNC_BIN" ]; then
  echo "== building $FEDSYNC_BIN"
  (cd "$root" && cargo build -p fedsync --bin fedsync)
fi

echo "== npm install (playwright-core only; no browser download)"
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund

mkdir -p "$root/target/ui-screenshots"
echo "== e2e: chromium $("$CHROMIUM" --version 2>/dev/null || echo '?'), node $(node --version)"
node --test resolve.spec.js
