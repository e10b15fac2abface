#!/usr/bin/env bash
# The RocksDB backend against the heap backend, in one run:
#
# 1. `keyed-count` (workload W, 1M keys, RECORDS records, parallelism 2): heap and
#    rocksdb without checkpoints, and rocksdb with incremental checkpoints every
#    10 s, alternating over RUNS rounds; records/s from the job's own
#    `job keyed-count finished ... rate=` line; every checksum must match.
# 2. The `native_snapshots` benchmark: incremental checkpoint bytes against a
#    full one (KEYS keys, 1% touched) and restore time of that state against
#    the read bandwidth of the same files, measured in the same run.
#
#   bash bench/rocksdb.sh
#   RECORDS=5000000 RUNS=1 KEYS=1000000 bash bench/rocksdb.sh
#
# Builds with `cargo build --release --workspace --all-features --all-targets`,
# linking the prebuilt RocksDB of scripts/rocksdb-lib.sh (respects
# CARGO_TARGET_DIR). Logs
# go to ${BENCH_LOG_DIR:-/tmp/flowstate-bench}.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

RECORDS=${RECORDS:-50000000}
RUNS=${RUNS:-2}
KEYS=${KEYS:-10000000}
log_dir=${BENCH_LOG_DIR:-/tmp/flowstate-bench}
mkdir -p "$log_dir"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
log="$log_dir/rocksdb-$stamp.log"
work=$(mktemp -d "${BENCH_DIR:-/tmp}/flowstate-rocksdb-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

case "$RECORDS" in
    50000000) expected=8881b5882a4dbaef ;;
    5000000) expected=3ada6211620c6f1f ;;
    2000000) expected=f612517c561877f1 ;;
    *) expected= ;;
esac

say() { echo "$*" | tee -a "$log"; }
say "# bench/rocksdb.sh $stamp"
say "# host: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); disk of $work: $(df -h "$work" | awk 'NR==2 {print $1, $2}')"
say "# git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- crates 2>/dev/null || echo ' (crates/ modified)')"
say "# RECORDS=$RECORDS RUNS=$RUNS KEYS=$KEYS"

bash scripts/install-build-deps.sh
eval "$(bash scripts/rocksdb-lib.sh)"
cargo build --release --locked --workspace --all-features --all-targets 2>&1 | tail -n 2 | tee -a "$log"
target_dir=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
flowstate_bin="$target_dir/release/flowstate"
bench_bin=$(ls -t "$target_dir"/release/deps/native_snapshots-* 2>/dev/null | grep -v '\.d$' | head -n 1)
[ -x "$flowstate_bin" ] && [ -x "$bench_bin" ] || { say "missing release binaries"; exit 1; }

field() { printf '%s\n' "$2" | tr ' ' '\n' | sed -n "s/^$1=//p" | head -n 1; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.6g\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

declare -A rates
configs="heap rocksdb rocksdb-incremental"
for round in $(seq 1 "$RUNS"); do
    for config in $configs; do
        rm -rf "$work/state" "$work/ck"
        case $config in
            heap) extra=(--checkpoint-interval off) ;;
            rocksdb) extra=(--checkpoint-interval off --state-backend rocksdb --state-dir "$work/state") ;;
            rocksdb-incremental) extra=(--checkpoint-interval 10s --checkpoint-dir "$work/ck"
                --state-backend rocksdb --incremental --state-dir "$work/state") ;;
        esac
        out=$("$flowstate_bin" run keyed-count --records "$RECORDS" --parallelism 2 "${extra[@]}" 2>"$work/err")
        finished=$(grep 'job keyed-count finished' "$work/err" | tail -n 1)
        rate=$(field rate "$finished")
        checksum=$(field checksum "$out")
        if [ -n "$expected" ] && [ "$checksum" != "$expected" ]; then
            say "round $round $config: checksum $checksum, expected $expected"; exit 1
        fi
        checkpoints=$(grep ' checkpoints' "$work/err" | tail -n 1 | sed 's/.*INFO //')
        say "round $round $config: rate=$rate records/s checksum=$checksum ${checkpoints:+[$checkpoints]}"
        rates[$config]="${rates[$config]:-} $rate"
    done
done
heap=$(median ${rates[heap]})
for config in $configs; do
    m=$(median ${rates[$config]})
    say "SUMMARY keyed-count p=2 $config: median $m records/s ($(awk -v a="$m" -v b="$heap" 'BEGIN { printf "%.3f", a / b }')x heap)"
done

say "# native_snapshots: KEYS=$KEYS VALUE_BYTES=100 TOUCH_PERCENT=1"
KEYS=$KEYS BENCH_DIR="$work" "$bench_bin" --bench 2>&1 | tee -a "$log"
say "# log: $log"
