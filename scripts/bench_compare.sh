#!/usr/bin/env bash
# peft-host against PyTorch + transformers + HF peft on all-MiniLM-L6-v2, interleaved in one
# session: per method (inference, train step, trainable parameters, peak RSS of each process)
# with the ratios to PyTorch's inference and HF peft's LoRA step and their spread across
# rounds, and the sequence-length curve at 4,096 tokens per batch. About 10-15 minutes on
# 2 cores with the defaults. The PyTorch side runs in a throwaway venv (never a dependency):
#   python3 -m venv /tmp/hfenv && /tmp/hfenv/bin/pip install torch transformers peft
#   PEFT_BENCH_PYTHON=/tmp/hfenv/bin/python bash scripts/bench_compare.sh [--rounds 3] [--runs 3]
# Other options: scripts/bench_compare.py --help. Writes target/bench-compare/compare.{md,json}.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release -p peft-host --quiet
exec python3 scripts/bench_compare.py "$@"
