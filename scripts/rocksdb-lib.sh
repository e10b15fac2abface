#!/usr/bin/env bash
# Prints `export ROCKSDB_LIB_DIR=... ROCKSDB_STATIC=1` for a prebuilt RocksDB
# static library, building it first if this machine has none (once: about 15 to
# 35 minutes of C++ on two cores). `eval "$(bash scripts/rocksdb-lib.sh)"`.
#
# Why: librocksdb-sys compiles RocksDB's 350 C++ files inside its build script,
# once per target directory, profile and set of unified build features — so
# `cargo clippy`, `cargo test` and a release build would each compile it again.
# With ROCKSDB_LIB_DIR set, the build script only generates the bindings and
# links this one library. The library is built from the very librocksdb-sys
# version in Cargo.lock (its bundled RocksDB, lz4 only, -O2, no debug info).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
version=$(awk '/^name = "librocksdb-sys"$/ { getline; gsub(/"/, "", $3); print $3 }' "$root/Cargo.lock")
if [ -z "$version" ]; then
    echo "rocksdb-lib: librocksdb-sys is not in Cargo.lock" >&2
    exit 1
fi
cache=${FLOWSTATE_TOOLS:-$HOME/.cache/flowstate-tools}/librocksdb-sys-$version-lz4
if [ ! -f "$cache/librocksdb.a" ]; then
    echo "rocksdb-lib: building RocksDB $version once into $cache (C++, takes a while)" >&2
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/src"
    cat >"$work/Cargo.toml" <<TOML
[package]
name = "flowstate-rocksdb-prebuild"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
librocksdb-sys = { version = "=$version", default-features = false, features = ["lz4", "static", "bindgen-runtime"] }

[profile.release]
opt-level = 2
debug = false

[workspace]
TOML
    echo 'fn main() {}' >"$work/src/main.rs"
    # Own target dir: nothing of the project's builds is disturbed.
    # ROCKSDB_COMPILE: compile even if a ROCKSDB_LIB_DIR is configured somewhere.
    ROCKSDB_COMPILE=1 CARGO_TARGET_DIR="$work/target" \
        cargo build --release --quiet --manifest-path "$work/Cargo.toml" >&2
    built=$(find "$work/target/release/build" -path '*librocksdb-sys-*/out/librocksdb.a' | head -n 1)
    if [ -z "$built" ]; then
        echo "rocksdb-lib: the build left no librocksdb.a" >&2
        exit 1
    fi
    mkdir -p "$cache.tmp"
    cp "$built" "$cache.tmp/librocksdb.a"
    rm -rf "$cache"
    mv "$cache.tmp" "$cache"
fi
echo "export ROCKSDB_LIB_DIR='$cache' ROCKSDB_STATIC=1"
