#!/usr/bin/env bash
# Nexmark side by side in one run (docs/nexmark.md): every query on flowstate
# over generated events and over the same events as JSON-lines files, and,
# where PyFlink is installed (or FLINK=1 asks to install it), the same queries
# as Flink SQL over the same files (../shared/anchors/flink/nexmark.sh).
# Reports events/s (over the job's own run time, without process start-up) and
# CPU µs per event (user+sys of the whole process: start-up, file reading and
# parsing included) per query and engine, with flowstate's RESULT checksum.
# flowstate runs at p=2 with exactly-once checkpoints every 1 s on the heap
# backend, like the Flink anchor (p=2, hashmap, exactly-once 1 s).
#
#   bash bench/nexmark.sh                      # N=1000000 RUNS=1, all queries
#   N=2000000 RUNS=3 QUERIES="q0 q5" bash bench/nexmark.sh
#   FLINK=1 bash bench/nexmark.sh              # also Flink SQL (installs PyFlink into /tmp/flink-venv)
#   CHECK=1 bash bench/nexmark.sh              # and check Flink's rows against flowstate's RESULT:
#       one more Flink run per query writing CSV (q2 q3 q5 q7 q8 q11; q0/q1 are slow to
#       hash in Python, q4 is an updating query), checksummed by bench/nexmark_checksum.py
set -uo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000000}
RUNS=${RUNS:-1}
QUERIES=${QUERIES:-q0 q1 q2 q3 q4 q5 q7 q8 q11}
ANCHORS=${ANCHORS:-../shared/anchors}
VENV=${VENV:-/tmp/flink-venv}
cargo build --release --locked -q -p flowstate-cli || exit 1
FS=${FS:-target/release/flowstate}
OUT=${OUT:-/tmp/bench-nexmark-$(date +%H%M%S)}
EVENTS=${EVENTS_DIR:-$OUT/events}
mkdir -p "$OUT"
CK=$OUT/ck
if [ ! -d "$EVENTS/bid" ]; then
  /usr/bin/time -f "TIME wall=%e user=%U sys=%S" "$FS" nexmark generate --events "$N" --output "$EVENTS" 2>&1 | tee "$OUT/generate.log"
fi
FLINK_OK=0
if [ "${FLINK:-0}" = 1 ] || [ "${CHECK:-0}" = 1 ] || { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import pyflink" 2>/dev/null; }; then
  FLINK_OK=1
fi
RUNTIME="--parallelism 2 --checkpoint-interval 1s --checkpoint-dir $CK --rest off"
run_fs() { # name query extra-args...
  local name=$1 q=$2; shift 2
  rm -rf "$CK"
  local log=$OUT/$name-$q.$r.log
  echo "load $(cut -d' ' -f1 /proc/loadavg)" > "$log"
  /usr/bin/time -f "TIME wall=%e user=%U sys=%S rss_kb=%M" "$FS" run nexmark --query "$q" "$@" $RUNTIME >>"$log" 2>&1
  local secs cpu rate us sum results load
  load=$(head -1 "$log" | cut -d' ' -f2)
  secs=$(grep -oE 'secs=[0-9.]+' "$log" | tail -1 | cut -d= -f2)
  cpu=$(grep -oE 'user=[0-9.]+ sys=[0-9.]+' "$log" | tail -1 | awk -F'[= ]' '{print $2+$4}')
  rate=$(awk -v s="${secs:-0}" -v n="$N" 'BEGIN { if (s > 0) printf "%d", n / s; else print "?" }')
  us=$(awk -v c="${cpu:-0}" -v n="$N" 'BEGIN { printf "%.3f", c * 1e6 / n }')
  sum=$(grep -oE 'checksum=[0-9a-f]+' "$log" | tail -1 | cut -d= -f2)
  results=$(grep -oE 'results=[0-9]+' "$log" | tail -1 | cut -d= -f2)
  printf '%-4s %-14s r%d load=%-5s events/s=%-9s cpu_us_per_event=%-7s results=%-8s checksum=%s\n' \
    "$q" "$name" "$r" "$load" "$rate" "$us" "$results" "$sum" | tee -a "$OUT/summary.txt"
}
for r in $(seq 1 "$RUNS"); do
  for q in $QUERIES; do
    run_fs flowstate-gen "$q" --events "$N"
    run_fs flowstate-files "$q" --input "$EVENTS"
    if [ "$FLINK_OK" = 1 ]; then
      line=$(VENV=$VENV bash "$ANCHORS/flink/nexmark.sh" "$EVENTS" "$q" | tail -1)
      echo "$line" > "$OUT/flink-$q.$r.json"
      printf '%-4s %-14s r%d load=%-5s %s\n' "$q" flink-sql "$r" "$(cut -d' ' -f1 /proc/loadavg)" \
        "$(echo "$line" | grep -oE '"(events_per_s|cpu_us_per_event)": [0-9.]+' | tr -d '"' | tr '\n' ' ')" | tee -a "$OUT/summary.txt"
      if [ "${CHECK:-0}" = 1 ] && [[ " q2 q3 q5 q7 q8 q11 " == *" $q "* ]]; then
        rm -rf "$OUT/flink-rows-$q"
        "$VENV/bin/python" "$ANCHORS/flink/nexmark.py" --data "$EVENTS" --query "$q" --sink "$OUT/flink-rows-$q" >/dev/null 2>"$OUT/flink-rows-$q.err"
        theirs=$(python3 bench/nexmark_checksum.py "$OUT/flink-rows-$q")
        ours=$(grep -oE 'results=[0-9]+ checksum=[0-9a-f]+' "$OUT/flowstate-files-$q.$r.log" | tail -1)
        verdict=$([ "$theirs" = "$ours" ] && echo same || echo DIFFERENT)
        printf '%-4s %-14s r%d flink rows: %s, flowstate: %s: %s\n' "$q" check "$r" "$theirs" "$ours" "$verdict" | tee -a "$OUT/summary.txt"
      fi
    fi
  done
done
[ "$FLINK_OK" = 1 ] || echo "PyFlink not installed: Flink SQL skipped (FLINK=1 installs it); see ../shared/anchors.md for its recorded figures"
echo "logs in $OUT"
