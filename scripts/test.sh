#!/usr/bin/env bash
# The test suite: `bash scripts/test.sh` from anywhere in the repository.
#
# Installs what the suite needs, then runs every test of the workspace, with
# every feature (the RocksDB backend included), in one profile (debug; RocksDB's
# C++ is optimised in it, see Cargo.toml). Extra arguments go to `cargo test` (e.g. a test name filter
# after `--`). Performance is measured by benchmarks (bench/, crates/*/benches),
# not here.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# What the suite needs beyond a Rust toolchain is installed and started here, so
# that a newcomer and CI need only this one command: a local S3-compatible server
# (s3s-fs, installed once into ~/.cache/flowstate-tools) for the checkpoint
# storage tests, a Kafka-protocol broker (tansu) and a throwaway PostgreSQL
# server for the connectors, an etcd server for job manager election, Apache Flink's CLI (PyFlink) for the REST
# compatibility test and a headless Chromium for the web UI's test; tests that
# need one of them must then not be skipped
# (FLOWSTATE_REQUIRE_S3/_KAFKA/_PG/_FLINK_CLI/_BROWSER/_ETCD=1). All servers are stopped on exit.
if ! command -v cargo >/dev/null 2>&1; then
    echo "scripts/test.sh: cargo not found; install Rust with rustup first" >&2
    exit 1
fi

# RocksDB's bindings are generated with libclang at build time; its C++ is built
# once per machine into a static library that every build links.
bash scripts/install-build-deps.sh
eval "$(bash scripts/rocksdb-lib.sh)"

exports=$(bash scripts/s3-server.sh)
eval "$exports"
trap 'kill "$S3_SERVER_PID" 2>/dev/null || true; kill "${KAFKA_SERVER_PID:-}" 2>/dev/null || true; kill "${ETCD_SERVER_PID:-}" 2>/dev/null || true; [[ -z "${PG_SERVER_DIR:-}" ]] || bash scripts/postgres-server.sh stop "$PG_SERVER_DIR" || true' EXIT

# A Kafka-protocol broker (tansu, installed once into ~/.cache/flowstate-tools/tansu)
# for crates/kafka, whose tests then must not be skipped (FLOWSTATE_REQUIRE_KAFKA=1).
exports=$(bash scripts/kafka-server.sh)
eval "$exports"

# A throwaway PostgreSQL server (Debian's package, installed with apt-get when no
# server binaries are there) for crates/postgres, whose tests then must not be
# skipped (FLOWSTATE_REQUIRE_PG=1); stopped and deleted by the EXIT trap above.
exports=$(bash scripts/postgres-server.sh)
eval "$exports"

# Apache Flink's command-line client (PyFlink's bin/flink, pip-installed once into
# ~/.cache/flowstate-tools/flink-venv; needs Java 17) for the test that drives
# flowstate jobs with it, which then must not be skipped (FLOWSTATE_REQUIRE_FLINK_CLI=1).
exports=$(bash scripts/flink-cli.sh)
eval "$exports"

# Debian's Chromium (apt-get, once) and playwright-core (npm ci of
# crates/cli/tests/web_ui's lock file, once, into ~/.cache/flowstate-tools/web-ui)
# for the web UI's browser test (crates/cli/tests/web_ui.rs), which then must not
# be skipped (FLOWSTATE_REQUIRE_BROWSER=1).
exports=$(bash scripts/browser.sh)
eval "$exports"

# A throwaway etcd server (Debian's etcd-server, installed with apt-get when no
# etcd is on the PATH) for the election of job managers (crates/cluster's leader
# tests, crates/cli/tests/standby.rs), which then must not be skipped
# (FLOWSTATE_REQUIRE_ETCD=1); stopped by the EXIT trap.
exports=$(bash scripts/etcd-server.sh)
eval "$exports"

# promtool (Debian's `prometheus` package, installed once per machine) checks
# the /metrics document of a running job (crates/cli/tests/metrics.rs), which
# then must not skip its check (FLOWSTATE_REQUIRE_PROMTOOL=1).
bash scripts/install-promtool.sh
export FLOWSTATE_REQUIRE_PROMTOOL=1

# The whole-job simulation (crates/sim), 2,000 seeds: real checkpointed jobs on a
# seeded scheduler with virtual time and injected faults, checked for exactly-once
# output. Its last line reports how often each fault point fired; a failing seed
# prints its replay command. It is single-threaded and runs beside the test suite
# (whose longest tests wait on throttled child processes), its output kept until
# the suite is done.
# (Every binary of the workspace, built with the suite's features: the suite
# needs them too, so nothing is built twice.)
sim_bin=$(cargo build --workspace --all-features --bins --locked --quiet --message-format=json |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "flowstate-sim":
        print(m["executable"])')
sim_log=$(mktemp)
"$sim_bin" --seeds "${FLOWSTATE_SIM_SEEDS:-2000}" >"$sim_log" 2>&1 &
sim_pid=$!
trap 'kill "$sim_pid" 2>/dev/null || true; rm -f "$sim_log"; kill "$S3_SERVER_PID" 2>/dev/null || true; kill "${KAFKA_SERVER_PID:-}" 2>/dev/null || true; kill "${ETCD_SERVER_PID:-}" 2>/dev/null || true; [[ -z "${PG_SERVER_DIR:-}" ]] || bash scripts/postgres-server.sh stop "$PG_SERVER_DIR" || true' EXIT

cargo test --workspace --all-features --locked "$@"

echo "==> simulation ($sim_bin --seeds ${FLOWSTATE_SIM_SEEDS:-2000}):"
sim_status=0
wait "$sim_pid" || sim_status=$?
cat "$sim_log"
if [ "$sim_status" -ne 0 ]; then
    echo "scripts/test.sh: the simulation failed (exit $sim_status)" >&2
    exit "$sim_status"
fi
