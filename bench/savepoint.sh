#!/usr/bin/env bash
# Savepoints of `keyed-count` (workload W, 1M keys), measured side by side in one
# run: a periodic checkpoint and a savepoint of the same job (duration, size,
# synchronous pause, from the HTTP API's checkpoint history), then restores of
# the savepoint at the same and at other parallelisms (and with the other
# backend when the binary has rocksdb), each timed by the restoring run's log
# (read and verify, then load into the operators).
#
#   bash bench/savepoint.sh
#   RECORDS=20000000 RATE=4000000 bash bench/savepoint.sh
#   RUN_FLAGS="--state-backend rocksdb --incremental" bash bench/savepoint.sh
#     (the job whose savepoint is taken runs on rocksdb; needs ROCKSDB_LIB_DIR,
#     see scripts/rocksdb-lib.sh)
#
# Every restored run must end with the brief's checksum; a mismatch exits
# non-zero.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

RECORDS=${RECORDS:-20000000}
RATE=${RATE:-2000000}
AT=${AT:-5000000} # records in before the savepoint: every key exists by then
P=${PARALLELISM:-2}
read -r -a run_flags <<<"${RUN_FLAGS:-}"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

features=()
if [ -n "${ROCKSDB_LIB_DIR:-}" ]; then
    features=(--features rocksdb)
fi
cargo build --release -q -p flowstate-cli "${features[@]}"
bin=${CARGO_TARGET_DIR:-$root/target}/release/flowstate

field() { # field NAME LINE
    sed -n "s/.*[[:space:]]$1=\"\\{0,1\\}\\([^ \"]*\\).*/\\1/p" <<<"$2" | head -n1
}
json() { # json PYTHON-EXPRESSION-ON-d < JSON
    python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"
}

echo "== run: keyed-count --records $RECORDS --rate $RATE --parallelism $P --checkpoint-interval 1s ${RUN_FLAGS:-}, loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
"$bin" run keyed-count --records "$RECORDS" --rate "$RATE" --parallelism "$P" "${run_flags[@]}" --state-dir "$work/run-state" \
    --checkpoint-dir "$work/ck" --checkpoint-interval 1s --rest 127.0.0.1:0 --savepoint-dir "$work/sp" \
    >"$work/run.out" 2>"$work/run.err" &
run=$!
addr=
for _ in $(seq 1 200); do
    addr=$(sed -n 's/.*HTTP API listening on http:\/\/\([^ ]*\).*/\1/p' "$work/run.err" | head -n1)
    [ -n "$addr" ] && break
    sleep 0.05
done
[ -n "$addr" ] || { echo "no HTTP API address in the log" >&2; cat "$work/run.err" >&2; exit 1; }
job=$(curl -sf "http://$addr/jobs" | json 'd["jobs"][0]["id"]')
while [ "$(curl -sf "http://$addr/jobs/$job" | json 'd["records_in"]')" -lt "$AT" ]; do
    sleep 0.1
done
"$bin" savepoint "$job" --target "$work/sp" --rest "$addr" >"$work/sp1.out"
curl -sf "http://$addr/jobs/$job/checkpoints" | json '"\n".join(
    "   %-10s %3d: %6s ms, %11d bytes, sync pause max %.2f ms, alignment max %.2f ms"
    % (e["kind"], e["id"], e["duration_ms"], e["size_bytes"], e["sync_pause_ms_max"], e["alignment_ms_max"])
    for e in d["history"] if e["status"] == "completed")'
"$bin" stop "$job" --savepoint "$work/sp" --rest "$addr" >"$work/stop.out" || true
wait "$run" || true
location=$(sed -n 's/^Savepoint completed: //p' "$work/stop.out" | head -n1)
[ -n "$location" ] || { echo "the stop did not report a savepoint" >&2; cat "$work/stop.out" "$work/run.err" >&2; exit 1; }
echo "   savepoint: $(du -sb "$location" | cut -f1) bytes in $location"
grep -h 'checkpoints\|stopped with' "$work/run.err" | sed 's/^/   /' || true

"$bin" inspect "$location" >"$work/inspect.txt"
"$bin" verify "$location" >"$work/verify.txt"
echo "   verify: $(tail -n1 "$work/verify.txt")"

expected=$(
    case "$RECORDS" in
        50000000) echo 8881b5882a4dbaef ;;
        20000000) echo "" ;;
        5000000) echo 3ada6211620c6f1f ;;
        *) echo "" ;;
    esac
)
restore() { # restore LABEL FLAGS...
    local label=$1 err out
    shift
    err="$work/restore-$label.err"
    out=$("$bin" run keyed-count --records "$RECORDS" --checkpoint-dir "$work/ck-$label" \
        --checkpoint-interval 1h --rest off --restore "$location" "$@" 2>"$err")
    local read load checksum
    read=$(field ms "$(grep 'read and verified' "$err")")
    load=$(field ms "$(grep 'loaded into the operators' "$err")")
    checksum=$(field checksum "$out")
    echo "   restore $label: read+verify ${read} ms, load ${load} ms, checksum=$checksum"
    if [ -n "$expected" ] && [ "$checksum" != "$expected" ]; then
        echo "checksum $checksum != $expected" >&2
        exit 1
    fi
    if [ -z "${first_checksum:-}" ]; then
        first_checksum=$checksum
    elif [ "$checksum" != "$first_checksum" ]; then
        echo "checksum $checksum differs from the first restore's $first_checksum" >&2
        exit 1
    fi
}
echo "== restores of the savepoint"
restore "p$P" --parallelism "$P"
restore p1 --parallelism 1
restore p4 --parallelism 4
if [ ${#features[@]} -gt 0 ]; then
    restore "rocksdb-p$P" --parallelism "$P" --state-backend rocksdb --state-dir "$work/state"
fi
