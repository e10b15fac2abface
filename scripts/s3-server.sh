#!/usr/bin/env bash
# Starts a local S3-compatible server (s3s-fs) for the checkpoint storage tests.
#
#   eval "$(scripts/s3-server.sh)"      # then: cargo test -p flowstate-checkpoint
#   kill "$S3_SERVER_PID"               # when done
#
# Installs s3s-fs 0.14.1 with cargo into $FLOWSTATE_TOOLS_DIR (default
# $HOME/.cache/flowstate-tools) unless it is already there (a few minutes on two
# cores, once), starts it on 127.0.0.1 at a free port with its data in a fresh
# temporary directory holding the bucket `flowstate-test`, waits until the port
# answers (at most FLOWSTATE_S3_WAIT seconds, default 30), and prints `export`
# lines for the caller to eval. Progress and errors go to stderr; stdout carries
# only the export lines. Exits non-zero with a message if any step fails.
set -euo pipefail

S3S_VERSION=0.14.1
TOOLS_DIR="${FLOWSTATE_TOOLS_DIR:-$HOME/.cache/flowstate-tools}"
BIN="$TOOLS_DIR/bin/s3s-fs"
WAIT_SECS="${FLOWSTATE_S3_WAIT:-30}"
BUCKET=flowstate-test

say() { echo "s3-server: $*" >&2; }
die() { say "error: $*"; exit 1; }

installed_version() { "$BIN" --version 2>/dev/null | awk '{print $2}'; }

if [[ ! -x "$BIN" || "$(installed_version)" != "$S3S_VERSION" ]]; then
    command -v cargo >/dev/null || die "cargo is needed to install s3s-fs"
    say "installing s3s-fs $S3S_VERSION into $TOOLS_DIR (takes a few minutes)"
    started=$(date +%s)
    cargo install --locked "s3s-fs@$S3S_VERSION" --features binary --root "$TOOLS_DIR" >&2 \
        || die "cargo install s3s-fs@$S3S_VERSION failed"
    say "installed in $(( $(date +%s) - started ))s"
fi
[[ -x "$BIN" ]] || die "$BIN is missing after the install"

# A free port: bind port 0 and read back what the kernel chose.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null) \
    || port=$(( 20000 + RANDOM % 20000 ))

data_dir=$(mktemp -d "${TMPDIR:-/tmp}/flowstate-s3.XXXXXX")
mkdir -p "$data_dir/$BUCKET"
access_key="flowstate-$RANDOM$RANDOM"
secret_key="secret-$RANDOM$RANDOM$RANDOM"
log="$data_dir.log"

# nohup: the server outlives this script (and a hang-up of its terminal).
nohup "$BIN" --host 127.0.0.1 --port "$port" --access-key "$access_key" --secret-key "$secret_key" "$data_dir" \
    >"$log" 2>&1 </dev/null &
pid=$!

port_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
deadline=$(( $(date +%s) + WAIT_SECS ))
until port_answers; do
    if ! kill -0 "$pid" 2>/dev/null; then
        die "s3s-fs exited before answering on 127.0.0.1:$port; its log ($log): $(tail -n 20 "$log" 2>/dev/null)"
    fi
    if (( $(date +%s) >= deadline )); then
        kill "$pid" 2>/dev/null || true
        die "s3s-fs did not answer on 127.0.0.1:$port within ${WAIT_SECS}s; its log ($log): $(tail -n 20 "$log" 2>/dev/null)"
    fi
    sleep 0.2
done
say "s3s-fs $S3S_VERSION (pid $pid) serves $data_dir on http://127.0.0.1:$port, log $log"

cat <<EOF
export AWS_ACCESS_KEY_ID=$access_key
export AWS_SECRET_ACCESS_KEY=$secret_key
export AWS_ENDPOINT_URL=http://127.0.0.1:$port
export AWS_REGION=us-east-1
export AWS_ALLOW_HTTP=true
export FLOWSTATE_TEST_S3_URL=s3://$BUCKET/ci
export FLOWSTATE_REQUIRE_S3=1
export S3_SERVER_PID=$pid
export S3_SERVER_DATA_DIR=$data_dir
EOF
