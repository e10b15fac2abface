#!/usr/bin/env bash
# The cost of checkpoints, measured side by side in one run: `keyed-count`
# (workload W, 1M keys) at parallelism 2 with checkpoints off and with
# exactly-once checkpoints every second on the heap backend; then the time to
# restore the latest checkpoint.
#
#   bash bench/checkpoint.sh
#   RECORDS=20000000 RUNS=5 INTERVAL=1s bash bench/checkpoint.sh
#
# Per run it prints records/s (the `job keyed-count finished ... rate=` log line),
# and for checkpointed runs the checkpoint count, p50/max duration, size and the
# largest synchronous pause (the `checkpoints` log line). Restore: a run with
# `--restore latest` on the final checkpoint of the last run; its log reports
# the time to read and verify the files and the time to load them into the
# operators. Every checksum must be the brief's; a mismatch exits non-zero.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

RECORDS=${RECORDS:-50000000}
RUNS=${RUNS:-3}
INTERVAL=${INTERVAL:-1s}
P=${PARALLELISM:-2}
case "$RECORDS" in
    50000000) expected=8881b5882a4dbaef ;;
    5000000) expected=3ada6211620c6f1f ;;
    2000000) expected=f612517c561877f1 ;;
    *) expected= ;;
esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cargo build --release -q -p flowstate-cli
bin=${CARGO_TARGET_DIR:-$root/target}/release/flowstate

field() { # field NAME LINE
    sed -n "s/.*[[:space:]]$1=\"\\{0,1\\}\\([^ \"]*\\).*/\\1/p" <<<"$2" | head -n1
}

declare -a off_rates=() on_rates=()
run_one() { # run_one off|on ROUND
    local mode=$1 round=$2 out err
    err="$work/$mode-$round.err"
    local flags=(--checkpoint-interval off)
    if [ "$mode" = on ]; then
        rm -rf "$work/ck"
        flags=(--checkpoint-interval "$INTERVAL" --checkpoint-dir "$work/ck")
    fi
    echo "== $mode round $round, loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
    out=$("$bin" run keyed-count --records "$RECORDS" --parallelism "$P" "${flags[@]}" 2>"$err")
    local finished checkpoints checksum rate
    finished=$(grep 'job keyed-count finished' "$err" || true)
    checkpoints=$(grep ' checkpoints ' "$err" || true)
    checksum=$(field checksum "$out")
    rate=$(field rate "$finished")
    if [ -n "$expected" ] && [ "$checksum" != "$expected" ]; then
        echo "checksum $checksum != $expected" >&2
        exit 1
    fi
    echo "   rate=$rate records/s checksum=$checksum"
    if [ "$mode" = on ]; then
        echo "   checkpoints: completed=$(field completed "$checkpoints") p50_ms=$(field p50_ms "$checkpoints") max_ms=$(field max_ms "$checkpoints") bytes=$(field last_bytes "$checkpoints") sync_pause_max_us=$(field sync_pause_max_us "$checkpoints")"
        on_rates+=("$rate")
    else
        off_rates+=("$rate")
    fi
}

for ((round = 1; round <= RUNS; round++)); do
    run_one off "$round"
    run_one on "$round"
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
off=$(median "${off_rates[@]}")
on=$(median "${on_rates[@]}")
echo "== summary: p=$P records=$RECORDS interval=$INTERVAL runs=$RUNS"
echo "   checkpoints off: $off records/s (median)"
echo "   checkpoints on:  $on records/s (median)"
awk -v a="$on" -v b="$off" 'BEGIN { printf "   throughput with checkpoints: %.1f%% of without (cost %.1f%%)\n", 100*a/b, 100*(1-a/b) }'

echo "== restore of the latest checkpoint ($work/ck)"
"$bin" run keyed-count --records "$RECORDS" --parallelism "$P" --checkpoint-interval "$INTERVAL" \
    --checkpoint-dir "$work/ck" --restore latest 2>"$work/restore.err" >"$work/restore.out"
grep -E 'read and verified|loaded into the operators' "$work/restore.err" | sed 's/^/   /'
echo "   $(cat "$work/restore.out")"
