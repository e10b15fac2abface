#!/usr/bin/env bash
# Event-to-sink latency of keyed-count (workload W's keys, 1M keys) with a
# non-transactional (counting) sink, at 10%, 50% and 90% of the maximum rate
# measured in the same run. Every record is stamped when the source makes it;
# the job measures the age of a uniform sample of updates (one key in 16)
# right before the sink (`flowstate run keyed-count --measure-latency`, see
# crates/jobs/src/latency.rs) and prints
#   LATENCY samples=N p50_us=.. p90_us=.. p99_us=.. p999_us=.. max_us=..
# Target (issue 16): p99 at most 10 ms at 50% load.
#
#   bash bench/latency.sh                    # p=2, checkpoints every 1 s, 10 s per load level
#   SECS=20 RUNS=3 CKPT=off bash bench/latency.sh
#   FS=/tmp/flowstate-before bash bench/latency.sh   # another binary
set -uo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-10}
RUNS=${RUNS:-2}
P=${P:-2}
CKPT=${CKPT:-1s}
LEVELS=${LEVELS:-"10 50 90"}
if [ -z "${FS:-}" ]; then
  cargo build --release --locked -q -p flowstate-cli || exit 1
  FS=target/release/flowstate
fi
OUT=${OUT:-/tmp/bench-latency-$(date +%H%M%S)}
mkdir -p "$OUT"
CK=$OUT/ck
run() { # run NAME RECORDS [--rate R]
  local name=$1 records=$2
  shift 2
  rm -rf "$CK"
  local log=$OUT/$name.log
  echo "load $(cut -d' ' -f1 /proc/loadavg)" > "$log"
  "$FS" run keyed-count --records "$records" --parallelism "$P" --measure-latency \
    --checkpoint-interval "$CKPT" --checkpoint-dir "$CK" --rest off "$@" >>"$log" 2>&1
  rm -rf "$CK"
}
# The maximum rate: an unthrottled run of 20M records (median of RUNS).
rates=()
for r in $(seq 1 "$RUNS"); do
  run "max.$r" 20000000
  rates+=("$(grep -oE 'rate=[0-9]+' "$OUT/max.$r.log" | tail -1 | cut -d= -f2)")
done
max=$(printf '%s\n' "${rates[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "max rate (median of ${rates[*]}): $max records/s; p=$P, checkpoints $CKPT, ${SECS}s per level" | tee "$OUT/summary.txt"
for r in $(seq 1 "$RUNS"); do
  for level in $LEVELS; do
    rate=$((max * level / 100))
    run "l$level.$r" $((rate * SECS)) --rate "$rate"
    line=$(grep -E '^LATENCY' "$OUT/l$level.$r.log" | tail -1)
    printf 'load %3s%% rate=%-9s r%d %s (loadavg %s)\n' "$level" "$rate" "$r" "${line#LATENCY }" \
      "$(head -1 "$OUT/l$level.$r.log" | cut -d' ' -f2)" | tee -a "$OUT/summary.txt"
  done
done
echo "logs in $OUT"
