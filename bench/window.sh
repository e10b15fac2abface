#!/usr/bin/env bash
# Workload WT (window-count) side by side in one run: flowstate against the
# single-threaded window loop (`limit-anchors window N`, the floor) and, as a
# recorded anchor, Flink's 10 s tumbling event-time window (anchors.md:
# 10.1-12.8 µs of CPU per record). Rounds interleave the configurations so
# machine drift hits all alike. Reports records/s, CPU seconds (user+sys),
# CPU µs per record, the checksum, checkpoint p50 and the longest synchronous
# pause.
#
#   bash bench/window.sh            # N=5000000 RUNS=3
#   N=20000000 RUNS=2 bash bench/window.sh
#   FS=/tmp/flowstate-before bash bench/window.sh   # another binary (before/after)
set -uo pipefail
cd "$(dirname "$0")/.."
N=${N:-5000000}
RUNS=${RUNS:-3}
ANCHORS=${ANCHORS:-../shared/anchors}
LIM=${LIM:-/tmp/anchors-limit/target/release/limit-anchors}
if [ ! -x "$LIM" ]; then
  (cd "$ANCHORS/limit" && CARGO_TARGET_DIR=/tmp/anchors-limit/target cargo build --release -q) || exit 1
fi
cargo build --release --locked -q -p flowstate-cli || exit 1
FS=${FS:-target/release/flowstate}
OUT=${OUT:-/tmp/bench-window-$(date +%H%M%S)}
mkdir -p "$OUT"
CK=$OUT/ck
declare -A CMDS=(
  [loop]="$LIM window $N"
  [fs-p2-1s]="$FS run window-count --records $N --parallelism 2 --checkpoint-interval 1s --checkpoint-dir $CK --rest off"
  [fs-p2-off]="$FS run window-count --records $N --parallelism 2 --checkpoint-interval off --rest off"
  [fs-p1-off]="$FS run window-count --records $N --parallelism 1 --checkpoint-interval off --rest off"
)
ORDER=${ORDER:-loop fs-p2-1s fs-p2-off fs-p1-off}
for r in $(seq 1 "$RUNS"); do
  for c in $ORDER; do
    rm -rf "$CK"
    log=$OUT/$c.$r.log
    echo "load $(cut -d' ' -f1 /proc/loadavg)" > "$log"
    /usr/bin/time -f "TIME wall=%e user=%U sys=%S rss_kb=%M" ${CMDS[$c]} >>"$log" 2>&1
    rate=$(grep -oE 'rate=[0-9.]+' "$log" | tail -1 | cut -d= -f2)
    cpu=$(grep -oE 'user=[0-9.]+ sys=[0-9.]+' "$log" | awk -F'[= ]' '{print $2+$4}')
    us=$(awk -v c="$cpu" -v n="$N" 'BEGIN { printf "%.3f", c * 1e6 / n }')
    sum=$(grep -oE 'checksum=[0-9a-f]+' "$log" | tail -1 | cut -d= -f2)
    ck=$(grep -oE 'p50_ms=[0-9.]+' "$log" | tail -1)
    pause=$(grep -oE 'sync_pause_max_us=[0-9]+' "$log" | tail -1)
    printf '%-10s r%d rate=%-10s cpu_s=%-6s cpu_us_per_record=%-6s checksum=%s %s %s\n' \
      "$c" "$r" "${rate%.*}" "$cpu" "$us" "$sum" "$ck" "$pause" | tee -a "$OUT/summary.txt"
  done
done
echo "logs in $OUT"
