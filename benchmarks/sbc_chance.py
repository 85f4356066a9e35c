"""How often a perfectly calibrated sampler meets issue 18's SBC bar, by chance alone.

    python benchmarks/sbc_chance.py [--n 50] [--n-ranks 99] [--ecdfs 36] [--runs 4000] [--seed 0]

The bar asks every rank ECDF of ``benchmarks/sbc.py`` (36 with its four designs of nine
quantities, 50 replications, ranks among 99 draws) to stay inside its simultaneous 95% band
(:func:`bayes_scaling.sbc.ecdf_band`). Here the ranks are drawn exactly uniform, as a
calibrated sampler's are, independently across the ECDFs, and the same band and test
(:func:`bayes_scaling.sbc.inside_band`) are applied ``--runs`` times. Quantities of one design
are correlated in a real SBC (one simulated data set ranks all nine), which makes "all
inside" somewhat likelier than for independent ECDFs; the independent case is what the
band's 95% is stated for. Writes ``results/sbc_chance.md``. No fitting: seconds.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pandas as pd

from bayes_scaling import backtest as bt
from bayes_scaling import sbc
from bayes_scaling.outputs import atomic_write_text

HERE = Path(__file__).resolve().parent


def outside_counts(n: int, n_ranks: int, ecdfs: int, runs: int, seed: int) -> np.ndarray:
    """Per simulated SBC run, how many of its ``ecdfs`` uniform-rank ECDFs leave the 95% band."""
    band = sbc.ecdf_band(n, n_ranks)
    rng = np.random.default_rng(seed)
    ranks = rng.integers(0, n_ranks + 1, size=(runs, ecdfs, n))
    return np.array([sum(not sbc.inside_band(r, band) for r in run) for run in ranks])


def shipped_outside(report: Path) -> int:
    """ECDFs outside their 95% bands in ``benchmarks/sbc.py``'s report (its "outside the 95%
    bands: K of N" line), so the comparison follows the report when it is rewritten."""
    match = re.search(r"outside the 95% bands: (\d+) of", report.read_text())
    if match is None:
        raise SystemExit(f"{report} has no 'outside the 95% bands' line; run benchmarks/sbc.py first")
    return int(match.group(1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50, help="replications per design (benchmarks/sbc.py: 50)")
    ap.add_argument("--n-ranks", type=int, default=99, help="draws each truth is ranked among (99)")
    ap.add_argument("--ecdfs", type=int, default=36, help="ECDFs the bar checks (4 designs x 9 quantities)")
    ap.add_argument("--runs", type=int, default=4000, help="simulated SBC runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "sbc_chance.md")
    args = ap.parse_args(argv)
    counts = outside_counts(args.n, args.n_ranks, args.ecdfs, args.runs, args.seed)
    dist = pd.Series(counts).value_counts(normalize=True).sort_index()
    table = pd.DataFrame({"ECDFs outside the 95% band": dist.index.astype(int), "share of runs (%)": (100 * dist.values).round(1)})
    shipped = shipped_outside(HERE / "results" / "sbc.md")
    lines = [
        "# SBC bar met by chance: exactly uniform ranks through the same bands (issue 18)",
        "",
        f"- written by `benchmarks/sbc_chance.py` (no fitting); {args.runs} simulated SBC runs of {args.ecdfs} independent ECDFs, "
        f"{args.n} replications each, ranks uniform on 0..{args.n_ranks}; band `sbc.ecdf_band` (simultaneous 95%), seed {args.seed}",
        f"- share of runs with every ECDF inside (the bar): **{100 * float(np.mean(counts == 0)):.1f}%**",
        f"- mean ECDFs outside: {counts.mean():.2f} (the band's nominal {args.ecdfs} x 0.05 = {0.05 * args.ecdfs:.1f})",
        f"- share of runs with {shipped} or more outside (the shipped sbc.md has {shipped}): {100 * float(np.mean(counts >= shipped)):.1f}%",
        "",
        bt.md_table(table.astype(str)),  # iterrows would print the counts as floats
        "",
    ]
    atomic_write_text(args.out, "\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
