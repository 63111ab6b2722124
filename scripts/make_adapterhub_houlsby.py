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
import argparse
import csv
import json
import pathlib

import adapters
import torch
from adapters import BertAdapterModel, DoubleSeqBnConfig
from safetensors.torch import save_file
from transformers import AutoTokenizer

root = pathlib.Path(__file__).resolve().parent.parent
ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--max-length", type=int, default=64)
ap.add_argument("--seed", type=int, default=7)
ap.add_argument("--base", default=str(root / ".cache/models/all-MiniLM-L6-v2"))
ap.add_argument("--data", default=str(root / "../shared/data/glue/sst2"))
a = ap.parse_args()
torch.manual_seed(a.seed)
out = pathlib.Path(a.out)
name = "sst2_houlsby"


def read_tsv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(r[0], int(r[1])) for r in rows[1:]]


train = read_tsv(pathlib.Path(a.data) / "train.tsv")
dev = read_tsv(pathlib.Path(a.data) / "dev.tsv")
tok = AutoTokenizer.from_pretrained(a.base)
model = BertAdapterModel.from_pretrained(a.base)
model.add_adapter(name, config=DoubleSeqBnConfig(leave_out=[0, 1, 2, 3]))
model.add_classification_head(name, num_labels=2)
model.train_adapter(name)
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.lr)
g = torch.Generator().manual_seed(a.seed)
model.train()
for step in range(a.steps):
    idx = torch.randint(len(train), (a.batch,), generator=g).tolist()
    enc = tok([train[i][0] for i in idx], padding=True, truncation=True,
              max_length=a.max_length, return_tensors="pt")
    labels = torch.tensor([train[i][1] for i in idx])
    loss = model(**enc, labels=labels).loss
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 10 == 0 or step == a.steps - 1:
        print(f"step {step} loss {loss.item():.4f}", flush=True)
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
