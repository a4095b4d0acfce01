#!/usr/bin/env bash
# Runs the loom and shuttle models of lockstore's in-process queue.
#
# Each checker needs the whole crate graph built with its own --cfg, so each gets
# its own target dir (<base>/loom, <base>/shuttle, where <base> is
# $CARGO_TARGET_DIR if set, else target/) and the normal build is left alone. Release mode: the models run thousands of executions.
#
#   loom-tests/run-models.sh            # both
#   loom-tests/run-models.sh loom       # only loom
#   SHUTTLE_ITERATIONS=10000 loom-tests/run-models.sh shuttle
#   CARGO_TARGET_DIR=/tmp/t loom-tests/run-models.sh   # builds in /tmp/t/{loom,shuttle}
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-all}"
base="${CARGO_TARGET_DIR:-target}"
export CARGO_TERM_COLOR=never

run() { # name cfg test
  local name=$1 cfg=$2 test=$3 start end
  echo "== $name models (RUSTFLAGS=--cfg $cfg, $base/$cfg)"
  start=$(date +%s)
  local log="$base/$test-models.log" rc=0
  mkdir -p "$base"
  RUSTFLAGS="--cfg $cfg" CARGO_TARGET_DIR="$base/$cfg" \
    cargo test --release -p loom-tests --test "$test" -- --nocapture --test-threads=1 \
    >"$log" 2>&1 || rc=$?
  grep -E '^(loom|shuttle) model|^test |test result|panicked|^error|FAILED' "$log" || true
  if [ "$rc" != 0 ]; then echo "-- last lines of $log:"; tail -n 40 "$log"; fi
  end=$(date +%s)
  echo "== $name: exit $rc, $((end - start)) s (including build)"
  return "$rc"
}

rc=0
if [ "$which" = all ] || [ "$which" = loom ]; then run loom loom loom_queue || rc=1; fi
if [ "$which" = all ] || [ "$which" = shuttle ]; then
  run shuttle shuttle shuttle_queue || rc=1
  run "shuttle async" shuttle shuttle_async || rc=1
fi
exit $rc
