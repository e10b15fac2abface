#!/usr/bin/env bash
# Checkpoints under backpressure (issue 18): keyed-count whose sink is slowed to a
# fraction of the source's rate (`--sink-rate`, a sink that blocks like a slow
# synchronous one), against the same job with an unthrottled sink, one after the other.
# Prints, per run, the checkpoints' p50 and max duration (the job's final report)
# and the duration of the last checkpoint at each progress line (every 5 s), which
# shows aligned checkpoints growing with the backlog buffered in front of their barriers.
# Extra arguments go to both runs (e.g. `--checkpointing unaligned` once it exists).
#   BIN=target/release/flowstate bash bench/unaligned.sh [RUN FLAGS...]
#   env: RECORDS (600000), RATE (100000 records/s at the source), SINK_RATE (10000)
set -euo pipefail
BIN=${BIN:-target/release/flowstate}
RECORDS=${RECORDS:-600000}
RATE=${RATE:-100000}
SINK_RATE=${SINK_RATE:-10000}
SCRATCH=${SCRATCH:-/tmp/unaligned-bench}
for mode in throttled unthrottled; do
  rm -rf "$SCRATCH"
  extra=(); [ "$mode" = throttled ] && extra=(--sink-rate "$SINK_RATE")
  log=$("$BIN" run keyed-count --records "$RECORDS" --keys 10000 --rate "$RATE" \
    --parallelism 2 --checkpoint-interval 1s --checkpoint-dir "$SCRATCH/ck" \
    --output "$SCRATCH/out" --rest off "${extra[@]}" "$@" 2>&1)
  summary=$(echo "$log" | grep ' checkpoints job_id=' | grep -oE '(completed|failed|p50_ms|max_ms)=[0-9.]+' | tr '\n' ' ')
  series=$(echo "$log" | grep -oE 'last #[0-9]+: [0-9.]+ ms' | awk '{printf "%s ", $3}')
  echo "$mode load=$(cut -d' ' -f1 /proc/loadavg) $summary"
  echo "  last checkpoint's ms at each progress line: $series"
done
rm -rf "$SCRATCH"
