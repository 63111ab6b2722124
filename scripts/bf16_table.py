"""Table of scripts/bf16_accuracy.sh's runs: dev accuracy per task and backbone dtype (mean ± std
over seeds), and bf16 − f32 paired by seed."""
import glob, json, re, statistics, sys

root = sys.argv[1] if len(sys.argv) > 1 else "runs/bf16"
acc, sps, loss = {}, {}, {}
for f in glob.glob(f"{root}/*/*/result.json"):
    m = re.search(r"/(\w+)-(f32|bf16)-s(\d+)/", f)
    if not m:
        continue
    r = json.load(open(f))["report"]
    ev = r["evaluations"][-1]
    a = ev["metrics"]["accuracy"] if "metrics" in ev else ev["accuracy"]
    acc[(m[1], m[2], int(m[3]))] = a
    sps[(m[1], m[2], int(m[3]))] = r["seconds_per_step"]
    loss[(m[1], m[2], int(m[3]))] = ev["loss"]


def ms(v):
    if not v:
        return "-"
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{100 * statistics.mean(v):.2f} ± {100 * sd:.2f} ({len(v)})"


print("| task | f32 dev accuracy % | bf16 dev accuracy % | bf16 − f32 (paired by seed), points | per seed f32 / bf16 | dev loss f32 / bf16 (mean over paired seeds) |")
print("| --- | ---: | ---: | ---: | --- | ---: |")
for task in ["sst2", "rte"]:
    seeds = sorted({s for (t, _, s) in acc if t == task})
    f = [acc[(task, "f32", s)] for s in seeds if (task, "f32", s) in acc]
    b = [acc[(task, "bf16", s)] for s in seeds if (task, "bf16", s) in acc]
    d = [acc[(task, "bf16", s)] - acc[(task, "f32", s)] for s in seeds
         if (task, "bf16", s) in acc and (task, "f32", s) in acc]
    per = ", ".join(
        f"s{s}: {100 * acc.get((task, 'f32', s), float('nan')):.1f} / {100 * acc.get((task, 'bf16', s), float('nan')):.1f}"
        for s in seeds)
    both = [s for s in seeds if (task, "f32", s) in loss and (task, "bf16", s) in loss]
    lf = [loss[(task, "f32", s)] for s in both]
    lb = [loss[(task, "bf16", s)] for s in both]
    ls = f"{statistics.mean(lf):.4f} / {statistics.mean(lb):.4f}" if lf and lb else "-"
    print(f"| {task} | {ms(f)} | {ms(b)} | {ms(d)} | {per} | {ls} |")
