#!/usr/bin/env bash
# Runs fuzz targets for a bounded time each, starting from their committed
# corpora (fuzz/corpus/<target>/), on stable Rust: `cargo fuzz -s none`
# needs no nightly flag (see docs/fuzzing.md). A crash, a failed
# invariant, a timeout or running out of memory fails the script, and
# libFuzzer leaves the input in fuzz/artifacts/<target>/.
#
#   fuzz/run.sh [SECONDS_EACH] [TARGET...]     # default: 20 s, every target
#
# FUZZ_JOBS=N runs N targets at a time (default 1).
#
# New inputs go to a scratch directory, not to the committed corpus; to
# keep some, merge them in by hand (docs/fuzzing.md).
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-20}"
shift || true
jobs="${FUZZ_JOBS:-1}"

if ! command -v cargo-fuzz >/dev/null; then
  cargo install --locked cargo-fuzz
fi

# `-s none`: libFuzzer's coverage instrumentation only (stable -C flags);
# the sanitizers are what would need nightly, and safe Rust needs them little.
# (More codegen units build no faster here: on two cores the crates
# already build side by side, and 16 units took twice the CPU time.)
build=(-s none)
cargo fuzz build "${build[@]}"
# cargo fuzz has no --locked: the lock file must not have moved.
git diff --exit-code --quiet -- fuzz/Cargo.lock || {
  echo "fuzz/Cargo.lock changed during the build; commit the new one" >&2
  exit 1
}

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# One target: its log and, at the end, its status in the scratch directory.
run_one() {
  local t="$1"
  mkdir -p "$scratch/$t"
  if cargo fuzz run "${build[@]}" "$t" "$scratch/$t" "fuzz/corpus/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$scratch/$t.log" 2>&1; then
    echo ok >"$scratch/$t.status"
  else
    echo failed >"$scratch/$t.status"
  fi
}

echo "fuzz: ${#targets[@]} targets, ${secs}s each, $jobs at a time"
running=0
for t in "${targets[@]}"; do
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait

passed=0
failed=0
for t in "${targets[@]}"; do
  if [ "$(cat "$scratch/$t.status" 2>/dev/null)" = ok ]; then
    runs="$(grep -oE '^Done [0-9]+ runs' "$scratch/$t.log" | grep -oE '[0-9]+' || echo '?')"
    echo "fuzz: $t ok, $runs runs"
    passed=$((passed + 1))
  else
    tail -n 60 "$scratch/$t.log" || true
    echo "fuzz: $t FAILED (input in fuzz/artifacts/$t/)"
    failed=$((failed + 1))
  fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
