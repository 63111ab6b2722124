"""Train a LoRA adapter with HF peft the way a user would, for peft-host's "HF formats in" check.

Not part of the test suite (torch, transformers and peft are no project dependencies). In a
throwaway environment (`python3 -m venv /tmp/hfenv; /tmp/hfenv/bin/pip install torch
transformers peft safetensors`):

    /tmp/hfenv/bin/python scripts/train_hf_lora.py OUT [--steps 30]

What it does: `AutoModelForSequenceClassification` over all-MiniLM-L6-v2 (BERT: the [CLS]
pooler `tanh(dense(h_CLS))` from the checkpoint, then a new `classifier` Linear(384, 2)), HF
peft `LoraConfig(task_type=SEQ_CLS, r=8, lora_alpha=16, target_modules=[query, value])`, which
puts the classifier in `modules_to_save`; AdamW on SST-2 train (../shared/data/glue/sst2), batch
16, then `save_pretrained(OUT)`. It then writes, beside the adapter:

- `texts.txt`: the first 8 SST-2 dev sentences;
- `expected.json`: HF's token ids, [CLS] last hidden states and logits on them (the model reloaded
  from OUT with `PeftModel.from_pretrained`, eval mode), and its accuracy on all of SST-2 dev.

peft-host's `predict`/`eval` on OUT must reproduce these (tests/adapters_hf_in.rs).
"""
import json
import pathlib

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hf_sst2 import parse_args, read_tsv, train

a = parse_args(steps=30, lr=5e-3)
torch.manual_seed(a.seed)
out = pathlib.Path(a.out)

train_rows = read_tsv(pathlib.Path(a.data) / "train.tsv")
dev = read_tsv(pathlib.Path(a.data) / "dev.tsv")
tok = AutoTokenizer.from_pretrained(a.base)
model = AutoModelForSequenceClassification.from_pretrained(a.base, num_labels=2)
cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.0,
                 target_modules=["query", "value"])
model = get_peft_model(model, cfg)
model.print_trainable_parameters()
train(model, tok, train_rows, a)
model.save_pretrained(out)

# Reload as a user would, and record what HF computes.
base = AutoModelForSequenceClassification.from_pretrained(a.base, num_labels=2)
hf = PeftModel.from_pretrained(base, out).eval()
texts = [t for t, _ in dev[:8]]
(out / "texts.txt").write_text("".join(t + "\n" for t in texts))
enc = tok(texts, padding=True, truncation=True, max_length=a.max_length, return_tensors="pt")
with torch.no_grad():
    o = hf(**enc, output_hidden_states=True)
correct = 0
with torch.no_grad():
    for i in range(0, len(dev), 64):
        chunk = dev[i:i + 64]
        e = tok([t for t, _ in chunk], padding=True, truncation=True, max_length=a.max_length,
                return_tensors="pt")
        pred = hf(**e).logits.argmax(-1).tolist()
        correct += sum(int(p == y) for p, (_, y) in zip(pred, chunk))
expected = {
    "made_by": "scripts/train_hf_lora.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items()
        if k in ("steps", "lr", "batch", "max_length", "seed")),
    "versions": {m.__name__: m.__version__ for m in (torch, __import__("transformers"),
                                                     __import__("peft"))},
    "texts": texts,
    "input_ids": enc["input_ids"].tolist(),
    "attention_mask": enc["attention_mask"].tolist(),
    # The [CLS] token's last hidden state (the pooler's input); all tokens would not fit in 1 MB.
    "cls_hidden_state": o.hidden_states[-1][:, 0].tolist(),
    "logits": o.logits.tolist(),
    "dev_examples": len(dev),
    "dev_accuracy": correct / len(dev),
}
(out / "expected.json").write_text(json.dumps(expected) + "\n")
print(json.dumps({"dev_accuracy": expected["dev_accuracy"], "logits": expected["logits"][:2]}))
