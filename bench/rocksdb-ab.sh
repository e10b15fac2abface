#!/usr/bin/env bash
# A/B on the RocksDB backend: interleaved rounds of keyed-count (W, p=2) on two flowstate
# binaries; prints CPU µs per record (user+sys over records), records/s, RSS, the
# checkpoints summary (completed, p50, sync pause p50/max) and the checksum per run.
#   BASE=/tmp/rocks-base NEW=target/release/flowstate bash bench/rocksdb-ab.sh RUNS N [RUN FLAGS...]
#   e.g. bash bench/rocksdb-ab.sh 3 5000000 --checkpoint-interval 1s --incremental
RUNS=$1; N=$2; shift 2
BASE=${BASE:?set BASE to the flowstate binary before the change}
NEW=${NEW:-target/release/flowstate}
# SCRATCH: where the runs keep state and checkpoints (removed after each run).
SCRATCH=${SCRATCH:-/tmp/rk}
for r in $(seq 1 $RUNS); do
  for b in base new; do
    bin=$BASE; [ $b = new ] && bin=$NEW
    rm -rf $SCRATCH-state $SCRATCH-ck
    load=$(cut -d' ' -f1 /proc/loadavg)
    out=$( { /usr/bin/time -f "TIME %e %U %S %M" $bin run keyed-count --records $N --parallelism 2 --rest off --state-backend rocksdb --state-dir $SCRATCH-state --checkpoint-dir $SCRATCH-ck "$@" 2>&1; } 2>&1 )
    rate=$(echo "$out" | grep -oE 'rate=[0-9]+' | tail -1 | cut -d= -f2)
    read wall user sys rss <<< "$(echo "$out" | grep TIME | awk '{print $2, $3, $4, $5}')"
    cpu=$(echo "$user + $sys" | bc)
    us=$(echo "scale=2; $cpu * 1000000 / $N" | bc)
    ck=$(echo "$out" | grep ' checkpoints ' | tail -1 | grep -oE '(completed|failed|p50_ms|sync_pause_p50_us|sync_pause_max_us)=[0-9.]+' | tr '\n' ' ')
    echo "$b r$r load=$load rate=$rate cpu_s=$cpu us_per_rec=$us rss_mb=$((rss/1024)) $ck $(echo "$out" | grep -oE 'checksum=[0-9a-f]+' | tail -1)"
  done
done
rm -rf $SCRATCH-state $SCRATCH-ck
