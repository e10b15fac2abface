#!/usr/bin/env bash
# Checkpoints under backpressure (issue 18): keyed-count whose sink is slowed to a
# fraction of the source's rate (`--sink-rate`, a sink that blocks like a slow
# synchronous one), with aligned and with unaligned checkpoints, one after the other
# in one invocation; then the same job unthrottled in both modes (the control: what
# unaligned checkpoints cost when nothing waits).
# Prints, per run, the job's final report (completed checkpoints, p50 and max
# duration, how many were unaligned and the in-flight bytes they persisted) and the
# duration of the last checkpoint at each progress line (every 5 s). The job's final
# checkpoint (at the end of its bounded input) is always aligned and waits for the
# backlog, so the report's max includes one aligned checkpoint in every mode: the
# progress series shows the checkpoints taken while the backpressure holds.
# Extra arguments go to every run.
#   BIN=target/release/flowstate bash bench/unaligned.sh [RUN FLAGS...]
#   env: RECORDS (600000), RATE (100000 records/s at the source), SINK_RATE (10000)
set -euo pipefail
BIN=${BIN:-target/release/flowstate}
RECORDS=${RECORDS:-600000}
RATE=${RATE:-100000}
SINK_RATE=${SINK_RATE:-10000}
SCRATCH=${SCRATCH:-/tmp/unaligned-bench}
for load in throttled unthrottled; do
  for checkpointing in aligned unaligned; do
    rm -rf "$SCRATCH"
    extra=(--checkpointing "$checkpointing")
    [ "$load" = throttled ] && extra+=(--sink-rate "$SINK_RATE")
    log=$("$BIN" run keyed-count --records "$RECORDS" --keys 10000 --rate "$RATE" \
      --parallelism 2 --checkpoint-interval 1s --checkpoint-dir "$SCRATCH/ck" \
      --output "$SCRATCH/out" --rest off "${extra[@]}" "$@" 2>&1)
    finished=$(echo "$log" | grep -oE ' secs=[0-9.]+' | head -1)
    summary=$(echo "$log" | grep ' checkpoints job_id=' |
      grep -oE '(completed|failed|p50_ms|max_ms|unaligned|in_flight_persisted_bytes)=[0-9.]+' |
      sed -E 's/([0-9]+\.[0-9])[0-9]*/\1/' | tr '\n' ' ')
    series=$(echo "$log" | grep -oE 'last #[0-9]+: [0-9.]+ ms' | awk '{printf "%s ", $3}')
    echo "$load $checkpointing load=$(cut -d' ' -f1 /proc/loadavg)$finished $summary"
    echo "  last checkpoint's ms at each progress line: $series"
  done
done
rm -rf "$SCRATCH"
