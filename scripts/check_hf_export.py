"""Cross-check a LoRA adapter trained by `peft-host run` against HF peft and transformers.

Not part of the test suite (torch, transformers and peft are no project dependencies). In a
throwaway environment (`python3 -m venv /tmp/hfenv; /tmp/hfenv/bin/pip install torch
transformers peft safetensors`):

    peft-host run cfg.json --out /tmp/runs                    # a LoRA run on all-MiniLM-L6-v2
    A=/tmp/runs/<run>/adapter
    peft-host export $A --out /tmp/hf/peft                    # HF peft format
    peft-host export $A --out /tmp/hf/merged --merge          # backbone with LoRA merged
    peft-host dump $A --input texts.txt --out /tmp/hf/dump.json
    /tmp/hfenv/bin/python scripts/check_hf_export.py /tmp/hf/dump.json /tmp/hf/peft /tmp/hf/merged

Loads the exported adapter with `PeftModel.from_pretrained` over the base model and the merged
model with `transformers.AutoModel`, runs both on the dumped token ids and compares their last
hidden states (real tokens) and the classification head's logits with peft-host's. A method that
cannot be merged (prefix tuning) passes `-` as the merged folder.

Prefix tuning: HF's BERT numbers the real tokens' positions from P when a prefix is present as
past keys/values (PeftModel does, and ignores `position_ids`); peft-host keeps positions 0..T-1,
as the prefix has no position. The check then also runs transformers with the exported
`prompt_embeddings` as the past keys/values at positions 0..T-1 (`transformers.AutoModel +
exported prefix as past keys/values`), which must match; PeftModel's difference is reported.
"""
import json
import pathlib
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModel

TOL = 1e-4
root = pathlib.Path(__file__).resolve().parent.parent
dump_path, peft_dir, merged_dir = sys.argv[1:4]
base_dir = sys.argv[4] if len(sys.argv) > 4 else root / ".cache/models/all-MiniLM-L6-v2"
d = json.load(open(dump_path))
ids = torch.tensor(d["input_ids"]).long()
mask = torch.tensor(d["attention_mask"]).long()
kw = {"input_ids": ids, "attention_mask": mask}
if "token_type_ids" in d:
    kw["token_type_ids"] = torch.tensor(d["token_type_ids"]).long()
want_h = torch.tensor(d["last_hidden_state"], dtype=torch.float32)
real = mask.unsqueeze(-1).bool().expand_as(want_h)


def compare(model, heads_dir):
    with torch.no_grad():
        h = model(**kw).last_hidden_state
    out = {"max_abs_diff_hidden": (h - want_h).abs()[real].max().item()}
    if "logits" in d:
        heads = load_file(str(pathlib.Path(heads_dir) / "heads.safetensors"))
        p = d["head_prefix"]
        m = mask.unsqueeze(-1).float()
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        logits = pooled @ heads[p + ".weight"].T + heads[p + ".bias"]
        want = torch.tensor(d["logits"], dtype=torch.float32)
        out["max_abs_diff_logits"] = (logits - want).abs().max().item()
    return out


base = AutoModel.from_pretrained(base_dir).eval()
peft_model = PeftModel.from_pretrained(base, peft_dir).eval()
merged = None if merged_dir == "-" else AutoModel.from_pretrained(merged_dir).eval()
# The base alone must differ, or the adapter changed nothing and the check proves nothing.
with torch.no_grad():
    plain = AutoModel.from_pretrained(base_dir).eval()(**kw).last_hidden_state
report = {
    "examples": len(d["input_ids"]),
    "peft.PeftModel.from_pretrained": compare(peft_model, peft_dir),
    "base model without the adapter (must be large)": (plain - want_h).abs()[real].max().item(),
}
if merged is not None:
    report["transformers.AutoModel (merged)"] = compare(merged, merged_dir)
checked = ["peft.PeftModel.from_pretrained", "transformers.AutoModel (merged)"]
hf_cfg = json.load(open(pathlib.Path(peft_dir) / "adapter_config.json"))
if hf_cfg.get("peft_type") == "PREFIX_TUNING":
    from transformers import DynamicCache

    emb = load_file(str(pathlib.Path(peft_dir) / "adapter_model.safetensors"))["prompt_embeddings"]
    P, L, H = hf_cfg["num_virtual_tokens"], hf_cfg["num_layers"], hf_cfg["num_attention_heads"]
    pkv = emb.view(P, 2 * L, H, -1).permute(1, 2, 0, 3)  # [2L, heads, P, head_dim]
    B, T = ids.shape

    class Prefixed(torch.nn.Module):
        """The base model with the exported prefix as past keys/values, positions 0..T-1."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, **kw):
            cache = DynamicCache()
            for layer in range(L):
                k, v = (pkv[2 * layer + i].unsqueeze(0).expand(B, -1, -1, -1) for i in (0, 1))
                cache.update(k, v, layer)
            m = torch.cat([torch.ones(B, P, dtype=attention_mask.dtype), attention_mask], 1)
            return self.model(input_ids=input_ids, attention_mask=m, past_key_values=cache,
                              position_ids=torch.arange(T).unsqueeze(0), **kw)

    name = "transformers.AutoModel + exported prefix as past keys/values"
    report[name] = compare(Prefixed(AutoModel.from_pretrained(base_dir).eval()), peft_dir)
    report["note"] = ("PeftModel numbers the real tokens' positions from P on BERT; peft-host "
                      "from 0: its difference is reported, not checked")
    checked = [name]
print(json.dumps(report, indent=1))
worst = max(v for k in checked if k in report for v in report[k].values())
assert worst < TOL, f"max difference {worst} >= {TOL}"
assert report["base model without the adapter (must be large)"] > 10 * TOL, "the adapter changed nothing"
print("OK: all differences below", TOL)
