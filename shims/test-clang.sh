#!/usr/bin/env bash
# Build the shim and the stand-in drivers with clang (-Werror) and run the shim tests against
# that build. The gcc build is the main one; this variant proves the sources build with clang too
# (issue 5). It runs when clang is installed (.ci/run installs it from Debian when it can).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if ! command -v clang >/dev/null 2>&1; then
    echo "shims: clang is not installed, so the clang build was NOT run (apt-get install clang)"
    exit 0
fi
make -C "$root/shims" -j2 CC=clang BUILD_ROOT="$root/build/shims/clang"
HAMI_SHIM_BUILD="$root/build/shims/clang" HAMI_SHIM_STRESS_OPS=200000 pytest "$root/tests/shims"
