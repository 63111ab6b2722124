"""peft-host against PyTorch + transformers + HF peft, interleaved in one session.

Run through scripts/bench_compare.sh (which builds the release binary first). Standard
library only: the PyTorch side runs as a subprocess with the python given by --python (or
PEFT_BENCH_PYTHON), a throwaway venv that is never a project dependency:

    python3 -m venv /tmp/hfenv && /tmp/hfenv/bin/pip install torch transformers peft

Each round runs, alternating which side goes first: the PyTorch reference (inference and
HF peft's LoRA r=8 step), peft-host's `bench model` for every method (inference and train
step), then the sequence-length curve (inference at a fixed number of tokens per batch) on
both sides. Every process runs under `/usr/bin/time -f %M`, so peak RSS is measured the same
way on both sides. Prints a markdown report and writes it with the raw JSON to --out.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ["houlsby", "parallel-adapter", "adapter-bias", "meta-adapters", "lora", "prefix", "pha",
           "hypert5"]
# Methods that are compositions rather than one plugin's defaults: `bench model --config`, the
# backbone section set to this run's dtype and precision.
METHOD_CONFIGS = {"hypert5": "scripts/bench/hypert5-minilm.json"}
ROOT = Path(__file__).resolve().parent.parent


def timed(cmd, env):
    """Runs `cmd` under /usr/bin/time; returns (parsed JSON of its stdout, peak RSS in MiB)."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss.name, *cmd],
                           capture_output=True, text=True, env=env, cwd=ROOT)
        if p.returncode != 0:
            sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
        kib = int(Path(rss.name).read_text().split()[-1])
    # The JSON object starts on its own line (anything a library printed before is skipped).
    text = p.stdout.strip()
    start = 0 if text.startswith("{") else text.find("\n{") + 1
    return json.loads(text[start:]), kib / 1024


def spread(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def fmt(s, digits=0):
    return f"{s['median']:,.{digits}f} ({s['min']:,.{digits}f}-{s['max']:,.{digits}f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--python", default=os.environ.get("PEFT_BENCH_PYTHON"),
                    help="python of the venv with torch, transformers, peft (or PEFT_BENCH_PYTHON)")
    ap.add_argument("--bin", default=str(ROOT / "target/release/peft-host"))
    ap.add_argument("--model", default=str(ROOT / ".cache/models/all-MiniLM-L6-v2"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=3, help="timed runs per measurement (median)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seqs", default="64,128,256,512")
    ap.add_argument("--tokens", type=int, default=4096, help="tokens per batch on the curve")
    ap.add_argument("--out", default=str(ROOT / "target/bench-compare"))
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32",
                    help="bf16: peft-host's backbone held in bf16 (--backbone-dtype bf16) against "
                         "PyTorch under torch.autocast(bfloat16)")
    ap.add_argument("--matmul-precision", choices=["high", "medium"], default="high",
                    help="with --dtype bf16: peft-host's backbone.matmul_precision (medium: the "
                         "activations of the frozen products rounded to bf16, as autocast does)")
    a = ap.parse_args()
    if not a.python or not Path(a.python).exists():
        sys.exit("give the venv's python with --python or PEFT_BENCH_PYTHON "
                 "(python3 -m venv /tmp/hfenv && /tmp/hfenv/bin/pip install torch transformers peft)")
    methods = [m for m in a.methods.split(",") if m]
    seqs = [int(s) for s in a.seqs.split(",")]
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    base = [a.bin, "bench", "model", "--runs", str(a.runs), "--json"]
    host = base + ["--backbone-dtype", a.dtype, "--matmul-precision", a.matmul_precision]
    method_cmd = {}
    for m in methods:
        if m not in METHOD_CONFIGS:
            method_cmd[m] = host + ["--plugin", m]
            continue
        cfg = json.loads((ROOT / METHOD_CONFIGS[m]).read_text())
        cfg["backbone"] = {"name": "all-MiniLM-L6-v2", "dtype": a.dtype,
                           "matmul_precision": a.matmul_precision}
        Path(a.out).mkdir(parents=True, exist_ok=True)
        path = Path(a.out) / f"{m}.config.json"
        path.write_text(json.dumps(cfg, indent=1))
        method_cmd[m] = base + ["--config", str(path)]
    torch = [a.python, str(ROOT / "scripts/pytorch_reference.py"), "--model", a.model,
             "--runs", str(a.runs), "--threads", str(a.threads)] + (["--bf16"] if a.dtype == "bf16" else [])
    rounds = []
    t0 = time.time()
    for r in range(a.rounds):
        host_first = r % 2 == 0
        rd = {"methods": {}, "curve": {}}

        def run_torch():
            rd["torch"], rd["torch_rss_mib"] = timed(torch, env)

        def run_methods():
            for m in methods:
                res, rss = timed(method_cmd[m], env)
                rd["methods"][m] = {"result": res, "rss_mib": rss}

        for step in ([run_methods, run_torch] if host_first else [run_torch, run_methods]):
            step()
        for seq in seqs:
            b = a.tokens // seq
            pair = [("host", host + ["--batch", str(b), "--seq", str(seq)]),
                    ("torch", torch + ["--batch", str(b), "--seq", str(seq), "--no-train"])]
            for side, cmd in (pair if host_first else pair[::-1]):
                res, rss = timed(cmd, env)
                rd["curve"].setdefault(str(seq), {})[side] = {"result": res, "rss_mib": rss}
        rounds.append(rd)
        # Every finished round is kept, so an interrupted run leaves its data behind.
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "rounds.partial.json.tmp"
        tmp.write_text(json.dumps(rounds, indent=1))
        tmp.replace(out / "rounds.partial.json")
        print(f"round {r + 1}/{a.rounds} done after {time.time() - t0:.0f} s", file=sys.stderr)

    # Summary: per round medians, then the median and the spread across rounds.
    summary = {"methods": {}, "curve": {}, "rounds": a.rounds, "runs": a.runs,
               "threads": a.threads, "torch": rounds[0]["torch"].get("torch")}
    t_inf = [rd["torch"]["inference_ms"] for rd in rounds]
    t_step = [rd["torch"]["lora_train_step_ms"] for rd in rounds]
    summary["pytorch"] = {"inference_ms": spread(t_inf), "lora_step_ms": spread(t_step),
                          "lora_trainable": rounds[0]["torch"]["lora_trainable"],
                          "rss_mib": spread([rd["torch_rss_mib"] for rd in rounds])}
    for m in methods:
        rs = [rd["methods"][m] for rd in rounds]
        inf = [x["result"]["inference"]["median_ms"] for x in rs]
        step = [x["result"]["train_step"]["median_ms"] for x in rs]
        summary["methods"][m] = {
            "trainable": rs[0]["result"]["trainable_parameters"],
            "inference_ms": spread(inf),
            "train_step_ms": spread(step),
            "rss_mib": spread([x["rss_mib"] for x in rs]),
            "inference_vs_pytorch": spread([h / t for h, t in zip(inf, t_inf)]),
            "step_vs_peft_lora": spread([h / t for h, t in zip(step, t_step)]),
            "forward_gflops_per_s": spread([x["result"]["forward_gflops_per_s"] for x in rs]),
            "train_step_gflops_per_s": spread([x["result"]["train_step_gflops_per_s"] for x in rs]),
            "gemm_gflops_per_s": spread([x["result"]["gemm_gflops_per_s"] for x in rs]),
        }
    for seq in seqs:
        h = [rd["curve"][str(seq)]["host"]["result"]["inference"]["median_ms"] for rd in rounds]
        t = [rd["curve"][str(seq)]["torch"]["result"]["inference_ms"] for rd in rounds]
        summary["curve"][str(seq)] = {"batch": a.tokens // seq, "host_ms": spread(h),
                                      "pytorch_ms": spread(t),
                                      "ratio": spread([x / y for x, y in zip(h, t)])}

    path = rounds[0]["methods"][methods[0]]["result"].get("bf16_products", "?")
    precision = ("" if a.dtype == "f32" else
                 f"backbone in bf16 (peft-host: bf16 weights, products on {path}, "
                 f"matmul_precision {a.matmul_precision}; PyTorch: torch.autocast bfloat16), ")
    summary["dtype"] = a.dtype
    summary["matmul_precision"] = a.matmul_precision
    lines = [f"peft-host vs PyTorch {summary['torch']} + transformers + HF peft, all-MiniLM-L6-v2, {precision}"
             f"batch 32 x 128, {a.threads} threads; median of {a.runs} runs per round, "
             f"{a.rounds} interleaved rounds: median (min-max across rounds). Issue 14's targets: "
             "inference <= 0.80x PyTorch's, every train step <= 0.75x HF peft's LoRA step.", "",
             "| method | trainable | inference ms | train step ms | peak RSS MiB | inference / PyTorch | step / HF peft LoRA |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m, s in summary["methods"].items():
        lines.append(f"| {m} | {s['trainable']:,} | {fmt(s['inference_ms'])} | {fmt(s['train_step_ms'])} | "
                     f"{fmt(s['rss_mib'])} | {fmt(s['inference_vs_pytorch'], 2)} | {fmt(s['step_vs_peft_lora'], 2)} |")
    p = summary["pytorch"]
    lines.append(f"| PyTorch (inference) / HF peft LoRA r=8 (step) | {p['lora_trainable']:,} | {fmt(p['inference_ms'])} | "
                 f"{fmt(p['lora_step_ms'])} | {fmt(p['rss_mib'])} | 1 | 1 |")
    lora = summary["methods"].get("lora") or next(iter(summary["methods"].values()))
    lines += ["", f"GEMM [4096x384]x[384x1536]: {fmt(lora['gemm_gflops_per_s'])} GFLOP/s; forward "
              f"{fmt(lora['forward_gflops_per_s'])} GFLOP/s; train step (useful work) "
              f"{fmt(lora['train_step_gflops_per_s'])} GFLOP/s.", "",
              f"Sequence length at {a.tokens} tokens per batch, inference:", "",
              "| seq | batch | peft-host ms | PyTorch ms | peft-host / PyTorch |",
              "| ---: | ---: | ---: | ---: | ---: |"]
    for seq, s in summary["curve"].items():
        lines.append(f"| {seq} | {s['batch']} | {fmt(s['host_ms'])} | {fmt(s['pytorch_ms'])} | {fmt(s['ratio'], 2)} |")
    report = "\n".join(lines)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps({"summary": summary, "rounds": rounds}, indent=1))
    (out / "compare.md").write_text(report + "\n")
    print(report)
    print(f"\n(wrote {out}/compare.json and compare.md; {time.time() - t0:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
