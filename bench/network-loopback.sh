#!/usr/bin/env bash
# Throughput of one remote channel through the TCP transport (crates/network):
# `(u64, u64)` records in batches, a producer thread to a consumer thread,
# encoded, framed, written, read and decoded by the transport's runtime.
# Per round, interleaved: one transport that is its own peer (1 and 2 network
# threads), two transports (process 0 -> 1, as two processes), and the same
# through a plain local channel for comparison.
#
#   bash bench/network-loopback.sh            # 50M records, 3 rounds
#   RECORDS=10000000 RUNS=5 bash bench/network-loopback.sh
set -uo pipefail
cd "$(dirname "$0")/.."
RECORDS=${RECORDS:-50000000}
RUNS=${RUNS:-3}
BATCH=${BATCH:-1024}
CAPACITY=${CAPACITY:-16}
cargo build --release --locked -q -p flowstate-network --example loopback_bench || exit 1
B=${CARGO_TARGET_DIR:-target}/release/examples/loopback_bench
for r in $(seq 1 "$RUNS"); do
  echo "round $r, load $(cut -d' ' -f1-3 /proc/loadavg)"
  "$B" "$RECORDS" "$BATCH" "$CAPACITY" 1
  "$B" "$RECORDS" "$BATCH" "$CAPACITY" 1 pair
  "$B" "$RECORDS" "$BATCH" "$CAPACITY" 2
  "$B" "$RECORDS" "$BATCH" "$CAPACITY" 1 local
done
