#!/usr/bin/env bash
# Cost per method on MiniLM (batch 32 x 128, 2 threads): trainable parameters, inference and
# training-step medians, peak resident memory of the whole process; then the PyTorch + HF peft
# LoRA reference in the same session when /tmp/torchref exists (see docs/performance.md).
#   bash scripts/bench_methods.sh [RUNS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs="${1:-5}"
cargo build --release -p peft-host --quiet
bin=./target/release/peft-host
echo "| method | trainable | inference (ms) | train step (ms) | peak RSS (MiB) |"
echo "| --- | ---: | ---: | ---: | ---: |"
for m in houlsby parallel-adapter adapter-bias meta-adapters lora prefix pha; do
  out="$(mktemp)"
  /usr/bin/time -f '%M' -o "$out.rss" "$bin" bench model --plugin "$m" --runs "$runs" --json >"$out" 2>/dev/null
  python3 - "$m" "$out" "$out.rss" <<'PY'
import json, sys
m, path, rss = sys.argv[1:]
r = json.load(open(path))
kib = int(open(rss).read().split()[-1])
print(f"| {m} | {r['trainable_parameters']:,} | {r['inference']['median_ms']:,.0f} | "
      f"{r['train_step']['median_ms']:,.0f} | {kib / 1024:,.0f} |")
PY
  rm -f "$out" "$out.rss"
done
if [ -x /tmp/torchref/bin/python ]; then
  /tmp/torchref/bin/python scripts/pytorch_reference.py --model .cache/models/all-MiniLM-L6-v2 --runs "$runs"
fi
