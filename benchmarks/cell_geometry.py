"""Where the slow back-test cells mix slowly: which quantities, and along what (issue 18).

    python benchmarks/cell_geometry.py [--runs ../shared/data/runs.csv.gz] [--seed 0] [--cells 12]

Takes the ``bayes_hierarchical`` cells of back-test seed S (``results/backtest.csv``) with
the largest max r-hat above 1.01, refits each exactly as the back-test does
(``backtest.public_path_fit``: the user's ``fit`` under the population without the family's
source group, the cell's seed, the shipped sampler) and reports per cell:

- bulk ESS (arviz) of each law parameter, in theta and in the level coordinates at the
  cell's data centre (where the sampler works), and of each scale;
- how far apart the two chains' medians sit per level coordinate, in within-chain sds
  (above ~2: the chains explore different modes, not one slowly);
- the E-versus-D-term ridge: the correlation of ``beta`` with ``d_vs_rest`` (the D term's
  share of the loss at the centre, on the logit scale) and the R^2 of ``d_vs_rest`` on a
  line and on a parabola in ``beta``; and the same loss curve's slope in log D at the centre,
  ``slope_d = -beta * sigmoid(d_vs_rest)``, with its sd and its correlation with ``beta``.
  Where the data pin ``slope_d`` while ``beta`` and ``d_vs_rest`` trade off along a curve,
  coordinates ``(slope_d, beta)`` straighten that ridge (sampled so, the slow cells of seed 0
  did not mix better: benchmarks/EXPERIMENTS.md, "Where the slow cells are slow").

Writes ``results/cell_geometry.md`` (``cell_geometry_seed<N>.md`` for another seed). A
diagnostic: nothing here changes the method.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bayes_scaling import backtest as bt  # noqa: E402
from bayes_scaling.cellfit import SAMPLER_DEFAULTS, data_centre  # noqa: E402
from bayes_scaling.convergence import check_convergence  # noqa: E402
from bayes_scaling.laws import LEVEL_NAMES, PARAM_NAMES, centre, to_level_coordinates  # noqa: E402
from bayes_scaling.outputs import atomic_write_text  # noqa: E402
from benchmarks._chains import chain_spreads  # noqa: E402

SCALES = ("sigma_obs", "sigma_run", "sigma_size")


def slow_cells(results: pd.DataFrame, seed: int, n: int) -> list[tuple[str, int]]:
    """(family, k) of the ``n`` bayes_hierarchical cells of ``seed`` with the largest max r-hat above 1.01."""
    rows = results[(results["estimator"] == "bayes_hierarchical") & (results["seed"] == seed)]
    cells = rows.groupby(["family", "k"])["max_rhat"].first()
    cells = cells[cells > 1.01].sort_values(ascending=False).head(n)
    return [(f, int(k)) for f, k in cells.index]


def ess(values: np.ndarray) -> float:
    return float(az.ess(np.ascontiguousarray(values)))


def geometry(cell: bt.Cell, fit) -> dict:
    """The per-cell numbers of the module docstring, from the fit's draws (chains, draws, ...)."""
    post = fit.idata.posterior
    theta = post["theta"].isel(family=0).transpose("chain", "draw", "param").values
    x_n, x_d = centre(cell.data.train_num_params, cell.data.train_tokens)
    level = np.asarray(to_level_coordinates(theta, *data_centre(x_n, x_d, np.ones(len(x_n), bool))))  # where the cell model samples
    report = check_convergence(fit.idata)
    row = {"family": cell.data.family, "k": cell.data.k, "max_rhat": report.max_r_hat, "min_ess_bulk": report.min_ess_bulk}
    row |= {f"ess {name}": ess(theta[..., i]) for i, name in enumerate(PARAM_NAMES)}
    row |= {f"ess {name}": ess(level[..., i]) for i, name in enumerate(LEVEL_NAMES[:3])}
    row |= {f"ess {name}": ess(post[name].isel(family=0).values) for name in SCALES if name in post}
    row["chains apart (sds)"] = " ".join(f"{v:.1f}" for v in chain_spreads(level))
    beta, d_vs_rest = level[..., 4].ravel(), level[..., 2].ravel()
    slope_d = -beta / (1.0 + np.exp(-d_vs_rest))
    row["corr(beta, d_vs_rest)"] = float(np.corrcoef(beta, d_vs_rest)[0, 1])
    for degree, label in ((1, "line"), (2, "parabola")):
        resid = d_vs_rest - np.polyval(np.polyfit(beta, d_vs_rest, degree), beta)
        row[f"R2 d_vs_rest ~ {label}(beta)"] = float(1.0 - resid.var() / d_vs_rest.var())
    row["sd beta"], row["sd d_vs_rest"], row["sd slope_d"] = float(beta.std()), float(d_vs_rest.std()), float(slope_d.std())
    row["corr(beta, slope_d)"] = float(np.corrcoef(beta, slope_d)[0, 1])
    return row


def md_table(df: pd.DataFrame) -> str:
    """``backtest._md_table`` with floats to 3 significant digits."""
    return bt.md_table(df.map(lambda v: f"{v:.3g}" if isinstance(v, float) else v))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=str(HERE.parent.parent / "shared" / "data" / "runs.csv.gz"))
    parser.add_argument("--results", type=Path, default=HERE / "results" / "backtest.csv")
    parser.add_argument("--seed", type=int, default=0, help="which back-test seed's cells (0, 1, 2)")
    parser.add_argument("--cells", type=int, default=12, help="how many of its slowest cells (largest r-hat above 1.01)")
    parser.add_argument("--out", type=Path, help="default: results/cell_geometry.md (seed 0), results/cell_geometry_seed<N>.md")
    args = parser.parse_args(argv)
    out = args.out or HERE / "results" / ("cell_geometry.md" if args.seed == 0 else f"cell_geometry_seed{args.seed}.md")
    picked = slow_cells(pd.read_csv(args.results), args.seed, args.cells)
    if not picked:
        raise SystemExit(f"no bayes_hierarchical cell of seed {args.seed} in {args.results} has r-hat above 1.01")
    table = bt.primary_table(args.runs)
    families = sorted({f for f, _ in picked})
    protocol = bt.protocol_cells(table, ks=sorted({k for _, k in picked}), fractions=[1.0], min_tokens=[1e10], families=families)
    priors, _ = bt.population_priors(table, families, 1e10, population="public", seed=args.seed)
    cells = [c for c in bt.build_cells(protocol, ["bayes_hierarchical"], population={1e10: priors}) if (c.data.family, c.data.k) in set(picked)]
    rows, started = [], time.perf_counter()
    for cell in sorted(cells, key=lambda c: picked.index((c.data.family, c.data.k))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the slow cells are chosen for not converging
            fit = bt.public_path_fit(cell.data, cell.prior, bt.cell_seed(cell.key, args.seed), **SAMPLER_DEFAULTS)
        rows.append(geometry(cell, fit))
        print(f"{cell.data.family} k={cell.data.k}: r-hat {rows[-1]['max_rhat']:.3f}", flush=True)
    res = pd.DataFrame(rows)
    ess_cols = ["family", "k", "max_rhat", "min_ess_bulk", *[c for c in res.columns if c.startswith("ess ")], "chains apart (sds)"]
    ridge_cols = ["family", "k", *[c for c in res.columns if c.startswith(("corr", "R2", "sd "))]]
    sampler = ", ".join(f"{k}={v}" for k, v in SAMPLER_DEFAULTS.items())
    text = "\n".join([
        "# Where slow back-test cells mix slowly (`benchmarks/cell_geometry.py`)",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores shared with other work, no accelerator; {time.strftime('%Y-%m-%d')}",
        f"- cells: the {len(res)} bayes_hierarchical cells of back-test seed {args.seed} with the largest max r-hat above 1.01 "
        f"(`{args.results.name}`), refitted the back-test's way (`backtest.public_path_fit`, cell seed, {sampler}); "
        f"{time.perf_counter() - started:.0f} s",
        "- ESS: arviz bulk ESS of 2 chains' draws; level coordinates (`laws.to_level_coordinates`) at the cell's data centre; "
        "chains apart: per level coordinate, the range of the chains' medians over the mean within-chain sd",
        "",
        "## ESS by quantity",
        "",
        md_table(res[ess_cols]),
        "",
        "## The E-versus-D-term ridge",
        "",
        "`slope_d = -beta * sigmoid(d_vs_rest)`: the slope of log loss in log D at the data centre.",
        "",
        md_table(res[ridge_cols]),
        "",
    ])
    atomic_write_text(out, text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
