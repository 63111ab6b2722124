"""PyTorch reference timings for `peft-host bench model`, on the same shapes.

Not a project dependency: run it with the python of a throwaway venv holding torch,
transformers and peft (docs/performance.md says how to make one; scripts/bench_compare.sh
runs it interleaved with peft-host). Prints one JSON object.
"""
import argparse
import contextlib, json, statistics, time

import torch
from transformers import AutoModel


def median_ms(fn, runs):
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-train", action="store_true", help="inference only (no LoRA step)")
    ap.add_argument("--bf16", action="store_true",
                    help="run under torch.autocast('cpu', bfloat16): products in bf16 (oneDNN, AMX "
                         "where the CPU has it), the weights kept in f32")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = AutoModel.from_pretrained(a.model).eval()
    vocab = model.config.vocab_size
    ids = torch.tensor([[1000 + (i * 7919) % (vocab - 1000) for i in range(r * a.seq, (r + 1) * a.seq)] for r in range(a.batch)])
    mask = torch.ones_like(ids)

    amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if a.bf16 else contextlib.nullcontext

    def infer():
        with torch.no_grad(), amp():
            model(input_ids=ids, attention_mask=mask).last_hidden_state.sum().item()

    out = {"torch": torch.__version__, "threads": a.threads, "batch": a.batch, "seq": a.seq,
           "bf16_autocast": a.bf16,
           "inference_ms": median_ms(infer, a.runs),
           "attn_implementation": getattr(model.config, "_attn_implementation", None)}
    if a.no_train:
        print(json.dumps(out))
        return

    from peft import LoraConfig, get_peft_model
    lora = get_peft_model(AutoModel.from_pretrained(a.model), LoraConfig(r=8, lora_alpha=8, target_modules=["query", "value"]))
    head = torch.nn.Linear(model.config.hidden_size, 2)
    params = [p for p in lora.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    labels = torch.arange(a.batch) % 2
    lora.train()

    def step():
        with amp():
            h = lora(input_ids=ids, attention_mask=mask).last_hidden_state
            pooled = (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
            loss = torch.nn.functional.cross_entropy(head(pooled).float(), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    out["lora_train_step_ms"] = median_ms(step, a.runs)
    out["lora_trainable"] = sum(p.numel() for p in params)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
