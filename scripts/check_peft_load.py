"""Cross-check with HF peft itself (not part of the test suite: peft is no project dependency).

    PEFT_EXPORT_LORA_TO=/tmp/ours cargo test -p peft-tests --test lora_peft_interop saved_lora
    /tmp/torchref/bin/python scripts/check_peft_load.py /tmp/ours

Loads the LoRA adapter peft-host saved with `PeftModel.from_pretrained` over all-MiniLM-L6-v2
and compares its last hidden states with the fixture's (made by HF peft from the original).
"""
import json, sys, pathlib

import torch
from peft import PeftModel
from transformers import AutoModel

root = pathlib.Path(__file__).resolve().parent.parent
saved = sys.argv[1]
fx = json.load(open(root / "../shared/fixtures/minilm-lora-peft/expected.json"))
base = AutoModel.from_pretrained(root / ".cache/models/all-MiniLM-L6-v2")
model = PeftModel.from_pretrained(base, saved).eval()
ids = torch.tensor(fx["input_ids"]).long()
mask = torch.tensor(fx["attention_mask"]).long()
with torch.no_grad():
    h = model(input_ids=ids, attention_mask=mask).last_hidden_state
want = torch.tensor(fx["lora_last_hidden_state"])
m = mask.unsqueeze(-1).bool().expand_as(h)
diff = (h - want).abs()[m].max().item()
print(json.dumps({"loaded_by": "peft.PeftModel.from_pretrained", "max_abs_diff_vs_fixture": diff}))
assert diff < 1e-4, diff
