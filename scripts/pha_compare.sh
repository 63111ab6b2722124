#!/usr/bin/env bash
# PHA vs multi-task Houlsby vs parallel adapters at a matched trainable budget (about 170k
# module parameters each), multi-task on six GLUE tasks in mixed batches, at N training
# examples per task, over several seeds. Writes runs/pha-compare/*/result.json and prints
# one row per method and task: mean and standard deviation over the seeds.
#   bash scripts/pha_compare.sh [N=100] [STEPS=300] [SEEDS="1 2 3"]
# Budgets: PHA (hyper_hidden 8, bottleneck 16, shared 16, retriever 32) 172,440; Houlsby b=18
# 170,712; parallel adapter b=36 168,408 (plus the same heads). The learning rate is the
# default run's 1e-3 for all three, not tuned per method.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N=${1:-100}
STEPS=${2:-300}
SEEDS=${3:-"1 2 3"}
OUT=runs/pha-compare
mkdir -p "$OUT/configs"
cargo build --release -p peft-host --quiet
declare -A MODULE=(
  [pha]='{"plugin": "pha", "config": {"hyper_hidden": 8, "bottleneck": 16, "shared_bottleneck": 16, "retriever_hidden": 32}}'
  [houlsby]='{"plugin": "houlsby", "config": {"bottleneck": 18}}'
  [parallel-adapter]='{"plugin": "parallel-adapter", "config": {"bottleneck": 36}}'
)
declare -A GROUPS=(
  [pha]='["adapter", "retriever", "prototype", "hyper", "head"]'
  [houlsby]='["adapter", "head"]'
  [parallel-adapter]='["adapter", "head"]'
)
for method in pha houlsby parallel-adapter; do
  for seed in $SEEDS; do
    cfg="$OUT/configs/$method-n$N-seed$seed.json"
    tasks=""
    for t in glue-sst2 glue/mrpc glue/rte glue/qnli glue/cola glue/stsb; do
      tasks+="{\"name\": \"$t\", \"train_examples\": $N, \"eval_examples\": 400},"
    done
    cat > "$cfg" <<JSON
{
  "backbone": "all-MiniLM-L6-v2",
  "seed": $seed,
  "modules": [${MODULE[$method]}],
  "tasks": [${tasks%,}],
  "training": {
    "steps": $STEPS, "batch_size": 32, "learning_rate": 1e-3, "warmup_steps": 30,
    "max_length": 96, "task_sampling": "temperature", "temperature": 10.0,
    "mixed_batches": true, "train_groups": ${GROUPS[$method]}
  }
}
JSON
    echo "== $cfg" >&2
    ./target/release/peft-host run "$cfg" --out "$OUT/n$N" --quiet
  done
done
python3 - "$OUT/n$N" <<'PY'
import json, pathlib, statistics, sys
rows = {}
for f in sorted(pathlib.Path(sys.argv[1]).glob("*/result.json")):
    r = json.loads(f.read_text())
    method = r["config"]["modules"][0]["plugin"]
    for e in r["report"]["evaluations"]:
        if e["step"] == r["report"]["steps"]:
            rows.setdefault((e["task"], method), []).append(e["score"])
print("| task | method | metric (mean ± std) | seeds |\n| --- | --- | ---: | ---: |")
for (task, method), s in sorted(rows.items()):
    sd = statistics.stdev(s) if len(s) > 1 else 0.0
    print(f"| {task} | {method} | {statistics.mean(s):.4f} ± {sd:.4f} | {len(s)} |")
PY
