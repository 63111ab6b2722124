"""PyTorch reference timings for encoder-decoders (T5, BART), the PyTorch side of a
seq2seq speed comparison with peft-host.

Not a project dependency: run it with the python of a throwaway venv holding torch,
transformers and peft (docs/performance.md says how to make one). Two modes:

  --make DIR --arch t5-small|bart-base [--seed 0]
      write a randomly initialised model of that shape (config.json + model.safetensors);
      nothing is downloaded.
  --model DIR [--batch 8] [--src 128] [--tgt 32] [--new-tokens 32] [--runs 5] [--threads 2] [--no-train]
      time a forward pass, greedy generation with the KV cache, and (unless --no-train)
      one LoRA training step; prints one JSON object. One measurement per invocation:
      the caller interleaves runs.
"""
import argparse, json, statistics, time

import torch
import transformers


def median_ms(fn, runs):
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def make(path, arch, seed):
    torch.manual_seed(seed)
    if arch == "t5-small":
        cfg = transformers.T5Config(
            d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8,
            relative_attention_num_buckets=32, relative_attention_max_distance=128,
            dropout_rate=0.1, feed_forward_proj="relu", vocab_size=32128, tie_word_embeddings=True,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
        model = transformers.T5ForConditionalGeneration(cfg)
    elif arch == "bart-base":
        cfg = transformers.BartConfig(
            d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
            decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
            max_position_embeddings=1024, vocab_size=50265, activation_function="gelu",
            dropout=0.1, attention_dropout=0.0, activation_dropout=0.0, scale_embedding=False,
            pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
            forced_bos_token_id=None, forced_eos_token_id=None)
        model = transformers.BartForConditionalGeneration(cfg)
    else:
        raise SystemExit(f"unknown --arch {arch!r} (t5-small or bart-base)")
    model.save_pretrained(path, safe_serialization=True)
    print(json.dumps({"made": path, "arch": arch, "seed": seed,
                      "params": sum(p.numel() for p in model.parameters())}))


def token_ids(rows, cols, vocab, mult):
    return torch.tensor([[1000 + ((r * cols + i) * mult) % (vocab - 1000) for i in range(cols)]
                         for r in range(rows)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--make", metavar="DIR", help="write a random model to DIR and exit")
    ap.add_argument("--arch", choices=["t5-small", "bart-base"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", metavar="DIR")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--src", type=int, default=128)
    ap.add_argument("--tgt", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-train", action="store_true", help="no LoRA training step")
    a = ap.parse_args()
    if a.make:
        if not a.arch:
            ap.error("--make needs --arch")
        return make(a.make, a.arch, a.seed)
    if not a.model:
        ap.error("give --make DIR --arch ... or --model DIR")

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    from transformers import AutoModelForSeq2SeqLM
    model = AutoModelForSeq2SeqLM.from_pretrained(a.model).eval()
    cfg = model.config
    vocab = cfg.vocab_size
    ids = token_ids(a.batch, a.src, vocab, 7919)
    mask = torch.ones_like(ids)
    labels = token_ids(a.batch, a.tgt, vocab, 104729)
    # What the model builds from `labels`: shifted right, decoder_start_token_id first.
    start = torch.full((a.batch, 1), cfg.decoder_start_token_id, dtype=labels.dtype)
    dec_ids = torch.cat([start, labels[:, :-1]], dim=1)

    def infer():
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec_ids).logits.sum().item()

    n = a.new_tokens
    generated = {}

    def gen():
        with torch.no_grad():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, num_beams=1, use_cache=True)
        # Encoder-decoder output = [decoder start, new tokens...]; EOS is suppressed by
        # min_new_tokens, so every row has the same length and no padding.
        generated["per_row"] = out.shape[1] - 1

    out = {"torch": torch.__version__, "transformers": transformers.__version__,
           "threads": a.threads, "arch": cfg.model_type, "batch": a.batch, "src": a.src,
           "tgt": a.tgt, "new_tokens": n,
           "inference_ms": median_ms(infer, a.runs),
           "generate_ms": median_ms(gen, a.runs),
           "generated_tokens_per_row": generated["per_row"],
           "attn_implementation": getattr(cfg, "_attn_implementation", None)}
    if a.no_train:
        print(json.dumps(out))
        return

    from peft import LoraConfig, get_peft_model
    targets = ["q", "v"] if cfg.model_type == "t5" else ["q_proj", "v_proj"]
    lora = get_peft_model(AutoModelForSeq2SeqLM.from_pretrained(a.model),
                          LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0, target_modules=targets,
                                     task_type=None))
    lora.train()
    params = [p for p in lora.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    losses = []

    def step():
        loss = lora(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())

    out["lora_step_ms"] = median_ms(step, a.runs)
    out["trainable"] = sum(p.numel() for p in params)
    out["loss"] = losses[0]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
