#!/usr/bin/env bash
# The synchronous pause with the Kafka sink (issue 12): `flowstate run
# kafka-count` reads workload W from one topic and writes every `key,count,sum`
# update into another through the Kafka sink (`--output-topic`, idempotent
# producer, at-least-once), with checkpoints every second, against one broker
# (tansu, memory storage, started by scripts/kafka-server.sh).
#
#   bash bench/kafka-sink.sh
#   RECORDS=5000000 RUNS=5 PARALLELISM=2 INTERVAL=1s bash bench/kafka-sink.sh
#
# Per run (fresh output topic and checkpoint directory) it prints records/s
# (the `job kafka-count finished ... rate=` log line), the checkpoint count,
# p50/max duration and the largest synchronous pause of any task
# (`sync_pause_max_us`, the `checkpoints` log line), and the number of records
# in the output topic (`flowstate consume --at-least`, which must be
# at least one per input record). Every run must end with the keyed-count
# checksum of the same records; a mismatch exits non-zero. Logs are kept under
# ${BENCH_LOG_DIR:-/tmp/flowstate-bench}.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

RECORDS=${RECORDS:-2000000}
KEYS=${KEYS:-1000000}
PARTITIONS=${PARTITIONS:-4}
RUNS=${RUNS:-3}
INTERVAL=${INTERVAL:-1s}
P=${PARALLELISM:-2}
log_dir=${BENCH_LOG_DIR:-/tmp/flowstate-bench}/kafka-sink-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$log_dir"
work=$(mktemp -d)

bash scripts/install-build-deps.sh
cargo build --release -q -p flowstate-cli --features kafka
bin=${CARGO_TARGET_DIR:-$root/target}/release/flowstate

eval "$(bash scripts/kafka-server.sh)"
trap 'kill "$KAFKA_SERVER_PID" 2>/dev/null || true; rm -rf "$work"' EXIT
brokers=$FLOWSTATE_TEST_KAFKA_BROKERS

field() { # field NAME LINE
    sed -n "s/.*[[:space:]]$1=\"\\{0,1\\}\\([^ \"]*\\).*/\\1/p" <<<"$2" | head -n1
}

echo "== $RECORDS records, $KEYS keys, $PARTITIONS partitions, p=$P, checkpoints every $INTERVAL, $RUNS runs; logs in $log_dir"
echo "   $(git log -1 --format='%h %cs' 2>/dev/null || true)$(git diff --quiet HEAD -- 2>/dev/null || echo ' (+ uncommitted changes)'); $(nproc) cores"
"$bin" produce --brokers "$brokers" --topic w --records "$RECORDS" --keys "$KEYS" \
    --partitions "$PARTITIONS" >/dev/null 2>"$log_dir/produce.err"
expected=$("$bin" run keyed-count --records "$RECORDS" --keys "$KEYS" --checkpoint-interval off \
    --rest off 2>/dev/null)

declare -a rates=() pauses=() p50s=()
for ((run = 1; run <= RUNS; run++)); do
    err="$log_dir/run-$run.err"
    rm -rf "$work/ck"
    echo "== run $run, loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
    out=$("$bin" run kafka-count --brokers "$brokers" --topic w --records "$RECORDS" \
        --output-topic "counts_$run" --parallelism "$P" \
        --checkpoint-interval "$INTERVAL" --checkpoint-dir "$work/ck" --rest off 2>"$err")
    if [ "$out" != "$expected" ]; then
        echo "kafka-count printed '$out', keyed-count '$expected' (log: $err)" >&2
        exit 1
    fi
    finished=$(grep 'job kafka-count finished' "$err")
    checkpoints=$(grep ' checkpoints ' "$err" || true)
    rate=$(field rate "$finished")
    pause=$(field sync_pause_max_us "$checkpoints")
    p50=$(printf '%.0f' "$(field p50_ms "$checkpoints")")
    written=$("$bin" consume --brokers "$brokers" --topic "counts_$run" --at-least "$RECORDS")
    written=$(field records " $written")
    if [ "$written" -lt "$RECORDS" ]; then
        echo "counts_$run holds $written records, fewer than the $RECORDS updates" >&2
        exit 1
    fi
    echo "   rate=$rate records/s secs=$(printf '%.2f' "$(field secs "$finished")") output_records=$written"
    echo "   checkpoints: completed=$(field completed "$checkpoints") failed=$(field failed "$checkpoints") p50_ms=$p50 max_ms=$(printf '%.0f' "$(field max_ms "$checkpoints")") sync_pause_max_us=$pause"
    rates+=("$rate")
    pauses+=("$pause")
    p50s+=("$p50")
done

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
max() { printf '%s\n' "$@" | sort -g | tail -n1; }
echo "== summary: p=$P records=$RECORDS interval=$INTERVAL runs=$RUNS ($out)"
echo "   sync_pause_max_us per run: ${pauses[*]} (max $(max "${pauses[@]}"))"
echo "   checkpoint p50 per run (ms): ${p50s[*]}"
echo "   records/s per run: ${rates[*]} (median $(median "${rates[@]}"))"
