#!/usr/bin/env bash
# The test suite: installs what it needs (scripts/setup.sh), checks formatting, lints, checks
# that the CUDA feature builds, then runs every test of the workspace. Prints each phase's time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
phase() {
  local name="$1"
  shift
  local start=$SECONDS
  "$@"
  echo "test.sh: $name took $((SECONDS - start)) s" >&2
}
phase setup bash scripts/setup.sh
phase fmt cargo fmt --all --check
phase clippy cargo clippy --workspace --all-targets --quiet -- -D warnings
phase cuda-check cargo check -p peft-host --features cuda --quiet
phase cuda-check-tests cargo check -p peft-tests --features cuda --tests --quiet
phase build-tests cargo test --workspace --no-run --quiet
phase tests cargo test --workspace
