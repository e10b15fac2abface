#!/usr/bin/env bash
# Whole-job deterministic simulation (crates/sim): real checkpointed jobs on a
# seeded single-threaded scheduler with virtual time and injected faults,
# checked by an independent checker.
#
#   bash scripts/simulate.sh --seeds N [--start-seed S]   # last line: SIMULATION seeds=N failures=F ...
#   bash scripts/simulate.sh --seed S --trace             # prints TRACE <hash>, the same on every run
#   bash scripts/simulate.sh ... --variant commit-before-complete   # the deliberately broken sink
#   bash scripts/simulate.sh ... --variant drop-channel-state       # unaligned checkpoints' channel state lost
#
# A failing seed prints the command that replays it. Release build: a seed
# takes milliseconds.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet -p flowstate-sim
exec target/release/flowstate-sim "$@"
