#!/usr/bin/env bash
# Data-parallel throughput: one process against N ranks on this machine (loopback, inside a
# loopback-only network namespace when `unshare -rn` works), same run: MiniLM + LoRA on SST-2,
# dropout off, batch B. Prints seconds per training step (rank 0's result.json: train time /
# steps, the all-reduce included; start-up, model load and evaluation excluded) and the ratio.
#
#   scripts/bench_parallel.sh [RANKS=2] [STEPS=20] [BATCH=32]
#
# Threads: one process uses all cores; each of N ranks gets cores/N (RAYON_NUM_THREADS), so the
# comparison is the same machine split N ways. On one machine data parallelism only pays where
# one process cannot use all cores; across machines each rank has its own.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RANKS=${1:-2}
STEPS=${2:-20}
BATCH=${3:-32}
CORES=$(nproc)
PER_RANK=$(( CORES / RANKS > 0 ? CORES / RANKS : 1 ))
# PEFT_HOST_BIN: an already built binary (default: build the release one).
if [ -n "${PEFT_HOST_BIN:-}" ]; then
  BIN=$(realpath "$PEFT_HOST_BIN")
else
  cargo build --release -q -p peft-host
  BIN=$PWD/target/release/peft-host
fi
DATA=${PEFT_DATA:-$PWD/../shared/data}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

MINILM=$(ls -d .cache/models/all-MiniLM-L6-v2 2>/dev/null || true)
[ -n "$MINILM" ] || { echo "all-MiniLM-L6-v2 is not installed: run scripts/setup.sh" >&2; exit 1; }
mkdir -p "$TMP/minilm"
python3 - "$MINILM/config.json" "$TMP/minilm/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["hidden_dropout_prob"] = c["attention_probs_dropout_prob"] = 0.0
json.dump(c, open(sys.argv[2], "w"))
PY
ln -s "$(realpath "$MINILM/model.safetensors")" "$TMP/minilm/model.safetensors"
ln -s "$(realpath "$MINILM/tokenizer.json")" "$TMP/minilm/tokenizer.json"
cat > "$TMP/run.json" <<JSON
{ "backbone": { "path": "$TMP/minilm" }, "modules": [{ "plugin": "lora" }],
  "task": { "name": "glue-sst2", "train_examples": 2000, "eval_examples": 32 },
  "training": { "steps": $STEPS, "batch_size": $BATCH, "learning_rate": 1e-3, "max_length": 128,
                "checkpoint_every": 0 }, "seed": 1 }
JSON

per_step() {
  python3 -c 'import json,sys,glob; r=json.load(open(glob.glob(sys.argv[1]+"/*/result.json")[0]))["report"]; print("%.3f" % (r["train_seconds"]/r["steps"]))' "$1"
}

RAYON_NUM_THREADS=$CORES "$BIN" run "$TMP/run.json" --data "$DATA" --out "$TMP/one" --quiet > /dev/null
ONE=$(per_step "$TMP/one")

PORT=29500
SCRIPT="set -e
for r in \$(seq 0 $((RANKS - 1))); do
  RAYON_NUM_THREADS=$PER_RANK WORLD_SIZE=$RANKS RANK=\$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$PORT \\
    '$BIN' run '$TMP/run.json' --data '$DATA' --out '$TMP/n' --quiet > '$TMP/rank'\$r.log 2>&1 &
done
wait"
if unshare -rn true 2>/dev/null; then
  unshare -rn sh -c "ip link set lo up; $SCRIPT"
else
  echo "(no unshare -rn: ranks listen on every interface while they run)" >&2
  sh -c "$SCRIPT"
fi
N=$(per_step "$TMP/n")
echo "cores $CORES, batch $BATCH, $STEPS steps, MiniLM + LoRA, max_length 128"
echo "one process ($CORES threads):          $ONE s/step"
echo "$RANKS ranks ($PER_RANK thread(s) each):          $N s/step"
python3 -c "print('ranks / one process: %.2fx the time per step' % ($N / $ONE))"
