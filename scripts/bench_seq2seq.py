"""peft-host against PyTorch + transformers + HF peft on encoder-decoders, interleaved.

T5 and BART on the same random weights (t5-small's and bart-base's shapes; made once by
scripts/pytorch_seq2seq_reference.py --make with transformers, in a throwaway venv that is
never a project dependency), batch 8, source 128, target 32, 32 new tokens, per round and
alternating which side goes first: teacher-forced inference, greedy decoding through the
key/value cache, and a LoRA r=8 (q, v) step on the token cross-entropy, each process under
`/usr/bin/time -f %M` for its peak RSS. Prints a markdown table of medians with the min-max
across rounds and the peft-host / PyTorch ratios; writes it and the raw JSON to --out.

    PEFT_BENCH_PYTHON=/tmp/hfenv/bin/python python3 scripts/bench_seq2seq.py [--rounds 3]
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench_compare import fmt, spread, timed

ROOT = Path(__file__).resolve().parent.parent
ARCHS = {"t5-small": "t5-small-random", "bart-base": "bart-base-random"}
PHASES = [("inference", "inference_ms"), ("generate", "generate_ms"), ("train step", "lora_step_ms")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--python", default=os.environ.get("PEFT_BENCH_PYTHON"))
    ap.add_argument("--bin", default=str(ROOT / "target/release/peft-host"))
    ap.add_argument("--models", default="/tmp/s2s/models", help="where the random models live")
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default=str(ROOT / "target/bench-seq2seq"))
    a = ap.parse_args()
    if not a.python or not Path(a.python).exists():
        sys.exit("give the venv's python with --python or PEFT_BENCH_PYTHON "
                 "(python3 -m venv /tmp/hfenv && /tmp/hfenv/bin/pip install torch transformers peft)")
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    ref = str(ROOT / "scripts/pytorch_seq2seq_reference.py")
    archs = a.archs.split(",")
    for arch in archs:
        d = Path(a.models) / ARCHS[arch]
        if not (d / "model.safetensors").exists():
            subprocess.run([a.python, ref, "--make", str(d), "--arch", arch], check=True, env=env)
    rounds, t0 = [], time.time()
    for r in range(a.rounds):
        rd = {}
        for arch in archs:
            d = str(Path(a.models) / ARCHS[arch])
            host = [a.bin, "bench", "seq2seq", "--backbone", d, "--plugin", "lora",
                    "--runs", str(a.runs), "--json"]
            torch = [a.python, ref, "--model", d, "--runs", str(a.runs), "--threads", str(a.threads)]
            order = [("peft-host", host), ("pytorch", torch)]
            if r % 2:
                order.reverse()
            rd[arch] = {}
            for side, cmd in order:
                out, rss = timed(cmd, env)
                out["peak_rss_mib"] = rss
                rd[arch][side] = out
            print(f"round {r + 1}/{a.rounds} {arch} done ({time.time() - t0:.0f} s)", file=sys.stderr)
        rounds.append(rd)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    lines = [f"peft-host vs PyTorch {rounds[0][archs[0]]['pytorch']['torch']} + transformers + "
             f"HF peft, random weights, batch 8 x source 128 / target 32, 32 new tokens, "
             f"{a.threads} threads; median of {a.runs} runs per round, {a.rounds} interleaved "
             "rounds: median (min-max across rounds). Train step: LoRA r=8 on q and v.", "",
             "| model | phase | peft-host ms | PyTorch ms | peft-host / PyTorch |",
             "| --- | --- | ---: | ---: | ---: |"]
    for arch in archs:
        for name, key in PHASES:
            h = [rd[arch]["peft-host"][name.replace(" ", "_")]["median_ms"] for rd in rounds]
            p = [rd[arch]["pytorch"][key] for rd in rounds]
            ratio = [x / y for x, y in zip(h, p)]
            lines.append(f"| {arch} | {name} | {fmt(spread(h))} | {fmt(spread(p))} | "
                         f"{fmt(spread(ratio), 2)} |")
        h = [rd[arch]["peft-host"]["peak_rss_mib"] for rd in rounds]
        p = [rd[arch]["pytorch"]["peak_rss_mib"] for rd in rounds]
        lines.append(f"| {arch} | peak RSS MiB | {fmt(spread(h))} | {fmt(spread(p))} | "
                     f"{fmt(spread([x / y for x, y in zip(h, p)]), 2)} |")
    last = rounds[-1]
    lines += ["", "Trainable parameters (peft-host / HF peft): " + ", ".join(
        f"{arch} {last[arch]['peft-host']['trainable_parameters']:,} / "
        f"{last[arch]['pytorch']['trainable']:,}" for arch in archs),
        "First-step loss (peft-host / PyTorch): " + ", ".join(
        f"{arch} {last[arch]['peft-host']['first_loss']:.4f} / {last[arch]['pytorch']['loss']:.4f}"
        for arch in archs)]
    md = "\n".join(lines)
    (Path(a.out) / "seq2seq.md").write_text(md + "\n")
    (Path(a.out) / "seq2seq.json").write_text(json.dumps(rounds, indent=1))
    print(md)


if __name__ == "__main__":
    main()
