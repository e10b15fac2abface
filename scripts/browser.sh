#!/usr/bin/env bash
# Installs what the web UI's browser test (crates/cli/tests/web_ui.rs) needs:
# Debian's Chromium and the Node package that drives it (playwright-core, the
# library only: it never downloads a browser of its own).
#
#   eval "$(scripts/browser.sh)"   # then: cargo test -p flowstate-cli --test web_ui
#
# Chromium: installed with apt-get (through sudo when not root) unless
# /usr/bin/chromium is there; Node.js (node and npm) the same way unless `node`
# is on the PATH. playwright-core: `npm ci` of crates/cli/tests/web_ui's
# package-lock.json into $FLOWSTATE_TOOLS_DIR/web-ui/<lock hash>/ (default
# $HOME/.cache/flowstate-tools/web-ui/...), once per lock file. Prints export
# lines for the caller to eval (where the modules and the browser are, and
# FLOWSTATE_REQUIRE_BROWSER=1 so that the test fails instead of skipping).
# Progress and errors go to stderr; exits non-zero with a message if a step fails.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

TOOLS_DIR="${FLOWSTATE_TOOLS_DIR:-$HOME/.cache/flowstate-tools}"
LOCK=crates/cli/tests/web_ui/package-lock.json
CHROMIUM=/usr/bin/chromium

say() { echo "browser: $*" >&2; }
die() { say "error: $*"; exit 1; }

missing=()
[[ -x "$CHROMIUM" ]] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if (( ${#missing[@]} )); then
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and there is no apt-get; install them by hand"
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo=sudo
    say "installing ${missing[*]} with apt-get (a minute or two, once)"
    started=$(date +%s)
    $sudo apt-get update -qq >&2 || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
        || die "apt-get install ${missing[*]} failed"
    say "installed in $(( $(date +%s) - started ))s"
fi
[[ -x "$CHROMIUM" ]] || die "$CHROMIUM is missing after the install"

hash=$(sha256sum "$LOCK" | cut -c1-16)
DIR="$TOOLS_DIR/web-ui/$hash"
if [[ ! -f "$DIR/node_modules/playwright-core/package.json" ]]; then
    say "installing playwright-core (npm ci of $LOCK) into $DIR"
    rm -rf "$DIR"
    mkdir -p "$DIR"
    cp crates/cli/tests/web_ui/package.json "$LOCK" "$DIR/"
    # --ignore-scripts: nothing runs at install time (playwright-core has no
    # install script and must not fetch browsers anyway).
    (cd "$DIR" && npm ci --ignore-scripts --no-audit --no-fund >&2) || { rm -rf "$DIR"; die "npm ci failed"; }
fi

cat <<EOF2
export FLOWSTATE_WEB_UI_NODE_MODULES=$DIR/node_modules
export FLOWSTATE_CHROMIUM=$CHROMIUM
export FLOWSTATE_REQUIRE_BROWSER=1
EOF2
