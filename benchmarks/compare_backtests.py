"""A candidate change to the public path against the shipped back-test, cell by cell.

    python benchmarks/compare_backtests.py --candidate 0=WORK/seed0/backtest.csv 1=WORK/seed1/backtest.csv \\
        --label "2 x (1000 + 3000) draws" --out benchmarks/results/backtest_<name>.md
        [--baseline benchmarks/results/backtest.csv]

The candidate's CSVs are what ``bayes-scaling backtest ... --estimators bayes_hierarchical
--seed S`` wrote with the change (one per seed, ``SEED=PATH``; their ``seed`` column holds
each cell's own sampler seed, so the run's seed is given here). The baseline is
``benchmarks/backtest.py``'s combined CSV, its rows of the same seeds. Only
``bayes_hierarchical`` rows are compared. Writes a Markdown report (and the candidate's rows,
with the run seed and without the observed losses, as a CSV next to it) with what adoption criteria are usually written in:

- per seed: cells with max r-hat above 1.01 and 1.05, pooled 90% coverage, median fit time;
- seed-mean median ARE by k;
- per family: 90% coverage over k and seeds, and families that fell from >= 80% to < 50%;
- per (family, k) cell: the paired ARE difference, its median and the largest moves.

It decides nothing: the criterion is written before the candidate runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from bayes_scaling import backtest as bt
from bayes_scaling.convergence import MIXED_RHAT
from bayes_scaling.outputs import atomic_path, atomic_write_text

HERE = Path(__file__).resolve().parent
ESTIMATOR = "bayes_hierarchical"


def load(baseline: Path, candidates: dict[int, Path]) -> pd.DataFrame:
    """Rows of both versions (``version`` column: baseline, candidate) for the candidate's seeds."""
    base = pd.read_csv(baseline)
    base = base[(base["estimator"] == ESTIMATOR) & base["seed"].isin(list(candidates))].assign(version="baseline")
    missing = set(candidates) - set(base["seed"])
    if missing:
        raise SystemExit(f"the baseline {baseline} has no rows of seed(s) {sorted(missing)}")
    cand = [pd.read_csv(path).query("estimator == @ESTIMATOR").assign(seed=seed, version="candidate") for seed, path in candidates.items()]
    return pd.concat([base, *cand], ignore_index=True)


def per_seed(rows: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (version, seed), df in rows.groupby(["version", "seed"]):
        cells = df.groupby(["family", "k"]).agg(max_rhat=("max_rhat", "first"), fit_seconds=("fit_seconds", "first"))
        out.append(
            {
                "version": version, "seed": seed, "cells": len(cells),
                "r-hat > 1.01": int((cells["max_rhat"] > 1.01).sum()), "r-hat > 1.05": int((cells["max_rhat"] > MIXED_RHAT).sum()),
                "pooled cov 90 %": bt.pct(bt.pooled_coverage(df)[0]), "median fit s": round(float(cells["fit_seconds"].median()), 1),
            }
        )  # fmt: skip
    return pd.DataFrame(out)


def median_are_by_k(cells: pd.DataFrame) -> pd.DataFrame:
    by_seed = cells.groupby(["version", "seed", "k"])["are"].median()
    table = (100 * by_seed.groupby(["version", "k"]).mean()).unstack("k").round(2)
    table.loc["candidate - baseline"] = (table.loc["candidate"] - table.loc["baseline"]).round(2)
    return table.reset_index()


def family_coverage(cells: pd.DataFrame) -> pd.DataFrame:
    cov = (100 * cells.groupby(["family", "version"])["cov_90"].mean()).unstack("version").round(1)
    cov["fell from >= 80 to < 50"] = (cov["baseline"] >= 80) & (cov["candidate"] < 50)
    return cov.reset_index()


def paired_are(cells: pd.DataFrame, largest: int = 8) -> tuple[float, pd.DataFrame]:
    wide = cells.pivot_table(index=["seed", "family", "k"], columns="version", values="are").dropna()
    wide["change (points)"] = 100 * (wide["candidate"] - wide["baseline"])
    order = wide["change (points)"].abs().sort_values(ascending=False).index[:largest]
    moves = (100 * wide.loc[order, ["baseline", "candidate"]]).round(2).join(wide.loc[order, "change (points)"].round(2))
    return float(wide["change (points)"].median()), moves.reset_index()


def report(rows: pd.DataFrame, label: str, baseline: Path) -> str:
    cells = bt.family_scores(rows, ("version", "seed", "k"))  # the back-test's scores per (family, k) cell
    median_change, moves = paired_are(cells)
    return "\n".join(
        [
            f"# Back-test: {label} against the shipped public path",
            "",
            f"- baseline: `{baseline.name}` (bayes_hierarchical rows of seeds {sorted(int(s) for s in rows['seed'].unique())}); "
            f"candidate: the same cells with the change, `bayes-scaling backtest` per seed",
            "- written by `benchmarks/compare_backtests.py`; what adopts or rejects the change is the criterion set before the run",
            "",
            "## Per seed",
            "",
            bt.md_table(per_seed(rows)),
            "",
            "## Median ARE % by k (mean over seeds of each seed's median over families)",
            "",
            bt.md_table(median_are_by_k(cells)),
            "",
            "## 90% coverage by family (%, over k and seeds)",
            "",
            bt.md_table(family_coverage(cells)),
            "",
            f"## Paired ARE per (seed, family, k) cell: median change {median_change:+.2f} points; the largest moves (%)",
            "",
            bt.md_table(moves),
            "",
        ]
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, default=HERE / "results" / "backtest.csv")
    parser.add_argument("--candidate", nargs="+", required=True, metavar="SEED=PATH", help="the candidate's back-test CSV of each seed")
    parser.add_argument("--label", required=True, help="what the candidate changes, for the title")
    parser.add_argument("--out", type=Path, required=True, help="the Markdown report; the candidate's rows go to the same name with .csv")
    args = parser.parse_args(argv)
    candidates = {}
    for item in args.candidate:
        seed, sep, path = item.partition("=")
        if not sep or not seed.strip().isdigit():
            parser.error(f"--candidate takes SEED=PATH, got {item!r}")
        candidates[int(seed)] = Path(path)
    rows = load(args.baseline, candidates)
    with atomic_path(args.out.with_suffix(".csv")) as tmp:
        # scores only: the observed target loss is the corpus's, not ours to publish again
        bt.scores_only(rows[rows["version"] == "candidate"].drop(columns="version")).to_csv(tmp, index=False)
    text = report(rows, args.label, args.baseline)
    atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
