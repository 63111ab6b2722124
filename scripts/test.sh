#!/usr/bin/env bash
# The test suite: installs what it needs (scripts/setup.sh), checks formatting, lints, builds
# the CUDA feature, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo check -p peft-host --features cuda --quiet
cargo test --workspace
