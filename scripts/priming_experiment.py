#!/usr/bin/env python3
"""The thesis' priming experiment (issue 10), as one command.

Rows FT_A, A_A, Multi_M_A, Multi_MA_A, FOMAML_M_A, MAML_M_A (second order), Reptile_M_A on
all-MiniLM-L6-v2: stage 1 primes on UPSTREAM (20 CrossFit training tasks), stage 2 fine-tunes
the adapters on each of DOWNSTREAM (8 other CrossFit tasks, disjoint) per 16-shot split seed
(13, 21, 42, 87, 100) and scores the test file. FT_A is the same run with 0 upstream steps.
Prints per-task mean ± std per row, and ARG / RGSTD against FT_A (relative gain per task,
its mean and std over tasks) with 95% bootstrap intervals over tasks.

    python3 scripts/priming_experiment.py                 # the full table (hours on a CPU)
    python3 scripts/priming_experiment.py --smoke         # 2 + 1 tasks, 2 steps, 1 seed: checks the pipeline
    python3 scripts/priming_experiment.py --rows FT_A,MAML_M_A --steps 200

Model selection: per row, the downstream learning rate is chosen among `--select-lr` by the
mean score on the k-shot `_dev` files (split seeds `--select-seeds`); the test files are then
scored once, with the chosen rate, on every split seed. Stage 1 runs once per row: the host's
`--resume` reuses a primed state only when its stamp (code version, priming section, seed,
backbone, modules, batch shape) equals the request. The priming algorithms' own settings are
the thesis' defaults (one inner step on CrossFit), not searched. Across machines: `--shard i/n` on
each of n hosts sharing `--out` runs every n-th row there; `--table-only` then builds the table.
Interrupted? Run the same command again: each finished (row, split, rate) result is reused when
its request and the build that made it (`peft-host --version`) equal the current ones.
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from expkit import arg_rgstd, parse_shard, std

UPSTREAM = [
    "ade_corpus_v2-classification", "ag_news", "anli", "art", "boolq", "circa", "emo",
    "ethos-gender", "glue-mnli", "glue-qnli", "glue-sst2", "google_wellformed_query",
    "hate_speech18", "health_fact", "kilt_fever", "liar", "scitail", "trec",
    "tweet_eval-sentiment", "tweet_eval-offensive",
]
DOWNSTREAM = [
    "glue-cola", "glue-mrpc", "glue-rte", "superglue-cb", "sms_spam", "tweet_eval-hate",
    "ethos-religion", "emotion",
]
ROWS = {
    # name: (plugin, plugin config, upstream groups, module)
    "FT_A": ("multitask", {}, ["adapter"], "houlsby"),
    "A_A": ("multitask", {"tasks_per_step": 4, "learning_rate": 1e-4}, ["adapter"], "houlsby"),
    "Multi_M_A": ("multitask", {"tasks_per_step": 4, "learning_rate": 1e-5}, ["backbone"], "houlsby"),
    "Multi_MA_A": ("multitask", {"tasks_per_step": 4, "learning_rate": 1e-4}, ["meta_adapter"], "meta-adapters"),
    "FOMAML_M_A": ("maml", {"first_order": True, "inner_steps": 1, "tasks_per_step": 4}, ["backbone"], "houlsby"),
    "MAML_M_A": ("maml", {"inner_steps": 1, "tasks_per_step": 4}, ["backbone"], "houlsby"),
    "Reptile_M_A": ("reptile", {"inner_steps": 1, "tasks_per_step": 4, "outer_lr": 0.1}, ["backbone"], "houlsby"),
}


def config(row, args, up, down, split="test", lr=1e-3, seeds=None):
    """One run of a row: stage 1, then stage 2 on every downstream task and split seed."""
    plugin, pcfg, groups, module = ROWS[row]
    pcfg = dict(pcfg)
    if "tasks_per_step" in pcfg:
        pcfg["tasks_per_step"] = min(pcfg["tasks_per_step"], len(up))
    return {
        "backbone": args.backbone,
        "modules": [{"plugin": module}],
        "tasks": [{"name": t, "eval_split": split,
                   "eval_examples": args.eval_examples if split == "test" else 0}
                  for t in down],
        "training": {"steps": args.ft_steps, "batch_size": 16, "learning_rate": lr,
                     "max_length": args.max_length},
        "priming": {
            "plugin": plugin, "config": pcfg,
            "upstream_tasks": [{"name": t, "train_examples": 0} for t in up],
            "upstream_groups": groups, "downstream_groups": ["adapter"],
            "steps": 0 if row == "FT_A" else args.steps,
            "checkpoint_every": 50, "split_seeds": seeds or args.seeds,
        },
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/peft-host")
    ap.add_argument("--backbone", default="all-MiniLM-L6-v2")
    ap.add_argument("--out", default="runs/priming-experiment")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--steps", type=int, default=200, help="upstream steps")
    ap.add_argument("--ft-steps", type=int, default=100, help="downstream steps per split")
    ap.add_argument("--seeds", default="13,21,42,87,100")
    ap.add_argument("--select-lr", default="1e-3,3e-4", help="downstream rates chosen among on dev")
    ap.add_argument("--select-seeds", default="13,21,42,87,100", help="split seeds whose dev files choose")
    ap.add_argument("--eval-examples", type=int, default=0)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--smoke", action="store_true", help="2 upstream tasks, 1 downstream, tiny budgets")
    ap.add_argument("--table-only", action="store_true",
                    help="run nothing: the table of the rows whose results are all stored")
    ap.add_argument("--shard", help="i/n: run only this shard's rows (hosts sharing --out); "
                    "then --table-only anywhere builds the table")
    args = ap.parse_args()
    shard = parse_shard(args.shard)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.select_seeds = [int(s) for s in args.select_seeds.split(",")]
    args.select_lr = [float(x) for x in args.select_lr.split(",")]
    up, down = UPSTREAM, DOWNSTREAM
    if args.smoke:
        up, down = UPSTREAM[:2], DOWNSTREAM[:1]
        args.steps, args.ft_steps, args.seeds, args.eval_examples = 2, 2, [13], 32
        args.select_seeds = [13]
    assert not set(up) & set(down), "upstream and downstream tasks must be disjoint"
    rows = args.rows.split(",")
    out = Path(args.out)
    # A stored result is reused only when its request and the build that made it match.
    version = subprocess.run([args.bin, "--version"], check=True, capture_output=True,
                             text=True).stdout.split()[-1]
    scores = {}  # row -> task -> [score per seed]
    chosen = {}  # row -> (lr, {lr: dev mean})

    def select_and_test(run):
        """The rate with the best dev mean (over tasks of the mean over seeds), then test."""
        dev = {}
        for lr in args.select_lr:
            rows_dev = run("dev", lr, args.select_seeds)
            dev[lr] = statistics.mean(
                statistics.mean(d["score"] for d in rows_dev if d["task"] == t) for t in down)
        best = max(args.select_lr, key=lambda lr: dev[lr])
        by_task = {}
        for d in run("test", best, args.seeds):
            by_task.setdefault(d["task"], []).append(d["score"])
        return (best, dev), by_task

    for row in rows:
        run_dir = out / row
        # A row is one shard's whole (stage 1 is shared by its dev and test runs, in run_dir);
        # rows go round-robin in the fixed ROWS order, so every host agrees and loads balance.
        mine = shard is None or list(ROWS).index(row) % shard[1] == shard[0]

        def run(split, lr, seeds):
            cfg = config(row, args, up, down, split, lr, seeds)
            kept = out / "results" / f"{row}-{split}-lr{lr:g}.json"
            if kept.exists():
                stored = json.loads(kept.read_text())
                if stored.get("requested") == cfg and stored.get("code_version") == version:
                    print(f"[{row}] {split} lr={lr:g}: reusing {kept}", file=sys.stderr, flush=True)
                    return stored["downstream"]
            if args.table_only or not mine:
                raise LookupError(f"{row}: {split} lr={lr:g} not stored"
                                  + ("" if mine else " (another shard's row)"))
            cfg_path = out / "configs" / f"{row}-{split}-lr{lr:g}.json"
            cfg_path.parent.mkdir(parents=True, exist_ok=True)
            cfg_path.write_text(json.dumps(cfg, indent=2))
            print(f"[{row}] {split} lr={lr:g} seeds={seeds}", file=sys.stderr, flush=True)
            # `--resume` reuses the row's stage 1 when its stamp matches, and continues an
            # interrupted one.
            subprocess.run([args.bin, "run", str(cfg_path), "--out", str(run_dir), "--quiet",
                            "--resume"], check=True, stdout=subprocess.DEVNULL)
            result = json.loads(next(run_dir.glob("*/result.json")).read_text())
            result["requested"] = cfg
            kept.parent.mkdir(parents=True, exist_ok=True)
            tmp = kept.with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=1))
            tmp.replace(kept)
            return result["downstream"]

        try:
            chosen[row], scores[row] = select_and_test(run)
        except LookupError as e:
            print(f"[{row}] skipped: {e}", file=sys.stderr)
    rows = [r for r in rows if r in scores]

    print(f"upstream ({len(up)}): {', '.join(up)}")
    print(f"downstream ({len(down)}): {', '.join(down)}; split seeds {args.seeds}\n")
    print("| row | downstream lr chosen on dev | dev mean per candidate |\n|---|---:|---|")
    for r in rows:
        lr, dev = chosen[r]
        print(f"| {r} | {lr:g} | " + ", ".join(f"{k:g}: {v:.3f}" for k, v in dev.items()) + " |")
    print()
    print("| task | " + " | ".join(rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for task in down:
        cells = [f"{statistics.mean(scores[r][task]):.3f} ± {std(scores[r][task]):.3f}" for r in rows]
        print(f"| {task} | " + " | ".join(cells) + " |")
    if "FT_A" in scores:
        print()
        print(arg_rgstd(scores, "FT_A", rows, down))

if __name__ == "__main__":
    main()
