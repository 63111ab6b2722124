#!/usr/bin/env bash
# End-to-end learning runs: every PEFT method on real MiniLM, on SST-2 and RTE (GLUE), with
# the configs in tests/configs/e2e. Writes runs/e2e/*/result.json and prints a markdown table
# (docs/results.md records it). Slow: minutes per run on 2 cores.
#   bash scripts/e2e.sh [FILTER]     e.g. bash scripts/e2e.sh lora
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
cargo build --release -p peft-host --quiet
for cfg in tests/configs/e2e/*${1:-}*.json; do
  echo "== $cfg" >&2
  ./target/release/peft-host run "$cfg" --out runs/e2e --quiet
done
python3 scripts/results_table.py runs/e2e
