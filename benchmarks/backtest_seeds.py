"""Seed noise of the back-test: the same code and cells, run with different seeds.

    python benchmarks/backtest.py --out benchmarks/results/backtest_seed1 --seed 1 \
        --estimators classic bayes_hierarchical --cuts 1e10 --fractions 1.0
    python benchmarks/backtest_seeds.py benchmarks/results benchmarks/results/backtest_seed1

Reads ``backtest.csv`` from each directory (each run with its own ``--seed``: the population
fits and every cell's sampler change with it) and writes ``backtest_seeds.md`` into the first:
per k at the 1e10 cut and fraction 1.0, the ``bayes_hierarchical`` median / capped-mean ARE,
90% coverage and relative CRPS, side by side, with the range of coverage an exactly
calibrated interval shows over as many families by chance.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from bayes_scaling import backtest as bt


def per_k(results: pd.DataFrame) -> pd.DataFrame:
    sub = results[(results["min_tokens"] == 1e10) & (results["fraction"] == 1.0) & (results["estimator"] == "bayes_hierarchical")]
    return bt.aggregate(sub, ("k",)).set_index("k")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="back-test output directories, one per seed")
    args = parser.parse_args(argv)
    runs = []
    for d in args.dirs:
        seed = json.loads((d / "backtest_meta.json").read_text())["seed"]
        runs.append((seed, per_k(pd.read_csv(d / "backtest.csv"))))
    ks = sorted(set.intersection(*(set(a.index) for _, a in runs)))  # k values every run scored
    rows = []
    for k in ks:
        row = {"k": k, "families": int(runs[0][1].loc[k, "n_families"])}
        for seed, a in runs:
            r = a.loc[k]
            row[f"seed {seed}: ARE median / capped %"] = f"{bt._pct(r['are_median'])} / {bt._pct(r['are_capped_mean'])}"
            row[f"seed {seed}: cov 90%"] = bt._pct(r["cov_90"])
            row[f"seed {seed}: CRPS %"] = bt._pct(r["crps_rel"])
        low, high = bt.chance_range(row["families"])
        row["calibrated, by chance (95%)"] = f"{bt._pct(low)} - {bt._pct(high)}"
        rows.append(row)
    text = "\n".join(
        [
            "# Back-test: seed noise of bayes_hierarchical (1e10 cut, fraction 1.0)",
            "",
            "Same code, same cells; each seed refits the population and samples every cell anew.",
            "Directories: " + ", ".join(f"`{d.name}` (seed {s})" for d, (s, _) in zip(args.dirs, runs)) + ".",
            "",
            bt._md_table(pd.DataFrame(rows)),
            "",
        ]
    )
    (args.dirs[0] / "backtest_seeds.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
