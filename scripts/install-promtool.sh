#!/usr/bin/env bash
# Installs promtool, Prometheus's own checker of the text exposition format,
# for the test of `GET /metrics` (crates/cli/tests/metrics.rs): Debian's
# `prometheus` package ships it (about 1-2 minutes once per machine; nothing
# is started). Installed with apt-get (through sudo when not root) unless
# promtool is already on the PATH. Progress and errors go to stderr; exits
# non-zero with a message if the install fails.
set -euo pipefail

say() { echo "install-promtool: $*" >&2; }

if command -v promtool >/dev/null 2>&1; then
    exit 0
fi
SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    SUDO=(sudo)
fi
say "installing Debian's prometheus package (for promtool)"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 \
    || { say "error: apt-get update failed"; exit 1; }
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends prometheus >&2 \
    || { say "error: apt-get install prometheus failed"; exit 1; }
# The package may start its server as a service; the tests need only the tool.
command -v promtool >/dev/null 2>&1 || { say "error: no promtool after the install"; exit 1; }
