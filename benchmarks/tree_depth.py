"""How deep the back-test's NUTS trees run, and whether run offsets in the dense mass block help.

    python benchmarks/tree_depth.py [--runs ../shared/data/runs.csv.gz] [--seed 0]

Refits every ``bayes_hierarchical`` cell of back-test seed S (1e10 cut, fraction 1.0,
k = 1..5) the back-test's way (``backtest.public_path_fit``: the user's ``fit`` under the
public population without the family's source group, the cell's seed, the shipped sampler),
but without the retry (``retry_thinning=1``: the first fit, what the sampler does alone), in
two processes run side by side on the same cores:

- ``shipped``: the mass matrix dense over the law's level coordinates and the scales, the
  run offsets' ``run_z`` diagonal (``cellfit.dense_sites``);
- ``dense``: ``run_z`` in the dense block too. The offsets are non-centred, so where many
  checkpoints pin a run's offset, ``run_z`` is tied to the level and to the run scales; a
  diagonal metric cannot follow that.

Per cell: the share of draws at the maximum tree depth, the mean tree depth, max r-hat and
min bulk ESS (``convergence.check_convergence``), divergences and fit seconds.

Decided before the run: ``dense`` becomes a candidate for the full back-test only if, over
these cells, those with r-hat above 1.01 fall by at least a quarter, those above 1.05 do not
rise, the median min bulk ESS is not lower and the median fit time is at most 1.2x.

Writes ``results/tree_depth.md`` and the per-cell ``results/tree_depth.csv``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bayes_scaling import backtest as bt  # noqa: E402
from bayes_scaling import cellfit  # noqa: E402
from bayes_scaling.convergence import check_convergence  # noqa: E402
from bayes_scaling.outputs import atomic_path, atomic_write_text  # noqa: E402

VARIANTS = ("shipped", "dense")
KS = (1, 2, 3, 4, 5)


def run_variant(variant: str, runs: str, seed: int, out: Path) -> None:
    """Fit every cell with ``variant``'s mass matrix; one CSV row per cell."""
    if variant == "dense":
        shipped = cellfit.dense_sites
        cellfit.dense_sites = lambda size_term: shipped(size_term) + ("run_z",)  # read when a sampler is built
    table = bt.primary_table(runs)
    protocol = bt.protocol_cells(table, ks=KS, fractions=[1.0], min_tokens=[1e10])
    families = sorted({d.family for d in protocol.cells})
    priors, _ = bt.population_priors(table, families, 1e10, population="public", seed=seed)
    cells = bt.build_cells(protocol, ["bayes_hierarchical"], population={1e10: priors})
    sampler = {**cellfit.SAMPLER_DEFAULTS, "retry_thinning": 1}
    rows = []
    for i, cell in enumerate(cells):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unmixed cells are what is counted
            fit = bt.public_path_fit(cell.data, cell.prior, bt.cell_seed(cell.key, seed), **sampler)
        seconds = time.perf_counter() - start
        depth = fit.idata.sample_stats["tree_depth"].values
        report = check_convergence(fit.idata)
        rows.append({
            "variant": variant, "family": cell.data.family, "k": cell.data.k, "seconds": seconds,
            "at_max_depth": float((depth >= sampler["max_tree_depth"]).mean()), "mean_depth": float(depth.mean()),
            "max_rhat": report.max_r_hat, "min_ess_bulk": report.min_ess_bulk, "divergences": report.divergences,
        })
        print(f"{variant} {i + 1}/{len(cells)} {cell.data.family} k={cell.data.k}: r-hat {report.max_r_hat:.3f}, "
              f"{rows[-1]['at_max_depth']:.0%} at max depth, {seconds:.0f} s", flush=True)
    pd.DataFrame(rows).to_csv(out, index=False)


def summary(res: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: the decision's numbers."""
    def row(g):
        return pd.Series({
            "cells": len(g),
            "r-hat > 1.01": int((g["max_rhat"] > 1.01).sum()),
            "r-hat > 1.05": int((g["max_rhat"] > 1.05).sum()),
            "median min bulk ESS": g["min_ess_bulk"].median(),
            "median s per cell": g["seconds"].median(),
            "cells with > 50% of draws at max depth": int((g["at_max_depth"] > 0.5).sum()),
            "draws at max depth (mean over cells)": f"{g['at_max_depth'].mean():.1%}",
            "divergences": int(g["divergences"].sum()),
        })
    return res.groupby("variant", sort=False).apply(row, include_groups=False).reset_index()


def verdict(s: pd.DataFrame) -> str:
    a, b = (s.set_index("variant").loc[v] for v in VARIANTS)
    checks = {
        "r-hat > 1.01 falls by a quarter": b["r-hat > 1.01"] <= 0.75 * a["r-hat > 1.01"],
        "r-hat > 1.05 does not rise": b["r-hat > 1.05"] <= a["r-hat > 1.05"],
        "median min bulk ESS not lower": b["median min bulk ESS"] >= a["median min bulk ESS"],
        "median time at most 1.2x": b["median s per cell"] <= 1.2 * a["median s per cell"],
    }
    met = all(checks.values())
    lines = [f"- {name}: {'yes' if ok else 'no'}" for name, ok in checks.items()]
    return "\n".join([*lines, "", f"**{'candidate for the full back-test' if met else 'not adopted'}**"])


def md_table(df: pd.DataFrame) -> str:
    return bt.md_table(df.map(lambda v: f"{v:.3g}" if isinstance(v, float) else v))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=str(HERE.parent.parent / "shared" / "data" / "runs.csv.gz"))
    parser.add_argument("--seed", type=int, default=0, help="back-test seed whose cell seeds are used")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one side, run by the other process
    parser.add_argument("--csv", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        run_variant(args.variant, args.runs, args.seed, args.csv)
        return 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {v: Path(tmp) / f"{v}.csv" for v in VARIANTS}
        procs = [
            subprocess.Popen([sys.executable, __file__, "--runs", args.runs, "--seed", str(args.seed), "--variant", v, "--csv", str(p)])
            for v, p in paths.items()
        ]
        if any(p.wait() for p in procs):
            raise SystemExit("a variant's process failed")
        res = pd.concat([pd.read_csv(p) for p in paths.values()], ignore_index=True)
    with atomic_path(HERE / "results" / "tree_depth.csv") as tmp:
        res.to_csv(tmp, index=False)
    s = summary(res)
    wide = res.pivot_table(index=["family", "k"], columns="variant", values=["at_max_depth", "max_rhat", "min_ess_bulk", "seconds"]).reset_index()
    wide.columns = [" ".join(str(c) for c in col if c) for col in wide.columns]
    sampler = ", ".join(f"{k}={v}" for k, v in {**cellfit.SAMPLER_DEFAULTS, "retry_thinning": 1}.items())
    text = "\n".join([
        "# Tree depth of the back-test's first fits (`benchmarks/tree_depth.py`)",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores shared with other work, no accelerator; {time.strftime('%Y-%m-%d')}",
        f"- cells: every bayes_hierarchical cell of back-test seed {args.seed} (1e10 cut, fraction 1.0, k = 1..5), refitted the "
        f"back-test's way without the retry ({sampler}); the two variants in two processes side by side, "
        f"{time.perf_counter() - started:.0f} s in all",
        "- r-hat and ESS: `convergence.check_convergence` (theta and the scales); times include each process's compilations",
        "",
        "## Summary",
        "",
        md_table(s),
        "",
        "## Decision (criterion set before the run)",
        "",
        verdict(s),
        "",
        "## Per cell",
        "",
        md_table(wide),
        "",
    ])
    atomic_write_text(HERE / "results" / "tree_depth.md", text)
    print(f"wrote {HERE / 'results' / 'tree_depth.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
