#!/usr/bin/env bash
# Where the time of `peft-host bench model` goes, by op class, from a `perf` profile (sampled
# symbols grouped by the kernel or library they belong to). Needs `perf` (linux-tools).
#   bash scripts/bench_profile.sh [PLUGIN] [RUNS]   # no PLUGIN: inference only
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
plugin="${1:-}"
runs="${2:-3}"
cargo build --release -p peft-host --quiet
data="$(mktemp -d)/perf.data"
args=(bench model --runs "$runs")
[ -n "$plugin" ] && args+=(--plugin "$plugin")
perf record -q -o "$data" -F 999 ./target/release/peft-host "${args[@]}" >/dev/null 2>&1
perf report -i "$data" --no-children --sort symbol --stdio 2>/dev/null | python3 -c '
import re, sys
groups = [
    ("GEMM (gemm crate: projections, FFN, attention products)", r"gemm_|gemm::"),
    ("attention softmax, masks, dropout hash (nn/flash.rs)", r"nn::flash|nn::softmax"),
    ("GELU (nn/gelu.rs)", r"nn::gelu|erf"),
    ("layer norm (nn/layer_norm.rs)", r"layer_norm"),
    ("dropout (nn/dropout.rs)", r"nn::dropout|draw_keep|SmallRng|rand::"),
    ("memcpy / memset / page faults (fresh buffers, copies)", r"memmove|memcpy|memset|page_fault|clear_page|_mm_|folio|memcg|lru|pte|do_anonymous"),
    ("burn element-wise ops, strided copies (burn-flex, macerator)", r"burn_|macerator|StridedIter|cubecl"),
    ("AdamW, rayon, allocator, kernel scheduling", r"rayon|crossbeam|malloc|free|_int_|sched|schedule|futex|spin|switch|irq|tick|hrtimer|clock|peft_host::train"),
]
tot = {g: 0.0 for g, _ in groups}
other = []
for line in sys.stdin:
    m = re.match(r"\s+([0-9.]+)%\s+\[[.k]\]\s+(.*)", line)
    if not m:
        continue
    pct, sym = float(m.group(1)), m.group(2).strip()
    for g, rx in groups:
        if re.search(rx, sym):
            tot[g] += pct
            break
    else:
        other.append((pct, sym))
print("| op class | share of samples |")
print("| --- | ---: |")
for g, _ in groups:
    print(f"| {g} | {tot[g]:.1f} % |")
print(f"| other | {sum(p for p, _ in other):.1f} % |")
print()
print("largest other symbols:", "; ".join(f"{s[:60]} {p:.1f}%" for p, s in sorted(other, reverse=True)[:6]))
'
rm -rf "$(dirname "$data")"
