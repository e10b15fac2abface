#!/usr/bin/env bash
# Side by side, interleaved: the anchors' FxHashMap loop and timely-dataflow with 2
# workers (../shared/anchors/limit), and two flowstate binaries (before/after) at p=2
# with checkpoints off and exactly-once every 1 s. Prints CPU ns per record
# (user+sys over records), records/s, RSS, checksum and checkpoint figures.
#   BASE=/tmp/flowstate-before NEW=target/release/flowstate N=50000000 RUNS=3 bash bench/side-by-side-ab.sh
N=${N:-50000000}; RUNS=${RUNS:-3}
BASE=${BASE:?set BASE to the flowstate binary before the change}
NEW=${NEW:-target/release/flowstate}
LIM=${LIM:-/tmp/anchors-limit/target/release/limit-anchors}
if [ ! -x "$LIM" ]; then
  (cd "$(dirname "$0")/../../shared/anchors/limit" && CARGO_TARGET_DIR=/tmp/anchors-limit/target cargo build --release -q) || exit 1
fi
declare -A CMDS=(
  [loop]="$LIM fx $N"
  [timely2]="$LIM timely $N 2"
  [before-off]="$BASE run keyed-count --records $N --parallelism 2 --checkpoint-interval off --rest off"
  [after-off]="$NEW run keyed-count --records $N --parallelism 2 --checkpoint-interval off --rest off"
  [before-1s]="$BASE run keyed-count --records $N --parallelism 2 --checkpoint-interval 1s --checkpoint-dir /tmp/ck-side --rest off"
  [after-1s]="$NEW run keyed-count --records $N --parallelism 2 --checkpoint-interval 1s --checkpoint-dir /tmp/ck-side --rest off"
)
ORDER=${ORDER:-loop timely2 before-off after-off before-1s after-1s}
for r in $(seq 1 $RUNS); do
  for c in $ORDER; do
    rm -rf /tmp/ck-side
    load=$(cut -d' ' -f1 /proc/loadavg)
    out=$( { /usr/bin/time -f "TIME %e %U %S %M" ${CMDS[$c]} 2>&1; } 2>&1 )
    rate=$(echo "$out" | grep -oE 'rate=[0-9.]+' | tail -1 | cut -d= -f2)
    read wall user sys rss <<< "$(echo "$out" | grep TIME | awk '{print $2, $3, $4, $5}')"
    cpu=$(echo "$user + $sys" | bc)
    ns=$(echo "scale=1; $cpu * 1000000000 / $N" | bc)
    sum=$(echo "$out" | grep -oE 'checksum=[0-9a-f]+' | tail -1 | cut -d= -f2)
    ck=$(echo "$out" | grep -oE 'p50_ms=[0-9.]+ max_ms=[0-9.]+' | tail -1)
    printf '%-9s r%d rate=%-10s cpu_s=%-6s ns_per_rec=%-6s rss_mb=%-5s load=%-5s %s %s\n' "$c" $r "${rate%.*}" "$cpu" "$ns" $((rss/1024)) "$load" "$sum" "$ck"
  done
done
rm -rf /tmp/ck-side
