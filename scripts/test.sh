#!/usr/bin/env bash
# The test suite: `bash scripts/test.sh` from anywhere in the repository.
#
# Installs what the suite needs, then runs every test of the workspace in one
# profile (debug). Extra arguments go to `cargo test` (e.g. a test name filter
# after `--`). Performance is measured by benchmarks (bench/, crates/*/benches),
# not here.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# What the suite needs beyond a Rust toolchain: nothing yet. External services or
# tools a future test needs (an S3-compatible store, ...) are installed and
# started here, so that a newcomer and CI need only this one command.
if ! command -v cargo >/dev/null 2>&1; then
    echo "scripts/test.sh: cargo not found; install Rust with rustup first" >&2
    exit 1
fi

exec cargo test --workspace --locked "$@"
