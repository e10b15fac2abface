#!/usr/bin/env bash
# A/B: interleaved rounds of keyed-count W on two binaries.  Usage: ab2.sh RUNS N ARGS...
RUNS=$1; N=$2; shift 2
for r in $(seq 1 $RUNS); do
  for b in ${BINS:-base prefetch}; do
    rm -rf /tmp/ck-ab
    out=$( { /usr/bin/time -f "TIME %e %U %S %M" /tmp/fs-$b run keyed-count --records $N --rest off --checkpoint-dir /tmp/ck-ab "$@" 2>&1; } 2>&1 )
    rate=$(echo "$out" | grep -oE 'rate=[0-9]+' | tail -1 | cut -d= -f2)
    read wall user sys rss <<< "$(echo "$out" | grep TIME | awk '{print $2, $3, $4, $5}')"
    cpu=$(echo "$user + $sys" | bc)
    ns=$(echo "scale=1; $cpu * 1000000000 / $N" | bc)
    echo "$b r$r rate=$rate cpu_s=$cpu ns_per_rec=$ns rss_mb=$((rss/1024)) load=$(cut -d' ' -f1 /proc/loadavg) $(echo "$out" | grep -oE 'checksum=[0-9a-f]+' | tail -1)"
  done
done
rm -rf /tmp/ck-ab
