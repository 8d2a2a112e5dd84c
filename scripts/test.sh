#!/usr/bin/env bash
# test.sh: the README's test command.  On a fresh Debian 12 machine: installs what is needed
# (scripts/setup.sh), builds, and runs every test:
#   1. build/       (gcc, RelWithDebInfo): unit, simulator, fuzz-corpus replay, integration
#   2. build-asan/  (gcc, ASan+UBSan): all of the above again, relayd itself sanitized
#   3. build-fuzz/  (clang-14 libFuzzer, ASan+UBSan): a short fuzz of every harness
#                   (FUZZ_SECONDS in total, default 60; 0 skips)
# Exit status is non-zero if anything failed.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
JOBS=${JOBS:-2}

bash scripts/setup.sh

echo "== build (gcc, RelWithDebInfo)"
bash scripts/build.sh "$top/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo
echo "== tests"
(cd build && ctest -j"$JOBS" --output-on-failure --timeout 900)

echo "== build (gcc, ASan+UBSan)"
bash scripts/build.sh "$top/build-asan" -DCMAKE_BUILD_TYPE=Debug -DRELAY_SANITIZE=ON
echo "== unit, simulator, fuzz corpus and integration (relayd itself) under ASan+UBSan"
# (LSAN_OPTIONS: a leak inside NNG 1.5.2, explained in tests/lsan-nng.supp)
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    LSAN_OPTIONS="suppressions=$top/tests/lsan-nng.supp" \
    ctest -j"$JOBS" -L 'unit|fuzz|sim|integration' --output-on-failure --timeout 900)

if ((FUZZ_SECONDS > 0)); then
  echo "== fuzz (clang-14 libFuzzer, ASan+UBSan), ${FUZZ_SECONDS}s in total"
  CC=clang-14 CXX=clang++-14 bash scripts/build.sh "$top/build-fuzz" -DCMAKE_BUILD_TYPE=Debug -DRELAY_FUZZ=ON
  mapfile -t harnesses < <(find build-fuzz/tests/fuzz -maxdepth 1 -type f -executable -name 'fuzz_*' | sort)
  ((${#harnesses[@]} > 0)) || { echo "no fuzz harnesses built"; exit 1; }
  per=$((FUZZ_SECONDS / ${#harnesses[@]}))
  ((per >= 5)) || per=5
  for h in "${harnesses[@]}"; do
    name=$(basename "$h")
    corpus="$top/tests/fuzz/corpus/$name"
    work=$(mktemp -d)
    echo "-- $name: ${per}s (corpus $corpus)"
    # new inputs go to a scratch dir; the committed corpus is only read
    "$h" -max_total_time="$per" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      "$work" "$corpus" 2>"$work.log" || { tail -50 "$work.log"; echo "FUZZ FAILURE in $name"; exit 1; }
    grep -E 'stat::number_of_executed_units' "$work.log" || true
    rm -rf "$work" "$work.log"
  done
fi
echo "== all tests passed"
