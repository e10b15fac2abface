#!/usr/bin/env bash
# Throughput of the built-in job `keyed-count` (workload W, 1M keys) next to the
# single-threaded FxHashMap loop, measured side by side in one run.
#
#   bash bench/keyed-count.sh
#   RECORDS=5000000 RUNS=5 PARALLELISM="1 2" bash bench/keyed-count.sh
#
# Builds release binaries (respects CARGO_TARGET_DIR), then RUNS rounds; each
# round runs, in this order, the loop (`keyed-count-loop RECORDS`) and
# `flowstate run keyed-count --records RECORDS --parallelism P` for every P.
# Rates are records/s over the processing itself: the loop's own `secs=`, and
# the `secs=` of flowstate's `job keyed-count finished` log line (job start to
# end, without process start-up and the final checksum). Whole-process wall and
# CPU seconds are printed too. Every checksum must equal the loop's and, for
# the reference sizes, the brief's; any mismatch or failed run exits non-zero.
# The summary gives medians and the engine/loop ratios. The full log is kept
# under ${BENCH_LOG_DIR:-/tmp/flowstate-bench}.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

RECORDS=${RECORDS:-50000000}
KEYS=1000000
RUNS=${RUNS:-3}
PARALLELISM=${PARALLELISM:-"1 2"}
log_dir=${BENCH_LOG_DIR:-/tmp/flowstate-bench}
mkdir -p "$log_dir"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
log="$log_dir/keyed-count-$stamp.log"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

case "$RECORDS" in
    50000000) expected=8881b5882a4dbaef ;;
    5000000) expected=3ada6211620c6f1f ;;
    2000000) expected=f612517c561877f1 ;;
    *) expected= ;;
esac

say() { echo "$*" | tee -a "$log"; }

say "# bench/keyed-count.sh $stamp"
say "# host: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
say "# git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- crates 2>/dev/null || echo ' (crates/ modified)')"
say "# $(rustc --version)"
say "# RECORDS=$RECORDS KEYS=$KEYS RUNS=$RUNS PARALLELISM=\"$PARALLELISM\""

cargo build --release --locked -p flowstate-cli -p flowstate-jobs 2>&1 | tail -n 2 | tee -a "$log"
target_dir=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
loop_bin="$target_dir/release/keyed-count-loop"
flowstate_bin="$target_dir/release/flowstate"
for bin in "$loop_bin" "$flowstate_bin"; do
    [ -x "$bin" ] || { say "missing binary $bin"; exit 1; }
done

field() { # field NAME TEXT: the value of NAME=... in TEXT (first match)
    printf '%s\n' "$2" | tr ' ' '\n' | sed -n "s/^$1=//p" | head -n 1
}
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.0f", a / b; else print "nan" }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "nan" }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.6g\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

failures=0
declare -A rates walls cpus
configs="loop"
for p in $PARALLELISM; do configs="$configs p$p"; done

# run_one CONFIG: runs one configuration once, appends its rate.
run_one() {
    local config=$1 load out err timing status=0
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    local TIMEFORMAT='%R %U %S'
    if [ "$config" = loop ]; then
        { time "$loop_bin" "$RECORDS" "$KEYS" >"$work/out" 2>"$work/err"; } 2>"$work/time" || status=$?
    else
        { time "$flowstate_bin" run keyed-count --records "$RECORDS" --keys "$KEYS" --checkpoint-interval off \
            --parallelism "${config#p}" >"$work/out" 2>"$work/err"; } 2>"$work/time" || status=$?
    fi
    out=$(cat "$work/out")
    err=$(cat "$work/err")
    timing=$(tail -n 1 "$work/time")
    cat "$work/out" "$work/err" >>"$log"
    read -r wall user sys <<<"$timing"
    local cpu secs checksum
    cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.3f", u + s }')
    if [ "$config" = loop ]; then
        secs=$(field secs "$(grep '^RESULT' <<<"$out")")
    else
        secs=$(field secs "$(grep 'job keyed-count finished' <<<"$err" | sed 's/\x1b\[[0-9;]*m//g')")
    fi
    checksum=$(field checksum "$(grep '^RESULT' <<<"$out")")
    local verdict=ok
    if [ "$status" -ne 0 ] || [ -z "$secs" ] || [ -z "$checksum" ]; then
        verdict="FAILED (exit $status)"
        failures=$((failures + 1))
    elif [ -n "$expected" ] && [ "$checksum" != "$expected" ]; then
        verdict="WRONG CHECKSUM (expected $expected)"
        failures=$((failures + 1))
    elif [ -n "${loop_checksum:-}" ] && [ "$checksum" != "$loop_checksum" ]; then
        verdict="CHECKSUM DIFFERS FROM LOOP ($loop_checksum)"
        failures=$((failures + 1))
    fi
    [ "$config" = loop ] && [ -n "$checksum" ] && loop_checksum=${loop_checksum:-$checksum}
    local rate=nan
    [ -n "$secs" ] && rate=$(div "$RECORDS" "$secs")
    rates[$config]="${rates[$config]:-} $rate"
    walls[$config]="${walls[$config]:-} $wall"
    cpus[$config]="${cpus[$config]:-} $cpu"
    say "$(printf '%-5s round %d  loadavg %-15s rate %12.0f rec/s  secs %7.3f  wall %7.3f  cpu %7.3f  checksum %s  %s' \
        "$config" "$round" "$load" "$rate" "${secs:-0}" "$wall" "$cpu" "${checksum:--}" "$verdict")"
}

for round in $(seq 1 "$RUNS"); do
    for config in $configs; do
        run_one "$config"
    done
done

say ""
say "## summary: keyed-count, RECORDS=$RECORDS, KEYS=$KEYS, median of $RUNS runs each, same run"
loop_rate=$(median ${rates[loop]})
say "$(printf '%-8s %14s %10s %12s %12s %14s' config 'records/s' 'x loop' 'wall s' 'cpu s' 'rec/cpu-s')"
for config in $configs; do
    rate=$(median ${rates[$config]})
    wall=$(median ${walls[$config]})
    cpu=$(median ${cpus[$config]})
    say "$(printf '%-8s %14.0f %10s %12.3f %12.3f %14.0f' "$config" "$rate" "$(ratio "$rate" "$loop_rate")" \
        "$wall" "$cpu" "$(div "$RECORDS" "$cpu")")"
done
say "loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$failures" -gt 0 ]; then
    say "FAILED: $failures run(s) failed or had a wrong checksum"
    exit 1
fi
say "checksums: all ${expected:-equal to the loop checksum} ($loop_checksum)"
say "full log: $log"
