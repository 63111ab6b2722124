#!/usr/bin/env python3
"""PHA's experiments (issue 11), as one resumable command, on all-MiniLM-L6-v2.

1. Multi-task GLUE (SST-2, MRPC, RTE, QNLI, CoLA, STS-B) in mixed batches: PHA vs multi-task
   Houlsby vs parallel adapter at a matched module budget (scripts/pha_compare.sh's sizes), at
   `--n` training examples per task (0: all), `--seeds` run seeds (the seed draws the N examples,
   the same draw for every method, and the initialisation).
   Model selection: per method and N, the learning rate among `--select-lr` with the best mean
   score over tasks on a dev split carved from the training files (`holdout`: the split
   `train-holdout`, one fixed draw of `--holdout` examples per task, never trained on), with
   the run seeds `--select-seeds`. Then the test runs, once, with the chosen rate: trained on N
   of the full training file, scored on the evaluation split (GLUE's official dev set for SST-2,
   CoLA and RTE; the `ppft` dev re-split, held out of GLUE's training set, for MRPC, QNLI and
   STS-B), `--eval-examples` per task (one fixed subsample for every run).
2. Few-shot transfer: the GLUE-trained PHA and Houlsby of experiment 1 (N = the first `--n`,
   first seed, chosen rate) adapted to SuperGLUE CB and BoolQ (k of FewGLUE's 32 training
   examples, scored on the validation set) and CrossFit SciTail (k of the 16 of split seed
   13/21/42/87/100 by seed, scored on the test file; 32 shots do not exist there) at `--shots`,
   `--transfer-seeds`: PHA from the retrieved prototype, PHA from a random prototype (both fine-tune
   prototype + hypernetwork + head), and the multi-task Houlsby fine-tuned (`init_from`; adapter +
   head). The fine-tuning rate: `--ft-lr` for every row, or, with `--ft-select-lr`, per row and
   k the candidate with the best mean dev score over the transfer tasks (FewGLUE's `dev32` file
   for CB and BoolQ, the split's 16-example `_dev` file for SciTail; first transfer seed).
3. Ablations at the first N, each variant choosing its rate on train-holdout as the methods do:
   `retrieval_loss: false` (without L_IR) and `prototype_loss: false` (without prototypes: the
   k_i become plain task embeddings learned through the task loss only, what hyperformer-style
   methods do).
4. The task x prototype cosine heat map after training: every PHA run writes retrieval.json /
   retrieval.svg; copied here with the mean over seeds as a table.

Writes under `--out`: results/ (one JSON per run, keyed by request and `peft-host --version`),
results.json, results.md, low-data.svg, heatmap-n<N>.svg. Interrupted? Run the same command
again: finished runs are reused. `--table-only` runs nothing and tabulates what is stored.
Across machines: the same command with `--shard i/n` on each of n hosts sharing `--out`, repeated
until no shard reports runs not stored (scripts/expkit.py; docs/engine.md), then `--table-only`.

    python3 scripts/pha_experiment.py --smoke          # minutes: checks the pipeline
    python3 scripts/pha_experiment.py                  # the full grid (a day on a 2-core CPU)
    python3 scripts/pha_experiment.py --n 100 --steps 100 --max-length 64 --eval-examples 200
"""
import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

from expkit import Runner, bootstrap, mean_ci, parse_shard, std

ROOT = Path(__file__).resolve().parent.parent
TASKS = ["glue-sst2", "glue/mrpc", "glue/rte", "glue/qnli", "glue/cola", "glue/stsb"]
PHA_GROUPS = ["adapter", "retriever", "prototype", "hyper", "head"]
# Matched module budgets (pha_compare.sh): PHA 172,440; Houlsby b=18 170,712; parallel b=36 168,408.
PHA_SMALL = {"hyper_hidden": 8, "bottleneck": 16, "shared_bottleneck": 16, "retriever_hidden": 32}
METHODS = {
    "pha": ({"plugin": "pha", "config": PHA_SMALL}, PHA_GROUPS),
    "houlsby": ({"plugin": "houlsby", "config": {"bottleneck": 18}}, ["adapter", "head"]),
    "parallel-adapter": ({"plugin": "parallel-adapter", "config": {"bottleneck": 36}},
                         ["adapter", "head"]),
}
ABLATIONS = {
    "pha w/o L_IR": {"retrieval_loss": False},
    "pha w/o prototypes (task embedding)": {"prototype_loss": False},
}
TRANSFER = ["superglue/cb", "superglue/boolq", "scitail"]
CROSSFIT_SPLITS = [13, 21, 42, 87, 100]
TRANSFER_ROWS = ["pha retrieved", "pha random", "houlsby fine-tuned"]


def ints(s):
    return [int(x) for x in s.split(",") if x]


def label_n(n):
    return "all" if n == 0 else str(n)


class Experiment:
    def __init__(self, args):
        self.a = args
        self.r = Runner(args.bin, args.out, offline=args.table_only, shard=parse_shard(args.shard))
        # Experiment 2 may run on another build (`--transfer-bin`): it only reads experiment 1's
        # adapter folders, so those are not remade.
        self.rt = (Runner(args.transfer_bin, args.out, offline=args.table_only,
                          shard=parse_shard(args.shard)) if args.transfer_bin else self.r)

    def try_run(self, cfg, label, transfer=False):
        r = self.rt if transfer else self.r
        return r.attempt(lambda: r.run(cfg, label), label)

    def glue_cfg(self, module, groups, n, seed, lr, dev):
        a = self.a
        tasks = []
        for t in a.tasks:
            spec = {"name": t, "train_examples": n}
            if dev:
                spec.update(holdout=a.holdout, eval_examples=a.holdout)
            else:
                spec["eval_examples"] = a.eval_examples
            tasks.append(spec)
        return {
            "backbone": a.backbone, "seed": seed, "modules": [module], "tasks": tasks,
            "training": {
                "steps": a.steps, "batch_size": a.batch_size, "learning_rate": lr,
                "warmup_steps": a.steps // 10, "max_length": a.max_length,
                "task_sampling": "temperature", "temperature": 10.0, "mixed_batches": True,
                "train_groups": groups, "eval_every": 0, "checkpoint_every": 0,
            },
        }

    @staticmethod
    def final(res):
        """Each task's score at the last step."""
        steps = res["report"]["steps"]
        return {e["task"]: e["score"] for e in res["report"]["evaluations"] if e["step"] == steps}

    def select(self, name, module, groups, n):
        """The learning rate with the best dev (train-holdout) mean over tasks and seeds."""
        dev = {}
        for lr in self.a.select_lr:
            vals = []
            for s in self.a.select_seeds:
                res = self.try_run(self.glue_cfg(module, groups, n, s, lr, True),
                                   f"dev-{name}-n{label_n(n)}-s{s}-lr{lr:g}")
                if res is None:
                    break
                vals.append(statistics.mean(self.final(res).values()))
            if len(vals) == len(self.a.select_seeds):
                dev[lr] = statistics.mean(vals)
        if len(dev) < len(self.a.select_lr):
            return None, dev
        return max(dev, key=dev.get), dev

    def test(self, name, module, groups, n, lr):
        """Per task, the scores over seeds; the runs (for their retrieval and adapters)."""
        scores, runs = {t: [] for t in self.a.tasks}, []
        for s in self.a.seeds:
            res = self.try_run(self.glue_cfg(module, groups, n, s, lr, False),
                               f"test-{name}-n{label_n(n)}-s{s}-lr{lr:g}")
            if res is None:
                return None, runs
            runs.append(res)
            for t, v in self.final(res).items():
                scores[t].append(v)
        return scores, runs

    def transfer_cfg(self, row, up, task, k, i, seed, lr=None, dev=False):
        a = self.a
        spec = {"name": task, "train_examples": k, "eval_examples": a.transfer_eval}
        if not task.startswith("superglue/"):
            spec["split_seed"] = CROSSFIT_SPLITS[i % len(CROSSFIT_SPLITS)]
        if dev:
            spec["eval_split"] = "dev32" if task.startswith("superglue/") else "dev"
        cfg = {
            "backbone": a.backbone, "seed": seed, "modules": up["config"]["modules"],
            "task": spec, "init_from": up["adapter_folder"],
            "training": {"steps": a.ft_steps, "batch_size": min(8, k), "learning_rate": lr or a.ft_lr,
                         "warmup_steps": 0, "weight_decay": 0.0, "max_length": a.max_length,
                         "eval_every": 0, "checkpoint_every": 0,
                         "train_groups": ["adapter", "head"]},
        }
        if row.startswith("pha"):
            cfg["prototype"] = {"pick": "retrieve" if row == "pha retrieved" else "random"}
            cfg["training"]["train_groups"] = ["prototype", "hyper", "head"]
        return cfg


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/peft-host")
    ap.add_argument("--backbone", default="all-MiniLM-L6-v2")
    ap.add_argument("--out", default="runs/pha-experiment")
    ap.add_argument("--experiments", default="1,2,3,4", help="which of the four to run")
    ap.add_argument("--n", default="100,500,1000,0", help="training examples per task (0: all)")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--select-lr", default="1e-3,3e-3")
    ap.add_argument("--select-seeds", default="1", help="run seeds of the dev (holdout) runs")
    ap.add_argument("--holdout", type=int, default=200, help="dev examples carved from train")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=96)
    ap.add_argument("--eval-examples", type=int, default=400, help="test subsample per task (0: all)")
    ap.add_argument("--shots", default="4,8,16,32")
    ap.add_argument("--transfer-seeds", default="1,2,3,4,5")
    ap.add_argument("--transfer-tasks", default=",".join(TRANSFER))
    ap.add_argument("--transfer-eval", type=int, default=400, help="transfer test subsample (0: all)")
    ap.add_argument("--ft-steps", type=int, default=50)
    ap.add_argument("--ft-lr", type=float, default=1e-3)
    ap.add_argument("--transfer-bin", help="the build experiment 2 runs on (default: --bin)")
    ap.add_argument("--ft-select-lr", default="",
                    help="fine-tuning rates to choose from on dev, per transfer row and k")
    ap.add_argument("--smoke", action="store_true", help="2 tasks, tiny budgets, its own --out")
    ap.add_argument("--table-only", action="store_true", help="run nothing: tabulate what is stored")
    ap.add_argument("--shard", help="i/n: make only this shard's runs (hosts sharing --out)")
    a = ap.parse_args()
    os.chdir(ROOT)
    a.ns, a.seeds, a.select_seeds = ints(a.n), ints(a.seeds), ints(a.select_seeds)
    a.select_lr = [float(x) for x in a.select_lr.split(",")]
    a.ft_select_lr = [float(x) for x in a.ft_select_lr.split(",") if x]
    a.shots, a.transfer_seeds = ints(a.shots), ints(a.transfer_seeds)
    a.tasks, a.transfer_tasks = TASKS, a.transfer_tasks.split(",")
    a.experiments = set(ints(a.experiments))
    if a.smoke:
        if a.out == "runs/pha-experiment":
            a.out = "runs/pha-experiment-smoke"
        a.tasks, a.ns, a.seeds, a.select_seeds = ["glue-sst2", "glue/stsb"], [16], [1, 2], [1]
        a.steps, a.batch_size, a.max_length, a.eval_examples, a.holdout = 2, 8, 32, 16, 16
        a.shots, a.transfer_seeds, a.transfer_tasks = [4], [1, 2], ["superglue/cb", "scitail"]
        a.ft_steps, a.transfer_eval = 2, 16
    ex = Experiment(a)
    out = Path(a.out)
    res = {"setup": {k: v for k, v in vars(a).items() if k != "experiments"},
           "code_version": ex.r.version, "transfer_code_version": ex.rt.version, "argv": sys.argv[1:],
           "glue": {}, "ablations": {}, "transfer": {}, "cosines": {}}
    res["setup"]["experiments"] = sorted(a.experiments)
    n0 = a.ns[0]
    ups = {}  # method -> experiment 1's first-seed run at n0 (the transfer's upstream)

    def glue(n):
        cell = res["glue"].setdefault(label_n(n), {})
        for name, (module, groups) in METHODS.items():
            lr, dev = ex.select(name, module, groups, n)
            m = cell[name] = {"dev": {f"{k:g}": v for k, v in dev.items()}}
            if lr is None:
                continue
            m["lr"] = lr
            scores, runs = ex.test(name, module, groups, n, lr)
            if scores is None:
                continue
            m["scores"] = scores
            m["trainable"] = runs[0]["report"]["trainable_parameters"]
            m["seconds_per_step"] = statistics.mean(r["report"]["seconds_per_step"] for r in runs)
            m["runs"] = [r["run_folder"] for r in runs]
            if n == n0:
                ups[name] = runs[0]
            if name == "pha" and n == n0 and 4 in a.experiments:
                heatmap(runs, n)

    def heatmap(runs, n):
        mats = []
        for r in runs:
            f = Path(r["run_folder"]) / "retrieval.json"
            if f.exists():
                mats.append(json.loads(f.read_text()))
        if not mats:
            return
        shutil.copyfile(Path(runs[0]["run_folder"]) / "retrieval.svg", out / f"heatmap-n{label_n(n)}.svg")
        protos = [c[0] for c in mats[0][0]["cosines"]]
        table = {}
        for row in mats[0]:
            t = row["task"]
            cells = [[c[1] for c in next(x for x in m if x["task"] == t)["cosines"]] for m in mats]
            picks = [next(x for x in m if x["task"] == t)["picked"] for m in mats]
            table[t] = {"mean": [statistics.mean(col) for col in zip(*cells)],
                        "own_picked": sum(protos[p] == t for p in picks), "seeds": len(mats)}
        res["cosines"][label_n(n)] = {"prototypes": protos, "rows": table}

    def ablations():
        pha = res["glue"].get(label_n(n0), {}).get("pha", {})
        if "lr" not in pha:
            return
        for name, switch in ABLATIONS.items():
            module = {"plugin": "pha", "config": {**PHA_SMALL, **switch}}
            label = name.replace(" ", "_").replace("/", "")
            # Each variant chooses its own rate on train-holdout, as the methods do.
            lr, dev = ex.select(label, module, PHA_GROUPS, n0)
            if lr is None:
                continue
            scores, _ = ex.test(label, module, PHA_GROUPS, n0, lr)
            if scores is not None:
                res["ablations"][name] = {"lr": lr, "dev": {f"{k:g}": v for k, v in dev.items()},
                                          "scores": scores, "switch": switch}

    def transfer():
        if "pha" not in ups or "houlsby" not in ups:
            return
        def tasks_at(k):  # CrossFit files hold 16 training examples
            return [t for t in a.transfer_tasks if t.startswith("superglue/") or k <= 16]

        def upstream(row):  # experiment 1's run a transfer row starts from
            return ups["houlsby" if row.startswith("houlsby") else "pha"]

        def rate(row, k):
            """The fine-tuning rate of a row at k shots: fixed, or chosen on the dev splits."""
            if not a.ft_select_lr:
                return a.ft_lr, {}
            up = upstream(row)
            dev = {}
            for lr in a.ft_select_lr:
                vals = []
                for task in tasks_at(k):
                    r = ex.try_run(ex.transfer_cfg(row, up, task, k, 0, a.transfer_seeds[0], lr, True),
                                   f"transfer-dev-{row.replace(' ', '_')}-{task.replace('/', '-')}-k{k}-lr{lr:g}",
                                   transfer=True)
                    if r is None:
                        return None, dev
                    vals.append(ex.final(r)[task])
                dev[lr] = statistics.mean(vals)
            return max(a.ft_select_lr, key=lambda lr: dev[lr]), dev

        # Shots outer: the first of `--shots` on every task before the next.
        for k in a.shots:
            lrs = {row: rate(row, k) for row in TRANSFER_ROWS}
            for task in tasks_at(k):
                for row in TRANSFER_ROWS:
                    up = upstream(row)
                    lr, dev = lrs[row]
                    if lr is None:
                        continue
                    vals, picks = [], []
                    for i, s in enumerate(a.transfer_seeds):
                        r = ex.try_run(ex.transfer_cfg(row, up, task, k, i, s, lr),
                                       f"transfer-{row.replace(' ', '_')}-{task.replace('/', '-')}-k{k}-s{s}",
                                       transfer=True)
                        if r is None:
                            break
                        vals.append(ex.final(r)[task])
                        if r.get("prototypes"):
                            picks.append(r["prototypes"][0].get("picked_task"))
                    if len(vals) == len(a.transfer_seeds):
                        res["transfer"].setdefault(task, {}).setdefault(str(k), {})[row] = {
                            "scores": vals, "picked": picks, "lr": lr,
                            "dev": {f"{x:g}": v for x, v in dev.items()}}

    # Priority: experiment 1 (and 4) at the first N (every other experiment starts from its
    # runs), 3 there, 2, then the other N.
    glue(n0)
    if 3 in a.experiments:
        ablations()
    if 2 in a.experiments:
        transfer()
    if 1 in a.experiments:
        for n in a.ns[1:]:
            glue(n)
    res["missing"] = ex.r.missing + (ex.rt.missing if ex.rt is not ex.r else [])
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    md = tables(res, a)
    (out / "results.md").write_text(md)
    svg = low_data_svg(res, a)
    if svg:
        (out / "low-data.svg").write_text(svg)
    print(md)
    if res["missing"]:
        print(f"\n{len(res['missing'])} runs not stored (e.g. {res['missing'][0]})"
              + (": run this shard again once the others have finished their pass" if a.shard else ""),
              file=sys.stderr)


def cell(v):
    return f"{statistics.mean(v):.3f} ± {std(v):.3f}"


def task_avg(scores, tasks, i):
    return statistics.mean(scores[t][i] for t in tasks)


def tables(res, a):
    L = []
    s = res["setup"]
    L.append(f"Build `{res['code_version']}`"
             + (f" (experiment 2: `{res['transfer_code_version']}`)"
                if res.get("transfer_code_version", res["code_version"]) != res["code_version"] else "")
             + "; "
             f"{s['steps']} steps of batch {s['batch_size']}, "
             f"max_length {s['max_length']}, mixed batches (temperature-10 sampling), "
             f"{s['eval_examples']} test examples per task, dev = {s['holdout']} train-holdout "
             f"examples per task, rates {s['select_lr']} chosen with seeds {s['select_seeds']}, "
             f"test seeds {s['seeds']}.\n")
    for n, methods in res["glue"].items():
        done = [m for m in METHODS if "scores" in methods.get(m, {})]
        L.append(f"### GLUE multi-task, N = {n} training examples per task\n")
        L.append("| method | trainable (with heads) | lr chosen on train-holdout | dev mean per candidate |")
        L.append("|---|---:|---:|---|")
        for m, v in methods.items():
            devs = ", ".join(f"{k}: {x:.4f}" for k, x in v["dev"].items())
            L.append(f"| {m} | {v.get('trainable', '-'):,} | {v.get('lr', '-')} | {devs} |"
                     if "trainable" in v else f"| {m} | - | {v.get('lr', '-')} | {devs} |")
        if not done:
            L.append("\n(test runs not stored)\n")
            continue
        L.append("\nTest (scored once; mean ± std over seeds):\n")
        L.append("| task | " + " | ".join(done) + " |")
        L.append("|---|" + "---:|" * len(done))
        for t in a.tasks:
            L.append(f"| {t} | " + " | ".join(cell(methods[m]["scores"][t]) for m in done) + " |")
        avgs = {m: [task_avg(methods[m]["scores"], a.tasks, i)
                    for i in range(len(methods[m]["scores"][a.tasks[0]]))] for m in done}
        cis = {m: mean_ci(avgs[m]) for m in done}
        L.append("| **average** | " + " | ".join(
            f"**{cell(avgs[m])}** [{cis[m][1]:.3f}, {cis[m][2]:.3f}]" for m in done) + " |")
        if "pha" in done:
            L.append("\nPHA minus baseline (task average, paired by seed; 95% t interval over "
                     "seeds; bootstrap over tasks of the per-task mean difference):\n")
            L.append("| baseline | difference [95% CI, seeds] | [95% CI, tasks] |\n|---|---|---|")
            for m in done:
                if m == "pha":
                    continue
                d = [p - b for p, b in zip(avgs["pha"], avgs[m])]
                mu, lo, hi = mean_ci(d)
                per_task = [statistics.mean(methods["pha"]["scores"][t])
                            - statistics.mean(methods[m]["scores"][t]) for t in a.tasks]
                blo, bhi = bootstrap(per_task, statistics.mean)
                L.append(f"| {m} | {mu:+.3f} [{lo:+.3f}, {hi:+.3f}] | [{blo:+.3f}, {bhi:+.3f}] |")
        L.append("")
    if res["ablations"]:
        n0 = label_n(a.ns[0])
        pha = res["glue"][n0]["pha"]
        rows = {"pha (full)": pha["scores"], **{k: v["scores"] for k, v in res["ablations"].items()}}
        L.append(f"### Ablations, N = {n0}, each variant's rate chosen on train-holdout\n")
        L.append("| task | " + " | ".join(rows) + " |\n|---|" + "---:|" * len(rows))
        lrs = [pha["lr"]] + [v["lr"] for v in res["ablations"].values()]
        L.append("| *lr chosen* | " + " | ".join(f"{x:g}" for x in lrs) + " |")
        for t in a.tasks:
            L.append(f"| {t} | " + " | ".join(cell(v[t]) for v in rows.values()) + " |")
        avg = {k: [task_avg(v, a.tasks, i) for i in range(len(v[a.tasks[0]]))] for k, v in rows.items()}
        L.append("| **average** | " + " | ".join(
            f"**{cell(v)}** [{mean_ci(v)[1]:.3f}, {mean_ci(v)[2]:.3f}]" for v in avg.values()) + " |\n")
    for n, c in res["cosines"].items():
        L.append(f"### Task x prototype cosine after training (N = {n}, mean over {len(a.seeds)} seeds)\n")
        L.append("| task (held-out examples) | " + " | ".join(c["prototypes"]) + " | own prototype retrieved |")
        L.append("|---|" + "---:|" * (len(c["prototypes"]) + 1))
        for t, row in c["rows"].items():
            L.append(f"| {t} | " + " | ".join(f"{x:+.2f}" for x in row["mean"])
                     + f" | {row['own_picked']}/{row['seeds']} |")
        L.append("")
    if res["transfer"]:
        how = (f"lr chosen per row and k among {s['ft_select_lr']} on dev (dev32 / _dev)"
               if s.get("ft_select_lr") else f"lr {s['ft_lr']:g}")
        L.append(f"### Few-shot transfer (from N = {label_n(a.ns[0])}, seed {a.seeds[0]}; "
                 f"{s['ft_steps']} steps, {how}; mean ± std over seeds {s['transfer_seeds']})\n")
        L.append("| task | shots | " + " | ".join(TRANSFER_ROWS) + " | prototypes retrieved |")
        L.append("|---|---:|" + "---:|" * len(TRANSFER_ROWS) + "---|")
        for task, ks in res["transfer"].items():
            for k, rows in sorted(ks.items(), key=lambda kv: int(kv[0])):
                cells = [(cell(rows[r]["scores"])
                          + (f" (lr {rows[r]['lr']:g})" if s.get("ft_select_lr") else ""))
                         if r in rows else "-" for r in TRANSFER_ROWS]
                picks = rows.get("pha retrieved", {}).get("picked", [])
                counts = {p: picks.count(p) for p in picks}
                L.append(f"| {task} | {k} | " + " | ".join(cells) + " | "
                         + ", ".join(f"{p} ×{c}" for p, c in counts.items()) + " |")
        L.append("")
    if res["missing"]:
        L.append(f"Not stored ({len(res['missing'])} runs), e.g. `{res['missing'][0]}`.\n")
    return "\n".join(L)


def low_data_svg(res, a):
    """Task-average test score vs N per method, ± std over seeds."""
    pts = {}
    for n, methods in res["glue"].items():
        for m, v in methods.items():
            if "scores" in v:
                k = len(v["scores"][a.tasks[0]])
                avgs = [task_avg(v["scores"], a.tasks, i) for i in range(k)]
                pts.setdefault(m, []).append((n, statistics.mean(avgs), std(avgs)))
    if not pts:
        return None
    ns = list(res["glue"])
    ys = [y + e for p in pts.values() for _, y, e in p] + [y - e for p in pts.values() for _, y, e in p]
    lo, hi = min(ys) - 0.02, max(ys) + 0.02
    W, H, L, T, B = 560, 360, 60, 40, 50
    x = lambda n: L + (ns.index(n) + 0.5) * (W - L - 20) / len(ns)
    y = lambda v: T + (hi - v) / (hi - lo) * (H - T - B)
    colors = {"pha": "#d62728", "houlsby": "#1f77b4", "parallel-adapter": "#2ca02c"}
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
         '<rect width="100%" height="100%" fill="white"/>',
         f'<text x="{L}" y="20" font-size="14">GLUE task-average test score vs N (mean ± std over seeds)</text>',
         f'<line x1="{L}" y1="{H - B}" x2="{W - 20}" y2="{H - B}" stroke="black"/>',
         f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>']
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        o.append(f'<text x="{L - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.3f}</text>')
        o.append(f'<line x1="{L}" y1="{y(v):.1f}" x2="{W - 20}" y2="{y(v):.1f}" stroke="#ddd"/>')
    for n in ns:
        o.append(f'<text x="{x(n):.1f}" y="{H - B + 18}" text-anchor="middle">{n}</text>')
    o.append(f'<text x="{(W + L) / 2}" y="{H - 10}" text-anchor="middle">training examples per task</text>')
    for j, (m, p) in enumerate(pts.items()):
        c = colors.get(m, "black")
        dx = (j - 1) * 6
        o.append('<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>'.format(
            c, " ".join(f"{x(n) + dx:.1f},{y(v):.1f}" for n, v, _ in p)))
        for n, v, e in p:
            o.append(f'<line x1="{x(n) + dx:.1f}" y1="{y(v - e):.1f}" x2="{x(n) + dx:.1f}" y2="{y(v + e):.1f}" stroke="{c}"/>')
            o.append(f'<circle cx="{x(n) + dx:.1f}" cy="{y(v):.1f}" r="3" fill="{c}"/>')
        o.append(f'<text x="{W - 150}" y="{T + 16 * j + 10}" fill="{c}">{m}</text>')
    o.append("</svg>")
    return "\n".join(o) + "\n"


if __name__ == "__main__":
    sys.exit(main())
