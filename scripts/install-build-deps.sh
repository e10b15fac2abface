#!/usr/bin/env bash
# Installs the system packages the build needs beyond a Rust toolchain:
# libclang (for the RocksDB bindings of `--features rocksdb`), and cmake and
# libcurl4-openssl-dev (for librdkafka, which crates/kafka builds from source with
# rdkafka's `cmake-build` feature). Does nothing when they are present; uses
# apt-get (as root, or through sudo) on Debian/Ubuntu, only for what is missing.
set -euo pipefail

# libclang itself (libclang.so, libclang-14.so.1, ...), not libclang-cpp, which
# some images carry without it.
have_libclang() {
    ldconfig -p 2>/dev/null | grep -Eq 'libclang(-[0-9.]+)?\.so' ||
        compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null ||
        compgen -G '/usr/lib/llvm-*/lib/libclang-[0-9]*.so*' >/dev/null
}

have_cmake() { command -v cmake >/dev/null 2>&1; }

# The development files of libcurl (headers and the unversioned .so), whichever
# TLS flavour provides them.
have_libcurl_dev() {
    [ -f /usr/include/curl/curl.h ] ||
        compgen -G '/usr/include/*/curl/curl.h' >/dev/null
}

missing=()
have_libclang || missing+=(libclang-dev)
have_cmake || missing+=(cmake)
have_libcurl_dev || missing+=(libcurl4-openssl-dev)

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-build-deps: missing ${missing[*]} and there is no apt-get; install them by hand (libclang: clang's shared library; cmake; libcurl's development files)" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
echo "install-build-deps: installing ${missing[*]} (libclang for RocksDB's bindings; cmake and libcurl for librdkafka)" >&2
$sudo apt-get update -qq >&2 || true
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2
