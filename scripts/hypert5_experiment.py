#!/usr/bin/env python3
"""HyperT5 on unseen CrossFit tasks (issue 12), as one command.

Stage 2 (once): the hypermodel (HyperT5, group `hyper` + the shared option head) trained across
TRAIN (30 CrossFit tasks, option scoring), and, for the shared-init baseline, a plain prefix
module trained multi-task on the same tasks, same budget. Then, on each of UNSEEN (10 tasks
disjoint from TRAIN) and split seed (13, 21, 42, 87, 100), scored on the test files:

  generated  `peft-host adapt`: the prefix generated from the 16 shots, no gradient step
  generated+ (with `--plus`) the same from HyperT5+: a hypermodel trained together with a
             downstream LoRA (rank 8), which the adapted folder keeps
  untuned    the backbone with the hypermodel run's option head, no module
  random     prefix tuned on the 16 shots from random init
  shared     prefix tuned from the multi-task prefix (`init_from`)
  hyper      prefix tuned from the generated prefix (`init_from` the adapted folder)

`--permute-labels P` trains the hypermodel with label permutation (`training.permute_labels`:
each pass shows a classification task under a random permutation of its label words, in the
context and the targets alike), the measured remedy for a hypermodel that learns its training
tasks by heart; `--zero-gradient` makes only the rows without fine-tuning (generated, untuned)
and compares them with `untuned`. The last lines print how much the generated modules differ
between tasks and between split seeds of a task (a collapsed hypermodel gives every task the
same module).

`--swap-control` adds the row `swapped`: each task scored with the module generated from the next
unseen task's examples (same split seed, same option head). If `generated` is no better than
`swapped`, the generated module carries nothing of its own task.

`--generator lora` does the same with generated / tuned LoRA (rank 4, query and value) in
place of the prefix (another stage 2, other cells; the prefix cells stay as they are).

The three tuned rows choose their learning rate among `--select-lr` by the mean score on the
k-shot `_dev` files of `--select-seeds` (every unseen task), then score the test files once with
it. ARG / RGSTD against `random` with 95% bootstrap intervals over tasks. Every run is cached in
`--out` by its request and the build (`peft-host --version`): run the command again after an
interruption and finished runs are reused.

    python3 scripts/hypert5_experiment.py                   # the full grid (many hours on a CPU)
    python3 scripts/hypert5_experiment.py --smoke           # tiny budgets: checks the pipeline

Across machines: `--shard i/n` on each of n hosts sharing `--out` (scripts/expkit.py): each
pass runs the cells whose inputs are stored (stage 2 and the random-init dev runs first, then
what starts from them), so repeat the passes until no shard reports cells not stored, then
`--table-only` prints the table.
"""
import argparse
import array
import json
import shutil
import struct
import statistics
import sys
from pathlib import Path

from expkit import Runner, arg_rgstd, bootstrap, parse_shard, std

ROOT = Path(__file__).resolve().parent.parent
STAGE2 = ROOT / "tests/configs/e2e/hypert5-crossfit-stage2.json"
UNSEEN = ["glue-rte", "superglue-cb", "superglue-copa", "emo", "tweet_eval-hate", "sms_spam",
          "quarel", "wino_grande", "piqa", "glue-mrpc"]
ROWS = ["generated", "untuned", "random", "shared", "hyper"]
TUNED = ["random", "shared", "hyper"]


def all_training_tasks(unseen, max_options):
    """Every CrossFit task outside `unseen` with at most `max_options` options (TASKS.tsv)."""
    rows = (ROOT.parent / "shared/data/crossfit/TASKS.tsv").read_text().splitlines()
    head = rows[0].split("\t")
    tasks = [dict(zip(head, r.split("\t"))) for r in rows[1:] if r.strip()]
    return [t["task"] for t in tasks
            if t["task"] not in unseen and int(t["max_options"]) <= max_options]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=str(ROOT / "target/release/peft-host"))
    ap.add_argument("--out", default="runs/hypert5-experiment")
    ap.add_argument("--steps", type=int, default=3000, help="stage-2 steps (both stage-2 runs)")
    ap.add_argument("--stage2-lr", type=float, default=None,
                    help="the hypermodel's stage-2 learning rate (default: the config's)")
    ap.add_argument("--stage2-hyper-lr", type=float, default=None,
                    help="peak rate of the hypermodel's own group `hyper` (training."
                         "group_learning_rates), the option head keeping the stage-2 rate")
    ap.add_argument("--lora-zero-b", action="store_true",
                    help="the hypermodel's generated LoRA B starts at zero (`lora_zero_b`)")
    ap.add_argument("--ft-steps", type=int, default=100, help="16-shot fine-tuning steps")
    ap.add_argument("--select-lr", default="1e-2,3e-3,1e-3")
    ap.add_argument("--seeds", default="13,21,42,87,100")
    ap.add_argument("--select-seeds", default="13,21")
    ap.add_argument("--eval-examples", type=int, default=0, help="test subsample (0: all)")
    ap.add_argument("--tasks", default=",".join(UNSEEN))
    ap.add_argument("--generator", choices=["prefix", "lora"], default="prefix",
                    help="what the hypermodel generates and the tuned rows train")
    ap.add_argument("--plus", action="store_true",
                    help="also HyperT5+ (hyper + a downstream LoRA in stage 2): row generated+")
    ap.add_argument("--permute-labels", type=float, default=0.0,
                    help="stage-2 hypermodel: probability of a label permutation per pass")
    ap.add_argument("--zero-gradient", action="store_true",
                    help="only the rows without fine-tuning (generated, untuned)")
    ap.add_argument("--rows", default=",".join(TUNED),
                    help="the tuned rows to make (of random, shared, hyper)")
    ap.add_argument("--swap-control", action="store_true",
                    help="also row `swapped`: each task scored with the module generated from "
                         "the next unseen task's examples (same split seed)")
    ap.add_argument("--train-tasks", choices=["config", "all"], default="config",
                    help="config: the stage-2 config's 30 tasks; all: every CrossFit task not "
                         "unseen with at most --max-options options (the more-tasks lever)")
    ap.add_argument("--max-options", type=int, default=8)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--table-only", action="store_true", help="run nothing: tabulate what is stored")
    ap.add_argument("--shard", help="i/n: make only this shard's runs (hosts sharing --out)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    select_seeds = [int(s) for s in args.select_seeds.split(",")]
    lrs = [float(x) for x in args.select_lr.split(",")]
    unseen = args.tasks.split(",")
    stage2 = json.loads(STAGE2.read_text())
    if args.train_tasks == "all":
        stage2["tasks"] = [dict(stage2["tasks"][0], name=n)
                           for n in all_training_tasks(set(unseen), args.max_options)]
    train = [t["name"] for t in stage2["tasks"]]
    if args.smoke:
        stage2["tasks"] = stage2["tasks"][:3]
        train = train[:3]
        unseen, seeds, select_seeds, lrs = unseen[:1], [13], [13], lrs[:2]
        args.steps, args.ft_steps, args.eval_examples = 2, 2, 16
    assert not set(train) & set(unseen), "training and unseen tasks must be disjoint"
    r = Runner(args.bin, args.out, offline=args.table_only, shard=parse_shard(args.shard))
    get, missing = r.attempt, r.missing

    tuned_rows = [] if args.zero_gradient else [r_ for r_ in TUNED if r_ in args.rows.split(",")]
    rows = (["generated"] + (["swapped"] if args.swap_control else [])
            + (["generated+"] if args.plus else []) + ["untuned"] + tuned_rows)
    base_row = "untuned" if args.zero_gradient else "random"
    if args.generator == "lora":
        rank = 4
        stage2["modules"] = [{"name": "gen", "plugin": "lora",
                              "config": {"rank": rank, "from_context": "hypert5.lora"}}]
        enc = stage2["context_encoder"]["config"]
        enc.pop("prefix_length")
        enc.update(generate=["lora"], lora_rank=rank)
        if args.lora_zero_b:
            enc["lora_zero_b"] = True
        plain = {"name": "gen", "plugin": "lora", "config": {"rank": rank}}
    else:
        prefix_len = stage2["context_encoder"]["config"]["prefix_length"]
        plain = {"name": "gen", "plugin": "prefix", "config": {"prefix_length": prefix_len}}

    # Stage 2: the hypermodel (with the shared option head), and the multi-task module.
    hyper_cfg = json.loads(json.dumps(stage2))
    hyper_cfg["training"].update(steps=args.steps, train_groups=["hyper", "head"])
    if args.permute_labels:
        hyper_cfg["training"]["permute_labels"] = args.permute_labels
    if args.stage2_lr:
        hyper_cfg["training"]["learning_rate"] = args.stage2_lr
    if args.stage2_hyper_lr:
        hyper_cfg["training"]["group_learning_rates"] = {"hyper": args.stage2_hyper_lr}
    hyper = get(lambda: r.run(hyper_cfg, "stage2-hyper"), "stage2-hyper")
    plus = None
    if args.plus:  # HyperT5+: the downstream LoRA trains with the hypermodel
        plus_cfg = json.loads(json.dumps(hyper_cfg))
        plus_cfg["modules"].append({"name": "down", "plugin": "lora", "config": {"rank": 8}})
        plus_cfg["training"]["train_groups"] = ["hyper", "adapter", "head"]
        plus = get(lambda: r.run(plus_cfg, "stage2-hyper-plus"), "stage2-hyper-plus")
    shared_cfg = json.loads(json.dumps(stage2))
    shared_cfg.pop("context_encoder")
    shared_cfg["modules"] = [plain]
    shared_cfg["training"].update(steps=args.steps, learning_rate=1e-3,
                                  train_groups=["adapter", "head"])
    shared = None
    if "shared" in tuned_rows:
        shared = get(lambda: r.run(shared_cfg, "stage2-shared"), "stage2-shared")

    def task(name, seed, split):
        t = {"name": name, "split_seed": seed, "head": "option_scoring", "eval_split": split}
        if split == "test" and args.eval_examples:
            t["eval_examples"] = args.eval_examples
        return t

    def adapted(name, seed, source="hyper"):
        run = hyper if source == "hyper" else plus
        if run is None:
            raise LookupError(f"stage2-{source} not stored")
        sub = "adapted" if source == "hyper" else "adapted-plus"
        folder = str(Path(args.out) / sub / f"{name}-{seed}-{{key}}")
        return r.command(["adapt", run["adapter_folder"], "--task", name, "--split-seed",
                          str(seed), "--out", folder], f"{name} seed {seed}",
                         lambda key: Path(folder.replace("{key}", key)) / "adapt.json")

    def tuned(row, name, seed, split, lr):
        cfg = {"backbone": stage2["backbone"], "modules": [plain], "task": task(name, seed, split),
               "seed": seed,
               "training": {"steps": args.ft_steps, "batch_size": 8, "learning_rate": lr,
                            "warmup_steps": 0, "max_length": stage2["training"]["max_length"],
                            "train_groups": ["adapter", "head"], "eval_every": 0}}
        if row == "shared":
            if shared is None:
                raise LookupError("stage2-shared not stored")
            cfg["init_from"] = shared["adapter_folder"]
        if row == "hyper":
            cfg["init_from"] = str(Path(adapted(name, seed)["out"]))
        res = r.run(cfg, f"{row}-{name}-{seed}-{split}-lr{lr:g}")
        last = [e for e in res["report"]["evaluations"] if e["step"] == res["report"]["steps"]]
        return last[0]["score"], res["report"].get("train_seconds", 0.0)

    # Learning rates chosen on dev (a row's choice waits for all of its dev cells).
    chosen = {}
    for row in tuned_rows:
        dev = {}
        for lr in lrs:
            cells = [get(lambda: tuned(row, t, s, "dev", lr)[0], f"{row} dev {t} {s} lr{lr:g}")
                     for t in unseen for s in select_seeds]
            if None not in cells:
                dev[lr] = statistics.mean(cells)
        if len(dev) == len(lrs):
            chosen[row] = (max(lrs, key=lambda lr: dev[lr]), dev)

    def eval_adapted(a, t, s, tag):
        """The test score of an adapted folder (no gradient step)."""
        ev = str(Path(args.out) / "evals" / f"{t}-{s}-{{key}}.json")
        e = get(lambda: r.command(
            ["eval", a["out"], "--out", ev]
            + (["--eval-examples", str(args.eval_examples)] if args.eval_examples else []),
            f"{tag} {t} seed {s}", lambda key: ev.replace("{key}", key)),
            f"eval {tag} {t} {s}")
        return None if e is None else e["evaluation"]["score"]

    def swapped(a, b):
        """A copy of adapted folder `a` (its task, its option head) holding the modules that
        were generated from another task's examples (folder `b`, same hypermodel: the head
        stored beside them is the same)."""
        src = Path(a["out"])
        dst = Path(args.out) / "swapped" / f"{src.name}-from-{Path(b['out']).name}"
        if not (dst / "adapter.safetensors").exists():
            tmp = dst.with_name(dst.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp)
            shutil.copyfile(Path(b["out"]) / "adapter.safetensors", tmp / "adapter.safetensors")
            shutil.rmtree(dst, ignore_errors=True)
            tmp.rename(dst)
        return {"out": str(dst)}

    scores = {row: {t: [] for t in unseen} for row in rows}
    gen_seconds, ft_seconds, folders = [], [], {}
    for t in unseen:
        for s in seeds:
            a = get(lambda: adapted(t, s), f"adapt {t} {s}")
            if args.plus:
                ap_ = get(lambda: adapted(t, s, "plus"), f"adapt+ {t} {s}")
                if ap_ is not None:
                    e = eval_adapted(ap_, t, s, "generated+")
                    if e is not None:
                        scores["generated+"][t].append(e)
            if a is not None:
                gen_seconds.append(a["generation_seconds"])
                folders[(t, s)] = Path(a["out"])
                e = eval_adapted(a, t, s, "generated")
                if e is not None:
                    scores["generated"][t].append(e)
                # The untuned backbone with the shared option head does not depend on the
                # split seed (same head, same test file): scored once per task.
                if s == seeds[0]:
                    untuned = {"backbone": stage2["backbone"], "modules": [],
                               "task": task(t, s, "test"), "init_from": a["out"],
                               "training": {"steps": 0}}
                    u = get(lambda: r.run(untuned, f"untuned-{t}-{s}"), f"untuned {t} {s}")
                    if u is not None:
                        score = u["report"]["evaluations"][-1]["score"]
                        scores["untuned"][t].extend([score] * len(seeds))
            if args.swap_control and a is not None:
                other = unseen[(unseen.index(t) + 1) % len(unseen)]
                b = get(lambda: adapted(other, s), f"adapt {other} {s}")
                if b is not None:
                    e = eval_adapted(swapped(a, b), t, s, f"swapped-from-{other}")
                    if e is not None:
                        scores["swapped"][t].append(e)
            for row in tuned_rows:
                if row not in chosen:
                    continue
                got = get(lambda: tuned(row, t, s, "test", chosen[row][0]), f"{row} test {t} {s}")
                if got is not None:
                    scores[row][t].append(got[0])
                    ft_seconds.append(got[1])

    if missing:
        print(f"{len(missing)} cells not stored (e.g. {missing[0]})"
              + (": run this shard again once the others have finished their pass"
                 if args.shard else ""), file=sys.stderr)
        if len(chosen) < len(tuned_rows) or any(len(v) < len(seeds) for row in scores.values()
                                           for v in row.values()):
            return 0
    print(f"training tasks ({len(train)}): {', '.join(train)}")
    print(f"generator: {args.generator}" + (" (and HyperT5+)" if args.plus else ""))
    print(f"unseen tasks ({len(unseen)}): {', '.join(unseen)}; split seeds {seeds}; "
          f"{args.steps} stage-2 steps"
          + (f", label permutation p = {args.permute_labels:g}" if args.permute_labels else "")
          + (f", stage-2 learning rate {args.stage2_lr:g}" if args.stage2_lr else "")
          + (f", the hypermodel's own rate {args.stage2_hyper_lr:g}" if args.stage2_hyper_lr else "")
          + (", generated B starting at zero" if args.lora_zero_b else "")
          + ("" if args.zero_gradient else f", {args.ft_steps} fine-tuning steps") + "\n")
    if tuned_rows:
        print("| row | learning rate chosen on dev | dev mean per candidate |\n|---|---:|---|")
    for row in tuned_rows:
        lr, dev = chosen[row]
        print(f"| {row} | {lr:g} | " + ", ".join(f"{k:g}: {v:.3f}" for k, v in dev.items()) + " |")
    print("\n| task | " + " | ".join(rows) + " |\n|---|" + "---:|" * len(rows))
    for t in unseen:
        cells = [f"{statistics.mean(scores[r_][t]):.3f} ± {std(scores[r_][t]):.3f}" for r_ in rows]
        print(f"| {t} | " + " | ".join(cells) + " |")
    print()
    print(arg_rgstd(scores, base_row, rows, unseen))
    if args.zero_gradient:  # relative gains over a near-zero untuned score (sms_spam) dominate
        print()
        pairs = ([("generated", "untuned")]
                 + ([("generated", "swapped")] if args.swap_control else [])
                 + ([("generated+", "untuned"), ("generated+", "generated")] if args.plus else []))
        for a, b in pairs:
            d = [statistics.mean(scores[a][t]) - statistics.mean(scores[b][t]) for t in unseen]
            lo, hi = bootstrap(d, statistics.mean)
            print(f"{a} − {b}, mean absolute difference over tasks: {statistics.mean(d):+.3f} "
                  f"[{lo:+.3f}, {hi:+.3f}]")
    print(f"\nadapting one task: generation {statistics.median(gen_seconds):.2f} s (median)"
          + (f", 16-shot fine-tuning {statistics.median(ft_seconds):.1f} s of training (median)"
             if ft_seconds else ""))
    print(spread(folders))


def read_f32(path):
    """Every F32 tensor of a safetensors file, by name, as flat arrays."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, info in header.items():
        if name != "__metadata__" and info["dtype"] == "F32":
            a, b = info["data_offsets"]
            out[name] = array.array("f", raw[8 + n + a:8 + n + b])
    return out


def spread(folders):
    """How much the generated modules differ: the largest element-wise difference between
    split seeds of one task, and between tasks (each task's first split seed); a hypermodel
    that ignores its examples gives ~0 for both."""
    mods = {k: read_f32(f / "adapter.safetensors") for k, f in sorted(folders.items())}
    if not mods:
        return "generated modules: none stored"

    def diff(a, b):
        return max(max(abs(x - y) for x, y in zip(a[n], b[n])) for n in a)

    tasks = sorted({t for t, _ in mods})
    firsts = [mods[min(k for k in mods if k[0] == t)] for t in tasks]
    between = [diff(firsts[i], firsts[j]) for i in range(len(firsts))
               for j in range(i + 1, len(firsts))]
    within = [diff(mods[k], mods[k2]) for k in mods for k2 in mods if k[0] == k2[0] and k < k2]
    top = max(max(abs(x) for x in v) for m in mods.values() for v in m.values())

    def relative(group):
        """rms of each module's deviation from the group's mean module over the rms of that
        mean: 0 for one module shared by all, ~1 when the differences are as large as it."""
        dev = ref = 0.0
        for n in group[0]:
            for xs in zip(*(m[n] for m in group)):
                mean = sum(xs) / len(xs)
                ref += mean * mean
                dev += sum((x - mean) ** 2 for x in xs) / len(xs)
        return (dev / ref) ** 0.5 if ref else 0.0

    seeds_of = [[m for k, m in mods.items() if k[0] == t] for t in tasks]
    within_rel = [relative(ms) for ms in seeds_of if len(ms) > 1]
    return (f"generated modules ({len(mods)}): largest element difference between tasks "
            f"{max(between, default=0):.3g} (median {statistics.median(between or [0]):.3g}), "
            f"between split seeds of a task {max(within, default=0):.3g}; values up to {top:.3g}; "
            f"relative spread between tasks {relative(firsts):.3g}, between the split seeds of "
            f"a task " + (f"{statistics.mean(within_rel):.3g} (mean over tasks)" if within_rel
                          else "n/a (one split seed)"))


if __name__ == "__main__":
    sys.exit(main())
