#!/usr/bin/env bash
# A/B: interleaved rounds of keyed-count (W) on two flowstate binaries; prints CPU ns
# per record (user+sys over records), records/s, RSS and the checksum per run.
#   BASE=/tmp/flowstate-before NEW=target/release/flowstate bash bench/ab.sh RUNS N [RUN FLAGS...]
#   e.g. bash bench/ab.sh 3 30000000 --parallelism 2 --checkpoint-interval off
RUNS=$1; N=$2; shift 2
BASE=${BASE:?set BASE to the flowstate binary before the change}
NEW=${NEW:-target/release/flowstate}
for r in $(seq 1 $RUNS); do
  for b in before after; do
    bin=$BASE; [ $b = after ] && bin=$NEW
    rm -rf /tmp/ck-ab
    out=$( { /usr/bin/time -f "TIME %e %U %S %M" $bin run keyed-count --records $N --rest off --checkpoint-dir /tmp/ck-ab "$@" 2>&1; } 2>&1 )
    rate=$(echo "$out" | grep -oE 'rate=[0-9]+' | tail -1 | cut -d= -f2)
    read wall user sys rss <<< "$(echo "$out" | grep TIME | awk '{print $2, $3, $4, $5}')"
    cpu=$(echo "$user + $sys" | bc)
    ns=$(echo "scale=1; $cpu * 1000000000 / $N" | bc)
    echo "$b r$r rate=$rate cpu_s=$cpu ns_per_rec=$ns rss_mb=$((rss/1024)) load=$(cut -d' ' -f1 /proc/loadavg) $(echo "$out" | grep -oE 'checksum=[0-9a-f]+' | tail -1)"
  done
done
rm -rf /tmp/ck-ab
