#!/usr/bin/env python3
"""Pools per-task tables over disjoint split seeds into one, and prints ARG / RGSTD against a
base row with 95% bootstrap intervals over tasks, by the grid scripts' rule (scripts/expkit.py:
relative gain per task of the mean over seeds; a task whose base mean is within one standard
deviation of 0 is left out).

Why: a grid's seeds may come from two runs of the same configuration (seeds 13/21/42 in one
session, 87/100 in another, each table printed by `hypert5_experiment.py --table-only`). Each
input is a markdown table as the grid scripts print it (`| task | row | ... |`, cells
`mean ± std` with the sample standard deviation) and the number of seeds behind it, `FILE:N`.
The pooled mean is the seed-weighted mean, the pooled standard deviation that of all seeds
together (within- and between-table sums of squares). Only rows every table has are pooled.

    python3 scripts/pool_tables.py --base random seeds-13-21-42.md:3 seeds-87-100.md:2
"""
import argparse
import statistics
import sys

from expkit import bootstrap, std


def read_table(path):
    """{row: {task: (mean, std)}} and the task order, from the first `| task |` table."""
    lines = open(path).read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| task |"))
    rows = [c.strip() for c in lines[start].strip("|").split("|")][1:]
    table, tasks = {r: {} for r in rows}, []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        tasks.append(cells[0])
        for r, cell in zip(rows, cells[1:]):
            m, s = (float(x) for x in cell.split("±"))
            table[r][cells[0]] = (m, s)
    return table, tasks


def pool(parts):
    """(mean, std) over all seeds of [(mean, std, n), ...]."""
    total = sum(n for _, _, n in parts)
    mean = sum(m * n for m, _, n in parts) / total
    ss = sum((n - 1) * s * s + n * (m - mean) ** 2 for m, s, n in parts)
    return mean, (ss / (total - 1)) ** 0.5 if total > 1 else 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tables", nargs="+", help="FILE:N (a markdown table over N split seeds)")
    ap.add_argument("--base", default="random", help="the row gains are measured against")
    a = ap.parse_args()
    loaded = []
    for spec in a.tables:
        path, _, n = spec.rpartition(":")
        if not path or not n.isdigit():
            sys.exit(f"{spec}: expected FILE:N")
        table, tasks = read_table(path)
        loaded.append((table, tasks, int(n)))
    tasks = loaded[0][1]
    rows = [r for r in loaded[0][0] if all(r in t for t, _, _ in loaded[1:])]
    if a.base not in rows:
        sys.exit(f"row {a.base!r} is not in every table (rows in all: {rows})")
    for table, t, _ in loaded[1:]:
        if set(t) != set(tasks):
            sys.exit(f"the tables' tasks differ: {sorted(set(t) ^ set(tasks))}")
    pooled = {r: {t: pool([(*tab[r][t], n) for tab, _, n in loaded]) for t in tasks}
              for r in rows}
    seeds = sum(n for _, _, n in loaded)
    print(f"| task | {' | '.join(rows)} |\n|---|" + "---:|" * len(rows))
    for t in tasks:
        print(f"| {t} | " + " | ".join(f"{pooled[r][t][0]:.3f} ± {pooled[r][t][1]:.3f}"
                                      for r in rows) + " |")
    print(f"\n(mean ± standard deviation over {seeds} split seeds, pooled from "
          + ", ".join(f"{n}" for _, _, n in loaded) + ")\n")
    base = {t: pooled[a.base][t] for t in tasks}
    kept = [t for t in tasks if abs(base[t][0]) > max(1e-3, base[t][1])]
    print(f"| row | ARG against {a.base} [95% CI] | RGSTD [95% CI] |\n|---|---|---|")
    for r in rows:
        rg = [(pooled[r][t][0] - base[t][0]) / abs(base[t][0]) for t in kept]
        lo, hi = bootstrap(rg, statistics.mean)
        slo, shi = bootstrap(rg, std)
        print(f"| {r} | {statistics.mean(rg):+.3f} [{lo:+.3f}, {hi:+.3f}] | "
              f"{std(rg):.3f} [{slo:.3f}, {shi:.3f}] |")
    dropped = [f"{t} ({base[t][0]:+.3f} ± {base[t][1]:.3f})" for t in tasks if t not in kept]
    print(f"\nOver {len(kept)} of {len(tasks)} tasks"
          + (f"; left out, {a.base} indistinguishable from 0: " + ", ".join(dropped)
             if dropped else "") + ".")


if __name__ == "__main__":
    sys.exit(main())
