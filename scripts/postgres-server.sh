#!/usr/bin/env bash
# Starts a throwaway local PostgreSQL server for the PostgreSQL sink tests
# (crates/postgres), or stops one.
#
#   eval "$(scripts/postgres-server.sh)"     # then: cargo test -p flowstate-postgres
#   scripts/postgres-server.sh stop          # when done (uses $PG_SERVER_DIR)
#   scripts/postgres-server.sh restart DIR SECS   # a transient outage (tests)
#
# Installs Debian's `postgresql` with apt-get (through sudo when not root) unless
# server binaries (initdb, pg_ctl, postgres under /usr/lib/postgresql/*/bin) are
# already there, creates a fresh data directory under ${TMPDIR:-/tmp}, configures
# it for the tests (max_prepared_transactions for PREPARE TRANSACTION, no fsync:
# the data is thrown away), starts it on 127.0.0.1 at a free port with its unix
# socket inside the data directory, waits until it answers (at most
# FLOWSTATE_PG_WAIT seconds, default 60), creates a database and a user with a
# password, and prints `export` lines for the caller to eval. Progress and errors
# go to stderr; stdout carries only the export lines. Exits non-zero with a
# message if any step fails.
#
# PostgreSQL refuses to run as root: as root, the server runs as the `postgres`
# user (created by the Debian package), or as a `flowstate-pg` system user made
# here when there is none.
set -euo pipefail

WAIT_SECS="${FLOWSTATE_PG_WAIT:-60}"
DB=flowstate_test
DB_USER=flowstate

say() { echo "postgres-server: $*" >&2; }
die() { say "error: $*"; exit 1; }

# As root, commands that touch the data directory run as the server's user.
as_server_user() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u "$SERVER_USER" -- "$@"
    else
        "$@"
    fi
}

# `stop [DIR]`: fast shutdown of the server of DIR (default $PG_SERVER_DIR), then
# delete DIR.
if [[ "${1:-}" == stop ]]; then
    dir="${2:-${PG_SERVER_DIR:-}}"
    [[ -n "$dir" ]] || die "stop: no directory given and PG_SERVER_DIR is not set"
    pidfile="$dir/pgdata/postmaster.pid"
    if [[ -f "$pidfile" ]]; then
        pid=$(head -n 1 "$pidfile")
        kill -INT "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    case "$dir" in
        */flowstate-pg.*) rm -rf "$dir" ;;
        *) say "not deleting $dir: not a directory this script made" ;;
    esac
    exit 0
fi

# The newest installed server version with all three binaries.
find_bin_dir() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n -r); do
        if [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]]; then
            echo "$d"
            return 0
        fi
    done
    return 1
}

# `restart DIR DOWN_SECS`: a transient outage for the tests: fast shutdown of the
# server of DIR (clients are disconnected; prepared transactions survive), DOWN_SECS
# seconds with nothing listening, then a start on the same port and data.
if [[ "${1:-}" == restart ]]; then
    dir="${2:-${PG_SERVER_DIR:-}}"
    down="${3:-2}"
    [[ -d "$dir/pgdata" ]] || die "restart: $dir/pgdata is not a data directory"
    BIN_DIR=$(find_bin_dir) || die "restart: no server binaries"
    SERVER_USER=$(stat -c %U "$dir/pgdata")
    as_server_user "$BIN_DIR/pg_ctl" -D "$dir/pgdata" -m fast -w stop >/dev/null 2>&1 \
        || die "restart: the server of $dir did not stop"
    sleep "$down"
    as_server_user "$BIN_DIR/pg_ctl" -D "$dir/pgdata" -l "$dir/server.log" -w -t "$WAIT_SECS" start \
        >/dev/null 2>&1 || die "restart: the server of $dir did not start again"
    say "restarted the server of $dir after ${down}s down"
    exit 0
fi

started=$(date +%s.%N)

if ! BIN_DIR=$(find_bin_dir); then
    say "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin: installing Debian's postgresql"
    SUDO=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || die "not root and no sudo: install the postgresql package first"
        SUDO=(sudo)
    fi
    # No cluster of the package's own (no server on port 5432): this script makes its own.
    if [[ ! -e /etc/postgresql-common/createcluster.conf ]]; then
        "${SUDO[@]}" mkdir -p /etc/postgresql-common
        echo "create_main_cluster = false" | "${SUDO[@]}" tee /etc/postgresql-common/createcluster.conf >/dev/null
    fi
    install_started=$(date +%s)
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 \
        || die "apt-get update failed"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        -o Dpkg::Options::=--force-confold postgresql >&2 \
        || die "apt-get install postgresql failed"
    say "installed in $(( $(date +%s) - install_started ))s"
    BIN_DIR=$(find_bin_dir) || die "no server binaries under /usr/lib/postgresql/*/bin after the install"
fi
version=$("$BIN_DIR/postgres" --version | awk '{print $3}')

SERVER_USER=$(id -un)
if [[ $(id -u) -eq 0 ]]; then
    if id postgres >/dev/null 2>&1; then
        SERVER_USER=postgres
    else
        SERVER_USER=flowstate-pg
        id "$SERVER_USER" >/dev/null 2>&1 \
            || useradd --system --no-create-home --shell /usr/sbin/nologin "$SERVER_USER" \
            || die "cannot create the user $SERVER_USER to run the server as"
    fi
fi

# A free port: bind port 0 and read back what the kernel chose.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null) \
    || port=$(( 20000 + RANDOM % 20000 ))

dir=$(mktemp -d "${TMPDIR:-/tmp}/flowstate-pg.XXXXXX")
[[ $(id -u) -eq 0 ]] && chown "$SERVER_USER" "$dir"
pgdata="$dir/pgdata"
log="$dir/server.log"
password="pw$RANDOM$RANDOM$RANDOM"

# Local (unix socket) connections: trust, for the setup below; TCP: password.
as_server_user "$BIN_DIR/initdb" -D "$pgdata" -U postgres --auth-local=trust \
    --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 --no-sync >"$dir/initdb.log" 2>&1 \
    || die "initdb failed; its output ($dir/initdb.log): $(tail -n 20 "$dir/initdb.log" 2>/dev/null)"

cat >>"$pgdata/postgresql.conf" <<EOF

# flowstate test server (scripts/postgres-server.sh): throwaway data.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
max_prepared_transactions = 64
max_connections = 100
shared_buffers = 64MB
fsync = off
synchronous_commit = off
full_page_writes = off
EOF

as_server_user "$BIN_DIR/pg_ctl" -D "$pgdata" -l "$log" -w -t "$WAIT_SECS" start >/dev/null 2>&1 \
    || die "the server did not start within ${WAIT_SECS}s on 127.0.0.1:$port; its log ($log): $(tail -n 20 "$log" 2>/dev/null)"
pid=$(head -n 1 "$pgdata/postmaster.pid")

psql_admin() {
    "$BIN_DIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres -d postgres "$@" >&2
}
psql_admin -c "CREATE ROLE $DB_USER LOGIN PASSWORD '$password'" \
    -c "CREATE DATABASE $DB OWNER $DB_USER" \
    || { bash "${BASH_SOURCE[0]}" stop "$dir"; die "cannot create the test database and user"; }

# The URL works over TCP with the password: the tests connect exactly so.
port_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
port_answers || { bash "${BASH_SOURCE[0]}" stop "$dir"; die "127.0.0.1:$port does not answer"; }

elapsed=$(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
say "PostgreSQL $version (pid $pid, as $SERVER_USER) on 127.0.0.1:$port, data $pgdata, log $log; ready in ${elapsed}s"

cat <<EOF
export FLOWSTATE_TEST_PG_URL=postgres://$DB_USER:$password@127.0.0.1:$port/$DB
export FLOWSTATE_REQUIRE_PG=1
export PG_SERVER_PID=$pid
export PG_SERVER_DIR=$dir
EOF
