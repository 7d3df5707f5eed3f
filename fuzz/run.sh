#!/usr/bin/env bash
# Runs fuzz targets for a bounded time each, starting from their committed
# corpora (fuzz/corpus/<target>/), on stable Rust: `cargo fuzz -s none`
# needs no nightly flag (see docs/fuzzing.md). A crash, a failed
# invariant, a timeout or running out of memory fails the script, and
# libFuzzer leaves the input in fuzz/artifacts/<target>/.
#
#   fuzz/run.sh [SECONDS_EACH] [TARGET...]     # default: 20 s, every target
#
# New inputs go to a scratch directory, not to the committed corpus; to
# keep some, merge them in by hand (docs/fuzzing.md).
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-20}"
shift || true

if ! command -v cargo-fuzz >/dev/null; then
  cargo install --locked cargo-fuzz
fi

# `-s none`: libFuzzer's coverage instrumentation only (stable -C flags);
# the sanitizers are what would need nightly, and safe Rust needs them little.
cargo fuzz build -s none
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
passed=0
failed=0
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  log="$scratch/$t.log"
  echo "fuzz: $t for ${secs}s"
  if cargo fuzz run -s none "$t" "$scratch/$t" "fuzz/corpus/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    grep -E '^Done [0-9]+ runs|stat::number_of_executed_units' "$log" | head -1 || true
    passed=$((passed + 1))
  else
    tail -n 60 "$log"
    echo "fuzz: $t FAILED (input in fuzz/artifacts/$t/)"
    failed=$((failed + 1))
  fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
