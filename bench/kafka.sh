#!/usr/bin/env bash
# Kafka end to end, measured side by side in one run against one broker (tansu,
# memory storage, started by scripts/kafka-server.sh): the broker's own produce
# rate (`flowstate produce`, an idempotent librdkafka producer), its own consume
# rate (`flowstate consume`, a plain consumer reading the same records), and
# `flowstate run kafka-count` reading them through keyed count into the
# exactly-once file sink with checkpoints every second (and once with no sink
# and no checkpoints).
#
#   bash bench/kafka.sh
#   RECORDS=10000000 PARTITIONS=8 PARALLELISM=2 bash bench/kafka.sh
#
# Every kafka-count run must end with the keyed-count checksum of the same
# records; a mismatch exits non-zero.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

RECORDS=${RECORDS:-5000000}
KEYS=${KEYS:-1000000}
PARTITIONS=${PARTITIONS:-4}
P=${PARALLELISM:-2}
work=$(mktemp -d)

bash scripts/install-build-deps.sh
cargo build --release -q -p flowstate-cli --features kafka
bin=${CARGO_TARGET_DIR:-$root/target}/release/flowstate

eval "$(bash scripts/kafka-server.sh)"
trap 'kill "$KAFKA_SERVER_PID" 2>/dev/null || true; rm -rf "$work"' EXIT
brokers=$FLOWSTATE_TEST_KAFKA_BROKERS

field() { # field NAME LINE
    sed -n "s/.*[[:space:]]$1=\"\\{0,1\\}\\([^ \"]*\\).*/\\1/p" <<<"$2" | head -n1
}

echo "== $RECORDS records, $KEYS keys, $PARTITIONS partitions, p=$P, loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
"$bin" produce --brokers "$brokers" --topic w --records "$RECORDS" --keys "$KEYS" \
    --partitions "$PARTITIONS" >/dev/null 2>"$work/produce.err"
produce_rate=$(field rate "$(grep 'produced workload' "$work/produce.err")")
echo "   broker produce:   $produce_rate records/s"

consumed=$("$bin" consume --brokers "$brokers" --topic w --records "$RECORDS")
consume_rate=$(field rate " $consumed")
echo "   broker consume:   $consume_rate records/s ($consumed)"

expected=$("$bin" run keyed-count --records "$RECORDS" --keys "$KEYS" --checkpoint-interval off \
    --rest off 2>/dev/null)

count_run() { # count_run LABEL FLAGS...
    local label=$1 out err finished
    shift
    err="$work/$label.err"
    out=$("$bin" run kafka-count --brokers "$brokers" --topic w --records "$RECORDS" \
        --parallelism "$P" --rest off "$@" 2>"$err")
    finished=$(grep 'job kafka-count finished' "$err")
    if [ "$out" != "$expected" ]; then
        echo "kafka-count ($label) printed '$out', keyed-count '$expected'" >&2
        exit 1
    fi
    local rate
    rate=$(field rate "$finished")
    echo "   kafka-count $label: $rate records/s  ($out)" >&2
    echo "$rate"
}
files_rate=$(count_run files --checkpoint-interval 1s --checkpoint-dir "$work/ck" \
    --output "$work/out")
bare_rate=$(count_run bare --checkpoint-interval off)
awk -v f="$files_rate" -v b="$bare_rate" -v c="$consume_rate" -v p="$produce_rate" 'BEGIN {
    printf "== summary: kafka-count to files with checkpoints %.0f records/s = %.2fx the broker consume rate, %.2fx its produce rate; without sink and checkpoints %.2fx consume\n", f, f / c, f / p, b / c
}'
