#!/usr/bin/env bash
# build.sh [DIR] [cmake args...]: configure and build relayd (default build dir: build/).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$top/build}
shift || true
cmake -S "$top" -B "$dir" "$@" >/dev/null
cmake --build "$dir" -j"$(nproc)"
