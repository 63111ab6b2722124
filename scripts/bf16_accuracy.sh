#!/usr/bin/env bash
# Accuracy cost of holding the frozen backbone in bf16: Houlsby on GLUE SST-2 and RTE from the
# e2e configs (tests/configs/e2e/houlsby-glue-{sst2,rte}.json) with the seed and `backbone.dtype`
# set, seeds 1 2 3, f32 and bf16 alternated, then a table of mean ± std and the paired
# difference. Resumable: a run whose result.json exists is skipped.
#   bash scripts/bf16_accuracy.sh [BIN] [OUT]      (defaults: target/release/peft-host, runs/bf16)
# SMALL=1 shrinks each run (80 steps, smaller batches and lengths, 400 SST-2 dev sentences) to
# fit a loaded 2-core machine; without it the e2e configs run as they are (docs/results.md).
# SEEDS="1 2 3" and TASKS="sst2 rte" choose the cells; DTYPES="f32 bf16" the variants (bf16m: bf16
# with `matmul_precision: medium`, the activations of those products rounded to bf16 too).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=${1:-target/release/peft-host}
OUT=${2:-runs/bf16}
SEEDS=${SEEDS:-1 2 3}
TASKS=${TASKS:-sst2 rte}
DTYPES=${DTYPES:-f32 bf16}
mkdir -p "$OUT/configs"
for task in $TASKS; do
  for seed in $SEEDS; do
    for dtype in $DTYPES; do
      name="$task-$dtype-s$seed"
      if compgen -G "$OUT/$name/*/result.json" > /dev/null; then continue; fi
      cfg="$OUT/configs/$name.json"
      python3 - "tests/configs/e2e/houlsby-glue-$task.json" "$cfg" "$seed" "$dtype" "${SMALL:-0}" <<'PY'
import json, sys
src, dst, seed, dtype, small = sys.argv[1:]
c = json.load(open(src))
c["backbone"] = {"name": c["backbone"], "dtype": dtype.rstrip("m")}
if dtype == "bf16m":
    c["backbone"]["matmul_precision"] = "medium"
c["seed"] = int(seed)
if small == "1":
    t = c["training"]
    t.update(steps=80, warmup_steps=8, learning_rate=0.002)
    if c["task"]["name"] == "glue-sst2":
        t.update(batch_size=16, max_length=48)
        c["task"]["eval_examples"] = 400
    else:
        t.update(batch_size=8, max_length=64)
json.dump(c, open(dst, "w"), indent=2)
PY
      echo "== $name $(date -u +%H:%M:%S)" >&2
      "$BIN" run "$cfg" --out "$OUT/$name" --quiet > "$OUT/$name.log" 2>&1
    done
  done
done
python3 scripts/bf16_table.py "$OUT"
