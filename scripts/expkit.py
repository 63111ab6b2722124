"""Shared pieces of the experiment scripts: cached runs of the peft-host binary, ARG/RGSTD with
bootstrap intervals. A stored result is reused only when the request (config or command) and
the build that made it (`peft-host --version`) equal the current ones.

Across machines (`--shard i/n` in the grid scripts): every host runs the same command on a shared
`--out` folder; a run that is not stored yet is made only by the shard its request hashes to,
and the others treat it as missing (what depends on it waits for the next pass). Each pass of
all shards therefore runs one level of the grid in parallel (dev runs, then the test runs the
dev scores chose, then what starts from those); repeat the passes until a script reports
nothing missing, then `--table-only` anywhere builds the table."""
import hashlib
import json
import random
import statistics
import subprocess
import sys
from pathlib import Path


def std(v):
    return statistics.stdev(v) if len(v) > 1 else 0.0


# Two-sided 97.5% quantiles of Student's t by degrees of freedom (1..10; normal beyond).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]


def mean_ci(v):
    """Mean and 95% Student-t interval of the mean of `v` (seeds): (mean, lo, hi)."""
    m = statistics.mean(v)
    if len(v) < 2:
        return m, m, m
    t = _T975[len(v) - 2] if len(v) - 1 <= len(_T975) else 1.96
    half = t * statistics.stdev(v) / len(v) ** 0.5
    return m, m - half, m + half


def bootstrap(values, stat, n=1000, seed=0):
    """95% percentile interval of `stat` over `n` resamples of `values` (tasks)."""
    rng = random.Random(seed)
    draws = sorted(stat([rng.choice(values) for _ in values]) for _ in range(n))
    return draws[int(0.025 * n)], draws[int(0.975 * n) - 1]


def arg_rgstd(scores, base_row, rows, tasks):
    """Markdown rows of ARG / RGSTD against `base_row` (relative gain per task of the mean
    over seeds). Tasks whose baseline is ~0 are left out, as the thesis does (it drops
    freebase_qa): here, a baseline mean within one standard deviation over seeds of 0 (a
    relative gain over a chance-level Matthews correlation of -0.027 is noise divided by
    noise); the line under the table names them."""
    base = {t: statistics.mean(scores[base_row][t]) for t in tasks}
    spread = {t: std(scores[base_row][t]) for t in tasks}
    kept = [t for t in tasks if abs(base[t]) > max(1e-3, spread[t])]
    out = ["| row | ARG [95% CI] | RGSTD [95% CI] |", "|---|---|---|"]
    for r in rows:
        rg = [(statistics.mean(scores[r][t]) - base[t]) / abs(base[t]) for t in kept]
        lo, hi = bootstrap(rg, statistics.mean)
        slo, shi = bootstrap(rg, std)
        out.append(f"| {r} | {statistics.mean(rg):+.3f} [{lo:+.3f}, {hi:+.3f}] | "
                   f"{std(rg):.3f} [{slo:.3f}, {shi:.3f}] |")
    dropped = [f"{t} ({base[t]:+.3f} ± {spread[t]:.3f})" for t in tasks if t not in kept]
    out.append(f"\nOver {len(kept)} of {len(tasks)} tasks"
               + (f"; left out, {base_row} indistinguishable from 0: " + ", ".join(dropped)
                  if dropped else "") + ".")
    return "\n".join(out)


def parse_shard(spec):
    """`"i/n"` (0-based, as `peft-host fewshot --shard`) -> (i, n); None -> None."""
    if spec is None:
        return None
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise SystemExit(f"--shard {spec!r}: expected i/n, e.g. 0/4")
    if not 0 <= i < n:
        raise SystemExit(f"--shard {spec!r}: i must be between 0 and n - 1 (0-based)")
    return (i, n)


def owns(shard, key):
    """Whether this shard makes the run named by the hex `key` (every run when unsharded)."""
    return shard is None or int(key, 16) % shard[1] == shard[0]


class Runner:
    """Runs `peft-host` commands under `out`, each result stored by the hash of its request."""

    def __init__(self, binary, out, offline=False, shard=None):
        self.bin = binary
        self.out = Path(out)
        # Offline (a `--table-only` mode): a request not stored raises LookupError, nothing runs.
        self.offline = offline
        # (i, n): only requests hashing to shard i are run here; others not stored are missing.
        self.shard = shard
        self.missing = []  # "label: reason" of each cell `attempt` could not get
        self.version = subprocess.run([binary, "--version"], check=True, capture_output=True,
                                      text=True).stdout.split()[-1]

    def _cached(self, request, make):
        key = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:16]
        path = self.out / "results" / f"{key}.json"
        if path.exists():
            stored = json.loads(path.read_text())
            if stored.get("request") == request and stored.get("code_version") == self.version:
                return stored["result"]
        if self.offline:
            raise LookupError(f"not stored: {path.name}")
        if not owns(self.shard, key):
            raise LookupError(f"another shard's run, not stored yet: {path.name}")
        result = make(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"request": request, "code_version": self.version,
                                   "result": result}, indent=1))
        tmp.replace(path)
        return result

    def attempt(self, make, label):
        """`make()`, or None when a run it needs is not stored and not this process's to make
        (`--table-only`, another shard's); the cell is then recorded in `missing`."""
        try:
            return make()
        except LookupError as e:
            self.missing.append(f"{label}: {e}")
            return None

    def run(self, cfg, label):
        """`peft-host run` of a config: its result.json, and the adapter folder's path."""
        def make(key):
            cfg_path = self.out / "configs" / f"{label}-{key}.json"
            cfg_path.parent.mkdir(parents=True, exist_ok=True)
            cfg_path.write_text(json.dumps(cfg, indent=2))
            run_dir = self.out / "runs" / f"{label}-{key}"
            # A run interrupted after a checkpoint (a killed pass, a lost host) continues
            # from it: `--resume` replays the data order and restores the optimizer.
            resume = any(run_dir.glob("*/checkpoint/progress.json"))
            print(f"[run] {label}" + (" (resumed)" if resume else ""), file=sys.stderr,
                  flush=True)
            subprocess.run([self.bin, "run", str(cfg_path), "--out", str(run_dir), "--quiet"]
                           + (["--resume"] if resume else []),
                           check=True, stdout=subprocess.DEVNULL)
            result_path = next(run_dir.glob("*/result.json"))
            result = json.loads(result_path.read_text())
            result["adapter_folder"] = str(result_path.parent / "adapter")
            result["run_folder"] = str(result_path.parent)
            return result
        return self._cached({"run": cfg}, make)

    def command(self, args, label, output):
        """Another verb (`adapt`, `eval`): `output(key)` names the JSON it writes."""
        def make(key):
            print(f"[{args[0]}] {label}", file=sys.stderr, flush=True)
            out_path = output(key)
            subprocess.run([self.bin, *[a.replace("{key}", key) for a in args]], check=True,
                           stdout=subprocess.DEVNULL)
            return json.loads(Path(str(out_path)).read_text())
        return self._cached({"command": args}, make)
