"""What the two throwaway-environment scripts that train an adapter outside peft-host share
(train_hf_lora.py with HF peft, make_adapterhub_houlsby.py with AdapterHub's `adapters`): their
command line, the SST-2 reader and the AdamW loop. Imports torch only inside `train`, so each
script's own environment decides which transformers it runs.
"""
import argparse
import csv
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def parse_args(steps, lr):
    """OUT, then the training knobs; the defaults read MiniLM and SST-2 from this checkout."""
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--lr", type=float, default=lr)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--base", default=str(ROOT / ".cache/models/all-MiniLM-L6-v2"))
    ap.add_argument("--data", default=str(ROOT / "../shared/data/glue/sst2"))
    return ap.parse_args()


def read_tsv(path):
    """(sentence, label) rows of a GLUE SST-2 file, header skipped."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(r[0], int(r[1])) for r in rows[1:]]


def train(model, tok, rows, a):
    """AdamW over the parameters that require grad, batches drawn with a seeded generator."""
    import torch

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.lr)
    g = torch.Generator().manual_seed(a.seed)
    model.train()
    for step in range(a.steps):
        idx = torch.randint(len(rows), (a.batch,), generator=g).tolist()
        enc = tok([rows[i][0] for i in idx], padding=True, truncation=True,
                  max_length=a.max_length, return_tensors="pt")
        labels = torch.tensor([rows[i][1] for i in idx])
        loss = model(**enc, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == a.steps - 1:
            print(f"step {step} loss {loss.item():.4f}", flush=True)
