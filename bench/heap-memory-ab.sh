#!/usr/bin/env bash
# Heap backend memory and throughput, two binaries interleaved (issue 16's memory
# targets): keyed-count at p=2 with checkpoints off and every 1 s, at KEYS distinct
# keys (default: the job's, 1M). Prints peak RSS (MB), records/s, CPU ns per record,
# checkpoint size and pause figures, and the load before each run.
#   BASE=/tmp/flowstate-before NEW=target/release/flowstate KEYS=10000000 N=60000000 RUNS=3 \
#     CKDIR=/tmp/ck-mem bash bench/heap-memory-ab.sh
N=${N:-50000000}; RUNS=${RUNS:-3}; CKDIR=${CKDIR:-/tmp/ck-mem-ab}
BASE=${BASE:?set BASE to the flowstate binary before the change}
NEW=${NEW:-target/release/flowstate}
KEYARG=${KEYS:+--keys $KEYS}
ORDER=${ORDER:-base-off new-off base-1s new-1s}
for r in $(seq 1 "$RUNS"); do
  for c in $ORDER; do
    rm -rf "$CKDIR"
    case $c in base-*) bin=$BASE ;; *) bin=$NEW ;; esac
    case $c in *-off) ck="--checkpoint-interval off" ;; *) ck="--checkpoint-interval 1s --checkpoint-dir $CKDIR" ;; esac
    load=$(cut -d' ' -f1 /proc/loadavg)
    out=$( { /usr/bin/time -f "TIME %e %U %S %M" $bin run keyed-count --records "$N" $KEYARG --parallelism 2 $ck --rest off 2>&1; } 2>&1 )
    rate=$(echo "$out" | grep -oE 'rate=[0-9.]+' | tail -1 | cut -d= -f2)
    read -r wall user sys rss <<< "$(echo "$out" | grep TIME | awk '{print $2, $3, $4, $5}')"
    ns=$(echo "scale=1; ($user + $sys) * 1000000000 / $N" | bc)
    sum=$(echo "$out" | grep -oE 'checksum=[0-9a-f]+' | tail -1 | cut -d= -f2)
    ckf=$(echo "$out" | grep -oE 'p50_ms=[0-9.]+ max_ms=[0-9.]+' | tail -1)
    printf '%-8s r%d rss_mb=%-5s rate=%-10s ns_per_rec=%-6s wall=%-6s load=%-5s %s %s\n' \
      "$c" "$r" $((rss/1024)) "${rate%.*}" "$ns" "$wall" "$load" "$sum" "$ckf"
  done
done
rm -rf "$CKDIR"
