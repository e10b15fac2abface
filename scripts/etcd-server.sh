#!/usr/bin/env bash
# Starts a throwaway local etcd server for the high-availability tests (leader
# election of job managers: crates/cluster's leader tests, crates/cli/tests/standby.rs).
#
#   eval "$(scripts/etcd-server.sh)"     # then: cargo test -p flowstate-cluster
#   kill "$ETCD_SERVER_PID"              # when done
#
# Installs Debian's `etcd-server` with apt-get (through sudo when not root)
# unless an `etcd` binary is already on the PATH, starts it on 127.0.0.1 at a
# free client port and a free peer port with its data in a fresh temporary
# directory, waits until its JSON gateway answers (at most FLOWSTATE_ETCD_WAIT
# seconds, default 30), and prints `export` lines for the caller to eval.
# Progress and errors go to stderr; stdout carries only the export lines. Exits
# non-zero with a message if any step fails.
set -euo pipefail

WAIT_SECS="${FLOWSTATE_ETCD_WAIT:-30}"

say() { echo "etcd-server: $*" >&2; }
die() { say "error: $*"; exit 1; }

if ! command -v etcd >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "etcd is not installed and there is no apt-get: install etcd 3.4 or later by hand"
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "installing etcd-server needs root or sudo"
        sudo="sudo"
    fi
    say "installing Debian's etcd-server with apt-get"
    $sudo apt-get update -qq >&2 || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq etcd-server >&2 \
        || die "apt-get install etcd-server failed"
    # The package may start a system-wide server: the tests use their own.
fi
command -v etcd >/dev/null 2>&1 || die "etcd is missing after the install"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null \
        || echo $(( 20000 + RANDOM % 20000 ))
}
client_port=$(free_port)
peer_port=$(free_port)
while [[ "$peer_port" == "$client_port" ]]; do peer_port=$(free_port); done

data_dir=$(mktemp -d "${TMPDIR:-/tmp}/flowstate-etcd.XXXXXX")
log="$data_dir.log"
client="http://127.0.0.1:$client_port"
peer="http://127.0.0.1:$peer_port"

# nohup: the server outlives this script (and a hang-up of its terminal).
nohup etcd --name flowstate-test --data-dir "$data_dir" \
    --listen-client-urls "$client" --advertise-client-urls "$client" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
    --initial-cluster "flowstate-test=$peer" --initial-cluster-state new \
    >"$log" 2>&1 </dev/null &
pid=$!

answers() { curl -sf -X POST -d '{}' "$client/v3/maintenance/status" >/dev/null 2>&1; }
deadline=$(( $(date +%s) + WAIT_SECS ))
until answers; do
    if ! kill -0 "$pid" 2>/dev/null; then
        die "etcd exited before answering on $client; its log ($log): $(tail -n 20 "$log" 2>/dev/null)"
    fi
    if (( $(date +%s) >= deadline )); then
        kill "$pid" 2>/dev/null || true
        die "etcd did not answer on $client within ${WAIT_SECS}s; its log ($log): $(tail -n 20 "$log" 2>/dev/null)"
    fi
    sleep 0.2
done
say "$(etcd --version 2>/dev/null | head -n 1) (pid $pid) serves $client, data in $data_dir, log $log"

cat <<EOT
export FLOWSTATE_TEST_ETCD_URL=$client
export FLOWSTATE_REQUIRE_ETCD=1
export ETCD_SERVER_PID=$pid
export ETCD_SERVER_DATA_DIR=$data_dir
EOT
