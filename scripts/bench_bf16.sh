#!/usr/bin/env bash
# Speed and peak memory of a bf16-held backbone against f32: `peft-host bench model` as separate
# processes under /usr/bin/time -f %M (peak RSS), MiniLM batch 32 x 128, inference only and
# inference + a Houlsby train step, f32 and bf16 alternated (the order flips each round), then
# medians, min-max across rounds and the bf16/f32 ratios.
#   bash scripts/bench_bf16.sh [BIN] [ROUNDS] [RUNS]   (defaults: target/release/peft-host, 3, 3)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=${1:-target/release/peft-host}
ROUNDS=${2:-3}
RUNS=${3:-3}
OUT=${OUT:-target/bench-bf16}
mkdir -p "$OUT"
: > "$OUT/raw.jsonl"
for round in $(seq 1 "$ROUNDS"); do
  if (( round % 2 )); then order="f32 bf16"; else order="bf16 f32"; fi
  for plugin in none houlsby; do
    for dtype in $order; do
      args=(bench model --runs "$RUNS" --json --backbone-dtype "$dtype")
      [[ $plugin != none ]] && args+=(--plugin "$plugin")
      /usr/bin/time -f %M -o "$OUT/rss" "$BIN" "${args[@]}" > "$OUT/out.json"
      python3 - "$OUT" "$round" "$plugin" "$dtype" <<'PY'
import json, sys
out, rnd, plugin, dtype = sys.argv[1:]
r = json.load(open(f"{out}/out.json"))
rss = int(open(f"{out}/rss").read().split()[-1]) / 1024
row = {"round": int(rnd), "plugin": plugin, "dtype": dtype, "peak_rss_mib": rss,
       "inference_ms": r["inference"]["median_ms"],
       "step_ms": r["train_step"]["median_ms"] if r.get("train_step") else None,
       "weights_mib": r["backbone_weights_mib"]}
print(json.dumps(row))
open(f"{out}/raw.jsonl", "a").write(json.dumps(row) + "\n")
PY
    done
  done
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(f"{sys.argv[1]}/raw.jsonl")]
def cell(v):
    v = [x for x in v if x is not None]
    if not v: return "-"
    return f"{statistics.median(v):,.0f} ({min(v):,.0f}-{max(v):,.0f})"
def ratio(key, plugin):
    by = {}
    for r in rows:
        if r["plugin"] == plugin and r[key] is not None:
            by.setdefault(r["round"], {})[r["dtype"]] = r[key]
    q = [d["bf16"] / d["f32"] for d in by.values() if len(d) == 2]
    return f"{statistics.median(q):.3f} ({min(q):.3f}-{max(q):.3f})" if q else "-"
print("| run | backbone | weights MiB | inference ms | train step ms | peak RSS MiB |")
print("| --- | --- | ---: | ---: | ---: | ---: |")
for plugin in ["none", "houlsby"]:
    for dtype in ["f32", "bf16"]:
        s = [r for r in rows if r["plugin"] == plugin and r["dtype"] == dtype]
        name = "inference only" if plugin == "none" else "inference + Houlsby step"
        print(f"| {name} | {dtype} | {s[0]['weights_mib']:.1f} | {cell([r['inference_ms'] for r in s])} | "
              f"{cell([r['step_ms'] for r in s])} | {cell([r['peak_rss_mib'] for r in s])} |")
    name = "inference only" if plugin == "none" else "inference + Houlsby step"
    print(f"| {name} | bf16 / f32 | | {ratio('inference_ms', plugin)} | {ratio('step_ms', plugin)} | {ratio('peak_rss_mib', plugin)} |")
PY
