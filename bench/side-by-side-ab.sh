#!/usr/bin/env bash
# Side by side, interleaved: loop, timely 2 workers, flowstate base/new at p=2 with checkpoints off and every 1 s.
N=${N:-50000000}; RUNS=${RUNS:-3}
LIM=/tmp/anchors-limit/target/release/limit-anchors
declare -A CMDS=(
  [loop]="$LIM fx $N"
  [timely2]="$LIM timely $N 2"
  [base-off]="/tmp/fs-base run keyed-count --records $N --parallelism 2 --checkpoint-interval off --rest off"
  [new-off]="/tmp/fs-new2 run keyed-count --records $N --parallelism 2 --checkpoint-interval off --rest off"
  [base-1s]="/tmp/fs-base run keyed-count --records $N --parallelism 2 --checkpoint-interval 1s --checkpoint-dir /tmp/ck-side --rest off"
  [new-1s]="/tmp/fs-new2 run keyed-count --records $N --parallelism 2 --checkpoint-interval 1s --checkpoint-dir /tmp/ck-side --rest off"
)
ORDER=${ORDER:-loop timely2 base-off new-off base-1s new-1s}
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
