#!/usr/bin/env bash
# W (keyed-count, p=2, exactly-once) on one process against the same job on a local
# cluster of 2 task manager processes with 1 subtask each (`--processes 2`): interleaved
# rounds, same binary. Prints wall time, records/s, CPU seconds (the job manager and its
# children: /usr/bin/time counts waited-for children) and CPU ns per record per run.
# The half of W's records whose key lives in the other process crosses TCP.
#   BIN=target/release/flowstate bash bench/cluster-ab.sh RUNS N [RUN FLAGS...]
#   e.g. bash bench/cluster-ab.sh 3 50000000 --checkpoint-interval 1s
RUNS=$1; N=$2; shift 2
BIN=${BIN:-target/release/flowstate}
SCRATCH=${SCRATCH:-/tmp/cluster-ab}
for r in $(seq 1 $RUNS); do
  for mode in single cluster; do
    extra=""; [ $mode = cluster ] && extra="--processes 2"
    rm -rf $SCRATCH-ck
    load=$(cut -d' ' -f1 /proc/loadavg)
    out=$( { /usr/bin/time -f "TIME %e %U %S %M" $BIN run keyed-count --records $N --parallelism 2 --rest off --checkpoint-dir $SCRATCH-ck $extra "$@" 2>&1; } 2>&1 )
    read wall user sys rss <<< "$(echo "$out" | grep TIME | awk '{print $2, $3, $4, $5}')"
    cpu=$(echo "$user + $sys" | bc)
    rate=$(echo "$N / $wall" | bc)
    ns=$(echo "scale=1; $cpu * 1000000000 / $N" | bc)
    ck=$(echo "$out" | grep ' checkpoints ' | tail -1 | grep -oE '(completed|failed)=[0-9]+' | tr '\n' ' ')
    # The task managers' data planes (cluster runs): messages and bytes sent, summed.
    net=$(echo "$out" | grep 'data plane of task manager' | awk '{for(i=1;i<=NF;i++){if($i~/^messages_sent=/){split($i,a,"=");m+=a[2]} if($i~/^bytes_sent=/){split($i,b,"=");by+=b[2]}}} END {if (m>0) printf "net_msgs=%d net_mb=%.0f", m, by/1e6}')
    if [ -n "$net" ]; then
      msgs=$(echo "$net" | grep -oE 'net_msgs=[0-9]+' | cut -d= -f2); mb=$(echo "$net" | grep -oE 'net_mb=[0-9]+' | cut -d= -f2)
      net="$net net_msgs_per_s=$(echo "$msgs / $wall" | bc) net_mb_per_s=$(echo "$mb / $wall" | bc)"
    fi
    echo "$mode r$r load=$load wall_s=$wall rate=$rate cpu_s=$cpu ns_per_rec=$ns $ck $net"
  done
done
rm -rf $SCRATCH-ck
