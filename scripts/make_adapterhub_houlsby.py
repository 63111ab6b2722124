"""Save a Houlsby adapter with AdapterHub's `adapters` library, for peft-host's import check.

Not part of the test suite (torch and adapters are no project dependencies). `adapters` pins its
own transformers, so it needs an environment of its own:

    python3 -m venv /tmp/ahenv && /tmp/ahenv/bin/pip install adapters torch
    /tmp/ahenv/bin/python scripts/make_adapterhub_houlsby.py OUT [--steps 20]

What it does: `BertAdapterModel` over all-MiniLM-L6-v2, `add_adapter("sst2_houlsby",
DoubleSeqBnConfig(leave_out=[0, 1, 2, 3]))` (Houlsby et al.: bottleneck after attention and
after the FFN, reduction factor 16 -> 24, swish; layers 4 and 5 only, to keep the artifact small)
and a classification head, `train_adapter` for a few AdamW steps on SST-2 train, then
`save_adapter(OUT, name, with_head=False, use_safetensors=True)`. Beside it:

- `texts.txt`: the first 8 SST-2 dev sentences;
- `expected.safetensors`: the library's `input_ids`, `attention_mask` and `last_hidden_state`
  on them (the adapter reloaded with `load_adapter` into a fresh model, eval mode); its metadata
  says how far the adapter moved them from the base model's (so the check can fail).

peft-host's houlsby plugin must reproduce `last_hidden_state` (tests/adapters_hf_in.rs).
"""
import json
import pathlib

import adapters
import torch
from adapters import BertAdapterModel, DoubleSeqBnConfig
from safetensors.torch import save_file
from transformers import AutoTokenizer

from hf_sst2 import parse_args, read_tsv, train

a = parse_args(steps=20, lr=1e-3)
torch.manual_seed(a.seed)
out = pathlib.Path(a.out)
name = "sst2_houlsby"

train_rows = read_tsv(pathlib.Path(a.data) / "train.tsv")
dev = read_tsv(pathlib.Path(a.data) / "dev.tsv")
tok = AutoTokenizer.from_pretrained(a.base)
model = BertAdapterModel.from_pretrained(a.base)
model.add_adapter(name, config=DoubleSeqBnConfig(leave_out=[0, 1, 2, 3]))
model.add_classification_head(name, num_labels=2)
model.train_adapter(name)
train(model, tok, train_rows, a)
model.save_adapter(str(out), name, with_head=False, use_safetensors=True)

# Reload into a fresh model, as a user would, and record what the library computes.
fresh = BertAdapterModel.from_pretrained(a.base).eval()
texts = [t for t, _ in dev[:8]]
enc = tok(texts, padding=True, truncation=True, max_length=a.max_length, return_tensors="pt")
with torch.no_grad():
    base_h = fresh.bert(**enc).last_hidden_state
loaded = fresh.load_adapter(str(out), use_safetensors=True)
fresh.set_active_adapters(loaded)
with torch.no_grad():
    h = fresh.bert(**enc).last_hidden_state
(out / "texts.txt").write_text("".join(t + "\n" for t in texts))
real = enc["attention_mask"].bool()
moved = (h - base_h).abs()[real].max().item()
save_file({
    "input_ids": enc["input_ids"].to(torch.int64).contiguous(),
    "attention_mask": enc["attention_mask"].to(torch.int64).contiguous(),
    "last_hidden_state": h.contiguous(),
}, str(out / "expected.safetensors"), metadata={
    "made_by": "scripts/make_adapterhub_houlsby.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items()
        if k in ("steps", "lr", "batch", "max_length", "seed")),
    "versions": json.dumps({m.__name__: m.__version__ for m in (
        torch, adapters, __import__("transformers"))}),
    "adapter_vs_base_max_abs_diff": str(moved),
})
print(json.dumps({"adapter_vs_base_max_abs_diff": moved}))
