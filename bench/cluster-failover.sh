#!/usr/bin/env bash
# The time from a killed worker to the job running again: keyed-count on a local
# cluster of 2 task manager processes (`--processes 2`, p=2, exactly-once, a
# rate-limited source so the job outlives the measurement); once a checkpoint
# completed and CHECKPOINTS_BEFORE_KILL more went by, task manager 1 gets SIGKILL.
# Prints, per run, from the kill to:
#   lost_ms     the job manager saw the task manager lost (control connection)
#   deployed_ms the next attempt was deployed on both task managers (the killed
#               one restarted by the local cluster and registered again)
#   running_ms  the next attempt's first checkpoint completed: every task runs,
#               restored (an upper bound by up to one checkpoint interval)
# Times come from the job manager's log lines (UTC timestamps) and `date` at the kill.
#   BIN=target/release/flowstate bash bench/cluster-failover.sh RUNS [RUN FLAGS...]
#   e.g. bash bench/cluster-failover.sh 5 --checkpoint-interval 200ms
set -euo pipefail
RUNS=$1; shift
BIN=${BIN:-target/release/flowstate}
SCRATCH=${SCRATCH:-/tmp/cluster-failover}
CHECKPOINTS_BEFORE_KILL=${CHECKPOINTS_BEFORE_KILL:-3}
WAIT_S=${WAIT_S:-120}

epoch() { date -u -d "$1" +%s.%N; }
ms_between() { awk -v a="$1" -v b="$2" 'BEGIN { d = (b - a) * 1000; if (d < 0) d = 0; printf "%.0f", d }'; }
# wait_for PATTERN COUNT: until the log has COUNT lines matching PATTERN; prints the last one.
wait_for() {
  local deadline=$(( $(date +%s) + WAIT_S ))
  while [ "$(grep -c -- "$1" "$SCRATCH/log" || true)" -lt "$2" ]; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "cluster-failover: no $2 lines with '$1' within ${WAIT_S}s; log: $SCRATCH/log" >&2
      exit 1
    fi
    sleep 0.01
  done
  grep -- "$1" "$SCRATCH/log" | sed -n "$2p"
}

for r in $(seq 1 "$RUNS"); do
  rm -rf "$SCRATCH"; mkdir -p "$SCRATCH"
  "$BIN" run keyed-count --records 100000000 --rate 200000 --parallelism 2 --processes 2 \
    --rest off --checkpoint-dir "$SCRATCH/ck" --output "$SCRATCH/out" "$@" \
    >"$SCRATCH/stdout" 2>"$SCRATCH/log" &
  job=$!
  wait_for "completed, the first of this attempt" 1 >/dev/null
  sleep_ck=$(( CHECKPOINTS_BEFORE_KILL ))
  # A few checkpoints of attempt 0 (the progress line counts them).
  sleep "$(awk -v n="$sleep_ck" 'BEGIN { print n * 0.3 }')"
  worker=$(pgrep -f -- "--process-index 1" | head -1)
  kill -9 "$worker"
  killed=$(date -u +%s.%N)
  lost=$(wait_for "task manager 1 lost" 1)
  deployed=$(wait_for "attempt 1 deployed" 1)
  running=$(wait_for "completed, the first of this attempt" 2)
  kill -TERM "$job" 2>/dev/null || true
  wait "$job" 2>/dev/null || true
  t_lost=$(epoch "$(echo "$lost" | awk '{print $1}')")
  t_deployed=$(epoch "$(echo "$deployed" | awk '{print $1}')")
  t_running=$(epoch "$(echo "$running" | awk '{print $1}')")
  echo "run $r load=$(cut -d' ' -f1 /proc/loadavg) lost_ms=$(ms_between "$killed" "$t_lost") deployed_ms=$(ms_between "$killed" "$t_deployed") running_ms=$(ms_between "$killed" "$t_running")"
done
rm -rf "$SCRATCH"
