"""Where issue 18's per-k coverage gap between seeds comes from, in back-test results on disk.

    python benchmarks/coverage_gap.py [CSV ...] [--out benchmarks/results/coverage_gap.md]

Reads ``bayes_hierarchical`` rows (tokens >= 1e10, fraction 1.0) of back-test CSVs with
two or more seeds (default: every such file in ``benchmarks/results``; a candidate's CSV
from ``compare_backtests.py`` holds its run seeds). For each file and pair of seeds: the
per-k 90% coverage (mean over families of each family's share of covered target
checkpoints, as the back-test reports it), the largest gap over k, and the (family, k) cells
that make it, each with its max r-hat at both seeds. No fitting: it reads results only.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import pandas as pd

from bayes_scaling import backtest as bt
from bayes_scaling.convergence import MIXED_RHAT
from bayes_scaling.outputs import atomic_write_text

HERE = Path(__file__).resolve().parent
ESTIMATOR = "bayes_hierarchical"


def cells(path: Path) -> pd.DataFrame:
    """One row per (seed, k, family): coverage and max r-hat of the cell."""
    rows = pd.read_csv(path)
    rows = rows[(rows["estimator"] == ESTIMATOR) & (rows["fraction"] == 1.0) & (rows["min_tokens"] == 1e10)]
    return rows.groupby(["seed", "k", "family"], as_index=False).agg(cov=("cov_90", "mean"), max_rhat=("max_rhat", "max"))


def seed_pairs(c: pd.DataFrame) -> list[dict]:
    """Per pair of seeds: the largest per-k gap, and how much of it unmixed cells make."""
    out = []
    for a, b in itertools.combinations(sorted(c["seed"].unique()), 2):
        pair = c[c["seed"] == a].merge(c[c["seed"] == b], on=["k", "family"], suffixes=("_a", "_b"))
        if pair.empty:  # not run seeds (a CSV whose seed column holds each cell's sampler seed)
            continue
        per_k = pair.groupby("k")[["cov_a", "cov_b"]].mean()
        gaps = (per_k["cov_a"] - per_k["cov_b"]).abs()
        k = int(gaps.idxmax())
        at_k = pair[pair["k"] == k].assign(share=lambda d: (d["cov_a"] - d["cov_b"]) / len(d))
        unmixed = (at_k["max_rhat_a"] > MIXED_RHAT) | (at_k["max_rhat_b"] > MIXED_RHAT)
        flips = at_k[at_k["share"].abs() > 0]
        out.append(
            {
                "seeds": f"{a} / {b}", "largest gap (points)": round(100 * float(gaps.max()), 1), "at k": k,
                "signed gap made by cells unmixed at either seed (points)": round(100 * float(at_k.loc[unmixed, "share"].sum()), 1),
                "by the other cells": round(100 * float(at_k.loc[~unmixed, "share"].sum()), 1),
                "cells that moved": ", ".join(
                    f"{r.family} ({100 * r.cov_a:.0f}% r-hat {r.max_rhat_a:.2f} / {100 * r.cov_b:.0f}% r-hat {r.max_rhat_b:.2f})"
                    for r in flips.sort_values("share", key=abs, ascending=False).itertuples()
                ),
            }
        )  # fmt: skip
    return out


def unmixed_vs_mixed(c: pd.DataFrame) -> dict:
    """Cells (family, k) unmixed at some seeds and mixed at others: their mean coverage each way."""
    c = c.assign(unmixed=c["max_rhat"] > MIXED_RHAT)
    both = c.groupby(["k", "family"])["unmixed"].transform(lambda u: u.any() and not u.all())
    c = c[both]
    return {
        "cells unmixed at some seeds only": int(c.groupby(["k", "family"]).ngroups),
        "their coverage where unmixed (%)": round(100 * float(c.loc[c["unmixed"], "cov"].mean()), 1) if len(c) else None,
        "where mixed (%)": round(100 * float(c.loc[~c["unmixed"], "cov"].mean()), 1) if len(c) else None,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", nargs="*", type=Path, help="back-test CSVs (default: benchmarks/results/backtest*.csv)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "coverage_gap.md")
    args = ap.parse_args(argv)
    paths = args.csv or sorted((HERE / "results").glob("backtest*.csv"))
    lines = [
        "# Per-k coverage gap between seeds (issue 18), from back-test results on disk",
        "",
        "Written by `benchmarks/coverage_gap.py` (reads results only; no fitting). bayes_hierarchical rows, tokens >= 1e10, "
        "fraction 1.0. Per-k coverage: mean over families of each family's share of covered target checkpoints. "
        f"A cell is unmixed when its max r-hat is above {MIXED_RHAT}. Signed gaps: seed a minus seed b.",
        "",
    ]
    pooled = []
    for path in paths:
        c = cells(path)
        pairs = seed_pairs(c)
        if not pairs:
            continue
        lines += [f"## {path.name}", "", bt.md_table(pd.DataFrame(pairs)), ""]
        pooled.append({"file": path.name, **unmixed_vs_mixed(c)})
    lines += ["## Cells unmixed at some seeds and mixed at others", "", bt.md_table(pd.DataFrame(pooled)), ""]
    atomic_write_text(args.out, "\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
