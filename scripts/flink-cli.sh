#!/usr/bin/env bash
# Installs Apache Flink's command-line client for the test that drives flowstate
# jobs with it (crates/cli/tests/flink_cli.rs: `flink list/savepoint/stop/cancel`).
#
#   eval "$(scripts/flink-cli.sh)"   # then: cargo test -p flowstate-cli --test flink_cli
#
# The client is `bin/flink` of the Flink distribution inside the PyFlink package
# (apache-flink $FLINK_VERSION, which pulls apache-flink-libraries with the jars),
# pip-installed once per machine into a virtualenv at $FLOWSTATE_TOOLS_DIR/flink-venv
# (default $HOME/.cache/flowstate-tools/flink-venv; a download of about 0.5 GB,
# about a minute on a fast link). It runs on Java 17, which must be installed
# (Debian: openjdk-17-jre-headless). Prints `export` lines for the caller to
# eval: FLOWSTATE_FLINK_CLI (the client) and FLOWSTATE_REQUIRE_FLINK_CLI=1 (the
# test must then not be skipped). Progress and errors go to stderr; exits
# non-zero with a message if any step fails.
set -euo pipefail

FLINK_VERSION=2.3.0
TOOLS_DIR="${FLOWSTATE_TOOLS_DIR:-$HOME/.cache/flowstate-tools}"
VENV="$TOOLS_DIR/flink-venv"

say() { echo "flink-cli: $*" >&2; }
die() { say "error: $*"; exit 1; }

command -v java >/dev/null || die "java (17) is needed: apt-get install openjdk-17-jre-headless"
# PyFlink 2.3 supports Python 3.9 to 3.12.
PYTHON=""
for candidate in python3.11 python3.12 python3.10 python3.9 python3; do
    if command -v "$candidate" >/dev/null; then PYTHON="$candidate"; break; fi
done
[[ -n "$PYTHON" ]] || die "python3 (3.9 to 3.12) is needed to install PyFlink"

installed_version() { "$VENV/bin/pip" show apache-flink 2>/dev/null | awk '/^Version/{print $2}'; }

if [[ ! -x "$VENV/bin/python" || "$(installed_version)" != "$FLINK_VERSION" ]]; then
    say "installing apache-flink $FLINK_VERSION into $VENV (a download of about 0.5 GB)"
    started=$(date +%s)
    rm -rf "$VENV"
    mkdir -p "$TOOLS_DIR"
    "$PYTHON" -m venv "$VENV" || die "cannot create a virtualenv with $PYTHON (Debian: apt-get install python3-venv)"
    "$VENV/bin/pip" install -q "apache-flink==$FLINK_VERSION" || die "pip install apache-flink==$FLINK_VERSION failed"
    say "installed in $(( $(date +%s) - started ))s"
fi

CLI=$(ls "$VENV"/lib/python3*/site-packages/pyflink/bin/flink 2>/dev/null | head -1)
[[ -n "$CLI" && -x "$CLI" ]] || die "no pyflink/bin/flink under $VENV"
echo "export FLOWSTATE_FLINK_CLI='$CLI' FLOWSTATE_REQUIRE_FLINK_CLI=1"
