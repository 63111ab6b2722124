"""Table of scripts/bf16_accuracy.sh's runs: dev accuracy per task and variant (f32, bf16,
bf16m = bf16 with matmul_precision medium; mean ± std over seeds), and each variant − f32
paired by seed."""
import glob, json, re, statistics, sys

root = sys.argv[1] if len(sys.argv) > 1 else "runs/bf16"
acc, loss = {}, {}
for f in glob.glob(f"{root}/*/*/result.json"):
    m = re.search(r"/(\w+)-(f32|bf16m?)-s(\d+)/", f)
    if not m:
        continue
    ev = json.load(open(f))["report"]["evaluations"][-1]
    a = ev["metrics"]["accuracy"] if "metrics" in ev else ev["accuracy"]
    acc[(m[1], m[2], int(m[3]))] = a
    loss[(m[1], m[2], int(m[3]))] = ev["loss"]


def ms(v):
    if not v:
        return "-"
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{100 * statistics.mean(v):.2f} ± {100 * sd:.2f} ({len(v)})"


print("| task | variant | dev accuracy % | − f32 (paired by seed), points | per seed | dev loss (mean) | − f32 dev loss (paired) |")
print("| --- | --- | ---: | ---: | --- | ---: | ---: |")
for task in ["sst2", "rte"]:
    for v in ["f32", "bf16", "bf16m"]:
        seeds = sorted(s for (t, d, s) in acc if t == task and d == v)
        if not seeds:
            continue
        a = [acc[(task, v, s)] for s in seeds]
        paired = [s for s in seeds if (task, "f32", s) in acc]
        d = [acc[(task, v, s)] - acc[(task, "f32", s)] for s in paired]
        dl = [loss[(task, v, s)] - loss[(task, "f32", s)] for s in paired]
        per = ", ".join(f"s{s}: {100 * acc[(task, v, s)]:.1f}" for s in seeds)
        lm = statistics.mean(loss[(task, v, s)] for s in seeds)
        dls = f"{statistics.mean(dl):+.5f}" if dl and v != "f32" else "-"
        print(f"| {task} | {v} | {ms(a)} | {ms(d) if v != 'f32' else '-'} | {per} | {lm:.4f} | {dls} |")
