"""``bayes-scaling diagnose FIT.nc --out DIR``: a Markdown report with PNGs on one saved fit.

The report: convergence verdict and table, rank plots of the population parameters, a
grid of per-family posterior predictive panels with coverage per family, the family
parameters against each other with the population ellipses, and PSIS-LOO (Pareto k,
LOO-PIT). Tables are also written as CSV next to the report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ..outputs import atomic_path, atomic_write_text, require_writable_dir
from .common import counted, positive_int

REPORT_NAME = "report.md"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "diagnose",
        help="convergence, posterior predictive checks and LOO of a saved fit, as a Markdown report with PNGs",
    )
    parser.add_argument("fit", type=Path, help="fit written by `bayes-scaling fit` (NetCDF)")
    parser.add_argument("--out", type=Path, required=True, help="output directory of report.md and its PNGs")
    parser.add_argument("--families", nargs="+", default=None, help="families of the PPC grid (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the posterior predictive draws (default 0)")
    parser.add_argument("--dpi", type=positive_int, default=110, help="resolution of the PNGs (default 110)")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when the convergence verdict is 'fail'")
    parser.set_defaults(func=run)


def _md_table(df: pd.DataFrame, floatfmt: str = "{:.4g}", index: bool = True) -> str:
    """A DataFrame as a GitHub Markdown table (no extra dependency)."""
    frame = df.reset_index() if index else df

    def cell(value):
        if isinstance(value, (float, np.floating)):
            return "" if np.isnan(value) else floatfmt.format(value)
        return str(value).replace("|", "\\|")

    head = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def _save(ax_or_axes, path: Path, dpi: int) -> str:
    import matplotlib.pyplot as plt

    fig = np.atleast_1d(ax_or_axes).ravel()[0].figure
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
    return path.name


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp)


def write_report(fit, out: Path, *, source: str = "", families=None, seed: int = 0, dpi: int = 110):
    """Compute every diagnostic of ``fit`` and write ``out/report.md`` with its PNGs and CSVs.

    Returns
    -------
    (Path, ConvergenceReport)
        The report's path and the convergence report it shows.
    """
    import matplotlib.pyplot as plt

    from .. import diagnostics
    from ..plots import diagnostics as dplots

    out.mkdir(parents=True, exist_ok=True)
    families = list(families) if families else list(fit.families)
    for family in families:
        fit.require_family(family)
    spec = fit.spec
    settings = fit.settings
    conv = diagnostics.convergence_report(fit)
    predictive = diagnostics.checkpoint_predictive(fit, seed=seed)
    coverage = diagnostics.ppc_coverage(fit, predictive)
    correlations = diagnostics.family_parameter_correlations(fit)
    rising = diagnostics.rising_runs(fit)
    has_loglik = "log_likelihood" in fit.idata.groups()
    loo = diagnostics.loo(fit) if has_loglik else None

    _write_csv(conv.table, out / "convergence.csv")
    _write_csv(coverage, out / "ppc_coverage.csv")
    files = {
        "rank": _save(dplots.plot_rank(fit), out / "rank.png", dpi),
        "ppc": _save(dplots.plot_ppc_grid(fit, families, seed=seed), out / "ppc.png", dpi),
    }
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    dplots.plot_family_parameters(fit, "log_a", "alpha", ax=axes[0])
    dplots.plot_family_parameters(fit, "log_b", "beta", ax=axes[1])
    fig.tight_layout()
    files["parameters"] = _save(axes, out / "parameters.png", dpi)
    if loo is not None:
        _write_csv(loo.by_family, out / "loo_by_family.csv")
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
        dplots.plot_loo_pit(fit, predictive, ax=axes[0], seed=seed)
        dplots.plot_pareto_k(loo, ax=axes[1])
        fig.tight_layout()
        files["loo"] = _save(axes, out / "loo.png", dpi)

    population = conv.table[conv.table["variable"].isin(["mu", "tau", "sigma_run"])]
    under = settings.get("population")  # a fit under a population prior (bs.fit(population=...))
    model = (
        f"Each family fitted alone under the prior of a {under} (likelihood {spec.likelihood})" if under
        else f"Spec `{spec.name}` (pooling {spec.pooling}, likelihood {spec.likelihood})"
    )
    lines = [
        f"# Diagnostics of {source or 'a fit'}",
        "",
        f"{model}; "
        f"{counted(len(fit.families), 'family', 'families')}, {counted(len(fit.runs), 'run')}, "
        f"{counted(fit.idata.observed_data.sizes['checkpoint'], 'checkpoint')}; "
        f"{settings.get('chains')} chains x {settings.get('draws')} draws after {settings.get('warmup')} warmup, seed {settings.get('seed')}.",
        "",
        f"## Verdict: {conv.verdict.upper()}",
        "",
        "```",
        diagnostics.format_convergence_summary(conv),
        "```",
        "",
        "## Data",
        "",
        "Runs whose loss rises over their last 30% of training (mean of those checkpoints' last third against "
        "their first, by more than 2%): the law has loss fall with tokens, so such a run pulls the extrapolation.",
        "",
        _md_table(rising.set_index("run")[["rise", "n_points"]], "{:+.3f}") if len(rising) else "None.",
        "",
        "## Convergence",
        "",
        f"{'Run scales' if under else 'Population parameters'} (the full table of {len(conv.table)} quantities is in `convergence.csv`):",
        "",
        _md_table(population[["mean", "sd", "mcse_mean", "ess_bulk", "ess_tail", "r_hat"]]) if len(population) else "(this spec has no population parameters)",
        "",
        "Rank plots: each chain's histogram of draw ranks should be flat and overlap the others.",
        "",
        f"![rank plots]({files['rank']})",
        "",
        "## Posterior predictive checks",
        "",
        "Observed checkpoints against 90% predictive bands of their run (the family law at the run's size, "
        "the run's posterior offset, observation noise). Coverage is the fraction of checkpoints inside the "
        "central 50% / 90% predictive interval (about 0.5 / 0.9 when calibrated); `bayes_p` near 0.5 means no "
        "systematic bias.",
        "",
        _md_table(coverage),
        "",
        f"![posterior predictive checks]({files['ppc']})",
        "",
        "## Family parameters",
        "",
        "Posterior means (90% intervals) per family with the population's 50% / 90% ellipses, in centred "
        "units (`log_a`, `log_b` at N = 1e9 parameters, D = 1e11 tokens). The paper found alpha near-linear "
        "in log A and beta in log B: a thin, tilted ellipse and a strong across-family correlation agree.",
        "",
        _md_table(correlations.rename_axis("pair"), "{:.2f}"),
        "",
        f"![family parameters]({files['parameters']})",
        "",
        "## PSIS-LOO",
        "",
    ]
    if loo is None:
        lines.append("This fit has no pointwise log likelihood; refit with `log_likelihood=True` for LOO.")
    else:
        lines += [
            f"elpd_loo {loo.elpd:.1f} (se {loo.se:.1f}), p_loo {loo.p_loo:.1f}; {loo.n_bad_k} of "
            f"{len(loo.pareto_k)} checkpoints with Pareto k > {diagnostics.PARETO_K_BAD}.",
            "",
            *(f"- {w}" for w in loo.warnings),
            "",
            _md_table(loo.by_family),
            "",
            "LOO-PIT: the ECDF difference stays inside the band for a calibrated model (an S-shape: "
            "predictive too narrow). Right: Pareto k per checkpoint.",
            "",
            f"![LOO-PIT and Pareto k]({files['loo']})",
        ]
    path = atomic_write_text(out / REPORT_NAME, "\n".join(lines) + "\n")
    return path, conv


def run(args: argparse.Namespace) -> int:
    from .. import diagnostics
    from ..inference import Fit

    require_writable_dir(args.out, "--out")
    fit = Fit.load(args.fit)
    path, report = write_report(fit, args.out, source=args.fit.name, families=args.families, seed=args.seed, dpi=args.dpi)
    print(diagnostics.format_convergence_summary(report))
    print(f"report: {path}", file=sys.stderr)
    return 1 if args.strict and report.verdict == "fail" else 0
