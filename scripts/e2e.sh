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
python3 - <<'PY'
import json, glob
rows = []
for f in sorted(glob.glob("runs/e2e/*/result.json")):
    r = json.load(open(f))
    rep, cfg = r["report"], r["config"]
    ev = rep["evaluations"][-1]
    labels = [0, 0]
    rows.append((rep["task"], "+".join(m["plugin"] for m in cfg["modules"]), rep["trainable_parameters"],
                 rep["steps"], rep["seconds_per_step"], ev["accuracy"], ev["examples"]))
print("| task | method | trainable | steps | s/step | dev accuracy | dev examples |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
for t in rows:
    print(f"| {t[0]} | {t[1]} | {t[2]:,} | {t[3]} | {t[4]:.2f} | {t[5]:.4f} | {t[6]} |")
PY
