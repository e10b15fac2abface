#!/usr/bin/env bash
# The data-path cost of a change, A/B: two `flowstate` binaries (e.g. built from
# main and from a branch) run `keyed-count` alternately, round after round, in
# one run, so both see the same machine load.
#
#   BASE=/tmp/flowstate-base HEAD=target/release/flowstate bash bench/metrics-ab.sh
#   RECORDS=50000000 ROUNDS=6 ... bash bench/metrics-ab.sh
#
# Each run: `flowstate run keyed-count --records RECORDS --keys 1000000
# --parallelism 2 --checkpoint-interval 1s --checkpoint-dir <tmp> --rest off`
# (heap backend, exactly-once, counting sink). Printed per run: the load
# average before it, records/s over the processing (the `rate=` of the `job
# keyed-count finished` line), whole-process CPU seconds (user + sys) and
# records per CPU-second, and the checksum, which must be the same for both
# binaries (a mismatch exits non-zero). The summary gives medians and the
# head/base ratios.
set -euo pipefail

BASE=${BASE:?path of the base flowstate binary}
HEAD=${HEAD:?path of the head flowstate binary}
RECORDS=${RECORDS:-50000000}
ROUNDS=${ROUNDS:-6}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

run() { # name binary
    local name=$1 bin=$2 out
    rm -rf "$work/ck"
    local load
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    out=$( { /usr/bin/time -f "TIME %e %U %S" "$bin" run keyed-count --records "$RECORDS" \
        --keys 1000000 --parallelism 2 --checkpoint-interval 1s \
        --checkpoint-dir "$work/ck" --rest off; } 2>&1 )
    local rate cpu checksum wall
    rate=$(grep -o 'finished .* rate=[0-9]*' <<<"$out" | grep -o 'rate=[0-9]*' | cut -d= -f2)
    checksum=$(grep -o 'checksum=[0-9a-f]*' <<<"$out" | tail -1 | cut -d= -f2)
    read -r wall cpu < <(awk '/^TIME/ {print $2, $3 + $4}' <<<"$out")
    printf '%-4s round %d  load %s  rate %9d rec/s  wall %7.3f  cpu %7.3f  rec/cpu-s %9.0f  checksum %s\n' \
        "$name" "$round" "$load" "$rate" "$wall" "$cpu" "$(awk -v r="$RECORDS" -v c="$cpu" 'BEGIN {print r / c}')" "$checksum"
}

results=$work/results
for round in $(seq 1 "$ROUNDS"); do
    # Alternate which binary goes first.
    if (( round % 2 )); then order="base head"; else order="head base"; fi
    for name in $order; do
        if [[ $name == base ]]; then run base "$BASE"; else run head "$HEAD"; fi | tee -a "$results"
    done
done

sums=$(awk '{print $NF}' "$results" | sort -u)
[[ $(wc -l <<<"$sums") -eq 1 ]] || { echo "checksums differ: $sums" >&2; exit 1; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
echo "## summary: RECORDS=$RECORDS, $ROUNDS rounds, medians"
for name in base head; do
    rate=$(awk -v n="$name" '$1 == n {print $9}' "$results" | median)
    cpu=$(awk -v n="$name" '$1 == n {print $14}' "$results" | median)
    rpc=$(awk -v n="$name" '$1 == n {print $16}' "$results" | median)
    printf '%-4s  records/s %9.0f  cpu s %7.3f  rec/cpu-s %9.0f\n' "$name" "$rate" "$cpu" "$rpc"
    eval "${name}_rate=$rate ${name}_cpu=$cpu ${name}_rpc=$rpc"
done
awk -v a="$base_rate" -v b="$head_rate" -v c="$base_rpc" -v d="$head_rpc" \
    'BEGIN {printf "head/base: records/s %.3f, records per CPU-second %.3f\n", b / a, d / c}'
echo "checksum: $sums"
