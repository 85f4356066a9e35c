"""Diagnostic plots of a fit: rank plots, per-family PPC panels, family parameters, LOO-PIT.

Each function takes a fit (or the tables of :mod:`bayes_scaling.diagnostics`) and an
optional ``ax``, returns the Axes (an array of Axes for grids), and never calls ``show()``.
"""

from __future__ import annotations

import warnings

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Ellipse
from scipy import stats

from .. import diagnostics
from .curves import grid_axes  # noqa: E402

#: Population parameters shown by :func:`plot_rank` (those present in the fit).
RANK_VARS = ("mu", "tau")


def plot_rank(fit, var_names=RANK_VARS, ax=None) -> np.ndarray:
    """Rank plots (per-chain histograms of draw ranks) of the population parameters.

    Well-mixed chains give flat, overlapping histograms; a chain whose bars slope or sit
    apart explored a different region.

    Parameters
    ----------
    fit : Fit or InferenceData
    var_names : sequence of str
        Variables to show; those absent from the posterior are skipped (with no population,
        e.g. ``pooling = "none"``, the family noise scales are shown instead).
    ax : array of Axes, optional
        One per scalar quantity.

    Returns
    -------
    ndarray of Axes
    """
    post = diagnostics._idata(fit).posterior
    names = [v for v in var_names if v in post.data_vars] or ["sigma_obs"]
    n = sum(int(np.prod([post.sizes[d] for d in post[v].dims if d not in ("chain", "draw")])) for v in names)
    if ax is None:
        fig, ax = grid_axes(n, ncols=min(5, n), size=(2.6, 2.2))
        fig.subplots_adjust(hspace=0.9, wspace=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = az.plot_rank(post, var_names=names, ax=np.asarray(ax).ravel()[:n])
    axes = np.atleast_1d(axes).ravel()
    for a in axes:
        a.set_title(a.get_title().replace("\n", " "), fontsize=8)
        a.tick_params(labelsize=6)
        a.set_xlabel(a.get_xlabel(), fontsize=7)
        a.set_ylabel(a.get_ylabel(), fontsize=7)
    return axes


def plot_family_ppc(fit, family: str, *, bands=None, ax=None, seed: int = 0, legend_max: int = 6) -> plt.Axes:
    """Observed checkpoints of one family against posterior predictive bands, along tokens.

    Parameters
    ----------
    fit : Fit
    family : str
    bands : DataFrame, optional
        Output of :func:`bayes_scaling.diagnostics.ppc_bands` (computed when omitted).
    ax : Axes, optional
    seed : int
    legend_max : int
        Show a legend of runs only up to this many runs.

    Returns
    -------
    Axes
        Tokens (log axis) vs loss (nats); one colour per run, 90% band shaded, median line.
    """
    if bands is None:
        bands = diagnostics.ppc_bands(fit, family, seed=seed)
    table = diagnostics.checkpoint_table(fit)
    observed = table[table["family"] == family]
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    runs = list(dict.fromkeys(observed["run"]))
    cmap = plt.get_cmap("viridis")
    for i, run in enumerate(runs):
        colour = cmap(i / max(len(runs) - 1, 1))
        band = bands[bands["run"] == run].sort_values("tokens")
        ax.fill_between(band["tokens"], band["q05"], band["q95"], color=colour, alpha=0.2, lw=0)
        ax.plot(band["tokens"], band["median"], color=colour, lw=0.8)
        pts = observed[observed["run"] == run]
        ax.plot(pts["tokens"], pts["loss"], ".", ms=3, color=colour, label=str(run).split("/")[-1])
    ax.set_xscale("log")
    ax.set_xlabel("tokens", fontsize=8)
    ax.set_ylabel("loss (nats)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(f"{family} ({len(runs)} runs, {len(observed)} checkpoints)", fontsize=8)
    if len(runs) <= legend_max:
        ax.legend(fontsize=6, loc="upper right")
    return ax


def plot_ppc_grid(fit, families=None, *, ncols: int = 4, seed: int = 0, axes=None) -> np.ndarray:
    """A grid of :func:`plot_family_ppc` panels, one per family (default: every family).

    Returns
    -------
    ndarray of Axes
    """
    families = list(families if families is not None else fit.families)
    if axes is None:
        fig, axes = grid_axes(len(families), ncols=min(ncols, len(families)), size=(3.6, 2.8))
        fig.subplots_adjust(hspace=0.45, wspace=0.3)
    axes = np.asarray(axes).ravel()
    for i, (family, ax) in enumerate(zip(families, axes)):
        plot_family_ppc(fit, family, ax=ax, seed=seed + i)
    return axes[: len(families)]


def _ellipse(ax, mean, cov, level: float, **kwargs) -> None:
    values, vectors = np.linalg.eigh(cov)
    values = np.clip(values, 0, None)
    scale = np.sqrt(stats.chi2.ppf(level, 2))
    angle = np.degrees(np.arctan2(vectors[1, -1], vectors[0, -1]))
    ax.add_patch(Ellipse(mean, 2 * scale * np.sqrt(values[-1]), 2 * scale * np.sqrt(values[0]), angle=angle, fill=False, **kwargs))


def plot_family_parameters(fit, x: str = "log_a", y: str = "alpha", *, ax=None, annotate_max: int = 15) -> plt.Axes:
    """Family parameters against each other, with the population ellipses.

    Points are posterior means per family with 90% intervals as error bars; the ellipses
    hold 50% and 90% of the fitted population distribution (posterior mean of mu and of
    the covariance built from tau and corr). The paper found alpha near-linear in log A
    and beta in log B; a tilted, thin ellipse is the fit agreeing.

    Parameters
    ----------
    fit : Fit
    x, y : str
        Two of ``log_e, log_a, log_b, alpha, beta`` (centred units, see ``bayes_scaling.laws``).
    ax : Axes, optional
    annotate_max : int
        Label points with family names when there are at most this many families.

    Returns
    -------
    Axes
    """
    post = diagnostics._idata(fit).posterior
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3.8))
    law = diagnostics.family_parameters(fit)
    px, py = law[x], law[y]
    mx, my = px.mean(("chain", "draw")).values, py.mean(("chain", "draw")).values
    qx = px.quantile([0.05, 0.95], dim=("chain", "draw")).values
    qy = py.quantile([0.05, 0.95], dim=("chain", "draw")).values
    ax.errorbar(mx, my, xerr=np.abs(qx - mx), yerr=np.abs(qy - my), fmt="o", ms=3, lw=0.6, color="tab:blue", alpha=0.8, label="families (mean, 90%)")
    population = diagnostics.population_ellipse(fit, x, y)
    if population is not None:
        mean, cov = population
        for level, style in ((0.5, "-"), (0.9, "--")):
            _ellipse(ax, mean, cov, level, color="tab:red", ls=style, lw=1.2)
        ax.plot(*mean, "+", color="tab:red", ms=10, label="population (50%, 90%)")
    if len(mx) <= annotate_max:
        for name, a, b in zip(post["family"].values, mx, my):
            ax.annotate(str(name), (a, b), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(x, fontsize=8)
    ax.set_ylabel(y, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6)
    ax.autoscale_view()
    return ax


def plot_loo_pit(fit, predictive=None, *, ax=None, seed: int = 0) -> plt.Axes:
    """LOO-PIT ECDF difference with its simultaneous 94% band (arviz).

    A calibrated model stays inside the band; an S-shape means the predictive is too
    narrow (values pile at 0 and 1), an inverted S too wide.

    Parameters
    ----------
    fit : Fit
    predictive : DataArray, optional
        Output of :func:`bayes_scaling.diagnostics.checkpoint_predictive`.
    ax : Axes, optional
    seed : int

    Returns
    -------
    Axes
    """
    idata = diagnostics.with_posterior_predictive(fit, predictive, seed=seed)
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3.2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ax = az.plot_loo_pit(idata, y="log_loss", ecdf=True, ax=ax)
    ax.set_title("LOO-PIT (ECDF difference)", fontsize=9)
    if ax.get_legend() is not None:
        ax.legend(fontsize=6, loc="lower left", framealpha=0.6)
    ax.tick_params(labelsize=7)
    return ax


def plot_pareto_k(loo_report, *, ax=None) -> plt.Axes:
    """Pareto k of every checkpoint, grouped by family, with the 0.7 reliability line.

    Parameters
    ----------
    loo_report : LooReport
        Output of :func:`bayes_scaling.diagnostics.loo`.
    ax : Axes, optional

    Returns
    -------
    Axes
    """
    pk = loo_report.pareto_k
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    families = list(dict.fromkeys(pk["family"]))
    codes = pk["family"].map({f: i for i, f in enumerate(families)}).to_numpy()
    ax.scatter(np.arange(len(pk)), pk["pareto_k"], c=codes, cmap="tab20", s=4)
    ax.axhline(diagnostics.PARETO_K_BAD, color="tab:red", ls="--", lw=1)
    ax.set_xlabel("checkpoint (grouped by family)", fontsize=8)
    ax.set_ylabel("Pareto k", fontsize=8)
    ax.tick_params(labelsize=7)
    return ax
