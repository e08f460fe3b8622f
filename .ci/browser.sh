#!/usr/bin/env bash
# Browser tests of the web client: Debian's headless Chromium driven by
# playwright-core (browser-tests/), against the real server binary.
# Installs what it lacks (as root, on Debian): chromium, a CJK font for the
# screenshots, Node and npm; then the locked npm dependencies.
# Screenshots and server logs land in $CARGO_TARGET_DIR/browser-artifacts
# (target/browser-artifacts by default).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
# Without a CJK font the Chinese in the screenshots is drawn as boxes (the
# tests read the DOM text either way).
dpkg-query -W -f='${Status}' fonts-wqy-zenhei 2>/dev/null | grep -q 'ok installed' || need+=(fonts-wqy-zenhei)
if [ ${#need[@]} -gt 0 ]; then
  echo "browser: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
/usr/bin/chromium --version

(cd browser-tests && npm ci --no-audit --no-fund --loglevel=error)

cargo build --bin chatroom
target_dir="${CARGO_TARGET_DIR:-target}"
export CHATROOM_BIN
CHATROOM_BIN="$(cd "$target_dir" && pwd)/debug/chatroom"

cd browser-tests
node --test --test-concurrency=1 --test-reporter=spec chat.test.mjs history.test.mjs
