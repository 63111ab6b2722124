#!/usr/bin/env bash
# Cost of one upstream (priming) step per algorithm on MiniLM: batch 16 x 128 (CrossFit boolq and
# anli, long enough to fill 128 tokens), one task per step, one inner step; seconds per step of
# stage 1 and the peak resident memory of the whole run (stage 2 is one short fine-tuning).
#   bash scripts/priming_bench.sh [STEPS]      (PEFT_BIN=path: use that binary, no build)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
steps="${1:-3}"
if [ -z "${PEFT_BIN:-}" ]; then cargo build --release -p peft-host --quiet; fi
bin="${PEFT_BIN:-./target/release/peft-host}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "| algorithm | s / upstream step | peak RSS (MiB) |"
echo "| --- | ---: | ---: |"
for algo in multitask fomaml maml reptile; do
  python3 - "$algo" "$steps" >"$work/$algo.json" <<'PY'
import json, sys
algo, steps = sys.argv[1], int(sys.argv[2])
plugin, config = {
    "multitask": ("multitask", {"tasks_per_step": 1, "batch_size": 16}),
    "fomaml": ("maml", {"first_order": True, "inner_steps": 1, "support_size": 16, "query_size": 16}),
    "maml": ("maml", {"inner_steps": 1, "support_size": 16, "query_size": 16}),
    "reptile": ("reptile", {"inner_steps": 1, "batch_size": 16}),
}[algo]
print(json.dumps({
    "backbone": "all-MiniLM-L6-v2",
    "modules": [{"plugin": "houlsby"}],
    "task": {"name": "glue-cola", "eval_examples": 16},
    "training": {"steps": 1, "batch_size": 16, "max_length": 128},
    "priming": {"plugin": plugin, "config": config,
                "upstream_tasks": [{"name": "boolq"}, {"name": "anli"}],
                "upstream_groups": ["backbone"], "downstream_groups": ["adapter"],
                "steps": steps, "checkpoint_every": 0, "split_seeds": [13]},
}))
PY
  /usr/bin/time -f '%M' -o "$work/$algo.rss" "$bin" run "$work/$algo.json" --out "$work/runs-$algo" --quiet >/dev/null
  python3 - "$algo" "$work/runs-$algo" "$work/$algo.rss" <<'PY'
import glob, json, sys
algo, runs, rss = sys.argv[1:]
r = json.load(open(glob.glob(f"{runs}/*/result.json")[0]))
kib = int(open(rss).read().split()[-1])
print(f"| {algo} | {r['stage1']['seconds_per_step']:.2f} | {kib / 1024:,.0f} |")
PY
done
