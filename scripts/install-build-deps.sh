#!/usr/bin/env bash
# Installs the system packages the build needs beyond a Rust toolchain:
# libclang (for the RocksDB bindings of `--features rocksdb`). Does nothing when
# they are present; uses apt-get (as root, or through sudo) on Debian/Ubuntu.
set -euo pipefail

# libclang itself (libclang.so, libclang-14.so.1, ...), not libclang-cpp, which
# some images carry without it.
have_libclang() {
    ldconfig -p 2>/dev/null | grep -Eq 'libclang(-[0-9.]+)?\.so' ||
        compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null ||
        compgen -G '/usr/lib/llvm-*/lib/libclang-[0-9]*.so*' >/dev/null
}

if have_libclang; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-build-deps: libclang is missing and there is no apt-get; install libclang (clang's shared library) by hand" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
echo "install-build-deps: installing libclang-dev (for RocksDB's bindings)" >&2
$sudo apt-get update -qq >&2 || true
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq libclang-dev >&2
