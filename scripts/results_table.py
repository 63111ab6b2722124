"""Markdown table of the runs under a folder (default runs/e2e): task, method, trainable
parameters, steps, seconds per step, evaluation accuracy and the majority-class baseline."""
import glob, json, sys

root = sys.argv[1] if len(sys.argv) > 1 else "runs/e2e"
MAJORITY = {"glue-sst2": 444 / 872, "glue/rte": 146 / 277}
print("| task | method | trainable | steps | s/step | dev accuracy | majority class | dev examples |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for f in sorted(glob.glob(f"{root}/**/result.json", recursive=True)):
    r = json.load(open(f))
    rep, cfg = r["report"], r["config"]
    ev = rep["evaluations"][-1]
    acc = ev["metrics"]["accuracy"] if "metrics" in ev else ev["accuracy"]
    method = "+".join(m["plugin"] for m in cfg["modules"])
    maj = MAJORITY.get(rep["task"])
    print(f"| {rep['task']} | {method} | {rep['trainable_parameters']:,} | {rep['steps']} | "
          f"{rep['seconds_per_step']:.2f} | {acc:.4f} | {'%.4f' % maj if maj else '-'} | {ev['examples']} |")
