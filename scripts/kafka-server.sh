#!/usr/bin/env bash
# Starts a local Kafka-protocol broker (tansu, memory storage) for the Kafka
# connector tests (crates/kafka).
#
#   eval "$(scripts/kafka-server.sh)"   # then: cargo test -p flowstate-kafka
#   kill "$KAFKA_SERVER_PID"            # when done
#
# Installs tansu 0.6.0 (with its `dynostore` feature, which holds the memory
# storage engine) with cargo into $FLOWSTATE_TOOLS_DIR/tansu (default
# $HOME/.cache/flowstate-tools/tansu) unless that very version is already there
# (several minutes on two cores, once), starts `tansu broker` on 127.0.0.1 at a
# free port with the memory storage engine (every start is empty; topics must be
# created explicitly, e.g. with flowstate_kafka::create_topic or
# `tansu topic create NAME --partitions N --broker tcp://127.0.0.1:PORT`), waits
# until the port answers (at most FLOWSTATE_KAFKA_WAIT seconds, default 30), and
# prints `export` lines for the caller to eval. Progress and errors go to
# stderr; stdout carries only the export lines. Exits non-zero with a message if
# any step fails.
#
# Known tansu 0.6 limitation: it reports a partition's latest offset (the high
# watermark) wrongly; tests bound their reads by record counts or end offsets
# they know, never by the broker's watermarks.
set -euo pipefail

TANSU_VERSION=0.6.0
TOOLS_DIR="${FLOWSTATE_TOOLS_DIR:-$HOME/.cache/flowstate-tools}"
ROOT="$TOOLS_DIR/tansu"
BIN="$ROOT/bin/tansu"
WAIT_SECS="${FLOWSTATE_KAFKA_WAIT:-30}"

say() { echo "kafka-server: $*" >&2; }
die() { say "error: $*"; exit 1; }

installed_version() { "$BIN" --version 2>/dev/null | awk '{print $2}'; }

if [[ ! -x "$BIN" || "$(installed_version)" != "$TANSU_VERSION" ]]; then
    command -v cargo >/dev/null || die "cargo is needed to install tansu"
    say "installing tansu $TANSU_VERSION into $ROOT (takes several minutes)"
    started=$(date +%s)
    # A test broker needs no peak speed: a cheaper release profile (no LTO, more
    # codegen units, opt-level 1, no debug info) shortens the one-time build.
    CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
        CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_DEBUG=0 \
        cargo install --locked "tansu@$TANSU_VERSION" --features dynostore --root "$ROOT" >&2 \
        || die "cargo install tansu@$TANSU_VERSION failed"
    say "installed in $(( $(date +%s) - started ))s"
fi
[[ -x "$BIN" ]] || die "$BIN is missing after the install"

# A free port: bind port 0 and read back what the kernel chose.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null) \
    || port=$(( 20000 + RANDOM % 20000 ))

log=$(mktemp "${TMPDIR:-/tmp}/flowstate-kafka.XXXXXX.log")

# nohup: the server outlives this script (and a hang-up of its terminal).
nohup "$BIN" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "memory://tansu/" \
    >"$log" 2>&1 </dev/null &
pid=$!

port_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
deadline=$(( $(date +%s) + WAIT_SECS ))
until port_answers; do
    if ! kill -0 "$pid" 2>/dev/null; then
        die "tansu exited before answering on 127.0.0.1:$port; its log ($log): $(tail -n 20 "$log" 2>/dev/null)"
    fi
    if (( $(date +%s) >= deadline )); then
        kill "$pid" 2>/dev/null || true
        die "tansu did not answer on 127.0.0.1:$port within ${WAIT_SECS}s; its log ($log): $(tail -n 20 "$log" 2>/dev/null)"
    fi
    sleep 0.2
done
say "tansu $TANSU_VERSION (pid $pid) serves Kafka on 127.0.0.1:$port (memory storage), log $log"

cat <<EOF2
export FLOWSTATE_TEST_KAFKA_BROKERS=127.0.0.1:$port
export FLOWSTATE_REQUIRE_KAFKA=1
export KAFKA_SERVER_PID=$pid
EOF2
